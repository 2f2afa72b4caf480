//! Retention: pruning the ledger's oldest events, when the operator asks for it (the default
//! keeps everything). Each replica prunes its own copy by its own configuration (set it the same
//! on every replica); the Raft log compacts independently of this.
//!
//! ```text
//!   prune(cutoff)
//!     1. horizon := { seq: seq_at(cutoff), at: cutoff }      saved first: from here on queries
//!                                                             before `cutoff` are refused
//!        (never past the current snapshot's last event: a restart rebuilds the state from that
//!        snapshot plus the events after it, so those stay until a newer snapshot covers them)
//!     2. events in [pruned_to, horizon.seq), a chunk at a time, under the state machine's lock:
//!          IpBound of a lease still live ─▶ kept (it explains that lease)
//!          anything else                ─▶ event and its index entries removed
//!        pruned_to := chunk end                               (a restart resumes here)
//!
//!   later, when a kept bind's lease is released ─▶ the state machine removes the bind then
//! ```
//!
//! A chunk holds the state machine's lock, then the snapshot files' lock (the order installing a
//! snapshot takes them in; the files lock is only tried, so a sendable snapshot being made
//! holds up pruning, not applying) for a few milliseconds, so applying and sending snapshots
//! interleave with a long pass.

use std::sync::Arc;

use ipam_core::Event;
use ipam_core::EventKind;
use ipam_core::ids::Timestamp;
use ipam_core::state::State;
use sled::Transactional;

use crate::ledger::Horizon;
use crate::ledger::LedgerError;
use crate::ledger::Result;
use crate::ledger::index;
use crate::raft::codec;
use crate::raft::state_machine::SNAPSHOT_LAST_SEQ;
use crate::raft::state_machine::SharedApplied;
use crate::raft::state_machine::event_key;

/// Events examined per chunk (one sled transaction, one hold of the lock).
const CHUNK: u64 = 2_000;

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The horizon after the pass.
    pub horizon: Horizon,
    /// Events removed.
    pub removed: u64,
    /// Events below the horizon kept because they explain a live lease.
    pub kept: u64,
}

/// Prunes one replica's ledger (cheap to clone).
#[derive(Debug, Clone)]
pub struct Retention {
    applied: SharedApplied,
    events: sled::Tree,
    index: sled::Tree,
    snapshot: sled::Tree,
    buffer: index::SharedBuffer,
    files: Arc<tokio::sync::Mutex<()>>,
}

/// Whether `event` explains a lease that is live in `state`: the bind of a lease still held.
pub fn explains_live_lease(state: &State, event: &Event) -> bool {
    match &event.kind {
        EventKind::IpBound { lease, .. } => state
            .nodes
            .get(&lease.node)
            .is_some_and(|node| node.leases.contains_key(&lease.id)),
        _ => false,
    }
}

impl Retention {
    /// Prunes the ledger behind `applied` (trees `events` and `index`, and the index entries
    /// still in `buffer`; `snapshot` says up to which seq the current snapshot holds), taking
    /// `files` (the state machine's snapshot-files lock) while it deletes.
    pub fn new(
        applied: SharedApplied,
        events: sled::Tree,
        index: sled::Tree,
        snapshot: sled::Tree,
        buffer: index::SharedBuffer,
        files: Arc<tokio::sync::Mutex<()>>,
    ) -> Self {
        Self {
            applied,
            events,
            index,
            snapshot,
            buffer,
            files,
        }
    }

    /// The last event seq the current snapshot holds (0: no snapshot, nothing may be pruned).
    fn snapshot_last_seq(&self) -> Result<u64> {
        match self.snapshot.get(SNAPSHOT_LAST_SEQ)? {
            Some(bytes) => Ok(codec::decode(SNAPSHOT_LAST_SEQ, &bytes)?),
            None => Ok(0),
        }
    }

