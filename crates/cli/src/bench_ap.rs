//! `synod bench ap`: the Dynamo-style AP store against the Raft KV store of the same
//! running cluster (`synod up --ap` runs both on every node), in one run, phase after
//! phase: puts and gets with the bucket's N = 3, R = 2, W = 2, each with client-driven and
//! server-driven coordination (Dynamo §6.4, Table 2), then Raft puts and linearizable
//! reads. Throughput, mean, p50, p99, p99.9 latency, and the nodes' CPU time per
//! operation (from /proc, far less sensitive to a busy machine than wall-clock rates).
//!
//! - **client-driven**: the client computes the key's preference list from the ring (the
//!   same ring code and vnode count as the nodes) and sends the request to its first
//!   member, the key's coordinator.
//! - **server-driven**: the client sends the request to a random node, as a load balancer
//!   would; that node coordinates. When it is not one of the key's N owners it adds a
//!   durable copy of its own and waits for W remote acknowledgements (one more hop).
//!
//! AP puts carry the context of the client's previous write of the key, so each
//! supersedes the last and no sibling piles up; each client has its own keys.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use synod_core::NodeId;
use synod_protocols::dynamo::Key;
use synod_protocols::hashing::Ring;
use synod_server::ap::CONTEXT_HEADER;
use synod_server::config::ClusterConfig;

/// The bucket the benchmark writes (the cluster's default N, R, W).
const BUCKET: &str = "bench";

