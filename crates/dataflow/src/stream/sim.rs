//! The checkpoint protocol as actors in `synod-sim`: a coordinator, source tasks and window
//! tasks with transactional sinks, under crashes, partitions, pauses and message reordering.
//!
//! The actors run the same pure pieces as the executor ([`WindowOperator`],
//! [`BarrierAligner`], [`CheckpointCoordinator`], [`WatermarkTracker`]) and keep every durable
//! fact in `ctx.storage()`, so a crash loses exactly what the group-commit rule says it loses.
//!
//! - Node 0 is the coordinator. Each (re)start, each task that announces a restart and each
//!   checkpoint timeout begins a new **attempt**: the attempt number is stored, then every
//!   task is told to restore the latest complete checkpoint. Messages of older attempts are
//!   ignored, so a task never mixes state from two attempts.
//! - Sources read a deterministic partitioned input, record `(offset, watermark generator)`
//!   at barrier `n`, and send records, watermarks and barriers over FIFO channels (sequence
//!   numbers restore FIFO order over the reordering network).
//! - Window tasks align barriers, snapshot the window operator, pre-commit the firings since
//!   the last barrier, and acknowledge (the acknowledgement leaves only after the writes are
//!   durable). On `Commit(n)`, or on restore, pending output of checkpoints `≤ n` moves to
//!   the committed output.
//!
//! The check: the committed output equals the failure-free output exactly (each window's
//! count once, no window missing), whatever crashed when.

use super::checkpoint::{
    Alignment, BarrierAligner, BarrierOutcome, CheckpointCoordinator, CheckpointId, TaskId,
};
use super::jobs::InputSpec;
use super::time::{BoundedOutOfOrderness, EventTime, WatermarkTracker};
use super::window::{
    batch_windows, Collect, Count, Fired, Trigger, Window, WindowAssigner, WindowOperator,
    WindowState,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use synod_core::{Actor, Ctx, Endpoint, NodeId, StorageExt};
use synod_sim::{FaultConfig, NetConfig, Sim, SimConfig};

/// Deliberately broken variants, to show that the check catches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The sink publishes its output at the barrier instead of waiting for the checkpoint
    /// to complete (at-least-once): a restart replays records whose output was published.
    CommitBeforeComplete,
    /// Window tasks do not align: records behind a barrier are processed before the
    /// snapshot, so the snapshot counts records that the sources will replay.
    NoAlignment,
}

/// The shape of a simulated job.
#[derive(Clone, Debug)]
pub struct AbsSpec {
    /// Source tasks.
    pub sources: u32,
    /// Window tasks.
    pub windows: u32,
    /// The input.
    pub input: InputSpec,
    /// Tumbling window size.
    pub window_ms: u64,
    /// Watermark bound.
    pub bound_ms: u64,
    /// Records a source sends per emit tick (1 ms).
    pub per_tick: u64,
    /// Checkpoint interval.
    pub checkpoint_every: Duration,
    /// A checkpoint not complete after this long restarts the job.
    pub checkpoint_timeout: Duration,
    /// A deliberate bug, if any.
    pub broken: Option<Broken>,
}

impl AbsSpec {
    /// 2 sources, 2 window tasks, 3000 records over 10 keys and 1.5 s of event time.
    pub fn new(seed: u64) -> Self {
        let mut input = InputSpec::new(seed, 3_000, 2, 10);
        input.rate = 2_000;
        input.disorder_ms = 30;
        AbsSpec {
            sources: 2,
            windows: 2,
            input,
            window_ms: 100,
            bound_ms: 30,
            per_tick: 4,
            checkpoint_every: Duration::from_millis(40),
            checkpoint_timeout: Duration::from_millis(400),
            broken: None,
        }
    }

    fn key_of(&self, g: u64) -> u64 {
        self.input.draw(g, 1) % self.input.keys
    }

    /// The failure-free output: every window's count, computed in batch.
    pub fn expected(&self) -> BTreeMap<(u64, Window), u64> {
        batch_windows(
            WindowAssigner::Tumbling {
                size_ms: self.window_ms,
            },
            &Count::<()>::new(),
            self.input.all().map(|(g, ts)| (self.key_of(g), ts, ())),
        )
    }

