//! The built-in jobs (word count, inverted index, PageRank, log analysis) and, beside
//! each, a simple single-threaded reference implementation that the tests compare with.

use super::api::{Combiner, MapOutput, Mapper, Record, ReduceOutput, Reducer};
use super::shuffle::{decode_value, MapBuffer, SegmentInfo, SegmentWriter};
use super::task::{for_each_line, read_lines, Counters, Job, MapResult, Split, TaskRunner};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Parameters of a job: name → value, as given on the command line.
pub type Params = BTreeMap<String, String>;

/// Why a job could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// No built-in job has this name.
    #[error("unknown job `{0}` (known: wordcount, index, logs, pagerank-build, pagerank)")]
    Unknown(String),
    /// A parameter is missing or malformed.
    #[error("job parameter `{name}`: {problem}")]
    Param {
        /// The parameter.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

fn param<T: std::str::FromStr>(p: &Params, name: &str) -> Result<T, JobError> {
    let v = p.get(name).ok_or_else(|| JobError::Param {
        name: name.into(),
        problem: "missing".into(),
    })?;
    v.parse().map_err(|_| JobError::Param {
        name: name.into(),
        problem: format!("`{v}` is not valid"),
    })
}

/// Build a built-in job by name.
pub fn build(name: &str, params: &Params) -> Result<Box<dyn TaskRunner>, JobError> {
    Ok(match name {
        "wordcount" => Box::new(Job::new(WordCountMap, WordCountReduce).with_combiner(Sum)),
        "index" => Box::new(Job::new(IndexMap, IndexReduce).with_combiner(MergePostings)),
        "logs" => Box::new(Job::new(LogMap, LogReduce).with_combiner(LogCombine)),
        "pagerank-build" => Box::new(BuildGraph),
        "pagerank" => {
            let n: f64 = param(params, "nodes")?;
            let damping: f64 = param(params, "damping")?;
            let dangling: f64 = param(params, "dangling")?;
            let graph: String = param(params, "graph")?;
            // The previous iteration's rank files; absent in the first iteration.
            let ranks = params.get("ranks").map(std::path::PathBuf::from);
            if !(n >= 1.0 && (0.0..=1.0).contains(&damping) && dangling >= 0.0) {
                return Err(JobError::Param {
                    name: "nodes/damping/dangling".into(),
                    problem: "out of range".into(),
                });
            }
            Box::new(RankIteration {
                n,
                damping,
                dangling,
                graph: graph.into(),
                ranks,
            })
        }
        other => return Err(JobError::Unknown(other.to_string())),
    })
}

/// The whitespace-separated words of a line, with their byte offsets. A word that is not
/// UTF-8 becomes U+FFFD. The line is validated once: ASCII whitespace never falls inside a
/// multi-byte character, so every word of a valid line is valid.
fn words(line: &[u8]) -> impl Iterator<Item = (usize, &str)> {
    let text = std::str::from_utf8(line).ok();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return None;
        }
        let start = i;
        while i < line.len() && !line[i].is_ascii_whitespace() {
            i += 1;
        }
        let word = match text {
            Some(t) => t.get(start..i),
            None => std::str::from_utf8(&line[start..i]).ok(),
        };
        Some((start, word.unwrap_or("\u{fffd}")))
    })
}

// ---------------------------------------------------------------------------------------
// Word count (§2.1).

/// Word count's mapper: `(word, 1)` per whitespace-separated word.
pub struct WordCountMap;
impl Mapper for WordCountMap {
    type Key = String;
    type Value = u64;
    fn map(&self, r: Record<'_>, out: &mut MapOutput<'_, u64>) {
        for (_, w) in words(r.line) {
            out.emit_str(w, 1);
        }
    }
}

/// Sums counts: word count's combiner.
pub struct Sum;
impl Combiner<u64> for Sum {
    fn combine(&self, acc: &mut u64, next: u64) {
        *acc += next;
    }
}

/// Word count's reducer: `word<TAB>count`.
pub struct WordCountReduce;
impl Reducer for WordCountReduce {
    type Key = String;
    type Value = u64;
    fn reduce(
        &self,
        key: String,
        values: &mut dyn Iterator<Item = u64>,
        out: &mut ReduceOutput<'_>,
    ) {
        let n: u64 = values.sum();
        writeln!(out, "{key}\t{n}");
    }
}

/// Reference word count: word → count.
pub fn wordcount_reference(input: &Path) -> io::Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    read_lines(input, |r| {
        for (_, w) in words(r.line) {
            *counts.entry(w.to_string()).or_insert(0) += 1;
        }
    })?;
    Ok(counts)
}

// ---------------------------------------------------------------------------------------
// Inverted index (§2.3): word → sorted list of (document, positions). A document is an
// input file; a position is the byte offset of the word in it.

/// Postings of one word: document → byte offsets.
pub type Postings = Vec<(String, Vec<u64>)>;

/// The inverted index's mapper.
pub struct IndexMap;
impl Mapper for IndexMap {
    type Key = String;
    type Value = Postings;
    fn map(&self, r: Record<'_>, out: &mut MapOutput<'_, Postings>) {
        for (at, w) in words(r.line) {
            out.emit(w, vec![(r.file.to_string(), vec![r.offset + at as u64])]);
        }
    }
}

fn merge_postings(acc: &mut Postings, next: Postings) {
    acc.extend(next);
    acc.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Postings = Vec::with_capacity(acc.len());
    for (doc, mut pos) in acc.drain(..) {
        match merged.last_mut() {
            Some((d, p)) if *d == doc => p.append(&mut pos),
            _ => merged.push((doc, pos)),
        }
    }
    for (_, p) in &mut merged {
        p.sort_unstable();
    }
    *acc = merged;
}

/// Merges postings lists: the inverted index's combiner.
pub struct MergePostings;
impl Combiner<Postings> for MergePostings {
    fn combine(&self, acc: &mut Postings, next: Postings) {
        merge_postings(acc, next);
    }
}

