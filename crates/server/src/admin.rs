//! Admin HTTP: `/status` (JSON) and `/metrics` (Prometheus text format 0.0.4).

use crate::gateway::GatewayError;
use crate::node::NodeState;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use synod_protocols::chord::ChordMsg;
use synod_protocols::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, MvccCommand, MvccOutput,
    MvccResponse, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use synod_protocols::raft::Role;

/// The process-wide Prometheus recorder for the `metrics` macros (fsync latency, batch
/// sizes). Installed once, before any actor starts, so the first syncs are counted too.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ];
            let sizes = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .ok()?
                .set_buckets_for_metric(Matcher::Prefix("synod_batch_".into()), &sizes)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Serve the admin endpoint on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<NodeState>) {
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/members", get(members))
        .route("/v1/dht/{key}", get(dht_get).put(dht_put))
        .route(
            "/kv/{bucket}/{key}",
            get(crate::ap::get)
                .put(crate::ap::put)
                .delete(crate::ap::delete),
        )
        .route(
            "/v1/kv/{key}",
            get(kv_get).put(kv_put).delete(kv_delete).post(kv_cas),
        )
        .merge(crate::run::routes())
        .merge(crate::mapreduce::routes())
        .merge(crate::txn::routes())
        .merge(crate::stream::routes())
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<Value> {
    Json(status_json(&state).await)
}

/// `GET /v1/members`: this node's SWIM view, every member with status and incarnation.
async fn members(State(state): State<Arc<NodeState>>) -> (StatusCode, Json<Value>) {
    match state.swim.inspect(|swim| swim.members()).await {
        Ok(members) => (
            StatusCode::OK,
            Json(json!({ "node": state.me.0, "members": members })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

/// A KV API answer: a status code and a JSON body.
type KvResponse = (StatusCode, Json<Value>);

fn kv_error(e: GatewayError) -> KvResponse {
    let code = match e {
        GatewayError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        GatewayError::NoLeader | GatewayError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(json!({ "error": e.to_string() })))
}

fn bad_request(message: String) -> KvResponse {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message })))
}

fn unexpected(output: MvccOutput) -> KvResponse {
    let (code, message) = match output {
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
        Ok(r) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected state machine response {r:?}"),
        ),
    };
    (code, Json(json!({ "error": message })))
}

fn parse_value(body: &str) -> Result<u64, KvResponse> {
    body.trim().parse().map_err(|_| {
        bad_request(format!(
            "the value must be an unsigned 64-bit integer, not {:?}",
            body.chars().take(40).collect::<String>()
        ))
    })
}

/// The u64 a key holds in the store (its value as decimal text).
fn stored_u64(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// `GET /v1/kv/{key}`: a linearizable read (ReadIndex on the leader). The KV API is a
/// thin face on the etcd store: values are u64s kept as decimal text.
async fn kv_get(State(state): State<Arc<NodeState>>, Path(key): Path<String>) -> KvResponse {
    let range = RangeRequest {
        key: key.clone().into_bytes(),
        ..RangeRequest::default()
    };
    match state.kv.read(MvccCommand::Range(range)).await {
        Ok(Ok(MvccResponse::Range(r))) => match r.kvs.first() {
            Some(kv) => match stored_u64(&kv.value) {
                Some(value) => (StatusCode::OK, Json(json!({ "key": key, "value": value }))),
                None => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(
                        json!({ "key": key, "error": "the value is not a u64; read it with etcdctl" }),
                    ),
                ),
            },
            None => (
                StatusCode::NOT_FOUND,
                Json(json!({ "key": key, "error": "key not found" })),
            ),
        },
        Ok(other) => unexpected(other),
        Err(e) => kv_error(e),
    }
}

