//! PageRank's iterations as one job of persistent workers, in bulk synchronous supersteps
//! (Valiant, "A Bridging Model for Parallel Computation", CACM 1990; as in Pregel,
//! Malewicz et al., SIGMOD 2010, and Spark's cached RDDs), instead of one MapReduce job
//! per iteration.
//!
//! The master assigns the graph's R partitions (written by `pagerank-build`) to the live
//! workers: a *plan* with an epoch number. Each worker loads its partitions once and keeps
//! them and their ranks in memory. In superstep k every worker sends, for each partition p
//! it owns and each partition q, the rank contributions of p's nodes to q's nodes (summed
//! per target, in p's destination-table order) to q's owner, with p's dangling rank and
//! its L1 change of superstep k-1; a partition owned by the same worker is handed over in
//! memory. The owner of q adds the R contributions in partition order (the same order as
//! the per-iteration job's reducer, so the ranks are bit-identical) and computes q's new
//! ranks. Every worker receives every partition's dangling rank and change, so all decide
//! the stopping rule alike without asking the master.
//!
//! Fault tolerance (checkpointing, as Pregel §4.2): every `checkpoint_every` supersteps
//! each owner writes its partitions' ranks (fsynced, renamed into place) and reports them.
//! A worker silent for `worker_timeout` is dead: the master starts a new epoch over the
//! live workers, resuming from the latest checkpoint that covers every partition (the
//! build's ranks if none). Messages carry the epoch, and a worker drops those of an older
//! one. The computation is deterministic, so the output is the same whatever fails. The
//! final ranks are written like a reduce commit: temporary file, fsync, rename.
//!
//! The master persists the epochs it handed out and the checkpoints reported
//! ([`IterSnapshot`], in the job's state file, before any answer that depends on it), so a
//! restarted master resumes from the latest complete checkpoint, in an epoch newer than
//! any a worker may still run.

// A driver: real time, real sockets and files (the master below is pure).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use super::jobs::{cached_partition, graph_file, rank_file, GraphPartition};
use super::master::WorkerId;
use super::shuffle::{partition_of, read_frame, write_frame};
use super::task::Counters;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use synod_core::Instant;

/// The job name of the iterations.
pub const JOB: &str = "pagerank-iterate";

/// The largest contribution message accepted (values).
const MAX_VALUES: u64 = 1 << 28;

/// What the iterations need, from the job's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct IterParams {
    /// Vertices.
    pub nodes: f64,
    /// Damping factor.
    pub damping: f64,
    /// The dangling rank of the build's ranks (1/N per dangling node).
    pub dangling: f64,
    /// Stop when the L1 change is below this.
    pub tolerance: f64,
    /// At most this many iterations.
    pub max_iterations: u32,
    /// Checkpoint every this many iterations (0: never).
    pub checkpoint_every: u32,
    /// The build's partitions.
    pub graph: PathBuf,
    /// Where each owner also writes its partitions' final ranks as text
    /// (`node<TAB>rank` lines, one file per partition), in parallel on the workers.
    pub text: Option<PathBuf>,
}

impl IterParams {
    /// Read and check the parameters.
    pub fn parse(p: &super::jobs::Params) -> Result<Self, super::jobs::JobError> {
        let get = |name: &str| -> Result<&String, super::jobs::JobError> {
            p.get(name).ok_or_else(|| super::jobs::JobError::Param {
                name: name.into(),
                problem: "missing".into(),
            })
        };
        let num = |name: &str| -> Result<f64, super::jobs::JobError> {
            let v = get(name)?;
            v.parse().map_err(|_| super::jobs::JobError::Param {
                name: name.into(),
                problem: format!("`{v}` is not valid"),
            })
        };
        let params = IterParams {
            nodes: num("nodes")?,
            damping: num("damping")?,
            dangling: num("dangling")?,
            tolerance: num("tolerance")?,
            max_iterations: num("max_iterations")? as u32,
            checkpoint_every: num("checkpoint_every")? as u32,
            graph: get("graph")?.into(),
            text: p.get("text").map(PathBuf::from),
        };
        if !(params.nodes >= 1.0
            && (0.0..=1.0).contains(&params.damping)
            && params.dangling >= 0.0
            && params.tolerance >= 0.0)
        {
            return Err(super::jobs::JobError::Param {
                name: "nodes/damping/dangling/tolerance".into(),
                problem: "out of range".into(),
            });
        }
        Ok(params)
    }
}

// ---------------------------------------------------------------------------------------
// Messages between the master and the workers.

/// Worker → master (inside [`super::wire::ToMaster::Iter`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum IterRequest {
    /// The heartbeat, with what happened since the last one.
    Poll {
        /// The worker.
        worker: WorkerId,
        /// Where it receives contributions.
        exchange: String,
        /// Checkpoints written and partitions finished.
        reports: Vec<IterReport>,
    },
}

/// A worker's news.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum IterReport {
    /// The ranks of `partition` after `iteration` are checkpointed.
    Checkpoint {
        /// The iteration.
        iteration: u32,
        /// The partition.
        partition: u32,
        /// Its L1 change in that iteration.
        delta: f64,
    },
    /// `partition`'s final ranks are committed.
    Done {
        /// The plan's epoch.
        epoch: u64,
        /// The partition.
        partition: u32,
        /// Iterations run.
        iterations: u32,
        /// Its L1 change in the last iteration.
        delta: f64,
        /// Its rank on dangling nodes.
        dangling: f64,
    },
}

