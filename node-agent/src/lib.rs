//! The node agent (one per node): identity, warm pools, ENIs through EC2 as intents the server
//! records first, host networking, SNAT, and the CNI plugin's backend.
//!
//! ```text
//!   agent        start (register → SNAT → reconcile → CNI socket) and the loops (heartbeat, pool)
//!   executor     the warm pool's executor: planner actions as intents (server first, then EC2),
//!                what a crash left in flight resolved from EC2's view, the host kept in step
//!   warm         the warm-pool planner: WARM_ENI_TARGET / WARM_IP_TARGET / MINIMUM_IP_TARGET as
//!                the VPC CNI means them, a pure function of targets and what the node has
//!   ec2/         the EC2 trait, the aws-sdk-ec2 adapter, the simulator, ENI intent recovery
//!   host/        ENI tables, pod rules (rtnetlink) and SNAT (nftables); an in-memory twin
//!   cni_backend  agent.v1.CniBackend on the unix socket
//!   ipam_client  the server's AgentService with the node, its epoch and request ids
//!   kube/        ENIConfig / SecurityGroupPolicy / pod watchers, or the same YAML from files
//!   config identity limits metrics
//! ```
//!
//! docs/node-agent.md tells the whole story.

pub mod agent;
pub mod cni_backend;
pub mod config;
pub mod ec2;
pub mod executor;
pub mod host;
pub mod identity;
pub mod ipam_client;
pub mod kube;
pub mod limits;
pub mod metrics;
pub mod warm;
