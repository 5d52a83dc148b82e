//! The Raft server: roles, elections, replication, commitment and client writes. Reads,
//! snapshots and membership changes live in the submodules of the same names.

use super::log::RaftLog;
use super::msg::{Entry, EntryPayload, Membership, MembershipChange, RaftMsg, SessionId, Term};
use super::{RaftConfig, StateMachine};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use synod_core::codec;
use synod_core::StorageExt;
use synod_core::{duration_nanos, Actor, ClientId, Ctx, Endpoint, Instant, LogIndex, NodeId};

mod membership;
mod reads;
mod seed;
mod sessions;
mod snapshot;

pub use seed::SEED_INDEX;

use sessions::Sessions;

/// Storage key of `(currentTerm, votedFor)`.
pub(crate) const HARD_STATE_KEY: &[u8] = b"raft/hard_state";
/// Storage key of the latest [`Snapshot`].
pub(crate) const SNAPSHOT_KEY: &[u8] = b"raft/snapshot";

/// A snapshot as stored and as sent (§7): the last entry it covers and the state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    index: LogIndex,
    term: Term,
    hash: u64,
    /// `codec::encode(&(state machine snapshot, session table, membership))`.
    data: Vec<u8>,
}

/// A snapshot a follower is receiving, chunk by chunk.
#[derive(Clone, Debug)]
struct IncomingSnapshot {
    index: LogIndex,
    term: Term,
    hash: u64,
    data: Vec<u8>,
}

/// Timers of a Raft server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RaftTimer {
    /// Followers and candidates: start an election. Leaders: the CheckQuorum tick.
    Election,
    /// Leaders: send heartbeats and re-send what was lost.
    Heartbeat,
}

/// The role a server plays in its current term (§5.1, thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Answers leaders and candidates.
    Follower,
    /// Asking for pre-votes, with its term unchanged.
    PreCandidate,
    /// Asking for votes in its current term.
    Candidate,
    /// Replicates its log and serves clients.
    Leader,
}

/// A deliberately broken variant, for tests that show the checks can fail.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bug {
    /// Commit entries of earlier terms by counting replicas (the Figure 8 bug).
    CommitOldTermsByCounting,
    /// Grant votes without the up-to-date check of §5.4.1.
    VoteWithoutLogCheck,
    /// Hold a read lease for twenty election timeouts instead of one (thesis §6.4.1).
    LeaseTooLong,
    /// A follower answers a proposed write at once, from its own (stale) state, instead
    /// of when the entry applies (implies follower proposals).
    AnswerProposalOnSend,
    /// Compact the log when a snapshot is asked for, not once it is durable.
    CompactBeforeSnapshotDurable,
}

/// What the leader knows about one follower's log.
#[derive(Clone, Debug)]
struct Progress {
    /// Index of the next entry to send.
    next_index: LogIndex,
    /// Highest index known to match the leader's log.
    match_index: LogIndex,
    /// Probe: one request at a time until one succeeds. Otherwise pipelined.
    probing: bool,
    /// Requests with entries not yet answered.
    in_flight: usize,
    /// Whether the follower answered since the last heartbeat tick.
    acked_since_tick: bool,
    /// Whether the follower answered since the last CheckQuorum tick.
    recent_active: bool,
    /// The newest heartbeat round the follower echoed in this term.
    acked_round: u64,
    /// A snapshot being sent: its last index and the offset of the next chunk.
    sending_snapshot: Option<(LogIndex, u64)>,
}

impl Progress {
    fn new(last_index: LogIndex) -> Self {
        Progress {
            next_index: last_index.next(),
            match_index: LogIndex::ZERO,
            probing: true,
            in_flight: 0,
            acked_since_tick: true,
            recent_active: true,
            acked_round: 0,
            sending_snapshot: None,
        }
    }
}

/// A client write waiting for its entry to apply (no client: a follower's proposal).
#[derive(Clone, Debug)]
struct Waiting {
    client: Option<ClientId>,
    term: Term,
    session: SessionId,
    seq: u64,
}

/// A client write this follower proposed to the leader, answered when it applies here.
#[derive(Clone, Debug)]
struct Proposed {
    seq: u64,
    client: ClientId,
    /// When it was (last) proposed, to forget clients that gave up long ago.
    at: Instant,
}

/// Proposals older than this many election timeouts are forgotten when the table grows:
/// their clients have given up (a retry proposes again).
const PROPOSAL_MEMORY_TIMEOUTS: u32 = 20;

/// A client read waiting for ReadIndex (thesis §6.4).
#[derive(Clone, Debug)]
struct PendingRead<C> {
    client: ClientId,
    seq: u64,
    command: C,
    /// The commit index recorded once the leader has committed an entry of its term.
    read_index: Option<LogIndex>,
    /// The heartbeat round that must be acknowledged by a majority (`reads::NEXT_ROUND`:
    /// the next round, not started yet).
    round: u64,
}

type RaftCtx<'a, S> =
    Ctx<'a, RaftMsg<<S as StateMachine>::Command, <S as StateMachine>::Output>, RaftTimer>;

