//! The real driver: one tokio task per actor, running the group-commit loop of DESIGN.md.
//!
//! 1. Wait for an input (a peer message, a client request) or the next timer, then drain
//!    more inputs without waiting, up to [`DriverConfig::max_batch`].
//! 2. Run the handlers in order. Their storage writes accumulate in the storage's buffer.
//! 3. Arm timers. `send_unsynced` messages leave at once.
//! 4. One write and one fdatasync for the whole batch ([`SyncStorage::sync`]). A small
//!    batch may first gather more inputs into the same sync ([`Gather`], off by default).
//! 5. Release the held sends and replies, in order.
//! 6. If the sync fails, the actor stops and reports [`DriverError::Storage`]; the node
//!    must then stop. It never logs the error and carries on: after a failed fsync the
//!    kernel may have dropped the dirty pages, so a retry can "succeed" on lost data
//!    (the PostgreSQL "fsyncgate" discussion, 2018).
//!
//! While one batch syncs, new inputs queue up in the bounded inbox, so the next batch is
//! larger: throughput grows with load while each batch still pays for one fsync.

use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use synod_core::{
    codec, Actor, ActorRng, ClientId, Ctx, Effect, Endpoint, Instant, NodeId, Storage,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Storage the driver can make durable: the actor-facing [`Storage`] plus the batch sync.
pub trait SyncStorage: Storage + Send {
    /// Write every buffered change and fdatasync it; report whether there was anything to
    /// write. The driver calls it after every batch, even one that wrote nothing, so that
    /// a store that failed on a read or a refused write stops the node before the batch's
    /// output leaves. An error is fatal for the node.
    fn sync(&mut self) -> std::io::Result<bool>;

    /// Whether [`SyncStorage::sync`] may block on the disk now. When it may not (a batch
    /// that wrote nothing), the driver calls it on the worker thread directly instead of
    /// inside `block_in_place`, which hands the worker's run queue to another thread: two
    /// or more context switches per batch, paid even by a batch of acknowledgements.
    fn sync_may_block(&self) -> bool {
        true
    }

    /// A writer that makes a blob durable from another thread, for
    /// [`Effect::Background`] work; `None` if only the actor's thread can write.
    fn blob_writer(&self) -> Option<BlobWriter> {
        None
    }

    /// Make a blob durable at once, on the actor's thread: background work's blob, for a
    /// store without a [`SyncStorage::blob_writer`]. By default: write it and sync (which
    /// makes the batch so far durable early, never late).
    fn put_blob_durably(&mut self, name: &[u8], data: &[u8]) -> std::io::Result<()> {
        self.put_blob(name, data);
        self.sync().map(|_| ())
    }
}

/// `SYNOD_SYNC_ALWAYS_BLOCKING=1` puts every batch's sync inside `block_in_place`, as
/// before [`SyncStorage::sync_may_block`]: a knob for A/B runs of one binary
/// (`bench/etcd-cpu-per-write.sh`), read once.
fn always_block_in_place() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::knobs::flag("SYNOD_SYNC_ALWAYS_BLOCKING"))
}

/// `SYNOD_GROUP_COMMIT_US=N`: before syncing a batch that wrote something, wait N µs
/// (tokio's timer rounds up to 1 ms) and take what arrived meanwhile into the same sync.
/// An experiment for A/B runs (`bench/etcd-cpu-per-write.sh`): under `check perf
/// --load=l` a leader fsyncs every 3.5 writes (docs/etcdperf.md, session 8b). Read once.
fn group_commit_wait() -> Option<std::time::Duration> {
    static WAIT: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *WAIT.get_or_init(|| {
        let us: u64 = crate::knobs::number("SYNOD_GROUP_COMMIT_US")?;
        (us > 0).then(|| std::time::Duration::from_micros(us))
    })
}

/// How a batch that wrote something gathers more writes before its fdatasync, so that one
/// sync covers more of them (under `check perf --load=l` a leader synced every 3.5 writes:
/// each fdatasync returns in ~0.6 ms and the next batch is what arrived meanwhile).
/// Only a batch of fewer than [`GATHER_BELOW`] inputs gathers. Whatever it gathers joins
/// the same sync, so held output still leaves only after its writes are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gather {
    /// Sync at once.
    Off,
    /// Inside the `block_in_place` that the sync needs anyway, sleep this long (a
    /// high-resolution sleep, not tokio's millisecond timer), then take what arrived into
    /// the same sync.
    Linger(Duration),
    /// Up to this many times, yield to the runtime (which polls the sockets without
    /// parking) and take what arrived; stop at the first round that brings nothing.
    Yields(u32),
}

/// Below this many inputs a batch gathers more (see [`Gather`]); a larger one syncs at once.
pub const GATHER_BELOW: usize = 64;

