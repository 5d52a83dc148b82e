//! etcdserverpb.Watch: a bidirectional stream of create, cancel and progress requests.
//!
//! Events come from this node's own replica: every few milliseconds the background task
//! asks the state machine for each watcher's events after the last revision it was sent
//! ([`synod_protocols::mvcc::MvccStateMachine::events_after`]). A watcher only moves
//! forward once its batch is queued on its stream, so delivery is ordered and has no gaps
//! or duplicates, whichever node is leader.

use super::convert::event_to_pb;
use super::pb::etcdserverpb as pb;
use super::EtcdNode;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use synod_protocols::mvcc::{Event, EventKind, MvccError, MvccStateMachine, Revision};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Reply = Result<pb::WatchResponse, Status>;

struct Watcher {
    watch_id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// Every event up to this revision has been sent.
    sent_through: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    /// Send an empty response now and then while nothing happens (progress_notify).
    progress_notify: bool,
    /// Nothing was sent since the last progress round.
    quiet: bool,
    tx: mpsc::Sender<Reply>,
}

/// Every watcher on this node, across streams.
#[derive(Default)]
pub(crate) struct Hub {
    watchers: Mutex<BTreeMap<u64, Watcher>>,
    next: std::sync::atomic::AtomicU64,
}

/// One watcher's question to the replica.
pub(crate) struct Pending {
    id: u64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    after: i64,
}

/// The replica's answer: events after `after` up to `through`, or the compact revision.
pub(crate) struct Found {
    id: u64,
    through: i64,
    events: Result<Vec<Event>, i64>,
}

/// etcd's response that cancels watch `watch_id` because the revision it needs was
/// compacted; the client reads `compact_revision` to start again.
pub(crate) fn compacted_cancel(
    header: Option<pb::ResponseHeader>,
    watch_id: i64,
    compact_revision: i64,
) -> pb::WatchResponse {
    pb::WatchResponse {
        header,
        watch_id,
        canceled: true,
        compact_revision,
        cancel_reason: MvccError::Compacted { compact_revision }.to_string(),
        ..Default::default()
    }
}

/// etcd's answer to a client's cancel request for `watch_id`.
pub(crate) fn cancel_answer(
    header: Option<pb::ResponseHeader>,
    watch_id: i64,
) -> pb::WatchResponse {
    pb::WatchResponse {
        header,
        watch_id,
        canceled: true,
        ..Default::default()
    }
}

/// Run inside the Raft actor: each watcher's new events.
pub(crate) fn collect(sm: &MvccStateMachine, pending: Vec<Pending>) -> Vec<Found> {
    let current = sm.revision().0;
    pending
        .into_iter()
        .filter(|p| p.after < current)
        .map(|p| Found {
            id: p.id,
            through: current,
            events: match sm.events_after(Revision(p.after), &p.key, &p.range_end) {
                Ok((events, _)) => Ok(events),
                Err(MvccError::Compacted { compact_revision }) => Err(compact_revision),
                Err(_) => Ok(Vec::new()),
            },
        })
        .collect()
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Watcher>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn pending(&self) -> Vec<Pending> {
        self.lock()
            .iter()
            .map(|(id, w)| Pending {
                id: *id,
                key: w.key.clone(),
                range_end: w.range_end.clone(),
                after: w.sent_through,
            })
            .collect()
    }

    pub(crate) fn deliver(&self, node: &EtcdNode, found: Vec<Found>) {
        let mut watchers = self.lock();
        for f in found {
            let Some(w) = watchers.get_mut(&f.id) else {
                continue;
            };
            match f.events {
                Ok(events) => {
                    let events: Vec<_> = events
                        .into_iter()
                        .filter(|e| match e.kind {
                            EventKind::Put => !w.no_put,
                            EventKind::Delete => !w.no_delete,
                        })
                        .map(|e| event_to_pb(e, w.prev_kv))
                        .collect();
                    if events.is_empty() {
                        w.sent_through = f.through;
                        continue;
                    }
                    let reply = pb::WatchResponse {
                        header: node.header(f.through),
                        watch_id: w.watch_id,
                        events,
                        ..Default::default()
                    };
                    match w.tx.try_send(Ok(reply)) {
                        Ok(()) => {
                            w.sent_through = f.through;
                            w.quiet = false;
                        }
                        // A slow reader: try again next round, from the same revision.
                        Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            watchers.remove(&f.id);
                        }
                    }
                }
                Err(compact_revision) => {
                    let _ = w.tx.try_send(Ok(compacted_cancel(
                        node.header(0),
                        w.watch_id,
                        compact_revision,
                    )));
                    watchers.remove(&f.id);
                }
            }
        }
    }
}

