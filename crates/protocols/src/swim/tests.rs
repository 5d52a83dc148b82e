//! SWIM's tests: unit tests of the paper's rules on one node, then simulations over many
//! seeds for completeness, accuracy and convergence.

use super::harness::{
    converged, crashed_declared_dead, false_declarations, lan, request, run_until_true, swim_sim,
    Variant,
};
use super::state::Suspicion;
use super::*;
use std::collections::BTreeSet;
use std::time::Duration;
use synod_core::testing::{sent, TestNode};
use synod_core::Effect;
use synod_sim::{assert_seeds, swarm_net, NetConfig, Sim};

fn node(me: u32, n: u32, cfg: SwimConfig) -> TestNode<Swim> {
    let cfg = SwimConfig {
        known: (0..n).map(NodeId).collect(),
        ..cfg
    };
    let mut t = TestNode::new(NodeId(me), Swim::new(NodeId(me), cfg), u64::from(me) + 7);
    t.start();
    t
}

fn replies(effects: &[Effect<SwimMsg, SwimTimer>]) -> Vec<SwimReply> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reply {
                msg: SwimMsg::Reply(r),
                ..
            } => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn timer_set(effects: &[Effect<SwimMsg, SwimTimer>], key: SwimTimer) -> Option<Duration> {
    effects.iter().rev().find_map(|e| match e {
        Effect::SetTimer { key: k, after } if *k == key => Some(*after),
        _ => None,
    })
}

/// Start a probe and return its target and sequence number.
fn probe(t: &mut TestNode<Swim>) -> (NodeId, ProbeSeq) {
    let out = t.fire(SwimTimer::Probe);
    sent(&out)
        .into_iter()
        .find_map(|(to, m)| match m {
            SwimMsg::Ping { seq, target, .. } if target == to => Some((to, seq)),
            _ => None,
        })
        .expect("a probe sends a ping")
}

/// An ack without piggybacked updates.
fn ack(seq: ProbeSeq) -> SwimMsg {
    SwimMsg::Ack {
        seq,
        updates: vec![],
    }
}

/// A ping for `target` without piggybacked updates.
fn ping(seq: ProbeSeq, target: NodeId) -> SwimMsg {
    SwimMsg::Ping {
        seq,
        target,
        updates: vec![],
    }
}

/// A ping request for `target` without piggybacked updates.
fn ping_req(seq: ProbeSeq, target: NodeId) -> SwimMsg {
    SwimMsg::PingReq {
        seq,
        target,
        updates: vec![],
    }
}

/// `out` sends exactly one message: an ack of `seq` to `to`.
fn assert_acks_only(out: &[Effect<SwimMsg, SwimTimer>], to: NodeId, seq: ProbeSeq) {
    match sent(out).as_slice() {
        [(n, SwimMsg::Ack { seq: s, .. })] if *n == to && *s == seq => {}
        other => panic!("expected only an ack of {seq:?} to {to:?}, got {other:?}"),
    }
}

fn all_updates(effects: &[Effect<SwimMsg, SwimTimer>]) -> Vec<Update> {
    sent(effects)
        .into_iter()
        .flat_map(|(_, m)| match m {
            SwimMsg::Ping { updates, .. }
            | SwimMsg::PingReq { updates, .. }
            | SwimMsg::Ack { updates, .. }
            | SwimMsg::Gossip { updates } => updates,
            _ => Vec::new(),
        })
        .collect()
}

// ---- unit tests: one node, the paper's rules --------------------------------------------

/// §3.1: a member answers a ping with an ack carrying the same sequence number.
#[test]
fn a_ping_is_answered_with_an_ack() {
    let mut t = node(1, 4, SwimConfig::default());
    let out = t.deliver(NodeId(0), ping(ProbeSeq(9), NodeId(1)));
    assert_acks_only(&out, NodeId(0), ProbeSeq(9));
    // A ping meant for another member (an old address) is not answered.
    let out = t.deliver(NodeId(0), ping(ProbeSeq(10), NodeId(3)));
    assert!(sent(&out).is_empty());
}

