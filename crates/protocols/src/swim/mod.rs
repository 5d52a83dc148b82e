//! # SWIM: membership, failure detection and dissemination, with Lifeguard
//!
//! Algorithm (Das, Gupta & Motivala, "SWIM: Scalable Weakly-consistent Infection-style
//! Process Group Membership Protocol", DSN 2002):
//!
//! - **Failure detection (§3.1, §4.3).** Every protocol period T each member probes one
//!   other member, chosen in randomized round-robin order: the member list is shuffled,
//!   walked in order and reshuffled at the end, and a newcomer is inserted at a random
//!   position. The probe is a `Ping`; without an `Ack` within the probe timeout the prober
//!   asks k other members to `PingReq` the target for it, and they forward any ack. A probe
//!   without an ack by the end of the period has failed.
//! - **Suspicion (§4.2).** A failed probe does not declare the target dead; it marks it
//!   *suspect* at its current incarnation number. A suspect that hears of it raises its own
//!   incarnation and gossips `Alive` (a refutation). A suspicion that is not refuted within
//!   the suspicion timeout becomes `Dead` (the paper's Confirm). Updates about a member are
//!   ordered by incarnation: Alive(i) beats Suspect(j) and Alive(j) iff i > j; Suspect(i)
//!   beats Alive(j) iff i ≥ j and Suspect(j) iff i > j; Dead beats both at i ≥ j. Only an
//!   Alive at a higher incarnation brings a dead member back (it rejoined).
//! - **Dissemination (§4.1).** Membership updates and user events ride piggybacked on
//!   pings, ping-reqs and acks. Each is sent λ·⌈log₁₀(N+1)⌉ times (the retransmit limit),
//!   least-sent first, so news reaches all N members in O(log N) periods with high
//!   probability. The suspicion timeout scales the same way: `suspicion_mult ·
//!   max(1, log₁₀ N) · T`.
//!
//! Refinements from Lifeguard (Dadgar, Phillips & Currey, "Lifeguard: Local Health
//! Awareness for More Accurate Failure Detection", 2017), on when [`SwimConfig::lifeguard`]:
//!
//! - **Local health multiplier (§IV-A).** A score 0..`awareness_max_multiplier` that rises
//!   when this node's own probes fail without the nacks that would show the fault is the
//!   target's, and when it must refute a suspicion of itself; it falls with every ack. The
//!   probe interval and probe timeout are multiplied by score + 1, so a slow node probes
//!   less and waits longer before it accuses anyone. Intermediaries of a `PingReq` send a
//!   `Nack` when the target did not answer them in time.
//! - **Dynamic suspicion timeout (§IV-B).** A suspicion starts at `suspicion_max_timeout_mult`
//!   times the SWIM timeout and shrinks logarithmically with each independent suspicion of
//!   the same member, to the SWIM timeout after K = `suspicion_mult − 2` confirmations.
//! - **Buddy system (§IV-C).** A ping to a member this node suspects carries that
//!   suspicion first, so the suspect learns of it in one hop and can refute at once.
//!
//! From memberlist and Serf (HashiCorp), the systems Lifeguard was measured in: periodic
//! full-state **push-pull** with a random member (a remote `Dead` merges as a suspicion);
//! **join** through seed nodes by push-pull; **graceful leave** (a member declares itself
//! dead, which others record as `Left` and never probe); a periodic **reconnect** push-pull
//! with a random dead member, which is how two halves of a healed partition find each
//! other again; per-member **metadata** carried by `Alive`; and **user events** with
//! Lamport times, deduplicated per (time, origin) and gossiped like updates. A message to a
//! member believed dead carries that verdict first ("gossip to the dead"), so a live member
//! that was wrongly declared dead refutes on its next contact.
//!
//! Fault and timing model: crash-recovery members, a network that loses, delays, reorders
//! and partitions messages. Detection is probabilistic: a crashed member is detected by some
//! member in e/(e−1) ≈ 1.58 periods in expectation (§3.1: each period it is chosen by at
//! least one of N−1 probers with probability 1 − (1 − 1/(N−1))^(N−1) → 1 − 1/e), and by
//! every member once the verdict has spread. Properties the tests check: **completeness**
//! (every crashed member is eventually declared dead by every live member), **accuracy at
//! 0% loss** (no live, connected member is ever declared dead), and **convergence** (after
//! a partition heals every live member sees every other live member alive).
//!
//! Nothing is persisted. A restarted member starts at incarnation 0 with its configured
//! view; the first member that tells it it was suspected or declared dead makes it refute
//! at a higher incarnation, which brings it back everywhere.
//!
//! Defaults ([`SwimConfig::default`]) are memberlist's LAN profile: 1 s probe interval,
//! 500 ms probe timeout, 3 indirect checks, suspicion multiplier 4, suspicion max-timeout
//! multiplier 6, retransmit multiplier 4, awareness multiplier 8, push-pull every 30 s.
//! See docs/swim.md.
//!
//! Differences from the chapter's sketch: the chapter's gossip picks random peers and
//! pushes its whole table; SWIM separates failure detection (one probe per period, O(1)
//! messages per member) from dissemination (piggybacked, bounded retransmits), and adds
//! suspicion with incarnations, without which one lost ack kills a live member.
//!
//! Inputs: [`SwimMsg`] from peers and [`SwimRequest`]s from clients. Effects: sends, client
//! replies and [`SwimTimer`]s. Other code reads the view with [`Swim::members`] and
//! [`Swim::changes_since`], or subscribes with [`SwimRequest::Subscribe`].

