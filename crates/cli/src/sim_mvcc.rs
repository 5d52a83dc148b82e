//! `synod sim mvcc`: the etcd-compatible MVCC store replicated by Raft, over many seeds
//! with random faults, checked for linearizability, replica agreement and gap-free watch
//! delivery.

use anyhow::{bail, Result};
use clap::Args;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use synod_protocols::mvcc::harness::{stale_read_scenario, swarm_scenario};
use synod_sim::SwarmOptions;

#[derive(Debug, Args)]
pub(crate) struct MvccArgs {
    /// Number of seeds to run, starting at --first-seed.
    #[arg(long, default_value = "200")]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value = "0")]
    first_seed: u64,
    /// Simulated time per seed during which clients run (one more second follows).
    #[arg(long, default_value = "4s", value_parser = crate::args::duration)]
    duration: Duration,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Serve ReadIndex reads at the previous revision, to watch the checker catch it.
    #[arg(long)]
    stale_reads: bool,
}

pub(crate) fn run(a: MvccArgs) -> Result<ExitCode> {
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let seconds = a.duration.as_secs();
    if seconds == 0 || a.duration.subsec_nanos() != 0 {
        bail!(
            "--duration must be a whole number of seconds, at least 1s (got {:?})",
            a.duration
        );
    }
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let stale = a.stale_reads;
    let operations = AtomicUsize::new(0);
    let scenario = |seed: u64| -> Result<(), String> {
        let ops = if stale {
            stale_read_scenario(seed, seconds)?
        } else {
            swarm_scenario(seed, seconds)?
        };
        operations.fetch_add(ops, Ordering::Relaxed);
        Ok(())
    };
    let flag = if stale { " --stale-reads" } else { "" };
    let opts = SwarmOptions::with_threads(a.threads);
    let report = synod_sim::swarm(
        a.first_seed..a.first_seed.saturating_add(a.seeds),
        &opts,
        scenario,
        |seed| format!("synod sim mvcc --first-seed {seed} --seeds 1 --duration {seconds}s{flag}"),
    );
    println!(
        "mvcc: {} seeds, {} failed, {} client operations checked for linearizability",
        report.runs,
        report.failures.len(),
        operations.load(Ordering::Relaxed)
    );
    if !report.failures.is_empty() {
        print!("{}", report.describe());
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
