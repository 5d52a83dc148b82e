//! Segment files, the `META` file, and recovery: scanning, torn-tail repair, replay.
//!
//! Recovery reads every live segment in order. The first live segment's header gives the
//! starting state; every later header must equal the state replayed so far, which catches
//! segments mixed up between stores or lost in the middle. Only the last segment may end in
//! a bad record, and only if no batch marker follows it (module docs of `storage`).

use super::fsutil::{fsync_dir, remove_if_exists, write_atomically};
use super::record::{
    self, encode_frame, encode_marker, header_payload, FrameHeader, Kind, Record, FRAME_HEADER_LEN,
    MARKER_FRAME_LEN, MARKER_MAGIC, MARKER_PAYLOAD_LEN, MAX_PAYLOAD_LEN,
};
use super::StorageError;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use synod_core::LogIndex;

/// Name of the metadata file.
pub(crate) const META_FILE: &str = "META";
const META_MAGIC: [u8; 8] = *b"SYNDMETA";
const META_VERSION: u32 = 1;
const META_LEN: usize = 24;

/// Read buffer for scanning segments on open.
const SCAN_BUFFER: usize = 1 << 20;

/// File name of segment `seq`: fixed width, so names sort in segment order.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("wal-{seq:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Every segment file in `dir`, by number.
pub(crate) fn list_segments(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, StorageError> {
    let mut segments = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.insert(seq, entry.path());
        }
    }
    Ok(segments)
}

/// `META`: magic, version, first live segment, CRC32C of the 20 bytes before it.
pub(crate) fn encode_meta(first_segment: u64) -> [u8; META_LEN] {
    let mut out = [0u8; META_LEN];
    out[0..8].copy_from_slice(&META_MAGIC);
    out[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&first_segment.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..20]);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Atomically record the first live segment.
pub(crate) fn write_meta(dir: &Path, first_segment: u64) -> Result<(), StorageError> {
    write_atomically(dir, META_FILE, &encode_meta(first_segment))
}

/// The first live segment, or `None` if there is no `META` file.
pub(crate) fn read_meta(dir: &Path) -> Result<Option<u64>, StorageError> {
    let path = dir.join(META_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read", path, e)),
    };
    let corrupt = |reason: String| StorageError::CorruptMetadata {
        path: path.clone(),
        reason,
    };
    if bytes.len() != META_LEN {
        return Err(corrupt(format!(
            "{} bytes, expected {META_LEN}",
            bytes.len()
        )));
    }
    if bytes[0..8] != META_MAGIC {
        return Err(corrupt("bad magic bytes; not a synod META file".into()));
    }
    let stored = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    let computed = crc32c::crc32c(&bytes[0..20]);
    if stored != computed {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != META_VERSION {
        return Err(corrupt(format!(
            "format version {version}, this build reads {META_VERSION}"
        )));
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[12..20]);
    let first = u64::from_le_bytes(first);
    if first == 0 {
        return Err(corrupt(
            "first live segment is 0; segments count from 1".into(),
        ));
    }
    Ok(Some(first))
}

/// The bytes a new segment starts with: its batch marker, then its header.
pub(crate) fn segment_start(
    out: &mut Vec<u8>,
    batch: u64,
    seq: u64,
    first: LogIndex,
    next: LogIndex,
    kv: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), String> {
    encode_marker(out, batch);
    let payload = header_payload(seq, first, next, kv);
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(format!(
            "the key-value space is {} bytes, more than a segment header may hold ({MAX_PAYLOAD_LEN})",
            payload.len()
        ));
    }
    encode_frame(out, Kind::Header, &[&payload]);
    Ok(())
}

/// Where a log record's frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u64,
    /// Byte offset of the frame in the segment.
    pub(crate) offset: u64,
    /// Length of the record's data (the payload minus the index).
    pub(crate) len: u32,
}

impl Location {
    /// Length of the whole frame.
    pub(crate) fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + 8 + self.len as usize
    }
}

/// Check a whole append frame read back from a segment or a pending buffer and return its
/// data.
pub(crate) fn decode_append_frame(frame: &[u8], index: LogIndex) -> Result<&[u8], String> {
    if frame.len() < FRAME_HEADER_LEN {
        return Err("short frame".into());
    }
    let (head, payload) = frame.split_at(FRAME_HEADER_LEN);
    let mut h = [0u8; FRAME_HEADER_LEN];
    h.copy_from_slice(head);
    let header = FrameHeader::parse(&h);
    if header.len as usize != payload.len() {
        return Err(format!(
            "frame declares {} bytes, index says {}",
            header.len,
            payload.len()
        ));
    }
    match record::decode(header.check(payload)?, payload)? {
        Record::Append { index: got, data } if got == index => Ok(data),
        Record::Append { index: got, .. } => Err(format!("holds index {got}, not {index}")),
        other => Err(format!("is not an append record but {other:?}")),
    }
}

