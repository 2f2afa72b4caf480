//! ENIs: the agent's ENI and address requests → commands, recorded [`Eni`]s → `pb::Eni`, plans
//! ([`EniPlan`]) → `PlanEniResponse` / `PlanBranchEniResponse`, and the tags every managed ENI
//! carries so that the reconciler can find leaked ones.
//!
//! `PlanIps` intent tokens: the domain keeps no record of a `PlanIps` beyond its pending
//! addresses, so the token *is* the plan: `ips-<eni_ref>-` followed by the addresses, eight hex
//! digits each. `ReportIpsFailed` learns the plan's addresses from it, and a report that echoes
//! another ENI's token, or a token this server did not mint, is refused before it reaches the
//! domain (which then checks that every address is still pending on that ENI).

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipam_core::CommandBody;
use ipam_core::cidr::Ipv4Cidr;
use ipam_core::command::AgentRef;
use ipam_core::command::EniRequest;
use ipam_core::decide::EniPlan;
use ipam_core::eni_tags::EniTagging;
use ipam_core::ids::EniRef;
use ipam_core::ids::RequestId;
use ipam_core::state::Eni;
use ipam_core::state::EniKind;
use ipam_core::state::EniState;
use ipam_core::state::Slot;
use ipam_proto::ipam::v1 as pb;

use super::Write;
use super::error::PbError;
use super::error::Result;
use super::field;
use super::node::agent_ref;

pub use ipam_core::eni_tags::CLUSTER as TAG_CLUSTER;
pub use ipam_core::eni_tags::ENI_REF as TAG_ENI_REF;
pub use ipam_core::eni_tags::INSTANCE_ID as TAG_INSTANCE_ID;
pub use ipam_core::eni_tags::INTENT_TOKEN as TAG_INTENT_TOKEN;
pub use ipam_core::eni_tags::MANAGED_BY;
pub use ipam_core::eni_tags::MANAGED_BY_KEY as TAG_MANAGED_BY;
pub use ipam_core::eni_tags::NODE as TAG_NODE;

/// The protobuf kind of a domain ENI kind.
pub fn eni_kind_to_pb(kind: &EniKind) -> pb::EniKind {
    match kind {
        EniKind::Secondary => pb::EniKind::Secondary,
        EniKind::Trunk => pb::EniKind::Trunk,
        EniKind::Branch { .. } => pb::EniKind::Branch,
    }
}

/// The protobuf state of a domain ENI state.
pub fn eni_state_to_pb(state: EniState) -> pb::EniState {
    match state {
        EniState::Planned => pb::EniState::Planned,
        EniState::Attached => pb::EniState::Attached,
        EniState::Detaching => pb::EniState::Detaching,
    }
}

/// The protobuf state of an address slot.
pub fn address_state_to_pb(slot: &Slot) -> pb::AddressState {
    match slot {
        Slot::Pending => pb::AddressState::Pending,
        Slot::Warm { .. } => pb::AddressState::Warm,
        Slot::Bound { .. } => pb::AddressState::Bound,
        Slot::Draining => pb::AddressState::Draining,
        Slot::Cooling { .. } => pb::AddressState::Cooling,
    }
}

/// An ENI as the API shows it. The domain does not record the EC2 attachment id or the plan
/// time, so `attachment_id` is empty and `planned_at_unix_ms` 0; a cooling address's lease id is
/// not kept either (the lease ended), so it is 0; a pending address names the ENI's intent token
/// while the ENI itself is planned (a `PlanIps`' token is the client's to keep).
pub fn eni_to_pb(eni: &Eni) -> pb::Eni {
    let (vlan_id, trunk_eni_ref) = match eni.kind {
        EniKind::Branch { vlan, trunk } => (u32::from(vlan), trunk),
        _ => (0, 0),
    };
    let addresses = eni
        .slots
        .iter()
        .map(|(ip, slot)| pb::Address {
            ip: ip.to_string(),
            state: address_state_to_pb(slot).into(),
            lease_id: match slot {
                Slot::Bound { lease } => *lease,
                _ => 0,
            },
            cooling_until_unix_ms: match slot {
                Slot::Cooling { until } => super::time::to_unix_ms(*until),
                _ => 0,
            },
            intent_token: if *slot == Slot::Pending && eni.state == EniState::Planned {
                eni.token.clone()
            } else {
                String::new()
            },
        })
        .collect();
    pb::Eni {
        eni_ref: eni.eni_ref,
        eni_id: eni.eni_id.clone().unwrap_or_default(),
        node: eni.node.clone(),
        device_index: eni.device_index.map_or(0, u32::from),
        subnet_id: eni.subnet_id.clone(),
        security_group_ids: eni.security_groups.clone(),
        kind: eni_kind_to_pb(&eni.kind).into(),
        vlan_id,
        state: eni_state_to_pb(eni.state).into(),
        intent_token: eni.token.clone(),
        mac: eni.mac.clone().unwrap_or_default(),
        primary_ip: eni.primary_ip.to_string(),
        addresses,
        trunk_eni_ref,
        attachment_id: String::new(),
        planned_at_unix_ms: 0,
    }
}

