//! `synod mesh demo`: backends with one slow and one failing instance, load driven through
//! the proxy with each load-balancing strategy, with resilience off, on, and on with hedging.
//!
//! The backends are two healthy instances (`fast-1`, `fast-2`), one that answers slowly
//! (`slow`) and one that fails half its requests with 503 (`flaky`). Load is closed-loop:
//! `concurrency` clients each send their next request when the last one is answered. The
//! hash strategies get a key per simulated user in an `x-user` header.
//!
//! Each strategy runs in three [`Setting`]s: `off` (no retries, breakers or ejection, so
//! every failure reaches the client), `resilient` (two budgeted retries, circuit breakers
//! and outlier ejection) and `hedged` (the same plus a hedge after the p70 latency).

use crate::backend::{self, BackendSpec};
use crate::config::ProxyConfig;
use crate::lb::Strategy;
use crate::proxy;
use crate::upstream::StaticSource;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Requests per (strategy, resilience) run.
    pub requests: usize,
    /// Clients sending at once.
    pub concurrency: usize,
    /// Strategies to run.
    pub strategies: Vec<Strategy>,
    /// Latency of the healthy instances.
    pub fast_delay: Duration,
    /// Latency of the slow instance.
    pub slow_delay: Duration,
    /// Share of requests the flaky instance fails.
    pub flaky_failure_rate: f64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            requests: 2000,
            concurrency: 16,
            strategies: Strategy::ALL.to_vec(),
            fast_delay: Duration::from_millis(1),
            slow_delay: Duration::from_millis(50),
            flaky_failure_rate: 0.5,
        }
    }
}

/// Which resilience features a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// None: no retries, breakers or outlier ejection.
    Off,
    /// Budgeted retries, circuit breakers and outlier ejection.
    Resilient,
    /// As `Resilient`, plus hedging after the p70 latency.
    Hedged,
}

impl Setting {
    /// Every setting, in the order the demo runs them.
    pub const ALL: [Setting; 3] = [Setting::Off, Setting::Resilient, Setting::Hedged];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Off => "off",
            Setting::Resilient => "resilient",
            Setting::Hedged => "hedged",
        }
    }
}

/// One run's results.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoRow {
    /// The strategy.
    pub strategy: Strategy,
    /// Which resilience features were on.
    pub setting: Setting,
    /// Requests sent.
    pub requests: usize,
    /// Requests that did not get a 2xx.
    pub errors: usize,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// 99.9th percentile latency.
    pub p999: Duration,
    /// Requests per second over the run.
    pub throughput: f64,
}

impl DemoRow {
    /// Errors as a share of requests.
    pub fn error_rate(&self) -> f64 {
        self.errors as f64 / self.requests.max(1) as f64
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A socket could not be opened.
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
    /// The proxy did not start.
    #[error("demo: {0}")]
    Proxy(#[from] proxy::ProxyError),
}

async fn spawn_backend(
    id: &str,
    delay: Duration,
    failure_rate: f64,
) -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(backend::serve(
        listener,
        BackendSpec {
            id: id.into(),
            delay,
            failure_rate,
        },
    ));
    Ok(address)
}

/// The proxy configuration for one run.
pub fn run_config(
    strategy: Strategy,
    setting: Setting,
    backends: &[(String, SocketAddr)],
) -> String {
    let instances: Vec<String> = backends
        .iter()
        .map(|(id, a)| format!("{{ id = \"{id}\", address = \"{a}\" }}"))
        .collect();
    let hedge = if setting == Setting::Hedged {
        "[service.hedge]\nquantile = 0.7\n"
    } else {
        ""
    };
    let policies = if setting != Setting::Off {
        "[service.retry]\nmax_retries = 2\nbackoff_base_ms = 1\nbackoff_cap_ms = 20\n\
         [service.breaker]\nconsecutive_failures = 5\nfailure_rate = 0.3\nminimum_requests = 20\nopen_ms = 2000\n\
         [service.outlier]\nconsecutive_failures = 5\ninterval_ms = 500\nbase_ejection_ms = 5000\n\
         success_rate_minimum_hosts = 3\nsuccess_rate_request_volume = 20\n"
    } else {
        "[service.retry]\nmax_retries = 0\n[service.breaker]\nenabled = false\n[service.outlier]\nenabled = false\n"
    };
    format!(
        "[[service]]\nname = \"demo\"\nlisten = \"127.0.0.1:0\"\nlb = \"{strategy}\"\nhash_header = \"x-user\"\n\
         instances = [{}]\n{policies}{hedge}[service.health]\nkind = \"http\"\ninterval_ms = 500\n",
        instances.join(", ")
    )
}

/// Run the demo; `progress` is called with the number of requests finished so far.
pub async fn run(
    config: &DemoConfig,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<DemoRow>, DemoError> {
    let backends = vec![
        (
            "fast-1".to_string(),
            spawn_backend("fast-1", config.fast_delay, 0.0).await?,
        ),
        (
            "fast-2".to_string(),
            spawn_backend("fast-2", config.fast_delay, 0.0).await?,
        ),
        (
            "slow".to_string(),
            spawn_backend("slow", config.slow_delay, 0.0).await?,
        ),
        (
            "flaky".to_string(),
            spawn_backend("flaky", config.fast_delay, config.flaky_failure_rate).await?,
        ),
    ];
    let done = Arc::new(AtomicUsize::new(0));
    let mut rows = Vec::new();
    for &strategy in &config.strategies {
        for setting in Setting::ALL {
            let text = run_config(strategy, setting, &backends);
            let proxy_config = ProxyConfig::parse(&text).map_err(proxy::ProxyError::from)?;
            let source = Arc::new(StaticSource::from_config(&proxy_config));
            let running = proxy::start(proxy_config, source).await?;
            let address = running
                .address("demo")
                .ok_or_else(|| std::io::Error::other("the demo proxy has no listener"))?;
            let row = drive(config, address, strategy, setting, &done, progress).await;
            rows.push(row);
            drop(running);
        }
    }
    Ok(rows)
}

async fn drive(
    config: &DemoConfig,
    address: SocketAddr,
    strategy: Strategy,
    setting: Setting,
    done: &Arc<AtomicUsize>,
    progress: &(dyn Fn(u64) + Sync),
) -> DemoRow {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let next = Arc::new(AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..config.concurrency.max(1) {
        let client = client.clone();
        let next = next.clone();
        let done = done.clone();
        let total = config.requests;
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let request = Request::get(format!("http://{address}/work"))
                    .header("x-user", format!("user-{}", i % 500))
                    .body(Full::new(Bytes::new()));
                let Ok(request) = request else { break };
                let t = tokio::time::Instant::now();
                let ok = match client.request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        ok
                    }
                    Err(_) => false,
                };
                samples.push((t.elapsed(), ok));
                done.fetch_add(1, Ordering::Relaxed);
            }
            samples
        });
    }
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok(mut s)) => samples.append(&mut s),
                Some(Err(_)) => {}
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                progress(done.load(Ordering::Relaxed) as u64);
            }
        }
    }
    progress(done.load(Ordering::Relaxed) as u64);
    let elapsed = started.elapsed().as_secs_f64();
    let errors = samples.iter().filter(|(_, ok)| !ok).count();
    let mut latencies: Vec<Duration> = samples.iter().map(|(d, _)| *d).collect();
    latencies.sort_unstable();
    DemoRow {
        strategy,
        setting,
        requests: samples.len(),
        errors,
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        p999: quantile(&latencies, 0.999),
        throughput: samples.len() as f64 / elapsed.max(1e-9),
    }
}

/// The nearest-rank quantile of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
