//! Snapshots: opaque, possibly large byte streams written atomically.
//!
//! File: `snap-<generation>.snap` = the data, then a 44-byte footer:
//! magic `SYNDSNAP`, version `u32`, covered log index `u64`, caller tag `u64`, data size
//! `u64`, CRC32C of the data `u32`, CRC32C of the footer's first 40 bytes `u32`. The footer
//! goes last so the data can be streamed without knowing its size or checksum up front.
//!
//! Writing: `snap-<generation>.snap.tmp`, fsync, rename to the final name, fsync the
//! directory (Pillai et al., OSDI 2014), then delete older generations. The newest
//! generation is the latest snapshot. A crash leaves either the old snapshot, or the new
//! one, or both (older ones are deleted on the next open); a leftover `.tmp` file is an
//! abandoned write and is deleted on open.

use super::fsutil::{ensure_dir, fsync_dir, remove_if_exists};
use super::StorageError;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use synod_core::LogIndex;

const FOOTER_MAGIC: [u8; 8] = *b"SYNDSNAP";
const FOOTER_VERSION: u32 = 1;
const FOOTER_LEN: usize = 44;
const BUFFER: usize = 1 << 20;

/// What a snapshot covers and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The last log index the snapshot includes, as the caller declared it.
    pub index: LogIndex,
    /// A caller-chosen number stored with the snapshot, e.g. the Raft term of `index`.
    pub tag: u64,
    /// Bytes of snapshot data (the file is [`SnapshotInfo::size`] plus a 44-byte footer).
    pub size: u64,
    /// CRC32C of the data.
    pub crc32c: u32,
    /// Orders snapshots: the highest generation is the latest.
    pub generation: u64,
    /// The snapshot file. Its first `size` bytes are the data.
    pub path: PathBuf,
}

/// The snapshots in one directory. Safe to share between threads: a snapshot can be
/// written on a background thread while the actor keeps running.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    next_generation: AtomicU64,
}

impl SnapshotStore {
    /// Open (creating if needed) the snapshot directory `dir`. Deletes leftover temporary
    /// files from writes a crash interrupted, and snapshots older than the latest one.
    pub fn open(dir: impl AsRef<Path>) -> Result<SnapshotStore, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        ensure_dir(&dir)?;
        let mut newest = 0;
        for (name, path) in list(&dir)? {
            if name.ends_with(".tmp") {
                tracing::info!(file = %path.display(), "removing an abandoned snapshot write");
                remove_if_exists(&path)?;
            } else if let Some(generation) = parse_name(&name) {
                newest = newest.max(generation);
            }
        }
        let store = SnapshotStore {
            dir,
            next_generation: AtomicU64::new(newest + 1),
        };
        if newest > 0 {
            // Only once the newest is known to be whole is it safe to drop the older ones.
            store.latest()?;
            store.remove_older_than(newest);
        }
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Start writing a snapshot that covers the log up to and including `index`, with a
    /// caller-chosen `tag`. Write the data through the returned writer, then call
    /// [`SnapshotWriter::finish`]; dropping the writer instead abandons the snapshot.
    pub fn create(&self, index: LogIndex, tag: u64) -> Result<SnapshotWriter, StorageError> {
        let generation = self.next_generation.fetch_add(1, Ordering::SeqCst);
        let target = self.dir.join(file_name(generation));
        let tmp = self.dir.join(format!("{}.tmp", file_name(generation)));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| StorageError::io("create", &tmp, e))?;
        Ok(SnapshotWriter {
            out: Some(BufWriter::with_capacity(BUFFER, file)),
            tmp,
            target,
            dir: self.dir.clone(),
            generation,
            index,
            tag,
            size: 0,
            crc: 0,
            renamed: false,
        })
    }

    /// The latest snapshot's metadata, or `None` if there is none. A damaged footer on the
    /// latest snapshot is an error: falling back to an older one could pair it with a log
    /// that was already compacted past it.
    pub fn latest(&self) -> Result<Option<SnapshotInfo>, StorageError> {
        let newest = list(&self.dir)?
            .into_iter()
            .filter_map(|(name, path)| parse_name(&name).map(|g| (g, path)))
            .max_by_key(|(g, _)| *g);
        match newest {
            None => Ok(None),
            Some((generation, path)) => read_footer(&path, generation).map(Some),
        }
    }

    /// A reader over the latest snapshot's data, or `None` if there is none. The reader
    /// checks the CRC as it goes and fails at the end if the data does not match.
    pub fn open_latest(&self) -> Result<Option<SnapshotReader>, StorageError> {
        let Some(info) = self.latest()? else {
            return Ok(None);
        };
        let file = File::open(&info.path).map_err(|e| StorageError::io("open", &info.path, e))?;
        Ok(Some(SnapshotReader {
            remaining: info.size,
            inner: BufReader::with_capacity(BUFFER, file),
            crc: 0,
            info,
        }))
    }

    /// Delete snapshots older than `generation`. Failure is only logged: the new snapshot
    /// is durable either way, and the next open retries.
    fn remove_older_than(&self, generation: u64) {
        remove_older(&self.dir, generation);
    }
}

fn remove_older(dir: &Path, generation: u64) {
    let Ok(entries) = list(dir) else {
        return;
    };
    for (name, path) in entries {
        if parse_name(&name).is_some_and(|g| g < generation) {
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), %error, "could not remove an old snapshot");
            }
        }
    }
}

