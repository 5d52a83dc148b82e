//! Linearizability checking of key-value and register histories.
//!
//! A history is linearizable if every operation can be given one instant, between its
//! invocation and its completion, at which it takes effect atomically, such that the
//! resulting sequential run is legal for the model (Herlihy & Wing 1990).
//!
//! How a history is read:
//!
//! - `Ok` operations took effect somewhere inside their interval with the recorded result.
//! - `Fail` operations did not take effect and are dropped.
//! - `Info` and pending operations may have taken effect at any time after their
//!   invocation, or never: their completion is +∞ and they may be left out. Reads among
//!   them tell nothing and are dropped.
//! - Operations whose interval endpoints are equal are concurrent: only a completion
//!   strictly before an invocation orders two operations.
//!
//! With a model whose keys are independent ([`Model::independent_keys`], as for
//! [`KvModel`]), each key is checked on its own: a history is linearizable iff every
//! per-key sub-history is (locality, Herlihy & Wing 1990, Theorem 1; exploited as
//! P-compositionality by Horn & Kroening 2015). Each sub-history is searched as in
//! Wing & Gong (1993) with Lowe's cache of explored (placed operations, state) pairs
//! (Lowe 2017). The cache also skips a configuration when an explored one that failed
//! differs only by having placed fewer operations of unknown outcome; with definite
//! operations tried first, this keeps floating `Info` writes from multiplying the
//! search (see `search.rs`).
//!
//! Two exact simplifications run before the search: indeterminate operations invoked
//! after every definite operation has returned are dropped (they can always go last,
//! or be left out), and so are indeterminate writes whose value no read returned and no
//! compare-and-set expects, unless a compare-and-set failed after their invocation
//! (rule 3 in `shrink.rs`: any linearization stays one without them). Last, every value
//! that no read returned and no compare-and-set expects is replaced by one stand-in
//! value, which changes no verdict but lets the search merge states that differ only in
//! such values.
//!
//! On a violation the sub-history is shrunk to a small core that is still not
//! linearizable (see [`CounterExample`]); on a search that runs out of its step budget
//! the answer is [`CheckResult::Unknown`], never a guess.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::history::{Completion, History, Key, Op, OpResult, Operation, Value};

mod model;
mod report;
mod search;
mod shrink;
#[cfg(test)]
mod tests;

pub use model::{KvModel, Model, Register};
pub use report::{CounterExample, LinearizedStep};

use search::{search, Entry, Outcome};

/// Limits on how much work a check may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckConfig {
    /// Search steps allowed for each sub-history (each key, for a model with independent
    /// keys). A step is one attempt to place an operation, or one backtrack. When one
    /// sub-history runs out the check answers [`CheckResult::Unknown`] unless another
    /// key has a violation.
    pub step_budget: u64,
    /// Search steps allowed, in total, for shrinking a counter-example. Running out only
    /// makes the counter-example larger; it is still a genuine one.
    pub shrink_budget: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            step_budget: 10_000_000,
            shrink_budget: 2_000_000,
        }
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// The history is linearizable.
    Ok,
    /// The history is not linearizable; here is a small part of it that shows why.
    Violation(Box<CounterExample>),
    /// The search gave up before deciding.
    Unknown(Unknown),
}

impl CheckResult {
    /// Whether the history was found linearizable.
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    /// The counter-example, if the history was found not linearizable.
    pub fn violation(&self) -> Option<&CounterExample> {
        match self {
            CheckResult::Violation(counter_example) => Some(counter_example),
            _ => None,
        }
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Ok => f.write_str("linearizable"),
            CheckResult::Violation(counter_example) => counter_example.fmt(f),
            CheckResult::Unknown(reason) => write!(f, "unknown: {reason}"),
        }
    }
}

/// Why a check could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// The search of one sub-history used up [`CheckConfig::step_budget`].
    StepBudgetExhausted {
        /// The key of that sub-history (`None` when the history is checked whole).
        key: Option<Key>,
        /// The budget that ran out.
        budget: u64,
    },
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unknown::StepBudgetExhausted { key, budget } => {
                match key {
                    Some(key) => write!(f, "the search of key {key:?}")?,
                    None => f.write_str("the search")?,
                }
                write!(
                    f,
                    " used up its budget of {budget} steps (raise CheckConfig::step_budget)"
                )
            }
        }
    }
}

/// Checks `history` against `model`.
pub fn check<M: Model>(history: &History, model: &M, config: &CheckConfig) -> CheckResult {
    let operations = history.operations();
    let mut partitions: BTreeMap<Option<&str>, Vec<&Operation>> = BTreeMap::new();
    for operation in &operations {
        let key = model.independent_keys().then(|| operation.op.key());
        partitions.entry(key).or_default().push(operation);
    }
    let mut unknown = None;
    for (key, operations) in partitions {
        let prepared = prepare(&operations);
        let stand_ins = blur(&prepared);
        let prepared: Vec<Prepared<'_>> = prepared
            .iter()
            .zip(&stand_ins)
            .map(|(p, stand_in)| Prepared {
                op: stand_in.as_ref().unwrap_or(p.op),
                ..*p
            })
            .collect();
        let entries: Vec<Entry<'_>> = prepared.iter().map(Prepared::entry).collect();
        match search(model, &entries, config.step_budget, false).outcome {
            Outcome::Linearizable => {}
            Outcome::BudgetExhausted => {
                unknown.get_or_insert(Unknown::StepBudgetExhausted {
                    key: key.map(str::to_owned),
                    budget: config.step_budget,
                });
            }
            Outcome::NotLinearizable(_) => {
                let counter_example =
                    shrink::counter_example(model, key, &operations, &prepared, config);
                return CheckResult::Violation(Box::new(counter_example));
            }
        }
    }
    match unknown {
        Some(reason) => CheckResult::Unknown(reason),
        None => CheckResult::Ok,
    }
}

