//! Raft's messages, log entries and the newtypes they are made of.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use synod_core::{LogIndex, NodeId};

/// A Raft term: a logical clock that orders leaders (§5.1).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Term(pub u64);

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// A client session: the key under which the state machine remembers the last write it
/// applied for a client, so that a retried write applies once (thesis §6.3).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct SessionId(pub u64);

/// The servers of a group (thesis ch. 4): voters decide elections and commitment;
/// learners only receive the log, until they are caught up and promoted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Servers that vote and count toward commitment.
    pub voters: BTreeSet<NodeId>,
    /// Servers that receive the log but do not vote.
    pub learners: BTreeSet<NodeId>,
}

/// One single-server membership change (thesis §4.1, §4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Start replicating to a new server as a learner.
    AddLearner(NodeId),
    /// Make a learner that has caught up a voter.
    PromoteLearner(NodeId),
    /// Remove a voter or a learner.
    RemoveServer(NodeId),
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload<C> {
    /// The entry a new leader appends at the start of its term (§8), so that it can commit
    /// the entries of earlier terms and serve reads.
    Noop,
    /// A new membership, in effect on every server as soon as it is in its log, committed
    /// or not (thesis §4.1).
    Config(Membership),
    /// A client command, tagged with its session and sequence number for deduplication.
    Command {
        /// The client's session.
        session: SessionId,
        /// The client's sequence number within the session; increases per request.
        seq: u64,
        /// The command for the state machine.
        command: C,
    },
}

/// One entry of the replicated log (Figure 2: "each entry contains command for state
/// machine, and term when entry was received by leader").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<C> {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// What the entry carries.
    pub payload: EntryPayload<C>,
}

