//! The whole agent on a real kernel (privileged: root, network namespaces, nft): a real
//! ipam-server in process, EC2 simulated, and a "node" namespace whose secondary ENI appears as a
//! link with the MAC EC2 returned when EC2 attaches it. The agent configures the ENI's table, the
//! pod's rules and SNAT; everything is read back through netlink. A pod namespace (plumbed as the
//! CNI plugin will) reaches an "outside" namespace and is seen there with the node's primary
//! address, or with its own under external SNAT. Restarting the agent changes nothing.
//!
//! Locally the test skips (printing why) without root; with CI=true it fails instead.

mod agent_world;
mod netns;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use agent_world::Layout;
use agent_world::OnAttach;
use agent_world::World;
use ipam_node_agent::agent;
use ipam_node_agent::ec2::NetworkInterface;
use ipam_node_agent::host::netlink::NetlinkHost;
use ipam_proto::agent::v1 as api;
use ipam_proto::ipam::v1 as pb;
use netns::Reader;
use netns::Topology;

const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_plumbs_a_node_whose_pod_reaches_outside_through_snat_and_survives_a_restart() {
    if !netns::privileged("t45_agent_netns") {
        return;
    }
    let mut topology = Topology::build_bare().await;
    let wiring = topology.eni_wiring(POD_GATEWAY, 24);
    let on_attach: OnAttach = Arc::new(move |eni: &NetworkInterface, device: u8| {
        let mut addresses = vec![eni.primary_ip];
        addresses.extend(&eni.secondary_ips);
        wiring.attach(&eni.mac, device, &addresses);
    });
    let host = Arc::new(
        NetlinkHost::in_netns(topology.node.path())
            .await
            .expect("netlink in the node namespace"),
    );
    let layout = Layout {
        primary_ip: netns::PRIMARY_IP,
        node_cidr: "10.0.0.0/24",
        pod_cidr: "100.64.1.0/24",
        ..Layout::default()
    };
    let world = World::with_host("netns", layout, host, on_attach).await;
    let running = world.start(agent_world::warm_ips(2)).await;

    // The ENI EC2 attached: its link is up with its address, and table 2 routes via the gateway.
    let view = world.node_view().await;
    let eni = view
        .enis
        .iter()
        .find(|e| e.state() == pb::EniState::Attached)
        .expect("an attached ENI")
        .clone();
    assert_eq!(eni.device_index, 1);
    let reader = Reader::open(&topology.node).await;
    let link = reader.link("eth1").await.expect("eth1");
    assert!(link.up, "{link:?}");
    let table = reader.routes(2).await;
    assert!(
        table
            .iter()
            .any(|r| r.dst == (Ipv4Addr::UNSPECIFIED, 0) && r.gateway == Some(POD_GATEWAY)),
        "{table:?}"
    );

    // ADD: the agent binds through the server and installs the pod's rules.
    let mut cni = world.cni().await;
    let added = cni
        .add(agent_world::add_request("web-0", "c0"))
        .await
        .expect("add")
        .into_inner();
    let pod_ip: Ipv4Addr = added.ip.parse().expect("address");
    let to_pod = reader.rules_at(512).await;
    assert!(
        to_pod.iter().any(|r| r.dst == Some((pod_ip, 32)) && r.table == 254),
        "{to_pod:?}"
    );
    let from_pod = reader.rules_at(1536).await;
    assert!(
        from_pod.iter().any(|r| r.src == Some((pod_ip, 32)) && r.table == 2),
        "{from_pod:?}"
    );

    // The plugin's part, done by hand here; then the pod talks to the outside.
    topology.plumb_pod(pod_ip, &added.host_veth_name, &eni.mac, 1);
    topology.start_echo().await;
    let seen = topology
        .source_seen_from_pod(netns::OUTSIDE_IP)
        .await
        .expect("the pod reaches the outside");
    assert_eq!(seen, netns::PRIMARY_IP, "SNAT to the node's primary address");

    // Restart: nothing moves, nothing is lost (once the pool has refilled the bound address).
    agent_world::eventually("the pool to refill", || async {
        (agent_world::warm_count(&world.node_view().await) >= 2).then_some(())
    })
    .await;
    running.stop().await;
    let rules_before = reader.rules().await;
    let table_before = reader.routes(2).await;
    let restarted = world.start(agent_world::warm_ips(2)).await;
    assert_eq!(restarted.first_step.host_fixes, 0, "{:?}", restarted.first_step);
    assert!(restarted.first_step.actions.is_empty(), "{:?}", restarted.first_step);
    assert_eq!(reader.rules().await, rules_before);
    assert_eq!(reader.routes(2).await, table_before);
    let after = world.node_view().await;
    assert!(
        after
            .leases
            .iter()
            .any(|l| l.lease_id == added.lease_id && l.ip == added.ip && l.state() == pb::LeaseState::Bound)
    );
    assert_eq!(
        topology.source_seen_from_pod(netns::OUTSIDE_IP).await.as_ref(),
        Ok(&netns::PRIMARY_IP)
    );
    restarted.stop().await;

    // External SNAT (AWS_VPC_K8S_CNI_EXTERNALSNAT=true): the outside sees the pod's own address.
    let mut spec = world.spec(agent_world::warm_ips(2));
    spec.snat.external = true;
    let external = agent::start(spec).await.expect("start with external SNAT");
    let mut seen = None;
    for _ in 0..20 {
        // New flows only: conntrack keeps the SNAT of a flow that already exists.
        if let Ok(source) = topology.source_seen_from_pod(netns::OUTSIDE_IP).await {
            seen = Some(source);
            if source == pod_ip {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, Some(pod_ip), "external SNAT: the pod's own address");

    // DEL removes the rules.
    let mut cni = world.cni().await;
    let del = cni
        .del(api::DelRequest {
            attachment: Some(api::Attachment {
                container_id: "c0".to_owned(),
                ifname: "eth0".to_owned(),
            }),
            lease_id: added.lease_id,
            pod: None,
            ip: added.ip.clone(),
        })
        .await
        .expect("del")
        .into_inner();
    assert!(del.released);
    assert!(!reader.rules_at(512).await.iter().any(|r| r.dst == Some((pod_ip, 32))));
    assert!(!reader.rules_at(1536).await.iter().any(|r| r.src == Some((pod_ip, 32))));
    external.stop().await;
    world.stop().await;
}
