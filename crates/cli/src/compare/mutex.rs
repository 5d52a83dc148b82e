//! `synod compare mutex`. The workload is the CLI's own copy of the protocol crate's
//! test harness (that one is test-only, and synod-protocols cannot depend on synod-sim).

use super::{chart, matches, progress, MutexCompare};
use anyhow::{anyhow, Result};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;
use synod_core::{ClientId, NodeId};
use synod_protocols::mutex::centralized::Centralized;
use synod_protocols::mutex::lamport::LamportMutex;
use synod_protocols::mutex::maekawa::Maekawa;
use synod_protocols::mutex::ricart_agrawala::RicartAgrawala;
use synod_protocols::mutex::token_ring::{TokenRing, TokenRingConfig};
use synod_protocols::mutex::MutualExclusion;
use synod_sim::{ClientCtl, NetConfig, Sim, SimConfig, Workload};

/// One-way message latency T: a LAN with no latency tail, so every message takes exactly
/// T and delays can be stated in units of T (and links are FIFO).
const LATENCY: Duration = Duration::from_micros(100);
/// How long a client stays in the critical section.
const HOLD: Duration = Duration::from_millis(1);
/// Light load: the pause between one release and the next acquire, long enough for every
/// release message to land first, so exactly one request is in the system at a time.
const LIGHT_GAP: Duration = Duration::from_millis(2);
/// Heavy load: a client asks again this soon after releasing, so it always has a request
/// pending (the small gap keeps its release ahead of its next acquire).
const HEAVY_GAP: Duration = Duration::from_micros(10);
/// After the last entry: time for the trailing release and its messages to land.
const TRAILING: Duration = Duration::from_millis(5);

const RELEASE: u64 = 0;
const ACQUIRE: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    /// One request in the whole system at a time, round-robin over the nodes.
    Light,
    /// Every node always has a request pending.
    Heavy,
}

/// One client per node (client `i` talks to node `i`).
struct CompareWorkload<A> {
    load: Load,
    nodes: u32,
    /// Entries each node's client makes.
    quota: Vec<u32>,
    granted: Vec<u32>,
    waiting: Vec<bool>,
    acquired_at: Vec<u64>,
    completed: u64,
    target: u64,
    next_light: u32,
    /// Acquire sent → granted received, per entry, in nanoseconds.
    responses: Vec<u64>,
    _actor: PhantomData<fn() -> A>,
}

impl<A> CompareWorkload<A> {
    fn new(load: Load, nodes: u32, requests: u32) -> Self {
        let quota: Vec<u32> = (0..nodes)
            .map(|i| requests / nodes + u32::from(i < requests % nodes))
            .collect();
        CompareWorkload {
            load,
            nodes,
            quota,
            granted: vec![0; nodes as usize],
            waiting: vec![false; nodes as usize],
            acquired_at: vec![0; nodes as usize],
            completed: 0,
            target: u64::from(requests),
            next_light: 0,
            responses: Vec::new(),
            _actor: PhantomData,
        }
    }
}

impl<A: MutualExclusion> CompareWorkload<A> {
    fn acquire(&mut self, ctl: &mut ClientCtl<'_, A>, node: u32) {
        self.waiting[node as usize] = true;
        self.acquired_at[node as usize] = ctl.now_nanos();
        ctl.send(
            ClientId(u64::from(node)),
            NodeId(node),
            A::acquire_request(),
        );
    }
}

impl<A: MutualExclusion> Workload<A> for CompareWorkload<A> {
    fn on_start(&mut self, ctl: &mut ClientCtl<'_, A>) {
        match self.load {
            Load::Heavy => {
                for n in 0..self.nodes {
                    if self.quota[n as usize] > 0 {
                        self.acquire(ctl, n);
                    }
                }
            }
            Load::Light => self.acquire(ctl, 0),
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
            self.responses
                .push(ctl.now_nanos().saturating_sub(self.acquired_at[i]));
            ctl.set_timer(client, RELEASE, HOLD);
        }
    }

