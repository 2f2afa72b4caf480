//! Nodes: `RegisterNodeRequest` → [`NodeSpec`], [`InstanceLimits`] ⇄ `pb::NodeLimits`, a recorded
//! [`Node`] → `pb::Node`, and the `(node, epoch)` pair every agent mutation carries.

use std::collections::BTreeMap;

use ipam_core::CommandBody;
use ipam_core::command::AgentRef;
use ipam_core::command::NodeSpec;
use ipam_core::limits::InstanceLimits;
use ipam_core::state::Node;
use ipam_core::state::NodeStatus;
use ipam_proto::ipam::v1 as pb;

use super::Write;
use super::error::PbError;
use super::error::Result;
use super::field;
use super::time;

/// The agent a mutation speaks for: the node name (required) and its epoch (a log index, so
/// never 0).
pub fn agent_ref(node: &str, epoch: u64) -> Result<AgentRef> {
    let node = field::required("node", node)?;
    if epoch == 0 {
        return Err(PbError::Missing {
            field: "epoch".to_owned(),
        });
    }
    Ok(AgentRef { node, epoch })
}

/// Instance limits from the wire. Only the integer widths are checked here;
/// `InstanceLimits::validate` (in the domain) checks that the numbers make sense together.
pub fn limits_from_pb(limits: &pb::NodeLimits) -> Result<InstanceLimits> {
    Ok(InstanceLimits {
        max_enis: field::narrow("max_enis", limits.max_enis, "at most 255")?,
        ipv4_per_eni: field::narrow("ipv4_per_eni", limits.ipv4_per_eni, "at most 65535")?,
        branch_enis: field::narrow("branch_enis", limits.branch_enis, "at most 65535")?,
        trunking: limits.trunking,
    })
}

/// Instance limits as the API shows them.
pub fn limits_to_pb(limits: &InstanceLimits) -> pb::NodeLimits {
    pb::NodeLimits {
        max_enis: u32::from(limits.max_enis),
        ipv4_per_eni: u32::from(limits.ipv4_per_eni),
        branch_enis: u32::from(limits.branch_enis),
        trunking: limits.trunking,
    }
}

/// `RegisterNode`'s command. The limits are required (the protocol says so, although the domain
/// could fall back to its built-in table). `primary_ip` must be an IPv4 address when set; the
/// domain does not record it (see [`node_to_pb`]).
pub fn register_node(req: &pb::RegisterNodeRequest) -> Result<Write> {
    let request_id = field::request_id("request_id", &req.request_id)?;
    let limits = field::message("limits", req.limits.as_ref())?;
    let limits = limits_from_pb(limits).map_err(|e| e.within("limits"))?;
    field::optional_ip("primary_ip", &req.primary_ip)?;
    let spec = NodeSpec {
        name: field::required("node", &req.node)?,
        instance_id: field::required("instance_id", &req.instance_id)?,
        instance_type: req.instance_type.clone(),
        limits: Some(limits),
        az: field::required("availability_zone", &req.availability_zone)?,
        labels: req
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        subnet_config: field::required("subnet_config", &req.subnet_config)?,
        pod_eni: req.pod_eni_enabled,
    };
    Ok(Write {
        request_id: Some(request_id),
        body: CommandBody::RegisterNode(spec),
    })
}

/// `Heartbeat`'s command (its request id may be empty: a heartbeat is idempotent).
pub fn heartbeat(req: &pb::HeartbeatRequest) -> Result<Write> {
    Ok(Write {
        request_id: field::optional_request_id("request_id", &req.request_id)?,
        body: CommandBody::Heartbeat(agent_ref(&req.node, req.epoch)?),
    })
}

/// `RemoveNode`'s command.
pub fn remove_node(req: &pb::RemoveNodeRequest) -> Result<Write> {
    Ok(Write {
        request_id: Some(field::request_id("request_id", &req.request_id)?),
        body: CommandBody::RemoveNode {
            node: field::required("node", &req.node)?,
            force: req.force,
        },
    })
}

/// The protobuf state of a node.
pub fn node_state_to_pb(status: NodeStatus) -> pb::NodeState {
    match status {
        NodeStatus::Active => pb::NodeState::Active,
        NodeStatus::Expired => pb::NodeState::Expired,
    }
}

/// The domain state a protobuf node-state filter asks for; `None` for `UNSPECIFIED` (any).
pub fn node_state_filter(state: pb::NodeState) -> Option<NodeStatus> {
    match state {
        pb::NodeState::Unspecified => None,
        pb::NodeState::Active => Some(NodeStatus::Active),
        pb::NodeState::Expired => Some(NodeStatus::Expired),
    }
}

