//! The pieces of a SWIM node's state: the gossip queue and Lifeguard's suspicion timers.

use super::msg::{EventTime, Update};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use synod_core::{Instant, NodeId};

/// What a queued broadcast is about. A newer update with the same key replaces the older
/// one: only the latest news about a member is worth spreading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum BroadcastKey {
    Member(NodeId),
    Event(NodeId, EventTime),
}

impl BroadcastKey {
    pub(crate) fn of(update: &Update) -> BroadcastKey {
        match update {
            Update::Event(e) => BroadcastKey::Event(e.origin, e.time),
            other => BroadcastKey::Member(other.subject()),
        }
    }
}

struct Queued {
    update: Update,
    transmits: u32,
    id: u64,
}

/// The infection-style dissemination buffer (SWIM §4.1): every update is piggybacked on
/// outgoing messages until it has gone out `limit` times (λ·log N). The least-sent, then
/// newest, updates go first, as memberlist's transmit-limited queue does, so fresh news
/// is never starved by old.
#[derive(Default)]
pub(crate) struct BroadcastQueue {
    entries: BTreeMap<BroadcastKey, Queued>,
    order: BTreeSet<(u32, Reverse<u64>, BroadcastKey)>,
    next_id: u64,
}

impl BroadcastQueue {
    pub(crate) fn push(&mut self, update: Update) {
        let key = BroadcastKey::of(&update);
        if let Some(old) = self.entries.remove(&key) {
            self.order.remove(&(old.transmits, Reverse(old.id), key));
        }
        self.next_id += 1;
        let id = self.next_id;
        self.order.insert((0, Reverse(id), key));
        self.entries.insert(
            key,
            Queued {
                update,
                transmits: 0,
                id,
            },
        );
    }

    /// The queued update with `key`, if any.
    pub(crate) fn get(&self, key: &BroadcastKey) -> Option<&Update> {
        self.entries.get(key).map(|q| &q.update)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Take up to `max` updates for one message, counting a transmission for each and
    /// dropping those that reach `limit`. `skip` names an update already placed (the
    /// buddy system's) so that it is not sent twice in one message.
    pub(crate) fn take(
        &mut self,
        max: usize,
        limit: u32,
        skip: Option<BroadcastKey>,
    ) -> Vec<Update> {
        let picked: Vec<(u32, Reverse<u64>, BroadcastKey)> = self
            .order
            .iter()
            .filter(|(_, _, k)| Some(*k) != skip)
            .take(max)
            .copied()
            .collect();
        let mut out = Vec::with_capacity(picked.len());
        for (transmits, id, key) in picked {
            self.order.remove(&(transmits, id, key));
            let Some(q) = self.entries.get_mut(&key) else {
                continue;
            };
            out.push(q.update.clone());
            q.transmits = transmits + 1;
            if q.transmits >= limit {
                self.entries.remove(&key);
            } else {
                self.order.insert((q.transmits, id, key));
            }
        }
        out
    }
}

/// Lifeguard's dynamic suspicion timeout (Dadgar et al. 2017, §IV-B): a suspicion starts
/// with the long `max` timeout and shrinks towards `min` as independent suspicions of the
/// same member (confirmations) arrive, logarithmically in their number, reaching `min`
/// after `expected` confirmations.
#[derive(Clone, Debug)]
pub(crate) struct Suspicion {
    pub(crate) started: Instant,
    pub(crate) confirmers: BTreeSet<NodeId>,
    pub(crate) expected: usize,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Suspicion {
    pub(crate) fn new(
        started: Instant,
        first: NodeId,
        expected: usize,
        min: Duration,
        max: Duration,
    ) -> Self {
        Suspicion {
            started,
            confirmers: BTreeSet::from([first]),
            expected,
            min,
            max: max.max(min),
        }
    }

    /// Confirmations beyond the first suspecter.
    pub(crate) fn confirmations(&self) -> usize {
        self.confirmers.len().saturating_sub(1)
    }

    /// The timeout as it stands: max − (max − min)·log(C+1)/log(K+1), never below min.
    pub(crate) fn timeout(&self) -> Duration {
        if self.expected == 0 {
            return self.min;
        }
        let c = self.confirmations().min(self.expected) as f64;
        let fraction = (c + 1.0).ln() / (self.expected as f64 + 1.0).ln();
        let span = self.max.saturating_sub(self.min).as_secs_f64();
        let t = self.max.as_secs_f64() - span * fraction;
        Duration::from_secs_f64(t.max(self.min.as_secs_f64()))
    }

    /// When the suspicion expires.
    pub(crate) fn deadline(&self) -> Instant {
        self.started + self.timeout()
    }
}
