//! The KV client workload the replicated-log harnesses share (Raft, MVCC over Raft and
//! Multi-Paxos): clients that read, write, compare-and-set and delete a few keys, follow
//! `NotLeader` hints, retry on timeouts with the same session sequence number (so a
//! retried command applies at most once), and record a history for the linearizability
//! checker.
//!
//! Compiled for tests and with the `harness` feature (the CLI turns it on).

use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use synod_check::history::{History, Op, OpId, OpResult, Process};
use synod_core::{Actor, ClientId, NodeId};
use synod_sim::{ClientCtl, Workload};

/// Timer key that starts a client's next operation. Operation timers count up from 1;
/// timers of [`OPERATOR`] are the harness's own.
const NEXT_OP: u64 = 0;
/// Attempts (sends to some server) before an operation is given up as `info`.
const MAX_ATTEMPTS: u32 = 12;
const KEYS: [&str; 3] = ["a", "b", "c"];

/// The client id a harness's operator (compaction, leadership transfer, membership
/// changes) sends and sets timers as; [`KvClientPool`] leaves its messages and timers alone.
pub const OPERATOR: ClientId = ClientId(0);

/// A server that takes KV operations from clients.
pub trait KvService: Actor {
    /// The request for `op`, as command `seq` of `client`'s session.
    fn request(client: ClientId, seq: u64, op: &Op) -> Self::Msg;
    /// What `msg` says about `op`, in flight as command `seq`.
    fn reply(op: &Op, seq: u64, msg: Self::Msg) -> Reply;
}

/// A server's answer, as far as the client is concerned.
pub enum Reply {
    /// The operation completed with this result, or with an answer that cannot be right.
    Done(Result<OpResult, String>),
    /// The server is not the leader: try the hinted one, or the next server.
    Redirect(Option<NodeId>),
    /// Not an answer to the operation in flight (a late reply to an earlier attempt).
    Other,
}

struct InFlight {
    id: OpId,
    op: Op,
    seq: u64,
    attempts: u32,
    /// The key of the timer that acts for this operation next.
    token: u64,
    /// Whether the pending timer is a timeout (try another server) or a retry.
    sent: bool,
    started_at: u64,
}

struct Client {
    seq: u64,
    target: NodeId,
    op: Option<InFlight>,
    next_token: u64,
}

/// The clients, and what they recorded.
pub struct KvClientPool<A: KvService> {
    /// The recorded client history, for the linearizability checker.
    pub history: History,
    /// Protocol errors the clients saw (a reply that cannot be right).
    pub errors: Vec<String>,
    /// Every (client, seq) a client issued, to check that only issued commands apply.
    pub issued: BTreeSet<(u64, u64)>,
    /// True completion time and latency (ns) of each successful operation.
    pub completions: Vec<(u64, u64)>,
    /// True time of the newest `ok`, per client.
    pub last_ok_at: Vec<u64>,
    /// The server that answered last: the leader, as far as clients know.
    pub last_leader: Option<NodeId>,
    clients: Vec<Client>,
    stop_at: u64,
    timeout: Duration,
    next_value: u64,
    written: BTreeMap<&'static str, u64>,
    /// Clients `1..=readers` only read, so they stay with one server (a stale leader
    /// serving reads is what a lease bug looks like).
    readers: u64,
    _service: std::marker::PhantomData<fn() -> A>,
}

impl<A: KvService> KvClientPool<A> {
    /// `clients` clients that start operations until `stop_at` of true time.
    pub fn new(clients: u64, stop_at: Duration) -> Self {
        KvClientPool {
            history: History::new(),
            errors: Vec::new(),
            issued: BTreeSet::new(),
            completions: Vec::new(),
            last_ok_at: vec![0; clients as usize],
            last_leader: None,
            clients: (1..=clients)
                .map(|_| Client {
                    seq: 0,
                    target: NodeId(0),
                    op: None,
                    next_token: 1,
                })
                .collect(),
            stop_at: u64::try_from(stop_at.as_nanos()).unwrap_or(u64::MAX),
            timeout: Duration::from_millis(60),
            next_value: 0,
            written: BTreeMap::new(),
            readers: 0,
            _service: std::marker::PhantomData,
        }
    }

    /// Make the first `readers` clients read-only.
    pub fn with_readers(mut self, readers: u64) -> Self {
        self.readers = readers;
        self
    }

    /// True time after which no new operation starts (ns).
    pub fn stop_at(&self) -> u64 {
        self.stop_at
    }

    fn slot(client: ClientId) -> usize {
        (client.0 - 1) as usize
    }

