//! Events: what happened. The state is a fold over them (`State::apply`), and the ledger keeps
//! them forever (or as long as retention says), so each event carries everything an auditor
//! needs to read it alone: the full lease on bind and release, the addresses of an ENI plan.

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

use crate::cidr::Ipv4Cidr;
use crate::command::NodeSpec;
use crate::command::ReleaseReason;
use crate::command::SubnetConfigSpec;
use crate::ids::Actor;
use crate::ids::EniRef;
use crate::ids::LogIndex;
use crate::ids::RequestId;
use crate::ids::Timestamp;
use crate::limits::InstanceLimits;
use crate::policy::SgPolicy;
use crate::state::CoolingTarget;
use crate::state::EniKind;
use crate::state::Lease;
use crate::state::Settings;

/// A planned ENI, as the agent needs it to call EC2 (and as the ledger records it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniPlan {
    /// The server's handle.
    pub eni: EniRef,
    /// Secondary, trunk or branch.
    pub kind: EniKind,
    /// Device index to attach at (none for branch ENIs).
    pub device_index: Option<u8>,
    /// EC2 subnet id.
    pub subnet_id: String,
    /// Security groups.
    pub security_groups: Vec<String>,
    /// The ENI's primary address.
    pub primary_ip: Ipv4Addr,
    /// Secondary addresses to assign at creation.
    pub ips: Vec<Ipv4Addr>,
    /// EC2 ClientToken.
    pub token: String,
}

/// One fact, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The log index of the command that caused it.
    pub index: LogIndex,
    /// The command's timestamp.
    pub at: Timestamp,
    /// Who asked for the command.
    pub actor: Actor,
    /// What happened.
    pub kind: EventKind,
}

/// Why addresses went back to their subnet's free list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReturnReason {
    /// EC2 refused the plan that held them.
    PlanFailed,
    /// EC2 unassigned them from their ENI.
    Unassigned,
    /// Their ENI was detached and deleted.
    EniDeleted,
    /// Their node was removed.
    NodeRemoved,
}

/// Every kind of fact the cluster records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A secondary CIDR became available for subnets.
    PoolCreated {
        /// The CIDR.
        cidr: Ipv4Cidr,
    },
    /// An ENIConfig was created or changed.
    SubnetConfigUpserted(SubnetConfigSpec),
    /// An ENIConfig was deleted.
    SubnetConfigDeleted {
        /// Its name.
        name: String,
    },
    /// A SecurityGroupPolicy was created or changed.
    SgPolicyUpserted(SgPolicy),
    /// A SecurityGroupPolicy was deleted.
    SgPolicyDeleted {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Cluster-wide settings changed.
    SettingsUpdated(Settings),
    /// A node agent registered; its epoch is this event's index.
    NodeRegistered {
        /// What the agent said.
        spec: NodeSpec,
        /// The limits in force (from the agent or the built-in table).
        limits: InstanceLimits,
        /// When the node's lease runs out unless it heartbeats.
        deadline: Timestamp,
    },
    /// A node's lease was extended. Heartbeats are coalesced: one event per half TTL at most.
    NodeHeartbeat {
        /// The node.
        node: String,
        /// The new deadline.
        deadline: Timestamp,
    },
    /// A node's lease ran out; its bindings are released (separate `IpReleased` events).
    NodeExpired {
        /// The node.
        node: String,
    },
    /// A node was forgotten; its addresses went back to their subnets (cooling ones after the
    /// cooldown).
    NodeRemoved {
        /// The node.
        node: String,
    },
    /// An ENI was planned: device index and addresses chosen, EC2 not yet called.
    EniPlanned {
        /// The node.
        node: String,
        /// The plan (its `eni` is this event's index); also the agent's reply.
        plan: EniPlan,
        /// The agent's idempotency key, if any.
        request_id: Option<RequestId>,
    },
    /// EC2 created and attached (or associated) a planned ENI; its addresses are warm.
    EniAttached {
        /// The node.
        node: String,
        /// Which ENI.
        eni: EniRef,
        /// EC2's id.
        eni_id: String,
        /// EC2's MAC address for it.
        mac: String,
    },
    /// EC2 refused a planned ENI; its addresses went back (or into quarantine).
    EniPlanFailed {
        /// The node.
        node: String,
        /// Which ENI.
        eni: EniRef,
        /// EC2's error.
        error: String,
    },
    /// An ENI was taken out of service to be detached; its warm addresses are draining.
    EniDetaching {
        /// The node.
        node: String,
        /// Which ENI.
        eni: EniRef,
        /// The agent's idempotency key, if any.
        request_id: Option<RequestId>,
    },
    /// EC2 detached and deleted an ENI; its addresses went back to the subnet.
    EniDetached {
        /// The node.
        node: String,
        /// Which ENI.
        eni: EniRef,
        /// EC2's id, if it ever had one.
        eni_id: Option<String>,
    },
    /// More addresses were planned on an ENI (pending until EC2 assigns them).
    IpsPlanned {
        /// The node.
        node: String,
        /// Which ENI.
        eni: EniRef,
        /// The addresses.
        ips: Vec<Ipv4Addr>,
        /// The agent's idempotency key, if any.
        request_id: Option<RequestId>,
    },
    /// EC2 assigned pending addresses; they are warm.
    IpsAssigned {
        /// The node.
        node: String,
        /// Which ENI.
        eni: EniRef,
        /// The addresses.
        ips: Vec<Ipv4Addr>,
    },
    /// Warm addresses were taken out of service to be unassigned.
    IpsDraining {
        /// The node.
        node: String,
        /// Which ENI.
        eni: EniRef,
        /// The addresses.
        ips: Vec<Ipv4Addr>,
        /// The agent's idempotency key, if any.
        request_id: Option<RequestId>,
    },
    /// Pending or draining addresses left their ENI and went back to the subnet.
    IpsReturned {
        /// The node.
        node: String,
        /// Which ENI.
        eni: EniRef,
        /// The addresses.
        ips: Vec<Ipv4Addr>,
        /// Why.
        reason: ReturnReason,
    },
    /// EC2 said an address is used by something outside the cluster; it is held until an
    /// operator lifts the quarantine.
    IpQuarantined {
        /// The subnet.
        subnet_id: String,
        /// The address.
        ip: Ipv4Addr,
        /// The node and ENI whose plan held it.
        node: String,
        /// The ENI whose plan held it.
        eni: EniRef,
        /// EC2's words.
        error: String,
    },
    /// An operator lifted a quarantine.
    IpUnquarantined {
        /// The subnet.
        subnet_id: String,
        /// The address.
        ip: Ipv4Addr,
    },
    /// An address (or a branch ENI) was bound to a pod.
    IpBound {
        /// The new lease, complete.
        lease: Lease,
        /// The agent's idempotency key, if any.
        request_id: Option<RequestId>,
    },
    /// A binding ended; the address cools down before it can be bound again.
    IpReleased {
        /// The lease that ended, complete.
        lease: Lease,
        /// Why.
        reason: ReleaseReason,
        /// When the address may be bound again.
        cooling_until: Timestamp,
        /// The agent's idempotency key, if any.
        request_id: Option<RequestId>,
    },
    /// A cooldown ended: the address is warm again on its ENI, or free in its subnet.
    IpCooled {
        /// The cooldown that ended.
        until: Timestamp,
        /// Where the address was cooling.
        target: CoolingTarget,
    },
}

