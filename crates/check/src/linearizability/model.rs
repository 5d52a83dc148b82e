//! Sequential specifications that histories are checked against.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use crate::history::{Key, Op, OpResult, Value};

/// A sequential specification: what each operation does to a state, and which results
/// it may return from that state.
///
/// The checker searches for an order of the operations in which every `step` succeeds.
/// States are cached together with the set of operations already placed (Lowe 2017), so
/// they must be cheap to clone, and equal states must mean equal futures.
///
/// The checker's exact simplifications and the shrinker that minimises counter-examples
/// assume that [`Op`] keeps its register meaning: a `Read` and a `Cas` that returned
/// `false` never change the state, a `Write` or `Delete` overwrites the key whatever it
/// held, and values are only ever compared for equality. A model may be stricter than
/// [`Register`], but must not give these operations another meaning.
pub trait Model {
    /// The state of the specification. `Debug` is used to print counter-examples.
    type State: Clone + Eq + Hash + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `op` takes effect in `state`, or `None` if it cannot return
    /// `result` there.
    ///
    /// `result` is `None` when the outcome is unknown (an `Info` operation): the step
    /// must then return the state the operation leads to, whatever it would have returned.
    fn step(&self, state: &Self::State, op: &Op, result: Option<&OpResult>) -> Option<Self::State>;

    /// Whether operations on different keys never affect each other. If so the checker
    /// checks each key's sub-history on its own, which is exact by P-compositionality
    /// (Herlihy & Wing 1990, Theorem 1; Horn & Kroening 2015) and much faster.
    fn independent_keys(&self) -> bool {
        false
    }
}

/// One read/write/compare-and-set register. Keys are ignored: every operation acts on
/// the same register, which starts absent (`None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

/// Steps a single register holding `current`.
fn register_step(
    current: Option<Value>,
    op: &Op,
    result: Option<&OpResult>,
) -> Option<Option<Value>> {
    match (op, result) {
        (Op::Read { .. }, None) => Some(current),
        (Op::Read { .. }, Some(OpResult::ReadOk(seen))) => (*seen == current).then_some(current),
        (Op::Write { value, .. }, None | Some(OpResult::WriteOk)) => Some(Some(*value)),
        (Op::Cas { expected, new, .. }, None) => Some(if current == *expected {
            Some(*new)
        } else {
            current
        }),
        (Op::Cas { expected, new, .. }, Some(OpResult::CasOk(true))) => {
            (current == *expected).then_some(Some(*new))
        }
        (Op::Cas { expected, .. }, Some(OpResult::CasOk(false))) => {
            (current != *expected).then_some(current)
        }
        (Op::Delete { .. }, None | Some(OpResult::DeleteOk)) => Some(None),
        // A result of the wrong kind; validated histories never contain one.
        _ => None,
    }
}

impl Model for Register {
    type State = Option<Value>;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, op: &Op, result: Option<&OpResult>) -> Option<Self::State> {
        register_step(*state, op, result)
    }
}

/// A key-value store in which every key is an independent [`Register`], all absent at
/// the start. Declares [`Model::independent_keys`], so it is checked one key at a time.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvModel;

impl Model for KvModel {
    /// Present keys and their values. Shared, so that the many steps that change
    /// nothing (reads) cost a reference count instead of a copy.
    type State = Arc<BTreeMap<Key, Value>>;

    fn init(&self) -> Self::State {
        Arc::default()
    }

    fn step(&self, state: &Self::State, op: &Op, result: Option<&OpResult>) -> Option<Self::State> {
        let key = op.key();
        let current = state.get(key).copied();
        let next = register_step(current, op, result)?;
        if next == current {
            return Some(Arc::clone(state));
        }
        let mut map = BTreeMap::clone(state);
        match next {
            Some(value) => map.insert(key.to_owned(), value),
            None => map.remove(key),
        };
        Some(Arc::new(map))
    }

    fn independent_keys(&self) -> bool {
        true
    }
}
