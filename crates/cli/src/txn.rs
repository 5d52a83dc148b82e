//! `synod txn`: transactions across the multi-Raft ranges of a running cluster
//! (`synod up --ranges`), over each node's HTTP API (`/v1/txn`), and
//! `synod bench txn --cluster`: single- versus cross-range throughput and latency, the
//! abort rate under contention, and recovery after a coordinator-group leader crash.

use crate::admin_http::{admin_addr, client, encode, runtime};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_server::config::ClusterConfig;

#[derive(Debug, Args)]
pub(crate) struct TxnCommand {
    /// The cluster's directory.
    #[arg(long, default_value = ".synod", global = true)]
    dir: PathBuf,
    /// The node to send the request to (any node coordinates transactions).
    #[arg(long, global = true)]
    node: Option<u32>,
    #[command(subcommand)]
    op: TxnOp,
}

#[derive(Debug, Subcommand)]
enum TxnOp {
    /// Read a key at a fresh snapshot.
    Get {
        /// The key.
        key: String,
    },
    /// Write a key (a one-key transaction).
    Put {
        /// The key.
        key: String,
        /// The value, an unsigned 64-bit integer.
        value: u64,
    },
    /// Delete a key (a one-key transaction).
    Del {
        /// The key.
        key: String,
    },
    /// Read many keys in one snapshot.
    Read {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// One atomic transaction, across ranges: if every --if holds at its snapshot, apply
    /// every --put, --add and --delete.
    Commit {
        /// KEY=VALUE or KEY=absent: the key must hold that value at the snapshot.
        #[arg(long = "if", value_parser = compare)]
        compare: Vec<(String, Option<u64>)>,
        /// KEY=VALUE: write the value.
        #[arg(long, value_parser = put)]
        put: Vec<(String, u64)>,
        /// KEY=DELTA: add a signed delta to the key's value (it must exist, and stay >= 0).
        #[arg(long, value_parser = add, allow_hyphen_values = true)]
        add: Vec<(String, i64)>,
        /// KEY: delete the key.
        #[arg(long)]
        delete: Vec<String>,
    },
    /// Show the ranges this node hosts: key interval, role, leader, applied index.
    Ranges,
}

fn split_pair(s: &str) -> Result<(&str, &str), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("`{s}` has an empty key"));
    }
    Ok((k, v))
}

fn compare(s: &str) -> Result<(String, Option<u64>), String> {
    let (k, v) = split_pair(s)?;
    if v == "absent" {
        return Ok((k.to_string(), None));
    }
    let v = v
        .parse()
        .map_err(|_| format!("`{v}` is not an unsigned integer or `absent`"))?;
    Ok((k.to_string(), Some(v)))
}

fn put(s: &str) -> Result<(String, u64), String> {
    let (k, v) = split_pair(s)?;
    let v = v
        .parse()
        .map_err(|_| format!("`{v}` is not an unsigned 64-bit integer"))?;
    Ok((k.to_string(), v))
}

fn add(s: &str) -> Result<(String, i64), String> {
    let (k, v) = split_pair(s)?;
    let v = v
        .parse()
        .map_err(|_| format!("`{v}` is not a signed 64-bit integer"))?;
    Ok((k.to_string(), v))
}

fn load(dir: &Path) -> Result<ClusterConfig> {
    let config = ClusterConfig::load(&dir.join("cluster.toml"))
        .with_context(|| format!("no cluster in {} (start one with synod up)", dir.display()))?;
    if config.ranges.is_none() {
        bail!(
            "the cluster in {} does not run ranges (start it with synod up --ranges)",
            dir.display()
        );
    }
    Ok(config)
}

