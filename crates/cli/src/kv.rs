//! `synod kv`: the replicated (Raft) KV store of a running cluster, over its HTTP API,
//! and `synod bench kv`: throughput and latency against the number of clients.

use crate::admin_http::{client, encode, runtime};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use synod_server::config::ClusterConfig;

#[derive(Debug, Args)]
pub(crate) struct KvCommand {
    /// The cluster's directory.
    #[arg(long, default_value = ".synod", global = true)]
    dir: PathBuf,
    /// The node to send the request to (any node works: followers forward to the leader).
    #[arg(long, global = true)]
    node: Option<u32>,
    #[command(subcommand)]
    op: KvOp,
}

#[derive(Debug, Subcommand)]
enum KvOp {
    /// Read a key (linearizable).
    Get {
        /// The key.
        key: String,
    },
    /// Write a key; returns once the write is committed.
    Put {
        /// The key.
        key: String,
        /// The value, an unsigned 64-bit integer.
        value: u64,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
    },
    /// Set KEY to NEW if it holds EXPECTED ("absent" for a missing key).
    Cas {
        /// The key.
        key: String,
        /// The value the key must hold, or "absent".
        expected: String,
        /// The value to write.
        new: u64,
    },
}

/// The admin (HTTP) address of `node`, or of the first node.
fn admin_addr(dir: &Path, node: Option<u32>) -> Result<SocketAddr> {
    let config = ClusterConfig::load(&dir.join("cluster.toml"))
        .with_context(|| format!("no cluster in {} (start one with synod up)", dir.display()))?;
    crate::admin_http::admin_addr(&config, node)
}

