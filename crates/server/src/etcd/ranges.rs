//! etcd's KV service over the multi-Raft ranges (`synod up --ranges`, issue 11).
//!
//! With `--ranges`, Range, Put, DeleteRange and Txn on the client ports are served by
//! the node's transaction coordinator ([`TxnHost`]) instead of the single MVCC Raft
//! group of service 3:
//!
//! - **Keys.** An etcd key (bytes) is stored as `e/` followed by its lower-case hex. Hex
//!   of fixed width per byte preserves byte order (and prefixes), so an etcd interval
//!   `[key, range_end)` is one interval of the ranges' keyspace, splits fall anywhere
//!   inside it, and a scan crosses range boundaries in key order. The `e/` prefix keeps
//!   etcd's keys apart from the `/v1/txn` API's.
//! - **Revisions** are the oracle's timestamps: `mod_revision` is the commit timestamp
//!   of the version read, `create_revision` the commit timestamp of the first put since
//!   the key's last delete, `version` the number of puts since then, all derived from
//!   the version chain. They are unique, increase in commit order and real time across
//!   all ranges, and every key a transaction writes gets the same revision, as in etcd.
//!   Unlike etcd's they are not dense: every start timestamp, every aborted attempt and
//!   every read takes a number from the same counter. A client sees the difference only
//!   as gaps (etcd clients use revisions as opaque ordered numbers: compare them, read
//!   at one, watch from one), so `etcdctl` and clientv3 are unaffected.
//! - **Reads** (`Range`, also `serializable` ones) are snapshot reads at a fresh
//!   timestamp, or at `revision` if given; a revision above the oracle's is etcd's
//!   "future revision" error. The header's revision is the read timestamp.
//! - **Writes** (`Put`, `DeleteRange`, `Txn`): the request is evaluated at a snapshot
//!   (compares, prev_kv, which keys a delete removes), its writes are buffered, then
//!   committed by one transaction — one Raft round if they fall in one range, the
//!   two-phase commit with a replicated record otherwise — so a Txn across ranges is
//!   atomic. A conflict (first committer wins) re-evaluates the whole request at a newer
//!   snapshot. The header's revision is the commit timestamp.
//!
//! Differences from etcd, all documented in docs/multiraft.md: isolation is snapshot
//! isolation, not etcd's serializability (two Txns whose compares read each other's
//! writes can both commit: write skew; a Txn that writes the keys it compares is safe,
//! since the writes conflict); a Range inside a Txn sees the snapshot with the Txn's
//! earlier writes laid over it (as in etcd), but compares read the snapshot only.
//! Leases are in etcd/ranges_lease.rs (a put with a lease also writes the lease's
//! record in the meta group). Compact is served (`compact` below: etcd's MVCC rule in
//! every range's log). Watch over the ranges is in etcd/ranges_watch.rs.

use super::pb::etcdserverpb as pb;
use super::{convert, EtcdNode};
use crate::txn::{TxnError, TxnHost, MAX_ATTEMPTS};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use synod_protocols::mvcc::LeaseId;
use synod_protocols::mvcc::{
    Compare, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue, MvccError,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder,
    SortTarget, TxnRequest, TxnResponse,
};
use synod_protocols::txn::lease::{lease_key, LeaseRecord};
use synod_protocols::txn::{Key, Row, Timestamp, Value};
use tonic::Status;

/// etcd's limit on operations in one Txn list (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;
/// The prefix of etcd's keys in the ranges' keyspace.
const PREFIX: &str = "e/";
/// The revision of a key this request writes, until the commit gives it one.
const PENDING: i64 = i64::MAX;
/// The first key after every etcd key (`'/' + 1 == '0'`).
const END_OF_ETCD: &str = "e0";

/// The guard key of the etcd interval `[start, end)` (both in the ranges' encoding):
/// outside etcd's keyspace, so no etcd read or watch sees it. A Txn that writes and
/// also read an interval writes its guard, which promotes the read to a write
/// (Fekete et al., "Making Snapshot Isolation Serializable", TODS 2005, §3: promotion):
/// two such Txns over the same interval then conflict (first committer wins) instead of
/// both committing on snapshots that miss each other's keys — the write skew that would
/// let two clientv3 Mutex contenders (`etcdctl lock`) both see themselves as the owner.
fn guard_key(start: &str, end: &str) -> Key {
    format!("{GUARD_PREFIX}{start}/{end}")
}

