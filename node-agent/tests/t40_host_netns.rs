//! The host module on a real kernel, in network namespaces (needs root, `ip` and `nft`; skips
//! locally without them, fails with `CI=true`). See `netns/mod.rs` for the topology.
//!
//! Acceptance: a pod reaches a host outside the VPC and is seen there with the node's primary
//! address (SNAT), or with its own address (external SNAT, and SNAT-excluded destinations).

mod netns;

use std::net::Ipv4Addr;
use std::time::Duration;
use std::time::Instant;

use ipam_node_agent::host::EniLink;
use ipam_node_agent::host::EniState;
use ipam_node_agent::host::Host;
use ipam_node_agent::host::HostError;
use ipam_node_agent::host::PodRules;
use ipam_node_agent::host::SnatConfig;
use ipam_node_agent::host::netlink::DEFAULT_ENI_MTU;
use ipam_node_agent::host::netlink::MAIN_TABLE;
use ipam_node_agent::host::netlink::NetlinkHost;
use ipam_node_agent::host::snat;
use netns::*;
use nftables::schema::NfListObject;
use nftables::stmt::Statement;

fn eni() -> EniLink {
    EniLink {
        // As EC2 might spell it: the host must not care about case.
        mac: ENI_MAC.to_ascii_uppercase(),
        device_index: 1,
        primary_ip: ENI_IP,
        prefix_len: 24,
        gateway: ENI_GW,
    }
}

fn snat_config(external: bool) -> SnatConfig {
    SnatConfig {
        external,
        primary_ip: PRIMARY_IP,
        vpc_cidrs: vec![(Ipv4Addr::new(10, 0, 0, 0), 16), (Ipv4Addr::new(100, 64, 0, 0), 16)],
        exclude_cidrs: vec![(Ipv4Addr::new(198, 51, 100, 0), 24)],
    }
}

fn rule(priority: u32, src: Option<Ipv4Addr>, dst: Option<Ipv4Addr>, table: u32) -> RuleInfo {
    RuleInfo {
        priority,
        src: src.map(|ip| (ip, 32)),
        dst: dst.map(|ip| (ip, 32)),
        fwmark: None,
        table,
    }
}

/// Our nftables table without handles (which every re-creation renumbers).
async fn snat_table(host: &NetlinkHost) -> Vec<NfListObject<'static>> {
    let mut objects = host.snat_table().await.expect("list our table");
    for object in &mut objects {
        match object {
            NfListObject::Table(t) => t.handle = None,
            NfListObject::Chain(c) => c.handle = None,
            NfListObject::Rule(r) => r.handle = None,
            _ => {}
        }
    }
    objects
}

