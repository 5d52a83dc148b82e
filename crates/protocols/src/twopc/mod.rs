//! # Two-phase commit with presumed abort, recovery and cooperative termination
//!
//! Algorithm (Gray, "Notes on Data Base Operating Systems", 1978; Mohan, Lindsay &
//! Obermarck, "Transaction Management in the R* Distributed Database Management System",
//! ACM TODS 11(4), 1986, §2–§3; Bernstein, Hadzilacos & Goodman, *Concurrency Control and
//! Recovery in Database Systems*, 1987, ch. 7 §7.4–§7.5; Gray & Reuter, *Transaction
//! Processing*, 1993, ch. 12):
//!
//! - **Phase 1.** A client asks the [`Coordinator`] to commit a transaction spanning some
//!   [`Participant`]s. The coordinator sends `Prepare`. A participant that can commit
//!   *forces* a `Prepared` record (coordinator and participant list) to its log and only
//!   then votes YES; from then on it is *uncertain*: it may not decide on its own. A
//!   participant that cannot commit votes NO and aborts unilaterally.
//! - **Phase 2.** With every YES, the coordinator *forces* a `Commit` record and only then
//!   sends `Commit`; each participant forces its own `Commit` record and acknowledges.
//!   When every acknowledgement is in, the coordinator writes a non-forced `End` record.
//!   Any NO vote, or a vote timeout, aborts.
//! - **Presumed abort** (R* §3). The coordinator keeps no record of an aborting
//!   transaction: it sends `Abort` to the participants that may have voted YES and forgets
//!   it at once, without acknowledgements. A participant writes its abort record without
//!   forcing it, and a NO voter forces nothing. Whoever asks the coordinator about a
//!   transaction it has no record of is told *abort*: that is sound because a commit is
//!   always forced before any `Commit` leaves. With [`TwoPcConfig::presumed_abort`] off
//!   the actors run R*'s baseline "2P": the coordinator forces an `Abort` record, waits for
//!   acknowledgements and writes `End`, and participants force their abort records.
//! - **Timeouts.** The coordinator resends `Prepare` to silent participants and aborts
//!   after `vote_timeout`; it resends a decision until acknowledged. A participant that
//!   stays uncertain for `decision_timeout` asks the coordinator (`DecisionRequest`) and
//!   runs the cooperative termination protocol, again every `retry_interval`.
//! - **Cooperative termination** (BHG §7.4). The uncertain participant also asks every
//!   other participant (`HelpRequest`). A participant that knows the outcome tells it; one
//!   that has not voted aborts unilaterally (forcing the abort record *before* it answers,
//!   so that it votes NO if the `Prepare` arrives later) and answers abort; one that is
//!   itself uncertain can only say so. If every participant voted YES and the coordinator
//!   is down, nobody can decide: **2PC blocks** until the coordinator recovers. The tests
//!   demonstrate exactly that.
//! - **Recovery.** Both actors rebuild from their logs in `on_start` (R* §2, "recovery
//!   process"). A coordinator finds each `Commit` (or, in 2P, `Abort`) without `End` and
//!   resends the decision until acknowledged. A participant finds each `Prepared` without
//!   an outcome and asks the coordinator at once. Transaction ids are `(epoch, sequence)`
//!   with the epoch bumped durably at every coordinator start, so a forgotten (presumed
//!   aborted) id is never reused.
//!
//! Durability uses synod's group-commit contract (DESIGN.md): `ctx.send` is held by the
//! driver until every write issued so far is synced, so "force the record, then send"
//! is "append, then `ctx.send`". Two of the deliberately broken variants ([`Bug`], for
//! tests and `synod sim twopc --bug`) use `send_unsynced` instead, which is exactly "send
//! before forcing"; the third lets an uncertain participant abort on its own.
//!
//! Fault and timing model: asynchronous network that may lose, duplicate, delay and
//! reorder messages; crash-recovery nodes whose forced log records survive; no Byzantine
//! behaviour. Timeouts matter for liveness only, never for safety.
//!
//! Invariants (checked in the simulator after every event; see `harness`):
//! - **Atomicity**: no transaction is committed at one participant and aborted at another
//!   (or by the coordinator).
//! - **Commit validity**: a participant commits only if the coordinator's log holds a
//!   commit decision for the transaction.
//! - **Termination** (liveness): once faults heal and every node is up, every transaction
//!   ends: the coordinator holds nothing open and no participant is uncertain.
//!
//! Costs (fault-free, N updating participants; measured in `costs_match_the_textbook_figures`
//! and `synod sim twopc`): a commit takes 4N messages, 2N+2 log writes and 2N+1 forced
//! writes in both variants. An abort caused by one NO vote takes 3N−1 messages and N−1
//! forced writes with presumed abort, against 4N−2 messages and 2N forced writes in 2P:
//! presumed abort saves the acknowledgements and every forced abort record. These are
//! the counts that follow from R*'s rules (§2 for 2P, §3 for presumed abort).
//!
//! Differences from the chapter's sketch (§14.7): the sketch has no durable state, no
//! timeouts and no recovery, logs the prepare record *after* deciding to vote (it never
//! forces it before the vote leaves), collects votes sequentially, and leaves participants
//! uncertain forever if the coordinator dies. Here both sides log through
//! [`synod_core::Storage`] with forced writes in the places the papers require, recover
//! from their logs, and uncertain participants use the termination protocol.
//!
//! Not implemented: log garbage collection (records are kept, so a restart scans the whole
//! log), the read-only optimisation of R* §3, and presumed commit.

