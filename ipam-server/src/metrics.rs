//! Prometheus metrics of one replica, encoded as OpenMetrics text by `/metrics` ([`crate::http`]).
//!
//! ```text
//!   tonic server ── GrpcMetricsService ──▶ ipam_grpc_requests_total{service,method,code}
//!                   (per request)          ipam_grpc_request_duration_seconds{service,method}
//!                                          ipam_exhausted_total{what}   (ipam-exhausted metadata)
//!   services ─── record_bind / record_release ─▶ ipam_binds_total{result}, ipam_releases_total{reason}
//!   openraft ─── watch_raft (metrics channel) ─▶ ipam_raft_* gauges, ipam_raft_leader_changes_total
//!   scrape ───── SubnetCollector ── SubnetSource() ─▶ ipam_subnet_addresses{subnet_id,state}
//! ```
//!
//! Why it looks like this:
//!
//! * Per-subnet address counts are computed when Prometheus scrapes, from a snapshot of the
//!   domain state, instead of being kept up to date on every event: the state already knows them,
//!   and a scrape every 15 s costs far less than bookkeeping on every bind. The snapshot comes
//!   through a callback ([`Metrics::set_subnet_source`]) so that this module does not depend on
//!   the Raft state machine; [`SubnetCounts::from_state`] does the counting.
//! * Labels come from closed sets wherever a client could otherwise invent values: gRPC codes by
//!   name, `what` from the domain's four exhaustion kinds, release reasons from the domain's enum,
//!   and requests answered `Unimplemented` (unknown paths) under `unknown`.
//! * The gRPC code is read from the response headers: tonic answers a unary call that failed with
//!   a trailers-only response, whose `grpc-status` is a header. A response without it is `OK`
//!   (the status follows in the trailers, which this layer does not wait for), so for streaming
//!   calls the latency is the time to the response headers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::sync::atomic::AtomicU64;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;

use ipam_core::State;
use ipam_core::command::ReleaseReason;
use ipam_core::state::CoolingTarget;
use ipam_core::state::Slot;
use openraft::BasicNode;
use openraft::RaftMetrics;
use openraft::ServerState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::codegen::Service;
use tonic::codegen::http::HeaderMap;
use tonic::codegen::http::Request;
use tonic::codegen::http::Response;
use tonic::codegen::http::StatusCode;

use crate::grpc::status::EXHAUSTED_METADATA;

/// What the `ipam-exhausted` metadata may say; anything else is counted as `other`.
const EXHAUSTED_KINDS: [&str; 4] = ["subnet", "node-warm", "branch-warm", "node-limit"];

/// Request latency buckets, 100 µs to 10 s: a warm bind is sub-millisecond on the leader, a
/// forwarded write a few milliseconds, a write during an election seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The label of requests whose path names no served method.
const UNKNOWN: &str = "unknown";

/// Addresses of one AWS subnet by what they are doing, as `ipam_subnet_addresses` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubnetCounts {
    /// EC2 subnet id.
    pub subnet_id: String,
    /// Usable addresses (the subnet's size less the five AWS reserves).
    pub total: u64,
    /// Reserved to a node, on one of its ENIs, without a pod (warm branch ENIs included).
    pub warm: u64,
    /// Bound to a pod.
    pub bound: u64,
    /// Released and not yet reusable, on an ENI or back in the subnet.
    pub cooling: u64,
    /// Free in the subnet: can be handed to an ENI now.
    pub free: u64,
    /// Used by something outside the cluster, as EC2 told us.
    pub quarantined: u64,
}