    fn on_timer(&mut self, ctl: &mut ClientCtl<'_, A>, client: ClientId, key: u64) {
        let node = client.0 as u32;
        match key {
            RELEASE => {
                ctl.send(client, NodeId(node), A::release_request());
                match self.load {
                    Load::Heavy if self.granted[node as usize] < self.quota[node as usize] => {
                        ctl.set_timer(client, ACQUIRE, HEAVY_GAP)
                    }
                    Load::Light if self.completed < self.target => {
                        self.next_light = (self.next_light + 1) % self.nodes;
                        let next = ClientId(u64::from(self.next_light));
                        ctl.set_timer(next, ACQUIRE, LIGHT_GAP)
                    }
                    _ => {}
                }
            }
            ACQUIRE => self.acquire(ctl, node),
            _ => {}
        }
    }
}

/// Who is in the critical section, watched after every event: checks mutual exclusion
/// and records each gap from one node's exit to the next node's entry.
#[derive(Default)]
struct SectionWatch {
    inside: Option<NodeId>,
    last_exit: Option<Duration>,
    gaps: Vec<Duration>,
}

/// What one run measured.
struct MutexRun {
    messages: u64,
    entries: u64,
    /// Entries granted at node 0 (the centralized coordinator's own cost no messages).
    node0_entries: u64,
    responses: Vec<u64>,
    gaps: Vec<Duration>,
}

fn run_one<A: MutualExclusion>(
    seed: u64,
    nodes: u32,
    requests: u32,
    load: Load,
    factory: impl FnMut(NodeId) -> A + 'static,
) -> Result<MutexRun> {
    let mut cfg = SimConfig::new(seed, nodes);
    cfg.net = NetConfig {
        min_latency: LATENCY,
        latency_tail: Duration::ZERO,
        ..NetConfig::lan()
    };
    let mut sim = Sim::new(cfg, factory);
    sim.set_workload(CompareWorkload::<A>::new(load, nodes, requests));
    let watch = Rc::new(RefCell::new(SectionWatch::default()));
    let seen = Rc::clone(&watch);
    sim.invariant("mutual exclusion", move |sim: &Sim<A>| {
        let mut inside = sim.actors().filter(|(_, a)| a.in_critical_section());
        let first = inside.next().map(|(n, _)| n);
        if let Some((second, _)) = inside.next() {
            return Err(format!(
                "{first:?} and {second} are in the critical section"
            ));
        }
        let mut w = seen.borrow_mut();
        match (w.inside, first) {
            (None, Some(_)) => {
                if let Some(exit) = w.last_exit {
                    let gap = sim.now().saturating_sub(exit);
                    w.gaps.push(gap);
                }
            }
            // Count the gap only if another node was waiting when this one left: the
            // synchronization delay is defined while others wait.
            (Some(left), None) => {
                let others_wait = sim.workload::<CompareWorkload<A>>().is_some_and(|wl| {
                    wl.waiting
                        .iter()
                        .enumerate()
                        .any(|(i, &waiting)| waiting && i != left.index())
                });
                w.last_exit = others_wait.then(|| sim.now());
            }
            _ => {}
        }
        w.inside = first;
        Ok(())
    });
    let done = |sim: &Sim<A>| {
        sim.workload::<CompareWorkload<A>>()
            .is_some_and(|w| w.completed >= w.target)
    };
    sim.run_liveness(Duration::ZERO, Duration::from_secs(3600), done)
        .map_err(|f| anyhow!("{f}"))?;
    sim.run_for(TRAILING).map_err(|f| anyhow!("{f}"))?;
    let (messages, entries) = sim.actors().fold((0, 0), |(m, e), (_, a)| {
        (m + a.counters().messages_sent, e + a.counters().entries)
    });
    let node0_entries = sim.actor(NodeId(0)).map_or(0, |a| a.counters().entries);
    let responses = sim
        .workload::<CompareWorkload<A>>()
        .map(|w| w.responses.clone())
        .unwrap_or_default();
    let gaps = std::mem::take(&mut watch.borrow_mut().gaps);
    Ok(MutexRun {
        messages,
        entries,
        node0_entries,
        responses,
        gaps,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    Centralized,
    TokenRing,
    Lamport,
    RicartAgrawala,
    Maekawa,
}

const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::Centralized,
    Algorithm::TokenRing,
    Algorithm::Lamport,
    Algorithm::RicartAgrawala,
    Algorithm::Maekawa,
];

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Centralized => "centralized",
            Algorithm::TokenRing => "token ring",
            Algorithm::Lamport => "Lamport",
            Algorithm::RicartAgrawala => "Ricart-Agrawala",
            Algorithm::Maekawa => "Maekawa",
        }
    }

    fn run(self, seed: u64, nodes: u32, requests: u32, load: Load) -> Result<MutexRun> {
        let all = move || (0..nodes).map(NodeId);
        match self {
            Algorithm::Centralized => {
                run_one(seed, nodes, requests, load, |_| Centralized::new(NodeId(0)))
            }
            Algorithm::TokenRing => run_one(seed, nodes, requests, load, move |_| {
                TokenRing::new(all().collect(), TokenRingConfig::default())
            }),
            Algorithm::Lamport => run_one(seed, nodes, requests, load, move |me| {
                LamportMutex::new(me, all())
            }),
            Algorithm::RicartAgrawala => run_one(seed, nodes, requests, load, move |me| {
                RicartAgrawala::new(me, all())
            }),
            Algorithm::Maekawa => run_one(seed, nodes, requests, load, move |me| {
                Maekawa::with_grid(me, nodes)
            }),
        }
    }
}

