//! Events: what happened. The state is a fold over them (`State::apply`), and the ledger keeps
//! them forever (or as long as retention says), so each event carries everything an auditor
//! needs to read it alone: the full lease on bind and release, the addresses of an ENI plan.

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

use crate::cidr::Ipv4Cidr;
use crate::command::NodeSpec;
use crate::command::Owner;
use crate::command::ReleaseReason;
use crate::command::SubnetConfigSpec;
use crate::ids::Actor;
use crate::ids::EniRef;
use crate::ids::LeaseId;
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

/// What an event touches: the keys the ledger finds it by (an address, a pod, a node, an ENI, a
/// security group) and the cause an auditor reads. One function, so that the audit API, the
/// ledger's indexes and the tests that replay events agree on what "the history of X" means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touches<'a> {
    /// The addresses.
    pub ips: Vec<Ipv4Addr>,
    /// The node.
    pub node: Option<&'a str>,
    /// The pod (namespace, name, uid) and its attachment.
    pub owner: Option<&'a Owner>,
    /// The server's handle of the ENI.
    pub eni: Option<EniRef>,
    /// EC2's id of the ENI.
    pub eni_id: Option<&'a str>,
    /// The lease.
    pub lease_id: Option<LeaseId>,
    /// The security groups.
    pub security_groups: &'a [String],
    /// Why it happened, in snake_case: a release's reason, or the kind of change.
    pub cause: &'static str,
}

impl ReleaseReason {
    /// The reason in snake_case, as the audit API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CniDel => "cni_del",
            Self::Gc => "gc",
            Self::Expired => "expired",
            Self::Operator => "operator",
            Self::NodeRemoved => "node_removed",
            Self::Reconcile => "reconcile",
        }
    }
}

impl ReturnReason {
    /// The reason in snake_case, as the audit API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlanFailed => "plan_failed",
            Self::Unassigned => "unassigned",
            Self::EniDeleted => "eni_deleted",
            Self::NodeRemoved => "node_removed",
        }
    }
}

impl EventKind {
    /// The keys this event touches and its cause.
    pub fn touches(&self) -> Touches<'_> {
        let mut t = Touches::default();
        match self {
            Self::PoolCreated { .. } => t.cause = "create_pool",
            Self::SubnetConfigUpserted(spec) => {
                t.security_groups = &spec.security_groups;
                t.cause = "upsert_subnet_config";
            }
            Self::SubnetConfigDeleted { .. } => t.cause = "delete_subnet_config",
            Self::SgPolicyUpserted(policy) => {
                t.security_groups = &policy.security_groups;
                t.cause = "upsert_sg_policy";
            }
            Self::SgPolicyDeleted { .. } => t.cause = "delete_sg_policy",
            Self::SettingsUpdated(_) => t.cause = "update_settings",
            Self::NodeRegistered { spec, .. } => {
                t.node = Some(&spec.name);
                t.cause = "register_node";
            }
            Self::NodeHeartbeat { node, .. } => {
                t.node = Some(node);
                t.cause = "heartbeat";
            }
            Self::NodeExpired { node } => {
                t.node = Some(node);
                t.cause = "expired";
            }
            Self::NodeRemoved { node } => {
                t.node = Some(node);
                t.cause = "remove_node";
            }
            Self::EniPlanned { node, plan, .. } => {
                t.node = Some(node);
                t.eni = Some(plan.eni);
                t.ips = std::iter::once(plan.primary_ip)
                    .chain(plan.ips.iter().copied())
                    .collect();
                t.security_groups = &plan.security_groups;
                t.cause = "plan_eni";
            }
            Self::EniAttached { node, eni, eni_id, .. } => {
                t.node = Some(node);
                t.eni = Some(*eni);
                t.eni_id = Some(eni_id);
                t.cause = "report_eni_attached";
            }
            Self::EniPlanFailed { node, eni, .. } => {
                t.node = Some(node);
                t.eni = Some(*eni);
                t.cause = "report_eni_failed";
            }
            Self::EniDetaching { node, eni, .. } => {
                t.node = Some(node);
                t.eni = Some(*eni);
                t.cause = "plan_eni_detach";
            }
            Self::EniDetached { node, eni, eni_id } => {
                t.node = Some(node);
                t.eni = Some(*eni);
                t.eni_id = eni_id.as_deref();
                t.cause = "report_eni_detached";
            }
            Self::IpsPlanned { node, eni, ips, .. } => {
                (t.node, t.eni, t.ips, t.cause) = (Some(node.as_str()), Some(*eni), ips.clone(), "plan_ips");
            }
            Self::IpsAssigned { node, eni, ips } => {
                (t.node, t.eni, t.ips, t.cause) = (Some(node.as_str()), Some(*eni), ips.clone(), "report_ips_assigned");
            }
            Self::IpsDraining { node, eni, ips, .. } => {
                (t.node, t.eni, t.ips, t.cause) = (Some(node.as_str()), Some(*eni), ips.clone(), "drain_ips");
            }
            Self::IpsReturned { node, eni, ips, reason } => {
                (t.node, t.eni, t.ips, t.cause) = (Some(node.as_str()), Some(*eni), ips.clone(), reason.as_str());
            }
            Self::IpQuarantined { ip, node, eni, .. } => {
                (t.node, t.eni, t.ips, t.cause) = (Some(node.as_str()), Some(*eni), vec![*ip], "quarantine");
            }
            Self::IpUnquarantined { ip, .. } => {
                t.ips = vec![*ip];
                t.cause = "unquarantine";
            }
            Self::IpBound { lease, .. } => {
                lease_touches(&mut t, lease);
                t.cause = "bind";
            }
            Self::IpReleased { lease, reason, .. } => {
                lease_touches(&mut t, lease);
                t.cause = reason.as_str();
            }
            Self::IpCooled { target, .. } => {
                t.cause = "cooldown";
                match target {
                    CoolingTarget::Slot { node, eni, ip } => {
                        (t.node, t.eni, t.ips) = (Some(node.as_str()), Some(*eni), vec![*ip]);
                    }
                    CoolingTarget::Subnet { ip, .. } => t.ips = vec![*ip],
                }
            }
        }
        t
    }
}