/// The log's index: where each record in `[first, next)` is. During replay, a prefix may be
/// `missing` (its records were in segments deleted after a compaction that a later record
/// in the replay will apply); at runtime `missing` is always 0.
#[derive(Debug, Clone)]
pub(crate) struct Positions {
    pub(crate) first: LogIndex,
    missing: u64,
    pub(crate) entries: VecDeque<Location>,
}

impl Positions {
    pub(crate) fn new(first: LogIndex, next: LogIndex) -> Positions {
        Positions {
            first,
            missing: next.0 - first.0,
            entries: VecDeque::new(),
        }
    }

    pub(crate) fn next(&self) -> LogIndex {
        LogIndex(self.first.0 + self.missing + self.entries.len() as u64)
    }

    pub(crate) fn get(&self, index: LogIndex) -> Option<Location> {
        if index < self.first || index >= self.next() {
            return None;
        }
        let pos = index.0 - self.first.0;
        let pos = pos.checked_sub(self.missing)?;
        self.entries.get(usize::try_from(pos).ok()?).copied()
    }

    pub(crate) fn push(&mut self, location: Location) {
        self.entries.push_back(location);
    }

    /// `MemStorage::truncate`. Returns how many records were removed.
    pub(crate) fn truncate(&mut self, from: LogIndex) -> u64 {
        let keep = from.0.saturating_sub(self.first.0);
        let total = self.missing + self.entries.len() as u64;
        if keep >= total {
            return 0;
        }
        if keep <= self.missing {
            self.missing = keep;
            self.entries.clear();
        } else {
            self.entries.truncate((keep - self.missing) as usize);
        }
        total - keep
    }

    /// `MemStorage::compact`. Returns false if `before` is not after the first index.
    pub(crate) fn compact(&mut self, before: LogIndex) -> bool {
        if before <= self.first {
            return false;
        }
        let drop = before.0.min(self.next().0) - self.first.0;
        let from_missing = drop.min(self.missing);
        self.missing -= from_missing;
        let from_entries = (drop - from_missing) as usize;
        self.entries.drain(..from_entries);
        self.first = before;
        true
    }
}

/// What recovery hands to [`super::DiskStorage`].
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) kv: BTreeMap<Vec<u8>, Vec<u8>>,
    pub(crate) positions: Positions,
    /// The number the next batch marker gets.
    pub(crate) next_batch: u64,
    pub(crate) first_segment: u64,
    /// Live segments in order, with their valid length. The last is the active segment.
    pub(crate) segments: Vec<(u64, PathBuf, u64)>,
    pub(crate) repairs: Vec<TailRepair>,
}

/// A torn tail that recovery cut off the write-ahead log: the unacknowledged end of the
/// last batch a crash interrupted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRepair {
    /// The segment file.
    pub path: PathBuf,
    /// Where the file was truncated: the offset of the first bad record.
    pub offset: u64,
    /// What was wrong with that record.
    pub reason: String,
}

