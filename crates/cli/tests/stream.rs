//! `synod stream`: flags, a verified run, and SIGKILL at random moments on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::stream_job::{assert_committed_as_a_clean_run, restarts, windowed_counts, worker_pids};
use common::{clock_seed, scratch, synod, synod_cmd, Lcg};
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn stream_flags_get_clear_errors() {
    for (args, expect) in [
        (
            vec!["stream", "run", "windowed-counts", "--events", "0"],
            "must be positive",
        ),
        (
            vec!["stream", "run", "windowed-counts", "--events", "lots"],
            "not a whole number",
        ),
        (
            vec!["stream", "run", "yahoo", "--parallelism", "0"],
            "expected 1 to 64",
        ),
        (
            vec!["stream", "run", "yahoo", "--checkpoint-interval", "0s"],
            "must be positive",
        ),
        (
            vec!["stream", "run", "yahoo", "--window", "ten"],
            "not a duration",
        ),
        (vec!["stream", "run", "wordcount"], "invalid value"),
        (
            vec!["stream", "run", "yahoo", "--workers", "0"],
            "expected 1 to 64",
        ),
        (
            vec![
                "stream",
                "worker",
                "yahoo",
                "--manager",
                "nowhere",
                "--worker-index",
                "0",
                "--token",
                "1",
            ],
            "invalid socket address",
        ),
        (
            vec!["stream", "sim", "--broken", "sometimes"],
            "invalid value",
        ),
        (
            vec!["bench", "stream", "--rates", "1,x"],
            "not a whole number",
        ),
    ] {
        let (code, _, err) = synod(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

#[test]
fn a_resumed_directory_must_hold_the_same_job() {
    let dir = scratch("stream", "same-job");
    let d = dir.to_str().expect("utf-8 path");
    let (code, out, err) = synod(&[
        "stream", "run", "yahoo", "--fresh", "--dir", d, "--events", "100000", "--rate", "20000",
        "--verify",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified"), "{out}");
    let (code, _, err) = synod(&["stream", "run", "yahoo", "--dir", d, "--events", "5000"]);
    assert_eq!(code, 2);
    assert!(err.contains("holds another job"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGKILL the job at random moments, three times, resuming on the same directory each
/// time; the committed output equals a failure-free run's, line for line.
#[test]
fn sigkilled_runs_commit_exactly_the_failure_free_output() {
    let killed = scratch("stream", "killed");
    let clean = scratch("stream", "clean");
    let args = |dir: &Path| windowed_counts(dir, 200000, 50, 2, 3);
    let seed = clock_seed();
    println!("kill schedule seed {seed}");
    let mut rng = Lcg(seed);
    let mut kills = 0;
    while kills < 3 {
        let after = Duration::from_millis(200 + rng.next() % 1500);
        let mut child = synod_cmd()
            .args(args(&killed))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        while started.elapsed() < after {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if child.try_wait().expect("wait").is_some() {
            break; // the job finished before this kill
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
        kills += 1;
    }
    let mut final_args = args(&killed);
    final_args.push("--verify".into());
    let out = synod_cmd().args(&final_args).output().expect("resume");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified"), "{stdout}");
    let mut clean_args = args(&clean);
    clean_args.push("--fresh".into());
    assert_committed_as_a_clean_run(
        &killed,
        &clean,
        &clean_args,
        &format!("{kills} kills (seed {seed})"),
    );
    let _ = std::fs::remove_dir_all(&killed);
    let _ = std::fs::remove_dir_all(&clean);
}

/// The job spread over three `synod stream worker` processes with a TCP shuffle; SIGKILL
/// a random worker at random moments, four times, while the job manager runs on. The job
/// manager notices each death (connection loss), replaces the workers and restarts from
/// the latest complete checkpoint; the committed output equals a failure-free
/// single-process run's, line for line, and the batch answer.
#[test]
fn sigkilled_workers_commit_exactly_the_failure_free_output() {
    let multi = scratch("stream", "workers-killed");
    let clean = scratch("stream", "workers-clean");
    let args = |dir: &Path| -> Vec<String> {
        let mut args = windowed_counts(dir, 300000, 100, 3, 2);
        args.push("--fresh".into());
        args
    };
    let seed = clock_seed();
    println!("kill schedule seed {seed}");
    let mut rng = Lcg(seed);
    let mut next = || rng.next();
    let mut run_args = args(&multi);
    run_args.extend(["--workers".into(), "3".into(), "--verify".into()]);
    let mut manager = synod_cmd()
        .args(&run_args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the job manager");
    let mut kills = 0;
    let mut last_kill = Instant::now();
    let mut wait = Duration::from_millis(300 + next() % 700);
    let started = Instant::now();
    while kills < 4 && started.elapsed() < Duration::from_secs(25) {
        if manager.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        if last_kill.elapsed() < wait {
            continue;
        }
        let pids = worker_pids(&multi);
        if pids.is_empty() {
            continue;
        }
        let victim = pids[next() as usize % pids.len()];
        // SAFETY: kill(2) on a worker process this test's job manager started.
        if unsafe { libc::kill(victim, libc::SIGKILL) } == 0 {
            kills += 1;
            last_kill = Instant::now();
            wait = Duration::from_millis(300 + next() % 700);
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
    assert!(
        kills >= 2,
        "only {kills} kills landed before the job ended: {stdout}"
    );
    let restarts = restarts(&stdout);
    println!("{kills} kills, {restarts} restarts\n{stdout}");
    assert!(restarts >= 1, "no restart after {kills} kills: {stdout}");
    assert_committed_as_a_clean_run(
        &multi,
        &clean,
        &args(&clean),
        &format!("{kills} worker kills (seed {seed})"),
    );
    let _ = std::fs::remove_dir_all(&multi);
    let _ = std::fs::remove_dir_all(&clean);
}

/// The file source over two worker processes: out-of-order lines split into byte ranges;
/// the committed counts equal a batch count over the file. Missing or malformed input gets
/// a clear error.
#[test]
fn file_counts_over_workers_equal_the_batch_answer_and_bad_input_is_refused() {
    let dir = scratch("stream", "file");
    let input = dir.join("clicks.csv");
    let mut text = String::new();
    let mut x = 12345u64;
    for i in 0..20_000u64 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        // 10 records per ms of event time, up to 40 ms out of order.
        let ts = (i / 10).saturating_sub((x >> 40) % 40);
        text.push_str(&format!("{ts},user-{}\n", (x >> 20) % 50));
    }
    std::fs::write(&input, &text).expect("write input");
    let state = dir.join("state");
    let (i, s) = (
        input.to_str().expect("utf-8"),
        state.to_str().expect("utf-8"),
    );
    let (code, out, err) = synod(&[
        "stream",
        "run",
        "file-counts",
        "--input",
        i,
        "--dir",
        s,
        "--fresh",
        "--partitions",
        "3",
        "--window",
        "100ms",
        "--workers",
        "2",
        "--verify",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified"), "{out}");
    let (code, _, err) = synod(&["stream", "run", "file-counts", "--dir", s, "--fresh"]);
    assert_ne!(code, 0);
    assert!(err.contains("needs --input"), "{err}");
    let (code, _, err) = synod(&["stream", "run", "yahoo", "--input", i, "--dir", s]);
    assert_ne!(code, 0);
    assert!(err.contains("only for file-counts"), "{err}");
    std::fs::write(&input, "1,a\n2,b\nlater,c\n").expect("write bad input");
    let (code, _, err) = synod(&[
        "stream",
        "run",
        "file-counts",
        "--input",
        i,
        "--dir",
        s,
        "--fresh",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("at byte 8") && err.contains("later"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A worker that stops answering (SIGSTOP: its connections stay open) is declared dead
/// by the heartbeat timeout; the job restarts without it and commits exactly the batch
/// answer.
#[test]
fn a_silent_worker_is_detected_by_its_missing_heartbeats() {
    let dir = scratch("stream", "workers-stopped");
    let manager = synod_cmd()
        .args([
            "stream",
            "run",
            "windowed-counts",
            "--fresh",
            "--dir",
            dir.to_str().expect("utf-8 path"),
            "--events",
            "300000",
            "--rate",
            "100000",
            "--paced",
            "--keys",
            "200",
            "--window",
            "200ms",
            "--workers",
            "2",
            "--verify",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the job manager");
    let started = Instant::now();
    let mut stopped = None;
    while stopped.is_none() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() < Duration::from_millis(800) {
            continue;
        }
        if let Some(&victim) = worker_pids(&dir).first() {
            // SAFETY: kill(2) on a worker process this test's job manager started.
            if unsafe { libc::kill(victim, libc::SIGSTOP) } == 0 {
                stopped = Some(victim);
            }
        }
    }
    let out = manager.wait_with_output().expect("job manager");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stopped.is_some(), "no worker to stop");
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("restarts: 1"), "{stdout}");
    assert!(stdout.contains("verified"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
