//! The load generator against an in-process fake of two ipam-server replicas on loopback: one
//! follower that answers UNAVAILABLE with the leader's address, one leader with a toy
//! allocator. Checks leader following, node setup, warm-pool growth on `node-warm`, refusals,
//! and the record of every outcome. No real server, no etcd, no timing assertions.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use ipam_chaos_tests::loadgen;
use ipam_chaos_tests::loadgen::LoadgenConfig;
use ipam_chaos_tests::loadgen::Outcome;
use ipam_chaos_tests::loadgen::Record;
use ipam_chaos_tests::loadgen::RecordOp;
use ipam_chaos_tests::routing::EXHAUSTED_METADATA;
use ipam_chaos_tests::routing::LEADER_METADATA;
use ipam_chaos_tests::routing::RetryPolicy;
use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::admin_service_server::AdminService;
use ipam_proto::ipam::v1::admin_service_server::AdminServiceServer;
use ipam_proto::ipam::v1::agent_service_server::AgentService;
use ipam_proto::ipam::v1::agent_service_server::AgentServiceServer;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// One fake node.
#[derive(Default)]
struct FakeNode {
    epoch: u64,
    limits: pb::NodeLimits,
    /// eni_ref → secondary addresses on it (planned or warm or bound).
    enis: Vec<(u64, usize)>,
    warm: Vec<Ipv4Addr>,
    /// Planned, not yet reported: token → (eni_ref, addresses).
    pending: HashMap<String, (u64, Vec<Ipv4Addr>)>,
    /// lease id → address.
    bound: HashMap<u64, Ipv4Addr>,
}

#[derive(Default)]
struct FakeState {
    index: u64,
    next_ip: u32,
    pools: Vec<String>,
    subnets: Vec<String>,
    settings: pb::Settings,
    nodes: HashMap<String, FakeNode>,
    heartbeats: u64,
}

impl FakeState {
    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn addresses(&mut self, n: usize) -> Vec<Ipv4Addr> {
        (0..n)
            .map(|_| {
                self.next_ip += 1;
                Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 4)) + self.next_ip)
            })
            .collect()
    }

    fn node(&mut self, name: &str, epoch: u64) -> Result<&mut FakeNode, Status> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| Status::not_found(format!("node {name}")))?;
        if node.epoch != epoch {
            return Err(Status::failed_precondition("stale epoch"));
        }
        Ok(node)
    }
}

/// A replica of the fake cluster: the leader serves, a follower points at the leader.
#[derive(Clone)]
struct Fake {
    leader: Option<String>,
    /// Released addresses come back warm at once (true) or stay cooling forever (false).
    recycle: bool,
    state: Arc<Mutex<FakeState>>,
}

