//! [`DiskStorage`]: the on-disk [`Storage`], with group commit.

use super::fsutil::{ensure_dir, fsync_dir};
use super::record::{
    encode_frame, encode_marker, len_u32, payload_len, Kind, FRAME_HEADER_LEN, MAX_PAYLOAD_LEN,
};
use super::snapshot::SnapshotStore;
use super::wal::{
    self, decode_append_frame, segment_name, segment_start, Location, Positions, TailRepair,
};
use super::{StorageError, MAX_RECORD_BYTES};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use synod_core::{LogIndex, Storage};

/// Name of the snapshot subdirectory of a [`DiskStorage`] directory.
const SNAPSHOT_DIR: &str = "snapshots";
/// Where blobs ([`Storage::put_blob`]) live, one file each.
const BLOB_DIR: &str = "blobs";
/// A blob file ends with its length (`u64`), the CRC32C of the data (`u32`) and this.
const BLOB_MAGIC: [u8; 8] = *b"SYNDBLOB";
const BLOB_FOOTER_LEN: usize = 20;

/// Settings for [`DiskStorage::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOptions {
    /// Once the active segment reaches this many bytes, the next record starts a new
    /// segment. A segment can exceed it by one record. Compaction frees whole segments, so
    /// smaller segments free space sooner at the cost of more files. Default 64 MiB.
    pub segment_size: u64,
    /// Bytes of the most recently appended log records kept in memory to serve
    /// [`Storage::read`] without a disk read (a Raft leader reads its tail to replicate it).
    /// Older records, and a record larger than the cache, are read from the segment files
    /// (or from the pending batch). Default 1 MiB.
    pub read_cache_bytes: usize,
    /// When a batch runs past the zero-filled end of its segment, also write this many
    /// zero bytes after it. Later batches then overwrite allocated, already written blocks,
    /// and their `fdatasync` has no new file size or block allocation to make durable (a
    /// journal commit on a journaling file system, an inode write on this project's
    /// journal-less ext4 VMs: about 40 % less CPU per fdatasync and one wake-up fewer;
    /// docs/etcdperf.md, session 9). Recovery reads a zero tail as unused space. Default 0:
    /// every batch extends the file.
    pub preallocate_bytes: u64,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            segment_size: 64 << 20,
            read_cache_bytes: 1 << 20,
            preallocate_bytes: 0,
        }
    }
}

impl DiskOptions {
    /// These options with another segment size (tests use small ones to exercise rollover).
    pub fn with_segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// These options with another read-cache size; 0 disables the cache.
    pub fn with_read_cache_bytes(mut self, bytes: usize) -> Self {
        self.read_cache_bytes = bytes;
        self
    }

    /// These options with zero-filled space written ahead of the log; 0 turns it off.
    pub fn with_preallocate_bytes(mut self, bytes: u64) -> Self {
        self.preallocate_bytes = bytes;
        self
    }
}

/// What one [`DiskStorage::sync`] did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Storage writes (puts, deletes, appends, truncations, compactions) made durable.
    pub records: u64,
    /// Bytes written to segment files, framing included.
    pub bytes: u64,
    /// `write` calls: one per segment the batch touched, so one unless the batch rolled
    /// over to a new segment.
    pub writes: u32,
    /// `fdatasync`/`fsync` calls on files and directories.
    pub fsyncs: u32,
    /// Segment files created.
    pub segments_created: u32,
    /// Segment files deleted after a compaction.
    pub segments_deleted: u32,
    /// Blobs written (each its own file).
    pub blobs: u32,
    /// Wall-clock time the sync took.
    pub duration: Duration,
}

