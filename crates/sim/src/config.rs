//! What a simulated run looks like: network, disk, clocks and the fault mix.

use std::time::Duration;

/// The network between nodes (and between clients and nodes).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Every message takes at least this long.
    pub min_latency: Duration,
    /// Mean of the exponential tail added to `min_latency`.
    pub latency_tail: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back by up to `reorder_window`, so that later
    /// messages overtake it.
    pub reorder: f64,
    /// The largest extra delay of a reordered message.
    pub reorder_window: Duration,
}

impl NetConfig {
    /// A LAN-like network: 100 µs minimum with a 100 µs tail, no loss.
    pub fn lan() -> Self {
        NetConfig {
            min_latency: Duration::from_micros(100),
            latency_tail: Duration::from_micros(100),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_window: Duration::from_millis(5),
        }
    }

    /// A hostile network: 1 ms + 2 ms tail, 5% loss, 2% duplicates, 5% reordering.
    pub fn lossy() -> Self {
        NetConfig {
            min_latency: Duration::from_millis(1),
            latency_tail: Duration::from_millis(2),
            loss: 0.05,
            duplicate: 0.02,
            reorder: 0.05,
            reorder_window: Duration::from_millis(20),
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self::lan()
    }
}

/// The disk under each node's storage.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The shortest fsync.
    pub min_sync: Duration,
    /// Uniform extra fsync time, from zero to this.
    pub sync_jitter: Duration,
    /// Probability that an fsync fails. The node stops, as DESIGN.md requires, and the
    /// fault plan restarts it later.
    pub io_error: f64,
    /// Background work (`Effect::Background`: encoding and writing a snapshot) takes a
    /// uniform time from one fsync to this; long enough that crashes and new writes
    /// land while it is in flight.
    pub background_work: Duration,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            min_sync: Duration::from_micros(200),
            sync_jitter: Duration::from_micros(300),
            io_error: 0.0,
            background_work: Duration::from_millis(20),
        }
    }
}

/// Per-node clock error. Node clocks start at a random offset in ±`max_skew` and run at a
/// random rate error in ±`max_drift_ppm` parts per million.
#[derive(Debug, Clone, Default)]
pub struct ClockConfig {
    /// The largest initial offset from true time.
    pub max_skew: Duration,
    /// The largest rate error, in parts per million.
    pub max_drift_ppm: f64,
}

/// Which faults the fault plan (the "nemesis") may inject, and how often.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Mean time between fault injections. Zero disables the nemesis.
    pub mean_interval: Duration,
    /// Every fault lasts at least this long before it heals.
    pub min_duration: Duration,
    /// Every fault lasts at most this long.
    pub max_duration: Duration,
    /// Weight of partitions (symmetric, asymmetric, isolate-one, random split).
    pub partition: u32,
    /// Weight of crashes (lose volatile and unsynced state; restart after the fault).
    pub crash: u32,
    /// Weight of pauses (the node stops handling events, then resumes).
    pub pause: u32,
    /// Weight of link clogging (a link delays everything until it unclogs).
    pub clog: u32,
    /// At most this many nodes are crashed or paused at once. `None`: any number (safety
    /// mode); liveness tests usually allow a minority.
    pub max_down: Option<usize>,
}

impl FaultConfig {
    /// No faults at all.
    pub fn none() -> Self {
        FaultConfig {
            mean_interval: Duration::ZERO,
            min_duration: Duration::from_millis(100),
            max_duration: Duration::from_secs(1),
            partition: 0,
            crash: 0,
            pause: 0,
            clog: 0,
            max_down: None,
        }
    }

    /// Every kind of fault, about every 200 ms of simulated time, each for 100 ms to 2 s.
    pub fn chaos() -> Self {
        FaultConfig {
            mean_interval: Duration::from_millis(200),
            min_duration: Duration::from_millis(100),
            max_duration: Duration::from_secs(2),
            partition: 3,
            crash: 2,
            pause: 1,
            clog: 1,
            max_down: None,
        }
    }

    /// Whether the nemesis runs.
    pub fn enabled(&self) -> bool {
        !self.mean_interval.is_zero() && self.partition + self.crash + self.pause + self.clog > 0
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self::none()
    }
}

/// Everything that defines a run. The same config and seed replay the same run exactly.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The run seed; every random stream derives from it.
    pub seed: u64,
    /// Number of nodes, `NodeId(0)..NodeId(nodes)`.
    pub nodes: u32,
    /// Network model.
    pub net: NetConfig,
    /// Disk model.
    pub disk: DiskConfig,
    /// Clock model.
    pub clocks: ClockConfig,
    /// Fault plan.
    pub faults: FaultConfig,
}

impl SimConfig {
    /// `nodes` nodes on a LAN with a fast disk, perfect clocks and no faults.
    pub fn new(seed: u64, nodes: u32) -> Self {
        SimConfig {
            seed,
            nodes,
            net: NetConfig::default(),
            disk: DiskConfig::default(),
            clocks: ClockConfig::default(),
            faults: FaultConfig::none(),
        }
    }
}
