//! What the stream tests share: the windowed-counts job's flags, its committed output,
//! its worker processes and the restarts its manager reports.

use std::path::Path;

/// `synod stream run windowed-counts` on `dir`: 500 keys, 100 ms windows, paced at
/// 100,000 events/s, with the given size, checkpoint interval and shape.
pub(crate) fn windowed_counts(
    dir: &Path,
    events: u32,
    checkpoint_ms: u32,
    partitions: u32,
    parallelism: u32,
) -> Vec<String> {
    let mut args: Vec<String> = ["stream", "run", "windowed-counts", "--dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(dir.to_str().expect("utf-8 path").into());
    for (flag, value) in [
        ("--events", events.to_string()),
        ("--rate", "100000".into()),
        ("--keys", "500".into()),
        ("--window", "100ms".into()),
        ("--checkpoint-interval", format!("{checkpoint_ms}ms")),
        ("--partitions", partitions.to_string()),
        ("--parallelism", parallelism.to_string()),
    ] {
        args.extend([flag.to_string(), value]);
    }
    args.push("--paced".into());
    args
}

/// Every committed output line of the job in `dir`, sorted.
pub(crate) fn committed(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for e in std::fs::read_dir(dir.join("output").join("committed")).expect("committed output") {
        let text = std::fs::read_to_string(e.expect("entry").path()).expect("read");
        lines.extend(text.lines().map(str::to_string));
    }
    lines.sort();
    lines
}

/// The pids of the job's current worker processes.
pub(crate) fn worker_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("workers.pid"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The restart count in the job manager's summary (0 if it has none).
pub(crate) fn restarts(stdout: &str) -> u32 {
    stdout
        .split("restarts: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Runs the job failure-free into `clean` with `clean_args` and requires the output
/// committed in `dir` to be the same, line for line; `what` names the failures.
pub(crate) fn assert_committed_as_a_clean_run(
    dir: &Path,
    clean: &Path,
    clean_args: &[String],
    what: &str,
) {
    let out = super::synod_cmd()
        .args(clean_args)
        .output()
        .expect("clean run");
    assert!(
        out.status.success(),
        "clean run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (committed(dir), committed(clean));
    assert!(!b.is_empty(), "the clean run committed nothing");
    assert_eq!(a.len(), b.len(), "{what}");
    assert!(a == b, "committed output differs after {what}");
}