/// One Raft server replicating state machine `S`.
///
/// Build it with [`Raft::new`]; after a crash the driver builds a fresh one the same way
/// and [`Actor::on_start`] rebuilds it from storage.
pub struct Raft<S: StateMachine> {
    config: RaftConfig,
    me: NodeId,
    state_machine: S,
    // Persistent state (Figure 2), mirrored in storage.
    current_term: Term,
    voted_for: Option<NodeId>,
    log: RaftLog<S::Command>,
    // Volatile state.
    commit_index: LogIndex,
    last_applied: LogIndex,
    role: Role,
    leader: Option<NodeId>,
    votes: BTreeSet<NodeId>,
    last_leader_contact: Option<Instant>,
    // Leader state.
    progress: BTreeMap<NodeId, Progress>,
    durable_index: LogIndex,
    round: u64,
    /// The last heartbeat round started for reads.
    read_round: u64,
    waiting: BTreeMap<LogIndex, Waiting>,
    /// Client writes appended in this batch and not yet replicated
    /// (`RaftConfig::replicate_at_batch_end`).
    replicate_pending: bool,
    /// Follower proposals awaiting their entry, by session (one write in flight each).
    proposed: BTreeMap<SessionId, Proposed>,
    reads: Vec<PendingRead<S::Command>>,
    transfer: Option<(NodeId, Instant)>,
    // Lease reads (opt-in): when each recent round was sent, and the lease's end.
    round_sent: BTreeMap<u64, Instant>,
    lease_until: Option<Instant>,
    /// This server refuses to help depose a leader until then (set at start).
    sticky_until: Option<Instant>,
    lease_forbidden: bool,
    // Replicated session table (thesis §6.3): last applied seq and its output.
    sessions: Sessions<S::Output>,
    // Membership (thesis ch. 4): the latest in the log, where it is, and the one in
    // effect at the log's base (from the snapshot, or the initial voters).
    membership: Membership,
    membership_index: LogIndex,
    base_membership: Membership,
    snapshot: Option<Snapshot>,
    /// A snapshot being built in the background: its index and the membership as of it.
    snapshot_in_flight: Option<(LogIndex, Membership)>,
    /// No snapshot is attempted before this index is applied (set when one was too large).
    snapshot_deferred_until: LogIndex,
    incoming: Option<IncomingSnapshot>,
    fault: Option<String>,
    #[cfg(test)]
    pub(crate) bug: Option<Bug>,
}

impl<S: StateMachine> Raft<S> {
    /// A server of the group `config.voters`, applying committed commands to
    /// `state_machine` (which must be in its initial state).
    pub fn new(config: RaftConfig, state_machine: S) -> Self {
        let initial = Membership {
            voters: config.voters.iter().copied().collect(),
            learners: Default::default(),
        };
        Raft {
            config,
            me: NodeId(0),
            state_machine,
            current_term: Term(0),
            voted_for: None,
            log: RaftLog::new(),
            commit_index: LogIndex::ZERO,
            last_applied: LogIndex::ZERO,
            role: Role::Follower,
            leader: None,
            votes: BTreeSet::new(),
            last_leader_contact: None,
            progress: BTreeMap::new(),
            durable_index: LogIndex::ZERO,
            round: 0,
            read_round: 0,
            waiting: BTreeMap::new(),
            replicate_pending: false,
            proposed: BTreeMap::new(),
            reads: Vec::new(),
            transfer: None,
            round_sent: BTreeMap::new(),
            lease_until: None,
            sticky_until: None,
            lease_forbidden: false,
            sessions: Sessions::new(),
            membership: initial.clone(),
            membership_index: LogIndex::ZERO,
            base_membership: initial,
            snapshot: None,
            snapshot_in_flight: None,
            snapshot_deferred_until: LogIndex::ZERO,
            incoming: None,
            fault: None,
            #[cfg(test)]
            bug: None,
        }
    }

    // ---- getters ---------------------------------------------------------------------

    /// The role this server plays now.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The latest term this server has seen.
    pub fn current_term(&self) -> Term {
        self.current_term
    }

