//! The AdminService and AuditService client: connections, leader following, bounded retries,
//! request ids.
//!
//! ```text
//!   call(rpc, request) ──▶ address (the last leader seen, else the first --server)
//!        ▲                    │
//!        │                    ▼  ok ──────────────────────────────▶ reply (remember the leader)
//!        │          UNAVAILABLE + ipam-leader: B ──Router::after──▶ Call(B)      (≤ max_hops)
//!        │          UNAVAILABLE, no leader known ──Router::after──▶ Wait(backoff, same address)
//!        │          cannot connect ────────────────Router::after──▶ Call(next --server), then Wait
//!        └───────── any other status ─────────────────────────────▶ refused (exit code 1)
//! ```
//!
//! A read that any replica may answer ([`Route::AnyReplica`]: stale reads, Watch, Export) starts
//! at the first `--server` and treats an UNAVAILABLE answer like an unreachable server: the next
//! `--server` is tried, the leader is not followed.
//!
//! The decision is [`Router::after`], a pure function of what happened so far, tested without a
//! network. A mutation's request id is chosen once per call and reused by every retry, so the
//! server applies it once however often it is sent.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::error::Error as _;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::admin_service_client::AdminServiceClient;
use ipam_proto::ipam::v1::audit_service_client::AuditServiceClient;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

/// The response metadata key naming the leader in an UNAVAILABLE answer.
pub const LEADER_METADATA: &str = "ipam-leader";
/// The request metadata key naming the operator (recorded as the actor of events).
pub const OPERATOR_METADATA: &str = "ipam-operator";

/// How often an open stream's connection is pinged.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection counts as broken.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How far a call may go before giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Leader hints followed per call.
    pub max_hops: u32,
    /// Waits per call (no leader known, or no server reachable).
    pub max_retries: u32,
    /// The first wait; each next one doubles.
    pub first_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_hops: 5,
            max_retries: 5,
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
        }
    }
}

/// Why an attempt did not get an answer worth returning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No connection to the address.
    Unreachable {
        /// What went wrong.
        why: String,
    },
    /// The replica answered UNAVAILABLE: it is not the leader, or there is none right now.
    Unavailable {
        /// The leader's address from `ipam-leader`, if the replica knows one.
        leader: Option<String>,
        /// The status message.
        message: String,
    },
}

impl Failure {
    /// The failure as a call to any replica sees it: an UNAVAILABLE replica is passed over for the
    /// next `--server`, like an unreachable one, instead of its leader being followed.
    fn without_leader(self) -> Self {
        match self {
            Self::Unavailable { message, .. } => Self::Unreachable {
                why: format!("answered UNAVAILABLE: {message}"),
            },
            unreachable @ Self::Unreachable { .. } => unreachable,
        }
    }
}

/// Which replicas may answer a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The leader, found by following the `ipam-leader` of UNAVAILABLE answers: writes and
    /// linearizable reads.
    Leader,
    /// The first replica that answers, in `--server` order, the leader not followed: stale reads
    /// and streams.
    AnyReplica,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Call this address now.
    Call(String),
    /// Wait, then call this address.
    Wait(Duration, String),
    /// Stop: the reason, for the operator.
    GiveUp(String),
}

/// The leader-following decision of one call: a pure state machine over the failures seen.
#[derive(Debug, Clone)]
pub struct Router {
    /// The `--server` addresses, in order.
    seeds: Vec<String>,
    /// The bounds.
    policy: RetryPolicy,
    /// Leader hints followed in this round.
    hops: u32,
    /// Waits so far.
    retries: u32,
    /// The addresses called, in order, for the give-up message.
    trail: Vec<String>,
    /// Addresses that could not be reached in this round (since the last wait).
    unreachable: BTreeSet<String>,
    /// The last reason each unreachable address gave.
    reasons: Vec<(String, String)>,
}

