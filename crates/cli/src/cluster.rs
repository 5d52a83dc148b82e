//! `synod up`, `synod down`, `synod status`, `synod node` and `synod certs`: a real
//! cluster of separate processes.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use synod_core::NodeId;
use synod_runtime::transport::certs::{init_cluster_certs, NodeCertSpec};
use synod_server::config::{parse_node_id, ClusterConfig, NodeConfig, Tuning};

/// Flags shared by the commands that find a local cluster by its directory.
#[derive(Debug, Args)]
pub(crate) struct DirFlag {
    /// The cluster's directory (cluster.toml, certs, data, logs, pids).
    #[arg(long, default_value = ".synod")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct UpCommand {
    /// Number of nodes.
    #[arg(long, default_value = "3", value_parser = crate::args::nodes)]
    nodes: u32,
    #[command(flatten)]
    dir: DirFlag,
    /// Cluster id: a DNS label.
    #[arg(long, default_value = "local")]
    cluster_id: String,
    /// Plaintext between nodes (loopback only) instead of mutual TLS.
    #[arg(long)]
    insecure: bool,
    /// Also run the Dynamo-style AP store (HTTP /kv/{bucket}/{key}, synod ap).
    #[arg(long)]
    ap: bool,
    /// Also run the multi-Raft ranges with cross-range transactions (HTTP /v1/txn, synod txn);
    /// the etcd KV API is then served over them.
    #[arg(long)]
    ranges: bool,
    /// With --ranges: a range splits when it holds more keys than this.
    #[arg(long, default_value = "64", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    range_split_keys: u32,
    /// With --ranges: entries a range applies between snapshots, after which its Raft
    /// log is discarded up to the snapshot (0: never compact range logs).
    #[arg(long, default_value_t = synod_protocols::txn::DEFAULT_SNAPSHOT_THRESHOLD)]
    range_snapshot_entries: u64,
    /// etcd's --auto-compaction-mode: `periodic` or `revision` (with
    /// --auto-compaction-retention).
    #[arg(long, value_parser = ["periodic", "revision"])]
    auto_compaction_mode: Option<String>,
    /// etcd's --auto-compaction-retention: periodic: a duration (72h, 30m, 10s; a bare
    /// number is hours); revision: a number of revisions to keep. 0: off (the default).
    #[arg(long)]
    auto_compaction_retention: Option<String>,
    /// Peer port of n1; n2 gets the next one, and so on.
    #[arg(long, default_value = "7001")]
    peer_port: u16,
    /// Client (etcd API) port of n1.
    #[arg(long, default_value = "2379")]
    client_port: u16,
    /// Admin HTTP port of n1.
    #[arg(long, default_value = "9001")]
    admin_port: u16,
    /// Delete an existing cluster directory first (all its data).
    #[arg(long)]
    fresh: bool,
    /// How long to wait for every node to answer.
    #[arg(long, default_value = "20s", value_parser = crate::args::duration)]
    wait: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct NodeCommand {
    /// The cluster file.
    #[arg(long)]
    config: PathBuf,
    /// This node's id: n1, n2, ... (or 1, 2, ...).
    #[arg(long)]
    id: String,
}

#[derive(Debug, Args)]
pub(crate) struct CertsCommand {
    #[command(subcommand)]
    what: CertsWhat,
}

#[derive(Debug, Subcommand)]
enum CertsWhat {
    /// Create a cluster CA and a certificate and key for each node.
    Init {
        /// Where to write ca.pem, ca.key, n<id>.pem and n<id>.key.
        #[arg(long)]
        dir: PathBuf,
        /// Cluster id: a DNS label.
        #[arg(long, default_value = "local")]
        cluster_id: String,
        /// Number of nodes (ids 1..=N).
        #[arg(long, value_parser = crate::args::nodes)]
        nodes: u32,
    },
}

pub(crate) fn certs(cmd: CertsCommand) -> Result<ExitCode> {
    match cmd.what {
        CertsWhat::Init {
            dir,
            cluster_id,
            nodes,
        } => {
            let specs: Vec<NodeCertSpec> = (1..=nodes).map(|i| NodeId(i).into()).collect();
            let paths = init_cluster_certs(&dir, &cluster_id, &specs)
                .with_context(|| format!("creating certificates in {}", dir.display()))?;
            println!("cluster CA: {}", paths.ca_cert.display());
            for (node, files) in &paths.nodes {
                println!("{node}: {} {}", files.cert.display(), files.key.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn node(cmd: NodeCommand) -> Result<ExitCode> {
    let me = parse_node_id(&cmd.id)?;
    let config = ClusterConfig::load(&cmd.config)?;
    let runtime = synod_server::node_runtime::build().context("starting the async runtime")?;
    runtime.block_on(synod_server::node::run_node(config, me))?;
    Ok(ExitCode::SUCCESS)
}

fn cluster_file(dir: &Path) -> PathBuf {
    dir.join("cluster.toml")
}

/// The cluster file as an absolute path: what nodes are started with, and what
/// [`alive_in`] compares against, whatever spelling of `--dir` a later command uses.
fn cluster_file_abs(dir: &Path) -> PathBuf {
    std::fs::canonicalize(cluster_file(dir)).unwrap_or_else(|_| cluster_file(dir))
}

fn pid_file(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("{node}.pid"))
}

fn log_file(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("{node}.log"))
}

pub(crate) fn read_pid(dir: &Path, node: NodeId) -> Option<i32> {
    std::fs::read_to_string(pid_file(dir, node))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a running `synod node` of the cluster in `dir`: it exists, is not a
/// zombie, runs this synod executable, and was started with this cluster's file. A pid file
/// can outlive its process and pids are reused, so anything less could signal a stranger.
/// Whether the node process `pid` is gone for good: not only no longer running, but with
/// every thread ended. A thread-group leader shows as a zombie while its other threads are
/// still tearing down, and until the last one ends the process keeps its files (the data
/// directory's lock) and its listening sockets, which a restart right away would hit.
fn fully_exited(dir: &Path, pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    if field("State:").starts_with('Z') {
        return field("Threads:").parse::<u32>().is_ok_and(|n| n <= 1);
    }
    // Running: ours until it stops; anything else reuses the pid.
    !alive_in(dir, pid)
}

pub(crate) fn alive_in(dir: &Path, pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    // A rebuilt binary replaces the file the node runs: the kernel then shows the
    // old path with " (deleted)", which is still the same program.
    let same_exe = match (
        std::fs::read_link(format!("/proc/{pid}/exe")),
        std::env::current_exe().and_then(std::fs::canonicalize),
    ) {
        (Ok(theirs), Ok(ours)) => {
            let theirs = theirs.to_string_lossy();
            theirs.strip_suffix(" (deleted)").unwrap_or(&theirs) == ours.to_string_lossy()
        }
        _ => false,
    };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let config = cluster_file_abs(dir);
    same_exe
        && args.get(1) == Some(&&b"node"[..])
        && args
            .iter()
            .any(|a| Path::new(std::ffi::OsStr::from_bytes(a)) == config)
}

fn port(base: u16, i: u32) -> Result<u16> {
    u16::try_from(u32::from(base) + i - 1).map_err(|_| anyhow!("port {base}+{i} is out of range"))
}

fn write_config(u: &UpCommand) -> Result<ClusterConfig> {
    let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let nodes = (1..=u.nodes)
        .map(|i| {
            Ok(NodeConfig {
                id: i,
                peer_addr: loopback(port(u.peer_port, i)?),
                client_addr: loopback(port(u.client_port, i)?),
                admin_addr: loopback(port(u.admin_port, i)?),
                data_dir: PathBuf::from(format!("n{i}")),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let config = ClusterConfig {
        cluster_id: u.cluster_id.clone(),
        insecure: u.insecure,
        ap: u.ap,
        ranges: u.ranges.then_some(synod_server::txn::RangesConfig {
            split_keys: u.range_split_keys as usize,
            snapshot_entries: u.range_snapshot_entries,
        }),
        auto_compaction_mode: u.auto_compaction_mode.clone(),
        auto_compaction_retention: u.auto_compaction_retention.clone(),
        certs_dir: PathBuf::from("certs"),
        tuning: Tuning::default(),
        nodes,
        base_dir: u.dir.dir.clone(),
    };
    // Validate through the same parser `synod node` uses.
    let text = config.to_toml();
    let path = cluster_file(&u.dir.dir);
    ClusterConfig::parse(&text, &path)?;
    std::fs::create_dir_all(&u.dir.dir)
        .with_context(|| format!("creating {}", u.dir.dir.display()))?;
    // Certificates first, then the cluster file by rename: an interrupted `synod up` leaves
    // no cluster file that points at missing certificates.
    if !u.insecure {
        let certs = u.dir.dir.join("certs");
        let _ = std::fs::remove_dir_all(&certs);
        let specs: Vec<NodeCertSpec> = (1..=u.nodes).map(|i| NodeId(i).into()).collect();
        init_cluster_certs(&certs, &u.cluster_id, &specs)
            .context("creating the cluster's certificates")?;
    }
    let temp = u.dir.dir.join("cluster.toml.tmp");
    std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, &path).with_context(|| format!("writing {}", path.display()))?;
    ClusterConfig::load(&path).map_err(Into::into)
}

pub(crate) fn up(u: UpCommand) -> Result<ExitCode> {
    let dir = &u.dir.dir;
    if u.fresh && dir.exists() {
        let running: Vec<NodeId> = existing_nodes(dir)
            .into_iter()
            .filter(|&n| read_pid(dir, n).is_some_and(|p| alive_in(dir, p)))
            .collect();
        if !running.is_empty() {
            bail!(
                "nodes {running:?} of {} are still running: `synod down` first",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let config = if cluster_file(dir).exists() {
        println!(
            "using the existing cluster in {} (--fresh starts over)",
            dir.display()
        );
        ClusterConfig::load(&cluster_file(dir))?
    } else {
        write_config(&u)?
    };
    let exe = std::env::current_exe().context("finding the synod executable")?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(100));
    // The nodes this command started: their exit is seen (with its status) through the
    // handle, not guessed from /proc.
    let mut started = std::collections::BTreeMap::new();
    for n in &config.nodes {
        let node = NodeId(n.id);
        if read_pid(dir, node).is_some_and(|p| alive_in(dir, p)) {
            continue;
        }
        bar.set_message(format!("starting {node}"));
        let log = std::fs::File::create(log_file(dir, node))
            .with_context(|| format!("creating {}", log_file(dir, node).display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("node")
            .arg("--config")
            .arg(cluster_file_abs(dir))
            .arg("--id")
            .arg(node.to_string())
            .env(
                "SYNOD_LOG",
                std::env::var("SYNOD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a Ctrl-C at the terminal that ran `synod up` must not
            // take the cluster down with it.
            cmd.process_group(0);
        }
        let child = cmd.spawn().with_context(|| format!("starting {node}"))?;
        std::fs::write(pid_file(dir, node), child.id().to_string())?;
        started.insert(node, child);
    }
    let deadline = Instant::now() + u.wait;
    for n in &config.nodes {
        let node = NodeId(n.id);
        bar.set_message(format!("waiting for {node} at {}", n.admin_addr));
        let expected = read_pid(dir, node);
        loop {
            let exit = match started.get_mut(&node) {
                Some(child) => child.try_wait().ok().flatten().map(|s| s.to_string()),
                None => expected
                    .is_none_or(|p| !alive_in(dir, p))
                    .then(|| "it stopped".to_string()),
            };
            let gone = exit.is_some();
            // The answer must come from the process we started, not from whatever else
            // holds the port (another cluster on the default ports, say).
            let answered = !gone
                && http_get(n.admin_addr, "/status")
                    .ok()
                    .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .is_some_and(|s| s["pid"].as_i64() == expected.map(i64::from));
            if answered {
                break;
            }
            if gone || Instant::now() > deadline {
                bar.finish_and_clear();
                let log = std::fs::read_to_string(log_file(dir, node)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "{node} did not come up ({}); last lines of {}:\n{}",
                    exit.as_deref().unwrap_or("timed out"),
                    log_file(dir, node).display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    bar.finish_and_clear();
    println!(
        "synod cluster `{}` is up: {} nodes, {} between nodes, data in {}",
        config.cluster_id,
        config.nodes.len(),
        if config.insecure {
            "plaintext (loopback)"
        } else {
            "mutual TLS"
        },
        dir.display()
    );
    println!(
        "{:<5} {:<8} {:<18} {:<18} {:<18}",
        "node", "pid", "peer", "client", "admin"
    );
    for n in &config.nodes {
        let node = NodeId(n.id);
        println!(
            "{:<5} {:<8} {:<18} {:<18} http://{}",
            node.to_string(),
            read_pid(dir, node).map_or("-".into(), |p| p.to_string()),
            n.peer_addr.to_string(),
            n.client_addr.to_string(),
            n.admin_addr
        );
    }
    println!("next: synod status   (and synod down to stop)");
    Ok(ExitCode::SUCCESS)
}

fn existing_nodes(dir: &Path) -> Vec<NodeId> {
    ClusterConfig::load(&cluster_file(dir))
        .map(|c| c.node_ids())
        .unwrap_or_default()
}

pub(crate) fn down(d: DirFlag) -> Result<ExitCode> {
    let dir = &d.dir;
    let config = ClusterConfig::load(&cluster_file(dir))
        .with_context(|| format!("no cluster in {}", dir.display()))?;
    let mut stopped = Vec::new();
    for node in config.node_ids() {
        let Some(pid) = read_pid(dir, node) else {
            continue;
        };
        if alive_in(dir, pid) {
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            stopped.push((node, pid));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (node, pid) in &stopped {
        while !fully_exited(dir, *pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive_in(dir, *pid) {
            eprintln!("{node} (pid {pid}) ignored SIGTERM for 10s; sending SIGKILL");
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(pid_file(dir, *node));
        println!("stopped {node} (pid {pid})");
    }
    if stopped.is_empty() {
        println!("no node of {} was running", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn status(d: DirFlag) -> Result<ExitCode> {
    let dir = &d.dir;
    let config = ClusterConfig::load(&cluster_file(dir))
        .with_context(|| format!("no cluster in {} (run synod up)", dir.display()))?;
    println!(
        "{:<5} {:<7} {:<8} {:>11} {:<22} {:>14} {:>8}",
        "node", "state", "pid", "incarnation", "peers connected", "clock offset", "uptime"
    );
    let mut all_up = true;
    for n in &config.nodes {
        let node = NodeId(n.id);
        let pid = read_pid(dir, node).map_or("-".to_string(), |p| p.to_string());
        match http_get(n.admin_addr, "/status")
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).map_err(Into::into))
        {
            Ok(s) => {
                let peers = s["peers"].as_object().map_or(String::new(), |m| {
                    m.iter()
                        .filter(|(_, v)| v["connected"].as_bool() == Some(true))
                        .map(|(k, _)| k.clone())
                        .collect::<Vec<_>>()
                        .join(",")
                });
                let offset = &s["clock_sync"];
                let offset = if offset["is_server"].as_bool() == Some(true) {
                    "time server".to_string()
                } else {
                    offset["offset_ns"]
                        .as_i64()
                        .map_or("-".into(), |ns| format!("{:+.1}µs", ns as f64 / 1000.0))
                };
                println!(
                    "{:<5} {:<7} {:<8} {:>11} {:<22} {:>14} {:>7.0}s",
                    node.to_string(),
                    "up",
                    pid,
                    s["beacon"]["incarnation"].as_u64().unwrap_or(0),
                    if peers.is_empty() { "-".into() } else { peers },
                    offset,
                    s["uptime_s"].as_f64().unwrap_or(0.0)
                );
            }
            Err(e) => {
                all_up = false;
                println!("{:<5} {:<7} {:<8} ({e})", node.to_string(), "down", pid);
            }
        }
    }
    Ok(if all_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A minimal HTTP/1.1 GET for the admin endpoint: loopback, small bodies, short timeouts.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(16 << 20).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from {addr}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        bail!("{addr}{path}: {status_line}");
    }
    Ok(body.to_string())
}
