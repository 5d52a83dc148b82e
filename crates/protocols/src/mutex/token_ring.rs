//! # Token ring with lost-token regeneration
//!
//! Algorithm (Le Lann, "Distributed Systems — Towards a Formal Approach", IFIP 1977): one
//! token circulates round a logical ring; only the holder may enter the critical section,
//! and it passes the token to its successor when it leaves (or, if no client waits, after
//! `pass_delay`). Messages per entry range from 1 (every node always waiting) to unbounded
//! (nobody waiting, the token still circulates).
//!
//! **Crashes.** Two mechanisms keep a crashed node from stalling the ring. We chose a
//! timeout plus a ring-wide confirmation round over Misra's ping-pong (Misra, "Detecting
//! Termination of Distributed Computations Using Markers", PODC 1983), because ping-pong
//! detects the loss of a token *in a channel* on a fixed ring, while here the failure is a
//! crashed node, which also needs the ring to be repaired around it.
//!
//! 1. *Skipping a crashed successor.* Every hop is acknowledged. The sender keeps custody
//!    of the token until the `Ack` arrives; if none comes within `ack_timeout`, it
//!    presumes the successor crashed and passes to the one after it.
//! 2. *Regenerating a lost token.* A node that has not seen the token for
//!    `regenerate_after` (the holder crashed with it) proposes a new generation
//!    `(counter + 1, own id)` by sending a `Probe` round the ring (hops acknowledged and
//!    crashed nodes skipped as above). A node that holds the token, or has it in custody,
//!    swallows the probe (a *veto*: the token is not lost, merely slow). Otherwise it
//!    adopts the probe's generation if it is the highest it has seen (it will discard
//!    any token of a lower generation from now on) and forwards it; a probe of a lower
//!    generation is swallowed. If the probe returns to its origin and the origin's
//!    adopted generation is still the probe's, no live node had the token when the probe
//!    passed and none will accept the old one: the origin creates a token of the new
//!    generation. Generations are ordered by (counter, origin), so of two concurrent
//!    regenerations at most one completes.
//!
//! Fault and timing model: synchronous (the one the bully algorithm assumes): message
//! delay and handling time are bounded well below `ack_timeout`, so a missing ack means
//! a crash. Nodes crash and recover with volatile state (only a "has started before" flag
//! is durable, so that a recovering node 0 does not mint a second initial token). No
//! message loss and no partitions: a lost ack or a partition would make a live node look
//! crashed and could duplicate the token. Channels need not be FIFO.
//!
//! Invariant: at most one token is held (in custody or in the critical section) at a
//! time, hence mutual exclusion. The token is only created at first start and by a
//! regeneration round that passed every live node without meeting the token.
//!
//! Differences from the chapter: the chapter's ring busy-waits (`while not has_token:
//! sleep`), has no acknowledgements, and loses the token for good when its holder
//! crashes.

use super::{client_face, ClientMsg, ClientQueue, MutexCounters};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use synod_core::{Actor, Ctx, Endpoint, NodeId, StorageExt};

const STARTED_KEY: &[u8] = b"token_ring/started";

/// A token generation: regenerations count up, ties broken by the regenerating node.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Generation {
    /// How many times the token has been regenerated (as far as the proposer knew).
    pub counter: u64,
    /// The node that proposed this generation.
    pub origin: NodeId,
}

/// Messages of the token ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenRingMsg {
    /// Between a client and its node.
    Client(ClientMsg),
    /// The token, of this generation.
    Token(Generation),
    /// A proposal to regenerate the token at this generation.
    Probe(Generation),
    /// Receipt of a `Token` (`token = true`) or `Probe` of this generation.
    Ack {
        /// Whether the acknowledged message was the token.
        token: bool,
        /// Its generation.
        generation: Generation,
    },
}

/// Timers of the token ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenRingTimer {
    /// Pass an idle token on.
    Pass,
    /// The successor did not acknowledge the token.
    TokenAckTimeout,
    /// The successor did not acknowledge this probe.
    ProbeAckTimeout(Generation),
    /// The token has not been seen for `regenerate_after`.
    LostToken,
}

