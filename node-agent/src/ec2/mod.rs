//! EC2 as the agent uses it: a trait ([`Ec2`]) with the calls the agent makes and the shapes it
//! needs from their answers, so that the rest of the agent never sees the AWS SDK.
//!
//! ```text
//!   warm pool / ENI intents ──▶ dyn Ec2 ──┬──▶ aws::AwsEc2   aws-sdk-ec2 (real AWS, or moto on loopback)
//!                                         └──▶ sim::SimEc2   in process: instance limits, latency,
//!                                                            EC2's token-bucket throttling, faults
//! ```
//!
//! Addresses are always explicit: the server chooses every address (it owns the subnets), the
//! agent asks EC2 for exactly those. Creating an ENI carries the intent's token as EC2's
//! ClientToken, so a create repeated after a crash returns the same ENI instead of a second one.

pub mod aws;
pub mod intents;
pub mod sim;

use std::net::Ipv4Addr;

/// A tag on an EC2 resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl Tag {
    /// A tag `key`=`value`.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// The tag keys every managed ENI carries (the server hands out the values with each plan);
/// crash recovery finds the node's ENIs by them. Defined once, in `ipam_core::eni_tags`.
pub mod tags {
    /// The cluster the ENI belongs to (the server's token prefix).
    pub use ipam_core::eni_tags::CLUSTER;
    /// The EC2 instance the ENI was planned for.
    pub use ipam_core::eni_tags::INSTANCE_ID;
    /// The intent token (also the ClientToken) the ENI was created under.
    pub use ipam_core::eni_tags::INTENT_TOKEN as INTENT;
    /// The node (Kubernetes node name) the ENI was created for.
    pub use ipam_core::eni_tags::NODE;
}

/// The first word of every managed ENI's description (the VPC CNI uses "aws-K8S-").
pub const DESCRIPTION_PREFIX: &str = ipam_core::eni_tags::MANAGED_BY;

/// What kind of ENI to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterfaceType {
    /// A standard ENI (secondary ENIs, branch ENIs).
    #[default]
    Interface,
    /// A trunk ENI (security groups for pods).
    Trunk,
}

/// `CreateNetworkInterface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEni {
    /// The subnet.
    pub subnet_id: String,
    /// The description (starts with [`DESCRIPTION_PREFIX`]).
    pub description: String,
    /// The security groups (EC2 ids).
    pub security_groups: Vec<String>,
    /// The primary private address, chosen by the server.
    pub primary_ip: Ipv4Addr,
    /// Secondary private addresses, chosen by the server.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Standard or trunk.
    pub interface_type: InterfaceType,
    /// Tags applied at creation.
    pub tags: Vec<Tag>,
    /// EC2's idempotency token: the intent token. A create repeated with the same token and
    /// parameters returns the ENI the first one made.
    pub client_token: String,
}

/// An ENI's attachment to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniAttachment {
    /// EC2's attachment id ("eni-attach-…"), needed to detach.
    pub attachment_id: String,
    /// The instance.
    pub instance_id: String,
    /// The device index on the instance.
    pub device_index: u8,
    /// "attaching", "attached", "detaching" or "detached".
    pub status: String,
    /// Whether EC2 deletes the ENI when the instance terminates.
    pub delete_on_termination: bool,
}

/// An ENI as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    /// EC2's id ("eni-…").
    pub eni_id: String,
    /// The MAC address, lower-case colon-separated.
    pub mac: String,
    /// The subnet.
    pub subnet_id: String,
    /// The primary private address.
    pub primary_ip: Ipv4Addr,
    /// The secondary private addresses.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// The security groups.
    pub security_groups: Vec<String>,
    /// Standard or trunk.
    pub interface_type: InterfaceType,
    /// "available", "in-use", …
    pub status: String,
    /// The description.
    pub description: String,
    /// The tags.
    pub tags: Vec<Tag>,
    /// The attachment, if attached (or attaching).
    pub attachment: Option<EniAttachment>,
}

