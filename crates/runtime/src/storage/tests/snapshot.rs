//! Snapshots: streamed in, atomic, checked on the way out, old ones and crash leftovers
//! removed.

use super::*;
use crate::storage::{SnapshotStore, StorageError};
use std::io::{ErrorKind, Read, Write};

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn write_snapshot(store: &SnapshotStore, index: u64, tag: u64, bytes: &[u8]) {
    let mut writer = store.create(LogIndex(index), tag).unwrap();
    // Stream it in uneven pieces.
    for piece in bytes.chunks(70_001) {
        writer.write_all(piece).unwrap();
    }
    assert_eq!(writer.written(), bytes.len() as u64);
    let info = writer.finish().unwrap();
    assert_eq!(info.index, LogIndex(index));
    assert_eq!(info.size, bytes.len() as u64);
}

fn read_latest(store: &SnapshotStore) -> Option<(u64, u64, Vec<u8>)> {
    let mut reader = store.open_latest().unwrap()?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    let info = reader.info();
    Some((info.index.0, info.tag, out))
}

fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_snapshot_round_trips_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    assert!(store.latest().unwrap().is_none());
    assert!(store.open_latest().unwrap().is_none());
    let bytes = data(3 << 20, 1);
    write_snapshot(&store, 42, 7, &bytes);
    let info = store.latest().unwrap().unwrap();
    assert_eq!(info.index, LogIndex(42));
    assert_eq!(info.tag, 7);
    assert_eq!(info.size, bytes.len() as u64);
    assert_eq!(info.crc32c, crc32c::crc32c(&bytes));
    assert_eq!(read_latest(&store), Some((42, 7, bytes.clone())));
    // And after reopening.
    drop(store);
    let store = SnapshotStore::open(dir.path()).unwrap();
    assert_eq!(read_latest(&store), Some((42, 7, bytes)));
}

#[test]
fn an_empty_snapshot_is_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    write_snapshot(&store, 1, 0, b"");
    assert_eq!(read_latest(&store), Some((1, 0, Vec::new())));
}

#[test]
fn a_new_snapshot_replaces_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    write_snapshot(&store, 10, 1, b"old state");
    write_snapshot(&store, 20, 2, b"new state");
    assert_eq!(read_latest(&store), Some((20, 2, b"new state".to_vec())));
    assert_eq!(
        snapshot_files(dir.path()).len(),
        1,
        "the old snapshot was not removed"
    );
}

#[test]
fn a_crash_mid_snapshot_keeps_the_old_one_and_the_leftover_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SnapshotStore::open(dir.path()).unwrap();
        write_snapshot(&store, 10, 1, b"durable");
        let mut writer = store.create(LogIndex(20), 2).unwrap();
        writer.write_all(&data(100_000, 3)).unwrap();
        writer.flush().unwrap();
        // The process dies: no finish, no destructor.
        std::mem::forget(writer);
        assert!(snapshot_files(dir.path())
            .iter()
            .any(|n| n.ends_with(".tmp")));
        assert_eq!(read_latest(&store), Some((10, 1, b"durable".to_vec())));
    }
    let store = SnapshotStore::open(dir.path()).unwrap();
    assert!(!snapshot_files(dir.path())
        .iter()
        .any(|n| n.ends_with(".tmp")));
    assert_eq!(read_latest(&store), Some((10, 1, b"durable".to_vec())));
    // The next snapshot does not collide with the abandoned one's name.
    write_snapshot(&store, 30, 3, b"next");
    assert_eq!(read_latest(&store), Some((30, 3, b"next".to_vec())));
}

#[test]
fn dropping_an_unfinished_writer_abandons_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let mut writer = store.create(LogIndex(5), 0).unwrap();
    writer.write_all(b"partial").unwrap();
    drop(writer);
    assert!(snapshot_files(dir.path()).is_empty());
    assert!(store.latest().unwrap().is_none());
}

#[test]
fn an_older_snapshot_left_by_a_crash_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    write_snapshot(&store, 10, 1, b"one");
    let old = dir.path().join(&snapshot_files(dir.path())[0]);
    let saved = fs::read(&old).unwrap();
    write_snapshot(&store, 20, 2, b"two");
    // The crash came between the rename and the deletion of the old file.
    fs::write(&old, saved).unwrap();
    assert_eq!(snapshot_files(dir.path()).len(), 2);
    drop(store);
    let store = SnapshotStore::open(dir.path()).unwrap();
    assert_eq!(snapshot_files(dir.path()).len(), 1);
    assert_eq!(read_latest(&store), Some((20, 2, b"two".to_vec())));
}

#[test]
fn damaged_snapshot_data_fails_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    write_snapshot(&store, 10, 1, &data(50_000, 9));
    let info = store.latest().unwrap().unwrap();
    let mut bytes = fs::read(&info.path).unwrap();
    bytes[12_345] ^= 1;
    fs::write(&info.path, bytes).unwrap();
    let mut reader = store.open_latest().unwrap().unwrap();
    let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidData);
    assert!(error.to_string().contains("checksum"), "{error}");
}

#[test]
fn a_damaged_footer_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    write_snapshot(&store, 10, 1, b"state");
    let path = store.latest().unwrap().unwrap().path;
    let len = file_len(&path);
    flip_byte(&path, len - 10);
    match store.latest() {
        Err(StorageError::CorruptSnapshot { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    cut_file(&path, 20);
    assert!(matches!(
        store.latest(),
        Err(StorageError::CorruptSnapshot { .. })
    ));
}

#[test]
fn a_disk_storage_keeps_its_snapshots_beside_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segments();
    {
        let mut s = open(dir.path(), &options);
        for i in 0..30u8 {
            s.append(&[i; 40]);
            s.sync().unwrap();
        }
        // Snapshot, then compact: the Raft order (the snapshot must be durable first).
        write_snapshot(s.snapshots(), 25, 3, b"state machine at 25");
        s.compact(LogIndex(26));
        s.sync().unwrap();
    }
    let s = open(dir.path(), &options);
    assert_eq!(s.log_bounds(), (LogIndex(26), LogIndex(31)));
    assert_eq!(
        read_latest(s.snapshots()),
        Some((25, 3, b"state machine at 25".to_vec()))
    );
}
