//! Who this node is on EC2: its instance, type, zone, primary address and ENI, subnet and VPC.
//!
//! ```text
//!   IdentitySource::Imds ──▶ IMDSv2 (aws_config::imds::Client)
//!     PUT /latest/api/token ──▶ token (cached by the client, sent as x-aws-ec2-metadata-token)
//!     GET /latest/meta-data/instance-id, instance-type, placement/availability-zone,
//!         placement/region, local-ipv4, mac,
//!         network/interfaces/macs/<mac>/{interface-id, subnet-id, vpc-ipv4-cidr-blocks}
//!                                                       ──▶ checked ──▶ Identity
//!   IdentitySource::Given(Identity) ──▶ as given (flags, the simulator), checked by from_flags
//! ```
//!
//! Every value is checked before it is used: a missing path (IMDS answers 404) or a value that is
//! not what EC2 writes (an address that does not parse, a MAC of the wrong shape) is an
//! [`IdentityError`] naming the path or flag, never a default. The agent cannot do anything
//! useful without knowing which instance it runs on.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use aws_config::imds;
use aws_sdk_ec2::error::DisplayErrorContext;
use ipam_core::cidr::Ipv4Cidr;
use serde::Deserialize;
use serde::Serialize;

/// How long one IMDS request may take before the client gives up on it (IMDS answers in
/// milliseconds on a real instance; a missing IMDS must not stall the agent's start for long).
const IMDS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long all IMDS attempts of one request may take together.
const IMDS_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A field of the identity, as IMDS and the flags name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The instance id.
    InstanceId,
    /// The instance type.
    InstanceType,
    /// The availability zone.
    AvailabilityZone,
    /// The region.
    Region,
    /// The primary private IPv4 address.
    PrimaryIp,
    /// The primary ENI's MAC address.
    PrimaryMac,
    /// The primary ENI's id.
    PrimaryEniId,
    /// The primary ENI's subnet.
    SubnetId,
    /// The VPC's IPv4 CIDR blocks.
    VpcCidrs,
}

impl Field {
    /// The command-line flag that gives the field.
    pub const fn flag(self) -> &'static str {
        match self {
            Self::InstanceId => "--instance-id",
            Self::InstanceType => "--instance-type",
            Self::AvailabilityZone => "--availability-zone",
            Self::Region => "--region",
            Self::PrimaryIp => "--primary-ip",
            Self::PrimaryMac => "--primary-mac",
            Self::PrimaryEniId => "--primary-eni-id",
            Self::SubnetId => "--subnet-id",
            Self::VpcCidrs => "--vpc-cidrs",
        }
    }

    /// The IMDS path under `/latest/meta-data/` (`<mac>` stands for the primary MAC).
    pub const fn imds_path(self) -> &'static str {
        match self {
            Self::InstanceId => "instance-id",
            Self::InstanceType => "instance-type",
            Self::AvailabilityZone => "placement/availability-zone",
            Self::Region => "placement/region",
            Self::PrimaryIp => "local-ipv4",
            Self::PrimaryMac => "mac",
            Self::PrimaryEniId => "network/interfaces/macs/<mac>/interface-id",
            Self::SubnetId => "network/interfaces/macs/<mac>/subnet-id",
            Self::VpcCidrs => "network/interfaces/macs/<mac>/vpc-ipv4-cidr-blocks",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::InstanceId => "instance id",
            Self::InstanceType => "instance type",
            Self::AvailabilityZone => "availability zone",
            Self::Region => "region",
            Self::PrimaryIp => "primary IPv4 address",
            Self::PrimaryMac => "primary MAC address",
            Self::PrimaryEniId => "primary ENI id",
            Self::SubnetId => "subnet id",
            Self::VpcCidrs => "VPC IPv4 CIDR blocks",
        };
        f.write_str(name)
    }
}

/// Where an identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The instance metadata service (IMDSv2).
    Imds,
    /// Flags or the environment (local runs, the simulator).
    Flags,
}

