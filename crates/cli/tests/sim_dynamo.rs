//! `synod sim dynamo`: the AP store under faults, from the command line.

use common::synod;

mod common;

#[test]
fn sim_dynamo_passes_and_catches_last_write_wins() {
    let (code, out, err) = synod(&[
        "sim",
        "dynamo",
        "--seeds",
        "2",
        "--duration",
        "1s",
        "--faults",
        "all",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("all seeds passed"), "{out}");
    let (code, out, err) = synod(&[
        "sim",
        "dynamo",
        "--seeds",
        "6",
        "--duration",
        "2s",
        "--faults",
        "none",
        "--lww",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("was lost") && out.contains("--lww"), "{out}");
}

#[test]
fn sim_dynamo_rejects_bad_flags_with_a_clear_error() {
    let (code, _, err) = synod(&["sim", "dynamo", "--seeds", "many"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--seeds"), "{err}");
    let (code, _, err) = synod(&["sim", "dynamo", "--faults", "meteor"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--faults"), "{err}");
    let (code, _, err) = synod(&["sim", "dynamo", "--n", "3", "--r", "4"]);
    assert_ne!(code, 0);
    assert!(err.contains("--r"), "{err}");
}
