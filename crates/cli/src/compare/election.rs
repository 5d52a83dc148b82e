//! `synod compare election`.

use super::{chart, matches, progress, ElectionCompare};
use anyhow::{anyhow, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use std::process::ExitCode;
use std::time::Duration;
use synod_core::NodeId;
use synod_protocols::election::bully::{Bully, BullyConfig};
use synod_protocols::election::candidate_ring::CandidateRing;
use synod_protocols::election::chang_roberts::ChangRoberts;
use synod_protocols::election::LeaderElection;
use synod_sim::{stream_rng, Sim, SimConfig};

fn total_messages<A: LeaderElection>(sim: &Sim<A>) -> u64 {
    sim.actors().map(|(_, a)| a.counters().messages_sent).sum()
}

fn all_follow<A: LeaderElection>(sim: &Sim<A>, leader: NodeId) -> bool {
    sim.actors()
        .all(|(_, a)| a.leader() == Some(leader) && !a.electing())
}

/// Step until `done` holds, for at most `limit`, without healing (a crashed leader must
/// stay crashed).
fn run_until<A: LeaderElection>(
    sim: &mut Sim<A>,
    limit: Duration,
    done: impl Fn(&Sim<A>) -> bool,
) -> Result<()> {
    let deadline = sim.now() + limit;
    while !done(sim) {
        if sim.now() >= deadline {
            return Err(anyhow!("no leader by {deadline:?}"));
        }
        sim.run_for(Duration::from_millis(1))
            .map_err(|f| anyhow!("{f}"))?;
    }
    Ok(())
}

/// Bully messages when the leader (the top node) crashes and only `initiator` notices, the
/// setup of the protocol crate's worst-case test. Counts every election message sent
/// after the crash, including those addressed to the crashed node; heartbeats excluded.
fn bully_after_leader_crash(seed: u64, nodes: u32, initiator: u32) -> Result<u64> {
    let mut sim = Sim::new(SimConfig::new(seed, nodes), move |me: NodeId| {
        let mut config = BullyConfig::default();
        if me != NodeId(initiator) {
            config.leader_timeout = Duration::from_secs(3600);
        }
        Bully::new((0..nodes).map(NodeId), config)
    });
    let top = NodeId(nodes - 1);
    let next = NodeId(nodes - 2);
    run_until(&mut sim, Duration::from_secs(2), |s| all_follow(s, top))?;
    sim.run_for(Duration::from_millis(200))
        .map_err(|f| anyhow!("{f}"))?;
    // The top node's counters leave with it.
    let before: u64 = sim
        .actors()
        .filter(|&(id, _)| id != top)
        .map(|(_, a)| a.counters().messages_sent)
        .sum();
    sim.crash(top);
    run_until(&mut sim, Duration::from_secs(2), |s| all_follow(s, next))?;
    sim.run_for(Duration::from_millis(200))
        .map_err(|f| anyhow!("{f}"))?;
    Ok(total_messages(&sim) - before)
}

/// The exact bully count for a single initiator `i` when the top node has crashed:
/// with m = N−1−i, m(m+1)/2 elections (every node from i up to N−2 asks every higher
/// id), (m−1)m/2 answers, and N−2 coordinator messages. For i = 0 this is
/// N(N−1)/2 + (N−1)(N−2)/2 + (N−2).
fn bully_formula(nodes: u32, initiator: u32) -> u64 {
    let m = u64::from(nodes - 1 - initiator);
    m * (m + 1) / 2 + (m - 1) * m / 2 + u64::from(nodes - 2)
}

/// Run a ring election where every node initiates; returns election messages sent by
/// everyone, including the announcement round.
fn ring_election<A: LeaderElection>(
    seed: u64,
    ring: Vec<NodeId>,
    factory: impl Fn(NodeId, &[NodeId], bool) -> A + 'static,
) -> Result<u64> {
    let nodes = ring.len() as u32;
    let highest = ring.iter().copied().max().unwrap_or_default();
    let mut sim = Sim::new(SimConfig::new(seed, nodes), move |me: NodeId| {
        factory(me, &ring, true)
    });
    sim.run_liveness(Duration::ZERO, Duration::from_secs(60), move |s| {
        all_follow(s, highest)
    })
    .map_err(|f| anyhow!("{f}"))?;
    sim.run_for(Duration::from_millis(100))
        .map_err(|f| anyhow!("{f}"))?;
    Ok(total_messages(&sim))
}

fn harmonic(n: u32) -> f64 {
    (1..=n).map(|k| 1.0 / f64::from(k)).sum()
}

struct Row {
    case: &'static str,
    nodes: u32,
    measured: f64,
    textbook: String,
    exact: Option<f64>,
}

const CASES: [&str; 6] = [
    "bully, lowest initiates (worst)",
    "bully, random initiator (avg)",
    "Chang-Roberts, random rings (avg)",
    "Chang-Roberts, decreasing ring (worst)",
    "Chang-Roberts, increasing ring (best)",
    "candidate ring, all initiate",
];

pub(super) fn run(cmd: ElectionCompare) -> Result<ExitCode> {
    let samples = u64::from(cmd.samples);
    let per_n = 2 + 2 * samples + 3;
    let bar = progress(per_n * cmd.nodes.len() as u64);
    let mut rows = Vec::new();
    for &n in &cmd.nodes {
        let nf = f64::from(n);
        bar.set_message(format!("bully N={n}"));
        let worst =
            bully_after_leader_crash(cmd.seed, n, 0).map_err(|e| anyhow!("bully N={n}: {e}"))?;
        bar.inc(2);
        rows.push(Row {
            case: CASES[0],
            nodes: n,
            measured: worst as f64,
            textbook: format!(
                "O(N^2): N(N-1)/2+(N-1)(N-2)/2+(N-2) = {}",
                bully_formula(n, 0)
            ),
            exact: Some(bully_formula(n, 0) as f64),
        });
        let mut rng = stream_rng(cmd.seed, 601);
        let (mut total, mut formula) = (0u64, 0u64);
        for sample in 0..samples {
            let initiator = rng.gen_range(0..n - 1);
            total += bully_after_leader_crash(cmd.seed.wrapping_add(sample), n, initiator)
                .map_err(|e| anyhow!("bully N={n} initiator {initiator}: {e}"))?;
            formula += bully_formula(n, initiator);
            bar.inc(1);
        }
        rows.push(Row {
            case: CASES[1],
            nodes: n,
            measured: total as f64 / samples as f64,
            textbook: format!(
                "same formula over the drawn initiators = {:.1}",
                formula as f64 / samples as f64
            ),
            exact: Some(formula as f64 / samples as f64),
        });

        bar.set_message(format!("ring elections N={n}"));
        let cr = |me: NodeId, ring: &[NodeId], i: bool| ChangRoberts::new(me, ring, i);
        let mut total = 0u64;
        for sample in 0..samples {
            let mut ring: Vec<NodeId> = (0..n).map(NodeId).collect();
            ring.shuffle(&mut rng);
            // Subtract the N `Elected` messages: the textbook counts election messages.
            total += ring_election(cmd.seed.wrapping_add(sample), ring, cr)
                .map_err(|e| anyhow!("Chang-Roberts N={n}: {e}"))?
                - u64::from(n);
            bar.inc(1);
        }
        rows.push(Row {
            case: CASES[2],
            nodes: n,
            measured: total as f64 / samples as f64,
            textbook: format!("~N*H_N = {:.1}", nf * harmonic(n)),
            exact: None,
        });
        let decreasing: Vec<NodeId> = (0..n).rev().map(NodeId).collect();
        let worst = ring_election(cmd.seed, decreasing, cr)? - u64::from(n);
        bar.inc(1);
        rows.push(Row {
            case: CASES[3],
            nodes: n,
            measured: worst as f64,
            textbook: format!("N(N+1)/2 = {}", n * (n + 1) / 2),
            exact: Some(f64::from(n * (n + 1) / 2)),
        });
        let increasing: Vec<NodeId> = (0..n).map(NodeId).collect();
        let best = ring_election(cmd.seed, increasing, cr)? - u64::from(n);
        bar.inc(1);
        rows.push(Row {
            case: CASES[4],
            nodes: n,
            measured: best as f64,
            textbook: format!("2N-1 = {}", 2 * n - 1),
            exact: Some(f64::from(2 * n - 1)),
        });
        let ring: Vec<NodeId> = (0..n).map(NodeId).collect();
        let candidate = ring_election(cmd.seed, ring, |me, ring: &[NodeId], i| {
            CandidateRing::new(me, ring, i)
        })
        .map_err(|e| anyhow!("candidate ring N={n}: {e}"))?;
        bar.inc(1);
        rows.push(Row {
            case: CASES[5],
            nodes: n,
            measured: candidate as f64,
            textbook: format!("2N per initiator: 2N^2 = {}", 2 * n * n),
            exact: Some(f64::from(2 * n * n)),
        });
    }
    bar.finish_and_clear();

    println!(
        "leader election: seed {}, fault-free LAN, {} samples per average",
        cmd.seed, cmd.samples
    );
    println!(
        "Bully counts Election, Answer and Coordinator after the leader crashes (heartbeats \
         excluded). Chang-Roberts counts Election messages only, every node initiating; add N \
         for the Elected round. The candidate ring counts both rounds."
    );
    println!();
    println!(
        "{:<40} {:>3} | {:>10} | {:<48} {:>7}",
        "algorithm, case", "N", "messages", "textbook", "matches"
    );
    for r in &rows {
        let verdict = r.exact.map_or("-", |theory| matches(r.measured, theory));
        println!(
            "{:<40} {:>3} | {:>10.1} | {:<48} {:>7}",
            r.case, r.nodes, r.measured, r.textbook, verdict
        );
    }
    if let Some(path) = &cmd.chart {
        let series: Vec<chart::Series> = CASES
            .iter()
            .map(|&case| chart::Series {
                name: case.to_string(),
                points: rows
                    .iter()
                    .filter(|r| r.case == case)
                    .map(|r| (f64::from(r.nodes), r.measured))
                    .collect(),
            })
            .collect();
        chart::draw(path, "Messages per election", &series)?;
        println!("chart written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
