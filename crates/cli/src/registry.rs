//! The service registry on the cluster (issue 14, part 1): instances stored under leases in
//! the Raft KV through the etcd v3 API every node serves on its client port.
//!
//! Key layout, after etcd's naming (`etcd/client/v3/naming`) and Consul's catalog:
//!
//! - `/synod/services/{name}/{id}` → [`Registration`] as JSON, written under the lease of
//!   whoever keeps the instance alive (`synod svc register`, or the agent that took the
//!   registration over its HTTP API). When that lease expires the instance is gone.
//! - `/synod/health/{name}/{id}` → [`HealthRecord`] as JSON, written by the agent that
//!   checks the instance, under the agent's lease.
//!
//! An instance is **passing** when it is registered and either has no check, or its latest
//! health record says passing. An instance with a check but no record yet (not yet
//! checked, or its agent died and the record expired with the agent's lease) is critical,
//! as in Consul, where a new check starts critical and a failed node's services are
//! critical.
//!
//! [`Catalog`] mirrors both prefixes: one Range, then one Watch from the next revision, so
//! every change is pushed to it in revision order; on a broken stream or a compaction it
//! re-reads and watches again. [`CatalogSource`] turns the mirror into the proxy's
//! [`UpstreamSource`]: each service's passing instances, pushed to the proxy on change.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use synod_mesh::upstream::{Instance, InstanceList, UpstreamSource};
use synod_server::etcd::pb::etcdserverpb as pb;
use synod_server::etcd::pb::mvccpb;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

/// Where registrations live.
pub(crate) const SERVICES: &str = "/synod/services/";
/// Where check results live.
pub(crate) const HEALTH: &str = "/synod/health/";
/// Both, for one watch.
const ROOT: &str = "/synod/";

/// One instance of a service, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registration {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) address: SocketAddr,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) meta: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub(crate) weight: u32,
    /// The agent (node) that checks it.
    #[serde(default = "default_node")]
    pub(crate) node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) check: Option<CheckSpec>,
}

fn one() -> u32 {
    1
}

pub(crate) fn default_node() -> String {
    "local".into()
}

/// How the agent checks an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckSpec {
    /// `http`, `tcp` or `ttl`.
    pub(crate) kind: CheckKind,
    /// For HTTP checks.
    #[serde(default = "default_path")]
    pub(crate) path: String,
    #[serde(default = "default_interval")]
    pub(crate) interval_ms: u64,
    /// Fixed probe timeout; absent: RTT-adaptive (RFC 6298).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<u64>,
    /// For TTL checks: longest silence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ttl_ms: Option<u64>,
    #[serde(default = "one")]
    pub(crate) healthy_threshold: u32,
    #[serde(default = "two")]
    pub(crate) unhealthy_threshold: u32,
    /// φ threshold (0: off).
    #[serde(default = "default_phi")]
    pub(crate) phi_threshold: f64,
}

