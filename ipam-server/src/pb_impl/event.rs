//! Ledger events on the wire (`ipam.v1.Event`).

use ipam_core::Event;
use ipam_core::ids::Actor;
use ipam_proto::ipam::v1 as pb;

use crate::pb_impl::error::PbError;

/// The wire form of the event at `seq`.
pub fn event_to_pb(seq: u64, event: &Event) -> pb::Event {
    let touches = event.kind.touches();
    let (kind, name) = match &event.actor {
        Actor::Agent(node) => (pb::ActorKind::Agent, node.clone()),
        Actor::Controller => (pb::ActorKind::Controller, "controller".to_owned()),
        Actor::Operator(who) => (pb::ActorKind::Operator, who.clone()),
    };
    pb::Event {
        seq,
        log_index: event.index,
        at_unix_ms: i64::try_from(event.at).unwrap_or(i64::MAX),
        actor: Some(pb::Actor {
            kind: kind.into(),
            name,
        }),
        cause: touches.cause.to_owned(),
        kind: event.kind.name().to_owned(),
        payload_json: serde_json::to_string(&event.kind).unwrap_or_default(),
        request_id: event.kind.request().map(|(_, r)| r.to_string()).unwrap_or_default(),
        ips: touches.ips.iter().map(ToString::to_string).collect(),
        node: touches.node.unwrap_or_default().to_owned(),
        pod: touches.owner.map(|o| pb::PodRef {
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
        }),
        eni_ref: touches.eni.unwrap_or_default(),
        eni_id: touches.eni_id.unwrap_or_default().to_owned(),
        lease_id: touches.lease_id.unwrap_or_default(),
        security_group_ids: touches.security_groups.to_vec(),
    }
}

/// Which events a watcher wants, checked against the domain event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMatcher {
    kinds: Vec<String>,
    key: Option<(pb::EventKeyKind, String)>,
}

impl EventMatcher {
    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == event.kind.name()) {
            return false;
        }
        let Some((kind, key)) = &self.key else {
            return true;
        };
        let t = event.kind.touches();
        match kind {
            pb::EventKeyKind::Ip => t.ips.iter().any(|ip| ip.to_string() == *key),
            pb::EventKeyKind::PodUid => t.owner.is_some_and(|o| o.uid == *key),
            pb::EventKeyKind::PodName => t.owner.is_some_and(|o| format!("{}/{}", o.namespace, o.name) == *key),
            pb::EventKeyKind::Node => t.node == Some(key.as_str()),
            pb::EventKeyKind::Eni => t.eni_id == Some(key.as_str()) || t.eni.is_some_and(|eni| eni.to_string() == *key),
            pb::EventKeyKind::SecurityGroup => t.security_groups.iter().any(|sg| sg == key),
            pb::EventKeyKind::Unspecified => true,
        }
    }
}

impl TryFrom<Option<pb::EventFilter>> for EventMatcher {
    type Error = PbError;

    fn try_from(filter: Option<pb::EventFilter>) -> Result<Self, PbError> {
        let Some(filter) = filter else {
            return Ok(Self::default());
        };
        let kind = pb::EventKeyKind::try_from(filter.key_kind).map_err(|_| PbError::UnknownEnum {
            field: "filter.key_kind".to_owned(),
            name: "EventKeyKind",
            value: filter.key_kind,
        })?;
        let key = match kind {
            pb::EventKeyKind::Unspecified if filter.key.is_empty() => None,
            pb::EventKeyKind::Unspecified => {
                return Err(PbError::Conflict {
                    fields: "filter.key_kind, filter.key".to_owned(),
                    why: "a key needs a key_kind",
                });
            }
            _ if filter.key.is_empty() => {
                return Err(PbError::Empty {
                    field: "filter.key".to_owned(),
                });
            }
            pb::EventKeyKind::Ip => {
                let ip: std::net::Ipv4Addr = filter.key.parse().map_err(|_| PbError::InvalidIp {
                    field: "filter.key".to_owned(),
                    value: filter.key.clone(),
                })?;
                Some((kind, ip.to_string()))
            }
            pb::EventKeyKind::PodName if !filter.key.contains('/') => {
                return Err(PbError::OutOfRange {
                    field: "filter.key".to_owned(),
                    value: filter.key,
                    why: "write a pod name as NAMESPACE/NAME".to_owned(),
                });
            }
            _ => Some((kind, filter.key)),
        };
        Ok(Self {
            kinds: filter.kinds,
            key,
        })
    }
}
