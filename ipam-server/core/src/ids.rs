//! Identifiers and time. Every id the server mints is a Raft log index, so every replica derives
//! the same ids from the same log without coordination (see `docs/domain.md`).

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

/// Position of a command in the replicated log. Unique and increasing.
pub type LogIndex = u64;

/// Milliseconds since the Unix epoch, stamped by the leader into each command.
pub type Timestamp = u64;

/// A node agent's registration generation: the log index of its latest `RegisterNode`.
pub type Epoch = u64;

/// The server's handle of an ENI: the log index of the command that planned it.
pub type EniRef = u64;

/// The id of one binding of an address to a pod: the log index of the `Bind` that made it.
pub type LeaseId = u64;

/// A client-chosen idempotency key. A retried command with the same key gets the first reply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(String);

impl RequestId {
    /// Longest request id accepted.
    pub const MAX_LEN: usize = 64;

    /// Checks length (1..=64) and charset (printable ASCII without spaces).
    pub fn new(id: impl Into<String>) -> Result<Self, crate::DomainError> {
        let id = id.into();
        let ok = !id.is_empty() && id.len() <= Self::MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(id))
        } else {
            Err(crate::DomainError::InvalidRequestId { id })
        }
    }

    /// The id as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who asked for a change. Recorded with every event, so the ledger can say who did what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// The node agent of the named node (including work it does for the CNI plugin).
    Agent(String),
    /// A leader-only controller of the server (expiry, cooldown, reconciliation).
    Controller,
    /// A person or tool using the admin API; the name is what the caller authenticated as.
    Operator(String),
}
