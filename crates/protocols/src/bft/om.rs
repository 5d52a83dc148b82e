//! OM(m), the oral messages algorithm (Lamport, Shostak, Pease 1982, §3), as
//! exponential information gathering over paths.
//!
//! `heard[q][p]` is what general q was told along path p: p starts at the commander and
//! its last general is the one who told q. In round 1 the commander tells every
//! lieutenant its order; in round r+1 every general q relays `heard[q][p]`, for every
//! path p of length r that q is not on, to every general not on `p·q`. A loyal lieutenant
//! then evaluates the recursion of OM(m) step 3 bottom-up.

use super::{majority, Order, Outcome, Scenario, Strategy};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use synod_core::{ActorRng, NodeId};

type Path = Vec<NodeId>;

/// What `traitor` sends to `to` along `path` (which ends with the traitor) when the
/// truth is `honest`. `None`: nothing (the receiver then uses the default).
fn traitor_says(
    scenario: &Scenario,
    strategy: Strategy,
    rng: &mut ActorRng,
    to: NodeId,
    honest: Order,
) -> Option<Order> {
    match strategy {
        Strategy::Silent => None,
        Strategy::RandomValue { .. } => Some(if rng.gen_bool(0.5) {
            Order::Attack
        } else {
            Order::Retreat
        }),
        Strategy::TwoFaced => Some(if to.0.is_multiple_of(2) {
            honest
        } else {
            honest.opposite()
        }),
        Strategy::Colluding => Some(if scenario.colluders_attack_half(to) {
            Order::Attack
        } else {
            Order::Retreat
        }),
    }
}

/// Run OM(`scenario.m`) and return each loyal lieutenant's decision and the message
/// count of every round.
pub fn run(scenario: &Scenario) -> Outcome {
    let n = scenario.n;
    let m = scenario.m;
    let generals: Vec<NodeId> = (0..n).map(NodeId).collect();
    // One stream per traitor, from its strategy's seed.
    let mut rngs: BTreeMap<NodeId, ActorRng> = scenario
        .traitors
        .iter()
        .map(|(g, s)| {
            let seed = match s {
                Strategy::RandomValue { seed } => *seed,
                _ => 0,
            };
            (*g, ActorRng::seed_from_u64(seed ^ (u64::from(g.0) << 32)))
        })
        .collect();
    let mut heard: BTreeMap<NodeId, BTreeMap<Path, Order>> = BTreeMap::new();
    let mut messages_per_round = Vec::new();

    // The paths of the current round, each with its last general as sender; round 1 has
    // the single path [commander] with the commander's own order.
    let mut frontier: Vec<Path> = vec![vec![scenario.commander]];
    for round in 1..=m + 1 {
        let mut sent = 0u64;
        let mut next = Vec::new();
        for path in &frontier {
            let sender = *path.last().unwrap_or(&scenario.commander);
            // What the sender holds for this path: its order (commander) or what it was
            // told along the path without itself.
            let honest = if path.len() == 1 {
                scenario.order
            } else {
                heard
                    .get(&sender)
                    .and_then(|h| h.get(&path[..path.len() - 1]))
                    .copied()
                    .unwrap_or(Order::Retreat)
            };
            for &to in &generals {
                if path.contains(&to) {
                    continue;
                }
                let said = match scenario.traitors.get(&sender) {
                    None => Some(honest),
                    Some(strategy) => {
                        let rng = rngs.get_mut(&sender);
                        match rng {
                            Some(rng) => traitor_says(scenario, *strategy, rng, to, honest),
                            None => Some(honest),
                        }
                    }
                };
                if said.is_some() {
                    sent += 1;
                }
                // A3: a missing message is noticed, and the default used.
                let value = said.unwrap_or(Order::Retreat);
                heard.entry(to).or_default().insert(path.clone(), value);
                if round <= m {
                    let mut longer = path.clone();
                    longer.push(to);
                    next.push(longer);
                }
            }
        }
        messages_per_round.push(sent);
        frontier = next;
    }

    let mut decisions = BTreeMap::new();
    for l in scenario.lieutenants() {
        if scenario.loyal(l) {
            let h = heard.remove(&l).unwrap_or_default();
            decisions.insert(l, decide(&h, &generals, l, &[scenario.commander], m));
        }
    }
    Outcome {
        decisions,
        messages_per_round,
        rejected: 0,
    }
}

/// The value lieutenant `me` decides in the OM(`k`) instance whose commander is the last
/// general of `path` (OM(m) step 3: the majority of what the commander said and what
/// each other lieutenant's OM(k−1) instance decided).
fn decide(
    heard: &BTreeMap<Path, Order>,
    generals: &[NodeId],
    me: NodeId,
    path: &[NodeId],
    k: u32,
) -> Order {
    let direct = heard.get(path).copied().unwrap_or(Order::Retreat);
    if k == 0 {
        return direct;
    }
    let mut values = vec![direct];
    let mut sub = path.to_vec();
    for &j in generals {
        if j == me || path.contains(&j) {
            continue;
        }
        sub.push(j);
        values.push(decide(heard, generals, me, &sub, k - 1));
        sub.pop();
    }
    majority(&values)
}
