//! The simulation harness: a KV client workload that records a history, the Figure 3
//! invariants as simulator checks, and the scenarios the tests and `synod sim raft` run.
//!
//! Compiled for tests and with the `harness` feature (the CLI turns it on).

use crate::kv_clients::{KvClientPool, KvService, Reply, OPERATOR};
use crate::raft::{
    KvCommand, KvOutput, KvStateMachine, MembershipChange, Raft, RaftConfig, RaftMsg, Role,
    SessionId, Term,
};
use rand::Rng;
use std::cell::RefCell;
use std::collections::btree_map::Entry as MapEntry;
use std::collections::BTreeMap;
use std::time::Duration;
use synod_check::history::{Op, OpResult};
use synod_check::linearizability::{check_kv, CheckResult};
use synod_core::{ClientId, LogIndex, NodeId};
use synod_sim::{
    swarm_config, swarm_faults, swarm_net, ClientCtl, ClockConfig, FaultConfig, NetConfig, Sim,
    SimConfig, Workload,
};

/// The Raft server every scenario runs: Raft over the KV state machine.
pub type Kv = Raft<KvStateMachine>;
type Msg = RaftMsg<KvCommand, KvOutput>;

/// Timer key of the operator that asks for leadership transfers.
const TRANSFER: u64 = u64::MAX;
/// Timer key of the operator that changes the membership.
const MEMBERSHIP: u64 = u64::MAX - 1;

impl KvService for Kv {
    fn request(client: ClientId, seq: u64, op: &Op) -> Msg {
        let session = SessionId(client.0);
        let write = |command| RaftMsg::ClientWrite {
            session,
            seq,
            command,
        };
        match op.clone() {
            Op::Read { key } => RaftMsg::ClientRead {
                seq,
                command: KvCommand::Get { key },
            },
            Op::Write { key, value } => write(KvCommand::Put { key, value }),
            Op::Cas { key, expected, new } => write(KvCommand::Cas { key, expected, new }),
            Op::Delete { key } => write(KvCommand::Delete { key }),
        }
    }

    fn reply(op: &Op, in_flight: u64, msg: Msg) -> Reply {
        match msg {
            RaftMsg::ClientReply { seq, output } if seq == in_flight => {
                Reply::Done(kv_result(op, output))
            }
            RaftMsg::NotLeader { seq, leader_hint } if seq == in_flight => {
                Reply::Redirect(leader_hint)
            }
            _ => Reply::Other,
        }
    }
}

/// The checker's result for a KV state machine's output to `op`.
pub(crate) fn kv_result(op: &Op, output: KvOutput) -> Result<OpResult, String> {
    match (op, output) {
        (Op::Read { .. }, KvOutput::Value(v)) => Ok(OpResult::ReadOk(v)),
        (Op::Write { .. }, KvOutput::Done) => Ok(OpResult::WriteOk),
        (Op::Cas { .. }, KvOutput::Swapped(b)) => Ok(OpResult::CasOk(b)),
        (Op::Delete { .. }, KvOutput::Done) => Ok(OpResult::DeleteOk),
        (op, output) => Err(format!("{op} answered with {output:?}")),
    }
}

/// The shared KV clients ([`KvClientPool`]), plus an operator that can transfer
/// leadership and change the membership while they run.
pub struct KvClients {
    pool: KvClientPool<Kv>,
    transfers: bool,
    /// The membership changes the operator cycles through, and the next one.
    changes: Vec<MembershipChange>,
    next_change: usize,
}

impl std::ops::Deref for KvClients {
    type Target = KvClientPool<Kv>;
    fn deref(&self) -> &KvClientPool<Kv> {
        &self.pool
    }
}

impl KvClients {
    /// `clients` clients that start operations until `stop_at` of true time; with
    /// `transfers`, an operator also moves the leadership every 700 ms.
    pub fn new(clients: u64, stop_at: Duration, transfers: bool) -> Self {
        KvClients {
            pool: KvClientPool::new(clients, stop_at),
            transfers,
            changes: Vec::new(),
            next_change: 0,
        }
    }

