//! The `ipam-eks` CNI 1.1 plugin: leases each pod an address from the node agent
//! (`agent.v1.CniBackend` on a unix socket) and plumbs it like the VPC CNI.
//!
//! ```text
//!   runtime ─(env, stdin)─▶ run ─▶ spec + config ─▶ cmd::{add, del, check, status, gc, version}
//!                                                      │                 │
//!                                              agent_client         plumbing (netns)
//! ```
//!
//! [`run`] is the whole plugin minus the process: `main.rs` only reads the environment and stdin
//! and prints the [`Outcome`].

pub mod agent_client;
pub mod cmd;
pub mod config;
pub mod netns;
pub mod plumbing;
pub mod spec;

pub use cmd::KernelPlumber;
pub use cmd::Outcome;
pub use cmd::PlumbFailure;
pub use cmd::Plumber;
pub use cmd::run;
pub use cmd::run_with;
