//! The simulation harness for two-phase commit: a transaction workload, the invariant
//! checkers (atomicity, commit validity, termination), the fault mixes, the crash-point
//! sweep, the blocking demonstration and the cost measurement. `cargo test` and
//! `synod sim twopc` share it.

use super::msg::{CoordinatorRecord, Decision, TwoPcMsg, TxnId};
use super::{ParticipantState, TwoPcConfig, TwoPcNode, TxnCost};
use rand::seq::SliceRandom;
use rand::Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;
use synod_core::{ClientId, LogIndex, NodeId, Storage, StorageExt};
use synod_sim::{
    swarm_faults, swarm_net, ClientCtl, DiskConfig, FaultConfig, NetConfig, Sim, SimConfig,
    Workload,
};

/// The one client of the workload.
pub const CLIENT: ClientId = ClientId(0);

/// One transaction a workload runs: its participants and those whose local work fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnSpec {
    /// The participants.
    pub participants: Vec<NodeId>,
    /// Participants that vote NO.
    pub refuse: Vec<NodeId>,
}

/// A client that begins transactions at the coordinator, one every `spacing`.
#[derive(Debug)]
pub struct TxnWorkload {
    coordinator: NodeId,
    specs: Vec<TxnSpec>,
    spacing: Duration,
    next: usize,
    /// Outcomes the client heard, by request number.
    pub outcomes: BTreeMap<u64, (TxnId, Decision)>,
    /// Requests the coordinator rejected.
    pub rejected: u64,
}

impl TxnWorkload {
    /// Run `specs` in order, one every `spacing`, starting at once.
    pub fn new(coordinator: NodeId, specs: Vec<TxnSpec>, spacing: Duration) -> Self {
        TxnWorkload {
            coordinator,
            specs,
            spacing,
            next: 0,
            outcomes: BTreeMap::new(),
            rejected: 0,
        }
    }

    /// `count` transactions over random subsets (at least two participants, when there
    /// are two) of `config.participants`; each has one refusing participant with
    /// probability `abort_probability`.
    pub fn random(
        config: &TwoPcConfig,
        seed: u64,
        count: usize,
        abort_probability: f64,
        spacing: Duration,
    ) -> Self {
        let mut rng = synod_sim::stream_rng(seed, 0x2bc);
        let all = &config.participants;
        let specs = (0..count)
            .map(|_| {
                let min = all.len().min(2);
                let span = rng.gen_range(min..=all.len());
                let mut participants: Vec<NodeId> =
                    all.choose_multiple(&mut rng, span).copied().collect();
                participants.sort();
                let refuse = if rng.gen_bool(abort_probability) {
                    participants.choose(&mut rng).copied().into_iter().collect()
                } else {
                    Vec::new()
                };
                TxnSpec {
                    participants,
                    refuse,
                }
            })
            .collect();
        TxnWorkload::new(config.coordinator, specs, spacing)
    }

    fn begin_next(&mut self, ctl: &mut ClientCtl<'_, TwoPcNode>) {
        let Some(spec) = self.specs.get(self.next).cloned() else {
            return;
        };
        let request = self.next as u64;
        self.next += 1;
        ctl.send(
            CLIENT,
            self.coordinator,
            TwoPcMsg::Begin {
                request,
                participants: spec.participants,
                refuse: spec.refuse,
            },
        );
        if self.next < self.specs.len() {
            ctl.set_timer(CLIENT, 0, self.spacing);
        }
    }
}

impl Workload<TwoPcNode> for TxnWorkload {
    fn on_start(&mut self, ctl: &mut ClientCtl<'_, TwoPcNode>) {
        self.begin_next(ctl);
    }

    fn on_reply(
        &mut self,
        _ctl: &mut ClientCtl<'_, TwoPcNode>,
        _client: ClientId,
        _from: NodeId,
        msg: TwoPcMsg,
    ) {
        match msg {
            TwoPcMsg::Outcome {
                request,
                txn,
                decision,
            } => {
                self.outcomes.insert(request, (txn, decision));
            }
            TwoPcMsg::Rejected { .. } => self.rejected += 1,
            _ => {}
        }
    }

