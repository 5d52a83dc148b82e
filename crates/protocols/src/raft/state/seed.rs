//! Groups born with a state (multi-Raft splits): the initial state is stored as a
//! snapshot at index 1, so that it travels like any other snapshot.

use super::sessions::SessionEntry;
use super::snapshot::{SnapshotMeta, SNAPSHOT_META_KEY};
use super::*;
use synod_core::Storage;

/// The index of a seeded snapshot. A replica that has not been seeded has no entry at
/// or below it, so a leader can only bring it up to date with `InstallSnapshot`.
pub const SEED_INDEX: LogIndex = LogIndex(1);

impl<S: StateMachine> Raft<S> {
    /// Store `state` (a [`StateMachine::snapshot`]) in `storage` as the snapshot at
    /// [`SEED_INDEX`], term 0, with no sessions and `config`'s voters, before the group's
    /// first `on_start`. Every replica seeded with the same state holds the same
    /// committed prefix (the snapshot's hash is the state's), so it never needs entry 1.
    /// A replica of the same group that is not seeded (it learned of the group from a
    /// snapshot of its parent, TiKV's "uninitialized peer") has an empty log: its leader
    /// finds no term at index 0 and sends the snapshot (§7). Such a replica must not
    /// campaign until it holds a snapshot; the host withholds its election timer.
    /// A storage that already holds a snapshot (the group ran here before) is left alone.
    pub fn seed_snapshot(config: &RaftConfig, storage: &mut dyn Storage, state: Vec<u8>) {
        if storage.get_blob(SNAPSHOT_KEY).is_some()
            || !matches!(
                storage.get_value::<SnapshotMeta>(SNAPSHOT_META_KEY),
                Ok(None)
            )
        {
            return;
        }
        let membership = Membership {
            voters: config.voters.iter().copied().collect(),
            learners: Default::default(),
        };
        let sessions: Vec<(SessionId, SessionEntry<S::Output>)> = Vec::new();
        let data = codec::encode(&(state, sessions, membership));
        let hash = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let snapshot = Snapshot {
            index: SEED_INDEX,
            term: Term(0),
            hash,
            data,
        };
        storage.put_blob(SNAPSHOT_KEY, &codec::encode(&snapshot));
        storage.compact(SEED_INDEX.next());
    }
}