impl SubnetCounts {
    /// Counts every subnet of `state`. The states other than these (planned or draining
    /// addresses, the ENIs' own primary addresses) are `total` less the sum of the others.
    /// O(addresses on ENIs + subnets): meant for a scrape, not for a request path.
    pub fn from_state(state: &State) -> Vec<SubnetCounts> {
        let mut counts: Vec<SubnetCounts> = state
            .subnets
            .values()
            .map(|subnet| SubnetCounts {
                subnet_id: subnet.id.clone(),
                total: subnet.alloc.usable(),
                free: subnet.alloc.available(),
                quarantined: subnet.alloc.quarantined().len() as u64,
                ..SubnetCounts::default()
            })
            .collect();
        // `state.subnets` is a BTreeMap, so `counts` is sorted by subnet id.
        let index = |counts: &[SubnetCounts], subnet_id: &str| {
            counts.binary_search_by(|c| c.subnet_id.as_str().cmp(subnet_id)).ok()
        };
        for node in state.nodes.values() {
            for eni in node.enis.values() {
                let Some(i) = index(&counts, &eni.subnet_id) else {
                    continue;
                };
                for slot in eni.slots.values() {
                    match slot {
                        Slot::Warm { .. } => counts[i].warm += 1,
                        Slot::Bound { .. } => counts[i].bound += 1,
                        Slot::Cooling { .. } => counts[i].cooling += 1,
                        Slot::Pending | Slot::Draining => {}
                    }
                }
            }
        }
        for (_, target) in &state.cooling {
            if let CoolingTarget::Subnet { subnet_id, .. } = target
                && let Some(i) = index(&counts, subnet_id)
            {
                counts[i].cooling += 1;
            }
        }
        counts
    }

    fn by_state(&self) -> [(&'static str, u64); 6] {
        [
            ("total", self.total),
            ("warm", self.warm),
            ("bound", self.bound),
            ("cooling", self.cooling),
            ("free", self.free),
            ("quarantined", self.quarantined),
        ]
    }
}

/// Where the scrape gets the per-subnet counts: `None` when the state is not available (yet).
/// Called on every scrape from the HTTP server's task, so it must not block for long.
pub type SubnetSource = Arc<dyn Fn() -> Option<Vec<SubnetCounts>> + Send + Sync>;

/// How a bind ended, for `ipam_binds_total{result}`: `bound` counts committed binds (from the
/// ledger, on every replica), `refused` the Bind calls this replica answered with a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindResult {
    /// The pod got an address.
    Bound,
    /// The domain refused (exhausted, stale epoch, bad input, …).
    Refused,
}

