//! The leader's lease clock: deadlines, renewals, expiry and checkpoints. This half of
//! etcd's lessor depends on time, so it is not replicated. Only the leader's lessor is
//! *primary*, and only it decides. It proposes `LeaseExpire` for leases past their
//! deadline and `LeaseCheckpoint` with their remaining TTL. The replicated
//! [`MvccStateMachine`] applies both. The caller passes `now` from its clock to every
//! call.

use super::msg::{LeaseCheckpoint, LeaseId};
use super::state::MvccStateMachine;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use synod_core::Instant;
use thiserror::Error;

/// Settings of a [`Lessor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LessorConfig {
    /// How often the leader checkpoints each lease's remaining TTL (etcd's
    /// `--experimental-lease-checkpoint-interval`, 5 minutes by default).
    pub checkpoint_interval: Duration,
    /// Most leases one [`Lessor::expired`] call returns (etcd revokes at most 1000 per
    /// second).
    pub max_expire_batch: usize,
    /// Most records one [`Lessor::checkpoints`] call returns (etcd's
    /// `maxLeaseCheckpointBatchSize`, 1000).
    pub max_checkpoint_batch: usize,
    /// How long after proposing an expiry the lessor proposes it again if the lease is
    /// still there (etcd's `expiredLeaseRetryInterval`, 3 s): the proposal may be lost
    /// in a leader change.
    pub expire_retry: Duration,
}

impl Default for LessorConfig {
    fn default() -> Self {
        LessorConfig {
            checkpoint_interval: Duration::from_secs(300),
            max_expire_batch: 1000,
            max_checkpoint_batch: 1000,
            expire_retry: Duration::from_secs(3),
        }
    }
}

/// Why a lessor call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum LessorError {
    /// This lessor is not the leader's (etcd's `ErrNotPrimary`); keep-alives go to the
    /// leader.
    #[error("etcdserver: not primary lessor")]
    NotPrimary,
    /// The lease is unknown, or has expired and waits for its revocation.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
}

/// One lease's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LeaseClock {
    ttl: i64,
    expiry: Instant,
    /// When to propose the next checkpoint (never, if `None`).
    next_checkpoint: Option<Instant>,
    /// When an expiry was last proposed.
    expiry_proposed: Option<Instant>,
}

/// The result of a keep-alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    /// The TTL granted again, in seconds.
    pub ttl: i64,
    /// The lease carries a checkpointed remaining TTL: propose
    /// `LeaseCheckpoint { remaining_ttl: 0 }` so that a later leader grants the full TTL
    /// again (etcd 3.4 does the same on renewal).
    pub clear_checkpoint: bool,
}

/// The leader's deadlines for the leases of a [`MvccStateMachine`].
#[derive(Clone, Debug, Default)]
pub struct Lessor {
    config: LessorConfig,
    primary: bool,
    clocks: BTreeMap<LeaseId, LeaseClock>,
    by_expiry: BTreeSet<(Instant, LeaseId)>,
}