    fn on_timer(&mut self, ctl: &mut ClientCtl<'_, TwoPcNode>, _client: ClientId, _key: u64) {
        self.begin_next(ctl);
    }
}

/// What the observer has seen over a whole run (it outlives crashes, unlike the actors).
#[derive(Debug, Default, Clone)]
pub struct Observations {
    /// A participant that committed each transaction.
    pub committed: BTreeMap<TxnId, NodeId>,
    /// Who aborted each transaction (a participant, or the coordinator).
    pub aborted: BTreeMap<TxnId, String>,
    /// When each (participant, transaction) became uncertain, in true time.
    uncertain_since: BTreeMap<(NodeId, TxnId), Duration>,
    /// How long each uncertain period lasted, once it ended.
    pub blocked: Vec<Duration>,
    /// Every transaction the coordinator began.
    pub begun: BTreeSet<TxnId>,
}

impl Observations {
    /// Uncertain periods still open at `now`, with their length so far.
    pub fn still_blocked(&self, now: Duration) -> Vec<Duration> {
        self.uncertain_since
            .values()
            .map(|since| now.saturating_sub(*since))
            .collect()
    }
}

/// A shared handle on the observer's record.
pub type Observer = Rc<RefCell<Observations>>;

/// Install the safety invariants, checked after every event:
/// - **atomicity**: no transaction is committed somewhere and aborted elsewhere;
/// - **commit validity**: every transaction a participant ever committed has a commit
///   decision in the coordinator's log (checked whenever the coordinator is up, so a
///   decision lost in a crash is caught when it restarts).
///
/// The observer also times every uncertain period (blocked time).
pub fn install_invariants(sim: &mut Sim<TwoPcNode>, config: &TwoPcConfig) -> Observer {
    let observer: Observer = Rc::new(RefCell::new(Observations::default()));
    let seen = Rc::clone(&observer);
    let coordinator = config.coordinator;
    sim.invariant("two-phase commit", move |sim: &Sim<TwoPcNode>| {
        let mut obs = seen.borrow_mut();
        observe(sim, coordinator, &mut obs)
    });
    observer
}

