//! `synod sim twopc` as a user meets it: the swarm, the blocking case, the crash-point
//! sweep and the cost table, a broken variant caught, and clear flag errors.

use common::synod;

mod common;

#[test]
fn sim_twopc_checks_every_mix_and_shows_the_blocking_case() {
    let (code, out, err) = synod(&["sim", "twopc", "--seeds", "8", "--txns", "10"]);
    assert_eq!(code, 0, "{out}{err}");
    for mix in [
        "none",
        "loss",
        "crashes",
        "partitions",
        "crashes+loss",
        "swarm",
    ] {
        assert!(out.contains(&format!("\n{mix} ")), "{mix} missing:\n{out}");
    }
    assert!(
        out.contains("3 of 3 participants uncertain, 0 decided while it was down"),
        "{out}"
    );
    assert!(out.contains("all atomic and ended"), "{out}");
    // Fault-free costs equal the textbook figures for three participants.
    assert!(out.contains("12.00 / 12"), "{out}");
    assert!(out.contains(" 8.00 / 8 "), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn sim_twopc_replays_one_seed_with_a_trace() {
    let dir = common::scratch("twopc", "trace");
    let trace = dir.join("run.jsonl");
    let (code, out, err) = synod(&[
        "sim",
        "twopc",
        "--mix",
        "crashes",
        "--first-seed",
        "3",
        "--seeds",
        "1",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let lines = std::fs::read_to_string(&trace).unwrap();
    assert!(lines.lines().count() > 100);
    assert!(
        lines.contains("Prepare") && lines.contains("crash"),
        "{lines}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sim_twopc_catches_a_coordinator_that_commits_before_forcing() {
    let (code, out, err) = synod(&[
        "sim",
        "twopc",
        "--seeds",
        "2",
        "--mix",
        "none",
        "--bug",
        "commit-before-decision",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAILED") && out.contains("commit validity"),
        "{out}"
    );
}

#[test]
fn sim_twopc_flags_get_clear_errors() {
    let (code, _, err) = synod(&["sim", "twopc", "--participants", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("between 1 and 64"), "{err}");
    let (code, _, err) = synod(&["sim", "twopc", "--mix", "meteor"]);
    assert_eq!(code, 2);
    assert!(err.contains("meteor"), "{err}");
    let (code, _, err) = synod(&["sim", "twopc", "--abort-probability", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("between 0 and 1"), "{err}");
    let (code, _, err) = synod(&["sim", "twopc", "--trace", "t.jsonl"]);
    assert_eq!(code, 2);
    assert!(err.contains("--seeds 1 and one --mix"), "{err}");
    let (code, _, err) = synod(&[
        "sim",
        "twopc",
        "--seeds",
        "1",
        "--mix",
        "none",
        "--trace",
        "/nonexistent-dir/t.jsonl",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot write trace file"), "{err}");
    let (code, _, err) = synod(&["sim", "twopc", "--seeds", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--seeds"), "{err}");
}
