//! The job API: [`Mapper`], [`Reducer`] and an optional [`Combiner`], with typed keys and
//! values (serde).
//!
//! Keys travel between map and reduce in their postcard encoding, and the shuffle sorts and
//! groups by the encoded bytes, so two keys are "equal" when their encodings are. A mapper
//! may emit a borrowed form of its key type (`&str` for `String`) as long as it encodes the
//! same, which saves an allocation per record.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

/// One input record: a line of an input file.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The input file's name (without directory): the document, for an inverted index.
    pub file: &'a str,
    /// Byte offset of the line in the file.
    pub offset: u64,
    /// The line, without its newline.
    pub line: &'a [u8],
}

/// The map function (§2.1): input record → intermediate (key, value) pairs.
pub trait Mapper: Send + Sync + 'static {
    /// Intermediate key.
    type Key: Serialize + DeserializeOwned + Send + 'static;
    /// Intermediate value.
    type Value: Serialize + DeserializeOwned + Send + 'static;
    /// Map one record, emitting pairs into `out`.
    fn map(&self, record: Record<'_>, out: &mut MapOutput<'_, Self::Value>);
}

/// The optional combiner (§4.3): partial merging on the map side. It folds two values of
/// the same key; it must be associative and commutative, and the reducer must accept its
/// result in place of the values it replaced.
pub trait Combiner<V>: Send + Sync + 'static {
    /// Fold `next` into `acc`.
    fn combine(&self, acc: &mut V, next: V);
}

/// The reduce function (§2.1): a key and all its values → output lines.
pub trait Reducer: Send + Sync + 'static {
    /// Intermediate key.
    type Key: Serialize + DeserializeOwned + Send + 'static;
    /// Intermediate value.
    type Value: Serialize + DeserializeOwned + Send + 'static;
    /// Reduce one key. `values` yields every value of `key`, map task by map task.
    fn reduce(
        &self,
        key: Self::Key,
        values: &mut dyn Iterator<Item = Self::Value>,
        out: &mut ReduceOutput<'_>,
    );
}

/// The sink a mapper emits into. See [`MapOutput::emit`].
pub struct MapOutput<'a, V> {
    pub(crate) sink: &'a mut dyn MapSink<V>,
    pub(crate) key_buf: Vec<u8>,
}

pub(crate) trait MapSink<V> {
    /// Take a pair whose key is encoded.
    fn push(&mut self, key: &[u8], value: V);
    /// Take a pair whose key is a string, not yet encoded: a sink may hold it in its own
    /// form and encode each distinct key once.
    fn push_str(&mut self, key: &str, value: V) {
        let mut encoded = Vec::with_capacity(key.len() + 10);
        super::shuffle::encode_str_key(&mut encoded, key);
        self.push(&encoded, value);
    }
}

impl<'a, V> MapOutput<'a, V> {
    pub(crate) fn new(sink: &'a mut dyn MapSink<V>) -> Self {
        MapOutput {
            sink,
            key_buf: Vec::with_capacity(64),
        }
    }

    /// Emit `(key, value)`. `key` must encode exactly like the mapper's `Key` type (for
    /// example `&str` for `String`, or `&(u32, &str)` for `(u32, String)`).
    pub fn emit<Q: Serialize + ?Sized>(&mut self, key: &Q, value: V) {
        self.key_buf.clear();
        let buf = std::mem::take(&mut self.key_buf);
        self.key_buf = match postcard::to_extend(key, buf) {
            Ok(b) => b,
            Err(e) => panic!("an intermediate key failed to encode ({e}); this is a bug"),
        };
        self.sink.push(&self.key_buf, value);
    }

    /// Emit `(key, value)` for a key type that encodes as a string (`String`): the same
    /// bytes as [`MapOutput::emit`] (postcard's varint length, then the UTF-8 bytes),
    /// written directly instead of through serde, for mappers that emit a key per word.
    pub fn emit_str(&mut self, key: &str, value: V) {
        self.sink.push_str(key, value);
    }
}

/// Where a reducer writes: the attempt's temporary output file, and job counters.
pub struct ReduceOutput<'a> {
    pub(crate) writer: &'a mut dyn Write,
    pub(crate) counters: &'a mut BTreeMap<String, f64>,
    pub(crate) error: Option<std::io::Error>,
}

impl ReduceOutput<'_> {
    /// Write formatted text, e.g. with `write!(out, "{key}\t{n}\n")`. The first I/O error
    /// is kept and fails the task.
    pub fn write_fmt(&mut self, args: std::fmt::Arguments<'_>) {
        if self.error.is_none() {
            if let Err(e) = self.writer.write_fmt(args) {
                self.error = Some(e);
            }
        }
    }

    /// Write raw bytes.
    pub fn write_all(&mut self, bytes: &[u8]) {
        if self.error.is_none() {
            if let Err(e) = self.writer.write_all(bytes) {
                self.error = Some(e);
            }
        }
    }

    /// Add `delta` to the job counter `name` (summed over the committed reduce attempts).
    pub fn count(&mut self, name: &str, delta: f64) {
        match self.counters.get_mut(name) {
            Some(v) => *v += delta,
            None => {
                self.counters.insert(name.to_string(), delta);
            }
        }
    }
}
