//! NTP on-wire arithmetic and the clock filter (RFC 5905 §8 and §10; Mills).
//!
//! Every difference is taken in `i128` nanoseconds. Instants are `u64`, so a difference
//! needs 65 bits and a sum of two differences 66: no timestamp a peer can send overflows.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;
use synod_core::Instant;
use thiserror::Error;

/// How many samples the clock filter keeps (RFC 5905 `NSTAGE`).
pub const CLOCK_FILTER_STAGES: usize = 8;

/// A signed clock offset in nanoseconds: `reference = local + offset`.
///
/// Positive when the reference (server, master) clock is ahead of the local one. This is
/// the sign of NTP's θ (RFC 5905 §8); PTP's `offsetFromMaster` has the opposite sign (see
/// [`crate::clocks::PtpMeasurement::master_offset`]).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct ClockOffset(pub i128);

impl ClockOffset {
    /// No offset: the clocks agree.
    pub const ZERO: ClockOffset = ClockOffset(0);

    /// The offset between a reading of the reference clock and a simultaneous reading of
    /// the local clock.
    pub fn between(reference: Instant, local: Instant) -> ClockOffset {
        ClockOffset(i128::from(reference.0) - i128::from(local.0))
    }

    /// The offset in nanoseconds.
    pub fn as_nanos(self) -> i128 {
        self.0
    }

    /// The reference clock's reading, in signed nanoseconds, when the local clock reads
    /// `local`. Signed because a reference clock behind the local one can read before its
    /// own origin.
    pub fn apply(self, local: Instant) -> i128 {
        i128::from(local.0).saturating_add(self.0)
    }

    /// `|self − other|` in nanoseconds.
    pub fn distance(self, other: ClockOffset) -> u128 {
        self.0.abs_diff(other.0)
    }
}

impl fmt::Display for ClockOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { '-' } else { '+' };
        let magnitude = self.0.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:09}s",
            magnitude / 1_000_000_000,
            magnitude % 1_000_000_000
        )
    }
}

/// The four timestamps of one client/server exchange (RFC 5905 §8, Figure 14 names).
///
/// `origin` and `destination` are read on the client's clock, `receive` and `transmit` on
/// the server's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct NtpTimestamps {
    /// T1: the client sent the request.
    pub origin: Instant,
    /// T2: the server received it.
    pub receive: Instant,
    /// T3: the server sent the response.
    pub transmit: Instant,
    /// T4: the client received the response.
    pub destination: Instant,
}

impl NtpTimestamps {
    /// θ = ((T2 − T1) + (T3 − T4)) / 2: the server's clock minus the client's, assuming
    /// equal delays both ways. Rounded toward negative infinity to whole nanoseconds.
    pub fn offset(&self) -> ClockOffset {
        let outbound = nanos(self.receive) - nanos(self.origin);
        let inbound = nanos(self.transmit) - nanos(self.destination);
        ClockOffset((outbound + inbound).div_euclid(2))
    }

    /// δ = (T4 − T1) − (T3 − T2) in nanoseconds: the round trip less the server's holding
    /// time. Negative only for inconsistent timestamps.
    pub fn delay_nanos(&self) -> i128 {
        (nanos(self.destination) - nanos(self.origin))
            - (nanos(self.transmit) - nanos(self.receive))
    }

    /// Check the timestamps and compute the sample, or say why they are bogus.
    pub fn sample(&self) -> Result<NtpSample, NtpSampleError> {
        if self.destination < self.origin {
            return Err(NtpSampleError::DestinationBeforeOrigin {
                origin: self.origin,
                destination: self.destination,
            });
        }
        if self.transmit < self.receive {
            return Err(NtpSampleError::TransmitBeforeReceive {
                receive: self.receive,
                transmit: self.transmit,
            });
        }
        let delay = self.delay_nanos();
        let delay = u64::try_from(delay)
            .map_err(|_| NtpSampleError::NegativeDelay { delay_nanos: delay })?;
        Ok(NtpSample {
            timestamps: *self,
            offset: self.offset(),
            delay: Duration::from_nanos(delay),
        })
    }
}

fn nanos(instant: Instant) -> i128 {
    i128::from(instant.0)
}

