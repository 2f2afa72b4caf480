//! The CNI plugin's backend: `agent.v1.CniBackend` on a unix socket (mode 0600 by default).
//!
//! ```text
//!   ADD    pod's labels and service account (Kubernetes view) ─▶ server Bind (node, epoch)
//!          ─▶ rules 512/1536 for the address ─▶ everything the plugin plumbs and DEL needs
//!          (no warm address: wake the pool and retry the bind until `add_wait`; then CNI 11)
//!   DEL    server Release (lease id + attachment; a stale DEL frees nothing) ─▶ rules removed
//!   CHECK  the lease is bound to this attachment with this address, and its rules are there
//!   STATUS registered, heartbeating, an ENI attached
//!   GC     server Gc (leases of attachments the runtime no longer has) ─▶ their rules removed
//! ```
//!
//! Host rules change under the executor's host lock, so that the pool's reconcile (which removes
//! rules no bound lease explains) never races a bind or a release in between.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipam_proto::agent::v1 as api;
use ipam_proto::agent::v1::cni_backend_server::CniBackend;
use ipam_proto::agent::v1::cni_backend_server::CniBackendServer;
use ipam_proto::ipam::v1 as pb;
use sha1::Digest;
use tokio::sync::Notify;
use tokio::sync::watch;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::host::Host;
use crate::host::PodRules;
use crate::host::eni_table;
use crate::ipam_client::IpamClient;
use crate::ipam_client::IpamError;
use crate::metrics::Metrics;

/// The pods' gateway: a link-local address answered by a permanent neighbour entry on the host
/// side of each veth (the VPC CNI's).
pub const POD_GATEWAY: &str = "169.254.1.1";

/// The host-side veth name of a pod, as the VPC CNI makes it: `eni` and the first 11 hex digits
/// of SHA-1 over `namespace.name` (15 characters, the kernel's limit).
pub fn host_veth_name(namespace: &str, name: &str) -> String {
    let digest = sha1::Sha1::digest(format!("{namespace}.{name}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("eni{}", &hex[..11])
}

/// What Kubernetes says about a pod, for the server's security group policy match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// The pod's UID.
    pub uid: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its service account ("default" when unset).
    pub service_account: String,
    /// The service account's labels.
    pub service_account_labels: BTreeMap<String, String>,
}

/// Where the backend looks pods up (the Kubernetes watchers, or files in a local run).
pub trait PodDirectory: Send + Sync + std::fmt::Debug {
    /// The pod, if known.
    fn pod(&self, namespace: &str, name: &str) -> Option<PodMeta>;

    /// Whether the directory holds the node's complete pod list (synced), so that a pod it does
    /// not know really does not exist. Without it the agent never releases a lease as an orphan.
    fn knows_pods(&self) -> bool {
        false
    }
}

/// No pod metadata (no Kubernetes): every pod binds without labels.
#[derive(Debug, Default)]
pub struct NoPods;

impl PodDirectory for NoPods {
    fn pod(&self, _namespace: &str, _name: &str) -> Option<PodMeta> {
        None
    }
}

/// Whether the agent can take ADDs, as its loops last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Ready for ADDs.
    pub ready: bool,
    /// Why not, when not.
    pub reason: String,
}

impl Readiness {
    /// Not ready, because.
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Self {
            ready: false,
            reason: reason.into(),
        }
    }

    /// Ready.
    pub fn ready() -> Self {
        Self {
            ready: true,
            reason: String::new(),
        }
    }
}

/// The backend's settings.
#[derive(Debug, Clone)]
pub struct CniConfig {
    /// The pods' MTU.
    pub mtu: u32,
    /// How long an ADD waits for the pool to grow when no address is warm.
    pub add_wait: Duration,
    /// How long GC leaves leases alone after they were bound (clock skew between node and
    /// leader; an ADD racing the runtime's list).
    pub gc_grace: Duration,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            mtu: 9001,
            add_wait: Duration::from_secs(10),
            gc_grace: Duration::from_secs(5),
        }
    }
}

/// The `CniBackend` service.
#[derive(Debug, Clone)]
pub struct Backend {
    ipam: Arc<IpamClient>,
    host: Arc<dyn Host>,
    host_lock: Arc<tokio::sync::Mutex<()>>,
    pods: Arc<dyn PodDirectory>,
    /// Wakes the pool (no warm address for a pod).
    pool_kick: Arc<Notify>,
    /// Wakes the agent's registration loop (the server fenced this instance).
    register_kick: Arc<Notify>,
    readiness: watch::Receiver<Readiness>,
    config: CniConfig,
    metrics: Option<Metrics>,
}