mod coordinator;
mod msg;
mod participant;

#[cfg(any(test, feature = "harness"))]
pub mod harness;
#[cfg(test)]
mod tests;

pub use coordinator::{Coordinator, MAX_PARTICIPANTS};
pub use msg::{
    CoordinatorRecord, Decision, ParticipantRecord, PeerAnswer, TwoPcMsg, TwoPcTimer, TxnId,
};
pub use participant::{Participant, ParticipantState};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use synod_core::{Actor, Ctx, Endpoint, NodeId, StorageExt};

/// Settings shared by the coordinator and the participants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoPcConfig {
    /// The coordinator's node.
    pub coordinator: NodeId,
    /// Every participant a transaction may span.
    pub participants: Vec<NodeId>,
    /// Presumed abort (R* §3). Off: the baseline 2P protocol with forced abort records and
    /// acknowledged aborts.
    pub presumed_abort: bool,
    /// The coordinator aborts a transaction whose votes are not all in after this long.
    pub vote_timeout: Duration,
    /// Resend interval for unanswered `Prepare`s, unacknowledged decisions and the
    /// uncertain participant's inquiries.
    pub retry_interval: Duration,
    /// An uncertain participant starts asking after this long without a decision.
    pub decision_timeout: Duration,
    pub(crate) bug: Option<Bug>,
}

impl TwoPcConfig {
    /// Coordinator `n0` and participants `n1..=n{participants}`, presumed abort, timeouts
    /// suited to a LAN (vote 200 ms, retry 50 ms, decision 300 ms).
    pub fn new(participants: u32) -> Self {
        TwoPcConfig {
            coordinator: NodeId(0),
            participants: (1..=participants).map(NodeId).collect(),
            presumed_abort: true,
            vote_timeout: Duration::from_millis(200),
            retry_interval: Duration::from_millis(50),
            decision_timeout: Duration::from_millis(300),
            bug: None,
        }
    }

    /// The same, with presumed abort on or off (off: the 2P baseline).
    pub fn with_presumed_abort(mut self, on: bool) -> Self {
        self.presumed_abort = on;
        self
    }

    /// A deliberately broken variant, so that tests can show the checkers catch it.
    #[cfg(any(test, feature = "harness"))]
    pub fn with_bug(mut self, bug: Bug) -> Self {
        self.bug = Some(bug);
        self
    }
}

/// Deliberately broken variants (tests and `synod sim twopc --bug` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A participant sends its YES vote before its `Prepared` record is durable.
    VoteBeforeForcingPrepare,
    /// The coordinator sends `Commit` before its `Commit` record is durable.
    CommitBeforeForcingDecision,
    /// An uncertain participant gives up waiting and aborts on its own (the mistake the
    /// blocking case tempts one into).
    UncertainParticipantAbortsOnTimeout,
}

