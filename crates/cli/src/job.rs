//! `synod job`: run MapReduce jobs (issue 12) with a local master and worker processes,
//! run a worker for a remote master, generate inputs, and run the single-threaded
//! reference implementations (the COST baseline).

use crate::args;
use crate::job_cluster::ClusterWorkers;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use synod_dataflow::mapreduce::driver::{JobOptions, MasterServer};
use synod_dataflow::mapreduce::jobs::{self, Params};
use synod_dataflow::mapreduce::master::{MasterConfig, Progress};
use synod_dataflow::mapreduce::task::{list_inputs, Counters};
use synod_dataflow::mapreduce::worker::{run_worker, WorkerOptions};
use synod_dataflow::mapreduce::{baseline, gen, task};

#[derive(Debug, Args)]
pub(crate) struct JobCommand {
    #[command(subcommand)]
    what: JobWhat,
}

#[derive(Debug, Subcommand)]
enum JobWhat {
    /// Run a built-in job: a master here, and `--workers` local worker processes or, with
    /// `--cluster`, the nodes of a `synod up` cluster as workers.
    Run(RunArgs),
    /// Run a worker for a master (what `synod job run` starts per worker).
    Worker(WorkerArgs),
    /// Generate deterministic input: a Zipf text corpus, access logs or an R-MAT graph.
    Gen(GenArgs),
    /// Run a job's simple single-threaded reference implementation (what tests compare
    /// with).
    Reference(ReferenceArgs),
    /// Run the tuned single-threaded program for word count or PageRank (the COST
    /// baseline of McSherry et al. 2015).
    Baseline(ReferenceArgs),
}

/// The built-in jobs.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum JobName {
    /// Word count, with a combiner.
    Wordcount,
    /// Inverted index: word → sorted document list with positions.
    Index,
    /// Access-log analysis: requests per status per hour, top-k URLs, p99 per endpoint.
    Logs,
    /// PageRank over an edge list, iterated to a tolerance.
    Pagerank,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The job.
    #[arg(value_enum)]
    job: JobName,
    /// Input directory (every file not starting with `.` or `_`).
    #[arg(long)]
    input: PathBuf,
    /// Output directory: new or empty, or holding this job's state to resume it.
    #[arg(long)]
    output: PathBuf,
    /// Local worker processes to start (0: wait for `synod job worker`s).
    #[arg(long, default_value = "2", value_parser = clap::value_parser!(u32).range(0..=256))]
    workers: u32,
    /// Use the nodes of the `synod up` cluster in this directory as the workers (each
    /// node runs one), instead of local worker processes.
    #[arg(long, conflicts_with_all = ["workers", "work_dir"])]
    cluster: Option<PathBuf>,
    /// Testing aid: every worker sleeps this long before each task.
    #[arg(long, default_value = "0s", value_parser = args::duration, hide = true)]
    task_delay: Duration,
    /// Reduce tasks (output partitions).
    #[arg(long, default_value = "4", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    reduces: u32,
    /// Input split size, e.g. `64MiB`.
    #[arg(long, default_value = "32MiB", value_parser = args_size)]
    split_size: u64,
    /// Map-side sort buffer per task before spilling to disk, e.g. `64MiB`.
    #[arg(long, default_value = "128MiB", value_parser = args_size)]
    sort_mem: u64,
    /// Where the master listens for workers.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A worker silent for this long is dead and its work is redone.
    #[arg(long, default_value = "3s", value_parser = args::duration)]
    worker_timeout: Duration,
    /// Scratch directory for the local workers (default: OUTPUT/_work).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// PageRank damping factor.
    #[arg(long, default_value = "0.85", value_parser = args::probability)]
    damping: f64,
    /// PageRank: stop when the L1 change of the ranks is below this.
    #[arg(long, default_value = "1e-6", value_parser = positive_f64)]
    tolerance: f64,
    /// PageRank: at most this many iterations.
    #[arg(long, default_value = "50", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_iterations: u32,
    /// PageRank: checkpoint the ranks every this many iterations (0: never), so that a
    /// worker that dies costs at most this many iterations.
    #[arg(long, default_value = "5", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    checkpoint_every: u32,
    /// Log analysis: how many top URLs to report.
    #[arg(long, default_value = "10", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    top_k: u32,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// The master's address (printed by `synod job run`).
    #[arg(long)]
    master: SocketAddr,
    /// Local scratch directory for map output (emptied at start).
    #[arg(long)]
    dir: PathBuf,
    /// Testing aid: sleep this long before every task.
    #[arg(long, default_value = "0s", value_parser = args::duration)]
    task_delay: Duration,
}

