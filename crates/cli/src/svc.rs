//! `synod svc`: register, deregister, list and heartbeat service instances in the
//! cluster's registry (see [`crate::registry`] and docs/registry.md).

use crate::args;
use crate::registry::{
    parse_endpoints, CheckKind, CheckSpec, Endpoints, Registration, Registry, Status,
};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub(crate) struct SvcCommand {
    /// The cluster's etcd API endpoints (client ports), comma-separated.
    #[arg(long, global = true, default_value = "127.0.0.1:2379", env = "SYNOD_ETCD", value_parser = parse_endpoints)]
    etcd: Endpoints,
    #[command(subcommand)]
    what: SvcWhat,
}

#[derive(Debug, Subcommand)]
enum SvcWhat {
    /// Register an instance under a lease. Without --ttl, stay in the foreground keeping
    /// the lease alive (ctrl-c deregisters); with --ttl, print the lease id and exit (renew
    /// it with `synod svc heartbeat`, or let it expire).
    Register(Box<RegisterArgs>),
    /// Remove an instance (and its check result).
    Deregister(DeregisterArgs),
    /// List services and instances with their health.
    List(ListArgs),
    /// Renew a lease once (a TTL heartbeat for a `register --ttl` instance).
    Heartbeat(HeartbeatArgs),
}

#[derive(Debug, Args)]
struct RegisterArgs {
    /// The service name.
    name: String,
    /// Where the instance listens.
    #[arg(long)]
    address: SocketAddr,
    /// The instance id, unique within the service (default: the address).
    #[arg(long)]
    id: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_parser = tag)]
    tags: Vec<String>,
    /// Metadata as key=value (repeatable).
    #[arg(long = "meta", value_parser = key_value)]
    meta: Vec<(String, String)>,
    /// Relative weight for weighted balancing.
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    weight: u32,
    /// The agent (node) that runs this instance's check.
    #[arg(long, default_value = "local")]
    node: String,
    /// An active or TTL check the agent runs: http, tcp or ttl.
    #[arg(long, value_parser = check_kind)]
    check: Option<CheckKind>,
    /// Path of an HTTP check.
    #[arg(long, default_value = "/health")]
    check_path: String,
    /// Time between checks.
    #[arg(long, default_value = "1s", value_parser = args::duration)]
    check_interval: Duration,
    /// Fixed check timeout (default: adaptive, RFC 6298).
    #[arg(long, value_parser = args::duration)]
    check_timeout: Option<Duration>,
    /// For --check ttl: the longest silence between `PUT /v1/agent/check/pass/...`.
    #[arg(long, value_parser = args::duration)]
    check_ttl: Option<Duration>,
    /// Passing checks in a row to become passing.
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u32).range(1..=100))]
    healthy_threshold: u32,
    /// Failing checks in a row to become critical.
    #[arg(long, default_value = "2", value_parser = clap::value_parser!(u32).range(1..=100))]
    unhealthy_threshold: u32,
    /// Register with a lease of this TTL (whole seconds, at least 2) and exit, printing
    /// the lease id (with --keepalive: stay and keep it alive).
    #[arg(long, value_parser = args::duration)]
    ttl: Option<Duration>,
    /// With --ttl: stay in the foreground renewing the lease every third of its TTL, so
    /// the instance lives exactly as long as this process (plus at most the TTL).
    #[arg(long, requires = "ttl")]
    keepalive: bool,
    /// In the foreground: the TTL of the lease that is kept alive (it is renewed every
    /// third of it; the instance disappears this long after the process dies).
    #[arg(long, default_value = "3s", value_parser = args::duration, conflicts_with = "ttl")]
    lease_ttl: Duration,
}

#[derive(Debug, Args)]
struct DeregisterArgs {
    /// The service name.
    name: String,
    /// The instance id.
    id: String,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only this service.
    name: Option<String>,
    /// Only passing instances (what discovery returns).
    #[arg(long)]
    passing: bool,
    /// Only instances carrying this tag (repeatable: every one).
    #[arg(long = "tag", value_parser = tag)]
    tags: Vec<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct HeartbeatArgs {
    /// The lease id in hex, as `register --ttl` printed it.
    #[arg(long, value_parser = lease_id)]
    lease: i64,
}

/// A tag: non-empty, no spaces.
pub(crate) fn tag(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(format!(
            "`{s}` is not a tag: tags are non-empty and have no spaces"
        ));
    }
    Ok(s.to_string())
}

pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not key=value"))?;
    if k.is_empty() {
        return Err(format!("`{s}` has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn check_kind(s: &str) -> Result<CheckKind, String> {
    match s {
        "http" => Ok(CheckKind::Http),
        "tcp" => Ok(CheckKind::Tcp),
        "ttl" => Ok(CheckKind::Ttl),
        other => Err(format!("unknown check `{other}`: use http, tcp or ttl")),
    }
}

fn lease_id(s: &str) -> Result<i64, String> {
    let hex = s.trim().trim_start_matches("0x");
    u64::from_str_radix(hex, 16)
        .ok()
        .and_then(|v| i64::try_from(v).ok())
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("`{s}` is not a lease id: expected hex digits, like 694d7d1a2b3c"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn run(cmd: SvcCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // The balanced channel spawns its connection tasks: it needs the runtime.
        let registry = Registry::new(&cmd.etcd)?;
        match cmd.what {
            SvcWhat::Register(a) => register(&registry, *a).await,
            SvcWhat::Deregister(a) => {
                if registry.deregister(&a.name, &a.id).await? {
                    println!("deregistered {}/{}", a.name, a.id);
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("no instance {}/{}", a.name, a.id);
                    Ok(ExitCode::from(1))
                }
            }
            SvcWhat::List(a) => list(&registry, a).await,
            SvcWhat::Heartbeat(a) => {
                let ttl = registry.keep_alive_once(a.lease).await?;
                if ttl <= 0 {
                    bail!("lease {:x} has expired", a.lease);
                }
                println!("lease {:x} renewed, ttl {ttl}s", a.lease);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn registration(a: &RegisterArgs) -> Result<Registration> {
    let check = match a.check {
        None => {
            if a.check_ttl.is_some() || a.check_timeout.is_some() {
                bail!("--check-ttl and --check-timeout need --check");
            }
            None
        }
        Some(kind) => {
            let mut spec = CheckSpec::new(kind);
            spec.path.clone_from(&a.check_path);
            spec.interval_ms = millis(a.check_interval).max(1);
            spec.timeout_ms = a.check_timeout.map(millis);
            spec.healthy_threshold = a.healthy_threshold;
            spec.unhealthy_threshold = a.unhealthy_threshold;
            spec.ttl_ms = match (kind, a.check_ttl) {
                (CheckKind::Ttl, Some(t)) => Some(millis(t).max(1)),
                (CheckKind::Ttl, None) => bail!("--check ttl needs --check-ttl, e.g. 5s"),
                (_, Some(_)) => bail!("--check-ttl is only for --check ttl"),
                (_, None) => None,
            };
            Some(spec)
        }
    };
    let r = Registration {
        name: a.name.clone(),
        id: a.id.clone().unwrap_or_else(|| a.address.to_string()),
        address: a.address,
        tags: a.tags.clone(),
        meta: a.meta.iter().cloned().collect::<BTreeMap<_, _>>(),
        weight: a.weight,
        node: a.node.clone(),
        check,
    };
    r.validate()?;
    Ok(r)
}

async fn register(registry: &Registry, a: RegisterArgs) -> Result<ExitCode> {
    let r = registration(&a)?;
    let ttl = a.ttl.unwrap_or(a.lease_ttl);
    if ttl < Duration::from_secs(2) {
        bail!("the lease TTL must be at least 2s (the cluster's minimum)");
    }
    let (lease, granted) = registry.grant(ttl).await?;
    registry.register(&r, lease).await?;
    if a.ttl.is_some() && !a.keepalive {
        println!(
            "registered {}/{} at {} lease {lease:x} ttl {granted}s",
            r.name, r.id, r.address
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "registered {}/{} at {} lease {lease:x} ttl {granted}s; keeping it alive (ctrl-c deregisters)",
        r.name, r.id, r.address
    );
    hold(registry, &r, lease, granted).await
}

/// Keep `lease` (holding `r`) alive, renewing it every third of its TTL, until ctrl-c or
/// SIGTERM (then revoke it: `r` leaves at once) or until it expires (exit 1). A process
/// killed outright stops renewing, and `r` leaves when the lease runs out.
pub(crate) async fn hold(
    registry: &Registry,
    r: &Registration,
    lease: i64,
    granted: i64,
) -> Result<ExitCode> {
    let every = Duration::from_secs(u64::try_from(granted.max(1)).unwrap_or(1)) / 3;
    let keeper = registry.keep_alive(lease, every);
    tokio::select! {
        r = keeper => {
            r.map_err(|e| anyhow!("keep-alive task: {e}"))??;
            Ok(ExitCode::from(1))
        }
        () = shutdown_signal() => {
            registry.revoke(lease).await?;
            println!("deregistered {}/{}", r.name, r.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(registry: &Registry, a: ListArgs) -> Result<ExitCode> {
    let mirror = registry.read().await?;
    let names: Vec<String> = match &a.name {
        Some(n) => vec![n.clone()],
        None => mirror.services.keys().cloned().collect(),
    };
    let mut rows = Vec::new();
    for name in &names {
        for (r, status) in mirror.instances(name, a.passing) {
            if !a.tags.iter().all(|t| r.tags.contains(t)) {
                continue;
            }
            let health = mirror
                .services
                .get(name)
                .and_then(|ids| ids.get(&r.id))
                .and_then(|e| e.health.clone());
            rows.push((r.clone(), status, health));
        }
    }
    if a.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, status, health)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("status".into(), serde_json::json!(status));
                    if let Some(h) = health {
                        o.insert("output".into(), serde_json::json!(h.output));
                    }
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<20} {:<22} {:<9} {:<6} {:<16} OUTPUT",
        "SERVICE", "ID", "ADDRESS", "STATUS", "WEIGHT", "TAGS"
    );
    for (r, status, health) in &rows {
        println!(
            "{:<16} {:<20} {:<22} {:<9} {:<6} {:<16} {}",
            r.name,
            r.id,
            r.address.to_string(),
            match status {
                Status::Passing => "passing",
                Status::Critical => "critical",
            },
            r.weight,
            r.tags.join(","),
            health.as_ref().map_or("", |h| h.output.as_str())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-c or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