fn format_postings(p: &Postings) -> String {
    p.iter()
        .map(|(d, pos)| {
            let pos: Vec<String> = pos.iter().map(u64::to_string).collect();
            format!("{d}:{}", pos.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The inverted index's reducer: `word<TAB>doc:p,p doc:p`.
pub struct IndexReduce;
impl Reducer for IndexReduce {
    type Key = String;
    type Value = Postings;
    fn reduce(
        &self,
        key: String,
        values: &mut dyn Iterator<Item = Postings>,
        out: &mut ReduceOutput<'_>,
    ) {
        let mut acc = Postings::new();
        for v in values {
            merge_postings(&mut acc, v);
        }
        writeln!(out, "{key}\t{}", format_postings(&acc));
    }
}

/// Reference inverted index: word → formatted postings.
pub fn index_reference(input: &Path) -> io::Result<BTreeMap<String, String>> {
    let mut idx: BTreeMap<String, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
    read_lines(input, |r| {
        for (at, w) in words(r.line) {
            idx.entry(w.to_string())
                .or_default()
                .entry(r.file.to_string())
                .or_default()
                .push(r.offset + at as u64);
        }
    })?;
    Ok(idx
        .into_iter()
        .map(|(w, docs)| (w, format_postings(&docs.into_iter().collect())))
        .collect())
}

// ---------------------------------------------------------------------------------------
// Log analysis: requests per status per hour, request count per URL (top-k is taken from
// these after the job), and p99 latency per endpoint.

/// The log analysis' keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogKey {
    /// Requests with this status in this hour (`YYYY-MM-DDTHH`).
    StatusHour(String, u16),
    /// Requests for this URL path.
    Url(String),
    /// Latency of this endpoint (method and path with numeric segments as `:id`).
    Endpoint(String),
}

/// The log analysis' values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogValue {
    /// A count.
    Count(u64),
    /// Latencies in milliseconds.
    Latencies(Vec<u32>),
}

/// One parsed access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// `YYYY-MM-DDTHH`.
    pub hour: String,
    /// HTTP method.
    pub method: &'a str,
    /// URL path (with query).
    pub url: &'a str,
    /// Status code.
    pub status: u16,
    /// Latency in milliseconds.
    pub latency_ms: u32,
}

fn month_number(m: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS.iter().position(|x| *x == m).map(|i| i as u32 + 1)
}

/// Parse a line of the generated access log (the Common Log Format plus a latency field):
/// `IP - - [27/Nov/2026:13:05:09 +0000] "GET /a/b HTTP/1.1" 200 512 37`. Lines that do not
/// parse are skipped by the job (and counted by the reference the same way).
pub fn parse_log_line(line: &[u8]) -> Option<LogLine<'_>> {
    let line = std::str::from_utf8(line).ok()?;
    let ts_start = line.find('[')? + 1;
    let ts_end = ts_start + line[ts_start..].find(']')?;
    let ts = &line[ts_start..ts_end]; // 27/Nov/2026:13:05:09 +0000
    let day = ts.get(0..2)?;
    let month = month_number(ts.get(3..6)?)?;
    let year = ts.get(7..11)?;
    let hour = ts.get(12..14)?;
    let req_start = ts_end + line[ts_end..].find('"')? + 1;
    let req_end = req_start + line[req_start..].find('"')?;
    let mut req = line[req_start..req_end].split(' ');
    let method = req.next()?;
    let url = req.next()?;
    let mut rest = line[req_end + 1..].split_ascii_whitespace();
    let status = rest.next()?.parse().ok()?;
    let _bytes = rest.next()?;
    let latency_ms = rest.next()?.parse().ok()?;
    Some(LogLine {
        hour: format!("{year}-{month:02}-{day}T{hour}"),
        method,
        url,
        status,
        latency_ms,
    })
}

/// The endpoint of a request: method and path, numeric segments as `:id`, no query.
pub fn endpoint(method: &str, url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    let mut e = String::with_capacity(path.len() + 8);
    e.push_str(method);
    e.push(' ');
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            e.push('/');
        }
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            e.push_str(":id");
        } else {
            e.push_str(seg);
        }
    }
    e
}

/// The log analysis' mapper.
pub struct LogMap;
impl Mapper for LogMap {
    type Key = LogKey;
    type Value = LogValue;
    fn map(&self, r: Record<'_>, out: &mut MapOutput<'_, LogValue>) {
        let Some(l) = parse_log_line(r.line) else {
            return;
        };
        out.emit(
            &LogKey::StatusHour(l.hour.clone(), l.status),
            LogValue::Count(1),
        );
        out.emit(&LogKey::Url(l.url.to_string()), LogValue::Count(1));
        out.emit(
            &LogKey::Endpoint(endpoint(l.method, l.url)),
            LogValue::Latencies(vec![l.latency_ms]),
        );
    }
}

/// Adds counts and concatenates latency lists.
pub struct LogCombine;
impl Combiner<LogValue> for LogCombine {
    fn combine(&self, acc: &mut LogValue, next: LogValue) {
        match (acc, next) {
            (LogValue::Count(a), LogValue::Count(b)) => *a += b,
            (LogValue::Latencies(a), LogValue::Latencies(mut b)) => a.append(&mut b),
            // One key always carries one kind of value.
            _ => {}
        }
    }
}

/// The 99th percentile by the nearest-rank method.
pub fn p99(latencies: &mut [u32]) -> u32 {
    if latencies.is_empty() {
        return 0;
    }
    latencies.sort_unstable();
    let rank = (latencies.len() * 99).div_ceil(100).max(1);
    latencies[rank - 1]
}

/// The log analysis' reducer: `status<TAB>hour<TAB>code<TAB>n`, `url<TAB>path<TAB>n`,
/// `p99<TAB>endpoint<TAB>ms<TAB>requests`.
pub struct LogReduce;
impl Reducer for LogReduce {
    type Key = LogKey;
    type Value = LogValue;
    fn reduce(
        &self,
        key: LogKey,
        values: &mut dyn Iterator<Item = LogValue>,
        out: &mut ReduceOutput<'_>,
    ) {
        match key {
            LogKey::StatusHour(hour, status) => {
                let n: u64 = values
                    .map(|v| if let LogValue::Count(n) = v { n } else { 0 })
                    .sum();
                writeln!(out, "status\t{hour}\t{status}\t{n}");
            }
            LogKey::Url(url) => {
                let n: u64 = values
                    .map(|v| if let LogValue::Count(n) = v { n } else { 0 })
                    .sum();
                writeln!(out, "url\t{url}\t{n}");
            }
            LogKey::Endpoint(e) => {
                let mut all = Vec::new();
                for v in values {
                    if let LogValue::Latencies(mut l) = v {
                        all.append(&mut l);
                    }
                }
                let n = all.len();
                writeln!(out, "p99\t{e}\t{}\t{n}", p99(&mut all));
            }
        }
    }
}

/// Reference log analysis: the same lines the job writes, sorted.
pub fn logs_reference(input: &Path) -> io::Result<Vec<String>> {
    let mut status: BTreeMap<(String, u16), u64> = BTreeMap::new();
    let mut urls: BTreeMap<String, u64> = BTreeMap::new();
    let mut lat: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    read_lines(input, |r| {
        if let Some(l) = parse_log_line(r.line) {
            *status.entry((l.hour.clone(), l.status)).or_default() += 1;
            *urls.entry(l.url.to_string()).or_default() += 1;
            lat.entry(endpoint(l.method, l.url))
                .or_default()
                .push(l.latency_ms);
        }
    })?;
    let mut lines = Vec::new();
    for ((h, s), n) in status {
        lines.push(format!("status\t{h}\t{s}\t{n}"));
    }
    for (u, n) in urls {
        lines.push(format!("url\t{u}\t{n}"));
    }
    for (e, mut l) in lat {
        let n = l.len();
        lines.push(format!("p99\t{e}\t{}\t{n}", p99(&mut l)));
    }
    lines.sort();
    Ok(lines)
}

/// The `k` most requested URLs from the job's `url` lines, by count then path.
pub fn top_urls(lines: &[String], k: usize) -> Vec<(String, u64)> {
    let mut urls: Vec<(String, u64)> = lines
        .iter()
        .filter_map(|l| {
            let mut f = l.split('\t');
            (f.next()? == "url").then_some(())?;
            let u = f.next()?.to_string();
            let n = f.next()?.parse().ok()?;
            Some((u, n))
        })
        .collect();
    urls.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    urls.truncate(k);
    urls
}

