//! Where the proxy learns a service's instances.
//!
//! [`UpstreamSource`] hands out a watch channel per service; the proxy rebuilds its
//! balancer whenever the list changes, keeping the health, breaker and latency state of
//! instances that stay. [`StaticSource`] serves the lists from the config file; a source
//! backed by the cluster's service registry (leases in the Raft KV, watch-based discovery)
//! implements the same trait.

use crate::config::ProxyConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Unique within the service.
    pub id: String,
    /// Where it listens.
    pub address: SocketAddr,
    /// Relative weight.
    pub weight: u32,
    /// Tags, which a service's `tags` filter matches.
    pub tags: Vec<String>,
    /// Metadata (a service's `weight_key` may read the weight from it).
    pub meta: BTreeMap<String, String>,
}

impl Instance {
    /// An instance with weight 1 and no tags or metadata.
    pub fn new(id: impl Into<String>, address: SocketAddr) -> Self {
        Instance {
            id: id.into(),
            address,
            weight: 1,
            tags: Vec::new(),
            meta: BTreeMap::new(),
        }
    }

    /// Whether it carries every tag in `wanted`.
    pub fn has_tags(&self, wanted: &[String]) -> bool {
        wanted.iter().all(|t| self.tags.contains(t))
    }

    /// Its weight: the value under `key` in its metadata if that is a positive integer,
    /// else `weight`. The error says why a present value was not used.
    pub fn effective_weight(&self, key: Option<&str>) -> (u32, Option<String>) {
        let Some(value) = key.and_then(|k| self.meta.get(k)) else {
            return (self.weight, None);
        };
        match value.trim().parse::<u32>() {
            Ok(w) if w > 0 => (w, None),
            _ => (
                self.weight,
                Some(format!(
                    "metadata weight {value:?} is not a positive integer; using {}",
                    self.weight
                )),
            ),
        }
    }
}

/// The instances of a service, as they change.
pub type InstanceList = Arc<Vec<Instance>>;

/// A source of service instances.
pub trait UpstreamSource: Send + Sync + 'static {
    /// The current instances of `service` and their future changes, or `None` if the
    /// source knows no such service.
    fn subscribe(&self, service: &str) -> Option<watch::Receiver<InstanceList>>;
}

/// Instances fixed in the config file (or set by hand, for tests).
#[derive(Debug, Default)]
pub struct StaticSource {
    services: BTreeMap<String, watch::Sender<InstanceList>>,
}

impl StaticSource {
    /// The instances listed in `config`.
    pub fn from_config(config: &ProxyConfig) -> Self {
        let mut source = StaticSource::default();
        for service in &config.services {
            let instances = service
                .instances
                .iter()
                .map(|i| Instance {
                    id: i.id(),
                    address: i.address,
                    weight: i.weight,
                    tags: i.tags.clone(),
                    meta: i.meta.clone(),
                })
                .collect();
            source.insert(&service.name, instances);
        }
        source
    }

    /// Add or replace a service's instances.
    pub fn insert(&mut self, service: &str, instances: Vec<Instance>) {
        match self.services.get(service) {
            Some(sender) => {
                sender.send_replace(Arc::new(instances));
            }
            None => {
                let (sender, _) = watch::channel(Arc::new(instances));
                self.services.insert(service.to_string(), sender);
            }
        }
    }

    /// Replace a known service's instances; subscribers see the change. Returns whether
    /// the service was known.
    pub fn update(&self, service: &str, instances: Vec<Instance>) -> bool {
        match self.services.get(service) {
            Some(sender) => {
                sender.send_replace(Arc::new(instances));
                true
            }
            None => false,
        }
    }
}

impl UpstreamSource for StaticSource {
    fn subscribe(&self, service: &str) -> Option<watch::Receiver<InstanceList>> {
        self.services.get(service).map(watch::Sender::subscribe)
    }
}
