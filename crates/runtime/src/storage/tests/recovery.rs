//! Recovery: a torn tail is cut and nothing acknowledged is lost; damage that a torn write
//! cannot explain is refused with the file and offset.

use super::*;
use crate::storage::record::MARKER_FRAME_LEN;
use crate::storage::wal::encode_meta;
use crate::storage::StorageError;

/// Where one single-record batch landed in the (only) segment.
#[derive(Debug, Clone, Copy)]
struct Batch {
    /// Offset of the batch marker.
    start: u64,
    /// Offset of the record's frame.
    record: u64,
    /// Offset just past the batch.
    end: u64,
}

/// Append `count` records of 40 bytes, each in its own synced batch, into one segment.
fn write_batches(dir: &Path, count: u8) -> Vec<Batch> {
    let mut s = open(dir, &DiskOptions::default());
    let segment = last_segment(dir);
    let mut batches = Vec::new();
    for i in 0..count {
        let start = file_len(&segment);
        s.append(&[i; 40]);
        s.sync().unwrap();
        batches.push(Batch {
            start,
            record: start + MARKER_FRAME_LEN as u64,
            end: file_len(&segment),
        });
    }
    batches
}

fn expect_records(s: &DiskStorage, count: u8) {
    assert_eq!(
        s.log_bounds(),
        (LogIndex(1), LogIndex(u64::from(count) + 1))
    );
    for i in 0..count {
        assert_eq!(s.read(LogIndex(u64::from(i) + 1)), Some(vec![i; 40]));
    }
}

fn open_err(dir: &Path) -> StorageError {
    match DiskStorage::open(dir, DiskOptions::default()) {
        Ok(s) => panic!("open succeeded: {s:?}"),
        Err(e) => e,
    }
}

/// Twelve 60-byte records, each synced, in 256-byte segments; the segment files.
fn twelve_synced_records(dir: &Path, options: &DiskOptions) -> Vec<PathBuf> {
    let mut s = open(dir, options);
    // Record i holds bytes i + 1: never zero, so none looks like preallocated space.
    for i in 0..12u8 {
        s.append(&[i + 1; 60]);
        s.sync().unwrap();
    }
    drop(s);
    segment_files(dir)
}

#[test]
fn a_torn_last_batch_is_cut_at_every_offset_and_nothing_synced_is_lost() {
    let base = tempfile::tempdir().unwrap();
    let batches = write_batches(base.path(), 5);
    let last = batches[4];
    let name = last_segment(base.path()).file_name().unwrap().to_owned();
    for cut in last.start..last.end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let segment = dir.path().join(&name);
        cut_file(&segment, cut);

        let mut s = open(dir.path(), &DiskOptions::default());
        expect_records(&s, 4);
        let clean = cut == last.start || cut == last.record;
        let expected_len = if cut < last.record {
            last.start
        } else {
            last.record
        };
        assert_eq!(file_len(&segment), expected_len, "cut at {cut}");
        assert_eq!(s.repairs().len(), usize::from(!clean), "cut at {cut}");
        if let Some(repair) = s.repairs().first() {
            assert_eq!(repair.offset, expected_len);
            assert_eq!(repair.path, segment);
        }

        // The log carries on from the cut and the next batch is durable.
        assert_eq!(s.append(b"after"), LogIndex(5));
        s.sync().unwrap();
        drop(s);
        let s = open(dir.path(), &DiskOptions::default());
        assert!(s.repairs().is_empty());
        assert_eq!(s.read(LogIndex(4)), Some(vec![3; 40]));
        assert_eq!(s.read(LogIndex(5)), Some(b"after".to_vec()));
    }
}

