//! Multi-Paxos (Paxos Made Simple §3): a replicated log of KV commands with a stable,
//! distinguished leader.
//!
//! A node that hears no leader for an election timeout becomes a candidate: it picks a
//! ballot above every one it has seen, promises it to itself, and sends one `Prepare` that
//! covers every slot from its first unchosen slot on. When a majority has promised, it is
//! leader: for every slot up to the highest one any promise reported, it proposes the
//! highest-ballot value reported, or a no-op if none was ("fill the gaps", §3), and from
//! then on runs only phase 2 for each new client command. Chosen commands are applied in
//! slot order to a [`KvStateMachine`]. Every command carries the client's session and
//! sequence number, so a command that a retry put into two slots takes effect once.
//!
//! Inputs: client `Request`s (from any client; a non-leader answers `NotLeader` with a
//! hint), peer messages, and the `Election` and `Heartbeat` timers. Effects: phase 1 and
//! phase 2 messages, `Chosen` notices, heartbeats, `Reply`s after the command is applied.
//!
//! Durable state is a log of records (promise, acceptance, chosen), replayed in
//! `on_start`; every message that reports it is sent with `ctx.send` and so leaves only
//! after the record is synced.

use super::{majority, Ballot, Bug};
use crate::raft::{KvCommand, KvOutput, KvStateMachine, SessionId, StateMachine};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;
use synod_core::{Actor, ClientId, Ctx, Endpoint, Instant, LogIndex, NodeId, StorageExt};

/// A position in the replicated log.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Slot(pub u64);

impl Slot {
    /// The next slot.
    pub fn next(self) -> Slot {
        Slot(self.0.saturating_add(1))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// What a slot holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Fills a gap on a leader change; applies as nothing.
    Noop,
    /// A client's command.
    Client {
        /// The client's session.
        session: SessionId,
        /// The client's sequence number within the session.
        seq: u64,
        /// The KV command.
        command: KvCommand,
    },
}

/// Messages of Multi-Paxos, between nodes and with clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MultiMsg {
    /// Client → node: run `command` (a retry reuses `seq`).
    Request {
        /// The client's session.
        session: SessionId,
        /// The sequence number.
        seq: u64,
        /// The command.
        command: KvCommand,
    },
    /// Node → client: the command was chosen and applied.
    Reply {
        /// The request's sequence number.
        seq: u64,
        /// What it returned.
        output: KvOutput,
    },
    /// Node → client: this node is not the leader; try `leader_hint`.
    NotLeader {
        /// The request's sequence number.
        seq: u64,
        /// The leader this node last heard from.
        leader_hint: Option<NodeId>,
    },
    /// Phase 1a for every slot from `from_slot` on.
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The candidate's first unchosen slot.
        from_slot: Slot,
    },
    /// Phase 1b: the promise, with every acceptance at or after `from_slot`.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// `(slot, ballot, command)` this acceptor accepted.
        accepted: Vec<(Slot, Ballot, Command)>,
    },
    /// Phase 2a.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// The slot.
        slot: Slot,
        /// The command.
        command: Command,
    },
    /// Phase 2b, to the leader.
    Accepted {
        /// The ballot.
        ballot: Ballot,
        /// The slot.
        slot: Slot,
    },
    /// Refusal: the acceptor promised `promised`, above `ballot`.
    Nack {
        /// The refused ballot.
        ballot: Ballot,
        /// What the acceptor promised.
        promised: Ballot,
    },
    /// Leader → all: still here; everything below `first_unchosen` is chosen.
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's first unchosen slot.
        first_unchosen: Slot,
    },
    /// A chosen command (from the leader, or in answer to `CatchUp`).
    Chosen {
        /// The slot.
        slot: Slot,
        /// The command chosen there.
        command: Command,
    },
    /// Follower → leader: send me the chosen commands from `from` on.
    CatchUp {
        /// The follower's first unchosen slot.
        from: Slot,
    },
}

