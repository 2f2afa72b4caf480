//! Privileged test scaffolding: network namespaces wired like an EKS node in a VPC.
//!
//! ```text
//!                        ┌──────────────────────── vpc (the VPC fabric) ─────────────────────────┐
//!   pod                  │ v-eth0 10.0.0.1/24     v-eth1 100.64.0.1/24     v-out 203.0.113.1/24  │
//!   eth0 100.64.0.20/32  │ neighbours (permanent): 10.0.0.10 → eth0's MAC, 100.64.0.10 and        │
//!   default via          │ 100.64.0.20 → eth1's MAC; rp_filter strict (EC2's source/dest check)  │
//!   169.254.1.1          └────┬───────────────────────┬────────────────────────────┬───────────┘
//!     │                       │                       │                            │
//!   eni-pod ── node ── eth0 (primary ENI)      eth1 (secondary ENI,         outside: eth0
//!              main: 100.64.0.20 dev eni-pod    down, no address:            203.0.113.10/24
//!              forwarding off, rp_filter 1      what an attach leaves)       198.51.100.10/24
//!              (the agent's SNAT setup turns
//!              forwarding on, eth0 loose)
//! ```
//!
//! Setup uses `ip` (scaffolding, not the agent). Assertions read back through netlink: this module
//! dumps rules, routes, links and addresses with its own rtnetlink connection in the namespace.
//! Everything is removed by [`Topology`]'s `Drop`, also when the test panics.

#![allow(dead_code)]

use std::io::Write;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use futures::TryStreamExt;
use ipam_node_agent::host::netns::Netns;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::packet_route::route::RouteAddress;
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::route::RouteFlags;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::rule::RuleAttribute;

pub const PRIMARY_MAC: &str = "02:00:00:00:00:a0";
pub const PRIMARY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const PRIMARY_GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const ENI_MAC: &str = "02:00:00:00:01:a0";
pub const ENI_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
pub const ENI_GW: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub const POD_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 20);
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// A second address of the outside namespace, in a CIDR the SNAT tests exclude.
pub const EXCLUDED_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const ECHO_PORT: u16 = 7007;

const POD_MAC: &str = "02:00:00:00:20:01";
const HOST_VETH_MAC: &str = "02:00:00:00:20:02";

