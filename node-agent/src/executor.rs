//! The warm pool's executor: one [`Executor::step`] reads the server's view of the node, finishes
//! or undoes whatever an earlier step (or a crashed agent) left in flight, makes the host match
//! the view, asks the pure planner ([`crate::warm::plan`]) what the pool needs, and carries the
//! plan out, each action as an intent the server records before EC2 is called:
//!
//! ```text
//!   PlanEni   server PlanEni ─▶ EC2 Create (ClientToken = token, explicit addresses, tags)
//!             ─▶ EC2 Attach ─▶ link with the MAC appears ─▶ host table ─▶ ReportEniAttached
//!   PlanIps   server PlanIps ─▶ EC2 AssignPrivateIpAddresses (those addresses) ─▶ ReportIpsAssigned
//!   DrainIps  server DrainIps ─▶ EC2 UnassignPrivateIpAddresses ─▶ ReportIpsUnassigned
//!   Detach    server PlanEniDetach ─▶ EC2 Detach ─▶ available ─▶ Delete ─▶ host ─▶ ReportEniDetached
//! ```
//!
//! Every EC2 call first takes a token of the cluster-wide budget (`AcquireEc2Budget`), so that a
//! thousand nodes starting at once stay under EC2's rate limits instead of throttling each other.
//! A throttled call was not carried out and is retried; a call whose outcome is unknown (EC2
//! unavailable, a timeout) is left in flight, and the next step resolves it from EC2's view:
//!
//! ```text
//!   in flight (server's view)        resolved from EC2
//!   ───────────────────────────      ───────────────────────────────────────────────────────────
//!   ENI planned                      ec2::intents: resume the attach / report / create / delete
//!   addresses pending (token T)      those EC2 has on the ENI: report assigned; none: assign them
//!   addresses draining               still on the ENI: unassign; then report unassigned
//!   ENI detaching                    detach if attached, delete, report detached
//! ```
//!
//! Steps run one at a time (the agent's pool task), so anything in flight at the start of a step
//! was left by an earlier step or an earlier agent.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use ipam_core::cidr::Ipv4Cidr;
use ipam_core::eni_tags::EniTagging;
use ipam_core::limits::InstanceLimits;
use ipam_proto::ipam::v1 as pb;

use crate::ec2::CreateEni;
use crate::ec2::Ec2;
use crate::ec2::Ec2Error;
use crate::ec2::Ec2ErrorKind;
use crate::ec2::EniFilter;
use crate::ec2::InterfaceType;
use crate::ec2::NetworkInterface;
use crate::ec2::Tag;
use crate::ec2::intents;
use crate::ec2::intents::Decision;
use crate::ec2::intents::NodeScope;
use crate::ec2::intents::PlannedEni;
use crate::host::EniLink;
use crate::host::Host;
use crate::host::HostError;
use crate::host::PodRules;
use crate::ipam_client::Failure;
use crate::ipam_client::IpamClient;
use crate::ipam_client::IpamError;
use crate::warm;
use crate::warm::EniRole;
use crate::warm::EniView;
use crate::warm::Targets;

/// A step that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The IPAM server refused or did not answer.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// EC2 failed.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// The host could not be configured.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The server's view of the node is not what the agent can work with.
    #[error("the server's view of the node: {0}")]
    View(String),
    /// The cluster-wide EC2 budget granted nothing for too long.
    #[error("no EC2 budget granted for {calls} {class} call(s) within {waited:?}")]
    Budget {
        /// The budget class.
        class: &'static str,
        /// How many calls were wanted.
        calls: u32,
        /// How long the agent waited.
        waited: Duration,
    },
    /// EC2 did not get an ENI to the wanted state in time.
    #[error("ENI {eni_id}: {what} did not happen within {waited:?}")]
    Timeout {
        /// The ENI.
        eni_id: String,
        /// What was awaited.
        what: &'static str,
        /// How long.
        waited: Duration,
    },
}

/// `Result` with [`ExecError`].
pub type Result<T, E = ExecError> = std::result::Result<T, E>;

/// What the executor needs to know about the node and how hard to try.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The warm targets.
    pub targets: Targets,
    /// The instance type's limits.
    pub limits: InstanceLimits,
    /// Custom networking (pod ENIs in the ENIConfig subnet, none on the primary ENI).
    pub custom_networking: bool,
    /// Security groups for pods (a slot kept for the trunk ENI).
    pub pod_eni: bool,
    /// kubelet's max pods, if known.
    pub max_pods: Option<u32>,
    /// Whose ENIs: cluster, node, instance (EC2 tags and the attach target).
    pub scope: NodeScope,
    /// How long to wait for an attached ENI's link to appear.
    pub link_timeout: Duration,
    /// How long a new ENI is kept even when idle (ipamd keeps one a minute).
    pub young_for: Duration,
    /// How long to wait for a detach to finish and for budget grants.
    pub ec2_wait: Duration,
    /// How often to poll EC2 while waiting for a detach.
    pub poll: Duration,
    /// Retries of a throttled EC2 call (throttled calls were not carried out).
    pub throttle_retries: u32,
    /// With no plan in flight, EC2 is swept for this node's leaked ENIs every this many steps
    /// (and at the first).
    pub sweep_every: u64,
}