// ---------------------------------------------------------------------------------------
// PageRank (Page et al. 1999) as iterated MapReduce jobs over a partitioned binary graph.
//
// `pagerank-build` turns an edge list (`src dst` lines) into R binary partition files, one
// per reduce task: partition r holds, in shuffle key order, every node whose key hashes to
// r, with its sorted out-links. Each `pagerank` iteration then has M = R map tasks, one per
// partition; map task r reads the previous iteration's rank file r (the build's partition
// in the first iteration) and sends each node's share of rank along its out-links, summed
// in a dense array; reduce task r merge-joins the summed contributions with partition r
// and the previous ranks, read directly rather than shuffled: the "Schimmy" pattern of
// Lin & Schatz, "Design Patterns for Efficient Graph Algorithms in MapReduce" (MLG 2010),
// which keeps the graph structure out of the shuffle. Iterations write only rank files;
// the structure, which does not change, is cached parsed by each worker process (HaLoop,
// Bu et al., VLDB 2010). The rule is
//   r'(v) = (1-d)/N + d·(Σ_{u→v} r(u)/outdeg(u) + D/N)
// where D is the rank held by dangling nodes (no out-links), spread evenly (the
// "random jump" treatment). Counters carry D for the next iteration and the L1 change.

/// Concatenates out-link lists.
pub struct Concat;
impl Combiner<Vec<u64>> for Concat {
    fn combine(&self, acc: &mut Vec<u64>, mut next: Vec<u64>) {
        acc.append(&mut next);
    }
}

/// The binary graph partition format shared by `pagerank-build` and `pagerank`.
///
/// A partition file starts with its *destination table*: `varint(count)` and the distinct
/// targets of its nodes' out-links, as varints, in shuffle key order. Then one record per
/// node, `varint(node) f64-le(rank) varint(outdeg) u32-le(link)...`, whose out-links are
/// ascending indices into the destination table, in shuffle key order. The
/// node's varint is its postcard encoding, i.e. its shuffle key. A NaN rank means "not yet
/// ranked" (1/N). The table lets a map task sum contributions per target in a dense array
/// (in-mapper combining, Lin & Dyer 2010, §3.1.1) instead of a hash table.
pub mod graph_file {
    use std::io;

    /// One node of a partition.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Node<'a> {
        /// The node's encoded key (its varint).
        pub key: &'a [u8],
        /// The node id.
        pub id: u64,
        /// Its rank (NaN before the first iteration).
        pub rank: f64,
        /// Number of out-links.
        pub degree: u64,
        /// The encoded out-links (use [`out_links`]).
        pub links: &'a [u8],
    }

    pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A sort key that orders ids as their varints compare bytewise (the shuffle's order):
    /// the varint left-aligned in 128 bits. Varints are prefix-free, so padding with zeros
    /// keeps the order.
    pub fn key_order(id: u64) -> u128 {
        let mut v = id;
        let mut k = 0u128;
        let mut shift = 120;
        loop {
            let byte = if v >= 0x80 { (v as u8) | 0x80 } else { v as u8 };
            k |= u128::from(byte) << shift;
            v >>= 7;
            if byte & 0x80 == 0 {
                return k;
            }
            shift -= 8;
        }
    }

    pub(crate) fn damaged(what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("damaged graph partition: {what}"),
        )
    }

    pub(crate) fn varint(b: &[u8], pos: &mut usize) -> io::Result<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = *b.get(*pos).ok_or_else(|| damaged("truncated varint"))?;
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(damaged("varint longer than 10 bytes"));
            }
        }
    }

    /// Append the destination table.
    pub fn write_destinations(out: &mut Vec<u8>, dests: &[u64]) {
        put_varint(out, dests.len() as u64);
        for &d in dests {
            put_varint(out, d);
        }
    }

    /// Read the destination table at `*pos`; returns the byte range of the table entries.
    pub fn read_destinations(b: &[u8], pos: &mut usize) -> io::Result<Vec<u64>> {
        let n = varint(b, pos)?;
        if n > (b.len() - *pos) as u64 {
            return Err(damaged("destination table larger than the file"));
        }
        let mut dests = Vec::with_capacity(n as usize);
        for _ in 0..n {
            dests.push(varint(b, pos)?);
        }
        Ok(dests)
    }

    /// Append one node record; `links` are destination indices.
    pub fn write_node(out: &mut Vec<u8>, id: u64, rank: f64, links: &[u32]) {
        put_varint(out, id);
        out.extend_from_slice(&rank.to_le_bytes());
        put_varint(out, links.len() as u64);
        for &l in links {
            out.extend_from_slice(&l.to_le_bytes());
        }
    }

    /// Read the record at `*pos`, advancing it past the record.
    pub fn read_node<'a>(b: &'a [u8], pos: &mut usize) -> io::Result<Node<'a>> {
        let start = *pos;
        let id = varint(b, pos)?;
        let key = &b[start..*pos];
        let raw = b
            .get(*pos..*pos + 8)
            .ok_or_else(|| damaged("truncated rank"))?;
        let mut r = [0u8; 8];
        r.copy_from_slice(raw);
        *pos += 8;
        let degree = varint(b, pos)?;
        if degree > ((b.len() - *pos) / 4) as u64 {
            return Err(damaged("out-degree larger than the file"));
        }
        let links_start = *pos;
        *pos += degree as usize * 4;
        Ok(Node {
            key,
            id,
            rank: f64::from_le_bytes(r),
            degree,
            links: &b[links_start..*pos],
        })
    }

    /// The destination indices of a record's out-links, decoded.
    pub fn out_links(links: &[u8]) -> impl Iterator<Item = u32> + '_ {
        links
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// A line `src dst` (whitespace-separated decimal ids; anything after them is ignored), as
/// `words` and `str::parse::<u64>` read it, without the UTF-8 check and the string: one
/// pass over the bytes.
fn parse_edge(line: &[u8]) -> Option<(u64, u64)> {
    let mut i = 0;
    let mut field = || -> Option<u64> {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < line.len() && !line[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut w = &line[start..i];
        // `parse::<u64>` accepts one leading '+' (but not a lone one).
        if w.len() > 1 && w[0] == b'+' {
            w = &w[1..];
        }
        if w.is_empty() {
            return None;
        }
        let mut v = 0u64;
        for &b in w {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(digit))?;
        }
        Some(v)
    };
    let s = field()?;
    let d = field()?;
    Some((s, d))
}

/// The encoded shuffle key (the postcard varint) of the id whose [`graph_file::key_order`]
/// is `order`.
fn key_of_order(order: u128, key: &mut Vec<u8>) {
    key.clear();
    for b in order.to_be_bytes() {
        key.push(b);
        if b & 0x80 == 0 {
            break;
        }
    }
}

/// Marks an entry `(node, NO_LINK)` of the build's map: a node seen as a link target.
const NO_LINK: u64 = u64::MAX;

/// An entry of the build's map: the key order of a node and one of its out-links, or
/// NO_LINK for "seen as a link target". Entries sort by node, then link.
trait LinkEntry: Copy + Ord {
    fn order(&self) -> u128;
    fn link(&self) -> u64;
    fn sort(v: &mut Vec<Self>);
}

impl LinkEntry for (u128, u64) {
    fn order(&self) -> u128 {
        self.0
    }
    fn link(&self) -> u64 {
        self.1
    }
    fn sort(v: &mut Vec<Self>) {
        v.sort_unstable();
    }
}

/// An entry in one word, for graphs whose ids are below 2^28 (varints of at most 4 bytes,
/// so the key order is its top 32 bits) and whose links are below `u32::MAX`: the key
/// order in the high half, the link (`u32::MAX` for NO_LINK) in the low. It sorts as the
/// wide entry does, at a quarter of the bytes and with a radix sort.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Packed(u64);

