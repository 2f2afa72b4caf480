//! The cluster-wide EC2 call budget behind `AgentService.AcquireEc2Budget`: one token bucket per
//! API class, held in memory by the leader, so that a mass node start (hundreds of agents
//! planning ENIs at once) is spread over time instead of tripping EC2's own throttling, which
//! counts per account and region and would slow every node (and AWS's own controllers) alike.
//!
//! ```text
//!   agent ──AcquireEc2Budget(node, epoch, request id, class, count)──▶ leader
//!                                          │ stale read: node known? epoch current?
//!                                          │ request id seen? ──yes──▶ the first grant again
//!                                          ▼
//!                        bucket[class]: tokens += elapsed × refill (≤ burst)
//!                                       granted = min(count, ⌊tokens⌋); tokens −= granted
//!                                          ▼
//!                        { granted, retry_after_ms (when granted < count) }
//! ```
//!
//! Defaults are EC2's own bucket sizes and refill rates (mutating ENI/IP calls: 100 burst,
//! 5 per second; describe calls: 100 burst, 20 per second), scaled by [`BudgetConfig::fraction`]
//! so that the rest of the account (the VPC resource controller, Karpenter, people) keeps its
//! share.
//!
//! **Not replicated, on purpose.** A grant is a hint about the next second, not a fact worth a
//! Raft log entry: replicating it would put a quorum write (and a fsync) in front of every EC2
//! call and a ledger entry per grant, for state that is worthless a few seconds later. EC2 enforces
//! the real limits anyway; this only keeps the cluster from running into them. The cost is what
//! a leader change does: the new leader starts with full buckets (so up to one extra burst may be
//! granted in the transition) and an empty request-id memory (so a retry that reaches the new
//! leader may be granted again). Both are bounded by one burst, and agents still back off on
//! EC2's `RequestLimitExceeded`. Followers grant nothing: they answer `UNAVAILABLE` with the
//! leader's address, like any write.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;

use ipam_core::DomainError;
use ipam_core::command::AgentRef;
use ipam_core::ids::RequestId;
use ipam_core::state::State;

use crate::grpc::agent::live_agent;
use crate::raft::Refusal;

/// A class of EC2 calls that share a bucket (EC2 throttles them separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiClass {
    /// Calls that change state (create/attach/assign/unassign/detach/delete ENIs and addresses,
    /// associate trunks, tags).
    Mutating,
    /// `Describe*` calls.
    Describe,
}

/// One bucket's size and refill rate, before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    /// Tokens a full bucket holds (the largest burst).
    pub burst: f64,
    /// Tokens added per second.
    pub refill_per_sec: f64,
}

/// The budget's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// The share of EC2's limits this cluster may use, in (0, 1].
    pub fraction: f64,
    /// EC2's bucket for mutating ENI and address calls.
    pub mutating: BucketSpec,
    /// EC2's bucket for describe calls.
    pub describe: BucketSpec,
    /// Grants remembered for retried request ids (oldest forgotten first).
    pub remembered_grants: usize,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            fraction: 0.5,
            mutating: BucketSpec {
                burst: 100.0,
                refill_per_sec: 5.0,
            },
            describe: BucketSpec {
                burst: 100.0,
                refill_per_sec: 20.0,
            },
            remembered_grants: 4_096,
        }
    }
}

/// Why a budget configuration is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetConfigError {
    /// The fraction is not in (0, 1].
    #[error("ec2 budget fraction {0} must be more than 0 and at most 1")]
    Fraction(f64),
    /// A bucket that scales to less than one token, or refills at no rate.
    #[error(
        "ec2 budget for {class:?}: burst {burst} and refill {refill_per_sec}/s must scale to at least 1 token and a positive rate"
    )]
    Bucket {
        /// The class.
        class: ApiClass,
        /// The burst given.
        burst: f64,
        /// The rate given.
        refill_per_sec: f64,
    },
}

impl BudgetConfig {
    /// Checks the fraction and that each bucket scales to at least one token and a positive rate.
    ///
    /// # Errors
    ///
    /// The first problem found.
    pub fn validate(&self) -> Result<(), BudgetConfigError> {
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(BudgetConfigError::Fraction(self.fraction));
        }
        for (class, spec) in [(ApiClass::Mutating, self.mutating), (ApiClass::Describe, self.describe)] {
            let scaled = self.scaled(spec);
            if !(scaled.burst >= 1.0 && scaled.refill_per_sec > 0.0 && scaled.refill_per_sec.is_finite()) {
                return Err(BudgetConfigError::Bucket {
                    class,
                    burst: spec.burst,
                    refill_per_sec: spec.refill_per_sec,
                });
            }
        }
        Ok(())
    }

    fn scaled(&self, spec: BucketSpec) -> BucketSpec {
        BucketSpec {
            burst: (spec.burst * self.fraction).floor(),
            refill_per_sec: spec.refill_per_sec * self.fraction,
        }
    }
}

