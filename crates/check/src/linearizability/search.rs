//! The Wing & Gong search with Lowe's cache of explored configurations, on one
//! (sub-)history.
//!
//! Invocations and completions of the definite operations sit in one list ordered by
//! time. The search walks the list from its head: at an invocation it tries to make that
//! operation take effect next; if the model accepts it the operation leaves the list and
//! the walk restarts at the head. Reaching a completion means an operation that has
//! already returned was not placed, so the last choice is undone and the walk resumes
//! after it (Wing & Gong 1993). A configuration is the set of placed operations and the
//! model state; Lowe (2017) observed that two paths reaching the same configuration have
//! the same future, so a configuration that was explored and failed is never explored
//! again.
//!
//! An operation of unknown outcome has no completion, so it never forces a backtrack: it
//! may take effect anywhere after its invocation, or never. Such operations wait in a
//! list of their own and are tried only when no definite operation can go next (they
//! still must be invoked before the first pending completion). The search succeeds once
//! every definite operation has been placed.
//!
//! Floating operations of unknown outcome would otherwise multiply the configurations:
//! any subset of k of them can be placed before each read, for instance to explain a
//! compare-and-set that failed. Four refinements keep that in check, all exact. Each
//! skips only orders for which an order exists that the search does try: one with the
//! fewest indeterminate operations, each placed as late as possible, and identical ones
//! in invocation order.
//!
//! - *Subsumption.* A configuration is also skipped when a failed one had placed the
//!   same definite operations, reached the same state, and placed only a subset of its
//!   indeterminate ones: the failed one had every option this one has (indeterminate
//!   operations are optional), so this one fails too. Only finished configurations are
//!   recorded, so every recorded failure was fully explored. Trying definite operations
//!   first makes the smaller subsets come first.
//! - An indeterminate operation is not placed where it leaves the state unchanged.
//! - Nor where no operation that may go next needs it just before (see
//!   [`needed_next`]): it can then as well go later.
//! - Identical indeterminate operations are placed in invocation order
//!   ([`earlier_twins`]).
//!
//! The arguments go by induction on the order in which configurations finish: a
//! finished configuration from which a legal completion exists would have found the
//! canonical one, whose first step none of these rules skips, and which no recorded
//! failure subsumes (that failure could itself have been completed).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::model::Model;
use crate::history::{Op, OpResult};

/// One operation as the search sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub(crate) op: &'a Op,
    /// `None`: outcome unknown.
    pub(crate) result: Option<&'a OpResult>,
    pub(crate) invoke: u64,
    /// `None`: it may take effect at any time after `invoke`, or never.
    pub(crate) complete: Option<u64>,
}

/// The furthest point in time a failed search reached, for the counter-example.
///
/// Every configuration the search reached got stuck at or before the completion of
/// `stuck`; so no legal order places every operation that completed by then.
#[derive(Debug, Clone)]
pub(crate) struct Trace<S> {
    pub(crate) initial: S,
    /// Entry index and the state after it, in linearization order.
    pub(crate) prefix: Vec<(usize, S)>,
    /// The entry whose completion was reached without it being placed.
    pub(crate) stuck: usize,
    /// That completion's time.
    pub(crate) deadline: u64,
}

#[derive(Debug)]
pub(crate) enum Outcome<S> {
    Linearizable,
    /// The trace is filled in only when asked for.
    NotLinearizable(Option<Trace<S>>),
    BudgetExhausted,
}

#[derive(Debug)]
pub(crate) struct Searched<S> {
    pub(crate) outcome: Outcome<S>,
    pub(crate) steps: u64,
}

/// A fixed-size set of small integers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Self {
        Bits(vec![0; len.div_ceil(64)])
    }

    fn insert(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }

    fn remove(&mut self, index: usize) {
        self.0[index / 64] &= !(1 << (index % 64));
    }

    fn contains(&self, index: usize) -> bool {
        self.0[index / 64] & (1 << (index % 64)) != 0
    }

    fn is_subset(&self, other: &Bits) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .all(|(mine, theirs)| mine & !theirs == 0)
    }
}

