//! Simulation harness for the Dynamo-style store: a client workload of reads,
//! read-modify-writes, blind writes and deletes, an operator that moves nodes in and out
//! of the ring, a fault mix, and the three checks of the issue:
//!
//! - (a) every acknowledged write is readable, or superseded by a write whose client saw
//!   it (its context contains the write's dot): nothing is silently lost;
//! - (b) after healing, handoff and anti-entropy, every owner holds the identical sibling
//!   set (checked as a liveness predicate with a deadline);
//! - (c) with R + W > N and no failures, every read sees every write acknowledged before
//!   the read began;
//! - (d) tombstone collection loses nothing and brings nothing back: no two acknowledged
//!   writes of a key get the same dot (a reaped key's coordinator never reuses one), and
//!   no value that an acknowledged delete superseded is in the final state, which is
//!   taken after every reap the run started has had time to finish.
//!
//! Keys rotate: at any time half of them are hot and the rest rest, and the writes to a
//! key in its last hot slot are deletes, so that tombstones are reaped during the load and
//! the keys are written again afterwards.

use super::{
    BucketProps, Dynamo, DynamoConfig, DynamoCounters, DynamoMsg, Key, Object, Quorum, Sibling,
    Variant,
};
use crate::clocks::{Dot, VersionVector};
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use synod_core::{ClientId, NodeId};
use synod_sim::{ClientCtl, FaultConfig, NetConfig, Sim, SimConfig, Workload};

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultMix {
    /// No faults: the run checks (c) as well.
    None,
    /// Network partitions of every shape.
    Partitions,
    /// Crashes and restarts, at most two nodes down at once.
    Crashes,
    /// Nodes leave and rejoin the ring while clients write.
    Churn,
    /// Partitions, crashes, pauses, clogged links and churn together.
    All,
}

impl FaultMix {
    /// Every mix, in report order.
    pub const ALL: [FaultMix; 5] = [
        FaultMix::None,
        FaultMix::Partitions,
        FaultMix::Crashes,
        FaultMix::Churn,
        FaultMix::All,
    ];

    /// The name the CLI uses.
    pub fn name(self) -> &'static str {
        match self {
            FaultMix::None => "none",
            FaultMix::Partitions => "partitions",
            FaultMix::Crashes => "crashes",
            FaultMix::Churn => "churn",
            FaultMix::All => "all",
        }
    }

    fn faults(self) -> FaultConfig {
        let base = FaultConfig {
            mean_interval: Duration::from_millis(400),
            min_duration: Duration::from_millis(200),
            max_duration: Duration::from_millis(1500),
            ..FaultConfig::none()
        };
        match self {
            FaultMix::None | FaultMix::Churn => FaultConfig::none(),
            FaultMix::Partitions => FaultConfig {
                partition: 1,
                ..base
            },
            FaultMix::Crashes => FaultConfig {
                crash: 1,
                max_down: Some(2),
                ..base
            },
            FaultMix::All => FaultConfig {
                partition: 3,
                crash: 2,
                pause: 1,
                clog: 1,
                max_down: Some(2),
                ..base
            },
        }
    }

    fn churn(self) -> bool {
        matches!(self, FaultMix::Churn | FaultMix::All)
    }
}

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Run seed.
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: u32,
    /// Clients issuing requests, each one at a time.
    pub clients: u32,
    /// Keys in play (split over two buckets).
    pub keys: u32,
    /// Simulated time during which clients run and faults happen.
    pub duration: Duration,
    /// Which faults.
    pub faults: FaultMix,
    /// Replication of the main bucket `b` (bucket `s` has N = 2, R = 1, W = 2).
    pub bucket: BucketProps,
    /// The protocol variant.
    pub variant: Variant,
    /// A slow, jittery network (1 ms plus an exponential tail of mean 20 ms) instead of
    /// a LAN, so that a replica's copy often lands well after the client has its
    /// acknowledgement, and weak quorums (R + W <= N) show stale reads.
    pub slow_network: bool,
    /// Hot keys rotate (half the keys at a time, deletes at the end of a key's turn).
    pub rotate_keys: bool,
    /// The nodes' `tombstone_delay`; `None` picks one longer than the mix's longest
    /// message delay (300 ms, or 2 s with clogged links and pauses).
    pub tombstone_delay: Option<Duration>,
}

