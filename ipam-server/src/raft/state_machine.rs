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
//!   tree "events"       be_u64(seq) ──▶ json(Event { index, at, actor, kind })   (the ledger;
//!                       seq: 1, 2, 3 … gapless, the same on every replica)
//!   tree "ledger_index" the ledger's indexes (`ledger::index`) and retention horizon
//!   tree "sm_meta"      "last_applied", "membership"
//!
//!   tree "sm_snapshot"  "meta" ──▶ json(SnapshotMeta), "file" ──▶ its file name
//!   dir  snapshots/     state-*.snap: cbor(Applied) (a built snapshot: the state only)
//!                       send-*.snap: cbor(Applied) + every event up to last_seq (made on demand)
//!                       received-*.snap / installed-*.snap: what a leader sent (state + ledger)
//! ```
//!
//! A snapshot as sent carries the ledger, so a replica that installs one (a learner added later,
//! a follower whose log was purged) answers history queries like the others; building one costs
//! the state only (see [`SnapshotBuilder`]). Snapshot data is a file on both sides (openraft reads
//! and writes it in chunks), never one blob in memory.
//!
//! On open the in-memory [`State`] is rebuilt from the last snapshot's state plus the events
//! logged after it. Installing a snapshot is crash-safe: the file is complete before its meta is
//! saved, and a meta newer than the applied position on open means the import of its events was
//! interrupted, so it is redone. The state lives behind a shared lock ([`StateMachine::applied`])
//! so that readers outside Raft (the gRPC services) can see it.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

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

use crate::ledger::Horizon;
use crate::ledger::Ledger;
use crate::ledger::LedgerError;
use crate::ledger::index;
use crate::ledger::retention::Retention;
use crate::raft::codec;
use crate::raft::codec::CodecError;
use crate::raft::snapshot;
use crate::raft::snapshot::SnapshotError;
use crate::raft::snapshot_file::SnapshotFile;
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
const SNAPSHOT_FILE: &str = "file";
/// The last event seq of the current snapshot: what a restart replays from. Retention never
/// prunes past it (`ledger::retention`).
pub const SNAPSHOT_LAST_SEQ: &str = "last_seq";
/// Events per sled batch when importing a snapshot's ledger or rebuilding its indexes.
const IMPORT_BATCH: usize = 10_000;
/// The index layout's version, stored in the index tree; a different (or no) version on open
/// rebuilds the indexes from the events.
const INDEX_VERSION_KEY: &[u8] = b"v";
const INDEX_VERSION: u32 = 2;

/// Why a state machine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// sled could not read, write or flush.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value does not decode, or a value does not encode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An event key in the ledger is not a sequence number.
    #[error("an event key of {len} bytes in the ledger (sequence numbers are 8)")]
    EventKey {
        /// Its length.
        len: usize,
    },
    /// A snapshot file could not be written or read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot directory cannot be used.
    #[error("snapshot directory {path}: {source}")]
    SnapshotDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A blocking task (snapshot file work) did not finish.
    #[error("snapshot task failed: {0}")]
    Task(String),
    /// The ledger's own records are damaged.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
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

/// The sequence number in an event key.
fn seq_of(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StateMachineError::EventKey { len: key.len() })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StateMachineError::Task(e.to_string()))?
}

/// The key of an event: its sequence number in the ledger, big-endian so that sled's byte order
/// is ledger order. Sequence numbers start at 1 and have no gaps; every replica numbers the same
/// events the same way because it applies the same log.
pub fn event_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// What the state machine has applied; also the header of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The last entry applied.
    pub last_applied: Option<LogId>,
    /// The sequence number of the last event in the ledger (0: none yet).
    pub last_seq: u64,
    /// The last membership config applied.
    pub membership: StoredMembership,
    /// The domain state after `last_applied`.
    pub state: State,
    /// How far this replica's ledger retention has pruned (nothing by default).
    #[serde(default)]
    pub horizon: Horizon,
}

