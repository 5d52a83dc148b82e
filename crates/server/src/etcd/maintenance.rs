//! etcdserverpb.Cluster (MemberList) and etcdserverpb.Maintenance (Status).

use super::pb::etcdserverpb as pb;
use super::{member_id, EtcdNode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use synod_core::NodeId;
use tonic::{Request, Response, Status};

pub(crate) struct ClusterApi(pub(crate) Arc<EtcdNode>);

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterApi {
    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let members = self
            .0
            .config
            .nodes
            .iter()
            .map(|n| pb::Member {
                id: member_id(NodeId(n.id)),
                name: NodeId(n.id).to_string(),
                peer_ur_ls: vec![format!("https://{}", n.peer_addr)],
                client_ur_ls: vec![format!("http://{}", n.client_addr)],
                is_learner: false,
            })
            .collect();
        Ok(Response::new(pb::MemberListResponse {
            header: self.0.header(0),
            members,
        }))
    }
}

pub(crate) struct MaintenanceApi(pub(crate) Arc<EtcdNode>);

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceApi {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (commit, applied, term, db_size, revision) = self
            .0
            .raft
            .inspect(|r| {
                (
                    r.commit_index().0,
                    r.last_applied().0,
                    r.current_term().0,
                    r.state_machine().db_size(),
                    r.state_machine().revision().0,
                )
            })
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        let size = i64::try_from(db_size).unwrap_or(i64::MAX);
        Ok(Response::new(pb::StatusResponse {
            header: self.0.header(revision),
            version: "3.4.0".into(),
            db_size: size,
            leader: self.0.leader.load(Ordering::Relaxed),
            raft_index: commit,
            raft_term: term,
            raft_applied_index: applied,
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner: false,
        }))
    }
}
