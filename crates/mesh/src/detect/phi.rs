//! The φ accrual failure detector (Hayashibara, Défago, Yared and Katayama, "The φ Accrual
//! Failure Detector", SRDS 2004, §3–4).
//!
//! Instead of a binary suspect/trust output, the detector reports a suspicion level
//! φ(t) = −log10(P_later(t − T_last)), where P_later(x) is the probability that the next
//! heartbeat arrives more than x after the previous one, under a normal distribution whose
//! mean and variance are estimated from a sliding window of recent inter-arrival times
//! (§4.1). φ = 1 means a 10 % chance that suspecting now is a mistake, φ = 2 means 1 %,
//! φ = 8 about 10⁻⁸. The application picks the threshold; the detector adapts to the
//! network's actual jitter.
//!
//! Two practical additions, both from deployed systems rather than the paper: a floor on
//! the standard deviation (a perfectly regular sender would otherwise give σ = 0 and an
//! infinite φ a few microseconds late), and an acceptable pause added to the mean (a GC
//! pause or a check interval's own slack should not count as evidence).

use std::collections::VecDeque;
use std::time::Duration;
use synod_core::Instant;

/// How the detector is tuned.
#[derive(Debug, Clone, PartialEq)]
pub struct PhiConfig {
    /// Inter-arrival samples kept (the paper's sliding window, §4.1).
    pub window: usize,
    /// The smallest standard deviation used, so a very regular sender is not suspected
    /// the instant a heartbeat is late.
    pub min_std_deviation: Duration,
    /// Added to the mean interval: lateness that is normal for this sender.
    pub acceptable_pause: Duration,
    /// Before any interval is known, the window is seeded with this interval.
    pub first_interval_estimate: Duration,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            window: 1000,
            min_std_deviation: Duration::from_millis(10),
            acceptable_pause: Duration::ZERO,
            first_interval_estimate: Duration::from_secs(1),
        }
    }
}

/// A φ accrual failure detector for one monitored process.
#[derive(Debug, Clone)]
pub struct PhiAccrual {
    config: PhiConfig,
    intervals: VecDeque<f64>,
    sum: f64,
    sum_of_squares: f64,
    last_heartbeat: Option<Instant>,
    seeded: bool,
}

impl PhiAccrual {
    /// A detector that has heard nothing yet.
    pub fn new(config: PhiConfig) -> Self {
        PhiAccrual {
            config,
            intervals: VecDeque::new(),
            sum: 0.0,
            sum_of_squares: 0.0,
            last_heartbeat: None,
            seeded: false,
        }
    }

    /// A heartbeat (or any sign of life, such as a passed health check) arrived at `now`.
    pub fn on_heartbeat(&mut self, now: Instant) {
        match self.last_heartbeat {
            None => {
                // Seed the window with an estimate and a spread of a quarter of it, so φ is
                // defined from the first heartbeat on. The seed leaves at the first real
                // interval, so a wrong guess does not linger in the statistics.
                let mean = secs(self.config.first_interval_estimate);
                let spread = mean / 4.0;
                self.push(mean - spread);
                self.push(mean + spread);
                self.seeded = true;
            }
            Some(last) => {
                if self.seeded {
                    self.intervals.clear();
                    self.sum = 0.0;
                    self.sum_of_squares = 0.0;
                    self.seeded = false;
                }
                let interval = secs(now.saturating_duration_since(last));
                self.push(interval);
            }
        }
        self.last_heartbeat = Some(now);
    }

    fn push(&mut self, interval: f64) {
        if self.intervals.len() >= self.config.window.max(1) {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_of_squares -= old * old;
            }
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_of_squares += interval * interval;
    }

    /// The mean inter-arrival time in the window, in seconds.
    pub fn mean(&self) -> f64 {
        if self.intervals.is_empty() {
            return secs(self.config.first_interval_estimate);
        }
        self.sum / self.intervals.len() as f64
    }

    /// The standard deviation of the window, before the configured floor, in seconds.
    pub fn std_deviation(&self) -> f64 {
        let n = self.intervals.len() as f64;
        if n == 0.0 {
            return 0.0;
        }
        let mean = self.sum / n;
        (self.sum_of_squares / n - mean * mean).max(0.0).sqrt()
    }

