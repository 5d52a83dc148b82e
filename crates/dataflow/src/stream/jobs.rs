//! Built-in jobs and their inputs: windowed counts per key (the chapter's example),
//! sessionization of click streams, and the Yahoo streaming benchmark's shape (Chintapalli
//! et al., "Benchmarking Streaming Computation Engines", IPDPSW 2016: ad events → filter
//! views → join with the campaign table → 10 s windowed counts per campaign).
//!
//! Inputs are deterministic generators: record `i` of a partition is a pure function of
//! the seed and `i`, so a source is replayable from any offset, like a partition of a
//! durable log. A paced generator releases record `i` no earlier than its event time on the
//! wall clock, so event time is wall time and window latency can be measured.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // pacing reads the wall clock

use super::exec::{committed_lines, ExecError};
use super::pipeline::{Event, Job, Pipeline, Source, SourcePoll};
use super::time::EventTime;
use super::window::{
    batch_windows, final_panes, Aggregate, Count, Fired, Trigger, Window, WindowAssigner,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// SplitMix64: the generators' deterministic mixing function.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The shape of a generated input.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Records over all partitions.
    pub events: u64,
    /// Source partitions.
    pub partitions: usize,
    /// Distinct keys (users, ads).
    pub keys: u64,
    /// Records per second of event time over all partitions; with `paced`, also of wall time.
    pub rate: u64,
    /// Records are up to this much older than their position (bounded disorder).
    pub disorder_ms: u64,
    /// Every `n`-th record is shifted back by `late_by_ms` (deliberately late data).
    pub late_every: Option<u64>,
    /// How far back a deliberately late record is shifted.
    pub late_by_ms: u64,
    /// Release records no earlier than their event time on the wall clock.
    pub paced: bool,
}

impl InputSpec {
    /// `events` records over `partitions` partitions at a nominal 1M records/s of event
    /// time, `keys` keys, up to 50 ms of disorder.
    pub fn new(seed: u64, events: u64, partitions: usize, keys: u64) -> Self {
        InputSpec {
            seed,
            events,
            partitions: partitions.max(1),
            keys: keys.max(1),
            rate: 1_000_000,
            disorder_ms: 50,
            late_every: None,
            late_by_ms: 0,
            paced: false,
        }
    }

    /// Records in `partition`.
    fn len(&self, partition: usize) -> u64 {
        let p = self.partitions as u64;
        self.events / p + u64::from((partition as u64) < self.events % p)
    }

    /// The global sequence number of record `i` of `partition`.
    fn global(&self, partition: usize, i: u64) -> u64 {
        i * self.partitions as u64 + partition as u64
    }

    /// Event time of global record `g`.
    pub fn time_of(&self, g: u64) -> EventTime {
        let base = (u128::from(g) * 1000 / u128::from(self.rate.max(1))) as u64;
        let r = mix(self.seed ^ g.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut ts = base.saturating_sub(r % (self.disorder_ms + 1));
        if self.late_every.is_some_and(|n| n > 0 && g % n == n - 1) {
            ts = ts.saturating_sub(self.late_by_ms);
        }
        EventTime(ts)
    }

    /// A second random draw for record `g` (keys, types).
    pub fn draw(&self, g: u64, salt: u64) -> u64 {
        mix(self.seed.wrapping_add(salt) ^ mix(g))
    }

    /// Every record of every partition, as `(global index, event time)`.
    pub fn all(&self) -> impl Iterator<Item = (u64, EventTime)> + '_ {
        (0..self.partitions).flat_map(move |p| {
            (0..self.len(p)).map(move |i| {
                let g = self.global(p, i);
                (g, self.time_of(g))
            })
        })
    }
}

/// Makes record `g` of an input.
pub type MakeFn<T> = Arc<dyn Fn(&InputSpec, u64) -> T + Send + Sync>;

/// A replayable generated partition: record `i` is `make(spec, global index)`.
pub struct GeneratedSource<T> {
    spec: Arc<InputSpec>,
    partition: usize,
    len: u64,
    next: u64,
    make: MakeFn<T>,
    origin: Option<Instant>,
}

impl<T> GeneratedSource<T> {
    /// Partition `partition` of `spec`; `origin` is the wall-clock event time zero of a paced
    /// input.
    pub fn new(
        spec: Arc<InputSpec>,
        partition: usize,
        make: MakeFn<T>,
        origin: Option<Instant>,
    ) -> Self {
        GeneratedSource {
            len: spec.len(partition),
            spec,
            partition,
            next: 0,
            make,
            origin,
        }
    }
}

