//! The Dynamo-style store's HTTP face (`synod up --ap`): `GET`, `PUT` and `DELETE` on
//! `/kv/{bucket}/{key}` of each node's admin port, in the shape of Riak's HTTP API.
//!
//! - The causal context travels in the `X-Synod-Context` header: a read returns it, and a
//!   write or delete that sends it back supersedes exactly the siblings that read saw.
//!   Its text form is `node:counter` pairs joined by commas (`1:4,3:2`); empty is a blind
//!   write.
//! - A read answers `{"siblings": [...], "context": "..."}`: every concurrent value, as
//!   UTF-8 text (lossy), with deletes shown as `null`. 404 if there is no live value.
//! - Query parameters `n`, `r` and `w` lower the bucket's quorum for one request.
//! - Liveness comes from the node's SWIM member ([`feed_swim`]); `?local=true` shows the
//!   peers the node treats as down and whether SWIM or the store's heartbeats said so.

// Handlers return a ready HTTP response as their error; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use crate::node::NodeState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use synod_core::NodeId;
use synod_protocols::clocks::VersionVector;
use synod_protocols::dynamo::{
    BucketProps, Dynamo, DynamoConfig, DynamoCounters, DynamoMsg, Key, PeerStatus, Quorum, Sibling,
};
use synod_protocols::swim::{MemberStatus, Swim};
use synod_runtime::driver::ActorHandle;

/// The header that carries the causal context.
pub const CONTEXT_HEADER: &str = "x-synod-context";

/// How long a request may wait for its quorum.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The store's configuration on a cluster of `nodes`: N = 3, R = 2, W = 2 (fewer replicas
/// on a smaller cluster).
pub fn config(nodes: Vec<NodeId>) -> DynamoConfig {
    let n = u8::try_from(nodes.len().min(3)).unwrap_or(3);
    let mut cfg = DynamoConfig::new(nodes);
    cfg.default_bucket = BucketProps {
        n,
        r: n.div_ceil(2).max(1),
        w: n.div_ceil(2).max(1),
    };
    cfg
}

/// A fresh actor for node `me`.
pub fn actor(me: NodeId, nodes: Vec<NodeId>) -> Dynamo {
    Dynamo::new(me, config(nodes), Arc::new(DynamoCounters::default()))
}

/// How often the SWIM member's view is copied into the store.
const SWIM_POLL: Duration = Duration::from_millis(100);

fn peer_status(status: MemberStatus) -> PeerStatus {
    match status {
        MemberStatus::Alive => PeerStatus::Up,
        MemberStatus::Suspect => PeerStatus::Suspect,
        MemberStatus::Dead | MemberStatus::Left => PeerStatus::Down,
    }
}

/// Feed the node's SWIM view to the store as `PeerEvent`s: every member's status once,
/// then each change. From the first event on, the store takes liveness from SWIM
/// instead of its own heartbeats (which keep gossiping ring membership).
pub fn feed_swim(swim: ActorHandle<Swim>, dynamo: ActorHandle<Dynamo>) {
    tokio::spawn(async move {
        let Ok(session) = dynamo.session().await else {
            return;
        };
        let mut known: BTreeMap<NodeId, PeerStatus> = BTreeMap::new();
        loop {
            let Ok(members) = swim.inspect(|s| s.members()).await else {
                return;
            };
            for m in members {
                let status = peer_status(m.status);
                if known.insert(m.node, status) == Some(status) {
                    continue;
                }
                let event = DynamoMsg::PeerEvent {
                    node: m.node,
                    status,
                };
                if session.send(event).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(SWIM_POLL).await;
        }
    });
}

/// The text form of a context: `node:counter,...`.
pub fn format_context(context: &VersionVector) -> String {
    context
        .iter()
        .map(|(n, c)| format!("{}:{c}", n.0))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parse a context's text form, with an error that says what was wrong.
pub fn parse_context(text: &str) -> Result<VersionVector, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(VersionVector::new());
    }
    text.split(',')
        .map(|pair| {
            let (node, counter) = pair
                .split_once(':')
                .ok_or_else(|| format!("context entry {pair:?} is not node:counter"))?;
            let node = node
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("context entry {pair:?}: {node:?} is not a node id"))?;
            let counter = counter
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("context entry {pair:?}: {counter:?} is not a counter"))?;
            Ok((NodeId(node), counter))
        })
        .collect()
}

/// Query parameters of every request.
#[derive(Debug, Deserialize, Default)]
pub struct QuorumParams {
    n: Option<u8>,
    r: Option<u8>,
    w: Option<u8>,
    /// `local=true` on a GET: this node's own copy and the key's owners, no quorum.
    #[serde(default)]
    local: bool,
}

impl From<QuorumParams> for Quorum {
    fn from(q: QuorumParams) -> Self {
        Quorum {
            n: q.n,
            r: q.r,
            w: q.w,
        }
    }
}

