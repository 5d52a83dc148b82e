//! Running one map or one reduce attempt of a typed job on a worker.

use super::api::{Combiner, MapOutput, Mapper, Record, ReduceOutput, Reducer};
use super::shuffle::{decode_value, CheckedSink, MapBuffer, Merger, SegmentInfo, SegmentReader};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A byte range of an input file. A line belongs to the split holding its first byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The input file.
    pub path: PathBuf,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Job counters: name → sum.
pub type Counters = BTreeMap<String, f64>;

/// What a finished map attempt reports.
#[derive(Clone, Debug, Default)]
pub struct MapResult {
    /// One segment per reduce partition.
    pub segments: Vec<SegmentInfo>,
    /// Input records read.
    pub records_in: u64,
    /// Pairs emitted by the mapper (before combining).
    pub emitted: u64,
    /// Spill files written.
    pub spills: usize,
}

fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "attempt cancelled")
}

/// How much of a split is read at once: lines are handed to the mapper straight from this
/// buffer (no copy per line), as the single-threaded baseline reads its input.
const READ_BLOCK: usize = 4 << 20;

/// Call `f` on every line of `split` (§3.1: the split's lines, whole). A line belongs to
/// the split that holds its first byte; the newline (and a `\r` before it) is not part of
/// the record.
pub fn for_each_line(
    split: &Split,
    cancel: &AtomicBool,
    mut f: impl FnMut(Record<'_>),
) -> io::Result<u64> {
    let mut file = File::open(&split.path)?;
    let name = split
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    // Start at start-1 and drop everything up to the first newline: a line that began in
    // the previous split belongs to it (and if start-1 is a newline, nothing is dropped
    // but that newline).
    let mut base = split.start.saturating_sub(1);
    file.seek(SeekFrom::Start(base))?;
    let mut skip_first = split.start > 0;
    let mut buf = vec![0u8; READ_BLOCK];
    let (mut at, mut filled, mut eof) = (0usize, 0usize, false);
    let mut records = 0u64;
    loop {
        let (line_end, next) = match memchr::memchr(b'\n', &buf[at..filled]) {
            Some(i) => (at + i, at + i + 1),
            None if eof => {
                if at == filled {
                    break;
                }
                (filled, filled)
            }
            None => {
                // Keep the partial line, and read more. Past the split's end only the rest
                // of its last line is wanted, so read little.
                buf.copy_within(at..filled, 0);
                base += at as u64;
                filled -= at;
                at = 0;
                if filled == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
                let read_to = base + filled as u64;
                let want = if read_to < split.end {
                    buf.len() - filled
                } else {
                    (buf.len() - filled).min(64 << 10)
                };
                let n = file.read(&mut buf[filled..filled + want])?;
                eof = n == 0;
                filled += n;
                continue;
            }
        };
        let offset = base + at as u64;
        let line = &buf[at..line_end];
        at = next;
        if skip_first {
            skip_first = false;
            continue;
        }
        if offset >= split.end {
            break;
        }
        let body = line.strip_suffix(b"\r").unwrap_or(line);
        f(Record {
            file: &name,
            offset,
            line: body,
        });
        records += 1;
        if records.is_multiple_of(65_536) && cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
    }
    Ok(records)
}

/// A job with its types erased, as a worker runs it.
pub trait TaskRunner: Send + Sync {
    /// Run a map attempt over `split`, writing `<dir>/<name>.out`.
    fn run_map(
        &self,
        split: &Split,
        partitions: u32,
        sort_mem: usize,
        dir: &Path,
        name: &str,
        cancel: &AtomicBool,
    ) -> io::Result<MapResult>;

    /// Run reduce task `partition`'s attempt over sorted segments, writing lines to `out`.
    fn run_reduce(
        &self,
        partition: u32,
        inputs: &[(PathBuf, SegmentInfo)],
        out: &mut dyn Write,
        cancel: &AtomicBool,
    ) -> io::Result<Counters>;
}

/// A typed job: a mapper, an optional combiner and a reducer over the same key and value
/// types.
pub struct Job<M: Mapper, R> {
    mapper: M,
    combiner: Option<Arc<dyn Combiner<M::Value>>>,
    reducer: R,
}

impl<M, R> Job<M, R>
where
    M: Mapper,
    R: Reducer<Key = M::Key, Value = M::Value>,
{
    /// A job without a combiner.
    pub fn new(mapper: M, reducer: R) -> Self {
        Job {
            mapper,
            combiner: None,
            reducer,
        }
    }

    /// Add a combiner.
    pub fn with_combiner(mut self, combiner: impl Combiner<M::Value>) -> Self {
        self.combiner = Some(Arc::new(combiner));
        self
    }
}

/// Yields the decoded values of one key from the merge.
struct Values<'a, V> {
    merger: &'a mut Merger,
    key: &'a [u8],
    pending: Option<V>,
    error: &'a mut Option<io::Error>,
}

impl<V: serde::de::DeserializeOwned> Iterator for Values<'_, V> {
    type Item = V;
    fn next(&mut self) -> Option<V> {
        if let Some(v) = self.pending.take() {
            return Some(v);
        }
        if self.error.is_some() || self.merger.peek_key() != Some(self.key) {
            return None;
        }
        let head = self.merger.pop()?;
        let v = decode_value(&head.value);
        if let Err(e) = self.merger.refill(head) {
            *self.error = Some(e);
            return None;
        }
        match v {
            Ok(v) => Some(v),
            Err(e) => {
                *self.error = Some(e);
                None
            }
        }
    }
}

