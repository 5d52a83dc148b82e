//! The Jepsen-style bank test: accounts spread over ranges that split as they fill,
//! transfers as transactions, snapshot reads of every balance, under partitions,
//! crashes, pauses, leader changes and coordinators that vanish mid-commit.
//!
//! Checked: every snapshot read sums to the initial total (so none sees part of a
//! transfer), no balance goes missing, every key's reads and writes are linearizable
//! (synod-check), no replica faults, and once faults heal a snapshot read completes.
//!
//! Compiled for tests and with the `harness` feature (the CLI turns it on).

use super::msg::{
    u64_value, value_u64, Key, RangeCommand, RangeDescriptor, RangeId, RangeResult, Route,
    Timestamp, TxnId, TxnMeta, TxnMsg, TxnStatus,
};
use super::node::{TxnConfig, TxnNode};
use crate::raft::{RaftMsg, SessionId};
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;
use synod_check::history::{History, Op, OpId, OpResult, Process};
use synod_check::linearizability::{check_kv, CheckResult};
use synod_core::{ClientId, NodeId};
use synod_sim::{swarm_config, ClientCtl, FaultConfig, NetConfig, Sim, SimConfig, Workload};

/// The node every scenario runs.
pub type Node = TxnNode;

/// Timer key that starts a client's next transaction.
const NEXT_TXN: u64 = 0;
/// Attempts (sends to some node) before a request is given up.
const MAX_ATTEMPTS: u32 = 16;
/// Pushes of a still-live transaction, or retries after a stale route, before giving up.
const MAX_CONFLICTS: u32 = 40;

/// What the bank test runs.
#[derive(Clone, Debug)]
pub struct BankConfig {
    /// Number of accounts, `acct/000`…
    pub accounts: u32,
    /// Each account's opening balance.
    pub initial: u64,
    /// Clients that transfer.
    pub transfer_clients: u64,
    /// Clients that read every balance in one snapshot.
    pub read_clients: u64,
    /// Clients start no new transaction after this much true time.
    pub stop_at: Duration,
    /// Probability that a coordinator vanishes after its prewrites, and (separately)
    /// after its commit but before resolving its intents.
    pub abandon: f64,
    /// A pending transaction may be aborted by others this long after it started.
    pub ttl: Duration,
    /// Transfers pick accounts among the first `hot` only (contention), if set.
    pub hot: Option<u32>,
    /// Use the one-phase fast path for single-range transactions.
    pub fast_path: bool,
    /// Per-request timeout before the client tries another node.
    pub timeout: Duration,
    /// Clients that watch every account from the first revision (merged rangefeeds
    /// over closed timestamps); checked by [`check_watch`].
    pub watch_clients: u64,
    /// Planted bug: forget the transaction record right after the decision, before the
    /// intents are resolved (the check must catch it).
    pub forget_before_resolving: bool,
}

impl Default for BankConfig {
    fn default() -> Self {
        BankConfig {
            accounts: 8,
            initial: 100,
            transfer_clients: 4,
            read_clients: 2,
            stop_at: Duration::from_secs(4),
            abandon: 0.05,
            ttl: Duration::from_millis(150),
            hot: None,
            fast_path: true,
            timeout: Duration::from_millis(50),
            watch_clients: 0,
            forget_before_resolving: false,
        }
    }
}

/// Counters and latencies of the transactions the clients ran (true time, ns).
#[derive(Clone, Debug, Default)]
pub struct BankStats {
    /// Latencies of committed single-range (one-phase) transfers.
    pub one_phase: Vec<u64>,
    /// Latencies of committed cross-range (two-phase) transfers.
    pub two_phase: Vec<u64>,
    /// Transfers that aborted (conflict, or pushed by another client).
    pub aborted: u64,
    /// Transfers whose outcome the client never learned, or that it abandoned.
    pub unknown: u64,
    /// Completed snapshot reads of every balance, with their latencies.
    pub reads: Vec<u64>,
    /// True completion time and anchor key (first key written) of committed transfers.
    pub commit_times: Vec<(u64, Key)>,
    /// True time of the newest completed snapshot read.
    pub last_read_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Init,
    Transfer { from: Key, to: Key, amount: u64 },
    ReadAll,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    StartTs,
    Read(usize),
    CommitTs,
    FastCommit,
    Prewrite(usize),
    EndTxn,
    Resolve(usize),
    Push,
    ResolveOther(TxnStatus),
    /// Garbage-collect the decided record once every intent is resolved.
    Forget,
}

/// Whether the transaction's writes took effect, as far as the client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Committed,
    Aborted,
    Unknown,
}

struct Txn {
    kind: Kind,
    invoked_at: u64,
    meta: TxnMeta,
    reads: Vec<Key>,
    read_values: Vec<Option<u64>>,
    writes: Vec<(Key, u64)>,
    write_ops: Vec<OpId>,
    prewritten: Vec<Key>,
    commit_ts: Option<Timestamp>,
    phase: Phase,
    /// Where to go back to after a conflict is cleared.
    resume: Phase,
    blocker: Option<(TxnMeta, Key)>,
    conflicts: u32,
    one_phase: bool,
    /// The decision once known (committed or aborted), before resolving intents.
    decided: Option<TxnStatus>,
    outcome: Option<Outcome>,
    /// The last few results, for failure reports.
    recent: Vec<String>,
}

struct Request {
    route: Route,
    command: RangeCommand,
    seq: u64,
    attempts: u32,
    token: u64,
    sent: bool,
    /// Where to send next, once a reply or a timeout said where not to.
    target: Option<NodeId>,
}

/// A watch over every account: rounds of one oracle timestamp, then one `Feed` per
/// range across the interval; the events up to the smallest resolved timestamp of the
/// round are released, in (timestamp, key) order.
#[derive(Debug, Default)]
pub struct Watcher {
    /// Everything at or below this was released.
    pub released: Timestamp,
    /// The released events: (commit timestamp, key, value or `None` for a delete).
    pub delivered: Vec<(Timestamp, Key, Option<u64>)>,
    /// True time at which the newest round that released everything up to its own
    /// close timestamp had started (watch liveness).
    pub caught_up_at: u64,
    /// Rounds completed.
    pub rounds: u64,
    round: Option<Round>,
    balances: BTreeMap<Key, u64>,
    /// An intent that held a range back, being pushed, and the push's outcome.
    push: Option<(TxnMeta, Key)>,
    /// The transaction whose intent holds the watch back, and since when (true time).
    stuck_on: Option<(TxnId, u64)>,
}

/// A watcher pushes an intent that holds its resolved timestamp back only after this
/// long: a live coordinator finishes sooner, and a push aborts a slow one.
const WATCH_PUSH_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Round {
    started_at: u64,
    close_ts: Option<Timestamp>,
    cursor: Key,
    events: Vec<super::msg::Event>,
    resolved: Option<Timestamp>,
    blocker: Option<(TxnMeta, Key)>,
}