impl Fake {
    fn state(&self) -> Result<std::sync::MutexGuard<'_, FakeState>, Status> {
        if let Some(leader) = &self.leader {
            let mut status = Status::unavailable("not the leader");
            let value = MetadataValue::try_from(leader.as_str()).map_err(|_| Status::internal("hint"))?;
            status.metadata_mut().insert(LEADER_METADATA, value);
            return Err(status);
        }
        Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn exhausted(what: &'static str) -> Status {
    let mut status = Status::resource_exhausted(format!("{what} exhausted"));
    status
        .metadata_mut()
        .insert(EXHAUSTED_METADATA, MetadataValue::from_static(what));
    status
}

/// Implements the rpcs the load generator uses; every other rpc is UNIMPLEMENTED.
macro_rules! fake_service {
    ($service:ident, { $($body:tt)* }, [$($method:ident: $req:ident => $resp:ident),* $(,)?]) => {
        #[tonic::async_trait]
        impl $service for Fake {
            $($body)*
            $(
                async fn $method(&self, _request: Request<pb::$req>) -> Result<Response<pb::$resp>, Status> {
                    Err(Status::unimplemented(stringify!($method)))
                }
            )*
        }
    };
}

fake_service!(AdminService, {
    async fn create_pool(&self, request: Request<pb::CreatePoolRequest>) -> Result<Response<pb::CreatePoolResponse>, Status> {
        let cidr = request.into_inner().cidr;
        let mut state = self.state()?;
        if !state.pools.contains(&cidr) {
            state.pools.push(cidr.clone());
        }
        Ok(Response::new(pb::CreatePoolResponse {
            pool: Some(pb::Pool { cidr, created_at_unix_ms: 1 }),
        }))
    }

    async fn upsert_subnet_config(
        &self,
        request: Request<pb::UpsertSubnetConfigRequest>,
    ) -> Result<Response<pb::UpsertSubnetConfigResponse>, Status> {
        let config = request.into_inner().subnet_config.ok_or_else(|| Status::invalid_argument("no config"))?;
        let mut state = self.state()?;
        if state.pools.is_empty() {
            return Err(Status::failed_precondition("no pool"));
        }
        if !state.subnets.contains(&config.name) {
            state.subnets.push(config.name.clone());
        }
        Ok(Response::new(pb::UpsertSubnetConfigResponse { subnet_config: Some(config) }))
    }

    async fn get_settings(&self, _request: Request<pb::GetSettingsRequest>) -> Result<Response<pb::GetSettingsResponse>, Status> {
        let state = self.state()?;
        Ok(Response::new(pb::GetSettingsResponse { settings: Some(state.settings.clone()) }))
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::UpdateSettingsResponse>, Status> {
        let settings = request.into_inner().settings.ok_or_else(|| Status::invalid_argument("no settings"))?;
        let mut state = self.state()?;
        state.settings = settings.clone();
        Ok(Response::new(pb::UpdateSettingsResponse { settings: Some(settings) }))
    }
}, [
    list_pools: ListPoolsRequest => ListPoolsResponse,
    delete_subnet_config: DeleteSubnetConfigRequest => DeleteSubnetConfigResponse,
    list_subnet_configs: ListSubnetConfigsRequest => ListSubnetConfigsResponse,
    upsert_sg_policy: UpsertSgPolicyRequest => UpsertSgPolicyResponse,
    delete_sg_policy: DeleteSgPolicyRequest => DeleteSgPolicyResponse,
    list_sg_policies: ListSgPoliciesRequest => ListSgPoliciesResponse,
    list_nodes: ListNodesRequest => ListNodesResponse,
    remove_node: RemoveNodeRequest => RemoveNodeResponse,
    list_enis: ListEnisRequest => ListEnisResponse,
    list_leases: ListLeasesRequest => ListLeasesResponse,
    release_lease: ReleaseLeaseRequest => ReleaseLeaseResponse,
    unquarantine: UnquarantineRequest => UnquarantineResponse,
    stats: StatsRequest => StatsResponse,
    cluster_init: ClusterInitRequest => ClusterInitResponse,
    add_learner: AddLearnerRequest => AddLearnerResponse,
    change_membership: ChangeMembershipRequest => ChangeMembershipResponse,
    cluster_status: ClusterStatusRequest => ClusterStatusResponse,
]);

fake_service!(AgentService, {
    async fn register_node(&self, request: Request<pb::RegisterNodeRequest>) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        if !state.subnets.contains(&request.subnet_config) {
            return Err(Status::not_found("subnet config"));
        }
        let epoch = state.next_index();
        let node = FakeNode {
            epoch,
            limits: request.limits.unwrap_or_default(),
            ..FakeNode::default()
        };
        state.nodes.insert(request.node, node);
        Ok(Response::new(pb::RegisterNodeResponse {
            epoch,
            heartbeat_ttl_ms: 600,
            ip_cooldown_ms: state.settings.ip_cooldown_ms,
            ..Default::default()
        }))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        state.node(&request.node, request.epoch)?;
        state.heartbeats += 1;
        Ok(Response::new(pb::HeartbeatResponse { heartbeat_deadline_unix_ms: 1 }))
    }

    async fn plan_eni(&self, request: Request<pb::PlanEniRequest>) -> Result<Response<pb::PlanEniResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        let eni_ref = state.next_index();
        let ips = state.addresses(request.ip_count as usize);
        let node = state.node(&request.node, request.epoch)?;
        if node.enis.len() + 1 >= node.limits.max_enis as usize {
            return Err(exhausted("node-limit"));
        }
        node.enis.push((eni_ref, ips.len()));
        let token = format!("ipam-{eni_ref}");
        node.pending.insert(token.clone(), (eni_ref, ips.clone()));
        Ok(Response::new(pb::PlanEniResponse {
            eni_ref,
            secondary_ips: ips.iter().map(ToString::to_string).collect(),
            intent_token: token,
            ..Default::default()
        }))
    }

    async fn report_eni_attached(
        &self,
        request: Request<pb::ReportEniAttachedRequest>,
    ) -> Result<Response<pb::ReportEniAttachedResponse>, Status> {
        let request = request.into_inner();
        if !request.eni_id.starts_with("eni-") || request.mac.split(':').count() != 6 {
            return Err(Status::invalid_argument("eni id or mac"));
        }
        let mut state = self.state()?;
        let node = state.node(&request.node, request.epoch)?;
        let (_, ips) = node
            .pending
            .remove(&format!("ipam-{}", request.eni_ref))
            .ok_or_else(|| Status::failed_precondition("not planned"))?;
        node.warm.extend(ips);
        Ok(Response::new(pb::ReportEniAttachedResponse::default()))
    }

    async fn plan_ips(&self, request: Request<pb::PlanIpsRequest>) -> Result<Response<pb::PlanIpsResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        let room = {
            let node = state.node(&request.node, request.epoch)?;
            let max = node.limits.ipv4_per_eni as usize - 1;
            let on_eni = node.enis.iter().find(|(r, _)| *r == request.eni_ref).map(|(_, n)| *n);
            let on_eni = on_eni.ok_or_else(|| Status::not_found("eni"))?;
            max.saturating_sub(on_eni).min(request.count as usize)
        };
        let ips = state.addresses(room);
        let token = format!("ips-{}", state.next_index());
        let node = state.node(&request.node, request.epoch)?;
        for eni in node.enis.iter_mut().filter(|(r, _)| *r == request.eni_ref) {
            eni.1 += ips.len();
        }
        node.pending.insert(token.clone(), (request.eni_ref, ips.clone()));
        Ok(Response::new(pb::PlanIpsResponse {
            ips: ips.iter().map(ToString::to_string).collect(),
            intent_token: token,
        }))
    }