impl Scenario {
    /// Five nodes, four clients, twelve keys, three seconds of `faults`.
    pub fn new(seed: u64, faults: FaultMix) -> Self {
        Scenario {
            seed,
            nodes: 5,
            clients: 4,
            keys: 12,
            duration: Duration::from_secs(3),
            faults,
            bucket: BucketProps::default(),
            variant: Variant::Correct,
            slow_network: false,
            rotate_keys: true,
            tombstone_delay: None,
        }
    }

    /// The tombstone delay this scenario runs with.
    pub fn tombstone_delay(&self) -> Duration {
        self.tombstone_delay.unwrap_or(match self.faults {
            FaultMix::All => Duration::from_secs(2),
            _ => Duration::from_millis(300),
        })
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Writes (and deletes) acknowledged to clients.
    pub acked_writes: u64,
    /// Writes that failed or timed out (their fate is unknown).
    pub unacked_writes: u64,
    /// Reads answered.
    pub reads: u64,
    /// Reads that missed a write acknowledged before they began (check (c)).
    pub stale_reads: u64,
    /// Time from healing to every owner holding identical sibling sets.
    pub convergence: Duration,
    /// Keys in the final state.
    pub keys: u64,
    /// Siblings summed over keys in the final state.
    pub siblings: u64,
    /// The most siblings any key has.
    pub max_siblings: u64,
    /// Replicas written to fallbacks (hinted writes).
    pub hinted_writes: u64,
    /// Objects pushed by handoff.
    pub handoff_objects: u64,
    /// Read repairs.
    pub read_repairs: u64,
    /// Objects sent by anti-entropy.
    pub aae_objects: u64,
    /// Tombstone objects removed from nodes (a key reaped on five nodes counts five).
    pub tombstones_reaped: u64,
    /// Tombstone-only objects still stored on some node at the end.
    pub tombstones_left: u64,
    /// Collection rounds that every node acknowledged.
    pub reap_rounds: u64,
}

#[derive(Clone, Debug)]
struct WriteRecord {
    key: Key,
    value: Sibling,
    context: VersionVector,
    completed: Option<u64>,
    dot: Option<Dot>,
}

#[derive(Clone, Debug)]
struct ReadRecord {
    key: Key,
    invoked: u64,
    /// Read with the bucket's R, so that R + W > N holds.
    strict: bool,
    context: VersionVector,
}

#[derive(Clone, Debug)]
enum Op {
    Read {
        key: Key,
        then_write: bool,
        strict: bool,
    },
    Write(usize),
}

const THINK: u64 = 0;
const OPERATOR: u64 = u64::MAX;
/// Client timer keys at and above this are timeouts of request `key - TIMEOUT`.
const TIMEOUT: u64 = 1 << 32;

/// Clients that read, read-modify-write, write blindly and delete, each at most one
/// request in flight, to a random node.
struct StoreWorkload {
    clients: u32,
    keys: Vec<Key>,
    stop_at: u64,
    churn: bool,
    in_flight: Vec<Option<(u64, Op, u64)>>,
    next_seq: u64,
    contexts: Vec<BTreeMap<Key, VersionVector>>,
    writes: Vec<WriteRecord>,
    reads: Vec<ReadRecord>,
    left: Vec<NodeId>,
    unacked: u64,
    /// Rotate the hot keys with this period (nanoseconds), or not at all.
    rotate: Option<u64>,
}

impl StoreWorkload {
    fn idle(&self) -> bool {
        self.in_flight.iter().all(Option::is_none)
    }

