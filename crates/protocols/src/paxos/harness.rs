//! Simulation harnesses for single-decree Paxos and Multi-Paxos: the scenarios the tests
//! run over many seeds and `synod sim paxos` runs from the command line, with the
//! paper's properties as invariants checked after every event.

use super::multi::{Command, MultiConfig, MultiMsg, MultiPaxos, Role, Slot};
use super::single::{Paxos, PaxosConfig, Value};
use super::Bug;
use crate::kv_clients::{KvClientPool, KvService, Reply};
use crate::raft::harness::kv_result;
use crate::raft::{KvCommand, SessionId};
use rand::Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use synod_check::history::Op;
use synod_check::linearizability::{check_kv, CheckResult};
use synod_core::{ClientId, NodeId};
use synod_sim::{swarm_faults, swarm_net, DiskConfig, FaultConfig, Sim, SimConfig};

// ---- single-decree ---------------------------------------------------------------------

/// How one single-decree run is set up.
#[derive(Clone, Debug)]
pub struct SingleScenario {
    /// Run seed.
    pub seed: u64,
    /// Number of nodes; every node proposes `100 + id`.
    pub nodes: u32,
    /// Faults (drawn from the seed with `swarm_faults`) stop at this time; then every
    /// node must decide within `deadline`.
    pub faults_until: Duration,
    /// The liveness deadline after healing.
    pub deadline: Duration,
    /// A deliberately broken variant.
    pub bug: Option<Bug>,
    /// A slow disk (20–40 ms fsyncs), which widens the window in which a crash loses
    /// unsynced state.
    pub slow_disk: bool,
    /// A crash-heavy fault mix on a lossy network instead of the seed's swarm mix.
    pub crash_heavy: bool,
}

impl SingleScenario {
    /// 3 to 5 nodes from the seed, faults for 2 s, 10 s to decide after healing.
    pub fn new(seed: u64) -> Self {
        SingleScenario {
            seed,
            nodes: 3 + (seed % 3) as u32,
            faults_until: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
            bug: None,
            slow_disk: false,
            crash_heavy: false,
        }
    }
}

/// What a single-decree run produced.
#[derive(Clone, Debug)]
pub struct SingleOutcome {
    /// The chosen value.
    pub value: Value,
    /// When every node had decided, after healing.
    pub decided_at: Duration,
    /// Messages sent by the nodes.
    pub messages: u64,
}

fn disk(slow: bool) -> DiskConfig {
    if slow {
        DiskConfig {
            min_sync: Duration::from_millis(20),
            sync_jitter: Duration::from_millis(20),
            io_error: 0.0,
            ..DiskConfig::default()
        }
    } else {
        DiskConfig::default()
    }
}

/// Crashes every few tens of milliseconds, with some partitions: what it takes to hit
/// the window between an unsynced reply and the crash that loses its state.
pub fn crash_heavy_faults() -> FaultConfig {
    FaultConfig {
        mean_interval: Duration::from_millis(15),
        min_duration: Duration::from_millis(5),
        max_duration: Duration::from_millis(60),
        partition: 1,
        crash: 4,
        pause: 0,
        clog: 0,
        max_down: None,
    }
}

