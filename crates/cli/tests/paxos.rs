//! `synod sim paxos`, `synod sim multi-paxos` and `synod sim byzantine` as a user runs
//! them, including bad flags.

use common::synod;

mod common;

#[test]
fn sim_byzantine_prints_the_check_and_the_n_equals_3m_counterexample() {
    let (code, out, err) = synod(&["sim", "byzantine", "--max-n", "4", "--max-m", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OM(1)   4  1 n≥3m+1: yes"), "{out}");
    assert!(out.contains("3+6                  3+6"), "{out}");
    assert!(
        out.contains("OM(1) n=3 m=1") && out.contains("IC2 broken"),
        "{out}"
    );
    assert!(out.contains("SM(1)   3  1 n≥m+2: yes"), "{out}");
    assert!(!out.contains("WRONG"), "{out}");
}

#[test]
fn sim_paxos_and_multi_paxos_pass_a_few_seeds() {
    let (code, out, err) = synod(&["sim", "paxos", "--seeds", "5", "--threads", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 seeds") && out.contains("0 failed"), "{out}");
    let (code, out, err) = synod(&["sim", "multi-paxos", "--seeds", "2", "--threads", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 seeds") && out.contains("0 failed"), "{out}");
}

#[test]
fn sim_paxos_catches_the_broken_proposer_and_prints_a_replay() {
    // Seed 50 is one the test suite finds broken (paxos::tests).
    let (code, out, err) = synod(&[
        "sim",
        "paxos",
        "--first-seed",
        "50",
        "--seeds",
        "1",
        "--bug",
        "ignore-accepted",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("Agreement"), "{err}");
    assert!(
        err.contains("replay: synod sim paxos --first-seed 50 --seeds 1 --bug ignore-accepted"),
        "{err}"
    );
}

#[test]
fn bad_flags_get_clear_errors() {
    let (code, _, err) = synod(&["sim", "paxos", "--bug", "sometimes"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'sometimes'"), "{err}");
    let (code, _, err) = synod(&["sim", "multi-paxos", "--seeds", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--seeds"), "{err}");
    let (code, _, err) = synod(&["sim", "byzantine", "--max-n", "9"]);
    assert_eq!(code, 2);
    assert!(err.contains("--max-n"), "{err}");
    let (code, _, err) = synod(&["sim", "byzantine", "--max-n", "3", "--max-m", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("m traitors need m+2 generals"), "{err}");
}

#[test]
fn compare_consensus_prints_raft_beside_multi_paxos() {
    let (code, out, err) = synod(&["compare", "consensus", "--nodes", "3", "--seeds", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    for row in [
        "lan     raft",
        "lan     multi-paxos",
        "lossy   raft",
        "lossy   multi-paxos",
    ] {
        assert!(out.contains(row), "{row} missing:\n{out}");
    }
    assert!(out.contains("leader crash"), "{out}");
    let (code, _, err) = synod(&["compare", "consensus", "--nodes", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("--nodes"), "{err}");
    let (code, _, err) = synod(&["compare", "consensus", "--latency", "fast"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a duration"), "{err}");
}
