//! The simulator's own promises: determinism, group commit, faults, modes, and errors.

use std::time::Duration;
use synod_core::{ClientId, NodeId};
use synod_sim::fixtures::{no_peer_heard_undurable_value, DurableCounter, PingPong, PingPongMsg};
use synod_sim::{assert_seeds, swarm_faults, swarm_net, FaultConfig, NetConfig, Sim, SimConfig};

fn chaotic(seed: u64, nodes: u32) -> SimConfig {
    let mut cfg = SimConfig::new(seed, nodes);
    cfg.net = NetConfig::lossy();
    cfg.faults = FaultConfig::chaos();
    cfg
}

fn pingpong_trace_hash(seed: u64) -> (u64, u64) {
    let mut sim = Sim::new(chaotic(seed, 4), |_| PingPong::new(4, 3));
    sim.trace_hash_only();
    sim.run_for(Duration::from_secs(2))
        .expect("no invariants to fail");
    (
        sim.trace_hash().expect("tracing is on"),
        sim.stats().delivered,
    )
}

#[test]
fn same_seed_gives_the_same_trace_hash() {
    for seed in 0..5 {
        assert_eq!(
            pingpong_trace_hash(seed),
            pingpong_trace_hash(seed),
            "seed {seed}"
        );
    }
}

#[test]
fn different_seeds_give_different_trace_hashes() {
    let hashes: std::collections::BTreeSet<u64> =
        (0..20).map(|s| pingpong_trace_hash(s).0).collect();
    assert_eq!(hashes.len(), 20);
}

fn counter_run(seed: u64, unsynced: bool) -> Result<(), String> {
    let mut cfg = SimConfig::new(seed, 3);
    cfg.faults = FaultConfig {
        crash: 1,
        partition: 0,
        pause: 0,
        clog: 0,
        mean_interval: Duration::from_millis(20),
        ..FaultConfig::chaos()
    };
    cfg.disk.min_sync = Duration::from_millis(2);
    let mut sim = Sim::new(cfg, move |_| DurableCounter::new(3, unsynced));
    sim.invariant(
        "no peer hears an undurable value",
        no_peer_heard_undurable_value,
    );
    sim.run_for(Duration::from_secs(2))
        .map_err(|f| f.to_string())
}

#[test]
fn held_output_waits_for_its_batch_to_be_durable() {
    assert_seeds(
        0..40,
        |seed| counter_run(seed, false),
        |seed| format!("SYNOD_SEED={seed} cargo test -p synod-sim --test simulator held_output"),
    );
}

#[test]
fn the_checker_catches_output_sent_before_the_sync() {
    let caught = (0..40)
        .filter(|&seed| counter_run(seed, true).is_err())
        .count();
    assert!(
        caught > 0,
        "send_unsynced of undurable state was never caught in 40 seeds"
    );
}

#[test]
fn a_partition_drops_messages_until_healed() {
    let mut sim = Sim::new(SimConfig::new(1, 2), |_| PingPong::new(2, 1));
    sim.partition(&[vec![NodeId(0)], vec![NodeId(1)]]);
    sim.run_for(Duration::from_millis(100)).unwrap();
    let delivered_during = sim.stats().delivered;
    assert_eq!(delivered_during, 0);
    assert!(sim.stats().dropped_partition >= 1);
    // The ball was lost for good, so serve a new one after healing.
    sim.heal_network();
    sim.client_send(ClientId(1), NodeId(0), PingPongMsg::Ball(0));
    sim.run_for(Duration::from_millis(100)).unwrap();
    assert!(sim.stats().delivered > 100);
}

#[test]
fn a_crashed_node_loses_volatile_state_and_restarts_from_storage() {
    let mut sim = Sim::new(SimConfig::new(3, 2), |_| DurableCounter::new(2, false));
    sim.run_for(Duration::from_millis(50)).unwrap();
    let before = sim.actor(NodeId(0)).unwrap().value;
    assert!(before > 10);
    sim.crash(NodeId(0));
    assert!(!sim.is_up(NodeId(0)));
    sim.run_for(Duration::from_millis(50)).unwrap();
    assert_eq!(sim.stats().crashes, 1);
    sim.restart(NodeId(0));
    let after = sim.actor(NodeId(0)).unwrap().value;
    // Only the unsynced tail (at most one batch) can be lost.
    assert!(
        after + 2 >= before && after <= before,
        "before {before}, after {after}"
    );
}