pub(crate) fn run(cmd: TxnCommand) -> Result<ExitCode> {
    let config = load(&cmd.dir)?;
    let addr = admin_addr(&config, cmd.node)?;
    runtime()?.block_on(async move {
        let http = client(Duration::from_secs(20))?;
        let base = format!("http://{addr}/v1/txn");
        let request = match &cmd.op {
            TxnOp::Get { key } => http.get(format!("{base}/kv/{}", encode(key))),
            TxnOp::Put { key, value } => http
                .put(format!("{base}/kv/{}", encode(key)))
                .body(value.to_string()),
            TxnOp::Read { keys } => http
                .post(format!("{base}/read"))
                .json(&json!({ "keys": keys })),
            TxnOp::Del { key } => http.delete(format!("{base}/kv/{}", encode(key))),
            TxnOp::Commit {
                compare,
                put,
                add,
                delete,
            } => {
                if put.is_empty() && add.is_empty() && compare.is_empty() && delete.is_empty() {
                    bail!("give at least one --if, --put, --add or --delete");
                }
                let compare: Vec<Value> = compare
                    .iter()
                    .map(|(k, v)| json!({ "key": k, "value": v }))
                    .collect();
                let put: BTreeMap<&String, &u64> = put.iter().map(|(k, v)| (k, v)).collect();
                let add: BTreeMap<&String, &i64> = add.iter().map(|(k, v)| (k, v)).collect();
                http.post(base.clone())
                    .json(&json!({ "compare": compare, "put": put, "add": add, "delete": delete }))
            }
            TxnOp::Ranges => http.get(format!("{base}/ranges")),
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("node at {addr} did not answer"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{}",
                body["error"]
                    .as_str()
                    .unwrap_or(status.canonical_reason().unwrap_or("error"))
            );
        }
        match &cmd.op {
            TxnOp::Get { .. } => println!("{}", body["value"]),
            TxnOp::Put { .. } | TxnOp::Del { .. } => {
                println!("OK (commit ts {})", body["commit_ts"])
            }
            TxnOp::Read { .. } => {
                println!("snapshot ts {}", body["ts"]);
                if let Some(values) = body["values"].as_object() {
                    for (k, v) in values {
                        println!("{k} {v}");
                    }
                }
            }
            TxnOp::Commit { .. } => {
                if body["succeeded"] == true {
                    println!(
                        "committed at ts {} ({}, {} aborted attempts)",
                        body["commit_ts"], body["path"], body["aborted_attempts"]
                    );
                } else {
                    println!("not committed: a condition failed; read {}", body["values"]);
                    return Ok(ExitCode::from(1));
                }
            }
            TxnOp::Ranges => {
                println!(
                    "{:>6} {:>12} {:>12} {:>9} {:>6} {:>5} {:>8} {:>6}",
                    "range", "start", "end", "role", "leader", "term", "applied", "keys"
                );
                for r in body["ranges"].as_array().into_iter().flatten() {
                    let text = |v: &Value| match v {
                        Value::String(s) if s.is_empty() => "-∞".to_string(),
                        Value::String(s) => s.clone(),
                        Value::Null => "+∞".to_string(),
                        other => other.to_string(),
                    };
                    let (start, end) = if r["serves_keys"] == true {
                        (text(&r["start"]), text(&r["end"]))
                    } else {
                        ("(meta)".into(), String::new())
                    };
                    println!(
                        "{:>6} {:>12} {:>12} {:>9} {:>6} {:>5} {:>8} {:>6}",
                        format!("r{}", r["id"]),
                        start,
                        end,
                        r["role"].as_str().unwrap_or("?"),
                        r["leader"].to_string(),
                        r["term"].to_string(),
                        r["applied"].to_string(),
                        r["keys"].to_string()
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

// ---- synod bench txn --cluster ---------------------------------------------------------

/// What `synod bench txn --cluster` measures.
#[derive(Debug, Clone)]
pub(crate) struct ClusterBench {
    pub(crate) dir: PathBuf,
    pub(crate) seconds: u64,
    pub(crate) clients: u64,
    pub(crate) accounts: u32,
    pub(crate) rounds: u32,
    pub(crate) crash: bool,
}

fn account(i: u32) -> String {
    format!("acct/{i:03}")
}

/// A data range's key interval, from `/v1/txn/ranges`.
#[derive(Debug, Clone)]
struct Span {
    start: String,
    end: Option<String>,
}

impl Span {
    fn contains(&self, key: &str) -> bool {
        key >= self.start.as_str() && self.end.as_deref().is_none_or(|e| key < e)
    }
}

async fn ranges_of(http: &reqwest::Client, addr: SocketAddr) -> Result<Vec<Value>> {
    let body: Value = http
        .get(format!("http://{addr}/v1/txn/ranges"))
        .send()
        .await?
        .json()
        .await?;
    Ok(body["ranges"].as_array().cloned().unwrap_or_default())
}

fn spans(ranges: &[Value]) -> Vec<Span> {
    ranges
        .iter()
        .filter(|r| r["serves_keys"] == true)
        .map(|r| Span {
            start: r["start"].as_str().unwrap_or_default().to_string(),
            end: r["end"].as_str().map(str::to_string),
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pick {
    SameRange,
    CrossRange,
    Hot(u32),
}

#[derive(Debug, Default)]
struct Tally {
    one_phase: Vec<u64>,
    two_phase: Vec<u64>,
    aborted_attempts: u64,
    gave_up: u64,
    failed_condition: u64,
    errors: u64,
    /// Completion time (since the phase started) and anchor key of each commit.
    commits: Vec<(Duration, String)>,
}

impl Tally {
    fn commits(&self) -> usize {
        self.one_phase.len() + self.two_phase.len()
    }

    fn abort_rate(&self) -> f64 {
        let aborted = self.aborted_attempts + self.gave_up * u64::from(8u32);
        let attempts = self.commits() as u64 + aborted;
        if attempts == 0 {
            0.0
        } else {
            100.0 * aborted as f64 / attempts as f64
        }
    }
}

fn quantile_ms(v: &[u64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get((v.len().saturating_sub(1) as f64 * p).round() as usize)
        .map_or(0.0, |&us| us as f64 / 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Closed-loop transfer clients for `duration`, spread over the live nodes.
async fn transfers(
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    spans: &[Span],
    accounts: u32,
    clients: u64,
    pick: Pick,
    duration: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Tally> {
    let groups: Vec<Vec<String>> = spans
        .iter()
        .map(|s| {
            (0..accounts)
                .map(account)
                .filter(|a| s.contains(a))
                .collect::<Vec<_>>()
        })
        .filter(|g: &Vec<String>| !g.is_empty())
        .collect();
    if pick == Pick::SameRange && !groups.iter().any(|g| g.len() >= 2) {
        bail!("no range holds two accounts");
    }
    if pick == Pick::CrossRange && groups.len() < 2 {
        bail!("the accounts have not split into two ranges yet");
    }
    let started = Instant::now();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (groups, tally, addrs, stop) =
            (groups.clone(), tally.clone(), addrs.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .pool_max_idle_per_host(1)
                .build()?;
            let mut x = c.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move |n: usize| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % n.max(1) as u64) as usize
            };
            let mut node = c as usize;
            while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                let (from, to) = match pick {
                    Pick::SameRange => {
                        let big: Vec<&Vec<String>> =
                            groups.iter().filter(|g| g.len() >= 2).collect();
                        let g = big[next(big.len())];
                        let i = next(g.len());
                        let j = (i + 1 + next(g.len() - 1)) % g.len();
                        (g[i].clone(), g[j].clone())
                    }
                    Pick::CrossRange => {
                        let a = next(groups.len());
                        let b = (a + 1 + next(groups.len() - 1)) % groups.len();
                        (
                            groups[a][next(groups[a].len())].clone(),
                            groups[b][next(groups[b].len())].clone(),
                        )
                    }
                    Pick::Hot(hot) => {
                        let hot = hot.clamp(2, accounts) as usize;
                        let i = next(hot);
                        let j = (i + 1 + next(hot - 1)) % hot;
                        (account(i as u32), account(j as u32))
                    }
                };
                let amount = 1 + next(5) as i64;
                let addr = {
                    let live = addrs.lock().unwrap_or_else(|e| e.into_inner());
                    live[node % live.len()]
                };
                let body = json!({ "add": { &from: -amount, &to: amount } });
                let sent = Instant::now();
                let reply = http
                    .post(format!("http://{addr}/v1/txn"))
                    .json(&body)
                    .send()
                    .await;
                let micros = sent.elapsed().as_micros() as u64;
                let answer = match reply {
                    Ok(r) if r.status().is_success() => {
                        Ok(r.json::<Value>().await.unwrap_or(Value::Null))
                    }
                    Ok(r) => Err(r.status() == reqwest::StatusCode::CONFLICT),
                    Err(_) => Err(false),
                };
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                match answer {
                    Ok(v) => {
                        t.aborted_attempts += v["aborted_attempts"].as_u64().unwrap_or(0);
                        if v["succeeded"] != true {
                            t.failed_condition += 1;
                        } else {
                            if v["path"] == "1pc" {
                                t.one_phase.push(micros);
                            } else {
                                t.two_phase.push(micros);
                            }
                            let anchor = from.clone().min(to.clone());
                            t.commits.push((started.elapsed(), anchor));
                        }
                    }
                    Err(true) => t.gave_up += 1,
                    _ => {
                        t.errors += 1;
                        node += 1;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(tally)
}

async fn total(http: &reqwest::Client, addr: SocketAddr, accounts: u32) -> Result<u64> {
    let keys: Vec<String> = (0..accounts).map(account).collect();
    let r = http
        .post(format!("http://{addr}/v1/txn/read"))
        .json(&json!({ "keys": keys }))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "snapshot read failed: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let v: Value = r.json().await?;
    let mut sum = 0;
    for k in &keys {
        sum += v["values"][k]
            .as_u64()
            .ok_or_else(|| anyhow!("{k} is missing from the snapshot"))?;
    }
    Ok(sum)
}

fn pid(dir: &Path, node: u32) -> Result<i32> {
    let path = dir.join(format!("n{node}.pid"));
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", path.display()))
}

pub(crate) fn bench_cluster(b: ClusterBench) -> Result<ExitCode> {
    let config = load(&b.dir)?;
    if b.accounts < 4 {
        bail!("--accounts must be at least 4");
    }
    let all: Vec<SocketAddr> = config.nodes.iter().map(|n| n.admin_addr).collect();
    let split = config.ranges.as_ref().map_or(0, |r| r.split_keys);
    println!(
        "synod bench txn --cluster: {} nodes (real processes, fsync per batch), {} accounts, \
         ranges split past {split} keys, {} transfer clients, {} s per phase, {} rounds",
        all.len(),
        b.accounts,
        b.clients,
        b.seconds,
        b.rounds
    );
    let rt = runtime()?;
    rt.block_on(async move {
        let http = client(Duration::from_secs(20))?;
        let initial = 1_000u64;
        let puts: BTreeMap<String, u64> = (0..b.accounts).map(|i| (account(i), initial)).collect();
        // Initialize once: a cluster already holding the accounts keeps its balances.
        let r = http
            .post(format!("http://{}/v1/txn", all[0]))
            .json(&json!({
                "compare": [{ "key": account(0), "value": null }],
                "put": puts,
            }))
            .send()
            .await
            .context("the first node did not answer")?;
        if !r.status().is_success() {
            bail!(
                "initializing the accounts: {}",
                r.text().await.unwrap_or_default()
            );
        }
        let expected = total(&http, all[0], b.accounts).await?;
        // Let size-based splits settle: no range above the threshold, layout unchanged.
        let mut layout = Vec::new();
        for _ in 0..100 {
            let ranges = ranges_of(&http, all[0]).await?;
            let next = spans(&ranges);
            let settled = ranges
                .iter()
                .all(|r| r["keys"].as_u64().unwrap_or(0) <= split as u64);
            if settled && next.len() == layout.len() {
                break;
            }
            layout = next;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        println!("{} data ranges; total balance {expected}", layout.len());
        let live = Arc::new(Mutex::new(all.clone()));
        let duration = Duration::from_secs(b.seconds);
        let phases: Vec<(String, Pick)> = vec![
            ("single-range transfers".into(), Pick::SameRange),
            ("cross-range transfers".into(), Pick::CrossRange),
        ];
        let hot = [2u32, 4, 8, b.accounts];
        let steps = b.rounds as u64 * phases.len() as u64 + hot.len() as u64;
        let bar = ProgressBar::new(steps * b.seconds);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} s {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    bar.inc(1);
                }
            })
        };
        let never = Arc::new(AtomicBool::new(false));
        let mut results: BTreeMap<String, Vec<Tally>> = BTreeMap::new();
        for _ in 0..b.rounds {
            for (label, pick) in &phases {
                bar.set_message(label.clone());
                let t = transfers(
                    live.clone(),
                    &layout,
                    b.accounts,
                    b.clients,
                    *pick,
                    duration,
                    never.clone(),
                )
                .await?;
                results.entry(label.clone()).or_default().push(t);
            }
        }
        let mut contention = Vec::new();
        for h in hot {
            bar.set_message(format!("contention, {h} hot accounts"));
            let t = transfers(
                live.clone(),
                &layout,
                b.accounts,
                b.clients,
                Pick::Hot(h),
                duration,
                never.clone(),
            )
            .await?;
            contention.push((h, t));
        }
        ticker.abort();
        bar.finish_and_clear();
        let secs = b.seconds as f64;
        println!(
            "{:<24} | {:>9} | {:>8} {:>8} | {:>7} {:>7} | {:>7} | {:>6}",
            "phase (median of rounds)",
            "commits/s",
            "p50 ms",
            "p99 ms",
            "1PC",
            "2PC",
            "aborts",
            "errors"
        );
        for (label, _) in &phases {
            let runs = &results[label];
            let all_lat = |t: &Tally| {
                let mut v = t.one_phase.clone();
                v.extend(&t.two_phase);
                v
            };
            println!(
                "{:<24} | {:>9.1} | {:>8.2} {:>8.2} | {:>7} {:>7} | {:>6.1}% | {:>6}",
                label,
                median(runs.iter().map(|t| t.commits() as f64 / secs).collect()),
                median(runs.iter().map(|t| quantile_ms(&all_lat(t), 0.5)).collect()),
                median(
                    runs.iter()
                        .map(|t| quantile_ms(&all_lat(t), 0.99))
                        .collect()
                ),
                runs.iter().map(|t| t.one_phase.len()).sum::<usize>(),
                runs.iter().map(|t| t.two_phase.len()).sum::<usize>(),
                median(runs.iter().map(Tally::abort_rate).collect()),
                runs.iter().map(|t| t.errors).sum::<u64>(),
            );
            for (i, t) in runs.iter().enumerate() {
                println!(
                    "    round {}: {:.1}/s, p50 {:.2} ms, p99 {:.2} ms",
                    i + 1,
                    t.commits() as f64 / secs,
                    quantile_ms(&all_lat(t), 0.5),
                    quantile_ms(&all_lat(t), 0.99)
                );
            }
        }
        println!("abort rate under contention (transfers among the first N accounts):");
        for (h, t) in &contention {
            println!(
                "    {h:>4} hot accounts: {:>5.1}% of attempts aborted ({} commits/s, {} gave up \
                 after 8 attempts)",
                t.abort_rate(),
                t.commits() as f64 / secs,
                t.gave_up
            );
        }
        let after = total(&http, all[0], b.accounts).await?;
        if after != expected {
            bail!("the total changed: {expected} before, {after} after");
        }
        println!("total balance after the load: {after} (unchanged)");
        if b.crash {
            crash_run(&http, &b, &all, &layout, live, expected).await?;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Kill the leader of the range of `acct/000` (which holds the transaction records of
/// every transfer anchored there) under load, and time the first such commit after.
async fn crash_run(
    http: &reqwest::Client,
    b: &ClusterBench,
    all: &[SocketAddr],
    layout: &[Span],
    live: Arc<Mutex<Vec<SocketAddr>>>,
    expected: u64,
) -> Result<()> {
    let key = account(0);
    let Some(span) = layout.iter().find(|s| s.contains(&key)).cloned() else {
        bail!("no range holds {key}");
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (live, layout, stop) = (live.clone(), layout.to_vec(), stop.clone());
        let (accounts, clients) = (b.accounts, b.clients);
        tokio::spawn(async move {
            transfers(
                live,
                &layout,
                accounts,
                clients,
                Pick::Hot(accounts),
                Duration::from_secs(3600),
                stop,
            )
            .await
        })
    };
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The leader of that range, as the nodes report it.
    let mut leader = None;
    for (i, addr) in all.iter().enumerate() {
        for r in ranges_of(http, *addr).await.unwrap_or_default() {
            if r["serves_keys"] == true
                && r["start"].as_str() == Some(span.start.as_str())
                && r["role"] == "leader"
            {
                leader = Some(i as u32 + 1);
            }
        }
    }
    let Some(victim) = leader else {
        stop.store(true, Ordering::Relaxed);
        bail!("no node reports itself leader of the range of {key}");
    };
    live.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|a| *a != all[victim as usize - 1]);
    let pid = pid(&b.dir, victim)?;
    let killed_at = started.elapsed();
    // SAFETY: kill(2) on a pid read from the cluster's own pid file.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("could not SIGKILL n{victim} (pid {pid})");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exe = std::env::current_exe().context("finding the synod binary")?;
    let restarted = std::process::Command::new(exe)
        .arg("up")
        .arg("--dir")
        .arg(&b.dir)
        .output()
        .context("restarting the node with synod up")?;
    if !restarted.status.success() {
        stop.store(true, Ordering::Relaxed);
        bail!(
            "synod up (restart) failed: {}",
            String::from_utf8_lossy(&restarted.stderr)
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = load.await??;
    let first = |anchored: bool| {
        tally
            .commits
            .iter()
            .filter(|(t, k)| *t > killed_at && (!anchored || span.contains(k)))
            .map(|(t, _)| *t - killed_at)
            .min()
    };
    let ms = |d: Option<Duration>| {
        d.map_or("none".to_string(), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1e3)
        })
    };
    println!(
        "SIGKILL of n{victim}, leader of the range [{}, {}) that holds the records of \
         transfers anchored there: first such commit after {}, first commit of any \
         transfer after {} (restarted 3 s after the kill)",
        span.start,
        span.end.as_deref().unwrap_or("+∞"),
        ms(first(true)),
        ms(first(false))
    );
    let after = total(http, all[0], b.accounts).await?;
    if after != expected {
        bail!("the total changed across the crash: {expected} before, {after} after");
    }
    println!("total balance after the crash and restart: {after} (unchanged)");
    Ok(())
}