/// Why the node's identity could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The IMDS endpoint override is not a URI.
    #[error("IMDS endpoint {endpoint:?} is not a URI: {why}")]
    BadEndpoint {
        /// As given.
        endpoint: String,
        /// What the parser said.
        why: String,
    },
    /// IMDS has nothing at a path the agent needs (it answered 404).
    #[error("IMDS has no {field} at /latest/meta-data/{path} (404)")]
    ImdsMissing {
        /// The field.
        field: Field,
        /// The path asked for, under `/latest/meta-data/`.
        path: String,
    },
    /// IMDS could not be asked, refused the token or failed.
    #[error("IMDS {field} at /latest/meta-data/{path}: {message}")]
    Imds {
        /// The field.
        field: Field,
        /// The path asked for, under `/latest/meta-data/`.
        path: String,
        /// The client's error, with its causes.
        message: String,
    },
    /// A required flag was not given.
    #[error("{field} is required with flag identity: set {flag}", flag = .field.flag())]
    MissingFlag {
        /// The field.
        field: Field,
    },
    /// A value (from IMDS or a flag) is not what EC2 writes.
    #[error("{field} from {place}: {value:?} {why}", place = place(*.field, *.origin))]
    BadValue {
        /// The field.
        field: Field,
        /// Where it came from.
        origin: Origin,
        /// As given.
        value: String,
        /// What is wrong.
        why: String,
    },
}

/// Where a field's value was read: its IMDS path or its flag.
fn place(field: Field, origin: Origin) -> &'static str {
    match origin {
        Origin::Imds => field.imds_path(),
        Origin::Flags => field.flag(),
    }
}

/// `Result` with [`IdentityError`].
pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// The node's place in EC2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The EC2 instance id ("i-…").
    pub instance_id: String,
    /// The instance type, e.g. "m5.large".
    pub instance_type: String,
    /// The availability zone, e.g. "us-west-2a".
    pub availability_zone: String,
    /// The region, e.g. "us-west-2".
    pub region: String,
    /// The primary private IPv4 address (SNAT's source, the node's InternalIP).
    pub primary_ip: Ipv4Addr,
    /// The primary ENI's MAC address, lower-case and colon-separated.
    pub primary_mac: String,
    /// The primary ENI's id ("eni-…"); IMDS always gives it, flags may leave it out.
    pub primary_eni_id: Option<String>,
    /// The primary ENI's subnet ("subnet-…").
    pub subnet_id: String,
    /// The VPC's IPv4 CIDR blocks, primary first (traffic to them is not SNATed).
    pub vpc_cidrs: Vec<Ipv4Cidr>,
    /// Where this came from.
    pub origin: Origin,
}

/// The identity as flags give it, unchecked (`None`: not given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityFlags {
    /// `--instance-id`.
    pub instance_id: Option<String>,
    /// `--instance-type`.
    pub instance_type: Option<String>,
    /// `--availability-zone`.
    pub availability_zone: Option<String>,
    /// `--region`; derived from the availability zone when left out and the zone is a standard
    /// one ("us-west-2a" ─▶ "us-west-2").
    pub region: Option<String>,
    /// `--primary-ip`.
    pub primary_ip: Option<String>,
    /// `--primary-mac`.
    pub primary_mac: Option<String>,
    /// `--primary-eni-id` (optional).
    pub primary_eni_id: Option<String>,
    /// `--subnet-id`.
    pub subnet_id: Option<String>,
    /// `--vpc-cidrs`, each an IPv4 CIDR.
    pub vpc_cidrs: Vec<String>,
}

impl IdentityFlags {
    /// Whether any field is given (an IMDS identity with identity flags is a mistake the
    /// configuration reports).
    pub fn any_given(&self) -> bool {
        self.given().next().is_some()
    }