    /// Make the first `readers` clients read-only.
    pub fn with_readers(mut self, readers: u64) -> Self {
        self.pool = self.pool.with_readers(readers);
        self
    }

    /// Also run an operator that cycles a group of `nodes` servers whose initial voters
    /// are all but the last: add the outsider as a learner, promote it, remove a voter,
    /// and so on around the ring. Each change is sent to every server twice; a change
    /// that does not apply is refused, so the cycle drifts, as operators do.
    pub fn with_membership_changes(mut self, nodes: u32) -> Self {
        for k in 0..nodes {
            let outsider = NodeId((nodes - 1 + k) % nodes);
            let leaving = NodeId(k % nodes);
            self.changes.extend([
                MembershipChange::AddLearner(outsider),
                MembershipChange::PromoteLearner(outsider),
                MembershipChange::RemoveServer(leaving),
            ]);
        }
        self
    }

    fn on_membership_timer(&mut self, ctl: &mut ClientCtl<'_, Kv>) {
        if ctl.now_nanos() >= self.pool.stop_at() || self.changes.is_empty() {
            return;
        }
        let change = self.changes[(self.next_change / 2) % self.changes.len()];
        self.next_change += 1;
        for node in 0..ctl.nodes() {
            ctl.send(OPERATOR, NodeId(node), RaftMsg::ChangeMembership { change });
        }
        ctl.set_timer(OPERATOR, MEMBERSHIP, Duration::from_millis(150));
    }

    fn on_transfer_timer(&mut self, ctl: &mut ClientCtl<'_, Kv>) {
        if ctl.now_nanos() >= self.pool.stop_at() {
            return;
        }
        if let Some(leader) = self.pool.last_leader {
            let nodes = ctl.nodes();
            let to = NodeId(ctl.rng().gen_range(0..nodes));
            ctl.send(OPERATOR, leader, RaftMsg::TransferLeadership { to });
        }
        ctl.set_timer(OPERATOR, TRANSFER, Duration::from_millis(700));
    }
}

impl Workload<Kv> for KvClients {
    fn on_start(&mut self, ctl: &mut ClientCtl<'_, Kv>) {
        self.pool.on_start(ctl);
        if self.transfers {
            ctl.set_timer(OPERATOR, TRANSFER, Duration::from_millis(700));
        }
        if !self.changes.is_empty() {
            ctl.set_timer(OPERATOR, MEMBERSHIP, Duration::from_millis(150));
        }
    }

    fn on_reply(&mut self, ctl: &mut ClientCtl<'_, Kv>, client: ClientId, from: NodeId, msg: Msg) {
        self.pool.on_reply(ctl, client, from, msg);
    }

    fn on_timer(&mut self, ctl: &mut ClientCtl<'_, Kv>, client: ClientId, key: u64) {
        match (client, key) {
            (OPERATOR, TRANSFER) => self.on_transfer_timer(ctl),
            (OPERATOR, MEMBERSHIP) => self.on_membership_timer(ctl),
            _ => self.pool.on_timer(ctl, client, key),
        }
    }
}

