//! The agent's Prometheus metrics: the VPC CNI's `awscni_*` set under the prefix `ipam_agent_`,
//! EC2 calls measured by [`InstrumentedEc2`], served as OpenMetrics text on `/metrics`.
//!
//! ```text
//!   warm pool / ENI intents ──▶ InstrumentedEc2<E> ──▶ E (AwsEc2, SimEc2)
//!                                 │ per call: ec2api_req_total{api}, aws_api_latency_ms{api,error}
//!                                 └ per failure: aws_api_error_total{api,error=<EC2 code>}
//!   pool / CNI backend ── set_* / record_* ──▶ eni_*, ip_*, *_ip_addresses, add/del_ip_req_total, …
//!   GET /metrics (serve) ──▶ Metrics::encode ──▶ OpenMetrics text
//! ```
//!
//! # Names
//!
//! The VPC CNI's names (`utils/prometheusmetrics/prometheusmetrics.go` in aws/amazon-vpc-cni-k8s,
//! read for the names and meanings only), so that its dashboards and alerts port by changing the
//! prefix. Counters end in `_total`, as OpenMetrics requires, where the VPC CNI's end in `_count`:
//!
//! ```text
//!   awscni_eni_allocated                    ipam_agent_eni_allocated
//!   awscni_eni_max                          ipam_agent_eni_max
//!   awscni_ip_max                           ipam_agent_ip_max
//!   awscni_total_ip_addresses               ipam_agent_total_ip_addresses
//!   awscni_assigned_ip_addresses            ipam_agent_assigned_ip_addresses
//!   awscni_assigned_ip_per_eni{eni}         ipam_agent_assigned_ip_per_eni{eni}
//!   awscni_add_ip_req_count                 ipam_agent_add_ip_req_total
//!   awscni_del_ip_req_count{reason}         ipam_agent_del_ip_req_total{reason}
//!   awscni_no_available_ip_addresses        ipam_agent_no_available_ip_addresses_total
//!   awscni_ipamd_action_inprogress{fn}      ipam_agent_action_inprogress{fn}
//!   awscni_reconcile_count{fn}              ipam_agent_reconcile_total{fn}
//!   awscni_ipamd_error_count{fn}            ipam_agent_error_total{fn}
//!   awscni_ec2api_req_count{fn}             ipam_agent_ec2api_req_total{api}
//!   awscni_aws_api_error_count{api,error}   ipam_agent_aws_api_error_total{api,error}
//!   awscni_aws_api_latency_ms{api,error,..} ipam_agent_aws_api_latency_ms{api,error}
//! ```
//!
//! Differences: the latency is a histogram (prometheus-client has no summary; a histogram can be
//! aggregated across nodes, a summary cannot), without the VPC CNI's HTTP `status` label (the
//! [`Ec2`] trait gives EC2's error code, which `aws_api_error_total` carries). Prefix delegation's
//! `awscni_total_ipv4_prefixes` and the VPC CNI's internal-checkpoint counters have no equivalent.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::ec2::CreateEni;
use crate::ec2::Ec2;
use crate::ec2::EniAttribute;
use crate::ec2::EniFilter;
use crate::ec2::InstanceTypeInfo;
use crate::ec2::NetworkInterface;
use crate::ec2::Result;
use crate::ec2::Subnet;

/// The prefix of every metric name (Prometheus adds the `_`).
pub const PREFIX: &str = "ipam_agent";

