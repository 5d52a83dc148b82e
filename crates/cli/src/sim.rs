//! `synod sim <protocol>`: run a protocol in the deterministic simulator.

use crate::args;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use rand::seq::SliceRandom;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use synod_protocols::clocks::demo::{CausalityDemo, EventKind, HappensBefore, StampedEvent};
use synod_protocols::clocks::Causality;
use synod_sim::fixtures::{no_peer_heard_undurable_value, DurableCounter};
use synod_sim::{stream_rng, FaultConfig, NetConfig, Sim, SimConfig, SwarmOptions};

#[derive(Debug, Args)]
pub(crate) struct SimCommand {
    #[command(subcommand)]
    protocol: Protocol,
}

#[derive(Debug, Subcommand)]
enum Protocol {
    /// Lamport and vector clocks on a message-passing run: prints sampled pairs of events
    /// with both timestamps and whether they are ordered or concurrent, then checks both
    /// clocks against the true happens-before relation over every pair.
    Clocks(ClocksArgs),
    /// NTP-style clock synchronisation (Cristian/NTP client-server) under clock skew and
    /// drift: prints each node's residual offset from true time as the run goes on.
    ClockSync(crate::sim_clock_sync::ClockSyncArgs),
    /// The Chord DHT: the paper's path-length, load, simultaneous-failure and churn
    /// experiments, each with the paper's figures beside ours.
    Chord(crate::sim_chord::ChordArgs),
    /// The simulator's own group-commit promise, over many seeds with crashes: no peer
    /// ever hears a value its sender could lose in a crash.
    Durability(DurabilityArgs),
    /// SWIM membership with Lifeguard: detection time, message load, dissemination and false positives, each beside the paper's figure.
    Swim(crate::sim_swim::SwimArgs),
    /// Raft over a KV state machine under random fault mixes: the Figure 3 invariants
    /// after every event and linearizability of the client history, on many seeds.
    Raft(crate::sim_raft::RaftArgs),
    /// Raft leader-election downtime after a leader crash, per timeout range, beside
    /// Figure 16 of the paper.
    RaftElection(crate::sim_raft::ElectionArgs),
    /// Two-phase commit with presumed abort, recovery and cooperative termination: every
    /// fault mix, the blocking case, a crash-point sweep, and costs beside the textbook.
    Twopc(crate::sim_twopc::TwoPcArgs),
    /// Jepsen-style bank over multi-Raft transactions: total conserved, no partial transfer seen, per-key linearizability, on many seeds.
    Bank(crate::sim_bank::BankArgs),
    /// etcd's MVCC store and leases replicated by Raft under random faults: checks
    /// linearizability, replica agreement and gap-free watch delivery over many seeds.
    Mvcc(crate::sim_mvcc::MvccArgs),
    /// Single-decree Paxos over many seeds with faults: agreement, validity, integrity.
    Paxos(crate::sim_paxos::PaxosArgs),
    /// Multi-Paxos KV over many seeds with faults: agreement per slot, linearizability.
    MultiPaxos(crate::sim_paxos::MultiPaxosArgs),
    /// OM(m) and SM(m) Byzantine agreement: the exhaustive IC1/IC2 check.
    Byzantine(crate::sim_paxos::ByzantineArgs),
    /// The Dynamo-style store per fault mix: no lost acknowledged write, convergence after healing, R + W > N reads, with convergence time, siblings and handoff volume.
    Dynamo(crate::sim_dynamo::DynamoArgs),
    /// The MapReduce master's task state machine under worker/master crashes and loss.
    Mapreduce(crate::sim_mapreduce::MapReduceArgs),
}

/// Flags every single-run simulation takes.
#[derive(Debug, Args)]
pub(crate) struct RunFlags {
    /// Run seed: the same seed replays the same run exactly.
    #[arg(long, default_value = "1")]
    pub(crate) seed: u64,
    /// Write a JSONL trace of every send, delivery, drop, timer and fault to this file.
    #[arg(long)]
    pub(crate) trace: Option<PathBuf>,
}

