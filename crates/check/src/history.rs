//! Recorded client histories: what each client asked for, when, and what it was told.
//!
//! A history is a sequence of [`Event`]s. Every client operation starts with an
//! [`EventKind::Invoke`] and ends with at most one completion:
//!
//! - [`EventKind::Ok`]: the operation took effect, and the client saw this result.
//! - [`EventKind::Fail`]: the operation certainly did not take effect (the server
//!   rejected it before doing anything).
//! - [`EventKind::Info`]: the outcome is unknown (a timeout, a lost connection). The
//!   operation may have taken effect at any time after its invocation, or never.
//!
//! An operation with no completion at all (the run ended first) is treated like `Info`.
//! These are the four outcomes of a Jepsen-style history (Kingsbury, "Jepsen: knossos").
//!
//! Times are nanoseconds on one clock shared by all clients: in the simulator, virtual
//! time; in a real test, one monotonic clock on the test driver. Real-time order between
//! operations comes only from these times, so per-node clock skew must not leak in.
//!
//! [`History`] is both the recorder (`invoke`, then `ok`/`fail`/`info`) and the
//! container that checkers read. It is serialised as JSON Lines, one event per line:
//!
//! ```text
//! {"id":0,"process":1,"time":100,"kind":"invoke","op":{"type":"write","key":"x","value":5}}
//! {"id":0,"process":1,"time":250,"kind":"ok","op":{"type":"write","key":"x","value":5},"result":{"type":"write_ok"}}
//! ```
//!
//! Every way of building a history ([`History::invoke`] and friends, [`History::push`],
//! [`History::from_events`], [`History::from_jsonl`]) validates what it is given and
//! returns an error naming the problem, so a checker never sees a malformed history.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// The key of a key-value operation.
pub type Key = String;

/// The value stored under a key. A missing key is `None` wherever a value is observed.
pub type Value = u64;

/// A client process: one sequential stream of requests.
///
/// Jepsen gives a client a fresh process after an `Info` outcome because the old one
/// may still have a request in flight. The checker does not rely on processes being
/// sequential (operation ids pair events), but reports name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Process(pub u64);

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// Identifies one operation within a history; pairs its invocation with its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An operation on a key-value store where every key is an independent register.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// Read the value of `key`.
    Read {
        /// The key read.
        key: Key,
    },
    /// Set `key` to `value`.
    Write {
        /// The key written.
        key: Key,
        /// The value written.
        value: Value,
    },
    /// Set `key` to `new` if, and only if, its current value is `expected`
    /// (`None`: the key is absent, so this is create-if-absent).
    Cas {
        /// The key compared and set.
        key: Key,
        /// The value the key must hold for the swap to happen.
        expected: Option<Value>,
        /// The value written when the comparison holds.
        new: Value,
    },
    /// Remove `key`.
    Delete {
        /// The key removed.
        key: Key,
    },
}

impl Op {
    /// The key this operation acts on.
    pub fn key(&self) -> &str {
        match self {
            Op::Read { key } | Op::Write { key, .. } | Op::Cas { key, .. } | Op::Delete { key } => {
                key
            }
        }
    }

    /// Whether `result` is a result this kind of operation can return.
    pub fn accepts(&self, result: &OpResult) -> bool {
        matches!(
            (self, result),
            (Op::Read { .. }, OpResult::ReadOk(_))
                | (Op::Write { .. }, OpResult::WriteOk)
                | (Op::Cas { .. }, OpResult::CasOk(_))
                | (Op::Delete { .. }, OpResult::DeleteOk)
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read { key } => write!(f, "read {key:?}"),
            Op::Write { key, value } => write!(f, "write {key:?} {value}"),
            Op::Cas { key, expected, new } => {
                write!(f, "cas {key:?} {} -> {new}", DisplayValue(*expected))
            }
            Op::Delete { key } => write!(f, "delete {key:?}"),
        }
    }
}

/// What a client was told when an operation completed with [`EventKind::Ok`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum OpResult {
    /// A read saw this value (`None`: the key was absent).
    ReadOk(Option<Value>),
    /// A write took effect.
    WriteOk,
    /// A compare-and-set took effect: `true` if it swapped, `false` if the comparison failed.
    CasOk(bool),
    /// A delete took effect (whether or not the key existed).
    DeleteOk,
}

