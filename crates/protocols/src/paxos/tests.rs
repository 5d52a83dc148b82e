//! Paxos tests: unit tests of the paper's rules on one node, and simulations that check
//! agreement, validity, integrity and linearizability over many seeds with faults.

use super::harness::{run_multi, run_single, MultiScenario, SingleScenario};
use super::multi::{Command, MultiConfig, MultiMsg, MultiPaxos, Role, Slot};
use super::single::{Paxos, PaxosConfig, PaxosMsg, Value};
use super::{Ballot, Bug};
use crate::raft::{KvCommand, SessionId};
use synod_core::testing::{sent, TestNode};
use synod_core::{ClientId, Effect, NodeId};
use synod_sim::assert_seeds;

fn nodes(n: u32) -> Vec<NodeId> {
    (0..n).map(NodeId).collect()
}

fn b(round: u64, node: u32) -> Ballot {
    Ballot {
        round,
        node: NodeId(node),
    }
}

fn acceptor() -> TestNode<Paxos> {
    let mut node = TestNode::new(NodeId(0), Paxos::new(PaxosConfig::new(nodes(3), None)), 1);
    node.start();
    node
}

/// Ballots order by round, then by node, so two proposers never share one (§2.2).
#[test]
fn ballots_are_totally_ordered_by_round_then_node() {
    assert!(b(1, 2) < b(2, 0));
    assert!(b(2, 0) < b(2, 1));
    assert!(Ballot::ZERO < b(1, 0));
}

/// Phase 1b (§2.2): an acceptor promises a higher ballot and reports what it accepted;
/// it refuses a lower one.
#[test]
fn acceptor_promises_only_higher_ballots_and_reports_its_acceptance() {
    let mut a = acceptor();
    let e = a.deliver(NodeId(1), PaxosMsg::Prepare { ballot: b(2, 1) });
    assert_eq!(
        sent(&e),
        vec![(
            NodeId(1),
            PaxosMsg::Promise {
                ballot: b(2, 1),
                accepted: None
            }
        )]
    );
    let e = a.deliver(NodeId(2), PaxosMsg::Prepare { ballot: b(1, 2) });
    assert_eq!(
        sent(&e),
        vec![(
            NodeId(2),
            PaxosMsg::Nack {
                ballot: b(1, 2),
                promised: b(2, 1)
            }
        )]
    );
    a.deliver(
        NodeId(1),
        PaxosMsg::Accept {
            ballot: b(2, 1),
            value: Value(7),
        },
    );
    let e = a.deliver(NodeId(2), PaxosMsg::Prepare { ballot: b(3, 2) });
    assert_eq!(
        sent(&e),
        vec![(
            NodeId(2),
            PaxosMsg::Promise {
                ballot: b(3, 2),
                accepted: Some((b(2, 1), Value(7)))
            }
        )]
    );
}

/// Phase 2b: an acceptor refuses to accept below its promise.
#[test]
fn acceptor_refuses_to_accept_below_its_promise() {
    let mut a = acceptor();
    a.deliver(NodeId(2), PaxosMsg::Prepare { ballot: b(5, 2) });
    let e = a.deliver(
        NodeId(1),
        PaxosMsg::Accept {
            ballot: b(4, 1),
            value: Value(1),
        },
    );
    assert!(matches!(sent(&e)[..], [(_, PaxosMsg::Nack { .. })]));
    assert_eq!(a.actor.accepted(), None);
}

/// §2.3: the acceptor's promise survives a crash once synced, and replies are held
/// until then (they are `Send`, not `SendUnsynced`).
#[test]
fn acceptor_remembers_its_promise_across_a_crash() {
    let mut a = acceptor();
    let e = a.deliver(NodeId(1), PaxosMsg::Prepare { ballot: b(3, 1) });
    assert!(e.iter().all(|e| !matches!(e, Effect::SendUnsynced { .. })));
    a.storage.sync();
    a.crash_and_restart(Paxos::new(PaxosConfig::new(nodes(3), None)));
    assert_eq!(a.actor.promised(), b(3, 1));
}

