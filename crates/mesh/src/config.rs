//! The proxy's configuration file (TOML): services, their instances, and the policies that
//! apply to them. Every field but `name`, `listen` and the instances has a default.
//!
//! ```toml
//! admin = "127.0.0.1:9901"          # Prometheus /metrics and /status (optional)
//!
//! [[service]]
//! name = "web"
//! listen = "127.0.0.1:8080"
//! protocol = "http"                 # http (HTTP/1.1 and h2c) or tcp
//! lb = "p2c-ewma"                   # round-robin, random, least-connections, p2c-ewma,
//!                                   # weighted, ring-hash, maglev
//! timeout_ms = 5000                 # per request, across retries; capped by the caller's
//!                                   # x-synod-timeout-ms or grpc-timeout
//! hash_header = "x-user"            # ring-hash and maglev key (default: client address)
//! tags = ["v2"]                     # route only to instances carrying every one of these
//! weight_key = "weight"             # metadata key that overrides an instance's weight
//! lean_http1 = true                 # HTTP/1.1 by the proxy's own codec (false: hyper)
//! instances = [
//!   { id = "a", address = "127.0.0.1:9001", weight = 2, tags = ["v2"] },
//!   { id = "b", address = "127.0.0.1:9002", tags = ["v2"], meta = { weight = "3" } },
//!   { id = "c", address = "127.0.0.1:9003", tags = ["v1"] },
//! ]
//! [service.retry]                   # defaults shown; max_retries = 0 turns retries off
//! max_retries = 2
//! backoff_base_ms = 5
//! backoff_cap_ms = 200
//! budget_ratio = 0.2
//! budget_min_per_second = 10
//! [service.breaker]                 # enabled = false turns it off
//! consecutive_failures = 5
//! failure_rate = 0.5
//! [service.outlier]
//! consecutive_failures = 5
//! [service.health]                  # active checks; kind = "tcp", "http" or "none"
//! kind = "http"
//! path = "/health"
//! interval_ms = 1000
//! [service.hedge]                   # off unless present
//! quantile = 0.95
//! ```

use crate::lb::Strategy;
use crate::resilience::{Backoff, BreakerConfig, BudgetConfig, OutlierConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML, or a field of the wrong type or name.
    #[error("{0}")]
    Parse(String),
    /// Valid TOML that describes something impossible.
    #[error("service {service:?}: {problem}")]
    Invalid {
        /// The service the problem is in.
        service: String,
        /// What is wrong.
        problem: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where to serve `/metrics` and `/status`.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Worker threads, each a single-threaded event loop with its own upstream connection
    /// pool (nginx's model); one acceptor per service deals client connections to them in
    /// turn. Zero serves everything on the runtime that started the proxy; so does leaving
    /// it out, for the library (`synod mesh proxy` then uses one worker per CPU).
    #[serde(default)]
    pub workers: Option<usize>,
    /// The proxied services.
    #[serde(rename = "service", default)]
    pub services: Vec<ServiceConfig>,
}

/// What the proxy speaks on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on the same port.
    Http,
    /// Opaque TCP: one upstream connection per client connection.
    Tcp,
}

/// One service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Its name (metrics label).
    pub name: String,
    /// Where the proxy listens for it.
    pub listen: SocketAddr,
    /// HTTP or TCP.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Load-balancing strategy name.
    #[serde(default = "default_lb")]
    pub lb: String,
    /// Whole-request timeout in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Request header whose value is the hash key.
    #[serde(default)]
    pub hash_header: Option<String>,
    /// Speak HTTP/2 (h2c) to the upstreams instead of HTTP/1.1.
    #[serde(default)]
    pub upstream_http2: bool,
    /// Largest request body buffered for retries, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Serve HTTP/1.1 clients with the proxy's own lean codec, which reads a request,
    /// forwards it on a pooled upstream connection and streams the answer back within the
    /// client connection's task (the default). `false` serves everything with hyper, as
    /// HTTP/2, upgrades, `Expect` and hedged services always are.
    #[serde(default = "yes")]
    pub lean_http1: bool,
    /// The instances, for the static upstream source.
    #[serde(default)]
    pub instances: Vec<InstanceConfig>,
    /// Route only to instances that carry every one of these tags (from the file or the
    /// registry); empty, the default, routes to all.
    #[serde(default)]
    pub tags: Vec<String>,
    /// A metadata key whose value, a positive integer, is the instance's weight for the
    /// weighted and hash strategies in place of its `weight`. An instance without the key
    /// keeps its `weight`; one with a value that is not a positive integer is logged and
    /// keeps it too.
    #[serde(default)]
    pub weight_key: Option<String>,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Circuit breaker per instance.
    #[serde(default)]
    pub breaker: BreakerSection,
    /// Outlier ejection.
    #[serde(default)]
    pub outlier: OutlierSection,
    /// Active health checks.
    #[serde(default)]
    pub health: HealthSection,
    /// Hedging (off unless the section is present).
    #[serde(default)]
    pub hedge: Option<HedgeSection>,
}

