//! `synod job run --cluster DIR`: the master runs here and the nodes of a `synod up`
//! cluster are its workers (each node's MapReduce service, `synod_server::mapreduce`).
//!
//! The master asks every node's admin endpoint (`POST /v1/mapreduce/worker`) to work for
//! it, and asks again every second while the job runs: the request is a no-op on a node
//! that already works for this master, and brings a restarted node back into the job.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use synod_server::config::ClusterConfig;

/// How often the nodes are asked again.
const ENLIST_EVERY: Duration = Duration::from_secs(1);

/// The cluster's nodes working for one master.
pub(crate) struct ClusterWorkers {
    admins: Vec<(u32, SocketAddr)>,
    master: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The address to give the nodes for a master listening on `addr`.
pub(crate) fn advertised(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

fn post(
    runtime: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    admin: SocketAddr,
    body: &Value,
) -> Result<Value> {
    runtime.block_on(async {
        let url = format!("http://{admin}/v1/mapreduce/worker");
        let response = http
            .post(&url)
            .body(body.to_string())
            .send()
            .await
            .with_context(|| url.clone())?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(json!({ "error": text }));
        if !status.is_success() {
            bail!(
                "{url}: {status}: {}",
                value["error"].as_str().unwrap_or("no detail")
            );
        }
        Ok(value)
    })
}

fn get(
    runtime: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    admin: SocketAddr,
) -> Result<Value> {
    runtime.block_on(async {
        let url = format!("http://{admin}/v1/mapreduce/worker");
        let response = http.get(&url).send().await.with_context(|| url.clone())?;
        Ok(response.json().await?)
    })
}

fn client() -> Result<(tokio::runtime::Runtime, reqwest::Client)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the HTTP client")?;
    Ok((runtime, http))
}

/// The cluster file in `dir`, with a clear error when there is none.
pub(crate) fn load(dir: &Path) -> Result<ClusterConfig> {
    let config = ClusterConfig::load(&dir.join("cluster.toml"))
        .with_context(|| format!("no cluster in {} (start one with synod up)", dir.display()))?;
    if config.nodes.is_empty() {
        bail!("the cluster in {} has no nodes", dir.display());
    }
    Ok(config)
}

impl ClusterWorkers {
    /// Ask every node of the cluster in `dir` to work for the master at `master`; fails
    /// when no node accepts.
    pub(crate) fn enlist(dir: &Path, master: SocketAddr, task_delay: Duration) -> Result<Self> {
        let config = load(dir)?;
        let admins: Vec<(u32, SocketAddr)> =
            config.nodes.iter().map(|n| (n.id, n.admin_addr)).collect();
        let master = advertised(master);
        let body = json!({
            "master": master.to_string(),
            "task_delay_ms": u64::try_from(task_delay.as_millis()).unwrap_or(u64::MAX),
        });
        let (runtime, http) = client()?;
        let mut accepted = 0;
        let mut errors = Vec::new();
        for &(id, admin) in &admins {
            match post(&runtime, &http, admin, &body) {
                Ok(_) => accepted += 1,
                Err(e) => errors.push(format!("n{id}: {e:#}")),
            }
        }
        if accepted == 0 {
            bail!(
                "no node of the cluster in {} took the job (is it running? synod up --dir {}): {}",
                dir.display(),
                dir.display(),
                errors.join("; ")
            );
        }
        for e in &errors {
            tracing::warn!("{e}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, admins) = (stop.clone(), admins.clone());
            std::thread::spawn(move || {
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if last.elapsed() < ENLIST_EVERY {
                        continue;
                    }
                    last = Instant::now();
                    for &(id, admin) in &admins {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if let Ok(v) = post(&runtime, &http, admin, &body) {
                            if v["started"] == true {
                                tracing::info!("n{id} joined the job again");
                            }
                        }
                    }
                }
            })
        };
        Ok(ClusterWorkers {
            admins,
            master,
            stop,
            thread: Some(thread),
        })
    }

    /// Stop asking the nodes, and wait (up to `patience`) until none of them still runs a
    /// worker for this master (they end when the master says there are no more jobs).
    pub(crate) fn release(&mut self, patience: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let Ok((runtime, http)) = client() else {
            return;
        };
        let deadline = Instant::now() + patience;
        let me = self.master.to_string();
        while Instant::now() < deadline {
            let busy = self.admins.iter().any(|&(_, admin)| {
                get(&runtime, &http, admin).is_ok_and(|v| {
                    v["workers"].as_array().is_some_and(|ws| {
                        ws.iter()
                            .any(|w| w["master"] == me.as_str() && w["state"] == "running")
                    })
                })
            });
            if !busy {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Number of nodes.
    pub(crate) fn nodes(&self) -> usize {
        self.admins.len()
    }
}

impl Drop for ClusterWorkers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
