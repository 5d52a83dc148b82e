//! A worker process: polls the master, runs map and reduce attempts, and serves its map
//! output to reducers over TCP.

// A driver: real time, real sockets and files.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use super::jobs;
use super::master::{Assignment, AttemptId, MapOutput, Request, Response, WorkerId};
use super::shuffle::{read_frame, write_frame, SegmentInfo};
use super::task::TaskRunner;
use super::wire::{FetchHeader, FetchRequest, FromMaster, JobSpec, ToMaster, MAX_CONTROL_FRAME};
use anyhow::{anyhow, bail, Context};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The master's address.
    pub master: SocketAddr,
    /// Local scratch directory for map output (emptied at start).
    pub dir: PathBuf,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// How long to keep retrying when the master is unreachable (it may be restarting).
    pub master_grace: Duration,
    /// Testing aid: sleep this long at the start of every attempt (and of every superstep
    /// of PageRank's iterations).
    pub task_delay: Duration,
    /// The address the map-output server binds (port chosen by the OS) and that reducers
    /// are told: loopback for local workers, a node's peer address on a cluster.
    pub data_ip: IpAddr,
}

fn map_name(job: u64, map: u32, attempt: u64) -> String {
    format!("map-{job:016x}-{map}-{attempt}")
}

fn serve_fetch(dir: &Path, stream: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = BufWriter::with_capacity(1 << 20, stream);
    loop {
        let req: FetchRequest = match read_frame(&mut reader, 1024) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let name = map_name(req.job, req.map, req.attempt);
        let Ok(seg) = segment_of(dir, &name, req.partition) else {
            write_frame(&mut out, &FetchHeader::Missing(format!("no output {name}")))?;
            continue;
        };
        let mut f = File::open(dir.join(format!("{name}.out")))?;
        f.seek(SeekFrom::Start(seg.offset))?;
        write_frame(
            &mut out,
            &FetchHeader::Segment {
                len: seg.len,
                crc: seg.crc,
                records: seg.records,
            },
        )?;
        let copied = io::copy(&mut f.take(seg.len), &mut out)?;
        if copied != seg.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short map output",
            ));
        }
        out.flush()?;
    }
}

/// Start the data server that streams map output segments; returns its address.
fn start_data_server(dir: PathBuf, ip: IpAddr) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || {
                if let Err(e) = serve_fetch(&dir, stream) {
                    tracing::debug!("fetch connection: {e}");
                }
            });
        }
    });
    Ok(addr)
}

/// Segment `partition` of map output `name` in `dir`, from its index: `NotFound` if the
/// output is not there, `InvalidData` if its index is damaged or too short.
fn segment_of(dir: &Path, name: &str, partition: u32) -> io::Result<SegmentInfo> {
    let index = std::fs::read(dir.join(format!("{name}.idx")))?;
    let damaged = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("map index {name}.idx {what}"),
        )
    };
    let segments: Vec<SegmentInfo> =
        synod_core::codec::decode(&index).map_err(|_| damaged("is damaged"))?;
    segments
        .get(partition as usize)
        .copied()
        .ok_or_else(|| damaged(&format!("has no partition {partition}")))
}

/// Copy exactly `len` bytes from `r` to `out`; returns their CRC-32C. Fewer bytes is an
/// `UnexpectedEof` error.
fn copy_checked(r: &mut impl Read, len: u64, out: &mut impl Write) -> io::Result<u32> {
    let mut buf = vec![0u8; (256 << 10).min(len as usize)];
    let (mut left, mut sum) = (len, 0u32);
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed with {left} of {len} bytes to go"),
            ));
        }
        sum = crc32c::crc32c_append(sum, &buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(sum)
}

