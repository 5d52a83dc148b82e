//! One server driven by hand. Each test names the rule of Figure 2, §5 or the thesis it
//! checks.

use crate::raft::state::{Bug, HARD_STATE_KEY};
use crate::raft::{
    Entry, EntryPayload, KvCommand, KvOutput, KvStateMachine, Raft, RaftConfig, RaftMsg, RaftTimer,
    Role, SessionId, Term,
};
use std::time::Duration;
use synod_core::testing::{sent, Effects, TestNode};
use synod_core::{ClientId, Effect, LogIndex, NodeId, Storage, StorageExt};

type Kv = Raft<KvStateMachine>;
type Msg = RaftMsg<KvCommand, KvOutput>;

fn config(nodes: u32) -> RaftConfig {
    RaftConfig::new((0..nodes).map(NodeId).collect())
}

fn server(me: u32, nodes: u32) -> TestNode<Kv> {
    let mut node = TestNode::new(
        NodeId(me),
        Raft::new(config(nodes), KvStateMachine::default()),
        7,
    );
    node.start();
    node
}

fn entry(term: u64) -> Entry<KvCommand> {
    Entry {
        term: Term(term),
        payload: EntryPayload::Noop,
    }
}

fn put(term: u64, seq: u64, value: u64) -> Entry<KvCommand> {
    Entry {
        term: Term(term),
        payload: EntryPayload::Command {
            session: SessionId(1),
            seq,
            command: KvCommand::Put {
                key: "x".into(),
                value,
            },
        },
    }
}

fn append(term: u64, prev: (u64, u64), entries: Vec<Entry<KvCommand>>, commit: u64) -> Msg {
    RaftMsg::AppendEntries {
        term: Term(term),
        prev_log_index: LogIndex(prev.0),
        prev_log_term: Term(prev.1),
        entries,
        leader_commit: LogIndex(commit),
        round: 0,
    }
}

fn sent_to(effects: &Effects<Kv>, to: u32) -> Vec<Msg> {
    sent(effects)
        .into_iter()
        .filter(|(n, _)| *n == NodeId(to))
        .map(|(_, m)| m)
        .collect()
}

fn replies(effects: &Effects<Kv>) -> Vec<(ClientId, Msg)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reply { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

/// Make server 0 of `nodes` the leader of term 1 by pre-vote and vote from server 1.
fn elect(node: &mut TestNode<Kv>) -> Effects<Kv> {
    node.advance(Duration::from_secs(1));
    node.fire(RaftTimer::Election);
    let term = node.actor.current_term().next();
    node.deliver(
        NodeId(1),
        RaftMsg::PreVoteResponse {
            term,
            current_term: node.actor.current_term(),
            granted: true,
        },
    );
    assert_eq!(node.actor.role(), Role::Candidate);
    let effects = node.deliver(
        NodeId(1),
        RaftMsg::RequestVoteResponse {
            term,
            granted: true,
        },
    );
    assert_eq!(node.actor.role(), Role::Leader);
    effects
}

/// Deliver the leader's held self-message that says its log is durable up to `index`.
fn local_durable(node: &mut TestNode<Kv>, index: u64) -> Effects<Kv> {
    node.storage.sync();
    let term = node.actor.current_term();
    node.deliver(
        NodeId(0),
        RaftMsg::LocalDurable {
            term,
            index: LogIndex(index),
        },
    )
}

fn ack(term: Term, match_index: u64) -> Msg {
    RaftMsg::AppendEntriesResponse {
        term,
        success: true,
        match_index: LogIndex(match_index),
        prev_log_index: LogIndex(0),
        conflict_term: None,
        conflict_index: LogIndex(0),
        round: 0,
    }
}

#[test]
fn follower_rejects_append_entries_from_an_older_term() {
    let mut node = server(1, 3);
    node.deliver(NodeId(0), append(5, (0, 0), vec![], 0));
    let effects = node.deliver(NodeId(2), append(4, (0, 0), vec![entry(4)], 0));
    // Figure 2, AppendEntries rule 1: reply false if term < currentTerm.
    assert!(matches!(
        sent_to(&effects, 2)[..],
        [RaftMsg::AppendEntriesResponse {
            term: Term(5),
            success: false,
            ..
        }]
    ));
    assert_eq!(node.actor.last_log_index(), LogIndex(0));
}

#[test]
fn follower_rejects_entries_whose_previous_entry_does_not_match() {
    let mut node = server(1, 3);
    node.deliver(
        NodeId(0),
        append(2, (0, 0), vec![entry(1), entry(1), entry(2)], 0),
    );
    // Figure 2, rule 2, with the §5.3 hints: the conflicting term and its first index.
    let effects = node.deliver(NodeId(0), append(3, (2, 3), vec![entry(3)], 0));
    assert!(matches!(
        sent_to(&effects, 0)[..],
        [RaftMsg::AppendEntriesResponse {
            success: false,
            conflict_term: Some(Term(1)),
            conflict_index: LogIndex(1),
            ..
        }]
    ));
    // A log that is too short says where it ends.
    let effects = node.deliver(NodeId(0), append(3, (9, 3), vec![], 0));
    assert!(matches!(
        sent_to(&effects, 0)[..],
        [RaftMsg::AppendEntriesResponse {
            success: false,
            conflict_term: None,
            conflict_index: LogIndex(4),
            ..
        }]
    ));
}

#[test]
fn follower_truncates_a_conflicting_suffix_and_appends() {
    let mut node = server(1, 3);
    node.deliver(
        NodeId(0),
        append(2, (0, 0), vec![entry(1), entry(2), entry(2)], 1),
    );
    // Figure 2, rule 3: an existing entry conflicting with a new one (same index,
    // different term) is deleted with all that follow it.
    let effects = node.deliver(NodeId(2), append(3, (1, 1), vec![entry(3)], 1));
    assert_eq!(node.actor.last_log_index(), LogIndex(2));
    assert_eq!(node.actor.term_at(LogIndex(2)), Some(Term(3)));
    assert_eq!(node.storage.log_bounds(), (LogIndex(1), LogIndex(3)));
    assert!(matches!(
        sent_to(&effects, 2)[..],
        [RaftMsg::AppendEntriesResponse {
            success: true,
            match_index: LogIndex(2),
            ..
        }]
    ));
}

#[test]
fn follower_commits_no_further_than_the_last_new_entry() {
    let mut node = server(1, 3);
    node.deliver(
        NodeId(0),
        append(1, (0, 0), vec![entry(1), entry(1), entry(1)], 0),
    );
    // Rule 5: commitIndex = min(leaderCommit, index of last new entry), even though the
    // log holds more entries (they may not match the leader's).
    node.deliver(NodeId(0), append(1, (0, 0), vec![entry(1)], 3));
    assert_eq!(node.actor.commit_index(), LogIndex(1));
}

#[test]
fn follower_acknowledges_only_after_its_entries_are_durable() {
    let mut node = server(1, 3);
    let effects = node.deliver(NodeId(0), append(1, (0, 0), vec![entry(1)], 0));
    // A held send: the driver releases it after the sync of the appended entry.
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Send {
            to: NodeId(0),
            msg: RaftMsg::AppendEntriesResponse { .. }
        }
    )));
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::SendUnsynced { .. })));
}

