//! Health checking for the registry's agent: the verdict of one instance's check as a pure
//! state machine ([`HealthTracker`]), and the active probes themselves ([`probe`]).
//!
//! A tracker combines three signals, as Consul's agent and Envoy's active health checker
//! do, plus the adaptive detectors of [`crate::detect`]:
//!
//! - **Thresholds**: `unhealthy_threshold` failed probes in a row make a passing instance
//!   critical, `healthy_threshold` passes in a row make a critical one passing.
//! - **TTL** (Consul's TTL check): the instance itself must report "pass" at least every
//!   `ttl`; silence longer than that is critical.
//! - **φ accrual** (Hayashibara et al., SRDS 2004) over the arrival times of passes (or TTL
//!   reports): an instance whose probes hang, or whose reports stop, is suspected after
//!   about one interval plus a few standard deviations of its own rhythm, without waiting
//!   for the threshold of timeouts.
//!
//! Each probe's timeout, unless fixed, is the instance's RFC 6298 retransmission timeout
//! (Jacobson 1988) over past probe round trips, between half an interval and two.
//!
//! A new instance starts critical (Consul's default): it is not sent traffic before one
//! check has passed.

use crate::detect::{PhiAccrual, PhiConfig, RtoConfig, RtoEstimator};
use std::net::SocketAddr;
use std::time::Duration;
use synod_core::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP connect.
    Tcp,
    /// `GET path` over HTTP/1.1, expecting a 2xx status.
    Http {
        /// The path to request, e.g. `/health`.
        path: String,
    },
}

/// How one probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// Connected (TCP) or got a 2xx (HTTP).
    Pass,
    /// Refused, reset, or a non-2xx answer.
    Fail,
    /// No verdict within the timeout.
    Timeout,
}

/// Run one probe against `address` with a `timeout`.
pub async fn probe(kind: &ProbeKind, address: SocketAddr, timeout: Duration) -> ProbeResult {
    let check = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let path = match kind {
            ProbeKind::Tcp => return Some(true),
            ProbeKind::Http { path } => path,
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: synod-mesh-check\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        // "HTTP/1.1 2xx"
        Some(head.starts_with(b"HTTP/1.") && head[9] == b'2')
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(Some(true)) => ProbeResult::Pass,
        Ok(_) => ProbeResult::Fail,
        Err(_) => ProbeResult::Timeout,
    }
}

/// The settings of one instance's check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSettings {
    /// Time between probes, or the expected time between TTL reports.
    pub interval: Duration,
    /// A fixed probe timeout; `None`: the RFC 6298 RTO of past probes.
    pub timeout: Option<Duration>,
    /// For TTL checks: longest silence before the instance is critical.
    pub ttl: Option<Duration>,
    /// Passes in a row to become passing.
    pub healthy_threshold: u32,
    /// Failures in a row to become critical.
    pub unhealthy_threshold: u32,
    /// φ above which silence is suspicious (0: off).
    pub phi_threshold: f64,
}

impl Default for CheckSettings {
    fn default() -> Self {
        CheckSettings {
            interval: Duration::from_secs(1),
            timeout: None,
            ttl: None,
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            phi_threshold: 8.0,
        }
    }
}

/// The verdict on an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// In service.
    Passing,
    /// Out of service.
    Critical,
}

/// Why the verdict is what it is, for the registry's `output` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Not enough passes yet.
    Initial,
    /// The last `n` probes passed.
    Passes(u32),
    /// The last `n` probes failed, the last one like this.
    Failures(u32, ProbeResult),
    /// No TTL report for longer than the TTL.
    TtlExpired,
    /// φ of the passes (or reports) is over the threshold.
    Suspected,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Initial => write!(f, "no check has passed yet"),
            Reason::Passes(n) => write!(f, "{n} passing checks in a row"),
            Reason::Failures(n, ProbeResult::Timeout) => {
                write!(f, "{n} failed checks in a row, the last timed out")
            }
            Reason::Failures(n, _) => write!(f, "{n} failed checks in a row"),
            Reason::TtlExpired => write!(f, "TTL expired: no heartbeat"),
            Reason::Suspected => write!(f, "phi accrual suspects it: heartbeats went silent"),
        }
    }
}

/// One instance's check state. Feed it probe results or TTL reports with the time they
/// happened; read the verdict with [`HealthTracker::evaluate`].
#[derive(Debug, Clone)]
pub struct HealthTracker {
    settings: CheckSettings,
    /// Positive: passes in a row; negative: failures in a row.
    streak: i64,
    passing: bool,
    last_failure: ProbeResult,
    last_pass: Option<Instant>,
    started: Instant,
    phi: PhiAccrual,
    rto: RtoEstimator,
}

