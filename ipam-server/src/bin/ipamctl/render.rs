//! What `get`, `stats`, `settings`, `cluster status` and the audit commands (`who-had`,
//! `history`, `watch`, `export`) print: a table (and its wide form) and a JSON form per message
//! type.
//!
//! JSON keeps the proto's field names (snake_case, as protobuf's `preserving_proto_field_names`),
//! enums as their proto value names (`LEASE_STATE_BOUND`), and numbers as JSON numbers. A list is
//! printed as its List response message (`{"pools": [...]}`), every page merged. Events are
//! printed one JSON object per line (JSON lines), each with its payload parsed.

use ipam_proto::ipam::v1 as pb;
use serde_json::Value;
use serde_json::json;

use crate::output::Align;
use crate::output::StreamingTable;
use crate::output::Table;
use crate::output::duration_ms;
use crate::output::list;
use crate::output::number_or_dash;
use crate::output::text;
use crate::output::time;
use crate::output::time_ms;

/// An enum value by its proto name; the number if this build does not know it.
fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(&E) -> &'static str) -> String {
    E::try_from(value)
        .map(|e| name(&e).to_owned())
        .unwrap_or_else(|_| value.to_string())
}

/// An enum value as a table shows it: the proto name without its prefix, lower case
/// (`LEASE_STATE_BOUND` → `bound`, `ENI_KIND_SECONDARY` → `secondary`).
fn short(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// `NodeState` as JSON and table text.
fn node_state(value: i32) -> String {
    enum_name(value, pb::NodeState::as_str_name)
}

/// `EniKind` by name.
fn eni_kind(value: i32) -> String {
    enum_name(value, pb::EniKind::as_str_name)
}

/// `EniState` by name.
fn eni_state(value: i32) -> String {
    enum_name(value, pb::EniState::as_str_name)
}

/// `AddressState` by name.
fn address_state(value: i32) -> String {
    enum_name(value, pb::AddressState::as_str_name)
}

/// `LeaseState` by name.
fn lease_state(value: i32) -> String {
    enum_name(value, pb::LeaseState::as_str_name)
}

/// `MemberRole` by name.
fn member_role(value: i32) -> String {
    enum_name(value, pb::MemberRole::as_str_name)
}

/// `LabelSelectorOperator` by name.
fn selector_operator(value: i32) -> String {
    enum_name(value, pb::LabelSelectorOperator::as_str_name)
}

/// The pools table.
pub fn pools_table(pools: &[pb::Pool], wide: bool) -> Table {
    let mut columns = vec![("CIDR", Align::Left), ("ADDRESSES", Align::Right)];
    if wide {
        columns.push(("CREATED", Align::Left));
    }
    let mut table = Table::new(&columns);
    for pool in pools {
        let size = pool
            .cidr
            .parse::<ipam_core::cidr::Ipv4Cidr>()
            .map(|c| c.size().to_string())
            .unwrap_or_else(|_| "?".to_owned());
        table.push(vec![pool.cidr.clone(), size, time(pool.created_at_unix_ms)]);
    }
    table
}

/// The pools as JSON.
pub fn pools_json(pools: &[pb::Pool]) -> Value {
    let pools: Vec<Value> = pools
        .iter()
        .map(|p| json!({"cidr": p.cidr, "created_at_unix_ms": p.created_at_unix_ms}))
        .collect();
    json!({ "pools": pools })
}

/// The subnet configs table.
pub fn subnet_configs_table(configs: &[pb::SubnetConfig], wide: bool) -> Table {
    let mut columns = vec![
        ("NAME", Align::Left),
        ("SUBNET", Align::Left),
        ("CIDR", Align::Left),
        ("AZ", Align::Left),
        ("SECURITY-GROUPS", Align::Left),
    ];
    if wide {
        columns.push(("UPDATED", Align::Left));
    }
    let mut table = Table::new(&columns);
    for c in configs {
        table.push(vec![
            c.name.clone(),
            c.subnet_id.clone(),
            c.subnet_cidr.clone(),
            c.availability_zone.clone(),
            list(&c.security_group_ids),
            time(c.updated_at_unix_ms),
        ]);
    }
    table
}

/// One subnet config as JSON.
pub fn subnet_config_json(c: &pb::SubnetConfig) -> Value {
    json!({
        "name": c.name,
        "subnet_id": c.subnet_id,
        "subnet_cidr": c.subnet_cidr,
        "availability_zone": c.availability_zone,
        "security_group_ids": c.security_group_ids,
        "updated_at_unix_ms": c.updated_at_unix_ms,
    })
}

/// The subnet configs as JSON.
pub fn subnet_configs_json(configs: &[pb::SubnetConfig]) -> Value {
    json!({ "subnet_configs": configs.iter().map(subnet_config_json).collect::<Vec<_>>() })
}

/// A label selector as kubectl prints one (`role=web,tier in (a,b),!legacy`); `-` when unset,
/// `<all>` when empty (it selects everything).
pub fn selector_text(selector: Option<&pb::LabelSelector>) -> String {
    let Some(selector) = selector else {
        return "-".to_owned();
    };
    let mut labels: Vec<(&String, &String)> = selector.match_labels.iter().collect();
    labels.sort();
    let mut parts: Vec<String> = labels.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    for r in &selector.match_expressions {
        let values = r.values.join(",");
        parts.push(match pb::LabelSelectorOperator::try_from(r.operator) {
            Ok(pb::LabelSelectorOperator::In) => format!("{} in ({values})", r.key),
            Ok(pb::LabelSelectorOperator::NotIn) => format!("{} notin ({values})", r.key),
            Ok(pb::LabelSelectorOperator::Exists) => r.key.clone(),
            Ok(pb::LabelSelectorOperator::DoesNotExist) => format!("!{}", r.key),
            _ => format!("{} ?{} ({values})", r.key, r.operator),
        });
    }
    if parts.is_empty() {
        "<all>".to_owned()
    } else {
        parts.join(",")
    }
}

/// The security group policies table.
pub fn sg_policies_table(policies: &[pb::SgPolicy], wide: bool) -> Table {
    let mut columns = vec![
        ("NAMESPACE", Align::Left),
        ("NAME", Align::Left),
        ("SECURITY-GROUPS", Align::Left),
    ];
    if wide {
        columns.extend([
            ("POD-SELECTOR", Align::Left),
            ("SERVICE-ACCOUNT-SELECTOR", Align::Left),
            ("UPDATED", Align::Left),
        ]);
    }
    let mut table = Table::new(&columns);
    for p in policies {
        table.push(vec![
            p.namespace.clone(),
            p.name.clone(),
            list(&p.security_group_ids),
            selector_text(p.pod_selector.as_ref()),
            selector_text(p.service_account_selector.as_ref()),
            time(p.updated_at_unix_ms),
        ]);
    }
    table
}

/// A label selector as JSON (`null` when unset).
fn selector_json(selector: Option<&pb::LabelSelector>) -> Value {
    let Some(selector) = selector else {
        return Value::Null;
    };
    let labels: std::collections::BTreeMap<&String, &String> = selector.match_labels.iter().collect();
    let expressions: Vec<Value> = selector
        .match_expressions
        .iter()
        .map(|r| json!({"key": r.key, "operator": selector_operator(r.operator), "values": r.values}))
        .collect();
    json!({"match_labels": labels, "match_expressions": expressions})
}

/// The security group policies as JSON.
pub fn sg_policies_json(policies: &[pb::SgPolicy]) -> Value {
    let policies: Vec<Value> = policies
        .iter()
        .map(|p| {
            json!({
                "namespace": p.namespace,
                "name": p.name,
                "pod_selector": selector_json(p.pod_selector.as_ref()),
                "service_account_selector": selector_json(p.service_account_selector.as_ref()),
                "security_group_ids": p.security_group_ids,
                "updated_at_unix_ms": p.updated_at_unix_ms,
            })
        })
        .collect();
    json!({ "policies": policies })
}

/// The nodes table.
pub fn nodes_table(nodes: &[pb::Node], wide: bool) -> Table {
    let mut columns = vec![
        ("NAME", Align::Left),
        ("INSTANCE", Align::Left),
        ("TYPE", Align::Left),
        ("AZ", Align::Left),
        ("SUBNET-CONFIG", Align::Left),
        ("STATE", Align::Left),
        ("EPOCH", Align::Right),
    ];
    if wide {
        columns.extend([
            ("PRIMARY-IP", Align::Left),
            ("POD-ENI", Align::Left),
            ("MAX-ENIS", Align::Right),
            ("IPV4/ENI", Align::Right),
            ("BRANCHES", Align::Right),
            ("REGISTERED", Align::Left),
            ("DEADLINE", Align::Left),
        ]);
    }
    let mut table = Table::new(&columns);
    for n in nodes {
        let limits = n.limits.unwrap_or_default();
        table.push(vec![
            n.name.clone(),
            text(&n.instance_id),
            text(&n.instance_type),
            text(&n.availability_zone),
            text(&n.subnet_config),
            short(&node_state(n.state), "NODE_STATE_"),
            n.epoch.to_string(),
            text(&n.primary_ip),
            n.pod_eni_enabled.to_string(),
            limits.max_enis.to_string(),
            limits.ipv4_per_eni.to_string(),
            limits.branch_enis.to_string(),
            time(n.registered_at_unix_ms),
            time(n.heartbeat_deadline_unix_ms),
        ]);
    }
    table
}

/// The nodes as JSON.
pub fn nodes_json(nodes: &[pb::Node]) -> Value {
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let limits = n.limits.unwrap_or_default();
            let labels: std::collections::BTreeMap<&String, &String> = n.labels.iter().collect();
            json!({
                "name": n.name,
                "instance_id": n.instance_id,
                "instance_type": n.instance_type,
                "availability_zone": n.availability_zone,
                "limits": {
                    "max_enis": limits.max_enis,
                    "ipv4_per_eni": limits.ipv4_per_eni,
                    "branch_enis": limits.branch_enis,
                    "trunking": limits.trunking,
                },
                "labels": labels,
                "subnet_config": n.subnet_config,
                "pod_eni_enabled": n.pod_eni_enabled,
                "epoch": n.epoch,
                "heartbeat_deadline_unix_ms": n.heartbeat_deadline_unix_ms,
                "state": node_state(n.state),
                "registered_at_unix_ms": n.registered_at_unix_ms,
                "primary_ip": n.primary_ip,
            })
        })
        .collect();
    json!({ "nodes": nodes })
}

