//! Compaction on real processes (issue 11, issue 5):
//!
//! - Range Raft logs: with `synod up --ranges --range-snapshot-entries 64`, a node
//!   SIGKILLed before the ranges split and restarted after hundreds of writes catches up
//!   (the splits reach it in snapshots), every replica's log stays within the threshold,
//!   and it holds the same data as the others.
//! - Auto compaction: with `--auto-compaction-mode periodic --auto-compaction-retention
//!   2s`, old revisions become "required revision has been compacted" for `etcdctl`
//!   without anyone calling Compact, for the single MVCC group and over the ranges.

// A driver-level test of real processes: wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::{eventually, request, start_cluster_with};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const SNAPSHOT_ENTRIES: u64 = 64;

/// Node `admin`'s replicas by range id.
fn replicas(admin: SocketAddr) -> BTreeMap<u64, Value> {
    request(admin, "GET", "/v1/txn/ranges", "", Duration::from_secs(3))
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| v["ranges"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| Some((r["id"].as_u64()?, r)))
        .collect()
}

fn put(admin: SocketAddr, key: &str, value: u64) -> bool {
    let path = format!("/v1/txn/kv/{key}");
    request(
        admin,
        "PUT",
        &path,
        &value.to_string(),
        Duration::from_secs(10),
    )
    .is_some_and(|(code, _)| code == 200)
}

#[test]
fn range_logs_stay_bounded_and_a_restarted_node_catches_up_through_snapshots() {
    let entries = SNAPSHOT_ENTRIES.to_string();
    let (cluster, admin, _) = start_cluster_with(
        "range-compaction",
        3,
        &[
            "--ranges",
            "--range-split-keys",
            "8",
            "--range-snapshot-entries",
            &entries,
        ],
    );
    eventually("the ranges serve writes", || put(admin(1), "k000", 0));
    // n3 misses every split and every entry the others compact away.
    cluster.kill(3);
    let mut last = BTreeMap::new();
    // Each key is written once a round, so a range of k keys applies about 12k entries:
    // the ranges of 6 or more keys pass the threshold of 64 however the splits fell (with
    // 6 rounds, a run whose splits left 4-7 keys per range snapshotted none of them).
    for round in 1..=12u64 {
        for i in 0..40 {
            let key = format!("k{i:03}");
            let node = if i % 2 == 0 { admin(1) } else { admin(2) };
            let value = round * 1000 + i;
            eventually(&format!("put {key}"), || put(node, &key, value));
            last.insert(key, value);
        }
    }
    let before = replicas(admin(1));
    let data_ranges = before.values().filter(|r| r["serves_keys"] == true).count();
    assert!(
        data_ranges >= 4,
        "40 keys split at 8 made {data_ranges} ranges"
    );
    let compacted = before
        .values()
        .filter(|r| r["snapshot_index"].as_u64() > Some(1))
        .count();
    assert!(
        compacted >= 2,
        "only {compacted} ranges took a snapshot: {before:?}"
    );
    cluster.restart();
    // n3 hosts every range with the state of the others: same applied index (nothing
    // is written now) and the same keys.
    eventually("the restarted node catches up on every range", || {
        let (one, three) = (replicas(admin(1)), replicas(admin(3)));
        !three.is_empty()
            && one.iter().all(|(id, r)| {
                three.get(id).is_some_and(|t| {
                    t["applied"] == r["applied"]
                        && t["keys"] == r["keys"]
                        && t["serves_keys"] == r["serves_keys"]
                })
            })
    });
    for node in 1..=3 {
        for (id, r) in replicas(admin(node)) {
            let log = r["log_entries"].as_u64().unwrap_or(u64::MAX);
            assert!(
                log <= SNAPSHOT_ENTRIES,
                "n{node} range {id} keeps {log} log entries (threshold {SNAPSHOT_ENTRIES})"
            );
        }
    }
    // The data is intact, read through the restarted node.
    for (key, value) in &last {
        let path = format!("/v1/txn/kv/{key}");
        let (code, body) = request(admin(3), "GET", &path, "", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("GET {key} through n3 got no answer"));
        let got: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(code, 200, "GET {key}: {body}");
        assert_eq!(got["value"].as_u64(), Some(*value), "{key}: {body}");
    }
}

/// Run etcdctl; (success, stdout + stderr).
fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .expect("etcdctl is not installed: apt-get install -y etcd-client (.ci/run does this)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The header revision of `etcdctl put`, from `-w json`.
fn put_revision(endpoints: &str, key: &str, value: &str) -> i64 {
    let (ok, out) = etcdctl(endpoints, &["put", key, value, "-w", "json"]);
    assert!(ok, "put {key}: {out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    v["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no revision in {out}"))
}

fn old_revisions_are_compacted_automatically(name: &str, extra: &[&str]) {
    let mut flags = vec![
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "2s",
    ];
    flags.extend_from_slice(extra);
    let (_cluster, _, client) = start_cluster_with(name, 3, &flags);
    let endpoints: String = (1..=3)
        .map(|i| client(i).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let e = endpoints.as_str();
    eventually("etcdctl put is served", || etcdctl(e, &["put", "a", "0"]).0);
    let first = put_revision(e, "a", "1");
    let second = put_revision(e, "a", "2");
    let (ok, out) = etcdctl(e, &["get", "a", "--rev", &first.to_string()]);
    assert!(
        ok && out.contains('1'),
        "a read at {first} before compaction: {out}"
    );
    // Nobody calls Compact: the leader's compactor does, at a revision recorded at
    // least 2 s earlier, every 2 s.
    eventually("the first revision is compacted away", || {
        let (ok, out) = etcdctl(e, &["get", "a", "--rev", &first.to_string()]);
        !ok && out.contains("required revision has been compacted")
    });
    // The newest value is kept, and so is the write history above the compaction.
    let (ok, out) = etcdctl(e, &["get", "a", "--print-value-only"]);
    assert!(ok && out.trim() == "2", "{out}");
    let (ok, out) = etcdctl(e, &["get", "a", "--rev", &second.to_string()]);
    assert!(
        ok || out.contains("required revision has been compacted"),
        "a read at {second}: {out}"
    );
}

#[test]
fn periodic_auto_compaction_compacts_the_single_group() {
    old_revisions_are_compacted_automatically("auto-compact", &[]);
}

#[test]
fn periodic_auto_compaction_compacts_the_ranges() {
    old_revisions_are_compacted_automatically("auto-compact-ranges", &["--ranges"]);
}
