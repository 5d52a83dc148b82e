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
    let tmp = dir.join(format!("{name}.tmp"));
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|e| StorageError::io("write", &tmp, e))?;
    let target = dir.join(name);
    fs::rename(&tmp, &target).map_err(|e| StorageError::io("rename into place", &target, e))?;
    fsync_dir(dir)
}

/// Remove a file if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool, StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
}
