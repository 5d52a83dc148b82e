//! etcd's Lease service over the ranges (`synod up --ranges`).
//!
//! The lease table is the meta group's (see `synod_protocols::txn::lease` for the whole
//! argument): Grant, KeepAlive and TimeToLive are one meta-group command each, through
//! its log; Leases scans the table; a Put with a lease rewrites the lease's record in
//! the same transaction as the key (`ranges::Eval::attach`); Revoke is one transaction
//! that deletes the record and every key still attached, at one revision across
//! ranges. Expiry: the meta group's leader lists leases past its deadlines, and
//! [`reap`], running on every node, revokes those its own node's replica lists (only
//! the leader's lists any).

use super::pb::etcdserverpb as pb;
use super::ranges::{decode_key, mvcc_error, revision, split_value, txn_status};
use super::EtcdNode;
use crate::txn::{TxnError, TxnHost, MAX_ATTEMPTS};
use std::sync::Arc;
use std::time::Duration;
use synod_protocols::mvcc::{LeaseId, MvccError, MAX_LEASE_TTL};
use synod_protocols::txn::lease::{
    lease_key, lease_of_key, LeaseInfo, LeaseRecord, LEASE_END, LEASE_PREFIX,
};
use synod_protocols::txn::{Key, RangeCommand, RangeResult, Route, Timestamp, Value};
use tonic::Status;

/// The shortest TTL granted (etcd raises shorter ones to its minimum, too).
const MIN_TTL: i64 = 2;
/// How often each node asks its meta replica for expired leases.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// One meta-group lease command; an intent on the record (a revoke under way) is
/// pushed and resolved first.
async fn meta_command(host: &Arc<TxnHost>, command: RangeCommand) -> Result<RangeResult, Status> {
    for _ in 0..MAX_ATTEMPTS * 4 {
        let result = host
            .request(Route::Meta, command.clone())
            .await
            .map_err(txn_status)?
            .result;
        match result {
            RangeResult::Locked { txn, key } => {
                host.clear_blocker(txn, key).await.map_err(txn_status)?
            }
            other => return Ok(other),
        }
    }
    Err(txn_status(TxnError::Timeout))
}

fn lease_info(result: RangeResult) -> Result<Option<LeaseInfo>, Status> {
    match result {
        RangeResult::Lease(info) => Ok(info),
        other => Err(Status::internal(format!("{other:?} to a lease request"))),
    }
}

/// `Lease.LeaseGrant`: a nonzero id (random when the request names none), TTL at least
/// [`MIN_TTL`].
pub(crate) async fn grant(
    node: &Arc<EtcdNode>,
    host: &Arc<TxnHost>,
    req: pb::LeaseGrantRequest,
) -> Result<pb::LeaseGrantResponse, Status> {
    if req.ttl > MAX_LEASE_TTL {
        return Err(mvcc_error(MvccError::LeaseTtlTooLarge));
    }
    let ttl = req.ttl.max(MIN_TTL);
    for _ in 0..MAX_ATTEMPTS {
        let id = if req.id != 0 {
            req.id
        } else {
            // etcd's ids are positive int64s.
            (rand::random::<u64>() >> 1).max(1) as i64
        };
        let command = RangeCommand::LeaseGrant {
            id: LeaseId(id),
            ttl,
        };
        match meta_command(host, command).await? {
            RangeResult::Lease(Some(info)) => {
                return Ok(pb::LeaseGrantResponse {
                    header: node.header(revision(info.revision)),
                    id: info.id.0,
                    ttl: info.ttl,
                    error: String::new(),
                })
            }
            RangeResult::LeaseExists if req.id == 0 => continue,
            RangeResult::LeaseExists => return Err(mvcc_error(MvccError::LeaseExists)),
            other => return Err(Status::internal(format!("{other:?} to a lease grant"))),
        }
    }
    Err(mvcc_error(MvccError::LeaseExists))
}

/// `Lease.LeaseRevoke`: the revoke transaction; etcd's "requested lease not found" if
/// there is no such lease.
pub(crate) async fn revoke(
    node: &Arc<EtcdNode>,
    host: &Arc<TxnHost>,
    id: i64,
) -> Result<pb::LeaseRevokeResponse, Status> {
    match revoke_lease(host, LeaseId(id)).await.map_err(txn_status)? {
        Some(at) => Ok(pb::LeaseRevokeResponse {
            header: node.header(revision(at)),
        }),
        None => Err(mvcc_error(MvccError::LeaseNotFound)),
    }
}

