//! Run many seeds across cores, with a progress bar, and report each failing seed with the
//! one command that replays it.
//!
//! Swarm testing (Groce et al., ISSTA 2012) varies the fault mix per seed as well as the
//! seed itself: see [`swarm_faults`] and [`swarm_net`], which a protocol's scenario can
//! use to pick its configuration from the seed.

use crate::config::{ClockConfig, FaultConfig, NetConfig, SimConfig};
use crate::sim::stream_rng;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A seed that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmFailure {
    /// The seed.
    pub seed: u64,
    /// What the scenario reported.
    pub message: String,
    /// The command that replays exactly this run.
    pub replay: String,
}

/// The outcome of a swarm.
#[derive(Debug, Clone, Default)]
pub struct SwarmReport {
    /// Seeds run.
    pub runs: u64,
    /// Failing seeds, in seed order.
    pub failures: Vec<SwarmFailure>,
}

impl SwarmReport {
    /// Every failure as lines of text, each with its replay command.
    pub fn describe(&self) -> String {
        let mut out = format!("{} of {} seeds failed\n", self.failures.len(), self.runs);
        for f in &self.failures {
            out.push_str(&format!(
                "seed {}: {}\n  replay: {}\n",
                f.seed, f.message, f.replay
            ));
        }
        out
    }
}

/// Options for [`swarm`].
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    /// Worker threads (the machine's cores by default).
    pub threads: usize,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Stop handing out new seeds after this many failures.
    pub stop_after: usize,
}

impl Default for SwarmOptions {
    fn default() -> Self {
        SwarmOptions {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: true,
            stop_after: usize::MAX,
        }
    }
}

impl SwarmOptions {
    /// The defaults, on `threads` worker threads if given (a command's `--threads`).
    pub fn with_threads(threads: Option<usize>) -> Self {
        let defaults = SwarmOptions::default();
        SwarmOptions {
            threads: threads.unwrap_or(defaults.threads),
            ..defaults
        }
    }
}

/// Run `scenario` for every seed in `seeds` on `opts.threads` threads. `replay(seed)` gives
/// the command line that replays a seed; each failure is printed with it as it happens.
pub fn swarm<F, R>(seeds: Range<u64>, opts: &SwarmOptions, scenario: F, replay: R) -> SwarmReport
where
    F: Fn(u64) -> Result<(), String> + Sync,
    R: Fn(u64) -> String + Sync,
{
    let total = seeds.end.saturating_sub(seeds.start);
    let bar = if opts.progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let next = AtomicU64::new(seeds.start);
    let failures = Mutex::new(Vec::new());
    let runs = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..opts.threads.max(1) {
            scope.spawn(|| loop {
                let failed = failures.lock().map_or(0, |f| f.len());
                if failed >= opts.stop_after {
                    break;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    break;
                }
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(seed)))
                        .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_text(&panic))));
                runs.fetch_add(1, Ordering::Relaxed);
                if let Err(message) = outcome {
                    let failure = SwarmFailure {
                        seed,
                        message,
                        replay: replay(seed),
                    };
                    let line = format!(
                        "FAIL seed {}: {}\n  replay: {}",
                        failure.seed, failure.message, failure.replay
                    );
                    // A hidden bar (no terminal) prints nothing, but failures must show.
                    if bar.is_hidden() {
                        eprintln!("{line}");
                    } else {
                        bar.println(line);
                    }
                    if let Ok(mut f) = failures.lock() {
                        f.push(failure);
                        bar.set_message(format!("{} failed", f.len()));
                    }
                }
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    let mut failures = failures.into_inner().unwrap_or_default();
    failures.sort_by_key(|f| f.seed);
    SwarmReport {
        runs: runs.into_inner(),
        failures,
    }
}

/// For `cargo test`: run `scenario` over `seeds` and panic with every failing seed and its
/// replay command if any fails. With the environment variable `SYNOD_SEED=N` set, only seed
/// N runs: that is how a printed failure is replayed
/// (`SYNOD_SEED=N cargo test -p <crate> <test>`).
pub fn assert_seeds<F, R>(seeds: Range<u64>, scenario: F, replay: R)
where
    F: Fn(u64) -> Result<(), String> + Sync,
    R: Fn(u64) -> String + Sync,
{
    let seeds = match std::env::var("SYNOD_SEED")
        .ok()
        .map(|s| s.trim().parse::<u64>())
    {
        Some(Ok(seed)) => seed..seed.saturating_add(1),
        Some(Err(_)) => panic!("SYNOD_SEED must be a whole number"),
        None => seeds,
    };
    let opts = SwarmOptions {
        progress: false,
        ..SwarmOptions::default()
    };
    let report = swarm(seeds, &opts, scenario, replay);
    assert!(report.failures.is_empty(), "{}", report.describe());
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// The world a swarm run on `seed` lives in: `nodes` nodes, the seed's fault mix and
/// network ([`swarm_faults`], [`swarm_net`]), and clocks skewed by up to 500 ms that drift
/// by up to 200 ppm.
pub fn swarm_config(seed: u64, nodes: u32) -> SimConfig {
    let mut cfg = SimConfig::new(seed, nodes);
    cfg.faults = swarm_faults(seed);
    cfg.net = swarm_net(seed);
    cfg.clocks = ClockConfig {
        max_skew: Duration::from_millis(500),
        max_drift_ppm: 200.0,
    };
    cfg
}

/// A fault mix drawn from `seed`: each kind of fault is on or off and weighted at random,
/// so that across a swarm some runs see only crashes, some only partitions, some all.
pub fn swarm_faults(seed: u64) -> FaultConfig {
    let mut rng = stream_rng(seed, 0x5a5a);
    let weight = |rng: &mut rand_chacha::ChaCha8Rng| {
        if rng.gen_bool(0.6) {
            rng.gen_range(1..=4)
        } else {
            0
        }
    };
    let mut f = FaultConfig {
        mean_interval: Duration::from_millis(rng.gen_range(50..=500)),
        min_duration: Duration::from_millis(rng.gen_range(20..=200)),
        max_duration: Duration::from_millis(rng.gen_range(300..=3000)),
        partition: weight(&mut rng),
        crash: weight(&mut rng),
        pause: weight(&mut rng),
        clog: weight(&mut rng),
        max_down: None,
    };
    if f.partition + f.crash + f.pause + f.clog == 0 {
        f.partition = 1;
    }
    f
}

/// A network drawn from `seed`: latency, loss, duplication and reordering vary per run.
pub fn swarm_net(seed: u64) -> NetConfig {
    let mut rng = stream_rng(seed, 0xa5a5);
    NetConfig {
        min_latency: Duration::from_micros(rng.gen_range(50..=2000)),
        latency_tail: Duration::from_micros(rng.gen_range(0..=5000)),
        loss: if rng.gen_bool(0.5) {
            rng.gen_range(0.0..0.1)
        } else {
            0.0
        },
        duplicate: if rng.gen_bool(0.3) {
            rng.gen_range(0.0..0.05)
        } else {
            0.0
        },
        reorder: if rng.gen_bool(0.5) {
            rng.gen_range(0.0..0.2)
        } else {
            0.0
        },
        reorder_window: Duration::from_millis(rng.gen_range(1..=50)),
    }
}