/// Where a plan's ENI goes, for the tags and the description.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext<'a> {
    /// The node name.
    pub node: &'a str,
    /// The node's EC2 instance id.
    pub instance_id: &'a str,
    /// The cluster's token prefix.
    pub cluster: &'a str,
    /// The subnet's CIDR.
    pub subnet_cidr: Ipv4Cidr,
}

fn tagging<'a>(plan: &'a EniPlan, ctx: &PlanContext<'a>) -> EniTagging<'a> {
    EniTagging {
        cluster: ctx.cluster,
        node: ctx.node,
        instance_id: ctx.instance_id,
        eni_ref: plan.eni,
        token: &plan.token,
        kind: match plan.kind {
            EniKind::Secondary => "secondary",
            EniKind::Trunk => "trunk",
            EniKind::Branch { .. } => "branch",
        },
    }
}

/// The tags an ENI of `plan` must carry at creation, verbatim.
pub fn plan_tags(plan: &EniPlan, ctx: &PlanContext<'_>) -> HashMap<String, String> {
    tagging(plan, ctx)
        .tags()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// The description an ENI of `plan` gets at creation (at most EC2's 255 characters).
pub fn plan_description(plan: &EniPlan, ctx: &PlanContext<'_>) -> String {
    tagging(plan, ctx).description()
}

fn gateway(cidr: Ipv4Cidr) -> String {
    cidr.aws_gateway().map(|g| g.to_string()).unwrap_or_default()
}

/// `PlanEni`'s answer: exactly what the agent asks EC2 for.
pub fn plan_eni_response(plan: &EniPlan, ctx: &PlanContext<'_>) -> pb::PlanEniResponse {
    pb::PlanEniResponse {
        eni_ref: plan.eni,
        device_index: plan.device_index.map_or(0, u32::from),
        subnet_id: plan.subnet_id.clone(),
        subnet_cidr: ctx.subnet_cidr.to_string(),
        gateway: gateway(ctx.subnet_cidr),
        security_group_ids: plan.security_groups.clone(),
        primary_ip: plan.primary_ip.to_string(),
        secondary_ips: plan.ips.iter().map(Ipv4Addr::to_string).collect(),
        intent_token: plan.token.clone(),
        tags: plan_tags(plan, ctx),
        description: plan_description(plan, ctx),
    }
}

/// `PlanBranchEni`'s answer; `trunk_eni_id` is the EC2 id of the node's trunk.
pub fn plan_branch_response(plan: &EniPlan, trunk_eni_id: &str, ctx: &PlanContext<'_>) -> pb::PlanBranchEniResponse {
    let vlan_id = match plan.kind {
        EniKind::Branch { vlan, .. } => u32::from(vlan),
        _ => 0,
    };
    pb::PlanBranchEniResponse {
        eni_ref: plan.eni,
        vlan_id,
        ip: plan.primary_ip.to_string(),
        intent_token: plan.token.clone(),
        trunk_eni_id: trunk_eni_id.to_owned(),
        subnet_id: plan.subnet_id.clone(),
        subnet_cidr: ctx.subnet_cidr.to_string(),
        gateway: gateway(ctx.subnet_cidr),
        tags: plan_tags(plan, ctx),
        description: plan_description(plan, ctx),
    }
}

fn eni_ref(value: EniRef) -> Result<EniRef> {
    if value == 0 {
        return Err(PbError::Missing {
            field: "eni_ref".to_owned(),
        });
    }
    Ok(value)
}

/// The EC2 error of a failure report, for the ledger: `code: message`, or whichever is set.
pub fn ec2_error(code: &str, message: &str) -> String {
    match (code.is_empty(), message.is_empty()) {
        (false, false) => format!("{code}: {message}"),
        (false, true) => code.to_owned(),
        (true, false) => message.to_owned(),
        (true, true) => "unspecified failure".to_owned(),
    }
}

fn agent_write(request_id: &str, body: CommandBody) -> Result<Write> {
    Ok(Write {
        request_id: Some(field::request_id("request_id", request_id)?),
        body,
    })
}

/// `PlanEni`'s command: a secondary ENI with `ip_count` addresses, or the trunk (no addresses).
pub fn plan_eni(req: &pb::PlanEniRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let kind = field::required_enum("kind", "EniKind", req.kind, |k: pb::EniKind| {
        (k != pb::EniKind::Unspecified).then_some(k)
    })?;
    let request = match kind {
        pb::EniKind::Secondary => EniRequest::Secondary {
            ips: field::narrow("ip_count", req.ip_count, "at most the instance type's ipv4_per_eni - 1")?,
        },
        pb::EniKind::Trunk if req.ip_count != 0 => {
            return Err(PbError::OutOfRange {
                field: "ip_count".to_owned(),
                value: req.ip_count.to_string(),
                why: "a trunk ENI carries no pod addresses: 0".to_owned(),
            });
        }
        pb::EniKind::Trunk => EniRequest::Trunk,
        pb::EniKind::Branch | pb::EniKind::Unspecified => {
            return Err(PbError::EnumNotAllowed {
                field: "kind".to_owned(),
                value: kind.as_str_name(),
                why: "PlanEni plans SECONDARY or TRUNK ENIs; branch ENIs are planned by PlanBranchEni",
            });
        }
    };
    agent_write(&req.request_id, CommandBody::PlanEni { agent, request })
}

fn attached(agent: AgentRef, eni: EniRef, eni_id: &str, mac: &str) -> Result<CommandBody> {
    Ok(CommandBody::ReportEniAttached {
        agent,
        eni,
        eni_id: field::required("eni_id", eni_id)?,
        mac: field::required("mac", mac)?,
    })
}

/// `ReportEniAttached`'s command. The attachment id is required but not recorded by the domain.
pub fn report_eni_attached(req: &pb::ReportEniAttachedRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let eni = eni_ref(req.eni_ref)?;
    let body = attached(agent, eni, &req.eni_id, &req.mac)?;
    field::required("attachment_id", &req.attachment_id)?;
    agent_write(&req.request_id, body)
}

/// `ReportEniFailed`'s command.
pub fn report_eni_failed(req: &pb::ReportEniFailedRequest) -> Result<Write> {
    let body = CommandBody::ReportEniFailed {
        agent: agent_ref(&req.node, req.epoch)?,
        eni: eni_ref(req.eni_ref)?,
        in_use: field::ips("in_use_ips", &req.in_use_ips)?,
        error: ec2_error(&req.error_code, &req.error_message),
    };
    agent_write(&req.request_id, body)
}

/// `PlanIps`' command.
pub fn plan_ips(req: &pb::PlanIpsRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let eni = eni_ref(req.eni_ref)?;
    if req.count == 0 {
        return Err(PbError::OutOfRange {
            field: "count".to_owned(),
            value: "0".to_owned(),
            why: "at least 1".to_owned(),
        });
    }
    let count = field::narrow("count", req.count, "at most the instance type's ipv4_per_eni - 1")?;
    agent_write(&req.request_id, CommandBody::PlanIps { agent, eni, count })
}

/// The intent token of a `PlanIps` on `eni` that chose `ips` (see the module docs).
pub fn ips_intent_token(eni: EniRef, ips: &[Ipv4Addr]) -> String {
    let mut token = format!("ips-{eni}-");
    for ip in ips {
        token.push_str(&format!("{:08x}", u32::from(*ip)));
    }
    token
}

/// The addresses of the `PlanIps` that minted `token`, which must be for `eni`.
pub fn ips_of_intent_token(field: &str, token: &str, eni: EniRef) -> Result<Vec<Ipv4Addr>> {
    let bad = || PbError::InvalidIntentToken {
        field: field.to_owned(),
        token: token.to_owned(),
        eni_ref: eni,
    };
    if token.is_empty() {
        return Err(PbError::Empty {
            field: field.to_owned(),
        });
    }
    let hex = token
        .strip_prefix("ips-")
        .and_then(|rest| rest.split_once('-'))
        .filter(|(of, _)| of.parse::<EniRef>().ok() == Some(eni))
        .map(|(_, hex)| hex)
        .ok_or_else(bad)?;
    if hex.is_empty() || hex.len() % 8 != 0 || !hex.is_ascii() {
        return Err(bad());
    }
    (0..hex.len() / 8)
        .map(|i| {
            u32::from_str_radix(&hex[i * 8..(i + 1) * 8], 16)
                .map(Ipv4Addr::from)
                .map_err(|_| bad())
        })
        .collect()
}

/// A `ReportIpsAssigned`, checked against its plan: the addresses EC2 assigned and the plan's
/// others, which return to the subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsAssigned {
    /// The agent.
    pub agent: AgentRef,
    /// The ENI.
    pub eni: EniRef,
    /// The request id.
    pub request_id: RequestId,
    /// The plan's addresses EC2 assigned (they become warm).
    pub assigned: Vec<Ipv4Addr>,
    /// The plan's addresses EC2 did not assign (they return to the subnet).
    pub unassigned: Vec<Ipv4Addr>,
}

