//! The Raft log on sled (openraft storage-v2 [`RaftLogStorage`]).
//!
//! ```text
//!   tree "raft_log"   be_u64(index) ──▶ json(Entry)
//!   tree "raft_meta"  "vote"        ──▶ json(Vote)
//!                     "committed"   ──▶ json(Option<LogId>)
//!                     "last_purged" ──▶ json(LogId)
//! ```
//!
//! An append is one sled batch and one flush, and only then is openraft told (through the
//! [`LogFlushed`] callback) that the entries are durable: a replica never acknowledges an entry it
//! could lose to a process kill.
//!
//! The flush is awaited inside `append`. A group commit (queue the callback, flush many appends
//! at once off the core loop) buys nothing with openraft 0.9: its core waits for each append's
//! callback before the next command (`RaftCore::append_to_log`, "a temp wrapper to make
//! non-blocking append_to_log blocking"), so only one append is ever in flight. It was tried and
//! removed; it becomes worth doing with a core that pipelines appends.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;

use openraft::AnyError;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageIOError;
use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::raft::codec;
use crate::raft::codec::CodecError;
use crate::raft::types::Entry;
use crate::raft::types::LogId;
use crate::raft::types::StorageError;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// sled could not read, write or flush.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value does not decode, or a value does not encode.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// `Result` with [`LogStoreError`].
pub type Result<T, E = LogStoreError> = std::result::Result<T, E>;

impl LogStoreError {
    fn storage(self, subject: ErrorSubject<u64>, verb: ErrorVerb) -> StorageError {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// The sled-backed Raft log. Cheap to clone (sled trees are shared handles); a clone is also
/// the log reader openraft's replication tasks use.
#[derive(Debug, Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
}

/// The key of the entry at `index`: big-endian, so sled's byte order is log order.
fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    Ok(codec::encode(what, value)?)
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    Ok(codec::decode(what, bytes)?)
}

impl LogStore {
    /// Opens (or creates) the log's trees in `db`.
    ///
    /// # Errors
    ///
    /// sled could not open a tree.
    pub fn open(db: &sled::Db) -> Result<Self> {
        Ok(Self {
            log: db.open_tree(LOG_TREE)?,
            meta: db.open_tree(META_TREE)?,
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, name: &'static str) -> Result<Option<T>> {
        self.meta.get(name)?.map(|bytes| decode(name, &bytes)).transpose()
    }

    async fn put_meta<T: Serialize>(&self, name: &'static str, value: &T) -> Result<()> {
        self.meta.insert(name, encode(name, value)?)?;
        self.meta.flush_async().await?;
        Ok(())
    }

    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>> {
        let range = (range.0.map(key), range.1.map(key));
        self.log
            .range(range)
            .map(|kv| {
                let (_, value) = kv?;
                decode("log entry", &value)
            })
            .collect()
    }

    fn last_log_id(&self) -> Result<Option<LogId>> {
        match self.log.last()? {
            Some((_, value)) => Ok(Some(decode::<Entry>("log entry", &value)?.log_id)),
            None => Ok(None),
        }
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn append_batch(&self, entries: impl IntoIterator<Item = Entry>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&key(entry.log_id.index), encode("log entry", &entry)?);
        }
        self.log.apply_batch(batch)?;
        self.log.flush_async().await?;
        Ok(())
    }

    /// Removes every entry in `range` in one batch and flushes.
    async fn remove(&self, range: (Bound<u64>, Bound<u64>)) -> Result<()> {
        let range = (range.0.map(key), range.1.map(key));
        let mut batch = sled::Batch::default();
        for kv in self.log.range(range) {
            let (k, _) = kv?;
            batch.remove(k);
        }
        self.log.apply_batch(batch)?;
        self.log.flush_async().await?;
        Ok(())
    }
}

/// The owned form of any `RangeBounds<u64>`.
fn owned_range(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(owned_range(&range))
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.log_state()
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)
            .await
            .map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
            .map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(COMMITTED, &committed)
            .await
            .map_err(|e| e.storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.get_meta::<Option<LogId>>(COMMITTED)
            .map(Option::flatten)
            .map_err(|e| e.storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match self.append_batch(entries).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(e.storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the log from here on");
        self.remove((Bound::Included(log_id.index), Bound::Unbounded))
            .await
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purging the log up to here");
        // Record the purge point first: a crash before the removal leaves entries that are
        // merely unused, never a gap openraft does not know about.
        let purged = async {
            self.put_meta(LAST_PURGED, &log_id).await?;
            self.remove((Bound::Unbounded, Bound::Included(log_id.index))).await
        };
        purged
            .await
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}
