//! The executor: runs a [`Job`] on threads with exactly-once checkpoints.
//!
//! Tasks: `S` source tasks (source plus the chained stateless operators plus the key
//! partitioner) and `P` window tasks (window operator plus the sink writer). Every source
//! task has one FIFO channel to every window task. Channels carry batches of records
//! (hundreds per message, so the per-record cost is a vector push, not a lock or a
//! syscall), watermarks, idle markers and checkpoint barriers.
//!
//! **Credit-based flow control.** Every channel has a fixed number of credits (buffers). A
//! sender spends one per message and blocks with none left; the receiver returns the credit
//! when it takes the message. A slow window task therefore slows its senders down instead
//! of growing a queue.
//!
//! **Checkpoints** ([`super::checkpoint`]). The coordinator (the thread that called [`run`])
//! triggers checkpoint `n`; each source task records its offset and watermark generator,
//! then sends barrier `n` on every channel after the records before it. Window tasks align,
//! then copy their state and the output produced since the previous barrier and hand both
//! to a background writer (the snapshot is asynchronous: the task carries on at once). The
//! writer writes `checkpoints/chk-n/<task>` and the pending output files, fsyncs them, and
//! acknowledges. When every task has acknowledged, the coordinator writes
//! `checkpoints/chk-n/_COMPLETE` durably and commits the pending output of `n` by renaming
//! it into `output/committed/`.
//!
//! **Recovery.** If any task fails, every task is stopped and restarted from the latest
//! complete checkpoint: window state is reloaded, sources seek to their offsets, pending
//! output of complete checkpoints is committed (renaming is idempotent) and the rest is
//! deleted. A process that was killed recovers the same way when it runs again on the same
//! directory.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // the executor is a driver: it reads the wall clock

use super::checkpoint::{
    Alignment, BarrierAligner, BarrierOutcome, CheckpointCoordinator, CheckpointId, Completed,
    TaskId,
};
use super::pipeline::{Event, Job, SourcePoll};
use super::time::{BoundedOutOfOrderness, EventTime, WatermarkTracker};
use super::window::{Aggregate, Fired, WindowOperator, WindowOutput, WindowState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The state directory could not be read or written.
    #[error("state directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A checkpoint file did not decode, or belongs to a job of another shape.
    #[error("checkpoint {0}")]
    Checkpoint(String),
    /// The input is malformed; replaying it would fail the same way.
    #[error("input: {0}")]
    Input(String),
    /// A worker process or the job manager's network failed.
    #[error("{0}")]
    Cluster(String),
    /// Tasks kept failing.
    #[error("gave up after {restarts} restarts; last failure: {last}")]
    TooManyRestarts {
        /// How many times the job restarted.
        restarts: u32,
        /// The last task failure.
        last: String,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExecError + '_ {
    move |source| ExecError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to run a job.
#[derive(Clone)]
pub struct ExecConfig {
    /// State directory: checkpoints and output.
    pub dir: PathBuf,
    /// Checkpoint every this long; `None`: only a final checkpoint when the input ends.
    pub checkpoint_interval: Option<Duration>,
    /// A checkpoint that has not completed after this long is abandoned.
    pub checkpoint_timeout: Duration,
    /// Records per channel message.
    pub batch_size: usize,
    /// Credits (buffers in flight) per channel.
    pub credits: usize,
    /// Give up after this many restarts.
    pub max_restarts: u32,
    /// Fault injection for tests: attempt `k` fails a task after `crash_plan[k]` records
    /// were read in that attempt (alternately a source task and a window task).
    pub crash_plan: Vec<u64>,
    /// Wall-clock instant of event time zero, for sources whose event time is wall time
    /// (rate-limited generators): window firings then record their latency.
    pub latency_origin: Option<Instant>,
    /// Called about every 200 ms with the job's progress.
    pub progress: Option<ProgressFn>,
}

impl ExecConfig {
    /// Defaults: checkpoints every second, batches of 512, 8 credits per channel.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ExecConfig {
            dir: dir.into(),
            checkpoint_interval: Some(Duration::from_secs(1)),
            checkpoint_timeout: Duration::from_secs(30),
            batch_size: 512,
            credits: 8,
            max_restarts: 100,
            crash_plan: Vec::new(),
            latency_origin: None,
            progress: None,
        }
    }
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// A snapshot of a running job's progress.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Records read by the sources (this attempt and earlier ones, replays included).
    pub events: u64,
    /// Newest event time read by any source.
    pub max_event_time: EventTime,
    /// The smallest watermark over the window tasks.
    pub watermark: EventTime,
    /// Checkpoints completed.
    pub checkpoints: u64,
    /// Duration of the last completed checkpoint.
    pub last_checkpoint: Option<Duration>,
    /// Restarts so far.
    pub restarts: u32,
}

