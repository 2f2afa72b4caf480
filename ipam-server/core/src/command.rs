//! Commands: what someone asks the cluster to do. A command is an intent; `decide` turns it into
//! the events that say what happened, or refuses it with a typed error and changes nothing.
//!
//! The leader stamps every command with its log index and the time before proposing it, so
//! replicas never read a clock or mint an id of their own.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

use crate::cidr::Ipv4Cidr;
use crate::ids::Actor;
use crate::ids::EniRef;
use crate::ids::Epoch;
use crate::ids::LeaseId;
use crate::ids::LogIndex;
use crate::ids::RequestId;
use crate::ids::Timestamp;
use crate::limits::InstanceLimits;
use crate::policy::PodMeta;
use crate::policy::SgPolicy;
use crate::state::Settings;

/// A command as it sits in the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The log index of the entry; ids minted by this command derive from it.
    pub index: LogIndex,
    /// When the leader proposed it.
    pub at: Timestamp,
    /// Who asked.
    pub actor: Actor,
    /// Idempotency key of agent commands: for the commands [`CommandBody::deduplicated`] names, a
    /// retry returns the reply of the first attempt and changes nothing.
    pub request_id: Option<RequestId>,
    /// What is asked.
    pub body: CommandBody,
}

/// Which node and which generation of its agent a command speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRef {
    /// The Kubernetes node name.
    pub node: String,
    /// The epoch the agent got from its latest registration.
    pub epoch: Epoch,
}

/// The pod side of a binding: who holds the address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID (tells apart two pods with the same name at different times).
    pub uid: String,
    /// The CNI container id (the sandbox).
    pub container_id: String,
    /// The interface name inside the pod, e.g. `eth0`.
    pub ifname: String,
}

/// Which lease a release names. Never "whatever this IP has now": a stale DEL must not free a
/// newer binding of the same address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseSelector {
    /// The lease id the CNI plugin got at ADD (kept in prevResult).
    Id(LeaseId),
    /// The exact attachment (container id + interface name), when the lease id was lost.
    Attachment {
        /// CNI container id.
        container_id: String,
        /// Interface name in the pod.
        ifname: String,
    },
}

/// Why a binding ended. Recorded in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReleaseReason {
    /// The container runtime ran CNI DEL.
    CniDel,
    /// CNI GC: the attachment was not in the runtime's list of valid attachments.
    Gc,
    /// The node's heartbeat lease ran out.
    Expired,
    /// An operator released it.
    Operator,
    /// The node was removed from the cluster.
    NodeRemoved,
    /// The agent's reconciliation found no such pod on the node.
    Reconcile,
}

/// The kind of ENI an agent asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EniRequest {
    /// A secondary ENI in the node's ENIConfig subnet carrying `ips` pod addresses besides its
    /// own primary address.
    Secondary {
        /// Pod addresses to assign at creation (0 ..= IPv4-per-ENI − 1).
        ips: u16,
    },
    /// The node's trunk ENI for security groups for pods (one per node).
    Trunk,
}