    fn issue(&mut self, ctl: &mut ClientCtl<'_, Dynamo>, c: u32) {
        let now = ctl.now_nanos();
        if now >= self.stop_at {
            return;
        }
        let nodes = ctl.nodes();
        let rng = ctl.rng();
        let node = NodeId(rng.gen_range(0..nodes));
        let n = self.keys.len();
        let (key, last_turn) = match self.rotate {
            Some(period) if n >= 4 => {
                // Slot j of window w is key (j - w) mod n; slots 0..n/2 are hot.
                let w = ((now / period) % n as u64) as usize;
                let j = rng.gen_range(0..n / 2);
                (self.keys[(j + n - w) % n].clone(), j == n / 2 - 1)
            }
            _ => (self.keys[rng.gen_range(0..n)].clone(), false),
        };
        let roll = rng.gen_range(0..100);
        let roll = if last_turn && roll >= 45 { 95 } else { roll };
        let sloppy_read = rng.gen_bool(0.1);
        let quorum = if sloppy_read {
            Quorum {
                r: Some(1),
                ..Quorum::default()
            }
        } else {
            Quorum::default()
        };
        self.next_seq += 1;
        let seq = self.next_seq;
        let client = ClientId(u64::from(c));
        let (op, msg) = if roll < 45 {
            let msg = DynamoMsg::Get {
                key: key.clone(),
                quorum,
            };
            let then_write = roll < 30;
            let strict = !sloppy_read;
            (
                Op::Read {
                    key,
                    then_write,
                    strict,
                },
                msg,
            )
        } else {
            let (value, context) = if roll < 90 {
                let context = if roll < 70 {
                    VersionVector::new()
                } else {
                    self.contexts[c as usize]
                        .get(&key)
                        .cloned()
                        .unwrap_or_default()
                };
                (Sibling::Value(format!("c{c}-{seq}").into_bytes()), context)
            } else {
                let context = self.contexts[c as usize]
                    .get(&key)
                    .cloned()
                    .unwrap_or_default();
                (Sibling::Tombstone, context)
            };
            self.write(key, value, context)
        };
        ctl.send(client, node, msg);
        self.in_flight[c as usize] = Some((seq, op, now));
        ctl.set_timer(client, TIMEOUT + seq, Duration::from_secs(2));
    }

    fn write(&mut self, key: Key, value: Sibling, context: VersionVector) -> (Op, DynamoMsg) {
        self.writes.push(WriteRecord {
            key: key.clone(),
            value: value.clone(),
            context: context.clone(),
            completed: None,
            dot: None,
        });
        let msg = DynamoMsg::Put {
            key,
            context,
            value,
            quorum: Quorum::default(),
        };
        (Op::Write(self.writes.len() - 1), msg)
    }

    fn think(&self, ctl: &mut ClientCtl<'_, Dynamo>, client: ClientId) {
        let d = Duration::from_micros(ctl.rng().gen_range(1_000..10_000));
        ctl.set_timer(client, THINK, d);
    }
}

impl Workload<Dynamo> for StoreWorkload {
    fn on_start(&mut self, ctl: &mut ClientCtl<'_, Dynamo>) {
        for c in 0..self.clients {
            self.think(ctl, ClientId(u64::from(c)));
        }
        if self.churn {
            ctl.set_timer(ClientId(OPERATOR), OPERATOR, Duration::from_millis(300));
        }
    }

    fn on_reply(
        &mut self,
        ctl: &mut ClientCtl<'_, Dynamo>,
        client: ClientId,
        _from: NodeId,
        msg: DynamoMsg,
    ) {
        if client.0 == OPERATOR {
            return;
        }
        let c = client.0 as usize;
        let Some((_, op, invoked)) = self.in_flight.get_mut(c).and_then(Option::take) else {
            return;
        };
        let now = ctl.now_nanos();
        match (op, msg) {
            (
                Op::Read {
                    key,
                    then_write,
                    strict,
                },
                DynamoMsg::GetReply { context, .. },
            ) => {
                self.reads.push(ReadRecord {
                    key: key.clone(),
                    invoked,
                    strict,
                    context: context.clone(),
                });
                self.contexts[c].insert(key.clone(), context.clone());
                if then_write && now < self.stop_at {
                    self.next_seq += 1;
                    let seq = self.next_seq;
                    let value = Sibling::Value(format!("c{c}-{seq}").into_bytes());
                    let (op, msg) = self.write(key, value, context);
                    let nodes = ctl.nodes();
                    let node = NodeId(ctl.rng().gen_range(0..nodes));
                    ctl.send(client, node, msg);
                    self.in_flight[c] = Some((seq, op, now));
                    ctl.set_timer(client, TIMEOUT + seq, Duration::from_secs(2));
                    return;
                }
            }
            (Op::Write(i), DynamoMsg::PutReply { dot, context }) => {
                let w = &mut self.writes[i];
                w.completed = Some(now);
                w.dot = Some(dot);
                let key = w.key.clone();
                self.contexts[c].insert(key, context);
            }
            (Op::Write(_), _) => self.unacked += 1,
            _ => {}
        }
        self.think(ctl, client);
    }

