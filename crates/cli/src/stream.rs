//! `synod stream`: run the built-in streaming jobs with exactly-once checkpoints, and the
//! checkpoint protocol's simulation swarm. `synod bench stream` measures throughput,
//! checkpoint overhead and latency. See docs/stream.md.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_dataflow::stream::dist::{self, ManagerConfig, WorkerSession};
use synod_dataflow::stream::exec::{self, ExecConfig, JobReport, Progress};
use synod_dataflow::stream::jobs::{self, InputSpec, JobSpec, Verdict};
use synod_dataflow::stream::sim::{abs_faults, abs_net, run_abs, AbsSpec, Broken};
use synod_dataflow::stream::{bench, file};
use synod_sim::SwarmOptions;

use crate::stream_cluster;

#[derive(Debug, Args)]
pub(crate) struct StreamCommand {
    #[command(subcommand)]
    what: StreamWhat,
}

#[derive(Debug, Subcommand)]
enum StreamWhat {
    /// Run a built-in job to the end of its input with exactly-once output under --dir.
    /// Run it again on the same directory after a crash and it resumes from the latest
    /// complete checkpoint.
    Run(RunArgs),
    /// The checkpoint protocol in the simulator over many seeds, with crashes, partitions
    /// and reordering; every seed must commit exactly the failure-free output.
    Sim(SimArgs),
    /// A worker process of a multi-process run (started by `synod stream run --workers N`,
    /// not by hand): connects to its job manager, runs the tasks it is assigned, and exits
    /// when told to or when the manager goes away.
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The job manager's control address.
    #[arg(long)]
    manager: std::net::SocketAddr,
    /// This worker's index.
    #[arg(long)]
    worker_index: u32,
    /// The attempt token the manager handed out.
    #[arg(long)]
    token: u64,
    /// Set by a cluster node that starts this worker (`--cluster`): exit when that
    /// process is no longer this one's parent.
    #[arg(long)]
    node_pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum JobName {
    /// Counts per key in tumbling windows (the chapter's example).
    WindowedCounts,
    /// Sessions of a click stream per user (session windows).
    Sessionize,
    /// Ad events → views → join campaign → 10 s counts per campaign.
    Yahoo,
    /// Counts per key in tumbling windows over a file of `<event time ms>,<key>` lines
    /// (--input), split into byte ranges and replayed from byte offsets.
    FileCounts,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Which job.
    #[arg(value_enum)]
    job: JobName,
    /// State directory (checkpoints and output).
    #[arg(long, default_value = ".synod/stream")]
    dir: PathBuf,
    /// The input file of file-counts: one `<event time in ms>,<key>` a line.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Delete the state directory first instead of resuming.
    #[arg(long)]
    fresh: bool,
    /// Records to generate over all partitions.
    #[arg(long, default_value = "10000000", value_parser = positive_u64)]
    events: u64,
    /// Source partitions (source tasks).
    #[arg(long, default_value = "2", value_parser = parallelism)]
    partitions: usize,
    /// Window operator instances.
    #[arg(long, default_value = "2", value_parser = parallelism)]
    parallelism: usize,
    /// Distinct keys (windowed-counts: keys; sessionize: users; yahoo: ads, 10 per campaign).
    #[arg(long, value_parser = positive_u64)]
    keys: Option<u64>,
    /// Records per second of event time; with --paced also of wall time.
    #[arg(long, value_parser = positive_u64)]
    rate: Option<u64>,
    /// Release records no faster than their event time (event time = wall time).
    #[arg(long)]
    paced: bool,
    /// Window size (session gap for sessionize), e.g. 1s.
    #[arg(long, value_parser = crate::args::duration)]
    window: Option<Duration>,
    /// Largest disorder of the input and the watermark bound, e.g. 50ms.
    #[arg(long, default_value = "50ms", value_parser = crate::args::duration)]
    bound: Duration,
    /// Allowed lateness, e.g. 0s.
    #[arg(long, default_value = "0s", value_parser = crate::args::duration)]
    lateness: Duration,
    /// Make every n-th record late by 10 windows (to exercise the side output).
    #[arg(long, value_parser = positive_u64)]
    late_every: Option<u64>,
    /// Checkpoint interval, e.g. 1s, or `off` (only a final checkpoint).
    #[arg(long, default_value = "1s", value_parser = interval)]
    checkpoint_interval: Interval,
    /// Seed of the generated input.
    #[arg(long, default_value = "42")]
    seed: u64,
    /// Compare the committed output with a batch computation over the same input.
    #[arg(long)]
    verify: bool,
    /// Run the tasks in this many `synod stream worker` processes joined by TCP (source
    /// task i and window task j on workers i and j mod N), with this process as the job
    /// manager; without it, every task is a thread of this process.
    #[arg(long, value_parser = parallelism)]
    workers: Option<usize>,
    /// Deploy the workers onto the nodes of the `synod up` cluster in this directory
    /// (one worker per node unless --workers says otherwise; worker i on node i mod
    /// nodes, or on a surviving node when that one is down). --dir must be reachable by
    /// every node (one machine, or a shared file system).
    #[arg(long)]
    cluster: Option<PathBuf>,
}

impl RunArgs {
    /// The flags that define the job, for a worker process.
    fn worker_args(&self) -> Vec<String> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let job = self
            .job
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string());
        let mut v = vec![
            "stream".to_string(),
            "worker".into(),
            job,
            "--dir".into(),
            self.dir.display().to_string(),
            "--events".into(),
            self.events.to_string(),
            "--partitions".into(),
            self.partitions.to_string(),
            "--parallelism".into(),
            self.parallelism.to_string(),
            "--bound".into(),
            ms(self.bound),
            "--lateness".into(),
            ms(self.lateness),
            "--seed".into(),
            self.seed.to_string(),
        ];
        let opt = |v: &mut Vec<String>, flag: &str, x: Option<String>| {
            if let Some(x) = x {
                v.push(flag.to_string());
                v.push(x);
            }
        };
        opt(&mut v, "--keys", self.keys.map(|k| k.to_string()));
        opt(&mut v, "--rate", self.rate.map(|k| k.to_string()));
        opt(&mut v, "--window", self.window.map(ms));
        opt(
            &mut v,
            "--late-every",
            self.late_every.map(|k| k.to_string()),
        );
        opt(
            &mut v,
            "--input",
            self.input.as_ref().map(|p| p.display().to_string()),
        );
        if self.paced {
            v.push("--paced".into());
        }
        v
    }
}