/// How many of an ENI's addresses are in `state`.
fn count(eni: &pb::Eni, state: pb::AddressState) -> usize {
    eni.addresses.iter().filter(|a| a.state == state as i32).count()
}

/// The ENIs table.
pub fn enis_table(enis: &[pb::Eni], wide: bool) -> Table {
    let mut columns = vec![
        ("REF", Align::Right),
        ("ENI-ID", Align::Left),
        ("NODE", Align::Left),
        ("KIND", Align::Left),
        ("STATE", Align::Left),
        ("DEVICE", Align::Right),
        ("PRIMARY-IP", Align::Left),
        ("ADDRESSES", Align::Right),
    ];
    if wide {
        columns.extend([
            ("SUBNET", Align::Left),
            ("SECURITY-GROUPS", Align::Left),
            ("VLAN", Align::Right),
            ("TRUNK", Align::Right),
            ("MAC", Align::Left),
            ("WARM", Align::Right),
            ("BOUND", Align::Right),
            ("COOLING", Align::Right),
            ("PLANNED", Align::Left),
        ]);
    }
    let mut table = Table::new(&columns);
    for e in enis {
        table.push(vec![
            e.eni_ref.to_string(),
            text(&e.eni_id),
            e.node.clone(),
            short(&eni_kind(e.kind), "ENI_KIND_"),
            short(&eni_state(e.state), "ENI_STATE_"),
            number_or_dash(u64::from(e.device_index)),
            text(&e.primary_ip),
            e.addresses.len().to_string(),
            e.subnet_id.clone(),
            list(&e.security_group_ids),
            number_or_dash(u64::from(e.vlan_id)),
            number_or_dash(e.trunk_eni_ref),
            text(&e.mac),
            count(e, pb::AddressState::Warm).to_string(),
            count(e, pb::AddressState::Bound).to_string(),
            count(e, pb::AddressState::Cooling).to_string(),
            time(e.planned_at_unix_ms),
        ]);
    }
    table
}