/// Install the Figure 3 properties as invariants checked after every event.
/// Check Election Safety, Log Matching, Leader Completeness and State Machine Safety
/// (Figure 3) after every simulator event.
pub fn install_invariants(sim: &mut Sim<Kv>) {
    // The simulated disk never corrupts, so a server that refuses to run is a bug: it
    // is how a follower reports a leader that overwrites a committed entry.
    sim.invariant("no server faults", |sim| {
        for (node, raft) in sim.actors() {
            if let Some(why) = raft.fault() {
                return Err(format!("{node} stopped: {why}"));
            }
        }
        Ok(())
    });
    // Election Safety: at most one leader can be elected in a given term.
    let leaders = RefCell::new(BTreeMap::<Term, NodeId>::new());
    sim.invariant("Election Safety", move |sim| {
        let mut leaders = leaders.borrow_mut();
        for (node, raft) in sim.actors() {
            if raft.role() != Role::Leader {
                continue;
            }
            match leaders.entry(raft.current_term()) {
                MapEntry::Vacant(v) => {
                    v.insert(node);
                }
                MapEntry::Occupied(o) if *o.get() != node => {
                    return Err(format!(
                        "{node} and {} are both leaders of {}",
                        o.get(),
                        raft.current_term()
                    ));
                }
                MapEntry::Occupied(_) => {}
            }
        }
        Ok(())
    });

    // Leader Append-Only: a leader never overwrites or deletes entries in its log.
    let leader_tips = RefCell::new(BTreeMap::<(NodeId, Term), (LogIndex, Option<u64>)>::new());
    sim.invariant("Leader Append-Only", move |sim| {
        let mut tips = leader_tips.borrow_mut();
        for (node, raft) in sim.actors() {
            if raft.role() != Role::Leader {
                continue;
            }
            let key = (node, raft.current_term());
            if let Some(&(index, hash)) = tips.get(&key) {
                if index >= raft.snapshot_index() && raft.log_hash_at(index) != hash {
                    return Err(format!(
                        "{node}, leader of {}, changed its log at or before {index}",
                        key.1
                    ));
                }
            }
            let last = raft.last_log_index();
            tips.insert(key, (last, raft.log_hash_at(last)));
        }
        Ok(())
    });

    // Log Matching: entries with the same index and term have the same prefix. Every new
    // entry is checked once: a step appends at most one batch, well inside the window.
    const WINDOW: u64 = 256;
    let seen = RefCell::new(BTreeMap::<(LogIndex, Term), u64>::new());
    let checked = RefCell::new(BTreeMap::<NodeId, (LogIndex, Option<u64>)>::new());
    sim.invariant("Log Matching", move |sim| {
        let mut seen = seen.borrow_mut();
        let mut checked = checked.borrow_mut();
        for (node, raft) in sim.actors() {
            let last = raft.last_log_index();
            let tip = (last, raft.log_hash_at(last));
            if checked.get(&node) == Some(&tip) {
                continue;
            }
            checked.insert(node, tip);
            let mut index = LogIndex(last.0.saturating_sub(WINDOW).max(1));
            while index <= last {
                if let (Some(term), Some(hash)) = (raft.term_at(index), raft.log_hash_at(index)) {
                    let known = *seen.entry((index, term)).or_insert(hash);
                    if known != hash {
                        return Err(format!(
                            "{node} holds entry {index} of {term} after a different log \
                             than another server's entry {index} of {term}"
                        ));
                    }
                }
                index = index.next();
            }
        }
        Ok(())
    });

    // State Machine Safety and Leader Completeness, from what servers report committed.
    let committed = RefCell::new(BTreeMap::<LogIndex, u64>::new());
    let highest_by_term = RefCell::new(BTreeMap::<Term, LogIndex>::new());
    sim.invariant("State Machine Safety", move |sim| {
        let mut committed = committed.borrow_mut();
        let mut highest_by_term = highest_by_term.borrow_mut();
        for (node, raft) in sim.actors() {
            for index in [raft.commit_index(), raft.last_applied()] {
                if index == LogIndex::ZERO {
                    continue;
                }
                let Some(hash) = raft.log_hash_at(index) else {
                    continue;
                };
                let known = *committed.entry(index).or_insert(hash);
                if known != hash {
                    return Err(format!(
                        "{node} committed or applied a different log up to {index} than \
                         another server"
                    ));
                }
            }
            let commit = raft.commit_index();
            let highest = highest_by_term.entry(raft.current_term()).or_default();
            *highest = (*highest).max(commit);
        }
        for (node, raft) in sim.actors() {
            if raft.role() != Role::Leader {
                continue;
            }
            // Leader Completeness: everything committed in an earlier term is here
            // (in the log, or in the snapshot, which holds only committed entries).
            let Some(index) = highest_by_term
                .range(..raft.current_term())
                .map(|(_, i)| *i)
                .max()
                .filter(|i| *i > LogIndex::ZERO && *i >= raft.snapshot_index())
            else {
                continue;
            };
            if raft.log_hash_at(index) != committed.get(&index).copied() {
                return Err(format!(
                    "Leader Completeness: {node}, leader of {}, lacks committed entry {index}",
                    raft.current_term()
                ));
            }
        }
        Ok(())
    });
}

