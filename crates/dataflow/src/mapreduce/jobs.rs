//! The built-in jobs (word count, inverted index, PageRank, log analysis) and, beside
//! each, a simple single-threaded reference implementation that the tests compare with.

use super::api::{Combiner, MapOutput, Mapper, Record, ReduceOutput, Reducer};
use super::task::{read_lines, Job, TaskRunner};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

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
        "pagerank-build" => Box::new(Job::new(BuildMap, BuildReduce).with_combiner(Concat)),
        "pagerank" => {
            let n: f64 = param(params, "nodes")?;
            let damping: f64 = param(params, "damping")?;
            let dangling: f64 = param(params, "dangling")?;
            if !(n >= 1.0 && (0.0..=1.0).contains(&damping) && dangling >= 0.0) {
                return Err(JobError::Param {
                    name: "nodes/damping/dangling".into(),
                    problem: "out of range".into(),
                });
            }
            Box::new(
                Job::new(
                    RankMap { n },
                    RankReduce {
                        n,
                        damping,
                        dangling,
                    },
                )
                .with_combiner(RankCombine),
            )
        }
        other => return Err(JobError::Unknown(other.to_string())),
    })
}

fn words(line: &[u8]) -> impl Iterator<Item = (usize, &str)> {
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
        Some((
            start,
            std::str::from_utf8(&line[start..i]).unwrap_or("\u{fffd}"),
        ))
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
            out.emit(w, 1);
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
// PageRank (Page et al. 1999) as iterated MapReduce jobs. `pagerank-build` turns an edge
// list (`src dst` lines) into adjacency lines `node<TAB><TAB>out,out`; each `pagerank`
// iteration maps `node<TAB>rank<TAB>outs` (an empty rank means 1/N) to contributions and
// reduces to the next ranks:
//   r'(v) = (1-d)/N + d·(Σ_{u→v} r(u)/outdeg(u) + D/N)
// where D is the rank held by dangling nodes (no out-links), spread evenly (the
// "random jump" treatment). Counters carry D for the next iteration and the L1 change.

/// Build's mapper: an edge `src dst` → `(src, [dst])` and `(dst, [])`.
pub struct BuildMap;
impl Mapper for BuildMap {
    type Key = u64;
    type Value = Vec<u64>;
    fn map(&self, r: Record<'_>, out: &mut MapOutput<'_, Vec<u64>>) {
        let mut it = words(r.line);
        let (Some((_, s)), Some((_, d))) = (it.next(), it.next()) else {
            return;
        };
        let (Ok(s), Ok(d)) = (s.parse::<u64>(), d.parse::<u64>()) else {
            return;
        };
        out.emit(&s, vec![d]);
        out.emit(&d, Vec::new());
    }
}

/// Concatenates out-link lists.
pub struct Concat;
impl Combiner<Vec<u64>> for Concat {
    fn combine(&self, acc: &mut Vec<u64>, mut next: Vec<u64>) {
        acc.append(&mut next);
    }
}

fn join_ids(ids: &[u64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s
}

/// Build's reducer: sorted, de-duplicated out-links.
pub struct BuildReduce;
impl Reducer for BuildReduce {
    type Key = u64;
    type Value = Vec<u64>;
    fn reduce(
        &self,
        key: u64,
        values: &mut dyn Iterator<Item = Vec<u64>>,
        out: &mut ReduceOutput<'_>,
    ) {
        let mut outs: Vec<u64> = values.flatten().collect();
        outs.sort_unstable();
        outs.dedup();
        out.count("nodes", 1.0);
        if outs.is_empty() {
            out.count("dangling_nodes", 1.0);
        }
        writeln!(out, "{key}\t\t{}", join_ids(&outs));
    }
}

/// A PageRank value: the sum of contributions, and (once per node) its old rank and links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankValue {
    /// Sum of rank contributions from in-links.
    pub sum: f64,
    /// The node's own line: old rank and out-links.
    pub node: Option<(f64, Vec<u64>)>,
}

/// One parsed adjacency line.
pub fn parse_rank_line(line: &[u8], n: f64) -> Option<(u64, f64, Vec<u64>)> {
    let s = std::str::from_utf8(line).ok()?;
    let mut f = s.split('\t');
    let node = f.next()?.parse().ok()?;
    let rank = match f.next()? {
        "" => 1.0 / n,
        r => r.parse().ok()?,
    };
    let outs = match f.next() {
        None | Some("") => Vec::new(),
        Some(o) => o
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?,
    };
    Some((node, rank, outs))
}

/// A PageRank iteration's mapper.
pub struct RankMap {
    n: f64,
}
impl Mapper for RankMap {
    type Key = u64;
    type Value = RankValue;
    fn map(&self, r: Record<'_>, out: &mut MapOutput<'_, RankValue>) {
        let Some((node, rank, outs)) = parse_rank_line(r.line, self.n) else {
            return;
        };
        if !outs.is_empty() {
            let share = rank / outs.len() as f64;
            for d in &outs {
                out.emit(
                    d,
                    RankValue {
                        sum: share,
                        node: None,
                    },
                );
            }
        }
        out.emit(
            &node,
            RankValue {
                sum: 0.0,
                node: Some((rank, outs)),
            },
        );
    }
}

/// Adds contributions and keeps the node's own line.
pub struct RankCombine;
impl Combiner<RankValue> for RankCombine {
    fn combine(&self, acc: &mut RankValue, next: RankValue) {
        acc.sum += next.sum;
        if acc.node.is_none() {
            acc.node = next.node;
        }
    }
}

/// A PageRank iteration's reducer.
pub struct RankReduce {
    n: f64,
    damping: f64,
    dangling: f64,
}
impl Reducer for RankReduce {
    type Key = u64;
    type Value = RankValue;
    fn reduce(
        &self,
        key: u64,
        values: &mut dyn Iterator<Item = RankValue>,
        out: &mut ReduceOutput<'_>,
    ) {
        let mut sum = 0.0;
        let mut node = None;
        for v in values {
            sum += v.sum;
            if node.is_none() {
                node = v.node;
            }
        }
        let (old, outs) = node.unwrap_or((1.0 / self.n, Vec::new()));
        let rank = (1.0 - self.damping) / self.n + self.damping * (sum + self.dangling / self.n);
        out.count("delta", (rank - old).abs());
        if outs.is_empty() {
            out.count("dangling", rank);
        }
        writeln!(out, "{key}\t{rank}\t{}", join_ids(&outs));
    }
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
    /// The directory holding the final ranks (`node<TAB>rank<TAB>outs` lines).
    pub ranks: std::path::PathBuf,
}

/// A function that runs one MapReduce job to completion: (job, params, input, output,
/// label) → the job's counters.
pub type StageRunner<'a> =
    dyn FnMut(&str, Params, &Path, &Path, &str) -> anyhow::Result<super::task::Counters> + 'a;

/// PageRank as a chain of jobs: build the adjacency lists, then iterate until the L1 change
/// is below `tolerance` or `max_iterations` pass. Stage outputs go under `output`
/// (`graph`, `iter-001`, ...).
pub fn run_pagerank(
    input: &Path,
    output: &Path,
    damping: f64,
    tolerance: f64,
    max_iterations: u32,
    stage: &mut StageRunner<'_>,
) -> anyhow::Result<PageRankRun> {
    std::fs::create_dir_all(output)?;
    let graph = output.join("graph");
    let built = stage("pagerank-build", Params::new(), input, &graph, "graph")?;
    let nodes = built.get("nodes").copied().unwrap_or(0.0);
    if nodes < 1.0 {
        anyhow::bail!("the graph in {} has no edges", input.display());
    }
    let mut dangling = built.get("dangling_nodes").copied().unwrap_or(0.0) / nodes;
    let mut current = graph;
    let mut iterations = 0;
    let mut delta = f64::INFINITY;
    while iterations < max_iterations && delta >= tolerance {
        iterations += 1;
        let out = output.join(format!("iter-{iterations:03}"));
        let params: Params = [
            ("nodes".to_string(), format!("{nodes}")),
            ("damping".to_string(), format!("{damping}")),
            ("dangling".to_string(), format!("{dangling}")),
        ]
        .into_iter()
        .collect();
        let c = stage(
            "pagerank",
            params,
            &current,
            &out,
            &format!("iter {iterations}"),
        )?;
        delta = c.get("delta").copied().unwrap_or(0.0);
        dangling = c.get("dangling").copied().unwrap_or(0.0);
        current = out;
    }
    Ok(PageRankRun {
        nodes,
        iterations,
        delta,
        ranks: current,
    })
}
