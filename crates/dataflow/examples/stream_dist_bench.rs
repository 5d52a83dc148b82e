//! Release-build measurements of the stream processor across processes against the same job
//! in one process, back to back: windowed counts (1 s tumbling windows, 50 ms bound,
//! 2 source tasks, 2 window tasks) with checkpoints every second and off, then latency at
//! paced rates. The multi-process runs start this binary again as `worker` processes.
//!
//! `cargo run --release -p synod-dataflow --example stream_dist_bench -- [events] [keys]
//! [workers] [rounds] [rates,comma,separated]`
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use synod_dataflow::stream::bench;
use synod_dataflow::stream::dist::{run_manager, ManagerConfig, WorkerProcess, WorkerSession};
use synod_dataflow::stream::exec::{self, ExecConfig, JobReport};
use synod_dataflow::stream::jobs::{self, JobSpec};

fn cpu_seconds() -> f64 {
    // utime + stime + cutime + cstime of this process (waited-for children included).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // After the ')' the fields are numbered from 3 (state); utime is field 14.
    (11..15)
        .map(|i| f.get(i).copied().unwrap_or(0.0))
        .sum::<f64>()
        / 100.0
}

fn spec(events: u64, keys: u64, rate: Option<u64>) -> JobSpec {
    let mut s = bench::count_spec(events, 2, 2, keys);
    if let Some(r) = rate {
        s.input.rate = r;
        s.input.paced = true;
    }
    s
}

struct Run {
    report: JobReport,
    cpu: f64,
}

fn single(spec: &JobSpec, interval: Option<Duration>, dir: &Path) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = ExecConfig::new(dir);
    cfg.checkpoint_interval = interval;
    let origin = Instant::now();
    if spec.input.paced {
        cfg.latency_origin = Some(origin);
    }
    let cpu = cpu_seconds();
    let report = exec::run(
        &jobs::windowed_counts(spec, spec.input.paced.then_some(origin)),
        &cfg,
    )
    .expect("single-process run");
    Run {
        report,
        cpu: cpu_seconds() - cpu,
    }
}

fn multi(spec: &JobSpec, interval: Option<Duration>, dir: &Path, workers: usize) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = ExecConfig::new(dir);
    cfg.checkpoint_interval = interval;
    if spec.input.paced {
        cfg.latency_origin = Some(Instant::now());
    }
    let mcfg = ManagerConfig::new(cfg, workers);
    let exe = std::env::current_exe().expect("own path");
    let rate = if spec.input.paced {
        spec.input.rate.to_string()
    } else {
        "0".into()
    };
    let mut spawn = |i: usize, addr: SocketAddr, token: u64| {
        Command::new(&exe)
            .args([
                "worker",
                &addr.to_string(),
                &i.to_string(),
                &token.to_string(),
            ])
            .arg(spec.input.events.to_string())
            .arg(spec.input.keys.to_string())
            .arg(&rate)
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .map(|c| Box::new(c) as Box<dyn WorkerProcess>)
    };
    let cpu = cpu_seconds();
    let report = run_manager(&mcfg, 2, 2, &mut spawn).expect("multi-process run");
    Run {
        report,
        cpu: cpu_seconds() - cpu,
    }
}

fn worker(args: &[String]) {
    let addr: SocketAddr = args[0].parse().expect("manager address");
    let index: u32 = args[1].parse().expect("index");
    let token: u64 = args[2].parse().expect("token");
    let events: u64 = args[3].parse().expect("events");
    let keys: u64 = args[4].parse().expect("keys");
    let rate: u64 = args[5].parse().expect("rate");
    let dir = PathBuf::from(&args[6]);
    let spec = spec(events, keys, (rate > 0).then_some(rate));
    let session = WorkerSession::connect(addr, index, token).expect("connect");
    let origin = session.origin;
    if let Err(e) = session.run(&jobs::windowed_counts(&spec, origin), &dir) {
        eprintln!("worker {index}: {e}");
        std::process::exit(1);
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        worker(&args[1..]);
        return;
    }
    let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let events = num(0, 20_000_000);
    let keys = num(1, 10_000);
    let workers = num(2, 2) as usize;
    let rounds = num(3, 3);
    let rates: Vec<u64> = args
        .get(4)
        .map_or("250000,500000,1000000", String::as_str)
        .split(',')
        .filter_map(|r| r.parse().ok())
        .collect();
    let dir = std::env::temp_dir().join(format!("synod-stream-dist-{}", std::process::id()));
    let s = spec(events, keys, None);
    println!(
        "windowed counts: {events} records, {keys} keys, 2 sources, 2 window tasks; multi-process: {workers} workers"
    );
    let labels = [
        "1 process, checkpoints 1 s",
        "multi-process, checkpoints 1 s",
        "1 process, checkpoints off",
        "multi-process, checkpoints off",
    ];
    let mut rate: Vec<Vec<f64>> = vec![Vec::new(); 4];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); 4];
    let mut chk: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for round in 0..rounds {
        for (k, label) in labels.iter().enumerate() {
            let interval = (k < 2).then_some(Duration::from_secs(1));
            let r = if k % 2 == 0 {
                single(&s, interval, &dir)
            } else {
                multi(&s, interval, &dir, workers)
            };
            let rps = r.report.events as f64 / r.report.elapsed.as_secs_f64();
            let mut d: Vec<f64> = r
                .report
                .checkpoint_durations
                .iter()
                .map(|d| d.as_secs_f64() * 1e3)
                .collect();
            let med = if d.is_empty() { 0.0 } else { median(&mut d) };
            println!(
                "round {round} {label}: {rps:.0} records/s, {:.3} CPU-s ({:.0} ns CPU/record), {} checkpoints, median {med:.1} ms",
                r.cpu,
                r.cpu * 1e9 / r.report.events as f64,
                d.len()
            );
            rate[k].push(rps);
            cpu[k].push(r.cpu * 1e9 / r.report.events as f64);
            chk[k].push(med);
        }
    }
    if rounds > 0 {
        println!("| run | median records/s | median ns CPU/record | median checkpoint ms |");
        println!("|---|---|---|---|");
    }
    for (k, label) in labels
        .iter()
        .enumerate()
        .take(if rounds > 0 { 4 } else { 0 })
    {
        println!(
            "| {label} | {:.0} | {:.0} | {:.1} |",
            median(&mut rate[k]),
            median(&mut cpu[k]),
            median(&mut chk[k])
        );
    }
    println!("| offered records/s | mode | achieved | fire p50 ms | fire p99 ms | commit p99 ms |");
    println!("|---|---|---|---|---|---|");
    for &r in &rates {
        let paced = spec(r * 10, keys, Some(r));
        for (mode, run) in [
            (
                "1 process",
                single(&paced, Some(Duration::from_secs(1)), &dir),
            ),
            (
                "multi-process",
                multi(&paced, Some(Duration::from_secs(1)), &dir, workers),
            ),
        ] {
            let rep = &run.report;
            println!(
                "| {r} | {mode} | {:.0} | {:.1} | {:.1} | {:.1} |",
                rep.events as f64 / rep.elapsed.as_secs_f64(),
                percentile(&rep.fire_latency_ms, 0.5),
                percentile(&rep.fire_latency_ms, 0.99),
                percentile(&rep.commit_latency_ms, 0.99)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
