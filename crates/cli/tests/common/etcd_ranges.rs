//! What the etcd-over-ranges tests share: where an etcd key is stored, and which range
//! holds it as a node's admin API reports.

use super::request;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// The ranges' key of an etcd key (etcd/ranges.rs: `e/` + hex).
pub(crate) fn stored(key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("e/{hex}")
}

/// Every range node `admin` lists on `/v1/txn/ranges` (empty if it does not answer).
pub(crate) fn ranges(admin: SocketAddr) -> Vec<Value> {
    request(admin, "GET", "/v1/txn/ranges", "", Duration::from_secs(3))
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| v["ranges"].as_array().cloned())
        .unwrap_or_default()
}

/// The id of the data range that holds etcd key `key`, as node `admin` sees it.
pub(crate) fn range_of(admin: SocketAddr, key: &str) -> Option<u64> {
    let k = stored(key);
    ranges(admin).into_iter().find_map(|r| {
        let holds = r["serves_keys"] == true
            && r["start"].as_str().is_some_and(|s| k.as_str() >= s)
            && r["end"].as_str().is_none_or(|e| k.as_str() < e);
        holds.then(|| r["id"].as_u64()).flatten()
    })
}