pub mod msg;
mod state;

#[cfg(any(test, feature = "harness"))]
pub mod harness;
#[cfg(test)]
mod tests;

pub use msg::{
    EventTime, Incarnation, MemberState, ProbeSeq, SwimMsg, SwimReply, SwimRequest, Update,
    UserEvent,
};

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use state::{BroadcastKey, BroadcastQueue, Suspicion};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use synod_core::{Actor, ClientId, Ctx, Endpoint, Instant, NodeId};

/// The largest member metadata, in bytes (memberlist's `MetaMaxSize`).
pub const MAX_META_BYTES: usize = 512;
/// The largest user event, name and payload together, in bytes.
pub const MAX_EVENT_BYTES: usize = 4096;
/// Events older than this many Lamport ticks behind the newest are dropped (Serf's
/// event buffer), which bounds the deduplication set.
const EVENT_BUFFER: u64 = 512;
/// At most this many piggybacked updates or push-pull entries are read from one message.
const MAX_UPDATES_READ: usize = 1 << 16;

/// SWIM's and Lifeguard's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct SwimConfig {
    /// T, the protocol period: one probe per period.
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking others to probe.
    pub probe_timeout: Duration,
    /// k, the number of members asked to probe indirectly.
    pub indirect_checks: usize,
    /// λ: each update is sent λ·⌈log₁₀(N+1)⌉ times.
    pub retransmit_mult: u32,
    /// The suspicion timeout is `suspicion_mult · max(1, log₁₀ N) · T`.
    pub suspicion_mult: u32,
    /// Lifeguard: a fresh suspicion lasts this many times the suspicion timeout.
    pub suspicion_max_timeout_mult: u32,
    /// Lifeguard: the local health multiplier ranges over 1..=this.
    pub awareness_max_multiplier: u32,
    /// Full-state exchange with a random live member this often.
    pub push_pull_interval: Duration,
    /// Full-state exchange with a random dead member this often (Serf's reconnect).
    pub reconnect_interval: Duration,
    /// Retry joining through the seeds this often until one answers.
    pub join_retry: Duration,
    /// At most this many updates ride on one message.
    pub max_piggyback: usize,
    /// Suspect before declaring dead (SWIM §4.2). Off: a failed probe declares the target
    /// dead at once (the basic SWIM of §3).
    pub suspicion: bool,
    /// Lifeguard's local health, dynamic suspicion timeouts, nacks and buddy system.
    pub lifeguard: bool,
    /// Members known from the start, alive at incarnation 0 (a static cluster file).
    pub known: Vec<NodeId>,
    /// Members to join through: this node pushes its state to them until one answers.
    pub seeds: Vec<NodeId>,
    /// This node's metadata.
    pub meta: Vec<u8>,
    /// Membership changes kept for [`Swim::changes_since`].
    pub change_log: usize,
}

impl Default for SwimConfig {
    /// memberlist's `DefaultLANConfig` for every parameter that both have.
    fn default() -> Self {
        SwimConfig {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            retransmit_mult: 4,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            awareness_max_multiplier: 8,
            push_pull_interval: Duration::from_secs(30),
            reconnect_interval: Duration::from_secs(30),
            join_retry: Duration::from_secs(1),
            max_piggyback: 16,
            suspicion: true,
            lifeguard: true,
            known: Vec::new(),
            seeds: Vec::new(),
            meta: Vec::new(),
            change_log: 1024,
        }
    }
}

impl SwimConfig {
    /// The defaults, with every node of `0..nodes` known from the start.
    pub fn with_members(nodes: u32) -> Self {
        SwimConfig {
            known: (0..nodes).map(NodeId).collect(),
            ..SwimConfig::default()
        }
    }
}

/// A member's status in one node's view.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Answering probes, as far as this node knows.
    Alive,
    /// A probe failed; dead unless it refutes within the suspicion timeout.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left gracefully.
    Left,
}

impl MemberStatus {
    /// Alive or suspect: still a member for probing and counting N.
    pub fn is_live(self) -> bool {
        matches!(self, MemberStatus::Alive | MemberStatus::Suspect)
    }
}

/// One member as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member.
    pub node: NodeId,
    /// Its status.
    pub status: MemberStatus,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// Its metadata.
    pub meta: Vec<u8>,
}

/// A change in one node's view, numbered so that a reader can resume after the last one
/// it saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    /// Position in this node's change log, from 1.
    pub seq: u64,
    /// When, on this node's clock.
    pub at: Instant,
    /// The member.
    pub node: NodeId,
    /// Its status before, `None` if it was unknown.
    pub previous: Option<MemberStatus>,
    /// Its status now.
    pub status: MemberStatus,
    /// Its incarnation now.
    pub incarnation: Incarnation,
}

/// Per-node counters, for the experiments. Volatile: a crash resets them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwimCounters {
    /// Probes started.
    pub probes: u64,
    /// Probes that got no ack by the end of their period.
    pub probe_failures: u64,
    /// Failure-detector messages sent: ping, ping-req, ack, nack.
    pub sent_probe: u64,
    /// Push-pull and leave messages sent.
    pub sent_other: u64,
    /// Messages received from peers.
    pub received: u64,
    /// Members this node marked suspect.
    pub suspicions: u64,
    /// Members this node marked dead (not counting graceful leaves).
    pub declared_dead: u64,
    /// Times this node refuted a suspicion or death of itself.
    pub refutations: u64,
}

