//! Request hedging ("backup requests", Dean and Barroso, "The Tail at Scale", CACM 2013):
//! if a request has not been answered after the delay within which most requests finish
//! (say the 95th percentile), send a second copy to another instance and take whichever
//! answers first. The extra load is bounded by the percentile (about 5 % at p95) and, in
//! the proxy, by the retry budget, which hedges draw from as retries do. Only idempotent
//! requests may be hedged.

use std::collections::VecDeque;
use std::time::Duration;

/// When to send the hedge.
#[derive(Debug, Clone, PartialEq)]
pub enum HedgeDelay {
    /// After a fixed delay.
    Fixed(Duration),
    /// After this quantile (0–1) of recent latencies, or `fallback` while fewer than
    /// `min_samples` are known.
    Quantile {
        /// The quantile, such as 0.95.
        quantile: f64,
        /// Used before enough samples exist.
        fallback: Duration,
    },
}

/// The latencies behind an adaptive hedge delay.
#[derive(Debug, Clone)]
pub struct HedgePolicy {
    delay: HedgeDelay,
    samples: VecDeque<Duration>,
    capacity: usize,
    min_samples: usize,
}

impl HedgePolicy {
    /// A policy keeping the last 1000 latencies and trusting the quantile after 50.
    pub fn new(delay: HedgeDelay) -> Self {
        HedgePolicy {
            delay,
            samples: VecDeque::new(),
            capacity: 1000,
            min_samples: 50,
        }
    }

    /// A first attempt finished after `latency`.
    pub fn on_latency(&mut self, latency: Duration) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(latency);
    }

    /// How long to wait before hedging the next request.
    pub fn delay(&self) -> Duration {
        match &self.delay {
            HedgeDelay::Fixed(d) => *d,
            HedgeDelay::Quantile { quantile, fallback } => {
                if self.samples.len() < self.min_samples {
                    return *fallback;
                }
                let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
                sorted.sort_unstable();
                let rank = (quantile.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round();
                sorted[rank as usize]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_delay_follows_recent_latencies() {
        let mut policy = HedgePolicy::new(HedgeDelay::Quantile {
            quantile: 0.95,
            fallback: Duration::from_millis(50),
        });
        assert_eq!(policy.delay(), Duration::from_millis(50));
        for ms in 1..=100 {
            policy.on_latency(Duration::from_millis(ms));
        }
        assert_eq!(policy.delay(), Duration::from_millis(95));
        // Older samples leave the window.
        for _ in 0..1000 {
            policy.on_latency(Duration::from_millis(2));
        }
        assert_eq!(policy.delay(), Duration::from_millis(2));
    }

    #[test]
    fn a_fixed_delay_is_fixed() {
        let policy = HedgePolicy::new(HedgeDelay::Fixed(Duration::from_millis(7)));
        assert_eq!(policy.delay(), Duration::from_millis(7));
    }
}