/// Whether this privileged test can run here. Locally it skips (printing why) when not root or when
/// `ip`/`nft`/namespaces are missing; with `CI=true` it panics instead: CI must run it. A missing
/// `nft` is first installed with scripts/install-nft.sh.
pub fn privileged(test: &str) -> bool {
    let reason = missing_privilege();
    match reason {
        None => true,
        Some(reason) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {reason}; CI=true, so this privileged test must run")
        }
        Some(reason) => {
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

fn missing_privilege() -> Option<String> {
    if effective_uid() != Some(0) {
        return Some("needs root (network namespaces, netlink, nftables)".into());
    }
    if !runs("ip", &["-V"]) {
        return Some("the `ip` command (iproute2) is missing".into());
    }
    if !runs("nft", &["--version"]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install-nft.sh");
        let installed = Command::new("bash").arg(script).status().is_ok_and(|s| s.success());
        if !installed || !runs("nft", &["--version"]) {
            return Some("`nft` is missing and scripts/install-nft.sh could not install it".into());
        }
    }
    let probe = unique("probe");
    if !runs("ip", &["netns", "add", &probe]) {
        return Some("cannot create network namespaces (CAP_SYS_ADMIN?)".into());
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    None
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn unique(role: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "t40-{}-{}-{role}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip args…`, panicking with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// One namespace of the topology.
#[derive(Debug)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <command>`, the command's words split on whitespace.
    pub fn ip(&self, command: &str) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend(command.split_whitespace());
        ip(&all);
    }

    /// Loads an nftables script (`nft -f -`) into the namespace.
    pub fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write the script");
        let output = child.wait_with_output().expect("wait for nft");
        assert!(
            output.status.success(),
            "nft -f: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    /// A thread inside the namespace.
    pub fn thread(&self) -> Netns {
        Netns::open(self.path()).expect("enter the namespace")
    }

    /// Writes a sysctl of this namespace (/proc/sys/net resolves to the writing thread's namespace).
    pub async fn sysctl(&self, key: &str, value: &str) {
        let file = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.thread()
            .run(move || std::fs::write(&file, value).map_err(|e| format!("{file}: {e}")))
            .await
            .expect("namespace thread")
            .expect("sysctl");
    }
}

/// The namespaces of one test, deleted (with their links) on drop.
#[derive(Debug)]
pub struct Topology {
    pub vpc: Ns,
    pub node: Ns,
    pub outside: Ns,
    pub pod: Ns,
    echo: Option<Echo>,
}

impl Topology {
    /// Builds the whole picture of the module docs: [`Topology::build_bare`], the secondary ENI
    /// `eth1` attached, and the pod wired to the node.
    pub async fn build() -> Self {
        let topology = Self::build_bare().await;
        topology.eni_wiring(ENI_GW, 24).attach(ENI_MAC, 1, &[ENI_IP, POD_IP]);
        topology.plumb_pod(POD_IP, "eni-pod", ENI_MAC, 1);
        topology
    }

    /// The same namespaces for an agent to configure: the primary ENI, the fabric and the outside
    /// as in [`Topology::build`], but no secondary ENI (EC2's attach makes it:
    /// [`EniWiring::attach`]) and an empty pod namespace ([`Topology::plumb_pod`]).
    pub async fn build_bare() -> Self {
        let topology = Topology {
            vpc: Ns { name: unique("vpc") },
            node: Ns { name: unique("node") },
            outside: Ns { name: unique("out") },
            pod: Ns { name: unique("pod") },
            echo: None,
        };
        for ns in topology.all() {
            ip(&["netns", "add", &ns.name]);
            ns.ip("link set lo up");
        }
        let (vpc, node, outside) = (&topology.vpc, &topology.node, &topology.outside);
        let (vpc_ns, outside_ns) = (&vpc.name, &outside.name);
        node.ip(&format!(
            "link add eth0 address {PRIMARY_MAC} type veth peer name v-eth0 netns {vpc_ns}"
        ));
        node.ip(&format!("addr add {PRIMARY_IP}/24 dev eth0"));
        node.ip("link set eth0 up");
        node.ip(&format!("route add default via {PRIMARY_GW}"));
        vpc.ip(&format!("link add v-out type veth peer name eth0 netns {outside_ns}"));
        vpc.ip(&format!("addr add {PRIMARY_GW}/24 dev v-eth0"));
        vpc.ip("addr add 203.0.113.1/24 dev v-out");
        vpc.ip("link set v-eth0 up");
        vpc.ip("link set v-out up");
        vpc.ip(&format!("route add 198.51.100.0/24 via {OUTSIDE_IP}"));
        vpc.ip(&format!(
            "neigh replace {PRIMARY_IP} lladdr {PRIMARY_MAC} dev v-eth0 nud permanent"
        ));
        outside.ip(&format!("addr add {OUTSIDE_IP}/24 dev eth0"));
        outside.ip(&format!("addr add {EXCLUDED_IP}/24 dev eth0"));
        outside.ip("link set eth0 up");
        outside.ip("route add default via 203.0.113.1");
        vpc.sysctl("net.ipv4.ip_forward", "1").await;
        vpc.sysctl("net.ipv4.conf.all.rp_filter", "1").await;
        node.sysctl("net.ipv4.ip_forward", "0").await;
        node.sysctl("net.ipv4.conf.all.rp_filter", "1").await;
        node.sysctl("net.ipv4.conf.eth0.rp_filter", "1").await;
        topology
    }

    /// What attaching ENIs to the node does in this topology (for a callback that outlives a
    /// borrow of the topology).
    pub fn eni_wiring(&self, gateway: Ipv4Addr, prefix: u8) -> EniWiring {
        EniWiring {
            vpc: self.vpc.name.clone(),
            node: self.node.name.clone(),
            gateway,
            prefix,
        }
    }

    /// Wires a pod the way the CNI plugin does (veth `host_veth` ↔ the pod's eth0 with `pod_ip`/32,
    /// default via 169.254.1.1, the host route), and tells the fabric that `pod_ip` lives on the
    /// ENI with `eni_mac` (EC2 knows which ENI holds each address).
    pub fn plumb_pod(&self, pod_ip: Ipv4Addr, host_veth: &str, eni_mac: &str, eni_device: u8) {
        let (node, pod, vpc) = (&self.node, &self.pod, &self.vpc);
        let pod_ns = &pod.name;
        node.ip(&format!(
            "link add {host_veth} address {HOST_VETH_MAC} type veth peer name eth0 address {POD_MAC} netns {pod_ns}"
        ));
        node.ip(&format!("link set {host_veth} up"));
        node.ip(&format!("route add {pod_ip}/32 dev {host_veth} scope link"));
        node.ip(&format!(
            "neigh replace {pod_ip} lladdr {POD_MAC} dev {host_veth} nud permanent"
        ));
        pod.ip(&format!("addr add {pod_ip}/32 dev eth0"));
        pod.ip("link set eth0 up");
        pod.ip("route add 169.254.1.1 dev eth0 scope link");
        pod.ip("route add default via 169.254.1.1 dev eth0");
        pod.ip(&format!(
            "neigh replace 169.254.1.1 lladdr {HOST_VETH_MAC} dev eth0 nud permanent"
        ));
        vpc.ip(&format!(
            "neigh replace {pod_ip} lladdr {eni_mac} dev v-eth{eni_device} nud permanent"
        ));
    }

    fn all(&self) -> [&Ns; 4] {
        [&self.vpc, &self.node, &self.outside, &self.pod]
    }

    /// Starts the UDP echo in the outside namespace, on each of its addresses (so that a reply
    /// comes from the address asked): it answers each datagram with the source address it saw.
    /// Stopped on drop.
    pub async fn start_echo(&mut self) {
        let sockets = self
            .outside
            .thread()
            .run(|| [OUTSIDE_IP, EXCLUDED_IP].map(|ip| UdpSocket::bind((ip, ECHO_PORT))))
            .await
            .expect("namespace thread")
            .map(|socket| socket.expect("bind an echo socket"));
        self.echo = Some(Echo::serve(sockets.into()));
    }

    /// From a fresh socket in the pod (a new flow each time: no conntrack entry is reused), asks
    /// the echo at `dst` which source address it sees. Bounded: a few tries of one second.
    pub async fn source_seen_from_pod(&self, dst: Ipv4Addr) -> Result<Ipv4Addr, String> {
        self.pod
            .thread()
            .run(move || probe(dst))
            .await
            .map_err(|e| e.to_string())?
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(echo) = self.echo.take() {
            echo.stop();
        }
        // Deleting a namespace deletes its links, and veth pairs go with either end.
        for ns in self.all() {
            let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        }
    }
}

fn probe(dst: Ipv4Addr) -> Result<Ipv4Addr, String> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    socket
        .connect((dst, ECHO_PORT))
        .map_err(|e| format!("connect {dst}: {e}"))?;
    let mut last = String::new();
    for _ in 0..4 {
        if let Err(e) = socket.send(b"who am I?") {
            last = format!("send: {e}");
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        let mut buf = [0u8; 64];
        match socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                return text.parse().map_err(|_| format!("echo answered {text:?}"));
            }
            Err(e) => last = format!("no answer from {dst}: {e}"),
        }
    }
    Err(last)
}

#[derive(Debug)]
struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    fn serve(sockets: Vec<UdpSocket>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = sockets
            .into_iter()
            .map(|socket| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    socket
                        .set_read_timeout(Some(Duration::from_millis(100)))
                        .expect("read timeout");
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((_, from)) = socket.recv_from(&mut buf) {
                            let seen = match from {
                                SocketAddr::V4(a) => a.ip().to_string(),
                                SocketAddr::V6(a) => a.ip().to_string(),
                            };
                            let _ = socket.send_to(seen.as_bytes(), from);
                        }
                    }
                })
            })
            .collect();
        Echo { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(2);
        for thread in self.threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Attaches ENIs to the node of a [`Topology::build_bare`]: what EC2's attach makes the kernel
/// show (a link with EC2's MAC) and what the VPC fabric then knows.
#[derive(Debug, Clone)]
pub struct EniWiring {
    vpc: String,
    node: String,
    gateway: Ipv4Addr,
    prefix: u8,
}

impl EniWiring {
    /// Makes `eth<device>` with `mac` appear in the node (down, no address), its peer
    /// `v-eth<device>` in the fabric holding the subnet's gateway, and the fabric's neighbour
    /// entries for `addresses` (the ENI's own).
    pub fn attach(&self, mac: &str, device: u8, addresses: &[Ipv4Addr]) {
        let node = Ns {
            name: self.node.clone(),
        };
        let vpc = Ns { name: self.vpc.clone() };
        node.ip(&format!(
            "link add eth{device} address {mac} type veth peer name v-eth{device} netns {}",
            self.vpc
        ));
        vpc.ip(&format!("addr add {}/{} dev v-eth{device}", self.gateway, self.prefix));
        vpc.ip(&format!("link set v-eth{device} up"));
        for address in addresses {
            vpc.ip(&format!(
                "neigh replace {address} lladdr {mac} dev v-eth{device} nud permanent"
            ));
        }
    }
}

/// A policy rule as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleInfo {
    pub priority: u32,
    pub src: Option<(Ipv4Addr, u8)>,
    pub dst: Option<(Ipv4Addr, u8)>,
    pub fwmark: Option<(u32, u32)>,
    pub table: u32,
}