/// Timers of a SWIM node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SwimTimer {
    /// The protocol period: conclude the last probe and start the next.
    Probe,
    /// The direct probe went unanswered: ask others.
    ProbeTimeout,
    /// An indirect probe made for someone else timed out (send a nack, forget it).
    Relay(ProbeSeq),
    /// A suspicion of this member may have expired.
    Suspicion(NodeId),
    /// Time for a push-pull with a live member.
    PushPull,
    /// Time for a push-pull with a dead member.
    Reconnect,
    /// No seed has answered yet: try again.
    Join,
}

#[derive(Clone, Debug)]
struct Member {
    status: MemberStatus,
    incarnation: Incarnation,
    meta: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Probe {
    seq: ProbeSeq,
    target: NodeId,
    acked: bool,
    expected_nacks: u32,
    nacks: u32,
}

#[derive(Clone, Copy, Debug)]
struct Relay {
    origin: NodeId,
    seq: ProbeSeq,
}

/// A SWIM member.
pub struct Swim {
    cfg: SwimConfig,
    me: NodeId,
    incarnation: Incarnation,
    meta: Vec<u8>,
    members: BTreeMap<NodeId, Member>,
    probe_order: Vec<NodeId>,
    probe_index: usize,
    probe: Option<Probe>,
    relays: BTreeMap<ProbeSeq, Relay>,
    next_seq: u64,
    suspicions: BTreeMap<NodeId, Suspicion>,
    broadcasts: BroadcastQueue,
    awareness: u32,
    joined: bool,
    left: bool,
    event_clock: EventTime,
    seen_events: BTreeSet<(EventTime, NodeId)>,
    events: VecDeque<UserEvent>,
    changes: VecDeque<MembershipChange>,
    change_seq: u64,
    subscribers: BTreeSet<ClientId>,
    counters: SwimCounters,
}

impl Swim {
    /// Member `me` with configuration `cfg`.
    pub fn new(me: NodeId, cfg: SwimConfig) -> Self {
        Swim {
            meta: cfg.meta.clone(),
            cfg,
            me,
            incarnation: Incarnation(0),
            members: BTreeMap::new(),
            probe_order: Vec::new(),
            probe_index: 0,
            probe: None,
            relays: BTreeMap::new(),
            next_seq: 0,
            suspicions: BTreeMap::new(),
            broadcasts: BroadcastQueue::default(),
            awareness: 0,
            joined: false,
            left: false,
            event_clock: EventTime(0),
            seen_events: BTreeSet::new(),
            events: VecDeque::new(),
            changes: VecDeque::new(),
            change_seq: 0,
            subscribers: BTreeSet::new(),
            counters: SwimCounters::default(),
        }
    }

    // ---- the view, for other code ----------------------------------------------------

    /// Every member this node knows, itself included, with status and incarnation.
    pub fn members(&self) -> Vec<MemberInfo> {
        let mut out: Vec<MemberInfo> = self
            .members
            .iter()
            .map(|(&node, m)| MemberInfo {
                node,
                status: m.status,
                incarnation: m.incarnation,
                meta: m.meta.clone(),
            })
            .collect();
        let me = self.self_info();
        let at = out.partition_point(|m| m.node < self.me);
        out.insert(at, me);
        out
    }

    /// The status of `node` in this node's view.
    pub fn status_of(&self, node: NodeId) -> Option<MemberStatus> {
        if node == self.me {
            return Some(self.self_info().status);
        }
        self.members.get(&node).map(|m| m.status)
    }

    /// The incarnation of `node` in this node's view.
    pub fn incarnation_of(&self, node: NodeId) -> Option<Incarnation> {
        if node == self.me {
            return Some(self.incarnation);
        }
        self.members.get(&node).map(|m| m.incarnation)
    }

    /// The members this node believes alive, itself included.
    pub fn alive(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = (!self.left).then_some(self.me);
        me.into_iter().chain(
            self.members
                .iter()
                .filter(|(_, m)| m.status == MemberStatus::Alive)
                .map(|(&n, _)| n),
        )
    }

    /// Changes after `seq` still in the log (it keeps the last
    /// [`SwimConfig::change_log`]). Resume from the last change's `seq`.
    pub fn changes_since(&self, seq: u64) -> impl Iterator<Item = &MembershipChange> {
        self.changes.iter().filter(move |c| c.seq > seq)
    }

    /// User events delivered here, oldest first (the last 1024).
    pub fn events(&self) -> impl Iterator<Item = &UserEvent> {
        self.events.iter()
    }

    /// Whether the event `(origin, time)` has been delivered here.
    pub fn has_event(&self, origin: NodeId, time: EventTime) -> bool {
        self.seen_events.contains(&(time, origin))
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Lifeguard's local health score: probes are slowed by a factor of score + 1.
    pub fn awareness(&self) -> u32 {
        self.awareness
    }

    /// The member this node is probing now, if any.
    pub fn probe_target(&self) -> Option<NodeId> {
        self.probe.as_ref().map(|p| p.target)
    }

    /// Whether this node has left the group.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Counters since the last start.
    pub fn counters(&self) -> SwimCounters {
        self.counters
    }

    /// Updates waiting to be gossiped.
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len()
    }