impl<M, R> TaskRunner for Job<M, R>
where
    M: Mapper,
    R: Reducer<Key = M::Key, Value = M::Value>,
{
    fn run_map(
        &self,
        split: &Split,
        partitions: u32,
        sort_mem: usize,
        dir: &Path,
        name: &str,
        cancel: &AtomicBool,
    ) -> io::Result<MapResult> {
        let mut buffer = MapBuffer::new(partitions, self.combiner.clone(), sort_mem, dir, name);
        let mut sink = CheckedSink {
            buffer: &mut buffer,
            error: None,
        };
        let records_in = {
            let mut out = MapOutput::new(&mut sink);
            for_each_line(split, cancel, |record| self.mapper.map(record, &mut out))?
        };
        if let Some(e) = sink.error {
            return Err(e);
        }
        let emitted = buffer.emitted;
        let spills = buffer.spills();
        let segments = buffer.finish()?;
        Ok(MapResult {
            segments,
            records_in,
            emitted,
            spills,
        })
    }

    fn run_reduce(
        &self,
        _partition: u32,
        inputs: &[(PathBuf, SegmentInfo)],
        out: &mut dyn Write,
        cancel: &AtomicBool,
    ) -> io::Result<Counters> {
        let readers = inputs
            .iter()
            .map(|(p, s)| SegmentReader::open(p, *s))
            .collect::<io::Result<Vec<_>>>()?;
        let mut merger = Merger::new(readers)?;
        let mut counters = Counters::new();
        let mut error: Option<io::Error> = None;
        let mut key_buf = Vec::new();
        let mut groups = 0u64;
        while let Some(head) = merger.pop() {
            key_buf.clear();
            key_buf.extend_from_slice(&head.key);
            let key: M::Key = postcard::from_bytes(&key_buf).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("intermediate key: {e}"))
            })?;
            let first: M::Value = decode_value(&head.value)?;
            merger.refill(head)?;
            let mut output = ReduceOutput {
                writer: out,
                counters: &mut counters,
                error: None,
            };
            {
                let mut values = Values {
                    merger: &mut merger,
                    key: &key_buf,
                    pending: Some(first),
                    error: &mut error,
                };
                self.reducer.reduce(key, &mut values, &mut output);
                // Skip values the reducer did not read.
                for _ in values.by_ref() {}
            }
            if let Some(e) = output.error.take().or_else(|| error.take()) {
                return Err(e);
            }
            groups += 1;
            if groups.is_multiple_of(65_536) && cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
        }
        out.flush()?;
        Ok(counters)
    }
}

/// Read a whole input for a reference implementation: every line of every file in `dir`,
/// in name order.
pub fn read_lines(dir: &Path, mut f: impl FnMut(Record<'_>)) -> io::Result<()> {
    let never = AtomicBool::new(false);
    for path in list_inputs(dir)? {
        let len = std::fs::metadata(&path)?.len();
        for_each_line(
            &Split {
                path,
                start: 0,
                end: len,
            },
            &never,
            &mut f,
        )?;
    }
    Ok(())
}

/// The input files of a directory (not starting with `.` or `_`), in name order.
pub fn list_inputs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') || !entry.file_type()?.is_file() {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

/// Cut the files of `dir` into splits of about `split_size` bytes.
pub fn make_splits(dir: &Path, split_size: u64) -> io::Result<Vec<Split>> {
    let split_size = split_size.max(1);
    let mut splits = Vec::new();
    for path in list_inputs(dir)? {
        let len = std::fs::metadata(&path)?.len();
        let mut start = 0;
        while start < len {
            let end = start.saturating_add(split_size).min(len);
            splits.push(Split {
                path: path.clone(),
                start,
                end,
            });
            start = end;
        }
    }
    Ok(splits)
}

/// Read a whole file into memory (tests and small side files).
pub fn read_to_string(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    File::open(path)?.read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Cutting a file into splits anywhere hands every line to exactly one split, whole,
        /// with its offset (a line belongs to the split holding its first byte).
        #[test]
        fn splits_hand_out_every_line_once(
            lines in proptest::collection::vec("[a-c \\r]{0,12}", 0..40),
            trailing_newline in any::<bool>(),
            split_size in 1u64..50,
        ) {
            let dir = std::env::temp_dir().join(format!(
                "synod-mr-lines-{}-{}",
                std::process::id(),
                split_size
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("input");
            let mut text = lines.join("\n");
            if trailing_newline && !text.is_empty() {
                text.push('\n');
            }
            std::fs::write(&path, &text).unwrap();
            let mut want = Vec::new();
            let mut at = 0u64;
            for l in text.split_inclusive('\n') {
                let body = l.strip_suffix('\n').unwrap_or(l);
                let body = body.strip_suffix('\r').unwrap_or(body);
                want.push((at, body.as_bytes().to_vec()));
                at += l.len() as u64;
            }
            let mut got = Vec::new();
            let never = AtomicBool::new(false);
            for split in make_splits(&dir, split_size).unwrap() {
                for_each_line(&split, &never, |r| got.push((r.offset, r.line.to_vec()))).unwrap();
            }
            let _ = std::fs::remove_dir_all(&dir);
            prop_assert_eq!(got, want);
        }
    }
}