impl BindResult {
    fn label(self) -> &'static str {
        match self {
            BindResult::Bound => "bound",
            BindResult::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    service: String,
    method: String,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabels {
    what: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

type U64Gauge = Gauge<u64, AtomicU64>;

/// The Raft gauges.
#[derive(Debug, Default)]
struct RaftGauges {
    term: U64Gauge,
    is_leader: Gauge,
    last_log_index: U64Gauge,
    last_applied_index: U64Gauge,
    snapshot_index: U64Gauge,
    members: Family<RoleLabels, Gauge>,
    leader_changes: Counter,
    /// The (leader, term) last counted as a leader change.
    last_leader: Mutex<Option<(u64, u64)>>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    grpc_requests: Family<CodeLabels, Counter>,
    grpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    binds: Family<ResultLabels, Counter>,
    releases: Family<ReasonLabels, Counter>,
    exhausted: Family<WhatLabels, Counter>,
    raft: RaftGauges,
    ledger: LedgerGauges,
    subnets: Arc<SourceSlot>,
}

/// The ledger as this replica holds it.
#[derive(Debug, Default)]
struct LedgerGauges {
    last_seq: U64Gauge,
    horizon_seq: U64Gauge,
    pruned: Counter,
}

/// The replica's metrics: a registry of the `ipam_*` families. Cheap to clone (one `Arc`);
/// every clone records into the same registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered and nothing recorded yet.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ipam");
        let grpc_requests = Family::<CodeLabels, Counter>::default();
        let grpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        let binds = Family::<ResultLabels, Counter>::default();
        let releases = Family::<ReasonLabels, Counter>::default();
        let exhausted = Family::<WhatLabels, Counter>::default();
        let raft = RaftGauges::default();
        let ledger = LedgerGauges::default();
        let subnets = Arc::new(SourceSlot::default());

        registry.register(
            "grpc_requests",
            "gRPC requests answered, by method and gRPC status code",
            grpc_requests.clone(),
        );
        registry.register_with_unit(
            "grpc_request_duration",
            "Time from a gRPC request to its response headers",
            Unit::Seconds,
            grpc_duration.clone(),
        );
        registry.register("binds", "Pod address binds, by result", binds.clone());
        registry.register("releases", "Pod address releases, by reason", releases.clone());
        registry.register(
            "exhausted",
            "Requests refused because something ran out (ipam-exhausted metadata)",
            exhausted.clone(),
        );
        registry.register("raft_term", "Current Raft term", raft.term.clone());
        registry.register(
            "raft_is_leader",
            "1 when this replica is the Raft leader",
            raft.is_leader.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Index of the last entry in this replica's Raft log",
            raft.last_log_index.clone(),
        );
        registry.register(
            "raft_last_applied_index",
            "Index of the last entry applied to this replica's state machine",
            raft.last_applied_index.clone(),
        );
        registry.register(
            "raft_snapshot_index",
            "Index of the last entry in this replica's snapshot",
            raft.snapshot_index.clone(),
        );
        registry.register(
            "raft_members",
            "Cluster members, by role (voter, learner)",
            raft.members.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Leader elections this replica has seen",
            raft.leader_changes.clone(),
        );
        registry.register(
            "ledger_last_seq",
            "Sequence number of the last event in this replica's ledger",
            ledger.last_seq.clone(),
        );
        registry.register(
            "ledger_horizon_seq",
            "First sequence number retention keeps (0 or 1: nothing pruned)",
            ledger.horizon_seq.clone(),
        );
        registry.register(
            "ledger_pruned_events",
            "Events removed from this replica's ledger by retention",
            ledger.pruned.clone(),
        );
        registry.register_collector(Box::new(SubnetCollector {
            source: Arc::clone(&subnets),
        }));

        Self {
            inner: Arc::new(Inner {
                registry,
                grpc_requests,
                grpc_duration,
                binds,
                releases,
                exhausted,
                raft,
                ledger,
                subnets,
            }),
        }
    }

    /// The ledger's last sequence number.
    pub fn observe_ledger_seq(&self, last_seq: u64) {
        self.inner.ledger.last_seq.set(last_seq);
    }

    /// A retention pass: the horizon it left and how many events it removed.
    pub fn record_pruned(&self, horizon_seq: u64, removed: u64) {
        self.inner.ledger.horizon_seq.set(horizon_seq);
        self.inner.ledger.pruned.inc_by(removed);
    }

    /// The registry, to encode it.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Everything, as OpenMetrics text (ending in `# EOF`).
    ///
    /// # Errors
    ///
    /// Only when a collector fails; writing to a `String` does not.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }

    /// Where scrapes get the per-subnet counts from; replaces the previous source.
    pub fn set_subnet_source(&self, source: impl Fn() -> Option<Vec<SubnetCounts>> + Send + Sync + 'static) {
        let mut slot = self.inner.subnets.0.write().unwrap_or_else(PoisonError::into_inner);
        *slot = Some(Arc::new(source));
    }

    /// Records one answered gRPC request.
    pub fn record_grpc(&self, service: &str, method: &str, code: Code, elapsed: Duration) {
        let (service, method) = if code == Code::Unimplemented {
            (UNKNOWN, UNKNOWN)
        } else {
            (service, method)
        };
        let method_labels = MethodLabels {
            service: service.to_owned(),
            method: method.to_owned(),
        };
        self.inner
            .grpc_duration
            .get_or_create(&method_labels)
            .observe(elapsed.as_secs_f64());
        let MethodLabels { service, method } = method_labels;
        self.inner
            .grpc_requests
            .get_or_create(&CodeLabels {
                service,
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// Records a bind's result. Call it where the bind is answered (once per request, on the
    /// replica the agent asked).
    pub fn record_bind(&self, result: BindResult) {
        self.inner
            .binds
            .get_or_create(&ResultLabels { result: result.label() })
            .inc();
    }

    /// Records a released lease.
    pub fn record_release(&self, reason: ReleaseReason) {
        self.inner
            .releases
            .get_or_create(&ReasonLabels {
                reason: release_label(reason),
            })
            .inc();
    }

    /// Records a refusal because `what` ran out, in the words of the `ipam-exhausted` metadata
    /// (`subnet`, `node-warm`, `branch-warm`, `node-limit`; anything else counts as `other`).
    pub fn record_exhausted(&self, what: &str) {
        let what = EXHAUSTED_KINDS.into_iter().find(|k| *k == what).unwrap_or("other");
        self.inner.exhausted.get_or_create(&WhatLabels { what }).inc();
    }

    /// Sets the Raft gauges from one metrics snapshot, and counts a leader change when a leader
    /// (or a new term of the same leader) appears.
    pub fn observe_raft(&self, m: &RaftMetrics<u64, BasicNode>) {
        let raft = &self.inner.raft;
        raft.term.set(m.current_term);
        raft.is_leader.set(i64::from(m.state == ServerState::Leader));
        raft.last_log_index.set(m.last_log_index.unwrap_or(0));
        raft.last_applied_index.set(m.last_applied.map_or(0, |id| id.index));
        raft.snapshot_index.set(m.snapshot.map_or(0, |id| id.index));
        let membership = m.membership_config.membership();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        raft.members
            .get_or_create(&RoleLabels { role: "voter" })
            .set(count(membership.voter_ids().count()));
        raft.members
            .get_or_create(&RoleLabels { role: "learner" })
            .set(count(membership.learner_ids().count()));
        if let Some(leader) = m.current_leader {
            let mut last = raft.last_leader.lock().unwrap_or_else(PoisonError::into_inner);
            if *last != Some((leader, m.current_term)) {
                *last = Some((leader, m.current_term));
                raft.leader_changes.inc();
            }
        }
    }

    /// Marks this replica as not leading (its Raft stopped).
    fn raft_stopped(&self) {
        self.inner.raft.is_leader.set(0);
    }
}

/// Keeps the Raft gauges up to date from openraft's metrics channel (`Raft::metrics()`), until
/// the Raft stops; then `ipam_raft_is_leader` goes to 0.
pub fn watch_raft(metrics: Metrics, mut rx: watch::Receiver<RaftMetrics<u64, BasicNode>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            metrics.observe_raft(&rx.borrow_and_update());
            if rx.changed().await.is_err() {
                break;
            }
        }
        metrics.raft_stopped();
    })
}

/// Reports `ipam_subnet_addresses` from the [`SubnetSource`] at every scrape.
#[derive(Debug)]
struct SubnetCollector {
    source: Arc<SourceSlot>,
}

/// The current [`SubnetSource`], if one was set.
#[derive(Default)]
struct SourceSlot(RwLock<Option<SubnetSource>>);

impl fmt::Debug for SourceSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.0.read().map(|s| s.is_some()).unwrap_or(false);
        f.debug_struct("SourceSlot").field("set", &set).finish()
    }
}