    /// The fields given, except `--vpc-cidrs` (which may override IMDS).
    pub fn given(&self) -> impl Iterator<Item = Field> + '_ {
        [
            (Field::InstanceId, &self.instance_id),
            (Field::InstanceType, &self.instance_type),
            (Field::AvailabilityZone, &self.availability_zone),
            (Field::Region, &self.region),
            (Field::PrimaryIp, &self.primary_ip),
            (Field::PrimaryMac, &self.primary_mac),
            (Field::PrimaryEniId, &self.primary_eni_id),
            (Field::SubnetId, &self.subnet_id),
        ]
        .into_iter()
        .filter(|(_, value)| value.as_deref().is_some_and(|v| !v.trim().is_empty()))
        .map(|(field, _)| field)
    }
}

impl Identity {
    /// The identity the flags give.
    ///
    /// # Errors
    ///
    /// A required flag missing ([`IdentityError::MissingFlag`]) or a value of the wrong shape
    /// ([`IdentityError::BadValue`]), the first in the order of [`Field`].
    pub fn from_flags(flags: &IdentityFlags) -> Result<Self> {
        let required = |field: Field, value: &Option<String>| -> Result<String> {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or(IdentityError::MissingFlag { field })
        };
        let check = Checker { origin: Origin::Flags };
        let instance_id = check.instance_id(&required(Field::InstanceId, &flags.instance_id)?)?;
        let instance_type = check.instance_type(&required(Field::InstanceType, &flags.instance_type)?)?;
        let availability_zone = check.zone(&required(Field::AvailabilityZone, &flags.availability_zone)?)?;
        let region = match flags.region.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
            Some(region) => check.region(region)?,
            None => region_of_zone(&availability_zone).ok_or(IdentityError::MissingFlag { field: Field::Region })?,
        };
        let primary_ip = check.ipv4(&required(Field::PrimaryIp, &flags.primary_ip)?)?;
        let primary_mac = check.mac(&required(Field::PrimaryMac, &flags.primary_mac)?)?;
        let primary_eni_id = match flags.primary_eni_id.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
            Some(eni) => Some(check.eni_id(eni)?),
            None => None,
        };
        let subnet_id = check.subnet_id(&required(Field::SubnetId, &flags.subnet_id)?)?;
        if flags.vpc_cidrs.iter().all(|c| c.trim().is_empty()) {
            return Err(IdentityError::MissingFlag { field: Field::VpcCidrs });
        }
        let vpc_cidrs = check.cidrs(flags.vpc_cidrs.iter().map(String::as_str))?;
        Ok(Self {
            instance_id,
            instance_type,
            availability_zone,
            region,
            primary_ip,
            primary_mac,
            primary_eni_id,
            subnet_id,
            vpc_cidrs,
            origin: Origin::Flags,
        })
    }

    /// The identity IMDSv2 gives, through `client` (see [`imds_client`]).
    ///
    /// # Errors
    ///
    /// A path IMDS does not have ([`IdentityError::ImdsMissing`]), IMDS unreachable or refusing
    /// ([`IdentityError::Imds`]), or a value of the wrong shape ([`IdentityError::BadValue`]).
    #[tracing::instrument(skip(client))]
    pub async fn from_imds(client: &imds::Client) -> Result<Self> {
        let imds = Imds { client };
        let check = Checker { origin: Origin::Imds };
        let instance_id = check.instance_id(&imds.get(Field::InstanceId, None).await?)?;
        let instance_type = check.instance_type(&imds.get(Field::InstanceType, None).await?)?;
        let availability_zone = check.zone(&imds.get(Field::AvailabilityZone, None).await?)?;
        let region = check.region(&imds.get(Field::Region, None).await?)?;
        let primary_ip = check.ipv4(&imds.get(Field::PrimaryIp, None).await?)?;
        let primary_mac = check.mac(&imds.get(Field::PrimaryMac, None).await?)?;
        let mac = Some(primary_mac.as_str());
        let primary_eni_id = check.eni_id(&imds.get(Field::PrimaryEniId, mac).await?)?;
        let subnet_id = check.subnet_id(&imds.get(Field::SubnetId, mac).await?)?;
        let vpc_cidrs = imds.get(Field::VpcCidrs, mac).await?;
        let vpc_cidrs = check.cidrs(vpc_cidrs.lines())?;
        let identity = Self {
            instance_id,
            instance_type,
            availability_zone,
            region,
            primary_ip,
            primary_mac,
            primary_eni_id: Some(primary_eni_id),
            subnet_id,
            vpc_cidrs,
            origin: Origin::Imds,
        };
        tracing::info!(
            instance_id = %identity.instance_id,
            instance_type = %identity.instance_type,
            zone = %identity.availability_zone,
            primary_ip = %identity.primary_ip,
            "identity from IMDS"
        );
        Ok(identity)
    }
}

