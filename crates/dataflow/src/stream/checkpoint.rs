//! Asynchronous barrier snapshots: barrier alignment in a task and the checkpoint
//! coordinator (Carbone et al. 2015, §3–4; the DAG variant of Chandy & Lamport 1985).
//!
//! The coordinator injects barrier `n` at every source. A source records its offset and
//! forwards the barrier on every output channel. A task with several inputs **aligns**: once
//! barrier `n` arrived on a channel, records behind it on that channel are held back until
//! barrier `n` arrived on every input; then the task snapshots its state, forwards the
//! barrier and releases the held records. Because channels are FIFO, the snapshot contains
//! the effect of exactly the records before the barrier on every input, so the set of
//! task snapshots with the source offsets is a consistent cut. Channel state need not be
//! saved (no records are in flight across the cut on a DAG after alignment, §4.1).
//!
//! Checkpoint `n` is **complete** when every task acknowledged it; then (and only then)
//! transactional sinks commit the output they pre-committed at barrier `n`. Recovery
//! restarts every task from the latest complete checkpoint and sources rewind to its
//! offsets.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A checkpoint's number; later checkpoints have larger numbers.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct CheckpointId(pub u64);

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chk-{}", self.0)
    }
}

/// What a task does with an input element while aligning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alignment {
    /// Process it now.
    Process,
    /// Hold it back: its channel already delivered the barrier being aligned.
    Hold,
}

/// What a barrier did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarrierOutcome {
    /// More channels must deliver this barrier; hold this channel.
    Waiting,
    /// Every channel delivered it: snapshot now, forward the barrier, release held input.
    Aligned(CheckpointId),
    /// A barrier for a checkpoint older than the one being aligned (or already taken):
    /// ignore it.
    Stale,
}

/// Barrier alignment over `n` input channels.
#[derive(Clone, Debug)]
pub struct BarrierAligner {
    channels: usize,
    aligning: Option<CheckpointId>,
    arrived: BTreeSet<usize>,
    last_taken: Option<CheckpointId>,
}

impl BarrierAligner {
    /// An aligner over `channels` inputs.
    pub fn new(channels: usize) -> Self {
        BarrierAligner {
            channels,
            aligning: None,
            arrived: BTreeSet::new(),
            last_taken: None,
        }
    }

    /// Whether input from `channel` must be held back now.
    #[inline]
    pub fn admit(&self, channel: usize) -> Alignment {
        if self.aligning.is_some() && self.arrived.contains(&channel) {
            Alignment::Hold
        } else {
            Alignment::Process
        }
    }

    /// Barrier `id` arrived on `channel`.
    pub fn on_barrier(&mut self, channel: usize, id: CheckpointId) -> BarrierOutcome {
        if self.last_taken.is_some_and(|t| id <= t) {
            return BarrierOutcome::Stale;
        }
        match self.aligning {
            Some(current) if id < current => return BarrierOutcome::Stale,
            Some(current) if id > current => {
                // A newer checkpoint overtook an unfinished one (the coordinator gave up on
                // it): abandon the old alignment and start over.
                self.arrived.clear();
                self.aligning = Some(id);
            }
            Some(_) => {}
            None => self.aligning = Some(id),
        }
        self.arrived.insert(channel);
        if self.arrived.len() == self.channels {
            self.arrived.clear();
            self.aligning = None;
            self.last_taken = Some(id);
            BarrierOutcome::Aligned(id)
        } else {
            BarrierOutcome::Waiting
        }
    }
}

/// A task that takes part in checkpoints.
pub type TaskId = u32;

/// What the coordinator knows about one checkpoint in progress.
#[derive(Clone, Debug)]
struct Pending {
    waiting: BTreeSet<TaskId>,
    started_at: u64,
}

/// A completed checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    /// Which checkpoint.
    pub id: CheckpointId,
    /// How long from trigger to the last acknowledgement, in the caller's time unit.
    pub duration: u64,
}

/// The checkpoint coordinator's bookkeeping: which checkpoints are in flight and which
/// tasks still owe an acknowledgement. Time is whatever unit the caller passes.
#[derive(Clone, Debug)]
pub struct CheckpointCoordinator {
    tasks: BTreeSet<TaskId>,
    next: CheckpointId,
    pending: BTreeMap<CheckpointId, Pending>,
    latest: Option<CheckpointId>,
    max_concurrent: usize,
}

