//! The etcd v3.4-compatible gRPC API, served on each node's client port.
//!
//! Every service maps onto the Raft group of MVCC state machines
//! ([`synod_protocols::mvcc`]): writes and linearizable reads go through the
//! [`Gateway`] (forwarded to the leader from any node), serializable reads read this
//! node's replica. The leader's [`Lessor`] keeps lease deadlines and proposes expiries
//! through the log. Watches are served from this node's own replica, so a watcher sees
//! every revision in order whichever node is leader.

// tonic::Status is the error type of every gRPC handler.
#![allow(clippy::result_large_err)]

mod convert;
mod election;
mod kv;
mod lease;
mod lock;
mod maintenance;
pub mod pb;
mod perf;
mod ranges;
mod ranges_lease;
mod ranges_watch;
mod recipes;
mod watch;

use crate::config::ClusterConfig;
use crate::gateway::{Gateway, GatewayError};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use synod_core::NodeId;
use synod_protocols::mvcc::{Lessor, LessorConfig, MvccError, MvccStateMachine};
use synod_protocols::raft::{Raft, Role};
use synod_runtime::driver::ActorHandle;
use tonic::{Code, Status};

/// The Raft group every node serves the etcd API from.
pub type MvccRaft = Raft<MvccStateMachine>;

/// What the gRPC services share on one node.
pub struct EtcdNode {
    me: NodeId,
    cluster_id: u64,
    config: ClusterConfig,
    raft: ActorHandle<MvccRaft>,
    gateway: Arc<Gateway<MvccStateMachine>>,
    lessor: Arc<Mutex<Lessor>>,
    watch: Arc<watch::Hub>,
    /// Cached from the replica every few milliseconds, for response headers.
    term: AtomicU64,
    revision: AtomicI64,
    /// The leader's node id (0: none known).
    leader: AtomicU64,
    /// Monotonic time base for the lessor's [`synod_core::Instant`]s.
    epoch: std::time::Instant,
    /// A lazily connected channel to every node's client port, for what a follower
    /// forwards to the leader (lease keep-alives and time-to-live).
    peers: std::collections::BTreeMap<NodeId, tonic::transport::Channel>,
    /// With `synod up --ranges`: KV is served over the multi-Raft ranges (etcd/ranges.rs).
    ranges: std::sync::OnceLock<Arc<crate::txn::TxnHost>>,
}

/// etcd's member id for a node: here simply its number.
fn member_id(node: NodeId) -> u64 {
    u64::from(node.0)
}