#[test]
fn a_server_grants_at_most_one_vote_per_term() {
    let mut node = server(2, 3);
    let vote = |_candidate: u32| RaftMsg::RequestVote {
        term: Term(1),
        last_log_index: LogIndex(0),
        last_log_term: Term(0),
        leadership_transfer: false,
    };
    let first = node.deliver(NodeId(0), vote(0));
    let second = node.deliver(NodeId(1), vote(1));
    assert!(matches!(
        sent_to(&first, 0)[..],
        [RaftMsg::RequestVoteResponse { granted: true, .. }]
    ));
    assert!(matches!(
        sent_to(&second, 1)[..],
        [RaftMsg::RequestVoteResponse { granted: false, .. }]
    ));
    // The same candidate asking again gets the same answer (a retransmission).
    let again = node.deliver(NodeId(0), vote(0));
    assert!(matches!(
        sent_to(&again, 0)[..],
        [RaftMsg::RequestVoteResponse { granted: true, .. }]
    ));
}

#[test]
fn candidate_with_stale_log_is_denied_vote() {
    let mut node = server(2, 3);
    node.deliver(NodeId(0), append(2, (0, 0), vec![entry(1), entry(2)], 0));
    node.advance(Duration::from_secs(1));
    let ask = |last_index: u64, last_term: u64| RaftMsg::RequestVote {
        term: Term(3),
        last_log_index: LogIndex(last_index),
        last_log_term: Term(last_term),
        leadership_transfer: false,
    };
    // §5.4.1: a lower last term loses even with a longer log...
    let effects = node.deliver(NodeId(1), ask(5, 1));
    assert!(matches!(
        sent_to(&effects, 1)[..],
        [RaftMsg::RequestVoteResponse { granted: false, .. }]
    ));
    // ...and the same last term needs at least as long a log.
    let effects = node.deliver(NodeId(1), ask(1, 2));
    assert!(matches!(
        sent_to(&effects, 1)[..],
        [RaftMsg::RequestVoteResponse { granted: false, .. }]
    ));
    let effects = node.deliver(NodeId(1), ask(2, 2));
    assert!(matches!(
        sent_to(&effects, 1)[..],
        [RaftMsg::RequestVoteResponse { granted: true, .. }]
    ));
}

#[test]
fn the_broken_variant_grants_stale_candidates_a_vote() {
    let mut node = server(2, 3);
    node.actor.bug = Some(Bug::VoteWithoutLogCheck);
    node.deliver(NodeId(0), append(2, (0, 0), vec![entry(1), entry(2)], 0));
    node.advance(Duration::from_secs(1));
    let effects = node.deliver(
        NodeId(1),
        RaftMsg::RequestVote {
            term: Term(3),
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
            leadership_transfer: false,
        },
    );
    assert!(matches!(
        sent_to(&effects, 1)[..],
        [RaftMsg::RequestVoteResponse { granted: true, .. }]
    ));
}

#[test]
fn a_vote_is_durable_before_it_is_sent_and_survives_a_crash() {
    let mut node = server(2, 3);
    let effects = node.deliver(
        NodeId(0),
        RaftMsg::RequestVote {
            term: Term(4),
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
            leadership_transfer: false,
        },
    );
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Send {
            to: NodeId(0),
            msg: RaftMsg::RequestVoteResponse { granted: true, .. }
        }
    )));
    node.storage.sync();
    node.crash_and_restart(Raft::new(config(3), KvStateMachine::default()));
    assert_eq!(node.actor.current_term(), Term(4));
    assert_eq!(node.actor.voted_for(), Some(NodeId(0)));
}