#[test]
fn a_torn_batch_keeps_the_whole_records_before_the_tear() {
    let dir = tempfile::tempdir().unwrap();
    let segment;
    let mut record_ends = Vec::new();
    {
        let mut s = open(dir.path(), &DiskOptions::default());
        s.append(b"synced");
        s.sync().unwrap();
        segment = last_segment(dir.path());
        let start = file_len(&segment) + MARKER_FRAME_LEN as u64;
        let mut end = start;
        for i in 0..5u8 {
            s.append(&[i; 100]);
            end += (9 + 8 + 100) as u64;
            record_ends.push(end);
        }
        s.put(b"k", b"v");
        s.sync().unwrap();
    }
    // The page holding the third record never made it.
    cut_file(&segment, record_ends[1] + 50);
    let s = open(dir.path(), &DiskOptions::default());
    // Like MemStorage::crash(keep): a prefix of the unacknowledged batch survives.
    assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(4)));
    assert_eq!(s.read(LogIndex(1)), Some(b"synced".to_vec()));
    assert_eq!(s.read(LogIndex(3)), Some(vec![1; 100]));
    assert_eq!(s.get(b"k"), None);
}

#[test]
fn a_flipped_byte_in_the_last_batch_truncates_it() {
    let base = tempfile::tempdir().unwrap();
    let batches = write_batches(base.path(), 5);
    let last = batches[4];
    let name = last_segment(base.path()).file_name().unwrap().to_owned();
    for offset in last.start..last.end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let segment = dir.path().join(&name);
        flip_byte(&segment, offset);

        let s = open(dir.path(), &DiskOptions::default());
        expect_records(&s, 4);
        let expected_cut = if offset < last.record {
            last.start
        } else {
            last.record
        };
        assert_eq!(s.repairs().len(), 1, "flip at {offset}");
        assert_eq!(s.repairs()[0].offset, expected_cut, "flip at {offset}");
        assert_eq!(file_len(&segment), expected_cut);
    }
}

#[test]
fn a_flipped_byte_in_an_acknowledged_middle_batch_is_an_error_naming_file_and_offset() {
    let base = tempfile::tempdir().unwrap();
    let batches = write_batches(base.path(), 5);
    let middle = batches[2];
    let name = last_segment(base.path()).file_name().unwrap().to_owned();
    for offset in middle.start..middle.end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let segment = dir.path().join(&name);
        let before = fs::read(&segment).unwrap();
        flip_byte(&segment, offset);

        let expected = if offset < middle.record {
            middle.start
        } else {
            middle.record
        };
        match open_err(dir.path()) {
            StorageError::CorruptLog {
                path,
                offset: at,
                reason,
            } => {
                assert_eq!(path, segment, "flip at {offset}");
                assert_eq!(at, expected, "flip at {offset}: {reason}");
                assert!(reason.contains("later batch"), "{reason}");
            }
            other => panic!("flip at {offset}: unexpected {other}"),
        }
        // Refusing means not touching: the file is exactly as it was, damage included.
        let mut after = fs::read(&segment).unwrap();
        after[offset as usize] ^= 0x5a;
        assert_eq!(after, before, "flip at {offset}: open modified the segment");
    }
}

#[test]
fn the_error_message_names_the_segment_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let batches = write_batches(dir.path(), 3);
    let segment = last_segment(dir.path());
    flip_byte(&segment, batches[0].record + 20);
    let message = open_err(dir.path()).to_string();
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("offset {}", batches[0].record)),
        "{message}"
    );
    assert!(message.contains("refusing to truncate"), "{message}");
}

#[test]
fn a_torn_write_whose_later_pages_landed_is_still_a_torn_tail() {
    // Pages of one write can reach the disk out of order. Records after a bad one that
    // belong to the same, unacknowledged batch prove nothing; only a later batch does.
    let dir = tempfile::tempdir().unwrap();
    let segment;
    let second_record;
    {
        let mut s = open(dir.path(), &DiskOptions::default());
        s.append(b"acknowledged");
        s.sync().unwrap();
        segment = last_segment(dir.path());
        let start = file_len(&segment) + MARKER_FRAME_LEN as u64;
        second_record = start + (9 + 8 + 100) as u64;
        for i in 0..5u8 {
            s.append(&[i; 100]);
        }
        s.sync().unwrap();
    }
    flip_byte(&segment, second_record + 30);
    let s = open(dir.path(), &DiskOptions::default());
    assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(3)));
    assert_eq!(s.read(LogIndex(1)), Some(b"acknowledged".to_vec()));
    assert_eq!(s.repairs()[0].offset, second_record);
}

