//! Privileged: the pod plumbing in real network namespaces. Needs root (skips locally with a
//! printed reason, fails with `CI=true`). Every test makes its own "host" namespace and plumbs
//! into it, so the machine's network is never touched; namespaces are removed by guards.

mod plumb_ns;

use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipam_cni_plugin::plumbing;
use ipam_cni_plugin::plumbing::PlumbError;
use ipam_cni_plugin::plumbing::PodLink;
use plumb_ns::NsHolder;
use plumb_ns::TestNs;
use plumb_ns::block_on;
use plumb_ns::has_flag;
use plumb_ns::on_thread_in;
use serde_json::Value;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const MTU: u32 = 9001;

static VETHS: AtomicU32 = AtomicU32::new(0);

/// A host veth name unique to this process, so its absence from the real host means something.
fn veth_name() -> String {
    format!(
        "t20v{:x}x{}",
        std::process::id() % 0xfffff,
        VETHS.fetch_add(1, Ordering::Relaxed)
    )
}

fn pod_link(pod: &TestNs, ip: Ipv4Addr) -> PodLink {
    PodLink {
        netns: pod.path.clone(),
        ifname: "eth0".to_owned(),
        host_veth: veth_name(),
        ip,
        gateway: GATEWAY,
        mtu: MTU,
    }
}

fn plumb(host: &TestNs, link: &PodLink) -> Result<plumbing::Plumbed, PlumbError> {
    block_on(plumbing::plumb_in(Some(&host.path), link))
}

fn unplumb(host: &TestNs, netns: Option<&Path>, link: &PodLink) -> Result<(), PlumbError> {
    block_on(plumbing::unplumb_in(
        Some(&host.path),
        netns,
        &link.ifname,
        &link.host_veth,
        Some(link.ip),
    ))
}

fn check(host: &TestNs, link: &PodLink) -> Result<(), PlumbError> {
    block_on(plumbing::check_in(Some(&host.path), link))
}

fn route_to<'a>(routes: &'a [Value], dst: &str) -> Option<&'a Value> {
    routes.iter().find(|r| r["dst"] == dst)
}

/// Nothing of the attachment is left: no host veth, no host route, no container interface.
fn assert_nothing_left(host: &TestNs, pod: Option<&TestNs>, link: &PodLink) {
    assert!(
        host.link(&link.host_veth).is_none(),
        "host veth {} left",
        link.host_veth
    );
    let routes = host.routes();
    assert!(
        route_to(&routes, &link.ip.to_string()).is_none(),
        "host route left: {routes:?}"
    );
    if let Some(pod) = pod {
        assert!(pod.link(&link.ifname).is_none(), "{} left in the pod", link.ifname);
    }
}

fn real_host_has_link(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", name])
        .output()
        .expect("run ip")
        .status
        .success()
}