#[test]
fn a_paused_node_handles_nothing_until_it_resumes() {
    let mut sim = Sim::new(SimConfig::new(4, 2), |_| DurableCounter::new(2, false));
    sim.run_for(Duration::from_millis(10)).unwrap();
    sim.pause(NodeId(1), Duration::from_millis(100));
    let v = sim.actor(NodeId(1)).unwrap().value;
    sim.run_for(Duration::from_millis(90)).unwrap();
    assert_eq!(sim.actor(NodeId(1)).unwrap().value, v);
    sim.run_for(Duration::from_millis(20)).unwrap();
    assert!(sim.actor(NodeId(1)).unwrap().value > v);
}

#[test]
fn clocks_are_skewed_and_drift_per_node() {
    let mut cfg = SimConfig::new(5, 3);
    cfg.clocks.max_skew = Duration::from_millis(200);
    cfg.clocks.max_drift_ppm = 100.0;
    let mut sim = Sim::new(cfg, |_| PingPong::new(3, 0));
    let t0: Vec<_> = sim.node_ids().map(|n| sim.local_now(n)).collect();
    assert!(t0[0] != t0[1] || t0[1] != t0[2], "skews differ");
    sim.run_for(Duration::from_secs(100)).unwrap();
    for n in sim.node_ids() {
        let elapsed = (sim.local_now(n) - t0[n.index()]).as_nanos() as f64;
        let rate = elapsed / 100e9;
        assert!((rate - 1.0).abs() <= 100e-6 + 1e-9, "{n} runs at {rate}");
    }
}

#[test]
fn liveness_mode_heals_then_requires_convergence() {
    // Every node must hear a value of at least 50 from every other node after healing.
    let converged = |sim: &Sim<DurableCounter>| {
        sim.actors().count() == 3
            && sim.actors().all(|(me, a)| {
                a.heard
                    .iter()
                    .enumerate()
                    .all(|(i, &h)| i == me.index() || h >= 50)
            })
    };
    let mut sim = Sim::new(chaotic(9, 3), |_| DurableCounter::new(3, false));
    let at = sim
        .run_liveness(Duration::from_secs(1), Duration::from_secs(3), converged)
        .expect("converges after healing");
    assert!(at >= Duration::from_secs(1));

    // And a predicate that can never hold is reported as a liveness failure with the seed.
    let mut sim = Sim::new(chaotic(9, 3), |_| DurableCounter::new(3, false));
    let err = sim
        .run_liveness(
            Duration::from_millis(100),
            Duration::from_millis(200),
            |_| false,
        )
        .unwrap_err();
    assert_eq!(err.check, "liveness");
    assert!(err.to_string().contains("seed 9"));
}

#[test]
fn swarm_mixes_vary_by_seed_and_runs_report_failures_with_replay() {
    assert_ne!(
        format!("{:?}", swarm_faults(1)),
        format!("{:?}", swarm_faults(2))
    );
    assert_ne!(format!("{:?}", swarm_net(1)), format!("{:?}", swarm_net(2)));
    let report = synod_sim::swarm(
        0..10,
        &synod_sim::SwarmOptions {
            progress: false,
            ..Default::default()
        },
        |seed| {
            if seed % 3 == 0 {
                Err("boom".into())
            } else {
                Ok(())
            }
        },
        |seed| format!("synod sim demo --seed {seed}"),
    );
    assert_eq!(report.runs, 10);
    let seeds: Vec<u64> = report.failures.iter().map(|f| f.seed).collect();
    assert_eq!(seeds, vec![0, 3, 6, 9]);
    assert!(report
        .describe()
        .contains("replay: synod sim demo --seed 3"));
}

#[test]
fn an_unwritable_trace_file_is_an_error() {
    let mut sim = Sim::new(SimConfig::new(1, 2), |_| PingPong::new(2, 1));
    let err = sim.trace_to_file(std::path::Path::new("/nonexistent-dir/trace.jsonl"));
    assert!(err.is_err());
}

#[test]
fn the_trace_file_has_one_json_object_per_line() {
    let dir = std::env::temp_dir().join(format!("synod-sim-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.jsonl");
    let mut sim = Sim::new(chaotic(2, 3), |_| DurableCounter::new(3, false));
    sim.trace_to_file(&path).unwrap();
    sim.run_for(Duration::from_millis(300)).unwrap();
    sim.finish_trace().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        kinds.insert(v["ev"].as_str().unwrap().to_string());
    }
    for k in ["send", "deliver", "timer", "sync"] {
        assert!(kinds.contains(k), "trace has no {k} events: {kinds:?}");
    }
    assert_eq!(text.lines().count() as u64, sim.trace_lines());
    std::fs::remove_dir_all(&dir).ok();
}
