//! The agent's side of `ipam.v1.AgentService`: every call names the node, the epoch of this agent
//! instance and a request id that stays the same across the retries of one operation, so that a
//! retry after a lost answer (or a leader change) gets the first reply instead of acting twice.
//!
//! Leader following and bounded retries are `ipam-client`'s [`Cluster`]; this module adds the
//! node's identity and turns the server's "register again" signal (`ipam-register`) into
//! [`IpamError::RegisterAgain`], which the agent answers by registering.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use ipam_client::ChannelOptions;
use ipam_client::Cluster;
use ipam_client::RetryPolicy;
use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::agent_service_client::AgentServiceClient;
use tonic::Status;
use tonic::transport::Channel;

/// A failed call to the IPAM server.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The server fenced this agent instance (stale epoch, node expired or unknown): register
    /// again, then retry.
    #[error("the IPAM server wants the node registered again ({why}): {message}")]
    RegisterAgain {
        /// `stale-epoch`, `node-expired` or `node-unknown`.
        why: String,
        /// The server's message.
        message: String,
    },
    /// Any other answer (or no answer) from the server.
    #[error("IPAM server: {}: {}", ipam_client::code_name(.0.code()), .0.message())]
    Status(Status),
    /// The agent has not registered yet.
    #[error("the node is not registered with the IPAM server yet")]
    NotRegistered,
}

impl IpamError {
    /// The gRPC status, for errors that came from the server.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Status(status) => Some(status),
            _ => None,
        }
    }

    /// What ran out, for a RESOURCE_EXHAUSTED answer (`subnet`, `node-warm`, `branch-warm`,
    /// `node-limit`).
    pub fn exhausted(&self) -> Option<&str> {
        self.status().and_then(ipam_client::exhausted_what)
    }

    /// The gRPC code of the failure (`FailedPrecondition` for [`IpamError::RegisterAgain`]).
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::RegisterAgain { .. } | Self::NotRegistered => tonic::Code::FailedPrecondition,
            Self::Status(status) => status.code(),
        }
    }

    /// Whether the write may have been applied although it failed (a timeout, a lost leader):
    /// the agent must read the server's view before acting on it as "not done".
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Self::Status(status) => ipam_client::outcome_is_unknown(status.code()),
            _ => false,
        }
    }
}

impl From<Status> for IpamError {
    fn from(status: Status) -> Self {
        match ipam_client::register_again(&status) {
            Some(why) => Self::RegisterAgain {
                why: why.to_owned(),
                message: status.message().to_owned(),
            },
            None => Self::Status(status),
        }
    }
}

/// `Result` with [`IpamError`].
pub type Result<T, E = IpamError> = std::result::Result<T, E>;

/// Request ids unique to this process: a prefix from the process id and start time, and a
/// counter (the server accepts 1 to 64 printable characters).
#[derive(Debug)]
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            prefix: format!("na-{:x}-{started:x}", std::process::id()),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// The IPAM server as one node's agent calls it.
#[derive(Debug)]
pub struct IpamClient {
    cluster: Cluster,
    node: String,
    epoch: Mutex<Option<u64>>,
    ids: RequestIds,
}