impl Backend {
    /// A backend binding through `ipam` and configuring `host`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ipam: Arc<IpamClient>,
        host: Arc<dyn Host>,
        host_lock: Arc<tokio::sync::Mutex<()>>,
        pods: Arc<dyn PodDirectory>,
        pool_kick: Arc<Notify>,
        register_kick: Arc<Notify>,
        readiness: watch::Receiver<Readiness>,
        config: CniConfig,
    ) -> Self {
        Self {
            ipam,
            host,
            host_lock,
            pods,
            pool_kick,
            register_kick,
            readiness,
            config,
            metrics: None,
        }
    }

    /// Counts ADDs, DELs and ADDs that found no warm address.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The status a failed server call answers the plugin with.
    fn status(&self, error: IpamError) -> Status {
        match error {
            IpamError::RegisterAgain { why, message } => {
                self.register_kick.notify_one();
                Status::unavailable(format!(
                    "the agent is registering again with the IPAM server ({why}: {message}); try again"
                ))
            }
            IpamError::NotRegistered => {
                Status::unavailable("the agent is not registered with the IPAM server yet; try again")
            }
            IpamError::Status(status) => {
                // Only what may pass is "try again"; a refusal stays a refusal (a plugin retrying a
                // permanent error forever helps nobody).
                let code = match status.code() {
                    tonic::Code::InvalidArgument => tonic::Code::InvalidArgument,
                    tonic::Code::ResourceExhausted => tonic::Code::ResourceExhausted,
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted => tonic::Code::Unavailable,
                    _ => tonic::Code::FailedPrecondition,
                };
                Status::new(code, format!("IPAM server: {}", status.message()))
            }
        }
    }

    async fn bind(&self, request: pb::BindRequest) -> Result<pb::BindResponse, Status> {
        let deadline = tokio::time::Instant::now() + self.config.add_wait;
        let mut wait = Duration::from_millis(50);
        loop {
            match self.ipam.bind(request.clone()).await {
                Ok(bound) => return Ok(bound),
                Err(error) if matches!(error.exhausted(), Some("node-warm" | "branch-warm")) => {
                    self.pool_kick.notify_one();
                    if let Some(metrics) = &self.metrics {
                        metrics.record_no_available_ip();
                    }
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(Status::resource_exhausted(format!(
                            "no warm address on this node after {:?}; the agent is growing its pool, try again ({})",
                            self.config.add_wait,
                            error.status().map(Status::message).unwrap_or_default()
                        )));
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(self.status(error)),
            }
        }
    }
}

fn attachment(a: Option<&api::Attachment>) -> Result<pb::Attachment, Status> {
    let a = a.ok_or_else(|| Status::invalid_argument("attachment is required (CNI_CONTAINERID, CNI_IFNAME)"))?;
    if a.container_id.is_empty() {
        return Err(Status::invalid_argument(
            "attachment.container_id (CNI_CONTAINERID) is empty",
        ));
    }
    if a.ifname.is_empty() {
        return Err(Status::invalid_argument("attachment.ifname (CNI_IFNAME) is empty"));
    }
    Ok(pb::Attachment {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
    })
}

fn parse_ip(what: &str, ip: &str) -> Result<Ipv4Addr, Status> {
    ip.parse()
        .map_err(|_| Status::internal(format!("the server answered {what} {ip:?}, not an IPv4 address")))
}

