//! The actor contract: handlers take inputs, a [`Ctx`] records the effects.

use crate::ids::{ClientId, Endpoint, NodeId};
use crate::storage::Storage;
use crate::time::Instant;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The random number generator every actor draws from: a ChaCha8 stream derived by the
/// driver from the run seed and the node id, so that a run replays exactly.
pub type ActorRng = ChaCha8Rng;

/// A protocol participant: a pure, deterministic state machine.
///
/// Inputs are the three handlers. Outputs are effects recorded on the [`Ctx`]. A handler
/// never blocks, never does I/O, and reads time and randomness only from the `Ctx`, so the
/// same code runs in the simulator, in unit tests and on the network.
///
/// After a crash the driver builds a fresh value with the same constructor and calls
/// [`Actor::on_start`] again; everything the actor needs back must come from
/// [`Ctx::storage`].
pub trait Actor: Send + 'static {
    /// Every message the protocol exchanges: between nodes, from clients and to clients.
    type Msg: Serialize + DeserializeOwned + Debug + Clone + Send + 'static;
    /// Timer keys. Setting a timer with a key that is already armed re-arms it.
    type Timer: Ord + Hash + Debug + Clone + Send + 'static;

    /// The node starts, for the first time or after a crash.
    fn on_start(&mut self, ctx: &mut Ctx<'_, Self::Msg, Self::Timer>);

    /// A message arrived from a peer or a client.
    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, Self::Msg, Self::Timer>,
        from: Endpoint,
        msg: Self::Msg,
    );

    /// A timer set with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut Ctx<'_, Self::Msg, Self::Timer>, timer: Self::Timer);

    /// Every input of one batch has been handled and the batch's sync comes next. A
    /// driver that does not batch calls it after every input. Work deferred to here is
    /// done once per batch instead of once per input (Raft sends one `AppendEntries` for
    /// a batch of client writes instead of one per write).
    fn on_batch_end(&mut self, _ctx: &mut Ctx<'_, Self::Msg, Self::Timer>) {}
}

/// What a handler asked the driver to do. Drivers apply effects in the order recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<M, T> {
    /// Send to a peer once this step's storage writes are durable.
    Send {
        /// Destination node.
        to: NodeId,
        /// The message.
        msg: M,
    },
    /// Send to a peer now, without waiting for the sync. Only for messages whose meaning
    /// does not depend on this step's writes being durable (Raft §10.2.1: a leader may
    /// replicate entries while it writes them to its own disk).
    SendUnsynced {
        /// Destination node.
        to: NodeId,
        /// The message.
        msg: M,
    },
    /// Answer a client, once this step's storage writes are durable.
    Reply {
        /// The client that sent the request.
        to: ClientId,
        /// The response.
        msg: M,
    },
    /// Arm (or re-arm) the timer `key` to fire after `after` of this node's clock.
    SetTimer {
        /// The timer's key.
        key: T,
        /// Delay from now.
        after: Duration,
    },
    /// Disarm the timer `key`, if armed.
    CancelTimer {
        /// The timer's key.
        key: T,
    },
    /// Run work away from the actor's thread (see [`Background`]).
    Background(Background<M>),
}

/// The work a [`Background`] carries: build the bytes, then turn them into the input that
/// reports completion.
pub type BackgroundWork<M> = (
    Box<dyn FnOnce() -> Vec<u8> + Send>,
    Box<dyn FnOnce(Vec<u8>) -> M + Send>,
);

/// Work a handler hands to its driver so that it does not stall the actor: build a blob
/// (a Raft snapshot, say) from a view the handler froze, store it durably under its name,
/// then deliver the completion message to the actor as a message from its own node.
///
/// The real driver runs it on a blocking thread and writes the blob with its own fsync;
/// the simulator runs it as an event at a later virtual time, so it stays deterministic.
/// A crash before completion loses it: the actor never hears back and must not depend on
/// it, and a blob written before the crash may be left unreferenced. The actor must not
/// write the same blob name itself, since the two writes are not ordered.
pub struct Background<M> {
    blob: Vec<u8>,
    work: Arc<Mutex<Option<BackgroundWork<M>>>>,
}