/// The content type of `/metrics`: OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// EC2 latency buckets, ms: a describe call takes tens of milliseconds, a create or an attach a
/// few hundred, a throttled or retried call seconds.
const LATENCY_BUCKETS_MS: [f64; 14] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20000.0, 30000.0, 60000.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    api: &'static str,
    error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiErrorLabels {
    api: &'static str,
    error: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnLabels {
    r#fn: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EniLabels {
    eni: String,
}

type U64Gauge = Gauge<u64, AtomicU64>;

#[derive(Debug)]
struct Inner {
    registry: Registry,
    eni_allocated: U64Gauge,
    eni_max: U64Gauge,
    ip_max: U64Gauge,
    total_ips: U64Gauge,
    assigned_ips: U64Gauge,
    assigned_per_eni: Family<EniLabels, U64Gauge>,
    add_ip_reqs: Counter,
    del_ip_reqs: Family<ReasonLabels, Counter>,
    no_available_ips: Counter,
    in_progress: Family<FnLabels, Gauge>,
    reconciles: Family<FnLabels, Counter>,
    errors: Family<FnLabels, Counter>,
    ec2_requests: Family<ApiLabels, Counter>,
    ec2_errors: Family<ApiErrorLabels, Counter>,
    ec2_latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
}

/// The agent's metrics. Cheap to clone (one `Arc`); every clone records into the same registry.
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
        let mut registry = Registry::with_prefix(PREFIX);
        let inner = Inner {
            registry: Registry::default(),
            eni_allocated: U64Gauge::default(),
            eni_max: U64Gauge::default(),
            ip_max: U64Gauge::default(),
            total_ips: U64Gauge::default(),
            assigned_ips: U64Gauge::default(),
            assigned_per_eni: Family::default(),
            add_ip_reqs: Counter::default(),
            del_ip_reqs: Family::default(),
            no_available_ips: Counter::default(),
            in_progress: Family::default(),
            reconciles: Family::default(),
            errors: Family::default(),
            ec2_requests: Family::default(),
            ec2_errors: Family::default(),
            ec2_latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS_MS)),
        };
        registry.register(
            "eni_allocated",
            "The number of ENIs attached to the instance (the primary included)",
            inner.eni_allocated.clone(),
        );
        registry.register(
            "eni_max",
            "The maximum number of ENIs that can be attached to the instance",
            inner.eni_max.clone(),
        );
        registry.register(
            "ip_max",
            "The maximum number of pod IP addresses the instance can hold",
            inner.ip_max.clone(),
        );
        registry.register(
            "total_ip_addresses",
            "The pod IP addresses the node holds on its ENIs",
            inner.total_ips.clone(),
        );
        registry.register(
            "assigned_ip_addresses",
            "The IP addresses assigned to pods",
            inner.assigned_ips.clone(),
        );
        registry.register(
            "assigned_ip_per_eni",
            "The IP addresses assigned to pods, by ENI",
            inner.assigned_per_eni.clone(),
        );
        registry.register(
            "add_ip_req",
            "Pod IP address requests (CNI ADD)",
            inner.add_ip_reqs.clone(),
        );
        registry.register(
            "del_ip_req",
            "Pod IP address releases (CNI DEL), by reason",
            inner.del_ip_reqs.clone(),
        );
        registry.register(
            "no_available_ip_addresses",
            "Pod IP address requests that failed because no address was available",
            inner.no_available_ips.clone(),
        );
        registry.register(
            "action_inprogress",
            "Agent actions in progress, by action",
            inner.in_progress.clone(),
        );
        registry.register(
            "reconcile",
            "Reconciliations of ENIs and addresses, by what was reconciled",
            inner.reconciles.clone(),
        );
        registry.register("error", "Errors in the agent, by where", inner.errors.clone());
        registry.register(
            "ec2api_req",
            "Requests made to the EC2 API, by action",
            inner.ec2_requests.clone(),
        );
        registry.register(
            "aws_api_error",
            "EC2 API requests that failed, by action and EC2 error code",
            inner.ec2_errors.clone(),
        );
        registry.register_with_unit(
            "aws_api_latency",
            "EC2 API call latency, by action and whether it failed",
            Unit::Other("ms".to_owned()),
            inner.ec2_latency.clone(),
        );
        Self {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }

    /// The registry, to encode it elsewhere or register more.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Everything, as OpenMetrics text (ending in `# EOF`).
    ///
    /// # Errors
    ///
    /// Only when formatting fails; writing to a `String` does not.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }

    /// The ENIs attached (`eni_allocated`) and the most the instance may have (`eni_max`).
    pub fn set_enis(&self, allocated: u64, max: u64) {
        self.inner.eni_allocated.set(allocated);
        self.inner.eni_max.set(max);
    }

    /// The most pod addresses the instance can hold (`ip_max`).
    pub fn set_ip_max(&self, max: u64) {
        self.inner.ip_max.set(max);
    }

    /// The pod addresses the node holds (`total_ip_addresses`) and those bound to pods
    /// (`assigned_ip_addresses`).
    pub fn set_addresses(&self, total: u64, assigned: u64) {
        self.inner.total_ips.set(total);
        self.inner.assigned_ips.set(assigned);
    }

    /// The addresses of ENI `eni_id` bound to pods.
    pub fn set_eni_assigned(&self, eni_id: &str, assigned: u64) {
        self.inner
            .assigned_per_eni
            .get_or_create(&EniLabels { eni: eni_id.to_owned() })
            .set(assigned);
    }

    /// Forgets ENI `eni_id` (detached or deleted), so that its series stops.
    pub fn remove_eni(&self, eni_id: &str) {
        self.inner
            .assigned_per_eni
            .remove(&EniLabels { eni: eni_id.to_owned() });
    }

    /// A CNI ADD asked for an address.
    pub fn record_add_ip(&self) {
        self.inner.add_ip_reqs.inc();
    }

    /// A CNI DEL released an address, for `reason` (a closed set, e.g. "pod-deleted").
    pub fn record_del_ip(&self, reason: &'static str) {
        self.inner.del_ip_reqs.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A CNI ADD failed because no address was available.
    pub fn record_no_available_ip(&self) {
        self.inner.no_available_ips.inc();
    }

    /// A reconciliation of `what` ran.
    pub fn record_reconcile(&self, what: &'static str) {
        self.inner.reconciles.get_or_create(&FnLabels { r#fn: what }).inc();
    }

    /// An error in `place` (a closed set, e.g. "reconcile", "warm-pool").
    pub fn record_error(&self, place: &'static str) {
        self.inner.errors.get_or_create(&FnLabels { r#fn: place }).inc();
    }

    /// Marks `action` in progress until the guard drops.
    pub fn action(&self, action: &'static str) -> ActionGuard {
        self.inner.in_progress.get_or_create(&FnLabels { r#fn: action }).inc();
        ActionGuard {
            metrics: self.clone(),
            action,
        }
    }

    /// One EC2 call of `api` (EC2's action name) that took `elapsed_ms` and failed with EC2 error
    /// code `error` (`None`: succeeded).
    pub fn record_ec2_call(&self, api: &'static str, elapsed_ms: f64, error: Option<&str>) {
        self.inner.ec2_requests.get_or_create(&ApiLabels { api }).inc();
        self.inner
            .ec2_latency
            .get_or_create(&LatencyLabels {
                api,
                error: if error.is_some() { "true" } else { "false" },
            })
            .observe(elapsed_ms);
        if let Some(code) = error {
            self.inner
                .ec2_errors
                .get_or_create(&ApiErrorLabels {
                    api,
                    error: code.to_owned(),
                })
                .inc();
        }
    }
}

/// An action in progress (`action_inprogress{fn}`); dropping it ends the action.
#[derive(Debug)]
#[must_use = "the action ends when the guard drops"]
pub struct ActionGuard {
    metrics: Metrics,
    action: &'static str,
}

impl Drop for ActionGuard {
    fn drop(&mut self) {
        self.metrics
            .inner
            .in_progress
            .get_or_create(&FnLabels { r#fn: self.action })
            .dec();
    }
}

/// An [`Ec2`] that measures every call of the one it wraps: count, latency, failures by EC2
/// error code. Time is tokio's, so a paused test clock measures the simulator's latency exactly.
pub struct InstrumentedEc2<E: Ec2 + ?Sized> {
    inner: Arc<E>,
    metrics: Metrics,
}

impl<E: Ec2 + ?Sized> fmt::Debug for InstrumentedEc2<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedEc2")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<E: Ec2 + ?Sized> InstrumentedEc2<E> {
    /// Measures `inner`'s calls into `metrics`.
    pub fn new(inner: Arc<E>, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }

    /// The wrapped EC2.
    pub fn inner(&self) -> &Arc<E> {
        &self.inner
    }

    /// The metrics recorded into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    async fn observe<T>(&self, api: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        let result = call.await;
        let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
        self.metrics
            .record_ec2_call(api, elapsed_ms, result.as_ref().err().map(|e| e.code.as_str()));
        result
    }
}

#[async_trait::async_trait]
impl<E: Ec2 + ?Sized> Ec2 for InstrumentedEc2<E> {
    async fn create_network_interface(&self, request: &CreateEni) -> Result<NetworkInterface> {
        self.observe("CreateNetworkInterface", self.inner.create_network_interface(request))
            .await
    }

    async fn attach_network_interface(&self, eni_id: &str, instance_id: &str, device_index: u8) -> Result<String> {
        self.observe(
            "AttachNetworkInterface",
            self.inner.attach_network_interface(eni_id, instance_id, device_index),
        )
        .await
    }

    async fn detach_network_interface(&self, attachment_id: &str, force: bool) -> Result<()> {
        self.observe(
            "DetachNetworkInterface",
            self.inner.detach_network_interface(attachment_id, force),
        )
        .await
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<()> {
        self.observe("DeleteNetworkInterface", self.inner.delete_network_interface(eni_id))
            .await
    }

    async fn assign_private_ip_addresses(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        self.observe(
            "AssignPrivateIpAddresses",
            self.inner.assign_private_ip_addresses(eni_id, ips),
        )
        .await
    }

    async fn unassign_private_ip_addresses(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        self.observe(
            "UnassignPrivateIpAddresses",
            self.inner.unassign_private_ip_addresses(eni_id, ips),
        )
        .await
    }

    async fn describe_network_interfaces(&self, filter: &EniFilter) -> Result<Vec<NetworkInterface>> {
        self.observe(
            "DescribeNetworkInterfaces",
            self.inner.describe_network_interfaces(filter),
        )
        .await
    }

    async fn describe_subnets(&self, subnet_ids: &[String]) -> Result<Vec<Subnet>> {
        self.observe("DescribeSubnets", self.inner.describe_subnets(subnet_ids))
            .await
    }

    async fn describe_instance_types(&self, instance_types: &[String]) -> Result<Vec<InstanceTypeInfo>> {
        self.observe(
            "DescribeInstanceTypes",
            self.inner.describe_instance_types(instance_types),
        )
        .await
    }

    async fn modify_network_interface_attribute(&self, eni_id: &str, attribute: &EniAttribute) -> Result<()> {
        self.observe(
            "ModifyNetworkInterfaceAttribute",
            self.inner.modify_network_interface_attribute(eni_id, attribute),
        )
        .await
    }
}

/// The `/metrics` route, for serving it elsewhere or calling it in tests.
pub fn router(metrics: Metrics) -> Router {
    Router::new().route("/metrics", get(metrics_text)).with_state(metrics)
}

/// Serves `/metrics` on `listener` until `shutdown` completes, then finishes the requests in
/// flight.
///
/// # Errors
///
/// The listener fails.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_text(State(metrics): State<Metrics>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded\n").into_response(),
    }
}
