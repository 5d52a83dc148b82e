//! # Durable storage: a segmented write-ahead log, snapshots and a bulk store
//!
//! [`DiskStorage`] is the on-disk [`synod_core::Storage`] of the real driver. One instance
//! serves one actor namespace and owns one directory. It behaves exactly like
//! [`synod_core::MemStorage`] (the property tests compare the two), with `sync` made real:
//! the trait methods change an in-memory view and buffer a record, and
//! [`DiskStorage::sync`] writes the whole batch with one `write` and one `fdatasync`.
//! `docs/storage.md` has the full layout; this header is the short version.
//!
//! ## Directory layout
//!
//! ```text
//! <dir>/META                          first live segment; 24 bytes, replaced atomically
//! <dir>/wal-00000000000000000007.log  WAL segments, numbered from 1, contiguous
//! <dir>/wal-00000000000000000008.log  the last one is the active segment
//! <dir>/snapshots/snap-<generation>.snap   the latest snapshot (data, then a footer)
//! ```
//!
//! ## Record framing
//!
//! Every record is `len: u32 LE | crc: u32 LE | type: u8 | payload[len]`, where `crc` is
//! CRC32C (Castagnoli) over the length bytes, the type byte and the payload. The length is
//! covered so that a damaged length cannot point at a frame that happens to check out, and
//! a run of zero bytes (what some file systems show after a crash) never parses, because
//! type 0 does not exist. A length above [`MAX_RECORD_BYTES`] plus a small header
//! allowance is corruption, so decoding never allocates more than that.
//!
//! Each segment starts with a *batch marker* (magic bytes and the batch number) and a
//! *segment header* that holds the whole key-value space and the log bounds at that point.
//! Each batch that [`DiskStorage::sync`] writes into a segment starts with a batch marker.
//! Log appends, truncations and compactions and key-value puts and deletes are records.
//!
//! ## Durability rules
//!
//! - A write is acknowledged when `sync` returns `Ok`: the batch was written and
//!   `fdatasync`ed, and, if a segment was created, the directory was fsynced so that the new
//!   file's name survives a crash (Pillai et al., "All File Systems Are Not Created Equal",
//!   OSDI 2014: a new file needs an fsync of its parent directory).
//! - Batches are written strictly one after the other: batch *k+1* is written only after
//!   batch *k*'s `fdatasync` returned. So on open, a bad record in the last segment with no
//!   batch marker after it is a torn write of the last, unacknowledged batch, and it and
//!   everything after it are truncated. A bad record with a valid batch marker anywhere after
//!   it belongs to a batch that was acknowledged: that is damage, and open fails with
//!   [`StorageError::CorruptLog`] naming the file and offset instead of dropping
//!   acknowledged data. A bad record in any segment but the last is always damage.
//!   Records of the torn batch before the bad one are kept, so recovery shows the synced
//!   state plus a prefix of the unacknowledged batch, exactly the outcomes
//!   `MemStorage::crash(keep)` allows. One case cannot be told apart from a torn write:
//!   damage to the final batch after it was synced. No single-copy log can distinguish the
//!   two; Alagappan et al., "Protocol-Aware Recovery for Consensus-Based Storage", FAST 2018,
//!   repair it from the other replicas, which is a protocol's job, not the disk's.
//! - With [`DiskOptions::preallocate_bytes`], a sync that runs past a segment's
//!   zero-filled end writes that many zero bytes after the batch, so the next batches'
//!   `fdatasync`s overwrite allocated blocks and have no new file size to make durable.
//!   On open, a run of zeros from a record boundary to the end of a segment is unused space,
//!   not a torn tail; in a segment that is not the last, lost records would still show as a
//!   mismatch with the next segment's header.
//! - A failed `write` or `fdatasync` poisons the store: that `sync` and every later one
//!   return the error and the driver stops the node. Retrying is wrong, because after a
//!   failed fsync Linux may have dropped the dirty pages and marked them clean, so a retry
//!   can "succeed" without the data (the PostgreSQL "fsyncgate" discussion, 2018; Rebello
//!   et al., "Can Applications Recover from fsync Failures?", USENIX ATC 2020).
//! - The key-value space lives in memory and in the WAL. Every segment header holds a full
//!   copy, so whole old segments can be deleted after a compaction without losing a key.
//!   The alternative, redb for the small key-value space, would cost a second fsync per
//!   batch (redb commits itself); the small space would also need its own crash model.
//! - Compaction deletes a segment only after the compaction record is durable: `sync` first
//!   writes `META` with the new first live segment (write a temporary file, fsync it,
//!   rename it over `META`, fsync the directory), then unlinks the old files. Files older
//!   than `META`'s segment that reappear after a crash are deleted on open.
//! - Snapshots follow the same temporary-file, fsync, rename, directory-fsync protocol
//!   ([`SnapshotStore`]); leftover temporary files are deleted on open.
//!
//! Bulk state (the MVCC store of the etcd API) goes to [`BulkStore`], a thin wrapper over
//! the redb embedded database, which has its own crash-safe commit.
//!
//! Everything read from a file is untrusted: every decode is bounded, and no damaged file
//! causes a panic. Errors name the file and, for records, the byte offset.
//!
//! The module is Unix-only: it reads and writes segments with positioned I/O
//! (`pread`/`pwrite` through `std::os::unix::fs::FileExt`) and relies on directory fsync.

