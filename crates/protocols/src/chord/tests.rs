//! Chord's properties over many seeds (ToN §IV), plus the broken variant the checks catch.

use super::harness::*;
use super::*;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;
use synod_core::testing::TestNode;
use synod_core::{ClientId, Effect, NodeId};
use synod_sim::{assert_seeds, stream_rng, swarm_net, NetConfig, Sim, SimConfig};

fn replay(test: &'static str) -> impl Fn(u64) -> String + Sync {
    move |seed| format!("SYNOD_SEED={seed} cargo test -p synod-protocols chord::tests::{test}")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A network drawn from the seed, with at most 5% loss so that 50 ms timeouts are rare.
fn net(seed: u64) -> NetConfig {
    let mut n = swarm_net(seed);
    n.loss = n.loss.min(0.02);
    n
}

fn ring(seed: u64, n: u32, base: ChordConfig) -> Result<Sim<Chord>, String> {
    let mut cfg = SimConfig::new(seed, n);
    cfg.net = net(seed);
    let mut sim = new_ring(cfg, base, Duration::from_millis(20));
    sim.set_max_events(50_000_000);
    run_until_converged(&mut sim, Duration::from_millis(500), secs(300))?;
    Ok(sim)
}

/// Send `requests` from fresh clients to random live nodes and return the replies by
/// request index. A client whose request or reply was lost (the test networks lose up to
/// 2% of messages) or that got `Failed` tries again, up to five rounds of `wait`.
fn requests(
    sim: &mut Sim<Chord>,
    seed: u64,
    first_client: u64,
    requests: Vec<ChordMsg>,
    wait: Duration,
) -> Result<BTreeMap<u64, ChordMsg>, String> {
    const ROUND: u64 = 100_000;
    let mut rng = stream_rng(seed, 0x7e57 + first_client);
    let mut got: BTreeMap<u64, ChordMsg> = BTreeMap::new();
    let done = |m: Option<&ChordMsg>| m.is_some_and(|m| !matches!(m, ChordMsg::Failed { .. }));
    for round in 0..5u64 {
        let live: Vec<NodeId> = live_ring(sim).iter().map(|p| p.node).collect();
        let mut sent = false;
        for (i, msg) in requests.iter().enumerate() {
            if done(got.get(&(i as u64))) {
                continue;
            }
            let node = *live.choose(&mut rng).ok_or("no live node")?;
            sim.client_send(
                ClientId(first_client + round * ROUND + i as u64),
                node,
                msg.clone(),
            );
            sent = true;
        }
        if !sent {
            break;
        }
        sim.run_for(wait).map_err(|f| f.to_string())?;
        for (c, _, m) in sim.take_replies() {
            let i = (c.0 - first_client) % ROUND;
            if !done(got.get(&i)) {
                got.insert(i, m);
            }
        }
    }
    Ok(got)
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

fn put_all(sim: &mut Sim<Chord>, seed: u64, keys: u64) -> Result<(), String> {
    let puts = (0..keys)
        .map(|i| ChordMsg::Put {
            key: key(i),
            value: value(i),
        })
        .collect();
    let replies = requests(sim, seed, 1_000, puts, secs(3))?;
    for i in 0..keys {
        match replies.get(&i) {
            Some(ChordMsg::PutOk { .. }) => {}
            other => return Err(format!("put of key {i}: {other:?}")),
        }
    }
    Ok(())
}

fn get_all(sim: &mut Sim<Chord>, seed: u64, keys: u64, client: u64) -> Result<(), String> {
    let gets = (0..keys).map(|i| ChordMsg::Get { key: key(i) }).collect();
    let replies = requests(sim, seed, client, gets, secs(3))?;
    for i in 0..keys {
        match replies.get(&i) {
            Some(ChordMsg::GetOk { value: Some(v), .. }) if *v == value(i) => {}
            other => return Err(format!("key {i} lost: get answered {other:?}")),
        }
    }
    Ok(())
}

/// Every key is held by its true owner (migration and handoff put it there).
fn owners_hold_their_keys(sim: &Sim<Chord>, keys: u64) -> Result<(), String> {
    for i in 0..keys {
        let owner = true_owner(sim, ChordId::of_key(&key(i))).ok_or("empty ring")?;
        let held = sim
            .actor(owner.node)
            .and_then(|a| a.item(&key(i)))
            .is_some();
        if !held {
            return Err(format!("key {i}'s owner {} does not hold it", owner.node));
        }
    }
    Ok(())
}

/// ToN Theorem IV.3: once joins stop, stabilize and fix_fingers make every successor list,
/// predecessor and finger correct.
#[test]
fn ring_converges_after_joins() {
    assert_seeds(
        0..64,
        |seed| ring(seed, 4 + (seed % 17) as u32, fast_config()).map(|_| ()),
        replay("ring_converges_after_joins"),
    );
}

/// ToN §IV-E: after nodes crash and restart, the successor lists route around the dead
/// ones and the restarted nodes rejoin; the ring converges again.
#[test]
fn ring_converges_again_after_crashes_and_restarts() {
    assert_seeds(
        0..48,
        |seed| {
            let n = 6 + (seed % 10) as u32;
            let mut sim = ring(seed, n, fast_config())?;
            let mut rng = stream_rng(seed, 1);
            let mut nodes: Vec<NodeId> = sim.node_ids().collect();
            nodes.shuffle(&mut rng);
            let down = &nodes[..rng.gen_range(1..=3)];
            for &node in down {
                sim.crash(node);
            }
            sim.run_for(secs(2)).map_err(|f| f.to_string())?;
            let deadline = sim.now() + secs(120);
            run_until_converged(&mut sim, Duration::from_millis(500), deadline)
                .map_err(|e| format!("with {down:?} down: {e}"))?;
            for &node in down {
                sim.restart(node);
            }
            let deadline = sim.now() + secs(120);
            run_until_converged(&mut sim, Duration::from_millis(500), deadline)
                .map_err(|e| format!("after restarting {down:?}: {e}"))?;
            Ok(())
        },
        replay("ring_converges_again_after_crashes_and_restarts"),
    );
}

/// Chord §4.3, Theorem 2: on a stable ring every lookup ends at the key's successor, in
/// O(log N) hops.
#[test]
fn lookups_reach_the_true_owner_once_stable() {
    assert_seeds(
        0..48,
        |seed| {
            let n = 8 + (seed % 25) as u32;
            // Routing itself is under test: no loss, no duplicates between client and node.
            let mut cfg = SimConfig::new(seed, n);
            cfg.net = NetConfig {
                loss: 0.0,
                duplicate: 0.0,
                ..net(seed)
            };
            let mut sim = new_ring(cfg, fast_config(), Duration::from_millis(20));
            Lookups::install(&mut sim);
            run_until_converged(&mut sim, Duration::from_millis(500), secs(300))?;
            let mut lookups = Lookups::new(seed);
            lookups.run(&mut sim, 100, Duration::from_millis(2), secs(2))?;
            if lookups.outcomes.len() != 100 || lookups.wrong() > 0 {
                let bad = lookups.outcomes.iter().find(|o| !o.correct);
                return Err(format!(
                    "{} of 100 answered, {} wrong, e.g. {bad:?}",
                    lookups.outcomes.len(),
                    lookups.wrong()
                ));
            }
            let bound = 2 * (32 - n.leading_zeros()) + 1;
            let worst = lookups.outcomes.iter().map(|o| o.route.hops).max();
            if worst > Some(bound) {
                return Err(format!(
                    "a lookup took {worst:?} hops; the bound is {bound}"
                ));
            }
            Ok(())
        },
        replay("lookups_reach_the_true_owner_once_stable"),
    );
}

fn crash_scenario(seed: u64, replicas: usize) -> Result<(), String> {
    let n = 8 + (seed % 9) as u32;
    let base = ChordConfig {
        replicas,
        ..fast_config()
    };
    let mut sim = ring(seed, n, base)?;
    put_all(&mut sim, seed, 40)?;
    // Two replica periods, so that every key reached its successors.
    sim.run_for(secs(1)).map_err(|f| f.to_string())?;
    // The hardest two crashes: the owner of a key and its successor, its first replica.
    let owner = true_owner(&sim, ChordId::of_key(&key(0))).ok_or("empty ring")?;
    let next =
        successor_in(&live_ring(&sim), ChordId(owner.id.0.wrapping_add(1))).ok_or("empty ring")?;
    let down = &[owner.node, next.node];
    for &node in down {
        sim.crash(node);
    }
    let deadline = sim.now() + secs(120);
    run_until_converged(&mut sim, Duration::from_millis(500), deadline)?;
    sim.run_for(secs(1)).map_err(|f| f.to_string())?;
    get_all(&mut sim, seed, 40, 5_000).map_err(|e| format!("after crashing {down:?}: {e}"))?;
    owners_hold_their_keys(&sim, 40)
}

/// ToN §IV-E, replication: with keys on 2 successors besides the owner, crashing 2
/// adjacent nodes (a key's owner and its first replica) loses no key, and the new owners
/// hold them.
#[test]
fn no_replicated_key_is_lost_when_nodes_crash() {
    assert_seeds(
        0..48,
        |seed| crash_scenario(seed, 2),
        replay("no_replicated_key_is_lost_when_nodes_crash"),
    );
}

/// The check above can fail: without replicas, crashing 2 nodes loses keys.
#[test]
fn without_replicas_the_check_catches_lost_keys() {
    for seed in 0..4 {
        assert!(
            crash_scenario(seed, 0).is_err(),
            "seed {seed}: no key was lost without replication"
        );
    }
}

fn migration_scenario(seed: u64, broken: bool) -> Result<(), String> {
    // Nodes 0..4 form the ring; 4..n join after the keys are stored.
    let n = 8 + (seed % 9) as u32;
    let mut cfg = SimConfig::new(seed, n);
    cfg.net = net(seed);
    let base = fast_config();
    let mut sim = Sim::new(cfg, move |node| {
        let mut c = node_config(&base, node.0, n, Duration::from_millis(20));
        if node.0 >= 4 {
            c.seeds = (0..4).map(NodeId).collect();
            c.join_delay = Duration::from_millis(100) * (node.0 - 4);
        }
        let mut chord = Chord::new(c);
        chord.broken_skip_migration = broken;
        chord
    });
    sim.set_max_events(50_000_000);
    // Nodes 4.. wait, crashed, until the keys are stored; a restart is their join.
    sim.start();
    for i in 4..n {
        sim.crash(NodeId(i));
    }
    run_until_converged(&mut sim, Duration::from_millis(500), secs(300))?;
    put_all(&mut sim, seed, 40)?;
    for i in 4..n {
        sim.restart(NodeId(i));
    }
    let deadline = sim.now() + secs(300);
    while live_ring(&sim).len() < n as usize && sim.now() < deadline {
        sim.run_for(Duration::from_millis(500))
            .map_err(|f| f.to_string())?;
    }
    run_until_converged(&mut sim, Duration::from_millis(500), deadline)?;
    if live_ring(&sim).len() != n as usize {
        return Err("not every node joined".into());
    }
    // Two replica periods: an anti-entropy round repairs a migration message lost on
    // the lossy network.
    sim.run_for(secs(1)).map_err(|f| f.to_string())?;
    owners_hold_their_keys(&sim, 40).map_err(|e| format!("after joins: {e}"))?;
    get_all(&mut sim, seed, 40, 5_000)?;
    // Two graceful leaves.
    let mut rng = stream_rng(seed, 3);
    let mut nodes: Vec<NodeId> = sim.node_ids().collect();
    nodes.shuffle(&mut rng);
    for (i, &node) in nodes[..2].iter().enumerate() {
        sim.client_send(ClientId(9_000 + i as u64), node, ChordMsg::Leave);
    }
    sim.run_for(secs(1)).map_err(|f| f.to_string())?;
    sim.take_replies();
    let deadline = sim.now() + secs(120);
    run_until_converged(&mut sim, Duration::from_millis(500), deadline)?;
    sim.run_for(secs(1)).map_err(|f| f.to_string())?;
    owners_hold_their_keys(&sim, 40).map_err(|e| format!("after leaves: {e}"))?;
    get_all(&mut sim, seed, 40, 10_000)
}

/// Chord §4.4 and ToN §IV-E: keys migrate to a joining node, and a leaving node hands its
/// keys to its successor: every key stays readable and sits at its true owner.
#[test]
fn keys_migrate_on_join_and_on_graceful_leave() {
    assert_seeds(
        0..48,
        |seed| migration_scenario(seed, false),
        replay("keys_migrate_on_join_and_on_graceful_leave"),
    );
}

/// The check above can fail: a successor that does not hand keys to a new predecessor
/// leaves keys away from their owner.
#[test]
fn skipping_migration_is_caught() {
    for seed in 0..3 {
        assert!(
            migration_scenario(seed, true).is_err(),
            "seed {seed}: keys reached their owners without migration"
        );
    }
}

/// The client face: a request to a node not on the ring, and a response-shaped message
/// sent as a request, get a clear failure, never a panic.
#[test]
fn bad_client_requests_get_a_clear_failure() {
    let mut node = TestNode::new(
        NodeId(1),
        Chord::new(ChordConfig::new(vec![NodeId(0)], false)),
        1,
    );
    node.start();
    let effects = node.deliver(ClientId(7), ChordMsg::Get { key: b"k".to_vec() });
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Reply { to: ClientId(7), msg: ChordMsg::Failed { reason, .. } }
            if reason.contains("not on the ring"))));
    let mut creator = TestNode::new(NodeId(0), Chord::new(ChordConfig::new(vec![], true)), 1);
    creator.start();
    let effects = creator.deliver(ClientId(8), ChordMsg::LeftRing);
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Reply { to: ClientId(8), msg: ChordMsg::Failed { reason, .. } }
            if reason.contains("not a client request"))));
    // Alone on the ring, the creator owns everything and answers at once.
    let effects = creator.deliver(
        ClientId(9),
        ChordMsg::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
    );
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Reply { to: ClientId(9), msg: ChordMsg::PutOk { route, .. } } if route.hops == 0)));
}

/// Identifier arithmetic on the circle, including the wrap past zero.
#[test]
fn intervals_wrap_around_the_circle() {
    let (a, b) = (ChordId(u64::MAX - 5), ChordId(10));
    assert!(ChordId(0).in_open(a, b) && ChordId(u64::MAX).in_open(a, b));
    assert!(!a.in_open(a, b) && !b.in_open(a, b) && b.in_half_open(a, b));
    assert!(!ChordId(11).in_half_open(a, b));
    assert!(ChordId(3).in_open(a, a) && !a.in_open(a, a) && a.in_half_open(a, a));
    assert_eq!(ChordId(1).finger_start(63), ChordId(1 + (1 << 63)));
}

/// The direct model reproduces Fig. 10's shape: about ½·log2 N hops.
#[test]
fn model_path_length_is_about_half_log_n() {
    for (n, lo, hi) in [(64usize, 2.5, 3.5), (1024, 4.5, 5.5)] {
        let s = path_length_model(n, 4_000, 1);
        assert!((lo..hi).contains(&s.mean), "N={n}: mean path {}", s.mean);
    }
}
