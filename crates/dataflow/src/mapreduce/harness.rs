//! The master's state machine under the simulator: one master node and several worker
//! nodes exchange the real [`Request`]/[`Response`] messages over a lossy network while
//! workers crash, restart and partition away.
//!
//! Workers simulate task execution: a map attempt of split `i` "writes" partition `r` as the
//! number `contribution(i, r)` into volatile memory (a crashed worker's local disk is lost,
//! §3.3). A reduce attempt fetches partition `r` from every map output, from the worker the
//! master named, and commits the sum. So a reduce output is right only if it saw every map
//! task's output exactly once.
//!
//! Checked after every event: the master's durable commit log names each reduce task at
//! most once, and every committed sum is right. At the end of the run (after faults heal)
//! every reduce task must be committed.

use super::master::{
    Assignment, AttemptId, Master, MasterConfig, MasterSnapshot, Request, Response, WorkerId,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use synod_core::{codec, Actor, Ctx, Endpoint, NodeId, StorageExt};
use synod_sim::{swarm_faults, swarm_net, FaultConfig, Sim, SimConfig};

const SNAPSHOT_KEY: &[u8] = b"master";
const INCARNATION_KEY: &[u8] = b"incarnation";
const POLL_EVERY: Duration = Duration::from_millis(100);
const TICK_EVERY: Duration = Duration::from_millis(100);
const FETCH_TIMEOUT: Duration = Duration::from_millis(300);
const FETCH_TRIES: u32 = 3;

/// What map task `map` writes into partition `r`.
pub fn contribution(map: u32, r: u32) -> u64 {
    u64::from(map + 1) * 1000 + u64::from(r)
}

/// The right output of reduce task `r` for a job of `maps` map tasks.
pub fn expected_reduce(maps: u32, r: u32) -> u64 {
    (0..maps).map(|m| contribution(m, r)).sum()
}

/// Messages between the simulated master and workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SimMsg {
    /// Worker → master, numbered so the worker can match the response.
    Req {
        /// Request number, per worker incarnation.
        id: u64,
        /// The request.
        req: Request,
    },
    /// Master → worker.
    Resp {
        /// The request's number.
        id: u64,
        /// The response.
        resp: Response,
    },
    /// Reducer → map worker: send partition `partition` of map output `attempt`.
    Fetch {
        /// Who the reducer believes holds it.
        worker: WorkerId,
        /// The map attempt.
        attempt: AttemptId,
        /// The map task.
        map: u32,
        /// The partition.
        partition: u32,
        /// The reduce attempt asking.
        reduce: AttemptId,
    },
    /// Map worker → reducer: the partition's data, or `None` if this worker does not hold it.
    FetchReply {
        /// The map task.
        map: u32,
        /// The reduce attempt that asked.
        reduce: AttemptId,
        /// The data.
        data: Option<u64>,
    },
}

/// Timers of the simulated nodes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimTimer {
    /// Master: check worker liveness.
    Tick,
    /// Worker: heartbeat, ask for work, resend unacknowledged reports.
    Poll,
    /// Worker: an attempt finished computing.
    Finish(AttemptId),
    /// Worker: a reduce attempt's fetches time out.
    FetchTimeout(AttemptId),
}

/// Tunables of a simulated job.
#[derive(Debug, Clone)]
pub struct SimJob {
    /// Map tasks.
    pub maps: u32,
    /// Reduce tasks.
    pub reduces: u32,
    /// The master's configuration.
    pub master: MasterConfig,
    /// Worker node whose tasks run ten times slower (a straggler), if any.
    pub straggler: Option<NodeId>,
}

struct ReduceRun {
    index: u32,
    sources: Vec<super::master::MapOutput>,
    got: BTreeMap<u32, u64>,
    tries: u32,
    computing: bool,
}

struct WorkerNode {
    id: WorkerId,
    slow: bool,
    next_req: u64,
    pending: BTreeMap<u64, Request>,
    maps: BTreeMap<AttemptId, u32>,
    running_maps: BTreeMap<AttemptId, u32>,
    reduces: BTreeMap<AttemptId, ReduceRun>,
}

