//! The state machine every range's Raft group replicates: an MVCC store with intents,
//! the transaction records anchored in the range, a read-timestamp cache, and (in the
//! meta group) the timestamp oracle.

use super::msg::{
    Event, Key, RangeCommand, RangeDescriptor, RangeId, RangeOutput, RangeResult, Row, Timestamp,
    TxnId, TxnMeta, TxnStatus, Value,
};
use crate::mvcc::LeaseId;
use crate::raft::StateMachine;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use synod_core::{codec, LogIndex};

/// One committed version of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The value; `None` is a deletion (a tombstone: reads at or after it see nothing).
    pub value: Option<Value>,
    /// The transaction that wrote it (makes the one-phase commit idempotent).
    pub txn: TxnId,
}

/// A provisional write (Percolator's lock plus data): the writer's metadata and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The writer.
    pub txn: TxnMeta,
    /// The value it will have if the writer commits (`None`: deleted).
    pub value: Option<Value>,
}

/// The replicated state of one range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeState {
    /// What the range serves.
    pub desc: RangeDescriptor,
    /// Committed versions, newest last.
    pub versions: BTreeMap<Key, BTreeMap<Timestamp, Version>>,
    /// At most one intent per key.
    pub intents: BTreeMap<Key, Intent>,
    /// Transaction records, by anchor key and transaction.
    pub records: BTreeMap<(Key, TxnId), TxnStatus>,
    /// The highest snapshot any read of the key was served at (the one-phase commit must
    /// commit above it).
    pub max_read: BTreeMap<Key, Timestamp>,
    /// The highest snapshot any scan of more than one key was served at. It guards the
    /// keys a scan did *not* find: a one-phase commit of any key of the range must
    /// commit above it, or a repeated scan at the same snapshot would see a phantom.
    /// Coarser than CockroachDB's interval timestamp cache (the whole range, not the
    /// scanned interval), which costs extra `TooOld` retries, never correctness.
    pub scan_ts: Timestamp,
    /// The timestamp oracle's last timestamp (meta group only).
    pub oracle: Timestamp,
    /// The closed timestamp: no version at or below it can still appear in this range
    /// (raised by `Feed`, monotone, handed to both halves of a split).
    pub closed: Timestamp,
    /// The compact revision (etcd's `compact_revision`): versions below the newest one at
    /// or below it are gone, so reads and feeds below it are refused (monotone, handed to
    /// both halves of a split). In the meta group: the cluster's compact revision.
    pub compacted: Timestamp,
    /// etcd's metadata of each key's oldest remaining version when compaction cut the
    /// older part of its incarnation: `(that version's timestamp, create_ts, version)`.
    pub compacted_meta: BTreeMap<Key, (Timestamp, Timestamp, u64)>,
}

/// [`RangeState`] as a Raft [`StateMachine`]. A split hands the right half to the node
/// through [`RangeSm::take_children`], which creates the new group.
#[derive(Debug)]
pub struct RangeSm {
    state: RangeState,
    children: RefCell<Vec<RangeState>>,
    /// Leases granted or kept alive since the last call (id, TTL), for the leader's
    /// lessor ([`RangeSm::take_renewals`]).
    renewals: RefCell<Vec<(LeaseId, i64)>>,
    /// Test-only planted bug: skip the first-committer-wins check, so that lost
    /// updates happen; the bank test must catch it.
    #[cfg(test)]
    pub(crate) lost_updates: bool,
    /// Test-only planted bug: close the range at the watcher's timestamp even past
    /// pending intents, so a watch can miss a commit; the watch check must catch it.
    #[cfg(test)]
    pub(crate) close_over_intents: bool,
}

impl RangeSm {
    /// A range with this state (a new group's initial state).
    pub fn new(state: RangeState) -> Self {
        RangeSm {
            state,
            children: RefCell::new(Vec::new()),
            renewals: RefCell::new(Vec::new()),
            #[cfg(test)]
            lost_updates: false,
            #[cfg(test)]
            close_over_intents: false,
        }
    }

