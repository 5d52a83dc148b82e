//! The simulation harness every mutual-exclusion suite shares: a client workload, the
//! mutual-exclusion invariant and a liveness check.

use super::MutualExclusion;
use std::marker::PhantomData;
use std::time::Duration;
use synod_core::{ClientId, NodeId};
use synod_sim::{ClientCtl, NetConfig, Sim, SimConfig, Workload};

const RELEASE: u64 = 0;
const ACQUIRE: u64 = 1;
/// Retry timers are keyed `RETRY + attempt`, so that only the latest attempt's fires.
const RETRY: u64 = 2;

/// How clients load the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Load {
    /// Every node has a client that asks again soon after each release: contention.
    Heavy,
    /// One request in the whole system at a time, round-robin over the nodes: the
    /// textbook "light load" figure for messages per entry.
    Sequential,
}

/// One client per node (client `i` talks to node `i`), each entering `requests` times.
pub(crate) struct MutexWorkload<A> {
    load: Load,
    nodes: u32,
    requests: u32,
    hold: Duration,
    think: Duration,
    /// Re-send an acquire that has not been granted after this long (its node may have
    /// crashed and forgotten it). `None`: never.
    retry: Option<Duration>,
    granted: Vec<u32>,
    waiting: Vec<bool>,
    attempts: Vec<u64>,
    pub(crate) completed: u64,
    next_sequential: u32,
    _actor: PhantomData<fn() -> A>,
}

impl<A> MutexWorkload<A> {
    pub(crate) fn new(load: Load, nodes: u32, requests: u32) -> Self {
        MutexWorkload {
            load,
            nodes,
            requests,
            hold: Duration::from_millis(1),
            think: Duration::from_millis(2),
            retry: None,
            granted: vec![0; nodes as usize],
            waiting: vec![false; nodes as usize],
            attempts: vec![0; nodes as usize],
            completed: 0,
            next_sequential: 0,
            _actor: PhantomData,
        }
    }

    pub(crate) fn with_retry(mut self, after: Duration) -> Self {
        self.retry = Some(after);
        self
    }

    /// Entries granted so far to the client of `node`.
    pub(crate) fn granted(&self, node: NodeId) -> u32 {
        self.granted.get(node.index()).copied().unwrap_or(0)
    }

    /// Entries each client makes.
    pub(crate) fn requests(&self) -> u32 {
        self.requests
    }

    pub(crate) fn target(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.requests)
    }
}

impl<A: MutualExclusion> MutexWorkload<A> {
    fn acquire(&mut self, ctl: &mut ClientCtl<'_, A>, node: u32) {
        self.waiting[node as usize] = true;
        ctl.send(
            ClientId(u64::from(node)),
            NodeId(node),
            A::acquire_request(),
        );
        if let Some(retry) = self.retry {
            self.attempts[node as usize] += 1;
            let key = RETRY + self.attempts[node as usize];
            ctl.set_timer(ClientId(u64::from(node)), key, retry);
        }
    }
}

impl<A: MutualExclusion> Workload<A> for MutexWorkload<A> {
    fn on_start(&mut self, ctl: &mut ClientCtl<'_, A>) {
        match self.load {
            Load::Heavy => (0..self.nodes).for_each(|n| self.acquire(ctl, n)),
            Load::Sequential => self.acquire(ctl, 0),
        }
    }

    fn on_reply(
        &mut self,
        ctl: &mut ClientCtl<'_, A>,
        client: ClientId,
        _from: NodeId,
        msg: A::Msg,
    ) {
        let i = client.0 as usize;
        if A::is_granted(&msg) && self.waiting.get(i).copied().unwrap_or(false) {
            self.waiting[i] = false;
            self.granted[i] += 1;
            self.completed += 1;
            ctl.set_timer(client, RELEASE, self.hold);
        }
    }

    fn on_timer(&mut self, ctl: &mut ClientCtl<'_, A>, client: ClientId, key: u64) {
        let node = client.0 as u32;
        match key {
            RELEASE => {
                ctl.send(client, NodeId(node), A::release_request());
                match self.load {
                    Load::Heavy if self.granted[node as usize] < self.requests => {
                        ctl.set_timer(client, ACQUIRE, self.think)
                    }
                    Load::Sequential if self.completed < self.target() => {
                        self.next_sequential = (self.next_sequential + 1) % self.nodes;
                        ctl.set_timer(
                            ClientId(u64::from(self.next_sequential)),
                            ACQUIRE,
                            self.think,
                        )
                    }
                    _ => {}
                }
            }
            ACQUIRE => self.acquire(ctl, node),
            key if key >= RETRY
                && self.waiting[node as usize]
                && key - RETRY == self.attempts[node as usize] =>
            {
                self.acquire(ctl, node)
            }
            _ => {}
        }
    }
}