/// The durable [`Storage`] of the real driver: a segmented write-ahead log in one
/// directory, plus that directory's [`SnapshotStore`].
///
/// Method groups:
///
/// - **Lifecycle:** [`DiskStorage::open`]. Dropping the store without [`DiskStorage::sync`]
///   discards unsynced writes, exactly like a crash.
/// - **The [`Storage`] trait:** `put`/`get`/`delete`, `append`/`read`/`truncate`/`compact`,
///   `log_bounds`. Writes change the in-memory view at once and buffer a record. They are
///   infallible, as the trait requires; a write that cannot be stored (a record over
///   [`MAX_RECORD_BYTES`]) or a read that hits a damaged or failing disk poisons the store,
///   and the next `sync` reports it. So a handler that got a bad answer never has its held
///   output released.
/// - **Group commit:** [`DiskStorage::sync`] makes every buffered write durable with one
///   `write` and one `fdatasync` (more only when the batch starts a segment).
///   [`DiskStorage::pending_records`] and [`DiskStorage::pending_bytes`] tell the driver
///   whether there is anything to sync.
/// - **Inspection:** [`DiskStorage::dir`], [`DiskStorage::entries`],
///   [`DiskStorage::segment_count`], [`DiskStorage::failure`], [`DiskStorage::repairs`].
/// - **Snapshots:** [`DiskStorage::snapshots`].
///
/// One process may have one `DiskStorage` open per directory; nothing locks the directory,
/// so the driver must not open it twice.
pub struct DiskStorage {
    dir: PathBuf,
    options: DiskOptions,
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    positions: Positions,
    /// Data of the newest `cache.len()` log records, oldest first.
    cache: VecDeque<Vec<u8>>,
    cache_bytes: usize,
    /// Segment files that exist on disk, by number.
    segments: BTreeMap<u64, Segment>,
    /// The segment new records go to. It may exist only in `pending` so far.
    active: u64,
    /// Length of the active segment, pending bytes included.
    active_len: u64,
    /// Buffered records, one chunk per segment the batch touches, in write order.
    pending: Vec<Chunk>,
    pending_records: u64,
    next_batch: u64,
    /// The first live segment as recorded in `META`.
    first_segment: u64,
    failure: Mutex<Option<Failure>>,
    snapshots: SnapshotStore,
    repairs: Vec<TailRepair>,
    /// Blobs written since the last sync, by name; the sync writes them before the batch.
    pending_blobs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Blobs deleted since the last sync; the sync removes them after the batch, so a
    /// batch that stops referring to a blob is durable before the blob goes.
    doomed_blobs: Vec<Vec<u8>>,
}

struct Segment {
    path: PathBuf,
    file: File,
    /// Bytes written (and synced) so far.
    written: u64,
    /// The file's length: zero bytes from `written` up to here (preallocated).
    zeroed: u64,
}

/// Bytes to append to one segment at the next sync.
struct Chunk {
    segment: u64,
    /// Offset in the segment where these bytes go.
    base: u64,
    bytes: Vec<u8>,
    /// The segment does not exist yet; the sync creates it.
    creates: bool,
}

#[derive(Clone)]
struct Failure {
    kind: io::ErrorKind,
    message: String,
}

impl Failure {
    fn to_error(&self) -> io::Error {
        io::Error::new(
            self.kind,
            format!(
                "storage is stopped after an earlier failure: {}",
                self.message
            ),
        )
    }
}

