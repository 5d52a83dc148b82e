//! `synod compare`: run every algorithm of a family in the simulator on the same fault-free
//! LAN and print measured costs beside the textbook figures (issue 6, "Comparison").

mod chart;
mod consensus;
mod election;
mod mutex;

use anyhow::Result;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub(crate) struct CompareCommand {
    #[command(subcommand)]
    what: CompareWhat,
}

#[derive(Debug, Subcommand)]
enum CompareWhat {
    /// Five mutual-exclusion algorithms: messages per entry, synchronization delay and
    /// response time under light and heavy load.
    Mutex(MutexCompare),
    /// Bully, Chang–Roberts and the candidate-list ring: messages per election.
    Election(ElectionCompare),
    /// Raft and Multi-Paxos: commit latency in round trips, messages per operation and
    /// downtime after a leader crash, on the same workload and networks.
    Consensus(consensus::ConsensusCompare),
}

#[derive(Debug, Args)]
pub(crate) struct MutexCompare {
    /// Node counts to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,9,16,25,49", value_parser = comparison_nodes)]
    nodes: Vec<u32>,
    /// Critical-section entries per run, spread evenly over the nodes.
    #[arg(long, default_value = "1000", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    requests: u32,
    /// Simulation seed; the same seed prints the same table.
    #[arg(long, default_value = "1")]
    seed: u64,
    /// Also draw messages per entry against N as an SVG chart here.
    #[arg(long)]
    chart: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ElectionCompare {
    /// Node counts to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64", value_parser = comparison_nodes)]
    nodes: Vec<u32>,
    /// Random rings (Chang–Roberts) and random initiators (bully) averaged per N.
    #[arg(long, default_value = "20", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    samples: u32,
    /// Simulation seed; the same seed prints the same table.
    #[arg(long, default_value = "1")]
    seed: u64,
    /// Also draw messages per election against N as an SVG chart here.
    #[arg(long)]
    chart: Option<PathBuf>,
}

/// A node count for a comparison: at least 2 (every algorithm here needs a peer) and at
/// most 1024, so that one run stays within seconds.
fn comparison_nodes(s: &str) -> Result<u32, String> {
    let value: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a node count: expected a whole number"))?;
    if !(2..=1024).contains(&value) {
        return Err(format!(
            "node count `{s}` must be between 2 and 1024 for a comparison"
        ));
    }
    Ok(value)
}

pub(crate) fn run(cmd: CompareCommand) -> Result<ExitCode> {
    match cmd.what {
        CompareWhat::Mutex(m) => mutex::run(m),
        CompareWhat::Election(e) => election::run(e),
        CompareWhat::Consensus(c) => consensus::run(c),
    }
}

fn progress(runs: u64) -> ProgressBar {
    let bar = ProgressBar::new(runs);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar
}

/// `yes`/`no` for a measurement that theory predicts exactly.
fn matches(measured: f64, theory: f64) -> &'static str {
    if (measured - theory).abs() < 1e-9 {
        "yes"
    } else {
        "no"
    }
}
