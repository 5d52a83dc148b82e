//! Hybrid logical clocks (Kulkarni, Demirbas, Madappa, Avva and Leone, "Logical Physical
//! Clocks and Consistent Snapshots in Globally Distributed Databases", OPODIS 2014, Fig. 5).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use synod_core::{duration_nanos, Instant};
use thiserror::Error;

/// A hybrid logical timestamp `(l, c)`, ordered lexicographically.
///
/// `wall` is the paper's `l`: the largest physical time this node has heard of, in the
/// nanoseconds of the physical clocks. `logical` is the paper's `c`: it counts events that
/// share the same `wall`, so causally ordered events stay ordered when physical clocks do
/// not move or lag.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct HlcTimestamp {
    /// The paper's `l`: physical time, the maximum heard of.
    pub wall: Instant,
    /// The paper's `c`: events since `wall` last changed.
    pub logical: u32,
}

impl HlcTimestamp {
    /// The timestamp before every other.
    pub const ZERO: HlcTimestamp = HlcTimestamp {
        wall: Instant::ZERO,
        logical: 0,
    };

    /// The smallest timestamp greater than `self`.
    ///
    /// `logical` is 32 bits, as in CockroachDB. Should it be exhausted (only a peer sending
    /// absurd counters gets near), the wall time moves on by one nanosecond instead, which
    /// keeps the order strict at the cost of running that nanosecond ahead. At the very end
    /// of time the clock saturates rather than wrap around.
    fn successor(self) -> HlcTimestamp {
        if let Some(logical) = self.logical.checked_add(1) {
            return HlcTimestamp {
                wall: self.wall,
                logical,
            };
        }
        match self.wall.0.checked_add(1) {
            Some(wall) => HlcTimestamp {
                wall: Instant(wall),
                logical: 0,
            },
            None => self,
        }
    }
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.wall, self.logical)
    }
}

/// Why a received timestamp was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum HlcError {
    /// The sender's clock is further ahead of ours than the configured maximum offset:
    /// one of the two clocks is broken, and adopting its time would drag every clock that
    /// hears from us into the future.
    #[error(
        "received timestamp {received} is {ahead:?} ahead of local physical time {physical}, \
         more than the maximum clock offset {max_offset:?}"
    )]
    RemoteClockTooFarAhead {
        /// The timestamp that was refused.
        received: HlcTimestamp,
        /// Local physical time when it arrived.
        physical: Instant,
        /// How far ahead of `physical` its wall time is.
        ahead: Duration,
        /// The configured bound.
        max_offset: Duration,
    },
}

/// One node's hybrid logical clock.
///
/// Inputs are the node's physical time `pt`, given as an argument (from
/// [`synod_core::Ctx::now`]), and timestamps on received messages:
///
/// - [`HybridLogicalClock::now`]: a local or send event;
/// - [`HybridLogicalClock::update`]: a receive event.
///
/// Guarantees (paper §3, Theorems 1–3), provided physical clocks are monotonic and within
/// ε of one another: `l ≥ pt`; `e → f ⇒ hlc(e) < hlc(f)`; `l − pt ≤ ε`; and `c` stays
/// small (at most the number of events in an ε window). Timestamps issued by one clock are
/// strictly increasing (until they saturate at the end of time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HybridLogicalClock {
    latest: HlcTimestamp,
    max_offset: Duration,
}

impl HybridLogicalClock {
    /// A clock that refuses received timestamps more than `max_offset` ahead of local
    /// physical time (CockroachDB's `--max-offset`; 500 ms there by default).
    pub fn new(max_offset: Duration) -> Self {
        HybridLogicalClock {
            latest: HlcTimestamp::ZERO,
            max_offset,
        }
    }

    /// A clock resumed after a restart, never to issue a timestamp at or below `latest`.
    pub fn resume(max_offset: Duration, latest: HlcTimestamp) -> Self {
        HybridLogicalClock { latest, max_offset }
    }

    /// The last timestamp issued (or resumed from).
    pub fn latest(&self) -> HlcTimestamp {
        self.latest
    }

    /// The configured maximum offset.
    pub fn max_offset(&self) -> Duration {
        self.max_offset
    }

    /// A local or send event at physical time `physical`: returns its timestamp.
    ///
    /// Paper, Fig. 5: `l := max(l', pt)`; `c := c + 1` if `l` did not change, else 0.
    pub fn now(&mut self, physical: Instant) -> HlcTimestamp {
        self.latest = if physical > self.latest.wall {
            HlcTimestamp {
                wall: physical,
                logical: 0,
            }
        } else {
            self.latest.successor()
        };
        self.latest
    }

