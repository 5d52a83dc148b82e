//! Helpers shared by the CLI's integration tests.

use std::process::Command;

/// Run the synod binary and return its exit code, stdout and stderr.
pub(crate) fn synod(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(args)
        .output()
        .expect("run synod");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh scratch directory for one test of one suite.
pub(crate) fn scratch(suite: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("synod-{suite}-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch directory");
    dir
}