/// The failure detector and probe timeout of a check run every `interval`, shared by the
/// agent's checks and the proxy's active checks.
pub(crate) fn check_detectors(interval: Duration) -> (PhiAccrual, RtoEstimator) {
    let phi = PhiAccrual::new(PhiConfig {
        window: 100,
        min_std_deviation: interval / 4,
        // Check timers slip under load: half an interval of lateness is not evidence.
        acceptable_pause: interval / 2,
        first_interval_estimate: interval,
    });
    // RFC 6298's one-second floor suits the Internet, not a data centre; a floor of half
    // an interval keeps a loaded machine's scheduling delays from failing checks.
    let rto = RtoEstimator::new(RtoConfig {
        initial: interval,
        min: interval / 2,
        max: interval * 2,
        ..RtoConfig::default()
    });
    (phi, rto)
}

impl HealthTracker {
    /// A tracker for a check that starts at `now`, critical until it passes.
    pub fn new(settings: CheckSettings, now: Instant) -> Self {
        let (phi, rto) = check_detectors(settings.interval);
        HealthTracker {
            phi,
            rto,
            settings,
            streak: 0,
            passing: false,
            last_failure: ProbeResult::Fail,
            last_pass: None,
            started: now,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &CheckSettings {
        &self.settings
    }

    /// The timeout for the next probe.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout.unwrap_or_else(|| self.rto.rto())
    }

    /// A probe started at some time and ended at `now` with `result` after `rtt`.
    pub fn on_probe(&mut self, now: Instant, result: ProbeResult, rtt: Duration) {
        match result {
            ProbeResult::Pass => {
                self.phi.on_heartbeat(now);
                self.rto.on_sample(rtt);
                self.last_pass = Some(now);
                self.streak = self.streak.max(0) + 1;
                if self.streak >= i64::from(self.settings.healthy_threshold.max(1)) {
                    self.passing = true;
                }
            }
            ProbeResult::Fail | ProbeResult::Timeout => {
                if result == ProbeResult::Timeout {
                    self.rto.on_timeout();
                }
                self.last_failure = result;
                self.streak = self.streak.min(0) - 1;
                if -self.streak >= i64::from(self.settings.unhealthy_threshold.max(1)) {
                    self.passing = false;
                }
            }
        }
    }

    /// The instance reported itself alive at `now` (a TTL heartbeat).
    pub fn on_report(&mut self, now: Instant) {
        self.phi.on_heartbeat(now);
        self.last_pass = Some(now);
        self.streak = self.streak.max(0) + 1;
        self.passing = true;
    }

    /// The verdict at `now`, and why.
    pub fn evaluate(&self, now: Instant) -> (Verdict, Reason) {
        if let Some(ttl) = self.settings.ttl {
            let since = now.saturating_duration_since(self.last_pass.unwrap_or(self.started));
            if since > ttl {
                return (Verdict::Critical, Reason::TtlExpired);
            }
        }
        if !self.passing {
            return if self.streak < 0 {
                (
                    Verdict::Critical,
                    Reason::Failures(self.streak.unsigned_abs() as u32, self.last_failure),
                )
            } else {
                (Verdict::Critical, Reason::Initial)
            };
        }
        if self.settings.phi_threshold > 0.0
            && self.last_pass.is_some()
            && self.phi.is_suspected(now, self.settings.phi_threshold)
        {
            return (Verdict::Critical, Reason::Suspected);
        }
        if self.streak < 0 {
            // Failing, but not yet past the threshold.
            return (Verdict::Passing, Reason::Passes(0));
        }
        (Verdict::Passing, Reason::Passes(self.streak as u32))
    }

    /// The earliest time after `now` at which the verdict could change without a new
    /// probe or report (TTL expiry or φ crossing the threshold), if any.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if t > now {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if let Some(ttl) = self.settings.ttl {
            consider(self.last_pass.unwrap_or(self.started) + ttl + Duration::from_millis(1));
        }
        if self.settings.phi_threshold > 0.0 && self.last_pass.is_some() {
            if let Some(t) = self.phi.suspect_at(self.settings.phi_threshold) {
                consider(t);
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(n: u64) -> Instant {
        Instant(n * 1_000_000)
    }

    fn tracker(settings: CheckSettings) -> HealthTracker {
        HealthTracker::new(settings, at(0))
    }

    #[test]
    fn starts_critical_and_passes_after_the_healthy_threshold() {
        let mut t = tracker(CheckSettings {
            interval: ms(100),
            healthy_threshold: 2,
            ..CheckSettings::default()
        });
        assert_eq!(t.evaluate(at(0)), (Verdict::Critical, Reason::Initial));
        t.on_probe(at(100), ProbeResult::Pass, ms(1));
        assert_eq!(t.evaluate(at(100)).0, Verdict::Critical);
        t.on_probe(at(200), ProbeResult::Pass, ms(1));
        assert_eq!(t.evaluate(at(200)), (Verdict::Passing, Reason::Passes(2)));
    }

    #[test]
    fn fails_only_after_the_unhealthy_threshold_and_recovers() {
        let mut t = tracker(CheckSettings {
            interval: ms(100),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            phi_threshold: 0.0,
            ..CheckSettings::default()
        });
        for i in 1..=2 {
            t.on_probe(at(i * 100), ProbeResult::Pass, ms(1));
        }
        t.on_probe(at(300), ProbeResult::Fail, ms(1));
        t.on_probe(at(400), ProbeResult::Timeout, ms(50));
        assert_eq!(t.evaluate(at(400)).0, Verdict::Passing);
        t.on_probe(at(500), ProbeResult::Fail, ms(1));
        assert_eq!(
            t.evaluate(at(500)),
            (Verdict::Critical, Reason::Failures(3, ProbeResult::Fail))
        );
        // One pass is not enough to come back with a threshold of two.
        t.on_probe(at(600), ProbeResult::Pass, ms(1));
        assert_eq!(t.evaluate(at(600)).0, Verdict::Critical);
        t.on_probe(at(700), ProbeResult::Pass, ms(1));
        assert_eq!(t.evaluate(at(700)).0, Verdict::Passing);
    }

    #[test]
    fn a_ttl_check_expires_without_reports() {
        let mut t = tracker(CheckSettings {
            interval: ms(1000),
            ttl: Some(ms(3000)),
            phi_threshold: 0.0,
            ..CheckSettings::default()
        });
        t.on_report(at(500));
        assert_eq!(t.evaluate(at(3400)).0, Verdict::Passing);
        assert_eq!(t.next_deadline(at(3400)), Some(at(3501)));
        assert_eq!(
            t.evaluate(at(3501)),
            (Verdict::Critical, Reason::TtlExpired)
        );
        t.on_report(at(4000));
        assert_eq!(t.evaluate(at(4000)).0, Verdict::Passing);
    }

    #[test]
    fn phi_suspects_hung_probes_before_the_failure_threshold() {
        let mut t = tracker(CheckSettings {
            interval: ms(100),
            unhealthy_threshold: 10,
            ..CheckSettings::default()
        });
        for i in 1..=50 {
            t.on_probe(at(i * 100), ProbeResult::Pass, ms(1));
        }
        assert_eq!(t.evaluate(at(5050)).0, Verdict::Passing);
        // The probes now hang: nothing arrives. φ crosses 8 well before ten timeouts.
        let suspect = t.next_deadline(at(5000)).expect("a φ deadline");
        assert!(suspect > at(5100) && suspect < at(5600), "{suspect:?}");
        assert_eq!(t.evaluate(at(5700)), (Verdict::Critical, Reason::Suspected));
    }

    #[test]
    fn the_probe_timeout_adapts_to_round_trips_within_bounds() {
        let mut t = tracker(CheckSettings {
            interval: ms(1000),
            ..CheckSettings::default()
        });
        assert_eq!(t.timeout(), ms(1000));
        for i in 1..=20 {
            t.on_probe(at(i * 1000), ProbeResult::Pass, ms(2));
        }
        // SRTT ≈ 2 ms: the RTO falls to its floor of half an interval.
        assert_eq!(t.timeout(), ms(500));
        let fixed = tracker(CheckSettings {
            timeout: Some(ms(77)),
            ..CheckSettings::default()
        });
        assert_eq!(fixed.timeout(), ms(77));
    }

    #[tokio::test]
    async fn probes_see_a_listener_and_its_absence() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let ok = buf[..n].starts_with(b"GET /health");
                let reply: &[u8] = if ok {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = s.write_all(reply).await;
            }
        });
        let http = |path: &str| ProbeKind::Http { path: path.into() };
        assert_eq!(
            probe(&ProbeKind::Tcp, address, ms(1000)).await,
            ProbeResult::Pass
        );
        assert_eq!(
            probe(&http("/health"), address, ms(1000)).await,
            ProbeResult::Pass
        );
        assert_eq!(
            probe(&http("/other"), address, ms(1000)).await,
            ProbeResult::Fail
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(
            probe(&ProbeKind::Tcp, closed, ms(1000)).await,
            ProbeResult::Fail
        );
    }
}
