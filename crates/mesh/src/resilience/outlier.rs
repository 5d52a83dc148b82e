//! Outlier ejection, as Envoy's outlier detection describes it: passive health checking
//! from the results of real requests.
//!
//! - **Consecutive failures**: an instance that fails `consecutive_failures` requests in a
//!   row is ejected at once.
//! - **Success rate**: every `interval`, among instances with at least
//!   `success_rate_request_volume` requests in the interval (and only if at least
//!   `success_rate_minimum_hosts` of them qualify), an instance whose success rate is below
//!   mean − `success_rate_stdev_factor` × standard deviation is ejected.
//! - An ejection lasts `base_ejection_time` × the number of times the instance has been
//!   ejected, at most `max_ejection_time`; each interval an instance spends in rotation
//!   takes one off that count. No more than `max_ejection_percent` of the instances are
//!   ejected at once, but one instance always may be.

use std::time::Duration;
use synod_core::Instant;

/// Outlier detection settings (Envoy's defaults, except a shorter interval and base
/// ejection time, which suit a sidecar in front of a few instances).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject (`None`: this rule is off).
    pub consecutive_failures: Option<u32>,
    /// How often the success-rate rule runs and ejections are reconsidered.
    pub interval: Duration,
    /// First ejection's length; the n-th lasts n times this.
    pub base_ejection_time: Duration,
    /// Upper bound on one ejection's length.
    pub max_ejection_time: Duration,
    /// Upper bound on the share of instances ejected at once, in percent.
    pub max_ejection_percent: u32,
    /// Success-rate rule: needs this many qualifying instances (`None`: rule off).
    pub success_rate_minimum_hosts: Option<usize>,
    /// Success-rate rule: an instance qualifies with this many requests in the interval.
    pub success_rate_request_volume: u64,
    /// Success-rate rule: eject below mean − factor × stdev.
    pub success_rate_stdev_factor: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: Some(5),
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(5),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            success_rate_minimum_hosts: Some(5),
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1.9,
        }
    }
}

/// Why an instance left or rejoined rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutlierEvent {
    /// Ejected for failing requests in a row.
    EjectedConsecutive(usize),
    /// Ejected for a success rate far below the others'.
    EjectedSuccessRate(usize),
    /// Its ejection ended.
    Returned(usize),
}

#[derive(Debug, Clone, Default)]
struct HostState {
    consecutive: u32,
    successes: u64,
    failures: u64,
    ejected_until: Option<Instant>,
    multiplier: u32,
}

/// Outlier detection over a fixed list of instances, addressed by index.
#[derive(Debug, Clone)]
pub struct OutlierDetector {
    config: OutlierConfig,
    hosts: Vec<HostState>,
    next_interval: Option<Instant>,
}

impl OutlierDetector {
    /// A detector for `instances` instances, none ejected.
    pub fn new(config: OutlierConfig, instances: usize) -> Self {
        OutlierDetector {
            config,
            hosts: vec![HostState::default(); instances],
            next_interval: None,
        }
    }

    /// Whether the instance is ejected.
    pub fn is_ejected(&self, index: usize) -> bool {
        self.hosts
            .get(index)
            .is_some_and(|h| h.ejected_until.is_some())
    }

