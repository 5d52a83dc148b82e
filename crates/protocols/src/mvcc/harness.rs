//! The simulation harness: `Raft<MvccStateMachine>` under the simulator's faults, with
//! clients that put, get, delete and compare-and-set (a Txn) through etcd-shaped
//! commands, a history for the linearizability checker, and a check that replicas
//! which applied the same log hold the same state, and that every node's watch
//! delivery is gap-free and identical.

use super::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, MvccCommand, MvccConfig, MvccError,
    MvccOutput, MvccResponse, MvccStateMachine, PutRequest, RangeRequest, RequestOp, Revision,
    TxnRequest,
};
use crate::kv_clients::{KvClientPool, KvService, Reply, OPERATOR};
use crate::raft::{Raft, RaftConfig, RaftMsg, SessionId};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;
use synod_check::history::{Op, OpResult};
use synod_check::linearizability::{check_kv, CheckResult};
use synod_core::{ClientId, LogIndex, NodeId};
use synod_sim::{swarm_config, ClientCtl, Sim, Workload};

/// Raft replicating the MVCC store.
pub type MvccRaft = Raft<MvccStateMachine>;
type Msg = RaftMsg<MvccCommand, MvccOutput>;

/// Timer key of the operator that compacts.
const COMPACT: u64 = u64::MAX;

impl KvService for MvccRaft {
    /// The etcd command for a checker operation; values are decimal strings.
    fn request(client: ClientId, seq: u64, op: &Op) -> Msg {
        let session = SessionId(client.0);
        let write = |command| RaftMsg::ClientWrite {
            session,
            seq,
            command,
        };
        let put = |key: &str, value: u64| PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_string().into_bytes(),
            ..PutRequest::default()
        };
        match op {
            Op::Read { key } => RaftMsg::ClientRead {
                seq,
                command: MvccCommand::Range(RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..RangeRequest::default()
                }),
            },
            Op::Write { key, value } => write(MvccCommand::Put(put(key, *value))),
            Op::Cas { key, expected, new } => {
                let target = match expected {
                    Some(v) => CompareTarget::Value(v.to_string().into_bytes()),
                    None => CompareTarget::Version(0),
                };
                write(MvccCommand::Txn(TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal,
                        target,
                        key: key.as_bytes().to_vec(),
                        range_end: Vec::new(),
                    }],
                    success: vec![RequestOp::Put(put(key, *new))],
                    failure: Vec::new(),
                }))
            }
            Op::Delete { key } => write(MvccCommand::DeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..DeleteRangeRequest::default()
            })),
        }
    }

    fn reply(op: &Op, in_flight: u64, msg: Msg) -> Reply {
        match msg {
            RaftMsg::ClientReply { seq, output } if seq == in_flight => {
                Reply::Done(result_of(op, output))
            }
            RaftMsg::NotLeader { seq, leader_hint } if seq == in_flight => {
                Reply::Redirect(leader_hint)
            }
            _ => Reply::Other,
        }
    }
}

fn result_of(op: &Op, output: MvccOutput) -> Result<OpResult, String> {
    let value_of = |v: &[u8]| -> Result<u64, String> {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("a value that is not a number: {v:?}"))
    };
    match (op, output) {
        (Op::Read { .. }, Ok(MvccResponse::Range(r))) => match r.kvs.as_slice() {
            [] => Ok(OpResult::ReadOk(None)),
            [kv] => Ok(OpResult::ReadOk(Some(value_of(&kv.value)?))),
            _ => Err(format!("a single-key read returned {} keys", r.kvs.len())),
        },
        (Op::Write { .. }, Ok(MvccResponse::Put(_))) => Ok(OpResult::WriteOk),
        (Op::Cas { .. }, Ok(MvccResponse::Txn(t))) => Ok(OpResult::CasOk(t.succeeded)),
        (Op::Delete { .. }, Ok(MvccResponse::DeleteRange(_))) => Ok(OpResult::DeleteOk),
        (op, output) => Err(format!("{op} answered with {output:?}")),
    }
}

/// The shared KV clients ([`KvClientPool`]) through etcd-shaped commands: reads are
/// Ranges (through ReadIndex), compare-and-set is a Txn comparing the value, or the
/// version with 0 for "absent"; values are decimal strings. An operator compacts to a
/// recent revision now and then, so reads and snapshots run against compacted history.
pub struct MvccClients {
    pool: KvClientPool<MvccRaft>,
    /// Compaction failures other than a lost race (which is a bug).
    compaction_errors: Vec<String>,
}

impl std::ops::Deref for MvccClients {
    type Target = KvClientPool<MvccRaft>;
    fn deref(&self) -> &KvClientPool<MvccRaft> {
        &self.pool
    }
}

impl MvccClients {
    /// `clients` clients that start operations until `stop_at` of true time.
    pub fn new(clients: u64, stop_at: Duration) -> Self {
        MvccClients {
            pool: KvClientPool::new(clients, stop_at),
            compaction_errors: Vec::new(),
        }
    }

