//! Tests of the Dynamo-style store: one node driven by hand for the paper's rules, then the
//! harness over many seeds for properties (a), (b) and (c).

use super::harness::{run, FaultMix, Scenario};
use super::*;
use crate::clocks::VersionVector;
use std::sync::Arc;
use synod_core::testing::{sent, TestNode};
use synod_core::{ClientId, Effect, NodeId};
use synod_sim::assert_seeds;

const CLIENT: ClientId = ClientId(7);

fn node(me: u32, nodes: u32, props: BucketProps) -> TestNode<Dynamo> {
    let mut cfg = DynamoConfig::new((0..nodes).map(NodeId));
    cfg.default_bucket = props;
    let mut node = TestNode::new(
        NodeId(me),
        Dynamo::new(NodeId(me), cfg, Arc::new(DynamoCounters::default())),
        1,
    );
    node.start();
    node
}

fn put(key: &Key, value: &str, context: VersionVector) -> DynamoMsg {
    DynamoMsg::Put {
        key: key.clone(),
        context,
        value: Sibling::Value(value.as_bytes().to_vec()),
        quorum: Quorum::default(),
    }
}

fn get(key: &Key) -> DynamoMsg {
    DynamoMsg::Get {
        key: key.clone(),
        quorum: Quorum::default(),
    }
}

fn replies(effects: &[Effect<DynamoMsg, DynamoTimer>]) -> Vec<DynamoMsg> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reply { msg, .. } => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn values(msg: &DynamoMsg) -> (Vec<String>, VersionVector) {
    match msg {
        DynamoMsg::GetReply { siblings, context } => {
            let mut v: Vec<String> = siblings
                .iter()
                .map(|s| match s {
                    Sibling::Value(b) => String::from_utf8_lossy(b).into_owned(),
                    Sibling::Tombstone => "<deleted>".into(),
                })
                .collect();
            v.sort();
            (v, context.clone())
        }
        other => panic!("expected a GetReply, got {other:?}"),
    }
}

const SOLO: BucketProps = BucketProps { n: 1, r: 1, w: 1 };

/// §4.4 with DVVs: two writes with the same (empty) context are concurrent and both kept;
/// a write with the context that saw both supersedes both.
#[test]
fn concurrent_writes_become_siblings_and_a_context_write_supersedes_them() {
    let mut n = node(0, 1, SOLO);
    let key = Key::new("b", "k");
    n.deliver(CLIENT, put(&key, "x", VersionVector::new()));
    n.deliver(CLIENT, put(&key, "y", VersionVector::new()));
    let (vals, context) = values(&replies(&n.deliver(CLIENT, get(&key)))[0]);
    assert_eq!(vals, ["x", "y"]);
    n.deliver(CLIENT, put(&key, "z", context));
    let (vals, _) = values(&replies(&n.deliver(CLIENT, get(&key)))[0]);
    assert_eq!(vals, ["z"]);
}

/// A stale context supersedes only what it saw: a write concurrent with it survives.
#[test]
fn a_stale_context_supersedes_only_what_it_saw() {
    let mut n = node(0, 1, SOLO);
    let key = Key::new("b", "k");
    n.deliver(CLIENT, put(&key, "x", VersionVector::new()));
    let (_, seen_x) = values(&replies(&n.deliver(CLIENT, get(&key)))[0]);
    n.deliver(CLIENT, put(&key, "y", VersionVector::new()));
    n.deliver(CLIENT, put(&key, "x2", seen_x));
    let (vals, _) = values(&replies(&n.deliver(CLIENT, get(&key)))[0]);
    assert_eq!(vals, ["x2", "y"], "y was not seen, so it is kept beside x2");
}

/// Deletes are tombstones with a context: they supersede what they saw, not more.
#[test]
fn a_delete_is_a_tombstone_that_supersedes_what_it_saw() {
    let mut n = node(0, 1, SOLO);
    let key = Key::new("b", "k");
    n.deliver(CLIENT, put(&key, "x", VersionVector::new()));
    let (_, context) = values(&replies(&n.deliver(CLIENT, get(&key)))[0]);
    n.deliver(
        CLIENT,
        DynamoMsg::Put {
            key: key.clone(),
            context,
            value: Sibling::Tombstone,
            quorum: Quorum::default(),
        },
    );
    let (vals, context) = values(&replies(&n.deliver(CLIENT, get(&key)))[0]);
    assert_eq!(vals, ["<deleted>"]);
    assert!(
        !context.is_empty(),
        "the tombstone keeps the causal context"
    );
}

