//! Runs of the coordination algorithms on a live cluster: `synod run mutex|election`.
//!
//! The mutual-exclusion and election actors of `synod_protocols::{mutex, election}` run
//! here unchanged, as services of every node ([`MUTEX_SERVICE`] = 9, [`ELECTION_SERVICE`]
//! = 10), under the same real driver (`synod_runtime::driver`) as Raft and SWIM.
//!
//! ## How a run starts and ends
//!
//! The CLI picks a run id and `POST`s the same run to every node's admin endpoint
//! (`/v1/run/mutex` or `/v1/run/election`). Each node then spawns a fresh actor for that
//! run. Every peer message carries the run id in front of the actor's own encoding:
//!
//! - a message for the current run goes to its actor;
//! - a message for a *later* run is held (at most [`MAX_EARLY`]) until that run starts
//!   here, since peers do not start at the same instant and the mutual-exclusion
//!   algorithms do not tolerate a lost message;
//! - a message for an earlier run is dropped.
//!
//! The CLI polls `GET` on the same path for progress, and ends the run with `DELETE`
//! (a run also ends by itself after [`MAX_RUN_LIFETIME`], so that a CLI that died does not
//! leave a token circulating forever).
//!
//! ## The shared log (mutex runs)
//!
//! Each node's client enters the critical section `k` times. Inside it, the node appends
//! `enter` on entry and `exit` before it releases to `<cluster dir>/runs/mutex-<run>.log`,
//! one `write` per line on a file opened with `O_APPEND`, so the kernel orders the lines
//! of all node processes by when they were written. Each line carries the node, the
//! entry's number and `CLOCK_MONOTONIC` readings, a clock that every process on one
//! machine shares. The CLI checks the log twice: the lines alternate `enter n`/`exit n`
//! of the same node and entry (any overlap longer than the hold time interleaves them),
//! and the intervals `[enter, exit]` sorted by start are disjoint.
//!
//! ## Election runs
//!
//! The node spawns the election actor over the members the CLI names and records every
//! change of belief (who it thinks leads) in `<cluster dir>/runs/election-<run>.log`;
//! `GET` reports the current belief.

use crate::node::NodeState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use synod_core::{MemStorage, NodeId};
use synod_protocols::election::bully::{Bully, BullyConfig};
use synod_protocols::election::chang_roberts::ChangRoberts;
use synod_protocols::election::LeaderElection;
use synod_protocols::mutex::centralized::Centralized;
use synod_protocols::mutex::lamport::LamportMutex;
use synod_protocols::mutex::maekawa::{grid_quorum, Maekawa};
use synod_protocols::mutex::ricart_agrawala::RicartAgrawala;
use synod_protocols::mutex::token_ring::{TokenRing, TokenRingConfig};
use synod_protocols::mutex::MutualExclusion;
use synod_runtime::driver::{
    deliver_encoded, spawn_actor, ActorHandle, ActorPlacement, ActorStats, DriverConfig, Outbox,
};

/// The service id of mutual-exclusion runs.
pub const MUTEX_SERVICE: u16 = 9;
/// The service id of election runs.
pub const ELECTION_SERVICE: u16 = 10;
/// Most messages held for a run that has not started on this node yet.
pub const MAX_EARLY: usize = 4096;
/// A run ends by itself this long after it started.
pub const MAX_RUN_LIFETIME: Duration = Duration::from_secs(600);
/// Most critical-section entries per node in one run.
pub const MAX_K: u32 = 100_000;
/// Longest hold time of the critical section, in milliseconds.
pub const MAX_HOLD_MS: u64 = 10_000;
/// The mutual-exclusion algorithms a run can use.
pub const MUTEX_ALGORITHMS: [&str; 5] = [
    "central",
    "token-ring",
    "ricart-agrawala",
    "lamport",
    "maekawa",
];
/// The election algorithms a run can use.
pub const ELECTION_ALGORITHMS: [&str; 2] = ["bully", "ring"];

/// `POST /v1/run/mutex`: start a mutual-exclusion run on this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutexRunRequest {
    /// The run's id, the same on every node; nonzero.
    pub run: u64,
    /// One of [`MUTEX_ALGORITHMS`].
    pub algo: String,
    /// Critical-section entries this node makes.
    pub k: u32,
    /// How long the node stays in the critical section, in milliseconds.
    pub hold_ms: u64,
}

