//! SWIM in the simulator: the checks the tests share and the experiments `synod sim swim`
//! prints.

use super::{EventTime, MemberStatus, Swim, SwimConfig, SwimMsg, SwimRequest};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeSet;
use std::time::Duration;
use synod_core::{ClientId, NodeId};
use synod_sim::{stream_rng, NetConfig, Sim, SimConfig};

/// A simulation of `nodes` SWIM members, each built with `cfg` (every member known from
/// the start unless `cfg.known` says otherwise).
pub fn swim_sim(seed: u64, nodes: u32, cfg: SwimConfig, net: NetConfig) -> Sim<Swim> {
    let mut sim_cfg = SimConfig::new(seed, nodes);
    sim_cfg.net = net;
    Sim::new(sim_cfg, move |me| Swim::new(me, cfg.clone()))
}

/// Every live member marks every member of `crashed` dead (completeness, SWIM §2).
pub fn crashed_declared_dead(sim: &Sim<Swim>, crashed: &BTreeSet<NodeId>) -> bool {
    sim.actors()
        .filter(|(n, _)| !crashed.contains(n))
        .all(|(_, a)| {
            crashed
                .iter()
                .all(|&c| a.status_of(c).is_none_or(|s| s == MemberStatus::Dead))
        })
}

/// Every live member sees every other live member alive, and has left nobody suspect.
pub fn converged(sim: &Sim<Swim>) -> bool {
    let live: Vec<NodeId> = sim.actors().map(|(n, _)| n).collect();
    sim.actors().all(|(_, a)| {
        live.iter()
            .all(|&n| a.status_of(n) == Some(MemberStatus::Alive))
    })
}

/// Every time some member declared a member of `healthy` dead, as (observer, subject).
pub fn false_declarations(sim: &Sim<Swim>, healthy: &BTreeSet<NodeId>) -> Vec<(NodeId, NodeId)> {
    sim.actors()
        .flat_map(|(observer, a)| {
            a.changes_since(0)
                .filter(|c| c.status == MemberStatus::Dead && healthy.contains(&c.node))
                .map(move |c| (observer, c.node))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Which variant of the protocol to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// SWIM §3: a failed probe declares the target dead at once.
    NoSuspicion,
    /// SWIM §4: suspicion with incarnations, fixed suspicion timeout.
    Suspicion,
    /// SWIM with Lifeguard's local health, dynamic suspicion and buddy system.
    Lifeguard,
}

impl Variant {
    /// Every variant, in table order.
    pub const ALL: [Variant; 3] = [Variant::NoSuspicion, Variant::Suspicion, Variant::Lifeguard];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::NoSuspicion => "SWIM, no suspicion",
            Variant::Suspicion => "SWIM + suspicion",
            Variant::Lifeguard => "SWIM + Lifeguard",
        }
    }

    /// The default configuration for this variant.
    pub fn config(self, nodes: u32) -> SwimConfig {
        SwimConfig {
            suspicion: self != Variant::NoSuspicion,
            lifeguard: self == Variant::Lifeguard,
            change_log: 1 << 20,
            ..SwimConfig::with_members(nodes)
        }
    }
}

/// A LAN: 100 µs plus a 100 µs tail, losing `loss` of all messages.
pub fn lan(loss: f64) -> NetConfig {
    NetConfig {
        loss,
        ..NetConfig::lan()
    }
}

fn periods(d: Duration, cfg: &SwimConfig) -> f64 {
    d.as_secs_f64() / cfg.probe_interval.as_secs_f64()
}

/// One crash and how long it took to notice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// Protocol periods after the crash until some member probed the crashed one,
    /// counting the period of that probe (§3.1's quantity, expected e/(e−1)).
    pub periods_to_first_probe: f64,
    /// Time from the crash until the first member suspected it, in periods.
    pub time_to_first_suspicion: f64,
    /// Time from the crash until every live member declared it dead, in periods.
    pub time_to_all_dead: f64,
}

