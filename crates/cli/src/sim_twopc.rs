//! `synod sim twopc`: two-phase commit under every fault mix, the blocking case, the
//! crash-point sweep, and messages and forced writes beside the textbook figures.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;
use synod_protocols::twopc::harness::{
    blocking_demo, crash_point_sweep, measure_costs, run_scenario_with, textbook_costs, FaultMix,
    RunReport,
};
use synod_protocols::twopc::{Bug, TwoPcConfig};
use synod_sim::SwarmOptions;

use crate::args;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Presumption {
    /// Presumed abort (Mohan, Lindsay & Obermarck 1986).
    Abort,
    /// The baseline 2P protocol: forced abort records, acknowledged aborts.
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MixArg {
    All,
    None,
    Loss,
    Crashes,
    Partitions,
    CrashesLoss,
    Swarm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BugArg {
    /// Correct protocol.
    None,
    /// A participant votes YES before its prepare record is durable.
    VoteBeforePrepare,
    /// The coordinator sends COMMIT before its decision record is durable.
    CommitBeforeDecision,
    /// An uncertain participant aborts on its own after its decision timeout.
    AbortWhenUncertain,
}

#[derive(Debug, Args)]
pub(crate) struct TwoPcArgs {
    /// Seeds per fault mix, starting at --first-seed.
    #[arg(long, default_value = "200")]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value = "0")]
    first_seed: u64,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Participants (the coordinator is one more node).
    #[arg(long, default_value = "3", value_parser = participants)]
    participants: u32,
    /// Transactions per run, spread over the 3 s fault phase.
    #[arg(long, default_value = "20", value_parser = txns)]
    txns: usize,
    /// Probability that a transaction has a participant voting NO.
    #[arg(long, default_value = "0.2", value_parser = args::probability)]
    abort_probability: f64,
    /// What the coordinator presumes when it has no record of a transaction.
    #[arg(long, value_enum, default_value = "abort")]
    presumption: Presumption,
    /// Which fault mix to run.
    #[arg(long, value_enum, default_value = "all")]
    mix: MixArg,
    /// Run a deliberately broken variant, to watch the checkers catch it.
    #[arg(long, value_enum, default_value = "none")]
    bug: BugArg,
    /// Write a JSONL trace of the run (needs --seeds 1 and one --mix).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// How long the coordinator stays down in the blocking demonstration.
    #[arg(long, default_value = "5s", value_parser = args::duration)]
    blocked_for: Duration,
}

fn participants(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of participants"))?;
    if !(1..=64).contains(&n) {
        return Err(format!("participants must be between 1 and 64, not {n}"));
    }
    Ok(n)
}

fn txns(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of transactions"))?;
    if !(1..=10_000).contains(&n) {
        return Err(format!("transactions must be between 1 and 10000, not {n}"));
    }
    Ok(n)
}

impl TwoPcArgs {
    fn config(&self, presumed_abort: bool) -> TwoPcConfig {
        let config = TwoPcConfig::new(self.participants).with_presumed_abort(presumed_abort);
        match self.bug {
            BugArg::None => config,
            BugArg::VoteBeforePrepare => config.with_bug(Bug::VoteBeforeForcingPrepare),
            BugArg::CommitBeforeDecision => config.with_bug(Bug::CommitBeforeForcingDecision),
            BugArg::AbortWhenUncertain => config.with_bug(Bug::UncertainParticipantAbortsOnTimeout),
        }
    }

    fn mixes(&self) -> Vec<FaultMix> {
        match self.mix {
            MixArg::All => FaultMix::ALL.to_vec(),
            MixArg::None => vec![FaultMix::None],
            MixArg::Loss => vec![FaultMix::Loss],
            MixArg::Crashes => vec![FaultMix::Crashes],
            MixArg::Partitions => vec![FaultMix::Partitions],
            MixArg::CrashesLoss => vec![FaultMix::CrashesAndLoss],
            MixArg::Swarm => vec![FaultMix::Swarm],
        }
    }

    fn replay(&self, mix: FaultMix, seed: u64) -> String {
        let mix = match mix {
            FaultMix::None => "none",
            FaultMix::Loss => "loss",
            FaultMix::Crashes => "crashes",
            FaultMix::Partitions => "partitions",
            FaultMix::CrashesAndLoss => "crashes-loss",
            FaultMix::Swarm => "swarm",
        };
        let mut cmd = format!(
            "synod sim twopc --mix {mix} --first-seed {seed} --seeds 1 --participants {} --txns {} --abort-probability {}",
            self.participants, self.txns, self.abort_probability
        );
        if self.presumption == Presumption::Nothing {
            cmd.push_str(" --presumption nothing");
        }
        match self.bug {
            BugArg::None => {}
            BugArg::VoteBeforePrepare => cmd.push_str(" --bug vote-before-prepare"),
            BugArg::CommitBeforeDecision => cmd.push_str(" --bug commit-before-decision"),
            BugArg::AbortWhenUncertain => cmd.push_str(" --bug abort-when-uncertain"),
        }
        cmd
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn run(a: TwoPcArgs) -> Result<ExitCode> {
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if a.trace.is_some() && (a.seeds != 1 || a.mix == MixArg::All) {
        bail!("--trace writes one run: give it --seeds 1 and one --mix");
    }
    if let Some(path) = &a.trace {
        std::fs::File::create(path)
            .with_context(|| format!("cannot write trace file {}", path.display()))?;
    }
    let presumed_abort = a.presumption == Presumption::Abort;
    let config = a.config(presumed_abort);
    let mut failed = false;
    println!(
        "synod sim twopc: coordinator n0, participants n1..n{}, {} presumption, {} transactions per run ({}% with a NO vote), faults for 3 s, then heal",
        a.participants,
        if presumed_abort { "presumed-abort" } else { "2P (no)" },
        a.txns,
        a.abort_probability * 100.0
    );
    println!(
        "checked after every event: atomicity, commit validity; after healing: every transaction ends\n"
    );
    println!(
        "{:<13} {:>6} {:>6} {:>8} {:>9} {:>8} {:>9} {:>10} {:>10} {:>10} {:>11}",
        "faults",
        "seeds",
        "failed",
        "txns",
        "committed",
        "aborted",
        "msgs/txn",
        "unc. mean",
        "unc. p99",
        "unc. max",
        "end after"
    );
    let opts = SwarmOptions::with_threads(a.threads);
    for mix in a.mixes() {
        let reports: Mutex<Vec<RunReport>> = Mutex::new(Vec::new());
        let scenario = |seed: u64| -> Result<(), String> {
            let trace = a.trace.clone();
            let setup = |sim: &mut synod_sim::Sim<synod_protocols::twopc::TwoPcNode>| match &trace {
                Some(path) => sim
                    .trace_to_file(path)
                    .map_err(|e| format!("cannot write trace file {}: {e}", path.display())),
                None => Ok(()),
            };
            let report = run_scenario_with(seed, mix, &config, a.txns, a.abort_probability, setup)?;
            if let Ok(mut r) = reports.lock() {
                r.push(report);
            }
            Ok(())
        };
        let swarm = synod_sim::swarm(
            a.first_seed..a.first_seed.saturating_add(a.seeds),
            &opts,
            scenario,
            |seed| a.replay(mix, seed),
        );
        failed |= !swarm.failures.is_empty();
        let reports = reports.into_inner().unwrap_or_default();
        let (begun, committed, aborted, messages) =
            reports.iter().fold((0, 0, 0, 0), |(b, c, ab, m), r| {
                (b + r.begun, c + r.committed, ab + r.aborted, m + r.messages)
            });
        let mut blocked: Vec<Duration> = reports.iter().flat_map(|r| r.blocked.clone()).collect();
        blocked.sort();
        let mean = if blocked.is_empty() {
            Duration::ZERO
        } else {
            blocked.iter().sum::<Duration>() / blocked.len() as u32
        };
        let recovery = reports.iter().map(|r| r.recovery).max().unwrap_or_default();
        println!(
            "{:<13} {:>6} {:>6} {:>8} {:>9} {:>8} {:>9.1} {:>8}ms {:>8}ms {:>8}ms {:>9}ms",
            mix.name(),
            swarm.runs,
            swarm.failures.len(),
            begun,
            committed,
            aborted,
            messages as f64 / begun.max(1) as f64,
            millis(mean),
            millis(percentile(&blocked, 0.99)),
            millis(blocked.last().copied().unwrap_or_default()),
            millis(recovery),
        );
    }
    if let Some(path) = &a.trace {
        println!("trace: {}", path.display());
    }
    println!(
        "(msgs/txn counts every message, client requests and retries included; \"unc.\" is how long a participant stayed uncertain after voting YES; \"end after\" is the longest time from healing until every transaction ended)"
    );

    println!("\nthe blocking case: every participant voted YES, then the coordinator crashed");
    match blocking_demo(a.first_seed, &config, a.blocked_for) {
        Ok(r) => {
            println!(
                "  coordinator down for {}: {} of {} participants uncertain, {} decided while it was down",
                millis(r.down_for) + "ms",
                r.uncertain,
                a.participants,
                r.decided_while_down
            );
            println!(
                "  cooperative termination: {} messages while blocked (inquiries, help requests, answers), {} answers \"uncertain too\": nobody can decide",
                r.help_requests, r.uncertain_answers
            );
            println!(
                "  coordinator restarted: outcome {:?} everywhere, {}ms later",
                r.outcome.unwrap_or(synod_protocols::twopc::Decision::Abort),
                millis(r.recovery)
            );
            if r.decided_while_down > 0 {
                failed = true;
            }
        }
        Err(e) => {
            println!("  FAILED: {e}");
            failed = true;
        }
    }

    println!("\ncrash-point sweep: crash each node after each event of one transaction, restart it, check the outcome");
    for refuse in [false, true] {
        let mut runs = 0;
        let mut sweep_failed = None;
        for seed in a.first_seed..a.first_seed + 3 {
            match crash_point_sweep(seed, &config, refuse) {
                Ok(s) => runs += s.runs,
                Err(e) => {
                    sweep_failed = Some(format!("seed {seed}: {e}"));
                    break;
                }
            }
        }
        let what = if refuse {
            "with a NO vote"
        } else {
            "all vote YES"
        };
        match sweep_failed {
            None => println!("  {what}: {runs} crash points, all atomic and ended"),
            Some(e) => {
                println!("  {what}: FAILED {e}");
                failed = true;
            }
        }
    }

    println!(
        "\ncosts per transaction over {} participants, fault-free (measured / textbook, Mohan et al. 1986 §2-3)",
        a.participants
    );
    println!(
        "{:<16} {:<9} {:>14} {:>14} {:>14}",
        "variant", "outcome", "messages", "log writes", "forced writes"
    );
    for pa in [false, true] {
        let cfg = a.config(pa);
        match measure_costs(a.first_seed, &cfg, 100) {
            Ok(report) => {
                for (row, commit) in [(report.commit, true), (report.abort, false)] {
                    let (m, w, f) = textbook_costs(u64::from(a.participants), pa, commit);
                    println!(
                        "{:<16} {:<9} {:>8.2} / {:<3} {:>8.2} / {:<3} {:>8.2} / {:<3}",
                        if pa { "presumed abort" } else { "2P" },
                        if commit { "commit" } else { "abort" },
                        row.messages,
                        m,
                        row.log_writes,
                        w,
                        row.forced_writes,
                        f
                    );
                }
            }
            Err(e) => {
                println!("  FAILED: {e}");
                failed = true;
            }
        }
    }
    println!("(an abort here is one participant voting NO; messages exclude the client's)");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
