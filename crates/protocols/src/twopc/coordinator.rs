//! The coordinator: collects votes, forces the decision, drives phase 2 to its end.
//!
//! Inputs: `Begin` from clients; `Vote`, `Ack` and `DecisionRequest` from participants;
//! the `VoteTimeout` and `Resend` timers. Effects: `Prepare` and `Decide` to participants,
//! `Outcome` or `Rejected` to clients, and `Decided`/`End` records in its log.

use super::msg::{CoordinatorRecord, Decision, TwoPcMsg, TwoPcTimer, TxnId};
use super::{log_counted, send_counted, Bug, CostBook, TwoPcConfig};
use std::collections::{BTreeMap, BTreeSet};
use synod_core::{ClientId, Ctx, Endpoint, LogIndex, NodeId, StorageExt};

type Context<'a> = Ctx<'a, TwoPcMsg, TwoPcTimer>;

const EPOCH_KEY: &[u8] = b"epoch";

/// The largest number of participants one transaction may span.
pub const MAX_PARTICIPANTS: usize = 1024;

#[derive(Debug)]
enum Phase {
    /// Phase 1: votes so far.
    Collecting {
        yes: BTreeSet<NodeId>,
        no: BTreeSet<NodeId>,
    },
    /// Phase 2: the decision is durable (or, under presumed abort, made) and these
    /// participants still owe an acknowledgement.
    Completing {
        decision: Decision,
        waiting: BTreeSet<NodeId>,
    },
}

#[derive(Debug)]
struct ActiveTxn {
    participants: Vec<NodeId>,
    refuse: BTreeSet<NodeId>,
    client: Option<(ClientId, u64)>,
    phase: Phase,
}

/// The two-phase-commit coordinator (R* §2–§3). See the module docs.
#[derive(Debug)]
pub struct Coordinator {
    config: TwoPcConfig,
    epoch: u64,
    next_seq: u64,
    active: BTreeMap<TxnId, ActiveTxn>,
    /// Decisions found in the log (commits; in 2P also aborts), with their participants.
    logged: BTreeMap<TxnId, (Decision, Vec<NodeId>)>,
    ended: BTreeSet<TxnId>,
    /// Client requests of this epoch, so that a duplicated `Begin` is not run twice.
    requests: BTreeMap<(ClientId, u64), TxnId>,
    /// Decisions of this epoch that clients may ask about again (volatile).
    outcomes: BTreeMap<TxnId, Decision>,
    broken: Option<String>,
    costs: CostBook,
}

impl Coordinator {
    /// A coordinator under `config`.
    pub fn new(config: TwoPcConfig) -> Self {
        Coordinator {
            config,
            epoch: 0,
            next_seq: 0,
            active: BTreeMap::new(),
            logged: BTreeMap::new(),
            ended: BTreeSet::new(),
            requests: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            broken: None,
            costs: CostBook::new(),
        }
    }

    /// The current epoch (incremented durably at every start).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Transactions not finished yet: collecting votes, or waiting for acknowledgements.
    pub fn open_transactions(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.active.keys().copied()
    }

    /// Whether `txn` is collecting votes right now.
    pub fn is_collecting(&self, txn: TxnId) -> bool {
        matches!(
            self.active.get(&txn).map(|t| &t.phase),
            Some(Phase::Collecting { .. })
        )
    }

    /// The YES votes received so far for a transaction in phase 1.
    pub fn yes_votes(&self, txn: TxnId) -> usize {
        match self.active.get(&txn).map(|t| &t.phase) {
            Some(Phase::Collecting { yes, .. }) => yes.len(),
            _ => 0,
        }
    }

    /// The decision this coordinator has made for `txn` and still knows: from its log, or
    /// made in this incarnation. `None` means "no information", which presumed abort
    /// reads as abort.
    pub fn decision(&self, txn: TxnId) -> Option<Decision> {
        self.logged
            .get(&txn)
            .map(|(d, _)| *d)
            .or_else(|| self.outcomes.get(&txn).copied())
    }

