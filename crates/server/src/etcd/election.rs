//! v3electionpb.Election: Campaign, Proclaim, Leader, Observe and Resign, built on the
//! recipes in [`super::recipes`].
//!
//! The leader of `name` is the oldest key under `name/`; its value is the leader's
//! proclamation. Campaign queues like a lock and returns once the caller leads; Proclaim
//! and Resign act only if the caller's key still has the create revision it won with, so
//! a deposed leader cannot overwrite its successor.

use super::pb::etcdserverpb::ResponseHeader;
use super::pb::mvccpb;
use super::pb::v3electionpb as pb;
use super::recipes::{not_leader, prefix_end, queue_prefix, Recipes};
use super::EtcdNode;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

pub(crate) struct ElectionApi(pub(crate) Arc<EtcdNode>, pub(crate) Recipes);

fn no_leader() -> Status {
    Status::new(Code::NotFound, "election: no leader")
}

fn missing_leader_key() -> Status {
    Status::invalid_argument("\"leader\" field must be provided")
}

type Observed = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::election_server::Election for ElectionApi {
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let req = request.into_inner();
        let (queued, lease) = self.1.acquire(&req.name, req.lease, &req.value).await?;
        Ok(Response::new(pb::CampaignResponse {
            header: self.0.header(0),
            leader: Some(pb::LeaderKey {
                name: req.name,
                key: queued.key,
                rev: queued.revision,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let req = request.into_inner();
        let leader = req.leader.ok_or_else(missing_leader_key)?;
        let (updated, header) = self
            .1
            .put_if_created(&leader.key, leader.rev, &req.value, leader.lease)
            .await?;
        if !updated {
            return Err(not_leader());
        }
        Ok(Response::new(pb::ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let prefix = queue_prefix(&request.into_inner().name);
        match self.1.first(&prefix).await? {
            (Some(kv), header) => Ok(Response::new(pb::LeaderResponse {
                header,
                kv: Some(kv),
            })),
            (None, _) => Err(no_leader()),
        }
    }

    type ObserveStream = Observed;

    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let prefix = queue_prefix(&request.into_inner().name);
        let (tx, rx) = mpsc::channel(16);
        let recipes = self.1.clone();
        tokio::spawn(async move {
            if let Err(e) = observe(&recipes, &prefix, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let leader = request.into_inner().leader.ok_or_else(missing_leader_key)?;
        // Resigning after losing the leadership is not an error (etcd behaves the same).
        let (_, header) = self.1.delete_if_created(&leader.key, leader.rev).await?;
        Ok(Response::new(pb::ResignResponse {
            header: header.or_else(|| self.0.header(0)),
        }))
    }
}

/// Send every leader of `prefix`, and every new proclamation of each, until the client
/// goes away. Returns only on an error or a closed stream.
async fn observe(
    recipes: &Recipes,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<pb::LeaderResponse, Status>>,
) -> Result<(), Status> {
    let send = |kv: mvccpb::KeyValue, header: Option<ResponseHeader>| {
        tx.send(Ok(pb::LeaderResponse {
            header,
            kv: Some(kv),
        }))
    };
    loop {
        let (first, header) = recipes.first(prefix).await?;
        let seen = header.as_ref().map_or(0, |h| h.revision);
        let leader = match first {
            Some(kv) => kv,
            // Nobody leads: the first key put under the prefix will.
            None => {
                let mut events = recipes.watch(prefix, prefix_end(prefix), seen + 1).await?;
                loop {
                    match events.next().await {
                        Some(event) => {
                            let event = event?;
                            if event.r#type == mvccpb::event::EventType::Put as i32 {
                                if let Some(kv) = event.kv {
                                    break kv;
                                }
                            }
                        }
                        None => return Err(Status::unavailable("etcdserver: watch closed")),
                    }
                }
            }
        };
        let from = leader.mod_revision + 1;
        let key = leader.key.clone();
        if send(leader, header).await.is_err() {
            return Ok(());
        }
        // Follow this leader's proclamations until its key goes.
        let mut events = recipes.watch(&key, Vec::new(), from).await?;
        loop {
            let Some(event) = events.next().await else {
                return Err(Status::unavailable("etcdserver: watch closed"));
            };
            let event = event?;
            if event.r#type == mvccpb::event::EventType::Delete as i32 {
                break;
            }
            if let Some(kv) = event.kv {
                if send(kv, None).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
