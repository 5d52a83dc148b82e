//! The storage interface actors use for state that must survive a crash.
//!
//! Two shapes of durable state cover every protocol in synod:
//!
//! - a small key-value space (`put`/`get`/`delete`) for things like Raft's term and vote or a
//!   Paxos acceptor's promise;
//! - one append-only log per actor (`append`/`read`/`truncate`/`compact`) for replicated logs
//!   and write-ahead records.
//!
//! Writes are visible to reads at once. They become durable only when the driver syncs, at
//! the end of a batch (DESIGN.md, "Group commit"). A crash loses every write since the last
//! sync, except that a prefix of them may have reached the disk anyway, as on a real machine.
//! Held sends leave only after the sync, so no peer ever sees the effect of a write that a
//! crash could undo.

use crate::codec::{self, CodecError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// A position in an actor's log. The first record ever appended has index 1; 0 means "none".
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct LogIndex(pub u64);

impl LogIndex {
    /// The index before the first record.
    pub const ZERO: LogIndex = LogIndex(0);

    /// The next index.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The previous index, or zero.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Durable state for one actor.
///
/// The trait is object-safe so that [`crate::Ctx`] can hold any implementation: the
/// in-memory [`MemStorage`] of the simulator and of unit tests, or the on-disk store of the
/// real driver. Reads are infallible: a driver whose disk fails stops the node instead of
/// handing errors to protocol code (DESIGN.md: "If fsync fails, stop the node").
pub trait Storage {
    /// Set `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]);
    /// The value under `key`, if any.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Remove `key`.
    fn delete(&mut self, key: &[u8]);

    /// Append a record to the log and return its index.
    fn append(&mut self, record: &[u8]) -> LogIndex;
    /// The record at `index`, if it is in the log (not compacted away, not past the end).
    fn read(&self, index: LogIndex) -> Option<Vec<u8>>;
    /// Remove every record at `from` and after. The next append gets index `from`
    /// (or the first index, if `from` is before it).
    fn truncate(&mut self, from: LogIndex);
    /// Discard every record before `before`, e.g. after a snapshot. If the log ends before
    /// `before`, it becomes empty and the next append gets index `before`.
    fn compact(&mut self, before: LogIndex);
    /// The index of the first record held, and the index the next append will get. The log
    /// is empty when they are equal.
    fn log_bounds(&self) -> (LogIndex, LogIndex);

    /// Set the large value `name` (a Raft snapshot, say), durable with the step's other
    /// writes. A store may keep blobs apart from the key-value space, which it may copy
    /// often (the disk store keeps a copy of every key in each segment header); the default
    /// keeps them in it.
    fn put_blob(&mut self, name: &[u8], data: &[u8]) {
        self.put(name, data);
    }

    /// The blob `name`, if any.
    fn get_blob(&self, name: &[u8]) -> Option<Vec<u8>> {
        self.get(name)
    }

    /// Remove the blob `name`, once the step's other writes are durable.
    fn delete_blob(&mut self, name: &[u8]) {
        self.delete(name);
    }

    /// The names of the blobs that start with `prefix`, so that a protocol can sweep
    /// the ones a crash left without a reference. A store that cannot list its blobs
    /// returns none, and then nothing is swept.
    fn blob_names(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        let _ = prefix;
        Vec::new()
    }
}

/// Typed helpers over any [`Storage`], encoding with the project codec.
pub trait StorageExt: Storage {
    /// Encode `value` and store it under `key`.
    fn put_value<T: Serialize>(&mut self, key: &[u8], value: &T) {
        self.put(key, &codec::encode(value));
    }

    /// Decode the value under `key`. A value that does not decode is an error, not `None`:
    /// silently forgetting durable state would break the protocol's promises.
    fn get_value<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, CodecError> {
        self.get(key).map(|bytes| codec::decode(&bytes)).transpose()
    }

    /// Encode `value` and append it to the log.
    fn append_value<T: Serialize>(&mut self, value: &T) -> LogIndex {
        self.append(&codec::encode(value))
    }

    /// Decode the log record at `index`.
    fn read_value<T: DeserializeOwned>(&self, index: LogIndex) -> Result<Option<T>, CodecError> {
        self.read(index)
            .map(|bytes| codec::decode(&bytes))
            .transpose()
    }
}

impl<S: Storage + ?Sized> StorageExt for S {}

/// One write not yet synced, with what is needed to undo it on a crash.
#[derive(Debug, Clone)]
enum Undo {
    Put {
        key: Vec<u8>,
        previous: Option<Vec<u8>>,
    },
    Append,
    Truncate {
        removed: Vec<Vec<u8>>,
    },
    Compact {
        first: LogIndex,
        removed: Vec<Vec<u8>>,
    },
}

/// In-memory [`Storage`] that models durability exactly.
///
/// Every write since the last [`MemStorage::sync`] is remembered with its undo record. A
/// [`MemStorage::crash`] keeps the first `keep` of them (they reached the disk before the
/// power went) and undoes the rest. The simulator picks `keep` from its disk stream; unit
/// tests pick it by hand.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    log: VecDeque<Vec<u8>>,
    first: LogIndex,
    pending: Vec<Undo>,
    bytes_pending: usize,
}

impl MemStorage {
    /// An empty store whose log starts at index 1.
    pub fn new() -> Self {
        MemStorage {
            first: LogIndex(1),
            ..Default::default()
        }
    }

    /// Number of writes since the last sync.
    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }

    /// Bytes written since the last sync (an estimate for modelling disk time).
    pub fn pending_bytes(&self) -> usize {
        self.bytes_pending
    }

    /// Make every write so far durable.
    pub fn sync(&mut self) {
        self.pending.clear();
        self.bytes_pending = 0;
    }

    /// Make the first `count` unsynced writes durable, e.g. those of a batch whose sync
    /// started before later writes were issued.
    pub fn sync_first(&mut self, count: usize) {
        let count = count.min(self.pending.len());
        self.pending.drain(..count);
        if self.pending.is_empty() {
            self.bytes_pending = 0;
        }
    }

    /// Lose power: keep the first `keep` unsynced writes and undo the rest, newest first.
    pub fn crash(&mut self, keep: usize) {
        while self.pending.len() > keep {
            let Some(undo) = self.pending.pop() else {
                break;
            };
            match undo {
                Undo::Put { key, previous } => match previous {
                    Some(v) => {
                        self.kv.insert(key, v);
                    }
                    None => {
                        self.kv.remove(&key);
                    }
                },
                Undo::Append => {
                    self.log.pop_back();
                }
                Undo::Truncate { removed } => self.log.extend(removed),
                Undo::Compact { first, removed } => {
                    // Restore the discarded prefix in front of whatever remains.
                    let mut restored: VecDeque<Vec<u8>> = removed.into();
                    restored.append(&mut self.log);
                    self.log = restored;
                    self.first = first;
                }
            }
        }
        self.pending.clear();
        self.bytes_pending = 0;
    }

    /// Store `value` under `key` as already durable: a blob that background work wrote
    /// and fsynced on its own ([`crate::Background`]). A crash keeps it.
    pub fn put_durable(&mut self, key: &[u8], value: &[u8]) {
        self.kv.insert(key.to_vec(), value.to_vec());
        // An unsynced write of the same key undone by a crash falls back to this value.
        for undo in &mut self.pending {
            if let Undo::Put { key: k, previous } = undo {
                if k.as_slice() == key {
                    *previous = Some(value.to_vec());
                    break;
                }
            }
        }
    }

    /// Every key-value pair, in key order (for inspection in tests and tools).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.kv.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    fn next_index(&self) -> LogIndex {
        LogIndex(self.first.0 + self.log.len() as u64)
    }

    fn slot(&self, index: LogIndex) -> Option<usize> {
        if index < self.first || index >= self.next_index() {
            return None;
        }
        usize::try_from(index.0 - self.first.0).ok()
    }
}

