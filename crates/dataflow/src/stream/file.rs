//! A file source, replayable by byte offset.
//!
//! `P` partitions split one file into `P` byte ranges, as MapReduce and Hadoop split their
//! inputs: partition `p` reads the lines whose first byte lies in
//! `[p·len/P, (p+1)·len/P)`. A line that crosses a boundary belongs to the partition where
//! it starts, so every line is read by exactly one partition. The source's offset is the
//! byte position of the next line to read; a checkpoint stores it and recovery seeks the
//! file back to it, so the file plays the part of a partition of a durable log.
//!
//! The built-in format is one record a line, `<event time in ms>,<key>` (a comma or
//! whitespace between them); blank lines are skipped. A malformed line fails the job with
//! the byte offset and the line, since replaying the file would fail the same way.

use super::exec::ExecError;
use super::pipeline::{Event, Job, Pipeline, Source, SourcePoll};
use super::time::EventTime;
use super::window::{batch_windows, Count, Window, WindowAssigner};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Parses one line (without its newline) into a record, or says what is wrong with it.
pub type ParseFn<T> = Arc<dyn Fn(&str) -> Result<Event<T>, String> + Send + Sync>;

/// One partition (byte range) of a file of lines.
pub struct FileSource<T> {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    start: u64,
    end: u64,
    pos: u64,
    parse: ParseFn<T>,
    error: Option<String>,
    line: Vec<u8>,
}

impl<T> FileSource<T> {
    /// Partition `partition` of `partitions` of the file at `path`.
    pub fn new(path: &Path, partition: usize, partitions: usize, parse: ParseFn<T>) -> Self {
        let mut s = FileSource {
            path: path.to_path_buf(),
            reader: None,
            start: 0,
            end: 0,
            pos: 0,
            parse,
            error: None,
            line: Vec::new(),
        };
        if let Err(e) = s.open(partition as u64, partitions.max(1) as u64) {
            s.error = Some(format!("{}: {e}", s.path.display()));
        }
        s
    }

    fn open(&mut self, partition: u64, partitions: u64) -> std::io::Result<()> {
        let file = File::open(&self.path)?;
        let len = file.metadata()?.len();
        self.start = (u128::from(len) * u128::from(partition) / u128::from(partitions)) as u64;
        self.end = (u128::from(len) * u128::from(partition + 1) / u128::from(partitions)) as u64;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        self.pos = self.start;
        if self.start > 0 {
            // The line that contains byte `start - 1` belongs to the previous partition
            // (unless `start - 1` is its newline); skip to just after it.
            reader.seek(SeekFrom::Start(self.start - 1))?;
            let mut skipped = Vec::new();
            let n = reader.read_until(b'\n', &mut skipped)?;
            self.pos = self.start - 1 + n as u64;
        }
        self.reader = Some(reader);
        Ok(())
    }
}

impl<T: Send> Source<T> for FileSource<T> {
    fn poll(&mut self, out: &mut Vec<Event<T>>, max: usize) -> SourcePoll {
        if self.error.is_some() {
            return SourcePoll::Failed;
        }
        let Some(reader) = self.reader.as_mut() else {
            return SourcePoll::Failed;
        };
        for _ in 0..max {
            if self.pos >= self.end {
                return SourcePoll::Finished;
            }
            self.line.clear();
            let n = match reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return SourcePoll::Finished,
                Ok(n) => n,
                Err(e) => {
                    self.error = Some(format!("{} at byte {}: {e}", self.path.display(), self.pos));
                    return SourcePoll::Failed;
                }
            };
            let at = self.pos;
            self.pos += n as u64;
            let text = match std::str::from_utf8(&self.line) {
                Ok(t) => t.trim_end_matches(['\n', '\r']),
                Err(_) => {
                    self.error = Some(format!(
                        "{} at byte {at}: the line is not UTF-8",
                        self.path.display()
                    ));
                    return SourcePoll::Failed;
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            match (self.parse)(text) {
                Ok(e) => out.push(e),
                Err(why) => {
                    self.error = Some(format!("{} at byte {at}: {why}", self.path.display()));
                    return SourcePoll::Failed;
                }
            }
        }
        SourcePoll::Ready
    }

    fn offset(&self) -> u64 {
        self.pos
    }

    fn seek(&mut self, offset: u64) -> Result<(), String> {
        if offset < self.start || offset > self.end.max(self.pos) + (1 << 20) {
            return Err(format!(
                "offset {offset} is outside this partition of {} (bytes {}..{})",
                self.path.display(),
                self.start,
                self.end
            ));
        }
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| self.error.clone().unwrap_or_default())?;
        reader
            .seek(SeekFrom::Start(offset))
            .map_err(|e| format!("{}: seeking to {offset}: {e}", self.path.display()))?;
        self.pos = offset;
        Ok(())
    }

