//! The state: a fold over the events. `State::apply` never fails and never decides anything;
//! every check happened in `decide` before the event existed. Replaying the ledger from the
//! start gives the same state as applying the events live.
//!
//! ```text
//!   State ─┬─ pools, subnet configs (ENIConfig), SG policies, settings
//!          ├─ subnets ── SubnetAllocator (free list + bitmap per AWS subnet)
//!          ├─ nodes ──── Node ─┬─ enis ──── Eni ── slots: ip → Pending|Warm|Bound|Draining|Cooling
//!          │                   ├─ leases (by lease id) + attachments (container id, ifname)
//!          │                   ├─ warm addresses, oldest first; warm branch ENIs by SG set
//!          │                   └─ recent request ids → first reply (retries)
//!          ├─ cooling ── (until, where) for every address in its cooldown
//!          └─ deadlines ─ (deadline, node) for every active node
//! ```

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

use crate::allocator::SubnetAllocator;
use crate::cidr::Ipv4Cidr;
use crate::command::AgentRef;
use crate::command::NodeSpec;
use crate::command::Owner;
use crate::command::SubnetConfigSpec;
use crate::decide::Reply;
use crate::detmap::DetMap;
use crate::event::Event;
use crate::event::EventKind;
use crate::ids::EniRef;
use crate::ids::Epoch;
use crate::ids::LeaseId;
use crate::ids::LogIndex;
use crate::ids::RequestId;
use crate::ids::Timestamp;
use crate::limits::InstanceLimits;
use crate::policy::SgPolicy;

/// Cluster-wide settings. Part of the replicated state so that every replica decides alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A node whose agent has not heartbeated for this long is expired (default 30 s).
    /// Heartbeats are coalesced: one is recorded only once half the TTL is used, so a heartbeat
    /// at time t keeps the node alive until at least t + TTL/2. Agents heartbeat every TTL/3 or
    /// more often.
    pub heartbeat_ttl_ms: u64,
    /// A released shared-ENI address is not bound again before this (`IP_COOLDOWN_PERIOD`,
    /// default 30 s).
    pub ip_cooldown_ms: u64,
    /// A released branch ENI is not bound again before this (default 60 s, at least 30 s, as AWS).
    pub branch_cooldown_ms: u64,
    /// Prefix of EC2 ClientTokens: `<prefix>-<eni ref>`. Give each cluster its own, so that a
    /// rebuilt cluster whose log indexes start again cannot collide with an old token.
    pub token_prefix: String,
    /// Replies remembered per node for retried request ids.
    pub recent_requests_per_node: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_ttl_ms: 30_000,
            ip_cooldown_ms: 30_000,
            branch_cooldown_ms: 60_000,
            token_prefix: "ipam".to_owned(),
            recent_requests_per_node: 128,
        }
    }
}

/// A node's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Heartbeating; its agent may change its leases.
    Active,
    /// Its lease ran out; its bindings were released; it must register again.
    Expired,
}

/// The kind of an ENI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EniKind {
    /// A secondary ENI whose secondary addresses serve pods.
    Secondary,
    /// The trunk ENI branch ENIs ride on (security groups for pods).
    Trunk,
    /// A branch ENI: a VLAN on the trunk, one pod, its own security groups.
    Branch {
        /// The VLAN id on the trunk (1..=120, capped by the instance's branch limit).
        vlan: u16,
        /// The trunk it belongs to.
        trunk: EniRef,
    },
}

/// Where an ENI is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EniState {
    /// The server chose its addresses; EC2 has not confirmed it yet.
    Planned,
    /// EC2 created and attached it.
    Attached,
    /// Being detached and deleted; nothing new goes on it.
    Detaching,
}

/// What one address on an ENI is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    /// Planned; EC2 has not assigned it yet.
    Pending,
    /// Assigned in EC2, free for a pod. `since` orders the warm pool (oldest first).
    Warm {
        /// Log index at which it became warm.
        since: LogIndex,
    },
    /// Bound to a pod.
    Bound {
        /// The lease.
        lease: LeaseId,
    },
    /// Being unassigned in EC2.
    Draining,
    /// Released; may not be bound before `until`.
    Cooling {
        /// End of the cooldown.
        until: Timestamp,
    },
}

