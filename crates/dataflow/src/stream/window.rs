//! Windows, triggers and the keyed window operator (Akidau et al. 2015, §2.2–2.4).
//!
//! - Assigners: tumbling `[k·size, (k+1)·size)`, sliding (every `slide`, `size` long) and
//!   session windows (per key, a gap of `gap` of event time closes a session; overlapping
//!   proto-windows `[t, t+gap)` merge).
//! - A pane fires **on time** when the watermark reaches the window's end. **Early** firings
//!   fire a pane every `early_every` records before that. **Late** firings re-fire a pane,
//!   with the accumulated value, for every record that arrives after the on-time firing but
//!   within the allowed lateness (accumulating mode, §2.4).
//! - A window's state is dropped when the watermark passes `end + allowed_lateness`. A record
//!   whose every window is past that point is **late data**: it goes to the side output,
//!   never silently into (or past) a closed window.

use super::time::EventTime;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A window of event time, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// First event time in the window.
    pub start: EventTime,
    /// First event time after the window.
    pub end: EventTime,
}

/// How records are assigned to windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowAssigner {
    /// Fixed, non-overlapping windows of `size_ms`.
    Tumbling {
        /// Window length in milliseconds.
        size_ms: u64,
    },
    /// Windows of `size_ms` starting every `slide_ms`; a record is in `size/slide` of them.
    Sliding {
        /// Window length in milliseconds.
        size_ms: u64,
        /// Distance between window starts in milliseconds.
        slide_ms: u64,
    },
    /// Per-key sessions: a session ends after `gap_ms` without records.
    Session {
        /// Inactivity gap in milliseconds.
        gap_ms: u64,
    },
}

impl WindowAssigner {
    /// Check the parameters: sizes and gaps must be positive, a slide at most the size.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            WindowAssigner::Tumbling { size_ms: 0 } => {
                Err("tumbling window size must be positive".into())
            }
            WindowAssigner::Sliding { size_ms, slide_ms } if slide_ms == 0 || size_ms == 0 => {
                Err("sliding window size and slide must be positive".into())
            }
            WindowAssigner::Sliding { size_ms, slide_ms } if slide_ms > size_ms => {
                Err("sliding window slide must not exceed its size".into())
            }
            WindowAssigner::Session { gap_ms: 0 } => Err("session gap must be positive".into()),
            _ => Ok(()),
        }
    }

    /// Call `f` with every window that contains `ts` (for sessions: the proto-window).
    #[inline]
    pub fn assign(&self, ts: EventTime, mut f: impl FnMut(Window)) {
        match *self {
            WindowAssigner::Tumbling { size_ms } => {
                let start = ts.0 - ts.0 % size_ms;
                f(Window {
                    start: EventTime(start),
                    end: EventTime(start.saturating_add(size_ms)),
                });
            }
            WindowAssigner::Sliding { size_ms, slide_ms } => {
                let last = ts.0 - ts.0 % slide_ms;
                let mut start = last;
                loop {
                    f(Window {
                        start: EventTime(start),
                        end: EventTime(start.saturating_add(size_ms)),
                    });
                    if start < slide_ms || start - slide_ms + size_ms <= ts.0 {
                        break;
                    }
                    start -= slide_ms;
                }
            }
            WindowAssigner::Session { gap_ms } => f(Window {
                start: ts,
                end: ts.plus(gap_ms),
            }),
        }
    }

    fn is_session(&self) -> bool {
        matches!(self, WindowAssigner::Session { .. })
    }
}

/// When panes fire besides the on-time firing at the watermark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// Fire an early pane after every this many records into a window that has not fired
    /// on time yet. `None`: no early firings.
    pub early_every: Option<u64>,
    /// Re-fire a pane for every record that arrives after its on-time firing (within the
    /// allowed lateness). If false, such records still update the state but fire nothing.
    pub late_firings: bool,
}

