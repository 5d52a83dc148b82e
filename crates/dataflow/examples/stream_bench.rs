//! Release-build measurements of the stream processor (the same code `synod bench stream`
//! runs), without building the whole CLI:
//! `cargo run --release -p synod-dataflow --example stream_bench -- [events] [keys]`.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;
use synod_dataflow::stream::bench;

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000_000);
    let keys: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("synod-stream-bench-{}", std::process::id()));
    let spec = bench::count_spec(events, 2, 2, keys);
    let (base, windows) = bench::baseline(&spec);
    println!("baseline (1 thread, no checkpoints): {base:.0} records/s, {windows} windows");
    for (label, interval) in [
        ("checkpoints every 1 s", Some(Duration::from_secs(1))),
        ("checkpoints off", None),
    ] {
        match bench::throughput(&spec, interval, &dir) {
            Ok(t) => println!(
                "{label}: {:.0} records/s ({} records in {:.2} s), {} checkpoints, median {:?}, max {:?}",
                t.rate(),
                t.events,
                t.elapsed.as_secs_f64(),
                t.checkpoints,
                t.checkpoint_median,
                t.checkpoint_max
            ),
            Err(e) => println!("{label}: error {e}"),
        }
    }
    for rate in [250_000u64, 500_000, 1_000_000, 1_500_000] {
        match bench::latency(spec.clone(), rate, 10, Some(Duration::from_secs(1)), &dir) {
            Ok(l) => println!(
                "paced {} records/s: achieved {:.0}, fire p50 {:.1} ms p99 {:.1} ms, commit p99 {:.1} ms",
                l.rate, l.achieved, l.fire_p50_ms, l.fire_p99_ms, l.commit_p99_ms
            ),
            Err(e) => println!("paced {rate}: error {e}"),
        }
    }
}