/// The watched interval: every account.
const WATCH_START: &str = "acct/";
const WATCH_END: &str = "acct0";

struct Client {
    id: ClientId,
    seq: u64,
    next_token: u64,
    txn: Option<Txn>,
    request: Option<Request>,
    next_txn: u64,
}

/// The bank clients: one transaction per client at a time, each driving its own commit
/// (the coordinator), with leader and range caches learned from replies.
pub struct BankClients {
    /// The test's parameters.
    pub config: BankConfig,
    /// Per-key reads and writes, for the linearizability checker.
    pub history: History,
    /// Violations and protocol errors the clients saw.
    pub errors: Vec<String>,
    /// What the transactions did.
    pub stats: BankStats,
    clients: Vec<Client>,
    initialized: bool,
    ranges: Vec<RangeDescriptor>,
    leaders: BTreeMap<RangeId, NodeId>,
    default_target: NodeId,
    /// The watch clients, by client id.
    pub watchers: BTreeMap<ClientId, Watcher>,
}

fn account(i: u32) -> Key {
    format!("acct/{i:03}")
}

impl BankClients {
    /// Clients for `config`.
    pub fn new(config: BankConfig) -> Self {
        let first_watcher = 2 + config.transfer_clients + config.read_clients;
        let n = first_watcher - 1 + config.watch_clients;
        BankClients {
            watchers: (first_watcher..=n)
                .map(|c| (ClientId(c), Watcher::default()))
                .collect(),
            history: History::new(),
            errors: Vec::new(),
            stats: BankStats::default(),
            clients: (1..=n)
                .map(|c| Client {
                    id: ClientId(c),
                    seq: 0,
                    next_token: 1,
                    txn: None,
                    request: None,
                    next_txn: 0,
                })
                .collect(),
            initialized: false,
            ranges: Vec::new(),
            leaders: BTreeMap::new(),
            default_target: NodeId(0),
            config,
        }
    }

    /// The sum every snapshot read must see.
    pub fn total(&self) -> u64 {
        self.config.initial * u64::from(self.config.accounts)
    }

    /// Whether the opening balances are written.
    pub fn initialized(&self) -> bool {
        self.initialized
    }

    /// What each client is doing now (for failure reports).
    pub fn describe(&self) -> String {
        let mut out = format!(
            "initialized {}, one-phase {}, two-phase {}, aborted {}, unknown {}, reads {} \
             (last at {} ns)",
            self.initialized,
            self.stats.one_phase.len(),
            self.stats.two_phase.len(),
            self.stats.aborted,
            self.stats.unknown,
            self.stats.reads.len(),
            self.stats.last_read_at
        );
        for c in &self.clients {
            let txn = c.txn.as_ref().map(|t| {
                format!(
                    "{:?} {} since {} phase {:?} conflicts {} blocker {:?} recent {:#?}",
                    t.kind, t.meta.id, t.invoked_at, t.phase, t.conflicts, t.blocker, t.recent
                )
            });
            let req = c
                .request
                .as_ref()
                .map(|r| format!("{:?} attempts {} sent {}", r.command, r.attempts, r.sent));
            out.push_str(&format!("\n  {}: {txn:?} request {req:?}", c.id));
        }
        out
    }

    fn slot(client: ClientId) -> usize {
        (client.0 - 1) as usize
    }

    // ---- routing caches --------------------------------------------------------------

    fn learn_range(&mut self, desc: &RangeDescriptor) {
        if !desc.serves_keys {
            return;
        }
        let overlaps = |a: &RangeDescriptor| {
            let a_before = a.end.as_deref().is_some_and(|e| e <= desc.start.as_str());
            let d_before = desc.end.as_deref().is_some_and(|e| e <= a.start.as_str());
            !(a_before || d_before)
        };
        self.ranges.retain(|r| r.id != desc.id && !overlaps(r));
        self.ranges.push(desc.clone());
    }

    fn range_of(&self, key: &str) -> Option<RangeId> {
        self.ranges.iter().find(|r| r.contains(key)).map(|r| r.id)
    }

    fn route_range(&self, route: &Route) -> Option<RangeId> {
        match route {
            Route::Meta => Some(RangeId::META),
            Route::Key(k) => self.range_of(k),
        }
    }

    fn target(&self, route: &Route) -> NodeId {
        self.route_range(route)
            .and_then(|r| self.leaders.get(&r).copied())
            .unwrap_or(self.default_target)
    }

    // ---- the request layer -----------------------------------------------------------

    fn send(
        &mut self,
        ctl: &mut ClientCtl<'_, Node>,
        client: ClientId,
        route: Route,
        cmd: RangeCommand,
    ) {
        let c = &mut self.clients[Self::slot(client)];
        c.seq += 1;
        c.request = Some(Request {
            route,
            command: cmd,
            seq: c.seq,
            attempts: 0,
            token: 0,
            sent: false,
            target: None,
        });
        self.attempt(ctl, client);
    }

    fn attempt(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId) {
        let timeout = self.config.timeout;
        let target = match &self.clients[Self::slot(client)].request {
            Some(r) => r.target.unwrap_or_else(|| self.target(&r.route)),
            None => return,
        };
        let c = &mut self.clients[Self::slot(client)];
        let Some(r) = c.request.as_mut() else { return };
        r.attempts += 1;
        r.token = c.next_token;
        c.next_token += 1;
        r.sent = true;
        let msg = TxnMsg::Request {
            route: r.route.clone(),
            msg: RaftMsg::ClientWrite {
                session: SessionId(client.0),
                seq: r.seq,
                command: r.command.clone(),
            },
        };
        ctl.send(client, target, msg);
        ctl.set_timer(client, r.token, timeout);
    }

    fn wait(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId, after: Duration) {
        let c = &mut self.clients[Self::slot(client)];
        let Some(r) = c.request.as_mut() else { return };
        r.token = c.next_token;
        c.next_token += 1;
        r.sent = false;
        ctl.set_timer(client, r.token, after);
    }

    fn on_request_timer(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId, key: u64) {
        let nodes = ctl.nodes();
        let (sent, attempts, current) = match &self.clients[Self::slot(client)].request {
            Some(r) if r.token == key => (
                r.sent,
                r.attempts,
                r.target.unwrap_or_else(|| self.target(&r.route)),
            ),
            _ => return,
        };
        if sent {
            // Timed out: that node may be down or cut off; try the next one.
            let next = NodeId((current.0 + 1) % nodes);
            if let Some(r) = self.clients[Self::slot(client)].request.as_mut() {
                r.target = Some(next);
            }
            self.default_target = next;
        }
        if attempts >= MAX_ATTEMPTS {
            self.clients[Self::slot(client)].request = None;
            return self.request_failed(ctl, client);
        }
        self.attempt(ctl, client);
    }

