//! The clock-synchronization actor: Cristian's algorithm (Cristian 1989, "Probabilistic
//! Clock Synchronization") in the shape of an NTP client/server association (RFC 5905).

use super::ntp::{ClockFilter, ClockOffset, NtpSample, NtpTimestamps};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;
use synod_core::{Actor, Ctx, Endpoint, Instant, NodeId};

/// The largest frequency error the discipline will correct, in parts per billion: NTP's
/// 500 PPM (RFC 5905 §11.3, `MAXFREQ`). A fitted drift beyond it is clamped.
const MAX_FREQUENCY_PPB: i64 = 500_000;

/// How a [`ClockSync`] actor runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSyncConfig {
    /// The time server. Its own clock is the reference; every other node polls it.
    pub server: NodeId,
    /// Time between polls on each client. Keep it positive: a zero interval would poll on
    /// every step of the driver.
    pub poll_interval: Duration,
    /// How many filtered samples the drift fit uses. Below 2 disables drift correction.
    pub frequency_window: usize,
}

impl ClockSyncConfig {
    /// Poll `server` every second and fit drift over the last eight filtered samples.
    pub fn new(server: NodeId) -> Self {
        ClockSyncConfig {
            server,
            poll_interval: Duration::from_secs(1),
            frequency_window: 8,
        }
    }
}

/// Messages of the clock-synchronization exchange (RFC 5905 §8 client/server mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClockSyncMsg {
    /// Client → server: "what time is it?", stamped with the client's send time T1.
    TimeRequest {
        /// T1 on the client's clock, echoed back so the client can match the response.
        origin: Instant,
    },
    /// Server → client: the server's receive time T2 and send time T3, with T1 echoed.
    TimeResponse {
        /// T1, copied from the request.
        origin: Instant,
        /// T2: the request arrived, on the server's clock.
        receive: Instant,
        /// T3: this response left, on the server's clock.
        transmit: Instant,
    },
}

/// Timers of the clock-synchronization actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClockSyncTimer {
    /// Time to send the next request to the server.
    Poll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `on_start` has not run yet, so the actor does not know which node it is on.
    NotStarted,
    Server,
    Client,
}

/// Keeps a corrected clock: this node's clock plus an estimate of the server's offset.
///
/// The server answers [`ClockSyncMsg::TimeRequest`] with its own clock readings. Every
/// other node polls it every `poll_interval`, turns each answer into an NTP sample
/// ([`NtpTimestamps::sample`]), keeps the last eight in a [`ClockFilter`], and uses the
/// minimum-delay one: the server's clock reads about `local + θ`, within `δ/2`. A
/// least-squares fit of successive filtered offsets against local time gives the relative
/// frequency (drift), so the estimate is carried forward between polls instead of going
/// stale: a simple stand-in for NTP's clock discipline (RFC 5905 §11.3).
///
/// The actor never changes the driver's clock; the driver's clock is the node's oscillator.
/// Anything that wants server time asks [`ClockSync::corrected_now`] with `ctx.now()`.
/// The corrected clock can step when a better sample arrives; it is not slewed.
///
/// **Inputs**: `on_start` (the first poll), the [`ClockSyncTimer::Poll`] timer, and
/// [`ClockSyncMsg`] from peers; the server also answers requests from clients with a reply.
///
/// **Effects**: `SendUnsynced` of requests and responses (a time message carries no state
/// that must be durable first, and holding it for a disk sync would add the sync's latency
/// to one direction of the path only, biasing θ), and `SetTimer(Poll)`.
///
/// **State** is volatile by design: after a restart the node measures again, since an
/// offset saved before a downtime of unknown length says little about the clock now.
///
/// **For a simulator**: [`ClockSync::corrected_now`] against the server's true clock, with
/// [`ClockSync::error_bound`] (δ/2 of the chosen sample, plus drift since then),
/// [`ClockSync::offset_estimate`], [`ClockSync::last_delay`] and
/// [`ClockSync::frequency_ppb`].
#[derive(Clone, Debug)]
pub struct ClockSync {
    config: ClockSyncConfig,
    role: Role,
    /// T1 of the request in flight, if any. Only a response echoing it is accepted (RFC 5905
    /// §8's bogus-packet test), so duplicates and stale responses are ignored.
    outstanding: Option<Instant>,
    filter: ClockFilter,
    /// The filtered sample the estimate is anchored on.
    chosen: Option<NtpSample>,
    last_delay: Option<Duration>,
    /// Filtered samples fed to the drift fit: midpoint and offset, oldest first.
    discipline: VecDeque<(Instant, ClockOffset)>,
    frequency_ppb: i64,
    samples_accepted: u64,
    samples_refused: u64,
}

