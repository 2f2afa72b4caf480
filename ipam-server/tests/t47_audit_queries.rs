//! WhoHad and History over gRPC on a real server, the way an auditor asks: who held this address
//! then, what happened to this pod, page by page; bad questions get clear INVALID_ARGUMENT
//! answers. Then the same data directory restarted with a retention: old questions are
//! OUT_OF_RANGE, while the lease still live keeps the bind that explains it.

use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::admin_service_client::AdminServiceClient;
use ipam_proto::ipam::v1::agent_service_client::AgentServiceClient;
use ipam_proto::ipam::v1::audit_service_client::AuditServiceClient;
use ipam_server::config::ControllersConfig;
use ipam_server::config::LedgerConfig;
use ipam_server::config::RaftConfig;
use ipam_server::config::ServerConfig;
use ipam_server::server;
use tonic::Code;
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
const ENI_ID: &str = "eni-0123456789abcdef0";
const SG: &str = "sg-0dff111a1d11c1c11";

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

fn config(dir: &TempDir, ledger: LedgerConfig) -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http_listen: None,
        data_dir: dir.0.clone(),
        controllers: ControllersConfig { tick_ms: 50 },
        // Snapshots often: retention never prunes past the last one.
        raft: RaftConfig {
            snapshot_after_entries: 2,
            ..RaftConfig::default()
        },
        ledger,
        ..ServerConfig::default()
    }
}

fn pod(name: &str) -> pb::PodRef {
    pb::PodRef {
        namespace: "default".to_owned(),
        name: name.to_owned(),
        uid: format!("uid-{name}"),
    }
}