fn default_path() -> String {
    "/health".into()
}
fn default_interval() -> u64 {
    1000
}
fn two() -> u32 {
    2
}
fn default_phi() -> f64 {
    8.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CheckKind {
    Http,
    Tcp,
    Ttl,
}

impl CheckSpec {
    /// A check of `kind` with every other field at its default.
    pub(crate) fn new(kind: CheckKind) -> Self {
        CheckSpec {
            kind,
            path: default_path(),
            interval_ms: default_interval(),
            timeout_ms: None,
            ttl_ms: None,
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            phi_threshold: default_phi(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.interval_ms == 0 {
            bail!("check interval_ms must be positive");
        }
        if self.kind == CheckKind::Ttl && self.ttl_ms.unwrap_or(0) == 0 {
            bail!("a ttl check needs a positive ttl_ms");
        }
        if self.kind == CheckKind::Http && !self.path.starts_with('/') {
            bail!("check path {:?} must start with '/'", self.path);
        }
        if !(0.0..=1000.0).contains(&self.phi_threshold) {
            bail!("phi_threshold must be between 0 and 1000");
        }
        Ok(())
    }
}

impl Registration {
    pub(crate) fn validate(&self) -> Result<()> {
        valid_segment("service name", &self.name)?;
        valid_segment("instance id", &self.id)?;
        if self.weight == 0 {
            bail!("weight must be positive");
        }
        if let Some(c) = &self.check {
            c.validate()?;
        }
        Ok(())
    }

    pub(crate) fn key(&self) -> String {
        service_key(&self.name, &self.id)
    }
}

/// A name or id goes into a key path: no slashes, not empty, printable.
pub(crate) fn valid_segment(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 200 {
        bail!("{what} must have 1 to 200 characters");
    }
    if s.chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        bail!("{what} {s:?} must not contain '/', spaces or control characters");
    }
    Ok(())
}

pub(crate) fn service_key(name: &str, id: &str) -> String {
    format!("{SERVICES}{name}/{id}")
}

pub(crate) fn health_key(name: &str, id: &str) -> String {
    format!("{HEALTH}{name}/{id}")
}

/// The latest check result of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HealthRecord {
    pub(crate) status: Status,
    pub(crate) output: String,
    /// The agent that wrote it.
    pub(crate) node: String,
    /// Wall-clock milliseconds since the Unix epoch, for display only.
    pub(crate) updated_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Passing,
    Critical,
}

/// The key after `prefix`, split into (name, id).
fn split_key<'a>(key: &'a [u8], prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (name, id) = rest.split_once('/')?;
    (!name.is_empty() && !id.is_empty() && !id.contains('/')).then_some((name, id))
}

/// The end of the range of keys starting with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The etcd endpoints of a cluster, as URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoints(pub(crate) Vec<String>);

/// `host:port` endpoints, comma-separated, into URLs.
pub(crate) fn parse_endpoints(s: &str) -> Result<Endpoints, String> {
    let endpoints: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let url = if e.starts_with("http://") {
                e.to_string()
            } else {
                format!("http://{e}")
            };
            url.parse::<tonic::transport::Uri>()
                .map_err(|err| format!("bad endpoint {e:?}: {err}"))
                .and_then(|uri| {
                    if uri.port_u16().is_none() {
                        Err(format!("endpoint {e:?} has no port (e.g. 127.0.0.1:2379)"))
                    } else {
                        Ok(url)
                    }
                })
        })
        .collect::<Result<_, _>>()?;
    if endpoints.is_empty() {
        return Err("no endpoint given (e.g. 127.0.0.1:2379)".into());
    }
    Ok(Endpoints(endpoints))
}

/// A client of the registry over the etcd v3 API of one or more nodes.
#[derive(Clone)]
pub(crate) struct Registry {
    channel: Channel,
}

impl Registry {
    /// A lazily connected, load-balanced channel over `endpoints` (URLs); a node that is
    /// down is skipped.
    pub(crate) fn new(endpoints: &Endpoints) -> Result<Self> {
        let endpoints: Vec<Endpoint> = endpoints
            .0
            .iter()
            .map(|e| {
                Endpoint::from_shared(e.clone())
                    .map(|e| {
                        e.connect_timeout(Duration::from_secs(2))
                            .tcp_nodelay(true)
                            .http2_keep_alive_interval(Duration::from_secs(5))
                            .keep_alive_timeout(Duration::from_secs(5))
                    })
                    .with_context(|| format!("bad endpoint {e}"))
            })
            .collect::<Result<_>>()?;
        Ok(Registry {
            channel: Channel::balance_list(endpoints.into_iter()),
        })
    }

    fn kv(&self) -> pb::kv_client::KvClient<Channel> {
        pb::kv_client::KvClient::new(self.channel.clone())
    }

    fn lease(&self) -> pb::lease_client::LeaseClient<Channel> {
        pb::lease_client::LeaseClient::new(self.channel.clone())
    }