fn file_name(generation: u64) -> String {
    format!("snap-{generation:020}.snap")
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))? {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push((name.to_string(), entry.path()));
        }
    }
    Ok(out)
}

fn encode_footer(index: LogIndex, tag: u64, size: u64, crc: u32) -> [u8; FOOTER_LEN] {
    let mut out = [0u8; FOOTER_LEN];
    out[0..8].copy_from_slice(&FOOTER_MAGIC);
    out[8..12].copy_from_slice(&FOOTER_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&index.0.to_le_bytes());
    out[20..28].copy_from_slice(&tag.to_le_bytes());
    out[28..36].copy_from_slice(&size.to_le_bytes());
    out[36..40].copy_from_slice(&crc.to_le_bytes());
    let footer_crc = crc32c::crc32c(&out[0..40]);
    out[40..44].copy_from_slice(&footer_crc.to_le_bytes());
    out
}

fn read_footer(path: &Path, generation: u64) -> Result<SnapshotInfo, StorageError> {
    let corrupt = |reason: String| StorageError::CorruptSnapshot {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| StorageError::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    if len < FOOTER_LEN as u64 {
        return Err(corrupt(format!(
            "{len} bytes, shorter than the {FOOTER_LEN}-byte footer"
        )));
    }
    let mut footer = [0u8; FOOTER_LEN];
    file.read_exact_at(&mut footer, len - FOOTER_LEN as u64)
        .map_err(|e| StorageError::io("read", path, e))?;
    if footer[0..8] != FOOTER_MAGIC {
        return Err(corrupt("footer has bad magic bytes".into()));
    }
    let u32_at = |at: usize| {
        u32::from_le_bytes([footer[at], footer[at + 1], footer[at + 2], footer[at + 3]])
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&footer[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let stored = u32_at(40);
    let computed = crc32c::crc32c(&footer[0..40]);
    if stored != computed {
        return Err(corrupt(format!(
            "footer checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    let version = u32_at(8);
    if version != FOOTER_VERSION {
        return Err(corrupt(format!(
            "format version {version}, this build reads {FOOTER_VERSION}"
        )));
    }
    let size = u64_at(28);
    if size != len - FOOTER_LEN as u64 {
        return Err(corrupt(format!(
            "footer says {size} bytes of data but the file holds {}",
            len - FOOTER_LEN as u64
        )));
    }
    Ok(SnapshotInfo {
        index: LogIndex(u64_at(12)),
        tag: u64_at(20),
        size,
        crc32c: u32_at(36),
        generation,
        path: path.to_path_buf(),
    })
}

/// Streams a new snapshot to a temporary file. [`SnapshotWriter::finish`] makes it the
/// latest snapshot; dropping the writer without finishing deletes the temporary file.
#[derive(Debug)]
pub struct SnapshotWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    generation: u64,
    index: LogIndex,
    tag: u64,
    size: u64,
    crc: u32,
    renamed: bool,
}

impl SnapshotWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.size
    }

    /// Append the footer, fsync the file, rename it into place, fsync the directory, then
    /// delete older snapshots. When this returns `Ok`, the snapshot survives a crash.
    pub fn finish(mut self) -> Result<SnapshotInfo, StorageError> {
        let Some(mut out) = self.out.take() else {
            return Err(StorageError::io(
                "finish",
                &self.tmp,
                io::Error::other("snapshot writer already finished"),
            ));
        };
        let footer = encode_footer(self.index, self.tag, self.size, self.crc);
        out.write_all(&footer)
            .map_err(|e| StorageError::io("write", &self.tmp, e))?;
        let file = out
            .into_inner()
            .map_err(|e| StorageError::io("write", &self.tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| StorageError::io("fsync", &self.tmp, e))?;
        drop(file);
        fs::rename(&self.tmp, &self.target)
            .map_err(|e| StorageError::io("rename into place", &self.target, e))?;
        self.renamed = true;
        fsync_dir(&self.dir)?;
        remove_older(&self.dir, self.generation);
        Ok(SnapshotInfo {
            index: self.index,
            tag: self.tag,
            size: self.size,
            crc32c: self.crc,
            generation: self.generation,
            path: self.target.clone(),
        })
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("snapshot writer already finished"))?;
        let n = out.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.renamed {
            self.out = None;
            if let Err(error) = fs::remove_file(&self.tmp) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(
                        file = %self.tmp.display(),
                        %error,
                        "could not remove an abandoned snapshot"
                    );
                }
            }
        }
    }
}

/// Reads a snapshot's data (not the footer), checking its CRC32C. The read that reaches
/// the end fails with [`io::ErrorKind::InvalidData`] if the data does not match.
#[derive(Debug)]
pub struct SnapshotReader {
    info: SnapshotInfo,
    inner: BufReader<File>,
    remaining: u64,
    crc: u32,
}

impl SnapshotReader {
    /// The snapshot's metadata.
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "snapshot {} ended {} bytes early",
                    self.info.path.display(),
                    self.remaining
                ),
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.remaining -= n as u64;
        if self.remaining == 0 && self.crc != self.info.crc32c {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} data checksum mismatch (footer {:#010x}, data {:#010x})",
                    self.info.path.display(),
                    self.info.crc32c,
                    self.crc
                ),
            ));
        }
        Ok(n)
    }
}