impl IpsAssigned {
    /// Keeps only the addresses `still_pending` says are still pending: a retry of a report that
    /// was half carried out carries out the other half.
    #[must_use]
    pub fn still_pending(mut self, still_pending: impl Fn(&Ipv4Addr) -> bool) -> Self {
        self.assigned.retain(&still_pending);
        self.unassigned.retain(&still_pending);
        self
    }

    /// The commands: `ReportIpsAssigned` for the assigned addresses, `ReportIpsFailed` (nothing in
    /// use) for the others; either may be absent.
    pub fn commands(&self) -> Vec<Write> {
        let mut writes = Vec::new();
        if !self.assigned.is_empty() {
            writes.push(Write {
                request_id: Some(self.request_id.clone()),
                body: CommandBody::ReportIpsAssigned {
                    agent: self.agent.clone(),
                    eni: self.eni,
                    ips: self.assigned.clone(),
                },
            });
        }
        if !self.unassigned.is_empty() {
            writes.push(Write {
                request_id: Some(self.request_id.clone()),
                body: CommandBody::ReportIpsFailed {
                    agent: self.agent.clone(),
                    eni: self.eni,
                    ips: self.unassigned.clone(),
                    in_use: Vec::new(),
                    error: "not assigned by EC2 (left out of ReportIpsAssigned)".to_owned(),
                },
            });
        }
        writes
    }
}

