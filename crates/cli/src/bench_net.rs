//! The real-system benchmarks: transport over loopback and the group-commit WAL.

use crate::bench::{median, TransportBench, WalBench};
use anyhow::{Context, Result};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use synod_core::NodeId;
use synod_protocols::beacon::{Beacon, BeaconMsg};
use synod_runtime::driver::{spawn_actor, ActorPlacement, ActorStats, DriverConfig, Outbox};
use synod_runtime::storage::{DiskOptions, DiskStorage};
use synod_runtime::transport::certs::init_cluster_certs;
use synod_runtime::transport::{
    Inbound, ServiceId, TlsFiles, TlsMode, Transport, TransportConfig, TransportHandle,
};
use tokio::sync::mpsc;

fn scratch_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("synod-bench-{name}-{}", std::process::id()))
}

async fn pair(
    tls: bool,
    certs: &std::path::Path,
) -> Result<(
    TransportHandle,
    mpsc::Receiver<Inbound>,
    TransportHandle,
    mpsc::Receiver<Inbound>,
)> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mode = |n: u32| {
        if tls {
            TlsMode::Mutual(TlsFiles::in_dir(certs, NodeId(n)))
        } else {
            TlsMode::Insecure
        }
    };
    // n2 accepts and never dials n1, so its entry for n1 only has to be loopback.
    let n2_peers = BTreeMap::from([(NodeId(1), "127.0.0.1:9".parse()?)]);
    let (n2, rx2) = Transport::start(TransportConfig::new(
        "bench",
        NodeId(2),
        any,
        n2_peers,
        mode(2),
    ))
    .await?;
    let n1_peers = BTreeMap::from([(NodeId(2), n2.local_addr())]);
    let (n1, rx1) = Transport::start(TransportConfig::new(
        "bench",
        NodeId(1),
        any,
        n1_peers,
        mode(1),
    ))
    .await?;
    tokio::time::timeout(Duration::from_secs(10), n1.wait_connected(NodeId(2)))
        .await
        .context("the two transports did not connect")??;
    Ok((n1, rx1, n2, rx2))
}

async fn throughput(b: &TransportBench, tls: bool, certs: &std::path::Path) -> Result<f64> {
    let (n1, _rx1, n2, mut rx2) = pair(tls, certs).await?;
    let payload = Bytes::from(vec![7u8; b.size]);
    let total = b.messages;
    let receiver = tokio::spawn(async move {
        let mut got = 0u64;
        while got < total {
            match rx2.recv().await {
                Some(Inbound::Message { .. }) => got += 1,
                Some(_) => {}
                None => break,
            }
        }
        got
    });
    let started = Instant::now();
    for _ in 0..total {
        n1.send(NodeId(2), ServiceId(1), payload.clone()).await?;
    }
    let got = receiver.await?;
    let took = started.elapsed().as_secs_f64();
    anyhow::ensure!(got == total, "only {got} of {total} messages arrived");
    n1.shutdown().await;
    n2.shutdown().await;
    Ok(total as f64 / took)
}

