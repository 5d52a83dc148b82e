//! The job spread over processes: a job manager and `N` worker processes joined by TCP.
//!
//! **Job manager** ([`run_manager`]). It starts the workers (through a caller-supplied
//! spawn function, e.g. `synod stream worker`), accepts one control connection from each,
//! assigns source task `i` to worker `i mod N` and window task `j` to worker `j mod N`, and
//! tells every worker where each window task listens. It then plays the checkpoint
//! coordinator of [`super::exec`] over the control connections: it triggers checkpoints,
//! collects the acknowledgements of durable snapshots, writes `_COMPLETE` and commits the
//! pending output (two-phase commit), exactly as the threaded executor does.
//!
//! **Failure detection.** A worker sends a heartbeat every 100 ms. A closed control
//! connection, a worker process that exited, or silence longer than the heartbeat timeout
//! counts as the worker's death. The manager then kills the remaining workers, waits for
//! them to exit (so no old task can still write a pending file), settles the pending output
//! against the latest complete checkpoint, and starts a new set of workers that restore
//! from it (Carbone et al. 2015, §4.3: global failover from the last complete snapshot).
//! Workers exit by themselves when their manager's connection closes.
//!
//! **Shuffle.** Every (source task, window task) pair is a TCP connection from the source's
//! worker to the window task's worker (also when both are in the same process, so every
//! record takes the same path). Frames are length-prefixed (`u32` little-endian) and
//! bounds-checked; the payload is a postcard-encoded element: a batch of records, a
//! watermark, an idle marker or a barrier, in FIFO order, so barriers and watermarks
//! travel in the same channel as the records they follow. **Credit-based flow control**
//! runs over the same connection in the other direction: the sender starts with `credits`
//! credits, spends one per frame and blocks with none; the window task returns a credit
//! frame when it takes an element from its inbox. A slow window task therefore stops its
//! senders after `credits` frames, whatever the socket buffers would hold.
//!
//! Checkpoint files and output live in the state directory, which every process can read
//! and write (one machine here; a shared or distributed file system in general, as Flink's
//! checkpoint storage is).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // a driver: sockets, processes and the wall clock

use super::checkpoint::{CheckpointCoordinator, CheckpointId, TaskId};
use super::exec::{
    check_shape, complete_checkpoint, io_err, latest_complete, settle_pending, spawn_task,
    write_durable, Cancelled, CreditReturn, Element, ExecConfig, ExecError, Inbox, JobReport,
    Layout, Outlet, Progress, Shared, SourceTask, WindowTask, WriteJob,
};
use super::pipeline::Job;
use super::time::EventTime;
use super::window::{Aggregate, WindowOperator};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::Hash;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The largest frame accepted on a data connection (a batch of records).
pub const MAX_DATA_FRAME: usize = 64 << 20;
/// The largest frame accepted on a control connection.
pub const MAX_CONTROL_FRAME: usize = 16 << 20;

/// Write one frame: a `u32` little-endian length, then `payload`.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)
}

/// Read one frame of at most `max` bytes. `Ok(None)` at a clean end of stream (between
/// frames); an error for a frame over the limit or a stream that ends inside a frame.
pub fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame header",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("connection closed inside a {len}-byte frame: {e}"),
        )
    })?;
    Ok(Some(payload))
}

fn encode<M: Serialize>(msg: &M) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn decode<M: DeserializeOwned>(bytes: &[u8], what: &str) -> io::Result<M> {
    postcard::from_bytes(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed {what} ({} bytes): {e}", bytes.len()),
        )
    })
}

fn send_msg<M: Serialize>(w: &mut impl Write, msg: &M) -> io::Result<()> {
    write_frame(w, &encode(msg)?)
}

fn recv_msg<M: DeserializeOwned>(
    r: &mut impl Read,
    max: usize,
    what: &str,
) -> io::Result<Option<M>> {
    match read_frame(r, max)? {
        Some(bytes) => decode(&bytes, what).map(Some),
        None => Ok(None),
    }
}

/// Worker → manager.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToManager {
    /// The first message: who I am and where my window tasks listen.
    Hello {
        worker: u32,
        token: u64,
        data_addr: String,
        pid: u32,
    },
    /// Every 100 ms: this attempt's counters in this worker.
    Heartbeat {
        events: u64,
        sources_finished: u32,
        max_event_time: u64,
        watermark: u64,
        fired: u64,
        late: u64,
        fire_latency_us: Vec<u32>,
    },
    /// A task's snapshot (and pending output) for `checkpoint` is durable.
    Ack {
        checkpoint: u64,
        task: TaskId,
        finished: bool,
        window_ends: Vec<u64>,
        /// This worker's records read, firings and late records so far in this attempt.
        events: u64,
        fired: u64,
        late: u64,
    },
    /// A task failed; `fatal` when replaying cannot help (malformed input).
    Failed { reason: String, fatal: bool },
}

