//! The shuffle: map-side partitioned, sorted, combined and spilled output; checksummed
//! segment files; the k-way merge the reducer runs; and the framing of the fetch protocol.
//!
//! A map attempt's output is one data file holding R segments, one per reduce partition,
//! and an index file naming each segment's offset, length, record count and CRC-32C
//! (§3.1 step 4: "buffered pairs are written to local disk, partitioned into R regions").
//! A segment is a sequence of records `varint(key len) key varint(value len) value`, sorted
//! by key bytes. When the in-memory buffer passes its budget it is sorted (and combined)
//! into a spill file; at the end the spills are merged, so the map side needs memory for
//! one buffer whatever the input size. The reducer merges the M fetched segments the same
//! way, so it never holds a partition in memory either.

// Driver code: real files, and hashing of bytes with a fixed hasher.
#![allow(clippy::disallowed_types)]

use super::api::{Combiner, MapSink};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::hash::Hasher;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// FxHash (rustc's hasher): fast, fixed, fine for keys we choose ourselves.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(FX_SEED);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(FX_SEED);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(FX_SEED);
    }
    fn write_usize(&mut self, i: usize) {
        self.0 = (self.0.rotate_left(5) ^ i as u64).wrapping_mul(FX_SEED);
    }
    fn finish(&self) -> u64 {
        // Fx alone leaves the low bits (the table slot) depending on the last few bytes
        // only, and words that share a suffix then crowd the same slots; fold the well
        // mixed high bits down (the finalizer of MurmurHash3's fmix64, first half).
        let h = self.0 ^ (self.0 >> 33);
        h.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ (h >> 29)
    }
}

/// Longest key stored inside a table entry rather than in the table's arena: most words
/// and every integer key fit.
const INLINE_KEY: usize = 15;

/// Marks a key kept in the arena (an inline key's length byte is at most `INLINE_KEY`).
const IN_ARENA: u8 = 0xff;

/// An encoded key as two words: up to 15 bytes, zero-padded, with the length in the last
/// byte; or (a longer key) [`IN_ARENA`] and the length in the second word and the key's
/// offset in the arena in the first. Equal short keys have equal words, so a probe
/// compares two integers instead of calling `memcmp`, and an entry of a word count's table
/// takes 24 bytes, no more than a pointer to a key would.
#[derive(Clone, Copy, PartialEq, Eq)]
struct KeyWords([u64; 2]);

impl KeyWords {
    /// The words of a short key, or `None` for a key longer than [`INLINE_KEY`].
    #[inline(always)]
    fn inline(key: &[u8]) -> Option<Self> {
        if key.len() > INLINE_KEY {
            return None;
        }
        let mut w = load_words(key);
        w[1] |= (key.len() as u64) << 56;
        Some(KeyWords(w))
    }

    /// The words of the postcard encoding of the string `key` (a one-byte length, then
    /// the bytes), built without encoding it first; `None` if it is too long.
    #[inline(always)]
    fn inline_str(key: &str) -> Option<Self> {
        let b = key.as_bytes();
        if b.len() >= INLINE_KEY {
            return None;
        }
        let a = load_words(b);
        // Shift the bytes up by one to make room for the length byte.
        let len = b.len() as u64;
        Some(KeyWords([
            (a[0] << 8) | len,
            (a[1] << 8) | (a[0] >> 56) | ((len + 1) << 56),
        ]))
    }

    /// The order of short keys' bytes: big-endian words compare like the bytes, and of
    /// two keys equal up to the zero padding the shorter comes first.
    fn order(&self) -> (u64, u64, u8) {
        (
            self.0[0].swap_bytes(),
            (self.0[1] & 0x00ff_ffff_ffff_ffff).swap_bytes(),
            (self.0[1] >> 56) as u8,
        )
    }

    fn is_in_arena(&self) -> bool {
        (self.0[1] >> 56) as u8 == IN_ARENA
    }

    fn in_arena(offset: usize, len: usize) -> Self {
        KeyWords([offset as u64, len as u64 | u64::from(IN_ARENA) << 56])
    }

