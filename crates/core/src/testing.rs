//! Drive one actor by hand in unit tests and assert the effects it records.
//!
//! This is the first level of the testing pyramid (DESIGN.md): no network, no scheduler,
//! just one handler call at a time and the effects it returned.

use crate::actor::{Actor, ActorRng, Ctx, Effect};
use crate::ids::{Endpoint, NodeId};
use crate::storage::MemStorage;
use crate::time::Instant;
use rand::SeedableRng;
use std::time::Duration;

/// The effects of one actor's handler call.
pub type Effects<A> = Vec<Effect<<A as Actor>::Msg, <A as Actor>::Timer>>;

/// One actor with its own clock, random stream and in-memory storage.
pub struct TestNode<A: Actor> {
    /// The actor under test. Inspect its state freely.
    pub actor: A,
    /// Its storage. Call [`MemStorage::sync`] or [`MemStorage::crash`] to model the disk.
    pub storage: MemStorage,
    me: NodeId,
    now: Instant,
    rng: ActorRng,
}

impl<A: Actor> TestNode<A> {
    /// A node `me` running `actor`, with its clock at zero and a random stream from `seed`.
    pub fn new(me: NodeId, actor: A, seed: u64) -> Self {
        TestNode {
            actor,
            storage: MemStorage::new(),
            me,
            now: Instant::ZERO,
            rng: ActorRng::seed_from_u64(seed),
        }
    }

    /// The node's clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Move the node's clock forward.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    fn step(&mut self, f: impl FnOnce(&mut A, &mut Ctx<'_, A::Msg, A::Timer>)) -> Effects<A> {
        let mut effects = Vec::new();
        let mut ctx = Ctx::new(
            self.me,
            self.now,
            &mut self.rng,
            &mut self.storage,
            &mut effects,
        );
        f(&mut self.actor, &mut ctx);
        // Every step is a batch of one input.
        self.actor.on_batch_end(&mut ctx);
        effects
    }

    /// Call [`Actor::on_start`].
    pub fn start(&mut self) -> Effects<A> {
        self.step(|a, ctx| a.on_start(ctx))
    }

    /// Call [`Actor::on_message`].
    pub fn deliver(&mut self, from: impl Into<Endpoint>, msg: A::Msg) -> Effects<A> {
        let from = from.into();
        self.step(|a, ctx| a.on_message(ctx, from, msg))
    }

    /// Deliver several messages as one batch: [`Actor::on_batch_end`] runs once, after
    /// the last (as a driver does for the inputs it drained from the inbox together).
    pub fn deliver_batch(&mut self, inputs: Vec<(Endpoint, A::Msg)>) -> Effects<A> {
        self.step(|a, ctx| {
            for (from, msg) in inputs {
                a.on_message(ctx, from, msg);
            }
        })
    }

    /// Call [`Actor::on_timer`].
    pub fn fire(&mut self, timer: A::Timer) -> Effects<A> {
        self.step(|a, ctx| a.on_timer(ctx, timer))
    }

    /// Run the [`Effect::Background`] tasks among `effects` to completion: build each
    /// blob, store it as durable, and deliver its completion message. Returns the effects
    /// of those deliveries (which may hold more background work).
    pub fn finish_background(&mut self, effects: &Effects<A>) -> Effects<A> {
        let mut out = Vec::new();
        for effect in effects {
            if let Effect::Background(task) = effect {
                let storage = &mut self.storage;
                if let Some(msg) = task.run(|name, bytes| storage.put_durable(name, bytes)) {
                    out.extend(self.deliver(self.me, msg));
                }
            }
        }
        out
    }

    /// Crash the node keeping only synced storage, rebuild the actor with `fresh`, and call
    /// [`Actor::on_start`] on it.
    pub fn crash_and_restart(&mut self, fresh: A) -> Effects<A> {
        self.storage.crash(0);
        self.actor = fresh;
        self.start()
    }
}

/// The messages sent (synced or not) among `effects`, with their destinations.
pub fn sent<M: Clone, T>(effects: &[Effect<M, T>]) -> Vec<(NodeId, M)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { to, msg } | Effect::SendUnsynced { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}