/// The safety property: at most one node in the critical section, after every event.
pub(crate) fn mutual_exclusion<A: MutualExclusion>(sim: &Sim<A>) -> Result<(), String> {
    let inside: Vec<NodeId> = sim
        .actors()
        .filter(|(_, a)| a.in_critical_section())
        .map(|(n, _)| n)
        .collect();
    if inside.len() > 1 {
        return Err(format!("{inside:?} are in the critical section at once"));
    }
    Ok(())
}

/// A FIFO LAN: constant latency, so messages on one link arrive in the order sent.
pub(crate) fn fifo_lan() -> NetConfig {
    NetConfig {
        latency_tail: Duration::ZERO,
        ..NetConfig::lan()
    }
}

/// A LAN with a latency tail and 20% of messages held back by up to 5 ms: messages on
/// one link often arrive out of order.
pub(crate) fn reordering_lan() -> NetConfig {
    NetConfig {
        reorder: 0.2,
        ..NetConfig::lan()
    }
}

/// Run `requests` entries per node under `load` on `net` with the invariant checked after
/// every event; every request must be granted by `deadline`.
pub(crate) fn run_mutex<A: MutualExclusion>(
    seed: u64,
    nodes: u32,
    requests: u32,
    load: Load,
    net: NetConfig,
    factory: impl FnMut(NodeId) -> A + 'static,
) -> Result<Sim<A>, String> {
    let mut cfg = SimConfig::new(seed, nodes);
    cfg.net = net;
    let mut sim = Sim::new(cfg, factory);
    sim.set_workload(MutexWorkload::<A>::new(load, nodes, requests));
    sim.invariant("mutual exclusion", mutual_exclusion::<A>);
    sim.run_liveness(
        Duration::ZERO,
        Duration::from_secs(60),
        every_request_granted::<A>,
    )
    .map_err(|f| f.to_string())?;
    // Let trailing releases and acknowledgements land before counting messages.
    sim.run_for(Duration::from_millis(50))
        .map_err(|f| f.to_string())?;
    Ok(sim)
}

/// Every client has been granted every entry it asked for.
pub(crate) fn every_request_granted<A: MutualExclusion>(sim: &Sim<A>) -> bool {
    sim.workload::<MutexWorkload<A>>()
        .is_some_and(|w| w.completed >= w.target())
}

/// Crash `victim` at `crash_at`, require every other client to finish while it is down
/// (the survivors exclude it), then restart it and require its client to finish too (it
/// rejoins). Mutual exclusion is checked after every event throughout. For algorithms
/// that tolerate a crash; the network must keep delays well below their timeouts.
pub(crate) fn run_crash_and_rejoin<A: MutualExclusion>(
    seed: u64,
    nodes: u32,
    requests: u32,
    victim: NodeId,
    crash_at: Duration,
    net: NetConfig,
    factory: impl FnMut(NodeId) -> A + 'static,
) -> Result<Sim<A>, String> {
    let err = |f: synod_sim::SimFailure| f.to_string();
    let mut cfg = SimConfig::new(seed, nodes);
    cfg.net = net;
    let mut sim = Sim::new(cfg, factory);
    // The victim's client re-asks after its node restarts with no memory of the request.
    sim.set_workload(
        MutexWorkload::<A>::new(Load::Heavy, nodes, requests)
            .with_retry(Duration::from_millis(300)),
    );
    sim.invariant("mutual exclusion", mutual_exclusion::<A>);
    sim.run_for(crash_at).map_err(err)?;
    sim.crash(victim);
    let survivors_done = |sim: &Sim<A>| {
        sim.workload::<MutexWorkload<A>>().is_some_and(|w| {
            (0..nodes)
                .map(NodeId)
                .filter(|&n| n != victim)
                .all(|n| w.granted(n) >= w.requests())
        })
    };
    let deadline = sim.now() + Duration::from_secs(10);
    while !survivors_done(&sim) {
        if sim.now() >= deadline {
            return Err(format!(
                "the survivors did not finish within 10 s of {victim}'s crash"
            ));
        }
        sim.run_for(Duration::from_millis(5)).map_err(err)?;
    }
    sim.restart(victim);
    sim.run_liveness(
        Duration::ZERO,
        Duration::from_secs(10),
        every_request_granted::<A>,
    )
    .map_err(|f| format!("after {victim} restarted: {f}"))?;
    Ok(sim)
}

/// Messages per critical-section entry over the whole run.
pub(crate) fn messages_per_entry<A: MutualExclusion>(sim: &Sim<A>) -> f64 {
    let (messages, entries) = sim.actors().fold((0, 0), |(m, e), (_, a)| {
        (m + a.counters().messages_sent, e + a.counters().entries)
    });
    messages as f64 / entries.max(1) as f64
}

/// The replay hint printed with a failing seed.
pub(crate) fn replay(algorithm: &'static str) -> impl Fn(u64) -> String + Sync {
    move |seed| format!("SYNOD_SEED={seed} cargo test -p synod-protocols mutex::{algorithm}")
}