/// Run one single-decree scenario: agreement, validity and integrity after every event,
/// and every node decided by the deadline.
pub fn run_single(s: &SingleScenario) -> Result<SingleOutcome, String> {
    let mut cfg = SimConfig::new(s.seed, s.nodes);
    cfg.net = swarm_net(s.seed);
    cfg.faults = swarm_faults(s.seed);
    cfg.disk = disk(s.slow_disk);
    if s.crash_heavy {
        cfg.faults = crash_heavy_faults();
        cfg.net.loss = 0.1;
    }
    let nodes: Vec<NodeId> = (0..s.nodes).map(NodeId).collect();
    let bug = s.bug;
    // Every proposer starts at about the same moment: at once on even seeds and in crash
    // storms, somewhere in the fault period on odd seeds, so that rounds also contend
    // while partitions and crashes are on.
    let start = if s.crash_heavy || s.seed.is_multiple_of(2) {
        Duration::ZERO
    } else {
        let mut rng = synod_sim::stream_rng(s.seed, 0x5eed);
        let faults = u64::try_from(s.faults_until.as_nanos())
            .unwrap_or(u64::MAX)
            .max(2);
        Duration::from_nanos(rng.gen_range(0..faults * 3 / 4))
    };
    let mut sim = Sim::new(cfg, move |me: NodeId| {
        let mut config = PaxosConfig::new(nodes.clone(), Some(Value(100 + u64::from(me.0))));
        config.bug = bug;
        config.start_delay = start;
        Paxos::new(config)
    });
    sim.set_max_events(5_000_000);
    let proposals: BTreeSet<Value> = (0..s.nodes).map(|n| Value(100 + u64::from(n))).collect();
    sim.invariant("no node faults", |sim: &Sim<Paxos>| {
        for (node, p) in sim.actors() {
            if let Some(why) = p.fault() {
                return Err(format!("{node} stopped: {why}"));
            }
        }
        Ok(())
    });
    // Agreement and integrity over every decision any node ever made, crashed or not.
    let decisions = RefCell::new(BTreeMap::<NodeId, Value>::new());
    sim.invariant("Agreement and Integrity", move |sim: &Sim<Paxos>| {
        let mut decisions = decisions.borrow_mut();
        for (node, p) in sim.actors() {
            let Some(value) = p.decided() else { continue };
            match decisions.get(&node) {
                Some(earlier) if *earlier != value => {
                    return Err(format!(
                        "Integrity: {node} decided {earlier:?} and later {value:?}"
                    ))
                }
                _ => {
                    decisions.insert(node, value);
                }
            }
            if let Some((other, v)) = decisions.iter().find(|(_, v)| **v != value) {
                return Err(format!(
                    "Agreement: {node} decided {value:?} but {other} decided {v:?}"
                ));
            }
        }
        Ok(())
    });
    sim.invariant("Validity", move |sim: &Sim<Paxos>| {
        for (node, p) in sim.actors() {
            if let Some(value) = p.decided() {
                if !proposals.contains(&value) {
                    return Err(format!("{node} decided {value:?}, which nobody proposed"));
                }
            }
        }
        Ok(())
    });
    let decided_at = sim
        .run_liveness(s.faults_until, s.faults_until + s.deadline, |sim| {
            sim.actors().count() == sim.config().nodes as usize
                && sim.actors().all(|(_, p)| p.decided().is_some())
        })
        .map_err(|f| f.to_string())?;
    let value = sim
        .actors()
        .find_map(|(_, p)| p.decided())
        .ok_or("nobody decided")?;
    let messages = sim.actors().map(|(_, p)| p.counters().messages_sent).sum();
    Ok(SingleOutcome {
        value,
        decided_at,
        messages,
    })
}

// ---- Multi-Paxos -----------------------------------------------------------------------

impl KvService for MultiPaxos {
    fn request(client: ClientId, seq: u64, op: &Op) -> MultiMsg {
        let command = match op.clone() {
            Op::Read { key } => KvCommand::Get { key },
            Op::Write { key, value } => KvCommand::Put { key, value },
            Op::Cas { key, expected, new } => KvCommand::Cas { key, expected, new },
            Op::Delete { key } => KvCommand::Delete { key },
        };
        MultiMsg::Request {
            session: SessionId(client.0),
            seq,
            command,
        }
    }

    fn reply(op: &Op, in_flight: u64, msg: MultiMsg) -> Reply {
        match msg {
            MultiMsg::Reply { seq, output } if seq == in_flight => {
                Reply::Done(kv_result(op, output))
            }
            MultiMsg::NotLeader { seq, leader_hint } if seq == in_flight => {
                Reply::Redirect(leader_hint)
            }
            _ => Reply::Other,
        }
    }
}

