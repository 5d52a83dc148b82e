//! A message-passing run that stamps every event with both logical clocks, so that a tool
//! can show where Lamport and vector timestamps agree with happens-before and where only
//! the vector clock can tell concurrency apart.
//!
//! Each node performs `events_per_node` events, one per timer tick: with probability
//! `send_probability` it sends to a random peer, otherwise it does a local event. Every
//! receipt is an event too. Nothing is persisted: this demonstrates clocks, not recovery.

use super::{Causality, LamportClock, LamportTimestamp, VectorClock};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use synod_core::{Actor, Ctx, Endpoint, NodeId};

/// Identifies an event: the node and its position in that node's history (from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId {
    /// Where the event happened.
    pub node: NodeId,
    /// Its position in the node's sequence of events.
    pub seq: u32,
}

/// What kind of event it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A local step.
    Local,
    /// A send to `to`.
    Send {
        /// Destination.
        to: NodeId,
    },
    /// Receipt of the message sent by event `send`.
    Receive {
        /// The send event that this receipt matches.
        send: EventId,
    },
}

/// One recorded event with both of its timestamps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampedEvent {
    /// Which event.
    pub id: EventId,
    /// What happened.
    pub kind: EventKind,
    /// Its Lamport timestamp.
    pub lamport: LamportTimestamp,
    /// Its vector timestamp.
    pub vector: VectorClock,
}

/// Messages of [`CausalityDemo`]: one application message carrying both timestamps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoMsg {
    /// The send event.
    pub send: EventId,
    /// The sender's Lamport timestamp at the send.
    pub lamport: LamportTimestamp,
    /// The sender's vector timestamp at the send.
    pub vector: VectorClock,
}

/// The timer of [`CausalityDemo`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextEvent;

/// A node of the causality demo. Read [`CausalityDemo::events`] after the run.
#[derive(Debug)]
pub struct CausalityDemo {
    nodes: u32,
    events_per_node: u32,
    send_probability: f64,
    steps: u32,
    lamport: LamportClock,
    vector: VectorClock,
    events: Vec<StampedEvent>,
}

impl CausalityDemo {
    /// Node `me` of `nodes`, doing `events_per_node` local or send events.
    pub fn new(me: NodeId, nodes: u32, events_per_node: u32, send_probability: f64) -> Self {
        CausalityDemo {
            nodes,
            events_per_node,
            send_probability,
            steps: 0,
            lamport: LamportClock::new(me),
            vector: VectorClock::new(),
            events: Vec::new(),
        }
    }

    /// Every event on this node, in order.
    pub fn events(&self) -> &[StampedEvent] {
        &self.events
    }

    fn record(&mut self, node: NodeId, kind: EventKind, lamport: LamportTimestamp) -> EventId {
        let id = EventId {
            node,
            seq: self.events.len() as u32,
        };
        self.events.push(StampedEvent {
            id,
            kind,
            lamport,
            vector: self.vector.clone(),
        });
        id
    }

    fn schedule(&self, ctx: &mut Ctx<'_, DemoMsg, NextEvent>) {
        let jitter = ctx.rng().gen_range(1..=10);
        ctx.set_timer(NextEvent, Duration::from_millis(jitter));
    }
}

impl Actor for CausalityDemo {
    type Msg = DemoMsg;
    type Timer = NextEvent;