    // ---- transactions ----------------------------------------------------------------

    fn start_txn(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId) {
        let now = ctl.now_nanos();
        let stop = u64::try_from(self.config.stop_at.as_nanos()).unwrap_or(u64::MAX);
        let slot = Self::slot(client);
        if self.clients[slot].txn.is_some() {
            return;
        }
        if self.watchers.contains_key(&client) {
            return self.watch_round(ctl, client);
        }
        let kind = if client.0 == 1 && !self.initialized {
            Kind::Init
        } else if now >= stop && client.0 != 1 {
            return;
        } else if !self.initialized {
            ctl.set_timer(client, NEXT_TXN, Duration::from_millis(10));
            return;
        } else if client.0 == 1 || client.0 > 1 + self.config.transfer_clients {
            if now >= stop && client.0 == 1 {
                // Client 1 keeps reading after the stop, so liveness can be judged.
                Kind::ReadAll
            } else if client.0 == 1 {
                ctl.set_timer(client, NEXT_TXN, Duration::from_millis(50));
                return;
            } else {
                Kind::ReadAll
            }
        } else {
            let pool = self.config.hot.unwrap_or(self.config.accounts).max(2);
            let from = ctl.rng().gen_range(0..pool);
            let mut to = ctl.rng().gen_range(0..pool - 1);
            if to >= from {
                to += 1;
            }
            let amount = ctl.rng().gen_range(1..=20);
            Kind::Transfer {
                from: account(from),
                to: account(to),
                amount,
            }
        };
        let reads = match &kind {
            Kind::Init => Vec::new(),
            Kind::Transfer { from, to, .. } => vec![from.clone(), to.clone()],
            Kind::ReadAll => (0..self.config.accounts).map(account).collect(),
        };
        let c = &mut self.clients[slot];
        c.next_txn += 1;
        let id = TxnId((client.0 << 40) | c.next_txn);
        let expires_at = now.saturating_add(u64::try_from(self.config.ttl.as_nanos()).unwrap_or(0));
        let read_values = vec![None; reads.len()];
        c.txn = Some(Txn {
            kind,
            invoked_at: now,
            meta: TxnMeta {
                id,
                anchor: String::new(),
                start_ts: Timestamp(0),
                expires_at,
            },
            reads,
            read_values,
            writes: Vec::new(),
            write_ops: Vec::new(),
            prewritten: Vec::new(),
            commit_ts: None,
            phase: Phase::StartTs,
            resume: Phase::StartTs,
            blocker: None,
            conflicts: 0,
            one_phase: false,
            decided: None,
            outcome: None,
            recent: Vec::new(),
        });
        self.run_phase(ctl, client);
    }

    fn txn(&mut self, client: ClientId) -> Option<&mut Txn> {
        self.clients[Self::slot(client)].txn.as_mut()
    }

