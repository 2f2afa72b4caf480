//! The node's host networking, as the agent needs it: ENI links with their route tables, the
//! per-pod policy rules, and SNAT for traffic leaving the VPC.
//!
//! [`Host`] is what the agent calls. Two implementations: [`netlink::NetlinkHost`] (rtnetlink and
//! nftables, on the real host or inside a network namespace, through a [`netns::Netns`] thread) and
//! [`mem::MemHost`] (an in-memory model with the same semantics, for the agent's tests that need no
//! privileges).
//!
//! The layout is the VPC CNI's (pkg/networkutils and the plugin's driver), so that operators find
//! what they know:
//!
//! ```text
//!   ENI at device index d   link found by MAC, MTU 9001, up, its primary address on it;
//!                           table d + 1: the subnet gateway as a link route and the default
//!                           route via it; rule 32765 "from <ENI address> lookup d + 1"
//!   pod address p on ENI d  rule 512  "to p lookup main"          (traffic to the pod: veth)
//!                           rule 1536 "from p lookup d + 1"       (its egress: its own ENI)
//!   SNAT (not external)     a pod's new connection to outside the VPC CIDRs (and the excluded
//!                           CIDRs) is marked 0x80; rule 1024 "fwmark 0x80/0x80 lookup main"
//!                           sends it out of the primary ENI, source-NATed to the primary address
//!   NodePort (always)       connections coming in to the primary ENI's address are marked too,
//!                           so that the pod's replies leave where the request came in
//! ```
//!
//! `netlink` explains the rules and routes, `snat` the nftables table.

use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;

pub mod mem;
pub mod netlink;
pub mod netns;
pub mod snat;

/// The route table of the ENI at `device_index` (the VPC CNI's numbering).
pub fn eni_table(device_index: u32) -> u32 {
    device_index + 1
}

/// Rule priority of "to pod lookup main".
pub const TO_POD_RULE_PRIORITY: u32 = 512;
/// Rule priority of "from pod lookup ENI table".
pub const FROM_POD_RULE_PRIORITY: u32 = 1536;

/// An attached secondary ENI, as the host must configure it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniLink {
    /// The ENI's MAC address as EC2 reports it ("02:ab:…", lower case).
    pub mac: String,
    /// Its device index (≥ 1; 0 is the primary ENI, which the agent never configures).
    pub device_index: u32,
    /// Its primary private address.
    pub primary_ip: Ipv4Addr,
    /// The prefix length of its subnet.
    pub prefix_len: u8,
    /// The subnet's router (network address + 1).
    pub gateway: Ipv4Addr,
}

impl EniLink {
    /// The ENI's route table.
    pub fn table(&self) -> u32 {
        eni_table(self.device_index)
    }
}

/// What the host has configured for one ENI (read back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniState {
    /// The link's name (e.g. "eth1").
    pub link: String,
    /// The link's MAC address.
    pub mac: String,
    /// Whether the link is up.
    pub up: bool,
    /// The table number, when the table has the default route.
    pub table: Option<u32>,
    /// The default route's gateway in that table.
    pub gateway: Option<Ipv4Addr>,
}

/// A pod address's rules, as installed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRules {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The table its egress uses (rule 1536).
    pub table: u32,
}

/// SNAT for pod traffic that leaves the VPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatConfig {
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT=true`: no SNAT; pods are seen with their own addresses.
    pub external: bool,
    /// The node's primary private address (the SNAT source).
    pub primary_ip: Ipv4Addr,
    /// The VPC's CIDRs (primary and secondary): traffic to them is never SNATed.
    pub vpc_cidrs: Vec<(Ipv4Addr, u8)>,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`: more destinations that are not SNATed.
    pub exclude_cidrs: Vec<(Ipv4Addr, u8)>,
}

/// A host networking failure.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No link with the MAC appeared in time.
    #[error("no link with MAC {mac} appeared within {waited:?}")]
    LinkTimeout {
        /// The MAC waited for.
        mac: String,
        /// How long.
        waited: Duration,
    },
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// Applying the nftables ruleset failed.
    #[error("nftables: {0}")]
    Nftables(String),
    /// Bad input (e.g. a malformed MAC).
    #[error("{0}")]
    Invalid(String),
    /// Entering a network namespace, or running work on its thread, failed.
    #[error("network namespace: {0}")]
    Netns(String),
}

/// The agent's view of host networking. Every method is idempotent: configuring what is already
/// configured succeeds and changes nothing; removing what is absent succeeds.
#[async_trait]
pub trait Host: Send + Sync + std::fmt::Debug {
    /// Waits until a link with `mac` exists (EC2 attached the ENI), returning its name.
    async fn wait_for_link(&self, mac: &str, timeout: Duration) -> Result<String, HostError>;

    /// Brings the ENI's link up and makes its table: the gateway as a link route and the default
    /// route via it.
    async fn configure_eni(&self, eni: &EniLink) -> Result<(), HostError>;

    /// Removes the ENI's table (routes) and the rules pointing at it; the link may already be gone.
    async fn remove_eni(&self, eni: &EniLink) -> Result<(), HostError>;

    /// The configured state of the ENI link with `mac`, or None if no such link exists.
    async fn eni_state(&self, mac: &str) -> Result<Option<EniState>, HostError>;

    /// Installs the pod address's rules (512 to-pod → main, 1536 from-pod → `table`). Replaces
    /// rules of the same address that point at another table. One 1536 rule for every
    /// destination, whatever the SNAT configuration, as the VPC CNI has done since v1.9: which
    /// flows leave by the primary ENI instead is decided by the connection mark that
    /// [`Host::configure_snat`] sets up. A pod on the main table (the primary ENI's) gets no 1536
    /// rule.
    async fn add_pod_rules(&self, rules: &PodRules) -> Result<(), HostError>;

    /// Removes the pod address's rules.
    async fn del_pod_rules(&self, ip: Ipv4Addr) -> Result<(), HostError>;

    /// Every pod address with rules installed (for the agent's reconcile), sorted.
    async fn pod_rules(&self) -> Result<Vec<PodRules>, HostError>;

    /// Makes the SNAT rules match `config` (replacing what this agent installed before). With
    /// `external`, no SNAT and no marking of pods' outbound connections remain; the NodePort
    /// return-path mark stays (the VPC CNI's `AWS_VPC_CNI_NODE_PORT_SUPPORT` default).
    async fn configure_snat(&self, config: &SnatConfig) -> Result<(), HostError>;
}
