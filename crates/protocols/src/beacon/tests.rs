use super::*;
use synod_core::testing::{sent, TestNode};
use synod_core::{ClientId, Effect, Storage};
use synod_sim::{assert_seeds, FaultConfig, NetConfig, Sim, SimConfig};

fn node() -> TestNode<Beacon> {
    TestNode::new(
        NodeId(0),
        Beacon::new(vec![NodeId(1), NodeId(2)], Duration::from_millis(100)),
        1,
    )
}

#[test]
fn incarnation_strictly_increases_across_restarts() {
    let mut n = node();
    n.start();
    assert_eq!(n.actor.incarnation(), 1);
    n.storage.sync();
    n.crash_and_restart(Beacon::new(vec![], Duration::from_millis(100)));
    assert_eq!(n.actor.incarnation(), 2);
    // An unsynced bump is lost in a crash, so the same number is chosen again: that is
    // safe only because the announcement of the lost one never left (group commit).
    n.crash_and_restart(Beacon::new(vec![], Duration::from_millis(100)));
    assert_eq!(n.actor.incarnation(), 2);
}

#[test]
fn start_announces_the_new_incarnation_to_every_peer() {
    let mut n = node();
    let effects = n.start();
    let beats = sent(&effects);
    assert_eq!(beats.len(), 2);
    assert!(beats.iter().all(|(_, m)| *m
        == BeaconMsg::Heartbeat {
            incarnation: 1,
            seq: 1
        }));
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::SetTimer {
            key: BeaconTimer::Beat,
            ..
        }
    )));
}

#[test]
fn an_append_is_acknowledged_with_its_log_index() {
    let mut n = node();
    n.start();
    let effects = n.deliver(ClientId(7), BeaconMsg::Append(b"x".to_vec()));
    assert_eq!(
        effects,
        vec![Effect::Reply {
            to: ClientId(7),
            msg: BeaconMsg::Appended(LogIndex(1))
        }]
    );
    assert_eq!(n.storage.read(LogIndex(1)), Some(b"x".to_vec()));
}

#[test]
fn an_oversized_append_is_refused() {
    let mut n = node();
    n.start();
    let effects = n.deliver(
        ClientId(7),
        BeaconMsg::Append(vec![0; MAX_APPEND_BYTES + 1]),
    );
    assert!(matches!(
        &effects[..],
        [Effect::Reply {
            msg: BeaconMsg::Refused(_),
            ..
        }]
    ));
    assert_eq!(n.storage.log_bounds(), (LogIndex(1), LogIndex(1)));
}

#[test]
fn a_stale_heartbeat_does_not_roll_a_view_back() {
    let mut n = node();
    n.start();
    n.deliver(
        NodeId(1),
        BeaconMsg::Heartbeat {
            incarnation: 3,
            seq: 9,
        },
    );
    n.deliver(
        NodeId(1),
        BeaconMsg::Heartbeat {
            incarnation: 2,
            seq: 50,
        },
    );
    n.deliver(
        NodeId(1),
        BeaconMsg::Heartbeat {
            incarnation: 3,
            seq: 4,
        },
    );
    let view = n.actor.views()[&NodeId(1)];
    assert_eq!((view.incarnation, view.seq), (3, 9));
}

/// No peer ever holds an incarnation above what its owner has on disk, over crashes,
/// partitions and loss.
#[test]
fn no_peer_hears_an_incarnation_that_a_crash_could_lose() {
    assert_seeds(
        0..40,
        |seed| {
            let mut cfg = SimConfig::new(seed, 3);
            cfg.net = NetConfig::lossy();
            cfg.faults = FaultConfig::chaos();
            let mut sim = Sim::new(cfg, |me: NodeId| {
                let peers = (0..3).map(NodeId).filter(|&p| p != me).collect();
                Beacon::new(peers, Duration::from_millis(20))
            });
            sim.invariant("heard incarnation is durable", |sim| {
                for owner in sim.node_ids() {
                    let stored: u64 = sim
                        .storage(owner)
                        .and_then(|s| s.get_value(INCARNATION_KEY).ok().flatten())
                        .unwrap_or(0);
                    for (peer, actor) in sim.actors() {
                        if let Some(view) = actor.views().get(&owner) {
                            if view.incarnation > stored {
                                return Err(format!(
                                    "{peer} heard incarnation {} of {owner}, which holds {stored}",
                                    view.incarnation
                                ));
                            }
                        }
                    }
                }
                Ok(())
            });
            sim.run_for(Duration::from_secs(5))
                .map_err(|f| f.to_string())
        },
        |seed| {
            format!("SYNOD_SEED={seed} cargo test -p synod-protocols beacon::tests::no_peer_hears")
        },
    );
}