/// Messages per entry as the textbook gives it, and the exact figure where there is one.
fn textbook_messages(algorithm: Algorithm, nodes: u32) -> (String, Option<f64>) {
    let n = f64::from(nodes);
    match algorithm {
        Algorithm::Centralized => ("3 (non-coordinator)".into(), Some(3.0)),
        Algorithm::TokenRing => ("1..inf".into(), None),
        Algorithm::Lamport => (
            format!("3(N-1) = {}", 3 * (nodes - 1)),
            Some(3.0 * (n - 1.0)),
        ),
        Algorithm::RicartAgrawala => (
            format!("2(N-1) = {}", 2 * (nodes - 1)),
            Some(2.0 * (n - 1.0)),
        ),
        Algorithm::Maekawa => {
            let k = maekawa_k(nodes);
            (
                format!(
                    "3sqrtN..5sqrtN = {:.0}..{:.0}; 3(K-1)..5(K-1) = {}..{} (K={k})",
                    3.0 * n.sqrt(),
                    5.0 * n.sqrt(),
                    3 * (k - 1),
                    5 * (k - 1)
                ),
                None,
            )
        }
    }
}

/// Grid quorum size K = 2⌈√N⌉ − 1.
fn maekawa_k(nodes: u32) -> u32 {
    let mut side = 1;
    while side * side < nodes {
        side += 1;
    }
    2 * side - 1
}

/// Synchronization delay in units of T, as the textbook gives it.
fn textbook_sync_delay(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Centralized => "2T",
        Algorithm::TokenRing => "T..(N-1)T",
        Algorithm::Lamport | Algorithm::RicartAgrawala => "T",
        Algorithm::Maekawa => "2T",
    }
}

fn mean_ms(nanos: impl Iterator<Item = u64>) -> f64 {
    let (sum, count) = nanos.fold((0u128, 0u64), |(s, c), x| (s + u128::from(x), c + 1));
    if count == 0 {
        f64::NAN
    } else {
        sum as f64 / count as f64 / 1e6
    }
}

struct Row {
    algorithm: Algorithm,
    nodes: u32,
    light_per_entry: f64,
    heavy_per_entry: f64,
    /// What the exactness check compares (centralized: non-coordinator entries only).
    checked_per_entry: f64,
    sync_delay_ms: f64,
    light_response_ms: f64,
    heavy_response_ms: f64,
}

