//! `DiskStorage` as a `Storage`: durability at sync, group commit, compaction, poisoning.

use super::*;
use crate::storage::MAX_RECORD_BYTES;
use std::io::ErrorKind;
use synod_core::StorageExt;

#[test]
fn synced_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions::default();
    {
        let mut s = open(dir.path(), &options);
        s.put_value(b"term", &3u64);
        s.put(b"vote", b"n2");
        assert_eq!(s.append(b"a"), LogIndex(1));
        assert_eq!(s.append(b"b"), LogIndex(2));
        s.sync().unwrap();
    }
    let s = open(dir.path(), &options);
    assert_eq!(s.get_value::<u64>(b"term").unwrap(), Some(3));
    assert_eq!(s.get(b"vote"), Some(b"n2".to_vec()));
    assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(3)));
    assert_eq!(s.read(LogIndex(1)), Some(b"a".to_vec()));
    assert_eq!(s.read(LogIndex(2)), Some(b"b".to_vec()));
    assert!(s.repairs().is_empty());
}

#[test]
fn unsynced_writes_vanish_like_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions::default();
    {
        let mut s = open(dir.path(), &options);
        s.put(b"term", b"1");
        s.append(b"a");
        s.sync().unwrap();
        s.put(b"term", b"2");
        s.append(b"b");
        s.delete(b"term");
        // Dropped without sync: the crash.
    }
    let s = open(dir.path(), &options);
    assert_eq!(s.get(b"term"), Some(b"1".to_vec()));
    assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(2)));
    assert_eq!(s.read(LogIndex(2)), None);
}

#[test]
fn reads_see_buffered_writes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // No cache: buffered records must be served from the pending batch itself.
    let mut s = open(dir.path(), &small_segments());
    s.put(b"k", b"v");
    for i in 0..20u8 {
        s.append(&[i; 30]);
    }
    assert_eq!(s.get(b"k"), Some(b"v".to_vec()));
    for i in 0..20u8 {
        assert_eq!(s.read(LogIndex(u64::from(i) + 1)), Some(vec![i; 30]));
    }
    s.truncate(LogIndex(10));
    assert_eq!(s.read(LogIndex(10)), None);
    assert_eq!(s.append(b"new"), LogIndex(10));
    assert_eq!(s.read(LogIndex(10)), Some(b"new".to_vec()));
    s.sync().unwrap();
    assert_eq!(s.read(LogIndex(9)), Some(vec![8; 30]));
    assert_eq!(s.read(LogIndex(10)), Some(b"new".to_vec()));
}

#[test]
fn a_batch_is_one_write_and_one_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &DiskOptions::default());
    for i in 0..100u32 {
        s.append(&i.to_le_bytes());
        s.put(b"last", &i.to_le_bytes());
    }
    assert_eq!(s.pending_records(), 200);
    let stats = s.sync().unwrap();
    assert_eq!(stats.records, 200);
    assert_eq!(stats.writes, 1);
    assert_eq!(stats.fsyncs, 1);
    assert_eq!(stats.segments_created, 0);
    assert!(stats.bytes > 100 * 4);
    assert_eq!(s.pending_records(), 0);
    assert_eq!(s.pending_bytes(), 0);

    let idle = s.sync().unwrap();
    assert_eq!((idle.writes, idle.fsyncs, idle.records), (0, 0, 0));
}

#[test]
fn a_batch_that_starts_a_segment_also_fsyncs_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &small_segments());
    s.append(&[1; 300]);
    s.sync().unwrap();
    s.append(&[2; 10]);
    let stats = s.sync().unwrap();
    assert_eq!(stats.segments_created, 1);
    assert_eq!(stats.writes, 1);
    assert_eq!(
        stats.fsyncs, 2,
        "fdatasync of the segment and fsync of the directory"
    );
    assert_eq!(segment_files(dir.path()).len(), 2);
}

#[test]
fn truncate_and_compact_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions::default();
    {
        let mut s = open(dir.path(), &options);
        for r in [b"1", b"2", b"3", b"4", b"5"] {
            s.append(r);
        }
        s.sync().unwrap();
        s.truncate(LogIndex(4));
        assert_eq!(s.append(b"x"), LogIndex(4));
        s.compact(LogIndex(2));
        s.sync().unwrap();
    }
    let s = open(dir.path(), &options);
    assert_eq!(s.log_bounds(), (LogIndex(2), LogIndex(5)));
    assert_eq!(s.read(LogIndex(1)), None);
    assert_eq!(s.read(LogIndex(3)), Some(b"3".to_vec()));
    assert_eq!(s.read(LogIndex(4)), Some(b"x".to_vec()));
    assert_eq!(s.read(LogIndex(5)), None);
}

