//! `synod sim paxos`, `synod sim multi-paxos` and `synod sim byzantine`.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::sync::Mutex;
use synod_protocols::bft::check::{check, om_expected_per_round, Algorithm, CheckReport};
use synod_protocols::paxos::harness::{run_multi, run_single, MultiScenario, SingleScenario};
use synod_protocols::paxos::Bug;
use synod_sim::SwarmOptions;

/// A deliberately broken variant to run, to watch the checkers catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BugFlag {
    /// The correct algorithm.
    None,
    /// Acceptors reply before their promise or acceptance is durable.
    ReplyBeforePersist,
    /// Proposers ignore the values reported in promises.
    IgnoreAccepted,
}

impl BugFlag {
    fn bug(self) -> Option<Bug> {
        match self {
            BugFlag::None => None,
            BugFlag::ReplyBeforePersist => Some(Bug::ReplyBeforePersist),
            BugFlag::IgnoreAccepted => Some(Bug::IgnoreAcceptedValues),
        }
    }

    fn flag(self) -> String {
        match self {
            BugFlag::None => String::new(),
            other => format!(
                " --bug {}",
                other
                    .to_possible_value()
                    .map_or("none".into(), |v| v.get_name().to_string())
            ),
        }
    }
}

/// Flags of the Paxos swarms.
#[derive(Debug, Args)]
pub(crate) struct PaxosSwarmFlags {
    /// Number of seeds to run, starting at --first-seed.
    #[arg(long, default_value = "200", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value = "0")]
    first_seed: u64,
    /// Worker threads (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// Run a deliberately broken variant.
    #[arg(long, value_enum, default_value = "none")]
    bug: BugFlag,
    /// Crash storms (a crash every ~15 ms) on a slow disk and a lossy network, instead of
    /// the per-seed swarm fault mix.
    #[arg(long)]
    crash_storm: bool,
}

impl PaxosSwarmFlags {
    fn options(&self) -> SwarmOptions {
        SwarmOptions {
            threads: self
                .threads
                .map_or_else(|| SwarmOptions::default().threads, |t| t as usize),
            ..SwarmOptions::default()
        }
    }

    fn replay_flags(&self) -> String {
        let storm = if self.crash_storm {
            " --crash-storm"
        } else {
            ""
        };
        format!("{}{storm}", self.bug.flag())
    }
}

#[derive(Debug, Args)]
pub(crate) struct PaxosArgs {
    #[command(flatten)]
    swarm: PaxosSwarmFlags,
}

