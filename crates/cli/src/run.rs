//! `synod run mutex|election`: the coordination algorithms on a running `synod up` cluster.
//!
//! The CLI starts the same run (one run id) on every node through the admin endpoint
//! (`POST /v1/run/mutex|election`), polls `GET` for progress, ends the run with `DELETE`,
//! and then judges it: a mutex run by checking the shared log the nodes appended to
//! (`synod_server::run::check_mutex_log`), an election by the leader each node reports,
//! before and after a node is killed with SIGKILL and after it comes back.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use synod_core::NodeId;
use synod_server::config::{parse_node_id, ClusterConfig};
use synod_server::run::{check_mutex_log, ELECTION_ALGORITHMS, MUTEX_ALGORITHMS};

#[derive(Debug, Args)]
pub(crate) struct RunCommand {
    #[command(subcommand)]
    what: RunWhat,
}

#[derive(Debug, Subcommand)]
enum RunWhat {
    /// Every node enters the critical section K times and appends to a shared log; the
    /// log is then checked for overlap.
    Mutex(MutexRun),
    /// Elect a leader, kill it with SIGKILL, check the survivors elect the highest live
    /// id, restart it and check it takes over again (bully).
    Election(ElectionRun),
}

#[derive(Debug, Args)]
struct MutexRun {
    /// The algorithm: central, token-ring, ricart-agrawala, lamport or maekawa.
    #[arg(long, default_value = "maekawa", value_parser = mutex_algorithm)]
    algo: String,
    /// Critical-section entries per node.
    #[arg(long, default_value = "10", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    k: u32,
    /// How long a node stays in the critical section.
    #[arg(long, default_value = "2ms", value_parser = hold)]
    hold: Duration,
    /// Give up if the run has not finished after this long.
    #[arg(long, default_value = "60s", value_parser = crate::args::duration)]
    timeout: Duration,
    /// The cluster's directory (from `synod up`).
    #[arg(long, default_value = ".synod")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct ElectionRun {
    /// The algorithm: bully (Garcia-Molina) or ring (Chang–Roberts).
    #[arg(long, default_value = "bully", value_parser = election_algorithm)]
    algo: String,
    /// The node to kill with SIGKILL once a leader is elected (n1, n2, ...): by default
    /// the leader, i.e. the highest id. `none` kills nobody.
    #[arg(long)]
    kill: Option<String>,
    /// Leave the killed node down instead of restarting it.
    #[arg(long)]
    no_restart: bool,
    /// How long each phase may take to agree on a leader.
    #[arg(long, default_value = "20s", value_parser = crate::args::duration)]
    timeout: Duration,
    /// The cluster's directory (from `synod up`).
    #[arg(long, default_value = ".synod")]
    dir: PathBuf,
}

fn mutex_algorithm(s: &str) -> Result<String, String> {
    if MUTEX_ALGORITHMS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown algorithm `{s}`: use one of {}",
            MUTEX_ALGORITHMS.join(", ")
        ))
    }
}

fn election_algorithm(s: &str) -> Result<String, String> {
    if ELECTION_ALGORITHMS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown algorithm `{s}`: use one of {}",
            ELECTION_ALGORITHMS.join(", ")
        ))
    }
}

fn hold(s: &str) -> Result<Duration, String> {
    let d = crate::args::duration(s)?;
    if d > Duration::from_secs(10) {
        return Err(format!("hold `{s}` is longer than the limit of 10s"));
    }
    Ok(d)
}

pub(crate) fn run(cmd: RunCommand) -> Result<ExitCode> {
    match cmd.what {
        RunWhat::Mutex(m) => mutex(m),
        RunWhat::Election(e) => election(e),
    }
}

fn load(dir: &Path) -> Result<ClusterConfig> {
    ClusterConfig::load(&dir.join("cluster.toml"))
        .with_context(|| format!("no cluster in {} (start one with synod up)", dir.display()))
}

/// A run id: nanoseconds since the epoch, so that a later run has a larger id.
fn new_run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        .max(1)
}