    /// Issue the request the current phase needs.
    fn run_phase(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId) {
        let now = ctl.now_nanos();
        let Some(t) = self.txn(client) else { return };
        let (route, command) = match t.phase.clone() {
            Phase::StartTs | Phase::CommitTs => (Route::Meta, RangeCommand::AllocTimestamp),
            Phase::Read(i) => (
                Route::Key(t.reads[i].clone()),
                RangeCommand::Get {
                    key: t.reads[i].clone(),
                    read_ts: t.meta.start_ts,
                },
            ),
            Phase::FastCommit => (
                Route::Key(t.writes[0].0.clone()),
                RangeCommand::OnePhase {
                    txn: t.meta.clone(),
                    writes: t
                        .writes
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(u64_value(*v))))
                        .collect(),
                    commit_ts: t.commit_ts.unwrap_or_default(),
                },
            ),
            Phase::Prewrite(i) => (
                Route::Key(t.writes[i].0.clone()),
                RangeCommand::Prewrite {
                    txn: t.meta.clone(),
                    key: t.writes[i].0.clone(),
                    value: Some(u64_value(t.writes[i].1)),
                },
            ),
            Phase::EndTxn => (
                Route::Key(t.meta.anchor.clone()),
                RangeCommand::EndTxn {
                    txn: t.meta.clone(),
                    commit: match t.outcome {
                        Some(Outcome::Aborted) => None,
                        _ => t.commit_ts,
                    },
                },
            ),
            Phase::Resolve(i) => {
                let status = t.decided.unwrap_or(TxnStatus::Aborted);
                (
                    Route::Key(t.prewritten[i].clone()),
                    RangeCommand::Resolve {
                        txn: t.meta.id,
                        key: t.prewritten[i].clone(),
                        status,
                    },
                )
            }
            Phase::Forget => (
                Route::Key(t.meta.anchor.clone()),
                RangeCommand::ForgetTxn {
                    txn: t.meta.clone(),
                },
            ),
            Phase::Push => {
                let Some(push) = push_blocker(&t.blocker, now) else {
                    return;
                };
                push
            }
            Phase::ResolveOther(status) => {
                let Some(resolve) = resolve_blocker(&t.blocker, status) else {
                    return;
                };
                resolve
            }
        };
        self.send(ctl, client, route, command);
    }

    fn goto(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId, phase: Phase) {
        if let Some(t) = self.txn(client) {
            t.phase = phase;
        }
        self.run_phase(ctl, client);
    }

    /// Another transaction's intent is in the way: push it, then come back to `resume`.
    fn blocked(
        &mut self,
        ctl: &mut ClientCtl<'_, Node>,
        client: ClientId,
        meta: TxnMeta,
        key: Key,
    ) {
        let Some(t) = self.txn(client) else { return };
        t.conflicts += 1;
        if t.conflicts > MAX_CONFLICTS {
            return self.abort(ctl, client);
        }
        t.resume = t.phase.clone();
        t.blocker = Some((meta, key));
        self.goto(ctl, client, Phase::Push);
    }

    /// Give up this attempt before the commit point: abort the record if intents may
    /// exist, remove them, and count an abort.
    fn abort(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId) {
        let Some(t) = self.txn(client) else { return };
        t.outcome = Some(Outcome::Aborted);
        if t.prewritten.is_empty() {
            return self.finish(ctl, client);
        }
        t.decided = Some(TxnStatus::Aborted);
        self.goto(ctl, client, Phase::EndTxn);
    }

    /// A request was given up after `MAX_ATTEMPTS`.
    fn request_failed(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId) {
        if let Some(w) = self.watchers.get_mut(&client) {
            // Start over with a new round (nothing of this one was released).
            w.round = None;
            w.push = None;
            ctl.set_timer(client, NEXT_TXN, Duration::from_millis(5));
            return;
        }
        let Some(t) = self.txn(client) else { return };
        match t.phase {
            // The commit request may or may not have taken effect.
            Phase::FastCommit | Phase::EndTxn if t.outcome.is_none() => {
                t.outcome = Some(Outcome::Unknown)
            }
            // Resolving is best effort: others resolve what is left.
            Phase::Resolve(_) => {}
            // Before the commit point: this transaction can no longer commit.
            _ => {
                if t.outcome.is_none() {
                    t.outcome = Some(Outcome::Aborted);
                }
            }
        }
        self.finish(ctl, client);
    }

    fn on_result(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId, result: RangeResult) {
        let now = ctl.now_nanos();
        let fast_path = self.config.fast_path;
        let abandon = self.config.abandon;
        let abandon_roll = ctl.rng().gen_bool(abandon);
        let forget_early = self.config.forget_before_resolving;
        let Some(t) = self.txn(client) else { return };
        if t.recent.len() >= 8 {
            t.recent.remove(0);
        }
        t.recent.push(format!("{now}: {:?} -> {result:?}", t.phase));
        use RangeResult as R;
        match (t.phase.clone(), result) {
            (_, R::RangeMismatch) => {
                // Stale routing (a split): the descriptor in the reply refreshed the
                // cache; retry shortly. A one-phase commit falls back to two phases.
                t.conflicts += 1;
                if t.conflicts > MAX_CONFLICTS {
                    return self.abort(ctl, client);
                }
                if t.phase == Phase::FastCommit {
                    t.one_phase = false;
                    t.phase = Phase::Prewrite(0);
                }
                ctl.set_timer(client, RETRY_PHASE, Duration::from_millis(2));
            }
            (Phase::StartTs, R::Timestamp(ts)) => {
                t.meta.start_ts = ts;
                if t.reads.is_empty() {
                    self.decide(ctl, client, fast_path);
                } else {
                    self.goto(ctl, client, Phase::Read(0));
                }
            }
            (Phase::Read(i), R::Value(v)) => {
                // Every value this harness writes is a u64's decimal text.
                t.read_values[i] = v.map(|b| value_u64(&b).unwrap_or(u64::MAX));
                if i + 1 < t.reads.len() {
                    self.goto(ctl, client, Phase::Read(i + 1));
                } else {
                    let invoked = t.invoked_at;
                    let reads: Vec<(Key, Option<u64>)> = t
                        .reads
                        .iter()
                        .cloned()
                        .zip(t.read_values.iter().copied())
                        .collect();
                    for (key, value) in reads {
                        let id = self
                            .history
                            .invoke(Process(client.0), Op::Read { key }, invoked);
                        if let Err(e) = self.history.ok(id, OpResult::ReadOk(value), now) {
                            self.errors.push(e.to_string());
                        }
                    }
                    self.decide(ctl, client, fast_path);
                }
            }
            (Phase::Read(_), R::Locked { txn, key }) => self.blocked(ctl, client, txn, key),
            (Phase::CommitTs, R::Timestamp(ts)) => {
                t.commit_ts = Some(ts);
                let next = if t.one_phase {
                    Phase::FastCommit
                } else {
                    Phase::EndTxn
                };
                self.goto(ctl, client, next);
            }
            (Phase::FastCommit, R::Status(TxnStatus::Committed(_))) => {
                t.outcome = Some(Outcome::Committed);
                self.finish(ctl, client);
            }
            (Phase::FastCommit, R::TooOld) => {
                t.conflicts += 1;
                if t.conflicts > MAX_CONFLICTS {
                    return self.abort(ctl, client);
                }
                self.goto(ctl, client, Phase::CommitTs);
            }
            (Phase::FastCommit | Phase::Prewrite(_), R::WriteConflict) => self.abort(ctl, client),
            (Phase::FastCommit | Phase::Prewrite(_), R::Locked { txn, key }) => {
                self.blocked(ctl, client, txn, key)
            }
            (Phase::Prewrite(i), R::Prewritten) => {
                let key = t.writes[i].0.clone();
                if !t.prewritten.contains(&key) {
                    t.prewritten.push(key);
                }
                if i + 1 < t.writes.len() {
                    self.goto(ctl, client, Phase::Prewrite(i + 1));
                } else if abandon_roll {
                    // The coordinator vanishes with its intents laid: it never commits,
                    // and other clients must clean up after it.
                    t.outcome = Some(Outcome::Aborted);
                    t.prewritten.clear();
                    self.finish(ctl, client);
                } else {
                    self.goto(ctl, client, Phase::CommitTs);
                }
            }
            (Phase::EndTxn, R::Status(status)) => {
                t.decided = Some(status);
                t.outcome = Some(match status {
                    TxnStatus::Committed(_) => Outcome::Committed,
                    TxnStatus::Aborted => Outcome::Aborted,
                    TxnStatus::Pending => Outcome::Unknown,
                });
                if matches!(status, TxnStatus::Committed(_)) && abandon_roll {
                    // Committed, then gone before resolving: readers must resolve.
                    t.prewritten.clear();
                }
                if status == TxnStatus::Pending {
                    self.finish(ctl, client);
                } else if forget_early {
                    self.goto(ctl, client, Phase::Forget);
                } else if t.prewritten.is_empty() {
                    // Abandoned before resolving: its record must stay for the pushers.
                    self.finish(ctl, client);
                } else {
                    self.goto(ctl, client, Phase::Resolve(0));
                }
            }
            (Phase::Resolve(i), R::Resolved) => {
                if i + 1 < t.prewritten.len() {
                    self.goto(ctl, client, Phase::Resolve(i + 1));
                } else if forget_early {
                    self.finish(ctl, client);
                } else {
                    // Every intent it laid is resolved (each acknowledged): nobody can
                    // meet one and ask about this transaction any more.
                    self.goto(ctl, client, Phase::Forget);
                }
            }
            (Phase::Forget, R::Resolved) => {
                if forget_early && !t.prewritten.is_empty() {
                    self.goto(ctl, client, Phase::Resolve(0));
                } else {
                    self.finish(ctl, client);
                }
            }
            (Phase::Push, R::Status(TxnStatus::Pending)) => {
                // Still live: wait for it to finish or expire, then retry.
                t.phase = t.resume.clone();
                ctl.set_timer(client, RETRY_PHASE, Duration::from_millis(5));
            }
            (Phase::Push, R::Status(status)) => {
                self.goto(ctl, client, Phase::ResolveOther(status));
            }
            (Phase::ResolveOther(_), R::Resolved) => {
                let resume = t.resume.clone();
                self.goto(ctl, client, resume);
            }
            (phase, result) => {
                let e = format!("{client} in {phase:?} got {result:?}");
                self.errors.push(e);
                self.abort(ctl, client);
            }
        }
    }

    /// The reads are done: check a snapshot read, or choose the writes and commit.
    fn decide(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId, fast_path: bool) {
        let total = self.total();
        let initial = self.config.initial;
        let accounts = self.config.accounts;
        let now = ctl.now_nanos();
        let Some(t) = self.clients[Self::slot(client)].txn.as_mut() else {
            return;
        };
        let writes: Vec<(Key, u64)> = match &t.kind {
            Kind::ReadAll => {
                let sum: Option<u64> = t.read_values.iter().copied().sum();
                match sum {
                    Some(s) if s == total => {}
                    _ => {
                        let e = format!(
                            "snapshot read at {:?} saw balances {:?} (total must be {total})",
                            t.meta.start_ts, t.read_values
                        );
                        self.errors.push(e);
                    }
                }
                t.outcome = Some(Outcome::Committed);
                return self.finish(ctl, client);
            }
            Kind::Init => (0..accounts).map(|i| (account(i), initial)).collect(),
            Kind::Transfer { from, to, amount } => match (t.read_values[0], t.read_values[1]) {
                (Some(a), Some(b)) if a >= *amount => {
                    vec![(from.clone(), a - amount), (to.clone(), b + amount)]
                }
                (Some(_), Some(_)) => Vec::new(),
                other => {
                    let e = format!("{client}: an account is missing: {other:?}");
                    self.errors.push(e);
                    Vec::new()
                }
            },
        };
        if writes.is_empty() {
            t.outcome = Some(Outcome::Committed);
            return self.finish(ctl, client);
        }
        t.meta.anchor = writes[0].0.clone();
        t.writes = writes.clone();
        for (key, value) in writes {
            let id = self
                .history
                .invoke(Process(client.0), Op::Write { key, value }, now);
            if let Some(t) = self.txn(client) {
                t.write_ops.push(id);
            }
        }
        let in_one_range = {
            let Some(t) = self.clients[Self::slot(client)].txn.as_ref() else {
                return;
            };
            let first = self.range_of(&t.writes[0].0);
            first.is_some() && t.writes.iter().all(|(k, _)| self.range_of(k) == first)
        };
        let Some(t) = self.txn(client) else { return };
        if fast_path && in_one_range {
            t.one_phase = true;
            self.goto(ctl, client, Phase::CommitTs);
        } else {
            self.goto(ctl, client, Phase::Prewrite(0));
        }
    }

    fn finish(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId) {
        let now = ctl.now_nanos();
        let slot = Self::slot(client);
        self.clients[slot].request = None;
        let Some(t) = self.clients[slot].txn.take() else {
            return;
        };
        let outcome = t.outcome.unwrap_or(Outcome::Unknown);
        for id in &t.write_ops {
            let r = match outcome {
                Outcome::Committed => self.history.ok(*id, OpResult::WriteOk, now),
                Outcome::Aborted => self.history.fail(*id, now),
                Outcome::Unknown => self.history.info(*id, now),
            };
            if let Err(e) = r {
                self.errors.push(e.to_string());
            }
        }
        let latency = now.saturating_sub(t.invoked_at);
        match (&t.kind, outcome) {
            (Kind::Init, Outcome::Committed) => self.initialized = true,
            (Kind::Init, _) => {}
            (Kind::ReadAll, Outcome::Committed) => {
                self.stats.reads.push(latency);
                self.stats.last_read_at = now;
            }
            (Kind::ReadAll, _) => {}
            (Kind::Transfer { .. }, Outcome::Committed) if !t.writes.is_empty() => {
                if t.one_phase {
                    self.stats.one_phase.push(latency);
                } else {
                    self.stats.two_phase.push(latency);
                }
                self.stats.commit_times.push((now, t.meta.anchor.clone()));
            }
            (Kind::Transfer { .. }, Outcome::Committed) => {}
            (Kind::Transfer { .. }, Outcome::Aborted) => self.stats.aborted += 1,
            (Kind::Transfer { .. }, Outcome::Unknown) => self.stats.unknown += 1,
        }
        let think = if outcome == Outcome::Aborted {
            Duration::from_micros(ctl.rng().gen_range(1_000..10_000))
        } else {
            Duration::from_micros(ctl.rng().gen_range(0..3_000))
        };
        ctl.set_timer(client, NEXT_TXN, think);
    }
}

