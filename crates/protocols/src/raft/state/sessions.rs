//! The client session table (thesis §6.3): the newest sequence number and output per
//! session, so a retried write is answered without being applied twice.
//!
//! The table is bounded. When a new session would exceed `max_sessions`, the session
//! whose last write applied earliest is forgotten. Every server applies the same entries
//! in the same order, so every server evicts the same session at the same index and the
//! tables never diverge (the thesis's requirement for deterministic expiry). A client
//! that retries on a forgotten session after that many newer sessions have written is
//! not protected from a duplicate; synod's gateway reuses a small pool of sessions, so
//! its sessions stay recent.

use super::super::msg::SessionId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use synod_core::LogIndex;

/// One session's newest write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SessionEntry<O> {
    pub(crate) seq: u64,
    pub(crate) output: O,
    /// The index at which that write applied.
    pub(crate) index: LogIndex,
}

#[derive(Clone, Debug)]
pub(crate) struct Sessions<O> {
    by_id: BTreeMap<SessionId, SessionEntry<O>>,
    /// Sessions by the index of their newest write: the first is the least recent.
    by_index: BTreeMap<LogIndex, SessionId>,
}

impl<O: Clone> Sessions<O> {
    pub(crate) fn new() -> Self {
        Sessions {
            by_id: BTreeMap::new(),
            by_index: BTreeMap::new(),
        }
    }

    pub(crate) fn get(&self, session: &SessionId) -> Option<(u64, &O)> {
        self.by_id.get(session).map(|e| (e.seq, &e.output))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Record that `session`'s write `seq` applied at `index` with `output`, forgetting
    /// the least recent session if a new one would make more than `max`.
    pub(crate) fn record(
        &mut self,
        session: SessionId,
        seq: u64,
        output: O,
        index: LogIndex,
        max: usize,
    ) {
        match self.by_id.get(&session) {
            Some(old) => {
                self.by_index.remove(&old.index);
            }
            None => {
                while self.by_id.len() >= max.max(1) {
                    let Some((_, oldest)) = self.by_index.pop_first() else {
                        break;
                    };
                    self.by_id.remove(&oldest);
                }
            }
        }
        self.by_index.insert(index, session);
        self.by_id
            .insert(session, SessionEntry { seq, output, index });
    }

    /// Every session, for a snapshot.
    pub(crate) fn entries(&self) -> Vec<(SessionId, SessionEntry<O>)> {
        self.by_id.iter().map(|(s, e)| (*s, e.clone())).collect()
    }

    /// The table a snapshot held.
    pub(crate) fn from_entries(entries: Vec<(SessionId, SessionEntry<O>)>) -> Self {
        let mut table = Sessions::new();
        for (session, entry) in entries {
            table.by_index.insert(entry.index, session);
            table.by_id.insert(session, entry);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_written_session_is_forgotten_first() {
        let mut t = Sessions::new();
        t.record(SessionId(1), 1, "a", LogIndex(1), 2);
        t.record(SessionId(2), 1, "b", LogIndex(2), 2);
        // Session 1 writes again: session 2 is now the least recent.
        t.record(SessionId(1), 2, "c", LogIndex(3), 2);
        t.record(SessionId(3), 1, "d", LogIndex(4), 2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(&SessionId(2)), None);
        assert_eq!(t.get(&SessionId(1)), Some((2, &"c")));
        assert_eq!(t.get(&SessionId(3)), Some((1, &"d")));
    }

    #[test]
    fn a_snapshot_round_trip_keeps_the_eviction_order() {
        let mut t = Sessions::new();
        for i in 1..=3 {
            t.record(SessionId(i), 1, i, LogIndex(10 - i), 3);
        }
        let mut back = Sessions::from_entries(t.entries());
        back.record(SessionId(9), 1, 9, LogIndex(20), 3);
        // Session 3 wrote at index 7, the earliest.
        assert_eq!(back.get(&SessionId(3)), None);
        assert_eq!(back.len(), 3);
    }
}