struct Admin {
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Admin {
    fn new() -> Result<Self> {
        Ok(Admin {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .context("building the HTTP client")?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?,
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        addr: SocketAddr,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.runtime.block_on(async {
            let mut req = self.http.request(method, format!("http://{addr}{path}"));
            if let Some(body) = body {
                req = req.body(body.to_string());
            }
            let response = req.send().await.with_context(|| format!("{addr}{path}"))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let value: Value = serde_json::from_str(&text).unwrap_or(json!({ "error": text }));
            if !status.is_success() {
                bail!(
                    "{addr}{path}: {status}: {}",
                    value["error"].as_str().unwrap_or("no detail")
                );
            }
            Ok(value)
        })
    }

    fn get(&self, addr: SocketAddr, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, addr, path, None)
    }

    fn post(&self, addr: SocketAddr, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, addr, path, Some(body))
    }

    fn delete(&self, addr: SocketAddr, path: &str) -> Result<Value> {
        self.call(reqwest::Method::DELETE, addr, path, None)
    }
}

fn mutex(m: MutexRun) -> Result<ExitCode> {
    let config = load(&m.dir)?;
    let admin = Admin::new()?;
    let run = new_run_id();
    let n = config.nodes.len() as u64;
    println!(
        "mutex run {run}: {} on {n} nodes, {} entries each, hold {:?}",
        m.algo, m.k, m.hold
    );
    let request = json!({
        "run": run, "algo": m.algo, "k": m.k, "hold_ms": m.hold.as_millis() as u64,
    });
    let stop_all = |admin: &Admin| {
        for node in &config.nodes {
            let _ = admin.delete(node.admin_addr, "/v1/run/mutex");
        }
    };
    for node in &config.nodes {
        if let Err(e) = admin.post(node.admin_addr, "/v1/run/mutex", request.clone()) {
            stop_all(&admin);
            return Err(e.context(format!("starting the run on n{}", node.id)));
        }
    }
    let bar = ProgressBar::new(n * u64::from(m.k));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} entries {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let deadline = started + m.timeout;
    let statuses = loop {
        let statuses: Vec<Value> = config
            .nodes
            .iter()
            .map(|node| {
                admin
                    .get(node.admin_addr, "/v1/run/mutex")
                    .unwrap_or_else(|e| json!({ "state": "unreachable", "error": e.to_string() }))
            })
            .collect();
        let entries: u64 = statuses.iter().filter_map(|s| s["entries"].as_u64()).sum();
        bar.set_position(entries);
        let ours = |s: &Value| s["run"].as_u64() == Some(run);
        if let Some((node, s)) = config.nodes.iter().zip(&statuses).find(|(_, s)| {
            !ours(s)
                || matches!(
                    s["state"].as_str(),
                    Some("failed" | "stopped" | "expired" | "unreachable")
                )
        }) {
            bar.finish_and_clear();
            stop_all(&admin);
            bail!("the run failed on n{}: {s}", node.id);
        }
        if statuses.iter().all(|s| s["state"] == "done") {
            break statuses;
        }
        if Instant::now() > deadline {
            bar.finish_and_clear();
            stop_all(&admin);
            bail!(
                "the run did not finish within {:?}: {entries} of {} entries done",
                m.timeout,
                n * u64::from(m.k)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    // Counters are read after every node is done, so trailing releases are in them.
    std::thread::sleep(Duration::from_millis(200));
    let messages: u64 = config
        .nodes
        .iter()
        .zip(&statuses)
        .map(|(node, s)| {
            admin
                .get(node.admin_addr, "/v1/run/mutex")
                .ok()
                .and_then(|v| v["messages_sent"].as_u64())
                .or_else(|| s["messages_sent"].as_u64())
                .unwrap_or(0)
        })
        .sum();
    stop_all(&admin);

    let log_path = m.dir.join("runs").join(format!("mutex-{run}.log"));
    let text = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading the shared log {}", log_path.display()))?;
    let check = check_mutex_log(&text);
    println!("{:<6} {:>8}", "node", "entries");
    let mut counts_ok = true;
    for node in &config.nodes {
        let got = check.entries.get(&node.id).copied().unwrap_or(0);
        counts_ok &= got == m.k;
        println!("n{:<5} {got:>8}", node.id);
    }
    let total: u32 = check.entries.values().sum();
    println!(
        "{total} entries in {:.2} s; {messages} messages, {:.2} per entry",
        elapsed.as_secs_f64(),
        messages as f64 / f64::from(total.max(1))
    );
    if let Some(gap) = check.min_gap_nanos {
        println!(
            "shortest gap between one exit and the next enter: {:.1} µs",
            gap as f64 / 1000.0
        );
    }
    println!("log: {}", log_path.display());
    for v in check.violations.iter().take(20) {
        println!("VIOLATION {v}");
    }
    if check.ok() && counts_ok {
        println!(
            "check: PASS, no overlap in {total} critical sections ({} lines)",
            text.lines().count()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        if !counts_ok {
            println!("check: FAIL, a node did not log all {} entries", m.k);
        }
        println!("check: FAIL, {} violations", check.violations.len());
        Ok(ExitCode::from(1))
    }
}

/// Each node's reported belief, `None` for a node that did not answer.
fn beliefs(admin: &Admin, config: &ClusterConfig, run: u64) -> Vec<(u32, Option<Value>)> {
    config
        .nodes
        .iter()
        .map(|node| {
            let status = admin
                .get(node.admin_addr, "/v1/run/election")
                .ok()
                .filter(|s| s["run"].as_u64() == Some(run));
            (node.id, status)
        })
        .collect()
}

/// Wait until every node in `live` reports `expected` as leader and is not electing.
fn wait_for_agreement(
    admin: &Admin,
    config: &ClusterConfig,
    run: u64,
    live: &[u32],
    expected: u32,
    timeout: Duration,
    phase: &str,
) -> (bool, Duration, Vec<(u32, Option<Value>)>) {
    let started = Instant::now();
    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message(format!(
        "{phase}: waiting for every live node to follow n{expected}"
    ));
    loop {
        let seen = beliefs(admin, config, run);
        let agreed = seen
            .iter()
            .filter(|(id, _)| live.contains(id))
            .all(|(_, s)| {
                s.as_ref().is_some_and(|s| {
                    s["leader"].as_u64() == Some(u64::from(expected)) && s["electing"] == false
                })
            });
        if agreed || started.elapsed() > timeout {
            bar.finish_and_clear();
            return (agreed, started.elapsed(), seen);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn print_beliefs(phase: &str, seen: &[(u32, Option<Value>)], live: &[u32]) {
    println!("{phase}:");
    for (id, status) in seen {
        let belief = match status {
            _ if !live.contains(id) => "down".to_string(),
            None => "no answer".to_string(),
            Some(s) => match s["leader"].as_u64() {
                Some(l) => format!(
                    "leader n{l}{}  ({} election messages sent)",
                    if s["electing"] == true {
                        " (electing)"
                    } else {
                        ""
                    },
                    s["messages_sent"]
                ),
                None => "no leader yet".to_string(),
            },
        };
        println!("  n{id:<4} {belief}");
    }
}

fn start_election(
    admin: &Admin,
    config: &ClusterConfig,
    run: u64,
    algo: &str,
    members: &[u32],
    on: &[u32],
) -> Result<()> {
    let body = json!({ "run": run, "algo": algo, "members": members });
    for node in config.nodes.iter().filter(|n| on.contains(&n.id)) {
        admin
            .post(node.admin_addr, "/v1/run/election", body.clone())
            .with_context(|| format!("starting the election run on n{}", node.id))?;
    }
    Ok(())
}

fn election(e: ElectionRun) -> Result<ExitCode> {
    let config = load(&e.dir)?;
    let admin = Admin::new()?;
    let all: Vec<u32> = config.nodes.iter().map(|n| n.id).collect();
    let highest = all
        .iter()
        .copied()
        .max()
        .ok_or_else(|| anyhow!("the cluster has no nodes"))?;
    let victim = match e.kill.as_deref() {
        None => Some(highest),
        Some("none") => None,
        Some(s) => {
            let id = parse_node_id(s)?.0;
            if !all.contains(&id) {
                bail!("--kill {s}: n{id} is not a node of this cluster");
            }
            Some(id)
        }
    };
    if all.len() < 2 && victim.is_some() {
        bail!("killing a node needs a cluster of at least 2 nodes");
    }
    let stop_all = || {
        for node in &config.nodes {
            let _ = admin.delete(node.admin_addr, "/v1/run/election");
        }
    };
    let mut ok = true;
    let mut report = |phase: &str,
                      agreed: bool,
                      took: Duration,
                      seen: &[(u32, Option<Value>)],
                      live: &[u32],
                      expected: u32| {
        print_beliefs(phase, seen, live);
        println!(
            "  agreement on n{expected} (the highest live id): {} after {:.2} s",
            if agreed { "yes" } else { "NO" },
            took.as_secs_f64()
        );
        ok &= agreed;
    };

    // Phase 1: everyone up.
    let run = new_run_id();
    println!("election run {run}: {} on {} nodes", e.algo, all.len());
    start_election(&admin, &config, run, &e.algo, &all, &all)?;
    let (agreed, took, seen) =
        wait_for_agreement(&admin, &config, run, &all, highest, e.timeout, "all up");
    report("all nodes up", agreed, took, &seen, &all, highest);

    if let Some(victim) = victim {
        // Phase 2: the victim dies without warning.
        let node = NodeId(victim);
        let pid = crate::cluster::read_pid(&e.dir, node)
            .filter(|&p| crate::cluster::alive_in(&e.dir, p))
            .ok_or_else(|| anyhow!("{node} is not running (no live pid in {})", e.dir.display()))?;
        // SAFETY: kill(2) on a pid checked to be this cluster's node process.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            stop_all();
            bail!(
                "kill -9 {pid} ({node}): {}",
                std::io::Error::last_os_error()
            );
        }
        println!("killed {node} (pid {pid}) with SIGKILL");
        let survivors: Vec<u32> = all.iter().copied().filter(|&i| i != victim).collect();
        let top = survivors.iter().copied().max().unwrap_or(victim);
        let run2 = if e.algo == "ring" {
            // Chang–Roberts has no failure detector: the operator re-forms the ring from
            // the survivors and starts a new election on it.
            let r = new_run_id();
            start_election(&admin, &config, r, &e.algo, &survivors, &survivors)?;
            r
        } else {
            run
        };
        let (agreed, took, seen) = wait_for_agreement(
            &admin,
            &config,
            run2,
            &survivors,
            top,
            e.timeout,
            "after the kill",
        );
        report(
            &format!("after SIGKILL of {node}"),
            agreed,
            took,
            &seen,
            &survivors,
            top,
        );

        if !e.no_restart {
            // Phase 3: the victim comes back and (bully) takes over.
            let exe = std::env::current_exe().context("finding the synod executable")?;
            let up = std::process::Command::new(exe)
                .arg("up")
                .arg("--dir")
                .arg(&e.dir)
                .output()
                .context("restarting the killed node with synod up")?;
            if !up.status.success() {
                stop_all();
                bail!(
                    "synod up could not restart {node}: {}",
                    String::from_utf8_lossy(&up.stderr)
                );
            }
            println!("restarted {node}");
            let run3 = if e.algo == "ring" {
                let r = new_run_id();
                start_election(&admin, &config, r, &e.algo, &all, &all)?;
                r
            } else {
                // The restarted process joins the run in progress; its bully holds an
                // election on start (Garcia-Molina §4) and, being highest, takes over.
                start_election(&admin, &config, run, &e.algo, &all, &[victim])?;
                run
            };
            let top = all.iter().copied().max().unwrap_or(victim);
            let (agreed, took, seen) = wait_for_agreement(
                &admin,
                &config,
                run3,
                &all,
                top,
                e.timeout,
                "after the restart",
            );
            report(
                &format!("after {node} restarted"),
                agreed,
                took,
                &seen,
                &all,
                top,
            );
        }
    }
    stop_all();
    println!("log: {}", e.dir.join("runs").display());
    if ok {
        println!("check: PASS, every phase agreed on the highest live id");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("check: FAIL, a phase did not agree on the highest live id");
        Ok(ExitCode::from(1))
    }
}
