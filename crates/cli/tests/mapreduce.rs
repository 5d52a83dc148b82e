//! `synod job`: MapReduce with real worker processes, killed with SIGKILL mid-map and
//! mid-reduce, and a master killed and restarted mid-job (issue 12).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::{scratch, synod, synod_cmd};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn parts(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("output directory") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") {
            out.insert(name, std::fs::read(e.path()).expect("read part"));
        }
    }
    out
}

fn sorted_lines(parts: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let mut lines: Vec<String> = parts
        .values()
        .flat_map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

fn sigkill(child: &mut Child) {
    // SAFETY: sending a signal to our own child process by its pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                .count()
        })
        .unwrap_or(0)
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Procs(Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn worker(master: &str, dir: &Path, delay: &str) -> Child {
    synod_cmd()
        .args([
            "job",
            "worker",
            "--master",
            master,
            "--task-delay",
            delay,
            "--dir",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker")
}

/// Start a master that waits for external workers; return it and its address.
fn master(input: &Path, output: &Path, listen: &str) -> (Child, String) {
    let job = [
        "wordcount",
        "--reduces",
        "4",
        "--split-size",
        "256KiB",
        "--quiet",
    ];
    spawn_master(&job, input, output, listen)
}

/// Start `synod job run JOB_ARGS...` as a master that waits for external workers (a worker
/// timeout of 1 s); return it and the address it prints.
fn spawn_master(job_args: &[&str], input: &Path, output: &Path, listen: &str) -> (Child, String) {
    let mut m = synod_cmd()
        .args(["job", "run"])
        .args(job_args)
        .args(["--workers", "0", "--worker-timeout", "1s"])
        .args(["--listen", listen, "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start master");
    let stderr = m.stderr.take().expect("stderr");
    let mut line = String::new();
    BufReader::new(stderr)
        .read_line(&mut line)
        .expect("master prints its address");
    let addr = line
        .split_whitespace()
        .nth(3)
        .map(|s| s.trim_end_matches(';').to_string())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (m, addr)
}

/// The failure-free word count the fault tests compare against, in `clean`.
fn clean_run(input: &Path, clean: &Path) -> PathBuf {
    let (code, _, err) = synod(&[
        "job",
        "run",
        "wordcount",
        "--quiet",
        "--workers",
        "2",
        "--reduces",
        "4",
        "--split-size",
        "256KiB",
        "--input",
        input.to_str().unwrap(),
        "--output",
        clean.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    clean.to_path_buf()
}

/// Wait for the master process to exit, or fail after `timeout`.
fn wait_exit(master: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = master.try_wait().expect("wait master") {
            return s;
        }
        assert!(start.elapsed() < timeout, "job did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn generate(dir: &Path) -> PathBuf {
    let input = dir.join("in");
    let (code, _, err) = synod(&[
        "job",
        "gen",
        "text",
        "--output",
        input.to_str().expect("utf-8 path"),
        "--size",
        "3MiB",
        "--files",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    input
}

/// The job runs with local workers, prints a summary, and equals the reference.
#[test]
fn wordcount_runs_and_equals_the_reference() {
    let dir = scratch("mapreduce", "run");
    let input = generate(&dir);
    let out = dir.join("out");
    let (code, stdout, err) = synod(&[
        "job",
        "run",
        "wordcount",
        "--quiet",
        "--workers",
        "2",
        "--split-size",
        "512KiB",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("wordcount:") && stdout.contains("map + 4 reduce tasks"),
        "{stdout}"
    );
    assert_wordcount_equals_the_reference(&dir, &input, &out);
    assert!(out.join("_SUCCESS").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad flags and bad input get a clear error, not a panic.
#[test]
fn bad_flags_get_clear_errors() {
    let (code, _, err) = synod(&[
        "job",
        "run",
        "wordcount",
        "--input",
        "x",
        "--output",
        "y",
        "--workers",
        "two",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--workers"), "{err}");
    let (code, _, err) = synod(&[
        "job",
        "run",
        "wordcount",
        "--input",
        "x",
        "--output",
        "y",
        "--split-size",
        "12XB",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown size unit"), "{err}");
    let (code, _, err) = synod(&["job", "run", "sorting", "--input", "x", "--output", "y"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'sorting'"), "{err}");
    let (code, _, err) = synod(&[
        "job",
        "run",
        "wordcount",
        "--input",
        "/nonexistent/in",
        "--output",
        "y",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a directory"), "{err}");
    let (code, _, err) = synod(&["job", "gen", "graph", "--output", "g", "--scale", "99"]);
    assert_eq!(code, 2);
    assert!(err.contains("--scale"), "{err}");
}

/// §3.3: a worker SIGKILLed in the middle of the map phase, and another in the middle of
/// the reduce phase: the job completes, the dead workers' completed map tasks run again,
/// and every output file is byte-identical to a run without failures.
#[test]
fn sigkill_mid_map_and_mid_reduce_gives_byte_identical_output() {
    let dir = scratch("mapreduce", "kill");
    let input = generate(&dir);
    let clean = clean_run(&input, &dir.join("clean"));

    let out = dir.join("faulty");
    let (m, addr) = master(&input, &out, "127.0.0.1:0");
    let mut procs = Procs(vec![m]);
    let w0 = dir.join("w0");
    procs.0.push(worker(&addr, &w0, "100ms"));
    procs.0.push(worker(&addr, &dir.join("w1"), "100ms"));
    // Mid-map: worker 0 has finished a map task, and the map phase is not over.
    wait_for("a map output on worker 0", Duration::from_secs(60), || {
        count_files(&w0, ".idx") >= 1
    });
    assert!(!out.join("part-00000").exists());
    sigkill(&mut procs.0[1]);
    procs.0.push(worker(&addr, &dir.join("w2"), "100ms"));
    // Mid-reduce: the first reduce task has committed and others have not.
    wait_for(
        "the first committed reduce",
        Duration::from_secs(60),
        || !parts(&out).is_empty(),
    );
    assert!(parts(&out).len() < 4, "the reduce phase already ended");
    sigkill(&mut procs.0[2]);
    procs.0.push(worker(&addr, &dir.join("w3"), "100ms"));
    let master = &mut procs.0[0];
    let status = wait_exit(master, Duration::from_secs(90));
    let mut summary = String::new();
    std::io::Read::read_to_string(master.stdout.as_mut().expect("stdout"), &mut summary).ok();
    assert!(status.success(), "{summary}");
    assert!(!summary.contains(" 0 map re-executions"), "{summary}");
    assert_eq!(parts(&out), parts(&clean), "output differs after failures");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The word counts in `out` are `synod job reference wordcount`'s on `input`.
fn assert_wordcount_equals_the_reference(dir: &Path, input: &Path, out: &Path) {
    let reference = dir.join("ref.txt");
    let (code, _, err) = synod(&[
        "job",
        "reference",
        "wordcount",
        "--input",
        input.to_str().unwrap(),
        "--output",
        reference.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let want: Vec<String> = std::fs::read_to_string(&reference)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(sorted_lines(&parts(out)), want);
}

/// A loopback address with a port free now, for a master that must be restarted on the
/// address its workers know.
fn free_listen_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// A master SIGKILLed mid-job and started again on the same output directory resumes from
/// its persisted state: completed work is kept and the output equals a clean run's.
#[test]
fn restarted_master_resumes_the_job() {
    let dir = scratch("mapreduce", "master");
    let input = generate(&dir);
    let clean = clean_run(&input, &dir.join("clean"));
    let listen = free_listen_address();
    let out = dir.join("out");
    let (m, addr) = master(&input, &out, &listen);
    let mut procs = Procs(vec![m]);
    procs.0.push(worker(&addr, &dir.join("w0"), "100ms"));
    procs.0.push(worker(&addr, &dir.join("w1"), "100ms"));
    wait_for("some map outputs", Duration::from_secs(60), || {
        count_files(&dir.join("w0"), ".idx") + count_files(&dir.join("w1"), ".idx") >= 3
    });
    sigkill(&mut procs.0[0]);
    // The workers keep retrying the master's address; a new master resumes the job.
    let (m2, _) = master(&input, &out, &listen);
    procs.0[0] = m2;
    let master = &mut procs.0[0];
    let status = wait_exit(master, Duration::from_secs(90));
    assert!(status.success());
    assert_eq!(parts(&out), parts(&clean));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The flags of the PageRank fault tests: 12 iterations, a checkpoint every 3.
const PAGERANK_ARGS: [&str; 9] = [
    "--reduces",
    "3",
    "--max-iterations",
    "12",
    "--tolerance",
    "1e-300",
    "--checkpoint-every",
    "3",
    "--quiet",
];

/// A small R-MAT graph, and the ranks of a clean run on it.
fn pagerank_clean_run(dir: &Path) -> (PathBuf, PathBuf) {
    let input = dir.join("graph");
    let (code, _, err) = synod(&[
        "job",
        "gen",
        "graph",
        "--scale",
        "11",
        "--edges",
        "20000",
        "--files",
        "2",
        "--output",
        input.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let clean = dir.join("clean");
    let mut args = vec!["job", "run", "pagerank", "--workers", "2"];
    args.extend(PAGERANK_ARGS);
    args.extend(["--input", input.to_str().unwrap()]);
    args.extend(["--output", clean.to_str().unwrap()]);
    let (code, _, err) = synod(&args);
    assert_eq!(code, 0, "{err}");
    (input, clean)
}

/// A PageRank master that waits for external workers; returns it and its address.
fn pagerank_master(input: &Path, out: &Path, listen: &str) -> (Child, String) {
    let mut job = vec!["pagerank"];
    job.extend(PAGERANK_ARGS);
    spawn_master(&job, input, out, listen)
}

/// Wait until every partition has its checkpoint of `iteration` and the iterations
/// have not ended.
fn wait_for_checkpoint(out: &Path, iteration: u32) {
    let checkpoint = out.join(format!("final/_checkpoint/iter-{iteration:05}"));
    wait_for("the checkpoint", Duration::from_secs(60), || {
        (0..3).all(|q| checkpoint.join(format!("part-{q:05}")).exists())
    });
    assert!(
        parts(&out.join("final")).len() < 3,
        "the iterations already ended"
    );
}

/// Wait for the master to exit well; returns its summary.
fn pagerank_summary(master: &mut Child) -> String {
    let status = wait_exit(master, Duration::from_secs(90));
    let mut summary = String::new();
    std::io::Read::read_to_string(master.stdout.as_mut().expect("stdout"), &mut summary).ok();
    assert!(status.success(), "{summary}");
    assert!(summary.contains("12 iterations"), "{summary}");
    summary
}

/// PageRank's iterations run in one job of persistent workers that checkpoint their ranks
/// every 3 supersteps. A worker SIGKILLed after a checkpoint and before the end: the master
/// reassigns its partitions from the checkpoint, and the ranks are byte-identical to a
/// clean run's.
#[test]
fn pagerank_worker_sigkill_mid_iterations_resumes_from_a_checkpoint() {
    let dir = scratch("mapreduce", "pr-kill");
    let (input, clean) = pagerank_clean_run(&dir);
    let out = dir.join("faulty");
    let (m, addr) = pagerank_master(&input, &out, "127.0.0.1:0");
    let mut procs = Procs(vec![m]);
    procs.0.push(worker(&addr, &dir.join("w0"), "150ms"));
    procs.0.push(worker(&addr, &dir.join("w1"), "150ms"));
    wait_for_checkpoint(&out, 3);
    sigkill(&mut procs.0[2]);
    procs.0.push(worker(&addr, &dir.join("w2"), "150ms"));
    let summary = pagerank_summary(&mut procs.0[0]);
    assert!(!summary.contains(" 0 dead workers"), "{summary}");
    assert!(
        summary.contains("from the checkpoint of iteration"),
        "{summary}"
    );
    assert_eq!(
        parts(&out.join("ranks")),
        parts(&clean.join("ranks")),
        "ranks differ after a worker was killed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PageRank master SIGKILLed mid-iterations, after the first checkpoint: a new master
/// on the same address and output resumes the build from its state file and the iterations
/// from the checkpoint its state file records, and the ranks are byte-identical to a clean
/// run's.
#[test]
fn pagerank_master_sigkill_mid_iterations_resumes_from_the_checkpoint() {
    let dir = scratch("mapreduce", "pr-master");
    let (input, clean) = pagerank_clean_run(&dir);
    let listen = free_listen_address();
    let out = dir.join("faulty");
    let (m, addr) = pagerank_master(&input, &out, &listen);
    let mut procs = Procs(vec![m]);
    procs.0.push(worker(&addr, &dir.join("w0"), "150ms"));
    procs.0.push(worker(&addr, &dir.join("w1"), "150ms"));
    // The second checkpoint's files, not the first's: a worker writes a checkpoint before
    // it reports it, and a master killed between the two has not recorded it yet and
    // rightly starts the iterations over. By the second, it has recorded the first.
    wait_for_checkpoint(&out, 6);
    sigkill(&mut procs.0[0]);
    // The workers keep retrying the master's address.
    let (m2, _) = pagerank_master(&input, &out, &listen);
    procs.0[0] = m2;
    let summary = pagerank_summary(&mut procs.0[0]);
    assert!(
        summary.contains("from the checkpoint of iteration"),
        "the restarted master began again from the build: {summary}"
    );
    assert_eq!(
        parts(&out.join("ranks")),
        parts(&clean.join("ranks")),
        "ranks differ after the master was killed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Map output files (`*.idx`) anywhere under `dir`.
fn count_idx_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count_idx_under(&e.path())
                    } else {
                        usize::from(e.file_name().to_string_lossy().ends_with(".idx"))
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// `synod job run --cluster`: the nodes of a 3-node `synod up` cluster are the workers
/// (each node's MapReduce service runs one, serving its map output to reducers). One node
/// is SIGKILLed in the middle of the map phase: its completed map tasks run again on the
/// other nodes, and the output equals the reference and is byte-identical to a clean run
/// with local workers. A restarted node joins the next job.
#[test]
fn wordcount_on_the_nodes_of_synod_up_survives_a_node_sigkill() {
    let dir = scratch("mapreduce", "cluster");
    let input = generate(&dir);
    let clean = clean_run(&input, &dir.join("clean"));
    let (cluster, admin) = common::start_cluster("mr-cluster", 3);
    common::eventually("every node serves the MapReduce worker API", || {
        (1..=3).all(|i| {
            common::get(admin(i), "/v1/mapreduce/worker").is_some_and(|b| b.contains("workers"))
        })
    });
    let run = |out: &Path| {
        synod_cmd()
            .args(["job", "run", "wordcount", "--cluster"])
            .arg(&cluster.dir)
            .args(["--reduces", "4", "--split-size", "256KiB"])
            .args(["--worker-timeout", "1s", "--task-delay", "200ms", "--quiet"])
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the job")
    };
    let out = dir.join("out");
    let mut procs = Procs(vec![run(&out)]);
    // Mid-map: node 2 has finished a map task, and no reduce has committed.
    let n2 = cluster.dir.join("n2").join("mapreduce");
    wait_for("a map output on n2", Duration::from_secs(60), || {
        count_idx_under(&n2) >= 1
    });
    assert!(!out.join("part-00000").exists());
    cluster.kill(2);
    let job = &mut procs.0[0];
    let status = wait_exit(job, Duration::from_secs(120));
    let mut summary = String::new();
    std::io::Read::read_to_string(job.stdout.as_mut().expect("stdout"), &mut summary).ok();
    let mut errors = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().expect("stderr"), &mut errors).ok();
    assert!(status.success(), "{summary}{errors}");
    assert!(summary.contains("workers: the 3 nodes"), "{summary}");
    // Work on n2 was redone: a completed map task re-executed, or (when the kill beat
    // the completion report to the master) an in-progress one attempted again.
    let count = |label: &str| -> u64 {
        let end = summary
            .find(label)
            .unwrap_or_else(|| panic!("no {label:?} in {summary}"));
        let start = summary[..end].rfind(' ').map_or(0, |i| i + 1);
        summary[start..end].parse().expect("a count")
    };
    let tasks = count(" map + ") + count(" reduce tasks");
    assert!(
        count(" map re-executions") > 0 || count(" attempts") > tasks,
        "nothing was redone after n2 died: {summary}"
    );
    assert_eq!(
        parts(&out),
        parts(&clean),
        "output differs after a node died"
    );
    assert_wordcount_equals_the_reference(&dir, &input, &out);

    // The node comes back and works for the next job; every node's worker ends with it.
    cluster.restart();
    common::eventually("n2 serves the MapReduce worker API again", || {
        common::get(admin(2), "/v1/mapreduce/worker").is_some_and(|b| b.contains("workers"))
    });
    let again = dir.join("again");
    let job = &mut procs.0[0];
    *job = run(&again);
    let status = wait_exit(job, Duration::from_secs(120));
    assert!(status.success());
    assert_eq!(parts(&again), parts(&clean));
    for i in 1..=3 {
        let body = common::get(admin(i), "/v1/mapreduce/worker").expect("worker status");
        assert!(body.contains("finished"), "n{i}: {body}");
        assert!(!body.contains("running"), "n{i}: {body}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--cluster` errors: a directory without a cluster, and a flag that makes no sense with it.
#[test]
fn cluster_flag_errors_are_clear() {
    let dir = scratch("mapreduce", "cluster-flags");
    let input = generate(&dir);
    let (code, _, err) = synod(&[
        "job",
        "run",
        "wordcount",
        "--cluster",
        dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.join("out").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no cluster in"), "{err}");
    let (code, _, err) = synod(&[
        "job",
        "run",
        "wordcount",
        "--cluster",
        dir.to_str().unwrap(),
        "--workers",
        "2",
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.join("out2").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--workers") && err.contains("--cluster"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
