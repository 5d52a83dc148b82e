//! A sliding time window of counts in fixed buckets, shared by the breaker and the budget.

use std::time::Duration;
use synod_core::Instant;

/// Counts (successes, failures) over the last `buckets` buckets of `width` each. An event
/// at time t belongs to bucket ⌊t / width⌋, and the window at `now` is the buckets
/// ⌊now / width⌋ − buckets + 1 ..= ⌊now / width⌋.
#[derive(Debug, Clone)]
pub(crate) struct BucketWindow {
    width: u64,
    slots: Vec<(u64, u64, u64)>,
}

impl BucketWindow {
    pub(crate) fn new(window: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
        BucketWindow {
            width: (nanos / u64::from(buckets)).max(1),
            slots: vec![(u64::MAX, 0, 0); buckets as usize],
        }
    }

    fn slot(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let id = now.0 / self.width;
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(id % len) as usize];
        if slot.0 != id {
            *slot = (id, 0, 0);
        }
        slot
    }

    pub(crate) fn record(&mut self, now: Instant, success: bool) {
        let slot = self.slot(now);
        if success {
            slot.1 += 1;
        } else {
            slot.2 += 1;
        }
    }

    /// (successes, failures) in the window at `now`.
    pub(crate) fn counts(&self, now: Instant) -> (u64, u64) {
        let id = now.0 / self.width;
        let len = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(|(slot_id, _, _)| *slot_id <= id && *slot_id + len > id)
            .fold((0, 0), |(s, f), (_, a, b)| (s + a, f + b))
    }

    pub(crate) fn clear(&mut self) {
        for slot in &mut self.slots {
            *slot = (u64::MAX, 0, 0);
        }
    }

    #[cfg(test)]
    pub(crate) fn bucket_width(&self) -> u64 {
        self.width
    }
}