impl Collector for SubnetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // Take the callback out of the lock: it may take a while and must not block a new source.
        let source = self.source.0.read().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(counts) = source.and_then(|source| source()) else {
            return Ok(());
        };
        if counts.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "subnet_addresses",
            "Addresses of each subnet, by state (total, warm, bound, cooling, free, quarantined).",
            None,
            MetricType::Gauge,
        )?;
        for subnet in &counts {
            for (state, value) in subnet.by_state() {
                let labels = [("subnet_id", subnet.subnet_id.as_str()), ("state", state)];
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Makes a [`GrpcMetricsService`] of a tonic server's service (its `Routes`).
///
/// With `tower-layer` among the crate's dependencies this is also a `tower::Layer` for
/// `Server::builder().layer(..)`; until then wrap the routes yourself:
///
/// ```ignore
/// let routes = Routes::new(RaftServiceServer::new(raft)).prepare();
/// Server::builder()
///     .serve_with_incoming_shutdown(GrpcMetricsLayer::new(metrics).layer(routes), incoming, shutdown)
///     .await?;
/// ```
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl GrpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }

    /// Wraps `inner`.
    pub fn layer<S>(&self, inner: S) -> GrpcMetricsService<S> {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsLayer::layer(self, inner)
    }
}

/// A gRPC service that records every request's method, status code and latency, and the
/// `ipam-exhausted` metadata of refusals. A request whose caller goes away before the answer is
/// recorded as `Cancelled`.
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, ResBody> Service<Request<B>> for GrpcMetricsService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let call = Call {
            metrics: self.metrics.clone(),
            service: service.to_owned(),
            method: method.to_owned(),
            start: Instant::now(),
            done: false,
        };
        // The clone that was not driven to readiness stays; the ready one serves this request.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let response = ready.call(request);
        Box::pin(async move {
            let result = response.await;
            match &result {
                Ok(response) => call.finish(response_code(response.status(), response.headers()), response.headers()),
                Err(_) => call.finish(Code::Unknown, &HeaderMap::new()),
            }
            result
        })
    }
}