impl<T: Send> Source<T> for GeneratedSource<T> {
    fn poll(&mut self, out: &mut Vec<Event<T>>, max: usize) -> SourcePoll {
        if self.next >= self.len {
            return SourcePoll::Finished;
        }
        let mut end = (self.next + max as u64).min(self.len);
        if let (true, Some(origin)) = (self.spec.paced, self.origin) {
            // Release only records whose event time has come on the wall clock.
            let now_ms = origin.elapsed().as_millis() as u64;
            let rate = u128::from(self.spec.rate.max(1));
            let due_global = (u128::from(now_ms) * rate / 1000) as u64;
            let due = due_global / self.spec.partitions as u64 + 1;
            end = end.min(due.max(self.next));
            if end == self.next {
                return SourcePoll::Idle;
            }
        }
        for i in self.next..end {
            let g = self.spec.global(self.partition, i);
            out.push(Event {
                ts: self.spec.time_of(g),
                value: (self.make)(&self.spec, g),
            });
        }
        self.next = end;
        SourcePoll::Ready
    }
    fn offset(&self) -> u64 {
        self.next
    }
    fn seek(&mut self, offset: u64) -> Result<(), String> {
        if offset > self.len {
            return Err(format!(
                "offset {offset} is past the end of partition {} ({} records)",
                self.partition, self.len
            ));
        }
        self.next = offset;
        Ok(())
    }
}

/// A source over `spec` producing `make(spec, g)`.
pub fn generated<T: Send + 'static>(
    name: &str,
    spec: &InputSpec,
    origin: Option<Instant>,
    make: impl Fn(&InputSpec, u64) -> T + Send + Sync + 'static,
) -> Pipeline<T> {
    let spec = Arc::new(spec.clone());
    let make: MakeFn<T> = Arc::new(make);
    Pipeline::from_source(name, spec.partitions, move |p, _| {
        GeneratedSource::new(spec.clone(), p, make.clone(), origin)
    })
}

/// A source of keys for tests and doc examples: `events` records over `keys` keys with up
/// to `disorder_ms` of disorder, at 1M records/s of event time.
pub struct GeneratorSource;

impl GeneratorSource {
    /// Partition `partition` (of 2) of a key stream.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(
        seed: u64,
        partition: usize,
        events: u64,
        keys: u64,
        disorder_ms: u64,
    ) -> GeneratedSource<u64> {
        let mut spec = InputSpec::new(seed, events, 2, keys);
        spec.disorder_ms = disorder_ms;
        GeneratedSource::new(Arc::new(spec), partition, Arc::new(key_of), None)
    }
}

fn key_of(spec: &InputSpec, g: u64) -> u64 {
    spec.draw(g, 1) % spec.keys
}

/// Common knobs of the built-in jobs.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// The input.
    pub input: InputSpec,
    /// Window operator instances.
    pub parallelism: usize,
    /// Watermark bound (out-of-orderness) in ms.
    pub bound_ms: u64,
    /// Allowed lateness in ms.
    pub allowed_lateness_ms: u64,
    /// Window size (tumbling) or gap (sessions) in ms.
    pub window_ms: u64,
}

fn late_trigger(spec: &JobSpec) -> Trigger {
    Trigger {
        early_every: None,
        late_firings: spec.allowed_lateness_ms > 0,
    }
}

/// Windowed counts per key: `key_by(key) → tumbling(window_ms) → count`. With an allowed
/// lateness, records within it fire late panes.
pub fn windowed_counts(spec: &JobSpec, origin: Option<Instant>) -> Job<u64, u64, Count<u64>> {
    generated("windowed-counts", &spec.input, origin, key_of)
        .watermarks(spec.bound_ms, Duration::from_millis(500))
        .key_by(|k: &u64| *k)
        .window(WindowAssigner::Tumbling {
            size_ms: spec.window_ms,
        })
        .allowed_lateness(spec.allowed_lateness_ms)
        .trigger(late_trigger(spec))
        .parallelism(spec.parallelism)
        .count()
}