fn lease_touches<'a>(t: &mut Touches<'a>, lease: &'a Lease) {
    t.ips = vec![lease.ip];
    t.node = Some(&lease.node);
    t.owner = Some(&lease.owner);
    t.eni = Some(lease.eni);
    t.eni_id = Some(&lease.eni_id);
    t.lease_id = Some(lease.id);
    t.security_groups = &lease.security_groups;
}

#[cfg(test)]
mod touches_tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            id: 42,
            ip: Ipv4Addr::new(100, 64, 3, 48),
            node: "node-a".to_owned(),
            instance_id: "i-0abc".to_owned(),
            eni: 7,
            eni_id: "eni-0abc".to_owned(),
            vlan: None,
            security_groups: vec!["sg-1".to_owned()],
            owner: Owner {
                namespace: "default".to_owned(),
                name: "web-0".to_owned(),
                uid: "uid-1".to_owned(),
                container_id: "c1".to_owned(),
                ifname: "eth0".to_owned(),
            },
            bound_at: 1,
        }
    }

    #[test]
    fn a_binding_and_its_release_touch_the_address_pod_node_eni_and_lease() {
        let bound = EventKind::IpBound {
            lease: lease(),
            request_id: None,
        };
        let t = bound.touches();
        assert_eq!(t.ips, vec![Ipv4Addr::new(100, 64, 3, 48)]);
        assert_eq!(t.node, Some("node-a"));
        assert_eq!(t.owner.map(|o| o.name.as_str()), Some("web-0"));
        assert_eq!(
            (t.eni, t.eni_id, t.lease_id, t.cause),
            (Some(7), Some("eni-0abc"), Some(42), "bind")
        );
        assert_eq!(t.security_groups, ["sg-1".to_owned()]);
        let released = EventKind::IpReleased {
            lease: lease(),
            reason: ReleaseReason::Expired,
            cooling_until: 0,
            request_id: None,
        };
        assert_eq!(released.touches().cause, "expired");
        let cooled = EventKind::IpCooled {
            until: 5,
            target: CoolingTarget::Subnet {
                subnet_id: "subnet-1".to_owned(),
                ip: Ipv4Addr::new(100, 64, 3, 48),
            },
        };
        assert_eq!(cooled.touches().ips, vec![Ipv4Addr::new(100, 64, 3, 48)]);
        assert_eq!(cooled.touches().node, None);
    }
}
