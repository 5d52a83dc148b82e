//! Tuned single-threaded programs for the COST comparison (McSherry, Isard & Murray,
//! "Scalability! But at what COST?", HotOS 2015): word count with one hash table, and
//! PageRank over compressed sparse rows. They do the same work as the jobs, with none of
//! the distribution.

// Not protocol code: a hash table with a fixed hasher, and files.
#![allow(clippy::disallowed_types)]

use super::shuffle::FxHasher;
use super::task::list_inputs;
use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Call `f` on every whole line of every input file, reading in large blocks.
fn for_each_line(dir: &Path, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 8 << 20];
    for path in list_inputs(dir)? {
        let mut file = File::open(path)?;
        let mut filled = 0;
        loop {
            let n = file.read(&mut buf[filled..])?;
            let end = filled + n;
            let last_newline = buf[..end].iter().rposition(|&b| b == b'\n');
            let cut = match (n, last_newline) {
                (0, _) => end,
                (_, Some(i)) => i + 1,
                (_, None) if end == buf.len() => {
                    buf.resize(buf.len() * 2, 0);
                    filled = end;
                    continue;
                }
                (_, None) => {
                    filled = end;
                    continue;
                }
            };
            for line in buf[..cut].split(|&b| b == b'\n') {
                if !line.is_empty() {
                    f(line);
                }
            }
            buf.copy_within(cut..end, 0);
            filled = end - cut;
            if n == 0 {
                break;
            }
        }
    }
    Ok(())
}

/// Word count in one thread; writes `word<TAB>count` lines sorted by word. Returns the
/// number of distinct words.
pub fn wordcount(input: &Path, output: &Path) -> io::Result<usize> {
    let mut counts: FxMap<Box<[u8]>, u64> = FxMap::default();
    for_each_line(input, |line| {
        for w in line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
        {
            if let Some(c) = counts.get_mut(w) {
                *c += 1;
            } else {
                counts.insert(w.into(), 1);
            }
        }
    })?;
    let mut all: Vec<(Box<[u8]>, u64)> = counts.into_iter().collect();
    all.sort_unstable();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(output)?);
    for (w, n) in &all {
        out.write_all(w)?;
        writeln!(out, "\t{n}")?;
    }
    out.flush()?;
    Ok(all.len())
}

/// PageRank in one thread over compressed sparse rows, with the jobs' formula and
/// stopping rule. Writes `node<TAB>rank` lines sorted by node; returns (nodes, edges,
/// iterations).
pub fn pagerank(
    input: &Path,
    output: &Path,
    damping: f64,
    tolerance: f64,
    max_iterations: u32,
) -> io::Result<(usize, usize, u32)> {
    let mut edges: Vec<(u64, u64)> = Vec::new();
    for_each_line(input, |line| {
        let mut it = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty());
        let parse =
            |w: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(w?).ok()?.parse().ok() };
        if let (Some(s), Some(d)) = (parse(it.next()), parse(it.next())) {
            edges.push((s, d));
        }
    })?;
    edges.sort_unstable();
    edges.dedup();
    let mut ids: Vec<u64> = edges.iter().flat_map(|&(s, d)| [s, d]).collect();
    ids.sort_unstable();
    ids.dedup();
    let index = |v: u64| ids.binary_search(&v).unwrap_or(0) as u32;
    let n = ids.len();
    let mut offsets = vec![0u32; n + 1];
    let mut targets = Vec::with_capacity(edges.len());
    for &(s, d) in &edges {
        offsets[index(s) as usize + 1] += 1;
        targets.push(index(d));
    }
    for i in 0..n {
        offsets[i + 1] += offsets[i];
    }
    let nf = n as f64;
    let mut rank = vec![1.0 / nf; n];
    let mut next = vec![0.0f64; n];
    let mut iterations = 0;
    while iterations < max_iterations {
        iterations += 1;
        let mut dangling = 0.0;
        next.iter_mut().for_each(|x| *x = 0.0);
        for u in 0..n {
            let (a, b) = (offsets[u] as usize, offsets[u + 1] as usize);
            if a == b {
                dangling += rank[u];
                continue;
            }
            let share = rank[u] / (b - a) as f64;
            for &v in &targets[a..b] {
                next[v as usize] += share;
            }
        }
        let mut delta = 0.0;
        for (r, s) in rank.iter_mut().zip(&next) {
            let new = (1.0 - damping) / nf + damping * (s + dangling / nf);
            delta += (new - *r).abs();
            *r = new;
        }
        if delta < tolerance {
            break;
        }
    }
    let mut out = BufWriter::with_capacity(1 << 20, File::create(output)?);
    for (id, r) in ids.iter().zip(&rank) {
        writeln!(out, "{id}\t{r}")?;
    }
    out.flush()?;
    Ok((n, edges.len(), iterations))
}
