//! Small actors that exercise the simulator itself: its throughput, its determinism and
//! its group-commit promise. Real protocols live in `synod-protocols`.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use synod_core::{Actor, Ctx, Endpoint, NodeId, StorageExt};

/// Messages of [`PingPong`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PingPongMsg {
    /// A ball with its hop count.
    Ball(u64),
}

/// Every node keeps `balls` balls in play: each ball received is sent on to a random
/// peer. With no storage writes, every send leaves at once, so this measures the raw event
/// loop.
#[derive(Debug)]
pub struct PingPong {
    nodes: u32,
    balls: u32,
    /// Balls this node received.
    pub received: u64,
}

impl PingPong {
    /// A node of a `nodes`-node game that serves `balls` balls at start.
    pub fn new(nodes: u32, balls: u32) -> Self {
        PingPong {
            nodes,
            balls,
            received: 0,
        }
    }

    fn random_peer(&self, ctx: &mut Ctx<'_, PingPongMsg, ()>) -> NodeId {
        use rand::Rng;
        let me = ctx.me().0;
        let pick = ctx.rng().gen_range(0..self.nodes.saturating_sub(1).max(1));
        NodeId(if pick >= me { pick + 1 } else { pick } % self.nodes.max(1))
    }
}

impl Actor for PingPong {
    type Msg = PingPongMsg;
    type Timer = ();

    fn on_start(&mut self, ctx: &mut Ctx<'_, PingPongMsg, ()>) {
        for _ in 0..self.balls {
            let to = self.random_peer(ctx);
            ctx.send(to, PingPongMsg::Ball(0));
        }
    }

    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, PingPongMsg, ()>,
        _from: Endpoint,
        msg: PingPongMsg,
    ) {
        let PingPongMsg::Ball(hops) = msg;
        self.received += 1;
        let to = self.random_peer(ctx);
        ctx.send(to, PingPongMsg::Ball(hops + 1));
    }

    fn on_timer(&mut self, _ctx: &mut Ctx<'_, PingPongMsg, ()>, _timer: ()) {}
}

/// Messages of [`DurableCounter`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterMsg {
    /// "My counter has reached this value."
    Reached(u64),
}

/// Timer of [`DurableCounter`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick;

/// Each node bumps a durable counter on a timer and tells every peer the new value. Peers
/// remember the highest value heard from each node.
///
/// If the announcement could leave before the write is durable, a crash could take the
/// counter below a value a peer has already heard: that is the bug group commit prevents.
/// With `unsynced = true` the actor announces with `send_unsynced`, so tests can show the
/// checker catching exactly that.
#[derive(Debug)]
pub struct DurableCounter {
    nodes: u32,
    unsynced: bool,
    /// The counter, as last read or written.
    pub value: u64,
    /// The highest value heard from each node.
    pub heard: Vec<u64>,
}

impl DurableCounter {
    /// A node of a `nodes`-node group.
    pub fn new(nodes: u32, unsynced: bool) -> Self {
        DurableCounter {
            nodes,
            unsynced,
            value: 0,
            heard: vec![0; nodes as usize],
        }
    }
}

impl Actor for DurableCounter {
    type Msg = CounterMsg;
    type Timer = Tick;

    fn on_start(&mut self, ctx: &mut Ctx<'_, CounterMsg, Tick>) {
        self.value = ctx
            .storage()
            .get_value(b"counter")
            .ok()
            .flatten()
            .unwrap_or(0);
        ctx.set_timer(Tick, Duration::from_millis(1));
    }

    fn on_message(
        &mut self,
        _ctx: &mut Ctx<'_, CounterMsg, Tick>,
        from: Endpoint,
        msg: CounterMsg,
    ) {
        let (Endpoint::Node(from), CounterMsg::Reached(v)) = (from, msg) else {
            return;
        };
        if let Some(h) = self.heard.get_mut(from.index()) {
            *h = (*h).max(v);
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, CounterMsg, Tick>, _timer: Tick) {
        self.value += 1;
        ctx.storage().put_value(b"counter", &self.value);
        let me = ctx.me();
        for peer in (0..self.nodes).map(NodeId).filter(|&p| p != me) {
            if self.unsynced {
                ctx.send_unsynced(peer, CounterMsg::Reached(self.value));
            } else {
                ctx.send(peer, CounterMsg::Reached(self.value));
            }
        }
        ctx.set_timer(Tick, Duration::from_millis(1));
    }
}

/// The invariant [`DurableCounter`] exists for: the counter a node holds in storage never
/// falls below a value a peer has heard from it.
pub fn no_peer_heard_undurable_value(sim: &crate::Sim<DurableCounter>) -> Result<(), String> {
    for node in sim.node_ids() {
        let stored: u64 = sim
            .storage(node)
            .and_then(|s| s.get_value(b"counter").ok().flatten())
            .unwrap_or(0);
        for (peer, actor) in sim.actors() {
            let heard = actor.heard.get(node.index()).copied().unwrap_or(0);
            if heard > stored {
                return Err(format!(
                    "{peer} heard {heard} from {node}, whose storage holds only {stored}"
                ));
            }
        }
    }
    Ok(())
}