/// Partition `partition` of map output `source` if this worker's `dir` holds it (the map
/// ran here): its file and segment, after checking the segment's CRC-32C as a fetch
/// would. `None` if the output is not here; an error if it is damaged.
fn local_segment(
    dir: &Path,
    job: u64,
    source: &MapOutput,
    partition: u32,
) -> anyhow::Result<Option<(PathBuf, SegmentInfo)>> {
    let name = map_name(job, source.map, source.attempt.0);
    let seg = match segment_of(dir, &name, partition) {
        Ok(seg) => seg,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let path = dir.join(format!("{name}.out"));
    let mut f = File::open(&path)?;
    f.seek(SeekFrom::Start(seg.offset))?;
    let sum = copy_checked(&mut f, seg.len, &mut io::sink())
        .with_context(|| format!("map output {name}.out, partition {partition}"))?;
    if sum != seg.crc {
        bail!("damaged map output {name}.out, partition {partition}");
    }
    Ok(Some((path, seg)))
}

/// Fetch one segment into `dest`, checking its CRC-32C as it streams (§3.1 step 5).
fn fetch(job: u64, source: &MapOutput, partition: u32, dest: &Path) -> anyhow::Result<SegmentInfo> {
    let addr: SocketAddr = source
        .addr
        .parse()
        .with_context(|| format!("bad data address `{}`", source.addr))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = BufWriter::new(stream.try_clone()?);
    write_frame(
        &mut w,
        &FetchRequest {
            job,
            map: source.map,
            attempt: source.attempt.0,
            partition,
        },
    )?;
    let mut r = BufReader::with_capacity(1 << 20, stream);
    let (len, crc, records) = match read_frame::<FetchHeader>(&mut r, 4096)? {
        FetchHeader::Segment { len, crc, records } => (len, crc, records),
        FetchHeader::Missing(why) => bail!("{why}"),
    };
    let mut out = BufWriter::with_capacity(1 << 20, File::create(dest)?);
    let sum = copy_checked(&mut r, len, &mut out).context("connection")?;
    out.flush()?;
    if sum != crc {
        bail!(
            "checksum mismatch on map {} partition {partition}",
            source.map
        );
    }
    Ok(SegmentInfo {
        offset: 0,
        len,
        records,
        crc,
    })
}

enum Outcome {
    Report(Request),
    Failed(String),
}

fn run_map(
    runner: &dyn TaskRunner,
    spec: &JobSpec,
    dir: &Path,
    worker: WorkerId,
    attempt: AttemptId,
    index: u32,
    cancel: &AtomicBool,
) -> anyhow::Result<Request> {
    let split = spec
        .splits
        .get(index as usize)
        .ok_or_else(|| anyhow!("no split {index}"))?;
    let name = map_name(spec.tag(), index, attempt.0);
    let result = runner.run_map(
        split,
        spec.reduces,
        spec.sort_mem as usize,
        dir,
        &name,
        cancel,
    )?;
    let tmp = dir.join(format!("{name}.idx.tmp"));
    std::fs::write(&tmp, synod_core::codec::encode(&result.segments))?;
    std::fs::rename(&tmp, dir.join(format!("{name}.idx")))?;
    Ok(Request::MapDone {
        worker,
        attempt,
        index,
    })
}

#[allow(clippy::too_many_arguments)]
fn run_reduce(
    runner: &dyn TaskRunner,
    spec: &JobSpec,
    dir: &Path,
    worker: WorkerId,
    attempt: AttemptId,
    index: u32,
    sources: &[MapOutput],
    cancel: &AtomicBool,
) -> anyhow::Result<Request> {
    let mut inputs = Vec::with_capacity(sources.len());
    // Segments fetched into files of this attempt, removed when it ends.
    let mut fetched = Vec::new();
    let remove = |fetched: &[PathBuf]| {
        for p in fetched {
            let _ = std::fs::remove_file(p);
        }
    };
    for s in sources {
        // This worker's own map output is read in place, not fetched over loopback. A
        // damaged one is reported like a failed fetch, so the master runs the map again.
        match local_segment(dir, spec.tag(), s, index) {
            Ok(Some(local)) => {
                inputs.push(local);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("local output of map {}: {e:#}", s.map);
                remove(&fetched);
                return Ok(Request::FetchFailed {
                    worker,
                    attempt,
                    map: s.map,
                });
            }
        }
        let dest = dir.join(format!("fetch-{}-{}", attempt.0, s.map));
        let mut tries = 0;
        let seg = loop {
            match fetch(spec.tag(), s, index, &dest) {
                Ok(seg) => break seg,
                Err(e) if tries < 2 => {
                    tracing::debug!("fetch of map {} failed: {e:#}; retrying", s.map);
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    tracing::info!("fetch of map {} from {} failed: {e:#}", s.map, s.worker);
                    remove(&fetched);
                    let _ = std::fs::remove_file(&dest);
                    return Ok(Request::FetchFailed {
                        worker,
                        attempt,
                        map: s.map,
                    });
                }
            }
        };
        fetched.push(dest.clone());
        inputs.push((dest, seg));
        if cancel.load(Ordering::Relaxed) {
            remove(&fetched);
            bail!("cancelled");
        }
    }
    let tmp_dir = spec.output.join("_temporary");
    std::fs::create_dir_all(&tmp_dir)?;
    let tmp = tmp_dir.join(format!("part-{index:05}.{}", attempt.0));
    let file = File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let result = runner.run_reduce(index, &inputs, &mut out, cancel);
    remove(&fetched);
    let counters = result?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    // The commit (§3.3): an atomic rename of this attempt's file to the final name. A
    // backup attempt may rename too; both files hold the same bytes.
    std::fs::rename(&tmp, spec.output.join(format!("part-{index:05}")))?;
    if let Ok(d) = File::open(&spec.output) {
        let _ = d.sync_all();
    }
    Ok(Request::ReduceDone {
        worker,
        attempt,
        index,
        summary: synod_core::codec::encode(&counters),
    })
}

struct Connection {
    addr: SocketAddr,
    stream: Option<(BufReader<TcpStream>, BufWriter<TcpStream>)>,
    grace: Duration,
}

impl Connection {
    fn call(&mut self, msg: &ToMaster) -> anyhow::Result<FromMaster> {
        let started = Instant::now();
        loop {
            if self.stream.is_none() {
                match TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(10)))?;
                        let _ = s.set_nodelay(true);
                        self.stream = Some((BufReader::new(s.try_clone()?), BufWriter::new(s)));
                    }
                    Err(e) if started.elapsed() < self.grace => {
                        tracing::debug!("master unreachable: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    Err(e) => bail!("master {} unreachable: {e}", self.addr),
                }
            }
            let Some((r, w)) = self.stream.as_mut() else {
                continue;
            };
            let result =
                write_frame(w, msg).and_then(|()| read_frame::<FromMaster>(r, MAX_CONTROL_FRAME));
            match result {
                Ok(resp) => return Ok(resp),
                Err(e) if started.elapsed() < self.grace => {
                    tracing::debug!("master connection: {e}");
                    self.stream = None;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => bail!("master {}: {e}", self.addr),
            }
        }
    }
}

