//! The benchmark's errors.

/// Why a phase of the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The state machine failed to open, apply or snapshot.
    #[error("state machine: {0}")]
    StateMachine(#[from] ipam_server::raft::state_machine::StateMachineError),
    /// openraft's storage interface reported a failure.
    #[error("state machine storage: {0}")]
    Storage(Box<ipam_server::raft::types::StorageError>),
    /// The ledger could not answer.
    #[error("ledger: {0}")]
    Ledger(#[from] ipam_server::ledger::LedgerError),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest does not decode.
    #[error("manifest {path}: {source}")]
    Manifest {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The simulation met something a real cluster would not (a bug in the simulation or in
    /// the domain).
    #[error("simulation: {0}")]
    Simulation(String),
    /// The two systems answered a question differently.
    #[error("answers differ: {0}")]
    Mismatch(String),
}

impl From<ipam_server::raft::types::StorageError> for Error {
    fn from(error: ipam_server::raft::types::StorageError) -> Self {
        Self::Storage(Box::new(error))
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