/// Which worker runs which partitions, from which checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// Grows with every new assignment.
    pub epoch: u64,
    /// Per partition: its owner and where the owner receives contributions.
    pub owners: Vec<(WorkerId, String)>,
    /// The checkpoint to start from (0: the build's ranks).
    pub resume: u32,
    /// Per partition, its L1 change in iteration `resume` (infinite for 0).
    pub resume_delta: Vec<f64>,
}

/// Master → worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum IterResponse {
    /// Not started yet (waiting for the workers).
    Wait,
    /// Run this plan (a worker already running its epoch carries on).
    Run(Plan),
    /// Every partition is done.
    Finished,
}

// ---------------------------------------------------------------------------------------
// The master: a pure state machine.

/// The iteration master's tunables.
#[derive(Clone, Debug)]
pub struct IterConfig {
    /// Graph partitions.
    pub partitions: u32,
    /// A worker unheard-from for this long is dead.
    pub worker_timeout: Duration,
    /// Start the first epoch when this many workers have polled (or after one timeout).
    pub expected_workers: u32,
}

/// What the iteration master persists, so that a restarted master resumes from the
/// latest complete checkpoint (workers keep their checkpoint files) and numbers its epochs
/// past every epoch a worker may still be running.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IterSnapshot {
    /// The last epoch handed out.
    pub epoch: u64,
    /// Iteration → partition → its L1 change, for checkpoints written.
    pub checkpoints: BTreeMap<u32, BTreeMap<u32, f64>>,
}

/// Assigns partitions to workers and starts a new epoch when an owner dies.
pub struct IterMaster {
    cfg: IterConfig,
    first_poll: Option<Instant>,
    workers: BTreeMap<WorkerId, (String, Instant)>,
    plan: Option<Plan>,
    /// The persisted part: epochs handed out and checkpoints written.
    saved: IterSnapshot,
    /// `saved` changed since it was last taken.
    dirty: bool,
    /// Partition → (iterations, change, dangling), in the current epoch.
    done: BTreeMap<u32, (u32, f64, f64)>,
    dead_workers: u64,
}

impl IterMaster {
    /// A master with no workers yet.
    pub fn new(cfg: IterConfig) -> Self {
        Self::restore(cfg, IterSnapshot::default())
    }

    /// A restarted master: no workers yet, and the epochs and checkpoints of `saved`.
    pub fn restore(cfg: IterConfig, saved: IterSnapshot) -> Self {
        IterMaster {
            cfg,
            first_poll: None,
            workers: BTreeMap::new(),
            plan: None,
            saved,
            dirty: false,
            done: BTreeMap::new(),
            dead_workers: 0,
        }
    }

    /// What to persist.
    pub fn snapshot(&self) -> &IterSnapshot {
        &self.saved
    }

    /// Whether the snapshot changed since the last call. The caller persists it before
    /// any answer leaves, so that no worker runs an epoch a restarted master might hand
    /// out again with other owners.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Every partition's final ranks are committed.
    pub fn finished(&self) -> bool {
        self.done.len() == self.cfg.partitions as usize
    }

    /// The current plan.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// (partitions done, partitions, live workers, dead workers).
    pub fn progress(&self) -> (u32, u32, u32, u64) {
        (
            self.done.len() as u32,
            self.cfg.partitions,
            self.workers.len() as u32,
            self.dead_workers,
        )
    }

    /// `iterations`, and `delta` and `dangling` summed over the partitions in order.
    pub fn counters(&self) -> Counters {
        let mut c = Counters::new();
        let (mut delta, mut dangling, mut iterations) = (0.0, 0.0, 0u32);
        for (it, d, g) in self.done.values() {
            delta += d;
            dangling += g;
            iterations = iterations.max(*it);
        }
        c.insert("delta".into(), delta);
        c.insert("dangling".into(), dangling);
        c.insert("iterations".into(), f64::from(iterations));
        let resumed = self.plan.as_ref().map_or(0, |p| p.resume);
        c.insert("resumed_from".into(), f64::from(resumed));
        c
    }

    /// A worker's poll.
    pub fn on_request(&mut self, now: Instant, req: IterRequest) -> IterResponse {
        let IterRequest::Poll {
            worker,
            exchange,
            reports,
        } = req;
        self.first_poll.get_or_insert(now);
        self.workers.insert(worker, (exchange, now));
        for r in reports {
            match r {
                // A checkpoint is correct whatever epoch wrote it: the computation is
                // deterministic.
                IterReport::Checkpoint {
                    iteration,
                    partition,
                    delta,
                } if partition < self.cfg.partitions => {
                    let parts = self.saved.checkpoints.entry(iteration).or_default();
                    if parts.insert(partition, delta) != Some(delta) {
                        self.dirty = true;
                    }
                }
                IterReport::Done {
                    epoch,
                    partition,
                    iterations,
                    delta,
                    dangling,
                } if self.plan.as_ref().is_some_and(|p| p.epoch == epoch)
                    && partition < self.cfg.partitions =>
                {
                    self.done.insert(partition, (iterations, delta, dangling));
                }
                _ => {}
            }
        }
        if self.finished() {
            return IterResponse::Finished;
        }
        if self.plan.is_none() {
            let waited = self
                .first_poll
                .is_some_and(|t| now.0.saturating_sub(t.0) >= self.timeout());
            if self.workers.len() as u32 >= self.cfg.expected_workers.max(1) || waited {
                self.start_epoch();
            }
        }
        match &self.plan {
            Some(p) => IterResponse::Run(p.clone()),
            None => IterResponse::Wait,
        }
    }

