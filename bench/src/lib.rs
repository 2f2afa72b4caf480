//! The ledger benchmark: how fast the ledger answers who-had and history, against PostgreSQL 15
//! holding the same events with B-tree indexes, and what indexing costs on the write path.
//!
//! ```text
//!   generate       sim::Cluster ──Proposal entries, 64 per apply──▶ StateMachine (decide, apply,
//!                  events + index entries in sled, as a replica does) ──▶ manifest.json
//!                  (event count, time span, sampled addresses and pods)
//!   load-postgres  Ledger::read in pages ──binary COPY──▶ events, event_ips ──▶ B-tree indexes
//!   query          the same seeded samples to both: Ledger::who_had / history + the gRPC
//!                  service's pb conversion, in process │ prepared statements over a unix socket
//!                  ──▶ cross-check the answers, then p50 / p99 / mean per question
//! ```
//!
//! Not a test and not run in CI; `bench/ledger_vs_postgres.sh` runs the whole thing and
//! `docs/benchmarks.md` has the results.

pub mod error;
pub mod manifest;
pub mod measure;
pub mod postgres;
pub mod questions;
pub mod rng;
pub mod sim;

pub use error::Error;
pub use error::Result;
