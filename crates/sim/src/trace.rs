//! The run's trace: one JSON object per line for every send, delivery, drop, timer, sync,
//! crash, fault and client operation, plus a hash of it for determinism checks.

use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// One line of the trace. `t` is true simulated time in nanoseconds.
#[derive(Debug, Serialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum TraceEvent<'a> {
    /// A node handed a message to the network.
    Send {
        /// Time.
        t: u64,
        /// Message id, unique in the run.
        id: u64,
        /// Sender (`n3` or `c7`).
        from: &'a str,
        /// Receiver.
        to: &'a str,
        /// The message, in its `Debug` form.
        msg: &'a str,
    },
    /// A message reached a live node or a client.
    Deliver {
        /// Time.
        t: u64,
        /// Message id.
        id: u64,
        /// Receiver.
        to: &'a str,
    },
    /// A message was lost.
    Drop {
        /// Time.
        t: u64,
        /// Message id.
        id: u64,
        /// Why: `loss`, `partition`, `crashed`.
        why: &'a str,
    },
    /// A timer fired.
    Timer {
        /// Time.
        t: u64,
        /// Node.
        node: u32,
        /// Timer key, `Debug` form.
        timer: &'a str,
    },
    /// A batch of storage writes became durable.
    Sync {
        /// Time.
        t: u64,
        /// Node.
        node: u32,
        /// Batch number.
        batch: u64,
        /// Outputs released.
        released: usize,
    },
    /// A node crashed.
    Crash {
        /// Time.
        t: u64,
        /// Node.
        node: u32,
        /// Unsynced writes that survived (a prefix), and how many there were.
        kept: usize,
        /// Unsynced writes at the crash.
        pending: usize,
    },
    /// A node restarted.
    Restart {
        /// Time.
        t: u64,
        /// Node.
        node: u32,
    },
    /// The fault plan did something.
    Fault {
        /// Time.
        t: u64,
        /// What, in words.
        what: &'a str,
    },
    /// A free-form note from the harness or a workload.
    Note {
        /// Time.
        t: u64,
        /// Text.
        text: &'a str,
    },
}

/// FNV-1a, 64 bit: tiny, stable across Rust versions and platforms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// Where trace lines go. Hashing is always on when a trace is on; the file is optional.
pub(crate) struct Trace {
    hash: Fnv,
    lines: u64,
    file: Option<BufWriter<File>>,
    error: Option<std::io::Error>,
}

impl Trace {
    pub(crate) fn hash_only() -> Self {
        Trace {
            hash: Fnv::new(),
            lines: 0,
            file: None,
            error: None,
        }
    }

    pub(crate) fn to_file(path: &Path) -> std::io::Result<Self> {
        let file = File::create(path)?;
        Ok(Trace {
            file: Some(BufWriter::new(file)),
            ..Self::hash_only()
        })
    }

    pub(crate) fn record(&mut self, event: &TraceEvent<'_>) {
        let line = match serde_json::to_string(event) {
            Ok(line) => line,
            Err(e) => {
                self.error.get_or_insert(std::io::Error::other(e));
                return;
            }
        };
        self.hash.write(line.as_bytes());
        self.hash.write(b"\n");
        self.lines += 1;
        if let Some(file) = &mut self.file {
            if self.error.is_none() {
                if let Err(e) = writeln!(file, "{line}") {
                    self.error = Some(e);
                }
            }
        }
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash.finish()
    }

    pub(crate) fn lines(&self) -> u64 {
        self.lines
    }

    /// Flush the file and return the first write error, if any.
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if let Some(file) = &mut self.file {
            file.flush()?;
        }
        Ok(())
    }
}