    fn source_node(&self, i: u32) -> NodeId {
        NodeId(1 + i)
    }

    fn window_node(&self, j: u32) -> NodeId {
        NodeId(1 + self.sources + j)
    }

    fn nodes(&self) -> u32 {
        1 + self.sources + self.windows
    }
}

/// A channel element.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SimElement {
    /// Records `(key, event time)`.
    Records(Vec<(u64, EventTime)>),
    /// A watermark.
    Watermark(EventTime),
    /// A checkpoint barrier.
    Barrier(CheckpointId),
}

/// Messages of the simulated job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AbsMsg {
    /// Coordinator → task: start attempt `attempt` from checkpoint `restore`.
    Deploy {
        /// The attempt.
        attempt: u64,
        /// The latest complete checkpoint, if any.
        restore: Option<CheckpointId>,
    },
    /// Coordinator → source: inject barrier `id`.
    Trigger {
        /// The attempt.
        attempt: u64,
        /// The checkpoint.
        id: CheckpointId,
    },
    /// Source → window task, FIFO by `seq` within an attempt.
    Data {
        /// The attempt.
        attempt: u64,
        /// Position in the channel.
        seq: u64,
        /// The element.
        element: SimElement,
    },
    /// Task → coordinator: the snapshot for `id` is durable.
    Ack {
        /// The attempt.
        attempt: u64,
        /// The checkpoint.
        id: CheckpointId,
        /// A source that has read all its input.
        finished: bool,
    },
    /// Task → coordinator: I (re)started.
    Hello,
    /// Coordinator → window task: checkpoints up to `upto` are complete.
    Commit {
        /// The latest complete checkpoint.
        upto: CheckpointId,
    },
}

/// Timers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AbsTimer {
    /// Coordinator: trigger a checkpoint, check timeouts, re-send commits.
    Tick,
    /// Source: send the next records.
    Emit,
}

/// One node of the simulated job.
#[allow(clippy::large_enum_variant)]
pub enum AbsNode {
    /// Node 0.
    Coordinator(Coordinator),
    /// Nodes `1..=sources`.
    Source(SourceNode),
    /// The rest.
    Window(WindowNode),
}

/// The coordinator.
pub struct Coordinator {
    spec: Arc<AbsSpec>,
    attempt: u64,
    coord: CheckpointCoordinator,
    finished_at: BTreeMap<CheckpointId, u32>,
    /// The final checkpoint, once every source finished before it.
    pub done: Option<CheckpointId>,
    attempts_started: u64,
}

/// A source task.
pub struct SourceNode {
    spec: Arc<AbsSpec>,
    index: u32,
    attempt: u64,
    offset: u64,
    len: u64,
    gen: BoundedOutOfOrderness,
    seq: Vec<u64>,
    finished: bool,
    last_trigger: Option<CheckpointId>,
}

/// A window task with its transactional sink.
pub struct WindowNode {
    spec: Arc<AbsSpec>,
    attempt: u64,
    op: WindowOperator<u64, Count<()>>,
    tracker: WatermarkTracker,
    aligner: BarrierAligner,
    next_seq: Vec<u64>,
    reorder: Vec<BTreeMap<u64, SimElement>>,
    held: Vec<VecDeque<SimElement>>,
    future: Vec<(u32, AbsMsg)>,
    output: Vec<Fired<u64, u64>>,
    /// Committed firings, in commit order (rebuilt from storage on restart).
    pub committed: Vec<Fired<u64, u64>>,
    /// The latest checkpoint whose output this task committed.
    pub committed_upto: Option<CheckpointId>,
    expected: Arc<BTreeMap<(u64, Window), u64>>,
    seen: BTreeSet<(u64, Window)>,
    /// The first committed firing that broke exactly-once, if any.
    pub violation: Option<String>,
}

const ATTEMPT: &[u8] = b"attempt";
const TASK_ATTEMPT: &[u8] = b"task-attempt";
const LATEST: &[u8] = b"latest";
const DONE: &[u8] = b"done";
const PENDING_INDEX: &[u8] = b"pending";
const COMMITTED_INDEX: &[u8] = b"committed";

