//! The MapReduce worker service of a node (issue 12): `synod job run --cluster DIR`
//! runs the master (Dean & Ghemawat, OSDI 2004, §3.1) in the CLI process and uses the
//! nodes of `synod up` as its workers.
//!
//! ## How a job reaches the nodes
//!
//! The CLI starts its master on a TCP port and `POST`s `{"master": "HOST:PORT"}` to
//! `/v1/mapreduce/worker` on every node's admin endpoint. The node starts one worker of
//! `synod_dataflow::mapreduce::worker` for that master (the same code as `synod job
//! worker`), on a thread of the node process, with a scratch directory under
//! `<data dir>/mapreduce/`. The worker polls the master (the poll is its heartbeat), runs
//! the map and reduce attempts it is given, and serves its map output to reducers on a
//! data port bound to the node's peer address. It stays for every job of the master's
//! session (PageRank's build and iterations) and ends when the master says there are no
//! more jobs, or is gone after a finished job; its scratch directory is then removed.
//!
//! A second `POST` for a master this node already works for is a no-op, so the CLI
//! repeats it while the job runs: a node that was restarted (a crash-stop worker comes
//! back as a new worker with an empty disk, §3.3) joins the job again.
//!
//! ## Why not the cluster transport
//!
//! The service id [`MAPREDUCE_SERVICE`] (11) is reserved for this service, but the
//! worker's traffic does not go through the node's message transport: the master is the
//! CLI process, not a cluster member, and the shuffle moves large segments that are
//! streamed with a running CRC-32C (`worker.rs`), not bounded messages. Both use the
//! MapReduce wire protocol over their own TCP connections, as the local mode does.

use crate::node::NodeState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_core::NodeId;
use synod_dataflow::mapreduce::worker::{run_worker, WorkerOptions};

/// The service id reserved for MapReduce workers.
pub const MAPREDUCE_SERVICE: u16 = 11;
/// Most workers a node runs at once (one per master).
pub const MAX_WORKERS: usize = 8;
/// Finished workers remembered for `GET`.
const KEEP_FINISHED: usize = 16;
/// Longest testing delay a request may ask for.
const MAX_TASK_DELAY_MS: u64 = 10_000;

/// `POST /v1/mapreduce/worker`: work for this master.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRequest {
    /// The master's address.
    pub master: SocketAddr,
    /// Testing aid: the worker sleeps this long before every attempt.
    #[serde(default)]
    pub task_delay_ms: u64,
}

#[derive(Clone, Debug)]
enum WorkerState {
    Running,
    Finished,
    Failed(String),
}

struct Slot {
    master: SocketAddr,
    dir: PathBuf,
    started: Instant,
    state: Arc<Mutex<WorkerState>>,
}

