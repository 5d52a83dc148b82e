//! Single-server membership changes with learners (thesis ch. 4).

use super::*;

impl<S: StateMachine> Raft<S> {
    /// The membership in effect at `index`: the latest config entry up to it.
    pub(super) fn membership_at(&self, index: LogIndex) -> (LogIndex, Membership) {
        let mut at = index.min(self.log.last_index());
        while at > self.log.base_index() {
            if let Some(Entry {
                payload: EntryPayload::Config(membership),
                ..
            }) = self.log.entry(at)
            {
                return (at, membership.clone());
            }
            at = at.prev();
        }
        (self.log.base_index(), self.base_membership.clone())
    }

    /// Use the latest membership in the log, after it changed (thesis §4.1).
    pub(super) fn refresh_membership(&mut self) {
        let (index, membership) = self.membership_at(self.log.last_index());
        self.membership_index = index;
        self.membership = membership;
        if self.role == Role::Leader {
            let last = self.log.last_index();
            let replicas = self.replicas();
            self.progress.retain(|peer, _| replicas.contains(peer));
            for peer in replicas {
                // Probe a new member from the config entry that added it, so it hears
                // at once instead of at the next heartbeat.
                self.progress
                    .entry(peer)
                    .or_insert_with(|| Progress::new(last.prev()));
            }
        }
    }

    /// Thesis §4.1: one server at a time, and only once the previous change and an entry
    /// of this term are committed. A learner is promoted only when it is caught up
    /// (thesis §4.2.1): within one batch of the leader's last index.
    pub(super) fn on_change_membership(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        change: MembershipChange,
    ) {
        if self.role != Role::Leader
            || self.membership_index > self.commit_index
            || self.log.term_at(self.commit_index) != Some(self.current_term)
        {
            return;
        }
        let mut next = self.membership.clone();
        let applies = match change {
            MembershipChange::AddLearner(node) => {
                !next.voters.contains(&node) && next.learners.insert(node)
            }
            MembershipChange::PromoteLearner(node) => {
                let caught_up = self.progress.get(&node).is_some_and(|p| {
                    p.match_index.0 + self.config.max_entries_per_append as u64
                        >= self.log.last_index().0
                });
                caught_up && next.learners.remove(&node) && next.voters.insert(node)
            }
            MembershipChange::RemoveServer(node) => {
                let removed = next.learners.remove(&node) || next.voters.remove(&node);
                removed && !next.voters.is_empty()
            }
        };
        if !applies {
            return;
        }
        // The lease argument counts on the voters that confirmed it; keep it simple and
        // give up leases for the rest of the term.
        self.lease_until = None;
        self.round_sent.clear();
        self.lease_forbidden = true;
        if self.append_local(ctx, EntryPayload::Config(next)).is_some() {
            self.refresh_membership();
            self.replicate_all(ctx);
            // A leader that removed itself counts only the others from now on.
            self.advance_commit(ctx);
        }
    }
}