#[derive(Debug, Args)]
pub(crate) struct ApBench {
    /// The cluster's directory (start it with `synod up --ap --nodes 5`).
    #[arg(long, default_value = ".synod")]
    dir: PathBuf,
    /// Concurrent closed-loop clients, each with one request in flight.
    #[arg(long, default_value = "16", value_parser = positive)]
    clients: usize,
    /// How long each phase runs.
    #[arg(long, default_value = "5s", value_parser = crate::args::duration)]
    duration: Duration,
    /// Rounds of all phases; figures are medians over rounds. Odd rounds run the phases
    /// in reverse order, so neither store always goes first.
    #[arg(long, default_value = "3", value_parser = positive)]
    rounds: usize,
    /// Keys per client.
    #[arg(long, default_value = "64", value_parser = positive)]
    keys: usize,
    /// Skip the Raft KV phases.
    #[arg(long)]
    no_raft: bool,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive integer")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Store {
    Ap,
    Raft,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Put,
    Get,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Routing {
    /// To the key's coordinator (AP) / to the client's own node (Raft: followers forward).
    Client,
    /// To a random node.
    Server,
}

type Phase = (Store, Op, Routing);

/// One phase's result.
#[derive(Clone, Debug, Default)]
struct Sample {
    ops_per_sec: f64,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    cpu_ms_per_op: f64,
    errors: u64,
}

/// Everything a client needs to address the cluster.
#[derive(Clone)]
struct Cluster {
    admin: Vec<SocketAddr>,
    /// Node id to index in `admin`.
    index: BTreeMap<NodeId, usize>,
    ring: std::sync::Arc<Ring<NodeId>>,
    pids: Vec<i32>,
}

impl Cluster {
    /// The key's coordinator in the client's ring view: the first of its preference list.
    fn coordinator(&self, key: &Key) -> usize {
        self.ring
            .preference_list(key.position(), 1)
            .first()
            .and_then(|n| self.index.get(n))
            .copied()
            .unwrap_or(0)
    }
}

/// User plus system CPU time of the cluster's node processes, in seconds.
fn cluster_cpu(pids: &[i32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start at `) `.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

fn key_of(client: usize, i: usize) -> String {
    format!("c{client}-{i}")
}

pub(crate) fn bench(a: ApBench) -> Result<ExitCode> {
    let config = ClusterConfig::load(&a.dir.join("cluster.toml")).with_context(|| {
        format!(
            "no cluster in {} (start one with synod up --ap --nodes 5)",
            a.dir.display()
        )
    })?;
    let ids = config.node_ids();
    let store = synod_server::ap::config(ids.clone());
    let ring = Ring::with_members(store.vnodes, ids.iter().copied());
    let index = config
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (NodeId(n.id), i))
        .collect();
    let pids = config
        .nodes
        .iter()
        .filter_map(|n| {
            std::fs::read_to_string(a.dir.join(format!("n{}.pid", n.id)))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    let cluster = Cluster {
        admin: config.nodes.iter().map(|n| n.admin_addr).collect(),
        index,
        ring: std::sync::Arc::new(ring),
        pids,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(preflight(&cluster))?;

    let mut phases: Vec<Phase> = vec![
        (Store::Ap, Op::Put, Routing::Client),
        (Store::Ap, Op::Put, Routing::Server),
        (Store::Ap, Op::Get, Routing::Client),
        (Store::Ap, Op::Get, Routing::Server),
    ];
    if !a.no_raft {
        phases.push((Store::Raft, Op::Put, Routing::Client));
        phases.push((Store::Raft, Op::Get, Routing::Client));
    }
    let props = store.default_bucket;
    println!(
        "synod bench ap: {} nodes; AP store N={} R={} W={} and the Raft KV on the same \
         nodes; {} clients, {} keys each, {:?} per phase, {} rounds (medians over rounds)",
        cluster.admin.len(),
        props.n,
        props.r,
        props.w,
        a.clients,
        a.keys,
        a.duration,
        a.rounds
    );
    let bar = ProgressBar::new((phases.len() * a.rounds) as u64);
    let mut samples: BTreeMap<Phase, Vec<Sample>> = BTreeMap::new();
    // AP puts chain their contexts across phases and rounds: each write supersedes the
    // previous write of its key.
    let mut contexts: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); a.clients];
    for round in 0..a.rounds {
        let order: Vec<Phase> = if round % 2 == 0 {
            phases.clone()
        } else {
            phases.iter().rev().copied().collect()
        };
        for phase in order {
            bar.set_message(format!("round {} {phase:?}", round + 1));
            let sample = rt.block_on(run_phase(&cluster, &a, phase, &mut contexts))?;
            samples.entry(phase).or_default().push(sample);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    print_table(&samples);
    Ok(ExitCode::SUCCESS)
}

/// The cluster must run the AP store, and the client's ring must match the nodes'.
async fn preflight(cluster: &Cluster) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let first = cluster.admin[0];
    for i in 0..4 {
        let key = Key::new(BUCKET, key_of(0, i));
        let url = format!("http://{first}/kv/{BUCKET}/{}?local=true", key.name);
        let response = http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("node at {first} did not answer (is the cluster up?)"))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "node at {first}: {} (start the cluster with synod up --ap)",
                body["error"].as_str().unwrap_or("no AP store")
            );
        }
        let theirs: Vec<u64> = body["owners"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        let mine: Vec<u64> = cluster
            .ring
            .preference_list(key.position(), theirs.len())
            .into_iter()
            .map(|n| u64::from(n.0))
            .collect();
        if mine != theirs {
            bail!(
                "the ring differs from node {first}'s for {key}: owners {theirs:?} there, \
                 {mine:?} here (has a node left the ring?)"
            );
        }
    }
    Ok(())
}

async fn run_phase(
    cluster: &Cluster,
    a: &ApBench,
    phase: Phase,
    contexts: &mut [BTreeMap<String, String>],
) -> Result<Sample> {
    let cpu_before = cluster_cpu(&cluster.pids);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, ctx) in contexts.iter_mut().enumerate() {
        let cluster = cluster.clone();
        let ctx = std::mem::take(ctx);
        let (duration, keys) = (a.duration, a.keys);
        tasks.push(tokio::spawn(async move {
            client(cluster, c, phase, duration, keys, ctx).await
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for (c, t) in tasks.into_iter().enumerate() {
        let (l, e, ctx) = t.await??;
        latencies.extend(l);
        errors += e;
        contexts[c] = ctx;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cluster_cpu(&cluster.pids) - cpu_before;
    latencies.sort_unstable();
    let q = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |&us| us as f64 / 1e3)
    };
    let ops = latencies.len().max(1) as f64;
    Ok(Sample {
        ops_per_sec: latencies.len() as f64 / elapsed,
        mean_ms: latencies.iter().sum::<u64>() as f64 / ops / 1e3,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        cpu_ms_per_op: cpu * 1e3 / ops,
        errors,
    })
}

/// One closed-loop client: latencies in microseconds, errors, and its AP contexts.
async fn client(
    cluster: Cluster,
    c: usize,
    (store, op, routing): Phase,
    duration: Duration,
    keys: usize,
    mut contexts: BTreeMap<String, String>,
) -> Result<(Vec<u64>, u64, BTreeMap<String, String>)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1)
        .build()?;
    let nodes = cluster.admin.len();
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut x = (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let begin = Instant::now();
    while begin.elapsed() < duration {
        let name = key_of(c, next() as usize % keys);
        let random_node = next() as usize % nodes;
        let node = match (store, routing) {
            (Store::Ap, Routing::Client) => cluster.coordinator(&Key::new(BUCKET, &name)),
            (Store::Ap, Routing::Server) => random_node,
            // Raft: each client keeps to one node, as `synod bench kv` does.
            (Store::Raft, _) => c % nodes,
        };
        let addr = cluster.admin[node];
        let value = next().to_string();
        let request = match (store, op) {
            (Store::Ap, Op::Put) => {
                let r = http
                    .put(format!("http://{addr}/kv/{BUCKET}/{name}"))
                    .body(value);
                match contexts.get(&name) {
                    Some(ctx) => r.header(CONTEXT_HEADER, ctx.as_str()),
                    None => r,
                }
            }
            (Store::Ap, Op::Get) => http.get(format!("http://{addr}/kv/{BUCKET}/{name}")),
            (Store::Raft, Op::Put) => http.put(format!("http://{addr}/v1/kv/{name}")).body(value),
            (Store::Raft, Op::Get) => http.get(format!("http://{addr}/v1/kv/{name}")),
        };
        let sent = Instant::now();
        match request.send().await {
            Ok(r) if r.status().is_success() || r.status() == 404 => {
                let context = r
                    .headers()
                    .get(CONTEXT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let _ = r.bytes().await;
                latencies.push(sent.elapsed().as_micros() as u64);
                if let (Store::Ap, Op::Put, Some(context)) = (store, op, context) {
                    contexts.insert(name, context);
                }
            }
            _ => errors += 1,
        }
    }
    Ok((latencies, errors, contexts))
}

fn print_table(samples: &BTreeMap<Phase, Vec<Sample>>) {
    println!(
        "{:<5} {:<4} {:<13} | {:>8} | {:>7} {:>7} {:>7} {:>8} | {:>9} | {:>6}",
        "store",
        "op",
        "coordination",
        "ops/s",
        "mean ms",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "cpu ms/op",
        "errors"
    );
    let median_of = |xs: &[Sample], f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = xs.iter().map(f).collect();
        crate::bench::median(&mut v)
    };
    let mut medians: BTreeMap<Phase, Sample> = BTreeMap::new();
    for (&phase, xs) in samples {
        let m = Sample {
            ops_per_sec: median_of(xs, |s| s.ops_per_sec),
            mean_ms: median_of(xs, |s| s.mean_ms),
            p50_ms: median_of(xs, |s| s.p50_ms),
            p99_ms: median_of(xs, |s| s.p99_ms),
            p999_ms: median_of(xs, |s| s.p999_ms),
            cpu_ms_per_op: median_of(xs, |s| s.cpu_ms_per_op),
            errors: xs.iter().map(|s| s.errors).sum(),
        };
        let (store, op, routing) = phase;
        println!(
            "{:<5} {:<4} {:<13} | {:>8.0} | {:>7.2} {:>7.2} {:>7.2} {:>8.2} | {:>9.3} | {:>6}",
            match store {
                Store::Ap => "ap",
                Store::Raft => "raft",
            },
            match op {
                Op::Put => "put",
                Op::Get => "get",
            },
            match (store, routing) {
                (Store::Raft, _) => "any node",
                (_, Routing::Client) => "client-driven",
                (_, Routing::Server) => "server-driven",
            },
            m.ops_per_sec,
            m.mean_ms,
            m.p50_ms,
            m.p99_ms,
            m.p999_ms,
            m.cpu_ms_per_op,
            m.errors
        );
        medians.insert(phase, m);
    }
    for op in [Op::Put, Op::Get] {
        let ap = medians.get(&(Store::Ap, op, Routing::Client));
        let raft = medians.get(&(Store::Raft, op, Routing::Client));
        if let (Some(ap), Some(raft)) = (ap, raft) {
            println!(
                "{} AP (client-driven) vs Raft: {:.2}x the throughput, {:.2}x the p99, {:.2}x \
                 the CPU per op",
                match op {
                    Op::Put => "puts:",
                    Op::Get => "gets:",
                },
                ap.ops_per_sec / raft.ops_per_sec.max(f64::MIN_POSITIVE),
                ap.p99_ms / raft.p99_ms.max(f64::MIN_POSITIVE),
                ap.cpu_ms_per_op / raft.cpu_ms_per_op.max(f64::MIN_POSITIVE),
            );
        }
        let client = medians.get(&(Store::Ap, op, Routing::Client));
        let server = medians.get(&(Store::Ap, op, Routing::Server));
        if let (Some(c), Some(s)) = (client, server) {
            println!(
                "{} server- vs client-driven: mean {:.2}x, p99.9 {:.2}x",
                match op {
                    Op::Put => "puts:",
                    Op::Get => "gets:",
                },
                s.mean_ms / c.mean_ms.max(f64::MIN_POSITIVE),
                s.p999_ms / c.p999_ms.max(f64::MIN_POSITIVE),
            );
        }
    }
}