/// The ENIs as JSON.
pub fn enis_json(enis: &[pb::Eni]) -> Value {
    let enis: Vec<Value> = enis
        .iter()
        .map(|e| {
            let addresses: Vec<Value> = e
                .addresses
                .iter()
                .map(|a| {
                    json!({
                        "ip": a.ip,
                        "state": address_state(a.state),
                        "lease_id": a.lease_id,
                        "cooling_until_unix_ms": a.cooling_until_unix_ms,
                        "intent_token": a.intent_token,
                    })
                })
                .collect();
            json!({
                "eni_ref": e.eni_ref,
                "eni_id": e.eni_id,
                "node": e.node,
                "device_index": e.device_index,
                "subnet_id": e.subnet_id,
                "security_group_ids": e.security_group_ids,
                "kind": eni_kind(e.kind),
                "vlan_id": e.vlan_id,
                "state": eni_state(e.state),
                "intent_token": e.intent_token,
                "mac": e.mac,
                "primary_ip": e.primary_ip,
                "addresses": addresses,
                "trunk_eni_ref": e.trunk_eni_ref,
                "attachment_id": e.attachment_id,
                "planned_at_unix_ms": e.planned_at_unix_ms,
            })
        })
        .collect();
    json!({ "enis": enis })
}

/// The leases table.
pub fn leases_table(leases: &[pb::Lease], wide: bool) -> Table {
    let mut columns = vec![
        ("LEASE", Align::Right),
        ("IP", Align::Left),
        ("NODE", Align::Left),
        ("POD", Align::Left),
        ("STATE", Align::Left),
    ];
    if wide {
        columns.extend([
            ("ENI", Align::Left),
            ("VLAN", Align::Right),
            ("SECURITY-GROUPS", Align::Left),
            ("CONTAINER", Align::Left),
            ("IFNAME", Align::Left),
            ("SERVICE-ACCOUNT", Align::Left),
            ("BOUND-AT", Align::Left),
            ("COOLING-UNTIL", Align::Left),
        ]);
    }
    let mut table = Table::new(&columns);
    for l in leases {
        let owner = l.owner.clone().unwrap_or_default();
        let pod = owner.pod.unwrap_or_default();
        let attachment = owner.attachment.unwrap_or_default();
        let eni = if l.eni_id.is_empty() {
            format!("ref {}", l.eni_ref)
        } else {
            l.eni_id.clone()
        };
        table.push(vec![
            l.lease_id.to_string(),
            l.ip.clone(),
            l.node.clone(),
            format!("{}/{}", pod.namespace, pod.name),
            short(&lease_state(l.state), "LEASE_STATE_"),
            eni,
            number_or_dash(u64::from(l.vlan_id)),
            list(&l.security_group_ids),
            text(&attachment.container_id),
            text(&attachment.ifname),
            text(&owner.service_account),
            time(l.bound_at_unix_ms),
            time(l.cooling_until_unix_ms),
        ]);
    }
    table
}