#[test]
fn pre_vote_changes_no_term() {
    let mut node = server(0, 3);
    node.advance(Duration::from_secs(1));
    let effects = node.fire(RaftTimer::Election);
    // Thesis §9.6: a pre-candidate asks for term + 1 without adopting it.
    assert_eq!(node.actor.role(), Role::PreCandidate);
    assert_eq!(node.actor.current_term(), Term(0));
    assert!(matches!(
        sent_to(&effects, 1)[..],
        [RaftMsg::PreVote { term: Term(1), .. }]
    ));
    let mut voter = server(1, 3);
    voter.advance(Duration::from_secs(1));
    let effects = voter.deliver(
        NodeId(0),
        RaftMsg::PreVote {
            term: Term(1),
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
        },
    );
    assert!(matches!(
        sent_to(&effects, 0)[..],
        [RaftMsg::PreVoteResponse { granted: true, .. }]
    ));
    assert_eq!(voter.actor.current_term(), Term(0));
}

#[test]
fn a_follower_that_hears_from_its_leader_denies_pre_votes_and_votes() {
    let mut node = server(2, 3);
    node.deliver(NodeId(0), append(1, (0, 0), vec![], 0));
    let effects = node.deliver(
        NodeId(1),
        RaftMsg::PreVote {
            term: Term(2),
            last_log_index: LogIndex(5),
            last_log_term: Term(1),
        },
    );
    assert!(matches!(
        sent_to(&effects, 1)[..],
        [RaftMsg::PreVoteResponse { granted: false, .. }]
    ));
    // Thesis §4.2.3: a RequestVote within the minimum election timeout is ignored.
    node.deliver(
        NodeId(1),
        RaftMsg::RequestVote {
            term: Term(2),
            last_log_index: LogIndex(5),
            last_log_term: Term(1),
            leadership_transfer: false,
        },
    );
    assert_eq!(node.actor.current_term(), Term(1));
    // Unless the leader itself asked for the election (thesis §3.10).
    node.deliver(
        NodeId(1),
        RaftMsg::RequestVote {
            term: Term(2),
            last_log_index: LogIndex(5),
            last_log_term: Term(1),
            leadership_transfer: true,
        },
    );
    assert_eq!(node.actor.voted_for(), Some(NodeId(1)));
}

#[test]
fn a_new_leader_appends_a_noop_and_replicates_it_unsynced() {
    let mut node = server(0, 3);
    let effects = elect(&mut node);
    // §8: the no-op of the new term.
    assert_eq!(node.actor.last_log_index(), LogIndex(1));
    assert_eq!(node.actor.term_at(LogIndex(1)), Some(Term(1)));
    // Thesis §10.2.1: AppendEntries leave before the leader's own write is durable...
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::SendUnsynced {
            to: NodeId(2),
            msg: RaftMsg::AppendEntries { .. }
        }
    )));
    // ...and the leader learns its own durable index from a held message to itself.
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Send {
            to: NodeId(0),
            msg: RaftMsg::LocalDurable {
                index: LogIndex(1),
                ..
            }
        }
    )));
}

#[test]
fn leader_counts_itself_only_once_its_entries_are_durable() {
    let mut node = server(0, 3);
    elect(&mut node);
    let term = node.actor.current_term();
    node.deliver(NodeId(1), ack(term, 1));
    assert_eq!(node.actor.commit_index(), LogIndex(0));
    local_durable(&mut node, 1);
    assert_eq!(node.actor.commit_index(), LogIndex(1));
}

#[test]
fn leader_commits_only_current_term_entries_by_counting() {
    let mut node = server(0, 3);
    // An entry of term 1 reaches this server, uncommitted.
    node.deliver(NodeId(1), append(1, (0, 0), vec![entry(1)], 0));
    node.storage.sync();
    // It becomes leader of term 2 and appends its no-op at index 2.
    elect(&mut node);
    let term = node.actor.current_term();
    assert_eq!(term, Term(2));
    local_durable(&mut node, 2);
    // Server 1 now stores index 1: a majority holds it, but it is of term 1 (§5.4.2).
    node.deliver(NodeId(1), ack(term, 1));
    assert_eq!(node.actor.commit_index(), LogIndex(0));
    // Once the term-2 entry is on a majority, both commit.
    node.deliver(NodeId(1), ack(term, 2));
    assert_eq!(node.actor.commit_index(), LogIndex(2));
}

#[test]
fn the_broken_variant_commits_an_old_term_entry_by_counting() {
    let mut node = server(0, 3);
    node.actor.bug = Some(Bug::CommitOldTermsByCounting);
    node.deliver(NodeId(1), append(1, (0, 0), vec![entry(1)], 0));
    elect(&mut node);
    let term = node.actor.current_term();
    local_durable(&mut node, 2);
    node.deliver(NodeId(1), ack(term, 1));
    assert_eq!(node.actor.commit_index(), LogIndex(1));
}

