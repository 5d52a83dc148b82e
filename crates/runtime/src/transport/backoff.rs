//! Reconnect delays: exponential backoff with "full jitter".
//!
//! After the `n`th consecutive failure the dialer sleeps a uniformly random time in
//! `[0, min(cap, base · 2ⁿ)]` (Marc Brooker, "Exponential Backoff and Jitter", AWS
//! Architecture Blog, 2015). Full jitter spreads the retries of many dialers that failed at
//! the same moment (say, when one node restarts) instead of having them retry in lockstep.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// How the dialer spaces its reconnect attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The ceiling after the first failure; it doubles with each further failure.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
    /// Seed of the jitter stream. `None` draws one from the OS. Each peer gets its own
    /// stream derived from the seed and both node ids, so a fixed seed gives reproducible
    /// delays without making all peers retry together.
    pub seed: Option<u64>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(5),
            seed: None,
        }
    }
}

/// The state of one dialer's backoff.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    failures: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig, stream: u64) -> Self {
        let seed = config.seed.unwrap_or_else(rand::random);
        // SplitMix-style mixing keeps nearby stream numbers from giving related seeds.
        let mixed = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Self {
            config,
            failures: 0,
            rng: ChaCha8Rng::seed_from_u64(mixed),
        }
    }

    /// The upper bound of the next delay: `min(cap, base · 2^failures)`.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.failures.min(31);
        self.config
            .base
            .checked_mul(factor)
            .unwrap_or(self.config.cap)
            .min(self.config.cap)
    }

    /// Record a failure and return how long to sleep before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.gen_range(0..=nanos))
    }

    /// Forget past failures after a connection proved healthy.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    pub(crate) fn cap(&self) -> Duration {
        self.config.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(500),
            seed: Some(seed),
        }
    }

    #[test]
    fn full_jitter_stays_under_an_exponential_ceiling_with_a_cap() {
        let mut backoff = Backoff::new(config(1), 7);
        let mut expected_ceiling = Duration::from_millis(10);
        for _ in 0..40 {
            assert_eq!(backoff.ceiling(), expected_ceiling);
            let delay = backoff.next_delay();
            assert!(
                delay <= expected_ceiling,
                "{delay:?} > {expected_ceiling:?}"
            );
            expected_ceiling = (expected_ceiling * 2).min(Duration::from_millis(500));
        }
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(10));
    }

    #[test]
    fn delays_are_spread_over_the_whole_interval() {
        // Full jitter, not "equal jitter": delays near zero and near the cap both occur.
        let mut backoff = Backoff::new(config(2), 0);
        for _ in 0..10 {
            backoff.next_delay();
        }
        let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(400)));
    }

    #[test]
    fn a_seed_fixes_the_sequence_and_streams_differ() {
        let run = |seed, stream| {
            let mut b = Backoff::new(config(seed), stream);
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(3, 1), run(3, 1));
        assert_ne!(run(3, 1), run(3, 2));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut backoff = Backoff::new(
            BackoffConfig {
                base: Duration::from_secs(u64::MAX / 4),
                cap: Duration::from_secs(60),
                seed: Some(0),
            },
            0,
        );
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_secs(60));
        }
    }
}
