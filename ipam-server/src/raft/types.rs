//! The Raft type configuration: what a log entry carries (a [`Proposal`]) and what applying it
//! answers (an [`Outcome`]). Everything else in the server names these aliases, so openraft's
//! generic types stay inside `raft/`.

use ipam_core::Command;
use ipam_core::CommandBody;
use ipam_core::DomainError;
use ipam_core::Reply;
use ipam_core::ids::Actor;
use ipam_core::ids::LogIndex;
use ipam_core::ids::RequestId;
use ipam_core::ids::Timestamp;
use serde::Deserialize;
use serde::Serialize;

openraft::declare_raft_types!(
    /// The IPAM's Raft types: node ids are `u64`, nodes are addressed by a plain `BasicNode`
    /// (its `addr` is the gRPC endpoint), entries carry [`Proposal`]s and answer [`Outcome`]s.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::raft::snapshot_file::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A replica's id in the cluster.
pub type NodeId = u64;
/// A replica's address book entry.
pub type Node = openraft::BasicNode;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log entry's position and the leader that wrote it.
pub type LogId = openraft::LogId<NodeId>;
/// A vote (term, candidate, committed).
pub type Vote = openraft::Vote<NodeId>;
/// The membership config and the log id it came from.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// What a snapshot covers.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// A snapshot: its meta and its bytes.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// The error every storage method returns; openraft shuts the replica down on it.
pub type StorageError = openraft::StorageError<NodeId>;

/// A command as the leader proposes it: stamped with the time, but not yet with its log index,
/// which only the log knows. Applying the entry at index `i` turns it into the domain's
/// [`Command`] with `index = i`, so every replica derives the same ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// When the leader proposed it, in ms since the Unix epoch (replicas never read a clock).
    pub at: Timestamp,
    /// Who asked.
    pub actor: Actor,
    /// The client's idempotency key, for the commands the domain deduplicates.
    pub request_id: Option<RequestId>,
    /// What is asked.
    pub body: CommandBody,
}

impl Proposal {
    /// The domain command this proposal becomes at log index `index`.
    pub fn into_command(self, index: LogIndex) -> Command {
        Command {
            index,
            at: self.at,
            actor: self.actor,
            request_id: self.request_id,
            body: self.body,
        }
    }
}

/// Why the domain refused a command, in a form that crosses the wire and the log
/// ([`DomainError`] itself is not serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The [`ipam_core::ErrorCode`] name, e.g. `FailedPrecondition`; the gRPC layer maps it.
    pub code: String,
    /// The refusal as the domain words it.
    pub message: String,
    /// For `ResourceExhausted`: what ran out (see [`DomainError::exhausted`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exhausted: Option<String>,
    /// For a refusal an agent answers by registering again (stale epoch, expired or unknown
    /// node): why (see [`DomainError::register_again`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_again: Option<String>,
}

impl From<&DomainError> for Refusal {
    fn from(error: &DomainError) -> Self {
        Self {
            code: format!("{:?}", error.code()),
            message: error.to_string(),
            exhausted: error.exhausted().map(str::to_owned),
            register_again: error.register_again().map(str::to_owned),
        }
    }
}

/// What applying one entry answers: the domain's reply, or its refusal (which changed nothing).
/// Blank and membership entries answer [`Reply::Done`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The reply or the refusal.
    pub result: Result<Reply, Refusal>,
}

impl Outcome {
    /// The outcome of an entry that carries no command.
    pub fn done() -> Self {
        Self {
            result: Ok(Reply::Done),
        }
    }
}

impl From<Result<Reply, DomainError>> for Outcome {
    fn from(result: Result<Reply, DomainError>) -> Self {
        Self {
            result: result.map_err(|e| Refusal::from(&e)),
        }
    }
}
