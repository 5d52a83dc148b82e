//! Leases over the ranges (etcd's Lease API with `synod up --ranges`).
//!
//! **The lease table lives in the meta group.** Each lease is one MVCC key of the meta
//! group, `\0lease/<id as 16 hex digits>`, whose value is a [`LeaseRecord`]: the granted
//! TTL and the keys attached so far. The meta group serves that key namespace and no
//! other ([`RangeDescriptor::contains`]), so a lease record takes part in transactions
//! like any key: it has versions, intents and write conflicts, and it changes only
//! through the meta group's log.
//!
//! - **Grant** is one meta command ([`RangeCommand::LeaseGrant`]) that writes the record
//!   at a fresh oracle timestamp (the oracle lives in the same state machine, so the
//!   write is above every timestamp handed out before: a one-phase commit needs nothing
//!   more).
//! - **Put with a lease** is a transaction that reads the record at its snapshot (no
//!   record: etcd's "requested lease not found"), adds the key to the record's set, and
//!   writes both the record and the key (whose stored value carries the lease id). The
//!   key is in a data range and the record in the meta group, so it commits with the
//!   two-phase path.
//! - **Revoke** is a transaction that reads the record, deletes it and deletes every
//!   attached key that still carries the lease at the snapshot: one commit timestamp for
//!   all the deletions, across ranges, as etcd's revoke is one revision.
//! - **A revoke racing a Put that attaches a key** is ordered by first committer wins
//!   on the record, which both write: whichever commits second started before the first
//!   committed and aborts; retried, a Put finds no record (lease not found) and a revoke
//!   sees the new key and deletes it too. So no key outlives its lease.
//!
//! **Expiry, as etcd's lessor** (`lease/lessor.go`: `Promote`, `Renew`, `revokeExpired`):
//! the deadlines are not replicated. The meta group's leader keeps them ([`Lessor`]);
//! on promotion every lease restarts from its full TTL; a keep-alive goes through the
//! log ([`RangeCommand::LeaseKeepAlive`], so it is answered only by a leader that has
//! applied the grant) and restarts the lease's deadline on the leader that applied it.
//! The leader lists the leases past their deadline ([`TxnNode::expired_leases`]); a
//! coordinator on its node revokes them with the transaction above, which is how the
//! decision is replicated. A leader that dies mid-revoke leaves an intent or nothing;
//! the next leader restarts the TTL and revokes again.
//!
//! [`TxnNode::expired_leases`]: super::TxnNode::expired_leases

use super::msg::{Key, RangeCommand, RangeDescriptor, RangeResult, Timestamp, TxnId};
use super::range::{RangeState, Version};
use crate::mvcc::LeaseId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use synod_core::codec;

/// The first key of the lease table (served by the meta group).
pub const LEASE_PREFIX: &str = "\u{0}lease/";
/// The first key after the lease table.
pub const LEASE_END: &str = "\u{0}lease0";

/// The meta group's key of lease `id`.
pub fn lease_key(id: LeaseId) -> Key {
    format!("{LEASE_PREFIX}{:016x}", id.0 as u64)
}

/// The lease whose record `key` is (`None`: not a lease key).
pub fn lease_of_key(key: &str) -> Option<LeaseId> {
    let hex = key.strip_prefix(LEASE_PREFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16)
        .ok()
        .map(|id| LeaseId(id as i64))
}

/// Whether `key` belongs to the lease table (the meta group's keys).
pub fn is_lease_key(key: &str) -> bool {
    key.starts_with(LEASE_PREFIX)
}

/// A lease as the meta group stores it (the value of its key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The granted TTL in seconds.
    pub ttl: i64,
    /// Keys attached by puts with this lease. A key later overwritten without the lease
    /// (or deleted) stays listed; readers keep only keys that still carry the lease.
    pub keys: BTreeSet<Key>,
}

impl LeaseRecord {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decode a stored record (`None` if it is not one).
    pub fn decode(bytes: &[u8]) -> Option<LeaseRecord> {
        codec::decode(bytes).ok()
    }
}

/// What the meta group answers about one lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The lease.
    pub id: LeaseId,
    /// The granted TTL (seconds).
    pub ttl: i64,
    /// Seconds left by the leader's deadline (the full TTL if it has none yet).
    pub remaining: i64,
    /// The attached keys (see [`LeaseRecord::keys`]).
    pub keys: Vec<Key>,
    /// The grant's commit timestamp, or the oracle's current one for other requests.
    pub revision: Timestamp,
}

impl RangeDescriptor {
    /// The meta group serves the lease table and nothing else; data ranges never serve it.
    pub(crate) fn serves_lease_key(&self, key: &str) -> Option<bool> {
        is_lease_key(key).then_some(!self.serves_keys)
    }
}

impl RangeState {
    /// The record of lease `id` as committed last (`None`: never granted, or revoked).
    pub fn lease(&self, id: LeaseId) -> Option<LeaseRecord> {
        let chain = self.versions.get(&lease_key(id))?;
        let (_, newest) = chain.iter().next_back()?;
        LeaseRecord::decode(newest.value.as_ref()?)
    }

