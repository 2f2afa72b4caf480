//! `AgentService` and `AdminService` over real gRPC: one replica (sled, openraft, the tonic
//! services) on 127.0.0.1:0, driven through the generated clients the way ipamctl and the node
//! agent drive them. Covers the life of a pod address end to end (pool → subnet config →
//! registration → ENI plan → attach → bind → list → release) and the wire errors the protocol
//! promises: stale epoch → FAILED_PRECONDITION, exhausted subnet → RESOURCE_EXHAUSTED with
//! `ipam-exhausted`, malformed input → INVALID_ARGUMENT naming the field.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::admin_service_client::AdminServiceClient;
use ipam_proto::ipam::v1::admin_service_server::AdminServiceServer;
use ipam_proto::ipam::v1::agent_service_client::AgentServiceClient;
use ipam_proto::ipam::v1::agent_service_server::AgentServiceServer;
use ipam_proto::ipam::v1::raft_service_server::RaftServiceServer;
use ipam_server::grpc::admin::AdminGrpc;
use ipam_server::grpc::agent::AgentGrpc;
use ipam_server::grpc::raft::RaftGrpc;
use ipam_server::grpc::status::EXHAUSTED_METADATA;
use ipam_server::raft::LogStore;
use ipam_server::raft::StateMachine;
use ipam_server::raft::grpc_network::NetworkFactory;
use ipam_server::raft::grpc_network::Peers;
use ipam_server::raft::network::Raft;
use ipam_server::replica::Replica;
use openraft::Config;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::Request;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::transport::server::TcpIncoming;

mod common;
use common::TempDir;

const NODE: &str = "ip-10-0-1-10.us-west-2.compute.internal";
const AZ: &str = "us-west-2a";
const SUBNET: &str = "subnet-0a1b2c3d";
/// A /28: 16 addresses, 11 usable after AWS's five.
const SUBNET_CIDR: &str = "100.64.1.0/28";
const BOUND: Duration = Duration::from_secs(10);

/// A running single-replica server and what keeps it alive.
struct Server {
    addr: SocketAddr,
    raft: Raft,
    _dir: TempDir,
}

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {BOUND:?}"))
}

async fn start() -> Server {
    let dir = TempDir::new("t40");
    let db = sled::Config::new()
        .temporary(true)
        .open()
        .unwrap_or_else(|e| panic!("open sled: {e}"));
    let log = LogStore::open(&db).unwrap_or_else(|e| panic!("open log store: {e}"));
    let sm = bounded("open state machine", StateMachine::open(&db, dir.0.join("snapshots")))
        .await
        .unwrap_or_else(|e| panic!("open state machine: {e}"));
    let applied = sm.applied();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local addr: {e}"));
    let config = Config {
        cluster_name: "t40".to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Config::default()
    };
    let config = Arc::new(config.validate().unwrap_or_else(|e| panic!("raft config: {e}")));
    let peers = Peers::default();
    let raft = bounded(
        "Raft::new",
        Raft::new(1, config, NetworkFactory::new(peers.clone()), log, sm),
    )
    .await
    .unwrap_or_else(|e| panic!("start raft: {e}"));
    let replica = Replica::new(1, raft.clone(), applied, peers);
    let router = tonic::transport::Server::builder()
        .add_service(RaftServiceServer::new(RaftGrpc::new(replica.clone())))
        .add_service(AgentServiceServer::new(AgentGrpc::new(replica.clone())))
        .add_service(AdminServiceServer::new(AdminGrpc::new(
            replica.clone(),
            addr.to_string(),
        )));
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    Server { addr, raft, _dir: dir }
}

async fn channel(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap_or_else(|e| panic!("endpoint: {e}"));
    bounded("connect", endpoint.connect())
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A request as ipamctl sends it, naming its operator.
fn as_operator<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("ipam-operator", MetadataValue::from_static("t40"));
    request
}

fn ok<T>(what: &str, result: Result<tonic::Response<T>, Status>) -> T {
    match result {
        Ok(response) => response.into_inner(),
        Err(status) => panic!("{what}: {:?} {}", status.code(), status.message()),
    }
}

fn refused<T: std::fmt::Debug>(what: &str, result: Result<tonic::Response<T>, Status>, code: Code) -> Status {
    match result {
        Ok(response) => panic!("{what}: expected {code:?}, got {:?}", response.into_inner()),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {}", status.message());
            status
        }
    }
}

fn limits() -> pb::NodeLimits {
    pb::NodeLimits {
        max_enis: 4,
        ipv4_per_eni: 10,
        branch_enis: 0,
        trunking: false,
    }
}