/// `PUT /v1/kv/{key}` with the value as the body: acknowledged once committed.
async fn kv_put(
    State(state): State<Arc<NodeState>>,
    Path(key): Path<String>,
    body: String,
) -> KvResponse {
    let value = match parse_value(&body) {
        Ok(v) => v,
        Err(response) => return response,
    };
    let put = PutRequest {
        key: key.clone().into_bytes(),
        value: value.to_string().into_bytes(),
        ..PutRequest::default()
    };
    match state.kv.write(MvccCommand::Put(put)).await {
        Ok(Ok(_)) => (StatusCode::OK, Json(json!({ "key": key, "value": value }))),
        Ok(other) => unexpected(other),
        Err(e) => kv_error(e),
    }
}

/// `DELETE /v1/kv/{key}`.
async fn kv_delete(State(state): State<Arc<NodeState>>, Path(key): Path<String>) -> KvResponse {
    let delete = DeleteRangeRequest {
        key: key.clone().into_bytes(),
        ..DeleteRangeRequest::default()
    };
    match state.kv.write(MvccCommand::DeleteRange(delete)).await {
        Ok(Ok(_)) => (StatusCode::OK, Json(json!({ "key": key, "deleted": true }))),
        Ok(other) => unexpected(other),
        Err(e) => kv_error(e),
    }
}

/// `POST /v1/kv/{key}?expect=V` (or `expect=absent`) with the new value as the body: a
/// compare-and-set, as one etcd Txn.
async fn kv_cas(
    State(state): State<Arc<NodeState>>,
    Path(key): Path<String>,
    Query(query): Query<std::collections::BTreeMap<String, String>>,
    body: String,
) -> KvResponse {
    let compare = match query.get("expect").map(String::as_str) {
        None => {
            return bad_request("a compare-and-set needs ?expect=VALUE or ?expect=absent".into())
        }
        // An absent key has create revision 0.
        Some("absent") => Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Create(0),
            key: key.clone().into_bytes(),
            range_end: Vec::new(),
        },
        Some(v) => match parse_value(v) {
            Ok(v) => Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Value(v.to_string().into_bytes()),
                key: key.clone().into_bytes(),
                range_end: Vec::new(),
            },
            Err(response) => return response,
        },
    };
    let new = match parse_value(&body) {
        Ok(v) => v,
        Err(response) => return response,
    };
    let txn = TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp::Put(PutRequest {
            key: key.clone().into_bytes(),
            value: new.to_string().into_bytes(),
            ..PutRequest::default()
        })],
        failure: Vec::new(),
    };
    match state.kv.write(MvccCommand::Txn(txn)).await {
        Ok(Ok(MvccResponse::Txn(r))) => {
            let code = if r.succeeded {
                StatusCode::OK
            } else {
                StatusCode::PRECONDITION_FAILED
            };
            (code, Json(json!({ "key": key, "swapped": r.succeeded })))
        }
        Ok(other) => unexpected(other),
        Err(e) => kv_error(e),
    }
}

/// `GET /v1/dht/{key}`: route through the Chord ring to the key's owner.
async fn dht_get(State(state): State<Arc<NodeState>>, Path(key): Path<String>) -> KvResponse {
    let request = ChordMsg::Get {
        key: key.clone().into_bytes(),
    };
    dht_answer(&state, &key, request).await
}

/// `PUT /v1/dht/{key}` with the value as the body: stored at the owner and its replicas.
async fn dht_put(
    State(state): State<Arc<NodeState>>,
    Path(key): Path<String>,
    body: String,
) -> KvResponse {
    let request = ChordMsg::Put {
        key: key.clone().into_bytes(),
        value: body.into_bytes(),
    };
    dht_answer(&state, &key, request).await
}