    fn self_info(&self) -> MemberInfo {
        MemberInfo {
            node: self.me,
            status: if self.left {
                MemberStatus::Left
            } else {
                MemberStatus::Alive
            },
            incarnation: self.incarnation,
            meta: self.meta.clone(),
        }
    }

    // ---- derived parameters ----------------------------------------------------------

    /// N: live members, this one included.
    fn group_size(&self) -> usize {
        1 + self.members.values().filter(|m| m.status.is_live()).count()
    }

    /// λ·⌈log₁₀(N+1)⌉ (memberlist's `retransmitLimit`).
    fn retransmit_limit(&self) -> u32 {
        let scale = ((self.group_size() + 1) as f64).log10().ceil().max(1.0) as u32;
        self.cfg.retransmit_mult.max(1) * scale
    }

    /// `suspicion_mult · max(1, log₁₀ N) · T`.
    fn suspicion_min(&self) -> Duration {
        let scale = (self.group_size().max(1) as f64).log10().max(1.0);
        self.cfg
            .probe_interval
            .mul_f64(f64::from(self.cfg.suspicion_mult) * scale)
    }

    /// Lifeguard's local health multiplier.
    fn health_multiplier(&self) -> u32 {
        if self.cfg.lifeguard {
            self.awareness + 1
        } else {
            1
        }
    }

    fn raise_awareness(&mut self, by: u32) {
        if self.cfg.lifeguard {
            let max = self.cfg.awareness_max_multiplier.max(1) - 1;
            self.awareness = (self.awareness + by).min(max);
        }
    }

    // ---- sending ---------------------------------------------------------------------

    /// Gossip for one message to `to`: first what `to` most needs to hear about itself
    /// (Lifeguard's buddy system for suspects; the verdict for members we think dead),
    /// then the queue.
    fn piggyback(&mut self, to: NodeId) -> Vec<Update> {
        let mut out = Vec::new();
        let mut skip = None;
        if let Some(m) = self.members.get(&to) {
            let about_them = match m.status {
                MemberStatus::Suspect if self.cfg.lifeguard => Some(Update::Suspect {
                    node: to,
                    incarnation: m.incarnation,
                    from: self.me,
                }),
                MemberStatus::Dead => Some(Update::Dead {
                    node: to,
                    incarnation: m.incarnation,
                    from: self.me,
                }),
                _ => None,
            };
            if let Some(update) = about_them {
                let key = BroadcastKey::Member(to);
                out.push(self.broadcasts.get(&key).cloned().unwrap_or(update));
                skip = Some(key);
            }
        }
        let room = self.cfg.max_piggyback.saturating_sub(out.len());
        let limit = self.retransmit_limit();
        out.extend(self.broadcasts.take(room, limit, skip));
        out
    }

    fn send_probe_msg(&mut self, ctx: &mut SwimCtx<'_>, to: NodeId, msg: SwimMsg) {
        self.counters.sent_probe += 1;
        // Nothing is persisted, so nothing needs to wait for a sync.
        ctx.send_unsynced(to, msg);
    }

    fn send_other(&mut self, ctx: &mut SwimCtx<'_>, to: NodeId, msg: SwimMsg) {
        self.counters.sent_other += 1;
        ctx.send_unsynced(to, msg);
    }

    fn state_snapshot(&self) -> Vec<MemberState> {
        self.members()
            .into_iter()
            .map(|m| MemberState {
                node: m.node,
                incarnation: m.incarnation,
                status: m.status,
                meta: m.meta,
            })
            .collect()
    }

    fn record_change(
        &mut self,
        ctx: &mut SwimCtx<'_>,
        node: NodeId,
        previous: Option<MemberStatus>,
        status: MemberStatus,
        incarnation: Incarnation,
    ) {
        self.change_seq += 1;
        let change = MembershipChange {
            seq: self.change_seq,
            at: ctx.now(),
            node,
            previous,
            status,
            incarnation,
        };
        for &client in &self.subscribers {
            ctx.reply(client, SwimMsg::Reply(SwimReply::Change(change.clone())));
        }
        self.changes.push_back(change);
        while self.changes.len() > self.cfg.change_log.max(1) {
            self.changes.pop_front();
        }
    }

    /// Raise our incarnation above `seen` and gossip that we are alive (§4.2).
    fn refute(&mut self, seen: Incarnation) {
        self.incarnation = Incarnation(self.incarnation.0.max(seen.0) + 1);
        self.counters.refutations += 1;
        self.raise_awareness(1);
        self.broadcasts.push(self.alive_update());
    }

    fn alive_update(&self) -> Update {
        Update::Alive {
            node: self.me,
            incarnation: self.incarnation,
            meta: self.meta.clone(),
        }
    }

    fn add_to_probe_order(&mut self, ctx: &mut SwimCtx<'_>, node: NodeId) {
        if self.probe_order.contains(&node) {
            return;
        }
        // §4.3: a newcomer goes to a uniformly random position of the round.
        let at = ctx.rng().gen_range(0..=self.probe_order.len());
        self.probe_order.insert(at, node);
        if at < self.probe_index {
            self.probe_index += 1;
        }
    }

    // ---- merging updates (§4.2's ordering) ---------------------------------------------