#[tonic::async_trait]
impl CniBackend for Backend {
    async fn add(&self, request: Request<api::AddRequest>) -> Result<Response<api::AddResponse>, Status> {
        let request = request.into_inner();
        let attachment = attachment(request.attachment.as_ref())?;
        if request.netns_path.is_empty() {
            return Err(Status::invalid_argument("netns_path (CNI_NETNS) is empty"));
        }
        let pod = request.pod.unwrap_or_default();
        if pod.namespace.is_empty() || pod.name.is_empty() {
            return Err(Status::invalid_argument(
                "pod namespace and name (K8S_POD_NAMESPACE, K8S_POD_NAME in CNI_ARGS) are required",
            ));
        }
        let meta = self.pods.pod(&pod.namespace, &pod.name).unwrap_or_default();
        let uid = if pod.uid.is_empty() {
            meta.uid.clone()
        } else {
            pod.uid.clone()
        };
        let bound = self
            .bind(pb::BindRequest {
                pod: Some(pb::PodRef {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    uid,
                }),
                pod_labels: meta.labels.into_iter().collect(),
                service_account: meta.service_account,
                service_account_labels: meta.service_account_labels.into_iter().collect(),
                attachment: Some(attachment),
                ..pb::BindRequest::default()
            })
            .await?;
        let lease = bound
            .lease
            .ok_or_else(|| Status::internal("the server's bind answered no lease"))?;
        let ip = parse_ip("address", &lease.ip)?;
        let branch = !bound.trunk_eni_id.is_empty();
        let route_table_id = if branch {
            100 + lease.vlan_id
        } else {
            let table = eni_table(bound.device_index);
            let _guard = self.host_lock.lock().await;
            if let Err(error) = self.host.add_pod_rules(&PodRules { ip, table }).await {
                // Undo the bind: the plugin gets an error and will not DEL what it never saw.
                let _ = self.ipam.release(lease.lease_id, None, pb::ReleaseReason::CniDel).await;
                return Err(Status::internal(format!("installing the rules of {ip}: {error}")));
            }
            table
        };
        let reply = api::AddResponse {
            lease_id: lease.lease_id,
            ip: lease.ip.clone(),
            prefix_length: 32,
            gateway: POD_GATEWAY.to_owned(),
            routes: vec![api::Route {
                dst: "0.0.0.0/0".to_owned(),
                gw: POD_GATEWAY.to_owned(),
            }],
            mtu: self.config.mtu,
            host_veth_name: host_veth_name(&pod.namespace, &pod.name),
            route_table_id,
            subnet_cidr: bound.subnet_cidr.clone(),
            eni_id: lease.eni_id.clone(),
            security_group_ids: lease.security_group_ids.clone(),
            branch: branch.then(|| api::BranchEni {
                eni_id: lease.eni_id.clone(),
                mac: bound.eni_mac.clone(),
                vlan_id: lease.vlan_id,
                trunk_link: String::new(),
                trunk_eni_id: bound.trunk_eni_id.clone(),
                vlan_link: format!("vlan.eth.{}", lease.vlan_id),
                subnet_gateway: bound.gateway.clone(),
            }),
        };
        if let Some(metrics) = &self.metrics {
            metrics.record_add_ip();
        }
        tracing::info!(
            pod = %format!("{}/{}", pod.namespace, pod.name),
            ip = %reply.ip,
            lease = reply.lease_id,
            eni = %reply.eni_id,
            "ADD"
        );
        Ok(Response::new(reply))
    }

    async fn del(&self, request: Request<api::DelRequest>) -> Result<Response<api::DelResponse>, Status> {
        let request = request.into_inner();
        let attachment = attachment(request.attachment.as_ref())?;
        let _guard = self.host_lock.lock().await;
        let released = self
            .ipam
            .release(request.lease_id, Some(attachment), pb::ReleaseReason::CniDel)
            .await
            .map_err(|e| self.status(e))?;
        if let Some(lease) = released.lease.as_ref().filter(|_| released.released) {
            let ip = parse_ip("address", &lease.ip)?;
            self.host
                .del_pod_rules(ip)
                .await
                .map_err(|e| Status::internal(format!("removing the rules of {ip}: {e}")))?;
            if let Some(metrics) = &self.metrics {
                metrics.record_del_ip("cni_del");
            }
            tracing::info!(ip = %ip, lease = lease.lease_id, "DEL");
        }
        Ok(Response::new(api::DelResponse {
            released: released.released,
        }))
    }