/// Ids below this have varints of at most 4 bytes (see [`Packed`]).
const PACKED_IDS: u64 = 1 << 28;

impl Packed {
    fn new(node: u64, link: u64) -> Option<Self> {
        let link = match link {
            NO_LINK => u64::from(u32::MAX),
            l if l < u64::from(u32::MAX) => l,
            _ => return None,
        };
        (node < PACKED_IDS).then(|| Packed(Self::order_word(node) << 32 | link))
    }

    /// The key order of a node below [`PACKED_IDS`], in the low 32 bits.
    fn order_word(node: u64) -> u64 {
        (graph_file::key_order(node) >> 96) as u64
    }

    fn wide(self) -> (u128, u64) {
        (self.order(), self.link())
    }
}

impl LinkEntry for Packed {
    fn order(&self) -> u128 {
        u128::from(self.0 >> 32) << 96
    }
    fn link(&self) -> u64 {
        match self.0 as u32 {
            u32::MAX => NO_LINK,
            l => u64::from(l),
        }
    }
    fn sort(v: &mut Vec<Self>) {
        super::radix::sort_by_u64(v, |p| p.0);
    }
}

/// Sorted entries, grouped: one call of `f` per node, in key order, with its distinct
/// out-links ascending (NO_LINK sorts last and is dropped).
fn for_each_link_list<E: LinkEntry>(
    sorted: &[E],
    mut f: impl FnMut(u128, &mut dyn Iterator<Item = u64>) -> io::Result<()>,
) -> io::Result<()> {
    let mut i = 0;
    while i < sorted.len() {
        let order = sorted[i].order();
        let mut j = i;
        while j < sorted.len() && sorted[j].order() == order {
            j += 1;
        }
        let group = &sorted[i..j];
        let mut links = group
            .iter()
            .enumerate()
            .filter(|&(k, e)| e.link() != NO_LINK && (k == 0 || group[k - 1].link() != e.link()))
            .map(|(_, e)| e.link());
        f(order, &mut links)?;
        i = j;
    }
    Ok(())
}

/// The map's entries: packed while every edge fits, wide from the first that does not.
enum Entries {
    Packed(Vec<Packed>),
    Wide(Vec<(u128, u64)>),
}

impl Entries {
    fn len(&self) -> usize {
        match self {
            Entries::Packed(v) => v.len(),
            Entries::Wide(v) => v.len(),
        }
    }

    fn push_edge(&mut self, s: u64, d: u64) {
        if let Entries::Packed(v) = self {
            if let (Some(a), Some(b)) = (Packed::new(s, d), Packed::new(d, NO_LINK)) {
                v.push(a);
                v.push(b);
                return;
            }
        }
        let wide = self.wide();
        wide.push((graph_file::key_order(s), d));
        wide.push((graph_file::key_order(d), NO_LINK));
    }

    /// The entries as wide ones (converting them once).
    fn wide(&mut self) -> &mut Vec<(u128, u64)> {
        if let Entries::Packed(v) = self {
            *self = Entries::Wide(v.iter().map(|p| p.wide()).collect());
        }
        match self {
            Entries::Wide(v) => v,
            Entries::Packed(_) => unreachable!("just converted"),
        }
    }
}

/// `pagerank-build`: map an edge list (`src dst` lines) to one `(src, [dst, ...])` record
/// per node and map task (a target-only node gets an empty list); reduce each partition to
/// a binary graph partition.
pub struct BuildGraph;

impl BuildGraph {
    /// The usual case of the map, a split whose entries fit in the budget: sort them once
    /// and write R sorted segments of `(src, [dst, ...])` records directly, encoded as the
    /// generic buffer would encode them (postcard: a varint count, then varints).
    fn write_lists<E: LinkEntry>(
        mut pending: Vec<E>,
        partitions: u32,
        dir: &Path,
        name: &str,
    ) -> io::Result<Vec<SegmentInfo>> {
        E::sort(&mut pending);
        let mut parts: Vec<(Vec<u8>, u64)> = (0..partitions).map(|_| (Vec::new(), 0)).collect();
        let (mut key, mut value, mut links) = (Vec::new(), Vec::new(), Vec::new());
        for_each_link_list(&pending, |order, outs| {
            links.clear();
            links.extend(outs);
            value.clear();
            graph_file::put_varint(&mut value, links.len() as u64);
            for &l in &links {
                graph_file::put_varint(&mut value, l);
            }
            key_of_order(order, &mut key);
            let part = &mut parts[super::shuffle::partition_of(&key, partitions) as usize];
            super::shuffle::put_record(&mut part.0, &key, &value);
            part.1 += 1;
            Ok(())
        })?;
        drop(pending);
        let tmp = dir.join(format!("{name}.out.tmp"));
        let mut w = SegmentWriter::create(&tmp)?;
        let mut segments = Vec::with_capacity(partitions as usize);
        for (bytes, records) in &parts {
            segments.push(w.encoded_segment(bytes, *records)?);
        }
        w.finish()?;
        std::fs::rename(&tmp, dir.join(format!("{name}.out")))?;
        Ok(segments)
    }

    /// A split larger than the budget: hand the sorted entries to the spilling map buffer
    /// as one out-link list per node and chunk; it combines (concatenates) and spills.
    fn hand_lists(
        pending: &mut Vec<(u128, u64)>,
        buffer: &mut MapBuffer<Vec<u64>>,
    ) -> io::Result<()> {
        pending.sort_unstable();
        let mut key = Vec::with_capacity(16);
        for_each_link_list(pending, |order, outs| {
            key_of_order(order, &mut key);
            buffer.push_checked(&key, outs.collect())
        })?;
        pending.clear();
        Ok(())
    }
}