#[test]
fn plumbs_a_pod_as_the_vpc_cni_does() {
    if !plumb_ns::privileged("plumbs_a_pod_as_the_vpc_cni_does") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    let link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 10));
    let plumbed = plumb(&host, &link).expect("plumb");

    assert_eq!(plumbed.host.name, link.host_veth);
    assert_eq!(plumbed.host.sandbox, None);
    assert_eq!(plumbed.container.name, "eth0");
    assert_eq!(plumbed.container.sandbox.as_deref(), pod.path.to_str());
    for mac in [&plumbed.host.mac, &plumbed.container.mac] {
        assert_eq!(mac.len(), 17, "{mac}");
        assert_eq!(mac, &mac.to_lowercase());
    }
    let first_octet = u8::from_str_radix(&plumbed.host.mac[..2], 16).expect("hex");
    assert_eq!(
        first_octet & 0x03,
        0x02,
        "host MAC is local unicast: {}",
        plumbed.host.mac
    );

    // The host end: a veth, up, our MTU and MAC, IPv6 hardened, and the route to the pod.
    let host_end = host.link(&link.host_veth).expect("host veth in the host namespace");
    assert_eq!(host_end["linkinfo"]["info_kind"], "veth");
    assert_eq!(host_end["mtu"], MTU);
    assert_eq!(host_end["address"], plumbed.host.mac.as_str());
    assert!(has_flag(&host_end, "UP"), "{host_end}");
    assert_eq!(host.sysctl(&format!("net/ipv6/conf/{}/accept_ra", link.host_veth)), "0");
    assert_eq!(
        host.sysctl(&format!("net/ipv6/conf/{}/forwarding", link.host_veth)),
        "0"
    );
    let host_routes = host.routes();
    let to_pod = route_to(&host_routes, "100.64.0.10").expect("host route to the pod");
    assert_eq!(to_pod["dev"], link.host_veth.as_str());
    assert_eq!(to_pod["scope"], "link");
    assert!(to_pod.get("gateway").is_none(), "{to_pod}");

    // The pod end: a veth, up, our MTU, the /32 and nothing else of IPv4.
    let pod_end = pod.link("eth0").expect("eth0 in the pod");
    assert_eq!(pod_end["linkinfo"]["info_kind"], "veth");
    assert_eq!(pod_end["mtu"], MTU);
    assert_eq!(pod_end["address"], plumbed.container.mac.as_str());
    assert!(has_flag(&pod_end, "UP") && has_flag(&pod_end, "LOWER_UP"), "{pod_end}");
    let addresses = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
    let inet: Vec<(String, u64)> = addresses[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .map(|a| {
            (
                a["local"].as_str().expect("local").to_owned(),
                a["prefixlen"].as_u64().expect("prefixlen"),
            )
        })
        .collect();
    assert_eq!(inet, vec![("100.64.0.10".to_owned(), 32)]);

    // Exactly two routes: the gateway on the link, and the default through it.
    let routes = pod.routes();
    assert_eq!(routes.len(), 2, "{routes:?}");
    let gateway = route_to(&routes, "169.254.1.1").expect("gateway route");
    assert_eq!(
        (gateway["dev"].as_str(), gateway["scope"].as_str()),
        (Some("eth0"), Some("link"))
    );
    let default = route_to(&routes, "default").expect("default route");
    assert_eq!(
        (default["dev"].as_str(), default["gateway"].as_str()),
        (Some("eth0"), Some("169.254.1.1"))
    );

    // The gateway resolves, permanently, to the host end's MAC.
    let neighbours = pod.ip_json(&["-4", "neigh", "show", "dev", "eth0"]);
    let neighbour = neighbours
        .iter()
        .find(|n| n["dst"] == "169.254.1.1")
        .expect("gateway neighbour");
    assert_eq!(neighbour["lladdr"], plumbed.host.mac.as_str());
    assert_eq!(neighbour["state"], serde_json::json!(["PERMANENT"]));

    check(&host, &link).expect("check passes on a fresh attachment");
    assert!(!real_host_has_link(&link.host_veth), "the real host was touched");
}

/// One UDP round trip from `client` (bound to `client_ip`) to `server` (bound to `server_ip`): the
/// server sees the client's address and the client gets the echo.
fn udp_round_trip(server: &TestNs, server_ip: Ipv4Addr, client: &TestNs, client_ip: Ipv4Addr) {
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let served = scope.spawn(|| {
            on_thread_in(server, move || {
                let socket = UdpSocket::bind((server_ip, 0)).expect("server bind");
                socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                port_tx
                    .send(socket.local_addr().expect("addr").port())
                    .expect("send port");
                let mut buf = [0u8; 64];
                let (n, from) = socket.recv_from(&mut buf).expect("server receives within 5 s");
                socket.send_to(&buf[..n], from).expect("echo");
                from
            })
        });
        let port = port_rx.recv_timeout(Duration::from_secs(5)).expect("server ready");
        let echoed = on_thread_in(client, move || {
            let socket = UdpSocket::bind((client_ip, 0)).expect("client bind");
            socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            socket
                .send_to(b"hello through the host", (server_ip, port))
                .expect("send");
            let mut buf = [0u8; 64];
            let (n, _) = socket.recv_from(&mut buf).expect("client gets the echo within 5 s");
            buf[..n].to_vec()
        });
        assert_eq!(echoed, b"hello through the host");
        let from = served.join().expect("server thread");
        assert_eq!(from.ip(), std::net::IpAddr::V4(client_ip), "server saw {from}");
    });
}