/// P2c: a proposer proposes the value of the highest-ballot acceptance reported.
#[test]
fn proposer_adopts_the_highest_reported_value() {
    let config = PaxosConfig::new(nodes(3), Some(Value(99)));
    let mut p = TestNode::new(NodeId(0), Paxos::new(config), 1);
    p.start();
    p.fire(super::single::PaxosTimer::Retry);
    let ballot = b(1, 0);
    p.deliver(
        NodeId(1),
        PaxosMsg::Promise {
            ballot,
            accepted: Some((Ballot::ZERO, Value(5))),
        },
    );
    let e = p.deliver(
        NodeId(2),
        PaxosMsg::Promise {
            ballot,
            accepted: Some((b(0, 2), Value(6))),
        },
    );
    let accepts: Vec<_> = sent(&e)
        .into_iter()
        .filter_map(|(_, m)| match m {
            PaxosMsg::Accept { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    assert_eq!(accepts, vec![Value(6); 3]);
}

/// Single-decree Paxos under swarm faults: agreement, validity and integrity after every
/// event, and every node decides once the faults heal.
#[test]
fn single_decree_paxos_agrees_under_faults() {
    assert_seeds(
        0..200,
        |seed| run_single(&SingleScenario::new(seed)).map(|_| ()),
        |seed| {
            format!(
                "SYNOD_SEED={seed} cargo test -p synod-protocols \
                 paxos::tests::single_decree_paxos_agrees_under_faults"
            )
        },
    );
}

/// The safety violations (not liveness failures) a broken variant shows over `seeds`.
fn violations(
    seeds: std::ops::Range<u64>,
    run: impl Fn(u64) -> Result<(), String>,
    property: &str,
) -> Vec<(u64, String)> {
    let found: Vec<(u64, String)> = seeds
        .filter_map(|seed| run(seed).err().map(|e| (seed, e)))
        .filter(|(_, e)| e.contains(property))
        .collect();
    println!("{} seeds violated {property}", found.len());
    if let Some((seed, e)) = found.first() {
        println!("first: seed {seed}: {e}");
    }
    found
}

/// The crash-heavy, slow-disk mix the unsynced-reply bug is caught under: the correct
/// algorithm passes it.
#[test]
fn single_decree_paxos_agrees_under_crash_storms() {
    assert_seeds(
        0..150,
        |seed| {
            let mut s = SingleScenario::new(seed);
            s.slow_disk = true;
            s.crash_heavy = true;
            run_single(&s).map(|_| ())
        },
        |seed| {
            format!(
                "SYNOD_SEED={seed} cargo test -p synod-protocols \
                 paxos::tests::single_decree_paxos_agrees_under_crash_storms"
            )
        },
    );
}

/// The checker catches a proposer that ignores the values reported in promises.
#[test]
fn checker_catches_a_proposer_that_ignores_accepted_values() {
    let found = violations(
        0..200,
        |seed| {
            let mut s = SingleScenario::new(seed);
            s.bug = Some(Bug::IgnoreAcceptedValues);
            run_single(&s).map(|_| ())
        },
        "Agreement",
    );
    assert!(!found.is_empty(), "no seed caught the bug");
}

/// The checker catches acceptors that reply before their state is durable, when crashes
/// hit a slow disk.
#[test]
fn checker_catches_an_acceptor_that_replies_before_persisting() {
    let found = violations(
        0..500,
        |seed| {
            let mut s = SingleScenario::new(seed);
            s.bug = Some(Bug::ReplyBeforePersist);
            s.slow_disk = true;
            s.crash_heavy = true;
            run_single(&s).map(|_| ())
        },
        "Agreement",
    );
    assert!(!found.is_empty(), "no seed caught the bug");
}

// ---- Multi-Paxos -----------------------------------------------------------------------

fn multi(me: u32, n: u32) -> TestNode<MultiPaxos> {
    let mut node = TestNode::new(NodeId(me), MultiPaxos::new(MultiConfig::new(nodes(n))), 3);
    node.start();
    node
}

fn put(seq: u64) -> Command {
    Command::Client {
        session: SessionId(1),
        seq,
        command: KvCommand::Put {
            key: "k".into(),
            value: seq,
        },
    }
}

/// Become leader of a 3-node group with promises from node 1 reporting `accepted`.
fn elect(
    node: &mut TestNode<MultiPaxos>,
    accepted: Vec<(Slot, Ballot, Command)>,
) -> Vec<(NodeId, MultiMsg)> {
    node.advance(std::time::Duration::from_secs(1));
    node.fire(super::multi::MultiTimer::Election);
    assert_eq!(node.actor.role(), Role::Candidate);
    let ballot = node.actor.ballot();
    let e = node.deliver(NodeId(1), MultiMsg::Promise { ballot, accepted });
    assert_eq!(node.actor.role(), Role::Leader);
    sent(&e)
}

/// §3: a new leader re-proposes reported values and fills the gaps with no-ops.
#[test]
fn new_leader_fills_gaps_with_noops() {
    let mut n = multi(0, 3);
    let accepts = elect(
        &mut n,
        vec![(Slot(0), b(1, 2), put(1)), (Slot(2), b(1, 2), put(2))],
    );
    let proposed: Vec<(Slot, Command)> = accepts
        .into_iter()
        .filter(|(to, _)| *to == NodeId(1))
        .filter_map(|(_, m)| match m {
            MultiMsg::Accept { slot, command, .. } => Some((slot, command)),
            _ => None,
        })
        .collect();
    assert_eq!(
        proposed,
        vec![
            (Slot(0), put(1)),
            (Slot(1), Command::Noop),
            (Slot(2), put(2))
        ]
    );
}

/// §3: a stable leader skips phase 1: a client request goes straight to `Accept`, and
/// the reply waits until the command is chosen and applied.
#[test]
fn stable_leader_skips_phase_one() {
    let mut n = multi(0, 3);
    elect(&mut n, vec![]);
    let ballot = n.actor.ballot();
    let e = n.deliver(
        ClientId(1),
        MultiMsg::Request {
            session: SessionId(1),
            seq: 1,
            command: KvCommand::Put {
                key: "k".into(),
                value: 1,
            },
        },
    );
    let msgs = sent(&e);
    assert!(msgs
        .iter()
        .all(|(_, m)| matches!(m, MultiMsg::Accept { .. })));
    assert_eq!(msgs.len(), 3);
    // Peers get the Accept at once; the leader's own vote waits for its disk.
    for effect in &e {
        match effect {
            Effect::SendUnsynced { to, .. } => assert_ne!(*to, NodeId(0)),
            Effect::Send { to, .. } => assert_eq!(*to, NodeId(0)),
            _ => {}
        }
    }
    assert!(!e.iter().any(|e| matches!(e, Effect::Reply { .. })));
    let e = n.deliver(
        NodeId(2),
        MultiMsg::Accepted {
            ballot,
            slot: Slot(0),
        },
    );
    assert!(
        !e.iter().any(|e| matches!(e, Effect::Reply { .. })),
        "one durable vote of three is not a majority"
    );
    // The loopback Accept arrives once the leader's write is durable.
    let command = put(1);
    let e = n.deliver(
        NodeId(0),
        MultiMsg::Accept {
            ballot,
            slot: Slot(0),
            command,
        },
    );
    assert_eq!(
        sent(&e),
        vec![(
            NodeId(0),
            MultiMsg::Accepted {
                ballot,
                slot: Slot(0)
            }
        )]
    );
    let e = n.deliver(
        NodeId(0),
        MultiMsg::Accepted {
            ballot,
            slot: Slot(0),
        },
    );
    assert!(e.iter().any(|e| matches!(
        e,
        Effect::Reply {
            to: ClientId(1),
            ..
        }
    )));
    assert_eq!(n.actor.kv().get("k"), Some(1));
}

/// A retried command that a leader change put into two slots takes effect once.
#[test]
fn a_command_in_two_slots_applies_once() {
    let mut n = multi(1, 3);
    let cas = |seq| Command::Client {
        session: SessionId(1),
        seq,
        command: KvCommand::Cas {
            key: "k".into(),
            expected: None,
            new: 5,
        },
    };
    n.deliver(
        NodeId(0),
        MultiMsg::Chosen {
            slot: Slot(0),
            command: cas(1),
        },
    );
    n.deliver(
        NodeId(0),
        MultiMsg::Chosen {
            slot: Slot(1),
            command: put(2),
        },
    );
    n.deliver(
        NodeId(0),
        MultiMsg::Chosen {
            slot: Slot(2),
            command: cas(1),
        },
    );
    assert_eq!(n.actor.applied(), Slot(3));
    assert_eq!(n.actor.kv().get("k"), Some(2));
}

fn multi_replay(test: &str) -> impl Fn(u64) -> String + Sync + '_ {
    move |seed| format!("SYNOD_SEED={seed} cargo test -p synod-protocols paxos::tests::{test}")
}

/// Multi-Paxos under swarm faults: per-slot agreement after every event, convergence
/// after healing, validity, and a linearizable client history.
#[test]
fn multi_paxos_is_linearizable_under_faults() {
    assert_seeds(
        0..300,
        |seed| run_multi(&MultiScenario::new(seed)).map(|_| ()),
        multi_replay("multi_paxos_is_linearizable_under_faults"),
    );
}

/// Without faults, every operation completes.
#[test]
fn multi_paxos_completes_every_operation_without_faults() {
    assert_seeds(
        0..20,
        |seed| {
            let mut s = MultiScenario::new(seed);
            s.faults = false;
            let out = run_multi(&s)?;
            // Operations started before the first leader is elected may give up.
            if out.unfinished_after_first_leader > 0 || out.completed < 1000 {
                return Err(format!(
                    "{} of {} operations completed, {} started after the first \
                     leader did not",
                    out.completed, out.operations, out.unfinished_after_first_leader
                ));
            }
            Ok(())
        },
        multi_replay("multi_paxos_completes_every_operation_without_faults"),
    );
}

/// The checkers catch a Multi-Paxos leader that ignores reported values.
#[test]
fn multi_paxos_checker_catches_ignored_accepted_values() {
    let found = violations(
        0..40,
        |seed| {
            let mut s = MultiScenario::new(seed);
            s.bug = Some(Bug::IgnoreAcceptedValues);
            run_multi(&s).map(|_| ())
        },
        "Agreement",
    );
    assert!(!found.is_empty(), "no seed caught the bug");
}

/// Multi-Paxos under crash storms on a slow disk stays safe and linearizable.
#[test]
fn multi_paxos_is_linearizable_under_crash_storms() {
    assert_seeds(
        0..40,
        |seed| {
            let mut s = MultiScenario::new(seed);
            s.slow_disk = true;
            s.crash_heavy = true;
            run_multi(&s).map(|_| ())
        },
        multi_replay("multi_paxos_is_linearizable_under_crash_storms"),
    );
}

/// The checkers catch Multi-Paxos acceptors that reply before persisting.
#[test]
fn multi_paxos_checker_catches_replies_before_persisting() {
    let found = violations(
        0..400,
        |seed| {
            let mut s = MultiScenario::new(seed);
            s.bug = Some(Bug::ReplyBeforePersist);
            s.slow_disk = true;
            s.crash_heavy = true;
            run_multi(&s).map(|_| ())
        },
        "Agreement",
    );
    assert!(!found.is_empty(), "no seed caught the bug");
}

/// A promise reporting an absurd slot (corrupt input) does not make the new leader fill
/// an endless gap, and nothing overflows.
#[test]
fn new_leader_ignores_absurd_slots() {
    let mut n = multi(0, 3);
    let accepts = elect(&mut n, vec![(Slot(u64::MAX), b(u64::MAX, 2), put(1))]);
    assert!(accepts
        .iter()
        .all(|(_, m)| !matches!(m, MultiMsg::Accept { .. })));
    assert_eq!(n.actor.next_slot(), Slot(0));
}