#[test]
fn fast_backtracking_skips_a_whole_conflicting_term() {
    let mut node = server(0, 3);
    node.deliver(
        NodeId(1),
        append(2, (0, 0), vec![entry(1), entry(1), entry(2), entry(2)], 0),
    );
    elect(&mut node);
    let term = node.actor.current_term();
    // The leader's log is [1, 1, 2, 2, 3] and it probes server 2 at prev index 4.
    // Server 2 holds term 1 there, from index 1 on.
    let effects = node.deliver(
        NodeId(2),
        RaftMsg::AppendEntriesResponse {
            term,
            success: false,
            match_index: LogIndex(0),
            prev_log_index: LogIndex(4),
            conflict_term: Some(Term(1)),
            conflict_index: LogIndex(1),
            round: 0,
        },
    );
    // §5.3: the leader's last entry of term 1 is at 2, so the next probe skips index 3
    // and carries everything from 3 on.
    assert!(sent_to(&effects, 2).iter().any(|m| matches!(
        m,
        RaftMsg::AppendEntries { prev_log_index: LogIndex(2), entries, .. } if entries.len() == 3
    )));
    // A duplicate of the same rejection does not move the probe again.
    let duplicate = node.deliver(
        NodeId(2),
        RaftMsg::AppendEntriesResponse {
            term,
            success: false,
            match_index: LogIndex(0),
            prev_log_index: LogIndex(4),
            conflict_term: Some(Term(1)),
            conflict_index: LogIndex(1),
            round: 0,
        },
    );
    assert!(sent_to(&duplicate, 2).is_empty());
}

/// The leader of 3 servers whose follower 1 has acknowledged its first entry, so that
/// replication to it is pipelined; and the leader's term.
fn pipelined_leader(replicate_at_batch_end: bool) -> (TestNode<Kv>, Term) {
    let mut config = config(3);
    config.replicate_at_batch_end = replicate_at_batch_end;
    let mut node = TestNode::new(NodeId(0), Raft::new(config, KvStateMachine::default()), 7);
    node.start();
    elect(&mut node);
    let term = node.actor.current_term();
    node.deliver(NodeId(1), ack(term, 1));
    (node, term)
}

#[test]
fn pipelining_keeps_a_bounded_window_of_requests_in_flight() {
    let (mut node, _) = pipelined_leader(false);
    // Follower 1 is now in the pipelined state; each write goes out at once...
    let mut sends = 0;
    for seq in 1..=20 {
        let effects = node.deliver(
            ClientId(1),
            RaftMsg::ClientWrite {
                session: SessionId(1),
                seq,
                command: KvCommand::Put {
                    key: "x".into(),
                    value: seq,
                },
            },
        );
        sends += sent_to(&effects, 1).len();
    }
    // ...until the window of `max_in_flight` unanswered requests is full.
    assert_eq!(sends, config(3).max_in_flight);
}

/// 20 client writes of 20 sessions, as one batch of inputs.
fn write_batch(from_seq: u64) -> Vec<(synod_core::Endpoint, Msg)> {
    (0..20)
        .map(|i| {
            let msg = RaftMsg::ClientWrite {
                session: SessionId(100 + i),
                seq: from_seq,
                command: KvCommand::Put {
                    key: format!("k{i}"),
                    value: i,
                },
            };
            (ClientId(100 + i).into(), msg)
        })
        .collect()
}

fn entries_sent(msgs: &[Msg]) -> Vec<usize> {
    msgs.iter()
        .filter_map(|m| match m {
            RaftMsg::AppendEntries { entries, .. } => Some(entries.len()),
            _ => None,
        })
        .collect()
}

#[test]
fn with_replicate_at_batch_end_a_batch_of_writes_leaves_in_one_append_entries() {
    let (mut node, _) = pipelined_leader(true);
    let effects = node.deliver_batch(write_batch(1));
    // One request with all 20 entries, not one request per write.
    assert_eq!(entries_sent(&sent_to(&effects, 1)), vec![20]);
    // Without the option the same batch fills the window with one-entry requests.
    let (mut node, _) = pipelined_leader(false);
    let effects = node.deliver_batch(write_batch(1));
    assert_eq!(entries_sent(&sent_to(&effects, 1)), vec![1; 8]);
}

#[test]
fn a_leader_deposed_within_the_batch_replicates_nothing_at_its_end() {
    let (mut node, term) = pipelined_leader(true);
    let mut batch = write_batch(1);
    // A newer leader's heartbeat in the same batch, after the writes.
    batch.push((NodeId(2).into(), append(term.0 + 1, (0, 0), Vec::new(), 0)));
    let effects = node.deliver_batch(batch);
    assert_eq!(node.actor.role(), Role::Follower);
    assert!(entries_sent(&sent_to(&effects, 1)).is_empty());
}

#[test]
fn a_retried_write_applies_once_and_gets_the_first_answer() {
    let mut node = server(0, 1);
    node.advance(Duration::from_secs(1));
    node.fire(RaftTimer::Election);
    assert_eq!(node.actor.role(), Role::Leader);
    local_durable(&mut node, 1);
    let cas = RaftMsg::ClientWrite {
        session: SessionId(3),
        seq: 1,
        command: KvCommand::Cas {
            key: "x".into(),
            expected: None,
            new: 1,
        },
    };
    node.deliver(ClientId(3), cas.clone());
    let effects = local_durable(&mut node, 2);
    assert_eq!(
        replies(&effects),
        vec![(
            ClientId(3),
            RaftMsg::ClientReply {
                seq: 1,
                output: KvOutput::Swapped(true)
            }
        )]
    );
    // Thesis §6.3: the retry is answered from the session table, not applied again
    // (applied again, the compare-and-set would fail).
    let effects = node.deliver(ClientId(3), cas);
    assert_eq!(
        replies(&effects),
        vec![(
            ClientId(3),
            RaftMsg::ClientReply {
                seq: 1,
                output: KvOutput::Swapped(true)
            }
        )]
    );
    assert_eq!(node.actor.last_log_index(), LogIndex(2));
}

