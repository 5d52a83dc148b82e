//! # synod-server: the node daemon's pieces
//!
//! - [`config`]: the TOML cluster file.
//! - [`node`]: one node process: transport, hosted services, routing, signals.
//! - [`gateway`]: client requests into the Raft group from any node.
//! - [`admin`]: `/status`, `/metrics` and the `/v1/kv` API over HTTP.
//! - [`run`]: `synod run mutex|election` on the live cluster.
//! - [`mapreduce`]: MapReduce workers for `synod job run --cluster`.
//! - [`wire`]: every message type a node decodes from its peers, for fuzzing.
#![warn(missing_docs)]
// A driver-level crate: it reads the OS clock for uptime and uses std collections freely.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod admin;
pub mod ap;
pub mod config;
pub mod etcd;
pub mod gateway;
pub mod mapreduce;
pub mod node;
pub mod node_runtime;
pub mod run;
pub mod stream;
pub mod txn;
pub mod wire;