/// §4.5: the coordinator replies only after W − 1 other replicas acknowledged, and it sends
/// the object to the other N − 1 members of the preference list.
#[test]
fn a_write_waits_for_w_acknowledgements_from_the_preference_list() {
    let props = BucketProps { n: 3, r: 2, w: 3 };
    let key = Key::new("b", "k");
    // Coordinate at an owner so that its own copy counts.
    let probe = node(0, 5, props);
    let owners = probe.actor.owners(&key, 3);
    let mut n = node(owners[0].0, 5, props);
    let effects = n.deliver(CLIENT, put(&key, "v", VersionVector::new()));
    assert!(replies(&effects).is_empty(), "W = 3 needs two more acks");
    let mut to: Vec<NodeId> = sent(&effects)
        .into_iter()
        .filter(|(_, m)| matches!(m, DynamoMsg::Replicate { .. }))
        .map(|(t, _)| t)
        .collect();
    to.sort();
    let mut expected = owners[1..].to_vec();
    expected.sort();
    assert_eq!(to, expected);
    let request = sent(&effects)
        .into_iter()
        .find_map(|(_, m)| match m {
            DynamoMsg::Replicate { request, .. } => Some(request),
            _ => None,
        })
        .unwrap();
    let e1 = n.deliver(owners[1], DynamoMsg::ReplicateAck { request });
    assert!(replies(&e1).is_empty());
    let e2 = n.deliver(owners[2], DynamoMsg::ReplicateAck { request });
    assert!(matches!(replies(&e2)[..], [DynamoMsg::PutReply { .. }]));
}

/// §4.6 sloppy quorum: an owner that has gone silent is replaced by the next healthy node
/// on the ring, which then hands the object back when the owner is heard from again.
#[test]
fn a_silent_owner_is_replaced_by_a_fallback_that_hands_the_object_back() {
    let props = BucketProps::default();
    let key = Key::new("b", "k");
    let probe = node(0, 5, props);
    let walk = probe.actor.owners(&key, 5);
    let coordinator = walk[0];
    let silent = walk[1];
    let mut n = node(coordinator.0, 5, props);
    n.advance(Duration::from_secs(1));
    // Everyone but `silent` is heard from.
    for &p in &walk {
        if p != silent && p != coordinator {
            n.deliver(
                p,
                DynamoMsg::Ping {
                    members: BTreeMap::new(),
                },
            );
        }
    }
    let effects = n.deliver(CLIENT, put(&key, "v", VersionVector::new()));
    let mut to: Vec<NodeId> = sent(&effects).into_iter().map(|(t, _)| t).collect();
    to.sort();
    let mut expected = vec![walk[2], walk[3]];
    expected.sort();
    assert_eq!(
        to, expected,
        "the fallback {} stands in for {silent}",
        walk[3]
    );

    // The fallback holds a key it does not own: its handoff loop pushes it to the owners
    // that are up, including `silent` once it is heard from.
    let fallback = walk[3];
    let mut f = node(fallback.0, 5, props);
    let object = n.actor.object(&key).unwrap().clone();
    f.deliver(
        coordinator,
        DynamoMsg::Replicate {
            request: 1,
            key: key.clone(),
            object,
        },
    );
    let effects = f.fire(DynamoTimer::Handoff);
    let handed: Vec<NodeId> = sent(&effects)
        .into_iter()
        .filter(|(_, m)| matches!(m, DynamoMsg::Handoff { .. }))
        .map(|(t, _)| t)
        .collect();
    assert!(handed.contains(&silent), "{handed:?}");
}

/// Objects and the node's membership survive a crash (after the sync).
#[test]
fn objects_survive_a_restart() {
    let mut n = node(0, 1, SOLO);
    let key = Key::new("b", "k");
    n.deliver(CLIENT, put(&key, "x", VersionVector::new()));
    n.deliver(CLIENT, DynamoMsg::Leave);
    n.storage.sync();
    let cfg = DynamoConfig {
        default_bucket: SOLO,
        ..DynamoConfig::new([NodeId(0)])
    };
    n.crash_and_restart(Dynamo::new(
        NodeId(0),
        cfg,
        Arc::new(DynamoCounters::default()),
    ));
    assert!(n.actor.object(&key).is_some());
    assert!(!n.actor.is_active(), "the leave was durable");
}