impl Gather {
    /// From the environment, for A/B runs of one binary (docs/etcdperf.md, session 9):
    /// `SYNOD_GROUP_COMMIT_LINGER_US=N` or `SYNOD_GROUP_COMMIT_YIELDS=K`; otherwise off.
    pub fn from_env() -> Gather {
        let number = |name: &str| crate::knobs::number::<u64>(name).filter(|&n| n > 0);
        if let Some(us) = number("SYNOD_GROUP_COMMIT_LINGER_US") {
            Gather::Linger(Duration::from_micros(us))
        } else if let Some(k) = number("SYNOD_GROUP_COMMIT_YIELDS") {
            Gather::Yields(u32::try_from(k).unwrap_or(u32::MAX))
        } else {
            Gather::Off
        }
    }
}

/// Move what `inbox` holds now into `batch`, up to `max` inputs in all, without waiting.
fn fill_from<M>(inbox: &mut mpsc::Receiver<M>, batch: &mut Vec<M>, max: usize) {
    while batch.len() < max {
        match inbox.try_recv() {
            Ok(cmd) => batch.push(cmd),
            Err(_) => break,
        }
    }
}

/// Writes a blob durably (fsynced) from any thread.
pub type BlobWriter = Arc<dyn Fn(&[u8], &[u8]) -> std::io::Result<()> + Send + Sync>;

impl SyncStorage for synod_core::MemStorage {
    fn sync(&mut self) -> std::io::Result<bool> {
        let wrote = self.pending_writes() > 0;
        synod_core::MemStorage::sync(self);
        Ok(wrote)
    }

    fn put_blob_durably(&mut self, name: &[u8], data: &[u8]) -> std::io::Result<()> {
        self.put_durable(name, data);
        Ok(())
    }
}

/// Where an actor's peer messages go: the transport, or a loopback in tests.
///
/// `send` must not block. A full queue to a slow or dead peer drops the message (and
/// counts it): every protocol tolerates loss, and waiting would let one slow peer stall
/// the actor for all the others (head-of-line blocking).
pub trait Outbox: Send + Sync + 'static {
    /// Hand an encoded message for `service` on node `to` to the network.
    fn send(&self, to: NodeId, service: u16, payload: bytes::Bytes);
}

/// Why an actor task stopped, or a call failed.
#[derive(Debug, Error)]
pub enum DriverError {
    /// A storage sync failed; the node must stop.
    #[error("storage sync failed for service {service}: {source}")]
    Storage {
        /// The service whose storage failed.
        service: u16,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The actor task is gone (stopped or crashed).
    #[error("the actor for service {0} has stopped")]
    Stopped(u16),
    /// No reply came within the deadline.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

/// Tuning for one actor task.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Most inputs taken into one batch (one sync).
    pub max_batch: usize,
    /// Capacity of the actor's inbox; senders wait when it is full (backpressure).
    pub inbox_capacity: usize,
    /// How a small batch with writes gathers more before its sync.
    pub gather: Gather,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            max_batch: 1024,
            inbox_capacity: 8192,
            gather: Gather::from_env(),
        }
    }
}

/// A probe run on the actor's state between batches.
type Probe = Box<dyn FnOnce(&dyn std::any::Any) + Send>;

enum Command<M> {
    Peer {
        from: NodeId,
        msg: M,
    },
    Client {
        client: ClientId,
        msg: M,
    },
    OpenSession {
        client: ClientId,
        replies: mpsc::UnboundedSender<M>,
    },
    CloseSession {
        client: ClientId,
    },
    /// One request whose first reply goes to `reply`: a session that closes itself, so a
    /// call costs one inbox command instead of open, request and close.
    Call {
        client: ClientId,
        msg: M,
        reply: oneshot::Sender<M>,
    },
    Inspect(Probe),
    /// Background work finished: its bytes, whether they are durable already (or the
    /// error that stops the node), and the completion message to build.
    BackgroundDone {
        blob: Vec<u8>,
        outcome: std::io::Result<(Vec<u8>, bool)>,
        done: Box<dyn FnOnce(Vec<u8>) -> M + Send>,
    },
}

/// A handle to a running actor: deliver peer messages, make client calls, inspect state.
pub struct ActorHandle<A: Actor> {
    service: u16,
    tx: mpsc::Sender<Command<A::Msg>>,
    next_client: Arc<AtomicU64>,
}

impl<A: Actor> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        ActorHandle {
            service: self.service,
            tx: self.tx.clone(),
            next_client: Arc::clone(&self.next_client),
        }
    }
}

/// A client session: one client id whose replies all arrive on `replies`.
pub struct ClientSession<A: Actor> {
    /// The session's client id.
    pub client: ClientId,
    /// Replies from the actor, in order.
    pub replies: mpsc::UnboundedReceiver<A::Msg>,
    handle: ActorHandle<A>,
}

impl<A: Actor> ClientSession<A> {
    /// Send a request as this client. Waits while the actor's inbox is full.
    pub async fn send(&self, msg: A::Msg) -> Result<(), DriverError> {
        self.handle
            .tx
            .send(Command::Client {
                client: self.client,
                msg,
            })
            .await
            .map_err(|_| DriverError::Stopped(self.handle.service))
    }
}

