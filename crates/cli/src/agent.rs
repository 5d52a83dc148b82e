//! `synod mesh agent`: the registry's agent on a node (issue 14, part 2), after Consul's
//! client agent.
//!
//! - It holds one lease on the cluster, kept alive; everything it writes (registrations
//!   taken over its HTTP API, check results) is under that lease, so if the agent dies its
//!   instances become critical, then disappear, within the lease TTL.
//! - It checks the instances registered with its node name (`node` in the registration):
//!   HTTP or TCP probes every interval with a timeout (fixed, or RTT-adaptive per RFC
//!   6298), pass/fail thresholds and φ-accrual suspicion (see [`synod_mesh::health`]); or
//!   a TTL the instance must renew with `PUT /v1/agent/check/pass/{name}/{id}`.
//!   A verdict is written to `/synod/health/{name}/{id}` when it changes; discovery
//!   (the proxy, `synod svc list --passing`, `/v1/health/...`) excludes critical ones.
//! - It serves the catalog over HTTP from its watch-fed mirror (Consul's paths):
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/catalog/services` | every service and its tags |
//! | `GET /v1/catalog/service/{name}` | every instance of a service, with its status |
//! | `GET /v1/health/service/{name}?passing=true` | only passing instances (`&tag=v2&tag=eu`: with every listed tag) |
//! | `PUT /v1/catalog/service/{name}/{id}` | register (JSON body: address, tags, meta, weight, check) under the agent's lease |
//! | `DELETE /v1/catalog/service/{name}/{id}` | deregister |
//! | `PUT /v1/agent/check/pass/{name}/{id}` | a TTL heartbeat |
//! | `GET /v1/agent/checks` | this agent's checks and their verdicts |
//!
//! GETs take `?index=N&wait=10s` (Consul's blocking queries): the answer waits until the
//! registry's revision passes `N`, so a client is pushed each change; the revision is in
//! the `X-Synod-Index` header.

use crate::registry::{
    valid_segment, Catalog, CheckKind, CheckSpec, HealthRecord, Registration, Registry, Status,
};
use anyhow::{Context, Result};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use synod_mesh::health::{
    probe, CheckSettings, HealthTracker, ProbeKind, ProbeResult, Reason, Verdict,
};
use synod_mesh::proxy::Clock;
use tokio::sync::mpsc;

/// How the agent runs.
pub(crate) struct AgentConfig {
    pub(crate) endpoints: crate::registry::Endpoints,
    pub(crate) listen: SocketAddr,
    pub(crate) node: String,
    pub(crate) lease_ttl: Duration,
}

/// One running check.
struct CheckHandle {
    registration: Registration,
    reports: mpsc::UnboundedSender<()>,
    verdict: Arc<Mutex<(Verdict, String)>>,
    task: tokio::task::JoinHandle<()>,
}

struct Agent {
    registry: Registry,
    catalog: Arc<Catalog>,
    node: String,
    lease: i64,
    clock: Clock,
    checks: Mutex<BTreeMap<(String, String), CheckHandle>>,
}

/// A started agent.
pub(crate) struct RunningAgent {
    pub(crate) address: SocketAddr,
    pub(crate) lease: i64,
    registry: Registry,
    keeper: tokio::task::JoinHandle<Result<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    /// Run until ctrl-c or SIGTERM (then revoke the lease: the agent's registrations and
    /// check results go at once), or until the lease is lost.
    pub(crate) async fn wait(self) -> Result<()> {
        let mut keeper = self.keeper;
        tokio::select! {
            r = &mut keeper => {
                self.server.abort();
                r.context("the keep-alive task failed")??;
                Ok(())
            }
            () = crate::svc::shutdown_signal() => {
                keeper.abort();
                self.server.abort();
                self.registry.revoke(self.lease).await
            }
        }
    }
}

/// Start the agent: lease, catalog mirror, checks and HTTP API.
pub(crate) async fn start(config: AgentConfig) -> Result<RunningAgent> {
    valid_segment("node name", &config.node)?;
    let registry = Registry::new(&config.endpoints)?;
    let (lease, ttl) = registry
        .grant(config.lease_ttl)
        .await
        .context("cannot get a lease from the cluster")?;
    let every = Duration::from_secs(u64::try_from(ttl.max(1)).unwrap_or(1)) / 3;
    let keeper = registry.keep_alive(lease, every);
    let catalog = Catalog::follow(registry.clone()).await?;
    let agent = Arc::new(Agent {
        registry: registry.clone(),
        catalog,
        node: config.node,
        lease,
        clock: Clock::new(),
        checks: Mutex::new(BTreeMap::new()),
    });
    tokio::spawn(reconcile_loop(Arc::clone(&agent)));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let app = router(agent);
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("agent HTTP server: {e}");
        }
    });
    Ok(RunningAgent {
        address,
        lease,
        registry,
        keeper,
        server,
    })
}

impl Agent {
    fn checks(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), CheckHandle>> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start checks for this node's instances that have one, stop those that went away
    /// or changed.
    fn reconcile(self: &Arc<Self>) {
        let wanted: BTreeMap<(String, String), Registration> = self.catalog.with(|m| {
            m.services
                .values()
                .flat_map(|ids| ids.values())
                .filter_map(|e| e.registration.as_ref())
                .filter(|r| r.node == self.node && r.check.is_some())
                .map(|r| ((r.name.clone(), r.id.clone()), r.clone()))
                .collect()
        });
        let mut checks = self.checks();
        checks.retain(|key, handle| {
            let keep = wanted.get(key) == Some(&handle.registration);
            if !keep {
                handle.task.abort();
            }
            keep
        });
        for (key, registration) in wanted {
            if checks.contains_key(&key) {
                continue;
            }
            let (reports, rx) = mpsc::unbounded_channel();
            let verdict = Arc::new(Mutex::new((Verdict::Critical, Reason::Initial.to_string())));
            let task = tokio::spawn(check_loop(
                Arc::clone(self),
                registration.clone(),
                rx,
                Arc::clone(&verdict),
            ));
            checks.insert(
                key,
                CheckHandle {
                    registration,
                    reports,
                    verdict,
                    task,
                },
            );
        }
    }
}

async fn reconcile_loop(agent: Arc<Agent>) {
    let mut changes = agent.catalog.changes();
    loop {
        agent.reconcile();
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn settings(spec: &CheckSpec) -> CheckSettings {
    CheckSettings {
        interval: Duration::from_millis(spec.interval_ms),
        timeout: spec.timeout_ms.map(Duration::from_millis),
        ttl: spec.ttl_ms.map(Duration::from_millis),
        healthy_threshold: spec.healthy_threshold,
        unhealthy_threshold: spec.unhealthy_threshold,
        phi_threshold: spec.phi_threshold,
    }
}

/// Probe (or wait for reports), evaluate, and write the verdict when it changes.
async fn check_loop(
    agent: Arc<Agent>,
    registration: Registration,
    mut reports: mpsc::UnboundedReceiver<()>,
    shared: Arc<Mutex<(Verdict, String)>>,
) {
    let Some(spec) = registration.check.clone() else {
        return;
    };
    let settings = settings(&spec);
    let interval = settings.interval;
    let mut tracker = HealthTracker::new(settings, agent.clock.now());
    let kind = match spec.kind {
        CheckKind::Http => Some(ProbeKind::Http {
            path: spec.path.clone(),
        }),
        CheckKind::Tcp => Some(ProbeKind::Tcp),
        CheckKind::Ttl => None,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight: Option<ProbeFuture> = None;
    let mut published: Option<Verdict> = None;
    let mut heard = false;
    loop {
        let now = agent.clock.now();
        let deadline = tracker
            .next_deadline(now)
            .map(|t| tokio::time::Instant::now() + t.saturating_duration_since(now));
        tokio::select! {
            _ = ticker.tick() => {
                // Active checks start a probe per tick (unless one is still running); a
                // TTL check just re-evaluates.
                if let Some(kind) = &kind {
                    if in_flight.is_none() {
                        let kind = kind.clone();
                        let timeout = tracker.timeout();
                        let address = registration.address;
                        in_flight = Some(Box::pin(async move {
                            let start = tokio::time::Instant::now();
                            let result = probe(&kind, address, timeout).await;
                            (result, start.elapsed())
                        }));
                    }
                    continue;
                }
            }
            (result, rtt) = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                tracker.on_probe(agent.clock.now(), result, rtt);
                heard = true;
            }
            report = reports.recv() => {
                if report.is_none() {
                    return;
                }
                tracker.on_report(agent.clock.now());
                heard = true;
            }
            () = sleep_until(deadline) => {
                heard = true;
            }
        }
        let (verdict, reason) = tracker.evaluate(agent.clock.now());
        let output = reason.to_string();
        *shared.lock().unwrap_or_else(|e| e.into_inner()) = (verdict, output.clone());
        if !heard || published == Some(verdict) {
            continue;
        }
        let record = HealthRecord {
            status: match verdict {
                Verdict::Passing => Status::Passing,
                Verdict::Critical => Status::Critical,
            },
            output,
            node: agent.node.clone(),
            updated_ms: crate::registry::unix_millis(),
        };
        tracing::info!(service = %registration.name, id = %registration.id, status = ?record.status, "{}", record.output);
        match agent
            .registry
            .put_health(&registration.name, &registration.id, &record, agent.lease)
            .await
        {
            Ok(()) => published = Some(verdict),
            Err(e) => tracing::warn!("cannot write the check result: {e:#}"),
        }
    }
}

/// A probe in progress: its result and round trip.
type ProbeFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = (ProbeResult, Duration)> + Send>>;

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(service_instances))
        .route(
            "/v1/catalog/service/{name}/{id}",
            put(register).delete(deregister),
        )
        .route("/v1/health/service/{name}", get(service_instances))
        .route("/v1/agent/check/pass/{name}/{id}", put(check_pass))
        .route("/v1/agent/checks", get(agent_checks))
        .with_state(agent)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, format!("{message}\n")).into_response()
}

#[derive(Debug, Default)]
struct BlockingQuery {
    index: Option<i64>,
    wait: Option<String>,
    passing: Option<bool>,
    /// Only instances carrying every one of these tags (Consul's `?tag=`, repeatable).
    tags: Vec<String>,
}

impl BlockingQuery {
    /// From the query string's pairs; `tag` may repeat, anything unknown is an error.
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, String> {
        let bad = |what: String| Err(what);
        let mut query = BlockingQuery::default();
        for (key, value) in pairs {
            match key.as_str() {
                "index" => match value.parse() {
                    Ok(i) => query.index = Some(i),
                    Err(_) => return bad(format!("index: not an integer: {value:?}")),
                },
                "wait" => query.wait = Some(value),
                "passing" => match value.as_str() {
                    "" | "true" | "1" => query.passing = Some(true),
                    "false" | "0" => query.passing = Some(false),
                    _ => return bad(format!("passing: not a boolean: {value:?}")),
                },
                "tag" => query.tags.push(value),
                _ => {
                    return bad(format!(
                        "unknown query parameter {key:?} (known: index, wait, passing, tag)"
                    ))
                }
            }
        }
        Ok(query)
    }
}

/// Wait (at most `wait`, default 30 s, at most 5 min) until the registry's revision is
/// past `index`.
async fn block(agent: &Agent, query: &BlockingQuery) -> Result<(), Response> {
    let Some(index) = query.index else {
        return Ok(());
    };
    let wait = match &query.wait {
        Some(w) => crate::args::duration(w).map_err(|e| error(StatusCode::BAD_REQUEST, e))?,
        None => Duration::from_secs(30),
    }
    .min(Duration::from_secs(300));
    let mut changes = agent.catalog.changes();
    let _ = tokio::time::timeout(wait, changes.wait_for(|rev| *rev > index)).await;
    Ok(())
}

fn with_index(agent: &Agent, body: serde_json::Value) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&agent.catalog.revision().to_string()) {
        headers.insert("x-synod-index", v);
    }
    (headers, Json(body)).into_response()
}

async fn catalog_services(
    State(agent): State<Arc<Agent>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = match BlockingQuery::parse(pairs) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(r) = block(&agent, &query).await {
        return r;
    }
    let tags = agent.catalog.with(|m| m.service_tags());
    with_index(&agent, serde_json::json!(tags))
}

fn instances_json(agent: &Agent, name: &str, query: &BlockingQuery) -> serde_json::Value {
    let passing_only = query.passing.unwrap_or(false);
    agent.catalog.with(|m| {
        let list: Vec<serde_json::Value> = m
            .services
            .get(name)
            .into_iter()
            .flat_map(|ids| ids.values())
            .filter(|e| e.registration.is_some())
            .filter(|e| !passing_only || e.status() == Status::Passing)
            .filter(|e| {
                query.tags.is_empty()
                    || e.registration
                        .as_ref()
                        .is_some_and(|r| query.tags.iter().all(|t| r.tags.contains(t)))
            })
            .map(|e| {
                let mut v = serde_json::to_value(&e.registration).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("status".into(), serde_json::json!(e.status()));
                    if let Some(h) = &e.health {
                        o.insert("output".into(), serde_json::json!(h.output));
                        o.insert("checked_by".into(), serde_json::json!(h.node));
                    }
                }
                v
            })
            .collect();
        serde_json::Value::Array(list)
    })
}

/// `GET /v1/catalog/service/{name}` and `GET /v1/health/service/{name}`: the agent keeps
/// one view of a service's instances with their health, so both answer with it.
async fn service_instances(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = match BlockingQuery::parse(pairs) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(r) = block(&agent, &query).await {
        return r;
    }
    let body = instances_json(&agent, &name, &query);
    with_index(&agent, body)
}

/// The body of `PUT /v1/catalog/service/{name}/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    address: SocketAddr,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    check: Option<CheckSpec>,
}

