//! The scenario of Figure 8 (§5.4.2), scripted message by message on five servers.
//!
//! An entry of an earlier term that sits on a majority can still be overwritten by a
//! later leader, so a leader must not commit it by counting replicas. The paper's
//! indexes shift by one here, because each new leader first appends its no-op (§8).

use crate::raft::state::Bug;
use crate::raft::{KvCommand, KvOutput, KvStateMachine, Raft, RaftConfig, RaftMsg, RaftTimer};
use crate::raft::{Role, SessionId, Term};
use std::collections::VecDeque;
use std::time::Duration;
use synod_core::testing::{sent, Effects, TestNode};
use synod_core::{ClientId, LogIndex, NodeId};

type Kv = Raft<KvStateMachine>;
type Msg = RaftMsg<KvCommand, KvOutput>;

/// Five servers and the messages between them, delivered only when a test allows.
struct Cluster {
    servers: Vec<TestNode<Kv>>,
    up: Vec<bool>,
    queue: VecDeque<(NodeId, NodeId, Msg)>,
    bug: Option<Bug>,
}

fn fresh(bug: Option<Bug>) -> Kv {
    let mut config = RaftConfig::new((0..5).map(NodeId).collect());
    // One entry per AppendEntries, so that a follower can get an old entry without the
    // new leader's no-op.
    config.max_entries_per_append = 1;
    let mut raft = Raft::new(config, KvStateMachine::default());
    raft.bug = bug;
    raft
}

impl Cluster {
    fn new(bug: Option<Bug>) -> Self {
        let mut cluster = Cluster {
            servers: (0..5)
                .map(|i| TestNode::new(NodeId(i), fresh(bug), u64::from(i)))
                .collect(),
            up: vec![true; 5],
            queue: VecDeque::new(),
            bug,
        };
        for i in 0..5 {
            let effects = cluster.servers[i].start();
            cluster.absorb(NodeId(i as u32), effects);
        }
        cluster
    }

    fn server(&self, i: u32) -> &Kv {
        &self.servers[i as usize].actor
    }

    /// Every step's writes are synced before its messages leave (a fast disk).
    fn absorb(&mut self, from: NodeId, effects: Effects<Kv>) {
        self.servers[from.index()].storage.sync();
        for (to, msg) in sent(&effects) {
            self.queue.push_back((from, to, msg));
        }
    }

    /// Deliver queued messages that `allow` lets through; drop the rest.
    fn run(&mut self, allow: impl Fn(NodeId, NodeId, &Msg) -> bool) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            if !self.up[to.index()] || !allow(from, to, &msg) {
                continue;
            }
            let effects = self.servers[to.index()].deliver(from, msg);
            self.absorb(to, effects);
        }
    }

    /// Let a whole election timeout pass everywhere, then fire `i`'s election timer.
    fn time_out(&mut self, i: u32) {
        for server in &mut self.servers {
            server.advance(Duration::from_secs(1));
        }
        let effects = self.servers[i as usize].fire(RaftTimer::Election);
        self.absorb(NodeId(i), effects);
    }

    fn crash(&mut self, i: u32) {
        self.up[i as usize] = false;
    }

    fn restart(&mut self, i: u32) {
        self.up[i as usize] = true;
        let effects = self.servers[i as usize].crash_and_restart(fresh(self.bug));
        self.absorb(NodeId(i), effects);
    }

    fn client(&mut self, i: u32, msg: Msg) {
        let effects = self.servers[i as usize].deliver(ClientId(1), msg);
        self.absorb(NodeId(i), effects);
    }
}

fn among(group: &'static [u32]) -> impl Fn(NodeId, NodeId, &Msg) -> bool {
    move |from, to, _| group.contains(&from.0) && group.contains(&to.0)
}

fn holds_no_entry_of(term: Term) -> impl Fn(&Msg) -> bool {
    move |msg| match msg {
        RaftMsg::AppendEntries { entries, .. } => entries.iter().all(|e| e.term != term),
        _ => true,
    }
}

