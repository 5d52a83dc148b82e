//! # The bully algorithm: the highest live id takes over
//!
//! Algorithm (Garcia-Molina, "Elections in a Distributed Computing System", IEEE Trans.
//! Computers C-31(1), 1982, §4, the "Bully Algorithm"): a node that suspects the leader
//! (or has just started, e.g. after recovering from a crash) holds an election:
//!
//! 1. It sends `Election` to every higher id and waits `answer_timeout`.
//! 2. A live higher node answers `Answer` ("I'll take over") and holds its own election.
//! 3. If no answer comes, the node is the highest live id: it becomes leader and sends
//!    `Coordinator` to every lower id.
//! 4. If an answer comes but no `Coordinator` follows within `coordinator_timeout`, the
//!    higher node died mid-election: start over.
//! 5. A node receiving `Coordinator` from a lower id bullies: it starts its own election,
//!    which it wins. So a recovered higher node always takes over.
//!
//! Failure detection (outside the paper's election proper): the leader sends `Alive` to
//! every node each `heartbeat_interval`; a node that hears nothing for `leader_timeout`
//! starts an election. `Alive` messages are counted as heartbeats, not election messages.
//!
//! Messages: N−1 in the best case (the highest node recovers and announces); O(N²) in the
//! worst case (the lowest node starts, and every node above it holds its own election).
//!
//! Fault and timing model: Garcia-Molina's synchronous model: message delay and handling
//! time are bounded, so a timeout means a crash. Nodes crash and recover (state is
//! volatile; a recovered node simply starts an election). No partitions: under a
//! partition each side elects its own leader, which is the known weakness of the
//! algorithm, and timeouts shorter than a pause can elect a second leader while the
//! paused one still believes in itself.
//!
//! Invariant (checked once stable): every live node believes in the highest live id.
//!
//! Differences from the chapter: the chapter's `send_with_timeout` blocks, a node that
//! got an answer waits forever for a coordinator that may have crashed (rule 4 is
//! missing), a `Coordinator` from a lower node is accepted, and there is no failure
//! detector, so a crashed leader is never replaced.

use super::{ElectionCounters, LeaderElection};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use synod_core::{Actor, Ctx, Endpoint, NodeId};

/// Messages of the bully algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BullyMsg {
    /// To a higher id: I am holding an election.
    Election,
    /// To a lower id: I am alive and will take over.
    Answer,
    /// To lower ids: I am the leader.
    Coordinator,
    /// Leader heartbeat.
    Alive,
}

/// Timers of the bully algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BullyTimer {
    /// No `Answer` came from a higher id: become leader.
    AnswerTimeout,
    /// An answer came but no `Coordinator` followed: elect again.
    CoordinatorTimeout,
    /// Leader: time to send `Alive`.
    Heartbeat,
    /// Follower: the leader has been silent too long.
    LeaderTimeout,
}

/// Timeouts of the bully algorithm. They must exceed the round trip the synchronous model
/// bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BullyConfig {
    /// How long to wait for an `Answer`.
    pub answer_timeout: Duration,
    /// How long to wait for `Coordinator` after an `Answer`.
    pub coordinator_timeout: Duration,
    /// How often the leader sends `Alive`.
    pub heartbeat_interval: Duration,
    /// How long a follower waits for `Alive` before electing.
    pub leader_timeout: Duration,
}

impl Default for BullyConfig {
    fn default() -> Self {
        BullyConfig {
            answer_timeout: Duration::from_millis(20),
            coordinator_timeout: Duration::from_millis(60),
            heartbeat_interval: Duration::from_millis(20),
            leader_timeout: Duration::from_millis(80),
        }
    }
}

/// A node of the bully algorithm.
#[derive(Debug)]
pub struct Bully {
    nodes: Vec<NodeId>,
    config: BullyConfig,
    leader: Option<NodeId>,
    electing: bool,
    answered: bool,
    counters: ElectionCounters,
}

impl Bully {
    /// A node among `nodes` (which may include itself).
    pub fn new(nodes: impl IntoIterator<Item = NodeId>, config: BullyConfig) -> Self {
        Bully {
            nodes: nodes.into_iter().collect(),
            config,
            leader: None,
            electing: false,
            answered: false,
            counters: ElectionCounters::default(),
        }
    }

    fn send(&mut self, ctx: &mut Ctx<'_, BullyMsg, BullyTimer>, to: NodeId, msg: BullyMsg) {
        if msg == BullyMsg::Alive {
            self.counters.heartbeats_sent += 1;
        } else {
            self.counters.messages_sent += 1;
        }
        ctx.send(to, msg);
    }