    fn on_start(&mut self, ctx: &mut Ctx<'_, DemoMsg, NextEvent>) {
        self.schedule(ctx);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, DemoMsg, NextEvent>, from: Endpoint, msg: DemoMsg) {
        if !matches!(from, Endpoint::Node(_)) {
            return;
        }
        let me = ctx.me();
        let lamport = self.lamport.observe(msg.lamport);
        self.vector.observe(me, &msg.vector);
        self.record(me, EventKind::Receive { send: msg.send }, lamport);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, DemoMsg, NextEvent>, _timer: NextEvent) {
        if self.steps >= self.events_per_node {
            return;
        }
        self.steps += 1;
        let me = ctx.me();
        let lamport = self.lamport.tick();
        self.vector.increment(me);
        if self.nodes > 1 && ctx.rng().gen_bool(self.send_probability) {
            let pick = ctx.rng().gen_range(0..self.nodes - 1);
            let to = NodeId(if pick >= me.0 { pick + 1 } else { pick });
            let send = self.record(me, EventKind::Send { to }, lamport);
            let vector = self.vector.clone();
            ctx.send(
                to,
                DemoMsg {
                    send,
                    lamport,
                    vector,
                },
            );
        } else {
            self.record(me, EventKind::Local, lamport);
        }
        self.schedule(ctx);
    }
}

/// The true happens-before relation of a finished run, computed from the events alone
/// (program order plus send→receive edges, closed transitively), independent of any clock.
#[derive(Debug)]
pub struct HappensBefore {
    index: std::collections::BTreeMap<EventId, usize>,
    /// `reach[i]` holds every event index reachable from event `i`.
    reach: Vec<Vec<bool>>,
}

impl HappensBefore {
    /// Build the relation over `events` (all nodes' events, in any order).
    pub fn new(events: &[StampedEvent]) -> Self {
        let index: std::collections::BTreeMap<EventId, usize> =
            events.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        let n = events.len();
        let mut edges = vec![Vec::new(); n];
        for (i, e) in events.iter().enumerate() {
            let next = EventId {
                node: e.id.node,
                seq: e.id.seq + 1,
            };
            if let Some(&j) = index.get(&next) {
                edges[i].push(j);
            }
            if let EventKind::Receive { send } = &e.kind {
                if let Some(&s) = index.get(send) {
                    edges[s].push(i);
                }
            }
        }
        let mut reach = vec![vec![false; n]; n];
        for (start, row) in reach.iter_mut().enumerate() {
            let mut stack = edges[start].clone();
            while let Some(j) = stack.pop() {
                if !row[j] {
                    row[j] = true;
                    stack.extend(edges[j].iter().copied());
                }
            }
        }
        HappensBefore { index, reach }
    }

    /// How `a` relates to `b`: `Before` if a → b, `After` if b → a, `Equal` if the same
    /// event, otherwise `Concurrent`. `None` if either event is unknown.
    pub fn relation(&self, a: EventId, b: EventId) -> Option<Causality> {
        let (i, j) = (*self.index.get(&a)?, *self.index.get(&b)?);
        Some(if i == j {
            Causality::Equal
        } else if self.reach[i][j] {
            Causality::Before
        } else if self.reach[j][i] {
            Causality::After
        } else {
            Causality::Concurrent
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_sim::{NetConfig, Sim, SimConfig};

    fn run(seed: u64) -> Vec<StampedEvent> {
        let mut cfg = SimConfig::new(seed, 4);
        cfg.net = NetConfig::lossy();
        let mut sim = Sim::new(cfg, |me| CausalityDemo::new(me, 4, 30, 0.5));
        sim.run_for(Duration::from_secs(2)).expect("no invariants");
        sim.actors()
            .flat_map(|(_, a)| a.events().iter().cloned())
            .collect()
    }

    #[test]
    fn vector_clocks_characterise_happens_before_in_simulated_runs() {
        for seed in 0..10 {
            let events = run(seed);
            assert!(
                events.len() >= 120,
                "seed {seed}: every node did its events"
            );
            let hb = HappensBefore::new(&events);
            for a in &events {
                for b in &events {
                    let truth = hb.relation(a.id, b.id).expect("known events");
                    assert_eq!(
                        a.vector.compare(&b.vector),
                        truth,
                        "seed {seed}: {:?} vs {:?}",
                        a.id,
                        b.id
                    );
                    if truth == Causality::Before {
                        assert!(a.lamport < b.lamport, "clock condition, seed {seed}");
                    }
                }
            }
        }
    }
}
