//! `synod sim dynamo`: the Dynamo-style store over many seeds per fault mix, checking that
//! no acknowledged write is lost, that replicas converge after healing, and (without
//! faults) that R + W > N reads see the latest acknowledged write; one row per mix with
//! convergence time, siblings and handoff volume.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;
use synod_protocols::dynamo::harness::{run, FaultMix, Outcome, Scenario};
use synod_protocols::dynamo::{BucketProps, Variant};
use synod_sim::SwarmOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mix {
    /// Every mix below, one row each.
    Every,
    /// No faults (also checks that R + W > N reads see the latest write).
    None,
    /// Network partitions.
    Partitions,
    /// Crashes and restarts, at most two nodes down.
    Crashes,
    /// Nodes leave and rejoin the ring.
    Churn,
    /// Partitions, crashes, pauses, clogged links and churn together.
    All,
}

#[derive(Debug, Args)]
pub(crate) struct DynamoArgs {
    /// Seeds per fault mix, starting at --first-seed.
    #[arg(long, default_value = "50")]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value = "0")]
    first_seed: u64,
    /// Which fault mix.
    #[arg(long, value_enum, default_value = "every")]
    faults: Mix,
    /// Simulated time per seed during which clients run and faults happen.
    #[arg(long, default_value = "3s", value_parser = crate::args::duration)]
    duration: Duration,
    /// Replicas per key (N) of the main bucket.
    #[arg(long, default_value = "3", value_parser = clap::value_parser!(u8).range(1..=5))]
    n: u8,
    /// Read quorum (R) of the main bucket.
    #[arg(long, default_value = "2", value_parser = clap::value_parser!(u8).range(1..=5))]
    r: u8,
    /// Write quorum (W) of the main bucket.
    #[arg(long, default_value = "2", value_parser = clap::value_parser!(u8).range(1..=5))]
    w: u8,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Run the broken last-write-wins coordinator, to watch check (a) catch lost writes.
    #[arg(long, conflicts_with_all = ["reuse_dots", "reap_without_quorum"])]
    lww: bool,
    /// Run the broken variant that keeps its actor id after reaping a key (Riak's KV679),
    /// to watch check (d) catch a dot given out twice.
    #[arg(long, conflicts_with = "reap_without_quorum")]
    reuse_dots: bool,
    /// Run the broken variant that reaps a tombstone without asking every node, to watch
    /// check (d) catch a superseded value coming back.
    #[arg(long)]
    reap_without_quorum: bool,
    /// How long a tombstone every node holds waits before it is reaped (default: longer
    /// than the mix's longest message delay: 300ms, or 2s for `all`).
    #[arg(long, value_parser = crate::args::duration)]
    tombstone_delay: Option<Duration>,
}