/// What a finished run did.
#[derive(Clone, Debug, Default)]
pub struct JobReport {
    /// Records read by the sources, replays included.
    pub events: u64,
    /// Wall time from start to the final commit.
    pub elapsed: Duration,
    /// Durations of the completed checkpoints.
    pub checkpoint_durations: Vec<Duration>,
    /// The last completed checkpoint.
    pub last_checkpoint: Option<CheckpointId>,
    /// How many times the job restarted from a checkpoint.
    pub restarts: u32,
    /// Window firings written (pre-commit), replays included.
    pub fired: u64,
    /// Late records sent to the side output, replays included.
    pub late: u64,
    /// With `latency_origin`: milliseconds from each window's end to its firing.
    pub fire_latency_ms: Vec<f64>,
    /// With `latency_origin`: milliseconds from each window's end to the commit of its
    /// output.
    pub commit_latency_ms: Vec<f64>,
}

/// A stable 64-bit FNV-1a hash, so that key partitioning does not depend on a random seed.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        // A final avalanche so that small integer keys spread over partitions.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        if self.0 == 0 {
            self.0 = 0xcbf2_9ce4_8422_2325;
        }
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// The window task that owns `key` among `partitions`.
pub fn partition_of<K: Hash>(key: &K, partitions: usize) -> usize {
    let mut h = Fnv::default();
    key.hash(&mut h);
    (h.finish() % partitions as u64) as usize
}

/// What a channel carries, in FIFO order.
#[derive(Serialize, Deserialize)]
pub(crate) enum Element<K, T> {
    Records(Vec<(K, EventTime, T)>),
    Watermark(EventTime),
    Idle,
    Barrier(CheckpointId),
}

/// The sending end of a task's output channels: a local inbox, or a TCP connection to a
/// task in another process ([`super::dist`]).
pub(crate) trait Outlet<M>: Send + Sync {
    /// Send `msg` on `channel`, waiting for a credit.
    fn send(&self, channel: usize, msg: M) -> Result<(), Cancelled>;
}

impl<M: Send> Outlet<M> for Inbox<M> {
    fn send(&self, channel: usize, msg: M) -> Result<(), Cancelled> {
        Inbox::send(self, channel, msg)
    }
}

/// Called with the channel of every element a task takes from its inbox, to return the
/// credit to a remote sender.
pub(crate) type CreditReturn = Arc<dyn Fn(usize) + Send + Sync>;

/// The receiving end of all channels into one task, with per-channel credits.
pub(crate) struct Inbox<M> {
    state: Mutex<InboxState<M>>,
    ready: Condvar,
    credit: Condvar,
}

struct InboxState<M> {
    queue: VecDeque<(usize, M)>,
    credits: Vec<usize>,
    closed: bool,
}

pub(crate) struct Cancelled;

impl<M> Inbox<M> {
    pub(crate) fn new(channels: usize, credits: usize) -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                credits: vec![credits.max(1); channels],
                closed: false,
            }),
            ready: Condvar::new(),
            credit: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState<M>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn send(&self, channel: usize, msg: M) -> Result<(), Cancelled> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return Err(Cancelled);
            }
            if s.credits[channel] > 0 {
                break;
            }
            s = self.credit.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.credits[channel] -= 1;
        s.queue.push_back((channel, msg));
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    fn recv(&self) -> Result<(usize, M), Cancelled> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return Err(Cancelled);
            }
            if let Some((ch, msg)) = s.queue.pop_front() {
                s.credits[ch] += 1;
                drop(s);
                self.credit.notify_all();
                return Ok((ch, msg));
            }
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.credit.notify_all();
    }
}

struct Ack {
    checkpoint: CheckpointId,
    task: TaskId,
    finished: bool,
    window_ends: Vec<EventTime>,
}

pub(crate) struct WriteJob {
    pub(crate) checkpoint: CheckpointId,
    pub(crate) task: TaskId,
    pub(crate) files: Vec<(PathBuf, Vec<u8>)>,
    pub(crate) finished: bool,
    pub(crate) window_ends: Vec<EventTime>,
}

