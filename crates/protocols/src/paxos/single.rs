//! Single-decree Paxos (Paxos Made Simple §2): every node is proposer, acceptor and
//! learner, and the nodes choose one value.
//!
//! Inputs: `on_start` (also after a crash: the promise, the accepted value, the highest
//! round used and the decision come back from storage), messages from peers, and the
//! `Retry` timer. Effects: `Prepare`/`Accept` to every node, `Promise`/`Accepted`/`Nack`
//! from acceptors (held until the acceptor's state is durable), `Decided` to help
//! stragglers, and the retry timer with randomized backoff.

use super::{majority, Ballot, Bug};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use synod_core::{Actor, Ctx, Endpoint, NodeId, StorageExt};

/// A value to choose.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Value(pub u64);

/// Messages of single-decree Paxos.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaxosMsg {
    /// Phase 1a: promise to ignore ballots below `ballot`.
    Prepare {
        /// The proposer's ballot.
        ballot: Ballot,
    },
    /// Phase 1b: the promise, with the highest-ballot value this acceptor accepted.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The acceptor's accepted ballot and value, if any.
        accepted: Option<(Ballot, Value)>,
    },
    /// Phase 2a: accept `value` in `ballot`.
    Accept {
        /// The proposer's ballot.
        ballot: Ballot,
        /// The value (the highest reported one, or the proposer's own).
        value: Value,
    },
    /// Phase 2b, sent to every learner: this acceptor accepted `value` in `ballot`.
    Accepted {
        /// The ballot.
        ballot: Ballot,
        /// The value.
        value: Value,
    },
    /// The acceptor has promised a higher ballot than `ballot` (an optimisation the paper
    /// suggests in §2.4 so that proposers give up early).
    Nack {
        /// The refused ballot.
        ballot: Ballot,
        /// What the acceptor promised.
        promised: Ballot,
    },
    /// A learner asks who knows the decision.
    Query,
    /// The chosen value, from a node that learned it.
    Decided {
        /// The chosen value.
        value: Value,
    },
}

/// Timer keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PaxosTimer {
    /// Start a new round (proposer) or ask for the decision (learner).
    Retry,
}

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct PaxosConfig {
    /// Every node, the same list everywhere.
    pub nodes: Vec<NodeId>,
    /// What this node proposes; `None`: it only learns.
    pub proposal: Option<Value>,
    /// How long a round may take before the proposer starts a new one.
    pub round_timeout: Duration,
    /// The base of the randomized backoff: a retry waits a uniform time in
    /// `[0, backoff · 2^min(attempts, 5))`.
    pub backoff: Duration,
    /// A node that has never started a round waits this long after starting before it
    /// proposes (the simulations use it to make proposers contend in the middle of the
    /// faults rather than before the first one).
    pub start_delay: Duration,
    /// A deliberately broken variant (tests only).
    #[cfg(any(test, feature = "harness"))]
    pub bug: Option<Bug>,
}

impl PaxosConfig {
    /// Defaults: 50 ms rounds, 10 ms backoff base, no start delay.
    pub fn new(nodes: Vec<NodeId>, proposal: Option<Value>) -> Self {
        PaxosConfig {
            nodes,
            proposal,
            start_delay: Duration::ZERO,
            round_timeout: Duration::from_millis(50),
            backoff: Duration::from_millis(10),
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

/// The acceptor's durable state (§2.3: "an acceptor must remember this information even
/// if it fails and then restarts").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AcceptorState {
    promised: Ballot,
    accepted: Option<(Ballot, Value)>,
}

const ACCEPTOR_KEY: &[u8] = b"acceptor";
const ROUND_KEY: &[u8] = b"round";
const DECIDED_KEY: &[u8] = b"decided";

/// Where the proposer is.
#[derive(Clone, Debug)]
enum Phase {
    Idle,
    Preparing {
        ballot: Ballot,
        promises: BTreeMap<NodeId, Option<(Ballot, Value)>>,
    },
    Accepting {
        ballot: Ballot,
    },
}

/// Counters, for comparisons. Volatile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PaxosCounters {
    /// Messages this node sent.
    pub messages_sent: u64,
    /// Rounds this node started as proposer.
    pub rounds_started: u64,
}

/// A single-decree Paxos node.
pub struct Paxos {
    config: PaxosConfig,
    acceptor: AcceptorState,
    /// The highest round this node has used as proposer; durable so that a restarted
    /// proposer never reuses a ballot with a different value.
    round: u64,
    /// The highest round seen in any ballot from anyone.
    highest_round_seen: u64,
    phase: Phase,
    attempts: u32,
    /// Learner: who accepted what in each ballot.
    votes: BTreeMap<Ballot, (Value, BTreeSet<NodeId>)>,
    decided: Option<Value>,
    /// Storage held something that did not decode: the node refuses to take part.
    fault: Option<String>,
    counters: PaxosCounters,
}

type PaxosCtx<'a> = Ctx<'a, PaxosMsg, PaxosTimer>;

impl Paxos {
    /// A node with `config`; its durable state is loaded in `on_start`.
    pub fn new(config: PaxosConfig) -> Self {
        Paxos {
            config,
            acceptor: AcceptorState::default(),
            round: 0,
            highest_round_seen: 0,
            phase: Phase::Idle,
            attempts: 0,
            votes: BTreeMap::new(),
            decided: None,
            fault: None,
            counters: PaxosCounters::default(),
        }
    }

