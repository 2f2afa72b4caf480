//! Leases: `BindRequest` → `CommandBody::Bind`, `ReleaseRequest` / `GcRequest` → their commands,
//! and recorded [`Lease`]s → `pb::Lease` (bound or cooling, read off the address's slot).

use std::collections::BTreeMap;

use ipam_core::CommandBody;
use ipam_core::command::AgentRef;
use ipam_core::command::LeaseSelector;
use ipam_core::command::Owner;
use ipam_core::command::ReleaseReason;
use ipam_core::ids::LeaseId;
use ipam_core::ids::RequestId;
use ipam_core::policy::PodMeta;
use ipam_core::state::EniKind;
use ipam_core::state::Lease;
use ipam_core::state::Slot;
use ipam_core::state::State;
use ipam_proto::ipam::v1 as pb;

use super::Write;
use super::error::PbError;
use super::error::Result;
use super::field;
use super::node::agent_ref;
use super::time;

/// The service account a pod runs as when the runtime does not say.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The protobuf reason of a domain reason.
pub fn release_reason_to_pb(reason: ReleaseReason) -> pb::ReleaseReason {
    match reason {
        ReleaseReason::CniDel => pb::ReleaseReason::CniDel,
        ReleaseReason::Gc => pb::ReleaseReason::Gc,
        ReleaseReason::Expired => pb::ReleaseReason::Expired,
        ReleaseReason::Operator => pb::ReleaseReason::Operator,
        ReleaseReason::NodeRemoved => pb::ReleaseReason::NodeRemoved,
        ReleaseReason::Reconcile => pb::ReleaseReason::Reconcile,
    }
}

/// The reason of an agent's `Release`: `CNI_DEL` or `RECONCILE` (the others are the server's, or
/// `Gc`'s).
pub fn agent_release_reason(field: &str, value: i32) -> Result<ReleaseReason> {
    let reason = field::required_enum(field, "ReleaseReason", value, |r: pb::ReleaseReason| {
        (r != pb::ReleaseReason::Unspecified).then_some(r)
    })?;
    match reason {
        pb::ReleaseReason::CniDel => Ok(ReleaseReason::CniDel),
        pb::ReleaseReason::Reconcile => Ok(ReleaseReason::Reconcile),
        other => Err(PbError::EnumNotAllowed {
            field: field.to_owned(),
            value: other.as_str_name(),
            why: "an agent releases with CNI_DEL or RECONCILE; GC is the Gc rpc's, the others the server's",
        }),
    }
}

/// The pod and attachment of a lease as the API shows them. The domain does not keep the service
/// account with the lease, so `service_account` is empty.
pub fn owner_to_pb(owner: &Owner) -> pb::Owner {
    pb::Owner {
        pod: Some(pb::PodRef {
            namespace: owner.namespace.clone(),
            name: owner.name.clone(),
            uid: owner.uid.clone(),
        }),
        attachment: Some(pb::Attachment {
            container_id: owner.container_id.clone(),
            ifname: owner.ifname.clone(),
        }),
        service_account: String::new(),
    }
}

/// The attachment (container id, ifname), both required.
pub fn attachment_from_pb(attachment: &pb::Attachment) -> Result<(String, String)> {
    Ok((
        field::required("container_id", &attachment.container_id)?,
        field::required("ifname", &attachment.ifname)?,
    ))
}

/// The protobuf state of a lease, and when it stops cooling, from the slot of its address.
fn lease_state(state: &State, lease: &Lease) -> (pb::LeaseState, i64) {
    let slot = state
        .nodes
        .get(&lease.node)
        .and_then(|n| n.enis.get(&lease.eni))
        .and_then(|e| e.slots.get(&lease.ip));
    match slot {
        Some(Slot::Bound { lease: id }) if *id == lease.id => (pb::LeaseState::Bound, 0),
        Some(Slot::Cooling { until }) => (pb::LeaseState::Cooling, time::to_unix_ms(*until)),
        // The address went on (cooled and rebound, or its ENI left): a live lease is bound, an
        // ended one is over and its cooldown no longer tied to it.
        _ if state
            .nodes
            .get(&lease.node)
            .is_some_and(|n| n.leases.contains_key(&lease.id)) =>
        {
            (pb::LeaseState::Bound, 0)
        }
        _ => (pb::LeaseState::Cooling, 0),
    }
}

