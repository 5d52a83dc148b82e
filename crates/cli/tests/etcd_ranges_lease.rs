//! etcd's Lease, Lock and Election over the multi-Raft ranges (issue 11): `synod up
//! --ranges` with ranges that split past 3 keys, driven by `etcdctl` 3.4 and the Rust
//! `etcd-client`:
//!
//! - `lease grant`, `put --lease` of keys in two different ranges, `get -w json` shows
//!   the lease id, `lease timetolive --keys`, `lease keep-alive --once`, `lease list`;
//! - `lease revoke` deletes both keys in one watch response at one revision (atomic
//!   across ranges) and leaves unleased keys alone; a second revoke and a put with the
//!   revoked lease fail with etcd's "requested lease not found";
//! - a lease survives a SIGKILL of the meta group's leader (with its TTL restarted by
//!   the new leader), and a 2 s lease expires on its own, deleting its key;
//! - two contending `etcdctl lock` processes never overlap;
//! - `etcdctl elect --listen` sees the leadership move when the leader resigns (SIGINT)
//!   and when the next leader's process is SIGKILLed (its 60 s session lease expires,
//!   so this part takes a minute).

// A driver-level test of real processes: wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::etcd_ranges::{range_of, ranges};

use common::etcdctl::{contending_locks_never_overlap, etcdctl_cmd};
use common::{eventually, start_cluster_with};
use etcd_client::{Client, ConnectOptions, WatchOptions};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The node (1-based) whose meta-group replica is the leader.
fn meta_leader(admin: &dyn Fn(u16) -> SocketAddr, alive: &[u16]) -> Option<u16> {
    alive.iter().copied().find(|&i| {
        ranges(admin(i))
            .iter()
            .any(|r| r["serves_keys"] == false && r["role"] == "leader")
    })
}

/// Run etcdctl; (success, stdout, stderr).
fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let out = etcdctl_cmd(endpoints)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl is not installed: apt-get install -y etcd-client (.ci/run does this)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(endpoints: &str, args: &[&str]) -> String {
    let (success, out, err) = etcdctl(endpoints, args);
    assert!(success, "etcdctl {args:?} failed: {out}{err}");
    out
}

/// `lease grant N` → the lease id (hex, as etcdctl prints and takes it).
fn grant(endpoints: &str, ttl: u32) -> String {
    let out = ok(endpoints, &["lease", "grant", &ttl.to_string()]);
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("lease grant printed {out}"))
        .to_string()
}

/// Kills a child process when dropped (an assertion failed mid-test).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collects a child's stdout in the background.
fn collect_stdout(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Read `rx` into `seen` until it contains `what` or `limit` passes.
fn wait_for(
    rx: &std::sync::mpsc::Receiver<String>,
    seen: &mut String,
    what: &str,
    limit: Duration,
) {
    let started = Instant::now();
    while started.elapsed() < limit && !seen.contains(what) {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&chunk);
        }
    }
}