    /// A receive event at physical time `physical` of a message stamped `received`: returns
    /// the receive event's timestamp, greater than both `received` and every timestamp this
    /// clock issued before.
    ///
    /// Paper, Fig. 5: `l := max(l', l_m, pt)`; then `c` is `max(c', c_m) + 1`, `c' + 1`,
    /// `c_m + 1` or 0 depending on which of the three supplied `l`. That is the same as
    /// taking the successor of `max((l', c'), (l_m, c_m))`, unless `pt` exceeds both.
    ///
    /// Refuses, changing nothing, a timestamp whose wall time is more than the maximum
    /// offset ahead of `physical`.
    pub fn update(
        &mut self,
        physical: Instant,
        received: HlcTimestamp,
    ) -> Result<HlcTimestamp, HlcError> {
        let limit = physical.saturating_add(self.max_offset);
        if received.wall > limit {
            return Err(HlcError::RemoteClockTooFarAhead {
                received,
                physical,
                ahead: received.wall - physical,
                max_offset: self.max_offset,
            });
        }
        let heard = self.latest.max(received);
        self.latest = if physical > heard.wall {
            HlcTimestamp {
                wall: physical,
                logical: 0,
            }
        } else {
            heard.successor()
        };
        Ok(self.latest)
    }

    /// How far the clock's `l` runs ahead of `physical`, in nanoseconds (zero if behind).
    /// Theorem 2 bounds this by ε.
    pub fn drift_ahead(&self, physical: Instant) -> u64 {
        duration_nanos(self.latest.wall - physical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(wall: u64, logical: u32) -> HlcTimestamp {
        HlcTimestamp {
            wall: Instant(wall),
            logical,
        }
    }

    const MAX_OFFSET: Duration = Duration::from_millis(500);

    #[test]
    fn local_event_follows_physical_time_when_it_advances() {
        let mut clock = HybridLogicalClock::new(MAX_OFFSET);
        assert_eq!(clock.now(Instant(100)), ts(100, 0));
        assert_eq!(clock.now(Instant(250)), ts(250, 0));
    }

    #[test]
    fn local_event_counts_up_when_physical_time_stalls() {
        let mut clock = HybridLogicalClock::new(MAX_OFFSET);
        clock.now(Instant(100));
        assert_eq!(clock.now(Instant(100)), ts(100, 1));
        // A physical clock that stepped back does not move the HLC back.
        assert_eq!(clock.now(Instant(90)), ts(100, 2));
    }

    #[test]
    fn receive_applies_each_case_of_figure_5() {
        // l = l' = l_m: c := max(c', c_m) + 1.
        let mut clock = HybridLogicalClock::resume(MAX_OFFSET, ts(100, 3));
        assert_eq!(clock.update(Instant(50), ts(100, 7)), Ok(ts(100, 8)));
        // l = l': c := c' + 1.
        let mut clock = HybridLogicalClock::resume(MAX_OFFSET, ts(100, 3));
        assert_eq!(clock.update(Instant(50), ts(90, 9)), Ok(ts(100, 4)));
        // l = l_m: c := c_m + 1.
        let mut clock = HybridLogicalClock::resume(MAX_OFFSET, ts(100, 3));
        assert_eq!(clock.update(Instant(50), ts(120, 2)), Ok(ts(120, 3)));
        // l = pt: c := 0.
        let mut clock = HybridLogicalClock::resume(MAX_OFFSET, ts(100, 3));
        assert_eq!(clock.update(Instant(200), ts(120, 2)), Ok(ts(200, 0)));
    }

    #[test]
    fn timestamp_beyond_max_offset_is_refused_and_changes_nothing() {
        let mut clock = HybridLogicalClock::new(Duration::from_nanos(1_000));
        clock.now(Instant(10_000));
        let before = clock.clone();
        let result = clock.update(Instant(10_000), ts(11_001, 0));
        assert_eq!(
            result,
            Err(HlcError::RemoteClockTooFarAhead {
                received: ts(11_001, 0),
                physical: Instant(10_000),
                ahead: Duration::from_nanos(1_001),
                max_offset: Duration::from_nanos(1_000),
            })
        );
        assert_eq!(clock, before);
        // Exactly at the bound is accepted.
        assert_eq!(
            clock.update(Instant(10_000), ts(11_000, 0)),
            Ok(ts(11_000, 1))
        );
        assert_eq!(clock.drift_ahead(Instant(10_000)), 1_000);
    }

    #[test]
    fn exhausted_logical_counter_carries_into_wall_time() {
        let mut clock = HybridLogicalClock::new(MAX_OFFSET);
        let received = ts(100, u32::MAX);
        let stamp = clock.update(Instant(100), received).expect("within offset");
        assert!(stamp > received);
        assert_eq!(stamp, ts(101, 0));
    }

    #[test]
    fn end_of_time_is_not_an_overflow() {
        let mut clock = HybridLogicalClock::new(MAX_OFFSET);
        let received = ts(u64::MAX, u32::MAX);
        let stamp = clock
            .update(Instant(u64::MAX), received)
            .expect("within offset");
        assert_eq!(
            stamp, received,
            "saturated, never wrapped below what was received"
        );
        assert_eq!(clock.now(Instant(u64::MAX)), received);
    }
}
