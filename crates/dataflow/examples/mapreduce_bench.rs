//! Release-mode measurement of the MapReduce runner without building the whole CLI: one
//! session (a master and N workers as threads, each with its own TCP data server and
//! scratch directory, talking over loopback exactly as worker processes do) runs word
//! count or PageRank, then the tuned single-threaded baseline runs on the same input.
//!
//! cargo run --release -p synod-dataflow --example mapreduce_bench -- \
//!     wordcount|pagerank INPUT OUT_DIR WORKERS [ITERATIONS]
//! MR_ONLY=synod|baseline runs one side only (for /usr/bin/time CPU figures).
//! gen-text DIR BYTES FILES and gen-graph DIR SCALE EDGES FILES run the CLI's generators
//! (seed 1).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant};
use synod_dataflow::mapreduce::baseline;
use synod_dataflow::mapreduce::driver::{JobOptions, MasterServer};
use synod_dataflow::mapreduce::jobs::{self, Params};
use synod_dataflow::mapreduce::master::MasterConfig;
use synod_dataflow::mapreduce::task::Counters;
use synod_dataflow::mapreduce::worker::{run_worker, WorkerOptions};

/// A master and its workers, kept for every stage of a run (a session).
struct Session {
    server: Option<MasterServer>,
    workers: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    count: u32,
    scratch: std::path::PathBuf,
}

impl Session {
    fn stage(
        &mut self,
        job: &str,
        params: Params,
        input: &Path,
        output: &Path,
    ) -> anyhow::Result<Counters> {
        let opts = JobOptions {
            job: job.into(),
            params,
            input: input.into(),
            output: output.into(),
            reduces: 4,
            split_size: 32 << 20,
            sort_mem: 128 << 20,
            master: MasterConfig::default(),
            listen: "127.0.0.1:0".parse()?,
        };
        let started = Instant::now();
        let cpu0 = process_cpu_seconds();
        match &self.server {
            Some(s) => s.next_job(&opts)?,
            None => {
                let s = MasterServer::start(&opts)?;
                for i in 0..self.count {
                    let o = WorkerOptions {
                        master: s.addr(),
                        dir: self.scratch.join(format!("w{i}")),
                        heartbeat: Duration::from_millis(20),
                        master_grace: Duration::from_secs(5),
                        task_delay: Duration::ZERO,
                        data_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                    };
                    self.workers
                        .push(std::thread::spawn(move || run_worker(&o)));
                }
                self.server = Some(s);
            }
        }
        let Some(server) = &self.server else {
            anyhow::bail!("no master");
        };
        while !server.finished() {
            std::thread::sleep(Duration::from_millis(5));
            server.tick()?;
        }
        server.finalize(output)?;
        let parts = std::fs::read_dir(output)?.count();
        eprintln!(
            "  stage {job}: {:.3} s, {:.3} s CPU ({parts} entries in {})",
            started.elapsed().as_secs_f64(),
            process_cpu_seconds() - cpu0,
            output.display()
        );
        Ok(server.counters())
    }

    fn close(&mut self) {
        if let Some(s) = &self.server {
            s.close();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// User + system CPU seconds of this process so far (all threads), from /proc; 0 where
/// there is no /proc.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime (fields 14 and 15 of stat), in clock ticks of 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    // The CLI's generators with its default seed (1), for when only this example is built:
    // gen-text DIR BYTES FILES | gen-graph DIR SCALE EDGES FILES.
    match a.get(1).map(String::as_str) {
        Some("gen-text") if a.len() == 5 => {
            let n = synod_dataflow::mapreduce::gen::text(
                Path::new(&a[2]),
                a[3].parse()?,
                a[4].parse()?,
                1,
            )?;
            println!("{n} bytes of text");
            return Ok(());
        }
        Some("gen-graph") if a.len() == 6 => {
            let n = synod_dataflow::mapreduce::gen::rmat(
                Path::new(&a[2]),
                a[3].parse()?,
                a[4].parse()?,
                a[5].parse()?,
                1,
            )?;
            println!("{n} edges");
            return Ok(());
        }
        _ => {}
    }
    anyhow::ensure!(
        a.len() >= 5,
        "usage: JOB INPUT OUT_DIR WORKERS [ITERATIONS]"
    );
    let (job, input, out, workers) = (
        &a[1],
        Path::new(&a[2]),
        Path::new(&a[3]),
        a[4].parse::<u32>()?,
    );
    let iterations: u32 = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    // MR_ONLY=synod or MR_ONLY=baseline runs one side, for CPU-time measurements.
    let only = std::env::var("MR_ONLY").unwrap_or_default();
    let (run_synod, run_base) = (only != "baseline", only != "synod");
    let mut session = Session {
        server: None,
        workers: Vec::new(),
        count: workers,
        scratch: out.join("work"),
    };
    let t = Instant::now();
    if job == "pagerank" && run_synod {
        let r = jobs::run_pagerank(
            input,
            &out.join("mr"),
            0.85,
            1e-300,
            iterations,
            5,
            &mut |j, p, i, o, _| session.stage(j, p, i, o),
        )?;
        session.close();
        println!(
            "synod pagerank ({workers} workers): {} iterations in {:.2} s, {:.2} s CPU",
            r.iterations,
            t.elapsed().as_secs_f64(),
            process_cpu_seconds()
        );
    }
    if job == "pagerank" && run_base {
        let t = Instant::now();
        let (n, e, it) =
            baseline::pagerank(input, &out.join("base.txt"), 0.85, 1e-300, iterations)?;
        println!(
            "single thread pagerank: {n} nodes {e} edges {it} iterations in {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }
    if job != "pagerank" {
        if run_synod {
            session.stage(job, Params::new(), input, &out.join("mr"))?;
            session.close();
            println!(
                "synod {job} ({workers} workers): {:.2} s",
                t.elapsed().as_secs_f64()
            );
        }
        if job == "wordcount" && run_base {
            let t = Instant::now();
            baseline::wordcount(input, &out.join("base.txt"))?;
            println!(
                "single thread wordcount: {:.2} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    session.close();
    Ok(())
}
