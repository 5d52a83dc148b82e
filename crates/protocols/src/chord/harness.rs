//! Simulation harness and the paper's experiments, shared by the tests and
//! `synod sim chord`.
//!
//! - Ground truth ([`true_owner`], [`check_ring`]) is computed from the live, joined
//!   actors: the simulator can see every node, a real node cannot.
//! - [`Lookups`] sends lookups to random live nodes and judges each answer against the
//!   true ring.
//! - The experiments: [`path_length_model`] and [`load`] use a direct model of the ring
//!   (sorted identifiers and exact finger tables, no messages), as the paper's own
//!   simulator does for its large-N figures; [`path_length_actor`],
//!   [`simultaneous_failures`] and [`churn`] run the real [`Chord`] actor in the
//!   simulator.

use super::{Chord, ChordConfig, ChordId, ChordMsg, Peer, Route, ID_BITS};
use crate::hashing::{hash_u64, Ring};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;
use synod_core::{ClientId, NodeId};
use synod_sim::{stream_rng, ClientCtl, NetConfig, Sim, SimConfig, Workload};

/// Live nodes on the ring, sorted by identifier.
pub fn live_ring(sim: &Sim<Chord>) -> Vec<Peer> {
    let mut ring: Vec<Peer> = sim
        .actors()
        .filter(|(_, a)| a.is_joined())
        .map(|(_, a)| a.peer())
        .collect();
    ring.sort_by_key(|p| p.id);
    ring
}

/// The first peer of the sorted `ring` at or after `target`.
pub fn successor_in(ring: &[Peer], target: ChordId) -> Option<Peer> {
    if ring.is_empty() {
        return None;
    }
    let i = ring.partition_point(|p| p.id < target);
    Some(ring[if i == ring.len() { 0 } else { i }])
}

/// The node that truly owns `target` now.
pub fn true_owner(sim: &Sim<Chord>, target: ChordId) -> Option<Peer> {
    successor_in(&live_ring(sim), target)
}

/// Every running node has joined, and every joined node's successor list, predecessor and
/// fingers match the true ring.
pub fn check_ring(sim: &Sim<Chord>) -> Result<(), String> {
    if let Some((node, _)) = sim.actors().find(|(_, a)| !a.is_joined() && !a.has_left()) {
        return Err(format!("{node} is up but not on the ring"));
    }
    let ring = live_ring(sim);
    let n = ring.len();
    if n == 0 {
        return Err("no node is on the ring".into());
    }
    for (i, me) in ring.iter().enumerate() {
        let Some(actor) = sim.actor(me.node) else {
            continue;
        };
        let r = actor.config().successor_list.min(n - 1);
        let want: Vec<Peer> = (1..=r).map(|k| ring[(i + k) % n]).collect();
        let have: Vec<Peer> = actor.successors().to_vec();
        if have != want || (n == 1 && !actor.successors().is_empty()) {
            return Err(format!(
                "{}: successors {:?}, want {:?}",
                me.node,
                nodes(&have),
                nodes(&want)
            ));
        }
        let pred = (n > 1).then(|| ring[(i + n - 1) % n]);
        if n > 1 && actor.predecessor() != pred {
            return Err(format!(
                "{}: predecessor {:?}, want {:?}",
                me.node,
                actor.predecessor().map(|p| p.node),
                pred.map(|p| p.node)
            ));
        }
        if n > 1 {
            let succ = ring[(i + 1) % n];
            for f in 0..ID_BITS {
                let start = me.id.finger_start(f);
                let truth = successor_in(&ring, start).unwrap_or(*me);
                let have = actor.finger(f).unwrap_or(succ);
                let expected_self = truth.node == me.node;
                if !expected_self && have != truth && !start.in_half_open(me.id, succ.id) {
                    return Err(format!(
                        "{}: finger {f} is {}, want {}",
                        me.node, have.node, truth.node
                    ));
                }
            }
        }
    }
    Ok(())
}

fn nodes(list: &[Peer]) -> Vec<u32> {
    list.iter().map(|p| p.node.0).collect()
}

/// The configuration the harness gives node `i` of `n`: node 0 creates the ring, node
/// `i > 0` joins through the nodes started before it, after `i × stagger`.
pub fn node_config(base: &ChordConfig, i: u32, n: u32, stagger: Duration) -> ChordConfig {
    let mut c = base.clone();
    c.create = i == 0;
    c.seeds = if i == 0 {
        (1..n).map(NodeId).collect()
    } else {
        (0..i).map(NodeId).collect()
    };
    c.join_delay = stagger * i;
    c
}