    fn apply(&mut self, ctx: &mut SwimCtx<'_>, update: Update) {
        match update {
            Update::Alive {
                node,
                incarnation,
                meta,
            } => self.on_alive(ctx, node, incarnation, meta),
            Update::Suspect {
                node,
                incarnation,
                from,
            } => self.on_suspect(ctx, node, incarnation, from),
            Update::Dead {
                node,
                incarnation,
                from,
            } => self.on_dead(ctx, node, incarnation, from),
            Update::Event(event) => self.on_event(event),
        }
    }

    fn on_alive(
        &mut self,
        ctx: &mut SwimCtx<'_>,
        node: NodeId,
        incarnation: Incarnation,
        meta: Vec<u8>,
    ) {
        if meta.len() > MAX_META_BYTES {
            return;
        }
        if node == self.me {
            // Someone speaks for a newer (or conflicting) us: an earlier life of this
            // node. Outbid it.
            if incarnation > self.incarnation
                || (incarnation == self.incarnation && meta != self.meta)
            {
                self.refute(incarnation);
            }
            return;
        }
        let previous = self.members.get(&node).map(|m| m.status);
        match self.members.get_mut(&node) {
            Some(m) if incarnation <= m.incarnation => return,
            Some(m) => {
                m.status = MemberStatus::Alive;
                m.incarnation = incarnation;
                m.meta = meta.clone();
            }
            None => {
                self.members.insert(
                    node,
                    Member {
                        status: MemberStatus::Alive,
                        incarnation,
                        meta: meta.clone(),
                    },
                );
            }
        }
        if self.suspicions.remove(&node).is_some() {
            ctx.cancel_timer(SwimTimer::Suspicion(node));
        }
        if !previous.is_some_and(MemberStatus::is_live) {
            self.add_to_probe_order(ctx, node);
        }
        self.record_change(ctx, node, previous, MemberStatus::Alive, incarnation);
        self.broadcasts.push(Update::Alive {
            node,
            incarnation,
            meta,
        });
    }

    fn on_suspect(
        &mut self,
        ctx: &mut SwimCtx<'_>,
        node: NodeId,
        incarnation: Incarnation,
        from: NodeId,
    ) {
        if node == self.me {
            if incarnation >= self.incarnation && !self.left {
                self.refute(incarnation);
            }
            return;
        }
        let n = self.group_size();
        let Some(m) = self.members.get_mut(&node) else {
            return;
        };
        if incarnation < m.incarnation || !m.status.is_live() {
            return;
        }
        if m.status == MemberStatus::Suspect && incarnation == m.incarnation {
            // Lifeguard §IV-B: an independent suspicion confirms and shortens ours.
            if let Some(s) = self.suspicions.get_mut(&node) {
                if s.confirmations() < s.expected && s.confirmers.insert(from) {
                    let remaining = s.deadline().saturating_duration_since(ctx.now());
                    ctx.set_timer(SwimTimer::Suspicion(node), remaining);
                    self.broadcasts.push(Update::Suspect {
                        node,
                        incarnation,
                        from,
                    });
                }
            }
            return;
        }
        let previous = m.status;
        m.status = MemberStatus::Suspect;
        m.incarnation = incarnation;
        self.counters.suspicions += 1;
        let min = self.suspicion_min();
        let (expected, max) = if self.cfg.lifeguard {
            // memberlist: K = suspicion_mult − 2 confirmations, none in a tiny group.
            let k = self.cfg.suspicion_mult.saturating_sub(2) as usize;
            let k = if n.saturating_sub(2) < k { 0 } else { k };
            (
                k,
                min.mul_f64(f64::from(self.cfg.suspicion_max_timeout_mult.max(1))),
            )
        } else {
            (0, min)
        };
        let suspicion = Suspicion::new(ctx.now(), from, expected, min, max);
        ctx.set_timer(SwimTimer::Suspicion(node), suspicion.timeout());
        self.suspicions.insert(node, suspicion);
        self.record_change(
            ctx,
            node,
            Some(previous),
            MemberStatus::Suspect,
            incarnation,
        );
        self.broadcasts.push(Update::Suspect {
            node,
            incarnation,
            from,
        });
    }

    fn on_dead(
        &mut self,
        ctx: &mut SwimCtx<'_>,
        node: NodeId,
        incarnation: Incarnation,
        from: NodeId,
    ) {
        if node == self.me {
            if incarnation >= self.incarnation && !self.left {
                self.refute(incarnation);
            }
            return;
        }
        let Some(m) = self.members.get_mut(&node) else {
            return;
        };
        if incarnation < m.incarnation || !m.status.is_live() {
            return;
        }
        let previous = m.status;
        let status = if from == node {
            MemberStatus::Left
        } else {
            MemberStatus::Dead
        };
        m.status = status;
        m.incarnation = incarnation;
        if status == MemberStatus::Dead {
            self.counters.declared_dead += 1;
        }
        if self.suspicions.remove(&node).is_some() {
            ctx.cancel_timer(SwimTimer::Suspicion(node));
        }
        self.record_change(ctx, node, Some(previous), status, incarnation);
        self.broadcasts.push(Update::Dead {
            node,
            incarnation,
            from,
        });
    }