#[test]
fn a_damaged_length_field_in_the_middle_is_caught_by_the_marker_search() {
    let dir = tempfile::tempdir().unwrap();
    let batches = write_batches(dir.path(), 4);
    let segment = last_segment(dir.path());
    // Make the length field of record 2 huge but under the bound: it "runs past the end".
    let mut bytes = fs::read(&segment).unwrap();
    let at = batches[1].record as usize;
    bytes[at..at + 4].copy_from_slice(&(1u32 << 20).to_le_bytes());
    fs::write(&segment, bytes).unwrap();
    match open_err(dir.path()) {
        StorageError::CorruptLog { offset, reason, .. } => {
            assert_eq!(offset, batches[1].record);
            assert!(reason.contains("runs past the end"), "{reason}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn damage_in_a_sealed_segment_is_an_error_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let files = twelve_synced_records(dir.path(), &small_segments());
    assert!(files.len() >= 3);
    let sealed = &files[1];
    flip_byte(sealed, file_len(sealed) - 1);
    match DiskStorage::open(dir.path(), small_segments()) {
        Err(StorageError::CorruptLog { path, reason, .. }) => {
            assert_eq!(&path, sealed);
            assert!(reason.contains("not the last"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_torn_header_of_a_new_segment_falls_back_to_the_previous_segment() {
    for cut in [0u64, 10, 25, 40] {
        let dir = tempfile::tempdir().unwrap();
        let options = small_segments();
        let mut acknowledged = 0u8;
        {
            let mut s = open(dir.path(), &options);
            loop {
                s.append(&[acknowledged; 60]);
                let stats = s.sync().unwrap();
                acknowledged += 1;
                if stats.segments_created == 1 {
                    break;
                }
            }
        }
        // Lose the new segment's contents (as if the batch that created it was torn).
        let new_segment = last_segment(dir.path());
        cut_file(&new_segment, cut);
        let mut s = open(dir.path(), &options);
        assert!(!new_segment.exists(), "cut {cut}: headerless segment kept");
        let kept = u64::from(acknowledged) - 1;
        assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(kept + 1)));
        assert_eq!(s.read(LogIndex(kept)), Some(vec![(kept - 1) as u8; 60]));
        assert_eq!(s.repairs().len(), 1);
        s.append(b"again");
        assert_eq!(s.sync().unwrap().segments_created, 1);
        drop(s);
        let s = open(dir.path(), &options);
        assert_eq!(s.read(LogIndex(kept + 1)), Some(b"again".to_vec()));
    }
}

#[test]
fn garbage_metadata_is_an_error() {
    let bad_version = {
        let mut m = encode_meta(1);
        m[8] = 2;
        let crc = crc32c::crc32c(&m[0..20]);
        m[20..24].copy_from_slice(&crc.to_le_bytes());
        m.to_vec()
    };
    let bad_crc = {
        let mut m = encode_meta(1);
        m[12] ^= 1;
        m.to_vec()
    };
    let cases: [(&[u8], &str); 5] = [
        (b"garbage", "bytes, expected 24"),
        (&[0u8; 24], "magic"),
        (&bad_crc, "checksum"),
        (&bad_version, "version 2"),
        (&encode_meta(0), "segment is 0"),
    ];
    for (contents, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_batches(dir.path(), 1);
        fs::write(dir.path().join("META"), contents).unwrap();
        match open_err(dir.path()) {
            StorageError::CorruptMetadata { path, reason } => {
                assert_eq!(path, dir.path().join("META"));
                assert!(reason.contains(expected), "{reason} lacks {expected}");
            }
            other => panic!("unexpected {other}"),
        }
    }
}

#[test]
fn segments_without_metadata_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_batches(dir.path(), 2);
    fs::remove_file(dir.path().join("META")).unwrap();
    assert!(matches!(
        open_err(dir.path()),
        StorageError::MissingMetadata { segments: 1, .. }
    ));
}

#[test]
fn a_crash_during_initialization_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), &DiskOptions::default()));
    let initial = fs::read(last_segment(dir.path())).unwrap();
    for cut in [0, 10, initial.len()] {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("wal-00000000000000000001.log"),
            &initial[..cut],
        )
        .unwrap();
        let mut s = open(dir.path(), &DiskOptions::default());
        assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(1)));
        s.append(b"x");
        s.sync().unwrap();
    }
    // But not when the file holds anything else.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("wal-00000000000000000001.log"), b"not ours").unwrap();
    assert!(matches!(
        open_err(dir.path()),
        StorageError::MissingMetadata { .. }
    ));
}