#[test]
fn pods_reach_each_other_and_the_host_through_the_host() {
    if !plumb_ns::privileged("pods_reach_each_other_and_the_host_through_the_host") {
        return;
    }
    let host = TestNs::new();
    host.set_sysctl("net/ipv4/ip_forward", "1");
    // An address for the host itself (a node's would be on its primary ENI).
    host.ip(&["addr", "add", "10.255.0.1/32", "dev", "lo"]);
    let host_ip = Ipv4Addr::new(10, 255, 0, 1);

    let (pod_a, pod_b) = (TestNs::new(), TestNs::new());
    let (ip_a, ip_b) = (Ipv4Addr::new(100, 64, 0, 10), Ipv4Addr::new(100, 64, 0, 11));
    let link_a = pod_link(&pod_a, ip_a);
    let link_b = pod_link(&pod_b, ip_b);
    plumb(&host, &link_a).expect("plumb a");
    plumb(&host, &link_b).expect("plumb b");

    udp_round_trip(&pod_b, ip_b, &pod_a, ip_a);
    udp_round_trip(&pod_a, ip_a, &pod_b, ip_b);
    udp_round_trip(&host, host_ip, &pod_a, ip_a);
    udp_round_trip(&pod_b, ip_b, &host, host_ip);

    // Without its plumbing, pod b is unreachable.
    unplumb(&host, Some(&pod_b.path), &link_b).expect("unplumb b");
    let refused = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                on_thread_in(&pod_a, move || {
                    let socket = UdpSocket::bind((ip_a, 0)).expect("bind");
                    socket
                        .set_read_timeout(Some(Duration::from_millis(500)))
                        .expect("timeout");
                    let _ = socket.send_to(b"anyone?", SocketAddr::from((ip_b, 9)));
                    let mut buf = [0u8; 16];
                    socket.recv_from(&mut buf).is_err()
                })
            })
            .join()
            .expect("thread")
    });
    assert!(refused, "an unplumbed pod answered");
}

#[test]
fn unplumb_removes_everything_and_may_be_repeated() {
    if !plumb_ns::privileged("unplumb_removes_everything_and_may_be_repeated") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    let link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 12));
    plumb(&host, &link).expect("plumb");

    unplumb(&host, Some(&pod.path), &link).expect("unplumb");
    assert_nothing_left(&host, Some(&pod), &link);
    unplumb(&host, Some(&pod.path), &link).expect("again: nothing to do is fine");
    unplumb(&host, None, &link).expect("without a netns");
    let gone = PathBuf::from(format!("/var/run/netns/{}-never-was", pod.name));
    unplumb(&host, Some(&gone), &link).expect("with a missing netns");
    unplumb(&host, Some(Path::new("/proc/self/status")), &link).expect("with a file that is no netns");
    assert!(pod.link("lo").is_some(), "the pod's own links are untouched");

    // Plumbing again after DEL works (names and address are free again).
    plumb(&host, &link).expect("plumb again");
    check(&host, &link).expect("check");
}

#[test]
fn unplumb_after_the_pod_namespace_is_gone() {
    if !plumb_ns::privileged("unplumb_after_the_pod_namespace_is_gone") {
        return;
    }
    let host = TestNs::new();
    let pod = TestNs::new();
    let link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 13));
    plumb(&host, &link).expect("plumb");
    pod.delete();
    // The kernel destroys the pair with the namespace, asynchronously: DEL succeeds, and (without
    // taking the host end by name, which could be a newer pod's) nothing is left soon after.
    unplumb(&host, Some(&pod.path), &link).expect("unplumb with the netns gone");
    for _ in 0..100 {
        if host.link(&link.host_veth).is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_nothing_left(&host, None, &link);
}

#[test]
fn unplumb_leaves_a_newer_pods_route_to_the_same_address_alone() {
    if !plumb_ns::privileged("unplumb_leaves_a_newer_pods_route_to_the_same_address_alone") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    let newer = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 14));
    plumb(&host, &newer).expect("plumb");
    // The DEL of an older pod that had the same address, through a host veth long gone.
    let older = PodLink {
        host_veth: veth_name(),
        ..newer.clone()
    };
    unplumb(&host, None, &older).expect("unplumb the older pod");
    check(&host, &newer).expect("the newer pod is intact");
}

#[test]
fn a_late_del_of_an_old_sandbox_leaves_the_newer_pods_veth_of_the_same_name_alone() {
    if !plumb_ns::privileged("a_late_del_of_an_old_sandbox_leaves_the_newer_pods_veth_of_the_same_name_alone") {
        return;
    }
    // The host veth name hashes the pod's namespace/name: a pod recreated under its name (a
    // StatefulSet's x-0) gets the same one. The old sandbox's DEL arrives after the new ADD.
    let (host, old_pod, new_pod) = (TestNs::new(), TestNs::new(), TestNs::new());
    let newer = pod_link(&new_pod, Ipv4Addr::new(100, 64, 0, 16));
    plumb(&host, &newer).expect("plumb the newer pod");
    let older = PodLink {
        netns: old_pod.path.clone(),
        ip: Ipv4Addr::new(100, 64, 0, 17),
        ..newer.clone()
    };
    unplumb(&host, Some(&old_pod.path), &older).expect("DEL of the old sandbox");
    check(&host, &newer).expect("the newer pod keeps its veth and routes");
    // And when the old sandbox's namespace is already gone.
    unplumb(&host, Some(Path::new("/run/netns/no-such-sandbox")), &older).expect("DEL, netns gone");
    check(&host, &newer).expect("still intact");
}