impl DiskStorage {
    /// Open the store in `dir`, creating the directory and an empty log if needed.
    ///
    /// Recovery replays every live segment. A torn tail of the last segment (a record cut
    /// short or failing its checksum, with no later batch after it) is truncated and
    /// logged. Damage anywhere else is an error that names the file and offset; so is a
    /// damaged `META` file, a missing segment, or a damaged latest snapshot footer.
    pub fn open(dir: impl AsRef<Path>, options: DiskOptions) -> Result<DiskStorage, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        ensure_dir(&dir)?;
        let snapshots = SnapshotStore::open(dir.join(SNAPSHOT_DIR))?;
        open_blob_dir(&dir.join(BLOB_DIR))?;
        let recovered = wal::recover(&dir)?;
        let mut segments = BTreeMap::new();
        for (seq, path, written) in &recovered.segments {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| StorageError::io("open", path, e))?;
            // Recovery stopped at the first zero byte of a preallocated tail, if any.
            let zeroed = file
                .metadata()
                .map_err(|e| StorageError::io("stat", path, e))?
                .len()
                .max(*written);
            segments.insert(
                *seq,
                Segment {
                    path: path.clone(),
                    file,
                    written: *written,
                    zeroed,
                },
            );
        }
        // What recovery read may still be only in the page cache: a process killed between
        // its write and its fdatasync leaves an intact batch that a power loss would still
        // erase. Make all of it durable (and the segments' directory entries) before anything
        // decided from it can be acknowledged.
        for segment in segments.values() {
            segment
                .file
                .sync_data()
                .map_err(|e| StorageError::io("fdatasync", &segment.path, e))?;
        }
        fsync_dir(&dir)?;
        let (active, active_len) = match segments.iter().next_back() {
            Some((seq, segment)) => (*seq, segment.written),
            None => {
                return Err(StorageError::MissingSegment {
                    dir,
                    file: segment_name(recovered.first_segment),
                })
            }
        };
        tracing::debug!(
            dir = %dir.display(),
            segments = segments.len(),
            first = %recovered.positions.first,
            next = %recovered.positions.next(),
            keys = recovered.kv.len(),
            "opened storage"
        );
        Ok(DiskStorage {
            dir,
            options,
            kv: recovered.kv,
            positions: recovered.positions,
            cache: VecDeque::new(),
            cache_bytes: 0,
            segments,
            active,
            active_len,
            pending: Vec::new(),
            pending_records: 0,
            next_batch: recovered.next_batch,
            first_segment: recovered.first_segment,
            failure: Mutex::new(None),
            snapshots,
            repairs: recovered.repairs,
            pending_blobs: BTreeMap::new(),
            doomed_blobs: Vec::new(),
        })
    }

    /// Make every write so far durable: write the buffered records with one `write` per
    /// segment touched (normally one) and one `fdatasync` each; fsync the directory if a
    /// segment was created; then delete segments that a durable compaction emptied.
    ///
    /// Returns `Ok` with nothing done if nothing is pending. An error means the node must
    /// stop: the store is poisoned and every later call fails too, because retrying after a
    /// failed fsync can report success for data the kernel already dropped ("fsyncgate",
    /// PostgreSQL, 2018).
    pub fn sync(&mut self) -> io::Result<SyncStats> {
        if let Some(failure) = self.failure_state() {
            return Err(failure.to_error());
        }
        let started = Instant::now();
        let mut stats = SyncStats::default();
        self.write_pending(&mut stats)?;
        let blob_dir = self.dir.join(BLOB_DIR);
        for name in std::mem::take(&mut self.doomed_blobs) {
            // A blob left behind by a crash here is only wasted space.
            if let Err(error) = super::fsutil::remove_if_exists(&blob_dir.join(blob_file(&name))) {
                return Err(self.fail(io::Error::other(error.to_string())));
            }
        }
        if let Err(error) = self.delete_compacted_segments(&mut stats) {
            return Err(self.fail(io::Error::other(format!(
                "deleting compacted segments: {error}"
            ))));
        }
        stats.duration = started.elapsed();
        Ok(stats)
    }

    /// The first half of `sync`: write and fdatasync the batch, without deleting
    /// compacted segments. Tests use it to stand for a crash between the two halves.
    pub(crate) fn write_pending(&mut self, stats: &mut SyncStats) -> io::Result<()> {
        if let Some(failure) = self.failure_state() {
            return Err(failure.to_error());
        }
        // Blobs first: a batch that refers to a blob (a compaction after a snapshot) must
        // never be durable without it.
        for (name, data) in std::mem::take(&mut self.pending_blobs) {
            if let Err(error) = write_blob(&self.dir.join(BLOB_DIR), &name, &data) {
                return Err(self.fail(io::Error::other(error.to_string())));
            }
            stats.blobs += 1;
            stats.bytes += data.len() as u64;
            stats.fsyncs += 2;
        }
        let chunks = std::mem::take(&mut self.pending);
        let wrote = !chunks.is_empty();
        for chunk in chunks {
            if let Err(error) = self.write_chunk(chunk, stats) {
                return Err(self.fail(error));
            }
        }
        if wrote {
            self.next_batch += 1;
        }
        stats.records = std::mem::take(&mut self.pending_records);
        Ok(())
    }

    /// The same as [`DiskStorage::sync`]: write every buffered record and flush it to disk.
    pub fn flush_and_sync(&mut self) -> io::Result<SyncStats> {
        self.sync()
    }

    /// The first segment that still holds a live log record (or the active one); every
    /// segment before it can go once the compaction that emptied it is durable.
    fn first_live_segment(&self) -> u64 {
        self.positions
            .entries
            .front()
            .map_or(self.active, |l| l.segment)
            .min(self.active)
    }

    /// Whether the next [`DiskStorage::sync`] may block on the disk (write, fsync or
    /// remove a file). When it may not, the sync only checks the failure state.
    pub fn sync_may_block(&self) -> bool {
        let keep_from = self.first_live_segment();
        !self.pending.is_empty()
            || !self.pending_blobs.is_empty()
            || !self.doomed_blobs.is_empty()
            || keep_from > self.first_segment
    }

    /// Where the next record goes in the active segment (tests: a batch's end, which the
    /// file length no longer shows when space is preallocated).
    #[cfg(test)]
    pub(crate) fn active_segment_len(&self) -> u64 {
        self.active_len
    }

    /// Storage writes buffered since the last sync.
    pub fn pending_records(&self) -> u64 {
        self.pending_records
    }

    /// Bytes buffered since the last sync, framing included, blobs too.
    pub fn pending_bytes(&self) -> u64 {
        let blobs: u64 = self.pending_blobs.values().map(|b| b.len() as u64).sum();
        self.pending
            .iter()
            .map(|c| c.bytes.len() as u64)
            .sum::<u64>()
            + blobs
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &DiskOptions {
        &self.options
    }

    /// Every key-value pair, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.kv.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Segment files on disk (a segment a pending batch will create is not counted).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The failure that poisoned the store, if any. A poisoned store keeps answering from
    /// memory but every [`DiskStorage::sync`] fails.
    pub fn failure(&self) -> Option<io::Error> {
        self.failure_state().map(|f| f.to_error())
    }

    /// The torn tails that [`DiskStorage::open`] cut off (each is also logged). Empty after
    /// a clean shutdown; after a crash, normally one.
    pub fn repairs(&self) -> &[TailRepair] {
        &self.repairs
    }

    /// The snapshots of this store, in the `snapshots` subdirectory.
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    fn failure_state(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Poison the store (the first failure wins) and return the error for the caller.
    fn fail(&self, error: io::Error) -> io::Error {
        tracing::error!(dir = %self.dir.display(), %error, "storage failed; the node must stop");
        let mut slot = self
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(Failure {
                kind: error.kind(),
                message: error.to_string(),
            });
        }
        error
    }

    fn write_chunk(&mut self, chunk: Chunk, stats: &mut SyncStats) -> io::Result<()> {
        let len = chunk.bytes.len() as u64;
        if chunk.creates {
            let path = self.dir.join(segment_name(chunk.segment));
            let context = |op: &str, e: io::Error| {
                io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| context("create segment", e))?;
            file.write_all_at(&chunk.bytes, 0)
                .map_err(|e| context("write", e))?;
            let zeroed = len + self.options.preallocate_bytes;
            write_zeros(&file, len, zeroed).map_err(|e| context("preallocate", e))?;
            file.sync_data().map_err(|e| context("fdatasync", e))?;
            // The new file's name is durable only once the directory is (Pillai et al.).
            fsync_dir(&self.dir).map_err(io::Error::other)?;
            stats.fsyncs += 2;
            stats.segments_created += 1;
            self.segments.insert(
                chunk.segment,
                Segment {
                    path,
                    file,
                    written: len,
                    zeroed,
                },
            );
        } else {
            let Some(segment) = self.segments.get_mut(&chunk.segment) else {
                return Err(io::Error::other(format!(
                    "internal: segment {} is not open",
                    chunk.segment
                )));
            };
            let path = segment.path.display().to_string();
            if segment.written != chunk.base {
                return Err(io::Error::other(format!(
                    "internal: {path} has {} bytes but the batch starts at {}",
                    segment.written, chunk.base
                )));
            }
            let context = |op: &str, e: io::Error| {
                io::Error::new(
                    e.kind(),
                    format!("{op} {path} at offset {}: {e}", chunk.base),
                )
            };
            segment
                .file
                .write_all_at(&chunk.bytes, chunk.base)
                .map_err(|e| context("write", e))?;
            let end = chunk.base + len;
            if end > segment.zeroed && self.options.preallocate_bytes > 0 {
                // Past the preallocated space: zero-fill the next stretch in the same sync
                // (this fdatasync commits the new size; the next ones do not need to).
                let zeroed = end + self.options.preallocate_bytes;
                write_zeros(&segment.file, end, zeroed).map_err(|e| context("preallocate", e))?;
                segment.zeroed = zeroed;
            }
            segment
                .file
                .sync_data()
                .map_err(|e| context("fdatasync", e))?;
            segment.written += len;
            segment.zeroed = segment.zeroed.max(segment.written);
            stats.fsyncs += 1;
        }
        stats.writes += 1;
        stats.bytes += len;
        Ok(())
    }

    /// Delete segments holding no live log record, now that the compaction that emptied
    /// them is durable. `META` moves first, so a crash in between leaves only files that
    /// the next open recognises as leftovers.
    fn delete_compacted_segments(&mut self, stats: &mut SyncStats) -> Result<(), StorageError> {
        let keep_from = self.first_live_segment();
        if keep_from <= self.first_segment {
            return Ok(());
        }
        wal::write_meta(&self.dir, keep_from)?;
        stats.fsyncs += 2;
        self.first_segment = keep_from;
        let doomed: Vec<u64> = self.segments.range(..keep_from).map(|(s, _)| *s).collect();
        for seq in doomed {
            if let Some(segment) = self.segments.remove(&seq) {
                fs::remove_file(&segment.path)
                    .map_err(|e| StorageError::io("remove", &segment.path, e))?;
                stats.segments_deleted += 1;
            }
        }
        Ok(())
    }

    /// Buffer one record into the current batch, starting a segment first if the active
    /// one is full. Returns where the frame will be.
    fn buffer(&mut self, kind: Kind, parts: &[&[u8]]) -> (u64, u64) {
        let len = payload_len(parts);
        if len > MAX_PAYLOAD_LEN {
            // The caller checked the user-visible bound; this is a second line of defence.
            self.fail(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {kind:?} record of {len} bytes exceeds {MAX_PAYLOAD_LEN}"),
            ));
            return (self.active, self.active_len);
        }
        self.open_chunk();
        let Some(chunk) = self.pending.last_mut() else {
            return (self.active, self.active_len);
        };
        let offset = chunk.base + chunk.bytes.len() as u64;
        encode_frame(&mut chunk.bytes, kind, parts);
        self.active_len = offset + (FRAME_HEADER_LEN + len) as u64;
        self.pending_records += 1;
        (chunk.segment, offset)
    }

    /// Make sure the last pending chunk is for the active segment and has room policy-wise:
    /// roll to a new segment when the active one is full, and start each chunk with a batch
    /// marker.
    fn open_chunk(&mut self) {
        if self.active_len >= self.options.segment_size {
            let segment = self.active + 1;
            let mut bytes = Vec::new();
            if let Err(reason) = segment_start(
                &mut bytes,
                self.next_batch,
                segment,
                self.positions.first,
                self.positions.next(),
                &self.kv,
            ) {
                self.fail(io::Error::new(io::ErrorKind::InvalidInput, reason));
            }
            self.active = segment;
            self.active_len = bytes.len() as u64;
            self.pending.push(Chunk {
                segment,
                base: 0,
                bytes,
                creates: true,
            });
            return;
        }
        if self.pending.last().map(|c| c.segment) != Some(self.active) {
            let mut bytes = Vec::new();
            encode_marker(&mut bytes, self.next_batch);
            let base = self.active_len;
            self.active_len += bytes.len() as u64;
            self.pending.push(Chunk {
                segment: self.active,
                base,
                bytes,
                creates: false,
            });
        }
    }

    /// Check a user-supplied size against [`MAX_RECORD_BYTES`]; poison the store if over.
    fn within_bound(&self, what: &str, len: usize) -> bool {
        if len <= MAX_RECORD_BYTES {
            return true;
        }
        self.fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} of {len} bytes exceeds the limit of {MAX_RECORD_BYTES}"),
        ));
        false
    }

    fn read_from_disk(&self, location: Location, index: LogIndex) -> io::Result<Vec<u8>> {
        let frame_len = location.frame_len();
        if let Some(segment) = self
            .segments
            .get(&location.segment)
            .filter(|s| location.offset < s.written)
        {
            let mut frame = vec![0u8; frame_len];
            segment
                .file
                .read_exact_at(&mut frame, location.offset)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "reading log record {index} from {} at offset {}: {e}",
                            segment.path.display(),
                            location.offset
                        ),
                    )
                })?;
            return decode_append_frame(&frame, index)
                .map(<[u8]>::to_vec)
                .map_err(|reason| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "log record {index} in {} at offset {} {reason}",
                            segment.path.display(),
                            location.offset
                        ),
                    )
                });
        }
        let frame = self
            .pending
            .iter()
            .filter(|c| c.segment == location.segment && c.base <= location.offset)
            .find_map(|c| {
                let start = usize::try_from(location.offset - c.base).ok()?;
                c.bytes.get(start..start.checked_add(frame_len)?)
            })
            .ok_or_else(|| {
                io::Error::other(format!(
                    "internal: log record {index} is neither on disk nor buffered"
                ))
            })?;
        decode_append_frame(frame, index)
            .map(<[u8]>::to_vec)
            .map_err(|reason| {
                io::Error::other(format!("internal: buffered log record {index} {reason}"))
            })
    }

    fn cache_push(&mut self, data: &[u8]) {
        if self.options.read_cache_bytes == 0 {
            return;
        }
        self.cache.push_back(data.to_vec());
        self.cache_bytes += data.len();
        while self.cache_bytes > self.options.read_cache_bytes {
            match self.cache.pop_front() {
                Some(old) => self.cache_bytes -= old.len(),
                None => break,
            }
        }
    }
}

