//! The multi-version store: a key index of generations, the revision log of changes,
//! leases, the watch journal, and the command semantics of etcd v3.4's applier.

use super::msg::{
    CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, Event, EventKind, KeyValue, LeaseCheckpoint, LeaseId, MvccCommand,
    MvccError, MvccOutput, MvccResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseOp, Revision, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use crate::raft::StateMachine;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use synod_core::{codec, LogIndex};

/// etcd's `MaxLeaseTTL`: 9,000,000,000 seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// The byte cost [`MvccStateMachine::db_size`] charges per stored version, beside its key
/// and value: the revision pair, version, create revision and lease (5 × 8 bytes).
pub const VERSION_OVERHEAD: u64 = 40;
/// The byte cost per stored tombstone, beside its key: its revision pair.
pub const TOMBSTONE_OVERHEAD: u64 = 16;
/// The byte cost per lease, beside 8 bytes per attached key and the key itself: id, TTL
/// and remaining TTL.
pub const LEASE_OVERHEAD: u64 = 24;

/// Settings of the state machine. Every replica of a group must use the same ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MvccConfig {
    /// Grants below this TTL (seconds) are raised to it. etcd derives it from the
    /// election timeout: ⌈1.5 × election timeout⌉, 2 s with its defaults.
    pub min_lease_ttl: i64,
    /// Most compares, and most operations per branch, in one Txn (etcd's
    /// `--max-txn-ops`, 128 by default).
    pub max_txn_ops: usize,
    /// Revisions of events the watch journal keeps beyond compaction, so that a server
    /// that delivers events after each step never misses any (see
    /// [`MvccStateMachine::events_after`]).
    pub journal_revisions: i64,
}

impl Default for MvccConfig {
    fn default() -> Self {
        MvccConfig {
            min_lease_ttl: 2,
            max_txn_ops: 128,
            journal_revisions: 10_000,
        }
    }
}

/// A (main, sub) revision: the main revision of a command and the index of one change
/// within it (etcd's `revision{main, sub}`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
struct Rev {
    main: i64,
    sub: i64,
}

/// One put of a key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct Version {
    rev: Rev,
    version: i64,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    lease: LeaseId,
}

/// One life of a key, from the put that created it to the delete that ended it (etcd's
/// `generation`). Compaction drops the versions it no longer needs from the front.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct Generation {
    created: i64,
    versions: Vec<Version>,
    tombstone: Option<Rev>,
}

/// Everything retained about one key (etcd's `keyIndex`, holding the values as well).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
struct KeyHistory {
    generations: Vec<Generation>,
}

fn key_value(key: &[u8], generation: &Generation, version: &Version) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: generation.created,
        mod_revision: version.rev.main,
        version: version.version,
        value: version.value.clone(),
        lease: version.lease.0,
    }
}

impl KeyHistory {
    /// The generation and version alive at main revision `at`.
    fn at(&self, at: i64) -> Option<(&Generation, &Version)> {
        for generation in self.generations.iter().rev() {
            let first = generation.versions.first()?;
            if first.rev.main > at {
                continue;
            }
            if generation.tombstone.is_some_and(|t| t.main <= at) {
                return None;
            }
            let i = generation.versions.partition_point(|v| v.rev.main <= at);
            return Some((generation, generation.versions.get(i.checked_sub(1)?)?));
        }
        None
    }

    /// The live generation, if the key exists now.
    fn live(&self) -> Option<&Generation> {
        self.generations.last().filter(|g| g.tombstone.is_none())
    }

    /// The change made at exactly `rev`, with the key's state just before it.
    fn event_at(&self, key: &[u8], rev: Rev) -> Option<Event> {
        let generation = self.generations.iter().find(|g| {
            g.versions.first().is_some_and(|v| v.rev <= rev) && g.tombstone.is_none_or(|t| t >= rev)
        })?;
        let prev_kv = self.at(rev.main - 1).map(|(g, v)| key_value(key, g, v));
        if generation.tombstone == Some(rev) {
            return Some(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_vec(),
                    mod_revision: rev.main,
                    ..KeyValue::default()
                },
                prev_kv,
            });
        }
        let version = generation.versions.iter().find(|v| v.rev == rev)?;
        Some(Event {
            kind: EventKind::Put,
            kv: key_value(key, generation, version),
            prev_kv,
        })
    }

    /// Drop what no read at `at` or later can see; returns the bytes freed.
    fn compact(&mut self, key_len: u64, at: i64) -> u64 {
        let mut freed = 0;
        self.generations.retain_mut(|generation| {
            if generation.tombstone.is_some_and(|t| t.main <= at) {
                freed += generation
                    .versions
                    .iter()
                    .map(|v| version_size(key_len, v))
                    .sum::<u64>()
                    + TOMBSTONE_OVERHEAD
                    + key_len;
                return false;
            }
            let keep_from = generation
                .versions
                .partition_point(|v| v.rev.main <= at)
                .saturating_sub(1);
            freed += generation.versions[..keep_from]
                .iter()
                .map(|v| version_size(key_len, v))
                .sum::<u64>();
            generation.versions.drain(..keep_from);
            true
        });
        freed
    }

    fn size(&self, key_len: u64) -> u64 {
        self.generations
            .iter()
            .map(|g| {
                g.versions
                    .iter()
                    .map(|v| version_size(key_len, v))
                    .sum::<u64>()
                    + g.tombstone.map_or(0, |_| TOMBSTONE_OVERHEAD + key_len)
            })
            .sum()
    }
}

