//! `synod compare consensus`: Raft and Multi-Paxos on the same simulated KV workload and
//! networks: commit latency in round trips, messages per operation, and downtime after a
//! leader crash.

use super::progress;
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use synod_check::history::{Completion, History, Op};
use synod_core::NodeId;
use synod_protocols::paxos::harness::{install_multi_invariants, PaxosKvClients};
use synod_protocols::paxos::multi::{MultiConfig, MultiPaxos, Role as PaxosRole};
use synod_protocols::raft::harness::{cluster, KvClients};
use synod_protocols::raft::Role as RaftRole;
use synod_sim::{stream_rng, NetConfig, Sim, SimConfig};

#[derive(Debug, Args)]
pub(crate) struct ConsensusCompare {
    /// Servers in each group.
    #[arg(long, default_value = "5", value_parser = clap::value_parser!(u32).range(3..=9))]
    nodes: u32,
    /// Seeds per measurement.
    #[arg(long, default_value = "10", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    seeds: u64,
    /// The first seed; the same seeds print the same table.
    #[arg(long, default_value = "1")]
    seed: u64,
    /// One-way network latency (the round trip is twice this), e.g. 1ms.
    #[arg(long, default_value = "1ms", value_parser = crate::args::duration)]
    latency: std::time::Duration,
}

/// A network both algorithms run on.
#[derive(Clone)]
struct Network {
    name: &'static str,
    net: NetConfig,
}

fn networks(one_way: Duration) -> Vec<Network> {
    vec![
        Network {
            name: "lan",
            net: NetConfig {
                min_latency: one_way,
                latency_tail: Duration::ZERO,
                ..NetConfig::lan()
            },
        },
        Network {
            name: "lossy",
            net: NetConfig {
                min_latency: one_way,
                latency_tail: one_way,
                loss: 0.05,
                duplicate: 0.02,
                reorder: 0.05,
                reorder_window: one_way * 10,
            },
        },
    ]
}

/// What one algorithm did on one network, summed over seeds.
#[derive(Default)]
struct Load {
    write_latencies: Vec<u64>,
    completed: u64,
    delivered: u64,
}

fn record(load: &mut Load, history: &History, delivered: u64) {
    for op in history.operations() {
        if let Completion::Ok { time, .. } = op.completion {
            load.completed += 1;
            if !matches!(op.op, Op::Read { .. }) {
                load.write_latencies.push(time.saturating_sub(op.invoke));
            }
        }
    }
    load.delivered += delivered;
}

fn config(seed: u64, nodes: u32, net: &NetConfig) -> SimConfig {
    let mut cfg = SimConfig::new(seed, nodes);
    cfg.net = net.clone();
    cfg
}

fn paxos_cluster(cfg: SimConfig) -> Sim<MultiPaxos> {
    let nodes: Vec<NodeId> = (0..cfg.nodes).map(NodeId).collect();
    let mut sim = Sim::new(cfg, move |_| {
        let mut config = MultiConfig::new(nodes.clone());
        // The same timing as the Raft harness: 20 ms heartbeats, timeouts 100–250 ms.
        config.election_spread = Duration::from_millis(150);
        MultiPaxos::new(config)
    });
    install_multi_invariants(&mut sim);
    sim
}

fn raft_load(
    seed: u64,
    nodes: u32,
    net: &NetConfig,
    run: Duration,
    load: &mut Load,
) -> Result<(), String> {
    let mut sim = cluster(
        config(seed, nodes, net),
        synod_protocols::raft::harness::as_is,
    );
    sim.set_workload(KvClients::new(3, run, false));
    sim.run_for(run + Duration::from_secs(1))
        .map_err(|f| f.to_string())?;
    let delivered = sim.stats().delivered;
    let clients = sim.workload::<KvClients>().ok_or("no workload")?;
    record(load, &clients.history, delivered);
    Ok(())
}