    fn on_timer(&mut self, ctl: &mut ClientCtl<'_, Dynamo>, client: ClientId, key: u64) {
        if key == OPERATOR {
            self.operate(ctl);
            return;
        }
        let c = client.0 as usize;
        if key == THINK {
            if self.in_flight[c].is_none() {
                self.issue(ctl, c as u32);
            }
            return;
        }
        let seq = key - TIMEOUT;
        if matches!(self.in_flight[c], Some((s, _, _)) if s == seq) {
            if let Some((_, Op::Write(_), _)) = self.in_flight[c].take() {
                self.unacked += 1;
            }
            self.think(ctl, client);
        }
    }
}

impl StoreWorkload {
    /// The operator: every 700 ms one node leaves the ring, or one that left rejoins,
    /// keeping at least three members.
    fn operate(&mut self, ctl: &mut ClientCtl<'_, Dynamo>) {
        let now = ctl.now_nanos();
        if now >= self.stop_at {
            // Everyone who left rejoins before the end so that the final ring is whole.
            for node in std::mem::take(&mut self.left) {
                ctl.send(ClientId(OPERATOR), node, DynamoMsg::Join);
            }
            return;
        }
        let nodes = ctl.nodes();
        let rejoin = !self.left.is_empty()
            && (ctl.rng().gen_bool(0.5) || nodes as usize - self.left.len() <= 3);
        if rejoin {
            let node = self.left.remove(0);
            ctl.send(ClientId(OPERATOR), node, DynamoMsg::Join);
        } else {
            let node = NodeId(ctl.rng().gen_range(0..nodes));
            if !self.left.contains(&node) {
                self.left.push(node);
                ctl.send(ClientId(OPERATOR), node, DynamoMsg::Leave);
            }
        }
        ctl.set_timer(ClientId(OPERATOR), OPERATOR, Duration::from_millis(700));
    }
}

/// The merge of every copy of every key on every live node: what the cluster knows.
fn merged_state(sim: &Sim<Dynamo>) -> BTreeMap<Key, Object> {
    let mut all: BTreeMap<Key, Object> = BTreeMap::new();
    for (_, node) in sim.actors() {
        for (key, object) in node.objects() {
            all.entry(key.clone()).or_default().sync(object);
        }
    }
    all
}

/// (b): every live node has the same ring view, and every owner of every key holds
/// exactly the merge of all copies.
pub fn converged(sim: &Sim<Dynamo>) -> bool {
    let mut views = sim.actors().map(|(_, a)| a.active_members());
    let Some(view) = views.next() else {
        return false;
    };
    if views.any(|v| v != view) {
        return false;
    }
    if !sim
        .workload::<StoreWorkload>()
        .is_none_or(StoreWorkload::idle)
    {
        return false;
    }
    let Some((_, any)) = sim.actors().next() else {
        return false;
    };
    for (key, object) in merged_state(sim) {
        for owner in any.bucket_owners(&key) {
            match sim.actor(owner) {
                Some(a) if a.object(&key) == Some(&object) => {}
                _ => return false,
            }
        }
    }
    true
}

/// (a): every acknowledged write is a sibling of the final state, or a write whose
/// client context contained its dot superseded it.
fn no_lost_writes(writes: &[WriteRecord], state: &BTreeMap<Key, Object>) -> Result<(), String> {
    for w in writes {
        let Some(dot) = w.dot else { continue };
        let present = state
            .get(&w.key)
            .is_some_and(|o| o.dotted_values().any(|(d, v)| d == dot && *v == w.value));
        // A delete that is gone was reaped; a resurrection it should have prevented is
        // caught by (d).
        if present || w.value == Sibling::Tombstone {
            continue;
        }
        let superseded = writes
            .iter()
            .any(|later| later.key == w.key && later.context.contains(dot));
        if !superseded {
            return Err(format!(
                "acknowledged write {:?} to {} with dot {dot} was lost: it is not a sibling \
                 and no later write's context saw it",
                w.value, w.key
            ));
        }
    }
    Ok(())
}

/// (d): dots are never given out twice for one key, and no value an acknowledged delete
/// superseded is back in the final state.
fn no_reused_dots_or_resurrections(
    writes: &[WriteRecord],
    state: &BTreeMap<Key, Object>,
) -> Result<(), String> {
    let mut seen: BTreeMap<(&Key, Dot), &WriteRecord> = BTreeMap::new();
    for w in writes {
        let Some(dot) = w.dot else { continue };
        if let Some(first) = seen.insert((&w.key, dot), w) {
            return Err(format!(
                "dot {dot} of {} was given out twice: to {:?} and to {:?} (a reaped key's \
                 coordinator reused its dots)",
                w.key, first.value, w.value
            ));
        }
    }
    for (key, object) in state {
        for (dot, value) in object.dotted_values() {
            if *value == Sibling::Tombstone {
                continue;
            }
            let delete = writes.iter().find(|d| {
                d.key == *key
                    && d.value == Sibling::Tombstone
                    && d.dot.is_some()
                    && d.context.contains(dot)
            });
            if let Some(d) = delete {
                return Err(format!(
                    "{key}: value {value:?} with dot {dot} is back, though the acknowledged \
                     delete {:?} superseded it (a reaped tombstone resurrected it)",
                    d.dot
                ));
            }
        }
    }
    Ok(())
}

/// (c): reads that missed a write acknowledged before they began.
///
/// A write that an acknowledged delete covered (the delete itself, or a value its context
/// saw) is not counted when the delete completed before the read began: the key may have
/// been reaped, and then reading nothing of it is right.
fn stale_reads(writes: &[WriteRecord], reads: &[ReadRecord]) -> u64 {
    let deleted_before = |w: &WriteRecord, dot: Dot, at: u64| {
        writes.iter().any(|d| {
            d.key == w.key
                && d.value == Sibling::Tombstone
                && d.completed.is_some_and(|c| c < at)
                && (d.dot == Some(dot) || d.context.contains(dot))
        })
    };
    reads
        .iter()
        .filter(|r| {
            r.strict
                && writes.iter().any(|w| {
                    w.key == r.key
                        && w.completed.is_some_and(|c| c < r.invoked)
                        && w.dot.is_some_and(|d| {
                            !r.context.contains(d) && !deleted_before(w, d, r.invoked)
                        })
                })
        })
        .count() as u64
}

/// Run one scenario and check (a), (b) and, without faults, (c).
pub fn run(s: &Scenario) -> Result<Outcome, String> {
    let mut cfg = SimConfig::new(s.seed, s.nodes);
    cfg.faults = s.faults.faults();
    if s.faults != FaultMix::None {
        cfg.net = NetConfig {
            loss: 0.01,
            ..NetConfig::lan()
        };
    }
    if s.slow_network {
        cfg.net.min_latency = Duration::from_millis(1);
        cfg.net.latency_tail = Duration::from_millis(20);
    }
    let mut dcfg = DynamoConfig::new((0..s.nodes).map(NodeId));
    dcfg.default_bucket = s.bucket;
    dcfg.buckets.insert(
        "s".into(),
        BucketProps {
            n: 2.min(s.bucket.n),
            r: 1,
            w: 2.min(s.bucket.n),
        },
    );
    dcfg.variant = s.variant;
    dcfg.tombstone_delay = s.tombstone_delay();
    let counters = Arc::new(DynamoCounters::default());
    let c2 = counters.clone();
    let mut sim = Sim::new(cfg, move |me| Dynamo::new(me, dcfg.clone(), c2.clone()));
    sim.set_max_events(20_000_000);
    let keys: Vec<Key> = (0..s.keys)
        .map(|i| {
            let bucket = if i % 4 == 3 { "s" } else { "b" };
            Key::new(bucket, format!("k{i}"))
        })
        .collect();
    let stop_at = synod_core::duration_nanos(s.duration);
    sim.set_workload(StoreWorkload {
        clients: s.clients,
        keys,
        stop_at,
        churn: s.faults.churn(),
        in_flight: vec![None; s.clients as usize],
        next_seq: 0,
        contexts: vec![BTreeMap::new(); s.clients as usize],
        writes: Vec::new(),
        reads: Vec::new(),
        left: Vec::new(),
        unacked: 0,
        rotate: s.rotate_keys.then_some(150_000_000),
    });
    sim.run_until(s.duration).map_err(|f| f.to_string())?;
    sim.heal_all();
    let healed = sim.now();
    let deadline = healed + Duration::from_secs(60);
    // The operator's last round rejoins every node that left; let it land first.
    sim.run_for(Duration::from_millis(800))
        .map_err(|f| f.to_string())?;
    while !converged(&sim) {
        if sim.now() >= deadline {
            return Err(format!(
                "seed {}: replicas did not converge within {:?} of healing",
                s.seed,
                deadline - healed
            ));
        }
        sim.run_for(Duration::from_millis(20))
            .map_err(|f| f.to_string())?;
    }
    let convergence = sim.now() - healed;
    // Let every collection round that can still start finish (sweep, phase 1, delay),
    // then converge again: a resurrection would show up only after the reap.
    sim.run_for(s.tombstone_delay() + Duration::from_millis(1500))
        .map_err(|f| f.to_string())?;
    let deadline = sim.now() + Duration::from_secs(60);
    while !converged(&sim) {
        if sim.now() >= deadline {
            return Err(format!(
                "seed {}: replicas did not converge again after tombstone collection",
                s.seed
            ));
        }
        sim.run_for(Duration::from_millis(20))
            .map_err(|f| f.to_string())?;
    }
    let state = merged_state(&sim);
    let tombstones_left = sim
        .actors()
        .map(|(_, a)| {
            a.objects()
                .filter(|(_, o)| super::is_sole_tombstone(o))
                .count() as u64
        })
        .sum();
    let w = sim
        .workload::<StoreWorkload>()
        .ok_or("the workload is missing")?;
    no_lost_writes(&w.writes, &state).map_err(|e| format!("seed {}: {e}", s.seed))?;
    no_reused_dots_or_resurrections(&w.writes, &state)
        .map_err(|e| format!("seed {}: {e}", s.seed))?;
    let stale = stale_reads(&w.writes, &w.reads);
    let props_ok = s.bucket.r + s.bucket.w > s.bucket.n;
    if s.faults == FaultMix::None && props_ok && stale > 0 {
        return Err(format!(
            "seed {}: {stale} reads missed a write acknowledged before they began, with R + W > N \
             and no faults",
            s.seed
        ));
    }
    let siblings: Vec<u64> = state.values().map(|o| o.len() as u64).collect();
    Ok(Outcome {
        acked_writes: w.writes.iter().filter(|w| w.dot.is_some()).count() as u64,
        unacked_writes: w.unacked,
        reads: w.reads.len() as u64,
        stale_reads: stale,
        convergence,
        keys: state.len() as u64,
        siblings: siblings.iter().sum(),
        max_siblings: siblings.iter().copied().max().unwrap_or(0),
        hinted_writes: counters.hinted_writes.load(Ordering::Relaxed),
        handoff_objects: counters.handoff_objects.load(Ordering::Relaxed),
        read_repairs: counters.read_repairs.load(Ordering::Relaxed),
        aae_objects: counters.aae_objects.load(Ordering::Relaxed),
        tombstones_reaped: counters.tombstones_reaped.load(Ordering::Relaxed),
        tombstones_left,
        reap_rounds: counters.reap_rounds.load(Ordering::Relaxed),
    })
}
