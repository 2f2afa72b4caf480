//! The replicated state machine on sled (openraft storage-v2 [`RaftStateMachine`]).
//!
//! ```text
//!   Entry { log_id, Normal(Proposal) }
//!        │ Proposal::into_command(log_id.index)
//!        ▼
//!   ipam_core::decide(&state, &command) ──Err──▶ Outcome(Refusal)        (nothing changes)
//!        │ Ok(Decision { events, reply })
//!        ▼
//!   state.apply(event) for each event ─────────▶ Outcome(reply)
//!        │
//!        ▼  one sled transaction per `apply` call:
//!   tree "events"       be_u64(index) ++ be_u32(position) ──▶ json(Event)
//!   tree "sm_meta"      "last_applied", "membership"
//!
//!   tree "sm_snapshot"  "meta" ──▶ json(SnapshotMeta), "data" ──▶ cbor(Applied)
//! ```
//!
//! Snapshot data is CBOR, not JSON: the domain `State` has maps keyed by tuples (a node's
//! attachments, the SecurityGroupPolicies), which JSON objects cannot carry. Log entries and
//! events stay JSON for now.
//!
//! On open the in-memory [`State`] is rebuilt from the last snapshot (if any) plus the events
//! logged after it, so a restarted replica answers exactly as before without asking the log.
//! The state lives behind a shared lock ([`StateMachine::applied`]) so that readers outside Raft
//! (the gRPC services, later) can see it.

use std::io::Cursor;
use std::sync::Arc;

use ipam_core::Event;
use ipam_core::State;
use ipam_core::decide;
use openraft::AnyError;
use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::StorageIOError;
use openraft::storage::RaftStateMachine;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use tokio::sync::RwLock;

use crate::raft::codec;
use crate::raft::codec::CodecError;
use crate::raft::types::Entry;
use crate::raft::types::LogId;
use crate::raft::types::Outcome;
use crate::raft::types::Snapshot;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::StorageError;
use crate::raft::types::StoredMembership;
use crate::raft::types::TypeConfig;

const EVENTS_TREE: &str = "events";
const META_TREE: &str = "sm_meta";
const SNAPSHOT_TREE: &str = "sm_snapshot";
const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
const SNAPSHOT_META: &str = "meta";
const SNAPSHOT_DATA: &str = "data";

/// Why a state machine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// sled could not read, write or flush.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value does not decode, or a value does not encode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A snapshot does not encode.
    #[error("snapshot data does not encode: {0}")]
    SnapshotEncode(#[from] ciborium::ser::Error<std::io::Error>),
    /// A snapshot does not decode.
    #[error("snapshot data does not decode: {0}")]
    SnapshotDecode(#[from] ciborium::de::Error<std::io::Error>),
    /// One command produced more events than an event key can number.
    #[error("the command at log index {index} produced more than 2^32 events")]
    TooManyEvents {
        /// The command's log index.
        index: u64,
    },
}

/// `Result` with [`StateMachineError`].
pub type Result<T, E = StateMachineError> = std::result::Result<T, E>;

impl StateMachineError {
    fn storage(self, subject: ErrorSubject<u64>, verb: ErrorVerb) -> StorageError {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

impl From<sled::transaction::TransactionError<()>> for StateMachineError {
    fn from(error: sled::transaction::TransactionError<()>) -> Self {
        match error {
            sled::transaction::TransactionError::Storage(e) => Self::Sled(e),
            // The transaction closure never aborts.
            sled::transaction::TransactionError::Abort(()) => {
                Self::Sled(sled::Error::Unsupported("aborted state machine transaction".to_owned()))
            }
        }
    }
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    Ok(codec::encode(what, value)?)
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    Ok(codec::decode(what, bytes)?)
}

fn encode_snapshot(applied: &Applied) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    ciborium::into_writer(applied, &mut data)?;
    Ok(data)
}

fn decode_snapshot(data: &[u8]) -> Result<Applied> {
    Ok(ciborium::from_reader(data)?)
}

/// The key of an event: its command's log index, then its position among that command's events,
/// both big-endian so that sled's byte order is ledger order.
pub fn event_key(index: u64, position: u32) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&index.to_be_bytes());
    key[8..].copy_from_slice(&position.to_be_bytes());
    key
}