    /// The time of the event at `seq`.
    fn time_of(&self, seq: u64) -> Result<Option<Timestamp>> {
        match self.events.get(event_key(seq))? {
            Some(value) => Ok(Some(codec::decode::<Event>("event", &value)?.at)),
            None => Ok(None),
        }
    }

    /// Removes the events before `cutoff`, except those that explain a live lease.
    ///
    /// # Errors
    ///
    /// sled failed or an event does not decode; what was removed before the failure stays
    /// removed and the horizon says so.
    pub async fn prune(&self, cutoff: Timestamp) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        {
            let mut applied = self.applied.write().await;
            let mut horizon = Horizon::load(&self.index)?;
            // Everything indexed goes to the tree first: chunks are trimmed there.
            let mut buffer = index::write(&self.buffer);
            if !buffer.is_empty() {
                buffer.write_to(&self.index, applied.last_seq + 1)?;
            }
            let by_time =
                index::seq_at(&self.index, &buffer, cutoff, applied.last_seq).map_err(LedgerError::Inconsistent)?;
            drop(buffer);
            let target = by_time.min(self.snapshot_last_seq()? + 1);
            if target > horizon.seq.max(1) {
                // Events at or after `at` are kept: the cut-off, or when the snapshot holds the
                // horizon back, just after the last event pruned (ledger time is monotonic).
                let at = if target == by_time {
                    cutoff
                } else {
                    self.time_of(target - 1)?.map_or(cutoff, |at| at + 1)
                };
                horizon = Horizon {
                    seq: target,
                    at,
                    pruned_to: horizon.pruned_to.max(1),
                };
                let mut batch = sled::Batch::default();
                horizon.stage(&mut batch);
                self.index.apply_batch(batch)?;
                applied.horizon = horizon;
                tracing::info!(seq = horizon.seq, cutoff = %crate::ledger::format_ms(cutoff), "ledger retention horizon moved");
            }
            pruned.horizon = horizon;
        }
        loop {
            let mut applied = self.applied.write().await;
            let Ok(_files) = self.files.try_lock() else {
                // A sendable snapshot is being made (it reads the events being pruned).
                drop(applied);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let mut horizon = Horizon::load(&self.index)?;
            if horizon.pruned_to >= horizon.seq {
                pruned.horizon = horizon;
                return Ok(pruned);
            }
            let end = horizon.seq.min(horizon.pruned_to.saturating_add(CHUNK));
            let mut events = sled::Batch::default();
            let mut entries = sled::Batch::default();
            let mut prefixes = std::collections::BTreeSet::new();
            for kv in self.events.range(event_key(horizon.pruned_to)..event_key(end)) {
                let (key, value) = kv?;
                let event: Event = codec::decode("event", &value)?;
                if explains_live_lease(&applied.state, &event) {
                    pruned.kept += 1;
                    continue;
                }
                events.remove(&key);
                prefixes.extend(index::keys_of(&event).iter().map(index::Key::prefix));
                // The binding's record goes with the release that ended it.
                if let EventKind::IpReleased { lease, .. } = &event.kind {
                    entries.remove(&index::binding_key(lease.ip, lease.id)[..]);
                }
                pruned.removed += 1;
            }
            prefixes.insert(index::TIME_PREFIX.to_vec());
            for prefix in &prefixes {
                index::trim_chunks(&self.index, prefix, horizon.seq, &mut entries)
                    .map_err(LedgerError::Inconsistent)?;
            }
            horizon.pruned_to = end;
            horizon.stage(&mut entries);
            (&self.events, &self.index)
                .transaction(|(events_tx, index_tx)| {
                    events_tx.apply_batch(&events)?;
                    index_tx.apply_batch(&entries)?;
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    sled::transaction::TransactionError::Storage(e) => LedgerError::Sled(e),
                    sled::transaction::TransactionError::Abort(()) => {
                        LedgerError::Inconsistent("a pruning transaction aborted".to_owned())
                    }
                })?;
            applied.horizon = horizon;
            drop(applied);
            tokio::task::yield_now().await;
        }
    }
}