impl Router {
    /// A router over `seeds` (never empty: the caller passes at least one address).
    pub fn new(seeds: Vec<String>, policy: RetryPolicy) -> Self {
        Self {
            seeds: seeds.into_iter().map(|s| normalize(&s)).collect(),
            policy,
            hops: 0,
            retries: 0,
            trail: Vec::new(),
            unreachable: BTreeSet::new(),
            reasons: Vec::new(),
        }
    }

    /// The address to call first: `preferred` (the leader an earlier call found), else the first
    /// seed.
    pub fn first(&mut self, preferred: Option<&str>) -> String {
        let first = preferred
            .map(normalize)
            .or_else(|| self.seeds.first().cloned())
            .unwrap_or_default();
        self.trail.push(first.clone());
        first
    }

    /// What to do after `failure` at `current`.
    ///
    /// A round is the attempts between two waits. Within a round, a leader hint is followed
    /// unless its address already failed to connect (a replica that has not yet noticed its
    /// leader died keeps naming it: then an election is due, so wait); an unreachable address
    /// moves on to the next `--server` not yet tried. A wait starts a new round: every address
    /// may be tried again and the hop count restarts. Waits are bounded by `max_retries`, hops
    /// per round by `max_hops`.
    pub fn after(&mut self, current: &str, failure: &Failure) -> Step {
        let current = normalize(current);
        let step = match failure {
            Failure::Unavailable {
                leader: Some(leader), ..
            } if normalize(leader) != current => {
                let leader = normalize(leader);
                if let Some(why) = self.reason(&leader) {
                    let why = format!(
                        "{current} names {leader} as the leader, which cannot be reached ({why}); the \
                         cluster may be electing a new leader, try again"
                    );
                    self.wait_or_give_up(current.clone(), why)
                } else {
                    self.hops += 1;
                    if self.hops > self.policy.max_hops {
                        return Step::GiveUp(format!(
                            "followed the leader {} times without reaching it ({}); the cluster may be \
                             electing a leader, try again",
                            self.policy.max_hops,
                            self.trail.join(" → ")
                        ));
                    }
                    Step::Call(leader)
                }
            }
            Failure::Unavailable { message, .. } => {
                let why = format!(
                    "{current} answered UNAVAILABLE {} times without naming a reachable leader (last: \
                     {message}); is the cluster initialized (ipamctl cluster init) and a majority of its \
                     replicas up?",
                    self.retries + 1
                );
                self.wait_or_give_up(current.clone(), why)
            }
            Failure::Unreachable { why } => {
                self.reasons.retain(|(address, _)| address != &current);
                self.reasons.push((current.clone(), why.clone()));
                self.unreachable.insert(current.clone());
                match self.seeds.iter().find(|seed| !self.unreachable.contains(*seed)) {
                    Some(next) => Step::Call(next.clone()),
                    None => {
                        let reasons: Vec<String> = self
                            .reasons
                            .iter()
                            .map(|(address, why)| format!("{address}: {why}"))
                            .collect();
                        let why = format!(
                            "cannot reach the IPAM server ({}); check --server / IPAMCTL_SERVER",
                            reasons.join("; ")
                        );
                        self.wait_or_give_up(self.seeds.first().cloned().unwrap_or_default(), why)
                    }
                }
            }
        };
        if let Step::Call(address) | Step::Wait(_, address) = &step {
            self.trail.push(address.clone());
        }
        step
    }

    /// Waits before calling `next` in a new round, or gives up with `why` once the waits are
    /// spent.
    fn wait_or_give_up(&mut self, next: String, why: String) -> Step {
        self.retries += 1;
        if self.retries > self.policy.max_retries {
            return Step::GiveUp(why);
        }
        self.unreachable.clear();
        self.hops = 0;
        Step::Wait(self.backoff(), next)
    }

    /// Why `address` could not be reached in this round, if it could not.
    fn reason(&self, address: &str) -> Option<&str> {
        if !self.unreachable.contains(address) {
            return None;
        }
        self.reasons
            .iter()
            .find(|(a, _)| a == address)
            .map(|(_, why)| why.as_str())
    }