/// The prefix of guard keys (after `e0`, the end of etcd's keys).
const GUARD_PREFIX: &str = "g/";

/// The ranges' key of an etcd key.
pub(crate) fn encode_key(key: &[u8]) -> Key {
    PREFIX.to_string() + &hex::encode(key)
}

/// The etcd key of a ranges' key (`None`: not an etcd key).
pub(crate) fn decode_key(key: &str) -> Option<Vec<u8>> {
    hex::decode(key.strip_prefix(PREFIX)?).ok()
}

/// etcd's `[key, range_end)` as an interval of the ranges' keyspace: `range_end` empty
/// is the key alone, `"\0"` is every key from `key` on. `None`: the interval is empty.
pub(crate) fn interval(key: &[u8], range_end: &[u8]) -> Option<(Key, Key)> {
    let start = encode_key(key);
    match range_end {
        [] => {
            let end = format!("{start}\0");
            Some((start, end))
        }
        [0] => Some((start, END_OF_ETCD.to_string())),
        end if end <= key => None,
        end => Some((start, encode_key(end))),
    }
}

/// Anything that failed, as the gRPC status etcd clients expect.
pub(crate) fn mvcc_error(e: MvccError) -> Status {
    super::mvcc_status(e)
}

pub(crate) fn txn_status(e: TxnError) -> Status {
    match e {
        TxnError::Timeout => Status::unavailable("etcdserver: request timed out"),
        TxnError::Aborted(n) => Status::aborted(format!(
            "etcdserver: transaction aborted after {n} conflicting attempts"
        )),
        TxnError::Stopped => Status::unavailable("etcdserver: server stopped"),
        TxnError::Protocol(p) => Status::internal(p),
        TxnError::Compacted(c) => mvcc_error(MvccError::Compacted {
            compact_revision: revision(c),
        }),
    }
}

