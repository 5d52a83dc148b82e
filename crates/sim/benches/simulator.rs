//! Simulator throughput: messages delivered per second of wall time for a ping-pong actor,
//! tracing off. Run with `cargo bench -p synod-sim --bench simulator`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use synod_sim::fixtures::PingPong;
use synod_sim::{Sim, SimConfig};

fn pingpong(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulator");
    for (nodes, balls) in [(2u32, 1u32), (16, 4)] {
        // One simulated second on a LAN delivers about 5,000 messages per ball in play.
        let probe = run(nodes, balls);
        group.throughput(Throughput::Elements(probe));
        group.bench_function(format!("pingpong/{nodes}nodes/{balls}balls"), |b| {
            b.iter(|| run(nodes, balls))
        });
    }
    group.finish();
}

fn run(nodes: u32, balls: u32) -> u64 {
    let mut sim = Sim::new(SimConfig::new(7, nodes), move |_| {
        PingPong::new(nodes, balls)
    });
    sim.run_for(Duration::from_secs(1)).expect("no invariants");
    sim.stats().delivered
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = pingpong
}
criterion_main!(benches);