fn version_size(key_len: u64, version: &Version) -> u64 {
    VERSION_OVERHEAD + key_len + version.value.len() as u64
}

/// A lease as the replicated state knows it: no deadline, which only the leader's
/// [`super::Lessor`] keeps.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Lease {
    /// The granted TTL in seconds.
    pub ttl: i64,
    /// The remaining TTL of the last checkpoint, in seconds; 0: none (use `ttl`).
    pub remaining_ttl: i64,
    /// The keys attached to the lease.
    pub keys: BTreeSet<Vec<u8>>,
}

fn lease_size(lease: &Lease) -> u64 {
    LEASE_OVERHEAD + lease.keys.iter().map(|k| 8 + k.len() as u64).sum::<u64>()
}

/// A range of keys, as `BTreeMap::range` takes it.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The key range of a request: `range_end` empty means `key` alone, `[0]` means every key
/// from `key` on (etcd's `mkGteRange`), anything else is the exclusive end.
fn key_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if range_end.is_empty() {
        return Some((Bound::Included(key), Bound::Included(key)));
    }
    if range_end == [0] {
        return Some((Bound::Included(key), Bound::Unbounded));
    }
    if range_end <= key {
        return None;
    }
    Some((Bound::Included(key), Bound::Excluded(range_end)))
}

/// Whether `k` lies in the range of `key` and `range_end`.
fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        return k == key;
    }
    k >= key && (range_end == [0] || k < range_end)
}

/// The state of one command being applied: its main revision, the next sub-revision,
/// and the events it produced.
struct Writer {
    main: i64,
    sub: i64,
    events: Vec<Event>,
}

impl Writer {
    /// The revision a read inside the command sees: its own changes once it made some.
    fn read_revision(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.main - 1
        }
    }
}

/// What [`MvccStateMachine::events_after`] read from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EventSource {
    /// The retained history of keys.
    History,
    /// The watch journal (the history was compacted past the start).
    Journal,
}

/// Every key with its history. Keys and histories are shared (`Arc`), so that a snapshot
/// view is a copy of pointers, not of the data; a write to a key whose history a view
/// still holds copies that one history first ([`Arc::make_mut`]).
type KeyIndex = BTreeMap<Arc<[u8]>, Arc<KeyHistory>>;

/// The replicated MVCC key-value store with leases: etcd v3.4's `mvcc` package and the
/// replicated half of its `lease` package, as a deterministic [`StateMachine`].
#[derive(Clone, Debug)]
pub struct MvccStateMachine {
    config: MvccConfig,
    keys: KeyIndex,
    /// Every change after the compacted revision, in revision order, naming its key.
    changes: BTreeMap<Rev, Vec<u8>>,
    current: i64,
    compacted: i64,
    leases: BTreeMap<LeaseId, Lease>,
    db_size: u64,
    /// Recent events, kept across compaction for `journal_revisions` revisions. Not
    /// replicated state: a restored replica starts it empty.
    journal: VecDeque<Event>,
    /// Every event after this revision is in the journal.
    journal_floor: i64,
    /// A deliberate bug for the harness to catch: reads on the ReadIndex path answer
    /// at the revision before the current one.
    #[cfg(any(test, feature = "harness"))]
    stale_reads: bool,
    /// A deliberate bug for the harness to catch: `events_after` drops the first of
    /// several pending revisions.
    #[cfg(any(test, feature = "harness"))]
    watch_gap: bool,
}

/// The replicated part of the state, as a snapshot stores it.
#[derive(Deserialize)]
struct SnapshotData {
    current: i64,
    compacted: i64,
    keys: BTreeMap<serde_bytes::ByteBuf, KeyHistory>,
    leases: BTreeMap<LeaseId, Lease>,
}

/// The replicated part of the state frozen at one revision, sharing the store's keys and
/// histories: what [`MvccStateMachine::snapshot_view`] hands to another thread. It
/// encodes as [`SnapshotData`].
#[derive(Serialize)]
struct SnapshotView {
    current: i64,
    compacted: i64,
    #[serde(serialize_with = "serialize_keys")]
    keys: KeyIndex,
    leases: BTreeMap<LeaseId, Lease>,
}