/// `ReportIpsAssigned`'s request, split by its plan.
pub fn report_ips_assigned(req: &pb::ReportIpsAssignedRequest) -> Result<IpsAssigned> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let eni = eni_ref(req.eni_ref)?;
    let request_id = field::request_id("request_id", &req.request_id)?;
    let plan = ips_of_intent_token("intent_token", &req.intent_token, eni)?;
    let ips = field::ips("ips", &req.ips)?;
    let planned: BTreeSet<Ipv4Addr> = plan.iter().copied().collect();
    if let Some((i, _)) = ips.iter().enumerate().find(|(_, ip)| !planned.contains(ip)) {
        return Err(PbError::OutOfRange {
            field: format!("ips[{i}]"),
            value: req.ips[i].clone(),
            why: "not an address of the plan named by intent_token".to_owned(),
        });
    }
    let assigned: BTreeSet<Ipv4Addr> = ips.into_iter().collect();
    Ok(IpsAssigned {
        agent,
        eni,
        request_id,
        unassigned: planned.difference(&assigned).copied().collect(),
        assigned: assigned.into_iter().collect(),
    })
}

/// `ReportIpsFailed`'s command: every address of the plan goes back, those EC2 said are in use
/// into quarantine.
pub fn report_ips_failed(req: &pb::ReportIpsFailedRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let eni = eni_ref(req.eni_ref)?;
    let ips = ips_of_intent_token("intent_token", &req.intent_token, eni)?;
    let body = CommandBody::ReportIpsFailed {
        agent,
        eni,
        ips,
        in_use: field::ips("in_use_ips", &req.in_use_ips)?,
        error: ec2_error(&req.error_code, &req.error_message),
    };
    agent_write(&req.request_id, body)
}

/// What a `DrainIps` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drain {
    /// The server picks `count` warm addresses: the command.
    Count(Box<Write>),
    /// Explicit addresses (the domain can only drain by count).
    Ips {
        /// The agent.
        agent: AgentRef,
        /// The ENI.
        eni: EniRef,
        /// The addresses.
        ips: Vec<Ipv4Addr>,
    },
}

/// `DrainIps`' request: exactly one of `count` and `ips`.
pub fn drain_ips(req: &pb::DrainIpsRequest) -> Result<Drain> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let eni = eni_ref(req.eni_ref)?;
    field::request_id("request_id", &req.request_id)?;
    match (req.count, req.ips.is_empty()) {
        (0, true) | (1.., false) => Err(PbError::Conflict {
            fields: "count, ips".to_owned(),
            why: "give exactly one of count (the server picks) and ips (explicit warm addresses)",
        }),
        (0, false) => Ok(Drain::Ips {
            agent,
            eni,
            ips: field::ips("ips", &req.ips)?,
        }),
        (count, true) => {
            let count = field::narrow("count", count, "at most 65535")?;
            Ok(Drain::Count(Box::new(agent_write(
                &req.request_id,
                CommandBody::DrainIps { agent, eni, count },
            )?)))
        }
    }
}