/// An incremental aggregation: records are folded into an accumulator as they arrive, so a
/// window holds one accumulator per key instead of its records.
pub trait Aggregate: Send + Sync + 'static {
    /// Records folded in.
    type In;
    /// The state per (key, window). Session windows merge accumulators.
    type Acc: Clone + Serialize + DeserializeOwned + Send + 'static;
    /// What a firing emits.
    type Out: Clone + Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static;
    /// A fresh accumulator.
    fn create(&self) -> Self::Acc;
    /// Fold one record in.
    fn add(&self, acc: &mut Self::Acc, value: &Self::In);
    /// Merge `other` into `acc` (session windows).
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    /// The value a firing emits.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
}

/// Counts records.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count<T>(std::marker::PhantomData<fn(&T)>);

impl<T> Count<T> {
    /// A counter.
    pub fn new() -> Self {
        Count(std::marker::PhantomData)
    }
}

impl<T: 'static> Aggregate for Count<T> {
    type In = T;
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    #[inline]
    fn add(&self, acc: &mut u64, _: &T) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// A reduce function as an aggregate: `f(f(a, b), c)`. Empty windows do not exist.
pub struct Reduce<T, F> {
    f: F,
    _t: std::marker::PhantomData<fn(T) -> T>,
}

impl<T, F> Reduce<T, F> {
    /// Reduce with `f`.
    pub fn new(f: F) -> Self {
        Reduce {
            f,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T, F> Aggregate for Reduce<T, F>
where
    T: Clone + Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static,
    F: Fn(&T, &T) -> T + Send + Sync + 'static,
{
    type In = T;
    type Acc = Option<T>;
    type Out = Option<T>;
    fn create(&self) -> Option<T> {
        None
    }
    fn add(&self, acc: &mut Option<T>, value: &T) {
        *acc = Some(match acc.take() {
            None => value.clone(),
            Some(a) => (self.f)(&a, value),
        });
    }
    fn merge(&self, acc: &mut Option<T>, other: Option<T>) {
        if let Some(o) = other {
            self.add(acc, &o);
        }
    }
    fn result(&self, acc: &Option<T>) -> Option<T> {
        acc.clone()
    }
}

/// A process function: the window keeps all its records and `f` sees them at each firing
/// (sorted by arrival; use this only where an incremental aggregate does not fit).
pub struct Process<T, O, F> {
    f: F,
    _t: std::marker::PhantomData<fn(T) -> O>,
}

impl<T, O, F> Process<T, O, F> {
    /// Process the whole window's records with `f`.
    pub fn new(f: F) -> Self {
        Process {
            f,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T, O, F> Aggregate for Process<T, O, F>
where
    T: Clone + Serialize + DeserializeOwned + Send + 'static,
    O: Clone + Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static,
    F: Fn(&[T]) -> O + Send + Sync + 'static,
{
    type In = T;
    type Acc = Vec<T>;
    type Out = O;
    fn create(&self) -> Vec<T> {
        Vec::new()
    }
    fn add(&self, acc: &mut Vec<T>, value: &T) {
        acc.push(value.clone());
    }
    fn merge(&self, acc: &mut Vec<T>, other: Vec<T>) {
        acc.extend(other);
    }
    fn result(&self, acc: &Vec<T>) -> O {
        (self.f)(acc)
    }
}

/// Which firing of a pane this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Timing {
    /// Before the watermark reached the window's end.
    Early,
    /// When the watermark reached the window's end.
    OnTime,
    /// After the on-time firing, for a record within the allowed lateness.
    Late,
}

/// One firing: the value of `key`'s pane of `window`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fired<K, O> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
    /// Early, on time or late.
    pub timing: Timing,
    /// The aggregate's value (accumulating: it covers every record of the pane so far).
    pub value: O,
}

/// What a window operator emits.
pub trait WindowOutput<K, O, V> {
    /// A pane fired.
    fn fired(&mut self, fired: Fired<K, O>);
    /// A record was too late for every one of its windows (side output).
    fn late(&mut self, key: &K, ts: EventTime, value: &V);
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PaneState<A> {
    acc: A,
    since_early: u64,
    fired_on_time: bool,
}

/// The checkpointed state of a [`WindowOperator`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowState<K, A> {
    watermark: EventTime,
    panes: Vec<(Window, K, PaneState<A>)>,
    late_records: u64,
}

type PaneMap<K, A> = BTreeMap<(EventTime, EventTime), BTreeMap<K, PaneState<A>>>;

/// The keyed window operator: a pure state machine from records and watermarks to
/// firings and late records.
pub struct WindowOperator<K, G: Aggregate> {
    assigner: WindowAssigner,
    allowed_lateness_ms: u64,
    trigger: Trigger,
    aggregate: G,
    watermark: EventTime,
    // Ordered by (end, start) so that the watermark fires and drops a prefix.
    panes: PaneMap<K, G::Acc>,
    // Session windows only: per key, the open sessions start → end.
    sessions: BTreeMap<K, BTreeMap<EventTime, EventTime>>,
    late_records: u64,
}

impl<K, G> WindowOperator<K, G>
where
    K: Ord + Clone + Serialize + DeserializeOwned,
    G: Aggregate,
{
    /// A window operator with no state.
    pub fn new(
        assigner: WindowAssigner,
        allowed_lateness_ms: u64,
        trigger: Trigger,
        aggregate: G,
    ) -> Self {
        WindowOperator {
            assigner,
            allowed_lateness_ms,
            trigger,
            aggregate,
            watermark: EventTime::MIN,
            panes: BTreeMap::new(),
            sessions: BTreeMap::new(),
            late_records: 0,
        }
    }

    /// The operator's current watermark.
    pub fn watermark(&self) -> EventTime {
        self.watermark
    }

    /// How many records went to the side output so far.
    pub fn late_records(&self) -> u64 {
        self.late_records
    }

    /// Number of (window, key) panes held.
    pub fn open_panes(&self) -> usize {
        self.panes.values().map(BTreeMap::len).sum()
    }

    fn is_expired(&self, window: Window) -> bool {
        window.end.plus(self.allowed_lateness_ms) <= self.watermark
    }

    /// One record of `key` at event time `ts`.
    #[inline]
    pub fn on_record(
        &mut self,
        key: &K,
        ts: EventTime,
        value: &G::In,
        out: &mut impl WindowOutput<K, G::Out, G::In>,
    ) {
        if self.assigner.is_session() {
            return self.on_session_record(key, ts, value, out);
        }
        let mut any = false;
        let assigner = self.assigner;
        assigner.assign(ts, |window| {
            if self.is_expired(window) {
                return;
            }
            any = true;
            self.add_to_pane(window, key, value, out);
        });
        if !any {
            self.late_records += 1;
            out.late(key, ts, value);
        }
    }

    #[inline]
    fn add_to_pane(
        &mut self,
        window: Window,
        key: &K,
        value: &G::In,
        out: &mut impl WindowOutput<K, G::Out, G::In>,
    ) {
        let panes = self.panes.entry((window.end, window.start)).or_default();
        let pane = match panes.get_mut(key) {
            Some(p) => p,
            None => panes.entry(key.clone()).or_insert_with(|| PaneState {
                acc: self.aggregate.create(),
                since_early: 0,
                fired_on_time: false,
            }),
        };
        self.aggregate.add(&mut pane.acc, value);
        if pane.fired_on_time {
            if self.trigger.late_firings {
                out.fired(Fired {
                    key: key.clone(),
                    window,
                    timing: Timing::Late,
                    value: self.aggregate.result(&pane.acc),
                });
            }
        } else if let Some(n) = self.trigger.early_every {
            pane.since_early += 1;
            if pane.since_early >= n {
                pane.since_early = 0;
                out.fired(Fired {
                    key: key.clone(),
                    window,
                    timing: Timing::Early,
                    value: self.aggregate.result(&pane.acc),
                });
            }
        }
    }

    fn on_session_record(
        &mut self,
        key: &K,
        ts: EventTime,
        value: &G::In,
        out: &mut impl WindowOutput<K, G::Out, G::In>,
    ) {
        let mut window = Window::default_for(ts, &self.assigner);
        if self.is_expired(window) {
            self.late_records += 1;
            out.late(key, ts, value);
            return;
        }
        // Merge every open session of this key that overlaps the proto-window.
        let sessions = self.sessions.entry(key.clone()).or_default();
        let overlapping: Vec<(EventTime, EventTime)> = sessions
            .range(..window.end)
            .filter(|(_, &end)| end > window.start)
            .map(|(&s, &e)| (s, e))
            .collect();
        let mut acc = self.aggregate.create();
        let mut fired_on_time = false;
        for (start, end) in overlapping {
            sessions.remove(&start);
            window.start = window.start.min(start);
            window.end = window.end.max(end);
            if let Some(panes) = self.panes.get_mut(&(end, start)) {
                if let Some(p) = panes.remove(key) {
                    self.aggregate.merge(&mut acc, p.acc);
                    fired_on_time |= p.fired_on_time;
                }
                if panes.is_empty() {
                    self.panes.remove(&(end, start));
                }
            }
        }
        sessions.insert(window.start, window.end);
        self.aggregate.add(&mut acc, value);
        // A merged session that already fired, or that ends at or before the watermark,
        // re-fires as a late pane; otherwise it waits for the watermark.
        let complete = window.end <= self.watermark;
        let pane = PaneState {
            acc,
            since_early: 0,
            fired_on_time: fired_on_time || complete,
        };
        if pane.fired_on_time && self.trigger.late_firings {
            out.fired(Fired {
                key: key.clone(),
                window,
                timing: Timing::Late,
                value: self.aggregate.result(&pane.acc),
            });
        }
        self.panes
            .entry((window.end, window.start))
            .or_default()
            .insert(key.clone(), pane);
    }

    /// The operator's watermark advanced to `watermark`: fire every pane whose window ended,
    /// then drop the state of windows past their allowed lateness.
    pub fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut impl WindowOutput<K, G::Out, G::In>,
    ) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        let fire_upto = (watermark, EventTime::MAX);
        for (&(end, start), panes) in self.panes.range_mut(..=fire_upto) {
            if end > watermark {
                break;
            }
            for (key, pane) in panes.iter_mut() {
                if !pane.fired_on_time {
                    pane.fired_on_time = true;
                    out.fired(Fired {
                        key: key.clone(),
                        window: Window { start, end },
                        timing: Timing::OnTime,
                        value: self.aggregate.result(&pane.acc),
                    });
                }
            }
        }
        let lateness = self.allowed_lateness_ms;
        while let Some((&(end, start), _)) = self.panes.first_key_value() {
            if end.plus(lateness) > watermark {
                break;
            }
            let panes = self.panes.remove(&(end, start)).unwrap_or_default();
            if self.assigner.is_session() {
                for key in panes.keys() {
                    if let Some(s) = self.sessions.get_mut(key) {
                        s.remove(&start);
                        if s.is_empty() {
                            self.sessions.remove(key);
                        }
                    }
                }
            }
        }
    }

    /// A copy of the state for a checkpoint.
    pub fn snapshot(&self) -> WindowState<K, G::Acc> {
        let mut panes = Vec::with_capacity(self.open_panes());
        for (&(end, start), by_key) in &self.panes {
            for (key, pane) in by_key {
                panes.push((Window { start, end }, key.clone(), pane.clone()));
            }
        }
        WindowState {
            watermark: self.watermark,
            panes,
            late_records: self.late_records,
        }
    }

    /// Replace the state with a checkpoint's.
    pub fn restore(&mut self, state: WindowState<K, G::Acc>) {
        self.watermark = state.watermark;
        self.late_records = state.late_records;
        self.panes.clear();
        self.sessions.clear();
        for (window, key, pane) in state.panes {
            if self.assigner.is_session() {
                self.sessions
                    .entry(key.clone())
                    .or_default()
                    .insert(window.start, window.end);
            }
            self.panes
                .entry((window.end, window.start))
                .or_default()
                .insert(key, pane);
        }
    }
}

impl Window {
    fn default_for(ts: EventTime, assigner: &WindowAssigner) -> Window {
        let mut w = Window {
            start: ts,
            end: ts.plus(1),
        };
        assigner.assign(ts, |x| w = x);
        w
    }
}

/// A [`WindowOutput`] that collects into vectors (tests, the batch reference, small jobs).
#[derive(Debug)]
pub struct Collect<K, O, V> {
    /// Every firing, in order.
    pub fired: Vec<Fired<K, O>>,
    /// Every late record, in order.
    pub late: Vec<(K, EventTime, V)>,
}

impl<K, O, V> Default for Collect<K, O, V> {
    fn default() -> Self {
        Collect {
            fired: Vec::new(),
            late: Vec::new(),
        }
    }
}

impl<K: Clone, O, V: Clone> WindowOutput<K, O, V> for Collect<K, O, V> {
    fn fired(&mut self, fired: Fired<K, O>) {
        self.fired.push(fired);
    }
    fn late(&mut self, key: &K, ts: EventTime, value: &V) {
        self.late.push((key.clone(), ts, value.clone()));
    }
}

/// The batch answer: every window's final value computed over a finite set of records
/// at once, with no notion of arrival order. A streaming run whose records are all within
/// the watermark bound must end with exactly these values.
pub fn batch_windows<K, G>(
    assigner: WindowAssigner,
    aggregate: &G,
    records: impl IntoIterator<Item = (K, EventTime, G::In)>,
) -> BTreeMap<(K, Window), G::Out>
where
    K: Ord + Clone,
    G: Aggregate,
{
    let mut accs: BTreeMap<(K, Window), G::Acc> = BTreeMap::new();
    match assigner {
        WindowAssigner::Session { gap_ms } => {
            // Sort each key's records by time; a gap of at least `gap_ms` splits sessions.
            let mut by_key: BTreeMap<K, Vec<(EventTime, G::In)>> = BTreeMap::new();
            for (k, ts, v) in records {
                by_key.entry(k).or_default().push((ts, v));
            }
            for (k, mut recs) in by_key {
                recs.sort_by_key(|(ts, _)| *ts);
                let mut current: Option<(Window, G::Acc)> = None;
                for (ts, v) in recs {
                    match current.as_mut() {
                        Some((w, acc)) if ts < w.end => {
                            w.end = w.end.max(ts.plus(gap_ms));
                            aggregate.add(acc, &v);
                        }
                        _ => {
                            if let Some((w, acc)) = current.take() {
                                accs.insert((k.clone(), w), acc);
                            }
                            let mut acc = aggregate.create();
                            aggregate.add(&mut acc, &v);
                            current = Some((
                                Window {
                                    start: ts,
                                    end: ts.plus(gap_ms),
                                },
                                acc,
                            ));
                        }
                    }
                }
                if let Some((w, acc)) = current {
                    accs.insert((k.clone(), w), acc);
                }
            }
        }
        _ => {
            for (k, ts, v) in records {
                assigner.assign(ts, |w| {
                    let acc = accs
                        .entry((k.clone(), w))
                        .or_insert_with(|| aggregate.create());
                    aggregate.add(acc, &v);
                });
            }
        }
    }
    accs.into_iter()
        .map(|(kw, acc)| (kw, aggregate.result(&acc)))
        .collect()
}

/// The final value of every (key, window) in a list of firings: the last firing wins
/// (accumulating mode).
pub fn final_panes<K: Ord + Clone, O: Clone>(fired: &[Fired<K, O>]) -> BTreeMap<(K, Window), O> {
    let mut out = BTreeMap::new();
    for f in fired {
        out.insert((f.key.clone(), f.window), f.value.clone());
    }
    out
}

impl<G: Aggregate> Aggregate for std::sync::Arc<G> {
    type In = G::In;
    type Acc = G::Acc;
    type Out = G::Out;
    fn create(&self) -> G::Acc {
        (**self).create()
    }
    #[inline]
    fn add(&self, acc: &mut G::Acc, value: &G::In) {
        (**self).add(acc, value)
    }
    fn merge(&self, acc: &mut G::Acc, other: G::Acc) {
        (**self).merge(acc, other)
    }
    fn result(&self, acc: &G::Acc) -> G::Out {
        (**self).result(acc)
    }
}