/// A simulation of `n` Chord nodes joining one after another, `stagger` apart.
pub fn new_ring(cfg: SimConfig, base: ChordConfig, stagger: Duration) -> Sim<Chord> {
    let n = cfg.nodes;
    Sim::new(cfg, move |node| {
        Chord::new(node_config(&base, node.0, n, stagger))
    })
}

/// Run until [`check_ring`] passes, checking every `every`, or fail at `deadline`.
pub fn run_until_converged(
    sim: &mut Sim<Chord>,
    every: Duration,
    deadline: Duration,
) -> Result<Duration, String> {
    loop {
        if check_ring(sim).is_ok() {
            return Ok(sim.now());
        }
        if sim.now() >= deadline {
            return Err(format!(
                "ring not converged by {deadline:?}: {}",
                check_ring(sim).err().unwrap_or_default()
            ));
        }
        sim.run_for(every).map_err(|f| f.to_string())?;
    }
}

/// How one lookup ended.
#[derive(Clone, Debug, PartialEq)]
pub struct LookupOutcome {
    /// The identifier looked up.
    pub target: ChordId,
    /// Hops and timeouts (as far as it got, for a failure).
    pub route: Route,
    /// Whether it ended at the true owner (false for a failure).
    pub correct: bool,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

/// The client side of the lookup experiments: answers to [`ChordMsg::Locate`] are
/// judged the moment they arrive, against the true ring at that moment.
#[derive(Default)]
pub struct Judge {
    /// Every answer, in order of arrival.
    pub outcomes: Vec<LookupOutcome>,
}

impl Workload<Chord> for Judge {
    fn on_start(&mut self, _ctl: &mut ClientCtl<'_, Chord>) {}

    fn on_reply(
        &mut self,
        ctl: &mut ClientCtl<'_, Chord>,
        _client: ClientId,
        _from: NodeId,
        msg: ChordMsg,
    ) {
        let outcome = match msg {
            ChordMsg::Located {
                target,
                owner,
                route,
            } => {
                let sim = ctl.sim();
                let truth = true_owner(sim, target);
                LookupOutcome {
                    target,
                    route,
                    correct: truth == Some(owner),
                    failure: None,
                }
            }
            ChordMsg::Failed { reason, route } => LookupOutcome {
                target: ChordId(0),
                route,
                correct: false,
                failure: Some(reason),
            },
            _ => return,
        };
        self.outcomes.push(outcome);
    }
}

/// Sends lookups for random identifiers, each to a random live node on the ring; a
/// [`Judge`] installed on the simulation judges the answers.
pub struct Lookups {
    rng: synod_core::ActorRng,
    sent: u64,
    /// The outcome of every answered lookup, in order of answer.
    pub outcomes: Vec<LookupOutcome>,
}

impl Lookups {
    /// A lookup driver whose choices come from its own stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Lookups {
            rng: stream_rng(seed, 0xc405),
            sent: 0,
            outcomes: Vec::new(),
        }
    }

    /// Lookups sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Send one lookup for a random identifier to a random live node on the ring.
    pub fn send_one(&mut self, sim: &mut Sim<Chord>) {
        let live: Vec<NodeId> = live_ring(sim).iter().map(|p| p.node).collect();
        let target = ChordId(self.rng.gen());
        if let Some(&node) = live.choose(&mut self.rng) {
            self.sent += 1;
            sim.client_send(ClientId(self.sent), node, ChordMsg::Locate { target });
        }
    }

    /// Install the judge on `sim`; call before the simulation starts.
    pub fn install(sim: &mut Sim<Chord>) {
        sim.set_workload(Judge::default());
    }

    /// Take in every answer the judge has seen so far.
    pub fn collect(&mut self, sim: &Sim<Chord>) {
        if let Some(judge) = sim.workload::<Judge>() {
            let seen = self.outcomes.len();
            self.outcomes
                .extend_from_slice(judge.outcomes.get(seen..).unwrap_or(&[]));
        }
    }

    /// Why lookups failed, with counts ("wrong owner": answered by the wrong node).
    pub fn failure_reasons(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for o in self.outcomes.iter().filter(|o| !o.correct) {
            let why = o.failure.clone().unwrap_or_else(|| "wrong owner".into());
            *out.entry(why).or_default() += 1;
        }
        out
    }

    /// Lookups that ended at the wrong node or failed.
    pub fn wrong(&self) -> u64 {
        self.outcomes.iter().filter(|o| !o.correct).count() as u64
    }

    /// Mean of `f` over the answered lookups.
    pub fn mean(&self, f: impl Fn(&LookupOutcome) -> f64) -> f64 {
        self.outcomes.iter().map(f).sum::<f64>() / (self.outcomes.len().max(1)) as f64
    }