/// Timer keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MultiTimer {
    /// Follower: check for a live leader. Candidate: phase 1 took too long, retry.
    Election,
    /// Leader: send heartbeats and resend unanswered `Accept`s.
    Heartbeat,
}

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct MultiConfig {
    /// Every node, the same list everywhere.
    pub nodes: Vec<NodeId>,
    /// A follower that hears no leader for this long starts phase 1.
    pub election_timeout: Duration,
    /// Each wait is drawn from `[election_timeout, election_timeout + spread)`, so that
    /// candidates rarely collide.
    pub election_spread: Duration,
    /// How often a leader sends heartbeats and resends unanswered accepts.
    pub heartbeat_interval: Duration,
    /// Most chosen commands sent in answer to one `CatchUp`, and most accepts resent per
    /// heartbeat.
    pub max_batch: usize,
    /// A deliberately broken variant (tests only).
    #[cfg(any(test, feature = "harness"))]
    pub bug: Option<Bug>,
}

impl MultiConfig {
    /// Defaults: 100–200 ms election timeouts, 20 ms heartbeats, batches of 64.
    pub fn new(nodes: Vec<NodeId>) -> Self {
        MultiConfig {
            nodes,
            election_timeout: Duration::from_millis(100),
            election_spread: Duration::from_millis(100),
            heartbeat_interval: Duration::from_millis(20),
            max_batch: 64,
            #[cfg(any(test, feature = "harness"))]
            bug: None,
        }
    }

    fn has_bug(&self, bug: Bug) -> bool {
        #[cfg(any(test, feature = "harness"))]
        {
            self.bug == Some(bug)
        }
        #[cfg(not(any(test, feature = "harness")))]
        {
            let _ = bug;
            false
        }
    }
}

/// The most slots a new leader fills beyond its first unchosen slot.
const MAX_SLOT_GAP: u64 = 1 << 20;

/// One durable record; the log of them is replayed on start.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Record {
    Promised(Ballot),
    Accepted(Slot, Ballot, Command),
    Chosen(Slot, Command),
}

/// What a node is doing as proposer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Following whoever leads.
    Follower,
    /// Running phase 1.
    Candidate,
    /// Phase 1 done: proposing with phase 2 only.
    Leader,
}

/// A proposal of the leader waiting for a majority.
#[derive(Clone, Debug)]
struct Proposal {
    command: Command,
    voters: BTreeSet<NodeId>,
}

/// Counters, for comparisons. Volatile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MultiCounters {
    /// Messages this node sent to peers (not to clients).
    pub messages_sent: u64,
    /// Times this node started phase 1.
    pub elections_started: u64,
    /// Times this node became leader.
    pub leaderships: u64,
}

/// A Multi-Paxos node.
pub struct MultiPaxos {
    config: MultiConfig,
    // Acceptor.
    promised: Ballot,
    accepted: BTreeMap<Slot, (Ballot, Command)>,
    // Learner.
    chosen: BTreeMap<Slot, Command>,
    /// Every slot below this is chosen and applied.
    applied: Slot,
    kv: KvStateMachine,
    sessions: BTreeMap<SessionId, (u64, KvOutput)>,
    // Proposer.
    role: Role,
    ballot: Ballot,
    highest_round_seen: u64,
    promises: BTreeMap<NodeId, Vec<(Slot, Ballot, Command)>>,
    proposals: BTreeMap<Slot, Proposal>,
    next_slot: Slot,
    leader_hint: Option<NodeId>,
    last_heard_leader: Instant,
    /// Client requests this node proposed, to answer once their slot applies.
    pending: BTreeMap<Slot, (ClientId, SessionId, u64)>,
    fault: Option<String>,
    counters: MultiCounters,
}

type MultiCtx<'a> = Ctx<'a, MultiMsg, MultiTimer>;