mod bulk;
mod disk;
mod fsutil;
mod record;
mod snapshot;
mod wal;

#[cfg(test)]
mod tests;

pub use bulk::{
    BulkDurability, BulkRange, BulkRead, BulkStore, BulkTable, BulkTableMut, BulkWrite,
};
pub use disk::{DiskOptions, DiskStorage, SyncStats};
pub use snapshot::{SnapshotInfo, SnapshotReader, SnapshotStore, SnapshotWriter};
pub use wal::TailRepair;

use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// The largest log record or key-value pair (key plus value) a [`DiskStorage`] accepts:
/// 64 MiB, the same bound as the project codec (`synod_core::codec::MAX_DECODE_BYTES`).
/// A larger write poisons the store and the next [`DiskStorage::sync`] fails.
pub const MAX_RECORD_BYTES: usize = synod_core::codec::MAX_DECODE_BYTES;

/// Why durable storage could not be opened or used.
///
/// Every variant names the file; record damage also names the byte offset, so an operator
/// can look at the exact spot with `xxd -s`.
#[derive(Debug, Error)]
pub enum StorageError {
    /// An operating-system call on a file or directory failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "open", "read", "fsync".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error the OS returned.
        source: io::Error,
    },
    /// A WAL record is damaged where a torn write cannot explain it: in a segment that is
    /// not the last one, or before a batch marker of a later, acknowledged batch. Truncating
    /// here would silently lose acknowledged writes, so open refuses.
    #[error(
        "corrupt write-ahead log {} at offset {offset}: {reason} (not a torn tail; \
         refusing to truncate acknowledged data)",
        path.display()
    )]
    CorruptLog {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged record in that file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A WAL record checks out but its contents do not fit the log being replayed (for
    /// example an append with the wrong index, or a segment header that disagrees with the
    /// segments before it). This means a bug or files mixed from different stores.
    #[error("inconsistent write-ahead log {} at offset {offset}: {reason}", path.display())]
    InconsistentLog {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the record in that file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A segment that must exist is missing.
    #[error("write-ahead log in {} is missing segment file {}", dir.display(), file)]
    MissingSegment {
        /// The store's directory.
        dir: PathBuf,
        /// The file name that was expected.
        file: String,
    },
    /// The directory holds WAL segments but no `META` file, so it cannot be told which
    /// segments are live.
    #[error(
        "{} has {segments} write-ahead log segment(s) but no META file; \
         refusing to guess which are live",
        dir.display()
    )]
    MissingMetadata {
        /// The store's directory.
        dir: PathBuf,
        /// How many segment files were found.
        segments: usize,
    },
    /// The `META` file is damaged or of an unknown version.
    #[error("corrupt metadata file {}: {reason}", path.display())]
    CorruptMetadata {
        /// The `META` file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A snapshot file is damaged.
    #[error("corrupt snapshot {}: {reason}", path.display())]
    CorruptSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The redb bulk store returned an error.
    #[error("bulk store {}: {op}: {source}", path.display())]
    Bulk {
        /// What was being done, e.g. "commit".
        op: &'static str,
        /// The database file.
        path: PathBuf,
        /// The error redb returned.
        source: Box<redb::Error>,
    },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