/// Where an entry sits in [`Placed`]: its rank among the definite entries in invocation
/// order, or among the indeterminate ones.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Definite(usize),
    Indeterminate(usize),
}

/// The bounds of [`Placed`]'s window, saved to undo an insertion.
#[derive(Debug, Clone, Copy)]
struct Mark {
    low: usize,
    high: usize,
}

/// The set of placed operations, kept so that a configuration is cheap to hash and to
/// store. The search places operations roughly in invocation order, so the definite
/// ones below some rank `low` are all placed and those from `high` on are not: only the
/// window of bits in between varies. Indeterminate operations are few and kept apart.
struct Placed {
    slots: Vec<Slot>,
    definite: Bits,
    definite_len: usize,
    indeterminate: Bits,
    /// The lowest rank of an unplaced definite entry.
    low: usize,
    /// One more than the highest rank of a placed definite entry (0 if none).
    high: usize,
}

impl Placed {
    fn new(entries: &[Entry<'_>]) -> Self {
        let mut by_invocation: Vec<usize> = (0..entries.len()).collect();
        by_invocation.sort_by_key(|&index| (entries[index].invoke, index));
        let mut slots = vec![Slot::Indeterminate(0); entries.len()];
        let (mut definite, mut indeterminate) = (0, 0);
        for index in by_invocation {
            if entries[index].complete.is_some() {
                slots[index] = Slot::Definite(definite);
                definite += 1;
            } else {
                slots[index] = Slot::Indeterminate(indeterminate);
                indeterminate += 1;
            }
        }
        Placed {
            slots,
            definite: Bits::new(definite),
            definite_len: definite,
            indeterminate: Bits::new(indeterminate),
            low: 0,
            high: 0,
        }
    }

    fn contains(&self, entry: usize) -> bool {
        match self.slots[entry] {
            Slot::Definite(rank) => self.definite.contains(rank),
            Slot::Indeterminate(rank) => self.indeterminate.contains(rank),
        }
    }

    fn mark(&self) -> Mark {
        Mark {
            low: self.low,
            high: self.high,
        }
    }

    fn insert(&mut self, entry: usize) {
        match self.slots[entry] {
            Slot::Definite(rank) => {
                self.definite.insert(rank);
                self.high = self.high.max(rank + 1);
                while self.low < self.definite_len && self.definite.contains(self.low) {
                    self.low += 1;
                }
            }
            Slot::Indeterminate(rank) => self.indeterminate.insert(rank),
        }
    }

    /// Undoes `insert(entry)`, given the mark taken just before it.
    fn remove(&mut self, entry: usize, mark: Mark) {
        match self.slots[entry] {
            Slot::Definite(rank) => self.definite.remove(rank),
            Slot::Indeterminate(rank) => self.indeterminate.remove(rank),
        }
        self.low = mark.low;
        self.high = mark.high;
    }

    /// The words of definite bits from `low` to `high`. Bits below `low` in the first
    /// word are all set and bits from `high` on are clear, so with `low` this determines
    /// the definite set.
    fn window(&self) -> &[u64] {
        if self.high <= self.low {
            &[]
        } else {
            &self.definite.0[self.low / 64..=(self.high - 1) / 64]
        }
    }
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// The time-ordered list of invocations and completions, with O(1) removal and
/// last-in-first-out reinsertion (a removed node keeps its own links).
struct Timeline {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the entry it belongs to, and whether it is the invocation.
    node: Vec<(usize, bool)>,
    call: Vec<usize>,
    ret: Vec<usize>,
}

impl Timeline {
    /// The list of the entries that `include` selects.
    fn new(entries: &[Entry<'_>], include: impl Fn(&Entry<'_>) -> bool) -> Self {
        // (time, is completion, entry). At equal times invocations come first, so
        // operations that merely touch count as concurrent: the order that can only
        // add freedom, never a false alarm.
        let mut points: Vec<(u64, bool, usize)> = Vec::with_capacity(entries.len() * 2);
        for (index, entry) in entries.iter().enumerate() {
            if !include(entry) {
                continue;
            }
            points.push((entry.invoke, false, index));
            if let Some(complete) = entry.complete {
                points.push((complete, true, index));
            }
        }
        points.sort_unstable();
        let nodes = points.len() + 1;
        let mut timeline = Timeline {
            next: (1..=nodes)
                .map(|n| if n == nodes { NIL } else { n })
                .collect(),
            prev: (0..nodes).map(|n| n.wrapping_sub(1)).collect(),
            node: Vec::with_capacity(nodes),
            call: vec![NIL; entries.len()],
            ret: vec![NIL; entries.len()],
        };
        timeline.node.push((NIL, false));
        for (position, &(_, is_completion, index)) in points.iter().enumerate() {
            let node = position + 1;
            timeline.node.push((index, !is_completion));
            if is_completion {
                timeline.ret[index] = node;
            } else {
                timeline.call[index] = node;
            }
        }
        timeline
    }

    fn unlink(&mut self, node: usize) {
        let (before, after) = (self.prev[node], self.next[node]);
        self.next[before] = after;
        if after != NIL {
            self.prev[after] = before;
        }
    }

    fn relink(&mut self, node: usize) {
        let (before, after) = (self.prev[node], self.next[node]);
        self.next[before] = node;
        if after != NIL {
            self.prev[after] = node;
        }
    }

    fn lift(&mut self, entry: usize) {
        self.unlink(self.call[entry]);
        if self.ret[entry] != NIL {
            self.unlink(self.ret[entry]);
        }
    }

    /// Undoes the most recent `lift`, which must have been of `entry`.
    fn unlift(&mut self, entry: usize) {
        if self.ret[entry] != NIL {
            self.relink(self.ret[entry]);
        }
        self.relink(self.call[entry]);
    }
}

struct Frame<S> {
    entry: usize,
    /// The state before this entry took effect.
    previous: S,
    /// The placed set's window before this entry was placed.
    mark: Mark,
    /// For an indeterminate entry: the completion that bounded the pass that placed it.
    deadline: Option<Deadline>,
}

/// The first completion of an unplaced operation: what goes next must be invoked by then.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    entry: usize,
    time: u64,
}

/// A configuration that was fully explored without success.
struct Failure<S> {
    low: usize,
    window: Box<[u64]>,
    indeterminate: Bits,
    state: S,
}

/// Configurations that were fully explored without success, keyed by a hash of their
/// definite operations and state.
struct Failures<S> {
    table: HashMap<u64, Vec<Failure<S>>, BuildHasherDefault<DefaultHasher>>,
}

impl<S: Eq + Hash> Failures<S> {
    fn key(placed: &Placed, state: &S) -> u64 {
        let mut hasher = DefaultHasher::new();
        placed.low.hash(&mut hasher);
        placed.window().hash(&mut hasher);
        state.hash(&mut hasher);
        hasher.finish()
    }