/// Everything that can be asked of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandBody {
    // ---- administration ----
    /// Adds a secondary CIDR the cluster may carve subnets from.
    CreatePool {
        /// The CIDR (an AWS VPC range: RFC 1918, 100.64.0.0/10 or 198.19.0.0/16).
        cidr: Ipv4Cidr,
    },
    /// Creates or updates an ENIConfig: the subnet and security groups for pod ENIs.
    UpsertSubnetConfig(SubnetConfigSpec),
    /// Deletes an ENIConfig no node uses.
    DeleteSubnetConfig {
        /// The ENIConfig name.
        name: String,
    },
    /// Creates or replaces a SecurityGroupPolicy.
    UpsertSgPolicy(SgPolicy),
    /// Deletes a SecurityGroupPolicy.
    DeleteSgPolicy {
        /// Namespace of the policy.
        namespace: String,
        /// Name of the policy.
        name: String,
    },
    /// Changes cluster-wide settings (TTLs, cooldowns).
    UpdateSettings(Settings),
    /// Lifts the quarantine of an address an operator has checked.
    Unquarantine {
        /// The address.
        ip: Ipv4Addr,
    },
    /// Forgets a node whose instance is gone: releases its leases and returns its addresses
    /// (after the cooldown for the ones that were recently bound).
    RemoveNode {
        /// The node name.
        node: String,
        /// Also remove a node that is still active (heartbeating).
        force: bool,
    },
    /// An operator ends one binding (e.g. a pod that is gone while its node's agent is down).
    ReleaseLease {
        /// The node.
        node: String,
        /// The lease.
        lease: LeaseId,
    },

    // ---- node agent ----
    /// Registers a node agent (first start or restart). Its epoch becomes this command's index.
    RegisterNode(NodeSpec),
    /// Keeps the node's lease alive.
    Heartbeat(AgentRef),
    /// Plans a new ENI: the server picks device index and addresses before EC2 is called.
    PlanEni {
        /// The agent.
        agent: AgentRef,
        /// What kind of ENI.
        request: EniRequest,
    },
    /// Plans a branch ENI with the given security groups on the node's trunk.
    PlanBranchEni {
        /// The agent.
        agent: AgentRef,
        /// Security group ids (1 to 5).
        security_groups: Vec<String>,
    },
    /// EC2 created and attached a planned ENI (or associated a branch ENI).
    ReportEniAttached {
        /// The agent.
        agent: AgentRef,
        /// Which planned ENI.
        eni: EniRef,
        /// EC2's id, `eni-…`.
        eni_id: String,
        /// The MAC address EC2 gave it, `0e:12:…`.
        mac: String,
    },
    /// EC2 refused to create or attach a planned ENI.
    ReportEniFailed {
        /// The agent.
        agent: AgentRef,
        /// Which planned ENI.
        eni: EniRef,
        /// Addresses of the plan EC2 said are in use by something else; they are quarantined.
        in_use: Vec<Ipv4Addr>,
        /// EC2's error, for the ledger.
        error: String,
    },
    /// Plans more pod addresses on an attached secondary ENI.
    PlanIps {
        /// The agent.
        agent: AgentRef,
        /// Which ENI.
        eni: EniRef,
        /// How many.
        count: u16,
    },
    /// EC2 assigned planned addresses.
    ReportIpsAssigned {
        /// The agent.
        agent: AgentRef,
        /// Which ENI.
        eni: EniRef,
        /// The addresses (all pending on that ENI).
        ips: Vec<Ipv4Addr>,
    },
    /// EC2 refused to assign planned addresses.
    ReportIpsFailed {
        /// The agent.
        agent: AgentRef,
        /// Which ENI.
        eni: EniRef,
        /// The planned addresses that were not assigned.
        ips: Vec<Ipv4Addr>,
        /// Those of them EC2 said are in use by something else; they are quarantined.
        in_use: Vec<Ipv4Addr>,
        /// EC2's error, for the ledger.
        error: String,
    },
    /// Takes warm addresses of an ENI out of service so the agent can unassign them in EC2.
    DrainIps {
        /// The agent.
        agent: AgentRef,
        /// Which ENI.
        eni: EniRef,
        /// How many warm addresses.
        count: u16,
    },
    /// EC2 unassigned drained addresses; they go back to the subnet.
    ReportIpsUnassigned {
        /// The agent.
        agent: AgentRef,
        /// Which ENI.
        eni: EniRef,
        /// The addresses (all draining on that ENI).
        ips: Vec<Ipv4Addr>,
    },
    /// Takes a whole ENI out of service so the agent can detach and delete it.
    PlanEniDetach {
        /// The agent.
        agent: AgentRef,
        /// Which ENI.
        eni: EniRef,
    },
    /// EC2 detached and deleted the ENI (or it was found gone).
    ReportEniDetached {
        /// The agent.
        agent: AgentRef,
        /// Which ENI.
        eni: EniRef,
    },
    /// Binds a warm address (or a warm branch ENI, for pods a SecurityGroupPolicy matches).
    Bind {
        /// The agent.
        agent: AgentRef,
        /// The attachment.
        owner: Owner,
        /// Labels and service account, for SecurityGroupPolicy matching.
        pod: PodMeta,
    },
    /// Releases one binding.
    Release {
        /// The agent.
        agent: AgentRef,
        /// Which binding.
        lease: LeaseSelector,
        /// Why.
        reason: ReleaseReason,
    },
    /// CNI GC: releases every binding of the node whose attachment is not listed.
    Gc {
        /// The agent.
        agent: AgentRef,
        /// The attachments the runtime still has: (container id, ifname).
        valid: Vec<(String, String)>,
        /// Only leases bound before this are considered, so that an ADD in flight while the
        /// runtime listed its attachments is not collected.
        bound_before: Timestamp,
    },

    // ---- controllers ----
    /// The leader's periodic tick: expires nodes whose heartbeat lease ran out and ends the
    /// cooldowns that are over.
    Tick,
}

/// An ENIConfig (`crd.k8s.amazonaws.com/v1alpha1`) as the cluster keeps it, with the subnet's
/// CIDR and AZ (which the agent learns from `DescribeSubnets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetConfigSpec {
    /// The ENIConfig name (usually the AZ name).
    pub name: String,
    /// The EC2 subnet id, `subnet-…`.
    pub subnet_id: String,
    /// The subnet's CIDR; must lie inside a pool.
    pub cidr: Ipv4Cidr,
    /// The subnet's availability zone.
    pub az: String,
    /// Security groups of pod ENIs (0 to 5; none means the primary ENI's groups).
    pub security_groups: Vec<String>,
}

/// What a registering agent says about its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The Kubernetes node name.
    pub name: String,
    /// The EC2 instance id, `i-…`.
    pub instance_id: String,
    /// The EC2 instance type, e.g. `m5.large`.
    pub instance_type: String,
    /// Limits from `DescribeInstanceTypes`; `None` uses the built-in table, and an unknown type
    /// is refused rather than guessed.
    pub limits: Option<InstanceLimits>,
    /// The node's availability zone.
    pub az: String,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
    /// The ENIConfig the agent chose (by `ENI_CONFIG_LABEL_DEF` / annotation).
    pub subnet_config: String,
    /// `ENABLE_POD_ENI`: the node gets a trunk and pods matched by a policy get branch ENIs.
    pub pod_eni: bool,
}