/// One request in flight; recorded as `Cancelled` if dropped unfinished.
struct Call {
    metrics: Metrics,
    service: String,
    method: String,
    start: Instant,
    done: bool,
}

impl Call {
    fn finish(mut self, code: Code, headers: &HeaderMap) {
        self.done = true;
        self.metrics
            .record_grpc(&self.service, &self.method, code, self.start.elapsed());
        if let Some(what) = headers.get(EXHAUSTED_METADATA).and_then(|v| v.to_str().ok()) {
            self.metrics.record_exhausted(what);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.metrics
                .record_grpc(&self.service, &self.method, Code::Cancelled, self.start.elapsed());
        }
    }
}

/// `/ipam.v1.AgentService/Bind` → (`ipam.v1.AgentService`, `Bind`).
fn split_path(path: &str) -> (&str, &str) {
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method)) if !service.is_empty() && !method.is_empty() && !method.contains('/') => {
            (service, method)
        }
        _ => (UNKNOWN, UNKNOWN),
    }
}

/// The gRPC code of a response: its `grpc-status` header (trailers-only responses), else the
/// HTTP status mapped as the gRPC spec says, else OK (the status is in the trailers).
fn response_code(status: StatusCode, headers: &HeaderMap) -> Code {
    if let Some(value) = headers.get("grpc-status") {
        return Code::from_bytes(value.as_bytes());
    }
    match status.as_u16() {
        200 => Code::Ok,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The code's canonical name, as other gRPC metrics spell it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn release_label(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::CniDel => "cni-del",
        ReleaseReason::Gc => "gc",
        ReleaseReason::Expired => "expired",
        ReleaseReason::Operator => "operator",
        ReleaseReason::NodeRemoved => "node-removed",
        ReleaseReason::Reconcile => "reconcile",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;
    use std::convert::Infallible;
    use std::future::Pending;
    use std::future::Ready;

    use ipam_core::Reply;
    use ipam_core::command::CommandBody;
    use ipam_core::command::LeaseSelector;
    use ipam_core::command::NodeSpec;
    use ipam_core::testing::Harness;
    use ipam_core::testing::pod;
    use ipam_core::testing::subnet_config;
    use openraft::CommittedLeaderId;
    use openraft::LogId;
    use openraft::Membership;
    use openraft::StoredMembership;

    use super::*;

    fn text(metrics: &Metrics) -> String {
        metrics.encode().unwrap_or_else(|e| panic!("{e}"))
    }

    fn assert_has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }

    #[test]
    fn recorded_families_carry_their_labels() {
        let metrics = Metrics::new();
        metrics.record_grpc("ipam.v1.AgentService", "Bind", Code::Ok, Duration::from_micros(300));
        metrics.record_grpc(
            "ipam.v1.AgentService",
            "Bind",
            Code::ResourceExhausted,
            Duration::from_millis(2),
        );
        metrics.record_grpc(
            "ipam.v1.Nope",
            "Nothing",
            Code::Unimplemented,
            Duration::from_micros(50),
        );
        metrics.record_bind(BindResult::Bound);
        metrics.record_bind(BindResult::Refused);
        metrics.record_bind(BindResult::Bound);
        metrics.record_release(ReleaseReason::CniDel);
        metrics.record_release(ReleaseReason::NodeRemoved);
        metrics.record_exhausted("node-warm");
        metrics.record_exhausted("a-new-kind");
        let text = text(&metrics);
        assert_has(
            &text,
            r#"ipam_grpc_requests_total{service="ipam.v1.AgentService",method="Bind",code="OK"} 1"#,
        );
        assert_has(
            &text,
            r#"ipam_grpc_requests_total{service="ipam.v1.AgentService",method="Bind",code="ResourceExhausted"} 1"#,
        );
        assert_has(
            &text,
            r#"ipam_grpc_requests_total{service="unknown",method="unknown",code="Unimplemented"} 1"#,
        );
        assert_has(&text, "# TYPE ipam_grpc_request_duration_seconds histogram");
        assert_has(&text, "# UNIT ipam_grpc_request_duration_seconds seconds");
        assert_has(
            &text,
            r#"ipam_grpc_request_duration_seconds_count{service="ipam.v1.AgentService",method="Bind"} 2"#,
        );
        assert_has(
            &text,
            r#"ipam_grpc_request_duration_seconds_bucket{le="0.0001",service="ipam.v1.AgentService",method="Bind"} 0"#,
        );
        assert_has(
            &text,
            r#"ipam_grpc_request_duration_seconds_bucket{le="0.0005",service="ipam.v1.AgentService",method="Bind"} 1"#,
        );
        assert_has(
            &text,
            r#"ipam_grpc_request_duration_seconds_bucket{le="10.0",service="ipam.v1.AgentService",method="Bind"} 2"#,
        );
        assert_has(&text, r#"ipam_binds_total{result="bound"} 2"#);
        assert_has(&text, r#"ipam_binds_total{result="refused"} 1"#);
        assert_has(&text, r#"ipam_releases_total{reason="cni-del"} 1"#);
        assert_has(&text, r#"ipam_releases_total{reason="node-removed"} 1"#);
        assert_has(&text, r#"ipam_exhausted_total{what="node-warm"} 1"#);
        assert_has(&text, r#"ipam_exhausted_total{what="other"} 1"#);
        assert!(text.ends_with("# EOF\n"));
        // No source set: the subnet family is absent rather than empty or stale.
        assert!(!text.contains("ipam_subnet_addresses"), "{text}");
    }

    fn membership(voters: &[u64], learners: &[u64]) -> Arc<StoredMembership<u64, BasicNode>> {
        let nodes: BTreeMap<u64, BasicNode> = voters
            .iter()
            .chain(learners)
            .map(|id| (*id, BasicNode::new(format!("10.0.0.{id}:7400"))))
            .collect();
        let config = vec![voters.iter().copied().collect::<BTreeSet<u64>>()];
        Arc::new(StoredMembership::new(None, Membership::new(config, nodes)))
    }

    #[test]
    fn raft_gauges_follow_the_metrics_and_count_elections() {
        let metrics = Metrics::new();
        let mut m = RaftMetrics::<u64, BasicNode>::new_initial(1);
        m.current_term = 3;
        m.state = ServerState::Leader;
        m.current_leader = Some(1);
        m.last_log_index = Some(12);
        m.last_applied = Some(LogId::new(CommittedLeaderId::new(3, 1), 11));
        m.snapshot = Some(LogId::new(CommittedLeaderId::new(2, 2), 5));
        m.membership_config = membership(&[1, 2, 3], &[4]);
        metrics.observe_raft(&m);
        metrics.observe_raft(&m);
        let first = text(&metrics);
        for line in [
            "ipam_raft_term 3",
            "ipam_raft_is_leader 1",
            "ipam_raft_last_log_index 12",
            "ipam_raft_last_applied_index 11",
            "ipam_raft_snapshot_index 5",
            r#"ipam_raft_members{role="voter"} 3"#,
            r#"ipam_raft_members{role="learner"} 1"#,
            "ipam_raft_leader_changes_total 1",
        ] {
            assert_has(&first, line);
        }

        // Leader lost, then replica 2 wins term 4: one more election; the leaderless gap is none.
        m.state = ServerState::Candidate;
        m.current_leader = None;
        metrics.observe_raft(&m);
        m.state = ServerState::Follower;
        m.current_term = 4;
        m.current_leader = Some(2);
        metrics.observe_raft(&m);
        let text = text(&metrics);
        assert_has(&text, "ipam_raft_is_leader 0");
        assert_has(&text, "ipam_raft_term 4");
        assert_has(&text, "ipam_raft_leader_changes_total 2");
    }

    #[tokio::test]
    async fn watch_raft_updates_on_change_and_stops_with_the_raft() {
        let metrics = Metrics::new();
        let mut m = RaftMetrics::<u64, BasicNode>::new_initial(1);
        m.state = ServerState::Leader;
        m.current_leader = Some(1);
        m.current_term = 1;
        let (tx, rx) = watch::channel(m.clone());
        let task = watch_raft(metrics.clone(), rx);
        m.last_log_index = Some(42);
        tx.send_replace(m);
        // The gauge moves without anyone scraping in between.
        let mut seen = false;
        for _ in 0..200 {
            if text(&metrics).lines().any(|l| l == "ipam_raft_last_log_index 42") {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(seen, "{}", text(&metrics));
        assert_has(&text(&metrics), "ipam_raft_is_leader 1");
        drop(tx);
        task.await.unwrap_or_else(|e| panic!("{e}"));
        assert_has(&text(&metrics), "ipam_raft_is_leader 0");
    }

    #[test]
    fn the_collector_reports_what_the_source_says_at_each_scrape() {
        let metrics = Metrics::new();
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        metrics.set_subnet_source(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some(vec![SubnetCounts {
                subnet_id: "subnet-0a1b2c3d".to_owned(),
                total: 251,
                warm: 8 + n,
                bound: 1,
                cooling: 2,
                free: 231,
                quarantined: 1,
            }])
        });
        let text1 = text(&metrics);
        assert_has(&text1, "# TYPE ipam_subnet_addresses gauge");
        for (state, value) in [
            ("total", 251),
            ("warm", 8),
            ("bound", 1),
            ("cooling", 2),
            ("free", 231),
            ("quarantined", 1),
        ] {
            assert_has(
                &text1,
                &format!(r#"ipam_subnet_addresses{{subnet_id="subnet-0a1b2c3d",state="{state}"}} {value}"#),
            );
        }
        let text2 = text(&metrics);
        assert_has(
            &text2,
            r#"ipam_subnet_addresses{subnet_id="subnet-0a1b2c3d",state="warm"} 9"#,
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);

        // A source with no state (yet) leaves the family out.
        metrics.set_subnet_source(|| None);
        assert!(!text(&metrics).contains("ipam_subnet_addresses"));
    }

    #[test]
    fn counts_from_the_domain_state_follow_an_address_through_its_life() {
        const NODE: &str = "ip-100-64-1-10.us-west-2.compute.internal";
        let ok = |r: ipam_core::Result<Reply>| r.unwrap_or_else(|e| panic!("refused: {e}"));
        let mut h = Harness::new();
        h.subnet(
            "100.64.0.0/16",
            subnet_config("us-west-2a", "subnet-0a1b2c3d", "100.64.1.0/24", "us-west-2a"),
        );
        let agent = h.register(NodeSpec {
            name: NODE.to_owned(),
            instance_id: "i-0123456789abcdef0".to_owned(),
            instance_type: "m5.large".to_owned(),
            limits: None,
            az: "us-west-2a".to_owned(),
            labels: Default::default(),
            subnet_config: "us-west-2a".to_owned(),
            pod_eni: false,
        });
        let counts = |h: &Harness| {
            let all = SubnetCounts::from_state(&h.state);
            assert_eq!(all.len(), 1, "{all:?}");
            all.into_iter().next().unwrap_or_default()
        };
        let fresh = counts(&h);
        assert_eq!(
            (fresh.total, fresh.free, fresh.warm),
            (251, 251, 0),
            "a /24 less AWS's five"
        );

        h.attached_eni(&agent, 9, "eni-00000000000000001", "0e:00:00:00:00:01");
        let warm = counts(&h);
        assert_eq!(
            (warm.free, warm.warm, warm.bound),
            (241, 9, 0),
            "the ENI's primary and 9 warm"
        );

        let (owner, meta) = pod(1, &[]);
        let Reply::Bound(lease) = ok(h.agent(
            NODE,
            Some("bind-1"),
            CommandBody::Bind {
                agent: agent.clone(),
                owner,
                pod: meta,
            },
        )) else {
            panic!("not bound")
        };
        let bound = counts(&h);
        assert_eq!((bound.warm, bound.bound, bound.cooling), (8, 1, 0));

        ok(h.agent(
            NODE,
            None,
            CommandBody::Release {
                agent,
                lease: LeaseSelector::Id(lease.id),
                reason: ReleaseReason::CniDel,
            },
        ));
        let released = counts(&h);
        assert_eq!(
            (
                released.warm,
                released.bound,
                released.cooling,
                released.free,
                released.quarantined
            ),
            (8, 0, 1, 241, 0)
        );
    }

    /// An inner service that answers every request with `headers` (trailers-only style).
    #[derive(Clone)]
    struct Answer {
        headers: Vec<(&'static str, &'static str)>,
    }

    impl Service<Request<()>> for Answer {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = Ready<Result<Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            let mut response = Response::new(());
            for (name, value) in &self.headers {
                response
                    .headers_mut()
                    .insert(*name, value.parse().unwrap_or_else(|e| panic!("{e}")));
            }
            std::future::ready(Ok(response))
        }
    }

    /// An inner service that never answers.
    #[derive(Clone)]
    struct Never;

    impl Service<Request<()>> for Never {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = Pending<Result<Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    fn request(path: &str) -> Request<()> {
        Request::post(path).body(()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn the_service_records_codes_exhaustion_and_cancellations() {
        let metrics = Metrics::new();
        let layer = GrpcMetricsLayer::new(metrics.clone());
        let mut ok = layer.layer(Answer { headers: Vec::new() });
        let mut refused = layer.layer(Answer {
            headers: vec![("grpc-status", "8"), ("ipam-exhausted", "subnet")],
        });
        let mut never = layer.layer(Never);
        let _ = ok.call(request("/ipam.v1.AgentService/Heartbeat")).await;
        let _ = refused.call(request("/ipam.v1.AgentService/Bind")).await;
        let _ = refused.call(request("/ipam.v1.AgentService/Bind")).await;
        drop(never.call(request("/ipam.v1.AuditService/Watch")));
        let _ = ok.call(request("/not-grpc")).await;
        let text = text(&metrics);
        assert_has(
            &text,
            r#"ipam_grpc_requests_total{service="ipam.v1.AgentService",method="Heartbeat",code="OK"} 1"#,
        );
        assert_has(
            &text,
            r#"ipam_grpc_requests_total{service="ipam.v1.AgentService",method="Bind",code="ResourceExhausted"} 2"#,
        );
        assert_has(&text, r#"ipam_exhausted_total{what="subnet"} 2"#);
        assert_has(
            &text,
            r#"ipam_grpc_requests_total{service="ipam.v1.AuditService",method="Watch",code="Canceled"} 1"#,
        );
        assert_has(
            &text,
            r#"ipam_grpc_requests_total{service="unknown",method="unknown",code="OK"} 1"#,
        );
    }

    #[test]
    fn paths_and_codes_parse_as_grpc_says() {
        assert_eq!(
            split_path("/ipam.v1.AgentService/Bind"),
            ("ipam.v1.AgentService", "Bind")
        );
        assert_eq!(split_path("/ipam.v1.AgentService/"), (UNKNOWN, UNKNOWN));
        assert_eq!(split_path("/a/b/c"), (UNKNOWN, UNKNOWN));
        assert_eq!(split_path(""), (UNKNOWN, UNKNOWN));
        let mut headers = HeaderMap::new();
        assert_eq!(response_code(StatusCode::OK, &headers), Code::Ok);
        assert_eq!(
            response_code(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Code::Unavailable
        );
        headers.insert("grpc-status", "14".parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(response_code(StatusCode::OK, &headers), Code::Unavailable);
    }
}