/// Open the WAL in `dir`: create it if new, repair a torn tail, replay every live segment.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, StorageError> {
    remove_if_exists(&dir.join(format!("{META_FILE}.tmp")))?;
    let first_segment = match read_meta(dir)? {
        Some(first) => first,
        None => {
            initialize(dir)?;
            1
        }
    };

    let mut live = Vec::new();
    let mut removed_leftovers = false;
    for (seq, path) in list_segments(dir)? {
        if seq < first_segment {
            // Deleted by a compaction whose META update was durable; the unlink was not.
            remove_if_exists(&path)?;
            removed_leftovers = true;
        } else {
            live.push((seq, path));
        }
    }
    if removed_leftovers {
        fsync_dir(dir)?;
    }
    for (i, (seq, _)) in live.iter().enumerate() {
        let expected = first_segment + i as u64;
        if *seq != expected {
            return Err(StorageError::MissingSegment {
                dir: dir.to_path_buf(),
                file: segment_name(expected),
            });
        }
    }
    if live.is_empty() {
        return Err(StorageError::MissingSegment {
            dir: dir.to_path_buf(),
            file: segment_name(first_segment),
        });
    }

    let mut replay = Replay::default();
    let mut segments = Vec::new();
    let mut repairs = Vec::new();
    let count = live.len();
    for (i, (seq, path)) in live.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let mut position = 0usize;
        let scan = scan_segment(&path, is_last, |offset, record| {
            let result = replay.apply(seq, position, offset, record);
            position += 1;
            result
        })?;
        if scan.records < 2 {
            // No header: fine only for the last segment of a rollover whose first batch
            // was torn. Its predecessor is intact and becomes the active segment again.
            if is_last && i > 0 {
                tracing::warn!(
                    file = %path.display(),
                    "removing a new WAL segment whose first batch was torn"
                );
                remove_if_exists(&path)?;
                fsync_dir(dir)?;
                repairs.push(TailRepair {
                    path,
                    offset: 0,
                    reason: "new segment's first batch was torn; file removed".into(),
                });
                break;
            }
            return Err(StorageError::CorruptLog {
                path,
                offset: scan.valid_len,
                reason: "segment ends before its header".into(),
            });
        }
        if let Some((offset, reason)) = scan.torn {
            tracing::warn!(
                file = %path.display(),
                offset,
                %reason,
                "truncating a torn tail of the write-ahead log"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| StorageError::io("open", &path, e))?;
            file.set_len(offset)
                .and_then(|()| file.sync_all())
                .map_err(|e| StorageError::io("truncate torn tail of", &path, e))?;
            repairs.push(TailRepair {
                path: path.clone(),
                offset,
                reason,
            });
        }
        segments.push((seq, path, scan.valid_len));
    }

    let Some(positions) = replay.positions else {
        // Unreachable in practice: the first live segment has at least two records, so
        // its header was replayed. Report rather than panic.
        return Err(StorageError::CorruptLog {
            path: dir.join(segment_name(first_segment)),
            offset: 0,
            reason: "no segment header found".into(),
        });
    };
    if positions.missing > 0 {
        return Err(StorageError::InconsistentLog {
            path: dir.join(segment_name(first_segment)),
            offset: 0,
            reason: format!(
                "log records {}..{} are live but their segments were deleted",
                positions.first,
                positions.first.0 + positions.missing
            ),
        });
    }
    Ok(Recovered {
        kv: replay.kv,
        positions,
        next_batch: replay.last_batch + 1,
        first_segment,
        segments,
        repairs,
    })
}

/// Create the first segment and then `META`, whose presence means "initialized". A crash
/// in between leaves a segment with at most the initial bytes and no `META`; that is
/// recognised and redone. Any other segment without `META` is an error.
fn initialize(dir: &Path) -> Result<(), StorageError> {
    let mut initial = Vec::new();
    segment_start(
        &mut initial,
        1,
        1,
        LogIndex(1),
        LogIndex(1),
        &BTreeMap::new(),
    )
    .map_err(|reason| StorageError::CorruptLog {
        path: dir.join(segment_name(1)),
        offset: 0,
        reason,
    })?;
    let existing = list_segments(dir)?;
    let path = dir.join(segment_name(1));
    if !existing.is_empty() {
        let only_first = existing.len() == 1 && existing.contains_key(&1);
        let contents = if only_first {
            fs::read(&path).map_err(|e| StorageError::io("read", &path, e))?
        } else {
            Vec::new()
        };
        if !only_first || !initial.starts_with(&contents) {
            return Err(StorageError::MissingMetadata {
                dir: dir.to_path_buf(),
                segments: existing.len(),
            });
        }
    }
    let write = || -> std::io::Result<()> {
        let file = File::create(&path)?;
        file.write_all_at(&initial, 0)?;
        file.sync_data()
    };
    write().map_err(|e| StorageError::io("create first segment", &path, e))?;
    // write_meta fsyncs the directory, which also makes the new segment's name durable.
    write_meta(dir, 1)
}

/// The replay state machine: `MemStorage`'s semantics, record by record.
#[derive(Default)]
struct Replay {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    positions: Option<Positions>,
    last_batch: u64,
}

