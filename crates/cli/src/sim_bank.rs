//! `synod sim bank` and `synod bench txn`: the Jepsen-style bank test over multi-Raft
//! transactions, and the single- versus cross-range, contention and recovery figures.

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::time::Duration;
use synod_protocols::txn::harness::{
    as_is, bank_scenario, bench_run, quantile_ms, recovery_run, watch_scenario, BenchRun,
};
use synod_sim::SwarmOptions;

#[derive(Debug, Args)]
pub(crate) struct BankArgs {
    /// Number of seeds, starting at --first-seed.
    #[arg(long, default_value = "100", value_parser = seeds)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value = "0")]
    first_seed: u64,
    /// Worker threads (default: every core).
    #[arg(long, value_parser = threads)]
    threads: Option<usize>,
    /// Add two watchers of every account (merged range feeds over closed timestamps):
    /// each watch stream must equal the committed history, in order, without gaps or
    /// duplicates, and catch up after the faults heal.
    #[arg(long)]
    watch: bool,
}

fn seeds(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seeds"))?;
    if n == 0 {
        return Err("at least one seed".into());
    }
    Ok(n)
}

fn threads(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of threads"))?;
    if !(1..=1024).contains(&n) {
        return Err(format!("threads must be between 1 and 1024, not {n}"));
    }
    Ok(n)
}

pub(crate) fn run(a: BankArgs) -> Result<ExitCode> {
    let opts = SwarmOptions::with_threads(a.threads);
    let started = std::time::Instant::now();
    let watch = a.watch;
    let report = synod_sim::swarm(
        a.first_seed..a.first_seed.saturating_add(a.seeds),
        &opts,
        move |seed| {
            if watch {
                watch_scenario(seed, as_is).map(|_| ())
            } else {
                bank_scenario(seed, as_is)
            }
        },
        move |seed| {
            let flag = if watch { " --watch" } else { "" };
            format!("synod sim bank{flag} --first-seed {seed} --seeds 1")
        },
    );
    println!(
        "bank{}: {} seeds in {:.1} s, {} failed (total conserved, no partial transfer seen, \
         per-key linearizable, a snapshot read completes after healing{})",
        if watch { " --watch" } else { "" },
        report.runs,
        started.elapsed().as_secs_f64(),
        report.failures.len(),
        if watch {
            "; every watch stream equals the committed history and catches up"
        } else {
            ""
        }
    );
    if !report.failures.is_empty() {
        print!("{}", report.describe());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct TxnBenchArgs {
    /// Simulated seconds of load per run.
    #[arg(long, default_value = "5", value_parser = secs)]
    seconds: u64,
    /// Transfer clients.
    #[arg(long, default_value = "8", value_parser = clients)]
    clients: u64,
    /// The seed of every run.
    #[arg(long, default_value = "1")]
    seed: u64,
    /// Measure the running cluster in this directory (synod up --ranges) instead of the
    /// simulator: real processes, real fsync.
    #[arg(long)]
    cluster: Option<std::path::PathBuf>,
    /// With --cluster: accounts (acct/000...).
    #[arg(long, default_value = "64", value_parser = clap::value_parser!(u32).range(4..=1000))]
    accounts: u32,
    /// With --cluster: rounds of the single- and cross-range phases (medians are reported).
    #[arg(long, default_value = "3", value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// With --cluster: also SIGKILL the leader of the range of acct/000 under load,
    /// restart it, and report the recovery time.
    #[arg(long)]
    crash: bool,
}

fn secs(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(1..=600).contains(&n) {
        return Err(format!("seconds must be between 1 and 600, not {n}"));
    }
    Ok(n)
}

fn clients(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of clients"))?;
    if !(1..=256).contains(&n) {
        return Err(format!("clients must be between 1 and 256, not {n}"));
    }
    Ok(n)
}

fn line(label: &str, r: &BenchRun) {
    let s = &r.stats;
    let tps = |v: &[u64]| v.len() as f64 / r.seconds;
    let attempts = s.one_phase.len() + s.two_phase.len() + s.aborted as usize;
    let abort = if attempts == 0 {
        0.0
    } else {
        100.0 * s.aborted as f64 / attempts as f64
    };
    println!(
        "{label:<34} {:>3} ranges | 1PC {:>6.1}/s p50 {:>6.2} ms p99 {:>6.2} ms | 2PC {:>6.1}/s \
         p50 {:>6.2} ms p99 {:>6.2} ms | aborts {:>5.1}%",
        r.ranges,
        tps(&s.one_phase),
        quantile_ms(&s.one_phase, 0.5),
        quantile_ms(&s.one_phase, 0.99),
        tps(&s.two_phase),
        quantile_ms(&s.two_phase, 0.5),
        quantile_ms(&s.two_phase, 0.99),
        abort
    );
}

pub(crate) fn bench(a: TxnBenchArgs) -> Result<ExitCode> {
    if let Some(dir) = a.cluster {
        return crate::txn::bench_cluster(crate::txn::ClusterBench {
            dir,
            seconds: a.seconds,
            clients: a.clients,
            accounts: a.accounts,
            rounds: a.rounds,
            crash: a.crash,
        });
    }
    println!(
        "synod bench txn: 3 simulated nodes on a LAN (100 µs + 100 µs tail, fsync 200-500 µs), \
         Raft 100 ms election timeout, {} transfer clients, {} simulated s per run, seed {}",
        a.clients, a.seconds, a.seed
    );
    let bar = ProgressBar::new(9);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    let mut step = |label: String, r: Result<BenchRun, String>| -> Result<()> {
        bar.inc(1);
        match r {
            Ok(r) => {
                rows.push((label, r));
                Ok(())
            }
            Err(e) => bail!("{label}: {e}"),
        }
    };
    bar.set_message("single range");
    step(
        "single range (no split), 64 accts".into(),
        bench_run(a.seed, 64, usize::MAX, None, a.clients, a.seconds),
    )?;
    bar.set_message("cross range");
    step(
        "8 ranges (split at 8 keys), 64 accts".into(),
        bench_run(a.seed, 64, 8, None, a.clients, a.seconds),
    )?;
    for hot in [2u32, 4, 8, 16, 64] {
        bar.set_message(format!("contention, {hot} hot accounts"));
        step(
            format!("contention: {hot:>2} hot accounts"),
            bench_run(a.seed, 64, 8, Some(hot), a.clients, a.seconds),
        )?;
    }
    bar.set_message("recovery");
    let mut recoveries = Vec::new();
    for seed in a.seed..a.seed + 2 {
        match recovery_run(seed, Duration::from_secs(2)) {
            Ok(r) => recoveries.push(r),
            Err(e) => bail!("recovery run (seed {seed}): {e}"),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for (label, r) in &rows {
        line(label, r);
    }
    for (anchored, any) in &recoveries {
        println!(
            "coordinator-range leader crash: first commit anchored there after {:.0} ms, \
             first commit of any transfer after {:.0} ms",
            anchored.as_secs_f64() * 1e3,
            any.as_secs_f64() * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}