fn mixes(m: Mix) -> Vec<FaultMix> {
    match m {
        Mix::Every => FaultMix::ALL.to_vec(),
        Mix::None => vec![FaultMix::None],
        Mix::Partitions => vec![FaultMix::Partitions],
        Mix::Crashes => vec![FaultMix::Crashes],
        Mix::Churn => vec![FaultMix::Churn],
        Mix::All => vec![FaultMix::All],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn run_cli(a: DynamoArgs) -> Result<ExitCode> {
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if a.duration.is_zero() {
        bail!("--duration must be more than zero");
    }
    if a.r > a.n || a.w > a.n {
        bail!(
            "--r and --w must not exceed --n (got n={}, r={}, w={})",
            a.n,
            a.r,
            a.w
        );
    }
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let bucket = BucketProps {
        n: a.n,
        r: a.r,
        w: a.w,
    };
    let (variant, broken) = if a.lww {
        (Variant::LastWriteWins, " --lww")
    } else if a.reuse_dots {
        (Variant::ReuseDots, " --reuse-dots")
    } else if a.reap_without_quorum {
        (Variant::ReapWithoutQuorum, " --reap-without-quorum")
    } else {
        (Variant::Correct, "")
    };
    let delay_flag = a.tombstone_delay.map_or(String::new(), |d| {
        format!(" --tombstone-delay {}ms", d.as_millis())
    });
    println!(
        "synod sim dynamo: 5 nodes, 4 clients, 12 keys, N={} R={} W={}, {:?} of load per seed{}",
        a.n,
        a.r,
        a.w,
        a.duration,
        match variant {
            Variant::Correct => "",
            Variant::LastWriteWins => ", LAST-WRITE-WINS (broken)",
            Variant::ReuseDots => ", REUSING DOTS after a reap (broken)",
            Variant::ReapWithoutQuorum => ", REAPING WITHOUT ASKING EVERY NODE (broken)",
        }
    );
    println!(
        "{:<11} {:>6} {:>6} {:>7} {:>7} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5}",
        "faults",
        "seeds",
        "failed",
        "acked",
        "unacked",
        "reads",
        "stale",
        "conv ms",
        "conv max",
        "sib/key",
        "sib max",
        "hinted",
        "handoff",
        "aae obj",
        "reaped",
        "left"
    );
    let opts = SwarmOptions::with_threads(a.threads);
    let mut failed = Vec::new();
    for mix in mixes(a.faults) {
        let outcomes: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
        let duration = a.duration;
        let tombstone_delay = a.tombstone_delay;
        let scenario = |seed: u64| -> Result<(), String> {
            let mut s = Scenario::new(seed, mix);
            s.duration = duration;
            s.bucket = bucket;
            s.variant = variant;
            s.tombstone_delay = tombstone_delay;
            let o = run(&s)?;
            if let Ok(mut v) = outcomes.lock() {
                v.push(o);
            }
            Ok(())
        };
        let lww = format!("{broken}{delay_flag}");
        let (n, r, w) = (a.n, a.r, a.w);
        let report = synod_sim::swarm(
            a.first_seed..a.first_seed.saturating_add(a.seeds),
            &opts,
            scenario,
            |seed| {
                format!(
                    "synod sim dynamo --faults {} --first-seed {seed} --seeds 1 --duration {}ms --n {n} --r {r} --w {w}{lww}",
                    mix.name(),
                    duration.as_millis()
                )
            },
        );
        let o = outcomes.into_inner().unwrap_or_default();
        let count = o.len().max(1) as f64;
        let sum = |f: fn(&Outcome) -> u64| o.iter().map(f).sum::<u64>();
        let conv: Vec<f64> = o.iter().map(|x| ms(x.convergence)).collect();
        println!(
            "{:<11} {:>6} {:>6} {:>7} {:>7} {:>7} {:>6} {:>9.0} {:>9.0} {:>8.2} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>7.1} {:>5.1}",
            mix.name(),
            report.runs,
            report.failures.len(),
            sum(|x| x.acked_writes),
            sum(|x| x.unacked_writes),
            sum(|x| x.reads),
            sum(|x| x.stale_reads),
            conv.iter().sum::<f64>() / count,
            conv.iter().copied().fold(0.0, f64::max),
            sum(|x| x.siblings) as f64 / sum(|x| x.keys).max(1) as f64,
            o.iter().map(|x| x.max_siblings).max().unwrap_or(0),
            sum(|x| x.hinted_writes) as f64 / count,
            sum(|x| x.handoff_objects) as f64 / count,
            sum(|x| x.aae_objects) as f64 / count,
            sum(|x| x.tombstones_reaped) as f64 / count,
            sum(|x| x.tombstones_left) as f64 / count,
        );
        failed.extend(report.failures);
    }
    println!(
        "columns: acked/unacked writes and reads summed over seeds; stale = reads that missed a write \
         acknowledged before they began; conv = time from healing until every owner holds identical \
         siblings; sib/key = siblings per key at the end; hinted, handoff, aae obj = per seed; \
         reaped = tombstone copies removed per seed, left = tombstone copies still stored at the end"
    );
    if failed.is_empty() {
        println!(
            "dynamo: all seeds passed (no acknowledged write lost, no dot reused, no deleted \
             value back, replicas converged)"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("dynamo: {} seeds failed", failed.len());
        for f in &failed {
            println!("seed {}: {}\n  replay: {}", f.seed, f.message, f.replay);
        }
        Ok(ExitCode::FAILURE)
    }
}