/// Keys as byte strings (one length and one copy), as [`SnapshotData`] decodes them.
fn serialize_keys<Ser: serde::Serializer>(keys: &KeyIndex, s: Ser) -> Result<Ser::Ok, Ser::Error> {
    s.collect_map(
        keys.iter()
            .map(|(k, h)| (serde_bytes::Bytes::new(k), h.as_ref())),
    )
}

impl PartialEq for MvccStateMachine {
    /// Replicated state only: the keys with their history, the leases and the revisions.
    fn eq(&self, other: &Self) -> bool {
        self.current == other.current
            && self.compacted == other.compacted
            && self.keys == other.keys
            && self.leases == other.leases
    }
}

impl Default for MvccStateMachine {
    fn default() -> Self {
        MvccStateMachine::new(MvccConfig::default())
    }
}

/// Mixes a log index into a lease id (SplitMix64's finalizer), so that ids chosen by the
/// state machine look like etcd's and are the same on every replica.
fn lease_id_from(seed: u64) -> i64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z & (i64::MAX as u64)) as i64
}

impl MvccStateMachine {
    /// An empty store at revision 1, like a new etcd.
    pub fn new(config: MvccConfig) -> Self {
        MvccStateMachine {
            config,
            keys: BTreeMap::new(),
            changes: BTreeMap::new(),
            current: 1,
            compacted: 0,
            leases: BTreeMap::new(),
            db_size: 0,
            journal: VecDeque::new(),
            journal_floor: 1,
            #[cfg(any(test, feature = "harness"))]
            stale_reads: false,
            #[cfg(any(test, feature = "harness"))]
            watch_gap: false,
        }
    }

    /// The deliberately broken variant the watch check must catch: live watchers miss
    /// the first revision whenever more than one is pending.
    #[cfg(any(test, feature = "harness"))]
    pub fn with_watch_gap(mut self) -> Self {
        self.watch_gap = true;
        self
    }

    /// The deliberately broken variant the simulation tests must catch: Range on the
    /// read path answers at the previous revision.
    #[cfg(any(test, feature = "harness"))]
    pub fn with_stale_reads(mut self) -> Self {
        self.stale_reads = true;
        self
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        Revision(self.current)
    }

    /// The compacted revision (0: never compacted). Reads below it fail.
    pub fn compacted_revision(&self) -> Revision {
        Revision(self.compacted)
    }

    /// Bytes of retained data: every stored version (key, value and
    /// [`VERSION_OVERHEAD`]), tombstone (key and [`TOMBSTONE_OVERHEAD`]) and lease
    /// ([`LEASE_OVERHEAD`] plus 8 bytes and the key per attachment). Exact for this
    /// accounting, kept up to date on every change; Maintenance/Status reports it as
    /// `dbSize`.
    pub fn db_size(&self) -> u64 {
        self.db_size
    }

    /// The size [`Self::db_size`] should have, recomputed from scratch.
    pub(crate) fn recomputed_db_size(&self) -> u64 {
        self.keys
            .iter()
            .map(|(k, h)| h.size(k.len() as u64))
            .sum::<u64>()
            + self.leases.values().map(lease_size).sum::<u64>()
    }