/// What the state machine has applied; also the content of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The last entry applied.
    pub last_applied: Option<LogId>,
    /// The last membership config applied.
    pub membership: StoredMembership,
    /// The domain state after `last_applied`.
    pub state: State,
}

/// A handle on the applied state, shared between Raft and readers.
pub type SharedApplied = Arc<RwLock<Applied>>;

/// The sled-backed state machine.
#[derive(Debug)]
pub struct StateMachine {
    applied: SharedApplied,
    trees: Trees,
}

/// The sled trees of the state machine (cheap to clone: sled trees are shared handles).
#[derive(Debug, Clone)]
struct Trees {
    events: sled::Tree,
    meta: sled::Tree,
    snapshot: sled::Tree,
}

impl Trees {
    fn open(db: &sled::Db) -> Result<Self> {
        Ok(Self {
            events: db.open_tree(EVENTS_TREE)?,
            meta: db.open_tree(META_TREE)?,
            snapshot: db.open_tree(SNAPSHOT_TREE)?,
        })
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str) -> Result<Option<T>> {
        tree.get(name)?.map(|bytes| decode(name, &bytes)).transpose()
    }

    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>> {
        let meta: Option<SnapshotMeta> = Self::get(&self.snapshot, SNAPSHOT_META)?;
        let data = self.snapshot.get(SNAPSHOT_DATA)?;
        Ok(meta.zip(data).map(|(meta, data)| (meta, data.to_vec())))
    }

    /// Saves `meta` and `data` as the current snapshot unless a newer one is already saved (a
    /// snapshot installed from the leader while this one was being built).
    async fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<()> {
        let saved: Option<SnapshotMeta> = Self::get(&self.snapshot, SNAPSHOT_META)?;
        if saved.is_some_and(|saved| saved.last_log_id > meta.last_log_id) {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, encode("snapshot meta", meta)?);
        batch.insert(SNAPSHOT_DATA, data);
        self.snapshot.apply_batch(batch)?;
        self.snapshot.flush_async().await?;
        Ok(())
    }

    /// Writes the events of one `apply` call with the new last-applied position, atomically.
    fn save_applied(&self, events: &sled::Batch, applied: &Applied) -> Result<()> {
        let mut meta = sled::Batch::default();
        meta.insert(LAST_APPLIED, encode(LAST_APPLIED, &applied.last_applied)?);
        meta.insert(MEMBERSHIP, encode(MEMBERSHIP, &applied.membership)?);
        (&self.events, &self.meta).transaction(|(events_tx, meta_tx)| {
            events_tx.apply_batch(events)?;
            meta_tx.apply_batch(&meta)?;
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        })?;
        Ok(())
    }

    /// Rebuilds what was applied: the last snapshot, then every event logged after it.
    fn load(&self) -> Result<Applied> {
        let mut applied = match self.current_snapshot()? {
            Some((_, data)) => decode_snapshot(&data)?,
            None => Applied::default(),
        };
        let from = applied.last_applied.map_or(0, |id| id.index + 1);
        for kv in self.events.range(event_key(from, 0)..) {
            let (_, value) = kv?;
            let event: Event = decode("event", &value)?;
            applied.state.apply(&event);
        }
        // The meta tree is written with the events, so it is at least as new as the snapshot,
        // except after a crash in the middle of installing a snapshot (see `install`).
        let last_applied: Option<LogId> = Self::get(&self.meta, LAST_APPLIED)?.flatten();
        if last_applied >= applied.last_applied {
            applied.last_applied = last_applied;
            if let Some(membership) = Self::get(&self.meta, MEMBERSHIP)? {
                applied.membership = membership;
            }
        }
        Ok(applied)
    }

