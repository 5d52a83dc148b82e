//! Helpers shared by the CLI's integration tests.

// Shared by several test binaries; each uses only some of these.
#![allow(dead_code, clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) mod etcd_ranges;
pub(crate) mod etcdctl;
pub(crate) mod stream_job;

/// A seed for a test's random schedule, from the clock; the test prints it so that a
/// failure names the schedule that caused it.
pub(crate) fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64)
}

/// A small deterministic generator for test schedules (Knuth's MMIX LCG).
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    /// The next 31 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

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

pub(crate) fn synod_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_synod"))
}

/// Stops the cluster even when an assertion fails.
pub(crate) struct Cluster {
    pub(crate) dir: PathBuf,
}

impl Cluster {
    /// `synod up --dir` again: starts every node that is not running (after a kill).
    pub(crate) fn restart(&self) {
        let again = synod_cmd()
            .arg("up")
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .expect("run synod up");
        assert!(
            again.status.success(),
            "synod up (restart) failed: {}",
            String::from_utf8_lossy(&again.stderr)
        );
    }

    /// SIGKILL node `n<i>`.
    pub(crate) fn kill(&self, i: u16) {
        let victim = pid(&self.dir, &format!("n{i}"));
        assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = synod_cmd().arg("down").arg("--dir").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A base port with `count` consecutive free ports at +0, +100 and +200.
pub(crate) fn free_ports(count: u16) -> u16 {
    // Tests in one binary run in parallel: each call starts from a different base. Ports
    // stay below Linux's ephemeral range (32768 and up), where a port free at this check
    // can be taken by some test's outgoing connection before the node binds it.
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_400; // LOW + SPAN + 200 + count < 32768
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = u32::from(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let start = (std::process::id() % 124) * 100 + call * 10;
    'base: for k in 0..400u32 {
        let base = (LOW + (start + k * 997) % SPAN) as u16;
        for offset in [0u16, 100, 200] {
            for i in 0..count {
                if TcpListener::bind(("127.0.0.1", base + offset + i)).is_err() {
                    continue 'base;
                }
            }
        }
        return base;
    }
    panic!("no free ports on loopback");
}

pub(crate) fn get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body.split_once("\r\n\r\n")?.1.to_string())
}

pub(crate) fn status(admin: SocketAddr) -> Option<serde_json::Value> {
    serde_json::from_str(&get(admin, "/status")?).ok()
}

/// Wait until `check` holds, or fail with `what`.
pub(crate) fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting until {what}");
}

pub(crate) fn pid(dir: &Path, node: &str) -> i32 {
    std::fs::read_to_string(dir.join(format!("{node}.pid")))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

/// One HTTP/1.1 request on a fresh connection: the status code and the body, or `None`
/// when the node did not answer within `timeout`.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// `synod up --nodes n` in a fresh directory on free ports: the cluster (stopped on drop)
/// and the admin address of node `i` (1-based).
pub(crate) fn start_cluster(name: &str, nodes: u16) -> (Cluster, impl Fn(u16) -> SocketAddr) {
    let (cluster, admin, _) = start_cluster_ports(name, nodes);
    (cluster, admin)
}

/// Like [`start_cluster`], also giving the client (etcd API) address of node `i`.
pub(crate) fn start_cluster_ports(
    name: &str,
    nodes: u16,
) -> (
    Cluster,
    impl Fn(u16) -> SocketAddr + Clone,
    impl Fn(u16) -> SocketAddr + Clone,
) {
    start_cluster_with(name, nodes, &[])
}

/// [`start_cluster_ports`] with extra `synod up` flags (such as `--ap`).
pub(crate) fn start_cluster_with(
    name: &str,
    nodes: u16,
    extra: &[&str],
) -> (
    Cluster,
    impl Fn(u16) -> SocketAddr + Clone,
    impl Fn(u16) -> SocketAddr + Clone,
) {
    let base = free_ports(nodes);
    let dir = std::env::temp_dir().join(format!("synod-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = Cluster { dir };
    let up = synod_cmd()
        .arg("up")
        .args(extra)
        .args(["--nodes", &nodes.to_string(), "--dir"])
        .arg(&cluster.dir)
        .args(["--peer-port", &base.to_string()])
        .args(["--client-port", &(base + 100).to_string()])
        .args(["--admin-port", &(base + 200).to_string()])
        .output()
        .expect("run synod up");
    assert!(
        up.status.success(),
        "synod up failed: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    (
        cluster,
        move |i: u16| SocketAddr::from(([127, 0, 0, 1], base + 200 + i - 1)),
        move |i: u16| SocketAddr::from(([127, 0, 0, 1], base + 100 + i - 1)),
    )
}

/// The node that reports itself Raft leader, if any.
pub(crate) fn raft_leader(admin: &dyn Fn(u16) -> SocketAddr, nodes: u16) -> Option<u16> {
    (1..=nodes).find(|&i| status(admin(i)).is_some_and(|s| s["raft"]["role"] == "leader"))
}

/// A history shared by client threads, with times from one start.
pub(crate) struct Recorder {
    pub(crate) history: std::sync::Mutex<synod_check::history::History>,
    started: Instant,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Recorder {
            history: std::sync::Mutex::new(synod_check::history::History::new()),
            started: Instant::now(),
        }
    }

    /// Record a write of `value` to `key` that completed before the clients started.
    pub(crate) fn seed_write(&self, key: &str, value: u64) {
        use synod_check::history::{Op, OpResult, Process};
        let mut h = self.history.lock().unwrap();
        let id = h.invoke(
            Process(0),
            Op::Write {
                key: key.into(),
                value,
            },
            0,
        );
        let t = self.now();
        h.ok(id, OpResult::WriteOk, t).unwrap();
    }

    /// Nanoseconds since the recorder was made.
    pub(crate) fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }
}

/// A child process killed when the test ends, however it ends.
pub(crate) struct Process(pub(crate) std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One GET on a fresh connection: the status code (0 if unparseable) and the whole
/// response, headers included.
pub(crate) fn get_response(address: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// The value of header `name` in a raw HTTP response.
pub(crate) fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}
