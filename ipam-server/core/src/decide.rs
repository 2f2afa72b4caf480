//! `decide`: validates a command against the state and says what happened, as events. Pure and
//! deterministic: every replica runs it on the same state and command and gets the same answer.
//!
//! ```text
//!   Command ──▶ decide(&State, &Command) ──▶ Ok(Decision { events, reply }) ──▶ State::apply(event)…
//!                                       └──▶ Err(DomainError)   (nothing changes)
//! ```
//!
//! A retried agent command (same node, epoch and request id) finds its first reply in the node's
//! recent requests and returns it with no events. Only attempts that changed something are
//! remembered: one that changed nothing (an ADD for an attachment that is already bound, a detach
//! of an ENI already detaching) is decided again on retry, which is safe because it changed
//! nothing. Replies to commands that carry a request id
//! are built from their events by [`Reply::of_event`], the same function `apply` uses to
//! remember them, so a retry gets exactly the first reply.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

use crate::cidr::is_vpc_range;
use crate::command::AgentRef;
use crate::command::Command;
use crate::command::CommandBody;
use crate::command::EniRequest;
use crate::command::LeaseSelector;
use crate::command::NodeSpec;
use crate::command::Owner;
use crate::command::ReleaseReason;
use crate::command::SubnetConfigSpec;
use crate::error::DomainError;
use crate::error::Result;
pub use crate::event::EniPlan;
use crate::event::Event;
use crate::event::EventKind;
use crate::event::ReturnReason;
use crate::ids::EniRef;
use crate::ids::Epoch;
use crate::ids::RequestId;
use crate::ids::Timestamp;
use crate::limits;
use crate::limits::MAX_BRANCH_ENIS;
use crate::policy;
use crate::policy::PodMeta;
use crate::state::Eni;
use crate::state::EniKind;
use crate::state::EniState;
use crate::state::Lease;
use crate::state::Node;
use crate::state::NodeStatus;
use crate::state::Settings;
use crate::state::Slot;
use crate::state::State;
use crate::validate;

/// What `decide` says: the events to apply, and the reply for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Facts to fold into the state (and to keep in the ledger), in order.
    pub events: Vec<Event>,
    /// The answer for the caller.
    pub reply: Reply,
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Done (or nothing to do).
    Done,
    /// Registered with this epoch; heartbeat before the deadline.
    Registered {
        /// The agent's epoch.
        epoch: Epoch,
        /// The node's lease deadline.
        deadline: Timestamp,
    },
    /// The node's lease deadline.
    Heartbeat {
        /// Deadline.
        deadline: Timestamp,
    },
    /// An ENI plan.
    EniPlanned(EniPlan),
    /// Addresses planned on an ENI.
    IpsPlanned {
        /// The ENI.
        eni: EniRef,
        /// The addresses to assign in EC2.
        ips: Vec<Ipv4Addr>,
    },
    /// Addresses now draining.
    IpsDraining {
        /// The ENI.
        eni: EniRef,
        /// The addresses to unassign in EC2.
        ips: Vec<Ipv4Addr>,
    },
    /// The ENI is being taken out of service.
    EniDetaching {
        /// The ENI.
        eni: EniRef,
    },
    /// A binding.
    Bound(Lease),
    /// Bindings that ended.
    Released(Vec<Lease>),
    /// What a controller tick did.
    Ticked {
        /// Nodes expired.
        expired: Vec<String>,
        /// Addresses whose cooldown ended.
        cooled: usize,
    },
}

impl Reply {
    /// The reply an event implies, for events of commands that carry a request id.
    pub fn of_event(kind: &EventKind) -> Option<Reply> {
        Some(match kind {
            EventKind::EniPlanned { plan, .. } => Reply::EniPlanned(plan.clone()),
            EventKind::IpsPlanned { eni, ips, .. } => Reply::IpsPlanned {
                eni: *eni,
                ips: ips.clone(),
            },
            EventKind::IpsDraining { eni, ips, .. } => Reply::IpsDraining {
                eni: *eni,
                ips: ips.clone(),
            },
            EventKind::EniDetaching { eni, .. } => Reply::EniDetaching { eni: *eni },
            EventKind::IpBound { lease, .. } => Reply::Bound(lease.clone()),
            EventKind::IpReleased { lease, .. } => Reply::Released(vec![lease.clone()]),
            _ => return None,
        })
    }
}

