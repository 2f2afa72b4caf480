//! The address space: `CreatePoolRequest` → `CommandBody::CreatePool`, a pool CIDR → `pb::Pool`,
//! and `UnquarantineRequest` → `CommandBody::Unquarantine`.

use ipam_core::CommandBody;
use ipam_core::cidr::Ipv4Cidr;
use ipam_core::ids::RequestId;
use ipam_proto::ipam::v1 as pb;

use super::Write;
use super::error::Result;
use super::field;

/// `CreatePool`'s request id and CIDR (the command is `CommandBody::CreatePool { cidr }`).
pub fn create_pool(req: &pb::CreatePoolRequest) -> Result<(RequestId, Ipv4Cidr)> {
    Ok((
        field::request_id("request_id", &req.request_id)?,
        field::cidr("cidr", &req.cidr)?,
    ))
}

/// `Unquarantine`'s command.
pub fn unquarantine(req: &pb::UnquarantineRequest) -> Result<Write> {
    Ok(Write {
        request_id: Some(field::request_id("request_id", &req.request_id)?),
        body: CommandBody::Unquarantine {
            ip: field::ip("ip", &req.ip)?,
        },
    })
}

/// A pool as the API shows it. The domain does not record when a pool was created, so
/// `created_at_unix_ms` is 0 ("not set").
pub fn pool_to_pb(cidr: &Ipv4Cidr) -> pb::Pool {
    pb::Pool {
        cidr: cidr.to_string(),
        created_at_unix_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb_impl::error::PbError;

    #[test]
    fn create_pool_round_trip() {
        let req = pb::CreatePoolRequest {
            request_id: "pool-1".to_owned(),
            cidr: "100.64.0.0/16".to_owned(),
        };
        let (request_id, cidr) = create_pool(&req).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request_id.as_str(), "pool-1");
        assert_eq!(pool_to_pb(&cidr).cidr, req.cidr);
    }

    #[test]
    fn create_pool_rejections() {
        let bad_cidr = pb::CreatePoolRequest {
            request_id: "pool-1".to_owned(),
            cidr: "100.64.0.0/40".to_owned(),
        };
        assert!(matches!(create_pool(&bad_cidr), Err(PbError::InvalidCidr { field, .. }) if field == "cidr"));
        let no_id = pb::CreatePoolRequest {
            request_id: String::new(),
            cidr: "100.64.0.0/16".to_owned(),
        };
        assert!(matches!(create_pool(&no_id), Err(PbError::InvalidRequestId { field, .. }) if field == "request_id"));
        let unq = pb::UnquarantineRequest {
            request_id: "u".to_owned(),
            ip: "100.64.1.9".to_owned(),
        };
        assert_eq!(
            unquarantine(&unq).map(|w| w.body),
            Ok(CommandBody::Unquarantine {
                ip: std::net::Ipv4Addr::new(100, 64, 1, 9)
            })
        );
        let bad = unquarantine(&pb::UnquarantineRequest {
            ip: "100.64.1".to_owned(),
            ..unq
        });
        assert!(matches!(bad, Err(PbError::InvalidIp { field, .. }) if field == "ip"));
    }
}