/// A simulated node: the master (node 0) or a worker.
pub struct MrNode {
    job: SimJob,
    master: Option<Master>,
    worker: Option<WorkerNode>,
}

type C<'a> = Ctx<'a, SimMsg, SimTimer>;

impl MrNode {
    /// Node `id` of a simulated job: node 0 is the master.
    pub fn new(id: NodeId, job: SimJob) -> Self {
        MrNode {
            job,
            master: None,
            worker: (id.0 != 0).then(|| WorkerNode {
                id: WorkerId(0),
                slow: false,
                next_req: 0,
                pending: BTreeMap::new(),
                maps: BTreeMap::new(),
                running_maps: BTreeMap::new(),
                reduces: BTreeMap::new(),
            }),
        }
    }

    /// The master's state, on node 0 while it is up.
    pub fn master(&self) -> Option<&Master> {
        self.master.as_ref()
    }

    fn persist(master: &mut Master, before: &BTreeMap<u32, (AttemptId, Vec<u8>)>, ctx: &mut C<'_>) {
        if master.take_dirty() {
            ctx.storage().put_value(SNAPSHOT_KEY, master.snapshot());
            // The commit log: one record per commit, durable with the snapshot.
            for (r, commit) in master.committed() {
                if before.get(r) != Some(commit) {
                    ctx.storage()
                        .append_value(&(*r, commit.0, commit.1.clone()));
                }
            }
        }
    }
}

fn worker_node(w: WorkerId) -> NodeId {
    NodeId((w.0 >> 32) as u32)
}

impl WorkerNode {
    fn send(&mut self, ctx: &mut C<'_>, req: Request, reliable: bool) {
        self.next_req += 1;
        let id = self.next_req;
        if reliable {
            self.pending.insert(id, req.clone());
        }
        ctx.send(NodeId(0), SimMsg::Req { id, req });
    }

    fn running(&self) -> Vec<AttemptId> {
        self.running_maps
            .keys()
            .chain(self.reduces.keys())
            .copied()
            .collect()
    }

    fn task_time(&self, ctx: &mut C<'_>) -> Duration {
        use rand::Rng;
        let ms = ctx.rng().gen_range(20..200);
        Duration::from_millis(if self.slow { ms * 10 } else { ms })
    }

    fn start(&mut self, ctx: &mut C<'_>, work: Assignment) {
        match work {
            Assignment::Map { attempt, index } => {
                self.running_maps.insert(attempt, index);
                let t = self.task_time(ctx);
                ctx.set_timer(SimTimer::Finish(attempt), t);
            }
            Assignment::Reduce {
                attempt,
                index,
                sources,
            } => {
                self.reduces.insert(
                    attempt,
                    ReduceRun {
                        index,
                        sources,
                        got: BTreeMap::new(),
                        tries: 0,
                        computing: false,
                    },
                );
                self.fetch_missing(ctx, attempt);
            }
        }
    }

    fn fetch_missing(&mut self, ctx: &mut C<'_>, attempt: AttemptId) {
        let Some(run) = self.reduces.get_mut(&attempt) else {
            return;
        };
        if run.tries >= FETCH_TRIES {
            let map = run
                .sources
                .iter()
                .find(|s| !run.got.contains_key(&s.map))
                .map_or(0, |s| s.map);
            self.reduces.remove(&attempt);
            let worker = self.id;
            self.send(
                ctx,
                Request::FetchFailed {
                    worker,
                    attempt,
                    map,
                },
                true,
            );
            return;
        }
        run.tries += 1;
        for s in &run.sources {
            if !run.got.contains_key(&s.map) {
                ctx.send(
                    worker_node(s.worker),
                    SimMsg::Fetch {
                        worker: s.worker,
                        attempt: s.attempt,
                        map: s.map,
                        partition: run.index,
                        reduce: attempt,
                    },
                );
            }
        }
        ctx.set_timer(SimTimer::FetchTimeout(attempt), FETCH_TIMEOUT);
    }

