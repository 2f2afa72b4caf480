//! Why a command was refused. Every refusal changes nothing. `code()` says how the API maps it
//! to the wire (STYLE.md: stale epoch → FailedPrecondition, exhausted → ResourceExhausted, …).

use std::net::Ipv4Addr;

use crate::cidr::Ipv4Cidr;
use crate::ids::EniRef;
use crate::ids::Epoch;
use crate::ids::LeaseId;
use crate::limits::LimitsError;
use crate::policy::PolicyError;
use crate::state::EniState;
use crate::state::Slot;

/// `Result` with [`DomainError`].
pub type Result<T, E = DomainError> = std::result::Result<T, E>;

/// How a refusal maps onto gRPC status codes (and CNI errors) at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The input is malformed or out of range.
    InvalidArgument,
    /// A named thing does not exist.
    NotFound,
    /// The caller's view is stale (epoch, lease, state machine position) or the thing is in use.
    FailedPrecondition,
    /// Out of addresses, ENI slots, branch ENIs or warm capacity (may pass when the pool grows).
    ResourceExhausted,
    /// The input contradicts what is already recorded.
    AlreadyExists,
}

/// Why `decide` refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A CIDR is malformed.
    #[error("invalid CIDR {cidr:?}: {why}")]
    InvalidCidr {
        /// As written.
        cidr: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A request id is empty, too long or has spaces or control characters.
    #[error("invalid request id {id:?}: use 1 to 64 printable ASCII characters without spaces")]
    InvalidRequestId {
        /// As written.
        id: String,
    },
    /// A name is not a Kubernetes object name.
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName {
        /// What was named.
        what: &'static str,
        /// As written.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// An EC2 id is malformed.
    #[error("invalid EC2 id {id:?}: expected '{kind}-' followed by 8 or 17 lowercase hex digits")]
    InvalidAwsId {
        /// The id kind (`i`, `eni`, `subnet`).
        kind: &'static str,
        /// As written.
        id: String,
    },
    /// An availability zone name is malformed.
    #[error("invalid availability zone {az:?}: expected lowercase letters, digits and '-', e.g. us-west-2a")]
    InvalidAz {
        /// As written.
        az: String,
    },
    /// A MAC address is malformed.
    #[error("invalid MAC address {mac:?}: expected six hex pairs separated by ':'")]
    InvalidMac {
        /// As written.
        mac: String,
    },
    /// Too few or too many security groups.
    #[error("{count} security groups given; between {min} and {max} are allowed")]
    SecurityGroupCount {
        /// How many distinct groups.
        count: usize,
        /// Fewest allowed.
        min: usize,
        /// Most allowed.
        max: usize,
    },
    /// The pod side of a bind is incomplete or inconsistent.
    #[error("invalid pod attachment: {why}")]
    InvalidOwner {
        /// What is wrong.
        why: &'static str,
    },
    /// Settings out of range.
    #[error("invalid settings: {why}")]
    InvalidSettings {
        /// What is wrong.
        why: &'static str,
    },
    /// A SecurityGroupPolicy or selector is invalid, or a pod's groups cannot be computed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Instance limits from outside are impossible.
    #[error("invalid instance limits: {0}")]
    Limits(#[from] LimitsError),
    /// A pool outside the ranges AWS accepts for VPC CIDR blocks.
    #[error(
        "pool {cidr} is not inside an AWS VPC range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 198.19.0.0/16)"
    )]
    PoolOutsideVpcRanges {
        /// The pool.
        cidr: Ipv4Cidr,
    },
    /// A pool overlapping another.
    #[error("pool {cidr} overlaps the existing pool {existing}")]
    PoolOverlaps {
        /// The new pool.
        cidr: Ipv4Cidr,
        /// The pool it overlaps.
        existing: Ipv4Cidr,
    },
    /// A subnet prefix AWS does not allow.
    #[error("subnet {cidr}: AWS subnets are /16 to /28")]
    SubnetPrefix {
        /// The subnet.
        cidr: Ipv4Cidr,
    },
    /// A subnet outside every pool.
    #[error("subnet {cidr} lies in no pool; create the pool (the VPC's secondary CIDR) first")]
    SubnetOutsidePools {
        /// The subnet.
        cidr: Ipv4Cidr,
    },
    /// A subnet id recorded with another CIDR or AZ.
    #[error("subnet {subnet_id} is recorded as {known_cidr} in {known_az}; an ENIConfig cannot change that")]
    SubnetConflict {
        /// The subnet id.
        subnet_id: String,
        /// Its recorded CIDR.
        known_cidr: Ipv4Cidr,
        /// Its recorded AZ.
        known_az: String,
    },
    /// A new subnet overlapping another.
    #[error("subnet {cidr} overlaps subnet {other}")]
    SubnetOverlaps {
        /// The new subnet.
        cidr: Ipv4Cidr,
        /// The subnet it overlaps.
        other: String,
    },
    /// No such subnet.
    #[error("subnet {subnet_id} is unknown")]
    SubnetNotFound {
        /// The subnet id.
        subnet_id: String,
    },
    /// Not enough free addresses in the subnet.
    #[error("subnet {subnet_id} is exhausted: {wanted} addresses wanted, {available} free")]
    SubnetExhausted {
        /// The subnet id.
        subnet_id: String,
        /// How many were wanted.
        wanted: usize,
        /// How many are free.
        available: u64,
    },
    /// No such ENIConfig.
    #[error("ENIConfig {name:?} does not exist")]
    SubnetConfigNotFound {
        /// The name.
        name: String,
    },
    /// An ENIConfig a node uses.
    #[error("ENIConfig {name:?} is used by node {node}")]
    SubnetConfigInUse {
        /// The name.
        name: String,
        /// A node using it.
        node: String,
    },
    /// A node and its ENIConfig in different zones.
    #[error("node {node} is in {node_az} but ENIConfig {config:?} is in {config_az}")]
    AzMismatch {
        /// The node.
        node: String,
        /// The node's AZ.
        node_az: String,
        /// The ENIConfig.
        config: String,
        /// The ENIConfig's AZ.
        config_az: String,
    },
    /// No such SecurityGroupPolicy.
    #[error("SecurityGroupPolicy {namespace}/{name} does not exist")]
    SgPolicyNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Unquarantine of an address not in quarantine.
    #[error("{ip} is not quarantined")]
    NotQuarantined {
        /// The address.
        ip: Ipv4Addr,
    },
    /// An instance type the built-in table does not know, registered without limits.
    #[error("instance type {instance_type:?} is not in the built-in table; send its limits from DescribeInstanceTypes")]
    UnknownInstanceType {
        /// The type.
        instance_type: String,
    },
    /// Security groups for pods on a type without trunking.
    #[error("instance type {instance_type} does not support ENI trunking (security groups for pods)")]
    TrunkingUnsupported {
        /// The type.
        instance_type: String,
    },
    /// No such node.
    #[error("node {node} is not registered")]
    NodeNotFound {
        /// The node.
        node: String,
    },
    /// Removal of a node that still heartbeats, without `force`.
    #[error("node {node} is active (its agent heartbeats); remove it with force, or wait for it to expire")]
    NodeActive {
        /// The node.
        node: String,
    },
    /// A command from an older agent instance.
    #[error("stale epoch {given} for node {node}: the current epoch is {current}; register again")]
    StaleEpoch {
        /// The node.
        node: String,
        /// The epoch the command carried.
        given: Epoch,
        /// The node's epoch.
        current: Epoch,
    },
    /// The node's lease ran out.
    #[error("node {node} expired; its agent must register again")]
    NodeExpired {
        /// The node.
        node: String,
    },
    /// No such ENI on the node.
    #[error("node {node} has no ENI {eni}")]
    EniNotFound {
        /// The node.
        node: String,
        /// The ENI handle.
        eni: EniRef,
    },
    /// An ENI in the wrong state for the command.
    #[error("ENI {eni} is {state:?}; the command needs it {wanted:?}")]
    EniState {
        /// The ENI.
        eni: EniRef,
        /// Its state.
        state: EniState,
        /// The state needed.
        wanted: EniState,
    },
    /// An address command on a trunk or branch ENI.
    #[error("ENI {eni} is not a secondary ENI")]
    NotSecondary {
        /// The ENI.
        eni: EniRef,
    },
    /// No free device slot.
    #[error("node {node} has all {max_enis} ENIs in use{}", if *reserved_for_trunk { " (one slot is kept for the trunk ENI)" } else { "" })]
    EniLimit {
        /// The node.
        node: String,
        /// The instance's limit.
        max_enis: u8,
        /// Whether a slot is held back for the trunk.
        reserved_for_trunk: bool,
    },
    /// More addresses than an ENI can carry.
    #[error("ENI {eni} can carry {max} pod addresses; {wanted} asked")]
    IpsPerEniLimit {
        /// The ENI.
        eni: EniRef,
        /// The limit.
        max: usize,
        /// What the command would make.
        wanted: usize,
    },
    /// Fewer warm addresses than asked to drain.
    #[error("ENI {eni} has {warm} warm addresses; cannot drain {wanted}")]
    NotEnoughWarm {
        /// The ENI.
        eni: EniRef,
        /// Asked.
        wanted: u16,
        /// Warm.
        warm: usize,
    },
    /// An ENI that still carries pods, plans or branches.
    #[error("ENI {eni} is in use: {bound_or_pending} bound or pending addresses, {branches} branch ENIs")]
    EniBusy {
        /// The ENI.
        eni: EniRef,
        /// Bound or pending addresses.
        bound_or_pending: usize,
        /// Branch ENIs on it (trunk).
        branches: usize,
    },
    /// A report naming no addresses.
    #[error("the report for ENI {eni} names no addresses")]
    NoAddresses {
        /// The ENI.
        eni: EniRef,
    },
    /// An address that is not on the ENI.
    #[error("{ip} is not an address of ENI {eni}")]
    AddressNotOnEni {
        /// The address.
        ip: Ipv4Addr,
        /// The ENI.
        eni: EniRef,
    },
    /// An address in the wrong state for the report.
    #[error("{ip} is {state:?}; the report needs it {wanted:?}")]
    AddressState {
        /// The address.
        ip: Ipv4Addr,
        /// Its state.
        state: Slot,
        /// The state needed.
        wanted: Slot,
    },
    /// Trunk/branch commands on a node without `ENABLE_POD_ENI`.
    #[error("node {node} did not enable security groups for pods (ENABLE_POD_ENI)")]
    PodEniDisabled {
        /// The node.
        node: String,
    },
    /// A second trunk.
    #[error("node {node} already has a trunk ENI")]
    TrunkExists {
        /// The node.
        node: String,
    },
    /// A branch ENI without an attached trunk.
    #[error("node {node} has no attached trunk ENI; plan and attach the trunk first")]
    NoTrunk {
        /// The node.
        node: String,
    },
    /// All branch ENIs (VLAN ids) in use.
    #[error("node {node} has all {max} branch ENIs in use")]
    BranchLimit {
        /// The node.
        node: String,
        /// The limit.
        max: u16,
    },
    /// No warm address on the node: the agent should grow its pool.
    #[error("node {node} has no warm address; the agent is growing its pool, try again")]
    NoWarmAddress {
        /// The node.
        node: String,
    },
    /// No warm branch ENI with these groups: the agent should plan one.
    #[error("node {node} has no warm branch ENI with security groups {security_groups:?}; try again")]
    NoWarmBranch {
        /// The node.
        node: String,
        /// The groups.
        security_groups: Vec<String>,
    },
    /// The attachment is bound to another pod.
    #[error("attachment {container_id}/{ifname} is bound to {holder}")]
    AttachmentInUse {
        /// Container id.
        container_id: String,
        /// Interface.
        ifname: String,
        /// Who holds it.
        holder: String,
    },
    /// A release naming a lease that is not live: already released, or never this node's.
    #[error("lease {lease} is not live on node {node} (already released, or stale)")]
    StaleLease {
        /// The node.
        node: String,
        /// The lease id.
        lease: LeaseId,
    },
    /// A release naming an attachment with no live lease.
    #[error("no live lease for attachment {container_id}/{ifname} on node {node}")]
    AttachmentNotFound {
        /// The node.
        node: String,
        /// Container id.
        container_id: String,
        /// Interface.
        ifname: String,
    },
}

