//! One steady-state measurement of the windowed count, for `bench/stream-compare.sh`, which
//! alternates it with Apache Flink in the same run:
//! `cargo run --release -p synod-dataflow --example stream_steady -- <on|off|baseline> [events] [keys]`.
//! Prints the records per second and the CPU nanoseconds per record (utime + stime of this
//! process, all threads).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;
use synod_dataflow::stream::bench;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // After the ')' the fields are numbered from 3 (state); utime and stime are 14 and 15.
    (11..13)
        .map(|i| f.get(i).copied().unwrap_or(0.0))
        .sum::<f64>()
        / 100.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "on".into());
    let events: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000_000);
    let keys: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("synod-stream-steady-{}", std::process::id()));
    let spec = bench::count_spec(events, 2, 2, keys);
    let cpu = cpu_seconds();
    let (rate, extra) = match mode.as_str() {
        "baseline" => {
            let (rate, windows) = bench::baseline(&spec);
            (rate, format!("{windows} windows"))
        }
        "on" | "off" => {
            let interval = (mode == "on").then_some(Duration::from_secs(1));
            match bench::throughput(&spec, interval, &dir) {
                Ok(t) => (
                    t.rate(),
                    format!(
                        "{:.2} s, {} checkpoints, median {:?}",
                        t.elapsed.as_secs_f64(),
                        t.checkpoints,
                        t.checkpoint_median
                    ),
                ),
                Err(e) => {
                    eprintln!("synod {mode}: {e}");
                    std::process::exit(1);
                }
            }
        }
        other => {
            eprintln!("unknown mode `{other}`: expected on, off or baseline");
            std::process::exit(2);
        }
    };
    let cpu = cpu_seconds() - cpu;
    println!(
        "synod {mode}: {rate:.0} records/s, {:.0} CPU ns/record ({events} records; {extra})",
        cpu * 1e9 / events as f64
    );
}