    /// The wait before retry number `self.retries` (from 1): doubling, capped.
    fn backoff(&self) -> Duration {
        let doublings = self.retries.saturating_sub(1).min(16);
        self.policy
            .first_backoff
            .saturating_mul(1 << doublings)
            .min(self.policy.max_backoff)
    }
}

/// `host:port` without a scheme or a trailing slash, so that `http://a:1/` and `a:1` compare equal.
pub fn normalize(address: &str) -> String {
    let address = address.trim();
    let address = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    address.trim_end_matches('/').to_owned()
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Refused(Status),
    /// No answer within the bounds of the retry policy.
    #[error("{0}")]
    GaveUp(String),
}

impl CallError {
    /// The gRPC code of a refusal.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Refused(status) => Some(status.code()),
            Self::GaveUp(_) => None,
        }
    }
}

/// The canonical gRPC name of a code, as `grpcurl` and the gRPC docs spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The `--server` addresses, tried in order.
    pub servers: Vec<String>,
    /// The deadline of one attempt.
    pub timeout: Duration,
    /// The deadline of one connection attempt.
    pub connect_timeout: Duration,
    /// The operator's name for `ipam-operator`; empty: not sent.
    pub operator: String,
    /// The retry bounds.
    pub retry: RetryPolicy,
}

/// A client of the AdminService and AuditService that follows the leader.
#[derive(Debug)]
pub struct Client {
    /// How to reach the cluster.
    config: ClientConfig,
    /// The operator's name as metadata, if it is valid ASCII.
    operator: Option<AsciiMetadataValue>,
    /// Connections by address.
    channels: HashMap<String, Channel>,
    /// The address that last answered a call that needs the leader.
    leader: Option<String>,
}

impl Client {
    /// A client; connects on first use.
    pub fn new(config: ClientConfig) -> Self {
        let operator = Some(config.operator.as_str())
            .filter(|name| !name.is_empty())
            .and_then(|name| AsciiMetadataValue::try_from(name).ok());
        Self {
            config,
            operator,
            channels: HashMap::new(),
            leader: None,
        }
    }

    /// Makes the next call start at `address` (e.g. the leader a status named).
    pub fn prefer(&mut self, address: &str) {
        self.leader = Some(normalize(address));
    }