impl TaskRunner for BuildGraph {
    fn run_map(
        &self,
        split: &Split,
        partitions: u32,
        sort_mem: usize,
        dir: &Path,
        name: &str,
        cancel: &AtomicBool,
    ) -> io::Result<MapResult> {
        // In-mapper combining (Lin & Dyer 2010, §3.1.1): the split's edges are collected as
        // `(key order of src, dst)` entries, plus `(key order of dst, NO_LINK)` for a node
        // seen as a target, in one array of at most `sort_mem` bytes. If the split fits
        // (the usual case: a 32 MiB split of `src dst` lines needs about 80 MiB), the array
        // is sorted once and written out as R sorted segments with no hash table and no
        // allocation per node. Otherwise each full array is sorted and handed to the
        // spilling map buffer (then in chunks of half the budget, so array and buffer
        // together stay near `sort_mem`), which combines, spills and merges.
        //
        // The entries are packed into one word each while the ids allow (see `Packed`); the
        // budget is still counted in wide entries, so when the map spills does not depend on
        // the ids.
        let entry = std::mem::size_of::<(u128, u64)>();
        let mut limit = (sort_mem / entry).max(1 << 10);
        // About two entries per line of some 13 bytes.
        let expected = (split.end.saturating_sub(split.start) / 6) as usize;
        let mut pending = Entries::Packed(Vec::with_capacity(expected.min(limit)));
        let mut spilling: Option<MapBuffer<Vec<u64>>> = None;
        let mut emitted = 0u64;
        let mut error = None;
        let records_in = for_each_line(split, cancel, |r| {
            let Some((s, d)) = parse_edge(r.line) else {
                return;
            };
            if s == NO_LINK || d == NO_LINK {
                return;
            }
            pending.push_edge(s, d);
            emitted += 2;
            if pending.len() >= limit && error.is_none() {
                let buffer = spilling.get_or_insert_with(|| {
                    MapBuffer::new(partitions, Some(Arc::new(Concat)), sort_mem, dir, name)
                });
                let wide = pending.wide();
                if let Err(e) = Self::hand_lists(wide, buffer) {
                    error = Some(e);
                }
                limit = (sort_mem / entry / 2).max(1 << 10);
                wide.shrink_to(limit);
            }
        })?;
        if let Some(e) = error {
            return Err(e);
        }
        let (segments, spills) = match (spilling, pending) {
            (None, Entries::Packed(v)) => (Self::write_lists(v, partitions, dir, name)?, 0),
            (None, Entries::Wide(v)) => (Self::write_lists(v, partitions, dir, name)?, 0),
            (Some(mut buffer), mut pending) => {
                Self::hand_lists(pending.wide(), &mut buffer)?;
                let spills = buffer.spills();
                (buffer.finish()?, spills)
            }
        };
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
        inputs: &[(std::path::PathBuf, SegmentInfo)],
        out: &mut dyn Write,
        cancel: &AtomicBool,
    ) -> io::Result<Counters> {
        // The partition (1/R of the graph) is held in memory to build its destination
        // table, so the M fetched segments are read whole, decoded into flat arrays and
        // merged by key in memory: no per-record buffers, no per-node allocation.
        struct Run {
            order: u128,
            id: u64,
            links: std::ops::Range<usize>,
        }
        let mut flat: Vec<u64> = Vec::new();
        let mut sources: Vec<Vec<Run>> = Vec::with_capacity(inputs.len());
        for (path, seg) in inputs {
            let data = read_segment(path, *seg)?;
            let mut runs = Vec::new();
            let mut at = 0;
            while at < data.len() {
                let (key, value) = segment_record(&data, &mut at)?;
                let mut k = 0;
                let id = graph_file::varint(key, &mut k)?;
                let mut v = 0;
                let n = graph_file::varint(value, &mut v)?;
                if k != key.len() || n > value.len() as u64 {
                    return Err(graph_file::damaged("intermediate record"));
                }
                let start = flat.len();
                for _ in 0..n {
                    flat.push(graph_file::varint(value, &mut v)?);
                }
                if v != value.len() {
                    return Err(graph_file::damaged("intermediate out-link list"));
                }
                runs.push(Run {
                    order: graph_file::key_order(id),
                    id,
                    links: start..flat.len(),
                });
            }
            if runs.len() as u64 != seg.records {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: {} records, expected {}",
                        path.display(),
                        runs.len(),
                        seg.records
                    ),
                ));
            }
            sources.push(runs);
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
        }
        // A k-way merge by key (equal keys in map order): the partition's nodes in shuffle
        // key order, each with its out-links gathered into `links`.
        let mut ids: Vec<u64> = Vec::new();
        let mut offsets: Vec<usize> = vec![0];
        let mut links: Vec<u64> = Vec::with_capacity(flat.len());
        let mut cursor = vec![0usize; sources.len()];
        let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(u128, usize)>> = sources
            .iter()
            .enumerate()
            .filter_map(|(s, runs)| runs.first().map(|r| std::cmp::Reverse((r.order, s))))
            .collect();
        let mut last = None;
        while let Some(std::cmp::Reverse((order, s))) = heap.pop() {
            let run = &sources[s][cursor[s]];
            if last != Some(order) {
                if last.is_some() {
                    offsets.push(links.len());
                }
                ids.push(run.id);
                last = Some(order);
                if ids.len().is_multiple_of(65_536) && cancel.load(Ordering::Relaxed) {
                    return Err(cancelled());
                }
            }
            links.extend_from_slice(&flat[run.links.clone()]);
            cursor[s] += 1;
            if let Some(next) = sources[s].get(cursor[s]) {
                heap.push(std::cmp::Reverse((next.order, s)));
            }
        }
        offsets.push(links.len());
        drop((flat, sources));
        if links.len() > u32::MAX as usize {
            return Err(io::Error::other("more than 2^32 out-links in a partition"));
        }
        // The destination table: the distinct targets in shuffle key order. One sort of
        // (key order, position) pairs gives both the table and each link's index in it;
        // packed into one word and radix sorted when every target is below 2^28 (as the
        // map's entries, see `Packed`).
        let mut dests: Vec<u64> = Vec::new();
        let mut index = vec![0u32; links.len()];
        let mut previous = None;
        let mut visit = |order: u128, pos: u32| {
            if previous != Some(order) {
                dests.push(links[pos as usize]);
                previous = Some(order);
            }
            index[pos as usize] = (dests.len() - 1) as u32;
        };
        if links.iter().all(|&d| d < PACKED_IDS) {
            let mut keyed: Vec<u64> = links
                .iter()
                .enumerate()
                .map(|(pos, &d)| Packed::order_word(d) << 32 | pos as u64)
                .collect();
            super::radix::sort_by_u64(&mut keyed, |&w| w);
            for w in keyed {
                visit(u128::from(w >> 32), w as u32);
            }
        } else {
            let mut keyed: Vec<(u128, u32)> = links
                .iter()
                .enumerate()
                .map(|(pos, &d)| (graph_file::key_order(d), pos as u32))
                .collect();
            keyed.sort_unstable();
            for (order, pos) in keyed {
                visit(order, pos);
            }
        }
        let mut file = Vec::with_capacity(dests.len() * 4 + ids.len() * 12 + links.len() * 4);
        graph_file::write_destinations(&mut file, &dests);
        let mut dangling = 0u64;
        let mut node_links: Vec<u32> = Vec::new();
        for (n, &id) in ids.iter().enumerate() {
            node_links.clear();
            node_links.extend_from_slice(&index[offsets[n]..offsets[n + 1]]);
            node_links.sort_unstable();
            node_links.dedup();
            if node_links.is_empty() {
                dangling += 1;
            }
            graph_file::write_node(&mut file, id, f64::NAN, &node_links);
        }
        out.write_all(&file)?;
        out.flush()?;
        let mut counters = Counters::new();
        counters.insert("nodes".into(), ids.len() as f64);
        counters.insert("dangling_nodes".into(), dangling as f64);
        Ok(counters)
    }
}

/// One parsed text rank line, `node<TAB>rank` (the final output of [`run_pagerank`]).
pub fn parse_rank_line(line: &[u8]) -> Option<(u64, f64)> {
    let s = std::str::from_utf8(line).ok()?;
    let (node, rank) = s.split_once('\t')?;
    Some((node.parse().ok()?, rank.parse().ok()?))
}

pub(crate) fn read_partition(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "attempt cancelled")
}

/// The rank file of one graph partition (the output of a `pagerank` iteration's reduce
/// task): `varint(count)`, then `count` ranks as f64-le, one per node of the partition, in
/// the partition's node order. Only ranks change between iterations, so only they are
/// written; the structure stays in the build's partitions.
pub mod rank_file {
    use super::graph_file::{damaged, put_varint, varint};
    use std::io;