/// What the budget answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Calls the agent may make now (0..=asked).
    pub granted: u32,
    /// When fewer than asked were granted: how long to wait before asking again.
    pub retry_after: Duration,
}

/// Why the budget refused to answer (the caller's fault or state, never the budget's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The node is not registered.
    #[error(transparent)]
    Domain(#[from] DomainError),
}

impl BudgetError {
    /// The refusal as the gRPC layer maps it (NOT_FOUND, FAILED_PRECONDITION).
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Domain(error) => Refusal::from(error),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    spec: BucketSpec,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(spec: BucketSpec, now: Instant) -> Self {
        Self {
            spec,
            tokens: spec.burst,
            at: now,
        }
    }

    fn take(&mut self, count: u32, now: Instant) -> Grant {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.spec.refill_per_sec).min(self.spec.burst);
        self.at = now.max(self.at);
        let whole = self.tokens.floor().max(0.0);
        let granted = if whole >= f64::from(count) {
            count
        } else {
            // `whole` is below `count`, a u32: the cast cannot truncate.
            whole as u32
        };
        self.tokens -= f64::from(granted);
        let retry_after = if granted < count {
            // Long enough for the rest (at most one full bucket) to have refilled.
            let wanted = f64::from(count - granted).min(self.spec.burst);
            Duration::from_secs_f64(((wanted - self.tokens).max(0.0) / self.spec.refill_per_sec).max(0.001))
        } else {
            Duration::ZERO
        };
        Grant { granted, retry_after }
    }
}

#[derive(Debug)]
struct Inner {
    buckets: HashMap<ApiClass, Bucket>,
    grants: HashMap<(String, RequestId), Grant>,
    order: VecDeque<(String, RequestId)>,
    remembered: usize,
}

/// The cluster-wide EC2 call budget (cheap to clone: a shared handle).
#[derive(Debug, Clone)]
pub struct Ec2Budget {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Ec2Budget {
    fn default() -> Self {
        Self::new(&BudgetConfig::default())
    }
}

impl Ec2Budget {
    /// A budget with full buckets. An invalid config is not rejected here (see
    /// [`BudgetConfig::validate`]); a bucket that scales to nothing grants nothing.
    pub fn new(config: &BudgetConfig) -> Self {
        let now = Instant::now();
        let buckets = [
            (ApiClass::Mutating, config.mutating),
            (ApiClass::Describe, config.describe),
        ]
        .into_iter()
        .map(|(class, spec)| (class, Bucket::full(config.scaled(spec), now)))
        .collect();
        Self {
            inner: Arc::new(Mutex::new(Inner {
                buckets,
                grants: HashMap::new(),
                order: VecDeque::new(),
                remembered: config.remembered_grants.max(1),
            })),
        }
    }

    /// Checks that `agent` speaks for the node's current, live registration, as `state` says.
    ///
    /// # Errors
    ///
    /// Unknown node (NOT_FOUND), stale epoch or expired node (FAILED_PRECONDITION).
    pub fn check_agent(state: &State, agent: &AgentRef) -> Result<(), BudgetError> {
        live_agent(state, agent).map_err(BudgetError::from)
    }

    /// Takes up to `count` tokens of `class` now; a retried request id gets its first grant (of
    /// one or more tokens; a refusal is not remembered, so asking again later may succeed).
    pub fn acquire(&self, node: &str, request_id: &RequestId, class: ApiClass, count: u32) -> Grant {
        self.acquire_at(node, request_id, class, count, Instant::now())
    }

    /// [`Ec2Budget::acquire`] at a given instant (for tests).
    pub fn acquire_at(&self, node: &str, request_id: &RequestId, class: ApiClass, count: u32, now: Instant) -> Grant {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (node.to_owned(), request_id.clone());
        if let Some(grant) = inner.grants.get(&key) {
            return *grant;
        }
        let grant = match inner.buckets.get_mut(&class) {
            Some(bucket) => bucket.take(count, now),
            None => Grant {
                granted: 0,
                retry_after: Duration::from_secs(1),
            },
        };
        // Only a grant of tokens is worth remembering: an agent told to wait and asking again
        // with the same request id must get a fresh chance, not the same "0, wait" forever.
        if grant.granted == 0 {
            return grant;
        }
        inner.grants.insert(key.clone(), grant);
        inner.order.push_back(key);
        while inner.order.len() > inner.remembered {
            if let Some(old) = inner.order.pop_front() {
                inner.grants.remove(&old);
            }
        }
        grant
    }
}

#[cfg(test)]
mod tests {
    use ipam_core::limits::InstanceLimits;
    use ipam_core::testing::Harness;
    use ipam_core::testing::node_spec;
    use ipam_core::testing::subnet_config;

    use super::*;

