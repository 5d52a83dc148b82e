//! etcd's Watch service over the multi-Raft ranges (`synod up --ranges`, issue 11).
//!
//! A watch over `[key, range_end)` is a loop of rounds ([`TxnHost::feed`]): take an
//! oracle timestamp, *close* every range that covers the interval at it, and collect the
//! committed events each range holds in the interval between the watch's position and
//! the range's resolved (closed) timestamp. A range closes only below the start
//! timestamp of its oldest pending intent (that transaction may still commit anywhere
//! above its start), and refuses one-phase commits at or below its closed timestamp, so
//! below the smallest resolved timestamp of the round nothing new can appear in the
//! interval. The watch releases exactly the events up to there, in revision order, then
//! moves its position to it. This follows CockroachDB's rangefeeds with closed
//! timestamps and TiKV's resolved-ts (min of the oldest lock's start and a timestamp
//! fetched from the oracle before the check); see docs/multiraft.md.
//!
//! Consequences, as etcd clients see them:
//! - events come in revision order, without gaps or duplicates, across range
//!   boundaries, leader changes and splits (the events of an interval and a window of
//!   timestamps do not depend on how the ranges cut it);
//! - one `WatchResponse` per revision, so the events of a Txn (even across ranges)
//!   arrive together;
//! - `start_revision` replays from the stored versions; at or below a range's compact
//!   revision (`KV.Compact`) the watch is canceled with `compact_revision`, as etcd
//!   does; without it the watch starts after the current revision;
//! - `prev_kv`, the `NOPUT`/`NODELETE` filters, `progress_notify` (an empty response
//!   with the watch's resolved revision when nothing was sent for the cluster's
//!   `watch_progress_notify_ms`), progress requests (the smallest resolved revision of
//!   the stream's watches) and cancel are supported.
//!
//! A watcher whose position is held back by an intent for more than a second pushes
//! its transaction (which aborts it if it has expired) and resolves the intent, as a
//! reader would: a coordinator that died mid-commit stops no watch for long.

use super::pb::etcdserverpb as pb;
use super::pb::mvccpb;
use super::ranges::{interval, kv_of};
use super::watch::{cancel_answer, compacted_cancel};
use super::EtcdNode;
use crate::txn::{TxnError, TxnHost};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use synod_protocols::txn::{Event, Key, Timestamp, TxnId};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

type Reply = Result<pb::WatchResponse, Status>;

/// What the Watch RPC returns.
pub(crate) type WatchStream = Pin<Box<dyn Stream<Item = Reply> + Send + 'static>>;

/// Pause between two rounds of a watch that is caught up.
const POLL: Duration = Duration::from_millis(20);
/// Most events one round asks of a range (a round that hits it goes again at once).
const ROUND_LIMIT: u64 = 512;
/// A watch held back by the same intent this long pushes its transaction.
const PUSH_AFTER: Duration = Duration::from_secs(1);

fn revision(ts: Timestamp) -> i64 {
    i64::try_from(ts.0).unwrap_or(i64::MAX)
}

/// One watch of a stream.
struct Watch {
    watch_id: i64,
    start: Key,
    end: Key,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// Every event up to here was sent.
    position: Arc<AtomicU64>,
}

/// The events of one revision as an etcd response, after the watch's filters (`None`:
/// every event was filtered out).
fn response(
    node: &EtcdNode,
    w: &Watch,
    ts: Timestamp,
    events: Vec<Event>,
) -> Option<pb::WatchResponse> {
    let events: Vec<mvccpb::Event> = events
        .into_iter()
        .filter(|e| {
            if e.row.is_some() {
                !w.no_put
            } else {
                !w.no_delete
            }
        })
        .map(|e| event_pb(e, w.prev_kv))
        .collect();
    (!events.is_empty()).then(|| pb::WatchResponse {
        header: node.header(revision(ts)),
        watch_id: w.watch_id,
        events,
        ..Default::default()
    })
}

fn event_pb(e: Event, with_prev: bool) -> mvccpb::Event {
    use super::convert::kv_to_pb;
    let (kind, kv) = match e.row {
        Some(row) => (mvccpb::event::EventType::Put, kv_of(row)),
        None => (
            mvccpb::event::EventType::Delete,
            synod_protocols::mvcc::KeyValue {
                key: super::ranges::decode_key(&e.key).unwrap_or_default(),
                mod_revision: revision(e.ts),
                ..Default::default()
            },
        ),
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_to_pb(kv)),
        prev_kv: if with_prev {
            e.prev.map(|r| kv_to_pb(kv_of(r)))
        } else {
            None
        },
    }
}

