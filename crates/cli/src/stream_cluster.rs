//! `synod stream run <job> --cluster <dir>`: the job manager deploys the job's workers onto
//! the nodes of a `synod up` cluster (their stream worker service, id 12) instead of
//! starting worker processes itself. See `synod_server::stream` and docs/stream.md.
//!
//! Worker `i` goes to node `i mod nodes`; when that node does not answer (it died), to the
//! next node that does, so after a node's death the restarted attempt runs on the
//! survivors. Stopping a worker is a `DELETE` on its node, which answers once the
//! process is reaped; when the node is gone, the worker has killed itself (it polls its
//! parent every 20 ms) and the manager waits out [`SELF_FENCE`] before it settles output.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use synod_dataflow::stream::dist::WorkerProcess;
use synod_server::config::ClusterConfig;

/// How often a worker started by a node checks that the node is still its parent.
pub(crate) const PARENT_POLL: Duration = Duration::from_millis(20);

/// How long the manager waits for the workers of a node it cannot reach to have killed
/// themselves: many times [`PARENT_POLL`].
pub(crate) const SELF_FENCE: Duration = Duration::from_millis(500);

/// A node of the cluster, as the job manager sees it.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) id: u32,
    pub(crate) admin: SocketAddr,
}

/// The nodes of the cluster in `dir` (the `--dir` of `synod up`).
pub(crate) fn nodes(dir: &Path) -> Result<Vec<Node>> {
    let file = dir.join("cluster.toml");
    if !file.is_file() {
        bail!(
            "--cluster {}: no cluster.toml there (the directory of `synod up --dir`)",
            dir.display()
        );
    }
    let config = ClusterConfig::load(&file)
        .with_context(|| format!("--cluster: reading {}", file.display()))?;
    let nodes: Vec<Node> = config
        .nodes
        .iter()
        .map(|n| Node {
            id: n.id,
            admin: n.admin_addr,
        })
        .collect();
    if nodes.is_empty() {
        bail!("--cluster {}: the cluster has no nodes", dir.display());
    }
    Ok(nodes)
}

/// One HTTP/1.1 request to a node's admin endpoint: the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.take(1 << 20).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(malformed)?;
    Ok((code, body.to_string()))
}

/// A worker that a node started for this manager.
pub(crate) struct NodeWorker {
    node: Node,
    token: u64,
    pid: u32,
    /// The node confirmed that the process is reaped.
    reaped: bool,
    killed_at: Option<Instant>,
}

impl WorkerProcess for NodeWorker {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill(&mut self) {
        if self.reaped || self.killed_at.is_some() {
            return;
        }
        self.killed_at = Some(Instant::now());
        let path = format!("/v1/stream/workers?token={}", self.token);
        self.reaped = matches!(http(self.node.admin, "DELETE", &path, ""), Ok((200, _)));
    }

    fn wait(&mut self) {
        if self.reaped {
            return;
        }
        // The node did not answer: it is dead (or cut off), and the worker kills itself
        // when it sees its parent gone.
        let since = self.killed_at.get_or_insert_with(Instant::now);
        let left = SELF_FENCE.saturating_sub(since.elapsed());
        std::thread::sleep(left);
        self.reaped = true;
    }

    fn exited(&mut self) -> Option<String> {
        // The control connection and the heartbeats tell the manager.
        None
    }
}

/// Ask the cluster to start worker `index` of attempt `token`: its preferred node
/// (`index mod nodes`) first, then the others in order.
pub(crate) fn deploy(
    nodes: &[Node],
    index: usize,
    token: u64,
    args: Vec<String>,
    log: PathBuf,
) -> io::Result<Box<dyn WorkerProcess>> {
    let body = json!({
        "token": token,
        "index": index,
        "args": args,
        "log": log,
    })
    .to_string();
    let mut errors = Vec::new();
    for k in 0..nodes.len() {
        let node = &nodes[(index + k) % nodes.len()];
        match http(node.admin, "POST", "/v1/stream/workers", &body) {
            Ok((200, answer)) => {
                let pid = serde_json::from_str::<Value>(&answer)
                    .ok()
                    .and_then(|v| v["pid"].as_u64())
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("n{}: no pid in {answer}", node.id),
                        )
                    })?;
                return Ok(Box::new(NodeWorker {
                    node: node.clone(),
                    token,
                    pid: pid as u32,
                    reaped: false,
                    killed_at: None,
                }));
            }
            Ok((code, answer)) => errors.push(format!("n{}: {code} {}", node.id, answer.trim())),
            Err(e) => errors.push(format!("n{}: {e}", node.id)),
        }
    }
    Err(io::Error::other(format!(
        "no node could start worker {index}: {}",
        errors.join("; ")
    )))
}

/// Exit this process when its parent (the node that started it) is no longer `node_pid`.
pub(crate) fn exit_with_node(node_pid: u32) -> Result<()> {
    if std::os::unix::process::parent_id() != node_pid {
        return Err(anyhow!(
            "--node-pid {node_pid} is not this worker's parent process"
        ));
    }
    std::thread::spawn(move || loop {
        std::thread::sleep(PARENT_POLL);
        if std::os::unix::process::parent_id() != node_pid {
            eprintln!("stream worker: node process {node_pid} is gone; exiting");
            std::process::exit(3);
        }
    });
    Ok(())
}
