//! The bank test on real processes (issue 11, part 3): `synod up --ranges` with ranges
//! that split past 3 keys, so 8 accounts spread over several Raft groups; concurrent
//! transfers (cross- and single-range transactions) and snapshot reads of every balance
//! through the HTTP API of every node, while the leader of the range that holds the
//! transaction records of `acct/000` and then the leader of the meta group (the
//! timestamp oracle) are SIGKILLed and restarted. Every snapshot read must sum to the
//! total (so none sees part of a transfer), and every key's history of reads and writes
//! must be linearizable (synod-check).
// A test driver: it reads the wall clock to report recovery times.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::{eventually, request, start_cluster_with, synod, Recorder};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_check::history::{Op, OpResult, Process};
use synod_check::linearizability::{check_kv, CheckResult};

const ACCOUNTS: u32 = 8;
const INITIAL: u64 = 100;
const TIMEOUT: Duration = Duration::from_secs(15);

fn account(i: u32) -> String {
    format!("acct/{i:03}")
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Option<(u16, Value)> {
    let (code, text) = request(addr, "POST", path, &body.to_string(), TIMEOUT)?;
    Some((code, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn ranges(addr: SocketAddr) -> Vec<Value> {
    request(addr, "GET", "/v1/txn/ranges", "", Duration::from_secs(3))
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| v["ranges"].as_array().cloned())
        .unwrap_or_default()
}

/// The node (1-based) that reports itself leader of the range holding `key` (or of the
/// meta group for `None`).
fn leader_of(admin: &dyn Fn(u16) -> SocketAddr, key: Option<&str>) -> Option<u16> {
    (1..=3u16).find(|&i| {
        ranges(admin(i)).iter().any(|r| {
            let holds = match key {
                None => r["serves_keys"] == false,
                Some(k) => {
                    r["serves_keys"] == true
                        && r["start"].as_str().is_some_and(|s| k >= s)
                        && r["end"].as_str().is_none_or(|e| k < e)
                }
            };
            holds && r["role"] == "leader"
        })
    })
}

struct Shared {
    rec: Recorder,
    errors: Mutex<Vec<String>>,
    /// Nodes not to send to (killed).
    down: Mutex<Vec<u16>>,
    stop: AtomicBool,
    commits: AtomicU64,
    reads: AtomicU64,
}

impl Shared {
    fn pick(&self, i: usize) -> u16 {
        let down = self.down.lock().unwrap().clone();
        let live: Vec<u16> = (1..=3).filter(|n| !down.contains(n)).collect();
        live[i % live.len()]
    }
}

/// Snapshot-read `keys` through node `addr`, recording one read per key.
fn snapshot(
    s: &Shared,
    process: u64,
    addr: SocketAddr,
    keys: &[String],
) -> Option<Vec<Option<u64>>> {
    let invoked = s.rec.now();
    let answer = post(addr, "/v1/txn/read", &json!({ "keys": keys }));
    let done = s.rec.now();
    let (200, body) = answer? else { return None };
    let values: Vec<Option<u64>> = keys.iter().map(|k| body["values"][k].as_u64()).collect();
    let mut h = s.rec.history.lock().unwrap();
    for (k, v) in keys.iter().zip(&values) {
        let id = h.invoke(Process(process), Op::Read { key: k.clone() }, invoked);
        h.ok(id, OpResult::ReadOk(*v), done).unwrap();
    }
    Some(values)
}

fn transfer_client(s: Arc<Shared>, process: u64, admin: impl Fn(u16) -> SocketAddr) {
    let mut x = process.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut i = process as usize;
    while !s.stop.load(Ordering::Relaxed) {
        i += 1;
        let addr = admin(s.pick(i));
        let from = next(u64::from(ACCOUNTS)) as u32;
        let to = (from + 1 + next(u64::from(ACCOUNTS) - 1) as u32) % ACCOUNTS;
        let (from, to) = (account(from), account(to));
        let keys = vec![from.clone(), to.clone()];
        let Some(values) = snapshot(&s, process, addr, &keys) else {
            continue;
        };
        let (Some(a), Some(b)) = (values[0], values[1]) else {
            s.errors
                .lock()
                .unwrap()
                .push(format!("an account is missing: {keys:?} read {values:?}"));
            continue;
        };
        let amount = 1 + next(10).min(a);
        if a < amount {
            continue;
        }
        let writes = [(from.clone(), a - amount), (to.clone(), b + amount)];
        let invoked = s.rec.now();
        let ids: Vec<_> = {
            let mut h = s.rec.history.lock().unwrap();
            writes
                .iter()
                .map(|(key, value)| {
                    h.invoke(
                        Process(process),
                        Op::Write {
                            key: key.clone(),
                            value: *value,
                        },
                        invoked,
                    )
                })
                .collect()
        };
        let body = json!({
            "compare": [{ "key": from, "value": a }, { "key": to, "value": b }],
            "put": { &from: a - amount, &to: b + amount },
        });
        let answer = post(addr, "/v1/txn", &body);
        let done = s.rec.now();
        let mut h = s.rec.history.lock().unwrap();
        match answer {
            Some((200, v)) if v["succeeded"] == true => {
                s.commits.fetch_add(1, Ordering::Relaxed);
                for id in ids {
                    h.ok(id, OpResult::WriteOk, done).unwrap();
                }
            }
            // The compares failed (nothing written), or every attempt aborted.
            Some((200, _)) | Some((409, _)) => {
                for id in ids {
                    h.fail(id, done).unwrap();
                }
            }
            // No answer, a timeout, or a node that died mid-request: unknown outcome.
            _ => {
                for id in ids {
                    h.info(id, done).unwrap();
                }
            }
        }
    }
}

fn read_client(s: Arc<Shared>, process: u64, admin: impl Fn(u16) -> SocketAddr) {
    let keys: Vec<String> = (0..ACCOUNTS).map(account).collect();
    let mut i = process as usize;
    while !s.stop.load(Ordering::Relaxed) {
        i += 1;
        let Some(values) = snapshot(&s, process, admin(s.pick(i)), &keys) else {
            continue;
        };
        s.reads.fetch_add(1, Ordering::Relaxed);
        let sum: Option<u64> = values.iter().copied().sum();
        if sum != Some(INITIAL * u64::from(ACCOUNTS)) {
            s.errors
                .lock()
                .unwrap()
                .push(format!("a snapshot read saw {values:?}"));
        }
    }
}

#[test]
fn bank_total_holds_and_histories_are_linearizable_across_leader_kills() {
    let (cluster, admin, _) =
        start_cluster_with("txn-bank", 3, &["--ranges", "--range-split-keys", "3"]);
    let init: serde_json::Map<String, Value> = (0..ACCOUNTS)
        .map(|i| (account(i), json!(INITIAL)))
        .collect();
    let s = Arc::new(Shared {
        rec: Recorder::new(),
        errors: Mutex::new(Vec::new()),
        down: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        commits: AtomicU64::new(0),
        reads: AtomicU64::new(0),
    });
    eventually("the accounts are written", || {
        post(admin(1), "/v1/txn", &json!({ "put": init })).is_some_and(|(c, _)| c == 200)
    });
    for i in 0..ACCOUNTS {
        s.rec.seed_write(&account(i), INITIAL);
    }
    eventually("the accounts span at least 3 ranges", || {
        ranges(admin(1))
            .iter()
            .filter(|r| r["serves_keys"] == true)
            .count()
            >= 3
    });

    let mut threads = Vec::new();
    for p in 1..=3u64 {
        let (s, admin) = (s.clone(), admin.clone());
        threads.push(std::thread::spawn(move || transfer_client(s, p, admin)));
    }
    for p in 4..=5u64 {
        let (s, admin) = (s.clone(), admin.clone());
        threads.push(std::thread::spawn(move || read_client(s, p, admin)));
    }

    // Kill the leader of the range holding acct/000's transaction records, then the
    // oracle's (meta group's) leader; restart each while the load runs.
    for key in [Some("acct/000"), None] {
        std::thread::sleep(Duration::from_secs(2));
        let mut victim = None;
        eventually("a leader is known", || {
            victim = leader_of(&admin, key);
            victim.is_some()
        });
        let victim = victim.unwrap();
        s.down.lock().unwrap().push(victim);
        cluster.kill(victim);
        let committed = s.commits.load(Ordering::Relaxed);
        let killed = Instant::now();
        eventually("a transfer commits without the killed node", || {
            s.commits.load(Ordering::Relaxed) > committed
        });
        eprintln!(
            "killed n{victim} (leader of {}): next commit within {:?}",
            key.unwrap_or("the meta group"),
            killed.elapsed()
        );
        cluster.restart();
        s.down.lock().unwrap().clear();
    }
    std::thread::sleep(Duration::from_secs(2));
    s.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    let errors = s.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "bank violations: {errors:#?}");
    assert!(
        s.reads.load(Ordering::Relaxed) > 0,
        "no snapshot read completed"
    );
    let keys: Vec<String> = (0..ACCOUNTS).map(account).collect();
    let mut last = None;
    eventually("a final snapshot read answers", || {
        last = snapshot(&s, 9, admin(2), &keys);
        last.is_some()
    });
    let total: Option<u64> = last.unwrap().into_iter().sum();
    assert_eq!(
        total,
        Some(INITIAL * u64::from(ACCOUNTS)),
        "the total changed"
    );
    let history = s.rec.history.lock().unwrap();
    match check_kv(&history) {
        CheckResult::Ok => {}
        other => panic!(
            "the history of {} events is not linearizable: {other:?}",
            history.len()
        ),
    }
    eprintln!(
        "{} transfers committed, {} snapshot reads, {} history events",
        s.commits.load(Ordering::Relaxed),
        s.reads.load(Ordering::Relaxed),
        history.len()
    );
    drop(cluster);
}

#[test]
fn txn_commands_work_and_reject_bad_flags() {
    let (code, _, err) = synod(&["txn", "commit", "--put", "novalue"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not KEY=VALUE"), "{err}");
    let (code, _, err) = synod(&["txn", "commit", "--add", "k=x"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a signed 64-bit integer"), "{err}");
    let (code, _, err) = synod(&["bench", "txn", "--accounts", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("accounts"), "{err}");

    let (cluster, _admin, _) = start_cluster_with("txn-cli", 3, &["--ranges"]);
    let dir = cluster.dir.to_str().unwrap().to_string();
    let (code, out, err) = synod(&["txn", "--dir", &dir, "put", "a", "7"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = synod(&[
        "txn", "--dir", &dir, "commit", "--if", "a=7", "--put", "b=1", "--add", "a=-2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("committed"), "{out}");
    let (code, out, _) = synod(&[
        "txn", "--dir", &dir, "commit", "--if", "a=7", "--put", "b=9",
    ]);
    assert_eq!(code, 1, "the compare must fail: {out}");
    let (code, out, err) = synod(&["txn", "--dir", &dir, "read", "a", "b", "c"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("a 5") && out.contains("b 1") && out.contains("c null"),
        "{out}"
    );
    let (code, out, _) = synod(&["txn", "--dir", &dir, "get", "a"]);
    assert_eq!((code, out.trim()), (0, "5"));
    let (code, out, _) = synod(&["txn", "--dir", &dir, "ranges"]);
    assert_eq!(code, 0);
    assert!(out.contains("(meta)"), "{out}");
    // An add that would go below zero fails as a condition, and writes nothing.
    let (code, _, _) = synod(&[
        "txn", "--dir", &dir, "commit", "--add", "a=-6", "--put", "b=3",
    ]);
    assert_eq!(code, 1);
    let (_, out, _) = synod(&["txn", "--dir", &dir, "get", "b"]);
    assert_eq!(out.trim(), "1");
    // Deletes: one key, and atomically with a put.
    let (code, _, _) = synod(&["txn", "--dir", &dir, "del", "b"]);
    assert_eq!(code, 0);
    let (_, out, _) = synod(&["txn", "--dir", &dir, "get", "b"]);
    assert_eq!(out.trim(), "null");
    let (code, _, _) = synod(&[
        "txn", "--dir", &dir, "commit", "--if", "b=absent", "--delete", "a", "--put", "b=2",
    ]);
    assert_eq!(code, 0);
    let (_, out, _) = synod(&["txn", "--dir", &dir, "read", "a", "b"]);
    assert!(out.contains("a null") && out.contains("b 2"), "{out}");
}