impl MultiPaxos {
    /// A node with `config`; its durable state is replayed in `on_start`.
    pub fn new(config: MultiConfig) -> Self {
        MultiPaxos {
            config,
            promised: Ballot::ZERO,
            accepted: BTreeMap::new(),
            chosen: BTreeMap::new(),
            applied: Slot(0),
            kv: KvStateMachine::default(),
            sessions: BTreeMap::new(),
            role: Role::Follower,
            ballot: Ballot::ZERO,
            highest_round_seen: 0,
            promises: BTreeMap::new(),
            proposals: BTreeMap::new(),
            next_slot: Slot(0),
            leader_hint: None,
            last_heard_leader: Instant::ZERO,
            pending: BTreeMap::new(),
            fault: None,
            counters: MultiCounters::default(),
        }
    }

    /// The proposer's role.
    pub fn role(&self) -> Role {
        self.role.clone()
    }

    /// The ballot this node leads (or tries to lead) with.
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// The acceptor's promise.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// Every slot below this is chosen and applied here.
    pub fn applied(&self) -> Slot {
        self.applied
    }

    /// The next slot the leader would use.
    pub fn next_slot(&self) -> Slot {
        self.next_slot
    }

    /// The command this node knows was chosen in `slot`.
    pub fn chosen_at(&self, slot: Slot) -> Option<&Command> {
        self.chosen.get(&slot)
    }

    /// The acceptor's accepted ballot and command in `slot`.
    pub fn accepted_at(&self, slot: Slot) -> Option<&(Ballot, Command)> {
        self.accepted.get(&slot)
    }

    /// The highest slot this acceptor accepted anything in.
    pub fn highest_accepted(&self) -> Option<Slot> {
        self.accepted.keys().next_back().copied()
    }

    /// The replicated state machine.
    pub fn kv(&self) -> &KvStateMachine {
        &self.kv
    }

    /// Why the node stopped, if its storage was unreadable.
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// This node's counters.
    pub fn counters(&self) -> MultiCounters {
        self.counters
    }

    fn send(&mut self, ctx: &mut MultiCtx<'_>, to: NodeId, msg: MultiMsg) {
        self.counters.messages_sent += 1;
        ctx.send(to, msg);
    }

    fn peers(&self, me: NodeId) -> Vec<NodeId> {
        self.config
            .nodes
            .iter()
            .copied()
            .filter(|n| *n != me)
            .collect()
    }

    fn broadcast(&mut self, ctx: &mut MultiCtx<'_>, msg: MultiMsg) {
        for to in self.peers(ctx.me()) {
            self.send(ctx, to, msg.clone());
        }
    }

    /// An acceptor's reply that reports durable state: held until the record is synced,
    /// unless the broken variant is on.
    fn reply_from_acceptor(&mut self, ctx: &mut MultiCtx<'_>, to: NodeId, msg: MultiMsg) {
        self.counters.messages_sent += 1;
        if self.config.has_bug(Bug::ReplyBeforePersist) {
            ctx.send_unsynced(to, msg);
        } else {
            ctx.send(to, msg);
        }
    }