    /// Encode `ranks`.
    pub fn write(out: &mut Vec<u8>, ranks: &[f64]) {
        put_varint(out, ranks.len() as u64);
        out.reserve(ranks.len() * 8);
        for r in ranks {
            out.extend_from_slice(&r.to_le_bytes());
        }
    }

    /// Decode a rank file that must hold `nodes` ranks.
    pub fn read(b: &[u8], nodes: usize) -> io::Result<Vec<f64>> {
        let mut pos = 0;
        let n = varint(b, &mut pos)?;
        if n != nodes as u64 || b.len() - pos != nodes * 8 {
            return Err(damaged(&format!(
                "a rank file of {} bytes for {nodes} nodes (it says {n})",
                b.len()
            )));
        }
        Ok(b[pos..]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }
}

/// Where one node's record lies in its partition's bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeAt {
    pub(crate) id: u64,
    pub(crate) rank: f64,
    pub(crate) key: (usize, usize),
    pub(crate) links: usize,
    pub(crate) degree: usize,
}

/// A graph partition read and parsed: its bytes, its destination table, and where each
/// node's key and out-links are.
pub(crate) struct GraphPartition {
    bytes: Vec<u8>,
    pub(crate) dests: Vec<u64>,
    pub(crate) nodes: Vec<NodeAt>,
}

impl GraphPartition {
    fn parse(bytes: Vec<u8>) -> io::Result<Self> {
        let mut pos = 0;
        let dests = graph_file::read_destinations(&bytes, &mut pos)?;
        let mut nodes = Vec::new();
        while pos < bytes.len() {
            let start = pos;
            let node = graph_file::read_node(&bytes, &mut pos)?;
            nodes.push(NodeAt {
                id: node.id,
                rank: node.rank,
                key: (start, start + node.key.len()),
                links: pos - node.links.len(),
                degree: node.degree as usize,
            });
        }
        Ok(GraphPartition {
            bytes,
            dests,
            nodes,
        })
    }

    pub(crate) fn key(&self, node: &NodeAt) -> &[u8] {
        &self.bytes[node.key.0..node.key.1]
    }

    pub(crate) fn links(&self, node: &NodeAt) -> impl Iterator<Item = u32> + '_ {
        graph_file::out_links(&self.bytes[node.links..node.links + node.degree * 4])
    }

    /// Every node's rank: from the rank file at `ranks` if given, else the partition's own
    /// (1/n where not yet ranked).
    pub(crate) fn ranks(&self, ranks: Option<&Path>, n: f64) -> io::Result<Vec<f64>> {
        match ranks {
            Some(path) => rank_file::read(&read_partition(path)?, self.nodes.len())
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            None => Ok(self
                .nodes
                .iter()
                .map(|node| {
                    if node.rank.is_nan() {
                        1.0 / n
                    } else {
                        node.rank
                    }
                })
                .collect()),
        }
    }
}

/// The file's identity and version: length, inode, modification time.
type FileStamp = (u64, u64, i64, i64);

/// Graph partitions parsed by this process, with the stamp of the file each was read from.
#[allow(clippy::type_complexity)]
static PARTITIONS: std::sync::Mutex<Vec<(std::path::PathBuf, FileStamp, Arc<GraphPartition>)>> =
    std::sync::Mutex::new(Vec::new());

/// Graph partition `path`, parsed, from this process's cache of loop-invariant data
/// (HaLoop: Bu, Howe, Balazinska & Ernst, "HaLoop: Efficient Iterative Data Processing on
/// Large Clusters", VLDB 2010, §4): the structure is the same in every iteration, so a
/// worker that has read a partition once keeps it parsed instead of reading and decoding
/// it again in each map and reduce task. An entry is used only while the file has the
/// same length, inode and modification time (a rewritten file is read again); the cache
/// holds one graph directory at a time. It is a cache only: a worker that never read the
/// partition, or a new worker after a crash, reads the file.
pub(crate) fn cached_partition(path: &Path) -> io::Result<Arc<GraphPartition>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let stamp = (meta.len(), meta.ino(), meta.mtime(), meta.mtime_nsec());
    let lock = || PARTITIONS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, g)) = lock().iter().find(|(p, s, _)| p == path && *s == stamp) {
        return Ok(g.clone());
    }
    let parsed = Arc::new(
        GraphPartition::parse(read_partition(path)?)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
    );
    let mut cache = lock();
    cache.retain(|(p, _, _)| p.parent() == path.parent() && p != path);
    cache.push((path.to_path_buf(), stamp, parsed.clone()));
    Ok(parsed)
}

/// One PageRank iteration over binary graph partitions (see the section comment): a
/// [`TaskRunner`] of its own, because its map combines into a dense array and its reduce
/// reads a side input.
pub struct RankIteration {
    n: f64,
    damping: f64,
    dangling: f64,
    /// The build's partitions (the structure).
    graph: std::path::PathBuf,
    /// The previous iteration's rank files; `None` in the first iteration.
    ranks: Option<std::path::PathBuf>,
}

impl TaskRunner for RankIteration {
    fn run_map(
        &self,
        split: &Split,
        partitions: u32,
        _sort_mem: usize,
        dir: &Path,
        name: &str,
        cancel: &AtomicBool,
    ) -> io::Result<MapResult> {
        if split.start != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: a graph partition is read whole, not from byte {}",
                    split.path.display(),
                    split.start
                ),
            ));
        }
        // The input is the previous iteration's rank files (the build's partitions in
        // the first iteration); the structure comes from the partition of the same name.
        let file = split.path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a split without a file name")
        })?;
        let graph = cached_partition(&self.graph.join(file))?;
        let ranks = graph.ranks(self.ranks.as_ref().map(|_| split.path.as_path()), self.n)?;
        let dests = &graph.dests;
        // In-mapper combining: one sum per destination, in a dense array.
        let mut sums = vec![0.0f64; dests.len()];
        let mut emitted = 0u64;
        for (i, (node, rank)) in graph.nodes.iter().zip(&ranks).enumerate() {
            if node.degree > 0 {
                let share = rank / node.degree as f64;
                for l in graph.links(node) {
                    *sums
                        .get_mut(l as usize)
                        .ok_or_else(|| graph_file::damaged("link past the destination table"))? +=
                        share;
                }
                emitted += node.degree as u64;
            }
            if i % 65_536 == 65_535 && cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
        }
        // The table is in key order, so each partition's records, appended in table
        // order, form a sorted segment.
        let mut parts: Vec<(Vec<u8>, u64)> = (0..partitions)
            .map(|_| {
                (
                    Vec::with_capacity(dests.len() * 14 / partitions as usize),
                    0,
                )
            })
            .collect();
        let mut key = Vec::with_capacity(10);
        for (&d, sum) in dests.iter().zip(&sums) {
            key.clear();
            graph_file::put_varint(&mut key, d);
            let part = &mut parts[super::shuffle::partition_of(&key, partitions) as usize];
            super::shuffle::put_record(&mut part.0, &key, &sum.to_le_bytes());
            part.1 += 1;
        }
        let tmp = dir.join(format!("{name}.out.tmp"));
        let mut w = SegmentWriter::create(&tmp)?;
        let mut segments = Vec::with_capacity(partitions as usize);
        for (bytes, records) in &parts {
            segments.push(w.encoded_segment(bytes, *records)?);
        }
        w.finish()?;
        std::fs::rename(&tmp, dir.join(format!("{name}.out")))?;
        Ok(MapResult {
            segments,
            records_in: graph.nodes.len() as u64,
            emitted,
            spills: 0,
        })
    }

    fn run_reduce(
        &self,
        partition: u32,
        inputs: &[(std::path::PathBuf, SegmentInfo)],
        out: &mut dyn Write,
        cancel: &AtomicBool,
    ) -> io::Result<Counters> {
        let file = format!("part-{partition:05}");
        let side = self.graph.join(&file);
        let graph = cached_partition(&side)?;
        let old = graph.ranks(
            self.ranks.as_ref().map(|r| r.join(&file)).as_deref(),
            self.n,
        )?;
        let nodes = &graph.nodes;
        let missing = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a rank contribution for a node missing from {}",
                    side.display()
                ),
            )
        };
        // Each fetched segment is sorted by key, like the partition's nodes: one linear
        // merge per segment, in map order, adds the contributions in the same order as a
        // k-way merge would.
        let mut sums = vec![0.0f64; nodes.len()];
        for (path, seg) in inputs {
            let data = read_segment(path, *seg)?;
            let mut at = 0;
            let mut i = 0;
            let mut records = 0u64;
            while at < data.len() {
                let (key, value) = segment_record(&data, &mut at)?;
                while i < nodes.len() && graph.key(&nodes[i]) < key {
                    i += 1;
                }
                if i == nodes.len() || graph.key(&nodes[i]) != key {
                    return Err(missing());
                }
                sums[i] += decode_value::<f64>(value)?;
                records += 1;
            }
            if records != seg.records {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: {records} records, expected {}",
                        path.display(),
                        seg.records
                    ),
                ));
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
        }
        let (mut delta, mut dangling) = (0.0, 0.0);
        let mut ranks = Vec::with_capacity(nodes.len());
        for ((node, sum), old) in nodes.iter().zip(&sums).zip(&old) {
            let rank =
                (1.0 - self.damping) / self.n + self.damping * (sum + self.dangling / self.n);
            delta += (rank - old).abs();
            if node.degree == 0 {
                dangling += rank;
            }
            ranks.push(rank);
        }
        let mut rec = Vec::with_capacity(ranks.len() * 8 + 10);
        rank_file::write(&mut rec, &ranks);
        out.write_all(&rec)?;
        out.flush()?;
        let mut counters = Counters::new();
        counters.insert("delta".into(), delta);
        counters.insert("dangling".into(), dangling);
        Ok(counters)
    }
}