impl EventKind {
    /// The node and request id of an event that answers a deduplicated agent command.
    pub fn request(&self) -> Option<(&str, &RequestId)> {
        match self {
            Self::EniPlanned { node, request_id, .. }
            | Self::EniDetaching { node, request_id, .. }
            | Self::IpsPlanned { node, request_id, .. }
            | Self::IpsDraining { node, request_id, .. } => Some((node.as_str(), request_id.as_ref()?)),
            Self::IpBound { lease, request_id } | Self::IpReleased { lease, request_id, .. } => {
                Some((lease.node.as_str(), request_id.as_ref()?))
            }
            _ => None,
        }
    }

    /// The event's name, as the ledger and the audit API spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::PoolCreated { .. } => "PoolCreated",
            Self::SubnetConfigUpserted(_) => "SubnetConfigUpserted",
            Self::SubnetConfigDeleted { .. } => "SubnetConfigDeleted",
            Self::SgPolicyUpserted(_) => "SgPolicyUpserted",
            Self::SgPolicyDeleted { .. } => "SgPolicyDeleted",
            Self::SettingsUpdated(_) => "SettingsUpdated",
            Self::NodeRegistered { .. } => "NodeRegistered",
            Self::NodeHeartbeat { .. } => "NodeHeartbeat",
            Self::NodeExpired { .. } => "NodeExpired",
            Self::NodeRemoved { .. } => "NodeRemoved",
            Self::EniPlanned { .. } => "EniPlanned",
            Self::EniAttached { .. } => "EniAttached",
            Self::EniPlanFailed { .. } => "EniPlanFailed",
            Self::EniDetaching { .. } => "EniDetaching",
            Self::EniDetached { .. } => "EniDetached",
            Self::IpsPlanned { .. } => "IpsPlanned",
            Self::IpsAssigned { .. } => "IpsAssigned",
            Self::IpsDraining { .. } => "IpsDraining",
            Self::IpsReturned { .. } => "IpsReturned",
            Self::IpQuarantined { .. } => "IpQuarantined",
            Self::IpUnquarantined { .. } => "IpUnquarantined",
            Self::IpBound { .. } => "IpBound",
            Self::IpReleased { .. } => "IpReleased",
            Self::IpCooled { .. } => "IpCooled",
        }
    }
}
