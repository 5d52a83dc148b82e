//! `synod mesh`: the service mesh's sidecar proxy, a test backend, and the demo that
//! compares load-balancing strategies with and without resilience (issue 14).

use crate::args;
use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use synod_mesh::config::ProxyConfig;
use synod_mesh::demo::{DemoConfig, DemoRow, Setting};
use synod_mesh::lb::Strategy;
use synod_mesh::upstream::StaticSource;

#[derive(Debug, Args)]
pub(crate) struct MeshCommand {
    #[command(subcommand)]
    what: MeshWhat,
}

#[derive(Debug, Subcommand)]
enum MeshWhat {
    /// Run the sidecar proxy (HTTP/1.1, h2c and TCP) for the services in a TOML file.
    Proxy(ProxyArgs),
    /// Drive load through the proxy with each load-balancing strategy, against two healthy
    /// instances, a slow one and a flaky one, with resilience off, on, and with hedging.
    Demo(DemoArgs),
    /// Run a test backend that answers with its id, after a delay, failing a share of
    /// requests with 503.
    Backend(BackendArgs),
    /// Run the registry agent: health checks of this node's instances, results written to
    /// the registry, and the catalog's HTTP API (see docs/registry.md).
    Agent(AgentArgs),
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// The cluster's etcd API endpoints (client ports), comma-separated.
    #[arg(long, default_value = "127.0.0.1:2379", env = "SYNOD_ETCD", value_parser = crate::registry::parse_endpoints)]
    etcd: crate::registry::Endpoints,
    /// Address of the HTTP API (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: SocketAddr,
    /// This agent's node name: it checks the instances registered with this node.
    #[arg(long, default_value = "local")]
    node: String,
    /// TTL of the agent's lease (its registrations and check results live under it).
    #[arg(long, default_value = "3s", value_parser = args::duration)]
    lease_ttl: Duration,
}

#[derive(Debug, Args)]
struct ProxyArgs {
    /// The configuration file (see docs/mesh.md).
    #[arg(long)]
    config: PathBuf,
    /// Follow the cluster's service registry at these etcd endpoints (comma-separated)
    /// instead of the file's static instances: each service's passing instances, pushed
    /// by a watch.
    #[arg(long, value_parser = crate::registry::parse_endpoints)]
    registry: Option<crate::registry::Endpoints>,
    /// Route every service only to instances carrying this tag (repeatable: every one;
    /// added to each service's `tags`).
    #[arg(long = "tag", value_parser = crate::svc::tag)]
    tags: Vec<String>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Requests per strategy and setting.
    #[arg(long, default_value = "2000", value_parser = clap::value_parser!(u32).range(10..=10_000_000))]
    requests: u32,
    /// Clients sending at once (closed loop).
    #[arg(long, default_value = "16", value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// Strategies to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_parser = strategy)]
    strategies: Vec<Strategy>,
    /// Latency of the slow instance.
    #[arg(long, default_value = "50ms", value_parser = args::duration)]
    slow: Duration,
    /// Share of requests the flaky instance fails.
    #[arg(long, default_value = "0.5", value_parser = args::probability)]
    flaky: f64,
    /// Also draw p99 latency and error rate per strategy as an SVG chart here.
    #[arg(long)]
    chart: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct BackendArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The id it answers with.
    #[arg(long, default_value = "backend")]
    id: String,
    /// Delay before each answer.
    #[arg(long, default_value = "0ms", value_parser = args::duration)]
    delay: Duration,
    /// Share of requests answered with 503.
    #[arg(long, default_value = "0", value_parser = args::probability)]
    fail_rate: f64,
    /// Register itself in the cluster's registry as an instance of this service (its id
    /// is --id, its address the one it listens on), under a lease it keeps alive while it
    /// runs: killed, it leaves discovery within --lease-ttl.
    #[arg(long, value_name = "SERVICE")]
    register: Option<String>,
    /// With --register: the cluster's etcd API endpoints, comma-separated.
    #[arg(long, default_value = "127.0.0.1:2379", env = "SYNOD_ETCD", value_parser = crate::registry::parse_endpoints)]
    etcd: crate::registry::Endpoints,
    /// With --register: the TTL of its lease (at least 2s).
    #[arg(long, default_value = "3s", value_parser = args::duration)]
    lease_ttl: Duration,
    /// With --register: a tag (repeatable).
    #[arg(long = "tag", value_parser = crate::svc::tag)]
    tags: Vec<String>,
    /// With --register: metadata as key=value (repeatable), e.g. weight=3.
    #[arg(long = "meta", value_parser = crate::svc::key_value)]
    meta: Vec<(String, String)>,
    /// With --register: the relative weight.
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    weight: u32,
}