fn chk_key(id: CheckpointId) -> Vec<u8> {
    format!("chk/{}", id.0).into_bytes()
}
fn pending_key(id: u64) -> Vec<u8> {
    format!("pending/{id}").into_bytes()
}
fn out_key(id: u64) -> Vec<u8> {
    format!("out/{id}").into_bytes()
}

type C<'a> = Ctx<'a, AbsMsg, AbsTimer>;

impl AbsNode {
    /// The actor for `node` of a job shaped by `spec`.
    pub fn new(spec: Arc<AbsSpec>, node: NodeId) -> Self {
        if node.0 == 0 {
            AbsNode::Coordinator(Coordinator {
                coord: CheckpointCoordinator::new([], None),
                spec,
                attempt: 0,
                finished_at: BTreeMap::new(),
                done: None,
                attempts_started: 0,
            })
        } else if node.0 <= spec.sources {
            let index = node.0 - 1;
            AbsNode::Source(SourceNode {
                len: partition_len(&spec.input, index as usize),
                gen: BoundedOutOfOrderness::new(spec.bound_ms),
                seq: vec![0; spec.windows as usize],
                spec,
                index,
                attempt: 0,
                offset: 0,
                finished: false,
                last_trigger: None,
            })
        } else {
            let s = spec.sources as usize;
            AbsNode::Window(WindowNode {
                op: new_operator(&spec),
                tracker: WatermarkTracker::new(s),
                aligner: BarrierAligner::new(s),
                next_seq: vec![0; s],
                reorder: vec![BTreeMap::new(); s],
                held: vec![VecDeque::new(); s],
                future: Vec::new(),
                output: Vec::new(),
                committed: Vec::new(),
                committed_upto: None,
                expected: Arc::new(spec.expected()),
                seen: BTreeSet::new(),
                violation: None,
                spec,
                attempt: 0,
            })
        }
    }
}

fn partition_len(input: &InputSpec, p: usize) -> u64 {
    let n = input.partitions as u64;
    input.events / n + u64::from((p as u64) < input.events % n)
}

fn new_operator(spec: &AbsSpec) -> WindowOperator<u64, Count<()>> {
    WindowOperator::new(
        WindowAssigner::Tumbling {
            size_ms: spec.window_ms,
        },
        0,
        Trigger::default(),
        Count::new(),
    )
}

impl Actor for AbsNode {
    type Msg = AbsMsg;
    type Timer = AbsTimer;

    fn on_start(&mut self, ctx: &mut C<'_>) {
        match self {
            AbsNode::Coordinator(c) => c.on_start(ctx),
            AbsNode::Source(s) => {
                // A restarted task must not rejoin an attempt it was part of: its channels'
                // sequence numbers would restart mid-stream. It waits for a newer one.
                s.attempt = ctx
                    .storage()
                    .get_value(TASK_ATTEMPT)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                ctx.send(NodeId(0), AbsMsg::Hello)
            }
            AbsNode::Window(w) => w.on_start(ctx),
        }
    }

    fn on_message(&mut self, ctx: &mut C<'_>, from: Endpoint, msg: AbsMsg) {
        let Endpoint::Node(from) = from else { return };
        match self {
            AbsNode::Coordinator(c) => c.on_message(ctx, from, msg),
            AbsNode::Source(s) => s.on_message(ctx, msg),
            AbsNode::Window(w) => w.on_message(ctx, from, msg),
        }
    }

    fn on_timer(&mut self, ctx: &mut C<'_>, timer: AbsTimer) {
        match (self, timer) {
            (AbsNode::Coordinator(c), AbsTimer::Tick) => c.on_tick(ctx),
            (AbsNode::Source(s), AbsTimer::Emit) => s.on_emit(ctx),
            _ => {}
        }
    }
}

impl Coordinator {
    fn tasks(&self) -> impl Iterator<Item = NodeId> {
        (1..self.spec.nodes()).map(NodeId)
    }

