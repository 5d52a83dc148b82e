//! The master's task state machine (Dean & Ghemawat 2004, §3.2–§3.6), pure and
//! deterministic.
//!
//! Inputs are [`Master::on_request`] (a worker's poll, heartbeat or report, with the time
//! it arrived) and [`Master::on_tick`] (time passes; workers that stopped heartbeating are
//! declared dead). Outputs are the [`Response`] to each request and the durable
//! [`MasterSnapshot`] that the driver must persist before it sends that response
//! ([`Master::take_dirty`]). The same code runs in the simulator (`harness`) and in the
//! real master process (`driver`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;
use synod_core::Instant;

/// A worker process. A restarted worker is a new worker: its local disk, and so its map
/// outputs, are gone (§3.3 treats a worker failure as a machine failure).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{:x}", self.0)
    }
}

/// One execution of one task. Ids are never reused, also across master restarts, so two
/// attempts never write the same temporary file.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct AttemptId(pub u64);

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a{}", self.0)
    }
}

/// Which phase a task belongs to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Phase {
    /// Map tasks: one per input split.
    Map,
    /// Reduce tasks: one per output partition.
    Reduce,
}

/// A task: a map task per input split, a reduce task per partition.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct TaskId {
    /// Map or reduce.
    pub phase: Phase,
    /// The split (map) or partition (reduce) number.
    pub index: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.phase {
            Phase::Map => write!(f, "m{}", self.index),
            Phase::Reduce => write!(f, "r{}", self.index),
        }
    }
}

/// Where a completed map task's output can be fetched from.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MapOutput {
    /// The map task.
    pub map: u32,
    /// The attempt whose output it is (names the files on the worker).
    pub attempt: AttemptId,
    /// The worker holding it.
    pub worker: WorkerId,
    /// The worker's data address (a TCP address on the network; unused in the simulator).
    pub addr: String,
}

/// Work handed to a worker.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Assignment {
    /// Run map task `index` as attempt `attempt`.
    Map {
        /// The attempt id.
        attempt: AttemptId,
        /// The split.
        index: u32,
    },
    /// Run reduce task `index`, fetching partition `index` of every map output in `sources`.
    Reduce {
        /// The attempt id.
        attempt: AttemptId,
        /// The partition.
        index: u32,
        /// One location per map task, in map order.
        sources: Vec<MapOutput>,
    },
}

impl Assignment {
    /// The attempt id.
    pub fn attempt(&self) -> AttemptId {
        match self {
            Assignment::Map { attempt, .. } | Assignment::Reduce { attempt, .. } => *attempt,
        }
    }

    /// The task.
    pub fn task(&self) -> TaskId {
        match self {
            Assignment::Map { index, .. } => TaskId {
                phase: Phase::Map,
                index: *index,
            },
            Assignment::Reduce { index, .. } => TaskId {
                phase: Phase::Reduce,
                index: *index,
            },
        }
    }
}

/// What a worker tells the master.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Heartbeat; asks for work when `running` is empty and `want_work` is set.
    Poll {
        /// Who is polling.
        worker: WorkerId,
        /// The worker's data address, for reducers to fetch from.
        addr: String,
        /// Attempts the worker is executing.
        running: Vec<AttemptId>,
        /// Whether the worker has a free slot.
        want_work: bool,
    },
    /// A map attempt finished; its output is on the worker's local disk.
    MapDone {
        /// Who ran it.
        worker: WorkerId,
        /// The attempt.
        attempt: AttemptId,
        /// The map task.
        index: u32,
    },
    /// A reduce attempt finished and renamed its output file into place (§3.6: the rename
    /// is atomic, so the final file holds exactly one attempt's output).
    ReduceDone {
        /// Who ran it.
        worker: WorkerId,
        /// The attempt.
        attempt: AttemptId,
        /// The reduce task.
        index: u32,
        /// A summary of the attempt's output (job counters), kept with the commit.
        summary: Vec<u8>,
    },
    /// A reduce attempt gave up because it could not fetch map task `map`'s output.
    FetchFailed {
        /// Who ran it.
        worker: WorkerId,
        /// The reduce attempt.
        attempt: AttemptId,
        /// The map whose output was unreachable or corrupt.
        map: u32,
    },
}

