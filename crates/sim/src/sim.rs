//! The simulator proper: an event queue in virtual time driving a set of actors.

use crate::config::SimConfig;
use crate::trace::{Trace, TraceEvent};
use crate::workload::{ClientCtl, Workload};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt;
use std::path::Path;
use std::time::Duration;
use synod_core::{
    duration_nanos, Actor, ActorRng, Background, ClientId, Ctx, Effect, Endpoint, Instant,
    MemStorage, NodeId,
};

/// Independent random streams, one per concern, all derived from the run seed. Adding a
/// draw to one concern (say, the disk) does not shift what another (the network) sees.
mod stream {
    pub(super) const NETWORK: u64 = 1;
    pub(super) const DISK: u64 = 2;
    pub(super) const FAULTS: u64 = 3;
    pub(super) const CLOCKS: u64 = 4;
    pub(super) const WORKLOAD: u64 = 5;
    pub(super) const NODE_BASE: u64 = 1 << 32;
}

/// A random stream for `purpose`, derived from `seed`.
pub fn stream_rng(seed: u64, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(purpose);
    rng
}

/// Node clocks start far from zero so that a negative skew still gives a valid [`Instant`].
const CLOCK_BASE_NS: i128 = 1_000_000 * 1_000_000_000;

/// Why a run failed. `Display` names the seed, so every failure can be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFailure {
    /// The run seed.
    pub seed: u64,
    /// Simulated time of the failure, in nanoseconds.
    pub at: u64,
    /// Which check failed: an invariant's name, `liveness`, or `budget`.
    pub check: String,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed `{}` at {}: {}",
            self.seed,
            self.check,
            Instant(self.at),
            self.message
        )
    }
}

impl std::error::Error for SimFailure {}

/// Counters for a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events processed.
    pub events: u64,
    /// Messages handed to the network (node to node, node to client, client to node).
    pub sent: u64,
    /// Messages delivered to a live node or a client.
    pub delivered: u64,
    /// Messages lost to random loss.
    pub dropped_loss: u64,
    /// Messages lost to a partition.
    pub dropped_partition: u64,
    /// Messages that arrived at a crashed node.
    pub dropped_crashed: u64,
    /// Extra copies delivered by duplication.
    pub duplicated: u64,
    /// Timers fired.
    pub timers: u64,
    /// Storage syncs completed.
    pub syncs: u64,
    /// Crashes, by the fault plan, a disk error or the harness.
    pub crashes: u64,
    /// Restarts.
    pub restarts: u64,
}

/// Output held back until its batch is durable.
enum Held<M> {
    Send(NodeId, M),
    Reply(ClientId, M),
}

struct NodeSlot<A: Actor> {
    actor: Option<A>,
    storage: MemStorage,
    rng: ActorRng,
    /// Offset from true time at true time zero, in ns.
    clock_offset: i128,
    /// Rate error in parts per billion.
    drift_ppb: i128,
    timers: BTreeMap<A::Timer, u64>,
    /// Bumped on every crash so that events of an earlier life are ignored.
    incarnation: u32,
    paused_until: u64,
    /// Group commit: the batch collecting writes now, whether it has any, the batch whose
    /// sync is in flight, and the newest durable batch.
    open_batch: u64,
    open_dirty: bool,
    in_flight: Option<u64>,
    durable_batch: u64,
    held: VecDeque<(u64, Held<A::Msg>)>,
}

enum EventKind<A: Actor> {
    Deliver {
        id: u64,
        from: Endpoint,
        to: NodeId,
        msg: A::Msg,
    },
    ToClient {
        id: u64,
        from: NodeId,
        to: ClientId,
        msg: A::Msg,
    },
    Timer {
        node: NodeId,
        incarnation: u32,
        token: u64,
        key: A::Timer,
    },
    SyncDone {
        node: NodeId,
        incarnation: u32,
        batch: u64,
        writes: usize,
    },
    /// A node's background work finishes (lost if the node crashed meanwhile).
    Background {
        node: NodeId,
        incarnation: u32,
        task: Background<A::Msg>,
    },
    Restart {
        node: NodeId,
        incarnation: u32,
    },
    Nemesis,
    Heal {
        fault: u64,
    },
    ClientTimer {
        client: ClientId,
        key: u64,
    },
}

impl<A: Actor> EventKind<A> {
    /// The node whose handlers this event runs, if any: such events wait out a pause.
    fn node(&self) -> Option<NodeId> {
        match self {
            EventKind::Deliver { to, .. } => Some(*to),
            EventKind::Timer { node, .. }
            | EventKind::SyncDone { node, .. }
            | EventKind::Background { node, .. } => Some(*node),
            _ => None,
        }
    }
}

struct Scheduled<A: Actor> {
    time: u64,
    seq: u64,
    kind: EventKind<A>,
}