fn strategy(s: &str) -> Result<Strategy, String> {
    s.trim().parse()
}

pub(crate) fn run(cmd: MeshCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cmd.what {
        MeshWhat::Proxy(p) => runtime.block_on(proxy(p)),
        MeshWhat::Demo(d) => runtime.block_on(demo(d)),
        MeshWhat::Backend(b) => runtime.block_on(backend(b)),
        MeshWhat::Agent(a) => runtime.block_on(agent(a)),
    }
}

async fn proxy(args: ProxyArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let mut config =
        ProxyConfig::parse(&text).map_err(|e| anyhow!("{}: {e}", args.config.display()))?;
    // One single-threaded event loop per CPU unless the file says otherwise: on this
    // 2-core machine it costs 15 % less CPU per request than the work-stealing runtime
    // and halves the tail (bench/proxy-compare.sh, docs/mesh.md).
    config
        .workers
        .get_or_insert_with(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    for service in &mut config.services {
        for t in &args.tags {
            if !service.tags.contains(t) {
                service.tags.push(t.clone());
            }
        }
    }
    let running = match &args.registry {
        None => {
            let source = Arc::new(StaticSource::from_config(&config));
            synod_mesh::proxy::start(config, source).await?
        }
        Some(endpoints) => {
            if let Some(s) = config.services.iter().find(|s| !s.instances.is_empty()) {
                return Err(anyhow!(
                    "{}: service {:?} lists instances, but with --registry they come from the registry",
                    args.config.display(),
                    s.name
                ));
            }
            let registry = crate::registry::Registry::new(endpoints)?;
            let catalog = crate::registry::Catalog::follow(registry)
                .await
                .context("cannot read the registry")?;
            let source = Arc::new(crate::registry::CatalogSource::new(catalog));
            synod_mesh::proxy::start(config, source).await?
        }
    };
    for (name, address) in &running.listeners {
        println!("listening {name} {address}");
    }
    if let Some(admin) = running.admin {
        println!("admin http://{admin}/metrics");
    }
    running.wait().await;
    Ok(ExitCode::SUCCESS)
}

async fn agent(args: AgentArgs) -> Result<ExitCode> {
    if args.lease_ttl < Duration::from_secs(2) {
        return Err(anyhow!(
            "--lease-ttl must be at least 2s (the cluster's minimum)"
        ));
    }
    let running = crate::agent::start(crate::agent::AgentConfig {
        endpoints: args.etcd,
        listen: args.listen,
        node: args.node.clone(),
        lease_ttl: args.lease_ttl,
    })
    .await?;
    println!("listening agent {}", running.address);
    println!("node {} lease {:x}", args.node, running.lease);
    running.wait().await?;
    Ok(ExitCode::SUCCESS)
}

async fn backend(args: BackendArgs) -> Result<ExitCode> {
    if args.register.is_some() && args.lease_ttl < Duration::from_secs(2) {
        return Err(anyhow!(
            "--lease-ttl must be at least 2s (the cluster's minimum)"
        ));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    println!("listening {} {local}", args.id);
    let serve = synod_mesh::backend::serve(
        listener,
        synod_mesh::backend::BackendSpec {
            id: args.id.clone(),
            delay: args.delay,
            failure_rate: args.fail_rate,
        },
    );
    let Some(name) = args.register else {
        serve.await;
        return Ok(ExitCode::SUCCESS);
    };
    // Self-registration: the backend holds its own lease, so its registration lives
    // exactly as long as the process (plus at most the TTL once it is killed).
    let registration = crate::registry::Registration {
        name,
        id: args.id,
        address: local,
        tags: args.tags,
        meta: args.meta.into_iter().collect(),
        weight: args.weight,
        node: crate::registry::default_node(),
        check: None,
    };
    registration.validate()?;
    let registry = crate::registry::Registry::new(&args.etcd)?;
    let (lease, granted) = registry.grant(args.lease_ttl).await?;
    registry.register(&registration, lease).await?;
    println!(
        "registered {}/{} at {local} lease {lease:x} ttl {granted}s",
        registration.name, registration.id
    );
    tokio::select! {
        () = serve => Ok(ExitCode::SUCCESS),
        held = crate::svc::hold(&registry, &registration, lease, granted) => held,
    }
}

async fn demo(args: DemoArgs) -> Result<ExitCode> {
    let config = DemoConfig {
        requests: args.requests as usize,
        concurrency: args.concurrency as usize,
        strategies: if args.strategies.is_empty() {
            Strategy::ALL.to_vec()
        } else {
            args.strategies.clone()
        },
        slow_delay: args.slow,
        flaky_failure_rate: args.flaky,
        ..DemoConfig::default()
    };
    let total = (config.requests * config.strategies.len() * Setting::ALL.len()) as u64;
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} requests {msg}") {
        bar.set_style(style);
    }
    let progress = |done: u64| bar.set_position(done);
    let rows = synod_mesh::demo::run(&config, &progress).await?;
    bar.finish_and_clear();
    println!(
        "backends: fast-1, fast-2 ({:?}), slow ({:?}), flaky ({:.0}% 503); {} requests per row, {} clients",
        config.fast_delay,
        config.slow_delay,
        config.flaky_failure_rate * 100.0,
        config.requests,
        config.concurrency
    );
    println!(
        "{:<18} {:<10} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "strategy", "setting", "p50 ms", "p99 ms", "p99.9 ms", "errors", "req/s"
    );
    for row in &rows {
        println!(
            "{:<18} {:<10} {:>9.2} {:>9.2} {:>9.2} {:>7.2}% {:>9.0}",
            row.strategy.name(),
            row.setting.name(),
            ms(row.p50),
            ms(row.p99),
            ms(row.p999),
            row.error_rate() * 100.0,
            row.throughput
        );
    }
    println!(
        "resilient = budgeted retries (2) + circuit breakers + outlier ejection; hedged = resilient + a hedge after the p70 latency"
    );
    if let Some(path) = &args.chart {
        chart(path, &rows)?;
        println!("chart: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p99 latency per strategy as grouped bars (off, on), with the error rate in the label.
fn chart(path: &Path, rows: &[DemoRow]) -> Result<()> {
    let strategies: Vec<Strategy> = {
        let mut s: Vec<Strategy> = rows.iter().map(|r| r.strategy).collect();
        s.dedup();
        s
    };
    let max_y = rows.iter().map(|r| ms(r.p99)).fold(1.0, f64::max) * 1.15;
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let root = SVGBackend::new(path, (1100, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let n = strategies.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "synod mesh demo: p99 latency per strategy (red: off, blue: resilient, green: hedged)",
            ("sans-serif", 20),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..max_y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("p99 latency (ms)")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, strategy) in strategies.iter().enumerate() {
        for row in rows.iter().filter(|r| r.strategy == *strategy) {
            let (left, color) = match row.setting {
                Setting::Off => (i as f64 + 0.07, RED),
                Setting::Resilient => (i as f64 + 0.36, BLUE),
                Setting::Hedged => (i as f64 + 0.65, GREEN),
            };
            let top = ms(row.p99);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(left, 0.0), (left + 0.28, top)],
                    color.mix(0.7).filled(),
                )))
                .map_err(|e| err(&e))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{:.1}%", row.error_rate() * 100.0),
                    (left, top + max_y * 0.03),
                    ("sans-serif", 10),
                )))
                .map_err(|e| err(&e))?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                strategy.name().to_string(),
                (i as f64 + 0.1, -max_y * 0.04),
                ("sans-serif", 13),
            )))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
