//! What the commands that talk to a node's admin HTTP API share: finding the node's
//! address, a runtime and a client, and percent-encoding keys into URL paths.

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use synod_server::config::ClusterConfig;

/// The admin (HTTP) address of `node`, or of the first node.
pub(crate) fn admin_addr(config: &ClusterConfig, node: Option<u32>) -> Result<SocketAddr> {
    let found = match node {
        Some(id) => config.nodes.iter().find(|n| n.id == id),
        None => config.nodes.first(),
    };
    found
        .map(|n| n.admin_addr)
        .ok_or_else(|| anyhow!("node {} is not in the cluster", node.unwrap_or(0)))
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .context("building the HTTP client")
}

/// Percent-encode a key for a URL path segment (RFC 3986 unreserved bytes stay).
pub(crate) fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
