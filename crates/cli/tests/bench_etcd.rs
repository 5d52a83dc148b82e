//! `synod bench etcd`: the gRPC load generator that bench/etcd-compare.sh runs against
//! synod and etcd. It must measure every request type against `synod up`, and refuse bad
//! flags with a clear message.

// A driver-level test of real processes: wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
use common::{start_cluster_ports, synod};

mod common;

#[test]
fn bench_etcd_measures_puts_and_both_kinds_of_read_against_a_cluster() {
    let (_cluster, _admin, client) = start_cluster_ports("bench-etcd", 3);
    let endpoints = (1..=3)
        .map(|i| client(i).to_string())
        .collect::<Vec<_>>()
        .join(",");
    // The first request may meet an election: the put fill retries until it succeeds.
    common::eventually("the cluster takes a put", || {
        let (code, _, _) = synod(&[
            "bench",
            "etcd",
            "--endpoints",
            &endpoints,
            "--op",
            "put",
            "--clients",
            "2",
            "--duration",
            "200ms",
        ]);
        code == 0
    });
    for op in ["put", "range-l", "range-s"] {
        let (code, out, err) = synod(&[
            "bench",
            "etcd",
            "--endpoints",
            &endpoints,
            "--op",
            op,
            "--clients",
            "8",
            "--conns",
            "3",
            "--keys",
            "20",
            "--duration",
            "1s",
        ]);
        assert_eq!(code, 0, "{op}: {out}{err}");
        let line = out.lines().find(|l| l.contains("ops/s")).unwrap_or("");
        assert!(line.contains(", 0 errors"), "{op}: {out}{err}");
        let rate: f64 = line
            .split(": ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        assert!(rate > 0.0, "{op}: {out}");
    }
}

#[test]
fn bench_etcd_rejects_bad_flags() {
    for (args, expect) in [
        (vec!["--endpoints", "nohost"], "is not host:port"),
        (
            vec!["--endpoints", "127.0.0.1:1", "--clients", "0"],
            "not a positive integer",
        ),
        (
            vec!["--endpoints", "127.0.0.1:1", "--op", "scan"],
            "invalid value 'scan'",
        ),
        (
            vec!["--endpoints", "127.0.0.1:1", "--duration", "soon"],
            "soon",
        ),
    ] {
        let mut all = vec!["bench", "etcd"];
        all.extend(args);
        let (code, out, err) = synod(&all);
        assert_ne!(code, 0, "{all:?} was accepted: {out}");
        assert!(err.contains(expect), "{all:?}: {err}");
    }
    // Nothing listens on port 1: a clear error, not a panic.
    let (code, _, err) = synod(&["bench", "etcd", "--endpoints", "127.0.0.1:1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot connect to 127.0.0.1:1"), "{err}");
}