#[derive(Debug, Args)]
struct GenArgs {
    /// What to generate.
    #[arg(value_enum)]
    kind: GenKind,
    /// Output directory.
    #[arg(long)]
    output: PathBuf,
    /// Approximate size for text and logs, e.g. `1GiB`.
    #[arg(long, default_value = "64MiB", value_parser = args_size)]
    size: u64,
    /// Graph: log2 of the number of vertices.
    #[arg(long, default_value = "20", value_parser = clap::value_parser!(u32).range(1..=40))]
    scale: u32,
    /// Graph: number of edges.
    #[arg(long, default_value = "1000000", value_parser = clap::value_parser!(u64).range(1..))]
    edges: u64,
    /// Number of files.
    #[arg(long, default_value = "8", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    files: u32,
    /// Seed: the same seed gives the same bytes.
    #[arg(long, default_value = "1")]
    seed: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GenKind {
    /// Zipf-distributed words.
    Text,
    /// Web access logs (Common Log Format plus latency).
    Logs,
    /// R-MAT graph edges.
    Graph,
}

#[derive(Debug, Args)]
struct ReferenceArgs {
    /// The job.
    #[arg(value_enum)]
    job: JobName,
    /// Input directory.
    #[arg(long)]
    input: PathBuf,
    /// Output file (lines sorted).
    #[arg(long)]
    output: PathBuf,
    /// PageRank damping factor.
    #[arg(long, default_value = "0.85", value_parser = args::probability)]
    damping: f64,
    /// PageRank tolerance.
    #[arg(long, default_value = "1e-6", value_parser = positive_f64)]
    tolerance: f64,
    /// PageRank iteration cap.
    #[arg(long, default_value = "50", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_iterations: u32,
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

/// A byte size: `123`, `64KiB`, `64MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
fn args_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 64MiB"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" | "K" | "k" => 1024.0,
        "MiB" | "M" => 1024.0 * 1024.0,
        "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}` (use KiB, MiB, GiB)"
            ))
        }
    };
    let v = n * mult;
    if !(1.0..=1e15).contains(&v) {
        return Err(format!("size `{s}` is out of range"));
    }
    Ok(v as u64)
}