    /// The lease, if granted and not yet revoked or expired.
    pub fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every lease, by id.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, &Lease)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }

    /// Apply one command. `seed` (the Raft log index) picks lease ids for grants with id
    /// 0, so every replica picks the same.
    pub fn apply_command(&mut self, seed: u64, command: &MvccCommand) -> MvccOutput {
        match command {
            MvccCommand::Range(req) => self.range(req).map(MvccResponse::Range),
            MvccCommand::Put(req) => {
                check_put(req)?;
                self.check_put_state(req)?;
                let mut w = self.writer();
                let resp = self.exec_put(&mut w, req);
                self.commit(w);
                Ok(MvccResponse::Put(resp))
            }
            MvccCommand::DeleteRange(req) => {
                check_delete(req)?;
                let mut w = self.writer();
                let resp = self.exec_delete(&mut w, req);
                self.commit(w);
                Ok(MvccResponse::DeleteRange(resp))
            }
            MvccCommand::Txn(req) => self.txn(req).map(MvccResponse::Txn),
            MvccCommand::Compact(req) => self.compact(req),
            MvccCommand::LeaseGrant { id, ttl } => self.lease_grant(seed, *id, *ttl),
            MvccCommand::LeaseRevoke { id } => {
                if !self.leases.contains_key(id) {
                    return Err(MvccError::LeaseNotFound);
                }
                self.revoke(*id);
                Ok(MvccResponse::Lease {
                    revision: self.current,
                })
            }
            MvccCommand::LeaseCheckpoint { checkpoints } => {
                for LeaseCheckpoint { id, remaining_ttl } in checkpoints {
                    if let Some(lease) = self.leases.get_mut(id) {
                        lease.remaining_ttl = *remaining_ttl;
                    }
                }
                Ok(MvccResponse::Lease {
                    revision: self.current,
                })
            }
            MvccCommand::LeaseExpire { ids } => {
                for id in ids {
                    if self.leases.contains_key(id) {
                        self.revoke(*id);
                    }
                }
                Ok(MvccResponse::Lease {
                    revision: self.current,
                })
            }
        }
    }

    /// Answer a command without changing anything (the ReadIndex path): a Range, or a
    /// read-only Txn. Anything that would write is answered as if it were a Range of
    /// nothing, at the current revision.
    pub fn read_command(&self, command: &MvccCommand) -> MvccOutput {
        #[cfg(any(test, feature = "harness"))]
        if let (true, MvccCommand::Range(req)) = (self.stale_reads, command) {
            let stale = RangeRequest {
                revision: (self.current - 1).max(self.compacted).max(1),
                ..req.clone()
            };
            return self.range(&stale).map(MvccResponse::Range);
        }
        match command {
            MvccCommand::Range(req) => self.range(req).map(MvccResponse::Range),
            MvccCommand::Txn(req) if txn_is_read_only(req) => {
                ReadOnly { store: self }.txn(req).map(MvccResponse::Txn)
            }
            _ => Ok(MvccResponse::Range(RangeResponse {
                revision: self.current,
                ..RangeResponse::default()
            })),
        }
    }

    fn writer(&self) -> Writer {
        Writer {
            main: self.current + 1,
            sub: 0,
            events: Vec::new(),
        }
    }

    /// Finish a command: a command that changed keys takes the next revision.
    fn commit(&mut self, w: Writer) {
        if w.sub == 0 {
            return;
        }
        self.current = w.main;
        self.journal.extend(w.events);
        let floor = self.current - self.config.journal_revisions;
        while self
            .journal
            .front()
            .is_some_and(|e| e.kv.mod_revision <= floor)
        {
            self.journal.pop_front();
        }
        self.journal_floor = self.journal_floor.max(floor);
    }

    /// etcd's `rangeKeys` plus the applier's filtering, sorting and limit.
    fn range_at(&self, req: &RangeRequest, current: i64) -> Result<RangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        if req.revision > current {
            return Err(MvccError::FutureRevision);
        }
        let rev = if req.revision <= 0 {
            current
        } else {
            req.revision
        };
        if rev < self.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        let filtered = req.sort_order != SortOrder::None
            || req.sort_target != SortTarget::Key
            || req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // Without sorting or filters, read one more than the limit to learn `more`.
        let fetch = if filtered || req.limit <= 0 {
            usize::MAX
        } else {
            usize::try_from(req.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
        };
        let mut count = 0i64;
        let mut kvs = Vec::new();
        if let Some(bounds) = key_bounds(&req.key, &req.range_end) {
            for (key, history) in self.keys.range::<[u8], _>(bounds) {
                let Some((generation, version)) = history.at(rev) else {
                    continue;
                };
                count += 1;
                if !req.count_only && kvs.len() < fetch {
                    let mut kv = key_value(key, generation, version);
                    if req.keys_only {
                        kv.value = Vec::new();
                    }
                    kvs.push(kv);
                }
            }
        }
        let keep = |kv: &KeyValue| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        };
        kvs.retain(keep);
        let order = match (req.sort_order, req.sort_target) {
            // Keys come in ascending order; any other target with no order sorts
            // ascending (etcd's applier does the same).
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        };
        if order != SortOrder::None {
            let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
                match req.sort_target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                }
            };
            if order == SortOrder::Descend {
                kvs.sort_by(|a, b| by(b, a));
            } else {
                kvs.sort_by(by);
            }
        }
        let mut more = false;
        if req.limit > 0 {
            let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
            if kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
        }
        Ok(RangeResponse {
            revision: self.current,
            kvs,
            more,
            count,
        })
    }

    /// A Range at the current revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.range_at(req, self.current)
    }

    /// Whether the Put can run against the current state (etcd's `checkRequestPut`).
    fn check_put_state(&self, req: &PutRequest) -> Result<(), MvccError> {
        if (req.ignore_value || req.ignore_lease)
            && self
                .keys
                .get(req.key.as_slice())
                .and_then(|h| h.live())
                .is_none()
        {
            return Err(MvccError::KeyNotFound);
        }
        if !req.ignore_lease && req.lease != 0 && !self.leases.contains_key(&LeaseId(req.lease)) {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }

    fn exec_put(&mut self, w: &mut Writer, req: &PutRequest) -> PutResponse {
        let rev = Rev {
            main: w.main,
            sub: w.sub,
        };
        w.sub += 1;
        let key_len = req.key.len() as u64;
        let history = match self.keys.get_mut(req.key.as_slice()) {
            Some(h) => Arc::make_mut(h),
            None => Arc::make_mut(self.keys.entry(Arc::from(req.key.as_slice())).or_default()),
        };
        let prev = history
            .live()
            .and_then(|g| g.versions.last().map(|v| key_value(&req.key, g, v)));
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => LeaseId(p.lease),
            _ => LeaseId(req.lease),
        };
        let version = Version {
            rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        self.db_size += version_size(key_len, &version);
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(rev.main, |p| p.create_revision),
            mod_revision: rev.main,
            version: version.version,
            value: version.value.clone(),
            lease: version.lease.0,
        };
        match history.generations.last_mut() {
            Some(g) if g.tombstone.is_none() => g.versions.push(version),
            _ => history.generations.push(Generation {
                created: rev.main,
                versions: vec![version],
                tombstone: None,
            }),
        }
        let old_lease = prev.as_ref().map_or(LeaseId::NONE, |p| LeaseId(p.lease));
        if old_lease != lease {
            self.detach(old_lease, &req.key);
            self.attach(lease, &req.key);
        }
        self.changes.insert(rev, req.key.clone());
        w.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev.clone(),
        });
        PutResponse {
            revision: w.main,
            prev_kv: if req.prev_kv { prev } else { None },
        }
    }

    fn attach(&mut self, lease: LeaseId, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&lease) {
            if l.keys.insert(key.to_vec()) {
                self.db_size += 8 + key.len() as u64;
            }
        }
    }

    fn detach(&mut self, lease: LeaseId, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&lease) {
            if l.keys.remove(key) {
                self.db_size -= 8 + key.len() as u64;
            }
        }
    }

    fn exec_delete(&mut self, w: &mut Writer, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let at = w.read_revision();
        let doomed: Vec<Vec<u8>> = match key_bounds(&req.key, &req.range_end) {
            Some(bounds) => self
                .keys
                .range::<[u8], _>(bounds)
                .filter(|(_, h)| h.at(at).is_some())
                .map(|(k, _)| k.to_vec())
                .collect(),
            None => Vec::new(),
        };
        let mut prev_kvs = Vec::new();
        for key in &doomed {
            let rev = Rev {
                main: w.main,
                sub: w.sub,
            };
            w.sub += 1;
            let Some(history) = self.keys.get_mut(key.as_slice()).map(Arc::make_mut) else {
                continue;
            };
            let Some(generation) = history.generations.last_mut() else {
                continue;
            };
            let Some(last) = generation.versions.last() else {
                continue;
            };
            let prev = key_value(key, generation, last);
            generation.tombstone = Some(rev);
            self.db_size += TOMBSTONE_OVERHEAD + key.len() as u64;
            self.detach(LeaseId(prev.lease), key);
            self.changes.insert(rev, key.clone());
            w.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    mod_revision: rev.main,
                    ..KeyValue::default()
                },
                prev_kv: Some(prev.clone()),
            });
            if req.prev_kv {
                prev_kvs.push(prev);
            }
        }
        DeleteRangeResponse {
            revision: if w.sub > 0 { w.main } else { w.main - 1 },
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    /// etcd's `applyCompare`: over a range, every key must satisfy the compare; a missing
    /// key compares as a zero KeyValue, except that a value compare on nothing fails.
    fn compare_holds(&self, c: &Compare, at: i64) -> bool {
        let kvs: Vec<(&Generation, &Version)> = match key_bounds(&c.key, &c.range_end) {
            Some(bounds) => self
                .keys
                .range::<[u8], _>(bounds)
                .filter_map(|(_, h)| h.at(at))
                .collect(),
            None => Vec::new(),
        };
        if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            return compare_one(c, 0, 0, 0, &[], 0);
        }
        kvs.iter()
            .all(|(g, v)| compare_one(c, v.version, g.created, v.rev.main, &v.value, v.lease.0))
    }

    /// etcd's `compareToPath`: every guard of the transaction and of the nested ones on
    /// the chosen branches, evaluated before any operation runs.
    fn txn_path(&self, txn: &TxnRequest, at: i64, path: &mut Vec<bool>) {
        let succeeded = txn.compare.iter().all(|c| self.compare_holds(c, at));
        path.push(succeeded);
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            if let RequestOp::Txn(nested) = op {
                self.txn_path(nested, at, path);
            }
        }
    }

    /// etcd's `checkRequests` for the chosen branches: leases exist, ignored values have
    /// a key, read revisions are neither future nor compacted.
    fn check_txn_state(
        &self,
        txn: &TxnRequest,
        path: &[bool],
        next: &mut usize,
    ) -> Result<(), MvccError> {
        let succeeded = path.get(*next).copied().unwrap_or(false);
        *next += 1;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            match op {
                RequestOp::Range(r) => {
                    if r.revision > self.current {
                        return Err(MvccError::FutureRevision);
                    }
                    if r.revision > 0 && r.revision < self.compacted {
                        return Err(MvccError::Compacted {
                            compact_revision: self.compacted,
                        });
                    }
                }
                RequestOp::Put(p) => self.check_put_state(p)?,
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(nested) => self.check_txn_state(nested, path, next)?,
            }
        }
        Ok(())
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        check_txn(req, self.config.max_txn_ops)?;
        check_intervals(&req.success)?;
        check_intervals(&req.failure)?;
        let mut path = Vec::new();
        self.txn_path(req, self.current, &mut path);
        self.check_txn_state(req, &path, &mut 0)?;
        let mut w = self.writer();
        let resp = self.exec_txn(&mut w, req, &path, &mut 0);
        self.commit(w);
        Ok(TxnResponse {
            revision: self.current,
            ..resp
        })
    }

    fn exec_txn(
        &mut self,
        w: &mut Writer,
        txn: &TxnRequest,
        path: &[bool],
        next: &mut usize,
    ) -> TxnResponse {
        let succeeded = path.get(*next).copied().unwrap_or(false);
        *next += 1;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    // Checked above, so it cannot fail; a failure would be a bug.
                    let at = w.read_revision();
                    ResponseOp::Range(self.range_at(r, at).unwrap_or_default())
                }
                RequestOp::Put(p) => ResponseOp::Put(self.exec_put(w, p)),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.exec_delete(w, d)),
                RequestOp::Txn(nested) => ResponseOp::Txn(self.exec_txn(w, nested, path, next)),
            });
        }
        TxnResponse {
            revision: w.read_revision(),
            succeeded,
            responses,
        }
    }

    fn compact(&mut self, req: &CompactionRequest) -> MvccOutput {
        if req.revision <= self.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        if req.revision > self.current {
            return Err(MvccError::FutureRevision);
        }
        let at = req.revision;
        let keep = self.changes.split_off(&Rev {
            main: at + 1,
            sub: 0,
        });
        let touched: BTreeSet<Vec<u8>> = std::mem::replace(&mut self.changes, keep)
            .into_values()
            .collect();
        for key in touched {
            let Some(history) = self.keys.get_mut(key.as_slice()).map(Arc::make_mut) else {
                continue;
            };
            self.db_size -= history.compact(key.len() as u64, at);
            if history.generations.is_empty() {
                self.keys.remove(key.as_slice());
            }
        }
        self.compacted = at;
        Ok(MvccResponse::Compact {
            revision: self.current,
        })
    }

    fn lease_grant(&mut self, seed: u64, id: LeaseId, ttl: i64) -> MvccOutput {
        if ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        let id = if id == LeaseId::NONE {
            let mut candidate = lease_id_from(seed);
            while candidate == 0 || self.leases.contains_key(&LeaseId(candidate)) {
                candidate = candidate.wrapping_add(1) & i64::MAX;
            }
            LeaseId(candidate)
        } else {
            id
        };
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        let ttl = ttl.max(self.config.min_lease_ttl);
        let lease = Lease {
            ttl,
            remaining_ttl: 0,
            keys: BTreeSet::new(),
        };
        self.db_size += lease_size(&lease);
        self.leases.insert(id, lease);
        Ok(MvccResponse::LeaseGrant {
            revision: self.current,
            id,
            ttl,
        })
    }

    /// Delete the lease's keys in one revision, in key order (as etcd's lessor does), and
    /// the lease.
    fn revoke(&mut self, id: LeaseId) {
        let Some(lease) = self.leases.get(&id) else {
            return;
        };
        let keys: Vec<Vec<u8>> = lease.keys.iter().cloned().collect();
        let mut w = self.writer();
        for key in keys {
            self.exec_delete(
                &mut w,
                &DeleteRangeRequest {
                    key,
                    range_end: Vec::new(),
                    prev_kv: false,
                },
            );
        }
        self.commit(w);
        if let Some(lease) = self.leases.remove(&id) {
            self.db_size -= lease_size(&lease);
        }
    }

    /// Every change in revisions `[start, end]` to keys in the range of `key` and
    /// `range_end`, in revision order, each with the key's previous version. `end` beyond
    /// the current revision reads to the current one. Fails with `Compacted` when
    /// `start` is at or below the compacted revision, since some of those changes are
    /// gone.
    pub fn events_between(
        &self,
        start: Revision,
        end: Revision,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<Vec<Event>, MvccError> {
        let start = start.0.max(1);
        if start <= self.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        let end = end.0.min(self.current);
        if start > end {
            return Ok(Vec::new());
        }
        let from = Rev {
            main: start,
            sub: 0,
        };
        let to = Rev {
            main: end,
            sub: i64::MAX,
        };
        Ok(self
            .changes
            .range(from..=to)
            .filter(|(_, k)| in_range(k, key, range_end))
            .filter_map(|(rev, k)| self.keys.get(k.as_slice())?.event_at(k, *rev))
            .collect())
    }

    /// Every change after revision `after` (up to the current revision) to keys in the
    /// range, for a live watcher that has delivered everything up to `after`. It reads the
    /// retained history, or the watch journal when a compaction has passed `after` since;
    /// only a watcher more than `journal_revisions` behind a compaction gets `Compacted`,
    /// as in etcd, and must be cancelled with the compact revision.
    pub fn events_after(
        &self,
        after: Revision,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(Vec<Event>, EventSource), MvccError> {
        #[cfg(any(test, feature = "harness"))]
        let after = if self.watch_gap && self.current > after.0 + 1 {
            Revision(after.0 + 1)
        } else {
            after
        };
        if after.0 >= self.compacted {
            let events = self.events_between(
                Revision(after.0 + 1),
                Revision(self.current),
                key,
                range_end,
            )?;
            return Ok((events, EventSource::History));
        }
        if after.0 < self.journal_floor {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        let events = self
            .journal
            .iter()
            .filter(|e| e.kv.mod_revision > after.0 && in_range(&e.kv.key, key, range_end))
            .cloned()
            .collect();
        Ok((events, EventSource::Journal))
    }

    /// The replicated state as of now, sharing the keys and their histories: a copy of
    /// one pointer pair per key (no key or value bytes), so it is cheap enough for the
    /// write path. Leases are copied whole; they are few beside the keys.
    fn view(&self) -> SnapshotView {
        SnapshotView {
            current: self.current,
            compacted: self.compacted,
            keys: self.keys.clone(),
            leases: self.leases.clone(),
        }
    }

    fn to_snapshot(&self) -> Vec<u8> {
        codec::encode(&self.view())
    }

    fn restore_snapshot(&mut self, bytes: &[u8]) -> Result<(), String> {
        let data: SnapshotData =
            codec::decode_bounded(bytes, usize::MAX).map_err(|e| format!("mvcc snapshot: {e}"))?;
        if data.current < 1 || data.compacted < 0 || data.compacted > data.current {
            return Err(format!(
                "mvcc snapshot: revision {} with compacted revision {}",
                data.current, data.compacted
            ));
        }
        let mut changes = BTreeMap::new();
        let mut keys = KeyIndex::new();
        for (key, history) in data.keys {
            let key: Arc<[u8]> = Arc::from(key.into_vec());
            let mut last: Option<Rev> = None;
            for (i, generation) in history.generations.iter().enumerate() {
                if generation.versions.is_empty() {
                    return Err("mvcc snapshot: a generation without versions".into());
                }
                let open = generation.tombstone.is_none();
                if open && i + 1 != history.generations.len() {
                    return Err("mvcc snapshot: a live generation before another".into());
                }
                let revs = generation
                    .versions
                    .iter()
                    .map(|v| v.rev)
                    .chain(generation.tombstone);
                for rev in revs {
                    if last.is_some_and(|l| l >= rev) {
                        return Err(format!(
                            "mvcc snapshot: key {key:?} has revisions out of order"
                        ));
                    }
                    last = Some(rev);
                    if rev.main > data.current {
                        return Err(format!(
                            "mvcc snapshot: a change at {} beyond revision {}",
                            rev.main, data.current
                        ));
                    }
                    if rev.main > data.compacted {
                        changes.insert(rev, key.to_vec());
                    }
                }
            }
            keys.insert(key, Arc::new(history));
        }
        self.current = data.current;
        self.compacted = data.compacted;
        self.keys = keys;
        self.leases = data.leases;
        self.changes = changes;
        self.db_size = self.recomputed_db_size();
        self.journal.clear();
        self.journal_floor = self.current;
        Ok(())
    }

    /// Check the derived bookkeeping against the data (tests).
    #[cfg(test)]
    pub(crate) fn check_consistency(&self) -> Result<(), String> {
        if self.db_size != self.recomputed_db_size() {
            return Err(format!(
                "db_size {} but recomputed {}",
                self.db_size,
                self.recomputed_db_size()
            ));
        }
        for (id, lease) in &self.leases {
            for key in &lease.keys {
                let live = self.keys.get(key.as_slice()).and_then(|h| h.live());
                let attached = live.and_then(|g| g.versions.last()).map(|v| v.lease);
                if attached != Some(*id) {
                    return Err(format!("lease {id} lists a key attached to {attached:?}"));
                }
            }
        }
        Ok(())
    }
}

/// Runs a read-only transaction on a store it cannot change.
struct ReadOnly<'a> {
    store: &'a MvccStateMachine,
}

impl ReadOnly<'_> {
    fn txn(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let store = self.store;
        check_txn(req, store.config.max_txn_ops)?;
        let mut path = Vec::new();
        store.txn_path(req, store.current, &mut path);
        store.check_txn_state(req, &path, &mut 0)?;
        Ok(self.exec(req, &path, &mut 0))
    }

    fn exec(&self, txn: &TxnRequest, path: &[bool], next: &mut usize) -> TxnResponse {
        let succeeded = path.get(*next).copied().unwrap_or(false);
        *next += 1;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let responses = ops
            .iter()
            .map(|op| match op {
                RequestOp::Txn(nested) => ResponseOp::Txn(self.exec(nested, path, next)),
                RequestOp::Range(r) => ResponseOp::Range(
                    self.store
                        .range_at(r, self.store.current)
                        .unwrap_or_default(),
                ),
                // Not reached: the caller checked that the transaction is read-only.
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {
                    ResponseOp::Range(RangeResponse::default())
                }
            })
            .collect();
        TxnResponse {
            revision: self.store.current,
            succeeded,
            responses,
        }
    }
}