/// One lease as JSON.
pub fn lease_json(l: &pb::Lease) -> Value {
    let owner = l.owner.clone().unwrap_or_default();
    let pod = owner.pod.unwrap_or_default();
    let attachment = owner.attachment.unwrap_or_default();
    json!({
        "lease_id": l.lease_id,
        "ip": l.ip,
        "node": l.node,
        "eni_ref": l.eni_ref,
        "eni_id": l.eni_id,
        "vlan_id": l.vlan_id,
        "security_group_ids": l.security_group_ids,
        "owner": {
            "pod": {"namespace": pod.namespace, "name": pod.name, "uid": pod.uid},
            "attachment": {"container_id": attachment.container_id, "ifname": attachment.ifname},
            "service_account": owner.service_account,
        },
        "bound_at_unix_ms": l.bound_at_unix_ms,
        "state": lease_state(l.state),
        "cooling_until_unix_ms": l.cooling_until_unix_ms,
        "subnet_id": l.subnet_id,
    })
}

/// The leases as JSON.
pub fn leases_json(leases: &[pb::Lease]) -> Value {
    json!({ "leases": leases.iter().map(lease_json).collect::<Vec<_>>() })
}

/// The per-subnet address counts.
pub fn stats_table(subnets: &[pb::SubnetStats], wide: bool) -> Table {
    let mut columns = vec![
        ("NAME", Align::Left),
        ("SUBNET", Align::Left),
        ("CIDR", Align::Left),
        ("TOTAL", Align::Right),
        ("WARM", Align::Right),
        ("BOUND", Align::Right),
        ("COOLING", Align::Right),
        ("FREE", Align::Right),
        ("QUARANTINED", Align::Right),
    ];
    if wide {
        columns.extend([
            ("AZ", Align::Left),
            ("ENI-PRIMARY", Align::Right),
            ("PENDING", Align::Right),
            ("DRAINING", Align::Right),
        ]);
    }
    let mut table = Table::new(&columns);
    for s in subnets {
        table.push(vec![
            s.subnet_config.clone(),
            s.subnet_id.clone(),
            s.subnet_cidr.clone(),
            s.total_usable.to_string(),
            s.warm.to_string(),
            s.bound.to_string(),
            s.cooling.to_string(),
            s.free.to_string(),
            s.quarantined.to_string(),
            s.availability_zone.clone(),
            s.eni_primary.to_string(),
            s.pending.to_string(),
            s.draining.to_string(),
        ]);
    }
    table
}

/// The per-subnet address counts as JSON.
pub fn stats_json(subnets: &[pb::SubnetStats]) -> Value {
    let subnets: Vec<Value> = subnets
        .iter()
        .map(|s| {
            json!({
                "subnet_config": s.subnet_config,
                "subnet_id": s.subnet_id,
                "subnet_cidr": s.subnet_cidr,
                "availability_zone": s.availability_zone,
                "total_usable": s.total_usable,
                "eni_primary": s.eni_primary,
                "pending": s.pending,
                "warm": s.warm,
                "bound": s.bound,
                "draining": s.draining,
                "cooling": s.cooling,
                "quarantined": s.quarantined,
                "free": s.free,
            })
        })
        .collect();
    json!({ "subnets": subnets })
}

/// The settings, one per row.
pub fn settings_table(s: &pb::Settings) -> Table {
    let mut table = Table::new(&[("SETTING", Align::Left), ("VALUE", Align::Left)]);
    table.push(vec!["heartbeat-ttl".to_owned(), duration_ms(s.heartbeat_ttl_ms)]);
    table.push(vec!["ip-cooldown".to_owned(), duration_ms(s.ip_cooldown_ms)]);
    table.push(vec!["branch-cooldown".to_owned(), duration_ms(s.branch_cooldown_ms)]);
    table.push(vec!["token-prefix".to_owned(), s.token_prefix.clone()]);
    table.push(vec![
        "recent-requests-per-node".to_owned(),
        s.recent_requests_per_node.to_string(),
    ]);
    table
}

/// The settings as JSON.
pub fn settings_json(s: &pb::Settings) -> Value {
    json!({
        "settings": {
            "heartbeat_ttl_ms": s.heartbeat_ttl_ms,
            "ip_cooldown_ms": s.ip_cooldown_ms,
            "branch_cooldown_ms": s.branch_cooldown_ms,
            "token_prefix": s.token_prefix,
            "recent_requests_per_node": s.recent_requests_per_node,
        }
    })
}

/// The summary line of a replica's Raft view.
pub fn cluster_summary(c: &pb::ClusterInfo) -> String {
    let leader = if c.leader_id == 0 {
        "no leader known".to_owned()
    } else if c.leader_address.is_empty() {
        format!("leader {}", c.leader_id)
    } else {
        format!("leader {} at {}", c.leader_id, c.leader_address)
    };
    format!(
        "replica {}: {leader}, term {}, last log {}, applied {}, snapshot {}, log purged to {}",
        c.id, c.term, c.last_log_index, c.last_applied_index, c.snapshot_log_index, c.purged_log_index
    )
}

/// The members of a replica's Raft view.
pub fn cluster_table(c: &pb::ClusterInfo) -> Table {
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("ADDRESS", Align::Left),
        ("ROLE", Align::Left),
        ("LEADER", Align::Left),
        ("MATCHED", Align::Right),
    ]);
    // Only the leader tracks what each member has matched.
    let leader_view = c.id != 0 && c.id == c.leader_id;
    for m in &c.members {
        table.push(vec![
            m.id.to_string(),
            m.address.clone(),
            short(&member_role(m.role), "MEMBER_ROLE_"),
            if m.id == c.leader_id {
                "*".to_owned()
            } else {
                String::new()
            },
            if leader_view {
                m.matched_log_index.to_string()
            } else {
                "-".to_owned()
            },
        ]);
    }
    table
}