    async fn report_ips_assigned(
        &self,
        request: Request<pb::ReportIpsAssignedRequest>,
    ) -> Result<Response<pb::ReportIpsAssignedResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        let node = state.node(&request.node, request.epoch)?;
        let (_, ips) = node
            .pending
            .remove(&request.intent_token)
            .ok_or_else(|| Status::failed_precondition("unknown token"))?;
        node.warm.extend(ips);
        Ok(Response::new(pb::ReportIpsAssignedResponse::default()))
    }

    async fn bind(&self, request: Request<pb::BindRequest>) -> Result<Response<pb::BindResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        let lease_id = state.next_index();
        let node = state.node(&request.node, request.epoch)?;
        let ip = node.warm.pop().ok_or_else(|| exhausted("node-warm"))?;
        node.bound.insert(lease_id, ip);
        Ok(Response::new(pb::BindResponse {
            lease: Some(pb::Lease {
                lease_id,
                ip: ip.to_string(),
                node: request.node,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let request = request.into_inner();
        let recycle = self.recycle;
        let mut state = self.state()?;
        let node = state.node(&request.node, request.epoch)?;
        let released = match node.bound.remove(&request.lease_id) {
            Some(ip) => {
                if recycle {
                    node.warm.push(ip);
                }
                true
            }
            None => false,
        };
        Ok(Response::new(pb::ReleaseResponse { released, lease: None }))
    }
}, [
    get_node: GetNodeRequest => GetNodeResponse,
    report_eni_failed: ReportEniFailedRequest => ReportEniFailedResponse,
    report_ips_failed: ReportIpsFailedRequest => ReportIpsFailedResponse,
    drain_ips: DrainIpsRequest => DrainIpsResponse,
    report_ips_unassigned: ReportIpsUnassignedRequest => ReportIpsUnassignedResponse,
    plan_eni_detach: PlanEniDetachRequest => PlanEniDetachResponse,
    report_eni_detached: ReportEniDetachedRequest => ReportEniDetachedResponse,
    plan_branch_eni: PlanBranchEniRequest => PlanBranchEniResponse,
    report_branch_attached: ReportBranchAttachedRequest => ReportBranchAttachedResponse,
    report_branch_failed: ReportBranchFailedRequest => ReportBranchFailedResponse,
    gc: GcRequest => GcResponse,
    acquire_ec2_budget: AcquireEc2BudgetRequest => AcquireEc2BudgetResponse,
]);

/// Serves `fake` on `incoming` in the background.
fn serve(fake: Fake, incoming: TcpIncoming) {
    tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(AgentServiceServer::new(fake.clone()))
            .add_service(AdminServiceServer::new(fake))
            .serve_with_incoming(incoming)
            .await;
    });
}

fn listener() -> (TcpIncoming, SocketAddr) {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("address")).expect("bind a loopback port");
    let address = incoming.local_addr().expect("local address");
    (incoming, address)
}

/// A follower and a leader; returns the follower's address (the only one given to the
/// load generator) and the shared state.
fn fake_cluster(recycle: bool) -> (String, Arc<Mutex<FakeState>>) {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let (leader_incoming, leader_address) = listener();
    let (follower_incoming, follower_address) = listener();
    serve(
        Fake {
            leader: None,
            recycle,
            state: Arc::clone(&state),
        },
        leader_incoming,
    );
    serve(
        Fake {
            leader: Some(leader_address.to_string()),
            recycle,
            state: Arc::clone(&state),
        },
        follower_incoming,
    );
    (follower_address.to_string(), state)
}