/// Bad quorum parameters are a clear error, not a panic.
#[test]
fn a_bad_quorum_is_refused_with_a_reason() {
    let mut n = node(0, 3, BucketProps::default());
    let key = Key::new("b", "k");
    for quorum in [
        Quorum {
            n: Some(4),
            ..Quorum::default()
        },
        Quorum {
            r: Some(0),
            ..Quorum::default()
        },
        Quorum {
            n: Some(2),
            w: Some(3),
            ..Quorum::default()
        },
    ] {
        let effects = n.deliver(
            CLIENT,
            DynamoMsg::Get {
                key: key.clone(),
                quorum,
            },
        );
        assert!(
            matches!(&replies(&effects)[..], [DynamoMsg::Failed { reason }] if !reason.is_empty()),
            "{quorum:?}"
        );
    }
}

fn replay(mix: FaultMix) -> impl Fn(u64) -> String + Sync {
    move |seed| {
        format!(
            "synod sim dynamo --faults {} --first-seed {seed} --seeds 1",
            mix.name()
        )
    }
}

/// (c) with R + W > N and no faults, reads see every write acknowledged before them; (a)
/// and (b) hold too.
#[test]
fn without_faults_reads_see_the_latest_acknowledged_write() {
    assert_seeds(
        0..8,
        |seed| run(&Scenario::new(seed, FaultMix::None)).map(|_| ()),
        replay(FaultMix::None),
    );
}

/// (a) and (b) under partitions, crashes, churn and all of them together.
#[test]
fn no_acknowledged_write_is_lost_and_replicas_converge_under_faults() {
    for mix in [
        FaultMix::Partitions,
        FaultMix::Crashes,
        FaultMix::Churn,
        FaultMix::All,
    ] {
        assert_seeds(
            0..6,
            |seed| {
                let mut s = Scenario::new(seed, mix);
                s.duration = Duration::from_secs(2);
                run(&s).map(|_| ())
            },
            replay(mix),
        );
    }
}

/// The checker can fail: a coordinator that ignores the client's context (last write
/// wins) loses acknowledged concurrent writes, and check (a) says so.
#[test]
fn last_write_wins_loses_writes_and_the_checker_catches_it() {
    let caught = (0..6).any(|seed| {
        let mut s = Scenario::new(seed, FaultMix::None);
        s.variant = Variant::LastWriteWins;
        s.duration = Duration::from_secs(2);
        matches!(run(&s), Err(e) if e.contains("was lost"))
    });
    assert!(caught, "no seed showed the lost update of last-write-wins");
}

/// Check (c) can fail, and quorum intersection is what makes it pass (§4.5: "setting R
/// and W such that R + W > N yields a quorum-like system"). On the same seeds, the same
/// slow, jittery network and the same two hot keys under eight clients, R = W = 1
/// (R + W = N - 1) lets reads miss acknowledged writes: a replica answers before the
/// coordinator's copy reaches it. With R = W = 2 every read quorum meets every write
/// quorum and no read is stale (`run` fails a fault-free run with any stale read when
/// R + W > N).
#[test]
fn with_r_plus_w_not_above_n_some_read_is_stale() {
    let scenario = |seed, bucket| {
        let mut s = Scenario::new(seed, FaultMix::None);
        s.bucket = bucket;
        s.slow_network = true;
        s.keys = 2;
        s.clients = 8;
        s
    };
    let weak = BucketProps { n: 3, r: 1, w: 1 };
    let stale: Vec<(u64, u64)> = (0..4)
        .map(|seed| {
            let o = run(&scenario(seed, weak)).expect("R = W = 1 still keeps (a) and (b)");
            (o.stale_reads, o.reads)
        })
        .collect();
    eprintln!("R = W = 1, (stale, reads) per seed: {stale:?}");
    assert!(
        stale.iter().map(|s| s.0).sum::<u64>() > 0,
        "R = W = 1 should let some read miss an acknowledged write: {stale:?}"
    );
    assert_seeds(
        0..4,
        |seed| run(&scenario(seed, BucketProps::default())).map(|_| ()),
        |seed| format!("cargo test -p synod-protocols dynamo::tests::with_r_plus_w (seed {seed})"),
    );
}