/// The fast timing every simulation uses: 100 ms election timeouts, 20 ms heartbeats.
/// With `snapshots`, a snapshot every 25 entries, staggered across the servers, sent in
/// 24-byte chunks, so that compaction and chunked `InstallSnapshot` run all the time.
pub fn test_config(voters: u32, snapshots: bool) -> RaftConfig {
    let mut config = RaftConfig::new((0..voters).map(NodeId).collect());
    config.election_timeout = Duration::from_millis(100);
    config.election_timeout_spread = Duration::from_millis(100);
    config.heartbeat_interval = Duration::from_millis(20);
    config.max_entries_per_append = 16;
    config.max_in_flight = 4;
    if snapshots {
        config.snapshot_threshold = 25;
        config.snapshot_stagger = true;
        config.snapshot_chunk_bytes = 24;
    }
    config
}

/// Check the recorded history for linearizability and the client for protocol errors.
pub fn check_history(sim: &Sim<Kv>) -> Result<usize, String> {
    let clients = sim
        .workload::<KvClients>()
        .ok_or("the workload is not KvClients")?;
    if let Some(e) = clients.errors.first() {
        return Err(format!("client error: {e}"));
    }
    match check_kv(&clients.history) {
        CheckResult::Ok => Ok(clients.history.len()),
        CheckResult::Violation(counter_example) => Err(format!("{counter_example}")),
        other => Err(format!("linearizability check gave no answer: {other:?}")),
    }
}

/// A change made to every server as it is built: tests use it to plant a bug.
pub type Tweak = fn(&mut Kv);

/// No change.
pub fn as_is(_: &mut Kv) {}

/// A simulated group of all `cfg.nodes` servers, with the Figure 3 invariants installed.
pub fn cluster(cfg: SimConfig, tweak: Tweak) -> Sim<Kv> {
    let voters = cfg.nodes;
    cluster_of(cfg, voters, tweak)
}

/// A group whose initial voters are the first `voters` of `cfg.nodes` servers. Half the
/// seeds snapshot and compact often; on half of them (independently) followers propose
/// client writes through Raft and answer them ([`RaftConfig::follower_proposals`]).
pub fn cluster_of(cfg: SimConfig, voters: u32, tweak: Tweak) -> Sim<Kv> {
    let snapshots = (cfg.seed / 2) % 2 == 1;
    let proposals = (cfg.seed / 4) % 2 == 1;
    let batched = (cfg.seed / 8) % 2 == 1;
    let mut sim = Sim::new(cfg, move |_me: NodeId| {
        let mut config = test_config(voters, snapshots);
        config.follower_proposals = proposals;
        // The simulator ends a batch after every input, so this covers the deferred
        // path without changing when messages leave.
        config.replicate_at_batch_end = batched;
        let mut raft = Raft::new(config, KvStateMachine::default());
        tweak(&mut raft);
        raft
    });
    install_invariants(&mut sim);
    sim
}

/// Random fault mixes (partitions of every kind, crashes with torn unsynced writes,
/// pauses, clogged links), a lossy, duplicating, reordering network and drifting clocks;
/// 3 or 5 servers, 4 clients, leadership transfers on a third of the seeds. Checks the
/// invariants after every event and the history at the end.
pub fn swarm_scenario(seed: u64, tweak: Tweak) -> Result<(), String> {
    let nodes = match seed % 2 {
        0 => 3,
        _ => 5,
    };
    let cfg = swarm_config(seed, nodes);
    let mut sim = cluster(cfg, tweak);
    sim.set_workload(KvClients::new(4, Duration::from_secs(5), seed % 3 < 1));
    sim.run_for(Duration::from_secs(6))
        .map_err(|f| f.to_string())?;
    check_history(&sim).map(|_| ())
}