/// A whole fetched segment, in memory.
fn read_segment(path: &Path, seg: SegmentInfo) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(seg.offset))?;
    let mut data = Vec::with_capacity(seg.len as usize);
    f.take(seg.len).read_to_end(&mut data)?;
    if data.len() as u64 != seg.len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{}: short segment", path.display()),
        ));
    }
    Ok(data)
}

/// The record at `*at` of a segment: `varint(len) key varint(len) value`.
fn segment_record<'a>(data: &'a [u8], at: &mut usize) -> io::Result<(&'a [u8], &'a [u8])> {
    let field = |at: &mut usize| -> io::Result<&'a [u8]> {
        let n = graph_file::varint(data, at)? as usize;
        let f = data.get(*at..at.saturating_add(n)).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "truncated segment record")
        })?;
        *at += n;
        Ok(f)
    };
    let key = field(at)?;
    let value = field(at)?;
    Ok((key, value))
}

/// Whether a job reads whole input files as its splits (binary inputs).
pub fn whole_file_input(job: &str) -> bool {
    job == "pagerank" || job == super::iterate::JOB
}

/// Reference PageRank on an edge list, with the same formula, iterating until the L1
/// change is below `tolerance` or `max_iterations` pass. Returns ranks and iterations.
pub fn pagerank_reference(
    input: &Path,
    damping: f64,
    tolerance: f64,
    max_iterations: u32,
) -> io::Result<(BTreeMap<u64, f64>, u32)> {
    let mut adj: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    read_lines(input, |r| {
        let mut it = words(r.line);
        if let (Some((_, s)), Some((_, d))) = (it.next(), it.next()) {
            if let (Ok(s), Ok(d)) = (s.parse::<u64>(), d.parse::<u64>()) {
                adj.entry(s).or_default().push(d);
                adj.entry(d).or_default();
            }
        }
    })?;
    let ids: Vec<u64> = adj.keys().copied().collect();
    let index: BTreeMap<u64, usize> = ids.iter().enumerate().map(|(i, &v)| (v, i)).collect();
    let links: Vec<Vec<usize>> = adj
        .values()
        .map(|o| {
            let mut o: Vec<usize> = o.iter().map(|d| index[d]).collect();
            o.sort_unstable();
            o.dedup();
            o
        })
        .collect();
    let (ranks, iterations) = pagerank_dense(&links, damping, tolerance, max_iterations);
    Ok((ids.into_iter().zip(ranks).collect(), iterations))
}

/// PageRank over dense adjacency lists (the single-threaded COST baseline's core).
pub fn pagerank_dense(
    links: &[Vec<usize>],
    damping: f64,
    tolerance: f64,
    max_iterations: u32,
) -> (Vec<f64>, u32) {
    let n = links.len() as f64;
    let mut rank = vec![1.0 / n; links.len()];
    let mut next = vec![0.0; links.len()];
    let mut iterations = 0;
    while iterations < max_iterations {
        iterations += 1;
        let dangling: f64 = links
            .iter()
            .zip(&rank)
            .filter(|(o, _)| o.is_empty())
            .map(|(_, r)| r)
            .sum();
        next.iter_mut().for_each(|x| *x = 0.0);
        for (u, outs) in links.iter().enumerate() {
            if !outs.is_empty() {
                let share = rank[u] / outs.len() as f64;
                for &v in outs {
                    next[v] += share;
                }
            }
        }
        let mut delta = 0.0;
        for (r, s) in rank.iter_mut().zip(&next) {
            let new = (1.0 - damping) / n + damping * (s + dangling / n);
            delta += (new - *r).abs();
            *r = new;
        }
        if delta < tolerance {
            break;
        }
    }
    (rank, iterations)
}

/// What an iterated PageRank run did.
#[derive(Debug, Clone)]
pub struct PageRankRun {
    /// Vertices.
    pub nodes: f64,
    /// Iterations run.
    pub iterations: u32,
    /// The L1 change of the last iteration.
    pub delta: f64,
    /// The checkpoint the last epoch of the iterations started from (0: the build).
    pub resumed_from: u32,
    /// The directory holding the final ranks (`node<TAB>rank` lines).
    pub ranks: std::path::PathBuf,
}

/// A function that runs one MapReduce job to completion: (job, params, input, output,
/// label) → the job's counters.
pub type StageRunner<'a> =
    dyn FnMut(&str, Params, &Path, &Path, &str) -> anyhow::Result<super::task::Counters> + 'a;