    fn id(s: &str) -> RequestId {
        RequestId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn small() -> BudgetConfig {
        BudgetConfig {
            fraction: 0.5,
            mutating: BucketSpec {
                burst: 10.0,
                refill_per_sec: 2.0,
            },
            describe: BucketSpec {
                burst: 40.0,
                refill_per_sec: 8.0,
            },
            remembered_grants: 2,
        }
    }

    #[test]
    fn defaults_are_valid_and_scaled() {
        let config = BudgetConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(
            config.scaled(config.mutating),
            BucketSpec {
                burst: 50.0,
                refill_per_sec: 2.5
            }
        );
        let zero = BudgetConfig {
            fraction: 0.0,
            ..BudgetConfig::default()
        };
        assert_eq!(zero.validate(), Err(BudgetConfigError::Fraction(0.0)));
        let tiny = BudgetConfig {
            fraction: 0.001,
            ..BudgetConfig::default()
        };
        assert!(matches!(tiny.validate(), Err(BudgetConfigError::Bucket { .. })));
    }

    #[test]
    fn bucket_grants_a_burst_then_the_refill_rate() {
        let budget = Ec2Budget::new(&small());
        let t0 = Instant::now();
        let first = budget.acquire_at("n", &id("a"), ApiClass::Mutating, 3, t0);
        assert_eq!(
            first,
            Grant {
                granted: 3,
                retry_after: Duration::ZERO
            }
        );
        // 5 tokens (10 × 0.5) at most: 2 remain.
        let second = budget.acquire_at("n", &id("b"), ApiClass::Mutating, 4, t0);
        assert_eq!(second.granted, 2);
        // 2 more wanted at 1 token/s.
        assert_eq!(second.retry_after, Duration::from_secs(2));
        let empty = budget.acquire_at("n", &id("c"), ApiClass::Mutating, 1, t0);
        assert_eq!(empty.granted, 0);
        assert_eq!(empty.retry_after, Duration::from_secs(1));
        // Two seconds later two tokens have come back; describe has its own bucket.
        let later = budget.acquire_at("n", &id("d"), ApiClass::Mutating, 5, t0 + Duration::from_secs(2));
        assert_eq!(later.granted, 2);
        let describe = budget.acquire_at("n", &id("e"), ApiClass::Describe, 20, t0);
        assert_eq!(describe.granted, 20);
        // The bucket never holds more than its burst, however long it rested.
        let rested = budget.acquire_at("n", &id("f"), ApiClass::Mutating, 50, t0 + Duration::from_secs(3_600));
        assert_eq!(rested.granted, 5);
    }

    #[test]
    fn a_retried_request_id_gets_its_first_grant_and_memory_is_bounded() {
        let budget = Ec2Budget::new(&small());
        let t0 = Instant::now();
        let first = budget.acquire_at("n", &id("a"), ApiClass::Mutating, 5, t0);
        assert_eq!(first.granted, 5);
        let retry = budget.acquire_at("n", &id("a"), ApiClass::Mutating, 5, t0);
        assert_eq!(retry, first, "a retry is not a second grant");
        // The same id from another node is another request.
        assert_eq!(budget.acquire_at("m", &id("a"), ApiClass::Mutating, 1, t0).granted, 0);
        // Two grants are remembered: "n/a" is forgotten after two more.
        budget.acquire_at("n", &id("x"), ApiClass::Describe, 1, t0);
        budget.acquire_at("n", &id("y"), ApiClass::Describe, 1, t0);
        let forgotten = budget.acquire_at("n", &id("a"), ApiClass::Mutating, 5, t0);
        assert_eq!(forgotten.granted, 0);
        // A refusal is not remembered: the same request, asked again after the refill, gets tokens.
        let later = budget.acquire_at("m", &id("a"), ApiClass::Mutating, 1, t0 + Duration::from_secs(10));
        assert_eq!(later.granted, 1, "{later:?}");
    }

    #[test]
    fn check_agent_fences_unknown_nodes_and_stale_epochs() {
        let mut h = Harness::new();
        h.subnet(
            "100.64.0.0/16",
            subnet_config("us-west-2a", "subnet-0a1b2c3d", "100.64.1.0/24", "us-west-2a"),
        );
        let limits = InstanceLimits {
            max_enis: 3,
            ipv4_per_eni: 10,
            branch_enis: 0,
            trunking: false,
        };
        let agent = h.register(node_spec(
            "n",
            "i-0123456789abcdef0",
            "us-west-2a",
            "us-west-2a",
            limits,
        ));
        assert_eq!(Ec2Budget::check_agent(&h.state, &agent), Ok(()));
        let stale = AgentRef {
            epoch: agent.epoch - 1,
            ..agent.clone()
        };
        let refusal = Ec2Budget::check_agent(&h.state, &stale).map_err(|e| e.refusal().code);
        assert_eq!(refusal, Err("FailedPrecondition".to_owned()));
        let unknown = AgentRef {
            node: "ghost".to_owned(),
            epoch: 1,
        };
        let refusal = Ec2Budget::check_agent(&h.state, &unknown).map_err(|e| e.refusal().code);
        assert_eq!(refusal, Err("NotFound".to_owned()));
    }
}
