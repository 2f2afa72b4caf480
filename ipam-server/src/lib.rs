//! The replicated IPAM server: the `ipam-core` domain behind openraft, stored in sled.
//!
//! For now only [`raft`] exists: the log store and the state machine. The gRPC services,
//! the leader-only controllers and the binaries come next (see the crate's README).

pub mod raft;
