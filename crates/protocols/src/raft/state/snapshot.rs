//! Snapshots and log compaction (§7, Figure 13).

use super::sessions::SessionEntry;
use super::*;

impl<S: StateMachine> Raft<S> {
    /// Send `peer` the next chunk of the current snapshot (Figure 13), one at a time.
    pub(super) fn send_snapshot_chunk(&mut self, ctx: &mut RaftCtx<'_, S>, peer: NodeId) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        let offset = match progress.sending_snapshot {
            Some((index, offset)) if index == snapshot.index => offset,
            _ => 0,
        };
        progress.sending_snapshot = Some((snapshot.index, offset));
        progress.in_flight = 1;
        progress.probing = true;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(snapshot.data.len());
        let end = start
            .saturating_add(self.config.snapshot_chunk_bytes.max(1))
            .min(snapshot.data.len());
        let msg = RaftMsg::InstallSnapshot {
            term: self.current_term,
            last_included_index: snapshot.index,
            last_included_term: snapshot.term,
            last_included_hash: snapshot.hash,
            offset,
            data: snapshot.data[start..end].to_vec(),
            done: end == snapshot.data.len(),
        };
        ctx.send_unsynced(peer, msg);
    }

    /// §7: store the applied state as a snapshot, then discard the log it covers. The
    /// snapshot is written before the compaction, so a crash never loses both.
    pub(super) fn take_snapshot(&mut self, ctx: &mut RaftCtx<'_, S>) {
        let index = self.last_applied;
        let (Some(term), Some(hash)) = (self.log.term_at(index), self.log.hash_at(index)) else {
            return;
        };
        let max = self.config.max_snapshot_bytes.unwrap_or(u64::MAX);
        let defer = |this: &mut Self| {
            this.snapshot_deferred_until = LogIndex(index.0 + this.config.snapshot_threshold);
        };
        if self
            .state_machine
            .snapshot_size_hint()
            .is_some_and(|n| n > max)
        {
            return defer(self);
        }
        let sessions = self.sessions.entries();
        let (_, membership) = self.membership_at(index);
        let data = codec::encode(&(self.state_machine.snapshot(), sessions, membership.clone()));
        if data.len() as u64 > max {
            return defer(self);
        }
        let snapshot = Snapshot {
            index,
            term,
            hash,
            data,
        };
        ctx.storage()
            .put_blob(SNAPSHOT_KEY, &codec::encode(&snapshot));
        self.log.compact(ctx.storage(), index);
        self.base_membership = membership;
        self.snapshot = Some(snapshot);
    }

    /// Replace the state machine, session table and base membership with a snapshot's.
    pub(super) fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        type Contents<O> = (Vec<u8>, Vec<(SessionId, SessionEntry<O>)>, Membership);
        let (state, sessions, membership): Contents<S::Output> =
            codec::decode(data).map_err(|e| format!("snapshot does not decode: {e}"))?;
        self.state_machine.restore(&state)?;
        self.sessions = Sessions::from_entries(sessions);
        self.base_membership = membership;
        Ok(())
    }

    /// Figure 13, receiver implementation.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_install_snapshot(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        from: NodeId,
        term: Term,
        (index, last_term, hash): (LogIndex, Term, u64),
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) {
        let respond =
            |this: &Self, next_offset: u64, done: bool| RaftMsg::InstallSnapshotResponse {
                term: this.current_term,
                last_included_index: index,
                next_offset,
                done,
            };
        // Rule 1: reply immediately if term < currentTerm.
        if term < self.current_term {
            let msg = respond(self, 0, false);
            return ctx.send(from, msg);
        }
        self.observe_term(ctx, term);
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(ctx, Some(from));
        }
        self.last_leader_contact = Some(ctx.now());
        self.reset_election_timer(ctx);
        if index <= self.commit_index {
            // We already hold everything it covers, committed.
            self.incoming = None;
            let msg = respond(self, 0, true);
            return ctx.send(from, msg);
        }
        // Rules 2-4: a chunk at offset 0 starts a new snapshot; others must follow on.
        let resumed = self
            .incoming
            .as_ref()
            .is_some_and(|i| (i.index, i.term) == (index, last_term) && !i.data.is_empty());
        // A late duplicate of the first chunk must not restart a transfer in progress.
        if offset == 0 && !resumed {
            self.incoming = Some(IncomingSnapshot {
                index,
                term: last_term,
                hash,
                data: Vec::new(),
            });
        }
        let Some(incoming) = self
            .incoming
            .as_mut()
            .filter(|i| (i.index, i.term, i.data.len() as u64) == (index, last_term, offset))
        else {
            let expected = self
                .incoming
                .as_ref()
                .filter(|i| (i.index, i.term) == (index, last_term))
                .map_or(0, |i| i.data.len() as u64);
            let msg = respond(self, expected, false);
            return ctx.send(from, msg);
        };
        incoming.data.extend_from_slice(&data);
        let received = incoming.data.len() as u64;
        if !done {
            let msg = respond(self, received, false);
            return ctx.send(from, msg);
        }
        let Some(incoming) = self.incoming.take() else {
            return;
        };
        // Rule 8: reset the state machine from the snapshot. Bytes that do not decode
        // came from the network; drop them and let the leader start over.
        let previous = (
            std::mem::replace(&mut self.sessions, Sessions::new()),
            self.state_machine.snapshot(),
            self.base_membership.clone(),
        );
        if self.restore(&incoming.data).is_err() {
            self.sessions = previous.0;
            self.base_membership = previous.2;
            if let Err(why) = self.state_machine.restore(&previous.1) {
                return self.set_fault(ctx, why);
            }
            let msg = respond(self, 0, false);
            return ctx.send(from, msg);
        }
        let snapshot = Snapshot {
            index: incoming.index,
            term: incoming.term,
            hash: incoming.hash,
            data: incoming.data,
        };
        // Rule 5: save the snapshot; rules 6-7: keep or discard the log after it.
        ctx.storage()
            .put_blob(SNAPSHOT_KEY, &codec::encode(&snapshot));
        self.log
            .install_snapshot(ctx.storage(), snapshot.index, snapshot.term, snapshot.hash);
        self.refresh_membership();
        self.commit_index = snapshot.index;
        self.last_applied = snapshot.index;
        self.snapshot = Some(snapshot);
        // Held until the snapshot is durable.
        let msg = respond(self, received, true);
        ctx.send(from, msg);
    }

    pub(super) fn on_install_snapshot_response(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        from: NodeId,
        term: Term,
        index: LogIndex,
        next_offset: u64,
        done: bool,
    ) {
        self.observe_term(ctx, term);
        if self.role != Role::Leader || term != self.current_term {
            return;
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.acked_since_tick = true;
        if done {
            progress.match_index = progress.match_index.max(index);
            progress.next_index = progress.next_index.max(progress.match_index.next());
            progress.sending_snapshot = None;
            progress.probing = true;
            progress.in_flight = 0;
            self.advance_commit(ctx);
            self.send_append(ctx, from, true);
            return;
        }
        match progress.sending_snapshot {
            // Only an answer that moves the offset sends a chunk; a duplicate answer
            // would otherwise start a second chain of chunks.
            Some((sending, offset)) if sending == index && offset != next_offset => {
                progress.sending_snapshot = Some((sending, next_offset));
                self.send_snapshot_chunk(ctx, from);
            }
            _ => {}
        }
    }
}