/// A handle on the applied state, shared between Raft and readers.
pub type SharedApplied = Arc<RwLock<Applied>>;

/// How the state machine keeps its ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Whether events are indexed. Always on in a server; off only to measure what indexing
    /// costs (the ledger benchmark), and then WhoHad and History find nothing.
    pub index: bool,
    /// How many events' index entries are buffered before they are written as posting chunks
    /// (`ledger::index::FLUSH_EVERY`; tests make it small to exercise many chunks).
    pub index_flush_every: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            index: true,
            index_flush_every: index::FLUSH_EVERY,
        }
    }
}

/// The sled-backed state machine.
#[derive(Debug)]
pub struct StateMachine {
    applied: SharedApplied,
    store: Store,
    /// The last event's sequence number, for ledger readers waiting for more.
    last_seq: tokio::sync::watch::Sender<u64>,
    /// The file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
}

/// The sled trees and the snapshot directory (cheap to clone: sled trees are shared handles).
#[derive(Debug, Clone)]
struct Store {
    events: sled::Tree,
    index: sled::Tree,
    /// Index entries of the events not yet written to `index` (`ledger::index`).
    buffer: index::SharedBuffer,
    meta: sled::Tree,
    options: Options,
    snapshot: sled::Tree,
    dir: Arc<PathBuf>,
    /// Makes file names unique within the process.
    sequence: Arc<AtomicU64>,
    /// Guards the snapshot files: saving a new current snapshot (which deletes the old files)
    /// and making or reading the sendable one never overlap.
    files: Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    fn open(db: &sled::Db, dir: PathBuf, options: Options) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|source| StateMachineError::SnapshotDir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            events: db.open_tree(EVENTS_TREE)?,
            index: db.open_tree(index::INDEX_TREE)?,
            buffer: Arc::default(),
            meta: db.open_tree(META_TREE)?,
            options,
            snapshot: db.open_tree(SNAPSHOT_TREE)?,
            dir: Arc::new(dir),
            sequence: Arc::new(AtomicU64::new(0)),
            files: Arc::default(),
        })
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str) -> Result<Option<T>> {
        tree.get(name)?.map(|bytes| decode(name, &bytes)).transpose()
    }

    /// A new, unused file name in the snapshot directory.
    fn new_file(&self, what: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{what}-{nanos}-{n}.snap"))
    }

    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, PathBuf)>> {
        let meta: Option<SnapshotMeta> = Self::get(&self.snapshot, SNAPSHOT_META)?;
        let file: Option<String> = Self::get(&self.snapshot, SNAPSHOT_FILE)?;
        Ok(meta.zip(file).map(|(meta, file)| (meta, self.dir.join(file))))
    }

    /// Makes the complete file `path` the current snapshot unless a newer one is already saved (a
    /// snapshot installed from the leader while this one was being built). Older files go.
    async fn save_snapshot(&self, meta: &SnapshotMeta, path: &Path, last_seq: u64) -> Result<bool> {
        let _files = self.files.lock().await;
        let current = self.current_snapshot()?;
        if current
            .as_ref()
            .is_some_and(|(saved, _)| saved.last_log_id > meta.last_log_id)
        {
            let _ = std::fs::remove_file(path);
            return Ok(false);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, encode("snapshot meta", meta)?);
        batch.insert(SNAPSHOT_FILE, encode("snapshot file", &name)?);
        batch.insert(SNAPSHOT_LAST_SEQ, encode(SNAPSHOT_LAST_SEQ, &last_seq)?);
        self.snapshot.apply_batch(batch)?;
        self.snapshot.flush_async().await?;
        // A reader still streaming an old file keeps it open; unlinking does not disturb it.
        if let Some((old_meta, old)) = current.filter(|(_, old)| old != path) {
            let _ = std::fs::remove_file(old);
            let _ = std::fs::remove_file(self.sendable_path(&old_meta));
        }
        Ok(true)
    }

    /// Writes the events of one `apply` call with the new last-applied position, atomically.
    /// (Their index entries follow through the buffer; see `ledger::index` for why that is
    /// crash-safe.)
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

    /// A state from before `State::last_at` existed has it 0; it is the latest time of the
    /// events folded into it, which every replica computes alike from the same ledger (an upgrade
    /// must not make replicas decide a command at different times).
    fn upgrade_last_at(&self, applied: &mut Applied) -> Result<()> {
        if applied.state.last_at != 0 || applied.last_seq == 0 {
            return Ok(());
        }
        for kv in self.events.range(..=event_key(applied.last_seq)) {
            let (_, value) = kv?;
            let event: Event = decode("event", &value)?;
            applied.state.last_at = applied.state.last_at.max(event.at);
        }
        tracing::info!(
            last_at = applied.state.last_at,
            "a state from before ledger time: its latest time recomputed"
        );
        Ok(())
    }

    /// Rebuilds the indexes from the events, with `horizon` as the retention horizon: after an
    /// import, or when the stored index layout is not this version's. The horizon is saved
    /// first, so a crash mid-way leaves it in place for the rebuild on the next open.
    fn rebuild_index(&self, horizon: Horizon) -> Result<u64> {
        self.index.clear()?;
        let mut first = sled::Batch::default();
        horizon.stage(&mut first);
        self.index.apply_batch(first)?;
        let mut building = index::IndexBuffer::new(1);
        let count = self.stage_events(&mut building, 1, Some(self.options.index_flush_every))?;
        let next = match self.events.last()? {
            Some((key, _)) => seq_of(&key)? + 1,
            None => 1,
        };
        building.write_to(&self.index, next)?;
        if self.options.index {
            // Without indexing (a benchmark) no version is recorded, so a later open with
            // indexes builds them. Written last: a crash before it means a rebuild on open.
            self.index.insert(INDEX_VERSION_KEY, &INDEX_VERSION.to_be_bytes()[..])?;
        }
        *index::write(&self.buffer) = index::IndexBuffer::new(next);
        Ok(count)
    }

    /// Indexes, into the buffer, the events at or above the stored watermark: those whose
    /// entries were still buffered when the replica stopped.
    fn refill_buffer(&self) -> Result<u64> {
        let watermark = index::stored_watermark(&self.index)?;
        let mut buffer = index::IndexBuffer::new(watermark);
        let count = self.stage_events(&mut buffer, watermark, None)?;
        *index::write(&self.buffer) = buffer;
        Ok(count)
    }

    /// Stages the stored events from seq `from` on into `buffer` (nothing without indexing),
    /// writing it to the tree whenever it holds `flush_every` events, at a command boundary (a
    /// command's events share one time entry). Returns how many events were staged.
    fn stage_events(&self, buffer: &mut index::IndexBuffer, from: u64, flush_every: Option<usize>) -> Result<u64> {
        let mut count = 0;
        if !self.options.index {
            return Ok(count);
        }
        let mut previous_index = None;
        for kv in self.events.range(event_key(from)..) {
            let (key, value) = kv?;
            let seq = seq_of(&key)?;
            let event: Event = decode("event", &value)?;
            let first_of_command = previous_index != Some(event.index);
            if first_of_command && flush_every.is_some_and(|n| buffer.len() >= n) {
                buffer.write_to(&self.index, seq)?;
            }
            buffer.stage(seq, &event, first_of_command);
            previous_index = Some(event.index);
            count += 1;
        }
        Ok(count)
    }

    /// Writes the buffered index entries to the tree (`next`: one past the last event staged).
    fn flush_index(&self, buffer: &mut index::IndexBuffer, next: u64) -> Result<()> {
        Ok(buffer.write_to(&self.index, next)?)
    }

    /// Whether the stored indexes are this version's.
    fn index_current(&self) -> Result<bool> {
        Ok(self.index.get(INDEX_VERSION_KEY)?.as_deref() == Some(&INDEX_VERSION.to_be_bytes()[..]))
    }

    /// Rebuilds what was applied: the last snapshot's state, then every event logged after it.
    /// Finishes an interrupted snapshot install first.
    async fn load(&self) -> Result<Applied> {
        let last_applied: Option<LogId> = Self::get(&self.meta, LAST_APPLIED)?.flatten();
        let mut applied = match self.current_snapshot()? {
            Some((meta, path)) if meta.last_log_id > last_applied => {
                tracing::warn!(%meta, "an interrupted snapshot install: importing its ledger again");
                return self.import(&meta, path).await;
            }
            Some((_, path)) => blocking(move || Ok(snapshot::Reader::open(&path)?.0)).await?,
            None => Applied::default(),
        };
        self.upgrade_last_at(&mut applied)?;
        for kv in self.events.range(event_key(applied.last_seq + 1)..) {
            let (key, value) = kv?;
            let event: Event = decode("event", &value)?;
            applied.state.apply(&event);
            applied.last_seq = seq_of(&key)?;
        }
        if last_applied >= applied.last_applied {
            applied.last_applied = last_applied;
            if let Some(membership) = Self::get(&self.meta, MEMBERSHIP)? {
                applied.membership = membership;
            }
        }
        if self.index_current()? {
            applied.horizon = Horizon::load(&self.index)?;
            let count = self.refill_buffer()?;
            tracing::debug!(events = count, "ledger index buffer refilled");
        } else {
            let store = self.clone();
            // The horizon record outlives a layout change (it is rewritten as it was).
            let horizon = match Horizon::load(&self.index)? {
                stored if stored != Horizon::default() => stored,
                _ => applied.horizon,
            };
            applied.horizon = horizon;
            let count = blocking(move || store.rebuild_index(horizon)).await?;
            tracing::info!(events = count, "ledger indexes rebuilt");
        }
        Ok(applied)
    }

    /// Makes the snapshot file at `path` the whole truth: its meta is saved first (so a crash
    /// from here on redoes the import on open), then the ledger is replaced by the file's events,
    /// then the applied position moves.
    async fn import(&self, meta: &SnapshotMeta, path: PathBuf) -> Result<Applied> {
        let header_path = path.clone();
        let last_seq = blocking(move || Ok(snapshot::Reader::open(&header_path)?.0.last_seq)).await?;
        self.save_snapshot(meta, &path, last_seq).await?;
        let store = self.clone();
        let events = self.events.clone();
        let reader_path = path.clone();
        let mut installed = blocking(move || {
            let (mut applied, mut reader) = snapshot::Reader::open(&reader_path)?;
            events.clear()?;
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            while let Some((key, value)) = reader.next_record()? {
                batch.insert(key, value);
                in_batch += 1;
                if in_batch == IMPORT_BATCH {
                    events.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
            }
            events.apply_batch(batch)?;
            // What arrives after this snapshot through the log is this replica's to prune, and
            // only once a snapshot of its own covers it (a restart replays it).
            applied.horizon.seq = applied.horizon.seq.min(applied.last_seq + 1);
            applied.horizon.pruned_to = applied.horizon.pruned_to.min(applied.horizon.seq);
            store.upgrade_last_at(&mut applied)?;
            store.rebuild_index(applied.horizon)?;
            Ok(applied)
        })
        .await?;
        installed.last_applied = meta.last_log_id;
        installed.membership = meta.last_membership.clone();
        self.save_applied(&sled::Batch::default(), &installed)?;
        self.events.flush_async().await?;
        Ok(installed)
    }
}

