//! The in-process EC2 simulator: one VPC (subnets, instances, ENIs, private addresses) with the rules of EC2 the
//! agent relies on, EC2's request throttling, latency and injected faults. Scale and chaos tests run the agent
//! against it; moto (DESIGN.md §7) enforces neither instance limits nor throttling.
//!
//! ```text
//!   call ──▶ calls += 1 ──▶ sleep(latency / 2) ──▶ lock ─┬─ action's bucket empty ──▶ RequestLimitExceeded
//!                                                        ├─ fault queued / drawn  ──▶ its code, no effect
//!                                                        ├─ EC2's rules broken    ──▶ EC2's code, no effect
//!                                                        └─ effect ──▶ unlock ──▶ sleep(the rest) ──▶ answer
//! ```
//!
//! The effect lands halfway through the latency, so a caller that gives up during the second half has changed EC2
//! without learning it: the outcome a test oracle must treat as unknown. Faults injected "after the effect" do the
//! same without a timeout (EC2 answering 500 after the change).
//!
//! Throttling follows EC2's model: every API action has its own token bucket, full at first, refilled continuously;
//! a call takes one token or is refused with `RequestLimitExceeded` and changes nothing. Capacities and refill rates
//! come by category ([`ThrottleCategory`]); the defaults are the issue's numbers. Time is tokio's, so tests with a
//! paused clock (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) run instantly and exactly.
//!
//! Everything is deterministic for a given [`SimConfig::seed`] and order of calls: ids ("eni-" and 17 hex digits),
//! MACs, latency jitter and random faults.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::time::Duration;

use ipam_core::cidr::Ipv4Cidr;
use ipam_core::limits;
use ipam_core::limits::InstanceLimits;
use ipam_core::limits::LimitsError;
use tokio::time::Instant;

use super::CreateEni;
use super::Ec2;
use super::Ec2Error;
use super::EniAttachment;
use super::EniAttribute;
use super::EniFilter;
use super::InstanceTypeInfo;
use super::InterfaceType;
use super::NetworkInterface;
use super::Result;
use super::Subnet;
use super::Tag;

/// Addresses AWS reserves in every subnet: the first four (network, VPC router, DNS, future use) and the last.
const RESERVED_PER_SUBNET: u64 = 5;

/// The EC2 API actions the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// `CreateNetworkInterface`.
    CreateNetworkInterface,
    /// `AttachNetworkInterface`.
    AttachNetworkInterface,
    /// `DetachNetworkInterface`.
    DetachNetworkInterface,
    /// `DeleteNetworkInterface`.
    DeleteNetworkInterface,
    /// `AssignPrivateIpAddresses`.
    AssignPrivateIpAddresses,
    /// `UnassignPrivateIpAddresses`.
    UnassignPrivateIpAddresses,
    /// `DescribeNetworkInterfaces`.
    DescribeNetworkInterfaces,
    /// `DescribeSubnets`.
    DescribeSubnets,
    /// `DescribeInstanceTypes`.
    DescribeInstanceTypes,
    /// `ModifyNetworkInterfaceAttribute`.
    ModifyNetworkInterfaceAttribute,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Self; 10] = [
        Self::CreateNetworkInterface,
        Self::AttachNetworkInterface,
        Self::DetachNetworkInterface,
        Self::DeleteNetworkInterface,
        Self::AssignPrivateIpAddresses,
        Self::UnassignPrivateIpAddresses,
        Self::DescribeNetworkInterfaces,
        Self::DescribeSubnets,
        Self::DescribeInstanceTypes,
        Self::ModifyNetworkInterfaceAttribute,
    ];

    /// EC2's name of the action (also [`Ec2Error::operation`]).
    pub const fn name(self) -> &'static str {
        match self {
            Self::CreateNetworkInterface => "CreateNetworkInterface",
            Self::AttachNetworkInterface => "AttachNetworkInterface",
            Self::DetachNetworkInterface => "DetachNetworkInterface",
            Self::DeleteNetworkInterface => "DeleteNetworkInterface",
            Self::AssignPrivateIpAddresses => "AssignPrivateIpAddresses",
            Self::UnassignPrivateIpAddresses => "UnassignPrivateIpAddresses",
            Self::DescribeNetworkInterfaces => "DescribeNetworkInterfaces",
            Self::DescribeSubnets => "DescribeSubnets",
            Self::DescribeInstanceTypes => "DescribeInstanceTypes",
            Self::ModifyNetworkInterfaceAttribute => "ModifyNetworkInterfaceAttribute",
        }
    }

    /// The throttling category of the action.
    pub const fn category(self) -> ThrottleCategory {
        match self {
            Self::CreateNetworkInterface
            | Self::DeleteNetworkInterface
            | Self::AssignPrivateIpAddresses
            | Self::UnassignPrivateIpAddresses => ThrottleCategory::ResourceIntensive,
            Self::AttachNetworkInterface | Self::DetachNetworkInterface | Self::ModifyNetworkInterfaceAttribute => {
                ThrottleCategory::Mutating
            }
            Self::DescribeNetworkInterfaces | Self::DescribeSubnets | Self::DescribeInstanceTypes => {
                ThrottleCategory::Describe
            }
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How EC2 groups actions for throttling; each action still has a bucket of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThrottleCategory {
    /// Mutating actions that allocate or free addresses and ENIs: Create/DeleteNetworkInterface,
    /// Assign/UnassignPrivateIpAddresses.
    ResourceIntensive,
    /// Other mutating actions: Attach/DetachNetworkInterface, ModifyNetworkInterfaceAttribute (and
    /// AssociateTrunkInterface when the trait has it).
    Mutating,
    /// Non-mutating actions: Describe*.
    Describe,
}

/// One token bucket's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens when full: the burst.
    pub capacity: u32,
    /// Tokens added per second of simulated time (0: never refills).
    pub refill_per_second: u32,
}

/// EC2's request throttling, by category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Each resource-intensive action's bucket (default: 100 burst, 5 per second).
    pub resource_intensive: BucketConfig,
    /// Each other mutating action's bucket (default: 50 burst, 5 per second).
    pub mutating: BucketConfig,
    /// Each describe action's bucket (default: 100 burst, 20 per second).
    pub describe: BucketConfig,
}

impl ThrottleConfig {
    /// The bucket size of an action of `category`.
    pub const fn bucket(&self, category: ThrottleCategory) -> BucketConfig {
        match category {
            ThrottleCategory::ResourceIntensive => self.resource_intensive,
            ThrottleCategory::Mutating => self.mutating,
            ThrottleCategory::Describe => self.describe,
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            resource_intensive: BucketConfig {
                capacity: 100,
                refill_per_second: 5,
            },
            mutating: BucketConfig {
                capacity: 50,
                refill_per_second: 5,
            },
            describe: BucketConfig {
                capacity: 100,
                refill_per_second: 20,
            },
        }
    }
}

/// How long a call takes: `fixed` plus a deterministic jitter drawn uniformly from `0..=jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Latency {
    /// Always.
    pub fixed: Duration,
    /// At most this much more.
    pub jitter: Duration,
}

impl Latency {
    /// No latency: the call answers without yielding.
    pub const ZERO: Self = Self {
        fixed: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// A fixed latency without jitter.
    pub const fn fixed(fixed: Duration) -> Self {
        Self {
            fixed,
            jitter: Duration::ZERO,
        }
    }
}

/// Random failures of one operation: each call fails with `code` (before any effect) with `probability`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRate {
    /// From 0 to 1.
    pub probability: f64,
    /// The EC2 error code, e.g. "InternalError" or "RequestLimitExceeded".
    pub code: String,
}