impl ExecutorConfig {
    /// Defaults for a node of `scope` with `limits`, under custom networking.
    pub fn new(scope: NodeScope, limits: InstanceLimits, targets: Targets) -> Self {
        Self {
            targets,
            limits,
            custom_networking: true,
            pod_eni: false,
            max_pods: None,
            scope,
            link_timeout: Duration::from_secs(60),
            young_for: Duration::from_secs(60),
            ec2_wait: Duration::from_secs(60),
            poll: Duration::from_millis(500),
            throttle_retries: 5,
            sweep_every: 60,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    /// In-flight intents resolved (from an earlier step or agent).
    pub resolved: u32,
    /// The planner's actions carried out.
    pub actions: Vec<warm::Action>,
    /// The planner's verdict.
    pub why: String,
    /// Whether the pool is short and cannot grow now (limit, pending ENI, max pods).
    pub blocked: Option<String>,
    /// Host changes made to match the view (ENI tables, pod rules added or removed).
    pub host_fixes: u32,
}

/// Carries the warm pool's plans out (see the module docs).
#[derive(Debug)]
pub struct Executor {
    ipam: Arc<IpamClient>,
    ec2: Arc<dyn Ec2>,
    host: Arc<dyn Host>,
    config: ExecutorConfig,
    /// Held while the host's pod rules are compared with the server's leases, and by the CNI
    /// backend around a bind + rules or release + rules, so that neither undoes the other.
    host_lock: Arc<tokio::sync::Mutex<()>>,
    /// Steps taken.
    steps: std::sync::atomic::AtomicU64,
    /// Subnet CIDRs by EC2 subnet id: each ENI is routed by its own subnet, which need not be the
    /// node's current subnet config (an ENIConfig changed since it was made).
    subnets: std::sync::Mutex<BTreeMap<String, Ipv4Cidr>>,
}

impl Executor {
    /// An executor for the node `ipam` speaks for.
    pub fn new(
        ipam: Arc<IpamClient>,
        ec2: Arc<dyn Ec2>,
        host: Arc<dyn Host>,
        config: ExecutorConfig,
        host_lock: Arc<tokio::sync::Mutex<()>>,
    ) -> Self {
        Self {
            ipam,
            ec2,
            host,
            config,
            host_lock,
            steps: std::sync::atomic::AtomicU64::new(0),
            subnets: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    /// One step: resolve what is in flight, make the host match, plan, act.
    ///
    /// # Errors
    ///
    /// The first failure; the next step starts over from the server's view.
    pub async fn step(&self) -> Result<StepReport> {
        let mut report = StepReport::default();
        let mut view = self.ipam.get_node().await?;
        report.resolved = self.resolve_in_flight(&view).await?;
        if report.resolved > 0 {
            view = self.ipam.get_node().await?;
        }
        report.host_fixes = self.sync_host(&view).await?;
        let node = self.planner_view(&view)?;
        let plan = warm::plan(&self.config.targets, &node);
        report.why = plan.why.clone();
        report.blocked = plan.blocked.map(|b| b.to_string());
        for action in plan.actions {
            tracing::info!(%action, why = %plan.why, "warm pool");
            self.execute(action, &view).await?;
            report.actions.push(action);
        }
        Ok(report)
    }

    /// The planner's view of the server's view.
    ///
    /// # Errors
    ///
    /// An ENI of an unknown kind or state.
    pub fn planner_view(&self, view: &pb::GetNodeResponse) -> Result<warm::Node> {
        let now = now_ms();
        let young_ms = i64::try_from(self.config.young_for.as_millis()).unwrap_or(i64::MAX);
        let mut enis = Vec::new();
        for eni in &view.enis {
            let role = match eni.kind() {
                pb::EniKind::Secondary => EniRole::Secondary,
                pb::EniKind::Trunk => EniRole::Trunk,
                // Branch ENIs take no device slot.
                pb::EniKind::Branch => continue,
                pb::EniKind::Unspecified => return Err(ExecError::View(format!("ENI {} has no kind", eni.eni_ref))),
            };
            let state = match eni.state() {
                pb::EniState::Planned => ipam_core::state::EniState::Planned,
                pb::EniState::Attached => ipam_core::state::EniState::Attached,
                pb::EniState::Detaching => ipam_core::state::EniState::Detaching,
                pb::EniState::Unspecified => {
                    return Err(ExecError::View(format!("ENI {} has no state", eni.eni_ref)));
                }
            };
            let mut view = EniView {
                state,
                young: now.saturating_sub(eni.planned_at_unix_ms) < young_ms,
                ..EniView::attached(eni.eni_ref, role)
            };
            for address in &eni.addresses {
                let slot = match address.state() {
                    pb::AddressState::Bound => &mut view.bound,
                    pb::AddressState::Warm => &mut view.warm,
                    pb::AddressState::Cooling => &mut view.cooling,
                    pb::AddressState::Pending => &mut view.pending,
                    pb::AddressState::Draining => &mut view.draining,
                    pb::AddressState::Quarantined | pb::AddressState::Unspecified => continue,
                };
                *slot = slot.saturating_add(1);
            }
            enis.push(view);
        }
        Ok(warm::Node {
            limits: self.config.limits,
            custom_networking: self.config.custom_networking,
            pod_eni: self.config.pod_eni,
            max_pods: self.config.max_pods,
            enis,
        })
    }

    // ── in-flight intents ───────────────────────────────────────────────────────────────────

    /// Resolves every intent the view shows in flight; returns how many.
    async fn resolve_in_flight(&self, view: &pb::GetNodeResponse) -> Result<u32> {
        let mut resolved = 0;
        let planned: Vec<&pb::Eni> = view
            .enis
            .iter()
            .filter(|e| e.state() == pb::EniState::Planned && e.kind() != pb::EniKind::Branch)
            .collect();
        // Plans in flight are resolved at once; with none, EC2 is still swept for leaked ENIs of
        // this node now and then (at start, then every `sweep_every` steps: a describe per node
        // per step would spend the cluster's describe budget).
        let step = self.steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !planned.is_empty() || step.is_multiple_of(self.config.sweep_every.max(1)) {
            resolved += tolerate(self.resolve_planned_enis(view, &planned).await, "planned ENIs")?;
        }
        for eni in view.enis.iter().filter(|e| e.state() == pb::EniState::Attached) {
            let mut pending: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
            let mut draining = Vec::new();
            for address in &eni.addresses {
                match address.state() {
                    pb::AddressState::Pending => pending
                        .entry(address.intent_token.as_str())
                        .or_default()
                        .push(parse_ip(&address.ip)?),
                    pb::AddressState::Draining => draining.push(parse_ip(&address.ip)?),
                    _ => {}
                }
            }
            for (token, ips) in pending {
                resolved += tolerate(
                    self.finish_assign(eni, token, &ips).await.map(|()| 1),
                    "pending addresses",
                )?;
            }
            if !draining.is_empty() {
                resolved += tolerate(
                    self.finish_unassign(eni, &draining).await.map(|()| 1),
                    "draining addresses",
                )?;
            }
        }
        for eni in view.enis.iter().filter(|e| e.state() == pb::EniState::Detaching) {
            if eni.kind() != pb::EniKind::Branch {
                resolved += tolerate(self.finish_detach(eni, view).await.map(|()| 1), "a detaching ENI")?;
            }
        }
        Ok(resolved)
    }

    /// Planned ENIs: compare EC2's ENIs under the node's tags with the plans (ec2::intents).
    async fn resolve_planned_enis(&self, view: &pb::GetNodeResponse, planned: &[&pb::Eni]) -> Result<u32> {
        // EC2's view first: an ENI exists only after its token was planned (intents' docs).
        let filter = self.config.scope.filter();
        let observed = self
            .ec2_call(Class::Describe, || self.ec2.describe_network_interfaces(&filter))
            .await?;
        let plans: Vec<PlannedEni> = planned
            .iter()
            .map(|eni| {
                Ok(PlannedEni {
                    token: eni.intent_token.clone(),
                    eni_ref: eni.eni_ref.to_string(),
                    device_index: u8::try_from(eni.device_index)
                        .map_err(|_| ExecError::View(format!("device index {} too large", eni.device_index)))?,
                    subnet_id: eni.subnet_id.clone(),
                })
            })
            .collect::<Result<_>>()?;
        let by_ref: BTreeMap<String, &pb::Eni> = planned.iter().map(|e| (e.eni_ref.to_string(), *e)).collect();
        let mut resolved = 0;
        for decision in intents::decide(&self.config.scope, &plans, &observed) {
            let plan = match &decision {
                Decision::Resume { planned, .. }
                | Decision::Done { planned, .. }
                | Decision::NotCreated { planned }
                | Decision::Conflict { planned, .. } => by_ref.get(&planned.eni_ref).copied(),
                Decision::Leaked { .. } => None,
            };
            match decision {
                Decision::NotCreated { .. } => {
                    let Some(eni) = plan else { continue };
                    // The create never took effect: carry the plan out now, same token.
                    self.create_and_attach(&self.resumed_plan(eni, view).await?).await?;
                }
                Decision::Resume { eni_id, .. } => {
                    let Some(eni) = plan else { continue };
                    let created = self.describe_one(&eni_id).await?;
                    self.attach_and_report(&self.resumed_plan(eni, view).await?, &created)
                        .await?;
                }
                Decision::Done {
                    eni_id, attachment_id, ..
                } => {
                    let Some(eni) = plan else { continue };
                    let created = self.describe_one(&eni_id).await?;
                    self.configure_and_report(&self.resumed_plan(eni, view).await?, &created, &attachment_id)
                        .await?;
                }
                Decision::Leaked { eni_id, token } => {
                    tracing::warn!(%eni_id, ?token, "deleting an unattached ENI of this node that no plan explains");
                    match self
                        .ec2_call(Class::Mutating, || self.ec2.delete_network_interface(&eni_id))
                        .await
                    {
                        Ok(()) => {}
                        Err(e) if e.kind == Ec2ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Decision::Conflict { eni_id, why, .. } => {
                    tracing::error!(%eni_id, %why, "an ENI of this node's plan is in a state the plan does not explain; left alone");
                }
            }
            resolved += 1;
        }
        Ok(resolved)
    }

    /// Pending addresses of a plan: report those EC2 has; assign the rest first.
    async fn finish_assign(&self, eni: &pb::Eni, token: &str, ips: &[Ipv4Addr]) -> Result<()> {
        let current = self.describe_one(&eni.eni_id).await?;
        let missing: Vec<Ipv4Addr> = ips.iter().copied().filter(|ip| !current.has_ip(*ip)).collect();
        if !missing.is_empty() {
            tracing::info!(eni = %eni.eni_id, ?missing, "assigning the addresses of an unfinished plan");
            if let Err(error) = self
                .ec2_call(Class::Mutating, || {
                    self.ec2.assign_private_ip_addresses(&eni.eni_id, &missing)
                })
                .await
            {
                if error.is_retryable() {
                    return Err(error.into());
                }
                let have: Vec<String> = ips
                    .iter()
                    .filter(|ip| current.has_ip(**ip))
                    .map(ToString::to_string)
                    .collect();
                if have.is_empty() {
                    self.ipam
                        .report_ips_failed(eni.eni_ref, token, &failure(&error, &missing))
                        .await?;
                } else {
                    self.ipam.report_ips_assigned(eni.eni_ref, token, &have).await?;
                }
                return Ok(());
            }
        }
        let all: Vec<String> = ips.iter().map(ToString::to_string).collect();
        self.ipam.report_ips_assigned(eni.eni_ref, token, &all).await?;
        Ok(())
    }

    /// Draining addresses: unassign those EC2 still has, report all.
    async fn finish_unassign(&self, eni: &pb::Eni, ips: &[Ipv4Addr]) -> Result<()> {
        let current = self.describe_one(&eni.eni_id).await?;
        let still: Vec<Ipv4Addr> = ips.iter().copied().filter(|ip| current.has_ip(*ip)).collect();
        if !still.is_empty() {
            self.ec2_call(Class::Mutating, || {
                self.ec2.unassign_private_ip_addresses(&eni.eni_id, &still)
            })
            .await?;
        }
        let all: Vec<String> = ips.iter().map(ToString::to_string).collect();
        self.ipam.report_ips_unassigned(eni.eni_ref, &all).await?;
        Ok(())
    }

    /// A detaching ENI: detach if still attached, wait, delete, clean the host, report.
    async fn finish_detach(&self, eni: &pb::Eni, view: &pb::GetNodeResponse) -> Result<()> {
        if !eni.eni_id.is_empty() {
            match self.describe_maybe(&eni.eni_id).await? {
                None => {}
                Some(current) => {
                    if let Some(attachment) = &current.attachment {
                        let attachment_id = attachment.attachment_id.clone();
                        match self
                            .ec2_call(Class::Mutating, || {
                                self.ec2.detach_network_interface(&attachment_id, false)
                            })
                            .await
                        {
                            Ok(()) => {}
                            // Detached meanwhile.
                            Err(e) if e.kind == Ec2ErrorKind::NotFound => {}
                            Err(e) => return Err(e.into()),
                        }
                        self.wait_detached(&eni.eni_id).await?;
                    }
                    match self
                        .ec2_call(Class::Mutating, || self.ec2.delete_network_interface(&eni.eni_id))
                        .await
                    {
                        Ok(()) => {}
                        Err(e) if e.kind == Ec2ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if let Some(link) = self.eni_link(eni, view).await? {
                self.host.remove_eni(&link).await?;
            }
        }
        self.ipam.report_eni_detached(eni.eni_ref).await?;
        Ok(())
    }

    // ── the planner's actions ───────────────────────────────────────────────────────────────

    async fn execute(&self, action: warm::Action, view: &pb::GetNodeResponse) -> Result<()> {
        match action {
            warm::Action::PlanEni { ips } => {
                let plan = self.ipam.plan_eni(pb::EniKind::Secondary, u32::from(ips)).await?;
                let spec = PlanSpec::from_plan(&plan)?;
                self.create_and_attach(&spec).await
            }
            warm::Action::PlanIps { eni, count } => {
                let target = find_eni(view, eni)?;
                let plan = self.ipam.plan_ips(eni, u32::from(count)).await?;
                let ips = plan.ips.iter().map(|ip| parse_ip(ip)).collect::<Result<Vec<_>>>()?;
                if ips.is_empty() {
                    return Ok(());
                }
                match self
                    .ec2_call(Class::Mutating, || {
                        self.ec2.assign_private_ip_addresses(&target.eni_id, &ips)
                    })
                    .await
                {
                    Ok(()) => {
                        self.ipam
                            .report_ips_assigned(eni, &plan.intent_token, &plan.ips)
                            .await?;
                        Ok(())
                    }
                    // Unknown outcome: the next step finds the addresses pending and asks EC2.
                    Err(error) if error.is_retryable() => Err(error.into()),
                    Err(error) => {
                        tracing::warn!(%error, eni = %target.eni_id, "EC2 refused the planned addresses");
                        self.ipam
                            .report_ips_failed(eni, &plan.intent_token, &failure(&error, &ips))
                            .await?;
                        Err(error.into())
                    }
                }
            }
            warm::Action::DrainIps { eni, count } => {
                let target = find_eni(view, eni)?;
                let drained = self.ipam.drain_ips(eni, u32::from(count)).await?;
                let ips = drained.ips.iter().map(|ip| parse_ip(ip)).collect::<Result<Vec<_>>>()?;
                if ips.is_empty() {
                    return Ok(());
                }
                self.ec2_call(Class::Mutating, || {
                    self.ec2.unassign_private_ip_addresses(&target.eni_id, &ips)
                })
                .await?;
                self.ipam.report_ips_unassigned(eni, &drained.ips).await?;
                Ok(())
            }
            warm::Action::DetachEni { eni } => {
                let detaching = self.ipam.plan_eni_detach(eni).await?;
                let eni = detaching
                    .eni
                    .ok_or_else(|| ExecError::View("PlanEniDetach answered no ENI".to_owned()))?;
                self.finish_detach(&eni, view).await
            }
        }
    }

    /// Creates the planned ENI (ClientToken = the intent token) and attaches it.
    async fn create_and_attach(&self, spec: &PlanSpec) -> Result<()> {
        let request = CreateEni {
            subnet_id: spec.subnet_id.clone(),
            description: spec.description.clone(),
            security_groups: spec.security_groups.clone(),
            primary_ip: spec.primary_ip,
            secondary_ips: spec.secondary_ips.clone(),
            interface_type: InterfaceType::Interface,
            tags: spec.tags.clone(),
            client_token: spec.token.clone(),
        };
        let created = match self
            .ec2_call(Class::Mutating, || self.ec2.create_network_interface(&request))
            .await
        {
            Ok(created) => created,
            // Unknown outcome: the next step's intents reconcile finds it (or not) by its tags. A
            // mismatch under our own token means an ENI was made under it: the same.
            Err(error) if error.is_retryable() || error.code == "IdempotentParameterMismatch" => {
                return Err(error.into());
            }
            Err(error) => {
                let mut all = vec![spec.primary_ip];
                all.extend(&spec.secondary_ips);
                tracing::warn!(%error, eni_ref = spec.eni_ref, "EC2 refused the planned ENI");
                self.ipam
                    .report_eni_failed(spec.eni_ref, &failure(&error, &all))
                    .await?;
                return Err(error.into());
            }
        };
        self.attach_and_report(spec, &created).await
    }

    /// Attaches a created ENI at the planned index, then configures and reports it. An attach EC2
    /// refuses deletes the ENI and fails the plan, so that nothing leaks.
    async fn attach_and_report(&self, spec: &PlanSpec, created: &NetworkInterface) -> Result<()> {
        let instance = self.config.scope.instance_id.clone();
        let attached = self
            .ec2_call(Class::Mutating, || {
                self.ec2
                    .attach_network_interface(&created.eni_id, &instance, spec.device_index)
            })
            .await;
        let attachment_id = match attached {
            Ok(id) => id,
            Err(error) if error.is_retryable() => return Err(error.into()),
            Err(error) => {
                tracing::warn!(%error, eni = %created.eni_id, "EC2 refused the attach; deleting the ENI");
                match self
                    .ec2_call(Class::Mutating, || self.ec2.delete_network_interface(&created.eni_id))
                    .await
                {
                    Ok(()) => {}
                    Err(e) if e.kind == Ec2ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                self.ipam
                    .report_eni_failed(spec.eni_ref, &Failure::from(&error))
                    .await?;
                return Err(error.into());
            }
        };
        self.configure_and_report(spec, created, &attachment_id).await
    }

    /// Waits for the ENI's link, configures its table, reports it attached.
    async fn configure_and_report(&self, spec: &PlanSpec, eni: &NetworkInterface, attachment_id: &str) -> Result<()> {
        self.host.wait_for_link(&eni.mac, self.config.link_timeout).await?;
        self.host
            .configure_eni(&EniLink {
                mac: eni.mac.clone(),
                device_index: u32::from(spec.device_index),
                primary_ip: spec.primary_ip,
                prefix_len: spec.subnet.prefix(),
                gateway: spec.gateway,
            })
            .await?;
        self.ipam
            .report_eni_attached(spec.eni_ref, &eni.eni_id, &eni.mac, attachment_id)
            .await?;
        tracing::info!(eni = %eni.eni_id, eni_ref = spec.eni_ref, device_index = spec.device_index, "ENI attached");
        Ok(())
    }

    // ── the host ────────────────────────────────────────────────────────────────────────────

    /// Configures one attached ENI's link and table when they are not as they should be.
    async fn sync_eni(&self, eni: &pb::Eni, view: &pb::GetNodeResponse) -> Result<bool> {
        let Some(link) = self.eni_link(eni, view).await? else {
            return Ok(false);
        };
        let state = self.host.eni_state(&link.mac).await?;
        let configured = state
            .as_ref()
            .is_some_and(|s| s.up && s.table == Some(link.table()) && s.gateway == Some(link.gateway));
        if configured {
            return Ok(false);
        }
        if state.is_none() {
            // Attached in EC2 but no link: it may still be appearing; not for long.
            self.host
                .wait_for_link(&link.mac, self.config.link_timeout.min(Duration::from_secs(5)))
                .await?;
        }
        self.host.configure_eni(&link).await?;
        Ok(true)
    }

    /// Makes the host match the view: every attached secondary ENI's table, and the pod rules of
    /// exactly the bound leases. Returns how many things it had to fix.
    pub async fn sync_host(&self, view: &pb::GetNodeResponse) -> Result<u32> {
        let mut fixes = 0;
        for eni in &view.enis {
            if eni.state() != pb::EniState::Attached || eni.kind() != pb::EniKind::Secondary {
                continue;
            }
            // One ENI that cannot be configured (its link gone, its subnet unknown) is logged and
            // skipped: the other ENIs and the pods' rules below do not wait for it.
            match self.sync_eni(eni, view).await {
                Ok(fixed) => fixes += u32::from(fixed),
                Err(error) => {
                    tracing::warn!(%error, eni = %eni.eni_id, "the ENI's host configuration could not be checked")
                }
            }
        }
        // Under the lock, with a view read under it: a bind or release in progress finishes
        // first, so the comparison below sees it.
        let _guard = self.host_lock.lock().await;
        let view = self.ipam.get_node().await?;
        let wanted = wanted_rules(&view)?;
        let present: BTreeMap<Ipv4Addr, u32> = self
            .host
            .pod_rules()
            .await?
            .into_iter()
            .map(|r| (r.ip, r.table))
            .collect();
        for (ip, table) in &wanted {
            if present.get(ip) != Some(table) {
                self.host.add_pod_rules(&PodRules { ip: *ip, table: *table }).await?;
                fixes += 1;
            }
        }
        for ip in present.keys().filter(|ip| !wanted.contains_key(ip)) {
            self.host.del_pod_rules(*ip).await?;
            fixes += 1;
        }
        Ok(fixes)
    }

    /// The subnet of an ENI: the node's subnet config when it is that subnet, else EC2's answer
    /// (cached).
    async fn subnet_of(&self, eni: &pb::Eni, view: &pb::GetNodeResponse) -> Result<Ipv4Cidr> {
        if let Some(config) = view.subnet_config.as_ref().filter(|c| c.subnet_id == eni.subnet_id) {
            return parse_cidr(&config.subnet_cidr);
        }
        if let Some(cidr) = self
            .subnets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&eni.subnet_id)
        {
            return Ok(*cidr);
        }
        let ids = vec![eni.subnet_id.clone()];
        let found = self
            .ec2_call(Class::Describe, || self.ec2.describe_subnets(&ids))
            .await?;
        let subnet = found.iter().find(|s| s.subnet_id == eni.subnet_id).ok_or_else(|| {
            ExecError::View(format!(
                "EC2 does not know subnet {} of ENI {}",
                eni.subnet_id, eni.eni_id
            ))
        })?;
        let cidr = parse_cidr(&subnet.cidr)?;
        self.subnets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(eni.subnet_id.clone(), cidr);
        Ok(cidr)
    }

    /// A planned ENI of the server's view as a plan to carry out, with its own subnet.
    async fn resumed_plan(&self, eni: &pb::Eni, view: &pb::GetNodeResponse) -> Result<PlanSpec> {
        let subnet = self.subnet_of(eni, view).await?;
        PlanSpec::from_eni(eni, subnet, &self.config.scope)
    }

    /// The host link of an attached (or detaching) secondary ENI; None without a MAC.
    async fn eni_link(&self, eni: &pb::Eni, view: &pb::GetNodeResponse) -> Result<Option<EniLink>> {
        if eni.mac.is_empty() {
            return Ok(None);
        }
        let subnet = self.subnet_of(eni, view).await?;
        Ok(Some(EniLink {
            mac: eni.mac.to_ascii_lowercase(),
            device_index: eni.device_index,
            primary_ip: parse_ip(&eni.primary_ip)?,
            prefix_len: subnet.prefix(),
            gateway: subnet
                .aws_gateway()
                .ok_or_else(|| ExecError::View(format!("subnet {subnet} has no gateway")))?,
        }))
    }

    // ── EC2 ─────────────────────────────────────────────────────────────────────────────────

    /// One EC2 call under the cluster-wide budget; a throttled call (not carried out) is retried
    /// after a backoff, each time with a new budget token.
    async fn ec2_call<T, F, Fut>(&self, class: Class, call: F) -> Result<T, Ec2Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Ec2Error>>,
    {
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            if let Err(error) = self.acquire(class, 1).await {
                return Err(Ec2Error {
                    operation: "AcquireEc2Budget",
                    kind: Ec2ErrorKind::Unavailable,
                    code: "BudgetUnavailable".to_owned(),
                    message: error.to_string(),
                });
            }
            match call().await {
                Err(error) if error.kind == Ec2ErrorKind::Throttled && attempt < self.config.throttle_retries => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, ?backoff, "EC2 throttled the call; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                result => return result,
            }
        }
    }

    /// Waits for `calls` tokens of the budget, asking again after the server's retry-after.
    async fn acquire(&self, class: Class, calls: u32) -> Result<()> {
        let started = tokio::time::Instant::now();
        let mut wanted = calls;
        while wanted > 0 {
            let grant = self.ipam.acquire_ec2_budget(class.pb(), wanted).await?;
            wanted = wanted.saturating_sub(grant.granted);
            if wanted == 0 {
                break;
            }
            let wait = Duration::from_millis(grant.retry_after_ms.max(20));
            if started.elapsed() + wait > self.config.ec2_wait {
                return Err(ExecError::Budget {
                    class: class.name(),
                    calls,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    async fn describe_maybe(&self, eni_id: &str) -> Result<Option<NetworkInterface>> {
        let filter = EniFilter {
            eni_ids: vec![eni_id.to_owned()],
            ..EniFilter::default()
        };
        match self
            .ec2_call(Class::Describe, || self.ec2.describe_network_interfaces(&filter))
            .await
        {
            Ok(found) => Ok(found.into_iter().find(|e| e.eni_id == eni_id)),
            Err(e) if e.kind == Ec2ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn describe_one(&self, eni_id: &str) -> Result<NetworkInterface> {
        self.describe_maybe(eni_id).await?.ok_or_else(|| {
            ExecError::Ec2(Ec2Error {
                operation: "DescribeNetworkInterfaces",
                kind: Ec2ErrorKind::NotFound,
                code: "InvalidNetworkInterfaceID.NotFound".to_owned(),
                message: format!("EC2 does not know {eni_id}"),
            })
        })
    }

    async fn wait_detached(&self, eni_id: &str) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            match self.describe_maybe(eni_id).await? {
                None => return Ok(()),
                Some(eni) if eni.attachment.is_none() => return Ok(()),
                Some(_) => {}
            }
            if started.elapsed() >= self.config.ec2_wait {
                return Err(ExecError::Timeout {
                    eni_id: eni_id.to_owned(),
                    what: "the detach",
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(self.config.poll).await;
        }
    }
}

/// One in-flight intent's failure does not stop the others (nor the host sync and the planner):
/// it is logged, and the next step tries again. Only a fence (register again) stops the step.
fn tolerate(result: Result<u32>, what: &str) -> Result<u32> {
    match result {
        Ok(n) => Ok(n),
        Err(error @ ExecError::Ipam(IpamError::RegisterAgain { .. } | IpamError::NotRegistered)) => Err(error),
        Err(error) => {
            tracing::warn!(%error, "resolving {what} failed; the next step tries again");
            Ok(0)
        }
    }
}

/// The two budgets.
#[derive(Debug, Clone, Copy)]
enum Class {
    Mutating,
    Describe,
}

impl Class {
    fn pb(self) -> pb::Ec2ApiClass {
        match self {
            Self::Mutating => pb::Ec2ApiClass::Mutating,
            Self::Describe => pb::Ec2ApiClass::Describe,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Mutating => "mutating",
            Self::Describe => "describe",
        }
    }
}

/// A planned secondary ENI, from PlanEni's answer or from the server's view of it.
#[derive(Debug, Clone)]
struct PlanSpec {
    eni_ref: u64,
    token: String,
    device_index: u8,
    subnet_id: String,
    subnet: Ipv4Cidr,
    gateway: Ipv4Addr,
    security_groups: Vec<String>,
    primary_ip: Ipv4Addr,
    secondary_ips: Vec<Ipv4Addr>,
    tags: Vec<Tag>,
    description: String,
}

impl PlanSpec {
    fn from_plan(plan: &pb::PlanEniResponse) -> Result<Self> {
        Ok(Self {
            eni_ref: plan.eni_ref,
            token: plan.intent_token.clone(),
            device_index: u8::try_from(plan.device_index)
                .map_err(|_| ExecError::View(format!("device index {} too large", plan.device_index)))?,
            subnet_id: plan.subnet_id.clone(),
            subnet: parse_cidr(&plan.subnet_cidr)?,
            gateway: parse_ip(&plan.gateway)?,
            security_groups: plan.security_group_ids.clone(),
            primary_ip: parse_ip(&plan.primary_ip)?,
            secondary_ips: plan
                .secondary_ips
                .iter()
                .map(|ip| parse_ip(ip))
                .collect::<Result<_>>()?,
            tags: sorted_tags(plan.tags.iter().map(|(k, v)| Tag::new(k, v)).collect()),
            description: plan.description.clone(),
        })
    }

    /// A plan as the server's view shows it (a restarted agent resuming it), with the tags and
    /// description the server handed out for it (`ipam_core::eni_tags`).
    /// `subnet` is the ENI's own subnet (see [`Executor::subnet_of`]).
    fn from_eni(eni: &pb::Eni, subnet: Ipv4Cidr, scope: &NodeScope) -> Result<Self> {
        let primary_ip = parse_ip(&eni.primary_ip)?;
        let secondary_ips = sorted(
            eni.addresses
                .iter()
                .filter(|a| a.ip != eni.primary_ip)
                .map(|a| parse_ip(&a.ip))
                .collect::<Result<_>>()?,
        );
        let tagging = EniTagging {
            cluster: &scope.cluster,
            node: &scope.node,
            instance_id: &scope.instance_id,
            eni_ref: eni.eni_ref,
            token: &eni.intent_token,
            kind: if eni.kind() == pb::EniKind::Trunk {
                "trunk"
            } else {
                "secondary"
            },
        };
        Ok(Self {
            eni_ref: eni.eni_ref,
            token: eni.intent_token.clone(),
            device_index: u8::try_from(eni.device_index)
                .map_err(|_| ExecError::View(format!("device index {} too large", eni.device_index)))?,
            subnet_id: eni.subnet_id.clone(),
            gateway: subnet
                .aws_gateway()
                .ok_or_else(|| ExecError::View(format!("subnet {subnet} has no gateway")))?,
            subnet,
            security_groups: eni.security_group_ids.clone(),
            primary_ip,
            secondary_ips,
            tags: sorted_tags(tagging.tags().into_iter().map(|(k, v)| Tag::new(k, v)).collect()),
            description: tagging.description(),
        })
    }
}

/// The pod rules the view calls for: every bound lease on a secondary ENI → its ENI's table.
pub fn wanted_rules(view: &pb::GetNodeResponse) -> Result<BTreeMap<Ipv4Addr, u32>> {
    let tables: BTreeMap<u64, u32> = view
        .enis
        .iter()
        .filter(|e| e.kind() == pb::EniKind::Secondary)
        .map(|e| (e.eni_ref, crate::host::eni_table(e.device_index)))
        .collect();
    let mut wanted = BTreeMap::new();
    for lease in view.leases.iter().filter(|l| l.state() == pb::LeaseState::Bound) {
        if let Some(table) = tables.get(&lease.eni_ref) {
            wanted.insert(parse_ip(&lease.ip)?, *table);
        }
    }
    Ok(wanted)
}

/// A create request is built the same way from a fresh plan and from the server's view of it (a
/// retry under the same ClientToken must be the same request, or EC2 answers a mismatch).
fn sorted_tags(mut tags: Vec<Tag>) -> Vec<Tag> {
    tags.sort();
    tags
}

fn sorted(mut ips: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    ips.sort();
    ips
}

fn find_eni(view: &pb::GetNodeResponse, eni_ref: u64) -> Result<&pb::Eni> {
    view.enis
        .iter()
        .find(|e| e.eni_ref == eni_ref)
        .ok_or_else(|| ExecError::View(format!("no ENI {eni_ref}")))
}

/// The failure report of an EC2 refusal; for `InvalidIPAddress.InUse`, the planned addresses its
/// message names (EC2 names the address in use), or all of them when it names none.
fn failure(error: &Ec2Error, planned: &[Ipv4Addr]) -> Failure {
    let mut report = Failure::from(error);
    if error.kind == Ec2ErrorKind::AddressInUse {
        let named: BTreeSet<Ipv4Addr> = error
            .message
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|word| word.parse().ok())
            .collect();
        report.in_use = planned.iter().copied().filter(|ip| named.contains(ip)).collect();
        if report.in_use.is_empty() {
            report.in_use = planned.to_vec();
        }
    }
    report
}

fn parse_ip(ip: &str) -> Result<Ipv4Addr> {
    ip.parse()
        .map_err(|_| ExecError::View(format!("{ip:?} is not an IPv4 address")))
}

fn parse_cidr(cidr: &str) -> Result<Ipv4Cidr> {
    cidr.parse()
        .map_err(|e| ExecError::View(format!("{cidr:?} is not a CIDR: {e}")))
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

trait HasIp {
    fn has_ip(&self, ip: Ipv4Addr) -> bool;
}

impl HasIp for NetworkInterface {
    fn has_ip(&self, ip: Ipv4Addr) -> bool {
        self.primary_ip == ip || self.secondary_ips.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: Ec2ErrorKind, message: &str) -> Ec2Error {
        Ec2Error {
            operation: "AssignPrivateIpAddresses",
            kind,
            code: "InvalidIPAddress.InUse".to_owned(),
            message: message.to_owned(),
        }
    }

    #[test]
    fn an_address_in_use_is_taken_from_ec2s_message() {
        let planned = [Ipv4Addr::new(100, 64, 1, 5), Ipv4Addr::new(100, 64, 1, 6)];
        let named = failure(
            &error(Ec2ErrorKind::AddressInUse, "Address 100.64.1.6 is in use."),
            &planned,
        );
        assert_eq!(named.in_use, vec![Ipv4Addr::new(100, 64, 1, 6)]);
        let unnamed = failure(&error(Ec2ErrorKind::AddressInUse, "in use"), &planned);
        assert_eq!(unnamed.in_use, planned.to_vec());
        let other = failure(&error(Ec2ErrorKind::InvalidRequest, "100.64.1.5 bad"), &planned);
        assert!(other.in_use.is_empty());
    }
}