    /// Run `f` a few times while the cluster answers "unavailable" (no leader yet, or the
    /// node we reached is down).
    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut delay = Duration::from_millis(50);
        for attempt in 0.. {
            match f().await {
                Ok(v) => return Ok(v),
                Err(s)
                    if attempt < 8
                        && matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::DeadlineExceeded
                                | tonic::Code::Unknown
                        ) =>
                {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(s) => return Err(anyhow!("{what}: {}", s.message())),
            }
        }
        unreachable!()
    }

    /// A new lease of `ttl` (whole seconds, at least the cluster's minimum of 2).
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<(i64, i64)> {
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let r = self
            .retry("lease grant", || async {
                self.lease()
                    .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                    .await
            })
            .await?
            .into_inner();
        if !r.error.is_empty() {
            bail!("lease grant: {}", r.error);
        }
        Ok((r.id, r.ttl))
    }

    /// Revoke a lease, deleting every key under it.
    pub(crate) async fn revoke(&self, lease: i64) -> Result<()> {
        self.retry("lease revoke", || async {
            self.lease()
                .lease_revoke(pb::LeaseRevokeRequest { id: lease })
                .await
        })
        .await?;
        Ok(())
    }

    /// One keep-alive of `lease`: its TTL in seconds, 0 or less if it has expired.
    pub(crate) async fn keep_alive_once(&self, lease: i64) -> Result<i64> {
        let reply = self
            .retry("lease keep-alive", || async {
                let request = tokio_stream::iter([pb::LeaseKeepAliveRequest { id: lease }]);
                let mut replies = self.lease().lease_keep_alive(request).await?.into_inner();
                replies
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::unavailable("no keep-alive reply"))
            })
            .await?;
        Ok(reply.ttl)
    }

    /// Keep `lease` alive every `every` until the returned task is aborted; the task
    /// ends with an error when the lease has expired.
    pub(crate) fn keep_alive(
        &self,
        lease: i64,
        every: Duration,
    ) -> tokio::task::JoinHandle<Result<()>> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match registry.keep_alive_once(lease).await {
                    Ok(ttl) if ttl <= 0 => bail!("lease {lease:x} expired"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("keep-alive of lease {lease:x}: {e:#}"),
                }
            }
        })
    }

    async fn put(&self, key: String, value: String, lease: i64) -> Result<()> {
        self.retry("put", || async {
            self.kv()
                .put(pb::PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    lease,
                    ..Default::default()
                })
                .await
        })
        .await?;
        Ok(())
    }

    /// Store `registration` under `lease` (0: no lease, it stays until deregistered).
    pub(crate) async fn register(&self, registration: &Registration, lease: i64) -> Result<()> {
        registration.validate()?;
        let value = serde_json::to_string(registration)?;
        self.put(registration.key(), value, lease).await
    }

    /// Store a check result under `lease`.
    pub(crate) async fn put_health(
        &self,
        name: &str,
        id: &str,
        record: &HealthRecord,
        lease: i64,
    ) -> Result<()> {
        let value = serde_json::to_string(record)?;
        self.put(health_key(name, id), value, lease).await
    }

    /// Remove an instance and its check result; whether it was registered.
    pub(crate) async fn deregister(&self, name: &str, id: &str) -> Result<bool> {
        valid_segment("service name", name)?;
        valid_segment("instance id", id)?;
        let mut deleted = 0;
        for key in [service_key(name, id), health_key(name, id)] {
            let r = self
                .retry("delete", || async {
                    self.kv()
                        .delete_range(pb::DeleteRangeRequest {
                            key: key.clone().into_bytes(),
                            ..Default::default()
                        })
                        .await
                })
                .await?
                .into_inner();
            if deleted == 0 {
                deleted = r.deleted;
            }
        }
        Ok(deleted > 0)
    }

    /// Everything under `/synod/`, linearizably, with the revision it was read at.
    async fn snapshot(&self) -> Result<(i64, Mirror)> {
        let r = self
            .retry("range", || async {
                self.kv()
                    .range(pb::RangeRequest {
                        key: ROOT.as_bytes().to_vec(),
                        range_end: prefix_end(ROOT),
                        ..Default::default()
                    })
                    .await
            })
            .await?
            .into_inner();
        let revision = r.header.map_or(0, |h| h.revision);
        let mut mirror = Mirror::default();
        for kv in &r.kvs {
            mirror.apply_put(&kv.key, &kv.value);
        }
        Ok((revision, mirror))
    }

    /// The catalog now, read once.
    pub(crate) async fn read(&self) -> Result<Mirror> {
        Ok(self.snapshot().await?.1)
    }
}