    /// Hold an election (rule 1).
    pub fn start_election(&mut self, ctx: &mut Ctx<'_, BullyMsg, BullyTimer>) {
        let me = ctx.me();
        self.counters.elections_started += 1;
        self.leader = None;
        self.electing = true;
        self.answered = false;
        ctx.cancel_timer(BullyTimer::LeaderTimeout);
        ctx.cancel_timer(BullyTimer::CoordinatorTimeout);
        ctx.cancel_timer(BullyTimer::Heartbeat);
        let higher: Vec<NodeId> = self.nodes.iter().copied().filter(|&n| n > me).collect();
        if higher.is_empty() {
            self.become_leader(ctx);
            return;
        }
        for node in higher {
            self.send(ctx, node, BullyMsg::Election);
        }
        ctx.set_timer(BullyTimer::AnswerTimeout, self.config.answer_timeout);
    }

    fn become_leader(&mut self, ctx: &mut Ctx<'_, BullyMsg, BullyTimer>) {
        let me = ctx.me();
        self.leader = Some(me);
        self.electing = false;
        ctx.cancel_timer(BullyTimer::AnswerTimeout);
        ctx.cancel_timer(BullyTimer::CoordinatorTimeout);
        ctx.cancel_timer(BullyTimer::LeaderTimeout);
        let lower: Vec<NodeId> = self.nodes.iter().copied().filter(|&n| n < me).collect();
        for node in lower {
            self.send(ctx, node, BullyMsg::Coordinator);
        }
        ctx.set_timer(BullyTimer::Heartbeat, self.config.heartbeat_interval);
    }

    fn follow(&mut self, ctx: &mut Ctx<'_, BullyMsg, BullyTimer>, leader: NodeId) {
        self.leader = Some(leader);
        self.electing = false;
        ctx.cancel_timer(BullyTimer::AnswerTimeout);
        ctx.cancel_timer(BullyTimer::CoordinatorTimeout);
        ctx.cancel_timer(BullyTimer::Heartbeat);
        ctx.set_timer(BullyTimer::LeaderTimeout, self.config.leader_timeout);
    }
}

impl LeaderElection for Bully {
    fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    fn electing(&self) -> bool {
        self.electing
    }
    fn counters(&self) -> ElectionCounters {
        self.counters
    }
}

impl Actor for Bully {
    type Msg = BullyMsg;
    type Timer = BullyTimer;