pub(crate) fn run(cmd: KvCommand) -> Result<ExitCode> {
    let addr = admin_addr(&cmd.dir, cmd.node)?;
    runtime()?.block_on(async move {
        let http = client(Duration::from_secs(15))?;
        let base = format!("http://{addr}/v1/kv");
        let request = match &cmd.op {
            KvOp::Get { key } => http.get(format!("{base}/{}", encode(key))),
            KvOp::Put { key, value } => http
                .put(format!("{base}/{}", encode(key)))
                .body(value.to_string()),
            KvOp::Del { key } => http.delete(format!("{base}/{}", encode(key))),
            KvOp::Cas { key, expected, new } => {
                if expected != "absent" && expected.parse::<u64>().is_err() {
                    bail!("EXPECTED must be an unsigned integer or \"absent\", not {expected:?}");
                }
                http.post(format!("{base}/{}?expect={expected}", encode(key)))
                    .body(new.to_string())
            }
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("node at {addr} did not answer"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match &cmd.op {
            KvOp::Get { .. } if status.is_success() => println!("{}", body["value"]),
            KvOp::Get { key } if status == reqwest::StatusCode::NOT_FOUND => {
                eprintln!("{key}: not found");
                return Ok(ExitCode::from(1));
            }
            KvOp::Cas { .. } if status == reqwest::StatusCode::PRECONDITION_FAILED => {
                println!("not swapped");
                return Ok(ExitCode::from(1));
            }
            _ if status.is_success() => println!("OK"),
            _ => bail!(
                "{}",
                body["error"]
                    .as_str()
                    .unwrap_or(status.canonical_reason().unwrap_or("error"))
            ),
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(Debug, Args)]
pub(crate) struct KvBench {
    /// The cluster's directory (start the cluster first with synod up).
    #[arg(long, default_value = ".synod")]
    dir: PathBuf,
    /// Client counts to measure, comma separated. Clients spread over every node.
    #[arg(long, default_value = "1,8,32,128", value_delimiter = ',')]
    clients: Vec<usize>,
    /// How long to run each client count.
    #[arg(long, default_value = "5s", value_parser = crate::args::duration)]
    duration: Duration,
    /// Keys written (each write goes to a random one of them).
    #[arg(long, default_value = "1000")]
    keys: u64,
    /// Measure linearizable reads instead of writes.
    #[arg(long)]
    reads: bool,
}

/// Closed-loop clients, each with its own connection, for a fixed time per count.
pub(crate) fn bench(a: KvBench) -> Result<ExitCode> {
    if a.clients.is_empty() || a.clients.contains(&0) || a.keys == 0 {
        bail!("--clients counts and --keys must be at least 1");
    }
    let config = ClusterConfig::load(&a.dir.join("cluster.toml")).with_context(|| {
        format!(
            "no cluster in {} (start one with synod up)",
            a.dir.display()
        )
    })?;
    let addrs: Vec<SocketAddr> = config.nodes.iter().map(|n| n.admin_addr).collect();
    let what = if a.reads {
        "linearizable reads"
    } else {
        "writes"
    };
    println!(
        "synod Raft KV over HTTP: {} nodes, {what}, {:?} per point, {} keys",
        addrs.len(),
        a.duration,
        a.keys
    );
    println!(
        "{:>7} | {:>10} | {:>8} {:>8} {:>8} | {:>6}",
        "clients", "ops/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    let rt = runtime()?;
    for &clients in &a.clients {
        let bar = ProgressBar::new(a.duration.as_secs().max(1));
        let (ops, errors, mut latencies, elapsed) = rt.block_on(async {
            let started = Instant::now();
            let ticker = {
                let bar = bar.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        bar.inc(1);
                    }
                })
            };
            let mut tasks = Vec::new();
            for c in 0..clients {
                let addr = addrs[c % addrs.len()];
                let (duration, keys, reads) = (a.duration, a.keys, a.reads);
                tasks.push(tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .timeout(Duration::from_secs(15))
                        .pool_max_idle_per_host(1)
                        .build()?;
                    let mut latencies = Vec::new();
                    let mut errors = 0u64;
                    let mut i = c as u64;
                    let begin = Instant::now();
                    while begin.elapsed() < duration {
                        i = i
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let url = format!("http://{addr}/v1/kv/k{}", (i >> 33) % keys);
                        let sent = Instant::now();
                        let request = if reads {
                            http.get(url)
                        } else {
                            http.put(url).body((i >> 20).to_string())
                        };
                        match request.send().await {
                            Ok(r) if r.status().is_success() || r.status() == 404 => {
                                let _ = r.bytes().await;
                                latencies.push(sent.elapsed().as_micros() as u64);
                            }
                            _ => errors += 1,
                        }
                    }
                    anyhow::Ok((latencies, errors))
                }));
            }
            let mut all = Vec::new();
            let mut errors = 0;
            for t in tasks {
                let (l, e) = t.await??;
                all.extend(l);
                errors += e;
            }
            ticker.abort();
            anyhow::Ok((all.len(), errors, all, started.elapsed()))
        })?;
        bar.finish_and_clear();
        latencies.sort_unstable();
        let q = |p: f64| {
            latencies
                .get((latencies.len().saturating_sub(1) as f64 * p) as usize)
                .map_or(0.0, |&us| us as f64 / 1e3)
        };
        println!(
            "{:>7} | {:>10.0} | {:>8.2} {:>8.2} {:>8.1} | {:>6}",
            clients,
            ops as f64 / elapsed.as_secs_f64(),
            q(0.5),
            q(0.99),
            q(1.0),
            errors
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct DhtCommand {
    /// The cluster's directory.
    #[arg(long, default_value = ".synod", global = true)]
    dir: PathBuf,
    /// The node to start the lookup at (any node routes through the ring).
    #[arg(long, global = true)]
    node: Option<u32>,
    #[command(subcommand)]
    op: DhtOp,
}

#[derive(Debug, Subcommand)]
enum DhtOp {
    /// Store VALUE under KEY at the key's owner on the Chord ring and its replicas.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Look KEY up through the ring.
    Get {
        /// The key.
        key: String,
    },
}

/// `synod dht`: the Chord ring that the nodes of `synod up` form.
pub(crate) fn dht(cmd: DhtCommand) -> Result<ExitCode> {
    let addr = admin_addr(&cmd.dir, cmd.node)?;
    runtime()?.block_on(async move {
        let http = client(Duration::from_secs(15))?;
        let base = format!("http://{addr}/v1/dht");
        let request = match &cmd.op {
            DhtOp::Put { key, value } => http
                .put(format!("{base}/{}", encode(key)))
                .body(value.clone()),
            DhtOp::Get { key } => http.get(format!("{base}/{}", encode(key))),
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("node at {addr} did not answer"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let route = format!(
            "(owner {}, {} hops, {} timeouts)",
            body["owner"].as_str().unwrap_or("?"),
            body["hops"],
            body["timeouts"]
        );
        match &cmd.op {
            DhtOp::Get { key } if status == reqwest::StatusCode::NOT_FOUND => {
                eprintln!("{key}: not found");
                Ok(ExitCode::from(1))
            }
            DhtOp::Get { .. } if status.is_success() => {
                println!("{}", body["value"].as_str().unwrap_or_default());
                eprintln!("{route}");
                Ok(ExitCode::SUCCESS)
            }
            DhtOp::Put { .. } if status.is_success() => {
                println!("OK {route}");
                Ok(ExitCode::SUCCESS)
            }
            _ => bail!("{}", body["error"].as_str().unwrap_or("request failed")),
        }
    })
}
