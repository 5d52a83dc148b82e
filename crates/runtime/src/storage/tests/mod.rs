//! Tests of durable storage. Each file covers one promise:
//!
//! - `disk`: the `Storage` behaviour, group commit and poisoning;
//! - `recovery`: torn tails are cut, damage elsewhere is refused with file and offset;
//! - `model`: a property test against `synod_core::MemStorage`, with crashes and reopens;
//! - `snapshot` and `bulk`: the snapshot store and the redb wrapper.

mod bulk;
mod disk;
mod model;
mod recovery;
mod snapshot;

use super::{DiskOptions, DiskStorage};
use std::fs;
use std::path::{Path, PathBuf};
use synod_core::{LogIndex, MemStorage, Storage};

/// Small segments so that a handful of records rolls over; no read cache, so reads go to
/// the files.
fn small_segments() -> DiskOptions {
    DiskOptions::default()
        .with_segment_size(256)
        .with_read_cache_bytes(0)
}

fn open(dir: &Path, options: &DiskOptions) -> DiskStorage {
    match DiskStorage::open(dir, options.clone()) {
        Ok(store) => store,
        Err(e) => panic!("open {}: {e}", dir.display()),
    }
}

/// Segment files in the directory, in order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
        })
        .collect();
    files.sort();
    files
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().expect("a segment file")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

fn cut_file(path: &Path, len: u64) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len).unwrap();
}

/// Overwrite bytes `from..to` of a file with zeros, keeping its length.
fn zero_range(path: &Path, from: u64, to: u64) {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&vec![0u8; (to - from) as usize], from)
        .unwrap();
}

/// Copy a store directory (not recursively into snapshots: tests that need them copy them).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// How two stores differ in what reads return, if they do.
fn compare(disk: &DiskStorage, mem: &MemStorage, keys: &[Vec<u8>]) -> Result<(), String> {
    if disk.log_bounds() != mem.log_bounds() {
        return Err(format!(
            "log bounds: disk {:?}, mem {:?}",
            disk.log_bounds(),
            mem.log_bounds()
        ));
    }
    let (first, next) = mem.log_bounds();
    for i in first.0.saturating_sub(2)..next.0 + 2 {
        let (d, m) = (disk.read(LogIndex(i)), mem.read(LogIndex(i)));
        if d != m {
            return Err(format!("log record {i}: disk {d:?}, mem {m:?}"));
        }
    }
    let disk_kv: Vec<_> = disk.entries().collect();
    let mem_kv: Vec<_> = mem.entries().collect();
    if disk_kv != mem_kv {
        return Err(format!(
            "key-value entries: disk {disk_kv:?}, mem {mem_kv:?}"
        ));
    }
    for key in keys {
        if disk.get(key) != mem.get(key) {
            return Err(format!("key {key:?}"));
        }
    }
    match disk.failure() {
        Some(e) => Err(format!("store failed: {e}")),
        None => Ok(()),
    }
}

/// Assert that two stores answer every read the same way.
fn assert_same(disk: &DiskStorage, mem: &MemStorage, keys: &[Vec<u8>]) {
    if let Err(difference) = compare(disk, mem, keys) {
        panic!("DiskStorage differs from MemStorage: {difference}");
    }
}
