//! # Raft: a replicated log and state machine
//!
//! Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm (Extended
//! Version)", 2014 (cited as §n / Figure n), and Ongaro, "Consensus: Bridging Theory and
//! Practice", PhD thesis, Stanford 2014 (cited as thesis §n).
//!
//! ## The algorithm
//!
//! Servers are followers, (pre-)candidates or leaders, and time is divided into terms
//! (§5.1). A follower that hears from no leader for a randomized election timeout
//! (uniform in `[election_timeout, 2 × election_timeout)`, §5.2) first asks for
//! **pre-votes** for the next term without changing any state (thesis §9.6). Only with a
//! majority of pre-votes does it increment its term, vote for itself and send
//! `RequestVote`. Voters grant one vote per term, and only to a candidate whose log is
//! at least as up-to-date as theirs (§5.4.1). A leader appends a **no-op** entry at the
//! start of its term (§8) and replicates with `AppendEntries`, which carries the
//! consistency check on `(prev_log_index, prev_log_term)`; a follower truncates a
//! conflicting suffix and appends (Figure 2). A rejection carries the conflicting term
//! and the first index of that term, so the leader skips a whole term per round trip
//! (end of §5.3). The leader **commits only entries of its own term by counting
//! replicas** (§5.4.2); earlier entries commit with them.
//!
//! Replication is **pipelined**: in the `Replicate` state the leader keeps up to
//! `max_in_flight` `AppendEntries` outstanding per follower, each **batching** up to
//! `max_entries_per_append` entries or `max_bytes_per_append` bytes. After a rejection
//! it falls back to `Probe` (one request at a time) until a request succeeds. Every
//! heartbeat interval, a follower that acknowledged nothing since the last tick is
//! rewound to its match index, so lost requests are re-sent.
//!
//! **CheckQuorum** (thesis §9.6): a leader that has not heard from a majority within an
//! election timeout steps down. **Leader stickiness** (thesis §4.2.3): a server that has
//! heard from a leader within the minimum election timeout neither pre-votes nor votes
//! for another server, unless the election was started by **leadership transfer**: the
//! leader brings the target up to date, then sends `TimeoutNow` (thesis §3.10) and stops
//! accepting writes until the transfer completes or an election timeout passes.
//!
//! Clients talk to a [`StateMachine`] through the log. Writes carry a `(session, seq)`
//! pair; the state machine's session table (replicated, since it is updated only when
//! entries apply) remembers each session's last applied sequence number and output, so a
//! retried write applies once and gets the original answer (thesis §6.3). Sessions are
//! never expired in this version. Reads use **ReadIndex** (thesis §6.4): once the leader
//! has committed an entry of its term, it records its commit index, confirms it is still
//! leader with a round of heartbeats acknowledged by a majority, waits until it has
//! applied up to the recorded index, and answers from its state machine. Leader-lease
//! reads are an opt-in (below).
//!
//! ## Persistence and group commit
//!
//! `currentTerm` and `votedFor` are one storage value, written before any vote or
//! term-bearing reply leaves: votes and follower acknowledgements use `ctx.send`, which
//! the driver holds until the step's writes are durable. Raft index `i` is record `i` of
//! the storage log. `on_start` rebuilds term, vote and log from storage; the commit index
//! and the state machine are volatile and are rebuilt by replaying committed entries
//! once a leader announces its commit index. A record or value that does not decode is
//! corruption: the node records it in [`Raft::fault`] and does nothing at all from then
//! on (it neither votes nor acknowledges), rather than run with a log it cannot trust.
//!
//! The leader sends `AppendEntries` with `ctx.send_unsynced`, so followers write in
//! parallel with its own disk (thesis §10.2.1). The leader must still count itself
//! toward a commit only for entries on its own disk. After every append it sends itself
//! `LocalDurable { term, index }` with a held `ctx.send`; the driver delivers it only
//! after that batch is durable, and only then does the leader's own match index advance.
//! (A driver that delivers self-sends is required; both synod drivers do.)
//!
//! ## Fault and timing model
//!
//! Crash-recovery servers with stable storage; a network that may lose, duplicate,
//! reorder and delay messages and partition servers; no Byzantine faults. Safety holds
//! under any timing. Liveness needs `broadcast time ≪ election timeout ≪ MTBF` (§5.6)
//! and a majority of servers up and connected.
//!
//! ## Invariants (Figure 3), checked after every simulator event by the tests
//!
//! - **Election Safety**: at most one leader per term.
//! - **Leader Append-Only**: a leader never overwrites or deletes entries in its log.
//! - **Log Matching**: two logs with an entry of the same index and term are identical
//!   up through that index.
//! - **Leader Completeness**: an entry committed in a term is in the log of every leader
//!   of a later term.
//! - **State Machine Safety**: no two servers apply different entries at one index.
//!
//! The simulation tests also check the whole client history for linearizability.
//!
//! ## Differences from the chapter's sketch
//!
//! The chapter's `RaftNode` (lines 606-739 of the seed chapter) is a sketch with
//! blocking RPCs; the complete algorithm differs from it in these ways:
//!
//! - Its `append_entries` sets `commit_index` to the end of the log as soon as a
//!   majority of synchronous calls succeed, whatever the entries' terms. That is the
//!   Figure 8 bug; here a leader commits by counting only entries of its own term
//!   (§5.4.2), and a follower's commit index is `min(leaderCommit, last new entry)`.
//! - It keeps `current_term`, `voted_for` and the log in memory only; here they are
//!   durable before any vote or acknowledgement leaves (Figure 2, "persistent state").
//! - It runs an election as one loop of blocking calls and falls back to follower on a
//!   split vote; here votes arrive as messages, terms end by timeout, and pre-vote keeps
//!   a partitioned server from raising everyone's term on its return (thesis §9.6).
//! - It has no AppendEntries receiver, no consistency check or truncation, no fast
//!   backtracking, no no-op on election (§8), no client sessions (a retried write would
//!   apply twice, thesis §6.3), no linearizable reads (thesis §6.4), no snapshots (§7)
//!   and no membership changes (thesis ch. 4). Each is here.
//! - Its `next_index` starts at `len(log)` over a 0-based list; here indexes are
//!   1-based [`LogIndex`] values, as in the paper, with 0 meaning "before the log".
//!
//! ## Snapshots (§7, Figure 13)
//!
//! Once `snapshot_threshold` entries have applied past the last snapshot, a server
//! snapshots the state machine together with the session table and the membership,
//! **off the write path**: it takes a cheap frozen view of the state at the applied index
//! ([`StateMachine::snapshot_view`]) and hands it to the driver as background work
//! (`Effect::Background`), which encodes it and writes it as a durable blob of its own
//! on another thread, as etcd snapshots its bbolt backend without stopping apply. The
//! result comes back as [`RaftMsg::SnapshotWritten`] carrying the index, term and hash
//! fixed when it was asked for; only then does the server point at the new blob and
//! compact the log, in one batch. A crash before that loses only the work: the old
//! snapshot and its log are intact (a restart may leave the unreferenced blob behind).
//! One snapshot is in flight at a time, and one that an installed snapshot overtook is
//! dropped. A leader that no longer holds the entries a follower needs sends the
//! snapshot with `InstallSnapshot` in chunks of `snapshot_chunk_bytes` (an offset and a
//! done flag, as in Figure 13), one chunk in flight at a time; the follower keeps the
//! log after the snapshot if it holds the snapshot's last entry, else discards it, and
//! acknowledges only once the snapshot is durable. With `snapshot_stagger` each server
//! snapshots at its own phase of the interval, so that the servers (and a leader and
//! its quorum) do not all pay for a snapshot at the same moment.
//!
//! A group may also be born with a state: `Raft::seed_snapshot` stores it as the
//! snapshot at index 1, term 0, before the first `on_start` (multi-Raft splits, in
//! `txn`). A replica of the group that was not seeded has an empty log, so its leader
//! finds no term at index 0 and sends it the snapshot.
//!
//! ## Membership changes (thesis ch. 4)
//!
//! Single-server changes, with learners. A `Config` entry takes effect on every server
//! as soon as it is in its log, committed or not, and a truncated one stops applying
//! (thesis §4.1). The leader accepts `ChangeMembership` only when the previous change is
//! committed and it has committed an entry of its own term (the fix of thesis §4.1 for
//! the bug found in single-server changes). A new server first joins as a learner: it
//! receives the log and snapshots but neither votes nor counts toward commitment, and
//! the leader promotes it only once it is within one batch of the leader's log
//! (thesis §4.2.1), so the group's availability does not depend on a server that is
//! still catching up. A leader removed from the voters stops counting itself and steps
//! down once the change is committed (thesis §4.2.2); removed servers cannot disrupt
//! the group, thanks to pre-vote and leader stickiness (thesis §4.2.3). The membership
//! as of a snapshot's last entry is stored in the snapshot.
//!
//! ## Writes through followers (opt-in)
//!
//! With [`RaftConfig::follower_proposals`], a follower that knows the leader does not
//! turn a client write away: it sends the command to the leader as a
//! [`RaftMsg::Propose`] (etcd's `MsgProp`, raft/raft.go `stepFollower`), remembers the
//! client under the write's session, and answers it when the entry with that session and
//! sequence number applies on its *own* state machine. The entry is committed by then
//! (a follower applies only up to the leader's commit index), and the output is the one
//! every server computes for that index, so the answer is the same the leader would have
//! given, one network hop earlier. A proposal lost on the way, or dropped by a leader
//! that is stepping down, is retried by the client with the same session and sequence
//! number; the session table keeps the retry from applying twice, and a retry of a
//! write that already applied on this follower is answered from the table. The leader
//! treats a proposal as a client write without a client: it appends it once per term.
//!
//! ## Lease reads (opt-in, thesis §6.4.1)
//!
//! With [`RaftConfig::lease_read_max_drift_ppm`] set to `Some(ρ)`, every heartbeat
//! starts a new round and the leader remembers when it sent it. When a majority has
//! echoed round `r`, none of them will help elect another leader for one minimum
//! election timeout of *its own* clock after receiving `r` (leader stickiness, and a
//! restarted server waits out one election timeout before voting). If every clock's
//! rate is within ±ρ of true time, that is at least `election_timeout × (1 − ρ)/(1 + ρ)`
//! of the leader's clock after it *sent* `r`, and the leader answers reads locally
//! until then. The bound is on clock **rate** (drift), not offset: clocks need not agree,
//! only tick at nearly the same speed. A drift larger than ρ, a paused process whose
//! clock keeps running after it wakes (a VM freeze longer than the lease), or a clock
//! that jumps forward on a follower breaks the guarantee and can return stale reads;
//! that is why leases are off by default. A leader gives up its lease for the rest of
//! its term once it starts a leadership transfer (whose election skips stickiness) or
//! a membership change.
//!
//! ## Not yet implemented
//!
//! Joint consensus (thesis §4.3); single-server changes cover the same ground one
//! server at a time. Sessions are never expired (thesis §6.3 expires them
//! deterministically by log time); the session table grows with the number of clients.
//!
//! ## Inputs and effects
//!
//! Inputs: [`RaftMsg`] from peers and clients; [`RaftTimer`]s. Effects: `AppendEntries`,
//! `InstallSnapshot` and `Propose` with `send_unsynced`; everything else with held `send`/`reply`;
//! one election timer and (leader only) one heartbeat timer.