    /// Whether a recorded failure had the same definite operations and state, and a
    /// subset of these indeterminate ones.
    fn subsume(&self, placed: &Placed, state: &S) -> bool {
        let Some(failures) = self.table.get(&Self::key(placed, state)) else {
            return false;
        };
        failures.iter().any(|failure| {
            failure.low == placed.low
                && *failure.window == *placed.window()
                && failure.state == *state
                && failure.indeterminate.is_subset(&placed.indeterminate)
        })
    }

    fn record(&mut self, placed: &Placed, state: S) {
        let failure = Failure {
            low: placed.low,
            window: placed.window().into(),
            indeterminate: placed.indeterminate.clone(),
            state,
        };
        let key = Self::key(placed, &failure.state);
        self.table.entry(key).or_default().push(failure);
    }
}

/// Searches for a linearization of `entries` in at most `budget` steps.
pub(crate) fn search<M: Model>(
    model: &M,
    entries: &[Entry<'_>],
    budget: u64,
    want_trace: bool,
) -> Searched<M::State> {
    // Definite operations' invocations and completions, in time order; and, apart, the
    // invocations of indeterminate ones, which are tried only once no definite
    // operation can go next, so that configurations with fewer of them come first.
    let mut timeline = Timeline::new(entries, |entry| entry.complete.is_some());
    let mut floating = Timeline::new(entries, |entry| entry.complete.is_none());
    let mut state = model.init();
    let mut placed = Placed::new(entries);
    let twins = earlier_twins(entries);
    let mut failures = Failures {
        table: HashMap::default(),
    };
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut unplaced_definite = placed.definite_len;
    let mut furthest: Option<Trace<M::State>> = None;
    let mut steps = 0;
    // Walking `timeline` when `deadline` is `None`, else `floating` up to the deadline.
    let mut deadline: Option<Deadline> = None;
    // The operations that may go next in this configuration, once needed.
    let mut placeable: Option<Vec<usize>> = None;
    let mut node = timeline.next[HEAD];
    loop {
        if unplaced_definite == 0 {
            return Searched {
                outcome: Outcome::Linearizable,
                steps,
            };
        }
        if steps >= budget {
            return Searched {
                outcome: Outcome::BudgetExhausted,
                steps,
            };
        }
        steps += 1;
        let candidate = match deadline {
            None if node == NIL => None,
            None => {
                let (index, is_call) = timeline.node[node];
                if is_call {
                    Some(index)
                } else {
                    // Everything that may go next is invoked before this completion.
                    deadline = Some(Deadline {
                        entry: index,
                        time: entries[index].complete.unwrap_or(u64::MAX),
                    });
                    node = floating.next[HEAD];
                    continue;
                }
            }
            Some(Deadline { time, .. }) => match floating.node.get(node) {
                Some(&(index, _)) if entries[index].invoke > time => None,
                // An identical operation invoked earlier is still unplaced: use it first.
                Some(&(index, _)) if twins[index].is_some_and(|twin| !placed.contains(twin)) => {
                    node = floating.next[node];
                    continue;
                }
                Some(&(index, _)) => Some(index),
                None => None,
            },
        };
        if let Some(index) = candidate {
            let entry = &entries[index];
            let indeterminate = entry.complete.is_none();
            if let Some(next_state) = model.step(&state, entry.op, entry.result) {
                let mark = placed.mark();
                placed.insert(index);
                let postponable = indeterminate && {
                    let time = deadline.map_or(u64::MAX, |deadline| deadline.time);
                    let others = placeable.get_or_insert_with(|| {
                        placeable_entries(&timeline, &floating, entries, time)
                    });
                    !needed_next(model, &state, &next_state, index, entries, others)
                };
                if !postponable && !failures.subsume(&placed, &next_state) {
                    let previous = std::mem::replace(&mut state, next_state);
                    stack.push(Frame {
                        entry: index,
                        previous,
                        mark,
                        deadline,
                    });
                    if indeterminate {
                        floating.lift(index);
                    } else {
                        timeline.lift(index);
                        unplaced_definite -= 1;
                    }
                    deadline = None;
                    placeable = None;
                    node = timeline.next[HEAD];
                    continue;
                }
                placed.remove(index, mark);
            }
            node = match deadline {
                None => timeline.next[node],
                Some(_) => floating.next[node],
            };
            continue;
        }
        // Nothing can go next: this configuration has failed.
        if let (true, Some(blocked)) = (want_trace, deadline) {
            let further = match &furthest {
                None => true,
                Some(trace) => (trace.deadline, trace.prefix.len()) < (blocked.time, stack.len()),
            };
            if further {
                furthest = Some(snapshot(&stack, &state, blocked.entry, blocked.time));
            }
        }
        let Some(frame) = stack.pop() else {
            return Searched {
                outcome: Outcome::NotLinearizable(furthest),
                steps,
            };
        };
        let finished = std::mem::replace(&mut state, frame.previous);
        failures.record(&placed, finished);
        placeable = None;
        placed.remove(frame.entry, frame.mark);
        deadline = frame.deadline;
        node = match deadline {
            None => {
                timeline.unlift(frame.entry);
                unplaced_definite += 1;
                timeline.next[timeline.call[frame.entry]]
            }
            Some(_) => {
                floating.unlift(frame.entry);
                floating.next[floating.call[frame.entry]]
            }
        };
    }
}

/// For each indeterminate entry, the latest indeterminate entry invoked before it with
/// the same operation, if any.
///
/// Two such twins are interchangeable once both are invoked, so an order that uses the
/// later one while the earlier one is left unplaced can swap them: the search places
/// twins in invocation order only. Lost writes of unseen values are all twins once
/// [`blur`](super::blur) has given them one stand-in value.
fn earlier_twins(entries: &[Entry<'_>]) -> Vec<Option<usize>> {
    let mut by_invocation: Vec<usize> = (0..entries.len())
        .filter(|&index| entries[index].complete.is_none())
        .collect();
    by_invocation.sort_by_key(|&index| (entries[index].invoke, index));
    let mut latest: HashMap<&Op, usize, BuildHasherDefault<DefaultHasher>> = HashMap::default();
    let mut twins = vec![None; entries.len()];
    for index in by_invocation {
        twins[index] = latest.insert(entries[index].op, index);
    }
    twins
}

/// The unplaced operations invoked by `time`, the first pending completion: those that
/// may go next.
fn placeable_entries(
    timeline: &Timeline,
    floating: &Timeline,
    entries: &[Entry<'_>],
    time: u64,
) -> Vec<usize> {
    let mut placeable = Vec::new();
    let mut node = timeline.next[HEAD];
    while node != NIL {
        let (index, is_call) = timeline.node[node];
        if !is_call {
            break;
        }
        placeable.push(index);
        node = timeline.next[node];
    }
    let mut node = floating.next[HEAD];
    while node != NIL {
        let (index, _) = floating.node[node];
        if entries[index].invoke > time {
            break;
        }
        placeable.push(index);
        node = floating.next[node];
    }
    placeable
}

/// Whether some operation that may go next needs the indeterminate `entry` to have
/// taken effect just before it, going from `state` to `after`: it is legal after
/// `entry` but not before, or taking `entry` after it instead ends in another state.
///
/// If none does, `entry` can as well take effect later or never: in an order where it
/// comes right before an operation that does not need it, the two can trade places
/// without changing the state after both. An order with the fewest indeterminate
/// operations, placing each as late as possible, never has such a pair, so skipping
/// `entry` here loses no linearization.
fn needed_next<M: Model>(
    model: &M,
    state: &M::State,
    after: &M::State,
    entry: usize,
    entries: &[Entry<'_>],
    placeable: &[usize],
) -> bool {
    if after == state {
        return false;
    }
    let taken = &entries[entry];
    placeable
        .iter()
        .filter(|&&other| other != entry)
        .any(|&other| {
            let next = &entries[other];
            let Some(after_both) = model.step(after, next.op, next.result) else {
                return false;
            };
            match model.step(state, next.op, next.result) {
                None => true,
                Some(without) => model.step(&without, taken.op, taken.result) != Some(after_both),
            }
        })
}

fn snapshot<S: Clone>(stack: &[Frame<S>], current: &S, stuck: usize, deadline: u64) -> Trace<S> {
    let initial = stack
        .first()
        .map_or_else(|| current.clone(), |frame| frame.previous.clone());
    let prefix = stack
        .iter()
        .enumerate()
        .map(|(depth, frame)| {
            let after = stack.get(depth + 1).map_or(current, |next| &next.previous);
            (frame.entry, after.clone())
        })
        .collect();
    Trace {
        initial,
        prefix,
        stuck,
        deadline,
    }
}