    /// A random operation on a random key. Writes and CAS use fresh values; a CAS
    /// expects the last value written to the key, or one a little older, so some fail.
    fn random_op(&mut self, ctl: &mut ClientCtl<'_, A>, client: ClientId) -> Op {
        let key = KEYS[ctl.rng().gen_range(0..KEYS.len())];
        let pick = if client.0 <= self.readers {
            0
        } else {
            ctl.rng().gen_range(0..10)
        };
        match pick {
            0..=3 => Op::Read { key: key.into() },
            4..=6 => {
                self.next_value += 1;
                self.written.insert(key, self.next_value);
                Op::Write {
                    key: key.into(),
                    value: self.next_value,
                }
            }
            7..=8 => {
                self.next_value += 1;
                let last = self.written.get(key).copied();
                let back = ctl.rng().gen_range(0..3);
                let expected = last.map(|v| v.saturating_sub(back)).filter(|v| *v > 0);
                let new = self.next_value;
                self.written.insert(key, new);
                Op::Cas {
                    key: key.into(),
                    expected,
                    new,
                }
            }
            _ => Op::Delete { key: key.into() },
        }
    }

    fn start_op(&mut self, ctl: &mut ClientCtl<'_, A>, client: ClientId) {
        let now = ctl.now_nanos();
        if now >= self.stop_at {
            return;
        }
        let op = self.random_op(ctl, client);
        let c = &mut self.clients[Self::slot(client)];
        c.seq += 1;
        self.issued.insert((client.0, c.seq));
        let id = self.history.invoke(Process(client.0), op.clone(), now);
        c.op = Some(InFlight {
            id,
            op,
            seq: c.seq,
            attempts: 0,
            token: 0,
            sent: false,
            started_at: now,
        });
        self.attempt(ctl, client);
    }

    /// Send the operation (again) and arm its timeout.
    fn attempt(&mut self, ctl: &mut ClientCtl<'_, A>, client: ClientId) {
        let timeout = self.timeout;
        let c = &mut self.clients[Self::slot(client)];
        let Some(op) = c.op.as_mut() else { return };
        op.attempts += 1;
        op.token = c.next_token;
        c.next_token += 1;
        op.sent = true;
        ctl.send(client, c.target, A::request(client, op.seq, &op.op));
        ctl.set_timer(client, op.token, timeout);
    }

    fn finish(&mut self, ctl: &mut ClientCtl<'_, A>, client: ClientId) {
        self.clients[Self::slot(client)].op = None;
        let think = Duration::from_micros(ctl.rng().gen_range(0..5_000));
        ctl.set_timer(client, NEXT_OP, think);
    }

    fn on_op_timer(&mut self, ctl: &mut ClientCtl<'_, A>, client: ClientId, key: u64) {
        let nodes = ctl.nodes();
        let now = ctl.now_nanos();
        let c = &mut self.clients[Self::slot(client)];
        let Some(op) = c.op.as_mut() else { return };
        if op.token != key {
            return;
        }
        if op.sent {
            // A timeout: this server may be down or cut off; try the next one.
            c.target = NodeId((c.target.0 + 1) % nodes);
        }
        if op.attempts >= MAX_ATTEMPTS {
            if let Err(e) = self.history.info(op.id, now) {
                self.errors.push(e.to_string());
            }
            return self.finish(ctl, client);
        }
        self.attempt(ctl, client);
    }
}

impl<A: KvService> Workload<A> for KvClientPool<A> {
    fn on_start(&mut self, ctl: &mut ClientCtl<'_, A>) {
        for slot in 0..self.clients.len() {
            let nodes = ctl.nodes();
            self.clients[slot].target = NodeId(ctl.rng().gen_range(0..nodes));
            self.start_op(ctl, ClientId(slot as u64 + 1));
        }
    }

    fn on_reply(
        &mut self,
        ctl: &mut ClientCtl<'_, A>,
        client: ClientId,
        from: NodeId,
        msg: A::Msg,
    ) {
        let now = ctl.now_nanos();
        let nodes = ctl.nodes();
        if client == OPERATOR {
            return;
        }
        let Some(c) = self.clients.get_mut(Self::slot(client)) else {
            return;
        };
        let Some(op) = c.op.as_mut() else { return };
        match A::reply(&op.op, op.seq, msg) {
            Reply::Done(Ok(result)) => {
                if let Err(e) = self.history.ok(op.id, result, now) {
                    self.errors.push(e.to_string());
                }
                self.completions
                    .push((now, now.saturating_sub(op.started_at)));
                self.last_ok_at[Self::slot(client)] = now;
                self.last_leader = Some(from);
                self.finish(ctl, client);
            }
            // The operation stays in flight: it is retried, and ends as `info` if no
            // sensible answer ever comes.
            Reply::Done(Err(e)) => self.errors.push(e),
            Reply::Redirect(hint) => {
                c.target = hint.unwrap_or(NodeId((from.0 + 1) % nodes));
                op.token = c.next_token;
                c.next_token += 1;
                op.sent = false;
                // Back off a little: the cluster may be between leaders.
                ctl.set_timer(client, op.token, Duration::from_millis(3));
            }
            Reply::Other => {}
        }
    }

    fn on_timer(&mut self, ctl: &mut ClientCtl<'_, A>, client: ClientId, key: u64) {
        if client == OPERATOR {
            return;
        }
        match key {
            NEXT_OP => self.start_op(ctl, client),
            _ => self.on_op_timer(ctl, client, key),
        }
    }
}
