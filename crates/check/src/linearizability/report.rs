//! Counter-examples and how they are printed.

use std::fmt;

use super::model::Model;
use super::search::Trace;
use super::shrink::Item;
use super::Prepared;
use crate::history::{Completion, Key, Op, OpId, OpResult, Operation, Value};

/// A small part of a history that admits no linearization, so neither does the history.
///
/// The core comes from one sub-history (one key, for a model with independent keys),
/// shrunk by rules that can never create a violation (see `shrink.rs`): some operations
/// were dropped and some, listed in [`CounterExample::relaxed`], are treated as if their
/// outcome were unknown. `Display` prints it as a timeline; for a stale read among 151
/// operations:
///
/// ```text
/// not linearizable on key "x": no legal order exists for 3 operations (shrunk from 151)
///   op   process interval (ns) operation    result
///   #27  p1      [1000, 1030]  write "x" 10 ok     |
///   #147 p1      [5000, 5030]  write "x" 50 ok                                    |
///   #150 p4      [6000, 6010]  read "x"     10                                           []
/// furthest legal order found (initial state {}):
///   #27 write "x" 10: ok   => {"x": 10}
///   #147 write "x" 50: ok  => {"x": 50}
/// stuck: #150 read "x": 10 returned at 6010 ns, but no legal order places it and everything that completed before it (the order above ends in state {"x": 50})
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterExample {
    /// The key whose sub-history fails; `None` if the history was checked whole.
    pub key: Option<Key>,
    /// The operations of the core, in invocation order, as recorded.
    pub operations: Vec<Operation>,
    /// Operations of the core whose recorded outcome was relaxed to "unknown": the core
    /// fails even when they may take effect late or not at all.
    pub relaxed: Vec<OpId>,
    /// Operations of the sub-history that the search considered, before shrinking:
    /// failed operations, reads of unknown outcome and the other operations that the
    /// exact simplifications drop are not counted.
    pub sub_history_len: usize,
    /// The model's initial state, printed with `Debug`.
    pub initial_state: String,
    /// A legal order of part of the core that got furthest in time, with the state
    /// after each step. Empty if the final search ran out of budget.
    pub prefix: Vec<LinearizedStep>,
    /// The operation whose completion no legal order got past: it had returned, yet
    /// could not be placed after `prefix` (nor after any other order).
    pub stuck: Option<OpId>,
    /// Failed operations on the key (left out of the check, as they did not take effect)
    /// that wrote a value some read of the core returned: often the bug.
    pub observed_failures: Vec<Operation>,
}

/// One operation of [`CounterExample::prefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearizedStep {
    /// The operation.
    pub id: OpId,
    /// The model state after it, printed with `Debug`.
    pub state_after: String,
}