/// The simulator's settings. The default is EC2 as the issue describes it: throttling on, no latency, no faults.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seeds the ids, MACs, latency jitter and random faults.
    pub seed: u64,
    /// EC2's request throttling; `None` turns it off.
    pub throttle: Option<ThrottleConfig>,
    /// The latency of every operation not in `latency_by_operation`.
    pub latency: Latency,
    /// Latencies of particular operations.
    pub latency_by_operation: BTreeMap<Operation, Latency>,
    /// Random failures by operation.
    pub fault_rates: BTreeMap<Operation, FaultRate>,
    /// How long a detach without `force` keeps the ENI "detaching" (still attached, not deletable); zero: at once.
    pub detach_delay: Duration,
    /// The account's quota of ENIs in the region (EC2's default is 5,000); creating past it fails with
    /// NetworkInterfaceLimitExceeded.
    pub max_network_interfaces: usize,
    /// The VPC's default security group, given to ENIs created without security groups.
    pub default_security_group: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            throttle: Some(ThrottleConfig::default()),
            latency: Latency::ZERO,
            latency_by_operation: BTreeMap::new(),
            fault_rates: BTreeMap::new(),
            detach_delay: Duration::ZERO,
            max_network_interfaces: 5_000,
            default_security_group: "sg-00000000000000001".to_owned(),
        }
    }
}

impl SimConfig {
    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// An empty token bucket, a probability outside 0..=1 or a fault without a code.
    pub fn validate(&self) -> Result<(), SimSetupError> {
        if let Some(throttle) = &self.throttle {
            for (category, bucket) in [
                (ThrottleCategory::ResourceIntensive, throttle.resource_intensive),
                (ThrottleCategory::Mutating, throttle.mutating),
                (ThrottleCategory::Describe, throttle.describe),
            ] {
                if bucket.capacity == 0 {
                    return Err(SimSetupError::EmptyBucket { category });
                }
            }
        }
        for (&operation, rate) in &self.fault_rates {
            check_fault_rate(operation, rate)?;
        }
        Ok(())
    }
}

fn check_fault_rate(operation: Operation, rate: &FaultRate) -> Result<(), SimSetupError> {
    if !(0.0..=1.0).contains(&rate.probability) {
        return Err(SimSetupError::BadProbability {
            operation,
            probability: rate.probability,
        });
    }
    if rate.code.is_empty() {
        return Err(SimSetupError::EmptyFaultCode { operation });
    }
    Ok(())
}

/// Why the simulator could not be set up as asked (configuration, subnets, instances).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimSetupError {
    /// A token bucket of capacity 0 would refuse every call.
    #[error("the {category:?} token bucket has capacity 0")]
    EmptyBucket {
        /// Its category.
        category: ThrottleCategory,
    },
    /// A fault probability outside 0..=1.
    #[error("fault probability {probability} of {operation} is not in 0..=1")]
    BadProbability {
        /// The operation.
        operation: Operation,
        /// As given.
        probability: f64,
    },
    /// A fault without an EC2 error code.
    #[error("a fault of {operation} without an error code")]
    EmptyFaultCode {
        /// The operation.
        operation: Operation,
    },
    /// A subnet CIDR that does not parse.
    #[error("subnet {subnet_id}: {why}")]
    BadCidr {
        /// The subnet.
        subnet_id: String,
        /// What is wrong.
        why: String,
    },
    /// AWS subnets are /16 to /28.
    #[error("subnet {subnet_id}: {cidr} is not a /16 to /28")]
    SubnetSize {
        /// The subnet.
        subnet_id: String,
        /// Its CIDR.
        cidr: String,
    },
    /// Subnets of one VPC cannot overlap.
    #[error("subnet {subnet_id} ({cidr}) overlaps subnet {other}")]
    OverlappingSubnet {
        /// The new subnet.
        subnet_id: String,
        /// Its CIDR.
        cidr: String,
        /// The subnet it overlaps.
        other: String,
    },
    /// The subnet id is taken.
    #[error("subnet {0} exists already")]
    DuplicateSubnet(String),
    /// No such subnet.
    #[error("no subnet {0}")]
    UnknownSubnet(String),
    /// The instance id is taken.
    #[error("instance {0} exists already")]
    DuplicateInstance(String),
    /// No such instance.
    #[error("no instance {0}")]
    UnknownInstance(String),
    /// Neither the built-in table nor the added types know the instance type.
    #[error("unknown instance type {0}")]
    UnknownInstanceType(String),
    /// Limits added for an instance type cannot be true.
    #[error("instance type {instance_type}: {source}")]
    BadLimits {
        /// The type.
        instance_type: String,
        /// What is wrong.
        source: LimitsError,
    },
    /// An instance's primary address cannot be used.
    #[error("primary address of instance {instance_id}: {why}")]
    BadPrimaryAddress {
        /// The instance.
        instance_id: String,
        /// What is wrong (EC2's message).
        why: String,
    },
}

/// What happened to the calls of one operation. `calls` counts calls begun (a call dropped during its latency
/// counts there only); the others count answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStats {
    /// Calls begun.
    pub calls: u64,
    /// Answered with success.
    pub succeeded: u64,
    /// Refused with RequestLimitExceeded by the token bucket.
    pub throttled: u64,
    /// Answered with any other error (EC2's rules or an injected fault).
    pub failed: u64,
}

/// An ENI as the simulator holds it: what `DescribeNetworkInterfaces` says, and what it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEni {
    /// As described.
    pub interface: NetworkInterface,
    /// The subnet's availability zone.
    pub availability_zone: String,
    /// Source/destination checking.
    pub source_dest_check: bool,
}

/// An instance as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimInstance {
    /// Its id.
    pub instance_id: String,
    /// Its type.
    pub instance_type: String,
    /// Its availability zone.
    pub availability_zone: String,
    /// Its type's limits.
    pub limits: InstanceLimits,
    /// Its ENIs by device index (detaching ones included).
    pub enis: BTreeMap<u8, String>,
}

/// The whole simulated VPC at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSnapshot {
    /// The subnets, by id.
    pub subnets: Vec<Subnet>,
    /// The instances, by id.
    pub instances: Vec<SimInstance>,
    /// The ENIs, in creation order.
    pub enis: Vec<SimEni>,
}

impl SimSnapshot {
    /// The ENI `eni_id`.
    pub fn eni(&self, eni_id: &str) -> Option<&SimEni> {
        self.enis.iter().find(|e| e.interface.eni_id == eni_id)
    }

    /// Every address held by an ENI, in order.
    pub fn addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.enis
            .iter()
            .flat_map(|e| std::iter::once(e.interface.primary_ip).chain(e.interface.secondary_ips.iter().copied()))
            .collect()
    }
}

/// Builds a [`SimEc2`] with its subnets and instances.
#[derive(Debug, Clone, Default)]
pub struct SimEc2Builder {
    config: SimConfig,
    instance_types: Vec<(String, InstanceLimits)>,
    subnets: Vec<(String, String, String)>,
    instances: Vec<(String, String, String, Ipv4Addr)>,
}

impl SimEc2Builder {
    /// The settings (default: [`SimConfig::default`]).
    #[must_use]
    pub fn config(mut self, config: SimConfig) -> Self {
        self.config = config;
        self
    }

    /// An instance type beyond (or replacing one of) the built-in table's.
    #[must_use]
    pub fn instance_type(mut self, name: impl Into<String>, limits: InstanceLimits) -> Self {
        self.instance_types.push((name.into(), limits));
        self
    }

    /// A subnet, e.g. `("subnet-0a", "100.64.0.0/24", "us-west-2a")`.
    #[must_use]
    pub fn subnet(mut self, subnet_id: impl Into<String>, cidr: impl Into<String>, az: impl Into<String>) -> Self {
        self.subnets.push((subnet_id.into(), cidr.into(), az.into()));
        self
    }

    /// A running instance whose primary ENI (device index 0) has `primary_ip` in `subnet_id`.
    #[must_use]
    pub fn instance(
        mut self,
        instance_id: impl Into<String>,
        instance_type: impl Into<String>,
        subnet_id: impl Into<String>,
        primary_ip: Ipv4Addr,
    ) -> Self {
        self.instances
            .push((instance_id.into(), instance_type.into(), subnet_id.into(), primary_ip));
        self
    }