/// `POST /v1/run/election`: start an election run on this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionRunRequest {
    /// The run's id, the same on every node; nonzero.
    pub run: u64,
    /// One of [`ELECTION_ALGORITHMS`].
    pub algo: String,
    /// The nodes taking part (ring order for `ring`); empty means every cluster node.
    #[serde(default)]
    pub members: Vec<u32>,
}

/// Where one run kind's peer messages go.
#[derive(Default)]
struct Slot {
    /// The run installed here (0: none).
    run: u64,
    deliver: Option<tokio::sync::mpsc::Sender<(NodeId, Bytes)>>,
    /// Messages for runs that have not started here yet.
    early: Vec<(u64, NodeId, Bytes)>,
    /// Tasks of the run (client loop, watcher, lifetime); aborted when it ends.
    tasks: Vec<tokio::task::AbortHandle>,
    status: Value,
}

impl Slot {
    fn stop(&mut self) {
        self.deliver = None;
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// This node's side of `synod run`: the two run slots and what they need to spawn actors.
pub struct RunHost {
    me: NodeId,
    nodes: Vec<NodeId>,
    runs_dir: PathBuf,
    outbox: Arc<dyn Outbox>,
    slots: Mutex<BTreeMap<u16, Slot>>,
}

/// Prefixes every payload with the run id.
struct RunOutbox {
    inner: Arc<dyn Outbox>,
    run: u64,
}

impl Outbox for RunOutbox {
    fn send(&self, to: NodeId, service: u16, payload: Bytes) {
        let mut framed = Vec::with_capacity(8 + payload.len());
        framed.extend_from_slice(&self.run.to_le_bytes());
        framed.extend_from_slice(&payload);
        self.inner.send(to, service, Bytes::from(framed));
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on this machine.
fn monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)).unwrap_or(0)
}

/// A shared log file opened for appending.
struct SharedLog(std::fs::File);

impl SharedLog {
    fn open(path: &std::path::Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(SharedLog)
    }