fn default_protocol() -> Protocol {
    Protocol::Http
}
fn default_lb() -> String {
    "round-robin".into()
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_max_body() -> usize {
    8 << 20
}

/// One upstream instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// A name unique within the service (defaults to the address).
    #[serde(default)]
    pub id: Option<String>,
    /// Where it listens.
    pub address: SocketAddr,
    /// Relative weight for the weighted and hash strategies.
    #[serde(default = "one")]
    pub weight: u32,
    /// Tags, for the service's `tags` filter.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata, for the service's `weight_key`.
    #[serde(default)]
    pub meta: std::collections::BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}

/// `[service.retry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff base.
    pub backoff_base_ms: u64,
    /// Backoff cap.
    pub backoff_cap_ms: u64,
    /// Retry budget: extra load allowed, as a fraction of requests.
    pub budget_ratio: f64,
    /// Retry budget: retries per second always allowed.
    pub budget_min_per_second: u32,
    /// Timeout of one attempt (default: whatever is left of the request's deadline).
    pub per_try_timeout_ms: Option<u64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            backoff_base_ms: 5,
            backoff_cap_ms: 200,
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            per_try_timeout_ms: None,
        }
    }
}

/// `[service.breaker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSection {
    /// Whether the breaker is used.
    pub enabled: bool,
    /// Failures in a row that trip it (0: rule off).
    pub consecutive_failures: u32,
    /// Failure rate that trips it (0: rule off).
    pub failure_rate: f64,
    /// Outcomes needed in the window for the rate rule.
    pub minimum_requests: u64,
    /// Window length.
    pub window_ms: u64,
    /// Time open before probing.
    pub open_ms: u64,
    /// Concurrent probes when half-open.
    pub half_open_probes: u32,
    /// Successful probes to close.
    pub successes_to_close: u32,
}

impl Default for BreakerSection {
    fn default() -> Self {
        let d = BreakerConfig::default();
        BreakerSection {
            enabled: true,
            consecutive_failures: d.consecutive_failures.unwrap_or(0),
            failure_rate: d.failure_rate.unwrap_or(0.0),
            minimum_requests: d.minimum_requests,
            window_ms: millis(d.window),
            open_ms: millis(d.open_duration),
            half_open_probes: d.half_open_probes,
            successes_to_close: d.successes_to_close,
        }
    }
}

/// `[service.outlier]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSection {
    /// Whether outlier ejection is used.
    pub enabled: bool,
    /// Failures in a row that eject (0: rule off).
    pub consecutive_failures: u32,
    /// Interval of the success-rate rule.
    pub interval_ms: u64,
    /// First ejection's length.
    pub base_ejection_ms: u64,
    /// Longest ejection.
    pub max_ejection_ms: u64,
    /// Most instances ejected at once, in percent (one always may be).
    pub max_ejection_percent: u32,
    /// Qualifying instances the success-rate rule needs (0: rule off).
    pub success_rate_minimum_hosts: usize,
    /// Requests per interval for an instance to qualify.
    pub success_rate_request_volume: u64,
    /// Standard deviations below the mean that eject.
    pub success_rate_stdev_factor: f64,
}