/// An IMDSv2 client: `endpoint` overrides the address (a fake IMDS in tests, or IMDS over
/// IPv6); `None` leaves it to aws-config (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, the profile, or
/// `http://169.254.169.254`).
///
/// # Errors
///
/// `endpoint` is not a URI.
pub fn imds_client(endpoint: Option<&str>) -> Result<imds::Client> {
    let mut builder = imds::Client::builder()
        .operation_attempt_timeout(IMDS_ATTEMPT_TIMEOUT)
        .operation_timeout(IMDS_OPERATION_TIMEOUT);
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint(endpoint).map_err(|e| IdentityError::BadEndpoint {
            endpoint: endpoint.to_owned(),
            why: e.to_string(),
        })?;
    }
    Ok(builder.build())
}

/// Where the agent gets its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// IMDSv2 (on EC2).
    Imds {
        /// Another IMDS address than aws-config's (see [`imds_client`]).
        endpoint: Option<String>,
        /// VPC CIDRs that replace what IMDS says (local runs through an IMDS proxy).
        vpc_cidrs: Option<Vec<Ipv4Cidr>>,
    },
    /// Given, already checked (flags, the simulator).
    Given(Identity),
}

impl IdentitySource {
    /// The identity: from IMDS, or as given.
    ///
    /// # Errors
    ///
    /// As [`imds_client`] and [`Identity::from_imds`].
    pub async fn resolve(&self) -> Result<Identity> {
        match self {
            Self::Given(identity) => Ok(identity.clone()),
            Self::Imds { endpoint, vpc_cidrs } => {
                let client = imds_client(endpoint.as_deref())?;
                let mut identity = Identity::from_imds(&client).await?;
                if let Some(cidrs) = vpc_cidrs {
                    tracing::info!(imds = ?identity.vpc_cidrs, given = ?cidrs, "VPC CIDRs from the configuration, not IMDS");
                    identity.vpc_cidrs = cidrs.clone();
                }
                Ok(identity)
            }
        }
    }
}

/// The derivable region of a standard availability zone: "us-west-2a" ─▶ "us-west-2",
/// "us-gov-west-1b" ─▶ "us-gov-west-1". `None` for anything else (Local and Wavelength Zones,
/// "use1-az1" zone ids), which need `--region`.
pub fn region_of_zone(zone: &str) -> Option<String> {
    let region = zone.strip_suffix(|c: char| c.is_ascii_lowercase())?;
    let parts: Vec<&str> = region.split('-').collect();
    let well_formed = matches!(parts.len(), 3 | 4)
        && parts.iter().all(|p| !p.is_empty())
        && parts.last().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_lowercase()));
    well_formed.then(|| region.to_owned())
}

/// IMDS requests.
struct Imds<'a> {
    client: &'a imds::Client,
}

impl Imds<'_> {
    /// The trimmed text at `field`'s path (`mac` fills in `<mac>`).
    async fn get(&self, field: Field, mac: Option<&str>) -> Result<String> {
        let path = match mac {
            Some(mac) => field.imds_path().replace("<mac>", mac),
            None => field.imds_path().to_owned(),
        };
        match self.client.get(format!("/latest/meta-data/{path}")).await {
            Ok(text) => Ok(text.as_ref().trim().to_owned()),
            Err(imds::client::error::ImdsError::ErrorResponse(response))
                if response.response().status().as_u16() == 404 =>
            {
                Err(IdentityError::ImdsMissing { field, path })
            }
            Err(error) => Err(IdentityError::Imds {
                field,
                path,
                message: DisplayErrorContext(&error).to_string(),
            }),
        }
    }
}