    /// One line, one `write`: with `O_APPEND` the kernel places it atomically at the end.
    fn line(&mut self, text: String) -> std::io::Result<()> {
        let line = format!("{text}\n");
        let written = self.0.write(line.as_bytes())?;
        if written != line.len() {
            return Err(std::io::Error::other("short write to the shared log"));
        }
        Ok(())
    }
}

fn error(code: StatusCode, message: impl Into<String>) -> (StatusCode, Json<Value>) {
    (code, Json(json!({ "error": message.into() })))
}

impl RunHost {
    /// The run host of node `me` of a cluster of `nodes`, writing logs under `runs_dir`.
    pub fn new(
        me: NodeId,
        mut nodes: Vec<NodeId>,
        runs_dir: PathBuf,
        outbox: Arc<dyn Outbox>,
    ) -> Arc<Self> {
        nodes.sort();
        Arc::new(RunHost {
            me,
            nodes,
            runs_dir,
            outbox,
            slots: Mutex::new(BTreeMap::new()),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, Slot>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A peer message for `service`: the run id, then the actor's encoding.
    pub fn on_peer_message(&self, service: u16, from: NodeId, payload: Bytes) {
        if payload.len() < 8 {
            tracing::warn!(%from, service, "run message without a run id dropped");
            return;
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&payload[..8]);
        let run = u64::from_le_bytes(id);
        let body = payload.slice(8..);
        let mut slots = self.slots();
        let slot = slots.entry(service).or_default();
        if run == slot.run {
            if let Some(deliver) = &slot.deliver {
                if deliver.try_send((from, body)).is_err() {
                    tracing::debug!(%from, service, "run message dropped: queue full");
                }
            }
        } else if run > slot.run && slot.early.len() < MAX_EARLY {
            slot.early.push((run, from, body));
        }
    }

    /// Install `run` in `service`'s slot: its messages now go to `deliver`.
    fn install(
        &self,
        service: u16,
        run: u64,
        deliver: tokio::sync::mpsc::Sender<(NodeId, Bytes)>,
        status: Value,
    ) {
        let mut slots = self.slots();
        let slot = slots.entry(service).or_default();
        slot.stop();
        slot.run = run;
        let early = std::mem::take(&mut slot.early);
        for (r, from, body) in early {
            if r == run {
                let _ = deliver.try_send((from, body));
            } else if r > run {
                slot.early.push((r, from, body));
            }
        }
        slot.deliver = Some(deliver);
        slot.status = status;
    }

    fn add_task(&self, service: u16, run: u64, task: tokio::task::AbortHandle) {
        let mut slots = self.slots();
        let slot = slots.entry(service).or_default();
        if slot.run == run {
            slot.tasks.push(task);
        } else {
            task.abort();
        }
    }

    fn update(&self, service: u16, run: u64, f: impl FnOnce(&mut Value)) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(&service) {
            if slot.run == run {
                f(&mut slot.status);
            }
        }
    }

    fn current(&self, service: u16) -> (u64, Value) {
        let slots = self.slots();
        slots
            .get(&service)
            .filter(|s| !s.status.is_null())
            .map(|s| (s.run, s.status.clone()))
            .unwrap_or((0, json!({ "state": "idle" })))
    }

    /// End the current run of `service`, if any. Its actor stops once its queue drains.
    fn stop(&self, service: u16) -> u64 {
        let mut slots = self.slots();
        let slot = slots.entry(service).or_default();
        slot.stop();
        if let Some(state) = slot.status.get_mut("state") {
            if *state == "running" {
                *state = json!("stopped");
            }
        }
        slot.run
    }

    /// Spawn `actor` for `run` of `service` and route the run's messages to it.
    fn spawn<A: synod_core::Actor>(
        self: &Arc<Self>,
        service: u16,
        run: u64,
        actor: A,
        status: Value,
    ) -> ActorHandle<A> {
        let placement = ActorPlacement {
            me: self.me,
            service,
            seed: run ^ u64::from(std::process::id()),
            config: DriverConfig::default(),
        };
        let stats = Arc::new(ActorStats::default());
        let outbox = Arc::new(RunOutbox {
            inner: self.outbox.clone(),
            run,
        });
        let (handle, task) = spawn_actor(
            placement,
            actor,
            Box::new(MemStorage::new()),
            outbox,
            stats.clone(),
        );
        // The actor keeps no durable state, so its task can only end when its handles go.
        drop(task);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(NodeId, Bytes)>(MAX_EARLY);
        let forward = handle.clone();
        let forwarder = tokio::spawn(async move {
            while let Some((from, payload)) = rx.recv().await {
                if deliver_encoded(&forward, &stats, from, &payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        self.install(service, run, tx, status);
        self.add_task(service, run, forwarder.abort_handle());
        let host = self.clone();
        let lifetime = tokio::spawn(async move {
            tokio::time::sleep(MAX_RUN_LIFETIME).await;
            host.update(service, run, |s| s["state"] = json!("expired"));
            let mut slots = host.slots();
            if let Some(slot) = slots.get_mut(&service) {
                if slot.run == run {
                    slot.deliver = None;
                }
            }
        });
        self.add_task(service, run, lifetime.abort_handle());
        handle
    }

    fn validate_run(&self, service: u16, run: u64) -> Result<bool, (StatusCode, Json<Value>)> {
        if run == 0 {
            return Err(error(StatusCode::BAD_REQUEST, "the run id must be nonzero"));
        }
        let (current, _) = self.current(service);
        if run < current {
            return Err(error(
                StatusCode::CONFLICT,
                format!("run {run} is older than run {current}, which this node already ran"),
            ));
        }
        // The same run again (a retried POST) is a no-op.
        Ok(run == current)
    }

    /// Start a mutual-exclusion run.
    pub fn start_mutex(
        self: &Arc<Self>,
        req: MutexRunRequest,
    ) -> Result<Value, (StatusCode, Json<Value>)> {
        if self.validate_run(MUTEX_SERVICE, req.run)? {
            return Ok(self.current(MUTEX_SERVICE).1);
        }
        if req.k == 0 || req.k > MAX_K {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("k must be between 1 and {MAX_K}, not {}", req.k),
            ));
        }
        if req.hold_ms > MAX_HOLD_MS {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("hold_ms must be at most {MAX_HOLD_MS}, not {}", req.hold_ms),
            ));
        }
        let me = self.me;
        let nodes = self.nodes.clone();
        let n = nodes.len() as u32;
        match req.algo.as_str() {
            "central" => self.launch_mutex(req, Centralized::new(nodes[0])),
            "token-ring" => {
                // Loopback with TLS: slower hops than the simulator's LAN, and an idle
                // token passes less often so that it does not spin the CPU.
                let config = TokenRingConfig {
                    pass_delay: Duration::from_millis(5),
                    ack_timeout: Duration::from_millis(500),
                    regenerate_after: Duration::from_secs(5),
                };
                self.launch_mutex(req, TokenRing::new(nodes, config))
            }
            "ricart-agrawala" => self.launch_mutex(req, RicartAgrawala::new(me, nodes)),
            "lamport" => self.launch_mutex(req, LamportMutex::new(me, nodes)),
            "maekawa" => {
                // The grid is over positions 0..N; map them to the cluster's ids.
                let index = nodes.iter().position(|&x| x == me).unwrap_or(0) as u32;
                let quorum = grid_quorum(NodeId(index), n)
                    .into_iter()
                    .filter_map(|p| nodes.get(p.0 as usize).copied())
                    .collect();
                self.launch_mutex(req, Maekawa::new(me, quorum))
            }
            other => Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown mutual-exclusion algorithm {other:?}; use one of {}",
                    MUTEX_ALGORITHMS.join(", ")
                ),
            )),
        }
    }