    /// The key's bytes (an arena key's from `arena`).
    fn bytes<'a>(&'a self, arena: &'a [u8], scratch: &'a mut [u8; 16]) -> &'a [u8] {
        if self.is_in_arena() {
            let off = self.0[0] as usize;
            let len = (self.0[1] & 0x00ff_ffff_ffff_ffff) as usize;
            &arena[off..off + len]
        } else {
            scratch[..8].copy_from_slice(&self.0[0].to_le_bytes());
            scratch[8..].copy_from_slice(&self.0[1].to_le_bytes());
            &scratch[..(self.0[1] >> 56) as usize]
        }
    }

    /// [`key_hash`] of the key (for the table's growth, which rehashes every entry).
    fn hash(&self, arena: &[u8]) -> u64 {
        if self.is_in_arena() {
            key_hash(self.bytes(arena, &mut [0u8; 16]))
        } else {
            inline_hash(self)
        }
    }
}

/// Up to 16 bytes as two little-endian words, zero-padded: a whole word and then the tail
/// by 4, 2 and 1 bytes, so that a short key costs a few loads and no call to `memcpy`.
#[inline(always)]
fn load_words(bytes: &[u8]) -> [u64; 2] {
    let mut w = [0u64; 2];
    let (full, tail) = if bytes.len() >= 8 {
        let (a, b) = bytes.split_at(8);
        w[0] = u64::from_le_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
        (1, b)
    } else {
        (0, bytes)
    };
    let t = if tail.len() >= 8 {
        u64::from_le_bytes([
            tail[0], tail[1], tail[2], tail[3], tail[4], tail[5], tail[6], tail[7],
        ])
    } else {
        let (mut t, mut at) = (0u64, 0);
        if tail.len() & 4 != 0 {
            t = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
            at = 4;
        }
        if tail.len() & 2 != 0 {
            t |= u64::from(u16::from_le_bytes([tail[at], tail[at + 1]])) << (at * 8);
            at += 2;
        }
        if tail.len() & 1 != 0 {
            t |= u64::from(tail[at]) << (at * 8);
        }
        t
    };
    if let Some(slot) = w.get_mut(full) {
        *slot = t;
    }
    w
}

/// Multiply two words to 128 bits and fold the halves (the "mum" step of wyhash, Wang Yi,
/// 2019): one multiplication mixes every input bit into every output bit, so the table
/// slot (low bits), its tag (top bits) and the partition (middle bits) are independent.
#[inline(always)]
fn mum(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

const MIX_A: u64 = 0xa076_1d64_78bd_642f;
const MIX_B: u64 = 0xe703_7ed1_a0b4_28db;

/// The fixed hash of an encoded key: the map side's table slot and its reduce partition.
/// A key of up to 15 bytes is hashed as its two [`KeyWords`] (bytes and length); a longer
/// one 16 bytes at a time, then with its length.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    if let Some(w) = KeyWords::inline(key) {
        return inline_hash(&w);
    }
    let mut h = MIX_A;
    let mut chunks = key.chunks(16);
    for c in &mut chunks {
        let w = load_words(c);
        h = mum(w[0] ^ h ^ MIX_A, w[1] ^ MIX_B);
    }
    mum(h ^ key.len() as u64, MIX_B ^ MIX_A)
}

/// [`key_hash`] of a short key from its words.
#[inline(always)]
fn inline_hash(w: &KeyWords) -> u64 {
    mum(w.0[0] ^ MIX_A, w.0[1] ^ MIX_B)
}

#[inline(always)]
fn partition_of_hash(hash: u64, partitions: u32) -> u32 {
    // Bits 24..56, scaled to the range by a multiply rather than a division: the table
    // takes its slot from the low bits and its 7-bit tag from the top ones, and a
    // partition chosen by either would leave its table fewer distinct slots or tags.
    ((((hash >> 24) & 0xffff_ffff) * u64::from(partitions.max(1))) >> 32) as u32
}

/// The reduce partition of an encoded key: a fixed hash (our own, not std's, which may
/// change between versions), so every map attempt agrees.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    partition_of_hash(key_hash(key), partitions)
}

struct TableEntry<V> {
    key: KeyWords,
    value: V,
}

/// The map side's combining table for one partition: encoded key → folded value, probed
/// with the hash that also chose the partition (one hash per emitted pair). This is
/// in-mapper combining (Lin & Dyer, *Data-Intensive Text Processing with MapReduce*, 2010,
/// §3.1.1): each distinct key is held, and later encoded, once per partition.
struct CombineTable<V> {
    table: hashbrown::HashTable<TableEntry<V>>,
    /// Keys longer than [`INLINE_KEY`].
    arena: Vec<u8>,
}

