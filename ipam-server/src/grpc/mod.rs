//! The gRPC services of one replica: `AgentService` (node agents), `AdminService` (operators,
//! `ipamctl`), `AuditService` (the ledger) and `RaftService` (the other replicas). Each service
//! turns protobuf into domain commands through `pb_impl`, asks the [`crate::replica::Replica`],
//! and maps errors with [`status`].

pub mod admin;
pub mod agent;
pub mod audit;
pub mod budget;
pub mod raft;
pub mod status;