/// `ReportIpsUnassigned`'s command.
pub fn report_ips_unassigned(req: &pb::ReportIpsUnassignedRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let eni = eni_ref(req.eni_ref)?;
    if req.ips.is_empty() {
        return Err(PbError::Empty {
            field: "ips".to_owned(),
        });
    }
    let ips = field::ips("ips", &req.ips)?;
    agent_write(&req.request_id, CommandBody::ReportIpsUnassigned { agent, eni, ips })
}

/// `PlanEniDetach`'s command.
pub fn plan_eni_detach(req: &pb::PlanEniDetachRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let eni = eni_ref(req.eni_ref)?;
    agent_write(&req.request_id, CommandBody::PlanEniDetach { agent, eni })
}

/// `ReportEniDetached`'s command.
pub fn report_eni_detached(req: &pb::ReportEniDetachedRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let eni = eni_ref(req.eni_ref)?;
    agent_write(&req.request_id, CommandBody::ReportEniDetached { agent, eni })
}

/// `PlanBranchEni`'s command.
pub fn plan_branch_eni(req: &pb::PlanBranchEniRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    if req.security_group_ids.is_empty() {
        return Err(PbError::Empty {
            field: "security_group_ids".to_owned(),
        });
    }
    let body = CommandBody::PlanBranchEni {
        agent,
        security_groups: req.security_group_ids.clone(),
    };
    agent_write(&req.request_id, body)
}

/// `ReportBranchAttached`'s command (the domain's `ReportEniAttached`, which covers branches).
pub fn report_branch_attached(req: &pb::ReportBranchAttachedRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let eni = eni_ref(req.eni_ref)?;
    let body = attached(agent, eni, &req.eni_id, &req.mac)?;
    agent_write(&req.request_id, body)
}

/// The ENI a `ReportBranchFailed` names, checked.
pub fn report_branch_failed_target(req: &pb::ReportBranchFailedRequest) -> Result<(AgentRef, EniRef)> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let eni = eni_ref(req.eni_ref)?;
    field::request_id("request_id", &req.request_id)?;
    Ok((agent, eni))
}