    fn timeout(&self) -> u64 {
        self.cfg.worker_timeout.as_nanos() as u64
    }

    /// Let time pass: a silent worker is dead, and if it owned a partition the work is
    /// reassigned from the latest complete checkpoint.
    pub fn on_tick(&mut self, now: Instant) {
        let timeout = self.timeout();
        let dead: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, (_, seen))| now.0.saturating_sub(seen.0) > timeout)
            .map(|(w, _)| *w)
            .collect();
        if dead.is_empty() {
            if self.plan.is_none()
                && !self.workers.is_empty()
                && self
                    .first_poll
                    .is_some_and(|t| now.0.saturating_sub(t.0) >= timeout)
            {
                self.start_epoch();
            }
            return;
        }
        for w in &dead {
            self.workers.remove(w);
            self.dead_workers += 1;
        }
        let owned = self
            .plan
            .as_ref()
            .is_some_and(|p| p.owners.iter().any(|(w, _)| dead.contains(w)));
        if owned && !self.finished() {
            self.start_epoch();
        }
    }

    fn start_epoch(&mut self) {
        let live: Vec<(WorkerId, String)> = self
            .workers
            .iter()
            .map(|(w, (a, _))| (*w, a.clone()))
            .collect();
        if live.is_empty() {
            self.plan = None;
            return;
        }
        let r = self.cfg.partitions;
        let (resume, resume_delta) = self
            .saved
            .checkpoints
            .iter()
            .rev()
            .find(|(_, parts)| parts.len() == r as usize)
            .map(|(it, parts)| (*it, parts.values().copied().collect()))
            .unwrap_or((0, vec![f64::INFINITY; r as usize]));
        self.saved.epoch += 1;
        self.dirty = true;
        let epoch = self.saved.epoch;
        self.plan = Some(Plan {
            epoch,
            owners: (0..r as usize)
                .map(|q| live[q % live.len()].clone())
                .collect(),
            resume,
            resume_delta,
        });
        self.done.clear();
    }
}

// ---------------------------------------------------------------------------------------
// The exchange of contributions between workers.

/// Header of one contribution message; `count` f64 (little-endian) follow.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ContributionHeader {
    job: u64,
    epoch: u64,
    iteration: u32,
    from: u32,
    to: u32,
    dangling: f64,
    delta: f64,
    count: u64,
    crc: u32,
}

/// Contributions of one partition to another in one superstep.
struct Contribution {
    dangling: f64,
    delta: f64,
    values: Vec<f64>,
}

type MailKey = (u64, u32, u32, u32); // epoch, iteration, to, from

/// Messages received, until the superstep that needs them takes them.
#[derive(Default)]
struct Mailbox {
    mail: Mutex<(u64, BTreeMap<MailKey, Contribution>)>,
    arrived: Condvar,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<MailKey, Contribution>)> {
        self.mail.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, key: MailKey, c: Contribution) {
        let mut m = self.lock();
        // Mail of an older epoch is stale.
        if key.0 >= m.0 {
            m.1.insert(key, c);
            self.arrived.notify_all();
        }
    }

    /// Start epoch `epoch`: drop older mail.
    fn begin(&self, epoch: u64) {
        let mut m = self.lock();
        m.0 = epoch;
        m.1.retain(|k, _| k.0 >= epoch);
    }

    /// Take the contributions to `to` from every partition, in partition order.
    fn take_all(
        &self,
        epoch: u64,
        iteration: u32,
        to: u32,
        partitions: u32,
        cancel: &AtomicBool,
    ) -> io::Result<Vec<Contribution>> {
        let mut m = self.lock();
        loop {
            let have = (0..partitions).all(|from| m.1.contains_key(&(epoch, iteration, to, from)));
            if have {
                return Ok((0..partitions)
                    .filter_map(|from| m.1.remove(&(epoch, iteration, to, from)))
                    .collect());
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "epoch cancelled",
                ));
            }
            m = self
                .arrived
                .wait_timeout(m, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

fn read_contribution(r: &mut impl Read, job: u64) -> io::Result<Option<(MailKey, Contribution)>> {
    let h: ContributionHeader = match read_frame(r, 1024) {
        Ok(h) => h,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if h.count > MAX_VALUES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a contribution of {} values", h.count),
        ));
    }
    let mut bytes = vec![0u8; h.count as usize * 8];
    r.read_exact(&mut bytes)?;
    if crc32c::crc32c(&bytes) != h.crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("checksum mismatch on contribution {} → {}", h.from, h.to),
        ));
    }
    if h.job != job {
        // Another job's message (a late peer): read and dropped.
        return Ok(Some((
            (0, 0, u32::MAX, u32::MAX),
            Contribution {
                dangling: 0.0,
                delta: 0.0,
                values: Vec::new(),
            },
        )));
    }
    let values = bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    Ok(Some((
        (h.epoch, h.iteration, h.to, h.from),
        Contribution {
            dangling: h.dangling,
            delta: h.delta,
            values,
        },
    )))
}