impl DomainError {
    /// For a [`ErrorCode::ResourceExhausted`] refusal, what ran out, in the words of the API's
    /// `ipam-exhausted` metadata: `subnet`, `node-warm`, `branch-warm` or `node-limit`.
    pub fn exhausted(&self) -> Option<&'static str> {
        use DomainError::*;
        match self {
            SubnetExhausted { .. } => Some("subnet"),
            NoWarmAddress { .. } | NotEnoughWarm { .. } => Some("node-warm"),
            NoWarmBranch { .. } => Some("branch-warm"),
            EniLimit { .. } | IpsPerEniLimit { .. } | BranchLimit { .. } => Some("node-limit"),
            _ => None,
        }
    }

    /// For a refusal that an agent answers by registering again, why, in the words of the API's
    /// `ipam-register` metadata: `stale-epoch`, `node-expired` or `node-unknown`.
    pub fn register_again(&self) -> Option<&'static str> {
        use DomainError::*;
        match self {
            StaleEpoch { .. } => Some("stale-epoch"),
            NodeExpired { .. } => Some("node-expired"),
            NodeNotFound { .. } => Some("node-unknown"),
            _ => None,
        }
    }

    /// How the API maps this refusal.
    pub fn code(&self) -> ErrorCode {
        use DomainError::*;
        match self {
            InvalidCidr { .. }
            | InvalidRequestId { .. }
            | InvalidName { .. }
            | InvalidAwsId { .. }
            | InvalidAz { .. }
            | InvalidMac { .. }
            | SecurityGroupCount { .. }
            | InvalidOwner { .. }
            | InvalidSettings { .. }
            | Limits(_)
            | PoolOutsideVpcRanges { .. }
            | SubnetPrefix { .. }
            | SubnetOutsidePools { .. }
            | NoAddresses { .. }
            | UnknownInstanceType { .. } => ErrorCode::InvalidArgument,
            Policy(PolicyError::TooManySecurityGroups { .. }) => ErrorCode::FailedPrecondition,
            Policy(_) => ErrorCode::InvalidArgument,
            SubnetNotFound { .. }
            | SubnetConfigNotFound { .. }
            | SgPolicyNotFound { .. }
            | NodeNotFound { .. }
            | EniNotFound { .. }
            | AttachmentNotFound { .. } => ErrorCode::NotFound,
            PoolOverlaps { .. } | SubnetConflict { .. } | SubnetOverlaps { .. } | AttachmentInUse { .. } => {
                ErrorCode::AlreadyExists
            }
            SubnetExhausted { .. }
            | EniLimit { .. }
            | IpsPerEniLimit { .. }
            | BranchLimit { .. }
            | NoWarmAddress { .. }
            | NoWarmBranch { .. }
            | NotEnoughWarm { .. } => ErrorCode::ResourceExhausted,
            SubnetConfigInUse { .. }
            | AzMismatch { .. }
            | NotQuarantined { .. }
            | TrunkingUnsupported { .. }
            | StaleEpoch { .. }
            | NodeActive { .. }
            | NodeExpired { .. }
            | EniState { .. }
            | NotSecondary { .. }
            | EniBusy { .. }
            | AddressNotOnEni { .. }
            | AddressState { .. }
            | PodEniDisabled { .. }
            | TrunkExists { .. }
            | NoTrunk { .. }
            | StaleLease { .. } => ErrorCode::FailedPrecondition,
        }
    }
}