/// Shared between the coordinator and one attempt's tasks.
pub(crate) struct Shared {
    pub(crate) cancel: AtomicBool,
    pub(crate) trigger: AtomicU64,
    pub(crate) events_total: AtomicU64,
    pub(crate) events_attempt: AtomicU64,
    pub(crate) max_event_time: AtomicU64,
    pub(crate) sources_finished: AtomicUsize,
    pub(crate) watermarks: Vec<AtomicU64>,
    pub(crate) fired: AtomicU64,
    pub(crate) late: AtomicU64,
    pub(crate) fire_latency_us: Mutex<Vec<u32>>,
    /// An error that replaying cannot cure (malformed input): the job fails instead of
    /// restarting.
    pub(crate) fatal: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new(windows: usize, events_before: u64) -> Self {
        Shared {
            cancel: AtomicBool::new(false),
            trigger: AtomicU64::new(0),
            events_total: AtomicU64::new(events_before),
            events_attempt: AtomicU64::new(0),
            max_event_time: AtomicU64::new(0),
            sources_finished: AtomicUsize::new(0),
            watermarks: (0..windows).map(|_| AtomicU64::new(0)).collect(),
            fired: AtomicU64::new(0),
            late: AtomicU64::new(0),
            fire_latency_us: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
        }
    }

    pub(crate) fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Serialize, Deserialize)]
struct SourceSnapshot {
    offset: u64,
    watermarks: BoundedOutOfOrderness,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CompleteMarker {
    pub(crate) checkpoint: CheckpointId,
    pub(crate) sources: usize,
    pub(crate) windows: usize,
}

/// Paths inside the state directory.
pub(crate) struct Layout {
    pub(crate) checkpoints: PathBuf,
    pub(crate) pending: PathBuf,
    pub(crate) committed: PathBuf,
}

impl Layout {
    pub(crate) fn new(dir: &Path) -> Self {
        Layout {
            checkpoints: dir.join("checkpoints"),
            pending: dir.join("output").join("pending"),
            committed: dir.join("output").join("committed"),
        }
    }
    pub(crate) fn checkpoint(&self, c: CheckpointId) -> PathBuf {
        self.checkpoints.join(format!("chk-{:010}", c.0))
    }
    pub(crate) fn create(&self) -> Result<(), ExecError> {
        for d in [&self.checkpoints, &self.pending, &self.committed] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        Ok(())
    }
}

/// Write `bytes` to `path` durably: a temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    drop(f);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// The latest checkpoint with a `_COMPLETE` marker in `dir`, if any.
pub fn latest_complete(dir: &Path) -> Result<Option<CheckpointId>, ExecError> {
    let layout = Layout::new(dir);
    let Ok(entries) = fs::read_dir(&layout.checkpoints) else {
        return Ok(None);
    };
    let mut best = None;
    for e in entries {
        let e = e.map_err(io_err(&layout.checkpoints))?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("chk-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if e.path().join("_COMPLETE").exists() && best.is_none_or(|b: CheckpointId| n > b.0) {
            best = Some(CheckpointId(n));
        }
    }
    Ok(best)
}

/// A restart resumes from checkpoint `c` only if it was taken with this job's shape: its
/// state is partitioned by source and window task.
pub(crate) fn check_shape(
    layout: &Layout,
    c: CheckpointId,
    sources: usize,
    windows: usize,
) -> Result<(), ExecError> {
    let marker =
        fs::read(layout.checkpoint(c).join("_COMPLETE")).map_err(io_err(&layout.checkpoint(c)))?;
    let marker: CompleteMarker = postcard::from_bytes(&marker)
        .map_err(|e| ExecError::Checkpoint(format!("{c} marker: {e}")))?;
    if marker.sources != sources || marker.windows != windows {
        return Err(ExecError::Checkpoint(format!(
            "{c} was taken with {} sources and {} window tasks, this job has {sources} and {windows}",
            marker.sources, marker.windows
        )));
    }
    Ok(())
}

/// Pending output files named `<checkpoint>-<rest>`: commit (rename) those of checkpoints
/// up to `upto`, and with `discard_rest` delete the others. Both steps are idempotent.
pub(crate) fn settle_pending(
    layout: &Layout,
    upto: Option<CheckpointId>,
    discard_rest: bool,
) -> Result<(), ExecError> {
    let entries = fs::read_dir(&layout.pending).map_err(io_err(&layout.pending))?;
    let mut renamed = false;
    for e in entries {
        let e = e.map_err(io_err(&layout.pending))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(c) = name.split('-').next().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if upto.is_some_and(|u| c <= u.0) {
            let to = layout.committed.join(name);
            fs::rename(e.path(), &to).map_err(io_err(&to))?;
            renamed = true;
        } else if discard_rest {
            fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
        }
    }
    if renamed {
        fs::File::open(&layout.committed)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&layout.committed))?;
    }
    Ok(())
}