/// A node as the API shows it. The domain records neither the registration time nor the primary
/// IP, so `registered_at_unix_ms` is 0 and `primary_ip` empty.
pub fn node_to_pb(node: &Node) -> pb::Node {
    pb::Node {
        name: node.spec.name.clone(),
        instance_id: node.spec.instance_id.clone(),
        instance_type: node.spec.instance_type.clone(),
        availability_zone: node.spec.az.clone(),
        limits: Some(limits_to_pb(&node.limits)),
        labels: node.spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        subnet_config: node.spec.subnet_config.clone(),
        pod_eni_enabled: node.spec.pod_eni,
        epoch: node.epoch,
        heartbeat_deadline_unix_ms: time::to_unix_ms(node.deadline),
        state: node_state_to_pb(node.status).into(),
        registered_at_unix_ms: 0,
        primary_ip: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use ipam_core::testing::Harness;
    use ipam_core::testing::subnet_config;

    use super::*;

    /// A change to a request, for the rejection tables.
    type Mutation<T> = Box<dyn Fn(&mut T)>;

    const NODE: &str = "ip-10-0-1-10.us-west-2.compute.internal";

    fn limits() -> pb::NodeLimits {
        pb::NodeLimits {
            max_enis: 4,
            ipv4_per_eni: 15,
            branch_enis: 9,
            trunking: true,
        }
    }

    fn register() -> pb::RegisterNodeRequest {
        pb::RegisterNodeRequest {
            node: NODE.to_owned(),
            request_id: "reg-1".to_owned(),
            instance_id: "i-0123456789abcdef0".to_owned(),
            instance_type: "m5.xlarge".to_owned(),
            availability_zone: "us-west-2a".to_owned(),
            limits: Some(limits()),
            labels: [("role".to_owned(), "worker".to_owned())].into_iter().collect(),
            subnet_config: "us-west-2a".to_owned(),
            pod_eni_enabled: true,
            primary_ip: "10.0.1.10".to_owned(),
        }
    }

    #[test]
    fn register_round_trips_through_the_domain() {
        let write = register_node(&register()).unwrap_or_else(|e| panic!("{e}"));
        let CommandBody::RegisterNode(spec) = write.body else {
            panic!("{:?}", write.body)
        };
        assert_eq!(spec.limits.map(|l| limits_to_pb(&l)), Some(limits()));
        assert_eq!(spec.labels.get("role").map(String::as_str), Some("worker"));

        let mut h = Harness::new();
        h.subnet(
            "100.64.0.0/16",
            subnet_config("us-west-2a", "subnet-0a1b2c3d", "100.64.0.0/24", "us-west-2a"),
        );
        h.register(spec.clone());
        let node = h.state.nodes.get(NODE).unwrap_or_else(|| panic!("not registered"));
        let pb = node_to_pb(node);
        assert_eq!(pb.name, NODE);
        assert_eq!(pb.instance_id, "i-0123456789abcdef0");
        assert_eq!(pb.instance_type, "m5.xlarge");
        assert_eq!(pb.limits, Some(limits()));
        assert_eq!(pb.epoch, node.epoch);
        assert_eq!(pb.state, i32::from(pb::NodeState::Active));
        assert_eq!(pb.heartbeat_deadline_unix_ms, 1_000_000 + 30_000);
        assert!(pb.pod_eni_enabled);
        assert_eq!(pb.labels.len(), 1);
    }

    #[test]
    fn register_rejections_name_the_field() {
        let cases: Vec<(Mutation<pb::RegisterNodeRequest>, &str)> = vec![
            (Box::new(|r| r.node.clear()), "node"),
            (Box::new(|r| r.request_id.clear()), "request_id"),
            (Box::new(|r| r.instance_id.clear()), "instance_id"),
            (Box::new(|r| r.availability_zone.clear()), "availability_zone"),
            (Box::new(|r| r.subnet_config.clear()), "subnet_config"),
            (Box::new(|r| r.limits = None), "limits"),
            (Box::new(|r| r.primary_ip = "10.0.1".to_owned()), "primary_ip"),
            (
                Box::new(|r| {
                    if let Some(l) = r.limits.as_mut() {
                        l.max_enis = 300;
                    }
                }),
                "limits.max_enis",
            ),
            (
                Box::new(|r| {
                    if let Some(l) = r.limits.as_mut() {
                        l.ipv4_per_eni = 70_000;
                    }
                }),
                "limits.ipv4_per_eni",
            ),
            (
                Box::new(|r| {
                    if let Some(l) = r.limits.as_mut() {
                        l.branch_enis = 70_000;
                    }
                }),
                "limits.branch_enis",
            ),
        ];
        for (mutate, field) in cases {
            let mut req = register();
            mutate(&mut req);
            assert_eq!(
                register_node(&req).err().map(|e| e.field().to_owned()).as_deref(),
                Some(field)
            );
        }
        let mut no_ip = register();
        no_ip.primary_ip.clear();
        assert!(register_node(&no_ip).is_ok());
    }

    #[test]
    fn heartbeat_and_agent_ref() {
        let ok = heartbeat(&pb::HeartbeatRequest {
            node: NODE.to_owned(),
            epoch: 7,
            request_id: String::new(),
        });
        assert_eq!(
            ok,
            Ok(Write {
                request_id: None,
                body: CommandBody::Heartbeat(AgentRef {
                    node: NODE.to_owned(),
                    epoch: 7
                })
            })
        );
        assert_eq!(
            agent_ref("", 7).err().map(|e| e.field().to_owned()).as_deref(),
            Some("node")
        );
        assert_eq!(
            agent_ref(NODE, 0).err().map(|e| e.field().to_owned()).as_deref(),
            Some("epoch")
        );
        assert_eq!(node_state_filter(pb::NodeState::Unspecified), None);
        assert_eq!(node_state_filter(pb::NodeState::Expired), Some(NodeStatus::Expired));
        assert_eq!(node_state_to_pb(NodeStatus::Active), pb::NodeState::Active);
        let remove = pb::RemoveNodeRequest {
            request_id: "rm".to_owned(),
            node: NODE.to_owned(),
            force: true,
        };
        assert_eq!(
            remove_node(&remove).map(|w| w.body),
            Ok(CommandBody::RemoveNode {
                node: NODE.to_owned(),
                force: true
            })
        );
        assert_eq!(
            remove_node(&pb::RemoveNodeRequest {
                node: String::new(),
                ..remove
            })
            .err()
            .map(|e| e.field().to_owned())
            .as_deref(),
            Some("node")
        );
    }
}