    /// Send `count` lookups `interval` apart, collecting as they go, then wait `drain`.
    pub fn run(
        &mut self,
        sim: &mut Sim<Chord>,
        count: u64,
        interval: Duration,
        drain: Duration,
    ) -> Result<(), String> {
        for _ in 0..count {
            self.send_one(sim);
            sim.run_for(interval).map_err(|f| f.to_string())?;
            self.collect(sim);
        }
        sim.run_for(drain).map_err(|f| f.to_string())?;
        self.collect(sim);
        Ok(())
    }
}

/// Mean and percentiles of a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// 1st percentile.
    pub p1: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// Summarize `values` (sorted in place).
    pub fn of(values: &mut [f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let at = |q: f64| values[((q * (n - 1) as f64).round() as usize).min(n - 1)];
        Summary {
            count: n as u64,
            mean: values.iter().sum::<f64>() / n as f64,
            p1: at(0.01),
            p99: at(0.99),
            max: values[n - 1],
        }
    }
}

// ---- experiment 1: path length (Fig. 10) ----------------------------------------------

/// Path length in a direct model of a stable ring of `n` nodes with exact fingers (the
/// SIGCOMM 2001 algorithm: fingers and one successor, no messages): `lookups` lookups of
/// random keys from random nodes. The path length counts the nodes the lookup visits after
/// its origin up to the key's predecessor, which then names the owner (Fig. 10's measure;
/// add 1 to count the hop to the owner).
pub fn path_length_model(n: usize, lookups: u64, seed: u64) -> Summary {
    let mut rng = stream_rng(seed, 0xc401);
    let mut ids: Vec<u64> = (0..n).map(|_| rng.gen()).collect();
    ids.sort_unstable();
    ids.dedup();
    let n = ids.len();
    let succ_index = |x: u64| -> usize {
        let i = ids.partition_point(|&p| p < x);
        if i == n {
            0
        } else {
            i
        }
    };
    // fingers[k][i]: the node at or after ids[k] + 2^i, as an index.
    let fingers: Vec<Vec<u32>> = ids
        .iter()
        .map(|&id| {
            (0..ID_BITS)
                .map(|i| succ_index(id.wrapping_add(1u64 << i)) as u32)
                .collect()
        })
        .collect();
    let mut paths = Vec::with_capacity(lookups as usize);
    for _ in 0..lookups {
        let key: u64 = rng.gen();
        let mut at = rng.gen_range(0..n);
        let mut hops = 0u32;
        loop {
            let me = ids[at];
            let next = (at + 1) % n;
            if n == 1 || ChordId(key).in_half_open(ChordId(me), ChordId(ids[next])) {
                break;
            }
            // closest preceding finger of `key`.
            let mut best = next;
            for i in (0..ID_BITS as usize).rev() {
                let f = fingers[at][i] as usize;
                if ChordId(ids[f]).in_open(ChordId(me), ChordId(key)) {
                    best = f;
                    break;
                }
            }
            at = best;
            hops += 1;
        }
        paths.push(f64::from(hops));
    }
    Summary::of(&mut paths)
}

/// The same measure with the real actor: `n` nodes join, the ring converges, then
/// `lookups` lookups from random nodes. Returns the path lengths and whether every lookup
/// found the true owner.
pub fn path_length_actor(n: u32, lookups: u64, seed: u64) -> Result<(Summary, u64), String> {
    let base = fast_config();
    let mut sim = new_ring(SimConfig::new(seed, n), base, Duration::from_millis(20));
    Lookups::install(&mut sim);
    sim.set_max_events(200_000_000);
    run_until_converged(&mut sim, Duration::from_secs(1), Duration::from_secs(3600))?;
    let mut lookups_driver = Lookups::new(seed);
    lookups_driver.run(
        &mut sim,
        lookups,
        Duration::from_micros(500),
        Duration::from_secs(2),
    )?;
    let w = &lookups_driver;
    let wrong = w.wrong() + w.sent().saturating_sub(w.outcomes.len() as u64);
    let mut paths: Vec<f64> = w.outcomes.iter().map(|o| f64::from(o.route.hops)).collect();
    Ok((Summary::of(&mut paths), wrong))
}

/// A configuration for fast convergence in simulated time: stabilize every 200 ms.
pub fn fast_config() -> ChordConfig {
    ChordConfig {
        stabilize_interval: Duration::from_millis(200),
        fix_fingers_interval: Duration::from_millis(50),
        check_predecessor_interval: Duration::from_millis(200),
        replicate_interval: Duration::from_millis(400),
        rpc_timeout: Duration::from_millis(50),
        ..ChordConfig::new(Vec::new(), false)
    }
}

