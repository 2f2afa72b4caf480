//! Field-level parsing shared by the message conversions: required strings, IPv4 addresses and
//! CIDRs, request ids, protobuf enums. Each failure names the field.

use std::net::Ipv4Addr;

use ipam_core::DomainError;
use ipam_core::cidr::Ipv4Cidr;
use ipam_core::ids::RequestId;

use super::error::PbError;
use super::error::Result;

/// A string that must not be empty, owned.
pub fn required(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(PbError::Empty {
            field: field.to_owned(),
        });
    }
    Ok(value.to_owned())
}

/// A required sub-message.
pub fn message<'a, T>(field: &str, value: Option<&'a T>) -> Result<&'a T> {
    value.ok_or_else(|| PbError::Missing {
        field: field.to_owned(),
    })
}

/// A required IPv4 address in dotted-quad form.
pub fn ip(field: &str, value: &str) -> Result<Ipv4Addr> {
    if value.is_empty() {
        return Err(PbError::Empty {
            field: field.to_owned(),
        });
    }
    if value.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(PbError::OutOfRange {
            field: field.to_owned(),
            value: value.to_owned(),
            why: "an IPv6 address; this IPAM leases IPv4 addresses only (pods' 100.64/10 addresses)".to_owned(),
        });
    }
    value.parse().map_err(|_| PbError::InvalidIp {
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

/// An optional IPv4 address: empty means unset.
pub fn optional_ip(field: &str, value: &str) -> Result<Option<Ipv4Addr>> {
    if value.is_empty() {
        return Ok(None);
    }
    ip(field, value).map(Some)
}

/// A list of IPv4 addresses; the error names the element (`ips[2]`).
pub fn ips(field: &str, values: &[String]) -> Result<Vec<Ipv4Addr>> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| ip(&format!("{field}[{i}]"), value))
        .collect()
}

/// A required IPv4 CIDR (`100.64.0.0/16`, host bits clear).
pub fn cidr(field: &str, value: &str) -> Result<Ipv4Cidr> {
    if value.is_empty() {
        return Err(PbError::Empty {
            field: field.to_owned(),
        });
    }
    value.parse().map_err(|e: DomainError| {
        let why = match e {
            DomainError::InvalidCidr { why, .. } => why.to_owned(),
            other => other.to_string(),
        };
        PbError::InvalidCidr {
            field: field.to_owned(),
            value: value.to_owned(),
            why,
        }
    })
}

