//! The agent's life: register, reconcile, serve, and keep it all true.
//!
//! ```text
//!   start ─▶ register (new epoch, fences older instances) ─▶ SNAT ─▶ first pool step, which
//!            resolves what a crash left in flight (EC2 ↔ server) and makes the host's ENI
//!            tables and pod rules match the server's leases ─▶ orphans released (pods that no
//!            longer exist, when the pod list is known) ─▶ CNI socket served
//!   tasks:   heartbeat every ttl/3 (node expired or unknown → register again; a newer
//!            instance of this agent registered → stop)
//!            pool step every `pool_interval`, or at once when an ADD found no warm address
//! ```
//!
//! A restart changes nothing that is right: registering again only bumps the epoch, the step
//! finds every ENI and rule already in place, and no lease is released for a pod that still runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipam_proto::ipam::v1 as pb;
use tokio::sync::Notify;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cni_backend;
use crate::cni_backend::Backend;
use crate::cni_backend::CniConfig;
use crate::cni_backend::PodDirectory;
use crate::cni_backend::Readiness;
use crate::ec2::Ec2;
use crate::executor::Executor;
use crate::executor::ExecutorConfig;
use crate::executor::now_ms;
use crate::host::Host;
use crate::host::SnatConfig;
use crate::ipam_client::IpamClient;
use crate::ipam_client::IpamError;
use crate::metrics::Metrics;

/// Everything an agent runs with.
#[derive(Debug)]
pub struct AgentSpec {
    /// The IPAM server, for this node.
    pub ipam: Arc<IpamClient>,
    /// EC2.
    pub ec2: Arc<dyn Ec2>,
    /// The host's networking.
    pub host: Arc<dyn Host>,
    /// Pods as Kubernetes (or local files) sees them.
    pub pods: Arc<dyn PodDirectory>,
    /// What to register with (node, request id and epoch are filled in).
    pub registration: pb::RegisterNodeRequest,
    /// The executor's settings; the scope's cluster is the server's (learnt at registration).
    pub executor: ExecutorConfig,
    /// SNAT for pod traffic leaving the VPC.
    pub snat: SnatConfig,
    /// The CNI backend's settings.
    pub cni: CniConfig,
    /// The CNI socket and its permission bits.
    pub socket: PathBuf,
    /// The socket's mode (0600 by default).
    pub socket_mode: u32,
    /// How often the pool is stepped without a reason.
    pub pool_interval: Duration,
    /// Leases younger than this are never released as orphans (an ADD may be racing the pod
    /// watcher).
    pub orphan_grace: Duration,
    /// Where the pool's gauges and the CNI counters go.
    pub metrics: Option<Metrics>,
}

/// A running agent.
#[derive(Debug)]
pub struct RunningAgent {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    readiness: watch::Receiver<Readiness>,
    /// The registration's answer.
    pub registered: pb::RegisterNodeResponse,
    /// What the first step (the start's reconcile) did.
    pub first_step: crate::executor::StepReport,
    /// Why the first step failed, if it did (the agent serves anyway; the pool retries).
    pub first_step_error: Option<String>,
    fatal: watch::Receiver<Option<String>>,
    /// Leases released at start because their pods no longer exist.
    pub orphans_released: u32,
}

impl RunningAgent {
    /// Whether the agent takes ADDs now, and why not.
    pub fn readiness(&self) -> Readiness {
        self.readiness.borrow().clone()
    }