fn paxos_load(
    seed: u64,
    nodes: u32,
    net: &NetConfig,
    run: Duration,
    load: &mut Load,
) -> Result<(), String> {
    let mut sim = paxos_cluster(config(seed, nodes, net));
    sim.set_workload(PaxosKvClients::new(3, run));
    sim.run_for(run + Duration::from_secs(1))
        .map_err(|f| f.to_string())?;
    let delivered = sim.stats().delivered;
    let clients = sim.workload::<PaxosKvClients>().ok_or("no workload")?;
    record(load, &clients.history, delivered);
    Ok(())
}

/// After a leader crash: time to a new leader and to the next completed operation.
#[derive(Default)]
struct Downtime {
    to_leader: Vec<u64>,
    to_commit: Vec<u64>,
    failed: u64,
}

/// Run a second of load, crash the leader at a random moment of the next heartbeat
/// interval, and time the recovery.
fn downtime<A: synod_core::Actor>(
    mut sim: Sim<A>,
    seed: u64,
    leader: impl Fn(&Sim<A>) -> Option<(NodeId, u64)>,
    last_ok: impl Fn(&Sim<A>) -> u64,
    out: &mut Downtime,
) {
    use rand::Rng;
    if sim.run_for(Duration::from_secs(1)).is_err() {
        out.failed += 1;
        return;
    }
    let offset = stream_rng(seed, 0xc0de).gen_range(0..20_000_000u64);
    if sim.run_for(Duration::from_nanos(offset)).is_err() {
        out.failed += 1;
        return;
    }
    let Some((old, epoch)) = leader(&sim) else {
        out.failed += 1;
        return;
    };
    sim.crash(old);
    let crashed = sim.now();
    let crashed_ns = crashed.as_nanos() as u64;
    // Replies already in flight when the leader crashed still arrive: only an operation
    // completed after the new leader took over shows the service back.
    let mut new_leader: Option<Duration> = None;
    let back = |new_leader: Option<Duration>, sim: &Sim<A>| {
        new_leader.is_some_and(|d| last_ok(sim) > crashed_ns + d.as_nanos() as u64)
    };
    while sim.now() < crashed + Duration::from_secs(5) {
        if !sim.step() {
            break;
        }
        if new_leader.is_none() && leader(&sim).is_some_and(|(n, e)| n != old && e > epoch) {
            new_leader = Some(sim.now() - crashed);
        }
        if back(new_leader, &sim) {
            break;
        }
    }
    match new_leader {
        Some(d) if back(new_leader, &sim) => {
            out.to_leader.push(d.as_nanos() as u64);
            out.to_commit.push(last_ok(&sim) - crashed_ns);
        }
        _ => out.failed += 1,
    }
}

fn raft_downtime(seed: u64, nodes: u32, net: &NetConfig, out: &mut Downtime) {
    let mut sim = cluster(
        config(seed, nodes, net),
        synod_protocols::raft::harness::as_is,
    );
    sim.set_workload(KvClients::new(3, Duration::from_secs(10), false));
    downtime(
        sim,
        seed,
        |sim| {
            sim.actors()
                .filter(|(_, r)| r.role() == RaftRole::Leader)
                .map(|(n, r)| (n, r.current_term().0))
                .max_by_key(|(_, t)| *t)
        },
        |sim| {
            sim.workload::<KvClients>()
                .map_or(0, |c| c.last_ok_at.iter().copied().max().unwrap_or(0))
        },
        out,
    );
}

fn paxos_downtime(seed: u64, nodes: u32, net: &NetConfig, out: &mut Downtime) {
    let mut sim = paxos_cluster(config(seed, nodes, net));
    sim.set_workload(PaxosKvClients::new(3, Duration::from_secs(10)));
    downtime(
        sim,
        seed,
        |sim| {
            sim.actors()
                .filter(|(_, p)| p.role() == PaxosRole::Leader)
                .map(|(n, p)| (n, p.ballot().round))
                .max_by_key(|(_, r)| *r)
        },
        |sim| {
            sim.workload::<PaxosKvClients>().map_or(0, |c| {
                c.completions.iter().map(|(t, _)| *t).max().unwrap_or(0)
            })
        },
        out,
    );
}

