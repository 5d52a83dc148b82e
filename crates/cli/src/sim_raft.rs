//! `synod sim raft` (the swarm of fault mixes) and `synod sim raft-election` (Figure 16).

use crate::bench::median;
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::time::Duration;
use synod_protocols::raft::harness::{
    as_is, election_downtime, lease_scenario, liveness_scenario, membership_scenario,
    swarm_scenario, ElectionSetup,
};
use synod_sim::SwarmOptions;

/// Which simulation scenarios a seed runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every scenario below, one after another, on each seed.
    All,
    /// Random fault mixes with 3 or 5 servers and 4 clients.
    Swarm,
    /// Single-server membership changes cycling through a 4-server group under faults.
    Membership,
    /// Leader-lease reads under faults and clock drift.
    Lease,
    /// Chaos, then healing: a leader and every client's progress within 3 s.
    Liveness,
}

#[derive(Debug, Args)]
pub(crate) struct RaftArgs {
    /// Number of seeds to run, starting at --first-seed.
    #[arg(long, default_value = "1000")]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value = "0")]
    first_seed: u64,
    /// Which scenarios each seed runs.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

fn run_seed(scenario: Scenario, seed: u64) -> Result<(), String> {
    match scenario {
        Scenario::All => {
            swarm_scenario(seed, as_is)?;
            membership_scenario(seed, as_is)?;
            lease_scenario(seed, as_is)?;
            liveness_scenario(seed)
        }
        Scenario::Swarm => swarm_scenario(seed, as_is),
        Scenario::Membership => membership_scenario(seed, as_is),
        Scenario::Lease => lease_scenario(seed, as_is),
        Scenario::Liveness => liveness_scenario(seed),
    }
}

/// Every seed checks Election Safety, Log Matching, Leader Completeness and State
/// Machine Safety after every event, and the client history for linearizability.
pub(crate) fn run(a: RaftArgs) -> Result<ExitCode> {
    let opts = SwarmOptions::with_threads(a.threads);
    let scenario = a.scenario;
    let name = scenario
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let report = synod_sim::swarm(
        a.first_seed..a.first_seed.saturating_add(a.seeds),
        &opts,
        |seed| run_seed(scenario, seed),
        |seed| format!("synod sim raft --scenario {name} --first-seed {seed} --seeds 1"),
    );
    println!(
        "raft ({name}): {} seeds in {:.1} s, {} failed",
        report.runs,
        started.elapsed().as_secs_f64(),
        report.failures.len()
    );
    if !report.failures.is_empty() {
        print!("{}", report.describe());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct ElectionArgs {
    /// Runs (leader crashes) per timeout range.
    #[arg(long, default_value = "1000")]
    runs: u64,
    /// Timeout ranges in ms as MIN-MAX, comma separated.
    #[arg(long, default_value = "150-150,150-151,150-155,150-175,150-200,150-300", value_parser = parse_ranges)]
    ranges: Ranges,
    /// Use pre-vote (thesis §9.6); Figure 16 of the paper was measured without it.
    #[arg(long)]
    pre_vote: bool,
    /// One-way network latency as FLOOR+TAIL in ms: a fixed floor plus an exponential
    /// tail with that mean. The default gives a broadcast time of about 15 ms.
    #[arg(long, default_value = "6+1.5", value_parser = parse_latency)]
    latency: (Duration, Duration),
    /// A run whose election takes longer than this many seconds counts as this long.
    #[arg(long, default_value = "30")]
    give_up_secs: u64,
}

#[derive(Clone, Debug)]
struct Ranges(Vec<(u64, u64)>);

fn parse_ranges(s: &str) -> Result<Ranges, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let (lo, hi) = part
            .trim()
            .split_once('-')
            .ok_or_else(|| format!("'{part}' is not MIN-MAX (e.g. 150-300)"))?;
        let lo: u64 = lo
            .trim()
            .parse()
            .map_err(|_| format!("'{lo}' is not a number of milliseconds"))?;
        let hi: u64 = hi
            .trim()
            .parse()
            .map_err(|_| format!("'{hi}' is not a number of milliseconds"))?;
        if lo == 0 || hi < lo {
            return Err(format!("'{part}': need 0 < MIN <= MAX"));
        }
        out.push((lo, hi));
    }
    Ok(Ranges(out))
}

fn parse_latency(s: &str) -> Result<(Duration, Duration), String> {
    let (floor, tail) = s
        .split_once('+')
        .ok_or_else(|| format!("'{s}' is not FLOOR+TAIL in ms (e.g. 6+1.5)"))?;
    let ms = |v: &str| -> Result<Duration, String> {
        let x: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("'{v}' is not a number of milliseconds"))?;
        if !(0.0..=10_000.0).contains(&x) {
            return Err(format!("'{v}' ms is out of range (0 to 10000)"));
        }
        Ok(Duration::from_secs_f64(x / 1e3))
    };
    Ok((ms(floor)?, ms(tail)?))
}