    /// The simulator.
    ///
    /// # Errors
    ///
    /// The first setting, subnet or instance that cannot be.
    pub fn build(self) -> Result<SimEc2, SimSetupError> {
        let sim = SimEc2::new(self.config)?;
        for (name, limits) in self.instance_types {
            sim.add_instance_type(name, limits)?;
        }
        for (subnet_id, cidr, az) in self.subnets {
            sim.add_subnet(subnet_id, &cidr, az)?;
        }
        for (instance_id, instance_type, subnet_id, primary_ip) in self.instances {
            sim.launch_instance(instance_id, &instance_type, &subnet_id, primary_ip)?;
        }
        Ok(sim)
    }
}

/// The simulated EC2: one account, one region, one VPC. Share it through an `Arc`; calls lock an internal mutex
/// only while they decide (never across an await).
pub struct SimEc2 {
    inner: Mutex<Inner>,
}

impl fmt::Debug for SimEc2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("SimEc2")
            .field("subnets", &inner.world.subnets.len())
            .field("instances", &inner.world.instances.len())
            .field("enis", &inner.world.enis.len())
            .finish_non_exhaustive()
    }
}

impl SimEc2 {
    /// An empty VPC.
    ///
    /// # Errors
    ///
    /// The settings do not validate.
    pub fn new(config: SimConfig) -> Result<Self, SimSetupError> {
        config.validate()?;
        Ok(Self {
            inner: Mutex::new(Inner::new(config)),
        })
    }

