//! The IPAM domain: everything that decides, as pure deterministic functions every replica runs.
//!
//! ```text
//!   Command ──decide(&State, &Command)──▶ Decision { events, reply }
//!                                              │
//!   State ◀──────── State::apply(&Event) ◀─────┘        (replay of the events = live state)
//! ```
//!
//! No IO: no clocks, no randomness, no network, no storage. Time and ids come inside commands.
//! See `docs/domain.md` for the vocabulary and the address life cycle.

pub mod allocator;
pub mod cidr;
pub mod command;
pub mod decide;
pub mod detmap;
pub mod eni_tags;
pub mod error;
pub mod event;
pub mod ids;
pub mod limits;
pub mod policy;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;

pub use command::Command;
pub use command::CommandBody;
pub use decide::Decision;
pub use decide::Reply;
pub use decide::decide;
pub use error::DomainError;
pub use error::ErrorCode;
pub use error::Result;
pub use event::Event;
pub use event::EventKind;
pub use state::State;
