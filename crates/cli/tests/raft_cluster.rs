//! The Raft KV store on real processes: clients write, read and compare-and-set through
//! any node while the leader is killed with SIGKILL and restarted. No acknowledged write
//! may be lost, and the whole history must be linearizable.

// A driver-level test of real processes: wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
use common::{eventually, raft_leader, request, start_cluster, status, Recorder};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use synod_check::history::{Op, OpResult, Process};
use synod_check::linearizability::{check_kv, CheckResult};

mod common;

/// One client: a loop of operations on its own key (writes of rising values) and on a
/// shared key (compare-and-set), plus reads, each sent to a node chosen in turn.
fn client(
    id: u64,
    nodes: Vec<SocketAddr>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, u64)>>>,
) {
    let own = format!("c{id}");
    let mut next = 0u64;
    let mut i = id as usize;
    let timeout = Duration::from_secs(10);
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let node = nodes[i % nodes.len()];
        let (op, method, path, body) = match i % 4 {
            0 | 1 => {
                next += 1;
                (
                    Op::Write {
                        key: own.clone(),
                        value: next,
                    },
                    "PUT",
                    format!("/v1/kv/{own}"),
                    next.to_string(),
                )
            }
            2 => (
                Op::Read { key: own.clone() },
                "GET",
                format!("/v1/kv/{own}"),
                String::new(),
            ),
            _ => {
                let expected = id * 1000 + (i as u64 % 3);
                (
                    Op::Cas {
                        key: "shared".into(),
                        expected: Some(expected),
                        new: expected + 1,
                    },
                    "POST",
                    format!("/v1/kv/shared?expect={expected}"),
                    (expected + 1).to_string(),
                )
            }
        };
        let op_id = {
            let mut h = rec.history.lock().unwrap();
            let t = rec.now();
            h.invoke(Process(id), op.clone(), t)
        };
        let answer = request(node, method, &path, &body, timeout);
        let t = rec.now();
        let mut h = rec.history.lock().unwrap();
        let result = match (&op, answer) {
            (Op::Write { key, value }, Some((200, _))) => {
                acked.lock().unwrap().push((key.clone(), *value));
                Some(OpResult::WriteOk)
            }
            (Op::Read { .. }, Some((200, body))) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                Some(OpResult::ReadOk(v["value"].as_u64()))
            }
            (Op::Read { .. }, Some((404, _))) => Some(OpResult::ReadOk(None)),
            (Op::Cas { .. }, Some((200, _))) => Some(OpResult::CasOk(true)),
            (Op::Cas { .. }, Some((412, _))) => Some(OpResult::CasOk(false)),
            _ => None,
        };
        match result {
            Some(r) => h.ok(op_id, r, t).unwrap(),
            // A timeout, a dropped connection or an error: the outcome is unknown.
            None => h.info(op_id, t).unwrap(),
        }
    }
}

fn run(nodes: u16) {
    let (cluster, admin) = start_cluster(&format!("raft-kill-{nodes}"), nodes);
    eventually("a leader is elected", || {
        raft_leader(&admin, nodes).is_some()
    });
    let addrs: Vec<SocketAddr> = (1..=nodes).map(&admin).collect();
    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    // Bad input gets a clear 400, and changes nothing.
    let bad = request(
        admin(1),
        "PUT",
        "/v1/kv/shared",
        "not-a-number",
        Duration::from_secs(10),
    );
    assert!(
        matches!(&bad, Some((400, body)) if body.contains("unsigned 64-bit integer")),
        "{bad:?}"
    );
    let bad = request(
        admin(1),
        "POST",
        "/v1/kv/shared",
        "1",
        Duration::from_secs(10),
    );
    assert!(
        matches!(&bad, Some((400, body)) if body.contains("?expect=")),
        "{bad:?}"
    );
    // Seed the shared key so that compare-and-set has something to compare.
    let seed = request(
        admin(1),
        "PUT",
        "/v1/kv/shared",
        "1000",
        Duration::from_secs(10),
    );
    assert!(matches!(seed, Some((200, _))), "{seed:?}");
    rec.seed_write("shared", 1000);
    let clients: Vec<_> = (1..=6)
        .map(|id| {
            let (addrs, rec, stop, acked) =
                (addrs.clone(), rec.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || client(id, addrs, rec, stop, acked))
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1500));
    let old = raft_leader(&admin, nodes).expect("a leader under load");
    let acked_before = acked.lock().unwrap().len();
    assert!(
        acked_before > 0,
        "no write was acknowledged before the kill"
    );
    cluster.kill(old);
    eventually("another node is elected leader", || {
        raft_leader(&admin, nodes).is_some_and(|l| l != old)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let acked_after_kill = acked.lock().unwrap().len();
    assert!(
        acked_after_kill > acked_before,
        "no write was acknowledged after the leader died"
    );
    // Bring the killed node back; it catches up from its own log and the leader.
    cluster.restart();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    eventually(
        "the restarted node has applied what the leader committed",
        || {
            let Some(l) = raft_leader(&admin, nodes) else {
                return false;
            };
            let commit = status(admin(l)).and_then(|s| s["raft"]["commit_index"].as_u64());
            let applied = status(admin(old)).and_then(|s| s["raft"]["last_applied"].as_u64());
            matches!((commit, applied), (Some(c), Some(a)) if a >= c)
        },
    );

    // No acknowledged write is lost: each client's key holds at least the newest value
    // acknowledged to it (its values only rise), read through the restarted node.
    let acked = acked.lock().unwrap();
    let mut newest = std::collections::BTreeMap::new();
    for (key, value) in acked.iter() {
        let e = newest.entry(key.clone()).or_insert(0);
        *e = (*e).max(*value);
    }
    for (key, value) in &newest {
        let got = request(
            admin(old),
            "GET",
            &format!("/v1/kv/{key}"),
            "",
            Duration::from_secs(10),
        );
        let Some((200, body)) = got else {
            panic!("{key}: {got:?}")
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let now = v["value"].as_u64().unwrap();
        assert!(
            now >= *value,
            "{key}: acknowledged {value}, now {now}: a write was lost"
        );
    }
    let history = rec.history.lock().unwrap();
    match check_kv(&history) {
        CheckResult::Ok => {}
        other => panic!(
            "the history of {} events is not linearizable: {other:?}\n{}",
            history.len(),
            history.to_jsonl()
        ),
    }
    eprintln!(
        "{nodes} nodes: {} operations, {} writes acknowledged ({} before the kill), leader n{old} killed",
        history.operations().len(),
        acked.len(),
        acked_before
    );
}

#[test]
fn three_nodes_lose_no_acknowledged_write_when_the_leader_is_killed() {
    run(3);
}

#[test]
fn five_nodes_lose_no_acknowledged_write_when_the_leader_is_killed() {
    run(5);
}
