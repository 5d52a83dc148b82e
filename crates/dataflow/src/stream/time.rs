//! Event time, watermarks and the per-channel watermark tracker.
//!
//! A watermark `W` on a channel promises that every later record on that channel has an event
//! time of at least `W` (Akidau et al. 2015, §2.3; Carbone et al. 2015 call these "low
//! watermarks"). An operator with several input channels takes the minimum over the channels
//! that are not idle: an idle channel (a source that has nothing to say) must not hold event
//! time back forever, and it rejoins the minimum as soon as it speaks again.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A point in event time: milliseconds since an arbitrary epoch chosen by the source.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct EventTime(pub u64);

impl EventTime {
    /// The smallest event time: "nothing is known to be complete yet".
    pub const MIN: EventTime = EventTime(0);
    /// The end of time: the final watermark of a finished source.
    pub const MAX: EventTime = EventTime(u64::MAX);

    /// `self + millis`, saturating at [`EventTime::MAX`].
    pub fn plus(self, millis: u64) -> EventTime {
        EventTime(self.0.saturating_add(millis))
    }

    /// `self - millis`, saturating at [`EventTime::MIN`].
    pub fn minus(self, millis: u64) -> EventTime {
        EventTime(self.0.saturating_sub(millis))
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == EventTime::MAX {
            write!(f, "∞")
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

/// Bounded out-of-orderness: a source that has seen event time `max` promises that no later
/// record is older than `max - bound`, so its watermark is `max - bound`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundedOutOfOrderness {
    bound_ms: u64,
    max_seen: Option<EventTime>,
}

impl BoundedOutOfOrderness {
    /// A generator that tolerates records up to `bound_ms` older than the newest one seen.
    pub fn new(bound_ms: u64) -> Self {
        BoundedOutOfOrderness {
            bound_ms,
            max_seen: None,
        }
    }

    /// Note one record's event time.
    #[inline]
    pub fn observe(&mut self, ts: EventTime) {
        if self.max_seen.is_none_or(|m| ts > m) {
            self.max_seen = Some(ts);
        }
    }

    /// The current watermark: `max_seen - bound`, or [`EventTime::MIN`] before any record.
    pub fn watermark(&self) -> EventTime {
        self.max_seen
            .map_or(EventTime::MIN, |m| m.minus(self.bound_ms))
    }
}

/// The watermark of an operator with several input channels: the minimum over the active
/// channels. Idle channels are left out of the minimum; if every channel is idle the
/// watermark stays where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkTracker {
    channels: Vec<ChannelMark>,
    current: EventTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ChannelMark {
    watermark: EventTime,
    idle: bool,
}

impl WatermarkTracker {
    /// A tracker over `channels` input channels, all at [`EventTime::MIN`] and active.
    pub fn new(channels: usize) -> Self {
        WatermarkTracker {
            channels: vec![
                ChannelMark {
                    watermark: EventTime::MIN,
                    idle: false
                };
                channels
            ],
            current: EventTime::MIN,
        }
    }

    /// The operator's watermark.
    pub fn current(&self) -> EventTime {
        self.current
    }

    /// A watermark arrived on `channel`. Returns the operator's new watermark if it
    /// advanced. Watermarks never go back, per channel or overall.
    pub fn on_watermark(&mut self, channel: usize, watermark: EventTime) -> Option<EventTime> {
        let mark = self.channels.get_mut(channel)?;
        mark.idle = false;
        if watermark > mark.watermark {
            mark.watermark = watermark;
        }
        self.recompute()
    }

    /// A record arrived on `channel`: the channel is active again.
    #[inline]
    pub fn on_record(&mut self, channel: usize) {
        if let Some(mark) = self.channels.get_mut(channel) {
            mark.idle = false;
        }
    }

    /// `channel` declared itself idle (its source has had nothing to send for a while).
    /// Returns the operator's new watermark if leaving it out advanced the minimum.
    pub fn on_idle(&mut self, channel: usize) -> Option<EventTime> {
        self.channels.get_mut(channel)?.idle = true;
        self.recompute()
    }

    /// Whether `channel` is currently idle.
    pub fn is_idle(&self, channel: usize) -> bool {
        self.channels.get(channel).is_some_and(|m| m.idle)
    }

    fn recompute(&mut self) -> Option<EventTime> {
        let min = self
            .channels
            .iter()
            .filter(|m| !m.idle)
            .map(|m| m.watermark)
            .min()?;
        if min > self.current {
            self.current = min;
            Some(min)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_minimum_over_input_channels() {
        let mut t = WatermarkTracker::new(3);
        assert_eq!(t.on_watermark(0, EventTime(10)), None);
        assert_eq!(t.on_watermark(1, EventTime(5)), None);
        assert_eq!(t.on_watermark(2, EventTime(7)), Some(EventTime(5)));
        assert_eq!(t.on_watermark(1, EventTime(20)), Some(EventTime(7)));
        // A channel's watermark never goes back.
        assert_eq!(t.on_watermark(2, EventTime(1)), None);
        assert_eq!(t.current(), EventTime(7));
    }

    #[test]
    fn an_idle_channel_does_not_hold_the_watermark_back() {
        let mut t = WatermarkTracker::new(2);
        assert_eq!(t.on_watermark(0, EventTime(100)), None);
        assert_eq!(t.on_idle(1), Some(EventTime(100)));
        assert!(t.is_idle(1));
        // It rejoins the minimum when it speaks again, without moving the watermark back.
        t.on_record(1);
        assert!(!t.is_idle(1));
        assert_eq!(t.on_watermark(0, EventTime(200)), None);
        assert_eq!(t.on_watermark(1, EventTime(150)), Some(EventTime(150)));
    }

    #[test]
    fn bounded_out_of_orderness_trails_the_newest_record() {
        let mut g = BoundedOutOfOrderness::new(50);
        assert_eq!(g.watermark(), EventTime::MIN);
        g.observe(EventTime(1000));
        g.observe(EventTime(900));
        assert_eq!(g.watermark(), EventTime(950));
    }
}