impl ClockSync {
    /// An actor for any node of the cluster; whether it serves or polls is decided in
    /// `on_start` by comparing `ctx.me()` with `config.server`.
    pub fn new(config: ClockSyncConfig) -> Self {
        ClockSync {
            config,
            role: Role::NotStarted,
            outstanding: None,
            filter: ClockFilter::new(),
            chosen: None,
            last_delay: None,
            discipline: VecDeque::new(),
            frequency_ppb: 0,
            samples_accepted: 0,
            samples_refused: 0,
        }
    }

    // --- Getters: what a simulator or a protocol built on this reads. ---

    /// The configuration.
    pub fn config(&self) -> &ClockSyncConfig {
        &self.config
    }

    /// True on the time server (after `on_start`).
    pub fn is_server(&self) -> bool {
        self.role == Role::Server
    }

    /// True once the corrected clock means something: on the server, or on a client with
    /// at least one valid sample.
    pub fn is_synchronized(&self) -> bool {
        self.is_server() || self.chosen.is_some()
    }

    /// The server's clock, in signed nanoseconds, when this node's clock reads `local`:
    /// `local + θ + drift × (local − t)` where `θ` and `t` are the chosen sample's offset
    /// and midpoint. Equal to `local` on the server and before the first sample.
    pub fn corrected_now(&self, local: Instant) -> i128 {
        self.offset_at(local).apply(local)
    }

    /// The estimated offset of the server's clock from this node's at local time `local`,
    /// carried forward from the chosen sample by the drift estimate.
    pub fn offset_at(&self, local: Instant) -> ClockOffset {
        let Some(chosen) = self.chosen else {
            return ClockOffset::ZERO;
        };
        let elapsed = i128::from(local.0) - i128::from(chosen.midpoint().0);
        let drift = elapsed * i128::from(self.frequency_ppb) / 1_000_000_000;
        ClockOffset(chosen.offset().as_nanos() + drift)
    }

    /// θ of the chosen (minimum-delay) sample, as measured: `Some(0)` on the server, `None`
    /// on a client with no sample yet.
    pub fn offset_estimate(&self) -> Option<ClockOffset> {
        match (self.role, self.chosen) {
            (Role::Server, _) => Some(ClockOffset::ZERO),
            (_, chosen) => chosen.map(|sample| sample.offset()),
        }
    }

    /// δ of the most recent valid sample, chosen or not.
    pub fn last_delay(&self) -> Option<Duration> {
        self.last_delay
    }

    /// The measurement error of the chosen sample: the server's clock lay within
    /// `offset_estimate() ± error_bound()` at the sample's midpoint (δ/2, RFC 5905 §8).
    /// Since then the error can grow by the residual drift times the sample's age.
    /// Zero on the server; `None` before the first sample.
    pub fn error_bound(&self) -> Option<Duration> {
        match (self.role, self.chosen) {
            (Role::Server, _) => Some(Duration::ZERO),
            (_, chosen) => chosen.map(|sample| sample.error_bound()),
        }
    }

    /// The chosen sample, with its timestamps.
    pub fn chosen_sample(&self) -> Option<&NtpSample> {
        self.chosen.as_ref()
    }

    /// The estimated frequency of the server's clock relative to this node's, in parts per
    /// billion: positive if the server's clock runs faster. Zero until two filtered samples
    /// at different times exist, and clamped to ±500 PPM.
    pub fn frequency_ppb(&self) -> i64 {
        self.frequency_ppb
    }

    /// The clock filter's window.
    pub fn filter(&self) -> &ClockFilter {
        &self.filter
    }

