//! The command line as a user meets it: demos that check themselves, and clear errors.

use common::synod;
use synod_check::history::{History, Op, OpResult, Process};

mod common;

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch("cli", name)
}

#[test]
fn sim_clocks_checks_both_clocks_and_writes_a_trace() {
    let dir = scratch("clocks");
    let trace = dir.join("out.jsonl");
    let (code, out, err) = synod(&[
        "sim",
        "clocks",
        "--nodes",
        "5",
        "--seed",
        "7",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("vector clocks") && out.contains(": yes (0 wrong)"),
        "{out}"
    );
    assert!(
        out.contains("replay: synod sim clocks --nodes 5 --seed 7"),
        "{out}"
    );
    let lines = std::fs::read_to_string(&trace).unwrap();
    assert!(lines.lines().count() > 50);
    // The same seed prints the same run.
    let (_, again, _) = synod(&["sim", "clocks", "--nodes", "5", "--seed", "7"]);
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("trace:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&out), strip(&again));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sim_clock_sync_converges_within_the_ntp_bound() {
    let (code, out, err) = synod(&[
        "sim",
        "clock-sync",
        "--nodes",
        "5",
        "--skew",
        "200ms",
        "--drift",
        "50ppm",
        "--duration",
        "30s",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("within"), "{out}");
    assert!(!out.contains(" NO"), "{out}");
}

#[test]
fn malformed_flags_get_clear_errors() {
    let (code, _, err) = synod(&["sim", "clock-sync", "--skew", "fast"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a duration"), "{err}");
    let (code, _, err) = synod(&["sim", "clock-sync", "--drift=-5ppm"]);
    assert_eq!(code, 2);
    assert!(err.contains("drift"), "{err}");
    let (code, _, err) = synod(&["sim", "clocks", "--trace", "/nonexistent-dir/t.jsonl"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot write trace file"), "{err}");
    let (code, _, err) = synod(&["sim", "clocks", "--nodes", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("between 1 and 4096"), "{err}");
}

#[test]
fn check_finds_a_stale_read_and_rejects_garbage() {
    let dir = scratch("check");
    let mut h = History::new();
    let w = h.invoke(
        Process(1),
        Op::Write {
            key: "x".into(),
            value: 1,
        },
        10,
    );
    h.ok(w, OpResult::WriteOk, 20).unwrap();
    let r = h.invoke(Process(2), Op::Read { key: "x".into() }, 30);
    h.ok(r, OpResult::ReadOk(None), 40).unwrap();
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, h.to_jsonl()).unwrap();
    let (code, out, _) = synod(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"x\"") || out.contains("x"), "{out}");

    let garbage = dir.join("garbage.jsonl");
    std::fs::write(&garbage, "{not json\n").unwrap();
    let (code, _, err) = synod(&["check", garbage.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("not a valid history"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_durability_swarm_catches_unsynced_announcements_with_a_replay_command() {
    let (code, out, err) = synod(&["sim", "durability", "--seeds", "20"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = synod(&["sim", "durability", "--seeds", "20", "--unsynced"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("replay: synod sim durability --first-seed"),
        "{err}"
    );
}

#[test]
fn sim_raft_runs_seeds_and_reports_how_many_failed() {
    let (code, out, err) = synod(&["sim", "raft", "--seeds", "4", "--scenario", "swarm"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("raft (swarm): 4 seeds") && out.contains(", 0 failed"),
        "{out}"
    );
    let (code, _, err) = synod(&["sim", "raft", "--scenario", "nonsense"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'nonsense'"), "{err}");
}

#[test]
fn sim_raft_election_prints_the_figure_16_table() {
    let (code, out, err) = synod(&[
        "sim",
        "raft-election",
        "--runs",
        "20",
        "--ranges",
        "150-200,150-300",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("150-")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0].contains("worst 513 ms"), "{out}");
    for (flag, message) in [
        ("150", "is not MIN-MAX"),
        ("300-150", "need 0 < MIN <= MAX"),
        ("a-b", "is not a number"),
    ] {
        let (code, _, err) = synod(&["sim", "raft-election", "--ranges", flag]);
        assert_eq!(code, 2, "{flag}");
        assert!(err.contains(message), "{flag}: {err}");
    }
}