// ---- watchers -------------------------------------------------------------------------

impl BankClients {
    /// Start a watch round: take a timestamp to close the ranges at.
    fn watch_round(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId) {
        let now = ctl.now_nanos();
        let Some(w) = self.watchers.get_mut(&client) else {
            return;
        };
        if let Some((meta, _)) = w.push.clone() {
            let anchor = meta.anchor.clone();
            return self.send(
                ctl,
                client,
                Route::Key(anchor),
                RangeCommand::Push { txn: meta, now },
            );
        }
        w.round = Some(Round {
            started_at: now,
            close_ts: None,
            cursor: WATCH_START.to_string(),
            events: Vec::new(),
            resolved: None,
            blocker: None,
        });
        self.send(ctl, client, Route::Meta, RangeCommand::AllocTimestamp);
    }

    fn feed_next(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId) {
        let Some(w) = self.watchers.get(&client) else {
            return;
        };
        let Some(round) = &w.round else { return };
        let command = RangeCommand::Feed {
            start: round.cursor.clone(),
            end: Some(WATCH_END.to_string()),
            after: w.released,
            close_ts: round.close_ts.unwrap_or_default(),
            limit: 16,
        };
        let route = Route::Key(round.cursor.clone());
        self.send(ctl, client, route, command);
    }

    fn on_watch_result(
        &mut self,
        ctl: &mut ClientCtl<'_, Node>,
        client: ClientId,
        desc: RangeDescriptor,
        result: RangeResult,
    ) {
        let Some(w) = self.watchers.get_mut(&client) else {
            return;
        };
        let next_round = Duration::from_micros(ctl.rng().gen_range(2_000..10_000));
        if let Some((meta, key)) = w.push.clone() {
            // Pushing the intent that held a range's closed timestamp back.
            match result {
                RangeResult::Status(TxnStatus::Pending) | RangeResult::Resolved => {
                    w.push = None;
                    ctl.set_timer(client, NEXT_TXN, next_round);
                }
                RangeResult::Status(status) => {
                    let route = Route::Key(key.clone());
                    let command = RangeCommand::Resolve {
                        txn: meta.id,
                        key,
                        status,
                    };
                    self.send(ctl, client, route, command);
                }
                _ => {
                    w.push = None;
                    ctl.set_timer(client, NEXT_TXN, next_round);
                }
            }
            return;
        }
        let Some(round) = w.round.as_mut() else {
            return;
        };
        match result {
            RangeResult::Timestamp(ts) if round.close_ts.is_none() => {
                round.close_ts = Some(ts);
                self.feed_next(ctl, client);
            }
            RangeResult::Events {
                events,
                resolved,
                blocker,
            } => {
                round.events.extend(events);
                round.resolved = Some(round.resolved.map_or(resolved, |r| r.min(resolved)));
                if round.blocker.is_none() {
                    round.blocker = blocker;
                }
                match desc.end {
                    Some(end) if end.as_str() < WATCH_END => {
                        round.cursor = end;
                        self.feed_next(ctl, client);
                    }
                    _ => {
                        self.release(client, ctl.now_nanos());
                        ctl.set_timer(client, NEXT_TXN, next_round);
                    }
                }
            }
            _ => {
                // A stale route (a split): the reply refreshed the cache; start over.
                w.round = None;
                ctl.set_timer(client, NEXT_TXN, Duration::from_millis(2));
            }
        }
    }