/// Receive contributions on `ip` (port chosen by the OS) into `mailbox`.
fn start_exchange(ip: IpAddr, job: u64, mailbox: Arc<Mailbox>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mailbox = mailbox.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::with_capacity(1 << 20, stream);
                loop {
                    match read_contribution(&mut r, job) {
                        Ok(Some((key, c))) => mailbox.put(key, c),
                        Ok(None) => return,
                        Err(e) => {
                            tracing::debug!("exchange connection: {e}");
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Connections to the other workers' exchanges, opened on first use.
struct Peers {
    streams: BTreeMap<String, BufWriter<TcpStream>>,
}

impl Peers {
    fn send(&mut self, addr: &str, h: &ContributionHeader, bytes: &[u8]) -> io::Result<()> {
        for attempt in 0..3 {
            if !self.streams.contains_key(addr) {
                let a: SocketAddr = addr.parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {addr}"))
                })?;
                match TcpStream::connect_timeout(&a, Duration::from_secs(1)) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        self.streams
                            .insert(addr.to_string(), BufWriter::with_capacity(1 << 20, s));
                    }
                    Err(e) if attempt < 2 => {
                        tracing::debug!("exchange {addr}: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(w) = self.streams.get_mut(addr) else {
                continue;
            };
            let sent = write_frame(w, h).and_then(|()| {
                w.write_all(bytes)?;
                w.flush()
            });
            match sent {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 2 => {
                    tracing::debug!("exchange {addr}: {e}");
                    self.streams.remove(addr);
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("exchange: no connection"))
    }
}

// ---------------------------------------------------------------------------------------
// A worker's supersteps.

/// One epoch on one worker: its partitions, their ranks, the superstep loop.
struct Epoch<'a> {
    params: &'a IterParams,
    plan: &'a Plan,
    me: WorkerId,
    job: u64,
    output: &'a Path,
    mailbox: &'a Mailbox,
    cancel: &'a AtomicBool,
    reports: &'a std::sync::mpsc::Sender<IterReport>,
    /// Testing aid: sleep this long before each superstep.
    step_delay: Duration,
}

fn partition_file(q: u32) -> String {
    format!("part-{q:05}")
}

fn checkpoint_dir(output: &Path, iteration: u32) -> PathBuf {
    output
        .join("_checkpoint")
        .join(format!("iter-{iteration:05}"))
}

/// Write `bytes` to `dir/name` durably: temporary file, fsync, rename, directory fsync.
fn commit_file(dir: &Path, name: &str, bytes: &[u8], attempt: u64) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{attempt}"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl Epoch<'_> {
    fn run(&self) -> io::Result<()> {
        let r = self.plan.owners.len() as u32;
        let mine: Vec<u32> = (0..r)
            .filter(|&q| self.plan.owners[q as usize].0 == self.me)
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        // My partitions whole (kept parsed by the process), the others' destination
        // tables only (what a receiver needs to place their contributions).
        let mut graph: BTreeMap<u32, Arc<GraphPartition>> = BTreeMap::new();
        for &q in &mine {
            graph.insert(
                q,
                cached_partition(&self.params.graph.join(partition_file(q)))?,
            );
        }
        let dests: Vec<Vec<u64>> = (0..r)
            .map(|p| match graph.get(&p) {
                Some(g) => Ok(g.dests.clone()),
                None => {
                    let path = self.params.graph.join(partition_file(p));
                    let bytes = super::jobs::read_partition(&path)?;
                    graph_file::read_destinations(&bytes, &mut 0)
                }
            })
            .collect::<io::Result<_>>()?;
        // The partition of each destination of each partition (fixed: computed once).
        let mut key = Vec::with_capacity(10);
        let dest_part: Vec<Vec<u32>> = dests
            .iter()
            .map(|ds| {
                ds.iter()
                    .map(|&d| {
                        key.clear();
                        graph_file::put_varint(&mut key, d);
                        partition_of(&key, r)
                    })
                    .collect()
            })
            .collect();
        // For each partition q of mine and each p: the node of q that each of p's
        // destinations in q is (both lists are in key order: one merge).
        let mut targets: BTreeMap<u32, Vec<Vec<u32>>> = BTreeMap::new();
        for &q in &mine {
            let gq = &graph[&q];
            let mut per_p = Vec::with_capacity(r as usize);
            for (p, ds) in dests.iter().enumerate() {
                let mut idx = Vec::new();
                let mut i = 0;
                for (j, &d) in ds.iter().enumerate() {
                    if dest_part[p][j] != q {
                        continue;
                    }
                    key.clear();
                    graph_file::put_varint(&mut key, d);
                    while i < gq.nodes.len() && gq.key(&gq.nodes[i]) < key.as_slice() {
                        i += 1;
                    }
                    if i == gq.nodes.len() || gq.key(&gq.nodes[i]) != key.as_slice() {
                        return Err(graph_file::damaged(
                            "a link target missing from its partition",
                        ));
                    }
                    idx.push(i as u32);
                }
                per_p.push(idx);
            }
            targets.insert(q, per_p);
        }
        // Ranks and last changes of my partitions, from the plan's checkpoint.
        let mut ranks: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        let mut delta: BTreeMap<u32, f64> = BTreeMap::new();
        for &q in &mine {
            let g = &graph[&q];
            let rk = if self.plan.resume == 0 {
                g.ranks(None, self.params.nodes)?
            } else {
                let path = checkpoint_dir(self.output, self.plan.resume).join(partition_file(q));
                rank_file::read(&super::jobs::read_partition(&path)?, g.nodes.len())?
            };
            ranks.insert(q, rk);
            delta.insert(
                q,
                self.plan
                    .resume_delta
                    .get(q as usize)
                    .copied()
                    .unwrap_or(f64::INFINITY),
            );
        }
        let mut peers = Peers {
            streams: BTreeMap::new(),
        };
        let mut k = self.plan.resume;
        loop {
            if k >= self.params.max_iterations {
                return self.finish(k, &mine, &graph, &ranks, &delta);
            }
            let next = k + 1;
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
            // Send: my partitions' contributions, dangling rank and last change.
            for &p in &mine {
                let g = &graph[&p];
                let rk = &ranks[&p];
                let mut sums = vec![0.0f64; g.dests.len()];
                let mut dangling = 0.0;
                for (node, rank) in g.nodes.iter().zip(rk) {
                    if node.degree == 0 {
                        dangling += rank;
                        continue;
                    }
                    let share = rank / node.degree as f64;
                    for l in g.links(node) {
                        *sums.get_mut(l as usize).ok_or_else(|| {
                            graph_file::damaged("link past the destination table")
                        })? += share;
                    }
                }
                let mut split: Vec<Vec<f64>> = vec![Vec::new(); r as usize];
                for (s, &q) in sums.iter().zip(&dest_part[p as usize]) {
                    split[q as usize].push(*s);
                }
                for (q, values) in split.into_iter().enumerate() {
                    let (owner, addr) = &self.plan.owners[q];
                    let key = (self.plan.epoch, next, q as u32, p);
                    let c = Contribution {
                        dangling,
                        delta: delta[&p],
                        values,
                    };
                    if *owner == self.me {
                        self.mailbox.put(key, c);
                        continue;
                    }
                    let mut bytes = Vec::with_capacity(c.values.len() * 8);
                    for v in &c.values {
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                    let h = ContributionHeader {
                        job: self.job,
                        epoch: self.plan.epoch,
                        iteration: next,
                        from: p,
                        to: q as u32,
                        dangling: c.dangling,
                        delta: c.delta,
                        count: c.values.len() as u64,
                        crc: crc32c::crc32c(&bytes),
                    };
                    peers.send(addr, &h, &bytes)?;
                }
            }
            // Receive and apply.
            let mut new_ranks = BTreeMap::new();
            let mut new_delta = BTreeMap::new();
            for &q in &mine {
                let mail = self
                    .mailbox
                    .take_all(self.plan.epoch, next, q, r, self.cancel)?;
                // The stopping rule on iteration k's change, summed in partition order
                // like the per-iteration job's counters; every worker sees the same sum.
                let change = mail.iter().fold(0.0, |a, c| a + c.delta);
                if k > 0 && change < self.params.tolerance {
                    return self.finish(k, &mine, &graph, &ranks, &delta);
                }
                let spread = if next == 1 {
                    self.params.dangling
                } else {
                    mail.iter().fold(0.0, |a, c| a + c.dangling)
                };
                let g = &graph[&q];
                let mut sums = vec![0.0f64; g.nodes.len()];
                for (c, idx) in mail.iter().zip(&targets[&q]) {
                    if c.values.len() != idx.len() {
                        return Err(graph_file::damaged("a contribution of the wrong length"));
                    }
                    for (v, &i) in c.values.iter().zip(idx) {
                        sums[i as usize] += v;
                    }
                }
                let (d, n) = (self.params.damping, self.params.nodes);
                let mut change_q = 0.0;
                let old = &ranks[&q];
                let rk: Vec<f64> = sums
                    .iter()
                    .zip(old)
                    .map(|(s, o)| {
                        let rank = (1.0 - d) / n + d * (s + spread / n);
                        change_q += (rank - o).abs();
                        rank
                    })
                    .collect();
                new_ranks.insert(q, rk);
                new_delta.insert(q, change_q);
            }
            ranks = new_ranks;
            delta = new_delta;
            k = next;
            let every = self.params.checkpoint_every;
            if every > 0 && k.is_multiple_of(every) && k < self.params.max_iterations {
                let dir = checkpoint_dir(self.output, k);
                for &q in &mine {
                    let mut bytes = Vec::new();
                    rank_file::write(&mut bytes, &ranks[&q]);
                    commit_file(&dir, &partition_file(q), &bytes, self.plan.epoch)?;
                    let _ = self.reports.send(IterReport::Checkpoint {
                        iteration: k,
                        partition: q,
                        delta: delta[&q],
                    });
                }
            }
        }
    }

    /// Commit the final ranks of my partitions and report them.
    fn finish(
        &self,
        iterations: u32,
        mine: &[u32],
        graph: &BTreeMap<u32, Arc<GraphPartition>>,
        ranks: &BTreeMap<u32, Vec<f64>>,
        delta: &BTreeMap<u32, f64>,
    ) -> io::Result<()> {
        for &q in mine {
            let rk = &ranks[&q];
            let mut bytes = Vec::new();
            rank_file::write(&mut bytes, rk);
            commit_file(self.output, &partition_file(q), &bytes, self.plan.epoch)?;
            if let Some(text) = &self.params.text {
                let bytes = rank_text(&graph[&q], rk);
                commit_file(text, &partition_file(q), &bytes, self.plan.epoch)?;
            }
            let dangling = graph[&q]
                .nodes
                .iter()
                .zip(rk)
                .filter(|(n, _)| n.degree == 0)
                .fold(0.0, |a, (_, r)| a + r);
            let _ = self.reports.send(IterReport::Done {
                epoch: self.plan.epoch,
                partition: q,
                iterations,
                delta: if iterations == 0 { 0.0 } else { delta[&q] },
                dangling,
            });
        }
        Ok(())
    }
}

/// A partition's ranks as text: `node<TAB>rank` lines in the partition's (shuffle key)
/// order, the ranks formatted as Rust prints an `f64` (shortest round-trip).
fn rank_text(g: &GraphPartition, ranks: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(g.nodes.len() * 32);
    for (node, rank) in g.nodes.iter().zip(ranks) {
        // Writing into a Vec cannot fail.
        let _ = writeln!(out, "{}\t{rank}", node.id);
    }
    out
}

/// How a worker reaches the master for the iterations (see `worker.rs`).
pub(crate) trait IterMasterLink {
    /// Send a poll, get the answer.
    fn poll(&mut self, req: IterRequest) -> anyhow::Result<IterResponse>;
}

/// Run the iterations' job on this worker until the master says it is finished.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_iterations(
    link: &mut dyn IterMasterLink,
    worker: WorkerId,
    job: u64,
    params: &super::jobs::Params,
    output: &Path,
    data_ip: IpAddr,
    heartbeat: Duration,
    step_delay: Duration,
) -> anyhow::Result<()> {
    let params = Arc::new(IterParams::parse(params)?);
    let mailbox = Arc::new(Mailbox::default());
    let exchange = start_exchange(data_ip, job, mailbox.clone())?;
    let (tx, rx) = std::sync::mpsc::channel();
    // The epoch this worker runs, and its thread until that has ended well.
    type Running = (
        u64,
        Arc<AtomicBool>,
        Option<std::thread::JoinHandle<io::Result<()>>>,
    );
    let mut running: Option<Running> = None;
    let stop = |running: &mut Option<Running>| {
        if let Some((_, cancel, h)) = running.take() {
            cancel.store(true, Ordering::Relaxed);
            if let Some(h) = h {
                let _ = h.join();
            }
        }
    };
    let mut reports = Vec::new();
    loop {
        reports.extend(rx.try_iter());
        let resp = link.poll(IterRequest::Poll {
            worker,
            exchange: exchange.to_string(),
            reports: std::mem::take(&mut reports),
        })?;
        match resp {
            IterResponse::Finished => {
                stop(&mut running);
                return Ok(());
            }
            IterResponse::Wait => {}
            IterResponse::Run(plan) => {
                if running.as_ref().is_some_and(|(e, _, _)| *e != plan.epoch) {
                    stop(&mut running);
                }
                // An epoch that failed here (a peer unreachable, a damaged file) ends
                // this worker (crash-stop): the master sees it go silent and reassigns
                // its partitions from the last checkpoint. Rerunning the epoch alone could
                // wait forever for contributions the others have already sent.
                if let Some((e, _, slot)) = running.as_mut() {
                    if slot.as_ref().is_some_and(|h| h.is_finished()) {
                        match slot.take().map(|h| h.join()) {
                            Some(Ok(Err(err))) => anyhow::bail!("epoch {e} failed: {err}"),
                            Some(Err(_)) => anyhow::bail!("epoch {e} panicked"),
                            _ => {}
                        }
                    }
                }
                if running.is_none() {
                    mailbox.begin(plan.epoch);
                    let cancel = Arc::new(AtomicBool::new(false));
                    let (params, mailbox, tx, output, c2) = (
                        params.clone(),
                        mailbox.clone(),
                        tx.clone(),
                        output.to_path_buf(),
                        cancel.clone(),
                    );
                    let epoch = plan.epoch;
                    let h = std::thread::spawn(move || {
                        Epoch {
                            params: &params,
                            plan: &plan,
                            me: worker,
                            job,
                            output: &output,
                            mailbox: &mailbox,
                            cancel: &c2,
                            reports: &tx,
                            step_delay,
                        }
                        .run()
                    });
                    running = Some((epoch, cancel, Some(h)));
                }
            }
        }
        // Wait for the next heartbeat, or for news to report.
        if let Ok(r) = rx.recv_timeout(heartbeat) {
            reports.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> IterConfig {
        IterConfig {
            partitions: 3,
            worker_timeout: Duration::from_secs(1),
            expected_workers: 2,
        }
    }

    fn poll(m: &mut IterMaster, t: u64, w: u64, reports: Vec<IterReport>) -> IterResponse {
        m.on_request(
            Instant(t * 1_000_000),
            IterRequest::Poll {
                worker: WorkerId(w),
                exchange: format!("127.0.0.1:{}", 9000 + w),
                reports,
            },
        )
    }

    fn done(epoch: u64, partition: u32) -> IterReport {
        IterReport::Done {
            epoch,
            partition,
            iterations: 10,
            delta: 0.5,
            dangling: 0.25,
        }
    }

    /// The first epoch waits for the expected workers and spreads the partitions over them.
    #[test]
    fn the_first_plan_waits_for_the_workers_and_uses_them_all() {
        let mut m = IterMaster::new(cfg());
        assert_eq!(poll(&mut m, 0, 1, vec![]), IterResponse::Wait);
        let IterResponse::Run(plan) = poll(&mut m, 10, 2, vec![]) else {
            panic!("no plan with two workers");
        };
        assert_eq!(plan.epoch, 1);
        assert_eq!(plan.resume, 0);
        let owners: Vec<u64> = plan.owners.iter().map(|(w, _)| w.0).collect();
        assert_eq!(owners, vec![1, 2, 1]);
    }

    /// A dead owner's partitions move to the live workers in a new epoch that resumes from
    /// the latest checkpoint every partition has; reports of the old epoch do not count.
    #[test]
    fn a_dead_owner_restarts_the_epoch_from_the_last_complete_checkpoint() {
        let mut m = IterMaster::new(cfg());
        poll(&mut m, 0, 1, vec![]);
        poll(&mut m, 0, 2, vec![]);
        let ck = |iteration, partition| IterReport::Checkpoint {
            iteration,
            partition,
            delta: f64::from(iteration) + f64::from(partition) / 10.0,
        };
        poll(&mut m, 100, 1, vec![ck(5, 0), ck(5, 2), ck(10, 0)]);
        poll(&mut m, 100, 2, vec![ck(5, 1), done(1, 1)]);
        // Worker 2 falls silent.
        for t in (200..1200).step_by(100) {
            poll(&mut m, t, 1, vec![]);
            m.on_tick(Instant(t * 1_000_000));
        }
        m.on_tick(Instant(1_200_000_000));
        let Some(plan) = m.plan().cloned() else {
            panic!("no plan");
        };
        assert_eq!(plan.epoch, 2);
        assert!(plan.owners.iter().all(|(w, _)| w.0 == 1));
        assert_eq!(
            plan.resume, 5,
            "iteration 10 is not checkpointed everywhere"
        );
        assert_eq!(plan.resume_delta, vec![5.0, 5.1, 5.2]);
        // A late report of epoch 1 does not finish the job.
        poll(&mut m, 1300, 1, vec![done(1, 0), done(1, 2)]);
        assert!(!m.finished());
        let r = poll(&mut m, 1400, 1, vec![done(2, 0), done(2, 1), done(2, 2)]);
        assert_eq!(r, IterResponse::Finished);
        assert_eq!(m.counters()["delta"], 1.5);
        assert_eq!(m.counters()["iterations"], 10.0);
    }

    /// The iteration master under faults, over many seeds: workers crash and join, and the
    /// master crashes and restarts from what it last persisted (the driver persists after
    /// every request and tick whose snapshot is dirty). Workers advance one superstep per
    /// step while every owner of the plan they run is alive, checkpoint every 3 and finish
    /// at 12. Checked at every step: plan epochs only grow, across restarts too; a plan
    /// resumes from a checkpoint every partition reported, with the reported changes, and
    /// a restarted master never resumes from before the last complete checkpoint it had
    /// persisted; after the faults stop, the job finishes.
    fn faulty_run(seed: u64) -> Result<(), String> {
        use rand::{Rng, SeedableRng};
        const EVERY: u32 = 3;
        const LAST: u32 = 12;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let partitions = rng.gen_range(2..6u32);
        let cfg = IterConfig {
            partitions,
            worker_timeout: Duration::from_millis(500),
            expected_workers: 2,
        };
        let delta = |k: u32, q: u32| f64::from(k * 10 + q);
        let mut master = IterMaster::new(cfg.clone());
        let mut persisted = master.snapshot().clone();
        let mut alive: Vec<u64> = vec![1, 2, 3];
        let mut next_worker = 4;
        // The plan the workers run, its current superstep, and reports not yet sent.
        let mut running: Option<(Plan, u32)> = None;
        let mut outbox: BTreeMap<u64, Vec<IterReport>> = BTreeMap::new();
        let (mut last_epoch, mut restarts) = (0u64, 0);
        let complete = |s: &IterSnapshot| {
            s.checkpoints
                .iter()
                .rev()
                .find(|(_, parts)| parts.len() == partitions as usize)
                .map_or(0, |(k, _)| *k)
        };
        let mut floor = 0;
        for step in 0..400u64 {
            let now = Instant(step * 100_000_000);
            let faulty = step < 200;
            if faulty && rng.gen_bool(0.03) && alive.len() > 1 {
                let w = alive.remove(rng.gen_range(0..alive.len()));
                outbox.remove(&w);
            }
            if faulty && rng.gen_bool(0.03) {
                alive.push(next_worker);
                next_worker += 1;
            }
            if faulty && rng.gen_bool(0.02) {
                // The master crashes: whatever it had not persisted is gone.
                floor = complete(&persisted);
                master = IterMaster::restore(cfg.clone(), persisted.clone());
                restarts += 1;
            }
            for &w in &alive {
                let reports = outbox.remove(&w).unwrap_or_default();
                let resp = master.on_request(
                    now,
                    IterRequest::Poll {
                        worker: WorkerId(w),
                        exchange: format!("w{w}"),
                        reports,
                    },
                );
                if master.take_dirty() {
                    persisted = master.snapshot().clone();
                }
                match resp {
                    IterResponse::Run(plan) => {
                        if plan.epoch < last_epoch {
                            return Err(format!("epoch {} after {last_epoch}", plan.epoch));
                        }
                        if plan.epoch > last_epoch {
                            if plan.resume < floor {
                                return Err(format!(
                                    "restart {restarts} resumed from {} but {floor} was complete",
                                    plan.resume
                                ));
                            }
                            if plan.resume > 0 {
                                for (q, d) in plan.resume_delta.iter().enumerate() {
                                    if *d != delta(plan.resume, q as u32) {
                                        return Err(format!(
                                            "plan resumes {} with change {d} for {q}",
                                            plan.resume
                                        ));
                                    }
                                }
                            }
                            last_epoch = plan.epoch;
                            floor = 0;
                            let k = plan.resume;
                            running = Some((plan, k));
                        }
                    }
                    IterResponse::Wait | IterResponse::Finished => {}
                }
            }
            master.on_tick(now);
            if master.take_dirty() {
                persisted = master.snapshot().clone();
            }
            if master.finished() {
                return Ok(());
            }
            // One superstep, if every owner of the running plan is alive.
            if let Some((plan, k)) = running.as_mut() {
                let owners_alive = plan.owners.iter().all(|(w, _)| alive.contains(&w.0));
                if owners_alive && *k < LAST {
                    *k += 1;
                    for (q, (w, _)) in plan.owners.iter().enumerate() {
                        let q = q as u32;
                        let out = outbox.entry(w.0).or_default();
                        if *k == LAST {
                            out.push(IterReport::Done {
                                epoch: plan.epoch,
                                partition: q,
                                iterations: LAST,
                                delta: delta(LAST, q),
                                dangling: 0.0,
                            });
                        } else if k.is_multiple_of(EVERY) {
                            out.push(IterReport::Checkpoint {
                                iteration: *k,
                                partition: q,
                                delta: delta(*k, q),
                            });
                        }
                    }
                }
            }
        }
        Err(format!(
            "not finished 200 steps after the faults stopped ({restarts} master restarts)"
        ))
    }

    #[test]
    fn the_iteration_master_survives_worker_and_master_crashes() {
        synod_sim::assert_seeds(0..200, faulty_run, |seed| {
            format!(
                "SYNOD_SEED={seed} cargo test -p synod-dataflow --lib \
                 the_iteration_master_survives_worker_and_master_crashes"
            )
        });
    }

    /// A master restored from its snapshot starts from the latest complete checkpoint, in
    /// an epoch past every one handed out before, and the snapshot is dirty exactly when
    /// something to persist changed.
    #[test]
    fn a_restored_master_resumes_from_its_checkpoints_in_a_newer_epoch() {
        let mut m = IterMaster::new(cfg());
        assert!(!m.take_dirty());
        poll(&mut m, 0, 1, vec![]);
        poll(&mut m, 0, 2, vec![]);
        assert!(m.take_dirty(), "the first epoch is persisted");
        let ck = |iteration, partition| IterReport::Checkpoint {
            iteration,
            partition,
            delta: f64::from(partition),
        };
        poll(&mut m, 100, 1, vec![ck(3, 0), ck(3, 1)]);
        assert!(m.take_dirty());
        poll(&mut m, 100, 1, vec![ck(3, 0)]);
        assert!(!m.take_dirty(), "a repeated report changes nothing");
        poll(&mut m, 100, 2, vec![ck(3, 2), ck(6, 1)]);
        assert!(m.take_dirty());
        let saved = m.snapshot().clone();
        assert_eq!(saved.epoch, 1);

        let mut r = IterMaster::restore(cfg(), saved);
        assert_eq!(r.plan(), None);
        poll(&mut r, 0, 7, vec![]);
        poll(&mut r, 0, 8, vec![]);
        let Some(plan) = r.plan().cloned() else {
            panic!("no plan");
        };
        assert_eq!(plan.epoch, 2, "newer than the epoch before the restart");
        assert_eq!(plan.resume, 3, "iteration 6 is not checkpointed everywhere");
        assert_eq!(plan.resume_delta, vec![0.0, 1.0, 2.0]);
        assert!(r.take_dirty());
        let reports = (0..3).map(|q| done(2, q)).collect();
        assert_eq!(poll(&mut r, 100, 7, reports), IterResponse::Finished);
        assert_eq!(r.counters()["resumed_from"], 3.0);
    }

    /// With fewer workers than expected, the first epoch starts after one timeout.
    #[test]
    fn a_missing_worker_does_not_block_the_start() {
        let mut m = IterMaster::new(cfg());
        assert_eq!(poll(&mut m, 0, 7, vec![]), IterResponse::Wait);
        m.on_tick(Instant(1_000_000_000));
        assert!(matches!(
            poll(&mut m, 1000, 7, vec![]),
            IterResponse::Run(_)
        ));
    }

    /// A contribution that fails its checksum is an error, never a panic or a wrong value.
    #[test]
    fn a_damaged_contribution_is_rejected() {
        let values = [1.5f64, 2.5];
        let mut bytes = Vec::new();
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let h = ContributionHeader {
            job: 7,
            epoch: 1,
            iteration: 1,
            from: 0,
            to: 1,
            dangling: 0.0,
            delta: 0.0,
            count: 2,
            crc: crc32c::crc32c(&bytes),
        };
        let mut frame = Vec::new();
        write_frame(&mut frame, &h).unwrap();
        frame.extend_from_slice(&bytes);
        let (key, c) = read_contribution(&mut frame.as_slice(), 7)
            .unwrap()
            .unwrap();
        assert_eq!(key, (1, 1, 1, 0));
        assert_eq!(c.values, values);
        let last = frame.len() - 1;
        frame[last] ^= 1;
        assert!(read_contribution(&mut frame.as_slice(), 7).is_err());
        let cut = frame.len() - 3;
        assert!(read_contribution(&mut &frame[..cut], 7).is_err());
    }
}