    /// Every commit decision in the log, with the transaction's participants.
    pub fn logged_commits(&self) -> impl Iterator<Item = (TxnId, &[NodeId])> + '_ {
        self.logged
            .iter()
            .filter(|(_, (d, _))| *d == Decision::Commit)
            .map(|(t, (_, p))| (*t, p.as_slice()))
    }

    /// Why the coordinator stopped, if its log could not be read.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Per-transaction costs since this incarnation started.
    pub fn costs(&self) -> &CostBook {
        &self.costs
    }

    fn send(&mut self, ctx: &mut Context<'_>, txn: TxnId, to: NodeId, msg: TwoPcMsg) {
        send_counted(&mut self.costs, ctx, txn, to, msg);
    }

    fn log(&mut self, ctx: &mut Context<'_>, txn: TxnId, record: &CoordinatorRecord, forced: bool) {
        log_counted(&mut self.costs, ctx, txn, record, forced);
    }

    pub(crate) fn on_start(&mut self, ctx: &mut Context<'_>) {
        if let Err(e) = self.recover(ctx) {
            // A log that does not decode must not be guessed at: stop taking part.
            self.broken = Some(e);
            return;
        }
        // Phase 2 of every decided transaction without an End record starts again.
        let pending: Vec<(TxnId, Decision, Vec<NodeId>)> = self
            .logged
            .iter()
            .filter(|(t, _)| !self.ended.contains(t))
            .map(|(t, (d, p))| (*t, *d, p.clone()))
            .collect();
        for (txn, decision, participants) in pending {
            self.active.insert(
                txn,
                ActiveTxn {
                    participants: participants.clone(),
                    refuse: BTreeSet::new(),
                    client: None,
                    phase: Phase::Completing {
                        decision,
                        waiting: participants.iter().copied().collect(),
                    },
                },
            );
            for p in participants {
                self.send(ctx, txn, p, TwoPcMsg::Decide { txn, decision });
            }
            ctx.set_timer(TwoPcTimer::Resend(txn), self.config.retry_interval);
        }
    }

    fn recover(&mut self, ctx: &mut Context<'_>) -> Result<(), String> {
        let previous: u64 = ctx
            .storage()
            .get_value(EPOCH_KEY)
            .map_err(|e| format!("epoch does not decode: {e}"))?
            .unwrap_or(0);
        self.epoch = previous + 1;
        // Durable before any Prepare of this epoch leaves (group commit holds the sends).
        ctx.storage().put_value(EPOCH_KEY, &self.epoch);
        let (first, end) = ctx.storage().log_bounds();
        let mut index = first;
        while index < end {
            let record: Option<CoordinatorRecord> = ctx
                .storage()
                .read_value(index)
                .map_err(|e| format!("log record {index} does not decode: {e}"))?;
            match record {
                Some(CoordinatorRecord::Decided {
                    txn,
                    decision,
                    participants,
                }) => {
                    self.logged.insert(txn, (decision, participants));
                }
                Some(CoordinatorRecord::End { txn }) => {
                    self.ended.insert(txn);
                }
                None => {}
            }
            index = LogIndex(index.0 + 1);
        }
        Ok(())
    }

    pub(crate) fn on_message(&mut self, ctx: &mut Context<'_>, from: Endpoint, msg: TwoPcMsg) {
        if self.broken.is_some() {
            return;
        }
        match (from, msg) {
            (
                Endpoint::Client(client),
                TwoPcMsg::Begin {
                    request,
                    participants,
                    refuse,
                },
            ) => self.begin(ctx, client, request, participants, refuse),
            (Endpoint::Node(p), TwoPcMsg::Vote { txn, yes }) => self.on_vote(ctx, p, txn, yes),
            (Endpoint::Node(p), TwoPcMsg::Ack { txn }) => self.on_ack(ctx, p, txn),
            (Endpoint::Node(p), TwoPcMsg::DecisionRequest { txn }) => {
                self.answer_inquiry(ctx, p, txn)
            }
            _ => {}
        }
    }

    pub(crate) fn on_timer(&mut self, ctx: &mut Context<'_>, timer: TwoPcTimer) {
        if self.broken.is_some() {
            return;
        }
        match timer {
            TwoPcTimer::VoteTimeout(txn) => {
                if self.is_collecting(txn) {
                    self.decide(ctx, txn, Decision::Abort);
                }
            }
            TwoPcTimer::Resend(txn) => self.resend(ctx, txn),
            TwoPcTimer::InDoubt(_) => {}
        }
    }

    fn begin(
        &mut self,
        ctx: &mut Context<'_>,
        client: ClientId,
        request: u64,
        participants: Vec<NodeId>,
        refuse: Vec<NodeId>,
    ) {
        if let Some(&txn) = self.requests.get(&(client, request)) {
            // A duplicate: answer it if the outcome is known, otherwise it will be.
            if let Some(decision) = self.decision(txn) {
                ctx.reply(
                    client,
                    TwoPcMsg::Outcome {
                        request,
                        txn,
                        decision,
                    },
                );
            }
            return;
        }
        if let Err(reason) = self.validate(&participants, &refuse) {
            ctx.reply(client, TwoPcMsg::Rejected { request, reason });
            return;
        }
        self.next_seq += 1;
        let txn = TxnId {
            epoch: self.epoch,
            seq: self.next_seq,
        };
        self.requests.insert((client, request), txn);
        let refuse: BTreeSet<NodeId> = refuse.into_iter().collect();
        for &p in &participants {
            let msg = TwoPcMsg::Prepare {
                txn,
                participants: participants.clone(),
                refuse: refuse.contains(&p),
            };
            self.send(ctx, txn, p, msg);
        }
        self.active.insert(
            txn,
            ActiveTxn {
                participants,
                refuse,
                client: Some((client, request)),
                phase: Phase::Collecting {
                    yes: BTreeSet::new(),
                    no: BTreeSet::new(),
                },
            },
        );
        ctx.set_timer(TwoPcTimer::VoteTimeout(txn), self.config.vote_timeout);
        ctx.set_timer(TwoPcTimer::Resend(txn), self.config.retry_interval);
    }

    fn validate(&self, participants: &[NodeId], refuse: &[NodeId]) -> Result<(), String> {
        if participants.is_empty() {
            return Err("a transaction needs at least one participant".into());
        }
        if participants.len() > MAX_PARTICIPANTS {
            return Err(format!(
                "{} participants, more than the limit of {MAX_PARTICIPANTS}",
                participants.len()
            ));
        }
        let distinct: BTreeSet<&NodeId> = participants.iter().collect();
        if distinct.len() != participants.len() {
            return Err("a participant is listed twice".into());
        }
        if let Some(p) = participants
            .iter()
            .find(|p| !self.config.participants.contains(p))
        {
            return Err(format!("{p} is not a participant of this cluster"));
        }
        if let Some(p) = refuse.iter().find(|p| !distinct.contains(p)) {
            return Err(format!("{p} refuses but is not among the participants"));
        }
        Ok(())
    }

    fn on_vote(&mut self, ctx: &mut Context<'_>, from: NodeId, txn: TxnId, yes: bool) {
        let Some(t) = self.active.get_mut(&txn) else {
            // A late vote for a transaction already decided: the voter has been sent the
            // decision, or will ask for it.
            return;
        };
        if !t.participants.contains(&from) {
            return;
        }
        let Phase::Collecting { yes: ayes, no } = &mut t.phase else {
            return;
        };
        if yes {
            ayes.insert(from);
            if ayes.len() == t.participants.len() {
                self.decide(ctx, txn, Decision::Commit);
            }
        } else {
            no.insert(from);
            self.decide(ctx, txn, Decision::Abort);
        }
    }

    fn decide(&mut self, ctx: &mut Context<'_>, txn: TxnId, decision: Decision) {
        let Some(t) = self.active.get(&txn) else {
            return;
        };
        let no_voters = match &t.phase {
            Phase::Collecting { no, .. } => no.clone(),
            Phase::Completing { .. } => return,
        };
        let participants = t.participants.clone();
        let client = t.client;
        ctx.cancel_timer(TwoPcTimer::VoteTimeout(txn));
        // A NO voter aborted on its own and needs no phase 2 (R* §2).
        let targets: Vec<NodeId> = participants
            .iter()
            .copied()
            .filter(|p| !no_voters.contains(p))
            .collect();
        let presumed_abort = decision == Decision::Abort && self.config.presumed_abort;
        if !presumed_abort {
            // The decision is forced before phase 2: the sends below are held by the
            // driver until this record is durable.
            let record = CoordinatorRecord::Decided {
                txn,
                decision,
                participants: participants.clone(),
            };
            self.log(ctx, txn, &record, true);
            self.logged.insert(txn, (decision, participants.clone()));
        }
        self.outcomes.insert(txn, decision);
        let unsynced = decision == Decision::Commit
            && self.config.bug == Some(Bug::CommitBeforeForcingDecision);
        for &p in &targets {
            let msg = TwoPcMsg::Decide { txn, decision };
            if unsynced {
                self.costs.entry(txn).or_default().messages += 1;
                ctx.send_unsynced(p, msg);
            } else {
                self.send(ctx, txn, p, msg);
            }
        }
        if let Some((client, request)) = client {
            ctx.reply(
                client,
                TwoPcMsg::Outcome {
                    request,
                    txn,
                    decision,
                },
            );
        }
        if presumed_abort {
            // Presumed abort: no record, no acknowledgements; forget at once.
            self.active.remove(&txn);
            ctx.cancel_timer(TwoPcTimer::Resend(txn));
            return;
        }
        let waiting: BTreeSet<NodeId> = targets.into_iter().collect();
        if let Some(t) = self.active.get_mut(&txn) {
            t.phase = Phase::Completing { decision, waiting };
        }
        self.maybe_end(ctx, txn);
        if self.active.contains_key(&txn) {
            ctx.set_timer(TwoPcTimer::Resend(txn), self.config.retry_interval);
        }
    }

    fn on_ack(&mut self, ctx: &mut Context<'_>, from: NodeId, txn: TxnId) {
        if let Some(ActiveTxn {
            phase: Phase::Completing { waiting, .. },
            ..
        }) = self.active.get_mut(&txn)
        {
            waiting.remove(&from);
            self.maybe_end(ctx, txn);
        }
    }

    fn maybe_end(&mut self, ctx: &mut Context<'_>, txn: TxnId) {
        let done = matches!(
            self.active.get(&txn),
            Some(ActiveTxn { phase: Phase::Completing { waiting, .. }, .. }) if waiting.is_empty()
        );
        if done {
            self.active.remove(&txn);
            self.ended.insert(txn);
            ctx.cancel_timer(TwoPcTimer::Resend(txn));
            // Not forced: losing it only means phase 2 is repeated after a crash.
            self.log(ctx, txn, &CoordinatorRecord::End { txn }, false);
        }
    }

    fn answer_inquiry(&mut self, ctx: &mut Context<'_>, from: NodeId, txn: TxnId) {
        if self.is_collecting(txn) {
            // Undecided: the participant hears the decision when it is made.
            return;
        }
        // No information means abort: a commit is always logged before it is sent.
        let decision = self.decision(txn).unwrap_or(Decision::Abort);
        self.send(ctx, txn, from, TwoPcMsg::Decide { txn, decision });
    }

    fn resend(&mut self, ctx: &mut Context<'_>, txn: TxnId) {
        let Some(t) = self.active.get(&txn) else {
            return;
        };
        let mut out = Vec::new();
        match &t.phase {
            Phase::Collecting { yes, no } => {
                for &p in &t.participants {
                    if !yes.contains(&p) && !no.contains(&p) {
                        out.push((
                            p,
                            TwoPcMsg::Prepare {
                                txn,
                                participants: t.participants.clone(),
                                refuse: t.refuse.contains(&p),
                            },
                        ));
                    }
                }
            }
            Phase::Completing { decision, waiting } => {
                for &p in waiting {
                    out.push((
                        p,
                        TwoPcMsg::Decide {
                            txn,
                            decision: *decision,
                        },
                    ));
                }
            }
        }
        for (p, msg) in out {
            self.send(ctx, txn, p, msg);
        }
        ctx.set_timer(TwoPcTimer::Resend(txn), self.config.retry_interval);
    }
}
