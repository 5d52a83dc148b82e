//! The service registry with real processes: a three-node cluster (`synod up`), the
//! registry agent (`synod mesh agent`), backends (`synod mesh backend`) registered by
//! `synod svc register` processes, and a `synod mesh proxy --registry` that follows the
//! registry through an etcd watch. Instances are killed with SIGKILL.

// A driver-level test of real processes: detection windows are wall-clock time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use common::{get_response, header, request, start_cluster_ports, synod, Process};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Start `synod args...` and wait for a stdout line starting with `marker`; returns the
/// process and that line.
fn start(args: &[&str], marker: &str) -> (Process, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start synod");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let process = Process(child);
    let found = loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("synod {args:?} exited before printing {marker:?}");
        }
        if line.starts_with(marker) {
            break line.trim().to_string();
        }
    };
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    (process, found)
}

/// The address at the end of a `listening <name> <address>` line.
fn address(line: &str) -> SocketAddr {
    let text = line.rsplit(' ').next().expect("an address");
    text.trim_start_matches("http://")
        .parse()
        .expect("an address")
}

/// The ids the agent returns for `path` (a JSON array of instances).
fn ids(agent: SocketAddr, path: &str) -> Vec<String> {
    let Some((200, body)) = request(agent, "GET", path, "", Duration::from_secs(5)) else {
        return vec!["<no answer>".into()];
    };
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let mut ids: Vec<String> = list
        .as_array()
        .expect("an array")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or("").to_string())
        .collect();
    ids.sort();
    ids
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {limit:?} waiting until {what}");
}