/// The stored value of an etcd key: the key's lease id (8 bytes, big-endian; 0: none),
/// then the value. Keeping the lease in the version makes it part of the MVCC history:
/// reads at a revision and watch events carry the lease the key had then.
pub(crate) fn stored_value(lease: i64, value: &[u8]) -> Value {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&lease.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// A stored etcd value as (lease, value). Anything shorter than the lease header (a
/// keys-only row) is no lease and an empty value.
pub(crate) fn split_value(stored: &[u8]) -> (i64, &[u8]) {
    match stored.split_first_chunk::<8>() {
        Some((lease, value)) => (i64::from_be_bytes(*lease), value),
        None => (0, &[]),
    }
}

pub(crate) fn kv_of(row: Row) -> KeyValue {
    let (lease, value) = split_value(&row.value);
    KeyValue {
        key: decode_key(&row.key).unwrap_or_default(),
        create_revision: i64::try_from(row.create_ts.0).unwrap_or(i64::MAX),
        mod_revision: i64::try_from(row.mod_ts.0).unwrap_or(i64::MAX),
        version: i64::try_from(row.version).unwrap_or(i64::MAX),
        value: value.to_vec(),
        lease,
    }
}

pub(crate) fn revision(ts: Timestamp) -> i64 {
    i64::try_from(ts.0).unwrap_or(i64::MAX)
}

/// One request's evaluation at a snapshot: the writes it buffers.
struct Eval<'a> {
    host: &'a Arc<TxnHost>,
    /// The snapshot.
    ts: Timestamp,
    writes: BTreeMap<Key, Option<Value>>,
    /// Keys put so far (etcd refuses a Txn that puts a key twice).
    puts: Vec<Key>,
    /// Intervals of more than one key read by Range operations and compares: a write
    /// request promotes each to a write of its guard key (see [`guard_key`]).
    read_intervals: std::sync::Mutex<std::collections::BTreeSet<(Key, Key)>>,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send + 'a>>;

impl<'a> Eval<'a> {
    async fn scan(
        &self,
        key: &[u8],
        range_end: &[u8],
        at: Timestamp,
        limit: u64,
        keys_only: bool,
    ) -> Result<(Vec<KeyValue>, u64), Status> {
        let Some((start, end)) = interval(key, range_end) else {
            return Ok((Vec::new(), 0));
        };
        // Values are read even for keys only: the lease id is stored with the value.
        let (rows, count) = self
            .host
            .scan(&start, Some(&end), at, limit, false)
            .await
            .map_err(txn_status)?;
        let mut kvs: Vec<KeyValue> = rows.into_iter().map(kv_of).collect();
        if keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok((kvs, count))
    }

    /// The snapshot a read at `revision` (0: the request's own) uses.
    fn read_ts(&self, revision: i64) -> Result<Timestamp, Status> {
        if revision <= 0 {
            return Ok(self.ts);
        }
        let at = Timestamp(u64::try_from(revision).unwrap_or(0));
        if at > self.ts {
            return Err(mvcc_error(MvccError::FutureRevision));
        }
        Ok(at)
    }

    async fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Status> {
        if req.key.is_empty() {
            return Err(mvcc_error(MvccError::EmptyKey));
        }
        let at = self.read_ts(req.revision)?;
        let filtered = req.min_mod_revision > 0
            || req.max_mod_revision > 0
            || req.min_create_revision > 0
            || req.max_create_revision > 0;
        let sorted = !(req.sort_target == SortTarget::Key
            && matches!(req.sort_order, SortOrder::None | SortOrder::Ascend));
        let limit = u64::try_from(req.limit.max(0)).unwrap_or(0);
        self.note_read(&req.key, &req.range_end);
        // A read of the current state inside a Txn sees the Txn's earlier writes.
        let own_writes = interval(&req.key, &req.range_end).filter(|(start, end)| {
            req.revision <= 0
                && self
                    .writes
                    .range(start.clone()..end.clone())
                    .next()
                    .is_some()
        });
        // Filters, sorting and our own writes need every key before the limit applies.
        let scan_limit = if filtered || sorted || req.count_only || own_writes.is_some() {
            0
        } else {
            limit
        };
        let keys_only = req.keys_only || req.count_only;
        let (mut kvs, mut count) = self
            .scan(&req.key, &req.range_end, at, scan_limit, keys_only)
            .await?;
        if let Some((start, end)) = own_writes {
            count = self.overlay(&mut kvs, &start, &end, keys_only);
        }
        let keep = |kv: &KeyValue| {
            (req.min_mod_revision <= 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision <= 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision <= 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision <= 0 || kv.create_revision <= req.max_create_revision)
        };
        kvs.retain(keep);
        if sorted {
            let by = |a: &KeyValue, b: &KeyValue| match req.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            kvs.sort_by(|a, b| by(a, b).then_with(|| a.key.cmp(&b.key)));
            if req.sort_order == SortOrder::Descend {
                kvs.reverse();
            }
        }
        let mut more = false;
        if limit > 0 && kvs.len() as u64 > limit {
            kvs.truncate(limit as usize);
            more = true;
        }
        if limit > 0 && !filtered && count > limit {
            more = true;
        }
        if req.count_only {
            kvs.clear();
        }
        Ok(RangeResponse {
            revision: revision(self.ts),
            kvs,
            more,
            count: i64::try_from(count).unwrap_or(i64::MAX),
        })
    }

    /// Remember an interval read (single keys need nothing: a Txn that depends on one
    /// key's absence and writes it conflicts on that key already).
    fn note_read(&self, key: &[u8], range_end: &[u8]) {
        if range_end.is_empty() {
            return;
        }
        if let Some(interval) = interval(key, range_end) {
            let mut read = self
                .read_intervals
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            read.insert(interval);
        }
    }

    /// Lay this request's buffered writes of `[start, end)` over a snapshot read, as
    /// etcd's later operations of a Txn see its earlier ones (clientv3's Mutex reads the
    /// lock's owner in the Txn that queues it). A key written here has its revisions
    /// set to [`PENDING`], which sorts after every committed revision (the commit
    /// timestamp is above the snapshot) and becomes the commit revision in [`stamp`].
    /// Returns the new count.
    fn overlay(&self, kvs: &mut Vec<KeyValue>, start: &Key, end: &Key, keys_only: bool) -> u64 {
        let mut by_key: BTreeMap<Vec<u8>, KeyValue> =
            kvs.drain(..).map(|kv| (kv.key.clone(), kv)).collect();
        for (key, write) in self.writes.range(start.clone()..end.clone()) {
            let Some(etcd_key) = decode_key(key) else {
                continue;
            };
            let Some(stored) = write else {
                by_key.remove(&etcd_key);
                continue;
            };
            let (lease, value) = split_value(stored);
            let before = by_key.get(&etcd_key);
            let kv = KeyValue {
                key: etcd_key.clone(),
                create_revision: before.map_or(PENDING, |b| b.create_revision),
                mod_revision: PENDING,
                version: before.map_or(1, |b| b.version + 1),
                value: if keys_only {
                    Vec::new()
                } else {
                    value.to_vec()
                },
                lease,
            };
            by_key.insert(etcd_key, kv);
        }
        *kvs = by_key.into_values().collect();
        kvs.len() as u64
    }

    async fn put(&mut self, req: &PutRequest) -> Result<PutResponse, Status> {
        if req.key.is_empty() {
            return Err(mvcc_error(MvccError::EmptyKey));
        }
        if req.ignore_value && !req.value.is_empty() {
            return Err(mvcc_error(MvccError::ValueProvided));
        }
        if req.ignore_lease && req.lease != 0 {
            return Err(mvcc_error(MvccError::LeaseProvided));
        }
        let key = encode_key(&req.key);
        if self.puts.contains(&key) {
            return Err(mvcc_error(MvccError::DuplicateKey));
        }
        let prev = if req.prev_kv || req.ignore_value || req.ignore_lease {
            let (kvs, _) = self.scan(&req.key, &[], self.ts, 0, false).await?;
            kvs.into_iter().next()
        } else {
            None
        };
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(mvcc_error(MvccError::KeyNotFound));
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        if lease != 0 {
            self.attach(lease, &key).await?;
        }
        self.puts.push(key.clone());
        self.writes.insert(key, Some(stored_value(lease, &value)));
        Ok(PutResponse {
            revision: 0,
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    async fn delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        if req.key.is_empty() {
            return Err(mvcc_error(MvccError::EmptyKey));
        }
        let (kvs, count) = self
            .scan(&req.key, &req.range_end, self.ts, 0, !req.prev_kv)
            .await?;
        if let Some((start, end)) = interval(&req.key, &req.range_end) {
            if self.puts.iter().any(|k| *k >= start && *k < end) {
                return Err(mvcc_error(MvccError::DuplicateKey));
            }
        }
        for kv in &kvs {
            self.writes.insert(encode_key(&kv.key), None);
        }
        Ok(DeleteRangeResponse {
            revision: 0,
            deleted: i64::try_from(count).unwrap_or(i64::MAX),
            prev_kvs: if req.prev_kv { kvs } else { Vec::new() },
        })
    }

    /// Attach `key` to `lease`: rewrite the lease's record (in the meta group) with the
    /// key added, in this request's transaction. A revoke writes the record too, so the
    /// two are ordered by first committer wins (see `synod_protocols::txn::lease`).
    async fn attach(&mut self, lease: i64, key: &Key) -> Result<(), Status> {
        let record_key = lease_key(LeaseId(lease));
        let stored = match self.writes.get(&record_key) {
            Some(buffered) => buffered.clone(),
            None => self
                .host
                .read(&record_key, self.ts)
                .await
                .map_err(txn_status)?,
        };
        let Some(mut record) = stored.as_deref().and_then(LeaseRecord::decode) else {
            return Err(mvcc_error(MvccError::LeaseNotFound));
        };
        record.keys.insert(key.clone());
        self.writes.insert(record_key, Some(record.encode()));
        Ok(())
    }

    /// etcd's `applyCompare` at the snapshot: over an interval every key must hold; no
    /// key compares as a zero KeyValue, except that a value compare on nothing fails.
    async fn compare(&self, c: &Compare) -> Result<bool, Status> {
        self.note_read(&c.key, &c.range_end);
        let (kvs, _) = self.scan(&c.key, &c.range_end, self.ts, 0, false).await?;
        if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(holds(c, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| holds(c, kv)))
    }

    fn txn<'b>(&'b mut self, req: &'b TxnRequest) -> BoxFut<'b, TxnResponse> {
        Box::pin(async move {
            if req.compare.len() > MAX_TXN_OPS
                || req.success.len() > MAX_TXN_OPS
                || req.failure.len() > MAX_TXN_OPS
            {
                return Err(mvcc_error(MvccError::TooManyOps));
            }
            let mut succeeded = true;
            for c in &req.compare {
                if !self.compare(c).await? {
                    succeeded = false;
                    break;
                }
            }
            let ops = if succeeded {
                &req.success
            } else {
                &req.failure
            };
            let mut responses = Vec::with_capacity(ops.len());
            for op in ops {
                responses.push(match op {
                    RequestOp::Range(r) => ResponseOp::Range(self.range(r).await?),
                    RequestOp::Put(p) => ResponseOp::Put(self.put(p).await?),
                    RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete(d).await?),
                    // A nested Txn shares the snapshot and the write buffer.
                    RequestOp::Txn(t) => ResponseOp::Txn(self.txn(t).await?),
                });
            }
            Ok(TxnResponse {
                revision: 0,
                succeeded,
                responses,
            })
        })
    }
}

fn holds(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    use synod_protocols::mvcc::CompareResult;
    let ordering = match &c.target {
        CompareTarget::Version(x) => kv.version.cmp(x),
        CompareTarget::Create(x) => kv.create_revision.cmp(x),
        CompareTarget::Mod(x) => kv.mod_revision.cmp(x),
        CompareTarget::Value(x) => kv.value.as_slice().cmp(x.as_slice()),
        CompareTarget::Lease(x) => kv.lease.cmp(x),
    };
    match c.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
        CompareResult::NotEqual => ordering != Ordering::Equal,
    }
}

/// Set the revision of every write response (the commit timestamp, known only after the
/// commit) and of every read response in a Txn to `rev`.
fn stamp(resp: &mut TxnResponse, rev: i64) {
    resp.revision = rev;
    for op in &mut resp.responses {
        match op {
            ResponseOp::Range(r) => {
                r.revision = rev;
                for kv in &mut r.kvs {
                    if kv.create_revision == PENDING {
                        kv.create_revision = rev;
                    }
                    if kv.mod_revision == PENDING {
                        kv.mod_revision = rev;
                    }
                }
            }
            ResponseOp::Put(p) => p.revision = rev,
            ResponseOp::DeleteRange(d) => d.revision = rev,
            ResponseOp::Txn(t) => stamp(t, rev),
        }
    }
}

/// Which request a write is.
enum Write {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
}

/// Evaluate `write` at a fresh snapshot and commit its writes as one transaction,
/// re-evaluating at a newer snapshot after a conflict. Returns the Txn-shaped response
/// with every revision set.
async fn run_write(host: &Arc<TxnHost>, write: &Write) -> Result<TxnResponse, Status> {
    for _ in 0..MAX_ATTEMPTS {
        let ts = host.timestamp().await.map_err(txn_status)?;
        let mut eval = Eval {
            host,
            ts,
            writes: BTreeMap::new(),
            puts: Vec::new(),
            read_intervals: Default::default(),
        };
        let mut resp = match write {
            Write::Put(p) => TxnResponse {
                revision: 0,
                succeeded: true,
                responses: vec![ResponseOp::Put(eval.put(p).await?)],
            },
            Write::Delete(d) => TxnResponse {
                revision: 0,
                succeeded: true,
                responses: vec![ResponseOp::DeleteRange(eval.delete(d).await?)],
            },
            Write::Txn(t) => eval.txn(t).await?,
        };
        if eval.writes.is_empty() {
            stamp(&mut resp, revision(ts));
            return Ok(resp);
        }
        let read = std::mem::take(
            &mut *eval
                .read_intervals
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (start, end) in read {
            eval.writes
                .insert(guard_key(&start, &end), Some(Vec::new()));
        }
        let writes: Vec<(Key, Option<Value>)> = eval.writes.into_iter().collect();
        if let Some(commit_ts) = host.commit_at(ts, &writes).await.map_err(txn_status)? {
            stamp(&mut resp, revision(commit_ts));
            // Reads inside a Txn answer for the snapshot; their header says which.
            return Ok(resp);
        }
        let backoff = rand::random::<u64>() % 4_000;
        tokio::time::sleep(std::time::Duration::from_micros(backoff)).await;
    }
    Err(txn_status(TxnError::Aborted(MAX_ATTEMPTS)))
}

/// `KV.Range` over the ranges.
pub(crate) async fn range(
    node: &Arc<EtcdNode>,
    host: &Arc<TxnHost>,
    req: pb::RangeRequest,
) -> Result<pb::RangeResponse, Status> {
    let req = convert::range_from_pb(req);
    let ts = host.timestamp().await.map_err(txn_status)?;
    let eval = Eval {
        host,
        ts,
        writes: BTreeMap::new(),
        puts: Vec::new(),
        read_intervals: Default::default(),
    };
    let resp = eval.range(&req).await?;
    Ok(convert::range_to_pb(resp, &node.header_fn()))
}

/// `KV.Put` over the ranges.
pub(crate) async fn put(
    node: &Arc<EtcdNode>,
    host: &Arc<TxnHost>,
    req: pb::PutRequest,
) -> Result<pb::PutResponse, Status> {
    let resp = run_write(host, &Write::Put(convert::put_from_pb(req))).await?;
    match resp.responses.into_iter().next() {
        Some(ResponseOp::Put(p)) => Ok(convert::put_to_pb(p, &node.header_fn())),
        _ => Err(Status::internal("a put without its response")),
    }
}

/// `KV.DeleteRange` over the ranges.
pub(crate) async fn delete_range(
    node: &Arc<EtcdNode>,
    host: &Arc<TxnHost>,
    req: pb::DeleteRangeRequest,
) -> Result<pb::DeleteRangeResponse, Status> {
    let resp = run_write(host, &Write::Delete(convert::delete_from_pb(req))).await?;
    match resp.responses.into_iter().next() {
        Some(ResponseOp::DeleteRange(d)) => Ok(convert::delete_to_pb(d, &node.header_fn())),
        _ => Err(Status::internal("a delete without its response")),
    }
}

/// `KV.Txn` over the ranges: atomic across ranges.
pub(crate) async fn txn(
    node: &Arc<EtcdNode>,
    host: &Arc<TxnHost>,
    req: pb::TxnRequest,
) -> Result<pb::TxnResponse, Status> {
    let txn = convert::txn_from_pb(req).map_err(Status::invalid_argument)?;
    let resp = run_write(host, &Write::Txn(txn)).await?;
    Ok(convert::txn_to_pb(resp, &node.header_fn()))
}

/// `KV.Compact` over the ranges: every range compacts at the revision through its own
/// log; the meta group records the cluster's compact revision. As etcd: a revision at or
/// below the current compact revision is `compacted`, one above the current revision is
/// `future`. (`physical` needs nothing more: the compaction has applied in every range
/// when this answers.)
pub(crate) async fn compact(
    node: &Arc<EtcdNode>,
    host: &Arc<TxnHost>,
    req: pb::CompactionRequest,
) -> Result<pb::CompactionResponse, Status> {
    let current = host.timestamp().await.map_err(txn_status)?;
    let at = Timestamp(u64::try_from(req.revision).unwrap_or(0));
    if at > current {
        return Err(mvcc_error(MvccError::FutureRevision));
    }
    let compacted = host.compacted_revision().await.map_err(txn_status)?;
    if at <= compacted {
        return Err(mvcc_error(MvccError::Compacted {
            compact_revision: revision(compacted),
        }));
    }
    host.compact(at).await.map_err(txn_status)?;
    Ok(pb::CompactionResponse {
        header: node.header(revision(current)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hex keeps byte order and prefixes, so an etcd interval is one interval of the
    /// ranges' keyspace.
    #[test]
    fn key_encoding_preserves_order_and_round_trips() {
        let keys: [&[u8]; 6] = [b"", b"\x00", b"a", b"a\x00", b"a\xff", b"b"];
        for pair in keys.windows(2) {
            assert!(encode_key(pair[0]) < encode_key(pair[1]), "{pair:?}");
        }
        for k in keys {
            assert_eq!(decode_key(&encode_key(k)).as_deref(), Some(k));
        }
        assert!(encode_key(b"\xff\xff").as_str() < END_OF_ETCD);
        assert_eq!(decode_key("x/00"), None);
        assert_eq!(decode_key("e/0"), None);
        assert_eq!(decode_key("e/zz"), None);
        let (s, e) = interval(b"a", b"").unwrap();
        assert!(s < e && encode_key(b"a\x00") >= e);
        let (s, e) = interval(b"pre/", b"pre0").unwrap();
        assert!(encode_key(b"pre/x") >= s && encode_key(b"pre/x") < e);
        assert!(encode_key(b"pre0") >= e);
        assert_eq!(interval(b"b", b"a"), None);
        assert_eq!(interval(b"a", b"\0").unwrap().1, END_OF_ETCD);
    }
}