/// One binding of an address to a pod, with everything an auditor asks about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease id (log index of the bind).
    pub id: LeaseId,
    /// The address.
    pub ip: Ipv4Addr,
    /// The node.
    pub node: String,
    /// The node's EC2 instance.
    pub instance_id: String,
    /// The server's handle of the ENI carrying it.
    pub eni: EniRef,
    /// EC2's id of that ENI.
    pub eni_id: String,
    /// The VLAN id when the ENI is a branch ENI.
    pub vlan: Option<u16>,
    /// The security groups the pod's traffic carries.
    pub security_groups: Vec<String>,
    /// Who holds it.
    pub owner: Owner,
    /// When it was bound.
    pub bound_at: Timestamp,
}

/// An ENI as the cluster tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eni {
    /// The server's handle.
    pub eni_ref: EniRef,
    /// The node it belongs to.
    pub node: String,
    /// EC2's id once attached.
    pub eni_id: Option<String>,
    /// EC2's MAC once attached.
    pub mac: Option<String>,
    /// Secondary, trunk or branch.
    pub kind: EniKind,
    /// Device index (none for branch ENIs).
    pub device_index: Option<u8>,
    /// EC2 subnet id.
    pub subnet_id: String,
    /// Security groups.
    pub security_groups: Vec<String>,
    /// The ENI's own primary address (for a branch ENI, also its one slot: the pod's address).
    pub primary_ip: Ipv4Addr,
    /// EC2 ClientToken of its creation.
    pub token: String,
    /// Life-cycle state.
    pub state: EniState,
    /// Pod addresses on it.
    pub slots: BTreeMap<Ipv4Addr, Slot>,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// What its agent said at registration.
    pub spec: NodeSpec,
    /// The limits in force.
    pub limits: InstanceLimits,
    /// Generation of its agent (log index of the latest registration).
    pub epoch: Epoch,
    /// Active or expired.
    pub status: NodeStatus,
    /// When its lease runs out.
    pub deadline: Timestamp,
    /// Its ENIs (not the primary ENI, which carries no pods).
    pub enis: BTreeMap<EniRef, Eni>,
    /// Live bindings.
    pub leases: DetMap<LeaseId, Lease>,
    /// (container id, ifname) → lease, for DEL without a lease id and for GC.
    pub attachments: DetMap<(String, String), LeaseId>,
    /// Warm shared addresses, oldest first: (since, ip, eni).
    pub warm: BTreeSet<(LogIndex, Ipv4Addr, EniRef)>,
    /// Warm branch ENIs by their (sorted) security groups, oldest first.
    pub warm_branches: BTreeMap<Vec<String>, BTreeSet<(LogIndex, EniRef)>>,
    /// Replies of recent requests, for retries.
    pub recent: RecentRequests,
}

impl Node {
    /// ENIs occupying a device slot, the primary ENI included.
    pub fn attached_interfaces(&self) -> usize {
        1 + self.enis.values().filter(|e| e.device_index.is_some()).count()
    }

    /// The trunk ENI, if planned.
    pub fn trunk(&self) -> Option<&Eni> {
        self.enis.values().find(|e| e.kind == EniKind::Trunk)
    }

    /// VLAN ids of its branch ENIs, in any state.
    pub fn vlans(&self) -> impl Iterator<Item = u16> + '_ {
        self.enis.values().filter_map(|e| match e.kind {
            EniKind::Branch { vlan, .. } => Some(vlan),
            _ => None,
        })
    }

    /// Branch ENIs in any state.
    pub fn branch_count(&self) -> usize {
        self.vlans().count()
    }
}

/// The last replies of a node's requests, bounded (oldest forgotten first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentRequests {
    order: VecDeque<RequestId>,
    replies: BTreeMap<RequestId, Reply>,
}

impl RecentRequests {
    /// The first reply to `id`, if remembered.
    pub fn get(&self, id: &RequestId) -> Option<&Reply> {
        self.replies.get(id)
    }