impl Default for OutlierSection {
    fn default() -> Self {
        let d = OutlierConfig::default();
        OutlierSection {
            enabled: true,
            consecutive_failures: d.consecutive_failures.unwrap_or(0),
            interval_ms: millis(d.interval),
            base_ejection_ms: millis(d.base_ejection_time),
            max_ejection_ms: millis(d.max_ejection_time),
            max_ejection_percent: 50,
            success_rate_minimum_hosts: d.success_rate_minimum_hosts.unwrap_or(0),
            success_rate_request_volume: d.success_rate_request_volume,
            success_rate_stdev_factor: d.success_rate_stdev_factor,
        }
    }
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// No active checks; only passive detection.
    None,
    /// A TCP connect.
    Tcp,
    /// An HTTP GET expecting 2xx.
    Http,
}

/// `[service.health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// What to check.
    pub kind: CheckKind,
    /// Path for HTTP checks.
    pub path: String,
    /// Time between checks.
    pub interval_ms: u64,
    /// Fixed check timeout; absent means the instance's RFC 6298 RTO.
    pub timeout_ms: Option<u64>,
    /// Passes in a row that make an unhealthy instance healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy instance unhealthy.
    pub unhealthy_threshold: u32,
    /// φ at which an instance whose checks went silent is suspected (0: off).
    pub phi_threshold: f64,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            kind: CheckKind::Tcp,
            path: "/health".into(),
            interval_ms: 1000,
            timeout_ms: None,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            phi_threshold: 8.0,
        }
    }
}

/// `[service.hedge]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeSection {
    /// Fixed delay before the hedge.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Or: the quantile of recent latencies (default 0.95).
    #[serde(default)]
    pub quantile: Option<f64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ProxyConfig {
    /// Parse and validate a configuration file's text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: ProxyConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Check what serde cannot: names, ranges and uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for s in &self.services {
            let invalid = |problem: String| ConfigError::Invalid {
                service: s.name.clone(),
                problem,
            };
            if s.name.is_empty() {
                return Err(invalid("the name is empty".into()));
            }
            if !names.insert(&s.name) {
                return Err(invalid("two services have this name".into()));
            }
            s.strategy().map_err(invalid)?;
            if s.timeout_ms == 0 {
                return Err(invalid("timeout_ms must be positive".into()));
            }
            let mut ids = std::collections::BTreeSet::new();
            for i in &s.instances {
                if !ids.insert(i.id()) {
                    return Err(invalid(format!("instance id {:?} appears twice", i.id())));
                }
                if i.weight == 0 {
                    return Err(invalid(format!("instance {:?} has weight 0", i.id())));
                }
            }
            if s.tags.iter().any(|t| t.is_empty()) {
                return Err(invalid("tags has an empty tag".into()));
            }
            if s.weight_key.as_ref().is_some_and(|k| k.is_empty()) {
                return Err(invalid("weight_key is empty".into()));
            }
            if !(0.0..=10.0).contains(&s.retry.budget_ratio) {
                return Err(invalid(
                    "retry.budget_ratio must be between 0 and 10".into(),
                ));
            }
            if !(0.0..=1.0).contains(&s.breaker.failure_rate) {
                return Err(invalid(
                    "breaker.failure_rate must be between 0 and 1".into(),
                ));
            }
            if s.health.interval_ms == 0 {
                return Err(invalid("health.interval_ms must be positive".into()));
            }
            if s.health.kind == CheckKind::Http && s.protocol == Protocol::Tcp {
                return Err(invalid("an HTTP health check on a TCP service".into()));
            }
            if let Some(h) = &s.hedge {
                if h.quantile.is_some_and(|q| !(0.0..=1.0).contains(&q)) {
                    return Err(invalid("hedge.quantile must be between 0 and 1".into()));
                }
            }
        }
        Ok(())
    }
}

impl InstanceConfig {
    /// The instance's id, or its address when none was given.
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.address.to_string())
    }
}

impl ServiceConfig {
    /// The load-balancing strategy.
    pub fn strategy(&self) -> Result<Strategy, String> {
        self.lb.parse()
    }