impl Replay {
    fn apply(
        &mut self,
        segment: u64,
        position: usize,
        offset: u64,
        record: Record<'_>,
    ) -> Result<(), String> {
        match (position, record) {
            (1, Record::Header(header)) => {
                if header.segment != segment {
                    return Err(format!(
                        "header names segment {} but the file is segment {segment}",
                        header.segment
                    ));
                }
                match &self.positions {
                    None => {
                        self.positions = Some(Positions::new(header.first, header.next));
                        self.kv = header.kv;
                    }
                    Some(p) => {
                        if header.first != p.first
                            || header.next != p.next()
                            || header.kv != self.kv
                        {
                            return Err(format!(
                                "segment header (log {}..{}, {} keys) disagrees with the \
                                 earlier segments (log {}..{}, {} keys)",
                                header.first,
                                header.next,
                                header.kv.len(),
                                p.first,
                                p.next(),
                                self.kv.len()
                            ));
                        }
                    }
                }
                Ok(())
            }
            (1, _) => Err("the second record of a segment is not its header".into()),
            (_, Record::Marker { batch }) => {
                if batch < self.last_batch {
                    return Err(format!(
                        "batch {batch} after batch {}; batches only increase",
                        self.last_batch
                    ));
                }
                self.last_batch = batch;
                Ok(())
            }
            (0, _) => Err("a segment does not start with a batch marker".into()),
            (_, Record::Header(_)) => Err("a segment header in the middle of a segment".into()),
            (_, record) => {
                let Some(positions) = self.positions.as_mut() else {
                    return Err("a record before any segment header".into());
                };
                match record {
                    Record::Append { index, data } => {
                        if index != positions.next() {
                            return Err(format!(
                                "append record for index {index}, but the next index is {}",
                                positions.next()
                            ));
                        }
                        positions.push(Location {
                            segment,
                            offset,
                            len: record::len_u32(data.len()),
                        });
                    }
                    Record::Truncate { from } => {
                        positions.truncate(from);
                    }
                    Record::Compact { before } => {
                        positions.compact(before);
                    }
                    Record::Put { key, value } => {
                        self.kv.insert(key.to_vec(), value.to_vec());
                    }
                    Record::Delete { key } => {
                        self.kv.remove(key);
                    }
                    Record::Marker { .. } | Record::Header(_) => {}
                }
                Ok(())
            }
        }
    }
}

/// The result of reading one segment.
struct SegmentScan {
    /// Bytes of whole, valid records from the start.
    valid_len: u64,
    /// Valid records read.
    records: usize,
    /// A bad record at the tail of the last segment: where, and why.
    torn: Option<(u64, String)>,
}

/// Read a segment's records in order and hand each to `visit`. A bad frame is an error
/// unless this is the last segment and no valid batch marker follows it.
fn scan_segment(
    path: &Path,
    is_last: bool,
    mut visit: impl FnMut(u64, Record<'_>) -> Result<(), String>,
) -> Result<SegmentScan, StorageError> {
    let io_err = |op, e| StorageError::io(op, path, e);
    let file = File::open(path).map_err(|e| io_err("open", e))?;
    let file_len = file.metadata().map_err(|e| io_err("stat", e))?.len();
    let mut reader = BufReader::with_capacity(SCAN_BUFFER, &file);
    let mut offset = 0u64;
    let mut records = 0usize;
    let mut payload = Vec::new();
    // The newest batch marker read. Batch k+1 is written only after batch k is durable, so
    // a genuine later marker after a bad record is for batch k+1 (the bad record is in batch
    // k) or k+2 (the bad record is batch k+1's own marker).
    let mut last_batch: Option<u64> = None;
    let bad = loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            break None;
        }
        if remaining < FRAME_HEADER_LEN as u64 {
            break Some(format!("torn frame header: only {remaining} bytes left"));
        }
        let mut head = [0u8; FRAME_HEADER_LEN];
        reader
            .read_exact(&mut head)
            .map_err(|e| io_err("read", e))?;
        let header = FrameHeader::parse(&head);
        let len = header.len as usize;
        if len > MAX_PAYLOAD_LEN {
            break Some(format!(
                "length field says {len} bytes, more than the bound of {MAX_PAYLOAD_LEN}"
            ));
        }
        let room = remaining - FRAME_HEADER_LEN as u64;
        if len as u64 > room {
            break Some(format!(
                "record of {len} bytes runs past the end of the file ({room} bytes left)"
            ));
        }
        payload.clear();
        payload.resize(len, 0);
        reader
            .read_exact(&mut payload)
            .map_err(|e| io_err("read", e))?;
        let kind = match header.check(&payload) {
            Ok(kind) => kind,
            Err(reason) => break Some(reason),
        };
        let inconsistent = |reason: String| StorageError::InconsistentLog {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        let record = record::decode(kind, &payload)
            .map_err(|r| inconsistent(format!("record checks out but does not decode: {r}")))?;
        if let Record::Marker { batch } = record {
            last_batch = Some(batch);
        }
        visit(offset, record).map_err(inconsistent)?;
        records += 1;
        offset += (FRAME_HEADER_LEN + len) as u64;
    };
    // Zeros from here to the end are space preallocated for later batches
    // (`DiskOptions::preallocate_bytes`), not damage. In a segment that is not the last,
    // records lost to zeros would still be caught: the next segment's header must equal
    // the state replayed up to it.
    let clean_end = match &bad {
        None => true,
        Some(_) => only_zeros(&file, path, offset, file_len)?,
    };
    let Some(reason) = bad.filter(|_| !clean_end) else {
        return Ok(SegmentScan {
            valid_len: offset,
            records,
            torn: None,
        });
    };
    if !is_last {
        return Err(StorageError::CorruptLog {
            path: path.to_path_buf(),
            offset,
            reason: format!("{reason}, in a segment that is not the last"),
        });
    }
    let expected = last_batch.map(|b| b.saturating_add(1)..=b.saturating_add(2));
    if let Some(later) = find_marker_after(&file, path, offset + 1, file_len, expected)? {
        return Err(StorageError::CorruptLog {
            path: path.to_path_buf(),
            offset,
            reason: format!("{reason}; a later batch starts at offset {later}"),
        });
    }
    Ok(SegmentScan {
        valid_len: offset,
        records,
        torn: Some((offset, reason)),
    })
}

