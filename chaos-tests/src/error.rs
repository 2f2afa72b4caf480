//! The errors of the load tools.

/// A failure of the load generator or of the etcd benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration that cannot run (no server, zero clients, a bad CIDR, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A call failed for good (after its retries); `what` says which step.
    #[error("{what}: {status}")]
    Rpc {
        /// The step, e.g. `CreatePool` or `RegisterNode lg-1a2b-3`.
        what: String,
        /// The last answer.
        status: Box<tonic::Status>,
    },
    /// The server answered something the protocol does not allow (e.g. an empty plan).
    #[error("unexpected answer to {what}: {why}")]
    Protocol {
        /// The step.
        what: String,
        /// What was wrong.
        why: String,
    },
    /// A compare-and-swap allocation lost the race `attempts` times in a row and gave up.
    #[error("compare-and-swap gave up after {attempts} conflicting attempts")]
    CasExhausted {
        /// Transactions tried.
        attempts: u32,
    },
    /// The etcd pool has no free address left.
    #[error("the pool has no free address")]
    PoolFull,
    /// The etcd pool value does not decode.
    #[error("the pool value is corrupt: {0}")]
    CorruptPool(String),
    /// A release named an address the pool does not hold for that owner.
    #[error("address offset {offset} is not allocated to {owner}")]
    NotAllocated {
        /// The address's offset in the pool.
        offset: u32,
        /// The owner named.
        owner: String,
    },
    /// Writing the record file failed.
    #[error("record file: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A failed call of step `what`.
    pub fn rpc(what: impl Into<String>, status: tonic::Status) -> Self {
        Self::Rpc {
            what: what.into(),
            status: Box::new(status),
        }
    }
}

/// The load tools' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
