//! `DiskStorage` refines `MemStorage`: the same operations, syncs, crashes and reopens give
//! the same answers to every read. `MemStorage` is the executable specification of the
//! `Storage` trait's durability (synod-core).

use super::*;
use crate::storage::SyncStats;
use proptest::collection::vec;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    Append(Vec<u8>),
    /// Truncate at a position chosen relative to the current bounds.
    Truncate(u8),
    /// Compact at a position chosen relative to the current bounds.
    Compact(u8),
    Sync,
    /// Drop the disk store without syncing; `MemStorage::crash(0)`.
    Crash,
    /// Sync, drop, open again.
    Reopen,
}

fn write_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6, vec(any::<u8>(), 0..40)).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0u8..6).prop_map(Op::Delete),
        6 => vec(any::<u8>(), 0..120).prop_map(Op::Append),
        1 => any::<u8>().prop_map(Op::Truncate),
        1 => any::<u8>().prop_map(Op::Compact),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => write_op(),
        2 => Just(Op::Sync),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

fn options() -> impl Strategy<Value = DiskOptions> {
    (
        prop_oneof![Just(128u64), Just(600), Just(1 << 20)],
        prop_oneof![Just(0usize), Just(200), Just(1 << 20)],
        prop_oneof![Just(0u64), Just(100), Just(4096)],
    )
        .prop_map(|(segment, cache, preallocate)| {
            DiskOptions::default()
                .with_segment_size(segment)
                .with_read_cache_bytes(cache)
                .with_preallocate_bytes(preallocate)
        })
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k]
}

fn keys() -> Vec<Vec<u8>> {
    (0..6).map(key).collect()
}

/// Apply a write to any `Storage`.
fn apply(store: &mut dyn Storage, op: &Op) {
    let (first, next) = store.log_bounds();
    let len = next.0 - first.0;
    match op {
        Op::Put(k, v) => store.put(&key(*k), v),
        Op::Delete(k) => store.delete(&key(*k)),
        Op::Append(r) => {
            store.append(r);
        }
        // From one before the first index to one past the end.
        Op::Truncate(r) => store.truncate(LogIndex(
            (first.0 + u64::from(*r) % (len + 3)).saturating_sub(1),
        )),
        // From the first index to a little past the end.
        Op::Compact(r) => store.compact(LogIndex(first.0 + u64::from(*r) % (len + 4))),
        Op::Sync | Op::Crash | Op::Reopen => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// After every step, and after a final sync and reopen, reads agree. A crash loses
    /// exactly the unsynced writes; everything synced survives.
    #[test]
    fn disk_storage_matches_mem_storage(ops in vec(op(), 1..60), options in options()) {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let mut disk = open(dir.path(), &options);
        let mut mem = MemStorage::new();
        for op in &ops {
            match op {
                Op::Sync => {
                    disk.sync().unwrap();
                    mem.sync();
                }
                Op::Crash => {
                    drop(disk);
                    mem.crash(0);
                    disk = open(dir.path(), &options);
                }
                Op::Reopen => {
                    disk.sync().unwrap();
                    mem.sync();
                    drop(disk);
                    disk = open(dir.path(), &options);
                }
                write => {
                    apply(&mut disk, write);
                    apply(&mut mem, write);
                }
            }
            prop_assert_eq!(compare(&disk, &mem, &keys), Ok(()), "after {:?}", op);
        }
        disk.sync().unwrap();
        mem.sync();
        drop(disk);
        let disk = open(dir.path(), &options);
        prop_assert_eq!(compare(&disk, &mem, &keys), Ok(()));
        prop_assert!(disk.repairs().is_empty());
    }

    /// Tear the last batch at a random byte: what recovery shows is the synced state plus
    /// some prefix of the torn batch's writes, never anything else (`MemStorage::crash`
    /// with some `keep`).
    #[test]
    fn a_torn_last_batch_leaves_a_prefix_of_its_writes(
        history in vec(write_op(), 0..30),
        batch in vec(write_op(), 1..12),
        cut in any::<prop::sample::Index>(),
        options in options(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let mut mem = MemStorage::new();
        let segments_before;
        let last_len_before;
        let batch_end;
        {
            let mut disk = open(dir.path(), &options);
            for op in &history {
                apply(&mut disk, op);
                apply(&mut mem, op);
            }
            disk.sync().unwrap();
            mem.sync();
            segments_before = segment_files(dir.path());
            last_len_before = disk.active_segment_len();
            for op in &batch {
                apply(&mut disk, op);
            }
            // A crash during the batch's write comes before the deletion of compacted
            // segments that follows a successful sync: write the batch, then stop.
            disk.write_pending(&mut SyncStats::default()).unwrap();
            batch_end = disk.active_segment_len();
        }
        // The states recovery may legitimately show: the synced state plus the first
        // `keep` writes of the batch, for every `keep`.
        let mut allowed = vec![mem.clone()];
        for op in &batch {
            apply(&mut mem, op);
            allowed.push(mem.clone());
        }

        let last = last_segment(dir.path());
        let start = if segments_before.contains(&last) { last_len_before } else { 0 };
        let end = batch_end;
        if end > start {
            let at = start + cut.index((end - start) as usize) as u64;
            if options.preallocate_bytes > 0 {
                // The tail of the batch never reached preallocated space: zeros stay.
                zero_range(&last, at, end);
            } else {
                cut_file(&last, at);
            }
        }
        let disk = open(dir.path(), &options);
        let matches = allowed.iter().filter(|m| compare(&disk, m, &keys).is_ok()).count();
        prop_assert!(matches > 0, "recovered state is no prefix of the batch: {:?}", disk);
    }
}
