//! The [`Ec2`] trait on aws-sdk-ec2: real EC2, or moto's server on loopback in the tests
//! (`tests/t30_ec2_moto.rs`).
//!
//! ```text
//!   AwsEc2::new(AwsEc2Config) ──▶ aws-config: region, credentials (env, profile, web identity, IMDS)
//!                                 unless given; endpoint override; retry + timeouts
//!   call ──▶ aws_sdk_ec2::Client ──┬─ Ok(answer) ──▶ checked conversion ──▶ our shapes
//!                                  │                  (a missing id / MAC ──▶ MalformedResponse)
//!                                  └─ SdkError ──┬─ ServiceError ──▶ EC2's code + message, classified
//!                                                ├─ TimeoutError, DispatchFailure, ResponseError
//!                                                │    ──▶ Unavailable
//!                                                └─ ConstructionFailure ──▶ InvalidRequest
//! ```
//!
//! Retries: the agent spends a cluster-wide EC2 budget that the server hands out, one token per
//! request, and the [`Ec2`] trait's contract is that implementations retry nothing. So the SDK
//! makes one attempt by default ([`AwsEc2Config::max_attempts`], default [`DEFAULT_MAX_ATTEMPTS`]
//! = 1): a throttle or a transient failure comes back at once as a retryable [`Ec2Error`] and the
//! caller decides, with the budget, when to try again. A tool that runs without the server may
//! raise it; the SDK's *standard* mode (exponential backoff, client-side retry quota) is used then.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::Region;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::error::SdkError;
use aws_sdk_ec2::types;

use super::CreateEni;
use super::Ec2;
use super::Ec2Error;
use super::Ec2ErrorKind;
use super::EniAttachment;
use super::EniAttribute;
use super::EniFilter;
use super::InstanceTypeInfo;
use super::InterfaceType;
use super::NetworkInterface;
use super::Result;
use super::Subnet;
use super::Tag;

/// Requests one call may cost, the first included (see the module doc).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 1;

/// The code of an [`Ec2Error`] for an answer that lacks something the agent needs.
pub const MALFORMED_RESPONSE: &str = "MalformedResponse";

/// Access keys given explicitly (moto in tests; real deployments leave them to aws-config).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .finish()
    }
}

/// How to reach EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsEc2Config {
    /// The region, e.g. "us-west-2"; `None`: aws-config's chain (AWS_REGION, profile, IMDS).
    pub region: Option<String>,
    /// Another endpoint than EC2's, e.g. "http://127.0.0.1:5000" for moto. `None` still honours
    /// `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL`, as aws-config does.
    pub endpoint_url: Option<String>,
    /// Fixed credentials; `None`: aws-config's chain (environment, profile, web identity, IMDS).
    pub credentials: Option<StaticCredentials>,
    /// Requests one call may cost, the first included (standard retry mode; at least 1).
    pub max_attempts: u32,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one attempt may take.
    pub attempt_timeout: Duration,
    /// How long a call may take, retries and backoff included.
    pub operation_timeout: Duration,
}

