//! The sidecar proxy: HTTP/1.1 + HTTP/2 (h2c) and TCP, applying load balancing, active
//! and passive health checking, circuit breakers, outlier ejection, retries with backoff
//! under a budget, deadlines and hedging to each service's upstream instances.
//!
//! Per service, one mutex guards the pure state machines ([`Balancer`],
//! [`CircuitBreaker`] per instance, [`OutlierDetector`], [`RetryBudget`], [`PhiAccrual`] and
//! [`RtoEstimator`] per instance). Critical sections do no I/O; the clock is tokio's, read
//! once per event and handed to the state machines as a [`synod_core::Instant`].
//!
//! An instance is in rotation when its active checks pass, φ of its check heartbeats is
//! under the threshold, it is not ejected, and its breaker is not open.

use crate::config::{CheckKind, Protocol, ProxyConfig, ServiceConfig};
use crate::detect::{PhiAccrual, RtoEstimator};
use crate::health::{check_detectors, probe, ProbeKind, ProbeResult};
use crate::lb::{hash_str, Balancer, BalancerConfig, Strategy};
use crate::resilience::{
    format_grpc_timeout, parse_grpc_timeout, parse_timeout_millis, Backoff, BreakerState,
    CircuitBreaker, Deadline, HedgeDelay, HedgePolicy, OutlierDetector, OutlierEvent, Permit,
    RetryBudget, GRPC_TIMEOUT_HEADER, TIMEOUT_HEADER,
};
use crate::upstream::{Instance, InstanceList, UpstreamSource};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics::{Counter, Gauge, Histogram};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use synod_core::Instant;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

mod h1;

/// A pooled h2c client to a service's upstreams (HTTP/1.1 upstreams use [`H1Pool`]).
type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// The body type the proxy returns: an upstream's body passed through, or the proxy's own
/// text. An enum rather than a box, so a proxied response costs no allocation for it.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// How many idle HTTP/1.1 connections a worker thread keeps per upstream address.
const MAX_IDLE_PER_UPSTREAM: usize = 512;

/// How long the balancer's availability flags may go without a refresh on the request
/// path. Health-check results, failures and instance changes refresh at once; this bounds
/// only the lag of time-driven changes (a breaker's open period ending, an ejection
/// running out, φ rising while checks hang), and saves recomputing φ and breaker states
/// for every instance on every request.
const REFRESH_EVERY: Duration = Duration::from_millis(5);

type H1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// This thread's idle keep-alive HTTP/1.1 connections to upstreams, by address. Each
/// thread keeps its own, so with per-thread event loops (`workers`) a request and its
/// upstream connection stay on one thread and the pool needs no lock.
struct H1Pool;

thread_local! {
    static H1_IDLE: RefCell<BTreeMap<SocketAddr, Vec<H1Sender>>> =
        const { RefCell::new(BTreeMap::new()) };
}