fn config(server: String, run_id: &str) -> LoadgenConfig {
    let mut config = LoadgenConfig::new(vec![server]);
    config.run_id = run_id.to_owned();
    config.duration = None;
    config.retry = RetryPolicy {
        max_attempts: 5,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
    };
    config.keep_records = true;
    config.warm_wait = Duration::from_millis(1);
    config
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-{name}-{}.jsonl", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_leader_and_records_every_acknowledged_bind() {
    let (follower, state) = fake_cluster(true);
    let record = temp_path("follow");
    let _ = std::fs::remove_file(&record);
    let mut config = config(follower, "follow1");
    config.clients = 3;
    config.ops = Some(60);
    config.record = Some(record.clone());

    let outcome = loadgen::run(&config).await.expect("the run");
    let report = &outcome.report;
    assert_eq!(report.ops, 60, "{}", report.to_json());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.counters.get("leader_hops").copied().unwrap_or(0) >= 1,
        "{:?}",
        report.counters
    );
    assert_eq!(report.latencies["pair"].count, 60);
    assert_eq!(report.latencies["bind"].count, 60);

    // Setup happened on the leader: the pool, three AZs, the cooldown, three nodes with 4 ENIs.
    {
        let state = state.lock().expect("state");
        assert_eq!(state.pools, ["100.64.0.0/10"]);
        assert_eq!(state.subnets, ["us-east-1a", "us-east-1b", "us-east-1c"]);
        assert_eq!(state.settings.ip_cooldown_ms, 1000);
        assert_eq!(state.nodes.len(), 3);
        assert!(state.nodes.values().all(|n| n.enis.len() == 4 && n.bound.is_empty()));
    }

    // Every bind acknowledged and released, each with its own lease id, in memory and on disk.
    let binds: Vec<&Record> = outcome.records.iter().filter(|r| r.op == RecordOp::Bind).collect();
    assert_eq!(binds.len(), 60);
    assert!(
        binds
            .iter()
            .all(|r| r.outcome == Outcome::Ok && r.lease_id != 0 && !r.ip.is_empty())
    );
    let mut leases: Vec<u64> = binds.iter().map(|r| r.lease_id).collect();
    leases.sort_unstable();
    leases.dedup();
    assert_eq!(leases.len(), 60);
    let releases = outcome.records.iter().filter(|r| r.op == RecordOp::Release);
    assert!(
        releases
            .clone()
            .all(|r| r.outcome == Outcome::Ok && r.released == Some(true))
    );
    assert_eq!(releases.count(), 60);
    let text = std::fs::read_to_string(&record).expect("the record file");
    let on_disk: Vec<Record> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a record line"))
        .collect();
    assert_eq!(on_disk.len(), 120);
    assert_eq!(
        on_disk.iter().filter(|r| r.op == RecordOp::Bind).count(),
        60,
        "the file holds what memory holds"
    );
    let _ = std::fs::remove_file(&record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_warm_addresses_plans_more_then_gives_up_at_its_limit() {
    // m5.large: 3 ENIs (2 for pods) × 9 secondary addresses = 18. Released addresses never
    // come back here, so the 19th and 20th binds must fail, refused, after their waits.
    let (follower, state) = fake_cluster(false);
    let mut config = config(follower, "grow1");
    config.clients = 1;
    config.ops = Some(20);
    config.instance_type = "m5.large".to_owned();
    config.enis_per_node = 1;
    config.ips_per_eni = 2;
    config.max_warm_waits = 2;

    let outcome = loadgen::run(&config).await.expect("the run");
    let report = &outcome.report;
    assert_eq!(report.ops, 18, "{}", report.to_json());
    assert!(
        report.counters.get("planned_ips").copied().unwrap_or(0) >= 1,
        "{:?}",
        report.counters
    );
    assert_eq!(
        report.counters.get("planned_enis").copied(),
        Some(1),
        "{:?}",
        report.counters
    );
    assert_eq!(
        report.counters.get("warm_waits").copied(),
        Some(4),
        "{:?}",
        report.counters
    );
    assert_eq!(report.errors.get("bind:resource_exhausted:node-warm").copied(), Some(2));
    let refused: Vec<&Record> = outcome
        .records
        .iter()
        .filter(|r| r.op == RecordOp::Bind && r.outcome == Outcome::Refused)
        .collect();
    assert_eq!(refused.len(), 2);
    // A refused bind bound nothing: no release follows it.
    assert_eq!(outcome.records.iter().filter(|r| r.op == RecordOp::Release).count(), 18);
    let state = state.lock().expect("state");
    let node = state.nodes.values().next().expect("the node");
    assert_eq!(node.enis.len(), 2);
    assert!(node.enis.iter().all(|(_, ips)| *ips == 9));
}