async fn dht_answer(state: &NodeState, key: &str, request: ChordMsg) -> KvResponse {
    match state.chord.call(request, Duration::from_secs(5)).await {
        Ok(ChordMsg::PutOk { owner, route, .. }) => (
            StatusCode::OK,
            Json(
                json!({ "key": key, "owner": owner.node.to_string(), "hops": route.hops, "timeouts": route.timeouts }),
            ),
        ),
        Ok(ChordMsg::GetOk {
            value: Some(value),
            owner,
            route,
            ..
        }) => (
            StatusCode::OK,
            Json(
                json!({ "key": key, "value": String::from_utf8_lossy(&value), "owner": owner.node.to_string(), "hops": route.hops, "timeouts": route.timeouts }),
            ),
        ),
        Ok(ChordMsg::GetOk { owner, .. }) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "key": key, "error": "key not found", "owner": owner.node.to_string() })),
        ),
        Ok(ChordMsg::Failed { reason, .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "key": key, "error": reason })),
        ),
        Ok(other) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": format!("unexpected answer {other:?}") })),
        ),
        Err(e) => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(json!({ "key": key, "error": e.to_string() })),
        ),
    }
}

/// The node's status document.
pub async fn status_json(state: &NodeState) -> Value {
    let deadline = Duration::from_secs(2);
    let beacon = tokio::time::timeout(
        deadline,
        state.beacon.inspect(|b| {
            let peers: serde_json::Map<String, Value> = b
                .views()
                .iter()
                .map(|(peer, view)| {
                    (
                        peer.to_string(),
                        json!({ "incarnation": view.incarnation, "seq": view.seq,
                                "last_heard_ns": view.last_heard.0 }),
                    )
                })
                .collect();
            json!({ "incarnation": b.incarnation(), "appends": b.appends(), "heard": peers })
        }),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or(Value::Null);
    let clock = tokio::time::timeout(
        deadline,
        state.clock_sync.inspect(|c| {
            json!({
                "server": c.config().server.to_string(),
                "is_server": c.is_server(),
                "synchronized": c.is_synchronized(),
                "offset_ns": c.offset_estimate().map(|o| o.0 as i64),
                "error_bound_ns": c.error_bound().map(|d| d.as_nanos() as u64),
                "last_delay_ns": c.last_delay().map(|d| d.as_nanos() as u64),
                "frequency_ppb": c.frequency_ppb(),
                "samples": c.samples_accepted(),
            })
        }),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or(Value::Null);
    let raft = tokio::time::timeout(
        deadline,
        state.raft.inspect(|r| {
            json!({
                "role": match r.role() {
                    Role::Leader => "leader",
                    Role::Candidate => "candidate",
                    Role::PreCandidate => "pre-candidate",
                    Role::Follower => "follower",
                },
                "term": r.current_term().0,
                "leader": r.leader().map(|l| l.to_string()),
                "commit_index": r.commit_index().0,
                "last_applied": r.last_applied().0,
                "snapshot_index": r.snapshot_index().0,
            })
        }),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or(Value::Null);
    let transport = state.transport.stats();
    let peers: serde_json::Map<String, Value> = transport
        .peers
        .iter()
        .map(|(peer, s)| {
            (
                peer.to_string(),
                json!({
                    "connected": s.connected,
                    "messages_sent": s.messages_sent,
                    "messages_received": s.messages_received,
                    "bytes_sent": s.bytes_sent,
                    "bytes_received": s.bytes_received,
                    "dropped": s.dropped,
                    "reconnects": s.reconnects,
                    "queue_depth": s.queue_depth,
                    "last_error": s.last_error,
                }),
            )
        })
        .collect();
    json!({
        "node": state.me.to_string(),
        "cluster_id": state.config.cluster_id,
        "pid": std::process::id(),
        "uptime_s": state.started.elapsed().as_secs_f64(),
        "tls": !state.config.insecure,
        "peers": peers,
        "rejected_connections": transport.rejected_connections,
        "beacon": beacon,
        "clock_sync": clock,
        "raft": raft,
    })
}

/// A metric read from a statistics snapshot: name, type, help text, and the reader.
type Metric<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

/// Append one Prometheus family per metric, with a sample per labelled row.
fn write_families<T>(out: &mut String, metrics: &[Metric<T>], rows: &[(String, &T)]) {
    for (name, kind, help, read) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, stats) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {}", read(stats));
        }
    }
}