impl fmt::Display for OpResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpResult::ReadOk(value) => write!(f, "{}", DisplayValue(*value)),
            OpResult::WriteOk | OpResult::DeleteOk => f.write_str("ok"),
            OpResult::CasOk(swapped) => write!(f, "{swapped}"),
        }
    }
}

/// Shows a possibly absent value as the number or `nil`.
pub(crate) struct DisplayValue(pub(crate) Option<Value>);

impl fmt::Display for DisplayValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value}"),
            None => f.write_str("nil"),
        }
    }
}

/// What happened to an operation at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The client sent the request.
    Invoke,
    /// The operation took effect and returned this result.
    Ok(OpResult),
    /// The operation certainly did not take effect.
    Fail,
    /// The outcome is unknown: it may take effect at any time after the invocation, or never.
    Info,
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EventLine", into = "EventLine")]
pub struct Event {
    /// The operation this event belongs to.
    pub id: OpId,
    /// The client process that issued the operation.
    pub process: Process,
    /// Invocation, or which completion.
    pub kind: EventKind,
    /// The operation, repeated on the completion so that every line stands alone.
    pub op: Op,
    /// When it happened, in nanoseconds.
    pub time: u64,
}

/// The flat JSON shape of an [`Event`]: the result sits beside `kind` instead of inside it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    id: OpId,
    process: Process,
    time: u64,
    kind: KindTag,
    op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<OpResult>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindTag {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl From<Event> for EventLine {
    fn from(event: Event) -> Self {
        let (kind, result) = match event.kind {
            EventKind::Invoke => (KindTag::Invoke, None),
            EventKind::Ok(result) => (KindTag::Ok, Some(result)),
            EventKind::Fail => (KindTag::Fail, None),
            EventKind::Info => (KindTag::Info, None),
        };
        EventLine {
            id: event.id,
            process: event.process,
            time: event.time,
            kind,
            op: event.op,
            result,
        }
    }
}

impl TryFrom<EventLine> for Event {
    type Error = String;

    fn try_from(line: EventLine) -> Result<Self, Self::Error> {
        let kind = match (line.kind, line.result) {
            (KindTag::Ok, Some(result)) => EventKind::Ok(result),
            (KindTag::Ok, None) => return Err("an \"ok\" event needs a \"result\"".into()),
            (KindTag::Invoke, None) => EventKind::Invoke,
            (KindTag::Fail, None) => EventKind::Fail,
            (KindTag::Info, None) => EventKind::Info,
            (_, Some(_)) => return Err("only an \"ok\" event may carry a \"result\"".into()),
        };
        Ok(Event {
            id: line.id,
            process: line.process,
            kind,
            op: line.op,
            time: line.time,
        })
    }
}

/// How an operation ended, as seen by its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// It took effect and returned `result` at `time`.
    Ok {
        /// What the client was told.
        result: OpResult,
        /// When, in nanoseconds.
        time: u64,
    },
    /// It certainly did not take effect; the client learned so at `time`.
    Fail {
        /// When, in nanoseconds.
        time: u64,
    },
    /// Its outcome is unknown; the client gave up at `time`.
    Info {
        /// When, in nanoseconds.
        time: u64,
    },
    /// The history ended before it completed. Checkers treat this like [`Completion::Info`].
    Pending,
}

/// One operation with its invocation and completion paired, as checkers read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Its id in the history.
    pub id: OpId,
    /// The client process that issued it.
    pub process: Process,
    /// What was asked.
    pub op: Op,
    /// When it was invoked, in nanoseconds.
    pub invoke: u64,
    /// How and when it ended.
    pub completion: Completion,
}