/// Why an exchange's timestamps were refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum NtpSampleError {
    /// T4 < T1: the response arrived before the request left, on the client's own clock.
    #[error("response received at {destination} before the request was sent at {origin}")]
    DestinationBeforeOrigin {
        /// T1.
        origin: Instant,
        /// T4.
        destination: Instant,
    },
    /// T3 < T2: the server claims to have answered before it received the request.
    #[error("server transmit time {transmit} is before its receive time {receive}")]
    TransmitBeforeReceive {
        /// T2.
        receive: Instant,
        /// T3.
        transmit: Instant,
    },
    /// δ < 0: the server claims to have held the request longer than the whole round trip.
    #[error("round-trip delay is negative ({delay_nanos} ns)")]
    NegativeDelay {
        /// The computed δ.
        delay_nanos: i128,
    },
}

/// One valid offset measurement: θ, δ and when it was taken.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NtpSample {
    timestamps: NtpTimestamps,
    offset: ClockOffset,
    delay: Duration,
}

impl NtpSample {
    /// θ: the server's clock minus the client's.
    pub fn offset(&self) -> ClockOffset {
        self.offset
    }

    /// δ: the round-trip delay, never negative.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The true offset lies within `offset ± error_bound` (for clocks whose rates did not
    /// differ during the exchange). It is δ/2 whatever the split of δ between the two
    /// directions, rounded up to cover the rounding of θ.
    pub fn error_bound(&self) -> Duration {
        Duration::from_nanos(self.delay.as_nanos().div_ceil(2) as u64)
    }

    /// T4 on the client's clock: when the sample was taken.
    pub fn taken_at(&self) -> Instant {
        self.timestamps.destination
    }

    /// The midpoint of T1 and T4 on the client's clock: the local time θ refers to. With
    /// a server clock that runs at a different rate, θ is the offset at this instant, not
    /// at T4.
    pub fn midpoint(&self) -> Instant {
        let NtpTimestamps {
            origin,
            destination,
            ..
        } = self.timestamps;
        // A valid sample has T4 ≥ T1.
        Instant(origin.0 + (destination.0 - origin.0) / 2)
    }

    /// The four timestamps it was computed from.
    pub fn timestamps(&self) -> NtpTimestamps {
        self.timestamps
    }
}

/// The clock filter of RFC 5905 §10: the last [`CLOCK_FILTER_STAGES`] samples from one
/// server, of which the one with the least delay is the best.
///
/// Queueing delay only ever adds to δ, and the offset error is bounded by δ/2, so the
/// lowest-delay sample in a recent window is the one least disturbed by the network. The
/// reference implementation (RFC 5905 Appendix A.5.2, `clock_filter`) sorts the window by
/// delay the same way. Its popcorn-spike suppressor and dispersion bookkeeping are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClockFilter {
    samples: VecDeque<NtpSample>,
}

impl ClockFilter {
    /// An empty filter.
    pub fn new() -> Self {
        ClockFilter::default()
    }

    /// Add the newest sample, evicting the oldest once the window is full.
    pub fn push(&mut self, sample: NtpSample) {
        if self.samples.len() == CLOCK_FILTER_STAGES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The sample with the least delay; of equals, the newest.
    pub fn best(&self) -> Option<&NtpSample> {
        self.samples.iter().rev().min_by_key(|sample| sample.delay)
    }

    /// The samples held, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &NtpSample> + '_ {
        self.samples.iter()
    }