/// Liveness: after chaos faults heal, a leader is elected and every client completes an
/// operation within 3 s of virtual time.
pub fn liveness_scenario(seed: u64) -> Result<(), String> {
    let mut cfg = SimConfig::new(seed, 5);
    cfg.faults = FaultConfig::chaos();
    cfg.net = NetConfig::lossy();
    let mut sim = cluster(cfg, as_is);
    let heal = Duration::from_secs(2);
    sim.set_workload(KvClients::new(3, Duration::from_secs(60), false));
    let heal_ns = heal.as_nanos() as u64;
    sim.run_liveness(heal, heal + Duration::from_secs(3), move |sim| {
        let leader = sim.actors().any(|(_, r)| r.role() == Role::Leader);
        let clients = sim.workload::<KvClients>();
        leader && clients.is_some_and(|c| c.last_ok_at.iter().all(|&t| t > heal_ns))
    })
    .map_err(|f| f.to_string())?;
    check_history(&sim).map(|_| ())
}

/// Thesis ch. 4: single-server changes (add a learner, promote it once caught up,
/// remove a voter) cycling through a 4-server group under random faults.
pub fn membership_scenario(seed: u64, tweak: Tweak) -> Result<(), String> {
    let mut cfg = SimConfig::new(seed, 4);
    cfg.faults = swarm_faults(seed);
    cfg.net = swarm_net(seed);
    let mut sim = cluster_of(cfg, 3, tweak);
    sim.set_workload(KvClients::new(3, Duration::from_secs(5), false).with_membership_changes(4));
    sim.run_for(Duration::from_secs(6))
        .map_err(|f| f.to_string())?;
    check_history(&sim).map(|_| ())
}

/// Thesis §6.4.1: with leases on (and a drift bound of 1000 ppm above the simulator's
/// 200 ppm), reads served from the lease stay linearizable under faults.
pub fn lease_scenario(seed: u64, tweak: Tweak) -> Result<(), String> {
    let cfg = swarm_config(seed, 3);
    let mut sim = Sim::new(cfg, move |_me: NodeId| {
        let mut config = test_config(3, false);
        config.lease_read_max_drift_ppm = Some(1000);
        // The lease must not rely on CheckQuorum deposing a stale leader in time.
        config.check_quorum = false;
        let mut raft = Raft::new(config, KvStateMachine::default());
        tweak(&mut raft);
        raft
    });
    install_invariants(&mut sim);
    sim.set_workload(KvClients::new(4, Duration::from_secs(5), seed % 2 < 1).with_readers(2));
    sim.run_for(Duration::from_secs(6))
        .map_err(|f| f.to_string())?;
    check_history(&sim).map(|_| ())
}

/// The random stream that places the crash in Figure 16's runs.
const FIGURE_16_STREAM: u64 = 0xf16;

/// The setup of Figure 16 of the paper: five servers, a broadcast time of about 15 ms,
/// election timeouts drawn from `[min, max]`, and heartbeats at half the minimum.
#[derive(Clone, Copy, Debug)]
pub struct ElectionSetup {
    /// The least election timeout.
    pub min: Duration,
    /// The greatest election timeout.
    pub max: Duration,
    /// Pre-vote on (ours by default; the paper's Figure 16 predates it).
    pub pre_vote: bool,
    /// The fixed part of the one-way network latency.
    pub latency_floor: Duration,
    /// The mean of the exponential part of the one-way latency.
    pub latency_tail: Duration,
}

impl ElectionSetup {
    /// Timeouts from `min_ms` to `max_ms`, no pre-vote, one-way latency 6 ms plus an
    /// exponential tail with mean 1.5 ms: a broadcast time of about 15 ms.
    pub fn figure_16(min_ms: u64, max_ms: u64) -> Self {
        ElectionSetup {
            min: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms),
            pre_vote: false,
            latency_floor: Duration::from_millis(6),
            latency_tail: Duration::from_micros(1500),
        }
    }
}