/// Checks values for their shape, naming where they came from.
struct Checker {
    origin: Origin,
}

impl Checker {
    fn bad<T>(&self, field: Field, value: &str, why: &str) -> Result<T> {
        Err(IdentityError::BadValue {
            field,
            origin: self.origin,
            value: value.to_owned(),
            why: why.to_owned(),
        })
    }

    fn prefixed(&self, field: Field, value: &str, prefix: &str) -> Result<String> {
        let ok = value
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if ok {
            Ok(value.to_owned())
        } else {
            self.bad(field, value, &format!("is not an id of the form {prefix}…"))
        }
    }

    fn instance_id(&self, value: &str) -> Result<String> {
        self.prefixed(Field::InstanceId, value, "i-")
    }

    fn eni_id(&self, value: &str) -> Result<String> {
        self.prefixed(Field::PrimaryEniId, value, "eni-")
    }

    fn subnet_id(&self, value: &str) -> Result<String> {
        self.prefixed(Field::SubnetId, value, "subnet-")
    }

    fn instance_type(&self, value: &str) -> Result<String> {
        let ok = value.split_once('.').is_some_and(|(family, size)| {
            !family.is_empty()
                && !size.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        });
        if ok {
            Ok(value.to_owned())
        } else {
            self.bad(Field::InstanceType, value, "is not an instance type (e.g. m5.large)")
        }
    }

    fn zone(&self, value: &str) -> Result<String> {
        if !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Ok(value.to_owned())
        } else {
            self.bad(
                Field::AvailabilityZone,
                value,
                "is not an availability zone (e.g. us-west-2a)",
            )
        }
    }

    fn region(&self, value: &str) -> Result<String> {
        if !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Ok(value.to_owned())
        } else {
            self.bad(Field::Region, value, "is not a region (e.g. us-west-2)")
        }
    }

    fn ipv4(&self, value: &str) -> Result<Ipv4Addr> {
        value
            .parse()
            .or_else(|_| self.bad(Field::PrimaryIp, value, "is not an IPv4 address"))
    }

    fn mac(&self, value: &str) -> Result<String> {
        let octets: Vec<&str> = value.split(':').collect();
        let ok = octets.len() == 6
            && octets
                .iter()
                .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
        if ok {
            Ok(value.to_ascii_lowercase())
        } else {
            self.bad(
                Field::PrimaryMac,
                value,
                "is not a MAC address (six hex pairs separated by ':')",
            )
        }
    }

    fn cidrs<'v>(&self, values: impl Iterator<Item = &'v str>) -> Result<Vec<Ipv4Cidr>> {
        let mut cidrs: Vec<Ipv4Cidr> = Vec::new();
        for value in values.map(str::trim).filter(|v| !v.is_empty()) {
            let cidr = value
                .parse::<Ipv4Cidr>()
                .or_else(|e| self.bad(Field::VpcCidrs, value, &format!("is not an IPv4 CIDR: {e}")))?;
            if !cidrs.contains(&cidr) {
                cidrs.push(cidr);
            }
        }
        if cidrs.is_empty() {
            return self.bad(Field::VpcCidrs, "", "has no CIDR block");
        }
        Ok(cidrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_derived_only_from_standard_zones() {
        assert_eq!(region_of_zone("us-west-2a").as_deref(), Some("us-west-2"));
        assert_eq!(region_of_zone("eu-central-1c").as_deref(), Some("eu-central-1"));
        assert_eq!(region_of_zone("us-gov-west-1b").as_deref(), Some("us-gov-west-1"));
        assert_eq!(region_of_zone("us-west-2-lax-1a"), None);
        assert_eq!(region_of_zone("use1-az1"), None);
        assert_eq!(region_of_zone("us-west-2"), None);
        assert_eq!(region_of_zone(""), None);
    }
}
