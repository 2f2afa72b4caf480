//! `ipam.v1.AgentService`: what the node agents call. Each rpc checks its protobuf input
//! (`pb_impl`, INVALID_ARGUMENT naming the field), proposes one domain command as
//! `Actor::Agent(node)` through the [`Replica`] (which forwards to the leader), and builds its
//! answer from the domain's reply plus, where the reply does not carry everything the protocol
//! promises (the ENI as recorded, the subnet's CIDR and gateway), a read of the applied state.
//!
//! ```text
//!   request ──pb_impl──▶ Write { request_id, body } ──Replica::write──▶ Reply ─┐
//!                                                                              ├─▶ response
//!                               read_visible(|state| the write's effect) ──────┘
//! ```
//!
//! A read after a write waits until this replica has applied the write: on the leader that is at
//! once (a write returns once applied there); on a follower that forwarded it, a few milliseconds.
//! `AcquireEc2Budget` is answered by the leader alone, from [`Ec2Budget`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipam_core::CommandBody;
use ipam_core::DomainError;
use ipam_core::Reply;
use ipam_core::command::AgentRef;
use ipam_core::decide::EniPlan;
use ipam_core::ids::Actor;
use ipam_core::state::Eni;
use ipam_core::state::EniKind;
use ipam_core::state::EniState;
use ipam_core::state::Slot;
use ipam_core::state::State;
use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::agent_service_server::AgentService;
use tokio::time::Instant;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::grpc::budget::Ec2Budget;
use crate::grpc::status::refusal_status;
use crate::grpc::status::replica_status;
use crate::metrics::BindResult;
use crate::metrics::Metrics;
use crate::pb_impl::Write;
use crate::pb_impl::ec2_budget;
use crate::pb_impl::eni;
use crate::pb_impl::eni::Drain;
use crate::pb_impl::eni::PlanContext;
use crate::pb_impl::field;
use crate::pb_impl::lease;
use crate::pb_impl::node;
use crate::pb_impl::subnet_config::subnet_config_to_pb;
use crate::pb_impl::time;
use crate::raft::Refusal;
use crate::raft::state_machine::Applied;
use crate::replica::Consistency;
use crate::replica::Replica;
use crate::replica::ReplicaError;

/// How long an answer waits for this replica to apply a write it forwarded to the leader.
const VISIBLE_WITHIN: Duration = Duration::from_secs(3);
/// How often it looks while waiting.
const VISIBLE_POLL: Duration = Duration::from_millis(5);

/// `AgentService` for one replica.
#[derive(Debug, Clone)]
pub struct AgentGrpc {
    replica: Replica,
    budget: Ec2Budget,
    metrics: Option<Metrics>,
}

impl AgentGrpc {
    /// Serves `replica` with the default EC2 budget ([`crate::grpc::budget::BudgetConfig`]'s
    /// defaults).
    pub fn new(replica: Replica) -> Self {
        Self::with_budget(replica, Ec2Budget::default())
    }

    /// Serves `replica` with `budget` as the cluster's EC2 call budget.
    pub fn with_budget(replica: Replica, budget: Ec2Budget) -> Self {
        Self {
            replica,
            budget,
            metrics: None,
        }
    }