/// Whether bytes `start..end` of `file` are all zero.
fn only_zeros(file: &File, path: &Path, start: u64, end: u64) -> Result<bool, StorageError> {
    const WINDOW: u64 = 1 << 20;
    let mut buf = Vec::new();
    let mut at = start;
    while at < end {
        let len = (end - at).min(WINDOW);
        buf.clear();
        buf.resize(len as usize, 0);
        file.read_exact_at(&mut buf, at)
            .map_err(|e| StorageError::io("read", path, e))?;
        if buf.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += len;
    }
    Ok(true)
}

/// The offset of the first valid batch marker frame starting at or after `start`, if any.
///
/// The search looks for the marker's magic bytes rather than following length fields, so it
/// finds later batches even when the damaged record's own length field is what was hit.
/// When `expected` is known, only a marker for a batch in that range counts: client data
/// that happens to contain a well-formed marker for some other batch must not turn a torn
/// tail into a refusal to start.
fn find_marker_after(
    file: &File,
    path: &Path,
    start: u64,
    end: u64,
    expected: Option<std::ops::RangeInclusive<u64>>,
) -> Result<Option<u64>, StorageError> {
    const WINDOW: u64 = 1 << 20;
    // A marker frame starting at `f` has its magic at `f + 9` and ends at `f + 25`.
    let magic_offset = FRAME_HEADER_LEN as u64;
    let tail_after_magic = MARKER_PAYLOAD_LEN as u64; // magic plus batch number
    let mut window_start = start + magic_offset;
    let mut buf = Vec::new();
    while window_start + tail_after_magic <= end {
        let len = (WINDOW + tail_after_magic - 1).min(end - window_start);
        buf.clear();
        buf.resize(len as usize, 0);
        file.read_exact_at(&mut buf, window_start)
            .map_err(|e| StorageError::io("read", path, e))?;
        let candidates = (len + 1).saturating_sub(tail_after_magic).min(WINDOW);
        for i in 0..candidates as usize {
            if buf[i..i + MARKER_MAGIC.len()] != MARKER_MAGIC {
                continue;
            }
            let frame_start = window_start + i as u64 - magic_offset;
            let mut frame = [0u8; MARKER_FRAME_LEN];
            file.read_exact_at(&mut frame, frame_start)
                .map_err(|e| StorageError::io("read", path, e))?;
            let mut head = [0u8; FRAME_HEADER_LEN];
            head.copy_from_slice(&frame[..FRAME_HEADER_LEN]);
            let header = FrameHeader::parse(&head);
            if header.len as usize == MARKER_PAYLOAD_LEN
                && header.check(&frame[FRAME_HEADER_LEN..]) == Ok(Kind::Marker)
            {
                let batch = match record::decode(Kind::Marker, &frame[FRAME_HEADER_LEN..]) {
                    Ok(Record::Marker { batch }) => Some(batch),
                    _ => None,
                };
                let wanted = match (&expected, batch) {
                    (None, _) => true,
                    (Some(range), Some(b)) => range.contains(&b),
                    (Some(_), None) => false,
                };
                if wanted {
                    return Ok(Some(frame_start));
                }
            }
        }
        window_start += WINDOW;
    }
    Ok(None)
}
