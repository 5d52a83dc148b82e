//! What the etcdctl tests share: the command, and the check that `etcdctl lock` excludes.

use std::path::Path;
use std::process::{Command, Stdio};

/// An etcdctl (API v3) command against `endpoints`, with a 10 s command timeout.
pub(crate) fn etcdctl_cmd(endpoints: &str) -> Command {
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s");
    c
}

/// Two etcdctl lock processes contend for one lock, each holding it for 0.5 s while it
/// logs its entry and exit to a file in `dir`; the entries must never interleave.
pub(crate) fn contending_locks_never_overlap(endpoints: &str, dir: &Path) {
    let log = dir.join("lock.log");
    let script = format!(
        "echo in $$ >> {0}; sleep 0.5; echo out $$ >> {0}",
        log.display()
    );
    let holders: Vec<_> = (0..2)
        .map(|_| {
            etcdctl_cmd(endpoints)
                .args(["lock", "the-lock", "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for h in holders {
        assert!(h.wait_with_output().unwrap().status.success());
    }
    let entries = std::fs::read_to_string(&log).unwrap();
    let entries: Vec<&str> = entries.lines().collect();
    assert_eq!(entries.len(), 4, "{entries:?}");
    for pair in entries.chunks(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(
            a.starts_with("in ") && b.starts_with("out ") && a[3..] == b[4..],
            "the critical sections overlap: {entries:?}"
        );
    }
}
