//! The node agent (one per node): identity, warm pools, ENIs through EC2 as intents the server
//! records first, host networking, SNAT, and the CNI plugin's backend.
//!
//! ```text
//!   ec2/    the EC2 calls the agent makes: a trait, an in-process simulator (limits, latency,
//!           EC2's token-bucket throttling, faults) and the aws-sdk-ec2 adapter
//!   warm    the warm-pool planner: WARM_ENI_TARGET / WARM_IP_TARGET / MINIMUM_IP_TARGET as the
//!           VPC CNI means them, a pure function of targets and what the node has
//! ```
//!
//! Issue [D] builds the rest (identity, the ENI intent executor, rtnetlink host routing,
//! nftables SNAT, the CNI backend socket, Kubernetes watchers) on these.

pub mod ec2;
pub mod warm;
