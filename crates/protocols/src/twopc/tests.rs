//! Two-phase commit: unit tests of each rule, then simulation over many seeds.

use super::harness::{
    all_transactions_ended, blocking_demo, check_final, crash_point_sweep, measure_costs,
    run_scenario, single_txn_sim, textbook_costs, FaultMix,
};
use super::*;
use std::time::Duration;
use synod_core::testing::{sent, TestNode};
use synod_core::{ClientId, Effect, MemStorage, Storage};
use synod_sim::assert_seeds;

const T1: TxnId = TxnId { epoch: 1, seq: 1 };

fn config(presumed_abort: bool) -> TwoPcConfig {
    TwoPcConfig {
        presumed_abort,
        ..TwoPcConfig::new(3)
    }
}

fn coordinator(presumed_abort: bool) -> TestNode<TwoPcNode> {
    let c = config(presumed_abort);
    let mut node = TestNode::new(NodeId(0), TwoPcNode::new(NodeId(0), &c), 1);
    node.start();
    node.storage.sync();
    node
}

fn participant(me: u32, presumed_abort: bool) -> TestNode<TwoPcNode> {
    let c = config(presumed_abort);
    let mut node = TestNode::new(NodeId(me), TwoPcNode::new(NodeId(me), &c), u64::from(me));
    node.start();
    node
}

fn all() -> Vec<NodeId> {
    vec![NodeId(1), NodeId(2), NodeId(3)]
}

fn begin(refuse: Vec<NodeId>) -> TwoPcMsg {
    TwoPcMsg::Begin {
        request: 7,
        participants: all(),
        refuse,
    }
}

fn prepare(refuse: bool) -> TwoPcMsg {
    TwoPcMsg::Prepare {
        txn: T1,
        participants: all(),
        refuse,
    }
}

fn held_sends(effects: &[Effect<TwoPcMsg, TwoPcTimer>]) -> Vec<(NodeId, TwoPcMsg)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn unsynced_sends(effects: &[Effect<TwoPcMsg, TwoPcTimer>]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::SendUnsynced { .. }))
        .count()
}

// ---- unit tests: one rule each -------------------------------------------------------

/// Gray 1978 / R* §2: the prepare record is forced before the YES vote leaves. Under
/// group commit that means the record is written in the same step and the vote is a held
/// send, never an unsynced one.
#[test]
fn participant_forces_prepared_record_before_voting_yes() {
    let mut p = participant(1, true);
    let effects = p.deliver(NodeId(0), prepare(false));
    assert_eq!(
        held_sends(&effects),
        vec![(NodeId(0), TwoPcMsg::Vote { txn: T1, yes: true })]
    );
    assert_eq!(unsynced_sends(&effects), 0);
    assert_eq!(p.storage.pending_writes(), 1, "the Prepared record");
    // The record survives a crash once synced, and the restarted participant is uncertain
    // and asks the coordinator at once (R* recovery process).
    p.storage.sync();
    let effects = p.crash_and_restart(TwoPcNode::new(NodeId(1), &config(true)));
    let participant = p.actor.participant().unwrap();
    assert_eq!(participant.state(T1), Some(ParticipantState::Prepared));
    assert!(sent(&effects).contains(&(NodeId(0), TwoPcMsg::DecisionRequest { txn: T1 })));
}