/// A stable cluster id from the cluster's name (FNV-1a).
fn cluster_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl EtcdNode {
    /// The API of node `me`, over its Raft server and gateway.
    pub fn new(
        me: NodeId,
        config: ClusterConfig,
        raft: ActorHandle<MvccRaft>,
        gateway: Arc<Gateway<MvccStateMachine>>,
    ) -> Arc<Self> {
        let peers = config
            .nodes
            .iter()
            .filter_map(|n| {
                let endpoint =
                    tonic::transport::Endpoint::from_shared(format!("http://{}", n.client_addr))
                        .ok()?;
                Some((NodeId(n.id), endpoint.connect_lazy()))
            })
            .collect();
        Arc::new(EtcdNode {
            me,
            cluster_id: cluster_id(&config.cluster_id),
            config,
            raft,
            gateway,
            lessor: Arc::new(Mutex::new(Lessor::new(LessorConfig::default()))),
            watch: Arc::new(watch::Hub::default()),
            term: AtomicU64::new(0),
            revision: AtomicI64::new(1),
            leader: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            peers,
            ranges: std::sync::OnceLock::new(),
        })
    }

    /// Serve KV, Watch and Lease (and so Lock and Election) over the multi-Raft ranges
    /// (`synod up --ranges`).
    pub fn serve_over_ranges(&self, host: Arc<crate::txn::TxnHost>) {
        let _ = self.ranges.set(host);
    }

    /// The ranges' coordinator, if KV is served over the ranges.
    pub(crate) fn ranges(&self) -> Option<&Arc<crate::txn::TxnHost>> {
        self.ranges.get()
    }

    fn now(&self) -> synod_core::Instant {
        synod_core::Instant(self.epoch.elapsed().as_nanos() as u64)
    }

    /// A response header carrying `revision` (or the newest known when 0).
    pub(crate) fn header(&self, revision: i64) -> Option<pb::etcdserverpb::ResponseHeader> {
        let revision = if revision > 0 {
            revision
        } else {
            self.revision.load(Ordering::Relaxed)
        };
        Some(pb::etcdserverpb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: member_id(self.me),
            revision,
            raft_term: self.term.load(Ordering::Relaxed),
        })
    }

    fn header_fn(self: &Arc<Self>) -> convert::Header {
        let this = Arc::clone(self);
        Box::new(move |rev| this.header(rev))
    }

    /// Serve the etcd API on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        use pb::etcdserverpb::{
            cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
            maintenance_server::MaintenanceServer, watch_server::WatchServer,
        };
        let (mut health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        tokio::spawn(Arc::clone(&self).background());
        if let Some(host) = self.ranges() {
            // Revoke the leases the meta group's leader finds expired.
            tokio::spawn(ranges_lease::reap(Arc::clone(host)));
        }
        // Lock and Election are clients of this node's own KV, Lease and Watch API.
        let recipes = self.peers.get(&self.me).cloned().map(recipes::Recipes::new);
        let nodelay = perf::env_flag("SYNOD_ETCD_NODELAY");
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            move |conn| {
                if let (Ok(stream), true) = (&conn, nodelay) {
                    let _ = stream.set_nodelay(true);
                }
                conn
            },
        );
        let result = perf::server_builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .add_service(KvServer::new(kv::KvApi(Arc::clone(&self))))
            .add_service(WatchServer::new(watch::WatchApi(Arc::clone(&self))))
            .add_service(LeaseServer::new(lease::LeaseApi(Arc::clone(&self))))
            .add_service(ClusterServer::new(maintenance::ClusterApi(Arc::clone(
                &self,
            ))))
            .add_service(MaintenanceServer::new(maintenance::MaintenanceApi(
                Arc::clone(&self),
            )))
            .add_service(health_service)
            .add_optional_service(recipes.clone().map(|r| {
                pb::v3lockpb::lock_server::LockServer::new(lock::LockApi(Arc::clone(&self), r))
            }))
            .add_optional_service(recipes.map(|r| {
                pb::v3electionpb::election_server::ElectionServer::new(election::ElectionApi(
                    Arc::clone(&self),
                    r,
                ))
            }))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "etcd API server failed");
        }
    }

    /// Every few milliseconds: refresh the cached term, leader and revision, deliver
    /// watch events from this replica, and, on the leader, run the lessor.
    async fn background(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_lessor_run = std::time::Instant::now();
        let progress_every =
            Duration::from_millis(self.config.tuning.watch_progress_notify_ms.max(1));
        let mut last_progress = std::time::Instant::now();
        loop {
            tick.tick().await;
            let now = self.now();
            let run_lessor = last_lessor_run.elapsed() >= Duration::from_millis(100);
            if run_lessor {
                last_lessor_run = std::time::Instant::now();
            }
            let lessor = Arc::clone(&self.lessor);
            let watchers = self.watch.pending();
            let me = self.me;
            let Ok(found) = self
                .raft
                .inspect(move |r| {
                    let sm = r.state_machine();
                    let leader = if r.role() == Role::Leader {
                        Some(me)
                    } else {
                        r.leader()
                    };
                    let mut proposals = (Vec::new(), Vec::new());
                    if run_lessor {
                        let mut lessor = lessor.lock().unwrap_or_else(|e| e.into_inner());
                        match (r.role() == Role::Leader, lessor.is_primary()) {
                            // A new leader restarts every lease from its checkpoint,
                            // plus an election timeout of grace (etcd's extend).
                            (true, false) => lessor.promote(now, Duration::from_secs(1), sm),
                            (false, true) => lessor.demote(),
                            _ => {}
                        }
                        lessor.sync(now, sm);
                        proposals = (lessor.expired(now), lessor.checkpoints(now));
                    }
                    let events = watch::collect(sm, watchers);
                    (
                        r.current_term().0,
                        leader,
                        sm.revision().0,
                        proposals,
                        events,
                    )
                })
                .await
            else {
                return;
            };
            let (term, leader, revision, (expired, checkpoints), events) = found;
            self.term.store(term, Ordering::Relaxed);
            self.leader
                .store(leader.map_or(0, |l| u64::from(l.0)), Ordering::Relaxed);
            self.revision.store(revision, Ordering::Relaxed);
            self.watch.deliver(&self, events);
            if last_progress.elapsed() >= progress_every {
                last_progress = std::time::Instant::now();
                self.watch.progress(revision, |r| self.header(r));
            }
            if !expired.is_empty() {
                let gateway = Arc::clone(&self.gateway);
                tokio::spawn(async move {
                    let _ = gateway
                        .write(synod_protocols::mvcc::MvccCommand::LeaseExpire { ids: expired })
                        .await;
                });
            }
            if !checkpoints.is_empty() {
                let gateway = Arc::clone(&self.gateway);
                tokio::spawn(async move {
                    let _ = gateway
                        .write(synod_protocols::mvcc::MvccCommand::LeaseCheckpoint { checkpoints })
                        .await;
                });
            }
        }
    }
}

/// A gateway failure as etcd reports it: Unavailable, so clients retry.
fn gateway_status(e: GatewayError) -> Status {
    Status::new(Code::Unavailable, e.to_string())
}

/// A state machine error with etcd's code and message.
fn mvcc_status(e: MvccError) -> Status {
    let code = match e.grpc_code() {
        "OutOfRange" => Code::OutOfRange,
        "NotFound" => Code::NotFound,
        "FailedPrecondition" => Code::FailedPrecondition,
        _ => Code::InvalidArgument,
    };
    Status::new(code, e.to_string())
}
