//! `synod mesh` with real processes: backends are separate `synod mesh backend` processes,
//! the proxy is a `synod mesh proxy` process, and a backend is killed with SIGKILL.

// A driver-level test of real processes: the detection window is wall-clock time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use common::{get_response, header, synod, Process};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Start `synod args...` and read the first `lines` lines of the form
/// `listening <name> <address>`.
fn start(args: &[&str], lines: usize) -> (Process, Vec<(String, SocketAddr)>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start synod");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut found = Vec::new();
    while found.len() < lines {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("synod {args:?} exited before printing its address");
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["listening", name, address] = words[..] {
            found.push((name.to_string(), address.parse().expect("an address")));
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    (Process(child), found)
}

/// One HTTP/1.1 GET on a fresh connection: (status, headers and body as text).
#[test]
fn a_killed_backend_leaves_rotation_within_the_check_bound_and_no_request_fails() {
    let backends: Vec<(Process, SocketAddr)> = ["b1", "b2", "b3"]
        .iter()
        .map(|id| {
            let (process, found) = start(&["mesh", "backend", "--id", id], 1);
            (process, found[0].1)
        })
        .collect();
    let dir = common::scratch("mesh", "kill");
    let config = dir.join("proxy.toml");
    let instances: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, (_, a))| format!("{{ id = \"b{}\", address = \"{a}\" }}", i + 1))
        .collect();
    // Checks every 100 ms, two failures to leave: the detection bound is about 200 ms
    // plus one check's timeout.
    std::fs::write(
        &config,
        format!(
            "admin = \"127.0.0.1:0\"\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
             lb = \"round-robin\"\ninstances = [{}]\n\
             [service.health]\nkind = \"http\"\ninterval_ms = 100\nunhealthy_threshold = 2\n\
             [service.retry]\nmax_retries = 2\n[service.outlier]\nconsecutive_failures = 3\n",
            instances.join(", ")
        ),
    )
    .unwrap();
    let (_proxy, found) = start(&["mesh", "proxy", "--config", config.to_str().unwrap()], 1);
    let proxy = found[0].1;
    // All three serve.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (status, response) = get_response(proxy, "/work");
        assert_eq!(status, 200, "{response}");
        seen.insert(header(&response, "x-backend").unwrap_or("").to_string());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    let mut backends = backends;
    let (mut killed, _) = backends.remove(0);
    killed.0.kill().expect("SIGKILL b1");
    killed.0.wait().unwrap();
    let killed_at = Instant::now();
    let bound = Duration::from_millis(600);
    let mut failures = Vec::new();
    let mut retried_after_bound = 0;
    let mut served_after_bound = 0;
    while killed_at.elapsed() < Duration::from_millis(1500) {
        let started = killed_at.elapsed();
        let (status, response) = get_response(proxy, "/work");
        if status != 200 {
            failures.push(response.clone());
        }
        assert_ne!(header(&response, "x-backend"), Some("b1"));
        if started > bound {
            served_after_bound += 1;
            if header(&response, "x-synod-attempts") != Some("1") {
                retried_after_bound += 1;
            }
        }
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(served_after_bound > 10);
    // After the detection bound nobody tries b1 any more: every request takes one attempt.
    assert_eq!(retried_after_bound, 0, "of {served_after_bound}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Three backend processes behind a proxy process with 100 ms HTTP checks; returns them
/// and the proxy's address.
fn cluster(name: &str, extra: &str) -> (Vec<Process>, Process, SocketAddr, std::path::PathBuf) {
    let mut processes = Vec::new();
    let mut instances = Vec::new();
    for id in ["b1", "b2", "b3"] {
        let (process, found) = start(&["mesh", "backend", "--id", id], 1);
        processes.push(process);
        instances.push(format!("{{ id = \"{id}\", address = \"{}\" }}", found[0].1));
    }
    let dir = common::scratch("mesh", name);
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
             lb = \"round-robin\"\ninstances = [{}]\n\
             [service.health]\nkind = \"http\"\ninterval_ms = 100\nunhealthy_threshold = 2\n{extra}",
            instances.join(", ")
        ),
    )
    .unwrap();
    let (proxy, found) = start(&["mesh", "proxy", "--config", config.to_str().unwrap()], 1);
    (processes, proxy, found[0].1, dir)
}

#[test]
fn a_hung_backend_is_detected_and_per_try_timeouts_hide_it() {
    // SIGSTOP: the kernel still accepts connections, but nothing answers. Health checks
    // time out (their timeout is the RFC 6298 RTO of earlier checks) and φ rises; the
    // requests caught on it time out after 300 ms and are retried elsewhere.
    let (backends, _proxy, proxy, dir) = cluster(
        "hang",
        "[service.retry]\nmax_retries = 2\nper_try_timeout_ms = 300\n",
    );
    for _ in 0..9 {
        assert_eq!(get_response(proxy, "/work").0, 200);
    }
    let pid = backends[0].0.id() as i32;
    // SAFETY: signalling a child process this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stopped_at = Instant::now();
    let mut failures = Vec::new();
    let mut slow_after_bound = 0;
    let mut served_after_bound = 0;
    while stopped_at.elapsed() < Duration::from_millis(2000) {
        let started = stopped_at.elapsed();
        let t = Instant::now();
        let (status, response) = get_response(proxy, "/work");
        if status != 200 {
            failures.push(response.clone());
        }
        if started > Duration::from_millis(1000) {
            served_after_bound += 1;
            if t.elapsed() > Duration::from_millis(250) {
                slow_after_bound += 1;
            }
        }
    }
    // SAFETY: as above; SIGCONT lets the Drop's SIGKILL and wait finish promptly.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(served_after_bound > 10);
    assert_eq!(
        slow_after_bound, 0,
        "of {served_after_bound}: b1 still in rotation"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mesh_demo_prints_a_row_per_strategy_and_setting() {
    let (code, out, err) = synod(&[
        "mesh",
        "demo",
        "--requests",
        "40",
        "--strategies",
        "round-robin,p2c-ewma",
        "--slow",
        "5ms",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for strategy in ["round-robin", "p2c-ewma"] {
        for setting in ["off", "resilient", "hedged"] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(strategy) && l.contains(setting)),
                "{strategy} {setting} missing:\n{out}"
            );
        }
    }
    assert!(out.contains("p99.9"), "{out}");
}

#[test]
fn mesh_flags_and_config_mistakes_get_clear_errors() {
    let (code, _, err) = synod(&["mesh", "demo", "--strategies", "fastest"]);
    assert_ne!(code, 0);
    assert!(err.contains("fastest") && err.contains("maglev"), "{err}");
    let (code, _, err) = synod(&["mesh", "demo", "--requests", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--requests"), "{err}");
    let (code, _, err) = synod(&["mesh", "backend", "--fail-rate", "2"]);
    assert_ne!(code, 0);
    assert!(err.contains("between 0 and 1"), "{err}");
    let (code, _, err) = synod(&["mesh", "proxy", "--config", "/nonexistent/proxy.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/proxy.toml"), "{err}");
    let dir = common::scratch("mesh", "badconfig");
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nlb = \"fastest\"\n",
    )
    .unwrap();
    let (code, _, err) = synod(&["mesh", "proxy", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("service \"web\"") && err.contains("fastest"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