impl<A: Actor> Drop for ClientSession<A> {
    fn drop(&mut self) {
        let _ = self.handle.tx.try_send(Command::CloseSession {
            client: self.client,
        });
    }
}

impl<A: Actor> ActorHandle<A> {
    /// The service id this actor is addressed by.
    pub fn service(&self) -> u16 {
        self.service
    }

    /// Deliver a message from peer `from`. Waits while the inbox is full.
    pub async fn deliver(&self, from: NodeId, msg: A::Msg) -> Result<(), DriverError> {
        self.tx
            .send(Command::Peer { from, msg })
            .await
            .map_err(|_| DriverError::Stopped(self.service))
    }

    /// Open a client session with a fresh client id.
    pub async fn session(&self) -> Result<ClientSession<A>, DriverError> {
        let client = self.next_client_id();
        let (replies_tx, replies) = mpsc::unbounded_channel();
        self.tx
            .send(Command::OpenSession {
                client,
                replies: replies_tx,
            })
            .await
            .map_err(|_| DriverError::Stopped(self.service))?;
        Ok(ClientSession {
            client,
            replies,
            handle: self.clone(),
        })
    }

    /// Send one request and wait for the first reply, at most `timeout`.
    pub async fn call(&self, msg: A::Msg, timeout: Duration) -> Result<A::Msg, DriverError> {
        let client = self.next_client_id();
        let (reply, answer) = oneshot::channel();
        let send = self.tx.send(Command::Call { client, msg, reply });
        // The timeout covers the wait for inbox room too: a full inbox is a slow actor.
        match tokio::time::timeout(timeout, async {
            send.await.map_err(|_| DriverError::Stopped(self.service))?;
            answer.await.map_err(|_| DriverError::Stopped(self.service))
        })
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(DriverError::Timeout(timeout)),
        }
    }

    fn next_client_id(&self) -> ClientId {
        // Client ids are unique per node process; the high bit marks driver-issued ids.
        ClientId((1 << 63) | self.next_client.fetch_add(1, Ordering::Relaxed))
    }

    /// Run `f` on the actor's state between batches and return its result.
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&A) -> R + Send + 'static,
    ) -> Result<R, DriverError> {
        let (tx, rx) = oneshot::channel();
        let probe = move |any: &dyn std::any::Any| {
            if let Some(actor) = any.downcast_ref::<A>() {
                let _ = tx.send(f(actor));
            }
        };
        self.tx
            .send(Command::Inspect(Box::new(probe)))
            .await
            .map_err(|_| DriverError::Stopped(self.service))?;
        rx.await.map_err(|_| DriverError::Stopped(self.service))
    }
}

/// Counters for one actor task, shared with the metrics exporter.
#[derive(Debug, Default)]
pub struct ActorStats {
    /// Batches run.
    pub batches: AtomicU64,
    /// Inputs handled (messages, requests, timers).
    pub inputs: AtomicU64,
    /// Storage syncs done.
    pub syncs: AtomicU64,
    /// Total nanoseconds spent in syncs.
    pub sync_nanos: AtomicU64,
    /// Peer messages that failed to decode and were dropped.
    pub bad_messages: AtomicU64,
    /// Inputs waiting in the inbox at the start of the last batch.
    pub inbox_depth: AtomicU64,
    /// Peer messages dropped before the inbox because this actor was too far behind.
    pub overflow_dropped: AtomicU64,
}

/// The clock behind `Ctx::now`: CLOCK_MONOTONIC, in nanoseconds since boot. It never
/// goes back, and every process on one host shares its origin, so clock-sync offsets
/// between local nodes are real measurements near zero rather than start-time gaps.
struct Clock;

impl Clock {
    fn now(&self) -> Instant {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through a valid pointer.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        if rc != 0 {
            return Instant::ZERO;
        }
        let nanos = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
        Instant(u64::try_from(nanos).unwrap_or(0))
    }

    fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        let now = self.now();
        let base = tokio::time::Instant::now();
        if at >= now {
            base + Duration::from_nanos(at.0 - now.0)
        } else {
            base
        }
    }
}

/// Held output, released after the batch's sync.
enum Held<M> {
    Send(NodeId, M),
    Reply(ClientId, M),
}

/// Where and how an actor runs.
#[derive(Debug, Clone)]
pub struct ActorPlacement {
    /// The node this process is.
    pub me: NodeId,
    /// The service id the actor is addressed by on every node.
    pub service: u16,
    /// Seed of the actor's random stream (mixed with the node and service ids).
    pub seed: u64,
    /// Batching and inbox tuning.
    pub config: DriverConfig,
}