    /// The value this node learned was chosen.
    pub fn decided(&self) -> Option<Value> {
        self.decided
    }

    /// The acceptor's promise.
    pub fn promised(&self) -> Ballot {
        self.acceptor.promised
    }

    /// The acceptor's accepted ballot and value.
    pub fn accepted(&self) -> Option<(Ballot, Value)> {
        self.acceptor.accepted
    }

    /// What this node proposes.
    pub fn proposal(&self) -> Option<Value> {
        self.config.proposal
    }

    /// Why the node stopped, if its storage was unreadable.
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// This node's counters.
    pub fn counters(&self) -> PaxosCounters {
        self.counters
    }

    fn send(&mut self, ctx: &mut PaxosCtx<'_>, to: NodeId, msg: PaxosMsg) {
        self.counters.messages_sent += 1;
        ctx.send(to, msg);
    }

    fn broadcast(&mut self, ctx: &mut PaxosCtx<'_>, msg: PaxosMsg) {
        for to in self.config.nodes.clone() {
            self.send(ctx, to, msg.clone());
        }
    }

    /// An acceptor's reply that reports its durable state: held until that state is
    /// synced, unless the broken variant is on.
    fn reply_from_acceptor(&mut self, ctx: &mut PaxosCtx<'_>, to: NodeId, msg: PaxosMsg) {
        self.counters.messages_sent += 1;
        if self.config.has_bug(Bug::ReplyBeforePersist) {
            ctx.send_unsynced(to, msg);
        } else {
            ctx.send(to, msg);
        }
    }

    fn arm_retry(&mut self, ctx: &mut PaxosCtx<'_>, base: Duration) {
        let cap = self
            .config
            .backoff
            .saturating_mul(1 << self.attempts.min(5));
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX).max(1);
        let jitter = Duration::from_nanos(ctx.rng().gen_range(0..nanos));
        ctx.set_timer(PaxosTimer::Retry, base + jitter);
    }

    fn persist_acceptor(&mut self, ctx: &mut PaxosCtx<'_>) {
        ctx.storage().put_value(ACCEPTOR_KEY, &self.acceptor);
    }

    fn decide(&mut self, ctx: &mut PaxosCtx<'_>, value: Value) {
        if self.decided.is_some() {
            return;
        }
        self.decided = Some(value);
        ctx.storage().put_value(DECIDED_KEY, &value);
        self.phase = Phase::Idle;
        ctx.cancel_timer(PaxosTimer::Retry);
    }

    fn start_round(&mut self, ctx: &mut PaxosCtx<'_>) {
        self.round = self.round.max(self.highest_round_seen).saturating_add(1);
        // Durable before any Prepare leaves (ctx.send holds it until the sync).
        ctx.storage().put_value(ROUND_KEY, &self.round);
        let ballot = Ballot {
            round: self.round,
            node: ctx.me(),
        };
        self.counters.rounds_started += 1;
        self.attempts += 1;
        self.phase = Phase::Preparing {
            ballot,
            promises: BTreeMap::new(),
        };
        self.broadcast(ctx, PaxosMsg::Prepare { ballot });
        let timeout = self.config.round_timeout;
        self.arm_retry(ctx, timeout);
    }

    fn on_prepare(&mut self, ctx: &mut PaxosCtx<'_>, from: NodeId, ballot: Ballot) {
        if let Some(value) = self.decided {
            return self.send(ctx, from, PaxosMsg::Decided { value });
        }
        if ballot > self.acceptor.promised {
            self.acceptor.promised = ballot;
            self.persist_acceptor(ctx);
            let accepted = self.acceptor.accepted;
            self.reply_from_acceptor(ctx, from, PaxosMsg::Promise { ballot, accepted });
        } else {
            let promised = self.acceptor.promised;
            self.send(ctx, from, PaxosMsg::Nack { ballot, promised });
        }
    }

    fn on_promise(
        &mut self,
        ctx: &mut PaxosCtx<'_>,
        from: NodeId,
        ballot: Ballot,
        accepted: Option<(Ballot, Value)>,
    ) {
        let quorum = majority(self.config.nodes.len());
        let Phase::Preparing {
            ballot: current,
            promises,
        } = &mut self.phase
        else {
            return;
        };
        if *current != ballot {
            return;
        }
        promises.insert(from, accepted);
        if promises.len() < quorum {
            return;
        }
        // P2c: the value of the highest-numbered proposal among the replies, if any.
        let reported = promises.values().flatten().max_by_key(|(b, _)| *b);
        let value = match (reported, self.config.proposal) {
            (Some(&(_, v)), _) if !self.config.has_bug(Bug::IgnoreAcceptedValues) => v,
            (_, Some(own)) => own,
            (Some(&(_, v)), None) => v,
            // A learner never starts rounds, so it never gets here without a value.
            (None, None) => return,
        };
        self.phase = Phase::Accepting { ballot };
        self.broadcast(ctx, PaxosMsg::Accept { ballot, value });
    }