    /// Counts refused binds in `metrics` (`ipam_binds_total{result="refused"}`; committed binds
    /// are counted from the ledger, on every replica).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn write(&self, node: &str, write: Write) -> Result<Reply, Status> {
        self.replica
            .write(Actor::Agent(node.to_owned()), write.request_id, write.body)
            .await
            .map_err(replica_status)
    }

    /// Reads what a write of this replica's just did, once it is applied here.
    async fn visible<R>(&self, rpc: &'static str, read: impl Fn(&State) -> Option<R>) -> Result<R, Status> {
        read_visible(&self.replica, rpc, read).await
    }

    /// The plan's context for its tags and answer: the node's instance, the cluster's token
    /// prefix, the subnet's CIDR.
    async fn plan_context<R>(
        &self,
        rpc: &'static str,
        node: &str,
        plan: &EniPlan,
        answer: impl Fn(&State, &PlanContext<'_>) -> Option<R>,
    ) -> Result<R, Status> {
        self.visible(rpc, |state| {
            let n = state.nodes.get(node)?;
            let ctx = PlanContext {
                node,
                instance_id: &n.spec.instance_id,
                cluster: &state.settings.token_prefix,
                subnet_cidr: state.subnets.get(&plan.subnet_id)?.alloc.cidr(),
            };
            answer(state, &ctx)
        })
        .await
    }

    /// The ENI `eni` of `node` as recorded, once `done` holds for it.
    async fn eni_after(
        &self,
        rpc: &'static str,
        node: &str,
        eni: u64,
        done: impl Fn(&Eni) -> bool,
    ) -> Result<pb::Eni, Status> {
        self.visible(rpc, |state| {
            let e = state.nodes.get(node)?.enis.get(&eni)?;
            done(e).then(|| eni::eni_to_pb(e))
        })
        .await
    }

    /// The ENI `eni` of `node`, read before a write that needs something of it.
    async fn eni_before<R>(&self, node: &str, eni: u64, read: impl Fn(&Eni) -> R) -> Result<Option<R>, Status> {
        read_fresh(&self.replica, |applied| {
            applied.state.nodes.get(node).and_then(|n| n.enis.get(&eni)).map(&read)
        })
        .await
    }
}

/// Reads the applied state as freshly as this replica can: linearizable on the leader, what it
/// has applied on a follower (which forwards writes rather than refusing them, and so answers
/// their follow-up reads too).
pub(crate) async fn read_fresh<R>(replica: &Replica, read: impl Fn(&Applied) -> R) -> Result<R, Status> {
    match replica.read(Consistency::Linearizable, &read).await {
        Err(ReplicaError::NotLeader { .. }) => replica.read(Consistency::Stale, &read).await.map_err(replica_status),
        other => other.map_err(replica_status),
    }
}

/// Waits until `read` finds the effect of a write in this replica's applied state, for at most
/// [`VISIBLE_WITHIN`].
pub(crate) async fn read_visible<R>(
    replica: &Replica,
    rpc: &'static str,
    read: impl Fn(&State) -> Option<R>,
) -> Result<R, Status> {
    let deadline = Instant::now() + VISIBLE_WITHIN;
    loop {
        let found = replica
            .read(Consistency::Stale, |applied| read(&applied.state))
            .await
            .map_err(replica_status)?;
        if let Some(found) = found {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(replica_status(ReplicaError::Unavailable(format!(
                "{rpc} succeeded, but this replica has not applied it within {VISIBLE_WITHIN:?}; \
                 read the result from the leader"
            ))));
        }
        tokio::time::sleep(VISIBLE_POLL).await;
    }
}

/// The domain answered a command with a reply of another command: a bug, not the caller's fault.
pub(crate) fn unexpected(rpc: &'static str, reply: &Reply) -> Status {
    let kind = match reply {
        Reply::Done => "Done",
        Reply::Registered { .. } => "Registered",
        Reply::Heartbeat { .. } => "Heartbeat",
        Reply::EniPlanned(_) => "EniPlanned",
        Reply::IpsPlanned { .. } => "IpsPlanned",
        Reply::IpsDraining { .. } => "IpsDraining",
        Reply::EniDetaching { .. } => "EniDetaching",
        Reply::Bound(_) => "Bound",
        Reply::Released(_) => "Released",
        Reply::Ticked { .. } => "Ticked",
    };
    tracing::error!(rpc, reply = kind, "the domain answered with a reply of another command");
    Status::internal(format!("{rpc}: the server answered with an unexpected {kind} reply"))
}

/// Checks that `agent` speaks for the node's current, live registration; the refusal is the one
/// the domain would give (NOT_FOUND, FAILED_PRECONDITION).
pub(crate) fn live_agent(state: &State, agent: &AgentRef) -> Result<(), DomainError> {
    state.live_agent(agent).map(|_| ())
}