    fn poll(&mut self, ctx: &mut C<'_>) {
        let resend: Vec<(u64, Request)> =
            self.pending.iter().map(|(&i, r)| (i, r.clone())).collect();
        for (id, req) in resend {
            ctx.send(NodeId(0), SimMsg::Req { id, req });
        }
        let running = self.running();
        let req = Request::Poll {
            worker: self.id,
            addr: String::new(),
            want_work: running.len() < 2,
            running,
        };
        self.send(ctx, req, false);
        ctx.set_timer(SimTimer::Poll, POLL_EVERY);
    }

    fn abort(&mut self, ctx: &mut C<'_>, abort: &[AttemptId]) {
        for a in abort {
            self.running_maps.remove(a);
            self.reduces.remove(a);
            ctx.cancel_timer(SimTimer::Finish(*a));
            ctx.cancel_timer(SimTimer::FetchTimeout(*a));
        }
    }
}

impl Actor for MrNode {
    type Msg = SimMsg;
    type Timer = SimTimer;

    fn on_start(&mut self, ctx: &mut C<'_>) {
        if let Some(w) = &mut self.worker {
            let incarnation: u64 = ctx
                .storage()
                .get_value(INCARNATION_KEY)
                .ok()
                .flatten()
                .unwrap_or(0)
                + 1;
            ctx.storage().put_value(INCARNATION_KEY, &incarnation);
            w.id = WorkerId((u64::from(ctx.me().0) << 32) | incarnation);
            w.slow = self.job.straggler == Some(ctx.me());
            ctx.set_timer(SimTimer::Poll, POLL_EVERY);
            return;
        }
        let now = ctx.now();
        let snapshot: Option<MasterSnapshot> = ctx.storage().get_value(SNAPSHOT_KEY).ok().flatten();
        let mut master = match snapshot {
            Some(s) => Master::restore(self.job.master.clone(), s, now),
            None => Master::new(self.job.master.clone(), self.job.maps, self.job.reduces),
        };
        Self::persist(&mut master, &BTreeMap::new(), ctx);
        self.master = Some(master);
        ctx.set_timer(SimTimer::Tick, TICK_EVERY);
    }

