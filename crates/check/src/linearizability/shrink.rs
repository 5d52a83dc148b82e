//! Shrinking a non-linearizable sub-history to a small core that still shows the bug.
//!
//! Deleting operations at will is unsound: drop the write a read depends on and the
//! read looks like a read of a value nobody wrote, which is a different (false) story.
//! So the shrinker only makes changes that can never turn a linearizable history into a
//! non-linearizable one; when the changed history still fails, so does the original.
//!
//! 1. **Drop an observer**: a definite read, or a compare-and-set that returned
//!    `false`. It never changes the state, so a linearization without it is still one.
//! 2. **Relax** a definite write, delete or successful compare-and-set to "outcome
//!    unknown" (no completion, may be left out). Every linearization of the original is
//!    one of the relaxed history.
//! 3. **Drop unread writers**: a set G of writes, deletes and compare-and-sets, definite
//!    or not, when no kept operation can meet a state that G wrote. A kept operation
//!    depends on G if it is a definite read that returned a value written by G (`nil`
//!    for a delete), a compare-and-set that expects such a value, or a definite failed
//!    compare-and-set. It cannot meet the state a G operation g wrote if it completed
//!    before g was invoked, or if a kept definite write or delete W of the key was
//!    invoked after g completed and completed before the dependent was invoked: in
//!    every order it then precedes g, or W comes between them. Take a
//!    linearization and remove G from it: where the state differs from the original
//!    order, the original state was written by G, so only operations that do not depend
//!    on it meet it there (writes, deletes, and indeterminate compare-and-sets that did
//!    nothing, which are left out if they would now swap). The result is a
//!    linearization. The same rule, applied to indeterminate operations, is one of the
//!    exact simplifications before the search ([`Dependencies`]). The shrinker also
//!    keeps, for every value a kept read returned, at least one operation that wrote it,
//!    so that the core tells the story of the bug and not of a different one.
//! 4. **Truncate** at the furthest completion T that the failed search reached (see
//!    `search::Trace`): drop observers invoked after T and relax mutators invoked after
//!    T. The search placed no legal order of everything completed by T, and such an
//!    order of the truncated history would be one of the original, so it still fails.
//! 5. Indeterminate operations invoked after every definite one has completed can
//!    always go last, or be left out: drop them.
//!
//! Truncation comes first. Then a few small candidates around the operation the search
//! got stuck on: it and the 0, 1, 2, 4, ... observers and other operations nearest to
//! it, with what rule 3 requires. Then observers go in chunks of halving size, as in delta debugging (Zeller
//! & Hildebrandt, "Simplifying and isolating failure-inducing input", TSE 2002), then
//! unread writers as a group, then the other mutators one at a time (dropped if rule 3
//! allows, else relaxed); rounds repeat until nothing changes or
//! [`CheckConfig::shrink_budget`](super::CheckConfig::shrink_budget) runs out.

use std::collections::{BTreeMap, BTreeSet};

use super::model::Model;
use super::report::CounterExample;
use super::search::{search, Entry, Outcome, Searched};
use super::{CheckConfig, Prepared};
use crate::history::{Op, OpResult, Operation, Value};

/// One operation of the core: an index into the prepared sub-history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) index: usize,
    /// Treated as outcome unknown.
    pub(crate) relaxed: bool,
}

const MAX_ROUNDS: usize = 4;

/// How many operations near the stuck one [`Shrinker::focus`] tries pairing it with.
const PAIRS: usize = 32;

/// The value `op` may write: `Some(None)` for a delete, `None` for a read.
pub(crate) fn written(op: &Op) -> Option<Option<Value>> {
    match op {
        Op::Write { value, .. } => Some(Some(*value)),
        Op::Cas { new, .. } => Some(Some(*new)),
        Op::Delete { .. } => Some(None),
        Op::Read { .. } => None,
    }
}

/// Intervals as (completion, invocation), sorted, each invocation replaced by the least
/// invocation from there on: "the earliest invocation among those completing at or
/// after t" is then one binary search. No completion counts as +∞.
#[derive(Debug, Default)]
struct Intervals(Vec<(u64, u64)>);

impl Intervals {
    fn push(&mut self, entry: &Entry<'_>) {
        self.0
            .push((entry.complete.unwrap_or(u64::MAX), entry.invoke));
    }

    fn seal(&mut self) {
        self.0.sort_unstable();
        for index in (0..self.0.len().saturating_sub(1)).rev() {
            self.0[index].1 = self.0[index].1.min(self.0[index + 1].1);
        }
    }

