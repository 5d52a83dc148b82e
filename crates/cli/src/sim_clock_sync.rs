//! `synod sim clock-sync`: NTP-style synchronisation under skew and drift.

use crate::args;
use crate::sim::RunFlags;
use anyhow::{bail, Result};
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use synod_core::NodeId;
use synod_protocols::clocks::{ClockSync, ClockSyncConfig};
use synod_sim::{NetConfig, Sim, SimConfig};

#[derive(Debug, Args)]
pub(crate) struct ClockSyncArgs {
    /// Number of nodes; n0 is the time server.
    #[arg(long, default_value = "5", value_parser = args::nodes)]
    nodes: u32,
    /// Each node's clock starts up to this far from true time, e.g. 200ms.
    #[arg(long, default_value = "200ms", value_parser = args::duration)]
    skew: Duration,
    /// Each node's clock runs fast or slow by up to this rate error, e.g. 50ppm.
    #[arg(long, default_value = "50ppm", value_parser = args::ppm)]
    drift: f64,
    /// Time between a client's polls of the server.
    #[arg(long, default_value = "1s", value_parser = args::duration)]
    poll: Duration,
    /// How long to run, in simulated time.
    #[arg(long, default_value = "60s", value_parser = args::duration)]
    duration: Duration,
    /// Rows in the residual table.
    #[arg(long, default_value = "12")]
    rows: u32,
    /// One-way network latency floor; an exponential tail of the same mean comes on top.
    #[arg(long, default_value = "200us", value_parser = args::duration)]
    latency: Duration,
    #[command(flatten)]
    run: RunFlags,
}

fn micros(ns: i128) -> String {
    format!("{:+.1}", ns as f64 / 1000.0)
}

pub(crate) fn run(a: ClockSyncArgs) -> Result<ExitCode> {
    if a.nodes < 2 {
        bail!("clock-sync needs at least 2 nodes: one server and a client");
    }
    if a.poll.is_zero() || a.rows == 0 {
        bail!("--poll and --rows must be positive");
    }
    let mut cfg = SimConfig::new(a.run.seed, a.nodes);
    cfg.clocks.max_skew = a.skew;
    cfg.clocks.max_drift_ppm = a.drift;
    cfg.net = NetConfig {
        min_latency: a.latency,
        latency_tail: a.latency,
        ..NetConfig::lan()
    };
    let server = NodeId(0);
    let sync_cfg = ClockSyncConfig {
        poll_interval: a.poll,
        ..ClockSyncConfig::new(server)
    };
    let mut sim = Sim::new(cfg, move |_| ClockSync::new(sync_cfg.clone()));
    a.run.attach(&mut sim)?;
    sim.start();

    println!(
        "synod sim clock-sync: {} nodes (n0 serves time), skew ±{:?}, drift ±{}ppm, poll {:?}, seed {}",
        a.nodes, a.skew, a.drift, a.poll, a.run.seed
    );
    println!("residual offset of each client's corrected clock from the server's clock, in µs:");
    let clients: Vec<NodeId> = sim.node_ids().filter(|&n| n != server).collect();
    let mut header = format!("{:>10}", "time");
    for c in &clients {
        header.push_str(&format!(" {:>12}", c.to_string()));
    }
    println!("{header}");

    // Residual = corrected local clock − the server's clock, read at the same true instant.
    let residual = |sim: &Sim<ClockSync>, node: NodeId| -> Option<i128> {
        let actor = sim.actor(node)?;
        let reference = i128::from(sim.local_now(server).0);
        Some(actor.corrected_now(sim.local_now(node)) - reference)
    };
    let step = a.duration / a.rows;
    for row in 0..=a.rows {
        if row > 0 {
            sim.run_for(step)?;
        }
        let mut line = format!("{:>9.1}s", sim.now().as_secs_f64());
        for &c in &clients {
            let cell = residual(&sim, c).map_or("down".to_string(), micros);
            line.push_str(&format!(" {cell:>12}"));
        }
        println!("{line}");
    }
    a.run.finish(&mut sim)?;

    println!("\nafter {:?}: NTP's bound is |residual| ≤ δ/2, half the round-trip delay of the chosen sample", a.duration);
    println!(
        "{:>6} {:>14} {:>12} {:>12} {:>14} {:>8}",
        "node", "residual µs", "δ µs", "δ/2 µs", "drift est ppm", "within"
    );
    let mut all_within = true;
    for &c in &clients {
        let Some(actor) = sim.actor(c) else {
            continue;
        };
        let Some(sample) = actor.chosen_sample() else {
            println!("{c:>6} no sample yet");
            all_within = false;
            continue;
        };
        let r = residual(&sim, c).unwrap_or(i128::MAX);
        let delay = sample.delay().as_nanos() as i128;
        let bound = actor
            .error_bound()
            .map_or(i128::MAX, |b| b.as_nanos() as i128);
        let within = r.abs() <= bound;
        all_within &= within;
        println!(
            "{:>6} {:>14} {:>12.1} {:>12.1} {:>14.2} {:>8}",
            c.to_string(),
            micros(r),
            delay as f64 / 1000.0,
            bound as f64 / 1000.0,
            actor.frequency_ppb() as f64 / 1000.0,
            if within { "yes" } else { "NO" }
        );
    }
    println!(
        "replay: synod sim clock-sync --nodes {} --skew {:?} --drift {}ppm --poll {:?} --duration {:?} --seed {}",
        a.nodes, a.skew, a.drift, a.poll, a.duration, a.run.seed
    );
    Ok(if all_within {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