/// One instance with its latest check result.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Entry {
    pub(crate) registration: Option<Registration>,
    pub(crate) health: Option<HealthRecord>,
}

impl Entry {
    pub(crate) fn status(&self) -> Status {
        match (&self.registration, &self.health) {
            (Some(r), None) if r.check.is_none() => Status::Passing,
            (Some(_), Some(h)) => h.status,
            _ => Status::Critical,
        }
    }
}

/// The registry's contents: service → id → entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Mirror {
    pub(crate) services: BTreeMap<String, BTreeMap<String, Entry>>,
}

impl Mirror {
    fn entry(&mut self, name: &str, id: &str) -> &mut Entry {
        self.services
            .entry(name.to_string())
            .or_default()
            .entry(id.to_string())
            .or_default()
    }

    /// Drop entries with neither a registration nor a health record.
    fn tidy(&mut self, name: &str, id: &str) {
        if let Some(ids) = self.services.get_mut(name) {
            if ids
                .get(id)
                .is_some_and(|e| e.registration.is_none() && e.health.is_none())
            {
                ids.remove(id);
            }
            if ids.is_empty() {
                self.services.remove(name);
            }
        }
    }

    /// Apply a put; returns the service it touched. Malformed values are logged and
    /// treated as absent, never trusted.
    fn apply_put(&mut self, key: &[u8], value: &[u8]) -> Option<String> {
        if let Some((name, id)) = split_key(key, SERVICES) {
            let parsed = serde_json::from_slice::<Registration>(value)
                .ok()
                .filter(|r| r.name == name && r.id == id && r.validate().is_ok());
            if parsed.is_none() {
                tracing::warn!("ignoring a malformed registration at {SERVICES}{name}/{id}");
            }
            self.entry(name, id).registration = parsed;
            self.tidy(name, id);
            return Some(name.to_string());
        }
        if let Some((name, id)) = split_key(key, HEALTH) {
            let parsed = serde_json::from_slice::<HealthRecord>(value).ok();
            if parsed.is_none() {
                tracing::warn!("ignoring a malformed health record at {HEALTH}{name}/{id}");
            }
            self.entry(name, id).health = parsed;
            self.tidy(name, id);
            return Some(name.to_string());
        }
        None
    }

    fn apply_delete(&mut self, key: &[u8]) -> Option<String> {
        for prefix in [SERVICES, HEALTH] {
            if let Some((name, id)) = split_key(key, prefix) {
                let entry = self.entry(name, id);
                if prefix == SERVICES {
                    entry.registration = None;
                } else {
                    entry.health = None;
                }
                self.tidy(name, id);
                return Some(name.to_string());
            }
        }
        None
    }

    /// The registered instances of `name` (all, or only passing ones), by id.
    pub(crate) fn instances(&self, name: &str, passing_only: bool) -> Vec<(&Registration, Status)> {
        self.services
            .get(name)
            .into_iter()
            .flat_map(|ids| ids.values())
            .filter_map(|e| e.registration.as_ref().map(|r| (r, e.status())))
            .filter(|(_, s)| !passing_only || *s == Status::Passing)
            .collect()
    }

    /// Every service with at least one registered instance, and the union of its tags.
    pub(crate) fn service_tags(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for (name, ids) in &self.services {
            let mut tags: Vec<String> = ids
                .values()
                .filter_map(|e| e.registration.as_ref())
                .flat_map(|r| r.tags.iter().cloned())
                .collect();
            if ids.values().all(|e| e.registration.is_none()) {
                continue;
            }
            tags.sort();
            tags.dedup();
            out.insert(name.clone(), tags);
        }
        out
    }
}