/// Manager → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run these tasks, restored from `restore`.
    Assign {
        sources: u32,
        windows: u32,
        my_sources: Vec<u32>,
        my_windows: Vec<u32>,
        window_addrs: Vec<String>,
        restore: Option<u64>,
        origin_unix_micros: Option<u64>,
    },
    /// Start checkpoint `n` at the sources.
    Trigger(u64),
    /// The job is done: exit.
    Stop,
}

/// The first frame on a data connection.
#[derive(Debug, Serialize, Deserialize)]
struct DataHello {
    token: u64,
    source: u32,
    window: u32,
}

/// How to run a job over worker processes.
pub struct ManagerConfig {
    /// The executor's settings: directory, checkpoint interval and timeout, restarts,
    /// progress, latency origin.
    pub exec: ExecConfig,
    /// Worker processes.
    pub workers: usize,
    /// A worker silent for this long is dead.
    pub heartbeat_timeout: Duration,
    /// Where the manager's control listener binds.
    pub bind: SocketAddr,
    /// Where the current workers' process ids are written, one a line (for operators and
    /// crash tests).
    pub pid_file: Option<PathBuf>,
}

impl ManagerConfig {
    /// `workers` workers, a 2 s heartbeat timeout, a listener on a free loopback port.
    pub fn new(exec: ExecConfig, workers: usize) -> Self {
        ManagerConfig {
            exec,
            workers: workers.max(1),
            heartbeat_timeout: Duration::from_secs(2),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid_file: None,
        }
    }
}

/// A started worker, as the manager sees it: a child process of the manager
/// (`--workers N`), or a process a cluster node started for it (`--cluster`).
pub trait WorkerProcess: Send {
    /// The operating system's process id (for the pid file).
    fn pid(&self) -> u32;
    /// Stop it at once (SIGKILL), without waiting.
    fn kill(&mut self);
    /// Return once no code of this worker can run any more, so it cannot write a file
    /// after the manager settles the pending output.
    fn wait(&mut self);
    /// `Some(why)` once the manager knows the worker has exited.
    fn exited(&mut self) -> Option<String>;
}