impl StateMachine {
    /// Opens (or creates) the state machine's trees in `db`, with snapshot files in
    /// `snapshot_dir`, and rebuilds the state from them.
    ///
    /// # Errors
    ///
    /// sled or the directory failed, or a stored snapshot or event does not decode.
    pub async fn open(db: &sled::Db, snapshot_dir: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(db, snapshot_dir, Options::default()).await
    }

    /// [`StateMachine::open`] with `options`.
    ///
    /// # Errors
    ///
    /// As [`StateMachine::open`].
    pub async fn open_with(db: &sled::Db, snapshot_dir: impl Into<PathBuf>, options: Options) -> Result<Self> {
        let store = Store::open(db, snapshot_dir.into(), options)?;
        store.remove_stale_files()?;
        let applied = store.load().await?;
        tracing::info!(last_applied = ?applied.last_applied, last_seq = applied.last_seq, "state machine opened");
        let (last_seq, _) = tokio::sync::watch::channel(applied.last_seq);
        Ok(Self {
            last_seq,
            applied: Arc::new(RwLock::new(applied)),
            store,
            receiving: None,
        })
    }

    /// The applied state, for readers outside Raft.
    pub fn applied(&self) -> SharedApplied {
        Arc::clone(&self.applied)
    }

    /// A reader of the ledger.
    pub fn ledger(&self) -> Ledger {
        Ledger::new(
            self.store.events.clone(),
            self.store.index.clone(),
            Arc::clone(&self.store.buffer),
            self.last_seq.subscribe(),
        )
    }