#[cfg(any(test, feature = "harness"))]
pub mod harness;
mod kv;
mod log;
mod msg;
mod state;
#[cfg(test)]
mod tests;

pub use kv::{KvCommand, KvOutput, KvStateMachine};
pub use msg::{Entry, EntryPayload, Membership, MembershipChange, RaftMsg, SessionId, Term};
pub use state::{Raft, RaftTimer, Role, SEED_INDEX};

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::time::Duration;
use synod_core::{LogIndex, NodeId};

/// The deterministic state machine that Raft replicates.
///
/// `apply` is called once per committed command, in log order, on every server. It must
/// be deterministic: the same commands from the same state give the same outputs.
pub trait StateMachine: Send + 'static {
    /// A command, carried in log entries and client requests.
    type Command: Serialize + DeserializeOwned + Debug + Clone + PartialEq + Send + 'static;
    /// What a command returns to the client.
    type Output: Serialize + DeserializeOwned + Debug + Clone + PartialEq + Send + 'static;

    /// Apply the committed command at `index` and return its output.
    fn apply(&mut self, index: LogIndex, command: &Self::Command) -> Self::Output;
    /// Answer a command without changing state (the ReadIndex path). A command that
    /// would change state must not change it here: it is answered as if it were a read.
    fn read(&self, command: &Self::Command) -> Self::Output;
    /// The whole state, for a snapshot.
    fn snapshot(&self) -> Vec<u8>;
    /// A frozen view of the state as of now, to be encoded later on another thread into
    /// exactly what [`StateMachine::snapshot`] would return now. Taking it must be cheap
    /// (shared, copy-on-write data), since it runs on the write path; the default encodes
    /// at once.
    fn snapshot_view(&self) -> Box<dyn FnOnce() -> Vec<u8> + Send> {
        let bytes = self.snapshot();
        Box::new(move || bytes)
    }
    /// Replace the state with a snapshot's. An error means the snapshot is corrupt, and
    /// must leave the state as it was.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
    /// A cheap estimate of [`StateMachine::snapshot`]'s size in bytes, if the state
    /// machine keeps one. Raft consults it against [`RaftConfig::max_snapshot_bytes`]
    /// before paying for the encoding.
    fn snapshot_size_hint(&self) -> Option<u64> {
        None
    }
}

