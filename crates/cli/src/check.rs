//! `synod check`: decide whether a recorded history is linearizable.

use crate::bench::median;
use anyhow::{Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use synod_check::history::History;
use synod_check::linearizability::{check, CheckConfig, CheckResult, KvModel};
use synod_check::synthetic::{atomic_store_history, SyntheticConfig};

#[derive(Debug, Args)]
pub(crate) struct CheckCommand {
    /// A history in JSON Lines, one event per line (invoke, ok, fail, info).
    history: PathBuf,
    /// Search steps allowed per key before answering "unknown".
    #[arg(long, default_value = "10000000")]
    step_budget: u64,
}

pub(crate) fn run(cmd: CheckCommand) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&cmd.history)
        .with_context(|| format!("cannot read history {}", cmd.history.display()))?;
    let history = History::from_jsonl(&text)
        .with_context(|| format!("{} is not a valid history", cmd.history.display()))?;
    let config = CheckConfig {
        step_budget: cmd.step_budget,
        ..CheckConfig::default()
    };
    let started = Instant::now();
    let verdict = check(&history, &KvModel, &config);
    let took = started.elapsed();
    println!(
        "{}: {} events, checked in {:.3}s",
        cmd.history.display(),
        history.len(),
        took.as_secs_f64()
    );
    println!("{verdict}");
    Ok(match verdict {
        CheckResult::Ok => ExitCode::SUCCESS,
        CheckResult::Violation(_) => ExitCode::FAILURE,
        CheckResult::Unknown(_) => ExitCode::from(3),
    })
}

/// `synod bench checker`: time the check of a correct store's history.
pub(crate) fn bench(ops: usize, keys: usize, clients: usize, runs: u32) -> Result<ExitCode> {
    let shape = SyntheticConfig {
        operations: ops,
        keys,
        clients,
        ..SyntheticConfig::default()
    };
    let bar = ProgressBar::new(u64::from(runs));
    let mut times = Vec::new();
    for run in 0..runs {
        let history = atomic_store_history(&shape, u64::from(run));
        let started = Instant::now();
        let verdict = check(&history, &KvModel, &CheckConfig::default());
        times.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            verdict.is_ok(),
            "a correct store's history was judged {verdict} (seed {run}): a checker bug"
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    let med = median(&mut times);
    println!(
        "linearizability checker: {ops} operations, {keys} keys, {clients} clients, {runs} histories"
    );
    println!(
        "  median {:.1} ms per history (min {:.1}, max {:.1})",
        med * 1e3,
        times.first().copied().unwrap_or(f64::NAN) * 1e3,
        times.last().copied().unwrap_or(f64::NAN) * 1e3
    );
    Ok(ExitCode::SUCCESS)
}