    fn on_start(&mut self, ctx: &mut Ctx<'_, BullyMsg, BullyTimer>) {
        // A recovering node holds an election at once, so a higher one takes over (§4).
        self.start_election(ctx);
    }

    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, BullyMsg, BullyTimer>,
        from: Endpoint,
        msg: BullyMsg,
    ) {
        let Endpoint::Node(from) = from else { return };
        let me = ctx.me();
        match msg {
            BullyMsg::Election if from < me => {
                self.send(ctx, from, BullyMsg::Answer);
                if self.leader == Some(me) {
                    // Already the leader: tell the caller instead of re-running (and
                    // re-announcing to everyone).
                    self.send(ctx, from, BullyMsg::Coordinator);
                } else if !self.electing {
                    self.start_election(ctx);
                }
            }
            BullyMsg::Answer if from > me && self.electing && !self.answered => {
                self.answered = true;
                ctx.cancel_timer(BullyTimer::AnswerTimeout);
                ctx.set_timer(
                    BullyTimer::CoordinatorTimeout,
                    self.config.coordinator_timeout,
                );
            }
            BullyMsg::Coordinator | BullyMsg::Alive if from > me => self.follow(ctx, from),
            // A lower node claims leadership: bully it (rule 5).
            BullyMsg::Coordinator | BullyMsg::Alive if from < me && !self.electing => {
                self.start_election(ctx)
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, BullyMsg, BullyTimer>, timer: BullyTimer) {
        match timer {
            BullyTimer::AnswerTimeout if self.electing && !self.answered => self.become_leader(ctx),
            BullyTimer::CoordinatorTimeout if self.electing => self.start_election(ctx),
            BullyTimer::LeaderTimeout => self.start_election(ctx),
            BullyTimer::Heartbeat if self.leader == Some(ctx.me()) => {
                let me = ctx.me();
                let others: Vec<NodeId> = self.nodes.iter().copied().filter(|&n| n != me).collect();
                for node in others {
                    self.send(ctx, node, BullyMsg::Alive);
                }
                ctx.set_timer(BullyTimer::Heartbeat, self.config.heartbeat_interval);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::total_messages;
    use super::*;
    use synod_core::testing::{sent, TestNode};
    use synod_core::Effect;
    use synod_sim::{assert_seeds, FaultConfig, Sim, SimConfig};

    fn node(me: u32, n: u32) -> TestNode<Bully> {
        TestNode::new(
            NodeId(me),
            Bully::new((0..n).map(NodeId), BullyConfig::default()),
            1,
        )
    }

    /// Rule 1: an election goes to every higher id, and arms the answer timeout.
    #[test]
    fn bully_sends_election_to_every_higher_id() {
        let mut n = node(1, 4);
        let out = n.start();
        assert_eq!(
            sent(&out),
            vec![
                (NodeId(2), BullyMsg::Election),
                (NodeId(3), BullyMsg::Election)
            ]
        );
        assert!(out.contains(&Effect::SetTimer {
            key: BullyTimer::AnswerTimeout,
            after: BullyConfig::default().answer_timeout
        }));
    }

    /// Rule 3: with no answer by the timeout, the node is the highest live id.
    #[test]
    fn bully_becomes_leader_when_no_higher_node_answers() {
        let mut n = node(1, 4);
        n.start();
        let out = n.fire(BullyTimer::AnswerTimeout);
        assert_eq!(sent(&out), vec![(NodeId(0), BullyMsg::Coordinator)]);
        assert_eq!(n.actor.leader(), Some(NodeId(1)));
    }

    /// Rules 2 and 4: an answer defers to the higher node; if it never announces, elect
    /// again.
    #[test]
    fn bully_elects_again_when_the_answering_node_dies() {
        let mut n = node(1, 4);
        n.start();
        n.deliver(NodeId(3), BullyMsg::Answer);
        assert!(sent(&n.fire(BullyTimer::AnswerTimeout)).is_empty());
        assert_eq!(n.actor.leader(), None);
        let out = n.fire(BullyTimer::CoordinatorTimeout);
        assert_eq!(sent(&out).len(), 2, "a fresh election to both higher ids");
    }

    /// Rules 2 and 5: a higher node answers a lower one and takes over; a coordinator
    /// claim from a lower node is bullied.
    #[test]
    fn bully_answers_lower_nodes_and_rejects_a_lower_coordinator() {
        let mut n = node(3, 4);
        n.start();
        assert_eq!(n.actor.leader(), Some(NodeId(3)));
        let out = sent(&n.deliver(NodeId(1), BullyMsg::Election));
        assert!(out.contains(&(NodeId(1), BullyMsg::Answer)));
        n.deliver(NodeId(2), BullyMsg::Coordinator);
        assert_eq!(n.actor.leader(), Some(NodeId(3)), "re-announced itself");
    }

    fn highest_live<A: LeaderElection>(sim: &Sim<A>) -> Option<NodeId> {
        sim.actors().map(|(n, _)| n).max()
    }

    fn stable<A: LeaderElection>(sim: &Sim<A>) -> bool {
        let top = highest_live(sim);
        sim.actors()
            .all(|(_, a)| a.leader() == top && !a.electing())
    }

    fn check_stable<A: LeaderElection>(sim: &Sim<A>) -> Result<(), String> {
        let top = highest_live(sim);
        for (node, a) in sim.actors() {
            if a.leader() != top {
                return Err(format!(
                    "{node} believes in {:?}, highest live is {top:?}",
                    a.leader()
                ));
            }
        }
        Ok(())
    }

    /// Run until `done` holds, for at most `limit`, without healing anything (unlike
    /// `run_liveness`, which restarts crashed nodes).
    fn run_until_true(
        sim: &mut Sim<Bully>,
        limit: Duration,
        done: impl Fn(&Sim<Bully>) -> bool,
    ) -> Result<(), String> {
        let deadline = sim.now() + limit;
        while !done(sim) {
            if sim.now() >= deadline {
                return Err(format!("not done by {deadline:?}"));
            }
            sim.run_for(Duration::from_millis(1))
                .map_err(|f| f.to_string())?;
        }
        Ok(())
    }

    fn sim(seed: u64, n: u32, faults: FaultConfig) -> Sim<Bully> {
        let mut cfg = SimConfig::new(seed, n);
        cfg.faults = faults;
        Sim::new(cfg, move |_| {
            Bully::new((0..n).map(NodeId), BullyConfig::default())
        })
    }

    /// Crash faults (the model's), then heal: every live node settles on the highest id
    /// and stays there.
    #[test]
    fn bully_settles_on_the_highest_live_id_after_crashes() {
        assert_seeds(
            0..100,
            |seed| {
                let n = 3 + (seed % 6) as u32;
                let faults = FaultConfig {
                    partition: 0,
                    crash: 1,
                    pause: 0,
                    clog: 0,
                    mean_interval: Duration::from_millis(150),
                    ..FaultConfig::chaos()
                };
                let mut sim = sim(seed, n, faults);
                let healed = Duration::from_secs(3);
                sim.run_liveness(healed, healed + Duration::from_secs(2), stable)
                    .map_err(|f| f.to_string())?;
                // Elections a recovered node set off may still echo among higher nodes
                // (each holds its own, §4); "stable" means after they have died out.
                sim.run_for(Duration::from_millis(500))
                    .map_err(|f| f.to_string())?;
                check_stable(&sim)?;
                sim.invariant("one leader, the highest live id", check_stable);
                sim.run_for(Duration::from_secs(1))
                    .map_err(|f| f.to_string())
            },
            |seed| format!("SYNOD_SEED={seed} cargo test -p synod-protocols election::bully"),
        );
    }

    /// The leader crashes: the rest elect the next highest; when the old leader recovers
    /// it takes over again (§4: the highest live node always wins).
    #[test]
    fn bully_recovered_higher_node_takes_over() {
        assert_seeds(
            0..100,
            |seed| {
                let n = 3 + (seed % 5) as u32;
                let top = NodeId(n - 1);
                let mut sim = sim(seed, n, FaultConfig::none());
                let err = |f: synod_sim::SimFailure| f.to_string();
                sim.run_liveness(Duration::ZERO, Duration::from_secs(1), stable)
                    .map_err(err)?;
                sim.crash(top);
                run_until_true(&mut sim, Duration::from_secs(1), |s| {
                    stable(s) && s.actors().all(|(_, a)| a.leader() == Some(NodeId(n - 2)))
                })?;
                sim.restart(top);
                run_until_true(&mut sim, Duration::from_secs(1), |s| {
                    stable(s) && s.actors().all(|(_, a)| a.leader() == Some(top))
                })?;
                Ok(())
            },
            |seed| format!("SYNOD_SEED={seed} cargo test -p synod-protocols election::bully"),
        );
    }

    /// The textbook worst case (Garcia-Molina §4): the leader dies and only the lowest
    /// node notices. Its election reaches every higher node, and each holds its own:
    /// N(N−1)/2 elections, (N−1)(N−2)/2 answers and N−2 coordinator messages, Θ(N²).
    /// The best case is the highest node recovering: N−1 coordinator messages.
    #[test]
    fn bully_worst_case_is_quadratic_and_best_case_linear() {
        for n in [4u32, 8, 16, 32] {
            let mut sim = Sim::new(SimConfig::new(1, n), move |me: NodeId| {
                let mut config = BullyConfig::default();
                if me != NodeId(0) {
                    // Only node 0 suspects the leader: a single initiator.
                    config.leader_timeout = Duration::from_secs(3600);
                }
                Bully::new((0..n).map(NodeId), config)
            });
            sim.run_liveness(Duration::ZERO, Duration::from_secs(1), stable)
                .expect("elects");
            sim.run_for(Duration::from_millis(200)).expect("runs");
            // The top node's counters leave with it when it crashes.
            let before: u64 = sim
                .actors()
                .filter(|(id, _)| id.0 != n - 1)
                .map(|(_, a)| a.counters().messages_sent)
                .sum();
            sim.crash(NodeId(n - 1));
            run_until_true(&mut sim, Duration::from_secs(2), |s| {
                stable(s) && s.actors().all(|(_, a)| a.leader() == Some(NodeId(n - 2)))
            })
            .expect("re-elects");
            sim.run_for(Duration::from_millis(200)).expect("runs");
            let worst = total_messages(&sim) - before;
            let expected = n * (n - 1) / 2 + (n - 1) * (n - 2) / 2 + (n - 2);
            assert_eq!(worst, u64::from(expected), "worst, N = {n}");
            let before: u64 = sim
                .actors()
                .filter(|(id, _)| id.0 != n - 1)
                .map(|(_, a)| a.counters().messages_sent)
                .sum();
            sim.crash(NodeId(n - 1));
            sim.restart(NodeId(n - 1));
            sim.run_for(Duration::from_millis(10)).expect("runs");
            let after = total_messages(&sim);
            assert_eq!(after - before, u64::from(n - 1), "best, N = {n}");
        }
    }
}
