//! # synod-core: the contract every synod protocol is written against
//!
//! This crate does no networking, reads no OS clock and draws no OS randomness. It defines
//! what a protocol is, so that one implementation runs unchanged in three places: the
//! deterministic simulator (`synod-sim`), unit tests ([`testing::TestNode`]) and the real
//! TCP cluster (`synod-runtime`).
//!
//! - [`NodeId`], [`ClientId`] and [`Endpoint`] name who talks.
//! - [`Actor`] is a protocol participant. Its inputs are three handlers:
//!   [`Actor::on_start`] (also after a crash), [`Actor::on_message`] and
//!   [`Actor::on_timer`].
//! - [`Ctx`] is what a handler gets. It *records* [`Effect`]s (sends, replies, timers) and
//!   offers [`Ctx::now`], [`Ctx::rng`] and [`Ctx::storage`].
//! - [`Storage`] is durable state: a small key-value space and one log per actor. Writes
//!   become durable at the driver's sync; held sends and replies leave only after it
//!   (group commit, DESIGN.md).
//! - [`codec`] encodes messages and records with postcard and decodes them with a bound.
//!
//! ## A worked example
//!
//! A replicated counter: clients ask any node to increment, the node persists the new
//! value, tells its peers, and replies once the value is durable. A timer re-announces the
//! value so that a peer that missed a message catches up.
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use synod_core::{Actor, ClientId, Ctx, Effect, Endpoint, NodeId, StorageExt};
//! use synod_core::testing::TestNode;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
//! enum CounterMsg {
//!     Increment,         // client → node
//!     Value(u64),        // node → client, and node → node
//! }
//!
//! #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
//! enum CounterTimer { Announce }
//!
//! struct Counter { peers: Vec<NodeId>, value: u64 }
//!
//! impl Actor for Counter {
//!     type Msg = CounterMsg;
//!     type Timer = CounterTimer;
//!
//!     fn on_start(&mut self, ctx: &mut Ctx<'_, CounterMsg, CounterTimer>) {
//!         // Rebuild state from storage: this also runs after a crash.
//!         self.value = ctx.storage().get_value(b"value").ok().flatten().unwrap_or(0);
//!         ctx.set_timer(CounterTimer::Announce, Duration::from_millis(100));
//!     }
//!
//!     fn on_message(&mut self, ctx: &mut Ctx<'_, CounterMsg, CounterTimer>,
//!                   from: Endpoint, msg: CounterMsg) {
//!         match (from, msg) {
//!             (Endpoint::Client(client), CounterMsg::Increment) => {
//!                 self.value += 1;
//!                 ctx.storage().put_value(b"value", &self.value);
//!                 ctx.send_all(self.peers.clone(), CounterMsg::Value(self.value));
//!                 // Held until the write above is durable.
//!                 ctx.reply(client, CounterMsg::Value(self.value));
//!             }
//!             (Endpoint::Node(_), CounterMsg::Value(v)) if v > self.value => {
//!                 self.value = v;
//!                 ctx.storage().put_value(b"value", &self.value);
//!             }
//!             _ => {}
//!         }
//!     }
//!
//!     fn on_timer(&mut self, ctx: &mut Ctx<'_, CounterMsg, CounterTimer>, _t: CounterTimer) {
//!         ctx.send_all(self.peers.clone(), CounterMsg::Value(self.value));
//!         ctx.set_timer(CounterTimer::Announce, Duration::from_millis(100));
//!     }
//! }
//!
//! let mut node = TestNode::new(NodeId(0), Counter { peers: vec![NodeId(1)], value: 0 }, 7);
//! node.start();
//! let effects = node.deliver(ClientId(9), CounterMsg::Increment);
//! assert!(effects.contains(&Effect::Reply { to: ClientId(9), msg: CounterMsg::Value(1) }));
//! node.storage.sync();
//! node.crash_and_restart(Counter { peers: vec![NodeId(1)], value: 0 });
//! assert_eq!(node.actor.value, 1, "a synced write survives the crash");
//! ```
#![warn(missing_docs)]

mod actor;
pub mod codec;
mod ids;
mod storage;
pub mod testing;
mod time;

pub use actor::{Actor, ActorRng, Background, BackgroundWork, Ctx, Effect};
pub use codec::CodecError;
pub use ids::{ClientId, Endpoint, NodeId};
pub use storage::{LogIndex, MemStorage, Storage, StorageExt};
pub use time::{duration_nanos, Instant};