/// A replica's Raft view as JSON.
pub fn cluster_json(c: &pb::ClusterInfo) -> Value {
    let members: Vec<Value> = c
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "address": m.address,
                "role": member_role(m.role),
                "matched_log_index": m.matched_log_index,
            })
        })
        .collect();
    json!({
        "cluster": {
            "id": c.id,
            "leader_id": c.leader_id,
            "leader_address": c.leader_address,
            "term": c.term,
            "last_log_index": c.last_log_index,
            "last_applied_index": c.last_applied_index,
            "snapshot_log_index": c.snapshot_log_index,
            "purged_log_index": c.purged_log_index,
            "members": members,
        }
    })
}

/// `ActorKind` by name.
fn actor_kind(value: i32) -> String {
    enum_name(value, pb::ActorKind::as_str_name)
}

/// `ReleaseReason` by name.
fn release_reason(value: i32) -> String {
    enum_name(value, pb::ReleaseReason::as_str_name)
}

/// Who caused an event, briefly: the actor's kind, and its name unless the row already says it
/// (an agent acts for the event's node; the server's controllers call themselves `controller`).
pub fn actor_text(e: &pb::Event) -> String {
    let Some(actor) = &e.actor else {
        return "-".to_owned();
    };
    let kind = short(&actor_kind(actor.kind), "ACTOR_KIND_");
    let implied = match pb::ActorKind::try_from(actor.kind) {
        Ok(pb::ActorKind::Agent) => actor.name == e.node,
        Ok(pb::ActorKind::Controller) => actor.name == "controller",
        _ => false,
    };
    if actor.name.is_empty() || implied {
        kind
    } else {
        format!("{kind}:{}", actor.name)
    }
}

/// An ENI for a cell: its EC2 id, else its server handle, else `-`.
fn eni_text(eni_id: &str, eni_ref: u64) -> String {
    if !eni_id.is_empty() {
        eni_id.to_owned()
    } else if eni_ref != 0 {
        format!("ref {eni_ref}")
    } else {
        "-".to_owned()
    }
}

/// A pod for a cell: `namespace/name`, `-` when none.
fn pod_text(pod: Option<&pb::PodRef>) -> String {
    pod.map_or_else(|| "-".to_owned(), |p| format!("{}/{}", p.namespace, p.name))
}

/// The event columns: name, alignment, and width when streamed (`watch`), chosen to fit the
/// usual values (an RFC 3339 time in ms, the kinds and causes, an EKS node name, an EC2 ENI id).
const EVENT_COLUMNS: [(&str, Align, usize); 10] = [
    ("SEQ", Align::Right, 5),
    ("TIME", Align::Left, 24),
    ("KIND", Align::Left, 20),
    ("CAUSE", Align::Left, 20),
    ("ACTOR", Align::Left, 16),
    ("IPS", Align::Left, 14),
    ("POD", Align::Left, 24),
    ("NODE", Align::Left, 39),
    ("ENI", Align::Left, 21),
    ("LEASE", Align::Right, 5),
];

/// The columns `-o wide` adds.
const EVENT_WIDE_COLUMNS: [(&str, Align, usize); 4] = [
    ("LOG-INDEX", Align::Right, 9),
    ("POD-UID", Align::Left, 36),
    ("SECURITY-GROUPS", Align::Left, 20),
    ("REQUEST-ID", Align::Left, 0),
];

/// The event columns, wide or not.
fn event_columns(wide: bool) -> Vec<(&'static str, Align, usize)> {
    let mut columns = EVENT_COLUMNS.to_vec();
    if wide {
        columns.extend(EVENT_WIDE_COLUMNS);
    }
    columns
}

/// One event's cells, in the order of [`event_columns`].
pub fn event_cells(e: &pb::Event, wide: bool) -> Vec<String> {
    let mut cells = vec![
        e.seq.to_string(),
        time_ms(e.at_unix_ms),
        text(&e.kind),
        text(&e.cause),
        actor_text(e),
        list(&e.ips),
        pod_text(e.pod.as_ref()),
        text(&e.node),
        eni_text(&e.eni_id, e.eni_ref),
        number_or_dash(e.lease_id),
    ];
    if wide {
        cells.extend([
            number_or_dash(e.log_index),
            text(e.pod.as_ref().map_or("", |p| p.uid.as_str())),
            list(&e.security_group_ids),
            text(&e.request_id),
        ]);
    }
    cells
}

/// The events table (`history`).
pub fn events_table(events: &[pb::Event], wide: bool) -> Table {
    let columns: Vec<(&str, Align)> = event_columns(wide)
        .into_iter()
        .map(|(name, align, _)| (name, align))
        .collect();
    let mut table = Table::new(&columns);
    for e in events {
        table.push(event_cells(e, wide));
    }
    table
}

/// The events table printed as events arrive (`watch`).
pub fn events_streaming_table(wide: bool) -> StreamingTable {
    StreamingTable::new(&event_columns(wide))
}