    fn on_event(&mut self, event: UserEvent) {
        if event.name.len() + event.payload.len() > MAX_EVENT_BYTES {
            return;
        }
        // Lamport's rule: the clock passes every time it sees.
        self.event_clock = self.event_clock.max(event.time);
        let horizon = self.event_clock.0.saturating_sub(EVENT_BUFFER);
        if event.time.0 < horizon || !self.seen_events.insert((event.time, event.origin)) {
            return;
        }
        while let Some(&oldest) = self.seen_events.first() {
            if oldest.0 .0 >= horizon {
                break;
            }
            self.seen_events.pop_first();
        }
        self.events.push_back(event.clone());
        while self.events.len() > 1024 {
            self.events.pop_front();
        }
        self.broadcasts.push(Update::Event(event));
    }

    fn merge_updates(&mut self, ctx: &mut SwimCtx<'_>, updates: Vec<Update>) {
        for update in updates.into_iter().take(MAX_UPDATES_READ) {
            self.apply(ctx, update);
        }
    }

    /// memberlist's push-pull merge: a remote suspicion or death becomes a local
    /// suspicion (the remote view may be stale), a leave stays a leave.
    fn merge_state(&mut self, ctx: &mut SwimCtx<'_>, from: NodeId, state: Vec<MemberState>) {
        for entry in state.into_iter().take(MAX_UPDATES_READ) {
            match entry.status {
                MemberStatus::Alive => {
                    self.on_alive(ctx, entry.node, entry.incarnation, entry.meta)
                }
                MemberStatus::Suspect | MemberStatus::Dead => {
                    self.on_suspect(ctx, entry.node, entry.incarnation, from)
                }
                MemberStatus::Left => self.on_dead(ctx, entry.node, entry.incarnation, entry.node),
            }
        }
    }

    // ---- probing (§3.1, §4.3) -----------------------------------------------------------

    fn next_target(&mut self, ctx: &mut SwimCtx<'_>) -> Option<NodeId> {
        for _ in 0..2 {
            while self.probe_index < self.probe_order.len() {
                let node = self.probe_order[self.probe_index];
                self.probe_index += 1;
                if self.members.get(&node).is_some_and(|m| m.status.is_live()) {
                    return Some(node);
                }
            }
            // End of a round: reshuffle the live members for the next one.
            let mut order: Vec<NodeId> = self
                .members
                .iter()
                .filter(|(_, m)| m.status.is_live())
                .map(|(&n, _)| n)
                .collect();
            order.shuffle(ctx.rng());
            self.probe_order = order;
            self.probe_index = 0;
        }
        None
    }

    fn conclude_probe(&mut self, ctx: &mut SwimCtx<'_>) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        if probe.acked {
            return;
        }
        self.counters.probe_failures += 1;
        // Lifeguard §IV-A: if the intermediaries all nacked, they are alive and could not
        // reach the target either, so the fault is likely the target's, not ours. Every
        // missing nack, or no one to ask, counts against our own health.
        let penalty = if probe.expected_nacks > 0 {
            probe.expected_nacks.saturating_sub(probe.nacks)
        } else {
            1
        };
        self.raise_awareness(penalty);
        let Some(m) = self.members.get(&probe.target) else {
            return;
        };
        if !m.status.is_live() {
            return;
        }
        let incarnation = m.incarnation;
        if self.cfg.suspicion {
            self.on_suspect(ctx, probe.target, incarnation, self.me);
        } else {
            self.on_dead(ctx, probe.target, incarnation, self.me);
        }
    }

    fn on_probe_tick(&mut self, ctx: &mut SwimCtx<'_>) {
        self.conclude_probe(ctx);
        let multiplier = self.health_multiplier();
        ctx.set_timer(SwimTimer::Probe, self.cfg.probe_interval * multiplier);
        let Some(target) = self.next_target(ctx) else {
            return;
        };
        self.next_seq += 1;
        let seq = ProbeSeq(self.next_seq);
        self.probe = Some(Probe {
            seq,
            target,
            acked: false,
            expected_nacks: 0,
            nacks: 0,
        });
        self.counters.probes += 1;
        let updates = self.piggyback(target);
        self.send_probe_msg(
            ctx,
            target,
            SwimMsg::Ping {
                seq,
                target,
                updates,
            },
        );
        ctx.set_timer(SwimTimer::ProbeTimeout, self.cfg.probe_timeout * multiplier);
    }