/// Run a worker until the master says it runs no more jobs (or, after a finished job,
/// is gone). A master may run several jobs one after another (a session, e.g. the stages
/// of an iterative computation); the worker and its data server stay up between them.
pub fn run_worker(opts: &WorkerOptions) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&opts.dir);
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("create worker directory {}", opts.dir.display()))?;
    let data_addr = start_data_server(opts.dir.clone(), opts.data_ip)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let worker = WorkerId((u64::from(std::process::id()) << 32) ^ (nanos & 0xffff_ffff));
    let mut conn = Connection {
        addr: opts.master,
        stream: None,
        grace: opts.master_grace,
    };
    tracing::info!("worker {worker} serving map output on {data_addr}");
    let mut finished: Option<PathBuf> = None;
    loop {
        // Between jobs a master that has gone away has nothing more for us.
        let hello = if finished.is_some() {
            conn.grace = Duration::from_secs(1);
            let r = conn.call(&ToMaster::Hello);
            conn.grace = opts.master_grace;
            match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("master gone after a finished job: {e:#}");
                    return Ok(());
                }
            }
        } else {
            conn.call(&ToMaster::Hello)?
        };
        let spec = match hello {
            FromMaster::Job(spec) => Arc::new(spec),
            FromMaster::Done => return Ok(()),
            FromMaster::Resp(r) => bail!("master answered hello with {r:?}"),
            FromMaster::Iter(r) => bail!("master answered hello with {r:?}"),
        };
        if finished.as_ref() == Some(&spec.output) {
            // The master has not moved on to its next job yet.
            std::thread::sleep(opts.heartbeat);
            continue;
        }
        // The previous job's map output is no longer needed.
        if let Ok(entries) = std::fs::read_dir(&opts.dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if spec.job == super::iterate::JOB {
            let mut link = IterLink {
                conn: &mut conn,
                tag: spec.tag(),
            };
            super::iterate::run_iterations(
                &mut link,
                worker,
                spec.tag(),
                &spec.params,
                &spec.output,
                opts.data_ip,
                opts.heartbeat,
                opts.task_delay,
            )?;
        } else {
            run_job(opts, &mut conn, worker, data_addr, &spec)?;
        }
        finished = Some(spec.output.clone());
    }
}

