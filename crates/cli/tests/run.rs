//! `synod run mutex|election` on a real cluster of node processes over loopback TCP.

// A driver-level test of real processes: wall-clock deadlines are the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
use common::{start_cluster, synod, synod_cmd};

mod common;

fn run_in(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = synod_cmd()
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run synod");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Maekawa's algorithm on three processes: every node enters K times, and the shared
/// log the nodes appended to shows no two critical sections overlapping.
#[test]
fn maekawa_on_a_real_cluster_keeps_mutual_exclusion() {
    let (cluster, _admin) = start_cluster("run-mutex", 3);
    let (code, out, err) = run_in(
        &cluster.dir,
        &[
            "run", "mutex", "--algo", "maekawa", "--k", "8", "--hold", "2ms",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("check: PASS, no overlap in 24 critical sections"),
        "{out}"
    );
    for node in ["n1", "n2", "n3"] {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [node, "8"]),
            "{node} entered 8 times: {out}"
        );
    }
    // The log really is there and holds an enter and an exit line per entry.
    let runs = cluster.dir.join("runs");
    let log = std::fs::read_dir(&runs)
        .expect("runs directory")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("mutex-"))
        .expect("a mutex log");
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(text.lines().count(), 48, "{text}");

    // A second run on the same cluster, another algorithm, also passes.
    let (code, out, err) = run_in(
        &cluster.dir,
        &["run", "mutex", "--algo", "ricart-agrawala", "--k", "4"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("check: PASS"), "{out}");
}

/// The bully algorithm on three processes: all agree on n3; n3 is killed with SIGKILL
/// and the survivors agree on n2; n3 restarts and takes over again.
#[test]
fn bully_on_a_real_cluster_survives_a_sigkill_and_the_restarted_node_takes_over() {
    let (cluster, _admin) = start_cluster("run-election", 3);
    let (code, out, err) = run_in(&cluster.dir, &["run", "election", "--algo", "bully"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("killed n3"), "{out}");
    assert!(
        out.contains("agreement on n2 (the highest live id): yes"),
        "{out}"
    );
    assert!(out.contains("restarted n3"), "{out}");
    assert_eq!(
        out.matches("agreement on n3 (the highest live id): yes")
            .count(),
        2,
        "before the kill and after the restart: {out}"
    );
    assert!(out.contains("check: PASS"), "{out}");
}

#[test]
fn run_rejects_bad_flags_with_a_clear_error() {
    let (code, _, err) = synod(&["run", "mutex", "--algo", "paxos"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown algorithm `paxos`"), "{err}");
    assert!(err.contains("maekawa"), "{err}");
    let (code, _, err) = synod(&["run", "mutex", "--k", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--k"), "{err}");
    let (code, _, err) = synod(&["run", "mutex", "--hold", "5 parsecs"]);
    assert_eq!(code, 2);
    assert!(err.contains("unit"), "{err}");
    let (code, _, err) = synod(&["run", "election", "--algo", "raft"]);
    assert_eq!(code, 2);
    assert!(err.contains("bully, ring"), "{err}");
    let dir = common::scratch("run", "no-cluster");
    let (code, _, err) = run_in(&dir, &["run", "mutex"]);
    assert_eq!(code, 2);
    assert!(err.contains("no cluster in"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