    /// The retry bounds of this client's calls.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.config.retry
    }

    /// Drops every connection, so that the next call connects afresh (after a broken stream).
    pub fn disconnect(&mut self) {
        self.channels.clear();
    }

    /// Calls `rpc` with `request`, following the leader and retrying within the policy. `request`
    /// is cloned per attempt, so a mutation's request id stays the same on every retry.
    pub async fn call<Req, Resp, F, Fut>(&mut self, request: Req, rpc: F) -> Result<Resp, CallError>
    where
        Req: Clone,
        F: Fn(AdminServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let deadline = Some(self.config.timeout);
        self.attempt(Route::Leader, deadline, request, |channel, r| {
            rpc(AdminServiceClient::new(channel), r)
        })
        .await
    }

    /// Calls an `AuditService` rpc routed as `route`, retrying within the policy.
    pub async fn call_audit<Req, Resp, F, Fut>(&mut self, route: Route, request: Req, rpc: F) -> Result<Resp, CallError>
    where
        Req: Clone,
        F: Fn(AuditServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let deadline = Some(self.config.timeout);
        self.attempt(route, deadline, request, |channel, r| {
            rpc(AuditServiceClient::new(channel), r)
        })
        .await
    }

    /// Opens an `AuditService` stream (Watch, Export) on the first replica that answers, in
    /// `--server` order. The stream has no deadline: `--timeout` bounds only its opening.
    pub async fn open_audit_stream<Req, F, Fut>(
        &mut self,
        request: Req,
        rpc: F,
    ) -> Result<Streaming<pb::Event>, CallError>
    where
        Req: Clone,
        F: Fn(AuditServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Streaming<pb::Event>>, Status>>,
    {
        self.attempt(Route::AnyReplica, None, request, |channel, r| {
            rpc(AuditServiceClient::new(channel), r)
        })
        .await
    }

    /// Calls `rpc` until an answer or the policy gives up. `deadline` is sent as the call's
    /// `grpc-timeout`; `None` for streams, whose length is not known.
    async fn attempt<Req, Resp, F, Fut>(
        &mut self,
        route: Route,
        deadline: Option<Duration>,
        request: Req,
        rpc: F,
    ) -> Result<Resp, CallError>
    where
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let mut router = Router::new(self.config.servers.clone(), self.config.retry);
        let preferred = match route {
            Route::Leader => self.leader.clone(),
            Route::AnyReplica => None,
        };
        let mut address = router.first(preferred.as_deref());
        loop {
            let failure = match self.channel(&address).await {
                Err(why) => Failure::Unreachable { why },
                Ok(channel) => {
                    let mut attempt = Request::new(request.clone());
                    if let Some(deadline) = deadline {
                        attempt.set_timeout(deadline);
                    }
                    if let Some(operator) = &self.operator {
                        attempt.metadata_mut().insert(OPERATOR_METADATA, operator.clone());
                    }
                    match rpc(channel, attempt).await {
                        Ok(response) => {
                            if route == Route::Leader {
                                self.leader = Some(address);
                            }
                            return Ok(response.into_inner());
                        }
                        Err(status) => match classify(&status) {
                            Some(failure) => {
                                if matches!(failure, Failure::Unreachable { .. }) {
                                    self.channels.remove(&address);
                                }
                                match route {
                                    Route::Leader => failure,
                                    Route::AnyReplica => failure.without_leader(),
                                }
                            }
                            None => return Err(CallError::Refused(status)),
                        },
                    }
                }
            };
            match router.after(&address, &failure) {
                Step::Call(next) => address = next,
                Step::Wait(pause, next) => {
                    tokio::time::sleep(pause).await;
                    address = next;
                }
                Step::GiveUp(why) => return Err(CallError::GaveUp(why)),
            }
        }
    }

    /// The connection to `address`, made on first use.
    async fn channel(&mut self, address: &str) -> Result<Channel, String> {
        if let Some(channel) = self.channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("not a usable address ({})", chain(&e)))?
            .connect_timeout(self.config.connect_timeout)
            .timeout(self.config.timeout)
            // A watch may wait long for its next event: pings tell a dead server from a quiet one.
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
        let channel = endpoint.connect().await.map_err(|e| chain(&e))?;
        self.channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Whether a status is worth another attempt, and why: `None` for an answer to return.
fn classify(status: &Status) -> Option<Failure> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let leader = status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    // tonic attaches the transport error as the source when the connection broke; the server's
    // own UNAVAILABLE has none.
    if leader.is_none() && status.source().is_some() {
        return Some(Failure::Unreachable { why: chain(status) });
    }
    Some(Failure::Unavailable {
        leader,
        message: status.message().to_owned(),
    })
}