fn mean(v: &[u64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(ns: f64) -> f64 {
    ns / 1e6
}

pub(super) fn run(c: ConsensusCompare) -> Result<ExitCode> {
    let one_way = c.latency;
    let rtt = (one_way * 2).as_nanos() as f64;
    let run = Duration::from_secs(2);
    let nets = networks(one_way);
    let bar = progress(c.seeds * (nets.len() as u64 * 2 + 2));
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for network in &nets {
        let (mut raft, mut paxos) = (Load::default(), Load::default());
        for seed in c.seed..c.seed + c.seeds {
            bar.set_message(format!("{} seed {seed}", network.name));
            if let Err(e) = raft_load(seed, c.nodes, &network.net, run, &mut raft) {
                failures.push(format!("raft {} seed {seed}: {e}", network.name));
            }
            bar.inc(1);
            if let Err(e) = paxos_load(seed, c.nodes, &network.net, run, &mut paxos) {
                failures.push(format!("multi-paxos {} seed {seed}: {e}", network.name));
            }
            bar.inc(1);
        }
        rows.push((network.name, raft, paxos));
    }
    let lan = &nets[0].net;
    let (mut raft_down, mut paxos_down) = (Downtime::default(), Downtime::default());
    for seed in c.seed..c.seed + c.seeds {
        bar.set_message(format!("leader crash seed {seed}"));
        raft_downtime(seed, c.nodes, lan, &mut raft_down);
        bar.inc(1);
        paxos_downtime(seed, c.nodes, lan, &mut paxos_down);
        bar.inc(1);
    }
    bar.finish_and_clear();

    println!(
        "Raft vs Multi-Paxos: {} nodes, 3 closed-loop KV clients (0–5 ms think), {} s of load per seed, {} seeds;",
        c.nodes,
        run.as_secs(),
        c.seeds
    );
    println!(
        "one-way latency {:?} (round trip {:.1} ms), fsync 0.2–0.5 ms; both: 20 ms heartbeats, election timeouts 100–250 ms.",
        one_way,
        ms(rtt)
    );
    println!("Writes: Raft appends and replicates; Multi-Paxos runs phase 2 only (stable leader).");
    println!(
        "Reads: Raft uses ReadIndex (a heartbeat round); Multi-Paxos puts reads in the log.\n"
    );
    println!(
        "{:<7} {:<12} {:>8} {:>14} {:>14} {:>14} {:>10}",
        "network",
        "algorithm",
        "ops ok",
        "write mean ms",
        "write p50 RTT",
        "write p99 RTT",
        "msgs/op"
    );
    for (name, mut raft, mut paxos) in rows {
        for (algo, load) in [("raft", &mut raft), ("multi-paxos", &mut paxos)] {
            let m = mean(&load.write_latencies);
            let p50 = percentile(&mut load.write_latencies, 0.5) as f64;
            let p99 = percentile(&mut load.write_latencies, 0.99) as f64;
            let per_op = if load.completed == 0 {
                0.0
            } else {
                load.delivered as f64 / load.completed as f64
            };
            println!(
                "{:<7} {:<12} {:>8} {:>14.2} {:>14.2} {:>14.2} {:>10.1}",
                name,
                algo,
                load.completed,
                ms(m),
                p50 / rtt,
                p99 / rtt,
                per_op
            );
        }
    }
    println!("\nA write's floor is 2 round trips (client→leader→followers→leader→client) plus two fsyncs;");
    println!("msgs/op counts every delivered message (client requests and replies, heartbeats) per completed operation.\n");
    println!(
        "{:<12} {:>8} {:>22} {:>22} {:>8}",
        "leader crash", "runs", "to new leader mean ms", "to next commit mean ms", "no recovery"
    );
    for (algo, d) in [("raft", &mut raft_down), ("multi-paxos", &mut paxos_down)] {
        println!(
            "{:<12} {:>8} {:>22.1} {:>22.1} {:>8}",
            algo,
            d.to_leader.len(),
            ms(mean(&d.to_leader)),
            ms(mean(&d.to_commit)),
            d.failed
        );
    }
    println!("(crash at a random point of a heartbeat interval after 1 s of load, lan network)");
    if !failures.is_empty() {
        println!("\ninvariant or linearizability failures:");
        for f in &failures {
            println!("  {f}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