impl Default for AwsEc2Config {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            credentials: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

impl AwsEc2Config {
    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// Zero attempts, a zero timeout, an empty region or an endpoint that is not http(s).
    pub fn validate(&self) -> Result<(), AwsSetupError> {
        if self.max_attempts == 0 {
            return Err(AwsSetupError::ZeroMaxAttempts);
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("attempt_timeout", self.attempt_timeout),
            ("operation_timeout", self.operation_timeout),
        ] {
            if value.is_zero() {
                return Err(AwsSetupError::ZeroTimeout(name));
            }
        }
        if self.region.as_deref().is_some_and(str::is_empty) {
            return Err(AwsSetupError::NoRegion);
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(AwsSetupError::BadEndpoint(url.clone()));
        }
        Ok(())
    }
}

/// Why an [`AwsEc2`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsSetupError {
    /// `max_attempts` must count at least the first attempt.
    #[error("max_attempts must be at least 1")]
    ZeroMaxAttempts,
    /// A timeout of zero would fail every call.
    #[error("{0} must not be zero")]
    ZeroTimeout(&'static str),
    /// Neither the configuration nor aws-config's chain gave a region.
    #[error("no AWS region: set one in the configuration, AWS_REGION or the profile")]
    NoRegion,
    /// The endpoint override is not an http(s) URL.
    #[error("endpoint {0:?} is not an http:// or https:// URL")]
    BadEndpoint(String),
}

/// [`Ec2`] through aws-sdk-ec2.
#[derive(Debug, Clone)]
pub struct AwsEc2 {
    client: Client,
}

impl AwsEc2 {
    /// Loads the SDK's configuration (what `config` leaves open comes from aws-config's chains).
    ///
    /// # Errors
    ///
    /// The configuration does not validate, or no region can be found.
    pub async fn new(config: AwsEc2Config) -> Result<Self, AwsSetupError> {
        config.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_attempt_timeout(config.attempt_timeout)
                    .operation_timeout(config.operation_timeout)
                    .build(),
            );
        if let Some(region) = config.region {
            loader = loader.region(Region::new(region));
        }
        if let Some(url) = config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(keys) = config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                keys.access_key_id,
                keys.secret_access_key,
                None,
                None,
                "ipam-node-agent-static",
            ));
        }
        let sdk_config = loader.load().await;
        if sdk_config.region().is_none() {
            return Err(AwsSetupError::NoRegion);
        }
        Ok(Self::from_client(Client::new(&sdk_config)))
    }

    /// On a client made elsewhere.
    pub fn from_client(client: Client) -> Self {
        Self { client }
    }

    /// The SDK client (for calls the trait does not have, e.g. a test's RunInstances).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// An [`Ec2Error`] from the SDK's error: EC2's code and message for an answer EC2 gave, kind
/// Unavailable for a request that never got an answer.
fn sdk_error<E>(operation: &'static str, error: SdkError<E>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let unavailable = |code: &str, error: &SdkError<E>| Ec2Error {
        operation,
        kind: Ec2ErrorKind::Unavailable,
        code: code.to_owned(),
        message: DisplayErrorContext(error).to_string(),
    };
    match &error {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let message = context.err().message().unwrap_or_default().to_owned();
            match context.err().code() {
                Some(code) => Ec2Error::new(operation, code, message),
                None if status >= 500 => Ec2Error {
                    operation,
                    kind: Ec2ErrorKind::Unavailable,
                    code: format!("HttpStatus{status}"),
                    message: DisplayErrorContext(&error).to_string(),
                },
                None => Ec2Error {
                    operation,
                    kind: Ec2ErrorKind::Other,
                    code: format!("HttpStatus{status}"),
                    message: DisplayErrorContext(&error).to_string(),
                },
            }
        }
        SdkError::TimeoutError(_) => unavailable("TimeoutError", &error),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => unavailable("TimeoutError", &error),
        SdkError::DispatchFailure(failure) if failure.is_io() => unavailable("ConnectionError", &error),
        SdkError::DispatchFailure(_) => unavailable("DispatchFailure", &error),
        SdkError::ResponseError(_) => unavailable("ResponseError", &error),
        SdkError::ConstructionFailure(_) => Ec2Error {
            operation,
            kind: Ec2ErrorKind::InvalidRequest,
            code: "ConstructionFailure".to_owned(),
            message: DisplayErrorContext(&error).to_string(),
        },
        _ => Ec2Error {
            operation,
            kind: Ec2ErrorKind::Other,
            code: "SdkError".to_owned(),
            message: DisplayErrorContext(&error).to_string(),
        },
    }
}

/// An answer missing something the agent needs.
fn malformed(operation: &'static str, what: impl Into<String>) -> Ec2Error {
    Ec2Error {
        operation,
        kind: Ec2ErrorKind::Other,
        code: MALFORMED_RESPONSE.to_owned(),
        message: what.into(),
    }
}

fn parse_ip(operation: &'static str, what: &str, value: Option<&str>) -> Result<Ipv4Addr> {
    let value = value.ok_or_else(|| malformed(operation, format!("{what} is missing")))?;
    value
        .parse()
        .map_err(|_| malformed(operation, format!("{what} {value:?} is not an IPv4 address")))
}