/// Addresses an ENI's removal returns to its subnet now: its primary and every slot but the
/// cooling ones (those go back when their cooldown ends).
fn returned_on_removal(e: &Eni) -> u32 {
    let mut now: BTreeSet<Ipv4Addr> = e
        .slots
        .iter()
        .filter(|(_, slot)| !matches!(slot, Slot::Cooling { .. }))
        .map(|(ip, _)| *ip)
        .collect();
    if !matches!(e.slots.get(&e.primary_ip), Some(Slot::Cooling { .. })) {
        now.insert(e.primary_ip);
    }
    u32::try_from(now.len()).unwrap_or(u32::MAX)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, request_id = %request.get_ref().request_id))]
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let req = request.into_inner();
        let write = node::register_node(&req)?;
        let reply = self.write(&req.node, write).await?;
        let Reply::Registered { epoch, .. } = reply else {
            return Err(unexpected("RegisterNode", &reply));
        };
        let response = self
            .visible("RegisterNode", |state| {
                let n = state.nodes.get(&req.node).filter(|n| n.epoch >= epoch)?;
                Some(pb::RegisterNodeResponse {
                    epoch,
                    node: Some(node::node_to_pb(n)),
                    subnet_config: state.subnet_configs.get(&n.spec.subnet_config).map(subnet_config_to_pb),
                    heartbeat_ttl_ms: state.settings.heartbeat_ttl_ms,
                    ip_cooldown_ms: state.settings.ip_cooldown_ms,
                    branch_cooldown_ms: state.settings.branch_cooldown_ms,
                    cluster_tag: state.settings.token_prefix.clone(),
                })
            })
            .await?;
        tracing::info!(epoch, "node registered");
        Ok(Response::new(response))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = %request.get_ref().node, epoch = request.get_ref().epoch))]
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let write = node::heartbeat(&req)?;
        match self.write(&req.node, write).await? {
            Reply::Heartbeat { deadline } => Ok(Response::new(pb::HeartbeatResponse {
                heartbeat_deadline_unix_ms: time::to_unix_ms(deadline),
            })),
            other => Err(unexpected("Heartbeat", &other)),
        }
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node))]
    async fn get_node(&self, request: Request<pb::GetNodeRequest>) -> Result<Response<pb::GetNodeResponse>, Status> {
        let req = request.into_inner();
        let name = field::required("node", &req.node)?;
        let response = self
            .replica
            .read(Consistency::Linearizable, |applied| {
                let state = &applied.state;
                let n = state.nodes.get(&name)?;
                Some(pb::GetNodeResponse {
                    node: Some(node::node_to_pb(n)),
                    subnet_config: state.subnet_configs.get(&n.spec.subnet_config).map(subnet_config_to_pb),
                    enis: n.enis.values().map(eni::eni_to_pb).collect(),
                    leases: n.leases.values().map(|l| lease::lease_to_pb(state, l)).collect(),
                })
            })
            .await
            .map_err(replica_status)?;
        response
            .map(Response::new)
            .ok_or_else(|| refusal_status(Refusal::from(&DomainError::NodeNotFound { node: name })))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, request_id = %request.get_ref().request_id))]
    async fn plan_eni(&self, request: Request<pb::PlanEniRequest>) -> Result<Response<pb::PlanEniResponse>, Status> {
        let req = request.into_inner();
        let write = eni::plan_eni(&req)?;
        let reply = self.write(&req.node, write).await?;
        let Reply::EniPlanned(plan) = reply else {
            return Err(unexpected("PlanEni", &reply));
        };
        let response = self
            .plan_context("PlanEni", &req.node, &plan, |_, ctx| {
                Some(eni::plan_eni_response(&plan, ctx))
            })
            .await?;
        tracing::info!(eni_ref = plan.eni, token = %plan.token, "ENI planned");
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn report_eni_attached(
        &self,
        request: Request<pb::ReportEniAttachedRequest>,
    ) -> Result<Response<pb::ReportEniAttachedResponse>, Status> {
        let req = request.into_inner();
        let write = eni::report_eni_attached(&req)?;
        self.write(&req.node, write).await?;
        let eni = self
            .eni_after("ReportEniAttached", &req.node, req.eni_ref, |e| {
                e.state != EniState::Planned
            })
            .await?;
        Ok(Response::new(pb::ReportEniAttachedResponse { eni: Some(eni) }))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn report_eni_failed(
        &self,
        request: Request<pb::ReportEniFailedRequest>,
    ) -> Result<Response<pb::ReportEniFailedResponse>, Status> {
        let req = request.into_inner();
        let write = eni::report_eni_failed(&req)?;
        let planned = self
            .eni_before(&req.node, req.eni_ref, |e| {
                let mut all: BTreeSet<Ipv4Addr> = e.slots.keys().copied().collect();
                all.insert(e.primary_ip);
                all.len()
            })
            .await?;
        let quarantined: BTreeSet<Ipv4Addr> = match &write.body {
            CommandBody::ReportEniFailed { in_use, .. } => in_use.iter().copied().collect(),
            _ => BTreeSet::new(),
        };
        self.write(&req.node, write).await?;
        Ok(Response::new(pb::ReportEniFailedResponse {
            returned: count(planned.unwrap_or(0).saturating_sub(quarantined.len())),
            quarantined_ips: quarantined.iter().map(Ipv4Addr::to_string).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn plan_ips(&self, request: Request<pb::PlanIpsRequest>) -> Result<Response<pb::PlanIpsResponse>, Status> {
        let req = request.into_inner();
        let write = eni::plan_ips(&req)?;
        match self.write(&req.node, write).await? {
            Reply::IpsPlanned { eni: eni_ref, ips } => Ok(Response::new(pb::PlanIpsResponse {
                intent_token: eni::ips_intent_token(eni_ref, &ips),
                ips: ips.iter().map(Ipv4Addr::to_string).collect(),
            })),
            other => Err(unexpected("PlanIps", &other)),
        }
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn report_ips_assigned(
        &self,
        request: Request<pb::ReportIpsAssignedRequest>,
    ) -> Result<Response<pb::ReportIpsAssignedResponse>, Status> {
        let req = request.into_inner();
        let split = eni::report_ips_assigned(&req)?;
        let reported: Vec<Ipv4Addr> = split.assigned.iter().chain(&split.unassigned).copied().collect();
        // Only what is still pending: a retry of a half-done report finishes it; a report of a
        // finished plan is refused as the domain would refuse it. Only the leader can tell (a
        // follower may not have applied the plan yet): elsewhere everything goes to the leader,
        // whose `decide` judges it.
        let pending = match self
            .replica
            .read(Consistency::Linearizable, |applied| {
                let e = applied.state.nodes.get(&req.node)?.enis.get(&split.eni)?;
                Some(
                    reported
                        .iter()
                        .filter(|ip| e.slots.get(ip) == Some(&Slot::Pending))
                        .copied()
                        .collect::<BTreeSet<Ipv4Addr>>(),
                )
            })
            .await
        {
            Ok(pending) => pending,
            Err(ReplicaError::NotLeader { .. }) => None,
            Err(other) => return Err(replica_status(other)),
        };
        let split = match pending {
            Some(pending) if pending.is_empty() => {
                return Err(refusal_status(Refusal {
                    code: "FailedPrecondition".to_owned(),
                    message: format!(
                        "intent token {} is finished: none of its addresses is pending on ENI {}",
                        req.intent_token, split.eni
                    ),
                    exhausted: None,
                    register_again: None,
                }));
            }
            Some(pending) => split.still_pending(|ip| pending.contains(ip)),
            None => split,
        };
        for write in split.commands() {
            self.write(&req.node, write).await?;
        }
        let eni = self
            .eni_after("ReportIpsAssigned", &req.node, split.eni, |e| {
                reported.iter().all(|ip| e.slots.get(ip) != Some(&Slot::Pending))
            })
            .await?;
        Ok(Response::new(pb::ReportIpsAssignedResponse { eni: Some(eni) }))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn report_ips_failed(
        &self,
        request: Request<pb::ReportIpsFailedRequest>,
    ) -> Result<Response<pb::ReportIpsFailedResponse>, Status> {
        let req = request.into_inner();
        let write = eni::report_ips_failed(&req)?;
        let (planned, quarantined): (BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>) = match &write.body {
            CommandBody::ReportIpsFailed { ips, in_use, .. } => {
                (ips.iter().copied().collect(), in_use.iter().copied().collect())
            }
            _ => Default::default(),
        };
        self.write(&req.node, write).await?;
        Ok(Response::new(pb::ReportIpsFailedResponse {
            returned: count(planned.difference(&quarantined).count()),
            quarantined_ips: quarantined.iter().map(Ipv4Addr::to_string).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn drain_ips(&self, request: Request<pb::DrainIpsRequest>) -> Result<Response<pb::DrainIpsResponse>, Status> {
        let req = request.into_inner();
        let write = match eni::drain_ips(&req)? {
            Drain::Count(write) => *write,
            Drain::Ips { .. } => {
                return Err(Status::unimplemented(
                    "DrainIps with explicit ips is not supported by this server: the domain drains by \
                     count (it picks the warm addresses); send count instead",
                ));
            }
        };
        match self.write(&req.node, write).await? {
            Reply::IpsDraining { ips, .. } => Ok(Response::new(pb::DrainIpsResponse {
                ips: ips.iter().map(Ipv4Addr::to_string).collect(),
            })),
            other => Err(unexpected("DrainIps", &other)),
        }
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn report_ips_unassigned(
        &self,
        request: Request<pb::ReportIpsUnassignedRequest>,
    ) -> Result<Response<pb::ReportIpsUnassignedResponse>, Status> {
        let req = request.into_inner();
        let write = eni::report_ips_unassigned(&req)?;
        let ips: Vec<Ipv4Addr> = match &write.body {
            CommandBody::ReportIpsUnassigned { ips, .. } => ips.clone(),
            _ => Vec::new(),
        };
        self.write(&req.node, write).await?;
        let eni = self
            .eni_after("ReportIpsUnassigned", &req.node, req.eni_ref, |e| {
                ips.iter().all(|ip| !e.slots.contains_key(ip))
            })
            .await?;
        Ok(Response::new(pb::ReportIpsUnassignedResponse { eni: Some(eni) }))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn plan_eni_detach(
        &self,
        request: Request<pb::PlanEniDetachRequest>,
    ) -> Result<Response<pb::PlanEniDetachResponse>, Status> {
        let req = request.into_inner();
        let write = eni::plan_eni_detach(&req)?;
        let reply = self.write(&req.node, write).await?;
        let Reply::EniDetaching { eni: eni_ref } = reply else {
            return Err(unexpected("PlanEniDetach", &reply));
        };
        let eni = self
            .eni_after("PlanEniDetach", &req.node, eni_ref, |e| e.state == EniState::Detaching)
            .await?;
        Ok(Response::new(pb::PlanEniDetachResponse { eni: Some(eni) }))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn report_eni_detached(
        &self,
        request: Request<pb::ReportEniDetachedRequest>,
    ) -> Result<Response<pb::ReportEniDetachedResponse>, Status> {
        let req = request.into_inner();
        let write = eni::report_eni_detached(&req)?;
        let returned = self.eni_before(&req.node, req.eni_ref, returned_on_removal).await?;
        self.write(&req.node, write).await?;
        Ok(Response::new(pb::ReportEniDetachedResponse {
            returned: returned.unwrap_or(0),
        }))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, request_id = %request.get_ref().request_id))]
    async fn plan_branch_eni(
        &self,
        request: Request<pb::PlanBranchEniRequest>,
    ) -> Result<Response<pb::PlanBranchEniResponse>, Status> {
        let req = request.into_inner();
        let write = eni::plan_branch_eni(&req)?;
        let reply = self.write(&req.node, write).await?;
        let Reply::EniPlanned(plan) = reply else {
            return Err(unexpected("PlanBranchEni", &reply));
        };
        let EniKind::Branch { trunk, .. } = plan.kind else {
            return Err(unexpected("PlanBranchEni", &Reply::EniPlanned(plan)));
        };
        let response = self
            .plan_context("PlanBranchEni", &req.node, &plan, |state, ctx| {
                let trunk = state.nodes.get(&req.node)?.enis.get(&trunk)?;
                let trunk_id = trunk.eni_id.as_deref().unwrap_or_default();
                Some(eni::plan_branch_response(&plan, trunk_id, ctx))
            })
            .await?;
        tracing::info!(eni_ref = plan.eni, vlan = response.vlan_id, "branch ENI planned");
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn report_branch_attached(
        &self,
        request: Request<pb::ReportBranchAttachedRequest>,
    ) -> Result<Response<pb::ReportBranchAttachedResponse>, Status> {
        let req = request.into_inner();
        let write = eni::report_branch_attached(&req)?;
        self.write(&req.node, write).await?;
        let eni = self
            .eni_after("ReportBranchAttached", &req.node, req.eni_ref, |e| {
                e.state != EniState::Planned
            })
            .await?;
        Ok(Response::new(pb::ReportBranchAttachedResponse { eni: Some(eni) }))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, eni_ref = request.get_ref().eni_ref))]
    async fn report_branch_failed(
        &self,
        request: Request<pb::ReportBranchFailedRequest>,
    ) -> Result<Response<pb::ReportBranchFailedResponse>, Status> {
        let req = request.into_inner();
        let (agent, eni_ref) = eni::report_branch_failed_target(&req)?;
        // The planned address, which EC2 may have said is in use. An ENI this replica cannot find
        // goes to the domain as is, which answers NOT_FOUND (or the epoch's refusal).
        let primary = self.eni_before(&agent.node, eni_ref, |e| e.primary_ip).await?;
        let write = eni::report_branch_failed(&req, primary)?;
        self.write(&req.node, write).await?;
        Ok(Response::new(pb::ReportBranchFailedResponse {
            quarantined: req.ip_in_use && primary.is_some(),
        }))
    }

    #[tracing::instrument(
        skip_all,
        fields(
            node = %request.get_ref().node,
            pod = ?request.get_ref().pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)),
            request_id = %request.get_ref().request_id,
        )
    )]
    async fn bind(&self, request: Request<pb::BindRequest>) -> Result<Response<pb::BindResponse>, Status> {
        let req = request.into_inner();
        let write = lease::bind(&req)?;
        let reply = match self
            .replica
            .write(Actor::Agent(req.node.clone()), write.request_id, write.body)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                if let (ReplicaError::Refused(_), Some(metrics)) = (&error, &self.metrics) {
                    metrics.record_bind(BindResult::Refused);
                }
                return Err(replica_status(error));
            }
        };
        let Reply::Bound(bound) = reply else {
            return Err(unexpected("Bind", &reply));
        };
        let response = self
            .visible("Bind", |state| {
                state
                    .nodes
                    .get(&bound.node)?
                    .leases
                    .get(&bound.id)
                    .map(|l| lease::bind_response(state, l))
            })
            .await?;
        tracing::info!(ip = %bound.ip, lease_id = bound.id, "bound");
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, lease_id = request.get_ref().lease_id))]
    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let req = request.into_inner();
        let target = lease::release(&req)?;
        if let (Some(id), Some(attachment)) = (target.lease_id, &target.attachment) {
            let holder = read_fresh(&self.replica, |applied| {
                let l = applied.state.nodes.get(&target.agent.node)?.leases.get(&id)?;
                Some((l.owner.container_id.clone(), l.owner.ifname.clone()))
            })
            .await?;
            if let Some(holder) = holder.filter(|h| h != attachment) {
                return Err(refusal_status(Refusal {
                    code: "FailedPrecondition".to_owned(),
                    message: format!(
                        "lease {id} is bound to attachment {}/{}, not to {}/{}",
                        holder.0, holder.1, attachment.0, attachment.1
                    ),
                    exhausted: None,
                    register_again: None,
                }));
            }
        }
        match self
            .replica
            .write(
                Actor::Agent(req.node.clone()),
                target.write.request_id,
                target.write.body,
            )
            .await
        {
            Ok(Reply::Released(released)) => {
                let Some(first) = released.into_iter().next() else {
                    return Ok(Response::new(pb::ReleaseResponse {
                        released: false,
                        lease: None,
                    }));
                };
                let lease = self
                    .visible("Release", |state| {
                        let live = state.nodes.get(&first.node)?.leases.contains_key(&first.id);
                        (!live).then(|| lease::lease_to_pb(state, &first))
                    })
                    .await?;
                tracing::info!(ip = %lease.ip, lease_id = lease.lease_id, "released");
                Ok(Response::new(pb::ReleaseResponse {
                    released: true,
                    lease: Some(lease),
                }))
            }
            Ok(other) => Err(unexpected("Release", &other)),
            // No live lease matches: idempotent success, unless the agent itself is refused or the
            // lease id is live elsewhere (another node's lease).
            Err(ReplicaError::Refused(refusal)) => {
                let agent = target.agent.clone();
                let by_id = target.lease_id;
                let attachment = target.attachment.clone();
                let already_gone = read_fresh(&self.replica, |applied| {
                    let state = &applied.state;
                    if live_agent(state, &agent).is_err() {
                        return false;
                    }
                    match (by_id, &attachment) {
                        (Some(id), _) => !state.nodes.values().any(|n| n.leases.contains_key(&id)),
                        (None, Some(key)) => state
                            .nodes
                            .get(&agent.node)
                            .is_some_and(|n| !n.attachments.contains_key(key)),
                        (None, None) => false,
                    }
                })
                .await?;
                if already_gone {
                    Ok(Response::new(pb::ReleaseResponse {
                        released: false,
                        lease: None,
                    }))
                } else {
                    Err(refusal_status(refusal))
                }
            }
            Err(other) => Err(replica_status(other)),
        }
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, request_id = %request.get_ref().request_id))]
    async fn gc(&self, request: Request<pb::GcRequest>) -> Result<Response<pb::GcResponse>, Status> {
        let req = request.into_inner();
        let write = lease::gc(&req)?;
        let reply = self.write(&req.node, write).await?;
        let Reply::Released(released) = reply else {
            return Err(unexpected("Gc", &reply));
        };
        let leases = self
            .visible("Gc", |state| {
                let n = state.nodes.get(&req.node)?;
                if released.iter().any(|l| n.leases.contains_key(&l.id)) {
                    return None;
                }
                Some(released.iter().map(|l| lease::lease_to_pb(state, l)).collect())
            })
            .await?;
        tracing::info!(released = released.len(), "garbage collected");
        Ok(Response::new(pb::GcResponse { released: leases }))
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(node = %request.get_ref().node, count = request.get_ref().count, request_id = %request.get_ref().request_id)
    )]
    async fn acquire_ec2_budget(
        &self,
        request: Request<pb::AcquireEc2BudgetRequest>,
    ) -> Result<Response<pb::AcquireEc2BudgetResponse>, Status> {
        let req = ec2_budget::acquire_ec2_budget(request.get_ref())?;
        if !self.replica.is_leader() {
            return Err(replica_status(ReplicaError::NotLeader {
                leader: self.replica.leader().filter(|l| l.id != self.replica.id()),
            }));
        }
        self.replica
            .read(Consistency::Stale, |applied| {
                Ec2Budget::check_agent(&applied.state, &req.agent)
            })
            .await
            .map_err(replica_status)?
            .map_err(|e| refusal_status(e.refusal()))?;
        let grant = self
            .budget
            .acquire(&req.agent.node, &req.request_id, req.class, req.count);
        Ok(Response::new(ec2_budget::grant_to_pb(&grant)))
    }
}