impl<V: 'static> CombineTable<V> {
    fn new() -> Self {
        CombineTable {
            table: hashbrown::HashTable::new(),
            arena: Vec::new(),
        }
    }

    /// Fold `value` into the entry of the key whose words are `words`, or (a long key,
    /// `words` is `None`) whose bytes are `key`; true if the key is new.
    #[inline(always)]
    fn combine(
        &mut self,
        hash: u64,
        words: Option<KeyWords>,
        key: &[u8],
        value: V,
        c: &dyn Combiner<V>,
    ) -> bool {
        let arena = &self.arena;
        let found = match words {
            Some(w) => self.table.find_mut(hash, |e| e.key == w),
            None => self.table.find_mut(hash, |e| {
                e.key.is_in_arena() && e.key.bytes(arena, &mut [0u8; 16]) == key
            }),
        };
        if let Some(e) = found {
            c.combine(&mut e.value, value);
            return false;
        }
        let key = match words {
            Some(w) => w,
            None => {
                let off = self.arena.len();
                self.arena.extend_from_slice(key);
                KeyWords::in_arena(off, key.len())
            }
        };
        let arena = &self.arena;
        self.table
            .insert_unique(hash, TableEntry { key, value }, |e| e.key.hash(arena));
        true
    }

    /// Every entry, sorted by key bytes, handed to `f`; the table is left empty.
    fn drain_sorted(&mut self, mut f: impl FnMut(&[u8], &V) -> io::Result<()>) -> io::Result<()> {
        let mut entries: Vec<TableEntry<V>> = self.table.drain().collect();
        let arena = std::mem::take(&mut self.arena);
        if arena.is_empty() {
            entries.sort_unstable_by_key(|e| e.key.order());
        } else {
            entries.sort_unstable_by(|a, b| {
                if !a.key.is_in_arena() && !b.key.is_in_arena() {
                    return a.key.order().cmp(&b.key.order());
                }
                let (mut sa, mut sb) = ([0u8; 16], [0u8; 16]);
                a.key
                    .bytes(&arena, &mut sa)
                    .cmp(b.key.bytes(&arena, &mut sb))
            });
        }
        let mut scratch = [0u8; 16];
        for e in &entries {
            f(e.key.bytes(&arena, &mut scratch), &e.value)?;
        }
        Ok(())
    }
}

/// One segment of a map output file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Offset in the data file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Number of records.
    pub records: u64,
    /// CRC-32C of the segment's bytes.
    pub crc: u32,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Append one segment record, `varint(key len) key varint(value len) value`.
pub(crate) fn put_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// The largest key or value a segment may hold; larger means the file is damaged.
const MAX_FIELD: u64 = 64 << 20;

fn encode_value<V: Serialize>(v: &V, buf: &mut Vec<u8>) {
    buf.clear();
    let b = std::mem::take(buf);
    *buf = match postcard::to_extend(v, b) {
        Ok(b) => b,
        Err(e) => panic!("an intermediate value failed to encode ({e}); this is a bug"),
    };
}

/// Decode an intermediate value; a value that does not decode means a damaged file.
pub(crate) fn decode_value<V: DeserializeOwned>(bytes: &[u8]) -> io::Result<V> {
    postcard::from_bytes(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("intermediate value: {e}"),
        )
    })
}

/// Writes sorted segments one after another into a file, checksumming each.
pub(crate) struct SegmentWriter {
    out: BufWriter<File>,
    pos: u64,
    current: SegmentInfo,
    crc: u32,
    scratch: Vec<u8>,
}

