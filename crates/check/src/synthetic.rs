//! Histories of a correct atomic store, for tests and benchmarks of the checkers.
//!
//! Clients issue operations with random latencies and think times, so their intervals
//! overlap. Each operation that takes effect is given a linearization point inside its
//! interval (for an `Info` operation, anywhere after its invocation, up to a few
//! latencies late) and the operations are applied to a sequential store in the order of
//! those points. The results are what that store returned, so every history made here
//! is linearizable by construction: the points are a witness.
//!
//! Generation is deterministic in the seed (SplitMix64, Steele, Lea & Flood 2014).

use std::collections::BTreeMap;

use crate::history::{History, Op, OpResult, Process, Value};

/// The shape of a synthetic history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticConfig {
    /// Number of operations.
    pub operations: usize,
    /// Number of distinct keys (`k0`, `k1`, ...). At least one is used.
    pub keys: usize,
    /// Number of concurrent clients. At least one is used.
    pub clients: usize,
    /// Latencies are drawn from 1..=`max_latency` ns.
    pub max_latency: u64,
    /// Pauses between a client's operations are drawn from 1..=`max_think`+1 ns.
    pub max_think: u64,
    /// Percentage of reads.
    pub read_percent: u8,
    /// Percentage of compare-and-sets.
    pub cas_percent: u8,
    /// Percentage of deletes. The remaining operations are writes.
    pub delete_percent: u8,
    /// Percentage of operations whose outcome is unknown (`Info`); half of them take effect.
    pub info_percent: u8,
    /// Percentage of operations that fail without taking effect.
    pub fail_percent: u8,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            operations: 1_000,
            keys: 10,
            clients: 5,
            max_latency: 1_000,
            max_think: 200,
            read_percent: 50,
            cas_percent: 10,
            delete_percent: 5,
            info_percent: 2,
            fail_percent: 2,
        }
    }
}

/// SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", 2014).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..bound` (0 when `bound` is 0).
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next() % bound
        }
    }

    fn percent(&mut self) -> u64 {
        self.below(100)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ok,
    Fail,
    Info,
}

struct Planned {
    process: Process,
    op: Op,
    invoke: u64,
    complete: u64,
    fate: Fate,
    /// When it takes effect, if it does.
    effect_at: Option<u64>,
    result: Option<OpResult>,
}

/// A linearizable history of a correct key-value store, determined by `config` and `seed`.
pub fn atomic_store_history(config: &SyntheticConfig, seed: u64) -> History {
    let mut rng = SplitMix64(seed);
    let keys = config.keys.max(1) as u64;
    let mut clients: Vec<(u64, Process)> = (0..config.clients.max(1) as u64)
        .map(|c| (rng.below(config.max_think + 1), Process(c)))
        .collect();
    let mut next_process = clients.len() as u64;
    let mut last_written: BTreeMap<u64, Value> = BTreeMap::new();
    let mut next_value: Value = 1;
    let mut planned: Vec<Planned> = Vec::with_capacity(config.operations);

    for _ in 0..config.operations {
        let client = (0..clients.len())
            .min_by_key(|&c| (clients[c].0, c))
            .unwrap_or(0);
        let (invoke, process) = clients[client];
        let latency = 1 + rng.below(config.max_latency.max(1));
        let complete = invoke + latency;
        let key_number = rng.below(keys);
        let key = format!("k{key_number}");
        let roll = rng.percent();
        let (read, cas, delete) = (
            u64::from(config.read_percent),
            u64::from(config.cas_percent),
            u64::from(config.delete_percent),
        );
        let op = if roll < read {
            Op::Read { key }
        } else if roll < read + cas {
            // Mostly the last value written, so that many swaps succeed.
            let expected = match rng.below(4) {
                0 => None,
                _ => last_written.get(&key_number).copied(),
            };
            let new = next_value;
            next_value += 1;
            last_written.insert(key_number, new);
            Op::Cas { key, expected, new }
        } else if roll < read + cas + delete {
            Op::Delete { key }
        } else {
            let value = next_value;
            next_value += 1;
            last_written.insert(key_number, value);
            Op::Write { key, value }
        };
        let fate_roll = rng.percent();
        let fate = if fate_roll < u64::from(config.info_percent) {
            Fate::Info
        } else if fate_roll < u64::from(config.info_percent) + u64::from(config.fail_percent) {
            Fate::Fail
        } else {
            Fate::Ok
        };
        let effect_at = match fate {
            Fate::Ok => Some(invoke + rng.below(latency + 1)),
            Fate::Fail => None,
            // Unknown outcome: maybe never, maybe long after the client gave up.
            Fate::Info => (rng.below(2) == 0).then(|| invoke + rng.below(4 * latency + 1)),
        };
        planned.push(Planned {
            process,
            op,
            invoke,
            complete,
            fate,
            effect_at,
            result: None,
        });

        let think = 1 + rng.below(config.max_think + 1);
        clients[client].0 = complete + think;
        if fate == Fate::Info {
            // As in Jepsen: a client that lost track of a request continues as a new process.
            clients[client].1 = Process(next_process);
            next_process += 1;
        }
    }

    let mut order: Vec<(u64, usize)> = planned
        .iter()
        .enumerate()
        .filter_map(|(index, p)| p.effect_at.map(|at| (at, index)))
        .collect();
    order.sort_unstable();
    let mut store: BTreeMap<String, Value> = BTreeMap::new();
    for (_, index) in order {
        let p = &mut planned[index];
        p.result = Some(apply(&mut store, &p.op));
    }

    // Invocations before completions at equal times cannot happen (latency >= 1 and
    // think >= 1), but sort them that way anyway.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(planned.len() * 2);
    for (index, p) in planned.iter().enumerate() {
        events.push((p.invoke, false, index));
        events.push((p.complete, true, index));
    }
    events.sort_unstable();
    let mut history = History::new();
    let mut ids = vec![None; planned.len()];
    for (time, is_completion, index) in events {
        let p = &planned[index];
        if !is_completion {
            ids[index] = Some(history.invoke(p.process, p.op.clone(), time));
            continue;
        }
        let Some(id) = ids[index] else { continue };
        let recorded = match (p.fate, &p.result) {
            (Fate::Ok, Some(result)) => history.ok(id, result.clone(), time),
            (Fate::Fail, _) => history.fail(id, time),
            _ => history.info(id, time),
        };
        if let Err(error) = recorded {
            unreachable!("a synthetic history is valid by construction: {error}");
        }
    }
    history
}

fn apply(store: &mut BTreeMap<String, Value>, op: &Op) -> OpResult {
    match op {
        Op::Read { key } => OpResult::ReadOk(store.get(key).copied()),
        Op::Write { key, value } => {
            store.insert(key.clone(), *value);
            OpResult::WriteOk
        }
        Op::Cas { key, expected, new } => {
            let swapped = store.get(key).copied() == *expected;
            if swapped {
                store.insert(key.clone(), *new);
            }
            OpResult::CasOk(swapped)
        }
        Op::Delete { key } => {
            store.remove(key);
            OpResult::DeleteOk
        }
    }
}
