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

pub mod compactor;
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
pub use compactor::AutoCompaction;
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
        if let (Some(policy), Some(host)) = (self.auto_compaction(), self.ranges()) {
            tokio::spawn(Arc::clone(&self).compact_ranges(Arc::clone(host), policy));
        }
        if let Some(host) = self.ranges() {
            // Revoke the leases the meta group's leader finds expired.
            tokio::spawn(ranges_lease::reap(Arc::clone(host)));
        }
        // Lock and Election are clients of this node's own KV, Lease and Watch API.
        let recipes = self.peers.get(&self.me).cloned().map(recipes::Recipes::new);
        let incoming = perf::client_connections(listener);
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
        // With --ranges the ranges are compacted instead (`compact_ranges`).
        let mut compactor = self
            .auto_compaction()
            .filter(|_| self.ranges().is_none())
            .map(|policy| compactor::Compactor::new(policy, self.revision_check()));
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
                        (sm.revision().0, sm.compacted_revision().0),
                        proposals,
                        events,
                    )
                })
                .await
            else {
                return;
            };
            let (term, leader, (revision, compacted), (expired, checkpoints), events) = found;
            if let Some(c) = compactor.as_mut() {
                self.auto_compact(c, leader == Some(me), revision, compacted);
            }
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

impl EtcdNode {
    /// The automatic compaction the cluster file asks for (validated when it was read).
    fn auto_compaction(&self) -> Option<AutoCompaction> {
        self.config.auto_compaction().ok().flatten()
    }

    fn revision_check(&self) -> Duration {
        Duration::from_millis(self.config.tuning.auto_compaction_revision_check_ms.max(1))
    }

    /// One step of the single group's compactor: on the leader, propose `Compact` through
    /// the log when a run is due (etcd's compactor calls its own server's Compact).
    fn auto_compact(
        &self,
        compactor: &mut compactor::Compactor,
        leading: bool,
        revision: i64,
        compacted: i64,
    ) {
        if !leading {
            return compactor.pause();
        }
        compactor.compacted_at(compacted);
        let Some(at) = compactor.tick(self.epoch.elapsed(), revision) else {
            return;
        };
        let gateway = Arc::clone(&self.gateway);
        tokio::spawn(async move {
            let command = synod_protocols::mvcc::MvccCommand::Compact(
                synod_protocols::mvcc::CompactionRequest {
                    revision: at,
                    physical: false,
                },
            );
            match gateway.write(command).await {
                Ok(Ok(_)) => tracing::info!(revision = at, "auto-compaction finished"),
                // Already compacted past it, or no leader now: the next run tries again.
                other => tracing::info!(revision = at, outcome = ?other, "auto-compaction skipped"),
            }
        });
    }

    /// The compactor over the ranges: runs on the node that leads the meta group (which
    /// keeps the timestamp oracle, whose counter is the revision, and the cluster's
    /// compact revision), reading both from its own replica; a due run compacts every
    /// range as the Compact RPC does.
    async fn compact_ranges(
        self: Arc<Self>,
        host: Arc<crate::txn::TxnHost>,
        policy: AutoCompaction,
    ) {
        use synod_protocols::txn::{RangeId, Timestamp};
        let mut compactor = compactor::Compactor::new(policy, self.revision_check());
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(meta) = host
                .node()
                .inspect(|node| {
                    node.group(RangeId::META).map(|r| {
                        let s = r.state_machine().state();
                        (r.role() == Role::Leader, s.oracle.0, s.compacted.0)
                    })
                })
                .await
            else {
                return;
            };
            let Some((true, oracle, compacted)) = meta else {
                compactor.pause();
                continue;
            };
            let as_revision = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
            compactor.compacted_at(as_revision(compacted));
            let Some(at) = compactor.tick(self.epoch.elapsed(), as_revision(oracle)) else {
                continue;
            };
            let at = Timestamp(u64::try_from(at).unwrap_or(0));
            match host.compact(at).await {
                Ok(_) => tracing::info!(revision = at.0, "auto-compaction of the ranges finished"),
                Err(e) => tracing::info!(revision = at.0, error = %e, "auto-compaction skipped"),
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