    async fn check(&self, request: Request<api::CheckRequest>) -> Result<Response<api::CheckResponse>, Status> {
        let request = request.into_inner();
        let attachment = attachment(request.attachment.as_ref())?;
        let view = self.ipam.get_node().await.map_err(|e| self.status(e))?;
        let failed = |reason: String| Ok(Response::new(api::CheckResponse { ok: false, reason }));
        let Some(lease) = view.leases.iter().find(|l| l.lease_id == request.lease_id) else {
            return failed(format!("lease {} is not held on this node", request.lease_id));
        };
        if lease.state() != pb::LeaseState::Bound {
            return failed(format!("lease {} is {:?}, not bound", lease.lease_id, lease.state()));
        }
        let owner = lease.owner.as_ref().and_then(|o| o.attachment.as_ref());
        if owner != Some(&attachment) {
            return failed(format!(
                "lease {} belongs to another attachment ({owner:?})",
                lease.lease_id
            ));
        }
        if !request.ip.is_empty() && request.ip != lease.ip {
            return failed(format!(
                "lease {} holds {}, not {}",
                lease.lease_id, lease.ip, request.ip
            ));
        }
        if lease.vlan_id == 0 {
            let ip = parse_ip("address", &lease.ip)?;
            let rules = self
                .host
                .pod_rules()
                .await
                .map_err(|e| Status::unavailable(format!("reading the host's rules: {e}")))?;
            if !rules.iter().any(|r| r.ip == ip) {
                return failed(format!("the host has no rules for {ip}"));
            }
        }
        Ok(Response::new(api::CheckResponse {
            ok: true,
            reason: String::new(),
        }))
    }

    async fn status(&self, _request: Request<api::StatusRequest>) -> Result<Response<api::StatusResponse>, Status> {
        let readiness = self.readiness.borrow().clone();
        Ok(Response::new(api::StatusResponse {
            ready: readiness.ready,
            reason: readiness.reason,
        }))
    }

    async fn gc(&self, request: Request<api::GcRequest>) -> Result<Response<api::GcResponse>, Status> {
        let request = request.into_inner();
        let valid = request
            .valid_attachments
            .iter()
            .map(|a| attachment(Some(a)))
            .collect::<Result<Vec<_>, _>>()?;
        let grace = i64::try_from(self.config.gc_grace.as_millis()).unwrap_or(i64::MAX);
        let before = crate::executor::now_ms().saturating_sub(grace);
        let _guard = self.host_lock.lock().await;
        let collected = self.ipam.gc(valid, before).await.map_err(|e| self.status(e))?;
        for lease in &collected.released {
            let ip = parse_ip("address", &lease.ip)?;
            self.host
                .del_pod_rules(ip)
                .await
                .map_err(|e| Status::internal(format!("removing the rules of {ip}: {e}")))?;
        }
        tracing::info!(released = collected.released.len(), "GC");
        Ok(Response::new(api::GcResponse {
            released: u32::try_from(collected.released.len()).unwrap_or(u32::MAX),
        }))
    }
}

/// The agent's bound socket: removed when dropped, but only if the path is still the socket this
/// agent bound (a newer agent may have replaced it).
#[derive(Debug)]
pub struct BoundSocket {
    listener: Option<tokio::net::UnixListener>,
    path: PathBuf,
    identity: (u64, u64),
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the socket at `path` with permission bits `mode`, replacing a stale socket file of an
/// earlier agent.
///
/// # Errors
///
/// The directory or the socket cannot be made, or the path holds something else than a socket.
pub fn bind(path: &Path, mode: u32) -> anyhow::Result<BoundSocket> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => anyhow::bail!("{} exists and is not a socket; refusing to replace it", path.display()),
        Err(_) => {}
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| anyhow::anyhow!("binding {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok(BoundSocket {
        listener: Some(listener),
        path: path.to_owned(),
        identity: (meta.dev(), meta.ino()),
    })
}

/// Serves `backend` on the bound socket until `shutdown` completes; removes the socket then.
///
/// # Errors
///
/// The server failed.
pub async fn serve(
    backend: Backend,
    socket: BoundSocket,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut socket = socket;
    let listener = socket
        .listener
        .take()
        .ok_or_else(|| anyhow::anyhow!("the socket {} is already served", socket.path.display()))?;
    tracing::info!(path = %socket.path.display(), "serving the CNI plugin");
    tonic::transport::Server::builder()
        .add_service(CniBackendServer::new(backend))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), shutdown)
        .await?;
    drop(socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_the_vpc_cnis() {
        // python3 -c 'import hashlib; print(hashlib.sha1(b"default.nginx").hexdigest()[:11])'
        let name = host_veth_name("default", "nginx");
        assert_eq!(name, "enic440f455693");
        assert_ne!(name, host_veth_name("default", "nginx-2"));
        assert_ne!(name, host_veth_name("kube-system", "nginx"));
    }
}