#[test]
fn compact_past_the_end_moves_the_next_index_durably() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions::default();
    {
        let mut s = open(dir.path(), &options);
        s.append(b"1");
        s.compact(LogIndex(10));
        assert_eq!(s.log_bounds(), (LogIndex(10), LogIndex(10)));
        s.sync().unwrap();
    }
    let mut s = open(dir.path(), &options);
    assert_eq!(s.log_bounds(), (LogIndex(10), LogIndex(10)));
    assert_eq!(s.append(b"x"), LogIndex(10));
}

#[test]
fn segments_roll_over_and_compaction_deletes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segments();
    {
        let mut s = open(dir.path(), &options);
        // Written into the first segment only; must survive its deletion.
        s.put(b"term", b"7");
        s.sync().unwrap();
        for i in 0..40u8 {
            s.append(&[i; 60]);
            s.sync().unwrap();
        }
        let before = segment_files(dir.path()).len();
        assert!(before >= 8, "expected rollover, got {before} segments");
        assert_eq!(s.segment_count(), before);

        s.compact(LogIndex(35));
        let stats = s.sync().unwrap();
        assert!(stats.segments_deleted >= 5, "{stats:?}");
        let after = segment_files(dir.path()).len();
        // The compaction record itself may have started a segment.
        let created = stats.segments_created as usize;
        assert_eq!(after, before + created - stats.segments_deleted as usize);
        assert_eq!(s.segment_count(), after);
        assert_eq!(s.read(LogIndex(35)), Some(vec![34; 60]));
        // Every remaining segment is needed: the oldest one holds record 35.
        let oldest = fs::read(&segment_files(dir.path())[0]).unwrap();
        assert!(
            oldest.windows(60).any(|w| w == [34u8; 60]),
            "the oldest remaining segment does not hold record 35"
        );
    }
    let s = open(dir.path(), &options);
    assert_eq!(s.get(b"term"), Some(b"7".to_vec()));
    assert_eq!(s.log_bounds(), (LogIndex(35), LogIndex(41)));
    for i in 35..41u64 {
        assert_eq!(s.read(LogIndex(i)), Some(vec![(i - 1) as u8; 60]));
    }
}

#[test]
fn compacting_everything_keeps_only_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segments();
    {
        let mut s = open(dir.path(), &options);
        s.put(b"a", b"1");
        for i in 0..20u8 {
            s.append(&[i; 60]);
            s.sync().unwrap();
        }
        s.delete(b"a");
        s.put(b"b", b"2");
        s.compact(LogIndex(100));
        s.sync().unwrap();
        assert_eq!(segment_files(dir.path()).len(), 1);
    }
    let mut s = open(dir.path(), &options);
    assert_eq!(s.log_bounds(), (LogIndex(100), LogIndex(100)));
    assert_eq!(s.get(b"a"), None);
    assert_eq!(s.get(b"b"), Some(b"2".to_vec()));
    assert_eq!(s.append(b"next"), LogIndex(100));
}

#[test]
fn segments_left_over_from_an_interrupted_compaction_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segments();
    let saved = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path(), &options);
        for i in 0..20u8 {
            s.append(&[i; 60]);
            s.sync().unwrap();
        }
        copy_dir(dir.path(), saved.path());
        s.compact(LogIndex(18));
        assert!(s.sync().unwrap().segments_deleted > 0);
    }
    // A crash after META moved but before the unlinks reached the disk.
    for old in segment_files(saved.path()) {
        let target = dir.path().join(old.file_name().unwrap());
        if !target.exists() {
            fs::copy(&old, &target).unwrap();
        }
    }
    let before = segment_files(dir.path()).len();
    let s = open(dir.path(), &options);
    assert!(segment_files(dir.path()).len() < before);
    assert_eq!(s.log_bounds(), (LogIndex(18), LogIndex(21)));
    assert_eq!(s.read(LogIndex(20)), Some(vec![19; 60]));
}