/// A route as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteInfo {
    pub table: u32,
    pub dst: (Ipv4Addr, u8),
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub link_scope: bool,
}

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub up: bool,
    pub mtu: Option<u32>,
}

/// Reads the kernel's state of one namespace through a netlink socket of its own.
#[derive(Debug)]
pub struct Reader {
    _thread: Netns,
    handle: rtnetlink::Handle,
}

impl Reader {
    pub async fn open(ns: &Ns) -> Self {
        let thread = ns.thread();
        let handle = thread.rtnetlink().await.expect("netlink socket in the namespace");
        Reader {
            _thread: thread,
            handle,
        }
    }

    /// IPv4 rules, sorted.
    pub async fn rules(&self) -> Vec<RuleInfo> {
        let messages: Vec<_> = self
            .handle
            .rule()
            .get(rtnetlink::IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .expect("dump rules");
        let mut rules: Vec<RuleInfo> = messages
            .into_iter()
            .map(|m| {
                let mut rule = RuleInfo {
                    priority: 0,
                    src: None,
                    dst: None,
                    fwmark: None,
                    table: u32::from(m.header.table),
                };
                let mut mask = u32::MAX;
                for a in &m.attributes {
                    match a {
                        RuleAttribute::Priority(p) => rule.priority = *p,
                        RuleAttribute::Table(t) => rule.table = *t,
                        RuleAttribute::Source(IpAddr::V4(ip)) => rule.src = Some((*ip, m.header.src_len)),
                        RuleAttribute::Destination(IpAddr::V4(ip)) => rule.dst = Some((*ip, m.header.dst_len)),
                        RuleAttribute::FwMark(f) => rule.fwmark = Some((*f, u32::MAX)),
                        RuleAttribute::FwMask(f) => mask = *f,
                        _ => {}
                    }
                }
                rule.fwmark = rule.fwmark.map(|(f, _)| (f, mask));
                rule
            })
            .collect();
        rules.sort();
        rules
    }

    /// The rules at `priority`.
    pub async fn rules_at(&self, priority: u32) -> Vec<RuleInfo> {
        self.rules()
            .await
            .into_iter()
            .filter(|r| r.priority == priority)
            .collect()
    }

    /// Unicast IPv4 routes of `table`, sorted.
    pub async fn routes(&self, table: u32) -> Vec<RouteInfo> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .expect("dump routes");
        let mut routes: Vec<RouteInfo> = messages
            .into_iter()
            .map(|m| route_info(&m))
            .filter(|r| r.table == table)
            .collect();
        routes.sort();
        routes
    }

