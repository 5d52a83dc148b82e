//! The real master: the [`Master`] state machine behind a TCP server, with its state
//! persisted (write, fsync, rename) before any response that depends on it leaves.

// A driver: real time, real sockets and files.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use super::jobs::{self, Params};
use super::master::{Master, MasterConfig, MasterSnapshot, Progress, Request};
use super::shuffle::{read_frame, write_frame};
use super::task::{make_splits, Counters};
use super::wire::{FromMaster, JobSpec, ToMaster, MAX_CONTROL_FRAME};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The name of the master's state file in the output directory.
pub const STATE_FILE: &str = "_master_state";

/// A job to run.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// Built-in job name.
    pub job: String,
    /// Its parameters.
    pub params: Params,
    /// Input directory.
    pub input: PathBuf,
    /// Output directory.
    pub output: PathBuf,
    /// Reduce tasks.
    pub reduces: u32,
    /// Target split size in bytes.
    pub split_size: u64,
    /// Map-side sort buffer, bytes.
    pub sort_mem: u64,
    /// The master's tunables.
    pub master: MasterConfig,
    /// Where the master listens for workers.
    pub listen: SocketAddr,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    spec: JobSpec,
    snapshot: MasterSnapshot,
    /// The iterations' master, for an iterations job.
    iter: Option<super::iterate::IterSnapshot>,
}

struct Shared {
    master: Master,
    /// The iterations' master, when the job is [`super::iterate::JOB`] (then `master` is
    /// idle).
    iter: Option<super::iterate::IterMaster>,
    spec: JobSpec,
    started: Instant,
    state_path: PathBuf,
    error: Option<String>,
    resumed: bool,
    closed: bool,
}

impl Shared {
    fn now(&self) -> synod_core::Instant {
        synod_core::Instant(self.started.elapsed().as_nanos() as u64)
    }

    /// Persist if the state changed. A failed write stops the master (DESIGN.md: never
    /// log an fsync error and carry on).
    fn persist(&mut self) -> io::Result<()> {
        let iter_dirty = self.iter.as_mut().is_some_and(|i| i.take_dirty());
        if !self.master.take_dirty() && !iter_dirty {
            return Ok(());
        }
        self.write_state()
    }

    fn write_state(&mut self) -> io::Result<()> {
        let state = StateFile {
            spec: self.spec.clone(),
            snapshot: self.master.snapshot().clone(),
            iter: self.iter.as_ref().map(|i| i.snapshot().clone()),
        };
        let tmp = self.state_path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&synod_core::codec::encode(&state))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.state_path)?;
        if let Some(dir) = self.state_path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// A job's master state, new or read back from its state file.
struct Loaded {
    master: Master,
    spec: JobSpec,
    iter: Option<super::iterate::IterSnapshot>,
    resumed: bool,
    state_path: PathBuf,
}

/// A running master.
pub struct MasterServer {
    shared: Arc<Mutex<Shared>>,
    addr: SocketAddr,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn serve(shared: &Mutex<Shared>, stream: TcpStream) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = BufWriter::new(stream);
    loop {
        let msg: ToMaster = match read_frame(&mut r, MAX_CONTROL_FRAME) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let reply = {
            let mut s = lock(shared);
            if s.error.is_some() {
                return Ok(());
            }
            let reply = match msg {
                ToMaster::Hello if s.closed => FromMaster::Done,
                ToMaster::Hello => FromMaster::Job(s.spec.clone()),
                ToMaster::Req(job, _) if job != s.spec.tag() => {
                    FromMaster::Resp(super::master::Response::Finished)
                }
                ToMaster::Req(_, req) => {
                    let now = s.now();
                    FromMaster::Resp(s.master.on_request(now, req))
                }
                ToMaster::Iter(job, req) => {
                    let now = s.now();
                    let current = job == s.spec.tag();
                    match s.iter.as_mut() {
                        Some(it) if current => FromMaster::Iter(it.on_request(now, req)),
                        _ => FromMaster::Iter(super::iterate::IterResponse::Finished),
                    }
                }
            };
            if let Err(e) = s.persist() {
                s.error = Some(format!("persisting master state: {e}"));
                return Err(e);
            }
            reply
        };
        write_frame(&mut w, &reply)?;
    }
}