async fn bind(agent: &mut AgentServiceClient<Channel>, epoch: u64, name: &str) -> pb::Lease {
    agent
        .bind(pb::BindRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: format!("bind-{name}"),
            pod: Some(pod(name)),
            pod_labels: Default::default(),
            service_account: String::new(),
            service_account_labels: Default::default(),
            attachment: Some(pb::Attachment {
                container_id: format!("c-{name}"),
                ifname: "eth0".to_owned(),
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("bind {name}: {e}"))
        .into_inner()
        .lease
        .unwrap_or_else(|| panic!("bind {name} answered no lease"))
}

/// Pool, subnet, one node with one attached ENI of three addresses; returns the node's epoch.
async fn cluster(addr: SocketAddr) -> u64 {
    let mut admin = AdminServiceClient::new(channel(addr));
    let mut agent = AgentServiceClient::new(channel(addr));
    admin
        .create_pool(pb::CreatePoolRequest {
            request_id: "pool".to_owned(),
            cidr: "100.64.0.0/16".to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("create pool: {e}"));
    admin
        .upsert_subnet_config(pb::UpsertSubnetConfigRequest {
            request_id: "subnet".to_owned(),
            subnet_config: Some(pb::SubnetConfig {
                name: AZ.to_owned(),
                subnet_id: "subnet-011b111c1f11fdf11".to_owned(),
                subnet_cidr: "100.64.1.0/24".to_owned(),
                availability_zone: AZ.to_owned(),
                security_group_ids: vec![SG.to_owned()],
                updated_at_unix_ms: 0,
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("upsert subnet config: {e}"));
    register_with_eni(
        &mut agent,
        &NodeSetup {
            node: NODE,
            instance_id: "i-0123456789abcdef0",
            az: AZ,
            ips: 3,
            eni_id: ENI_ID,
            mac: "02:00:00:00:00:01",
        },
    )
    .await
    .0
}

async fn who_had(
    audit: &mut AuditServiceClient<Channel>,
    ip: &str,
    at: i64,
) -> Result<Vec<pb::Binding>, tonic::Status> {
    audit
        .who_had(pb::WhoHadRequest {
            ip: ip.to_owned(),
            at_unix_ms: at,
            consistency: pb::Consistency::Linearizable.into(),
        })
        .await
        .map(|r| r.into_inner().bindings)
}

fn history_request(kind: pb::EventKeyKind, key: &str) -> pb::HistoryRequest {
    pb::HistoryRequest {
        key_kind: kind.into(),
        key: key.to_owned(),
        ..pb::HistoryRequest::default()
    }
}

/// Every page of a history, following the tokens; the kinds of the events, in order.
async fn history(audit: &mut AuditServiceClient<Channel>, request: pb::HistoryRequest) -> Vec<pb::Event> {
    let mut events = Vec::new();
    let mut request = request;
    for _ in 0..100 {
        let page = audit
            .history(request.clone())
            .await
            .unwrap_or_else(|e| panic!("history {request:?}: {e}"))
            .into_inner();
        if request.limit > 0 {
            assert!(page.events.len() <= request.limit as usize);
        }
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        request.page_token = page.next_page_token;
    }
    panic!("history did not end");
}

fn kinds(events: &[pb::Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

fn invalid(what: &str, result: Result<impl std::fmt::Debug, tonic::Status>, says: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert!(
                status.message().contains(says),
                "{what}: {:?} should say {says:?}",
                status.message()
            );
        }
        Ok(answer) => panic!("{what} was answered: {answer:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_had_and_history_answer_an_auditor_and_retention_refuses_what_it_pruned() {
    let dir = TempDir::new("t47");
    let running = server::start(config(&dir, LedgerConfig::default()))
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let addr = running.grpc_addr();
    assert!(running.wait_for_leader(Duration::from_secs(10)).await.is_some());
    let epoch = cluster(addr).await;
    let mut agent = AgentServiceClient::new(channel(addr));
    let mut audit = AuditServiceClient::new(channel(addr));

    let web0 = bind(&mut agent, epoch, "web-0").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    agent
        .release(pb::ReleaseRequest {
            node: NODE.to_owned(),
            epoch,
            request_id: "release-web-0".to_owned(),
            lease_id: web0.lease_id,
            attachment: None,
            reason: pb::ReleaseReason::CniDel.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
    let web1 = bind(&mut agent, epoch, "web-1").await;
    assert_ne!(web1.ip, web0.ip, "the released address is cooling");

    // Who held web-0's address while it was bound: the whole story of the binding.
    let then = who_had(&mut audit, &web0.ip, web0.bound_at_unix_ms)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(then.len(), 1, "{then:?}");
    let binding = &then[0];
    let lease = binding.lease.clone().unwrap_or_default();
    let owner = lease.owner.clone().unwrap_or_default();
    assert_eq!(owner.pod, Some(pod("web-0")));
    assert_eq!(
        owner.attachment,
        Some(pb::Attachment {
            container_id: "c-web-0".to_owned(),
            ifname: "eth0".to_owned(),
        })
    );
    assert_eq!((lease.node.as_str(), lease.eni_id.as_str()), (NODE, ENI_ID));
    assert_eq!(binding.instance_id, "i-0123456789abcdef0");
    assert_eq!(lease.security_group_ids, vec![SG.to_owned()]);
    assert_eq!(lease.lease_id, web0.lease_id);
    assert_eq!(lease.subnet_id, "subnet-011b111c1f11fdf11");
    assert_eq!(binding.release_reason(), pb::ReleaseReason::CniDel);
    assert!(
        lease.cooling_until_unix_ms > binding.released_at_unix_ms,
        "the release's own cooldown: {lease:?}"
    );
    assert!(binding.released_at_unix_ms > web0.bound_at_unix_ms);
    // At the release, and now: nobody.
    let released_at = binding.released_at_unix_ms;
    assert!(
        who_had(&mut audit, &web0.ip, released_at)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    assert!(
        who_had(&mut audit, &web0.ip, 0)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    // Before the bind: nobody either.
    assert!(
        who_had(&mut audit, &web0.ip, web0.bound_at_unix_ms - 1)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    // web-1 holds its address now, still bound.
    let now = who_had(&mut audit, &web1.ip, 0).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].lease.as_ref().map(|l| l.state()), Some(pb::LeaseState::Bound));
    assert_eq!(
        (now[0].released_at_unix_ms, now[0].release_reason()),
        (0, pb::ReleaseReason::Unspecified)
    );

    // Histories by each kind of key, a page of one event at a time and all at once.
    let by_ip = history(&mut audit, history_request(pb::EventKeyKind::Ip, &web0.ip)).await;
    assert_eq!(kinds(&by_ip), ["EniPlanned", "IpBound", "IpReleased"]);
    let paged = history(
        &mut audit,
        pb::HistoryRequest {
            limit: 1,
            ..history_request(pb::EventKeyKind::Ip, &web0.ip)
        },
    )
    .await;
    assert_eq!(paged, by_ip);
    let by_pod = history(&mut audit, history_request(pb::EventKeyKind::PodName, "default/web-0")).await;
    assert_eq!(kinds(&by_pod), ["IpBound", "IpReleased"]);
    assert_eq!(by_pod[1].cause, "cni_del");
    let by_uid = history(&mut audit, history_request(pb::EventKeyKind::PodUid, "uid-web-1")).await;
    assert_eq!(kinds(&by_uid), ["IpBound"]);
    let by_eni = history(&mut audit, history_request(pb::EventKeyKind::Eni, ENI_ID)).await;
    let by_eni_ref = history(
        &mut audit,
        history_request(pb::EventKeyKind::Eni, &lease.eni_ref.to_string()),
    )
    .await;
    assert_eq!(
        by_eni, by_eni_ref,
        "an ENI's EC2 id and its handle name the same history"
    );
    assert_eq!(
        kinds(&by_eni),
        ["EniPlanned", "EniAttached", "IpBound", "IpReleased", "IpBound"]
    );
    let by_node = history(&mut audit, history_request(pb::EventKeyKind::Node, NODE)).await;
    assert_eq!(kinds(&by_node)[..2], ["NodeRegistered", "EniPlanned"]);
    let by_sg = history(&mut audit, history_request(pb::EventKeyKind::SecurityGroup, SG)).await;
    assert_eq!(kinds(&by_sg)[0], "SubnetConfigUpserted");
    // A time range: from web-0's release on.
    let since_release = history(
        &mut audit,
        pb::HistoryRequest {
            since_unix_ms: released_at,
            ..history_request(pb::EventKeyKind::Eni, ENI_ID)
        },
    )
    .await;
    assert_eq!(kinds(&since_release), ["IpReleased", "IpBound"]);
    let until_release = history(
        &mut audit,
        pb::HistoryRequest {
            until_unix_ms: released_at,
            ..history_request(pb::EventKeyKind::Eni, ENI_ID)
        },
    )
    .await;
    assert_eq!(kinds(&until_release), ["EniPlanned", "EniAttached", "IpBound"]);
    assert!(
        history(
            &mut audit,
            history_request(pb::EventKeyKind::Eni, "eni-0000000000000dead")
        )
        .await
        .is_empty()
    );

    // Bad questions.
    invalid("an IPv6 address", who_had(&mut audit, "::1", 0).await, "IPv6");
    invalid("a short address", who_had(&mut audit, "100.64.1", 0).await, "100.64.1");
    invalid("a negative time", who_had(&mut audit, &web0.ip, -5).await, "at_unix_ms");
    let mut backwards = history_request(pb::EventKeyKind::Ip, &web0.ip);
    (backwards.since_unix_ms, backwards.until_unix_ms) = (2_000, 1_000);
    invalid("until before since", audit.history(backwards).await, "before since");
    let mut forged = history_request(pb::EventKeyKind::Ip, &web0.ip);
    forged.page_token = "next-please".to_owned();
    invalid("a forged page token", audit.history(forged).await, "page token");
    invalid(
        "no key kind",
        audit
            .history(history_request(pb::EventKeyKind::Unspecified, &web0.ip))
            .await,
        "key_kind",
    );
    invalid(
        "a pod without a namespace",
        audit.history(history_request(pb::EventKeyKind::PodName, "web-0")).await,
        "NAMESPACE/NAME",
    );
    invalid(
        "an ENI that is neither",
        audit.history(history_request(pb::EventKeyKind::Eni, "nic-7")).await,
        "eni-",
    );
    running.shutdown().await.unwrap_or_else(|e| panic!("shutdown: {e}"));

    // The same ledger, restarted with a one-second retention.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let retention = LedgerConfig {
        retention: Some(Duration::from_secs(1)),
        prune_interval_ms: 100,
    };
    let running = server::start(config(&dir, retention))
        .await
        .unwrap_or_else(|e| panic!("restart: {e}"));
    let addr = running.grpc_addr();
    assert!(running.wait_for_leader(Duration::from_secs(10)).await.is_some());
    let mut audit = AuditServiceClient::new(channel(addr));
    let start = Instant::now();
    let trimmed = loop {
        match who_had(&mut audit, &web0.ip, web0.bound_at_unix_ms).await {
            Err(status) => break status,
            Ok(_) => {
                assert!(start.elapsed() < Duration::from_secs(20), "never pruned");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(trimmed.code(), Code::OutOfRange, "{trimmed:?}");
    assert!(trimmed.message().contains("retention horizon"), "{}", trimmed.message());
    // web-1 is still bound: the bind that explains it was kept.
    let still = who_had(&mut audit, &web1.ip, 0).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(still.len(), 1);
    assert_eq!(still[0].lease.as_ref().map(|l| l.lease_id), Some(web1.lease_id));
    // Export and Watch from before the horizon are refused too; an export from now is fine.
    let export = audit
        .export(pb::ExportRequest {
            since_unix_ms: web0.bound_at_unix_ms,
            until_unix_ms: 0,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("an export from before the horizon must be refused"));
    assert_eq!(export.code(), Code::OutOfRange);
    let watch = audit
        .watch(pb::WatchRequest {
            from_seq: 1,
            filter: None,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a watch from a pruned seq must be refused"));
    assert_eq!(watch.code(), Code::OutOfRange, "{watch:?}");
    running.shutdown().await.unwrap_or_else(|e| panic!("shutdown: {e}"));
}