/// A lease as the API shows it, bound or cooling as `state` now says.
pub fn lease_to_pb(state: &State, lease: &Lease) -> pb::Lease {
    let (lease_state, cooling_until) = lease_state(state, lease);
    let subnet_id = state
        .nodes
        .get(&lease.node)
        .and_then(|n| n.enis.get(&lease.eni))
        .map(|e| e.subnet_id.clone())
        .or_else(|| state.subnet_of(lease.ip).map(|s| s.id.clone()))
        .unwrap_or_default();
    pb::Lease {
        lease_id: lease.id,
        ip: lease.ip.to_string(),
        node: lease.node.clone(),
        eni_ref: lease.eni,
        eni_id: lease.eni_id.clone(),
        vlan_id: lease.vlan.map_or(0, u32::from),
        security_group_ids: lease.security_groups.clone(),
        owner: Some(owner_to_pb(&lease.owner)),
        bound_at_unix_ms: time::to_unix_ms(lease.bound_at),
        state: lease_state.into(),
        cooling_until_unix_ms: cooling_until,
        subnet_id,
    }
}

/// `Bind`'s answer: the lease and what the CNI side needs to plumb it.
pub fn bind_response(state: &State, lease: &Lease) -> pb::BindResponse {
    let node = state.nodes.get(&lease.node);
    let eni = node.and_then(|n| n.enis.get(&lease.eni));
    let cidr = eni
        .and_then(|e| state.subnets.get(&e.subnet_id))
        .or_else(|| state.subnet_of(lease.ip))
        .map(|s| s.alloc.cidr());
    let trunk_eni_id = match eni.map(|e| e.kind) {
        Some(EniKind::Branch { trunk, .. }) => node
            .and_then(|n| n.enis.get(&trunk))
            .and_then(|t| t.eni_id.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    let cooldown_ms = match lease.vlan {
        Some(_) => state.settings.branch_cooldown_ms,
        None => state.settings.ip_cooldown_ms,
    };
    pb::BindResponse {
        lease: Some(lease_to_pb(state, lease)),
        subnet_cidr: cidr.map(|c| c.to_string()).unwrap_or_default(),
        gateway: cidr
            .and_then(|c| c.aws_gateway())
            .map(|g| g.to_string())
            .unwrap_or_default(),
        device_index: eni.and_then(|e| e.device_index).map_or(0, u32::from),
        eni_mac: eni.and_then(|e| e.mac.clone()).unwrap_or_default(),
        trunk_eni_id,
        cooldown_ms,
    }
}

/// `Bind`'s command: the pod (namespace and name required) and its attachment (both parts
/// required); an empty service account is `default`.
pub fn bind(req: &pb::BindRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let request_id = field::request_id("request_id", &req.request_id)?;
    let pod = field::message("pod", req.pod.as_ref())?;
    let namespace = field::required("pod.namespace", &pod.namespace)?;
    let name = field::required("pod.name", &pod.name)?;
    let attachment = field::message("attachment", req.attachment.as_ref())?;
    let (container_id, ifname) = attachment_from_pb(attachment).map_err(|e| e.within("attachment"))?;
    let labels = |map: &std::collections::HashMap<String, String>| {
        map.iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let service_account = if req.service_account.is_empty() {
        DEFAULT_SERVICE_ACCOUNT.to_owned()
    } else {
        req.service_account.clone()
    };
    let owner = Owner {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: pod.uid.clone(),
        container_id,
        ifname,
    };
    let meta = PodMeta {
        namespace,
        name,
        labels: labels(&req.pod_labels),
        service_account,
        service_account_labels: labels(&req.service_account_labels),
    };
    Ok(Write {
        request_id: Some(request_id),
        body: CommandBody::Bind {
            agent,
            owner,
            pod: meta,
        },
    })
}

/// A `Release`, checked: the command, and what it names (for the idempotent answer and the
/// agreement check when it names both a lease id and an attachment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseTarget {
    /// The agent.
    pub agent: AgentRef,
    /// The lease id, when given.
    pub lease_id: Option<LeaseId>,
    /// The attachment (container id, ifname), when given.
    pub attachment: Option<(String, String)>,
    /// The command (by id when the id is given, else by attachment).
    pub write: Write,
}

/// `Release`'s command: by lease id, by attachment, or both (then they must agree, which the
/// service checks against the state).
pub fn release(req: &pb::ReleaseRequest) -> Result<ReleaseTarget> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let request_id = field::request_id("request_id", &req.request_id)?;
    let reason = agent_release_reason("reason", req.reason)?;
    let attachment = req
        .attachment
        .as_ref()
        .map(|a| attachment_from_pb(a).map_err(|e| e.within("attachment")))
        .transpose()?;
    let lease_id = (req.lease_id != 0).then_some(req.lease_id);
    let lease = match (lease_id, &attachment) {
        (Some(id), _) => LeaseSelector::Id(id),
        (None, Some((container_id, ifname))) => LeaseSelector::Attachment {
            container_id: container_id.clone(),
            ifname: ifname.clone(),
        },
        (None, None) => {
            return Err(PbError::Conflict {
                fields: "lease_id, attachment".to_owned(),
                why: "name the lease by its id, its attachment, or both",
            });
        }
    };
    Ok(ReleaseTarget {
        write: Write {
            request_id: Some(request_id),
            body: CommandBody::Release {
                agent: agent.clone(),
                lease,
                reason,
            },
        },
        agent,
        lease_id,
        attachment,
    })
}

/// The lease id of an operator's `ReleaseLease` (never 0).
pub fn release_lease_id(req: &pb::ReleaseLeaseRequest) -> Result<(RequestId, LeaseId)> {
    let request_id = field::request_id("request_id", &req.request_id)?;
    if req.lease_id == 0 {
        return Err(PbError::Missing {
            field: "lease_id".to_owned(),
        });
    }
    Ok((request_id, req.lease_id))
}

/// An operator's `ReleaseLease` command, once the lease's node is known.
pub fn release_lease(node: &str, lease: LeaseId) -> CommandBody {
    CommandBody::ReleaseLease {
        node: node.to_owned(),
        lease,
    }
}

/// `Gc`'s command.
pub fn gc(req: &pb::GcRequest) -> Result<Write> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let request_id = field::request_id("request_id", &req.request_id)?;
    let bound_before = time::required_unix_ms("bound_before_unix_ms", req.bound_before_unix_ms)?;
    let valid = req
        .valid_attachments
        .iter()
        .enumerate()
        .map(|(i, a)| attachment_from_pb(a).map_err(|e| e.within(&format!("valid_attachments[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(Write {
        request_id: Some(request_id),
        body: CommandBody::Gc {
            agent,
            valid,
            bound_before,
        },
    })
}

#[cfg(test)]
mod tests {
    use ipam_core::Reply;
    use ipam_core::limits::InstanceLimits;
    use ipam_core::testing::Harness;
    use ipam_core::testing::node_spec;
    use ipam_core::testing::subnet_config;

    use super::*;

    /// A change to a request, for the rejection tables.
    type Mutation<T> = Box<dyn Fn(&mut T)>;

    const NODE: &str = "node-a";
    const AZ: &str = "us-west-2a";

    fn bind_request() -> pb::BindRequest {
        pb::BindRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "b-1".to_owned(),
            pod: Some(pb::PodRef {
                namespace: "default".to_owned(),
                name: "web-1".to_owned(),
                uid: "uid-1".to_owned(),
            }),
            pod_labels: [("app".to_owned(), "web".to_owned())].into_iter().collect(),
            service_account: String::new(),
            service_account_labels: Default::default(),
            attachment: Some(pb::Attachment {
                container_id: "c0ffee".to_owned(),
                ifname: "eth0".to_owned(),
            }),
        }
    }

    /// A node with one attached secondary ENI carrying two warm addresses.
    fn harness() -> (Harness, AgentRef) {
        let mut h = Harness::new();
        h.subnet(
            "100.64.0.0/16",
            subnet_config(AZ, "subnet-0a1b2c3d", "100.64.1.0/24", AZ),
        );
        let limits = InstanceLimits {
            max_enis: 3,
            ipv4_per_eni: 10,
            branch_enis: 0,
            trunking: false,
        };
        let agent = h.register(node_spec(NODE, "i-0123456789abcdef0", AZ, AZ, limits));
        h.attached_eni(&agent, 2, "eni-0123456789abcdef0", "0a:1b:2c:3d:4e:5f");
        (h, agent)
    }

    #[test]
    fn bind_round_trips_through_the_domain() {
        let (mut h, agent) = harness();
        let req = pb::BindRequest {
            epoch: agent.epoch,
            ..bind_request()
        };
        let write = bind(&req).unwrap_or_else(|e| panic!("{e}"));
        let CommandBody::Bind { pod, owner, .. } = &write.body else {
            panic!("{:?}", write.body)
        };
        assert_eq!(pod.service_account, DEFAULT_SERVICE_ACCOUNT);
        assert_eq!(owner.container_id, "c0ffee");
        let reply = h
            .agent(NODE, Some("b-1"), write.body.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let Reply::Bound(lease) = reply else {
            panic!("{reply:?}")
        };
        let response = bind_response(&h.state, &lease);
        let pb_lease = response.lease.clone().unwrap_or_else(|| panic!("no lease"));
        assert_eq!(pb_lease.state(), pb::LeaseState::Bound);
        assert_eq!(pb_lease.ip, lease.ip.to_string());
        assert_eq!(pb_lease.subnet_id, "subnet-0a1b2c3d");
        assert_eq!(pb_lease.eni_id, "eni-0123456789abcdef0");
        let owner = pb_lease.owner.unwrap_or_else(|| panic!("no owner"));
        assert_eq!(owner.pod.map(|p| p.name), Some("web-1".to_owned()));
        assert_eq!(owner.attachment.map(|a| a.ifname), Some("eth0".to_owned()));
        assert_eq!(response.subnet_cidr, "100.64.1.0/24");
        assert_eq!(response.gateway, "100.64.1.1");
        assert_eq!(response.device_index, 1);
        assert_eq!(response.eni_mac, "0a:1b:2c:3d:4e:5f");
        assert_eq!(response.cooldown_ms, 30_000);
        assert_eq!(response.trunk_eni_id, "");

        let target = release(&pb::ReleaseRequest {
            node: NODE.to_owned(),
            epoch: agent.epoch,
            request_id: "r-1".to_owned(),
            lease_id: lease.id,
            attachment: None,
            reason: pb::ReleaseReason::CniDel.into(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let reply = h
            .agent(NODE, Some("r-1"), target.write.body)
            .unwrap_or_else(|e| panic!("{e}"));
        let Reply::Released(released) = reply else {
            panic!("{reply:?}")
        };
        let cooled = lease_to_pb(&h.state, &released[0]);
        assert_eq!(cooled.state(), pb::LeaseState::Cooling);
        assert_eq!(cooled.cooling_until_unix_ms, 1_000_000 + 30_000);
    }

    #[test]
    fn bind_rejections_name_the_field() {
        let cases: Vec<(Mutation<pb::BindRequest>, &str)> = vec![
            (Box::new(|r| r.pod = None), "pod"),
            (Box::new(|r| r.attachment = None), "attachment"),
            (
                Box::new(|r| {
                    if let Some(p) = r.pod.as_mut() {
                        p.namespace.clear();
                    }
                }),
                "pod.namespace",
            ),
            (
                Box::new(|r| {
                    if let Some(p) = r.pod.as_mut() {
                        p.name.clear();
                    }
                }),
                "pod.name",
            ),
            (
                Box::new(|r| {
                    if let Some(a) = r.attachment.as_mut() {
                        a.container_id.clear();
                    }
                }),
                "attachment.container_id",
            ),
            (
                Box::new(|r| {
                    if let Some(a) = r.attachment.as_mut() {
                        a.ifname.clear();
                    }
                }),
                "attachment.ifname",
            ),
            (Box::new(|r| r.request_id.clear()), "request_id"),
            (Box::new(|r| r.node.clear()), "node"),
        ];
        for (mutate, field) in cases {
            let mut req = bind_request();
            mutate(&mut req);
            assert_eq!(bind(&req).err().map(|e| e.field().to_owned()).as_deref(), Some(field));
        }
    }

    #[test]
    fn release_selectors_and_reasons() {
        let req = pb::ReleaseRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "r-1".to_owned(),
            lease_id: 0,
            attachment: Some(pb::Attachment {
                container_id: "c0ffee".to_owned(),
                ifname: "eth0".to_owned(),
            }),
            reason: pb::ReleaseReason::Reconcile.into(),
        };
        let target = release(&req).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(target.lease_id, None);
        assert!(matches!(
            target.write.body,
            CommandBody::Release {
                lease: LeaseSelector::Attachment { .. },
                reason: ReleaseReason::Reconcile,
                ..
            }
        ));
        let both = release(&pb::ReleaseRequest {
            lease_id: 9,
            ..req.clone()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(both.lease_id, Some(9));
        assert_eq!(both.attachment, Some(("c0ffee".to_owned(), "eth0".to_owned())));
        assert!(matches!(
            both.write.body,
            CommandBody::Release {
                lease: LeaseSelector::Id(9),
                ..
            }
        ));
        let neither = release(&pb::ReleaseRequest {
            attachment: None,
            ..req.clone()
        });
        assert!(matches!(neither, Err(PbError::Conflict { .. })));
        for (reason, expected) in [
            (
                0,
                PbError::Unspecified {
                    field: "reason".to_owned(),
                    name: "ReleaseReason",
                },
            ),
            (
                99,
                PbError::UnknownEnum {
                    field: "reason".to_owned(),
                    name: "ReleaseReason",
                    value: 99,
                },
            ),
        ] {
            assert_eq!(
                release(&pb::ReleaseRequest { reason, ..req.clone() }).err(),
                Some(expected)
            );
        }
        for server_only in [
            pb::ReleaseReason::Gc,
            pb::ReleaseReason::Expired,
            pb::ReleaseReason::Operator,
            pb::ReleaseReason::NodeRemoved,
        ] {
            let refused = release(&pb::ReleaseRequest {
                reason: server_only.into(),
                ..req.clone()
            });
            assert!(
                matches!(refused, Err(PbError::EnumNotAllowed { .. })),
                "{server_only:?}"
            );
        }
        let half = release(&pb::ReleaseRequest {
            attachment: Some(pb::Attachment {
                container_id: String::new(),
                ifname: "eth0".to_owned(),
            }),
            ..req
        });
        assert_eq!(
            half.err().map(|e| e.field().to_owned()).as_deref(),
            Some("attachment.container_id")
        );
        assert_eq!(
            release_reason_to_pb(ReleaseReason::NodeRemoved),
            pb::ReleaseReason::NodeRemoved
        );
    }

    #[test]
    fn release_lease_conversion() {
        let req = pb::ReleaseLeaseRequest {
            request_id: "op-1".to_owned(),
            lease_id: 12,
        };
        assert_eq!(release_lease_id(&req).map(|(_, id)| id), Ok(12));
        assert_eq!(
            release_lease_id(&pb::ReleaseLeaseRequest { lease_id: 0, ..req }),
            Err(PbError::Missing {
                field: "lease_id".to_owned()
            })
        );
        assert_eq!(
            release_lease("n", 12),
            CommandBody::ReleaseLease {
                node: "n".to_owned(),
                lease: 12
            }
        );
    }

    #[test]
    fn gc_conversion() {
        let req = pb::GcRequest {
            node: NODE.to_owned(),
            epoch: 3,
            request_id: "gc-1".to_owned(),
            valid_attachments: vec![pb::Attachment {
                container_id: "c0ffee".to_owned(),
                ifname: "eth0".to_owned(),
            }],
            bound_before_unix_ms: 5_000,
        };
        assert!(matches!(
            gc(&req).map(|w| w.body),
            Ok(CommandBody::Gc { valid, bound_before: 5_000, .. }) if valid == vec![("c0ffee".to_owned(), "eth0".to_owned())]
        ));
        let zero = gc(&pb::GcRequest {
            bound_before_unix_ms: 0,
            ..req.clone()
        });
        assert_eq!(
            zero.err().map(|e| e.field().to_owned()).as_deref(),
            Some("bound_before_unix_ms")
        );
        let bad = gc(&pb::GcRequest {
            valid_attachments: vec![pb::Attachment::default()],
            ..req
        });
        assert_eq!(
            bad.err().map(|e| e.field().to_owned()).as_deref(),
            Some("valid_attachments[0].container_id")
        );
    }
}