    fn on_start(&mut self, ctx: &mut C<'_>) {
        self.attempt = ctx.storage().get_value(ATTEMPT).ok().flatten().unwrap_or(0);
        self.done = ctx.storage().get_value(DONE).ok().flatten();
        self.new_attempt(ctx);
        ctx.set_timer(AbsTimer::Tick, self.spec.checkpoint_every);
    }

    /// Global failover: a new attempt from the latest complete checkpoint.
    fn new_attempt(&mut self, ctx: &mut C<'_>) {
        self.attempt += 1;
        self.attempts_started += 1;
        ctx.storage().put_value(ATTEMPT, &self.attempt);
        let latest: Option<CheckpointId> = ctx.storage().get_value(LATEST).ok().flatten();
        let tasks: TaskId = self.spec.sources + self.spec.windows;
        // Checkpoint numbers of an abandoned attempt may be reused: its acknowledgements carry
        // the old attempt and are ignored, and tasks drop its pending output on deploy.
        self.coord = CheckpointCoordinator::new(0..tasks, latest);
        self.finished_at.clear();
        let deploy = AbsMsg::Deploy {
            attempt: self.attempt,
            restore: latest,
        };
        ctx.send_all(self.tasks(), deploy);
    }

    fn on_message(&mut self, ctx: &mut C<'_>, from: NodeId, msg: AbsMsg) {
        match msg {
            AbsMsg::Hello => {
                let _ = from;
                self.new_attempt(ctx);
            }
            AbsMsg::Ack {
                attempt,
                id,
                finished,
            } if attempt == self.attempt => {
                if finished {
                    *self.finished_at.entry(id).or_default() += 1;
                }
                let task = from.0 - 1;
                let now = ctx.now().as_nanos();
                if let Some(done) = self.coord.acknowledge(id, task, now) {
                    ctx.storage().put_value(LATEST, &done.id);
                    if self.finished_at.get(&done.id).copied().unwrap_or(0) == self.spec.sources {
                        self.done = Some(done.id);
                        ctx.storage().put_value(DONE, &done.id);
                    }
                    let windows: Vec<NodeId> = (0..self.spec.windows)
                        .map(|j| self.spec.window_node(j))
                        .collect();
                    ctx.send_all(windows, AbsMsg::Commit { upto: done.id });
                }
            }
            _ => {}
        }
    }

