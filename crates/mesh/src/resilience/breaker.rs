//! A circuit breaker (Nygard, "Release It!", 2007, ch. 5; the closed/open/half-open machine
//! of Hystrix and Envoy).
//!
//! ## Specification
//!
//! The breaker is in one of three states. Every request asks [`CircuitBreaker::try_acquire`]
//! first and, if admitted, reports its outcome with the [`Permit`] it got. Each change of
//! state starts a new *generation*; an outcome whose permit is from an older generation is
//! ignored (it describes the instance before the breaker last changed its mind).
//!
//! | state | event | condition | effect / next state |
//! |---|---|---|---|
//! | Closed | acquire | — | admit |
//! | Closed | success | — | consecutive ← 0; count it in the window |
//! | Closed | failure | consecutive + 1 ≥ `consecutive_failures`, or the window holds ≥ `minimum_requests` outcomes and failures/total ≥ `failure_rate` | Open until now + `open_duration` |
//! | Closed | failure | otherwise | consecutive + 1; count it |
//! | Open | acquire | now < until | reject |
//! | Open | acquire | now ≥ until | HalfOpen, then as below |
//! | HalfOpen | acquire | probes in flight < `half_open_probes` | admit as a probe |
//! | HalfOpen | acquire | otherwise | reject |
//! | HalfOpen | success | successes + 1 ≥ `successes_to_close` | Closed with an empty window |
//! | HalfOpen | success | otherwise | successes + 1, probes in flight − 1 |
//! | HalfOpen | failure | — | Open until now + `open_duration` |
//!
//! The window is [`BreakerConfig::window`] divided into [`BreakerConfig::window_buckets`]
//! buckets; an outcome counts while its bucket is among the latest `window_buckets`.

use super::window::BucketWindow;
use std::time::Duration;
use synod_core::Instant;

/// When the breaker trips and how it recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Trip after this many failures in a row (`None`: never on this rule).
    pub consecutive_failures: Option<u32>,
    /// Trip when failures/total in the window reaches this (`None`: never on this rule).
    pub failure_rate: Option<f64>,
    /// The rate rule needs at least this many outcomes in the window.
    pub minimum_requests: u64,
    /// Length of the sliding window for the rate rule.
    pub window: Duration,
    /// Buckets the window is divided into.
    pub window_buckets: u32,
    /// How long the breaker stays open before it lets probes through.
    pub open_duration: Duration,
    /// Probes admitted at once while half-open.
    pub half_open_probes: u32,
    /// Successful probes needed to close again.
    pub successes_to_close: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: Some(5),
            failure_rate: Some(0.5),
            minimum_requests: 20,
            window: Duration::from_secs(10),
            window_buckets: 10,
            open_duration: Duration::from_secs(5),
            half_open_probes: 1,
            successes_to_close: 2,
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; outcomes are counted.
    Closed,
    /// Requests are rejected until the time given.
    Open {
        /// When probes may start.
        until: Instant,
    },
    /// A few probes decide whether to close or open again.
    HalfOpen,
}

/// Proof that a request was admitted, to be handed back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "report the request's outcome with this permit"]
pub struct Permit {
    generation: u64,
}

