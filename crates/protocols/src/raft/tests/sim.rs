//! Raft under the simulator: invariants after every event, linearizability at the end,
//! liveness after healing.

use super::harness::{check_history, install_invariants, test_config, Kv, KvClients};
use crate::raft::state::Bug;
use crate::raft::{KvStateMachine, Raft, Role};
use std::time::Duration;
use synod_core::NodeId;
use synod_sim::{
    assert_seeds, swarm, swarm_faults, swarm_net, ClockConfig, FaultConfig, NetConfig, Sim,
    SimConfig, SwarmOptions,
};

/// Seeds of the swarm test in `cargo test`; `long_swarm` runs more.
const SWARM_SEEDS: u64 = 300;

fn replay(test: &'static str) -> impl Fn(u64) -> String + Sync {
    move |seed| {
        format!("SYNOD_SEED={seed} cargo test -p synod-protocols raft::tests::sim::{test} -- --exact --include-ignored")
    }
}

fn cluster(cfg: SimConfig, bug: Option<Bug>) -> Sim<Kv> {
    let voters = cfg.nodes;
    cluster_of(cfg, voters, bug)
}

/// A cluster whose initial voters are the first `voters` of `cfg.nodes` servers.
fn cluster_of(cfg: SimConfig, voters: u32, bug: Option<Bug>) -> Sim<Kv> {
    // Half the seeds snapshot and compact often.
    let snapshots = (cfg.seed / 2) % 2 == 1;
    let mut sim = Sim::new(cfg, move |_me: NodeId| {
        let mut raft = Raft::new(test_config(voters, snapshots), KvStateMachine::default());
        raft.bug = bug;
        raft
    });
    install_invariants(&mut sim);
    sim
}

/// Random fault mixes (partitions of every kind, crashes with torn unsynced writes,
/// pauses, clogged links), a lossy, duplicating, reordering network and drifting clocks.
fn swarm_scenario(seed: u64, bug: Option<Bug>) -> Result<(), String> {
    let nodes = match seed % 2 {
        0 => 3,
        _ => 5,
    };
    let mut cfg = SimConfig::new(seed, nodes);
    cfg.faults = swarm_faults(seed);
    cfg.net = swarm_net(seed);
    cfg.clocks = ClockConfig {
        max_skew: Duration::from_millis(500),
        max_drift_ppm: 200.0,
    };
    let mut sim = cluster(cfg, bug);
    sim.set_workload(KvClients::new(4, Duration::from_secs(5), seed % 3 < 1));
    sim.run_for(Duration::from_secs(6))
        .map_err(|f| f.to_string())?;
    check_history(&sim).map(|_| ())
}

#[test]
fn raft_keeps_figure_3_invariants_and_linearizability_under_swarm_faults() {
    assert_seeds(
        0..SWARM_SEEDS,
        |seed| swarm_scenario(seed, None),
        replay("raft_keeps_figure_3_invariants_and_linearizability_under_swarm_faults"),
    );
}

/// Liveness: after the faults heal, a leader is elected and every client completes an
/// operation within a bounded time.
fn liveness_scenario(seed: u64) -> Result<(), String> {
    let mut cfg = SimConfig::new(seed, 5);
    cfg.faults = FaultConfig::chaos();
    cfg.net = NetConfig::lossy();
    let mut sim = cluster(cfg, None);
    let heal = Duration::from_secs(2);
    sim.set_workload(KvClients::new(3, Duration::from_secs(60), false));
    let heal_ns = heal.as_nanos() as u64;
    sim.run_liveness(heal, heal + Duration::from_secs(3), move |sim| {
        let leader = sim.actors().any(|(_, r)| r.role() == Role::Leader);
        let clients = sim.workload::<KvClients>();
        leader && clients.is_some_and(|c| c.last_ok_at.iter().all(|&t| t > heal_ns))
    })
    .map_err(|f| f.to_string())?;
    check_history(&sim).map(|_| ())
}

#[test]
fn after_faults_heal_a_leader_is_elected_and_every_client_commits() {
    assert_seeds(
        0..20,
        liveness_scenario,
        replay("after_faults_heal_a_leader_is_elected_and_every_client_commits"),
    );
}

/// Run `scenario` with a deliberately broken server and return how many seeds failed.
fn failures_with(
    bug: Bug,
    seeds: std::ops::Range<u64>,
    scenario: fn(u64, Option<Bug>) -> Result<(), String>,
) -> usize {
    let options = SwarmOptions {
        progress: false,
        stop_after: 1,
        ..SwarmOptions::default()
    };
    let report = swarm(
        seeds,
        &options,
        |seed| scenario(seed, Some(bug)),
        |seed| format!("seed {seed}"),
    );
    report.failures.len()
}

