//! The replicated log: an in-memory copy of the entries, mirrored record for record in
//! the actor's storage log so that Raft index `i` is storage index `i`.

use super::msg::{Entry, Term};
use serde::de::DeserializeOwned;
use serde::Serialize;
use synod_core::{codec, LogIndex, Storage};

/// FNV-1a, chained: the hash of a log prefix. Two logs with the same prefix hash at an
/// index hold the same entries up to it; the simulation invariants rely on this.
fn chain_hash(previous: u64, record: &[u8]) -> u64 {
    let mut hash = previous ^ 0xcbf2_9ce4_8422_2325;
    for byte in previous.to_le_bytes().iter().chain(record) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// One entry held in memory, with its encoded size (for batching) and prefix hash.
#[derive(Debug, Clone)]
struct Slot<C> {
    entry: Entry<C>,
    bytes: usize,
    prefix_hash: u64,
}

/// The log: entries after `base_index`, which is 0 or the last index covered by a snapshot.
#[derive(Debug, Clone)]
pub(crate) struct RaftLog<C> {
    base_index: LogIndex,
    base_term: Term,
    base_hash: u64,
    slots: Vec<Slot<C>>,
}

impl<C: Clone + Serialize + DeserializeOwned> RaftLog<C> {
    /// An empty log.
    pub(crate) fn new() -> Self {
        RaftLog {
            base_index: LogIndex::ZERO,
            base_term: Term(0),
            base_hash: 0,
            slots: Vec::new(),
        }
    }

    /// Rebuild the log from storage, after the snapshot `base` (index, term, hash) if
    /// there is one. Any record that does not decode is corruption.
    pub(crate) fn load(
        storage: &mut dyn Storage,
        base: Option<(LogIndex, Term, u64)>,
    ) -> Result<Self, String> {
        let mut log = RaftLog::new();
        if let Some((index, term, hash)) = base {
            log.base_index = index;
            log.base_term = term;
            log.base_hash = hash;
            // The snapshot is written before the log is compacted; a crash between the
            // two leaves records the snapshot covers. Compact again (idempotent).
            if storage.log_bounds().0 <= index {
                storage.compact(index.next());
            }
        }
        let (first, next) = storage.log_bounds();
        if first != log.base_index.next() {
            return Err(format!(
                "log starts at {first} but the snapshot ends at {}",
                log.base_index
            ));
        }
        let mut index = first;
        while index < next {
            let record = storage
                .read(index)
                .ok_or_else(|| format!("log record {index} is missing"))?;
            let entry: Entry<C> = codec::decode(&record)
                .map_err(|e| format!("log record {index} does not decode: {e}"))?;
            if entry.term < log.last_term() {
                return Err(format!(
                    "log record {index} has a term below its predecessor"
                ));
            }
            log.push(entry, &record);
            index = index.next();
        }
        Ok(log)
    }

    fn push(&mut self, entry: Entry<C>, record: &[u8]) {
        let prefix_hash = chain_hash(self.last_hash(), record);
        self.slots.push(Slot {
            entry,
            bytes: record.len(),
            prefix_hash,
        });
    }

    fn slot(&self, index: LogIndex) -> Option<&Slot<C>> {
        let offset = index.0.checked_sub(self.base_index.0 + 1)?;
        self.slots.get(usize::try_from(offset).ok()?)
    }

    /// Index of the last entry (or of the snapshot base when no entry follows it).
    pub(crate) fn last_index(&self) -> LogIndex {
        LogIndex(self.base_index.0 + self.slots.len() as u64)
    }

    /// Term of the last entry.
    pub(crate) fn last_term(&self) -> Term {
        self.slots.last().map_or(self.base_term, |s| s.entry.term)
    }

    fn last_hash(&self) -> u64 {
        self.slots.last().map_or(self.base_hash, |s| s.prefix_hash)
    }

    /// The term of the entry at `index`; `None` if it is past the end or compacted away.
    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        self.slot(index).map(|s| s.entry.term)
    }

    /// The prefix hash at `index` (see [`chain_hash`]).
    pub(crate) fn hash_at(&self, index: LogIndex) -> Option<u64> {
        if index == self.base_index {
            return Some(self.base_hash);
        }
        self.slot(index).map(|s| s.prefix_hash)
    }

    /// The entry at `index`.
    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry<C>> {
        self.slot(index).map(|s| &s.entry)
    }

    /// The snapshot base: entries up to here are not held.
    pub(crate) fn base_index(&self) -> LogIndex {
        self.base_index
    }

    /// Append `entry` in memory and in storage, and return its index.
    pub(crate) fn append(
        &mut self,
        storage: &mut dyn Storage,
        entry: Entry<C>,
    ) -> Result<LogIndex, String> {
        let record = codec::encode(&entry);
        let expected = self.last_index().next();
        let stored = storage.append(&record);
        if stored != expected {
            return Err(format!(
                "storage appended at {stored}, but the log expected {expected}"
            ));
        }
        self.push(entry, &record);
        Ok(expected)
    }

    /// Remove every entry at `from` and after, in memory and in storage.
    pub(crate) fn truncate(&mut self, storage: &mut dyn Storage, from: LogIndex) {
        if from > self.base_index {
            let keep = (from.0 - self.base_index.0 - 1) as usize;
            self.slots.truncate(keep);
            storage.truncate(from);
        }
    }

    /// Discard the entries up through `index` (which must be held), after a snapshot
    /// that covers them was stored.
    pub(crate) fn compact(&mut self, storage: &mut dyn Storage, index: LogIndex) {
        let (Some(term), Some(hash)) = (self.term_at(index), self.hash_at(index)) else {
            return;
        };
        if index <= self.base_index {
            return;
        }
        let drop = (index.0 - self.base_index.0) as usize;
        self.slots.drain(..drop);
        self.base_index = index;
        self.base_term = term;
        self.base_hash = hash;
        storage.compact(index.next());
    }

    /// Figure 13, receiver rules 6 and 7: keep the entries after an installed snapshot if
    /// the log holds the snapshot's last entry, else discard the whole log.
    pub(crate) fn install_snapshot(
        &mut self,
        storage: &mut dyn Storage,
        index: LogIndex,
        term: Term,
        hash: u64,
    ) {
        if self.term_at(index) == Some(term) && index > self.base_index {
            return self.compact(storage, index);
        }
        self.slots.clear();
        storage.truncate(self.base_index.next());
        storage.compact(index.next());
        self.base_index = index;
        self.base_term = term;
        self.base_hash = hash;
    }

    /// Up to `max_entries` entries from `from`, stopping before `max_bytes` of encoded
    /// size (but always at least one entry, so that a large entry still moves).
    pub(crate) fn entries_from(
        &self,
        from: LogIndex,
        max_entries: usize,
        max_bytes: usize,
    ) -> Vec<Entry<C>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = from;
        while out.len() < max_entries {
            let Some(slot) = self.slot(index) else { break };
            if !out.is_empty() && bytes + slot.bytes > max_bytes {
                break;
            }
            bytes += slot.bytes;
            out.push(slot.entry.clone());
            index = index.next();
        }
        out
    }

    /// The last index holding an entry of `term`, if any (§5.3 fast backtracking, leader
    /// side).
    pub(crate) fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        let mut index = self.last_index();
        while index > self.base_index {
            let t = self.term_at(index)?;
            if t == term {
                return Some(index);
            }
            if t < term {
                return None;
            }
            index = index.prev();
        }
        None
    }

    /// The first index of the run of entries sharing the term at `index` (§5.3 fast
    /// backtracking, follower side).
    pub(crate) fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term_at(index) else {
            return index;
        };
        let mut first = index;
        while first.prev() > self.base_index && self.term_at(first.prev()) == Some(term) {
            first = first.prev();
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::msg::EntryPayload;
    use synod_core::MemStorage;

    fn noop(term: u64) -> Entry<u64> {
        Entry {
            term: Term(term),
            payload: EntryPayload::Noop,
        }
    }

    #[test]
    fn log_survives_a_reload_and_truncation() {
        let mut storage = MemStorage::new();
        let mut log = RaftLog::<u64>::new();
        for term in [1, 1, 2, 3] {
            log.append(&mut storage, noop(term)).unwrap();
        }
        log.truncate(&mut storage, LogIndex(4));
        log.append(&mut storage, noop(2)).unwrap();
        let reloaded = RaftLog::<u64>::load(&mut storage, None).unwrap();
        assert_eq!(reloaded.last_index(), LogIndex(4));
        assert_eq!(reloaded.hash_at(LogIndex(4)), log.hash_at(LogIndex(4)));
        assert_eq!(reloaded.first_index_of_term_at(LogIndex(4)), LogIndex(3));
        assert_eq!(reloaded.last_index_of_term(Term(1)), Some(LogIndex(2)));
        assert_eq!(reloaded.last_index_of_term(Term(3)), None);
    }

    #[test]
    fn compaction_and_installed_snapshots_keep_indexes_aligned_with_storage() {
        let mut storage = MemStorage::new();
        let mut log = RaftLog::<u64>::new();
        for term in [1, 1, 2, 2] {
            log.append(&mut storage, noop(term)).unwrap();
        }
        let hash = log.hash_at(LogIndex(2)).unwrap();
        log.compact(&mut storage, LogIndex(2));
        assert_eq!(log.term_at(LogIndex(2)), Some(Term(1)));
        assert_eq!(log.entry(LogIndex(2)), None);
        assert_eq!(storage.log_bounds(), (LogIndex(3), LogIndex(5)));
        let reloaded =
            RaftLog::<u64>::load(&mut storage, Some((LogIndex(2), Term(1), hash))).unwrap();
        assert_eq!(reloaded.hash_at(LogIndex(4)), log.hash_at(LogIndex(4)));
        // A snapshot past the end, of a term the log does not hold there: start over.
        log.install_snapshot(&mut storage, LogIndex(9), Term(3), 77);
        assert_eq!(log.last_index(), LogIndex(9));
        assert_eq!(storage.log_bounds(), (LogIndex(10), LogIndex(10)));
        assert_eq!(log.append(&mut storage, noop(3)).unwrap(), LogIndex(10));
    }

    #[test]
    fn a_corrupt_record_refuses_to_load() {
        let mut storage = MemStorage::new();
        storage.append(&[0xff, 0xff, 0xff, 0xff]);
        assert!(RaftLog::<u64>::load(&mut storage, None).is_err());
    }
}
