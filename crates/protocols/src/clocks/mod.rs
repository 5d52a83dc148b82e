//! # Clocks: ordering events and agreeing on time
//!
//! Two families live here. *Logical* clocks order events by causality and need no
//! physical time at all. *Physical* clock synchronization estimates how far one node's
//! clock is from another's, with an error bound.
//!
//! | type | paper | what it gives |
//! | --- | --- | --- |
//! | [`LamportClock`], [`LamportTimestamp`] | Lamport 1978 | a total order consistent with causality: `a → b ⇒ L(a) < L(b)` |
//! | [`VectorClock`], [`Causality`] | Fidge 1988; Mattern 1989 | causality exactly: `a → b ⇔ V(a) < V(b)` |
//! | [`Dot`], [`VersionVector`], [`DvvSet`] | Preguiça, Baquero et al. 2010; Almeida et al. 2014 | sibling values of a replicated key, with no false conflicts and no lost updates |
//! | [`HybridLogicalClock`], [`HlcTimestamp`] | Kulkarni, Demirbas et al. 2014 | causality-respecting timestamps that stay within ε of physical time |
//! | [`NtpTimestamps`], [`NtpSample`], [`ClockFilter`] | RFC 5905 §8, §10 (Mills) | offset θ and delay δ from one exchange; the minimum-delay filter |
//! | [`PtpTimestamps`], [`PtpMeasurement`] | IEEE 1588-2008 §11.3 | offset from master and mean path delay from Sync/Delay_Req |
//! | [`ClockSync`] actor | Cristian 1989; RFC 5905 | a corrected clock: local time plus a filtered offset and a drift estimate |
//!
//! [`demo`] holds an actor that stamps every event of a random run with both logical
//! clocks, for tools that show where Lamport timestamps and vector clocks agree with the
//! true happens-before relation.
//!
//! ## Logical clocks
//!
//! *Lamport 1978* ("Time, Clocks, and the Ordering of Events in a Distributed System",
//! CACM 21(7)), rules IR1 and IR2: tick before each local or send event; on receipt set
//! the clock to `max(local, received) + 1`. Ties between nodes are broken by [`NodeId`](synod_core::NodeId), so
//! [`LamportTimestamp`] is a total order (the paper's `⇒` relation). The converse of the
//! clock condition does not hold: `L(a) < L(b)` says nothing about whether `a → b`.
//!
//! *Vector clocks* (Fidge 1988, "Timestamps in Message-Passing Systems That Preserve the
//! Partial Ordering"; Mattern 1989, "Virtual Time and Global States of Distributed
//! Systems"): one counter per node, incremented on each event of that node, merged by
//! pointwise maximum on receipt. `V(a) < V(b)` if and only if `a → b` (Mattern, Theorem 10).
//! Our vectors are sparse [`BTreeMap`](std::collections::BTreeMap)s, so the node set is
//! open and a missing entry reads as zero.
//!
//! *Dotted version vectors.* A Dynamo-style store that keeps one version vector per key
//! either loses updates (if the server's id ticks the vector for every client write) or
//! grows a vector entry per client. Preguiça, Baquero, Almeida, Fonte and Gonçalves,
//! "Dotted Version Vectors: Logical Clocks for Optimistic Replication" (2010), separate the
//! *dot* that names one write from the *causal past* it overwrote, which makes server ids
//! enough. Almeida, Baquero, Gonçalves, Preguiça and Fonte, "Scalable and Accurate Causality
//! Tracking for Eventually Consistent Stores" (DAIS 2014), compress a key's whole sibling
//! set into one *DVV set*: per server, a counter and the values of its newest dots. We
//! implement the DVV set's `sync`, `join` ([`DvvSet::context`]), `discard` and
//! `update`/`event` from §4 of that paper.
//!
//! ## Physical clocks
//!
//! *Hybrid logical clocks* (Kulkarni, Demirbas, Madappa, Avva and Leone, "Logical Physical
//! Clocks and Consistent Snapshots in Globally Distributed Databases", OPODIS 2014,
//! Figure 5): a timestamp `(l, c)` where `l` is the largest physical time heard of and `c`
//! counts events since `l` last changed. Properties (§3): `l ≥ pt`; `e → f ⇒ (l,c)(e) <
//! (l,c)(f)`; `l − pt ≤ ε` when clocks are within ε of each other; `c` is bounded. A
//! received timestamp more than a configured maximum offset ahead of local physical time is
//! refused, as CockroachDB does with its `--max-offset`, so a broken clock on one node cannot
//! drag every clock into the future.
//!
//! *NTP* (RFC 5905 §8, Mills, "Network Time Protocol Version 4"): from one request/response
//! exchange with timestamps T1 (client send), T2 (server receive), T3 (server send), T4
//! (client receive), the offset is `θ = ((T2 − T1) + (T3 − T4)) / 2` and the round-trip
//! delay `δ = (T4 − T1) − (T3 − T2)`. Whatever the split of δ between the two directions,
//! the true offset lies in `θ ± δ/2`. The clock filter (§10) keeps the last eight samples and
//! uses the one with the smallest delay, whose bound is tightest. All arithmetic is on
//! `i128` nanoseconds, so hostile timestamps cannot overflow.
//!
//! *Cristian 1989* ("Probabilistic Clock Synchronization", Distributed Computing 3(3)):
//! the [`ClockSync`] actor polls one time server, the same exchange as an NTP client in
//! client/server mode. It never sets the driver's clock. It keeps its own offset estimate
//! and a frequency (drift) estimate fitted by least squares over successive filtered
//! offsets, a simple stand-in for NTP's phase/frequency discipline (RFC 5905 §11.3).
//!
//! *PTP* (IEEE 1588-2008 §11.3, delay request-response mechanism): a two-step master sends
//! Sync (departing at t1, arriving at t2) and a Follow_Up carrying the exact t1; the slave
//! sends Delay_Req (t3) and the master answers with Delay_Resp carrying its arrival time t4.
//! Then `meanPathDelay = ((t2 − t1) + (t4 − t3)) / 2` and
//! `offsetFromMaster = ((t2 − t1) − (t4 − t3)) / 2`, less a known delay asymmetry.
//!
//! ## Fault and timing model
//!
//! Logical clocks assume nothing about time and tolerate loss, duplication and reordering:
//! a duplicated message only raises a clock that was already high enough. DVV sets assume
//! that only replica `r` creates dots `(r, n)` (the coordinator of a write is the replica
//! that stores the new state), and that replicas exchange whole states with
//! [`DvvSet::sync`]. HLC assumes physical clocks that are monotonic on each node and within
//! the configured maximum offset of each other. NTP, PTP and [`ClockSync`] assume that
//! neither clock's rate changes much during one exchange; asymmetric paths bias the offset
//! by half the asymmetry, which the `δ/2` bound covers for NTP and PTP's `delay_asymmetry`
//! corrects when it is known.
//!
//! ## How this differs from the chapter's sketch
//!
//! Chapter 14.2 sketches these clocks in a few lines of Python. Where it is wrong or
//! incomplete:
//!
//! - Its Lamport `happens_before(e1, e2)` returns `L(e1) < L(e2)`. That is the converse of
//!   the clock condition and false: concurrent events get ordered timestamps too. We offer
//!   no such method on Lamport clocks; [`VectorClock::happened_before`] answers the question
//!   exactly.
//! - Its vector clock is a fixed array of `num_nodes`, which cannot admit a node that joins
//!   later and assumes dense ids. Ours is sparse.
//! - Its NTP client computes `delay = ((t4 − t1) − (t3 − t2)) / 2`. Halved, that is an
//!   estimate of the one-way delay, not RFC 5905's round-trip delay δ; the error bound on
//!   the offset is `δ/2` of the unhalved value. It then steps the clock by a single
//!   sample's offset. We keep eight samples, use the minimum-delay one, never step the
//!   driver's clock, and report the error bound.
//! - Its PTP `sync_phase` computes `offset = t2 − t1 − path_delay` with a `path_delay` of
//!   zero until the first delay phase has run, so the first offsets are wrong by the whole
//!   one-way delay (see `chapter_sketch_offset_is_wrong_before_the_path_delay_is_measured`
//!   in `ptp.rs`). Its `delay_phase` reads t1 and t2 from another method's scope. We compute
//!   offset and mean path delay together from one complete set of four timestamps.
//! - It has no version vectors, dots or hybrid logical clocks at all; the eventually
//!   consistent key-value store of its Exercise 1 needs them to keep concurrent writes as
//!   siblings without losing any.

mod clock_sync;
pub mod demo;
mod dvv;
mod hlc;
mod lamport;
mod ntp;
mod ptp;
mod vector;

#[cfg(test)]
mod tests;

pub use clock_sync::{ClockSync, ClockSyncConfig, ClockSyncMsg, ClockSyncTimer};
pub use dvv::{CounterOverflow, Dot, DvvSet, VersionVector};
pub use hlc::{HlcError, HlcTimestamp, HybridLogicalClock};
pub use lamport::{LamportClock, LamportTimestamp};
pub use ntp::{
    ClockFilter, ClockOffset, NtpSample, NtpSampleError, NtpTimestamps, CLOCK_FILTER_STAGES,
};
pub use ptp::{PtpMeasurement, PtpTimestamps};
pub use vector::{Causality, VectorClock};