#[test]
fn the_checks_catch_votes_granted_without_the_log_check() {
    assert!(
        failures_with(Bug::VoteWithoutLogCheck, 0..SWARM_SEEDS, swarm_scenario) > 0,
        "no seed caught a server that votes without the §5.4.1 check"
    );
}

/// §7: a follower that was down while the others compacted their logs catches up
/// through a snapshot sent in chunks, then through the log.
#[test]
fn a_lagging_follower_catches_up_through_a_chunked_snapshot() {
    assert_seeds(
        0..10,
        |seed| {
            let mut cfg = SimConfig::new(seed, 3);
            cfg.seed = seed | 2; // an odd seed/2: `cluster` turns snapshots on
            let mut sim = cluster(cfg, None);
            sim.set_workload(KvClients::new(3, Duration::from_secs(3), false));
            sim.run_for(Duration::from_millis(300))
                .map_err(|f| f.to_string())?;
            let lagging = sim
                .actors()
                .find(|(_, r)| r.role() != Role::Leader)
                .map(|(n, _)| n)
                .ok_or("no follower")?;
            sim.crash(lagging);
            sim.run_for(Duration::from_secs(2))
                .map_err(|f| f.to_string())?;
            sim.restart(lagging);
            sim.run_for(Duration::from_secs(2))
                .map_err(|f| f.to_string())?;
            let follower = sim.actor(lagging).ok_or("follower down")?;
            let leader = sim
                .actors()
                .find(|(_, r)| r.role() == Role::Leader)
                .map(|(_, r)| r)
                .ok_or("no leader")?;
            if follower.snapshot_index() == synod_core::LogIndex::ZERO {
                return Err("the follower never installed a snapshot".into());
            }
            if follower.state_machine() != leader.state_machine() {
                return Err("the follower's state differs from the leader's".into());
            }
            check_history(&sim).map(|_| ())
        },
        replay("a_lagging_follower_catches_up_through_a_chunked_snapshot"),
    );
}

/// Thesis ch. 4: single-server changes (add a learner, promote it once caught up,
/// remove a voter) cycling through a 4-server group under random faults keep every
/// invariant and linearizability.
fn membership_scenario(seed: u64) -> Result<(), String> {
    let mut cfg = SimConfig::new(seed, 4);
    cfg.faults = swarm_faults(seed);
    cfg.net = swarm_net(seed);
    let mut sim = cluster_of(cfg, 3, None);
    sim.set_workload(KvClients::new(3, Duration::from_secs(5), false).with_membership_changes(4));
    sim.run_for(Duration::from_secs(6))
        .map_err(|f| f.to_string())?;
    check_history(&sim).map(|_| ())
}

#[test]
fn membership_changes_keep_the_invariants_under_faults() {
    assert_seeds(
        0..100,
        membership_scenario,
        replay("membership_changes_keep_the_invariants_under_faults"),
    );
}

/// Without faults, the cycle of changes goes through: the outsider becomes a voter and
/// a former voter leaves, and clients keep committing.
#[test]
fn a_learner_catches_up_is_promoted_and_a_voter_is_removed() {
    assert_seeds(
        0..10,
        |seed| {
            let cfg = SimConfig::new(seed, 4);
            let mut sim = cluster_of(cfg, 3, None);
            sim.set_workload(
                KvClients::new(2, Duration::from_secs(3), false).with_membership_changes(4),
            );
            sim.run_for(Duration::from_millis(1500))
                .map_err(|f| f.to_string())?;
            let leader = sim
                .actors()
                .find(|(_, r)| r.role() == Role::Leader)
                .map(|(_, r)| r)
                .ok_or("no leader")?;
            let membership = leader.membership();
            if membership.voters == (0..3).map(NodeId).collect() {
                return Err(format!("the membership never changed: {membership:?}"));
            }
            check_history(&sim).map(|_| ())
        },
        replay("a_learner_catches_up_is_promoted_and_a_voter_is_removed"),
    );
}

