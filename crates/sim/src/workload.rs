//! Simulated clients: they send requests to nodes, receive replies and keep a history.

use crate::sim::Sim;
use rand_chacha::ChaCha8Rng;
use std::any::Any;
use std::time::Duration;
use synod_core::{Actor, ClientId, NodeId};

/// A set of simulated clients driving a protocol.
///
/// The simulator calls these hooks; the workload answers through [`ClientCtl`]. A workload
/// that checks linearizability records every operation in a `synod_check::History` and
/// marks an operation whose reply never came as `info` (outcome unknown).
pub trait Workload<A: Actor>: Any {
    /// The run starts.
    fn on_start(&mut self, ctl: &mut ClientCtl<'_, A>);
    /// `client` received `msg` from `from`.
    fn on_reply(&mut self, ctl: &mut ClientCtl<'_, A>, client: ClientId, from: NodeId, msg: A::Msg);
    /// A timer set with [`ClientCtl::set_timer`] fired.
    fn on_timer(&mut self, ctl: &mut ClientCtl<'_, A>, client: ClientId, key: u64) {
        let _ = (ctl, client, key);
    }
}

/// What a workload may do: send requests, set timers, read true time and draw randomness
/// from the run's workload stream.
pub struct ClientCtl<'a, A: Actor> {
    pub(crate) sim: &'a mut Sim<A>,
}

impl<A: Actor> ClientCtl<'_, A> {
    /// Send `msg` from `client` to `node` over the simulated network.
    pub fn send(&mut self, client: ClientId, node: NodeId, msg: A::Msg) {
        self.sim.client_send(client, node, msg);
    }

    /// Call [`Workload::on_timer`] with `key` for `client` after `after` of true time.
    pub fn set_timer(&mut self, client: ClientId, key: u64, after: Duration) {
        self.sim.schedule_client_timer(client, key, after);
    }

    /// True simulated time, in nanoseconds: the time line of the history.
    pub fn now_nanos(&self) -> u64 {
        self.sim.now().as_nanos() as u64
    }

    /// The workload's random stream.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.sim.workload_rng
    }

    /// The number of nodes.
    pub fn nodes(&self) -> u32 {
        self.sim.config().nodes
    }

    /// Read-only access to the simulation (for workloads that route to a leader they
    /// learned about from replies, not from peeking; peeking is for checkers).
    pub fn sim(&self) -> &Sim<A> {
        self.sim
    }

    /// Add a note to the trace.
    pub fn note(&mut self, text: &str) {
        self.sim.note(text);
    }
}
