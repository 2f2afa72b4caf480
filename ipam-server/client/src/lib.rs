//! ipam-client: calling an ipam-server cluster. Find the leader by following `ipam-leader` hints, retry what
//! may be retried, give up after a bounded number of attempts.
//!
//! ```text
//!   call(f) ──▶ f(channel of the believed leader)
//!                 │ Ok ─────────────────────────────▶ answer
//!                 │ Err(status) ─▶ next_step(code, hint, attempt)   (pure, unit-tested)
//!                 │                  ├ Fail ─────────▶ status to the caller
//!                 │                  └ Retry{target, wait}
//!                 └───────◀── sleep(wait), switch target ◀┘   (at most max_attempts calls)
//! ```
//!
//! Writes carry a request id that the servers de-duplicate, so retrying a call whose outcome is
//! unknown (timeout, connection lost, leader lost mid-write) is safe: the retry gets the first
//! reply. A call that still fails has an *unknown* outcome ([`outcome_is_unknown`]), never
//! "not applied".

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tonic::Code;
use tonic::Status;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

/// The response metadata key with the leader's advertised address (`host:port`) on UNAVAILABLE.
pub const LEADER_METADATA: &str = "ipam-leader";

/// The response metadata key that says what ran out on RESOURCE_EXHAUSTED.
pub const EXHAUSTED_METADATA: &str = "ipam-exhausted";

/// How hard a call tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls made at most, the first included; at least 1.
    pub max_attempts: u32,
    /// The wait before the first retry that needs one; doubled on each further retry.
    pub base_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(1000),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (0-based): `base * 2^attempt`, at most `max_backoff`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.base_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Where the next attempt goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The replica named by the leader hint.
    Leader(String),
    /// The same replica again.
    Same,
    /// The next configured replica, in rotation (no leader known, or this one does not answer).
    Next,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop and hand the status to the caller.
    Fail,
    /// Try again at `target` after `wait`.
    Retry {
        /// Where.
        target: Target,
        /// How long to wait first.
        wait: Duration,
    },
}

/// Decides what follows a failed attempt. `attempt` is the 0-based number of the attempt that
/// failed, `current` the address it went to and `leader` the `ipam-leader` hint of the answer.
///
/// * UNAVAILABLE naming another replica: go there, at once the first time, after a backoff when
///   hints keep bouncing (an election in progress).
/// * UNAVAILABLE naming this replica, or a replica that timed out or lost the call (CANCELLED,
///   DEADLINE_EXCEEDED, UNKNOWN — also how tonic reports some transport failures): back off,
///   then the next replica (a leader that stepped down or hangs sends us on).
/// * UNAVAILABLE without a hint (no leader known, connection refused): back off, next replica.
/// * Anything else is the server's answer (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
///   RESOURCE_EXHAUSTED, ...): fail, the caller decides.
///
/// After `max_attempts` attempts: fail.
pub fn next_step(code: Code, leader: Option<&str>, current: &str, attempt: u32, policy: &RetryPolicy) -> Step {
    if attempt.saturating_add(1) >= policy.max_attempts {
        return Step::Fail;
    }
    let backoff = policy.backoff(attempt);
    match code {
        Code::Unavailable => match leader.filter(|l| !l.is_empty()) {
            Some(leader) if leader != current => Step::Retry {
                target: Target::Leader(leader.to_owned()),
                wait: if attempt == 0 { Duration::ZERO } else { backoff },
            },
            Some(_) => Step::Retry {
                target: Target::Same,
                wait: backoff,
            },
            None => Step::Retry {
                target: Target::Next,
                wait: backoff,
            },
        },
        Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => Step::Retry {
            target: Target::Next,
            wait: backoff,
        },
        _ => Step::Fail,
    }
}

/// Whether a final failure with this code leaves the write's outcome unknown (it may have been
/// applied, or may still be), as opposed to a refusal by the state machine, which applied
/// nothing.
pub fn outcome_is_unknown(code: Code) -> bool {
    !matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

/// The value of the `ipam-leader` metadata of a status, if any.
pub fn leader_hint(status: &Status) -> Option<&str> {
    status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok())
}

/// The response metadata key that tells an agent to register again, and why (`stale-epoch`,
/// `node-expired`, `node-unknown`).
pub const REGISTER_METADATA: &str = "ipam-register";

/// The value of the `ipam-register` metadata of a status, if any: the agent must register again.
pub fn register_again(status: &Status) -> Option<&str> {
    status.metadata().get(REGISTER_METADATA).and_then(|v| v.to_str().ok())
}

/// The value of the `ipam-exhausted` metadata of a status, if any.
pub fn exhausted_what(status: &Status) -> Option<&str> {
    status.metadata().get(EXHAUSTED_METADATA).and_then(|v| v.to_str().ok())
}