impl Request {
    /// The worker that sent the request.
    pub fn worker(&self) -> WorkerId {
        match self {
            Request::Poll { worker, .. }
            | Request::MapDone { worker, .. }
            | Request::ReduceDone { worker, .. }
            | Request::FetchFailed { worker, .. } => *worker,
        }
    }
}

/// The master's answer.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Response {
    /// Start this attempt; stop the attempts in `abort`.
    Assign {
        /// New work.
        work: Assignment,
        /// Attempts to stop (superseded or lost).
        abort: Vec<AttemptId>,
    },
    /// Nothing to do now; stop the attempts in `abort`.
    Wait {
        /// Attempts to stop.
        abort: Vec<AttemptId>,
    },
    /// A report was recorded (or was stale and ignored).
    Ack,
    /// The job is complete: every reduce task is committed.
    Finished,
}

/// The master's tunables.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// A worker unheard-from for this long is dead (§3.3).
    pub worker_timeout: Duration,
    /// Backup tasks start when at most this fraction of a phase's tasks is unfinished
    /// (§3.6: "when a MapReduce operation is close to completion").
    pub backup_fraction: f64,
    /// ... and the primary attempt has run at least this long.
    pub backup_after: Duration,
    /// A map output that this many reduce attempts failed to fetch is re-executed, even if
    /// its worker still heartbeats (its disk may be bad).
    pub fetch_failures_to_rerun: u32,
    /// Test-only fault: do not re-execute the completed map tasks of a dead worker.
    pub broken_no_map_rerun: bool,
    /// Test-only fault: commit every reduce completion, also late duplicates.
    pub broken_commit_duplicates: bool,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            worker_timeout: Duration::from_secs(3),
            backup_fraction: 0.1,
            backup_after: Duration::from_secs(1),
            fetch_failures_to_rerun: 3,
            broken_no_map_rerun: false,
            broken_commit_duplicates: false,
        }
    }
}

/// One running attempt.
#[derive(Clone, Debug)]
struct Running {
    worker: WorkerId,
    started: Instant,
}

/// A task's state (§3.2: idle, in-progress, completed).
#[derive(Clone, Debug)]
enum TaskState {
    Idle,
    InProgress(BTreeMap<AttemptId, Running>),
    Completed,
}

#[derive(Clone, Debug)]
struct WorkerState {
    addr: String,
    last_seen: Instant,
}

/// Attempt ids are made durable in blocks of this many (see
/// [`MasterSnapshot::next_attempt`]).
pub const ATTEMPT_LEASE: u64 = 64;

/// Everything the master persists: enough to resume the job after a restart.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct MasterSnapshot {
    /// Number of map tasks.
    pub maps: u32,
    /// Number of reduce tasks.
    pub reduces: u32,
    /// The end of the leased attempt ids: every id handed out so far is below it. Ids are
    /// leased in blocks of [`ATTEMPT_LEASE`], so that assigning a task needs no state
    /// write unless the block is used up; a restored master starts at this bound and
    /// never hands out an id twice.
    pub next_attempt: u64,
    /// Completed map tasks and where their output is.
    pub map_outputs: BTreeMap<u32, MapOutput>,
    /// Committed reduce tasks: the attempt that committed and its summary.
    pub committed: BTreeMap<u32, (AttemptId, Vec<u8>)>,
}

/// Counts for progress bars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Map tasks completed.
    pub maps_done: u32,
    /// Map tasks.
    pub maps: u32,
    /// Reduce tasks committed.
    pub reduces_done: u32,
    /// Reduce tasks.
    pub reduces: u32,
    /// Live workers.
    pub workers: u32,
    /// Attempts started so far (including backups and re-executions).
    pub attempts: u64,
    /// Backup attempts started.
    pub backups: u64,
    /// Map tasks re-executed because their worker died or their output was unreachable.
    pub map_reruns: u64,
    /// Workers declared dead.
    pub dead_workers: u64,
}