/// Start `actor` as described by `placement`. Returns its handle and the task's join
/// handle; the task ends with an error only if storage failed.
pub fn spawn_actor<A: Actor>(
    placement: ActorPlacement,
    actor: A,
    storage: Box<dyn SyncStorage>,
    outbox: Arc<dyn Outbox>,
    stats: Arc<ActorStats>,
) -> (
    ActorHandle<A>,
    tokio::task::JoinHandle<Result<(), DriverError>>,
) {
    let ActorPlacement {
        me,
        service,
        seed,
        config,
    } = placement;
    let (tx, rx) = mpsc::channel(config.inbox_capacity.max(1));
    let handle = ActorHandle {
        service,
        tx,
        next_client: Arc::new(AtomicU64::new(0)),
    };
    let mut rng = ActorRng::seed_from_u64(seed);
    rng.set_stream(u64::from(me.0) << 16 | u64::from(service));
    let task = ActorTask {
        me,
        service,
        own_inbox: handle.tx.downgrade(),
        failure: None,
        actor,
        storage,
        rng,
        clock: Clock,
        timers: BTreeMap::new(),
        outbox,
        sessions: HashMap::new(),
        calls: HashMap::new(),
        held: Vec::new(),
        loopback: Vec::new(),
        probes: Vec::new(),
        effects: Vec::new(),
        config,
        stats,
    };
    let join = tokio::spawn(task.run(rx));
    (handle, join)
}

struct ActorTask<A: Actor> {
    me: NodeId,
    service: u16,
    /// Where background work reports back; weak, so the task still ends when every
    /// handle is dropped.
    own_inbox: mpsc::WeakSender<Command<A::Msg>>,
    /// A background blob write failed: the next commit stops the node.
    failure: Option<std::io::Error>,
    actor: A,
    storage: Box<dyn SyncStorage>,
    rng: ActorRng,
    clock: Clock,
    timers: BTreeMap<A::Timer, Instant>,
    outbox: Arc<dyn Outbox>,
    sessions: HashMap<ClientId, mpsc::UnboundedSender<A::Msg>>,
    /// One-reply sessions opened by [`ActorHandle::call`].
    calls: HashMap<ClientId, oneshot::Sender<A::Msg>>,
    held: Vec<Held<A::Msg>>,
    /// Messages the actor sent to its own node, handled in the next batch.
    loopback: Vec<A::Msg>,
    /// `inspect` probes waiting for the batch's sync.
    probes: Vec<Probe>,
    effects: Vec<Effect<A::Msg, A::Timer>>,
    config: DriverConfig,
    stats: Arc<ActorStats>,
}