/// Figure 8 (a) to (c). Returns the cluster with S0 leading term 3 while its term-1
/// entry at index 2 is on S0, S1 and S2, a majority, and its no-op only on itself.
fn figure_8_up_to_c(bug: Option<Bug>) -> Cluster {
    let mut c = Cluster::new(bug);
    // (a) S0 leads term 1; its no-op reaches everyone; entry 2 reaches only S1.
    c.time_out(0);
    c.run(|_, _, _| true);
    assert_eq!(c.server(0).role(), Role::Leader);
    c.client(
        0,
        RaftMsg::ClientWrite {
            session: SessionId(1),
            seq: 1,
            command: KvCommand::Put {
                key: "x".into(),
                value: 1,
            },
        },
    );
    c.run(among(&[0, 1]));
    assert_eq!(c.server(1).last_log_index(), LogIndex(2));
    // (b) S0 crashes; S4 wins term 2 with S2 and S3 and appends to its log only.
    c.crash(0);
    c.time_out(4);
    let voters = among(&[2, 3, 4]);
    c.run(|from, to, msg| voters(from, to, msg) && !matches!(msg, RaftMsg::AppendEntries { .. }));
    assert_eq!(c.server(4).role(), Role::Leader);
    assert_eq!(c.server(4).current_term(), Term(2));
    c.queue.clear();
    // (c) S4 crashes; S0 restarts and wins term 3 with S1, S2 and S3.
    c.crash(4);
    c.restart(0);
    // The first pre-vote (for term 2) is refused by S2 and S3, which are in term 2
    // already; S0 learns the term and asks again.
    for _ in 0..2 {
        c.time_out(0);
        c.run(|from, to, msg| {
            let leader_talks = from.0 == 0 && matches!(msg, RaftMsg::AppendEntries { .. });
            from.0 != 4 && to.0 != 4 && !leader_talks
        });
    }
    assert_eq!(c.server(0).role(), Role::Leader);
    assert_eq!(c.server(0).current_term(), Term(3));
    c.queue.retain(|(from, to, _)| from == to);
    // The old entry 2 reaches S2, but the term-3 no-op reaches no one; S1 confirms it
    // holds entry 2 through a heartbeat (a read triggers one).
    c.client(
        0,
        RaftMsg::ClientRead {
            seq: 2,
            command: KvCommand::Get { key: "x".into() },
        },
    );
    let only_old_entries = holds_no_entry_of(Term(3));
    c.run(|from, to, msg| {
        from == to
            || (from.0 == 0 && [1, 2].contains(&to.0) && only_old_entries(msg))
            || (to.0 == 0 && [1, 2].contains(&from.0))
    });
    for i in [0, 1, 2] {
        assert_eq!(c.server(i).term_at(LogIndex(2)), Some(Term(1)), "S{i}");
    }
    assert_eq!(c.server(0).last_log_index(), LogIndex(3));
    c
}

/// Figure 8 (d): S0 crashes, and S4 (last term 2) wins term 4 with S1, S2 and S3 (last
/// term 1), then overwrites index 2 everywhere.
fn figure_8_d(c: &mut Cluster) {
    c.crash(0);
    c.queue.clear();
    c.restart(4);
    c.time_out(4);
    c.run(|_, _, _| true);
    c.time_out(4);
    c.run(|_, _, _| true);
    assert_eq!(c.server(4).role(), Role::Leader);
    assert_eq!(c.server(1).term_at(LogIndex(2)), Some(Term(2)));
}

#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed_by_counting() {
    let mut c = figure_8_up_to_c(None);
    // §5.4.2: index 2 is on a majority, but it is of term 1, not the leader's term 3.
    assert!(c.server(0).commit_index() < LogIndex(2));
    // And indeed a later leader may overwrite it; nothing committed is lost.
    figure_8_d(&mut c);
    assert!(c.server(4).commit_index() >= LogIndex(2));
}

#[test]
fn figure_8_the_broken_variant_commits_an_entry_a_later_leader_overwrites() {
    let mut c = figure_8_up_to_c(Some(Bug::CommitOldTermsByCounting));
    assert_eq!(c.server(0).commit_index(), LogIndex(2));
    let committed_by_s0 = c.server(0).log_hash_at(LogIndex(2));
    figure_8_d(&mut c);
    // State Machine Safety fails: index 2 is committed with two different entries.
    assert!(c.server(4).commit_index() >= LogIndex(2));
    assert_ne!(c.server(4).log_hash_at(LogIndex(2)), committed_by_s0);
}