/// A live mirror of the registry, fed by an etcd watch.
pub(crate) struct Catalog {
    mirror: Mutex<Mirror>,
    /// The revision the mirror reflects, bumped on every applied change.
    revision: watch::Sender<i64>,
}

impl Catalog {
    /// Read the registry, then follow it with a watch in the background.
    pub(crate) async fn follow(registry: Registry) -> Result<Arc<Catalog>> {
        let (revision, mirror) = registry.snapshot().await?;
        let catalog = Arc::new(Catalog {
            mirror: Mutex::new(mirror),
            revision: watch::channel(revision).0,
        });
        let follower = Arc::clone(&catalog);
        tokio::spawn(async move {
            let mut from = revision + 1;
            loop {
                match follower.watch_from(&registry, from).await {
                    Ok(()) => {}
                    Err(e) => tracing::warn!("registry watch broke: {e:#}; reading again"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Re-read: events between the break and the new watch are not lost, and a
                // compaction past our revision is survived.
                match registry.snapshot().await {
                    Ok((revision, mirror)) => {
                        *follower.lock() = mirror;
                        follower.revision.send_replace(revision);
                        from = revision + 1;
                    }
                    Err(e) => tracing::warn!("registry read failed: {e:#}"),
                }
            }
        });
        Ok(catalog)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watch `/synod/` from revision `from`, applying events until the stream ends.
    async fn watch_from(&self, registry: &Registry, from: i64) -> Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: ROOT.as_bytes().to_vec(),
                    range_end: prefix_end(ROOT),
                    start_revision: from,
                    ..Default::default()
                },
            )),
        })
        .await
        .map_err(|_| anyhow!("watch request channel closed"))?;
        let mut client = pb::watch_client::WatchClient::new(registry.channel.clone());
        let mut stream = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| anyhow!("watch: {}", s.message()))?
            .into_inner();
        while let Some(response) = stream
            .message()
            .await
            .map_err(|s| anyhow!("watch stream: {}", s.message()))?
        {
            if response.canceled || response.compact_revision != 0 {
                bail!(
                    "watch canceled ({}), compacted at {}",
                    response.cancel_reason,
                    response.compact_revision
                );
            }
            if response.events.is_empty() {
                continue;
            }
            let mut last = 0;
            {
                let mut mirror = self.lock();
                for event in &response.events {
                    let Some(kv) = &event.kv else { continue };
                    last = last.max(kv.mod_revision);
                    if event.r#type == mvccpb::event::EventType::Delete as i32 {
                        mirror.apply_delete(&kv.key);
                    } else {
                        mirror.apply_put(&kv.key, &kv.value);
                    }
                }
            }
            self.revision.send_replace(last);
        }
        drop(tx);
        bail!("the watch stream ended")
    }

    /// Run `f` on the mirror.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Mirror) -> T) -> T {
        f(&self.lock())
    }

    /// The revision the mirror reflects.
    pub(crate) fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Notified on every change.
    pub(crate) fn changes(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// The passing instances of `name`, as the proxy sees them.
    pub(crate) fn upstreams(&self, name: &str) -> Vec<Instance> {
        self.with(|m| {
            m.instances(name, true)
                .into_iter()
                .map(|(r, _)| Instance {
                    id: r.id.clone(),
                    address: r.address,
                    weight: r.weight,
                    tags: r.tags.clone(),
                    meta: r.meta.clone(),
                })
                .collect()
        })
    }
}

/// The proxy's [`UpstreamSource`] over the registry: every service's passing instances,
/// updated as the watch pushes changes.
pub(crate) struct CatalogSource {
    catalog: Arc<Catalog>,
}

impl CatalogSource {
    pub(crate) fn new(catalog: Arc<Catalog>) -> Self {
        CatalogSource { catalog }
    }
}

