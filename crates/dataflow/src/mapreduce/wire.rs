//! What travels over TCP between the master, the workers, and a reducer and the worker
//! serving map output. Every frame is length-prefixed postcard with a size bound.

use super::jobs::Params;
use super::master::{Request, Response};
use super::task::Split;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The largest control frame accepted (a job spec lists every split).
pub const MAX_CONTROL_FRAME: usize = 16 << 20;

/// Everything a worker needs to run the job's tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Built-in job name.
    pub job: String,
    /// Job parameters.
    pub params: Params,
    /// Input splits, one per map task.
    pub splits: Vec<Split>,
    /// Number of reduce tasks (output partitions).
    pub reduces: u32,
    /// Map-side sort buffer budget in bytes; beyond it the buffer spills to disk.
    pub sort_mem: u64,
    /// The output directory (shared by the workers: a local or network file system).
    pub output: PathBuf,
}

impl JobSpec {
    /// A tag naming this job's map output files on a worker (FNV-1a of the output
    /// directory, which no two jobs of a session share), so that a straggling reducer of
    /// an earlier job can never fetch a later job's file.
    pub fn tag(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in self.output.as_os_str().as_encoded_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

/// Worker → master.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToMaster {
    /// Ask for the job spec.
    Hello,
    /// A request for the state machine, about the job with this [`JobSpec::tag`]. A
    /// request about another job (the master has moved on) is answered "finished".
    Req(u64, Request),
    /// A request of the iterations' job ([`super::iterate`]), about the job with this tag.
    Iter(u64, super::iterate::IterRequest),
}

/// Master → worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromMaster {
    /// The job.
    Job(JobSpec),
    /// The state machine's response.
    Resp(Response),
    /// The iteration master's response.
    Iter(super::iterate::IterResponse),
    /// The master runs no more jobs: the worker may exit.
    Done,
}

/// Reducer → map worker: stream one partition of one map output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The job's [`JobSpec::tag`].
    pub job: u64,
    /// The map task.
    pub map: u32,
    /// The map attempt.
    pub attempt: u64,
    /// The partition.
    pub partition: u32,
}

/// Map worker → reducer, before the segment's bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FetchHeader {
    /// `len` bytes follow, with this CRC-32C and record count.
    Segment {
        /// Bytes that follow.
        len: u64,
        /// Their CRC-32C, computed when the map wrote them.
        crc: u32,
        /// Records in them.
        records: u64,
    },
    /// This worker does not have it.
    Missing(String),
}