/// Decides a command. See the module docs.
pub fn decide(state: &State, cmd: &Command) -> Result<Decision> {
    let mut d = Decider {
        state,
        cmd,
        at: state.command_time(cmd.at),
        events: Vec::new(),
    };
    if let Some(agent) = cmd.body.agent() {
        let node = d.agent_node(agent)?;
        if cmd.body.deduplicated()
            && let Some(reply) = cmd.request_id.as_ref().and_then(|id| node.recent.get(id))
        {
            return Ok(Decision {
                events: Vec::new(),
                reply: reply.clone(),
            });
        }
    }
    let reply = d.run()?;
    Ok(Decision {
        events: d.events,
        reply,
    })
}

impl CommandBody {
    /// The command's name, as logs and metrics spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreatePool { .. } => "CreatePool",
            Self::UpsertSubnetConfig(_) => "UpsertSubnetConfig",
            Self::DeleteSubnetConfig { .. } => "DeleteSubnetConfig",
            Self::UpsertSgPolicy(_) => "UpsertSgPolicy",
            Self::DeleteSgPolicy { .. } => "DeleteSgPolicy",
            Self::UpdateSettings(_) => "UpdateSettings",
            Self::Unquarantine { .. } => "Unquarantine",
            Self::RemoveNode { .. } => "RemoveNode",
            Self::ReleaseLease { .. } => "ReleaseLease",
            Self::RegisterNode(_) => "RegisterNode",
            Self::Heartbeat(_) => "Heartbeat",
            Self::PlanEni { .. } => "PlanEni",
            Self::PlanBranchEni { .. } => "PlanBranchEni",
            Self::ReportEniAttached { .. } => "ReportEniAttached",
            Self::ReportEniFailed { .. } => "ReportEniFailed",
            Self::PlanIps { .. } => "PlanIps",
            Self::ReportIpsAssigned { .. } => "ReportIpsAssigned",
            Self::ReportIpsFailed { .. } => "ReportIpsFailed",
            Self::DrainIps { .. } => "DrainIps",
            Self::ReportIpsUnassigned { .. } => "ReportIpsUnassigned",
            Self::PlanEniDetach { .. } => "PlanEniDetach",
            Self::ReportEniDetached { .. } => "ReportEniDetached",
            Self::Bind { .. } => "Bind",
            Self::Release { .. } => "Release",
            Self::Gc { .. } => "Gc",
            Self::Tick => "Tick",
        }
    }

    /// Whether a retry of this command (same request id) returns the first reply. These are the
    /// commands whose repetition would otherwise do something else: a second address, a second
    /// plan, a refusal of a release that did happen. The others (reports, GC, heartbeats,
    /// registration) give the same outcome when repeated, so they need no memory.
    pub fn deduplicated(&self) -> bool {
        matches!(
            self,
            Self::PlanEni { .. }
                | Self::PlanBranchEni { .. }
                | Self::PlanIps { .. }
                | Self::DrainIps { .. }
                | Self::PlanEniDetach { .. }
                | Self::Bind { .. }
                | Self::Release { .. }
        )
    }

    /// The agent a command speaks for, if it is an agent command (registration aside).
    pub fn agent(&self) -> Option<&AgentRef> {
        match self {
            Self::Heartbeat(agent)
            | Self::PlanEni { agent, .. }
            | Self::PlanBranchEni { agent, .. }
            | Self::ReportEniAttached { agent, .. }
            | Self::ReportEniFailed { agent, .. }
            | Self::PlanIps { agent, .. }
            | Self::ReportIpsAssigned { agent, .. }
            | Self::ReportIpsFailed { agent, .. }
            | Self::DrainIps { agent, .. }
            | Self::ReportIpsUnassigned { agent, .. }
            | Self::PlanEniDetach { agent, .. }
            | Self::ReportEniDetached { agent, .. }
            | Self::Bind { agent, .. }
            | Self::Release { agent, .. }
            | Self::Gc { agent, .. } => Some(agent),
            _ => None,
        }
    }
}

struct Decider<'a> {
    state: &'a State,
    cmd: &'a Command,
    /// The time the command is decided at: its stamp, or the ledger's latest time if that is
    /// later ([`State::command_time`]).
    at: Timestamp,
    events: Vec<Event>,
}

impl<'a> Decider<'a> {
    fn emit(&mut self, kind: EventKind) {
        self.events.push(Event {
            index: self.cmd.index,
            at: self.at,
            actor: self.cmd.actor.clone(),
            kind,
        });
    }

    /// Emits the event that answers the command and returns the reply it implies.
    fn answer(&mut self, kind: EventKind) -> Reply {
        let reply = Reply::of_event(&kind).unwrap_or(Reply::Done);
        self.emit(kind);
        reply
    }