/// §3.1 and §4.2: without an ack the prober asks k others, then suspects the target at
/// the end of the period (not dead yet).
#[test]
fn an_unanswered_probe_asks_k_members_then_suspects() {
    let mut t = node(0, 6, SwimConfig::default());
    let (target, seq) = probe(&mut t);
    let out = t.fire(SwimTimer::ProbeTimeout);
    let helpers: Vec<NodeId> = sent(&out)
        .into_iter()
        .filter_map(|(to, m)| match m {
            SwimMsg::PingReq {
                seq: s, target: x, ..
            } if s == seq && x == target => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(helpers.len(), 3, "k = 3 indirect checks");
    assert!(!helpers.contains(&target) && !helpers.contains(&NodeId(0)));
    let out = t.fire(SwimTimer::Probe);
    assert_eq!(t.actor.status_of(target), Some(MemberStatus::Suspect));
    assert!(timer_set(&out, SwimTimer::Suspicion(target)).is_some());
    assert_eq!(t.actor.counters().probe_failures, 1);
}

/// §3.1: an ack forwarded by a ping-req helper counts as well as a direct one.
#[test]
fn an_indirect_ack_saves_the_target() {
    let mut t = node(0, 6, SwimConfig::default());
    let (target, seq) = probe(&mut t);
    t.fire(SwimTimer::ProbeTimeout);
    let helper = NodeId((target.0 % 5) + 1);
    t.deliver(helper, ack(seq));
    t.fire(SwimTimer::Probe);
    assert_eq!(t.actor.status_of(target), Some(MemberStatus::Alive));
}

/// §3.1 and Lifeguard §IV-A: a helper pings the target for the requester, forwards the
/// ack, and nacks if none came in time.
#[test]
fn a_helper_forwards_the_ack_or_nacks() {
    let mut t = node(1, 4, SwimConfig::default());
    let out = t.deliver(NodeId(0), ping_req(ProbeSeq(5), NodeId(2)));
    let mine = match sent(&out).as_slice() {
        [(NodeId(2), SwimMsg::Ping { seq, .. })] => *seq,
        other => panic!("expected a ping to n2, got {other:?}"),
    };
    let out = t.deliver(NodeId(2), ack(mine));
    assert_acks_only(&out, NodeId(0), ProbeSeq(5));
    // A second request that the target never answers: a nack at the relay timeout.
    let out = t.deliver(NodeId(0), ping_req(ProbeSeq(6), NodeId(3)));
    let mine = match sent(&out).as_slice() {
        [(NodeId(3), SwimMsg::Ping { seq, .. })] => *seq,
        other => panic!("expected a ping to n3, got {other:?}"),
    };
    let out = t.fire(SwimTimer::Relay(mine));
    assert_eq!(
        sent(&out),
        vec![(NodeId(0), SwimMsg::Nack { seq: ProbeSeq(6) })]
    );
}

/// §4.2: a suspected member refutes by raising its incarnation and gossiping Alive.
#[test]
fn a_suspect_refutes_with_a_higher_incarnation() {
    let mut t = node(1, 4, SwimConfig::default());
    t.deliver(
        NodeId(0),
        SwimMsg::Gossip {
            updates: vec![Update::Suspect {
                node: NodeId(1),
                incarnation: Incarnation(0),
                from: NodeId(0),
            }],
        },
    );
    assert_eq!(t.actor.incarnation(), Incarnation(1));
    assert_eq!(t.actor.counters().refutations, 1);
    let (_, _) = probe(&mut t);
    let out = t.deliver(NodeId(2), ping(ProbeSeq(1), NodeId(1)));
    assert!(all_updates(&out).contains(&Update::Alive {
        node: NodeId(1),
        incarnation: Incarnation(1),
        meta: vec![],
    }));
    // A stale suspicion (an older incarnation) needs no refutation.
    t.deliver(
        NodeId(0),
        SwimMsg::Gossip {
            updates: vec![Update::Suspect {
                node: NodeId(1),
                incarnation: Incarnation(0),
                from: NodeId(0),
            }],
        },
    );
    assert_eq!(t.actor.incarnation(), Incarnation(1));
}

fn gossip(t: &mut TestNode<Swim>, update: Update) {
    t.deliver(
        NodeId(3),
        SwimMsg::Gossip {
            updates: vec![update],
        },
    );
}

/// §4.2's order: Alive(i) beats Suspect(j) only if i > j; Suspect(i) beats Alive(j) if
/// i ≥ j; Dead beats both; only a higher Alive revives the dead.
#[test]
fn updates_are_ordered_by_incarnation() {
    let mut t = node(0, 4, SwimConfig::default());
    let n = NodeId(2);
    let suspect = |i| Update::Suspect {
        node: n,
        incarnation: Incarnation(i),
        from: NodeId(3),
    };
    let alive = |i| Update::Alive {
        node: n,
        incarnation: Incarnation(i),
        meta: vec![],
    };
    gossip(&mut t, suspect(0));
    assert_eq!(t.actor.status_of(n), Some(MemberStatus::Suspect));
    gossip(&mut t, alive(0));
    assert_eq!(
        t.actor.status_of(n),
        Some(MemberStatus::Suspect),
        "Alive(0) ≯ Suspect(0)"
    );
    gossip(&mut t, alive(1));
    assert_eq!(t.actor.status_of(n), Some(MemberStatus::Alive));
    gossip(&mut t, suspect(0));
    assert_eq!(
        t.actor.status_of(n),
        Some(MemberStatus::Alive),
        "stale suspicion"
    );
    gossip(&mut t, suspect(1));
    assert_eq!(
        t.actor.status_of(n),
        Some(MemberStatus::Suspect),
        "Suspect(1) ≥ Alive(1)"
    );
    gossip(
        &mut t,
        Update::Dead {
            node: n,
            incarnation: Incarnation(1),
            from: NodeId(3),
        },
    );
    assert_eq!(t.actor.status_of(n), Some(MemberStatus::Dead));
    gossip(&mut t, alive(1));
    assert_eq!(
        t.actor.status_of(n),
        Some(MemberStatus::Dead),
        "dead stays dead"
    );
    gossip(&mut t, alive(2));
    assert_eq!(t.actor.status_of(n), Some(MemberStatus::Alive), "rejoined");
    let kinds: Vec<MemberStatus> = t.actor.changes_since(0).map(|c| c.status).collect();
    assert_eq!(
        kinds,
        vec![
            MemberStatus::Suspect,
            MemberStatus::Alive,
            MemberStatus::Suspect,
            MemberStatus::Dead,
            MemberStatus::Alive
        ]
    );
}

/// §4.2: an unrefuted suspicion becomes Dead when its timeout expires.
#[test]
fn an_unrefuted_suspicion_expires_into_dead() {
    let mut t = node(0, 3, SwimConfig::default());
    let (target, _) = probe(&mut t);
    let out = t.fire(SwimTimer::Probe);
    let after = timer_set(&out, SwimTimer::Suspicion(target)).expect("suspicion timer");
    // N = 3: log₁₀ 3 < 1, so the SWIM timeout is 4 periods; a group too small for
    // K = 2 confirmations (N − 2 < K) gets no Lifeguard stretch.
    assert_eq!(after, Duration::from_secs(4));
    t.advance(Duration::from_millis(3900));
    t.fire(SwimTimer::Suspicion(target));
    assert_eq!(
        t.actor.status_of(target),
        Some(MemberStatus::Suspect),
        "early fire"
    );
    t.advance(Duration::from_millis(100));
    t.fire(SwimTimer::Suspicion(target));
    assert_eq!(t.actor.status_of(target), Some(MemberStatus::Dead));
    assert_eq!(t.actor.counters().declared_dead, 1);
}

/// Lifeguard §IV-B: the timeout starts at max and falls logarithmically with each
/// independent confirmation, reaching min after K.
#[test]
fn confirmations_shorten_a_lifeguard_suspicion() {
    let min = Duration::from_secs(4);
    let mut s = Suspicion::new(Instant::ZERO, NodeId(0), 2, min, min * 6);
    assert_eq!(s.timeout(), min * 6);
    s.confirmers.insert(NodeId(1));
    let one = s.timeout();
    // max − (max − min)·ln 2 / ln 3 ≈ 11.38 s
    assert!((one.as_secs_f64() - 11.38).abs() < 0.01, "{one:?}");
    s.confirmers.insert(NodeId(2));
    assert_eq!(s.timeout(), min);
    s.confirmers.insert(NodeId(3));
    assert_eq!(s.timeout(), min, "never below min");

    // In a node: a second suspecter re-arms the timer shorter.
    let mut t = node(0, 8, SwimConfig::default());
    let (target, _) = probe(&mut t);
    let out = t.fire(SwimTimer::Probe);
    assert_eq!(
        timer_set(&out, SwimTimer::Suspicion(target)),
        Some(Duration::from_secs(24))
    );
    let out = t.deliver(
        NodeId(5),
        SwimMsg::Gossip {
            updates: vec![Update::Suspect {
                node: target,
                incarnation: Incarnation(0),
                from: NodeId(5),
            }],
        },
    );
    let rearmed = timer_set(&out, SwimTimer::Suspicion(target)).expect("re-armed");
    assert!(rearmed < Duration::from_secs(12), "{rearmed:?}");
}

/// Without Lifeguard the suspicion timeout is SWIM's fixed one.
#[test]
fn plain_swim_suspicion_has_a_fixed_timeout() {
    let cfg = SwimConfig {
        lifeguard: false,
        ..SwimConfig::default()
    };
    let mut t = node(0, 8, cfg);
    let (target, _) = probe(&mut t);
    let out = t.fire(SwimTimer::Probe);
    assert_eq!(
        timer_set(&out, SwimTimer::Suspicion(target)),
        Some(Duration::from_secs(4))
    );
}

/// Lifeguard §IV-A: probes that fail with nobody nacking raise the local health score,
/// which stretches the probe interval and timeout; an ack lowers it again.
#[test]
fn failed_probes_raise_local_health_and_slow_probing() {
    let mut t = node(0, 6, SwimConfig::default());
    probe(&mut t);
    // No ping-req sent (timeout not fired): a failure with no nacks expected costs 1.
    let out = t.fire(SwimTimer::Probe);
    assert_eq!(t.actor.awareness(), 1);
    assert_eq!(
        timer_set(&out, SwimTimer::Probe),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        timer_set(&out, SwimTimer::ProbeTimeout),
        Some(Duration::from_secs(1))
    );
    // Now three helpers are asked and none nacks: +3.
    t.fire(SwimTimer::ProbeTimeout);
    t.fire(SwimTimer::Probe);
    assert_eq!(t.actor.awareness(), 4);
    // All three nack: the target is at fault, not us; no change.
    let seq = t.actor.probe.as_ref().map(|p| p.seq).expect("probing");
    t.fire(SwimTimer::ProbeTimeout);
    for h in 1..=3 {
        t.deliver(NodeId(h), SwimMsg::Nack { seq });
    }
    let out = t.fire(SwimTimer::Probe);
    assert_eq!(t.actor.awareness(), 4);
    // An ack lowers it by one.
    let seq = match sent(&out).as_slice() {
        [(_, SwimMsg::Ping { seq, .. }), ..] => *seq,
        other => panic!("expected a ping, got {other:?}"),
    };
    t.deliver(NodeId(1), ack(seq));
    assert_eq!(t.actor.awareness(), 3);
    // Capped at awareness_max_multiplier − 1.
    for _ in 0..10 {
        t.fire(SwimTimer::Probe);
    }
    assert_eq!(t.actor.awareness(), 7);
}

/// Lifeguard §IV-C: a ping to a suspect carries the suspicion first.
#[test]
fn a_ping_to_a_suspect_carries_its_suspicion_first() {
    let cfg = SwimConfig {
        max_piggyback: 1,
        ..SwimConfig::default()
    };
    let mut t = node(0, 3, cfg);
    gossip(
        &mut t,
        Update::Suspect {
            node: NodeId(1),
            incarnation: Incarnation(0),
            from: NodeId(2),
        },
    );
    // Fill the queue with newer news so that plain queue order would not pick it.
    gossip(
        &mut t,
        Update::Alive {
            node: NodeId(2),
            incarnation: Incarnation(3),
            meta: vec![],
        },
    );
    let mut pinged_suspect = false;
    for _ in 0..4 {
        let out = t.fire(SwimTimer::Probe);
        for (to, m) in sent(&out) {
            if let (NodeId(1), SwimMsg::Ping { updates, .. }) = (to, m) {
                pinged_suspect = true;
                assert!(
                    matches!(
                        updates.first(),
                        Some(Update::Suspect {
                            node: NodeId(1),
                            ..
                        })
                    ),
                    "{updates:?}"
                );
            }
        }
    }
    assert!(pinged_suspect);
}

/// §4.1: an update is piggybacked at most λ·⌈log₁₀(N+1)⌉ times.
#[test]
fn an_update_is_retransmitted_a_bounded_number_of_times() {
    let mut t = node(0, 8, SwimConfig::default());
    // Drain our own start-up Alive.
    for _ in 0..8 {
        t.fire(SwimTimer::Probe);
    }
    gossip(
        &mut t,
        Update::Alive {
            node: NodeId(2),
            incarnation: Incarnation(1),
            meta: vec![],
        },
    );
    let mut times = 0;
    for i in 0..20 {
        // Pings from others: each ack carries gossip, and no probe of ours fails (a
        // failure would queue newer news about n2 in place of this update).
        let out = t.deliver(NodeId(1 + i % 7), ping(ProbeSeq(i.into()), NodeId(0)));
        times += all_updates(&out)
            .iter()
            .filter(|u| {
                matches!(
                    u,
                    Update::Alive {
                        node: NodeId(2),
                        ..
                    }
                )
            })
            .count();
    }
    // N = 8: λ · ⌈log₁₀ 9⌉ = 4 · 1.
    assert_eq!(times, 4);
}

/// Bad input from the network or a client gets no panic and changes nothing it should not.
#[test]
fn bad_input_is_ignored_or_refused() {
    let mut t = node(0, 3, SwimConfig::default());
    // About members nobody has heard of: suspicions and deaths are ignored.
    gossip(
        &mut t,
        Update::Dead {
            node: NodeId(77),
            incarnation: Incarnation(5),
            from: NodeId(3),
        },
    );
    assert_eq!(t.actor.status_of(NodeId(77)), None);
    // Oversized metadata is dropped.
    gossip(
        &mut t,
        Update::Alive {
            node: NodeId(9),
            incarnation: Incarnation(1),
            meta: vec![0; MAX_META_BYTES + 1],
        },
    );
    assert_eq!(t.actor.status_of(NodeId(9)), None);
    // Acks and nacks for probes never sent.
    t.deliver(NodeId(1), SwimMsg::Nack { seq: ProbeSeq(999) });
    t.deliver(NodeId(1), ack(ProbeSeq(999)));
    // A client asking for too much.
    let out = t.deliver(
        ClientId(1),
        SwimMsg::Request(SwimRequest::SetMeta(vec![0; MAX_META_BYTES + 1])),
    );
    assert!(matches!(replies(&out).as_slice(), [SwimReply::Refused(_)]));
    let out = t.deliver(
        ClientId(1),
        SwimMsg::Request(SwimRequest::FireEvent {
            name: "x".into(),
            payload: vec![0; MAX_EVENT_BYTES],
        }),
    );
    assert!(matches!(replies(&out).as_slice(), [SwimReply::Refused(_)]));
    // A reply or request from a node is not for us.
    let out = t.deliver(NodeId(1), SwimMsg::Reply(SwimReply::Done));
    assert!(out.is_empty());
}

/// Graceful leave: the member declares itself dead, others record `Left`, and it goes
/// silent.
#[test]
fn a_leaving_member_is_recorded_as_left() {
    let mut t = node(1, 4, SwimConfig::default());
    let out = t.deliver(ClientId(1), SwimMsg::Request(SwimRequest::Leave));
    assert_eq!(replies(&out), vec![SwimReply::Done]);
    let leave = all_updates(&out);
    assert!(!leave.is_empty());
    assert!(t.actor.has_left());
    assert!(t.fire(SwimTimer::Probe).is_empty());

    let mut other = node(0, 4, SwimConfig::default());
    other.deliver(NodeId(1), SwimMsg::Gossip { updates: leave });
    assert_eq!(other.actor.status_of(NodeId(1)), Some(MemberStatus::Left));
    assert_eq!(other.actor.counters().declared_dead, 0);
}

/// The view for other code: members with status and incarnation, and a subscription.
#[test]
fn clients_read_the_view_and_subscribe_to_changes() {
    let mut t = node(0, 3, SwimConfig::default());
    let out = t.deliver(ClientId(4), SwimMsg::Request(SwimRequest::Members));
    match replies(&out).as_slice() {
        [SwimReply::Members(m)] => {
            assert_eq!(m.len(), 3);
            assert!(m.iter().all(|m| m.status == MemberStatus::Alive));
        }
        other => panic!("{other:?}"),
    }
    t.deliver(ClientId(4), SwimMsg::Request(SwimRequest::Subscribe));
    let out = t.deliver(
        NodeId(2),
        SwimMsg::Gossip {
            updates: vec![Update::Suspect {
                node: NodeId(1),
                incarnation: Incarnation(0),
                from: NodeId(2),
            }],
        },
    );
    match replies(&out).as_slice() {
        [SwimReply::Change(c)] => {
            assert_eq!((c.node, c.status), (NodeId(1), MemberStatus::Suspect));
            assert_eq!(c.previous, Some(MemberStatus::Alive));
        }
        other => panic!("{other:?}"),
    }
}

// ---- simulations over many seeds ------------------------------------------------------

fn replay(test: &'static str) -> impl Fn(u64) -> String + Sync {
    move |seed| format!("SYNOD_SEED={seed} cargo test -p synod-protocols swim::tests::{test}")
}

/// Completeness (SWIM §2): every crashed member is eventually declared dead by every live
/// member, on lossy, reordering networks, with up to a third of the group crashed.
#[test]
fn every_crashed_member_is_declared_dead_by_every_live_member() {
    assert_seeds(
        0..100,
        |seed| {
            let n = 4 + (seed % 9) as u32;
            let net = NetConfig {
                loss: swarm_net(seed).loss.min(0.05),
                ..swarm_net(seed)
            };
            let mut sim = swim_sim(seed, n, SwimConfig::with_members(n), net);
            let err = |f: synod_sim::SimFailure| f.to_string();
            sim.run_for(Duration::from_secs(3)).map_err(err)?;
            let crashes = 1 + (seed % u64::from(n / 3).max(1)) as u32;
            let crashed: BTreeSet<NodeId> = (0..crashes)
                .map(|i| NodeId((i * 3 + seed as u32) % n))
                .collect();
            for &c in &crashed {
                sim.crash(c);
                sim.run_for(Duration::from_millis(700)).map_err(err)?;
            }
            // The deadline is generous against Lifeguard's 6× stretch of a suspicion
            // nobody confirms.
            let deadline = sim.now() + Duration::from_secs(60);
            run_until_true(&mut sim, deadline, |s| crashed_declared_dead(s, &crashed))?;
            Ok(())
        },
        replay("every_crashed_member_is_declared_dead_by_every_live_member"),
    );
}

/// Accuracy at 0% loss: no live, connected member is ever declared dead (nor suspected),
/// while other members crash and the group keeps running.
#[test]
fn at_zero_loss_no_live_member_is_declared_dead() {
    assert_seeds(
        0..100,
        |seed| {
            let n = 3 + (seed % 10) as u32;
            let net = NetConfig {
                loss: 0.0,
                duplicate: 0.0,
                ..swarm_net(seed)
            };
            let mut sim = swim_sim(seed, n, SwimConfig::with_members(n), net);
            let err = |f: synod_sim::SimFailure| f.to_string();
            sim.run_for(Duration::from_secs(5)).map_err(err)?;
            let victim = NodeId((seed % u64::from(n)) as u32);
            let crash = n >= 4 && seed % 2 == 0;
            if crash {
                sim.crash(victim);
            }
            sim.run_for(Duration::from_secs(40)).map_err(err)?;
            let live: BTreeSet<NodeId> = sim.actors().map(|(n, _)| n).collect();
            let wrong = false_declarations(&sim, &live);
            if !wrong.is_empty() {
                return Err(format!(
                    "live members declared dead (observer, subject): {wrong:?}"
                ));
            }
            let suspected: Vec<(NodeId, NodeId)> = sim
                .actors()
                .flat_map(|(o, a)| {
                    a.changes_since(0)
                        .filter(|c| c.status == MemberStatus::Suspect && live.contains(&c.node))
                        .map(move |c| (o, c.node))
                        .collect::<Vec<_>>()
                })
                .collect();
            if !suspected.is_empty() {
                return Err(format!("live members suspected: {suspected:?}"));
            }
            Ok(())
        },
        replay("at_zero_loss_no_live_member_is_declared_dead"),
    );
}

/// The accuracy check can fail: SWIM without suspicion at 10% loss kills live members.
#[test]
fn without_suspicion_loss_gets_live_members_declared_dead() {
    let n = 16;
    let mut sim = swim_sim(3, n, Variant::NoSuspicion.config(n), lan(0.1));
    sim.run_for(Duration::from_secs(60)).expect("runs");
    let live: BTreeSet<NodeId> = sim.actors().map(|(n, _)| n).collect();
    assert!(!false_declarations(&sim, &live).is_empty());
}

/// Convergence: after a partition long enough for each side to declare the other dead
/// heals, every live member sees every other alive again (reconnect, push-pull and
/// refutation), with the default 30 s push-pull and reconnect intervals.
#[test]
fn membership_converges_after_a_partition_heals() {
    assert_seeds(
        0..100,
        |seed| {
            let n = 4 + (seed % 7) as u32;
            let net = NetConfig {
                loss: 0.0,
                ..swarm_net(seed)
            };
            let mut sim = swim_sim(seed, n, SwimConfig::with_members(n), net);
            let err = |f: synod_sim::SimFailure| f.to_string();
            sim.run_for(Duration::from_secs(2)).map_err(err)?;
            let cut = 1 + (seed as u32 % (n - 1));
            let (a, b): (Vec<NodeId>, Vec<NodeId>) = (0..n).map(NodeId).partition(|x| x.0 < cut);
            sim.partition(&[a.clone(), b.clone()]);
            sim.run_for(Duration::from_secs(45)).map_err(err)?;
            // The larger side must have declared the other dead, or the test proves
            // little. (A lone member, with Lifeguard, slows itself and may not have.)
            let (small, large) = if a.len() < b.len() {
                (&a, &b)
            } else {
                (&b, &a)
            };
            let observer = sim.actor(large[0]).ok_or("a member is up")?;
            if observer.status_of(small[0]) != Some(MemberStatus::Dead) {
                return Err(format!(
                    "{} still sees {} as {:?}",
                    large[0],
                    small[0],
                    observer.status_of(small[0])
                ));
            }
            sim.heal_network();
            let healed = sim.now();
            run_until_true(&mut sim, healed + Duration::from_secs(150), converged)?;
            Ok(())
        },
        replay("membership_converges_after_a_partition_heals"),
    );
}

/// Join through a seed: members that know only n0 all end up knowing each other, and
/// metadata and user events reach everyone.
#[test]
fn members_join_through_a_seed_and_share_metadata_and_events() {
    assert_seeds(
        0..50,
        |seed| {
            let n = 2 + (seed % 12) as u32;
            let cfg = SwimConfig {
                seeds: vec![NodeId(0)],
                ..SwimConfig::default()
            };
            let mut sim = swim_sim(seed, n, cfg, swarm_net(seed));
            let last = NodeId(n - 1);
            run_until_true(&mut sim, Duration::from_secs(60), converged)?;
            let everyone = |s: &Sim<Swim>| s.actors().all(|(_, a)| a.members().len() == n as usize);
            if !everyone(&sim) {
                return Err("a member is missing from some view".into());
            }
            request(&mut sim, last, SwimRequest::SetMeta(b"zone=b".to_vec()))?;
            request(
                &mut sim,
                last,
                SwimRequest::FireEvent {
                    name: "deploy".into(),
                    payload: b"v2".to_vec(),
                },
            )?;
            let spread = move |s: &Sim<Swim>| {
                s.actors().all(|(_, a)| {
                    a.has_event(last, EventTime(1))
                        && a.members()
                            .iter()
                            .any(|m| m.node == last && m.meta == b"zone=b")
                })
            };
            let now = sim.now();
            run_until_true(&mut sim, now + Duration::from_secs(60), spread)?;
            Ok(())
        },
        replay("members_join_through_a_seed_and_share_metadata_and_events"),
    );
}

/// A graceful leave reaches every member as `Left`, and nobody counts it as a failure.
#[test]
fn a_graceful_leave_reaches_everyone_as_left() {
    assert_seeds(
        0..50,
        |seed| {
            let n = 3 + (seed % 10) as u32;
            let mut sim = swim_sim(seed, n, SwimConfig::with_members(n), lan(0.0));
            let err = |f: synod_sim::SimFailure| f.to_string();
            sim.run_for(Duration::from_secs(3)).map_err(err)?;
            let leaver = NodeId((seed % u64::from(n)) as u32);
            request(&mut sim, leaver, SwimRequest::Leave)?;
            let now = sim.now();
            let left = move |s: &Sim<Swim>| {
                s.actors()
                    .filter(|(x, _)| *x != leaver)
                    .all(|(_, a)| a.status_of(leaver) == Some(MemberStatus::Left))
            };
            run_until_true(&mut sim, now + Duration::from_secs(30), left)?;
            sim.run_for(Duration::from_secs(30)).map_err(err)?;
            let dead: u64 = sim.actors().map(|(_, a)| a.counters().declared_dead).sum();
            if dead > 0 || !left(&sim) {
                return Err(format!("leave counted as {dead} failures or undone"));
            }
            Ok(())
        },
        replay("a_graceful_leave_reaches_everyone_as_left"),
    );
}

/// A crashed member that restarts comes back: its refutation outbids the death verdict.
#[test]
fn a_restarted_member_rejoins_with_a_higher_incarnation() {
    assert_seeds(
        0..50,
        |seed| {
            let n = 3 + (seed % 8) as u32;
            let mut sim = swim_sim(seed, n, SwimConfig::with_members(n), swarm_net(seed));
            let err = |f: synod_sim::SimFailure| f.to_string();
            sim.run_for(Duration::from_secs(2)).map_err(err)?;
            let victim = NodeId((seed % u64::from(n)) as u32);
            sim.crash(victim);
            let crashed = BTreeSet::from([victim]);
            let deadline = sim.now() + Duration::from_secs(60);
            run_until_true(&mut sim, deadline, |s| crashed_declared_dead(s, &crashed))?;
            sim.restart(victim);
            let deadline = sim.now() + Duration::from_secs(60);
            run_until_true(&mut sim, deadline, converged)?;
            let inc = sim
                .actor(victim)
                .map(|a| a.incarnation())
                .unwrap_or_default();
            if inc == Incarnation(0) {
                return Err("rejoined without outbidding its death".into());
            }
            Ok(())
        },
        replay("a_restarted_member_rejoins_with_a_higher_incarnation"),
    );
}

/// Same seed, same run: the actor draws randomness only from its context.
#[test]
fn same_seed_gives_the_same_trace() {
    let run = || {
        let mut sim = swim_sim(11, 9, SwimConfig::with_members(9), NetConfig::lossy());
        sim.trace_hash_only();
        sim.run_for(Duration::from_secs(20)).expect("runs");
        sim.trace_hash()
    };
    assert_eq!(run(), run());
}
