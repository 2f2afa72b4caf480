//! The event ledger as readers see it: every event the state machine applied, by sequence
//! number, the indexes beside them, and a signal when more arrive. The state machine is the only
//! writer (events and index entries in the same sled transaction as its applied position, see
//! `raft::state_machine`); retention ([`retention`]) is the only deleter; everything here reads.
//!
//! ```text
//!   StateMachine::apply ──▶ tree "events": be_u64(seq) ─▶ json(Event)
//!                      ├──▶ tree "ledger_index" (see [`index`])
//!                      └──▶ watch::Sender<u64> (last seq) ──▶ Ledger::wait_for(seq)
//!
//!   Ledger::read(from_seq, limit)         sequential: Export, Watch
//!   Ledger::who_had(ip, at)               b'b' records of ip, newest first, until one ended
//!                                         before `at` ─▶ one event read per binding returned
//!   Ledger::history(key, since, until)    seq_at(since) via b't', then the key's entries from
//!                                         that seq ─▶ one event read per event returned
//! ```
//!
//! Retention may have removed the oldest events: [`Horizon`] says up to where. A query reaching
//! before it is refused ([`LedgerError::Trimmed`]) rather than answered from a partial history.

pub mod index;
pub mod retention;

use std::net::Ipv4Addr;

use ipam_core::Event;
use ipam_core::EventKind;
use ipam_core::command::ReleaseReason;
use ipam_core::ids::EniRef;
use ipam_core::ids::Timestamp;
use ipam_core::state::Lease;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use crate::ledger::index::BindingRecord;
pub use crate::ledger::index::Key;
use crate::ledger::index::SharedBuffer;
use crate::raft::codec;
use crate::raft::codec::CodecError;
use crate::raft::state_machine::event_key;

/// The key of the horizon record in the index tree.
const HORIZON_KEY: &[u8] = b"h";

/// Why the ledger could not answer.
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
    /// The ledger's stored data contradicts itself (an index entry without its event).
    #[error("the ledger is inconsistent: {0}")]
    Inconsistent(String),
    /// The question reaches before what retention kept.
    #[error(
        "{asked} is before the ledger's retention horizon: events before {} (seq {}) were pruned",
        format_ms(.horizon.at),
        .horizon.seq
    )]
    Trimmed {
        /// What was asked, e.g. "since 2026-01-01T00:00:00Z".
        asked: String,
        /// The horizon.
        horizon: Horizon,
    },
    /// The replica stopped applying.
    #[error("the replica is shutting down")]
    Closed,
}

/// `Result` with [`LedgerError`].
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// A time in ms since the epoch as RFC 3339, for messages.
pub fn format_ms(ms: Timestamp) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// How far retention has pruned the ledger: every event before `seq` is gone, except the binds
/// of leases that were still live when they were pruned (they explain a live lease, so they stay
/// until it ends); every event at or after `at` is kept. `Horizon::default()`: nothing pruned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Horizon {
    /// The first seq retention keeps.
    pub seq: u64,
    /// The retention cut-off time: events at or after it are kept.
    pub at: Timestamp,
    /// The seq up to which pruning has deleted (a pass resumes here after a restart).
    pub pruned_to: u64,
}

impl Horizon {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        [self.seq, self.at, self.pruned_to]
            .iter()
            .flat_map(|n| n.to_be_bytes())
            .collect()
    }

    /// Reads the stored form; `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let number = |i: usize| bytes.get(i * 8..i * 8 + 8)?.try_into().ok().map(u64::from_be_bytes);
        (bytes.len() == 24).then_some(())?;
        Some(Self {
            seq: number(0)?,
            at: number(1)?,
            pruned_to: number(2)?,
        })
    }

    /// Whether anything was pruned.
    pub fn is_pruned(&self) -> bool {
        self.seq > 1
    }

    /// Reads the horizon from the index tree.
    ///
    /// # Errors
    ///
    /// sled failed or the record is damaged.
    pub fn load(index: &sled::Tree) -> Result<Self> {
        match index.get(HORIZON_KEY)? {
            None => Ok(Self::default()),
            Some(bytes) => Self::decode(&bytes)
                .ok_or_else(|| LedgerError::Inconsistent(format!("a horizon record of {} bytes", bytes.len()))),
        }
    }

    /// Adds saving this horizon to `batch` (of the index tree).
    pub fn stage(&self, batch: &mut sled::Batch) {
        batch.insert(HORIZON_KEY, self.encode());
    }
}

