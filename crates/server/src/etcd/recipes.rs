//! The concurrency recipes that the Lock and Election services are built from, written
//! as a client of this node's own KV, Lease and Watch API, as etcd's v3lock and
//! v3election servers use its clientv3/concurrency package.
//!
//! The ordering rule (the "queue" of the recipes): every contender puts one key under
//! `prefix`, attached to its lease; the key with the lowest create revision holds the
//! lock or the leadership; every other contender waits for the deletion of the key
//! created just before its own (no herd effect: each waiter watches one key).
//!
//! One improvement on etcd 3.4: after waiting, the holder re-reads its own key, and
//! fails instead of reporting success if its lease expired meanwhile (etcd issue 11456,
//! fixed the same way in 3.5). A lock from a lease is still not mutual exclusion in an
//! asynchronous network (Kleppmann 2016, Jepsen etcd 3.4.3): callers fence writes with
//! the key's create revision.

use super::pb::etcdserverpb as pb;
use super::pb::mvccpb;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The TTL etcd's session gives a lock or campaign that names no lease.
pub(crate) const DEFAULT_SESSION_TTL: i64 = 60;

/// A client of this node's own API.
#[derive(Clone)]
pub(crate) struct Recipes {
    channel: Channel,
}

/// The first key after every key that starts with `prefix` (etcd's prefix range end).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the keyspace.
    vec![0]
}

/// The key a contender with `lease` puts under `prefix`: the lease id in lowercase hex.
pub(crate) fn contender_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// What Proclaim (or a re-campaign) by a contender that no longer holds its key gets.
pub(crate) fn not_leader() -> Status {
    Status::new(Code::FailedPrecondition, "election: not leader")
}

/// The queue prefix of a lock or election name.
pub(crate) fn queue_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

fn put_op(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn get_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

fn delete_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    }
}

fn created_at(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(revision)),
        range_end: Vec::new(),
    }
}

