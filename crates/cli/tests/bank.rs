//! `synod sim bank` and `synod bench txn` from the command line.

mod common;
use common::synod;

#[test]
fn sim_bank_runs_seeds_and_rejects_bad_flags() {
    let (code, out, err) = synod(&["sim", "bank", "--seeds", "2", "--threads", "1"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("bank: 2 seeds"), "{out}");
    assert!(out.contains("0 failed"), "{out}");

    let (code, _, err) = synod(&["sim", "bank", "--seeds", "many"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a number of seeds"), "{err}");
    let (code, _, err) = synod(&["bench", "txn", "--clients", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("clients must be between"), "{err}");
}

#[test]
fn sim_bank_watch_checks_watch_streams_and_rejects_bad_flags() {
    let (code, out, err) = synod(&["sim", "bank", "--watch", "--seeds", "2", "--threads", "1"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("bank --watch: 2 seeds"), "{out}");
    assert!(out.contains("0 failed"), "{out}");
    assert!(
        out.contains("every watch stream equals the committed history"),
        "{out}"
    );

    let (code, _, err) = synod(&["sim", "bank", "--watch=yes"]);
    assert_ne!(code, 0);
    assert!(err.contains("--watch"), "{err}");
}