    /// The breaker settings, or `None` when disabled.
    pub fn breaker_config(&self) -> Option<BreakerConfig> {
        let b = &self.breaker;
        b.enabled.then(|| BreakerConfig {
            consecutive_failures: (b.consecutive_failures > 0).then_some(b.consecutive_failures),
            failure_rate: (b.failure_rate > 0.0).then_some(b.failure_rate),
            minimum_requests: b.minimum_requests,
            window: Duration::from_millis(b.window_ms.max(1)),
            window_buckets: 10,
            open_duration: Duration::from_millis(b.open_ms),
            half_open_probes: b.half_open_probes.max(1),
            successes_to_close: b.successes_to_close.max(1),
        })
    }

    /// The outlier settings, or `None` when disabled.
    pub fn outlier_config(&self) -> Option<OutlierConfig> {
        let o = &self.outlier;
        o.enabled.then(|| OutlierConfig {
            consecutive_failures: (o.consecutive_failures > 0).then_some(o.consecutive_failures),
            interval: Duration::from_millis(o.interval_ms.max(1)),
            base_ejection_time: Duration::from_millis(o.base_ejection_ms),
            max_ejection_time: Duration::from_millis(o.max_ejection_ms),
            max_ejection_percent: o.max_ejection_percent,
            success_rate_minimum_hosts: (o.success_rate_minimum_hosts > 0)
                .then_some(o.success_rate_minimum_hosts),
            success_rate_request_volume: o.success_rate_request_volume,
            success_rate_stdev_factor: o.success_rate_stdev_factor,
        })
    }

    /// The backoff between retries.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.retry.backoff_base_ms),
            cap: Duration::from_millis(self.retry.backoff_cap_ms),
        }
    }

    /// The retry budget.
    pub fn budget_config(&self) -> BudgetConfig {
        BudgetConfig {
            ratio: self.retry.budget_ratio,
            ttl: Duration::from_secs(10),
            min_retries_per_second: self.retry.budget_min_per_second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        admin = "127.0.0.1:9901"
        [[service]]
        name = "web"
        listen = "127.0.0.1:8080"
        lb = "maglev"
        instances = [
            { id = "a", address = "127.0.0.1:9001", weight = 2 },
            { address = "127.0.0.1:9002" },
        ]
        [service.retry]
        max_retries = 3
        [service.hedge]
        quantile = 0.9
    "#;

    #[test]
    fn a_full_config_parses_with_defaults_filled_in() {
        let config = ProxyConfig::parse(GOOD).unwrap();
        let web = &config.services[0];
        assert_eq!(web.strategy(), Ok(Strategy::Maglev));
        assert_eq!(web.instances[1].id(), "127.0.0.1:9002");
        assert_eq!(web.retry.max_retries, 3);
        assert_eq!(web.retry.budget_ratio, 0.2);
        assert!(web.breaker_config().is_some());
        assert_eq!(web.health.kind, CheckKind::Tcp);
    }

    #[test]
    fn mistakes_get_errors_that_name_them() {
        let cases = [
            (GOOD.replace("maglev", "fastest"), "fastest"),
            (GOOD.replace("max_retries", "max_retry"), "max_retry"),
            (GOOD.replace("127.0.0.1:8080", "localhost"), "listen"),
            (GOOD.replace("weight = 2", "weight = 0"), "weight 0"),
            (GOOD.replace("quantile = 0.9", "quantile = 9.0"), "quantile"),
            (GOOD.replace("{ address", "{ id = \"a\", address"), "twice"),
            ("[[service]\n".to_string(), "expected"),
            (
                GOOD.replace("lb = \"maglev\"", "lb = \"maglev\"\ntags = [\"\"]"),
                "empty tag",
            ),
            (
                GOOD.replace("lb = \"maglev\"", "lb = \"maglev\"\nweight_key = \"\""),
                "weight_key",
            ),
            (
                GOOD.replace("weight = 2", "weight = 2, tags = \"v1\""),
                "tags",
            ),
        ];
        for (text, expected) in cases {
            let err = ProxyConfig::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
    }
}