impl SegmentWriter {
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        Ok(SegmentWriter {
            out: BufWriter::with_capacity(1 << 20, File::create(path)?),
            pos: 0,
            current: SegmentInfo::default(),
            crc: 0,
            scratch: Vec::with_capacity(256),
        })
    }

    pub(crate) fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        put_record(&mut self.scratch, key, value);
        self.crc = crc32c::crc32c_append(self.crc, &self.scratch);
        self.out.write_all(&self.scratch)?;
        self.pos += self.scratch.len() as u64;
        self.current.records += 1;
        Ok(())
    }

    /// Append a whole segment of `records` records already encoded (with [`put_record`],
    /// sorted by key) and end it: one CRC pass and one write instead of one per record.
    pub(crate) fn encoded_segment(
        &mut self,
        bytes: &[u8],
        records: u64,
    ) -> io::Result<SegmentInfo> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        self.current.records += records;
        Ok(self.end_segment())
    }

    pub(crate) fn end_segment(&mut self) -> SegmentInfo {
        let mut s = self.current;
        s.len = self.pos - s.offset;
        s.crc = self.crc;
        self.current = SegmentInfo {
            offset: self.pos,
            ..SegmentInfo::default()
        };
        self.crc = 0;
        s
    }

    /// Flush the file. It is not fsynced: map output lives on the worker's local disk and
    /// dies with the worker (§3.3, a restarted worker is a new one and its completed maps
    /// run again), so durability would buy nothing; the rename after this makes the file
    /// complete-or-absent for the data server.
    pub(crate) fn finish(self) -> io::Result<()> {
        self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    }
}

/// Reads the records of one segment (a byte range of a file).
pub(crate) struct SegmentReader {
    input: BufReader<io::Take<File>>,
    remaining_records: u64,
}

impl SegmentReader {
    pub(crate) fn open(path: &Path, seg: SegmentInfo) -> io::Result<Self> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(seg.offset))?;
        Ok(SegmentReader {
            input: BufReader::with_capacity(256 << 10, f.take(seg.len)),
            remaining_records: seg.records,
        })
    }

    fn varint(&mut self) -> io::Result<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let mut b = [0u8; 1];
            self.input.read_exact(&mut b)?;
            v |= u64::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad varint"));
            }
        }
    }

    fn field(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let n = self.varint()?;
        if n > MAX_FIELD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record field of {n} bytes"),
            ));
        }
        buf.resize(n as usize, 0);
        self.input.read_exact(buf)
    }

    /// Read the next record into `key` and `value`; false at the end of the segment.
    pub(crate) fn next(&mut self, key: &mut Vec<u8>, value: &mut Vec<u8>) -> io::Result<bool> {
        if self.remaining_records == 0 {
            return Ok(false);
        }
        self.remaining_records -= 1;
        self.field(key)?;
        self.field(value)?;
        Ok(true)
    }
}

/// A record at the head of one merge input.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Head {
    pub(crate) key: Vec<u8>,
    pub(crate) source: usize,
    pub(crate) value: Vec<u8>,
}

/// A k-way merge of sorted segments; equal keys come out in source order, so the merge is
/// deterministic.
pub(crate) struct Merger {
    sources: Vec<SegmentReader>,
    heap: BinaryHeap<Reverse<Head>>,
}

impl Merger {
    pub(crate) fn new(sources: Vec<SegmentReader>) -> io::Result<Self> {
        let mut m = Merger {
            heap: BinaryHeap::with_capacity(sources.len()),
            sources,
        };
        for source in 0..m.sources.len() {
            m.refill(Head {
                key: Vec::new(),
                source,
                value: Vec::new(),
            })?;
        }
        Ok(m)
    }

    /// The smallest record, removed. Hand it back with [`Merger::refill`] to reuse its
    /// buffers for the next record of the same source.
    pub(crate) fn pop(&mut self) -> Option<Head> {
        self.heap.pop().map(|Reverse(h)| h)
    }

    pub(crate) fn peek_key(&self) -> Option<&[u8]> {
        self.heap.peek().map(|Reverse(h)| h.key.as_slice())
    }

    pub(crate) fn refill(&mut self, mut head: Head) -> io::Result<()> {
        if self.sources[head.source].next(&mut head.key, &mut head.value)? {
            self.heap.push(Reverse(head));
        }
        Ok(())
    }
}

/// The map side's buffer: partitions, sorts, combines and spills intermediate pairs.
pub(crate) struct MapBuffer<V> {
    partitions: u32,
    combiner: Option<Arc<dyn Combiner<V>>>,
    // Without a combiner: encoded records in an arena, and an index to sort.
    arena: Vec<u8>,
    index: Vec<(u32, u32, usize, u32)>,
    // With a combiner: one table per partition.
    tables: Vec<CombineTable<V>>,
    bytes: usize,
    limit: usize,
    dir: PathBuf,
    name: String,
    spills: Vec<(PathBuf, Vec<SegmentInfo>)>,
    value_buf: Vec<u8>,
    /// Records emitted by the mapper.
    pub(crate) emitted: u64,
}