impl<A: Actor> ActorTask<A> {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command<A::Msg>>) -> Result<(), DriverError> {
        self.handle(|a, ctx| a.on_start(ctx));
        self.handle(|a, ctx| a.on_batch_end(ctx));
        self.commit()?;
        let mut batch = Vec::with_capacity(self.config.max_batch);
        loop {
            let me = self.me;
            batch.extend(
                self.loopback
                    .drain(..)
                    .map(|msg| Command::Peer { from: me, msg }),
            );
            if batch.is_empty() {
                let next_timer = self.timers.values().min().copied();
                tokio::select! {
                    cmd = inbox.recv() => match cmd {
                        Some(cmd) => batch.push(cmd),
                        None => return Ok(()),
                    },
                    _ = sleep_until_opt(next_timer.map(|t| self.clock.to_tokio(t))) => {}
                }
            }
            self.stats
                .inbox_depth
                .store(inbox.len() as u64, Ordering::Relaxed);
            fill_from(&mut inbox, &mut batch, self.config.max_batch);
            let mut inputs = batch.len();
            self.apply_all(&mut batch);
            if let Some(wait) = group_commit_wait().filter(|_| self.storage.sync_may_block()) {
                // Let more writes join this batch's fdatasync (an experiment, off by default).
                tokio::time::sleep(wait).await;
                fill_from(&mut inbox, &mut batch, self.config.max_batch);
                inputs += batch.len();
                self.apply_all(&mut batch);
            }
            let gather = match self.config.gather {
                Gather::Off => Gather::Off,
                _ if inputs >= GATHER_BELOW || !self.storage.sync_may_block() => Gather::Off,
                other => other,
            };
            if let Gather::Yields(rounds) = gather {
                for _ in 0..rounds {
                    tokio::task::yield_now().await;
                    fill_from(&mut inbox, &mut batch, self.config.max_batch);
                    if batch.is_empty() {
                        break;
                    }
                    inputs += batch.len();
                    self.apply_all(&mut batch);
                }
            }
            self.fire_due_timers();
            self.handle(|a, ctx| a.on_batch_end(ctx));
            match gather {
                Gather::Linger(wait) => {
                    inputs += self.linger_then_commit(wait, &mut inbox, &mut batch)?;
                }
                _ => self.commit()?,
            }
            metrics::histogram!("synod_batch_inputs").record(inputs as f64);
        }
    }

    /// Sleep `wait` and handle what arrived meanwhile, then sync: all in one
    /// `block_in_place`, which the sync of a batch with writes needs anyway. Held output
    /// of the first part of the batch waits for this same sync, so it never leaves before
    /// its writes are durable. Returns how many more inputs the batch took.
    fn linger_then_commit(
        &mut self,
        wait: Duration,
        inbox: &mut mpsc::Receiver<Command<A::Msg>>,
        batch: &mut Vec<Command<A::Msg>>,
    ) -> Result<usize, DriverError> {
        tokio::task::block_in_place(|| {
            std::thread::sleep(wait);
            fill_from(inbox, batch, self.config.max_batch);
            let more = batch.len();
            if more > 0 {
                self.apply_all(batch);
                self.fire_due_timers();
                self.handle(|a, ctx| a.on_batch_end(ctx));
            }
            self.commit().map(|()| more)
        })
    }

    /// Handle every input in `batch`, in order, leaving it empty.
    fn apply_all(&mut self, batch: &mut Vec<Command<A::Msg>>) {
        self.stats
            .inputs
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for cmd in batch.drain(..) {
            self.apply(cmd);
        }
    }

    fn apply(&mut self, cmd: Command<A::Msg>) {
        match cmd {
            Command::Peer { from, msg } => {
                self.handle(|a, ctx| a.on_message(ctx, Endpoint::Node(from), msg))
            }
            Command::Client { client, msg } => {
                self.handle(|a, ctx| a.on_message(ctx, Endpoint::Client(client), msg))
            }
            Command::OpenSession { client, replies } => {
                // A dropped session's close message can be lost when the inbox is full, so
                // also sweep sessions whose receiver is gone, amortised over opens.
                if self.sessions.len() >= 1024 && self.sessions.len().is_power_of_two() {
                    self.sessions.retain(|_, s| !s.is_closed());
                }
                self.sessions.insert(client, replies);
            }
            Command::CloseSession { client } => {
                self.sessions.remove(&client);
            }
            Command::Call { client, msg, reply } => {
                // An actor may never answer (it dropped the request); sweep the calls
                // whose caller gave up, amortised as for sessions.
                if self.calls.len() >= 1024 && self.calls.len().is_power_of_two() {
                    self.calls.retain(|_, c| !c.is_closed());
                }
                self.calls.insert(client, reply);
                self.handle(|a, ctx| a.on_message(ctx, Endpoint::Client(client), msg));
            }
            // Probes see only durable state: they run after this batch's sync.
            Command::Inspect(probe) => self.probes.push(probe),
            Command::BackgroundDone {
                blob,
                outcome,
                done,
            } => {
                let outcome = outcome.and_then(|(bytes, durable)| {
                    if !durable {
                        self.storage.put_blob_durably(&blob, &bytes)?;
                    }
                    Ok(bytes)
                });
                match outcome {
                    Ok(bytes) => {
                        let msg = done(bytes);
                        let me = self.me;
                        self.handle(|a, ctx| a.on_message(ctx, Endpoint::Node(me), msg));
                    }
                    Err(error) => self.failure = Some(error),
                }
            }
        }
    }

    /// Run background work on a blocking thread: build the bytes, write them durably if
    /// the store can from there, and report back through the inbox.
    fn spawn_background(&mut self, task: synod_core::Background<A::Msg>) {
        let Some((build, done)) = task.take() else {
            return;
        };
        let blob = task.blob().to_vec();
        let writer = self.storage.blob_writer();
        let inbox = self.own_inbox.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = build();
            let outcome = match writer {
                Some(write) => write(&blob, &bytes).map(|()| (bytes, true)),
                None => Ok((bytes, false)),
            };
            if let Some(inbox) = inbox.upgrade() {
                // The actor may have stopped meanwhile; then nobody waits for this.
                let _ = inbox.blocking_send(Command::BackgroundDone {
                    blob,
                    outcome,
                    done,
                });
            }
        });
    }

    fn fire_due_timers(&mut self) {
        let now = self.clock.now();
        let due: Vec<A::Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            // A handler earlier in this loop may have re-armed or cancelled it.
            if self.timers.get(&key).is_some_and(|at| *at <= now) {
                self.timers.remove(&key);
                self.stats.inputs.fetch_add(1, Ordering::Relaxed);
                self.handle(|a, ctx| a.on_timer(ctx, key));
            }
        }
    }

    /// Run one handler and apply its effects: timers now, unsynced sends now, the rest held.
    fn handle(&mut self, f: impl FnOnce(&mut A, &mut Ctx<'_, A::Msg, A::Timer>)) {
        let now = self.clock.now();
        let mut effects = std::mem::take(&mut self.effects);
        {
            let mut ctx = Ctx::new(
                self.me,
                now,
                &mut self.rng,
                self.storage.as_mut(),
                &mut effects,
            );
            f(&mut self.actor, &mut ctx);
        }
        for effect in effects.drain(..) {
            match effect {
                Effect::SendUnsynced { to, msg } => self.transmit(to, &msg),
                Effect::Send { to, msg } => self.held.push(Held::Send(to, msg)),
                Effect::Reply { to, msg } => self.held.push(Held::Reply(to, msg)),
                Effect::SetTimer { key, after } => {
                    self.timers.insert(key, now + after);
                }
                Effect::CancelTimer { key } => {
                    self.timers.remove(&key);
                }
                Effect::Background(task) => self.spawn_background(task),
            }
        }
        self.effects = effects;
    }

    /// Make the batch durable, then release its held output.
    fn commit(&mut self) -> Result<(), DriverError> {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        if let Some(source) = self.failure.take() {
            tracing::error!(service = self.service, error = %source, "background blob write failed; stopping");
            return Err(DriverError::Storage {
                service: self.service,
                source,
            });
        }
        let started = std::time::Instant::now();
        // fdatasync blocks; keep the other actors' worker threads running meanwhile. A
        // batch with nothing to write still calls sync (to see a failed store), inline.
        let result = if self.storage.sync_may_block() || always_block_in_place() {
            tokio::task::block_in_place(|| self.storage.sync())
        } else {
            self.storage.sync()
        };
        match result {
            Err(source) => {
                tracing::error!(service = self.service, error = %source, "storage sync failed; stopping");
                return Err(DriverError::Storage {
                    service: self.service,
                    source,
                });
            }
            Ok(true) => {
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.stats.sync_nanos.fetch_add(took, Ordering::Relaxed);
                metrics::histogram!("synod_fsync_seconds").record(took as f64 / 1e9);
            }
            Ok(false) => {}
        }
        for probe in self.probes.drain(..) {
            probe(&self.actor);
        }
        let held = std::mem::take(&mut self.held);
        metrics::histogram!("synod_batch_outputs").record(held.len() as f64);
        for out in held {
            match out {
                Held::Send(to, msg) => self.transmit(to, &msg),
                Held::Reply(to, msg) => {
                    if let Some(session) = self.sessions.get(&to) {
                        if session.send(msg).is_err() {
                            self.sessions.remove(&to);
                        }
                    } else if let Some(call) = self.calls.remove(&to) {
                        let _ = call.send(msg);
                    }
                }
            }
        }
        Ok(())
    }

    fn transmit(&mut self, to: NodeId, msg: &A::Msg) {
        if to == self.me {
            self.loopback.push(msg.clone());
            return;
        }
        self.outbox
            .send(to, self.service, bytes::Bytes::from(codec::encode(msg)));
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Decode a peer's payload and put it in `handle`'s inbox without waiting. Returns
/// `false` only if the inbox is full (or the actor stopped), so the caller can queue the
/// payload instead; a payload that does not decode is dropped and counted, as in
/// [`deliver_encoded`]. Saves a hop through a forwarding task when the actor keeps up.
pub fn try_deliver_encoded<A: Actor>(
    handle: &ActorHandle<A>,
    stats: &ActorStats,
    from: NodeId,
    payload: &[u8],
) -> bool {
    match codec::decode::<A::Msg>(payload) {
        Ok(msg) => handle.tx.try_send(Command::Peer { from, msg }).is_ok(),
        Err(e) => {
            stats.bad_messages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%from, service = handle.service, error = %e, "undecodable message dropped");
            true
        }
    }
}

/// Decode a peer's payload for `handle`'s actor and deliver it. A payload that does not
/// decode is dropped and counted: it came from the network and proves nothing.
pub async fn deliver_encoded<A: Actor>(
    handle: &ActorHandle<A>,
    stats: &ActorStats,
    from: NodeId,
    payload: &[u8],
) -> Result<(), DriverError> {
    match codec::decode::<A::Msg>(payload) {
        Ok(msg) => handle.deliver(from, msg).await,
        Err(e) => {
            stats.bad_messages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%from, service = handle.service, error = %e, "undecodable message dropped");
            Ok(())
        }
    }
}