/// Timeouts of the token ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRingConfig {
    /// How long an idle holder keeps the token before passing it.
    pub pass_delay: Duration,
    /// How long to wait for an `Ack` before presuming the successor crashed.
    pub ack_timeout: Duration,
    /// How long without seeing the token before proposing to regenerate it. Must exceed
    /// the longest time a token takes to go round (including critical sections).
    pub regenerate_after: Duration,
}

impl Default for TokenRingConfig {
    fn default() -> Self {
        TokenRingConfig {
            pass_delay: Duration::from_millis(1),
            ack_timeout: Duration::from_millis(20),
            regenerate_after: Duration::from_millis(300),
        }
    }
}

/// A node of the token ring.
#[derive(Debug)]
pub struct TokenRing {
    ring: Vec<NodeId>,
    config: TokenRingConfig,
    clients: ClientQueue,
    adopted: Generation,
    holding: bool,
    custody: Option<NodeId>,
    probes: BTreeMap<Generation, NodeId>,
    in_critical_section: bool,
    counters: MutexCounters,
    regenerations: u64,
}

impl TokenRing {
    /// A node on `ring` (the order the token travels). The first node of the ring holds
    /// the token at first start.
    pub fn new(ring: Vec<NodeId>, config: TokenRingConfig) -> Self {
        TokenRing {
            ring,
            config,
            clients: ClientQueue::default(),
            adopted: Generation::default(),
            holding: false,
            custody: None,
            probes: BTreeMap::new(),
            in_critical_section: false,
            counters: MutexCounters::default(),
            regenerations: 0,
        }
    }

    /// Whether this node holds the token (idle or in the critical section).
    pub fn holds_token(&self) -> bool {
        self.holding
    }

    /// Whether this node has passed the token and awaits the acknowledgement.
    pub fn has_custody(&self) -> bool {
        self.custody.is_some()
    }

    /// The highest generation this node has adopted.
    pub fn generation(&self) -> Generation {
        self.adopted
    }

    /// Tokens this node regenerated.
    pub fn regenerations(&self) -> u64 {
        self.regenerations
    }

    /// The node after `node` on the ring.
    fn after(&self, node: NodeId) -> NodeId {
        self.ring
            .iter()
            .position(|&n| n == node)
            .map_or(node, |i| self.ring[(i + 1) % self.ring.len()])
    }

    fn send(
        &mut self,
        ctx: &mut Ctx<'_, TokenRingMsg, TokenRingTimer>,
        to: NodeId,
        msg: TokenRingMsg,
    ) {
        self.counters.messages_sent += 1;
        ctx.send(to, msg);
    }

    fn receive_token(&mut self, ctx: &mut Ctx<'_, TokenRingMsg, TokenRingTimer>) {
        self.holding = true;
        ctx.set_timer(TokenRingTimer::LostToken, self.config.regenerate_after);
        if self.clients.has_waiting() {
            self.enter(ctx);
        } else {
            ctx.set_timer(TokenRingTimer::Pass, self.config.pass_delay);
        }
    }

    fn enter(&mut self, ctx: &mut Ctx<'_, TokenRingMsg, TokenRingTimer>) {
        if let Some(client) = self.clients.enter() {
            ctx.cancel_timer(TokenRingTimer::Pass);
            self.in_critical_section = true;
            self.counters.entries += 1;
            ctx.reply(client, TokenRingMsg::Client(ClientMsg::Granted));
        }
    }

    fn pass_to(&mut self, ctx: &mut Ctx<'_, TokenRingMsg, TokenRingTimer>, to: NodeId) {
        if to == ctx.me() {
            // Everyone else is down: keep the token.
            self.holding = true;
            self.custody = None;
            ctx.set_timer(TokenRingTimer::Pass, self.config.pass_delay);
            return;
        }
        self.holding = false;
        self.custody = Some(to);
        self.send(ctx, to, TokenRingMsg::Token(self.adopted));
        ctx.set_timer(TokenRingTimer::TokenAckTimeout, self.config.ack_timeout);
    }