fn sibling_json(s: &Sibling) -> Value {
    match s {
        Sibling::Value(v) => Value::String(String::from_utf8_lossy(v).into_owned()),
        Sibling::Tombstone => Value::Null,
    }
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

fn with_context(code: StatusCode, body: Value, context: &VersionVector) -> Response {
    let mut response = (code, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format_context(context)) {
        response.headers_mut().insert(CONTEXT_HEADER, v);
    }
    response
}

async fn call(state: &NodeState, msg: DynamoMsg) -> Result<DynamoMsg, Response> {
    let Some(dynamo) = &state.dynamo else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "this cluster does not run the AP store; start it with synod up --ap",
        ));
    };
    match dynamo.call(msg, TIMEOUT).await {
        // Refused parameters are the client's fault; a missing quorum is the cluster's.
        Ok(DynamoMsg::Failed { reason }) if reason.contains("must be") => {
            Err(error(StatusCode::BAD_REQUEST, reason))
        }
        Ok(DynamoMsg::Failed { reason }) => Err(error(StatusCode::SERVICE_UNAVAILABLE, reason)),
        Ok(reply) => Ok(reply),
        Err(e) => Err(error(StatusCode::GATEWAY_TIMEOUT, e.to_string())),
    }
}

fn request_context(headers: &HeaderMap) -> Result<VersionVector, Response> {
    match headers.get(CONTEXT_HEADER) {
        None => Ok(VersionVector::new()),
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| error(StatusCode::BAD_REQUEST, "X-Synod-Context is not ASCII text"))?;
            parse_context(text)
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("X-Synod-Context: {e}")))
        }
    }
}

/// `GET /kv/{bucket}/{key}`.
pub async fn get(
    State(state): State<Arc<NodeState>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<QuorumParams>,
) -> Response {
    let key = Key::new(bucket, key);
    if q.local {
        return match call(&state, DynamoMsg::Inspect { key }).await {
            Ok(DynamoMsg::InspectReply {
                object,
                owners,
                down,
                peer_events,
            }) => {
                let object = object.unwrap_or_default();
                let list: Vec<Value> = object.values().map(sibling_json).collect();
                let owners: Vec<u32> = owners.iter().map(|n| n.0).collect();
                let down: Vec<u32> = down.iter().map(|n| n.0).collect();
                let context = object.context();
                let body = json!({
                    "siblings": list,
                    "context": format_context(&context),
                    "owners": owners,
                    "down": down,
                    "liveness": if peer_events { "swim" } else { "heartbeats" },
                });
                with_context(StatusCode::OK, body, &context)
            }
            Ok(other) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected reply {other:?}"),
            ),
            Err(response) => response,
        };
    }
    let msg = DynamoMsg::Get {
        key,
        quorum: q.into(),
    };
    match call(&state, msg).await {
        Ok(DynamoMsg::GetReply { siblings, context }) => {
            let live = siblings.iter().any(|s| matches!(s, Sibling::Value(_)));
            let list: Vec<Value> = siblings.iter().map(sibling_json).collect();
            let code = if live {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            let body = json!({ "siblings": list, "context": format_context(&context) });
            with_context(code, body, &context)
        }
        Ok(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected reply {other:?}"),
        ),
        Err(response) => response,
    }
}

async fn write(
    state: &NodeState,
    bucket: String,
    key: String,
    headers: &HeaderMap,
    q: QuorumParams,
    value: Sibling,
) -> Response {
    let context = match request_context(headers) {
        Ok(c) => c,
        Err(response) => return response,
    };
    let msg = DynamoMsg::Put {
        key: Key::new(bucket, key),
        context,
        value,
        quorum: q.into(),
    };
    match call(state, msg).await {
        Ok(DynamoMsg::PutReply { dot, context }) => {
            let body = json!({
                "dot": format!("{}:{}", dot.node.0, dot.counter),
                "context": format_context(&context),
            });
            with_context(StatusCode::OK, body, &context)
        }
        Ok(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected reply {other:?}"),
        ),
        Err(response) => response,
    }
}

/// `PUT /kv/{bucket}/{key}` with the value as the body.
pub async fn put(
    State(state): State<Arc<NodeState>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<QuorumParams>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let value = Sibling::Value(body.to_vec());
    write(&state, bucket, key, &headers, q, value).await
}

/// `DELETE /kv/{bucket}/{key}`: a tombstone that supersedes what the context saw.
pub async fn delete(
    State(state): State<Arc<NodeState>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<QuorumParams>,
    headers: HeaderMap,
) -> Response {
    write(&state, bucket, key, &headers, q, Sibling::Tombstone).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_text_round_trips_and_bad_text_is_an_error() {
        let c: VersionVector = [(NodeId(1), 4), (NodeId(3), 2)].into_iter().collect();
        assert_eq!(format_context(&c), "1:4,3:2");
        assert_eq!(parse_context("1:4,3:2"), Ok(c));
        assert_eq!(parse_context(""), Ok(VersionVector::new()));
        assert!(parse_context("1-4").unwrap_err().contains("node:counter"));
        assert!(parse_context("x:4").unwrap_err().contains("node id"));
        assert!(parse_context("1:-4").unwrap_err().contains("counter"));
    }
}