fn sdk_tags(tags: &[types::Tag]) -> Vec<Tag> {
    tags.iter()
        .filter_map(|t| Some(Tag::new(t.key()?, t.value().unwrap_or_default())))
        .collect()
}

/// Our view of an SDK network interface; `None` fields the agent needs are errors.
fn network_interface(operation: &'static str, eni: &types::NetworkInterface) -> Result<NetworkInterface> {
    let eni_id = eni
        .network_interface_id()
        .ok_or_else(|| malformed(operation, "a network interface without NetworkInterfaceId"))?
        .to_owned();
    let mac = eni
        .mac_address()
        .ok_or_else(|| malformed(operation, format!("network interface {eni_id} without MacAddress")))?
        .to_ascii_lowercase();
    let subnet_id = eni
        .subnet_id()
        .ok_or_else(|| malformed(operation, format!("network interface {eni_id} without SubnetId")))?
        .to_owned();
    let primary_ip = parse_ip(
        operation,
        &format!("the PrivateIpAddress of {eni_id}"),
        eni.private_ip_address(),
    )?;
    let mut secondary_ips = Vec::new();
    for address in eni.private_ip_addresses() {
        let ip = parse_ip(
            operation,
            &format!("a PrivateIpAddresses entry of {eni_id}"),
            address.private_ip_address(),
        )?;
        if address.primary() != Some(true) && ip != primary_ip {
            secondary_ips.push(ip);
        }
    }
    let attachment = match eni.attachment() {
        None => None,
        Some(a) if a.status() == Some(&types::AttachmentStatus::Detached) => None,
        Some(a) => {
            let attachment_id = a
                .attachment_id()
                .ok_or_else(|| malformed(operation, format!("the attachment of {eni_id} without AttachmentId")))?
                .to_owned();
            let device_index = a.device_index().and_then(|i| u8::try_from(i).ok()).ok_or_else(|| {
                malformed(
                    operation,
                    format!("attachment {attachment_id} of {eni_id}: DeviceIndex missing or out of range"),
                )
            })?;
            Some(EniAttachment {
                attachment_id,
                // An ENI of another AWS service (Lambda, a NAT gateway) has no instance.
                instance_id: a.instance_id().unwrap_or_default().to_owned(),
                device_index,
                status: a.status().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                delete_on_termination: a.delete_on_termination().unwrap_or(false),
            })
        }
    };
    Ok(NetworkInterface {
        eni_id,
        mac,
        subnet_id,
        primary_ip,
        secondary_ips,
        security_groups: eni
            .groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect(),
        interface_type: match eni.interface_type() {
            Some(types::NetworkInterfaceType::Trunk) => InterfaceType::Trunk,
            _ => InterfaceType::Interface,
        },
        status: eni.status().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        description: eni.description().unwrap_or_default().to_owned(),
        tags: sdk_tags(eni.tag_set()),
        attachment,
    })
}

fn eni_filters(filter: &EniFilter) -> Vec<types::Filter> {
    let mut filters = Vec::new();
    if let Some(instance_id) = &filter.instance_id {
        filters.push(
            types::Filter::builder()
                .name("attachment.instance-id")
                .values(instance_id)
                .build(),
        );
    }
    for tag in &filter.tags {
        filters.push(
            types::Filter::builder()
                .name(format!("tag:{}", tag.key))
                .values(&tag.value)
                .build(),
        );
    }
    filters
}

fn ip_strings(ips: &[Ipv4Addr]) -> Vec<String> {
    ips.iter().map(Ipv4Addr::to_string).collect()
}