    /// The pruner of this replica's ledger.
    pub fn retention(&self) -> Retention {
        Retention::new(
            self.applied(),
            self.store.events.clone(),
            self.store.index.clone(),
            self.store.snapshot.clone(),
            Arc::clone(&self.store.buffer),
            Arc::clone(&self.store.files),
        )
    }

    async fn apply_entries(&mut self, entries: impl IntoIterator<Item = Entry>) -> Result<Vec<Outcome>> {
        let mut applied = self.applied.write().await;
        let mut events = sled::Batch::default();
        let mut staged: Vec<(u64, Event, bool)> = Vec::new();
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
                            for (i, event) in decision.events.into_iter().enumerate() {
                                applied.last_seq += 1;
                                events.insert(&event_key(applied.last_seq), encode("event", &event)?);
                                if self.store.options.index {
                                    self.store.release_kept_bind(&mut events, applied.horizon, &event)?;
                                }
                                applied.state.apply(&event);
                                if self.store.options.index {
                                    staged.push((applied.last_seq, event, i == 0));
                                }
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
        self.store.save_applied(&events, &applied)?;
        if !staged.is_empty() {
            // Indexed once the events are stored: a reader never finds an entry without its event.
            let mut buffer = index::write(&self.store.buffer);
            for (seq, event, first_of_command) in &staged {
                buffer.stage(*seq, event, *first_of_command);
            }
            if buffer.len() >= self.store.options.index_flush_every {
                self.store.flush_index(&mut buffer, applied.last_seq + 1)?;
            }
        }
        self.last_seq.send_replace(applied.last_seq);
        Ok(outcomes)
    }

    async fn begin_receiving(&mut self) -> Result<SnapshotFile> {
        if let Some(old) = self.receiving.take() {
            let _ = std::fs::remove_file(snapshot::part_path(&old));
        }
        let path = self.store.new_file("received");
        let part = snapshot::part_path(&path);
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .await
            .map_err(|source| SnapshotError::Io { path: part, source })?;
        self.receiving = Some(path);
        Ok(SnapshotFile::from(file))
    }

    /// Installs the snapshot in `file`. The data is copied from the handle itself (rewound)
    /// into a new file rather than trusted to be the one `begin_receiving` created: the handle
    /// is what openraft gives back, and that is all the contract says.
    async fn install(&mut self, meta: &SnapshotMeta, mut file: SnapshotFile) -> Result<()> {
        if let Some(receiving) = self.receiving.take() {
            let _ = tokio::fs::remove_file(snapshot::part_path(&receiving)).await;
        }
        let path = self.store.new_file("installed");
        let part = snapshot::part_path(&path);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SnapshotError::Io { path, source }
        };
        tokio::io::AsyncSeekExt::rewind(&mut file).await.map_err(io(&part))?;
        let mut copy = tokio::fs::File::create(&part).await.map_err(io(&part))?;
        tokio::io::copy(&mut file, &mut copy).await.map_err(io(&part))?;
        copy.sync_all().await.map_err(io(&part))?;
        drop((file, copy));
        let sealed = path.clone();
        blocking(move || Ok(snapshot::seal(&part, &sealed)?)).await?;
        let mut applied = self.applied.write().await;
        let installed = self.store.import(meta, path).await?;
        tracing::info!(%meta, last_seq = installed.last_seq, "snapshot installed with its ledger");
        // The received file (state and ledger) stays the current snapshot until the next one is
        // built (which holds the state only): it is what a crash in the import above needs.
        self.last_seq.send_replace(installed.last_seq);
        *applied = installed;
        Ok(())
    }

