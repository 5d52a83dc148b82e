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