/// The oldest key under a prefix: sorted by create revision, first one.
fn first_created(prefix: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: pb::range_request::SortOrder::Ascend as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// Where a contender stands after queueing.
pub(crate) struct Queued {
    /// The contender's key.
    pub(crate) key: Vec<u8>,
    /// Its create revision: its place in the queue, and its fencing token.
    pub(crate) revision: i64,
    /// The value stored under the key when we joined (our own, or an earlier one).
    pub(crate) value: Vec<u8>,
}

impl Recipes {
    pub(crate) fn new(channel: Channel) -> Self {
        Recipes { channel }
    }

    fn kv(&self) -> pb::kv_client::KvClient<Channel> {
        pb::kv_client::KvClient::new(self.channel.clone())
    }

    /// Grant a lease for a request that names none, as etcd's session does.
    pub(crate) async fn grant_session(&self) -> Result<i64, Status> {
        let mut lease = pb::lease_client::LeaseClient::new(self.channel.clone());
        let granted = lease
            .lease_grant(pb::LeaseGrantRequest {
                ttl: DEFAULT_SESSION_TTL,
                id: 0,
            })
            .await?
            .into_inner();
        if !granted.error.is_empty() {
            return Err(Status::internal(granted.error));
        }
        Ok(granted.id)
    }

    /// Join the queue under `prefix` with `lease`, storing `value` if the key is new.
    pub(crate) async fn enqueue(
        &self,
        prefix: &[u8],
        lease: i64,
        value: &[u8],
    ) -> Result<Queued, Status> {
        let key = contender_key(prefix, lease);
        let txn = pb::TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![put_op(&key, value, lease)],
            failure: vec![get_op(&key)],
        };
        let response = self.kv().txn(txn).await?.into_inner();
        if response.succeeded {
            let revision = response.header.as_ref().map_or(0, |h| h.revision);
            return Ok(Queued {
                key,
                revision,
                value: value.to_vec(),
            });
        }
        // The key already existed (a retried request): keep its place in the queue.
        let existing = response
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(pb::response_op::Response::ResponseRange(range)) => {
                    range.kvs.into_iter().next()
                }
                _ => None,
            });
        match existing {
            Some(kv) => Ok(Queued {
                key,
                revision: kv.create_revision,
                value: kv.value,
            }),
            // Deleted between the compare and now: its lease ended.
            None => Err(Status::new(
                Code::NotFound,
                "etcdserver: requested lease not found",
            )),
        }
    }

    /// Queue under `name/` with `lease` (a fresh session lease when 0) and `value`, wait
    /// for our turn, and return our place and lease once we hold it.
    pub(crate) async fn acquire(
        &self,
        name: &[u8],
        lease: i64,
        value: &[u8],
    ) -> Result<(Queued, i64), Status> {
        let lease = if lease == 0 {
            self.grant_session().await?
        } else {
            lease
        };
        let prefix = queue_prefix(name);
        let queued = self.enqueue(&prefix, lease, value).await?;
        let guard = AbandonGuard::new(self, &queued.key, queued.revision);
        // A retried campaign with a new value proclaims it before waiting.
        if queued.value != value {
            let (updated, _) = self
                .put_if_created(&queued.key, queued.revision, value, lease)
                .await?;
            if !updated {
                return Err(not_leader());
            }
        }
        self.wait_for_turn(&prefix, queued.revision).await?;
        // Our lease may have run out while we waited: then we hold nothing.
        if !self.still_held(&queued.key, queued.revision).await? {
            return Err(Status::new(
                Code::NotFound,
                "etcdserver: requested lease not found",
            ));
        }
        guard.disarm();
        Ok((queued, lease))
    }

    /// Wait until no key under `prefix` was created before `revision`: every earlier
    /// contender has released, resigned or lost its lease.
    pub(crate) async fn wait_for_turn(&self, prefix: &[u8], revision: i64) -> Result<(), Status> {
        loop {
            let newest_before = pb::RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: 1,
                sort_order: pb::range_request::SortOrder::Descend as i32,
                sort_target: pb::range_request::SortTarget::Create as i32,
                max_create_revision: revision - 1,
                ..Default::default()
            };
            let found = self.kv().range(newest_before).await?.into_inner();
            let Some(ahead) = found.kvs.into_iter().next() else {
                return Ok(());
            };
            let seen = found.header.map_or(0, |h| h.revision);
            self.wait_deleted(&ahead.key, seen + 1).await?;
        }
    }

    /// Wait for a delete of `key` at or after `start_revision`.
    async fn wait_deleted(&self, key: &[u8], start_revision: i64) -> Result<(), Status> {
        let mut events = self.watch(key, Vec::new(), start_revision).await?;
        while let Some(event) = events.next().await {
            if event?.r#type == mvccpb::event::EventType::Delete as i32 {
                return Ok(());
            }
        }
        Err(Status::unavailable("etcdserver: watch stream closed"))
    }

    /// A stream of events on `key..range_end` from `start_revision`.
    pub(crate) async fn watch(
        &self,
        key: &[u8],
        range_end: Vec<u8>,
        start_revision: i64,
    ) -> Result<WatchEvents, Status> {
        let mut client = pb::watch_client::WatchClient::new(self.channel.clone());
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: key.to_vec(),
                    range_end,
                    start_revision,
                    ..Default::default()
                },
            )),
        };
        // Keep the request stream open for as long as the caller reads events: a
        // closed request stream ends the watch on some servers.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(create)
            .await
            .map_err(|_| Status::internal("watch request channel closed"))?;
        let responses = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(WatchEvents {
            responses,
            buffered: std::collections::VecDeque::new(),
            _requests: tx,
        })
    }

    /// The oldest key under `prefix` and the header of the read.
    pub(crate) async fn first(
        &self,
        prefix: &[u8],
    ) -> Result<(Option<mvccpb::KeyValue>, Option<pb::ResponseHeader>), Status> {
        let found = self.kv().range(first_created(prefix)).await?.into_inner();
        Ok((found.kvs.into_iter().next(), found.header))
    }

    /// Our key, if it still exists with the create revision we queued at.
    pub(crate) async fn still_held(&self, key: &[u8], revision: i64) -> Result<bool, Status> {
        let found = self.kv().range(get_single(key)).await?.into_inner();
        Ok(found
            .kvs
            .first()
            .is_some_and(|kv| kv.create_revision == revision))
    }

    /// Put `value` under `key` only if it was created at `revision`.
    pub(crate) async fn put_if_created(
        &self,
        key: &[u8],
        revision: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<(bool, Option<pb::ResponseHeader>), Status> {
        let txn = pb::TxnRequest {
            compare: vec![created_at(key, revision)],
            success: vec![put_op(key, value, lease)],
            failure: Vec::new(),
        };
        let response = self.kv().txn(txn).await?.into_inner();
        Ok((response.succeeded, response.header))
    }

    /// Delete `key` only if it was created at `revision`.
    pub(crate) async fn delete_if_created(
        &self,
        key: &[u8],
        revision: i64,
    ) -> Result<(bool, Option<pb::ResponseHeader>), Status> {
        let txn = pb::TxnRequest {
            compare: vec![created_at(key, revision)],
            success: vec![delete_op(key)],
            failure: Vec::new(),
        };
        let response = self.kv().txn(txn).await?.into_inner();
        Ok((response.succeeded, response.header))
    }

    /// Delete `key` whatever its revision.
    pub(crate) async fn delete(&self, key: &[u8]) -> Result<Option<pb::ResponseHeader>, Status> {
        let response = self
            .kv()
            .delete_range(pb::DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(response.header)
    }
}

/// The events of one watch, one at a time.
pub(crate) struct WatchEvents {
    responses: tonic::Streaming<pb::WatchResponse>,
    buffered: std::collections::VecDeque<mvccpb::Event>,
    /// Held so that the request stream, and with it the watch, stays open.
    _requests: tokio::sync::mpsc::Sender<pb::WatchRequest>,
}

impl WatchEvents {
    /// The next event; `None` when the server ends the stream.
    pub(crate) async fn next(&mut self) -> Option<Result<mvccpb::Event, Status>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(Ok(event));
            }
            match self.responses.next().await? {
                Err(e) => return Some(Err(e)),
                Ok(r) if r.canceled => {
                    let reason = if r.cancel_reason.is_empty() {
                        "etcdserver: watch canceled".to_string()
                    } else {
                        r.cancel_reason
                    };
                    return Some(Err(Status::new(Code::OutOfRange, reason)));
                }
                Ok(r) => self.buffered.extend(r.events),
            }
        }
    }
}

fn get_single(key: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

/// Deletes a contender's key if the request that queued it goes away before it is
/// answered (the client hung up or timed out), so an abandoned waiter does not hold
/// the lock when its turn comes.
pub(crate) struct AbandonGuard {
    recipes: Recipes,
    key: Option<(Vec<u8>, i64)>,
}

impl AbandonGuard {
    pub(crate) fn new(recipes: &Recipes, key: &[u8], revision: i64) -> Self {
        AbandonGuard {
            recipes: recipes.clone(),
            key: Some((key.to_vec(), revision)),
        }
    }

    /// The request was answered: keep the key.
    pub(crate) fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some((key, revision)) = self.key.take() {
            let recipes = self.recipes.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = recipes.delete_if_created(&key, revision).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"lock/"), b"lock0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn contender_keys_are_prefix_and_lowercase_hex_lease() {
        assert_eq!(
            contender_key(&queue_prefix(b"job"), 0x694d_7a1b),
            b"job/694d7a1b".to_vec()
        );
    }
}