#[test]
fn a_failure_midway_leaves_nothing_behind() {
    if !plumb_ns::privileged("a_failure_midway_leaves_nothing_behind") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    // Bridges, not dummies: some CI kernels have no dummy module.
    // The pod already has a default route (not ours): ours cannot be added, after the pair, the
    // host end, the address and the gateway route were made.
    pod.ip(&["link", "add", "other0", "type", "bridge"]);
    pod.ip(&["link", "set", "other0", "up"]);
    pod.ip(&["route", "add", "default", "dev", "other0"]);
    let link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 15));

    let err = plumb(&host, &link).expect_err("the default route clashes");
    assert!(matches!(err, PlumbError::Netlink { .. }), "{err}");
    assert!(err.to_string().contains("default route"), "{err}");
    assert!(err.to_string().contains(pod.path.to_str().expect("utf-8")), "{err}");
    assert!(!err.netns_missing());
    assert_nothing_left(&host, Some(&pod), &link);
    // What was there before is still there.
    assert!(pod.link("other0").is_some());
    let routes = pod.routes();
    let default = route_to(&routes, "default").expect("the pod's own default route");
    assert_eq!(default["dev"], "other0");
}

#[test]
fn a_missing_netns_is_reported_and_nothing_is_made() {
    if !plumb_ns::privileged("a_missing_netns_is_reported_and_nothing_is_made") {
        return;
    }
    let host = TestNs::new();
    let link = PodLink {
        netns: PathBuf::from(format!("/var/run/netns/{}-no-such-pod", host.name)),
        ifname: "eth0".to_owned(),
        host_veth: veth_name(),
        ip: Ipv4Addr::new(100, 64, 0, 16),
        gateway: GATEWAY,
        mtu: MTU,
    };
    let err = plumb(&host, &link).expect_err("no netns");
    assert!(err.netns_missing(), "{err}");
    assert!(err.to_string().contains("no-such-pod"), "{err}");
    assert_nothing_left(&host, None, &link);
    let err = check(&host, &link).expect_err("no netns");
    assert!(err.netns_missing(), "{err}");
}

#[test]
fn an_existing_container_interface_is_refused_and_left_alone() {
    if !plumb_ns::privileged("an_existing_container_interface_is_refused_and_left_alone") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    pod.ip(&["link", "add", "eth0", "type", "bridge"]);
    let link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 17));
    let err = plumb(&host, &link).expect_err("eth0 exists");
    assert!(matches!(err, PlumbError::IfnameTaken { .. }), "{err}");
    assert!(err.to_string().contains("eth0"), "{err}");
    assert_nothing_left(&host, None, &link);
    let eth0 = pod.link("eth0").expect("the pod's eth0 stays");
    assert_eq!(eth0["linkinfo"]["info_kind"], "bridge");
}

#[test]
fn a_stale_host_veth_is_replaced() {
    if !plumb_ns::privileged("a_stale_host_veth_is_replaced") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    let link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 18));
    // A previous pod's pair, whose DEL never came.
    host.ip(&["link", "add", &link.host_veth, "type", "veth", "peer", "name", "stale0"]);
    let stale_mac = host.link(&link.host_veth).expect("stale")["address"].clone();

    let plumbed = plumb(&host, &link).expect("plumb replaces the stale veth");
    assert!(host.link("stale0").is_none(), "the stale pair is gone");
    assert_ne!(Value::from(plumbed.host.mac.clone()), stale_mac);
    check(&host, &link).expect("check");
}

#[test]
fn a_host_name_held_by_another_kind_of_link_is_not_taken() {
    if !plumb_ns::privileged("a_host_name_held_by_another_kind_of_link_is_not_taken") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    let link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 19));
    host.ip(&["link", "add", &link.host_veth, "type", "bridge"]);
    let err = plumb(&host, &link).expect_err("not ours");
    assert!(matches!(err, PlumbError::HostNameTaken { .. }), "{err}");
    let kept = host.link(&link.host_veth).expect("the bridge stays");
    assert_eq!(kept["linkinfo"]["info_kind"], "bridge");
    assert!(pod.link("eth0").is_none());
    // DEL does not remove a link that is not a veth either.
    unplumb(&host, Some(&pod.path), &link).expect("unplumb");
    assert!(host.link(&link.host_veth).is_some());
}