    fn record(&mut self, id: RequestId, reply: Reply, cap: usize) {
        if self.replies.insert(id.clone(), reply).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > cap.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.replies.remove(&old);
            }
        }
    }
}

/// An AWS subnet the cluster allocates from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// EC2 subnet id.
    pub id: String,
    /// Availability zone.
    pub az: String,
    /// Its addresses.
    pub alloc: SubnetAllocator,
}

/// Where a cooling address returns to when its cooldown ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CoolingTarget {
    /// Warm again on the same ENI.
    Slot {
        /// The node.
        node: String,
        /// The ENI.
        eni: EniRef,
        /// The address.
        ip: Ipv4Addr,
    },
    /// Free in its subnet (its ENI or node went away while it cooled).
    Subnet {
        /// The subnet.
        subnet_id: String,
        /// The address.
        ip: Ipv4Addr,
    },
}

/// The whole replicated state. It starts as `State::default()` on every replica; everything else,
/// settings included, arrives as events, so that a replay and every replica agree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Cluster-wide settings.
    pub settings: Settings,
    /// Secondary CIDRs.
    pub pools: BTreeSet<Ipv4Cidr>,
    /// ENIConfigs by name.
    pub subnet_configs: BTreeMap<String, SubnetConfigSpec>,
    /// Subnets by EC2 id.
    pub subnets: BTreeMap<String, Subnet>,
    /// SecurityGroupPolicies by (namespace, name).
    pub sg_policies: BTreeMap<(String, String), SgPolicy>,
    /// Nodes by name.
    pub nodes: DetMap<String, Node>,
    /// Every address in its cooldown, soonest first.
    pub cooling: BTreeSet<(Timestamp, CoolingTarget)>,
    /// Active nodes by heartbeat deadline, soonest first, so a tick finds the expired ones
    /// without looking at the others.
    pub deadlines: BTreeSet<(Timestamp, String)>,
    /// Log index of the last applied event.
    pub last_index: LogIndex,
    /// The latest time any applied event carries. Ledger time never goes backwards: a command
    /// stamped earlier (a new leader whose clock is behind the old one's) is decided at this
    /// time instead ([`State::command_time`]), so "the event at time T" is a seek, not a scan.
    #[serde(default)]
    pub last_at: Timestamp,
}

impl State {
    /// The time a command stamped `stamp` is decided at: the stamp, unless an applied event is
    /// later (the stamping leader's clock is behind its predecessor's). Keeps ledger time
    /// monotonic, which the ledger's time index relies on.
    pub fn command_time(&self, stamp: Timestamp) -> Timestamp {
        stamp.max(self.last_at)
    }

    /// The node `agent` speaks for, if the agent is its current, live registration: the check
    /// every agent command passes first (unknown node, stale epoch, expired node are refused).
    ///
    /// # Errors
    ///
    /// [`DomainError::NodeNotFound`], [`DomainError::StaleEpoch`], [`DomainError::NodeExpired`].
    pub fn live_agent(&self, agent: &AgentRef) -> crate::Result<&Node> {
        let node = self
            .nodes
            .get(&agent.node)
            .ok_or_else(|| crate::DomainError::NodeNotFound {
                node: agent.node.clone(),
            })?;
        if node.epoch != agent.epoch {
            return Err(crate::DomainError::StaleEpoch {
                node: agent.node.clone(),
                given: agent.epoch,
                current: node.epoch,
            });
        }
        if node.status == NodeStatus::Expired {
            return Err(crate::DomainError::NodeExpired {
                node: agent.node.clone(),
            });
        }
        Ok(node)
    }