/// How a Raft server is set up. Every server of a group needs the same `voters`.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// The initial voting members. A server not among them starts as a non-member and
    /// learns its role from the log once a leader adds it (thesis ch. 4).
    pub voters: Vec<NodeId>,
    /// The minimum election timeout `t`; each timeout is drawn from `[t, t + spread)`
    /// (§5.2).
    pub election_timeout: Duration,
    /// The width of the random part of the election timeout; [`RaftConfig::new`] sets
    /// it equal to `election_timeout`, giving `[t, 2t)`. Zero removes the randomness,
    /// which Figure 16 of the paper shows to cause repeated split votes.
    pub election_timeout_spread: Duration,
    /// How often a leader sends heartbeats (well below `election_timeout`, §5.6).
    pub heartbeat_interval: Duration,
    /// Most entries in one `AppendEntries`.
    pub max_entries_per_append: usize,
    /// Most encoded entry bytes in one `AppendEntries` (at least one entry is sent).
    pub max_bytes_per_append: usize,
    /// Most `AppendEntries` with entries outstanding per follower (pipelining window).
    pub max_in_flight: usize,
    /// Ask for pre-votes before a real election (thesis §9.6).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a majority for an election
    /// timeout (thesis §9.6).
    pub check_quorum: bool,
    /// Take a snapshot and compact the log once this many entries are applied past the
    /// last snapshot (§7). Zero: never.
    pub snapshot_threshold: u64,
    /// Spread the servers' snapshots over the interval: the voter of rank `i` of `n` (in
    /// id order) takes its first snapshot `snapshot_threshold × i / n` entries later than
    /// the threshold, and each later one a threshold after its last, so the servers do
    /// not all encode and write their whole state at the same index. That matters when
    /// they share cores and a disk (`synod up`), and for a leader whose quorum would
    /// otherwise snapshot with it. A server that installs the leader's snapshot takes the
    /// leader's phase from then on.
    pub snapshot_stagger: bool,
    /// Bytes of snapshot per `InstallSnapshot` chunk (Figure 13).
    pub snapshot_chunk_bytes: usize,
    /// The largest snapshot a server stores (`None`: no bound). Snapshots are one storage
    /// value, and a store may refuse values past a size (the disk WAL's bound is 64 MiB),
    /// so a server whose snapshot would be larger keeps its log instead and tries again
    /// after another `snapshot_threshold` entries; the log then grows until the state
    /// shrinks. [`StateMachine::snapshot_size_hint`] lets it skip the encoding.
    pub max_snapshot_bytes: Option<u64>,
    /// Opt-in leader-lease reads (thesis §6.4.1): `Some(ρ)` in parts per million is the
    /// largest clock rate error between any two servers that the lease may assume.
    /// `None` (the default): every read goes through ReadIndex. See the module header
    /// for what a wrong bound costs.
    pub lease_read_max_drift_ppm: Option<u64>,
    /// Most client sessions remembered for exactly-once writes (thesis §6.3); beyond
    /// it, the least recently written session is forgotten, on every server alike.
    pub max_sessions: usize,
    /// A follower that knows the leader accepts client writes itself: it proposes the
    /// command to the leader ([`RaftMsg::Propose`]) and answers the client once the entry
    /// has applied on its own state machine, as etcd's followers do. Off: a follower
    /// answers `NotLeader` and the client goes to the leader.
    pub follower_proposals: bool,
    /// A leader replicates new client writes once per input batch
    /// ([`synod_core::Actor::on_batch_end`]) rather than once per write: the writes of a
    /// batch leave in one `AppendEntries` per follower instead of filling the pipeline
    /// window with one-entry requests (etcd batches proposals per `Ready` the same way).
    /// Only for drivers that call `on_batch_end`; when replication happens changes no
    /// safety argument, only how many messages carry the same entries.
    pub replicate_at_batch_end: bool,
}

impl RaftConfig {
    /// Defaults for a LAN: 150 ms election timeout (§9.3 suggests 150-300 ms), 30 ms
    /// heartbeats, 64 entries or 1 MiB per request, 8 requests in flight, pre-vote and
    /// check-quorum on, a snapshot every 8192 entries sent in 64 KiB chunks.
    pub fn new(voters: Vec<NodeId>) -> Self {
        RaftConfig {
            voters,
            election_timeout: Duration::from_millis(150),
            election_timeout_spread: Duration::from_millis(150),
            heartbeat_interval: Duration::from_millis(30),
            max_entries_per_append: 64,
            max_bytes_per_append: 1 << 20,
            max_in_flight: 8,
            pre_vote: true,
            check_quorum: true,
            snapshot_threshold: 8192,
            snapshot_stagger: false,
            snapshot_chunk_bytes: 64 << 10,
            max_snapshot_bytes: None,
            lease_read_max_drift_ppm: None,
            max_sessions: 100_000,
            follower_proposals: false,
            replicate_at_batch_end: false,
        }
    }
}