    fn settings(&self) -> &'a Settings {
        &self.state.settings
    }

    fn agent_node(&self, agent: &AgentRef) -> Result<&'a Node> {
        self.state.live_agent(agent)
    }

    fn node(&self, name: &str) -> Result<&'a Node> {
        self.state
            .nodes
            .get(name)
            .ok_or_else(|| DomainError::NodeNotFound { node: name.to_owned() })
    }

    fn eni(&self, node: &'a Node, eni: EniRef) -> Result<&'a Eni> {
        node.enis.get(&eni).ok_or_else(|| DomainError::EniNotFound {
            node: node.spec.name.clone(),
            eni,
        })
    }

    fn run(&mut self) -> Result<Reply> {
        let cmd = self.cmd;
        match &cmd.body {
            CommandBody::CreatePool { cidr } => {
                if !is_vpc_range(cidr) {
                    return Err(DomainError::PoolOutsideVpcRanges { cidr: *cidr });
                }
                if self.state.pools.contains(cidr) {
                    return Ok(Reply::Done);
                }
                if let Some(other) = self.state.pools.iter().find(|p| p.overlaps(cidr)) {
                    return Err(DomainError::PoolOverlaps {
                        cidr: *cidr,
                        existing: *other,
                    });
                }
                self.emit(EventKind::PoolCreated { cidr: *cidr });
                Ok(Reply::Done)
            }
            CommandBody::UpsertSubnetConfig(spec) => self.upsert_subnet_config(spec),
            CommandBody::DeleteSubnetConfig { name } => {
                if !self.state.subnet_configs.contains_key(name) {
                    return Err(DomainError::SubnetConfigNotFound { name: name.clone() });
                }
                if let Some(node) = self.state.nodes.values().find(|n| &n.spec.subnet_config == name) {
                    return Err(DomainError::SubnetConfigInUse {
                        name: name.clone(),
                        node: node.spec.name.clone(),
                    });
                }
                self.emit(EventKind::SubnetConfigDeleted { name: name.clone() });
                Ok(Reply::Done)
            }
            CommandBody::UpsertSgPolicy(policy) => {
                policy.validate()?;
                let key = (policy.namespace.clone(), policy.name.clone());
                if self.state.sg_policies.get(&key) != Some(policy) {
                    self.emit(EventKind::SgPolicyUpserted(policy.clone()));
                }
                Ok(Reply::Done)
            }
            CommandBody::DeleteSgPolicy { namespace, name } => {
                if !self.state.sg_policies.contains_key(&(namespace.clone(), name.clone())) {
                    return Err(DomainError::SgPolicyNotFound {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    });
                }
                self.emit(EventKind::SgPolicyDeleted {
                    namespace: namespace.clone(),
                    name: name.clone(),
                });
                Ok(Reply::Done)
            }
            CommandBody::UpdateSettings(settings) => {
                validate::settings(settings)?;
                if settings != self.settings() {
                    self.emit(EventKind::SettingsUpdated(settings.clone()));
                }
                Ok(Reply::Done)
            }
            CommandBody::Unquarantine { ip } => {
                let subnet = self
                    .state
                    .subnet_of(*ip)
                    .filter(|s| s.alloc.quarantined().contains(ip))
                    .ok_or(DomainError::NotQuarantined { ip: *ip })?;
                self.emit(EventKind::IpUnquarantined {
                    subnet_id: subnet.id.clone(),
                    ip: *ip,
                });
                Ok(Reply::Done)
            }
            CommandBody::RemoveNode { node, force } => {
                let node = self.node(node)?;
                if node.status == NodeStatus::Active && !force {
                    return Err(DomainError::NodeActive {
                        node: node.spec.name.clone(),
                    });
                }
                let released = self.remove_node(node, ReleaseReason::NodeRemoved);
                Ok(Reply::Released(released))
            }
            CommandBody::ReleaseLease { node, lease } => {
                let n = self.node(node)?;
                let lease = n.leases.get(lease).ok_or_else(|| DomainError::StaleLease {
                    node: node.clone(),
                    lease: *lease,
                })?;
                Ok(self.release(lease, ReleaseReason::Operator, None))
            }
            CommandBody::RegisterNode(spec) => self.register(spec),
            CommandBody::Heartbeat(agent) => {
                let node = self.agent_node(agent)?;
                let ttl = self.settings().heartbeat_ttl_ms;
                let deadline = self.at.saturating_add(ttl);
                // Coalesce: a heartbeat only becomes an event once half the TTL has been used.
                if node.deadline >= self.at.saturating_add(ttl / 2) {
                    return Ok(Reply::Heartbeat {
                        deadline: node.deadline,
                    });
                }
                self.emit(EventKind::NodeHeartbeat {
                    node: agent.node.clone(),
                    deadline,
                });
                Ok(Reply::Heartbeat { deadline })
            }
            CommandBody::PlanEni { agent, request } => self.plan_eni(self.agent_node(agent)?, *request),
            CommandBody::PlanBranchEni { agent, security_groups } => {
                self.plan_branch(self.agent_node(agent)?, security_groups)
            }
            CommandBody::ReportEniAttached {
                agent,
                eni,
                eni_id,
                mac,
            } => {
                let node = self.agent_node(agent)?;
                let e = self.eni(node, *eni)?;
                validate::aws_id("eni", eni_id)?;
                let mac = validate::mac(mac)?;
                match e.state {
                    EniState::Attached if e.eni_id.as_deref() == Some(eni_id.as_str()) => return Ok(Reply::Done),
                    EniState::Planned => {}
                    state => {
                        return Err(DomainError::EniState {
                            eni: *eni,
                            state,
                            wanted: EniState::Planned,
                        });
                    }
                }
                self.emit(EventKind::EniAttached {
                    node: agent.node.clone(),
                    eni: *eni,
                    eni_id: eni_id.clone(),
                    mac,
                });
                Ok(Reply::Done)
            }
            CommandBody::ReportEniFailed {
                agent,
                eni,
                in_use,
                error,
            } => {
                let node = self.agent_node(agent)?;
                let e = self.eni(node, *eni)?;
                if e.state != EniState::Planned {
                    return Err(DomainError::EniState {
                        eni: *eni,
                        state: e.state,
                        wanted: EniState::Planned,
                    });
                }
                for ip in unique(in_use) {
                    if ip != e.primary_ip && !e.slots.contains_key(&ip) {
                        return Err(DomainError::AddressNotOnEni { ip, eni: *eni });
                    }
                    self.quarantine(e, ip, error);
                }
                self.emit(EventKind::EniPlanFailed {
                    node: agent.node.clone(),
                    eni: *eni,
                    error: error.clone(),
                });
                Ok(Reply::Done)
            }
            CommandBody::PlanIps { agent, eni, count } => {
                let node = self.agent_node(agent)?;
                let e = self.eni(node, *eni)?;
                self.require_attached_secondary(e)?;
                let max = usize::from(node.limits.pod_ips_per_eni());
                let wanted = e.slots.len() + usize::from(*count);
                if *count == 0 || wanted > max {
                    return Err(DomainError::IpsPerEniLimit { eni: *eni, max, wanted });
                }
                let ips = self.peek(&e.subnet_id, usize::from(*count))?;
                let kind = EventKind::IpsPlanned {
                    node: agent.node.clone(),
                    eni: *eni,
                    ips,
                    request_id: cmd.request_id.clone(),
                };
                Ok(self.answer(kind))
            }
            CommandBody::ReportIpsAssigned { agent, eni, ips } => {
                let node = self.agent_node(agent)?;
                let e = self.eni(node, *eni)?;
                self.require_attached_secondary(e)?;
                let ips = self.require_slots(e, ips, Slot::Pending)?;
                self.emit(EventKind::IpsAssigned {
                    node: agent.node.clone(),
                    eni: *eni,
                    ips,
                });
                Ok(Reply::Done)
            }
            CommandBody::ReportIpsFailed {
                agent,
                eni,
                ips,
                in_use,
                error,
            } => {
                let node = self.agent_node(agent)?;
                let e = self.eni(node, *eni)?;
                self.require_attached_secondary(e)?;
                let ips = self.require_slots(e, ips, Slot::Pending)?;
                let in_use = unique(in_use);
                if let Some(ip) = in_use.iter().find(|ip| !ips.contains(ip)) {
                    return Err(DomainError::AddressNotOnEni { ip: *ip, eni: *eni });
                }
                for ip in &in_use {
                    self.quarantine(e, *ip, error);
                }
                let returned: Vec<Ipv4Addr> = ips.into_iter().filter(|ip| !in_use.contains(ip)).collect();
                if !returned.is_empty() {
                    let reason = ReturnReason::PlanFailed;
                    self.emit(EventKind::IpsReturned {
                        node: agent.node.clone(),
                        eni: *eni,
                        ips: returned,
                        reason,
                    });
                }
                Ok(Reply::Done)
            }
            CommandBody::DrainIps { agent, eni, count } => {
                let node = self.agent_node(agent)?;
                let e = self.eni(node, *eni)?;
                self.require_attached_secondary(e)?;
                let warm: Vec<Ipv4Addr> = e
                    .slots
                    .iter()
                    .rev()
                    .filter(|(_, s)| matches!(s, Slot::Warm { .. }))
                    .map(|(ip, _)| *ip)
                    .collect();
                if *count == 0 || warm.len() < usize::from(*count) {
                    return Err(DomainError::NotEnoughWarm {
                        eni: *eni,
                        wanted: *count,
                        warm: warm.len(),
                    });
                }
                let ips = warm.into_iter().take(usize::from(*count)).collect();
                let kind = EventKind::IpsDraining {
                    node: agent.node.clone(),
                    eni: *eni,
                    ips,
                    request_id: cmd.request_id.clone(),
                };
                Ok(self.answer(kind))
            }
            CommandBody::ReportIpsUnassigned { agent, eni, ips } => {
                let node = self.agent_node(agent)?;
                let e = self.eni(node, *eni)?;
                if e.kind != EniKind::Secondary {
                    // A trunk's or branch ENI's address leaves with the ENI, never alone.
                    return Err(DomainError::NotSecondary { eni: *eni });
                }
                let ips = self.require_slots(e, ips, Slot::Draining)?;
                let reason = ReturnReason::Unassigned;
                self.emit(EventKind::IpsReturned {
                    node: agent.node.clone(),
                    eni: *eni,
                    ips,
                    reason,
                });
                Ok(Reply::Done)
            }
            CommandBody::PlanEniDetach { agent, eni } => {
                let node = self.agent_node(agent)?;
                let e = self.eni(node, *eni)?;
                if e.state == EniState::Detaching {
                    return Ok(Reply::EniDetaching { eni: *eni });
                }
                let busy = e
                    .slots
                    .values()
                    .filter(|s| matches!(s, Slot::Bound { .. } | Slot::Pending))
                    .count();
                let branches = match e.kind {
                    EniKind::Trunk => node.branch_count(),
                    _ => 0,
                };
                if busy + branches > 0 {
                    return Err(DomainError::EniBusy {
                        eni: *eni,
                        bound_or_pending: busy,
                        branches,
                    });
                }
                let event = EventKind::EniDetaching {
                    node: agent.node.clone(),
                    eni: *eni,
                    request_id: cmd.request_id.clone(),
                };
                Ok(self.answer(event))
            }
            CommandBody::ReportEniDetached { agent, eni } => {
                let node = self.agent_node(agent)?;
                let e = self.eni(node, *eni)?;
                if e.state != EniState::Detaching {
                    return Err(DomainError::EniState {
                        eni: *eni,
                        state: e.state,
                        wanted: EniState::Detaching,
                    });
                }
                self.emit(EventKind::EniDetached {
                    node: agent.node.clone(),
                    eni: *eni,
                    eni_id: e.eni_id.clone(),
                });
                Ok(Reply::Done)
            }
            CommandBody::Bind { agent, owner, pod } => self.bind(self.agent_node(agent)?, owner, pod),
            CommandBody::Release { agent, lease, reason } => {
                let node = self.agent_node(agent)?;
                let lease = match lease {
                    LeaseSelector::Id(id) => node.leases.get(id).ok_or_else(|| DomainError::StaleLease {
                        node: agent.node.clone(),
                        lease: *id,
                    })?,
                    LeaseSelector::Attachment { container_id, ifname } => node
                        .attachments
                        .get(&(container_id.clone(), ifname.clone()))
                        .and_then(|id| node.leases.get(id))
                        .ok_or_else(|| DomainError::AttachmentNotFound {
                            node: agent.node.clone(),
                            container_id: container_id.clone(),
                            ifname: ifname.clone(),
                        })?,
                };
                Ok(self.release(lease, *reason, cmd.request_id.clone()))
            }
            CommandBody::Gc {
                agent,
                valid,
                bound_before,
            } => {
                let node = self.agent_node(agent)?;
                let valid: BTreeSet<(&str, &str)> = valid.iter().map(|(c, i)| (c.as_str(), i.as_str())).collect();
                let mut released = Vec::new();
                for lease in node.leases.values().filter(|l| l.bound_at < *bound_before) {
                    if !valid.contains(&(lease.owner.container_id.as_str(), lease.owner.ifname.as_str()))
                        && let Reply::Released(mut l) = self.release(lease, ReleaseReason::Gc, None)
                    {
                        released.append(&mut l);
                    }
                }
                Ok(Reply::Released(released))
            }
            CommandBody::Tick => Ok(self.tick()),
        }
    }

    fn upsert_subnet_config(&mut self, spec: &SubnetConfigSpec) -> Result<Reply> {
        validate::object_name("ENIConfig name", &spec.name)?;
        validate::aws_id("subnet", &spec.subnet_id)?;
        validate::az(&spec.az)?;
        validate::security_groups(&spec.security_groups, 0)?;
        if !(16..=28).contains(&spec.cidr.prefix()) {
            return Err(DomainError::SubnetPrefix { cidr: spec.cidr });
        }
        if !self.state.pools.iter().any(|p| p.contains_cidr(&spec.cidr)) {
            return Err(DomainError::SubnetOutsidePools { cidr: spec.cidr });
        }
        if let Some(existing) = self.state.subnets.get(&spec.subnet_id) {
            if existing.alloc.cidr() != spec.cidr || existing.az != spec.az {
                return Err(DomainError::SubnetConflict {
                    subnet_id: spec.subnet_id.clone(),
                    known_cidr: existing.alloc.cidr(),
                    known_az: existing.az.clone(),
                });
            }
        } else if let Some(other) = self
            .state
            .subnets
            .values()
            .find(|s| s.alloc.cidr().overlaps(&spec.cidr))
        {
            return Err(DomainError::SubnetOverlaps {
                cidr: spec.cidr,
                other: other.id.clone(),
            });
        }
        if let Some(node) = self
            .state
            .nodes
            .values()
            .find(|n| n.spec.subnet_config == spec.name && n.spec.az != spec.az)
        {
            return Err(DomainError::AzMismatch {
                node: node.spec.name.clone(),
                node_az: node.spec.az.clone(),
                config: spec.name.clone(),
                config_az: spec.az.clone(),
            });
        }
        if self.state.subnet_configs.get(&spec.name) != Some(spec) {
            let mut spec = spec.clone();
            spec.security_groups = normalize_groups(&spec.security_groups);
            self.emit(EventKind::SubnetConfigUpserted(spec));
        }
        Ok(Reply::Done)
    }

    fn register(&mut self, spec: &NodeSpec) -> Result<Reply> {
        validate::object_name("node name", &spec.name)?;
        validate::aws_id("i", &spec.instance_id)?;
        validate::az(&spec.az)?;
        let limits = match spec.limits {
            Some(limits) => {
                limits.validate()?;
                limits
            }
            None => limits::lookup(&spec.instance_type).ok_or_else(|| DomainError::UnknownInstanceType {
                instance_type: spec.instance_type.clone(),
            })?,
        };
        let config =
            self.state
                .subnet_configs
                .get(&spec.subnet_config)
                .ok_or_else(|| DomainError::SubnetConfigNotFound {
                    name: spec.subnet_config.clone(),
                })?;
        if config.az != spec.az {
            return Err(DomainError::AzMismatch {
                node: spec.name.clone(),
                node_az: spec.az.clone(),
                config: config.name.clone(),
                config_az: config.az.clone(),
            });
        }
        if spec.pod_eni && !limits.trunking {
            return Err(DomainError::TrunkingUnsupported {
                instance_type: spec.instance_type.clone(),
            });
        }
        if let Some(old) = self.state.nodes.get(&spec.name) {
            // Another instance (or the same one with other limits, after a stop and a type
            // change) under this name: the old one's ENIs are gone with it.
            if old.spec.instance_id != spec.instance_id || old.limits != limits {
                self.remove_node(old, ReleaseReason::NodeRemoved);
            }
        }
        let deadline = self.at.saturating_add(self.settings().heartbeat_ttl_ms);
        self.emit(EventKind::NodeRegistered {
            spec: spec.clone(),
            limits,
            deadline,
        });
        Ok(Reply::Registered {
            epoch: self.cmd.index,
            deadline,
        })
    }

    fn remove_node(&mut self, node: &Node, reason: ReleaseReason) -> Vec<Lease> {
        let mut released = Vec::new();
        for lease in node.leases.values() {
            if let Reply::Released(mut l) = self.release(lease, reason, None) {
                released.append(&mut l);
            }
        }
        self.emit(EventKind::NodeRemoved {
            node: node.spec.name.clone(),
        });
        released
    }

    fn plan_eni(&mut self, node: &Node, request: EniRequest) -> Result<Reply> {
        let limits = node.limits;
        let (kind, ips) = match request {
            EniRequest::Secondary { ips } => {
                let max = usize::from(limits.pod_ips_per_eni());
                if usize::from(ips) > max {
                    return Err(DomainError::IpsPerEniLimit {
                        eni: self.cmd.index,
                        max,
                        wanted: usize::from(ips),
                    });
                }
                (EniKind::Secondary, usize::from(ips))
            }
            EniRequest::Trunk => {
                if !node.spec.pod_eni {
                    return Err(DomainError::PodEniDisabled {
                        node: node.spec.name.clone(),
                    });
                }
                if node.trunk().is_some() {
                    return Err(DomainError::TrunkExists {
                        node: node.spec.name.clone(),
                    });
                }
                (EniKind::Trunk, 0)
            }
        };
        // With security groups for pods, one device slot stays free for the trunk.
        let reserved = usize::from(kind == EniKind::Secondary && node.spec.pod_eni && node.trunk().is_none());
        if node.attached_interfaces() + 1 + reserved > usize::from(limits.max_enis) {
            return Err(DomainError::EniLimit {
                node: node.spec.name.clone(),
                max_enis: limits.max_enis,
                reserved_for_trunk: reserved == 1,
            });
        }
        let used: BTreeSet<u8> = node.enis.values().filter_map(|e| e.device_index).collect();
        let device_index = (1..limits.max_enis).find(|i| !used.contains(i));
        let config = self.config_of(node)?;
        let mut addresses = self.peek(&config.subnet_id, 1 + ips)?;
        let primary_ip = addresses.remove(0);
        let plan = EniPlan {
            eni: self.cmd.index,
            kind,
            device_index,
            subnet_id: config.subnet_id.clone(),
            security_groups: config.security_groups.clone(),
            primary_ip,
            ips: addresses,
            token: self.token(),
        };
        let kind = EventKind::EniPlanned {
            node: node.spec.name.clone(),
            plan,
            request_id: self.cmd.request_id.clone(),
        };
        Ok(self.answer(kind))
    }

    fn plan_branch(&mut self, node: &Node, security_groups: &[String]) -> Result<Reply> {
        if !node.spec.pod_eni {
            return Err(DomainError::PodEniDisabled {
                node: node.spec.name.clone(),
            });
        }
        validate::security_groups(security_groups, 1)?;
        let groups = normalize_groups(security_groups);
        let trunk = node
            .trunk()
            .filter(|t| t.state == EniState::Attached)
            .ok_or_else(|| DomainError::NoTrunk {
                node: node.spec.name.clone(),
            })?;
        let max = node.limits.branch_enis.min(MAX_BRANCH_ENIS);
        if node.branch_count() >= usize::from(max) {
            return Err(DomainError::BranchLimit {
                node: node.spec.name.clone(),
                max,
            });
        }
        let used: BTreeSet<u16> = node.vlans().collect();
        let vlan = (1..=max)
            .find(|v| !used.contains(v))
            .ok_or_else(|| DomainError::BranchLimit {
                node: node.spec.name.clone(),
                max,
            })?;
        let ip = self.peek(&trunk.subnet_id, 1)?.remove(0);
        let plan = EniPlan {
            eni: self.cmd.index,
            kind: EniKind::Branch {
                vlan,
                trunk: trunk.eni_ref,
            },
            device_index: None,
            subnet_id: trunk.subnet_id.clone(),
            security_groups: groups,
            primary_ip: ip,
            ips: Vec::new(),
            token: self.token(),
        };
        let kind = EventKind::EniPlanned {
            node: node.spec.name.clone(),
            plan,
            request_id: self.cmd.request_id.clone(),
        };
        Ok(self.answer(kind))
    }

    fn bind(&mut self, node: &Node, owner: &Owner, pod: &PodMeta) -> Result<Reply> {
        validate::owner(owner, pod)?;
        let attachment = (owner.container_id.clone(), owner.ifname.clone());
        if let Some(lease) = node.attachments.get(&attachment).and_then(|id| node.leases.get(id)) {
            // A repeated ADD for the same attachment gets the same address.
            if lease.owner == *owner {
                return Ok(Reply::Bound(lease.clone()));
            }
            return Err(DomainError::AttachmentInUse {
                container_id: owner.container_id.clone(),
                ifname: owner.ifname.clone(),
                holder: format!("{}/{} ({})", lease.owner.namespace, lease.owner.name, lease.owner.uid),
            });
        }
        let groups = if node.spec.pod_eni {
            let ns = &pod.namespace;
            let in_ns = self
                .state
                .sg_policies
                .range((ns.clone(), String::new())..)
                .take_while(|((n, _), _)| n == ns);
            policy::security_groups_for(in_ns.map(|(_, p)| p), pod)?
        } else {
            Vec::new()
        };
        let (eni, ip, vlan, security_groups) =
            if groups.is_empty() {
                let &(_, ip, eni) = node.warm.first().ok_or_else(|| DomainError::NoWarmAddress {
                    node: node.spec.name.clone(),
                })?;
                let e = self.eni(node, eni)?;
                (e, ip, None, e.security_groups.clone())
            } else {
                let groups = normalize_groups(&groups);
                let &(_, eni) = node.warm_branches.get(&groups).and_then(|s| s.first()).ok_or_else(|| {
                    DomainError::NoWarmBranch {
                        node: node.spec.name.clone(),
                        security_groups: groups.clone(),
                    }
                })?;
                let e = self.eni(node, eni)?;
                let vlan = match e.kind {
                    EniKind::Branch { vlan, .. } => Some(vlan),
                    _ => None,
                };
                (e, e.primary_ip, vlan, groups)
            };
        let lease = Lease {
            id: self.cmd.index,
            ip,
            node: node.spec.name.clone(),
            instance_id: node.spec.instance_id.clone(),
            eni: eni.eni_ref,
            eni_id: eni.eni_id.clone().unwrap_or_default(),
            vlan,
            security_groups,
            owner: owner.clone(),
            bound_at: self.at,
        };
        Ok(self.answer(EventKind::IpBound {
            lease,
            request_id: self.cmd.request_id.clone(),
        }))
    }

    fn release(&mut self, lease: &Lease, reason: ReleaseReason, request_id: Option<RequestId>) -> Reply {
        let cooldown = match lease.vlan {
            Some(_) => self.settings().branch_cooldown_ms,
            None => self.settings().ip_cooldown_ms,
        };
        let cooling_until = self.at.saturating_add(cooldown);
        self.answer(EventKind::IpReleased {
            lease: lease.clone(),
            reason,
            cooling_until,
            request_id,
        })
    }

    fn tick(&mut self) -> Reply {
        let now = self.at;
        let mut expired = Vec::new();
        let due = self.state.deadlines.iter().take_while(|(deadline, _)| *deadline <= now);
        for node in due.filter_map(|(_, name)| self.state.nodes.get(name)) {
            self.emit(EventKind::NodeExpired {
                node: node.spec.name.clone(),
            });
            for lease in node.leases.values() {
                self.release(lease, ReleaseReason::Expired, None);
            }
            expired.push(node.spec.name.clone());
        }
        let mut cooled = 0;
        for (until, target) in self.state.cooling.iter().take_while(|(until, _)| *until <= now) {
            self.emit(EventKind::IpCooled {
                until: *until,
                target: target.clone(),
            });
            cooled += 1;
        }
        Reply::Ticked { expired, cooled }
    }

    fn quarantine(&mut self, eni: &Eni, ip: Ipv4Addr, error: &str) {
        self.emit(EventKind::IpQuarantined {
            subnet_id: eni.subnet_id.clone(),
            ip,
            node: eni.node.clone(),
            eni: eni.eni_ref,
            error: error.to_owned(),
        });
    }

    fn require_attached_secondary(&self, e: &Eni) -> Result<()> {
        if e.kind != EniKind::Secondary {
            return Err(DomainError::NotSecondary { eni: e.eni_ref });
        }
        if e.state != EniState::Attached {
            return Err(DomainError::EniState {
                eni: e.eni_ref,
                state: e.state,
                wanted: EniState::Attached,
            });
        }
        Ok(())
    }

    /// Checks that every address is on the ENI in the given state; returns them sorted, once each.
    fn require_slots(&self, e: &Eni, ips: &[Ipv4Addr], wanted: Slot) -> Result<Vec<Ipv4Addr>> {
        let ips = unique(ips);
        if ips.is_empty() {
            return Err(DomainError::NoAddresses { eni: e.eni_ref });
        }
        for ip in &ips {
            match e.slots.get(ip) {
                Some(slot) if *slot == wanted => {}
                Some(slot) => {
                    return Err(DomainError::AddressState {
                        ip: *ip,
                        state: *slot,
                        wanted,
                    });
                }
                None => {
                    return Err(DomainError::AddressNotOnEni {
                        ip: *ip,
                        eni: e.eni_ref,
                    });
                }
            }
        }
        Ok(ips)
    }

    fn config_of(&self, node: &Node) -> Result<&'a SubnetConfigSpec> {
        self.state
            .subnet_configs
            .get(&node.spec.subnet_config)
            .ok_or_else(|| DomainError::SubnetConfigNotFound {
                name: node.spec.subnet_config.clone(),
            })
    }

    fn peek(&self, subnet_id: &str, n: usize) -> Result<Vec<Ipv4Addr>> {
        let subnet = self
            .state
            .subnets
            .get(subnet_id)
            .ok_or_else(|| DomainError::SubnetNotFound {
                subnet_id: subnet_id.to_owned(),
            })?;
        subnet.alloc.peek(n).ok_or_else(|| DomainError::SubnetExhausted {
            subnet_id: subnet_id.to_owned(),
            wanted: n,
            available: subnet.alloc.available(),
        })
    }

    fn token(&self) -> String {
        format!("{}-{}", self.settings().token_prefix, self.cmd.index)
    }
}

fn unique(ips: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    ips.iter().copied().collect::<BTreeSet<_>>().into_iter().collect()
}

/// Security groups as a set: sorted, each once. Branch ENIs are pooled by this exact set.
pub fn normalize_groups(groups: &[String]) -> Vec<String> {
    groups.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect()
}
