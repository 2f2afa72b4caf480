//! Checks of input that comes from outside: names, EC2 ids, MACs, settings. Each failure says
//! what was wrong and what is allowed.

use crate::command::Owner;
use crate::error::DomainError;
use crate::error::Result;
use crate::policy;
use crate::policy::MAX_SECURITY_GROUPS;
use crate::policy::PodMeta;
use crate::state::Settings;

/// A Kubernetes object name (RFC 1123 subdomain), e.g. a node or an ENIConfig.
pub fn object_name(what: &'static str, value: &str) -> Result<()> {
    let why = if value.is_empty() {
        Some("is empty")
    } else {
        policy::dns1123_subdomain_problem(value)
    };
    match why {
        None => Ok(()),
        Some(why) => Err(DomainError::InvalidName {
            what,
            value: value.to_owned(),
            why: why.to_owned(),
        }),
    }
}

/// An EC2 id: `<kind>-` and 8 or 17 lowercase hex digits (`i-…`, `eni-…`, `subnet-…`).
pub fn aws_id(kind: &'static str, id: &str) -> Result<()> {
    let ok = id
        .strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    if ok {
        Ok(())
    } else {
        Err(DomainError::InvalidAwsId {
            kind,
            id: id.to_owned(),
        })
    }
}

/// An availability zone name such as `us-west-2a`.
pub fn az(az: &str) -> Result<()> {
    let ok = !az.is_empty()
        && az.len() <= 32
        && az
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(DomainError::InvalidAz { az: az.to_owned() })
    }
}

/// A MAC address `xx:xx:xx:xx:xx:xx`; returned in lower case, as EC2 and the kernel print it.
pub fn mac(mac: &str) -> Result<String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(mac.to_ascii_lowercase())
    } else {
        Err(DomainError::InvalidMac { mac: mac.to_owned() })
    }
}

/// Security group ids: well formed, and between `min` and 5 of them.
pub fn security_groups(groups: &[String], min: usize) -> Result<()> {
    for id in groups {
        policy::check_security_group_id(id)?;
    }
    let count = crate::decide::normalize_groups(groups).len();
    if count < min || count > MAX_SECURITY_GROUPS {
        return Err(DomainError::SecurityGroupCount {
            count,
            min,
            max: MAX_SECURITY_GROUPS,
        });
    }
    Ok(())
}

/// The pod side of a bind.
pub fn owner(owner: &Owner, pod: &PodMeta) -> Result<()> {
    let bad = |why: &'static str| Err(DomainError::InvalidOwner { why });
    if owner.namespace.is_empty() || owner.name.is_empty() {
        return bad("the pod namespace and name are required (CNI_ARGS K8S_POD_NAMESPACE, K8S_POD_NAME)");
    }
    if owner.container_id.is_empty() || owner.container_id.len() > 255 {
        return bad("the container id must be 1 to 255 characters");
    }
    if owner.ifname.is_empty() || owner.ifname.len() > 15 || owner.ifname.contains(['/', ' ', ':']) {
        return bad("the interface name must be 1 to 15 characters without '/', ':' or spaces");
    }
    if pod.namespace != owner.namespace || pod.name != owner.name {
        return bad("the pod metadata names another pod than the attachment");
    }
    Ok(())
}

/// Cluster-wide settings.
pub fn settings(s: &Settings) -> Result<()> {
    let bad = |why: &'static str| Err(DomainError::InvalidSettings { why });
    if s.heartbeat_ttl_ms < 1_000 {
        return bad("heartbeat_ttl_ms must be at least 1000");
    }
    if s.branch_cooldown_ms < 30_000 {
        return bad("branch_cooldown_ms must be at least 30000 (AWS's minimum)");
    }
    let prefix_ok = !s.token_prefix.is_empty()
        && s.token_prefix.len() <= 32
        && s.token_prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !prefix_ok {
        return bad("token_prefix must be 1 to 32 characters of [a-z0-9-]");
    }
    if s.recent_requests_per_node == 0 {
        return bad("recent_requests_per_node must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_ids() {
        assert!(aws_id("eni", "eni-0123456789abcdef0").is_ok());
        assert!(aws_id("i", "i-1234abcd").is_ok());
        for bad in [
            "eni-0123",
            "eni-0123456789ABCDEF0",
            "i-0123456789abcdef0",
            "eni0123456789abcdef0",
            "",
        ] {
            assert!(
                matches!(aws_id("eni", bad), Err(DomainError::InvalidAwsId { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn macs() {
        assert_eq!(mac("0E:12:AB:cd:00:ff").ok().as_deref(), Some("0e:12:ab:cd:00:ff"));
        for bad in ["0e:12:ab:cd:00", "0e:12:ab:cd:00:fg", "0e-12-ab-cd-00-ff", ""] {
            assert!(mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_settings() {
        assert!(object_name("node name", "ip-10-0-1-2.us-west-2.compute.internal").is_ok());
        assert!(object_name("node name", "Node_1").is_err());
        assert!(object_name("node name", "").is_err());
        assert!(settings(&Settings::default()).is_ok());
        let short = Settings {
            branch_cooldown_ms: 10_000,
            ..Settings::default()
        };
        assert!(matches!(settings(&short), Err(DomainError::InvalidSettings { .. })));
    }

    #[test]
    fn group_counts() {
        let g = |n: usize| (0..n).map(|i| format!("sg-0000000{i}")).collect::<Vec<_>>();
        assert!(security_groups(&g(0), 0).is_ok());
        assert!(security_groups(&g(0), 1).is_err());
        assert!(security_groups(&g(5), 1).is_ok());
        assert!(matches!(
            security_groups(&g(6), 1),
            Err(DomainError::SecurityGroupCount { count: 6, .. })
        ));
        assert!(security_groups(&["sg xyz".to_owned()], 0).is_err());
        assert!(security_groups(&["example_sg".to_owned()], 1).is_ok());
    }
}