#[test]
fn a_missing_segment_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = twelve_synced_records(dir.path(), &small_segments());
    let missing = files[1].file_name().unwrap().to_str().unwrap().to_string();
    fs::remove_file(&files[1]).unwrap();
    match DiskStorage::open(dir.path(), small_segments()) {
        Err(StorageError::MissingSegment { file, .. }) => assert_eq!(file, missing),
        other => panic!("unexpected {other:?}"),
    }
    // The first live segment missing is the same error.
    fs::remove_file(&files[0]).unwrap();
    match DiskStorage::open(dir.path(), small_segments()) {
        Err(StorageError::MissingSegment { file, .. }) => {
            assert_eq!(file, "wal-00000000000000000001.log")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn swapped_or_emptied_segments_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let files = twelve_synced_records(dir.path(), &small_segments());
    let (a, b) = (fs::read(&files[1]).unwrap(), fs::read(&files[2]).unwrap());
    fs::write(&files[1], &b).unwrap();
    fs::write(&files[2], &a).unwrap();
    match DiskStorage::open(dir.path(), small_segments()) {
        Err(StorageError::InconsistentLog { path, reason, .. }) => {
            assert_eq!(path, files[1]);
            assert!(reason.contains("header names segment"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    fs::write(&files[1], b"").unwrap();
    fs::write(&files[2], &b).unwrap();
    match DiskStorage::open(dir.path(), small_segments()) {
        Err(StorageError::CorruptLog { path, reason, .. }) => {
            assert_eq!(path, files[1]);
            assert!(reason.contains("before its header"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_segment_header_that_disagrees_with_the_replay_is_an_error() {
    // Two stores with the same shape but a different value: their second segments are
    // interchangeable by name and size, not by content.
    let make = |value: &[u8]| {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), &small_segments());
        s.put(b"k", value);
        s.sync().unwrap();
        for i in 0..8u8 {
            s.append(&[i; 60]);
            s.sync().unwrap();
        }
        dir
    };
    let (a, b) = (make(b"a"), make(b"b"));
    let from_b = &segment_files(b.path())[1];
    let into_a = &segment_files(a.path())[1];
    fs::copy(from_b, into_a).unwrap();
    match DiskStorage::open(a.path(), small_segments()) {
        Err(StorageError::InconsistentLog { path, reason, .. }) => {
            assert_eq!(&path, into_a);
            assert!(reason.contains("disagrees"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A client value may contain bytes that form a valid batch marker (its CRC is no secret).
/// If the batch holding it is torn, recovery must still see a torn tail, not mid-log
/// damage: only a marker for the next batch numbers proves a later durable batch.
#[test]
fn a_marker_inside_client_data_does_not_make_a_torn_tail_look_like_corruption() {
    let base = tempfile::tempdir().unwrap();
    write_batches(base.path(), 3);
    let segment = last_segment(base.path());
    let before = file_len(&segment);
    let mut fake = Vec::new();
    crate::storage::record::encode_marker(&mut fake, 999_999);
    let mut value = vec![0u8; 64];
    value.extend_from_slice(&fake);
    value.extend_from_slice(&[0u8; 64]);
    {
        let mut s = open(base.path(), &DiskOptions::default());
        s.append(&value);
        s.sync().unwrap();
    }
    // Tear the last batch just before the embedded marker, leaving the marker's bytes
    // after the damage: zero a byte early in the value so the record's CRC fails.
    let mut bytes = std::fs::read(&segment).unwrap();
    let record_start = before as usize + MARKER_FRAME_LEN;
    bytes[record_start + 20] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let s = DiskStorage::open(base.path(), DiskOptions::default())
        .expect("a torn final batch is cut, whatever its data contains");
    expect_records(&s, 3);
}

/// 256-byte segments with 512 bytes zero-filled ahead of the log.
fn preallocated_small_segments() -> DiskOptions {
    small_segments().with_preallocate_bytes(512)
}

#[test]
fn preallocated_zeros_are_unused_space_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let options = preallocated_small_segments();
    let files = twelve_synced_records(dir.path(), &options);
    assert!(files.len() >= 3, "{files:?}");
    // Every segment, sealed ones included, ends in zero-filled space.
    let lengths: Vec<u64> = files.iter().map(|f| file_len(f)).collect();
    for (file, len) in files.iter().zip(&lengths) {
        let bytes = fs::read(file).unwrap();
        // A segment takes at most 256 bytes and one record before the next one starts.
        let zeros = bytes.iter().rev().take_while(|&&b| b == 0).count();
        assert!(
            zeros >= 100 && *len > 256,
            "{}: {zeros} zeros of {len}",
            file.display()
        );
    }
    let mut s = open(dir.path(), &options);
    assert!(s.repairs().is_empty(), "{:?}", s.repairs());
    for i in 0..12u8 {
        assert_eq!(s.read(LogIndex(u64::from(i) + 1)), Some(vec![i + 1; 60]));
    }
    let reopened: Vec<u64> = files.iter().map(|f| file_len(f)).collect();
    assert_eq!(reopened, lengths, "recovery cut preallocated space");
    // The log carries on over the zeros, and a later open reads both.
    s.append(b"after");
    s.sync().unwrap();
    drop(s);
    let s = open(dir.path(), &options);
    assert!(s.repairs().is_empty());
    assert_eq!(s.read(LogIndex(13)), Some(b"after".to_vec()));
    assert_eq!(s.read(LogIndex(12)), Some(vec![12; 60]));
}

#[test]
fn with_preallocation_a_segment_grows_once_per_stretch_not_once_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions::default().with_preallocate_bytes(64 << 10);
    let mut s = open(dir.path(), &options);
    let segment = last_segment(dir.path());
    let mut sizes = std::collections::BTreeSet::new();
    // 1,000 batches of about 120 bytes: 120 KB, so the file grows about twice.
    for i in 0..1000u32 {
        s.append(&i.to_le_bytes().repeat(25));
        s.sync().unwrap();
        sizes.insert(file_len(&segment));
    }
    assert!(
        (2..=3).contains(&sizes.len()),
        "the file took {} sizes",
        sizes.len()
    );
    drop(s);
    let s = open(dir.path(), &options);
    assert!(s.repairs().is_empty());
    assert_eq!(
        s.read(LogIndex(1000)),
        Some(999u32.to_le_bytes().repeat(25))
    );
}

#[test]
fn a_torn_batch_in_preallocated_space_is_cut_and_damage_after_it_in_a_sealed_segment_is_not_ignored(
) {
    // The last batch's second half never left the cache: zeros where its bytes should be.
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions::default().with_preallocate_bytes(4096);
    let mut s = open(dir.path(), &options);
    s.append(b"synced");
    s.sync().unwrap();
    let start = s.active_segment_len();
    s.append(&[7u8; 200]);
    s.sync().unwrap();
    let end = s.active_segment_len();
    drop(s);
    let segment = last_segment(dir.path());
    zero_range(&segment, start + (end - start) / 2, end);
    let s = open(dir.path(), &options);
    assert_eq!(s.log_bounds(), (LogIndex(1), LogIndex(2)));
    assert_eq!(s.repairs().len(), 1, "{:?}", s.repairs());
    drop(s);

    // A nonzero byte in the zero-filled tail of a sealed segment is damage.
    let dir = tempfile::tempdir().unwrap();
    let options = preallocated_small_segments();
    let sealed = &twelve_synced_records(dir.path(), &options)[1];
    flip_byte(sealed, file_len(sealed) - 1);
    match DiskStorage::open(dir.path(), options) {
        Err(StorageError::CorruptLog { path, reason, .. }) => {
            assert_eq!(&path, sealed);
            assert!(reason.contains("not the last"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}
