//! etcdserverpb.KV: Range, Put, DeleteRange, Txn and Compact.

use super::convert;
use super::pb::etcdserverpb as pb;
use super::{gateway_status, mvcc_status, ranges, EtcdNode};
use std::sync::Arc;
use synod_protocols::mvcc::{CompactionRequest, MvccCommand, MvccResponse};
use tonic::{Request, Response, Status};

pub(crate) struct KvApi(pub(crate) Arc<EtcdNode>);

impl KvApi {
    /// Apply a command through the log and return its response.
    async fn write(&self, command: MvccCommand) -> Result<MvccResponse, Status> {
        self.0
            .gateway
            .write(command)
            .await
            .map_err(gateway_status)?
            .map_err(mvcc_status)
    }
}

fn unexpected(r: MvccResponse) -> Status {
    Status::internal(format!("unexpected state machine response {r:?}"))
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvApi {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = request.into_inner();
        if let Some(host) = self.0.ranges() {
            return Ok(Response::new(ranges::range(&self.0, host, req).await?));
        }
        let serializable = req.serializable;
        let range = convert::range_from_pb(req);
        let header = self.0.header_fn();
        let response = if serializable {
            // Serializable: this replica's state, possibly behind the leader's.
            self.0
                .raft
                .inspect(move |r| r.state_machine().range(&range))
                .await
                .map_err(|_| Status::unavailable("etcdserver: server stopped"))?
                .map_err(mvcc_status)?
        } else {
            match self
                .0
                .gateway
                .read(MvccCommand::Range(range))
                .await
                .map_err(gateway_status)?
                .map_err(mvcc_status)?
            {
                MvccResponse::Range(r) => r,
                other => return Err(unexpected(other)),
            }
        };
        Ok(Response::new(convert::range_to_pb(response, &header)))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        if let Some(host) = self.0.ranges() {
            let req = request.into_inner();
            return Ok(Response::new(ranges::put(&self.0, host, req).await?));
        }
        let put = convert::put_from_pb(request.into_inner());
        match self.write(MvccCommand::Put(put)).await? {
            MvccResponse::Put(r) => Ok(Response::new(convert::put_to_pb(r, &self.0.header_fn()))),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        if let Some(host) = self.0.ranges() {
            let req = request.into_inner();
            return Ok(Response::new(
                ranges::delete_range(&self.0, host, req).await?,
            ));
        }
        let delete = convert::delete_from_pb(request.into_inner());
        match self.write(MvccCommand::DeleteRange(delete)).await? {
            MvccResponse::DeleteRange(r) => {
                Ok(Response::new(convert::delete_to_pb(r, &self.0.header_fn())))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        if let Some(host) = self.0.ranges() {
            let req = request.into_inner();
            return Ok(Response::new(ranges::txn(&self.0, host, req).await?));
        }
        let txn = convert::txn_from_pb(request.into_inner()).map_err(Status::invalid_argument)?;
        match self.write(MvccCommand::Txn(txn)).await? {
            MvccResponse::Txn(r) => Ok(Response::new(convert::txn_to_pb(r, &self.0.header_fn()))),
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        if let Some(host) = self.0.ranges() {
            let req = request.into_inner();
            return Ok(Response::new(ranges::compact(&self.0, host, req).await?));
        }
        let req = request.into_inner();
        let command = MvccCommand::Compact(CompactionRequest {
            revision: req.revision,
            physical: req.physical,
        });
        match self.write(command).await? {
            MvccResponse::Compact { revision } => Ok(Response::new(pb::CompactionResponse {
                header: self.0.header(revision),
            })),
            other => Err(unexpected(other)),
        }
    }
}