impl NetworkInterface {
    /// The value of tag `key`, if set.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
    }
}

/// Which ENIs `DescribeNetworkInterfaces` should return (conditions combine with AND; an empty
/// filter is refused by implementations rather than listing a whole account).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniFilter {
    /// These ENI ids.
    pub eni_ids: Vec<String>,
    /// Attached to this instance.
    pub instance_id: Option<String>,
    /// Carrying all these tags (key = value).
    pub tags: Vec<Tag>,
}

/// A subnet as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// EC2's id.
    pub subnet_id: String,
    /// Its CIDR.
    pub cidr: String,
    /// Its availability zone.
    pub availability_zone: String,
    /// Addresses EC2 still has free in it.
    pub available_ips: u32,
}

/// An instance type's network limits, as `DescribeInstanceTypes` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeInfo {
    /// E.g. "m5.large".
    pub instance_type: String,
    /// Maximum ENIs.
    pub max_enis: u32,
    /// Maximum IPv4 addresses per ENI (primary included).
    pub ipv4_per_eni: u32,
    /// Whether it supports ENI trunking (security groups for pods).
    pub trunking: bool,
}

/// A change to an ENI's attributes (`ModifyNetworkInterfaceAttribute`; one per call, as EC2
/// takes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EniAttribute {
    /// Whether the ENI goes with the instance (needs the attachment id).
    DeleteOnTermination {
        /// The attachment.
        attachment_id: String,
        /// The value.
        value: bool,
    },
    /// Replace the security groups.
    SecurityGroups(Vec<String>),
    /// Source/destination checking.
    SourceDestCheck(bool),
}

/// What kind of failure an EC2 call had, as the agent acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ec2ErrorKind {
    /// Throttled (RequestLimitExceeded and kin): back off and try again.
    Throttled,
    /// The resource does not exist (InvalidNetworkInterfaceID.NotFound, …).
    NotFound,
    /// An account or instance limit (AttachmentLimitExceeded, PrivateIpAddressLimitExceeded,
    /// NetworkInterfaceLimitExceeded, InsufficientFreeAddressesInSubnet).
    LimitExceeded,
    /// An address the server chose is in use by something else (InvalidIPAddress.InUse).
    AddressInUse,
    /// The request is wrong (InvalidParameterValue, IdempotentParameterMismatch, …).
    InvalidRequest,
    /// Not allowed (UnauthorizedOperation, AuthFailure).
    Unauthorized,
    /// EC2 or the network failed (5xx, timeouts, connection errors): try again.
    Unavailable,
    /// Anything else.
    Other,
}

/// A failed EC2 call: EC2's error code and message, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("EC2 {operation}: {code}: {message}")]
pub struct Ec2Error {
    /// The operation, e.g. "CreateNetworkInterface".
    pub operation: &'static str,
    /// How the agent treats it.
    pub kind: Ec2ErrorKind,
    /// EC2's error code, e.g. "RequestLimitExceeded" (or a transport error's name).
    pub code: String,
    /// EC2's message.
    pub message: String,
}

impl Ec2Error {
    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, Ec2ErrorKind::Throttled | Ec2ErrorKind::Unavailable)
    }

    /// The kind of an EC2 error code (the codes EC2 documents for the calls the agent makes).
    pub fn kind_of(code: &str) -> Ec2ErrorKind {
        match code {
            "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "TooManyRequestsException" => Ec2ErrorKind::Throttled,
            c if c.ends_with(".NotFound") => Ec2ErrorKind::NotFound,
            "AttachmentLimitExceeded"
            | "PrivateIpAddressLimitExceeded"
            | "NetworkInterfaceLimitExceeded"
            | "InsufficientFreeAddressesInSubnet"
            | "InterfaceLimitExceeded" => Ec2ErrorKind::LimitExceeded,
            "InvalidIPAddress.InUse" => Ec2ErrorKind::AddressInUse,
            "UnauthorizedOperation" | "AuthFailure" | "Blocked" | "OptInRequired" => Ec2ErrorKind::Unauthorized,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => Ec2ErrorKind::Unavailable,
            c if c.starts_with("Invalid") || c == "MissingParameter" || c == "IdempotentParameterMismatch" => {
                Ec2ErrorKind::InvalidRequest
            }
            _ => Ec2ErrorKind::Other,
        }
    }

    /// An error of `operation` with EC2's `code` and `message`, classified.
    pub fn new(operation: &'static str, code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        Self {
            operation,
            kind: Self::kind_of(&code),
            code,
            message: message.into(),
        }
    }
}

