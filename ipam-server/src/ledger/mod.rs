//! The event ledger as readers see it: every event the state machine applied, by sequence
//! number, and a signal when more arrive. The state machine is the only writer (in the same sled
//! transaction as its applied position, see `raft::state_machine`); everything here reads.
//!
//! ```text
//!   StateMachine::apply ──▶ tree "events": be_u64(seq) ─▶ json(Event)
//!                      └──▶ watch::Sender<u64> (last seq) ──▶ Ledger::wait_for(seq)
//!   Ledger::read(from_seq, limit) ──▶ [(seq, Event)]       (Export, Watch, replicas' audits)
//! ```
//!
//! Point queries by address, pod, node, ENI or time (indexes beside the events) are the next
//! layer (issue C); filters here are applied to a sequential read.

use ipam_core::Event;
use tokio::sync::watch;

use crate::raft::codec;
use crate::raft::codec::CodecError;
use crate::raft::state_machine::event_key;

/// Why the ledger could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored event does not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A key is not a sequence number.
    #[error("an event key of {0} bytes (sequence numbers are 8)")]
    Key(usize),
    /// The replica stopped applying.
    #[error("the replica is shutting down")]
    Closed,
}

/// `Result` with [`LedgerError`].
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// A reader of the ledger (cheap to clone).
#[derive(Debug, Clone)]
pub struct Ledger {
    events: sled::Tree,
    last_seq: watch::Receiver<u64>,
}

impl Ledger {
    /// A reader over `events`, told of new events through `last_seq`.
    pub fn new(events: sled::Tree, last_seq: watch::Receiver<u64>) -> Self {
        Self { events, last_seq }
    }

    /// The sequence number of the last event applied on this replica (0: none).
    pub fn last_seq(&self) -> u64 {
        *self.last_seq.borrow()
    }

    /// Up to `limit` events from `from_seq` on, in order.
    ///
    /// # Errors
    ///
    /// sled failed or an event does not decode.
    pub fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<(u64, Event)>> {
        self.events
            .range(event_key(from_seq)..)
            .take(limit)
            .map(|kv| {
                let (key, value) = kv?;
                let seq = key
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| LedgerError::Key(key.len()))?;
                let event: Event = codec::decode("event", &value)?;
                Ok((seq, event))
            })
            .collect()
    }

    /// Waits until the ledger holds event `seq`.
    ///
    /// # Errors
    ///
    /// The replica stopped.
    pub async fn wait_for(&mut self, seq: u64) -> Result<()> {
        self.last_seq
            .wait_for(|last| *last >= seq)
            .await
            .map(|_| ())
            .map_err(|_| LedgerError::Closed)
    }
}
