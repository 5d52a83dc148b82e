//! Adaptive retransmission timeouts: Jacobson and Karels' estimator as RFC 6298 specifies it
//! (V. Jacobson, "Congestion Avoidance and Control", SIGCOMM 1988; V. Paxson et al., RFC 6298,
//! "Computing TCP's Retransmission Timer", 2011).
//!
//! The estimator keeps a smoothed round-trip time (SRTT) and a smoothed mean deviation
//! (RTTVAR), and sets the timeout to SRTT + max(G, K·RTTVAR) (§2). A timeout doubles the
//! RTO (§5.5, exponential back-off), and per Karn's algorithm (§3) a sample from an attempt
//! that was retried is not used, because it cannot be matched to one transmission.
//!
//! The mesh uses it for per-upstream request and health-check timeouts. RFC 6298's floor of
//! one second (§2.4) is right for TCP on the Internet and far too slow for an RPC inside a
//! data center, so the floor and ceiling are configurable; the defaults keep the RFC's.

use std::time::Duration;

/// Constants of the estimator. [`RtoConfig::default`] is RFC 6298's.
#[derive(Debug, Clone, PartialEq)]
pub struct RtoConfig {
    /// Gain of SRTT, α = 1/8.
    pub alpha: f64,
    /// Gain of RTTVAR, β = 1/4.
    pub beta: f64,
    /// Deviation multiplier, K = 4.
    pub k: f64,
    /// Clock granularity G.
    pub granularity: Duration,
    /// RTO before any sample (§2.1: one second).
    pub initial: Duration,
    /// Floor (§2.4: one second).
    pub min: Duration,
    /// Ceiling (§2.5: at least 60 s).
    pub max: Duration,
}

impl Default for RtoConfig {
    fn default() -> Self {
        RtoConfig {
            alpha: 1.0 / 8.0,
            beta: 1.0 / 4.0,
            k: 4.0,
            granularity: Duration::from_millis(1),
            initial: Duration::from_secs(1),
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// The RTO estimator for one peer.
#[derive(Debug, Clone)]
pub struct RtoEstimator {
    config: RtoConfig,
    srtt: Option<f64>,
    rttvar: f64,
    rto: f64,
}

impl RtoEstimator {
    /// An estimator with no samples: its RTO is `config.initial`.
    pub fn new(config: RtoConfig) -> Self {
        let rto = config.initial.as_secs_f64();
        let mut estimator = RtoEstimator {
            config,
            srtt: None,
            rttvar: 0.0,
            rto,
        };
        estimator.rto = estimator.clamp(rto);
        estimator
    }

    fn clamp(&self, rto: f64) -> f64 {
        rto.max(self.config.min.as_secs_f64())
            .min(self.config.max.as_secs_f64())
    }

    /// A round-trip time measured on an attempt that was not retried (Karn: callers must not
    /// pass samples from retried attempts; use [`RtoEstimator::on_sample_of_retried`]).
    pub fn on_sample(&mut self, rtt: Duration) {
        let r = rtt.as_secs_f64();
        let (alpha, beta, k) = (self.config.alpha, self.config.beta, self.config.k);
        let g = self.config.granularity.as_secs_f64();
        match self.srtt {
            None => {
                // §2.2
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(srtt) => {
                // §2.3: RTTVAR is updated with the old SRTT, then SRTT.
                self.rttvar = (1.0 - beta) * self.rttvar + beta * (srtt - r).abs();
                self.srtt = Some((1.0 - alpha) * srtt + alpha * r);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.rto = self.clamp(srtt + g.max(k * self.rttvar));
    }

    /// Karn's algorithm (§3): a sample from a retried attempt is ambiguous and ignored.
    pub fn on_sample_of_retried(&mut self, _rtt: Duration) {}

    /// The timer expired: back off by doubling (§5.5), up to the ceiling.
    pub fn on_timeout(&mut self) {
        self.rto = self.clamp(self.rto * 2.0);
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        Duration::from_secs_f64(self.rto)
    }

    /// The smoothed round-trip time, once a sample exists.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt.map(Duration::from_secs_f64)
    }

    /// The smoothed mean deviation of the round-trip time.
    pub fn rttvar(&self) -> Duration {
        Duration::from_secs_f64(self.rttvar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn close(a: Duration, b_secs: f64) -> bool {
        (a.as_secs_f64() - b_secs).abs() < 1e-9
    }

    fn unclamped() -> RtoConfig {
        RtoConfig {
            min: Duration::ZERO,
            ..RtoConfig::default()
        }
    }

    #[test]
    fn before_any_sample_the_rto_is_one_second() {
        // RFC 6298 §2.1
        assert_eq!(RtoEstimator::new(RtoConfig::default()).rto(), ms(1000));
    }

    #[test]
    fn first_sample_sets_srtt_and_half_of_it_as_rttvar() {
        // §2.2: SRTT ← R, RTTVAR ← R/2, RTO ← SRTT + max(G, K·RTTVAR)
        let mut e = RtoEstimator::new(unclamped());
        e.on_sample(ms(100));
        assert!(close(e.srtt().unwrap(), 0.1));
        assert!(close(e.rttvar(), 0.05));
        assert!(close(e.rto(), 0.1 + 4.0 * 0.05));
    }

    #[test]
    fn later_samples_follow_the_smoothing_equations() {
        // §2.3, with the RTTVAR update using the SRTT from before this sample.
        let mut e = RtoEstimator::new(unclamped());
        e.on_sample(ms(100));
        e.on_sample(ms(200));
        let rttvar = 0.75 * 0.05 + 0.25 * (0.1f64 - 0.2).abs();
        let srtt = 0.875 * 0.1 + 0.125 * 0.2;
        assert!(close(e.rttvar(), rttvar));
        assert!(close(e.srtt().unwrap(), srtt));
        assert!(close(e.rto(), srtt + 4.0 * rttvar));
        // A steady RTT drives RTTVAR towards zero, so the granularity term takes over.
        for _ in 0..500 {
            e.on_sample(ms(50));
        }
        assert!(
            (e.rto().as_secs_f64() - 0.051).abs() < 1e-6,
            "{:?}",
            e.rto()
        );
    }

    #[test]
    fn the_floor_and_ceiling_hold() {
        // §2.4: RTO below one second is rounded up; §2.5: a maximum may be placed.
        let mut e = RtoEstimator::new(RtoConfig::default());
        e.on_sample(ms(10));
        assert_eq!(e.rto(), ms(1000));
        for _ in 0..20 {
            e.on_timeout();
        }
        assert_eq!(e.rto(), Duration::from_secs(60));
    }

    #[test]
    fn a_timeout_doubles_the_rto() {
        // §5.5
        let mut e = RtoEstimator::new(unclamped());
        e.on_sample(ms(100));
        let before = e.rto();
        e.on_timeout();
        assert_eq!(e.rto(), before * 2);
        // The next valid sample recomputes it from SRTT and RTTVAR (§5.7).
        e.on_sample(ms(100));
        assert!(e.rto() < before * 2);
    }

    #[test]
    fn karn_ignores_samples_of_retried_attempts() {
        let mut e = RtoEstimator::new(unclamped());
        e.on_sample(ms(100));
        let before = (e.srtt(), e.rttvar(), e.rto());
        e.on_sample_of_retried(ms(5000));
        assert_eq!(before, (e.srtt(), e.rttvar(), e.rto()));
    }
}