pub(crate) fn run(cmd: JobCommand) -> Result<ExitCode> {
    match cmd.what {
        JobWhat::Run(a) => run_job(a),
        JobWhat::Worker(a) => {
            run_worker(&WorkerOptions {
                master: a.master,
                dir: a.dir,
                heartbeat: Duration::from_millis(25),
                master_grace: Duration::from_secs(30),
                task_delay: a.task_delay,
                data_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        JobWhat::Gen(a) => {
            let t = Instant::now();
            let what = match a.kind {
                GenKind::Text => format!(
                    "{} bytes of text",
                    gen::text(&a.output, a.size, a.files, a.seed)?
                ),
                GenKind::Logs => format!(
                    "{} bytes of access logs",
                    gen::logs(&a.output, a.size, a.files, a.seed)?
                ),
                GenKind::Graph => format!(
                    "{} R-MAT edges over 2^{} vertices",
                    gen::rmat(&a.output, a.scale, a.edges, a.files, a.seed)?,
                    a.scale
                ),
            };
            println!(
                "wrote {what} to {} in {:.1} s",
                a.output.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        JobWhat::Reference(a) => reference(a),
        JobWhat::Baseline(a) => baseline(a),
    }
}

fn baseline(a: ReferenceArgs) -> Result<ExitCode> {
    let t = Instant::now();
    match a.job {
        JobName::Wordcount => {
            let words = baseline::wordcount(&a.input, &a.output)?;
            println!(
                "baseline wordcount: {words} distinct words in {:.2} s",
                t.elapsed().as_secs_f64()
            );
        }
        JobName::Pagerank => {
            let (nodes, edges, iterations) = baseline::pagerank(
                &a.input,
                &a.output,
                a.damping,
                a.tolerance,
                a.max_iterations,
            )?;
            println!(
                "baseline pagerank: {nodes} nodes, {edges} edges, {iterations} iterations in {:.2} s",
                t.elapsed().as_secs_f64()
            );
        }
        other => bail!("no tuned baseline for {other:?}; use `synod job reference`"),
    }
    Ok(ExitCode::SUCCESS)
}

fn reference(a: ReferenceArgs) -> Result<ExitCode> {
    let t = Instant::now();
    let mut lines: Vec<String> = match a.job {
        JobName::Wordcount => jobs::wordcount_reference(&a.input)?
            .into_iter()
            .map(|(w, n)| format!("{w}\t{n}"))
            .collect(),
        JobName::Index => jobs::index_reference(&a.input)?
            .into_iter()
            .map(|(w, p)| format!("{w}\t{p}"))
            .collect(),
        JobName::Logs => jobs::logs_reference(&a.input)?,
        JobName::Pagerank => {
            let (ranks, iterations) =
                jobs::pagerank_reference(&a.input, a.damping, a.tolerance, a.max_iterations)?;
            eprintln!("{iterations} iterations");
            ranks
                .into_iter()
                .map(|(v, r)| format!("{v}\t{r}"))
                .collect()
        }
    };
    lines.sort();
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&a.output)
            .with_context(|| format!("create {}", a.output.display()))?,
    );
    for l in &lines {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    println!(
        "reference {:?}: {} lines in {:.2} s",
        a.job,
        lines.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

struct Stage<'a> {
    args: &'a RunArgs,
    job: &'a str,
    params: Params,
    input: PathBuf,
    output: PathBuf,
    label: String,
}

struct StageResult {
    counters: Counters,
    progress: Progress,
    maps: u32,
}

fn spawn_worker(master: SocketAddr, dir: &Path, task_delay: Duration) -> Result<Child> {
    let exe = std::env::current_exe().context("find the synod binary")?;
    Command::new(exe)
        .args(["job", "worker", "--master", &master.to_string()])
        .args(["--task-delay", &format!("{}ms", task_delay.as_millis())])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .spawn()
        .context("start a worker process")
}

fn bar(multi: &MultiProgress, label: &str, len: u32, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = multi.add(ProgressBar::new(u64::from(len)));
    b.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(label.to_string());
    b
}

/// One master and its local worker processes, kept for every stage of a run (the
/// PageRank build and iterations run on the same workers).
#[derive(Default)]
struct Session {
    server: Option<MasterServer>,
    children: Vec<Option<Child>>,
    restarts: u32,
    /// `--cluster`: the nodes working for this master.
    cluster: Option<ClusterWorkers>,
}

impl Session {
    /// Tell the workers there are no more jobs and wait for them to exit.
    fn close(&mut self) {
        if let Some(server) = &self.server {
            server.close();
        }
        if let Some(mut cluster) = self.cluster.take() {
            cluster.release(Duration::from_secs(3));
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for child in self.children.iter_mut().flatten() {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

fn run_stage(stage: &Stage<'_>, session: &mut Session) -> Result<StageResult> {
    let a = stage.args;
    let opts = JobOptions {
        job: stage.job.to_string(),
        params: stage.params.clone(),
        input: stage.input.clone(),
        output: stage.output.clone(),
        reduces: a.reduces,
        split_size: a.split_size,
        sort_mem: a.sort_mem,
        master: MasterConfig {
            worker_timeout: a.worker_timeout,
            ..MasterConfig::default()
        },
        listen: a.listen,
    };
    let work_dir = a.work_dir.clone().unwrap_or_else(|| a.output.join("_work"));
    let fresh = session.server.is_none();
    let server = match session.server.take() {
        Some(server) => {
            server.next_job(&opts)?;
            server
        }
        None => MasterServer::start(&opts)?,
    };
    let server = &*session.server.insert(server);
    let multi = MultiProgress::new();
    let mut progress = server.tick()?;
    let map_bar = bar(
        &multi,
        &format!("{} map", stage.label),
        progress.maps,
        a.quiet,
    );
    let reduce_bar = bar(
        &multi,
        &format!("{} reduce", stage.label),
        progress.reduces,
        a.quiet,
    );
    if fresh && a.workers == 0 && a.cluster.is_none() {
        eprintln!(
            "master listening on {}; start workers with `synod job worker --master {} --dir DIR`",
            server.addr(),
            server.addr()
        );
    }
    // Workers start with the first stage that has work (a resumed stage may be done).
    if let Some(dir) = &a.cluster {
        if session.cluster.is_none() && !server.finished() {
            session.cluster = Some(ClusterWorkers::enlist(dir, server.addr(), a.task_delay)?);
        }
    } else if session.children.is_empty() && !server.finished() {
        for i in 0..a.workers {
            session.children.push(Some(spawn_worker(
                server.addr(),
                &work_dir.join(format!("w{i}")),
                a.task_delay,
            )?));
        }
    }
    while !server.finished() {
        std::thread::sleep(Duration::from_millis(20));
        progress = server.tick()?;
        map_bar.set_position(u64::from(progress.maps_done));
        reduce_bar.set_position(u64::from(progress.reduces_done));
        let msg = format!(
            "workers {} attempts {} backups {} reruns {}",
            progress.workers, progress.attempts, progress.backups, progress.map_reruns
        );
        map_bar.set_message(msg);
        // A local worker that died is replaced by a new one (with a new id and an empty
        // disk); the master re-executes what the old one held.
        for (i, slot) in session.children.iter_mut().enumerate() {
            let exited = matches!(
                slot.as_mut().map(Child::try_wait),
                Some(Ok(Some(_))) | Some(Err(_))
            );
            if exited && !server.finished() {
                session.restarts += 1;
                if session.restarts > 100 {
                    bail!("local workers keep dying; giving up");
                }
                *slot = Some(spawn_worker(
                    server.addr(),
                    &work_dir.join(format!("w{i}-{}", session.restarts)),
                    a.task_delay,
                )?);
            }
        }
    }
    progress = server.tick()?;
    map_bar.set_position(u64::from(progress.maps_done));
    reduce_bar.set_position(u64::from(progress.reduces_done));
    map_bar.finish();
    reduce_bar.finish();
    server.finalize(&stage.output)?;
    Ok(StageResult {
        counters: server.counters(),
        progress,
        maps: server.maps(),
    })
}

fn input_bytes(dir: &Path) -> u64 {
    list_inputs(dir)
        .map(|fs| {
            fs.iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn output_lines(dir: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for f in list_inputs(dir)? {
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        {
            lines.extend(task::read_to_string(&f)?.lines().map(str::to_string));
        }
    }
    Ok(lines)
}

fn run_job(a: RunArgs) -> Result<ExitCode> {
    if !a.input.is_dir() {
        bail!("--input {} is not a directory", a.input.display());
    }
    if let Some(dir) = &a.cluster {
        crate::job_cluster::load(dir)?;
    }
    let started = Instant::now();
    let bytes = input_bytes(&a.input);
    let name = match a.job {
        JobName::Wordcount => "wordcount",
        JobName::Index => "index",
        JobName::Logs => "logs",
        JobName::Pagerank => "pagerank",
    };
    let mut totals = Progress::default();
    let mut add = |p: &Progress| {
        totals.maps += p.maps;
        totals.reduces += p.reduces;
        totals.attempts += p.attempts;
        totals.backups += p.backups;
        totals.map_reruns += p.map_reruns;
        totals.dead_workers += p.dead_workers;
    };
    let mut extra = Vec::new();
    let mut session = Session::default();
    let mut nodes = None;
    let final_dir = if a.job == JobName::Pagerank {
        let run = jobs::run_pagerank(
            &a.input,
            &a.output,
            a.damping,
            a.tolerance,
            a.max_iterations,
            a.checkpoint_every,
            &mut |job, params, input, output, label| {
                let r = run_stage(
                    &Stage {
                        args: &a,
                        job,
                        params,
                        input: input.to_path_buf(),
                        output: output.to_path_buf(),
                        label: label.to_string(),
                    },
                    &mut session,
                )?;
                add(&r.progress);
                nodes = nodes.or(session.cluster.as_ref().map(ClusterWorkers::nodes));
                Ok(r.counters)
            },
        )?;
        let resumed = match run.resumed_from {
            0 => String::new(),
            k => format!(", the last epoch from the checkpoint of iteration {k}"),
        };
        extra.push(format!(
            "pagerank: {} nodes, {} iterations, last L1 change {:.3e} (tolerance {:e}){resumed}",
            run.nodes, run.iterations, run.delta, a.tolerance
        ));
        run.ranks
    } else {
        let r = run_stage(
            &Stage {
                args: &a,
                job: name,
                params: Params::new(),
                input: a.input.clone(),
                output: a.output.clone(),
                label: name.into(),
            },
            &mut session,
        )?;
        add(&r.progress);
        nodes = session.cluster.as_ref().map(ClusterWorkers::nodes);
        extra.push(format!("{} map tasks", r.maps));
        if a.job == JobName::Logs {
            let lines = output_lines(&a.output)?;
            let top = jobs::top_urls(&lines, a.top_k as usize);
            let mut f = std::fs::File::create(a.output.join("_top_urls"))?;
            for (u, n) in &top {
                writeln!(f, "{u}\t{n}")?;
            }
            extra.push(format!("top {} URLs:", top.len()));
            for (u, n) in top.iter().take(10) {
                extra.push(format!("  {n:>10}  {u}"));
            }
        }
        a.output.clone()
    };
    session.close();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name}: {:.1} MiB in {secs:.2} s ({:.1} MiB/s), {} map + {} reduce tasks, {} attempts, {} backups, {} map re-executions, {} dead workers",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / (1 << 20) as f64 / secs.max(1e-9),
        totals.maps,
        totals.reduces,
        totals.attempts,
        totals.backups,
        totals.map_reruns,
        totals.dead_workers,
    );
    if let (Some(dir), Some(n)) = (&a.cluster, nodes) {
        println!("workers: the {n} nodes of the cluster in {}", dir.display());
    }
    for l in extra {
        println!("{l}");
    }
    println!("output: {}", final_dir.display());
    Ok(ExitCode::SUCCESS)
}