fn chains(objects: &[NfListObject<'_>]) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .filter_map(|o| match o {
            NfListObject::Chain(c) => Some(c.name.to_string()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// The table `ip foreign` (someone else's) as the kernel has it, handles included.
async fn foreign_table(node: &Ns) -> Vec<serde_json::Value> {
    let raw = node
        .thread()
        .run(|| {
            nftables::helper::get_current_ruleset_raw(nftables::helper::DEFAULT_NFT, nftables::helper::DEFAULT_ARGS)
        })
        .await
        .expect("namespace thread")
        .expect("list the ruleset");
    let ruleset: serde_json::Value = serde_json::from_str(&raw).expect("JSON");
    ruleset["nftables"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| {
            o["table"]["name"] == "foreign" || o["chain"]["table"] == "foreign" || o["rule"]["table"] == "foreign"
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn configure_eni_builds_its_table_idempotently_and_remove_eni_undoes_it() {
    if !privileged("configure_eni_builds_its_table_idempotently_and_remove_eni_undoes_it") {
        return;
    }
    let topology = Topology::build().await;
    let host = NetlinkHost::in_netns(topology.node.path())
        .await
        .expect("host in the node namespace");
    let kernel = Reader::open(&topology.node).await;
    let eni = eni();

    // As attached: the link exists, down, unconfigured.
    let before = host.eni_state(&eni.mac).await.expect("state").expect("the link exists");
    assert_eq!(
        before,
        EniState {
            link: "eth1".into(),
            mac: ENI_MAC.into(),
            up: false,
            table: None,
            gateway: None
        }
    );

    host.configure_eni(&eni).await.expect("configure");
    let link = kernel.link("eth1").await.expect("eth1");
    assert!(link.up, "the link is up");
    assert_eq!(link.mtu, Some(DEFAULT_ENI_MTU));
    assert_eq!(kernel.addresses(link.index).await, vec![(ENI_IP, 24)]);
    assert_eq!(
        kernel.routes(2).await,
        vec![
            RouteInfo {
                table: 2,
                dst: (Ipv4Addr::UNSPECIFIED, 0),
                gateway: Some(ENI_GW),
                oif: Some(link.index),
                link_scope: false
            },
            RouteInfo {
                table: 2,
                dst: (ENI_GW, 32),
                gateway: None,
                oif: Some(link.index),
                link_scope: true
            },
        ]
    );
    assert!(
        kernel
            .routes(MAIN_TABLE)
            .await
            .iter()
            .all(|r| r.oif != Some(link.index)),
        "the main table does not route through the secondary ENI: {:?}",
        kernel.routes(MAIN_TABLE).await
    );
    assert_eq!(kernel.rules_at(32765).await, vec![rule(32765, Some(ENI_IP), None, 2)]);
    assert_eq!(
        host.eni_state(ENI_MAC).await.expect("state"),
        Some(EniState {
            link: "eth1".into(),
            mac: ENI_MAC.into(),
            up: true,
            table: Some(2),
            gateway: Some(ENI_GW)
        })
    );

    // Again: nothing changes.
    let snapshot = (
        kernel.rules().await,
        kernel.routes(2).await,
        kernel.routes(MAIN_TABLE).await,
    );
    host.configure_eni(&eni).await.expect("configure again");
    assert_eq!(
        (
            kernel.rules().await,
            kernel.routes(2).await,
            kernel.routes(MAIN_TABLE).await
        ),
        snapshot
    );

    // The kernel's own route lookup: traffic from the ENI's address leaves through it.
    let resolved = kernel.route_get(OUTSIDE_IP, ENI_IP).await;
    assert_eq!(
        (resolved.table, resolved.gateway, resolved.oif),
        (2, Some(ENI_GW), Some(link.index))
    );

    host.remove_eni(&eni).await.expect("remove");
    assert_eq!(kernel.routes(2).await, vec![]);
    assert_eq!(kernel.rules_at(32765).await, vec![]);
    assert_eq!(kernel.addresses(link.index).await, vec![]);
    assert_eq!(
        host.eni_state(ENI_MAC).await.expect("state").and_then(|s| s.table),
        None
    );
    host.remove_eni(&eni).await.expect("removing what is gone is fine");

    let unknown = EniLink {
        mac: "02:00:00:00:09:99".into(),
        ..eni
    };
    assert!(matches!(host.configure_eni(&unknown).await, Err(HostError::Netlink(_))));
    assert_eq!(host.eni_state(&unknown.mac).await.expect("state"), None);
}

#[tokio::test]
async fn pod_rules_are_idempotent_replaced_removed_and_rebuilt_after_a_restart() {
    if !privileged("pod_rules_are_idempotent_replaced_removed_and_rebuilt_after_a_restart") {
        return;
    }
    let topology = Topology::build().await;
    let host = NetlinkHost::in_netns(topology.node.path())
        .await
        .expect("host in the node namespace");
    let kernel = Reader::open(&topology.node).await;
    let pod = POD_IP;
    let other = Ipv4Addr::new(100, 64, 0, 21);
    let primary_eni_pod = Ipv4Addr::new(10, 0, 0, 30);

    host.add_pod_rules(&PodRules { ip: pod, table: 2 }).await.expect("add");
    assert_eq!(kernel.rules_at(512).await, vec![rule(512, None, Some(pod), MAIN_TABLE)]);
    assert_eq!(kernel.rules_at(1536).await, vec![rule(1536, Some(pod), None, 2)]);
    let snapshot = kernel.rules().await;
    host.add_pod_rules(&PodRules { ip: pod, table: 2 })
        .await
        .expect("add again");
    assert_eq!(kernel.rules().await, snapshot, "adding again changes nothing");

    // Another table replaces the rule.
    host.add_pod_rules(&PodRules { ip: pod, table: 3 }).await.expect("move");
    assert_eq!(kernel.rules_at(1536).await, vec![rule(1536, Some(pod), None, 3)]);
    assert_eq!(kernel.rules_at(512).await, vec![rule(512, None, Some(pod), MAIN_TABLE)]);

    host.add_pod_rules(&PodRules { ip: other, table: 2 })
        .await
        .expect("add other");
    host.add_pod_rules(&PodRules {
        ip: primary_eni_pod,
        table: MAIN_TABLE,
    })
    .await
    .expect("add primary-ENI pod");
    assert!(
        kernel
            .rules_at(1536)
            .await
            .iter()
            .all(|r| r.src != Some((primary_eni_pod, 32))),
        "main needs no 1536 rule"
    );

    // An older VPC CNI's per-CIDR rule, found by a restarted agent.
    let legacy = Ipv4Addr::new(100, 64, 0, 22);
    topology.node.ip(&format!("rule add to {legacy} lookup main pref 512"));
    topology
        .node
        .ip(&format!("rule add from {legacy} to 10.0.0.0/16 lookup 2 pref 1536"));

    let want = vec![
        PodRules {
            ip: primary_eni_pod,
            table: MAIN_TABLE,
        },
        PodRules { ip: pod, table: 3 },
        PodRules { ip: other, table: 2 },
        PodRules { ip: legacy, table: 2 },
    ];
    assert_eq!(host.pod_rules().await.expect("pod rules"), want);
    let restarted = NetlinkHost::in_netns(topology.node.path())
        .await
        .expect("a second host");
    assert_eq!(restarted.pod_rules().await.expect("pod rules after a restart"), want);

    restarted
        .add_pod_rules(&PodRules { ip: legacy, table: 2 })
        .await
        .expect("rewrite the legacy rule");
    let legacy_rules: Vec<RuleInfo> = kernel
        .rules_at(1536)
        .await
        .into_iter()
        .filter(|r| r.src == Some((legacy, 32)))
        .collect();
    assert_eq!(legacy_rules, vec![rule(1536, Some(legacy), None, 2)]);

    host.del_pod_rules(pod).await.expect("delete");
    let rules = kernel.rules().await;
    assert!(
        rules
            .iter()
            .all(|r| r.src != Some((pod, 32)) && r.dst != Some((pod, 32))),
        "{rules:?}"
    );
    host.del_pod_rules(pod).await.expect("deleting what is gone is fine");

    // Removing ENI 1 (table 2) takes its pods' rules with it.
    host.remove_eni(&eni()).await.expect("remove the ENI");
    assert_eq!(
        host.pod_rules().await.expect("pod rules"),
        vec![PodRules {
            ip: primary_eni_pod,
            table: MAIN_TABLE
        }]
    );
}

#[tokio::test]
async fn snat_shows_the_primary_address_outside_the_vpc_but_not_to_excluded_cidrs() {
    if !privileged("snat_shows_the_primary_address_outside_the_vpc_but_not_to_excluded_cidrs") {
        return;
    }
    let mut topology = Topology::build().await;
    topology.start_echo().await;
    let host = NetlinkHost::in_netns(topology.node.path())
        .await
        .expect("host in the node namespace");
    let kernel = Reader::open(&topology.node).await;

    // Someone else's table, which we must never touch.
    topology.node.nft(
        "table ip foreign {
            chain post {
                type filter hook postrouting priority 0; policy accept;
                ip daddr 192.0.2.1 accept
            }
        }",
    );
    let foreign = foreign_table(&topology.node).await;
    assert_eq!(foreign.len(), 3, "{foreign:?}");

    host.configure_eni(&eni()).await.expect("configure the ENI");
    host.add_pod_rules(&PodRules { ip: POD_IP, table: 2 })
        .await
        .expect("pod rules");
    host.configure_snat(&snat_config(false)).await.expect("SNAT");

    assert_eq!(
        kernel.rules_at(1024).await,
        vec![RuleInfo {
            priority: 1024,
            src: None,
            dst: None,
            fwmark: Some((0x80, 0x80)),
            table: MAIN_TABLE
        }]
    );
    let table = snat_table(&host).await;
    assert_eq!(
        chains(&table),
        [snat::CHAIN_MARK_RESTORE, snat::CHAIN_SNAT, snat::CHAIN_SNAT_MARK]
    );
    let snat_to = table.iter().find_map(|o| match o {
        NfListObject::Rule(r) if r.chain == snat::CHAIN_SNAT => r.expr.iter().find_map(|s| match s {
            Statement::SNAT(Some(nat)) => nat.addr.clone(),
            _ => None,
        }),
        _ => None,
    });
    assert_eq!(
        snat_to,
        Some(nftables::expr::Expression::String(PRIMARY_IP.to_string().into()))
    );

    assert_eq!(
        topology.source_seen_from_pod(OUTSIDE_IP).await,
        Ok(PRIMARY_IP),
        "outside the VPC: SNATed"
    );
    assert_eq!(
        topology.source_seen_from_pod(EXCLUDED_IP).await,
        Ok(POD_IP),
        "an excluded CIDR: not SNATed"
    );

    // Re-applying: the same table, the same rules, the same behaviour.
    let rules = kernel.rules().await;
    host.configure_snat(&snat_config(false)).await.expect("SNAT again");
    assert_eq!(snat_table(&host).await, table);
    assert_eq!(kernel.rules().await, rules);
    assert_eq!(topology.source_seen_from_pod(OUTSIDE_IP).await, Ok(PRIMARY_IP));

    assert_eq!(
        foreign_table(&topology.node).await,
        foreign,
        "someone else's table is untouched"
    );
}

#[tokio::test]
async fn external_snat_shows_the_pod_address_outside_the_vpc() {
    if !privileged("external_snat_shows_the_pod_address_outside_the_vpc") {
        return;
    }
    let mut topology = Topology::build().await;
    topology.start_echo().await;
    let host = NetlinkHost::in_netns(topology.node.path())
        .await
        .expect("host in the node namespace");
    let kernel = Reader::open(&topology.node).await;

    host.configure_eni(&eni()).await.expect("configure the ENI");
    host.add_pod_rules(&PodRules { ip: POD_IP, table: 2 })
        .await
        .expect("pod rules");
    host.configure_snat(&snat_config(false)).await.expect("SNAT first");
    assert_eq!(topology.source_seen_from_pod(OUTSIDE_IP).await, Ok(PRIMARY_IP));

    host.configure_snat(&snat_config(true)).await.expect("external SNAT");
    // The pod's one 1536 rule covers every destination; nothing NATs or marks its connections.
    assert_eq!(kernel.rules_at(1536).await, vec![rule(1536, Some(POD_IP), None, 2)]);
    let table = snat_table(&host).await;
    assert_eq!(
        chains(&table),
        [snat::CHAIN_MARK_RESTORE],
        "only the NodePort mark remains"
    );
    assert_eq!(
        topology.source_seen_from_pod(OUTSIDE_IP).await,
        Ok(POD_IP),
        "external SNAT: the pod's own address"
    );

    host.configure_snat(&snat_config(true)).await.expect("external again");
    assert_eq!(snat_table(&host).await, table);
    assert_eq!(topology.source_seen_from_pod(OUTSIDE_IP).await, Ok(POD_IP));
}

#[tokio::test]
async fn wait_for_link_sees_a_late_link_and_gives_up_in_time() {
    if !privileged("wait_for_link_sees_a_late_link_and_gives_up_in_time") {
        return;
    }
    let topology = Topology::build().await;
    let host = NetlinkHost::in_netns(topology.node.path())
        .await
        .expect("host in the node namespace");

    assert_eq!(
        host.wait_for_link(ENI_MAC, Duration::from_secs(1))
            .await
            .expect("present"),
        "eth1"
    );

    let late_mac = "02:00:00:00:02:a0";
    let node = topology.node.name.clone();
    let attach = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let command = format!("-n {node} link add eth2 address {late_mac} type veth peer name eth2-peer");
        ip(&command.split_whitespace().collect::<Vec<_>>());
    });
    let name = host
        .wait_for_link(late_mac, Duration::from_secs(10))
        .await
        .expect("the late link");
    assert_eq!(name, "eth2");
    attach.await.expect("attach task");

    let started = Instant::now();
    let err = host
        .wait_for_link("02:00:00:00:03:a0", Duration::from_millis(300))
        .await
        .expect_err("never comes");
    assert!(matches!(err, HostError::LinkTimeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        started.elapsed()
    );
    assert!(matches!(
        host.wait_for_link("not a mac", Duration::from_millis(10)).await,
        Err(HostError::Invalid(_))
    ));
}