/// One event as JSON (a line of `export`, `history -o json` and `watch -o json`): the proto's
/// fields, with `payload_json` parsed into `payload` (kept as a string if it is not JSON).
pub fn event_json(e: &pb::Event) -> Value {
    let payload =
        serde_json::from_str::<Value>(&e.payload_json).unwrap_or_else(|_| Value::String(e.payload_json.clone()));
    let actor = e.actor.clone().unwrap_or_default();
    let pod = e.pod.as_ref().map_or(
        Value::Null,
        |p| json!({"namespace": p.namespace, "name": p.name, "uid": p.uid}),
    );
    json!({
        "seq": e.seq,
        "log_index": e.log_index,
        "at_unix_ms": e.at_unix_ms,
        "actor": {"kind": actor_kind(actor.kind), "name": actor.name},
        "cause": e.cause,
        "kind": e.kind,
        "payload": payload,
        "request_id": e.request_id,
        "ips": e.ips,
        "node": e.node,
        "pod": pod,
        "eni_ref": e.eni_ref,
        "eni_id": e.eni_id,
        "lease_id": e.lease_id,
        "security_group_ids": e.security_group_ids,
    })
}

/// A release reason as events name it (`RELEASE_REASON_CNI_DEL` → `cni_del`).
fn release_reason_text(value: i32) -> String {
    release_reason(value)
        .strip_prefix("RELEASE_REASON_")
        .map_or_else(|| value.to_string(), str::to_ascii_lowercase)
}

/// What `who-had` prints: each binding of `ip` live at `at`, or that there was none.
pub fn who_had_text(ip: &str, at: &str, bindings: &[pb::Binding]) -> String {
    if bindings.is_empty() {
        return format!("nobody held {ip} at {at}\n");
    }
    let blocks: Vec<String> = bindings.iter().map(|b| binding_text(ip, at, b)).collect();
    blocks.join("\n")
}

/// One binding, a field per line (there are too many for a table row).
fn binding_text(ip: &str, at: &str, b: &pb::Binding) -> String {
    let lease = b.lease.clone().unwrap_or_default();
    let owner = lease.owner.clone().unwrap_or_default();
    let pod = owner.pod.unwrap_or_default();
    let attachment = owner.attachment.unwrap_or_default();
    let eni = match lease.vlan_id {
        0 => eni_text(&lease.eni_id, lease.eni_ref),
        vlan => format!("{} (branch ENI, VLAN {vlan})", eni_text(&lease.eni_id, lease.eni_ref)),
    };
    let released = match b.released_at_unix_ms {
        0 => "still bound".to_owned(),
        at => match pb::ReleaseReason::try_from(b.release_reason) {
            Ok(pb::ReleaseReason::Unspecified) => time_ms(at),
            _ => format!("{} ({})", time_ms(at), release_reason_text(b.release_reason)),
        },
    };
    let fields = [
        ("Pod", format!("{}/{}", pod.namespace, pod.name)),
        ("Pod UID", text(&pod.uid)),
        ("Container ID", text(&attachment.container_id)),
        ("Interface", text(&attachment.ifname)),
        ("Node", text(&lease.node)),
        ("Instance ID", text(&b.instance_id)),
        ("ENI", eni),
        ("Security groups", list(&lease.security_group_ids)),
        ("Bound since", time_ms(lease.bound_at_unix_ms)),
        ("Released", released),
    ];
    let mut out = format!("{ip} at {at}: lease {}\n", lease.lease_id);
    for (name, value) in fields {
        out.push_str(&format!("  {:<17}{value}\n", format!("{name}:")));
    }
    out
}

/// One binding as JSON.
pub fn binding_json(b: &pb::Binding) -> Value {
    json!({
        "lease": b.lease.as_ref().map_or(Value::Null, lease_json),
        "instance_id": b.instance_id,
        "released_at_unix_ms": b.released_at_unix_ms,
        "release_reason": release_reason(b.release_reason),
    })
}

