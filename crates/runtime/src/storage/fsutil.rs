//! File-system steps shared by the WAL, the metadata file and snapshots.

use super::StorageError;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Make a directory's entries (created, renamed, removed files) durable. A new or renamed
/// file is not durable until its parent directory is fsynced (Pillai et al., OSDI 2014).
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Create `dir` (and its parents) if it does not exist, making the new entry durable.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), StorageError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsync_dir(parent)?;
    }
    fsync_dir(dir)
}

/// Replace `dir/name` with `bytes` so that a crash leaves either the old or the new
/// contents: write `name.tmp`, fsync it, rename it over `name`, fsync the directory.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    write_parts_atomically(dir, name, &[bytes])
}

/// Bytes written between two writeback requests in [`write_parts_atomically`].
const WRITEBACK_CHUNK: usize = 8 << 20;

/// [`write_atomically`] for a file made of several parts (no copy into one buffer), written
/// in chunks of [`WRITEBACK_CHUNK`] whose writeback starts as soon as each is written and
/// is waited for one chunk later. A snapshot blob is hundreds of MB: written whole and then
/// fsynced, it leaves that much dirty data for one fsync, which saturates the disk for
/// about a second and stalls every WAL fdatasync queued behind it (measured: writes per
/// second collapse during snapshot writes, docs/etcdperf.md session 8). With at most two
/// chunks in flight the WAL's syncs interleave with the blob's, as RocksDB's
/// `bytes_per_sync` does for its SST files.
pub(crate) fn write_parts_atomically(
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        let mut written = 0u64;
        let mut started = 0u64; // writeback requested up to here
        for part in parts {
            for chunk in part.chunks(WRITEBACK_CHUNK) {
                file.write_all(chunk)?;
                written += chunk.len() as u64;
                if written - started >= WRITEBACK_CHUNK as u64 {
                    start_writeback(&file, started, written - started);
                    started = written;
                }
            }
        }
        file.sync_all()
    };
    write().map_err(|e| StorageError::io("write", &tmp, e))?;
    let target = dir.join(name);
    fs::rename(&tmp, &target).map_err(|e| StorageError::io("rename into place", &target, e))?;
    fsync_dir(dir)
}

/// Wait for the writeback of what came before `offset`, then start it for `offset..+len`.
/// Only a hint for pacing: durability still comes from the fsync at the end, so an error
/// here is ignored (the fsync reports a real one).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: plain syscalls on a file descriptor we own; no memory is passed.
    unsafe {
        if offset > 0 {
            libc::sync_file_range(
                fd,
                0,
                offset as libc::off64_t,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
        }
        libc::sync_file_range(
            fd,
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Remove a file if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool, StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
}
