//! Protobuf ⇄ domain conversions, a file per type (STYLE.md: protobuf types stop at the edge).
//!
//! ```text
//!   pb::*Request ──(field checks: PbError → INVALID_ARGUMENT, naming the field)──▶ Write { request_id, body }
//!                                                                                  │ Replica::write
//!   pb::*Response ◀──(reply + a read of the state for what the reply does not carry)──┘
//! ```
//!
//! Only syntax is checked here (required fields, addresses, CIDRs, enum values, integer widths);
//! what the domain can check (names, EC2 id syntax, limits, selectors) it checks in `decide`, so
//! that one rule lives in one place.

pub mod cluster;
pub mod consistency;
pub mod ec2_budget;
pub mod eni;
pub mod error;
pub mod event;
pub mod field;
pub mod lease;
pub mod list;
pub mod node;
pub mod pool;
pub mod settings;
pub mod sg_policy;
pub mod stats;
pub mod subnet_config;
pub mod time;

use ipam_core::CommandBody;
use ipam_core::ids::RequestId;

pub use error::PbError;

/// A command as a request asks for it: its idempotency key and its body. The service adds the
/// actor and hands both to `Replica::write`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The request id (`None` only where the protocol lets it be empty).
    pub request_id: Option<RequestId>,
    /// The command.
    pub body: CommandBody,
}
