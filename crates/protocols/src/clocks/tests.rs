//! Property tests of the clock laws, on random values and on random message-passing
//! executions whose true happens-before relation is computed from the execution itself.

use super::*;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use synod_core::{Instant, NodeId};

// ----------------------------------------------------------------------------------------
// Vector clocks as a partial order and a join-semilattice.

/// Small vectors over four nodes with counters 0..4, so that comparable pairs are common.
fn vector_clock() -> impl Strategy<Value = VectorClock> {
    btree_map(0u32..4, 0u64..4, 0..4)
        .prop_map(|entries| entries.into_iter().map(|(n, c)| (NodeId(n), c)).collect())
}

fn merged(a: &VectorClock, b: &VectorClock) -> VectorClock {
    let mut out = a.clone();
    out.merge(b);
    out
}

proptest! {
    #[test]
    fn causal_order_is_reflexive(a in vector_clock()) {
        prop_assert!(a <= a);
        prop_assert_eq!(a.compare(&a), Causality::Equal);
        prop_assert!(!a.happened_before(&a));
    }

    #[test]
    fn causal_order_is_antisymmetric(a in vector_clock(), b in vector_clock()) {
        if a <= b && b <= a {
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn causal_order_is_transitive(
        a in vector_clock(), b in vector_clock(), c in vector_clock(),
        x in vector_clock(), y in vector_clock(),
    ) {
        if a <= b && b <= c {
            prop_assert!(a <= c);
        }
        // Chains built on purpose, so the premise is not vacuous.
        let b = merged(&a, &x);
        let c = merged(&b, &y);
        prop_assert!(a <= b && b <= c && a <= c);
    }

    #[test]
    fn compare_agrees_with_partial_ord_both_ways(a in vector_clock(), b in vector_clock()) {
        prop_assert_eq!(a.compare(&b), b.compare(&a).reverse());
        let expected = match a.compare(&b) {
            Causality::Before => Some(std::cmp::Ordering::Less),
            Causality::After => Some(std::cmp::Ordering::Greater),
            Causality::Equal => Some(std::cmp::Ordering::Equal),
            Causality::Concurrent => None,
        };
        prop_assert_eq!(a.partial_cmp(&b), expected);
        prop_assert_eq!(a.happened_before(&b), a < b);
        prop_assert_eq!(a.descends(&b), a >= b);
        prop_assert_eq!(a.concurrent_with(&b), a.partial_cmp(&b).is_none());
    }

    #[test]
    fn merge_is_commutative(a in vector_clock(), b in vector_clock()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
    }

    #[test]
    fn merge_is_associative(a in vector_clock(), b in vector_clock(), c in vector_clock()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn merge_is_idempotent(a in vector_clock()) {
        prop_assert_eq!(merged(&a, &a), a);
    }

    #[test]
    fn merge_is_least_upper_bound(a in vector_clock(), b in vector_clock(), c in vector_clock()) {
        let join = merged(&a, &b);
        prop_assert!(a <= join && b <= join, "an upper bound");
        if a <= c && b <= c {
            prop_assert!(join <= c, "the least one");
        }
        // Every upper bound of the form join ⊔ c is above join.
        prop_assert!(join <= merged(&join, &c));
    }

    #[test]
    fn vector_clock_codec_round_trips(a in vector_clock()) {
        let bytes = synod_core::codec::encode(&a);
        prop_assert_eq!(synod_core::codec::decode::<VectorClock>(&bytes), Ok(a));
    }
}

// ----------------------------------------------------------------------------------------
// Random message-passing executions.

#[derive(Clone, Copy, Debug)]
enum EventKind {
    Local,
    Send {
        to: usize,
    },
    /// The receipt of the message sent at event `send`.
    Receive {
        send: usize,
    },
}

#[derive(Clone, Debug)]
struct Event {
    process: usize,
    kind: EventKind,
    /// The process's physical clock at the event.
    physical: Instant,
}

/// An execution of 2–5 processes, with physical clocks that read true time plus a fixed
/// skew in `0..=epsilon` and tick at least once between two events of one process.
#[derive(Clone, Debug)]
struct Execution {
    processes: usize,
    epsilon: u64,
    events: Vec<Event>,
    /// `past[e]` has bit `d` set when event `d` happened before event `e`.
    past: Vec<u64>,
}

impl Execution {
    /// Lamport's `→`, from the execution's structure: process order, send before receive,
    /// and transitivity.
    fn happened_before(&self, earlier: usize, later: usize) -> bool {
        self.past[later] >> earlier & 1 == 1
    }

    fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let n = self.events.len();
        (0..n).flat_map(move |a| (0..n).map(move |b| (a, b)))
    }
}

const MAX_EVENTS: usize = 60;

/// Raw choices, interpreted into a valid execution: every receive is of a message that
/// was sent and not yet received, in any order (channels are not FIFO), and some messages
/// are never received.
fn execution() -> impl Strategy<Value = Execution> {
    (
        2usize..=5,
        0u64..=4,
        vec(any::<u64>(), 5),
        vec((0u8..3, any::<u8>(), any::<u8>(), 0u64..3), 1..MAX_EVENTS),
    )
        .prop_map(|(processes, epsilon, skew_seeds, steps)| {
            let skew: Vec<u64> = skew_seeds.iter().map(|s| s % (epsilon + 1)).collect();
            let mut true_time = 0u64;
            let mut last_physical: Vec<Option<u64>> = vec![None; processes];
            let mut last_event: Vec<Option<usize>> = vec![None; processes];
            let mut in_flight: Vec<(usize, usize)> = Vec::new(); // (send event, receiver)
            let mut events = Vec::new();
            let mut past: Vec<u64> = Vec::new();
            for (kind, a, b, advance) in steps {
                let a = usize::from(a) % processes;
                let (process, kind) = match kind {
                    0 => (a, EventKind::Local),
                    1 => {
                        let to = (a + 1 + usize::from(b) % (processes - 1)) % processes;
                        (a, EventKind::Send { to })
                    }
                    _ if in_flight.is_empty() => (a, EventKind::Local),
                    _ => {
                        let (send, receiver) = in_flight.remove(usize::from(b) % in_flight.len());
                        (receiver, EventKind::Receive { send })
                    }
                };
                true_time += advance;
                if let Some(last) = last_physical[process] {
                    // One event per clock tick per process (the premise of the c bound).
                    true_time = true_time.max(last + 1 - skew[process]);
                }
                let physical = true_time + skew[process];
                last_physical[process] = Some(physical);

                let index = events.len();
                let mut before = 0u64;
                if let Some(previous) = last_event[process] {
                    before |= past[previous] | 1 << previous;
                }
                if let EventKind::Receive { send } = kind {
                    before |= past[send] | 1 << send;
                }
                if let EventKind::Send { to } = kind {
                    in_flight.push((index, to));
                }
                last_event[process] = Some(index);
                past.push(before);
                events.push(Event {
                    process,
                    kind,
                    physical: Instant(physical),
                });
            }
            Execution {
                processes,
                epsilon,
                events,
                past,
            }
        })
}

fn node(process: usize) -> NodeId {
    NodeId(u32::try_from(process).expect("at most five processes"))
}

fn lamport_run(execution: &Execution) -> Vec<LamportTimestamp> {
    let mut clocks: Vec<LamportClock> = (0..execution.processes)
        .map(|p| LamportClock::new(node(p)))
        .collect();
    let mut stamps: Vec<LamportTimestamp> = Vec::new();
    for event in &execution.events {
        let clock = &mut clocks[event.process];
        let stamp = match event.kind {
            EventKind::Local | EventKind::Send { .. } => clock.tick(),
            EventKind::Receive { send } => clock.observe(stamps[send]),
        };
        stamps.push(stamp);
    }
    stamps
}

fn vector_run(execution: &Execution) -> Vec<VectorClock> {
    let mut clocks = vec![VectorClock::new(); execution.processes];
    let mut stamps: Vec<VectorClock> = Vec::new();
    for event in &execution.events {
        let me = node(event.process);
        match event.kind {
            EventKind::Local | EventKind::Send { .. } => {
                clocks[event.process].increment(me);
            }
            EventKind::Receive { send } => {
                let received = stamps[send].clone();
                clocks[event.process].observe(me, &received);
            }
        }
        stamps.push(clocks[event.process].clone());
    }
    stamps
}

fn hlc_run(execution: &Execution) -> Result<Vec<HlcTimestamp>, HlcError> {
    let max_offset = Duration::from_nanos(execution.epsilon);
    let mut clocks = vec![HybridLogicalClock::new(max_offset); execution.processes];
    let mut stamps: Vec<HlcTimestamp> = Vec::new();
    for event in &execution.events {
        let clock = &mut clocks[event.process];
        let stamp = match event.kind {
            EventKind::Local | EventKind::Send { .. } => clock.now(event.physical),
            EventKind::Receive { send } => clock.update(event.physical, stamps[send])?,
        };
        stamps.push(stamp);
    }
    Ok(stamps)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Lamport 1978, Clock Condition: a → b ⇒ C⟨a⟩ < C⟨b⟩.
    #[test]
    fn lamport_clock_respects_happens_before(execution in execution()) {
        let stamps = lamport_run(&execution);
        for (a, b) in execution.pairs() {
            if execution.happened_before(a, b) {
                prop_assert!(stamps[a].time < stamps[b].time, "{} → {} but {} ≮ {}", a, b, stamps[a], stamps[b]);
                prop_assert!(stamps[a] < stamps[b]);
            }
        }
    }

    /// Lamport 1978, §3: `⇒` orders every pair of distinct events.
    #[test]
    fn lamport_timestamps_totally_order_distinct_events(execution in execution()) {
        let stamps = lamport_run(&execution);
        let distinct: BTreeSet<_> = stamps.iter().collect();
        prop_assert_eq!(distinct.len(), stamps.len());
    }

    /// Mattern 1989, Theorem 10: a → b ⇔ V(a) < V(b), and a ∥ b ⇔ V(a) ∥ V(b).
    #[test]
    fn vector_clocks_characterize_happens_before(execution in execution()) {
        let stamps = vector_run(&execution);
        for (a, b) in execution.pairs() {
            let forward = execution.happened_before(a, b);
            let backward = execution.happened_before(b, a);
            prop_assert_eq!(stamps[a].happened_before(&stamps[b]), forward, "{} → {}", a, b);
            let concurrent = a != b && !forward && !backward;
            prop_assert_eq!(stamps[a].compare(&stamps[b]) == Causality::Concurrent, concurrent);
            prop_assert_eq!(stamps[a] == stamps[b], a == b);
        }
    }

    /// Kulkarni et al. 2014, §3: l ≥ pt; e → f ⇒ hlc(e) < hlc(f); l − pt ≤ ε; c ≤ N(ε + 1);
    /// and clocks within ε of each other never trip the max-offset check.
    #[test]
    fn hybrid_logical_clock_keeps_the_paper_properties(execution in execution()) {
        let stamps = hlc_run(&execution);
        prop_assert!(stamps.is_ok(), "honest clocks within ε were refused: {:?}", stamps);
        let stamps = stamps.unwrap_or_default();
        let bound = execution.processes as u64 * (execution.epsilon + 1);
        for (event, stamp) in execution.events.iter().zip(&stamps) {
            prop_assert!(stamp.wall >= event.physical, "l ≥ pt");
            prop_assert!(stamp.wall.0 - event.physical.0 <= execution.epsilon, "l − pt ≤ ε");
            prop_assert!(u64::from(stamp.logical) <= bound, "c = {} > N(ε+1) = {}", stamp.logical, bound);
        }
        for (a, b) in execution.pairs() {
            if execution.happened_before(a, b) {
                prop_assert!(stamps[a] < stamps[b], "{} → {} but {} ≮ {}", a, b, stamps[a], stamps[b]);
            }
        }
    }
}

// ----------------------------------------------------------------------------------------
// DVV sets against a model that keeps every dot explicitly.

#[derive(Clone, Debug)]
enum StoreOp {
    /// A client reads replica `replica`, keeping the context for a later write.
    Read { replica: usize },
    /// A client writes at replica `replica` with the context of read `read` (mod the number
    /// of reads so far; an empty context if there are none).
    Write { replica: usize, read: usize },
    /// Replica `to` syncs with replica `from`'s state.
    Sync { from: usize, to: usize },
}

const REPLICAS: usize = 3;

fn store_op() -> impl Strategy<Value = StoreOp> {
    prop_oneof![
        1 => (0..REPLICAS).prop_map(|replica| StoreOp::Read { replica }),
        2 => (0..REPLICAS, any::<usize>())
            .prop_map(|(replica, read)| StoreOp::Write { replica, read }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| StoreOp::Sync { from, to }),
    ]
}

/// The exact semantics: a replica knows a set of dots (its causal history) and holds the
/// values of the dots it has not seen overwritten.
#[derive(Clone, Debug, Default, PartialEq)]
struct ModelReplica {
    history: BTreeSet<Dot>,
    siblings: BTreeMap<Dot, u32>,
}

impl ModelReplica {
    fn sync(&mut self, other: &ModelReplica) {
        let keep = |mine: &ModelReplica, theirs: &ModelReplica| -> BTreeMap<Dot, u32> {
            mine.siblings
                .iter()
                .filter(|(dot, _)| {
                    theirs.siblings.contains_key(dot) || !theirs.history.contains(dot)
                })
                .map(|(&dot, &value)| (dot, value))
                .collect()
        };
        let mut siblings = keep(self, other);
        siblings.extend(keep(other, self));
        self.siblings = siblings;
        self.history.extend(other.history.iter().copied());
    }

    fn context(&self) -> VersionVector {
        self.history
            .iter()
            .map(|dot| (dot.node, dot.counter))
            .collect()
    }
}

fn expand(context: &VersionVector) -> BTreeSet<Dot> {
    context
        .iter()
        .flat_map(|(node, n)| (1..=n).map(move |counter| Dot { node, counter }))
        .collect()
}

struct StoreRun {
    replicas: Vec<DvvSet<u32>>,
    written: BTreeSet<Dot>,
    overwritten: BTreeSet<Dot>,
}

fn run_store(ops: &[StoreOp]) -> Result<StoreRun, TestCaseError> {
    let mut replicas: Vec<DvvSet<u32>> = vec![DvvSet::new(); REPLICAS];
    let mut model = vec![ModelReplica::default(); REPLICAS];
    let mut reads: Vec<VersionVector> = Vec::new();
    let mut written = BTreeSet::new();
    let mut overwritten = BTreeSet::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            StoreOp::Read { replica } => reads.push(replicas[replica].context()),
            StoreOp::Write { replica, read } => {
                let context = if reads.is_empty() {
                    VersionVector::new()
                } else {
                    reads[read % reads.len()].clone()
                };
                let value = u32::try_from(step).expect("short runs");
                let dot = replicas[replica]
                    .update(&context, value, node(replica))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let seen = expand(&context);
                let model = &mut model[replica];
                let expected_counter = model
                    .history
                    .iter()
                    .chain(&seen)
                    .filter(|d| d.node == node(replica))
                    .map(|d| d.counter)
                    .max()
                    .unwrap_or(0)
                    + 1;
                prop_assert_eq!(
                    dot,
                    Dot {
                        node: node(replica),
                        counter: expected_counter
                    }
                );
                prop_assert!(written.insert(dot), "dot {} issued twice", dot);
                model.siblings.retain(|d, _| !seen.contains(d));
                model.siblings.insert(dot, value);
                model.history.extend(seen.iter().copied());
                model.history.insert(dot);
                overwritten.extend(seen);
            }
            StoreOp::Sync { from, to } => {
                let source = replicas[from].clone();
                replicas[to].sync(&source);
                let source = model[from].clone();
                model[to].sync(&source);
            }
        }
        for (replica, state) in replicas.iter().enumerate() {
            let model = &model[replica];
            let actual: BTreeMap<Dot, u32> = state.dotted_values().map(|(d, &v)| (d, v)).collect();
            prop_assert_eq!(
                &actual,
                &model.siblings,
                "siblings of replica {} after {:?}",
                replica,
                op
            );
            prop_assert_eq!(state.len(), model.siblings.len());
            prop_assert_eq!(
                expand(&state.context()),
                model.history.clone(),
                "history of replica {}",
                replica
            );
            prop_assert_eq!(state.context(), model.context());
        }
    }
    Ok(StoreRun {
        replicas,
        written,
        overwritten,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Almeida et al. 2014, §4: the compact DVV set holds exactly the siblings and history
    /// that an explicit set of dots would.
    #[test]
    fn dvv_set_matches_the_explicit_dot_model(ops in vec(store_op(), 1..40)) {
        run_store(&ops)?;
    }

    /// No lost updates: a value disappears only when a write whose context contained its
    /// dot replaced it; once every replica has synced with every other, they agree and
    /// hold exactly the writes no later write had seen.
    #[test]
    fn dvv_replicas_converge_without_lost_updates(ops in vec(store_op(), 1..40)) {
        let StoreRun { mut replicas, written, overwritten } = run_store(&ops)?;
        for _ in 0..2 {
            for from in 0..REPLICAS {
                for to in 0..REPLICAS {
                    let source = replicas[from].clone();
                    replicas[to].sync(&source);
                }
            }
        }
        let survivors: BTreeSet<Dot> = written.difference(&overwritten).copied().collect();
        for state in &replicas {
            prop_assert_eq!(state, &replicas[0]);
            let dots: BTreeSet<Dot> = state.dotted_values().map(|(d, _)| d).collect();
            prop_assert_eq!(&dots, &survivors);
        }
    }

    /// `sync` is a join: commutative, associative and idempotent on states of one history.
    #[test]
    fn dvv_sync_is_commutative_associative_and_idempotent(
        ops in vec(store_op(), 1..40),
        a in 0..REPLICAS, b in 0..REPLICAS, c in 0..REPLICAS,
    ) {
        let StoreRun { replicas, .. } = run_store(&ops)?;
        let synced = |x: &DvvSet<u32>, y: &DvvSet<u32>| {
            let mut out = x.clone();
            out.sync(y);
            out
        };
        let (a, b, c) = (&replicas[a], &replicas[b], &replicas[c]);
        prop_assert_eq!(synced(a, b), synced(b, a));
        prop_assert_eq!(synced(&synced(a, b), c), synced(a, &synced(b, c)));
        prop_assert_eq!(&synced(a, a), a);
        let bytes = synod_core::codec::encode(a);
        prop_assert_eq!(&synod_core::codec::decode::<DvvSet<u32>>(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?, a);
    }
}