    /// The subnet that contains `ip`, if any.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> Option<&Subnet> {
        self.subnets.values().find(|s| s.alloc.cidr().contains(ip))
    }

    /// Folds one event in. Never fails: `decide` checked everything before the event existed.
    pub fn apply(&mut self, event: &Event) {
        self.last_index = self.last_index.max(event.index);
        self.last_at = self.last_at.max(event.at);
        if let Some((node, id)) = event.kind.request()
            && let Some(reply) = Reply::of_event(&event.kind)
            && let Some(n) = self.nodes.get_mut(node)
        {
            n.recent
                .record(id.clone(), reply, usize::from(self.settings.recent_requests_per_node));
        }
        match &event.kind {
            EventKind::PoolCreated { cidr } => {
                self.pools.insert(*cidr);
            }
            EventKind::SubnetConfigUpserted(spec) => {
                self.subnets.entry(spec.subnet_id.clone()).or_insert_with(|| Subnet {
                    id: spec.subnet_id.clone(),
                    az: spec.az.clone(),
                    alloc: SubnetAllocator::new(spec.cidr),
                });
                self.subnet_configs.insert(spec.name.clone(), spec.clone());
            }
            EventKind::SubnetConfigDeleted { name } => {
                self.subnet_configs.remove(name);
            }
            EventKind::SgPolicyUpserted(policy) => {
                self.sg_policies
                    .insert((policy.namespace.clone(), policy.name.clone()), policy.clone());
            }
            EventKind::SgPolicyDeleted { namespace, name } => {
                self.sg_policies.remove(&(namespace.clone(), name.clone()));
            }
            EventKind::SettingsUpdated(settings) => self.settings = settings.clone(),
            EventKind::NodeRegistered { spec, limits, deadline } => {
                let node = self.nodes.entry(spec.name.clone()).or_insert_with(|| Node {
                    spec: spec.clone(),
                    limits: *limits,
                    epoch: event.index,
                    status: NodeStatus::Active,
                    deadline: *deadline,
                    enis: BTreeMap::new(),
                    leases: DetMap::new(),
                    attachments: DetMap::new(),
                    warm: BTreeSet::new(),
                    warm_branches: BTreeMap::new(),
                    recent: RecentRequests::default(),
                });
                self.deadlines.remove(&(node.deadline, spec.name.clone()));
                node.spec = spec.clone();
                node.limits = *limits;
                node.epoch = event.index;
                node.status = NodeStatus::Active;
                node.deadline = *deadline;
                self.deadlines.insert((*deadline, spec.name.clone()));
            }
            EventKind::NodeHeartbeat { node, deadline } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    if n.status == NodeStatus::Active {
                        self.deadlines.remove(&(n.deadline, node.clone()));
                        self.deadlines.insert((*deadline, node.clone()));
                    }
                    n.deadline = *deadline;
                }
            }
            EventKind::NodeExpired { node } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.status = NodeStatus::Expired;
                    self.deadlines.remove(&(n.deadline, node.clone()));
                }
            }
            EventKind::NodeRemoved { node } => {
                if let Some(n) = self.nodes.remove(node) {
                    self.deadlines.remove(&(n.deadline, node.clone()));
                    for eni in n.enis.into_values() {
                        self.retire_eni(eni);
                    }
                }
            }
            EventKind::EniPlanned { node, plan, .. } => {
                if let Some(subnet) = self.subnets.get_mut(&plan.subnet_id) {
                    for ip in std::iter::once(&plan.primary_ip).chain(&plan.ips) {
                        subnet.alloc.take(*ip);
                    }
                }
                let Some(n) = self.nodes.get_mut(node) else { return };
                let mut slots: BTreeMap<Ipv4Addr, Slot> = plan.ips.iter().map(|ip| (*ip, Slot::Pending)).collect();
                if matches!(plan.kind, EniKind::Branch { .. }) {
                    slots.insert(plan.primary_ip, Slot::Pending);
                }
                n.enis.insert(
                    plan.eni,
                    Eni {
                        eni_ref: plan.eni,
                        node: node.clone(),
                        eni_id: None,
                        mac: None,
                        kind: plan.kind,
                        device_index: plan.device_index,
                        subnet_id: plan.subnet_id.clone(),
                        security_groups: plan.security_groups.clone(),
                        primary_ip: plan.primary_ip,
                        token: plan.token.clone(),
                        state: EniState::Planned,
                        slots,
                    },
                );
            }
            EventKind::EniAttached { node, eni, eni_id, mac } => {
                let Some(n) = self.nodes.get_mut(node) else { return };
                let Some(e) = n.enis.get_mut(eni) else { return };
                e.eni_id = Some(eni_id.clone());
                e.mac = Some(mac.clone());
                e.state = EniState::Attached;
                let pending: Vec<Ipv4Addr> = e
                    .slots
                    .iter()
                    .filter(|(_, s)| **s == Slot::Pending)
                    .map(|(ip, _)| *ip)
                    .collect();
                for ip in pending {
                    make_warm(n, *eni, ip, event.index);
                }
            }
            EventKind::EniPlanFailed { node, eni, .. } | EventKind::EniDetached { node, eni, .. } => {
                if let Some(e) = self.nodes.get_mut(node).and_then(|n| remove_eni(n, *eni)) {
                    self.retire_eni(e);
                }
            }
            EventKind::EniDetaching { node, eni, .. } => {
                let Some(n) = self.nodes.get_mut(node) else { return };
                let Some(e) = n.enis.get_mut(eni) else { return };
                e.state = EniState::Detaching;
                let warm: Vec<Ipv4Addr> = e
                    .slots
                    .iter()
                    .filter(|(_, s)| matches!(s, Slot::Warm { .. }))
                    .map(|(ip, _)| *ip)
                    .collect();
                for ip in warm {
                    set_slot(n, *eni, ip, Slot::Draining);
                }
            }
            EventKind::IpsPlanned { node, eni, ips, .. } => {
                let Some(n) = self.nodes.get_mut(node) else { return };
                let Some(e) = n.enis.get_mut(eni) else { return };
                if let Some(subnet) = self.subnets.get_mut(&e.subnet_id) {
                    for ip in ips {
                        subnet.alloc.take(*ip);
                    }
                }
                for ip in ips {
                    e.slots.insert(*ip, Slot::Pending);
                }
            }
            EventKind::IpsAssigned { node, eni, ips } => {
                let Some(n) = self.nodes.get_mut(node) else { return };
                for ip in ips {
                    make_warm(n, *eni, *ip, event.index);
                }
            }
            EventKind::IpsDraining { node, eni, ips, .. } => {
                let Some(n) = self.nodes.get_mut(node) else { return };
                for ip in ips {
                    set_slot(n, *eni, *ip, Slot::Draining);
                }
            }
            EventKind::IpsReturned { node, eni, ips, .. } => {
                let Some(n) = self.nodes.get_mut(node) else { return };
                let Some(e) = n.enis.get_mut(eni) else { return };
                for ip in ips {
                    e.slots.remove(ip);
                }
                if let Some(subnet) = self.subnets.get_mut(&e.subnet_id) {
                    for ip in ips {
                        subnet.alloc.release(*ip);
                    }
                }
            }
            EventKind::IpQuarantined {
                subnet_id,
                ip,
                node,
                eni,
                ..
            } => {
                if let Some(e) = self.nodes.get_mut(node).and_then(|n| n.enis.get_mut(eni)) {
                    e.slots.remove(ip);
                }
                if let Some(subnet) = self.subnets.get_mut(subnet_id) {
                    subnet.alloc.quarantine(*ip);
                }
            }
            EventKind::IpUnquarantined { subnet_id, ip } => {
                if let Some(subnet) = self.subnets.get_mut(subnet_id) {
                    subnet.alloc.unquarantine(*ip);
                }
            }
            EventKind::IpBound { lease, .. } => {
                let Some(n) = self.nodes.get_mut(&lease.node) else {
                    return;
                };
                set_slot(n, lease.eni, lease.ip, Slot::Bound { lease: lease.id });
                n.attachments
                    .insert((lease.owner.container_id.clone(), lease.owner.ifname.clone()), lease.id);
                n.leases.insert(lease.id, lease.clone());
            }
            EventKind::IpReleased {
                lease, cooling_until, ..
            } => {
                let Some(n) = self.nodes.get_mut(&lease.node) else {
                    return;
                };
                n.leases.remove(&lease.id);
                let key = (lease.owner.container_id.clone(), lease.owner.ifname.clone());
                if n.attachments.get(&key) == Some(&lease.id) {
                    n.attachments.remove(&key);
                }
                set_slot(n, lease.eni, lease.ip, Slot::Cooling { until: *cooling_until });
                self.cooling.insert((
                    *cooling_until,
                    CoolingTarget::Slot {
                        node: lease.node.clone(),
                        eni: lease.eni,
                        ip: lease.ip,
                    },
                ));
            }
            EventKind::IpCooled { until, target } => {
                self.cooling.remove(&(*until, target.clone()));
                match target {
                    CoolingTarget::Slot { node, eni, ip } => {
                        let Some(n) = self.nodes.get_mut(node) else { return };
                        // An ENI on its way out takes no new pods: its cooled addresses drain.
                        let detaching = n.enis.get(eni).is_some_and(|e| e.state == EniState::Detaching);
                        let slot = if detaching {
                            Slot::Draining
                        } else {
                            Slot::Warm { since: event.index }
                        };
                        set_slot(n, *eni, *ip, slot);
                    }
                    CoolingTarget::Subnet { subnet_id, ip } => {
                        if let Some(subnet) = self.subnets.get_mut(subnet_id) {
                            subnet.alloc.release(*ip);
                        }
                    }
                }
            }
        }
    }

    /// An ENI left its node: its addresses go back to the subnet, cooling ones after the cooldown.
    fn retire_eni(&mut self, eni: Eni) {
        let Some(subnet) = self.subnets.get_mut(&eni.subnet_id) else {
            return;
        };
        let mut addresses: BTreeMap<Ipv4Addr, Slot> = eni.slots;
        addresses.entry(eni.primary_ip).or_insert(Slot::Pending);
        for (ip, slot) in addresses {
            if let Slot::Cooling { until } = slot {
                let from = CoolingTarget::Slot {
                    node: eni.node.clone(),
                    eni: eni.eni_ref,
                    ip,
                };
                self.cooling.remove(&(until, from));
                self.cooling.insert((
                    until,
                    CoolingTarget::Subnet {
                        subnet_id: eni.subnet_id.clone(),
                        ip,
                    },
                ));
            } else {
                subnet.alloc.release(ip);
            }
        }
    }
}

