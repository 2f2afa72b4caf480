//! Subnet configs (ENIConfigs): `pb::SubnetConfig` ⇄ [`SubnetConfigSpec`].

use ipam_core::CommandBody;
use ipam_core::command::SubnetConfigSpec;
use ipam_core::ids::RequestId;
use ipam_proto::ipam::v1 as pb;

use super::Write;
use super::error::Result;
use super::field;

/// A subnet config from the wire. The name, subnet id, CIDR and zone are required;
/// `updated_at_unix_ms` is ignored (the server sets it). The domain checks the syntax of the ids
/// and the zone.
pub fn subnet_config_from_pb(config: &pb::SubnetConfig) -> Result<SubnetConfigSpec> {
    Ok(SubnetConfigSpec {
        name: field::required("name", &config.name)?,
        subnet_id: field::required("subnet_id", &config.subnet_id)?,
        cidr: field::cidr("subnet_cidr", &config.subnet_cidr)?,
        az: field::required("availability_zone", &config.availability_zone)?,
        security_groups: config.security_group_ids.clone(),
    })
}

/// A subnet config as the API shows it. The domain does not record when it changed, so
/// `updated_at_unix_ms` is 0.
pub fn subnet_config_to_pb(spec: &SubnetConfigSpec) -> pb::SubnetConfig {
    pb::SubnetConfig {
        name: spec.name.clone(),
        subnet_id: spec.subnet_id.clone(),
        subnet_cidr: spec.cidr.to_string(),
        availability_zone: spec.az.clone(),
        security_group_ids: spec.security_groups.clone(),
        updated_at_unix_ms: 0,
    }
}

/// `UpsertSubnetConfig`'s request id and config (the command is
/// `CommandBody::UpsertSubnetConfig(spec)`).
pub fn upsert_subnet_config(req: &pb::UpsertSubnetConfigRequest) -> Result<(RequestId, SubnetConfigSpec)> {
    let request_id = field::request_id("request_id", &req.request_id)?;
    let config = field::message("subnet_config", req.subnet_config.as_ref())?;
    let spec = subnet_config_from_pb(config).map_err(|e| e.within("subnet_config"))?;
    Ok((request_id, spec))
}

/// `DeleteSubnetConfig`'s command.
pub fn delete_subnet_config(req: &pb::DeleteSubnetConfigRequest) -> Result<Write> {
    Ok(Write {
        request_id: Some(field::request_id("request_id", &req.request_id)?),
        body: CommandBody::DeleteSubnetConfig {
            name: field::required("name", &req.name)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb_impl::error::PbError;

    fn config() -> pb::SubnetConfig {
        pb::SubnetConfig {
            name: "us-west-2a".to_owned(),
            subnet_id: "subnet-0a1b2c3d".to_owned(),
            subnet_cidr: "100.64.0.0/19".to_owned(),
            availability_zone: "us-west-2a".to_owned(),
            security_group_ids: vec!["sg-0123456789abcdef0".to_owned()],
            updated_at_unix_ms: 0,
        }
    }

    #[test]
    fn round_trip() {
        let pb = config();
        let spec = subnet_config_from_pb(&pb).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.cidr.to_string(), "100.64.0.0/19");
        assert_eq!(subnet_config_to_pb(&spec), pb);
    }

    #[test]
    fn upsert_names_the_nested_field() {
        let mut bad = config();
        bad.subnet_cidr = "100.64.0.1/19".to_owned();
        let req = pb::UpsertSubnetConfigRequest {
            request_id: "r".to_owned(),
            subnet_config: Some(bad),
        };
        let error = upsert_subnet_config(&req).err().map(|e| e.field().to_owned());
        assert_eq!(error.as_deref(), Some("subnet_config.subnet_cidr"));
        for (mutate, field) in [
            (
                Box::new(|c: &mut pb::SubnetConfig| c.name.clear()) as Box<dyn Fn(&mut pb::SubnetConfig)>,
                "subnet_config.name",
            ),
            (Box::new(|c| c.subnet_id.clear()), "subnet_config.subnet_id"),
            (
                Box::new(|c| c.availability_zone.clear()),
                "subnet_config.availability_zone",
            ),
            (Box::new(|c| c.subnet_cidr.clear()), "subnet_config.subnet_cidr"),
        ] {
            let mut c = config();
            mutate(&mut c);
            let req = pb::UpsertSubnetConfigRequest {
                request_id: "r".to_owned(),
                subnet_config: Some(c),
            };
            assert_eq!(
                upsert_subnet_config(&req)
                    .err()
                    .map(|e| e.field().to_owned())
                    .as_deref(),
                Some(field)
            );
        }
        let missing = pb::UpsertSubnetConfigRequest {
            request_id: "r".to_owned(),
            subnet_config: None,
        };
        assert_eq!(
            upsert_subnet_config(&missing),
            Err(PbError::Missing {
                field: "subnet_config".to_owned()
            })
        );
        let no_name = pb::DeleteSubnetConfigRequest {
            request_id: "r".to_owned(),
            name: String::new(),
        };
        assert_eq!(
            delete_subnet_config(&no_name)
                .err()
                .map(|e| e.field().to_owned())
                .as_deref(),
            Some("name")
        );
    }
}