impl<M> Background<M> {
    /// `build` makes the blob's bytes off the actor's thread; once they are durable under
    /// `blob`, `done` turns them into the message delivered back to the actor.
    pub fn new(
        blob: Vec<u8>,
        build: impl FnOnce() -> Vec<u8> + Send + 'static,
        done: impl FnOnce(Vec<u8>) -> M + Send + 'static,
    ) -> Self {
        Background {
            blob,
            work: Arc::new(Mutex::new(Some((Box::new(build), Box::new(done))))),
        }
    }

    /// The blob name the result is stored under.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// Take the work out to run it. Clones share it: only the first taker gets it.
    pub fn take(&self) -> Option<BackgroundWork<M>> {
        match self.work.lock() {
            Ok(mut work) => work.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// Run it here and now: build, store with `store`, and return the completion message.
    /// For drivers without threads (unit tests, the simulator's event).
    pub fn run(&self, store: impl FnOnce(&[u8], &[u8])) -> Option<M> {
        let (build, done) = self.take()?;
        let bytes = build();
        store(&self.blob, &bytes);
        Some(done(bytes))
    }
}

impl<M> Clone for Background<M> {
    fn clone(&self) -> Self {
        Background {
            blob: self.blob.clone(),
            work: Arc::clone(&self.work),
        }
    }
}

impl<M> PartialEq for Background<M> {
    /// The same task (clones of one), not equal-looking work.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.work, &other.work)
    }
}

impl<M> Eq for Background<M> {}

impl<M> std::fmt::Debug for Background<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("blob", &String::from_utf8_lossy(&self.blob))
            .finish_non_exhaustive()
    }
}

/// The handle a handler gets: it records effects and offers time, randomness and storage.
///
/// A `Ctx` does no I/O. The driver builds one for each handler call, then applies the
/// recorded effects under the group-commit rules (DESIGN.md): held sends and replies leave
/// only after the step's storage writes are durable.
pub struct Ctx<'a, M, T> {
    me: NodeId,
    now: Instant,
    rng: &'a mut ActorRng,
    storage: &'a mut dyn Storage,
    effects: &'a mut Vec<Effect<M, T>>,
}

impl<'a, M, T> Ctx<'a, M, T> {
    /// Build a context. Drivers call this; protocol code only receives one.
    pub fn new(
        me: NodeId,
        now: Instant,
        rng: &'a mut ActorRng,
        storage: &'a mut dyn Storage,
        effects: &'a mut Vec<Effect<M, T>>,
    ) -> Self {
        Ctx {
            me,
            now,
            rng,
            storage,
            effects,
        }
    }

    /// The node this actor runs on.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// This node's clock. Monotonic on one node; not comparable across nodes.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// This node's deterministic random stream.
    pub fn rng(&mut self) -> &mut ActorRng {
        self.rng
    }

    /// Durable state. Reads see writes at once; durability comes at the driver's sync.
    pub fn storage(&mut self) -> &mut dyn Storage {
        self.storage
    }

    /// Send `msg` to `to` after this step's writes are durable.
    pub fn send(&mut self, to: NodeId, msg: M) {
        self.effects.push(Effect::Send { to, msg });
    }

    /// Send `msg` to every node in `to`, after this step's writes are durable.
    pub fn send_all(&mut self, to: impl IntoIterator<Item = NodeId>, msg: M)
    where
        M: Clone,
    {
        for node in to {
            self.send(node, msg.clone());
        }
    }

    /// Send `msg` at once, before this step's writes are durable. See
    /// [`Effect::SendUnsynced`] for when that is sound.
    pub fn send_unsynced(&mut self, to: NodeId, msg: M) {
        self.effects.push(Effect::SendUnsynced { to, msg });
    }

    /// Answer client `to` after this step's writes are durable.
    pub fn reply(&mut self, to: ClientId, msg: M) {
        self.effects.push(Effect::Reply { to, msg });
    }

    /// Arm timer `key` to fire `after` from now, replacing any timer with the same key.
    pub fn set_timer(&mut self, key: T, after: Duration) {
        self.effects.push(Effect::SetTimer { key, after });
    }

    /// Disarm timer `key`.
    pub fn cancel_timer(&mut self, key: T) {
        self.effects.push(Effect::CancelTimer { key });
    }

    /// Run `task` away from the actor's thread; its completion comes back as a message
    /// from this node.
    pub fn background(&mut self, task: Background<M>) {
        self.effects.push(Effect::Background(task));
    }

    /// The effects recorded so far in this step.
    pub fn effects(&self) -> &[Effect<M, T>] {
        self.effects
    }
}
