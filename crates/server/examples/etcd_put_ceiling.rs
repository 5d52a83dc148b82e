//! The writes/s ceiling of the client protocol alone on this machine: a gRPC server with
//! synod's etcd API types and tonic settings that answers every Put at once, with no
//! Raft, no MVCC and no disk. `bench/etcd-put-ceiling.sh` starts three of these and runs
//! `etcdctl check perf` against them, so what etcdctl plus tonic can do on the same two
//! cores bounds what any cluster behind the same front end can do.
//!
//! tonic's `serve(addr)` sets `TCP_NODELAY` on each connection, as synod's client port does.
//!
//! Usage: `etcd_put_ceiling ADDR` (e.g. `127.0.0.1:23101`). Range answers "no keys" (check
//! perf asks that its prefix is empty before it starts), DeleteRange "nothing deleted".

use synod_server::etcd::pb::etcdserverpb as pb;
use tonic::{Request, Response, Status};

struct Answer;

fn header() -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: 1,
        member_id: 1,
        revision: 1,
        raft_term: 1,
    })
}

#[tonic::async_trait]
impl pb::kv_server::Kv for Answer {
    async fn range(
        &self,
        _: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        Ok(Response::new(pb::RangeResponse {
            header: header(),
            ..Default::default()
        }))
    }

    async fn put(&self, _: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        Ok(Response::new(pb::PutResponse {
            header: header(),
            prev_kv: None,
        }))
    }

    async fn delete_range(
        &self,
        _: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        Ok(Response::new(pb::DeleteRangeResponse {
            header: header(),
            ..Default::default()
        }))
    }

    async fn txn(&self, _: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        Err(Status::unimplemented("not in the ceiling server"))
    }

    async fn compact(
        &self,
        _: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        Err(Status::unimplemented("not in the ceiling server"))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .ok_or("usage: etcd_put_ceiling ADDR")?
        .parse()?;
    let runtime = synod_server::node_runtime::build()?;
    runtime.block_on(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .add_service(pb::kv_server::KvServer::new(Answer))
            .serve(addr)
            .await
    })?;
    Ok(())
}