/// An error and its causes on one line (tonic's transport errors say little at the top).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A fresh request id: `ipamctl-` + time + random, unique per call (at most 64 characters).
pub fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // RandomState is seeded from the OS per process: enough to keep two ipamctl runs in the same
    // millisecond apart.
    let random = RandomState::new().hash_one((std::process::id(), count, millis));
    format!("ipamctl-{millis:x}-{random:016x}-{count}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_hops: 3,
            max_retries: 2,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(150),
        }
    }

    fn not_leader(leader: Option<&str>) -> Failure {
        Failure::Unavailable {
            leader: leader.map(str::to_owned),
            message: "not the leader".to_owned(),
        }
    }

    fn unreachable() -> Failure {
        Failure::Unreachable {
            why: "connection refused".to_owned(),
        }
    }

    #[test]
    fn follows_the_leader_hint() {
        let mut router = Router::new(vec!["a:1".to_owned(), "b:1".to_owned()], policy());
        assert_eq!(router.first(None), "a:1");
        assert_eq!(
            router.after("a:1", &not_leader(Some("http://c:1"))),
            Step::Call("c:1".to_owned())
        );
    }

    #[test]
    fn starts_at_the_known_leader() {
        let mut router = Router::new(vec!["a:1".to_owned()], policy());
        assert_eq!(router.first(Some("http://b:2/")), "b:2");
    }

    #[test]
    fn leader_hints_are_bounded() {
        let mut router = Router::new(vec!["a:1".to_owned()], policy());
        router.first(None);
        assert_eq!(
            router.after("a:1", &not_leader(Some("b:1"))),
            Step::Call("b:1".to_owned())
        );
        assert_eq!(
            router.after("b:1", &not_leader(Some("a:1"))),
            Step::Call("a:1".to_owned())
        );
        assert_eq!(
            router.after("a:1", &not_leader(Some("b:1"))),
            Step::Call("b:1".to_owned())
        );
        match router.after("b:1", &not_leader(Some("a:1"))) {
            Step::GiveUp(why) => {
                assert!(why.contains("a:1 → b:1 → a:1 → b:1"), "{why}");
                assert!(why.contains("3 times"), "{why}");
            }
            other => panic!("expected to give up, got {other:?}"),
        }
    }

    #[test]
    fn no_leader_backs_off_then_gives_up() {
        let mut router = Router::new(vec!["a:1".to_owned()], policy());
        router.first(None);
        assert_eq!(
            router.after("a:1", &not_leader(None)),
            Step::Wait(Duration::from_millis(100), "a:1".to_owned())
        );
        // A replica naming itself knows no more than one naming nobody.
        assert_eq!(
            router.after("a:1", &not_leader(Some("a:1"))),
            Step::Wait(Duration::from_millis(150), "a:1".to_owned())
        );
        match router.after("a:1", &not_leader(None)) {
            Step::GiveUp(why) => assert!(why.contains("cluster init"), "{why}"),
            other => panic!("expected to give up, got {other:?}"),
        }
    }

    #[test]
    fn unreachable_servers_are_tried_in_order_then_waited_for() {
        let mut router = Router::new(vec!["a:1".to_owned(), "b:1".to_owned()], policy());
        assert_eq!(router.first(None), "a:1");
        assert_eq!(router.after("a:1", &unreachable()), Step::Call("b:1".to_owned()));
        assert_eq!(
            router.after("b:1", &unreachable()),
            Step::Wait(Duration::from_millis(100), "a:1".to_owned())
        );
        assert_eq!(router.after("a:1", &unreachable()), Step::Call("b:1".to_owned()));
        assert_eq!(
            router.after("b:1", &unreachable()),
            Step::Wait(Duration::from_millis(150), "a:1".to_owned())
        );
        assert_eq!(router.after("a:1", &unreachable()), Step::Call("b:1".to_owned()));
        match router.after("b:1", &unreachable()) {
            Step::GiveUp(why) => {
                assert!(why.contains("a:1: connection refused"), "{why}");
                assert!(why.contains("b:1: connection refused"), "{why}");
            }
            other => panic!("expected to give up, got {other:?}"),
        }
    }

    #[test]
    fn an_unreachable_leader_falls_back_to_the_servers_then_waits_for_an_election() {
        let mut router = Router::new(vec!["a:1".to_owned(), "b:1".to_owned()], policy());
        router.first(None);
        assert_eq!(
            router.after("a:1", &not_leader(Some("c:1"))),
            Step::Call("c:1".to_owned())
        );
        assert_eq!(router.after("c:1", &unreachable()), Step::Call("a:1".to_owned()));
        // a:1 has not noticed that c:1 is gone: no point in calling c:1 again at once.
        assert_eq!(
            router.after("a:1", &not_leader(Some("c:1"))),
            Step::Wait(Duration::from_millis(100), "a:1".to_owned())
        );
        // After the wait, a new round: the newly elected leader is followed.
        assert_eq!(
            router.after("a:1", &not_leader(Some("b:1"))),
            Step::Call("b:1".to_owned())
        );
    }

    #[test]
    fn a_dead_leader_named_to_the_end_gives_a_clear_reason() {
        let mut router = Router::new(vec!["a:1".to_owned()], policy());
        router.first(None);
        let mut last = Step::Call(String::new());
        for _ in 0..10 {
            last = router.after("a:1", &not_leader(Some("c:1")));
            if matches!(last, Step::GiveUp(_)) {
                break;
            }
            if last == Step::Call("c:1".to_owned()) {
                last = router.after("c:1", &unreachable());
            }
        }
        match last {
            Step::GiveUp(why) => {
                assert!(why.contains("a:1 names c:1 as the leader"), "{why}");
                assert!(why.contains("connection refused"), "{why}");
            }
            other => panic!("expected to give up, got {other:?}"),
        }
    }

    #[test]
    fn hops_restart_after_a_wait() {
        let mut router = Router::new(vec!["a:1".to_owned()], policy());
        router.first(None);
        assert_eq!(
            router.after("a:1", &not_leader(Some("b:1"))),
            Step::Call("b:1".to_owned())
        );
        assert_eq!(
            router.after("b:1", &not_leader(Some("a:1"))),
            Step::Call("a:1".to_owned())
        );
        assert_eq!(
            router.after("a:1", &not_leader(Some("b:1"))),
            Step::Call("b:1".to_owned())
        );
        assert!(matches!(router.after("b:1", &not_leader(None)), Step::Wait(..)));
        // A fourth hop in the same round would give up; after the wait it is the first of a new one.
        assert_eq!(
            router.after("b:1", &not_leader(Some("a:1"))),
            Step::Call("a:1".to_owned())
        );
    }

    #[test]
    fn classify_reads_the_leader_metadata() {
        let mut status = Status::unavailable("not the leader");
        status
            .metadata_mut()
            .insert(LEADER_METADATA, AsciiMetadataValue::from_static("10.0.0.2:7400"));
        assert_eq!(
            classify(&status),
            Some(Failure::Unavailable {
                leader: Some("10.0.0.2:7400".to_owned()),
                message: "not the leader".to_owned()
            })
        );
        assert_eq!(classify(&Status::not_found("no such lease")), None);
        assert_eq!(
            classify(&Status::unavailable("no leader")),
            Some(Failure::Unavailable {
                leader: None,
                message: "no leader".to_owned()
            })
        );
    }

    #[test]
    fn any_replica_calls_pass_over_an_unavailable_replica() {
        let failure = not_leader(Some("b:1")).without_leader();
        assert_eq!(
            failure,
            Failure::Unreachable {
                why: "answered UNAVAILABLE: not the leader".to_owned()
            }
        );
        let mut router = Router::new(vec!["a:1".to_owned(), "c:1".to_owned()], policy());
        router.first(None);
        assert_eq!(router.after("a:1", &failure), Step::Call("c:1".to_owned()));
        assert_eq!(unreachable().without_leader(), unreachable());
    }

    #[test]
    fn refusals_print_the_grpc_code() {
        let error = CallError::Refused(Status::failed_precondition("subnet in use"));
        assert_eq!(error.to_string(), "FAILED_PRECONDITION: subnet in use");
        assert_eq!(error.code(), Some(Code::FailedPrecondition));
    }

    #[test]
    fn request_ids_are_fresh_and_short() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert!(a.starts_with("ipamctl-"), "{a}");
        assert!(a.len() <= 64, "{a}");
    }
}