    /// The current snapshot, handed out lazily: its sendable file (state and ledger) is made
    /// when openraft first reads it, not when it only looks at the meta (it does at every start).
    /// The state file is opened now, so the data matches the meta even if a newer snapshot
    /// replaces this one (and removes its files) before the data is read.
    async fn current_snapshot(&self) -> Result<Option<Snapshot>> {
        // Not under the files lock (making a sendable file holds it for long, and this runs on
        // openraft's state machine worker): a newer snapshot saved between reading the meta and
        // opening the file removes the file, and then the newer one is taken instead.
        let mut attempts = 0;
        let (meta, state_path, state) = loop {
            let Some((meta, state_path)) = self.store.current_snapshot()? else {
                return Ok(None);
            };
            match std::fs::File::open(&state_path) {
                Ok(state) => break (meta, state_path, state),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 10 => attempts += 1,
                Err(source) => {
                    return Err(SnapshotError::Io {
                        path: state_path,
                        source,
                    }
                    .into());
                }
            }
        };
        let store = self.store.clone();
        let wanted = meta.clone();
        let data = SnapshotFile::lazy(move || async move {
            store
                .sendable(&wanted, state, state_path)
                .await
                .map_err(std::io::Error::other)
        });
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}

impl Store {
    /// When `event` releases a lease whose bind retention kept below the horizon (it explained
    /// a live lease), the bind goes now: adds its removal to the batches.
    fn release_kept_bind(&self, events: &mut sled::Batch, horizon: Horizon, event: &Event) -> Result<()> {
        let ipam_core::EventKind::IpReleased { lease, .. } = &event.kind else {
            return Ok(());
        };
        if !horizon.is_pruned() {
            return Ok(());
        }
        let record = {
            let buffer = index::read(&self.buffer);
            index::record(&self.index, &buffer, &index::binding_key(lease.ip, lease.id))?
        }
        .and_then(|value| index::BindingRecord::decode(&value));
        // Its index entries went when the horizon passed it (retention trims the chunks); the
        // binding's record is overwritten by this release.
        if let Some(index::BindingRecord::Bound { seq, .. }) = record
            && seq < horizon.seq
        {
            events.remove(&event_key(seq));
        }
        Ok(())
    }

