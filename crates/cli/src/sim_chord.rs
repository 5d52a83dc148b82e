//! `synod sim chord`: the Chord paper's experiments, each as a table with the paper's
//! figures beside ours.

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::time::Duration;
use synod_protocols::chord::harness::{
    churn, load, path_length_actor, path_length_model, simultaneous_failures,
};

#[derive(Debug, Args)]
pub(crate) struct ChordArgs {
    /// Which experiments to run: all, or a comma-separated list of path, load, failures,
    /// churn.
    #[arg(long, default_value = "all", value_parser = experiments)]
    experiments: Experiments,
    /// Path length: largest N as a power of two (N = 2^3 .. 2^this).
    #[arg(long, default_value = "14", value_parser = clap::value_parser!(u32).range(3..=20))]
    max_log_n: u32,
    /// Path length: lookups per node (the paper uses 100·N keys).
    #[arg(long, default_value = "100", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    lookups_per_node: u64,
    /// Path length: also run the real actor in the simulator up to N = 2^this (0: never).
    #[arg(long, default_value = "8", value_parser = clap::value_parser!(u32).range(0..=12))]
    actor_max_log_n: u32,
    /// Load: number of nodes.
    #[arg(long, default_value = "10000", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    load_nodes: u32,
    /// Load without virtual nodes: number of keys.
    #[arg(long, default_value = "500000", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    load_keys: u64,
    /// Load with virtual nodes: number of keys.
    #[arg(long, default_value = "1000000", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    vnode_keys: u64,
    /// Failures: number of nodes.
    #[arg(long, default_value = "1000", value_parser = clap::value_parser!(u32).range(2..=4096))]
    failure_nodes: u32,
    /// Failures: successor list length r.
    #[arg(long, default_value = "20", value_parser = clap::value_parser!(u64).range(1..=64))]
    successors: u64,
    /// Failures: the fractions of nodes that fail at once, comma-separated.
    #[arg(long, default_value = "0,0.1,0.3,0.5", value_parser = fractions)]
    fractions: Fractions,
    /// Failures: lookups after each failure.
    #[arg(long, default_value = "2000", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    failure_lookups: u64,
    /// Churn: nodes on the ring before churn starts.
    #[arg(long, default_value = "500", value_parser = clap::value_parser!(u32).range(4..=2048))]
    churn_nodes: u32,
    /// Churn: join rates (= failure rates) per second, comma-separated.
    #[arg(long, default_value = "0.05,0.1,0.2,0.4", value_parser = rates)]
    churn_rates: Fractions,
    /// Churn: lookups per rate (one per second of simulated time).
    #[arg(long, default_value = "2000", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    churn_lookups: u64,
    /// Churn: mean stabilize period.
    #[arg(long, default_value = "30s", value_parser = crate::args::duration)]
    stabilize: Duration,
    /// Seed: the same seed prints the same tables.
    #[arg(long, default_value = "1")]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Experiment {
    Path,
    Load,
    Failures,
    Churn,
}

/// A comma-separated list of experiments.
#[derive(Debug, Clone)]
pub(crate) struct Experiments(Vec<Experiment>);

/// A comma-separated list of numbers.
#[derive(Debug, Clone)]
pub(crate) struct Fractions(Vec<f64>);

fn experiments(s: &str) -> Result<Experiments, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        match part {
            "all" => out.extend([
                Experiment::Path,
                Experiment::Load,
                Experiment::Failures,
                Experiment::Churn,
            ]),
            "path" => out.push(Experiment::Path),
            "load" => out.push(Experiment::Load),
            "failures" => out.push(Experiment::Failures),
            "churn" => out.push(Experiment::Churn),
            other => {
                return Err(format!(
                    "unknown experiment `{other}`: use all, path, load, failures or churn"
                ))
            }
        }
    }
    Ok(Experiments(out))
}