    fn on_tick(&mut self, ctx: &mut C<'_>) {
        ctx.set_timer(AbsTimer::Tick, self.spec.checkpoint_every);
        let now = ctx.now().as_nanos();
        if let Some(done) = self.done {
            // Re-announce the final commit for window tasks that missed it.
            let windows: Vec<NodeId> = (0..self.spec.windows)
                .map(|j| self.spec.window_node(j))
                .collect();
            ctx.send_all(windows, AbsMsg::Commit { upto: done });
            return;
        }
        let timeout = self.spec.checkpoint_timeout.as_nanos() as u64;
        if self.coord.expire(now.saturating_sub(timeout)) > 0 {
            // A lost barrier, acknowledgement or deployment: restart everything.
            self.new_attempt(ctx);
            return;
        }
        if let Some(id) = self.coord.trigger(now) {
            let sources: Vec<NodeId> = (0..self.spec.sources)
                .map(|i| self.spec.source_node(i))
                .collect();
            ctx.send_all(
                sources,
                AbsMsg::Trigger {
                    attempt: self.attempt,
                    id,
                },
            );
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SourceSnap {
    offset: u64,
    gen: BoundedOutOfOrderness,
}

impl SourceNode {
    fn send(&mut self, ctx: &mut C<'_>, window: usize, element: SimElement) {
        let seq = self.seq[window];
        self.seq[window] += 1;
        let to = self.spec.window_node(window as u32);
        ctx.send(
            to,
            AbsMsg::Data {
                attempt: self.attempt,
                seq,
                element,
            },
        );
    }

    fn on_message(&mut self, ctx: &mut C<'_>, msg: AbsMsg) {
        match msg {
            AbsMsg::Deploy { attempt, restore } if attempt > self.attempt => {
                self.attempt = attempt;
                ctx.storage().put_value(TASK_ATTEMPT, &attempt);
                self.seq.iter_mut().for_each(|s| *s = 0);
                self.finished = false;
                self.last_trigger = None;
                self.offset = 0;
                self.gen = BoundedOutOfOrderness::new(self.spec.bound_ms);
                if let Some(id) = restore {
                    match ctx.storage().get_value::<SourceSnap>(&chk_key(id)) {
                        Ok(Some(snap)) => {
                            self.offset = snap.offset;
                            self.gen = snap.gen;
                        }
                        // A complete checkpoint without this source's snapshot would be a
                        // bug; staying silent makes the coordinator time out and retry.
                        _ => return,
                    }
                }
                ctx.set_timer(AbsTimer::Emit, Duration::from_millis(1));
            }
            // A duplicated trigger must not snapshot again: the barrier already went out, and
            // a later offset under the same checkpoint would skip records on restore.
            AbsMsg::Trigger { attempt, id }
                if attempt == self.attempt && Some(id) > self.last_trigger =>
            {
                self.last_trigger = Some(id);
                ctx.storage().put_value(
                    &chk_key(id),
                    &SourceSnap {
                        offset: self.offset,
                        gen: self.gen.clone(),
                    },
                );
                ctx.send(
                    NodeId(0),
                    AbsMsg::Ack {
                        attempt,
                        id,
                        finished: self.finished,
                    },
                );
                for w in 0..self.spec.windows as usize {
                    self.send(ctx, w, SimElement::Barrier(id));
                }
            }
            _ => {}
        }
    }

    fn on_emit(&mut self, ctx: &mut C<'_>) {
        if self.finished || self.attempt == 0 {
            return;
        }
        let windows = self.spec.windows as usize;
        let mut batches: Vec<Vec<(u64, EventTime)>> = vec![Vec::new(); windows];
        let end = (self.offset + self.spec.per_tick).min(self.len);
        for i in self.offset..end {
            let g = i * self.spec.sources as u64 + u64::from(self.index);
            let ts = self.spec.input.time_of(g);
            let key = self.spec.key_of(g);
            self.gen.observe(ts);
            batches[super::exec::partition_of(&key, windows)].push((key, ts));
        }
        self.offset = end;
        for (w, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                self.send(ctx, w, SimElement::Records(batch));
            }
        }
        let wm = if self.offset >= self.len {
            self.finished = true;
            EventTime::MAX
        } else {
            self.gen.watermark()
        };
        for w in 0..windows {
            self.send(ctx, w, SimElement::Watermark(wm));
        }
        if !self.finished {
            ctx.set_timer(AbsTimer::Emit, Duration::from_millis(1));
        }
    }
}

impl WindowNode {
    fn on_start(&mut self, ctx: &mut C<'_>) {
        let index: BTreeSet<u64> = ctx
            .storage()
            .get_value(COMMITTED_INDEX)
            .ok()
            .flatten()
            .unwrap_or_default();
        for e in &index {
            let out: Vec<Fired<u64, u64>> = ctx
                .storage()
                .get_value(&out_key(*e))
                .ok()
                .flatten()
                .unwrap_or_default();
            self.record_committed(out);
        }
        self.committed_upto = index.last().map(|&e| CheckpointId(e));
        self.attempt = ctx
            .storage()
            .get_value(TASK_ATTEMPT)
            .ok()
            .flatten()
            .unwrap_or(0);
        ctx.send(NodeId(0), AbsMsg::Hello);
    }

    fn record_committed(&mut self, out: Vec<Fired<u64, u64>>) {
        for f in out {
            if self.violation.is_none() {
                if !self.seen.insert((f.key, f.window)) {
                    self.violation = Some(format!(
                        "key {} window {:?} committed twice",
                        f.key, f.window
                    ));
                } else if self.expected.get(&(f.key, f.window)) != Some(&f.value) {
                    self.violation = Some(format!(
                        "key {} window {:?} committed {} but the failure-free count is {:?}",
                        f.key,
                        f.window,
                        f.value,
                        self.expected.get(&(f.key, f.window))
                    ));
                }
            }
            self.committed.push(f);
        }
    }

    /// Move pending output of checkpoints `≤ upto` to the committed output; with
    /// `discard_rest`, drop the pending output of later (abandoned) checkpoints. Every write
    /// order here leaves a state from which a re-run finishes the job, whatever prefix of
    /// the writes a crash keeps.
    fn settle(&mut self, ctx: &mut C<'_>, upto: Option<CheckpointId>, discard_rest: bool) {
        let mut pending: BTreeSet<u64> = ctx
            .storage()
            .get_value(PENDING_INDEX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut committed: BTreeSet<u64> = ctx
            .storage()
            .get_value(COMMITTED_INDEX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let upto_n = upto.map(|c| c.0);
        for e in pending.clone() {
            if upto_n.is_some_and(|u| e <= u) {
                if committed.insert(e) {
                    let out: Vec<Fired<u64, u64>> = ctx
                        .storage()
                        .get_value(&pending_key(e))
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    ctx.storage().put_value(&out_key(e), &out);
                    ctx.storage().put_value(COMMITTED_INDEX, &committed);
                    self.record_committed(out);
                }
                pending.remove(&e);
                ctx.storage().put_value(PENDING_INDEX, &pending);
                ctx.storage().delete(&pending_key(e));
            } else if discard_rest {
                pending.remove(&e);
                ctx.storage().put_value(PENDING_INDEX, &pending);
                ctx.storage().delete(&pending_key(e));
            }
        }
        if upto.is_some() && upto > self.committed_upto {
            self.committed_upto = upto;
        }
    }

    fn on_message(&mut self, ctx: &mut C<'_>, from: NodeId, msg: AbsMsg) {
        match msg {
            AbsMsg::Deploy { attempt, restore } if attempt > self.attempt => {
                let s = self.spec.sources as usize;
                self.attempt = attempt;
                ctx.storage().put_value(TASK_ATTEMPT, &attempt);
                self.op = new_operator(&self.spec);
                if let Some(id) = restore {
                    match ctx
                        .storage()
                        .get_value::<WindowState<u64, u64>>(&chk_key(id))
                    {
                        Ok(Some(state)) => self.op.restore(state),
                        _ => return,
                    }
                }
                self.tracker = WatermarkTracker::new(s);
                self.aligner = BarrierAligner::new(s);
                self.next_seq = vec![0; s];
                self.reorder = vec![BTreeMap::new(); s];
                self.held = vec![VecDeque::new(); s];
                self.output.clear();
                self.settle(ctx, restore, true);
                let future = std::mem::take(&mut self.future);
                for (from, msg) in future {
                    self.on_message(ctx, NodeId(from), msg);
                }
            }
            AbsMsg::Commit { upto } => self.settle(ctx, Some(upto), false),
            AbsMsg::Data {
                attempt,
                seq,
                element,
            } => {
                if attempt > self.attempt {
                    self.future.push((
                        from.0,
                        AbsMsg::Data {
                            attempt,
                            seq,
                            element,
                        },
                    ));
                    return;
                }
                if attempt < self.attempt || from.0 == 0 || from.0 > self.spec.sources {
                    return;
                }
                let ch = (from.0 - 1) as usize;
                if seq < self.next_seq[ch] {
                    return; // a duplicate
                }
                self.reorder[ch].insert(seq, element);
                while let Some(el) = self.reorder[ch].remove(&self.next_seq[ch]) {
                    self.next_seq[ch] += 1;
                    self.admit(ctx, ch, el);
                }
            }
            _ => {}
        }
    }

    fn admit(&mut self, ctx: &mut C<'_>, ch: usize, el: SimElement) {
        let align = self.spec.broken != Some(Broken::NoAlignment);
        if align && self.aligner.admit(ch) == Alignment::Hold {
            self.held[ch].push_back(el);
            return;
        }
        let mut out = Collect::<u64, u64, ()>::default();
        match el {
            SimElement::Records(records) => {
                self.tracker.on_record(ch);
                for (k, ts) in records {
                    self.op.on_record(&k, ts, &(), &mut out);
                }
            }
            SimElement::Watermark(w) => {
                if let Some(w) = self.tracker.on_watermark(ch, w) {
                    self.op.on_watermark(w, &mut out);
                }
            }
            SimElement::Barrier(id) => {
                if let BarrierOutcome::Aligned(id) = self.aligner.on_barrier(ch, id) {
                    self.take_snapshot(ctx, id);
                    let held: Vec<(usize, SimElement)> = self
                        .held
                        .iter_mut()
                        .enumerate()
                        .flat_map(|(c, q)| q.drain(..).map(move |e| (c, e)))
                        .collect();
                    for (c, e) in held {
                        self.admit(ctx, c, e);
                    }
                }
            }
        }
        self.output.extend(out.fired);
    }

    fn take_snapshot(&mut self, ctx: &mut C<'_>, id: CheckpointId) {
        let output = std::mem::take(&mut self.output);
        ctx.storage().put_value(&chk_key(id), &self.op.snapshot());
        ctx.storage().put_value(&pending_key(id.0), &output);
        let mut pending: BTreeSet<u64> = ctx
            .storage()
            .get_value(PENDING_INDEX)
            .ok()
            .flatten()
            .unwrap_or_default();
        pending.insert(id.0);
        ctx.storage().put_value(PENDING_INDEX, &pending);
        if self.spec.broken == Some(Broken::CommitBeforeComplete) {
            self.settle(ctx, Some(id), false);
        }
        ctx.send(
            NodeId(0),
            AbsMsg::Ack {
                attempt: self.attempt,
                id,
                finished: false,
            },
        );
    }
}

/// What a simulated run ended with.
#[derive(Clone, Debug)]
pub struct AbsReport {
    /// Attempts the coordinator started (1 + restarts).
    pub attempts: u64,
    /// Crashes and restarts the fault plan injected.
    pub restarts: u64,
    /// The final checkpoint.
    pub final_checkpoint: Option<CheckpointId>,
    /// Windows committed.
    pub windows: usize,
}

/// Run the job under `faults` until `faults_until`, heal, and require it to finish and
/// commit by `deadline`; then compare the committed output with the failure-free output.
pub fn run_abs(
    seed: u64,
    spec: AbsSpec,
    faults: FaultConfig,
    net: NetConfig,
) -> Result<AbsReport, String> {
    let spec = Arc::new(spec);
    let expected = Arc::new(spec.expected());
    let mut cfg = SimConfig::new(seed, spec.nodes());
    cfg.faults = faults;
    cfg.net = net;
    let factory_spec = spec.clone();
    let mut sim = Sim::new(cfg, move |node| AbsNode::new(factory_spec.clone(), node));
    sim.set_max_events(5_000_000);
    // Exactly-once, checked after every step: nothing committed twice, nothing wrong. Keys
    // are partitioned, so each window task checks its own committed output as it grows.
    sim.invariant("exactly-once committed output", move |sim| {
        for (_, a) in sim.actors() {
            if let AbsNode::Window(WindowNode {
                violation: Some(v), ..
            }) = a
            {
                return Err(v.clone());
            }
        }
        Ok(())
    });
    let (sources, windows) = (spec.sources, spec.windows);
    sim.run_liveness(
        Duration::from_secs(2),
        Duration::from_secs(30),
        move |sim| {
            let Some(AbsNode::Coordinator(c)) = sim.actor(NodeId(0)) else {
                return false;
            };
            let Some(done) = c.done else { return false };
            (0..windows).all(|j| {
                matches!(sim.actor(NodeId(1 + sources + j)),
                Some(AbsNode::Window(w)) if w.committed_upto >= Some(done))
            })
        },
    )
    .map_err(|e| e.to_string())?;
    // Liveness reached: the committed output must be all of it.
    let mut committed = BTreeMap::new();
    let mut attempts = 0;
    let mut final_checkpoint = None;
    for (_, a) in sim.actors() {
        match a {
            AbsNode::Window(w) => {
                for f in &w.committed {
                    committed.insert((f.key, f.window), f.value);
                }
            }
            AbsNode::Coordinator(c) => {
                attempts = c.attempt;
                final_checkpoint = c.done;
            }
            AbsNode::Source(_) => {}
        }
    }
    if committed != *expected {
        let missing = expected
            .keys()
            .filter(|k| !committed.contains_key(k))
            .count();
        return Err(format!(
            "seed {seed}: committed output has {} windows, the failure-free output {} ({missing} missing)",
            committed.len(),
            expected.len()
        ));
    }
    Ok(AbsReport {
        attempts,
        restarts: sim.stats().restarts,
        final_checkpoint,
        windows: committed.len(),
    })
}

/// A fault mix for the exactly-once swarm: crashes always, and per seed some of partitions,
/// pauses and clogged links, about every 150 ms of simulated time.
pub fn abs_faults(seed: u64) -> FaultConfig {
    let mut f = synod_sim::swarm_faults(seed);
    f.mean_interval = Duration::from_millis(150);
    f.min_duration = Duration::from_millis(20);
    f.max_duration = Duration::from_millis(300);
    f.crash = f.crash.max(3);
    f.max_down = None;
    f
}

/// The network for the swarm: LAN latency with reordering and duplicates. Channels are TCP
/// connections in the real driver, so messages are not lost one by one while a link is up;
/// messages are lost when partitions (from the fault plan) cut links or nodes crash, and the
/// checkpoint timeout turns such a loss into a restart. Odd seeds get a slower, more
/// reordering network.
pub fn abs_net(seed: u64) -> NetConfig {
    let mut n = NetConfig::lan();
    n.reorder = 0.2;
    n.duplicate = 0.01;
    if seed % 2 == 1 {
        n.min_latency = Duration::from_millis(1);
        n.latency_tail = Duration::from_millis(2);
        n.reorder = 0.3;
    }
    n
}

/// The replay command printed for a failing seed.
pub fn replay(test: &'static str) -> impl Fn(u64) -> String + Sync {
    move |seed| format!("SYNOD_SEED={seed} cargo test -p synod-dataflow stream::sim::tests::{test}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_sim::assert_seeds;

    /// Carbone et al. §4.3 with a transactional sink: whatever crashes, the committed output
    /// equals the failure-free output, every window exactly once.
    #[test]
    fn committed_output_is_exactly_once_under_crashes() {
        assert_seeds(
            0..200,
            |seed| {
                let report = run_abs(seed, AbsSpec::new(seed), abs_faults(seed), abs_net(seed))?;
                if report.final_checkpoint.is_none() {
                    return Err("no final checkpoint".into());
                }
                Ok(())
            },
            replay("committed_output_is_exactly_once_under_crashes"),
        );
    }

    /// The swarm really crashes things: over a few seeds, restarts and new attempts happen.
    #[test]
    fn the_fault_plan_forces_recovery() {
        let mut attempts = 0;
        let mut restarts = 0;
        for seed in 0..5 {
            let r =
                run_abs(seed, AbsSpec::new(seed), abs_faults(seed), abs_net(seed)).expect("run");
            attempts += r.attempts;
            restarts += r.restarts;
        }
        assert!(restarts >= 5, "only {restarts} crash restarts");
        assert!(attempts >= 20, "only {attempts} attempts");
    }

    fn caught(broken: Broken) -> usize {
        (0..30)
            .filter(|&seed| {
                let mut spec = AbsSpec::new(seed);
                spec.broken = Some(broken);
                run_abs(seed, spec, abs_faults(seed), abs_net(seed)).is_err()
            })
            .count()
    }

    /// Publishing output at the barrier, before the checkpoint completes, duplicates output
    /// after a restart; the check catches it.
    #[test]
    fn committing_before_the_checkpoint_completes_is_caught() {
        assert!(caught(Broken::CommitBeforeComplete) > 0);
    }

    /// Snapshots without barrier alignment count records that sources replay; the check
    /// catches it.
    #[test]
    fn snapshots_without_alignment_are_caught() {
        assert!(caught(Broken::NoAlignment) > 0);
    }

    /// Without faults the job finishes in one attempt per start-up announcement.
    #[test]
    fn a_failure_free_run_commits_every_window() {
        let r = run_abs(1, AbsSpec::new(1), FaultConfig::none(), NetConfig::lan()).expect("run");
        assert_eq!(r.restarts, 0);
        assert_eq!(r.windows, AbsSpec::new(1).expected().len());
    }
}