    /// A round covered the whole interval: release its events up to the smallest
    /// resolved timestamp, and check them on the way.
    fn release(&mut self, client: ClientId, now: u64) {
        let total = self.total();
        let Some(w) = self.watchers.get_mut(&client) else {
            return;
        };
        let Some(round) = w.round.take() else { return };
        let Some(upto) = round.resolved else { return };
        let mut events: Vec<_> = round.events.into_iter().filter(|e| e.ts <= upto).collect();
        events.sort_by(|a, b| (a.ts, &a.key).cmp(&(b.ts, &b.key)));
        let mut errors = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if e.ts <= w.released {
                errors.push(format!(
                    "{client}: watch event {} at {:?} is at or below the released {:?}",
                    e.key, e.ts, w.released
                ));
            }
            let value = e
                .row
                .as_ref()
                .map(|r| value_u64(&r.value).unwrap_or(u64::MAX));
            match value {
                Some(v) => w.balances.insert(e.key.clone(), v),
                None => w.balances.remove(&e.key),
            };
            w.delivered.push((e.ts, e.key.clone(), value));
            // After each whole revision, the watched balances sum to the total (once
            // the accounts exist): a cross-range transfer arrives as one revision.
            if events.get(i + 1).is_none_or(|n| n.ts != e.ts) {
                let sum: u64 = w.balances.values().sum();
                if !w.balances.is_empty() && sum != total {
                    errors.push(format!(
                        "{client}: after the watch events of revision {:?} the balances sum \
                         to {sum}, not {total}: {:?}",
                        e.ts, w.balances
                    ));
                }
            }
        }
        if upto > w.released {
            w.released = upto;
        }
        w.rounds += 1;
        if round.close_ts == Some(upto) {
            w.caught_up_at = round.started_at;
        }
        let stuck = round.close_ts.is_some_and(|c| upto < c);
        match (stuck, round.blocker) {
            (true, Some((meta, key))) => match w.stuck_on {
                Some((id, since)) if id == meta.id => {
                    let after = u64::try_from(WATCH_PUSH_AFTER.as_nanos()).unwrap_or(u64::MAX);
                    if now.saturating_sub(since) >= after {
                        w.push = Some((meta, key));
                    }
                }
                _ => w.stuck_on = Some((meta.id, now)),
            },
            _ => w.stuck_on = None,
        }
        self.errors.extend(errors);
    }
}

/// The history as the replicas hold it, for the watched interval: every committed
/// version with `0 < ts <= upto`, in (timestamp, key) order, from the most advanced
/// replica of each range.
fn committed_history(sim: &Sim<Node>, upto: Timestamp) -> Vec<(Timestamp, Key, Option<u64>)> {
    let mut best: BTreeMap<RangeId, (u64, &super::range::RangeState)> = BTreeMap::new();
    for (_, actor) in sim.actors() {
        for (id, raft) in actor.groups() {
            let applied = raft.last_applied().0;
            if best.get(&id).is_none_or(|(a, _)| *a < applied) {
                best.insert(id, (applied, raft.state_machine().state()));
            }
        }
    }
    let mut out = Vec::new();
    for (_, state) in best.values() {
        for (key, chain) in state
            .versions
            .range::<Key, _>(WATCH_START.to_string()..WATCH_END.to_string())
        {
            if !state.desc.contains(key) {
                continue;
            }
            for (ts, v) in chain.range(Timestamp(1)..=upto) {
                let value = v.value.as_ref().map(|b| value_u64(b).unwrap_or(u64::MAX));
                out.push((*ts, key.clone(), value));
            }
        }
    }
    out.sort();
    out
}

/// Each watcher's stream equals the committed history of the interval up to what it
/// released: in order, no gap, no duplicate.
pub fn check_watch(sim: &Sim<Node>) -> Result<u64, String> {
    let clients = sim
        .workload::<BankClients>()
        .ok_or("the workload is not BankClients")?;
    let mut events = 0;
    for (client, w) in &clients.watchers {
        let truth = committed_history(sim, w.released);
        if truth != w.delivered {
            let at = truth
                .iter()
                .zip(&w.delivered)
                .position(|(a, b)| a != b)
                .unwrap_or(truth.len().min(w.delivered.len()));
            return Err(format!(
                "{client}'s watch stream differs from the committed history up to {:?} \
                 ({} events delivered, {} committed) at event {at}: delivered {:?}, \
                 committed {:?}",
                w.released,
                w.delivered.len(),
                truth.len(),
                w.delivered.get(at),
                truth.get(at)
            ));
        }
        events += w.delivered.len() as u64;
    }
    Ok(events)
}

/// The bank with two watchers: the bank's checks, then [`check_watch`], and once faults
/// heal every watcher must catch up with a round that started after the heal.
pub fn watch_scenario(seed: u64, tweak: Tweak) -> Result<u64, String> {
    let mut sim = swarm_cluster(seed, tweak);
    let faults = Duration::from_secs(2);
    let bank = BankConfig {
        stop_at: faults,
        read_clients: 1,
        watch_clients: 2,
        ..BankConfig::default()
    };
    sim.set_workload(BankClients::new(bank));
    let heal_ns = u64::try_from(faults.as_nanos()).unwrap_or(u64::MAX);
    let result = sim.run_liveness(faults, faults + Duration::from_secs(5), move |sim| {
        sim.workload::<BankClients>().is_some_and(|c| {
            c.initialized()
                && c.stats.last_read_at > heal_ns
                && c.watchers.values().all(|w| w.caught_up_at > heal_ns)
        })
    });
    check_bank(&sim)?;
    let events = check_watch(&sim)?;
    result.map_err(|f| {
        let clients = sim.workload::<BankClients>();
        let watchers = clients
            .map(|c| {
                c.watchers
                    .iter()
                    .map(|(id, w)| {
                        format!(
                            "\n  watcher {id}: released {:?}, {} events, {} rounds, caught up at \
                             {} ns, round {:?}, push {:?}",
                            w.released,
                            w.delivered.len(),
                            w.rounds,
                            w.caught_up_at,
                            w.round,
                            w.push
                        )
                    })
                    .collect::<String>()
            })
            .unwrap_or_default();
        format!(
            "{f}{watchers}\n{}",
            clients.map(BankClients::describe).unwrap_or_default()
        )
    })?;
    Ok(events)
}

