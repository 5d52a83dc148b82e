//! `synod sim mvcc`: the Raft-replicated MVCC store under faults, from the command line.

use common::synod;

mod common;

#[test]
fn sim_mvcc_passes_on_a_few_seeds() {
    let (code, out, err) = synod(&["sim", "mvcc", "--seeds", "4", "--duration", "2s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("mvcc: 4 seeds, 0 failed"), "{out}");
}

#[test]
fn sim_mvcc_catches_stale_reads_and_prints_a_replay() {
    let (code, out, err) = synod(&[
        "sim",
        "mvcc",
        "--seeds",
        "40",
        "--duration",
        "2s",
        "--stale-reads",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("synod sim mvcc --first-seed") && out.contains("--stale-reads"),
        "{out}"
    );
}

#[test]
fn sim_mvcc_rejects_bad_flags_with_a_clear_error() {
    let (code, _, err) = synod(&["sim", "mvcc", "--seeds", "many"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--seeds"), "{err}");
    let (code, _, err) = synod(&["sim", "mvcc", "--duration", "0s"]);
    assert_ne!(code, 0);
    assert!(err.contains("--duration"), "{err}");
    let (code, _, err) = synod(&["sim", "mvcc", "--duration", "1500ms"]);
    assert_ne!(code, 0);
    assert!(err.contains("whole number of seconds"), "{err}");
}
