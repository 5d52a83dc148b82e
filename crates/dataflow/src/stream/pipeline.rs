//! The typed pipeline API: `source → map/filter/flat_map → key_by → window → aggregate`.
//!
//! Stateless operators (`map`, `filter`, `flat_map`) are chained into the source task, as
//! Flink chains operators that need no repartitioning. `key_by` is the shuffle: records are
//! hash-partitioned by key to the parallel instances of the window operator. The window
//! operator's output goes to the transactional sink ([`crate::stream::exec`]).
//!
//! ```
//! use synod_dataflow::stream::{Pipeline, WindowAssigner, jobs::GeneratorSource};
//! let job = Pipeline::from_source("clicks", 2, |partition, _| {
//!         GeneratorSource::new(7, partition, 1_000, 100, 20)
//!     })
//!     .watermarks(20, std::time::Duration::from_millis(200))
//!     .filter(|key: &u64| key % 2 == 0)
//!     .key_by(|key: &u64| *key)
//!     .window(WindowAssigner::Tumbling { size_ms: 1_000 })
//!     .count();
//! assert_eq!(job.name(), "clicks");
//! ```

use super::time::EventTime;
use super::window::{Aggregate, Count, Process, Reduce, Trigger, WindowAssigner};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// One record with its event time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<T> {
    /// When it happened.
    pub ts: EventTime,
    /// What happened.
    pub value: T,
}

/// What a source's poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourcePoll {
    /// It appended records (or may have more soon).
    Ready,
    /// Nothing to read right now.
    Idle,
    /// The input is exhausted for good.
    Finished,
    /// The input is broken (a malformed record); [`Source::error`] says how. Replaying
    /// cannot cure it, so the job fails.
    Failed,
}

/// A replayable, partitioned input. One instance reads one partition; its position is an
/// offset that a checkpoint records and recovery seeks back to.
pub trait Source<T>: Send {
    /// Append up to `max` records to `out`.
    fn poll(&mut self, out: &mut Vec<Event<T>>, max: usize) -> SourcePoll;
    /// The position after the last record returned.
    fn offset(&self) -> u64;
    /// Continue from `offset`, a value [`Source::offset`] returned (recovery).
    fn seek(&mut self, offset: u64) -> Result<(), String>;
    /// Why the last poll returned [`SourcePoll::Failed`].
    fn error(&self) -> Option<String> {
        None
    }
}

/// Builds the source instance for `(partition, partitions)`.
pub type SourceFactory<T> = Arc<dyn Fn(usize, usize) -> Box<dyn Source<T>> + Send + Sync>;

/// A stream of `T` before the shuffle.
pub struct Pipeline<T> {
    pub(crate) name: String,
    pub(crate) source: SourceFactory<T>,
    pub(crate) source_parallelism: usize,
    pub(crate) out_of_orderness_ms: u64,
    pub(crate) idle_timeout: Duration,
}