#[test]
fn read_cache_serves_the_tail_and_follows_truncate_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions::default().with_read_cache_bytes(100);
    let mut s = open(dir.path(), &options);
    let mut mem = MemStorage::new();
    for i in 0..30u8 {
        s.append(&[i; 9]);
        mem.append(&[i; 9]);
    }
    s.sync().unwrap();
    s.truncate(LogIndex(25));
    mem.truncate(LogIndex(25));
    s.append(b"t");
    mem.append(b"t");
    s.compact(LogIndex(24));
    mem.compact(LogIndex(24));
    assert_same(&s, &mem, &[]);
    s.compact(LogIndex(40));
    mem.compact(LogIndex(40));
    assert_same(&s, &mem, &[]);
}

#[test]
fn an_oversized_record_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &DiskOptions::default());
    s.append(b"fine");
    s.append(&vec![0u8; MAX_RECORD_BYTES + 1]);
    let error = s.sync().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.to_string().contains("exceeds"), "{error}");
    // Never retry-and-continue: every later sync fails too.
    assert!(s.sync().is_err());
    assert!(s.failure().is_some());
}

#[test]
fn a_damaged_record_found_by_a_read_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &DiskOptions::default().with_read_cache_bytes(0));
    s.append(b"first record");
    s.sync().unwrap();
    let segment = last_segment(dir.path());
    // The last byte of the file is the last byte of record 1's data.
    flip_byte(&segment, file_len(&segment) - 1);
    assert_eq!(s.read(LogIndex(1)), None);
    let error = s.sync().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidData);
    let message = error.to_string();
    assert!(message.contains("log record 1"), "{message}");
    assert!(
        message.contains("wal-00000000000000000001.log"),
        "{message}"
    );
}

#[test]
fn reopening_twice_without_writes_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segments();
    {
        let mut s = open(dir.path(), &options);
        for i in 0..10u8 {
            s.append(&[i; 50]);
            s.put(&[i], &[i]);
            s.sync().unwrap();
        }
    }
    let files: Vec<_> = segment_files(dir.path())
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();
    drop(open(dir.path(), &options));
    drop(open(dir.path(), &options));
    let again: Vec<_> = segment_files(dir.path())
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();
    assert_eq!(files, again);
}

#[test]
fn stores_can_move_to_another_thread() {
    // The driver may sync on a dedicated I/O thread and write snapshots in the background.
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<DiskStorage>();
    send_and_sync::<crate::storage::SnapshotStore>();
    send_and_sync::<crate::storage::BulkStore>();
    fn send<T: Send>() {}
    send::<crate::storage::SnapshotWriter>();
    send::<crate::storage::SnapshotReader>();
}

#[test]
fn blobs_live_outside_the_key_space_and_have_no_record_bound() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions::default();
    // Past the bound on one record: a key-value pair this size would poison the store.
    let big: Vec<u8> = (0..MAX_RECORD_BYTES + 1000)
        .map(|i| (i % 251) as u8)
        .collect();
    {
        let mut s = open(dir.path(), &options);
        s.put(b"raft/snapshot", b"old, from before blobs");
        s.sync().unwrap();
        s.put_blob(b"raft/snapshot", &big);
        // Seen at once, before the sync, and no longer in the key-value space.
        assert_eq!(s.get_blob(b"raft/snapshot").as_deref(), Some(&big[..]));
        assert_eq!(s.get(b"raft/snapshot"), None);
        s.sync().unwrap();
        assert!(s.failure().is_none());
        s.put_blob(b"raft/snapshot", b"lost in the crash");
        // Dropped without sync: the crash.
    }
    let s = open(dir.path(), &options);
    assert_eq!(s.get_blob(b"raft/snapshot").as_deref(), Some(&big[..]));
    assert_eq!(s.get(b"raft/snapshot"), None);
    assert_eq!(s.get_blob(b"nothing"), None);
}

#[test]
fn a_deleted_blob_goes_only_once_its_batch_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions::default();
    {
        let mut s = open(dir.path(), &options);
        // Written from "another thread" (the background writer), durable at once.
        (s.blob_writer())(b"raft/snapshot/1", b"first").unwrap();
        s.delete_blob(b"raft/snapshot/1");
        // Dropped without sync: the crash. The delete was not durable, the blob stays.
    }
    {
        let mut s = open(dir.path(), &options);
        assert_eq!(s.get_blob(b"raft/snapshot/1"), Some(b"first".to_vec()));
        s.delete_blob(b"raft/snapshot/1");
        s.sync().unwrap();
        assert_eq!(s.get_blob(b"raft/snapshot/1"), None);
    }
    let s = open(dir.path(), &options);
    assert_eq!(s.get_blob(b"raft/snapshot/1"), None);
}