/// Timer key that re-runs a transaction's current phase (after a backoff).
const RETRY_PHASE: u64 = u64::MAX;

impl Workload<Node> for BankClients {
    fn on_start(&mut self, ctl: &mut ClientCtl<'_, Node>) {
        let nodes = ctl.nodes();
        self.default_target = NodeId(ctl.rng().gen_range(0..nodes));
        let ids: Vec<ClientId> = self.clients.iter().map(|c| c.id).collect();
        for id in ids {
            self.start_txn(ctl, id);
        }
    }

    fn on_reply(
        &mut self,
        ctl: &mut ClientCtl<'_, Node>,
        client: ClientId,
        from: NodeId,
        msg: TxnMsg,
    ) {
        let TxnMsg::Reply { range, msg } = msg else {
            return;
        };
        let Some(slot) = self.clients.get(Self::slot(client)) else {
            return;
        };
        let Some(r) = slot.request.as_ref() else {
            return;
        };
        match msg {
            RaftMsg::ClientReply { seq, output } if seq == r.seq => {
                self.leaders.insert(range, from);
                self.learn_range(&output.range);
                self.clients[Self::slot(client)].request = None;
                if self.watchers.contains_key(&client) {
                    self.on_watch_result(ctl, client, output.range, output.result);
                } else {
                    self.on_result(ctl, client, output.result);
                }
            }
            RaftMsg::NotLeader { seq, leader_hint } if seq == r.seq => {
                let nodes = ctl.nodes();
                let next = leader_hint.unwrap_or(NodeId((from.0 + 1) % nodes));
                self.leaders.insert(range, next);
                if let Some(r) = self.clients[Self::slot(client)].request.as_mut() {
                    r.target = Some(next);
                }
                // Back off a little: the group may be between leaders.
                self.wait(ctl, client, Duration::from_millis(3));
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, ctl: &mut ClientCtl<'_, Node>, client: ClientId, key: u64) {
        match key {
            NEXT_TXN => self.start_txn(ctl, client),
            RETRY_PHASE => {
                if self.clients[Self::slot(client)].request.is_none() {
                    self.run_phase(ctl, client);
                }
            }
            _ => self.on_request_timer(ctl, client, key),
        }
    }
}

// ---- scenarios -------------------------------------------------------------------------

/// A change made to every node as it is built: tests use it to plant a bug.
pub type Tweak = fn(&mut Node);

/// No change.
pub fn as_is(_: &mut Node) {}

/// Raft timing for the simulations: 100 ms election timeouts, 20 ms heartbeats.
pub fn test_config(nodes: u32, split_max_keys: usize) -> TxnConfig {
    let mut config = TxnConfig::new(nodes, split_max_keys);
    config.raft.election_timeout = Duration::from_millis(100);
    config.raft.election_timeout_spread = Duration::from_millis(100);
    config.raft.heartbeat_interval = Duration::from_millis(20);
    config.raft.max_entries_per_append = 16;
    config.raft.max_in_flight = 4;
    // Small, so that every scenario snapshots, compacts and sends InstallSnapshot, in
    // several chunks, to lagging and restarted replicas and across splits.
    config.raft.snapshot_threshold = 16;
    config.raft.snapshot_chunk_bytes = 512;
    config
}

/// `cfg.nodes` multi-Raft nodes, every range on all of them, with the invariants.
pub fn cluster(cfg: SimConfig, config: TxnConfig, tweak: Tweak) -> Sim<Node> {
    let mut sim = Sim::new(cfg, move |_me: NodeId| {
        let mut node = TxnNode::new(config.clone());
        tweak(&mut node);
        node
    });
    install_invariants(&mut sim);
    sim
}

/// After every event: no replica stopped on a fault (the simulated disk never corrupts,
/// so a fault is a bug), and no two replicas of a range applied different logs.
pub fn install_invariants(sim: &mut Sim<Node>) {
    sim.invariant("no replica faults", |sim| {
        for (node, actor) in sim.actors() {
            for (range, raft) in actor.groups() {
                if let Some(why) = raft.fault() {
                    return Err(format!("{node} {range} stopped: {why}"));
                }
            }
        }
        Ok(())
    });
    let applied = std::cell::RefCell::new(BTreeMap::<(RangeId, u64), u64>::new());
    sim.invariant("State Machine Safety per range", move |sim| {
        let mut applied = applied.borrow_mut();
        for (node, actor) in sim.actors() {
            for (range, raft) in actor.groups() {
                let index = raft.last_applied();
                let Some(hash) = raft.log_hash_at(index) else {
                    continue;
                };
                let known = *applied.entry((range, index.0)).or_insert(hash);
                if known != hash {
                    return Err(format!(
                        "{node} applied a different log of {range} up to {index} than another \
                         replica"
                    ));
                }
            }
        }
        Ok(())
    });
}

/// The clients' errors (a snapshot that does not sum to the total, a missing account,
/// an impossible reply), then per-key linearizability of the history.
pub fn check_bank(sim: &Sim<Node>) -> Result<usize, String> {
    let clients = sim
        .workload::<BankClients>()
        .ok_or("the workload is not BankClients")?;
    if let Some(e) = clients.errors.first() {
        return Err(format!("bank: {e}"));
    }
    match check_kv(&clients.history) {
        CheckResult::Ok => Ok(clients.history.len()),
        CheckResult::Violation(counter_example) => Err(format!("{counter_example}")),
        other => Err(format!("linearizability check gave no answer: {other:?}")),
    }
}

/// How long the faulty part of a bank run lasts.
pub const BANK_FAULTS: Duration = Duration::from_secs(3);

/// The command that pushes the record of the transaction whose intent blocked a client
/// (`blocker`: its record and the key of the intent), sent to the record's range.
pub(crate) fn push_blocker(
    blocker: &Option<(TxnMeta, Key)>,
    now: u64,
) -> Option<(Route, RangeCommand)> {
    let (meta, _) = blocker.clone()?;
    Some((
        Route::Key(meta.anchor.clone()),
        RangeCommand::Push { txn: meta, now },
    ))
}

/// The command that resolves the blocking intent as `status`, sent to the intent's range.
pub(crate) fn resolve_blocker(
    blocker: &Option<(TxnMeta, Key)>,
    status: TxnStatus,
) -> Option<(Route, RangeCommand)> {
    let (meta, key) = blocker.clone()?;
    Some((
        Route::Key(key.clone()),
        RangeCommand::Resolve {
            txn: meta.id,
            key,
            status,
        },
    ))
}

/// The cluster every swarm scenario runs on: 3 or 5 nodes by the seed's parity, ranges
/// splitting past 3 keys, the seed's fault mix and network, skewed drifting clocks.
pub(crate) fn swarm_cluster(seed: u64, tweak: Tweak) -> Sim<Node> {
    let nodes = if seed & 1 == 0 { 3 } else { 5 };
    let cfg = swarm_config(seed, nodes);
    cluster(cfg, test_config(nodes, 3), tweak)
}

/// The bank test on one seed: 3 or 5 nodes, ranges splitting past 3 keys, random fault
/// mixes (partitions of every kind, crashes that lose unsynced writes, pauses, clogged
/// links), a lossy, duplicating, reordering network, skewed drifting clocks, and
/// coordinators that vanish mid-commit. After the faults heal, a snapshot read of every
/// balance must complete within 5 s; then the history is checked.
pub fn bank_scenario(seed: u64, tweak: Tweak) -> Result<(), String> {
    let mut sim = swarm_cluster(seed, tweak);
    let bank = BankConfig {
        stop_at: BANK_FAULTS,
        ..BankConfig::default()
    };
    sim.set_workload(BankClients::new(bank));
    run_bank(&mut sim, BANK_FAULTS, Duration::from_secs(5))
}

/// Run faults until `faults`, heal, and require a complete snapshot read within `grace`.
pub fn run_bank(sim: &mut Sim<Node>, faults: Duration, grace: Duration) -> Result<(), String> {
    let heal_ns = u64::try_from(faults.as_nanos()).unwrap_or(u64::MAX);
    let result = sim.run_liveness(faults, faults + grace, move |sim| {
        sim.workload::<BankClients>()
            .is_some_and(|c| c.initialized() && c.stats.last_read_at > heal_ns)
    });
    // A safety violation found before the liveness deadline is the better report.
    check_bank(sim)?;
    result.map(|_| ()).map_err(|f| {
        let clients = sim.workload::<BankClients>().map(BankClients::describe);
        format!("{f}\n{}", clients.unwrap_or_default())
    })
}

/// A fault-free run with the given bank and cluster parameters, for measurements.
pub fn measure(
    seed: u64,
    nodes: u32,
    split_max_keys: usize,
    bank: BankConfig,
) -> (Sim<Node>, Result<(), String>) {
    let mut cfg = SimConfig::new(seed, nodes);
    cfg.faults = FaultConfig::none();
    cfg.net = NetConfig::lan();
    let mut sim = cluster(cfg, test_config(nodes, split_max_keys), as_is);
    let stop = bank.stop_at;
    sim.set_workload(BankClients::new(bank));
    let r = run_bank(&mut sim, stop, Duration::from_secs(5));
    (sim, r)
}

// ---- measurements (synod bench txn) ----------------------------------------------------

/// What one fault-free measurement run gave.
#[derive(Clone, Debug)]
pub struct BenchRun {
    /// The clients' statistics.
    pub stats: BankStats,
    /// Simulated seconds during which clients started transactions.
    pub seconds: f64,
    /// Data ranges at the end (on node 0).
    pub ranges: usize,
}

/// A fault-free bank run on a LAN: `accounts` accounts, ranges split past
/// `split_max_keys` keys, `clients` transfer clients picking among the first `hot`
/// accounts, for `seconds` of simulated time.
pub fn bench_run(
    seed: u64,
    accounts: u32,
    split_max_keys: usize,
    hot: Option<u32>,
    clients: u64,
    seconds: u64,
) -> Result<BenchRun, String> {
    let bank = BankConfig {
        accounts,
        transfer_clients: clients,
        read_clients: 0,
        stop_at: Duration::from_secs(seconds),
        abandon: 0.0,
        hot,
        ..BankConfig::default()
    };
    let (sim, result) = measure(seed, 3, split_max_keys, bank);
    result?;
    let clients = sim.workload::<BankClients>().ok_or("no workload")?;
    let ranges = sim
        .actor(NodeId(0))
        .map(|n| n.groups().count().saturating_sub(1))
        .unwrap_or(0);
    Ok(BenchRun {
        stats: clients.stats.clone(),
        seconds: seconds as f64,
        ranges,
    })
}

/// Recovery after a coordinator-group leader crash: a fault-free bank run in which, at
/// `crash_at`, the leader of the range that holds `acct/000` (the transaction records of
/// every transfer anchored there) crashes, and restarts 2 s later. Returns the time from
/// the crash to the first committed transfer anchored in that range, and the time to
/// the first committed transfer of any kind.
pub fn recovery_run(seed: u64, crash_at: Duration) -> Result<(Duration, Duration), String> {
    let bank = BankConfig {
        accounts: 8,
        transfer_clients: 4,
        read_clients: 1,
        stop_at: crash_at + Duration::from_secs(4),
        abandon: 0.0,
        ..BankConfig::default()
    };
    let mut cfg = SimConfig::new(seed, 3);
    cfg.net = NetConfig::lan();
    let mut sim = cluster(cfg, test_config(3, 3), as_is);
    sim.set_workload(BankClients::new(bank));
    sim.run_until(crash_at).map_err(|f| f.to_string())?;
    let key = account(0);
    let found = sim.actors().find_map(|(node, actor)| {
        actor.groups().find_map(|(id, raft)| {
            let desc = &raft.state_machine().state().desc;
            (raft.role() == crate::raft::Role::Leader && desc.contains(&key))
                .then(|| (node, id, desc.clone()))
        })
    });
    let (leader, _range, desc) = found.ok_or("no leader of the range of acct/000")?;
    sim.crash(leader);
    let crash_ns = u64::try_from(sim.now().as_nanos()).unwrap_or(u64::MAX);
    sim.run_for(Duration::from_secs(2))
        .map_err(|f| f.to_string())?;
    sim.restart(leader);
    sim.run_for(Duration::from_secs(3))
        .map_err(|f| f.to_string())?;
    check_bank(&sim)?;
    let clients = sim.workload::<BankClients>().ok_or("no workload")?;
    let after = |anchored: bool| {
        clients
            .stats
            .commit_times
            .iter()
            .filter(|(t, k)| *t > crash_ns && (!anchored || desc.contains(k)))
            .map(|(t, _)| Duration::from_nanos(t - crash_ns))
            .min()
    };
    match (after(true), after(false)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err("no transfer committed after the crash".into()),
    }
}

/// The `p`-quantile (0..=1) of `v`, in milliseconds.
pub fn quantile_ms(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)] as f64 / 1e6
}