/// A short stable name of a status for error counters: `unavailable`, `resource_exhausted:node-warm`.
pub fn error_name(status: &Status) -> String {
    let code = code_name(status.code());
    match exhausted_what(status) {
        Some(what) => format!("{code}:{what}"),
        None => code.to_owned(),
    }
}

/// The snake_case name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// How channels are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOptions {
    /// HTTP/2 connections per address; the clients share them round-robin. At least 1.
    pub connections: usize,
    /// The deadline of every call (sent as `grpc-timeout` and enforced locally).
    pub rpc_timeout: Duration,
    /// The deadline of a TCP connect.
    pub connect_timeout: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            connections: 4,
            rpc_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// A lazily connecting channel to `address` (`host:port`, plain HTTP/2).
///
/// # Errors
///
/// `InvalidArgument` when the address does not make a URI.
pub fn lazy_channel(address: &str, options: &ChannelOptions) -> Result<Channel, Status> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| Status::invalid_argument(format!("bad server address {address:?}: {e}")))?;
    Ok(endpoint
        .connect_timeout(options.connect_timeout)
        .timeout(options.rpc_timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Channels to a set of addresses, `connections` per address, handed out by slot number.
#[derive(Debug)]
pub struct ChannelPool {
    options: ChannelOptions,
    channels: Mutex<HashMap<String, Vec<Channel>>>,
}

impl ChannelPool {
    /// An empty pool; channels are made on first use.
    pub fn new(options: ChannelOptions) -> Self {
        Self {
            options,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The channel of `slot` (e.g. the client number) to `address`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the address does not make a URI.
    pub fn get(&self, address: &str, slot: usize) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !channels.contains_key(address) {
            let made = (0..self.options.connections.max(1))
                .map(|_| lazy_channel(address, &self.options))
                .collect::<Result<Vec<_>, _>>()?;
            channels.insert(address.to_owned(), made);
        }
        let list = channels.get(address).map(Vec::as_slice).unwrap_or_default();
        list.get(slot % list.len().max(1))
            .cloned()
            .ok_or_else(|| Status::internal("no channel"))
    }
}

/// An ipam-server cluster seen by many clients: its configured replicas, the replica believed
/// to lead (shared, so one client's discovery serves all), and counters of the routing work.
#[derive(Debug)]
pub struct Cluster {
    servers: Vec<String>,
    policy: RetryPolicy,
    pool: ChannelPool,
    leader: Mutex<String>,
    rotation: AtomicUsize,
    hops: AtomicU64,
    retries: AtomicU64,
}

impl Cluster {
    /// A cluster of the given replicas (`host:port`), not yet contacted.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `servers` is empty.
    pub fn new(servers: Vec<String>, policy: RetryPolicy, options: ChannelOptions) -> Result<Self, Status> {
        let first = servers
            .first()
            .cloned()
            .ok_or_else(|| Status::invalid_argument("no server address"))?;
        Ok(Self {
            servers,
            policy,
            pool: ChannelPool::new(options),
            leader: Mutex::new(first),
            rotation: AtomicUsize::new(0),
            hops: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }

    /// The replica currently believed to lead.
    pub fn believed_leader(&self) -> String {
        self.leader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Leader hops followed and retries made so far.
    pub fn routing_counts(&self) -> (u64, u64) {
        (self.hops.load(Ordering::Relaxed), self.retries.load(Ordering::Relaxed))
    }

    /// Calls `f` with a channel to the believed leader until it answers, following leader hints
    /// and retrying as [`next_step`] says. `slot` spreads clients over the connections.
    ///
    /// # Errors
    ///
    /// The status of the last attempt when [`next_step`] says to fail.
    pub async fn call<T, F, Fut>(&self, slot: usize, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut target = self.believed_leader();
        for attempt in 0..self.policy.max_attempts.max(1) {
            let status = match self.pool.get(&target, slot) {
                Ok(channel) => match f(channel).await {
                    Ok(response) => return Ok(response.into_inner()),
                    Err(status) => status,
                },
                // A bad hint: treat it as no hint.
                Err(status) => Status::unavailable(status.message().to_owned()),
            };
            match next_step(status.code(), leader_hint(&status), &target, attempt, &self.policy) {
                Step::Fail => return Err(status),
                Step::Retry { target: next, wait } => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    target = match next {
                        Target::Leader(address) => {
                            self.hops.fetch_add(1, Ordering::Relaxed);
                            address
                        }
                        Target::Same => target,
                        Target::Next => self.next_server(&target),
                    };
                    *self.leader.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = target.clone();
                }
            }
        }
        Err(Status::unavailable(format!(
            "no answer after {} attempts",
            self.policy.max_attempts
        )))
    }

    /// The configured replica after `current` in rotation (the first one if `current` is not
    /// configured, e.g. a hinted address).
    fn next_server(&self, current: &str) -> String {
        let n = self.servers.len().max(1);
        let index = match self.servers.iter().position(|s| s == current) {
            Some(i) => i + 1,
            None => self.rotation.fetch_add(1, Ordering::Relaxed),
        };
        self.servers
            .get(index % n)
            .cloned()
            .unwrap_or_else(|| current.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        }
    }

    #[test]
    fn a_hint_to_another_replica_is_followed_at_once_the_first_time() {
        let step = next_step(
            Code::Unavailable,
            Some("127.0.0.2:7400"),
            "127.0.0.1:7400",
            0,
            &policy(),
        );
        assert_eq!(
            step,
            Step::Retry {
                target: Target::Leader("127.0.0.2:7400".to_owned()),
                wait: Duration::ZERO
            }
        );
        // Hints that keep bouncing (an election): back off between hops.
        let step = next_step(
            Code::Unavailable,
            Some("127.0.0.3:7400"),
            "127.0.0.2:7400",
            2,
            &policy(),
        );
        assert_eq!(
            step,
            Step::Retry {
                target: Target::Leader("127.0.0.3:7400".to_owned()),
                wait: Duration::from_millis(40)
            }
        );
    }

    #[test]
    fn no_leader_known_backs_off_then_tries_the_next_replica() {
        for hint in [None, Some("")] {
            let step = next_step(Code::Unavailable, hint, "127.0.0.1:7400", 0, &policy());
            assert_eq!(
                step,
                Step::Retry {
                    target: Target::Next,
                    wait: Duration::from_millis(10)
                }
            );
        }
    }

    #[test]
    fn a_replica_naming_itself_is_retried_after_a_backoff() {
        let step = next_step(
            Code::Unavailable,
            Some("127.0.0.1:7400"),
            "127.0.0.1:7400",
            1,
            &policy(),
        );
        assert_eq!(
            step,
            Step::Retry {
                target: Target::Same,
                wait: Duration::from_millis(20)
            }
        );
    }

    #[test]
    fn timeouts_move_on_to_the_next_replica() {
        for code in [Code::Cancelled, Code::DeadlineExceeded, Code::Unknown] {
            let step = next_step(code, None, "a:1", 0, &policy());
            assert!(
                matches!(
                    step,
                    Step::Retry {
                        target: Target::Next,
                        ..
                    }
                ),
                "{code:?}"
            );
        }
    }

    #[test]
    fn answers_of_the_state_machine_are_not_retried() {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::AlreadyExists,
        ] {
            assert_eq!(
                next_step(code, Some("b:1"), "a:1", 0, &policy()),
                Step::Fail,
                "{code:?}"
            );
            assert!(!outcome_is_unknown(code), "{code:?}");
        }
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Internal,
        ] {
            assert!(outcome_is_unknown(code), "{code:?}");
        }
    }

    #[test]
    fn hops_are_bounded() {
        let p = policy();
        assert!(matches!(
            next_step(Code::Unavailable, Some("b:1"), "a:1", 3, &p),
            Step::Retry { .. }
        ));
        assert_eq!(next_step(Code::Unavailable, Some("b:1"), "a:1", 4, &p), Step::Fail);
        assert_eq!(next_step(Code::Unavailable, None, "a:1", 100, &p), Step::Fail);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let waits: Vec<u128> = (0..6).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50, 50]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(50));
    }

    #[test]
    fn metadata_is_read_from_the_status() {
        let mut status = Status::resource_exhausted("no warm address");
        status
            .metadata_mut()
            .insert(EXHAUSTED_METADATA, MetadataValue::from_static("node-warm"));
        assert_eq!(exhausted_what(&status), Some("node-warm"));
        assert_eq!(error_name(&status), "resource_exhausted:node-warm");
        let mut status = Status::unavailable("not the leader");
        status
            .metadata_mut()
            .insert(LEADER_METADATA, MetadataValue::from_static("127.0.0.3:7400"));
        assert_eq!(leader_hint(&status), Some("127.0.0.3:7400"));
        assert_eq!(error_name(&status), "unavailable");
    }

    #[test]
    fn rotation_skips_to_the_next_configured_replica() {
        let cluster = Cluster::new(
            vec!["a:1".to_owned(), "b:1".to_owned(), "c:1".to_owned()],
            policy(),
            ChannelOptions::default(),
        )
        .expect("test value");
        assert_eq!(cluster.next_server("a:1"), "b:1");
        assert_eq!(cluster.next_server("c:1"), "a:1");
        assert_eq!(cluster.next_server("hinted:1"), "a:1");
        assert_eq!(cluster.next_server("hinted:1"), "b:1");
        assert!(Cluster::new(Vec::new(), policy(), ChannelOptions::default()).is_err());
    }
}