async fn metrics(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    let mut out = recorder().map(|h| h.render()).unwrap_or_default();
    let node = state.me.to_string();
    let raft = state
        .raft
        .inspect(|r| {
            (
                r.current_term().0,
                r.commit_index().0,
                r.last_applied().0,
                u64::from(r.role() == Role::Leader),
            )
        })
        .await
        .ok();
    if let Some((term, commit, applied, leader)) = raft {
        for (name, help, value) in [
            ("synod_raft_term", "The current Raft term.", term),
            (
                "synod_raft_commit_index",
                "The highest log index known committed.",
                commit,
            ),
            (
                "synod_raft_applied_index",
                "The highest log index applied.",
                applied,
            ),
            (
                "synod_raft_is_leader",
                "1 if this node is the Raft leader.",
                leader,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{node}\"}} {value}"
            );
        }
    }
    let transport = state.transport.stats();
    let peer_metrics: [Metric<synod_runtime::transport::PeerStats>; 7] = [
        (
            "synod_peer_messages_sent_total",
            "counter",
            "Messages sent to the peer.",
            |s| s.messages_sent,
        ),
        (
            "synod_peer_messages_received_total",
            "counter",
            "Messages received from the peer.",
            |s| s.messages_received,
        ),
        (
            "synod_peer_bytes_sent_total",
            "counter",
            "Frame bytes sent to the peer.",
            |s| s.bytes_sent,
        ),
        (
            "synod_peer_bytes_received_total",
            "counter",
            "Frame bytes received from the peer.",
            |s| s.bytes_received,
        ),
        (
            "synod_peer_dropped_total",
            "counter",
            "Messages dropped because the peer queue was full or the peer down.",
            |s| s.dropped,
        ),
        (
            "synod_peer_queue_depth",
            "gauge",
            "Messages waiting in the peer's outbound queue.",
            |s| s.queue_depth as u64,
        ),
        (
            "synod_peer_connected",
            "gauge",
            "1 while a connection to the peer is up.",
            |s| u64::from(s.connected),
        ),
    ];
    let peers: Vec<(String, &_)> = transport
        .peers
        .iter()
        .map(|(peer, s)| (format!("node=\"{node}\",peer=\"{peer}\""), s))
        .collect();
    write_families(&mut out, &peer_metrics, &peers);
    let actor_metrics: [Metric<synod_runtime::driver::ActorStats>; 6] = [
        (
            "synod_actor_overflow_dropped_total",
            "counter",
            "Peer messages dropped because the actor's queue was full.",
            |s| s.overflow_dropped.load(Ordering::Relaxed),
        ),
        (
            "synod_actor_batches_total",
            "counter",
            "Group-commit batches run.",
            |s| s.batches.load(Ordering::Relaxed),
        ),
        (
            "synod_actor_inputs_total",
            "counter",
            "Messages, requests and timers handled.",
            |s| s.inputs.load(Ordering::Relaxed),
        ),
        (
            "synod_actor_syncs_total",
            "counter",
            "Storage syncs (one fdatasync each).",
            |s| s.syncs.load(Ordering::Relaxed),
        ),
        (
            "synod_actor_bad_messages_total",
            "counter",
            "Peer messages that failed to decode.",
            |s| s.bad_messages.load(Ordering::Relaxed),
        ),
        (
            "synod_actor_inbox_depth",
            "gauge",
            "Inputs waiting when the last batch started.",
            |s| s.inbox_depth.load(Ordering::Relaxed),
        ),
    ];
    let actors: Vec<(String, &_)> = state
        .actor_stats
        .iter()
        .map(|(service, s)| (format!("node=\"{node}\",service=\"{service}\""), s.as_ref()))
        .collect();
    write_families(&mut out, &actor_metrics, &actors);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