/// What Figure 16 (top) of the paper reports for a range, where it gives a number.
fn paper_says(lo: u64, hi: u64) -> &'static str {
    match (lo, hi) {
        (150, 150) => "some elections > 10 s (split votes)",
        (150, 155) => "median 287 ms",
        (150, 200) => "worst 513 ms",
        (150, 300) => "(top curve, fastest)",
        _ => "",
    }
}

/// Figure 16: leader-election downtime after a crash, five servers, ~15 ms broadcast.
pub(crate) fn election(a: ElectionArgs) -> Result<ExitCode> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let give_up = Duration::from_secs(a.give_up_secs.max(1));
    let total = a.runs * a.ranges.0.len() as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} elections {elapsed} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    println!(
        "Leader-election downtime after a leader crash (Raft paper, Figure 16): 5 servers,\n\
         one-way latency {:?} + exp(mean {:?}), heartbeats at min/2, crash at a random\n\
         point of the heartbeat interval, pre-vote {}, {} runs per range.\n",
        a.latency.0,
        a.latency.1,
        if a.pre_vote { "on" } else { "off" },
        a.runs
    );
    println!(
        "{:>9} | {:>7} {:>7} {:>7} {:>7} {:>8} | {:>6} | paper",
        "timeout", "min", "p50", "p90", "p99", "max", ">10 s"
    );
    for &(lo, hi) in &a.ranges.0 {
        let setup = ElectionSetup {
            pre_vote: a.pre_vote,
            latency_floor: a.latency.0,
            latency_tail: a.latency.1,
            ..ElectionSetup::figure_16(lo, hi)
        };
        let mut times: Vec<Duration> = Vec::with_capacity(a.runs as usize);
        for seed in 0..a.runs {
            times.push(election_downtime(seed, setup, give_up).unwrap_or(give_up));
            bar.inc(1);
        }
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
        let slow = times
            .iter()
            .filter(|&&t| t > Duration::from_secs(10))
            .count();
        bar.suspend(|| {
            println!(
                "{:>9} | {:>7} {:>7} {:>7} {:>7} {:>8} | {:>6} | {}",
                format!("{lo}-{hi}"),
                ms(at(0.0)),
                ms(at(0.5)),
                ms(at(0.9)),
                ms(at(0.99)),
                ms(at(1.0)),
                slow,
                paper_says(lo, hi)
            )
        });
    }
    bar.finish_and_clear();
    println!(
        "\n(all times in ms of virtual time; runs that never elected count as {} s)",
        give_up.as_secs()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Servers in the group.
    #[arg(long, default_value = "3", value_parser = crate::args::nodes)]
    nodes: u32,
    /// Client counts to measure, comma separated.
    #[arg(long, default_value = "1,4,16,64", value_delimiter = ',')]
    clients: Vec<u64>,
    /// Virtual time per run.
    #[arg(long, default_value = "10s", value_parser = crate::args::duration)]
    run: Duration,
    /// Runs (seeds) per client count; the table shows medians.
    #[arg(long, default_value = "5")]
    runs: u64,
}

/// Simulated commit throughput: the protocol's rate in virtual time (what a network
/// with this model would see) and the simulator's speed at producing it.
pub(crate) fn bench(a: BenchArgs) -> Result<ExitCode> {
    if a.runs == 0 || a.clients.contains(&0) {
        bail!("--runs and every --clients count must be at least 1");
    }
    println!(
        "Raft KV in the simulator: {} servers, LAN network model, no faults, {:?} virtual per run, median of {} runs",
        a.nodes, a.run, a.runs
    );
    println!(
        "{:>7} | {:>13} {:>13} | {:>9} {:>9} | {:>16}",
        "clients", "ops/s virtual", "writes/s virt", "p50 ms", "p99 ms", "sim ops/s (wall)"
    );
    let bar = ProgressBar::new(a.runs * a.clients.len() as u64);
    for &clients in &a.clients {
        let mut rates = Vec::new();
        let mut write_rates = Vec::new();
        let mut wall_rates = Vec::new();
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        for seed in 0..a.runs {
            let started = std::time::Instant::now();
            let t =
                synod_protocols::raft::harness::commit_throughput(seed, a.nodes, clients, a.run);
            let wall = started.elapsed().as_secs_f64();
            let virt = a.run.as_secs_f64();
            rates.push(t.completed as f64 / virt);
            write_rates.push(t.writes as f64 / virt);
            wall_rates.push(t.completed as f64 / wall.max(1e-9));
            let q = |p: f64| {
                t.latencies
                    .get(((t.latencies.len().saturating_sub(1)) as f64 * p) as usize)
                    .map_or(0.0, |&ns| ns as f64 / 1e6)
            };
            p50s.push(q(0.5));
            p99s.push(q(0.99));
            bar.inc(1);
        }
        bar.suspend(|| {
            println!(
                "{:>7} | {:>13.0} {:>13.0} | {:>9.2} {:>9.2} | {:>16.0}",
                clients,
                median(&mut rates),
                median(&mut write_rates),
                median(&mut p50s),
                median(&mut p99s),
                median(&mut wall_rates)
            )
        });
    }
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}