#[test]
fn a_follower_refuses_clients_and_names_the_leader() {
    let mut node = server(1, 3);
    node.deliver(NodeId(0), append(1, (0, 0), vec![], 0));
    let effects = node.deliver(
        ClientId(4),
        RaftMsg::ClientRead {
            seq: 9,
            command: KvCommand::Get { key: "x".into() },
        },
    );
    assert_eq!(
        replies(&effects),
        vec![(
            ClientId(4),
            RaftMsg::NotLeader {
                seq: 9,
                leader_hint: Some(NodeId(0))
            }
        )]
    );
}

#[test]
fn read_index_waits_for_a_majority_to_confirm_the_leader() {
    let mut node = server(0, 3);
    node.deliver(NodeId(1), append(1, (0, 0), vec![put(1, 1, 5)], 0));
    elect(&mut node);
    let term = node.actor.current_term();
    local_durable(&mut node, 2);
    node.deliver(NodeId(1), ack(term, 2));
    assert_eq!(node.actor.commit_index(), LogIndex(2));
    let effects = node.deliver(
        ClientId(2),
        RaftMsg::ClientRead {
            seq: 1,
            command: KvCommand::Get { key: "x".into() },
        },
    );
    // Thesis §6.4: no answer until a heartbeat round sent after the read is acknowledged.
    assert!(replies(&effects).is_empty());
    let round = sent_to(&effects, 1)
        .iter()
        .find_map(|m| match m {
            RaftMsg::AppendEntries { round, .. } => Some(*round),
            _ => None,
        })
        .expect("a heartbeat round");
    let stale = node.deliver(NodeId(1), ack(term, 2));
    assert!(
        replies(&stale).is_empty(),
        "an ack of an older round confirms nothing"
    );
    let effects = node.deliver(
        NodeId(1),
        RaftMsg::AppendEntriesResponse {
            term,
            success: true,
            match_index: LogIndex(2),
            prev_log_index: LogIndex(2),
            conflict_term: None,
            conflict_index: LogIndex(0),
            round,
        },
    );
    assert_eq!(
        replies(&effects),
        vec![(
            ClientId(2),
            RaftMsg::ClientReply {
                seq: 1,
                output: KvOutput::Value(Some(5))
            }
        )]
    );
}

#[test]
fn a_leader_that_cannot_reach_a_majority_steps_down() {
    let mut node = server(0, 3);
    elect(&mut node);
    node.fire(RaftTimer::Election);
    assert_eq!(
        node.actor.role(),
        Role::Leader,
        "followers counted active at election"
    );
    // Thesis §9.6 CheckQuorum: a whole election timeout without a majority.
    node.fire(RaftTimer::Election);
    assert_eq!(node.actor.role(), Role::Follower);
}

#[test]
fn timeout_now_makes_the_target_campaign_at_once() {
    let mut node = server(1, 3);
    node.deliver(NodeId(0), append(1, (0, 0), vec![], 0));
    let effects = node.deliver(NodeId(0), RaftMsg::TimeoutNow { term: Term(1) });
    // Thesis §3.10: no pre-vote, no waiting for the election timeout.
    assert_eq!(node.actor.role(), Role::Candidate);
    assert!(matches!(
        sent_to(&effects, 2)[..],
        [RaftMsg::RequestVote {
            term: Term(2),
            leadership_transfer: true,
            ..
        }]
    ));
}

#[test]
fn a_leader_transfers_leadership_to_an_up_to_date_server() {
    let mut node = server(0, 3);
    elect(&mut node);
    let term = node.actor.current_term();
    node.deliver(NodeId(2), ack(term, 1));
    let effects = node.deliver(ClientId(1), RaftMsg::TransferLeadership { to: NodeId(2) });
    assert!(matches!(
        sent_to(&effects, 2)[..],
        [RaftMsg::TimeoutNow { .. }]
    ));
    // New writes are refused while the transfer runs.
    let effects = node.deliver(
        ClientId(1),
        RaftMsg::ClientWrite {
            session: SessionId(1),
            seq: 1,
            command: KvCommand::Delete { key: "x".into() },
        },
    );
    assert!(matches!(
        replies(&effects)[..],
        [(
            _,
            RaftMsg::NotLeader {
                leader_hint: Some(NodeId(2)),
                ..
            }
        )]
    ));
}

#[test]
fn corrupt_hard_state_stops_the_server() {
    let mut node = TestNode::new(
        NodeId(0),
        Raft::new(config(3), KvStateMachine::default()),
        1,
    );
    node.storage.put(HARD_STATE_KEY, &[0xff, 0xff, 0xff]);
    node.start();
    assert!(node.actor.fault().is_some());
    let effects = node.deliver(
        NodeId(1),
        RaftMsg::RequestVote {
            term: Term(9),
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
            leadership_transfer: false,
        },
    );
    assert!(
        effects.is_empty(),
        "a corrupt server neither votes nor answers"
    );
}

#[test]
fn the_log_and_term_are_rebuilt_from_storage_on_restart() {
    let mut node = server(1, 3);
    node.deliver(NodeId(0), append(3, (0, 0), vec![entry(1), entry(3)], 0));
    node.storage.sync();
    node.crash_and_restart(Raft::new(config(3), KvStateMachine::default()));
    assert_eq!(node.actor.current_term(), Term(3));
    assert_eq!(node.actor.last_log_index(), LogIndex(2));
    assert_eq!(node.actor.term_at(LogIndex(2)), Some(Term(3)));
    let stored: Option<(Term, Option<NodeId>)> = node.storage.get_value(HARD_STATE_KEY).unwrap();
    assert_eq!(stored, Some((Term(3), None)));
}