impl<T: Send + 'static> Pipeline<T> {
    /// A pipeline reading `parallelism` partitions, each made by `source(partition,
    /// parallelism)`.
    pub fn from_source<S, F>(name: &str, parallelism: usize, source: F) -> Self
    where
        S: Source<T> + 'static,
        F: Fn(usize, usize) -> S + Send + Sync + 'static,
    {
        Pipeline {
            name: name.to_string(),
            source: Arc::new(move |p, n| Box::new(source(p, n)) as Box<dyn Source<T>>),
            source_parallelism: parallelism.max(1),
            out_of_orderness_ms: 0,
            idle_timeout: Duration::from_secs(1),
        }
    }

    /// Watermarks trail the newest event time by `out_of_orderness_ms`; a partition with no
    /// input for `idle_timeout` (processing time) is declared idle.
    pub fn watermarks(mut self, out_of_orderness_ms: u64, idle_timeout: Duration) -> Self {
        self.out_of_orderness_ms = out_of_orderness_ms;
        self.idle_timeout = idle_timeout;
        self
    }

    fn wrap<U: Send + 'static>(
        self,
        f: impl Fn(Box<dyn Source<T>>) -> Box<dyn Source<U>> + Send + Sync + 'static,
    ) -> Pipeline<U> {
        let inner = self.source;
        Pipeline {
            name: self.name,
            source: Arc::new(move |p, n| f(inner(p, n))),
            source_parallelism: self.source_parallelism,
            out_of_orderness_ms: self.out_of_orderness_ms,
            idle_timeout: self.idle_timeout,
        }
    }

    /// Transform every record; the event time is kept.
    pub fn map<U: Send + 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Pipeline<U> {
        let f = Arc::new(f);
        self.flat_map_impl(move |v, out: &mut Vec<U>| out.push(f(v)))
    }

    /// Keep the records for which `f` holds.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Pipeline<T> {
        self.flat_map_impl(move |v, out: &mut Vec<T>| {
            if f(&v) {
                out.push(v)
            }
        })
    }

    /// Zero or more records per record, all with the input's event time.
    pub fn flat_map<U, I>(self, f: impl Fn(T) -> I + Send + Sync + 'static) -> Pipeline<U>
    where
        U: Send + 'static,
        I: IntoIterator<Item = U>,
    {
        self.flat_map_impl(move |v, out: &mut Vec<U>| out.extend(f(v)))
    }

    fn flat_map_impl<U: Send + 'static>(
        self,
        f: impl Fn(T, &mut Vec<U>) + Send + Sync + 'static,
    ) -> Pipeline<U> {
        let f = Arc::new(f);
        self.wrap(move |inner| {
            Box::new(Chained {
                inner,
                f: f.clone(),
                scratch: Vec::new(),
                values: Vec::new(),
            })
        })
    }

    /// Partition by key: the shuffle to the keyed operators.
    pub fn key_by<K>(self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> KeyedStream<K, T> {
        KeyedStream {
            input: self,
            key: Arc::new(key),
        }
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

struct Chained<T, U, F> {
    inner: Box<dyn Source<T>>,
    f: Arc<F>,
    scratch: Vec<Event<T>>,
    values: Vec<U>,
}

impl<T: Send, U: Send, F: Fn(T, &mut Vec<U>) + Send + Sync> Source<U> for Chained<T, U, F> {
    fn poll(&mut self, out: &mut Vec<Event<U>>, max: usize) -> SourcePoll {
        self.scratch.clear();
        let status = self.inner.poll(&mut self.scratch, max);
        for e in self.scratch.drain(..) {
            (self.f)(e.value, &mut self.values);
            out.extend(self.values.drain(..).map(|value| Event { ts: e.ts, value }));
        }
        status
    }
    fn offset(&self) -> u64 {
        self.inner.offset()
    }
    fn seek(&mut self, offset: u64) -> Result<(), String> {
        self.inner.seek(offset)
    }
    fn error(&self) -> Option<String> {
        self.inner.error()
    }
}

/// The key extractor of a keyed stream.
pub type KeyFn<K, T> = Arc<dyn Fn(&T) -> K + Send + Sync>;

/// A stream partitioned by key.
pub struct KeyedStream<K, T> {
    pub(crate) input: Pipeline<T>,
    pub(crate) key: KeyFn<K, T>,
}

impl<K, T> KeyedStream<K, T> {
    /// Group each key's records into windows.
    pub fn window(self, assigner: WindowAssigner) -> WindowedStream<K, T> {
        WindowedStream {
            keyed: self,
            assigner,
            allowed_lateness_ms: 0,
            trigger: Trigger::default(),
            parallelism: 1,
        }
    }
}

/// A keyed, windowed stream waiting for its aggregate.
pub struct WindowedStream<K, T> {
    pub(crate) keyed: KeyedStream<K, T>,
    pub(crate) assigner: WindowAssigner,
    pub(crate) allowed_lateness_ms: u64,
    pub(crate) trigger: Trigger,
    pub(crate) parallelism: usize,
}

impl<K, T> WindowedStream<K, T>
where
    K: Ord
        + Clone
        + std::hash::Hash
        + Serialize
        + DeserializeOwned
        + Send
        + std::fmt::Debug
        + 'static,
    T: Clone + Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static,
{
    /// Keep window state `ms` past the window's end; records in that time fire late panes.
    pub fn allowed_lateness(mut self, ms: u64) -> Self {
        self.allowed_lateness_ms = ms;
        self
    }

    /// Early and late firings besides the on-time one.
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// Number of parallel window operator instances (key groups).
    pub fn parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism.max(1);
        self
    }

    /// Fold each window with `aggregate`.
    pub fn aggregate<G: Aggregate<In = T>>(self, aggregate: G) -> Job<K, T, G> {
        Job {
            windowed: self,
            aggregate: Arc::new(aggregate),
        }
    }

    /// Count each window's records.
    pub fn count(self) -> Job<K, T, Count<T>> {
        self.aggregate(Count::new())
    }

    /// Reduce each window's records with `f`.
    pub fn reduce<F>(self, f: F) -> Job<K, T, Reduce<T, F>>
    where
        F: Fn(&T, &T) -> T + Send + Sync + 'static,
    {
        self.aggregate(Reduce::new(f))
    }

    /// Give each window's records to `f` at every firing.
    pub fn process<O, F>(self, f: F) -> Job<K, T, Process<T, O, F>>
    where
        O: Clone + Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static,
        F: Fn(&[T]) -> O + Send + Sync + 'static,
    {
        self.aggregate(Process::new(f))
    }
}

/// A complete job: the window operator's output goes to the transactional sink. Run it
/// with [`crate::stream::exec::run`].
pub struct Job<K, T, G> {
    pub(crate) windowed: WindowedStream<K, T>,
    pub(crate) aggregate: Arc<G>,
}

impl<K, T, G> Job<K, T, G> {
    /// The job's name.
    pub fn name(&self) -> &str {
        &self.windowed.keyed.input.name
    }
}
