//! End-to-end tests: a real master and real workers (as threads) over loopback TCP and
//! files, each built-in job compared with its single-threaded reference.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use super::driver::{JobOptions, MasterServer};
use super::gen;
use super::jobs::{self, Params};
use super::master::MasterConfig;
use super::task::{list_inputs, Counters};
use super::worker::{run_worker, WorkerOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("synod-mr-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run one job with `workers` worker threads; return its counters.
#[allow(clippy::too_many_arguments)]
fn run_stage(
    job: &str,
    params: Params,
    input: &Path,
    output: &Path,
    workers: u32,
    reduces: u32,
    split_size: u64,
    sort_mem: u64,
) -> anyhow::Result<Counters> {
    let opts = JobOptions {
        job: job.to_string(),
        params,
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        reduces,
        split_size,
        sort_mem,
        master: MasterConfig::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    let server = MasterServer::start(&opts)?;
    let handles = start_workers(&server, workers, |i| output.with_extension(format!("w{i}")));
    let mut waited = 0;
    while !server.finished() {
        std::thread::sleep(Duration::from_millis(20));
        server.tick()?;
        waited += 1;
        assert!(waited < 3000, "job did not finish in 60 s");
    }
    server.finalize(output)?;
    server.close();
    for h in handles {
        h.join().expect("worker thread").expect("worker ran");
    }
    Ok(server.counters())
}

/// `n` worker threads for `server`, worker i in `dir(i)`.
fn start_workers(
    server: &MasterServer,
    n: u32,
    dir: impl Fn(u32) -> PathBuf,
) -> Vec<std::thread::JoinHandle<anyhow::Result<()>>> {
    (0..n)
        .map(|i| {
            let o = WorkerOptions {
                master: server.addr(),
                dir: dir(i),
                heartbeat: Duration::from_millis(20),
                master_grace: Duration::from_secs(5),
                task_delay: Duration::ZERO,
                data_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            };
            std::thread::spawn(move || run_worker(&o))
        })
        .collect()
}

fn output_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for f in list_inputs(dir).unwrap() {
        if f.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("part-")
        {
            lines.extend(
                std::fs::read_to_string(&f)
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    lines.sort();
    lines
}

fn part_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    list_inputs(dir)
        .unwrap()
        .into_iter()
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
        })
        .map(|f| {
            (
                f.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&f).unwrap(),
            )
        })
        .collect()
}

/// Word count equals the reference, with a memory budget small enough to spill, and the
/// output files are byte-identical for different worker counts.
#[test]
fn wordcount_equals_reference_and_spills() {
    let dir = scratch("wc");
    let input = dir.join("in");
    gen::text(&input, 400_000, 3, 7).unwrap();
    let want: Vec<String> = jobs::wordcount_reference(&input)
        .unwrap()
        .into_iter()
        .map(|(w, n)| format!("{w}\t{n}"))
        .collect();
    let mut want = want;
    want.sort();
    let mut outputs = Vec::new();
    for (workers, sort_mem) in [(2, 1 << 16), (1, 1 << 30)] {
        let out = dir.join(format!("out{workers}"));
        run_stage(
            "wordcount",
            Params::new(),
            &input,
            &out,
            workers,
            3,
            50_000,
            sort_mem,
        )
        .unwrap();
        assert_eq!(output_lines(&out), want);
        outputs.push(part_files(&out));
    }
    assert_eq!(
        outputs[0], outputs[1],
        "output depends only on the input and R"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The inverted index equals the reference: sorted documents, sorted positions.
#[test]
fn inverted_index_equals_reference() {
    let dir = scratch("index");
    let input = dir.join("in");
    gen::text(&input, 60_000, 4, 3).unwrap();
    let mut want: Vec<String> = jobs::index_reference(&input)
        .unwrap()
        .into_iter()
        .map(|(w, p)| format!("{w}\t{p}"))
        .collect();
    want.sort();
    let out = dir.join("out");
    run_stage("index", Params::new(), &input, &out, 2, 2, 7_000, 1 << 20).unwrap();
    assert_eq!(output_lines(&out), want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Log analysis equals the reference (status per hour, URL counts, p99 per endpoint), and
/// the top-k URLs agree.
#[test]
fn log_analysis_equals_reference() {
    let dir = scratch("logs");
    let input = dir.join("in");
    gen::logs(&input, 300_000, 3, 5).unwrap();
    let want = jobs::logs_reference(&input).unwrap();
    let out = dir.join("out");
    run_stage("logs", Params::new(), &input, &out, 2, 3, 40_000, 1 << 20).unwrap();
    let got = output_lines(&out);
    assert_eq!(got, want);
    assert_eq!(jobs::top_urls(&got, 5), jobs::top_urls(&want, 5));
    let _ = std::fs::remove_dir_all(&dir);
}

/// PageRank (with dangling nodes, to a tolerance) equals the reference within floating
/// point rounding, and takes the same number of iterations.
#[test]
fn pagerank_equals_reference() {
    let dir = scratch("pr");
    let input = dir.join("in");
    gen::rmat(&input, 9, 3000, 2, 11).unwrap();
    pagerank_session_equals_reference(&dir, &input);
}

/// Ids at and past 2^28 do not fit the build's packed map entries: the splits that hold
/// them fall back to wide entries (some mid-split), and the ranks are still the
/// reference's.
#[test]
fn pagerank_with_ids_past_the_packed_range_equals_reference() {
    let dir = scratch("prwide");
    let small = dir.join("small");
    gen::rmat(&small, 9, 3000, 2, 11).unwrap();
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for (n, f) in list_inputs(&small).unwrap().into_iter().enumerate() {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            let ids: Vec<u64> = line
                .split_whitespace()
                .map(|w| w.parse().unwrap())
                .collect();
            // In the second file, from its 100th line, every id divisible by 7 moves up.
            let far = |v: u64| {
                if n == 1 && i >= 100 && v.is_multiple_of(7) {
                    v + (1 << 28) + (v << 33)
                } else {
                    v
                }
            };
            out.push_str(&format!("{} {}\n", far(ids[0]), far(ids[1])));
        }
        std::fs::write(input.join(format!("part-{n:04}")), out).unwrap();
    }
    pagerank_session_equals_reference(&dir, &input);
}

/// Run `run_pagerank` on `input` in one session (a master and two workers for every
/// stage) and compare its ranks with `pagerank_reference`.
fn pagerank_session_equals_reference(dir: &Path, input: &Path) {
    let (want, want_iters) = jobs::pagerank_reference(input, 0.85, 1e-8, 100).unwrap();
    let out = dir.join("out");
    // One master and two workers for every stage (a session).
    let mut session: Option<(
        MasterServer,
        Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    )> = None;
    let run = jobs::run_pagerank(
        input,
        &out,
        0.85,
        1e-8,
        100,
        3,
        &mut |job, params, i, o, _| {
            let opts = JobOptions {
                job: job.to_string(),
                params,
                input: i.to_path_buf(),
                output: o.to_path_buf(),
                reduces: 3,
                split_size: 8_000,
                sort_mem: 1 << 20,
                master: MasterConfig::default(),
                listen: "127.0.0.1:0".parse().unwrap(),
            };
            match &session {
                Some((server, _)) => server.next_job(&opts)?,
                None => {
                    let server = MasterServer::start(&opts)?;
                    let workers = start_workers(&server, 2, |w| dir.join(format!("w{w}")));
                    session = Some((server, workers));
                }
            }
            let Some((server, _)) = &session else {
                unreachable!()
            };
            let mut waited = 0;
            while !server.finished() {
                std::thread::sleep(Duration::from_millis(10));
                server.tick()?;
                waited += 1;
                assert!(waited < 6000, "stage {job} did not finish in 60 s");
            }
            server.finalize(o)?;
            Ok(server.counters())
        },
    )
    .unwrap();
    let (server, workers) = session.unwrap();
    server.close();
    for w in workers {
        w.join().expect("worker thread").expect("worker ran");
    }
    assert_eq!(run.iterations, want_iters);
    let got: BTreeMap<u64, f64> = output_lines(&run.ranks)
        .iter()
        .map(|l| jobs::parse_rank_line(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    let total: f64 = got.values().sum();
    assert!((total - 1.0).abs() < 1e-9, "ranks sum to {total}");
    for (n, r) in &want {
        assert!((got[n] - r).abs() < 1e-12, "node {n}: {} vs {r}", got[n]);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A request about a job the master has moved past is answered "finished", so a worker
/// that missed the end of its job cannot run the next job's tasks with the old job's code
/// and output directory.
#[test]
fn a_request_for_an_earlier_job_of_a_session_is_told_finished() {
    use super::master::{Request, Response};
    use super::shuffle::{read_frame, write_frame};
    use super::wire::{FromMaster, ToMaster, MAX_CONTROL_FRAME};
    let dir = scratch("session");
    let input = dir.join("in");
    gen::text(&input, 20_000, 2, 3).unwrap();
    let opts = |out: &str| JobOptions {
        job: "wordcount".into(),
        params: Params::new(),
        input: input.clone(),
        output: dir.join(out),
        reduces: 2,
        split_size: 1 << 20,
        sort_mem: 1 << 20,
        master: MasterConfig::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    let server = MasterServer::start(&opts("first")).unwrap();
    let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
    let mut ask = |msg: &ToMaster| -> FromMaster {
        write_frame(&mut conn, msg).unwrap();
        read_frame(&mut conn, MAX_CONTROL_FRAME).unwrap()
    };
    let FromMaster::Job(first) = ask(&ToMaster::Hello) else {
        panic!("no job")
    };
    server.next_job(&opts("second")).unwrap();
    let FromMaster::Job(second) = ask(&ToMaster::Hello) else {
        panic!("no job")
    };
    assert_ne!(first.tag(), second.tag());
    let poll = Request::Poll {
        worker: super::master::WorkerId(7),
        addr: "127.0.0.1:1".into(),
        want_work: true,
        running: Vec::new(),
    };
    // The old job's worker is told its job is over, and gets no task.
    assert!(matches!(
        ask(&ToMaster::Req(first.tag(), poll.clone())),
        FromMaster::Resp(Response::Finished)
    ));
    // The current job's worker gets work.
    assert!(matches!(
        ask(&ToMaster::Req(second.tag(), poll)),
        FromMaster::Resp(Response::Assign { .. })
    ));
    server.close();
    assert!(matches!(ask(&ToMaster::Hello), FromMaster::Done));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PageRank build writes the same graph partitions whether a map task's edges fit in
/// its budget (sorted once, written directly) or not (handed in chunks to the spilling
/// map buffer, which spills and merges), and for any number of workers.
#[test]
fn pagerank_build_is_the_same_in_memory_and_spilling() {
    let dir = scratch("prbuild");
    let input = dir.join("in");
    gen::rmat(&input, 10, 6000, 2, 5).unwrap();
    let build = |name: &str, workers: u32, sort_mem: u64| {
        let out = dir.join(name);
        let c = run_stage(
            "pagerank-build",
            Params::new(),
            &input,
            &out,
            workers,
            3,
            20_000,
            sort_mem,
        )
        .unwrap();
        (c, part_files(&out))
    };
    // 20 kB splits hold some 1,500 edges, 3,000 entries: 1 MiB holds them all; 16 KiB
    // holds 1,024, so every map task falls back to the buffer, which spills.
    let (c1, in_memory) = build("mem", 2, 1 << 20);
    let (c2, spilled) = build("spill", 1, 16 << 10);
    assert!(c1.get("nodes").copied().unwrap_or(0.0) > 500.0, "{c1:?}");
    assert_eq!(c1, c2);
    assert_eq!(in_memory.len(), 3);
    assert_eq!(in_memory, spilled);
    // The same map task directly: no spill with the large budget, spills with the small.
    let file = list_inputs(&input).unwrap().remove(0);
    let split = super::task::Split {
        end: std::fs::metadata(&file).unwrap().len(),
        path: file,
        start: 0,
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let task = jobs::build("pagerank-build", &Params::new()).unwrap();
    let map = |sort_mem: usize, name: &str| {
        task.run_map(&split, 3, sort_mem, &dir, name, &cancel)
            .unwrap()
    };
    let (big, small) = (map(1 << 20, "m-big"), map(16 << 10, "m-small"));
    assert_eq!(big.spills, 0);
    assert!(small.spills > 0);
    assert_eq!(
        (big.records_in, big.emitted),
        (small.records_in, small.emitted)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The iterations job (persistent workers exchanging contributions, checkpointing every 2
/// supersteps) computes the same ranks, bit for bit, as one MapReduce job per iteration
/// (the `pagerank` job: a map per partition and a reduce-side merge-join, Lin & Schatz
/// 2010): both add each node's contributions in partition order.
#[test]
fn pagerank_iterations_job_equals_one_job_per_iteration() {
    let dir = scratch("prsame");
    let input = dir.join("in");
    gen::rmat(&input, 10, 6000, 2, 7).unwrap();
    let graph = dir.join("graph");
    let built = run_stage(
        "pagerank-build",
        Params::new(),
        &input,
        &graph,
        2,
        3,
        20_000,
        1 << 20,
    )
    .unwrap();
    let nodes = built["nodes"];
    let params = |dangling: f64| -> Params {
        [
            ("nodes", format!("{nodes}")),
            ("damping", "0.85".to_string()),
            ("dangling", format!("{dangling}")),
            ("graph", graph.to_string_lossy().into_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };
    let mut dangling = built["dangling_nodes"] / nodes;
    let mut current = graph.clone();
    for k in 1..=6 {
        let mut p = params(dangling);
        if k > 1 {
            p.insert("ranks".into(), current.to_string_lossy().into_owned());
        }
        let out = dir.join(format!("iter-{k}"));
        let c = run_stage("pagerank", p, &current, &out, 2, 3, 1 << 20, 1 << 20).unwrap();
        dangling = c["dangling"];
        current = out;
    }
    let mut p = params(built["dangling_nodes"] / nodes);
    for (k, v) in [
        ("tolerance", "0"),
        ("max_iterations", "6"),
        ("checkpoint_every", "2"),
    ] {
        p.insert(k.into(), v.into());
    }
    let last = dir.join("final");
    let c = run_stage(
        super::iterate::JOB,
        p,
        &graph,
        &last,
        2,
        3,
        1 << 20,
        1 << 20,
    )
    .unwrap();
    assert_eq!(c["iterations"], 6.0);
    assert_eq!(c["dangling"], dangling);
    let (per_job, one_job) = (part_files(&current), part_files(&last));
    assert_eq!(per_job.len(), 3);
    assert_eq!(per_job, one_job, "ranks differ");
    assert!(last.join("_checkpoint/iter-00004/part-00002").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
