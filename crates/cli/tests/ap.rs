//! The Dynamo-style AP store on real processes (`synod up --ap`): clients read-modify-write
//! through any node while two of five nodes are killed with SIGKILL; writes keep being
//! acknowledged (sloppy quorum); after the nodes restart, handoff and anti-entropy make
//! every owner's copy identical, and no acknowledged write is lost.

// A driver-level test of real processes: wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
use common::{eventually, start_cluster_with, synod, Cluster};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

const NODES: u16 = 5;

/// One HTTP/1.1 request with extra headers: status, the context header and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    context: Option<&str>,
    body: &str,
) -> Option<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let header = context.map_or(String::new(), |c| format!("X-Synod-Context: {c}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{header}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let context = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-synod-context")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Some((code, context, body.to_string()))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// The integer siblings of a read.
fn values(body: &str) -> Vec<u64> {
    json(body)["siblings"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn start_ap_cluster(name: &str) -> (Cluster, impl Fn(u16) -> SocketAddr + Clone) {
    let (cluster, admin, _) = start_cluster_with(name, NODES, &["--ap"]);
    (cluster, admin)
}

/// A client that owns `keys`: read, then write the next number with the read's context.
fn client(
    id: u64,
    admin: impl Fn(u16) -> SocketAddr,
    alive: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
) {
    let mut next = 0u64;
    let mut i = id as usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let node = {
            let a = alive.lock().unwrap();
            a[i % a.len()]
        };
        let key = format!("c{id}-{}", i % 4);
        let path = format!("/kv/load/{key}");
        let Some((code, context, body)) = http(admin(node), "GET", &path, None, "") else {
            continue;
        };
        if code != 200 && code != 404 {
            continue;
        }
        next = next.max(values(&body).into_iter().max().unwrap_or(0)) + 1;
        let answer = http(admin(node), "PUT", &path, Some(&context), &next.to_string());
        if matches!(answer, Some((200, _, _))) {
            let mut a = acked.lock().unwrap();
            let e = a.entry(key).or_insert(0);
            *e = (*e).max(next);
        }
    }
}

#[test]
fn ap_store_survives_two_kills_and_converges() {
    let (cluster, admin) = start_ap_cluster("ap-kill");
    eventually("the AP store takes writes", || {
        matches!(
            http(admin(1), "PUT", "/kv/t/probe", None, "x"),
            Some((200, _, _))
        )
    });

    // Siblings and contexts through the HTTP API.
    let (_, c1, _) = http(admin(1), "PUT", "/kv/t/s", None, "a").unwrap();
    http(admin(2), "PUT", "/kv/t/s", None, "b").unwrap();
    let (code, context, body) = http(admin(3), "GET", "/kv/t/s?r=3", None, "").unwrap();
    assert_eq!(code, 200, "{body}");
    let mut sib: Vec<String> = json(&body)["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    sib.sort();
    assert_eq!(sib, ["a", "b"], "two blind writes are siblings");
    assert!(!c1.is_empty());
    http(admin(4), "PUT", "/kv/t/s?w=3", Some(&context), "c").unwrap();
    let (_, _, body) = http(admin(5), "GET", "/kv/t/s?r=3", None, "").unwrap();
    assert_eq!(json(&body)["siblings"], serde_json::json!(["c"]), "{body}");
    let (code, _, _) = http(admin(1), "DELETE", "/kv/t/s?w=3", Some(&context), "").unwrap();
    assert_eq!(code, 200);

    // Bad input: a clear 400, never a crash.
    let bad = http(admin(1), "PUT", "/kv/t/s", Some("garbage"), "x").unwrap();
    assert!(bad.0 == 400 && bad.2.contains("X-Synod-Context"), "{bad:?}");
    let bad = http(admin(1), "GET", "/kv/t/s?r=9", None, "").unwrap();
    assert!(bad.0 == 400 && bad.2.contains("r must be"), "{bad:?}");
    let bad = http(admin(1), "GET", "/kv/t/s?r=abc", None, "").unwrap();
    assert_eq!(bad.0, 400, "{bad:?}");

    let alive = Arc::new(Mutex::new((1..=NODES).collect::<Vec<u16>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let count = |a: &Arc<Mutex<BTreeMap<String, u64>>>| a.lock().unwrap().values().sum::<u64>();
    let clients: Vec<_> = (1..=4)
        .map(|id| {
            let (admin, alive, stop, acked) =
                (admin.clone(), alive.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || client(id, admin, alive, stop, acked))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let before = count(&acked);
    assert!(before > 0, "no write acknowledged before the kills");
    alive.lock().unwrap().retain(|&n| n <= 3);
    for victim in [4, 5] {
        cluster.kill(victim);
    }
    std::thread::sleep(Duration::from_millis(2500));
    let after = count(&acked);
    assert!(
        after > before,
        "no write acknowledged with two nodes down (sloppy quorum)"
    );
    cluster.restart();
    *alive.lock().unwrap() = (1..=NODES).collect();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    // Convergence: every owner's own copy of every key is identical, and holds the newest
    // value acknowledged for the key (its client only counts up).
    let acked = acked.lock().unwrap().clone();
    eventually("all owners hold identical siblings", || {
        acked.iter().all(|(key, &newest)| {
            let path = format!("/kv/load/{key}?local=true");
            let Some((200, _, body)) = http(admin(1), "GET", &path, None, "") else {
                return false;
            };
            let owners: Vec<u16> = json(&body)["owners"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.as_u64())
                        .map(|o| o as u16)
                        .collect()
                })
                .unwrap_or_default();
            let copies: Vec<Option<(String, String)>> = owners
                .iter()
                .map(|&o| {
                    http(admin(o), "GET", &path, None, "").map(|(_, c, b)| {
                        let v = json(&b);
                        (c, v["siblings"].to_string())
                    })
                })
                .collect();
            owners.len() == 3
                && copies.iter().all(|c| c.is_some() && *c == copies[0])
                && copies[0].as_ref().is_some_and(|(_, s)| {
                    values(&format!("{{\"siblings\":{s}}}")).contains(&newest)
                        || values(&format!("{{\"siblings\":{s}}}"))
                            .iter()
                            .any(|&v| v > newest)
                })
        })
    });

    // The CLI reads the same data.
    let dir = cluster.dir.to_string_lossy().to_string();
    let key = acked.keys().next().unwrap().clone();
    let (code, out, err) = synod(&["ap", "get", "load", &key, "--dir", &dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("context: "), "{out}");
    let (code, out, err) = synod(&["ap", "put", "t", "cli", "hello", "--dir", &dir]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = synod(&[
        "ap",
        "put",
        "t",
        "cli",
        "x",
        "--context",
        "oops",
        "--dir",
        &dir,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--context"), "{err}");
    let (code, _, err) = synod(&["ap", "get", "t", "cli", "--r", "0", "--dir", &dir]);
    assert_eq!(code, 2);
    assert!(err.contains("--r"), "{err}");
}

/// The node's SWIM member feeds the store's liveness view: after a SIGKILL, SWIM (not the
/// store's heartbeats) declares the node down, and a write with W = N to a key it owns is
/// acknowledged through a fallback that keeps a hinted copy.
#[test]
fn swim_marks_a_killed_node_down_and_writes_go_to_fallbacks() {
    let (cluster, admin) = start_ap_cluster("ap-swim");
    let local = |node: u16, key: &str| {
        let path = format!("/kv/h/{key}?local=true");
        match http(admin(node), "GET", &path, None, "") {
            Some((200, _, body)) => json(&body),
            _ => serde_json::Value::Null,
        }
    };
    eventually("the store takes liveness from SWIM", || {
        local(1, "x")["liveness"] == "swim"
    });
    cluster.kill(5);
    eventually("SWIM declares node 5 down", || {
        let v = local(1, "x");
        v["liveness"] == "swim"
            && v["down"]
                .as_array()
                .is_some_and(|d| d.iter().any(|n| n.as_u64() == Some(5)))
    });
    // A key that node 5 owns.
    let owners = |v: &serde_json::Value| -> Vec<u64> {
        v["owners"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o.as_u64()).collect())
            .unwrap_or_default()
    };
    let key = (0..200)
        .map(|i| format!("k{i}"))
        .find(|k| owners(&local(1, k)).contains(&5))
        .expect("some key is owned by node 5");
    let path = format!("/kv/h/{key}?w=3");
    let answer = http(admin(1), "PUT", &path, None, "hinted");
    assert!(
        matches!(answer, Some((200, _, _))),
        "W = 3 with an owner down needs a fallback: {answer:?}"
    );
    let owned = owners(&local(1, &key));
    let hints: Vec<u16> = (1..=4)
        .filter(|&n| !owned.contains(&u64::from(n)))
        .filter(|&n| local(n, &key)["siblings"] == serde_json::json!(["hinted"]))
        .collect();
    assert!(!hints.is_empty(), "no fallback holds a hint for {key}");
}