    /// The shared log of run `run` of `kind` under the runs directory.
    fn open_log(
        &self,
        kind: &str,
        run: u64,
    ) -> Result<(PathBuf, SharedLog), (StatusCode, Json<Value>)> {
        let path = self.runs_dir.join(format!("{kind}-{run}.log"));
        let log = SharedLog::open(&path).map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("opening {}: {e}", path.display()),
            )
        })?;
        Ok((path, log))
    }

    fn launch_mutex<A: MutualExclusion>(
        self: &Arc<Self>,
        req: MutexRunRequest,
        actor: A,
    ) -> Result<Value, (StatusCode, Json<Value>)> {
        let (path, mut log) = self.open_log("mutex", req.run)?;
        let status = json!({
            "run": req.run, "algo": req.algo, "node": self.me.0, "k": req.k,
            "state": "running", "entries": 0, "messages_sent": 0, "log": path,
        });
        let run = req.run;
        let handle = self.spawn(MUTEX_SERVICE, run, actor, status.clone());
        let host = self.clone();
        let me = self.me.0;
        let hold = Duration::from_millis(req.hold_ms);
        let k = req.k;
        let client = tokio::spawn(async move {
            let outcome: Result<(), String> = async {
                let mut session = handle.session().await.map_err(|e| e.to_string())?;
                for entry in 1..=k {
                    session
                        .send(A::acquire_request())
                        .await
                        .map_err(|e| e.to_string())?;
                    loop {
                        match session.replies.recv().await {
                            Some(reply) if A::is_granted(&reply) => break,
                            Some(_) => continue,
                            None => return Err("the actor stopped".to_string()),
                        }
                    }
                    let enter = monotonic_nanos();
                    log.line(format!("enter {me} {entry} {enter}"))
                        .map_err(|e| e.to_string())?;
                    tokio::time::sleep(hold).await;
                    let exit = monotonic_nanos();
                    log.line(format!("exit {me} {entry} {enter} {exit}"))
                        .map_err(|e| e.to_string())?;
                    session
                        .send(A::release_request())
                        .await
                        .map_err(|e| e.to_string())?;
                    host.update(MUTEX_SERVICE, run, |s| s["entries"] = json!(entry));
                }
                Ok(())
            }
            .await;
            let counters = handle.inspect(|a| a.counters()).await.ok();
            host.update(MUTEX_SERVICE, run, |s| {
                if let Some(c) = counters {
                    s["messages_sent"] = json!(c.messages_sent);
                }
                match outcome {
                    Ok(()) => s["state"] = json!("done"),
                    Err(e) => {
                        s["state"] = json!("failed");
                        s["error"] = json!(e);
                    }
                }
            });
            // Keep the actor serving its peers (replies, grants, the token) until the
            // CLI ends the run: others may still need this node. Its message count
            // still grows meanwhile.
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let Ok(c) = handle.inspect(|a| a.counters()).await else {
                    break;
                };
                host.update(MUTEX_SERVICE, run, |s| {
                    s["messages_sent"] = json!(c.messages_sent)
                });
            }
        });
        self.add_task(MUTEX_SERVICE, run, client.abort_handle());
        Ok(status)
    }

    /// Start an election run.
    pub fn start_election(
        self: &Arc<Self>,
        req: ElectionRunRequest,
    ) -> Result<Value, (StatusCode, Json<Value>)> {
        if self.validate_run(ELECTION_SERVICE, req.run)? {
            return Ok(self.current(ELECTION_SERVICE).1);
        }
        let members: Vec<NodeId> = if req.members.is_empty() {
            self.nodes.clone()
        } else {
            req.members.iter().map(|&m| NodeId(m)).collect()
        };
        if let Some(stranger) = members.iter().find(|m| !self.nodes.contains(m)) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("member {stranger} is not a node of this cluster"),
            ));
        }
        if !members.contains(&self.me) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("this node ({}) is not among the members", self.me),
            ));
        }
        match req.algo.as_str() {
            "bully" => {
                // Timeouts for loopback with TLS and a busy machine: a few round trips.
                let config = BullyConfig {
                    answer_timeout: Duration::from_millis(300),
                    coordinator_timeout: Duration::from_millis(900),
                    heartbeat_interval: Duration::from_millis(100),
                    leader_timeout: Duration::from_millis(600),
                };
                self.launch_election(req, Bully::new(members, config))
            }
            "ring" => {
                let actor = ChangRoberts::new(self.me, &members, true);
                self.launch_election(req, actor)
            }
            other => Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown election algorithm {other:?}; use one of {}",
                    ELECTION_ALGORITHMS.join(", ")
                ),
            )),
        }
    }

    fn launch_election<A: LeaderElection>(
        self: &Arc<Self>,
        req: ElectionRunRequest,
        actor: A,
    ) -> Result<Value, (StatusCode, Json<Value>)> {
        let (path, mut log) = self.open_log("election", req.run)?;
        let status = json!({
            "run": req.run, "algo": req.algo, "node": self.me.0, "state": "running",
            "leader": null, "electing": true, "messages_sent": 0, "elections_started": 0,
            "log": path,
        });
        let run = req.run;
        let handle = self.spawn(ELECTION_SERVICE, run, actor, status.clone());
        let host = self.clone();
        let me = self.me.0;
        let watcher = tokio::spawn(async move {
            let mut believed: Option<Option<NodeId>> = None;
            loop {
                let Ok((leader, electing, counters)) = handle
                    .inspect(|a| (a.leader(), a.electing(), a.counters()))
                    .await
                else {
                    break;
                };
                if believed != Some(leader) {
                    believed = Some(leader);
                    let who = leader.map_or("none".to_string(), |l| l.0.to_string());
                    let _ = log.line(format!("leader {me} {who} {}", monotonic_nanos()));
                }
                host.update(ELECTION_SERVICE, run, |s| {
                    s["leader"] = json!(leader.map(|l| l.0));
                    s["electing"] = json!(electing);
                    s["messages_sent"] = json!(counters.messages_sent);
                    s["elections_started"] = json!(counters.elections_started);
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        self.add_task(ELECTION_SERVICE, run, watcher.abort_handle());
        Ok(status)
    }
}

/// The `/v1/run/*` routes of the admin endpoint.
pub fn routes() -> Router<Arc<NodeState>> {
    Router::new()
        .route(
            "/v1/run/mutex",
            get(mutex_status).post(mutex_start).delete(mutex_stop),
        )
        .route(
            "/v1/run/election",
            get(election_status)
                .post(election_start)
                .delete(election_stop),
        )
}

type Answer = (StatusCode, Json<Value>);

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, Answer> {
    serde_json::from_str(body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad run: {e}")))
}

async fn mutex_start(State(state): State<Arc<NodeState>>, body: String) -> Answer {
    match parse::<MutexRunRequest>(&body).and_then(|req| state.run.start_mutex(req)) {
        Ok(status) => (StatusCode::OK, Json(status)),
        Err(e) => e,
    }
}

async fn election_start(State(state): State<Arc<NodeState>>, body: String) -> Answer {
    match parse::<ElectionRunRequest>(&body).and_then(|req| state.run.start_election(req)) {
        Ok(status) => (StatusCode::OK, Json(status)),
        Err(e) => e,
    }
}

async fn mutex_status(State(state): State<Arc<NodeState>>) -> Json<Value> {
    Json(state.run.current(MUTEX_SERVICE).1)
}

async fn election_status(State(state): State<Arc<NodeState>>) -> Json<Value> {
    Json(state.run.current(ELECTION_SERVICE).1)
}

async fn mutex_stop(State(state): State<Arc<NodeState>>) -> Json<Value> {
    Json(json!({ "stopped": state.run.stop(MUTEX_SERVICE) }))
}

async fn election_stop(State(state): State<Arc<NodeState>>) -> Json<Value> {
    Json(json!({ "stopped": state.run.stop(ELECTION_SERVICE) }))
}

/// What a check of a mutex run's shared log found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MutexLogCheck {
    /// Completed entries (an `enter` and its `exit`) per node.
    pub entries: BTreeMap<u32, u32>,
    /// Every violation found, in log order; empty means the run kept mutual exclusion.
    pub violations: Vec<String>,
    /// The shortest gap between one exit and the next enter, in nanoseconds.
    pub min_gap_nanos: Option<u64>,
}

impl MutexLogCheck {
    /// Whether the log shows no overlap and no malformed line.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Check a mutex run's shared log (the format of [`RunHost`]'s `enter`/`exit` lines):
///
/// 1. in file order, every `enter n e` is followed by `exit n e` before any other line,
///    so nobody entered while another node was inside;
/// 2. the `[enter, exit]` intervals of the `exit` lines, sorted by start, are disjoint on
///    the machine's monotonic clock.
///
/// Lines that do not parse are reported, never skipped silently.
pub fn check_mutex_log(text: &str) -> MutexLogCheck {
    let mut check = MutexLogCheck::default();
    let mut inside: Option<(u32, u32)> = None;
    let mut intervals: Vec<(u64, u64, u32, u32)> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let nums: Option<Vec<u64>> = fields.iter().skip(1).map(|f| f.parse().ok()).collect();
        let parsed = nums.and_then(|n| {
            let node = u32::try_from(*n.first()?).ok()?;
            let entry = u32::try_from(*n.get(1)?).ok()?;
            Some((node, entry, n))
        });
        match (fields.first().copied(), parsed) {
            (Some("enter"), Some((node, entry, n))) if n.len() == 3 => {
                if let Some((holder, e)) = inside {
                    check.violations.push(format!(
                        "line {number}: n{node} entered (entry {entry}) while n{holder} \
                         was inside (entry {e})"
                    ));
                }
                inside = Some((node, entry));
            }
            (Some("exit"), Some((node, entry, n))) if n.len() == 4 => {
                if inside != Some((node, entry)) {
                    check.violations.push(format!(
                        "line {number}: n{node} left (entry {entry}) but the log shows {} inside",
                        inside.map_or("nobody".to_string(), |(h, e)| format!("n{h} entry {e}"))
                    ));
                }
                inside = None;
                *check.entries.entry(node).or_default() += 1;
                intervals.push((n[2], n[3], node, entry));
            }
            _ => check
                .violations
                .push(format!("line {number}: malformed: {line:?}")),
        }
    }
    intervals.sort();
    for pair in intervals.windows(2) {
        let ((_, end, a, ea), (start, _, b, eb)) = (pair[0], pair[1]);
        if start < end {
            check.violations.push(format!(
                "n{b} entry {eb} started {} ns before n{a} entry {ea} ended",
                end - start
            ));
        } else {
            let gap = start - end;
            check.min_gap_nanos = Some(check.min_gap_nanos.map_or(gap, |g| g.min(gap)));
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_of_disjoint_entries_passes() {
        let log = "enter 1 1 100\nexit 1 1 100 200\nenter 2 1 250\nexit 2 1 250 300\n\
                   enter 1 2 310\nexit 1 2 310 400\n";
        let check = check_mutex_log(log);
        assert!(check.ok(), "{check:?}");
        assert_eq!(check.entries, BTreeMap::from([(1, 2), (2, 1)]));
        assert_eq!(check.min_gap_nanos, Some(10));
    }

    #[test]
    fn two_nodes_inside_at_once_are_caught_by_the_line_order() {
        let log = "enter 1 1 100\nenter 2 1 150\nexit 1 1 100 200\nexit 2 1 150 300\n";
        let check = check_mutex_log(log);
        assert!(!check.ok());
        assert!(check.violations[0].contains("n2 entered"), "{check:?}");
    }

    #[test]
    fn overlapping_clock_intervals_are_caught_even_in_a_tidy_line_order() {
        let log = "enter 1 1 100\nexit 1 1 100 200\nenter 2 1 150\nexit 2 1 150 300\n";
        let check = check_mutex_log(log);
        assert_eq!(check.violations.len(), 1, "{check:?}");
        assert!(check.violations[0].contains("50 ns before"));
    }

    #[test]
    fn a_malformed_line_is_reported() {
        let check = check_mutex_log("enter 1 x 100\n");
        assert!(check.violations[0].contains("malformed"));
    }
}