    /// Waits until the agent cannot go on (another instance of it registered the node); why.
    pub async fn fatal(&self) -> String {
        let mut fatal = self.fatal.clone();
        match fatal.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops every task and closes the socket; leases, ENIs and rules stay (a restart resumes).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Registration failed.
    #[error("registering the node: {0}")]
    Register(IpamError),
    /// SNAT could not be configured.
    #[error("configuring SNAT: {0}")]
    Snat(crate::host::HostError),
    /// The CNI socket could not be bound.
    #[error("the CNI socket: {0}")]
    Socket(anyhow::Error),
}

/// Registers with retries (the server may be electing), bounded by `deadline`.
async fn register(
    ipam: &IpamClient,
    request: &pb::RegisterNodeRequest,
    deadline: Duration,
) -> Result<pb::RegisterNodeResponse, IpamError> {
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        match ipam.register(request.clone()).await {
            Ok(response) => return Ok(response),
            Err(error) if error.outcome_unknown() && started.elapsed() + wait < deadline => {
                tracing::warn!(%error, "registration failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Starts the agent: binds the CNI socket, registers, reconciles, serves the socket and spawns its
/// loops. A first reconcile that does not finish (EC2 down, a stuck intent) does not stop the
/// start: the agent serves, not ready until its pool is, and the pool loop retries.
///
/// # Errors
///
/// The socket cannot be bound, registration or SNAT failed; nothing is served then.
pub async fn start(mut spec: AgentSpec) -> Result<RunningAgent, StartError> {
    adopt_recorded_limits(&mut spec).await;
    let socket = cni_backend::bind(&spec.socket, spec.socket_mode).map_err(StartError::Socket)?;
    let registered = register(&spec.ipam, &spec.registration, Duration::from_secs(60))
        .await
        .map_err(StartError::Register)?;
    tracing::info!(node = %spec.ipam.node(), epoch = registered.epoch, "registered");
    if !registered.cluster_tag.is_empty() {
        spec.executor.scope.cluster = registered.cluster_tag.clone();
    }
    spec.host.configure_snat(&spec.snat).await.map_err(StartError::Snat)?;

    let host_lock = Arc::new(tokio::sync::Mutex::new(()));
    let executor = Arc::new(Executor::new(
        spec.ipam.clone(),
        spec.ec2.clone(),
        spec.host.clone(),
        spec.executor.clone(),
        host_lock.clone(),
    ));
    let (first_step, first_step_error) = match executor.step().await {
        Ok(report) => {
            tracing::info!(?report, "reconciled at start");
            (report, None)
        }
        Err(error) => {
            tracing::warn!(%error, "the reconcile at start did not finish; serving anyway, the pool retries");
            (crate::executor::StepReport::default(), Some(error.to_string()))
        }
    };
    let orphans_released = release_orphans(&spec, &host_lock).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "could not release the leases of vanished pods");
        0
    });

    let (stop, stopped) = watch::channel(false);
    let (ready_tx, readiness) = watch::channel(Readiness::not_ready("starting"));
    let pool_kick = Arc::new(Notify::new());
    let register_kick = Arc::new(Notify::new());
    let (fatal_tx, fatal) = watch::channel(None);
    let health = Arc::new(Health::default());
    health.set_registered(true);
    let observer = Observer {
        ipam: spec.ipam.clone(),
        metrics: spec.metrics.clone(),
        max_enis: u64::from(spec.executor.limits.max_enis),
    };
    health.set_pool(observer.observe().await);
    let _ = ready_tx.send(health.readiness());

    let mut backend = Backend::new(
        spec.ipam.clone(),
        spec.host.clone(),
        host_lock,
        spec.pods.clone(),
        pool_kick.clone(),
        register_kick.clone(),
        readiness.clone(),
        spec.cni.clone(),
    );
    if let Some(metrics) = &spec.metrics {
        backend = backend.with_metrics(metrics.clone());
    }
    let mut tasks = Vec::new();
    let mut until = stopped.clone();
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = until.wait_for(|s| *s).await;
        };
        if let Err(error) = cni_backend::serve(backend, socket, shutdown).await {
            tracing::error!(%error, "the CNI socket failed");
        }
    }));
    tasks.push(tokio::spawn(heartbeat_loop(
        spec.ipam.clone(),
        spec.registration.clone(),
        registered.heartbeat_ttl_ms,
        register_kick.clone(),
        pool_kick.clone(),
        health.clone(),
        ready_tx.clone(),
        fatal_tx,
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(pool_loop(
        executor,
        observer,
        spec.pool_interval,
        pool_kick,
        register_kick,
        health,
        ready_tx,
        stopped,
    )));
    Ok(RunningAgent {
        stop,
        tasks,
        readiness,
        registered,
        first_step,
        first_step_error,
        fatal,
        orphans_released,
    })
}

/// When the server already holds this node under the same instance and type, registers with the
/// limits it holds: a restart that learnt other limits (EC2's answer vs. the built-in table) must
/// not look like another machine, which would make the server forget the node's ENIs and leases.
async fn adopt_recorded_limits(spec: &mut AgentSpec) {
    let Ok(view) = spec.ipam.get_node().await else {
        return;
    };
    let Some(node) = view.node else { return };
    let Some(recorded) = node.limits else { return };
    if node.instance_id != spec.registration.instance_id
        || node.instance_type != spec.registration.instance_type
        || spec.registration.limits.as_ref() == Some(&recorded)
    {
        return;
    }
    let (Ok(max_enis), Ok(ipv4_per_eni), Ok(branch_enis)) = (
        u8::try_from(recorded.max_enis),
        u16::try_from(recorded.ipv4_per_eni),
        u16::try_from(recorded.branch_enis),
    ) else {
        return;
    };
    tracing::warn!(
        learnt = ?spec.registration.limits,
        ?recorded,
        "the instance limits learnt now differ from those the cluster holds for this instance; keeping the cluster's"
    );
    spec.executor.limits = ipam_core::limits::InstanceLimits {
        max_enis,
        ipv4_per_eni,
        branch_enis,
        trunking: recorded.trunking,
    };
    spec.registration.limits = Some(recorded);
}

/// What the loops last saw, combined into the CNI STATUS answer.
#[derive(Debug, Default)]
struct Health {
    inner: std::sync::Mutex<(bool, bool)>,
}

impl Health {
    fn set_registered(&self, ok: bool) {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 = ok;
    }

    fn set_pool(&self, ok: bool) {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1 = ok;
    }

    fn readiness(&self) -> Readiness {
        let (registered, pool) = *self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !registered {
            Readiness::not_ready("not registered with the IPAM server (or its heartbeat fails)")
        } else if !pool {
            Readiness::not_ready("no ENI with pod addresses is attached yet")
        } else {
            Readiness::ready()
        }
    }
}

/// Reads the server's view of the node after each step: the pool's gauges, and whether the node
/// has an attached secondary ENI (addresses for pods, now or after cooling).
#[derive(Debug)]
struct Observer {
    ipam: Arc<IpamClient>,
    metrics: Option<Metrics>,
    max_enis: u64,
}

impl Observer {
    async fn observe(&self) -> bool {
        let Ok(view) = self.ipam.get_node().await else {
            return false;
        };
        let attached: Vec<&pb::Eni> = view
            .enis
            .iter()
            .filter(|e| e.kind() != pb::EniKind::Branch && e.state() == pb::EniState::Attached)
            .collect();
        if let Some(metrics) = &self.metrics {
            let pod_addresses = |e: &&pb::Eni| {
                e.addresses
                    .iter()
                    .filter(|a| {
                        matches!(
                            a.state(),
                            pb::AddressState::Warm | pb::AddressState::Bound | pb::AddressState::Cooling
                        )
                    })
                    .count() as u64
            };
            let bound = |e: &&pb::Eni| {
                e.addresses
                    .iter()
                    .filter(|a| a.state() == pb::AddressState::Bound)
                    .count() as u64
            };
            // The primary ENI counts, as in the VPC CNI.
            metrics.set_enis(attached.len() as u64 + 1, self.max_enis);
            metrics.set_addresses(
                attached.iter().map(pod_addresses).sum(),
                attached.iter().map(bound).sum(),
            );
            for eni in &attached {
                metrics.set_eni_assigned(&eni.eni_id, bound(eni));
            }
        }
        attached.iter().any(|e| e.kind() == pb::EniKind::Secondary)
    }
}

#[allow(clippy::too_many_arguments)]
async fn heartbeat_loop(
    ipam: Arc<IpamClient>,
    registration: pb::RegisterNodeRequest,
    ttl_ms: u64,
    register_kick: Arc<Notify>,
    pool_kick: Arc<Notify>,
    health: Arc<Health>,
    ready: watch::Sender<Readiness>,
    fatal: watch::Sender<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis((ttl_ms / 3).max(100));
    let mut again = false;
    loop {
        // A kick (a call met a fence) only brings the heartbeat forward: its answer says whether
        // to register again, so a burst of fenced calls cannot become a burst of registrations.
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(every) => {}
            () = register_kick.notified() => {}
        }
        if !again {
            match ipam.heartbeat().await {
                Ok(_) => health.set_registered(true),
                Err(IpamError::RegisterAgain { why, message }) if why == "stale-epoch" => {
                    // Another instance of this agent registered the node after this one: two
                    // agents must never run one node's pool; this one stops.
                    tracing::error!(%message, "another agent instance registered this node; stopping");
                    health.set_registered(false);
                    let _ = ready.send(health.readiness());
                    let _ = fatal.send(Some(format!("another agent instance registered this node: {message}")));
                    return;
                }
                Err(IpamError::RegisterAgain { why, .. }) => {
                    tracing::warn!(%why, "the node must register again");
                    again = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "heartbeat failed");
                    health.set_registered(false);
                }
            }
        }
        if again {
            match register(&ipam, &registration, Duration::from_secs(10)).await {
                Ok(response) => {
                    tracing::info!(epoch = response.epoch, "registered again");
                    again = false;
                    health.set_registered(true);
                    pool_kick.notify_one();
                }
                Err(error) => {
                    tracing::warn!(%error, "registering again failed");
                    health.set_registered(false);
                }
            }
        }
        let _ = ready.send(health.readiness());
    }
}