fn txn_is_read_only(txn: &TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).all(|op| match op {
        RequestOp::Range(_) => true,
        RequestOp::Txn(nested) => txn_is_read_only(nested),
        RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
    })
}

fn compare_one(
    c: &Compare,
    version: i64,
    create: i64,
    modified: i64,
    value: &[u8],
    lease: i64,
) -> bool {
    let ordering = match &c.target {
        CompareTarget::Version(x) => version.cmp(x),
        CompareTarget::Create(x) => create.cmp(x),
        CompareTarget::Mod(x) => modified.cmp(x),
        CompareTarget::Value(x) => value.cmp(x.as_slice()),
        CompareTarget::Lease(x) => lease.cmp(x),
    };
    match c.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
        CompareResult::NotEqual => ordering != Ordering::Equal,
    }
}

/// etcd's `checkPutRequest`.
fn check_put(req: &PutRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkDeleteRequest`.
fn check_delete(req: &DeleteRangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: the size limit and the per-operation checks, recursively.
fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    if req.compare.len() > max_ops || req.success.len() > max_ops || req.failure.len() > max_ops {
        return Err(MvccError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) if r.key.is_empty() => return Err(MvccError::EmptyKey),
            RequestOp::Range(_) => {}
            RequestOp::Put(p) => check_put(p)?,
            RequestOp::DeleteRange(d) => check_delete(d)?,
            RequestOp::Txn(nested) => check_txn(nested, max_ops)?,
        }
    }
    Ok(())
}

/// The keys a branch puts and the ranges it deletes.
#[derive(Default)]
struct Writes {
    puts: BTreeSet<Vec<u8>>,
    deletes: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Writes {
    fn deletes_key(&self, key: &[u8]) -> bool {
        self.deletes.iter().any(|(k, e)| in_range(key, k, e))
    }
}

/// etcd's `checkIntervals`: within one branch (with the branches of its nested
/// transactions), no key is put twice and no key is both put and deleted. The two
/// branches of one nested transaction exclude each other, so they may put the same key.
fn check_intervals(ops: &[RequestOp]) -> Result<Writes, MvccError> {
    let mut writes = Writes::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            writes.deletes.push((d.key.clone(), d.range_end.clone()));
        }
    }
    for op in ops {
        let RequestOp::Txn(nested) = op else { continue };
        let then = check_intervals(&nested.success)?;
        let other = check_intervals(&nested.failure)?;
        for key in &then.puts {
            if writes.puts.contains(key) || writes.deletes_key(key) {
                return Err(MvccError::DuplicateKey);
            }
        }
        for key in &other.puts {
            if (writes.puts.contains(key) && !then.puts.contains(key)) || writes.deletes_key(key) {
                return Err(MvccError::DuplicateKey);
            }
        }
        writes.puts.extend(then.puts);
        writes.puts.extend(other.puts);
        writes.deletes.extend(then.deletes);
        writes.deletes.extend(other.deletes);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if writes.puts.contains(&p.key) || writes.deletes_key(&p.key) {
            return Err(MvccError::DuplicateKey);
        }
        writes.puts.insert(p.key.clone());
    }
    Ok(writes)
}

impl StateMachine for MvccStateMachine {
    type Command = MvccCommand;
    type Output = MvccOutput;

    fn apply(&mut self, index: LogIndex, command: &MvccCommand) -> MvccOutput {
        self.apply_command(index.0, command)
    }

    fn read(&self, command: &MvccCommand) -> MvccOutput {
        self.read_command(command)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.to_snapshot()
    }

    fn snapshot_view(&self) -> Box<dyn FnOnce() -> Vec<u8> + Send> {
        let view = self.view();
        Box::new(move || codec::encode(&view))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.restore_snapshot(snapshot)
    }

    fn snapshot_size_hint(&self) -> Option<u64> {
        // The snapshot encodes every version's key, value and metadata: about db_size.
        Some(self.db_size)
    }
}