/// One binding of an address, as [`Ledger::who_had`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The lease, complete (owner, node, instance, ENI, VLAN, security groups, bound_at).
    pub lease: Lease,
    /// How it ended, if it has.
    pub released: Option<Release>,
}

/// How a binding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// The `IpReleased` event.
    pub seq: u64,
    /// When.
    pub at: Timestamp,
    /// Why.
    pub reason: ReleaseReason,
    /// When its address could be bound again (the end of its cooldown).
    pub cooling_until: Timestamp,
}

/// A History question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Whose history.
    pub key: Key,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events before this time.
    pub until: Option<Timestamp>,
    /// Only events after this seq (the page token).
    pub after_seq: u64,
    /// At most this many events.
    pub limit: usize,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The events, by seq.
    pub events: Vec<(u64, Event)>,
    /// Whether more events match after the last one.
    pub more: bool,
}

/// A reader of the ledger (cheap to clone).
#[derive(Debug, Clone)]
pub struct Ledger {
    events: sled::Tree,
    index: sled::Tree,
    buffer: SharedBuffer,
    last_seq: watch::Receiver<u64>,
}

fn seq_of(key: &[u8]) -> Result<u64> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| LedgerError::Key(key.len()))
}

impl Ledger {
    /// A reader over `events` and their `index`, told of new events through `last_seq`.
    pub fn new(events: sled::Tree, index: sled::Tree, buffer: SharedBuffer, last_seq: watch::Receiver<u64>) -> Self {
        Self {
            events,
            index,
            buffer,
            last_seq,
        }
    }

    /// The sequence number of the last event applied on this replica (0: none).
    pub fn last_seq(&self) -> u64 {
        *self.last_seq.borrow()
    }