impl UpstreamSource for CatalogSource {
    fn subscribe(&self, service: &str) -> Option<watch::Receiver<InstanceList>> {
        let (tx, rx) = watch::channel(Arc::new(self.catalog.upstreams(service)));
        let catalog = Arc::clone(&self.catalog);
        let name = service.to_string();
        let mut changes = catalog.changes();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let list = catalog.upstreams(&name);
                let changed = tx.send_if_modified(|current| {
                    if **current == list {
                        false
                    } else {
                        *current = Arc::new(list);
                        true
                    }
                });
                if changed {
                    tracing::info!(service = %name, "registry changed the upstreams");
                }
                if tx.is_closed() {
                    break;
                }
            }
        });
        Some(rx)
    }
}

/// Milliseconds since the Unix epoch (display only).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(name: &str, id: &str, check: Option<CheckSpec>) -> Registration {
        Registration {
            name: name.into(),
            id: id.into(),
            address: "127.0.0.1:9000".parse().unwrap(),
            tags: vec!["v1".into()],
            meta: BTreeMap::new(),
            weight: 1,
            node: default_node(),
            check,
        }
    }

    fn put(m: &mut Mirror, key: &str, value: &impl Serialize) {
        m.apply_put(
            key.as_bytes(),
            serde_json::to_string(value).unwrap().as_bytes(),
        );
    }

    #[test]
    fn an_instance_with_a_check_is_critical_until_its_agent_says_passing() {
        let mut m = Mirror::default();
        put(
            &mut m,
            "/synod/services/web/a",
            &registration("web", "a", None),
        );
        let checked = registration("web", "b", Some(CheckSpec::new(CheckKind::Tcp)));
        put(&mut m, "/synod/services/web/b", &checked);
        let ids = |m: &Mirror| -> Vec<String> {
            m.instances("web", true)
                .iter()
                .map(|(r, _)| r.id.clone())
                .collect()
        };
        assert_eq!(ids(&m), ["a"]);
        let record = |status| HealthRecord {
            status,
            output: String::new(),
            node: "local".into(),
            updated_ms: 0,
        };
        put(&mut m, "/synod/health/web/b", &record(Status::Passing));
        assert_eq!(ids(&m), ["a", "b"]);
        put(&mut m, "/synod/health/web/b", &record(Status::Critical));
        assert_eq!(ids(&m), ["a"]);
        // The agent's lease expired: no record, so critical again.
        m.apply_put(b"/synod/health/web/b", b"{}");
        m.apply_delete(b"/synod/health/web/b");
        assert_eq!(ids(&m), ["a"]);
        m.apply_delete(b"/synod/services/web/a");
        m.apply_delete(b"/synod/services/web/b");
        assert!(m.services.is_empty(), "{m:?}");
    }

    #[test]
    fn malformed_or_misplaced_values_are_ignored() {
        let mut m = Mirror::default();
        m.apply_put(b"/synod/services/web/a", b"not json");
        // A registration stored under another id's key is not trusted.
        put(
            &mut m,
            "/synod/services/web/x",
            &registration("web", "a", None),
        );
        m.apply_put(b"/synod/services/web", b"{}");
        m.apply_put(b"/synod/services/web/a/b", b"{}");
        assert!(m.instances("web", false).is_empty());
        assert!(m.service_tags().is_empty());
    }

    #[test]
    fn prefix_ends_and_endpoints() {
        assert_eq!(prefix_end("/synod/"), b"/synod0".to_vec());
        assert_eq!(
            parse_endpoints("127.0.0.1:2379, 127.0.0.1:2380").unwrap().0,
            ["http://127.0.0.1:2379", "http://127.0.0.1:2380"]
        );
        assert!(parse_endpoints("").is_err());
        assert!(parse_endpoints("127.0.0.1").is_err());
        assert!(valid_segment("id", "a/b").is_err());
        assert!(valid_segment("id", "").is_err());
        assert!(valid_segment("id", "web-1").is_ok());
    }
}