    /// Number of instances ejected now.
    pub fn ejected(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| h.ejected_until.is_some())
            .count()
    }

    fn may_eject(&self) -> bool {
        let ejected = self.ejected();
        ejected == 0
            || (ejected + 1) * 100 <= self.config.max_ejection_percent as usize * self.hosts.len()
    }

    fn eject(&mut self, index: usize, now: Instant) {
        let host = &mut self.hosts[index];
        host.multiplier += 1;
        let length = self
            .config
            .base_ejection_time
            .saturating_mul(host.multiplier)
            .min(
                self.config
                    .max_ejection_time
                    .max(self.config.base_ejection_time),
            );
        host.ejected_until = Some(now.saturating_add(length));
        host.consecutive = 0;
    }

    /// Record a request's result. Returns an ejection if this result caused one.
    pub fn on_result(&mut self, index: usize, now: Instant, success: bool) -> Option<OutlierEvent> {
        let limit = self.config.consecutive_failures;
        let host = self.hosts.get_mut(index)?;
        if success {
            host.successes += 1;
            host.consecutive = 0;
            return None;
        }
        host.failures += 1;
        host.consecutive += 1;
        let streak = host.consecutive;
        if host.ejected_until.is_none() && limit.is_some_and(|l| streak >= l) && self.may_eject() {
            self.eject(index, now);
            return Some(OutlierEvent::EjectedConsecutive(index));
        }
        None
    }

    /// Run the periodic work due at `now`: return ejected instances whose time is up, apply
    /// the success-rate rule, and start a new interval. Call at least once per interval.
    pub fn on_tick(&mut self, now: Instant) -> Vec<OutlierEvent> {
        let mut events = Vec::new();
        for (index, host) in self.hosts.iter_mut().enumerate() {
            if host.ejected_until.is_some_and(|until| now >= until) {
                host.ejected_until = None;
                host.consecutive = 0;
                events.push(OutlierEvent::Returned(index));
            }
        }
        let due = self.next_interval.is_none_or(|t| now >= t);
        if !due {
            return events;
        }
        self.next_interval = Some(now.saturating_add(self.config.interval));
        if let Some(minimum) = self.config.success_rate_minimum_hosts {
            let rates: Vec<(usize, f64)> = self
                .hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| {
                    h.ejected_until.is_none()
                        && h.successes + h.failures >= self.config.success_rate_request_volume
                })
                .map(|(i, h)| (i, h.successes as f64 / (h.successes + h.failures) as f64))
                .collect();
            if rates.len() >= minimum.max(1) {
                let n = rates.len() as f64;
                let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
                let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
                let threshold = mean - self.config.success_rate_stdev_factor * variance.sqrt();
                for (index, rate) in rates {
                    if rate < threshold && self.may_eject() {
                        self.eject(index, now);
                        events.push(OutlierEvent::EjectedSuccessRate(index));
                    }
                }
            }
        }
        for (index, host) in self.hosts.iter_mut().enumerate() {
            // Only a whole interval in rotation without failures earns a step back.
            let just_returned = events.contains(&OutlierEvent::Returned(index));
            if host.ejected_until.is_none() && host.failures == 0 && !just_returned {
                host.multiplier = host.multiplier.saturating_sub(1);
            }
            host.successes = 0;
            host.failures = 0;
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant(ms * 1_000_000)
    }

    fn config() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: Some(3),
            interval: Duration::from_millis(100),
            base_ejection_time: Duration::from_millis(1000),
            max_ejection_time: Duration::from_millis(2500),
            max_ejection_percent: 50,
            success_rate_minimum_hosts: Some(3),
            success_rate_request_volume: 20,
            success_rate_stdev_factor: 1.0,
        }
    }

    #[test]
    fn consecutive_failures_eject_and_the_ejection_expires() {
        let mut d = OutlierDetector::new(config(), 4);
        assert_eq!(d.on_result(1, at(0), false), None);
        assert_eq!(d.on_result(1, at(0), false), None);
        assert_eq!(
            d.on_result(1, at(0), false),
            Some(OutlierEvent::EjectedConsecutive(1))
        );
        assert!(d.is_ejected(1));
        assert!(d.on_tick(at(999)).is_empty());
        assert_eq!(d.on_tick(at(1000)), vec![OutlierEvent::Returned(1)]);
        assert!(!d.is_ejected(1));
    }

    #[test]
    fn repeat_ejections_last_longer_up_to_the_cap() {
        let mut d = OutlierDetector::new(config(), 4);
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            for _ in 0..3 {
                d.on_result(0, at(now), false);
            }
            let start = now;
            while d.is_ejected(0) {
                now += 100;
                d.on_tick(at(now));
            }
            lengths.push(now - start);
        }
        assert_eq!(lengths, [1000, 2000, 2500, 2500]);
    }

    #[test]
    fn no_more_than_the_ejection_percent_but_always_one() {
        let config = OutlierConfig {
            max_ejection_percent: 10,
            ..config()
        };
        let mut d = OutlierDetector::new(config, 4);
        for host in 0..4 {
            for _ in 0..3 {
                d.on_result(host, at(0), false);
            }
        }
        // 10 % of 4 is less than one instance, yet one may go.
        assert_eq!(d.ejected(), 1);
    }

    #[test]
    fn a_low_success_rate_is_ejected_at_the_interval() {
        let mut d = OutlierDetector::new(config(), 4);
        d.on_tick(at(0));
        for i in 0..40 {
            for host in 0..3 {
                d.on_result(host, at(1), true);
            }
            // Host 3 fails every other request: never three in a row, 50 % success.
            d.on_result(3, at(1), i % 2 == 0);
        }
        assert!(!d.is_ejected(3));
        assert_eq!(
            d.on_tick(at(100)),
            vec![OutlierEvent::EjectedSuccessRate(3)]
        );
    }

    #[test]
    fn the_success_rate_rule_needs_enough_hosts_and_volume() {
        let mut d = OutlierDetector::new(config(), 4);
        d.on_tick(at(0));
        for i in 0..10 {
            for host in 0..3 {
                d.on_result(host, at(1), true);
            }
            d.on_result(3, at(1), i % 2 == 0);
        }
        // Ten requests each is below the volume of twenty.
        assert!(d.on_tick(at(100)).is_empty());
    }
}