    fn on_message(&mut self, ctx: &mut C<'_>, from: Endpoint, msg: SimMsg) {
        let Endpoint::Node(from) = from else {
            return;
        };
        if let Some(master) = &mut self.master {
            if let SimMsg::Req { id, req } = msg {
                let before = master.committed().clone();
                let resp = master.on_request(ctx.now(), req);
                Self::persist(master, &before, ctx);
                ctx.send(from, SimMsg::Resp { id, resp });
            }
            return;
        }
        let Some(w) = &mut self.worker else {
            return;
        };
        match msg {
            SimMsg::Resp { id, resp } => {
                w.pending.remove(&id);
                match resp {
                    Response::Assign { work, abort } => {
                        w.abort(ctx, &abort);
                        w.start(ctx, work);
                    }
                    Response::Wait { abort } => w.abort(ctx, &abort),
                    Response::Ack | Response::Finished => {}
                }
            }
            SimMsg::Fetch {
                worker,
                attempt,
                map,
                partition,
                reduce,
            } => {
                let data = (worker == w.id && w.maps.get(&attempt) == Some(&map))
                    .then(|| contribution(map, partition));
                ctx.send(from, SimMsg::FetchReply { map, reduce, data });
            }
            SimMsg::FetchReply { map, reduce, data } => {
                let Some(run) = w.reduces.get_mut(&reduce) else {
                    return;
                };
                match data {
                    Some(v) => {
                        run.got.insert(map, v);
                        if run.got.len() == run.sources.len() && !run.computing {
                            run.computing = true;
                            ctx.cancel_timer(SimTimer::FetchTimeout(reduce));
                            let t = w.task_time(ctx);
                            ctx.set_timer(SimTimer::Finish(reduce), t);
                        }
                    }
                    None => {
                        // The named worker does not hold the output: give up at once.
                        w.reduces.remove(&reduce);
                        ctx.cancel_timer(SimTimer::FetchTimeout(reduce));
                        let worker = w.id;
                        w.send(
                            ctx,
                            Request::FetchFailed {
                                worker,
                                attempt: reduce,
                                map,
                            },
                            true,
                        );
                    }
                }
            }
            SimMsg::Req { .. } => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut C<'_>, timer: SimTimer) {
        if let Some(master) = &mut self.master {
            let before = master.committed().clone();
            master.on_tick(ctx.now());
            Self::persist(master, &before, ctx);
            ctx.set_timer(SimTimer::Tick, TICK_EVERY);
            return;
        }
        let Some(w) = &mut self.worker else {
            return;
        };
        match timer {
            SimTimer::Poll => w.poll(ctx),
            SimTimer::Finish(attempt) => {
                let worker = w.id;
                if let Some(index) = w.running_maps.remove(&attempt) {
                    w.maps.insert(attempt, index);
                    w.send(
                        ctx,
                        Request::MapDone {
                            worker,
                            attempt,
                            index,
                        },
                        true,
                    );
                } else if let Some(run) = w.reduces.remove(&attempt) {
                    let sum: u64 = run.got.values().sum();
                    w.send(
                        ctx,
                        Request::ReduceDone {
                            worker,
                            attempt,
                            index: run.index,
                            summary: codec::encode(&sum),
                        },
                        true,
                    );
                }
            }
            SimTimer::FetchTimeout(attempt) => w.fetch_missing(ctx, attempt),
            SimTimer::Tick => {}
        }
    }
}

/// The durable commit log of the master: (reduce task, attempt, summary) per commit.
fn commit_log(sim: &Sim<MrNode>) -> Vec<(u32, AttemptId, Vec<u8>)> {
    let Some(storage) = sim.storage(NodeId(0)) else {
        return Vec::new();
    };
    let (first, end) = synod_core::Storage::log_bounds(storage);
    (first.0..end.0)
        .filter_map(|i| storage.read_value(synod_core::LogIndex(i)).ok().flatten())
        .collect()
}

/// Invariant: each reduce task is committed at most once, with the right output.
pub fn committed_once_and_right(sim: &Sim<MrNode>, maps: u32) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (r, attempt, summary) in commit_log(sim) {
        if !seen.insert(r) {
            return Err(format!(
                "reduce task {r} committed twice (again by {attempt})"
            ));
        }
        let got: u64 = codec::decode(&summary).map_err(|e| e.to_string())?;
        let want = expected_reduce(maps, r);
        if got != want {
            return Err(format!(
                "reduce task {r} committed {got} by {attempt}, want {want}: a map output was missed or counted twice"
            ));
        }
    }
    Ok(())
}

/// Whether every reduce task is in the commit log.
pub fn job_complete(sim: &Sim<MrNode>, reduces: u32) -> bool {
    let done: BTreeSet<u32> = commit_log(sim).into_iter().map(|(r, _, _)| r).collect();
    done.len() == reduces as usize
}

/// Options of one simulated run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Worker nodes (plus one master).
    pub workers: u32,
    /// Map tasks.
    pub maps: u32,
    /// Reduce tasks.
    pub reduces: u32,
    /// Faults are injected until this time, then healed.
    pub faults_for: Duration,
    /// The job must be complete by this time.
    pub deadline: Duration,
    /// The master's configuration (and test-only broken variants).
    pub master: MasterConfig,
}

/// A simulation scenario drawn from `seed`: 2–5 workers, 3–16 maps, 1–4 reduces, a random
/// network with loss, and random crash/partition/pause faults (the master may crash too).
pub fn options_for_seed(seed: u64) -> RunOptions {
    RunOptions {
        workers: 2 + (seed % 4) as u32,
        maps: 3 + (seed % 14) as u32,
        reduces: 1 + (seed / 3 % 4) as u32,
        faults_for: Duration::from_secs(10),
        deadline: Duration::from_secs(60),
        master: MasterConfig {
            worker_timeout: Duration::from_millis(800),
            backup_after: Duration::from_millis(300),
            ..MasterConfig::default()
        },
    }
}

