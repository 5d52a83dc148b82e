//! Retries: exponential backoff with full jitter, and a retry budget.
//!
//! **Backoff.** Attempt n (counting from zero) waits a uniform random time in
//! [0, min(cap, base · 2ⁿ)] — "full jitter" in Marc Brooker's "Exponential Backoff and
//! Jitter" (AWS Architecture Blog, 2015). Without jitter, clients that failed together
//! retry together; full jitter spreads them over the whole interval and does the least
//! total work of the variants measured there.
//!
//! **Budget.** Retries multiply load exactly when a service is least able to take it: with
//! three retries, a failing service sees four times its normal traffic. A retry budget
//! (Finagle's `RetryBudget`) bounds the extra load: every request deposits `ratio` of a
//! token, every retry must withdraw a whole one, and deposits older than `ttl` expire. A
//! small reserve of `min_retries_per_second` keeps retries possible at very low traffic.
//! Over any `ttl`, retries ≤ ratio × requests + reserve × ttl.

use super::window::BucketWindow;
use rand::Rng;
use std::time::Duration;
use synod_core::Instant;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The first attempt's upper bound.
    pub base: Duration,
    /// The largest upper bound.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(5),
            cap: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The upper bound for retry `attempt` (0 for the first retry): min(cap, base · 2ⁿ).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// How long to wait before retry `attempt`: uniform in [0, ceiling(attempt)].
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.gen_range(0..=ceiling))
    }
}

/// Retry budget settings (Finagle's defaults: 20 % over a 10 s window, 10 retries/s floor).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// Tokens deposited per request: the share of extra load retries may add.
    pub ratio: f64,
    /// How long a deposit counts.
    pub ttl: Duration,
    /// Retries allowed per second even with no traffic.
    pub min_retries_per_second: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            ttl: Duration::from_secs(10),
            min_retries_per_second: 10,
        }
    }
}

/// A retry budget shared by every request to one service.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: BudgetConfig,
    // Deposits count as successes and withdrawals as failures in the window.
    window: BucketWindow,
}

impl RetryBudget {
    /// An empty budget (only the reserve is available).
    pub fn new(config: BudgetConfig) -> Self {
        let window = BucketWindow::new(config.ttl, 10);
        RetryBudget { config, window }
    }

    /// A first attempt was sent at `now`.
    pub fn on_request(&mut self, now: Instant) {
        self.window.record(now, true);
    }

    /// Tokens available at `now`.
    pub fn balance(&self, now: Instant) -> f64 {
        let (deposits, withdrawals) = self.window.counts(now);
        let reserve = f64::from(self.config.min_retries_per_second) * self.config.ttl.as_secs_f64();
        reserve + self.config.ratio * deposits as f64 - withdrawals as f64
    }

    /// Withdraw a token for a retry (or a hedge) at `now`, if the budget has one.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        if self.balance(now) >= 1.0 {
            self.window.record(now, false);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn backoff_ceiling_doubles_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
        };
        let ceilings: Vec<u64> = (0..6).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [10, 20, 40, 80, 100, 100]);
        assert_eq!(b.ceiling(1000), Duration::from_millis(100));
    }

    #[test]
    fn full_jitter_is_uniform_over_zero_to_the_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_secs(1),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let samples: Vec<f64> = (0..20_000)
            .map(|_| b.delay(3, &mut rng).as_secs_f64())
            .collect();
        assert!(samples.iter().all(|s| (0.0..=0.08).contains(s)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        // Uniform on [0, 80 ms]: mean 40 ms, standard error 0.16 ms.
        assert!((mean - 0.04).abs() < 0.001, "mean {mean}");
        let low = samples.iter().filter(|s| **s < 0.02).count() as f64 / 20_000.0;
        assert!((low - 0.25).abs() < 0.02, "quarter below 20 ms, got {low}");
    }

    /// Closed-loop load against a service that fails every request: each request is tried
    /// once and retried up to three times if the budget allows.
    fn amplification(budget: Option<BudgetConfig>, requests: u64, per_second: u64) -> f64 {
        let mut budget = budget.map(RetryBudget::new);
        let step = 1_000_000_000 / per_second;
        let mut attempts = 0u64;
        for i in 0..requests {
            let now = Instant(i * step);
            attempts += 1;
            if let Some(b) = budget.as_mut() {
                b.on_request(now);
            }
            for _retry in 0..3 {
                if let Some(b) = budget.as_mut() {
                    if !b.try_withdraw(now) {
                        break;
                    }
                }
                attempts += 1;
            }
        }
        attempts as f64 / requests as f64
    }

    #[test]
    fn the_retry_budget_caps_retry_amplification() {
        // Without a budget, three retries on a dead service quadruple the load.
        assert_eq!(amplification(None, 10_000, 1000), 4.0);
        // With a 20 % budget and a reserve of 10/s over 10 s, 10 000 requests at 1000/s
        // (ten seconds) may add at most 20 % + 100 retries: ≤ 1.21×.
        let config = BudgetConfig::default();
        let with = amplification(Some(config.clone()), 10_000, 1000);
        assert!(with <= 1.21, "amplification {with}");
        assert!(with >= 1.19, "the budget should be used, got {with}");
        // Over a longer run the reserve's share shrinks and the ratio dominates.
        let long = amplification(Some(config), 100_000, 1000);
        assert!(
            long <= 1.2 + 100.0 * 10.0 / 100_000.0 + 1e-9,
            "amplification {long}"
        );
    }

    #[test]
    fn deposits_expire_after_the_ttl() {
        let config = BudgetConfig {
            ratio: 0.5,
            ttl: Duration::from_secs(1),
            min_retries_per_second: 0,
        };
        let mut b = RetryBudget::new(config);
        for _ in 0..10 {
            b.on_request(Instant(0));
        }
        assert!((b.balance(Instant(0)) - 5.0).abs() < 1e-9);
        assert!(b.balance(Instant(2_000_000_000)).abs() < 1e-9);
        assert!(!b.try_withdraw(Instant(2_000_000_000)));
    }
}