fn observe(
    sim: &Sim<TwoPcNode>,
    coordinator: NodeId,
    obs: &mut Observations,
) -> Result<(), String> {
    let now = sim.now();
    for (node, actor) in sim.actors() {
        let Some(p) = actor.participant() else {
            continue;
        };
        for (txn, state) in p.transactions() {
            match state {
                ParticipantState::Prepared => {
                    obs.uncertain_since.entry((node, txn)).or_insert(now);
                }
                ParticipantState::Decided(decision) => {
                    if let Some(since) = obs.uncertain_since.remove(&(node, txn)) {
                        obs.blocked.push(now.saturating_sub(since));
                    }
                    match decision {
                        Decision::Commit => {
                            if let Some(who) = obs.aborted.get(&txn) {
                                return Err(format!(
                                    "atomicity: {txn} committed at {node} but aborted by {who}"
                                ));
                            }
                            obs.committed.entry(txn).or_insert(node);
                        }
                        Decision::Abort => {
                            if let Some(who) = obs.committed.get(&txn) {
                                return Err(format!(
                                    "atomicity: {txn} aborted at {node} but committed at {who}"
                                ));
                            }
                            obs.aborted.entry(txn).or_insert_with(|| node.to_string());
                        }
                    }
                }
            }
        }
    }
    if let Some(c) = sim.actor(coordinator).and_then(TwoPcNode::coordinator) {
        if c.broken().is_none() {
            obs.begun.extend(c.open_transactions());
            for (&txn, &who) in &obs.committed {
                if c.decision(txn) != Some(Decision::Commit) {
                    return Err(format!(
                        "commit validity: {who} committed {txn} but the coordinator's log holds no commit decision"
                    ));
                }
            }
            for (txn, who) in &obs.aborted {
                if c.decision(*txn) == Some(Decision::Commit) {
                    return Err(format!(
                        "atomicity: the coordinator committed {txn}, which {who} aborted"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Termination: every node is up, the coordinator holds nothing open and no participant
/// is uncertain.
pub fn all_transactions_ended(sim: &Sim<TwoPcNode>) -> bool {
    sim.node_ids().all(|n| match sim.actor(n) {
        None => false,
        Some(TwoPcNode::Coordinator(c)) => c.open_transactions().next().is_none(),
        Some(TwoPcNode::Participant(p)) => p.uncertain().next().is_none(),
    })
}

/// After termination: every transaction the coordinator logged as committed is committed
/// at each of its participants, and nothing else is committed anywhere.
pub fn check_final(sim: &Sim<TwoPcNode>, config: &TwoPcConfig) -> Result<(), String> {
    let Some(c) = sim
        .actor(config.coordinator)
        .and_then(TwoPcNode::coordinator)
    else {
        return Err("the coordinator is down at the end".into());
    };
    if let Some(why) = c.broken() {
        return Err(format!("the coordinator stopped: {why}"));
    }
    let commits: BTreeMap<TxnId, Vec<NodeId>> =
        c.logged_commits().map(|(t, p)| (t, p.to_vec())).collect();
    for (txn, participants) in &commits {
        for p in participants {
            let state = sim
                .actor(*p)
                .and_then(TwoPcNode::participant)
                .and_then(|a| a.state(*txn));
            if state != Some(ParticipantState::Decided(Decision::Commit)) {
                return Err(format!(
                    "atomicity: {txn} committed but participant {p} is {state:?}"
                ));
            }
        }
    }
    for (node, actor) in sim.actors() {
        if let Some(p) = actor.participant() {
            if let Some(why) = p.broken() {
                return Err(format!("{node} stopped: {why}"));
            }
            if p.commits_without_prepare() > 0 {
                return Err(format!(
                    "atomicity: {node} was told to commit a transaction it had no prepare record of"
                ));
            }
            for (txn, state) in p.transactions() {
                if state == ParticipantState::Decided(Decision::Commit)
                    && !commits.contains_key(&txn)
                {
                    return Err(format!(
                        "commit validity: {node} committed {txn} without a commit decision"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The fault mixes `synod sim twopc` reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMix {
    /// A LAN, no faults.
    None,
    /// A lossy, duplicating, reordering network (5% loss); no crashes.
    Loss,
    /// Crashes and restarts of any node, on a LAN, with a slow disk whose fsyncs may fail.
    Crashes,
    /// Partitions of every kind and clogged links, on a LAN.
    Partitions,
    /// Crashes with message loss, duplication and reordering, with the same disk.
    CrashesAndLoss,
    /// Swarm testing: a random fault mix and network per seed.
    Swarm,
}

impl FaultMix {
    /// Every mix, in report order.
    pub const ALL: [FaultMix; 6] = [
        FaultMix::None,
        FaultMix::Loss,
        FaultMix::Crashes,
        FaultMix::Partitions,
        FaultMix::CrashesAndLoss,
        FaultMix::Swarm,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            FaultMix::None => "none",
            FaultMix::Loss => "loss",
            FaultMix::Crashes => "crashes",
            FaultMix::Partitions => "partitions",
            FaultMix::CrashesAndLoss => "crashes+loss",
            FaultMix::Swarm => "swarm",
        }
    }

    /// The simulator configuration of this mix for `seed` and `nodes`.
    pub fn sim_config(self, seed: u64, nodes: u32) -> SimConfig {
        let mut cfg = SimConfig::new(seed, nodes);
        let crashes = FaultConfig {
            mean_interval: Duration::from_millis(150),
            min_duration: Duration::from_millis(20),
            max_duration: Duration::from_millis(800),
            crash: 1,
            ..FaultConfig::none()
        };
        // A slow disk (1-5 ms fsync) widens the window between a write and its sync, where
        // a crash loses the write: that is where a missing force shows.
        // One fsync in 500 fails, which stops the node until the fault plan restarts it.
        let slow_disk = DiskConfig {
            min_sync: Duration::from_millis(1),
            sync_jitter: Duration::from_millis(4),
            io_error: 0.002,
            ..DiskConfig::default()
        };
        match self {
            FaultMix::None => {}
            FaultMix::Loss => cfg.net = NetConfig::lossy(),
            FaultMix::Crashes => {
                cfg.faults = crashes;
                cfg.disk = slow_disk;
            }
            FaultMix::Partitions => {
                cfg.faults = FaultConfig {
                    partition: 3,
                    clog: 1,
                    crash: 0,
                    pause: 0,
                    ..FaultConfig::chaos()
                }
            }
            FaultMix::CrashesAndLoss => {
                cfg.net = NetConfig::lossy();
                cfg.faults = crashes;
                cfg.disk = slow_disk;
            }
            FaultMix::Swarm => {
                cfg.net = swarm_net(seed);
                cfg.faults = swarm_faults(seed);
            }
        }
        cfg
    }
}

/// What one run produced.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Transactions the coordinator began.
    pub begun: u64,
    /// Of those, committed.
    pub committed: u64,
    /// Of those, aborted.
    pub aborted: u64,
    /// Protocol messages between nodes (all of them, including retries).
    pub messages: u64,
    /// Every uncertain period of every participant.
    pub blocked: Vec<Duration>,
    /// True time from healing to termination.
    pub recovery: Duration,
}

/// How long the faults last in a scenario before everything heals.
pub const FAULT_PHASE: Duration = Duration::from_secs(3);

/// Run `txns` random transactions under `mix` with the invariants on, then heal and
/// require termination and the final atomicity check.
pub fn run_scenario(
    seed: u64,
    mix: FaultMix,
    config: &TwoPcConfig,
    txns: usize,
    abort_probability: f64,
) -> Result<RunReport, String> {
    run_scenario_with(seed, mix, config, txns, abort_probability, |_| Ok(()))
}

/// [`run_scenario`], with `setup` applied to the simulation before it starts (for
/// example to write a trace file).
pub fn run_scenario_with(
    seed: u64,
    mix: FaultMix,
    config: &TwoPcConfig,
    txns: usize,
    abort_probability: f64,
    setup: impl FnOnce(&mut Sim<TwoPcNode>) -> Result<(), String>,
) -> Result<RunReport, String> {
    let nodes = config.participants.len() as u32 + 1;
    let cfg = mix.sim_config(seed, nodes);
    let spacing = FAULT_PHASE / (txns.max(1) as u32 + 1);
    let factory_config = config.clone();
    let mut sim = Sim::new(cfg, move |me| TwoPcNode::new(me, &factory_config));
    setup(&mut sim)?;
    let observer = install_invariants(&mut sim, config);
    sim.set_workload(TxnWorkload::random(
        config,
        seed,
        txns,
        abort_probability,
        spacing,
    ));
    let healed_at = FAULT_PHASE;
    let ended = sim
        .run_liveness(
            healed_at,
            healed_at + Duration::from_secs(30),
            all_transactions_ended,
        )
        .map_err(|f| f.to_string())?;
    check_final(&sim, config)?;
    let c = sim
        .actor(config.coordinator)
        .and_then(TwoPcNode::coordinator)
        .ok_or("the coordinator is down at the end")?;
    let committed = c.logged_commits().count() as u64;
    let obs = observer.borrow();
    let begun = obs.begun.len() as u64;
    Ok(RunReport {
        begun,
        committed,
        aborted: begun.saturating_sub(committed),
        messages: sim.stats().sent,
        blocked: obs.blocked.clone(),
        recovery: ended.saturating_sub(healed_at),
    })
}

/// The outcome of one transaction at the end of a run: committed everywhere, or nowhere.
fn final_outcome(sim: &Sim<TwoPcNode>, txn: TxnId) -> Decision {
    let committed = sim.actors().any(|(_, a)| {
        a.participant()
            .and_then(|p| p.state(txn))
            .is_some_and(|s| s == ParticipantState::Decided(Decision::Commit))
    });
    if committed {
        Decision::Commit
    } else {
        Decision::Abort
    }
}

/// Whether `node`'s log (what survived, if it just crashed) holds a commit decision.
fn logged_commit(sim: &Sim<TwoPcNode>, node: NodeId) -> bool {
    let Some(storage) = sim.storage(node) else {
        return false;
    };
    let (first, end) = storage.log_bounds();
    (first.0..end.0).any(|i| {
        matches!(
            storage.read_value::<CoordinatorRecord>(LogIndex(i)),
            Ok(Some(CoordinatorRecord::Decided {
                decision: Decision::Commit,
                ..
            }))
        )
    })
}

/// One transaction over every participant (one NO vote if `refuse`) on a fault-free LAN,
/// with the invariants installed.
pub fn single_txn_sim(seed: u64, config: &TwoPcConfig, refuse: bool) -> (Sim<TwoPcNode>, Observer) {
    let nodes = config.participants.len() as u32 + 1;
    let factory_config = config.clone();
    let mut sim = Sim::new(SimConfig::new(seed, nodes), move |me| {
        TwoPcNode::new(me, &factory_config)
    });
    let observer = install_invariants(&mut sim, config);
    let spec = TxnSpec {
        participants: config.participants.clone(),
        refuse: if refuse {
            config.participants.first().copied().into_iter().collect()
        } else {
            Vec::new()
        },
    };
    sim.set_workload(TxnWorkload::new(
        config.coordinator,
        vec![spec],
        Duration::from_secs(1),
    ));
    (sim, observer)
}

/// What the crash-point sweep covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashSweep {
    /// Events in the fault-free run of the transaction.
    pub steps: u64,
    /// Runs with one crash each (every step × every node × two outage lengths).
    pub runs: u64,
    /// Of those, how many ended committed.
    pub committed: u64,
}

/// The crash-point sweep: run one transaction (all YES, or with one NO vote if `refuse`)
/// fault-free and count its events; then for every event index k and every node, rerun
/// the same seed, crash that node right after event k, restart it 30 ms or 500 ms later,
/// and check:
/// the invariants throughout, termination, the final atomicity check, that a refused
/// transaction aborts, and that after a coordinator crash the outcome is commit exactly
/// when its commit record survived the crash.
pub fn crash_point_sweep(
    seed: u64,
    config: &TwoPcConfig,
    refuse: bool,
) -> Result<CrashSweep, String> {
    let (mut reference, _) = single_txn_sim(seed, config, refuse);
    let mut steps = 0u64;
    while !(all_transactions_ended(&reference) && txn_began(&reference, config)) {
        if !reference.step() {
            return Err("the fault-free run stopped before the transaction ended".into());
        }
        steps += 1;
        if steps > 100_000 {
            return Err("the fault-free run did not end".into());
        }
    }
    let mut sweep = CrashSweep {
        steps,
        ..CrashSweep::default()
    };
    let victims: Vec<NodeId> = std::iter::once(config.coordinator)
        .chain(config.participants.iter().copied())
        .collect();
    // A short outage (the node is back before any timeout) and a long one (the vote and
    // decision timeouts fire while it is down).
    let outages = [Duration::from_millis(30), Duration::from_millis(500)];
    for k in 0..=steps {
        for (&victim, &outage) in victims
            .iter()
            .flat_map(|v| outages.iter().map(move |o| (v, o)))
        {
            let at = format!("crash of {victim} after event {k} for {outage:?}");
            let (mut sim, _) = single_txn_sim(seed, config, refuse);
            for _ in 0..k {
                sim.step();
            }
            sim.crash(victim);
            let commit_survived = victim == config.coordinator && logged_commit(&sim, victim);
            sim.run_for(outage).map_err(|f| format!("{at}: {f}"))?;
            sim.restart(victim);
            let deadline = sim.now() + Duration::from_secs(20);
            let now = sim.now();
            sim.run_liveness(now, deadline, all_transactions_ended)
                .map_err(|f| format!("{at}: {f}"))?;
            check_final(&sim, config).map_err(|e| format!("{at}: {e}"))?;
            let txn = TxnId { epoch: 1, seq: 1 };
            let outcome = final_outcome(&sim, txn);
            if refuse && outcome == Decision::Commit {
                return Err(format!("{at}: a transaction with a NO vote committed"));
            }
            if victim == config.coordinator && k > 0 {
                let expected = if commit_survived {
                    Decision::Commit
                } else {
                    Decision::Abort
                };
                if outcome != expected && txn_began_at(&sim, txn) {
                    return Err(format!(
                        "{at}: outcome {outcome:?}, but the commit record {} the crash",
                        if commit_survived {
                            "survived"
                        } else {
                            "did not survive"
                        }
                    ));
                }
            }
            sweep.runs += 1;
            if outcome == Decision::Commit {
                sweep.committed += 1;
            }
        }
    }
    Ok(sweep)
}

fn txn_began(sim: &Sim<TwoPcNode>, config: &TwoPcConfig) -> bool {
    sim.actor(config.coordinator)
        .and_then(TwoPcNode::coordinator)
        .is_some_and(|c| c.decision(TxnId { epoch: 1, seq: 1 }).is_some())
        || sim
            .workload::<TxnWorkload>()
            .is_some_and(|w| !w.outcomes.is_empty())
}

fn txn_began_at(sim: &Sim<TwoPcNode>, txn: TxnId) -> bool {
    sim.actors()
        .any(|(_, a)| a.participant().and_then(|p| p.state(txn)).is_some())
}

/// What the blocking demonstration saw.
#[derive(Debug, Clone, Default)]
pub struct BlockingReport {
    /// Participants uncertain while the coordinator was down.
    pub uncertain: usize,
    /// How long the coordinator stayed down.
    pub down_for: Duration,
    /// Cooperative-termination requests the participants sent meanwhile.
    pub help_requests: u64,
    /// `Uncertain` answers they received.
    pub uncertain_answers: u64,
    /// Participants that decided while the coordinator was down (must be 0).
    pub decided_while_down: usize,
    /// The outcome after the coordinator recovered.
    pub outcome: Option<Decision>,
    /// True time from the coordinator's restart to termination.
    pub recovery: Duration,
}

/// The known blocking case of 2PC: every participant votes YES, then the coordinator
/// crashes before any decision reaches them (here: the moment the last YES vote arrives,
/// losing its unsynced decision record half the time). The participants stay uncertain
/// for `down_for`, asking the coordinator and each other; none may decide. Then the
/// coordinator restarts and the transaction ends.
pub fn blocking_demo(
    seed: u64,
    config: &TwoPcConfig,
    down_for: Duration,
) -> Result<BlockingReport, String> {
    let (mut sim, _) = single_txn_sim(seed, config, false);
    let txn = TxnId { epoch: 1, seq: 1 };
    let n = config.participants.len();
    // Step until the coordinator has every YES vote, then crash it at once.
    loop {
        let all_yes = sim
            .actor(config.coordinator)
            .and_then(TwoPcNode::coordinator)
            .is_some_and(|c| c.decision(txn).is_some() || c.yes_votes(txn) == n);
        if all_yes {
            break;
        }
        if !sim.step() {
            return Err("the run stopped before every participant voted".into());
        }
    }
    sim.crash(config.coordinator);
    let crashed_at = sim.now();
    let mut report = BlockingReport {
        down_for,
        ..BlockingReport::default()
    };
    let participant_messages = |sim: &Sim<TwoPcNode>| -> u64 {
        sim.actors()
            .filter_map(|(_, a)| a.participant())
            .map(|p| p.costs().get(&txn).map_or(0, |c| c.messages))
            .sum()
    };
    let before = participant_messages(&sim);
    sim.run_until(crashed_at + down_for)
        .map_err(|f| f.to_string())?;
    for (_, a) in sim.actors() {
        if let Some(p) = a.participant() {
            match p.state(txn) {
                Some(ParticipantState::Prepared) => report.uncertain += 1,
                Some(ParticipantState::Decided(_)) => report.decided_while_down += 1,
                None => {}
            }
            report.uncertain_answers += p.uncertain_answers();
        }
    }
    // Everything the participants sent while blocked: inquiries, help requests, answers.
    report.help_requests = participant_messages(&sim).saturating_sub(before);
    let restarted = sim.now();
    sim.restart(config.coordinator);
    let ended = sim
        .run_liveness(
            restarted,
            restarted + Duration::from_secs(10),
            all_transactions_ended,
        )
        .map_err(|f| f.to_string())?;
    check_final(&sim, config)?;
    report.outcome = Some(final_outcome(&sim, txn));
    report.recovery = ended.saturating_sub(restarted);
    Ok(report)
}

/// Average costs per transaction by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostRow {
    /// Transactions averaged.
    pub txns: u64,
    /// Messages per transaction.
    pub messages: f64,
    /// Log writes per transaction.
    pub log_writes: f64,
    /// Forced log writes per transaction.
    pub forced_writes: f64,
}

/// Measured costs of committed and aborted transactions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostReport {
    /// Committed transactions.
    pub commit: CostRow,
    /// Aborted transactions (one participant votes NO).
    pub abort: CostRow,
}

/// Measure messages and log writes per committed and per aborted transaction on a
/// fault-free LAN: `txns` transactions spanning every participant, every other one with
/// one NO vote.
pub fn measure_costs(seed: u64, config: &TwoPcConfig, txns: usize) -> Result<CostReport, String> {
    let nodes = config.participants.len() as u32 + 1;
    let factory_config = config.clone();
    let mut cfg = SimConfig::new(seed, nodes);
    // Constant latency: the textbook case, where every Prepare arrives before any Abort.
    cfg.net.latency_tail = Duration::ZERO;
    let mut sim = Sim::new(cfg, move |me| TwoPcNode::new(me, &factory_config));
    install_invariants(&mut sim, config);
    let specs = (0..txns)
        .map(|i| TxnSpec {
            participants: config.participants.clone(),
            refuse: if i % 2 == 1 {
                config
                    .participants
                    .get(i / 2 % config.participants.len())
                    .copied()
                    .into_iter()
                    .collect()
            } else {
                Vec::new()
            },
        })
        .collect();
    sim.set_workload(TxnWorkload::new(
        config.coordinator,
        specs,
        Duration::from_millis(10),
    ));
    let span = Duration::from_millis(10) * txns as u32;
    sim.run_liveness(span, span + Duration::from_secs(10), all_transactions_ended)
        .map_err(|f| f.to_string())?;
    // Let trailing acknowledgements land.
    sim.run_for(Duration::from_secs(1))
        .map_err(|f| f.to_string())?;
    check_final(&sim, config)?;
    let mut per_txn: BTreeMap<TxnId, TxnCost> = BTreeMap::new();
    for (_, a) in sim.actors() {
        for (txn, cost) in a.costs() {
            let total = per_txn.entry(*txn).or_default();
            *total = *total + *cost;
        }
    }
    let mut report = CostReport::default();
    let mut sums = [TxnCost::default(), TxnCost::default()];
    for (txn, cost) in &per_txn {
        let i = match final_outcome(&sim, *txn) {
            Decision::Commit => 0,
            Decision::Abort => 1,
        };
        sums[i] = sums[i] + *cost;
        let row = if i == 0 {
            &mut report.commit
        } else {
            &mut report.abort
        };
        row.txns += 1;
    }
    for (row, sum) in [(&mut report.commit, sums[0]), (&mut report.abort, sums[1])] {
        let n = row.txns.max(1) as f64;
        row.messages = sum.messages as f64 / n;
        row.log_writes = sum.log_writes as f64 / n;
        row.forced_writes = sum.forced_writes as f64 / n;
    }
    Ok(report)
}

/// The textbook figures for one transaction over `n` updating participants, from the rules
/// of Mohan, Lindsay & Obermarck 1986 §2–§3 (baseline 2P and presumed abort): commits,
/// and aborts caused by one NO vote. Returns (messages, log writes, forced writes).
pub fn textbook_costs(n: u64, presumed_abort: bool, commit: bool) -> (u64, u64, u64) {
    match (commit, presumed_abort) {
        // Prepare, vote, commit, ack per participant; the coordinator's commit (forced)
        // and end; each participant's prepare and commit (both forced).
        (true, _) => (4 * n, 2 * n + 2, 2 * n + 1),
        // The NO voter gets no phase 2; the others get abort and acknowledge. Forced: the
        // coordinator's abort, the NO voter's abort, each YES voter's prepare and abort.
        (false, false) => (4 * n - 2, 2 * n + 1, 2 * n),
        // Presumed abort: no coordinator record, no acknowledgements; only the YES voters'
        // prepare records are forced.
        (false, true) => (3 * n - 1, 2 * n - 1, n - 1),
    }
}