/// The committed output of a job: every line of every committed file, in checkpoint order
/// (`late` selects the side output).
pub fn committed_lines(dir: &Path, late: bool) -> Result<Vec<String>, ExecError> {
    let layout = Layout::new(dir);
    let mut names: Vec<PathBuf> = fs::read_dir(&layout.committed)
        .map_err(io_err(&layout.committed))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".late.jsonl") == late && n.ends_with(".jsonl"))
        })
        .collect();
    names.sort();
    let mut lines = Vec::new();
    for p in names {
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        lines.extend(text.lines().map(str::to_string));
    }
    Ok(lines)
}

struct SinkBuffer<'a> {
    fired: Vec<u8>,
    late: Vec<u8>,
    window_ends: Vec<EventTime>,
    fired_count: u64,
    late_count: u64,
    latency_origin: Option<Instant>,
    latencies: &'a mut Vec<u32>,
}

impl<K: Serialize, O: Serialize, V: Serialize> WindowOutput<K, O, V> for SinkBuffer<'_> {
    fn fired(&mut self, fired: Fired<K, O>) {
        if let Some(origin) = self.latency_origin {
            let end = origin + Duration::from_millis(fired.window.end.0);
            let lat = Instant::now().saturating_duration_since(end);
            self.latencies
                .push(lat.as_micros().min(u32::MAX as u128) as u32);
            self.window_ends.push(fired.window.end);
        }
        // Serializing plain data to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.fired, &fired);
        self.fired.push(b'\n');
        self.fired_count += 1;
    }
    fn late(&mut self, key: &K, ts: EventTime, value: &V) {
        let _ = serde_json::to_writer(&mut self.late, &(key, ts, value));
        self.late.push(b'\n');
        self.late_count += 1;
    }
}

/// Run `job` to the end of its input with exactly-once output in `cfg.dir`. If the
/// directory holds a complete checkpoint of an earlier run, the job resumes from it.
pub fn run<K, T, G>(job: &Job<K, T, G>, cfg: &ExecConfig) -> Result<JobReport, ExecError>
where
    K: Ord + Clone + Hash + Serialize + DeserializeOwned + Send + Sync + std::fmt::Debug + 'static,
    T: Clone + Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static,
    G: Aggregate<In = T>,
{
    let started = Instant::now();
    let layout = Layout::new(&cfg.dir);
    layout.create()?;
    let sources = job.windowed.keyed.input.source_parallelism;
    let windows = job.windowed.parallelism;
    let mut report = JobReport::default();
    let mut events_before = 0u64;
    loop {
        let latest = latest_complete(&cfg.dir)?;
        if let Some(c) = latest {
            check_shape(&layout, c, sources, windows)?;
        }
        settle_pending(&layout, latest, true)?;
        let attempt = report.restarts as usize;
        let shared = Arc::new(Shared::new(windows, events_before));
        let crash_at = cfg.crash_plan.get(attempt).copied();
        let (ack_tx, ack_rx) = mpsc::channel::<Ack>();
        let (write_tx, write_rx) = mpsc::channel::<WriteJob>();
        let writer = std::thread::Builder::new()
            .name("stream-writer".into())
            .spawn(move || -> Result<(), String> {
                for job in write_rx {
                    for (path, bytes) in &job.files {
                        write_durable(path, bytes)
                            .map_err(|e| format!("writing {}: {e}", path.display()))?;
                    }
                    let _ = ack_tx.send(Ack {
                        checkpoint: job.checkpoint,
                        task: job.task,
                        finished: job.finished,
                        window_ends: job.window_ends,
                    });
                }
                Ok(())
            })
            .map_err(io_err(&cfg.dir))?;
        let inboxes: Vec<Arc<Inbox<Element<K, T>>>> = (0..windows)
            .map(|_| Arc::new(Inbox::new(sources, cfg.credits)))
            .collect();
        let mut tasks: Vec<JoinHandle<Result<(), String>>> = Vec::new();
        for i in 0..sources {
            let ctx = SourceTask {
                index: i,
                sources,
                job_source: job.windowed.keyed.input.source.clone(),
                key: job.windowed.keyed.key.clone(),
                outputs: inboxes
                    .iter()
                    .map(|i| i.clone() as Arc<dyn Outlet<Element<K, T>>>)
                    .collect(),
                shared: shared.clone(),
                writes: write_tx.clone(),
                restore: latest.map(|c| layout.checkpoint(c)),
                checkpoint_dir: layout.checkpoints.clone(),
                bound_ms: job.windowed.keyed.input.out_of_orderness_ms,
                idle_timeout: job.windowed.keyed.input.idle_timeout,
                batch: cfg.batch_size.max(1),
                crash_at: if attempt.is_multiple_of(2) && i == 0 {
                    crash_at
                } else {
                    None
                },
            };
            tasks.push(spawn_task(format!("stream-source-{i}"), move || ctx.run()));
        }
        for (j, inbox) in inboxes.iter().enumerate() {
            let ctx = WindowTask {
                index: j,
                sources,
                inbox: inbox.clone(),
                credit_return: None,
                op: WindowOperator::new(
                    job.windowed.assigner,
                    job.windowed.allowed_lateness_ms,
                    job.windowed.trigger,
                    job.aggregate.clone(),
                ),
                shared: shared.clone(),
                writes: write_tx.clone(),
                restore: latest.map(|c| layout.checkpoint(c)),
                checkpoint_dir: layout.checkpoints.clone(),
                pending_dir: layout.pending.clone(),
                latency_origin: cfg.latency_origin,
                crash_at: if attempt % 2 == 1 && j == 0 {
                    crash_at
                } else {
                    None
                },
            };
            tasks.push(spawn_task(format!("stream-window-{j}"), move || ctx.run()));
        }
        drop(write_tx);
        let outcome = coordinate(
            cfg,
            &layout,
            &shared,
            &ack_rx,
            &mut tasks,
            latest,
            sources,
            windows,
            &mut report,
        );
        // Stop this attempt's tasks, whatever happened.
        shared.cancel.store(true, Ordering::SeqCst);
        for inbox in &inboxes {
            inbox.close();
        }
        for t in tasks {
            let _ = t.join();
        }
        let _ = writer.join();
        events_before = shared.events_total.load(Ordering::Relaxed);
        report.events = events_before;
        report.fired += shared.fired.load(Ordering::Relaxed);
        report.late += shared.late.load(Ordering::Relaxed);
        report.fire_latency_ms.extend(
            shared
                .fire_latency_us
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|&us| f64::from(us) / 1000.0),
        );
        match outcome? {
            Outcome::Done => {
                report.elapsed = started.elapsed();
                return Ok(report);
            }
            Outcome::Failed(why) => {
                let last_failure = why;
                report.restarts += 1;
                if report.restarts > cfg.max_restarts {
                    return Err(ExecError::TooManyRestarts {
                        restarts: report.restarts - 1,
                        last: last_failure,
                    });
                }
                tracing::info!(
                    restarts = report.restarts,
                    "stream job restarts: {last_failure}"
                );
            }
        }
    }
}