    /// A builder with the default settings.
    pub fn builder() -> SimEc2Builder {
        SimEc2Builder::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere (a failed assertion in a test task) must not hide the state from the rest of the test.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds (or replaces) an instance type for instances launched from now on and for `DescribeInstanceTypes`.
    ///
    /// # Errors
    ///
    /// The limits do not validate.
    pub fn add_instance_type(&self, name: impl Into<String>, limits: InstanceLimits) -> Result<(), SimSetupError> {
        let name = name.into();
        limits.validate().map_err(|source| SimSetupError::BadLimits {
            instance_type: name.clone(),
            source,
        })?;
        self.lock().world.instance_types.insert(name, limits);
        Ok(())
    }

    /// Adds a subnet.
    ///
    /// # Errors
    ///
    /// A taken id, a bad CIDR, a size AWS does not allow or an overlap with another subnet.
    pub fn add_subnet(
        &self,
        subnet_id: impl Into<String>,
        cidr: &str,
        az: impl Into<String>,
    ) -> Result<Subnet, SimSetupError> {
        self.lock().world.add_subnet(subnet_id.into(), cidr, az.into())
    }

    /// Launches an instance with its primary ENI (device index 0, deleted on termination) holding `primary_ip` in
    /// `subnet_id`; returns the primary ENI.
    ///
    /// # Errors
    ///
    /// A taken instance id, an unknown subnet or type, or a primary address EC2 would refuse.
    pub fn launch_instance(
        &self,
        instance_id: impl Into<String>,
        instance_type: &str,
        subnet_id: &str,
        primary_ip: Ipv4Addr,
    ) -> Result<NetworkInterface, SimSetupError> {
        self.lock()
            .world
            .launch_instance(instance_id.into(), instance_type, subnet_id, primary_ip)
    }

    /// Terminates an instance: its ENIs marked delete-on-termination are deleted, the others detached.
    ///
    /// # Errors
    ///
    /// No such instance.
    pub fn terminate_instance(&self, instance_id: &str) -> Result<(), SimSetupError> {
        let mut inner = self.lock();
        inner.world.settle(Instant::now());
        inner.world.terminate_instance(instance_id)
    }

    /// The next `count` calls of `operation` fail with EC2 error `code` and change nothing (after any queued
    /// before them). They pass the token bucket first, as a real error answer does.
    pub fn fail_next(&self, operation: Operation, code: &str, count: u32) {
        self.queue_faults(operation, code, count, false);
    }

    /// The next `count` calls of `operation` take effect and then fail with EC2 error `code`: a lost answer.
    pub fn fail_next_after_effect(&self, operation: Operation, code: &str, count: u32) {
        self.queue_faults(operation, code, count, true);
    }

    fn queue_faults(&self, operation: Operation, code: &str, count: u32, after_effect: bool) {
        let mut inner = self.lock();
        let queue = inner.faults.entry(operation).or_default();
        for _ in 0..count {
            queue.push_back(Fault {
                code: code.to_owned(),
                after_effect,
            });
        }
    }

    /// Forgets the queued faults.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Makes calls of `operation` fail at random (seeded), or stops that with `None`.
    ///
    /// # Errors
    ///
    /// A probability outside 0..=1 or an empty code.
    pub fn set_fault_rate(&self, operation: Operation, rate: Option<FaultRate>) -> Result<(), SimSetupError> {
        let mut inner = self.lock();
        match rate {
            Some(rate) => {
                check_fault_rate(operation, &rate)?;
                inner.config.fault_rates.insert(operation, rate);
            }
            None => {
                inner.config.fault_rates.remove(&operation);
            }
        }
        Ok(())
    }

    /// Sets the latency of every operation without one of its own.
    pub fn set_latency(&self, latency: Latency) {
        self.lock().config.latency = latency;
    }

    /// Sets the latency of one operation.
    pub fn set_operation_latency(&self, operation: Operation, latency: Latency) {
        self.lock().config.latency_by_operation.insert(operation, latency);
    }

    /// Replaces the throttling (`None`: off); every bucket starts full again.
    ///
    /// # Errors
    ///
    /// A bucket of capacity 0.
    pub fn set_throttle(&self, throttle: Option<ThrottleConfig>) -> Result<(), SimSetupError> {
        let mut inner = self.lock();
        let config = SimConfig {
            throttle,
            ..inner.config.clone()
        };
        config.validate()?;
        inner.config = config;
        inner.buckets.clear();
        Ok(())
    }

    /// Whole tokens left in `operation`'s bucket now (`None` when throttling is off).
    pub fn tokens(&self, operation: Operation) -> Option<u32> {
        let mut inner = self.lock();
        let throttle = inner.config.throttle?;
        let now = Instant::now();
        let bucket = inner
            .buckets
            .entry(operation)
            .or_insert_with(|| TokenBucket::full(throttle.bucket(operation.category()), now));
        Some(bucket.tokens(now))
    }

    /// What happened to the calls of `operation`.
    pub fn stats(&self, operation: Operation) -> OpStats {
        self.lock().stats.get(&operation).copied().unwrap_or_default()
    }

    /// What happened to the calls of every operation called at least once.
    pub fn all_stats(&self) -> BTreeMap<Operation, OpStats> {
        self.lock().stats.clone()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.lock().stats.clear();
    }

    /// The whole VPC now (no throttling, latency or counting).
    pub fn snapshot(&self) -> SimSnapshot {
        let mut inner = self.lock();
        inner.world.settle(Instant::now());
        inner.world.snapshot()
    }

    /// The ENI `eni_id` now.
    pub fn eni(&self, eni_id: &str) -> Option<SimEni> {
        let mut inner = self.lock();
        inner.world.settle(Instant::now());
        inner.world.enis.get(eni_id).map(EniRecord::sim_view)
    }

    /// The ENIs of an instance now, by device index.
    pub fn instance_enis(&self, instance_id: &str) -> Vec<NetworkInterface> {
        let mut inner = self.lock();
        inner.world.settle(Instant::now());
        let world = &inner.world;
        world
            .instances
            .get(instance_id)
            .map(|instance| {
                instance
                    .interfaces
                    .values()
                    .filter_map(|id| world.enis.get(id))
                    .map(EniRecord::view)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The subnet `subnet_id` now (with its free addresses).
    pub fn subnet(&self, subnet_id: &str) -> Option<Subnet> {
        self.lock().world.subnets.get(subnet_id).map(SubnetRecord::view)
    }

    /// How many ENIs exist.
    pub fn eni_count(&self) -> usize {
        self.lock().world.enis.len()
    }

    /// Runs one call: latency, throttling, faults, then `effect` on the VPC under the lock.
    async fn call<T, F>(&self, operation: Operation, effect: F) -> Result<T>
    where
        F: FnOnce(&mut World, Instant) -> Result<T, Refusal> + Send,
        T: Send,
    {
        let delay = self.lock().begin(operation);
        let first = delay / 2;
        if !first.is_zero() {
            tokio::time::sleep(first).await;
        }
        let answer = self.lock().execute(operation, Instant::now(), effect);
        let rest = delay.saturating_sub(first);
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
        answer
    }
}

#[async_trait::async_trait]
impl Ec2 for SimEc2 {
    async fn create_network_interface(&self, request: &CreateEni) -> Result<NetworkInterface> {
        self.call(Operation::CreateNetworkInterface, |world, _| world.create(request))
            .await
    }

    async fn attach_network_interface(&self, eni_id: &str, instance_id: &str, device_index: u8) -> Result<String> {
        self.call(Operation::AttachNetworkInterface, |world, _| {
            world.attach(eni_id, instance_id, device_index)
        })
        .await
    }

    async fn detach_network_interface(&self, attachment_id: &str, force: bool) -> Result<()> {
        self.call(Operation::DetachNetworkInterface, |world, now| {
            world.detach(attachment_id, force, now)
        })
        .await
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<()> {
        self.call(Operation::DeleteNetworkInterface, |world, _| world.delete(eni_id))
            .await
    }

    async fn assign_private_ip_addresses(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        self.call(Operation::AssignPrivateIpAddresses, |world, _| {
            world.assign(eni_id, ips)
        })
        .await
    }

    async fn unassign_private_ip_addresses(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        self.call(Operation::UnassignPrivateIpAddresses, |world, _| {
            world.unassign(eni_id, ips)
        })
        .await
    }

    async fn describe_network_interfaces(&self, filter: &EniFilter) -> Result<Vec<NetworkInterface>> {
        self.call(Operation::DescribeNetworkInterfaces, |world, _| {
            world.describe_enis(filter)
        })
        .await
    }

    async fn describe_subnets(&self, subnet_ids: &[String]) -> Result<Vec<Subnet>> {
        self.call(Operation::DescribeSubnets, |world, _| {
            world.describe_subnets(subnet_ids)
        })
        .await
    }

    async fn describe_instance_types(&self, instance_types: &[String]) -> Result<Vec<InstanceTypeInfo>> {
        self.call(Operation::DescribeInstanceTypes, |world, _| {
            world.describe_instance_types(instance_types)
        })
        .await
    }

    async fn modify_network_interface_attribute(&self, eni_id: &str, attribute: &EniAttribute) -> Result<()> {
        self.call(Operation::ModifyNetworkInterfaceAttribute, |world, _| {
            world.modify(eni_id, attribute)
        })
        .await
    }
}

/// A queued fault.
#[derive(Debug, Clone)]
struct Fault {
    code: String,
    /// Whether the call takes effect before failing.
    after_effect: bool,
}

/// Everything behind the mutex.
#[derive(Debug)]
struct Inner {
    config: SimConfig,
    world: World,
    /// Each action's bucket, made full at its first call.
    buckets: BTreeMap<Operation, TokenBucket>,
    stats: BTreeMap<Operation, OpStats>,
    faults: BTreeMap<Operation, VecDeque<Fault>>,
    jitter: XorShift64,
    random_faults: XorShift64,
}

impl Inner {
    fn new(config: SimConfig) -> Self {
        Self {
            world: World::new(&config),
            buckets: BTreeMap::new(),
            stats: BTreeMap::new(),
            faults: BTreeMap::new(),
            // Separate streams, so that turning jitter on does not move the random faults.
            jitter: XorShift64::new(config.seed ^ 0x6a69_7474_6572),
            random_faults: XorShift64::new(config.seed ^ 0x6661_756c_7473),
            config,
        }
    }

    /// Counts a call and draws its latency.
    fn begin(&mut self, operation: Operation) -> Duration {
        self.stats.entry(operation).or_default().calls += 1;
        let latency = self
            .config
            .latency_by_operation
            .get(&operation)
            .copied()
            .unwrap_or(self.config.latency);
        let jitter_nanos = u64::try_from(latency.jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if jitter_nanos == 0 {
            0
        } else {
            self.jitter.below(jitter_nanos.saturating_add(1))
        };
        latency.fixed.saturating_add(Duration::from_nanos(jitter))
    }

    /// Throttling, faults, then the effect; counts the answer.
    fn execute<T>(
        &mut self,
        operation: Operation,
        now: Instant,
        effect: impl FnOnce(&mut World, Instant) -> Result<T, Refusal>,
    ) -> Result<T> {
        self.world.settle(now);
        let answer = self.decide(operation, now, effect);
        let stats = self.stats.entry(operation).or_default();
        match &answer {
            Ok(_) => stats.succeeded += 1,
            Err(e) if e.code == THROTTLED => stats.throttled += 1,
            Err(_) => stats.failed += 1,
        }
        answer
    }

    fn decide<T>(
        &mut self,
        operation: Operation,
        now: Instant,
        effect: impl FnOnce(&mut World, Instant) -> Result<T, Refusal>,
    ) -> Result<T> {
        let error = |code: &str, message: &str| Ec2Error::new(operation.name(), code, message);
        if let Some(throttle) = &self.config.throttle {
            let bucket = self
                .buckets
                .entry(operation)
                .or_insert_with(|| TokenBucket::full(throttle.bucket(operation.category()), now));
            if !bucket.try_take(now) {
                tracing::debug!(%operation, "simulated EC2 throttled a call");
                return Err(error(THROTTLED, "Request limit exceeded."));
            }
        }
        let queued = self.faults.get_mut(&operation).and_then(VecDeque::pop_front);
        let fault = queued.or_else(|| {
            let rate = self.config.fault_rates.get(&operation)?;
            (self.random_faults.unit() < rate.probability).then(|| Fault {
                code: rate.code.clone(),
                after_effect: false,
            })
        });
        const INJECTED: &str = "injected by the EC2 simulator";
        if let Some(fault) = &fault
            && !fault.after_effect
        {
            return Err(error(&fault.code, INJECTED));
        }
        let answer = effect(&mut self.world, now).map_err(|r| error(r.code, &r.message))?;
        match fault {
            Some(fault) => Err(error(&fault.code, INJECTED)),
            None => Ok(answer),
        }
    }
}

/// EC2's throttling error code.
const THROTTLED: &str = "RequestLimitExceeded";

/// EC2 refusing a call: its error code and message.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    message: String,
}

fn refuse<T>(code: &'static str, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        code,
        message: message.into(),
    })
}

fn eni_not_found<T>(eni_id: &str) -> Result<T, Refusal> {
    refuse(
        "InvalidNetworkInterfaceID.NotFound",
        format!("The networkInterface ID '{eni_id}' does not exist"),
    )
}

#[derive(Debug, Clone)]
struct SubnetRecord {
    id: String,
    cidr: Ipv4Cidr,
    availability_zone: String,
    /// Address → the ENI holding it.
    used: BTreeMap<Ipv4Addr, String>,
}

impl SubnetRecord {
    fn view(&self) -> Subnet {
        let free = self
            .cidr
            .size()
            .saturating_sub(RESERVED_PER_SUBNET)
            .saturating_sub(self.used.len() as u64);
        Subnet {
            subnet_id: self.id.clone(),
            cidr: self.cidr.to_string(),
            availability_zone: self.availability_zone.clone(),
            available_ips: u32::try_from(free).unwrap_or(u32::MAX),
        }
    }

    /// Whether EC2 would give `ips` (not yet on the ENI asking) to an ENI in this subnet.
    fn check_new(&self, ips: &[Ipv4Addr]) -> Result<(), Refusal> {
        let mut seen = BTreeSet::new();
        for &ip in ips {
            if !seen.insert(ip) {
                return refuse(
                    "InvalidParameterValue",
                    format!("Address {ip} is specified more than once"),
                );
            }
            let Some(offset) = self.cidr.offset_of(ip) else {
                return refuse(
                    "InvalidParameterValue",
                    format!("Address {ip} does not fall within the subnet's address range"),
                );
            };
            if offset < 4 || offset + 1 == self.cidr.size() {
                return refuse(
                    "InvalidParameterValue",
                    format!("Address {ip} is in subnet's reserved address range"),
                );
            }
            if self.used.contains_key(&ip) {
                return refuse("InvalidIPAddress.InUse", format!("Address {ip} is in use."));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct InstanceRecord {
    instance_type: String,
    availability_zone: String,
    limits: InstanceLimits,
    /// Device index → ENI id.
    interfaces: BTreeMap<u8, String>,
}

#[derive(Debug, Clone)]
struct AttachmentRecord {
    id: String,
    instance_id: String,
    device_index: u8,
    delete_on_termination: bool,
    detaching: bool,
}

#[derive(Debug, Clone)]
struct EniRecord {
    /// Creation order.
    seq: u64,
    id: String,
    mac: String,
    subnet_id: String,
    availability_zone: String,
    primary_ip: Ipv4Addr,
    secondary_ips: Vec<Ipv4Addr>,
    security_groups: Vec<String>,
    interface_type: InterfaceType,
    description: String,
    tags: Vec<Tag>,
    source_dest_check: bool,
    attachment: Option<AttachmentRecord>,
}

impl EniRecord {
    fn address_count(&self) -> usize {
        1 + self.secondary_ips.len()
    }

    fn holds(&self, ip: Ipv4Addr) -> bool {
        self.primary_ip == ip || self.secondary_ips.contains(&ip)
    }

    fn view(&self) -> NetworkInterface {
        NetworkInterface {
            eni_id: self.id.clone(),
            mac: self.mac.clone(),
            subnet_id: self.subnet_id.clone(),
            primary_ip: self.primary_ip,
            secondary_ips: self.secondary_ips.clone(),
            security_groups: self.security_groups.clone(),
            interface_type: self.interface_type,
            status: if self.attachment.is_some() {
                "in-use"
            } else {
                "available"
            }
            .to_owned(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            attachment: self.attachment.as_ref().map(|a| EniAttachment {
                attachment_id: a.id.clone(),
                instance_id: a.instance_id.clone(),
                device_index: a.device_index,
                status: if a.detaching { "detaching" } else { "attached" }.to_owned(),
                delete_on_termination: a.delete_on_termination,
            }),
        }
    }

    fn sim_view(&self) -> SimEni {
        SimEni {
            interface: self.view(),
            availability_zone: self.availability_zone.clone(),
            source_dest_check: self.source_dest_check,
        }
    }
}

/// What a ClientToken was first used for.
#[derive(Debug, Clone)]
struct TokenRecord {
    request: CreateEni,
    eni_id: String,
    /// The first answer, given again if the ENI is gone.
    answer: NetworkInterface,
}

/// The VPC and the rules EC2 applies to it.
#[derive(Debug)]
struct World {
    subnets: BTreeMap<String, SubnetRecord>,
    instances: BTreeMap<String, InstanceRecord>,
    enis: BTreeMap<String, EniRecord>,
    /// Attachment id → ENI id.
    attachments: BTreeMap<String, String>,
    client_tokens: BTreeMap<String, TokenRecord>,
    /// Instance types added to (or replacing entries of) the built-in table.
    instance_types: BTreeMap<String, InstanceLimits>,
    /// ENI id → when its detach completes.
    detaching: BTreeMap<String, Instant>,
    ids: IdSource,
    detach_delay: Duration,
    max_network_interfaces: usize,
    default_security_group: String,
}

impl World {
    fn new(config: &SimConfig) -> Self {
        Self {
            subnets: BTreeMap::new(),
            instances: BTreeMap::new(),
            enis: BTreeMap::new(),
            attachments: BTreeMap::new(),
            client_tokens: BTreeMap::new(),
            instance_types: BTreeMap::new(),
            detaching: BTreeMap::new(),
            ids: IdSource::new(config.seed),
            detach_delay: config.detach_delay,
            max_network_interfaces: config.max_network_interfaces,
            default_security_group: config.default_security_group.clone(),
        }
    }

    fn limits_of(&self, instance_type: &str) -> Option<InstanceLimits> {
        self.instance_types
            .get(instance_type)
            .copied()
            .or_else(|| limits::lookup(instance_type))
    }

    /// Completes the detaches whose time has come.
    fn settle(&mut self, now: Instant) {
        let due: Vec<String> = self
            .detaching
            .iter()
            .filter(|&(_, &at)| at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for eni_id in due {
            self.finish_detach(&eni_id);
        }
    }

    fn finish_detach(&mut self, eni_id: &str) {
        self.detaching.remove(eni_id);
        let Some(attachment) = self.enis.get_mut(eni_id).and_then(|eni| eni.attachment.take()) else {
            return;
        };
        self.attachments.remove(&attachment.id);
        if let Some(instance) = self.instances.get_mut(&attachment.instance_id) {
            instance.interfaces.remove(&attachment.device_index);
        }
    }

    fn snapshot(&self) -> SimSnapshot {
        let mut enis: Vec<&EniRecord> = self.enis.values().collect();
        enis.sort_by_key(|e| e.seq);
        SimSnapshot {
            subnets: self.subnets.values().map(SubnetRecord::view).collect(),
            instances: self
                .instances
                .iter()
                .map(|(id, i)| SimInstance {
                    instance_id: id.clone(),
                    instance_type: i.instance_type.clone(),
                    availability_zone: i.availability_zone.clone(),
                    limits: i.limits,
                    enis: i.interfaces.clone(),
                })
                .collect(),
            enis: enis.into_iter().map(EniRecord::sim_view).collect(),
        }
    }

    fn add_subnet(&mut self, subnet_id: String, cidr: &str, az: String) -> Result<Subnet, SimSetupError> {
        if self.subnets.contains_key(&subnet_id) {
            return Err(SimSetupError::DuplicateSubnet(subnet_id));
        }
        let parsed: Ipv4Cidr = cidr
            .parse()
            .map_err(|e: ipam_core::DomainError| SimSetupError::BadCidr {
                subnet_id: subnet_id.clone(),
                why: e.to_string(),
            })?;
        if !(16..=28).contains(&parsed.prefix()) {
            return Err(SimSetupError::SubnetSize {
                subnet_id,
                cidr: cidr.to_owned(),
            });
        }
        if let Some(other) = self.subnets.values().find(|s| s.cidr.overlaps(&parsed)) {
            return Err(SimSetupError::OverlappingSubnet {
                subnet_id,
                cidr: cidr.to_owned(),
                other: other.id.clone(),
            });
        }
        let record = SubnetRecord {
            id: subnet_id.clone(),
            cidr: parsed,
            availability_zone: az,
            used: BTreeMap::new(),
        };
        let view = record.view();
        self.subnets.insert(subnet_id, record);
        Ok(view)
    }

    fn launch_instance(
        &mut self,
        instance_id: String,
        instance_type: &str,
        subnet_id: &str,
        primary_ip: Ipv4Addr,
    ) -> Result<NetworkInterface, SimSetupError> {
        if self.instances.contains_key(&instance_id) {
            return Err(SimSetupError::DuplicateInstance(instance_id));
        }
        let limits = self
            .limits_of(instance_type)
            .ok_or_else(|| SimSetupError::UnknownInstanceType(instance_type.to_owned()))?;
        let subnet = self
            .subnets
            .get(subnet_id)
            .ok_or_else(|| SimSetupError::UnknownSubnet(subnet_id.to_owned()))?;
        subnet
            .check_new(&[primary_ip])
            .map_err(|r| SimSetupError::BadPrimaryAddress {
                instance_id: instance_id.clone(),
                why: r.message,
            })?;
        let availability_zone = subnet.availability_zone.clone();
        let attachment_id = self.ids.next("eni-attach");
        let primary = CreateEni {
            subnet_id: subnet_id.to_owned(),
            description: "Primary network interface".to_owned(),
            security_groups: Vec::new(),
            primary_ip,
            secondary_ips: Vec::new(),
            interface_type: InterfaceType::Interface,
            tags: Vec::new(),
            client_token: String::new(),
        };
        let eni = self.new_eni(&primary);
        eni.attachment = Some(AttachmentRecord {
            id: attachment_id.clone(),
            instance_id: instance_id.clone(),
            device_index: 0,
            delete_on_termination: true,
            detaching: false,
        });
        let view = eni.view();
        self.attachments.insert(attachment_id, view.eni_id.clone());
        self.instances.insert(
            instance_id,
            InstanceRecord {
                instance_type: instance_type.to_owned(),
                availability_zone,
                limits,
                interfaces: BTreeMap::from([(0, view.eni_id.clone())]),
            },
        );
        Ok(view)
    }

    fn terminate_instance(&mut self, instance_id: &str) -> Result<(), SimSetupError> {
        let instance = self
            .instances
            .get(instance_id)
            .ok_or_else(|| SimSetupError::UnknownInstance(instance_id.to_owned()))?;
        let enis: Vec<String> = instance.interfaces.values().cloned().collect();
        for eni_id in enis {
            let delete = self
                .enis
                .get(&eni_id)
                .and_then(|e| e.attachment.as_ref())
                .is_some_and(|a| a.delete_on_termination);
            self.finish_detach(&eni_id);
            if delete {
                self.remove_eni(&eni_id);
            }
        }
        self.instances.remove(instance_id);
        Ok(())
    }

    /// Makes an ENI whose addresses were checked.
    fn new_eni(&mut self, request: &CreateEni) -> &mut EniRecord {
        let (seq, id) = self.ids.next_with_seq("eni");
        let mac = self.ids.next_mac();
        let security_groups = if request.security_groups.is_empty() {
            vec![self.default_security_group.clone()]
        } else {
            request.security_groups.clone()
        };
        let mut availability_zone = String::new();
        if let Some(subnet) = self.subnets.get_mut(&request.subnet_id) {
            availability_zone = subnet.availability_zone.clone();
            for &ip in std::iter::once(&request.primary_ip).chain(&request.secondary_ips) {
                subnet.used.insert(ip, id.clone());
            }
        }
        self.enis.entry(id.clone()).or_insert(EniRecord {
            seq,
            id,
            mac,
            subnet_id: request.subnet_id.clone(),
            availability_zone,
            primary_ip: request.primary_ip,
            secondary_ips: request.secondary_ips.clone(),
            security_groups,
            interface_type: request.interface_type,
            description: request.description.clone(),
            tags: request.tags.clone(),
            source_dest_check: true,
            attachment: None,
        })
    }

    /// Deletes an ENI and frees its addresses.
    fn remove_eni(&mut self, eni_id: &str) {
        let Some(eni) = self.enis.remove(eni_id) else {
            return;
        };
        if let Some(subnet) = self.subnets.get_mut(&eni.subnet_id) {
            subnet.used.remove(&eni.primary_ip);
            for ip in &eni.secondary_ips {
                subnet.used.remove(ip);
            }
        }
    }

    fn create(&mut self, request: &CreateEni) -> Result<NetworkInterface, Refusal> {
        if !request.client_token.is_empty()
            && let Some(known) = self.client_tokens.get(&request.client_token)
        {
            if known.request != *request {
                return refuse(
                    "IdempotentParameterMismatch",
                    format!(
                        "Client token '{}' was used before with different parameters",
                        request.client_token
                    ),
                );
            }
            return Ok(self
                .enis
                .get(&known.eni_id)
                .map_or_else(|| known.answer.clone(), EniRecord::view));
        }
        let Some(subnet) = self.subnets.get(&request.subnet_id) else {
            return refuse(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{}' does not exist", request.subnet_id),
            );
        };
        if self.enis.len() >= self.max_network_interfaces {
            return refuse(
                "NetworkInterfaceLimitExceeded",
                format!(
                    "You have reached the maximum number of network interfaces ({}) in this region",
                    self.max_network_interfaces
                ),
            );
        }
        let mut ips = vec![request.primary_ip];
        ips.extend_from_slice(&request.secondary_ips);
        subnet.check_new(&ips)?;
        let answer = self.new_eni(request).view();
        if !request.client_token.is_empty() {
            self.client_tokens.insert(
                request.client_token.clone(),
                TokenRecord {
                    request: request.clone(),
                    eni_id: answer.eni_id.clone(),
                    answer: answer.clone(),
                },
            );
        }
        Ok(answer)
    }

    fn attach(&mut self, eni_id: &str, instance_id: &str, device_index: u8) -> Result<String, Refusal> {
        let Some(eni) = self.enis.get(eni_id) else {
            return eni_not_found(eni_id);
        };
        let Some(instance) = self.instances.get(instance_id) else {
            return refuse(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{instance_id}' does not exist"),
            );
        };
        if eni.attachment.is_some() {
            return refuse(
                "InvalidNetworkInterface.InUse",
                format!("Interface: [{eni_id}] in use."),
            );
        }
        if eni.availability_zone != instance.availability_zone {
            return refuse(
                "InvalidParameterValue",
                format!(
                    "The network interface {eni_id} ({}) and the instance {instance_id} ({}) are in different \
                     availability zones",
                    eni.availability_zone, instance.availability_zone
                ),
            );
        }
        if instance.interfaces.contains_key(&device_index) {
            return refuse(
                "InvalidParameterValue",
                format!("Instance '{instance_id}' already has an interface attached at device index '{device_index}'."),
            );
        }
        if instance.interfaces.len() >= usize::from(instance.limits.max_enis) {
            return refuse(
                "AttachmentLimitExceeded",
                format!(
                    "Interface count {} exceeds the limit for {}",
                    instance.interfaces.len() + 1,
                    instance.instance_type
                ),
            );
        }
        if eni.interface_type == InterfaceType::Trunk && !instance.limits.trunking {
            return refuse(
                "UnsupportedOperation",
                format!(
                    "Instance type {} does not support trunk interfaces",
                    instance.instance_type
                ),
            );
        }
        if eni.address_count() > usize::from(instance.limits.ipv4_per_eni) {
            return refuse(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Interface {eni_id} has {} private addresses, more than the {} per interface of {}",
                    eni.address_count(),
                    instance.limits.ipv4_per_eni,
                    instance.instance_type
                ),
            );
        }
        let attachment_id = self.ids.next("eni-attach");
        if let Some(instance) = self.instances.get_mut(instance_id) {
            instance.interfaces.insert(device_index, eni_id.to_owned());
        }
        if let Some(eni) = self.enis.get_mut(eni_id) {
            eni.attachment = Some(AttachmentRecord {
                id: attachment_id.clone(),
                instance_id: instance_id.to_owned(),
                device_index,
                delete_on_termination: false,
                detaching: false,
            });
        }
        self.attachments.insert(attachment_id.clone(), eni_id.to_owned());
        Ok(attachment_id)
    }

    fn detach(&mut self, attachment_id: &str, force: bool, now: Instant) -> Result<(), Refusal> {
        let attachment = self
            .attachments
            .get(attachment_id)
            .and_then(|eni_id| self.enis.get(eni_id))
            .and_then(|eni| Some((eni.id.clone(), eni.attachment.as_ref()?.clone())));
        let Some((eni_id, attachment)) = attachment else {
            return refuse(
                "InvalidAttachmentID.NotFound",
                format!("The attachment ID '{attachment_id}' does not exist"),
            );
        };
        if attachment.device_index == 0 {
            return refuse(
                "OperationNotPermitted",
                "The network interface at device index 0 cannot be detached.",
            );
        }
        if force || self.detach_delay.is_zero() {
            self.finish_detach(&eni_id);
        } else if !attachment.detaching {
            if let Some(a) = self.enis.get_mut(&eni_id).and_then(|e| e.attachment.as_mut()) {
                a.detaching = true;
            }
            self.detaching.insert(eni_id, now + self.detach_delay);
        }
        Ok(())
    }

    fn delete(&mut self, eni_id: &str) -> Result<(), Refusal> {
        let Some(eni) = self.enis.get(eni_id) else {
            return eni_not_found(eni_id);
        };
        if eni.attachment.is_some() {
            return refuse(
                "InvalidNetworkInterface.InUse",
                format!("Interface: [{eni_id}] in use."),
            );
        }
        self.remove_eni(eni_id);
        Ok(())
    }

    fn assign(&mut self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), Refusal> {
        let Some(eni) = self.enis.get(eni_id) else {
            return eni_not_found(eni_id);
        };
        if ips.is_empty() {
            return refuse(
                "MissingParameter",
                "The request must contain the parameter PrivateIpAddress",
            );
        }
        // Addresses the ENI already has are no change: a retried assign succeeds.
        let new: Vec<Ipv4Addr> = ips.iter().copied().filter(|&ip| !eni.holds(ip)).collect();
        let Some(subnet) = self.subnets.get(&eni.subnet_id) else {
            return refuse(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{}' does not exist", eni.subnet_id),
            );
        };
        subnet.check_new(&new)?;
        if let Some(attachment) = &eni.attachment
            && let Some(instance) = self.instances.get(&attachment.instance_id)
            && eni.address_count() + new.len() > usize::from(instance.limits.ipv4_per_eni)
        {
            return refuse(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Number of private addresses will exceed limit: {} + {} > {} per interface of {}",
                    eni.address_count(),
                    new.len(),
                    instance.limits.ipv4_per_eni,
                    instance.instance_type
                ),
            );
        }
        let subnet_id = eni.subnet_id.clone();
        if let Some(subnet) = self.subnets.get_mut(&subnet_id) {
            for &ip in &new {
                subnet.used.insert(ip, eni_id.to_owned());
            }
        }
        if let Some(eni) = self.enis.get_mut(eni_id) {
            eni.secondary_ips.extend(new);
        }
        Ok(())
    }

    fn unassign(&mut self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), Refusal> {
        let Some(eni) = self.enis.get_mut(eni_id) else {
            return eni_not_found(eni_id);
        };
        if ips.is_empty() {
            return refuse(
                "MissingParameter",
                "The request must contain the parameter PrivateIpAddress",
            );
        }
        if ips.contains(&eni.primary_ip) {
            return refuse(
                "InvalidParameterValue",
                format!(
                    "The primary private address {} of {eni_id} cannot be unassigned",
                    eni.primary_ip
                ),
            );
        }
        if let Some(ip) = ips.iter().find(|ip| !eni.secondary_ips.contains(ip)) {
            return refuse(
                "InvalidParameterValue",
                format!("Some of the specified addresses are not assigned to interface {eni_id}: {ip}"),
            );
        }
        eni.secondary_ips.retain(|ip| !ips.contains(ip));
        if let Some(subnet) = self.subnets.get_mut(&eni.subnet_id) {
            for ip in ips {
                subnet.used.remove(ip);
            }
        }
        Ok(())
    }

    fn describe_enis(&self, filter: &EniFilter) -> Result<Vec<NetworkInterface>, Refusal> {
        if filter.eni_ids.is_empty() && filter.instance_id.is_none() && filter.tags.is_empty() {
            return refuse(
                "InvalidParameterValue",
                "The simulator refuses to describe every network interface: give ids, an instance or tags",
            );
        }
        let candidates: Vec<&EniRecord> = if !filter.eni_ids.is_empty() {
            let mut found = Vec::new();
            for id in &filter.eni_ids {
                match self.enis.get(id) {
                    Some(eni) => found.push(eni),
                    None => return eni_not_found(id),
                }
            }
            found
        } else if let Some(instance_id) = &filter.instance_id {
            self.instances
                .get(instance_id)
                .map(|i| i.interfaces.values().filter_map(|id| self.enis.get(id)).collect())
                .unwrap_or_default()
        } else {
            self.enis.values().collect()
        };
        let mut matching: Vec<&EniRecord> = candidates
            .into_iter()
            .filter(|eni| {
                filter
                    .instance_id
                    .as_ref()
                    .is_none_or(|want| eni.attachment.as_ref().is_some_and(|a| &a.instance_id == want))
            })
            .filter(|eni| filter.tags.iter().all(|tag| eni.tags.contains(tag)))
            .collect();
        matching.sort_by_key(|e| e.seq);
        matching.dedup_by_key(|e| e.seq);
        Ok(matching.into_iter().map(EniRecord::view).collect())
    }

    fn describe_subnets(&self, subnet_ids: &[String]) -> Result<Vec<Subnet>, Refusal> {
        if subnet_ids.is_empty() {
            return Ok(self.subnets.values().map(SubnetRecord::view).collect());
        }
        let mut seen = BTreeSet::new();
        let mut answer = Vec::new();
        for id in subnet_ids {
            let Some(subnet) = self.subnets.get(id) else {
                return refuse(
                    "InvalidSubnetID.NotFound",
                    format!("The subnet ID '{id}' does not exist"),
                );
            };
            if seen.insert(id) {
                answer.push(subnet.view());
            }
        }
        Ok(answer)
    }

    fn describe_instance_types(&self, instance_types: &[String]) -> Result<Vec<InstanceTypeInfo>, Refusal> {
        let info = |name: &str, l: InstanceLimits| InstanceTypeInfo {
            instance_type: name.to_owned(),
            max_enis: u32::from(l.max_enis),
            ipv4_per_eni: u32::from(l.ipv4_per_eni),
            trunking: l.trunking,
        };
        if instance_types.is_empty() {
            let mut all: BTreeMap<&str, InstanceLimits> = limits::known_types().collect();
            all.extend(self.instance_types.iter().map(|(name, l)| (name.as_str(), *l)));
            return Ok(all.into_iter().map(|(name, l)| info(name, l)).collect());
        }
        let unknown: Vec<&str> = instance_types
            .iter()
            .filter(|t| self.limits_of(t).is_none())
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return refuse(
                "InvalidInstanceType",
                format!(
                    "The following supplied instance types do not exist: [{}]",
                    unknown.join(", ")
                ),
            );
        }
        let mut seen = BTreeSet::new();
        Ok(instance_types
            .iter()
            .filter(|t| seen.insert(*t))
            .filter_map(|t| Some(info(t, self.limits_of(t)?)))
            .collect())
    }

    fn modify(&mut self, eni_id: &str, attribute: &EniAttribute) -> Result<(), Refusal> {
        let Some(eni) = self.enis.get_mut(eni_id) else {
            return eni_not_found(eni_id);
        };
        match attribute {
            EniAttribute::DeleteOnTermination { attachment_id, value } => {
                match eni.attachment.as_mut().filter(|a| &a.id == attachment_id) {
                    Some(attachment) => attachment.delete_on_termination = *value,
                    None => {
                        return refuse(
                            "InvalidAttachmentID.NotFound",
                            format!("The attachment ID '{attachment_id}' does not exist on {eni_id}"),
                        );
                    }
                }
            }
            EniAttribute::SecurityGroups(groups) => {
                if groups.is_empty() {
                    return refuse("InvalidParameterValue", "At least one security group is required");
                }
                eni.security_groups = groups.clone();
            }
            EniAttribute::SourceDestCheck(value) => eni.source_dest_check = *value,
        }
        Ok(())
    }
}

/// Deterministic ids and MACs that look like EC2's and never repeat.
#[derive(Debug)]
struct IdSource {
    key: u64,
    ids: u64,
    macs: u64,
}

impl IdSource {
    fn new(seed: u64) -> Self {
        Self {
            key: mix(seed),
            ids: 0,
            macs: 0,
        }
    }

    /// `prefix` + "-" + 17 hex digits, like "eni-0a1b2c3d4e5f67890".
    fn next(&mut self, prefix: &str) -> String {
        self.next_with_seq(prefix).1
    }

    fn next_with_seq(&mut self, prefix: &str) -> (u64, String) {
        self.ids += 1;
        // `mix` is a bijection, so distinct counters give distinct ids.
        (
            self.ids,
            format!("{prefix}-{:017x}", mix(self.ids.wrapping_add(self.key))),
        )
    }

    /// A locally administered unicast MAC ("02:…"), lower case.
    fn next_mac(&mut self) -> String {
        const MASK: u64 = (1 << 40) - 1;
        self.macs += 1;
        // Multiplying by an odd number and adding a constant is a bijection modulo 2^40: unique for 2^40 ENIs.
        let v = (self.macs.wrapping_mul(0x9E37_79B9_7F4B) ^ self.key) & MASK;
        let b = v.to_be_bytes();
        format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[3], b[4], b[5], b[6], b[7])
    }
}

/// splitmix64's finaliser: a bijection of u64 that scatters counters.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xorshift64: small, fast and reproducible.
#[derive(Debug, Clone)]
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> Self {
        // xorshift never leaves 0; mix(x) is 0 only for x = 0.
        Self(mix(seed).max(1))
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is negligible for latencies).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Fractions of a token: with `UNITS_PER_TOKEN` = 10^9, a rate of r tokens per second is r units per nanosecond, so
/// refilling is exact integer arithmetic.
const UNITS_PER_TOKEN: u64 = 1_000_000_000;

/// One action's token bucket.
#[derive(Debug, Clone)]
struct TokenBucket {
    /// In units.
    capacity: u64,
    /// Units per nanosecond = tokens per second.
    refill_per_second: u64,
    /// In units.
    level: u64,
    updated: Instant,
}

impl TokenBucket {
    fn full(config: BucketConfig, now: Instant) -> Self {
        let capacity = u64::from(config.capacity) * UNITS_PER_TOKEN;
        Self {
            capacity,
            refill_per_second: u64::from(config.refill_per_second),
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now <= self.updated {
            return;
        }
        let gained = now
            .duration_since(self.updated)
            .as_nanos()
            .saturating_mul(u128::from(self.refill_per_second));
        let level = (u128::from(self.level) + gained).min(u128::from(self.capacity));
        self.level = u64::try_from(level).unwrap_or(self.capacity);
        self.updated = now;
    }

    /// Takes a token if there is one.
    fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.level >= UNITS_PER_TOKEN {
            self.level -= UNITS_PER_TOKEN;
            true
        } else {
            false
        }
    }

    /// Whole tokens now.
    fn tokens(&mut self, now: Instant) -> u32 {
        self.refill(now);
        u32::try_from(self.level / UNITS_PER_TOKEN).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(capacity: u32, refill_per_second: u32, now: Instant) -> TokenBucket {
        TokenBucket::full(
            BucketConfig {
                capacity,
                refill_per_second,
            },
            now,
        )
    }

    #[test]
    fn a_bucket_starts_full_and_empties_after_its_burst() {
        let now = Instant::now();
        let mut b = bucket(100, 5, now);
        assert_eq!(b.tokens(now), 100);
        for i in 0..100 {
            assert!(b.try_take(now), "call {i} of the burst");
        }
        assert!(!b.try_take(now));
        assert_eq!(b.tokens(now), 0);
    }

    #[test]
    fn a_bucket_refills_at_its_rate_exactly() {
        let start = Instant::now();
        let mut b = bucket(50, 5, start);
        for _ in 0..50 {
            assert!(b.try_take(start));
        }
        // 5 per second: one token every 200 ms, not a nanosecond earlier.
        assert!(!b.try_take(start + Duration::from_millis(199)));
        assert!(b.try_take(start + Duration::from_millis(200)));
        assert!(!b.try_take(start + Duration::from_millis(200)));
        let later = start + Duration::from_millis(200) + Duration::from_secs(3);
        assert_eq!(b.tokens(later), 15);
        // Fractions carry over: 100 ms is half a token, twice is one.
        let mut half = bucket(1, 5, start);
        assert!(half.try_take(start));
        assert!(!half.try_take(start + Duration::from_millis(100)));
        assert!(half.try_take(start + Duration::from_millis(200)));
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_capacity() {
        let start = Instant::now();
        let mut b = bucket(100, 20, start);
        assert!(b.try_take(start));
        let much_later = start + Duration::from_secs(365 * 24 * 3600);
        assert_eq!(b.tokens(much_later), 100);
        for _ in 0..100 {
            assert!(b.try_take(much_later));
        }
        assert!(!b.try_take(much_later));
    }

    #[test]
    fn a_bucket_without_refill_stays_empty() {
        let start = Instant::now();
        let mut b = bucket(2, 0, start);
        assert!(b.try_take(start));
        assert!(b.try_take(start));
        assert!(!b.try_take(start + Duration::from_secs(3600)));
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut b = bucket(1, 5, start);
        assert!(b.try_take(start));
        assert!(!b.try_take(start - Duration::from_secs(5)));
        assert!(b.try_take(start + Duration::from_millis(200)));
    }

    #[test]
    fn categories_have_the_issues_numbers() {
        let t = ThrottleConfig::default();
        let numbers = |op: Operation| {
            let b = t.bucket(op.category());
            (b.capacity, b.refill_per_second)
        };
        for op in [
            Operation::CreateNetworkInterface,
            Operation::DeleteNetworkInterface,
            Operation::AssignPrivateIpAddresses,
            Operation::UnassignPrivateIpAddresses,
        ] {
            assert_eq!(numbers(op), (100, 5), "{op}");
        }
        for op in [
            Operation::AttachNetworkInterface,
            Operation::DetachNetworkInterface,
            Operation::ModifyNetworkInterfaceAttribute,
        ] {
            assert_eq!(numbers(op), (50, 5), "{op}");
        }
        for op in [
            Operation::DescribeNetworkInterfaces,
            Operation::DescribeSubnets,
            Operation::DescribeInstanceTypes,
        ] {
            assert_eq!(numbers(op), (100, 20), "{op}");
        }
    }

    #[test]
    fn ids_look_like_ec2s_and_never_repeat() {
        let mut ids = IdSource::new(7);
        let mut seen = BTreeSet::new();
        let mut macs = BTreeSet::new();
        for _ in 0..10_000 {
            let id = ids.next("eni");
            let hex = id.strip_prefix("eni-").unwrap_or_else(|| panic!("{id}"));
            assert_eq!(hex.len(), 17, "{id}");
            assert!(
                hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
            assert!(seen.insert(id));
            let mac = ids.next_mac();
            assert_eq!(mac.len(), 17, "{mac}");
            assert!(mac.starts_with("02:"), "{mac}");
            assert_eq!(mac, mac.to_lowercase());
            assert!(macs.insert(mac));
        }
        let mut again = IdSource::new(7);
        assert_eq!(again.next("eni"), IdSource::new(7).next("eni"));
        assert_ne!(again.next("eni"), IdSource::new(8).next("eni"));
    }

    #[test]
    fn the_prng_is_reproducible_and_roughly_uniform() {
        let mut a = XorShift64::new(42);
        let mut b = XorShift64::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut zero = XorShift64::new(0);
        assert_ne!(zero.next_u64(), 0);
        let mut c = XorShift64::new(3);
        let below_half = (0..10_000).filter(|_| c.unit() < 0.5).count();
        assert!((4_700..=5_300).contains(&below_half), "{below_half}");
        assert!((0..1000).all(|_| c.below(10) < 10));
    }

    #[test]
    fn config_validation_refuses_what_cannot_work() {
        assert_eq!(SimConfig::default().validate(), Ok(()));
        let mut empty = ThrottleConfig::default();
        empty.mutating.capacity = 0;
        let config = SimConfig {
            throttle: Some(empty),
            ..SimConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(SimSetupError::EmptyBucket {
                category: ThrottleCategory::Mutating
            })
        );
        let mut config = SimConfig::default();
        config.fault_rates.insert(
            Operation::DescribeSubnets,
            FaultRate {
                probability: 1.5,
                code: "InternalError".to_owned(),
            },
        );
        assert!(matches!(config.validate(), Err(SimSetupError::BadProbability { .. })));
    }
}