    /// Where the sendable form of the snapshot `meta` lives: named after the snapshot, so it is
    /// made once per snapshot however often it is sent.
    fn sendable_path(&self, meta: &SnapshotMeta) -> PathBuf {
        let id: String = meta
            .snapshot_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        self.dir.join(format!("send-{id}.snap"))
    }

    /// The snapshot `wanted` as another replica receives it: its state (from `state`, the
    /// state file opened when the snapshot was handed out), then the ledger up to its last
    /// event, read from the events tree, opened before the files lock is let go. While `wanted`
    /// is the current snapshot the file is kept (named after it) and made once however often it
    /// is sent, so building a snapshot costs the state only and the ledger is copied only when a
    /// replica needs it (a new learner, a follower behind the purged log). If a newer snapshot
    /// replaced it meanwhile, a private file is made and unlinked once open: openraft gets the
    /// data of the meta it was handed, never an error it would take for a storage failure.
    async fn sendable(
        &self,
        wanted: &SnapshotMeta,
        state: std::fs::File,
        state_path: PathBuf,
    ) -> Result<tokio::fs::File> {
        let _files = self.files.lock().await;
        let current = self.current_snapshot()?.is_some_and(|(meta, _)| meta == *wanted);
        let kept = self.sendable_path(wanted);
        let open = |path: &Path| {
            std::fs::File::open(path)
                .map(tokio::fs::File::from_std)
                .map_err(|source| SnapshotError::Io {
                    path: path.to_owned(),
                    source,
                })
        };
        if current && kept.exists() {
            return Ok(open(&kept)?);
        }
        let target = if current {
            kept
        } else {
            self.new_file("send-superseded")
        };
        let events = self.events.clone();
        // Retention may have pruned since the snapshot was built: the file says how far, so the
        // receiver does not take the missing events for a gap. (Pruning waits for this lock.)
        let horizon = Horizon::load(&self.index)?;
        let written = target.clone();
        let count = blocking(move || {
            let (mut applied, _) = snapshot::Reader::from_file(state, &state_path)?;
            applied.horizon = horizon;
            let end = event_key(applied.last_seq);
            Ok(snapshot::write(&written, &applied, events.range(..=end))?)
        })
        .await?;
        let file = open(&target)?;
        if !current {
            let _ = std::fs::remove_file(&target);
        }
        tracing::info!(meta = %wanted, events = count, "snapshot with its ledger made for sending");
        Ok(file)
    }

