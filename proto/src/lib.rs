//! The wire protocol of the IPAM: generated code only, no logic.
//!
//! * [`ipam::v1`]: the IPAM server's services (`AgentService`, `AdminService`, `AuditService`,
//!   `RaftService`) and the shared messages.
//! * [`agent::v1`]: the node agent's `CniBackend`, served to the CNI plugin on a unix socket.
//!
//! The `.proto` files under `proto/` are the source of truth; `build.rs` regenerates this code on
//! every change. Conversions to and from the domain live in the server's `pb_impl/`, not here.

/// The IPAM server's protocol.
pub mod ipam {
    /// Version 1 of the IPAM server's protocol.
    pub mod v1 {
        tonic::include_proto!("ipam.v1");
    }
}

/// The node agent's protocol for the CNI plugin.
pub mod agent {
    /// Version 1 of the node agent's protocol.
    pub mod v1 {
        tonic::include_proto!("agent.v1");
    }
}

/// The encoded `FileDescriptorSet` of both packages, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ipam_descriptor");