#[test]
fn registry_discovery_follows_checks_and_leases_with_real_processes() {
    let (_cluster, _admin, client) = start_cluster_ports("registry", 3);
    let etcd = format!("{},{},{}", client(1), client(2), client(3));
    let svc = |args: &[&str]| {
        let mut all = vec!["svc", "--etcd", etcd.as_str()];
        all.extend_from_slice(args);
        synod(&all)
    };
    common::eventually("the cluster answers svc list", || svc(&["list"]).0 == 0);

    // --- svc register --ttl / list / heartbeat / deregister ---------------------------
    let (code, out, err) = svc(&[
        "register",
        "db",
        "--address",
        "127.0.0.1:5432",
        "--id",
        "db-1",
        "--tag",
        "primary",
        "--meta",
        "zone=a",
        "--ttl",
        "30s",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let lease = out
        .split_whitespace()
        .skip_while(|w| *w != "lease")
        .nth(1)
        .expect("a lease id")
        .to_string();
    let (code, out, err) = svc(&["list", "db"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("db-1") && out.contains("127.0.0.1:5432") && out.contains("passing"),
        "{out}"
    );
    let (code, out, err) = svc(&["heartbeat", "--lease", &lease]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = svc(&["list", "--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json[0]["meta"]["zone"], "a", "{out}");
    let (code, out, err) = svc(&["deregister", "db", "db-1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!svc(&["list"]).1.contains("db-1"));
    let (code, _, err) = svc(&["deregister", "db", "db-1"]);
    assert_eq!(code, 1, "{err}");

    // --- the agent, its HTTP API, and a TTL check --------------------------------------
    let (_agent, line) = start(
        &[
            "mesh",
            "agent",
            "--etcd",
            &etcd,
            "--listen",
            "127.0.0.1:0",
            "--node",
            "n1",
        ],
        "listening agent",
    );
    let agent = address(&line);
    let (code, body) = request(
        agent,
        "PUT",
        "/v1/catalog/service/api/a1",
        r#"{"address":"127.0.0.1:1","tags":["v2","eu"],"node":"n1","check":{"kind":"ttl","ttl_ms":1500,"interval_ms":500}}"#,
        Duration::from_secs(5),
    )
    .expect("agent answers");
    assert_eq!(code, 200, "{body}");
    // A new TTL check is critical until its first heartbeat.
    wait_until("api/a1 is listed", Duration::from_secs(5), || {
        ids(agent, "/v1/catalog/service/api") == ["a1"]
    });
    assert!(ids(agent, "/v1/health/service/api?passing=true").is_empty());
    assert_eq!(ids(agent, "/v1/catalog/service/api?tag=v2"), ["a1"]);
    assert!(ids(agent, "/v1/catalog/service/api?tag=v9").is_empty());
    // Repeated tags: an instance must carry every one.
    assert_eq!(ids(agent, "/v1/catalog/service/api?tag=v2&tag=eu"), ["a1"]);
    assert!(ids(agent, "/v1/catalog/service/api?tag=v2&tag=us").is_empty());
    let unknown = request(
        agent,
        "GET",
        "/v1/catalog/service/api?tags=v2",
        "",
        Duration::from_secs(5),
    );
    assert_eq!(unknown.map(|r| r.0), Some(400));
    let pass = || {
        request(
            agent,
            "PUT",
            "/v1/agent/check/pass/api/a1",
            "",
            Duration::from_secs(5),
        )
        .map(|r| r.0)
    };
    wait_until(
        "the agent runs the ttl check",
        Duration::from_secs(5),
        || pass() == Some(200),
    );
    wait_until(
        "a1 passes after a heartbeat",
        Duration::from_secs(5),
        || ids(agent, "/v1/health/service/api?passing=true") == ["a1"],
    );
    // Silence: critical within the TTL (1.5 s) plus the write and the watch.
    let silent = wait_until("a1 turns critical", Duration::from_secs(6), || {
        ids(agent, "/v1/health/service/api?passing=true").is_empty()
    });
    eprintln!("a1 critical {silent:?} after its last heartbeat (1.5 s TTL)");
    assert!(silent < Duration::from_millis(3000), "{silent:?}");
    let (_, body) = request(
        agent,
        "GET",
        "/v1/catalog/services",
        "",
        Duration::from_secs(5),
    )
    .expect("services");
    assert!(body.contains("\"api\"") && body.contains("v2"), "{body}");
    let bad = request(
        agent,
        "PUT",
        "/v1/catalog/service/api/a2",
        r#"{"address":"nowhere"}"#,
        Duration::from_secs(5),
    );
    assert_eq!(bad.map(|r| r.0), Some(400));
    let (code, _) = request(
        agent,
        "DELETE",
        "/v1/catalog/service/api/a1",
        "",
        Duration::from_secs(5),
    )
    .expect("delete");
    assert_eq!(code, 200);
    wait_until("a1 is gone", Duration::from_secs(5), || {
        ids(agent, "/v1/catalog/service/api").is_empty()
    });

    // --- backends registered by svc register, checked by the agent ----------------------
    let mut backends = Vec::new();
    let mut holders = Vec::new();
    for id in ["b1", "b2", "b3"] {
        let (process, line) = start(&["mesh", "backend", "--id", id], "listening");
        let addr = address(&line).to_string();
        backends.push(process);
        let (holder, _) = start(
            &[
                "svc",
                "--etcd",
                &etcd,
                "register",
                "web",
                "--id",
                id,
                "--address",
                &addr,
                "--node",
                "n1",
                "--check",
                "http",
                "--check-interval",
                "100ms",
                "--unhealthy-threshold",
                "2",
                "--lease-ttl",
                "2s",
            ],
            "registered",
        );
        holders.push(holder);
    }
    wait_until("three web instances pass", Duration::from_secs(10), || {
        ids(agent, "/v1/health/service/web?passing=true") == ["b1", "b2", "b3"]
    });

    // A blocking query returns when the registry changes, not at the end of its wait.
    let (_, response) = get_response(agent, "/v1/catalog/service/web");
    let index: i64 = header(&response, "x-synod-index")
        .and_then(|v| v.parse().ok())
        .expect("an index");
    let blocked = std::thread::spawn(move || {
        let t = Instant::now();
        let (code, body) = get_response(
            agent,
            &format!("/v1/catalog/services?index={index}&wait=9s"),
        );
        (code, body, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = svc(&[
        "register",
        "cache",
        "--address",
        "127.0.0.1:6379",
        "--ttl",
        "30s",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, body, waited) = blocked.join().unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("cache"), "{body}");
    assert!(waited < Duration::from_secs(8), "{waited:?}");

    // The proxy learns its upstreams only from the registry: no checks of its own.
    let dir = common::scratch("registry", "proxy");
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nlb = \"round-robin\"\n\
         [service.health]\nkind = \"none\"\n[service.retry]\nmax_retries = 2\n",
    )
    .unwrap();
    let (_proxy, line) = start(
        &[
            "mesh",
            "proxy",
            "--config",
            config.to_str().unwrap(),
            "--registry",
            &etcd,
        ],
        "listening",
    );
    let proxy = address(&line);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (status, response) = get_response(proxy, "/work");
        assert_eq!(status, 200, "{response}");
        seen.insert(header(&response, "x-backend").unwrap_or("").to_string());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Kill backend b1: the agent's HTTP check fails twice (100 ms apart), it writes
    // critical, and the watch pushes the change to the proxy.
    let mut killed = backends.remove(0);
    killed.0.kill().expect("SIGKILL b1");
    killed.0.wait().unwrap();
    let killed_at = Instant::now();
    // Detection: 2 failed checks 100 ms apart, one write through Raft, one watch event.
    // The bound leaves room for this loaded 2-core machine.
    let bound = Duration::from_millis(2500);
    let mut failures = Vec::new();
    let mut retried_after_bound = 0;
    let mut served_after_bound = 0;
    let mut left_discovery = None;
    while killed_at.elapsed() < Duration::from_millis(4000) {
        let started = killed_at.elapsed();
        let (status, response) = get_response(proxy, "/work");
        if status != 200 {
            failures.push(response.clone());
        }
        if started > bound {
            served_after_bound += 1;
            if header(&response, "x-synod-attempts") != Some("1") {
                retried_after_bound += 1;
            }
        }
        if left_discovery.is_none()
            && !ids(agent, "/v1/health/service/web?passing=true").contains(&"b1".to_string())
        {
            left_discovery = Some(killed_at.elapsed());
        }
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let left = left_discovery.expect("b1 left discovery");
    eprintln!("b1 left discovery {left:?} after SIGKILL");
    assert!(left < bound, "b1 left discovery after {left:?}");
    assert!(served_after_bound > 10, "{served_after_bound}");
    assert_eq!(
        retried_after_bound, 0,
        "of {served_after_bound}: b1 still in rotation"
    );

    // Kill the process holding b2's lease (b2 itself keeps running): its registration
    // expires with the 2 s lease and b2 leaves the catalog and the proxy.
    let mut holder = holders.remove(1);
    holder.0.kill().expect("SIGKILL b2's registration");
    holder.0.wait().unwrap();
    let gone = wait_until("b2's lease expires", Duration::from_secs(8), || {
        !ids(agent, "/v1/catalog/service/web").contains(&"b2".to_string())
    });
    eprintln!("b2 left the catalog {gone:?} after its lease holder was killed (2 s lease)");
    assert!(gone < Duration::from_millis(3500), "{gone:?}");
    wait_until(
        "the proxy sends everything to b3",
        Duration::from_secs(3),
        || (0..6).all(|_| header(&get_response(proxy, "/work").1, "x-backend") == Some("b3")),
    );
    let (_, out, _) = svc(&["list", "web"]);
    assert!(out.contains("b3") && out.contains("critical"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `svc list` rows (JSON) of `name`, as (id, tags).
/// Runs `synod svc --etcd ...` with the given arguments.
type Svc<'a> = &'a dyn Fn(&[&str]) -> (i32, String, String);

fn listed(svc: Svc<'_>, args: &[&str]) -> Vec<String> {
    let mut all = vec!["list", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = svc(&all);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let mut ids: Vec<String> = json
        .as_array()
        .expect("an array")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or("").to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn self_registered_backends_route_by_tag_and_weight_and_leave_within_their_ttl() {
    let (_cluster, _admin, client) = start_cluster_ports("selfreg", 3);
    let etcd = format!("{},{},{}", client(1), client(2), client(3));
    let svc = |args: &[&str]| {
        let mut all = vec!["svc", "--etcd", etcd.as_str()];
        all.extend_from_slice(args);
        synod(&all)
    };
    common::eventually("the cluster answers svc list", || svc(&["list"]).0 == 0);

    // Three backends register themselves, each under its own 2 s lease.
    let mut backends = Vec::new();
    for (id, tag, weight) in [("s1", "v2", "3"), ("s2", "v2", "1"), ("s3", "v1", "1")] {
        let meta = format!("weight={weight}");
        let args = [
            "mesh",
            "backend",
            "--id",
            id,
            "--register",
            "shop",
            "--etcd",
            &etcd,
            "--lease-ttl",
            "2s",
            "--tag",
            tag,
            "--meta",
            &meta,
        ];
        let (process, line) = start(&args, "registered");
        assert!(line.contains(&format!("shop/{id}")), "{line}");
        backends.push(process);
    }
    assert_eq!(listed(&svc, &["shop"]), ["s1", "s2", "s3"]);
    assert_eq!(listed(&svc, &["shop", "--tag", "v2"]), ["s1", "s2"]);
    assert_eq!(listed(&svc, &["--tag", "v1"]), ["s3"]);
    assert!(listed(&svc, &["--tag", "v1", "--tag", "v2"]).is_empty());

    // The proxy routes to v2 only, weighting by the metadata.
    let dir = common::scratch("selfreg", "proxy");
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        "[[service]]\nname = \"shop\"\nlisten = \"127.0.0.1:0\"\nlb = \"weighted\"\n\
         weight_key = \"weight\"\n[service.health]\nkind = \"none\"\n",
    )
    .unwrap();
    let args = [
        "mesh",
        "proxy",
        "--config",
        config.to_str().unwrap(),
        "--registry",
        &etcd,
        "--tag",
        "v2",
    ];
    let (_proxy, line) = start(&args, "listening");
    let proxy = address(&line);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let (status, response) = get_response(proxy, "/shop");
        assert_eq!(status, 200, "{response}");
        *counts
            .entry(header(&response, "x-backend").unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    eprintln!("weighted by metadata: {counts:?}");
    assert_eq!(counts.get("s3"), None, "{counts:?}");
    assert_eq!(counts.get("s1"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("s2"), Some(&10), "{counts:?}");

    // SIGKILL s1: nothing renews its lease, and it leaves discovery within the TTL.
    let mut killed = backends.remove(0);
    killed.0.kill().expect("SIGKILL s1");
    killed.0.wait().unwrap();
    let gone = wait_until("s1's lease expires", Duration::from_secs(8), || {
        !listed(&svc, &["shop"]).contains(&"s1".to_string())
    });
    eprintln!("self-registered s1 left the registry {gone:?} after SIGKILL (2 s lease)");
    assert!(gone < Duration::from_millis(3500), "{gone:?}");
    wait_until(
        "the proxy sends everything to s2",
        Duration::from_secs(3),
        || (0..6).all(|_| header(&get_response(proxy, "/shop").1, "x-backend") == Some("s2")),
    );

    // `svc register --ttl --keepalive` holds a lease past its TTL while it runs, and
    // the instance leaves within the TTL once the holder is killed.
    let args = [
        "svc",
        "--etcd",
        &etcd,
        "register",
        "cache",
        "--id",
        "c1",
        "--address",
        "127.0.0.1:6379",
        "--ttl",
        "2s",
        "--keepalive",
    ];
    let (mut holder, _) = start(&args, "registered");
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(listed(&svc, &["cache"]), ["c1"], "renewed past its 2 s TTL");
    holder.0.kill().expect("SIGKILL the holder");
    holder.0.wait().unwrap();
    let gone = wait_until("c1's lease expires", Duration::from_secs(8), || {
        listed(&svc, &["cache"]).is_empty()
    });
    eprintln!("c1 left the registry {gone:?} after its --keepalive holder was killed");
    assert!(gone < Duration::from_millis(3500), "{gone:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn svc_flags_get_clear_errors() {
    const REG: [&str; 5] = ["svc", "register", "web", "--address", "127.0.0.1:1"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> { [&REG[..], extra].concat() };
    // Each command must exit with 2 and name what is wrong.
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["svc", "register", "web", "--address", "nowhere"],
            "--address",
        ),
        (vec!["svc", "--etcd", "localhost", "list"], "no port"),
        (vec!["svc", "heartbeat", "--lease", "zz"], "not a lease id"),
        (with(&["--check", "grpc"]), "use http, tcp or ttl"),
        (with(&["--check", "ttl"]), "--check-ttl"),
        (
            vec!["svc", "register", "we/b", "--address", "127.0.0.1:1"],
            "must not contain '/'",
        ),
        (with(&["--meta", "novalue"]), "key=value"),
        (with(&["--keepalive"]), "--ttl"),
        (vec!["svc", "list", "--tag", ""], "not a tag"),
        (
            vec!["mesh", "backend", "--register", "web", "--lease-ttl", "1s"],
            "at least 2s",
        ),
        (
            vec!["mesh", "proxy", "--config", "x.toml", "--tag", "a b"],
            "not a tag",
        ),
        (vec!["mesh", "agent", "--lease-ttl", "1s"], "at least 2s"),
    ];
    for (args, why) in cases {
        let (code, _, err) = synod(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
}