    /// The earliest invocation of an interval that does not end before `time`.
    fn first_invoked_among_ending_from(&self, time: u64) -> Option<u64> {
        let first = self.0.partition_point(|&(complete, _)| complete < time);
        self.0.get(first).map(|&(_, invoke)| invoke)
    }
}

/// What the kept operations of a history need from the operations that rule 3 of the
/// module docs would drop.
pub(crate) struct Dependencies<'x> {
    /// For each value, the kept operations that depend on it: definite reads that
    /// returned it, and compare-and-sets that expect it.
    dependents: BTreeMap<Option<Value>, Intervals>,
    /// The kept definite failed compare-and-sets, which depend on every value but one.
    failed_cas: Intervals,
    /// Per key, the kept definite writes and deletes as (invocation, completion) sorted
    /// by invocation, each completion replaced by the least from there on.
    separators: BTreeMap<&'x str, Vec<(u64, u64)>>,
}

impl<'x> Dependencies<'x> {
    pub(crate) fn new(kept: impl IntoIterator<Item = Entry<'x>>) -> Self {
        let mut dependents: BTreeMap<Option<Value>, Intervals> = BTreeMap::new();
        let mut failed_cas = Intervals::default();
        let mut separators: BTreeMap<&'x str, Vec<(u64, u64)>> = BTreeMap::new();
        for entry in kept {
            match (entry.op, entry.result) {
                (Op::Cas { .. }, Some(OpResult::CasOk(false))) => failed_cas.push(&entry),
                (Op::Cas { expected, .. }, _) => {
                    dependents.entry(*expected).or_default().push(&entry);
                }
                (Op::Read { .. }, Some(OpResult::ReadOk(seen))) => {
                    dependents.entry(*seen).or_default().push(&entry);
                }
                _ => {}
            }
            if let (Op::Write { .. } | Op::Delete { .. }, Some(complete)) =
                (entry.op, entry.complete)
            {
                separators
                    .entry(entry.op.key())
                    .or_default()
                    .push((entry.invoke, complete));
            }
        }
        dependents.values_mut().for_each(Intervals::seal);
        failed_cas.seal();
        for writers in separators.values_mut() {
            writers.sort_unstable();
            for index in (0..writers.len().saturating_sub(1)).rev() {
                writers[index].1 = writers[index].1.min(writers[index + 1].1);
            }
        }
        Dependencies {
            dependents,
            failed_cas,
            separators,
        }
    }

    /// Whether no kept operation can meet the state `dropped` wrote.
    ///
    /// A kept operation that depends on the value `dropped` writes, or a kept failed
    /// compare-and-set, could meet it unless it completed before `dropped` was invoked,
    /// or was invoked after some kept definite write W of the key completed, W having
    /// been invoked after `dropped` completed: in every order it then comes before
    /// `dropped`, or W comes between them.
    pub(crate) fn allow_drop(&self, dropped: &Entry<'_>) -> bool {
        let value = match (dropped.op, dropped.result) {
            // Observers write nothing; dropping them is rule 1.
            (Op::Read { .. }, _) | (Op::Cas { .. }, Some(OpResult::CasOk(false))) => return true,
            (op, _) => written(op),
        };
        let from = dropped.invoke;
        let first_dependent = value
            .and_then(|value| self.dependents.get(&value))
            .and_then(|dependents| dependents.first_invoked_among_ending_from(from));
        let first_failed_cas = self.failed_cas.first_invoked_among_ending_from(from);
        let earliest = match (first_dependent, first_failed_cas) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return true,
        };
        // The least completion of a kept definite write invoked after `dropped` completed.
        let separated_until = dropped.complete.and_then(|complete| {
            let writers = self.separators.get(dropped.op.key())?;
            let first_after = writers.partition_point(|&(invoke, _)| invoke <= complete);
            writers
                .get(first_after)
                .map(|&(_, least_completion)| least_completion)
        });
        separated_until.is_some_and(|separated| separated < earliest)
    }
}

