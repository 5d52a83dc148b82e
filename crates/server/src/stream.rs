//! The stream worker service (service id [`STREAM`] = 12): `synod stream run --cluster`
//! deploys a streaming job's parallel subtasks onto the nodes of `synod up` through here.
//!
//! The job manager (`synod stream run <job> --cluster <dir>`) asks a node to host worker
//! `index` of an attempt (`token`) with `POST /v1/stream/workers`. The node starts a
//! `synod stream worker` process as its own child, with the job's flags from the request
//! and `--node-pid` set to its own pid. The worker connects back to the manager, which
//! assigns it source and window tasks, triggers checkpoints and collects their
//! acknowledgements exactly as for locally spawned workers (`synod_dataflow::stream::dist`).
//! Records between workers travel over the stream job's own TCP shuffle, not over the
//! node's peer transport, so the service has no peer messages.
//!
//! **A node's death is its workers' death.** A worker polls its parent process every
//! 20 ms and exits when the node that started it is gone (its parent changes). Its
//! connections then close, and the manager restarts the job from the latest complete
//! checkpoint on the nodes still alive.
//!
//! `DELETE /v1/stream/workers?token=T` SIGKILLs this node's workers of attempt `T` (every
//! worker without `token`) and answers only after they have been reaped, so that the
//! manager knows none of them can still write a file. `GET /v1/stream/workers` lists them.
//!
//! Only the `synod` binary's `stream worker` subcommand can be started this way: the
//! request carries the job's flags, never a program.

use crate::node::NodeState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

/// The stream worker service's id (no peer messages: the job has its own shuffle).
pub const STREAM: u16 = 12;

/// Longest accepted argument list of a worker.
const MAX_ARGS: usize = 128;

/// `POST /v1/stream/workers`: start worker `index` of attempt `token` on this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRequest {
    /// The manager's attempt token (also passed to the worker as `--token`).
    pub token: u64,
    /// The worker's index in the attempt.
    pub index: u32,
    /// The `synod` arguments: must start with `stream worker`.
    pub args: Vec<String>,
    /// Where the worker's stderr goes (appended); none: discarded.
    #[serde(default)]
    pub log: Option<PathBuf>,
}

struct Hosted {
    token: u64,
    index: u32,
    child: Child,
}

/// This node's stream workers.
#[derive(Default)]
struct StreamHost {
    workers: Mutex<Vec<Hosted>>,
}

fn host() -> &'static StreamHost {
    static HOST: OnceLock<StreamHost> = OnceLock::new();
    HOST.get_or_init(StreamHost::default)
}

impl StreamHost {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Hosted>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forget workers that have exited (and reap them).
    fn reap(workers: &mut Vec<Hosted>) {
        workers.retain_mut(|w| !matches!(w.child.try_wait(), Ok(Some(_))));
    }

    fn start(&self, req: WorkerRequest) -> Result<u32, (StatusCode, String)> {
        let bad = |m: String| (StatusCode::BAD_REQUEST, m);
        if req.args.len() < 2 || req.args[0] != "stream" || req.args[1] != "worker" {
            return Err(bad("args must start with `stream worker`".into()));
        }
        if req.args.len() > MAX_ARGS {
            return Err(bad(format!("more than {MAX_ARGS} arguments")));
        }
        if req.args.iter().any(|a| a == "--node-pid") {
            return Err(bad("--node-pid is set by the node".into()));
        }
        let exe = std::env::current_exe().map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("finding the synod binary: {e}"),
            )
        })?;
        let stderr = match &req.log {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .map_err(|e| bad(format!("log {}: {e}", path.display())))?,
            None => Stdio::null(),
        };
        let mut workers = self.lock();
        Self::reap(&mut workers);
        let child = Command::new(exe)
            .args(&req.args)
            .arg("--node-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("starting the worker: {e}"),
                )
            })?;
        let pid = child.id();
        tracing::info!(
            token = req.token,
            index = req.index,
            pid,
            "stream worker started"
        );
        workers.push(Hosted {
            token: req.token,
            index: req.index,
            child,
        });
        Ok(pid)
    }

    /// SIGKILL and reap the workers of `token` (all without one); their pids.
    fn kill(&self, token: Option<u64>) -> Vec<u32> {
        let mut victims = Vec::new();
        {
            let mut workers = self.lock();
            let mut i = 0;
            while i < workers.len() {
                if token.is_none_or(|t| workers[i].token == t) {
                    victims.push(workers.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        for w in &mut victims {
            let _ = w.child.kill();
        }
        victims
            .into_iter()
            .map(|mut w| {
                let _ = w.child.wait();
                w.child.id()
            })
            .collect()
    }

    fn list(&self) -> Value {
        let mut workers = self.lock();
        Self::reap(&mut workers);
        let list: Vec<Value> = workers
            .iter()
            .map(|w| json!({ "token": w.token, "index": w.index, "pid": w.child.id() }))
            .collect();
        json!({ "workers": list })
    }
}

/// The `/v1/stream/*` routes of the admin endpoint.
pub fn routes() -> Router<Arc<NodeState>> {
    Router::new().route("/v1/stream/workers", get(list).post(start).delete(kill))
}

async fn start(State(_): State<Arc<NodeState>>, body: String) -> (StatusCode, Json<Value>) {
    let req: WorkerRequest = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("bad worker request: {e}") })),
            )
        }
    };
    match tokio::task::spawn_blocking(move || host().start(req)).await {
        Ok(Ok(pid)) => (StatusCode::OK, Json(json!({ "pid": pid }))),
        Ok(Err((code, e))) => (code, Json(json!({ "error": e }))),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct KillQuery {
    token: Option<u64>,
}

async fn kill(
    State(_): State<Arc<NodeState>>,
    Query(q): Query<KillQuery>,
) -> (StatusCode, Json<Value>) {
    match tokio::task::spawn_blocking(move || host().kill(q.token)).await {
        Ok(pids) => (StatusCode::OK, Json(json!({ "killed": pids }))),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

async fn list(State(_): State<Arc<NodeState>>) -> Json<Value> {
    Json(host().list())
}