#[derive(Debug, Clone, Copy)]
struct Interval(Option<Duration>);

fn interval(s: &str) -> Result<Interval, String> {
    if s.trim() == "off" {
        return Ok(Interval(None));
    }
    let d = crate::args::duration(s)?;
    if d.is_zero() {
        return Err("checkpoint interval must be positive (or `off`)".into());
    }
    Ok(Interval(Some(d)))
}

fn positive_u64(s: &str) -> Result<u64, String> {
    match s.trim().replace('_', "").parse::<u64>() {
        Ok(0) => Err(format!("`{s}` must be positive")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

fn parallelism(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a parallelism: expected 1 to 64")),
    }
}

#[derive(Debug, Args)]
struct SimArgs {
    /// Seeds to run.
    #[arg(long, default_value = "1000", value_parser = positive_u64)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value = "0")]
    first_seed: u64,
    /// Run a deliberately broken variant, which the check must catch.
    #[arg(long, value_enum)]
    broken: Option<BrokenArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BrokenArg {
    /// Publish output at the barrier, before the checkpoint completes.
    CommitBeforeComplete,
    /// Snapshot without aligning barriers.
    NoAlignment,
}

pub(crate) fn run(cmd: StreamCommand) -> Result<ExitCode> {
    match cmd.what {
        StreamWhat::Run(a) => run_job(a),
        StreamWhat::Sim(a) => sim(a),
        StreamWhat::Worker(a) => worker(a),
    }
}

fn job_spec(a: &RunArgs) -> JobSpec {
    let (keys, rate, window_ms) = match a.job {
        JobName::WindowedCounts => (10_000, 1_000_000, 1_000),
        JobName::Sessionize => (3_000, 100_000, 1_000),
        JobName::Yahoo => (1_000, 1_000_000, 10_000),
        JobName::FileCounts => (1, 1_000_000, 1_000),
    };
    let window_ms = a.window.map_or(window_ms, |w| w.as_millis().max(1) as u64);
    let bound_ms = a.bound.as_millis() as u64;
    let mut input = InputSpec::new(a.seed, a.events, a.partitions, a.keys.unwrap_or(keys));
    input.rate = a.rate.unwrap_or(rate);
    input.paced = a.paced;
    input.disorder_ms = bound_ms;
    input.late_every = a.late_every;
    input.late_by_ms = window_ms * 10;
    JobSpec {
        input,
        parallelism: a.parallelism,
        bound_ms,
        allowed_lateness_ms: a.lateness.as_millis() as u64,
        window_ms,
    }
}

/// The job's parameters, stored beside its checkpoints so that a resumed run is the same
/// job.
fn fingerprint(a: &RunArgs, spec: &JobSpec) -> String {
    format!(
        "job={:?} input={:?} events={} partitions={} parallelism={} keys={} rate={} window_ms={} bound_ms={} lateness_ms={} late_every={:?} seed={}\n",
        a.job,
        a.input,
        spec.input.events,
        spec.input.partitions,
        spec.parallelism,
        spec.input.keys,
        spec.input.rate,
        spec.window_ms,
        spec.bound_ms,
        spec.allowed_lateness_ms,
        spec.input.late_every,
        spec.input.seed
    )
}

fn progress_bar(total: u64) -> (ProgressBar, exec::ProgressFn) {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} records  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let last = Arc::new(Mutex::new((Instant::now(), 0u64)));
    let b = bar.clone();
    let callback: exec::ProgressFn = Arc::new(move |p: &Progress| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        let dt = last.0.elapsed().as_secs_f64().max(1e-6);
        let rate = p.events.saturating_sub(last.1) as f64 / dt;
        *last = (Instant::now(), p.events);
        let lag = p.max_event_time.0.saturating_sub(p.watermark.0);
        let lag = if p.watermark.0 == u64::MAX { 0 } else { lag };
        b.set_position(p.events.min(total));
        b.set_message(format!(
            "{:.2}M rec/s  watermark lag {} ms  checkpoints {} (last {})  restarts {}",
            rate / 1e6,
            lag,
            p.checkpoints,
            p.last_checkpoint.map_or("-".to_string(), |d| format!(
                "{:.1} ms",
                d.as_secs_f64() * 1e3
            )),
            p.restarts
        ));
    });
    (bar, callback)
}

fn file_input(a: &RunArgs) -> Result<PathBuf> {
    match (&a.input, a.job) {
        (Some(p), JobName::FileCounts) => {
            let meta = std::fs::metadata(p).with_context(|| format!("--input {}", p.display()))?;
            if !meta.is_file() {
                bail!("--input {} is not a file", p.display());
            }
            // Workers run in other directories' processes: hand them an absolute path.
            Ok(std::fs::canonicalize(p).with_context(|| format!("--input {}", p.display()))?)
        }
        (None, JobName::FileCounts) => bail!("file-counts needs --input <file>"),
        (Some(_), job) => bail!("--input is only for file-counts, not {job:?}"),
        (None, _) => Ok(PathBuf::new()),
    }
}

fn run_job(mut a: RunArgs) -> Result<ExitCode> {
    if a.job == JobName::FileCounts {
        a.input = Some(file_input(&a)?);
    } else {
        file_input(&a)?;
    }
    let spec = job_spec(&a);
    if a.fresh && a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("removing {}", a.dir.display()))?;
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let print = fingerprint(&a, &spec);
    let stored = a.dir.join("job.txt");
    match std::fs::read_to_string(&stored) {
        Ok(old) if old != print => bail!(
            "{} holds another job ({}); use --fresh or another --dir",
            a.dir.display(),
            old.trim()
        ),
        Ok(_) => {
            if let Some(c) = exec::latest_complete(&a.dir)? {
                eprintln!("resuming from checkpoint {c}");
            }
        }
        Err(_) => std::fs::write(&stored, &print)
            .with_context(|| format!("writing {}", stored.display()))?,
    }
    let mut cfg = ExecConfig::new(&a.dir);
    cfg.checkpoint_interval = a.checkpoint_interval.0;
    let origin = Instant::now();
    if a.paced {
        cfg.latency_origin = Some(origin);
    }
    let (bar, callback) = progress_bar(spec.input.events);
    cfg.progress = Some(callback);
    let origin = a.paced.then_some(origin);
    let report = if let Some(cluster) = &a.cluster {
        let nodes = stream_cluster::nodes(cluster)?;
        // The nodes run in their own directories: hand them absolute paths.
        a.dir =
            std::fs::canonicalize(&a.dir).with_context(|| format!("--dir {}", a.dir.display()))?;
        let mut mcfg = ManagerConfig::new(cfg, a.workers.unwrap_or(nodes.len()));
        mcfg.pid_file = Some(a.dir.join("workers.pid"));
        let base = a.worker_args();
        let dir = a.dir.clone();
        let mut spawn = |i: usize, manager: std::net::SocketAddr, token: u64| {
            let mut args = base.clone();
            args.extend([
                "--manager".to_string(),
                manager.to_string(),
                "--worker-index".into(),
                i.to_string(),
                "--token".into(),
                token.to_string(),
            ]);
            stream_cluster::deploy(&nodes, i, token, args, dir.join(format!("worker-{i}.log")))
        };
        dist::run_manager(&mcfg, a.partitions, a.parallelism, &mut spawn)
    } else if let Some(workers) = a.workers {
        let mut mcfg = ManagerConfig::new(cfg, workers);
        mcfg.pid_file = Some(a.dir.join("workers.pid"));
        let exe = std::env::current_exe().context("finding the synod binary")?;
        let base = a.worker_args();
        let dir = a.dir.clone();
        let mut spawn = |i: usize, manager: std::net::SocketAddr, token: u64| {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("worker-{i}.log")))?;
            std::process::Command::new(&exe)
                .args(&base)
                .arg("--manager")
                .arg(manager.to_string())
                .arg("--worker-index")
                .arg(i.to_string())
                .arg("--token")
                .arg(token.to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .map(|c| Box::new(c) as Box<dyn dist::WorkerProcess>)
        };
        dist::run_manager(&mcfg, a.partitions, a.parallelism, &mut spawn)
    } else {
        match a.job {
            JobName::WindowedCounts => exec::run(&jobs::windowed_counts(&spec, origin), &cfg),
            JobName::Sessionize => exec::run(&jobs::sessionize(&spec, origin), &cfg),
            JobName::Yahoo => exec::run(&jobs::yahoo(&spec, origin), &cfg),
            JobName::FileCounts => exec::run(&file_job(&a, &spec), &cfg),
        }
    };
    bar.finish_and_clear();
    let report = report?;
    print_report(&report);
    if !a.verify {
        return Ok(ExitCode::SUCCESS);
    }
    let verdict = match a.job {
        JobName::WindowedCounts => {
            let late = jobs::committed_late::<u64, u64>(&a.dir)?;
            jobs::verify(&a.dir, &jobs::windowed_counts_reference(&spec, &late))?
        }
        JobName::Sessionize => jobs::verify(&a.dir, &jobs::sessionize_reference(&spec))?,
        JobName::Yahoo => jobs::verify(&a.dir, &jobs::yahoo_reference(&spec))?,
        JobName::FileCounts => {
            let late = jobs::committed_late::<String, String>(&a.dir)?;
            let input = a.input.clone().unwrap_or_default();
            jobs::verify(
                &a.dir,
                &file::file_counts_reference(&input, spec.window_ms, &late)?,
            )?
        }
    };
    Ok(print_verdict(&verdict, spec.allowed_lateness_ms > 0))
}

