//! # synod-mesh: a service mesh's data plane
//!
//! The pure pieces take the time as an argument and randomness from a caller-supplied RNG,
//! so they are tested without a wall clock:
//!
//! - [`detect`]: the φ accrual failure detector and RFC 6298 adaptive timeouts.
//! - [`lb`]: round robin, random, least connections, power of two choices with peak EWMA,
//!   smooth weighted round robin, ring hash and Maglev.
//! - [`resilience`]: circuit breaker, outlier ejection, backoff with full jitter, a retry
//!   budget, deadline propagation and hedging.
//!
//! Around them, the driver:
//!
//! - [`config`]: the proxy's TOML file.
//! - [`upstream`]: where instances come from ([`upstream::UpstreamSource`]).
//! - [`proxy`]: the HTTP/1.1, h2c and TCP sidecar proxy with Prometheus metrics.
//! - [`health`]: the registry agent's check verdicts (thresholds, TTL, φ, RTO) and probes.
//! - [`backend`]: a test backend with injected latency and failures.
//! - [`demo`]: strategies and resilience compared under a slow and a flaky instance.
//!
//! See `docs/mesh.md` for the design, defaults and measurements.
#![warn(missing_docs)]

pub mod backend;
pub mod config;
pub mod demo;
pub mod detect;
pub mod health;
pub mod lb;
pub mod proxy;
pub mod resilience;
pub mod upstream;
