//! Simulation harnesses for single-decree Paxos and Multi-Paxos: the scenarios the tests
//! run over many seeds and `synod sim paxos` runs from the command line, with the
//! paper's properties as invariants checked after every event.

use super::multi::{Command, MultiConfig, MultiMsg, MultiPaxos, Role, Slot};
use super::single::{Paxos, PaxosConfig, Value};
use super::Bug;
use crate::raft::{KvCommand, KvOutput, SessionId};
use rand::Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use synod_check::history::{History, Op, OpId, OpResult, Process};
use synod_check::linearizability::{check_kv, CheckResult};
use synod_core::{ClientId, NodeId};
use synod_sim::{
    swarm_faults, swarm_net, ClientCtl, DiskConfig, FaultConfig, Sim, SimConfig, Workload,
};

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

/// Timer key that starts a client's next operation.
const NEXT_OP: u64 = 0;
/// Requests sent for one operation before it is given up as `info` (outcome unknown).
const MAX_ATTEMPTS: u32 = 12;
const KEYS: [&str; 3] = ["a", "b", "c"];

struct InFlight {
    id: OpId,
    op: Op,
    seq: u64,
    attempts: u32,
    token: u64,
    /// Whether the pending timer is a timeout (try another node) or a retry.
    sent: bool,
    started_at: u64,
}

struct Client {
    id: ClientId,
    seq: u64,
    target: NodeId,
    op: Option<InFlight>,
    next_token: u64,
}

/// Clients that read, write, compare-and-set and delete a few keys through Multi-Paxos,
/// follow `NotLeader` hints, retry on timeouts with the same sequence number, and record
/// a history for the linearizability checker.
pub struct PaxosKvClients {
    /// The recorded history.
    pub history: History,
    /// Replies that made no sense.
    pub errors: Vec<String>,
    /// Every command a client issued, to check validity.
    pub issued: BTreeSet<(SessionId, u64)>,
    /// Completion times (true ns) and latencies (ns) of successful operations.
    pub completions: Vec<(u64, u64)>,
    clients: Vec<Client>,
    stop_at: u64,
    timeout: Duration,
    next_value: u64,
}

impl PaxosKvClients {
    /// `clients` clients that start operations until `stop_at` of true time.
    pub fn new(clients: u64, stop_at: Duration) -> Self {
        PaxosKvClients {
            history: History::new(),
            errors: Vec::new(),
            issued: BTreeSet::new(),
            completions: Vec::new(),
            clients: (1..=clients)
                .map(|c| Client {
                    id: ClientId(c),
                    seq: 0,
                    target: NodeId(0),
                    op: None,
                    next_token: 1,
                })
                .collect(),
            stop_at: u64::try_from(stop_at.as_nanos()).unwrap_or(u64::MAX),
            timeout: Duration::from_millis(60),
            next_value: 0,
        }
    }

    fn slot(client: ClientId) -> usize {
        (client.0 - 1) as usize
    }

    fn random_op(&mut self, ctl: &mut ClientCtl<'_, MultiPaxos>) -> Op {
        let key = KEYS[ctl.rng().gen_range(0..KEYS.len())];
        self.next_value += 1;
        match ctl.rng().gen_range(0..10) {
            0..=3 => Op::Read { key: key.into() },
            4..=6 => Op::Write {
                key: key.into(),
                value: self.next_value,
            },
            7..=8 => {
                let back = ctl.rng().gen_range(1..4);
                let expected = Some(self.next_value.saturating_sub(back)).filter(|v| *v > 0);
                Op::Cas {
                    key: key.into(),
                    expected,
                    new: self.next_value,
                }
            }
            _ => Op::Delete { key: key.into() },
        }
    }

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

    fn start_op(&mut self, ctl: &mut ClientCtl<'_, MultiPaxos>, client: ClientId) {
        let now = ctl.now_nanos();
        if now >= self.stop_at {
            return;
        }
        let op = self.random_op(ctl);
        let c = &mut self.clients[Self::slot(client)];
        c.seq += 1;
        self.issued.insert((SessionId(client.0), c.seq));
        let id = self.history.invoke(Process(client.0), op.clone(), now);
        c.op = Some(InFlight {
            id,
            op,
            seq: c.seq,
            attempts: 0,
            token: 0,
            sent: false,
            started_at: now,
        });
        self.attempt(ctl, client);
    }

