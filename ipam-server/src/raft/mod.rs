//! Replication: openraft 0.9 (storage-v2) on one sled database. openraft's generic types stop
//! here; the rest of the server names the aliases of [`types`].
//!
//! ```text
//!              client ──Proposal { at, actor, request_id, body }──▶ leader
//!                                                                     │ Raft::client_write
//!   ┌─────────────────────────────── one sled::Db ──────────────────────────────────────────┐
//!   │                                                                                        │
//!   │  LogStore (log_store.rs)               StateMachine (state_machine.rs)                 │
//!   │  ┌───────────────────────┐  committed  ┌──────────────────────────────────────────┐    │
//!   │  │ raft_log  idx ─▶ Entry│ ──────────▶ │ decide(&State, &Command) ─▶ events       │    │
//!   │  │ raft_meta vote,       │   entries   │ State::apply(event)   (in memory)        │    │
//!   │  │   committed,          │             │ events   idx‖pos ─▶ Event   ┐ one sled   │    │
//!   │  │   last_purged         │             │ sm_meta  last_applied,      ┘ transaction│    │
//!   │  └───────────────────────┘             │          membership                      │    │
//!   │    append = 1 batch + 1 flush,         └───────────────┬──────────────────────────┘    │
//!   │    then LogFlushed                                     │ build_snapshot / install      │
//!   │         ▲                                              ▼                               │
//!   │         │ purge ≤ snapshot         sm_snapshot  meta, file ─▶ snapshots/<file>.snap:   │
//!   │         └───────────────────────────   cbor{last_applied, last_seq, membership, state}  │
//!   │                                        (+ the ledger up to last_seq when sent)          │
//!   └────────────────────────────────────────────────────────────────────────────────────────┘
//!
//!   restart: State = snapshot.state + events after snapshot.last_applied
//! ```
//!
//! Replicas talk over gRPC ([`grpc_network`]) in the server, or in process ([`network`]) in
//! tests. The reply of an entry is an [`types::Outcome`]: the domain's `Reply`, or a
//! [`types::Refusal`] (which changed nothing).

pub mod codec;
pub mod grpc_network;
pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod snapshot_file;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use state_machine::StateMachine;
pub use types::Outcome;
pub use types::Proposal;
pub use types::Refusal;
pub use types::TypeConfig;
