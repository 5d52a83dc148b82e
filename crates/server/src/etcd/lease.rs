//! etcdserverpb.Lease: grant and revoke go through the log; keep-alives and
//! time-to-live are answered by the leader's lessor, which keeps the deadlines. A node
//! that is not the leader forwards them to the leader's client port, as etcd forwards
//! LeaseRenew to its leader. With `synod up --ranges` every call is served over the
//! ranges' lease table instead (etcd/ranges_lease.rs).

use super::pb::etcdserverpb as pb;
use super::{gateway_status, mvcc_status, ranges_lease, EtcdNode};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use synod_core::NodeId;
use synod_protocols::mvcc::{LeaseCheckpoint, LeaseId, LessorError, MvccCommand, MvccResponse};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub(crate) struct LeaseApi(pub(crate) Arc<EtcdNode>);

/// What the leader's lessor answered for one lease.
enum Local<T> {
    Answer(T),
    /// This node's lessor is not primary: ask the leader.
    NotLeader,
}

impl LeaseApi {
    fn leader(&self) -> Result<NodeId, Status> {
        match self.0.leader.load(Ordering::Relaxed) {
            0 => Err(Status::unavailable("etcdserver: no leader")),
            id => Ok(NodeId(id as u32)),
        }
    }

    /// A client of the leader's Lease service, over the channel kept to its node.
    fn leader_client(
        &self,
    ) -> Result<pb::lease_client::LeaseClient<tonic::transport::Channel>, Status> {
        let leader = self.leader()?;
        self.0
            .peers
            .get(&leader)
            .map(|channel| pb::lease_client::LeaseClient::new(channel.clone()))
            .ok_or_else(|| Status::unavailable("etcdserver: no leader"))
    }

    /// Renew `id` on this node's lessor if it is the leader's: the new TTL (0: unknown
    /// lease).
    async fn renew_local(&self, id: i64) -> Result<Local<i64>, Status> {
        let lessor = Arc::clone(&self.0.lessor);
        let now = self.0.now();
        let outcome = self
            .0
            .raft
            .inspect(move |r| {
                let mut lessor = lessor.lock().unwrap_or_else(|e| e.into_inner());
                lessor.renew(now, LeaseId(id), r.state_machine())
            })
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        match outcome {
            Ok(renewal) => {
                if renewal.clear_checkpoint {
                    // A renewed lease restarts from its full TTL after a failover too.
                    let gateway = Arc::clone(&self.0.gateway);
                    tokio::spawn(async move {
                        let checkpoints = vec![LeaseCheckpoint {
                            id: LeaseId(id),
                            remaining_ttl: 0,
                        }];
                        let _ = gateway
                            .write(MvccCommand::LeaseCheckpoint { checkpoints })
                            .await;
                    });
                }
                Ok(Local::Answer(renewal.ttl))
            }
            Err(LessorError::LeaseNotFound) => Ok(Local::Answer(0)),
            Err(LessorError::NotPrimary) => Ok(Local::NotLeader),
        }
    }

    async fn renew(&self, id: i64) -> Result<i64, Status> {
        if let Some(host) = self.0.ranges() {
            return ranges_lease::keep_alive(host, id).await;
        }
        if let Local::Answer(ttl) = self.renew_local(id).await? {
            return Ok(ttl);
        }
        let mut client = self.leader_client()?;
        let mut replies = client
            .lease_keep_alive(tokio_stream::iter([pb::LeaseKeepAliveRequest { id }]))
            .await?
            .into_inner();
        match replies.next().await {
            Some(Ok(reply)) => Ok(reply.ttl),
            Some(Err(status)) => Err(status),
            None => Err(Status::unavailable("etcdserver: request timed out")),
        }
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseApi {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        if let Some(host) = self.0.ranges() {
            return ranges_lease::grant(&self.0, host, req)
                .await
                .map(Response::new);
        }
        let command = MvccCommand::LeaseGrant {
            id: LeaseId(req.id),
            ttl: req.ttl,
        };
        match self
            .0
            .gateway
            .write(command)
            .await
            .map_err(gateway_status)?
            .map_err(mvcc_status)?
        {
            MvccResponse::LeaseGrant { revision, id, ttl } => {
                Ok(Response::new(pb::LeaseGrantResponse {
                    header: self.0.header(revision),
                    id: id.0,
                    ttl,
                    error: String::new(),
                }))
            }
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = LeaseId(request.into_inner().id);
        if let Some(host) = self.0.ranges() {
            return ranges_lease::revoke(&self.0, host, id.0)
                .await
                .map(Response::new);
        }
        match self
            .0
            .gateway
            .write(MvccCommand::LeaseRevoke { id })
            .await
            .map_err(gateway_status)?
            .map_err(mvcc_status)?
        {
            MvccResponse::Lease { revision } => Ok(Response::new(pb::LeaseRevokeResponse {
                header: self.0.header(revision),
            })),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let api = LeaseApi(Arc::clone(&self.0));
        tokio::spawn(async move {
            while let Some(Ok(req)) = incoming.next().await {
                let reply = api
                    .renew(req.id)
                    .await
                    .map(|ttl| pb::LeaseKeepAliveResponse {
                        header: api.0.header(0),
                        id: req.id,
                        ttl,
                    });
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        if let Some(host) = self.0.ranges() {
            return ranges_lease::time_to_live(&self.0, host, req)
                .await
                .map(Response::new);
        }
        let lessor = Arc::clone(&self.0.lessor);
        let now = self.0.now();
        let (primary, found) = self
            .0
            .raft
            .inspect(move |r| {
                let lessor = lessor.lock().unwrap_or_else(|e| e.into_inner());
                let lease = r.state_machine().lease(LeaseId(req.id)).map(|l| {
                    (
                        l.ttl,
                        lessor.remaining(now, LeaseId(req.id)).unwrap_or(l.ttl),
                        l.keys.iter().cloned().collect::<Vec<_>>(),
                    )
                });
                (lessor.is_primary(), lease)
            })
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        if !primary {
            let mut client = self.leader_client()?;
            return client.lease_time_to_live(req).await;
        }
        let (granted, remaining, keys) = found.unwrap_or((0, -1, Vec::new()));
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: self.0.header(0),
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys: if req.keys { keys } else { Vec::new() },
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        if let Some(host) = self.0.ranges() {
            return ranges_lease::leases(&self.0, host).await.map(Response::new);
        }
        let ids = self
            .0
            .raft
            .inspect(|r| {
                r.state_machine()
                    .leases()
                    .map(|(id, _)| id.0)
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.0.header(0),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