#[async_trait::async_trait]
impl Ec2 for AwsEc2 {
    #[tracing::instrument(skip_all, fields(subnet = %request.subnet_id, token = %request.client_token))]
    async fn create_network_interface(&self, request: &CreateEni) -> Result<NetworkInterface> {
        const OP: &str = "CreateNetworkInterface";
        let mut addresses = vec![
            types::PrivateIpAddressSpecification::builder()
                .primary(true)
                .private_ip_address(request.primary_ip.to_string())
                .build(),
        ];
        addresses.extend(request.secondary_ips.iter().map(|ip| {
            types::PrivateIpAddressSpecification::builder()
                .primary(false)
                .private_ip_address(ip.to_string())
                .build()
        }));
        let mut call = self
            .client
            .create_network_interface()
            .subnet_id(&request.subnet_id)
            .description(&request.description)
            .set_private_ip_addresses(Some(addresses));
        if !request.security_groups.is_empty() {
            call = call.set_groups(Some(request.security_groups.clone()));
        }
        if request.interface_type == InterfaceType::Trunk {
            call = call.interface_type(types::NetworkInterfaceCreationType::Trunk);
        }
        if !request.tags.is_empty() {
            call = call.tag_specifications(
                types::TagSpecification::builder()
                    .resource_type(types::ResourceType::NetworkInterface)
                    .set_tags(Some(
                        request
                            .tags
                            .iter()
                            .map(|t| types::Tag::builder().key(&t.key).value(&t.value).build())
                            .collect(),
                    ))
                    .build(),
            );
        }
        if !request.client_token.is_empty() {
            call = call.client_token(&request.client_token);
        }
        let answer = call.send().await.map_err(|e| sdk_error(OP, e))?;
        let eni = answer
            .network_interface()
            .ok_or_else(|| malformed(OP, "the answer has no NetworkInterface"))?;
        network_interface(OP, eni)
    }

    #[tracing::instrument(skip(self))]
    async fn attach_network_interface(&self, eni_id: &str, instance_id: &str, device_index: u8) -> Result<String> {
        const OP: &str = "AttachNetworkInterface";
        let answer = self
            .client
            .attach_network_interface()
            .network_interface_id(eni_id)
            .instance_id(instance_id)
            .device_index(i32::from(device_index))
            .send()
            .await
            .map_err(|e| sdk_error(OP, e))?;
        answer
            .attachment_id()
            .map(str::to_owned)
            .ok_or_else(|| malformed(OP, format!("the answer for {eni_id} has no AttachmentId")))
    }