    fn on_accept(&mut self, ctx: &mut PaxosCtx<'_>, from: NodeId, ballot: Ballot, value: Value) {
        if ballot < self.acceptor.promised {
            let promised = self.acceptor.promised;
            return self.send(ctx, from, PaxosMsg::Nack { ballot, promised });
        }
        self.acceptor.promised = ballot;
        self.acceptor.accepted = Some((ballot, value));
        self.persist_acceptor(ctx);
        for to in self.config.nodes.clone() {
            self.reply_from_acceptor(ctx, to, PaxosMsg::Accepted { ballot, value });
        }
    }

    fn on_accepted(&mut self, ctx: &mut PaxosCtx<'_>, from: NodeId, ballot: Ballot, value: Value) {
        self.highest_round_seen = self.highest_round_seen.max(ballot.round);
        let quorum = majority(self.config.nodes.len());
        let (v, voters) = self
            .votes
            .entry(ballot)
            .or_insert_with(|| (value, BTreeSet::new()));
        // One ballot has one value: a different one would be a protocol violation the
        // agreement checker reports; count only the first.
        if *v != value {
            return;
        }
        voters.insert(from);
        if voters.len() >= quorum {
            self.decide(ctx, value);
        }
    }

    fn on_nack(&mut self, ctx: &mut PaxosCtx<'_>, ballot: Ballot, promised: Ballot) {
        self.highest_round_seen = self.highest_round_seen.max(promised.round);
        let current = match &self.phase {
            Phase::Preparing { ballot, .. } | Phase::Accepting { ballot } => *ballot,
            Phase::Idle => return,
        };
        if current == ballot && promised > ballot {
            // Preempted: give up this round and retry later with a higher one.
            self.phase = Phase::Idle;
            self.arm_retry(ctx, Duration::ZERO);
        }
    }
}

impl Actor for Paxos {
    type Msg = PaxosMsg;
    type Timer = PaxosTimer;

    fn on_start(&mut self, ctx: &mut PaxosCtx<'_>) {
        let loaded = (|| -> Result<_, synod_core::CodecError> {
            let storage = ctx.storage();
            Ok((
                storage.get_value::<AcceptorState>(ACCEPTOR_KEY)?,
                storage.get_value::<u64>(ROUND_KEY)?,
                storage.get_value::<Value>(DECIDED_KEY)?,
            ))
        })();
        match loaded {
            Ok((acceptor, round, decided)) => {
                self.acceptor = acceptor.unwrap_or_default();
                self.round = round.unwrap_or(0);
                self.highest_round_seen = self.round.max(self.acceptor.promised.round);
                self.decided = decided;
            }
            Err(e) => {
                self.fault = Some(format!("unreadable Paxos state: {e}"));
                return;
            }
        }
        if self.decided.is_none() {
            let delay = if self.round == 0 {
                self.config.start_delay
            } else {
                Duration::ZERO
            };
            self.arm_retry(ctx, delay);
        }
    }

    fn on_message(&mut self, ctx: &mut PaxosCtx<'_>, from: Endpoint, msg: PaxosMsg) {
        let Endpoint::Node(from) = from else { return };
        if self.fault.is_some() {
            return;
        }
        match msg {
            PaxosMsg::Prepare { ballot } => {
                self.highest_round_seen = self.highest_round_seen.max(ballot.round);
                self.on_prepare(ctx, from, ballot);
            }
            PaxosMsg::Promise { ballot, accepted } => self.on_promise(ctx, from, ballot, accepted),
            PaxosMsg::Accept { ballot, value } => {
                self.highest_round_seen = self.highest_round_seen.max(ballot.round);
                self.on_accept(ctx, from, ballot, value);
            }
            PaxosMsg::Accepted { ballot, value } => self.on_accepted(ctx, from, ballot, value),
            PaxosMsg::Nack { ballot, promised } => self.on_nack(ctx, ballot, promised),
            PaxosMsg::Query => {
                if let Some(value) = self.decided {
                    self.send(ctx, from, PaxosMsg::Decided { value });
                }
            }
            PaxosMsg::Decided { value } => self.decide(ctx, value),
        }
    }

    fn on_timer(&mut self, ctx: &mut PaxosCtx<'_>, timer: PaxosTimer) {
        match timer {
            PaxosTimer::Retry => {
                if self.fault.is_some() || self.decided.is_some() {
                    return;
                }
                if self.config.proposal.is_some() {
                    self.start_round(ctx);
                } else {
                    self.broadcast(ctx, PaxosMsg::Query);
                    let timeout = self.config.round_timeout;
                    self.arm_retry(ctx, timeout);
                }
            }
        }
    }
}
