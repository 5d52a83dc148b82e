//! `synod bench etcd`: a closed-loop load generator for any etcd v3 endpoint (synod's or
//! etcd's own), in the manner of etcd's `benchmark` tool: puts, linearizable ranges or
//! serializable ranges of single keys from N clients over M gRPC connections spread over
//! the endpoints. bench/etcd-compare.sh runs it against both systems in the same run.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use synod_server::etcd::pb::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use tonic::transport::Channel;

/// What each request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Op {
    /// Put one key (a write through the log).
    Put,
    /// Range of one key, linearizable (etcd's default read).
    RangeL,
    /// Range of one key, serializable (read from the endpoint's replica).
    RangeS,
}

#[derive(Debug, Args)]
pub(crate) struct EtcdBench {
    /// Comma-separated client endpoints (host:port), e.g. 127.0.0.1:2379,127.0.0.1:2380.
    #[arg(long, value_delimiter = ',', required = true, value_parser = endpoint)]
    endpoints: Vec<String>,
    /// The request type.
    #[arg(long, value_enum, default_value = "range-l")]
    op: Op,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value = "100", value_parser = positive)]
    clients: usize,
    /// gRPC connections the clients share, spread over the endpoints.
    #[arg(long, default_value = "12", value_parser = positive)]
    conns: usize,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = crate::args::duration)]
    duration: Duration,
    /// Distinct keys (written once before a read benchmark).
    #[arg(long, default_value = "1000", value_parser = positive)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value = "256")]
    value_size: usize,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive integer")),
    }
}

fn endpoint(s: &str) -> Result<String, String> {
    let addr = s.strip_prefix("http://").unwrap_or(s);
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(addr.to_string())
        }
        _ => Err(format!("{s:?} is not host:port")),
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("/synod-bench/{i:08}").into_bytes()
}

pub(crate) fn bench(a: EtcdBench) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (ops, errors, mut latencies, elapsed) = rt.block_on(run(&a))?;
    latencies.sort_unstable();
    let q = |p: f64| {
        latencies
            .get((latencies.len().saturating_sub(1) as f64 * p) as usize)
            .map_or(0.0, |&us| us as f64 / 1e3)
    };
    let name = match a.op {
        Op::Put => "put",
        Op::RangeL => "range linearizable",
        Op::RangeS => "range serializable",
    };
    println!(
        "{name}: {:.0} ops/s, {} clients, {} conns, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} errors",
        ops as f64 / elapsed.as_secs_f64(),
        a.clients,
        a.conns,
        q(0.5),
        q(0.99),
        q(1.0),
        errors
    );
    Ok(if ops == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run(a: &EtcdBench) -> Result<(usize, u64, Vec<u64>, Duration)> {
    if a.endpoints.is_empty() {
        bail!("--endpoints needs at least one host:port");
    }
    let mut channels = Vec::new();
    for c in 0..a.conns {
        let ep = &a.endpoints[c % a.endpoints.len()];
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{ep}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {ep}"))?;
        channels.push(channel);
    }
    let value = vec![b'v'; a.value_size];
    if a.op != Op::Put {
        // Write every key once, so reads find them.
        let mut fill = Vec::new();
        for c in 0..a.clients.min(a.keys) {
            let mut kv = KvClient::new(channels[c % channels.len()].clone());
            let (clients, keys, value) = (a.clients, a.keys, value.clone());
            fill.push(tokio::spawn(async move {
                for i in (c..keys).step_by(clients) {
                    kv.put(PutRequest {
                        key: key(i),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .context("filling the keys")?;
                }
                anyhow::Ok(())
            }));
        }
        for f in fill {
            f.await??;
        }
    }
    let bar = ProgressBar::new(a.duration.as_secs().max(1));
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
    for c in 0..a.clients {
        let kv = KvClient::new(channels[c % channels.len()].clone());
        let (op, keys, duration, value) = (a.op, a.keys, a.duration, value.clone());
        tasks.push(tokio::spawn(client(kv, c, op, keys, duration, value)));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    ticker.abort();
    bar.finish_and_clear();
    Ok((all.len(), errors, all, started.elapsed()))
}

async fn client(
    mut kv: KvClient<Channel>,
    c: usize,
    op: Op,
    keys: usize,
    duration: Duration,
    value: Vec<u8>,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut i = c as u64;
    let begin = Instant::now();
    while begin.elapsed() < duration {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = key((i >> 33) as usize % keys);
        let sent = Instant::now();
        let outcome = match op {
            Op::Put => kv
                .put(PutRequest {
                    key: k,
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Op::RangeL | Op::RangeS => kv
                .range(RangeRequest {
                    key: k,
                    serializable: op == Op::RangeS,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        };
        match outcome {
            Ok(()) => latencies.push(sent.elapsed().as_micros() as u64),
            Err(_) => errors += 1,
        }
    }
    (latencies, errors)
}