/// Run one simulated job; returns the time it completed and the master's counts.
pub fn run(seed: u64, opts: &RunOptions) -> Result<(Duration, super::master::Progress), String> {
    let mut cfg = SimConfig::new(seed, 1 + opts.workers);
    cfg.net = swarm_net(seed);
    let mut faults: FaultConfig = swarm_faults(seed);
    faults.crash = faults.crash.max(1);
    cfg.faults = faults;
    let job = SimJob {
        maps: opts.maps,
        reduces: opts.reduces,
        master: opts.master.clone(),
        straggler: seed.is_multiple_of(2).then_some(NodeId(1)),
    };
    let mut sim = Sim::new(cfg, move |id| MrNode::new(id, job.clone()));
    sim.set_max_events(5_000_000);
    let maps = opts.maps;
    sim.invariant("committed once and right", move |s| {
        committed_once_and_right(s, maps)
    });
    let reduces = opts.reduces;
    let done = sim
        .run_liveness(opts.faults_for, opts.deadline, move |s| {
            job_complete(s, reduces)
        })
        .map_err(|e| e.to_string())?;
    let progress = sim
        .actor(NodeId(0))
        .and_then(|a| a.master())
        .map(|m| m.progress())
        .unwrap_or_default();
    Ok((done, progress))
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_sim::assert_seeds;

    fn replay(seed: u64) -> String {
        format!("synod sim mapreduce --seed {seed}")
    }

    /// §3.3 fault tolerance: with workers (and the master) crashing, partitions and lost
    /// messages, every reduce task commits exactly once with the output of every map task
    /// counted once, and the job completes after the faults heal.
    #[test]
    fn every_task_commits_exactly_once_under_crashes_and_loss() {
        assert_seeds(
            0..60,
            |seed| run(seed, &options_for_seed(seed)).map(|_| ()),
            replay,
        );
    }

    /// A straggler gets a backup attempt near the end of the map phase (§3.6), on a
    /// fault-free network.
    #[test]
    fn a_straggler_gets_a_backup_task() {
        let job = SimJob {
            maps: 4,
            reduces: 1,
            master: MasterConfig {
                worker_timeout: Duration::from_secs(5),
                backup_after: Duration::from_millis(100),
                backup_fraction: 0.5,
                ..MasterConfig::default()
            },
            straggler: Some(NodeId(1)),
        };
        let mut sim = Sim::new(SimConfig::new(7, 3), move |id| MrNode::new(id, job.clone()));
        sim.run_liveness(Duration::ZERO, Duration::from_secs(30), |s| {
            job_complete(s, 1)
        })
        .expect("job completes");
        let p = sim
            .actor(NodeId(0))
            .and_then(|a| a.master())
            .map(|m| m.progress());
        assert!(p.is_some_and(|p| p.backups >= 1), "{p:?}");
    }

    /// The checker is not vacuous: a master that does not re-execute the completed map
    /// tasks of a dead worker leaves reducers unable to fetch, and the job never ends.
    #[test]
    fn checker_catches_a_master_that_skips_map_reexecution() {
        let failures = (0..20)
            .filter(|&seed| {
                let mut o = options_for_seed(seed);
                o.master.broken_no_map_rerun = true;
                o.deadline = Duration::from_secs(30);
                run(seed, &o).is_err()
            })
            .count();
        assert!(failures > 0, "no seed caught the missing re-execution");
    }

    /// The checker is not vacuous: a master that commits late duplicate completions is
    /// caught committing a reduce task twice.
    #[test]
    fn checker_catches_duplicate_commits() {
        let failures = (0..20)
            .filter(|&seed| {
                let mut o = options_for_seed(seed);
                o.master.broken_commit_duplicates = true;
                o.master.backup_fraction = 1.0;
                o.master.backup_after = Duration::ZERO;
                run(seed, &o).is_err_and(|e| e.contains("twice"))
            })
            .count();
        assert!(failures > 0, "no seed caught a duplicate commit");
    }
}