    /// Protocol errors seen by clients and by the compacting operator.
    pub fn errors(&self) -> impl Iterator<Item = &String> {
        self.pool.errors.iter().chain(&self.compaction_errors)
    }

    /// Compact to a revision a little behind the leader's: reads at the current
    /// revision still work, and snapshots carry compacted history.
    fn on_compact_timer(&mut self, ctl: &mut ClientCtl<'_, MvccRaft>) {
        if ctl.now_nanos() >= self.pool.stop_at() {
            return;
        }
        if let Some(leader) = self.pool.last_leader {
            let revision = ctl
                .sim()
                .actor(leader)
                .map_or(0, |r| r.state_machine().revision().0 - 5);
            if revision > 1 {
                let command = MvccCommand::Compact(super::CompactionRequest {
                    revision,
                    physical: false,
                });
                // A one-off session per compaction: the answer is not awaited.
                let seq = ctl.now_nanos();
                ctl.send(
                    OPERATOR,
                    leader,
                    RaftMsg::ClientWrite {
                        session: SessionId(u64::MAX),
                        seq,
                        command,
                    },
                );
            }
        }
        ctl.set_timer(OPERATOR, COMPACT, Duration::from_millis(400));
    }
}

impl Workload<MvccRaft> for MvccClients {
    fn on_start(&mut self, ctl: &mut ClientCtl<'_, MvccRaft>) {
        self.pool.on_start(ctl);
        ctl.set_timer(OPERATOR, COMPACT, Duration::from_millis(400));
    }

    fn on_reply(
        &mut self,
        ctl: &mut ClientCtl<'_, MvccRaft>,
        client: ClientId,
        from: NodeId,
        msg: Msg,
    ) {
        if client == OPERATOR {
            if let RaftMsg::ClientReply { output: Err(e), .. } = msg {
                // Two compactions may race to the same revision; anything else is a bug.
                if !matches!(e, MvccError::Compacted { .. }) {
                    self.compaction_errors
                        .push(format!("compaction failed: {e}"));
                }
            }
            return;
        }
        self.pool.on_reply(ctl, client, from, msg);
    }

    fn on_timer(&mut self, ctl: &mut ClientCtl<'_, MvccRaft>, client: ClientId, key: u64) {
        match (client, key) {
            (OPERATOR, COMPACT) => self.on_compact_timer(ctl),
            _ => self.pool.on_timer(ctl, client, key),
        }
    }
}

/// Raft timing for the simulator: 100 ms election timeouts, 20 ms heartbeats, and with
/// `snapshots` a snapshot every 25 entries sent in 512-byte chunks.
pub fn raft_config(voters: u32, snapshots: bool) -> RaftConfig {
    let mut config = RaftConfig::new((0..voters).map(NodeId).collect());
    config.election_timeout = Duration::from_millis(100);
    config.heartbeat_interval = Duration::from_millis(20);
    config.max_entries_per_append = 16;
    config.max_in_flight = 4;
    if snapshots {
        config.snapshot_threshold = 25;
        config.snapshot_chunk_bytes = 512;
    }
    config
}

/// Replicas that applied the same prefix of the log hold the same state, and each
/// replica's derived bookkeeping (db size, lease attachments) matches its data.
pub fn check_replicas(sim: &Sim<MvccRaft>) -> Result<(), String> {
    let mut by_applied: BTreeMap<LogIndex, (NodeId, &MvccStateMachine)> = BTreeMap::new();
    for (node, raft) in sim.actors() {
        let sm = raft.state_machine();
        if sm.recomputed_db_size() != sm.db_size() {
            return Err(format!(
                "{node}: db_size {} but the data holds {}",
                sm.db_size(),
                sm.recomputed_db_size()
            ));
        }
        match by_applied.get(&raft.last_applied()) {
            Some((other, theirs)) if *theirs != sm => {
                return Err(format!(
                    "{node} and {other} applied up to {} but hold different stores",
                    raft.last_applied()
                ));
            }
            Some(_) => {}
            None => {
                by_applied.insert(raft.last_applied(), (node, sm));
            }
        }
    }
    Ok(())
}

/// What a watcher sees of one change, compared across nodes.
type Seen = (
    Vec<u8>,
    super::EventKind,
    Vec<u8>,
    i64,
    i64,
    Option<Vec<u8>>,
);

