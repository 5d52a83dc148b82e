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
    let (code, out, err) = synod(&[
        "sim",
        "dynamo",
        "--seeds",
        "6",
        "--faults",
        "none",
        "--reuse-dots",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("given out twice") && out.contains("--reuse-dots"),
        "{out}"
    );
    assert!(
        out.contains("reaped"),
        "the report shows reaped tombstones: {out}"
    );
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
    let (code, _, err) = synod(&["sim", "dynamo", "--tombstone-delay", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tombstone-delay"), "{err}");
    let (code, _, err) = synod(&["sim", "dynamo", "--lww", "--reuse-dots"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--reuse-dots") || err.contains("--lww"),
        "{err}"
    );
}