impl Storage for DiskStorage {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        if self.within_bound("a key-value pair", key.len() + value.len()) {
            let key_len = len_u32(key.len()).to_le_bytes();
            self.buffer(Kind::Put, &[&key_len, key, value]);
        }
        self.kv.insert(key.to_vec(), value.to_vec());
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.kv.get(key).cloned()
    }

    fn delete(&mut self, key: &[u8]) {
        if self.kv.contains_key(key) {
            self.buffer(Kind::Delete, &[key]);
            self.kv.remove(key);
        }
    }

    fn append(&mut self, record: &[u8]) -> LogIndex {
        let index = self.positions.next();
        let (segment, offset) = if self.within_bound("a log record", record.len()) {
            self.buffer(Kind::Append, &[&index.0.to_le_bytes(), record])
        } else {
            (self.active, self.active_len)
        };
        self.positions.push(Location {
            segment,
            offset,
            len: len_u32(record.len()),
        });
        self.cache_push(record);
        index
    }

    fn read(&self, index: LogIndex) -> Option<Vec<u8>> {
        let location = self.positions.get(index)?;
        let cached_from = self.positions.next().0 - self.cache.len() as u64;
        if index.0 >= cached_from {
            let slot = usize::try_from(index.0 - cached_from).ok()?;
            return self.cache.get(slot).cloned();
        }
        match self.read_from_disk(location, index) {
            Ok(data) => Some(data),
            Err(error) => {
                // The trait cannot return the error. Poisoning makes the batch's sync fail,
                // so nothing the handler decided from this `None` leaves the node.
                self.fail(error);
                None
            }
        }
    }

    fn truncate(&mut self, from: LogIndex) {
        let first = self.positions.first;
        let keep = from.0.saturating_sub(first.0);
        if keep >= self.positions.entries.len() as u64 {
            return;
        }
        let from = from.max(first);
        self.buffer(Kind::Truncate, &[&from.0.to_le_bytes()]);
        let removed = self.positions.truncate(from);
        let uncached = usize::try_from(removed)
            .unwrap_or(usize::MAX)
            .min(self.cache.len());
        for _ in 0..uncached {
            if let Some(old) = self.cache.pop_back() {
                self.cache_bytes -= old.len();
            }
        }
    }

    fn compact(&mut self, before: LogIndex) {
        if before <= self.positions.first {
            return;
        }
        self.buffer(Kind::Compact, &[&before.0.to_le_bytes()]);
        let old_next = self.positions.next();
        let cached_from = old_next.0 - self.cache.len() as u64;
        self.positions.compact(before);
        let dropped = before.0.min(old_next.0).saturating_sub(cached_from);
        for _ in 0..dropped {
            if let Some(old) = self.cache.pop_front() {
                self.cache_bytes -= old.len();
            }
        }
    }

    fn log_bounds(&self) -> (LogIndex, LogIndex) {
        (self.positions.first, self.positions.next())
    }

    /// One file per blob, written whole at the next sync (temporary file, fsync, rename,
    /// directory fsync), so a blob has no size bound but the disk's and is never copied
    /// into segment headers.
    fn put_blob(&mut self, name: &[u8], data: &[u8]) {
        // Deleted earlier in this batch and written again: the write wins (sync deletes
        // the doomed after writing the pending).
        self.doomed_blobs.retain(|n| n != name);
        self.pending_blobs.insert(name.to_vec(), data.to_vec());
        // A store written before blobs existed kept this value in the key-value space.
        self.delete(name);
    }

    fn delete_blob(&mut self, name: &[u8]) {
        self.pending_blobs.remove(name);
        self.doomed_blobs.push(name.to_vec());
        self.delete(name);
    }

    fn blob_names(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        let dir = self.dir.join(BLOB_DIR);
        let mut names: BTreeSet<Vec<u8>> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| blob_name(&e.file_name().to_string_lossy()))
                .collect(),
            Err(error) => {
                // As for a failed read: poison, rather than sweep from a partial list.
                self.fail(io::Error::other(format!(
                    "listing {}: {error}",
                    dir.display()
                )));
                return Vec::new();
            }
        };
        names.extend(self.pending_blobs.keys().cloned());
        for doomed in &self.doomed_blobs {
            names.remove(doomed);
        }
        names.retain(|n| n.starts_with(prefix));
        names.into_iter().collect()
    }

    fn get_blob(&self, name: &[u8]) -> Option<Vec<u8>> {
        if let Some(data) = self.pending_blobs.get(name) {
            return Some(data.clone());
        }
        match read_blob(&self.dir.join(BLOB_DIR), name) {
            Ok(Some(data)) => Some(data),
            Ok(None) => self.get(name),
            Err(error) => {
                // As for a failed log read: poison, so nothing decided from `None` leaves.
                self.fail(io::Error::other(error.to_string()));
                None
            }
        }
    }
}