async fn round_trips(b: &TransportBench, tls: bool, certs: &std::path::Path) -> Result<Vec<f64>> {
    let (n1, mut rx1, n2, mut rx2) = pair(tls, certs).await?;
    let echo = {
        let n2 = n2.clone();
        tokio::spawn(async move {
            while let Some(Inbound::Message { from, payload, .. }) = rx2.recv().await {
                if n2.send(from, ServiceId(1), payload).await.is_err() {
                    break;
                }
            }
        })
    };
    let payload = Bytes::from(vec![7u8; b.size]);
    let mut rtts = Vec::with_capacity(b.round_trips as usize);
    for _ in 0..b.round_trips {
        let started = Instant::now();
        n1.send(NodeId(2), ServiceId(1), payload.clone()).await?;
        match rx1.recv().await {
            Some(Inbound::Message { .. }) => rtts.push(started.elapsed().as_secs_f64()),
            _ => anyhow::bail!("the echo stopped"),
        }
    }
    echo.abort();
    n1.shutdown().await;
    n2.shutdown().await;
    Ok(rtts)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) async fn transport(b: TransportBench) -> Result<ExitCode> {
    let certs = scratch_dir("certs");
    let _ = std::fs::remove_dir_all(&certs);
    init_cluster_certs(&certs, "bench", &[NodeId(1).into(), NodeId(2).into()])?;
    let bar = indicatif::ProgressBar::new(u64::from(b.runs) * 4);
    println!(
        "transport over loopback: {} messages of {} bytes per run, {} round trips, {} runs",
        b.messages, b.size, b.round_trips, b.runs
    );
    let mut table = Vec::new();
    for tls in [true, false] {
        let mut rates = Vec::new();
        let mut rtt_medians = Vec::new();
        let mut rtt_p99s = Vec::new();
        for _ in 0..b.runs {
            rates.push(throughput(&b, tls, &certs).await?);
            bar.inc(1);
            let mut rtts = round_trips(&b, tls, &certs).await?;
            rtts.sort_by(f64::total_cmp);
            rtt_medians.push(percentile(&rtts, 0.5));
            rtt_p99s.push(percentile(&rtts, 0.99));
            bar.inc(1);
        }
        table.push((
            if tls { "mutual TLS 1.3" } else { "plaintext" },
            median(&mut rates),
            median(&mut rtt_medians),
            median(&mut rtt_p99s),
        ));
    }
    bar.finish_and_clear();
    println!(
        "{:<16} {:>16} {:>14} {:>14}",
        "mode", "one-way msgs/s", "RTT p50 µs", "RTT p99 µs"
    );
    for (mode, rate, p50, p99) in &table {
        println!(
            "{mode:<16} {:>16.0} {:>14.1} {:>14.1}",
            rate,
            p50 * 1e6,
            p99 * 1e6
        );
    }
    if let [(_, tls, ..), (_, plain, ..)] = table[..] {
        println!("TLS/plaintext throughput ratio: {:.2}", tls / plain);
    }
    let _ = std::fs::remove_dir_all(&certs);
    Ok(ExitCode::SUCCESS)
}

/// An outbox that discards: the WAL benchmark has no peers.
struct Nowhere;

impl Outbox for Nowhere {
    fn send(&self, _to: NodeId, _service: u16, _payload: Bytes) {}
}

pub(crate) async fn wal(b: WalBench) -> Result<ExitCode> {
    let root = b.dir.clone().unwrap_or_else(|| scratch_dir("wal"));
    println!(
        "group commit: durable {}-byte appends through the driver, {:?} per point, log in {}",
        b.size,
        b.duration,
        root.display()
    );
    println!(
        "{:>8} {:>14} {:>10} {:>14} {:>12} {:>12}",
        "clients", "appends/s", "fsyncs/s", "appends/fsync", "p50 ms", "p99 ms"
    );
    let bar = indicatif::ProgressBar::new(b.clients.len() as u64);
    for &clients in &b.clients {
        let dir = root.join(format!("c{clients}"));
        let _ = std::fs::remove_dir_all(&dir);
        let storage = DiskStorage::open(&dir, DiskOptions::default())
            .with_context(|| format!("opening a log in {}", dir.display()))?;
        let stats = Arc::new(ActorStats::default());
        let (handle, task) = spawn_actor(
            ActorPlacement {
                me: NodeId(1),
                service: 1,
                seed: 1,
                config: DriverConfig::default(),
            },
            Beacon::new(Vec::new(), Duration::from_secs(3600)),
            Box::new(storage),
            Arc::new(Nowhere),
            stats.clone(),
        );
        // Let the start-up batch finish before counting.
        handle.inspect(|_| ()).await?;
        let syncs_before = stats.syncs.load(Ordering::Relaxed);
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + b.duration;
        let mut workers = Vec::new();
        for _ in 0..clients {
            let handle = handle.clone();
            let done = done.clone();
            let size = b.size;
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let session = handle.session().await?;
                let mut session = session;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    session.send(BeaconMsg::Append(vec![1u8; size])).await?;
                    match session.replies.recv().await {
                        Some(BeaconMsg::Appended(_)) => {}
                        other => anyhow::bail!("unexpected reply {other:?}"),
                    }
                    latencies.push(started.elapsed().as_secs_f64());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, anyhow::Error>(latencies)
            }));
        }
        let started = Instant::now();
        let mut latencies = Vec::new();
        for w in workers {
            latencies.extend(w.await??);
        }
        let took = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let appends = done.load(Ordering::Relaxed) as f64;
        let syncs = (stats.syncs.load(Ordering::Relaxed) - syncs_before) as f64;
        println!(
            "{:>8} {:>14.0} {:>10.0} {:>14.1} {:>12.2} {:>12.2}",
            clients,
            appends / took,
            syncs / took,
            appends / syncs.max(1.0),
            percentile(&latencies, 0.5) * 1e3,
            percentile(&latencies, 0.99) * 1e3
        );
        drop(handle);
        let _ = task.await;
        let _ = std::fs::remove_dir_all(&dir);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if b.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(ExitCode::SUCCESS)
}