    fn arm_election(&mut self, ctx: &mut MultiCtx<'_>) {
        let base = self.config.election_timeout;
        let spread = self.config.election_spread;
        let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX).max(1);
        let wait = base + Duration::from_nanos(ctx.rng().gen_range(0..nanos));
        ctx.set_timer(MultiTimer::Election, wait);
    }

    fn promise(&mut self, ctx: &mut MultiCtx<'_>, ballot: Ballot) {
        if ballot > self.promised {
            self.promised = ballot;
            ctx.storage().append_value(&Record::Promised(ballot));
        }
        self.highest_round_seen = self.highest_round_seen.max(ballot.round);
    }

    /// Someone with a higher ballot is about: stop proposing.
    fn step_down(&mut self, ctx: &mut MultiCtx<'_>, higher: Ballot) {
        self.highest_round_seen = self.highest_round_seen.max(higher.round);
        if self.role != Role::Follower && higher > self.ballot {
            self.role = Role::Follower;
            self.proposals.clear();
            self.promises.clear();
            ctx.cancel_timer(MultiTimer::Heartbeat);
            self.last_heard_leader = ctx.now();
            self.arm_election(ctx);
        }
    }

    fn first_unchosen(&self) -> Slot {
        self.applied
    }

    fn learn(&mut self, ctx: &mut MultiCtx<'_>, slot: Slot, command: Command) {
        if slot < self.applied || self.chosen.contains_key(&slot) {
            return;
        }
        ctx.storage()
            .append_value(&Record::Chosen(slot, command.clone()));
        self.chosen.insert(slot, command);
        self.apply_chosen(ctx);
    }

    /// Apply the chosen prefix in slot order; answer clients whose command applied.
    fn apply_chosen(&mut self, ctx: &mut MultiCtx<'_>) {
        while let Some(command) = self.chosen.get(&self.applied).cloned() {
            let slot = self.applied;
            self.applied = slot.next();
            let Command::Client {
                session,
                seq,
                command,
            } = command
            else {
                continue;
            };
            let output = match self.sessions.get(&session) {
                Some((last, output)) if *last == seq => Some(output.clone()),
                // An older command of the session, retried into a later slot: its
                // client has moved on, so it takes no effect.
                Some((last, _)) if *last > seq => None,
                _ => {
                    let output = self.kv.apply(LogIndex(slot.0.saturating_add(1)), &command);
                    self.sessions.insert(session, (seq, output.clone()));
                    Some(output)
                }
            };
            if let Some((client, s, q)) = self.pending.remove(&slot) {
                if let (true, Some(output)) = (s == session && q == seq, output) {
                    ctx.reply(client, MultiMsg::Reply { seq, output });
                }
            }
        }
        // Requests proposed in slots that are now applied with another command: their
        // clients time out and retry.
        let applied = self.applied;
        self.pending.retain(|slot, _| *slot >= applied);
    }

    fn start_phase1(&mut self, ctx: &mut MultiCtx<'_>) {
        let round = self
            .highest_round_seen
            .max(self.promised.round)
            .saturating_add(1);
        let ballot = Ballot {
            round,
            node: ctx.me(),
        };
        // Promise to ourselves first and durably: a restarted node then never reuses a
        // ballot, and the Prepare below leaves only after the record is synced.
        self.promise(ctx, ballot);
        self.ballot = ballot;
        self.role = Role::Candidate;
        self.counters.elections_started += 1;
        self.proposals.clear();
        self.promises.clear();
        let from_slot = self.first_unchosen();
        let own = self.accepted_from(from_slot);
        self.promises.insert(ctx.me(), own);
        self.broadcast(ctx, MultiMsg::Prepare { ballot, from_slot });
        self.arm_election(ctx);
        self.maybe_become_leader(ctx);
    }

    fn accepted_from(&self, from: Slot) -> Vec<(Slot, Ballot, Command)> {
        self.accepted
            .range(from..)
            .map(|(s, (b, c))| (*s, *b, c.clone()))
            .collect()
    }

    fn maybe_become_leader(&mut self, ctx: &mut MultiCtx<'_>) {
        if self.role != Role::Candidate || self.promises.len() < majority(self.config.nodes.len()) {
            return;
        }
        // For each slot, the value of the highest ballot any promise reported (P2c).
        let mut highest: BTreeMap<Slot, (Ballot, Command)> = BTreeMap::new();
        for (slot, ballot, command) in self.promises.values().flatten() {
            match highest.get(slot) {
                Some((b, _)) if *b >= *ballot => {}
                _ => {
                    highest.insert(*slot, (*ballot, command.clone()));
                }
            }
        }
        self.promises.clear();
        self.role = Role::Leader;
        self.counters.leaderships += 1;
        self.leader_hint = Some(ctx.me());
        let start = self.first_unchosen();
        // A slot far beyond anything this group could have used is corrupt input; filling
        // the gap up to it would never end.
        highest.retain(|slot, _| slot.0 <= start.0.saturating_add(MAX_SLOT_GAP));
        let end = highest
            .keys()
            .next_back()
            .map_or(start, |s| s.next())
            .max(start);
        self.next_slot = end;
        let ignore = self.config.has_bug(Bug::IgnoreAcceptedValues);
        let mut slot = start;
        while slot < end {
            if let Some(command) = self.chosen.get(&slot).cloned() {
                // Already chosen: tell the others rather than propose it again.
                self.broadcast(ctx, MultiMsg::Chosen { slot, command });
            } else {
                let command = match highest.remove(&slot) {
                    Some((_, command)) if !ignore => command,
                    // A gap no acceptor of the quorum knows anything about (§3).
                    _ => Command::Noop,
                };
                self.propose(ctx, slot, command);
            }
            slot = slot.next();
        }
        self.send_heartbeat(ctx);
        let interval = self.config.heartbeat_interval;
        ctx.set_timer(MultiTimer::Heartbeat, interval);
    }

    fn propose(&mut self, ctx: &mut MultiCtx<'_>, slot: Slot, command: Command) {
        let ballot = self.ballot;
        // The leader is an acceptor too. It writes its acceptance and replicates while
        // the write is in flight (as a Raft leader does, Raft thesis §10.2.1): an
        // `Accept` claims nothing about the leader's disk, and its ballot's promise was
        // durable before the `Prepare` left. The leader's own vote counts only once the
        // write is durable: it arrives through the loopback `Accept`, which the driver
        // holds until the sync.
        self.accept_locally(ctx, ballot, slot, command.clone());
        self.proposals.insert(
            slot,
            Proposal {
                command: command.clone(),
                voters: BTreeSet::new(),
            },
        );
        let accept = MultiMsg::Accept {
            ballot,
            slot,
            command,
        };
        for to in self.peers(ctx.me()) {
            self.counters.messages_sent += 1;
            ctx.send_unsynced(to, accept.clone());
        }
        let me = ctx.me();
        self.send(ctx, me, accept);
    }

    fn accept_locally(
        &mut self,
        ctx: &mut MultiCtx<'_>,
        ballot: Ballot,
        slot: Slot,
        command: Command,
    ) {
        self.promise(ctx, ballot);
        ctx.storage()
            .append_value(&Record::Accepted(slot, ballot, command.clone()));
        self.accepted.insert(slot, (ballot, command));
    }

    fn maybe_chosen(&mut self, ctx: &mut MultiCtx<'_>, slot: Slot) {
        let quorum = majority(self.config.nodes.len());
        let Some(p) = self.proposals.get(&slot) else {
            return;
        };
        if p.voters.len() < quorum {
            return;
        }
        let command = p.command.clone();
        self.proposals.remove(&slot);
        self.broadcast(
            ctx,
            MultiMsg::Chosen {
                slot,
                command: command.clone(),
            },
        );
        self.learn(ctx, slot, command);
    }

    fn send_heartbeat(&mut self, ctx: &mut MultiCtx<'_>) {
        let ballot = self.ballot;
        let first_unchosen = self.first_unchosen();
        self.broadcast(
            ctx,
            MultiMsg::Heartbeat {
                ballot,
                first_unchosen,
            },
        );
    }

    /// Resend accepts that a lost message may be holding up.
    fn resend_accepts(&mut self, ctx: &mut MultiCtx<'_>) {
        let ballot = self.ballot;
        let stuck: Vec<(Slot, Proposal)> = self
            .proposals
            .iter()
            .take(self.config.max_batch)
            .map(|(s, p)| (*s, p.clone()))
            .collect();
        for (slot, p) in stuck {
            for to in self.peers(ctx.me()) {
                if !p.voters.contains(&to) {
                    let command = p.command.clone();
                    self.send(
                        ctx,
                        to,
                        MultiMsg::Accept {
                            ballot,
                            slot,
                            command,
                        },
                    );
                }
            }
        }
    }

    fn on_request(
        &mut self,
        ctx: &mut MultiCtx<'_>,
        client: ClientId,
        session: SessionId,
        seq: u64,
        command: KvCommand,
    ) {
        if self.role != Role::Leader {
            let leader_hint = self.leader_hint.filter(|l| *l != ctx.me());
            return ctx.reply(client, MultiMsg::NotLeader { seq, leader_hint });
        }
        match self.sessions.get(&session) {
            Some((last, output)) if *last == seq => {
                let output = output.clone();
                return ctx.reply(client, MultiMsg::Reply { seq, output });
            }
            Some((last, _)) if *last > seq => return,
            _ => {}
        }
        // A retry of a request still waiting for its slot: answer from that slot.
        if let Some((_, p)) = self
            .pending
            .iter_mut()
            .find(|(_, p)| p.1 == session && p.2 == seq)
        {
            p.0 = client;
            return;
        }
        let slot = self.next_slot;
        self.next_slot = slot.next();
        self.pending.insert(slot, (client, session, seq));
        let command = Command::Client {
            session,
            seq,
            command,
        };
        self.propose(ctx, slot, command);
    }

    fn on_prepare(
        &mut self,
        ctx: &mut MultiCtx<'_>,
        from: NodeId,
        ballot: Ballot,
        from_slot: Slot,
    ) {
        if ballot <= self.promised {
            let promised = self.promised;
            return self.send(ctx, from, MultiMsg::Nack { ballot, promised });
        }
        self.promise(ctx, ballot);
        self.step_down(ctx, ballot);
        // A candidate with a higher ballot is about: give it time before competing.
        self.last_heard_leader = ctx.now();
        let accepted = self.accepted_from(from_slot);
        self.reply_from_acceptor(ctx, from, MultiMsg::Promise { ballot, accepted });
    }

    /// A message from the leader of `ballot`: nack it if this acceptor has promised a
    /// higher ballot, else follow that leader. Returns whether the message may proceed.
    fn follow(&mut self, ctx: &mut MultiCtx<'_>, from: NodeId, ballot: Ballot) -> bool {
        if ballot < self.promised {
            let promised = self.promised;
            self.send(ctx, from, MultiMsg::Nack { ballot, promised });
            return false;
        }
        self.step_down(ctx, ballot);
        self.leader_hint = Some(ballot.node);
        self.last_heard_leader = ctx.now();
        true
    }

    fn on_accept(
        &mut self,
        ctx: &mut MultiCtx<'_>,
        from: NodeId,
        ballot: Ballot,
        slot: Slot,
        command: Command,
    ) {
        if !self.follow(ctx, from, ballot) {
            return;
        }
        if self.accepted.get(&slot).map(|(b, _)| *b) != Some(ballot) {
            self.accept_locally(ctx, ballot, slot, command);
        }
        self.reply_from_acceptor(ctx, from, MultiMsg::Accepted { ballot, slot });
    }

    fn on_accepted(&mut self, ctx: &mut MultiCtx<'_>, from: NodeId, ballot: Ballot, slot: Slot) {
        if self.role != Role::Leader || ballot != self.ballot {
            return;
        }
        if let Some(p) = self.proposals.get_mut(&slot) {
            p.voters.insert(from);
        }
        self.maybe_chosen(ctx, slot);
    }

    fn on_heartbeat(
        &mut self,
        ctx: &mut MultiCtx<'_>,
        from: NodeId,
        ballot: Ballot,
        first_unchosen: Slot,
    ) {
        if !self.follow(ctx, from, ballot) {
            return;
        }
        if self.first_unchosen() < first_unchosen {
            let from_slot = self.first_unchosen();
            self.send(ctx, from, MultiMsg::CatchUp { from: from_slot });
        }
    }

    fn on_catch_up(&mut self, ctx: &mut MultiCtx<'_>, to: NodeId, from: Slot) {
        let batch: Vec<(Slot, Command)> = self
            .chosen
            .range(from..)
            .take(self.config.max_batch)
            .map(|(s, c)| (*s, c.clone()))
            .collect();
        for (slot, command) in batch {
            self.send(ctx, to, MultiMsg::Chosen { slot, command });
        }
    }

    fn replay(&mut self, ctx: &mut MultiCtx<'_>) -> Result<(), String> {
        let (first, next) = ctx.storage().log_bounds();
        let mut index = first;
        while index < next {
            let record: Option<Record> = ctx
                .storage()
                .read_value(index)
                .map_err(|e| format!("record {index}: {e}"))?;
            match record {
                Some(Record::Promised(b)) => self.promised = self.promised.max(b),
                Some(Record::Accepted(slot, b, command)) => {
                    self.promised = self.promised.max(b);
                    self.accepted.insert(slot, (b, command));
                }
                Some(Record::Chosen(slot, command)) => {
                    self.chosen.insert(slot, command);
                }
                None => return Err(format!("record {index} is missing")),
            }
            index = index.next();
        }
        Ok(())
    }
}