#[allow(clippy::too_many_arguments)]
async fn pool_loop(
    executor: Arc<Executor>,
    observer: Observer,
    interval: Duration,
    kick: Arc<Notify>,
    register_kick: Arc<Notify>,
    health: Arc<Health>,
    ready: watch::Sender<Readiness>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let wait = if failures == 0 {
            interval
        } else {
            (interval * failures.min(6)).min(Duration::from_secs(60))
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(wait) => {}
            () = kick.notified() => {}
        }
        match executor.step().await {
            Ok(report) => {
                failures = 0;
                if !report.actions.is_empty() || report.resolved > 0 || report.host_fixes > 0 {
                    tracing::info!(?report, "pool step");
                }
                // More may be needed at once (one new ENI per step).
                if !report.actions.is_empty() {
                    kick.notify_one();
                }
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "pool step failed");
                if matches!(error, crate::executor::ExecError::Ipam(IpamError::RegisterAgain { .. })) {
                    register_kick.notify_one();
                }
            }
        }
        health.set_pool(observer.observe().await);
        let _ = ready.send(health.readiness());
    }
}

/// Releases the bound leases of pods that no longer exist (when the pod list is known), older
/// than the grace period. Returns how many.
async fn release_orphans(spec: &AgentSpec, host_lock: &tokio::sync::Mutex<()>) -> Result<u32, IpamError> {
    if !spec.pods.knows_pods() {
        return Ok(0);
    }
    let view = spec.ipam.get_node().await?;
    let grace = i64::try_from(spec.orphan_grace.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms().saturating_sub(grace);
    let mut released = 0;
    for lease in view.leases.iter().filter(|l| l.state() == pb::LeaseState::Bound) {
        let Some(owner) = lease.owner.as_ref() else { continue };
        let Some(pod) = owner.pod.as_ref() else { continue };
        if lease.bound_at_unix_ms > cutoff {
            continue;
        }
        let present = spec
            .pods
            .pod(&pod.namespace, &pod.name)
            .is_some_and(|meta| pod.uid.is_empty() || meta.uid.is_empty() || meta.uid == pod.uid);
        if present {
            continue;
        }
        let _guard = host_lock.lock().await;
        let answer = spec
            .ipam
            .release(lease.lease_id, owner.attachment.clone(), pb::ReleaseReason::Reconcile)
            .await?;
        if answer.released {
            if let Ok(ip) = lease.ip.parse()
                && let Err(error) = spec.host.del_pod_rules(ip).await
            {
                tracing::warn!(%error, %ip, "removing an orphan's rules");
            }
            tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), ip = %lease.ip, "released the lease of a pod that no longer exists");
            released += 1;
        }
    }
    Ok(released)
}