impl DiskStorage {
    /// A writer that stores a blob durably from any thread (temporary file, fsync, rename,
    /// directory fsync), for background work; it bypasses the batch, so the caller
    /// orders it against the batch itself.
    pub fn blob_writer(&self) -> impl Fn(&[u8], &[u8]) -> io::Result<()> + Send + Sync + 'static {
        let dir = self.dir.join(BLOB_DIR);
        move |name: &[u8], data: &[u8]| {
            write_blob(&dir, name, data).map_err(|e| io::Error::other(e.to_string()))
        }
    }
}

/// A blob's file name: its name in hex, so any bytes make a valid file name.
fn blob_file(name: &[u8]) -> String {
    hex::encode(name) + ".blob"
}

/// The blob a file holds, from its name (`blob_file`'s inverse); `None` for any other file.
fn blob_name(file: &str) -> Option<Vec<u8>> {
    hex::decode(file.strip_suffix(".blob")?).ok()
}

/// Create the blob directory and delete writes a crash interrupted.
fn open_blob_dir(dir: &Path) -> Result<(), StorageError> {
    ensure_dir(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| StorageError::io("list", dir, e))?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            tracing::info!(file = %path.display(), "removing an abandoned blob write");
            super::fsutil::remove_if_exists(&path)?;
        }
    }
    Ok(())
}