    /// How far retention has pruned.
    ///
    /// # Errors
    ///
    /// sled failed or the record is damaged.
    pub fn horizon(&self) -> Result<Horizon> {
        Horizon::load(&self.index)
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
                Ok((seq_of(&key)?, codec::decode("event", &value)?))
            })
            .collect()
    }

    /// The event at `seq`.
    ///
    /// # Errors
    ///
    /// sled failed, the event does not decode, or it is not there.
    pub fn event(&self, seq: u64) -> Result<Event> {
        let value = self
            .events
            .get(event_key(seq))?
            .ok_or_else(|| LedgerError::Inconsistent(format!("the index names event {seq}, which is not stored")))?;
        Ok(codec::decode("event", &value)?)
    }

    /// The first seq whose event is at or after `at` (one past the last event if none is).
    ///
    /// # Errors
    ///
    /// sled failed.
    pub fn seq_at(&self, at: Timestamp) -> Result<u64> {
        let buffer = index::read(&self.buffer);
        index::seq_at(&self.index, &buffer, at, self.last_seq()).map_err(LedgerError::Inconsistent)
    }

    /// The server's handle of the ENI EC2 knows as `eni_id`, if it ever attached.
    ///
    /// # Errors
    ///
    /// sled failed or the record is damaged.
    pub fn eni_ref(&self, eni_id: &str) -> Result<Option<EniRef>> {
        let buffer = index::read(&self.buffer);
        index::record(&self.index, &buffer, &index::eni_id_key(eni_id))?
            .map(|value| {
                <[u8; 8]>::try_from(value.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| {
                        LedgerError::Inconsistent(format!("the ENI record of {eni_id} has {} bytes", value.len()))
                    })
            })
            .transpose()
    }

    fn check_horizon(&self, at: Timestamp, asked: impl FnOnce() -> String) -> Result<Horizon> {
        let horizon = self.horizon()?;
        if horizon.is_pruned() && at < horizon.at {
            return Err(LedgerError::Trimmed {
                asked: asked(),
                horizon,
            });
        }
        Ok(horizon)
    }

    /// The bindings of `ip` live at `at`: bound at or before it and not released by then. Walks
    /// the address's binding records newest first and stops at the first that ended at or
    /// before `at` (bindings of one address do not overlap, so every older one ended earlier);
    /// normally one or none, oldest first.
    ///
    /// # Errors
    ///
    /// `at` is before the retention horizon, or the ledger cannot be read.
    pub fn who_had(&self, ip: Ipv4Addr, at: Timestamp) -> Result<Vec<Binding>> {
        self.check_horizon(at, || format!("{ip} at {}", format_ms(at)))?;
        let records = {
            let buffer = index::read(&self.buffer);
            index::binding_records(&self.index, &buffer, ip)?
        };
        let mut live = Vec::new();
        for (key, value) in records.into_iter().rev() {
            let record = BindingRecord::decode(&value)
                .ok_or_else(|| LedgerError::Inconsistent(format!("binding record {key:?} of {} bytes", value.len())))?;
            if record.bound_at() > at {
                continue;
            }
            if !record.live_at(at) {
                break;
            }
            live.push(self.binding(record)?);
        }
        live.reverse();
        Ok(live)
    }

    fn binding(&self, record: BindingRecord) -> Result<Binding> {
        let event = self.event(record.seq())?;
        match event.kind {
            EventKind::IpBound { lease, .. } => Ok(Binding { lease, released: None }),
            EventKind::IpReleased {
                lease,
                reason,
                cooling_until,
                ..
            } => Ok(Binding {
                lease,
                released: Some(Release {
                    seq: record.seq(),
                    at: event.at,
                    reason,
                    cooling_until,
                }),
            }),
            other => Err(LedgerError::Inconsistent(format!(
                "a binding record names event {}, a {}",
                record.seq(),
                other.name()
            ))),
        }
    }

    /// One page of the events touching a key in a time range, by seq.
    ///
    /// # Errors
    ///
    /// `since` is before the retention horizon, or the ledger cannot be read.
    pub fn history(&self, query: &HistoryQuery) -> Result<HistoryPage> {
        let horizon = match query.since {
            Some(since) => self.check_horizon(since, || format!("since {}", format_ms(since)))?,
            None => self.horizon()?,
        };
        if horizon.is_pruned() {
            // A range ending before the horizon, or a page continuing from before it (the
            // horizon moved between pages), would be answered partially.
            if let Some(until) = query.until.filter(|until| *until <= horizon.at) {
                return Err(LedgerError::Trimmed {
                    asked: format!("until {}", format_ms(until)),
                    horizon,
                });
            }
            if query.after_seq > 0 && query.after_seq + 1 < horizon.seq {
                return Err(LedgerError::Trimmed {
                    asked: format!("the page after seq {}", query.after_seq),
                    horizon,
                });
            }
        }
        let from = [
            horizon.seq,
            query.since.map(|since| self.seq_at(since)).transpose()?.unwrap_or(1),
            query.after_seq.saturating_add(1),
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let to = query
            .until
            .map(|until| self.seq_at(until))
            .transpose()?
            .unwrap_or(u64::MAX);
        let mut events = Vec::new();
        let mut more = false;
        if from < to {
            let seqs;
            (seqs, more) = {
                let buffer = index::read(&self.buffer);
                index::postings(&self.index, &buffer, &query.key, from, to, query.limit)
                    .map_err(LedgerError::Inconsistent)?
            };
            for seq in seqs {
                match self.event(seq) {
                    Ok(event) => events.push((seq, event)),
                    // Pruned between reading its index entry and the event itself.
                    Err(error @ LedgerError::Inconsistent(_)) => {
                        let horizon = self.horizon()?;
                        if horizon.seq > seq {
                            return Err(LedgerError::Trimmed {
                                asked: format!("event {seq}"),
                                horizon,
                            });
                        }
                        return Err(error);
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(HistoryPage { events, more })
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