impl<A: Actor> PartialEq for Scheduled<A> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl<A: Actor> Eq for Scheduled<A> {}
impl<A: Actor> PartialOrd for Scheduled<A> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<A: Actor> Ord for Scheduled<A> {
    // Reversed: BinaryHeap is a max-heap and we want the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// A fault the plan injected and will heal.
#[derive(Debug, Clone)]
enum ActiveFault {
    Links(Vec<(NodeId, NodeId)>),
    Crash(NodeId),
    Pause,
    Clog,
}

type Invariant<A> = Box<dyn Fn(&Sim<A>) -> Result<(), String>>;

/// A deterministic simulation of `nodes` copies of actor `A`.
///
/// Build it with [`Sim::new`], add invariants with [`Sim::invariant`] and a client workload
/// with [`Sim::set_workload`], then drive it with [`Sim::run_for`], [`Sim::run_until`] or
/// [`Sim::run_liveness`]. The harness can also inject faults by hand: [`Sim::crash`],
/// [`Sim::restart`], [`Sim::partition`], [`Sim::pause`], [`Sim::clog`], [`Sim::heal_all`].
pub struct Sim<A: Actor> {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    started: bool,
    queue: BinaryHeap<Scheduled<A>>,
    nodes: Vec<NodeSlot<A>>,
    factory: Box<dyn FnMut(NodeId) -> A>,
    net_rng: ChaCha8Rng,
    disk_rng: ChaCha8Rng,
    fault_rng: ChaCha8Rng,
    pub(crate) workload_rng: ChaCha8Rng,
    /// Partition counts per directed link: a link is cut while its count is positive.
    blocked: Vec<u16>,
    /// A clogged link delays everything sent on it until this true time.
    clogged_until: Vec<u64>,
    next_msg_id: u64,
    next_token: u64,
    next_fault: u64,
    faults: BTreeMap<u64, ActiveFault>,
    nemesis_on: bool,
    trace: Option<Trace>,
    stats: SimStats,
    invariants: Vec<(String, Invariant<A>)>,
    workload: Option<Box<dyn Workload<A>>>,
    replies: Vec<(ClientId, NodeId, A::Msg)>,
    effects: Vec<Effect<A::Msg, A::Timer>>,
    max_events: u64,
    failure: Option<SimFailure>,
}

impl<A: Actor> Sim<A> {
    /// A simulation of `cfg.nodes` actors built by `factory`. The factory is called again
    /// for a node that restarts after a crash; the new actor rebuilds from storage.
    pub fn new(cfg: SimConfig, factory: impl FnMut(NodeId) -> A + 'static) -> Self {
        let n = cfg.nodes as usize;
        let mut clock_rng = stream_rng(cfg.seed, stream::CLOCKS);
        let nodes = (0..cfg.nodes)
            .map(|i| {
                let skew = duration_nanos(cfg.clocks.max_skew) as i128;
                let drift = (cfg.clocks.max_drift_ppm * 1000.0) as i128;
                NodeSlot {
                    actor: None,
                    storage: MemStorage::new(),
                    rng: stream_rng(cfg.seed, stream::NODE_BASE + u64::from(i)),
                    clock_offset: if skew > 0 {
                        clock_rng.gen_range(-skew..=skew)
                    } else {
                        0
                    },
                    drift_ppb: if drift > 0 {
                        clock_rng.gen_range(-drift..=drift)
                    } else {
                        0
                    },
                    timers: BTreeMap::new(),
                    incarnation: 0,
                    paused_until: 0,
                    open_batch: 1,
                    open_dirty: false,
                    in_flight: None,
                    durable_batch: 0,
                    held: VecDeque::new(),
                }
            })
            .collect();
        Sim {
            net_rng: stream_rng(cfg.seed, stream::NETWORK),
            disk_rng: stream_rng(cfg.seed, stream::DISK),
            fault_rng: stream_rng(cfg.seed, stream::FAULTS),
            workload_rng: stream_rng(cfg.seed, stream::WORKLOAD),
            nemesis_on: cfg.faults.enabled(),
            cfg,
            now: 0,
            seq: 0,
            started: false,
            queue: BinaryHeap::new(),
            nodes,
            factory: Box::new(factory),
            blocked: vec![0; n * n],
            clogged_until: vec![0; n * n],
            next_msg_id: 0,
            next_token: 0,
            next_fault: 0,
            faults: BTreeMap::new(),
            trace: None,
            stats: SimStats::default(),
            invariants: Vec::new(),
            workload: None,
            replies: Vec::new(),
            effects: Vec::new(),
            max_events: u64::MAX,
            failure: None,
        }
    }

    // ---- configuration -------------------------------------------------------------

    /// Record a trace hash (and nothing else), for determinism checks.
    pub fn trace_hash_only(&mut self) {
        self.trace = Some(Trace::hash_only());
    }

    /// Write a JSONL trace to `path`. Fails if the file cannot be created.
    pub fn trace_to_file(&mut self, path: &Path) -> std::io::Result<()> {
        self.trace = Some(Trace::to_file(path)?);
        Ok(())
    }