fn bind_request(epoch: u64, request_id: &str, pod: &str, container_id: &str) -> pb::BindRequest {
    pb::BindRequest {
        node: NODE.to_owned(),
        epoch,
        request_id: request_id.to_owned(),
        pod: Some(pb::PodRef {
            namespace: "default".to_owned(),
            name: pod.to_owned(),
            uid: format!("uid-{pod}"),
        }),
        pod_labels: Default::default(),
        service_account: String::new(),
        service_account_labels: Default::default(),
        attachment: Some(pb::Attachment {
            container_id: container_id.to_owned(),
            ifname: "eth0".to_owned(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_admin_services_over_grpc() {
    let server = start().await;
    let channel = channel(server.addr).await;
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut agent = AgentServiceClient::new(channel);

    // ---- the cluster: a single replica, initialized over the admin API ----
    let init = ok(
        "ClusterInit",
        bounded(
            "ClusterInit",
            admin.cluster_init(pb::ClusterInitRequest { members: Vec::new() }),
        )
        .await,
    );
    let members = init.cluster.map(|c| c.members).unwrap_or_default();
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0].id, members[0].address.as_str()),
        (1, server.addr.to_string().as_str())
    );
    assert_eq!(members[0].role(), pb::MemberRole::Voter);
    let again = bounded(
        "ClusterInit again",
        admin.cluster_init(pb::ClusterInitRequest { members: Vec::new() }),
    )
    .await;
    refused("a second ClusterInit", again, Code::FailedPrecondition);
    bounded("leader election", async {
        loop {
            let status = ok("ClusterStatus", admin.cluster_status(pb::ClusterStatusRequest {}).await);
            if status.cluster.as_ref().is_some_and(|c| c.leader_id == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // ---- the address space ----
    let pool = ok(
        "CreatePool",
        admin
            .create_pool(as_operator(pb::CreatePoolRequest {
                request_id: "pool-1".to_owned(),
                cidr: "100.64.0.0/16".to_owned(),
            }))
            .await,
    );
    assert_eq!(pool.pool.map(|p| p.cidr).as_deref(), Some("100.64.0.0/16"));
    let bad_cidr = admin
        .create_pool(as_operator(pb::CreatePoolRequest {
            request_id: "pool-2".to_owned(),
            cidr: "100.64.0.0/33".to_owned(),
        }))
        .await;
    let status = refused("CreatePool with a bad CIDR", bad_cidr, Code::InvalidArgument);
    assert!(status.message().starts_with("cidr:"), "{}", status.message());
    let pools = ok("ListPools", admin.list_pools(pb::ListPoolsRequest {}).await);
    assert_eq!(
        pools.pools.iter().map(|p| p.cidr.as_str()).collect::<Vec<_>>(),
        vec!["100.64.0.0/16"]
    );

    let config = pb::SubnetConfig {
        name: AZ.to_owned(),
        subnet_id: SUBNET.to_owned(),
        subnet_cidr: SUBNET_CIDR.to_owned(),
        availability_zone: AZ.to_owned(),
        security_group_ids: vec!["sg-0123456789abcdef0".to_owned()],
        updated_at_unix_ms: 0,
    };
    let upserted = ok(
        "UpsertSubnetConfig",
        admin
            .upsert_subnet_config(as_operator(pb::UpsertSubnetConfigRequest {
                request_id: "cfg-1".to_owned(),
                subnet_config: Some(config.clone()),
            }))
            .await,
    );
    assert_eq!(upserted.subnet_config.as_ref(), Some(&config));
    let outside = admin
        .upsert_subnet_config(as_operator(pb::UpsertSubnetConfigRequest {
            request_id: "cfg-2".to_owned(),
            subnet_config: Some(pb::SubnetConfig {
                name: "elsewhere".to_owned(),
                subnet_id: "subnet-0a1b2c3e".to_owned(),
                subnet_cidr: "10.9.0.0/24".to_owned(),
                ..config.clone()
            }),
        }))
        .await;
    refused("a subnet outside every pool", outside, Code::InvalidArgument);

    // ---- the node registers ----
    let registered = ok(
        "RegisterNode",
        agent
            .register_node(pb::RegisterNodeRequest {
                node: NODE.to_owned(),
                request_id: "reg-1".to_owned(),
                instance_id: "i-0123456789abcdef0".to_owned(),
                instance_type: "m5.xlarge".to_owned(),
                availability_zone: AZ.to_owned(),
                limits: Some(limits()),
                labels: [("role".to_owned(), "worker".to_owned())].into_iter().collect(),
                subnet_config: AZ.to_owned(),
                pod_eni_enabled: false,
                primary_ip: "10.0.1.10".to_owned(),
            })
            .await,
    );
    let epoch = registered.epoch;
    assert!(epoch > 0);
    let node = registered.node.unwrap_or_else(|| panic!("RegisterNode: no node"));
    assert_eq!(
        (node.name.as_str(), node.epoch, node.state()),
        (NODE, epoch, pb::NodeState::Active)
    );
    assert_eq!(node.limits, Some(limits()));
    assert!(node.heartbeat_deadline_unix_ms > 0);
    assert_eq!(registered.subnet_config.as_ref(), Some(&config));
    assert_eq!(registered.heartbeat_ttl_ms, 30_000);
    let heartbeat = ok(
        "Heartbeat",
        agent
            .heartbeat(pb::HeartbeatRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: String::new(),
            })
            .await,
    );
    assert!(heartbeat.heartbeat_deadline_unix_ms >= node.heartbeat_deadline_unix_ms);

    // ---- an ENI: planned, then reported attached ----
    let plan = ok(
        "PlanEni",
        agent
            .plan_eni(pb::PlanEniRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "plan-1".to_owned(),
                kind: pb::EniKind::Secondary.into(),
                ip_count: 3,
            })
            .await,
    );
    assert_eq!(plan.device_index, 1);
    assert_eq!(
        (plan.subnet_id.as_str(), plan.subnet_cidr.as_str()),
        (SUBNET, SUBNET_CIDR)
    );
    assert_eq!(plan.gateway, "100.64.1.1");
    assert_eq!(plan.secondary_ips.len(), 3);
    assert_eq!(plan.intent_token, format!("ipam-{}", plan.eni_ref));
    assert_eq!(plan.tags.get("ipam/node").map(String::as_str), Some(NODE));
    assert_eq!(
        plan.tags.get("ipam/instance-id").map(String::as_str),
        Some("i-0123456789abcdef0")
    );
    let retried = ok(
        "PlanEni retried",
        agent
            .plan_eni(pb::PlanEniRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "plan-1".to_owned(),
                kind: pb::EniKind::Secondary.into(),
                ip_count: 3,
            })
            .await,
    );
    assert_eq!(retried, plan, "a retry with the same request id gets the first plan");
    let attached = ok(
        "ReportEniAttached",
        agent
            .report_eni_attached(pb::ReportEniAttachedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "att-1".to_owned(),
                eni_ref: plan.eni_ref,
                eni_id: "eni-0123456789abcdef0".to_owned(),
                mac: "0A:1B:2C:3D:4E:5F".to_owned(),
                attachment_id: "eni-attach-0123456789abcdef0".to_owned(),
            })
            .await,
    )
    .eni
    .unwrap_or_else(|| panic!("ReportEniAttached: no ENI"));
    assert_eq!(attached.state(), pb::EniState::Attached);
    assert_eq!(attached.eni_id, "eni-0123456789abcdef0");
    assert_eq!(attached.mac, "0a:1b:2c:3d:4e:5f");
    let mut warm: Vec<String> = attached
        .addresses
        .iter()
        .filter(|a| a.state() == pb::AddressState::Warm)
        .map(|a| a.ip.clone())
        .collect();
    warm.sort();
    let mut planned = plan.secondary_ips.clone();
    planned.sort();
    assert_eq!(warm, planned);

    // ---- a pod binds; the lease shows in ListLeases and GetNode ----
    let bound = ok(
        "Bind",
        agent.bind(bind_request(epoch, "bind-1", "web-1", "c0ffee01")).await,
    );
    let lease = bound.lease.clone().unwrap_or_else(|| panic!("Bind: no lease"));
    assert!(
        plan.secondary_ips.contains(&lease.ip),
        "{} is not one of the ENI's addresses",
        lease.ip
    );
    assert_eq!(lease.state(), pb::LeaseState::Bound);
    assert_eq!(
        (lease.eni_ref, lease.eni_id.as_str()),
        (plan.eni_ref, "eni-0123456789abcdef0")
    );
    assert_eq!(lease.subnet_id, SUBNET);
    assert_eq!((bound.device_index, bound.eni_mac.as_str()), (1, "0a:1b:2c:3d:4e:5f"));
    assert_eq!(
        (bound.subnet_cidr.as_str(), bound.gateway.as_str()),
        (SUBNET_CIDR, "100.64.1.1")
    );
    assert_eq!(bound.cooldown_ms, 30_000);
    let readd = ok(
        "Bind again (ADD retried)",
        agent.bind(bind_request(epoch, "bind-1b", "web-1", "c0ffee01")).await,
    );
    assert_eq!(readd.lease.map(|l| l.lease_id), Some(lease.lease_id));

    let leases = ok(
        "ListLeases",
        admin
            .list_leases(pb::ListLeasesRequest {
                node: NODE.to_owned(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(leases.leases.len(), 1);
    assert_eq!(leases.leases[0].lease_id, lease.lease_id);
    assert_eq!(leases.leases[0].ip, lease.ip);
    let owner_pod = leases.leases[0]
        .owner
        .as_ref()
        .and_then(|o| o.pod.as_ref())
        .map(|p| p.name.clone());
    assert_eq!(owner_pod.as_deref(), Some("web-1"));
    let view = ok(
        "GetNode",
        agent.get_node(pb::GetNodeRequest { node: NODE.to_owned() }).await,
    );
    assert_eq!(view.enis.len(), 1);
    assert_eq!(
        view.leases.iter().map(|l| l.lease_id).collect::<Vec<_>>(),
        vec![lease.lease_id]
    );
    let unknown = agent
        .get_node(pb::GetNodeRequest {
            node: "nobody".to_owned(),
        })
        .await;
    refused("GetNode of an unknown node", unknown, Code::NotFound);

    // ---- wire errors ----
    let stale = agent
        .bind(bind_request(epoch - 1, "bind-stale", "web-2", "c0ffee02"))
        .await;
    let status = refused("Bind with a stale epoch", stale, Code::FailedPrecondition);
    assert!(status.message().contains("stale epoch"), "{}", status.message());
    let no_pod = agent
        .bind(pb::BindRequest {
            pod: None,
            ..bind_request(epoch, "bind-bad", "web-2", "c0ffee02")
        })
        .await;
    let status = refused("Bind without a pod", no_pod, Code::InvalidArgument);
    assert_eq!(status.message(), "pod is required");
    let no_kind = agent
        .plan_eni(pb::PlanEniRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: "plan-bad".to_owned(),
            kind: pb::EniKind::Unspecified.into(),
            ip_count: 1,
        })
        .await;
    let status = refused("PlanEni without a kind", no_kind, Code::InvalidArgument);
    assert!(status.message().starts_with("kind"), "{}", status.message());
    let empty_request_id = agent
        .release(pb::ReleaseRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: String::new(),
            lease_id: lease.lease_id,
            attachment: None,
            reason: pb::ReleaseReason::CniDel.into(),
        })
        .await;
    refused("Release without a request id", empty_request_id, Code::InvalidArgument);
    // 11 usable: the ENI holds 4 (its primary and 3), so 7 are free and 9 are asked.
    let exhausted = agent
        .plan_eni(pb::PlanEniRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: "plan-2".to_owned(),
            kind: pb::EniKind::Secondary.into(),
            ip_count: 8,
        })
        .await;
    let status = refused("PlanEni beyond the subnet", exhausted, Code::ResourceExhausted);
    let what = status.metadata().get(EXHAUSTED_METADATA).and_then(|v| v.to_str().ok());
    assert_eq!(what, Some("subnet"));

    // ---- the EC2 budget ----
    let budget = |request_id: &str, node: &str, epoch: u64, count: u32| pb::AcquireEc2BudgetRequest {
        node: node.to_owned(),
        epoch,
        request_id: request_id.to_owned(),
        api_class: pb::Ec2ApiClass::Mutating.into(),
        count,
    };
    let grant = ok(
        "AcquireEc2Budget",
        agent.acquire_ec2_budget(budget("ec2-1", NODE, epoch, 3)).await,
    );
    assert_eq!((grant.granted, grant.retry_after_ms), (3, 0));
    let regrant = ok(
        "AcquireEc2Budget retried",
        agent.acquire_ec2_budget(budget("ec2-1", NODE, epoch, 3)).await,
    );
    assert_eq!(regrant, grant);
    // The default mutating bucket holds 50 (half of EC2's 100): 47 remain, plus what refilled
    // (2.5 a second) since.
    let partial = ok(
        "AcquireEc2Budget",
        agent.acquire_ec2_budget(budget("ec2-2", NODE, epoch, 60)).await,
    );
    assert!((47..=50).contains(&partial.granted), "{partial:?}");
    assert!(partial.retry_after_ms > 0);
    let unknown = agent.acquire_ec2_budget(budget("ec2-3", "nobody", 1, 1)).await;
    refused("AcquireEc2Budget for an unknown node", unknown, Code::NotFound);
    let stale = agent.acquire_ec2_budget(budget("ec2-4", NODE, epoch - 1, 1)).await;
    refused("AcquireEc2Budget with a stale epoch", stale, Code::FailedPrecondition);

    // ---- release by lease id; a repeated release is a no-op ----
    let release = |request_id: &str| pb::ReleaseRequest {
        node: NODE.to_owned(),
        epoch,
        request_id: request_id.to_owned(),
        lease_id: lease.lease_id,
        attachment: Some(pb::Attachment {
            container_id: "c0ffee01".to_owned(),
            ifname: "eth0".to_owned(),
        }),
        reason: pb::ReleaseReason::CniDel.into(),
    };
    let disagree = agent
        .release(pb::ReleaseRequest {
            attachment: Some(pb::Attachment {
                container_id: "someone-else".to_owned(),
                ifname: "eth0".to_owned(),
            }),
            ..release("rel-0")
        })
        .await;
    refused("Release naming another attachment", disagree, Code::FailedPrecondition);
    let released = ok("Release", agent.release(release("rel-1")).await);
    assert!(released.released);
    let cooling = released.lease.unwrap_or_else(|| panic!("Release: no lease"));
    assert_eq!(
        (cooling.lease_id, cooling.state()),
        (lease.lease_id, pb::LeaseState::Cooling)
    );
    assert!(cooling.cooling_until_unix_ms > cooling.bound_at_unix_ms);
    let retried = ok("Release retried", agent.release(release("rel-1")).await);
    assert!(
        retried.released,
        "a retry with the same request id gets the first reply"
    );
    let repeated = ok("Release repeated", agent.release(release("rel-2")).await);
    assert!(!repeated.released);
    assert!(repeated.lease.is_none());
    let leases = ok("ListLeases", admin.list_leases(pb::ListLeasesRequest::default()).await);
    assert!(leases.leases.is_empty(), "{:?}", leases.leases);

    // ---- stats add up ----
    let stats = ok("Stats", admin.stats(pb::StatsRequest {}).await);
    let [subnet] = stats.subnets.as_slice() else {
        panic!("Stats: {:?}", stats.subnets)
    };
    assert_eq!(
        (subnet.total_usable, subnet.eni_primary, subnet.warm, subnet.cooling),
        (11, 1, 2, 1)
    );
    let sum = subnet.eni_primary
        + subnet.pending
        + subnet.warm
        + subnet.bound
        + subnet.draining
        + subnet.cooling
        + subnet.quarantined
        + subnet.free;
    assert_eq!(sum, subnet.total_usable);

    // ---- settings round-trip ----
    let before = ok("GetSettings", admin.get_settings(pb::GetSettingsRequest {}).await)
        .settings
        .unwrap_or_else(|| panic!("GetSettings: none"));
    assert_eq!((before.ip_cooldown_ms, before.token_prefix.as_str()), (30_000, "ipam"));
    let wanted = pb::Settings {
        ip_cooldown_ms: 5_000,
        branch_cooldown_ms: 45_000,
        ..before.clone()
    };
    let updated = ok(
        "UpdateSettings",
        admin
            .update_settings(as_operator(pb::UpdateSettingsRequest {
                request_id: "settings-1".to_owned(),
                settings: Some(wanted.clone()),
            }))
            .await,
    );
    assert_eq!(updated.settings.as_ref(), Some(&wanted));
    let after = ok("GetSettings", admin.get_settings(pb::GetSettingsRequest {}).await);
    assert_eq!(after.settings.as_ref(), Some(&wanted));
    let too_short = admin
        .update_settings(as_operator(pb::UpdateSettingsRequest {
            request_id: "settings-2".to_owned(),
            settings: Some(pb::Settings {
                branch_cooldown_ms: 10_000,
                ..wanted.clone()
            }),
        }))
        .await;
    let status = refused("a branch cooldown under 30 s", too_short, Code::InvalidArgument);
    assert!(status.message().contains("branch_cooldown_ms"), "{}", status.message());
    let missing = admin
        .update_settings(as_operator(pb::UpdateSettingsRequest {
            request_id: "settings-3".to_owned(),
            settings: None,
        }))
        .await;
    let status = refused("UpdateSettings without settings", missing, Code::InvalidArgument);
    assert_eq!(status.message(), "settings is required");
    // The new cooldown applies to the next bind.
    let next = ok(
        "Bind",
        agent.bind(bind_request(epoch, "bind-3", "web-3", "c0ffee03")).await,
    );
    assert_eq!(next.cooldown_ms, 5_000);

    // ---- listings ----
    let nodes = ok("ListNodes", admin.list_nodes(pb::ListNodesRequest::default()).await);
    assert_eq!(
        nodes.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        vec![NODE]
    );
    let enis = ok(
        "ListEnis",
        admin
            .list_enis(pb::ListEnisRequest {
                kind: pb::EniKind::Secondary.into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(
        enis.enis.iter().map(|e| e.eni_ref).collect::<Vec<_>>(),
        vec![plan.eni_ref]
    );
    let bad_token = admin
        .list_nodes(pb::ListNodesRequest {
            page_token: "garbage".to_owned(),
            ..Default::default()
        })
        .await;
    refused("ListNodes with a bad page token", bad_token, Code::InvalidArgument);
    let configs = ok(
        "ListSubnetConfigs",
        admin.list_subnet_configs(pb::ListSubnetConfigsRequest {}).await,
    );
    assert_eq!(configs.subnet_configs, vec![config]);
    let in_use = admin
        .delete_subnet_config(as_operator(pb::DeleteSubnetConfigRequest {
            request_id: "del-1".to_owned(),
            name: AZ.to_owned(),
        }))
        .await;
    refused("deleting a subnet config a node uses", in_use, Code::FailedPrecondition);
    let members: BTreeMap<u64, String> = ok("ClusterStatus", admin.cluster_status(pb::ClusterStatusRequest {}).await)
        .cluster
        .map(|c| c.members.into_iter().map(|m| (m.id, m.address)).collect())
        .unwrap_or_default();
    assert_eq!(members, BTreeMap::from([(1, server.addr.to_string())]));

    bounded("raft shutdown", server.raft.shutdown())
        .await
        .unwrap_or_else(|e| panic!("raft shutdown: {e}"));
}

/// Initializes the single-replica cluster and waits for its leader.
async fn init_cluster(admin: &mut AdminServiceClient<Channel>) {
    ok(
        "ClusterInit",
        bounded(
            "ClusterInit",
            admin.cluster_init(pb::ClusterInitRequest { members: Vec::new() }),
        )
        .await,
    );
    bounded("leader election", async {
        loop {
            let status = ok("ClusterStatus", admin.cluster_status(pb::ClusterStatusRequest {}).await);
            if status.cluster.as_ref().is_some_and(|c| c.leader_id == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn addresses(eni: &pb::Eni) -> BTreeMap<String, pb::AddressState> {
    eni.addresses.iter().map(|a| (a.ip.clone(), a.state())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eni_and_address_life_cycle_over_grpc() {
    let server = start().await;
    let channel = channel(server.addr).await;
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut agent = AgentServiceClient::new(channel);
    init_cluster(&mut admin).await;

    ok(
        "CreatePool",
        admin
            .create_pool(as_operator(pb::CreatePoolRequest {
                request_id: "pool-1".to_owned(),
                cidr: "100.64.0.0/16".to_owned(),
            }))
            .await,
    );
    ok(
        "UpsertSubnetConfig",
        admin
            .upsert_subnet_config(as_operator(pb::UpsertSubnetConfigRequest {
                request_id: "cfg-1".to_owned(),
                subnet_config: Some(pb::SubnetConfig {
                    name: AZ.to_owned(),
                    subnet_id: SUBNET.to_owned(),
                    subnet_cidr: "100.64.2.0/24".to_owned(),
                    availability_zone: AZ.to_owned(),
                    security_group_ids: Vec::new(),
                    updated_at_unix_ms: 0,
                }),
            }))
            .await,
    );

    // ---- security group policies ----
    let policy = pb::SgPolicy {
        namespace: "payments".to_owned(),
        name: "db".to_owned(),
        pod_selector: Some(pb::LabelSelector {
            match_labels: [("app".to_owned(), "db".to_owned())].into_iter().collect(),
            match_expressions: Vec::new(),
        }),
        service_account_selector: None,
        security_group_ids: vec!["sg-0123456789abcdef1".to_owned()],
        updated_at_unix_ms: 0,
    };
    let upserted = ok(
        "UpsertSgPolicy",
        admin
            .upsert_sg_policy(as_operator(pb::UpsertSgPolicyRequest {
                request_id: "sgp-1".to_owned(),
                policy: Some(policy.clone()),
            }))
            .await,
    );
    assert_eq!(upserted.policy.as_ref(), Some(&policy));
    let listed = ok(
        "ListSgPolicies",
        admin
            .list_sg_policies(pb::ListSgPoliciesRequest {
                namespace: "payments".to_owned(),
            })
            .await,
    );
    assert_eq!(listed.policies, vec![policy.clone()]);
    let other = ok(
        "ListSgPolicies",
        admin
            .list_sg_policies(pb::ListSgPoliciesRequest {
                namespace: "other".to_owned(),
            })
            .await,
    );
    assert!(other.policies.is_empty());
    let mut unspecified = policy.clone();
    unspecified.pod_selector = Some(pb::LabelSelector {
        match_labels: Default::default(),
        match_expressions: vec![pb::LabelSelectorRequirement {
            key: "tier".to_owned(),
            operator: pb::LabelSelectorOperator::Unspecified.into(),
            values: Vec::new(),
        }],
    });
    let bad = admin
        .upsert_sg_policy(as_operator(pb::UpsertSgPolicyRequest {
            request_id: "sgp-2".to_owned(),
            policy: Some(unspecified),
        }))
        .await;
    let status = refused("a selector operator left unspecified", bad, Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("policy.pod_selector.match_expressions[0].operator"),
        "{}",
        status.message()
    );
    let delete = |request_id: &str| pb::DeleteSgPolicyRequest {
        request_id: request_id.to_owned(),
        namespace: "payments".to_owned(),
        name: "db".to_owned(),
    };
    ok(
        "DeleteSgPolicy",
        admin.delete_sg_policy(as_operator(delete("sgp-3"))).await,
    );
    let gone = admin.delete_sg_policy(as_operator(delete("sgp-4"))).await;
    refused("deleting a deleted policy", gone, Code::NotFound);

    // ---- a node with one attached secondary ENI ----
    let epoch = ok(
        "RegisterNode",
        agent
            .register_node(pb::RegisterNodeRequest {
                node: NODE.to_owned(),
                request_id: "reg-1".to_owned(),
                instance_id: "i-0123456789abcdef0".to_owned(),
                instance_type: "m5.xlarge".to_owned(),
                availability_zone: AZ.to_owned(),
                limits: Some(limits()),
                labels: Default::default(),
                subnet_config: AZ.to_owned(),
                pod_eni_enabled: false,
                primary_ip: String::new(),
            })
            .await,
    )
    .epoch;
    let plan = ok(
        "PlanEni",
        agent
            .plan_eni(pb::PlanEniRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "plan-1".to_owned(),
                kind: pb::EniKind::Secondary.into(),
                ip_count: 1,
            })
            .await,
    );
    let eni_ref = plan.eni_ref;
    ok(
        "ReportEniAttached",
        agent
            .report_eni_attached(pb::ReportEniAttachedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "att-1".to_owned(),
                eni_ref,
                eni_id: "eni-0123456789abcdef0".to_owned(),
                mac: "0a:1b:2c:3d:4e:5f".to_owned(),
                attachment_id: "eni-attach-0123456789abcdef0".to_owned(),
            })
            .await,
    );

    // ---- PlanIps; EC2 assigns two of three: the third goes back ----
    let planned = ok(
        "PlanIps",
        agent
            .plan_ips(pb::PlanIpsRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "ips-1".to_owned(),
                eni_ref,
                count: 3,
            })
            .await,
    );
    assert_eq!(planned.ips.len(), 3);
    assert!(
        planned.intent_token.starts_with(&format!("ips-{eni_ref}-")),
        "{}",
        planned.intent_token
    );
    let assigned = ok(
        "ReportIpsAssigned",
        agent
            .report_ips_assigned(pb::ReportIpsAssignedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "ips-1-ok".to_owned(),
                eni_ref,
                intent_token: planned.intent_token.clone(),
                ips: planned.ips[..2].to_vec(),
            })
            .await,
    )
    .eni
    .unwrap_or_else(|| panic!("ReportIpsAssigned: no ENI"));
    let states = addresses(&assigned);
    assert_eq!(states.get(&planned.ips[0]), Some(&pb::AddressState::Warm));
    assert_eq!(states.get(&planned.ips[1]), Some(&pb::AddressState::Warm));
    assert_eq!(states.get(&planned.ips[2]), None, "the unassigned address left the ENI");
    assert_eq!(states.len(), 3);
    let finished = agent
        .report_ips_assigned(pb::ReportIpsAssignedRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: "ips-1-ok".to_owned(),
            eni_ref,
            intent_token: planned.intent_token.clone(),
            ips: planned.ips[..2].to_vec(),
        })
        .await;
    let status = refused("a report of a finished plan", finished, Code::FailedPrecondition);
    assert!(status.message().contains("finished"), "{}", status.message());
    let foreign = agent
        .report_ips_assigned(pb::ReportIpsAssignedRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: "ips-1-bad".to_owned(),
            eni_ref,
            intent_token: "ipam-1".to_owned(),
            ips: Vec::new(),
        })
        .await;
    refused(
        "a report with a token this server did not mint",
        foreign,
        Code::InvalidArgument,
    );

    // ---- PlanIps refused by EC2: one address in use elsewhere is quarantined, then lifted ----
    let planned = ok(
        "PlanIps",
        agent
            .plan_ips(pb::PlanIpsRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "ips-2".to_owned(),
                eni_ref,
                count: 2,
            })
            .await,
    );
    let failed = ok(
        "ReportIpsFailed",
        agent
            .report_ips_failed(pb::ReportIpsFailedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "ips-2-failed".to_owned(),
                eni_ref,
                intent_token: planned.intent_token.clone(),
                error_code: "InvalidIPAddress.InUse".to_owned(),
                error_message: "in use".to_owned(),
                in_use_ips: vec![planned.ips[0].clone()],
            })
            .await,
    );
    assert_eq!(
        (failed.returned, failed.quarantined_ips.clone()),
        (1, vec![planned.ips[0].clone()])
    );
    let quarantined = ok("Stats", admin.stats(pb::StatsRequest {}).await).subnets[0].quarantined;
    assert_eq!(quarantined, 1);
    ok(
        "Unquarantine",
        admin
            .unquarantine(as_operator(pb::UnquarantineRequest {
                request_id: "unq-1".to_owned(),
                ip: planned.ips[0].clone(),
            }))
            .await,
    );
    let stats = ok("Stats", admin.stats(pb::StatsRequest {}).await);
    assert_eq!((stats.subnets[0].quarantined, stats.subnets[0].warm), (0, 3));

    // ---- two pods; GC collects the one the runtime no longer has ----
    let a = ok(
        "Bind a",
        agent.bind(bind_request(epoch, "bind-a", "pod-a", "c0ffee0a")).await,
    )
    .lease
    .unwrap_or_else(|| panic!("Bind a: no lease"));
    let b = ok(
        "Bind b",
        agent.bind(bind_request(epoch, "bind-b", "pod-b", "c0ffee0b")).await,
    )
    .lease
    .unwrap_or_else(|| panic!("Bind b: no lease"));
    let gc = ok(
        "Gc",
        agent
            .gc(pb::GcRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "gc-1".to_owned(),
                valid_attachments: vec![pb::Attachment {
                    container_id: "c0ffee0a".to_owned(),
                    ifname: "eth0".to_owned(),
                }],
                bound_before_unix_ms: now_ms() + 60_000,
            })
            .await,
    );
    assert_eq!(
        gc.released.iter().map(|l| (l.lease_id, l.state())).collect::<Vec<_>>(),
        vec![(b.lease_id, pb::LeaseState::Cooling)]
    );

    // ---- an operator releases the other ----
    let release = |request_id: &str, lease_id| pb::ReleaseLeaseRequest {
        request_id: request_id.to_owned(),
        lease_id,
    };
    let released = ok(
        "ReleaseLease",
        admin.release_lease(as_operator(release("op-rel-1", a.lease_id))).await,
    )
    .lease
    .unwrap_or_else(|| panic!("ReleaseLease: no lease"));
    assert_eq!(
        (released.lease_id, released.state()),
        (a.lease_id, pb::LeaseState::Cooling)
    );
    let again = admin.release_lease(as_operator(release("op-rel-2", a.lease_id))).await;
    refused("releasing a released lease", again, Code::NotFound);
    let zero = admin.release_lease(as_operator(release("op-rel-3", 0))).await;
    refused("ReleaseLease without a lease id", zero, Code::InvalidArgument);

    // ---- drain the last warm address and give it back ----
    let explicit = agent
        .drain_ips(pb::DrainIpsRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: "drain-0".to_owned(),
            eni_ref,
            count: 0,
            ips: vec![planned.ips[1].clone()],
        })
        .await;
    refused("DrainIps with explicit addresses", explicit, Code::Unimplemented);
    let both = agent
        .drain_ips(pb::DrainIpsRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: "drain-0".to_owned(),
            eni_ref,
            count: 1,
            ips: vec![planned.ips[1].clone()],
        })
        .await;
    refused("DrainIps with both count and ips", both, Code::InvalidArgument);
    let drained = ok(
        "DrainIps",
        agent
            .drain_ips(pb::DrainIpsRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "drain-1".to_owned(),
                eni_ref,
                count: 1,
                ips: Vec::new(),
            })
            .await,
    );
    assert_eq!(drained.ips.len(), 1);
    let unassigned = ok(
        "ReportIpsUnassigned",
        agent
            .report_ips_unassigned(pb::ReportIpsUnassignedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "unassigned-1".to_owned(),
                eni_ref,
                ips: drained.ips.clone(),
            })
            .await,
    )
    .eni
    .unwrap_or_else(|| panic!("ReportIpsUnassigned: no ENI"));
    let states = addresses(&unassigned);
    assert!(!states.contains_key(&drained.ips[0]));
    assert_eq!(
        states.values().copied().collect::<Vec<_>>(),
        vec![pb::AddressState::Cooling, pb::AddressState::Cooling]
    );

    // ---- the ENI goes: detach planned, then reported deleted ----
    let detaching = ok(
        "PlanEniDetach",
        agent
            .plan_eni_detach(pb::PlanEniDetachRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "detach-1".to_owned(),
                eni_ref,
            })
            .await,
    )
    .eni
    .unwrap_or_else(|| panic!("PlanEniDetach: no ENI"));
    assert_eq!(
        (detaching.state(), detaching.eni_id.as_str()),
        (pb::EniState::Detaching, "eni-0123456789abcdef0")
    );
    let detached = ok(
        "ReportEniDetached",
        agent
            .report_eni_detached(pb::ReportEniDetachedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "detached-1".to_owned(),
                eni_ref,
            })
            .await,
    );
    assert_eq!(
        detached.returned, 1,
        "the primary now; the two cooling addresses after their cooldown"
    );
    let view = ok(
        "GetNode",
        agent.get_node(pb::GetNodeRequest { node: NODE.to_owned() }).await,
    );
    assert!(view.enis.is_empty() && view.leases.is_empty(), "{view:?}");

    // ---- the node is removed ----
    let remove = |request_id: &str, force| pb::RemoveNodeRequest {
        request_id: request_id.to_owned(),
        node: NODE.to_owned(),
        force,
    };
    let active = admin.remove_node(as_operator(remove("rm-1", false))).await;
    refused(
        "removing an active node without force",
        active,
        Code::FailedPrecondition,
    );
    let removed = ok("RemoveNode", admin.remove_node(as_operator(remove("rm-2", true))).await);
    assert_eq!((removed.released_leases, removed.forgotten_enis), (0, 0));
    let orphan = agent
        .heartbeat(pb::HeartbeatRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: String::new(),
        })
        .await;
    refused("a heartbeat of a removed node", orphan, Code::NotFound);

    bounded("raft shutdown", server.raft.shutdown())
        .await
        .unwrap_or_else(|e| panic!("raft shutdown: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunk_and_branch_enis_over_grpc() {
    let server = start().await;
    let channel = channel(server.addr).await;
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut agent = AgentServiceClient::new(channel);
    init_cluster(&mut admin).await;

    ok(
        "CreatePool",
        admin
            .create_pool(as_operator(pb::CreatePoolRequest {
                request_id: "pool-1".to_owned(),
                cidr: "100.64.0.0/16".to_owned(),
            }))
            .await,
    );
    ok(
        "UpsertSubnetConfig",
        admin
            .upsert_subnet_config(as_operator(pb::UpsertSubnetConfigRequest {
                request_id: "cfg-1".to_owned(),
                subnet_config: Some(pb::SubnetConfig {
                    name: AZ.to_owned(),
                    subnet_id: SUBNET.to_owned(),
                    subnet_cidr: "100.64.3.0/24".to_owned(),
                    availability_zone: AZ.to_owned(),
                    security_group_ids: vec!["sg-0123456789abcdef0".to_owned()],
                    updated_at_unix_ms: 0,
                }),
            }))
            .await,
    );
    let db_group = "sg-0123456789abcdef1".to_owned();
    ok(
        "UpsertSgPolicy",
        admin
            .upsert_sg_policy(as_operator(pb::UpsertSgPolicyRequest {
                request_id: "sgp-1".to_owned(),
                policy: Some(pb::SgPolicy {
                    namespace: "payments".to_owned(),
                    name: "db".to_owned(),
                    pod_selector: Some(pb::LabelSelector {
                        match_labels: [("app".to_owned(), "db".to_owned())].into_iter().collect(),
                        match_expressions: Vec::new(),
                    }),
                    service_account_selector: None,
                    security_group_ids: vec![db_group.clone()],
                    updated_at_unix_ms: 0,
                }),
            }))
            .await,
    );
    let epoch = ok(
        "RegisterNode",
        agent
            .register_node(pb::RegisterNodeRequest {
                node: NODE.to_owned(),
                request_id: "reg-1".to_owned(),
                instance_id: "i-0123456789abcdef0".to_owned(),
                instance_type: "m5.xlarge".to_owned(),
                availability_zone: AZ.to_owned(),
                limits: Some(pb::NodeLimits {
                    branch_enis: 9,
                    trunking: true,
                    ..limits()
                }),
                labels: Default::default(),
                subnet_config: AZ.to_owned(),
                pod_eni_enabled: true,
                primary_ip: String::new(),
            })
            .await,
    )
    .epoch;
    let plan_eni = |request_id: &str, kind: pb::EniKind, ip_count| pb::PlanEniRequest {
        node: NODE.to_owned(),
        epoch,
        request_id: request_id.to_owned(),
        kind: kind.into(),
        ip_count,
    };

    // ---- the trunk ----
    let trunk = ok(
        "PlanEni trunk",
        agent.plan_eni(plan_eni("trunk-1", pb::EniKind::Trunk, 0)).await,
    );
    assert!(trunk.secondary_ips.is_empty());
    ok(
        "ReportEniAttached trunk",
        agent
            .report_eni_attached(pb::ReportEniAttachedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "trunk-att".to_owned(),
                eni_ref: trunk.eni_ref,
                eni_id: "eni-00000000000000001".to_owned(),
                mac: "0a:00:00:00:00:01".to_owned(),
                attachment_id: "eni-attach-1".to_owned(),
            })
            .await,
    );
    let second = agent.plan_eni(plan_eni("trunk-2", pb::EniKind::Trunk, 0)).await;
    refused("a second trunk", second, Code::FailedPrecondition);
    let with_ips = agent.plan_eni(plan_eni("trunk-3", pb::EniKind::Trunk, 2)).await;
    refused("a trunk with addresses", with_ips, Code::InvalidArgument);

    // ---- a branch ENI, planned and attached ----
    let plan_branch = |request_id: &str| pb::PlanBranchEniRequest {
        node: NODE.to_owned(),
        epoch,
        request_id: request_id.to_owned(),
        security_group_ids: vec![db_group.clone()],
    };
    let branch = ok("PlanBranchEni", agent.plan_branch_eni(plan_branch("branch-1")).await);
    assert_eq!(
        (branch.vlan_id, branch.trunk_eni_id.as_str()),
        (1, "eni-00000000000000001")
    );
    assert_eq!(
        (branch.subnet_cidr.as_str(), branch.gateway.as_str()),
        ("100.64.3.0/24", "100.64.3.1")
    );
    let attached = ok(
        "ReportBranchAttached",
        agent
            .report_branch_attached(pb::ReportBranchAttachedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "branch-1-att".to_owned(),
                eni_ref: branch.eni_ref,
                eni_id: "eni-00000000000000002".to_owned(),
                mac: "0a:00:00:00:00:02".to_owned(),
            })
            .await,
    )
    .eni
    .unwrap_or_else(|| panic!("ReportBranchAttached: no ENI"));
    assert_eq!(
        (attached.kind(), attached.state()),
        (pb::EniKind::Branch, pb::EniState::Attached)
    );
    assert_eq!((attached.vlan_id, attached.trunk_eni_ref), (1, trunk.eni_ref));
    assert_eq!(
        addresses(&attached),
        BTreeMap::from([(branch.ip.clone(), pb::AddressState::Warm)])
    );

    // ---- a second branch fails in EC2: its address is in use elsewhere ----
    let doomed = ok("PlanBranchEni", agent.plan_branch_eni(plan_branch("branch-2")).await);
    assert_eq!(doomed.vlan_id, 2);
    let failed = ok(
        "ReportBranchFailed",
        agent
            .report_branch_failed(pb::ReportBranchFailedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "branch-2-failed".to_owned(),
                eni_ref: doomed.eni_ref,
                error_code: "InvalidIPAddress.InUse".to_owned(),
                error_message: String::new(),
                ip_in_use: true,
            })
            .await,
    );
    assert!(failed.quarantined);
    assert_eq!(
        ok("Stats", admin.stats(pb::StatsRequest {}).await).subnets[0].quarantined,
        1
    );

    // ---- a pod the policy selects gets the branch ENI ----
    let db_pod = |request_id: &str, name: &str, container_id: &str| pb::BindRequest {
        pod: Some(pb::PodRef {
            namespace: "payments".to_owned(),
            name: name.to_owned(),
            uid: format!("uid-{name}"),
        }),
        pod_labels: [("app".to_owned(), "db".to_owned())].into_iter().collect(),
        ..bind_request(epoch, request_id, name, container_id)
    };
    let bound = ok("Bind db-0", agent.bind(db_pod("bind-db-0", "db-0", "c0ffee10")).await);
    let lease = bound.lease.clone().unwrap_or_else(|| panic!("Bind: no lease"));
    assert_eq!((lease.ip.as_str(), lease.vlan_id), (branch.ip.as_str(), 1));
    assert_eq!(lease.security_group_ids, vec![db_group.clone()]);
    assert_eq!(
        (bound.trunk_eni_id.as_str(), bound.device_index),
        ("eni-00000000000000001", 0)
    );
    assert_eq!(bound.eni_mac, "0a:00:00:00:00:02");
    assert_eq!(bound.cooldown_ms, 60_000);
    let none_left = agent.bind(db_pod("bind-db-1", "db-1", "c0ffee11")).await;
    let status = refused(
        "a second db pod without a warm branch",
        none_left,
        Code::ResourceExhausted,
    );
    let what = status.metadata().get(EXHAUSTED_METADATA).and_then(|v| v.to_str().ok());
    assert_eq!(what, Some("branch-warm"));
    // A pod no policy selects needs a warm shared address, and there is none yet.
    let plain = agent.bind(bind_request(epoch, "bind-web", "web-0", "c0ffee12")).await;
    let status = refused("a plain pod without warm addresses", plain, Code::ResourceExhausted);
    let what = status.metadata().get(EXHAUSTED_METADATA).and_then(|v| v.to_str().ok());
    assert_eq!(what, Some("node-warm"));

    // ---- a secondary ENI that EC2 refuses: its addresses go back, one into quarantine ----
    let secondary = ok(
        "PlanEni secondary",
        agent.plan_eni(plan_eni("sec-1", pb::EniKind::Secondary, 2)).await,
    );
    let failed = ok(
        "ReportEniFailed",
        agent
            .report_eni_failed(pb::ReportEniFailedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "sec-1-failed".to_owned(),
                eni_ref: secondary.eni_ref,
                error_code: "InvalidIPAddress.InUse".to_owned(),
                error_message: "in use".to_owned(),
                in_use_ips: vec![secondary.secondary_ips[0].clone()],
            })
            .await,
    );
    assert_eq!(
        (failed.returned, failed.quarantined_ips),
        (2, vec![secondary.secondary_ips[0].clone()])
    );
    let stats = ok("Stats", admin.stats(pb::StatsRequest {}).await);
    assert_eq!((stats.subnets[0].quarantined, stats.subnets[0].bound), (2, 1));
    let enis = ok(
        "ListEnis",
        admin
            .list_enis(pb::ListEnisRequest {
                node: NODE.to_owned(),
                ..Default::default()
            })
            .await,
    );
    let kinds: Vec<(pb::EniKind, u32)> = enis.enis.iter().map(|e| (e.kind(), e.vlan_id)).collect();
    assert_eq!(kinds, vec![(pb::EniKind::Trunk, 0), (pb::EniKind::Branch, 1)]);

    bounded("raft shutdown", server.raft.shutdown())
        .await
        .unwrap_or_else(|e| panic!("raft shutdown: {e}"));
}