fn delete(key: &Key, context: VersionVector) -> DynamoMsg {
    DynamoMsg::Put {
        key: key.clone(),
        context,
        value: Sibling::Tombstone,
        quorum: Quorum::default(),
    }
}

fn put_dot(effects: &[Effect<DynamoMsg, DynamoTimer>]) -> crate::clocks::Dot {
    match &replies(effects)[..] {
        [DynamoMsg::PutReply { dot, .. }] => *dot,
        other => panic!("expected a PutReply, got {other:?}"),
    }
}

/// A tombstone is reaped only after the delay, and the key's next write gets a dot of a
/// fresh actor epoch, so a context from before the delete cannot supersede it (KV679).
#[test]
fn a_reaped_key_is_written_again_under_a_new_epoch() {
    let mut n = node(0, 1, SOLO);
    let key = Key::new("b", "k");
    let first = put_dot(&n.deliver(CLIENT, put(&key, "x", VersionVector::new())));
    assert_eq!(actor_parts(first.node), (NodeId(0), 0));
    let (_, old_context) = values(&replies(&n.deliver(CLIENT, get(&key)))[0]);
    n.deliver(CLIENT, delete(&key, old_context.clone()));
    // The sweep starts a round; with one node it goes straight to the delay.
    let effects = n.fire(DynamoTimer::Handoff);
    let round = effects
        .iter()
        .find_map(|e| match e {
            Effect::SetTimer {
                key: DynamoTimer::Reap(r),
                after,
            } => Some((*r, *after)),
            _ => None,
        })
        .expect("a collection round for the tombstone");
    assert_eq!(round.1, Duration::from_secs(3), "Riak's default delay");
    assert!(n.actor.object(&key).is_some(), "not before the delay");
    n.fire(DynamoTimer::Reap(round.0));
    assert!(n.actor.object(&key).is_none(), "reaped after the delay");

    let again = put_dot(&n.deliver(CLIENT, put(&key, "y", VersionVector::new())));
    assert_eq!(actor_parts(again.node), (NodeId(0), 1), "a fresh epoch");
    assert_ne!(again, first);
    // A client still holding the context of `x` writes: `y` is not something it saw.
    n.deliver(CLIENT, put(&key, "z", old_context));
    let (vals, _) = values(&replies(&n.deliver(CLIENT, get(&key)))[0]);
    assert_eq!(vals, ["y", "z"], "the old context must not supersede y");
}

/// A restart is a new incarnation with a new actor epoch, and the epoch is durable.
#[test]
fn a_restarted_node_draws_dots_of_a_new_epoch() {
    let mut n = node(0, 1, SOLO);
    let key = Key::new("b", "k");
    n.deliver(CLIENT, put(&key, "x", VersionVector::new()));
    n.storage.sync();
    for epoch in 1..=2 {
        let cfg = DynamoConfig {
            default_bucket: SOLO,
            ..DynamoConfig::new([NodeId(0)])
        };
        n.crash_and_restart(Dynamo::new(
            NodeId(0),
            cfg,
            Arc::new(DynamoCounters::default()),
        ));
        n.storage.sync();
        assert_eq!(n.actor.epoch(), epoch);
    }
    let dot = put_dot(&n.deliver(CLIENT, put(&key, "y", VersionVector::new())));
    assert_eq!(actor_parts(dot.node), (NodeId(0), 2));
}

/// A collection round needs every node: one that holds more than the tombstone (here a
/// write the delete did not see) refuses, and nobody reaps.
#[test]
fn a_node_holding_more_than_the_tombstone_stops_the_round() {
    let mut n = node(0, 3, BucketProps { n: 3, r: 1, w: 1 });
    // Only a key's first owner starts its round: take a key node 0 comes first for.
    let key = (0..100)
        .map(|i| Key::new("b", format!("k{i}")))
        .find(|k| n.actor.bucket_owners(k).first() == Some(&NodeId(0)))
        .expect("node 0 is the first owner of some key");
    n.deliver(CLIENT, delete(&key, VersionVector::new()));
    let effects = n.fire(DynamoTimer::Handoff);
    let prepares: Vec<(NodeId, DynamoMsg)> = sent(&effects)
        .into_iter()
        .filter(|(_, m)| matches!(m, DynamoMsg::ReapPrepare { .. }))
        .collect();
    assert_eq!(prepares.len(), 2, "every other node is asked: {prepares:?}");
    let DynamoMsg::ReapPrepare { round, .. } = prepares[0].1 else {
        unreachable!()
    };
    n.deliver(
        NodeId(1),
        DynamoMsg::ReapReady {
            round,
            ok: true,
            object: None,
        },
    );
    let mut newer = Object::new();
    newer
        .update(
            &VersionVector::new(),
            Sibling::Value(b"w".to_vec()),
            NodeId(2),
        )
        .unwrap();
    n.deliver(
        NodeId(2),
        DynamoMsg::ReapReady {
            round,
            ok: false,
            object: Some(newer),
        },
    );
    n.advance(Duration::from_secs(10));
    n.fire(DynamoTimer::Reap(round));
    let object = n.actor.object(&key).expect("no reap without every node");
    assert_eq!(
        object.len(),
        2,
        "the refusing node's write joined the tombstone"
    );
}