impl CounterExample {
    pub(crate) fn new<M: Model>(
        model: &M,
        key: Option<&str>,
        partition: &[&Operation],
        prepared: &[Prepared<'_>],
        core: &[Item],
        trace: Option<Trace<M::State>>,
    ) -> Self {
        let id_of = |core_index: usize| prepared[core[core_index].index].operation.id;
        let mut operations: Vec<Operation> = core
            .iter()
            .map(|item| prepared[item.index].operation.clone())
            .collect();
        operations.sort_by_key(|operation| (operation.invoke, operation.id));
        let (initial_state, prefix, stuck) = match trace {
            Some(trace) => (
                format!("{:?}", trace.initial),
                trace
                    .prefix
                    .iter()
                    .map(|(core_index, state)| LinearizedStep {
                        id: id_of(*core_index),
                        state_after: format!("{state:?}"),
                    })
                    .collect(),
                Some(id_of(trace.stuck)),
            ),
            None => (format!("{:?}", model.init()), Vec::new(), None),
        };
        let observed: Vec<Option<Value>> = operations
            .iter()
            .filter_map(|operation| match &operation.completion {
                Completion::Ok {
                    result: OpResult::ReadOk(seen),
                    ..
                } => Some(*seen),
                _ => None,
            })
            .collect();
        let observed_failures = partition
            .iter()
            .filter(|operation| matches!(operation.completion, Completion::Fail { .. }))
            .filter(|operation| {
                let written = match operation.op {
                    Op::Write { value, .. } | Op::Cas { new: value, .. } => Some(value),
                    Op::Delete { .. } | Op::Read { .. } => return false,
                };
                observed.contains(&written)
            })
            .map(|&operation| operation.clone())
            .collect();
        CounterExample {
            key: key.map(str::to_owned),
            operations,
            relaxed: core
                .iter()
                .filter(|item| item.relaxed)
                .map(|item| prepared[item.index].operation.id)
                .collect(),
            sub_history_len: prepared.len(),
            initial_state,
            prefix,
            stuck,
            observed_failures,
        }
    }

    /// The core operation with this id.
    pub fn operation(&self, id: OpId) -> Option<&Operation> {
        self.operations.iter().find(|operation| operation.id == id)
    }

    /// Whether the core contains the operation with this id.
    pub fn contains(&self, id: OpId) -> bool {
        self.operation(id).is_some()
    }
}

const BAR_WIDTH: usize = 40;

fn completion_time(operation: &Operation) -> Option<u64> {
    match operation.completion {
        Completion::Ok { time, .. } => Some(time),
        _ => None,
    }
}

/// Draws an interval on a `BAR_WIDTH`-column scale starting at `start` and covering
/// `span` ns: `[===]` for a definite operation, `[---->` for one that may take effect
/// at any later time.
fn bar(invoke: u64, complete: Option<u64>, start: u64, span: u64) -> String {
    let column = |time: u64| {
        let offset = u128::from(time.saturating_sub(start));
        let scaled = offset * (BAR_WIDTH as u128 - 1) / u128::from(span.max(1));
        usize::try_from(scaled)
            .unwrap_or(BAR_WIDTH - 1)
            .min(BAR_WIDTH - 1)
    };
    let mut cells = vec![' '; BAR_WIDTH];
    let from = column(invoke);
    match complete {
        Some(time) => {
            let to = column(time);
            cells[from..=to].fill('=');
            if to > from {
                cells[from] = '[';
                cells[to] = ']';
            } else {
                cells[from] = '|';
            }
        }
        None => {
            cells[from..].fill('-');
            cells[from] = '[';
            cells[BAR_WIDTH - 1] = '>';
        }
    }
    cells.into_iter().collect::<String>().trim_end().to_owned()
}

fn recorded_outcome(operation: &Operation) -> String {
    match &operation.completion {
        Completion::Ok { result, .. } => result.to_string(),
        Completion::Fail { .. } => "fail".to_owned(),
        Completion::Info { .. } => "info".to_owned(),
        Completion::Pending => "pending".to_owned(),
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

impl CounterExample {
    fn is_relaxed(&self, id: OpId) -> bool {
        self.relaxed.contains(&id)
    }

    /// The completion time the checker used: none for relaxed or indeterminate operations.
    fn deadline(&self, operation: &Operation) -> Option<u64> {
        completion_time(operation).filter(|_| !self.is_relaxed(operation.id))
    }

    fn outcome(&self, operation: &Operation) -> String {
        let recorded = recorded_outcome(operation);
        if self.is_relaxed(operation.id) {
            format!("{recorded} (relaxed)")
        } else {
            recorded
        }
    }

    fn describe(&self, id: OpId) -> String {
        match self.operation(id) {
            Some(operation) => format!("{id} {}: {}", operation.op, self.outcome(operation)),
            None => id.to_string(),
        }
    }
}

impl fmt::Display for CounterExample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not linearizable")?;
        if let Some(key) = &self.key {
            write!(f, " on key {key:?}")?;
        }
        writeln!(
            f,
            ": no legal order exists for {} (shrunk from {})",
            plural(self.operations.len(), "operation"),
            self.sub_history_len
        )?;

        let start = self.operations.iter().map(|o| o.invoke).min().unwrap_or(0);
        let end = self
            .operations
            .iter()
            .map(|o| self.deadline(o).unwrap_or(o.invoke))
            .max()
            .unwrap_or(start);
        let span = end.saturating_sub(start);
        let mut rows: Vec<[String; 6]> =
            vec![["op", "process", "interval (ns)", "operation", "result", ""].map(str::to_owned)];
        for o in &self.operations {
            let deadline = self.deadline(o);
            let interval = match deadline {
                Some(time) => format!("[{}, {time}]", o.invoke),
                None => format!("[{}, inf)", o.invoke),
            };
            rows.push([
                o.id.to_string(),
                o.process.to_string(),
                interval,
                o.op.to_string(),
                self.outcome(o),
                bar(o.invoke, deadline, start, span),
            ]);
        }
        let mut widths = [0; 6];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        for row in &rows {
            let mut line = String::from(" ");
            for (cell, width) in row.iter().zip(widths) {
                line.push_str(&format!(" {cell:<width$}"));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        if !self.relaxed.is_empty() {
            writeln!(
                f,
                "  (relaxed: checked as if the outcome were unknown, which allows more \
                 orders; it still fails)"
            )?;
        }

        writeln!(
            f,
            "furthest legal order found (initial state {}):",
            self.initial_state
        )?;
        if self.prefix.is_empty() {
            writeln!(f, "  (empty)")?;
        }
        let described: Vec<String> = self
            .prefix
            .iter()
            .map(|step| self.describe(step.id))
            .collect();
        let width = described.iter().map(String::len).max().unwrap_or(0);
        for (text, step) in described.iter().zip(&self.prefix) {
            writeln!(f, "  {text:<width$}  => {}", step.state_after)?;
        }
        if let Some(stuck) = self.stuck {
            let state = self
                .prefix
                .last()
                .map_or(&self.initial_state, |step| &step.state_after);
            write!(f, "stuck: {} ", self.describe(stuck))?;
            if let Some(deadline) = self.operation(stuck).and_then(|o| self.deadline(o)) {
                write!(f, "returned at {deadline} ns, but ")?;
            }
            writeln!(
                f,
                "no legal order places it and everything that completed before it \
                 (the order above ends in state {state})"
            )?;
        }
        for failed in &self.observed_failures {
            let failed_at = match failed.completion {
                Completion::Fail { time } => time,
                _ => failed.invoke,
            };
            writeln!(
                f,
                "note: {} {} by {} [{}, {failed_at}] failed, so it did not take effect, yet a \
                 read returned its value",
                failed.id, failed.op, failed.process, failed.invoke
            )?;
        }
        Ok(())
    }
}