/// The master.
#[derive(Clone, Debug)]
pub struct Master {
    cfg: MasterConfig,
    durable: MasterSnapshot,
    /// The next attempt id to hand out (below `durable.next_attempt` once leased).
    next_attempt: u64,
    map_tasks: Vec<TaskState>,
    reduce_tasks: Vec<TaskState>,
    workers: BTreeMap<WorkerId, WorkerState>,
    fetch_failures: BTreeMap<u32, BTreeSet<AttemptId>>,
    dirty: bool,
    stats: Progress,
}

impl Master {
    /// A fresh job of `maps` map tasks and `reduces` reduce tasks.
    pub fn new(cfg: MasterConfig, maps: u32, reduces: u32) -> Self {
        let snapshot = MasterSnapshot {
            maps,
            reduces,
            next_attempt: 1,
            ..MasterSnapshot::default()
        };
        let mut m = Self::restore(cfg, snapshot, Instant::ZERO);
        m.dirty = true;
        m
    }

    /// Resume from a persisted snapshot at time `now`. Attempts in flight are forgotten
    /// (their late reports are ignored) and their tasks run again. Workers that hold map
    /// output are given one timeout to poll again before their output is re-executed.
    pub fn restore(cfg: MasterConfig, snapshot: MasterSnapshot, now: Instant) -> Self {
        let mut map_tasks = vec![TaskState::Idle; snapshot.maps as usize];
        let mut workers = BTreeMap::new();
        for (&i, out) in &snapshot.map_outputs {
            if let Some(t) = map_tasks.get_mut(i as usize) {
                *t = TaskState::Completed;
            }
            workers.insert(
                out.worker,
                WorkerState {
                    addr: out.addr.clone(),
                    last_seen: now,
                },
            );
        }
        let mut reduce_tasks = vec![TaskState::Idle; snapshot.reduces as usize];
        for &i in snapshot.committed.keys() {
            if let Some(t) = reduce_tasks.get_mut(i as usize) {
                *t = TaskState::Completed;
            }
        }
        let mut m = Master {
            cfg,
            next_attempt: snapshot.next_attempt,
            durable: snapshot,
            map_tasks,
            reduce_tasks,
            workers,
            fetch_failures: BTreeMap::new(),
            dirty: false,
            stats: Progress::default(),
        };
        m.refresh_counts();
        m
    }

    /// The durable state. Persist it whenever [`Master::take_dirty`] says so, before
    /// sending the responses of the same step.
    pub fn snapshot(&self) -> &MasterSnapshot {
        &self.durable
    }

    /// Whether the durable state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Whether every reduce task is committed.
    pub fn finished(&self) -> bool {
        self.durable.committed.len() == self.durable.reduces as usize
    }

    /// Counts for progress reporting.
    pub fn progress(&self) -> Progress {
        self.stats
    }

    /// The committed reduce tasks with their summaries.
    pub fn committed(&self) -> &BTreeMap<u32, (AttemptId, Vec<u8>)> {
        &self.durable.committed
    }

    fn refresh_counts(&mut self) {
        self.stats.maps = self.durable.maps;
        self.stats.reduces = self.durable.reduces;
        self.stats.maps_done = self.durable.map_outputs.len() as u32;
        self.stats.reduces_done = self.durable.committed.len() as u32;
        self.stats.workers = self.workers.len() as u32;
    }

