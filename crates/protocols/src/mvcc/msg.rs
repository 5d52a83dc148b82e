//! The commands, responses, errors and data the MVCC state machine works with. Field
//! names and meanings follow etcd v3.4's `rpc.proto` and `kv.proto`, so the gRPC server
//! maps them one to one.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// A main revision of the store: the logical clock of the key space. It starts at 1
/// (etcd's empty store is at revision 1) and grows by one per command that changes keys.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Revision(pub i64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A lease id. Zero means "no lease" (etcd's `NoLease`); granted ids are positive.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct LeaseId(pub i64);

impl LeaseId {
    /// No lease.
    pub const NONE: LeaseId = LeaseId(0);
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// One version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The revision of the put that created this incarnation of the key.
    pub create_revision: i64,
    /// The revision of the last change to the key.
    pub mod_revision: i64,
    /// Puts since creation, starting at 1; a delete resets it to 0.
    pub version: i64,
    /// The value (empty with `keys_only`).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The lease attached to the key, or 0.
    pub lease: i64,
}

/// What an [`Event`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum EventKind {
    /// A put (a creation or an update).
    Put,
    /// A delete; the event's `kv` carries only the key and the `mod_revision`.
    Delete,
}

/// One change to one key, as etcd's `mvccpb.Event`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: key and mod revision only).
    pub kv: KeyValue,
    /// The key before the change, if it existed (watchers ask for it with `prev_kv`).
    pub prev_kv: Option<KeyValue>,
}

/// How a Range sorts (etcd `RangeRequest.SortOrder`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order, unless a target other than the key is given (then ascending).
    #[default]
    None,
    /// Smallest first.
    Ascend,
    /// Largest first.
    Descend,
}

/// What a Range sorts by (etcd `RangeRequest.SortTarget`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// etcd `RangeRequest`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The first key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Empty: only `key`. `[0]`: every key ≥ `key`. Otherwise the end, exclusive.
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// Most keys returned; 0: no limit.
    pub limit: i64,
    /// Read at this revision; 0 or less: the current one.
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Drop keys modified before this revision (0: no bound).
    pub min_mod_revision: i64,
    /// Drop keys modified after this revision (0: no bound).
    pub max_mod_revision: i64,
    /// Drop keys created before this revision (0: no bound).
    pub min_create_revision: i64,
    /// Drop keys created after this revision (0: no bound).
    pub max_create_revision: i64,
}

/// etcd `RangeResponse` (without the header, which the server adds).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The store's current revision when the read was served.
    pub revision: i64,
    /// The keys.
    pub kvs: Vec<KeyValue>,
    /// Whether the result was cut by `limit`.
    pub more: bool,
    /// How many keys the range holds at the revision read, before `limit` and filters.
    pub count: i64,
}

/// etcd `PutRequest`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The lease to attach, or 0 for none.
    pub lease: i64,
    /// Return the previous version.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist, and `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist, and `lease` must be 0).
    pub ignore_lease: bool,
}

/// etcd `PutResponse`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct PutResponse {
    /// The revision after the put.
    pub revision: i64,
    /// The previous version, if asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd `DeleteRangeRequest`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// The first key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// As in [`RangeRequest::range_end`].
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// Return the deleted versions.
    pub prev_kv: bool,
}

/// etcd `DeleteRangeResponse`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// The revision after the delete.
    pub revision: i64,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted versions, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a [`Compare`] compares (etcd `Compare.CompareResult`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum CompareResult {
    /// `==`
    Equal,
    /// `>`
    Greater,
    /// `<`
    Less,
    /// `!=`
    NotEqual,
}

/// What a [`Compare`] looks at, with the operand (etcd's `target` plus its oneof).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The version.
    Version(i64),
    /// The create revision.
    Create(i64),
    /// The mod revision.
    Mod(i64),
    /// The value (bytewise).
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The lease id.
    Lease(i64),
}

/// One guard of a Txn (etcd `Compare`). With a `range_end` it must hold for every key in
/// the range.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Compare {
    /// The comparison.
    pub result: CompareResult,
    /// The field and the operand.
    pub target: CompareTarget,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// As in [`RangeRequest::range_end`].
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// One operation of a Txn (etcd `RequestOp`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The answer to one [`RequestOp`] (etcd `ResponseOp`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ResponseOp {
    /// To a read.
    Range(RangeResponse),
    /// To a put.
    Put(PutResponse),
    /// To a delete.
    DeleteRange(DeleteRangeResponse),
    /// To a nested transaction.
    Txn(TxnResponse),
}