fn seconds(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

impl Lessor {
    /// A lessor that is not primary.
    pub fn new(config: LessorConfig) -> Self {
        Lessor {
            config,
            ..Lessor::default()
        }
    }

    /// Whether this lessor decides expiry (its node leads).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Become primary when this node becomes leader, once it has applied its log. Every
    /// lease restarts with its checkpointed remaining TTL, or its full TTL if it has no
    /// checkpoint, plus `extend` (etcd uses the election timeout), so that a lease
    /// survives a failover for about as long as it had left.
    pub fn promote(&mut self, now: Instant, extend: Duration, state: &MvccStateMachine) {
        self.primary = true;
        self.clocks.clear();
        self.by_expiry.clear();
        for (id, lease) in state.leases() {
            let remaining = if lease.remaining_ttl > 0 {
                lease.remaining_ttl
            } else {
                lease.ttl
            };
            self.start(id, lease.ttl, now + extend + seconds(remaining), now);
        }
    }

    /// Stop deciding: this node no longer leads.
    pub fn demote(&mut self) {
        self.primary = false;
        self.clocks.clear();
        self.by_expiry.clear();
    }

    fn start(&mut self, id: LeaseId, ttl: i64, expiry: Instant, now: Instant) {
        if let Some(old) = self.clocks.get(&id) {
            self.by_expiry.remove(&(old.expiry, id));
        }
        self.clocks.insert(
            id,
            LeaseClock {
                ttl,
                expiry,
                next_checkpoint: Some(now + self.config.checkpoint_interval),
                expiry_proposed: None,
            },
        );
        self.by_expiry.insert((expiry, id));
    }

    /// Match the replicated leases after applying: a new lease's clock starts now with
    /// its full TTL, a revoked lease's clock goes. Only a primary keeps clocks.
    pub fn sync(&mut self, now: Instant, state: &MvccStateMachine) {
        if !self.primary {
            return;
        }
        let gone: Vec<LeaseId> = self
            .clocks
            .keys()
            .filter(|id| state.lease(**id).is_none())
            .copied()
            .collect();
        for id in gone {
            if let Some(clock) = self.clocks.remove(&id) {
                self.by_expiry.remove(&(clock.expiry, id));
            }
        }
        let new: Vec<(LeaseId, i64)> = state
            .leases()
            .filter(|(id, _)| !self.clocks.contains_key(id))
            .map(|(id, l)| (id, l.ttl))
            .collect();
        for (id, ttl) in new {
            self.start(id, ttl, now + seconds(ttl), now);
        }
    }

    /// A keep-alive: the lease lives for its full TTL from now (etcd's `Renew`).
    pub fn renew(
        &mut self,
        now: Instant,
        id: LeaseId,
        state: &MvccStateMachine,
    ) -> Result<Renewal, LessorError> {
        if !self.primary {
            return Err(LessorError::NotPrimary);
        }
        let lease = state.lease(id).ok_or(LessorError::LeaseNotFound)?;
        // A lease granted since the last `sync` has no clock yet; it starts now.
        if let Some(clock) = self.clocks.get(&id) {
            if clock.expiry <= now {
                // Expired: its revocation is on the way (etcd answers the same).
                return Err(LessorError::LeaseNotFound);
            }
        }
        let ttl = lease.ttl;
        self.start(id, ttl, now + seconds(ttl), now);
        Ok(Renewal {
            ttl,
            clear_checkpoint: lease.remaining_ttl > 0,
        })
    }

    /// Seconds the lease has left (truncated, as etcd's TimeToLive reports), or `None`
    /// if this lessor keeps no clock for it.
    pub fn remaining(&self, now: Instant, id: LeaseId) -> Option<i64> {
        let clock = self.clocks.get(&id)?;
        Some(
            i64::try_from(clock.expiry.saturating_duration_since(now).as_secs())
                .unwrap_or(i64::MAX),
        )
    }

    /// Leases past their deadline whose expiry is not yet proposed (or was proposed
    /// more than `expire_retry` ago), at most `max_expire_batch`: propose
    /// `LeaseExpire { ids }`.
    pub fn expired(&mut self, now: Instant) -> Vec<LeaseId> {
        if !self.primary {
            return Vec::new();
        }
        let mut out = Vec::new();
        for &(expiry, id) in &self.by_expiry {
            if expiry > now || out.len() >= self.config.max_expire_batch {
                break;
            }
            let Some(clock) = self.clocks.get(&id) else {
                continue;
            };
            let due = clock
                .expiry_proposed
                .is_none_or(|at| now >= at + self.config.expire_retry);
            if due {
                out.push(id);
            }
        }
        for id in &out {
            if let Some(clock) = self.clocks.get_mut(id) {
                clock.expiry_proposed = Some(now);
            }
        }
        out
    }

    /// Remaining-TTL records for leases whose checkpoint is due, at most
    /// `max_checkpoint_batch`: propose `LeaseCheckpoint { checkpoints }`. The remaining
    /// TTL is rounded up, and leases that still have their full TTL are skipped, as in
    /// etcd.
    pub fn checkpoints(&mut self, now: Instant) -> Vec<LeaseCheckpoint> {
        if !self.primary {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (id, clock) in self.clocks.iter_mut() {
            if out.len() >= self.config.max_checkpoint_batch {
                break;
            }
            if clock.next_checkpoint.is_some_and(|at| at <= now) {
                clock.next_checkpoint = Some(now + self.config.checkpoint_interval);
                let left = clock.expiry.saturating_duration_since(now);
                let remaining =
                    i64::try_from(left.as_nanos().div_ceil(1_000_000_000)).unwrap_or(i64::MAX);
                if remaining < clock.ttl && remaining > 0 {
                    out.push(LeaseCheckpoint {
                        id: *id,
                        remaining_ttl: remaining,
                    });
                }
            }
        }
        out
    }
}