fn snapshotting_config(nodes: u32) -> RaftConfig {
    let mut config = config(nodes);
    config.snapshot_threshold = 2;
    config.snapshot_chunk_bytes = 4;
    config
}

/// The indexes at which follower `me` of voters 0..4 snapshots while the leader (node 0)
/// commits 13 entries one at a time, with a threshold of 4.
fn snapshot_indexes(me: u32, stagger: bool) -> Vec<u64> {
    let mut config = config(4);
    config.snapshot_threshold = 4;
    config.snapshot_stagger = stagger;
    let mut node = TestNode::new(NodeId(me), Raft::new(config, KvStateMachine::default()), 7);
    node.start();
    let mut taken = Vec::new();
    for i in 1..=13u64 {
        let prev = (i - 1, if i == 1 { 0 } else { 1 });
        let effects = node.deliver(NodeId(0), append(1, prev, vec![put(1, i, i)], i));
        node.storage.sync();
        node.finish_background(&effects);
        let at = node.actor.snapshot_index().0;
        if at > 0 && taken.last() != Some(&at) {
            taken.push(at);
        }
    }
    taken
}

#[test]
fn staggered_snapshots_fall_at_different_indexes_on_each_server() {
    // Without the stagger every server snapshots at the same indexes.
    for me in 1..=3 {
        assert_eq!(snapshot_indexes(me, false), [4, 8, 12], "node {me}");
    }
    // With it, rank i of 4 voters starts i/4 of the interval later and keeps that phase.
    assert_eq!(snapshot_indexes(1, true), [5, 9, 13]);
    assert_eq!(snapshot_indexes(2, true), [6, 10]);
    assert_eq!(snapshot_indexes(3, true), [7, 11]);
}

#[test]
fn an_applied_prefix_is_snapshotted_compacted_and_restored_after_a_crash() {
    let mut node = TestNode::new(
        NodeId(1),
        Raft::new(snapshotting_config(3), KvStateMachine::default()),
        7,
    );
    node.start();
    let effects = node.deliver(
        NodeId(0),
        append(1, (0, 0), vec![put(1, 1, 5), put(1, 2, 6)], 2),
    );
    // The snapshot is built off the write path: nothing is compacted until it is durable.
    assert_eq!(node.actor.snapshot_index(), LogIndex::ZERO);
    assert_eq!(node.storage.log_bounds().0, LogIndex(1));
    node.finish_background(&effects);
    // §7: the applied prefix went into a snapshot and out of the log.
    assert_eq!(node.actor.snapshot_index(), LogIndex(2));
    assert_eq!(node.storage.log_bounds().0, LogIndex(3));
    node.storage.sync();
    node.crash_and_restart(Raft::new(snapshotting_config(3), KvStateMachine::default()));
    assert_eq!(node.actor.last_applied(), LogIndex(2));
    assert_eq!(node.actor.state_machine().get("x"), Some(6));
    assert_eq!(node.actor.term_at(LogIndex(2)), Some(Term(1)));
}

#[test]
fn a_snapshot_blob_a_crash_left_unreferenced_is_swept_at_restart() {
    let snapshot_blobs = |storage: &synod_core::MemStorage| -> Vec<String> {
        storage
            .blob_names(b"raft/snapshot/")
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    };
    let fresh = || Raft::new(snapshotting_config(3), KvStateMachine::default());
    let mut node = TestNode::new(NodeId(1), fresh(), 7);
    node.start();
    let effects = node.deliver(
        NodeId(0),
        append(1, (0, 0), vec![put(1, 1, 5), put(1, 2, 6)], 2),
    );
    node.storage.sync();
    // The background work made its blob durable; the batch pointing at it is not.
    node.finish_background(&effects);
    assert_eq!(
        snapshot_blobs(&node.storage),
        ["raft/snapshot/00000000000000000002"]
    );
    node.crash_and_restart(fresh());
    assert_eq!(node.actor.snapshot_index(), LogIndex::ZERO);
    node.storage.sync();
    assert!(
        snapshot_blobs(&node.storage).is_empty(),
        "{:?}",
        snapshot_blobs(&node.storage)
    );
    // The current snapshot's blob is kept across a restart.
    let effects = node.deliver(NodeId(0), append(1, (2, 1), vec![put(1, 3, 7)], 3));
    node.finish_background(&effects);
    node.storage.sync();
    let current = node.actor.snapshot_index();
    assert!(current > LogIndex::ZERO);
    node.crash_and_restart(fresh());
    node.storage.sync();
    assert_eq!(
        snapshot_blobs(&node.storage),
        [format!("raft/snapshot/{:020}", current.0)]
    );
    assert_eq!(node.actor.snapshot_index(), current);
}

#[test]
fn a_snapshot_over_the_size_bound_is_not_stored_and_the_log_is_kept() {
    let mut config = snapshotting_config(3);
    config.max_snapshot_bytes = Some(1);
    let mut node = TestNode::new(NodeId(1), Raft::new(config, KvStateMachine::default()), 7);
    node.start();
    node.deliver(
        NodeId(0),
        append(1, (0, 0), vec![put(1, 1, 5), put(1, 2, 6)], 2),
    );
    assert_eq!(node.actor.last_applied(), LogIndex(2));
    assert_eq!(node.actor.snapshot_index(), LogIndex::ZERO);
    assert_eq!(node.storage.log_bounds().0, LogIndex(1));
    // A bound the snapshot fits under snapshots again, after the deferral.
    let mut config = snapshotting_config(3);
    config.max_snapshot_bytes = Some(1 << 20);
    node.storage.sync();
    node.crash_and_restart(Raft::new(config, KvStateMachine::default()));
    let effects = node.deliver(
        NodeId(0),
        append(1, (2, 1), vec![put(1, 3, 7), put(1, 4, 8)], 4),
    );
    node.finish_background(&effects);
    assert_eq!(node.actor.snapshot_index(), LogIndex(4));
}