    /// Time passed: declare dead every worker unheard-from for `worker_timeout` (§3.3).
    pub fn on_tick(&mut self, now: Instant) {
        let timeout = self.cfg.worker_timeout;
        let dead: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.last_seen) > timeout)
            .map(|(&id, _)| id)
            .collect();
        for worker in dead {
            self.worker_died(worker);
        }
        self.refresh_counts();
    }

    fn worker_died(&mut self, worker: WorkerId) {
        self.workers.remove(&worker);
        self.stats.dead_workers += 1;
        // In-progress tasks of the worker become idle again (§3.3).
        for tasks in [&mut self.map_tasks, &mut self.reduce_tasks] {
            for t in tasks.iter_mut() {
                if let TaskState::InProgress(attempts) = t {
                    attempts.retain(|_, r| r.worker != worker);
                    if attempts.is_empty() {
                        *t = TaskState::Idle;
                    }
                }
            }
        }
        // Completed map tasks are re-executed too: their output is on the dead machine's
        // local disk. Not needed once every reduce task has committed.
        if !self.finished() && !self.cfg.broken_no_map_rerun {
            let lost: Vec<u32> = self
                .durable
                .map_outputs
                .iter()
                .filter(|(_, o)| o.worker == worker)
                .map(|(&i, _)| i)
                .collect();
            for i in lost {
                self.rerun_map(i);
            }
        }
    }

    fn rerun_map(&mut self, index: u32) {
        if self.durable.map_outputs.remove(&index).is_some() {
            self.dirty = true;
            self.stats.map_reruns += 1;
        }
        self.fetch_failures.remove(&index);
        if let Some(t) = self.map_tasks.get_mut(index as usize) {
            if matches!(t, TaskState::Completed) {
                *t = TaskState::Idle;
            }
        }
    }

    /// Handle one request that arrived at `now`.
    pub fn on_request(&mut self, now: Instant, req: Request) -> Response {
        let response = self.handle(now, req);
        self.refresh_counts();
        response
    }

    fn handle(&mut self, now: Instant, req: Request) -> Response {
        let worker = req.worker();
        if let Request::Poll { addr, .. } = &req {
            let w = self.workers.entry(worker).or_insert_with(|| WorkerState {
                addr: addr.clone(),
                last_seen: now,
            });
            w.last_seen = now;
            w.addr.clone_from(addr);
        } else if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen = now;
        }
        match req {
            Request::Poll {
                worker,
                running,
                want_work,
                ..
            } => {
                if self.finished() {
                    return Response::Finished;
                }
                self.forget_lost_assignments(now, worker, &running);
                let abort: Vec<AttemptId> = running
                    .iter()
                    .copied()
                    .filter(|a| !self.is_current(worker, *a))
                    .collect();
                if want_work {
                    if let Some(work) = self.schedule(now, worker) {
                        return Response::Assign { work, abort };
                    }
                }
                Response::Wait { abort }
            }
            Request::MapDone {
                worker,
                attempt,
                index,
            } => {
                if !self.workers.contains_key(&worker) {
                    // A worker declared dead: its output is not trusted to survive.
                    return Response::Ack;
                }
                let Some(task) = self.map_tasks.get_mut(index as usize) else {
                    return Response::Ack;
                };
                let current = matches!(task, TaskState::InProgress(a) if a.get(&attempt).is_some_and(|r| r.worker == worker));
                if current {
                    // First completion wins; other attempts are told to stop at their
                    // next poll. A map completion for a completed task is ignored (§3.3).
                    *task = TaskState::Completed;
                    let addr = self
                        .workers
                        .get(&worker)
                        .map(|w| w.addr.clone())
                        .unwrap_or_default();
                    self.durable.map_outputs.insert(
                        index,
                        MapOutput {
                            map: index,
                            attempt,
                            worker,
                            addr,
                        },
                    );
                    self.dirty = true;
                }
                Response::Ack
            }
            Request::ReduceDone {
                worker,
                attempt,
                index,
                summary,
            } => {
                let Some(task) = self.reduce_tasks.get_mut(index as usize) else {
                    return Response::Ack;
                };
                let current = matches!(task, TaskState::InProgress(a) if a.get(&attempt).is_some_and(|r| r.worker == worker));
                let duplicate_allowed = self.cfg.broken_commit_duplicates
                    && attempt.0 < self.durable.next_attempt
                    && attempt.0 > 0;
                if current || duplicate_allowed {
                    // The output file is already in place (atomic rename); recording the
                    // commit makes the task complete. Only the first attempt is recorded.
                    *task = TaskState::Completed;
                    if duplicate_allowed {
                        // Test-only: overwrite as a careless master would, so the checker
                        // sees the task committed twice.
                        self.durable.committed.insert(index, (attempt, summary));
                    } else {
                        self.durable
                            .committed
                            .entry(index)
                            .or_insert((attempt, summary));
                    }
                    self.dirty = true;
                }
                Response::Ack
            }
            Request::FetchFailed {
                worker,
                attempt,
                map,
            } => {
                // Abandon the reduce attempt; the task is rescheduled when the map output
                // is available again.
                for t in self.reduce_tasks.iter_mut() {
                    if let TaskState::InProgress(attempts) = t {
                        if attempts.get(&attempt).is_some_and(|r| r.worker == worker) {
                            attempts.remove(&attempt);
                            if attempts.is_empty() {
                                *t = TaskState::Idle;
                            }
                        }
                    }
                }
                let reported = self.fetch_failures.entry(map).or_default();
                reported.insert(attempt);
                let source_dead = self
                    .durable
                    .map_outputs
                    .get(&map)
                    .is_some_and(|o| !self.workers.contains_key(&o.worker));
                if (reported.len() as u32 >= self.cfg.fetch_failures_to_rerun || source_dead)
                    && !self.cfg.broken_no_map_rerun
                {
                    self.rerun_map(map);
                }
                Response::Ack
            }
        }
    }

    /// An assignment whose response was lost never shows up in the worker's `running` list.
    /// Once it is older than the worker timeout (so no longer possibly in flight), the
    /// attempt is dropped and its task can be scheduled again.
    fn forget_lost_assignments(&mut self, now: Instant, worker: WorkerId, running: &[AttemptId]) {
        let timeout = self.cfg.worker_timeout;
        for t in self
            .map_tasks
            .iter_mut()
            .chain(self.reduce_tasks.iter_mut())
        {
            if let TaskState::InProgress(attempts) = t {
                attempts.retain(|a, r| {
                    r.worker != worker
                        || running.contains(a)
                        || now.saturating_duration_since(r.started) <= timeout
                });
                if attempts.is_empty() {
                    *t = TaskState::Idle;
                }
            }
        }
    }

    /// Whether `attempt` is a current attempt of some unfinished task on `worker`.
    fn is_current(&self, worker: WorkerId, attempt: AttemptId) -> bool {
        self.map_tasks
            .iter()
            .chain(self.reduce_tasks.iter())
            .any(|t| match t {
                TaskState::InProgress(a) => a.get(&attempt).is_some_and(|r| r.worker == worker),
                _ => false,
            })
    }

    fn new_attempt(&mut self) -> AttemptId {
        if self.next_attempt >= self.durable.next_attempt {
            // Lease the next block: persisted before the assignment leaves.
            self.durable.next_attempt = self.next_attempt + ATTEMPT_LEASE;
            self.dirty = true;
        }
        let a = AttemptId(self.next_attempt);
        self.next_attempt += 1;
        self.stats.attempts += 1;
        a
    }

    /// Pick work for `worker`: an idle map task; else, once every map is complete, an idle
    /// reduce task; else a backup attempt of a straggler near the end of a phase (§3.6).
    fn schedule(&mut self, now: Instant, worker: WorkerId) -> Option<Assignment> {
        if let Some(index) = first_idle(&self.map_tasks) {
            let attempt = self.new_attempt();
            self.start(Phase::Map, index, attempt, worker, now);
            return Some(Assignment::Map { attempt, index });
        }
        let maps_done = self.durable.map_outputs.len() == self.durable.maps as usize;
        if !maps_done {
            let index = self.backup_candidate(Phase::Map, now, worker)?;
            let attempt = self.new_attempt();
            self.stats.backups += 1;
            self.start(Phase::Map, index, attempt, worker, now);
            return Some(Assignment::Map { attempt, index });
        }
        let index = match first_idle(&self.reduce_tasks) {
            Some(i) => i,
            None => {
                let i = self.backup_candidate(Phase::Reduce, now, worker)?;
                self.stats.backups += 1;
                i
            }
        };
        let attempt = self.new_attempt();
        self.start(Phase::Reduce, index, attempt, worker, now);
        let sources = self.durable.map_outputs.values().cloned().collect();
        Some(Assignment::Reduce {
            attempt,
            index,
            sources,
        })
    }

    fn start(
        &mut self,
        phase: Phase,
        index: u32,
        attempt: AttemptId,
        worker: WorkerId,
        now: Instant,
    ) {
        let tasks = match phase {
            Phase::Map => &mut self.map_tasks,
            Phase::Reduce => &mut self.reduce_tasks,
        };
        let t = &mut tasks[index as usize];
        let running = Running {
            worker,
            started: now,
        };
        match t {
            TaskState::InProgress(a) => {
                a.insert(attempt, running);
            }
            _ => {
                *t = TaskState::InProgress(BTreeMap::from([(attempt, running)]));
            }
        }
    }

    /// The in-progress task of `phase` with a single attempt, not on `worker`, running
    /// longest, provided the phase is near its end and the attempt has run `backup_after`.
    fn backup_candidate(&self, phase: Phase, now: Instant, worker: WorkerId) -> Option<u32> {
        let tasks = match phase {
            Phase::Map => &self.map_tasks,
            Phase::Reduce => &self.reduce_tasks,
        };
        let unfinished = tasks
            .iter()
            .filter(|t| !matches!(t, TaskState::Completed))
            .count();
        let limit = ((tasks.len() as f64 * self.cfg.backup_fraction).ceil() as usize).max(1);
        if unfinished == 0 || unfinished > limit {
            return None;
        }
        tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                TaskState::InProgress(a) if a.len() == 1 => {
                    let r = a.values().next()?;
                    let ran = now.saturating_duration_since(r.started);
                    (r.worker != worker && ran >= self.cfg.backup_after)
                        .then_some((r.started, i as u32))
                }
                _ => None,
            })
            .min()
            .map(|(_, i)| i)
    }
}

