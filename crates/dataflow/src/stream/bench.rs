//! Measurements for `synod bench stream` and `cargo run --release -p synod-dataflow
//! --example stream_bench`: throughput of keyed tumbling-window counts with checkpoints on
//! and off, latency at a paced rate, and a hand-written single-threaded baseline.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // benchmarks read the wall clock

use super::exec::{self, ExecConfig, ExecError, JobReport};
use super::jobs::{self, InputSpec, JobSpec};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// One throughput measurement.
#[derive(Clone, Debug)]
pub struct Throughput {
    /// Records read (no failures, so no replays).
    pub events: u64,
    /// Wall time including the final checkpoint and commit.
    pub elapsed: Duration,
    /// Checkpoints completed.
    pub checkpoints: usize,
    /// Median checkpoint duration.
    pub checkpoint_median: Option<Duration>,
    /// Longest checkpoint.
    pub checkpoint_max: Option<Duration>,
}

impl Throughput {
    /// Records per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn from_report(r: &JobReport) -> Self {
        let mut d = r.checkpoint_durations.clone();
        d.sort();
        Throughput {
            events: r.events,
            elapsed: r.elapsed,
            checkpoints: d.len(),
            checkpoint_median: d.get(d.len() / 2).copied(),
            checkpoint_max: d.last().copied(),
        }
    }
}

/// The windowed-count job the benchmark runs: `keys` keys, 1 s tumbling windows, 50 ms
/// watermark bound, 1M records/s of event time.
pub fn count_spec(events: u64, partitions: usize, parallelism: usize, keys: u64) -> JobSpec {
    let mut input = InputSpec::new(42, events, partitions, keys);
    input.disorder_ms = 50;
    JobSpec {
        input,
        parallelism,
        bound_ms: 50,
        allowed_lateness_ms: 0,
        window_ms: 1_000,
    }
}

/// Run the windowed counts as fast as the sources go, in a fresh directory under `dir`.
pub fn throughput(
    spec: &JobSpec,
    checkpoint_interval: Option<Duration>,
    dir: &Path,
) -> Result<Throughput, ExecError> {
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = ExecConfig::new(dir);
    cfg.checkpoint_interval = checkpoint_interval;
    let report = exec::run(&jobs::windowed_counts(spec, None), &cfg)?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(Throughput::from_report(&report))
}

/// Latency percentiles at a paced rate.
#[derive(Clone, Debug)]
pub struct Latency {
    /// The offered rate, records per second.
    pub rate: u64,
    /// The rate achieved.
    pub achieved: f64,
    /// Window end → firing, p50 and p99, ms.
    pub fire_p50_ms: f64,
    /// Window end → firing, p99, ms.
    pub fire_p99_ms: f64,
    /// Window end → committed (visible) output, p99, ms.
    pub commit_p99_ms: f64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Offer `rate` records per second for `seconds`, with event time = wall time, and measure
/// how long after a window's end its count fires and commits.
pub fn latency(
    mut spec: JobSpec,
    rate: u64,
    seconds: u64,
    checkpoint_interval: Option<Duration>,
    dir: &Path,
) -> Result<Latency, ExecError> {
    let _ = std::fs::remove_dir_all(dir);
    spec.input.rate = rate;
    spec.input.paced = true;
    spec.input.events = rate * seconds;
    let origin = Instant::now();
    let mut cfg = ExecConfig::new(dir);
    cfg.checkpoint_interval = checkpoint_interval;
    cfg.latency_origin = Some(origin);
    let mut report = exec::run(&jobs::windowed_counts(&spec, Some(origin)), &cfg)?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(Latency {
        rate,
        achieved: report.events as f64 / report.elapsed.as_secs_f64().max(1e-9),
        fire_p50_ms: percentile(&mut report.fire_latency_ms, 0.5),
        fire_p99_ms: percentile(&mut report.fire_latency_ms, 0.99),
        commit_p99_ms: percentile(&mut report.commit_latency_ms, 0.99),
    })
}

/// A hand-written single-threaded windowed count over the same generated input: no
/// channels, no partitioning, no checkpoints: one loop, one ordered map. Returns
/// (records per second, windows fired).
pub fn baseline(spec: &JobSpec) -> (f64, usize) {
    let started = Instant::now();
    let input = &spec.input;
    let size = spec.window_ms;
    let mut counts: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut max_ts = 0u64;
    let mut fired = 0usize;
    let mut n = 0u64;
    // In global order, as if the partitions were one stream.
    for g in 0..input.events {
        let ts = input.time_of(g);
        let key = input.draw(g, 1) % input.keys;
        let start = ts.0 - ts.0 % size;
        *counts.entry((start + size, key)).or_default() += 1;
        max_ts = max_ts.max(ts.0);
        n += 1;
        if n.is_multiple_of(1024) {
            let wm = max_ts.saturating_sub(spec.bound_ms);
            while let Some((&(end, _), _)) = counts.first_key_value() {
                if end > wm {
                    break;
                }
                counts.pop_first();
                fired += 1;
            }
        }
    }
    fired += counts.len();
    (n as f64 / started.elapsed().as_secs_f64().max(1e-9), fired)
}