/// One seed is one run: the same seed twice gives the same trace.
#[test]
fn a_seed_replays_exactly() {
    let run = |seed: u64| {
        let mut cfg = SimConfig::new(seed, 5);
        cfg.faults = FaultConfig::chaos();
        cfg.net = NetConfig::lossy();
        let mut sim = cluster(cfg, None);
        sim.trace_hash_only();
        sim.set_workload(KvClients::new(3, Duration::from_secs(2), true));
        sim.run_for(Duration::from_secs(2))
            .map_err(|f| f.to_string())?;
        sim.trace_hash().ok_or_else(|| "no trace".to_string())
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

/// Thesis §6.4.1: with leases on (and a drift bound of 1000 ppm above the simulator's
/// 200 ppm), reads served from the lease stay linearizable under faults.
fn lease_scenario(seed: u64, bug: Option<Bug>) -> Result<(), String> {
    let mut cfg = SimConfig::new(seed, 3);
    cfg.faults = swarm_faults(seed);
    cfg.net = swarm_net(seed);
    cfg.clocks = ClockConfig {
        max_skew: Duration::from_millis(500),
        max_drift_ppm: 200.0,
    };
    let mut sim = Sim::new(cfg, move |_me: NodeId| {
        let mut config = test_config(3, false);
        config.lease_read_max_drift_ppm = Some(1000);
        // The lease must not rely on CheckQuorum deposing a stale leader in time.
        config.check_quorum = false;
        let mut raft = Raft::new(config, KvStateMachine::default());
        raft.bug = bug;
        raft
    });
    install_invariants(&mut sim);
    sim.set_workload(KvClients::new(4, Duration::from_secs(5), seed % 2 < 1).with_readers(2));
    sim.run_for(Duration::from_secs(6))
        .map_err(|f| f.to_string())?;
    check_history(&sim).map(|_| ())
}

#[test]
fn lease_reads_stay_linearizable_under_faults_and_drift() {
    assert_seeds(
        0..100,
        |seed| lease_scenario(seed, None),
        replay("lease_reads_stay_linearizable_under_faults_and_drift"),
    );
}

#[test]
fn the_checks_catch_a_lease_that_outlives_the_election_timeout() {
    assert!(
        failures_with(Bug::LeaseTooLong, 0..100, lease_scenario) > 0,
        "no seed caught a read lease twenty times too long"
    );
}

/// The long run: `SYNOD_SEEDS=100000 cargo test --release -p synod-protocols long_swarm --
/// --ignored` runs every scenario above on that many seeds (until `synod sim raft` does).
#[test]
#[ignore]
fn long_swarm() {
    let count = std::env::var("SYNOD_SEEDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(5_000);
    assert_seeds(
        0..count,
        |seed| {
            swarm_scenario(seed, None)?;
            membership_scenario(seed)?;
            lease_scenario(seed, None)
        },
        replay("long_swarm"),
    );
}

/// Measurement, not a check: leader-election downtime after the leader crashes, as in
/// Figure 16 of the paper (5 servers, broadcast time about 15 ms, timeouts 150-300 ms).
/// `cargo test -p synod-protocols election_downtime -- --ignored --nocapture` prints the
/// distribution over `SYNOD_SEEDS` runs (default 1000), in virtual time.
#[test]
#[ignore]
fn election_downtime_after_a_leader_crash() {
    let count = std::env::var("SYNOD_SEEDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1_000);
    let mut downtimes: Vec<Duration> = Vec::new();
    for seed in 0..count {
        let mut cfg = SimConfig::new(seed, 5);
        cfg.net = NetConfig {
            min_latency: Duration::from_millis(6),
            latency_tail: Duration::from_micros(1500),
            ..NetConfig::lan()
        };
        let mut sim = Sim::new(cfg, |_me: NodeId| {
            let mut config = test_config(5, false);
            config.election_timeout = Duration::from_millis(150);
            config.heartbeat_interval = Duration::from_millis(30);
            Raft::new(config, KvStateMachine::default())
        });
        if sim.run_for(Duration::from_secs(2)).is_err() {
            continue;
        }
        let Some((leader, term)) = sim
            .actors()
            .find(|(_, r)| r.role() == Role::Leader)
            .map(|(n, r)| (n, r.current_term()))
        else {
            continue;
        };
        sim.crash(leader);
        let crashed_at = sim.now();
        while sim.now() < crashed_at + Duration::from_secs(30) {
            if !sim.step() {
                break;
            }
            let elected = sim
                .actors()
                .any(|(_, r)| r.role() == Role::Leader && r.current_term() > term);
            if elected {
                downtimes.push(sim.now() - crashed_at);
                break;
            }
        }
    }
    downtimes.sort();
    let at = |q: f64| downtimes[((downtimes.len() - 1) as f64 * q) as usize];
    eprintln!(
        "election downtime over {} runs: min {:?} p50 {:?} p90 {:?} p99 {:?} max {:?}",
        downtimes.len(),
        at(0.0),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}