    fn error(&self) -> Option<String> {
        self.error.clone()
    }
}

/// Parse `<event time in ms>,<key>` (or whitespace instead of the comma).
pub fn parse_keyed_line(line: &str) -> Result<Event<String>, String> {
    let line = line.trim();
    let (ts, key) = line
        .split_once([',', ' ', '\t'])
        .ok_or_else(|| format!("expected `<event time in ms>,<key>`, got {line:?}"))?;
    let ts: u64 = ts
        .trim()
        .parse()
        .map_err(|_| format!("`{ts}` is not an event time in ms (in {line:?})"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("no key in {line:?}"));
    }
    Ok(Event {
        ts: EventTime(ts),
        value: key.to_string(),
    })
}

/// Windowed counts per key over a file of `<event time in ms>,<key>` lines, read as
/// `partitions` byte ranges: `key_by(key) → tumbling(window_ms) → count`.
pub fn file_counts(
    path: &Path,
    partitions: usize,
    parallelism: usize,
    bound_ms: u64,
    window_ms: u64,
) -> Job<String, String, Count<String>> {
    let path = path.to_path_buf();
    let parse: ParseFn<String> = Arc::new(parse_keyed_line);
    Pipeline::from_source("file-counts", partitions, move |p, n| {
        FileSource::new(&path, p, n, parse.clone())
    })
    .watermarks(bound_ms, Duration::from_millis(500))
    .key_by(|k: &String| k.clone())
    .window(WindowAssigner::Tumbling { size_ms: window_ms })
    .parallelism(parallelism)
    .count()
}

