//! `synod stream`: flags, a verified run, and SIGKILL at random moments on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::{scratch, synod, synod_cmd};
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

fn committed(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let out = dir.join("output").join("committed");
    for e in std::fs::read_dir(&out).expect("committed output") {
        let text = std::fs::read_to_string(e.expect("entry").path()).expect("read");
        lines.extend(text.lines().map(str::to_string));
    }
    lines.sort();
    lines
}

/// SIGKILL the job at random moments, three times, resuming on the same directory each
/// time; the committed output equals a failure-free run's, line for line.
#[test]
fn sigkilled_runs_commit_exactly_the_failure_free_output() {
    let killed = scratch("stream", "killed");
    let clean = scratch("stream", "clean");
    let args = |dir: &Path| -> Vec<String> {
        [
            "stream",
            "run",
            "windowed-counts",
            "--dir",
            dir.to_str().expect("utf-8 path"),
            "--events",
            "200000",
            "--rate",
            "100000",
            "--paced",
            "--keys",
            "500",
            "--window",
            "100ms",
            "--checkpoint-interval",
            "50ms",
            "--partitions",
            "2",
            "--parallelism",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    println!("kill schedule seed {seed}");
    let mut rng = seed;
    let mut kills = 0;
    while kills < 3 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let after = Duration::from_millis(200 + (rng >> 33) % 1500);
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
    let out = synod_cmd().args(&clean_args).output().expect("clean run");
    assert!(out.status.success());
    let (a, b) = (committed(&killed), committed(&clean));
    assert!(!b.is_empty());
    assert_eq!(a.len(), b.len(), "killed {kills} times (seed {seed})");
    assert!(
        a == b,
        "committed output differs after {kills} kills (seed {seed})"
    );
    let _ = std::fs::remove_dir_all(&killed);
    let _ = std::fs::remove_dir_all(&clean);
}
