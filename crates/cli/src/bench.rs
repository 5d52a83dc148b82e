//! `synod bench`: performance measurements. Results go in BENCHMARKS.md; nothing here is
//! a test and nothing asserts a time.

use anyhow::Result;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use synod_sim::fixtures::PingPong;
use synod_sim::{Sim, SimConfig};

#[derive(Debug, Args)]
pub(crate) struct BenchCommand {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Simulator throughput: messages delivered per wall-clock second for a ping-pong
    /// actor, tracing off, on one thread.
    Sim(SimBench),
    /// Linearizability checker: time to check a correct 10,000-operation, 50-key history.
    Checker(CheckerBench),
    /// Node-to-node transport over loopback: throughput and round-trip latency, mutual TLS
    /// against plaintext.
    Transport(TransportBench),
    /// Durable appends per second through the group-commit loop (one fdatasync per batch).
    Wal(WalBench),
    /// Raft in the simulator, fault-free: commits per virtual second and simulated
    /// commits per wall-clock second, against the number of clients.
    Raft(crate::sim_raft::BenchArgs),
    /// Multi-Raft transactions in the simulator: single- vs cross-range, contention, recovery.
    Txn(crate::sim_bank::TxnBenchArgs),
    /// The replicated KV store of a running cluster (synod up): throughput and p50/p99
    /// latency against the number of clients.
    Kv(crate::kv::KvBench),
    /// Stream processing: windowed-count throughput with checkpoints on and off, latency.
    Stream(crate::stream::StreamBench),
    /// Any etcd v3 endpoint (synod's or etcd's): put, linearizable or serializable range.
    Etcd(crate::bench_etcd::EtcdBench),
    /// The Dynamo-style AP store against the Raft KV of one `synod up --ap` cluster:
    /// puts and gets, client- and server-driven coordination, p50/p99/p99.9.
    Ap(crate::bench_ap::ApBench),
}

#[derive(Debug, Args)]
struct SimBench {
    /// Nodes in the game.
    #[arg(long, default_value = "2", value_parser = crate::args::nodes)]
    nodes: u32,
    /// Balls each node serves.
    #[arg(long, default_value = "1")]
    balls: u32,
    /// Runs to take the median of.
    #[arg(long, default_value = "15")]
    runs: u32,
    /// Simulated time per run.
    #[arg(long, default_value = "2s", value_parser = crate::args::duration)]
    simulated: Duration,
}

#[derive(Debug, Args)]
struct CheckerBench {
    /// Operations in the history.
    #[arg(long, default_value = "10000")]
    ops: usize,
    /// Keys.
    #[arg(long, default_value = "50")]
    keys: usize,
    /// Concurrent clients.
    #[arg(long, default_value = "8")]
    clients: usize,
    /// Runs to take the median of.
    #[arg(long, default_value = "9")]
    runs: u32,
}

pub(crate) fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd.what {
        BenchWhat::Sim(b) => bench_sim(b),
        BenchWhat::Checker(b) => crate::check::bench(b.ops, b.keys, b.clients, b.runs),
        BenchWhat::Transport(b) => bench_transport(b),
        BenchWhat::Raft(b) => crate::sim_raft::bench(b),
        BenchWhat::Txn(b) => crate::sim_bank::bench(b),
        BenchWhat::Kv(b) => crate::kv::bench(b),
        BenchWhat::Etcd(b) => crate::bench_etcd::bench(b),
        BenchWhat::Ap(b) => crate::bench_ap::bench(b),
        BenchWhat::Wal(b) => bench_wal(b),
        BenchWhat::Stream(b) => crate::stream::bench_stream(b),
    }
}

/// The median of `xs` (sorted in place).
pub(crate) fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn bench_sim(b: SimBench) -> Result<ExitCode> {
    let bar = ProgressBar::new(u64::from(b.runs));
    let mut rates = Vec::new();
    let mut delivered = 0;
    for run in 0..b.runs {
        let (nodes, balls) = (b.nodes, b.balls);
        let mut sim = Sim::new(SimConfig::new(u64::from(run), nodes), move |_| {
            PingPong::new(nodes, balls)
        });
        let start = Instant::now();
        sim.run_for(b.simulated)?;
        let took = start.elapsed().as_secs_f64();
        delivered = sim.stats().delivered;
        rates.push(delivered as f64 / took);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut sorted = rates.clone();
    let med = median(&mut sorted);
    println!(
        "simulator ping-pong: {} nodes, {} balls each, {:?} simulated per run, {} runs",
        b.nodes, b.balls, b.simulated, b.runs
    );
    println!("  messages delivered per run: {delivered}");
    println!(
        "  median {:.2} M msgs/s (min {:.2}, max {:.2}); {:.0}x faster than real time",
        med / 1e6,
        sorted.first().copied().unwrap_or(f64::NAN) / 1e6,
        sorted.last().copied().unwrap_or(f64::NAN) / 1e6,
        b.simulated.as_secs_f64() * med / delivered.max(1) as f64,
    );
    Ok(ExitCode::SUCCESS)
}

/// `synod bench transport`: two transports on loopback, one-way throughput of small
/// messages and round-trip latency, with mutual TLS and in plaintext.
pub(crate) fn bench_transport(b: TransportBench) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::bench_net::transport(b))
}

/// `synod bench wal`: durable appends per second through the group-commit driver.
pub(crate) fn bench_wal(b: WalBench) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::bench_net::wal(b))
}

#[derive(Debug, Args)]
pub(crate) struct TransportBench {
    /// Messages per throughput run.
    #[arg(long, default_value = "1000000")]
    pub(crate) messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value = "16")]
    pub(crate) size: usize,
    /// Round trips for the latency measurement.
    #[arg(long, default_value = "20000")]
    pub(crate) round_trips: u64,
    /// Runs to take the median of.
    #[arg(long, default_value = "5")]
    pub(crate) runs: u32,
}

#[derive(Debug, Args)]
pub(crate) struct WalBench {
    /// Concurrent clients, each with one append in flight (comma-separated list).
    #[arg(long, default_value = "1,16,64,256", value_delimiter = ',')]
    pub(crate) clients: Vec<usize>,
    /// Bytes per append.
    #[arg(long, default_value = "100")]
    pub(crate) size: usize,
    /// How long each measurement runs.
    #[arg(long, default_value = "5s", value_parser = crate::args::duration)]
    pub(crate) duration: Duration,
    /// Directory for the log (default: a fresh one under ./target or /tmp); it must be
    /// on the disk you want to measure.
    #[arg(long)]
    pub(crate) dir: Option<std::path::PathBuf>,
}