// ---- experiments 2 and 3: load balance (Fig. 8, Fig. 9) -------------------------------

/// Keys per node with `nodes` nodes of `vnodes` virtual nodes each and `keys` random keys,
/// as multiples of the mean: mean, 1st and 99th percentile, maximum.
pub fn load(nodes: u32, keys: u64, vnodes: u32, seed: u64) -> Summary {
    let seed_base = u64::from(seed as u32) << 32;
    let ring = Ring::with_members(vnodes, (0..nodes).map(|n| seed_base | u64::from(n)));
    let mut counts: BTreeMap<u64, u64> =
        (0..nodes).map(|n| (seed_base | u64::from(n), 0)).collect();
    let mut rng = stream_rng(seed, 0xc402);
    for _ in 0..keys {
        let h = hash_u64(rng.gen());
        if let Some(owner) = ring.owner(h) {
            *counts.entry(*owner).or_default() += 1;
        }
    }
    let mean = keys as f64 / f64::from(nodes.max(1));
    let mut ratios: Vec<f64> = counts.values().map(|&c| c as f64 / mean).collect();
    Summary::of(&mut ratios)
}

// ---- experiment 4: simultaneous failures (ToN Table II) ------------------------------

/// One row of the failure experiment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FailureRow {
    /// Fraction of nodes failed.
    pub fraction: f64,
    /// Lookups answered.
    pub lookups: u64,
    /// Mean path length.
    pub mean_path: f64,
    /// Mean timeouts per lookup.
    pub mean_timeouts: f64,
    /// Lookups that failed or ended at the wrong node.
    pub failed: u64,
    /// Simulated time the ring took to converge before the failure.
    pub converged_after: Duration,
    /// Why lookups failed, with counts.
    pub failure_reasons: BTreeMap<String, u64>,
}

/// ToN §V-C, Table II: a stable ring of `n` nodes with successor lists of `r`, then a
/// fraction `p` fails at once, and `lookups` lookups run at once, before stabilization can
/// repair anything (stabilize runs every 30 s on average; the lookups take about
/// 1 ms each to issue).
pub fn simultaneous_failures(
    n: u32,
    r: usize,
    p: f64,
    lookups: u64,
    seed: u64,
) -> Result<FailureRow, String> {
    let base = ChordConfig {
        successor_list: r,
        replicas: 0,
        rpc_retries: 0,
        stabilize_interval: Duration::from_secs(30),
        fix_fingers_interval: Duration::from_secs(15),
        check_predecessor_interval: Duration::from_secs(30),
        replicate_interval: Duration::from_secs(3600),
        rpc_timeout: Duration::from_millis(50),
        // A node answers with as many fingers and successors preceding the target as a
        // successor list holds, so that the origin can route around dead ones.
        candidates: r + 4,
        ..ChordConfig::new(Vec::new(), false)
    };
    let mut cfg = SimConfig::new(seed, n);
    cfg.net = NetConfig::lan();
    let mut sim = new_ring(cfg, base, Duration::from_millis(200));
    Lookups::install(&mut sim);
    sim.set_max_events(2_000_000_000);
    let converged_after = run_until_converged(
        &mut sim,
        Duration::from_secs(30),
        Duration::from_secs(48 * 3600),
    )?;
    let mut rng = stream_rng(seed, 0xc403);
    let mut all: Vec<NodeId> = sim.node_ids().collect();
    all.shuffle(&mut rng);
    let fail = ((f64::from(n) * p).round() as usize).min(all.len().saturating_sub(1));
    for &node in &all[..fail] {
        sim.crash(node);
    }
    let mut w = Lookups::new(seed);
    w.run(
        &mut sim,
        lookups,
        Duration::from_millis(1),
        Duration::from_secs(5),
    )?;
    let failed = w.wrong() + w.sent().saturating_sub(w.outcomes.len() as u64);
    Ok(FailureRow {
        fraction: p,
        lookups: w.sent(),
        mean_path: w.mean(|o| f64::from(o.route.hops)),
        mean_timeouts: w.mean(|o| f64::from(o.route.timeouts)),
        failed,
        converged_after,
        failure_reasons: w.failure_reasons(),
    })
}

// ---- experiment 5: churn (ToN Table III) ---------------------------------------------