/// Shrinks `prepared`, which must not be linearizable, and describes what is left.
pub(crate) fn counter_example<M: Model>(
    model: &M,
    key: Option<&str>,
    partition: &[&Operation],
    prepared: &[Prepared<'_>],
    config: &CheckConfig,
) -> CounterExample {
    let mut shrinker = Shrinker {
        model,
        prepared,
        budget: config.shrink_budget,
    };
    let mut core: Vec<Item> = (0..prepared.len())
        .map(|index| Item {
            index,
            relaxed: false,
        })
        .collect();
    let all = core.clone();
    let full_trace = match search(model, &shrinker.entries(&core), config.step_budget, true) {
        Searched {
            outcome: Outcome::NotLinearizable(trace),
            ..
        } => trace,
        _ => None,
    };
    if let Some(trace) = &full_trace {
        let stuck = core[trace.stuck].index;
        shrinker.truncate(&mut core, trace.deadline);
        shrinker.focus(&mut core, stuck);
    }
    for _ in 0..MAX_ROUNDS {
        let mut changed = shrinker.drop_observers(&mut core);
        changed |= shrinker.drop_unread_writers(&mut core);
        changed |= shrinker.drop_or_relax_mutators(&mut core);
        shrinker.drop_late(&mut core);
        if !changed || shrinker.budget == 0 {
            break;
        }
    }
    let (core, trace) = match search(
        model,
        &shrinker.recorded_entries(&core),
        config.step_budget,
        true,
    ) {
        Searched {
            outcome: Outcome::NotLinearizable(trace),
            ..
        } => (core, trace),
        Searched {
            outcome: Outcome::BudgetExhausted,
            ..
        } => (core, None),
        // Unreachable if the rules hold; if they do not, report the whole sub-history
        // rather than a core that proves nothing.
        Searched {
            outcome: Outcome::Linearizable,
            ..
        } => (all, full_trace),
    };
    CounterExample::new(model, key, partition, prepared, &core, trace)
}

struct Shrinker<'m, 'p, 'a, M> {
    model: &'m M,
    prepared: &'p [Prepared<'a>],
    budget: u64,
}