fn write_blob(dir: &Path, name: &[u8], data: &[u8]) -> Result<(), StorageError> {
    let mut footer = Vec::with_capacity(BLOB_FOOTER_LEN);
    footer.extend_from_slice(&(data.len() as u64).to_le_bytes());
    footer.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    footer.extend_from_slice(&BLOB_MAGIC);
    // Data and footer as two parts: no copy of a snapshot of hundreds of MB.
    super::fsutil::write_parts_atomically(dir, &blob_file(name), &[data, &footer])
}

/// The blob's data, checked against its footer; `None` if there is no such blob.
fn read_blob(dir: &Path, name: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
    let path = dir.join(blob_file(name));
    let mut bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read", &path, e)),
    };
    let damaged = |why: &str| {
        StorageError::io(
            "check",
            &path,
            io::Error::new(io::ErrorKind::InvalidData, format!("damaged blob: {why}")),
        )
    };
    let Some(data_len) = bytes.len().checked_sub(BLOB_FOOTER_LEN) else {
        return Err(damaged("shorter than its footer"));
    };
    let footer = &bytes[data_len..];
    if footer[12..] != BLOB_MAGIC {
        return Err(damaged("no footer"));
    }
    let declared = u64::from_le_bytes(footer[..8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(footer[8..12].try_into().unwrap_or_default());
    if declared != data_len as u64 {
        return Err(damaged("length does not match"));
    }
    bytes.truncate(data_len);
    if crc32c::crc32c(&bytes) != crc {
        return Err(damaged("checksum does not match"));
    }
    Ok(Some(bytes))
}

impl fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStorage")
            .field("dir", &self.dir)
            .field("log", &(self.positions.first..self.positions.next()))
            .field("keys", &self.kv.len())
            .field("segments", &(self.first_segment..=self.active))
            .field("pending_records", &self.pending_records)
            .field("failed", &self.failure_state().is_some())
            .finish()
    }
}

/// Write zero bytes over `[from, to)` of `file`, in pieces of at most 1 MiB.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    const PIECE: u64 = 1 << 20;
    let mut at = from;
    if at >= to {
        return Ok(());
    }
    let zeros = vec![0u8; (to - at).min(PIECE) as usize];
    while at < to {
        let n = (to - at).min(PIECE) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