#[test]
fn a_leader_sends_a_compacted_prefix_as_a_chunked_snapshot() {
    let mut leader = TestNode::new(
        NodeId(0),
        Raft::new(snapshotting_config(3), KvStateMachine::default()),
        7,
    );
    leader.start();
    elect(&mut leader);
    let term = leader.actor.current_term();
    for seq in 1..=3 {
        leader.deliver(
            ClientId(1),
            RaftMsg::ClientWrite {
                session: SessionId(1),
                seq,
                command: KvCommand::Put {
                    key: "x".into(),
                    value: seq,
                },
            },
        );
    }
    local_durable(&mut leader, 4);
    let effects = leader.deliver(NodeId(1), ack(term, 4));
    leader.finish_background(&effects);
    assert!(leader.actor.snapshot_index() >= LogIndex(2));

    // Server 2 has nothing; the leader's log no longer holds what it needs.
    let mut follower = TestNode::new(
        NodeId(2),
        Raft::new(snapshotting_config(3), KvStateMachine::default()),
        8,
    );
    follower.start();
    let mut to_follower = leader.deliver(
        NodeId(2),
        RaftMsg::AppendEntriesResponse {
            term,
            success: false,
            match_index: LogIndex(0),
            prev_log_index: LogIndex(0),
            conflict_term: None,
            conflict_index: LogIndex(1),
            round: 0,
        },
    );
    // Figure 13: chunks at increasing offsets, one at a time, the last marked done.
    let mut chunks = 0;
    loop {
        let msgs = sent_to(&to_follower, 2);
        let [msg @ RaftMsg::InstallSnapshot { .. }] = &msgs[..] else {
            break;
        };
        chunks += 1;
        let answer = follower.deliver(NodeId(0), msg.clone());
        follower.storage.sync();
        let [reply] = &sent_to(&answer, 0)[..] else {
            panic!("one answer per chunk");
        };
        to_follower = leader.deliver(NodeId(2), reply.clone());
    }
    assert!(chunks > 1, "a 4-byte chunk size splits the snapshot");
    assert_eq!(
        follower.actor.snapshot_index(),
        leader.actor.snapshot_index()
    );
    assert_eq!(
        follower.actor.state_machine().get("x"),
        leader.actor.state_machine().get("x")
    );
    // After the snapshot, replication continues with AppendEntries.
    assert!(matches!(
        sent_to(&to_follower, 2)[..],
        [RaftMsg::AppendEntries { .. }]
    ));
}

fn change(change: crate::raft::MembershipChange) -> Msg {
    RaftMsg::ChangeMembership { change }
}

#[test]
fn a_learner_neither_votes_nor_counts_until_promoted() {
    use crate::raft::MembershipChange::{AddLearner, PromoteLearner};
    let mut node = server(0, 3);
    elect(&mut node);
    let term = node.actor.current_term();
    local_durable(&mut node, 1);
    node.deliver(NodeId(1), ack(term, 1));
    assert_eq!(node.actor.commit_index(), LogIndex(1));
    // Thesis §4.2.1: server 3 joins as a learner and receives the log...
    let effects = node.deliver(ClientId(9), change(AddLearner(NodeId(3))));
    assert!(node.actor.membership().learners.contains(&NodeId(3)));
    assert!(sent_to(&effects, 3)
        .iter()
        .any(|m| matches!(m, RaftMsg::AppendEntries { .. })));
    // ...but a second change waits until the first is committed (thesis §4.1).
    node.deliver(ClientId(9), change(PromoteLearner(NodeId(3))));
    assert!(node.actor.membership().learners.contains(&NodeId(3)));
    local_durable(&mut node, 2);
    node.deliver(NodeId(1), ack(term, 2));
    assert_eq!(node.actor.commit_index(), LogIndex(2));
    // The learner's acknowledgement does not count toward commitment.
    node.deliver(
        ClientId(1),
        RaftMsg::ClientWrite {
            session: SessionId(1),
            seq: 1,
            command: KvCommand::Delete { key: "x".into() },
        },
    );
    local_durable(&mut node, 3);
    node.deliver(NodeId(3), ack(term, 3));
    assert_eq!(node.actor.commit_index(), LogIndex(2));
    // Once caught up it is promoted, and from then on it counts.
    node.deliver(ClientId(9), change(PromoteLearner(NodeId(3))));
    assert!(node.actor.membership().voters.contains(&NodeId(3)));
}

#[test]
fn a_leader_removed_from_the_voters_steps_down_once_that_is_committed() {
    use crate::raft::MembershipChange::RemoveServer;
    let mut node = server(0, 3);
    elect(&mut node);
    let term = node.actor.current_term();
    local_durable(&mut node, 1);
    node.deliver(NodeId(1), ack(term, 1));
    node.deliver(ClientId(9), change(RemoveServer(NodeId(0))));
    local_durable(&mut node, 2);
    // The leader no longer counts itself: its own durable copy is not enough.
    node.deliver(NodeId(1), ack(term, 2));
    assert_eq!(node.actor.role(), Role::Leader);
    // Thesis §4.2.2: with both remaining voters holding it, the change commits and the
    // leader steps down.
    node.deliver(NodeId(2), ack(term, 2));
    assert_eq!(node.actor.commit_index(), LogIndex(2));
    assert_eq!(node.actor.role(), Role::Follower);
}