impl MasterServer {
    /// The master and spec for `opts`: resumed from the output directory's state file, or
    /// new.
    fn load(opts: &JobOptions) -> anyhow::Result<Loaded> {
        if opts.job == super::iterate::JOB {
            super::iterate::IterParams::parse(&opts.params)?;
        } else {
            jobs::build(&opts.job, &opts.params)?;
        }
        if opts.reduces == 0 {
            bail!("--reduces must be at least 1");
        }
        std::fs::create_dir_all(&opts.output)
            .with_context(|| format!("create output directory {}", opts.output.display()))?;
        let state_path = opts.output.join(STATE_FILE);
        let (master, spec, iter, resumed) = match std::fs::read(&state_path) {
            Ok(bytes) => {
                let state: StateFile = synod_core::codec::decode(&bytes)
                    .with_context(|| format!("damaged master state {}", state_path.display()))?;
                if state.spec.job != opts.job || state.spec.params != opts.params {
                    bail!(
                        "{} holds a different job ({}); choose another output directory",
                        opts.output.display(),
                        state.spec.job
                    );
                }
                let m =
                    Master::restore(opts.master.clone(), state.snapshot, synod_core::Instant(0));
                (m, state.spec, state.iter, true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if std::fs::read_dir(&opts.output)?.next().is_some() {
                    bail!(
                        "output directory {} is not empty and holds no job to resume",
                        opts.output.display()
                    );
                }
                // A binary input is read whole: one split per file.
                let split_size = if jobs::whole_file_input(&opts.job) {
                    u64::MAX
                } else {
                    opts.split_size
                };
                let splits = make_splits(&opts.input, split_size)
                    .with_context(|| format!("read input directory {}", opts.input.display()))?;
                if splits.is_empty() {
                    bail!(
                        "input directory {} has no input files",
                        opts.input.display()
                    );
                }
                let spec = JobSpec {
                    job: opts.job.clone(),
                    params: opts.params.clone(),
                    reduces: opts.reduces,
                    sort_mem: opts.sort_mem,
                    output: std::fs::canonicalize(&opts.output)?,
                    splits,
                };
                let m = Master::new(opts.master.clone(), spec.splits.len() as u32, opts.reduces);
                (m, spec, None, false)
            }
            Err(e) => return Err(e).context("read master state"),
        };
        Ok(Loaded {
            master,
            spec,
            iter,
            resumed,
            state_path,
        })
    }

    /// The iterations' master for an iterations job (restored from its state, if any).
    fn iter_master(
        opts: &JobOptions,
        loaded: &Loaded,
        expected_workers: u32,
    ) -> Option<super::iterate::IterMaster> {
        (opts.job == super::iterate::JOB).then(|| {
            super::iterate::IterMaster::restore(
                super::iterate::IterConfig {
                    partitions: loaded.spec.splits.len() as u32,
                    worker_timeout: opts.master.worker_timeout,
                    expected_workers,
                },
                loaded.iter.clone().unwrap_or_default(),
            )
        })
    }

    /// Start (or resume, if the output directory holds a state file for the same job)
    /// a master for `opts`.
    pub fn start(opts: &JobOptions) -> anyhow::Result<Self> {
        let loaded = Self::load(opts)?;
        let listener =
            TcpListener::bind(opts.listen).with_context(|| format!("listen on {}", opts.listen))?;
        let addr = listener.local_addr()?;
        let iter = Self::iter_master(opts, &loaded, 1);
        let mut shared = Shared {
            master: loaded.master,
            iter,
            spec: loaded.spec,
            started: Instant::now(),
            state_path: loaded.state_path,
            error: None,
            resumed: loaded.resumed,
            closed: false,
        };
        shared.persist()?;
        let shared = Arc::new(Mutex::new(shared));
        let s2 = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s3 = s2.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(&s3, stream) {
                        tracing::debug!("worker connection: {e}");
                    }
                });
            }
        });
        Ok(MasterServer { shared, addr })
    }

    /// Run another job on the same master and workers (the next stage of a session): the
    /// workers pick it up at their next hello, after the current job is finished.
    pub fn next_job(&self, opts: &JobOptions) -> anyhow::Result<()> {
        let loaded = Self::load(opts)?;
        let mut s = lock(&self.shared);
        if let Some(e) = &s.error {
            bail!("{e}");
        }
        // Attempt ids stay unique across the session's jobs, so that a late report from
        // an attempt of the previous job cannot pass for one of this job.
        let mut snapshot = loaded.master.snapshot().clone();
        snapshot.next_attempt = snapshot.next_attempt.max(s.master.snapshot().next_attempt);
        let master = Master::restore(opts.master.clone(), snapshot, synod_core::Instant(0));
        // The iterations start once the workers of the previous job have come over.
        let workers = match &s.iter {
            Some(it) => it.progress().2,
            None => s.master.progress().workers,
        };
        s.iter = Self::iter_master(opts, &loaded, workers);
        s.master = master;
        s.spec = loaded.spec;
        s.started = Instant::now();
        s.state_path = loaded.state_path;
        s.resumed = loaded.resumed;
        s.write_state()?;
        Ok(())
    }

    /// End the session: workers asking for a job are told there are no more.
    pub fn close(&self) {
        lock(&self.shared).closed = true;
    }

    /// Where workers connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether this master resumed its current job from a state file.
    pub fn resumed(&self) -> bool {
        lock(&self.shared).resumed
    }

    /// Let time pass: detect dead workers, persist. Call every ~100 ms.
    pub fn tick(&self) -> anyhow::Result<Progress> {
        let mut s = lock(&self.shared);
        if let Some(e) = &s.error {
            bail!("{e}");
        }
        let now = s.now();
        s.master.on_tick(now);
        s.persist()?;
        if let Some(it) = s.iter.as_mut() {
            it.on_tick(now);
            let (done, parts, workers, dead) = it.progress();
            return Ok(Progress {
                reduces_done: done,
                reduces: parts,
                workers,
                dead_workers: dead,
                ..Progress::default()
            });
        }
        Ok(s.master.progress())
    }

    /// Whether every reduce task is committed.
    pub fn finished(&self) -> bool {
        let s = lock(&self.shared);
        match &s.iter {
            Some(it) => it.finished(),
            None => s.master.finished(),
        }
    }

    /// Number of map tasks.
    pub fn maps(&self) -> u32 {
        lock(&self.shared).spec.splits.len() as u32
    }

    /// The job's counters: the sum over committed reduce attempts, in partition order.
    pub fn counters(&self) -> Counters {
        let s = lock(&self.shared);
        if let Some(it) = &s.iter {
            return it.counters();
        }
        let mut total = Counters::new();
        for (_, summary) in s.master.committed().values() {
            if let Ok(c) = synod_core::codec::decode::<Counters>(summary) {
                for (k, v) in c {
                    *total.entry(k).or_insert(0.0) += v;
                }
            }
        }
        total
    }

    /// Finish the output directory: drop temporaries, mark success.
    pub fn finalize(&self, output: &Path) -> anyhow::Result<()> {
        let _ = std::fs::remove_dir_all(output.join("_temporary"));
        File::create(output.join("_SUCCESS"))?.sync_all()?;
        Ok(())
    }

    /// Serve polls for `linger` more so that workers hear the job is finished.
    pub fn linger(&self, linger: Duration) {
        std::thread::sleep(linger);
    }

    /// Check an unused request, for tests: the master's response to it.
    #[doc(hidden)]
    pub fn request(&self, req: Request) -> super::master::Response {
        let mut s = lock(&self.shared);
        let now = s.now();
        s.master.on_request(now, req)
    }
}