/// `who-had -o json`: the question and the WhoHad reply.
pub fn who_had_json(ip: &str, at_unix_ms: i64, reply: &pb::WhoHadResponse) -> Value {
    json!({
        "ip": ip,
        "at_unix_ms": at_unix_ms,
        "bindings": reply.bindings.iter().map(binding_json).collect::<Vec<_>>(),
        "as_of_log_index": reply.as_of_log_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> pb::SubnetStats {
        pb::SubnetStats {
            subnet_config: "us-west-2a".to_owned(),
            subnet_id: "subnet-011b111c1f11fdf11".to_owned(),
            subnet_cidr: "100.64.0.0/19".to_owned(),
            availability_zone: "us-west-2a".to_owned(),
            total_usable: 8187,
            eni_primary: 2,
            pending: 0,
            warm: 10,
            bound: 5,
            draining: 0,
            cooling: 1,
            quarantined: 1,
            free: 8168,
        }
    }

    #[test]
    fn stats_table_lines_up() {
        let expected = "\
NAME         SUBNET                     CIDR            TOTAL   WARM   BOUND   COOLING   FREE   QUARANTINED
us-west-2a   subnet-011b111c1f11fdf11   100.64.0.0/19    8187     10       5         1   8168             1
";
        assert_eq!(stats_table(&[stats()], false).render(), expected);
        let wide = stats_table(&[stats()], true).render();
        assert!(
            wide.lines()
                .next()
                .unwrap_or_default()
                .ends_with("AZ           ENI-PRIMARY   PENDING   DRAINING"),
            "{wide}"
        );
    }

    #[test]
    fn stats_json_uses_proto_names() {
        let value = stats_json(&[stats()]);
        assert_eq!(value["subnets"][0]["total_usable"], 8187);
        assert_eq!(value["subnets"][0]["subnet_config"], "us-west-2a");
        assert_eq!(value["subnets"][0]["quarantined"], 1);
    }

    #[test]
    fn cluster_status_marks_the_leader() {
        let info = pb::ClusterInfo {
            id: 1,
            leader_id: 1,
            leader_address: "127.0.0.1:7400".to_owned(),
            term: 3,
            last_log_index: 42,
            last_applied_index: 41,
            snapshot_log_index: 0,
            purged_log_index: 0,
            members: vec![
                pb::ClusterMember {
                    id: 1,
                    address: "127.0.0.1:7400".to_owned(),
                    role: pb::MemberRole::Voter as i32,
                    matched_log_index: 42,
                },
                pb::ClusterMember {
                    id: 2,
                    address: "127.0.0.1:7401".to_owned(),
                    role: pb::MemberRole::Learner as i32,
                    matched_log_index: 40,
                },
            ],
        };
        assert_eq!(
            cluster_summary(&info),
            "replica 1: leader 1 at 127.0.0.1:7400, term 3, last log 42, applied 41, snapshot 0, log purged to 0"
        );
        let expected = "\
ID   ADDRESS          ROLE      LEADER   MATCHED
 1   127.0.0.1:7400   voter     *             42
 2   127.0.0.1:7401   learner                 40
";
        assert_eq!(cluster_table(&info).render(), expected);
        let follower = pb::ClusterInfo { id: 2, ..info.clone() };
        assert!(
            cluster_table(&follower)
                .render()
                .lines()
                .nth(1)
                .unwrap_or_default()
                .ends_with('-')
        );
        assert_eq!(
            cluster_json(&info)["cluster"]["members"][1]["role"],
            "MEMBER_ROLE_LEARNER"
        );
    }

    #[test]
    fn selectors_print_like_kubectl() {
        let selector = pb::LabelSelector {
            match_labels: [
                ("role".to_owned(), "web".to_owned()),
                ("app".to_owned(), "x".to_owned()),
            ]
            .into_iter()
            .collect(),
            match_expressions: vec![
                pb::LabelSelectorRequirement {
                    key: "tier".to_owned(),
                    operator: pb::LabelSelectorOperator::In as i32,
                    values: vec!["a".to_owned(), "b".to_owned()],
                },
                pb::LabelSelectorRequirement {
                    key: "legacy".to_owned(),
                    operator: pb::LabelSelectorOperator::DoesNotExist as i32,
                    values: Vec::new(),
                },
            ],
        };
        assert_eq!(selector_text(Some(&selector)), "app=x,role=web,tier in (a,b),!legacy");
        assert_eq!(selector_text(Some(&pb::LabelSelector::default())), "<all>");
        assert_eq!(selector_text(None), "-");
    }

    #[test]
    fn leases_table_and_json() {
        let lease = pb::Lease {
            lease_id: 17,
            ip: "100.64.3.48".to_owned(),
            node: "node-a".to_owned(),
            eni_ref: 5,
            state: pb::LeaseState::Bound as i32,
            owner: Some(pb::Owner {
                pod: Some(pb::PodRef {
                    namespace: "ns".to_owned(),
                    name: "web-1".to_owned(),
                    uid: "u".to_owned(),
                }),
                attachment: None,
                service_account: String::new(),
            }),
            ..pb::Lease::default()
        };
        let expected = "\
LEASE   IP            NODE     POD        STATE
   17   100.64.3.48   node-a   ns/web-1   bound
";
        assert_eq!(leases_table(std::slice::from_ref(&lease), false).render(), expected);
        let value = leases_json(&[lease]);
        assert_eq!(value["leases"][0]["state"], "LEASE_STATE_BOUND");
        assert_eq!(value["leases"][0]["owner"]["pod"]["name"], "web-1");
    }

    fn bound_event() -> pb::Event {
        pb::Event {
            seq: 42,
            log_index: 17,
            at_unix_ms: 1_795_528_920_123,
            actor: Some(pb::Actor {
                kind: pb::ActorKind::Agent.into(),
                name: "node-a".to_owned(),
            }),
            cause: "bind".to_owned(),
            kind: "IpBound".to_owned(),
            payload_json: r#"{"IpBound":{"lease_id":17}}"#.to_owned(),
            request_id: "bind-1".to_owned(),
            ips: vec!["100.64.3.48".to_owned()],
            node: "node-a".to_owned(),
            pod: Some(pb::PodRef {
                namespace: "default".to_owned(),
                name: "web-1".to_owned(),
                uid: "uid-1".to_owned(),
            }),
            eni_ref: 5,
            eni_id: "eni-0a".to_owned(),
            lease_id: 17,
            security_group_ids: vec!["sg-1".to_owned()],
        }
    }

    #[test]
    fn events_table_and_json() {
        let expected = "\
SEQ   TIME                       KIND      CAUSE   ACTOR   IPS           POD             NODE     ENI      LEASE
 42   2026-11-24T14:02:00.123Z   IpBound   bind    agent   100.64.3.48   default/web-1   node-a   eni-0a      17
";
        assert_eq!(events_table(&[bound_event()], false).render(), expected);
        let wide = events_table(&[bound_event()], true).render();
        let cells: Vec<&str> = wide.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(cells[10..], ["17", "uid-1", "sg-1", "bind-1"], "{wide}");
        let value = event_json(&bound_event());
        assert_eq!(value["payload"]["IpBound"]["lease_id"], 17);
        assert_eq!(value["actor"]["kind"], "ACTOR_KIND_AGENT");
        assert_eq!(value["pod"]["uid"], "uid-1");
        assert_eq!(value["at_unix_ms"], 1_795_528_920_123_i64);
        // One line: JSON lines.
        assert!(!value.to_string().contains('\n'));
        let odd = pb::Event {
            payload_json: "not json".to_owned(),
            pod: None,
            ..bound_event()
        };
        assert_eq!(event_json(&odd)["payload"], "not json");
        assert_eq!(event_json(&odd)["pod"], Value::Null);
    }

    #[test]
    fn actors_name_only_what_the_row_does_not_say() {
        let by = |kind: pb::ActorKind, name: &str| pb::Event {
            actor: Some(pb::Actor {
                kind: kind.into(),
                name: name.to_owned(),
            }),
            ..bound_event()
        };
        assert_eq!(actor_text(&by(pb::ActorKind::Agent, "node-a")), "agent");
        assert_eq!(actor_text(&by(pb::ActorKind::Agent, "node-b")), "agent:node-b");
        assert_eq!(actor_text(&by(pb::ActorKind::Controller, "controller")), "controller");
        assert_eq!(
            actor_text(&by(pb::ActorKind::Controller, "expiry")),
            "controller:expiry"
        );
        assert_eq!(actor_text(&by(pb::ActorKind::Operator, "alice")), "operator:alice");
        let streamed = events_streaming_table(false).row(event_cells(&bound_event(), false));
        assert!(
            streamed.starts_with(
                "   42   2026-11-24T14:02:00.123Z   IpBound                bind                   agent              100.64.3.48"
            ),
            "{streamed}"
        );
    }

    fn binding(released_at_unix_ms: i64, reason: pb::ReleaseReason, vlan_id: u32) -> pb::Binding {
        pb::Binding {
            lease: Some(pb::Lease {
                lease_id: 17,
                ip: "100.64.3.48".to_owned(),
                node: "node-a".to_owned(),
                eni_ref: 5,
                eni_id: "eni-0a".to_owned(),
                vlan_id,
                security_group_ids: vec!["sg-1".to_owned(), "sg-2".to_owned()],
                owner: Some(pb::Owner {
                    pod: Some(pb::PodRef {
                        namespace: "default".to_owned(),
                        name: "web-1".to_owned(),
                        uid: "uid-1".to_owned(),
                    }),
                    attachment: Some(pb::Attachment {
                        container_id: "c0ffee".to_owned(),
                        ifname: "eth0".to_owned(),
                    }),
                    service_account: String::new(),
                }),
                bound_at_unix_ms: 1_795_528_800_000,
                state: pb::LeaseState::Cooling.into(),
                cooling_until_unix_ms: 0,
                subnet_id: "subnet-1".to_owned(),
            }),
            instance_id: "i-0123".to_owned(),
            released_at_unix_ms,
            release_reason: reason.into(),
        }
    }

    #[test]
    fn who_had_prints_every_field_of_a_binding() {
        let at = "2026-11-24T14:02:00.000Z";
        let released = binding(1_795_528_980_000, pb::ReleaseReason::CniDel, 0);
        let expected = "\
100.64.3.48 at 2026-11-24T14:02:00.000Z: lease 17
  Pod:             default/web-1
  Pod UID:         uid-1
  Container ID:    c0ffee
  Interface:       eth0
  Node:            node-a
  Instance ID:     i-0123
  ENI:             eni-0a
  Security groups: sg-1,sg-2
  Bound since:     2026-11-24T14:00:00.000Z
  Released:        2026-11-24T14:03:00.000Z (cni_del)
";
        assert_eq!(
            who_had_text("100.64.3.48", at, std::slice::from_ref(&released)),
            expected
        );
        let branch = who_had_text("100.64.3.48", at, &[binding(0, pb::ReleaseReason::Unspecified, 12)]);
        assert!(
            branch.contains("  ENI:             eni-0a (branch ENI, VLAN 12)\n"),
            "{branch}"
        );
        assert!(branch.ends_with("  Released:        still bound\n"), "{branch}");
        assert_eq!(
            who_had_text("100.64.3.48", at, &[]),
            "nobody held 100.64.3.48 at 2026-11-24T14:02:00.000Z\n"
        );
        let reply = pb::WhoHadResponse {
            bindings: vec![released],
            as_of_log_index: 99,
        };
        let value = who_had_json("100.64.3.48", 0, &reply);
        assert_eq!(value["bindings"][0]["release_reason"], "RELEASE_REASON_CNI_DEL");
        assert_eq!(value["bindings"][0]["lease"]["owner"]["attachment"]["ifname"], "eth0");
        assert_eq!(value["bindings"][0]["instance_id"], "i-0123");
        assert_eq!(value["as_of_log_index"], 99);
    }

    #[test]
    fn unknown_enum_values_print_as_numbers() {
        assert_eq!(lease_state(99), "99");
        assert_eq!(short("ENI_KIND_SECONDARY", "ENI_KIND_"), "secondary");
    }
}