impl WorkerProcess for Child {
    fn pid(&self) -> u32 {
        self.id()
    }
    fn kill(&mut self) {
        let _ = Child::kill(self);
    }
    fn wait(&mut self) {
        let _ = Child::wait(self);
    }
    fn exited(&mut self) -> Option<String> {
        match self.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

/// Starts worker `index` for the manager at `manager`; `token` must be passed on to
/// [`WorkerSession::connect`].
pub type SpawnWorker<'a> =
    dyn FnMut(usize, SocketAddr, u64) -> io::Result<Box<dyn WorkerProcess>> + 'a;

enum Event {
    Msg(usize, ToManager),
    Gone(usize, String),
}

struct WorkerHandle {
    child: Box<dyn WorkerProcess>,
    control: Option<TcpStream>,
}

fn kill_all(workers: &mut [WorkerHandle]) {
    for w in workers.iter_mut() {
        w.child.kill();
    }
    for w in workers.iter_mut() {
        w.child.wait();
    }
}

fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Run a job with `sources` source tasks and `windows` window tasks over worker processes
/// to the end of its input, restarting from the latest complete checkpoint whenever a
/// worker dies. The job itself lives in the workers; the manager only coordinates.
pub fn run_manager(
    cfg: &ManagerConfig,
    sources: usize,
    windows: usize,
    spawn: &mut SpawnWorker<'_>,
) -> Result<JobReport, ExecError> {
    let started = Instant::now();
    let exec = &cfg.exec;
    let layout = Layout::new(&exec.dir);
    layout.create()?;
    let listener = TcpListener::bind(cfg.bind).map_err(io_err(&exec.dir))?;
    let manager_addr = listener.local_addr().map_err(io_err(&exec.dir))?;
    listener.set_nonblocking(true).map_err(io_err(&exec.dir))?;
    let origin_unix = exec
        .latency_origin
        .map(|o| unix_micros(SystemTime::now()).saturating_sub(o.elapsed().as_micros() as u64));
    let mut report = JobReport::default();
    let mut events_before = 0u64;
    let mut token_seq = 0u64;
    loop {
        let latest = latest_complete(&exec.dir)?;
        if let Some(c) = latest {
            check_shape(&layout, c, sources, windows)?;
        }
        settle_pending(&layout, latest, true)?;
        token_seq += 1;
        let token = (u64::from(std::process::id()) << 32) | token_seq;
        let mut workers = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers {
            match spawn(i, manager_addr, token) {
                Ok(child) => workers.push(WorkerHandle {
                    child,
                    control: None,
                }),
                Err(e) => {
                    kill_all(&mut workers);
                    return Err(ExecError::Cluster(format!("starting worker {i}: {e}")));
                }
            }
        }
        if let Some(path) = &cfg.pid_file {
            let pids: String = workers
                .iter()
                .map(|w| format!("{}\n", w.child.pid()))
                .collect();
            write_durable(path, pids.as_bytes()).map_err(io_err(path))?;
        }
        let outcome = attempt(
            cfg,
            &listener,
            token,
            &mut workers,
            &layout,
            latest,
            sources,
            windows,
            origin_unix,
            events_before,
            &mut report,
        );
        let done = matches!(outcome, Ok(Outcome::Done { .. }));
        if done {
            for w in workers.iter_mut() {
                if let Some(c) = &mut w.control {
                    let _ = send_msg(c, &ToWorker::Stop);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            for w in workers.iter_mut() {
                while Instant::now() < deadline {
                    if w.child.exited().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        // Whatever happened, no worker of this attempt may outlive it.
        kill_all(&mut workers);
        match outcome? {
            Outcome::Done { events } => {
                report.events = events_before + events;
                report.elapsed = started.elapsed();
                return Ok(report);
            }
            Outcome::Failed {
                why,
                events,
                fired,
                late,
            } => {
                events_before += events;
                report.fired += fired;
                report.late += late;
                report.events = events_before;
                report.restarts += 1;
                if report.restarts > exec.max_restarts {
                    return Err(ExecError::TooManyRestarts {
                        restarts: report.restarts - 1,
                        last: why,
                    });
                }
                tracing::info!(restarts = report.restarts, "stream job restarts: {why}");
            }
        }
    }
}

enum Outcome {
    Done {
        events: u64,
    },
    Failed {
        why: String,
        events: u64,
        fired: u64,
        late: u64,
    },
}

#[derive(Default, Clone)]
struct WorkerStats {
    events: u64,
    sources_finished: u32,
    max_event_time: u64,
    watermark: u64,
    fired: u64,
    late: u64,
}

#[allow(clippy::too_many_arguments)]
fn attempt(
    cfg: &ManagerConfig,
    listener: &TcpListener,
    token: u64,
    workers: &mut [WorkerHandle],
    layout: &Layout,
    latest: Option<CheckpointId>,
    sources: usize,
    windows: usize,
    origin_unix: Option<u64>,
    events_before: u64,
    report: &mut JobReport,
) -> Result<Outcome, ExecError> {
    let exec = &cfg.exec;
    let n = workers.len();
    let failed = |why: String, stats: &[WorkerStats]| Outcome::Failed {
        why,
        events: stats.iter().map(|s| s.events).sum(),
        fired: stats.iter().map(|s| s.fired).sum(),
        late: stats.iter().map(|s| s.late).sum(),
    };
    let mut stats = vec![WorkerStats::default(); n];
    // Registration: one control connection per worker, within the heartbeat timeout of
    // the last progress (a worker may take a while to start on a loaded machine).
    let mut data_addrs: Vec<Option<String>> = vec![None; n];
    let register_deadline = Instant::now() + cfg.heartbeat_timeout.max(Duration::from_secs(10));
    while data_addrs.iter().any(Option::is_none) {
        if Instant::now() > register_deadline {
            return Ok(failed("workers did not register in time".into(), &stats));
        }
        for (i, w) in workers.iter_mut().enumerate() {
            if let Some(status) = w.child.exited() {
                return Ok(failed(
                    format!("worker {i} exited before registering ({status})"),
                    &stats,
                ));
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut s = stream;
                match recv_msg::<ToManager>(&mut s, MAX_CONTROL_FRAME, "worker hello") {
                    Ok(Some(ToManager::Hello {
                        worker,
                        token: t,
                        data_addr,
                        ..
                    })) if t == token && (worker as usize) < n => {
                        let _ = s.set_read_timeout(None);
                        let _ = s.set_nodelay(true);
                        data_addrs[worker as usize] = Some(data_addr);
                        workers[worker as usize].control = Some(s);
                    }
                    // A connection from an earlier attempt's worker, or garbage: drop it.
                    _ => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(ExecError::Cluster(format!("accepting workers: {e}"))),
        }
    }
    let window_addrs: Vec<String> = (0..windows)
        .map(|j| data_addrs[j % n].clone().unwrap_or_default())
        .collect();
    let (tx, events) = mpsc::channel::<Event>();
    for (i, w) in workers.iter_mut().enumerate() {
        let Some(control) = w.control.as_mut() else {
            continue;
        };
        let assign = ToWorker::Assign {
            sources: sources as u32,
            windows: windows as u32,
            my_sources: (0..sources)
                .filter(|s| s % n == i)
                .map(|s| s as u32)
                .collect(),
            my_windows: (0..windows)
                .filter(|j| j % n == i)
                .map(|j| j as u32)
                .collect(),
            window_addrs: window_addrs.clone(),
            restore: latest.map(|c| c.0),
            origin_unix_micros: origin_unix,
        };
        if let Err(e) = send_msg(control, &assign) {
            return Ok(failed(
                format!("assigning tasks to worker {i}: {e}"),
                &stats,
            ));
        }
        let reader = control
            .try_clone()
            .map_err(|e| ExecError::Cluster(format!("control connection: {e}")))?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            loop {
                match recv_msg::<ToManager>(&mut r, MAX_CONTROL_FRAME, "worker message") {
                    Ok(Some(m)) => {
                        if tx.send(Event::Msg(i, m)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Event::Gone(i, "closed its connection".into()));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Event::Gone(i, e.to_string()));
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_micros() as u64;
    let mut coord = CheckpointCoordinator::new(0..(sources + windows) as TaskId, latest);
    let mut last_heard = vec![Instant::now(); n];
    let mut last_trigger = Instant::now();
    let mut last_progress = Instant::now();
    let mut finished_at: BTreeMap<CheckpointId, usize> = BTreeMap::new();
    let mut ends_at: BTreeMap<CheckpointId, Vec<EventTime>> = BTreeMap::new();
    let source_workers: Vec<usize> = (0..n).filter(|i| *i < sources).collect();
    loop {
        match events.recv_timeout(Duration::from_millis(2)) {
            Ok(Event::Msg(i, msg)) => {
                last_heard[i] = Instant::now();
                match msg {
                    ToManager::Hello { .. } => {}
                    ToManager::Heartbeat {
                        events,
                        sources_finished,
                        max_event_time,
                        watermark,
                        fired,
                        late,
                        fire_latency_us,
                    } => {
                        stats[i] = WorkerStats {
                            events: events.max(stats[i].events),
                            sources_finished,
                            max_event_time,
                            watermark,
                            fired: fired.max(stats[i].fired),
                            late: late.max(stats[i].late),
                        };
                        report
                            .fire_latency_ms
                            .extend(fire_latency_us.iter().map(|&us| f64::from(us) / 1000.0));
                    }
                    ToManager::Failed { reason, fatal } => {
                        if fatal {
                            return Err(ExecError::Input(reason));
                        }
                        return Ok(failed(format!("worker {i}: {reason}"), &stats));
                    }
                    ToManager::Ack {
                        checkpoint,
                        task,
                        finished,
                        window_ends,
                        events,
                        fired,
                        late,
                    } => {
                        stats[i].events = stats[i].events.max(events);
                        stats[i].fired = stats[i].fired.max(fired);
                        stats[i].late = stats[i].late.max(late);
                        let checkpoint = CheckpointId(checkpoint);
                        if finished {
                            *finished_at.entry(checkpoint).or_default() += 1;
                        }
                        ends_at
                            .entry(checkpoint)
                            .or_default()
                            .extend(window_ends.into_iter().map(EventTime));
                        if let Some(done) = coord.acknowledge(checkpoint, task, now()) {
                            complete_checkpoint(
                                layout,
                                &done,
                                (sources, windows),
                                &mut ends_at,
                                exec.latency_origin,
                                report,
                            )?;
                            if finished_at.get(&done.id).copied().unwrap_or(0) == sources {
                                report.fired += stats.iter().map(|s| s.fired).sum::<u64>();
                                report.late += stats.iter().map(|s| s.late).sum::<u64>();
                                return Ok(Outcome::Done {
                                    events: stats.iter().map(|s| s.events).sum(),
                                });
                            }
                        }
                    }
                }
            }
            Ok(Event::Gone(i, why)) => {
                return Ok(failed(format!("worker {i} {why}"), &stats));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Ok(failed("every worker connection closed".into(), &stats));
            }
        }
        for (i, w) in workers.iter_mut().enumerate() {
            if let Some(status) = w.child.exited() {
                return Ok(failed(format!("worker {i} exited ({status})"), &stats));
            }
            if last_heard[i].elapsed() > cfg.heartbeat_timeout {
                return Ok(failed(
                    format!(
                        "worker {i} sent no heartbeat for {:?}",
                        last_heard[i].elapsed()
                    ),
                    &stats,
                ));
            }
        }
        let all_finished = stats
            .iter()
            .map(|s| s.sources_finished as usize)
            .sum::<usize>()
            == sources;
        let due = exec
            .checkpoint_interval
            .is_some_and(|i| last_trigger.elapsed() >= i);
        if (due || all_finished) && coord.in_flight() == 0 {
            if let Some(id) = coord.trigger(now()) {
                for &i in &source_workers {
                    if let Some(c) = workers[i].control.as_mut() {
                        if let Err(e) = send_msg(c, &ToWorker::Trigger(id.0)) {
                            return Ok(failed(format!("triggering worker {i}: {e}"), &stats));
                        }
                    }
                }
                last_trigger = Instant::now();
            }
        }
        let timeout = exec.checkpoint_timeout.as_micros() as u64;
        if coord.expire(now().saturating_sub(timeout)) > 0 {
            return Ok(failed("a checkpoint timed out".into(), &stats));
        }
        if let Some(progress) = &exec.progress {
            if last_progress.elapsed() >= Duration::from_millis(200) {
                last_progress = Instant::now();
                progress(&Progress {
                    events: events_before + stats.iter().map(|s| s.events).sum::<u64>(),
                    max_event_time: EventTime(
                        stats.iter().map(|s| s.max_event_time).max().unwrap_or(0),
                    ),
                    watermark: EventTime(stats.iter().map(|s| s.watermark).min().unwrap_or(0)),
                    checkpoints: report.checkpoint_durations.len() as u64,
                    last_checkpoint: report.checkpoint_durations.last().copied(),
                    restarts: report.restarts,
                });
            }
        }
    }
}

/// A worker connected to its manager, before it has built the job.
pub struct WorkerSession {
    index: u32,
    token: u64,
    control: TcpStream,
    data: TcpListener,
    assign: ToWorker,
    /// Wall-clock instant of event time zero for paced inputs, shared by every worker.
    pub origin: Option<Instant>,
}

impl WorkerSession {
    /// Connect to the manager at `manager` as worker `index` and wait for the assignment.
    pub fn connect(manager: SocketAddr, index: u32, token: u64) -> Result<Self, ExecError> {
        let cluster = |what: &str, e: io::Error| ExecError::Cluster(format!("{what}: {e}"));
        let data = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| cluster("binding the data listener", e))?;
        let data_addr = data
            .local_addr()
            .map_err(|e| cluster("data listener", e))?
            .to_string();
        let mut control = TcpStream::connect_timeout(&manager, Duration::from_secs(5))
            .map_err(|e| cluster(&format!("connecting to the manager at {manager}"), e))?;
        let _ = control.set_nodelay(true);
        send_msg(
            &mut control,
            &ToManager::Hello {
                worker: index,
                token,
                data_addr,
                pid: std::process::id(),
            },
        )
        .map_err(|e| cluster("registering with the manager", e))?;
        let assign = recv_msg::<ToWorker>(&mut control, MAX_CONTROL_FRAME, "assignment")
            .map_err(|e| cluster("reading the assignment", e))?
            .ok_or_else(|| ExecError::Cluster("the manager closed the connection".into()))?;
        let ToWorker::Assign {
            origin_unix_micros, ..
        } = &assign
        else {
            return Err(ExecError::Cluster(format!(
                "expected an assignment, got {assign:?}"
            )));
        };
        let origin = origin_unix_micros.map(|o| {
            let ago = unix_micros(SystemTime::now()).saturating_sub(o);
            Instant::now()
                .checked_sub(Duration::from_micros(ago))
                .unwrap_or_else(Instant::now)
        });
        Ok(WorkerSession {
            index,
            token,
            control,
            data,
            assign,
            origin,
        })
    }

    /// Run the assigned tasks of `job` (built with [`WorkerSession::origin`]) until the
    /// manager says stop. Returns an error when a task fails or the manager goes away;
    /// the manager restarts the job either way.
    pub fn run<K, T, G>(self, job: &Job<K, T, G>, dir: &std::path::Path) -> Result<(), ExecError>
    where
        K: Ord
            + Clone
            + Hash
            + Serialize
            + DeserializeOwned
            + Send
            + Sync
            + std::fmt::Debug
            + 'static,
        T: Clone + Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static,
        G: Aggregate<In = T>,
    {
        let ToWorker::Assign {
            sources,
            windows,
            my_sources,
            my_windows,
            window_addrs,
            restore,
            ..
        } = self.assign
        else {
            return Err(ExecError::Cluster("no assignment".into()));
        };
        let (sources, windows) = (sources as usize, windows as usize);
        if sources != job.windowed.keyed.input.source_parallelism
            || windows != job.windowed.parallelism
            || window_addrs.len() != windows
        {
            return Err(ExecError::Cluster(format!(
                "the manager assigned a job with {sources} sources and {windows} window tasks; this worker's job has {} and {}",
                job.windowed.keyed.input.source_parallelism, job.windowed.parallelism
            )));
        }
        let cluster = |what: &str, e: io::Error| ExecError::Cluster(format!("{what}: {e}"));
        let layout = Layout::new(dir);
        let restore = restore.map(|c| layout.checkpoint(CheckpointId(c)));
        let shared = Arc::new(Shared::new(windows, 0));
        let control_w = Arc::new(Mutex::new(
            self.control
                .try_clone()
                .map_err(|e| cluster("control connection", e))?,
        ));
        // The writer: makes snapshots and pending output durable, then acknowledges.
        let (write_tx, write_rx) = mpsc::channel::<WriteJob>();
        {
            let control_w = control_w.clone();
            let shared = shared.clone();
            spawn_task("stream-writer".into(), move || {
                for job in write_rx {
                    for (path, bytes) in &job.files {
                        write_durable(path, bytes)
                            .map_err(|e| format!("writing {}: {e}", path.display()))?;
                    }
                    let ack = ToManager::Ack {
                        checkpoint: job.checkpoint.0,
                        task: job.task,
                        finished: job.finished,
                        window_ends: job.window_ends.iter().map(|e| e.0).collect(),
                        events: shared.events_total.load(Ordering::Relaxed),
                        fired: shared.fired.load(Ordering::Relaxed),
                        late: shared.late.load(Ordering::Relaxed),
                    };
                    let mut c = control_w.lock().unwrap_or_else(|e| e.into_inner());
                    send_msg(&mut *c, &ack).map_err(|e| format!("acknowledging: {e}"))?;
                }
                Ok(())
            });
        }
        let mut tasks = Vec::new();
        // Window tasks: an inbox each, fed by one reader thread per incoming connection.
        let credits = job_credits();
        let mut inboxes: BTreeMap<u32, Arc<Inbox<Element<K, T>>>> = BTreeMap::new();
        let mut returns: BTreeMap<u32, Arc<Vec<Mutex<Option<TcpStream>>>>> = BTreeMap::new();
        for &j in &my_windows {
            let inbox = Arc::new(Inbox::new(sources, credits));
            let back: Arc<Vec<Mutex<Option<TcpStream>>>> =
                Arc::new((0..sources).map(|_| Mutex::new(None)).collect());
            inboxes.insert(j, inbox.clone());
            returns.insert(j, back.clone());
            let credit_return: CreditReturn = Arc::new(move |ch: usize| {
                if let Some(slot) = back.get(ch) {
                    let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(stream) = s.as_mut() {
                        // A failed credit write means the sender is gone; the manager
                        // restarts the job.
                        let _ = write_frame(stream, &[]);
                    }
                }
            });
            let task = WindowTask {
                index: j as usize,
                sources,
                inbox,
                credit_return: Some(credit_return),
                op: WindowOperator::new(
                    job.windowed.assigner,
                    job.windowed.allowed_lateness_ms,
                    job.windowed.trigger,
                    job.aggregate.clone(),
                ),
                shared: shared.clone(),
                writes: write_tx.clone(),
                restore: restore.clone(),
                checkpoint_dir: layout.checkpoints.clone(),
                pending_dir: layout.pending.clone(),
                latency_origin: self.origin,
                crash_at: None,
            };
            tasks.push(spawn_task(format!("stream-window-{j}"), move || task.run()));
        }
        {
            let data = self.data;
            let token = self.token;
            let inboxes = inboxes.clone();
            let returns = returns.clone();
            let expected = my_windows.len() * sources;
            std::thread::spawn(move || {
                let mut connected = 0;
                while connected < expected {
                    let Ok((stream, _)) = data.accept() else {
                        return;
                    };
                    let _ = stream.set_nodelay(true);
                    let mut r = BufReader::with_capacity(1 << 16, stream);
                    let hello = match recv_msg::<DataHello>(&mut r, 1024, "data hello") {
                        Ok(Some(h)) if h.token == token && (h.source as usize) < sources => h,
                        _ => continue,
                    };
                    let (Some(inbox), Some(back)) =
                        (inboxes.get(&hello.window), returns.get(&hello.window))
                    else {
                        continue;
                    };
                    if let Ok(w) = r.get_ref().try_clone() {
                        *back[hello.source as usize]
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(w);
                    }
                    connected += 1;
                    let inbox = inbox.clone();
                    let ch = hello.source as usize;
                    std::thread::spawn(move || loop {
                        match recv_msg::<Element<K, T>>(&mut r, MAX_DATA_FRAME, "stream element") {
                            Ok(Some(el)) => {
                                if inbox.send(ch, el).is_err() {
                                    return;
                                }
                            }
                            // The sender's worker died (or sent garbage): the manager sees
                            // the death and restarts the job; this inbox just stops.
                            Ok(None) | Err(_) => return,
                        }
                    });
                }
            });
        }
        // Source tasks: a connection to every window task.
        for &i in &my_sources {
            let mut outputs: Vec<Arc<dyn Outlet<Element<K, T>>>> = Vec::with_capacity(windows);
            for (j, addr) in window_addrs.iter().enumerate() {
                let out =
                    RemoteOutlet::connect(addr, self.token, i, j as u32, credits).map_err(|e| {
                        cluster(&format!("source {i} connecting to window {j} at {addr}"), e)
                    })?;
                outputs.push(Arc::new(out));
            }
            let task = SourceTask {
                index: i as usize,
                sources,
                job_source: job.windowed.keyed.input.source.clone(),
                key: job.windowed.keyed.key.clone(),
                outputs,
                shared: shared.clone(),
                writes: write_tx.clone(),
                restore: restore.clone(),
                checkpoint_dir: layout.checkpoints.clone(),
                bound_ms: job.windowed.keyed.input.out_of_orderness_ms,
                idle_timeout: job.windowed.keyed.input.idle_timeout,
                batch: 512,
                crash_at: None,
            };
            tasks.push(spawn_task(format!("stream-source-{i}"), move || task.run()));
        }
        drop(write_tx);
        // The control loop: triggers in, heartbeats out, task failures reported.
        let (ctl_tx, ctl_rx) = mpsc::channel::<Option<ToWorker>>();
        {
            let mut r = BufReader::new(
                self.control
                    .try_clone()
                    .map_err(|e| cluster("control connection", e))?,
            );
            std::thread::spawn(move || loop {
                match recv_msg::<ToWorker>(&mut r, MAX_CONTROL_FRAME, "manager message") {
                    Ok(Some(m)) => {
                        if ctl_tx.send(Some(m)).is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = ctl_tx.send(None);
                        return;
                    }
                }
            });
        }
        let my_window_set: Vec<usize> = my_windows.iter().map(|&j| j as usize).collect();
        loop {
            match ctl_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Some(ToWorker::Trigger(n))) => {
                    shared.trigger.fetch_max(n, Ordering::SeqCst);
                }
                Ok(Some(ToWorker::Stop)) => return Ok(()),
                Ok(Some(other)) => {
                    return Err(ExecError::Cluster(format!(
                        "unexpected message from the manager: {other:?}"
                    )))
                }
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(ExecError::Cluster(
                        "the manager closed the connection".into(),
                    ))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            for t in &tasks {
                if t.is_finished() {
                    let (reason, fatal) = match shared.fatal() {
                        Some(why) => (why, true),
                        None => ("a task stopped unexpectedly".to_string(), false),
                    };
                    let mut c = control_w.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = send_msg(
                        &mut *c,
                        &ToManager::Failed {
                            reason: reason.clone(),
                            fatal,
                        },
                    );
                    return Err(ExecError::Cluster(reason));
                }
            }
            let latencies = std::mem::take(
                &mut *shared
                    .fire_latency_us
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            let heartbeat = ToManager::Heartbeat {
                events: shared.events_total.load(Ordering::Relaxed),
                sources_finished: shared.sources_finished.load(Ordering::SeqCst) as u32,
                max_event_time: shared.max_event_time.load(Ordering::Relaxed),
                watermark: my_window_set
                    .iter()
                    .map(|&j| shared.watermarks[j].load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(u64::MAX),
                fired: shared.fired.load(Ordering::Relaxed),
                late: shared.late.load(Ordering::Relaxed),
                fire_latency_us: latencies,
            };
            let mut c = control_w.lock().unwrap_or_else(|e| e.into_inner());
            send_msg(&mut *c, &heartbeat).map_err(|e| cluster("heartbeat", e))?;
        }
    }

    /// This worker's index.
    pub fn index(&self) -> u32 {
        self.index
    }
}

fn job_credits() -> usize {
    8
}

/// A source task's channel to a window task in another process: frames out, credits in.
struct RemoteOutlet {
    stream: Mutex<TcpStream>,
    credits: Arc<(Mutex<Option<usize>>, Condvar)>,
}

impl RemoteOutlet {
    fn connect(
        addr: &str,
        token: u64,
        source: u32,
        window: u32,
        credits: usize,
    ) -> io::Result<Self> {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_nodelay(true)?;
        send_msg(
            &mut stream,
            &DataHello {
                token,
                source,
                window,
            },
        )?;
        // `None` once the connection is gone: senders stop waiting.
        let credits = Arc::new((Mutex::new(Some(credits)), Condvar::new()));
        let mut reader = BufReader::new(stream.try_clone()?);
        let c = credits.clone();
        std::thread::spawn(move || {
            // Every frame from the receiver is one credit.
            while let Ok(Some(_)) = read_frame(&mut reader, 16) {
                let mut n = c.0.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = n.as_mut() {
                    *n += 1;
                }
                drop(n);
                c.1.notify_one();
            }
            *c.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
            c.1.notify_all();
        });
        Ok(RemoteOutlet {
            stream: Mutex::new(stream),
            credits,
        })
    }
}

impl<K: Serialize + Send, T: Serialize + Send> Outlet<Element<K, T>> for RemoteOutlet {
    fn send(&self, _channel: usize, msg: Element<K, T>) -> Result<(), Cancelled> {
        {
            let (lock, ready) = &*self.credits;
            let mut n = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match n.as_mut() {
                    None => return Err(Cancelled),
                    Some(0) => n = ready.wait(n).unwrap_or_else(|e| e.into_inner()),
                    Some(k) => {
                        *k -= 1;
                        break;
                    }
                }
            }
        }
        let bytes = encode(&msg).map_err(|_| Cancelled)?;
        let mut s = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&mut *s, &bytes).map_err(|_| Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_errors() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").expect("write");
        write_frame(&mut buf, b"").expect("write");
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r, 16).expect("read"),
            Some(b"hello".to_vec())
        );
        assert_eq!(read_frame(&mut r, 16).expect("read"), Some(Vec::new()));
        assert_eq!(read_frame(&mut r, 16).expect("read"), None);
        // Over the limit.
        let e = read_frame(&mut &buf[..], 4).expect_err("too big");
        assert!(e.to_string().contains("exceeds"), "{e}");
        // Truncated header and truncated payload.
        let e = read_frame(&mut &buf[..2], 16).expect_err("short header");
        assert!(e.to_string().contains("header"), "{e}");
        let e = read_frame(&mut &buf[..7], 16).expect_err("short payload");
        assert!(e.to_string().contains("inside a 5-byte frame"), "{e}");
        // A length of u32::MAX is refused before any allocation.
        let huge = u32::MAX.to_le_bytes();
        assert!(read_frame(&mut &huge[..], MAX_DATA_FRAME).is_err());
    }

    #[test]
    fn garbage_elements_decode_to_errors_not_panics() {
        for bytes in [
            &[0xffu8; 3][..],
            &[0u8, 200, 200, 200, 200, 200][..],
            &[9u8][..],
        ] {
            let r: io::Result<Element<u64, u64>> = decode(bytes, "stream element");
            assert!(r.is_err());
        }
        let el: Element<u64, u64> = Element::Records(vec![(3, EventTime(9), 4)]);
        let back: Element<u64, u64> = decode(&encode(&el).expect("encode"), "x").expect("decode");
        assert!(matches!(back, Element::Records(r) if r == vec![(3, EventTime(9), 4)]));
    }
}