    /// The initial meta group.
    pub fn meta() -> RangeState {
        RangeState::empty(RangeDescriptor {
            id: RangeId::META,
            start: String::new(),
            end: None,
            generation: 0,
            depth: 0,
            serves_keys: false,
        })
    }

    /// The initial data range: the whole keyspace.
    pub fn root() -> RangeState {
        RangeState::empty(RangeDescriptor {
            id: RangeId::ROOT,
            start: String::new(),
            end: None,
            generation: 0,
            depth: 1,
            serves_keys: true,
        })
    }

    /// The replicated state.
    pub fn state(&self) -> &RangeState {
        &self.state
    }

    /// Right halves produced by splits since the last call, for the node to host.
    pub fn take_children(&self) -> Vec<RangeState> {
        std::mem::take(&mut *self.children.borrow_mut())
    }

    /// Leases granted or kept alive since the last call, with their TTL.
    pub(crate) fn take_renewals(&self) -> Vec<(LeaseId, i64)> {
        std::mem::take(&mut *self.renewals.borrow_mut())
    }

    /// Where the range would split if it has more than `max_keys` keys: the median key.
    pub fn split_point(&self, max_keys: usize) -> Option<Key> {
        let s = &self.state;
        if !s.desc.serves_keys || s.desc.depth >= 62 {
            return None;
        }
        let mut keys: Vec<&Key> = s.versions.keys().chain(s.intents.keys()).collect();
        keys.sort();
        keys.dedup();
        if keys.len() <= max_keys || keys.len() < 2 {
            return None;
        }
        Some(keys[keys.len() / 2].clone())
    }
}

impl RangeState {
    pub(crate) fn empty(desc: RangeDescriptor) -> Self {
        RangeState {
            desc,
            versions: BTreeMap::new(),
            intents: BTreeMap::new(),
            records: BTreeMap::new(),
            max_read: BTreeMap::new(),
            scan_ts: Timestamp(0),
            oracle: Timestamp(0),
            closed: Timestamp(0),
            compacted: Timestamp(0),
            compacted_meta: BTreeMap::new(),
        }
    }

    /// The newest committed version of `key` at or before `ts`.
    pub fn read_at(&self, key: &str, ts: Timestamp) -> Option<&Version> {
        self.versions
            .get(key)
            .and_then(|v| v.range(..=ts).next_back().map(|(_, v)| v))
    }

    /// `key` as a snapshot at `ts` sees it, with etcd's metadata: `None` if absent or
    /// deleted. The creation is the oldest put of the unbroken run of puts that ends at
    /// the version read (a delete ends an incarnation, as in etcd).
    pub fn row_at(&self, key: &str, ts: Timestamp, keys_only: bool) -> Option<Row> {
        let mut chain = self.versions.get(key)?.range(..=ts).rev();
        let (mod_ts, newest) = chain.next()?;
        let value = newest.value.as_ref()?;
        let mut create_ts = *mod_ts;
        let mut version = 1;
        let mut whole_run = true;
        for (ts, v) in chain {
            if v.value.is_none() {
                whole_run = false;
                break;
            }
            create_ts = *ts;
            version += 1;
        }
        // The run reached the oldest remaining version: if compaction cut older puts of
        // the same incarnation, their count and creation were kept aside.
        if whole_run {
            if let Some((oldest, created, count)) = self.compacted_meta.get(key) {
                if *oldest == create_ts {
                    create_ts = *created;
                    version += count - 1;
                }
            }
        }
        Some(Row {
            key: key.to_string(),
            value: if keys_only { Vec::new() } else { value.clone() },
            create_ts,
            mod_ts: *mod_ts,
            version,
        })
    }

    fn newest_commit(&self, key: &str) -> Option<(Timestamp, &Version)> {
        self.versions
            .get(key)
            .and_then(|v| v.iter().next_back().map(|(t, v)| (*t, v)))
    }

