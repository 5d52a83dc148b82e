//! etcd's own client against `synod up --nodes 3`: etcdctl 3.4 (Debian's etcd-client,
//! which .ci/run installs) runs the commands users run, and each answer is checked.

// A driver-level test of real processes: wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
use common::etcdctl::{contending_locks_never_overlap, etcdctl_cmd};
use common::start_cluster_ports;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

struct Etcdctl {
    endpoints: String,
}

impl Etcdctl {
    /// etcdctl against all three nodes' client ports, once the cluster answers a put.
    fn ready(client: &impl Fn(u16) -> std::net::SocketAddr) -> Etcdctl {
        let endpoints = (1..=3)
            .map(|i| client(i).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let e = Etcdctl { endpoints };
        common::eventually("the cluster answers etcdctl", || {
            e.cmd()
                .args(["put", "ready", "1"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        e
    }

    fn cmd(&self) -> Command {
        etcdctl_cmd(&self.endpoints)
    }

    /// Run etcdctl with `args` (and `stdin`), require success, return stdout.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut c = self.cmd();
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .expect("etcdctl is not installed: apt-get install -y etcd-client (.ci/run does this)");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn etcdctl_works_against_a_three_node_cluster() {
    let (cluster, _admin, client) = start_cluster_ports("etcdctl", 3);
    let e = Etcdctl::ready(&client);

    // put and get, with --prefix, --rev, --keys-only, --limit, --sort-by and --order.
    let first = e.ok(&["put", "fruit/apple", "red", "-w", "json"], None);
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    let rev_apple = v["header"]["revision"].as_i64().unwrap();
    e.ok(&["put", "fruit/banana", "yellow"], None);
    e.ok(&["put", "fruit/apple", "green"], None);
    assert_eq!(
        lines(&e.ok(&["get", "fruit/", "--prefix"], None)),
        ["fruit/apple", "green", "fruit/banana", "yellow"]
    );
    assert_eq!(
        lines(&e.ok(&["get", "fruit/apple", &format!("--rev={rev_apple}")], None)),
        ["fruit/apple", "red"]
    );
    assert_eq!(
        lines(&e.ok(
            &[
                "get",
                "fruit/",
                "--prefix",
                "--keys-only",
                "--sort-by=KEY",
                "--order=DESCEND",
                "--limit=1"
            ],
            None
        ))
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>(),
        ["fruit/banana"]
    );

    // txn, interactive on stdin.
    let txn = e.ok(
        &["txn", "-i"],
        Some("value(\"fruit/apple\") = \"green\"\n\nput fruit/cherry dark\n\nput fruit/cherry none\n\n"),
    );
    assert!(txn.contains("SUCCESS"), "{txn}");
    assert_eq!(
        lines(&e.ok(&["get", "fruit/cherry"], None)),
        ["fruit/cherry", "dark"]
    );

    // watch --prefix --rev replays history from that revision, in order.
    let watch = e
        .cmd()
        .args(["watch", "fruit/", "--prefix", &format!("--rev={rev_apple}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let seen = String::from_utf8_lossy(&watch.wait_with_output().unwrap().stdout).into_owned();
    assert_eq!(
        lines(&seen)[..8],
        [
            "PUT",
            "fruit/apple",
            "red",
            "PUT",
            "fruit/banana",
            "yellow",
            "PUT",
            "fruit/apple"
        ],
        "{seen}"
    );

    // del --prefix.
    assert_eq!(e.ok(&["del", "fruit/", "--prefix"], None).trim(), "3");
    assert_eq!(e.ok(&["get", "fruit/", "--prefix"], None).trim(), "");

    // Leases: grant, put --lease, timetolive --keys, keep-alive --once, list, revoke.
    let grant = e.ok(&["lease", "grant", "60"], None);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    e.ok(&["put", "leased", "x", &format!("--lease={id}")], None);
    let ttl = e.ok(&["lease", "timetolive", &id, "--keys"], None);
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("[leased]"),
        "{ttl}"
    );
    assert!(e
        .ok(&["lease", "keep-alive", "--once", &id], None)
        .contains("keepalived with TTL(60)"));
    assert!(e.ok(&["lease", "list"], None).contains(&id));
    e.ok(&["lease", "revoke", &id], None);
    assert_eq!(
        e.ok(&["get", "leased"], None).trim(),
        "",
        "revoking deletes attached keys"
    );

    // A short lease expires on its own: the leader's lessor proposes the expiry.
    let short = e.ok(&["lease", "grant", "2"], None);
    let short = short.split_whitespace().nth(1).unwrap().to_string();
    e.ok(
        &["put", "ephemeral", "x", &format!("--lease={short}")],
        None,
    );
    common::eventually("a 2 s lease expires and its key goes", || {
        e.ok(&["get", "ephemeral"], None).trim().is_empty()
    });

    // member list, endpoint status -w json, endpoint health.
    assert_eq!(e.ok(&["member", "list"], None).lines().count(), 3);
    let status: serde_json::Value =
        serde_json::from_str(&e.ok(&["endpoint", "status", "-w", "json"], None)).unwrap();
    let leaders = status
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Status"]["leader"] == s["Status"]["header"]["member_id"])
        .count();
    assert_eq!(leaders, 1, "exactly one endpoint is the leader: {status}");
    // etcdctl prints health to stderr.
    let health = e.cmd().args(["endpoint", "health"]).output().unwrap();
    assert!(health.status.success());
    let text = String::from_utf8_lossy(&health.stderr).into_owned()
        + &String::from_utf8_lossy(&health.stdout);
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");

    // lock: two contending etcdctl lock processes never overlap.
    contending_locks_never_overlap(&e.endpoints, &cluster.dir);

    // elect: an observer sees the leader change when the leader's process dies.
    let mut observer = e
        .cmd()
        .args(["elect", "--listen", "the-election"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = observer.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let read_until = |out: &mut String, word: &str, limit: Duration| {
        let started = Instant::now();
        while started.elapsed() < limit && !out.contains(word) {
            if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                out.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    };
    // etcdctl 3.4's elect has no --ttl: its session lease is the default 60 s.
    let mut first = e
        .cmd()
        .args(["elect", "the-election", "alpha"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    read_until(&mut out, "alpha", Duration::from_secs(20));
    assert!(
        out.contains("alpha"),
        "the observer never saw alpha lead: {out}"
    );
    let second = e
        .cmd()
        .args(["elect", "the-election", "beta"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    read_until(&mut out, "beta", Duration::from_secs(2));
    assert!(
        !out.contains("beta"),
        "beta led while alpha still held the election: {out}"
    );
    // SIGKILL: alpha's session lease is never revoked, so the leader's lessor must
    // expire it (60 s) before beta takes over.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    let _ = first.wait();
    read_until(&mut out, "beta", Duration::from_secs(100));
    for mut p in [observer, second] {
        let _ = p.kill();
        let _ = p.wait();
    }
    // beta can only lead once alpha's lease expired: the observer saw the change.
    assert!(out.contains("beta"), "the observer saw: {out}");
    drop(cluster);
}

/// `etcdctl check perf --load=s`: 60 s of 150 puts/s from 50 clients must pass etcd's
/// own criteria (throughput, slowest request at most 0.5 s, stddev at most 0.1 s).
#[test]
fn etcdctl_check_perf_small_load_passes() {
    let (_cluster, _admin, client) = start_cluster_ports("etcdctl-perf", 3);
    let e = Etcdctl::ready(&client);
    let out = e
        .cmd()
        .args(["check", "perf", "--load=s"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("PASS"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}
