//! v3lockpb.Lock: Lock and Unlock, built on the recipes in [`super::recipes`].
//!
//! Lock waits until the caller's key is the oldest under `name/` and returns that key;
//! the key lives as long as the lease, so a holder that dies releases the lock when its
//! lease expires. Unlock deletes the key.

use super::pb::v3lockpb as pb;
use super::recipes::Recipes;
use super::EtcdNode;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub(crate) struct LockApi(pub(crate) Arc<EtcdNode>, pub(crate) Recipes);

#[tonic::async_trait]
impl pb::lock_server::Lock for LockApi {
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let req = request.into_inner();
        let (queued, _) = self.1.acquire(&req.name, req.lease, b"").await?;
        Ok(Response::new(pb::LockResponse {
            header: self.0.header(0),
            key: queued.key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let key = request.into_inner().key;
        let header = self.1.delete(&key).await?;
        Ok(Response::new(pb::UnlockResponse { header }))
    }
}
