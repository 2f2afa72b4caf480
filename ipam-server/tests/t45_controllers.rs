//! The leader-only controllers on a real server (`server::start`): a node that stops
//! heartbeating is expired and its lease released with reason `expired`; the released address
//! cools down and comes back. Seen the way an operator sees it: in the ledger (Export), in
//! `/metrics`, and on `/readyz`.

use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::admin_service_client::AdminServiceClient;
use ipam_proto::ipam::v1::agent_service_client::AgentServiceClient;
use ipam_proto::ipam::v1::audit_service_client::AuditServiceClient;
use ipam_server::config::ControllersConfig;
use ipam_server::config::ServerConfig;
use ipam_server::server;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

mod common;
use common::TempDir;
#[path = "common/agent_setup.rs"]
mod agent_setup;
use agent_setup::NodeSetup;
use agent_setup::register_with_eni;

const NODE: &str = "ip-10-0-1-10.us-west-2.compute.internal";
const AZ: &str = "us-west-2a";
const TTL_MS: u64 = 1_000;
const COOLDOWN_MS: u64 = 500;

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

async fn export(addr: SocketAddr) -> Vec<pb::Event> {
    let mut stream = AuditServiceClient::new(channel(addr))
        .export(pb::ExportRequest::default())
        .await
        .unwrap_or_else(|e| panic!("export: {e}"))
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap_or_else(|e| panic!("export: {e}")) {
        events.push(event);
    }
    events
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let code = response.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_expires_and_its_released_address_cools_down() {
    let dir = TempDir::new("t45");
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        data_dir: dir.0.clone(),
        controllers: ControllersConfig { tick_ms: 50 },
        ..ServerConfig::default()
    };
    let running = server::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
    let addr = running.grpc_addr();
    let http = running.http_addr().unwrap_or_else(|| panic!("no HTTP address"));
    assert!(running.wait_for_leader(Duration::from_secs(10)).await.is_some());
    eventually("readiness", || async {
        (get(http, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    let mut admin = AdminServiceClient::new(channel(addr));
    let mut agent = AgentServiceClient::new(channel(addr));
    let current = admin
        .get_settings(pb::GetSettingsRequest {})
        .await
        .unwrap_or_else(|e| panic!("get settings: {e}"))
        .into_inner()
        .settings
        .unwrap_or_default();
    admin
        .update_settings(pb::UpdateSettingsRequest {
            request_id: "t45-settings".to_owned(),
            settings: Some(pb::Settings {
                heartbeat_ttl_ms: TTL_MS,
                ip_cooldown_ms: COOLDOWN_MS,
                ..current
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("update settings: {e}"));
    admin
        .create_pool(pb::CreatePoolRequest {
            request_id: "t45-pool".to_owned(),
            cidr: "100.64.0.0/16".to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("create pool: {e}"));
    admin
        .upsert_subnet_config(pb::UpsertSubnetConfigRequest {
            request_id: "t45-subnet".to_owned(),
            subnet_config: Some(pb::SubnetConfig {
                name: AZ.to_owned(),
                subnet_id: "subnet-011b111c1f11fdf11".to_owned(),
                subnet_cidr: "100.64.1.0/24".to_owned(),
                availability_zone: AZ.to_owned(),
                security_group_ids: vec!["sg-0dff111a1d11c1c11".to_owned()],
                updated_at_unix_ms: 0,
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("upsert subnet config: {e}"));
    let (epoch, _) = register_with_eni(
        &mut agent,
        &NodeSetup {
            node: NODE,
            instance_id: "i-0123456789abcdef0",
            az: AZ,
            ips: 2,
            eni_id: "eni-0123456789abcdef0",
            mac: "02:00:00:00:00:01",
        },
    )
    .await;
    let lease = agent
        .bind(pb::BindRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: "t45-bind".to_owned(),
            pod: Some(pb::PodRef {
                namespace: "default".to_owned(),
                name: "web-0".to_owned(),
                uid: "uid-web-0".to_owned(),
            }),
            pod_labels: Default::default(),
            service_account: String::new(),
            service_account_labels: Default::default(),
            attachment: Some(pb::Attachment {
                container_id: "c-web-0".to_owned(),
                ifname: "eth0".to_owned(),
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"))
        .into_inner()
        .lease
        .unwrap_or_else(|| panic!("bind answered no lease"));
    let bound_at = Instant::now();

    // No heartbeat: after the TTL the leader's tick expires the node and releases the lease.
    let released = eventually("the lease released by expiry", || async {
        export(addr)
            .await
            .into_iter()
            .find(|e| e.kind == "IpReleased" && e.lease_id == lease.lease_id)
    })
    .await;
    assert!(
        bound_at.elapsed() >= Duration::from_millis(TTL_MS / 2),
        "not expired before the heartbeat deadline"
    );
    assert_eq!(released.cause, "expired");
    assert_eq!(released.ips, vec![lease.ip.clone()]);
    assert_eq!(released.actor.map(|a| a.kind()), Some(pb::ActorKind::Controller));
    let ledger = export(addr).await;
    assert!(ledger.iter().any(|e| e.kind == "NodeExpired" && e.node == NODE));

    // The cooldown ends on a later tick, and the address is recorded as cooled.
    let cooled = eventually("the address to cool down", || async {
        export(addr)
            .await
            .into_iter()
            .find(|e| e.kind == "IpCooled" && e.ips.contains(&lease.ip))
    })
    .await;
    assert!(cooled.at_unix_ms >= released.at_unix_ms + i64::try_from(COOLDOWN_MS).unwrap_or(0));

    // Watch: the address's story from seq 1, filtered by the address, as a stream.
    let mut audit = AuditServiceClient::new(channel(addr));
    let mut watch = audit
        .watch(pb::WatchRequest {
            from_seq: 1,
            filter: Some(pb::EventFilter {
                kinds: Vec::new(),
                key_kind: pb::EventKeyKind::Ip.into(),
                key: lease.ip.clone(),
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"))
        .into_inner();
    let mut story = Vec::new();
    while story.last().map(String::as_str) != Some("IpCooled") {
        let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .unwrap_or_else(|_| panic!("the watch stalled after {story:?}"))
            .unwrap_or_else(|e| panic!("watch: {e}"))
            .unwrap_or_else(|| panic!("the watch ended after {story:?}"));
        assert!(next.ips.contains(&lease.ip), "{next:?}");
        story.push(next.kind);
    }
    assert_eq!(
        story,
        ["EniPlanned", "IpBound", "IpReleased", "IpCooled"]
            .map(String::from)
            .to_vec()
    );
    // Bad questions get clear answers.
    let bad_filter = audit
        .watch(pb::WatchRequest {
            from_seq: 1,
            filter: Some(pb::EventFilter {
                kinds: Vec::new(),
                key_kind: pb::EventKeyKind::Ip.into(),
                key: "100.64.1".to_owned(),
            }),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a malformed address must be refused"));
    assert_eq!(bad_filter.code(), tonic::Code::InvalidArgument);
    assert!(bad_filter.message().contains("100.64.1"), "{}", bad_filter.message());
    let backwards = audit
        .export(pb::ExportRequest {
            since_unix_ms: 2_000,
            until_unix_ms: 1_000,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("until before since must be refused"));
    assert_eq!(backwards.code(), tonic::Code::InvalidArgument);

    // The expired node's agent is refused until it registers again.
    let refused = agent
        .bind(pb::BindRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: "t45-bind-after-expiry".to_owned(),
            pod: Some(pb::PodRef {
                namespace: "default".to_owned(),
                name: "web-1".to_owned(),
                uid: "uid-web-1".to_owned(),
            }),
            pod_labels: Default::default(),
            service_account: String::new(),
            service_account_labels: Default::default(),
            attachment: Some(pb::Attachment {
                container_id: "c-web-1".to_owned(),
                ifname: "eth0".to_owned(),
            }),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("an expired node's bind must be refused"));
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{}", refused.message());

    let (code, metrics) = get(http, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "ipam_binds_total{result=\"bound\"} 1",
        "ipam_binds_total{result=\"refused\"} 1",
        "ipam_releases_total{reason=\"expired\"} 1",
        "ipam_raft_is_leader 1",
    ] {
        assert!(metrics.contains(line), "/metrics has {line:?}:\n{metrics}");
    }
    assert!(
        metrics.contains("ipam_grpc_requests_total{service=\"ipam.v1.AgentService\",method=\"Bind\",code=\"OK\"} 1"),
        "{metrics}"
    );
    // The ledger's size as /metrics reports it follows the ledger.
    let last_seq = export(addr).await.last().map_or(0, |e| e.seq);
    eventually("ipam_ledger_last_seq to reach the ledger's last seq", || async {
        let (_, metrics) = get(http, "/metrics").await;
        metrics
            .lines()
            .any(|l| l == format!("ipam_ledger_last_seq {last_seq}"))
            .then_some(())
    })
    .await;
    running.shutdown().await.unwrap_or_else(|e| panic!("shutdown: {e}"));
}