/// One row of the churn experiment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChurnRow {
    /// Joins per second, and failures per second.
    pub rate: f64,
    /// Lookups answered.
    pub lookups: u64,
    /// Lookups that failed or ended at the wrong node.
    pub failed: u64,
    /// Lookups whose origin failed before answering (not counted as failures).
    pub lost_with_origin: u64,
    /// Mean path length.
    pub mean_path: f64,
    /// Mean timeouts per lookup.
    pub mean_timeouts: f64,
    /// Joins and failures injected.
    pub joins: u64,
    /// Failures injected.
    pub failures: u64,
    /// Why lookups failed, with counts.
    pub failure_reasons: BTreeMap<String, u64>,
}

/// ToN §V-D, Table III: `n` nodes on a stable ring, then nodes join and fail, each as a
/// Poisson process of `rate` per second, while one lookup per second runs from a random
/// live node; stabilize (and the other tasks) run every `stabilize` on average. A joining
/// node takes a fresh random identifier. `lookups` lookups in all.
pub fn churn(
    n: u32,
    rate: f64,
    lookups: u64,
    stabilize: Duration,
    seed: u64,
) -> Result<ChurnRow, String> {
    // Twice the nodes: the second half starts crashed and joins over time; a failed node
    // later rejoins as a new node with a new identifier.
    let slots = n * 2;
    let base = ChordConfig {
        successor_list: 20,
        replicas: 0,
        stabilize_interval: stabilize,
        fix_fingers_interval: stabilize,
        check_predecessor_interval: stabilize,
        replicate_interval: Duration::from_secs(3600 * 24),
        rpc_timeout: Duration::from_millis(500),
        rpc_retries: 0,
        fresh_id_on_restart: true,
        candidates: 24,
        ..ChordConfig::new(Vec::new(), false)
    };
    let mut cfg = SimConfig::new(seed, slots);
    cfg.net = NetConfig {
        min_latency: Duration::from_millis(10),
        latency_tail: Duration::from_millis(40),
        ..NetConfig::lan()
    };
    let stagger = stabilize / 20;
    let mut sim = Sim::new(cfg, move |node| {
        let mut c = base.clone();
        c.create = node.0 == 0;
        // Everyone may join through any node; dormant ones just do not answer.
        c.seeds = (0..n).map(NodeId).collect();
        c.join_delay = if node.0 < n {
            stagger * node.0
        } else {
            Duration::ZERO
        };
        Chord::new(c)
    });
    sim.set_max_events(4_000_000_000);
    Lookups::install(&mut sim);
    sim.start();
    for i in n..slots {
        sim.crash(NodeId(i));
    }
    run_until_converged(&mut sim, stabilize, stabilize * 2000)?;
    let mut w = Lookups::new(seed);
    let mut rng = stream_rng(seed, 0xc404);
    let end = sim.now() + Duration::from_secs(lookups);
    let mut next_lookup = sim.now();
    let (mut joins, mut failures) = (0u64, 0u64);
    let exp = |rng: &mut synod_core::ActorRng| {
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        Duration::from_secs_f64(-u.ln() / rate.max(1e-9))
    };
    let mut next_join = sim.now() + exp(&mut rng);
    let mut next_fail = sim.now() + exp(&mut rng);
    while sim.now() < end {
        let t = next_join.min(next_fail).min(next_lookup).min(end);
        sim.run_until(t).map_err(|f| f.to_string())?;
        w.collect(&sim);
        if sim.now() >= end {
            break;
        }
        if next_lookup <= t {
            w.send_one(&mut sim);
            next_lookup += Duration::from_secs(1);
            continue;
        }
        let ids: Vec<NodeId> = sim.node_ids().collect();
        if next_join <= next_fail {
            let dormant: Vec<NodeId> = ids.iter().copied().filter(|&n| !sim.is_up(n)).collect();
            if let Some(&node) = dormant.choose(&mut rng) {
                sim.restart(node);
                joins += 1;
            }
            next_join = sim.now() + exp(&mut rng);
        } else {
            let live: Vec<NodeId> = live_ring(&sim).iter().map(|p| p.node).collect();
            if live.len() > 2 {
                if let Some(&node) = live.choose(&mut rng) {
                    sim.crash(node);
                    failures += 1;
                }
            }
            next_fail = sim.now() + exp(&mut rng);
        }
    }
    sim.run_for(Duration::from_secs(10))
        .map_err(|f| f.to_string())?;
    w.collect(&sim);
    let answered = w.outcomes.len() as u64;
    Ok(ChurnRow {
        rate,
        lookups: answered,
        failed: w.wrong(),
        lost_with_origin: w.sent().saturating_sub(answered),
        mean_path: w.mean(|o| f64::from(o.route.hops)),
        mean_timeouts: w.mean(|o| f64::from(o.route.timeouts)),
        joins,
        failures,
        failure_reasons: w.failure_reasons(),
    })
}