enum Outcome {
    Done,
    Failed(String),
}

pub(crate) fn spawn_task(
    name: String,
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> JoinHandle<Result<(), String>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(
            move || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(r) => r,
                Err(_) => Err("task panicked".to_string()),
            },
        )
        .unwrap_or_else(|e| std::thread::spawn(move || Err(format!("spawn failed: {e}"))))
}

/// Every task acknowledged checkpoint `done`: mark it complete, commit the output it
/// covers, record how long each window's result waited for that commit (with
/// `latency_origin`), and drop the older checkpoints. Shared by the in-process and the
/// distributed job manager.
pub(crate) fn complete_checkpoint(
    layout: &Layout,
    done: &Completed,
    (sources, windows): (usize, usize),
    ends_at: &mut BTreeMap<CheckpointId, Vec<EventTime>>,
    latency_origin: Option<Instant>,
    report: &mut JobReport,
) -> Result<(), ExecError> {
    let dir = layout.checkpoint(done.id);
    let marker = postcard::to_stdvec(&CompleteMarker {
        checkpoint: done.id,
        sources,
        windows,
    })
    .map_err(|e| ExecError::Checkpoint(e.to_string()))?;
    write_durable(&dir.join("_COMPLETE"), &marker).map_err(io_err(&dir))?;
    settle_pending(layout, Some(done.id), false)?;
    if let Some(origin) = latency_origin {
        let committed = Instant::now();
        for end in ends_at.remove(&done.id).unwrap_or_default() {
            let end = origin + Duration::from_millis(end.0);
            report
                .commit_latency_ms
                .push(committed.saturating_duration_since(end).as_secs_f64() * 1000.0);
        }
    }
    ends_at.retain(|&c, _| c > done.id);
    prune_checkpoints(layout, done.id);
    report
        .checkpoint_durations
        .push(Duration::from_micros(done.duration));
    report.last_checkpoint = Some(done.id);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn coordinate(
    cfg: &ExecConfig,
    layout: &Layout,
    shared: &Shared,
    acks: &mpsc::Receiver<Ack>,
    tasks: &mut [JoinHandle<Result<(), String>>],
    latest: Option<CheckpointId>,
    sources: usize,
    windows: usize,
    report: &mut JobReport,
) -> Result<Outcome, ExecError> {
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_micros() as u64;
    let task_ids = 0..(sources + windows) as TaskId;
    let mut coord = CheckpointCoordinator::new(task_ids, latest);
    let mut last_trigger = Instant::now();
    let mut last_progress = Instant::now();
    let mut finished_at: BTreeMap<CheckpointId, usize> = BTreeMap::new();
    let mut ends_at: BTreeMap<CheckpointId, Vec<EventTime>> = BTreeMap::new();
    loop {
        match acks.recv_timeout(Duration::from_millis(2)) {
            Ok(ack) => {
                if ack.finished {
                    *finished_at.entry(ack.checkpoint).or_default() += 1;
                }
                ends_at
                    .entry(ack.checkpoint)
                    .or_default()
                    .extend(ack.window_ends);
                if let Some(done) = coord.acknowledge(ack.checkpoint, ack.task, now()) {
                    complete_checkpoint(
                        layout,
                        &done,
                        (sources, windows),
                        &mut ends_at,
                        cfg.latency_origin,
                        report,
                    )?;
                    if finished_at.get(&done.id).copied().unwrap_or(0) == sources {
                        return Ok(Outcome::Done);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Ok(Outcome::Failed("checkpoint writer stopped".into()))
            }
        }
        for t in tasks.iter_mut() {
            if t.is_finished() {
                if let Some(why) = shared.fatal() {
                    return Err(ExecError::Input(why));
                }
                return Ok(Outcome::Failed(
                    "a task stopped unexpectedly (see the log for its error)".into(),
                ));
            }
        }
        let all_finished = shared.sources_finished.load(Ordering::SeqCst) == sources;
        let due = cfg
            .checkpoint_interval
            .is_some_and(|i| last_trigger.elapsed() >= i);
        if (due || all_finished) && coord.in_flight() == 0 {
            if let Some(id) = coord.trigger(now()) {
                shared.trigger.store(id.0, Ordering::SeqCst);
                last_trigger = Instant::now();
            }
        }
        let timeout = cfg.checkpoint_timeout.as_micros() as u64;
        if coord.expire(now().saturating_sub(timeout)) > 0 {
            return Ok(Outcome::Failed("a checkpoint timed out".into()));
        }
        if let Some(progress) = &cfg.progress {
            if last_progress.elapsed() >= Duration::from_millis(200) {
                last_progress = Instant::now();
                progress(&Progress {
                    events: shared.events_total.load(Ordering::Relaxed),
                    max_event_time: EventTime(shared.max_event_time.load(Ordering::Relaxed)),
                    watermark: EventTime(
                        shared
                            .watermarks
                            .iter()
                            .map(|w| w.load(Ordering::Relaxed))
                            .min()
                            .unwrap_or(0),
                    ),
                    checkpoints: report.checkpoint_durations.len() as u64,
                    last_checkpoint: report.checkpoint_durations.last().copied(),
                    restarts: report.restarts,
                });
            }
        }
    }
}

/// Keep the latest complete checkpoint only; older ones are no longer needed.
pub(crate) fn prune_checkpoints(layout: &Layout, latest: CheckpointId) {
    let Ok(entries) = fs::read_dir(&layout.checkpoints) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("chk-"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            if n < latest.0 {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

pub(crate) struct SourceTask<K, T> {
    pub(crate) index: usize,
    pub(crate) sources: usize,
    pub(crate) job_source: super::pipeline::SourceFactory<T>,
    pub(crate) key: super::pipeline::KeyFn<K, T>,
    pub(crate) outputs: Vec<Arc<dyn Outlet<Element<K, T>>>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) writes: mpsc::Sender<WriteJob>,
    pub(crate) restore: Option<PathBuf>,
    pub(crate) checkpoint_dir: PathBuf,
    pub(crate) bound_ms: u64,
    pub(crate) idle_timeout: Duration,
    pub(crate) batch: usize,
    pub(crate) crash_at: Option<u64>,
}

impl<K: Hash, T> SourceTask<K, T> {
    pub(crate) fn run(self) -> Result<(), String> {
        let mut source = (self.job_source)(self.index, self.sources);
        let mut gen = BoundedOutOfOrderness::new(self.bound_ms);
        if let Some(dir) = &self.restore {
            let path = dir.join(format!("source-{}", self.index));
            let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let snap: SourceSnapshot =
                postcard::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            source.seek(snap.offset)?;
            gen = snap.watermarks;
        }
        let partitions = self.outputs.len();
        let mut bufs: Vec<Vec<(K, EventTime, T)>> = (0..partitions)
            .map(|_| Vec::with_capacity(self.batch))
            .collect();
        let mut events: Vec<Event<T>> = Vec::with_capacity(self.batch);
        let mut last_trigger = self.shared.trigger.load(Ordering::SeqCst);
        let mut sent_wm = EventTime::MIN;
        let mut idle_since: Option<Instant> = None;
        let mut idle_declared = false;
        let mut finished = false;
        let mut read = 0u64;
        let send = |p: usize, el: Element<K, T>| -> Result<(), String> {
            self.outputs[p]
                .send(self.index, el)
                .map_err(|_| "cancelled".to_string())
        };
        let flush = |bufs: &mut Vec<Vec<(K, EventTime, T)>>| -> Result<(), String> {
            for (p, buf) in bufs.iter_mut().enumerate() {
                if !buf.is_empty() {
                    let full = std::mem::replace(buf, Vec::with_capacity(self.batch));
                    send(p, Element::Records(full))?;
                }
            }
            Ok(())
        };
        loop {
            if self.shared.cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            let requested = self.shared.trigger.load(Ordering::SeqCst);
            if requested > last_trigger {
                last_trigger = requested;
                let id = CheckpointId(requested);
                flush(&mut bufs)?;
                let snap = postcard::to_stdvec(&SourceSnapshot {
                    offset: source.offset(),
                    watermarks: gen.clone(),
                })
                .map_err(|e| e.to_string())?;
                let path = self
                    .checkpoint_dir
                    .join(format!("chk-{:010}", id.0))
                    .join(format!("source-{}", self.index));
                self.writes
                    .send(WriteJob {
                        checkpoint: id,
                        task: self.index as TaskId,
                        files: vec![(path, snap)],
                        finished,
                        window_ends: Vec::new(),
                    })
                    .map_err(|_| "writer gone".to_string())?;
                for p in 0..partitions {
                    send(p, Element::Barrier(id))?;
                }
            }
            if finished {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            events.clear();
            let status = source.poll(&mut events, self.batch);
            if !events.is_empty() {
                idle_since = None;
                idle_declared = false;
                let n = events.len() as u64;
                for e in events.drain(..) {
                    gen.observe(e.ts);
                    let k = (self.key)(&e.value);
                    let p = partition_of(&k, partitions);
                    let buf = &mut bufs[p];
                    buf.push((k, e.ts, e.value));
                    if buf.len() >= self.batch {
                        let full = std::mem::replace(buf, Vec::with_capacity(self.batch));
                        send(p, Element::Records(full))?;
                    }
                }
                read += n;
                self.shared.events_total.fetch_add(n, Ordering::Relaxed);
                let in_attempt = self.shared.events_attempt.fetch_add(n, Ordering::Relaxed) + n;
                if self.crash_at.is_some_and(|c| in_attempt >= c) {
                    return Err(format!("injected failure after {read} records"));
                }
                let wm = gen.watermark();
                if wm > sent_wm {
                    flush(&mut bufs)?;
                    for p in 0..partitions {
                        send(p, Element::Watermark(wm))?;
                    }
                    sent_wm = wm;
                    self.shared
                        .max_event_time
                        .fetch_max(wm.plus(self.bound_ms).0, Ordering::Relaxed);
                }
            }
            match status {
                SourcePoll::Ready => {}
                SourcePoll::Idle => {
                    flush(&mut bufs)?;
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if !idle_declared && since.elapsed() >= self.idle_timeout {
                        idle_declared = true;
                        for p in 0..partitions {
                            send(p, Element::Idle)?;
                        }
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                SourcePoll::Failed => {
                    let why = source
                        .error()
                        .unwrap_or_else(|| "the source failed".to_string());
                    *self.shared.fatal.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(why.clone());
                    return Err(why);
                }
                SourcePoll::Finished => {
                    flush(&mut bufs)?;
                    for p in 0..partitions {
                        send(p, Element::Watermark(EventTime::MAX))?;
                    }
                    finished = true;
                    self.shared.sources_finished.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

pub(crate) struct WindowTask<K, T, G: Aggregate> {
    pub(crate) index: usize,
    pub(crate) sources: usize,
    pub(crate) inbox: Arc<Inbox<Element<K, T>>>,
    pub(crate) credit_return: Option<CreditReturn>,
    pub(crate) op: WindowOperator<K, Arc<G>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) writes: mpsc::Sender<WriteJob>,
    pub(crate) restore: Option<PathBuf>,
    pub(crate) checkpoint_dir: PathBuf,
    pub(crate) pending_dir: PathBuf,
    pub(crate) latency_origin: Option<Instant>,
    pub(crate) crash_at: Option<u64>,
}

impl<K, T, G> WindowTask<K, T, G>
where
    K: Ord + Clone + Serialize + DeserializeOwned,
    T: Serialize,
    G: Aggregate<In = T>,
{
    pub(crate) fn run(mut self) -> Result<(), String> {
        let task = (self.sources + self.index) as TaskId;
        if let Some(dir) = &self.restore {
            let path = dir.join(format!("window-{}", self.index));
            let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let state: WindowState<K, G::Acc> =
                postcard::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            self.op.restore(state);
        }
        let mut tracker = WatermarkTracker::new(self.sources);
        let mut aligner = BarrierAligner::new(self.sources);
        let mut held: Vec<VecDeque<Element<K, T>>> =
            (0..self.sources).map(|_| VecDeque::new()).collect();
        let mut replay: VecDeque<(usize, Element<K, T>)> = VecDeque::new();
        let mut latencies = Vec::new();
        let mut out = SinkBuffer {
            fired: Vec::new(),
            late: Vec::new(),
            window_ends: Vec::new(),
            fired_count: 0,
            late_count: 0,
            latency_origin: self.latency_origin,
            latencies: &mut latencies,
        };
        let mut seen = 0u64;
        loop {
            let (ch, el) = match replay.pop_front() {
                Some(x) => x,
                None => match self.inbox.recv() {
                    Ok(x) => {
                        if let Some(credit_return) = &self.credit_return {
                            credit_return(x.0);
                        }
                        x
                    }
                    Err(Cancelled) => return Ok(()),
                },
            };
            if aligner.admit(ch) == Alignment::Hold {
                held[ch].push_back(el);
                continue;
            }
            match el {
                Element::Records(records) => {
                    tracker.on_record(ch);
                    seen += records.len() as u64;
                    for (k, ts, v) in &records {
                        self.op.on_record(k, *ts, v, &mut out);
                    }
                    if self
                        .crash_at
                        .is_some_and(|c| self.shared.events_attempt.load(Ordering::Relaxed) >= c)
                    {
                        return Err(format!("injected failure after {seen} records"));
                    }
                }
                Element::Watermark(w) => {
                    if let Some(w) = tracker.on_watermark(ch, w) {
                        self.op.on_watermark(w, &mut out);
                        self.shared.watermarks[self.index].store(w.0, Ordering::Relaxed);
                    }
                }
                Element::Idle => {
                    if let Some(w) = tracker.on_idle(ch) {
                        self.op.on_watermark(w, &mut out);
                        self.shared.watermarks[self.index].store(w.0, Ordering::Relaxed);
                    }
                }
                Element::Barrier(id) => match aligner.on_barrier(ch, id) {
                    BarrierOutcome::Aligned(id) => {
                        let state =
                            postcard::to_stdvec(&self.op.snapshot()).map_err(|e| e.to_string())?;
                        let chk = self.checkpoint_dir.join(format!("chk-{:010}", id.0));
                        let mut files = vec![(chk.join(format!("window-{}", self.index)), state)];
                        if !out.fired.is_empty() {
                            files.push((
                                self.pending_dir
                                    .join(format!("{:010}-{:04}.jsonl", id.0, self.index)),
                                std::mem::take(&mut out.fired),
                            ));
                        }
                        if !out.late.is_empty() {
                            files.push((
                                self.pending_dir
                                    .join(format!("{:010}-{:04}.late.jsonl", id.0, self.index)),
                                std::mem::take(&mut out.late),
                            ));
                        }
                        self.shared
                            .fired
                            .fetch_add(out.fired_count, Ordering::Relaxed);
                        self.shared
                            .late
                            .fetch_add(out.late_count, Ordering::Relaxed);
                        out.fired_count = 0;
                        out.late_count = 0;
                        self.writes
                            .send(WriteJob {
                                checkpoint: id,
                                task,
                                files,
                                finished: false,
                                window_ends: std::mem::take(&mut out.window_ends),
                            })
                            .map_err(|_| "writer gone".to_string())?;
                        if !out.latencies.is_empty() {
                            self.shared
                                .fire_latency_us
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .append(out.latencies);
                        }
                        for (c, q) in held.iter_mut().enumerate() {
                            replay.extend(q.drain(..).map(|e| (c, e)));
                        }
                    }
                    BarrierOutcome::Waiting | BarrierOutcome::Stale => {}
                },
            }
        }
    }
}
