//! `synod sim mapreduce`: the MapReduce master's task state machine over many seeds with
//! worker and master crashes, partitions and lost messages.

use anyhow::Result;
use clap::{Args, ValueEnum};
use std::process::ExitCode;
use std::sync::Mutex;
use synod_dataflow::mapreduce::harness::{options_for_seed, run};
use synod_sim::SwarmOptions;

/// A deliberately broken master, to watch the checker catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MapReduceBug {
    /// The correct master.
    None,
    /// Do not re-execute the completed map tasks of a dead worker.
    NoMapRerun,
    /// Commit every reduce completion, also late duplicates.
    CommitDuplicates,
}

/// Flags of `synod sim mapreduce`.
#[derive(Debug, Args)]
pub(crate) struct MapReduceArgs {
    /// Number of seeds to run, starting at --seed.
    #[arg(long, default_value = "200", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value = "0")]
    seed: u64,
    /// Worker threads (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// Run a deliberately broken master.
    #[arg(long, value_enum, default_value = "none")]
    bug: MapReduceBug,
}

pub(crate) fn run_swarm(a: MapReduceArgs) -> Result<ExitCode> {
    let mut opts = SwarmOptions::default();
    if let Some(t) = a.threads {
        opts.threads = t as usize;
    }
    let totals = Mutex::new((0u64, 0u64, 0u64, 0u64));
    let bug = a.bug;
    let report = synod_sim::swarm(
        a.seed..a.seed.saturating_add(a.seeds),
        &opts,
        |seed| {
            let mut o = options_for_seed(seed);
            match bug {
                MapReduceBug::None => {}
                MapReduceBug::NoMapRerun => o.master.broken_no_map_rerun = true,
                MapReduceBug::CommitDuplicates => {
                    o.master.broken_commit_duplicates = true;
                    o.master.backup_fraction = 1.0;
                    o.master.backup_after = std::time::Duration::ZERO;
                }
            }
            let (_, p) = run(seed, &o)?;
            if let Ok(mut t) = totals.lock() {
                t.0 += p.attempts;
                t.1 += p.backups;
                t.2 += p.map_reruns;
                t.3 += p.dead_workers;
            }
            Ok(())
        },
        |seed| {
            let flag = match bug {
                MapReduceBug::None => "",
                MapReduceBug::NoMapRerun => " --bug no-map-rerun",
                MapReduceBug::CommitDuplicates => " --bug commit-duplicates",
            };
            format!("synod sim mapreduce --seed {seed} --seeds 1{flag}")
        },
    );
    let (attempts, backups, reruns, dead) = totals.into_inner().unwrap_or_default();
    println!(
        "mapreduce master: {} seeds (2–5 workers, 3–16 maps, 1–4 reduces, swarm faults with crashes for 10 s, then healed), {} failed",
        report.runs,
        report.failures.len()
    );
    println!("  checked after every event: each reduce task committed at most once, with every map output counted once; liveness: the job completes after healing");
    println!(
        "  totals over passing runs (master's view since its last restart): {attempts} attempts, {backups} backups, {reruns} map re-executions, {dead} workers declared dead"
    );
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