    fn apply(
        &mut self,
        command: &RangeCommand,
        check_conflicts: bool,
        close_below_intents: bool,
    ) -> RangeResult {
        use RangeCommand as C;
        use RangeResult as R;
        let keyed = match command {
            C::AllocTimestamp
            | C::Split { .. }
            | C::LeaseGrant { .. }
            | C::LeaseKeepAlive { .. }
            | C::LeaseTimeToLive { .. } => None,
            C::Scan { start, .. } | C::Feed { start, .. } => Some(start),
            // The meta group serves no key but records the cluster's compact revision.
            C::Compact { start, .. } => self.desc.serves_keys.then_some(start),
            C::Get { key, .. } | C::Prewrite { key, .. } | C::Resolve { key, .. } => Some(key),
            C::EndTxn { txn, .. } | C::Push { txn, .. } | C::ForgetTxn { txn } => Some(&txn.anchor),
            C::OnePhase { writes, .. } => {
                if writes.iter().any(|(k, _)| !self.desc.contains(k)) {
                    return R::RangeMismatch;
                }
                None
            }
        };
        if keyed.is_some_and(|k| !self.desc.contains(k)) {
            return R::RangeMismatch;
        }
        match command {
            C::Compact { revision, .. } if !self.desc.serves_keys => {
                self.compacted = self.compacted.max(*revision);
                R::Compacted(self.compacted)
            }
            C::AllocTimestamp => {
                if self.desc.serves_keys {
                    return R::RangeMismatch;
                }
                self.oracle = Timestamp(self.oracle.0 + 1);
                R::Timestamp(self.oracle)
            }
            C::Get { read_ts, .. } | C::Scan { read_ts, .. } if *read_ts < self.compacted => {
                R::Compacted(self.compacted)
            }
            C::Feed { after, .. } if *after < self.compacted => R::Compacted(self.compacted),
            C::Compact { revision, .. } => {
                self.compact(*revision);
                R::Compacted(self.compacted)
            }
            C::Get { key, read_ts } => {
                let cached = self.max_read.entry(key.clone()).or_default();
                *cached = (*cached).max(*read_ts);
                // Percolator: an intent whose writer started at or before the snapshot
                // may commit below it, so the reader must learn its fate first. A later
                // writer commits above the snapshot and is invisible anyway.
                if let Some(intent) = self.intents.get(key) {
                    if intent.txn.start_ts <= *read_ts {
                        return R::Locked {
                            txn: intent.txn.clone(),
                            key: key.clone(),
                        };
                    }
                }
                R::Value(self.read_at(key, *read_ts).and_then(|v| v.value.clone()))
            }
            C::Scan {
                start,
                end,
                read_ts,
                limit,
                keys_only,
            } => {
                // The part of [start, end) this range serves.
                let upper = match (end, &self.desc.end) {
                    (Some(a), Some(b)) => Some(a.min(b).clone()),
                    (Some(a), None) => Some(a.clone()),
                    (None, b) => b.clone(),
                };
                let bounds = (
                    std::ops::Bound::Included(start.clone()),
                    match &upper {
                        Some(u) => std::ops::Bound::Excluded(u.clone()),
                        None => std::ops::Bound::Unbounded,
                    },
                );
                if upper.as_ref().is_some_and(|u| u <= start) {
                    return R::Rows {
                        rows: Vec::new(),
                        count: 0,
                    };
                }
                if end.as_deref() == Some(format!("{start}\0").as_str()) {
                    let cached = self.max_read.entry(start.clone()).or_default();
                    *cached = (*cached).max(*read_ts);
                } else {
                    self.scan_ts = self.scan_ts.max(*read_ts);
                }
                // As for Get: an intent that may commit below the snapshot must be
                // resolved first.
                if let Some((key, intent)) = self
                    .intents
                    .range::<Key, _>(bounds.clone())
                    .find(|(_, i)| i.txn.start_ts <= *read_ts)
                {
                    return R::Locked {
                        txn: intent.txn.clone(),
                        key: key.clone(),
                    };
                }
                let mut rows = Vec::new();
                let mut count = 0;
                for key in self.versions.range::<Key, _>(bounds).map(|(k, _)| k) {
                    if let Some(row) = self.row_at(key, *read_ts, *keys_only) {
                        count += 1;
                        if *limit == 0 || (rows.len() as u64) < *limit {
                            rows.push(row);
                        }
                    }
                }
                R::Rows { rows, count }
            }
            C::Prewrite { txn, key, value } => {
                if let Some(intent) = self.intents.get(key) {
                    if intent.txn.id != txn.id {
                        return R::Locked {
                            txn: intent.txn.clone(),
                            key: key.clone(),
                        };
                    }
                }
                if let Some((ts, version)) = self.newest_commit(key) {
                    // First committer wins (snapshot isolation): someone committed this
                    // key after our snapshot was taken. (Our own version means a late
                    // duplicate of an already committed prewrite.)
                    if ts > txn.start_ts && check_conflicts {
                        return if version.txn == txn.id {
                            R::Prewritten
                        } else {
                            R::WriteConflict
                        };
                    }
                }
                self.intents.insert(
                    key.clone(),
                    Intent {
                        txn: txn.clone(),
                        value: value.clone(),
                    },
                );
                R::Prewritten
            }
            C::EndTxn { txn, commit } => {
                let slot = self
                    .records
                    .entry((txn.anchor.clone(), txn.id))
                    .or_insert(TxnStatus::Pending);
                if *slot == TxnStatus::Pending {
                    *slot = match commit {
                        Some(ts) => TxnStatus::Committed(*ts),
                        None => TxnStatus::Aborted,
                    };
                }
                R::Status(*slot)
            }
            C::Push { txn, now } => {
                let slot = self
                    .records
                    .entry((txn.anchor.clone(), txn.id))
                    .or_insert(TxnStatus::Pending);
                if *slot == TxnStatus::Pending && *now >= txn.expires_at {
                    // The record (or its absence) is the single point of decision: an
                    // abort written here makes any later commit attempt fail.
                    *slot = TxnStatus::Aborted;
                }
                R::Status(*slot)
            }
            C::ForgetTxn { txn } => {
                let key = (txn.anchor.clone(), txn.id);
                if self
                    .records
                    .get(&key)
                    .is_some_and(|s| *s != TxnStatus::Pending)
                {
                    self.records.remove(&key);
                }
                R::Resolved
            }
            C::Resolve { txn, key, status } => {
                if self.intents.get(key).is_some_and(|i| i.txn.id == *txn) {
                    if let Some(intent) = self.intents.remove(key) {
                        if let TxnStatus::Committed(ts) = status {
                            self.versions.entry(key.clone()).or_default().insert(
                                *ts,
                                Version {
                                    value: intent.value,
                                    txn: *txn,
                                },
                            );
                        } else if *status == TxnStatus::Pending {
                            // Never sent; keep the intent.
                            self.intents.insert(key.clone(), intent);
                        }
                    }
                }
                R::Resolved
            }
            C::OnePhase {
                txn,
                writes,
                commit_ts,
            } => {
                let Some((first, _)) = writes.first() else {
                    return R::Status(TxnStatus::Committed(*commit_ts));
                };
                if self
                    .versions
                    .get(first)
                    .is_some_and(|v| v.get(commit_ts).is_some_and(|v| v.txn == txn.id))
                {
                    return R::Status(TxnStatus::Committed(*commit_ts));
                }
                for (key, _) in writes {
                    if let Some(intent) = self.intents.get(key) {
                        return R::Locked {
                            txn: intent.txn.clone(),
                            key: key.clone(),
                        };
                    }
                    if self
                        .newest_commit(key)
                        .is_some_and(|(ts, _)| ts > txn.start_ts)
                    {
                        return R::WriteConflict;
                    }
                    // Without intents, a reader at or above commit_ts that came first
                    // would not have seen this write: commit above every served read.
                    // Nor below the closed timestamp: a watcher has been told that
                    // no version at or below it will appear.
                    if self.scan_ts >= *commit_ts
                        || self.closed >= *commit_ts
                        || self.compacted >= *commit_ts
                        || self.max_read.get(key).is_some_and(|ts| *ts >= *commit_ts)
                    {
                        return R::TooOld;
                    }
                }
                for (key, value) in writes {
                    self.versions.entry(key.clone()).or_default().insert(
                        *commit_ts,
                        Version {
                            value: value.clone(),
                            txn: txn.id,
                        },
                    );
                }
                R::Status(TxnStatus::Committed(*commit_ts))
            }
            C::Feed {
                start,
                end,
                after,
                close_ts,
                limit,
            } => self.feed(
                (start, end.as_ref()),
                *after,
                *close_ts,
                *limit,
                close_below_intents,
            ),
            C::LeaseGrant { .. } | C::LeaseKeepAlive { .. } | C::LeaseTimeToLive { .. } => {
                self.apply_lease(command)
            }
            C::Split { .. } => R::Split,
        }
    }