/// The iterations' polls over the worker's master connection.
struct IterLink<'a> {
    conn: &'a mut Connection,
    tag: u64,
}

impl super::iterate::IterMasterLink for IterLink<'_> {
    fn poll(
        &mut self,
        req: super::iterate::IterRequest,
    ) -> anyhow::Result<super::iterate::IterResponse> {
        match self.conn.call(&ToMaster::Iter(self.tag, req))? {
            FromMaster::Iter(r) => Ok(r),
            FromMaster::Done | FromMaster::Resp(_) => Ok(super::iterate::IterResponse::Finished),
            FromMaster::Job(_) => bail!("master sent a job spec to a poll"),
        }
    }
}

/// Run one job's attempts until the master says it is finished.
fn run_job(
    opts: &WorkerOptions,
    conn: &mut Connection,
    worker: WorkerId,
    data_addr: SocketAddr,
    spec: &Arc<JobSpec>,
) -> anyhow::Result<()> {
    let runner: Arc<dyn TaskRunner> = Arc::from(jobs::build(&spec.job, &spec.params)?);
    type Running = (
        AttemptId,
        Arc<AtomicBool>,
        JoinHandle<Outcome>,
        Receiver<()>,
    );
    let mut running: Option<Running> = None;
    let mut reports: Vec<Request> = Vec::new();
    // At the end of the job an attempt still running (a losing backup) is stopped before
    // the worker moves on.
    let stop = |running: &mut Option<Running>| {
        if let Some((_, cancel, handle, _)) = running.take() {
            cancel.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    };
    // Set when the running attempt signalled its end (its thread may still be returning).
    let mut ended = false;
    loop {
        if running
            .as_ref()
            .is_some_and(|(_, _, h, _)| ended || h.is_finished())
        {
            ended = false;
            if let Some((attempt, _, handle, _)) = running.take() {
                match handle.join() {
                    Ok(Outcome::Report(r)) => reports.push(r),
                    Ok(Outcome::Failed(e)) => tracing::warn!("attempt {attempt} failed: {e}"),
                    Err(_) => tracing::warn!("attempt {attempt} panicked"),
                }
            }
        }
        while let Some(r) = reports.first() {
            match conn.call(&ToMaster::Req(spec.tag(), r.clone()))? {
                FromMaster::Resp(Response::Finished) | FromMaster::Done => {
                    stop(&mut running);
                    return Ok(());
                }
                _ => {
                    reports.remove(0);
                }
            }
        }
        let current: Vec<AttemptId> = running.iter().map(|(a, _, _, _)| *a).collect();
        let poll = Request::Poll {
            worker,
            addr: data_addr.to_string(),
            want_work: current.is_empty(),
            running: current,
        };
        let resp = match conn.call(&ToMaster::Req(spec.tag(), poll))? {
            FromMaster::Resp(r) => r,
            FromMaster::Done | FromMaster::Iter(_) => Response::Finished,
            FromMaster::Job(_) => bail!("master sent a job spec to a poll"),
        };
        let (work, abort) = match resp {
            Response::Finished => {
                stop(&mut running);
                return Ok(());
            }
            Response::Assign { work, abort } => (Some(work), abort),
            Response::Wait { abort } => (None, abort),
            Response::Ack => (None, Vec::new()),
        };
        if let Some((a, cancel, _, _)) = &running {
            if abort.contains(a) {
                cancel.store(true, Ordering::Relaxed);
            }
        }
        let Some(work) = work else {
            // Sleep until the next heartbeat, or until the running attempt ends, so that
            // its report goes out at once.
            match &running {
                Some((_, _, _, done)) => {
                    ended = !matches!(
                        done.recv_timeout(opts.heartbeat),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    );
                }
                None => std::thread::sleep(opts.heartbeat),
            }
            continue;
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let (spec2, runner2, dir, cancel2, delay) = (
            spec.clone(),
            runner.clone(),
            opts.dir.clone(),
            cancel.clone(),
            opts.task_delay,
        );
        let attempt = work.attempt();
        let (done_tx, done_rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let result = match &work {
                Assignment::Map { attempt, index } => {
                    run_map(&*runner2, &spec2, &dir, worker, *attempt, *index, &cancel2)
                }
                Assignment::Reduce {
                    attempt,
                    index,
                    sources,
                } => run_reduce(
                    &*runner2, &spec2, &dir, worker, *attempt, *index, sources, &cancel2,
                ),
            };
            let outcome = match result {
                Ok(r) => Outcome::Report(r),
                Err(e) => Outcome::Failed(format!("{e:#}")),
            };
            let _ = done_tx.send(());
            outcome
        });
        running = Some((attempt, cancel, handle, done_rx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapreduce::shuffle::SegmentWriter;

    /// A map output of two partitions in `dir`, as `run_map` leaves it.
    fn write_output(dir: &Path, name: &str) -> Vec<SegmentInfo> {
        let mut w = SegmentWriter::create(&dir.join(format!("{name}.out"))).unwrap();
        let mut segments = Vec::new();
        for p in 0..2u8 {
            for k in 0..50u8 {
                w.record(&[p, k], &[k; 20]).unwrap();
            }
            segments.push(w.end_segment());
        }
        w.finish().unwrap();
        std::fs::write(
            dir.join(format!("{name}.idx")),
            synod_core::codec::encode(&segments),
        )
        .unwrap();
        segments
    }

    #[test]
    fn a_local_map_output_is_read_in_place_and_checked() {
        let dir = std::env::temp_dir().join(format!("synod-local-seg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let source = MapOutput {
            map: 3,
            attempt: AttemptId(7),
            worker: WorkerId(1),
            addr: "127.0.0.1:1".into(),
        };
        // Not here: fetch it.
        assert!(local_segment(&dir, 9, &source, 1).unwrap().is_none());
        let name = map_name(9, 3, 7);
        let segments = write_output(&dir, &name);
        let (path, seg) = local_segment(&dir, 9, &source, 1).unwrap().expect("here");
        assert_eq!((path, seg), (dir.join(format!("{name}.out")), segments[1]));
        assert!(
            local_segment(&dir, 9, &source, 2).is_err(),
            "no such partition"
        );
        // One flipped byte in partition 1 is caught; partition 0 is still good.
        let out = dir.join(format!("{name}.out"));
        let mut bytes = std::fs::read(&out).unwrap();
        bytes[segments[1].offset as usize + 5] ^= 1;
        std::fs::write(&out, bytes).unwrap();
        assert!(local_segment(&dir, 9, &source, 1).is_err());
        assert!(local_segment(&dir, 9, &source, 0).unwrap().is_some());
        // A truncated output is an error too.
        let len = std::fs::metadata(&out).unwrap().len();
        File::options()
            .write(true)
            .open(&out)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert!(local_segment(&dir, 9, &source, 1).is_err());
        // A damaged index is an error, not a panic.
        std::fs::write(dir.join(format!("{name}.idx")), b"\xff\xff").unwrap();
        assert!(local_segment(&dir, 9, &source, 0).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
