//! Test support (feature `testing`): a harness that stamps commands the way the Raft leader
//! does, builders for common inputs, and `check_invariants`, which recomputes from scratch what
//! the state keeps incrementally and says what disagrees.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::command::AgentRef;
use crate::command::Command;
use crate::command::CommandBody;
use crate::command::EniRequest;
use crate::command::NodeSpec;
use crate::command::Owner;
use crate::command::SubnetConfigSpec;
use crate::decide::Reply;
use crate::decide::decide;
use crate::error::Result;
use crate::event::EniPlan;
use crate::event::Event;
use crate::ids::Actor;
use crate::ids::RequestId;
use crate::ids::Timestamp;
use crate::limits::MAX_BRANCH_ENIS;
use crate::policy::PodMeta;
use crate::state::CoolingTarget;
use crate::state::EniKind;
use crate::state::NodeStatus;
use crate::state::Slot;
use crate::state::State;

/// A single-replica "cluster": stamps, decides, applies, and keeps every event.
#[derive(Debug, Clone, Default)]
pub struct Harness {
    /// The live state.
    pub state: State,
    /// Every event so far, in order.
    pub events: Vec<Event>,
    /// The last log index used.
    pub index: u64,
    /// The clock the harness stamps with.
    pub now: Timestamp,
}

impl Harness {
    /// A harness on a fresh state at time 1,000,000 ms.
    pub fn new() -> Self {
        Self {
            state: State::default(),
            events: Vec::new(),
            index: 0,
            now: 1_000_000,
        }
    }

    /// Runs one command as `actor`; returns the reply, or the refusal (which changed nothing).
    pub fn exec(&mut self, actor: Actor, request_id: Option<&str>, body: CommandBody) -> Result<Reply> {
        self.index += 1;
        let request_id = request_id.map(RequestId::new).transpose()?;
        let cmd = Command {
            index: self.index,
            at: self.now,
            actor,
            request_id,
            body,
        };
        let decision = decide(&self.state, &cmd)?;
        for event in &decision.events {
            self.state.apply(event);
        }
        self.events.extend(decision.events);
        Ok(decision.reply)
    }

    /// Runs an operator command.
    pub fn admin(&mut self, body: CommandBody) -> Result<Reply> {
        self.exec(Actor::Operator("test".to_owned()), None, body)
    }

    /// Runs an agent command for `node`.
    pub fn agent(&mut self, node: &str, request_id: Option<&str>, body: CommandBody) -> Result<Reply> {
        self.exec(Actor::Agent(node.to_owned()), request_id, body)
    }

    /// The current agent reference of a registered node.
    pub fn agent_ref(&self, node: &str) -> AgentRef {
        AgentRef {
            node: node.to_owned(),
            epoch: self.state.nodes.get(node).map_or(0, |n| n.epoch),
        }
    }

    /// Creates the pool `pool` and the subnet config `subnet` inside it; panics on a refusal.
    pub fn subnet(&mut self, pool: &str, subnet: SubnetConfigSpec) {
        let cidr = pool.parse().unwrap_or_else(|e| panic!("{pool}: {e}"));
        self.admin(CommandBody::CreatePool { cidr })
            .unwrap_or_else(|e| panic!("create pool {pool}: {e}"));
        self.admin(CommandBody::UpsertSubnetConfig(subnet))
            .unwrap_or_else(|e| panic!("upsert subnet config: {e}"));
    }

    /// Registers `spec` and returns the node's agent reference; panics on a refusal.
    pub fn register(&mut self, spec: NodeSpec) -> AgentRef {
        let node = spec.name.clone();
        self.agent(
            &node,
            Some(&format!("reg-{}", self.index + 1)),
            CommandBody::RegisterNode(spec),
        )
        .unwrap_or_else(|e| panic!("register {node}: {e}"));
        self.agent_ref(&node)
    }

    /// Plans a secondary ENI with `ips` addresses for `agent` and reports it attached as EC2 ENI
    /// `eni_id` with `mac`: the addresses are warm afterwards. Returns the plan; panics on a
    /// refusal.
    pub fn attached_eni(&mut self, agent: &AgentRef, ips: u16, eni_id: &str, mac: &str) -> EniPlan {
        let plan = CommandBody::PlanEni {
            agent: agent.clone(),
            request: EniRequest::Secondary { ips },
        };
        let request_id = format!("plan-{}", self.index + 1);
        let plan = match self.agent(&agent.node, Some(&request_id), plan) {
            Ok(Reply::EniPlanned(plan)) => plan,
            other => panic!("plan an ENI for {}: {other:?}", agent.node),
        };
        let attached = CommandBody::ReportEniAttached {
            agent: agent.clone(),
            eni: plan.eni,
            eni_id: eni_id.to_owned(),
            mac: mac.to_owned(),
        };
        self.agent(&agent.node, None, attached)
            .unwrap_or_else(|e| panic!("attach ENI {}: {e}", plan.eni));
        plan
    }