#[test]
fn etcd_leases_locks_and_elections_work_over_ranges() {
    let (cluster, admin, client) = start_cluster_with(
        "etcd-ranges-lease",
        3,
        &["--ranges", "--range-split-keys", "3"],
    );
    let endpoints: String = (1..=3)
        .map(|i| client(i).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let e = endpoints.as_str();
    eventually("etcdctl is served over the ranges", || {
        etcdctl(e, &["put", "l/00", "v"]).0
    });
    for i in 1..9 {
        ok(e, &["put", &format!("l/{i:02}"), "v"]);
    }
    eventually("the keys split over several ranges", || {
        let first = range_of(admin(1), "l/01");
        first.is_some() && first != range_of(admin(1), "l/07")
    });

    // grant, put --lease in two ranges, the lease id in reads, timetolive, keep-alive.
    let id = grant(e, 60);
    let id_dec = i64::from_str_radix(&id, 16).unwrap();
    ok(e, &["put", "l/01", "a", &format!("--lease={id}")]);
    ok(e, &["put", "l/07", "b", &format!("--lease={id}")]);
    let json: Value = serde_json::from_str(&ok(e, &["get", "l/01", "-w", "json"])).unwrap();
    assert_eq!(json["kvs"][0]["lease"].as_i64(), Some(id_dec), "{json}");
    let ttl = ok(e, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("[l/01 l/07]"),
        "{ttl}"
    );
    assert!(ok(e, &["lease", "keep-alive", "--once", &id]).contains("keepalived with TTL(60)"));
    assert!(ok(e, &["lease", "list"]).contains(&id));
    // A key overwritten without the lease leaves it (and is not revoked with it).
    ok(e, &["put", "l/04", "c", &format!("--lease={id}")]);
    ok(e, &["put", "l/04", "plain"]);
    let ttl = ok(e, &["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("[l/01 l/07]"), "{ttl}");

    // Revoke: both keys go in one watch response, at one revision, across ranges.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = client(1).to_string();
    let (mut watcher, mut stream) = runtime.block_on(async {
        let opts = ConnectOptions::new().with_timeout(Duration::from_secs(10));
        let mut c = Client::connect([addr], Some(opts)).await.unwrap();
        c.watch("l/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap()
    });
    ok(e, &["lease", "revoke", &id]);
    let deletes = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let resp = stream.message().await.unwrap().unwrap();
                if !resp.events().is_empty() {
                    return resp;
                }
            }
        })
        .await
        .expect("the revoke's deletions arrive")
    });
    let keys: Vec<&str> = deletes
        .events()
        .iter()
        .map(|ev| ev.kv().map_or("", |kv| kv.key_str().unwrap_or("")))
        .collect();
    assert_eq!(
        keys,
        ["l/01", "l/07"],
        "one response, one revision: {deletes:?}"
    );
    assert!(deletes
        .events()
        .iter()
        .all(|ev| ev.event_type() == etcd_client::EventType::Delete));
    runtime.block_on(async { watcher.cancel().await.unwrap() });
    assert_eq!(ok(e, &["get", "l/01"]).trim(), "");
    assert_eq!(ok(e, &["get", "l/07"]).trim(), "");
    assert_eq!(
        ok(e, &["get", "l/04", "--print-value-only"]).trim(),
        "plain"
    );
    let (success, out, err) = etcdctl(e, &["lease", "revoke", &id]);
    assert!(
        !success && err.contains("requested lease not found"),
        "{out}{err}"
    );
    let (success, out, err) = etcdctl(e, &["put", "l/02", "x", &format!("--lease={id}")]);
    assert!(
        !success && err.contains("requested lease not found"),
        "{out}{err}"
    );
    assert!(!ok(e, &["lease", "list"]).contains(&id));

    // A lease survives a SIGKILL of the meta group's leader; its TTL restarts there.
    let kept = grant(e, 30);
    ok(e, &["put", "l/05", "k", &format!("--lease={kept}")]);
    let mut victim = None;
    eventually("the meta group has a leader", || {
        victim = meta_leader(&admin, &[1, 2, 3]);
        victim.is_some()
    });
    let victim = victim.unwrap();
    cluster.kill(victim);
    let alive: Vec<u16> = (1..=3).filter(|&i| i != victim).collect();
    let live_endpoints: String = alive
        .iter()
        .map(|&i| client(i).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let live = live_endpoints.as_str();
    eventually("another node leads the meta group", || {
        meta_leader(&admin, &alive).is_some()
    });
    let ttl = ok(live, &["lease", "timetolive", &kept, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(30s)") && ttl.contains("[l/05]"),
        "{ttl}"
    );
    assert_eq!(ok(live, &["get", "l/05", "--print-value-only"]).trim(), "k");
    cluster.restart();

    // A short lease expires on its own: the meta leader's lessor finds it, its node
    // revokes it.
    let started = Instant::now();
    let short = grant(e, 2);
    ok(e, &["put", "l/06", "x", &format!("--lease={short}")]);
    eventually("a 2 s lease expires and its key goes", || {
        ok(e, &["get", "l/06"]).trim().is_empty()
    });
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "expired early"
    );
    let ttl = ok(e, &["lease", "timetolive", &short]);
    assert!(ttl.contains("already expired"), "{ttl}");

    // lock: two contending etcdctl lock processes never overlap.
    contending_locks_never_overlap(e, &cluster.dir);

    // elect: the observer sees alpha, then beta when alpha resigns (SIGINT), then gamma
    // when beta's process is SIGKILLed (its session lease expires).
    let stderr_log = cluster.dir.join("elect.err");
    let spawn = |args: &[&str], stdout: Stdio| {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .unwrap();
        Reaped(
            etcdctl_cmd(e)
                .args(args)
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap(),
        )
    };
    let errors = || std::fs::read_to_string(&stderr_log).unwrap_or_default();
    let mut observer = spawn(&["elect", "--listen", "the-election"], Stdio::piped());
    let seen_rx = collect_stdout(&mut observer.0);
    let mut seen = String::new();
    let alpha = spawn(&["elect", "the-election", "alpha"], Stdio::null());
    wait_for(&seen_rx, &mut seen, "alpha", Duration::from_secs(20));
    assert!(
        seen.contains("alpha"),
        "the observer saw: {seen}; {}",
        errors()
    );
    let beta = spawn(&["elect", "the-election", "beta"], Stdio::null());
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        !seen.contains("beta"),
        "beta leads while alpha does: {seen}"
    );
    // etcdctl elect resigns on SIGINT.
    unsafe { libc::kill(alpha.0.id() as i32, libc::SIGINT) };
    wait_for(&seen_rx, &mut seen, "beta", Duration::from_secs(20));
    assert!(
        seen.contains("beta"),
        "the observer saw: {seen}; {}",
        errors()
    );
    let gamma = spawn(&["elect", "the-election", "gamma"], Stdio::null());
    std::thread::sleep(Duration::from_millis(800));
    unsafe { libc::kill(beta.0.id() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    wait_for(&seen_rx, &mut seen, "gamma", Duration::from_secs(90));
    assert!(
        seen.contains("gamma"),
        "the observer saw: {seen}; {}",
        errors()
    );
    // gamma leads only once beta's 60 s session lease expired (beta never revoked it).
    assert!(
        killed.elapsed() >= Duration::from_secs(55),
        "{:?}",
        killed.elapsed()
    );
    eprintln!("gamma led {:?} after beta's SIGKILL", killed.elapsed());
    drop((observer, alpha, beta, gamma));
    drop(cluster);
}
