//! Messages, timers and log records of two-phase commit.

use serde::{Deserialize, Serialize};
use std::fmt;
use synod_core::NodeId;

/// A transaction: the coordinator's epoch (bumped durably at each of its starts) and a
/// sequence number within the epoch, so that an id the coordinator forgot is never
/// handed out again.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct TxnId {
    /// The coordinator incarnation that began the transaction.
    pub epoch: u64,
    /// Position within the epoch.
    pub seq: u64,
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}.{}", self.epoch, self.seq)
    }
}

/// The outcome of a transaction.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Decision {
    /// Every participant makes the transaction's effects permanent.
    Commit,
    /// Every participant undoes them.
    Abort,
}

/// What a participant tells a peer that runs the cooperative termination protocol.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum PeerAnswer {
    /// The outcome, which this participant knows (or just chose, by aborting unilaterally
    /// before it voted).
    Decided(Decision),
    /// This participant voted YES and does not know the outcome either.
    Uncertain,
}

/// Every message of two-phase commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TwoPcMsg {
    /// Client → coordinator: run a transaction over `participants`. Those in `refuse`
    /// will vote NO (their local work failed), which is how a workload asks for aborts.
    Begin {
        /// The client's own number for the request; a duplicate is answered, not rerun.
        request: u64,
        /// The participants the transaction spans.
        participants: Vec<NodeId>,
        /// Participants whose local work fails.
        refuse: Vec<NodeId>,
    },
    /// Coordinator → client: the transaction's outcome, sent once it is decided (and, for a
    /// commit, durable).
    Outcome {
        /// The client's request number.
        request: u64,
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        decision: Decision,
    },
    /// Coordinator → client: the request was malformed.
    Rejected {
        /// The client's request number.
        request: u64,
        /// What was wrong.
        reason: String,
    },
    /// Coordinator → participant: phase 1.
    Prepare {
        /// The transaction.
        txn: TxnId,
        /// Every participant of the transaction, for cooperative termination.
        participants: Vec<NodeId>,
        /// This participant's local work failed: it must vote NO.
        refuse: bool,
    },
    /// Participant → coordinator: the vote.
    Vote {
        /// The transaction.
        txn: TxnId,
        /// YES (prepared) or NO.
        yes: bool,
    },
    /// Coordinator → participant: phase 2, also the answer to a `DecisionRequest`.
    Decide {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        decision: Decision,
    },
    /// Participant → coordinator: the decision has been recorded.
    Ack {
        /// The transaction.
        txn: TxnId,
    },
    /// Uncertain participant → coordinator: what was decided?
    DecisionRequest {
        /// The transaction.
        txn: TxnId,
    },
    /// Uncertain participant → another participant (cooperative termination).
    HelpRequest {
        /// The transaction.
        txn: TxnId,
        /// Its coordinator.
        coordinator: NodeId,
        /// Its participants.
        participants: Vec<NodeId>,
    },
    /// Participant → uncertain participant.
    HelpReply {
        /// The transaction.
        txn: TxnId,
        /// What the answering participant knows.
        answer: PeerAnswer,
    },
}

/// Timers of two-phase commit.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum TwoPcTimer {
    /// Coordinator: the votes of this transaction are overdue; abort.
    VoteTimeout(TxnId),
    /// Coordinator: resend `Prepare` to silent participants or the decision to those that
    /// have not acknowledged.
    Resend(TxnId),
    /// Participant: still uncertain; ask the coordinator and the other participants.
    InDoubt(TxnId),
}

/// The coordinator's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorRecord {
    /// The decision, forced before phase 2 starts. Presumed abort logs only commits.
    Decided {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        decision: Decision,
        /// Its participants (the ones phase 2 must reach).
        participants: Vec<NodeId>,
    },
    /// Every participant acknowledged the decision; not forced.
    End {
        /// The transaction.
        txn: TxnId,
    },
}

/// A participant's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantRecord {
    /// Forced before a YES vote: this participant can commit and is now uncertain.
    Prepared {
        /// The transaction.
        txn: TxnId,
        /// Its coordinator.
        coordinator: NodeId,
        /// Its participants.
        participants: Vec<NodeId>,
    },
    /// The outcome. Commits are always forced; aborts only in 2P, or before answering a
    /// peer after a unilateral abort.
    Decided {
        /// The transaction.
        txn: TxnId,
        /// The outcome.
        decision: Decision,
    },
}