#[test]
fn blob_names_list_durable_and_pending_blobs_by_prefix_but_not_deleted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions::default();
    let names = |s: &DiskStorage, prefix: &[u8]| -> Vec<String> {
        s.blob_names(prefix)
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    };
    {
        let mut s = open(dir.path(), &options);
        (s.blob_writer())(b"raft/snapshot/7", b"orphan").unwrap();
        s.put_blob(b"raft/snapshot/9", b"current");
        s.put_blob(b"other/\xff", b"not a snapshot");
        s.sync().unwrap();
        s.put_blob(b"raft/snapshot/10", b"pending");
        assert_eq!(
            names(&s, b"raft/snapshot/"),
            ["raft/snapshot/10", "raft/snapshot/7", "raft/snapshot/9"]
        );
        s.delete_blob(b"raft/snapshot/7");
        assert_eq!(
            names(&s, b"raft/snapshot/"),
            ["raft/snapshot/10", "raft/snapshot/9"]
        );
        // Deleted and written again in one batch: the write wins.
        s.delete_blob(b"raft/snapshot/9");
        s.put_blob(b"raft/snapshot/9", b"again");
        s.sync().unwrap();
        assert_eq!(s.get_blob(b"raft/snapshot/9"), Some(b"again".to_vec()));
    }
    // Files that are not blobs by name are not listed.
    for stray in ["zz.blob", "abc.blob", "notes.txt"] {
        std::fs::write(dir.path().join("blobs").join(stray), b"?").unwrap();
    }
    let s = open(dir.path(), &options);
    assert_eq!(
        names(&s, b"raft/snapshot/"),
        ["raft/snapshot/10", "raft/snapshot/9"]
    );
    assert_eq!(
        names(&s, b""),
        ["other/\u{fffd}", "raft/snapshot/10", "raft/snapshot/9"]
    );
    assert!(s.failure().is_none());
}

#[test]
fn a_blob_from_before_blobs_existed_is_read_from_the_key_space() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &DiskOptions::default());
    s.put(b"raft/snapshot", b"kept as a key");
    s.sync().unwrap();
    assert_eq!(
        s.get_blob(b"raft/snapshot"),
        Some(b"kept as a key".to_vec())
    );
}

#[test]
fn a_damaged_blob_poisons_the_store_instead_of_vanishing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path(), &DiskOptions::default());
        s.put_blob(b"b", b"some snapshot bytes");
        s.sync().unwrap();
    }
    let blobs = dir.path().join("blobs");
    let file = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "blob"))
        .expect("a blob file");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[3] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    // An interrupted write of another blob is cleaned up on open.
    std::fs::write(blobs.join("63.blob.tmp"), b"half").unwrap();
    let mut s = open(dir.path(), &DiskOptions::default());
    assert!(!blobs.join("63.blob.tmp").exists());
    assert_eq!(s.get_blob(b"b"), None);
    let error = s.sync().expect_err("poisoned");
    assert!(error.to_string().contains("checksum"), "{error}");
}

#[test]
fn a_sync_may_block_exactly_when_it_has_something_to_write_or_remove() {
    // The driver runs a sync that may not block inline, outside `block_in_place`: a false
    // "no" here would fsync on a worker thread, a false "yes" costs context switches.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &small_segments());
    let syncs_then_idle = |s: &mut DiskStorage| {
        assert!(s.sync_may_block());
        s.sync().unwrap();
        assert!(!s.sync_may_block(), "nothing left to write after a sync");
        assert_eq!(s.sync().unwrap().fsyncs, 0, "an idle sync touched the disk");
    };
    assert!(!s.sync_may_block(), "a fresh store has nothing to write");
    s.put(b"k", b"v");
    syncs_then_idle(&mut s);
    for i in 0..20u8 {
        s.append(&[i; 30]);
    }
    syncs_then_idle(&mut s);
    s.put_blob(b"b", b"blob");
    syncs_then_idle(&mut s);
    s.delete_blob(b"b");
    syncs_then_idle(&mut s);
    // Compacting past whole segments: their files go at the next sync.
    let before = s.segment_count();
    s.compact(LogIndex(19));
    syncs_then_idle(&mut s);
    assert!(s.segment_count() < before, "compaction removed no segment");
}