pub(super) fn run(cmd: MutexCompare) -> Result<ExitCode> {
    let bar = progress((ALGORITHMS.len() * cmd.nodes.len() * 2) as u64);
    let mut rows = Vec::new();
    for algorithm in ALGORITHMS {
        for &nodes in &cmd.nodes {
            bar.set_message(format!("{} N={nodes}", algorithm.name()));
            let light = algorithm
                .run(cmd.seed, nodes, cmd.requests, Load::Light)
                .map_err(|e| anyhow!("{} N={nodes} light load: {e}", algorithm.name()))?;
            bar.inc(1);
            let heavy = algorithm
                .run(cmd.seed, nodes, cmd.requests, Load::Heavy)
                .map_err(|e| anyhow!("{} N={nodes} heavy load: {e}", algorithm.name()))?;
            bar.inc(1);
            let per_entry = |r: &MutexRun| r.messages as f64 / r.entries.max(1) as f64;
            let checked_per_entry = match algorithm {
                Algorithm::Centralized => {
                    light.messages as f64 / (light.entries - light.node0_entries).max(1) as f64
                }
                _ => per_entry(&light),
            };
            rows.push(Row {
                algorithm,
                nodes,
                light_per_entry: per_entry(&light),
                heavy_per_entry: per_entry(&heavy),
                checked_per_entry,
                sync_delay_ms: mean_ms(heavy.gaps.iter().map(|g| g.as_nanos() as u64)),
                light_response_ms: mean_ms(light.responses.iter().copied()),
                heavy_response_ms: mean_ms(heavy.responses.iter().copied()),
            });
        }
    }
    bar.finish_and_clear();
    print_table(&cmd, &rows);
    if let Some(path) = &cmd.chart {
        let series: Vec<chart::Series> = ALGORITHMS
            .iter()
            .map(|&a| chart::Series {
                name: a.name().to_string(),
                points: rows
                    .iter()
                    .filter(|r| r.algorithm == a)
                    .map(|r| (f64::from(r.nodes), r.light_per_entry))
                    .collect(),
            })
            .collect();
        chart::draw(
            path,
            "Messages per critical-section entry (light load)",
            &series,
        )?;
        println!("chart written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(cmd: &MutexCompare, rows: &[Row]) {
    let t_ms = LATENCY.as_secs_f64() * 1e3;
    println!(
        "mutual exclusion: {} entries per run, seed {}, fault-free LAN, T = {t_ms} ms one way, \
         critical section held {} ms",
        cmd.requests,
        cmd.seed,
        HOLD.as_secs_f64() * 1e3
    );
    println!(
        "msgs/entry: protocol messages between nodes per entry (light: one request at a time; \
         heavy: every node always waiting). sync delay: mean exit-to-next-entry gap under heavy \
         load. response: client acquire to granted (includes the client's 2T round trip)."
    );
    println!();
    println!(
        "{:<16} {:>3} | {:>9} {:>9} | {:<58} {:>7} | {:>9} {:>7} {:<9} | {:>9} {:>9}",
        "algorithm",
        "N",
        "msgs light",
        "heavy",
        "textbook msgs/entry",
        "matches",
        "sync ms",
        "sync T",
        "textbook",
        "resp light",
        "heavy ms"
    );
    for r in rows {
        let (text, exact) = textbook_messages(r.algorithm, r.nodes);
        let verdict = match (r.algorithm, exact) {
            (_, Some(theory)) => matches(r.checked_per_entry, theory).to_string(),
            (Algorithm::Maekawa, None) => {
                let k = f64::from(maekawa_k(r.nodes));
                let inside = (3.0 * (k - 1.0)..=5.0 * (k - 1.0)).contains(&r.light_per_entry);
                if inside { "in K" } else { "out K" }.to_string()
            }
            _ => "-".to_string(),
        };
        let measured = match r.algorithm {
            Algorithm::Centralized => {
                format!("{:.2}/{:.2}", r.light_per_entry, r.checked_per_entry)
            }
            _ => format!("{:.2}", r.light_per_entry),
        };
        println!(
            "{:<16} {:>3} | {:>10} {:>8.2} | {:<58} {:>7} | {:>9.3} {:>7.2} {:<9} | {:>10.3} {:>9.3}",
            r.algorithm.name(),
            r.nodes,
            measured,
            r.heavy_per_entry,
            text,
            verdict,
            r.sync_delay_ms,
            r.sync_delay_ms / t_ms,
            textbook_sync_delay(r.algorithm),
            r.light_response_ms,
            r.heavy_response_ms
        );
    }
    println!();
    println!(
        "centralized msgs light shows all entries / non-coordinator entries (the coordinator's \
         own entries are local calls); \"matches\" checks the latter against 3. Its sync \
         delay is below 2T because a release by the coordinator's own client needs only the \
         grant (T). Maekawa: \
         \"in K\" means within 3(K-1)..5(K-1). Token ring: the token also circulates while \
         idle, so light-load cost grows with the idle time."
    );
}
