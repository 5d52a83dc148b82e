//! A participant: votes, records the outcome, and when uncertain asks the coordinator and
//! its peers (cooperative termination, BHG §7.4).
//!
//! Inputs: `Prepare` and `Decide` from the coordinator; `HelpRequest` and `HelpReply`
//! from peers; the `InDoubt` timer. Effects: `Vote`, `Ack` and `DecisionRequest` to the
//! coordinator, `HelpRequest`/`HelpReply` to peers, and `Prepared`/`Decided` records in
//! its log.

use super::msg::{Decision, ParticipantRecord, PeerAnswer, TwoPcMsg, TwoPcTimer, TxnId};
use super::{log_counted, send_counted, Bug, CostBook, TwoPcConfig};
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;
use synod_core::{Ctx, Endpoint, LogIndex, NodeId, StorageExt};

type Context<'a> = Ctx<'a, TwoPcMsg, TwoPcTimer>;

/// Where a participant stands on one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParticipantState {
    /// Voted YES with its `Prepared` record forced: uncertain, may not decide alone.
    Prepared,
    /// Knows the outcome.
    Decided(Decision),
}

#[derive(Debug, Clone)]
struct Txn {
    state: ParticipantState,
    coordinator: Option<NodeId>,
    participants: Vec<NodeId>,
}

/// A two-phase-commit participant. See the module docs.
#[derive(Debug)]
pub struct Participant {
    config: TwoPcConfig,
    txns: BTreeMap<TxnId, Txn>,
    /// `Uncertain` answers received from peers (for the blocking demonstration).
    uncertain_answers: u64,
    /// Commit decisions received for transactions this participant has no record of:
    /// work that was lost. Never happens unless a prepare record was not forced.
    commits_without_prepare: u64,
    broken: Option<String>,
    costs: CostBook,
}

impl Participant {
    /// A participant under `config`.
    pub fn new(config: TwoPcConfig) -> Self {
        Participant {
            config,
            txns: BTreeMap::new(),
            uncertain_answers: 0,
            commits_without_prepare: 0,
            broken: None,
            costs: CostBook::new(),
        }
    }

    /// Where this participant stands on `txn`; `None` if it knows nothing of it.
    pub fn state(&self, txn: TxnId) -> Option<ParticipantState> {
        self.txns.get(&txn).map(|t| t.state)
    }

