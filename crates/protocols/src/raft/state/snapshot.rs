//! Snapshots and log compaction (§7, Figure 13).

use super::sessions::SessionEntry;
use super::*;
use synod_core::{Background, Storage};

/// Storage key of the current snapshot's [`SnapshotMeta`].
pub(crate) const SNAPSHOT_META_KEY: &[u8] = b"raft/snapshot-meta";

/// Where the current snapshot is: its last entry and the blob holding its data. The data
/// is a blob of its own, named by its index, so a snapshot being written in the
/// background never overwrites the one a crash would fall back to.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotMeta {
    index: LogIndex,
    term: Term,
    hash: u64,
    blob: Vec<u8>,
}

/// What every snapshot blob's name starts with.
const SNAPSHOT_BLOB_PREFIX: &str = "raft/snapshot/";

/// The blob name of the snapshot whose last entry is `index`.
fn snapshot_blob(index: LogIndex) -> Vec<u8> {
    format!("{SNAPSHOT_BLOB_PREFIX}{:020}", index.0).into_bytes()
}

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

    /// §7: snapshot the applied state without stalling the write path. The state machine
    /// hands over a frozen view at the applied index (cheap: shared, copy-on-write); the
    /// driver encodes it and writes it as a durable blob on another thread, and reports
    /// back with [`RaftMsg::SnapshotWritten`]. The index, term and hash are fixed here.
    pub(super) fn take_snapshot(&mut self, ctx: &mut RaftCtx<'_, S>) {
        let index = self.last_applied;
        let (Some(term), Some(hash)) = (self.log.term_at(index), self.log.hash_at(index)) else {
            return;
        };
        let max = self.config.max_snapshot_bytes.unwrap_or(u64::MAX);
        if self
            .state_machine
            .snapshot_size_hint()
            .is_some_and(|n| n > max)
        {
            self.snapshot_deferred_until = LogIndex(index.0 + self.config.snapshot_threshold);
            return;
        }
        let view = self.state_machine.snapshot_view();
        let sessions = self.sessions.entries();
        let (_, membership) = self.membership_at(index);
        self.snapshot_in_flight = Some((index, membership.clone()));
        let build = move || {
            let state = view();
            codec::encode(&(serde_bytes::Bytes::new(&state), sessions, membership))
        };
        let done = move |data| RaftMsg::SnapshotWritten {
            index,
            term,
            hash,
            data,
        };
        ctx.background(Background::new(snapshot_blob(index), build, done));
        #[cfg(test)]
        if self.bug == Some(Bug::CompactBeforeSnapshotDurable) {
            self.log.compact(ctx.storage(), index);
        }
    }

    /// The background snapshot asked for at `index` is durable: point at it, compact the
    /// log it covers, and drop the previous snapshot's blob. The pointer and the
    /// compaction go into one batch, after the blob is durable, so a crash leaves either
    /// the old snapshot with its log or the new one with (at least) its log.
    pub(super) fn on_snapshot_written(
        &mut self,
        ctx: &mut RaftCtx<'_, S>,
        (index, term, hash): (LogIndex, Term, u64),
        data: Vec<u8>,
    ) {
        let pending = match self.snapshot_in_flight.take() {
            Some((at, membership)) if at == index => membership,
            other => {
                // Not the one asked for (a restart forgot it): its blob is garbage.
                self.snapshot_in_flight = other;
                if self.snapshot.as_ref().is_none_or(|s| s.index != index) {
                    ctx.storage().delete_blob(&snapshot_blob(index));
                }
                return;
            }
        };
        let max = self.config.max_snapshot_bytes.unwrap_or(u64::MAX);
        // A snapshot installed from the leader meanwhile may already cover more.
        let stale = self.snapshot.as_ref().is_some_and(|s| s.index >= index)
            || self.log.term_at(index) != Some(term);
        if stale || data.len() as u64 > max {
            if data.len() as u64 > max {
                self.snapshot_deferred_until = LogIndex(index.0 + self.config.snapshot_threshold);
            }
            ctx.storage().delete_blob(&snapshot_blob(index));
            return;
        }
        let snapshot = Snapshot {
            index,
            term,
            hash,
            data,
        };
        self.store_snapshot_pointer(ctx, &snapshot);
        self.log.compact(ctx.storage(), index);
        self.base_membership = pending;
        self.snapshot = Some(snapshot);
    }

    /// Make `snapshot` (already durable as its blob, or written in this batch) the
    /// current one, and drop the previous one's blob once this batch is durable.
    fn store_snapshot_pointer(&mut self, ctx: &mut RaftCtx<'_, S>, snapshot: &Snapshot) {
        let meta = SnapshotMeta {
            index: snapshot.index,
            term: snapshot.term,
            hash: snapshot.hash,
            blob: snapshot_blob(snapshot.index),
        };
        ctx.storage().put_value(SNAPSHOT_META_KEY, &meta);
        if let Some(old) = &self.snapshot {
            if old.index != snapshot.index {
                ctx.storage().delete_blob(&snapshot_blob(old.index));
            }
        }
        // A store from before snapshot pointers kept the whole snapshot under one name.
        if ctx.storage().get_blob(SNAPSHOT_KEY).is_some() {
            ctx.storage().delete_blob(SNAPSHOT_KEY);
        }
    }

    /// The snapshot `on_start` recovers: the one the pointer names, or one stored whole
    /// by an older version.
    pub(super) fn load_snapshot(storage: &mut dyn Storage) -> Result<Option<Snapshot>, String> {
        match storage.get_value::<SnapshotMeta>(SNAPSHOT_META_KEY) {
            Ok(Some(meta)) => {
                let data = storage.get_blob(&meta.blob).ok_or_else(|| {
                    format!(
                        "snapshot blob {} is missing",
                        String::from_utf8_lossy(&meta.blob)
                    )
                })?;
                Ok(Some(Snapshot {
                    index: meta.index,
                    term: meta.term,
                    hash: meta.hash,
                    data,
                }))
            }
            Ok(None) => storage
                .get_blob(SNAPSHOT_KEY)
                .map(|b| codec::decode::<Snapshot>(&b))
                .transpose()
                .map_err(|e| format!("snapshot does not decode: {e}")),
            Err(e) => Err(format!("snapshot pointer does not decode: {e}")),
        }
    }

    /// Delete the snapshot blobs nothing points at: a background snapshot whose process
    /// died after writing its blob but before the batch that points at it, or a previous
    /// snapshot whose deletion a crash cut short. Called at start, when no snapshot is in
    /// flight, so every blob but the current one is garbage.
    pub(super) fn sweep_orphan_snapshots(&mut self, ctx: &mut RaftCtx<'_, S>) {
        let current = self.snapshot.as_ref().map(|s| snapshot_blob(s.index));
        for name in ctx.storage().blob_names(SNAPSHOT_BLOB_PREFIX.as_bytes()) {
            if Some(&name) != current.as_ref() {
                ctx.storage().delete_blob(&name);
            }
        }
    }

    /// Replace the state machine, session table and base membership with a snapshot's.
    /// On an error nothing has changed.
    pub(super) fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        type Contents<O> = (
            serde_bytes::ByteBuf,
            Vec<(SessionId, SessionEntry<O>)>,
            Membership,
        );
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
        // came from the network; drop them (restore changes nothing then) and let the
        // leader start over.
        if self.restore(&incoming.data).is_err() {
            let msg = respond(self, 0, false);
            return ctx.send(from, msg);
        }
        let snapshot = Snapshot {
            index: incoming.index,
            term: incoming.term,
            hash: incoming.hash,
            data: incoming.data,
        };
        // Rule 5: save the snapshot (the blob is written before the batch that points
        // at it); rules 6-7: keep or discard the log after it.
        ctx.storage()
            .put_blob(&snapshot_blob(snapshot.index), &snapshot.data);
        self.store_snapshot_pointer(ctx, &snapshot);
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