/// A required request id (1 to 64 printable ASCII characters without spaces).
pub fn request_id(field: &str, value: &str) -> Result<RequestId> {
    RequestId::new(value).map_err(|_| PbError::InvalidRequestId {
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

/// A request id that may be empty (heartbeats): empty means none.
pub fn optional_request_id(field: &str, value: &str) -> Result<Option<RequestId>> {
    if value.is_empty() {
        return Ok(None);
    }
    request_id(field, value).map(Some)
}

/// A protobuf enum field: a known value, possibly `UNSPECIFIED` (the caller decides what 0 means).
pub fn known_enum<E>(field: &str, name: &'static str, value: i32) -> Result<E>
where
    E: TryFrom<i32>,
{
    E::try_from(value).map_err(|_| PbError::UnknownEnum {
        field: field.to_owned(),
        name,
        value,
    })
}

/// A protobuf enum field that must be set: 0 (`UNSPECIFIED`) is refused, as is an unknown value.
/// `to_domain` maps the known values and answers `None` for `UNSPECIFIED`.
pub fn required_enum<E, D>(
    field: &str,
    name: &'static str,
    value: i32,
    to_domain: impl FnOnce(E) -> Option<D>,
) -> Result<D>
where
    E: TryFrom<i32>,
{
    let known: E = known_enum(field, name, value)?;
    to_domain(known).ok_or_else(|| PbError::Unspecified {
        field: field.to_owned(),
        name,
    })
}

/// A protobuf filter enum: `UNSPECIFIED` means "any" (`None`); an unknown value is refused.
pub fn filter_enum<E, D>(
    field: &str,
    name: &'static str,
    value: i32,
    to_domain: impl FnOnce(E) -> Option<D>,
) -> Result<Option<D>>
where
    E: TryFrom<i32>,
{
    let known: E = known_enum(field, name, value)?;
    Ok(to_domain(known))
}

/// A `u32` that must fit a narrower domain integer.
pub fn narrow<T>(field: &str, value: u32, why: &str) -> Result<T>
where
    T: TryFrom<u32>,
{
    T::try_from(value).map_err(|_| PbError::OutOfRange {
        field: field.to_owned(),
        value: value.to_string(),
        why: why.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use ipam_proto::ipam::v1 as pb;

    use super::*;

    #[test]
    fn strings_and_messages() {
        assert_eq!(required("node", "n1"), Ok("n1".to_owned()));
        assert_eq!(
            required("node", ""),
            Err(PbError::Empty {
                field: "node".to_owned()
            })
        );
        let limits = pb::NodeLimits::default();
        assert_eq!(message("limits", Some(&limits)), Ok(&limits));
        assert_eq!(
            message::<pb::NodeLimits>("limits", None),
            Err(PbError::Missing {
                field: "limits".to_owned()
            })
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(ip("ip", "100.64.3.48"), Ok(Ipv4Addr::new(100, 64, 3, 48)));
        for bad in ["100.64.3", "100.64.3.256", "100.64.3.48/32", " 100.64.3.48"] {
            assert_eq!(
                ip("ip", bad),
                Err(PbError::InvalidIp {
                    field: "ip".to_owned(),
                    value: bad.to_owned()
                }),
                "{bad}"
            );
        }
        assert_eq!(ip("ip", ""), Err(PbError::Empty { field: "ip".to_owned() }));
        // Another family is named as such, not as a typo.
        let v6 = ip("ip", "::1").map_err(|e| e.to_string());
        assert!(
            v6.as_ref()
                .is_err_and(|e| e.contains("IPv6") && e.contains("IPv4 addresses only")),
            "{v6:?}"
        );
        assert_eq!(optional_ip("primary_ip", ""), Ok(None));
        assert_eq!(
            optional_ip("primary_ip", "10.0.0.1"),
            Ok(Some(Ipv4Addr::new(10, 0, 0, 1)))
        );
        let error = ips("in_use_ips", &["10.0.0.1".to_owned(), "nope".to_owned()]);
        assert_eq!(error.map_err(|e| e.field().to_owned()), Err("in_use_ips[1]".to_owned()));
    }

    #[test]
    fn cidrs() {
        let ok = cidr("cidr", "100.64.0.0/16");
        assert_eq!(ok.map(|c| c.to_string()), Ok("100.64.0.0/16".to_owned()));
        for (bad, why) in [
            ("100.64.0.1/16", "host bits"),
            ("100.64.0.0", "expected ADDRESS/PREFIX"),
            ("100.64.0.0/33", "prefix length"),
            ("banana/8", "dotted-quad"),
        ] {
            match cidr("pool.cidr", bad) {
                Err(PbError::InvalidCidr { field, value, why: got }) => {
                    assert_eq!(field, "pool.cidr");
                    assert_eq!(value, bad);
                    assert!(got.contains(why), "{bad}: {got}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(
            cidr("cidr", ""),
            Err(PbError::Empty {
                field: "cidr".to_owned()
            })
        );
    }

    #[test]
    fn request_ids() {
        assert_eq!(
            request_id("request_id", "r-1").map(|r| r.as_str().to_owned()),
            Ok("r-1".to_owned())
        );
        for bad in ["", "has space", &"x".repeat(65)] {
            assert_eq!(
                request_id("request_id", bad),
                Err(PbError::InvalidRequestId {
                    field: "request_id".to_owned(),
                    value: bad.to_owned()
                })
            );
        }
        assert_eq!(optional_request_id("request_id", ""), Ok(None));
        assert!(optional_request_id("request_id", "a b").is_err());
    }

    #[test]
    fn enums() {
        let kind = |value| {
            required_enum("kind", "EniKind", value, |k: pb::EniKind| match k {
                pb::EniKind::Unspecified => None,
                other => Some(other),
            })
        };
        assert_eq!(kind(1), Ok(pb::EniKind::Secondary));
        assert_eq!(
            kind(0),
            Err(PbError::Unspecified {
                field: "kind".to_owned(),
                name: "EniKind"
            })
        );
        assert_eq!(
            kind(42),
            Err(PbError::UnknownEnum {
                field: "kind".to_owned(),
                name: "EniKind",
                value: 42
            })
        );
        let filter = |value| {
            filter_enum("state", "NodeState", value, |s: pb::NodeState| {
                (s != pb::NodeState::Unspecified).then_some(s)
            })
        };
        assert_eq!(filter(0), Ok(None));
        assert_eq!(filter(2), Ok(Some(pb::NodeState::Expired)));
        assert!(filter(-1).is_err());
        assert_eq!(narrow::<u8>("max_enis", 255, "at most 255"), Ok(255));
        assert_eq!(
            narrow::<u8>("max_enis", 256, "at most 255"),
            Err(PbError::OutOfRange {
                field: "max_enis".to_owned(),
                value: "256".to_owned(),
                why: "at most 255".to_owned()
            })
        );
    }
}
