//! Ledger events on the wire (`ipam.v1.Event`).

use ipam_core::Event;
use ipam_core::State;
use ipam_core::ids::Actor;
use ipam_proto::ipam::v1 as pb;

use crate::ledger::Binding;
use crate::ledger::Key;
use crate::ledger::index;
use crate::pb_impl::error::PbError;
use crate::pb_impl::field;
use crate::pb_impl::lease::lease_to_pb;
use crate::pb_impl::lease::release_reason_to_pb;
use crate::pb_impl::time;

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

/// A key as a request names it: an ENI may be named by EC2's id, which the ledger resolves to
/// the server's handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestedKey {
    /// A key the indexes hold directly.
    Key(Key),
    /// An ENI by EC2's id ("eni-…").
    EniId(String),
}

/// The key named by `kind` and `key` (fields `kind_field` and `key_field`); `None` when neither
/// is set.
///
/// # Errors
///
/// A key without a kind, a kind without a key, an unknown kind, or a key that is not of its
/// kind's form (an IPv6 or malformed address, a pod name without a namespace, …).
pub fn key_from_pb(kind_field: &str, key_field: &str, kind: i32, key: &str) -> Result<Option<RequestedKey>, PbError> {
    let kind = pb::EventKeyKind::try_from(kind).map_err(|_| PbError::UnknownEnum {
        field: kind_field.to_owned(),
        name: "EventKeyKind",
        value: kind,
    })?;
    if kind == pb::EventKeyKind::Unspecified && key.is_empty() {
        return Ok(None);
    }
    if key.is_empty() {
        return Err(PbError::Empty {
            field: key_field.to_owned(),
        });
    }
    let bad = |why: &str| PbError::OutOfRange {
        field: key_field.to_owned(),
        value: key.to_owned(),
        why: why.to_owned(),
    };
    Ok(Some(match kind {
        pb::EventKeyKind::Unspecified => {
            return Err(PbError::Conflict {
                fields: format!("{kind_field}, {key_field}"),
                why: "a key needs a key_kind",
            });
        }
        pb::EventKeyKind::Ip => RequestedKey::Key(Key::Ip(field::ip(key_field, key)?)),
        pb::EventKeyKind::PodUid => RequestedKey::Key(Key::PodUid(key.to_owned())),
        pb::EventKeyKind::PodName => match key.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                RequestedKey::Key(Key::PodName {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => return Err(bad("write a pod name as NAMESPACE/NAME")),
        },
        pb::EventKeyKind::Node => RequestedKey::Key(Key::Node(key.to_owned())),
        pb::EventKeyKind::Eni if key.starts_with("eni-") => RequestedKey::EniId(key.to_owned()),
        pb::EventKeyKind::Eni => match key.parse::<u64>() {
            Ok(eni) => RequestedKey::Key(Key::Eni(eni)),
            Err(_) => return Err(bad("an ENI is EC2's id (eni-…) or the server's handle in decimal")),
        },
        pb::EventKeyKind::SecurityGroup => RequestedKey::Key(Key::SecurityGroup(key.to_owned())),
    }))
}

/// Which events a watcher wants, checked against the domain event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMatcher {
    kinds: Vec<String>,
    key: Option<RequestedKey>,
}

impl EventMatcher {
    /// Whether `event` passes: of a wanted kind, and touching the key as the indexes see it.
    pub fn matches(&self, event: &Event) -> bool {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == event.kind.name()) {
            return false;
        }
        match &self.key {
            None => true,
            Some(RequestedKey::Key(key)) => index::keys_of(event).contains(key),
            Some(RequestedKey::EniId(eni_id)) => event.kind.touches().eni_id == Some(eni_id.as_str()),
        }
    }
}

impl TryFrom<Option<pb::EventFilter>> for EventMatcher {
    type Error = PbError;

    fn try_from(filter: Option<pb::EventFilter>) -> Result<Self, PbError> {
        let Some(filter) = filter else {
            return Ok(Self::default());
        };
        Ok(Self {
            key: key_from_pb("filter.key_kind", "filter.key", filter.key_kind, &filter.key)?,
            kinds: filter.kinds,
        })
    }
}

/// A binding as WhoHad answers it; `state` (as the read was served) supplies the subnet.
pub fn binding_to_pb(state: &State, binding: &Binding) -> pb::Binding {
    let mut lease = lease_to_pb(state, &binding.lease);
    lease.state = match binding.released {
        None => pb::LeaseState::Bound,
        Some(_) => pb::LeaseState::Cooling,
    }
    .into();
    // The cooldown of this binding's release, not whatever the address is doing now.
    lease.cooling_until_unix_ms = binding.released.map_or(0, |r| time::to_unix_ms(r.cooling_until));
    pb::Binding {
        instance_id: binding.lease.instance_id.clone(),
        released_at_unix_ms: binding.released.map_or(0, |r| time::to_unix_ms(r.at)),
        release_reason: binding
            .released
            .map_or(pb::ReleaseReason::Unspecified, |r| release_reason_to_pb(r.reason))
            .into(),
        lease: Some(lease),
    }
}

/// The page token that continues after `seq`.
pub fn page_token(seq: u64) -> String {
    format!("s{seq}")
}

/// The seq a page token continues after (0 for none).
///
/// # Errors
///
/// The token is not one this server issued.
pub fn seq_from_page_token(field: &str, token: &str) -> Result<u64, PbError> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix('s')
        .and_then(|seq| seq.parse().ok())
        .ok_or_else(|| PbError::OutOfRange {
            field: field.to_owned(),
            value: token.to_owned(),
            why: "not a page token this server issued (pass a previous reply's next_page_token unchanged)".to_owned(),
        })
}