    /// How many responses became valid samples.
    pub fn samples_accepted(&self) -> u64 {
        self.samples_accepted
    }

    /// How many matched responses carried impossible timestamps and were refused.
    pub fn samples_refused(&self) -> u64 {
        self.samples_refused
    }

    // --- Inputs, as the handlers see them. ---

    fn poll(&mut self, ctx: &mut Ctx<'_, ClockSyncMsg, ClockSyncTimer>) {
        // An unanswered request is taken as lost: a late answer to it no longer matches.
        let origin = ctx.now();
        self.outstanding = Some(origin);
        ctx.send_unsynced(self.config.server, ClockSyncMsg::TimeRequest { origin });
        ctx.set_timer(ClockSyncTimer::Poll, self.config.poll_interval);
    }

    fn on_time_response(&mut self, timestamps: NtpTimestamps) {
        if self.outstanding != Some(timestamps.origin) {
            return;
        }
        self.outstanding = None;
        let sample = match timestamps.sample() {
            Ok(sample) => sample,
            Err(_) => {
                self.samples_refused += 1;
                return;
            }
        };
        self.samples_accepted += 1;
        self.last_delay = Some(sample.delay());
        self.filter.push(sample);
        let Some(best) = self.filter.best().copied() else {
            return;
        };
        // RFC 5905 §10: a sample drives the discipline once, and only if it is newer than
        // the one used last; an old low-delay sample stays the anchor but is not re-fed.
        let is_new = match self.chosen {
            Some(chosen) => best.taken_at() > chosen.taken_at(),
            None => true,
        };
        if is_new {
            self.chosen = Some(best);
            self.discipline.push_back((best.midpoint(), best.offset()));
            while self.discipline.len() > self.config.frequency_window.max(1) {
                self.discipline.pop_front();
            }
            self.frequency_ppb = if self.config.frequency_window >= 2 {
                fit_frequency_ppb(&self.discipline)
            } else {
                0
            };
        }
    }
}

/// The least-squares slope of offset against local time, in parts per billion, clamped to
/// ±[`MAX_FREQUENCY_PPB`]. Zero with fewer than two distinct times. Floating point is used
/// only here, on values centred on the first point, and the result is an integer.
fn fit_frequency_ppb(points: &VecDeque<(Instant, ClockOffset)>) -> i64 {
    let Some(&(time_base, offset_base)) = points.front() else {
        return 0;
    };
    if points.len() < 2 {
        return 0;
    }
    let centred: Vec<(f64, f64)> = points
        .iter()
        .map(|&(time, offset)| {
            let x = (i128::from(time.0) - i128::from(time_base.0)) as f64;
            let y = (offset.as_nanos() - offset_base.as_nanos()) as f64;
            (x, y)
        })
        .collect();
    let count = centred.len() as f64;
    let mean_x = centred.iter().map(|p| p.0).sum::<f64>() / count;
    let mean_y = centred.iter().map(|p| p.1).sum::<f64>() / count;
    let (mut sxx, mut sxy) = (0.0f64, 0.0f64);
    for &(x, y) in &centred {
        sxx += (x - mean_x) * (x - mean_x);
        sxy += (x - mean_x) * (y - mean_y);
    }
    let ppb = (sxy / sxx * 1e9).round();
    if !ppb.is_finite() {
        return 0;
    }
    // In range after the clamp, so the cast is exact.
    ppb.clamp(-(MAX_FREQUENCY_PPB as f64), MAX_FREQUENCY_PPB as f64) as i64
}

impl Actor for ClockSync {
    type Msg = ClockSyncMsg;
    type Timer = ClockSyncTimer;