/// Crash one member of `nodes` at a random moment after a warm-up and measure how long
/// the others take to notice. `None` if it was not detected within 100 periods.
pub fn measure_detection(seed: u64, nodes: u32, variant: Variant) -> Option<Detection> {
    let cfg = variant.config(nodes);
    let period = cfg.probe_interval;
    let mut sim = swim_sim(seed, nodes, cfg.clone(), lan(0.0));
    let mut rng = stream_rng(seed, 0x5717);
    let victim = NodeId(rng.gen_range(0..nodes));
    let warmup = period * 3 + period.mul_f64(rng.gen_range(0.0..1.0));
    sim.run_until(warmup).ok()?;
    sim.crash(victim);
    let crashed_at = sim.now();
    let step = period / 100;
    let (mut first_probe, mut first_suspicion) = (None, None);
    let crashed = BTreeSet::from([victim]);
    // Probes of the victim already under way at the crash were answered before it.
    let mut stale: BTreeSet<NodeId> = sim
        .actors()
        .filter(|(_, a)| a.probe_target() == Some(victim))
        .map(|(n, _)| n)
        .collect();
    for _ in 0..100 * 100 {
        sim.run_for(step).ok()?;
        let since = sim.now() - crashed_at;
        stale.retain(|&n| {
            sim.actor(n)
                .is_some_and(|a| a.probe_target() == Some(victim))
        });
        if first_probe.is_none()
            && sim
                .actors()
                .any(|(n, a)| a.probe_target() == Some(victim) && !stale.contains(&n))
        {
            // The probe started within the last step; charge it to that step's start.
            first_probe = Some(since.saturating_sub(step / 2));
        }
        if first_suspicion.is_none()
            && sim
                .actors()
                .any(|(_, a)| a.status_of(victim) != Some(MemberStatus::Alive))
        {
            first_suspicion = Some(since);
        }
        if crashed_declared_dead(&sim, &crashed) {
            return Some(Detection {
                periods_to_first_probe: (periods(first_probe?, &cfg)).floor() + 1.0,
                time_to_first_suspicion: periods(first_suspicion?, &cfg),
                time_to_all_dead: periods(since, &cfg),
            });
        }
    }
    None
}

/// Message load in a steady group without faults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// Failure-detector messages (ping, ack, ping-req, nack) sent per member per period.
    pub probe_sent: f64,
    /// Every message (push-pull included) sent per member per period.
    pub all_sent: f64,
    /// Messages received per member per period.
    pub received: f64,
}

/// Run `nodes` members for `periods` protocol periods after a warm-up and count messages.
pub fn measure_load(seed: u64, nodes: u32, periods: u32) -> Result<Load, String> {
    let cfg = Variant::Lifeguard.config(nodes);
    let period = cfg.probe_interval;
    let mut sim = swim_sim(seed, nodes, cfg, lan(0.0));
    sim.run_until(period * 3).map_err(|f| f.to_string())?;
    let sum = |sim: &Sim<Swim>| {
        sim.actors().fold((0u64, 0u64, 0u64), |(p, o, r), (_, a)| {
            let c = a.counters();
            (p + c.sent_probe, o + c.sent_other, r + c.received)
        })
    };
    let before = sum(&sim);
    sim.run_for(period * periods).map_err(|f| f.to_string())?;
    let after = sum(&sim);
    let per = f64::from(nodes) * f64::from(periods);
    Ok(Load {
        probe_sent: (after.0 - before.0) as f64 / per,
        all_sent: ((after.0 + after.1) - (before.0 + before.1)) as f64 / per,
        received: (after.2 - before.2) as f64 / per,
    })
}

/// Fire a user event at a random member after a warm-up and measure how many periods it
/// takes to reach every member. `None` if it has not within 100 periods.
pub fn measure_dissemination(seed: u64, nodes: u32) -> Option<f64> {
    let cfg = Variant::Lifeguard.config(nodes);
    let period = cfg.probe_interval;
    let mut sim = swim_sim(seed, nodes, cfg.clone(), lan(0.0));
    let mut rng = stream_rng(seed, 0xd155);
    let origin = NodeId(rng.gen_range(0..nodes));
    let warmup = period * 3 + period.mul_f64(rng.gen_range(0.0..1.0));
    sim.run_until(warmup).ok()?;
    sim.client_send(
        ClientId(0),
        origin,
        SwimMsg::Request(SwimRequest::FireEvent {
            name: "probe".to_string(),
            payload: Vec::new(),
        }),
    );
    let fired = sim.now();
    let step = period / 20;
    for _ in 0..100 * 20 {
        sim.run_for(step).ok()?;
        if sim.actors().all(|(_, a)| a.has_event(origin, EventTime(1))) {
            return Some(periods(sim.now() - fired, &cfg));
        }
    }
    None
}

/// How some members misbehave without crashing, for the false-positive experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slowness {
    /// Nobody.
    None,
    /// About every ten periods one of a few slow-prone members (one in sixteen) is paused
    /// (a GC pause, a stalled VM) for 1–4 s.
    Paused,
    /// Likewise, but the slow member's incoming messages are delayed 1–4 s while its own
    /// timers keep firing: Lifeguard's "slow message processing" (§III).
    SlowInbound,
}

