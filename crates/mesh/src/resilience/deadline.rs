//! Deadlines propagated across hops.
//!
//! A request carries the time it has left, not an absolute time, so that hops need no
//! synchronized clocks: gRPC's `grpc-timeout` header (PROTOCOL-HTTP2.md: `TimeoutValue
//! TimeoutUnit`, at most eight digits, units H, M, S, m, u, n) and, for plain HTTP, the
//! mesh's own `x-synod-timeout-ms` (decimal milliseconds). Each hop takes the smaller of
//! what it was given and its own route timeout, and forwards what is left when it sends,
//! so time spent queueing or retrying at one hop is not granted again at the next.

use std::time::Duration;
use synod_core::Instant;

/// The mesh's timeout header for HTTP requests.
pub const TIMEOUT_HEADER: &str = "x-synod-timeout-ms";
/// gRPC's timeout header.
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

/// A malformed timeout header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadlineError {
    /// `grpc-timeout` was not 1–8 digits and a unit.
    #[error("bad grpc-timeout {0:?}: expected 1 to 8 digits and a unit (H, M, S, m, u, n)")]
    Grpc(String),
    /// `x-synod-timeout-ms` was not a decimal number of milliseconds.
    #[error("bad x-synod-timeout-ms {0:?}: expected a whole number of milliseconds")]
    Millis(String),
}

/// Parse a `grpc-timeout` value such as `250m` or `3S`.
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, DeadlineError> {
    let bad = || DeadlineError::Grpc(value.chars().take(32).collect());
    let unit = value.chars().last().ok_or_else(bad)?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return Err(bad()),
    })
}

/// Format a duration as a `grpc-timeout` value: the finest unit that fits in eight digits,
/// rounding up so that the receiver never gets more time than was left.
pub fn format_grpc_timeout(d: Duration) -> String {
    let nanos = d.as_nanos();
    for (unit, per) in [
        ('n', 1u128),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ] {
        let value = nanos.div_ceil(per);
        if value < 100_000_000 {
            return format!("{value}{unit}");
        }
    }
    "99999999H".to_string()
}

/// Parse an `x-synod-timeout-ms` value.
pub fn parse_timeout_millis(value: &str) -> Result<Duration, DeadlineError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.len() > 12 || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DeadlineError::Millis(value.chars().take(32).collect()));
    }
    trimmed
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| DeadlineError::Millis(value.chars().take(32).collect()))
}

/// The absolute time by which a request must be answered, on this hop's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline for a request received at `now` that was granted `incoming` by the
    /// previous hop (if any), capped by this hop's `route_timeout`.
    pub fn on_receive(now: Instant, incoming: Option<Duration>, route_timeout: Duration) -> Self {
        let budget = incoming.map_or(route_timeout, |d| d.min(route_timeout));
        Deadline(now.saturating_add(budget))
    }

    /// Time left at `now` (zero once passed).
    pub fn remaining(self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }

    /// Whether the deadline has passed at `now`.
    pub fn expired(self, now: Instant) -> bool {
        now >= self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("1S"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("250m"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Ok(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Ok(Duration::from_nanos(99_999_999))
        );
    }

    #[test]
    fn bad_grpc_timeouts_are_errors() {
        for bad in [
            "",
            "m",
            "100",
            "123456789m",
            "10x",
            "-1S",
            "1.5S",
            "1 S",
            "é",
        ] {
            let err = parse_grpc_timeout(bad).unwrap_err();
            assert!(err.to_string().contains("grpc-timeout"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn formatting_round_trips_and_never_grants_extra_time() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(250),
            Duration::from_nanos(123_456_789),
            Duration::from_secs(100_000),
            Duration::from_secs(400_000_000),
        ] {
            let text = format_grpc_timeout(d);
            let back = parse_grpc_timeout(&text).unwrap();
            assert!(back >= d, "{d:?} → {text} → {back:?}");
            assert!(text.len() <= 9);
        }
        assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250000u");
    }

    #[test]
    fn millisecond_header_parses_and_rejects_junk() {
        assert_eq!(
            parse_timeout_millis("1500"),
            Ok(Duration::from_millis(1500))
        );
        assert!(parse_timeout_millis("soon").is_err());
        assert!(parse_timeout_millis("-5").is_err());
        assert!(parse_timeout_millis("99999999999999999").is_err());
    }

    #[test]
    fn a_hop_grants_the_smaller_budget_and_forwards_what_is_left() {
        let now = Instant(1_000);
        let route = Duration::from_secs(5);
        assert_eq!(Deadline::on_receive(now, None, route).remaining(now), route);
        let given = Deadline::on_receive(now, Some(Duration::from_millis(300)), route);
        assert_eq!(given.remaining(now), Duration::from_millis(300));
        // 100 ms spent here leaves 200 ms for the next hop.
        let later = Instant(now.0 + 100_000_000);
        assert_eq!(given.remaining(later), Duration::from_millis(200));
        assert!(given.expired(Instant(now.0 + 300_000_000)));
        assert_eq!(given.remaining(Instant(u64::MAX)), Duration::ZERO);
    }
}