impl H1Pool {
    fn take(address: SocketAddr) -> Option<H1Sender> {
        H1_IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.get_mut(&address)?;
            while let Some(sender) = list.pop() {
                if !sender.is_closed() {
                    return Some(sender);
                }
            }
            None
        })
    }

    fn put(address: SocketAddr, sender: H1Sender) {
        if sender.is_closed() {
            return;
        }
        H1_IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(address).or_default();
            if list.len() < MAX_IDLE_PER_UPSTREAM {
                list.push(sender);
            }
        });
    }

    /// A connection ready for a request: an idle one, else a new one.
    async fn checkout(
        address: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<H1Sender, UpstreamError> {
        while let Some(mut sender) = H1Pool::take(address) {
            // The connection's task may not yet have finished the previous exchange.
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e.to_string())),
            Err(_) => {
                return Err(UpstreamError::Connect(format!(
                    "connect timed out after {connect_timeout:?}"
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// Why an attempt got no response.
#[derive(Debug)]
enum UpstreamError {
    /// No connection: nothing was sent, so any method may be retried.
    Connect(String),
    /// The exchange failed.
    Http(hyper::Error),
    /// The h2c client's exchange failed.
    Exchange(String),
}

impl UpstreamError {
    fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(_) => true,
            // Canceled: the connection closed before the request was written.
            UpstreamError::Http(e) => e.is_canceled(),
            UpstreamError::Exchange(_) => false,
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "cannot connect: {e}"),
            UpstreamError::Http(e) => write!(f, "{e}"),
            UpstreamError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

/// An upstream response body. When an HTTP/1.1 body has been read to its end, its
/// connection goes back to this thread's pool for the next request.
#[derive(Debug)]
pub struct UpstreamBody {
    body: Incoming,
    connection: Option<(SocketAddr, H1Sender)>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some((address, sender)) = self.connection.take() {
            H1Pool::put(address, sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // A broken exchange leaves the connection in an unknown state.
            Poll::Ready(Some(Err(_))) => this.connection = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty body is never polled; one dropped half-read takes its connection along.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not bind.
    #[error("cannot listen on {address} for {what}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Which listener.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The upstream source does not know a configured service.
    #[error("the upstream source has no service {0:?}")]
    UnknownService(String),
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Reads tokio's clock as nanoseconds since the proxy started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    /// The time since the clock started.
    pub fn now(&self) -> Instant {
        Instant(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The process-wide Prometheus recorder for the proxy's metrics.
pub fn recorder() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ];
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &seconds,
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

#[derive(Debug, Clone)]
struct InstanceMetrics {
    success: Counter,
    failure: Counter,
    duration: Histogram,
    available: Gauge,
    in_flight: Gauge,
    breaker_open: Gauge,
    ejections: Counter,
    check_failures: Counter,
}

impl InstanceMetrics {
    fn new(service: &str, instance: &str) -> Self {
        let labels = [
            ("service", service.to_string()),
            ("upstream", instance.to_string()),
        ];
        let with = |outcome: &'static str| {
            let mut l = labels.to_vec();
            l.push(("outcome", outcome.to_string()));
            l
        };
        InstanceMetrics {
            success: metrics::counter!("synod_mesh_upstream_requests_total", &with("success")),
            failure: metrics::counter!("synod_mesh_upstream_requests_total", &with("failure")),
            duration: metrics::histogram!("synod_mesh_upstream_request_duration_seconds", &labels),
            available: metrics::gauge!("synod_mesh_upstream_available", &labels),
            in_flight: metrics::gauge!("synod_mesh_upstream_in_flight", &labels),
            breaker_open: metrics::gauge!("synod_mesh_upstream_breaker_open", &labels),
            ejections: metrics::counter!("synod_mesh_upstream_ejections_total", &labels),
            check_failures: metrics::counter!(
                "synod_mesh_upstream_health_check_failures_total",
                &labels
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct ServiceMetrics {
    requests: Counter,
    failed: Counter,
    retries: Counter,
    budget_exhausted: Counter,
    hedges: Counter,
    no_upstream: Counter,
}

impl ServiceMetrics {
    fn new(service: &str) -> Self {
        let labels = [("service", service.to_string())];
        ServiceMetrics {
            requests: metrics::counter!("synod_mesh_requests_total", &labels),
            failed: metrics::counter!("synod_mesh_requests_failed_total", &labels),
            retries: metrics::counter!("synod_mesh_retries_total", &labels),
            budget_exhausted: metrics::counter!("synod_mesh_retry_budget_exhausted_total", &labels),
            hedges: metrics::counter!("synod_mesh_hedges_total", &labels),
            no_upstream: metrics::counter!("synod_mesh_no_upstream_total", &labels),
        }
    }
}

#[derive(Debug)]
struct InstanceRuntime {
    instance: Instance,
    /// Resolved once per instance, not per request.
    label: Arc<str>,
    header: Option<HeaderValue>,
    authority: Option<Authority>,
    breaker: Option<CircuitBreaker>,
    healthy: bool,
    streak: i64,
    phi: PhiAccrual,
    rto: RtoEstimator,
    metrics: InstanceMetrics,
}

#[derive(Debug)]
struct ServiceState {
    generation: u64,
    next_refresh: Instant,
    balancer: Balancer,
    instances: Vec<InstanceRuntime>,
    outlier: Option<OutlierDetector>,
    budget: RetryBudget,
    hedge: Option<HedgePolicy>,
    rng: ChaCha8Rng,
}

/// One proxied service at run time.
#[derive(Debug)]
pub struct Service {
    config: ServiceConfig,
    strategy: Strategy,
    clock: Clock,
    state: Mutex<ServiceState>,
    id: usize,
    metrics: ServiceMetrics,
    backoff: Backoff,
}

fn new_client(config: &ServiceConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_millis(config.timeout_ms.min(2000))));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(usize::MAX)
        .http2_only(config.upstream_http2)
        .build(connector)
}

/// An attempt in progress on one instance.
#[derive(Debug, Clone)]
struct Attempt {
    generation: u64,
    index: usize,
    id: Arc<str>,
    header: Option<HeaderValue>,
    authority: Option<Authority>,
    address: SocketAddr,
    permit: Option<Permit>,
    started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Abandoned,
}

/// What the instance's state says about being picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// In rotation.
    Available,
    /// Failing its active checks.
    Unhealthy,
    /// Its check heartbeats went silent: φ over the threshold.
    Suspected,
    /// Ejected by outlier detection.
    Ejected,
    /// Its circuit breaker is open.
    BreakerOpen,
}

impl Service {
    fn new(config: ServiceConfig, clock: Clock, instances: &[Instance]) -> Result<Self, String> {
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let strategy = config.strategy()?;
        let metrics = ServiceMetrics::new(&config.name);
        let backoff = config.backoff();
        let state = ServiceState {
            generation: 0,
            next_refresh: Instant(0),
            balancer: Balancer::new(strategy, BalancerConfig::default(), &[]),
            instances: Vec::new(),
            outlier: None,
            budget: RetryBudget::new(config.budget_config()),
            hedge: config.hedge.as_ref().map(|h| {
                HedgePolicy::new(match h.delay_ms {
                    Some(ms) => HedgeDelay::Fixed(Duration::from_millis(ms)),
                    None => HedgeDelay::Quantile {
                        quantile: h.quantile.unwrap_or(0.95),
                        fallback: Duration::from_millis(50),
                    },
                })
            }),
            rng: ChaCha8Rng::from_entropy(),
        };
        let service = Service {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            config,
            strategy,
            clock,
            state: Mutex::new(state),
            metrics,
            backoff,
        };
        service.set_instances(instances);
        Ok(service)
    }

    /// The service's configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// This thread's HTTP client for the upstreams. Each thread keeps its own pool, so
    /// with per-thread runtimes (`workers`) a request and its upstream connection stay on
    /// one thread.
    fn http_client(&self) -> UpstreamClient {
        thread_local! {
            static CLIENTS: std::cell::RefCell<Vec<(usize, UpstreamClient)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            if let Some((_, client)) = clients.iter().find(|(id, _)| *id == self.id) {
                return client.clone();
            }
            let client = new_client(&self.config);
            clients.push((self.id, client.clone()));
            client
        })
    }

    fn lock(&self) -> MutexGuard<'_, ServiceState> {
        // A panic while holding the lock cannot leave the pure state half-updated in a way
        // that matters more than losing the proxy, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The instances this service routes to: those with every tag of the service's `tags`,
    /// weighted from their metadata when the service has a `weight_key`.
    pub fn select(&self, instances: &[Instance]) -> Vec<Instance> {
        instances
            .iter()
            .filter(|i| i.has_tags(&self.config.tags))
            .map(|i| {
                let (weight, problem) = i.effective_weight(self.config.weight_key.as_deref());
                if let Some(problem) = problem {
                    tracing::warn!(service = %self.config.name, upstream = %i.id, "{problem}");
                }
                Instance {
                    weight,
                    ..i.clone()
                }
            })
            .collect()
    }

    /// Replace the instance list, keeping the state of instances whose id stays. Only
    /// instances that pass [`Service::select`] are used.
    pub fn set_instances(&self, instances: &[Instance]) {
        let selected = self.select(instances);
        let instances = &selected[..];
        let interval = Duration::from_millis(self.config.health.interval_ms);
        let mut state = self.lock();
        let mut old: Vec<InstanceRuntime> = std::mem::take(&mut state.instances);
        let runtimes: Vec<InstanceRuntime> = instances
            .iter()
            .map(|instance| {
                if let Some(pos) = old.iter().position(|r| {
                    r.instance.id == instance.id && r.instance.address == instance.address
                }) {
                    let mut kept = old.swap_remove(pos);
                    kept.instance = instance.clone();
                    return kept;
                }
                let (phi, rto) = check_detectors(interval);
                InstanceRuntime {
                    instance: instance.clone(),
                    label: Arc::from(instance.id.as_str()),
                    header: HeaderValue::from_str(&instance.id).ok(),
                    authority: Authority::try_from(instance.address.to_string()).ok(),
                    breaker: self.config.breaker_config().map(CircuitBreaker::new),
                    healthy: true,
                    streak: 0,
                    phi,
                    rto,
                    metrics: InstanceMetrics::new(&self.config.name, &instance.id),
                }
            })
            .collect();
        for gone in old {
            gone.metrics.available.set(0.0);
        }
        let names: Vec<(String, u32)> = runtimes
            .iter()
            .map(|r| (r.instance.id.clone(), r.instance.weight))
            .collect();
        state.balancer = Balancer::new(self.strategy, BalancerConfig::default(), &names);
        state.outlier = self
            .config
            .outlier_config()
            .map(|c| OutlierDetector::new(c, runtimes.len()));
        state.instances = runtimes;
        state.generation += 1;
        let now = self.clock.now();
        self.refresh(&mut state, now);
    }

    /// Each instance's id and why it is or is not in rotation.
    pub fn availability(&self) -> Vec<(String, Availability)> {
        let now = self.clock.now();
        let mut state = self.lock();
        self.refresh(&mut state, now);
        let state = &*state;
        (0..state.instances.len())
            .map(|i| {
                (
                    state.instances[i].instance.id.clone(),
                    self.why(state, i, now),
                )
            })
            .collect()
    }

    fn why(&self, state: &ServiceState, index: usize, now: Instant) -> Availability {
        let r = &state.instances[index];
        let phi_threshold = self.config.health.phi_threshold;
        if self.config.health.kind != CheckKind::None && !r.healthy {
            Availability::Unhealthy
        } else if self.config.health.kind != CheckKind::None
            && phi_threshold > 0.0
            && r.phi.is_suspected(now, phi_threshold)
        {
            Availability::Suspected
        } else if state.outlier.as_ref().is_some_and(|o| o.is_ejected(index)) {
            Availability::Ejected
        } else if r
            .breaker
            .as_ref()
            .is_some_and(|b| matches!(b.state(now), BreakerState::Open { .. }))
        {
            Availability::BreakerOpen
        } else {
            Availability::Available
        }
    }

    fn refresh(&self, state: &mut ServiceState, now: Instant) {
        state.next_refresh = now + REFRESH_EVERY;
        if let Some(outlier) = state.outlier.as_mut() {
            for event in outlier.on_tick(now) {
                if let OutlierEvent::Returned(i) = event {
                    tracing::info!(service = %self.config.name, upstream = %state.instances[i].instance.id, "outlier ejection over");
                }
            }
        }
        let reasons: Vec<Availability> = (0..state.instances.len())
            .map(|i| self.why(state, i, now))
            .collect();
        // Panic routing, as Envoy does: if the checks leave nobody in rotation, they are
        // more likely wrong (an overloaded proxy, a broken check path) than every instance
        // is down, so route by the passive signals alone.
        let panic = !reasons.contains(&Availability::Available);
        for (i, reason) in reasons.into_iter().enumerate() {
            let available = reason == Availability::Available
                || (panic && matches!(reason, Availability::Unhealthy | Availability::Suspected));
            state.balancer.set_available(i, available);
            let r = &state.instances[i];
            r.metrics.available.set(if available { 1.0 } else { 0.0 });
            let open = r
                .breaker
                .as_ref()
                .is_some_and(|b| matches!(b.state(now), BreakerState::Open { .. }));
            r.metrics.breaker_open.set(if open { 1.0 } else { 0.0 });
        }
    }

    /// Pick an instance, avoiding `tried`, and start an attempt on it.
    /// The first attempt of a request (`tried` empty) also deposits into the retry budget.
    fn acquire(&self, key: u64, tried: &[usize]) -> Option<Attempt> {
        let now = self.clock.now();
        let mut state = self.lock();
        if tried.is_empty() {
            state.budget.on_request(now);
        }
        if now >= state.next_refresh {
            self.refresh(&mut state, now);
        }
        let mut exclude: Vec<usize> = Vec::new();
        let mut refused: Vec<usize> = Vec::new();
        let state = &mut *state;
        loop {
            let index = state.balancer.pick_excluding(
                &mut state.rng,
                key,
                if exclude.is_empty() { tried } else { &exclude },
            )?;
            if refused.contains(&index) {
                return None;
            }
            let runtime = &mut state.instances[index];
            let permit = match runtime.breaker.as_mut() {
                Some(breaker) => match breaker.try_acquire(now) {
                    Some(permit) => Some(permit),
                    None => {
                        // Half-open with its probes out: try someone else.
                        refused.push(index);
                        if exclude.is_empty() {
                            exclude.extend_from_slice(tried);
                        }
                        exclude.push(index);
                        continue;
                    }
                },
                None => None,
            };
            state.balancer.on_start(index);
            runtime.metrics.in_flight.increment(1.0);
            return Some(Attempt {
                generation: state.generation,
                index,
                id: runtime.label.clone(),
                header: runtime.header.clone(),
                authority: runtime.authority.clone(),
                address: runtime.instance.address,
                permit,
                started: now,
            });
        }
    }

    fn finish(&self, attempt: &Attempt, outcome: Outcome, first_attempt: bool) {
        let now = self.clock.now();
        let latency = now.saturating_duration_since(attempt.started);
        let mut state = self.lock();
        if state.generation != attempt.generation {
            return;
        }
        let state = &mut *state;
        state.balancer.on_finish(attempt.index, now, latency);
        let runtime = &mut state.instances[attempt.index];
        runtime.metrics.in_flight.decrement(1.0);
        if let (Some(breaker), Some(permit)) = (runtime.breaker.as_mut(), attempt.permit) {
            match outcome {
                Outcome::Success => breaker.on_success(now, permit),
                Outcome::Failure => breaker.on_failure(now, permit),
                Outcome::Abandoned => breaker.on_abandoned(permit),
            }
        }
        match outcome {
            Outcome::Success => runtime.metrics.success.increment(1),
            Outcome::Failure => runtime.metrics.failure.increment(1),
            Outcome::Abandoned => {}
        }
        runtime.metrics.duration.record(latency.as_secs_f64());
        if outcome != Outcome::Abandoned {
            if let Some(outlier) = state.outlier.as_mut() {
                if let Some(event) =
                    outlier.on_result(attempt.index, now, outcome == Outcome::Success)
                {
                    runtime.metrics.ejections.increment(1);
                    tracing::info!(service = %self.config.name, upstream = %attempt.id, ?event, "ejected");
                }
            }
        }
        if first_attempt && outcome == Outcome::Success {
            if let Some(hedge) = state.hedge.as_mut() {
                hedge.on_latency(latency);
            }
        }
        if outcome == Outcome::Failure {
            self.refresh(state, now);
        }
    }

    fn on_request(&self) {
        // The retry budget's deposit is made with the first pick (`acquire`), under the
        // same lock.
        self.metrics.requests.increment(1);
    }

    fn may_retry(&self) -> bool {
        let now = self.clock.now();
        let ok = self.lock().budget.try_withdraw(now);
        if !ok {
            self.metrics.budget_exhausted.increment(1);
        }
        ok
    }

    fn backoff_delay(&self, retry: u32) -> Duration {
        let mut state = self.lock();
        self.backoff.delay(retry, &mut state.rng)
    }

    /// Before retry number `retry` (from 1): take a token from the budget and sleep the
    /// backoff. False if the budget is empty or the pause would outlast the deadline.
    async fn pause_before_retry(&self, retry: u32, deadline: Deadline) -> bool {
        if !self.may_retry() {
            return false;
        }
        self.metrics.retries.increment(1);
        let pause = self.backoff_delay(retry - 1);
        if deadline.remaining(self.clock.now()) <= pause {
            return false;
        }
        tokio::time::sleep(pause).await;
        true
    }

    fn hedge_delay(&self) -> Option<Duration> {
        self.config.hedge.as_ref()?;
        self.lock().hedge.as_ref().map(HedgePolicy::delay)
    }

    /// Health-check targets: (generation, index, address, timeout).
    fn check_targets(&self) -> Vec<(u64, usize, SocketAddr, Duration)> {
        let state = self.lock();
        let fixed = self.config.health.timeout_ms.map(Duration::from_millis);
        state
            .instances
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    state.generation,
                    i,
                    r.instance.address,
                    fixed.unwrap_or_else(|| r.rto.rto()),
                )
            })
            .collect()
    }

    fn on_check(&self, generation: u64, index: usize, result: ProbeResult, rtt: Duration) {
        let now = self.clock.now();
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        let health = &self.config.health;
        let runtime = &mut state.instances[index];
        match result {
            ProbeResult::Pass => {
                runtime.phi.on_heartbeat(now);
                runtime.rto.on_sample(rtt);
                runtime.streak = runtime.streak.max(0) + 1;
                if !runtime.healthy && runtime.streak >= i64::from(health.healthy_threshold.max(1))
                {
                    runtime.healthy = true;
                    tracing::info!(service = %self.config.name, upstream = %runtime.instance.id, "passing health checks");
                }
            }
            ProbeResult::Fail | ProbeResult::Timeout => {
                if result == ProbeResult::Timeout {
                    runtime.rto.on_timeout();
                }
                runtime.metrics.check_failures.increment(1);
                runtime.streak = runtime.streak.min(0) - 1;
                if runtime.healthy
                    && -runtime.streak >= i64::from(health.unhealthy_threshold.max(1))
                {
                    runtime.healthy = false;
                    tracing::info!(service = %self.config.name, upstream = %runtime.instance.id, "failing health checks");
                }
            }
        }
        self.refresh(&mut state, now);
    }
}

async fn health_loop(service: Arc<Service>) {
    let health = service.config.health.clone();
    if health.kind == CheckKind::None {
        return;
    }
    // The same probe the registry agent runs (crate::health).
    let kind = match health.kind {
        CheckKind::Http => ProbeKind::Http {
            path: health.path.clone(),
        },
        CheckKind::Tcp | CheckKind::None => ProbeKind::Tcp,
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(health.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for (generation, index, address, timeout) in service.check_targets() {
            let service = service.clone();
            let kind = kind.clone();
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let result = probe(&kind, address, timeout).await;
                service.on_check(generation, index, result, start.elapsed());
            });
        }
    }
}

async fn watch_loop(
    service: Arc<Service>,
    mut updates: tokio::sync::watch::Receiver<InstanceList>,
) {
    while updates.changed().await.is_ok() {
        let list = updates.borrow_and_update().clone();
        service.set_instances(&list);
    }
}

fn text_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    response
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// What one attempt produced.
enum AttemptResult {
    /// A response that should go back to the client.
    Done(Response<UpstreamBody>),
    /// A failure that may be retried; the response, if any, is kept in case it is the last.
    Retriable(Option<Response<UpstreamBody>>, String),
    /// A failure that must not be retried.
    Fatal(StatusCode, String),
}

struct Prepared {
    parts: hyper::http::request::Parts,
    body: Bytes,
    grpc: bool,
    idempotent: bool,
}

impl Service {
    fn upstream_request(
        &self,
        prepared: &Prepared,
        attempt: &Attempt,
        remaining: Duration,
    ) -> Request<Full<Bytes>> {
        let path = prepared
            .parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = if self.config.upstream_http2 {
            // The pooled h2c client routes by the absolute URI.
            let mut parts = hyper::http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = attempt.authority.clone();
            parts.path_and_query = Some(path);
            Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
        } else {
            // HTTP/1.1 over our own connection: origin form.
            Uri::from(path)
        };
        let mut request = Request::new(Full::new(prepared.body.clone()));
        *request.method_mut() = prepared.parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = if self.config.upstream_http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let headers = request.headers_mut();
        headers.reserve(prepared.parts.headers.len() + 3);
        for (name, value) in &prepared.parts.headers {
            if !HOP_BY_HOP.contains(&name.as_str())
                && name != "transfer-encoding"
                && name != "content-length"
            {
                headers.append(name.clone(), value.clone());
            }
        }
        if self.config.upstream_http2 {
            headers.remove(hyper::header::HOST);
        } else if !headers.contains_key(hyper::header::HOST) {
            // An HTTP/2 client's request has an :authority instead; HTTP/1.1 needs Host.
            let host = prepared
                .parts
                .uri
                .authority()
                .or(attempt.authority.as_ref())
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(host) = host {
                headers.insert(hyper::header::HOST, host);
            }
        }
        let millis = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
        headers.insert(
            HeaderName::from_static(TIMEOUT_HEADER),
            HeaderValue::from(millis),
        );
        if prepared.grpc {
            if let Ok(value) = HeaderValue::from_str(&format_grpc_timeout(remaining)) {
                headers.insert(HeaderName::from_static(GRPC_TIMEOUT_HEADER), value);
            }
        }
        request
    }

    /// Send one request to `attempt`'s instance: HTTP/1.1 over this thread's pool of
    /// keep-alive connections, checked out and returned by the request itself (each connection's
    /// dispatcher runs on a task of the same thread); h2c through the pooled
    /// client.
    async fn send(
        &self,
        attempt: &Attempt,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if self.config.upstream_http2 {
            let response = self.http_client().request(request).await.map_err(|e| {
                if e.is_connect() {
                    UpstreamError::Connect(e.to_string())
                } else {
                    UpstreamError::Exchange(e.to_string())
                }
            })?;
            return Ok(response.map(|body| UpstreamBody {
                body,
                connection: None,
            }));
        }
        let connect_timeout = Duration::from_millis(self.config.timeout_ms.min(2000));
        let mut sender = H1Pool::checkout(attempt.address, connect_timeout).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Http)?;
        let keep = !response
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        Ok(response.map(|body| UpstreamBody {
            body,
            connection: keep.then_some((attempt.address, sender)),
        }))
    }

    async fn try_once(
        &self,
        attempt: &Attempt,
        prepared: &Prepared,
        deadline: Deadline,
        first: bool,
    ) -> AttemptResult {
        let now = self.clock.now();
        let remaining = deadline.remaining(now);
        let per_try = self
            .config
            .retry
            .per_try_timeout_ms
            .map_or(remaining, |ms| Duration::from_millis(ms).min(remaining));
        let request = self.upstream_request(prepared, attempt, remaining);
        let result = tokio::time::timeout(per_try, self.send(attempt, request)).await;
        match result {
            Ok(Ok(response)) if response.status().is_server_error() => {
                self.finish(attempt, Outcome::Failure, first);
                let why = format!("{} answered {}", attempt.id, response.status());
                if prepared.idempotent {
                    AttemptResult::Retriable(Some(response), why)
                } else {
                    AttemptResult::Done(response)
                }
            }
            Ok(Ok(response)) => {
                self.finish(attempt, Outcome::Success, first);
                AttemptResult::Done(response)
            }
            Ok(Err(e)) => {
                self.finish(attempt, Outcome::Failure, first);
                let why = format!("{}: {e}", attempt.id);
                // A failed connect never sent the request, so any method may be retried.
                if e.is_connect() || prepared.idempotent {
                    AttemptResult::Retriable(None, why)
                } else {
                    AttemptResult::Fatal(StatusCode::BAD_GATEWAY, why)
                }
            }
            Err(_) => {
                self.finish(attempt, Outcome::Failure, first);
                let why = format!("{} did not answer within {per_try:?}", attempt.id);
                if per_try < remaining && prepared.idempotent {
                    AttemptResult::Retriable(None, why)
                } else {
                    AttemptResult::Fatal(StatusCode::GATEWAY_TIMEOUT, why)
                }
            }
        }
    }

    /// The first attempt, with a hedge to another instance if it is slow.
    async fn first_attempt(
        &self,
        attempt: Attempt,
        prepared: &Prepared,
        deadline: Deadline,
        key: u64,
        tried: &mut Vec<usize>,
    ) -> AttemptResult {
        let hedge_delay = if prepared.idempotent {
            self.hedge_delay()
        } else {
            None
        };
        let Some(delay) = hedge_delay else {
            return self.try_once(&attempt, prepared, deadline, true).await;
        };
        let primary = self.try_once(&attempt, prepared, deadline, true);
        tokio::pin!(primary);
        tokio::select! {
            result = &mut primary => return result,
            _ = tokio::time::sleep(delay) => {}
        }
        let hedge = if self.may_retry() {
            self.acquire(key, tried)
        } else {
            None
        };
        let Some(hedge) = hedge else {
            return primary.await;
        };
        tried.push(hedge.index);
        self.metrics.hedges.increment(1);
        let secondary = self.try_once(&hedge, prepared, deadline, false);
        tokio::pin!(secondary);
        // Take the first answer that is not a failure; if one fails, wait for the other.
        tokio::select! {
            result = &mut primary => match result {
                AttemptResult::Done(r) => { self.finish(&hedge, Outcome::Abandoned, false); AttemptResult::Done(r) }
                _ => secondary.await,
            },
            result = &mut secondary => match result {
                AttemptResult::Done(r) => { self.finish(&attempt, Outcome::Abandoned, true); AttemptResult::Done(r) }
                _ => primary.await,
            },
        }
    }

    /// Handle one HTTP request from a client.
    pub async fn handle(
        self: Arc<Self>,
        client: SocketAddr,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        self.on_request();
        let response = self.handle_inner(client, request).await;
        if response.status().is_server_error() {
            self.metrics.failed.increment(1);
        }
        response
    }

    async fn handle_inner(
        &self,
        client: SocketAddr,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let received = self.clock.now();
        let (parts, body) = request.into_parts();
        let incoming_timeout = match incoming_timeout(&parts.headers) {
            Ok(t) => t,
            Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let deadline = Deadline::on_receive(
            received,
            incoming_timeout,
            Duration::from_millis(self.config.timeout_ms),
        );
        let body = if hyper::body::Body::is_end_stream(&body) {
            // Most GETs: nothing to buffer.
            Ok(Bytes::new())
        } else {
            Limited::new(body, self.config.max_body_bytes)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
        };
        let body = match body {
            Ok(bytes) => bytes,
            Err(e) => {
                let status = if e.is::<http_body_util::LengthLimitError>() {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                return text_response(status, format!("cannot read the request body: {e}\n"));
            }
        };
        let key = match &self.config.hash_header {
            _ if !self.strategy.uses_key() => 0,
            Some(name) => parts
                .headers
                .get(name.as_str())
                .map_or(0, |v| hash_bytes(v.as_bytes())),
            None => hash_str(&client.ip().to_string(), 0),
        };
        let prepared = Prepared {
            grpc: parts.headers.contains_key(GRPC_TIMEOUT_HEADER)
                || parts
                    .headers
                    .get(hyper::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            idempotent: is_idempotent(&parts.method),
            parts,
            body,
        };
        let mut tried: Vec<usize> = Vec::new();
        let mut last_failure: Option<Response<UpstreamBody>> = None;
        let mut last_reason = String::from("no attempt was made");
        let max_retries = self.config.retry.max_retries;
        for retry in 0..=max_retries {
            if retry > 0 && !self.pause_before_retry(retry, deadline).await {
                break;
            }
            if deadline.expired(self.clock.now()) {
                return text_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("deadline passed; last: {last_reason}\n"),
                );
            }
            let Some(attempt) = self.acquire(key, &tried) else {
                if retry == 0 {
                    self.metrics.no_upstream.increment(1);
                    return text_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("no healthy upstream for {}\n", self.config.name),
                    );
                }
                break;
            };
            tried.push(attempt.index);
            let upstream = attempt.header.clone();
            let result = if retry == 0 {
                self.first_attempt(attempt, &prepared, deadline, key, &mut tried)
                    .await
            } else {
                self.try_once(&attempt, &prepared, deadline, false).await
            };
            match result {
                AttemptResult::Done(response) => {
                    return into_client_response(response, upstream, retry + 1)
                }
                AttemptResult::Retriable(response, why) => {
                    last_reason = why;
                    if response.is_some() {
                        last_failure = response;
                    }
                }
                AttemptResult::Fatal(status, why) => {
                    return text_response(status, format!("{why}\n"));
                }
            }
        }
        match last_failure {
            Some(response) => into_client_response(response, None, max_retries + 1),
            None => text_response(
                StatusCode::BAD_GATEWAY,
                format!("upstream failed: {last_reason}\n"),
            ),
        }
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    hash_str(&String::from_utf8_lossy(bytes), 0)
}

fn incoming_timeout(
    headers: &hyper::HeaderMap,
) -> Result<Option<Duration>, crate::resilience::DeadlineError> {
    let mut timeout: Option<Duration> = None;
    if let Some(value) = headers.get(GRPC_TIMEOUT_HEADER) {
        let text = value.to_str().unwrap_or("\u{fffd}");
        timeout = Some(parse_grpc_timeout(text)?);
    }
    if let Some(value) = headers.get(TIMEOUT_HEADER) {
        let text = value.to_str().unwrap_or("\u{fffd}");
        let t = parse_timeout_millis(text)?;
        timeout = Some(timeout.map_or(t, |g| g.min(t)));
    }
    Ok(timeout)
}

fn into_client_response(
    response: Response<UpstreamBody>,
    upstream: Option<HeaderValue>,
    attempts: u32,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    if let Some(value) = upstream {
        parts
            .headers
            .insert(HeaderName::from_static("x-synod-upstream"), value);
    }
    let attempts = match attempts {
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        3 => HeaderValue::from_static("3"),
        n => HeaderValue::from(n),
    };
    parts
        .headers
        .insert(HeaderName::from_static("x-synod-attempts"), attempts);
    Response::from_parts(parts, Either::Left(body))
}

/// A TCP connection from a client: connect to an instance (retrying others on a failed
/// connect), then copy bytes both ways.
async fn handle_tcp(service: Arc<Service>, mut inbound: TcpStream, client: SocketAddr) {
    service.on_request();
    let key = hash_str(&client.ip().to_string(), 0);
    let deadline = Deadline::on_receive(
        service.clock.now(),
        None,
        Duration::from_millis(service.config.timeout_ms),
    );
    let mut tried = Vec::new();
    for retry in 0..=service.config.retry.max_retries {
        if retry > 0 {
            if !service.may_retry() {
                break;
            }
            service.metrics.retries.increment(1);
            tokio::time::sleep(service.backoff_delay(retry - 1)).await;
        }
        let Some(attempt) = service.acquire(key, &tried) else {
            if retry == 0 {
                service.metrics.no_upstream.increment(1);
            }
            break;
        };
        tried.push(attempt.index);
        let remaining = deadline.remaining(service.clock.now());
        match tokio::time::timeout(remaining, TcpStream::connect(attempt.address)).await {
            Ok(Ok(mut outbound)) => {
                let _ = outbound.set_nodelay(true);
                service.finish(&attempt, Outcome::Success, retry == 0);
                // The connection is counted in flight while it lasts, for least connections.
                let tracked = service.acquire_tracking(&attempt);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                service.release_tracking(&attempt, tracked);
                return;
            }
            _ => service.finish(&attempt, Outcome::Failure, retry == 0),
        }
    }
    service.metrics.failed.increment(1);
}

impl Service {
    fn acquire_tracking(&self, attempt: &Attempt) -> bool {
        let mut state = self.lock();
        if state.generation != attempt.generation {
            return false;
        }
        state.balancer.on_start(attempt.index);
        state.instances[attempt.index]
            .metrics
            .in_flight
            .increment(1.0);
        true
    }

    fn release_tracking(&self, attempt: &Attempt, tracked: bool) {
        if !tracked {
            return;
        }
        let now = self.clock.now();
        let mut state = self.lock();
        if state.generation != attempt.generation {
            return;
        }
        // Only the in-flight count changes; a connection's length is not a latency sample.
        let estimate = state.balancer.latency_estimate(attempt.index);
        state.balancer.on_finish(attempt.index, now, estimate);
        state.instances[attempt.index]
            .metrics
            .in_flight
            .decrement(1.0);
    }
}

/// A running proxy. Dropping it stops every listener and task.
#[derive(Debug)]
pub struct RunningProxy {
    /// Each service's name and the address it listens on.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The admin address, if any.
    pub admin: Option<SocketAddr>,
    /// The services, for inspection.
    pub services: Vec<Arc<Service>>,
    tasks: JoinSet<()>,
    // Dropping it stops the worker threads.
    _shutdown: tokio::sync::watch::Sender<()>,
}

impl RunningProxy {
    /// The address of the named service's listener.
    pub fn address(&self, service: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(name, _)| name == service)
            .map(|(_, a)| *a)
    }

    /// Wait until the proxy's tasks end (they do not, unless a listener fails).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Bind every listener and start the proxy. Listen addresses with port 0 get a free port;
/// [`RunningProxy::listeners`] says which.
pub async fn start(
    config: ProxyConfig,
    source: Arc<dyn UpstreamSource>,
) -> Result<RunningProxy, ProxyError> {
    config.validate()?;
    let clock = Clock::new();
    let mut tasks = JoinSet::new();
    let (shutdown, _) = tokio::sync::watch::channel(());
    if let Some(handle) = recorder() {
        // The exporter keeps histogram samples until upkeep folds them into buckets;
        // without it a busy proxy's memory grows with every request.
        tasks.spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(5));
            loop {
                ticker.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let mut listeners = Vec::new();
    let mut services = Vec::new();
    for service_config in config.services.clone() {
        let updates = source
            .subscribe(&service_config.name)
            .ok_or_else(|| ProxyError::UnknownService(service_config.name.clone()))?;
        let instances = updates.borrow().clone();
        let name = service_config.name.clone();
        let protocol = service_config.protocol;
        let listen = service_config.listen;
        let service = Arc::new(Service::new(service_config, clock, &instances).map_err(
            |problem| crate::config::ConfigError::Invalid {
                service: name.clone(),
                problem,
            },
        )?);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ProxyError::Bind {
                address: listen,
                what: format!("service {name}"),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ProxyError::Bind {
            address: listen,
            what: format!("service {name}"),
            source,
        })?;
        listeners.push((name.clone(), local));
        tasks.spawn(health_loop(service.clone()));
        tasks.spawn(watch_loop(service.clone(), updates));
        let worker_count = config.workers.unwrap_or(0);
        if worker_count == 0 {
            tasks.spawn(accept_loop(service.clone(), listener, protocol));
        } else {
            // nginx's model: one single-threaded event loop per worker, so a request and
            // its upstream connection never change threads. One acceptor deals the
            // connections out in turn: SO_REUSEPORT's hash of a few dozen connections
            // over two sockets is uneven, and the busier worker sets the tail.
            let mut workers = Vec::with_capacity(worker_count);
            for worker in 0..worker_count {
                let sender = spawn_worker(service.clone(), protocol, shutdown.subscribe())
                    .map_err(|source| ProxyError::Bind {
                        address: local,
                        what: format!("service {name}, worker {worker}"),
                        source,
                    })?;
                workers.push(sender);
            }
            tasks.spawn(deal_loop(listener, workers));
        }
        services.push(service);
    }
    let mut admin = None;
    if let Some(address) = config.admin {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ProxyError::Bind {
                address,
                what: "the admin endpoint".into(),
                source,
            })?;
        admin = listener.local_addr().ok();
        tasks.spawn(admin_loop(listener, services.clone()));
    }
    Ok(RunningProxy {
        listeners,
        admin,
        services,
        tasks,
        _shutdown: shutdown,
    })
}

/// A connection handed to a worker thread.
type Handoff = (std::net::TcpStream, SocketAddr);

/// One worker: a thread with a single-threaded runtime serving the connections sent to it
/// until `shutdown`'s sender is dropped.
fn spawn_worker(
    service: Arc<Service>,
    protocol: Protocol,
    mut shutdown: tokio::sync::watch::Receiver<()>,
) -> std::io::Result<tokio::sync::mpsc::UnboundedSender<Handoff>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (sender, mut connections) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
    std::thread::Builder::new()
        .name(format!("mesh-{}", service.config.name))
        .spawn(move || {
            runtime.block_on(async move {
                let serve = async {
                    while let Some((stream, client)) = connections.recv().await {
                        let Ok(stream) = TcpStream::from_std(stream) else {
                            continue;
                        };
                        serve_connection(service.clone(), stream, client, protocol);
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = shutdown.changed() => {}
                }
            });
        })?;
    Ok(sender)
}

/// Accept connections and deal them to the workers in turn.
async fn deal_loop(
    listener: TcpListener,
    workers: Vec<tokio::sync::mpsc::UnboundedSender<Handoff>>,
) {
    let mut next = 0;
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        if workers[next % workers.len()]
            .send((stream, client))
            .is_err()
        {
            return;
        }
        next += 1;
    }
}

async fn accept_loop(service: Arc<Service>, listener: TcpListener, protocol: Protocol) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        serve_connection(service.clone(), stream, client, protocol);
    }
}

/// Serve one client connection on a task of the current runtime.
fn serve_connection(
    service: Arc<Service>,
    stream: TcpStream,
    client: SocketAddr,
    protocol: Protocol,
) {
    match protocol {
        Protocol::Tcp => {
            tokio::spawn(handle_tcp(service, stream, client));
        }
        Protocol::Http => {
            let config = &service.config;
            if config.lean_http1 && !config.upstream_http2 && config.hedge.is_none() {
                tokio::spawn(h1::serve(service, stream, client));
            } else {
                tokio::spawn(serve_hyper(service, stream, client));
            }
        }
    }
}

/// Serve an HTTP/1.1 or HTTP/2 connection with hyper.
async fn serve_hyper<I>(service: Arc<Service>, io: I, client: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handler = hyper::service::service_fn(move |request| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(service.handle(client, request).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), handler)
        .await;
}

async fn admin_loop(listener: TcpListener, services: Vec<Arc<Service>>) {
    let services = Arc::new(services);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let services = services.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
                let services = services.clone();
                async move {
                    let response = match request.uri().path() {
                        "/metrics" => text_response(
                            StatusCode::OK,
                            recorder().map(|h| h.render()).unwrap_or_default(),
                        ),
                        "/status" => text_response(StatusCode::OK, status_text(&services)),
                        _ => {
                            text_response(StatusCode::NOT_FOUND, "try /metrics or /status\n".into())
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler)
                .await;
        });
    }
}

fn status_text(services: &[Arc<Service>]) -> String {
    let mut out = String::new();
    for service in services {
        for (id, availability) in service.availability() {
            out.push_str(&format!(
                "{} {} {:?}\n",
                service.config.name, id, availability
            ));
        }
    }
    out
}