    /// Drop the read-cache entries at or below the closed and compact timestamps. An
    /// entry `max_read[k] = r` only refuses one-phase commits of `k` at or below `r`, and
    /// every commit at or below `closed` or `compacted` is refused anyway (`TooOld`), so
    /// such an entry refuses nothing more and its removal changes no answer.
    fn collect_read_cache(&mut self) {
        let horizon = self.closed.max(self.compacted);
        self.max_read.retain(|_, read| *read > horizon);
    }

    /// `RangeCommand::Compact`: etcd's MVCC compaction rule, key by key.
    fn compact(&mut self, revision: Timestamp) {
        if revision <= self.compacted {
            return;
        }
        self.compacted = revision;
        self.collect_read_cache();
        let keys: Vec<Key> = self.versions.keys().cloned().collect();
        for key in keys {
            let Some(kept) = self
                .versions
                .get(&key)
                .and_then(|c| c.range(..=revision).next_back())
                .map(|(ts, v)| (*ts, v.value.is_some()))
            else {
                continue;
            };
            let (kept_ts, live) = kept;
            // Its etcd metadata, taken before the older versions go.
            let row = self.row_at(&key, kept_ts, true);
            let Some(chain) = self.versions.get_mut(&key) else {
                continue;
            };
            let newer = chain.split_off(&kept_ts);
            *chain = newer;
            if live {
                match row {
                    Some(row) if row.create_ts < kept_ts => {
                        self.compacted_meta
                            .insert(key.clone(), (kept_ts, row.create_ts, row.version));
                    }
                    _ => {
                        self.compacted_meta.remove(&key);
                    }
                }
            } else {
                // A tombstone: the incarnation it ended is gone with it.
                chain.remove(&kept_ts);
                self.compacted_meta.remove(&key);
                if chain.is_empty() {
                    self.versions.remove(&key);
                }
            }
        }
    }