fn file_job(
    a: &RunArgs,
    spec: &JobSpec,
) -> synod_dataflow::stream::pipeline::Job<String, String, synod_dataflow::stream::Count<String>> {
    file::file_counts(
        a.input.as_deref().unwrap_or(std::path::Path::new("")),
        a.partitions,
        spec.parallelism,
        spec.bound_ms,
        spec.window_ms,
    )
}

fn worker(w: WorkerArgs) -> Result<ExitCode> {
    if let Some(node) = w.node_pid {
        stream_cluster::exit_with_node(node)?;
    }
    let spec = job_spec(&w.run);
    let session = WorkerSession::connect(w.manager, w.worker_index, w.token)?;
    let origin = session.origin;
    let dir = w.run.dir.clone();
    match w.run.job {
        JobName::WindowedCounts => session.run(&jobs::windowed_counts(&spec, origin), &dir)?,
        JobName::Sessionize => session.run(&jobs::sessionize(&spec, origin), &dir)?,
        JobName::Yahoo => session.run(&jobs::yahoo(&spec, origin), &dir)?,
        JobName::FileCounts => session.run(&file_job(&w.run, &spec), &dir)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &JobReport) {
    let mut d = r.checkpoint_durations.clone();
    d.sort();
    let ms = |x: Option<&Duration>| x.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    println!(
        "records read: {} in {:.2} s ({:.0} records/s; replays after restarts included)",
        r.events,
        r.elapsed.as_secs_f64(),
        r.events as f64 / r.elapsed.as_secs_f64().max(1e-9)
    );
    println!(
        "checkpoints: {} this run, median {:.1} ms, max {:.1} ms; last complete: {}",
        d.len(),
        ms(d.get(d.len() / 2)),
        ms(d.last()),
        r.last_checkpoint
            .map_or("none".to_string(), |c| c.to_string())
    );
    println!(
        "window firings written: {}; late records to the side output: {}; restarts: {}",
        r.fired, r.late, r.restarts
    );
    if !r.fire_latency_ms.is_empty() {
        let mut f = r.fire_latency_ms.clone();
        f.sort_by(f64::total_cmp);
        let p = |q: f64| f[((f.len() - 1) as f64 * q) as usize];
        println!(
            "window end → firing: p50 {:.1} ms, p99 {:.1} ms",
            p(0.5),
            p(0.99)
        );
    }
}

fn print_verdict(v: &Verdict, late_firings: bool) -> ExitCode {
    println!(
        "verify: {} windows expected, {} firings committed, {} fired more than once, {} wrong or missing, {} late records",
        v.expected_windows, v.committed_firings, v.duplicates, v.mismatches, v.late_records
    );
    let ok = v.mismatches == 0 && (late_firings || v.duplicates == 0);
    if ok {
        println!("verified: the committed output equals the batch answer exactly");
        ExitCode::SUCCESS
    } else {
        println!("verification FAILED");
        ExitCode::FAILURE
    }
}

fn sim(a: SimArgs) -> Result<ExitCode> {
    let broken = a.broken.map(|b| match b {
        BrokenArg::CommitBeforeComplete => Broken::CommitBeforeComplete,
        BrokenArg::NoAlignment => Broken::NoAlignment,
    });
    let flag = match a.broken {
        Some(BrokenArg::CommitBeforeComplete) => " --broken commit-before-complete",
        Some(BrokenArg::NoAlignment) => " --broken no-alignment",
        None => "",
    };
    let report = synod_sim::swarm(
        a.first_seed..a.first_seed.saturating_add(a.seeds),
        &SwarmOptions::default(),
        |seed| {
            let mut spec = AbsSpec::new(seed);
            spec.broken = broken;
            run_abs(seed, spec, abs_faults(seed), abs_net(seed)).map(|_| ())
        },
        |seed| format!("synod stream sim --first-seed {seed} --seeds 1{flag}"),
    );
    println!(
        "stream checkpoints: {} seeds, {} failed",
        report.runs,
        report.failures.len()
    );
    for f in report.failures.iter().take(5) {
        println!("  seed {}: {}\n    replay: {}", f.seed, f.message, f.replay);
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `synod bench stream`.
#[derive(Debug, Args)]
pub(crate) struct StreamBench {
    /// Records per throughput run.
    #[arg(long, default_value = "20000000", value_parser = positive_u64)]
    events: u64,
    /// Keys.
    #[arg(long, default_value = "10000", value_parser = positive_u64)]
    keys: u64,
    /// Source partitions.
    #[arg(long, default_value = "2", value_parser = parallelism)]
    partitions: usize,
    /// Window operator instances.
    #[arg(long, default_value = "2", value_parser = parallelism)]
    parallelism: usize,
    /// Paced rates to try for the latency target, records/s, comma-separated.
    #[arg(long, default_value = "250000,500000,1000000,1500000,2000000", value_delimiter = ',', value_parser = positive_u64)]
    rates: Vec<u64>,
    /// Seconds per paced run.
    #[arg(long, default_value = "10", value_parser = positive_u64)]
    seconds: u64,
    /// The p99 target for window end → firing.
    #[arg(long, default_value = "250ms", value_parser = crate::args::duration)]
    target: Duration,
    /// Scratch directory.
    #[arg(long, default_value = ".synod/stream-bench")]
    dir: PathBuf,
}

pub(crate) fn bench_stream(b: StreamBench) -> Result<ExitCode> {
    let spec = bench::count_spec(b.events, b.partitions, b.parallelism, b.keys);
    println!(
        "windowed counts: {} records, {} keys, 1 s tumbling windows, {} sources, {} window tasks",
        b.events, b.keys, b.partitions, b.parallelism
    );
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(200));
    spinner.set_message("baseline");
    let (base, _) = bench::baseline(&spec);
    spinner.set_message("checkpoints every 1 s");
    let on = bench::throughput(&spec, Some(Duration::from_secs(1)), &b.dir)?;
    spinner.set_message("checkpoints off");
    let off = bench::throughput(&spec, None, &b.dir)?;
    let mut lat = Vec::new();
    for &rate in &b.rates {
        spinner.set_message(format!("paced at {rate} records/s"));
        lat.push(bench::latency(
            spec.clone(),
            rate,
            b.seconds,
            Some(Duration::from_secs(1)),
            &b.dir,
        )?);
    }
    spinner.finish_and_clear();
    println!("single-threaded hand-written baseline: {base:.0} records/s");
    print_throughput("exactly-once, checkpoints every 1 s", &on);
    print_throughput("checkpoints off", &off);
    println!(
        "checkpoint overhead: {:.1}% of throughput",
        100.0 * (1.0 - on.rate() / off.rate())
    );
    let target_ms = b.target.as_secs_f64() * 1e3;
    println!("| offered rec/s | achieved rec/s | fire p50 ms | fire p99 ms | commit p99 ms |");
    println!("|---|---|---|---|---|");
    let mut best = None;
    for l in &lat {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} |",
            l.rate, l.achieved, l.fire_p50_ms, l.fire_p99_ms, l.commit_p99_ms
        );
        if l.fire_p99_ms <= target_ms && l.achieved >= 0.95 * l.rate as f64 {
            best = Some(l.rate);
        }
    }
    match best {
        Some(r) => println!(
            "throughput at p99 ≤ {target_ms:.0} ms (window end → firing), checkpoints every 1 s: {r} records/s"
        ),
        None => println!("no offered rate met p99 ≤ {target_ms:.0} ms"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_throughput(label: &str, t: &bench::Throughput) {
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    println!(
        "{label}: {:.0} records/s ({} records in {:.2} s; {} checkpoints, median {:.1} ms, max {:.1} ms)",
        t.rate(),
        t.events,
        t.elapsed.as_secs_f64(),
        t.checkpoints,
        ms(t.checkpoint_median),
        ms(t.checkpoint_max)
    );
}