    #[tracing::instrument(skip(self))]
    async fn detach_network_interface(&self, attachment_id: &str, force: bool) -> Result<()> {
        self.client
            .detach_network_interface()
            .attachment_id(attachment_id)
            .force(force)
            .send()
            .await
            .map_err(|e| sdk_error("DetachNetworkInterface", e))?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn delete_network_interface(&self, eni_id: &str) -> Result<()> {
        self.client
            .delete_network_interface()
            .network_interface_id(eni_id)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteNetworkInterface", e))?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn assign_private_ip_addresses(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        self.client
            .assign_private_ip_addresses()
            .network_interface_id(eni_id)
            .set_private_ip_addresses(Some(ip_strings(ips)))
            // Never take an address from another ENI: the server owns every address.
            .allow_reassignment(false)
            .send()
            .await
            .map_err(|e| sdk_error("AssignPrivateIpAddresses", e))?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn unassign_private_ip_addresses(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        self.client
            .unassign_private_ip_addresses()
            .network_interface_id(eni_id)
            .set_private_ip_addresses(Some(ip_strings(ips)))
            .send()
            .await
            .map_err(|e| sdk_error("UnassignPrivateIpAddresses", e))?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn describe_network_interfaces(&self, filter: &EniFilter) -> Result<Vec<NetworkInterface>> {
        const OP: &str = "DescribeNetworkInterfaces";
        if filter.eni_ids.is_empty() && filter.instance_id.is_none() && filter.tags.is_empty() {
            return Err(Ec2Error::new(
                OP,
                "InvalidParameterValue",
                "the agent refuses to describe every network interface: give ids, an instance or tags",
            ));
        }
        let mut call = self.client.describe_network_interfaces();
        if !filter.eni_ids.is_empty() {
            // Unknown ids are InvalidNetworkInterfaceID.NotFound, as with the simulator.
            call = call.set_network_interface_ids(Some(filter.eni_ids.clone()));
        }
        let filters = eni_filters(filter);
        if !filters.is_empty() {
            call = call.set_filters(Some(filters));
        }
        let mut pages = call.into_paginator().send();
        let mut enis = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(OP, e))?;
            for eni in page.network_interfaces() {
                enis.push(network_interface(OP, eni)?);
            }
        }
        Ok(enis)
    }

    #[tracing::instrument(skip(self))]
    async fn describe_subnets(&self, subnet_ids: &[String]) -> Result<Vec<Subnet>> {
        const OP: &str = "DescribeSubnets";
        let mut call = self.client.describe_subnets();
        if !subnet_ids.is_empty() {
            call = call.set_subnet_ids(Some(subnet_ids.to_vec()));
        }
        let mut pages = call.into_paginator().send();
        let mut subnets = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(OP, e))?;
            for subnet in page.subnets() {
                let subnet_id = subnet
                    .subnet_id()
                    .ok_or_else(|| malformed(OP, "a subnet without SubnetId"))?
                    .to_owned();
                let cidr = subnet
                    .cidr_block()
                    .ok_or_else(|| malformed(OP, format!("subnet {subnet_id} without CidrBlock")))?
                    .to_owned();
                subnets.push(Subnet {
                    cidr,
                    availability_zone: subnet.availability_zone().unwrap_or_default().to_owned(),
                    available_ips: subnet
                        .available_ip_address_count()
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0),
                    subnet_id,
                });
            }
        }
        Ok(subnets)
    }

    /// EC2's `DescribeInstanceTypes` has no trunking field (checked in aws-sdk-ec2 1.274's
    /// `NetworkInfo`; the VPC resource controller keeps its own table): trunking comes from
    /// `ipam_core::limits`' built-in table, and is `false` for a type the table does not know.
    #[tracing::instrument(skip(self))]
    async fn describe_instance_types(&self, instance_types: &[String]) -> Result<Vec<InstanceTypeInfo>> {
        const OP: &str = "DescribeInstanceTypes";
        let mut call = self.client.describe_instance_types();
        if !instance_types.is_empty() {
            call = call.set_instance_types(Some(
                instance_types
                    .iter()
                    .map(|t| types::InstanceType::from(t.as_str()))
                    .collect(),
            ));
        }
        let mut pages = call.into_paginator().send();
        let mut infos = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(OP, e))?;
            for info in page.instance_types() {
                let instance_type = info
                    .instance_type()
                    .ok_or_else(|| malformed(OP, "an instance type without InstanceType"))?
                    .as_str()
                    .to_owned();
                let network = info
                    .network_info()
                    .ok_or_else(|| malformed(OP, format!("{instance_type} without NetworkInfo")))?;
                let count = |what: &str, value: Option<i32>| {
                    value
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| malformed(OP, format!("{instance_type}: {what} missing or negative")))
                };
                infos.push(InstanceTypeInfo {
                    max_enis: count(
                        "NetworkInfo.MaximumNetworkInterfaces",
                        network.maximum_network_interfaces(),
                    )?,
                    ipv4_per_eni: count(
                        "NetworkInfo.Ipv4AddressesPerInterface",
                        network.ipv4_addresses_per_interface(),
                    )?,
                    trunking: ipam_core::limits::lookup(&instance_type).is_some_and(|l| l.trunking),
                    instance_type,
                });
            }
        }
        Ok(infos)
    }

    #[tracing::instrument(skip(self))]
    async fn modify_network_interface_attribute(&self, eni_id: &str, attribute: &EniAttribute) -> Result<()> {
        let call = self
            .client
            .modify_network_interface_attribute()
            .network_interface_id(eni_id);
        let call = match attribute {
            EniAttribute::DeleteOnTermination { attachment_id, value } => call.attachment(
                types::NetworkInterfaceAttachmentChanges::builder()
                    .attachment_id(attachment_id)
                    .delete_on_termination(*value)
                    .build(),
            ),
            EniAttribute::SecurityGroups(groups) => call.set_groups(Some(groups.clone())),
            EniAttribute::SourceDestCheck(value) => {
                call.source_dest_check(types::AttributeBooleanValue::builder().value(*value).build())
            }
        };
        call.send()
            .await
            .map_err(|e| sdk_error("ModifyNetworkInterfaceAttribute", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk_eni() -> types::builders::NetworkInterfaceBuilder {
        types::NetworkInterface::builder()
            .network_interface_id("eni-0123")
            .mac_address("02:AB:CD:00:00:01")
            .subnet_id("subnet-1")
            .private_ip_address("10.0.0.10")
            .private_ip_addresses(
                types::NetworkInterfacePrivateIpAddress::builder()
                    .primary(true)
                    .private_ip_address("10.0.0.10")
                    .build(),
            )
            .private_ip_addresses(
                types::NetworkInterfacePrivateIpAddress::builder()
                    .primary(false)
                    .private_ip_address("10.0.0.11")
                    .build(),
            )
            .interface_type(types::NetworkInterfaceType::Trunk)
            .tag_set(types::Tag::builder().key("k").value("v").build())
    }

    #[test]
    fn a_complete_answer_converts() {
        let eni = network_interface(
            "DescribeNetworkInterfaces",
            &sdk_eni()
                .attachment(
                    types::NetworkInterfaceAttachment::builder()
                        .attachment_id("eni-attach-1")
                        .instance_id("i-1")
                        .device_index(2)
                        .status(types::AttachmentStatus::Attached)
                        .build(),
                )
                .build(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(eni.eni_id, "eni-0123");
        assert_eq!(eni.mac, "02:ab:cd:00:00:01");
        assert_eq!(eni.primary_ip, Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(eni.secondary_ips, vec![Ipv4Addr::new(10, 0, 0, 11)]);
        assert_eq!(eni.interface_type, InterfaceType::Trunk);
        assert_eq!(eni.tag("k"), Some("v"));
        let attachment = eni.attachment.unwrap_or_else(|| panic!("attached"));
        assert_eq!((attachment.device_index, attachment.status.as_str()), (2, "attached"));
    }

    #[test]
    fn an_answer_missing_what_the_agent_needs_is_an_error_naming_it() {
        let op = "DescribeNetworkInterfaces";
        let no_id = network_interface(op, &sdk_eni().set_network_interface_id(None).build());
        let no_mac = network_interface(op, &sdk_eni().set_mac_address(None).build());
        let bad_ip = network_interface(op, &sdk_eni().private_ip_address("not-an-ip").build());
        let bad_index = network_interface(
            op,
            &sdk_eni()
                .attachment(
                    types::NetworkInterfaceAttachment::builder()
                        .attachment_id("eni-attach-1")
                        .device_index(300)
                        .build(),
                )
                .build(),
        );
        for (answer, needle) in [
            (no_id, "NetworkInterfaceId"),
            (no_mac, "MacAddress"),
            (bad_ip, "not-an-ip"),
            (bad_index, "DeviceIndex"),
        ] {
            let error = answer.err().unwrap_or_else(|| panic!("{needle}: accepted"));
            assert_eq!(error.code, MALFORMED_RESPONSE);
            assert_eq!(error.kind, Ec2ErrorKind::Other);
            assert!(error.message.contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn a_detached_attachment_is_no_attachment() {
        let eni = network_interface(
            "DescribeNetworkInterfaces",
            &sdk_eni()
                .attachment(
                    types::NetworkInterfaceAttachment::builder()
                        .status(types::AttachmentStatus::Detached)
                        .build(),
                )
                .build(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(eni.attachment, None);
    }

    #[test]
    fn config_validation_refuses_what_cannot_work() {
        assert_eq!(AwsEc2Config::default().validate(), Ok(()));
        let zero = AwsEc2Config {
            max_attempts: 0,
            ..AwsEc2Config::default()
        };
        assert_eq!(zero.validate(), Err(AwsSetupError::ZeroMaxAttempts));
        let endpoint = AwsEc2Config {
            endpoint_url: Some("127.0.0.1:5000".to_owned()),
            ..AwsEc2Config::default()
        };
        assert!(matches!(endpoint.validate(), Err(AwsSetupError::BadEndpoint(_))));
        let timeout = AwsEc2Config {
            attempt_timeout: Duration::ZERO,
            ..AwsEc2Config::default()
        };
        assert_eq!(timeout.validate(), Err(AwsSetupError::ZeroTimeout("attempt_timeout")));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let keys = StaticCredentials {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "very-secret".to_owned(),
        };
        let printed = format!("{keys:?}");
        assert!(
            printed.contains("AKIDEXAMPLE") && !printed.contains("very-secret"),
            "{printed}"
        );
    }
}