/// Leader-election downtime after a leader crash, in virtual time: the time from the
/// crash until a new leader is elected (Figure 16). As in the paper, the leader crashes
/// at a uniformly random point of its heartbeat interval. `None` when no leader emerged
/// within `give_up`.
pub fn election_downtime(seed: u64, setup: ElectionSetup, give_up: Duration) -> Option<Duration> {
    let mut cfg = SimConfig::new(seed, 5);
    cfg.net = NetConfig {
        min_latency: setup.latency_floor,
        latency_tail: setup.latency_tail,
        ..NetConfig::lan()
    };
    // Quartz clocks run up to 100 ppm apart. Without any drift or timer jitter, servers
    // with equal fixed timeouts keep their phase differences forever and split every
    // vote; drift is what lets the paper's 150-150 ms runs end at all.
    cfg.clocks = ClockConfig {
        max_skew: Duration::ZERO,
        max_drift_ppm: 100.0,
    };
    let heartbeat = setup.min / 2;
    let mut sim = Sim::new(cfg, move |_me: NodeId| {
        let mut config = RaftConfig::new((0..5).map(NodeId).collect());
        config.election_timeout = setup.min;
        config.election_timeout_spread = setup.max.saturating_sub(setup.min);
        config.heartbeat_interval = heartbeat;
        config.pre_vote = setup.pre_vote;
        Raft::new(config, KvStateMachine::default())
    });
    // Let the first election (which may itself split votes) settle.
    sim.run_for(Duration::from_secs(2)).ok()?;
    while !sim.actors().any(|(_, r)| r.role() == Role::Leader) {
        if sim.now() > Duration::from_secs(120) || !sim.step() {
            return None;
        }
    }
    // Crash at a random point of the heartbeat interval, drawn from a stream of its own.
    let offset = synod_sim::stream_rng(seed, FIGURE_16_STREAM)
        .gen_range(0..heartbeat.as_nanos().max(1) as u64);
    sim.run_for(Duration::from_nanos(offset)).ok()?;
    let (leader, term) = sim
        .actors()
        .find(|(_, r)| r.role() == Role::Leader)
        .map(|(n, r)| (n, r.current_term()))?;
    sim.crash(leader);
    let crashed_at = sim.now();
    while sim.now() < crashed_at + give_up {
        if !sim.step() {
            return None;
        }
        if sim
            .actors()
            .any(|(_, r)| r.role() == Role::Leader && r.current_term() > term)
        {
            return Some(sim.now() - crashed_at);
        }
    }
    None
}

/// What [`commit_throughput`] measured.
#[derive(Clone, Debug)]
pub struct Throughput {
    /// Operations that completed `ok` (writes committed and applied, reads served).
    pub completed: usize,
    /// Of those, the writes (put, cas, delete).
    pub writes: usize,
    /// Completion latencies of the `ok` operations, in virtual nanoseconds, sorted.
    pub latencies: Vec<u64>,
    /// Messages the simulator delivered.
    pub messages: u64,
}

/// Fault-free commit throughput: `clients` closed-loop clients (0–5 ms think time)
/// against `nodes` servers with the fast test timing, for `run` of virtual time.
pub fn commit_throughput(seed: u64, nodes: u32, clients: u64, run: Duration) -> Throughput {
    use synod_check::history::Completion;
    let mut sim = cluster(SimConfig::new(seed, nodes), as_is);
    sim.set_workload(KvClients::new(clients, run, false));
    let _ = sim.run_for(run);
    let mut latencies = Vec::new();
    let mut writes = 0;
    if let Some(c) = sim.workload::<KvClients>() {
        for op in c.history.operations() {
            if let Completion::Ok { time, .. } = op.completion {
                latencies.push(time.saturating_sub(op.invoke));
                writes += usize::from(!matches!(op.op, Op::Read { .. }));
            }
        }
    }
    latencies.sort_unstable();
    Throughput {
        completed: latencies.len(),
        writes,
        latencies,
        messages: sim.stats().delivered,
    }
}
