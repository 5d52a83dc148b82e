//! `synod stream run --cluster`: the job's workers on the nodes of a real 3-node `synod up`
//! cluster, one node SIGKILLed mid-job.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::stream_job::{assert_committed_as_a_clean_run, restarts, windowed_counts, worker_pids};
use common::{clock_seed, request, scratch, start_cluster, synod, synod_cmd};
use std::path::Path;
use std::time::{Duration, Instant};

fn complete_checkpoints(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("checkpoints"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().join("_COMPLETE").exists())
                .count()
        })
        .unwrap_or(0)
}

/// The parent process of `pid`, from /proc.
fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Windowed counts with one worker on each node of a 3-node cluster. A random node is
/// SIGKILLed at a random moment after the first complete checkpoint; its worker exits
/// with it, and the job manager restarts the job from the latest complete checkpoint on
/// the two survivors. The node is brought back with `synod up` and a second node is
/// killed; the next attempt runs on the restarted node too. The committed output equals
/// a failure-free single-process run's, line for line, and the batch answer.
#[test]
fn a_sigkilled_node_leaves_the_committed_output_exactly_the_failure_free_one() {
    let (cluster, admin) = start_cluster("stream-cluster", 3);
    let job = scratch("stream-cluster", "job");
    let clean = scratch("stream-cluster", "clean");
    let args = |dir: &Path| -> Vec<String> {
        let mut args = windowed_counts(dir, 450000, 100, 3, 2);
        args.push("--fresh".into());
        args
    };
    let seed = clock_seed();
    let victim_node = 1 + (seed % 3) as u16;
    let delay = Duration::from_millis((seed >> 8) % 700);
    println!("seed {seed}: kill n{victim_node} {delay:?} after the first checkpoint");
    let mut run_args = args(&job);
    run_args.extend([
        "--cluster".into(),
        cluster.dir.to_str().expect("utf-8").into(),
        "--verify".into(),
    ]);
    let manager = synod_cmd()
        .args(&run_args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the job manager");
    // Every worker runs as a child of a node, not of the manager.
    let started = Instant::now();
    while complete_checkpoints(&job) == 0 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let workers = worker_pids(&job);
    assert_eq!(workers.len(), 3, "one worker per node");
    let mut hosted = 0;
    for i in 1..=3 {
        let (code, body) = request(
            admin(i),
            "GET",
            "/v1/stream/workers",
            "",
            Duration::from_secs(5),
        )
        .expect("worker list");
        assert_eq!(code, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).expect("json");
        hosted += list["workers"].as_array().map_or(0, Vec::len);
    }
    assert_eq!(hosted, 3, "the nodes host the three workers");
    std::thread::sleep(delay);
    cluster.kill(victim_node);
    // Once the job runs again on the survivors, bring the node back with `synod up` and
    // kill another one: the next attempt must use the restarted node again.
    let mut manager = manager;
    let killed_at = Instant::now();
    while worker_pids(&job) == workers
        && manager.try_wait().expect("wait").is_none()
        && killed_at.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.restart();
    std::thread::sleep(Duration::from_millis(300));
    let second = 1 + (victim_node % 3);
    let mut second_kill = false;
    let before = worker_pids(&job);
    if manager.try_wait().expect("wait").is_none() {
        cluster.kill(second);
        println!("killed n{second} too, {:?} into the job", started.elapsed());
        let killed_at = Instant::now();
        while worker_pids(&job) == before && killed_at.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Unless the job was already finishing, a new attempt was deployed.
        if worker_pids(&job) != before {
            second_kill = true;
            let restarted = common::pid(&cluster.dir, &format!("n{victim_node}"));
            let parents: Vec<i32> = worker_pids(&job).into_iter().filter_map(parent).collect();
            assert!(
                parents.contains(&restarted) || manager.try_wait().expect("wait").is_some(),
                "no worker on the restarted node n{victim_node} (pid {restarted}): parents {parents:?}"
            );
        }
    }
    let out = manager.wait_with_output().expect("job manager");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{} (seed {seed})",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified"), "{stdout}");
    let restarts = restarts(&stdout);
    let deaths = if second_kill { 2 } else { 1 };
    assert!(
        restarts >= deaths,
        "{deaths} node deaths, {restarts} restarts: {stdout}"
    );
    println!("{stdout}");
    // The killed node's worker did not outlive it; the others were stopped at the end.
    for pid in workers {
        assert!(!alive(pid), "worker {pid} still runs");
    }
    assert_committed_as_a_clean_run(
        &job,
        &clean,
        &args(&clean),
        &format!("the kills of seed {seed}"),
    );

    // The node's API refuses anything but a stream worker, and bad requests.
    // (The first victim runs again after `synod up`.)
    let survivor = victim_node;
    for (body, expect) in [
        (
            r#"{"token":1,"index":0,"args":["up","--nodes","3"]}"#,
            "stream worker",
        ),
        (r#"{"token":1}"#, "bad worker request"),
        (
            r#"{"token":1,"index":0,"args":["stream","worker","--node-pid","1"]}"#,
            "set by the node",
        ),
    ] {
        let (code, answer) = request(
            admin(survivor),
            "POST",
            "/v1/stream/workers",
            body,
            Duration::from_secs(5),
        )
        .expect("answer");
        assert_eq!(code, 400, "{answer}");
        assert!(answer.contains(expect), "{answer}");
    }
    // A directory without a cluster.
    let (code, _, err) = synod(&[
        "stream",
        "run",
        "windowed-counts",
        "--dir",
        clean.to_str().expect("utf-8"),
        "--fresh",
        "--cluster",
        job.to_str().expect("utf-8"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no cluster.toml"), "{err}");
    let _ = std::fs::remove_dir_all(&job);
    let _ = std::fs::remove_dir_all(&clean);
}