    /// Every transaction this participant knows, with its state.
    pub fn transactions(&self) -> impl Iterator<Item = (TxnId, ParticipantState)> + '_ {
        self.txns.iter().map(|(id, t)| (*id, t.state))
    }

    /// Transactions on which this participant is uncertain (blocked).
    pub fn uncertain(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.txns
            .iter()
            .filter(|(_, t)| t.state == ParticipantState::Prepared)
            .map(|(id, _)| *id)
    }

    /// `Uncertain` answers this incarnation received from peers.
    pub fn uncertain_answers(&self) -> u64 {
        self.uncertain_answers
    }

    /// Commit decisions that arrived for transactions without a prepare record.
    pub fn commits_without_prepare(&self) -> u64 {
        self.commits_without_prepare
    }

    /// Why the participant stopped, if its log could not be read.
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

    fn log(&mut self, ctx: &mut Context<'_>, txn: TxnId, record: &ParticipantRecord, forced: bool) {
        log_counted(&mut self.costs, ctx, txn, record, forced);
    }

    fn retry_delay(&self, ctx: &mut Context<'_>) -> Duration {
        // Jitter keeps uncertain participants from asking each other in lock step.
        let base = self.config.retry_interval;
        let extra = ctx.rng().gen_range(0..=base.as_micros() as u64 / 2);
        base + Duration::from_micros(extra)
    }

    pub(crate) fn on_start(&mut self, ctx: &mut Context<'_>) {
        if let Err(e) = self.recover(ctx) {
            // A log that does not decode must not be guessed at: stop taking part.
            self.broken = Some(e);
            return;
        }
        // The recovery process (R* §2): ask about every transaction left uncertain.
        let uncertain: Vec<(TxnId, Option<NodeId>)> = self
            .txns
            .iter()
            .filter(|(_, t)| t.state == ParticipantState::Prepared)
            .map(|(id, t)| (*id, t.coordinator))
            .collect();
        for (txn, coordinator) in uncertain {
            if let Some(c) = coordinator {
                self.send(ctx, txn, c, TwoPcMsg::DecisionRequest { txn });
            }
            let delay = self.retry_delay(ctx);
            ctx.set_timer(TwoPcTimer::InDoubt(txn), delay);
        }
    }

    fn recover(&mut self, ctx: &mut Context<'_>) -> Result<(), String> {
        let (first, end) = ctx.storage().log_bounds();
        let mut index = first;
        while index < end {
            let record: Option<ParticipantRecord> = ctx
                .storage()
                .read_value(index)
                .map_err(|e| format!("log record {index} does not decode: {e}"))?;
            match record {
                Some(ParticipantRecord::Prepared {
                    txn,
                    coordinator,
                    participants,
                }) => {
                    self.txns.insert(
                        txn,
                        Txn {
                            state: ParticipantState::Prepared,
                            coordinator: Some(coordinator),
                            participants,
                        },
                    );
                }
                Some(ParticipantRecord::Decided { txn, decision }) => {
                    let t = self.txns.entry(txn).or_insert(Txn {
                        state: ParticipantState::Prepared,
                        coordinator: None,
                        participants: Vec::new(),
                    });
                    t.state = ParticipantState::Decided(decision);
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
        let Endpoint::Node(from) = from else {
            return;
        };
        match msg {
            TwoPcMsg::Prepare {
                txn,
                participants,
                refuse,
            } => self.on_prepare(ctx, from, txn, participants, refuse),
            TwoPcMsg::Decide { txn, decision } => {
                self.learn(ctx, txn, decision, Some(from));
            }
            TwoPcMsg::HelpRequest {
                txn,
                coordinator,
                participants,
            } => self.on_help_request(ctx, from, txn, coordinator, participants),
            TwoPcMsg::HelpReply { txn, answer } => match answer {
                PeerAnswer::Decided(decision) => self.learn(ctx, txn, decision, None),
                PeerAnswer::Uncertain => self.uncertain_answers += 1,
            },
            _ => {}
        }
    }

    pub(crate) fn on_timer(&mut self, ctx: &mut Context<'_>, timer: TwoPcTimer) {
        if self.broken.is_some() {
            return;
        }
        let TwoPcTimer::InDoubt(txn) = timer else {
            return;
        };
        let Some(t) = self.txns.get(&txn) else {
            return;
        };
        if t.state != ParticipantState::Prepared {
            return;
        }
        if self.config.bug == Some(Bug::UncertainParticipantAbortsOnTimeout) {
            self.learn(ctx, txn, Decision::Abort, None);
            return;
        }
        let coordinator = t.coordinator;
        let participants = t.participants.clone();
        let me = ctx.me();
        if let Some(c) = coordinator {
            self.send(ctx, txn, c, TwoPcMsg::DecisionRequest { txn });
            // Cooperative termination: any peer that knows, or has not voted, can settle it.
            for &p in participants.iter().filter(|&&p| p != me) {
                let msg = TwoPcMsg::HelpRequest {
                    txn,
                    coordinator: c,
                    participants: participants.clone(),
                };
                self.send(ctx, txn, p, msg);
            }
        }
        let delay = self.retry_delay(ctx);
        ctx.set_timer(TwoPcTimer::InDoubt(txn), delay);
    }

    fn on_prepare(
        &mut self,
        ctx: &mut Context<'_>,
        coordinator: NodeId,
        txn: TxnId,
        participants: Vec<NodeId>,
        refuse: bool,
    ) {
        if let Some(t) = self.txns.get(&txn) {
            // A repeated Prepare: repeat the vote (it is already durable).
            let yes = match t.state {
                ParticipantState::Prepared => true,
                ParticipantState::Decided(Decision::Abort) => false,
                ParticipantState::Decided(Decision::Commit) => return,
            };
            self.send(ctx, txn, coordinator, TwoPcMsg::Vote { txn, yes });
            return;
        }
        if refuse {
            // A NO vote is a unilateral abort. Presumed abort does not force its record:
            // if it is lost, the coordinator's presumption gives the same answer.
            let forced = !self.config.presumed_abort;
            let record = ParticipantRecord::Decided {
                txn,
                decision: Decision::Abort,
            };
            self.log(ctx, txn, &record, forced);
            self.txns.insert(
                txn,
                Txn {
                    state: ParticipantState::Decided(Decision::Abort),
                    coordinator: Some(coordinator),
                    participants,
                },
            );
            let vote = TwoPcMsg::Vote { txn, yes: false };
            if forced {
                self.send(ctx, txn, coordinator, vote);
            } else {
                // The NO vote does not depend on the abort record being durable, so it
                // need not wait for the sync (synod's `send_unsynced`).
                self.costs.entry(txn).or_default().messages += 1;
                ctx.send_unsynced(coordinator, vote);
            }
            return;
        }
        let record = ParticipantRecord::Prepared {
            txn,
            coordinator,
            participants: participants.clone(),
        };
        self.log(ctx, txn, &record, true);
        self.txns.insert(
            txn,
            Txn {
                state: ParticipantState::Prepared,
                coordinator: Some(coordinator),
                participants,
            },
        );
        let vote = TwoPcMsg::Vote { txn, yes: true };
        if self.config.bug == Some(Bug::VoteBeforeForcingPrepare) {
            self.costs.entry(txn).or_default().messages += 1;
            ctx.send_unsynced(coordinator, vote);
        } else {
            // Held by the driver until the Prepared record is durable: the forced write.
            self.send(ctx, txn, coordinator, vote);
        }
        ctx.set_timer(TwoPcTimer::InDoubt(txn), self.config.decision_timeout);
    }

    /// Learn the outcome, from the coordinator (`from` is `Some`) or from a peer.
    fn learn(
        &mut self,
        ctx: &mut Context<'_>,
        txn: TxnId,
        decision: Decision,
        from: Option<NodeId>,
    ) {
        // Acknowledgements are owed for commits, and for aborts only without presumption.
        let ack = decision == Decision::Commit || !self.config.presumed_abort;
        let state = self.txns.get(&txn).map(|t| t.state);
        match state {
            Some(ParticipantState::Prepared) => {
                let forced = ack;
                let record = ParticipantRecord::Decided { txn, decision };
                self.log(ctx, txn, &record, forced);
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.state = ParticipantState::Decided(decision);
                }
                ctx.cancel_timer(TwoPcTimer::InDoubt(txn));
            }
            Some(ParticipantState::Decided(_)) => {}
            None => match decision {
                Decision::Abort => {
                    // Abort before the Prepare arrived: remember it, so that a late
                    // Prepare gets a NO vote.
                    let record = ParticipantRecord::Decided { txn, decision };
                    self.log(ctx, txn, &record, ack);
                    self.txns.insert(
                        txn,
                        Txn {
                            state: ParticipantState::Decided(decision),
                            coordinator: from,
                            participants: Vec::new(),
                        },
                    );
                }
                Decision::Commit => {
                    // Only possible if a YES vote left before its Prepared record was
                    // durable: the work is gone. Acknowledge so the coordinator can finish;
                    // the atomicity checker reports the lost commit.
                    self.commits_without_prepare += 1;
                }
            },
        }
        if let (Some(c), true) = (from, ack) {
            // Also for a repeated decision: the first acknowledgement may have been lost.
            self.send(ctx, txn, c, TwoPcMsg::Ack { txn });
        }
    }

    fn on_help_request(
        &mut self,
        ctx: &mut Context<'_>,
        from: NodeId,
        txn: TxnId,
        coordinator: NodeId,
        participants: Vec<NodeId>,
    ) {
        let answer = match self.txns.get(&txn).map(|t| t.state) {
            Some(ParticipantState::Decided(d)) => PeerAnswer::Decided(d),
            Some(ParticipantState::Prepared) => PeerAnswer::Uncertain,
            None => {
                // Not voted yet (a YES vote is always preceded by a forced Prepared
                // record), so this participant may still abort unilaterally (BHG §7.4).
                // The abort is forced before the answer leaves, and makes a later
                // Prepare get a NO vote.
                let record = ParticipantRecord::Decided {
                    txn,
                    decision: Decision::Abort,
                };
                self.log(ctx, txn, &record, true);
                self.txns.insert(
                    txn,
                    Txn {
                        state: ParticipantState::Decided(Decision::Abort),
                        coordinator: Some(coordinator),
                        participants,
                    },
                );
                PeerAnswer::Decided(Decision::Abort)
            }
        };
        self.send(ctx, txn, from, TwoPcMsg::HelpReply { txn, answer });
    }
}