/// `Result` with [`Ec2Error`].
pub type Result<T, E = Ec2Error> = std::result::Result<T, E>;

/// The EC2 calls the agent makes. Implementations retry nothing themselves: throttling and
/// transient failures come back as [`Ec2Error`]s the caller (which holds the cluster-wide budget)
/// decides about.
#[async_trait::async_trait]
pub trait Ec2: Send + Sync + std::fmt::Debug {
    /// `CreateNetworkInterface` with explicit addresses and the intent token as ClientToken.
    async fn create_network_interface(&self, request: &CreateEni) -> Result<NetworkInterface>;

    /// `AttachNetworkInterface`; returns the attachment id.
    async fn attach_network_interface(&self, eni_id: &str, instance_id: &str, device_index: u8) -> Result<String>;

    /// `DetachNetworkInterface`.
    async fn detach_network_interface(&self, attachment_id: &str, force: bool) -> Result<()>;

    /// `DeleteNetworkInterface` (the ENI must be detached).
    async fn delete_network_interface(&self, eni_id: &str) -> Result<()>;

    /// `AssignPrivateIpAddresses` with explicit addresses.
    async fn assign_private_ip_addresses(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()>;

    /// `UnassignPrivateIpAddresses`.
    async fn unassign_private_ip_addresses(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()>;

    /// `DescribeNetworkInterfaces` (all pages).
    async fn describe_network_interfaces(&self, filter: &EniFilter) -> Result<Vec<NetworkInterface>>;

    /// `DescribeSubnets`.
    async fn describe_subnets(&self, subnet_ids: &[String]) -> Result<Vec<Subnet>>;

    /// `DescribeInstanceTypes`.
    async fn describe_instance_types(&self, instance_types: &[String]) -> Result<Vec<InstanceTypeInfo>>;

    /// `ModifyNetworkInterfaceAttribute`.
    async fn modify_network_interface_attribute(&self, eni_id: &str, attribute: &EniAttribute) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_classified_as_the_agent_acts_on_them() {
        for (code, kind) in [
            ("RequestLimitExceeded", Ec2ErrorKind::Throttled),
            ("InvalidNetworkInterfaceID.NotFound", Ec2ErrorKind::NotFound),
            ("InvalidAttachmentID.NotFound", Ec2ErrorKind::NotFound),
            ("AttachmentLimitExceeded", Ec2ErrorKind::LimitExceeded),
            ("InsufficientFreeAddressesInSubnet", Ec2ErrorKind::LimitExceeded),
            ("InvalidIPAddress.InUse", Ec2ErrorKind::AddressInUse),
            ("InvalidParameterValue", Ec2ErrorKind::InvalidRequest),
            ("IdempotentParameterMismatch", Ec2ErrorKind::InvalidRequest),
            ("UnauthorizedOperation", Ec2ErrorKind::Unauthorized),
            ("InternalError", Ec2ErrorKind::Unavailable),
            ("SomethingNew", Ec2ErrorKind::Other),
        ] {
            assert_eq!(Ec2Error::kind_of(code), kind, "{code}");
        }
        assert!(Ec2Error::new("AssignPrivateIpAddresses", "RequestLimitExceeded", "slow down").is_retryable());
        assert!(!Ec2Error::new("AttachNetworkInterface", "AttachmentLimitExceeded", "full").is_retryable());
    }
}
