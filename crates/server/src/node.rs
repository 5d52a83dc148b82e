//! One node process: the transport, the services it hosts, and the admin endpoint.

use crate::admin;
use crate::config::{ClusterConfig, ConfigError};
use crate::etcd::EtcdNode;
use crate::gateway::Gateway;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use synod_core::{MemStorage, NodeId};
use synod_protocols::beacon::Beacon;
use synod_protocols::chord::{Chord, ChordConfig};
use synod_protocols::clocks::{ClockSync, ClockSyncConfig};
use synod_protocols::mvcc::MvccStateMachine;
use synod_protocols::raft::{Raft, RaftConfig};
use synod_protocols::swim::{Swim, SwimConfig};
use synod_runtime::driver::{
    deliver_encoded, spawn_actor, try_deliver_encoded, ActorHandle, ActorPlacement, ActorStats,
    DriverConfig, DriverError, Outbox,
};
use synod_runtime::storage::{DiskOptions, DiskStorage, StorageError};
use synod_runtime::transport::{
    Inbound, ServiceId, TlsFiles, TlsMode, Transport, TransportConfig, TransportError,
    TransportHandle,
};
use thiserror::Error;

/// Service ids: the same on every node, so a message reaches the same actor type.
pub mod service {
    /// [`synod_protocols::beacon::Beacon`].
    pub const BEACON: u16 = 1;
    /// [`synod_protocols::clocks::ClockSync`].
    pub const CLOCK_SYNC: u16 = 2;
    /// The Raft group that holds the replicated KV store.
    pub const RAFT: u16 = 3;
    /// [`synod_protocols::chord::Chord`]: the DHT behind `synod dht`.
    pub const CHORD: u16 = 4;
    /// [`synod_protocols::swim::Swim`]: membership and failure detection.
    pub const SWIM: u16 = 5;
    /// Client requests forwarded from a follower to the Raft leader
    /// ([`crate::gateway::Gateway`]).
    pub const RAFT_GATEWAY: u16 = 6;
    /// The Dynamo-style AP store (`synod up --ap`).
    pub const DYNAMO: u16 = 7;
    /// MapReduce workers for `synod job run --cluster` ([`crate::mapreduce`]).
    pub use crate::mapreduce::MAPREDUCE_SERVICE as MAPREDUCE;
    /// Stream workers of `synod stream run --cluster` (no peer messages).
    pub use crate::stream::STREAM;
    /// The multi-Raft ranges (`synod up --ranges`), and forwarded requests into them.
    pub use crate::txn::{TXN, TXN_GATEWAY};
}

/// The replicated store every node serves: etcd's MVCC store with leases, over Raft.
pub type KvRaft = Raft<MvccStateMachine>;

