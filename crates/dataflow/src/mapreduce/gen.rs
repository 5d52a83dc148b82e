//! Deterministic input generators: a Zipf text corpus, web access logs and R-MAT graphs.
//! The same seed and size give the same bytes; nothing is downloaded.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Sample ranks 0..n with probability ∝ 1/(rank+1)^s, by inverting a precomputed CDF.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A Zipf distribution over `n` ranks with exponent `s`.
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// Draw a rank.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.gen();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// The `i`-th word of the synthetic vocabulary: pronounceable, distinct for distinct `i`.
pub fn word(mut i: usize) -> String {
    const C: &[u8] = b"bcdfghjklmnprstvz";
    const V: &[u8] = b"aeiou";
    let mut w = String::new();
    loop {
        w.push(C[i % C.len()] as char);
        i /= C.len();
        w.push(V[i % V.len()] as char);
        i /= V.len();
        if i == 0 {
            break;
        }
        i -= 1;
    }
    w
}

fn writers(dir: &Path, files: u32) -> io::Result<Vec<BufWriter<File>>> {
    std::fs::create_dir_all(dir)?;
    (0..files.max(1))
        .map(|i| {
            File::create(dir.join(format!("part-{i:04}")))
                .map(|f| BufWriter::with_capacity(1 << 20, f))
        })
        .collect()
}

fn finish(ws: Vec<BufWriter<File>>) -> io::Result<()> {
    for w in ws {
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    Ok(())
}

/// A text corpus of about `bytes` bytes in `files` files: lines of 8–16 words drawn from a
/// Zipf(1.0) distribution over a 50 000-word vocabulary.
pub fn text(dir: &Path, bytes: u64, files: u32, seed: u64) -> io::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vocab: Vec<String> = (0..50_000).map(word).collect();
    let zipf = Zipf::new(vocab.len(), 1.0);
    let mut ws = writers(dir, files)?;
    let per_file = bytes / ws.len() as u64;
    let mut written = 0;
    let mut line = Vec::with_capacity(256);
    for w in &mut ws {
        let mut n = 0u64;
        while n < per_file.max(1) {
            line.clear();
            for j in 0..rng.gen_range(8..=16) {
                if j > 0 {
                    line.push(b' ');
                }
                line.extend_from_slice(vocab[zipf.sample(&mut rng)].as_bytes());
            }
            line.push(b'\n');
            w.write_all(&line)?;
            n += line.len() as u64;
        }
        written += n;
    }
    finish(ws)?;
    Ok(written)
}

const ENDPOINTS: &[(&str, &str, u32)] = &[
    ("GET", "/", 20),
    ("GET", "/index.html", 15),
    ("GET", "/api/users/{id}", 40),
    ("POST", "/api/users", 80),
    ("GET", "/api/orders/{id}", 60),
    ("POST", "/api/orders", 120),
    ("GET", "/api/products/{id}", 30),
    ("GET", "/api/search?q={id}", 200),
    ("GET", "/static/app.js", 5),
    ("GET", "/static/style.css", 5),
    ("DELETE", "/api/orders/{id}", 90),
    ("GET", "/health", 1),
];

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Web access logs of about `bytes` bytes: one day of requests in the Common Log Format
/// plus a latency field, Zipf-distributed URLs, a realistic status mix and heavy-tailed
/// latencies.
pub fn logs(dir: &Path, bytes: u64, files: u32, seed: u64) -> io::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ids = Zipf::new(5000, 1.1);
    let eps = Zipf::new(ENDPOINTS.len(), 0.8);
    let mut ws = writers(dir, files)?;
    let per_file = bytes / ws.len() as u64;
    let mut written = 0;
    let mut line = String::with_capacity(256);
    let nf = ws.len() as u64;
    for (fi, w) in ws.iter_mut().enumerate() {
        let mut n = 0u64;
        // Each file covers one slice of the day, in time order.
        let mut t = 86_400 * fi as u64 / nf;
        let t_end = 86_400 * (fi as u64 + 1) / nf;
        while n < per_file.max(1) {
            let (method, path, base) = ENDPOINTS[eps.sample(&mut rng)];
            let url = path.replace("{id}", &ids.sample(&mut rng).to_string());
            let status = match rng.gen_range(0..100) {
                0..=84 => 200,
                85..=89 => 304,
                90..=94 => 404,
                95..=96 => 302,
                _ => 500,
            };
            // Heavy tail: 1% of requests take 5–20 times longer.
            let mut latency = base / 2 + rng.gen_range(0..=base);
            if rng.gen_bool(0.01) {
                latency *= rng.gen_range(5..=20);
            }
            if t < t_end - 1 && rng.gen_bool(0.3) {
                t += 1;
            }
            let (h, m, s) = (t / 3600, t / 60 % 60, t % 60);
            line.clear();
            use std::fmt::Write as _;
            let _ = writeln!(
                line,
                "10.{}.{}.{} - - [27/{}/2026:{h:02}:{m:02}:{s:02} +0000] \"{method} {url} HTTP/1.1\" {status} {} {latency}",
                rng.gen_range(0..256),
                rng.gen_range(0..256),
                rng.gen_range(1..255),
                MONTHS[10],
                rng.gen_range(100..20_000),
            );
            w.write_all(line.as_bytes())?;
            n += line.len() as u64;
        }
        written += n;
    }
    finish(ws)?;
    Ok(written)
}

/// An R-MAT graph (Chakrabarti, Zhan & Faloutsos, SDM 2004) with 2^`scale` vertices and
/// `edges` edges, as `src dst` lines; probabilities (0.57, 0.19, 0.19, 0.05).
pub fn rmat(dir: &Path, scale: u32, edges: u64, files: u32, seed: u64) -> io::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ws = writers(dir, files)?;
    let nf = ws.len() as u64;
    let mut line = String::with_capacity(32);
    for (fi, w) in ws.iter_mut().enumerate() {
        let count = edges / nf + u64::from((fi as u64) < edges % nf);
        for _ in 0..count {
            let (mut src, mut dst) = (0u64, 0u64);
            for _ in 0..scale {
                let p: f64 = rng.gen();
                let (a, b) = if p < 0.57 {
                    (0, 0)
                } else if p < 0.76 {
                    (0, 1)
                } else if p < 0.95 {
                    (1, 0)
                } else {
                    (1, 1)
                };
                src = src << 1 | a;
                dst = dst << 1 | b;
            }
            line.clear();
            use std::fmt::Write as _;
            let _ = writeln!(line, "{src} {dst}");
            w.write_all(line.as_bytes())?;
        }
    }
    finish(ws)?;
    Ok(edges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_words_are_distinct() {
        let words: std::collections::BTreeSet<String> = (0..50_000).map(word).collect();
        assert_eq!(words.len(), 50_000);
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = [0u32; 1000];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        // Rank 1 is about twice as frequent as rank 2 under s = 1.
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((1.7..2.3).contains(&ratio), "{ratio}");
    }
}