    /// Removes what a crash can leave in the snapshot directory: `.part` files, and snapshot
    /// files that are neither the current snapshot nor its sendable form.
    fn remove_stale_files(&self) -> Result<()> {
        let keep: Vec<PathBuf> = match self.current_snapshot()? {
            Some((meta, file)) => vec![file, self.sendable_path(&meta)],
            None => Vec::new(),
        };
        let Ok(entries) = std::fs::read_dir(&*self.dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = name.ends_with(".part") || (name.ends_with(".snap") && !keep.contains(&path));
            if stale {
                tracing::info!(file = %path.display(), "removing a stale snapshot file");
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }
}

/// Builds a snapshot of the state as it was when [`RaftStateMachine::get_snapshot_builder`] was
/// called and saves it as the current snapshot. The file holds the state only: the ledger up to
/// that point stays in the events tree (it never changes) and joins the state when the snapshot
/// is sent ([`Store::sendable`]), so a snapshot every few thousand entries does not rewrite a
/// ledger of millions of events.
#[derive(Debug)]
pub struct SnapshotBuilder {
    applied: Applied,
    store: Store,
}

impl SnapshotBuilder {
    async fn build(&self) -> Result<Snapshot> {
        let snapshot_id = match &self.applied.last_applied {
            Some(id) => format!("{}-{}", id.leader_id, id.index),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id,
        };
        let path = self.store.new_file("state");
        let applied = self.applied.clone();
        let target = path.clone();
        blocking(move || Ok(snapshot::write(&target, &applied, std::iter::empty())?)).await?;
        self.store.save_snapshot(&meta, &path, self.applied.last_seq).await?;
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        tracing::info!(%meta, last_seq = self.applied.last_seq, bytes, "snapshot built");
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|source| SnapshotError::Io { path, source })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::from(file)),
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
            store: self.store.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        self.begin_receiving()
            .await
            .map(Box::new)
            .map_err(|e| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotFile>) -> Result<(), StorageError> {
        self.install(meta, *snapshot)
            .await
            .map_err(|e| e.storage(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.current_snapshot()
            .await
            .map_err(|e| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}
