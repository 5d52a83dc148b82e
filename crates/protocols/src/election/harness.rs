//! The simulation harness the ring-election suites share.

use super::LeaderElection;
use rand::seq::SliceRandom;
use rand::Rng;
use std::time::Duration;
use synod_core::NodeId;
use synod_sim::{assert_seeds, stream_rng, NetConfig, Sim, SimConfig};

/// Sum of every live node's election messages.
pub(crate) fn total_messages<A: LeaderElection>(sim: &Sim<A>) -> u64 {
    sim.actors().map(|(_, a)| a.counters().messages_sent).sum()
}

/// Every live node believes in `leader`, and nobody is still electing.
pub(crate) fn all_agree_on<A: LeaderElection>(sim: &Sim<A>, leader: NodeId) -> bool {
    sim.actors()
        .all(|(_, a)| a.leader() == Some(leader) && !a.electing())
}

/// Run a ring election on `ring` (travel order) with the given initiators, checking after
/// every event that nobody believes in a leader other than the largest id, until everyone
/// agrees on it.
pub(crate) fn run_ring<A: LeaderElection>(
    seed: u64,
    ring: Vec<NodeId>,
    initiators: Vec<bool>,
    factory: impl Fn(NodeId, &[NodeId], bool) -> A + 'static,
) -> Result<Sim<A>, String> {
    let nodes = ring.len() as u32;
    let highest = ring.iter().copied().max().unwrap_or_default();
    let mut cfg = SimConfig::new(seed, nodes);
    let mut net = NetConfig::lan();
    net.reorder = 0.3;
    cfg.net = net;
    let mut sim = Sim::new(cfg, move |me: NodeId| {
        factory(
            me,
            &ring,
            initiators.get(me.index()).copied().unwrap_or(false),
        )
    });
    sim.invariant("only the highest id is elected", move |sim: &Sim<A>| {
        for (node, a) in sim.actors() {
            if let Some(leader) = a.leader() {
                if leader != highest {
                    return Err(format!("{node} believes in {leader}, not {highest}"));
                }
            }
        }
        Ok(())
    });
    sim.run_liveness(Duration::ZERO, Duration::from_secs(10), move |sim| {
        all_agree_on(sim, highest)
    })
    .map_err(|f| f.to_string())?;
    // Let the last announcements land before counting.
    sim.run_for(Duration::from_secs(1))
        .map_err(|f| f.to_string())?;
    if !all_agree_on(&sim, highest) {
        return Err("agreement did not last".into());
    }
    Ok(sim)
}

/// 40 seeds: random ring order, random non-empty set of initiators, 2 to 24 nodes.
pub(crate) fn ring_suite<A: LeaderElection>(
    name: &'static str,
    factory: impl Fn(NodeId, &[NodeId], bool) -> A + Clone + Send + Sync + 'static,
) {
    assert_seeds(
        0..100,
        |seed| {
            let mut rng = stream_rng(seed, 77);
            let nodes = rng.gen_range(2..=24u32);
            let mut ring: Vec<NodeId> = (0..nodes).map(NodeId).collect();
            ring.shuffle(&mut rng);
            let mut initiators: Vec<bool> = (0..nodes).map(|_| rng.gen_bool(0.3)).collect();
            let first = rng.gen_range(0..nodes as usize);
            initiators[first] = true;
            run_ring(seed, ring, initiators, factory.clone()).map(|_| ())
        },
        move |seed| format!("SYNOD_SEED={seed} cargo test -p synod-protocols election::{name}"),
    );
}