/// (d) holds under every fault mix, and tombstones are really reaped during the load
/// (keys rotate, so they are written again after their reap).
#[test]
fn tombstones_are_reaped_and_nothing_comes_back() {
    let reaped = std::sync::atomic::AtomicU64::new(0);
    assert_seeds(
        0..6,
        |seed| {
            let o = run(&Scenario::new(seed, FaultMix::None))?;
            reaped.fetch_add(o.tombstones_reaped, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        },
        replay(FaultMix::None),
    );
    let reaped = reaped.into_inner();
    assert!(
        reaped >= 6,
        "too few tombstones reaped to test anything: {reaped}"
    );
}

/// The checker catches a coordinator that keeps its actor id after reaping a key
/// (Riak's KV679): it gives out a dot again, and an old context can supersede a new write.
#[test]
fn reusing_dots_after_a_reap_is_caught() {
    let caught = (0..6).any(|seed| {
        let mut s = Scenario::new(seed, FaultMix::None);
        s.variant = Variant::ReuseDots;
        matches!(run(&s), Err(e) if e.contains("given out twice"))
    });
    assert!(caught, "no seed showed a reused dot");
}

/// The checker catches a node that reaps its tombstone without asking every other node:
/// a replica that missed the delete brings the superseded value back.
#[test]
fn reaping_without_asking_every_node_is_caught() {
    let caught = (0..6).any(|seed| {
        let mut s = Scenario::new(seed, FaultMix::Partitions);
        s.variant = Variant::ReapWithoutQuorum;
        s.duration = Duration::from_secs(2);
        matches!(run(&s), Err(e) if e.contains("is back"))
    });
    assert!(caught, "no seed showed a resurrected value");
}

/// A coordinator overlaps its own fsync with the replicas' only while it draws dots of
/// the epoch it started with (durable before any input): after an epoch change in the
/// same incarnation, `Replicate` waits for the sync.
#[test]
fn replicate_leaves_before_the_sync_only_in_the_start_epoch() {
    let props = BucketProps { n: 3, r: 2, w: 2 };
    let key = Key::new("b", "k");
    let probe = node(0, 5, props);
    let owners = probe.actor.owners(&key, 3);
    let mut n = node(owners[0].0, 5, props);
    let replicates = |effects: &[Effect<DynamoMsg, DynamoTimer>]| -> (usize, usize) {
        effects.iter().fold((0, 0), |(early, late), e| match e {
            Effect::SendUnsynced {
                msg: DynamoMsg::Replicate { .. },
                ..
            } => (early + 1, late),
            Effect::Send {
                msg: DynamoMsg::Replicate { .. },
                ..
            } => (early, late + 1),
            _ => (early, late),
        })
    };
    let first = n.deliver(CLIENT, put(&key, "v", VersionVector::new()));
    assert_eq!(replicates(&first), (2, 0), "start epoch: before the sync");
    // As if this key had been reaped in this epoch: coordinating it moves to a new one.
    n.actor.reaped_this_epoch.insert(key.clone());
    let second = n.deliver(CLIENT, put(&key, "w", VersionVector::new()));
    assert_eq!(n.actor.epoch(), n.actor.start_epoch + 1);
    assert_eq!(replicates(&second), (0, 2), "a new epoch: after the sync");
    let third = n.deliver(CLIENT, put(&key, "x", VersionVector::new()));
    assert_eq!(
        replicates(&third),
        (0, 2),
        "for the rest of the incarnation"
    );
}