/// Whether the stored value of a key carries `lease`.
fn carries(stored: &Option<Value>, lease: LeaseId) -> bool {
    stored
        .as_deref()
        .is_some_and(|v| v.len() >= 8 && split_value(v).0 == lease.0)
}

/// Revoke `lease`: at one snapshot, read its record and every key it lists, then delete
/// the record and the keys that still carry the lease as one transaction (one commit
/// timestamp across ranges). A conflict — a put that attached a key, which rewrote the
/// record, or a write to a listed key — retries at a newer snapshot. `None`: no lease.
pub(crate) async fn revoke_lease(
    host: &Arc<TxnHost>,
    lease: LeaseId,
) -> Result<Option<Timestamp>, TxnError> {
    let record_key = lease_key(lease);
    for attempt in 0..MAX_ATTEMPTS {
        let ts = host.timestamp().await?;
        let Some(record) = host
            .read(&record_key, ts)
            .await?
            .as_deref()
            .and_then(LeaseRecord::decode)
        else {
            return Ok(None);
        };
        let mut writes: Vec<(Key, Option<Value>)> = vec![(record_key.clone(), None)];
        for key in record.keys {
            if carries(&host.read(&key, ts).await?, lease) {
                writes.push((key, None));
            }
        }
        if let Some(at) = host.commit_at(ts, &writes).await? {
            return Ok(Some(at));
        }
        let backoff = rand::random::<u64>() % (2_000 << attempt.min(4));
        tokio::time::sleep(Duration::from_micros(backoff)).await;
    }
    Err(TxnError::Aborted(MAX_ATTEMPTS))
}

/// One keep-alive: the new TTL, 0 if the lease is gone (etcd's answer).
pub(crate) async fn keep_alive(host: &Arc<TxnHost>, id: i64) -> Result<i64, Status> {
    let result = meta_command(host, RangeCommand::LeaseKeepAlive { id: LeaseId(id) }).await?;
    Ok(lease_info(result)?.map_or(0, |info| info.ttl))
}

/// `Lease.LeaseTimeToLive`: the leader's remaining TTL and, if asked, the keys that
/// still carry the lease. An unknown lease answers TTL -1, as etcd does.
pub(crate) async fn time_to_live(
    node: &Arc<EtcdNode>,
    host: &Arc<TxnHost>,
    req: pb::LeaseTimeToLiveRequest,
) -> Result<pb::LeaseTimeToLiveResponse, Status> {
    let lease = LeaseId(req.id);
    let result = meta_command(host, RangeCommand::LeaseTimeToLive { id: lease }).await?;
    let Some(info) = lease_info(result)? else {
        return Ok(pb::LeaseTimeToLiveResponse {
            header: node.header(0),
            id: req.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        });
    };
    let mut keys = Vec::new();
    if req.keys {
        let ts = host.timestamp().await.map_err(txn_status)?;
        for key in &info.keys {
            if carries(&host.read(key, ts).await.map_err(txn_status)?, lease) {
                keys.extend(decode_key(key));
            }
        }
    }
    Ok(pb::LeaseTimeToLiveResponse {
        header: node.header(revision(info.revision)),
        id: req.id,
        ttl: info.remaining,
        granted_ttl: info.ttl,
        keys,
    })
}

/// `Lease.LeaseLeases`: every lease in the table, at a fresh snapshot.
pub(crate) async fn leases(
    node: &Arc<EtcdNode>,
    host: &Arc<TxnHost>,
) -> Result<pb::LeaseLeasesResponse, Status> {
    let ts = host.timestamp().await.map_err(txn_status)?;
    let (rows, _) = host
        .scan(LEASE_PREFIX, Some(LEASE_END), ts, 0, true)
        .await
        .map_err(txn_status)?;
    Ok(pb::LeaseLeasesResponse {
        header: node.header(revision(ts)),
        leases: rows
            .iter()
            .filter_map(|row| lease_of_key(&row.key))
            .map(|id| pb::LeaseStatus { id: id.0 })
            .collect(),
    })
}

/// Revoke the leases this node's meta replica lists as expired (only the meta group's
/// leader lists any), until the node's actor stops.
pub(crate) async fn reap(host: Arc<TxnHost>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(expired) = host.node().inspect(|n| n.expired_leases()).await else {
            return;
        };
        for lease in expired {
            if let Err(e) = revoke_lease(&host, lease).await {
                tracing::debug!(%lease, error = %e, "expired lease not revoked yet");
            }
        }
    }
}