#[test]
fn a_leader_with_a_lease_answers_reads_without_a_round_trip() {
    let mut config = config(3);
    config.lease_read_max_drift_ppm = Some(1000);
    let mut node = TestNode::new(NodeId(0), Raft::new(config, KvStateMachine::default()), 7);
    node.start();
    elect(&mut node);
    let term = node.actor.current_term();
    local_durable(&mut node, 1);
    node.deliver(NodeId(1), ack(term, 1));
    let effects = node.fire(RaftTimer::Heartbeat);
    let round = sent_to(&effects, 1)
        .iter()
        .find_map(|m| match m {
            RaftMsg::AppendEntries { round, .. } => Some(*round),
            _ => None,
        })
        .expect("a heartbeat");
    let mut echo = ack(term, 1);
    if let RaftMsg::AppendEntriesResponse { round: r, .. } = &mut echo {
        *r = round;
    }
    node.deliver(NodeId(1), echo);
    let read = || RaftMsg::ClientRead {
        seq: 1,
        command: KvCommand::Get { key: "x".into() },
    };
    // Thesis §6.4.1: inside the lease, the read is answered at once...
    let effects = node.deliver(ClientId(2), read());
    assert_eq!(
        replies(&effects),
        vec![(
            ClientId(2),
            RaftMsg::ClientReply {
                seq: 1,
                output: KvOutput::Value(None)
            }
        )]
    );
    // ...and after it (an election timeout, shortened by the drift bound), not.
    node.advance(Duration::from_millis(150));
    let effects = node.deliver(ClientId(2), read());
    assert!(replies(&effects).is_empty());
}

fn write(seq: u64, value: u64) -> Msg {
    RaftMsg::ClientWrite {
        session: SessionId(5),
        seq,
        command: KvCommand::Put {
            key: "x".into(),
            value,
        },
    }
}

#[test]
fn a_follower_proposes_a_write_and_answers_it_from_its_own_apply() {
    let mut cfg = config(3);
    cfg.follower_proposals = true;
    let mut node = TestNode::new(NodeId(1), Raft::new(cfg, KvStateMachine::default()), 7);
    node.start();
    // Leader 0 of term 1 is known from its first AppendEntries (its no-op).
    node.deliver(NodeId(0), append(1, (0, 0), vec![entry(1)], 0));
    let effects = node.deliver(ClientId(9), write(1, 42));
    // etcd's MsgProp: the command goes to the leader, unsynced, and no NotLeader comes back.
    assert!(replies(&effects).is_empty());
    let proposals: Vec<Msg> = sent_to(&effects, 0);
    assert!(
        matches!(proposals.as_slice(), [RaftMsg::Propose { seq: 1, .. }]),
        "{proposals:?}"
    );
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::SendUnsynced { to: NodeId(0), .. })));
    // The leader appends it at index 2; once the follower learns it is committed and
    // applies it, it answers its own client.
    let mut e = put(1, 1, 42);
    if let EntryPayload::Command { session, .. } = &mut e.payload {
        *session = SessionId(5);
    }
    let effects = node.deliver(NodeId(0), append(1, (1, 1), vec![e.clone()], 1));
    assert!(replies(&effects).is_empty(), "not committed yet");
    let effects = node.deliver(NodeId(0), append(1, (2, 1), vec![], 2));
    assert_eq!(
        replies(&effects),
        vec![(
            ClientId(9),
            RaftMsg::ClientReply {
                seq: 1,
                output: KvOutput::Done
            }
        )]
    );
    // A retry of the applied write (its first answer lost) is answered from the session
    // table without another proposal.
    let effects = node.deliver(ClientId(10), write(1, 42));
    assert!(sent_to(&effects, 0).is_empty());
    assert_eq!(replies(&effects).len(), 1);
}

#[test]
fn without_follower_proposals_a_follower_redirects_writes() {
    let mut node = server(1, 3);
    node.deliver(NodeId(0), append(1, (0, 0), vec![entry(1)], 0));
    let effects = node.deliver(ClientId(9), write(1, 42));
    assert!(sent_to(&effects, 0).is_empty());
    assert_eq!(
        replies(&effects),
        vec![(
            ClientId(9),
            RaftMsg::NotLeader {
                seq: 1,
                leader_hint: Some(NodeId(0))
            }
        )]
    );
}

#[test]
fn a_leader_appends_a_proposal_once_and_answers_no_client() {
    let mut node = server(0, 3);
    elect(&mut node);
    local_durable(&mut node, 1);
    let term = node.actor.current_term();
    node.deliver(NodeId(1), ack(term, 1));
    let propose = RaftMsg::Propose {
        session: SessionId(5),
        seq: 1,
        command: KvCommand::Put {
            key: "x".into(),
            value: 7,
        },
    };
    node.deliver(NodeId(1), propose.clone());
    assert_eq!(node.actor.last_log_index(), LogIndex(2));
    // A duplicate (the follower's client retried) is not appended again.
    node.deliver(NodeId(1), propose);
    assert_eq!(node.actor.last_log_index(), LogIndex(2));
    local_durable(&mut node, 2);
    let effects = node.deliver(NodeId(1), ack(term, 2));
    assert_eq!(node.actor.commit_index(), LogIndex(2));
    assert!(replies(&effects).is_empty());
}