/// Every node serves a watch on all keys the way a server would: after each step it
/// asks its own state machine for the events after the last revision it delivered.
/// Checked after every simulator event: each node delivers every revision in order
/// with no gap (every revision changes at least one key, so each has events), and
/// the events of one revision are the same on every node, across leader changes,
/// crashes, snapshots and compactions. A node whose watcher falls behind both a
/// compaction and the journal (after installing a snapshot) is cancelled and starts
/// over at its current revision, as etcd cancels a compacted watcher.
pub fn install_watch_check(sim: &mut Sim<MvccRaft>) {
    let cursors = RefCell::new(BTreeMap::<NodeId, i64>::new());
    let seen = RefCell::new(BTreeMap::<i64, Vec<Seen>>::new());
    sim.invariant(
        "watch delivery is gap-free and the same on every node",
        move |sim| {
            let mut cursors = cursors.borrow_mut();
            let mut seen = seen.borrow_mut();
            for (node, raft) in sim.actors() {
                let sm = raft.state_machine();
                let cursor = cursors.entry(node).or_insert(1);
                let current = sm.revision().0;
                if current <= *cursor {
                    continue;
                }
                let events = match sm.events_after(Revision(*cursor), &[0], &[0]) {
                    Ok((events, _)) => events,
                    Err(MvccError::Compacted { .. }) => {
                        *cursor = current;
                        continue;
                    }
                    Err(e) => return Err(format!("{node}: watch failed: {e}")),
                };
                let mut by_revision = BTreeMap::<i64, Vec<Seen>>::new();
                for e in events {
                    by_revision.entry(e.kv.mod_revision).or_default().push((
                        e.kv.key,
                        e.kind,
                        e.kv.value,
                        e.kv.version,
                        e.kv.create_revision,
                        e.prev_kv.map(|p| p.value),
                    ));
                }
                let delivered: Vec<i64> = by_revision.keys().copied().collect();
                let expected: Vec<i64> = (*cursor + 1..=current).collect();
                if delivered != expected {
                    return Err(format!(
                        "{node} delivered revisions {delivered:?} after {cursor}, not {expected:?}"
                    ));
                }
                for (revision, events) in by_revision {
                    match seen.get(&revision) {
                        Some(known) if *known != events => {
                            return Err(format!(
                                "{node} delivered different events at revision {revision}: \
                             {events:?}, others {known:?}"
                            ));
                        }
                        Some(_) => {}
                        None => {
                            seen.insert(revision, events);
                        }
                    }
                }
                *cursor = current;
            }
            Ok(())
        },
    );
}

/// Check the history for linearizability and the clients for errors.
pub fn check_history(sim: &Sim<MvccRaft>) -> Result<usize, String> {
    let clients = sim
        .workload::<MvccClients>()
        .ok_or("the workload is not MvccClients")?;
    if let Some(e) = clients.errors().next() {
        return Err(format!("client error: {e}"));
    }
    match check_kv(&clients.history) {
        CheckResult::Ok => Ok(clients.history.len()),
        CheckResult::Violation(counter_example) => Err(format!("{counter_example}")),
        other => Err(format!("linearizability check gave no answer: {other:?}")),
    }
}

/// The swarm scenario: 3 or 5 servers, random fault mixes (partitions, crashes with
/// torn unsynced writes, pauses, clogged links), a lossy network, drifting clocks, four
/// clients for `seconds` of simulated time, compactions. Checks linearizability and
/// replica agreement. Returns how many operations the history holds.
pub fn swarm_scenario(seed: u64, seconds: u64) -> Result<usize, String> {
    scenario(seed, seconds, None)
}

/// The deliberate bugs the checks must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    StaleReads,
    WatchGap,
}

/// [`swarm_scenario`] with live watch delivery that skips a revision when several are
/// pending, a bug the watch check must catch.
pub fn watch_gap_scenario(seed: u64, seconds: u64) -> Result<usize, String> {
    scenario(seed, seconds, Some(Bug::WatchGap))
}

/// [`swarm_scenario`] with replicas that answer reads at the previous revision, a bug
/// the linearizability check must catch.
pub fn stale_read_scenario(seed: u64, seconds: u64) -> Result<usize, String> {
    scenario(seed, seconds, Some(Bug::StaleReads))
}

fn scenario(seed: u64, seconds: u64, bug: Option<Bug>) -> Result<usize, String> {
    let nodes = match seed % 2 {
        0 => 3,
        _ => 5,
    };
    let cfg = swarm_config(seed, nodes);
    let snapshots = (seed / 2) % 2 == 1;
    let mut sim = Sim::new(cfg, move |_me: NodeId| {
        let mut sm = MvccStateMachine::new(MvccConfig::default());
        match bug {
            Some(Bug::StaleReads) => sm = sm.with_stale_reads(),
            Some(Bug::WatchGap) => sm = sm.with_watch_gap(),
            None => {}
        }
        Raft::new(raft_config(nodes, snapshots), sm)
    });
    sim.invariant("no server faults", |sim| {
        for (node, raft) in sim.actors() {
            if let Some(why) = raft.fault() {
                return Err(format!("{node} stopped: {why}"));
            }
        }
        Ok(())
    });
    install_watch_check(&mut sim);
    sim.set_workload(MvccClients::new(4, Duration::from_secs(seconds)));
    sim.run_for(Duration::from_secs(seconds + 1))
        .map_err(|f| f.to_string())?;
    check_replicas(&sim)?;
    let ops = check_history(&sim)?;
    if std::env::var_os("SYNOD_MVCC_DEBUG").is_some() {
        for (node, raft) in sim.actors() {
            let sm = raft.state_machine();
            eprintln!(
                "{node}: applied {} snapshot {} revision {} compacted {} db {}",
                raft.last_applied(),
                raft.snapshot_index(),
                sm.revision(),
                sm.compacted_revision(),
                sm.db_size()
            );
        }
    }
    Ok(ops)
}