    fn forward_probe(
        &mut self,
        ctx: &mut Ctx<'_, TokenRingMsg, TokenRingTimer>,
        to: NodeId,
        generation: Generation,
    ) {
        if to == ctx.me() {
            self.on_probe_returned(ctx, generation);
            return;
        }
        self.probes.insert(generation, to);
        self.send(ctx, to, TokenRingMsg::Probe(generation));
        ctx.set_timer(
            TokenRingTimer::ProbeAckTimeout(generation),
            self.config.ack_timeout,
        );
    }

    fn on_probe_returned(
        &mut self,
        ctx: &mut Ctx<'_, TokenRingMsg, TokenRingTimer>,
        generation: Generation,
    ) {
        if self.adopted == generation && !self.holding && self.custody.is_none() {
            self.regenerations += 1;
            self.receive_token(ctx);
        }
    }
}

client_face!(TokenRing, TokenRingMsg);

impl Actor for TokenRing {
    type Msg = TokenRingMsg;
    type Timer = TokenRingTimer;

    fn on_start(&mut self, ctx: &mut Ctx<'_, TokenRingMsg, TokenRingTimer>) {
        let restarted = ctx.storage().get(STARTED_KEY).is_some();
        if !restarted {
            ctx.storage().put_value(STARTED_KEY, &true);
            if self.ring.first() == Some(&ctx.me()) {
                self.receive_token(ctx);
                return;
            }
        }
        ctx.set_timer(TokenRingTimer::LostToken, self.config.regenerate_after);
    }