    /// The kernel's route lookup for `dst` from the local address `src` (`ip route get`).
    pub async fn route_get(&self, dst: Ipv4Addr, src: Ipv4Addr) -> RouteInfo {
        let mut request = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .source_prefix(src, 32)
            .table_id(0)
            .build();
        // Report the table the lookup used (iproute2 asks the same way).
        request.header.flags.insert(RouteFlags::LookupTable);
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .expect("route get");
        let message = messages.into_iter().next().expect("one answer");
        route_info(&message)
    }

    /// The link named `name`.
    pub async fn link(&self, name: &str) -> Option<LinkInfo> {
        let messages: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .expect("dump links");
        messages.into_iter().find_map(|m| {
            let named = m
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name));
            named.then(|| LinkInfo {
                index: m.header.index,
                up: m.header.flags.contains(LinkFlags::Up),
                mtu: m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(mtu) => Some(*mtu),
                    _ => None,
                }),
            })
        })
    }

    /// The IPv4 addresses (address, prefix length) of the link with `index`, sorted.
    pub async fn addresses(&self, index: u32) -> Vec<(Ipv4Addr, u8)> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .expect("dump addresses");
        let mut addresses: Vec<(Ipv4Addr, u8)> = messages
            .into_iter()
            .filter(|m| m.header.index == index && m.header.family == AddressFamily::Inet)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect();
        addresses.sort();
        addresses
    }
}

fn route_info(m: &RouteMessage) -> RouteInfo {
    let mut route = RouteInfo {
        table: u32::from(m.header.table),
        dst: (Ipv4Addr::UNSPECIFIED, m.header.destination_prefix_length),
        gateway: None,
        oif: None,
        link_scope: m.header.scope == RouteScope::Link,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => route.dst.0 = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(*ip),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            _ => {}
        }
    }
    route
}