/// The batch answer of [`windowed_counts`] over the records not in `late`.
pub fn windowed_counts_reference(
    spec: &JobSpec,
    late: &BTreeMap<(u64, EventTime), usize>,
) -> BTreeMap<(u64, Window), u64> {
    let mut late = late.clone();
    let records = spec
        .input
        .all()
        .map(|(g, ts)| (key_of(&spec.input, g), ts, 0u64))
        .filter(|(k, ts, _)| match late.get_mut(&(*k, *ts)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect::<Vec<_>>();
    batch_windows(
        WindowAssigner::Tumbling {
            size_ms: spec.window_ms,
        },
        &Count::<u64>::new(),
        records,
    )
}

/// A click in a click stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    /// Who clicked.
    pub user: u64,
    /// On which page.
    pub page: u32,
}

/// What a session window reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStats {
    /// Clicks in the session.
    pub clicks: u64,
    /// The highest page number visited.
    pub max_page: u32,
}

/// The session aggregate.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionAggregate;

impl Aggregate for SessionAggregate {
    type In = Click;
    type Acc = SessionStats;
    type Out = SessionStats;
    fn create(&self) -> SessionStats {
        SessionStats::default()
    }
    fn add(&self, acc: &mut SessionStats, c: &Click) {
        acc.clicks += 1;
        acc.max_page = acc.max_page.max(c.page);
    }
    fn merge(&self, acc: &mut SessionStats, o: SessionStats) {
        acc.clicks += o.clicks;
        acc.max_page = acc.max_page.max(o.max_page);
    }
    fn result(&self, acc: &SessionStats) -> SessionStats {
        acc.clone()
    }
}

/// Users are active in bursts: user `u` clicks only in the 5 s phases where
/// `(t / 5000 + u) % 3 == 0`, so each user's clicks form sessions separated by 10 s gaps.
fn click_of(spec: &InputSpec, g: u64) -> Click {
    let ts = spec.time_of(g).0;
    let groups = (spec.keys / 3).max(1);
    let phase = (ts / 5000) % 3;
    let residue = (3 - phase) % 3;
    Click {
        user: 3 * (spec.draw(g, 1) % groups) + residue,
        page: (spec.draw(g, 2) % 50) as u32,
    }
}

/// Sessionization: `key_by(user) → session(gap = window_ms) → clicks and pages per session`.
pub fn sessionize(spec: &JobSpec, origin: Option<Instant>) -> Job<u64, Click, SessionAggregate> {
    generated("sessionize", &spec.input, origin, click_of)
        .watermarks(spec.bound_ms, Duration::from_millis(500))
        .key_by(|c: &Click| c.user)
        .window(WindowAssigner::Session {
            gap_ms: spec.window_ms,
        })
        .allowed_lateness(spec.allowed_lateness_ms)
        .trigger(late_trigger(spec))
        .parallelism(spec.parallelism)
        .aggregate(SessionAggregate)
}

/// The batch answer of [`sessionize`].
pub fn sessionize_reference(spec: &JobSpec) -> BTreeMap<(u64, Window), SessionStats> {
    let records = spec.input.all().map(|(g, ts)| {
        let c = click_of(&spec.input, g);
        (c.user, ts, c)
    });
    batch_windows(
        WindowAssigner::Session {
            gap_ms: spec.window_ms,
        },
        &SessionAggregate,
        records,
    )
}

/// An ad event of the Yahoo streaming benchmark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdEvent {
    /// The user.
    pub user_id: u64,
    /// The page.
    pub page_id: u64,
    /// The ad shown.
    pub ad_id: u32,
    /// 0 view, 1 click, 2 purchase.
    pub event_type: u8,
}

/// Ads per campaign in the benchmark's table.
pub const ADS_PER_CAMPAIGN: u32 = 10;

fn ad_event_of(spec: &InputSpec, g: u64) -> AdEvent {
    AdEvent {
        user_id: spec.draw(g, 3),
        page_id: spec.draw(g, 4),
        ad_id: (spec.draw(g, 1) % spec.keys) as u32,
        event_type: (spec.draw(g, 2) % 3) as u8,
    }
}

/// The campaign table: ad → campaign, `ADS_PER_CAMPAIGN` ads each (the benchmark keeps it
/// in Redis; here it is a broadcast table joined in the source task).
pub fn campaign_table(ads: u64) -> Arc<Vec<u32>> {
    Arc::new(
        (0..ads as u32)
            .map(|ad| mix(u64::from(ad)) as u32 % (ads as u32 / ADS_PER_CAMPAIGN).max(1))
            .collect(),
    )
}