/// Checks a key-value history with [`KvModel`] and the default [`CheckConfig`].
pub fn check_kv(history: &History) -> CheckResult {
    check(history, &KvModel, &CheckConfig::default())
}

/// An operation that takes part in the search of its sub-history.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prepared<'a> {
    pub(crate) operation: &'a Operation,
    /// The operation as searched: `operation.op`, or a stand-in from [`blur`].
    pub(crate) op: &'a Op,
    /// `None`: outcome unknown.
    pub(crate) result: Option<&'a OpResult>,
    /// `None`: may take effect at any time after invocation, or never.
    pub(crate) complete: Option<u64>,
}

impl<'a> Prepared<'a> {
    pub(crate) fn entry(&self) -> Entry<'a> {
        Entry {
            op: self.op,
            result: self.result,
            invoke: self.operation.invoke,
            complete: self.complete,
        }
    }
}

/// Stand-ins that write one value, unseen, instead of each value that no read returned
/// and no compare-and-set expects; `None` where the operation stays as it is.
///
/// Reads and compare-and-sets only ever test the state for equality with the values
/// they return or expect, so the states an unseen value and the stand-in lead to are
/// told apart by no operation: the history is linearizable with the stand-ins iff it
/// is without. With them, the states after writes of different unseen values (lost
/// writes, usually) coincide, and so do the configurations of the search.
fn blur(prepared: &[Prepared<'_>]) -> Vec<Option<Op>> {
    let seen: BTreeSet<Value> = prepared
        .iter()
        .filter_map(|p| match (p.op, p.result) {
            (_, Some(OpResult::ReadOk(seen))) => *seen,
            (Op::Cas { expected, .. }, _) => *expected,
            _ => None,
        })
        .collect();
    // The largest value nobody saw: one exists, as fewer than 2^64 values were seen.
    let mut unseen = Value::MAX;
    while seen.contains(&unseen) {
        unseen -= 1;
    }
    prepared
        .iter()
        .map(|p| match p.op {
            Op::Write { key, value } if !seen.contains(value) && *value != unseen => {
                Some(Op::Write {
                    key: key.clone(),
                    value: unseen,
                })
            }
            Op::Cas { key, expected, new } if !seen.contains(new) && *new != unseen => {
                Some(Op::Cas {
                    key: key.clone(),
                    expected: *expected,
                    new: unseen,
                })
            }
            _ => None,
        })
        .collect()
}

/// Turns one sub-history's operations into search input, applying the reading rules
/// and the exact simplifications of the module docs.
fn prepare<'a>(operations: &[&'a Operation]) -> Vec<Prepared<'a>> {
    let mut prepared: Vec<Prepared<'a>> = operations
        .iter()
        .filter_map(|&operation| match &operation.completion {
            Completion::Ok { result, time } => Some(Prepared {
                operation,
                op: &operation.op,
                result: Some(result),
                complete: Some(*time),
            }),
            Completion::Fail { .. } => None,
            Completion::Info { .. } | Completion::Pending => match operation.op {
                Op::Read { .. } => None,
                _ => Some(Prepared {
                    operation,
                    op: &operation.op,
                    result: None,
                    complete: None,
                }),
            },
        })
        .collect();

    // Indeterminate operations invoked after every definite one has completed.
    let horizon = prepared.iter().filter_map(|p| p.complete).max();
    prepared.retain(|p| {
        p.complete.is_some() || horizon.is_some_and(|horizon| p.operation.invoke <= horizon)
    });

    // Indeterminate writers that no read or compare-and-set depends on (shrink rule 3).
    let depended_on: BTreeSet<Option<Value>> = prepared
        .iter()
        .filter_map(|p| match (&p.operation.op, p.result) {
            (_, Some(OpResult::ReadOk(seen))) => Some(*seen),
            (Op::Cas { expected, .. }, _) => Some(*expected),
            _ => None,
        })
        .collect();
    let unread = |p: &Prepared<'_>| {
        p.complete.is_none()
            && shrink::written(&p.operation.op).is_some_and(|value| !depended_on.contains(&value))
    };
    let kept = prepared.iter().filter(|p| !unread(p)).map(Prepared::entry);
    let dependencies = shrink::Dependencies::new(kept);
    let droppable = prepared
        .iter()
        .filter(|p| unread(p))
        .all(|p| dependencies.allow_drop(&p.entry()));
    if droppable {
        prepared.retain(|p| !unread(p));
    }
    prepared
}