    /// The candidate this server voted for in the current term.
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }

    /// The leader of the current term, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Highest index known to be committed.
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    /// Highest index applied to the state machine.
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// Index of the last log entry.
    pub fn last_log_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// The term of the entry at `index`, if this server holds it.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }

    /// The membership this server uses: the latest in its log (thesis §4.1).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The index of the snapshot being encoded and written in the background, if any.
    pub fn snapshot_in_flight(&self) -> Option<LogIndex> {
        self.snapshot_in_flight.as_ref().map(|(index, _)| *index)
    }

    /// The earliest index of this server's first snapshot: `config.snapshot_stagger`
    /// shifts it by this server's share of the interval.
    fn first_snapshot_at(&self) -> LogIndex {
        let threshold = self.config.snapshot_threshold;
        if !self.config.snapshot_stagger || threshold == 0 {
            return LogIndex::ZERO;
        }
        let mut voters = self.config.voters.clone();
        voters.sort();
        voters.dedup();
        let rank = voters.iter().position(|&v| v == self.me).unwrap_or(0) as u64;
        let n = voters.len().max(1) as u64;
        LogIndex(threshold.saturating_add(threshold / n * rank))
    }

    /// The last index covered by this server's snapshot (0: none).
    pub fn snapshot_index(&self) -> LogIndex {
        self.log.base_index()
    }

    /// The state machine, as applied up to [`Raft::last_applied`].
    pub fn state_machine(&self) -> &S {
        &self.state_machine
    }

    /// Why this server refused to run (corrupt storage), if it did.
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// A hash of the log up through `index`, if this server holds that entry: two servers
    /// with equal hashes at an index hold identical logs up through it (for checkers).
    pub fn log_hash_at(&self, index: LogIndex) -> Option<u64> {
        self.log.hash_at(index)
    }

    // ---- helpers ---------------------------------------------------------------------

    fn quorum(&self) -> usize {
        self.membership.voters.len() / 2 + 1
    }

    /// The other voters: whom to ask for votes.
    fn peers(&self) -> Vec<NodeId> {
        let me = self.me;
        self.membership
            .voters
            .iter()
            .copied()
            .filter(|&v| v != me)
            .collect()
    }

    /// Every other member, learners included: whom a leader replicates to.
    fn replicas(&self) -> Vec<NodeId> {
        let me = self.me;
        self.membership
            .voters
            .union(&self.membership.learners)
            .copied()
            .filter(|&v| v != me)
            .collect()
    }

    fn is_voter(&self, node: NodeId) -> bool {
        self.membership.voters.contains(&node)
    }

    /// Votes (or pre-votes) received from a majority of the current voters.
    fn has_vote_quorum(&self) -> bool {
        let granted = self.votes.iter().filter(|v| self.is_voter(**v)).count();
        granted >= self.quorum()
    }

    fn set_fault(&mut self, ctx: &mut RaftCtx<'_, S>, why: String) {
        self.fault = Some(why);
        self.role = Role::Follower;
        self.leader = None;
        ctx.cancel_timer(RaftTimer::Election);
        ctx.cancel_timer(RaftTimer::Heartbeat);
    }

    fn persist_hard_state(&self, ctx: &mut RaftCtx<'_, S>) {
        ctx.storage()
            .put_value(HARD_STATE_KEY, &(self.current_term, self.voted_for));
    }

    fn reset_election_timer(&self, ctx: &mut RaftCtx<'_, S>) {
        // Randomized in [t, t + spread) so that split votes are rare (§5.2, §9.3).
        let base = duration_nanos(self.config.election_timeout).max(1);
        let spread = duration_nanos(self.config.election_timeout_spread);
        let after = base
            + if spread > 0 {
                ctx.rng().gen_range(0..spread)
            } else {
                0
            };
        ctx.set_timer(RaftTimer::Election, Duration::from_nanos(after));
    }

    /// §5.4.1: a candidate's log is at least as up-to-date as ours.
    fn log_is_up_to_date(&self, last_log_index: LogIndex, last_log_term: Term) -> bool {
        #[cfg(test)]
        if self.bug == Some(Bug::VoteWithoutLogCheck) {
            return true;
        }
        (last_log_term, last_log_index) >= (self.log.last_term(), self.log.last_index())
    }

    /// Thesis §4.2.3: a server that heard from a leader within the minimum election
    /// timeout does not help depose it.
    fn heard_from_leader_recently(&self, now: Instant) -> bool {
        if self.role == Role::Leader || self.sticky_until.is_some_and(|until| now < until) {
            return true;
        }
        match (self.leader, self.last_leader_contact) {
            (Some(_), Some(at)) => now - at < self.config.election_timeout,
            _ => false,
        }
    }

    // ---- role changes ----------------------------------------------------------------

    /// Adopt a higher term seen in any message (Figure 2, "Rules for Servers").
    fn observe_term(&mut self, ctx: &mut RaftCtx<'_, S>, term: Term) {
        if term > self.current_term {
            self.current_term = term;
            self.voted_for = None;
            self.persist_hard_state(ctx);
            self.become_follower(ctx, None);
        }
    }

    fn become_follower(&mut self, ctx: &mut RaftCtx<'_, S>, leader: Option<NodeId>) {
        if self.role == Role::Leader {
            // Writes in flight may still commit under the next leader, so their clients
            // get no answer here (they time out, the outcome unknown). Reads have not
            // taken effect and can be refused.
            self.waiting.clear();
            for read in std::mem::take(&mut self.reads) {
                ctx.reply(
                    read.client,
                    RaftMsg::NotLeader {
                        seq: read.seq,
                        leader_hint: leader,
                    },
                );
            }
            self.progress.clear();
            self.transfer = None;
            self.lease_until = None;
            ctx.cancel_timer(RaftTimer::Heartbeat);
            self.reset_election_timer(ctx);
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
    }

    fn start_pre_vote(&mut self, ctx: &mut RaftCtx<'_, S>) {
        if !self.config.pre_vote {
            return self.start_election(ctx, false);
        }
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.me);
        self.reset_election_timer(ctx);
        if self.has_vote_quorum() {
            return self.start_election(ctx, false);
        }
        let msg = RaftMsg::PreVote {
            term: self.current_term.next(),
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
        };
        ctx.send_all(self.peers(), msg);
    }

    fn start_election(&mut self, ctx: &mut RaftCtx<'_, S>, leadership_transfer: bool) {
        self.current_term = self.current_term.next();
        self.voted_for = Some(self.me);
        self.persist_hard_state(ctx);
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.me);
        self.reset_election_timer(ctx);
        if self.has_vote_quorum() {
            return self.become_leader(ctx);
        }
        let msg = RaftMsg::RequestVote {
            term: self.current_term,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leadership_transfer,
        };
        // Held until the vote for ourselves is durable.
        ctx.send_all(self.peers(), msg);
    }

    fn become_leader(&mut self, ctx: &mut RaftCtx<'_, S>) {
        self.role = Role::Leader;
        self.leader = Some(self.me);
        self.votes.clear();
        self.transfer = None;
        self.round_sent.clear();
        self.lease_until = None;
        self.lease_forbidden = false;
        self.durable_index = LogIndex::ZERO;
        let last = self.log.last_index();
        self.progress = self
            .replicas()
            .into_iter()
            .map(|p| (p, Progress::new(last)))
            .collect();
        // §8: a no-op of the new term lets earlier entries commit and reads proceed.
        if self.append_local(ctx, EntryPayload::Noop).is_none() {
            return;
        }
        for peer in self.replicas() {
            self.send_append(ctx, peer, true);
        }
        ctx.set_timer(RaftTimer::Heartbeat, self.config.heartbeat_interval);
        ctx.set_timer(RaftTimer::Election, self.config.election_timeout);
    }

    // ---- leader: replication ---------------------------------------------------------

    /// Append to the leader's log. The held self-send reports when it is durable.
    fn append_local(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        payload: EntryPayload<S::Command>,
    ) -> Option<LogIndex> {
        let entry = Entry {
            term: self.current_term,
            payload,
        };
        match self.log.append(ctx.storage(), entry) {
            Ok(index) => {
                let me = self.me;
                ctx.send(
                    me,
                    RaftMsg::LocalDurable {
                        term: self.current_term,
                        index,
                    },
                );
                Some(index)
            }
            Err(why) => {
                self.set_fault(ctx, why);
                None
            }
        }
    }

    /// Send one `AppendEntries` to `peer` from its `next_index`: with entries if
    /// `with_entries`, else a heartbeat.
    fn send_append(&mut self, ctx: &mut RaftCtx<'_, S>, peer: NodeId, with_entries: bool) {
        let Some(progress) = self.progress.get(&peer) else {
            return;
        };
        let prev_log_index = progress.next_index.prev();
        let Some(prev_log_term) = self.log.term_at(prev_log_index) else {
            // Compacted away: the follower needs the snapshot (§7).
            return self.send_snapshot_chunk(ctx, peer);
        };
        let entries = if with_entries {
            self.log.entries_from(
                progress.next_index,
                self.config.max_entries_per_append,
                self.config.max_bytes_per_append,
            )
        } else {
            Vec::new()
        };
        let count = entries.len() as u64;
        let msg = RaftMsg::AppendEntries {
            term: self.current_term,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.commit_index,
            round: self.round,
        };
        // Thesis §10.2.1: followers write while the leader writes its own disk.
        ctx.send_unsynced(peer, msg);
        if let Some(progress) = self.progress.get_mut(&peer) {
            if count > 0 {
                progress.in_flight += 1;
                if !progress.probing {
                    progress.next_index = LogIndex(prev_log_index.0 + count + 1);
                }
            }
        }
    }

    /// Fill `peer`'s pipeline window with new entries.
    fn replicate(&mut self, ctx: &mut RaftCtx<'_, S>, peer: NodeId) {
        loop {
            let Some(progress) = self.progress.get(&peer) else {
                return;
            };
            if progress.next_index > self.log.last_index() {
                return;
            }
            if self.log.term_at(progress.next_index.prev()).is_none() {
                // Needs the snapshot: one chunk at a time, never a window of them.
                if progress.in_flight == 0 {
                    self.send_snapshot_chunk(ctx, peer);
                }
                return;
            }
            let window = if progress.probing {
                1
            } else {
                self.config.max_in_flight.max(1)
            };
            if progress.in_flight >= window {
                return;
            }
            let probing = progress.probing;
            self.send_append(ctx, peer, true);
            if probing {
                return;
            }
        }
    }

    fn replicate_all(&mut self, ctx: &mut RaftCtx<'_, S>) {
        for peer in self.replicas() {
            self.replicate(ctx, peer);
        }
    }

    /// §5.3/§5.4.2: commit the highest index stored on a majority, if it is of this term.
    fn advance_commit(&mut self, ctx: &mut RaftCtx<'_, S>) {
        if self.role != Role::Leader {
            return;
        }
        let mut matched: Vec<LogIndex> = self
            .membership
            .voters
            .iter()
            .map(|&v| {
                if v == self.me {
                    self.durable_index
                } else {
                    self.progress
                        .get(&v)
                        .map_or(LogIndex::ZERO, |p| p.match_index)
                }
            })
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&candidate) = matched.get(self.quorum() - 1) else {
            return;
        };
        if candidate <= self.commit_index {
            return;
        }
        #[allow(unused_mut)]
        let mut of_this_term = self.log.term_at(candidate) == Some(self.current_term);
        #[cfg(test)]
        if self.bug == Some(Bug::CommitOldTermsByCounting) {
            of_this_term = true;
        }
        // Only entries of the leader's own term commit by counting replicas (§5.4.2).
        if of_this_term {
            self.commit_index = candidate;
            self.apply_committed(ctx);
        }
    }

    /// Apply committed entries in order; answer the clients waiting on them.
    fn apply_committed(&mut self, ctx: &mut RaftCtx<'_, S>) {
        while self.last_applied < self.commit_index {
            let index = self.last_applied.next();
            // Borrowed, not cloned: only the fields below are touched meanwhile.
            let Some(entry) = self.log.entry(index) else {
                let why = format!("committed entry {index} is not in the log");
                return self.set_fault(ctx, why);
            };
            let entry_term = entry.term;
            let (output, write) = match &entry.payload {
                EntryPayload::Noop | EntryPayload::Config(_) => (None, None),
                EntryPayload::Command {
                    session,
                    seq,
                    command,
                } => {
                    let output = match self.sessions.get(session) {
                        // A retry of a write that already applied: answer it, do not
                        // reapply.
                        Some((last, output)) if *seq == last => Some(output.clone()),
                        Some((last, _)) if *seq < last => None,
                        _ => {
                            let output = self.state_machine.apply(index, command);
                            let max = self.config.max_sessions;
                            self.sessions
                                .record(*session, *seq, output.clone(), index, max);
                            Some(output)
                        }
                    };
                    (output, Some((*session, *seq)))
                }
            };
            self.last_applied = index;
            let mut output = output;
            if let Some(waiting) = self.waiting.remove(&index) {
                if let (Some(client), true) = (waiting.client, waiting.term == entry_term) {
                    if let Some(output) = output.take() {
                        ctx.reply(
                            client,
                            RaftMsg::ClientReply {
                                seq: waiting.seq,
                                output,
                            },
                        );
                    }
                }
            }
            // A write this server proposed as a follower: answer from its own apply.
            if let Some((session, seq)) = write {
                if let Some(p) = self.proposed.get(&session) {
                    if p.seq <= seq {
                        let p = self.proposed.remove(&session).map(|p| (p.seq, p.client));
                        if let (Some((pseq, client)), Some(output)) = (p, output) {
                            if pseq == seq {
                                ctx.reply(client, RaftMsg::ClientReply { seq, output });
                            }
                        }
                    }
                }
            }
        }
        // Thesis §4.2.2: a leader removed from the voters steps down once the change
        // that removed it is committed.
        if self.role == Role::Leader
            && !self.is_voter(self.me)
            && self.commit_index >= self.membership_index
        {
            self.become_follower(ctx, None);
        }
        let threshold = self.config.snapshot_threshold;
        if threshold > 0
            && self.last_applied.0 >= self.log.base_index().0 + threshold
            && self.last_applied >= self.snapshot_deferred_until
            && self.snapshot_in_flight.is_none()
        {
            self.take_snapshot(ctx);
        }
        self.advance_reads(ctx);
    }

    fn maybe_send_timeout_now(&mut self, ctx: &mut RaftCtx<'_, S>) {
        let Some((target, _)) = self.transfer else {
            return;
        };
        let caught_up = self
            .progress
            .get(&target)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            ctx.send(
                target,
                RaftMsg::TimeoutNow {
                    term: self.current_term,
                },
            );
        }
    }

    // ---- message handlers ------------------------------------------------------------

    fn on_pre_vote(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        from: NodeId,
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
    ) {
        let granted = term > self.current_term
            && self.log_is_up_to_date(last_log_index, last_log_term)
            && !self.heard_from_leader_recently(ctx.now());
        ctx.send(
            from,
            RaftMsg::PreVoteResponse {
                term,
                current_term: self.current_term,
                granted,
            },
        );
    }

    fn on_pre_vote_response(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        from: NodeId,
        term: Term,
        current_term: Term,
        granted: bool,
    ) {
        if !granted {
            self.observe_term(ctx, current_term);
            return;
        }
        if self.role == Role::PreCandidate && term == self.current_term.next() {
            self.votes.insert(from);
            if self.has_vote_quorum() {
                self.start_election(ctx, false);
            }
        }
    }

    fn on_request_vote(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        from: NodeId,
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
        leadership_transfer: bool,
    ) {
        if term > self.current_term
            && !leadership_transfer
            && self.heard_from_leader_recently(ctx.now())
        {
            // Thesis §4.2.3: neither update the term nor vote.
            return;
        }
        self.observe_term(ctx, term);
        let granted = term == self.current_term
            && self.voted_for.is_none_or(|v| v == from)
            && self.log_is_up_to_date(last_log_index, last_log_term);
        if granted {
            self.voted_for = Some(from);
            self.persist_hard_state(ctx);
            self.reset_election_timer(ctx);
        }
        // Held until the vote is durable (Figure 2: persist before responding).
        ctx.send(
            from,
            RaftMsg::RequestVoteResponse {
                term: self.current_term,
                granted,
            },
        );
    }

    fn on_request_vote_response(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        from: NodeId,
        term: Term,
        granted: bool,
    ) {
        self.observe_term(ctx, term);
        if granted && self.role == Role::Candidate && term == self.current_term {
            self.votes.insert(from);
            if self.has_vote_quorum() {
                self.become_leader(ctx);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append_entries(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        from: NodeId,
        term: Term,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry<S::Command>>,
        leader_commit: LogIndex,
        round: u64,
    ) {
        let request_prev = prev_log_index;
        let reject = |this: &Self, conflict_term, conflict_index| RaftMsg::AppendEntriesResponse {
            term: this.current_term,
            success: false,
            match_index: LogIndex::ZERO,
            prev_log_index: request_prev,
            conflict_term,
            conflict_index,
            round,
        };
        // Figure 2, AppendEntries rule 1: reply false if term < currentTerm.
        if term < self.current_term {
            let msg = reject(self, None, LogIndex::ZERO);
            ctx.send(from, msg);
            return;
        }
        self.observe_term(ctx, term);
        if self.role != Role::Follower || self.leader != Some(from) {
            // A candidate that hears from the leader of its term steps down (§5.2).
            self.become_follower(ctx, Some(from));
        }
        self.last_leader_contact = Some(ctx.now());
        self.reset_election_timer(ctx);

        // Rule 2: reply false if the log has no entry at prevLogIndex of prevLogTerm.
        if prev_log_index > self.log.last_index() {
            let msg = reject(self, None, self.log.last_index().next());
            ctx.send(from, msg);
            return;
        }
        // Entries up to our snapshot are committed, so they match: skip them.
        let mut entries = entries;
        let mut prev_log_index = prev_log_index;
        let mut prev_log_term = prev_log_term;
        let match_index = LogIndex(prev_log_index.0 + entries.len() as u64);
        let base = self.log.base_index();
        if prev_log_index < base {
            let skip = usize::try_from(base.0 - prev_log_index.0).unwrap_or(usize::MAX);
            entries.drain(..skip.min(entries.len()));
            prev_log_index = base;
            prev_log_term = self.log.term_at(base).unwrap_or_default();
        }
        match self.log.term_at(prev_log_index) {
            Some(t) if t == prev_log_term => {}
            Some(t) => {
                let first = self.log.first_index_of_term_at(prev_log_index);
                let msg = reject(self, Some(t), first);
                ctx.send(from, msg);
                return;
            }
            None => {
                // Before our snapshot base: that prefix is committed, so it matches.
                let msg = reject(self, None, self.log.base_index().next());
                ctx.send(from, msg);
                return;
            }
        }
        // Rules 3 and 4: delete a conflicting suffix, append what is new.
        let mut index = prev_log_index;
        let mut membership_changed = false;
        for entry in entries {
            index = index.next();
            match self.log.term_at(index) {
                Some(t) if t == entry.term => continue,
                Some(_) => {
                    if index <= self.commit_index {
                        let why = format!("leader {from} conflicts with committed entry {index}");
                        return self.set_fault(ctx, why);
                    }
                    self.log.truncate(ctx.storage(), index);
                    membership_changed |= index <= self.membership_index;
                }
                None => {}
            }
            membership_changed |= matches!(entry.payload, EntryPayload::Config(_));
            if let Err(why) = self.log.append(ctx.storage(), entry) {
                return self.set_fault(ctx, why);
            }
        }
        if membership_changed {
            // Thesis §4.1: the latest configuration in the log applies at once, and a
            // truncated one no longer does.
            self.refresh_membership();
        }
        // Rule 5: commitIndex = min(leaderCommit, index of last new entry).
        let new_commit = leader_commit.min(match_index);
        if new_commit > self.commit_index {
            self.commit_index = new_commit;
            self.apply_committed(ctx);
        }
        // Held until the appended entries are durable.
        ctx.send(
            from,
            RaftMsg::AppendEntriesResponse {
                term: self.current_term,
                success: true,
                match_index,
                prev_log_index: request_prev,
                conflict_term: None,
                conflict_index: LogIndex::ZERO,
                round,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append_entries_response(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        from: NodeId,
        term: Term,
        success: bool,
        match_index: LogIndex,
        prev_log_index: LogIndex,
        conflict_term: Option<Term>,
        conflict_index: LogIndex,
        round: u64,
    ) {
        self.observe_term(ctx, term);
        if self.role != Role::Leader || term != self.current_term {
            return;
        }
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.acked_since_tick = true;
        progress.acked_round = progress.acked_round.max(round);
        if success {
            progress.match_index = progress.match_index.max(match_index.min(last_index));
            progress.next_index = progress.next_index.max(progress.match_index.next());
            progress.probing = false;
            progress.in_flight = progress.in_flight.saturating_sub(1);
            self.advance_commit(ctx);
        } else if prev_log_index >= progress.match_index
            && (!progress.probing || prev_log_index == progress.next_index.prev())
        {
            // Only a rejection of the probe now outstanding moves it: a duplicated or
            // stale one would otherwise start a second, endless exchange.
            // §5.3, end: skip the follower's whole conflicting term at once.
            let hinted = match conflict_term {
                Some(t) => self
                    .log
                    .last_index_of_term(t)
                    .map_or(conflict_index, LogIndex::next),
                None => conflict_index,
            };
            let floor = progress.match_index.next();
            let ceiling = prev_log_index.max(floor);
            progress.next_index = hinted.clamp(floor, ceiling);
            progress.probing = true;
            progress.in_flight = 0;
            self.send_append(ctx, from, true);
        }
        if self.transfer.is_some_and(|(target, _)| target == from) {
            self.maybe_send_timeout_now(ctx);
        }
        self.extend_lease();
        self.advance_reads(ctx);
        self.replicate(ctx, from);
    }

    fn on_local_durable(&mut self, ctx: &mut RaftCtx<'_, S>, term: Term, index: LogIndex) {
        if self.role == Role::Leader && term == self.current_term {
            self.durable_index = self.durable_index.max(index);
            self.advance_commit(ctx);
        }
    }

    fn on_timeout_now(&mut self, ctx: &mut RaftCtx<'_, S>, from: NodeId, term: Term) {
        if term == self.current_term && self.role == Role::Follower && self.leader == Some(from) {
            self.start_election(ctx, true);
        }
    }

    // ---- client requests -------------------------------------------------------------

    /// A write this server has already applied (an earlier attempt of `seq`) is answered
    /// from the session table, and one older than the session's last is dropped; true if
    /// either happened, so the write needs nothing more.
    fn settled_by_session(
        &self,
        ctx: &mut RaftCtx<'_, S>,
        client: ClientId,
        session: SessionId,
        seq: u64,
    ) -> bool {
        match self.sessions.get(&session) {
            Some((last, output)) if last == seq => {
                let output = output.clone();
                ctx.reply(client, RaftMsg::ClientReply { seq, output });
                true
            }
            Some((last, _)) => last > seq,
            None => false,
        }
    }

    fn not_leader(&self, ctx: &mut RaftCtx<'_, S>, client: ClientId, seq: u64) {
        let leader_hint = match self.transfer {
            Some((target, _)) => Some(target),
            None => self.leader.filter(|&l| l != self.me),
        };
        ctx.reply(client, RaftMsg::NotLeader { seq, leader_hint });
    }

    fn on_client_write(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        client: ClientId,
        session: SessionId,
        seq: u64,
        command: S::Command,
    ) {
        let leader = self.leader.filter(|&l| l != self.me);
        #[allow(unused_mut)]
        let mut proposals = self.config.follower_proposals;
        #[cfg(test)]
        if self.bug == Some(Bug::AnswerProposalOnSend) {
            proposals = true;
        }
        if self.role == Role::Follower && proposals && leader.is_some() {
            if let Some(leader) = leader {
                return self.propose_to(ctx, leader, client, session, seq, command);
            }
        }
        if self.role != Role::Leader || self.transfer.is_some() {
            return self.not_leader(ctx, client, seq);
        }
        if self.settled_by_session(ctx, client, session, seq) {
            return;
        }
        self.append_write(ctx, Some(client), session, seq, command);
    }

    /// Leader: append a client write once per term, and answer `client` (if any) when
    /// it applies.
    fn append_write(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        client: Option<ClientId>,
        session: SessionId,
        seq: u64,
        command: S::Command,
    ) {
        // Already in the log, not yet applied: answer this client when it applies.
        let term = self.current_term;
        if let Some(waiting) = self
            .waiting
            .values_mut()
            .find(|w| w.session == session && w.seq == seq && w.term == term)
        {
            if client.is_some() {
                waiting.client = client;
            }
            return;
        }
        let payload = EntryPayload::Command {
            session,
            seq,
            command,
        };
        let Some(index) = self.append_local(ctx, payload) else {
            return;
        };
        self.waiting.insert(
            index,
            Waiting {
                client,
                term,
                session,
                seq,
            },
        );
        if self.config.replicate_at_batch_end {
            self.replicate_pending = true;
        } else {
            self.replicate_all(ctx);
        }
    }

    /// Follower: hand a client write to the leader and answer the client when the entry
    /// applies here (etcd's `MsgProp`).
    fn propose_to(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        leader: NodeId,
        client: ClientId,
        session: SessionId,
        seq: u64,
        command: S::Command,
    ) {
        if self.settled_by_session(ctx, client, session, seq) {
            return;
        }
        let now = ctx.now();
        let len = self.proposed.len();
        if len >= 1024 && len.is_power_of_two() {
            let memory = self.config.election_timeout * PROPOSAL_MEMORY_TIMEOUTS;
            self.proposed.retain(|_, p| p.at + memory > now);
        }
        self.proposed.insert(
            session,
            Proposed {
                seq,
                client,
                at: now,
            },
        );
        #[cfg(test)]
        if self.bug == Some(Bug::AnswerProposalOnSend) {
            self.proposed.remove(&session);
            let output = self.state_machine.read(&command);
            ctx.reply(client, RaftMsg::ClientReply { seq, output });
        }
        // Nothing to make durable here: the leader's log is what counts.
        ctx.send_unsynced(
            leader,
            RaftMsg::Propose {
                session,
                seq,
                command,
            },
        );
    }

    /// Leader: a follower's proposal is a client write whose client the follower answers.
    fn on_propose(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        session: SessionId,
        seq: u64,
        command: S::Command,
    ) {
        if self.role != Role::Leader || self.transfer.is_some() {
            // Dropped: the follower's client retries, and finds the next leader.
            return;
        }
        if self
            .sessions
            .get(&session)
            .is_some_and(|(last, _)| last >= seq)
        {
            // Applied already; the follower answers when it applies it too.
            return;
        }
        self.append_write(ctx, None, session, seq, command);
    }

    fn on_transfer_leadership(&mut self, ctx: &mut RaftCtx<'_, S>, to: NodeId) {
        if self.role != Role::Leader || to == self.me || !self.is_voter(to) {
            return;
        }
        let deadline = ctx.now() + self.config.election_timeout;
        self.transfer = Some((to, deadline));
        // The target's election skips leader stickiness, so no lease holds any more in
        // this term, even if the transfer is abandoned.
        self.lease_until = None;
        self.round_sent.clear();
        self.lease_forbidden = true;
        self.maybe_send_timeout_now(ctx);
        self.replicate(ctx, to);
    }

    // ---- timers ----------------------------------------------------------------------

    fn on_heartbeat(&mut self, ctx: &mut RaftCtx<'_, S>) {
        if self.role != Role::Leader {
            return;
        }
        if self.config.lease_read_max_drift_ppm.is_some() {
            // Every heartbeat is a round, so that the lease keeps being renewed.
            let now = ctx.now();
            self.next_round(now);
        }
        for peer in self.replicas() {
            if let Some(progress) = self.progress.get_mut(&peer) {
                if !progress.acked_since_tick {
                    // Nothing came back for a whole interval: assume the requests were
                    // lost and resend from the last known match.
                    progress.in_flight = 0;
                    progress.next_index = progress.match_index.next();
                }
                progress.acked_since_tick = false;
            }
            let can_send = self.progress.get(&peer).is_some_and(|p| p.in_flight == 0);
            self.send_append(ctx, peer, can_send);
            self.replicate(ctx, peer);
        }
        ctx.set_timer(RaftTimer::Heartbeat, self.config.heartbeat_interval);
    }

    fn on_election_timeout(&mut self, ctx: &mut RaftCtx<'_, S>) {
        if self.role == Role::Leader {
            if self
                .transfer
                .is_some_and(|(_, deadline)| ctx.now() >= deadline)
            {
                self.transfer = None;
            }
            let me = self.me;
            let active = self
                .progress
                .iter()
                .filter(|(peer, p)| p.recent_active && self.is_voter(**peer))
                .count()
                + usize::from(self.is_voter(me));
            if self.config.check_quorum && active < self.quorum() {
                // Thesis §9.6 CheckQuorum: a leader cut off from a majority steps down.
                self.become_follower(ctx, None);
                return;
            }
            for progress in self.progress.values_mut() {
                progress.recent_active = false;
            }
            ctx.set_timer(RaftTimer::Election, self.config.election_timeout);
            return;
        }
        if !self.is_voter(self.me) {
            // Not a voter (yet): keep the timer, in case this server is promoted.
            return self.reset_election_timer(ctx);
        }
        self.start_pre_vote(ctx);
    }
}

impl<S: StateMachine> Actor for Raft<S> {
    type Msg = RaftMsg<S::Command, S::Output>;
    type Timer = RaftTimer;

    fn on_start(&mut self, ctx: &mut RaftCtx<'_, S>) {
        self.me = ctx.me();
        self.snapshot_deferred_until = self.first_snapshot_at();
        match ctx
            .storage()
            .get_value::<(Term, Option<NodeId>)>(HARD_STATE_KEY)
        {
            Ok(Some((term, vote))) => {
                self.current_term = term;
                self.voted_for = vote;
            }
            Ok(None) => {}
            Err(e) => return self.set_fault(ctx, format!("hard state does not decode: {e}")),
        }
        let snapshot = match Self::load_snapshot(ctx.storage()) {
            Ok(snapshot) => snapshot,
            Err(why) => return self.set_fault(ctx, why),
        };
        let base = snapshot.as_ref().map(|s| (s.index, s.term, s.hash));
        match RaftLog::load(ctx.storage(), base) {
            Ok(log) => self.log = log,
            Err(why) => return self.set_fault(ctx, why),
        }
        if let Some(snapshot) = snapshot {
            if let Err(why) = self.restore(&snapshot.data) {
                return self.set_fault(ctx, why);
            }
            // A snapshot holds only committed, applied state.
            self.commit_index = snapshot.index;
            self.last_applied = snapshot.index;
            self.snapshot = Some(snapshot);
        }
        self.sweep_orphan_snapshots(ctx);
        self.refresh_membership();
        if self.log.last_term() > self.current_term {
            let why = format!(
                "log holds term {} past the stored term {}",
                self.log.last_term(),
                self.current_term
            );
            return self.set_fault(ctx, why);
        }
        self.role = Role::Follower;
        if self.config.lease_read_max_drift_ppm.is_some() {
            // A restarted server forgot when it last heard from a leader, which may
            // hold a lease: it waits out an election timeout before helping elect
            // another (for lease reads; without them this only delays elections).
            self.sticky_until = Some(ctx.now() + self.config.election_timeout);
        }
        self.reset_election_timer(ctx);
    }

    fn on_message(&mut self, ctx: &mut RaftCtx<'_, S>, from: Endpoint, msg: Self::Msg) {
        if self.fault.is_some() {
            return;
        }
        let node = match from {
            Endpoint::Client(client) => {
                match msg {
                    RaftMsg::ClientWrite {
                        session,
                        seq,
                        command,
                    } => self.on_client_write(ctx, client, session, seq, command),
                    RaftMsg::ClientRead { seq, command } => {
                        self.on_client_read(ctx, client, seq, command)
                    }
                    RaftMsg::TransferLeadership { to } => self.on_transfer_leadership(ctx, to),
                    RaftMsg::ChangeMembership { change } => self.on_change_membership(ctx, change),
                    _ => {}
                }
                return;
            }
            Endpoint::Node(node) => node,
        };
        if node == self.me {
            match msg {
                RaftMsg::LocalDurable { term, index } => self.on_local_durable(ctx, term, index),
                RaftMsg::SnapshotWritten {
                    index,
                    term,
                    hash,
                    data,
                } => self.on_snapshot_written(ctx, (index, term, hash), data),
                _ => {}
            }
            return;
        }
        // Thesis §4.1: servers answer RPCs whatever their configuration says.
        match msg {
            RaftMsg::PreVote {
                term,
                last_log_index,
                last_log_term,
            } => self.on_pre_vote(ctx, node, term, last_log_index, last_log_term),
            RaftMsg::PreVoteResponse {
                term,
                current_term,
                granted,
            } => self.on_pre_vote_response(ctx, node, term, current_term, granted),
            RaftMsg::RequestVote {
                term,
                last_log_index,
                last_log_term,
                leadership_transfer,
            } => self.on_request_vote(
                ctx,
                node,
                term,
                last_log_index,
                last_log_term,
                leadership_transfer,
            ),
            RaftMsg::RequestVoteResponse { term, granted } => {
                self.on_request_vote_response(ctx, node, term, granted)
            }
            RaftMsg::AppendEntries {
                term,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                round,
            } => self.on_append_entries(
                ctx,
                node,
                term,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                round,
            ),
            RaftMsg::AppendEntriesResponse {
                term,
                success,
                match_index,
                prev_log_index,
                conflict_term,
                conflict_index,
                round,
            } => self.on_append_entries_response(
                ctx,
                node,
                term,
                success,
                match_index,
                prev_log_index,
                conflict_term,
                conflict_index,
                round,
            ),
            RaftMsg::InstallSnapshot {
                term,
                last_included_index,
                last_included_term,
                last_included_hash,
                offset,
                data,
                done,
            } => self.on_install_snapshot(
                ctx,
                node,
                term,
                (last_included_index, last_included_term, last_included_hash),
                offset,
                data,
                done,
            ),
            RaftMsg::InstallSnapshotResponse {
                term,
                last_included_index,
                next_offset,
                done,
            } => self.on_install_snapshot_response(
                ctx,
                node,
                term,
                last_included_index,
                next_offset,
                done,
            ),
            RaftMsg::TimeoutNow { term } => self.on_timeout_now(ctx, node, term),
            RaftMsg::Propose {
                session,
                seq,
                command,
            } => self.on_propose(ctx, session, seq, command),
            _ => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut RaftCtx<'_, S>, timer: RaftTimer) {
        if self.fault.is_some() {
            return;
        }
        match timer {
            RaftTimer::Election => self.on_election_timeout(ctx),
            RaftTimer::Heartbeat => self.on_heartbeat(ctx),
        }
    }

    fn on_batch_end(&mut self, ctx: &mut RaftCtx<'_, S>) {
        if !std::mem::take(&mut self.replicate_pending) {
            return;
        }
        // A write appended earlier in the batch may have been followed by a step-down.
        if self.fault.is_none() && self.role == Role::Leader {
            self.replicate_all(ctx);
        }
    }
}