    fn on_probe_timeout(&mut self, ctx: &mut SwimCtx<'_>) {
        let Some(probe) = &self.probe else {
            return;
        };
        if probe.acked {
            return;
        }
        let (seq, target) = (probe.seq, probe.target);
        let mut helpers: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(&n, m)| n != target && m.status == MemberStatus::Alive)
            .map(|(&n, _)| n)
            .collect();
        helpers.shuffle(ctx.rng());
        helpers.truncate(self.cfg.indirect_checks);
        if self.cfg.lifeguard {
            if let Some(p) = &mut self.probe {
                p.expected_nacks = helpers.len() as u32;
            }
        }
        for helper in helpers {
            let updates = self.piggyback(helper);
            self.send_probe_msg(
                ctx,
                helper,
                SwimMsg::PingReq {
                    seq,
                    target,
                    updates,
                },
            );
        }
    }

    fn on_ack(&mut self, ctx: &mut SwimCtx<'_>, seq: ProbeSeq) {
        if let Some(probe) = &mut self.probe {
            if probe.seq == seq {
                if !probe.acked {
                    probe.acked = true;
                    self.awareness = self.awareness.saturating_sub(1);
                }
                return;
            }
        }
        if let Some(relay) = self.relays.remove(&seq) {
            ctx.cancel_timer(SwimTimer::Relay(seq));
            let updates = self.piggyback(relay.origin);
            self.send_probe_msg(
                ctx,
                relay.origin,
                SwimMsg::Ack {
                    seq: relay.seq,
                    updates,
                },
            );
        }
    }

    fn on_ping_req(
        &mut self,
        ctx: &mut SwimCtx<'_>,
        origin: NodeId,
        seq: ProbeSeq,
        target: NodeId,
    ) {
        if target == self.me {
            let updates = self.piggyback(origin);
            self.send_probe_msg(ctx, origin, SwimMsg::Ack { seq, updates });
            return;
        }
        self.next_seq += 1;
        let mine = ProbeSeq(self.next_seq);
        self.relays.insert(mine, Relay { origin, seq });
        let updates = self.piggyback(target);
        self.send_probe_msg(
            ctx,
            target,
            SwimMsg::Ping {
                seq: mine,
                target,
                updates,
            },
        );
        // Lifeguard: nack before the requester's own period ends (memberlist waits 80%
        // of the probe timeout). Without Lifeguard the entry just expires.
        let after = if self.cfg.lifeguard {
            self.cfg.probe_timeout.mul_f64(0.8)
        } else {
            self.cfg.probe_interval
        };
        ctx.set_timer(SwimTimer::Relay(mine), after);
    }

    fn on_relay_timeout(&mut self, ctx: &mut SwimCtx<'_>, mine: ProbeSeq) {
        if let Some(relay) = self.relays.remove(&mine) {
            if self.cfg.lifeguard {
                self.send_probe_msg(ctx, relay.origin, SwimMsg::Nack { seq: relay.seq });
            }
        }
    }

    fn on_suspicion_timer(&mut self, ctx: &mut SwimCtx<'_>, node: NodeId) {
        let Some(s) = self.suspicions.get(&node) else {
            return;
        };
        let deadline = s.deadline();
        if ctx.now() < deadline {
            ctx.set_timer(SwimTimer::Suspicion(node), deadline - ctx.now());
            return;
        }
        self.suspicions.remove(&node);
        if let Some(m) = self.members.get(&node) {
            if m.status == MemberStatus::Suspect {
                let incarnation = m.incarnation;
                self.on_dead(ctx, node, incarnation, self.me);
            }
        }
    }

    fn push_pull_with(&mut self, ctx: &mut SwimCtx<'_>, to: NodeId) {
        let state = self.state_snapshot();
        self.send_other(ctx, to, SwimMsg::PushPull { reply: true, state });
    }

    fn random_member(&self, ctx: &mut SwimCtx<'_>, status: MemberStatus) -> Option<NodeId> {
        let candidates: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| m.status == status)
            .map(|(&n, _)| n)
            .collect();
        candidates.choose(ctx.rng()).copied()
    }

    // ---- client requests ---------------------------------------------------------------

    fn on_request(&mut self, ctx: &mut SwimCtx<'_>, client: ClientId, request: SwimRequest) {
        let reply = match request {
            SwimRequest::Members => SwimReply::Members(self.members()),
            SwimRequest::Subscribe => {
                self.subscribers.insert(client);
                SwimReply::Done
            }
            SwimRequest::Leave => {
                self.leave(ctx);
                SwimReply::Done
            }
            SwimRequest::SetMeta(meta) if meta.len() > MAX_META_BYTES => {
                SwimReply::Refused(format!(
                    "metadata is {} bytes; the limit is {MAX_META_BYTES}",
                    meta.len()
                ))
            }
            SwimRequest::SetMeta(_) | SwimRequest::FireEvent { .. } if self.left => {
                SwimReply::Refused("this node has left the group".to_string())
            }
            SwimRequest::SetMeta(meta) => {
                self.meta = meta;
                self.incarnation.0 += 1;
                self.broadcasts.push(self.alive_update());
                SwimReply::Done
            }
            SwimRequest::FireEvent { name, payload }
                if name.len() + payload.len() > MAX_EVENT_BYTES =>
            {
                SwimReply::Refused(format!(
                    "event is {} bytes; the limit is {MAX_EVENT_BYTES}",
                    name.len() + payload.len()
                ))
            }
            SwimRequest::FireEvent { name, payload } => {
                self.event_clock.0 += 1;
                let event = UserEvent {
                    origin: self.me,
                    time: self.event_clock,
                    name,
                    payload,
                };
                self.on_event(event);
                SwimReply::Done
            }
        };
        ctx.reply(client, SwimMsg::Reply(reply));
    }

    /// Graceful leave: declare ourselves dead, tell a few members directly so that the
    /// news spreads without us, and go silent.
    fn leave(&mut self, ctx: &mut SwimCtx<'_>) {
        if self.left {
            return;
        }
        self.left = true;
        let update = Update::Dead {
            node: self.me,
            incarnation: self.incarnation,
            from: self.me,
        };
        let mut targets: Vec<NodeId> = self.alive().filter(|&n| n != self.me).collect();
        targets.shuffle(ctx.rng());
        targets.truncate(self.retransmit_limit() as usize);
        for to in targets {
            self.send_other(
                ctx,
                to,
                SwimMsg::Gossip {
                    updates: vec![update.clone()],
                },
            );
        }
        for timer in [
            SwimTimer::Probe,
            SwimTimer::ProbeTimeout,
            SwimTimer::PushPull,
            SwimTimer::Reconnect,
            SwimTimer::Join,
        ] {
            ctx.cancel_timer(timer);
        }
        self.probe = None;
        let incarnation = self.incarnation;
        self.record_change(
            ctx,
            self.me,
            Some(MemberStatus::Alive),
            MemberStatus::Left,
            incarnation,
        );
    }
}