    // The arms' conditions mutate state (client queues, custody), which reads better in
    // the arm's body than in a match guard.
    #[allow(clippy::collapsible_match)]
    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, TokenRingMsg, TokenRingTimer>,
        from: Endpoint,
        msg: TokenRingMsg,
    ) {
        match (from, msg) {
            (Endpoint::Client(client), TokenRingMsg::Client(ClientMsg::Acquire)) => {
                if self.clients.push(client) && self.holding && !self.in_critical_section {
                    self.enter(ctx);
                }
            }
            (Endpoint::Client(client), TokenRingMsg::Client(ClientMsg::Release)) => {
                if self.in_critical_section && self.clients.release(client) {
                    self.in_critical_section = false;
                    let next = self.after(ctx.me());
                    self.pass_to(ctx, next);
                }
            }
            (Endpoint::Node(node), TokenRingMsg::Token(generation)) => {
                self.send(
                    ctx,
                    node,
                    TokenRingMsg::Ack {
                        token: true,
                        generation,
                    },
                );
                if generation < self.adopted || self.holding {
                    return; // a token of a superseded generation: discard it
                }
                self.adopted = generation;
                self.receive_token(ctx);
            }
            (Endpoint::Node(node), TokenRingMsg::Probe(generation)) => {
                self.send(
                    ctx,
                    node,
                    TokenRingMsg::Ack {
                        token: false,
                        generation,
                    },
                );
                if generation.origin == ctx.me() {
                    self.on_probe_returned(ctx, generation);
                } else if !self.holding && self.custody.is_none() && generation >= self.adopted {
                    self.adopted = generation;
                    let next = self.after(ctx.me());
                    self.forward_probe(ctx, next, generation);
                }
                // Otherwise swallowed: this node has the token (veto) or knows a higher
                // generation.
            }
            (Endpoint::Node(node), TokenRingMsg::Ack { token: true, .. }) => {
                if self.custody == Some(node) {
                    self.custody = None;
                    ctx.cancel_timer(TokenRingTimer::TokenAckTimeout);
                }
            }
            (
                Endpoint::Node(node),
                TokenRingMsg::Ack {
                    token: false,
                    generation,
                },
            ) => {
                if self.probes.get(&generation) == Some(&node) {
                    self.probes.remove(&generation);
                    ctx.cancel_timer(TokenRingTimer::ProbeAckTimeout(generation));
                }
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, TokenRingMsg, TokenRingTimer>, timer: TokenRingTimer) {
        match timer {
            TokenRingTimer::Pass if self.holding && !self.in_critical_section => {
                let next = self.after(ctx.me());
                self.pass_to(ctx, next);
            }
            TokenRingTimer::TokenAckTimeout => {
                if let Some(silent) = self.custody {
                    let next = self.after(silent);
                    self.pass_to(ctx, next);
                }
            }
            TokenRingTimer::ProbeAckTimeout(generation) => {
                if let Some(silent) = self.probes.remove(&generation) {
                    let next = self.after(silent);
                    self.forward_probe(ctx, next, generation);
                }
            }
            TokenRingTimer::LostToken => {
                ctx.set_timer(TokenRingTimer::LostToken, self.config.regenerate_after);
                if !self.holding && self.custody.is_none() {
                    let generation = Generation {
                        counter: self.adopted.counter + 1,
                        origin: ctx.me(),
                    };
                    self.adopted = generation;
                    let next = self.after(ctx.me());
                    self.forward_probe(ctx, next, generation);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::{
        every_request_granted, mutual_exclusion, replay, run_mutex, Load, MutexWorkload,
    };
    use super::*;
    use crate::mutex::MutualExclusion;
    use std::sync::atomic::{AtomicU64, Ordering};
    use synod_core::testing::{sent, TestNode};
    use synod_core::ClientId;
    use synod_sim::{assert_seeds, FaultConfig, NetConfig, Sim, SimConfig};

    fn ring(n: u32) -> Vec<NodeId> {
        (0..n).map(NodeId).collect()
    }

    fn node(me: u32) -> TestNode<TokenRing> {
        let mut t = TestNode::new(
            NodeId(me),
            TokenRing::new(ring(4), TokenRingConfig::default()),
            1,
        );
        t.start();
        t
    }

    #[test]
    fn token_ring_holder_enters_and_passes_to_its_successor_on_release() {
        let mut n = node(0);
        assert!(
            n.actor.holds_token(),
            "the first node starts with the token"
        );
        n.deliver(ClientId(0), TokenRing::acquire_request());
        assert!(n.actor.in_critical_section());
        let out = sent(&n.deliver(ClientId(0), TokenRing::release_request()));
        assert_eq!(
            out,
            vec![(NodeId(1), TokenRingMsg::Token(Generation::default()))]
        );
        assert!(!n.actor.holds_token() && n.actor.has_custody());
    }

    /// A silent successor is presumed crashed and skipped.
    #[test]
    fn token_ring_skips_a_successor_that_does_not_acknowledge() {
        let mut n = node(0);
        n.fire(TokenRingTimer::Pass);
        let out = sent(&n.fire(TokenRingTimer::TokenAckTimeout));
        assert_eq!(
            out,
            vec![(NodeId(2), TokenRingMsg::Token(Generation::default()))]
        );
        n.deliver(
            NodeId(2),
            TokenRingMsg::Ack {
                token: true,
                generation: Generation::default(),
            },
        );
        assert!(!n.actor.has_custody());
    }

    /// A node holding the token swallows a regeneration probe: the token is not lost.
    #[test]
    fn token_ring_holder_vetoes_regeneration() {
        let mut n = node(0);
        let probe = Generation {
            counter: 1,
            origin: NodeId(2),
        };
        let out = sent(&n.deliver(NodeId(3), TokenRingMsg::Probe(probe)));
        assert_eq!(
            out,
            vec![(
                NodeId(3),
                TokenRingMsg::Ack {
                    token: false,
                    generation: probe
                }
            )]
        );
        assert_eq!(n.actor.generation(), Generation::default());
    }

    /// A probe that returns to its origin unvetoed regenerates the token, and a token of
    /// the superseded generation is discarded afterwards.
    #[test]
    fn token_ring_regenerates_after_an_unvetoed_round_and_discards_old_tokens() {
        let mut n = node(2);
        let out = sent(&n.fire(TokenRingTimer::LostToken));
        let proposed = Generation {
            counter: 1,
            origin: NodeId(2),
        };
        assert_eq!(out, vec![(NodeId(3), TokenRingMsg::Probe(proposed))]);
        n.deliver(NodeId(1), TokenRingMsg::Probe(proposed));
        assert!(n.actor.holds_token());
        assert_eq!(n.actor.regenerations(), 1);
        let mut m = node(3);
        m.deliver(NodeId(2), TokenRingMsg::Probe(proposed));
        m.deliver(NodeId(2), TokenRingMsg::Token(Generation::default()));
        assert!(
            !m.actor.holds_token(),
            "an old-generation token is discarded"
        );
    }

    fn factory(n: u32) -> impl FnMut(NodeId) -> TokenRing {
        move |_| TokenRing::new(ring(n), TokenRingConfig::default())
    }

    #[test]
    fn token_ring_keeps_mutual_exclusion_and_grants_every_request() {
        assert_seeds(
            0..100,
            |seed| {
                let n = 2 + (seed % 6) as u32;
                run_mutex(seed, n, 4, Load::Heavy, NetConfig::lan(), factory(n)).map(|_| ())
            },
            replay("token_ring"),
        );
    }

    /// Textbook 1 … ∞ hops per entry: at least one hop (token and ack) per entry, and
    /// many idle hops per entry under light load.
    #[test]
    fn token_ring_messages_per_entry_grow_as_load_falls() {
        use super::super::harness::messages_per_entry;
        for n in [3u32, 5, 9] {
            let heavy =
                run_mutex(5, n, 20, Load::Heavy, NetConfig::lan(), factory(n)).expect("run");
            let light =
                run_mutex(5, n, 4, Load::Sequential, NetConfig::lan(), factory(n)).expect("run");
            let (heavy, light) = (messages_per_entry(&heavy), messages_per_entry(&light));
            // A holder passes the token on after every exit: at least one hop per entry.
            assert!(
                heavy >= 2.0,
                "N = {n}: {heavy} messages per entry under heavy load"
            );
            assert!(light > heavy, "N = {n}: light {light} ≤ heavy {heavy}");
        }
    }

    /// Crashes, including of the holder: never two nodes inside, and after healing every
    /// request is granted (the token is regenerated if it died with its holder).
    #[test]
    fn token_ring_survives_crashed_holders() {
        assert_seeds(
            0..100,
            |seed| {
                let n = 3 + (seed % 5) as u32;
                let mut cfg = SimConfig::new(seed, n);
                cfg.faults = FaultConfig {
                    partition: 0,
                    crash: 1,
                    pause: 0,
                    clog: 0,
                    mean_interval: Duration::from_millis(200),
                    ..FaultConfig::chaos()
                };
                let mut sim = Sim::new(cfg, factory(n));
                sim.set_workload(
                    MutexWorkload::<TokenRing>::new(Load::Heavy, n, 150)
                        .with_retry(Duration::from_secs(1)),
                );
                sim.invariant("mutual exclusion", mutual_exclusion::<TokenRing>);
                sim.invariant("at most one token", |sim: &Sim<TokenRing>| {
                    let holders: Vec<NodeId> = sim
                        .actors()
                        .filter(|(_, a)| a.holds_token())
                        .map(|(n, _)| n)
                        .collect();
                    if holders.len() > 1 {
                        return Err(format!("{holders:?} all hold the token"));
                    }
                    Ok(())
                });
                let healed = Duration::from_secs(3);
                sim.run_liveness(
                    healed,
                    healed + Duration::from_secs(20),
                    every_request_granted::<TokenRing>,
                )
                .map_err(|f| f.to_string())?;
                REGENERATIONS.fetch_add(
                    sim.actors().map(|(_, a)| a.regenerations()).sum::<u64>(),
                    Ordering::Relaxed,
                );
                Ok(())
            },
            replay("token_ring"),
        );
        let regenerations = REGENERATIONS.load(Ordering::Relaxed);
        assert!(
            regenerations > 0,
            "no seed lost its token: the suite tests nothing"
        );
    }

    static REGENERATIONS: AtomicU64 = AtomicU64::new(0);
}