impl RunFlags {
    /// Turn on the trace file, with a clear error if it cannot be created.
    pub(crate) fn attach<A: synod_core::Actor>(&self, sim: &mut Sim<A>) -> Result<()> {
        if let Some(path) = &self.trace {
            sim.trace_to_file(path)
                .with_context(|| format!("cannot write trace file {}", path.display()))?;
        }
        Ok(())
    }

    /// Flush the trace file and say where it is.
    pub(crate) fn finish<A: synod_core::Actor>(&self, sim: &mut Sim<A>) -> Result<()> {
        if let Some(path) = &self.trace {
            sim.finish_trace()
                .with_context(|| format!("writing trace file {}", path.display()))?;
            println!("trace: {} ({} events)", path.display(), sim.trace_lines());
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub(crate) struct ClocksArgs {
    /// Number of nodes.
    #[arg(long, default_value = "5", value_parser = args::nodes)]
    nodes: u32,
    /// Local or send events per node (receipts come on top).
    #[arg(long, default_value = "20")]
    events: u32,
    /// Probability that an event is a send.
    #[arg(long, default_value = "0.5", value_parser = args::probability)]
    send_probability: f64,
    /// Pairs of events to print.
    #[arg(long, default_value = "12")]
    pairs: usize,
    #[command(flatten)]
    run: RunFlags,
}

#[derive(Debug, Args)]
pub(crate) struct DurabilityArgs {
    /// Number of seeds to run, starting at --first-seed.
    #[arg(long, default_value = "200")]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value = "0")]
    first_seed: u64,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Announce with send_unsynced instead of send, to watch the checker catch the bug.
    #[arg(long)]
    unsynced: bool,
}

pub(crate) fn run(cmd: SimCommand) -> Result<ExitCode> {
    match cmd.protocol {
        Protocol::Clocks(a) => clocks(a),
        Protocol::ClockSync(a) => crate::sim_clock_sync::run(a),
        Protocol::Durability(a) => durability(a),
        Protocol::Swim(a) => crate::sim_swim::run(a),
        Protocol::Raft(a) => crate::sim_raft::run(a),
        Protocol::RaftElection(a) => crate::sim_raft::election(a),
        Protocol::Twopc(a) => crate::sim_twopc::run(a),
        Protocol::Bank(a) => crate::sim_bank::run(a),
        Protocol::Mvcc(a) => crate::sim_mvcc::run(a),
        Protocol::Chord(a) => crate::sim_chord::run(a),
        Protocol::Paxos(a) => crate::sim_paxos::paxos(a),
        Protocol::MultiPaxos(a) => crate::sim_paxos::multi_paxos(a),
        Protocol::Byzantine(a) => crate::sim_paxos::byzantine(a),
        Protocol::Dynamo(a) => crate::sim_dynamo::run_cli(a),
        Protocol::Mapreduce(a) => crate::sim_mapreduce::run_swarm(a),
    }
}

fn relation_arrow(c: Causality) -> &'static str {
    match c {
        Causality::Before => "a → b",
        Causality::After => "b → a",
        Causality::Equal => "a = b",
        Causality::Concurrent => "a ∥ b",
    }
}

fn describe(e: &StampedEvent) -> String {
    let what = match &e.kind {
        EventKind::Local => "local".to_string(),
        EventKind::Send { to } => format!("send→{to}"),
        EventKind::Receive { send } => format!("recv←{}#{}", send.node, send.seq),
    };
    format!("{}#{} {what}", e.id.node, e.id.seq)
}

fn clocks(a: ClocksArgs) -> Result<ExitCode> {
    let mut cfg = SimConfig::new(a.run.seed, a.nodes);
    cfg.net = NetConfig {
        min_latency: Duration::from_millis(1),
        latency_tail: Duration::from_millis(5),
        ..NetConfig::lan()
    };
    let (nodes, events, p) = (a.nodes, a.events, a.send_probability);
    let mut sim = Sim::new(cfg, move |me| CausalityDemo::new(me, nodes, events, p));
    a.run.attach(&mut sim)?;
    sim.run_for(Duration::from_secs(60))?;

    let all: Vec<StampedEvent> = sim
        .actors()
        .flat_map(|(_, actor)| actor.events().iter().cloned())
        .collect();
    let hb = HappensBefore::new(&all);
    println!(
        "synod sim clocks: {} nodes, seed {}, {} events per node, {} events in all ({} messages)",
        a.nodes,
        a.run.seed,
        a.events,
        all.len(),
        sim.stats().delivered
    );

    // Sample pairs from a stream of their own, so the run itself is unaffected.
    let mut rng = stream_rng(a.run.seed, 0xc10c);
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let mut order: Vec<usize> = (0..all.len()).collect();
    while pairs.len() < a.pairs && all.len() >= 2 {
        order.shuffle(&mut rng);
        pairs.push((order[0].min(order[1]), order[0].max(order[1])));
    }
    println!(
        "\n{:<16} {:<16} {:>9} {:>9}  {:<36} {:<36} relation",
        "event a", "event b", "Lamport a", "Lamport b", "vector a", "vector b"
    );
    for (i, j) in pairs {
        let (x, y) = (&all[i], &all[j]);
        let by_vector = x.vector.compare(&y.vector);
        println!(
            "{:<16} {:<16} {:>9} {:>9}  {:<36} {:<36} {}",
            describe(x),
            describe(y),
            x.lamport.to_string(),
            y.lamport.to_string(),
            x.vector.to_string(),
            y.vector.to_string(),
            relation_arrow(by_vector)
        );
    }

    // Check both clocks against the true relation over every ordered pair.
    let (mut pairs_checked, mut vector_wrong, mut lamport_wrong) = (0u64, 0u64, 0u64);
    let (mut concurrent, mut ordered) = (0u64, 0u64);
    for x in &all {
        for y in &all {
            if x.id == y.id {
                continue;
            }
            pairs_checked += 1;
            let truth = hb.relation(x.id, y.id).unwrap_or(Causality::Equal);
            if x.vector.compare(&y.vector) != truth {
                vector_wrong += 1;
            }
            match truth {
                Causality::Before => {
                    ordered += 1;
                    if x.lamport >= y.lamport {
                        lamport_wrong += 1;
                    }
                }
                Causality::Concurrent => concurrent += 1,
                _ => {}
            }
        }
    }
    let yes = |wrong: u64| if wrong == 0 { "yes" } else { "NO" };
    println!(
        "\nchecked against the true happens-before relation over {pairs_checked} ordered pairs:"
    );
    println!(
        "  vector clocks: V(a) < V(b) exactly when a → b, incomparable exactly when a ∥ b: {} ({vector_wrong} wrong)",
        yes(vector_wrong)
    );
    println!(
        "  Lamport clock condition, a → b ⇒ L(a) < L(b), on {ordered} ordered pairs: {} ({lamport_wrong} wrong)",
        yes(lamport_wrong)
    );
    println!(
        "  concurrent pairs: {concurrent}; Lamport timestamps order every one of them, so they cannot reveal concurrency"
    );
    a.run.finish(&mut sim)?;
    println!(
        "replay: synod sim clocks --nodes {} --seed {} --events {} --send-probability {}",
        a.nodes, a.run.seed, a.events, a.send_probability
    );
    Ok(if vector_wrong == 0 && lamport_wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn durability(a: DurabilityArgs) -> Result<ExitCode> {
    let unsynced = a.unsynced;
    let scenario = move |seed: u64| -> Result<(), String> {
        let mut cfg = SimConfig::new(seed, 3);
        cfg.net = synod_sim::swarm_net(seed);
        cfg.faults = FaultConfig {
            max_down: None,
            ..synod_sim::swarm_faults(seed)
        };
        cfg.faults.crash = cfg.faults.crash.max(1);
        let mut sim = Sim::new(cfg, move |_| DurableCounter::new(3, unsynced));
        sim.invariant(
            "no peer hears an undurable value",
            no_peer_heard_undurable_value,
        );
        sim.run_for(Duration::from_secs(3))
            .map_err(|f| f.to_string())
    };
    let flag = if unsynced { " --unsynced" } else { "" };
    let opts = SwarmOptions::with_threads(a.threads);
    let report = synod_sim::swarm(
        a.first_seed..a.first_seed.saturating_add(a.seeds),
        &opts,
        scenario,
        |seed| format!("synod sim durability --first-seed {seed} --seeds 1{flag}"),
    );
    println!(
        "durability: {} seeds, {} failed",
        report.runs,
        report.failures.len()
    );
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