type SwimCtx<'a> = Ctx<'a, SwimMsg, SwimTimer>;

impl Actor for Swim {
    type Msg = SwimMsg;
    type Timer = SwimTimer;

    fn on_start(&mut self, ctx: &mut SwimCtx<'_>) {
        self.me = ctx.me();
        for node in self.cfg.known.clone() {
            if node != self.me && !self.members.contains_key(&node) {
                self.members.insert(
                    node,
                    Member {
                        status: MemberStatus::Alive,
                        incarnation: Incarnation(0),
                        meta: Vec::new(),
                    },
                );
            }
        }
        self.probe_order = self.members.keys().copied().collect();
        self.probe_order.shuffle(ctx.rng());
        // Announce ourselves: whoever hears this learns our metadata and incarnation.
        self.broadcasts.push(self.alive_update());
        // Start the period at a random phase so that members do not probe in lockstep.
        let phase = |ctx: &mut SwimCtx<'_>, d: Duration| d.mul_f64(ctx.rng().gen_range(0.0..1.0));
        let first_probe = phase(ctx, self.cfg.probe_interval);
        ctx.set_timer(SwimTimer::Probe, first_probe);
        let first_push_pull = phase(ctx, self.cfg.push_pull_interval);
        ctx.set_timer(SwimTimer::PushPull, first_push_pull);
        let first_reconnect = phase(ctx, self.cfg.reconnect_interval);
        ctx.set_timer(SwimTimer::Reconnect, first_reconnect);
        self.on_join_timer(ctx);
    }

    fn on_message(&mut self, ctx: &mut SwimCtx<'_>, from: Endpoint, msg: SwimMsg) {
        let from = match (from, msg) {
            (Endpoint::Client(client), SwimMsg::Request(request)) => {
                return self.on_request(ctx, client, request);
            }
            (Endpoint::Node(node), msg) if node != self.me && !self.left => (node, msg),
            _ => return,
        };
        self.counters.received += 1;
        match from {
            (
                from,
                SwimMsg::Ping {
                    seq,
                    target,
                    updates,
                },
            ) => {
                self.merge_updates(ctx, updates);
                if target == self.me {
                    let updates = self.piggyback(from);
                    self.send_probe_msg(ctx, from, SwimMsg::Ack { seq, updates });
                }
            }
            (
                from,
                SwimMsg::PingReq {
                    seq,
                    target,
                    updates,
                },
            ) => {
                self.merge_updates(ctx, updates);
                self.on_ping_req(ctx, from, seq, target);
            }
            (_, SwimMsg::Ack { seq, updates }) => {
                self.merge_updates(ctx, updates);
                self.on_ack(ctx, seq);
            }
            (_, SwimMsg::Nack { seq }) => {
                if let Some(p) = &mut self.probe {
                    if p.seq == seq {
                        p.nacks += 1;
                    }
                }
            }
            (_, SwimMsg::Gossip { updates }) => self.merge_updates(ctx, updates),
            (from, SwimMsg::PushPull { reply, state }) => {
                if !self.joined {
                    self.joined = true;
                    ctx.cancel_timer(SwimTimer::Join);
                }
                self.merge_state(ctx, from, state);
                // Reply after merging, so the answer carries any refutation it caused.
                if reply {
                    let state = self.state_snapshot();
                    self.send_other(
                        ctx,
                        from,
                        SwimMsg::PushPull {
                            reply: false,
                            state,
                        },
                    );
                }
            }
            (_, SwimMsg::Request(_) | SwimMsg::Reply(_)) => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut SwimCtx<'_>, timer: SwimTimer) {
        if self.left {
            return;
        }
        match timer {
            SwimTimer::Probe => self.on_probe_tick(ctx),
            SwimTimer::ProbeTimeout => self.on_probe_timeout(ctx),
            SwimTimer::Relay(seq) => self.on_relay_timeout(ctx, seq),
            SwimTimer::Suspicion(node) => self.on_suspicion_timer(ctx, node),
            SwimTimer::PushPull => {
                ctx.set_timer(SwimTimer::PushPull, self.cfg.push_pull_interval);
                if let Some(to) = self.random_member(ctx, MemberStatus::Alive) {
                    self.push_pull_with(ctx, to);
                }
            }
            SwimTimer::Reconnect => {
                ctx.set_timer(SwimTimer::Reconnect, self.cfg.reconnect_interval);
                if let Some(to) = self.random_member(ctx, MemberStatus::Dead) {
                    self.push_pull_with(ctx, to);
                }
            }
            SwimTimer::Join => self.on_join_timer(ctx),
        }
    }
}

impl Swim {
    fn on_join_timer(&mut self, ctx: &mut SwimCtx<'_>) {
        let seeds: Vec<NodeId> = self
            .cfg
            .seeds
            .iter()
            .copied()
            .filter(|&s| s != self.me)
            .collect();
        if self.joined || seeds.is_empty() {
            return;
        }
        for seed in seeds {
            self.push_pull_with(ctx, seed);
        }
        ctx.set_timer(SwimTimer::Join, self.cfg.join_retry);
    }
}