/// Clients that read, write, compare-and-set and delete a few keys through Multi-Paxos
/// (the shared [`KvClientPool`]).
pub type PaxosKvClients = KvClientPool<MultiPaxos>;

/// How one Multi-Paxos run is set up.
#[derive(Clone, Debug)]
pub struct MultiScenario {
    /// Run seed.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: u32,
    /// Number of clients.
    pub clients: u64,
    /// Clients start operations, and faults are injected, until this time.
    pub faults_until: Duration,
    /// After healing, the log must converge within this.
    pub deadline: Duration,
    /// Whether to inject faults (`swarm_faults(seed)`) and a hostile network
    /// (`swarm_net(seed)`); otherwise a fault-free LAN.
    pub faults: bool,
    /// A deliberately broken variant.
    pub bug: Option<Bug>,
    /// A slow disk (20–40 ms fsyncs).
    pub slow_disk: bool,
    /// A crash-heavy fault mix on a lossy network instead of the seed's swarm mix.
    pub crash_heavy: bool,
}

impl MultiScenario {
    /// 3 or 5 nodes from the seed, 3 clients, 2 s of faults, 10 s to converge.
    pub fn new(seed: u64) -> Self {
        MultiScenario {
            seed,
            nodes: if seed.is_multiple_of(2) { 3 } else { 5 },
            clients: 3,
            faults_until: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
            faults: true,
            bug: None,
            slow_disk: false,
            crash_heavy: false,
        }
    }
}

/// What a Multi-Paxos run produced.
#[derive(Clone, Debug)]
pub struct MultiOutcome {
    /// Operations in the history.
    pub operations: usize,
    /// Operations that completed ok.
    pub completed: usize,
    /// Operations started after the first one completed that did not complete ok.
    pub unfinished_after_first_leader: usize,
    /// Slots chosen.
    pub slots: u64,
    /// Messages the nodes sent to each other.
    pub messages: u64,
}

/// The Multi-Paxos simulation: build it (for the CLI, which may attach a trace).
pub fn multi_sim(s: &MultiScenario) -> Sim<MultiPaxos> {
    let mut cfg = SimConfig::new(s.seed, s.nodes);
    if s.faults {
        cfg.net = swarm_net(s.seed);
        cfg.faults = swarm_faults(s.seed);
    }
    cfg.disk = disk(s.slow_disk);
    if s.crash_heavy {
        cfg.faults = crash_heavy_faults();
        cfg.net.loss = 0.1;
    }
    let nodes: Vec<NodeId> = (0..s.nodes).map(NodeId).collect();
    let bug = s.bug;
    let mut sim = Sim::new(cfg, move |_me: NodeId| {
        let mut config = MultiConfig::new(nodes.clone());
        config.bug = bug;
        MultiPaxos::new(config)
    });
    sim.set_max_events(20_000_000);
    // Clients go on for a second after the faults heal, so every run also has a
    // stretch of recovery under load.
    let stop_at = s.faults_until + Duration::from_secs(1);
    sim.set_workload(PaxosKvClients::new(s.clients, stop_at));
    install_multi_invariants(&mut sim);
    sim
}

