//! `Raft<MvccStateMachine>` under the simulator: linearizable put/get/delete/CAS through
//! etcd-shaped commands, and replicas that agree, over many seeds with random faults.

use crate::mvcc::harness::{stale_read_scenario, swarm_scenario, watch_gap_scenario};
use synod_sim::{assert_seeds, swarm, SwarmOptions};

fn replay(test: &'static str) -> impl Fn(u64) -> String + Sync {
    move |seed| {
        format!("SYNOD_SEED={seed} cargo test -p synod-protocols mvcc::tests::sim::{test} -- --exact --include-ignored")
    }
}

#[test]
fn raft_mvcc_is_linearizable_and_replicas_agree_under_swarm_faults() {
    assert_seeds(
        0..150,
        |seed| swarm_scenario(seed, 4).map(|_| ()),
        replay("raft_mvcc_is_linearizable_and_replicas_agree_under_swarm_faults"),
    );
}

#[test]
#[ignore = "long: 1000 seeds of 4 simulated seconds"]
fn long_swarm() {
    assert_seeds(
        0..1000,
        |seed| swarm_scenario(seed, 4).map(|_| ()),
        replay("long_swarm"),
    );
}

#[test]
fn the_checks_catch_replicas_that_serve_stale_reads() {
    let options = SwarmOptions {
        progress: false,
        stop_after: 1,
        ..SwarmOptions::default()
    };
    let report = swarm(
        0..50,
        &options,
        |seed| stale_read_scenario(seed, 2).map(|_| ()),
        |seed| format!("seed {seed}"),
    );
    assert!(
        !report.failures.is_empty(),
        "no seed caught reads served at the previous revision"
    );
}

#[test]
fn the_checks_catch_a_watch_that_skips_a_revision() {
    let options = SwarmOptions {
        progress: false,
        stop_after: 1,
        ..SwarmOptions::default()
    };
    let report = swarm(
        0..20,
        &options,
        |seed| watch_gap_scenario(seed, 2).map(|_| ()),
        |seed| format!("seed {seed}"),
    );
    let first = report.failures.first().map(|f| f.message.clone());
    assert!(
        first
            .as_deref()
            .is_some_and(|f| f.contains("delivered revisions")),
        "the watch check did not catch a skipped revision: {first:?}"
    );
}