impl SyncStorage for crate::storage::DiskStorage {
    fn sync(&mut self) -> std::io::Result<bool> {
        let stats = crate::storage::DiskStorage::sync(self)?;
        metrics::counter!("synod_wal_bytes_total").increment(stats.bytes);
        metrics::counter!("synod_wal_records_total").increment(stats.records);
        Ok(stats.records > 0 || stats.blobs > 0)
    }

    fn sync_may_block(&self) -> bool {
        crate::storage::DiskStorage::sync_may_block(self)
    }

    fn blob_writer(&self) -> Option<BlobWriter> {
        Some(Arc::new(crate::storage::DiskStorage::blob_writer(self)))
    }

    fn put_blob_durably(&mut self, name: &[u8], data: &[u8]) -> std::io::Result<()> {
        crate::storage::DiskStorage::blob_writer(self)(name, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use synod_core::{LogIndex, MemStorage};

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    enum Msg {
        Write,
        Read,
        Done(u64),
    }

    /// Replies to `Write` after appending, to `Read` without writing.
    struct Echo;

    impl Actor for Echo {
        type Msg = Msg;
        type Timer = ();
        fn on_start(&mut self, _ctx: &mut Ctx<'_, Msg, ()>) {}
        fn on_message(&mut self, ctx: &mut Ctx<'_, Msg, ()>, from: Endpoint, msg: Msg) {
            let Endpoint::Client(client) = from else {
                return;
            };
            match msg {
                Msg::Write => {
                    let LogIndex(i) = ctx.storage().append(b"x");
                    ctx.reply(client, Msg::Done(i));
                }
                Msg::Read => ctx.reply(client, Msg::Done(0)),
                Msg::Done(_) => {}
            }
        }
        fn on_timer(&mut self, _ctx: &mut Ctx<'_, Msg, ()>, _t: ()) {}
    }

    /// Memory storage that counts syncs and can be told to fail them.
    struct Probe {
        inner: MemStorage,
        syncs: Arc<AtomicU64>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Storage for Probe {
        fn put(&mut self, k: &[u8], v: &[u8]) {
            self.inner.put(k, v)
        }
        fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
            self.inner.get(k)
        }
        fn delete(&mut self, k: &[u8]) {
            self.inner.delete(k)
        }
        fn append(&mut self, r: &[u8]) -> LogIndex {
            self.inner.append(r)
        }
        fn read(&self, i: LogIndex) -> Option<Vec<u8>> {
            self.inner.read(i)
        }
        fn truncate(&mut self, from: LogIndex) {
            self.inner.truncate(from)
        }
        fn compact(&mut self, before: LogIndex) {
            self.inner.compact(before)
        }
        fn log_bounds(&self) -> (LogIndex, LogIndex) {
            self.inner.log_bounds()
        }
    }

    impl SyncStorage for Probe {
        fn sync(&mut self) -> std::io::Result<bool> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("disk on fire"));
            }
            let wrote = self.inner.pending_writes() > 0;
            self.inner.sync();
            if wrote {
                // `syncs` holds the next log index: everything below it is durable.
                let LogIndex(next) = self.inner.log_bounds().1;
                self.syncs.store(next, Ordering::SeqCst);
            }
            Ok(wrote)
        }
    }

    struct Nowhere;
    impl Outbox for Nowhere {
        fn send(&self, _to: NodeId, _service: u16, _payload: bytes::Bytes) {}
    }

    /// A running `Echo` actor with handles on its storage's sync counter and failure switch.
    struct Running {
        handle: ActorHandle<Echo>,
        task: tokio::task::JoinHandle<Result<(), DriverError>>,
        durable_next: Arc<AtomicU64>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    fn start() -> Running {
        start_with(DriverConfig::default())
    }

    fn start_with(config: DriverConfig) -> Running {
        let durable_next = Arc::new(AtomicU64::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let storage = Probe {
            inner: MemStorage::new(),
            syncs: durable_next.clone(),
            fail: failing.clone(),
        };
        let placement = ActorPlacement {
            me: NodeId(1),
            service: 9,
            seed: 1,
            config,
        };
        let (handle, task) = spawn_actor(
            placement,
            Echo,
            Box::new(storage),
            Arc::new(Nowhere),
            Arc::new(ActorStats::default()),
        );
        Running {
            handle,
            task,
            durable_next,
            failing,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_leaves_only_after_its_write_is_synced() {
        let Running {
            handle,
            durable_next: syncs,
            ..
        } = start();
        for expected in 1..=20u64 {
            let reply = handle
                .call(Msg::Write, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(reply, Msg::Done(expected));
            let durable_next = syncs.load(Ordering::SeqCst);
            assert!(
                durable_next > expected,
                "the reply for entry {expected} left while only entries below {durable_next} were durable"
            );
        }
    }

    /// Concurrent writers against a driver that gathers: every reply still leaves only
    /// after its own entry is durable, a lone write is answered without more input
    /// arriving, and writes that arrive while a batch gathers share its sync.
    async fn gathered_writes_are_answered_only_once_durable(gather: Gather) {
        let config = DriverConfig {
            gather,
            ..DriverConfig::default()
        };
        let Running {
            handle,
            durable_next,
            ..
        } = start_with(config);
        let lone = handle.call(Msg::Write, Duration::from_secs(5)).await;
        assert_eq!(lone.unwrap(), Msg::Done(1));
        let mut syncs_before = durable_next.load(Ordering::SeqCst);
        assert!(
            syncs_before > 1,
            "the lone write was answered before its sync"
        );
        for round in 0..20 {
            let writers = (0..40).map(|_| {
                let handle = handle.clone();
                let durable_next = durable_next.clone();
                tokio::spawn(async move {
                    let reply = handle.call(Msg::Write, Duration::from_secs(5)).await;
                    let Ok(Msg::Done(index)) = reply else {
                        panic!("write failed: {reply:?}");
                    };
                    let durable = durable_next.load(Ordering::SeqCst);
                    assert!(
                        durable > index,
                        "{gather:?}, round {round}: the reply for entry {index} left while \
                         only entries below {durable} were durable"
                    );
                })
            });
            for writer in futures::future::join_all(writers).await {
                writer.unwrap();
            }
            syncs_before = syncs_before.max(durable_next.load(Ordering::SeqCst));
        }
        assert_eq!(syncs_before, 2 + 20 * 40, "every write was answered once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lingering_batch_releases_its_output_only_after_its_sync() {
        gathered_writes_are_answered_only_once_durable(Gather::Linger(Duration::from_micros(300)))
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_yields_for_more_releases_its_output_only_after_its_sync() {
        gathered_writes_are_answered_only_once_durable(Gather::Yields(8)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lingering_batch_shares_its_sync_with_what_arrives_meanwhile() {
        // A long linger, so that several of the writers surely arrive within it.
        let config = DriverConfig {
            gather: Gather::Linger(Duration::from_millis(20)),
            ..DriverConfig::default()
        };
        let stats = Arc::new(ActorStats::default());
        let (handle, _task) = spawn_actor(
            ActorPlacement {
                me: NodeId(1),
                service: 9,
                seed: 1,
                config,
            },
            Echo,
            Box::new(MemStorage::new()),
            Arc::new(Nowhere),
            stats.clone(),
        );
        // One write every millisecond or so: without gathering, each would sync alone.
        let writes = 30u64;
        let mut writers = Vec::new();
        for _ in 0..writes {
            let handle = handle.clone();
            writers.push(tokio::spawn(async move {
                handle.call(Msg::Write, Duration::from_secs(5)).await
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for writer in writers {
            assert!(matches!(writer.await.unwrap(), Ok(Msg::Done(_))));
        }
        let syncs = stats.syncs.load(Ordering::SeqCst);
        assert!(
            syncs < writes / 2,
            "{syncs} syncs for {writes} concurrent writes: the linger gathered nothing"
        );
    }

    /// On a client `Write`, builds a 3 MB blob in the background; answers the client
    /// with the blob's length once the completion comes back from its own node.
    #[derive(Default)]
    struct Snapper {
        waiting: Option<ClientId>,
    }

    impl Actor for Snapper {
        type Msg = Msg;
        type Timer = ();
        fn on_start(&mut self, _ctx: &mut Ctx<'_, Msg, ()>) {}
        fn on_message(&mut self, ctx: &mut Ctx<'_, Msg, ()>, from: Endpoint, msg: Msg) {
            match (from, msg) {
                (Endpoint::Client(client), Msg::Write) => {
                    self.waiting = Some(client);
                    ctx.background(synod_core::Background::new(
                        b"snap".to_vec(),
                        || vec![7u8; 3 << 20],
                        |bytes| Msg::Done(bytes.len() as u64),
                    ));
                }
                (Endpoint::Node(node), Msg::Done(n)) if node == ctx.me() => {
                    if let Some(client) = self.waiting.take() {
                        ctx.reply(client, Msg::Done(n));
                    }
                }
                _ => {}
            }
        }
        fn on_timer(&mut self, _ctx: &mut Ctx<'_, Msg, ()>, _t: ()) {}
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_work_runs_off_the_actor_and_its_blob_is_durable_before_it_reports() {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            crate::storage::DiskStorage::open(dir.path(), crate::storage::DiskOptions::default())
                .unwrap();
        let placement = ActorPlacement {
            me: NodeId(1),
            service: 9,
            seed: 1,
            config: DriverConfig::default(),
        };
        let (handle, _task) = spawn_actor(
            placement,
            Snapper::default(),
            Box::new(storage),
            Arc::new(Nowhere),
            Arc::new(ActorStats::default()),
        );
        let reply = handle
            .call(Msg::Write, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(reply, Msg::Done(3 << 20));
        // The blob was written by the background thread, not by a batch: a fresh open of
        // the same directory (as after a crash) reads it whole.
        let reopened =
            crate::storage::DiskStorage::open(dir.path(), crate::storage::DiskOptions::default())
                .unwrap();
        assert_eq!(reopened.get_blob(b"snap"), Some(vec![7u8; 3 << 20]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_store_stops_the_actor_even_in_a_batch_without_writes() {
        let Running {
            handle,
            task,
            failing,
            ..
        } = start();
        handle
            .call(Msg::Read, Duration::from_secs(5))
            .await
            .unwrap();
        failing.store(true, Ordering::SeqCst);
        // This batch writes nothing, yet its reply must not leave from a failed store.
        let result = handle.call(Msg::Read, Duration::from_secs(5)).await;
        assert!(
            result.is_err(),
            "got a reply from a failed store: {result:?}"
        );
        assert!(matches!(task.await, Ok(Err(DriverError::Storage { .. }))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unanswered_calls_time_out_and_do_not_block_later_calls() {
        let Running { handle, .. } = start();
        // `Echo` ignores `Done`: each of these calls waits out its timeout. 1,100 of them
        // cross the 1,024 mark where the driver sweeps abandoned calls.
        let unanswered = (0..1100).map(|_| handle.call(Msg::Done(0), Duration::from_millis(200)));
        for outcome in futures::future::join_all(unanswered).await {
            assert!(
                matches!(outcome, Err(DriverError::Timeout(_))),
                "{outcome:?}"
            );
        }
        let reply = handle.call(Msg::Write, Duration::from_secs(5)).await;
        assert_eq!(reply.unwrap(), Msg::Done(1));
    }
}