/// R* §2: the commit decision is forced before phase 2.
#[test]
fn coordinator_forces_commit_record_before_sending_commit() {
    let mut c = coordinator(true);
    c.deliver(ClientId(5), begin(vec![]));
    c.deliver(NodeId(1), TwoPcMsg::Vote { txn: T1, yes: true });
    c.deliver(NodeId(2), TwoPcMsg::Vote { txn: T1, yes: true });
    let writes_before = c.storage.pending_writes();
    let effects = c.deliver(NodeId(3), TwoPcMsg::Vote { txn: T1, yes: true });
    assert_eq!(
        c.storage.pending_writes(),
        writes_before + 1,
        "the Decided record"
    );
    let commits: Vec<_> = held_sends(&effects)
        .into_iter()
        .filter(|(_, m)| {
            matches!(
                m,
                TwoPcMsg::Decide {
                    decision: Decision::Commit,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(commits.len(), 3);
    assert_eq!(unsynced_sends(&effects), 0);
    assert!(effects.contains(&Effect::Reply {
        to: ClientId(5),
        msg: TwoPcMsg::Outcome {
            request: 7,
            txn: T1,
            decision: Decision::Commit
        }
    }));
    // Crash before the sync: the decision is lost, so the restarted coordinator presumes
    // abort, and no Commit ever left (the sends were held).
    c.crash_and_restart(TwoPcNode::new(NodeId(0), &config(true)));
    let effects = c.deliver(NodeId(1), TwoPcMsg::DecisionRequest { txn: T1 });
    assert_eq!(
        sent(&effects),
        vec![(
            NodeId(1),
            TwoPcMsg::Decide {
                txn: T1,
                decision: Decision::Abort
            }
        )]
    );
}

/// R* §3: under presumed abort an aborting coordinator writes nothing, sends Abort to
/// everyone but the NO voter and forgets the transaction without waiting for acks.
#[test]
fn presumed_abort_coordinator_forgets_an_abort_at_once() {
    let mut c = coordinator(true);
    c.deliver(ClientId(5), begin(vec![NodeId(2)]));
    let writes = c.storage.pending_writes();
    let effects = c.deliver(
        NodeId(2),
        TwoPcMsg::Vote {
            txn: T1,
            yes: false,
        },
    );
    assert_eq!(c.storage.pending_writes(), writes, "no log record");
    let to: Vec<NodeId> = sent(&effects).into_iter().map(|(n, _)| n).collect();
    assert_eq!(to, vec![NodeId(1), NodeId(3)]);
    let coord = c.actor.coordinator().unwrap();
    assert_eq!(coord.open_transactions().count(), 0);
}

/// R* §2 (2P baseline): the abort is forced, and the coordinator waits for acks, then
/// writes End.
#[test]
fn baseline_coordinator_forces_abort_and_collects_acks() {
    let mut c = coordinator(false);
    c.deliver(ClientId(5), begin(vec![NodeId(2)]));
    let writes = c.storage.pending_writes();
    let effects = c.deliver(
        NodeId(2),
        TwoPcMsg::Vote {
            txn: T1,
            yes: false,
        },
    );
    assert_eq!(
        c.storage.pending_writes(),
        writes + 1,
        "the forced Abort record"
    );
    assert_eq!(held_sends(&effects).len(), 2);
    c.deliver(NodeId(1), TwoPcMsg::Ack { txn: T1 });
    assert_eq!(
        c.actor.coordinator().unwrap().open_transactions().count(),
        1
    );
    c.deliver(NodeId(3), TwoPcMsg::Ack { txn: T1 });
    assert_eq!(
        c.actor.coordinator().unwrap().open_transactions().count(),
        0
    );
    assert_eq!(c.storage.pending_writes(), writes + 2, "plus End");
}

/// A restarted coordinator resends a logged commit that has no End record, until acked.
#[test]
fn coordinator_recovery_resumes_phase_two() {
    let mut c = coordinator(true);
    c.deliver(ClientId(5), begin(vec![]));
    for p in 1..=3 {
        c.deliver(NodeId(p), TwoPcMsg::Vote { txn: T1, yes: true });
    }
    c.storage.sync();
    let effects = c.crash_and_restart(TwoPcNode::new(NodeId(0), &config(true)));
    let commits = sent(&effects)
        .into_iter()
        .filter(|(_, m)| {
            matches!(
                m,
                TwoPcMsg::Decide {
                    decision: Decision::Commit,
                    ..
                }
            )
        })
        .count();
    assert_eq!(commits, 3);
    assert_eq!(c.actor.coordinator().unwrap().epoch(), 2);
}

/// BHG §7.4: a participant that has not voted may abort unilaterally when a peer asks;
/// the abort is forced before the answer, and a later Prepare gets a NO vote.
#[test]
fn unvoted_participant_aborts_unilaterally_for_a_peer() {
    let mut p = participant(2, true);
    let effects = p.deliver(
        NodeId(1),
        TwoPcMsg::HelpRequest {
            txn: T1,
            coordinator: NodeId(0),
            participants: all(),
        },
    );
    assert_eq!(p.storage.pending_writes(), 1, "the forced abort");
    assert_eq!(
        held_sends(&effects),
        vec![(
            NodeId(1),
            TwoPcMsg::HelpReply {
                txn: T1,
                answer: PeerAnswer::Decided(Decision::Abort)
            }
        )]
    );
    p.storage.sync();
    p.crash_and_restart(TwoPcNode::new(NodeId(2), &config(true)));
    let effects = p.deliver(NodeId(0), prepare(false));
    assert_eq!(
        sent(&effects),
        vec![(
            NodeId(0),
            TwoPcMsg::Vote {
                txn: T1,
                yes: false
            }
        )]
    );
}

/// BHG §7.4: an uncertain participant can only say it is uncertain, and it never decides
/// on its own, however long it waits.
#[test]
fn uncertain_participant_cannot_help_and_never_decides_alone() {
    let mut p = participant(2, true);
    p.deliver(NodeId(0), prepare(false));
    let effects = p.deliver(
        NodeId(1),
        TwoPcMsg::HelpRequest {
            txn: T1,
            coordinator: NodeId(0),
            participants: all(),
        },
    );
    assert_eq!(
        sent(&effects),
        vec![(
            NodeId(1),
            TwoPcMsg::HelpReply {
                txn: T1,
                answer: PeerAnswer::Uncertain
            }
        )]
    );
    for _ in 0..20 {
        p.advance(Duration::from_secs(1));
        let effects = p.fire(TwoPcTimer::InDoubt(T1));
        let to: Vec<NodeId> = sent(&effects).into_iter().map(|(n, _)| n).collect();
        assert_eq!(to, vec![NodeId(0), NodeId(1), NodeId(3)], "asks everyone");
    }
    assert_eq!(
        p.actor.participant().unwrap().state(T1),
        Some(ParticipantState::Prepared)
    );
}

/// Presumed abort: a NO vote needs no forced record; 2P forces it.
#[test]
fn no_vote_is_forced_only_without_presumed_abort() {
    let mut p = participant(1, true);
    let effects = p.deliver(NodeId(0), prepare(true));
    assert_eq!(unsynced_sends(&effects), 1);
    assert_eq!(p.actor.costs()[&T1].forced_writes, 0);
    let mut p = participant(1, false);
    let effects = p.deliver(NodeId(0), prepare(true));
    assert_eq!(
        held_sends(&effects),
        vec![(
            NodeId(0),
            TwoPcMsg::Vote {
                txn: T1,
                yes: false
            }
        )]
    );
    assert_eq!(p.actor.costs()[&T1].forced_writes, 1);
}

/// Coordinator timeouts: silent participants get the Prepare again every retry interval,
/// and the vote timeout aborts (BHG §7.4: the coordinator may abort while it waits).
#[test]
fn coordinator_resends_prepare_then_aborts_at_the_vote_timeout() {
    let mut c = coordinator(true);
    c.deliver(ClientId(5), begin(vec![]));
    c.deliver(NodeId(1), TwoPcMsg::Vote { txn: T1, yes: true });
    let effects = c.fire(TwoPcTimer::Resend(T1));
    let to: Vec<NodeId> = sent(&effects).into_iter().map(|(n, _)| n).collect();
    assert_eq!(to, vec![NodeId(2), NodeId(3)], "only the silent ones");
    let effects = c.fire(TwoPcTimer::VoteTimeout(T1));
    let aborts = sent(&effects)
        .into_iter()
        .filter(|(_, m)| {
            matches!(
                m,
                TwoPcMsg::Decide {
                    decision: Decision::Abort,
                    ..
                }
            )
        })
        .count();
    assert_eq!(aborts, 3, "the YES voter and both silent participants");
    // A vote that arrives after the abort changes nothing.
    let effects = c.deliver(NodeId(2), TwoPcMsg::Vote { txn: T1, yes: true });
    assert!(sent(&effects).is_empty());
    assert_eq!(
        c.actor.coordinator().unwrap().decision(T1),
        Some(Decision::Abort)
    );
}

/// 2P participants force the abort record and acknowledge it; presumed-abort ones do
/// neither (R* §3).
#[test]
fn abort_is_forced_and_acknowledged_only_without_presumed_abort() {
    for presumed_abort in [false, true] {
        let mut p = participant(1, presumed_abort);
        p.deliver(NodeId(0), prepare(false));
        p.storage.sync();
        let effects = p.deliver(
            NodeId(0),
            TwoPcMsg::Decide {
                txn: T1,
                decision: Decision::Abort,
            },
        );
        let acks = held_sends(&effects)
            .into_iter()
            .filter(|(_, m)| matches!(m, TwoPcMsg::Ack { .. }))
            .count();
        assert_eq!(acks, usize::from(!presumed_abort));
        let forced = p.actor.costs()[&T1].forced_writes;
        assert_eq!(forced, if presumed_abort { 1 } else { 2 });
    }
}

#[test]
fn a_duplicated_begin_runs_once() {
    let mut c = coordinator(true);
    let first = c.deliver(ClientId(5), begin(vec![]));
    assert_eq!(sent(&first).len(), 3);
    let again = c.deliver(ClientId(5), begin(vec![]));
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(
        c.actor.coordinator().unwrap().open_transactions().count(),
        1
    );
}

#[test]
fn malformed_begin_is_rejected_with_a_reason() {
    let mut c = coordinator(true);
    for (participants, refuse, why) in [
        (vec![], vec![], "at least one"),
        (vec![NodeId(1), NodeId(1)], vec![], "twice"),
        (vec![NodeId(9)], vec![], "not a participant"),
        (vec![NodeId(1)], vec![NodeId(2)], "not among"),
    ] {
        let effects = c.deliver(
            ClientId(1),
            TwoPcMsg::Begin {
                request: 1,
                participants,
                refuse,
            },
        );
        match &effects[..] {
            [Effect::Reply {
                msg: TwoPcMsg::Rejected { reason, .. },
                ..
            }] => assert!(reason.contains(why), "{reason}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

#[test]
fn undecodable_log_stops_the_node_without_a_panic() {
    for me in [0, 1] {
        let c = config(true);
        let mut node = TestNode::new(NodeId(me), TwoPcNode::new(NodeId(me), &c), 1);
        node.storage = MemStorage::new();
        node.storage.append(&[0xff, 0xff, 0xff]);
        node.storage.sync();
        node.start();
        let effects = node.deliver(NodeId(1), prepare(false));
        assert!(effects.is_empty());
        let broken = match &node.actor {
            TwoPcNode::Coordinator(c) => c.broken().is_some(),
            TwoPcNode::Participant(p) => p.broken().is_some(),
        };
        assert!(broken);
    }
}

// ---- simulation ------------------------------------------------------------------------

fn replay(test: &'static str) -> impl Fn(u64) -> String + Sync {
    move |seed| format!("SYNOD_SEED={seed} cargo test -p synod-protocols twopc::tests::{test}")
}

/// Atomicity, commit validity and termination over many seeds: every fault mix (crashes
/// with torn unsynced writes, partitions, loss, duplication, reordering), both variants.
#[test]
fn atomicity_and_termination_hold_under_faults() {
    assert_seeds(
        0..300,
        |seed| {
            let mix = FaultMix::ALL[(seed % 6) as usize];
            let config = TwoPcConfig {
                presumed_abort: (seed / 6) % 2 == 0,
                ..TwoPcConfig::new(2 + (seed % 3) as u32)
            };
            run_scenario(seed, mix, &config, 16, 0.25).map(|_| ())
        },
        replay("atomicity_and_termination_hold_under_faults"),
    );
}

/// Every protocol step, every node: crash exactly there, restart, check the outcome.
#[test]
fn a_crash_at_every_step_of_every_node_keeps_atomicity() {
    assert_seeds(
        0..8,
        |seed| {
            let presumed_abort = seed % 2 == 0;
            let refuse = (seed / 2) % 2 == 1;
            let config = config(presumed_abort);
            let sweep = crash_point_sweep(seed, &config, refuse)?;
            if sweep.runs < 4 * 2 * 10 {
                return Err(format!("only {} crash points", sweep.runs));
            }
            if !refuse && sweep.committed == 0 {
                return Err("no crash point let the transaction commit".into());
            }
            Ok(())
        },
        replay("a_crash_at_every_step_of_every_node_keeps_atomicity"),
    );
}

/// The checkers must be able to fail: each broken variant is caught by the sweep.
#[test]
fn the_checkers_catch_each_broken_variant() {
    for bug in [
        Bug::VoteBeforeForcingPrepare,
        Bug::CommitBeforeForcingDecision,
    ] {
        let caught: Vec<String> = (0..6)
            .filter_map(|seed| {
                let config = config(seed % 2 == 0).with_bug(bug);
                crash_point_sweep(seed, &config, false).err()
            })
            .collect();
        assert!(!caught.is_empty(), "{bug:?} was not caught");
        eprintln!(
            "{bug:?}: caught by {} of 6 sweeps, e.g. {}",
            caught.len(),
            caught[0]
        );
        assert!(
            caught
                .iter()
                .all(|e| e.contains("atomicity") || e.contains("commit validity")),
            "{bug:?}: {caught:?}"
        );
    }
}

/// The known blocking case: every participant voted YES and the coordinator is down.
/// Nobody decides, though everyone keeps asking everyone (cooperative termination cannot
/// help when all are uncertain); once the coordinator recovers, the transaction ends.
#[test]
fn participants_block_while_the_coordinator_is_down_after_all_voted_yes() {
    for (seed, presumed_abort) in [(1, true), (2, true), (3, false), (4, false)] {
        let config = config(presumed_abort);
        let report = blocking_demo(seed, &config, Duration::from_secs(5)).unwrap();
        assert_eq!(report.decided_while_down, 0, "{report:?}");
        assert_eq!(report.uncertain, 3, "{report:?}");
        assert!(report.uncertain_answers > 0, "{report:?}");
        assert!(report.help_requests > 3 * 10, "{report:?}");
        assert!(report.outcome.is_some());
    }
}

/// The blocking test can fail: a participant that aborts on its own when it tires of
/// waiting decides while the coordinator is down, and breaks atomicity whenever the
/// coordinator's commit record survived.
#[test]
fn the_blocking_test_catches_a_participant_that_decides_alone() {
    let mut broke_atomicity = 0;
    for seed in 0..6 {
        let config = config(true).with_bug(Bug::UncertainParticipantAbortsOnTimeout);
        match blocking_demo(seed, &config, Duration::from_secs(5)) {
            Ok(report) => assert!(report.decided_while_down > 0, "{report:?}"),
            Err(e) => {
                assert!(e.contains("atomicity"), "{e}");
                broke_atomicity += 1;
            }
        }
    }
    assert!(broke_atomicity > 0);
}

/// Cooperative termination helps when one participant knows: the coordinator's Commit
/// reached only n1 before it crashed; n2 and n3 learn the outcome from n1 while the
/// coordinator is still down.
#[test]
fn cooperative_termination_finishes_when_one_participant_knows() {
    let config = config(true);
    let (mut sim, _) = single_txn_sim(5, &config, false);
    let decided = |sim: &synod_sim::Sim<TwoPcNode>| {
        sim.actor(NodeId(0))
            .and_then(TwoPcNode::coordinator)
            .and_then(|c| c.decision(T1))
            .is_some()
    };
    while !decided(&sim) {
        assert!(sim.step(), "the run stopped");
    }
    // The held Commits to n2 and n3 will be lost.
    sim.block(NodeId(0), NodeId(2));
    sim.block(NodeId(0), NodeId(3));
    let committed_at_n1 = |sim: &synod_sim::Sim<TwoPcNode>| {
        sim.actor(NodeId(1))
            .and_then(TwoPcNode::participant)
            .and_then(|p| p.state(T1))
            == Some(ParticipantState::Decided(Decision::Commit))
    };
    while !committed_at_n1(&sim) {
        assert!(sim.step(), "the run stopped");
    }
    sim.crash(NodeId(0));
    sim.heal_network();
    sim.run_for(Duration::from_secs(2)).unwrap();
    for p in [2, 3] {
        let state = sim
            .actor(NodeId(p))
            .and_then(TwoPcNode::participant)
            .and_then(|a| a.state(T1));
        assert_eq!(state, Some(ParticipantState::Decided(Decision::Commit)));
    }
    sim.restart(NodeId(0));
    let now = sim.now();
    sim.run_liveness(now, now + Duration::from_secs(5), all_transactions_ended)
        .unwrap();
    check_final(&sim, &config).unwrap();
}

/// Messages and log writes per transaction, fault-free, equal the figures that follow
/// from R*'s rules (Mohan, Lindsay & Obermarck 1986 §2–§3).
#[test]
fn costs_match_the_textbook_figures() {
    for presumed_abort in [true, false] {
        let config = config(presumed_abort);
        let report = measure_costs(3, &config, 40).unwrap();
        assert_eq!(report.commit.txns, 20);
        assert_eq!(report.abort.txns, 20);
        for (row, commit) in [(report.commit, true), (report.abort, false)] {
            let (messages, writes, forced) = textbook_costs(3, presumed_abort, commit);
            assert_eq!(
                (row.messages, row.log_writes, row.forced_writes),
                (messages as f64, writes as f64, forced as f64),
                "presumed abort {presumed_abort}, commit {commit}"
            );
        }
    }
}

#[test]
fn runs_are_deterministic() {
    let run = || {
        let config = config(true);
        let mut cfg = FaultMix::CrashesAndLoss.sim_config(11, 4);
        cfg.seed = 11;
        let c2 = config.clone();
        let mut sim = synod_sim::Sim::new(cfg, move |me| TwoPcNode::new(me, &c2));
        sim.trace_hash_only();
        sim.set_workload(super::harness::TxnWorkload::random(
            &config,
            11,
            10,
            0.3,
            Duration::from_millis(50),
        ));
        sim.run_for(Duration::from_secs(2)).unwrap();
        sim.trace_hash()
    };
    assert_eq!(run(), run());
}