/// Rounds until the stream closes or the watch is canceled (the task is aborted).
async fn run(node: Arc<EtcdNode>, host: Arc<TxnHost>, w: Watch, tx: mpsc::Sender<Reply>) {
    let progress_every = Duration::from_millis(node.config.tuning.watch_progress_notify_ms.max(1));
    let mut last_sent = Instant::now();
    let mut stuck: Option<(TxnId, Instant)> = None;
    loop {
        let after = Timestamp(w.position.load(Ordering::Acquire));
        let feed = match host.feed(&w.start, &w.end, after, ROUND_LIMIT).await {
            Ok(feed) => feed,
            Err(TxnError::Compacted(compacted)) => {
                // Its start (or, for a watch that fell behind, its position) is below a
                // range's compact revision: etcd cancels the watch and names it.
                let canceled = compacted_cancel(
                    node.header(revision(compacted)),
                    w.watch_id,
                    revision(compacted),
                );
                let _ = tx.send(Ok(canceled)).await;
                return;
            }
            Err(_) => {
                // No majority, or a node restarting: try again.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let full = feed.events.len() as u64 >= ROUND_LIMIT;
        let mut by_ts: BTreeMap<Timestamp, Vec<Event>> = BTreeMap::new();
        for e in feed.events {
            by_ts.entry(e.ts).or_default().push(e);
        }
        for (ts, events) in by_ts {
            if let Some(reply) = response(&node, &w, ts, events) {
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
            w.position.store(ts.0, Ordering::Release);
        }
        w.position
            .store(feed.resolved.0.max(after.0), Ordering::Release);
        if w.progress_notify && last_sent.elapsed() >= progress_every {
            let notice = pb::WatchResponse {
                header: node.header(revision(feed.resolved)),
                watch_id: w.watch_id,
                ..Default::default()
            };
            if tx.send(Ok(notice)).await.is_err() {
                return;
            }
            last_sent = Instant::now();
        }
        match feed.blocker.filter(|_| feed.resolved < feed.close_ts) {
            Some((meta, key)) => match stuck {
                Some((id, since)) if id == meta.id => {
                    if since.elapsed() >= PUSH_AFTER {
                        let _ = host.clear_blocker(meta, key).await;
                        stuck = None;
                    }
                }
                _ => stuck = Some((meta.id, Instant::now())),
            },
            None => stuck = None,
        }
        if !full {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The Watch RPC over the ranges: create, cancel and progress requests on one stream.
pub(crate) fn watch(
    node: Arc<EtcdNode>,
    host: Arc<TxnHost>,
    mut incoming: Streaming<pb::WatchRequest>,
) -> WatchStream {
    let (tx, rx) = mpsc::channel::<Reply>(1024);
    tokio::spawn(async move {
        use pb::watch_request::RequestUnion;
        // This stream's watches: watch id → (task, position).
        let mut mine: BTreeMap<i64, (tokio::task::JoinHandle<()>, Arc<AtomicU64>)> =
            BTreeMap::new();
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
                    let current = match host.timestamp().await {
                        Ok(ts) => ts,
                        Err(e) => {
                            let _ = tx
                                .send(Err(Status::unavailable(format!(
                                    "etcdserver: request timed out ({e})"
                                ))))
                                .await;
                            break;
                        }
                    };
                    if mine.contains_key(&watch_id) {
                        let dup = pb::WatchResponse {
                            header: node.header(revision(current)),
                            watch_id,
                            created: true,
                            canceled: true,
                            cancel_reason: "etcdserver: duplicate watch ID provided on the \
                                            same stream"
                                .into(),
                            ..Default::default()
                        };
                        if tx.send(Ok(dup)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    let after = if c.start_revision > 0 {
                        Timestamp(u64::try_from(c.start_revision - 1).unwrap_or(0))
                    } else {
                        current
                    };
                    // The created response comes before any event.
                    let created = pb::WatchResponse {
                        header: node.header(revision(current)),
                        watch_id,
                        created: true,
                        ..Default::default()
                    };
                    if tx.send(Ok(created)).await.is_err() {
                        break;
                    }
                    let position = Arc::new(AtomicU64::new(after.0));
                    let Some((start, end)) = interval(&c.key, &c.range_end) else {
                        // An empty interval: created, and never an event.
                        mine.insert(watch_id, (tokio::spawn(async {}), position));
                        continue;
                    };
                    let w = Watch {
                        watch_id,
                        start,
                        end,
                        prev_kv: c.prev_kv,
                        no_put: c.filters.contains(&0),
                        no_delete: c.filters.contains(&1),
                        progress_notify: c.progress_notify,
                        position: Arc::clone(&position),
                    };
                    let task =
                        tokio::spawn(run(Arc::clone(&node), Arc::clone(&host), w, tx.clone()));
                    mine.insert(watch_id, (task, position));
                }
                Some(RequestUnion::CancelRequest(c)) => {
                    if let Some((task, _)) = mine.remove(&c.watch_id) {
                        task.abort();
                        let canceled = cancel_answer(node.header(0), c.watch_id);
                        if tx.send(Ok(canceled)).await.is_err() {
                            break;
                        }
                    }
                }
                Some(RequestUnion::ProgressRequest(_)) => {
                    // The revision every watch of the stream has caught up with.
                    let synced = match mine.values().map(|(_, p)| p.load(Ordering::Acquire)).min() {
                        Some(p) => Timestamp(p),
                        None => host.timestamp().await.unwrap_or_default(),
                    };
                    let progress = pb::WatchResponse {
                        header: node.header(revision(synced)),
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
        for (task, _) in mine.values() {
            task.abort();
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