/// Sets a slot, keeping the node's warm indexes in step with it.
fn set_slot(node: &mut Node, eni_ref: EniRef, ip: Ipv4Addr, slot: Slot) {
    let Some(eni) = node.enis.get_mut(&eni_ref) else { return };
    let old = eni.slots.insert(ip, slot);
    if let Some(Slot::Warm { since }) = old {
        match eni.kind {
            EniKind::Branch { .. } => {
                if let Some(set) = node.warm_branches.get_mut(&eni.security_groups) {
                    set.remove(&(since, eni_ref));
                    if set.is_empty() {
                        node.warm_branches.remove(&eni.security_groups);
                    }
                }
            }
            _ => {
                node.warm.remove(&(since, ip, eni_ref));
            }
        }
    }
    if let Slot::Warm { since } = slot {
        match eni.kind {
            EniKind::Branch { .. } => {
                node.warm_branches
                    .entry(eni.security_groups.clone())
                    .or_default()
                    .insert((since, eni_ref));
            }
            _ => {
                node.warm.insert((since, ip, eni_ref));
            }
        }
    }
}

/// Takes an ENI off its node, and its warm addresses out of the node's warm indexes.
fn remove_eni(node: &mut Node, eni_ref: EniRef) -> Option<Eni> {
    let warm: Vec<Ipv4Addr> = node
        .enis
        .get(&eni_ref)?
        .slots
        .iter()
        .filter(|(_, s)| matches!(s, Slot::Warm { .. }))
        .map(|(ip, _)| *ip)
        .collect();
    for ip in warm {
        set_slot(node, eni_ref, ip, Slot::Draining);
    }
    node.enis.remove(&eni_ref)
}

fn make_warm(node: &mut Node, eni: EniRef, ip: Ipv4Addr, since: LogIndex) {
    set_slot(node, eni, ip, Slot::Warm { since });
}