#[test]
fn invalid_names_are_refused_before_anything_is_made() {
    if !plumb_ns::privileged("invalid_names_are_refused_before_anything_is_made") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    let mut link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 20));
    link.host_veth = "eni0123456789abc".to_owned();
    let err = plumb(&host, &link).expect_err("16 bytes");
    assert!(matches!(err, PlumbError::InvalidName { .. }), "{err}");
    assert!(err.to_string().contains("longer than 15 bytes"), "{err}");
    let mut link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 20));
    link.ifname = "eth 0".to_owned();
    let err = plumb(&host, &link).expect_err("a space");
    assert!(matches!(err, PlumbError::InvalidName { .. }), "{err}");
    let links = host.ip_json(&["link", "show"]);
    assert_eq!(links.len(), 1, "only lo in the host: {links:?}");
    assert_eq!(pod.ip_json(&["link", "show"]).len(), 1, "only lo in the pod");
}

#[test]
fn check_says_what_is_missing() {
    if !plumb_ns::privileged("check_says_what_is_missing") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    let link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 21));
    plumb(&host, &link).expect("plumb");
    check(&host, &link).expect("complete");

    pod.ip(&["route", "del", "default"]);
    let err = check(&host, &link).expect_err("no default route");
    let PlumbError::CheckFailed { problems, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(problems.len(), 1, "{err}");
    assert!(problems[0].contains("default route via 169.254.1.1"), "{err}");

    host.ip(&["route", "del", "100.64.0.21/32"]);
    pod.ip(&["neigh", "del", "169.254.1.1", "dev", "eth0"]);
    let err = check(&host, &link).expect_err("more missing");
    let PlumbError::CheckFailed { problems, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(problems.len(), 3, "{err}");
    assert!(err.to_string().contains("host route 100.64.0.21/32"), "{err}");
    assert!(err.to_string().contains("neighbour entry for 169.254.1.1"), "{err}");

    // A different MTU than asked is found too.
    let other_mtu = PodLink {
        mtu: 1500,
        ..link.clone()
    };
    let err = check(&host, &other_mtu).expect_err("MTU");
    assert!(err.to_string().contains("has MTU 9001, not 1500"), "{err}");
}

#[test]
fn the_default_host_is_the_calling_threads_namespace() {
    if !plumb_ns::privileged("the_default_host_is_the_calling_threads_namespace") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    let link = pod_link(&pod, Ipv4Addr::new(100, 64, 0, 22));
    let for_thread = link.clone();
    // A thread inside the test's host namespace calls the plain functions.
    let plumbed = on_thread_in(&host, move || {
        block_on(async {
            let plumbed = plumbing::plumb(&for_thread).await?;
            plumbing::check(&for_thread).await?;
            Ok::<_, PlumbError>(plumbed)
        })
    })
    .expect("plumb and check from inside the host namespace");
    let host_end = host.link(&link.host_veth).expect("the host end is in the test's host");
    assert_eq!(host_end["address"], plumbed.host.mac.as_str());
    assert!(!real_host_has_link(&link.host_veth), "the real host was touched");

    let for_thread = link.clone();
    on_thread_in(&host, move || {
        block_on(plumbing::unplumb(
            Some(&for_thread.netns),
            &for_thread.ifname,
            &for_thread.host_veth,
            Some(for_thread.ip),
        ))
    })
    .expect("unplumb");
    assert_nothing_left(&host, Some(&pod), &link);
}

#[test]
fn a_proc_pid_netns_path_works() {
    if !plumb_ns::privileged("a_proc_pid_netns_path_works") {
        return;
    }
    let (host, pod) = (TestNs::new(), TestNs::new());
    let holder = NsHolder::new(&pod);
    let link = PodLink {
        netns: holder.netns_path(),
        ..pod_link(&pod, Ipv4Addr::new(100, 64, 0, 23))
    };
    let plumbed = plumb(&host, &link).expect("plumb");
    assert_eq!(plumbed.container.sandbox, Some(link.netns.display().to_string()));
    assert!(pod.link("eth0").is_some(), "eth0 is in the process's namespace");
    check(&host, &link).expect("check");
    unplumb(&host, Some(&link.netns), &link).expect("unplumb");
    assert_nothing_left(&host, Some(&pod), &link);
}