/// Why an event or a history was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// An operation id was invoked a second time.
    #[error("operation {id} is invoked twice")]
    DuplicateInvoke {
        /// The operation.
        id: OpId,
    },
    /// A completion names an operation that was never invoked.
    #[error("operation {id} completes but was never invoked")]
    NotInvoked {
        /// The operation.
        id: OpId,
    },
    /// A second completion for the same operation.
    #[error("operation {id} completes twice")]
    AlreadyCompleted {
        /// The operation.
        id: OpId,
    },
    /// A completion that happens before its invocation.
    #[error("operation {id} completes at {complete} ns, before it was invoked at {invoke} ns")]
    CompletesBeforeInvoke {
        /// The operation.
        id: OpId,
        /// Invocation time, in nanoseconds.
        invoke: u64,
        /// Completion time, in nanoseconds.
        complete: u64,
    },
    /// A completion from another process than the invocation.
    #[error("operation {id} was invoked by {invoked_by} but completed by {completed_by}")]
    ProcessMismatch {
        /// The operation.
        id: OpId,
        /// The invoking process.
        invoked_by: Process,
        /// The completing process.
        completed_by: Process,
    },
    /// A completion event that repeats a different operation than was invoked.
    #[error("operation {id} was invoked as `{invoked}` but completed as `{completed}`")]
    OpMismatch {
        /// The operation.
        id: OpId,
        /// The invoked operation.
        invoked: Box<Op>,
        /// The operation named by the completion.
        completed: Box<Op>,
    },
    /// A result of the wrong kind for the operation (say, a read returning `cas_ok`).
    #[error("operation {id} (`{op}`) cannot return {result:?}")]
    ResultMismatch {
        /// The operation.
        id: OpId,
        /// The operation.
        op: Box<Op>,
        /// The result it was given.
        result: OpResult,
    },
}

/// Why a JSON Lines history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// A line is not a well-formed event.
    #[error("line {line}: not a valid event: {source}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What the JSON decoder said.
        source: serde_json::Error,
    },
    /// A line is a well-formed event that does not fit the events before it.
    #[error("line {line}: {source}")]
    Event {
        /// 1-based line number.
        line: usize,
        /// What was wrong with it.
        source: HistoryError,
    },
}

/// Where the events of one operation sit in [`History::events`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    invoke: usize,
    completion: Option<usize>,
}

/// A validated history: a recorder while a run goes on, the input of checkers afterwards.
#[derive(Debug, Clone, Default)]
pub struct History {
    events: Vec<Event>,
    slots: BTreeMap<OpId, Slot>,
    next_id: u64,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `process` sent `op` at `time` (ns) and returns the id to complete it with.
    pub fn invoke(&mut self, process: Process, op: Op, time: u64) -> OpId {
        let id = self.fresh_id();
        let event = Event {
            id,
            process,
            kind: EventKind::Invoke,
            op,
            time,
        };
        self.slots.insert(
            id,
            Slot {
                invoke: self.events.len(),
                completion: None,
            },
        );
        self.events.push(event);
        id
    }

    /// Records that operation `id` took effect and returned `result` at `time` (ns).
    pub fn ok(&mut self, id: OpId, result: OpResult, time: u64) -> Result<(), HistoryError> {
        self.complete(id, EventKind::Ok(result), time)
    }

    /// Records that operation `id` certainly did not take effect; known at `time` (ns).
    pub fn fail(&mut self, id: OpId, time: u64) -> Result<(), HistoryError> {
        self.complete(id, EventKind::Fail, time)
    }

    /// Records that the outcome of operation `id` is unknown from `time` (ns) on:
    /// it may take effect at any later moment, or never.
    pub fn info(&mut self, id: OpId, time: u64) -> Result<(), HistoryError> {
        self.complete(id, EventKind::Info, time)
    }

    fn complete(&mut self, id: OpId, kind: EventKind, time: u64) -> Result<(), HistoryError> {
        let slot = self.slots.get(&id).ok_or(HistoryError::NotInvoked { id })?;
        let invoked = &self.events[slot.invoke];
        let event = Event {
            id,
            process: invoked.process,
            kind,
            op: invoked.op.clone(),
            time,
        };
        self.push(event)
    }