async fn register(
    State(agent): State<Arc<Agent>>,
    Path((name, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let body: RegisterBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad registration: {e}")),
    };
    let registration = Registration {
        name,
        id,
        address: body.address,
        tags: body.tags,
        meta: body.meta,
        weight: body.weight.unwrap_or(1),
        node: body.node.unwrap_or_else(|| agent.node.clone()),
        check: body.check,
    };
    if let Err(e) = registration.validate() {
        return error(StatusCode::BAD_REQUEST, format!("bad registration: {e:#}"));
    }
    match agent.registry.register(&registration, agent.lease).await {
        Ok(()) => with_index(
            &agent,
            serde_json::json!({"registered": registration.key()}),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

async fn deregister(
    State(agent): State<Arc<Agent>>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    match agent.registry.deregister(&name, &id).await {
        Ok(true) => with_index(&agent, serde_json::json!({"deregistered": true})),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no instance {name}/{id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

async fn check_pass(
    State(agent): State<Arc<Agent>>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let checks = agent.checks();
    match checks.get(&(name.clone(), id.clone())) {
        Some(h)
            if h.registration
                .check
                .as_ref()
                .is_some_and(|c| c.kind == CheckKind::Ttl) =>
        {
            let _ = h.reports.send(());
            (StatusCode::OK, "ok\n").into_response()
        }
        Some(_) => error(
            StatusCode::BAD_REQUEST,
            format!("{name}/{id} has an active check, not a ttl check"),
        ),
        None => error(
            StatusCode::NOT_FOUND,
            format!("this agent has no check for {name}/{id}"),
        ),
    }
}

async fn agent_checks(State(agent): State<Arc<Agent>>) -> Response {
    let checks = agent.checks();
    let list: Vec<serde_json::Value> = checks
        .iter()
        .map(|((name, id), h)| {
            let (verdict, output) = h.verdict.lock().unwrap_or_else(|e| e.into_inner()).clone();
            serde_json::json!({
                "name": name,
                "id": id,
                "address": h.registration.address,
                "check": h.registration.check,
                "status": if verdict == Verdict::Passing { "passing" } else { "critical" },
                "output": output,
            })
        })
        .collect();
    drop(checks);
    with_index(&agent, serde_json::Value::Array(list))
}