    /// `RangeCommand::Feed`: close, then list the final events of the interval.
    fn feed(
        &mut self,
        (start, end): (&Key, Option<&Key>),
        after: Timestamp,
        close_ts: Timestamp,
        limit: u64,
        close_below_intents: bool,
    ) -> RangeResult {
        // The oldest pending intent may still commit at any timestamp above its start:
        // the range can close only below it (TiKV's resolved-ts: min of the lock starts
        // and the timestamp fetched before). An intent laid after this entry belongs to
        // a transaction whose commit timestamp is taken after its prewrites are
        // acknowledged, so after `close_ts` was: it commits above.
        let blocker = self
            .intents
            .iter()
            .min_by_key(|(_, i)| i.txn.start_ts)
            .map(|(k, i)| (i.txn.clone(), k.clone()));
        let mut target = close_ts;
        if let Some((meta, _)) = blocker.as_ref().filter(|_| close_below_intents) {
            target = target.min(Timestamp(meta.start_ts.0.saturating_sub(1)));
        }
        if target > self.closed {
            self.closed = target;
            self.collect_read_cache();
        }
        let blocker = blocker.filter(|_| self.closed < close_ts);
        let upper = match (end, &self.desc.end) {
            (Some(a), Some(b)) => Some(a.min(b).clone()),
            (Some(a), None) => Some(a.clone()),
            (None, b) => b.clone(),
        };
        let mut events = Vec::new();
        let mut resolved = self.closed;
        if after < self.closed && upper.as_ref().is_none_or(|u| u > start) {
            let bounds = (
                std::ops::Bound::Included(start.clone()),
                match &upper {
                    Some(u) => std::ops::Bound::Excluded(u.clone()),
                    None => std::ops::Bound::Unbounded,
                },
            );
            let window = (
                std::ops::Bound::Excluded(after),
                std::ops::Bound::Included(self.closed),
            );
            let mut found: Vec<(Timestamp, &Key)> = Vec::new();
            for (key, chain) in self.versions.range::<Key, _>(bounds) {
                found.extend(chain.range(window).map(|(ts, _)| (*ts, key)));
            }
            found.sort();
            if limit > 0 && found.len() as u64 > limit {
                // Cut after a whole timestamp, so one revision's events stay together.
                let last = found[limit as usize - 1].0;
                found.retain(|(ts, _)| *ts <= last);
                resolved = last;
            }
            events = found
                .into_iter()
                .map(|(ts, key)| Event {
                    key: key.clone(),
                    ts,
                    row: self.row_at(key, ts, false),
                    prev: self.row_at(key, Timestamp(ts.0 - 1), false),
                })
                .collect();
        }
        RangeResult::Events {
            events,
            resolved,
            blocker,
        }
    }