impl IpamClient {
    /// A client for `node` of the cluster at `servers` (`host:port`).
    ///
    /// # Errors
    ///
    /// `servers` is empty or an address is malformed.
    pub fn new(servers: Vec<String>, node: impl Into<String>, policy: RetryPolicy) -> Result<Self> {
        let options = ChannelOptions {
            connections: 1,
            ..ChannelOptions::default()
        };
        Ok(Self {
            cluster: Cluster::new(servers, policy, options)?,
            node: node.into(),
            epoch: Mutex::new(None),
            ids: RequestIds::new(),
        })
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The epoch of this agent instance, once registered.
    pub fn epoch(&self) -> Option<u64> {
        *self.epoch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current_epoch(&self) -> Result<u64> {
        self.epoch().ok_or(IpamError::NotRegistered)
    }

    /// One call through the cluster, retried as `ipam-client` decides with the same request.
    /// `epoch` is the epoch the request carries: a "stale epoch" answer to a request made before
    /// this agent registered again is not a fence of the current instance, only a retry.
    async fn call<Req, Resp, F, Fut>(&self, epoch: Option<u64>, request: Req, f: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(AgentServiceClient<Channel>, Req) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
    {
        self.cluster
            .call(0, |channel| f(AgentServiceClient::new(channel), request.clone()))
            .await
            .map_err(|status| match IpamError::from(status) {
                IpamError::RegisterAgain { why, message } if why == "stale-epoch" && epoch != self.epoch() => {
                    IpamError::Status(Status::unavailable(format!(
                        "made with an earlier epoch of this agent, which registered again meanwhile; try again ({message})"
                    )))
                }
                other => other,
            })
    }

    /// Registers the node (a new epoch fences every earlier instance of this agent).
    pub async fn register(&self, mut request: pb::RegisterNodeRequest) -> Result<pb::RegisterNodeResponse> {
        request.node = self.node.clone();
        request.request_id = self.ids.next();
        let response = self
            .call(None, request, |mut c, r| async move { c.register_node(r).await })
            .await?;
        *self.epoch.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(response.epoch);
        Ok(response)
    }

    /// Extends the node's heartbeat deadline.
    pub async fn heartbeat(&self) -> Result<pb::HeartbeatResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::HeartbeatRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
        };
        self.call(Some(epoch), request, |mut c, r| async move { c.heartbeat(r).await })
            .await
    }

    /// The server's view of the node (linearizable).
    pub async fn get_node(&self) -> Result<pb::GetNodeResponse> {
        let request = pb::GetNodeRequest {
            node: self.node.clone(),
        };
        self.call(None, request, |mut c, r| async move { c.get_node(r).await })
            .await
    }

    /// Plans a secondary or trunk ENI.
    pub async fn plan_eni(&self, kind: pb::EniKind, ip_count: u32) -> Result<pb::PlanEniResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::PlanEniRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            kind: kind.into(),
            ip_count,
        };
        self.call(Some(epoch), request, |mut c, r| async move { c.plan_eni(r).await })
            .await
    }

    /// Reports a planned ENI created and attached.
    pub async fn report_eni_attached(
        &self,
        eni_ref: u64,
        eni_id: &str,
        mac: &str,
        attachment_id: &str,
    ) -> Result<pb::ReportEniAttachedResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::ReportEniAttachedRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            eni_ref,
            eni_id: eni_id.to_owned(),
            mac: mac.to_owned(),
            attachment_id: attachment_id.to_owned(),
        };
        self.call(Some(epoch), request, |mut c, r| async move {
            c.report_eni_attached(r).await
        })
        .await
    }

    /// Reports a planned ENI that does not exist in EC2 and will not.
    pub async fn report_eni_failed(&self, eni_ref: u64, failure: &Failure) -> Result<pb::ReportEniFailedResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::ReportEniFailedRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            eni_ref,
            error_code: failure.code.clone(),
            error_message: failure.message.clone(),
            in_use_ips: failure.in_use.iter().map(ToString::to_string).collect(),
        };
        self.call(
            Some(epoch),
            request,
            |mut c, r| async move { c.report_eni_failed(r).await },
        )
        .await
    }

    /// Plans more addresses on an attached ENI.
    pub async fn plan_ips(&self, eni_ref: u64, count: u32) -> Result<pb::PlanIpsResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::PlanIpsRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            eni_ref,
            count,
        };
        self.call(Some(epoch), request, |mut c, r| async move { c.plan_ips(r).await })
            .await
    }

    /// Reports the addresses of a plan EC2 assigned (the others return to the subnet).
    pub async fn report_ips_assigned(
        &self,
        eni_ref: u64,
        intent_token: &str,
        ips: &[String],
    ) -> Result<pb::ReportIpsAssignedResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::ReportIpsAssignedRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            eni_ref,
            intent_token: intent_token.to_owned(),
            ips: ips.to_vec(),
        };
        self.call(Some(epoch), request, |mut c, r| async move {
            c.report_ips_assigned(r).await
        })
        .await
    }

    /// Reports that EC2 refused a plan of addresses.
    pub async fn report_ips_failed(
        &self,
        eni_ref: u64,
        intent_token: &str,
        failure: &Failure,
    ) -> Result<pb::ReportIpsFailedResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::ReportIpsFailedRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            eni_ref,
            intent_token: intent_token.to_owned(),
            error_code: failure.code.clone(),
            error_message: failure.message.clone(),
            in_use_ips: failure.in_use.iter().map(ToString::to_string).collect(),
        };
        self.call(
            Some(epoch),
            request,
            |mut c, r| async move { c.report_ips_failed(r).await },
        )
        .await
    }

    /// Moves `count` warm addresses of an ENI to draining.
    pub async fn drain_ips(&self, eni_ref: u64, count: u32) -> Result<pb::DrainIpsResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::DrainIpsRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            eni_ref,
            count,
            ips: Vec::new(),
        };
        self.call(Some(epoch), request, |mut c, r| async move { c.drain_ips(r).await })
            .await
    }

    /// Reports draining addresses unassigned by EC2.
    pub async fn report_ips_unassigned(&self, eni_ref: u64, ips: &[String]) -> Result<pb::ReportIpsUnassignedResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::ReportIpsUnassignedRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            eni_ref,
            ips: ips.to_vec(),
        };
        self.call(Some(epoch), request, |mut c, r| async move {
            c.report_ips_unassigned(r).await
        })
        .await
    }

    /// Agrees with the server to remove an idle ENI.
    pub async fn plan_eni_detach(&self, eni_ref: u64) -> Result<pb::PlanEniDetachResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::PlanEniDetachRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            eni_ref,
        };
        self.call(
            Some(epoch),
            request,
            |mut c, r| async move { c.plan_eni_detach(r).await },
        )
        .await
    }

    /// Reports a detaching ENI deleted in EC2.
    pub async fn report_eni_detached(&self, eni_ref: u64) -> Result<pb::ReportEniDetachedResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::ReportEniDetachedRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            eni_ref,
        };
        self.call(Some(epoch), request, |mut c, r| async move {
            c.report_eni_detached(r).await
        })
        .await
    }

    /// Binds a warm address to a pod attachment.
    pub async fn bind(&self, mut request: pb::BindRequest) -> Result<pb::BindResponse> {
        request.node = self.node.clone();
        let epoch = self.current_epoch()?;
        request.epoch = epoch;
        request.request_id = self.ids.next();
        self.call(Some(epoch), request, |mut c, r| async move { c.bind(r).await })
            .await
    }

    /// Releases a lease by id and/or attachment.
    pub async fn release(
        &self,
        lease_id: u64,
        attachment: Option<pb::Attachment>,
        reason: pb::ReleaseReason,
    ) -> Result<pb::ReleaseResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::ReleaseRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            lease_id,
            attachment,
            reason: reason.into(),
        };
        self.call(Some(epoch), request, |mut c, r| async move { c.release(r).await })
            .await
    }

    /// Releases every lease of the node bound before `bound_before_unix_ms` whose attachment is
    /// not in `valid`.
    pub async fn gc(&self, valid: Vec<pb::Attachment>, bound_before_unix_ms: i64) -> Result<pb::GcResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::GcRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            valid_attachments: valid,
            bound_before_unix_ms,
        };
        self.call(Some(epoch), request, |mut c, r| async move { c.gc(r).await })
            .await
    }

    /// Asks for up to `count` calls of the cluster-wide EC2 budget.
    pub async fn acquire_ec2_budget(&self, class: pb::Ec2ApiClass, count: u32) -> Result<pb::AcquireEc2BudgetResponse> {
        let epoch = self.current_epoch()?;
        let request = pb::AcquireEc2BudgetRequest {
            node: self.node.clone(),
            epoch,
            request_id: self.ids.next(),
            api_class: class.into(),
            count,
        };
        self.call(
            Some(epoch),
            request,
            |mut c, r| async move { c.acquire_ec2_budget(r).await },
        )
        .await
    }
}

/// Why EC2 refused a plan, for the server's failure reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failure {
    /// EC2's error code; empty if the failure was not EC2's.
    pub code: String,
    /// What happened.
    pub message: String,
    /// Planned addresses EC2 said are in use elsewhere (quarantined by the server).
    pub in_use: Vec<std::net::Ipv4Addr>,
}

impl From<&crate::ec2::Ec2Error> for Failure {
    fn from(error: &crate::ec2::Ec2Error) -> Self {
        Self {
            code: error.code.clone(),
            message: error.to_string(),
            in_use: Vec::new(),
        }
    }
}