/// The Yahoo benchmark's shape: ad events → keep views → join ad with its campaign → 10 s
/// (`window_ms`) tumbling counts per campaign.
pub fn yahoo(spec: &JobSpec, origin: Option<Instant>) -> Job<u32, u32, Count<u32>> {
    let table = campaign_table(spec.input.keys);
    generated("yahoo", &spec.input, origin, ad_event_of)
        .watermarks(spec.bound_ms, Duration::from_millis(500))
        .filter(|e: &AdEvent| e.event_type == 0)
        .map(move |e: AdEvent| table[e.ad_id as usize])
        .key_by(|campaign: &u32| *campaign)
        .window(WindowAssigner::Tumbling {
            size_ms: spec.window_ms,
        })
        .allowed_lateness(spec.allowed_lateness_ms)
        .trigger(late_trigger(spec))
        .parallelism(spec.parallelism)
        .count()
}

/// The batch answer of [`yahoo`].
pub fn yahoo_reference(spec: &JobSpec) -> BTreeMap<(u32, Window), u64> {
    let table = campaign_table(spec.input.keys);
    let records = spec.input.all().filter_map(|(g, ts)| {
        let e = ad_event_of(&spec.input, g);
        (e.event_type == 0).then(|| (table[e.ad_id as usize], ts, 0u32))
    });
    batch_windows(
        WindowAssigner::Tumbling {
            size_ms: spec.window_ms,
        },
        &Count::<u32>::new(),
        records,
    )
}

/// How committed output compares with the batch answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Windows in the batch answer.
    pub expected_windows: usize,
    /// Firings in the committed output.
    pub committed_firings: usize,
    /// (key, window) pairs fired more than once (a duplicate, unless late firings are on).
    pub duplicates: usize,
    /// Windows whose final committed value differs from the batch answer, or is missing,
    /// or should not exist.
    pub mismatches: usize,
    /// Records in the committed side output.
    pub late_records: usize,
}

impl Verdict {
    /// Exactly the batch answer, each window once.
    pub fn exact(&self) -> bool {
        self.duplicates == 0 && self.mismatches == 0
    }
}

/// Compare the committed output in `dir` with `expected`.
pub fn verify<K, O>(dir: &Path, expected: &BTreeMap<(K, Window), O>) -> Result<Verdict, ExecError>
where
    K: Ord + Clone + serde::de::DeserializeOwned,
    O: Clone + PartialEq + serde::de::DeserializeOwned,
{
    let lines = committed_lines(dir, false)?;
    let mut fired: Vec<Fired<K, O>> = Vec::with_capacity(lines.len());
    for line in &lines {
        fired.push(
            serde_json::from_str(line).map_err(|e| {
                ExecError::Checkpoint(format!("committed output line {line:?}: {e}"))
            })?,
        );
    }
    let mut seen: BTreeMap<(K, Window), usize> = BTreeMap::new();
    for f in &fired {
        *seen.entry((f.key.clone(), f.window)).or_default() += 1;
    }
    let finals = final_panes(&fired);
    let mut mismatches = finals
        .iter()
        .filter(|(kw, v)| expected.get(kw) != Some(v))
        .count();
    mismatches += expected
        .keys()
        .filter(|kw| !finals.contains_key(kw))
        .count();
    Ok(Verdict {
        expected_windows: expected.len(),
        committed_firings: fired.len(),
        duplicates: seen.values().filter(|&&n| n > 1).count(),
        mismatches,
        late_records: committed_lines(dir, true)?.len(),
    })
}

/// The committed side output of a job keyed by `K` with values `V`: how many records of
/// each `(key, event time)`.
pub fn committed_late<K, V>(dir: &Path) -> Result<BTreeMap<(K, EventTime), usize>, ExecError>
where
    K: Ord + serde::de::DeserializeOwned,
    V: serde::de::DeserializeOwned,
{
    let mut out = BTreeMap::new();
    for line in committed_lines(dir, true)? {
        let (k, ts, _): (K, EventTime, V) = serde_json::from_str(&line)
            .map_err(|e| ExecError::Checkpoint(format!("side output line {line:?}: {e}")))?;
        *out.entry((k, ts)).or_default() += 1;
    }
    Ok(out)
}