    fn on_start(&mut self, ctx: &mut Ctx<'_, ClockSyncMsg, ClockSyncTimer>) {
        if ctx.me() == self.config.server {
            self.role = Role::Server;
        } else {
            self.role = Role::Client;
            self.poll(ctx);
        }
    }

    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, ClockSyncMsg, ClockSyncTimer>,
        from: Endpoint,
        msg: ClockSyncMsg,
    ) {
        match (self.role, msg) {
            (Role::Server, ClockSyncMsg::TimeRequest { origin }) => {
                // The handler runs at one instant, so T2 = T3; δ then excludes nothing.
                let now = ctx.now();
                let response = ClockSyncMsg::TimeResponse {
                    origin,
                    receive: now,
                    transmit: now,
                };
                match from {
                    Endpoint::Node(node) => ctx.send_unsynced(node, response),
                    Endpoint::Client(client) => ctx.reply(client, response),
                }
            }
            (
                Role::Client,
                ClockSyncMsg::TimeResponse {
                    origin,
                    receive,
                    transmit,
                },
            ) if from == Endpoint::Node(self.config.server) => {
                self.on_time_response(NtpTimestamps {
                    origin,
                    receive,
                    transmit,
                    destination: ctx.now(),
                });
            }
            // Requests to a non-server, responses from anyone but the server, and anything
            // before on_start are not part of the exchange.
            _ => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, ClockSyncMsg, ClockSyncTimer>, timer: ClockSyncTimer) {
        match timer {
            ClockSyncTimer::Poll if self.role == Role::Client => self.poll(ctx),
            ClockSyncTimer::Poll => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_core::testing::{sent, TestNode};
    use synod_core::{ClientId, Effect};

    const SERVER: NodeId = NodeId(0);
    const CLIENT: NodeId = NodeId(1);

    fn client() -> TestNode<ClockSync> {
        TestNode::new(CLIENT, ClockSync::new(ClockSyncConfig::new(SERVER)), 1)
    }

    fn request_origin(effects: &[Effect<ClockSyncMsg, ClockSyncTimer>]) -> Instant {
        match sent(effects).as_slice() {
            [(to, ClockSyncMsg::TimeRequest { origin })] if *to == SERVER => *origin,
            other => panic!("expected one request to the server, got {other:?}"),
        }
    }

    /// A server whose clock reads `true_offset` ns more than the client's, plus `drift_ppb`
    /// of the client's elapsed time.
    struct ServerClock {
        true_offset: i64,
        drift_ppb: i64,
    }

    impl ServerClock {
        fn at(&self, client: Instant) -> Instant {
            let drift = i128::from(client.0) * i128::from(self.drift_ppb) / 1_000_000_000;
            let server = i128::from(client.0) + i128::from(self.true_offset) + drift;
            Instant(u64::try_from(server).expect("test keeps server time positive"))
        }
    }

    /// One poll round trip: the request leaves now, takes `outbound` to reach the server,
    /// which answers at once, and the answer takes `inbound` to come back.
    fn round_trip(
        node: &mut TestNode<ClockSync>,
        request: Instant,
        server: &ServerClock,
        outbound: Duration,
        inbound: Duration,
    ) {
        node.advance(outbound);
        let at_server = server.at(node.now());
        node.advance(inbound);
        node.deliver(
            SERVER,
            ClockSyncMsg::TimeResponse {
                origin: request,
                receive: at_server,
                transmit: at_server,
            },
        );
    }

    #[test]
    fn client_polls_the_server_at_start_and_on_each_timer() {
        let mut node = client();
        node.advance(Duration::from_millis(3));
        let effects = node.start();
        assert_eq!(request_origin(&effects), Instant(3_000_000));
        assert!(effects.contains(&Effect::SetTimer {
            key: ClockSyncTimer::Poll,
            after: Duration::from_secs(1),
        }));
        assert!(
            matches!(effects[0], Effect::SendUnsynced { .. }),
            "time messages are not held for a disk sync"
        );
        node.advance(Duration::from_secs(1));
        let effects = node.fire(ClockSyncTimer::Poll);
        assert_eq!(request_origin(&effects), Instant(1_003_000_000));
    }

    #[test]
    fn server_answers_with_its_own_clock_and_never_polls() {
        let mut server = TestNode::new(SERVER, ClockSync::new(ClockSyncConfig::new(SERVER)), 1);
        assert!(server.start().is_empty());
        server.advance(Duration::from_millis(42));
        let effects = server.deliver(CLIENT, ClockSyncMsg::TimeRequest { origin: Instant(7) });
        assert_eq!(
            effects,
            vec![Effect::SendUnsynced {
                to: CLIENT,
                msg: ClockSyncMsg::TimeResponse {
                    origin: Instant(7),
                    receive: Instant(42_000_000),
                    transmit: Instant(42_000_000),
                },
            }]
        );
        let effects = server.deliver(
            ClientId(5),
            ClockSyncMsg::TimeRequest { origin: Instant(9) },
        );
        assert!(matches!(
            effects.as_slice(),
            [Effect::Reply {
                to: ClientId(5),
                ..
            }]
        ));
        assert!(server.fire(ClockSyncTimer::Poll).is_empty());
        assert_eq!(server.actor.offset_estimate(), Some(ClockOffset::ZERO));
        assert_eq!(server.actor.corrected_now(Instant(5)), 5);
    }

    #[test]
    fn symmetric_path_recovers_the_exact_offset() {
        // Cristian 1989: with equal delays each way, θ is the true offset.
        let server = ServerClock {
            true_offset: 250_000_000,
            drift_ppb: 0,
        };
        let mut node = client();
        node.advance(Duration::from_secs(1));
        let request = request_origin(&node.start());
        let delay = Duration::from_millis(2);
        round_trip(&mut node, request, &server, delay, delay);

        let sync = &node.actor;
        assert!(sync.is_synchronized());
        assert_eq!(sync.offset_estimate(), Some(ClockOffset(250_000_000)));
        assert_eq!(sync.last_delay(), Some(Duration::from_millis(4)));
        assert_eq!(sync.error_bound(), Some(Duration::from_millis(2)));
        let local = node.now();
        assert_eq!(sync.corrected_now(local), i128::from(server.at(local).0));
    }

    #[test]
    fn asymmetric_path_stays_within_half_the_delay() {
        let server = ServerClock {
            true_offset: -40_000_000,
            drift_ppb: 0,
        };
        let mut node = client();
        node.advance(Duration::from_secs(2));
        let request = request_origin(&node.start());
        round_trip(
            &mut node,
            request,
            &server,
            Duration::from_micros(500),
            Duration::from_millis(9),
        );
        let sync = &node.actor;
        let estimate = sync.offset_estimate().expect("one sample");
        let bound = sync.error_bound().expect("one sample");
        let error = estimate.distance(ClockOffset(-40_000_000));
        assert_eq!(error, 4_250_000, "half the asymmetry");
        assert!(error <= bound.as_nanos());
    }

    #[test]
    fn filter_keeps_the_low_delay_sample_over_a_congested_one() {
        let server = ServerClock {
            true_offset: 1_000_000,
            drift_ppb: 0,
        };
        let mut node = client();
        let request = request_origin(&node.start());
        let fast = Duration::from_micros(100);
        round_trip(&mut node, request, &server, fast, fast);
        let good = node.actor.offset_estimate();

        node.advance(Duration::from_secs(1));
        let request = request_origin(&node.fire(ClockSyncTimer::Poll));
        // Congestion on the way back: 30 ms of queueing.
        round_trip(&mut node, request, &server, fast, Duration::from_millis(30));
        assert_eq!(node.actor.last_delay(), Some(Duration::from_micros(30_100)));
        assert_eq!(
            node.actor.offset_estimate(),
            good,
            "the minimum-delay sample wins"
        );
        assert_eq!(node.actor.error_bound(), Some(Duration::from_micros(100)));
        assert_eq!(node.actor.filter().len(), 2);
    }

    #[test]
    fn stale_duplicate_and_foreign_responses_are_ignored() {
        let mut node = client();
        let first = request_origin(&node.start());
        node.advance(Duration::from_secs(1));
        let second = request_origin(&node.fire(ClockSyncTimer::Poll));
        let answer = |origin| ClockSyncMsg::TimeResponse {
            origin,
            receive: Instant(10),
            transmit: Instant(10),
        };
        node.advance(Duration::from_millis(1));
        node.deliver(SERVER, answer(first));
        assert!(
            !node.actor.is_synchronized(),
            "answer to a superseded request"
        );
        node.deliver(NodeId(7), answer(second));
        assert!(
            !node.actor.is_synchronized(),
            "answer from a node that is not the server"
        );
        node.deliver(ClientId(3), answer(second));
        assert!(!node.actor.is_synchronized(), "answer from a client");
        node.deliver(SERVER, answer(second));
        assert_eq!(node.actor.samples_accepted(), 1);
        node.deliver(SERVER, answer(second));
        assert_eq!(node.actor.samples_accepted(), 1, "duplicate");
    }

    #[test]
    fn impossible_timestamps_are_refused() {
        let mut node = client();
        node.advance(Duration::from_secs(1));
        let request = request_origin(&node.start());
        node.advance(Duration::from_millis(1));
        node.deliver(
            SERVER,
            ClockSyncMsg::TimeResponse {
                origin: request,
                receive: Instant(500),
                transmit: Instant(400),
            },
        );
        assert_eq!(node.actor.samples_refused(), 1);
        assert!(!node.actor.is_synchronized());
        assert_eq!(node.actor.corrected_now(Instant(123)), 123);
    }

    #[test]
    fn drift_estimate_tracks_a_fast_server_clock() {
        // The server's oscillator runs 100 PPM fast. The fitted frequency lets the corrected
        // clock follow it between polls, where a constant offset would fall behind.
        let server = ServerClock {
            true_offset: 3_000_000,
            drift_ppb: 100_000,
        };
        let mut node = client();
        node.advance(Duration::from_secs(10));
        let mut request = request_origin(&node.start());
        let delay = Duration::from_millis(1);
        for _ in 0..10 {
            round_trip(&mut node, request, &server, delay, delay);
            node.advance(Duration::from_secs(1) - 2 * delay);
            request = request_origin(&node.fire(ClockSyncTimer::Poll));
        }
        let sync = &node.actor;
        assert!(
            (sync.frequency_ppb() - 100_000).abs() <= 10,
            "frequency {} ppb",
            sync.frequency_ppb()
        );
        // Ten seconds after the last sample, a constant offset would be 1 ms behind.
        let later = node.now() + Duration::from_secs(10);
        let error = sync.corrected_now(later) - i128::from(server.at(later).0);
        assert!(error.abs() <= 1_000, "corrected clock off by {error} ns");
        let stale = sync.offset_estimate().expect("synced").apply(later);
        assert!((stale - i128::from(server.at(later).0)).abs() >= 1_000_000);
    }

    #[test]
    fn drift_correction_can_be_disabled() {
        let server = ServerClock {
            true_offset: 0,
            drift_ppb: 100_000,
        };
        let config = ClockSyncConfig {
            frequency_window: 0,
            ..ClockSyncConfig::new(SERVER)
        };
        let mut node = TestNode::new(CLIENT, ClockSync::new(config), 1);
        let mut request = request_origin(&node.start());
        for _ in 0..3 {
            round_trip(
                &mut node,
                request,
                &server,
                Duration::from_millis(1),
                Duration::from_millis(1),
            );
            node.advance(Duration::from_secs(1));
            request = request_origin(&node.fire(ClockSyncTimer::Poll));
        }
        assert_eq!(node.actor.frequency_ppb(), 0);
    }

    #[test]
    fn restart_forgets_the_estimate_and_measures_again() {
        let server = ServerClock {
            true_offset: 5_000,
            drift_ppb: 0,
        };
        let mut node = client();
        let request = request_origin(&node.start());
        round_trip(
            &mut node,
            request,
            &server,
            Duration::from_micros(10),
            Duration::from_micros(10),
        );
        assert!(node.actor.is_synchronized());
        let effects = node.crash_and_restart(ClockSync::new(ClockSyncConfig::new(SERVER)));
        assert!(!node.actor.is_synchronized());
        assert_eq!(request_origin(&effects), node.now());
    }

    #[test]
    fn frequency_fit_ignores_degenerate_and_absurd_input() {
        let same_time: VecDeque<_> =
            [(Instant(5), ClockOffset(1)), (Instant(5), ClockOffset(9))].into();
        assert_eq!(fit_frequency_ppb(&same_time), 0);
        let absurd: VecDeque<_> = [
            (Instant(0), ClockOffset(0)),
            (Instant(1), ClockOffset(i128::from(u64::MAX))),
        ]
        .into();
        assert_eq!(fit_frequency_ppb(&absurd), MAX_FREQUENCY_PPB);
    }
}