    fn attempt(&mut self, ctl: &mut ClientCtl<'_, MultiPaxos>, client: ClientId) {
        let timeout = self.timeout;
        let c = &mut self.clients[Self::slot(client)];
        let Some(op) = c.op.as_mut() else { return };
        op.attempts += 1;
        op.token = c.next_token;
        c.next_token += 1;
        op.sent = true;
        ctl.send(client, c.target, Self::request(client, op.seq, &op.op));
        ctl.set_timer(client, op.token, timeout);
    }

    fn finish(&mut self, ctl: &mut ClientCtl<'_, MultiPaxos>, client: ClientId) {
        self.clients[Self::slot(client)].op = None;
        let think = Duration::from_micros(ctl.rng().gen_range(0..5_000));
        ctl.set_timer(client, NEXT_OP, think);
    }
}

impl Workload<MultiPaxos> for PaxosKvClients {
    fn on_start(&mut self, ctl: &mut ClientCtl<'_, MultiPaxos>) {
        let ids: Vec<ClientId> = self.clients.iter().map(|c| c.id).collect();
        for id in ids {
            let nodes = ctl.nodes();
            self.clients[Self::slot(id)].target = NodeId(ctl.rng().gen_range(0..nodes));
            self.start_op(ctl, id);
        }
    }

    fn on_reply(
        &mut self,
        ctl: &mut ClientCtl<'_, MultiPaxos>,
        client: ClientId,
        from: NodeId,
        msg: MultiMsg,
    ) {
        let now = ctl.now_nanos();
        let nodes = ctl.nodes();
        let Some(c) = self.clients.get_mut(Self::slot(client)) else {
            return;
        };
        let Some(op) = c.op.as_mut() else { return };
        match msg {
            MultiMsg::Reply { seq, output } if seq == op.seq => {
                let result = match (&op.op, output) {
                    (Op::Read { .. }, KvOutput::Value(v)) => OpResult::ReadOk(v),
                    (Op::Write { .. }, KvOutput::Done) => OpResult::WriteOk,
                    (Op::Cas { .. }, KvOutput::Swapped(b)) => OpResult::CasOk(b),
                    (Op::Delete { .. }, KvOutput::Done) => OpResult::DeleteOk,
                    (op, output) => {
                        self.errors.push(format!("{op} answered with {output:?}"));
                        return;
                    }
                };
                if let Err(e) = self.history.ok(op.id, result, now) {
                    self.errors.push(e.to_string());
                }
                self.completions
                    .push((now, now.saturating_sub(op.started_at)));
                c.target = from;
                self.finish(ctl, client);
            }
            MultiMsg::NotLeader { seq, leader_hint } if seq == op.seq => {
                c.target = leader_hint.unwrap_or(NodeId((from.0 + 1) % nodes));
                op.token = c.next_token;
                c.next_token += 1;
                op.sent = false;
                // Back off a little: the cluster may be between leaders.
                ctl.set_timer(client, op.token, Duration::from_millis(3));
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, ctl: &mut ClientCtl<'_, MultiPaxos>, client: ClientId, key: u64) {
        if key == NEXT_OP {
            return self.start_op(ctl, client);
        }
        let nodes = ctl.nodes();
        let now = ctl.now_nanos();
        let c = &mut self.clients[Self::slot(client)];
        let Some(op) = c.op.as_mut() else { return };
        if op.token != key {
            return;
        }
        if op.sent {
            // A timeout: this node may be down or cut off; try the next one.
            c.target = NodeId((c.target.0 + 1) % nodes);
        }
        if op.attempts >= MAX_ATTEMPTS {
            if let Err(e) = self.history.info(op.id, now) {
                self.errors.push(e.to_string());
            }
            return self.finish(ctl, client);
        }
        self.attempt(ctl, client);
    }
}

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
            if !clients.issued.contains(&(*session, *seq)) {
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