    /// The state a replay of every event from scratch gives.
    pub fn replay(&self) -> State {
        let mut state = State::default();
        for event in &self.events {
            state.apply(event);
        }
        state
    }
}

/// An ENIConfig for a subnet.
pub fn subnet_config(name: &str, subnet_id: &str, cidr: &str, az: &str) -> SubnetConfigSpec {
    SubnetConfigSpec {
        name: name.to_owned(),
        subnet_id: subnet_id.to_owned(),
        cidr: cidr.parse().unwrap_or_else(|e| panic!("{cidr}: {e}")),
        az: az.to_owned(),
        security_groups: vec!["sg-0123456789abcdef0".to_owned()],
    }
}

/// A node registration with explicit limits (so tests do not depend on the table).
pub fn node_spec(
    name: &str,
    instance_id: &str,
    az: &str,
    config: &str,
    limits: crate::limits::InstanceLimits,
) -> NodeSpec {
    NodeSpec {
        name: name.to_owned(),
        instance_id: instance_id.to_owned(),
        instance_type: "test.large".to_owned(),
        limits: Some(limits),
        az: az.to_owned(),
        labels: BTreeMap::new(),
        subnet_config: config.to_owned(),
        pod_eni: limits.trunking,
    }
}

/// A pod attachment and its metadata, numbered.
pub fn pod(n: u64, labels: &[(&str, &str)]) -> (Owner, PodMeta) {
    let owner = Owner {
        namespace: "default".to_owned(),
        name: format!("pod-{n}"),
        uid: format!("uid-{n}"),
        container_id: format!("{n:064x}"),
        ifname: "eth0".to_owned(),
    };
    let meta = PodMeta {
        namespace: owner.namespace.clone(),
        name: owner.name.clone(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        service_account: "default".to_owned(),
        service_account_labels: BTreeMap::new(),
    };
    (owner, meta)
}

/// Checks every invariant of the state; the error says which one broke and where.
pub fn check_invariants(state: &State) -> std::result::Result<(), String> {
    // Every address is held by exactly one thing: an ENI (primary or slot), a subnet-level
    // cooldown, or a quarantine; and the subnet's allocator agrees.
    let mut holder: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut hold = |ip: Ipv4Addr, what: String| match holder.insert(ip, what.clone()) {
        Some(other) => Err(format!("{ip} is held twice: by {other} and by {what}")),
        None => Ok(()),
    };
    for node in state.nodes.values() {
        for eni in node.enis.values() {
            let is_branch = matches!(eni.kind, EniKind::Branch { .. });
            if !is_branch {
                hold(eni.primary_ip, format!("primary of ENI {}", eni.eni_ref))?;
            }
            for ip in eni.slots.keys() {
                hold(*ip, format!("slot of ENI {} on {}", eni.eni_ref, node.spec.name))?;
            }
        }
    }
    for (_, target) in &state.cooling {
        if let CoolingTarget::Subnet { ip, subnet_id } = target {
            hold(*ip, format!("subnet cooldown in {subnet_id}"))?;
        }
    }
    for subnet in state.subnets.values() {
        for ip in subnet.alloc.quarantined() {
            hold(*ip, format!("quarantine in {}", subnet.id))?;
        }
    }
    for subnet in state.subnets.values() {
        let held = holder.keys().filter(|ip| subnet.alloc.cidr().contains(**ip)).count() as u64;
        if held != subnet.alloc.in_use() {
            return Err(format!(
                "subnet {}: allocator counts {} in use, holders say {held}",
                subnet.id,
                subnet.alloc.in_use()
            ));
        }
    }
    for (ip, what) in &holder {
        let used = state.subnet_of(*ip).is_some_and(|s| s.alloc.is_used(*ip));
        if !used {
            return Err(format!("{ip} ({what}) is free in its subnet's allocator"));
        }
    }

    let mut cooling_slots = BTreeSet::new();
    for node in state.nodes.values() {
        let name = &node.spec.name;
        let limits = node.limits;
        if node.attached_interfaces() > usize::from(limits.max_enis) {
            return Err(format!(
                "{name}: {} interfaces > max {}",
                node.attached_interfaces(),
                limits.max_enis
            ));
        }
        let devices: Vec<u8> = node.enis.values().filter_map(|e| e.device_index).collect();
        if devices.iter().collect::<BTreeSet<_>>().len() != devices.len()
            || devices.iter().any(|d| *d == 0 || *d >= limits.max_enis)
        {
            return Err(format!("{name}: bad device indexes {devices:?}"));
        }
        let cap = limits.branch_enis.min(MAX_BRANCH_ENIS);
        let vlans: Vec<u16> = node.vlans().collect();
        if vlans.len() > usize::from(cap)
            || vlans.iter().collect::<BTreeSet<_>>().len() != vlans.len()
            || vlans.iter().any(|v| *v == 0 || *v > cap)
        {
            return Err(format!("{name}: bad branch VLANs {vlans:?} (cap {cap})"));
        }
        if node.enis.values().filter(|e| e.kind == EniKind::Trunk).count() > 1 {
            return Err(format!("{name}: more than one trunk"));
        }
        if node.status == NodeStatus::Expired && !node.leases.is_empty() {
            return Err(format!("{name}: expired with {} live leases", node.leases.len()));
        }
        let mut warm = BTreeSet::new();
        let mut warm_branches: BTreeMap<Vec<String>, BTreeSet<(u64, u64)>> = BTreeMap::new();
        let mut bound = BTreeMap::new();
        for eni in node.enis.values() {
            match eni.kind {
                EniKind::Secondary if eni.slots.len() > usize::from(limits.pod_ips_per_eni()) => {
                    return Err(format!(
                        "{name}: ENI {} has {} pod addresses > {}",
                        eni.eni_ref,
                        eni.slots.len(),
                        limits.pod_ips_per_eni()
                    ));
                }
                EniKind::Trunk if !eni.slots.is_empty() => return Err(format!("{name}: the trunk has pod addresses")),
                EniKind::Branch { trunk, .. } => {
                    if eni.slots.len() != 1 || !eni.slots.contains_key(&eni.primary_ip) {
                        return Err(format!(
                            "{name}: branch ENI {} must have exactly its own address",
                            eni.eni_ref
                        ));
                    }
                    if node.enis.get(&trunk).map(|t| t.kind) != Some(EniKind::Trunk) {
                        return Err(format!("{name}: branch ENI {} names no trunk", eni.eni_ref));
                    }
                }
                _ => {}
            }
            for (ip, slot) in &eni.slots {
                match slot {
                    Slot::Warm { since } if matches!(eni.kind, EniKind::Branch { .. }) => {
                        warm_branches
                            .entry(eni.security_groups.clone())
                            .or_default()
                            .insert((*since, eni.eni_ref));
                    }
                    Slot::Warm { since } => {
                        warm.insert((*since, *ip, eni.eni_ref));
                    }
                    Slot::Bound { lease } => {
                        bound.insert(*lease, (eni.eni_ref, *ip));
                    }
                    Slot::Cooling { until } => {
                        cooling_slots.insert((
                            *until,
                            CoolingTarget::Slot {
                                node: name.clone(),
                                eni: eni.eni_ref,
                                ip: *ip,
                            },
                        ));
                    }
                    Slot::Pending | Slot::Draining => {}
                }
            }
        }
        if warm != node.warm {
            return Err(format!("{name}: warm index disagrees with the slots"));
        }
        if warm_branches != node.warm_branches {
            return Err(format!("{name}: warm branch index disagrees with the slots"));
        }
        let leases: BTreeMap<u64, (u64, Ipv4Addr)> = node.leases.values().map(|l| (l.id, (l.eni, l.ip))).collect();
        if leases != bound {
            return Err(format!("{name}: leases {leases:?} disagree with bound slots {bound:?}"));
        }
        let attachments: crate::detmap::DetMap<(String, String), u64> = node
            .leases
            .values()
            .map(|l| ((l.owner.container_id.clone(), l.owner.ifname.clone()), l.id))
            .collect();
        if attachments != node.attachments || attachments.len() != node.leases.len() {
            return Err(format!("{name}: attachment index disagrees with the leases"));
        }
    }
    let deadlines: BTreeSet<(u64, String)> = state
        .nodes
        .values()
        .filter(|n| n.status == NodeStatus::Active)
        .map(|n| (n.deadline, n.spec.name.clone()))
        .collect();
    if deadlines != state.deadlines {
        return Err("the deadline index disagrees with the active nodes".to_owned());
    }
    let slot_entries: BTreeSet<_> = state
        .cooling
        .iter()
        .filter(|(_, t)| matches!(t, CoolingTarget::Slot { .. }))
        .cloned()
        .collect();
    if slot_entries != cooling_slots {
        return Err("the cooling queue disagrees with the cooling slots".to_owned());
    }
    Ok(())
}