/// False positives over one run.
#[derive(Clone, Debug, PartialEq)]
pub struct FalsePositives {
    /// Times a member declared a healthy member (never slowed) dead.
    pub healthy_declared_dead: usize,
    /// Times a member declared a slowed (paused or slow) member dead.
    pub slow_declared_dead: usize,
    /// Suspicions raised, in all.
    pub suspicions: u64,
    /// Member-periods simulated.
    pub member_periods: f64,
}

/// Run `nodes` members of `variant` for `periods` periods on a LAN losing `loss` of all
/// messages, with `slowness`; nobody crashes, so every declared death is false.
pub fn measure_false_positives(
    seed: u64,
    nodes: u32,
    periods: u32,
    loss: f64,
    variant: Variant,
    slowness: Slowness,
) -> Result<FalsePositives, String> {
    let cfg = variant.config(nodes);
    let period = cfg.probe_interval;
    let mut sim = swim_sim(seed, nodes, cfg, lan(loss));
    let mut rng = stream_rng(seed, 0xfa15);
    let mut slowed = BTreeSet::new();
    let all: Vec<NodeId> = (0..nodes).map(NodeId).collect();
    // A few slow-prone members (one in sixteen), as in Lifeguard's experiments; the rest
    // are healthy throughout.
    let prone: Vec<NodeId> = all
        .iter()
        .copied()
        .take((nodes as usize / 16).max(1))
        .collect();
    let end = period * periods;
    while sim.now() < end {
        // A new slow member about every ten periods.
        let gap = period.mul_f64(rng.gen_range(5.0..15.0));
        sim.run_for(gap.min(end - sim.now()))
            .map_err(|f| f.to_string())?;
        if sim.now() >= end || slowness == Slowness::None {
            continue;
        }
        let Some(&victim) = prone.choose(&mut rng) else {
            break;
        };
        let length = Duration::from_secs_f64(rng.gen_range(1.0..4.0));
        slowed.insert(victim);
        match slowness {
            Slowness::Paused => sim.pause(victim, length),
            Slowness::SlowInbound => {
                for &other in all.iter().filter(|&&n| n != victim) {
                    sim.clog(other, victim, length);
                }
            }
            Slowness::None => {}
        }
    }
    let healthy: BTreeSet<NodeId> = all
        .iter()
        .copied()
        .filter(|n| !slowed.contains(n))
        .collect();
    let all_set: BTreeSet<NodeId> = all.iter().copied().collect();
    let every = false_declarations(&sim, &all_set).len();
    let healthy_count = false_declarations(&sim, &healthy).len();
    Ok(FalsePositives {
        healthy_declared_dead: healthy_count,
        slow_declared_dead: every - healthy_count,
        suspicions: sim.actors().map(|(_, a)| a.counters().suspicions).sum(),
        member_periods: f64::from(nodes) * f64::from(periods),
    })
}

/// Run until `done` holds, checking after every event, or fail at `deadline`. Unlike
/// [`Sim::run_liveness`] this heals nothing, so crashed members stay crashed.
pub fn run_until_true(
    sim: &mut Sim<Swim>,
    deadline: Duration,
    done: impl Fn(&Sim<Swim>) -> bool,
) -> Result<Duration, String> {
    let step = Duration::from_millis(10);
    while sim.now() < deadline {
        if done(sim) {
            return Ok(sim.now());
        }
        sim.run_for(step).map_err(|f| f.to_string())?;
    }
    if done(sim) {
        return Ok(sim.now());
    }
    let views: Vec<String> = sim
        .actors()
        .map(|(n, a)| {
            let view: Vec<String> = a
                .members()
                .iter()
                .map(|m| format!("{}:{:?}@{}", m.node, m.status, m.incarnation))
                .collect();
            format!("{n} sees [{}]", view.join(" "))
        })
        .collect();
    Err(format!(
        "seed {}: not done by {:?}; views: {}",
        sim.config().seed,
        deadline,
        views.join("; ")
    ))
}

/// Send `request` to `node` from a client until a reply comes back (the network may lose
/// either), at most 20 times, 200 ms apart.
pub fn request(sim: &mut Sim<Swim>, node: NodeId, request: SwimRequest) -> Result<(), String> {
    for _ in 0..20 {
        sim.client_send(ClientId(1), node, SwimMsg::Request(request.clone()));
        sim.run_for(Duration::from_millis(200))
            .map_err(|f| f.to_string())?;
        if sim
            .take_replies()
            .iter()
            .any(|(_, from, m)| *from == node && matches!(m, SwimMsg::Reply(_)))
        {
            return Ok(());
        }
    }
    Err(format!("{node} never answered {request:?}"))
}