    /// The number of samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True if no sample has been pushed since the filter was made or cleared.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Forget every sample (e.g. after the server changes).
    pub fn clear(&mut self) {
        self.samples.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An exchange with the server `offset` ns ahead, one-way delays `outbound` and
    /// `inbound`, and the server holding the request for `hold` ns.
    fn exchange(t1: u64, offset: i64, outbound: u64, hold: u64, inbound: u64) -> NtpTimestamps {
        let server = |client: u64| Instant(client.checked_add_signed(offset).expect("test range"));
        NtpTimestamps {
            origin: Instant(t1),
            receive: server(t1 + outbound),
            transmit: server(t1 + outbound + hold),
            destination: Instant(t1 + outbound + hold + inbound),
        }
    }

    #[test]
    fn symmetric_paths_give_the_exact_offset() {
        let stamps = exchange(5_000_000, 1_000_000_000, 4_000_000, 1_000_000, 4_000_000);
        let sample = stamps.sample().expect("valid");
        assert_eq!(sample.offset(), ClockOffset(1_000_000_000));
        assert_eq!(sample.delay(), Duration::from_millis(8));
        assert_eq!(sample.error_bound(), Duration::from_millis(4));
        assert_eq!(sample.taken_at(), Instant(14_000_000));
    }

    #[test]
    fn asymmetric_paths_bias_the_offset_by_half_the_asymmetry() {
        // 2 ms out, 6 ms back: θ is off by (2 − 6)/2 = −2 ms, inside ±δ/2 = ±4 ms.
        let stamps = exchange(10_000_000, -3_000_000, 2_000_000, 0, 6_000_000);
        let sample = stamps.sample().expect("valid");
        assert_eq!(sample.offset(), ClockOffset(-5_000_000));
        assert_eq!(sample.delay(), Duration::from_millis(8));
        assert_eq!(format!("{}", sample.offset()), "-0.005000000s");
    }

    #[test]
    fn bogus_timestamps_are_refused() {
        let mut stamps = exchange(1_000, 0, 10, 5, 10);
        stamps.destination = Instant(999);
        assert!(matches!(
            stamps.sample(),
            Err(NtpSampleError::DestinationBeforeOrigin { .. })
        ));
        let mut stamps = exchange(1_000, 0, 10, 5, 10);
        stamps.transmit = Instant(stamps.receive.0 - 1);
        assert!(matches!(
            stamps.sample(),
            Err(NtpSampleError::TransmitBeforeReceive { .. })
        ));
        let mut stamps = exchange(1_000, 0, 10, 5, 10);
        stamps.transmit = Instant(stamps.receive.0 + 100);
        assert_eq!(
            stamps.sample(),
            Err(NtpSampleError::NegativeDelay { delay_nanos: -75 })
        );
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let stamps = NtpTimestamps {
            origin: Instant(0),
            receive: Instant(u64::MAX),
            transmit: Instant(u64::MAX),
            destination: Instant(0),
        };
        assert_eq!(stamps.offset(), ClockOffset(i128::from(u64::MAX)));
        assert_eq!(stamps.delay_nanos(), 0);
        let stamps = NtpTimestamps {
            origin: Instant(0),
            receive: Instant(0),
            transmit: Instant(u64::MAX),
            destination: Instant(0),
        };
        assert_eq!(stamps.delay_nanos(), -i128::from(u64::MAX));
        assert!(stamps.sample().is_err());
    }

    #[test]
    fn filter_chooses_the_minimum_delay_sample() {
        let mut filter = ClockFilter::new();
        for (i, delay) in [9u64, 4, 7, 4, 12].into_iter().enumerate() {
            let t1 = 1_000 * i as u64;
            filter.push(exchange(t1, 50, delay, 0, delay).sample().expect("valid"));
        }
        let best = filter.best().expect("non-empty");
        assert_eq!(best.delay(), Duration::from_nanos(8));
        assert_eq!(
            best.taken_at(),
            Instant(3_008),
            "of equal delays, the newest"
        );
    }

    #[test]
    fn filter_keeps_only_the_last_eight_samples() {
        let mut filter = ClockFilter::new();
        filter.push(exchange(0, 0, 1, 0, 1).sample().expect("valid"));
        for i in 1..=CLOCK_FILTER_STAGES as u64 {
            filter.push(exchange(i * 1_000, 0, 50, 0, 50).sample().expect("valid"));
        }
        assert_eq!(filter.len(), CLOCK_FILTER_STAGES);
        assert_eq!(
            filter.best().map(NtpSample::delay),
            Some(Duration::from_nanos(100)),
            "the old low-delay sample has aged out"
        );
    }

    proptest! {
        #[test]
        fn true_offset_lies_within_half_the_delay(
            t1 in 0u64..1 << 50,
            offset in -(1i64 << 45)..(1i64 << 45),
            outbound in 0u64..1 << 30,
            hold in 0u64..1 << 20,
            inbound in 0u64..1 << 30,
        ) {
            // Keep server readings non-negative.
            let t1 = t1 + (1 << 46);
            let sample = exchange(t1, offset, outbound, hold, inbound).sample().expect("valid");
            prop_assert_eq!(sample.delay(), Duration::from_nanos(outbound + inbound));
            let error = sample.offset().distance(ClockOffset(i128::from(offset)));
            prop_assert!(error <= sample.error_bound().as_nanos(),
                "error {} > bound {:?}", error, sample.error_bound());
        }

        #[test]
        fn arbitrary_timestamps_never_panic(
            a in any::<u64>(), b in any::<u64>(), c in any::<u64>(), d in any::<u64>(),
        ) {
            let stamps = NtpTimestamps {
                origin: Instant(a), receive: Instant(b), transmit: Instant(c), destination: Instant(d),
            };
            if let Ok(sample) = stamps.sample() {
                prop_assert!(sample.error_bound() <= sample.delay());
            }
        }
    }
}