    /// Makes an installed snapshot the whole truth: the snapshot first, then the last-applied
    /// position, then the events (which the snapshot does not carry yet: the ledger-carrying
    /// snapshot is issue C). A crash in between leaves a snapshot newer than the meta and events,
    /// which `load` prefers.
    async fn install(&self, meta: &SnapshotMeta, data: &[u8], applied: &Applied) -> Result<()> {
        self.save_snapshot(meta, data).await?;
        self.save_applied(&sled::Batch::default(), applied)?;
        self.events.clear()?;
        self.events.flush_async().await?;
        Ok(())
    }
}

impl StateMachine {
    /// Opens (or creates) the state machine's trees in `db` and rebuilds the state from them.
    ///
    /// # Errors
    ///
    /// sled failed, or a stored snapshot or event does not decode.
    pub fn open(db: &sled::Db) -> Result<Self> {
        let trees = Trees::open(db)?;
        let applied = trees.load()?;
        tracing::info!(last_applied = ?applied.last_applied, "state machine opened");
        Ok(Self {
            applied: Arc::new(RwLock::new(applied)),
            trees,
        })
    }

    /// The applied state, for readers outside Raft.
    pub fn applied(&self) -> SharedApplied {
        Arc::clone(&self.applied)
    }

    async fn apply_entries(&mut self, entries: impl IntoIterator<Item = Entry>) -> Result<Vec<Outcome>> {
        let mut applied = self.applied.write().await;
        let mut events = sled::Batch::default();
        let mut outcomes = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::done(),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Outcome::done()
                }
                EntryPayload::Normal(proposal) => {
                    let command = proposal.into_command(index);
                    match decide(&applied.state, &command) {
                        Ok(decision) => {
                            for (position, event) in decision.events.iter().enumerate() {
                                let position =
                                    u32::try_from(position).map_err(|_| StateMachineError::TooManyEvents { index })?;
                                events.insert(&event_key(index, position), encode("event", event)?);
                                applied.state.apply(event);
                            }
                            Outcome::from(Ok(decision.reply))
                        }
                        Err(refusal) => {
                            tracing::debug!(index, %refusal, "command refused");
                            Outcome::from(Err(refusal))
                        }
                    }
                }
            };
            applied.last_applied = Some(entry.log_id);
            outcomes.push(outcome);
        }
        // A failure here leaves the in-memory state ahead of sled; openraft then stops the
        // replica, and a restart rebuilds from what sled has.
        self.trees.save_applied(&events, &applied)?;
        Ok(outcomes)
    }

    async fn install(&mut self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<()> {
        let mut installed = decode_snapshot(&data)?;
        installed.last_applied = meta.last_log_id;
        installed.membership = meta.last_membership.clone();
        let mut applied = self.applied.write().await;
        self.trees.install(meta, &data, &installed).await?;
        *applied = installed;
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot>> {
        Ok(self.trees.current_snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot of the state as it was when [`RaftStateMachine::get_snapshot_builder`] was
/// called, and saves it as the current snapshot.
#[derive(Debug)]
pub struct SnapshotBuilder {
    applied: Applied,
    trees: Trees,
}

impl SnapshotBuilder {
    async fn build(&self) -> Result<Snapshot> {
        let data = encode_snapshot(&self.applied)?;
        let snapshot_id = match &self.applied.last_applied {
            Some(id) => format!("{}-{}", id.leader_id, id.index),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id,
        };
        self.trees.save_snapshot(&meta, &data).await?;
        tracing::info!(%meta, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.build()
            .await
            .map_err(|e| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.applied.read().await;
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries)
            .await
            .map_err(|e| e.storage(ErrorSubject::StateMachine, ErrorVerb::Write))
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            applied: self.applied.read().await.clone(),
            trees: self.trees.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot.into_inner())
            .await
            .map_err(|e| e.storage(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.current_snapshot()
            .map_err(|e| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}