impl<V: Serialize + DeserializeOwned + 'static> MapBuffer<V> {
    pub(crate) fn new(
        partitions: u32,
        combiner: Option<Arc<dyn Combiner<V>>>,
        limit: usize,
        dir: &Path,
        name: &str,
    ) -> Self {
        MapBuffer {
            partitions,
            tables: if combiner.is_some() {
                (0..partitions).map(|_| CombineTable::new()).collect()
            } else {
                Vec::new()
            },
            combiner,
            arena: Vec::new(),
            index: Vec::new(),
            bytes: 0,
            limit: limit.max(1 << 12),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            spills: Vec::new(),
            value_buf: Vec::new(),
            emitted: 0,
        }
    }

    /// Sorted, combined segments of what is buffered, written by `w`.
    fn write_buffer(&mut self, w: &mut SegmentWriter) -> io::Result<Vec<SegmentInfo>> {
        let mut segs = Vec::with_capacity(self.partitions as usize);
        if self.combiner.is_some() {
            let value_buf = &mut self.value_buf;
            for table in &mut self.tables {
                table.drain_sorted(|key, value| {
                    encode_value(value, value_buf);
                    w.record(key, value_buf)
                })?;
                segs.push(w.end_segment());
            }
        } else {
            let arena = &self.arena;
            let key = |e: &(u32, u32, usize, u32)| &arena[e.2..e.2 + e.1 as usize];
            // Stable: equal keys keep emission order.
            self.index
                .sort_by(|a, b| a.0.cmp(&b.0).then_with(|| key(a).cmp(key(b))));
            let mut i = 0;
            for p in 0..self.partitions {
                while i < self.index.len() && self.index[i].0 == p {
                    let (_, klen, off, vlen) = self.index[i];
                    let k = &arena[off..off + klen as usize];
                    let v = &arena[off + klen as usize..off + klen as usize + vlen as usize];
                    w.record(k, v)?;
                    i += 1;
                }
                segs.push(w.end_segment());
            }
            self.index.clear();
            self.arena.clear();
        }
        self.bytes = 0;
        Ok(segs)
    }

    fn spill(&mut self) -> io::Result<()> {
        let path = self
            .dir
            .join(format!("{}.spill{}", self.name, self.spills.len()));
        let mut w = SegmentWriter::create(&path)?;
        let segs = self.write_buffer(&mut w)?;
        w.out.flush()?;
        self.spills.push((path, segs));
        Ok(())
    }

    /// Write the final output file `<dir>/<name>.out` and return its segment index. The
    /// file is written under a temporary name and renamed, so it is complete or absent.
    pub(crate) fn finish(mut self) -> io::Result<Vec<SegmentInfo>> {
        let tmp = self.dir.join(format!("{}.out.tmp", self.name));
        let mut w = SegmentWriter::create(&tmp)?;
        let segs = if self.spills.is_empty() {
            self.write_buffer(&mut w)?
        } else {
            if self.bytes > 0 {
                self.spill()?;
            }
            let spills = std::mem::take(&mut self.spills);
            let mut segs = Vec::with_capacity(self.partitions as usize);
            for p in 0..self.partitions as usize {
                let readers = spills
                    .iter()
                    .map(|(path, s)| SegmentReader::open(path, s[p]))
                    .collect::<io::Result<Vec<_>>>()?;
                let mut merger = Merger::new(readers)?;
                while let Some(head) = merger.pop() {
                    if let Some(c) = &self.combiner {
                        let mut acc: V = decode_value(&head.value)?;
                        let key = head.key.clone();
                        merger.refill(head)?;
                        while merger.peek_key() == Some(key.as_slice()) {
                            let Some(h) = merger.pop() else { break };
                            c.combine(&mut acc, decode_value(&h.value)?);
                            merger.refill(h)?;
                        }
                        encode_value(&acc, &mut self.value_buf);
                        w.record(&key, &self.value_buf)?;
                    } else {
                        w.record(&head.key, &head.value)?;
                        merger.refill(head)?;
                    }
                }
                segs.push(w.end_segment());
            }
            for (path, _) in spills {
                let _ = std::fs::remove_file(path);
            }
            segs
        };
        w.finish()?;
        std::fs::rename(&tmp, self.dir.join(format!("{}.out", self.name)))?;
        Ok(segs)
    }

    /// Number of spill files written so far.
    pub(crate) fn spills(&self) -> usize {
        self.spills.len()
    }

    pub(crate) fn push_checked(&mut self, key: &[u8], value: V) -> io::Result<()> {
        self.push_words(KeyWords::inline(key), key, value)
    }

    /// Buffer `(key, value)`; `words` are the key's words if it is short.
    #[inline(always)]
    fn push_words(&mut self, words: Option<KeyWords>, key: &[u8], value: V) -> io::Result<()> {
        self.emitted += 1;
        let hash = match &words {
            Some(w) => inline_hash(w),
            None => key_hash(key),
        };
        let p = partition_of_hash(hash, self.partitions);
        if let Some(c) = &self.combiner {
            // `key` is only read for a long key (`words` is `None`).
            if self.tables[p as usize].combine(hash, words, key, value, &**c) {
                self.bytes += std::mem::size_of::<TableEntry<V>>()
                    + 8
                    + if words.is_none() { key.len() } else { 0 };
                if self.bytes >= self.limit {
                    self.spill()?;
                }
            }
            Ok(())
        } else {
            self.push_record(p, key, value)
        }
    }

    /// Buffer a pair without a combiner: into the arena, with an index entry to sort.
    fn push_record(&mut self, p: u32, key: &[u8], value: V) -> io::Result<()> {
        let off = self.arena.len();
        self.arena.extend_from_slice(key);
        let b = std::mem::take(&mut self.arena);
        self.arena = postcard::to_extend(&value, b).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("value encode: {e}"))
        })?;
        let vlen = self.arena.len() - off - key.len();
        self.index.push((p, key.len() as u32, off, vlen as u32));
        self.bytes += key.len() + vlen + 24;
        if self.bytes >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    /// Buffer a string key (see [`MapSink::push_str`]).
    #[inline(always)]
    fn push_str(&mut self, key: &str, value: V) -> io::Result<()> {
        match KeyWords::inline_str(key) {
            Some(w) if self.combiner.is_some() => self.push_words(Some(w), &[], value),
            _ => {
                let mut encoded = Vec::with_capacity(key.len() + 10);
                encode_str_key(&mut encoded, key);
                self.push_words(KeyWords::inline(&encoded), &encoded, value)
            }
        }
    }
}