/// A circuit breaker for one upstream instance.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    generation: u64,
    consecutive: u32,
    window: BucketWindow,
    probes_in_flight: u32,
    probe_successes: u32,
    trips: u64,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        let window = BucketWindow::new(config.window, config.window_buckets);
        CircuitBreaker {
            config,
            state: BreakerState::Closed,
            generation: 0,
            consecutive: 0,
            window,
            probes_in_flight: 0,
            probe_successes: 0,
            trips: 0,
        }
    }

    /// The state at `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open { until } if now >= until => BreakerState::HalfOpen,
            state => state,
        }
    }

    /// How many times the breaker has tripped.
    pub fn trips(&self) -> u64 {
        self.trips
    }

    /// Ask to send a request at `now`.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Permit> {
        if let BreakerState::Open { until } = self.state {
            if now < until {
                return None;
            }
            self.enter(BreakerState::HalfOpen);
        }
        match self.state {
            BreakerState::Closed => Some(self.permit()),
            BreakerState::HalfOpen if self.probes_in_flight < self.config.half_open_probes => {
                self.probes_in_flight += 1;
                Some(self.permit())
            }
            _ => None,
        }
    }

    fn permit(&self) -> Permit {
        Permit {
            generation: self.generation,
        }
    }

    /// The admitted request succeeded.
    pub fn on_success(&mut self, now: Instant, permit: Permit) {
        if permit.generation != self.generation {
            return;
        }
        match self.state {
            BreakerState::Closed => {
                self.consecutive = 0;
                self.window.record(now, true);
            }
            BreakerState::HalfOpen => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                self.probe_successes += 1;
                if self.probe_successes >= self.config.successes_to_close {
                    self.enter(BreakerState::Closed);
                }
            }
            BreakerState::Open { .. } => {}
        }
    }

    /// The admitted request failed (an error or a timeout).
    pub fn on_failure(&mut self, now: Instant, permit: Permit) {
        if permit.generation != self.generation {
            return;
        }
        match self.state {
            BreakerState::Closed => {
                self.consecutive += 1;
                self.window.record(now, false);
                let (ok, failed) = self.window.counts(now);
                let total = ok + failed;
                let by_count = self
                    .config
                    .consecutive_failures
                    .is_some_and(|limit| self.consecutive >= limit);
                let by_rate = self.config.failure_rate.is_some_and(|rate| {
                    total >= self.config.minimum_requests.max(1)
                        && failed as f64 >= rate * total as f64
                });
                if by_count || by_rate {
                    self.trip(now);
                }
            }
            BreakerState::HalfOpen => self.trip(now),
            BreakerState::Open { .. } => {}
        }
    }

    /// A request admitted with `permit` was abandoned without an outcome (cancelled by the
    /// client, or a hedge that lost): it frees its probe slot but proves nothing.
    pub fn on_abandoned(&mut self, permit: Permit) {
        if permit.generation == self.generation && self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    fn trip(&mut self, now: Instant) {
        self.trips += 1;
        self.enter(BreakerState::Open {
            until: now.saturating_add(self.config.open_duration),
        });
    }

    fn enter(&mut self, state: BreakerState) {
        self.state = state;
        self.generation += 1;
        self.consecutive = 0;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        if state == BreakerState::Closed {
            self.window.clear();
        }
    }

    #[cfg(test)]
    pub(crate) fn bucket_width(&self) -> u64 {
        self.window.bucket_width()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ms: u64) -> Instant {
        Instant(ms * 1_000_000)
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: Some(3),
            failure_rate: Some(0.5),
            minimum_requests: 10,
            window: Duration::from_millis(1000),
            window_buckets: 10,
            open_duration: Duration::from_millis(500),
            half_open_probes: 1,
            successes_to_close: 2,
        }
    }

    fn run(b: &mut CircuitBreaker, now: Instant, ok: bool) -> bool {
        match b.try_acquire(now) {
            Some(p) if ok => {
                b.on_success(now, p);
                true
            }
            Some(p) => {
                b.on_failure(now, p);
                true
            }
            None => false,
        }
    }

    #[test]
    fn consecutive_failures_trip_and_a_success_resets_the_count() {
        let mut b = CircuitBreaker::new(config());
        run(&mut b, at(0), false);
        run(&mut b, at(0), false);
        run(&mut b, at(0), true);
        run(&mut b, at(0), false);
        run(&mut b, at(0), false);
        assert_eq!(b.state(at(0)), BreakerState::Closed);
        run(&mut b, at(1), false);
        assert_eq!(b.state(at(1)), BreakerState::Open { until: at(501) });
        assert!(b.try_acquire(at(500)).is_none());
    }

    #[test]
    fn the_error_rate_over_the_window_trips_without_a_failure_streak() {
        let mut b = CircuitBreaker::new(config());
        // Alternate success and failure: never two failures in a row, 50 % failing.
        for i in 0..9 {
            run(&mut b, at(i), i % 2 == 0);
        }
        assert_eq!(
            b.state(at(9)),
            BreakerState::Closed,
            "fewer than 10 outcomes"
        );
        run(&mut b, at(9), false);
        assert!(matches!(b.state(at(9)), BreakerState::Open { .. }));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut b = CircuitBreaker::new(config());
        for i in 0..8 {
            run(&mut b, at(i), i % 2 == 0);
        }
        // A second later those eight are out of the window.
        for i in 0..9 {
            run(&mut b, at(1500 + i), i % 2 == 0);
        }
        assert_eq!(b.state(at(1509)), BreakerState::Closed);
    }

    #[test]
    fn half_open_admits_one_probe_closes_after_two_successes() {
        let mut b = CircuitBreaker::new(config());
        for _ in 0..3 {
            run(&mut b, at(0), false);
        }
        let probe = b.try_acquire(at(500)).expect("probe after open_duration");
        assert_eq!(b.state(at(500)), BreakerState::HalfOpen);
        assert!(b.try_acquire(at(500)).is_none(), "one probe at a time");
        b.on_success(at(510), probe);
        assert_eq!(b.state(at(510)), BreakerState::HalfOpen);
        let probe = b.try_acquire(at(510)).unwrap();
        b.on_success(at(520), probe);
        assert_eq!(b.state(at(520)), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_again() {
        let mut b = CircuitBreaker::new(config());
        for _ in 0..3 {
            run(&mut b, at(0), false);
        }
        let probe = b.try_acquire(at(600)).unwrap();
        b.on_failure(at(610), probe);
        assert_eq!(b.state(at(610)), BreakerState::Open { until: at(1110) });
        assert_eq!(b.trips(), 2);
    }

    #[test]
    fn outcomes_from_before_a_trip_are_ignored() {
        let mut b = CircuitBreaker::new(config());
        let slow = b.try_acquire(at(0)).unwrap();
        for _ in 0..3 {
            run(&mut b, at(0), false);
        }
        let probe = b.try_acquire(at(500)).unwrap();
        // The request admitted while closed finishes now; it says nothing about the probe.
        b.on_success(at(501), slow);
        b.on_success(at(501), slow);
        assert_eq!(b.state(at(501)), BreakerState::HalfOpen);
        b.on_abandoned(probe);
        assert!(
            b.try_acquire(at(502)).is_some(),
            "an abandoned probe frees its slot"
        );
    }

    /// The specification table in the module docs, written out plainly: it keeps every
    /// outcome with its bucket and recounts the window each time.
    #[derive(Debug)]
    struct Model {
        config: BreakerConfig,
        width: u64,
        state: BreakerState,
        generation: u64,
        consecutive: u32,
        outcomes: Vec<(u64, bool)>,
        probes: u32,
        successes: u32,
    }

    impl Model {
        fn reset(&mut self, state: BreakerState) {
            self.state = state;
            self.generation += 1;
            self.consecutive = 0;
            self.probes = 0;
            self.successes = 0;
            if state == BreakerState::Closed {
                self.outcomes.clear();
            }
        }

        fn acquire(&mut self, now: Instant) -> Option<u64> {
            if let BreakerState::Open { until } = self.state {
                if now < until {
                    return None;
                }
                self.reset(BreakerState::HalfOpen);
            }
            match self.state {
                BreakerState::Closed => Some(self.generation),
                BreakerState::HalfOpen if self.probes < self.config.half_open_probes => {
                    self.probes += 1;
                    Some(self.generation)
                }
                _ => None,
            }
        }

        fn outcome(&mut self, now: Instant, generation: u64, ok: bool) {
            if generation != self.generation {
                return;
            }
            let open = BreakerState::Open {
                until: Instant(now.0 + self.config.open_duration.as_nanos() as u64),
            };
            match (self.state, ok) {
                (BreakerState::Closed, true) => {
                    self.consecutive = 0;
                    self.outcomes.push((now.0 / self.width, true));
                }
                (BreakerState::Closed, false) => {
                    self.consecutive += 1;
                    self.outcomes.push((now.0 / self.width, false));
                    let current = now.0 / self.width;
                    let buckets = u64::from(self.config.window_buckets);
                    let recent: Vec<bool> = self
                        .outcomes
                        .iter()
                        .filter(|(b, _)| *b + buckets > current && *b <= current)
                        .map(|(_, ok)| *ok)
                        .collect();
                    let failed = recent.iter().filter(|ok| !**ok).count() as f64;
                    let total = recent.len() as f64;
                    let rate = self.config.failure_rate.unwrap_or(f64::INFINITY);
                    let trips_by_rate =
                        total >= self.config.minimum_requests as f64 && failed >= rate * total;
                    let trips_by_count =
                        self.consecutive >= self.config.consecutive_failures.unwrap_or(u32::MAX);
                    if trips_by_rate || trips_by_count {
                        self.reset(open);
                    }
                }
                (BreakerState::HalfOpen, true) => {
                    self.probes -= 1;
                    self.successes += 1;
                    if self.successes >= self.config.successes_to_close {
                        self.reset(BreakerState::Closed);
                    }
                }
                (BreakerState::HalfOpen, false) => self.reset(open),
                (BreakerState::Open { .. }, _) => {}
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        Acquire,
        Succeed(usize),
        Fail(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        prop_oneof![
            (0u64..300).prop_map(Op::Advance),
            Just(Op::Acquire),
            Just(Op::Acquire),
            (0usize..8).prop_map(Op::Succeed),
            (0usize..8).prop_map(Op::Fail),
            (0usize..8).prop_map(Op::Fail),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn breaker_follows_its_specification(
            ops in proptest::collection::vec(op(), 1..300),
            consecutive in proptest::option::of(1u32..6),
            probes in 1u32..3,
            to_close in 1u32..3,
        ) {
            let config = BreakerConfig {
                consecutive_failures: consecutive,
                half_open_probes: probes,
                successes_to_close: to_close,
                ..config()
            };
            let mut breaker = CircuitBreaker::new(config.clone());
            let mut model = Model {
                width: breaker.bucket_width(),
                config,
                state: BreakerState::Closed,
                generation: 0,
                consecutive: 0,
                outcomes: Vec::new(),
                probes: 0,
                successes: 0,
            };
            let mut now = Instant(0);
            let mut outstanding: Vec<(Permit, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Advance(ms) => now = Instant(now.0 + ms * 1_000_000),
                    Op::Acquire => {
                        let real = breaker.try_acquire(now);
                        let expected = model.acquire(now);
                        prop_assert_eq!(real.is_some(), expected.is_some());
                        if let (Some(p), Some(g)) = (real, expected) {
                            outstanding.push((p, g));
                        }
                    }
                    Op::Succeed(k) | Op::Fail(k) if !outstanding.is_empty() => {
                        let ok = matches!(op, Op::Succeed(_));
                        let (permit, generation) = outstanding.remove(k % outstanding.len());
                        if ok {
                            breaker.on_success(now, permit);
                        } else {
                            breaker.on_failure(now, permit);
                        }
                        model.outcome(now, generation, ok);
                    }
                    _ => {}
                }
                let expected_state = match model.state {
                    BreakerState::Open { until } if now >= until => BreakerState::HalfOpen,
                    s => s,
                };
                prop_assert_eq!(breaker.state(now), expected_state);
            }
        }
    }
}
