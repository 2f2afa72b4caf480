//! The replicated IPAM server: the `ipam-core` domain behind openraft, stored in sled, served
//! over gRPC.
//!
//! * [`raft`]: the log store, the state machine, the transports.
//! * [`replica`]: one replica as the services see it (write, read, membership).
//! * [`grpc`]: the services; [`pb_impl`]: protobuf ⇄ domain.

pub mod config;
pub mod controllers;
pub mod grpc;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod pb_impl;
pub mod raft;
pub mod replica;
pub mod server;
pub mod telemetry;