/// What one transaction cost one node: protocol messages to other nodes (client requests
/// and replies excluded), log records written, and how many of them were forced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnCost {
    /// Protocol messages sent to other nodes.
    pub messages: u64,
    /// Log records appended.
    pub log_writes: u64,
    /// Log records that the protocol requires durable before its next message.
    pub forced_writes: u64,
}

impl std::ops::Add for TxnCost {
    type Output = TxnCost;

    fn add(self, other: TxnCost) -> TxnCost {
        TxnCost {
            messages: self.messages + other.messages,
            log_writes: self.log_writes + other.log_writes,
            forced_writes: self.forced_writes + other.forced_writes,
        }
    }
}

/// Per-transaction costs a node has recorded since it started. Volatile: a crash resets
/// them, so they are meant for fault-free measurement runs.
pub type CostBook = BTreeMap<TxnId, TxnCost>;

/// Sends `msg` to `to` and counts it against `txn`.
fn send_counted(
    costs: &mut CostBook,
    ctx: &mut Ctx<'_, TwoPcMsg, TwoPcTimer>,
    txn: TxnId,
    to: NodeId,
    msg: TwoPcMsg,
) {
    costs.entry(txn).or_default().messages += 1;
    ctx.send(to, msg);
}

/// Appends `record` to the node's log and counts the write, and whether the protocol
/// forces it, against `txn`.
fn log_counted<R: Serialize>(
    costs: &mut CostBook,
    ctx: &mut Ctx<'_, TwoPcMsg, TwoPcTimer>,
    txn: TxnId,
    record: &R,
    forced: bool,
) {
    let cost = costs.entry(txn).or_default();
    cost.log_writes += 1;
    if forced {
        cost.forced_writes += 1;
    }
    ctx.storage().append_value(record);
}

/// One simulated node: the coordinator or a participant. The simulator runs one actor
/// type, so the two roles share this wrapper; on the network each is its own service.
#[derive(Debug)]
pub enum TwoPcNode {
    /// The coordinator.
    Coordinator(Coordinator),
    /// A participant.
    Participant(Participant),
}

impl TwoPcNode {
    /// The node `me` plays under `config`: the coordinator or a participant.
    pub fn new(me: NodeId, config: &TwoPcConfig) -> Self {
        if me == config.coordinator {
            TwoPcNode::Coordinator(Coordinator::new(config.clone()))
        } else {
            TwoPcNode::Participant(Participant::new(config.clone()))
        }
    }

    /// The coordinator, if this node is it.
    pub fn coordinator(&self) -> Option<&Coordinator> {
        match self {
            TwoPcNode::Coordinator(c) => Some(c),
            TwoPcNode::Participant(_) => None,
        }
    }

    /// The participant, if this node is one.
    pub fn participant(&self) -> Option<&Participant> {
        match self {
            TwoPcNode::Participant(p) => Some(p),
            TwoPcNode::Coordinator(_) => None,
        }
    }

    /// The per-transaction costs this node recorded.
    pub fn costs(&self) -> &CostBook {
        match self {
            TwoPcNode::Coordinator(c) => c.costs(),
            TwoPcNode::Participant(p) => p.costs(),
        }
    }
}

impl Actor for TwoPcNode {
    type Msg = TwoPcMsg;
    type Timer = TwoPcTimer;

    fn on_start(&mut self, ctx: &mut Ctx<'_, TwoPcMsg, TwoPcTimer>) {
        match self {
            TwoPcNode::Coordinator(c) => c.on_start(ctx),
            TwoPcNode::Participant(p) => p.on_start(ctx),
        }
    }

    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, TwoPcMsg, TwoPcTimer>,
        from: Endpoint,
        msg: TwoPcMsg,
    ) {
        match self {
            TwoPcNode::Coordinator(c) => c.on_message(ctx, from, msg),
            TwoPcNode::Participant(p) => p.on_message(ctx, from, msg),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, TwoPcMsg, TwoPcTimer>, timer: TwoPcTimer) {
        match self {
            TwoPcNode::Coordinator(c) => c.on_timer(ctx, timer),
            TwoPcNode::Participant(p) => p.on_timer(ctx, timer),
        }
    }
}