    /// Check `check` after every event; the run fails at the first violation.
    pub fn invariant(
        &mut self,
        name: impl Into<String>,
        check: impl Fn(&Sim<A>) -> Result<(), String> + 'static,
    ) {
        self.invariants.push((name.into(), Box::new(check)));
    }

    /// Drive clients with `workload`. Without one, replies are kept for
    /// [`Sim::take_replies`].
    pub fn set_workload(&mut self, workload: impl Workload<A> + 'static) {
        self.workload = Some(Box::new(workload));
    }

    /// The workload, to read its history after the run.
    pub fn workload<W: Workload<A> + 'static>(&self) -> Option<&W> {
        let w: &dyn std::any::Any = self.workload.as_deref()?;
        w.downcast_ref::<W>()
    }

    /// Fail the run after this many events (a livelock guard).
    pub fn set_max_events(&mut self, max: u64) {
        self.max_events = max;
    }

    // ---- inspection ----------------------------------------------------------------

    /// The run's configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// True simulated time.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    /// Every node id.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.cfg.nodes).map(NodeId)
    }

    /// The actor on `node`, or `None` while it is crashed.
    pub fn actor(&self, node: NodeId) -> Option<&A> {
        self.nodes.get(node.index())?.actor.as_ref()
    }

    /// Every live actor with its id.
    pub fn actors(&self) -> impl Iterator<Item = (NodeId, &A)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((NodeId(i as u32), s.actor.as_ref()?)))
    }

    /// `node`'s storage, including unsynced writes.
    pub fn storage(&self, node: NodeId) -> Option<&MemStorage> {
        self.nodes.get(node.index()).map(|s| &s.storage)
    }

    /// What `node`'s clock reads now.
    pub fn local_now(&self, node: NodeId) -> Instant {
        self.local_time(node.index(), self.now)
    }

    /// Whether `node` is running (not crashed; it may be paused).
    pub fn is_up(&self, node: NodeId) -> bool {
        self.actor(node).is_some()
    }

    /// Counters so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The hash of the trace so far, if tracing is on.
    pub fn trace_hash(&self) -> Option<u64> {
        self.trace.as_ref().map(Trace::hash)
    }

    /// Lines written to the trace so far.
    pub fn trace_lines(&self) -> u64 {
        self.trace.as_ref().map_or(0, Trace::lines)
    }

    /// Replies collected when no workload is set.
    pub fn take_replies(&mut self) -> Vec<(ClientId, NodeId, A::Msg)> {
        std::mem::take(&mut self.replies)
    }

    /// Flush the trace file. A write error anywhere in the run is reported here.
    pub fn finish_trace(&mut self) -> std::io::Result<()> {
        match &mut self.trace {
            Some(trace) => trace.finish(),
            None => Ok(()),
        }
    }

    // ---- running -------------------------------------------------------------------

    /// Start every node, the workload and the fault plan. Runs by itself on first use.
    pub fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        for i in 0..self.nodes.len() {
            self.boot(i);
        }
        if let Some(mut w) = self.workload.take() {
            w.on_start(&mut ClientCtl { sim: self });
            self.workload = Some(w);
        }
        if self.nemesis_on {
            self.schedule_nemesis();
        }
        self.check_invariants();
    }

    /// Process the next event. Returns false when nothing is left to do or the run failed.
    pub fn step(&mut self) -> bool {
        self.start();
        if self.failure.is_some() {
            return false;
        }
        let Some(ev) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(ev.time);
        self.stats.events += 1;
        if self.stats.events > self.max_events {
            self.fail("budget", format!("more than {} events", self.max_events));
            return false;
        }
        if let Some(node) = ev.kind.node() {
            let until = self.nodes[node.index()].paused_until;
            if until > self.now {
                // A paused process handles nothing; its inputs wait, in order.
                self.push(until, ev.kind);
                return true;
            }
        }
        self.handle(ev.kind);
        self.check_invariants();
        self.failure.is_none()
    }

    /// Run until true time `until`. Stops early at the first failure.
    pub fn run_until(&mut self, until: Duration) -> Result<(), SimFailure> {
        self.start();
        let until = duration_nanos(until);
        while self.failure.is_none() {
            match self.queue.peek() {
                Some(ev) if ev.time <= until => {
                    self.step();
                }
                _ => break,
            }
        }
        if let Some(f) = &self.failure {
            return Err(f.clone());
        }
        self.now = self.now.max(until);
        Ok(())
    }

    /// Run for `d` more of true time.
    pub fn run_for(&mut self, d: Duration) -> Result<(), SimFailure> {
        self.run_until(self.now() + d)
    }

    /// Liveness mode: run with faults until `faults_until`, then heal everything and stop
    /// injecting, then require `converged` to hold by `deadline`. Returns the true time at
    /// which it first held.
    pub fn run_liveness(
        &mut self,
        faults_until: Duration,
        deadline: Duration,
        converged: impl Fn(&Sim<A>) -> bool,
    ) -> Result<Duration, SimFailure> {
        self.run_until(faults_until)?;
        self.heal_all();
        let deadline_ns = duration_nanos(deadline);
        loop {
            if converged(self) {
                return Ok(self.now());
            }
            let next = self.queue.peek().map(|e| e.time);
            match next {
                Some(t) if t <= deadline_ns => {
                    self.step();
                    if let Some(f) = &self.failure {
                        return Err(f.clone());
                    }
                }
                _ => {
                    self.now = self.now.max(deadline_ns);
                    return Err(self.fail(
                        "liveness",
                        format!(
                            "not converged by {} ({} after healing at {})",
                            Instant(deadline_ns),
                            Instant(deadline_ns.saturating_sub(duration_nanos(faults_until))),
                            Instant(duration_nanos(faults_until)),
                        ),
                    ));
                }
            }
        }
    }

    /// Send a request from `client` to `node` over the simulated network.
    pub fn client_send(&mut self, client: ClientId, node: NodeId, msg: A::Msg) {
        self.start();
        self.transmit(Endpoint::Client(client), Endpoint::Node(node), msg);
    }

    /// Add a note to the trace (no effect on the run).
    pub fn note(&mut self, text: &str) {
        let t = self.now;
        if let Some(trace) = &mut self.trace {
            trace.record(&TraceEvent::Note { t, text });
        }
    }

    // ---- faults by hand ------------------------------------------------------------

    /// Crash `node` now: its actor, timers, held output and unsynced writes are lost,
    /// except a random prefix of the unsynced writes that reached the disk.
    pub fn crash(&mut self, node: NodeId) {
        self.start();
        self.crash_node(node.index());
    }

    /// Restart a crashed `node` now. No effect on a running node.
    pub fn restart(&mut self, node: NodeId) {
        self.start();
        if self.nodes[node.index()].actor.is_none() {
            self.stats.restarts += 1;
            let t = self.now;
            if let Some(trace) = &mut self.trace {
                trace.record(&TraceEvent::Restart { t, node: node.0 });
            }
            self.boot(node.index());
        }
    }

    /// Cut every link between nodes of different groups, both ways, until
    /// [`Sim::heal_network`].
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        for link in Self::links_between_groups(groups, true) {
            self.block(link.0, link.1);
        }
        self.note_fault(&format!("partition {groups:?}"));
    }

    /// Cut the link from `from` to `to` (one direction).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        let i = self.link(from, to);
        self.blocked[i] = self.blocked[i].saturating_add(1);
    }

    /// Pause `node` for `d`: it handles nothing until then.
    pub fn pause(&mut self, node: NodeId, d: Duration) {
        let until = self.now + duration_nanos(d);
        let slot = &mut self.nodes[node.index()];
        slot.paused_until = slot.paused_until.max(until);
        self.note_fault(&format!("pause {node} for {d:?}"));
    }

    /// Delay everything sent from `from` to `to` until `d` from now.
    pub fn clog(&mut self, from: NodeId, to: NodeId, d: Duration) {
        let i = self.link(from, to);
        self.clogged_until[i] = self.clogged_until[i].max(self.now + duration_nanos(d));
        self.note_fault(&format!("clog {from}->{to} for {d:?}"));
    }

    /// Heal every partition now.
    pub fn heal_network(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = 0);
        self.clogged_until.iter_mut().for_each(|c| *c = 0);
        self.faults
            .retain(|_, f| !matches!(f, ActiveFault::Links(_) | ActiveFault::Clog));
    }

    /// Stop the fault plan and undo every fault: heal links, resume paused nodes, restart
    /// crashed ones.
    pub fn heal_all(&mut self) {
        self.start();
        self.nemesis_on = false;
        self.heal_network();
        self.faults.clear();
        for i in 0..self.nodes.len() {
            self.nodes[i].paused_until = 0;
            self.restart(NodeId(i as u32));
        }
        self.note_fault("heal all");
    }

    // ---- internals -----------------------------------------------------------------

    /// Record a failure (the first one wins) and return the recorded failure.
    fn fail(&mut self, check: &str, message: String) -> SimFailure {
        let (seed, at) = (self.cfg.seed, self.now);
        self.failure
            .get_or_insert_with(|| SimFailure {
                seed,
                at,
                check: check.to_string(),
                message,
            })
            .clone()
    }

    fn check_invariants(&mut self) {
        if self.invariants.is_empty() || self.failure.is_some() {
            return;
        }
        let invariants = std::mem::take(&mut self.invariants);
        for (name, check) in &invariants {
            if let Err(message) = check(self) {
                self.fail(name, message);
                break;
            }
        }
        self.invariants = invariants;
    }

    fn push(&mut self, time: u64, kind: EventKind<A>) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time,
            seq: self.seq,
            kind,
        });
    }

    fn link(&self, from: NodeId, to: NodeId) -> usize {
        from.index() * self.nodes.len() + to.index()
    }

    fn local_time(&self, i: usize, true_ns: u64) -> Instant {
        let slot = &self.nodes[i];
        let t = i128::from(true_ns);
        let local = CLOCK_BASE_NS + slot.clock_offset + t + t * slot.drift_ppb / 1_000_000_000;
        Instant(local.clamp(0, i128::from(u64::MAX)) as u64)
    }

    /// True time for `after` of node `i`'s clock to pass.
    fn true_delay(&self, i: usize, after: Duration) -> u64 {
        let after = i128::from(duration_nanos(after));
        let rate = 1_000_000_000 + self.nodes[i].drift_ppb;
        (after * 1_000_000_000 / rate.max(1)).clamp(0, i128::from(u64::MAX)) as u64
    }

    fn boot(&mut self, i: usize) {
        let node = NodeId(i as u32);
        let actor = (self.factory)(node);
        self.nodes[i].actor = Some(actor);
        self.run_handler(i, |a, ctx| a.on_start(ctx));
    }

    /// Run one handler on node `i` and apply its effects under the group-commit rules.
    fn run_handler(&mut self, i: usize, f: impl FnOnce(&mut A, &mut Ctx<'_, A::Msg, A::Timer>)) {
        let now_local = self.local_time(i, self.now);
        let mut effects = std::mem::take(&mut self.effects);
        let slot = &mut self.nodes[i];
        let Some(actor) = slot.actor.as_mut() else {
            self.effects = effects;
            return;
        };
        let writes_before = slot.storage.pending_writes();
        {
            let mut ctx = Ctx::new(
                NodeId(i as u32),
                now_local,
                &mut slot.rng,
                &mut slot.storage,
                &mut effects,
            );
            f(actor, &mut ctx);
            // The simulator delivers one input at a time: each is its own batch.
            actor.on_batch_end(&mut ctx);
        }
        if slot.storage.pending_writes() != writes_before {
            slot.open_dirty = true;
        }
        // Output waits for every write issued so far: this step's reads saw them.
        let required = if slot.open_dirty {
            Some(slot.open_batch)
        } else {
            slot.in_flight
        };
        let from = NodeId(i as u32);
        for effect in effects.drain(..) {
            match effect {
                Effect::SendUnsynced { to, msg } => {
                    self.transmit(Endpoint::Node(from), Endpoint::Node(to), msg);
                }
                Effect::Send { to, msg } => match required {
                    Some(b) => self.nodes[i].held.push_back((b, Held::Send(to, msg))),
                    None => self.transmit(Endpoint::Node(from), Endpoint::Node(to), msg),
                },
                Effect::Reply { to, msg } => match required {
                    Some(b) => self.nodes[i].held.push_back((b, Held::Reply(to, msg))),
                    None => self.transmit(Endpoint::Node(from), Endpoint::Client(to), msg),
                },
                Effect::SetTimer { key, after } => {
                    self.next_token += 1;
                    let token = self.next_token;
                    let at = self.now.saturating_add(self.true_delay(i, after));
                    let slot = &mut self.nodes[i];
                    slot.timers.insert(key.clone(), token);
                    let incarnation = slot.incarnation;
                    self.push(
                        at,
                        EventKind::Timer {
                            node: from,
                            incarnation,
                            token,
                            key,
                        },
                    );
                }
                Effect::CancelTimer { key } => {
                    self.nodes[i].timers.remove(&key);
                }
                Effect::Background(task) => {
                    let disk = &self.cfg.disk;
                    let least = duration_nanos(disk.min_sync);
                    let most = duration_nanos(disk.background_work).max(least);
                    let took = self.disk_rng.gen_range(least..=most);
                    let incarnation = self.nodes[i].incarnation;
                    self.push(
                        self.now + took,
                        EventKind::Background {
                            node: from,
                            incarnation,
                            task,
                        },
                    );
                }
            }
        }
        self.effects = effects;
        self.maybe_start_sync(i);
    }

    fn maybe_start_sync(&mut self, i: usize) {
        let slot = &mut self.nodes[i];
        if !slot.open_dirty || slot.in_flight.is_some() {
            return;
        }
        let batch = slot.open_batch;
        let writes = slot.storage.pending_writes();
        slot.in_flight = Some(batch);
        slot.open_batch += 1;
        slot.open_dirty = false;
        let incarnation = slot.incarnation;
        let disk = &self.cfg.disk;
        let jitter = duration_nanos(disk.sync_jitter);
        let took = duration_nanos(disk.min_sync)
            + if jitter > 0 {
                self.disk_rng.gen_range(0..=jitter)
            } else {
                0
            };
        self.push(
            self.now + took,
            EventKind::SyncDone {
                node: NodeId(i as u32),
                incarnation,
                batch,
                writes,
            },
        );
    }

    fn sync_done(&mut self, i: usize, batch: u64, writes: usize) {
        if self.cfg.disk.io_error > 0.0 && self.disk_rng.gen_bool(self.cfg.disk.io_error) {
            self.note_fault(&format!("fsync failed on n{i}; node stops"));
            self.crash_node(i);
            self.schedule_restart(i);
            return;
        }
        self.stats.syncs += 1;
        let slot = &mut self.nodes[i];
        slot.storage.sync_first(writes);
        slot.durable_batch = batch;
        slot.in_flight = None;
        let mut released = 0;
        while let Some((b, _)) = self.nodes[i].held.front() {
            if *b > batch {
                break;
            }
            let Some((b, out)) = self.nodes[i].held.pop_front() else {
                break;
            };
            // Group commit's promise (DESIGN.md): no output leaves before its batch is durable.
            assert!(
                b <= self.nodes[i].durable_batch,
                "held output of batch {b} released before it was durable"
            );
            released += 1;
            let from = Endpoint::Node(NodeId(i as u32));
            match out {
                Held::Send(to, msg) => self.transmit(from, Endpoint::Node(to), msg),
                Held::Reply(to, msg) => self.transmit(from, Endpoint::Client(to), msg),
            }
        }
        let t = self.now;
        if let Some(trace) = &mut self.trace {
            trace.record(&TraceEvent::Sync {
                t,
                node: i as u32,
                batch,
                released,
            });
        }
        self.maybe_start_sync(i);
    }

    fn crash_node(&mut self, i: usize) {
        let slot = &mut self.nodes[i];
        if slot.actor.is_none() {
            return;
        }
        let pending = slot.storage.pending_writes();
        let kept = if pending > 0 {
            self.disk_rng.gen_range(0..=pending)
        } else {
            0
        };
        slot.storage.crash(kept);
        slot.actor = None;
        slot.timers.clear();
        slot.held.clear();
        slot.incarnation += 1;
        slot.paused_until = 0;
        slot.open_dirty = false;
        slot.in_flight = None;
        self.stats.crashes += 1;
        let t = self.now;
        if let Some(trace) = &mut self.trace {
            trace.record(&TraceEvent::Crash {
                t,
                node: i as u32,
                kept,
                pending,
            });
        }
    }

    fn schedule_restart(&mut self, i: usize) {
        let span = self.fault_span();
        let incarnation = self.nodes[i].incarnation;
        self.push(
            self.now + span,
            EventKind::Restart {
                node: NodeId(i as u32),
                incarnation,
            },
        );
    }

    /// Hand `msg` to the network: loss, partitions, latency, reordering, duplication.
    fn transmit(&mut self, from: Endpoint, to: Endpoint, msg: A::Msg) {
        self.next_msg_id += 1;
        let id = self.next_msg_id;
        self.stats.sent += 1;
        let t = self.now;
        if let Some(trace) = &mut self.trace {
            let (f, d, m) = (from.to_string(), to.to_string(), format!("{msg:?}"));
            trace.record(&TraceEvent::Send {
                t,
                id,
                from: &f,
                to: &d,
                msg: &m,
            });
        }
        let (link, self_send) = match (from, to) {
            (Endpoint::Node(a), Endpoint::Node(b)) => (Some(self.link(a, b)), a == b),
            _ => (None, false),
        };
        if self_send {
            // Loopback inside one process: no network, no loss.
            if let Endpoint::Node(to) = to {
                self.push(self.now, EventKind::Deliver { id, from, to, msg });
            }
            return;
        }
        if let Some(l) = link {
            if self.blocked[l] > 0 {
                self.stats.dropped_partition += 1;
                self.trace_drop(id, "partition");
                return;
            }
        }
        let net = &self.cfg.net;
        if net.loss > 0.0 && self.net_rng.gen_bool(net.loss) {
            self.stats.dropped_loss += 1;
            self.trace_drop(id, "loss");
            return;
        }
        let copies = if net.duplicate > 0.0 && self.net_rng.gen_bool(net.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            let at = self.arrival_time(link);
            let msg = if copy + 1 < copies {
                msg.clone()
            } else {
                // The last copy takes the original; no clone on the common path.
                return self.schedule_arrival(at, id, from, to, msg);
            };
            self.schedule_arrival(at, id, from, to, msg);
        }
    }

    fn schedule_arrival(&mut self, at: u64, id: u64, from: Endpoint, to: Endpoint, msg: A::Msg) {
        match (from, to) {
            (_, Endpoint::Node(to)) => self.push(at, EventKind::Deliver { id, from, to, msg }),
            (Endpoint::Node(from), Endpoint::Client(to)) => {
                self.push(at, EventKind::ToClient { id, from, to, msg })
            }
            (Endpoint::Client(_), Endpoint::Client(_)) => {}
        }
    }

    fn arrival_time(&mut self, link: Option<usize>) -> u64 {
        let net = &self.cfg.net;
        let mut delay = duration_nanos(net.min_latency);
        let tail = duration_nanos(net.latency_tail);
        if tail > 0 {
            // Exponential tail: -ln(U) * mean, with U in (0, 1].
            let u: f64 = 1.0 - self.net_rng.gen::<f64>();
            delay += (-u.ln() * tail as f64) as u64;
        }
        if net.reorder > 0.0 && self.net_rng.gen_bool(net.reorder) {
            let window = duration_nanos(net.reorder_window);
            if window > 0 {
                delay += self.net_rng.gen_range(0..=window);
            }
        }
        let mut at = self.now + delay;
        if let Some(l) = link {
            let clog = self.clogged_until[l];
            if clog > self.now {
                at = at.max(clog + delay);
            }
        }
        at
    }

    fn trace_drop(&mut self, id: u64, why: &str) {
        let t = self.now;
        if let Some(trace) = &mut self.trace {
            trace.record(&TraceEvent::Drop { t, id, why });
        }
    }

    fn trace_deliver(&mut self, id: u64, to: Endpoint) {
        let t = self.now;
        if let Some(trace) = &mut self.trace {
            let d = to.to_string();
            trace.record(&TraceEvent::Deliver { t, id, to: &d });
        }
    }

    fn note_fault(&mut self, what: &str) {
        let t = self.now;
        if let Some(trace) = &mut self.trace {
            trace.record(&TraceEvent::Fault { t, what });
        }
    }

    fn handle(&mut self, kind: EventKind<A>) {
        match kind {
            EventKind::Deliver { id, from, to, msg } => {
                let i = to.index();
                if self.nodes[i].actor.is_none() {
                    self.stats.dropped_crashed += 1;
                    self.trace_drop(id, "crashed");
                    return;
                }
                self.stats.delivered += 1;
                self.trace_deliver(id, Endpoint::Node(to));
                self.run_handler(i, |a, ctx| a.on_message(ctx, from, msg));
            }
            EventKind::ToClient { id, from, to, msg } => {
                self.stats.delivered += 1;
                self.trace_deliver(id, Endpoint::Client(to));
                match self.workload.take() {
                    Some(mut w) => {
                        w.on_reply(&mut ClientCtl { sim: self }, to, from, msg);
                        self.workload = Some(w);
                    }
                    None => self.replies.push((to, from, msg)),
                }
            }
            EventKind::Timer {
                node,
                incarnation,
                token,
                key,
            } => {
                let i = node.index();
                let slot = &mut self.nodes[i];
                if slot.incarnation != incarnation || slot.timers.get(&key) != Some(&token) {
                    return; // cancelled, re-armed, or from before a crash
                }
                slot.timers.remove(&key);
                self.stats.timers += 1;
                let t = self.now;
                if let Some(trace) = &mut self.trace {
                    let k = format!("{key:?}");
                    trace.record(&TraceEvent::Timer {
                        t,
                        node: node.0,
                        timer: &k,
                    });
                }
                self.run_handler(i, |a, ctx| a.on_timer(ctx, key));
            }
            EventKind::SyncDone {
                node,
                incarnation,
                batch,
                writes,
            } => {
                if self.nodes[node.index()].incarnation == incarnation {
                    self.sync_done(node.index(), batch, writes);
                }
            }
            EventKind::Restart { node, incarnation } => {
                if self.nodes[node.index()].incarnation == incarnation {
                    self.restart(node);
                }
            }
            EventKind::Background {
                node,
                incarnation,
                task,
            } => {
                let i = node.index();
                let slot = &mut self.nodes[i];
                if slot.incarnation != incarnation || slot.actor.is_none() {
                    return; // the work died with the process
                }
                // The work fsyncs its blob itself: durable before the actor hears of it.
                let storage = &mut slot.storage;
                let Some(msg) = task.run(|name, bytes| storage.put_durable(name, bytes)) else {
                    return;
                };
                self.run_handler(i, |a, ctx| a.on_message(ctx, Endpoint::Node(node), msg));
            }
            EventKind::Nemesis => {
                if self.nemesis_on {
                    self.inject_fault();
                    self.schedule_nemesis();
                }
            }
            EventKind::Heal { fault } => self.heal_fault(fault),
            EventKind::ClientTimer { client, key } => {
                if let Some(mut w) = self.workload.take() {
                    w.on_timer(&mut ClientCtl { sim: self }, client, key);
                    self.workload = Some(w);
                }
            }
        }
    }

    pub(crate) fn schedule_client_timer(&mut self, client: ClientId, key: u64, after: Duration) {
        self.push(
            self.now + duration_nanos(after),
            EventKind::ClientTimer { client, key },
        );
    }

    // ---- the fault plan ------------------------------------------------------------

    fn schedule_nemesis(&mut self) {
        let mean = duration_nanos(self.cfg.faults.mean_interval) as f64;
        let u: f64 = 1.0 - self.fault_rng.gen::<f64>();
        let gap = (-u.ln() * mean) as u64;
        self.push(self.now + gap.max(1), EventKind::Nemesis);
    }

    fn fault_span(&mut self) -> u64 {
        let lo = duration_nanos(self.cfg.faults.min_duration);
        let hi = duration_nanos(self.cfg.faults.max_duration).max(lo);
        self.fault_rng.gen_range(lo..=hi)
    }

    fn down_count(&self) -> usize {
        self.faults
            .values()
            .filter(|f| matches!(f, ActiveFault::Crash(_) | ActiveFault::Pause))
            .count()
    }

    fn random_node(&mut self) -> NodeId {
        NodeId(self.fault_rng.gen_range(0..self.cfg.nodes))
    }

    fn random_split(&mut self) -> Vec<Vec<NodeId>> {
        let n = self.cfg.nodes;
        let mut ids: Vec<NodeId> = (0..n).map(NodeId).collect();
        for i in (1..ids.len()).rev() {
            let j = self.fault_rng.gen_range(0..=i);
            ids.swap(i, j);
        }
        let cut = self.fault_rng.gen_range(1..n.max(2)) as usize;
        let rest = ids.split_off(cut.min(ids.len()));
        vec![ids, rest]
    }

    fn links_between_groups(groups: &[Vec<NodeId>], both_ways: bool) -> Vec<(NodeId, NodeId)> {
        let mut links = Vec::new();
        for (gi, a) in groups.iter().enumerate() {
            for (gj, b) in groups.iter().enumerate() {
                if gi == gj || (!both_ways && gj < gi) {
                    continue;
                }
                for &x in a {
                    for &y in b {
                        links.push((x, y));
                    }
                }
            }
        }
        links
    }

    fn inject_fault(&mut self) {
        if self.cfg.nodes < 2 {
            return;
        }
        let f = self.cfg.faults.clone();
        let total = f.partition + f.crash + f.pause + f.clog;
        let mut pick = self.fault_rng.gen_range(0..total);
        let span = self.fault_span();
        let can_down = f.max_down.is_none_or(|m| self.down_count() < m);
        let fault = if pick < f.partition {
            let kind = self.fault_rng.gen_range(0..4);
            let (links, what) = match kind {
                0 => {
                    let groups = self.random_split();
                    let what = format!("symmetric partition {groups:?}");
                    (Self::links_between_groups(&groups, true), what)
                }
                1 => {
                    let groups = self.random_split();
                    let what = format!("asymmetric partition {:?} -/-> {:?}", groups[0], groups[1]);
                    (Self::links_between_groups(&groups, false), what)
                }
                2 => {
                    let lone = self.random_node();
                    let rest: Vec<NodeId> = self.node_ids().filter(|&x| x != lone).collect();
                    let what = format!("isolate {lone}");
                    (Self::links_between_groups(&[vec![lone], rest], true), what)
                }
                _ => {
                    // Each node joins one of up to three sides at random.
                    let sides = self.fault_rng.gen_range(2..=3usize);
                    let mut groups = vec![Vec::new(); sides];
                    for id in 0..self.cfg.nodes {
                        let s = self.fault_rng.gen_range(0..sides);
                        groups[s].push(NodeId(id));
                    }
                    let what = format!("random split {groups:?}");
                    (Self::links_between_groups(&groups, true), what)
                }
            };
            for &(a, b) in &links {
                self.block(a, b);
            }
            self.note_fault(&format!("{what} for {}ms", span / 1_000_000));
            Some(ActiveFault::Links(links))
        } else {
            pick -= f.partition;
            if pick < f.crash {
                let node = self.random_node();
                if can_down && self.is_up(node) {
                    self.note_fault(&format!("crash {node} for {}ms", span / 1_000_000));
                    self.crash_node(node.index());
                    Some(ActiveFault::Crash(node))
                } else {
                    None
                }
            } else if pick - f.crash < f.pause {
                let node = self.random_node();
                if can_down && self.is_up(node) {
                    self.pause(node, Duration::from_nanos(span));
                    Some(ActiveFault::Pause)
                } else {
                    None
                }
            } else {
                let a = self.random_node();
                let b = self.random_node();
                if a != b {
                    self.clog(a, b, Duration::from_nanos(span));
                    Some(ActiveFault::Clog)
                } else {
                    None
                }
            }
        };
        if let Some(fault) = fault {
            self.next_fault += 1;
            let id = self.next_fault;
            self.faults.insert(id, fault);
            self.push(self.now + span, EventKind::Heal { fault: id });
        }
    }

    fn heal_fault(&mut self, id: u64) {
        let Some(fault) = self.faults.remove(&id) else {
            return;
        };
        match fault {
            ActiveFault::Links(links) => {
                for (a, b) in links {
                    let i = self.link(a, b);
                    self.blocked[i] = self.blocked[i].saturating_sub(1);
                }
                self.note_fault("heal partition");
            }
            ActiveFault::Crash(node) => self.restart(node),
            ActiveFault::Pause | ActiveFault::Clog => {}
        }
    }
}
