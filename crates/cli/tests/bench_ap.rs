//! `synod bench ap`: against a `synod up --ap` cluster it must measure every phase (AP
//! puts and gets, client- and server-driven, and the Raft KV beside them), and refuse bad
//! flags and a missing cluster with a clear message.

// A driver-level test of real processes: wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
use common::{eventually, request, start_cluster_with, synod};
use std::time::Duration;

mod common;

#[test]
fn bench_ap_measures_both_stores_and_both_coordinations() {
    let (cluster, admin, _) = start_cluster_with("bench-ap", 3, &["--ap"]);
    eventually("the AP store and the Raft KV take writes", || {
        let ap = request(admin(1), "PUT", "/kv/t/probe", "x", Duration::from_secs(5));
        let raft = request(admin(1), "PUT", "/v1/kv/probe", "1", Duration::from_secs(5));
        matches!(ap, Some((200, _))) && matches!(raft, Some((200, _)))
    });
    let dir = cluster.dir.to_string_lossy().to_string();
    let (code, out, err) = synod(&[
        "bench",
        "ap",
        "--dir",
        &dir,
        "--clients",
        "4",
        "--keys",
        "8",
        "--duration",
        "300ms",
        "--rounds",
        "1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for (store, op, coordination) in [
        ("ap", "put", "client-driven"),
        ("ap", "put", "server-driven"),
        ("ap", "get", "client-driven"),
        ("ap", "get", "server-driven"),
        ("raft", "put", "any node"),
        ("raft", "get", "any node"),
    ] {
        let row = out
            .lines()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(store) && w.next() == Some(op) && l.contains(coordination)
            })
            .unwrap_or_else(|| panic!("no {store} {op} {coordination} row: {out}"));
        let rate: f64 = row
            .split('|')
            .nth(1)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(rate > 0.0, "{row}\n{out}");
    }
    assert!(out.contains("puts: AP (client-driven) vs Raft"), "{out}");
    assert!(out.contains("server- vs client-driven"), "{out}");
}

#[test]
fn bench_ap_rejects_bad_flags_and_a_missing_cluster() {
    for (args, expect) in [
        (vec!["--clients", "0"], "not a positive integer"),
        (vec!["--rounds", "many"], "not a positive integer"),
        (vec!["--duration", "soon"], "soon"),
        (vec!["--keys", "0"], "not a positive integer"),
    ] {
        let mut all = vec!["bench", "ap"];
        all.extend(args);
        let (code, out, err) = synod(&all);
        assert_eq!(code, 2, "{all:?} was accepted: {out}");
        assert!(err.contains(expect), "{all:?}: {err}");
    }
    let (code, _, err) = synod(&["bench", "ap", "--dir", "/nonexistent/synod-bench-ap"]);
    assert_ne!(code, 0);
    assert!(err.contains("no cluster in"), "{err}");
}