impl Actor for MultiPaxos {
    type Msg = MultiMsg;
    type Timer = MultiTimer;

    fn on_start(&mut self, ctx: &mut MultiCtx<'_>) {
        if let Err(e) = self.replay(ctx) {
            self.fault = Some(format!("unreadable Multi-Paxos log: {e}"));
            return;
        }
        self.highest_round_seen = self.promised.round;
        self.apply_chosen(ctx);
        self.last_heard_leader = ctx.now();
        self.arm_election(ctx);
    }

    fn on_message(&mut self, ctx: &mut MultiCtx<'_>, from: Endpoint, msg: MultiMsg) {
        if self.fault.is_some() {
            return;
        }
        let from = match from {
            Endpoint::Client(client) => {
                if let MultiMsg::Request {
                    session,
                    seq,
                    command,
                } = msg
                {
                    self.on_request(ctx, client, session, seq, command);
                }
                return;
            }
            Endpoint::Node(node) => node,
        };
        match msg {
            MultiMsg::Prepare { ballot, from_slot } => {
                self.on_prepare(ctx, from, ballot, from_slot)
            }
            MultiMsg::Promise { ballot, accepted } => {
                if self.role == Role::Candidate && ballot == self.ballot {
                    self.promises.insert(from, accepted);
                    self.maybe_become_leader(ctx);
                }
            }
            MultiMsg::Accept {
                ballot,
                slot,
                command,
            } => self.on_accept(ctx, from, ballot, slot, command),
            MultiMsg::Accepted { ballot, slot } => self.on_accepted(ctx, from, ballot, slot),
            MultiMsg::Nack { ballot, promised } => {
                if ballot == self.ballot && promised > ballot {
                    self.step_down(ctx, promised);
                }
            }
            MultiMsg::Heartbeat {
                ballot,
                first_unchosen,
            } => self.on_heartbeat(ctx, from, ballot, first_unchosen),
            MultiMsg::Chosen { slot, command } => self.learn(ctx, slot, command),
            MultiMsg::CatchUp { from: slot } => self.on_catch_up(ctx, from, slot),
            // Client-bound messages from a node mean nothing here.
            MultiMsg::Request { .. } | MultiMsg::Reply { .. } | MultiMsg::NotLeader { .. } => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut MultiCtx<'_>, timer: MultiTimer) {
        if self.fault.is_some() {
            return;
        }
        match timer {
            MultiTimer::Election => match self.role {
                Role::Leader => {}
                Role::Candidate => self.start_phase1(ctx),
                Role::Follower => {
                    let quiet = ctx.now().saturating_duration_since(self.last_heard_leader);
                    if quiet >= self.config.election_timeout {
                        self.start_phase1(ctx);
                    } else {
                        self.arm_election(ctx);
                    }
                }
            },
            MultiTimer::Heartbeat => {
                if self.role == Role::Leader {
                    self.send_heartbeat(ctx);
                    self.resend_accepts(ctx);
                    let interval = self.config.heartbeat_interval;
                    ctx.set_timer(MultiTimer::Heartbeat, interval);
                }
            }
        }
    }
}