/// etcd `TxnRequest`: if every compare holds, run `success`, else `failure`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct TxnRequest {
    /// The guards, all evaluated against the state before the transaction.
    pub compare: Vec<Compare>,
    /// Run when every guard holds.
    #[serde(deserialize_with = "synod_core::codec::nested")]
    pub success: Vec<RequestOp>,
    /// Run otherwise.
    #[serde(deserialize_with = "synod_core::codec::nested")]
    pub failure: Vec<RequestOp>,
}

/// etcd `TxnResponse`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct TxnResponse {
    /// The revision after the transaction (its own revision if it wrote).
    pub revision: i64,
    /// Whether the guards held.
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    #[serde(deserialize_with = "synod_core::codec::nested")]
    pub responses: Vec<ResponseOp>,
}

/// etcd `CompactionRequest`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct CompactionRequest {
    /// Discard history before this revision.
    pub revision: i64,
    /// Wait until the compaction is physically done (it always is here).
    pub physical: bool,
}

/// One remaining-TTL record (etcd `LeaseCheckpoint`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LeaseCheckpoint {
    /// The lease.
    pub id: LeaseId,
    /// Seconds it had left when the leader took the checkpoint; 0 clears the
    /// checkpoint (the lease was renewed, so a new leader grants the full TTL).
    pub remaining_ttl: i64,
}

/// A command of the replicated state machine, applied through Raft in log order.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum MvccCommand {
    /// A read (through the log, or through ReadIndex).
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Discard history.
    Compact(CompactionRequest),
    /// Create a lease; `id` 0 lets the state machine choose one.
    LeaseGrant {
        /// The wanted id, or 0.
        id: LeaseId,
        /// Time to live in seconds.
        ttl: i64,
    },
    /// Delete a lease and every key attached to it.
    LeaseRevoke {
        /// The lease.
        id: LeaseId,
    },
    /// Record the leader's view of remaining TTLs, so a new leader does not restart them
    /// from the full TTL (etcd's lease checkpointing).
    LeaseCheckpoint {
        /// One record per lease.
        checkpoints: Vec<LeaseCheckpoint>,
    },
    /// The leader's decision that these leases have expired: each is revoked as by
    /// `LeaseRevoke` (one revision per lease); ids already gone are skipped.
    LeaseExpire {
        /// The expired leases.
        ids: Vec<LeaseId>,
    },
}

/// A successful answer to an [`MvccCommand`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum MvccResponse {
    /// To a Range.
    Range(RangeResponse),
    /// To a Put.
    Put(PutResponse),
    /// To a DeleteRange.
    DeleteRange(DeleteRangeResponse),
    /// To a Txn.
    Txn(TxnResponse),
    /// To a Compact.
    Compact {
        /// The current revision.
        revision: i64,
    },
    /// To a LeaseGrant.
    LeaseGrant {
        /// The current revision.
        revision: i64,
        /// The lease's id.
        id: LeaseId,
        /// Its TTL in seconds (raised to the minimum TTL).
        ttl: i64,
    },
    /// To a LeaseRevoke, LeaseCheckpoint or LeaseExpire.
    Lease {
        /// The current revision.
        revision: i64,
    },
}

/// What the state machine returns for a command.
pub type MvccOutput = Result<MvccResponse, MvccError>;

/// Why a command failed. The `Display` strings are etcd's, which clients match on.
#[derive(Clone, PartialEq, Eq, Debug, Error, Serialize, Deserialize)]
pub enum MvccError {
    /// A read or watch below the compacted revision.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// The compacted revision (watch cancels carry it as `compact_revision`).
        compact_revision: i64,
    },
    /// A read at a revision the store has not reached.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant with an id in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant with a TTL above etcd's `MaxLeaseTTL`.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A Txn that writes one key twice, or puts a key it also deletes.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A Txn with more than the maximum compares or operations in one list.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// An empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
}

impl MvccError {
    /// The gRPC status code etcd answers this error with (`rpctypes/error.go`), as the
    /// name of a `tonic::Code`.
    pub fn grpc_code(&self) -> &'static str {
        match self {
            MvccError::Compacted { .. } | MvccError::FutureRevision => "OutOfRange",
            MvccError::LeaseTtlTooLarge => "OutOfRange",
            MvccError::LeaseNotFound => "NotFound",
            MvccError::LeaseExists => "FailedPrecondition",
            MvccError::KeyNotFound
            | MvccError::DuplicateKey
            | MvccError::TooManyOps
            | MvccError::EmptyKey
            | MvccError::ValueProvided
            | MvccError::LeaseProvided => "InvalidArgument",
        }
    }
}