/// PageRank in two stages of one session: build the partitioned binary graph, then run
/// every iteration in one job of persistent workers ([`super::iterate`]) until the L1
/// change is below `tolerance` or `max_iterations` pass, checkpointing the ranks every
/// `checkpoint_every` iterations. The workers write the final ranks as text, each its own
/// partitions. Stage outputs go under `output` (`graph`, `final`, and `ranks`).
pub fn run_pagerank(
    input: &Path,
    output: &Path,
    damping: f64,
    tolerance: f64,
    max_iterations: u32,
    checkpoint_every: u32,
    stage: &mut StageRunner<'_>,
) -> anyhow::Result<PageRankRun> {
    std::fs::create_dir_all(output)?;
    let graph = output.join("graph");
    let ranks = output.join("ranks");
    let built = stage("pagerank-build", Params::new(), input, &graph, "graph")?;
    let nodes = built.get("nodes").copied().unwrap_or(0.0);
    if nodes < 1.0 {
        anyhow::bail!("the graph in {} has no edges", input.display());
    }
    // The build's ranks are 1/N each, so the rank on dangling nodes is their share.
    let dangling = built.get("dangling_nodes").copied().unwrap_or(0.0) / nodes;
    let params: Params = [
        ("nodes", format!("{nodes}")),
        ("damping", format!("{damping}")),
        ("dangling", format!("{dangling}")),
        ("tolerance", format!("{tolerance}")),
        ("max_iterations", format!("{max_iterations}")),
        ("checkpoint_every", format!("{checkpoint_every}")),
        ("graph", graph.to_string_lossy().into_owned()),
        ("text", ranks.to_string_lossy().into_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let last = output.join("final");
    let c = stage(super::iterate::JOB, params, &graph, &last, "iterations")?;
    let iterations = c.get("iterations").copied().unwrap_or(0.0) as u32;
    let delta = c.get("delta").copied().unwrap_or(0.0);
    let resumed_from = c.get("resumed_from").copied().unwrap_or(0.0) as u32;
    Ok(PageRankRun {
        nodes,
        iterations,
        delta,
        resumed_from,
        ranks,
    })
}

#[cfg(test)]
mod tests {
    use super::graph_file;
    use proptest::prelude::*;

    proptest! {
        /// The destination table's sort key orders ids exactly as the shuffle orders their
        /// encoded keys (bytewise), which the reducer's merge-join relies on.
        #[test]
        fn packed_entries_order_as_wide_ones(
            a in (0u64..1 << 28, prop_oneof![0u64..u64::from(u32::MAX), Just(super::NO_LINK)]),
            b in (0u64..1 << 28, prop_oneof![0u64..u64::from(u32::MAX), Just(super::NO_LINK)]),
        ) {
            use super::{LinkEntry, Packed};
            let (pa, pb) = (Packed::new(a.0, a.1).unwrap(), Packed::new(b.0, b.1).unwrap());
            let wide = |(n, l): (u64, u64)| (graph_file::key_order(n), l);
            prop_assert_eq!(pa.wide(), wide(a));
            prop_assert_eq!(pa.order(), graph_file::key_order(a.0));
            prop_assert_eq!(pa.cmp(&pb), wide(a).cmp(&wide(b)));
        }

        #[test]
        fn ids_past_the_packed_range_are_not_packed(n in 1u64 << 28.., l in u64::from(u32::MAX)..) {
            prop_assert!(super::Packed::new(n, 0).is_none());
            prop_assert!(l == super::NO_LINK || super::Packed::new(0, l).is_none());
        }

        #[test]
        fn key_order_is_the_shuffle_order(a in any::<u64>(), b in any::<u64>()) {
            let (mut ka, mut kb) = (Vec::new(), Vec::new());
            graph_file::put_varint(&mut ka, a);
            graph_file::put_varint(&mut kb, b);
            prop_assert_eq!(&ka, &postcard::to_allocvec(&a).unwrap());
            prop_assert_eq!(
                graph_file::key_order(a).cmp(&graph_file::key_order(b)),
                ka.cmp(&kb)
            );
        }

        /// A node record reads back as written, and every truncation of it is an error, not
        /// a panic.
        #[test]
        fn node_records_round_trip_and_truncation_is_an_error(
            id in any::<u64>(),
            rank in any::<f64>(),
            links in proptest::collection::vec(any::<u32>(), 0..20),
        ) {
            let mut b = Vec::new();
            graph_file::write_node(&mut b, id, rank, &links);
            let mut pos = 0;
            let node = graph_file::read_node(&b, &mut pos).unwrap();
            prop_assert_eq!(pos, b.len());
            prop_assert_eq!(node.id, id);
            prop_assert_eq!(node.rank.to_bits(), rank.to_bits());
            prop_assert_eq!(graph_file::out_links(node.links).collect::<Vec<_>>(), links);
            for cut in 0..b.len() {
                let mut pos = 0;
                prop_assert!(graph_file::read_node(&b[..cut], &mut pos).is_err());
            }
        }

        /// The build's edge parser reads a line exactly as `words` and `parse::<u64>` do.
        #[test]
        fn parse_edge_agrees_with_words_and_parse(
            line in "[ \t]{0,2}[+0-9a]{0,22}[ \t]{1,2}[+0-9]{0,22}( x)?",
        ) {
            let mut it = super::words(line.as_bytes());
            let want = match (it.next(), it.next()) {
                (Some((_, s)), Some((_, d))) => s.parse::<u64>().ok().zip(d.parse::<u64>().ok()),
                _ => None,
            };
            prop_assert_eq!(super::parse_edge(line.as_bytes()), want);
        }

        /// An intermediate out-link list written by the build's direct path decodes as the
        /// postcard `Vec<u64>` that the spilling path writes.
        #[test]
        fn direct_link_lists_are_postcard(links in proptest::collection::vec(any::<u64>(), 0..20)) {
            let mut b = Vec::new();
            graph_file::put_varint(&mut b, links.len() as u64);
            for &l in &links {
                graph_file::put_varint(&mut b, l);
            }
            prop_assert_eq!(b, postcard::to_allocvec(&links).unwrap());
        }

        /// A rank file reads back as written; one of the wrong size or count is an error.
        #[test]
        fn rank_files_round_trip_and_damage_is_an_error(
            ranks in proptest::collection::vec(any::<f64>(), 0..20),
            cut in 0usize..200,
        ) {
            let mut b = Vec::new();
            super::rank_file::write(&mut b, &ranks);
            let back = super::rank_file::read(&b, ranks.len()).unwrap();
            prop_assert_eq!(
                back.iter().map(|r| r.to_bits()).collect::<Vec<_>>(),
                ranks.iter().map(|r| r.to_bits()).collect::<Vec<_>>()
            );
            prop_assert!(super::rank_file::read(&b, ranks.len() + 1).is_err());
            if cut < b.len() {
                prop_assert!(super::rank_file::read(&b[..cut], ranks.len()).is_err());
            }
        }
    }

    /// The partition cache serves a file until it is replaced, then reads the new one.
    #[test]
    fn the_partition_cache_reads_a_replaced_file_again() {
        let dir = std::env::temp_dir().join(format!("synod-mr-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("part-00000");
        let write = |id: u64| {
            let mut b = Vec::new();
            graph_file::write_destinations(&mut b, &[id]);
            graph_file::write_node(&mut b, id, 0.5, &[0]);
            let tmp = dir.join("tmp");
            std::fs::write(&tmp, &b).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        write(7);
        let a = super::cached_partition(&path).unwrap();
        assert_eq!(a.dests, [7]);
        assert!(std::sync::Arc::ptr_eq(
            &a,
            &super::cached_partition(&path).unwrap()
        ));
        write(9);
        let b = super::cached_partition(&path).unwrap();
        assert_eq!(b.dests, [9]);
        assert_eq!(b.nodes[0].id, 9);
        std::fs::write(&path, b"\x05").unwrap();
        assert!(super::cached_partition(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
