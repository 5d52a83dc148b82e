//! Lamport's logical clock (Lamport 1978, "Time, Clocks, and the Ordering of Events in a
//! Distributed System", rules IR1 and IR2, and the total order `⇒` of §3).

use serde::{Deserialize, Serialize};
use std::fmt;
use synod_core::NodeId;

/// A Lamport timestamp made totally ordered by the node that issued it.
///
/// Ordering compares `time` first and breaks ties by `node`, which is Lamport's relation
/// `⇒` (§3): every pair of distinct events is ordered, and the order extends happens-before.
/// Two timestamps from one clock are never equal.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct LamportTimestamp {
    /// The clock value `C⟨a⟩` of the event.
    pub time: u64,
    /// The node whose clock issued the timestamp: the tie-breaker.
    pub node: NodeId,
}

impl fmt::Display for LamportTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.time, self.node)
    }
}

/// One node's Lamport clock.
///
/// - [`LamportClock::tick`] before a local event or a send (IR1);
/// - [`LamportClock::observe`] on receipt of a message carrying a timestamp (IR2).
///
/// Together they keep the clock condition: if `a → b` then `C⟨a⟩ < C⟨b⟩`.
///
/// The clock saturates at `u64::MAX` instead of overflowing. Honest processes cannot get
/// there (2⁶⁴ events); only a peer that sends absurd timestamps can, and a protocol that
/// must survive such peers should bound what it accepts before calling
/// [`LamportClock::observe`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LamportClock {
    node: NodeId,
    time: u64,
}

impl LamportClock {
    /// A clock for `node`, starting at zero: the next event gets time 1.
    pub fn new(node: NodeId) -> Self {
        LamportClock { node, time: 0 }
    }

    /// A clock for `node` resumed at `time`, e.g. after a restart from a persisted value.
    /// The next event gets a larger time.
    pub fn resume(node: NodeId, time: u64) -> Self {
        LamportClock { node, time }
    }

    /// The node this clock belongs to.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The timestamp of the last event, without advancing the clock.
    pub fn current(&self) -> LamportTimestamp {
        LamportTimestamp {
            time: self.time,
            node: self.node,
        }
    }

    /// A local event or a send (IR1): advance the clock and return the event's timestamp.
    /// A send attaches the returned timestamp to the message.
    pub fn tick(&mut self) -> LamportTimestamp {
        self.time = self.time.saturating_add(1);
        self.current()
    }

    /// The receipt of a message stamped `received` (IR2): set the clock past both its own
    /// value and the sender's, and return the receive event's timestamp.
    pub fn observe(&mut self, received: LamportTimestamp) -> LamportTimestamp {
        self.time = self.time.max(received.time).saturating_add(1);
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_advances_by_one_per_event() {
        let mut clock = LamportClock::new(NodeId(3));
        assert_eq!(clock.tick().time, 1);
        assert_eq!(clock.tick().time, 2);
        assert_eq!(clock.current().node, NodeId(3));
    }

    #[test]
    fn receive_sets_clock_past_the_message_timestamp() {
        // IR2: C_j := max(C_j, T_m) + 1.
        let mut receiver = LamportClock::new(NodeId(1));
        receiver.tick();
        let stamp = receiver.observe(LamportTimestamp {
            time: 10,
            node: NodeId(0),
        });
        assert_eq!(stamp.time, 11);
        // A message from the past still advances the clock by one.
        let stamp = receiver.observe(LamportTimestamp {
            time: 2,
            node: NodeId(0),
        });
        assert_eq!(stamp.time, 12);
    }

    #[test]
    fn total_order_breaks_ties_by_node() {
        let a = LamportTimestamp {
            time: 5,
            node: NodeId(1),
        };
        let b = LamportTimestamp {
            time: 5,
            node: NodeId(2),
        };
        let c = LamportTimestamp {
            time: 6,
            node: NodeId(0),
        };
        assert!(a < b && b < c);
    }

    #[test]
    fn hostile_timestamp_saturates_instead_of_overflowing() {
        let mut clock = LamportClock::new(NodeId(0));
        let stamp = clock.observe(LamportTimestamp {
            time: u64::MAX,
            node: NodeId(1),
        });
        assert_eq!(stamp.time, u64::MAX);
        assert_eq!(clock.tick().time, u64::MAX);
    }

    #[test]
    fn resumed_clock_never_reissues_a_persisted_time() {
        let mut clock = LamportClock::resume(NodeId(0), 41);
        assert_eq!(clock.tick().time, 42);
    }
}