    /// Appends an event recorded elsewhere, after checking that it fits the events before it.
    pub fn push(&mut self, event: Event) -> Result<(), HistoryError> {
        let id = event.id;
        if event.kind == EventKind::Invoke {
            if self.slots.contains_key(&id) {
                return Err(HistoryError::DuplicateInvoke { id });
            }
            self.slots.insert(
                id,
                Slot {
                    invoke: self.events.len(),
                    completion: None,
                },
            );
            self.next_id = self.next_id.max(id.0.saturating_add(1));
            self.events.push(event);
            return Ok(());
        }
        let slot = self.slots.get(&id).ok_or(HistoryError::NotInvoked { id })?;
        if slot.completion.is_some() {
            return Err(HistoryError::AlreadyCompleted { id });
        }
        let invoked = &self.events[slot.invoke];
        if event.time < invoked.time {
            return Err(HistoryError::CompletesBeforeInvoke {
                id,
                invoke: invoked.time,
                complete: event.time,
            });
        }
        if event.process != invoked.process {
            return Err(HistoryError::ProcessMismatch {
                id,
                invoked_by: invoked.process,
                completed_by: event.process,
            });
        }
        if event.op != invoked.op {
            return Err(HistoryError::OpMismatch {
                id,
                invoked: Box::new(invoked.op.clone()),
                completed: Box::new(event.op),
            });
        }
        if let EventKind::Ok(result) = &event.kind {
            if !event.op.accepts(result) {
                return Err(HistoryError::ResultMismatch {
                    id,
                    op: Box::new(event.op),
                    result: result.clone(),
                });
            }
        }
        let index = self.events.len();
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.completion = Some(index);
        }
        self.events.push(event);
        Ok(())
    }

    /// Builds a history from events in recording order, validating each.
    pub fn from_events(events: impl IntoIterator<Item = Event>) -> Result<Self, HistoryError> {
        let mut history = Self::new();
        for event in events {
            history.push(event)?;
        }
        Ok(history)
    }

    /// The events in recording order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event was recorded.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Every operation with its completion paired, in invocation order.
    pub fn operations(&self) -> Vec<Operation> {
        self.slots
            .values()
            .map(|slot| (slot.invoke, slot.completion))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .map(|(invoke, completion)| {
                let invoked = &self.events[invoke];
                let completion = match completion.map(|index| &self.events[index]) {
                    None => Completion::Pending,
                    Some(done) => match &done.kind {
                        EventKind::Ok(result) => Completion::Ok {
                            result: result.clone(),
                            time: done.time,
                        },
                        EventKind::Fail => Completion::Fail { time: done.time },
                        // A second invoke never gets a slot, so this is Info.
                        EventKind::Info | EventKind::Invoke => Completion::Info { time: done.time },
                    },
                };
                Operation {
                    id: invoked.id,
                    process: invoked.process,
                    op: invoked.op.clone(),
                    invoke: invoked.time,
                    completion,
                }
            })
            .collect()
    }

    /// The history as JSON Lines: one event per line, each line ending in `\n`.
    pub fn to_jsonl(&self) -> String {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail, and every field serialises.
        let _ = self.write_jsonl(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Writes the history as JSON Lines to `writer`.
    pub fn write_jsonl(&self, mut writer: impl io::Write) -> io::Result<()> {
        for event in &self.events {
            serde_json::to_writer(&mut writer, event)?;
            writer.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Reads a history from JSON Lines. Blank lines are skipped; any other line must be
    /// one event that fits the ones before it, or the error names the line and the problem.
    pub fn from_jsonl(text: &str) -> Result<Self, JsonlError> {
        let mut history = Self::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let event: Event =
                serde_json::from_str(raw).map_err(|source| JsonlError::Syntax { line, source })?;
            history
                .push(event)
                .map_err(|source| JsonlError::Event { line, source })?;
        }
        Ok(history)
    }

    /// An id no operation in this history uses yet.
    fn fresh_id(&mut self) -> OpId {
        let mut candidate = OpId(self.next_id);
        if self.slots.contains_key(&candidate) {
            // Only reachable after importing an operation with id u64::MAX: take the
            // lowest gap instead. One exists, since the history is far smaller than 2^64.
            let mut gap = 0;
            for id in self.slots.keys() {
                if id.0 != gap {
                    break;
                }
                gap += 1;
            }
            candidate = OpId(gap);
        }
        self.next_id = self.next_id.max(candidate.0.saturating_add(1));
        candidate
    }
}

#[cfg(test)]
mod tests;