impl CheckpointCoordinator {
    /// A coordinator for `tasks`, whose last completed checkpoint is `latest`.
    pub fn new(tasks: impl IntoIterator<Item = TaskId>, latest: Option<CheckpointId>) -> Self {
        CheckpointCoordinator {
            tasks: tasks.into_iter().collect(),
            next: CheckpointId(latest.map_or(1, |c| c.0 + 1)),
            pending: BTreeMap::new(),
            latest,
            max_concurrent: 1,
        }
    }

    /// The latest completed checkpoint.
    pub fn latest(&self) -> Option<CheckpointId> {
        self.latest
    }

    /// Checkpoints in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Start a new checkpoint at time `now`, unless too many are in flight.
    pub fn trigger(&mut self, now: u64) -> Option<CheckpointId> {
        if self.pending.len() >= self.max_concurrent {
            return None;
        }
        let id = self.next;
        self.next = CheckpointId(id.0 + 1);
        self.pending.insert(
            id,
            Pending {
                waiting: self.tasks.clone(),
                started_at: now,
            },
        );
        Some(id)
    }

    /// `task` acknowledged checkpoint `id` (its snapshot is durable). Returns the
    /// checkpoint if this completed it. Completing `n` subsumes every older pending one.
    pub fn acknowledge(&mut self, id: CheckpointId, task: TaskId, now: u64) -> Option<Completed> {
        let pending = self.pending.get_mut(&id)?;
        pending.waiting.remove(&task);
        if !pending.waiting.is_empty() {
            return None;
        }
        let started = pending.started_at;
        self.pending.retain(|&p, _| p > id);
        self.latest = Some(id);
        Some(Completed {
            id,
            duration: now.saturating_sub(started),
        })
    }

    /// Give up on every checkpoint started before `deadline` (a lost barrier or
    /// acknowledgement, or a dead task). Returns how many were dropped.
    pub fn expire(&mut self, deadline: u64) -> usize {
        let before = self.pending.len();
        self.pending.retain(|_, p| p.started_at >= deadline);
        before - self.pending.len()
    }

    /// Forget every checkpoint in flight (the job restarts).
    pub fn abort_all(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §4.1: a channel that delivered barrier n is blocked until n arrived on every input.
    #[test]
    fn aligner_holds_channels_that_delivered_the_barrier() {
        let mut a = BarrierAligner::new(3);
        assert_eq!(a.admit(0), Alignment::Process);
        assert_eq!(a.on_barrier(0, CheckpointId(1)), BarrierOutcome::Waiting);
        assert_eq!(a.admit(0), Alignment::Hold);
        assert_eq!(a.admit(1), Alignment::Process);
        assert_eq!(a.on_barrier(2, CheckpointId(1)), BarrierOutcome::Waiting);
        assert_eq!(
            a.on_barrier(1, CheckpointId(1)),
            BarrierOutcome::Aligned(CheckpointId(1))
        );
        assert_eq!(a.admit(0), Alignment::Process);
        assert_eq!(a.on_barrier(0, CheckpointId(1)), BarrierOutcome::Stale);
    }

    #[test]
    fn a_newer_barrier_abandons_an_unfinished_alignment() {
        let mut a = BarrierAligner::new(2);
        assert_eq!(a.on_barrier(0, CheckpointId(1)), BarrierOutcome::Waiting);
        assert_eq!(a.on_barrier(1, CheckpointId(2)), BarrierOutcome::Waiting);
        assert_eq!(a.admit(0), Alignment::Process);
        assert_eq!(a.on_barrier(1, CheckpointId(1)), BarrierOutcome::Stale);
        assert_eq!(
            a.on_barrier(0, CheckpointId(2)),
            BarrierOutcome::Aligned(CheckpointId(2))
        );
    }

    #[test]
    fn a_checkpoint_completes_only_when_every_task_acknowledged() {
        let mut c = CheckpointCoordinator::new([1, 2, 3], None);
        let id = c.trigger(10).expect("trigger");
        assert_eq!(c.trigger(11), None, "one checkpoint at a time");
        assert_eq!(c.acknowledge(id, 1, 12), None);
        assert_eq!(
            c.acknowledge(id, 1, 12),
            None,
            "a duplicate ack counts once"
        );
        assert_eq!(c.acknowledge(id, 3, 13), None);
        assert_eq!(
            c.acknowledge(id, 2, 15),
            Some(Completed { id, duration: 5 })
        );
        assert_eq!(c.latest(), Some(id));
        assert_eq!(c.acknowledge(id, 2, 16), None);
        let next = c.trigger(20).expect("trigger");
        assert!(next > id);
        assert_eq!(c.expire(21), 1);
        assert_eq!(c.in_flight(), 0);
    }
}