fn number_list(s: &str, what: &str, max: f64) -> Result<Fractions, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let v: f64 = part
            .parse()
            .map_err(|_| format!("`{part}` is not a number: expected {what}, like 0.1,0.3"))?;
        if !(0.0..=max).contains(&v) {
            return Err(format!("{what} `{part}` must be between 0 and {max}"));
        }
        out.push(v);
    }
    if out.is_empty() {
        return Err(format!("expected at least one {what}"));
    }
    Ok(Fractions(out))
}

fn fractions(s: &str) -> Result<Fractions, String> {
    number_list(s, "fraction", 0.9)
}

fn rates(s: &str) -> Result<Fractions, String> {
    let list = number_list(s, "rate per second", 100.0)?;
    if list.0.iter().any(|&r| r <= 0.0) {
        return Err("churn rates must be positive".into());
    }
    Ok(list)
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_message(what.to_string());
    b
}

pub(crate) fn run(a: ChordArgs) -> Result<ExitCode> {
    if a.successors as u32 >= a.failure_nodes {
        bail!("--successors must be smaller than --failure-nodes");
    }
    println!("synod sim chord: the experiments of Stoica et al. (SIGCOMM 2001; IEEE/ACM ToN 2003), seed {}", a.seed);
    let mut ok = true;
    let mut done = Vec::new();
    for &e in &a.experiments.0 {
        if done.contains(&e) {
            continue;
        }
        done.push(e);
        match e {
            Experiment::Path => path(&a)?,
            Experiment::Load => load_tables(&a),
            Experiment::Failures => ok &= failures(&a)?,
            Experiment::Churn => churn_table(&a)?,
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn path(a: &ChordArgs) -> Result<()> {
    println!("\n## Path length (SIGCOMM Fig. 10; ToN Fig. 10): {} lookups per node, random keys and origins", a.lookups_per_node);
    println!("direct model: a stable ring with exact fingers, the basic algorithm (fingers and one successor)");
    println!("actor: the real Chord actor in the simulator (successor list r = 8), after the ring converged");
    println!(
        "{:>7} {:>11} {:>8} {:>8} {:>8} {:>12} {:>12}",
        "N", "½·log2 N", "mean", "p1", "p99", "actor mean", "actor p99"
    );
    let steps = u64::from(a.max_log_n - 2);
    let b = bar(steps, "path length");
    for k in 3..=a.max_log_n {
        let n = 1usize << k;
        let s = path_length_model(n, a.lookups_per_node * n as u64, a.seed);
        let (am, ap) = if k <= a.actor_max_log_n {
            let (s, wrong) =
                path_length_actor(n as u32, a.lookups_per_node.min(20) * n as u64, a.seed)
                    .map_err(anyhow::Error::msg)?;
            if wrong > 0 {
                bail!("{wrong} actor lookups at N={n} missed the true owner");
            }
            (format!("{:.2}", s.mean), format!("{:.0}", s.p99))
        } else {
            ("-".into(), "-".into())
        };
        b.suspend(|| {
            println!(
                "{:>7} {:>11.2} {:>8.2} {:>8.0} {:>8.0} {:>12} {:>12}",
                n,
                0.5 * k as f64,
                s.mean,
                s.p1,
                s.p99,
                am,
                ap
            )
        });
        b.inc(1);
    }
    b.finish_and_clear();
    println!("path = nodes visited after the origin up to the key's predecessor; the actor's successor list shortens the last steps");
    Ok(())
}

fn load_tables(a: &ChordArgs) {
    println!(
        "\n## Load without virtual nodes (SIGCOMM Fig. 8): {} nodes, {} keys; keys per node as a multiple of the mean",
        a.load_nodes, a.load_keys
    );
    let s = load(a.load_nodes, a.load_keys, 1, a.seed);
    println!("{:>10} {:>10} {:>10} {:>10}", "", "p1", "p99", "max");
    println!(
        "{:>10} {:>10.2} {:>10.2} {:>10.2}",
        "ours", s.p1, s.p99, s.max
    );
    println!("{:>10} {:>10} {:>10.2} {:>10.2}", "paper", "-", 4.6, 9.1);

    println!(
        "\n## Load with virtual nodes (SIGCOMM Fig. 9): {} nodes, {} keys, r virtual nodes per node",
        a.load_nodes, a.vnode_keys
    );
    println!(
        "{:>4} {:>10} {:>10} {:>10} {:>14}",
        "r", "p1", "p99", "max", "paper p99"
    );
    let paper = [(1u32, "4.8"), (2, "-"), (5, "-"), (10, "-"), (20, "1.6")];
    let b = bar(paper.len() as u64, "virtual nodes");
    for (r, p99) in paper {
        let s = load(a.load_nodes, a.vnode_keys, r, a.seed);
        b.suspend(|| {
            println!(
                "{:>4} {:>10.2} {:>10.2} {:>10.2} {:>14}",
                r, s.p1, s.p99, s.max, p99
            )
        });
        b.inc(1);
    }
    b.finish_and_clear();
}

fn failures(a: &ChordArgs) -> Result<bool> {
    println!(
        "\n## Simultaneous failures (ToN Table II): {} nodes, successor lists r = {}, {} lookups right after the failure, before stabilization",
        a.failure_nodes, a.successors, a.failure_lookups
    );
    println!(
        "{:>6} {:>10} {:>13} {:>9} {:>14} {:>17}",
        "p", "mean path", "mean timeouts", "failed", "paper path", "paper timeouts"
    );
    let paper = |p: f64| match (p * 10.0).round() as u32 {
        0 => ("3.84", "0.00"),
        1 => ("4.03", "0.60"),
        3 => ("4.44", "2.02"),
        5 => ("5.09", "5.10"),
        _ => ("-", "-"),
    };
    let b = bar(a.fractions.0.len() as u64, "failures");
    let mut all_ok = true;
    for &p in &a.fractions.0 {
        let row = simultaneous_failures(
            a.failure_nodes,
            a.successors as usize,
            p,
            a.failure_lookups,
            a.seed,
        )
        .map_err(anyhow::Error::msg)?;
        let (pp, pt) = paper(p);
        all_ok &= row.failed == 0;
        b.suspend(|| {
            println!(
                "{:>6.2} {:>10.2} {:>13.2} {:>9} {:>14} {:>17}",
                p, row.mean_path, row.mean_timeouts, row.failed, pp, pt
            )
        });
        for (why, count) in &row.failure_reasons {
            b.suspend(|| println!("         {count} × {why}"));
        }
        b.inc(1);
    }
    b.finish_and_clear();
    if all_ok {
        println!("every lookup reached the key's live successor");
    } else {
        println!("FAILED: some lookups did not reach the key's live successor");
    }
    Ok(all_ok)
}

fn churn_table(a: &ChordArgs) -> Result<()> {
    println!(
        "\n## Churn (ToN Table III): {} nodes, joins and failures each at rate R per second, stabilize every {:?} on average, one lookup per second, {} lookups per rate",
        a.churn_nodes, a.stabilize, a.churn_lookups
    );
    println!(
        "{:>6} {:>8} {:>8} {:>16} {:>10} {:>13} {:>15}",
        "R", "joins", "fails", "failed / 10^4", "mean path", "mean timeouts", "lost w/ origin"
    );
    let b = bar(a.churn_rates.0.len() as u64, "churn");
    for &r in &a.churn_rates.0 {
        let row = churn(a.churn_nodes, r, a.churn_lookups, a.stabilize, a.seed)
            .map_err(anyhow::Error::msg)?;
        let per_10k = row.failed as f64 * 10_000.0 / row.lookups.max(1) as f64;
        b.suspend(|| {
            println!(
                "{:>6.2} {:>8} {:>8} {:>16.1} {:>10.2} {:>13.2} {:>15}",
                r,
                row.joins,
                row.failures,
                per_10k,
                row.mean_path,
                row.mean_timeouts,
                row.lost_with_origin
            )
        });
        for (why, count) in &row.failure_reasons {
            b.suspend(|| println!("         {count} × {why}"));
        }
        b.inc(1);
    }
    b.finish_and_clear();
    println!("paper (ToN Table III): failed lookups rise with R to about 16 per 10,000 at R = 0.40 with 30 s stabilization");
    Ok(())
}