    /// The suspicion level at `now`. Zero before the first heartbeat: a process never heard
    /// from is not evidence of a crash.
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last_heartbeat else {
            return 0.0;
        };
        let elapsed = secs(now.saturating_duration_since(last));
        let mean = self.mean() + secs(self.config.acceptable_pause);
        let sigma = self
            .std_deviation()
            .max(secs(self.config.min_std_deviation));
        phi_normal(elapsed, mean, sigma)
    }

    /// Whether φ at `now` has reached `threshold`.
    pub fn is_suspected(&self, now: Instant, threshold: f64) -> bool {
        self.phi(now) >= threshold
    }

    /// When φ will reach `threshold` if no heartbeat arrives: the detection bound.
    pub fn suspect_at(&self, threshold: f64) -> Option<Instant> {
        let last = self.last_heartbeat?;
        let mean = self.mean() + secs(self.config.acceptable_pause);
        let sigma = self
            .std_deviation()
            .max(secs(self.config.min_std_deviation));
        // φ is increasing in elapsed time, so bisect for the crossing.
        let (mut lo, mut hi) = (0.0f64, mean + sigma);
        while phi_normal(hi, mean, sigma) < threshold {
            hi *= 2.0;
            if hi > 1e9 {
                return None;
            }
        }
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if phi_normal(mid, mean, sigma) < threshold {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(last.saturating_add(Duration::from_secs_f64(hi)))
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// φ for `elapsed` seconds since the last heartbeat under N(mean, sigma²):
/// −log10(1 − F(elapsed)), with 1 − F(x) = ½·erfc((x − μ)/(σ√2)).
pub(crate) fn phi_normal(elapsed: f64, mean: f64, sigma: f64) -> f64 {
    let z = (elapsed - mean) / (sigma * std::f64::consts::SQRT_2);
    // log10(½·erfc(z)), computed in log space so that φ stays finite far in the tail
    // where erfc itself underflows.
    -((ln_erfc(z) - std::f64::consts::LN_2) / std::f64::consts::LN_10)
}

/// ln(erfc(x)) with a relative error below 1.2·10⁻⁷ everywhere: the Chebyshev fit of
/// erfc(x) = t·exp(−x² + P(t)), t = 1/(1 + x/2) (Press et al., Numerical Recipes §6.2),
/// kept in log form for large x.
pub(crate) fn ln_erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let ln_positive = t.ln() - z * z + poly;
    if x >= 0.0 {
        ln_positive
    } else {
        // erfc(−z) = 2 − erfc(z)
        (2.0 - ln_positive.exp()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant(ms * 1_000_000)
    }

    #[test]
    fn erfc_matches_tabulated_values() {
        // Abramowitz and Stegun, Table 7.1.
        for (x, erfc) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122),
            (1.0, 0.157_299_207),
            (2.0, 0.004_677_735),
            (3.0, 2.209_049_7e-5),
            (-1.0, 1.842_700_793),
        ] {
            let got = ln_erfc(x).exp();
            assert!(
                (got - erfc).abs() / erfc < 2e-7,
                "erfc({x}) = {got}, want {erfc}"
            );
        }
        // Far in the tail, where erfc underflows f64, the log is still right: ln erfc(30)
        // ≈ −x² − ln(x√π).
        let expected = -900.0 - (30.0 * std::f64::consts::PI.sqrt()).ln();
        assert!((ln_erfc(30.0) - expected).abs() < 1e-3);
    }

    #[test]
    fn phi_is_minus_log10_of_the_normal_tail() {
        // §4.1: φ(t) = −log10(P_later(t)). One, two and three σ past the mean, the normal
        // tail is 0.158655, 0.022750 and 0.001350.
        let (mean, sigma) = (1.0, 0.1);
        assert!((phi_normal(mean, mean, sigma) - 0.5f64.log10().abs()).abs() < 1e-6);
        for (k, tail) in [
            (1.0, 0.158_655_25),
            (2.0, 0.022_750_13),
            (3.0, 0.001_349_898),
        ] {
            let phi = phi_normal(mean + k * sigma, mean, sigma);
            assert!((phi + f64::log10(tail)).abs() < 1e-5, "φ at {k}σ = {phi}");
        }
    }

    #[test]
    fn window_estimates_mean_and_deviation() {
        let mut detector = PhiAccrual::new(PhiConfig {
            window: 4,
            ..PhiConfig::default()
        });
        // Heartbeats 100, 200, 100, 200 ms apart after the seed samples; the window of four
        // keeps only those.
        let mut t = 0;
        detector.on_heartbeat(at(t));
        for gap in [100, 200, 100, 200] {
            t += gap;
            detector.on_heartbeat(at(t));
        }
        assert!((detector.mean() - 0.15).abs() < 1e-9);
        assert!((detector.std_deviation() - 0.05).abs() < 1e-9);
        let phi = detector.phi(at(t + 200));
        assert!((phi - phi_normal(0.2, 0.15, 0.05)).abs() < 1e-9);
    }

    #[test]
    fn phi_grows_while_heartbeats_stop_and_resets_on_the_next() {
        let mut detector = PhiAccrual::new(PhiConfig::default());
        for i in 0..50 {
            detector.on_heartbeat(at(i * 100));
        }
        let last = 49 * 100;
        let mut previous = -1.0;
        for ms in (0..2000).step_by(25) {
            let phi = detector.phi(at(last + ms));
            assert!(phi >= previous, "φ must not decrease while silent");
            previous = phi;
        }
        assert!(detector.is_suspected(at(last + 1000), 8.0));
        assert!(!detector.is_suspected(at(last + 100), 8.0));
        let bound = detector.suspect_at(8.0).unwrap();
        assert!(detector.phi(bound) >= 8.0 - 1e-6);
        assert!(detector.phi(Instant(bound.0 - 1_000_000)) < 8.0);
        detector.on_heartbeat(at(last + 1500));
        assert!(detector.phi(at(last + 1500)) < 1.0);
    }

    #[test]
    fn a_jittery_sender_is_given_more_slack_than_a_regular_one() {
        let mut regular = PhiAccrual::new(PhiConfig::default());
        let mut jittery = PhiAccrual::new(PhiConfig::default());
        let (mut a, mut b) = (0, 0);
        for i in 0..100 {
            regular.on_heartbeat(at(a));
            jittery.on_heartbeat(at(b));
            a += 100;
            b += if i % 2 == 0 { 40 } else { 160 };
        }
        let regular_bound = regular.suspect_at(8.0).unwrap().0 - at(a - 100).0;
        let jittery_bound = jittery.suspect_at(8.0).unwrap().0 - at(b - 160).0;
        assert!(
            jittery_bound > regular_bound,
            "{jittery_bound} vs {regular_bound}"
        );
    }

    #[test]
    fn nothing_heard_means_no_suspicion() {
        let detector = PhiAccrual::new(PhiConfig::default());
        assert_eq!(detector.phi(at(1_000_000)), 0.0);
        assert_eq!(detector.suspect_at(8.0), None);
    }
}