fn first_idle(tasks: &[TaskState]) -> Option<u32> {
    tasks
        .iter()
        .position(|t| matches!(t, TaskState::Idle))
        .map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(m: &mut Master, now: u64, w: u64, running: Vec<AttemptId>) -> Response {
        m.on_request(
            Instant(now),
            Request::Poll {
                worker: WorkerId(w),
                addr: format!("w{w}"),
                running,
                want_work: true,
            },
        )
    }

    const SEC: u64 = 1_000_000_000;

    /// §3.3: completed map tasks of a failed worker are re-executed, because their output
    /// lives on that machine's local disk; completed reduce tasks are not.
    #[test]
    fn completed_map_tasks_of_a_dead_worker_run_again() {
        let mut m = Master::new(MasterConfig::default(), 2, 1);
        let Response::Assign { work, .. } = poll(&mut m, 0, 1, vec![]) else {
            panic!("expected work")
        };
        assert_eq!(work.task().index, 0);
        m.on_request(
            Instant(1),
            Request::MapDone {
                worker: WorkerId(1),
                attempt: work.attempt(),
                index: 0,
            },
        );
        assert_eq!(m.progress().maps_done, 1);
        // Worker 2 keeps polling; worker 1 falls silent.
        let Response::Assign { .. } = poll(&mut m, 2, 2, vec![]) else {
            panic!("expected map 1")
        };
        poll(&mut m, 4 * SEC, 2, vec![AttemptId(2)]);
        m.on_tick(Instant(4 * SEC));
        assert_eq!(m.progress().maps_done, 0, "map 0 is lost with worker 1");
        assert_eq!(m.progress().dead_workers, 1);
    }

    /// Reduce tasks start only once every map output exists, and get every location.
    #[test]
    fn reduce_waits_for_every_map() {
        let mut m = Master::new(MasterConfig::default(), 1, 1);
        let Response::Assign { work: a, .. } = poll(&mut m, 0, 1, vec![]) else {
            panic!()
        };
        assert!(matches!(poll(&mut m, 1, 2, vec![]), Response::Wait { .. }));
        m.on_request(
            Instant(2),
            Request::MapDone {
                worker: WorkerId(1),
                attempt: a.attempt(),
                index: 0,
            },
        );
        let Response::Assign {
            work: Assignment::Reduce { sources, .. },
            ..
        } = poll(&mut m, 3, 2, vec![])
        else {
            panic!("expected a reduce")
        };
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].worker, WorkerId(1));
    }

    /// §3.6: near the end of a phase an idle worker gets a backup of the straggler; the
    /// first completion wins and the other attempt is told to stop.
    #[test]
    fn backup_task_for_a_straggler_and_first_completion_wins() {
        let mut m = Master::new(MasterConfig::default(), 1, 1);
        let Response::Assign { work: a, .. } = poll(&mut m, 0, 1, vec![]) else {
            panic!()
        };
        // Too early for a backup.
        assert!(matches!(
            poll(&mut m, SEC / 2, 2, vec![]),
            Response::Wait { .. }
        ));
        poll(&mut m, SEC / 2, 1, vec![a.attempt()]);
        let Response::Assign { work: b, .. } = poll(&mut m, 2 * SEC, 2, vec![]) else {
            panic!("expected a backup")
        };
        assert_eq!(b.task(), a.task());
        assert_ne!(b.attempt(), a.attempt());
        m.on_request(
            Instant(2 * SEC + 1),
            Request::MapDone {
                worker: WorkerId(2),
                attempt: b.attempt(),
                index: 0,
            },
        );
        let Response::Assign { abort, work } = poll(&mut m, 2 * SEC + 2, 1, vec![a.attempt()])
        else {
            panic!("expected the reduce")
        };
        assert_eq!(abort, vec![a.attempt()], "the losing attempt is stopped");
        assert!(matches!(work, Assignment::Reduce { .. }));
        assert_eq!(m.progress().backups, 1);
    }

    /// A restarted master keeps committed work and never reuses an attempt id.
    #[test]
    fn restored_master_resumes_and_does_not_reuse_attempt_ids() {
        let mut m = Master::new(MasterConfig::default(), 1, 1);
        let Response::Assign { work: a, .. } = poll(&mut m, 0, 1, vec![]) else {
            panic!()
        };
        m.on_request(
            Instant(1),
            Request::MapDone {
                worker: WorkerId(1),
                attempt: a.attempt(),
                index: 0,
            },
        );
        let snap = m.snapshot().clone();
        let mut m2 = Master::restore(MasterConfig::default(), snap, Instant(5));
        assert_eq!(m2.progress().maps_done, 1);
        let Response::Assign { work: r, .. } = poll(&mut m2, 6, 1, vec![]) else {
            panic!()
        };
        assert!(r.attempt() > a.attempt());
    }

    /// Assigning a task within the leased block of attempt ids changes no durable state;
    /// using the block up leases the next one; a master restored from any snapshot hands
    /// out only ids above every id handed out before it.
    #[test]
    fn attempt_ids_are_leased_in_blocks() {
        let tasks = ATTEMPT_LEASE as u32 + 10;
        let mut m = Master::new(MasterConfig::default(), tasks, 1);
        let mut handed = Vec::new();
        let mut snapshots = Vec::new();
        for w in 0..u64::from(tasks) {
            m.take_dirty();
            let Response::Assign { work, .. } = poll(&mut m, w, w + 1, vec![]) else {
                panic!("no work for worker {w}")
            };
            let id = work.attempt().0;
            assert!(id < m.snapshot().next_attempt, "id {id} not leased");
            // Only the first assignment of each block writes state (a poll by a new worker
            // writes nothing durable either).
            assert_eq!(
                m.take_dirty(),
                (id - 1) % ATTEMPT_LEASE == 0,
                "assignment {id}"
            );
            handed.push(id);
            snapshots.push(m.snapshot().clone());
        }
        assert_eq!(m.snapshot().next_attempt, 1 + 2 * ATTEMPT_LEASE);
        for snap in snapshots {
            let mut r = Master::restore(MasterConfig::default(), snap.clone(), Instant(0));
            let Response::Assign { work, .. } = poll(&mut r, 1, 99, vec![]) else {
                panic!()
            };
            let before: Vec<u64> = handed
                .iter()
                .copied()
                .filter(|&id| id < snap.next_attempt)
                .collect();
            assert!(before.iter().all(|&id| work.attempt().0 > id));
        }
    }
}