#[derive(Debug, Args)]
pub(crate) struct MultiPaxosArgs {
    #[command(flatten)]
    swarm: PaxosSwarmFlags,
    /// No faults: a LAN with no loss, no crashes, no partitions.
    #[arg(long, conflicts_with = "crash_storm")]
    no_faults: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ByzantineArgs {
    /// Check every n from 2 up to this.
    #[arg(long, default_value = "7", value_parser = clap::value_parser!(u32).range(2..=8))]
    max_n: u32,
    /// Check every m from 0 up to this.
    #[arg(long, default_value = "2", value_parser = clap::value_parser!(u32).range(0..=3))]
    max_m: u32,
    /// Which algorithm to check.
    #[arg(long, value_enum, default_value = "both")]
    algorithm: AlgorithmFlag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AlgorithmFlag {
    /// Oral messages, OM(m).
    Om,
    /// Signed messages, SM(m).
    Sm,
    /// Both.
    Both,
}

fn mean(total: u64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        total as f64 / count as f64
    }
}

pub(crate) fn paxos(a: PaxosArgs) -> Result<ExitCode> {
    let f = &a.swarm;
    let totals = Mutex::new((0u64, 0u64, 0u64));
    let report = synod_sim::swarm(
        f.first_seed..f.first_seed.saturating_add(f.seeds),
        &f.options(),
        |seed| {
            let mut s = SingleScenario::new(seed);
            s.bug = f.bug.bug();
            s.slow_disk = f.crash_storm;
            s.crash_heavy = f.crash_storm;
            let out = run_single(&s)?;
            if let Ok(mut t) = totals.lock() {
                t.0 += 1;
                t.1 += out.messages;
                t.2 += out.decided_at.saturating_sub(s.faults_until).as_micros() as u64;
            }
            Ok(())
        },
        |seed| {
            format!(
                "synod sim paxos --first-seed {seed} --seeds 1{}",
                f.replay_flags()
            )
        },
    );
    let (ok, messages, decide_us) = totals.into_inner().unwrap_or_default();
    println!(
        "single-decree Paxos: {} seeds (3–5 nodes, every node proposes, {} for 2 s then healed), {} failed",
        report.runs,
        if f.crash_storm {
            "crash storms on a slow disk"
        } else {
            "swarm faults"
        },
        report.failures.len()
    );
    println!("  checked after every event: agreement, validity, integrity; liveness: every node decides after healing");
    println!(
        "  passing runs: {:.0} messages per run on average; every node, restarted ones included, had decided {:.1} ms after healing on average",
        mean(messages, ok),
        mean(decide_us, ok) / 1000.0
    );
    Ok(exit(report.failures.is_empty()))
}

pub(crate) fn multi_paxos(a: MultiPaxosArgs) -> Result<ExitCode> {
    let f = &a.swarm;
    let no_faults = a.no_faults;
    let totals = Mutex::new((0u64, 0u64, 0u64, 0u64));
    let report = synod_sim::swarm(
        f.first_seed..f.first_seed.saturating_add(f.seeds),
        &f.options(),
        |seed| {
            let mut s = MultiScenario::new(seed);
            s.bug = f.bug.bug();
            s.slow_disk = f.crash_storm;
            s.crash_heavy = f.crash_storm;
            s.faults = !no_faults;
            let out = run_multi(&s)?;
            if let Ok(mut t) = totals.lock() {
                t.0 += 1;
                t.1 += out.operations as u64;
                t.2 += out.completed as u64;
                t.3 += out.slots;
            }
            Ok(())
        },
        |seed| {
            let nf = if no_faults { " --no-faults" } else { "" };
            format!(
                "synod sim multi-paxos --first-seed {seed} --seeds 1{}{nf}",
                f.replay_flags()
            )
        },
    );
    let (ok, operations, completed, slots) = totals.into_inner().unwrap_or_default();
    println!(
        "Multi-Paxos KV: {} seeds (3 or 5 nodes, 3 clients, {}), {} failed",
        report.runs,
        if no_faults {
            "no faults"
        } else if f.crash_storm {
            "crash storms on a slow disk for 2 s, then healed"
        } else {
            "swarm faults for 2 s, then healed"
        },
        report.failures.len()
    );
    println!("  checked: per-slot agreement after every event, convergence after healing, validity, linearizability of the client history");
    println!(
        "  passing runs: {operations} operations ({completed} ok, the rest timed out with unknown outcome), {slots} slots chosen"
    );
    let _ = ok;
    Ok(exit(report.failures.is_empty()))
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn per_round(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join("+")
}

pub(crate) fn byzantine(a: ByzantineArgs) -> Result<ExitCode> {
    if a.max_m + 2 > a.max_n {
        bail!(
            "--max-m {} needs --max-n of at least {}: m traitors need m+2 generals",
            a.max_m,
            a.max_m + 2
        );
    }
    let algorithms: Vec<Algorithm> = match a.algorithm {
        AlgorithmFlag::Om => vec![Algorithm::Oral],
        AlgorithmFlag::Sm => vec![Algorithm::Signed],
        AlgorithmFlag::Both => vec![Algorithm::Oral, Algorithm::Signed],
    };
    let mut cases = Vec::new();
    for algorithm in &algorithms {
        for n in 2..=a.max_n {
            for m in 0..=a.max_m {
                if m + 2 <= n {
                    cases.push((*algorithm, n, m));
                }
            }
        }
    }
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} configurations {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut reports: Vec<CheckReport> = Vec::new();
    for (algorithm, n, m) in cases {
        bar.set_message(format!("{algorithm}({m}) n={n}"));
        reports.push(check(algorithm, n, m));
        bar.inc(1);
    }
    bar.finish_and_clear();

    println!("Byzantine generals (Lamport, Shostak, Pease 1982): commander n0, every placement of up to m traitors,");
    println!("every assignment of silent / random (3 seeds) / two-faced / colluding to them, both orders.\n");
    println!(
        "{:<6} {:>2} {:>2} {:<12} {:>6} {:>10}  {:<20} {:<20} {:>9}  result",
        "algo",
        "n",
        "m",
        "bound",
        "runs",
        "violations",
        "msgs/round (loyal)",
        "paper (n−1)…(n−r)",
        "max msgs"
    );
    let mut ok = true;
    for r in &reports {
        let bound = match r.algorithm {
            Algorithm::Oral => format!("n≥3m+1: {}", if r.proven() { "yes" } else { "no" }),
            Algorithm::Signed => format!("n≥m+2: {}", if r.proven() { "yes" } else { "no" }),
        };
        let paper = match r.algorithm {
            Algorithm::Oral => per_round(&om_expected_per_round(r.n, r.m)),
            Algorithm::Signed => "-".into(),
        };
        let counts_match = r.algorithm != Algorithm::Oral
            || r.loyal_messages_per_round == om_expected_per_round(r.n, r.m);
        let result = if !r.consistent_with_paper() || !counts_match {
            ok = false;
            "WRONG"
        } else if r.violations == 0 {
            "IC1+IC2 hold"
        } else {
            "counterexample"
        };
        println!(
            "{:<6} {:>2} {:>2} {:<12} {:>6} {:>10}  {:<20} {:<20} {:>9}  {result}",
            format!("{}({})", r.algorithm, r.m),
            r.n,
            r.m,
            bound,
            r.runs,
            r.violations,
            per_round(&r.loyal_messages_per_round),
            paper,
            r.max_messages,
        );
    }
    println!("\ncounterexamples (first found), where the paper's bound does not hold:");
    let mut any = false;
    for r in &reports {
        if let Some((scenario, why)) = &r.counterexample {
            any = true;
            println!("  {}({}) {scenario}\n    → {why}", r.algorithm, r.m);
        }
        if r.algorithm == Algorithm::Oral && r.n == 3 * r.m && r.counterexample.is_none() {
            ok = false;
            println!(
                "  OM({}) n={}: NO counterexample found for n = 3m",
                r.m, r.n
            );
        }
    }
    if !any {
        println!("  none");
    }
    let rejected: u64 = reports.iter().map(|r| r.rejected).sum();
    if rejected > 0 {
        println!("\nSM dropped {rejected} tampered or misrouted signed messages across all runs (ed25519 verification).");
    }
    Ok(exit(ok))
}