impl Storage for MemStorage {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.bytes_pending += key.len() + value.len();
        let previous = self.kv.insert(key.to_vec(), value.to_vec());
        self.pending.push(Undo::Put {
            key: key.to_vec(),
            previous,
        });
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.kv.get(key).cloned()
    }

    // Blobs live in the key-value space here (the trait's default).
    fn blob_names(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.kv
            .range(prefix.to_vec()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn delete(&mut self, key: &[u8]) {
        if let Some(previous) = self.kv.remove(key) {
            self.bytes_pending += key.len();
            self.pending.push(Undo::Put {
                key: key.to_vec(),
                previous: Some(previous),
            });
        }
    }

    fn append(&mut self, record: &[u8]) -> LogIndex {
        let index = self.next_index();
        self.bytes_pending += record.len();
        self.log.push_back(record.to_vec());
        self.pending.push(Undo::Append);
        index
    }

    fn read(&self, index: LogIndex) -> Option<Vec<u8>> {
        self.slot(index).and_then(|i| self.log.get(i).cloned())
    }

    fn truncate(&mut self, from: LogIndex) {
        let keep = from.0.saturating_sub(self.first.0);
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        if keep >= self.log.len() {
            return;
        }
        let removed: Vec<Vec<u8>> = self.log.drain(keep..).collect();
        self.bytes_pending += 8;
        self.pending.push(Undo::Truncate { removed });
    }

    fn compact(&mut self, before: LogIndex) {
        if before <= self.first {
            return;
        }
        let next = self.next_index();
        let drop = before.0.min(next.0) - self.first.0;
        let drop = usize::try_from(drop).unwrap_or(usize::MAX);
        let removed: Vec<Vec<u8>> = self.log.drain(..drop).collect();
        self.bytes_pending += 8;
        self.pending.push(Undo::Compact {
            first: self.first,
            removed,
        });
        self.first = before;
    }

    fn log_bounds(&self) -> (LogIndex, LogIndex) {
        (self.first, self.next_index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_vanish_on_crash() {
        let mut s = MemStorage::new();
        s.put(b"term", b"1");
        s.append(b"a");
        s.sync();
        s.put(b"term", b"2");
        s.append(b"b");
        s.delete(b"term");
        s.crash(0);
        assert_eq!(s.get(b"term"), Some(b"1".to_vec()));
        assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(2)));
        assert_eq!(s.read(LogIndex(1)), Some(b"a".to_vec()));
    }

    #[test]
    fn crash_keeps_a_prefix_of_unsynced_writes() {
        let mut s = MemStorage::new();
        s.append(b"a");
        s.append(b"b");
        s.append(b"c");
        s.crash(2);
        assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(3)));
        assert_eq!(s.read(LogIndex(3)), None);
    }

    #[test]
    fn truncate_and_compact_are_undone_on_crash() {
        let mut s = MemStorage::new();
        for r in [b"1", b"2", b"3", b"4"] {
            s.append(r);
        }
        s.sync();
        s.truncate(LogIndex(3));
        assert_eq!(s.append(b"x"), LogIndex(3));
        s.compact(LogIndex(3));
        assert_eq!(s.log_bounds(), (LogIndex(3), LogIndex(4)));
        assert_eq!(s.read(LogIndex(2)), None);
        s.crash(0);
        assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(5)));
        assert_eq!(s.read(LogIndex(3)), Some(b"3".to_vec()));
        assert_eq!(s.read(LogIndex(4)), Some(b"4".to_vec()));
    }

    #[test]
    fn compact_past_the_end_moves_the_next_index() {
        let mut s = MemStorage::new();
        s.append(b"1");
        s.compact(LogIndex(10));
        assert_eq!(s.log_bounds(), (LogIndex(10), LogIndex(10)));
        assert_eq!(s.append(b"x"), LogIndex(10));
        s.crash(0);
        assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(1)));
    }

    #[test]
    fn typed_values_round_trip_and_garbage_is_an_error() {
        let mut s = MemStorage::new();
        s.put_value(b"k", &(7u64, String::from("x")));
        let v: Option<(u64, String)> = s.get_value(b"k").unwrap();
        assert_eq!(v, Some((7, "x".into())));
        s.put(b"bad", &[0xff, 0xff, 0xff]);
        assert!(s.get_value::<(u64, String)>(b"bad").is_err());
    }
}