/// This node's MapReduce workers.
pub struct MapReduceHost {
    me: NodeId,
    data_ip: IpAddr,
    dir: PathBuf,
    next: Mutex<(u64, Vec<Slot>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MapReduceHost {
    /// The service of node `me`: scratch space under `dir` (emptied now: map output of a
    /// previous process is worthless, its master has already given it up), data ports on
    /// `data_ip`.
    pub fn new(me: NodeId, data_ip: IpAddr, dir: PathBuf) -> Arc<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        Arc::new(MapReduceHost {
            me,
            data_ip,
            dir,
            next: Mutex::new((0, Vec::new())),
        })
    }

    /// Start a worker for `req.master` unless one is running for it. Returns whether a
    /// new worker started.
    pub fn start(&self, req: &WorkerRequest) -> Result<bool, String> {
        if req.task_delay_ms > MAX_TASK_DELAY_MS {
            return Err(format!(
                "task_delay_ms {} is above the limit of {MAX_TASK_DELAY_MS}",
                req.task_delay_ms
            ));
        }
        if req.master.port() == 0 || req.master.ip().is_unspecified() {
            return Err(format!("{} is not a master's address", req.master));
        }
        let mut guard = lock(&self.next);
        let (counter, slots) = &mut *guard;
        let running = |s: &Slot| matches!(*lock(&s.state), WorkerState::Running);
        if slots.iter().any(|s| s.master == req.master && running(s)) {
            return Ok(false);
        }
        if slots.iter().filter(|s| running(s)).count() >= MAX_WORKERS {
            return Err(format!("this node already runs {MAX_WORKERS} workers"));
        }
        // Forget the oldest finished workers.
        while slots.len() >= KEEP_FINISHED + MAX_WORKERS {
            match slots.iter().position(|s| !running(s)) {
                Some(i) => {
                    slots.remove(i);
                }
                None => break,
            }
        }
        *counter += 1;
        let dir = self.dir.join(format!("w{counter}"));
        let opts = WorkerOptions {
            master: req.master,
            dir: dir.clone(),
            heartbeat: Duration::from_millis(25),
            master_grace: Duration::from_secs(30),
            task_delay: Duration::from_millis(req.task_delay_ms),
            data_ip: self.data_ip,
        };
        let state = Arc::new(Mutex::new(WorkerState::Running));
        let state2 = state.clone();
        let me = self.me;
        std::thread::Builder::new()
            .name(format!("mapreduce-worker-{counter}"))
            .spawn(move || {
                tracing::info!(node = %me, master = %opts.master, "mapreduce worker started");
                let outcome = run_worker(&opts);
                // The map output dies with the session.
                let _ = std::fs::remove_dir_all(&opts.dir);
                *lock(&state2) = match outcome {
                    Ok(()) => {
                        tracing::info!(node = %me, master = %opts.master, "mapreduce worker done");
                        WorkerState::Finished
                    }
                    Err(e) => {
                        tracing::warn!(node = %me, master = %opts.master, error = %format!("{e:#}"), "mapreduce worker failed");
                        WorkerState::Failed(format!("{e:#}"))
                    }
                };
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        slots.push(Slot {
            master: req.master,
            dir,
            started: Instant::now(),
            state,
        });
        Ok(true)
    }

    /// Every worker this node runs or ran lately.
    pub fn status(&self) -> Value {
        let guard = lock(&self.next);
        let workers: Vec<Value> = guard
            .1
            .iter()
            .map(|s| {
                let (state, error) = match &*lock(&s.state) {
                    WorkerState::Running => ("running", None),
                    WorkerState::Finished => ("finished", None),
                    WorkerState::Failed(e) => ("failed", Some(e.clone())),
                };
                json!({
                    "master": s.master.to_string(),
                    "state": state,
                    "error": error,
                    "dir": s.dir.display().to_string(),
                    "seconds": s.started.elapsed().as_secs_f64(),
                })
            })
            .collect();
        json!({ "node": self.me.0, "workers": workers })
    }
}

/// The admin routes: `POST` starts a worker for a master, `GET` lists the workers.
pub fn routes() -> Router<Arc<NodeState>> {
    Router::new().route("/v1/mapreduce/worker", get(status).post(start))
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<Value> {
    Json(state.mapreduce.status())
}

async fn start(State(state): State<Arc<NodeState>>, body: String) -> (StatusCode, Json<Value>) {
    let req = match serde_json::from_str::<WorkerRequest>(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("bad worker request: {e}") })),
            )
        }
    };
    match state.mapreduce.start(&req) {
        Ok(started) => (
            StatusCode::OK,
            Json(json!({ "node": state.me.0, "started": started })),
        ),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = MapReduceHost::new(
            NodeId(1),
            IpAddr::from([127, 0, 0, 1]),
            dir.path().join("mr"),
        );
        let req = |master: &str, delay| WorkerRequest {
            master: master.parse().unwrap(),
            task_delay_ms: delay,
        };
        assert!(host.start(&req("0.0.0.0:7070", 0)).is_err());
        assert!(host.start(&req("127.0.0.1:0", 0)).is_err());
        assert!(host.start(&req("127.0.0.1:7070", 60_000)).is_err());
        assert!(serde_json::from_str::<WorkerRequest>(r#"{"master":"nowhere"}"#).is_err());
        assert!(
            serde_json::from_str::<WorkerRequest>(r#"{"master":"127.0.0.1:1","x":1}"#).is_err()
        );
    }
}