/// A [`MapSink`] that keeps the first I/O error (a spill that failed) for the task.
pub(crate) struct CheckedSink<'a, V> {
    pub(crate) buffer: &'a mut MapBuffer<V>,
    pub(crate) error: Option<io::Error>,
}

impl<V: Serialize + DeserializeOwned + 'static> MapSink<V> for CheckedSink<'_, V> {
    fn push(&mut self, key: &[u8], value: V) {
        if self.error.is_none() {
            if let Err(e) = self.buffer.push_checked(key, value) {
                self.error = Some(e);
            }
        }
    }

    fn push_str(&mut self, key: &str, value: V) {
        if self.error.is_none() {
            if let Err(e) = self.buffer.push_str(key, value) {
                self.error = Some(e);
            }
        }
    }
}

/// Append the postcard encoding of the string `key`: its varint length, then its bytes.
pub(crate) fn encode_str_key(out: &mut Vec<u8>, key: &str) {
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key.as_bytes());
}

/// Write a length-prefixed postcard frame.
pub(crate) fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> io::Result<()> {
    let bytes = synod_core::codec::encode(value);
    w.write_all(&(bytes.len() as u32).to_le_bytes())?;
    w.write_all(&bytes)?;
    w.flush()
}

/// Read a length-prefixed postcard frame of at most `limit` bytes.
pub(crate) fn read_frame<T: DeserializeOwned>(r: &mut impl Read, limit: usize) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes, more than the limit of {limit}"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    synod_core::codec::decode_bounded(&buf, limit)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum;
    impl Combiner<u64> for Sum {
        fn combine(&self, acc: &mut u64, next: u64) {
            *acc += next;
        }
    }

    fn read_all(path: &Path, seg: SegmentInfo) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut r = SegmentReader::open(path, seg).unwrap();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while r.next(&mut k, &mut v).unwrap() {
            out.push((k.clone(), v.clone()));
        }
        out
    }

    proptest::proptest! {
        /// A string key's words, built from the string, are those of its postcard
        /// encoding; the hash and the partition do not depend on the path the key took;
        /// and the words sort like the key bytes.
        #[test]
        fn key_words_agree_with_the_encoded_key(
            a in "\\PC{0,20}",
            b in "\\PC{0,20}",
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            for s in [&a, &b] {
                let encoded = synod_core::codec::encode(s);
                let mut by_hand = Vec::new();
                encode_str_key(&mut by_hand, s);
                proptest::prop_assert_eq!(&encoded, &by_hand);
                if let Some(w) = KeyWords::inline_str(s) {
                    proptest::prop_assert!(KeyWords::inline(&encoded) == Some(w));
                    proptest::prop_assert_eq!(inline_hash(&w), key_hash(&encoded));
                    let mut scratch = [0u8; 16];
                    proptest::prop_assert_eq!(w.bytes(&[], &mut scratch), &encoded[..]);
                }
            }
            let (ea, eb) = (synod_core::codec::encode(&a), synod_core::codec::encode(&b));
            if let (Some(wa), Some(wb)) = (KeyWords::inline(&ea), KeyWords::inline(&eb)) {
                proptest::prop_assert_eq!(wa.order().cmp(&wb.order()), ea.cmp(&eb));
            }
            if let Some(w) = KeyWords::inline(&raw) {
                let mut scratch = [0u8; 16];
                proptest::prop_assert_eq!(w.bytes(&[], &mut scratch), &raw[..]);
                proptest::prop_assert_eq!(w.hash(&[]), key_hash(&raw));
            }
            proptest::prop_assert!(partition_of(&raw, 7) < 7);
        }
    }

    /// Keys longer than the inline limit live in the arena and still combine, sort and
    /// hash like short ones.
    #[test]
    fn long_and_short_keys_combine_alike() {
        let dir = std::env::temp_dir().join(format!("synod-mr-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c: Option<Arc<dyn Combiner<u64>>> = Some(Arc::new(Sum));
        let mut buf = MapBuffer::new(2, c, 1 << 30, &dir, "long");
        let keys: Vec<String> = (0..300)
            .map(|i| "x".repeat(i % 40) + &i.to_string())
            .collect();
        for round in 0..3u64 {
            for k in &keys {
                buf.push_str(k, round + 1).unwrap();
            }
        }
        let segs = buf.finish().unwrap();
        let path = dir.join("long.out");
        let mut seen = Vec::new();
        for (p, seg) in segs.iter().enumerate() {
            for (k, v) in read_all(&path, *seg) {
                assert_eq!(partition_of(&k, 2) as usize, p);
                let key: String = synod_core::codec::decode(&k).unwrap();
                let v: u64 = synod_core::codec::decode(&v).unwrap();
                assert_eq!(v, 6, "{key}");
                seen.push(key);
            }
        }
        seen.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(seen, want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Spilling changes nothing: a tiny memory budget (many spills, merged) gives the same
    /// segments as one in-memory sort, with and without a combiner.
    #[test]
    fn spilled_output_equals_in_memory_output() {
        let dir = std::env::temp_dir().join(format!("synod-mr-shuffle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for combine in [false, true] {
            let mut results = Vec::new();
            for (name, limit) in [("big", 1 << 30), ("small", 1)] {
                let c: Option<Arc<dyn Combiner<u64>>> =
                    combine.then(|| Arc::new(Sum) as Arc<dyn Combiner<u64>>);
                let mut buf = MapBuffer::new(3, c, limit, &dir, name);
                for i in 0..20_000u64 {
                    let key = format!("k{}", (i * 7919) % 997);
                    buf.push_checked(&synod_core::codec::encode(&key), i % 5)
                        .unwrap();
                }
                let spilled = buf.spills();
                let segs = buf.finish().unwrap();
                let path = dir.join(format!("{name}.out"));
                let all: Vec<_> = segs.iter().map(|s| read_all(&path, *s)).collect();
                // Sorted within each segment, and checksummed.
                for (seg, recs) in segs.iter().zip(&all) {
                    assert!(recs.windows(2).all(|w| w[0].0 <= w[1].0));
                    let bytes = std::fs::read(&path).unwrap();
                    let slice = &bytes[seg.offset as usize..(seg.offset + seg.len) as usize];
                    assert_eq!(crc32c::crc32c(slice), seg.crc);
                }
                results.push((spilled, all));
            }
            assert_eq!(results[0].0, 0);
            assert!(results[1].0 > 1, "the small budget must spill");
            assert_eq!(results[0].1, results[1].1, "combine={combine}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