/// `ReportBranchFailed`'s command; `primary_ip` is the branch ENI's planned address (when
/// known), which is quarantined when EC2 said it is in use.
pub fn report_branch_failed(req: &pb::ReportBranchFailedRequest, primary_ip: Option<Ipv4Addr>) -> Result<Write> {
    let (agent, eni) = report_branch_failed_target(req)?;
    let body = CommandBody::ReportEniFailed {
        agent,
        eni,
        in_use: if req.ip_in_use {
            primary_ip.into_iter().collect()
        } else {
            Vec::new()
        },
        error: ec2_error(&req.error_code, &req.error_message),
    };
    agent_write(&req.request_id, body)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const NODE: &str = "node-a";

    fn plan(kind: EniKind) -> EniPlan {
        EniPlan {
            eni: 42,
            kind,
            device_index: match kind {
                EniKind::Branch { .. } => None,
                _ => Some(2),
            },
            subnet_id: "subnet-0a1b2c3d".to_owned(),
            security_groups: vec!["sg-0123456789abcdef0".to_owned()],
            primary_ip: Ipv4Addr::new(100, 64, 1, 4),
            ips: vec![Ipv4Addr::new(100, 64, 1, 5), Ipv4Addr::new(100, 64, 1, 6)],
            token: "ipam-42".to_owned(),
        }
    }

    fn ctx() -> PlanContext<'static> {
        PlanContext {
            node: NODE,
            instance_id: "i-0123456789abcdef0",
            cluster: "ipam",
            subnet_cidr: "100.64.1.0/24".parse().unwrap_or_else(|e| panic!("{e}")),
        }
    }

    #[test]
    fn plan_responses_carry_the_plan() {
        let response = plan_eni_response(&plan(EniKind::Secondary), &ctx());
        assert_eq!(response.eni_ref, 42);
        assert_eq!(response.device_index, 2);
        assert_eq!(response.subnet_cidr, "100.64.1.0/24");
        assert_eq!(response.gateway, "100.64.1.1");
        assert_eq!(response.primary_ip, "100.64.1.4");
        assert_eq!(response.secondary_ips, vec!["100.64.1.5", "100.64.1.6"]);
        assert_eq!(response.intent_token, "ipam-42");
        assert_eq!(response.tags.get(TAG_ENI_REF).map(String::as_str), Some("42"));
        assert_eq!(response.tags.get(TAG_NODE).map(String::as_str), Some(NODE));
        assert_eq!(response.tags.get(TAG_CLUSTER).map(String::as_str), Some("ipam"));
        assert_eq!(response.tags.get(TAG_INTENT_TOKEN).map(String::as_str), Some("ipam-42"));
        assert_eq!(response.description, "ipam-server secondary ENI ipam-42 of node node-a");

        let branch = plan_branch_response(
            &plan(EniKind::Branch { vlan: 7, trunk: 3 }),
            "eni-0123456789abcdef0",
            &ctx(),
        );
        assert_eq!(branch.vlan_id, 7);
        assert_eq!(branch.ip, "100.64.1.4");
        assert_eq!(branch.trunk_eni_id, "eni-0123456789abcdef0");
        assert!(branch.description.contains("branch"));

        let long = PlanContext {
            node: &"n".repeat(300),
            ..ctx()
        };
        assert_eq!(
            plan_description(&plan(EniKind::Trunk), &long).len(),
            ipam_core::eni_tags::MAX_DESCRIPTION
        );
    }

    #[test]
    fn eni_to_pb_maps_every_slot() {
        let eni = Eni {
            eni_ref: 9,
            node: NODE.to_owned(),
            eni_id: Some("eni-0123456789abcdef0".to_owned()),
            mac: Some("0a:1b:2c:3d:4e:5f".to_owned()),
            kind: EniKind::Secondary,
            device_index: Some(1),
            subnet_id: "subnet-0a1b2c3d".to_owned(),
            security_groups: vec!["sg-0123456789abcdef0".to_owned()],
            primary_ip: Ipv4Addr::new(100, 64, 1, 4),
            token: "ipam-9".to_owned(),
            state: EniState::Attached,
            slots: BTreeMap::from([
                (Ipv4Addr::new(100, 64, 1, 5), Slot::Pending),
                (Ipv4Addr::new(100, 64, 1, 6), Slot::Warm { since: 3 }),
                (Ipv4Addr::new(100, 64, 1, 7), Slot::Bound { lease: 11 }),
                (Ipv4Addr::new(100, 64, 1, 8), Slot::Draining),
                (Ipv4Addr::new(100, 64, 1, 9), Slot::Cooling { until: 5_000 }),
            ]),
        };
        let pb = eni_to_pb(&eni);
        assert_eq!(pb.kind, i32::from(pb::EniKind::Secondary));
        assert_eq!(pb.state, i32::from(pb::EniState::Attached));
        assert_eq!(pb.device_index, 1);
        assert_eq!(pb.mac, "0a:1b:2c:3d:4e:5f");
        let states: Vec<(String, pb::AddressState, u64, i64)> = pb
            .addresses
            .iter()
            .map(|a| (a.ip.clone(), a.state(), a.lease_id, a.cooling_until_unix_ms))
            .collect();
        assert_eq!(
            states,
            vec![
                ("100.64.1.5".to_owned(), pb::AddressState::Pending, 0, 0),
                ("100.64.1.6".to_owned(), pb::AddressState::Warm, 0, 0),
                ("100.64.1.7".to_owned(), pb::AddressState::Bound, 11, 0),
                ("100.64.1.8".to_owned(), pb::AddressState::Draining, 0, 0),
                ("100.64.1.9".to_owned(), pb::AddressState::Cooling, 0, 5_000),
            ]
        );
        assert_eq!(
            pb.addresses[0].intent_token, "",
            "PlanIps' pending addresses carry no ENI token"
        );
        let planned = Eni {
            state: EniState::Planned,
            kind: EniKind::Branch { vlan: 4, trunk: 2 },
            device_index: None,
            ..eni
        };
        let pb = eni_to_pb(&planned);
        assert_eq!(pb.addresses[0].intent_token, "ipam-9");
        assert_eq!((pb.vlan_id, pb.trunk_eni_ref, pb.device_index), (4, 2, 0));
        assert_eq!(pb.kind, i32::from(pb::EniKind::Branch));
    }

    #[test]
    fn plan_eni_kinds() {
        let req = |kind: i32, ip_count| pb::PlanEniRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "p-1".to_owned(),
            kind,
            ip_count,
        };
        let secondary = plan_eni(&req(pb::EniKind::Secondary.into(), 5)).map(|w| w.body);
        assert!(matches!(
            secondary,
            Ok(CommandBody::PlanEni {
                request: EniRequest::Secondary { ips: 5 },
                ..
            })
        ));
        let trunk = plan_eni(&req(pb::EniKind::Trunk.into(), 0)).map(|w| w.body);
        assert!(matches!(
            trunk,
            Ok(CommandBody::PlanEni {
                request: EniRequest::Trunk,
                ..
            })
        ));
        let field_of = |r: pb::PlanEniRequest| plan_eni(&r).err().map(|e| e.field().to_owned());
        assert_eq!(field_of(req(pb::EniKind::Trunk.into(), 1)).as_deref(), Some("ip_count"));
        assert_eq!(field_of(req(pb::EniKind::Branch.into(), 0)).as_deref(), Some("kind"));
        assert_eq!(field_of(req(0, 0)).as_deref(), Some("kind"));
        assert_eq!(field_of(req(17, 0)).as_deref(), Some("kind"));
        assert_eq!(field_of(req(1, 70_000)).as_deref(), Some("ip_count"));
        assert_eq!(
            field_of(pb::PlanEniRequest {
                request_id: String::new(),
                ..req(1, 1)
            })
            .as_deref(),
            Some("request_id")
        );
        assert_eq!(
            field_of(pb::PlanEniRequest { epoch: 0, ..req(1, 1) }).as_deref(),
            Some("epoch")
        );
    }

    #[test]
    fn intent_tokens_round_trip_and_are_bound_to_their_eni() {
        let ips = vec![Ipv4Addr::new(100, 64, 1, 5), Ipv4Addr::new(100, 64, 255, 254)];
        let token = ips_intent_token(12, &ips);
        assert_eq!(token, "ips-12-644001056440fffe");
        assert_eq!(ips_of_intent_token("intent_token", &token, 12), Ok(ips));
        for (bad, eni) in [
            (token.as_str(), 13),
            ("ips-12-", 12),
            ("ips-12-6440010", 12),
            ("ips-12-zzzzzzzz", 12),
            ("ipam-12", 12),
            ("ips-x-64400105", 12),
        ] {
            assert_eq!(
                ips_of_intent_token("intent_token", bad, eni),
                Err(PbError::InvalidIntentToken {
                    field: "intent_token".to_owned(),
                    token: bad.to_owned(),
                    eni_ref: eni
                }),
                "{bad}"
            );
        }
        assert!(matches!(
            ips_of_intent_token("intent_token", "", 1),
            Err(PbError::Empty { .. })
        ));
    }

    #[test]
    fn report_ips_assigned_splits_the_plan() {
        let plan = vec![Ipv4Addr::new(100, 64, 1, 5), Ipv4Addr::new(100, 64, 1, 6)];
        let req = pb::ReportIpsAssignedRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "a-1".to_owned(),
            eni_ref: 12,
            intent_token: ips_intent_token(12, &plan),
            ips: vec!["100.64.1.6".to_owned()],
        };
        let split = report_ips_assigned(&req).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(split.unassigned, vec![Ipv4Addr::new(100, 64, 1, 5)]);
        assert_eq!(split.assigned, vec![Ipv4Addr::new(100, 64, 1, 6)]);
        let bodies: Vec<CommandBody> = split.commands().into_iter().map(|w| w.body).collect();
        assert!(matches!(
            bodies.as_slice(),
            [
                CommandBody::ReportIpsAssigned { ips: assigned, eni: 12, .. },
                CommandBody::ReportIpsFailed { ips: back, in_use, eni: 12, .. },
            ] if *assigned == vec![Ipv4Addr::new(100, 64, 1, 6)]
                && *back == vec![Ipv4Addr::new(100, 64, 1, 5)]
                && in_use.is_empty()
        ));
        // A retry after the first half was carried out does only the second.
        let rest = split.clone().still_pending(|ip| *ip == Ipv4Addr::new(100, 64, 1, 5));
        let bodies: Vec<CommandBody> = rest.commands().into_iter().map(|w| w.body).collect();
        assert!(matches!(bodies.as_slice(), [CommandBody::ReportIpsFailed { .. }]));
        assert!(split.clone().still_pending(|_| false).commands().is_empty());
        let none = report_ips_assigned(&pb::ReportIpsAssignedRequest {
            ips: Vec::new(),
            ..req.clone()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(none.assigned.is_empty());
        assert_eq!(none.unassigned, plan);
        let foreign = report_ips_assigned(&pb::ReportIpsAssignedRequest {
            ips: vec!["100.64.1.9".to_owned()],
            ..req.clone()
        });
        assert_eq!(foreign.err().map(|e| e.field().to_owned()).as_deref(), Some("ips[0]"));
        let other_eni = report_ips_assigned(&pb::ReportIpsAssignedRequest { eni_ref: 13, ..req });
        assert!(matches!(other_eni, Err(PbError::InvalidIntentToken { .. })));
    }

    #[test]
    fn report_ips_failed_takes_the_plan_from_the_token() {
        let plan = vec![Ipv4Addr::new(100, 64, 1, 5), Ipv4Addr::new(100, 64, 1, 6)];
        let req = pb::ReportIpsFailedRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "f-1".to_owned(),
            eni_ref: 12,
            intent_token: ips_intent_token(12, &plan),
            error_code: "InvalidIPAddress.InUse".to_owned(),
            error_message: "in use".to_owned(),
            in_use_ips: vec!["100.64.1.5".to_owned()],
        };
        let body = report_ips_failed(&req).map(|w| w.body);
        assert_eq!(
            body,
            Ok(CommandBody::ReportIpsFailed {
                agent: AgentRef {
                    node: NODE.to_owned(),
                    epoch: 3
                },
                eni: 12,
                ips: plan,
                in_use: vec![Ipv4Addr::new(100, 64, 1, 5)],
                error: "InvalidIPAddress.InUse: in use".to_owned(),
            })
        );
        let bad = report_ips_failed(&pb::ReportIpsFailedRequest {
            in_use_ips: vec!["x".to_owned()],
            ..req
        });
        assert_eq!(
            bad.err().map(|e| e.field().to_owned()).as_deref(),
            Some("in_use_ips[0]")
        );
    }

    #[test]
    fn drain_ips_needs_exactly_one_of_count_and_ips() {
        let req = |count, ips: &[&str]| pb::DrainIpsRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "d-1".to_owned(),
            eni_ref: 12,
            count,
            ips: ips.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(matches!(
            drain_ips(&req(2, &[])),
            Ok(Drain::Count(write)) if matches!(write.body, CommandBody::DrainIps { count: 2, .. })
        ));
        assert!(matches!(drain_ips(&req(0, &["100.64.1.5"])), Ok(Drain::Ips { ips, .. }) if ips.len() == 1));
        assert!(matches!(drain_ips(&req(0, &[])), Err(PbError::Conflict { .. })));
        assert!(matches!(
            drain_ips(&req(1, &["100.64.1.5"])),
            Err(PbError::Conflict { .. })
        ));
        assert_eq!(
            drain_ips(&req(0, &["bad"]))
                .err()
                .map(|e| e.field().to_owned())
                .as_deref(),
            Some("ips[0]")
        );
        assert_eq!(
            drain_ips(&pb::DrainIpsRequest {
                eni_ref: 0,
                ..req(1, &[])
            })
            .err()
            .map(|e| e.field().to_owned())
            .as_deref(),
            Some("eni_ref")
        );
    }

    #[test]
    fn report_conversions_check_their_fields() {
        let attached = pb::ReportEniAttachedRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "r".to_owned(),
            eni_ref: 12,
            eni_id: "eni-0123456789abcdef0".to_owned(),
            mac: "0a:1b:2c:3d:4e:5f".to_owned(),
            attachment_id: "eni-attach-0123456789abcdef0".to_owned(),
        };
        assert!(matches!(
            report_eni_attached(&attached).map(|w| w.body),
            Ok(CommandBody::ReportEniAttached { eni: 12, .. })
        ));
        for (mutate, field) in [
            (
                Box::new(|r: &mut pb::ReportEniAttachedRequest| r.eni_id.clear())
                    as Box<dyn Fn(&mut pb::ReportEniAttachedRequest)>,
                "eni_id",
            ),
            (Box::new(|r| r.mac.clear()), "mac"),
            (Box::new(|r| r.attachment_id.clear()), "attachment_id"),
            (Box::new(|r| r.eni_ref = 0), "eni_ref"),
            (Box::new(|r| r.node.clear()), "node"),
        ] {
            let mut r = attached.clone();
            mutate(&mut r);
            assert_eq!(
                report_eni_attached(&r).err().map(|e| e.field().to_owned()).as_deref(),
                Some(field)
            );
        }
        let unassigned = pb::ReportIpsUnassignedRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "r".to_owned(),
            eni_ref: 12,
            ips: Vec::new(),
        };
        assert_eq!(
            report_ips_unassigned(&unassigned)
                .err()
                .map(|e| e.field().to_owned())
                .as_deref(),
            Some("ips")
        );
        let branch = pb::PlanBranchEniRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "r".to_owned(),
            security_group_ids: Vec::new(),
        };
        assert_eq!(
            plan_branch_eni(&branch).err().map(|e| e.field().to_owned()).as_deref(),
            Some("security_group_ids")
        );
        let failed = pb::ReportBranchFailedRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "r".to_owned(),
            eni_ref: 12,
            error_code: String::new(),
            error_message: String::new(),
            ip_in_use: true,
        };
        assert!(matches!(
            report_branch_failed(&failed, Some(Ipv4Addr::new(100, 64, 1, 4))).map(|w| w.body),
            Ok(CommandBody::ReportEniFailed { in_use, error, .. })
                if in_use == vec![Ipv4Addr::new(100, 64, 1, 4)] && error == "unspecified failure"
        ));
        assert_eq!(ec2_error("Code", ""), "Code");
        assert_eq!(ec2_error("", "msg"), "msg");
    }
}