impl<'a, M: Model> Shrinker<'_, '_, 'a, M> {
    fn entry(&self, item: &Item) -> Entry<'a> {
        let mut entry = self.prepared[item.index].entry();
        if item.relaxed {
            entry.result = None;
            entry.complete = None;
        }
        entry
    }

    fn entries(&self, core: &[Item]) -> Vec<Entry<'a>> {
        core.iter().map(|item| self.entry(item)).collect()
    }

    /// As [`Self::entries`], with the operations as recorded rather than their
    /// stand-ins, so that the states of the counter-example read as the history did.
    fn recorded_entries(&self, core: &[Item]) -> Vec<Entry<'a>> {
        core.iter()
            .map(|item| Entry {
                op: &self.prepared[item.index].operation.op,
                ..self.entry(item)
            })
            .collect()
    }

    /// Whether `core` is still not linearizable. Running out of budget counts as "no":
    /// the shrinker then keeps what it has, which is known to fail.
    fn still_fails(&mut self, core: &[Item]) -> bool {
        if self.budget == 0 {
            return false;
        }
        let searched = search(self.model, &self.entries(core), self.budget, false);
        self.budget = self.budget.saturating_sub(searched.steps);
        matches!(searched.outcome, Outcome::NotLinearizable(_))
    }

    /// Replaces `core` by `candidate` if that still fails.
    fn try_replace(&mut self, core: &mut Vec<Item>, candidate: Vec<Item>) -> bool {
        if self.still_fails(&candidate) {
            *core = candidate;
            true
        } else {
            false
        }
    }

    fn is_observer(&self, item: &Item) -> bool {
        !item.relaxed
            && matches!(
                self.entry(item).result,
                Some(OpResult::ReadOk(_) | OpResult::CasOk(false))
            )
    }

    /// Rule 4, then rule 5. Sound and still failing by construction, so not checked
    /// here (a refutation can be the most expensive search of all); the final search of
    /// the core confirms it.
    fn truncate(&self, core: &mut Vec<Item>, deadline: u64) {
        let mut candidate: Vec<Item> = core
            .iter()
            .filter(|item| self.entry(item).invoke <= deadline || !self.is_observer(item))
            .map(|item| Item {
                index: item.index,
                relaxed: item.relaxed || self.entry(item).invoke > deadline,
            })
            .collect();
        self.drop_late(&mut candidate);
        *core = candidate;
    }

    /// Rule 5: exact, so no search is needed.
    fn drop_late(&self, core: &mut Vec<Item>) {
        let horizon = core
            .iter()
            .filter_map(|item| self.entry(item).complete)
            .max();
        core.retain(|item| {
            let entry = self.entry(item);
            entry.complete.is_some() || horizon.is_some_and(|horizon| entry.invoke <= horizon)
        });
    }

    /// Rule 1, in chunks of halving size.
    fn drop_observers(&mut self, core: &mut Vec<Item>) -> bool {
        let mut observers: Vec<usize> = core
            .iter()
            .filter(|item| self.is_observer(item))
            .map(|item| item.index)
            .collect();
        let mut changed = false;
        let mut size = observers.len();
        while size > 0 && !observers.is_empty() && self.budget > 0 {
            let mut start = 0;
            while start < observers.len() && self.budget > 0 {
                let end = (start + size).min(observers.len());
                let chunk: BTreeSet<usize> = observers[start..end].iter().copied().collect();
                let candidate: Vec<Item> = core
                    .iter()
                    .filter(|item| !chunk.contains(&item.index))
                    .copied()
                    .collect();
                // With fewer reads, more writers may go too (rule 3): a smaller, cheaper
                // candidate. Try that first, then the chunk alone.
                let smaller = self.without_unread_writers(candidate.clone());
                let replaced = (smaller.len() < candidate.len() && self.try_replace(core, smaller))
                    || self.try_replace(core, candidate);
                if replaced {
                    observers.drain(start..end);
                    changed = true;
                } else {
                    start = end;
                }
            }
            if size == 1 {
                break;
            }
            size = size.div_ceil(2);
        }
        changed
    }

    /// Whether rule 3 allows removing the items at `dropped` from `core`, and the
    /// remaining reads stay explained (see [`Self::unexplained`]).
    fn may_drop(&self, core: &[Item], dropped: &BTreeSet<usize>) -> bool {
        let kept = core.iter().filter(|item| !dropped.contains(&item.index));
        let dependencies = Dependencies::new(kept.map(|item| self.entry(item)));
        core.iter()
            .filter(|item| dropped.contains(&item.index))
            .all(|item| dependencies.allow_drop(&self.entry(item)))
            && self.unexplained(core, dropped).is_empty()
    }

    /// The dropped writers that the kept reads need for a readable story: for each value
    /// a kept read returned that only dropped operations wrote, the last of them to be
    /// invoked. Rule 3 may drop a write that a later write separates from every read of
    /// its value; the core still fails without it, but a stale read would then look like
    /// a read of a value nobody wrote.
    fn unexplained(&self, core: &[Item], dropped: &BTreeSet<usize>) -> BTreeSet<usize> {
        let kept = || core.iter().filter(|item| !dropped.contains(&item.index));
        let read: BTreeSet<Option<Value>> = kept()
            .filter_map(|item| match self.entry(item).result {
                Some(OpResult::ReadOk(seen)) => Some(*seen),
                _ => None,
            })
            .collect();
        let written_by_kept: BTreeSet<Option<Value>> = kept()
            .filter_map(|item| written(self.entry(item).op))
            .collect();
        let mut last_writer: BTreeMap<Option<Value>, (u64, usize)> = BTreeMap::new();
        for item in core.iter().filter(|item| dropped.contains(&item.index)) {
            let entry = self.entry(item);
            let Some(value) = written(entry.op) else {
                continue;
            };
            if read.contains(&value) && !written_by_kept.contains(&value) {
                let latest = last_writer
                    .entry(value)
                    .or_insert((entry.invoke, item.index));
                *latest = (*latest).max((entry.invoke, item.index));
            }
        }
        last_writer.into_values().map(|(_, index)| index).collect()
    }

    /// Shrinks a wished-for G to one that rule 3 allows: gives back to the kept
    /// operations every dropped writer that they depend on, or need to be explained,
    /// until none is left. Dropped observers stay dropped (rule 1).
    fn closure(&self, core: &[Item], mut dropped: BTreeSet<usize>) -> BTreeSet<usize> {
        loop {
            let kept = core.iter().filter(|item| !dropped.contains(&item.index));
            let dependencies = Dependencies::new(kept.map(|item| self.entry(item)));
            let mut needed: BTreeSet<usize> = core
                .iter()
                .filter(|item| dropped.contains(&item.index))
                .filter(|item| !dependencies.allow_drop(&self.entry(item)))
                .map(|item| item.index)
                .collect();
            if needed.is_empty() {
                needed = self.unexplained(core, &dropped);
            }
            if needed.is_empty() {
                return dropped;
            }
            for index in needed {
                dropped.remove(&index);
            }
        }
    }

    /// A large G for rule 3: every writer and failed compare-and-set that the reads do
    /// not need.
    fn unread_writers(&self, core: &[Item]) -> BTreeSet<usize> {
        let wished = core
            .iter()
            .filter(|item| !matches!(self.entry(item).result, Some(OpResult::ReadOk(_))))
            .map(|item| item.index)
            .collect();
        self.closure(core, wished)
    }

    fn without_unread_writers(&self, core: Vec<Item>) -> Vec<Item> {
        let dropped = self.unread_writers(&core);
        if dropped.is_empty() {
            return core;
        }
        core.into_iter()
            .filter(|item| !dropped.contains(&item.index))
            .collect()
    }

    /// Rule 3 with its largest G.
    fn drop_unread_writers(&mut self, core: &mut Vec<Item>) -> bool {
        let candidate = self.without_unread_writers(core.clone());
        candidate.len() < core.len() && self.try_replace(core, candidate)
    }

    /// Small candidates around `focus`, the operation the search got stuck on, each with
    /// what rules 1 and 3 then require to keep: first `focus` with one other operation,
    /// for the [`PAIRS`] operations invoked nearest to it (a stale read needs only the
    /// write it saw, which rule 3 keeps, and one later write); then `focus` with the 0,
    /// 1, 2, 4, ... nearest observers and as many other operations. The first that fails
    /// replaces the core. Small candidates are cheap to check either way, while the
    /// chunks of [`Self::drop_observers`] start large.
    fn focus(&mut self, core: &mut Vec<Item>, focus: usize) {
        let Some(center) = core.iter().find(|item| item.index == focus) else {
            return;
        };
        let center = self.entry(center).invoke;
        let nearest = |observers: Option<bool>| {
            let mut nearest: Vec<(u64, usize)> = core
                .iter()
                .filter(|item| item.index != focus)
                .filter(|item| {
                    observers.is_none_or(|observers| self.is_observer(item) == observers)
                })
                .map(|item| (self.entry(item).invoke.abs_diff(center), item.index))
                .collect();
            nearest.sort_unstable();
            nearest
                .into_iter()
                .map(|(_, index)| index)
                .collect::<Vec<usize>>()
        };
        let mut kept_sets: Vec<Vec<usize>> = vec![Vec::new()];
        kept_sets.extend(
            nearest(None)
                .into_iter()
                .take(PAIRS)
                .map(|other| vec![other]),
        );
        let (observers, others) = (nearest(Some(true)), nearest(Some(false)));
        let mut count = 1;
        while count / 2 < observers.len().max(others.len()) {
            let kept = observers
                .iter()
                .take(count)
                .chain(others.iter().take(count));
            kept_sets.push(kept.copied().collect());
            count *= 2;
        }
        let candidates = kept_sets.into_iter().map(|kept| {
            let wished: BTreeSet<usize> = core
                .iter()
                .map(|item| item.index)
                .filter(|index| *index != focus && !kept.contains(index))
                .collect();
            let dropped = self.closure(core, wished);
            core.iter()
                .filter(|item| !dropped.contains(&item.index))
                .copied()
                .collect()
        });
        let mut candidates: Vec<Vec<Item>> = candidates.collect();
        // What rule 3 adds back varies a lot (a compare-and-set keeps the writer of the
        // value it expects, and so on): the smallest candidates first.
        candidates.sort_by_key(Vec::len);
        for candidate in candidates {
            if self.budget == 0 {
                return;
            }
            if candidate.len() < core.len() && self.try_replace(core, candidate) {
                return;
            }
        }
    }

    /// Rules 3 and 2, one mutator at a time: first drop what can go, latest first (a
    /// compare-and-set keeps the writer of the value it expects, so chains come apart
    /// from their end) and until nothing more goes, as a smaller core is cheaper to
    /// check; then relax the rest, as relaxed operations float.
    fn drop_or_relax_mutators(&mut self, core: &mut Vec<Item>) -> bool {
        let mut changed = false;
        loop {
            let mut dropped_any = false;
            let mut mutators: Vec<(u64, usize)> = core
                .iter()
                .filter(|item| !self.is_observer(item))
                .map(|item| (self.entry(item).invoke, item.index))
                .collect();
            mutators.sort_unstable_by(|a, b| b.cmp(a));
            for (_, index) in mutators {
                if self.budget > 0 && self.may_drop(core, &BTreeSet::from([index])) {
                    let candidate: Vec<Item> = core
                        .iter()
                        .filter(|item| item.index != index)
                        .copied()
                        .collect();
                    dropped_any |= self.try_replace(core, candidate);
                }
            }
            changed |= dropped_any;
            if !dropped_any || self.budget == 0 {
                break;
            }
        }
        let mutators: Vec<usize> = core
            .iter()
            .filter(|item| !self.is_observer(item))
            .map(|item| item.index)
            .collect();
        for index in mutators {
            let Some(position) = core.iter().position(|item| item.index == index) else {
                continue;
            };
            let item = core[position];
            if self.budget > 0 && !item.relaxed && self.entry(&item).complete.is_some() {
                let mut candidate = core.clone();
                candidate[position].relaxed = true;
                changed |= self.try_replace(core, candidate);
            }
        }
        changed
    }
}