/// Agreement and integrity for every slot, checked after every event over what each
/// node has applied (a restarted node re-applies its durable log and is checked again).
pub fn install_multi_invariants(sim: &mut Sim<MultiPaxos>) {
    sim.invariant("no node faults", |sim: &Sim<MultiPaxos>| {
        for (node, p) in sim.actors() {
            if let Some(why) = p.fault() {
                return Err(format!("{node} stopped: {why}"));
            }
        }
        Ok(())
    });
    let chosen = RefCell::new(BTreeMap::<Slot, Command>::new());
    let checked = RefCell::new(BTreeMap::<NodeId, Slot>::new());
    sim.invariant("Agreement", move |sim: &Sim<MultiPaxos>| {
        let mut chosen = chosen.borrow_mut();
        let mut checked = checked.borrow_mut();
        for (node, p) in sim.actors() {
            let done = checked.entry(node).or_default();
            if p.applied() < *done {
                // Restarted: it replays its log; check it all again.
                *done = Slot(0);
            }
            while *done < p.applied() {
                let slot = *done;
                let Some(command) = p.chosen_at(slot) else {
                    return Err(format!("{node} applied {slot} without knowing it chosen"));
                };
                match chosen.get(&slot) {
                    Some(known) if known != command => {
                        return Err(format!(
                            "{node} applied {command:?} in {slot}, where another node \
                             applied {known:?}"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        chosen.insert(slot, command.clone());
                    }
                }
                *done = slot.next();
            }
        }
        Ok(())
    });
}

/// Every node holds the same applied log, one leader leads with the highest ballot, and
/// nothing it proposed is still waiting.
pub fn multi_converged(sim: &Sim<MultiPaxos>) -> bool {
    if sim.actors().count() != sim.config().nodes as usize {
        return false;
    }
    let top = sim.actors().map(|(_, p)| p.promised()).max();
    let Some((_, leader)) = sim
        .actors()
        .find(|(_, p)| p.role() == Role::Leader && Some(p.ballot()) == top)
    else {
        return false;
    };
    let end = leader.next_slot();
    sim.actors().all(|(_, p)| p.applied() == end)
}

/// Check a finished run: client errors, validity, linearizability.
pub fn check_multi(sim: &Sim<MultiPaxos>) -> Result<MultiOutcome, String> {
    let clients = sim
        .workload::<PaxosKvClients>()
        .ok_or("the workload is not PaxosKvClients")?;
    if let Some(e) = clients.errors.first() {
        return Err(format!("client error: {e}"));
    }
    let (_, longest) = sim
        .actors()
        .max_by_key(|(_, p)| p.applied())
        .ok_or("no node is up")?;
    let mut slot = Slot(0);
    while slot < longest.applied() {
        if let Some(Command::Client { session, seq, .. }) = longest.chosen_at(slot) {
            if !clients.issued.contains(&(session.0, *seq)) {
                return Err(format!(
                    "Validity: {slot} holds {session:?}/{seq}, which no client issued"
                ));
            }
        }
        slot = slot.next();
    }
    match check_kv(&clients.history) {
        CheckResult::Ok => {}
        CheckResult::Violation(counter_example) => {
            return Err(format!("not linearizable: {counter_example}"))
        }
        other => return Err(format!("linearizability check gave no answer: {other:?}")),
    }
    let operations = clients.history.operations();
    let is_ok = |o: &synod_check::history::Operation| {
        matches!(o.completion, synod_check::history::Completion::Ok { .. })
    };
    let completed = operations.iter().filter(|o| is_ok(o)).count();
    let first_ok = clients.completions.iter().map(|(t, _)| *t).min();
    let unfinished_after_first_leader = operations
        .iter()
        .filter(|o| !is_ok(o) && first_ok.is_some_and(|t| o.invoke > t))
        .count();
    Ok(MultiOutcome {
        operations: operations.len(),
        completed,
        unfinished_after_first_leader,
        slots: longest.applied().0,
        messages: sim.actors().map(|(_, p)| p.counters().messages_sent).sum(),
    })
}

/// Run one Multi-Paxos scenario: invariants after every event, convergence after
/// healing, then validity and linearizability of the client history.
pub fn run_multi(s: &MultiScenario) -> Result<MultiOutcome, String> {
    let mut sim = multi_sim(s);
    sim.run_liveness(s.faults_until, s.faults_until + s.deadline, multi_converged)
        .map_err(|f| f.to_string())?;
    // Let the clients finish: they stop a second after healing, and an operation gives
    // up within a second.
    let end = (s.faults_until + Duration::from_secs(3)).max(sim.now() + Duration::from_secs(1));
    sim.run_until(end).map_err(|f| f.to_string())?;
    if !multi_converged(&sim) {
        sim.run_liveness(sim.now(), sim.now() + s.deadline, multi_converged)
            .map_err(|f| f.to_string())?;
    }
    check_multi(&sim)
}