    /// Every live lease, by id.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, LeaseRecord)> + '_ {
        self.versions
            .range::<Key, _>(LEASE_PREFIX.to_string()..LEASE_END.to_string())
            .filter_map(|(key, chain)| {
                let id = lease_of_key(key)?;
                let value = chain.iter().next_back()?.1.value.as_ref()?;
                Some((id, LeaseRecord::decode(value)?))
            })
    }

    /// `LeaseGrant`, `LeaseKeepAlive` and `LeaseTimeToLive` (meta group only).
    pub(crate) fn apply_lease(&mut self, command: &RangeCommand) -> RangeResult {
        if self.desc.serves_keys {
            return RangeResult::RangeMismatch;
        }
        let info = |id: LeaseId, record: LeaseRecord, revision: Timestamp| LeaseInfo {
            id,
            ttl: record.ttl,
            remaining: record.ttl,
            keys: record.keys.into_iter().collect(),
            revision,
        };
        match command {
            RangeCommand::LeaseGrant { id, ttl } => {
                let key = lease_key(*id);
                if let Some(intent) = self.intents.get(&key) {
                    return RangeResult::Locked {
                        txn: intent.txn.clone(),
                        key,
                    };
                }
                if self.lease(*id).is_some() {
                    return RangeResult::LeaseExists;
                }
                // A fresh oracle timestamp is above every snapshot handed out so far.
                self.oracle = Timestamp(self.oracle.0 + 1);
                let record = LeaseRecord {
                    ttl: *ttl,
                    keys: BTreeSet::new(),
                };
                self.versions.entry(key).or_default().insert(
                    self.oracle,
                    Version {
                        value: Some(record.encode()),
                        txn: TxnId(0),
                    },
                );
                RangeResult::Lease(Some(info(*id, record, self.oracle)))
            }
            RangeCommand::LeaseKeepAlive { id } | RangeCommand::LeaseTimeToLive { id } => {
                RangeResult::Lease(self.lease(*id).map(|r| info(*id, r, self.oracle)))
            }
            _ => RangeResult::RangeMismatch,
        }
    }
}

/// The meta group leader's lease deadlines (etcd's lessor on the primary). Volatile: a
/// node that is not the meta group's leader keeps none, and a new leader starts every
/// lease from its full TTL.
#[derive(Debug, Default)]
pub(crate) struct Lessor {
    /// The term this node leads the meta group in (`None`: not the leader).
    leading: Option<u64>,
    /// Deadline (driver nanoseconds) of every lease the leader knows.
    deadlines: BTreeMap<LeaseId, u64>,
    /// Leases past their deadline at the last check.
    expired: Vec<LeaseId>,
}

fn ttl_nanos(ttl: i64) -> u64 {
    u64::try_from(ttl)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
}

impl Lessor {
    /// Leadership as of now: on promotion (or a new term) every deadline restarts.
    pub(crate) fn set_leader(&mut self, term: Option<u64>) {
        if term != self.leading {
            self.deadlines.clear();
            self.expired.clear();
            self.leading = term;
        }
    }

    /// A grant or keep-alive applied: the lease runs for its full TTL from `now`.
    pub(crate) fn renew(&mut self, now: u64, id: LeaseId, ttl: i64) {
        if self.leading.is_some() {
            self.deadlines
                .insert(id, now.saturating_add(ttl_nanos(ttl)));
            self.expired.retain(|e| *e != id);
        }
    }

    /// Seconds left of `id` (rounded up), if this leader tracks it.
    pub(crate) fn remaining(&self, now: u64, id: LeaseId) -> Option<i64> {
        let deadline = self.deadlines.get(&id)?;
        let left = deadline.saturating_sub(now);
        Some(i64::try_from(left.div_ceil(1_000_000_000)).unwrap_or(i64::MAX))
    }

    /// Match the deadlines to the applied lease table (new leases run for their TTL from
    /// `now`, revoked ones are forgotten) and list those past their deadline.
    pub(crate) fn check(&mut self, now: u64, state: &RangeState) {
        self.expired.clear();
        if self.leading.is_none() {
            return;
        }
        let live: BTreeMap<LeaseId, i64> = state.leases().map(|(id, r)| (id, r.ttl)).collect();
        self.deadlines.retain(|id, _| live.contains_key(id));
        for (id, ttl) in live {
            let deadline = *self
                .deadlines
                .entry(id)
                .or_insert_with(|| now.saturating_add(ttl_nanos(ttl)));
            if deadline <= now {
                self.expired.push(id);
            }
        }
    }

    /// Leases past their deadline (empty unless this node leads the meta group).
    pub(crate) fn expired(&self) -> &[LeaseId] {
        &self.expired
    }
}

#[cfg(any(test, feature = "harness"))]
pub mod sim;
#[cfg(test)]
mod tests;
