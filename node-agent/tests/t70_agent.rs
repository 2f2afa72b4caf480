//! The agent end to end, without privileges: a real ipam-server in process, EC2 simulated
//! (limits, throttling), the host in memory (links appear when EC2 attaches an ENI), and the CNI
//! plugin's calls over the real unix socket.
//!
//! * the warm pool grows to its target through intents (server first, then EC2), tagged so a
//!   restarted agent finds them, with each ENI's table configured on the host;
//! * ADD / CHECK / DEL / GC / STATUS over the socket, with the host's pod rules following;
//! * restarting the agent with pods running changes nothing (addresses, rules, EC2);
//! * a crash between CreateNetworkInterface and AttachNetworkInterface: the next agent attaches
//!   the created ENI (no second create, nothing leaked);
//! * a planned ENI whose create never happened is created by the next agent with the same token.

mod agent_world;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use agent_world::*;
use ipam_node_agent::agent;
use ipam_node_agent::cni_backend::PodDirectory;
use ipam_node_agent::cni_backend::PodMeta;
use ipam_node_agent::ec2::CreateEni;
use ipam_node_agent::ec2::Ec2;
use ipam_node_agent::ec2::EniFilter;
use ipam_node_agent::ec2::InterfaceType;
use ipam_node_agent::ec2::Tag;
use ipam_node_agent::ec2::sim::Operation;
use ipam_node_agent::ec2::tags;
use ipam_node_agent::host::Host;
use ipam_proto::agent::v1 as api;
use ipam_proto::ipam::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_through_intents_and_pods_bind_over_the_socket() {
    let world = World::new("grow").await;
    let running = world.start(warm_ips(3)).await;
    assert!(running.first_step.actions.len() == 1, "{:?}", running.first_step);

    // The first step planned one ENI with 3 pod addresses; it is attached, tagged, and its
    // table is configured on the host.
    let view = world.node_view().await;
    let enis: Vec<_> = view
        .enis
        .iter()
        .filter(|e| e.state() == pb::EniState::Attached)
        .collect();
    assert_eq!(enis.len(), 1, "{view:?}");
    let eni = enis[0];
    assert_eq!(eni.device_index, 1);
    assert_eq!(warm_count(&view), 3);
    let in_ec2 = world
        .ec2
        .describe_network_interfaces(&EniFilter {
            eni_ids: vec![eni.eni_id.clone()],
            ..EniFilter::default()
        })
        .await
        .expect("describe");
    assert_eq!(in_ec2.len(), 1);
    assert_eq!(in_ec2[0].tag(tags::NODE), Some(NODE));
    assert_eq!(in_ec2[0].tag(tags::INTENT), Some(eni.intent_token.as_str()));
    assert_eq!(in_ec2[0].subnet_id, POD_SUBNET);
    assert_eq!(
        in_ec2[0].secondary_ips.len(),
        3,
        "explicit addresses, as the server chose"
    );
    let configured = world.host.enis();
    let link = configured.get(&eni.mac).expect("the ENI's table is configured");
    assert_eq!(link.table(), 2);
    assert_eq!(link.gateway, Ipv4Addr::new(100, 64, 1, 1));
    assert_eq!(world.host.snat().map(|s| s.primary_ip), Some(PRIMARY_IP));

    // ADD over the socket: the address comes with everything the plugin needs; rules installed.
    let mut cni = world.cni().await;
    let status = cni.status(api::StatusRequest {}).await.expect("status").into_inner();
    assert!(status.ready, "{status:?}");
    let added = cni.add(add_request("web-0", "c0")).await.expect("add").into_inner();
    let ip: Ipv4Addr = added.ip.parse().expect("an IPv4 address");
    assert!(eni.addresses.iter().any(|a| a.ip == added.ip));
    assert_eq!(added.route_table_id, 2);
    assert_eq!(added.gateway, "169.254.1.1");
    assert_eq!(added.prefix_length, 32);
    assert_eq!(added.eni_id, eni.eni_id);
    assert!(added.host_veth_name.starts_with("eni") && added.host_veth_name.len() == 14);
    let rules = world.host.pod_rules().await.expect("rules");
    assert!(rules.iter().any(|r| r.ip == ip && r.table == 2), "{rules:?}");

    // A retried ADD returns the same lease.
    let again = cni
        .add(add_request("web-0", "c0"))
        .await
        .expect("add again")
        .into_inner();
    assert_eq!((again.lease_id, again.ip.as_str()), (added.lease_id, added.ip.as_str()));

    // CHECK: fine; with a wrong lease id, not.
    let check = |lease_id: u64, ip: &str| api::CheckRequest {
        attachment: Some(api::Attachment {
            container_id: "c0".to_owned(),
            ifname: "eth0".to_owned(),
        }),
        lease_id,
        ip: ip.to_owned(),
    };
    let ok = cni
        .check(check(added.lease_id, &added.ip))
        .await
        .expect("check")
        .into_inner();
    assert!(ok.ok, "{ok:?}");
    let wrong = cni
        .check(check(added.lease_id + 999, &added.ip))
        .await
        .expect("check")
        .into_inner();
    assert!(!wrong.ok && wrong.reason.contains("not held"), "{wrong:?}");

    // The pool refills: the bound address is replaced by a warm one (WARM_IP_TARGET = 3).
    eventually("the pool to refill", || async {
        (warm_count(&world.node_view().await) >= 3).then_some(())
    })
    .await;

    // A DEL naming another lease id frees nothing.
    let stale = cni
        .del(api::DelRequest {
            attachment: Some(api::Attachment {
                container_id: "c-other".to_owned(),
                ifname: "eth0".to_owned(),
            }),
            lease_id: 0,
            pod: None,
            ip: added.ip.clone(),
        })
        .await
        .expect("del of an unknown attachment")
        .into_inner();
    assert!(!stale.released);
    // DEL releases and removes the rules; twice is fine.
    let del = api::DelRequest {
        attachment: Some(api::Attachment {
            container_id: "c0".to_owned(),
            ifname: "eth0".to_owned(),
        }),
        lease_id: added.lease_id,
        pod: None,
        ip: added.ip.clone(),
    };
    assert!(cni.del(del.clone()).await.expect("del").into_inner().released);
    assert!(!cni.del(del).await.expect("second del").into_inner().released);
    let rules = world.host.pod_rules().await.expect("rules");
    assert!(!rules.iter().any(|r| r.ip == ip), "{rules:?}");

    // GC: of two pods, the runtime still has one.
    let a = cni.add(add_request("gc-a", "ca")).await.expect("add a").into_inner();
    let b = cni.add(add_request("gc-b", "cb")).await.expect("add b").into_inner();
    let gc = cni
        .gc(api::GcRequest {
            valid_attachments: vec![api::Attachment {
                container_id: "ca".to_owned(),
                ifname: "eth0".to_owned(),
            }],
        })
        .await
        .expect("gc")
        .into_inner();
    assert_eq!(gc.released, 1);
    let rules = world.host.pod_rules().await.expect("rules");
    assert!(rules.iter().any(|r| r.ip.to_string() == a.ip));
    assert!(!rules.iter().any(|r| r.ip.to_string() == b.ip));

    // Bad input is refused with a clear message.
    let mut bad = add_request("x", "cx");
    bad.pod = None;
    let refused = cni.add(bad).await.expect_err("no pod");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("K8S_POD_NAMESPACE"), "{}", refused.message());

    // The pool's gauges and the CNI counters (the VPC CNI's set, our prefix).
    let text = world.metrics.encode().expect("metrics");
    for line in [
        "ipam_agent_add_ip_req_total 4",
        "ipam_agent_del_ip_req_total{reason=\"cni_del\"} 1",
        "ipam_agent_eni_max 3",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    running.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_agent_with_pods_running_changes_nothing() {
    let world = World::new("restart").await;
    let running = world.start(warm_ips(2)).await;
    let mut cni = world.cni().await;
    let mut pods = Vec::new();
    for i in 0..4 {
        let added = cni
            .add(add_request(&format!("p{i}"), &format!("c{i}")))
            .await
            .expect("add")
            .into_inner();
        pods.push((added.lease_id, added.ip));
    }
    // Let the pool settle, then take the picture.
    eventually("the pool to settle", || async {
        (warm_count(&world.node_view().await) >= 2).then_some(())
    })
    .await;
    running.stop().await;
    let before_view = world.node_view().await;
    let before_rules = world.host.pod_rules().await.expect("rules");
    let before_changes = world.host.changes();
    let before_enis = world.ec2.instance_enis(INSTANCE);
    let before_mutations: u64 = [
        Operation::CreateNetworkInterface,
        Operation::AttachNetworkInterface,
        Operation::AssignPrivateIpAddresses,
        Operation::UnassignPrivateIpAddresses,
        Operation::DetachNetworkInterface,
        Operation::DeleteNetworkInterface,
    ]
    .iter()
    .map(|op| world.ec2.stats(*op).calls)
    .sum();

    let restarted = world.start(warm_ips(2)).await;
    assert_eq!(restarted.first_step.resolved, 0, "{:?}", restarted.first_step);
    assert_eq!(restarted.first_step.host_fixes, 0, "{:?}", restarted.first_step);
    assert!(restarted.first_step.actions.is_empty(), "{:?}", restarted.first_step);
    let after_view = world.node_view().await;
    // Same leases, same addresses, same ENIs; only the epoch moved.
    assert_eq!(after_view.leases, before_view.leases);
    assert_eq!(after_view.enis, before_view.enis);
    for (lease_id, ip) in &pods {
        assert!(
            after_view
                .leases
                .iter()
                .any(|l| l.lease_id == *lease_id && &l.ip == ip && l.state() == pb::LeaseState::Bound)
        );
    }
    assert_eq!(world.host.pod_rules().await.expect("rules"), before_rules);
    assert_eq!(world.host.changes(), before_changes, "the restart touched the host");
    assert_eq!(world.ec2.instance_enis(INSTANCE), before_enis);
    let after_mutations: u64 = [
        Operation::CreateNetworkInterface,
        Operation::AttachNetworkInterface,
        Operation::AssignPrivateIpAddresses,
        Operation::UnassignPrivateIpAddresses,
        Operation::DetachNetworkInterface,
        Operation::DeleteNetworkInterface,
    ]
    .iter()
    .map(|op| world.ec2.stats(*op).calls)
    .sum();
    assert_eq!(
        after_mutations, before_mutations,
        "the restart called EC2 to change something"
    );

    // A rule lost while the agent was down comes back at the next start.
    restarted.stop().await;
    let victim: Ipv4Addr = pods[0].1.parse().expect("ip");
    world.host.del_pod_rules(victim).await.expect("del rule");
    let healed = world.start(warm_ips(2)).await;
    assert_eq!(healed.first_step.host_fixes, 1, "{:?}", healed.first_step);
    assert!(
        world
            .host
            .pod_rules()
            .await
            .expect("rules")
            .iter()
            .any(|r| r.ip == victim)
    );
    healed.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_create_and_attach_is_resumed_by_the_next_agent() {
    let world = World::new("crash").await;
    // The attach's answer is lost (EC2 unavailable) every time: the first agent cannot finish.
    world
        .ec2
        .fail_next(Operation::AttachNetworkInterface, "Unavailable", 1_000);
    let spec = world.spec(warm_ips(2));
    let first = agent::start(spec)
        .await
        .expect("the agent serves even when its pool cannot grow");
    assert!(
        first.first_step_error.is_some(),
        "the first step should fail at the attach"
    );
    assert!(!first.readiness().ready);
    first.stop().await;
    // The server has the ENI planned, EC2 has it created and unattached.
    let view = world.node_view().await;
    assert_eq!(view.enis.len(), 1);
    assert_eq!(view.enis[0].state(), pb::EniState::Planned);
    let token = view.enis[0].intent_token.clone();
    let created = world
        .tagged_enis()
        .await
        .into_iter()
        .filter(|e| e.tag(tags::INTENT) == Some(token.as_str()))
        .collect::<Vec<_>>();
    assert_eq!(created.len(), 1);
    assert!(created[0].attachment.is_none());

    // EC2 recovers; the next agent attaches the same ENI (no second create) and reports it.
    world.ec2.clear_faults();
    let creates = world.ec2.stats(Operation::CreateNetworkInterface).calls;
    let running = world.start(warm_ips(2)).await;
    assert!(running.first_step.resolved >= 1, "{:?}", running.first_step);
    assert_eq!(world.ec2.stats(Operation::CreateNetworkInterface).calls, creates);
    let view = world.node_view().await;
    assert_eq!(view.enis.len(), 1);
    assert_eq!(view.enis[0].state(), pb::EniState::Attached);
    assert_eq!(view.enis[0].eni_id, created[0].eni_id);
    // Nothing leaked: every ENI of the node in EC2 is attached and known to the server.
    for eni in world.tagged_enis().await {
        assert!(eni.attachment.is_some(), "leaked: {eni:?}");
        assert!(view.enis.iter().any(|e| e.eni_id == eni.eni_id));
    }
    running.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_whose_create_never_happened_is_created_with_its_token() {
    let world = World::new("notcreated").await;
    // CreateNetworkInterface fails with an unknown outcome and took no effect.
    world
        .ec2
        .fail_next(Operation::CreateNetworkInterface, "InternalError", 1_000);
    let first = agent::start(world.spec(warm_ips(2))).await.expect("start");
    assert!(first.first_step_error.is_some());
    first.stop().await;
    let view = world.node_view().await;
    assert_eq!(view.enis.len(), 1);
    assert_eq!(view.enis[0].state(), pb::EniState::Planned);
    let token = view.enis[0].intent_token.clone();
    world.ec2.clear_faults();
    let running = world.start(warm_ips(2)).await;
    let view = world.node_view().await;
    assert_eq!(view.enis.len(), 1, "{view:?}");
    assert_eq!(view.enis[0].state(), pb::EniState::Attached);
    let ours = world.tagged_enis().await;
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].tag(tags::INTENT), Some(token.as_str()));
    assert_eq!(warm_count(&view), 2);
    running.stop().await;
    world.stop().await;
}

/// Pods as a synced pod list would have them.
#[derive(Debug)]
struct KnownPods(Vec<&'static str>);

impl PodDirectory for KnownPods {
    fn pod(&self, namespace: &str, name: &str) -> Option<PodMeta> {
        (namespace == "default" && self.0.contains(&name)).then(|| PodMeta {
            uid: format!("uid-{name}"),
            ..PodMeta::default()
        })
    }

    fn knows_pods(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_vanished_while_the_agent_was_down_loses_its_lease_at_start() {
    let world = World::new("orphans").await;
    let running = world.start(warm_ips(2)).await;
    let mut cni = world.cni().await;
    let kept = cni.add(add_request("kept", "ck")).await.expect("add").into_inner();
    let gone = cni.add(add_request("gone", "cg")).await.expect("add").into_inner();
    running.stop().await;

    // Within the grace period nothing is released, even for a pod the list does not have.
    let mut spec = world.spec(warm_ips(2));
    spec.pods = Arc::new(KnownPods(vec!["kept"]));
    spec.orphan_grace = Duration::from_secs(3600);
    let young = agent::start(spec).await.expect("start");
    assert_eq!(young.orphans_released, 0);
    young.stop().await;

    let mut spec = world.spec(warm_ips(2));
    spec.pods = Arc::new(KnownPods(vec!["kept"]));
    spec.orphan_grace = Duration::ZERO;
    let running = agent::start(spec).await.expect("start");
    assert_eq!(running.orphans_released, 1);
    let view = world.node_view().await;
    let state = |lease_id: u64| {
        view.leases
            .iter()
            .find(|l| l.lease_id == lease_id)
            .map(pb::Lease::state)
    };
    assert_eq!(state(kept.lease_id), Some(pb::LeaseState::Bound));
    // Released: no longer bound; its address cools on its ENI.
    assert_ne!(state(gone.lease_id), Some(pb::LeaseState::Bound));
    let address = view
        .enis
        .iter()
        .flat_map(|e| &e.addresses)
        .find(|a| a.ip == gone.ip)
        .expect("the address is still on its ENI");
    assert_eq!(address.state(), pb::AddressState::Cooling);
    let rules = world.host.pod_rules().await.expect("rules");
    assert!(rules.iter().any(|r| r.ip.to_string() == kept.ip));
    assert!(!rules.iter().any(|r| r.ip.to_string() == gone.ip));
    running.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_whose_answer_was_lost_is_reported_by_the_next_agent() {
    let world = World::new("done").await;
    // The attach takes effect in EC2, its answer is lost: EC2 has the ENI attached, the server
    // still has it planned.
    world
        .ec2
        .fail_next_after_effect(Operation::AttachNetworkInterface, "InternalError", 1);
    let first = agent::start(world.spec(warm_ips(2))).await.expect("start");
    assert!(first.first_step_error.is_some());
    first.stop().await;
    let view = world.node_view().await;
    assert_eq!(view.enis[0].state(), pb::EniState::Planned);
    let attaches = world.ec2.stats(Operation::AttachNetworkInterface).calls;
    let running = world.start(warm_ips(2)).await;
    assert!(running.first_step_error.is_none(), "{:?}", running.first_step_error);
    let view = world.node_view().await;
    assert_eq!(view.enis.len(), 1);
    assert_eq!(view.enis[0].state(), pb::EniState::Attached);
    assert_eq!(
        world.ec2.stats(Operation::AttachNetworkInterface).calls,
        attaches,
        "no second attach: EC2 already had it attached"
    );
    assert_eq!(world.tagged_enis().await.len(), 1);
    running.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unattached_eni_of_this_node_that_no_plan_explains_is_deleted_at_start() {
    let world = World::new("leak").await;
    let running = world.start(warm_ips(2)).await;
    running.stop().await;
    // An ENI with this node's tags, created and never attached (a plan the server dropped).
    let view = world.node_view().await;
    let mut tags = vec![
        Tag::new(tags::NODE, NODE),
        Tag::new(tags::INSTANCE_ID, INSTANCE),
        Tag::new(tags::INTENT, "ipam-leaked"),
    ];
    tags.push(Tag::new(tags::CLUSTER, running_cluster_tag(&world).await));
    let leaked = world
        .ec2
        .create_network_interface(&CreateEni {
            subnet_id: POD_SUBNET.to_owned(),
            description: "leaked".to_owned(),
            security_groups: Vec::new(),
            primary_ip: Ipv4Addr::new(100, 64, 1, 200),
            secondary_ips: Vec::new(),
            interface_type: InterfaceType::Interface,
            tags,
            client_token: "ipam-leaked".to_owned(),
        })
        .await
        .expect("create");
    // Another instance's ENI under the same node name is not ours to delete.
    let foreign = world
        .ec2
        .create_network_interface(&CreateEni {
            subnet_id: POD_SUBNET.to_owned(),
            description: "foreign".to_owned(),
            security_groups: Vec::new(),
            primary_ip: Ipv4Addr::new(100, 64, 1, 201),
            secondary_ips: Vec::new(),
            interface_type: InterfaceType::Interface,
            tags: vec![
                Tag::new(tags::NODE, NODE),
                Tag::new(tags::INSTANCE_ID, "i-0fedcba9876543210"),
                Tag::new(tags::CLUSTER, running_cluster_tag(&world).await),
            ],
            client_token: "other".to_owned(),
        })
        .await
        .expect("create");
    let restarted = world.start(warm_ips(2)).await;
    assert_eq!(restarted.first_step.resolved, 1, "{:?}", restarted.first_step);
    let ids: Vec<String> = world.tagged_enis().await.into_iter().map(|e| e.eni_id).collect();
    assert!(!ids.contains(&leaked.eni_id), "the leaked ENI is deleted");
    assert!(ids.contains(&foreign.eni_id), "another instance's ENI is left alone");
    assert_eq!(world.node_view().await.enis, view.enis);
    restarted.stop().await;
    world.stop().await;
}

/// The cluster tag the server hands out (its token prefix).
async fn running_cluster_tag(world: &World<ipam_node_agent::host::mem::MemHost>) -> String {
    let mut admin = ipam_proto::ipam::v1::admin_service_client::AdminServiceClient::new(channel(world.addr));
    admin
        .get_settings(pb::GetSettingsRequest {})
        .await
        .expect("settings")
        .into_inner()
        .settings
        .expect("settings")
        .token_prefix
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_instance_fences_the_first_which_stops_and_leaves_its_socket() {
    let world = World::new("fence").await;
    let mut admin = ipam_proto::ipam::v1::admin_service_client::AdminServiceClient::new(channel(world.addr));
    let current = admin
        .get_settings(pb::GetSettingsRequest {})
        .await
        .expect("settings")
        .into_inner()
        .settings
        .expect("settings");
    admin
        .update_settings(pb::UpdateSettingsRequest {
            request_id: "fast-heartbeats".to_owned(),
            settings: Some(pb::Settings {
                heartbeat_ttl_ms: 1000,
                ..current
            }),
        })
        .await
        .expect("settings");
    let first = world.start(warm_ips(2)).await;
    let second = world.start(warm_ips(2)).await;
    assert!(second.registered.epoch > first.registered.epoch);
    let reason = tokio::time::timeout(Duration::from_secs(10), first.fatal())
        .await
        .expect("the first agent notices the newer instance");
    assert!(reason.contains("another agent instance"), "{reason}");
    first.stop().await;
    // The newer instance's socket survives the older one's exit.
    let mut cni = world.cni().await;
    let status = cni.status(api::StatusRequest {}).await.expect("status").into_inner();
    assert!(status.ready, "{status:?}");
    second.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_learnt_other_limits_keeps_the_clusters_and_the_node() {
    let world = World::new("limits").await;
    let running = world.start(warm_ips(2)).await;
    let mut cni = world.cni().await;
    let added = cni.add(add_request("kept", "ck")).await.expect("add").into_inner();
    running.stop().await;
    let before = world.node_view().await;
    let mut spec = world.spec(warm_ips(2));
    if let Some(limits) = spec.registration.limits.as_mut() {
        limits.ipv4_per_eni += 5;
    }
    let restarted = agent::start(spec).await.expect("start");
    let after = world.node_view().await;
    let ids = |view: &pb::GetNodeResponse| {
        view.enis
            .iter()
            .map(|e| (e.eni_ref, e.eni_id.clone(), e.state()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before), "the node's ENIs are not forgotten");
    assert!(
        after
            .leases
            .iter()
            .any(|l| l.lease_id == added.lease_id && l.state() == pb::LeaseState::Bound)
    );
    assert_eq!(after.node.and_then(|n| n.limits), before.node.and_then(|n| n.limits));
    restarted.stop().await;
    world.stop().await;
}