impl Hub {
    /// One progress round (etcd sends one every 10 minutes by default): each
    /// progress_notify watcher that is caught up with `current` and was sent nothing
    /// since the last round gets an empty response whose header carries `current`, so
    /// its client knows it has seen everything up to there.
    pub(crate) fn progress(
        &self,
        current: i64,
        header: impl Fn(i64) -> Option<pb::ResponseHeader>,
    ) {
        for w in self.lock().values_mut() {
            if !w.progress_notify {
                continue;
            }
            if w.quiet && w.sent_through >= current {
                let notice = pb::WatchResponse {
                    header: header(current),
                    watch_id: w.watch_id,
                    ..Default::default()
                };
                // A full stream has news coming anyway; skip this round for it.
                let _ = w.tx.try_send(Ok(notice));
            }
            w.quiet = true;
        }
    }
}

pub(crate) struct WatchApi(pub(crate) Arc<EtcdNode>);

type WatchStream = Pin<Box<dyn Stream<Item = Reply> + Send + 'static>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchApi {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if let Some(host) = self.0.ranges() {
            let stream = super::ranges_watch::watch(
                Arc::clone(&self.0),
                Arc::clone(host),
                request.into_inner(),
            );
            return Ok(Response::new(stream));
        }
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel::<Reply>(1024);
        let node = Arc::clone(&self.0);
        tokio::spawn(async move {
            use pb::watch_request::RequestUnion;
            // This stream's watchers: watch id → hub id.
            let mut mine: BTreeMap<i64, u64> = BTreeMap::new();
            let mut next_watch_id = 0i64;
            while let Some(Ok(req)) = incoming.next().await {
                match req.request_union {
                    Some(RequestUnion::CreateRequest(c)) => {
                        let watch_id = if c.watch_id > 0 {
                            c.watch_id
                        } else {
                            next_watch_id
                        };
                        next_watch_id = next_watch_id.max(watch_id + 1);
                        let Ok((current, compacted)) = node
                            .raft
                            .inspect(|r| {
                                let sm = r.state_machine();
                                (sm.revision().0, sm.compacted_revision().0)
                            })
                            .await
                        else {
                            break;
                        };
                        let start = if c.start_revision > 0 {
                            c.start_revision
                        } else {
                            current + 1
                        };
                        // The created response comes before any event.
                        let created = pb::WatchResponse {
                            header: node.header(current),
                            watch_id,
                            created: true,
                            ..Default::default()
                        };
                        if tx.send(Ok(created)).await.is_err() {
                            break;
                        }
                        if start <= compacted {
                            let canceled =
                                compacted_cancel(node.header(current), watch_id, compacted);
                            let _ = tx.send(Ok(canceled)).await;
                            continue;
                        }
                        let filters: Vec<i32> = c.filters;
                        let id = node.watch.next.fetch_add(1, Ordering::Relaxed);
                        node.watch.lock().insert(
                            id,
                            Watcher {
                                watch_id,
                                key: c.key,
                                range_end: c.range_end,
                                sent_through: start - 1,
                                prev_kv: c.prev_kv,
                                no_put: filters.contains(&0),
                                no_delete: filters.contains(&1),
                                progress_notify: c.progress_notify,
                                quiet: true,
                                tx: tx.clone(),
                            },
                        );
                        mine.insert(watch_id, id);
                    }
                    Some(RequestUnion::CancelRequest(c)) => {
                        if let Some(id) = mine.remove(&c.watch_id) {
                            node.watch.lock().remove(&id);
                            let canceled = cancel_answer(node.header(0), c.watch_id);
                            if tx.send(Ok(canceled)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        let progress = pb::WatchResponse {
                            header: node.header(0),
                            watch_id: -1,
                            ..Default::default()
                        };
                        if tx.send(Ok(progress)).await.is_err() {
                            break;
                        }
                    }
                    None => {}
                }
            }
            let mut watchers = node.watch.lock();
            for id in mine.values() {
                watchers.remove(id);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher(watch_id: i64, progress_notify: bool, tx: mpsc::Sender<Reply>) -> Watcher {
        Watcher {
            watch_id,
            key: b"k".to_vec(),
            range_end: Vec::new(),
            sent_through: 10,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify,
            quiet: true,
            tx,
        }
    }

    fn header(revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            revision,
            ..Default::default()
        })
    }

    #[test]
    fn progress_goes_only_to_quiet_caught_up_watchers_that_asked() {
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(16);
        hub.lock().insert(1, watcher(7, true, tx.clone()));
        hub.lock().insert(2, watcher(8, false, tx.clone()));
        hub.progress(10, header);
        let notice = rx.try_recv().expect("a progress notice").unwrap();
        assert_eq!(notice.watch_id, 7);
        assert!(notice.events.is_empty() && !notice.created && !notice.canceled);
        assert_eq!(notice.header.unwrap().revision, 10);
        assert!(rx.try_recv().is_err(), "watch 8 did not ask for progress");

        // Behind the current revision: events are on their way, so no notice.
        hub.progress(12, header);
        assert!(rx.try_recv().is_err());

        // A watcher that was just sent events is not quiet until the next round.
        hub.lock().get_mut(&1).unwrap().sent_through = 12;
        hub.lock().get_mut(&1).unwrap().quiet = false;
        hub.progress(12, header);
        assert!(rx.try_recv().is_err());
        hub.progress(12, header);
        assert_eq!(rx.try_recv().unwrap().unwrap().watch_id, 7);
    }
}