/// Why a node could not start or had to stop.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The cluster file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The transport (addresses, certificates, ports).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Opening storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An actor stopped: a failed fsync stops the node.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// Another process holds this node's data directory.
    #[error("data directory {0} is in use by another process (is this node already running?)")]
    DataDirLocked(std::path::PathBuf),
    /// The data directory could not be created or locked.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The admin or the client endpoint could not bind.
    #[error("{what} endpoint {addr}: {source}")]
    Listen {
        /// Which endpoint.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Sends actor output through the transport without waiting. A full queue or a down
/// peer drops the message, which protocols tolerate; the transport counts the drop per
/// peer (`dropped` in its statistics).
struct TransportOutbox(TransportHandle);

impl Outbox for TransportOutbox {
    fn send(&self, to: NodeId, service: u16, payload: Bytes) {
        if let Err(e) = self.0.try_send(to, ServiceId(service), payload) {
            tracing::trace!(%to, service, error = %e, "message dropped");
        }
    }
}

/// What the admin endpoint reads.
pub struct NodeState {
    /// This node.
    pub me: NodeId,
    /// The cluster file.
    pub config: ClusterConfig,
    /// The transport, for peer statistics.
    pub transport: TransportHandle,
    /// The beacon actor.
    pub beacon: ActorHandle<Beacon>,
    /// The clock-sync actor.
    pub clock_sync: ActorHandle<ClockSync>,
    /// This node's member of the Chord ring.
    pub chord: ActorHandle<Chord>,
    /// This node's Raft server of the KV group.
    pub raft: ActorHandle<KvRaft>,
    /// Client requests into the KV group (forwarded to the leader when needed).
    pub kv: Arc<Gateway<MvccStateMachine>>,
    /// The SWIM member: the membership view.
    pub swim: ActorHandle<Swim>,
    /// The Dynamo-style store, when the cluster runs it (`ap = true`).
    pub dynamo: Option<ActorHandle<synod_protocols::dynamo::Dynamo>>,
    /// The multi-Raft ranges and their transaction coordinator (`ranges` set).
    pub txn: Option<Arc<crate::txn::TxnHost>>,
    /// Per-actor driver counters, by service name.
    pub actor_stats: Vec<(&'static str, Arc<ActorStats>)>,
    /// `synod run mutex|election`: the coordination algorithms' runs.
    pub run: Arc<crate::run::RunHost>,
    /// `synod job run --cluster`: this node's MapReduce workers.
    pub mapreduce: Arc<crate::mapreduce::MapReduceHost>,
    /// When the process started.
    pub started: std::time::Instant,
}

/// Run node `me` of `config` until SIGTERM or SIGINT (graceful) or a fatal error.
pub async fn run_node(config: ClusterConfig, me: NodeId) -> Result<(), NodeError> {
    let node_cfg = config
        .node(me)
        .ok_or_else(|| ConfigError::UnknownNode {
            node: me,
            path: config.base_dir.join("cluster.toml"),
        })?
        .clone();
    let peers = config
        .nodes
        .iter()
        .filter(|n| n.id != me.0)
        .map(|n| (NodeId(n.id), n.peer_addr))
        .collect();
    let tls = if config.insecure {
        TlsMode::Insecure
    } else {
        TlsMode::Mutual(TlsFiles::in_dir(&config.resolve(&config.certs_dir), me))
    };
    let transport_cfg = TransportConfig::new(
        config.cluster_id.clone(),
        me,
        node_cfg.peer_addr,
        peers,
        tls,
    );
    if admin::recorder().is_none() {
        tracing::warn!(
            "metrics recorder unavailable; /metrics shows transport and actor counters only"
        );
    }
    let (transport, mut inbound) = Transport::start(transport_cfg).await?;
    tracing::info!(node = %me, peer_addr = %node_cfg.peer_addr, "transport up");

    let data_dir = config.resolve(&node_cfg.data_dir);
    // Held for the life of the process: two processes writing one WAL would corrupt it.
    let _lock = lock_data_dir(&data_dir)?;
    // Bind the client-facing ports before any actor starts, so that a port in use stops
    // the node before it has anything to shut down (an actor mid-fsync while the runtime
    // shuts down would panic on its next timer).
    let bind = |what: &'static str, addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Listen { what, addr, source })
    };
    let listener = bind("admin", node_cfg.admin_addr).await?;
    let client_listener = bind("client", node_cfg.client_addr).await?;
    let outbox = Arc::new(TransportOutbox(transport.clone()));
    let driver = DriverConfig {
        max_batch: config.tuning.max_batch,
        inbox_capacity: config.tuning.inbox_capacity,
        ..DriverConfig::default()
    };
    let placement = |service| ActorPlacement {
        me,
        service,
        seed: u64::from(std::process::id()),
        config: driver.clone(),
    };
    let peer_ids: Vec<NodeId> = config.node_ids().into_iter().filter(|&n| n != me).collect();

    let mut services = Services::default();
    let beacon = services.spawn(
        "beacon",
        placement(service::BEACON),
        Beacon::new(
            peer_ids.clone(),
            Duration::from_millis(config.tuning.heartbeat_ms),
        ),
        Box::new(DiskStorage::open(
            data_dir.join("beacon"),
            DiskOptions::default(),
        )?),
        outbox.clone(),
    );

    // Clock sync keeps no durable state by design: after a restart it measures again.
    let time_server = config.node_ids().first().copied().unwrap_or(me);
    let clock_cfg = ClockSyncConfig {
        poll_interval: Duration::from_millis(config.tuning.clock_poll_ms),
        ..ClockSyncConfig::new(time_server)
    };
    let clock_sync = services.spawn(
        "clock_sync",
        placement(service::CLOCK_SYNC),
        ClockSync::new(clock_cfg),
        Box::new(MemStorage::new()),
        outbox.clone(),
    );

    // SWIM keeps no durable state: a restarted member refutes its way back in.
    let swim = services.spawn(
        "swim",
        placement(service::SWIM),
        Swim::new(
            me,
            SwimConfig {
                known: config.node_ids(),
                ..SwimConfig::default()
            },
        ),
        Box::new(MemStorage::new()),
        outbox.clone(),
    );

    let mut raft_cfg = RaftConfig::new(config.node_ids());
    raft_cfg.election_timeout = Duration::from_millis(config.tuning.election_ms);
    raft_cfg.election_timeout_spread = Duration::from_millis(config.tuning.election_ms);
    raft_cfg.heartbeat_interval = Duration::from_millis(config.tuning.raft_heartbeat_ms);
    // Snapshots are blob files beside the WAL (DiskStorage::put_blob), so their size has
    // no bound but memory's: the state machine is in memory anyway.
    raft_cfg.snapshot_threshold = config.tuning.snapshot_entries.max(1);
    // Nodes of one machine (`synod up`) would otherwise encode and write their whole
    // state at the same index, on the same cores and disk (docs/etcdperf.md, session 10).
    raft_cfg.snapshot_stagger = true;
    raft_cfg.max_snapshot_bytes = None;
    // A snapshot of hundreds of MB in 64 KiB chunks, one in flight, takes thousands of
    // round trips; 1 MiB chunks stay far below the 16 MiB frame bound and keep each
    // message's copy on the leader's actor short.
    raft_cfg.snapshot_chunk_bytes = 1 << 20;
    raft_cfg.follower_proposals = crate::node_runtime::follower_proposals();
    // One AppendEntries per follower per group-commit batch (docs/etcdperf.md, session 8).
    raft_cfg.replicate_at_batch_end = !crate::node_runtime::replicate_per_write();
    // A batch under 500 clients holds ~500 writes of ~1.3 KB: at 64 entries per request
    // and 8 in flight it filled the whole window. Let the 1 MiB byte bound decide the
    // request size, as etcd's MaxSizePerMsg does, with a deeper window (etcd: 512).
    let (entries, in_flight) = crate::node_runtime::append_limits();
    raft_cfg.max_entries_per_append = entries;
    raft_cfg.max_in_flight = in_flight;
    let raft = services.spawn(
        "raft",
        placement(service::RAFT),
        Raft::new(raft_cfg, MvccStateMachine::default()),
        Box::new(DiskStorage::open(
            data_dir.join("raft"),
            DiskOptions::default()
                .with_preallocate_bytes(crate::node_runtime::wal_preallocate_bytes()),
        )?),
        outbox.clone(),
    );
    // Chord: the first node starts the ring, the others join through it (or any
    // other node). Keys and the incarnation are on disk, so a restart rejoins.
    let first = config.node_ids().first().copied().unwrap_or(me);
    let chord = services.spawn(
        "chord",
        placement(service::CHORD),
        Chord::new(ChordConfig::new(peer_ids.clone(), me == first)),
        Box::new(DiskStorage::open(
            data_dir.join("chord"),
            DiskOptions::default(),
        )?),
        outbox.clone(),
    );
    let kv = Gateway::new(
        me,
        service::RAFT_GATEWAY,
        raft.clone(),
        transport.clone(),
        Duration::from_millis(config.tuning.request_timeout_ms),
    );
    {
        let kv = kv.clone();
        services.route(service::RAFT_GATEWAY, move |from, payload| {
            kv.on_peer_message(from, &payload)
        });
    }

    let run = crate::run::RunHost::new(
        me,
        config.node_ids(),
        config.resolve(std::path::Path::new("runs")),
        outbox.clone(),
    );
    for service in [crate::run::MUTEX_SERVICE, crate::run::ELECTION_SERVICE] {
        let run = run.clone();
        services.route(service, move |from, payload| {
            run.on_peer_message(service, from, payload)
        });
    }
    let dynamo = if config.ap {
        Some(services.spawn(
            "dynamo",
            placement(service::DYNAMO),
            crate::ap::actor(me, config.node_ids()),
            Box::new(DiskStorage::open(
                data_dir.join("dynamo"),
                DiskOptions::default(),
            )?),
            outbox.clone(),
        ))
    } else {
        None
    };
    if let Some(d) = &dynamo {
        crate::ap::feed_swim(swim.clone(), d.clone());
    }

    let txn = match &config.ranges {
        Some(ranges) => {
            let node = services.spawn(
                "txn",
                placement(service::TXN),
                crate::txn::actor(config.node_ids(), ranges, &config.tuning),
                Box::new(DiskStorage::open(
                    data_dir.join("txn"),
                    DiskOptions::default(),
                )?),
                outbox.clone(),
            );
            let host = crate::txn::TxnHost::new(me, config.node_ids(), node, transport.clone());
            let gateway = host.clone();
            services.route(service::TXN_GATEWAY, move |from, payload| {
                gateway.on_peer_message(from, &payload)
            });
            Some(host)
        }
        None => None,
    };

    // Route what peers send to the service it names.
    let routes = services.take_routes();
    let router = tokio::spawn(async move {
        while let Some(arrival) = inbound.recv().await {
            match arrival {
                Inbound::Message {
                    from,
                    service,
                    payload,
                } => match routes.get(&service.0) {
                    Some(route) => route(from, payload),
                    None => {
                        tracing::warn!(%from, service = service.0, "message for an unknown service dropped");
                    }
                },
                Inbound::Stream(stream) => {
                    tracing::warn!(from = %stream.from(), "no service takes streams yet; dropped");
                }
            }
        }
    });

    let state = Arc::new(NodeState {
        me,
        config: config.clone(),
        transport: transport.clone(),
        beacon,
        clock_sync,
        raft,
        kv,
        swim,
        chord,
        dynamo,
        txn,
        actor_stats: services.stats.clone(),
        run,
        mapreduce: crate::mapreduce::MapReduceHost::new(
            me,
            node_cfg.peer_addr.ip(),
            data_dir.join("mapreduce"),
        ),
        started: std::time::Instant::now(),
    });
    let admin_task = tokio::spawn(admin::serve(listener, state.clone()));
    let etcd = EtcdNode::new(me, config.clone(), state.raft.clone(), state.kv.clone());
    if let Some(host) = &state.txn {
        etcd.serve_over_ranges(Arc::clone(host));
    }
    let etcd_task = tokio::spawn(etcd.serve(client_listener));
    tracing::info!(node = %me, admin = %node_cfg.admin_addr, client = %node_cfg.client_addr, "node running");

    let outcome = tokio::select! {
        r = services.tasks.join_next() => match r {
            Some(r) => flatten(r),
            None => Ok(()),
        },
        _ = shutdown_signal() => {
            tracing::info!(node = %me, "shutting down on signal");
            Ok(())
        }
    };
    router.abort();
    admin_task.abort();
    etcd_task.abort();
    transport.shutdown().await;
    outcome
}

/// A peer message handler: takes the sender and the payload, never blocks.
type Route = Box<dyn Fn(NodeId, Bytes) + Send + Sync>;

/// The services a node hosts: their actor tasks, statistics and message routes.
#[derive(Default)]
struct Services {
    routes: BTreeMap<u16, Route>,
    tasks: tokio::task::JoinSet<Result<(), DriverError>>,
    stats: Vec<(&'static str, Arc<ActorStats>)>,
}

impl Services {
    /// Start `actor` and route its service's peer messages to it. Each service gets its
    /// own forwarding queue, so one actor that falls behind (a slow fsync) never holds
    /// up the others or the transport's readers; when its queue is full, its messages
    /// are dropped and counted, as on a lossy network.
    fn spawn<A: synod_core::Actor>(
        &mut self,
        name: &'static str,
        placement: ActorPlacement,
        actor: A,
        storage: Box<dyn synod_runtime::driver::SyncStorage>,
        outbox: Arc<TransportOutbox>,
    ) -> ActorHandle<A> {
        let stats = Arc::new(ActorStats::default());
        let service = placement.service;
        let (handle, task) = spawn_actor(placement, actor, storage, outbox, stats.clone());
        self.tasks.spawn(async move {
            match task.await {
                Ok(r) => r,
                Err(join) => Err(DriverError::Storage {
                    service,
                    source: std::io::Error::other(format!("actor task failed: {join}")),
                }),
            }
        });
        // Messages in the forwarding queue or being delivered from it. While there are
        // none, a message may go straight into the inbox without overtaking any.
        let queued = Arc::new(AtomicUsize::new(0));
        let queue = forwarder(handle.clone(), stats.clone(), queued.clone());
        let route_stats = stats.clone();
        let direct = crate::node_runtime::direct_delivery();
        let direct_handle = handle.clone();
        self.route(service, move |from, payload| {
            if direct
                && queued.load(Ordering::Acquire) == 0
                && try_deliver_encoded(&direct_handle, &route_stats, from, &payload)
            {
                return;
            }
            queued.fetch_add(1, Ordering::AcqRel);
            if queue.try_send((from, payload)).is_err() {
                queued.fetch_sub(1, Ordering::AcqRel);
                route_stats.overflow_dropped.fetch_add(1, Ordering::Relaxed);
            }
        });
        self.stats.push((name, stats));
        handle
    }

    /// Send peer messages for `service` to `handler`.
    fn route(&mut self, service: u16, handler: impl Fn(NodeId, Bytes) + Send + Sync + 'static) {
        self.routes.insert(service, Box::new(handler));
    }

    fn take_routes(&mut self) -> BTreeMap<u16, Route> {
        std::mem::take(&mut self.routes)
    }
}

/// A queue in front of one actor, drained by a task that waits for room in its inbox.
fn forwarder<A: synod_core::Actor>(
    handle: ActorHandle<A>,
    stats: Arc<ActorStats>,
    queued: Arc<AtomicUsize>,
) -> tokio::sync::mpsc::Sender<(NodeId, Bytes)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(NodeId, Bytes)>(4096);
    tokio::spawn(async move {
        while let Some((from, payload)) = rx.recv().await {
            let delivered = deliver_encoded(&handle, &stats, from, &payload).await;
            queued.fetch_sub(1, Ordering::AcqRel);
            if delivered.is_err() {
                break;
            }
        }
    });
    tx
}

fn flatten(r: Result<Result<(), DriverError>, tokio::task::JoinError>) -> Result<(), NodeError> {
    match r {
        Ok(inner) => inner.map_err(NodeError::from),
        Err(join) => Err(NodeError::Driver(DriverError::Storage {
            service: 0,
            source: std::io::Error::other(format!("actor task failed: {join}")),
        })),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Take an exclusive `flock` on `dir/LOCK`, creating `dir` if needed. The lock goes away
/// with the process, however it ends, so a SIGKILLed node never leaves a stale lock.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, NodeError> {
    use std::os::unix::io::AsRawFd;
    let io = |source| NodeError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(io)?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            return Err(NodeError::DataDirLocked(dir.to_path_buf()));
        }
        return Err(io(err));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_is_locked_by_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        assert!(matches!(
            lock_data_dir(dir.path()),
            Err(NodeError::DataDirLocked(_))
        ));
        drop(first);
        assert!(lock_data_dir(dir.path()).is_ok());
    }
}
