//! Linearizable reads: ReadIndex (thesis §6.4) and opt-in leases (thesis §6.4.1).

use super::*;

/// The round of a read that waits for the next heartbeat round to start.
pub(super) const NEXT_ROUND: u64 = u64::MAX;

impl<S: StateMachine> Raft<S> {
    pub(super) fn on_client_read(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        client: ClientId,
        seq: u64,
        command: S::Command,
    ) {
        if self.role != Role::Leader {
            return self.not_leader(ctx, client, seq);
        }
        let now = ctx.now();
        let leased = self.lease_until.is_some_and(|until| now < until)
            && self.transfer.is_none()
            && self.log.term_at(self.commit_index) == Some(self.current_term)
            && self.last_applied == self.commit_index;
        if leased {
            // Thesis §6.4.1: within the lease no other leader can have been elected.
            let output = self.state_machine.read(&command);
            return ctx.reply(client, RaftMsg::ClientReply { seq, output });
        }
        // One heartbeat round at a time serves every read (etcd batches ReadIndex the
        // same way): a read that arrives while a round is unconfirmed cannot use it, as
        // that round left before the read arrived, so it waits for the next one, which
        // starts as soon as the current one is confirmed.
        let round = if self.read_round > self.confirmed_round() {
            NEXT_ROUND
        } else {
            self.start_read_round(ctx)
        };
        self.reads.push(PendingRead {
            client,
            seq,
            command,
            read_index: None,
            round,
        });
        self.advance_reads(ctx);
    }

    /// Start a heartbeat round for reads and send it to every peer.
    fn start_read_round(&mut self, ctx: &mut RaftCtx<'_, S>) -> u64 {
        let round = self.next_round(ctx.now());
        self.read_round = round;
        for peer in self.peers() {
            self.send_append(ctx, peer, false);
        }
        round
    }

    /// The newest heartbeat round that a majority of voters has echoed in this term.
    pub(super) fn confirmed_round(&self) -> u64 {
        let mut rounds: Vec<u64> = self
            .membership
            .voters
            .iter()
            .map(|&v| {
                if v == self.me {
                    u64::MAX
                } else {
                    self.progress.get(&v).map_or(0, |p| p.acked_round)
                }
            })
            .collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        rounds.get(self.quorum() - 1).copied().unwrap_or(0)
    }

    /// Start a new heartbeat round, remembering when (for the lease).
    pub(super) fn next_round(&mut self, now: Instant) -> u64 {
        self.round += 1;
        if self.config.lease_read_max_drift_ppm.is_some() && !self.lease_forbidden {
            self.round_sent.insert(self.round, now);
            // Unconfirmed rounds pile up only while cut off; the oldest matter least.
            if self.round_sent.len() > 1024 {
                self.round_sent.pop_first();
            }
        }
        self.round
    }

    /// Thesis §6.4.1: extend the lease from the send time of the newest round a
    /// majority confirmed. A voter that echoed it will not help elect another leader
    /// for an election timeout of its own clock after it received it, which is at
    /// least `election_timeout × (1 − ρ) / (1 + ρ)` of ours, for clock rates within ±ρ.
    pub(super) fn extend_lease(&mut self) {
        let Some(ppm) = self.config.lease_read_max_drift_ppm else {
            return;
        };
        let confirmed = self.confirmed_round();
        let Some(&sent) = self.round_sent.get(&confirmed) else {
            return;
        };
        self.round_sent = self.round_sent.split_off(&confirmed);
        let timeout = u128::from(duration_nanos(self.config.election_timeout));
        let ppm = u128::from(ppm.min(999_999));
        #[allow(unused_mut)]
        let mut lease = timeout * (1_000_000 - ppm) / (1_000_000 + ppm);
        #[cfg(test)]
        if self.bug == Some(Bug::LeaseTooLong) {
            lease *= 20;
        }
        let until = sent + Duration::from_nanos(u64::try_from(lease).unwrap_or(u64::MAX));
        self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
    }

    /// Serve the reads whose round a majority confirmed (thesis §6.4).
    pub(super) fn advance_reads(&mut self, ctx: &mut RaftCtx<'_, S>) {
        if self.role != Role::Leader || self.reads.is_empty() {
            return;
        }
        if self.log.term_at(self.commit_index) != Some(self.current_term) {
            return;
        }
        let confirmed = self.confirmed_round();
        let commit_index = self.commit_index;
        let last_applied = self.last_applied;
        let mut still_waiting = Vec::new();
        for mut read in std::mem::take(&mut self.reads) {
            let read_index = *read.read_index.get_or_insert(commit_index);
            if read.round <= confirmed && read_index <= last_applied {
                let output = self.state_machine.read(&read.command);
                ctx.reply(
                    read.client,
                    RaftMsg::ClientReply {
                        seq: read.seq,
                        output,
                    },
                );
            } else {
                still_waiting.push(read);
            }
        }
        self.reads = still_waiting;
        let queued = self.reads.iter().any(|r| r.round == NEXT_ROUND);
        if queued && self.read_round <= confirmed {
            let round = self.start_read_round(ctx);
            for read in self.reads.iter_mut().filter(|r| r.round == NEXT_ROUND) {
                read.round = round;
            }
        }
    }
}