/// Every message of the Raft service: between servers, and between clients and servers.
///
/// `C` is the state machine's command type and `O` its output type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftMsg<C, O> {
    /// Thesis §9.6: "would you vote for me in `term`?", sent before a real election. The
    /// receiver changes no state.
    PreVote {
        /// The term the sender would campaign in (its current term + 1).
        term: Term,
        /// Index of the sender's last log entry.
        last_log_index: LogIndex,
        /// Term of the sender's last log entry.
        last_log_term: Term,
    },
    /// Answer to [`RaftMsg::PreVote`].
    PreVoteResponse {
        /// The term the pre-vote was asked for.
        term: Term,
        /// The responder's current term, so that a stale pre-candidate learns it.
        current_term: Term,
        /// Whether the responder would vote.
        granted: bool,
    },
    /// Figure 2 RequestVote RPC.
    RequestVote {
        /// Candidate's term.
        term: Term,
        /// Index of the candidate's last log entry (§5.4).
        last_log_index: LogIndex,
        /// Term of the candidate's last log entry (§5.4).
        last_log_term: Term,
        /// Set when the leader asked for this election with TimeoutNow (thesis §3.10):
        /// voters then skip the leader-stickiness check of thesis §4.2.3.
        leadership_transfer: bool,
    },
    /// Figure 2 RequestVote results.
    RequestVoteResponse {
        /// The responder's current term, for the candidate to update itself.
        term: Term,
        /// True means the candidate received the vote.
        granted: bool,
    },
    /// Figure 2 AppendEntries RPC: replication and heartbeat.
    AppendEntries {
        /// Leader's term.
        term: Term,
        /// Index of the entry immediately preceding the new ones.
        prev_log_index: LogIndex,
        /// Term of the `prev_log_index` entry.
        prev_log_term: Term,
        /// Entries to store (empty for a heartbeat).
        entries: Vec<Entry<C>>,
        /// Leader's commit index.
        leader_commit: LogIndex,
        /// The leader's heartbeat round, echoed back; a majority of echoes of a round
        /// confirms the leader for ReadIndex (thesis §6.4).
        round: u64,
    },
    /// Figure 2 AppendEntries results, with the hints of §5.3's fast backtracking.
    AppendEntriesResponse {
        /// The responder's current term.
        term: Term,
        /// True if the follower contained an entry matching `prev_log_index` and
        /// `prev_log_term`.
        success: bool,
        /// On success: the last index the follower now holds that matches the leader.
        match_index: LogIndex,
        /// The `prev_log_index` of the request answered, to spot stale rejections.
        prev_log_index: LogIndex,
        /// On rejection: the term of the conflicting entry, if the follower has one.
        conflict_term: Option<Term>,
        /// On rejection: the first index the follower holds of `conflict_term`, or its
        /// last index + 1 if its log is too short.
        conflict_index: LogIndex,
        /// The echoed heartbeat round.
        round: u64,
    },
    /// Figure 13 InstallSnapshot RPC: one chunk of the leader's snapshot, for a follower
    /// that needs entries the leader has compacted away (§7).
    InstallSnapshot {
        /// Leader's term.
        term: Term,
        /// The snapshot replaces all entries up through and including this index.
        last_included_index: LogIndex,
        /// Term of `last_included_index`.
        last_included_term: Term,
        /// The leader's log hash at `last_included_index` (see `Raft::log_hash_at`), so
        /// that the follower's hash chain continues the leader's.
        last_included_hash: u64,
        /// Byte offset of this chunk in the snapshot.
        offset: u64,
        /// The chunk's bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// True if this is the last chunk.
        done: bool,
    },
    /// Answer to [`RaftMsg::InstallSnapshot`].
    InstallSnapshotResponse {
        /// The responder's current term.
        term: Term,
        /// The snapshot this answers.
        last_included_index: LogIndex,
        /// The offset of the next chunk the follower wants.
        next_offset: u64,
        /// The follower has installed the whole snapshot (and it is durable).
        done: bool,
    },
    /// Thesis §3.10: the leader asks its chosen successor to start an election now.
    TimeoutNow {
        /// The leader's term.
        term: Term,
    },
    /// Sent by a leader to itself with a held send: it arrives once every entry up to
    /// `index` is durable on the leader's own disk (thesis §10.2.1).
    LocalDurable {
        /// The leader's term when it sent this.
        term: Term,
        /// Every entry up to here is durable.
        index: LogIndex,
    },
    /// A server to itself, from the driver's background work: the snapshot it asked for
    /// at `index` is encoded and durable as a blob (§7). Only then is the log compacted.
    SnapshotWritten {
        /// The last entry the snapshot covers (the applied index when it was asked for).
        index: LogIndex,
        /// Term of `index`, fixed when it was asked for.
        term: Term,
        /// The log hash at `index`, fixed when it was asked for.
        hash: u64,
        /// The snapshot: `(state machine snapshot, session table, membership)`.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Follower → leader, with [`super::RaftConfig::follower_proposals`]: append this
    /// client write (etcd's `MsgProp`). The follower answers its client itself once the
    /// entry applies on it, so the leader sends nothing back; a lost proposal is retried
    /// by the client with the same session and sequence number.
    Propose {
        /// The client's session.
        session: SessionId,
        /// The request's sequence number in the session.
        seq: u64,
        /// The command.
        command: C,
    },
    /// Client → server: apply a command through the log.
    ClientWrite {
        /// The client's session.
        session: SessionId,
        /// The request's sequence number in the session; a retry reuses it.
        seq: u64,
        /// The command.
        command: C,
    },
    /// Client → server: answer a read-only command linearizably (ReadIndex, thesis §6.4).
    ClientRead {
        /// Echoed in the reply.
        seq: u64,
        /// The read-only command; [`super::StateMachine::read`] answers it.
        command: C,
    },
    /// Server → client: the command took effect (or the read was served) with this output.
    ClientReply {
        /// The request's sequence number.
        seq: u64,
        /// The state machine's output.
        output: O,
    },
    /// Server → client: this server is not the leader, and has not acted on the request.
    NotLeader {
        /// The request's sequence number.
        seq: u64,
        /// The leader this server knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// Client (an operator) → leader: change the membership by one server. A leader
    /// refuses silently while an earlier change is uncommitted, before it has committed
    /// an entry of its term, or when the change does not apply (thesis §4.1).
    ChangeMembership {
        /// The change.
        change: MembershipChange,
    },
    /// Client (an operator) → leader: hand leadership to `to` (thesis §3.10).
    TransferLeadership {
        /// The server that should become leader.
        to: NodeId,
    },
}