/// The batch answer of [`file_counts`] over the records not in `late` (the committed side
/// output).
pub fn file_counts_reference(
    path: &Path,
    window_ms: u64,
    late: &BTreeMap<(String, EventTime), usize>,
) -> Result<BTreeMap<(String, Window), u64>, ExecError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExecError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut late = late.clone();
    let mut records = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let e = parse_keyed_line(line)
            .map_err(|why| ExecError::Input(format!("{}: {why}", path.display())))?;
        match late.get_mut(&(e.value.clone(), e.ts)) {
            Some(n) if *n > 0 => *n -= 1,
            _ => records.push((e.value, e.ts, String::new())),
        }
    }
    Ok(batch_windows(
        WindowAssigner::Tumbling { size_ms: window_ms },
        &Count::<String>::new(),
        records,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("input.txt");
        std::fs::write(&p, text).expect("write input");
        p
    }

    fn read_all(src: &mut FileSource<String>) -> Vec<Event<String>> {
        let mut out = Vec::new();
        loop {
            match src.poll(&mut out, 3) {
                SourcePoll::Ready => {}
                SourcePoll::Finished => return out,
                other => panic!("{other:?}: {:?}", src.error()),
            }
        }
    }

    #[test]
    fn byte_range_partitions_read_every_line_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text: String = (0..500)
            .map(|i| format!("{},key-{}\n", i * 7, "x".repeat(i % 13)))
            .collect();
        let path = write(dir.path(), &text);
        let parse: ParseFn<String> = Arc::new(parse_keyed_line);
        let all: Vec<_> = text
            .lines()
            .map(|l| parse_keyed_line(l).expect("ok"))
            .collect();
        for parts in [1, 2, 3, 7, 64] {
            let mut got = Vec::new();
            for p in 0..parts {
                got.extend(read_all(&mut FileSource::new(
                    &path,
                    p,
                    parts,
                    parse.clone(),
                )));
            }
            assert_eq!(got, all, "{parts} partitions");
        }
    }

    #[test]
    fn a_source_resumes_from_a_byte_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text: String = (0..100).map(|i| format!("{i} k{}\n", i % 5)).collect();
        let path = write(dir.path(), &text);
        let parse: ParseFn<String> = Arc::new(parse_keyed_line);
        let mut first = FileSource::new(&path, 1, 2, parse.clone());
        let mut head = Vec::new();
        assert_eq!(first.poll(&mut head, 10), SourcePoll::Ready);
        let offset = first.offset();
        let rest = read_all(&mut first);
        let mut again = FileSource::new(&path, 1, 2, parse.clone());
        again.seek(offset).expect("seek");
        assert_eq!(read_all(&mut again), rest);
        assert!(again.seek(0).is_err(), "partition 1 does not start at 0");
    }

    /// Injected task failures restart the job from checkpoints that hold byte offsets; the
    /// committed counts still equal a batch count over the file, each window once.
    #[test]
    fn file_counts_restart_from_byte_offsets_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut x = 99u64;
        let text: String = (0..150_000u64)
            .map(|i| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                let ts = (i / 20).saturating_sub((x >> 40) % 30);
                format!("{ts},k{}\n", (x >> 20) % 300)
            })
            .collect();
        let path = write(dir.path(), &text);
        let state = dir.path().join("state");
        let mut cfg = super::super::exec::ExecConfig::new(&state);
        cfg.checkpoint_interval = Some(Duration::from_millis(20));
        cfg.batch_size = 64;
        cfg.crash_plan = vec![30_000, 20_000, 50_000];
        let report =
            super::super::exec::run(&file_counts(&path, 3, 2, 30, 100), &cfg).expect("run");
        assert_eq!(report.restarts, 3);
        assert!(report.events > 150_000, "records were replayed");
        let late = super::super::jobs::committed_late::<String, String>(&state).expect("late");
        let expected = file_counts_reference(&path, 100, &late).expect("reference");
        let verdict = super::super::jobs::verify(&state, &expected).expect("verify");
        assert!(verdict.exact(), "{verdict:?}");
        assert_eq!(verdict.committed_firings, expected.len());
    }

    /// A malformed line fails the job at once (no restarts): replaying cannot fix it.
    #[test]
    fn a_malformed_file_fails_the_job_without_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "1,a\n2,b\n3\n");
        let cfg = super::super::exec::ExecConfig::new(dir.path().join("state"));
        let err = super::super::exec::run(&file_counts(&path, 1, 1, 0, 100), &cfg)
            .expect_err("malformed input");
        assert!(matches!(err, ExecError::Input(_)), "{err}");
        assert!(err.to_string().contains("at byte 8"), "{err}");
    }

    #[test]
    fn malformed_lines_fail_with_their_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "1,a\n\nsoon,b\n");
        let mut src = FileSource::new(&path, 0, 1, Arc::new(parse_keyed_line));
        let mut out = Vec::new();
        assert_eq!(src.poll(&mut out, 10), SourcePoll::Failed);
        let why = src.error().expect("error");
        assert!(why.contains("at byte 5") && why.contains("soon"), "{why}");
        let mut missing =
            FileSource::new(&dir.path().join("nope"), 0, 1, Arc::new(parse_keyed_line));
        assert_eq!(missing.poll(&mut out, 10), SourcePoll::Failed);
        assert!(missing.error().is_some());
    }
}