    /// Move every key at or after `split_key` (and the records anchored there) into a new
    /// range, and shrink this one.
    fn split(&mut self, split_key: &Key) -> RangeState {
        let depth = self.desc.depth;
        let child_desc = RangeDescriptor {
            id: RangeId(self.desc.id.0 | (1 << depth)),
            start: split_key.clone(),
            end: self.desc.end.clone(),
            generation: 0,
            depth: depth + 1,
            serves_keys: true,
        };
        self.desc.end = Some(split_key.clone());
        self.desc.generation += 1;
        self.desc.depth = depth + 1;
        let mut child = RangeState::empty(child_desc);
        child.scan_ts = self.scan_ts;
        child.closed = self.closed;
        child.compacted = self.compacted;
        child.compacted_meta = self.compacted_meta.split_off(split_key);
        child.versions = self.versions.split_off(split_key);
        child.intents = self.intents.split_off(split_key);
        child.max_read = self.max_read.split_off(split_key);
        child.records = self.records.split_off(&(split_key.clone(), TxnId(0)));
        child
    }
}

impl StateMachine for RangeSm {
    type Command = RangeCommand;
    type Output = RangeOutput;

    fn apply(&mut self, _index: LogIndex, command: &RangeCommand) -> RangeOutput {
        #[cfg(test)]
        let check_conflicts = !self.lost_updates;
        #[cfg(not(test))]
        let check_conflicts = true;
        #[cfg(test)]
        let close_below_intents = !self.close_over_intents;
        #[cfg(not(test))]
        let close_below_intents = true;
        let mut result = self
            .state
            .apply(command, check_conflicts, close_below_intents);
        if let RangeCommand::Split {
            generation,
            split_key,
        } = command
        {
            let d = &self.state.desc;
            if *generation == d.generation && d.contains(split_key) && *split_key != d.start {
                let child = self.state.split(split_key);
                self.children.borrow_mut().push(child);
                result = RangeResult::Split;
            }
        }
        if let (
            RangeCommand::LeaseGrant { .. } | RangeCommand::LeaseKeepAlive { .. },
            RangeResult::Lease(Some(info)),
        ) = (command, &result)
        {
            self.renewals.borrow_mut().push((info.id, info.ttl));
        }
        RangeOutput {
            range: self.state.desc.clone(),
            result,
        }
    }

    fn read(&self, _command: &RangeCommand) -> RangeOutput {
        // Every command goes through the log (reads update the read-timestamp cache).
        RangeOutput {
            range: self.state.desc.clone(),
            result: RangeResult::RangeMismatch,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&self.state)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.state = codec::decode(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}
