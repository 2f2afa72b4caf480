//! The whole node stack for the plugin's chaining tests and its benchmark: an ipam-server in
//! process, the node agent (EC2 simulated; host networking through netlink in a "node" namespace
//! whose ENI appears when EC2 attaches it), and pod namespaces. Includes the node agent's test
//! harnesses by path (`agent_world`, `netns`) and this crate's `cni_runtime`.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use crate::agent_world;
use crate::agent_world::Layout;
use crate::agent_world::OnAttach;
use crate::agent_world::World;
use crate::cni_runtime::Runtime;
use crate::netns;
use crate::netns::Topology;
use ipam_node_agent::ec2::NetworkInterface;
use ipam_node_agent::host::netlink::NetlinkHost;

/// The pods' subnet gateway.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 1);

/// Pod namespaces, deleted on drop.
pub struct Pods(pub Vec<String>);

impl Pods {
    pub fn add(&mut self, role: &str) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("t50-{}-{n}-{role}", std::process::id());
        netns::ip(&["netns", "add", &name]);
        netns::ip(&["-n", &name, "link", "set", "lo", "up"]);
        self.0.push(name.clone());
        name
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

pub struct Stack {
    pub topology: Topology,
    pub world: World<NetlinkHost>,
    running: Option<ipam_node_agent::agent::RunningAgent>,
    pub runtime: Runtime,
}

impl Stack {
    /// The stack, or None (after saying why) where privileged tests cannot run; `warm` addresses
    /// kept ready.
    pub async fn start(name: &str, warm: u32, plugin: &Path) -> Option<Self> {
        Self::start_on(name, warm, plugin, "m5.large", "100.64.1.0/24").await
    }

    /// [`Stack::start`] on another instance type and pod subnet (`a.b.c.0/n`: its gateway is
    /// `a.b.c.1`).
    pub async fn start_on(
        name: &str,
        warm: u32,
        plugin: &Path,
        instance_type: &'static str,
        pod_cidr: &'static str,
    ) -> Option<Self> {
        let (network, prefix) = pod_cidr.split_once('/').expect("a CIDR");
        let network: Ipv4Addr = network.parse().expect("an IPv4 network");
        let gateway = Ipv4Addr::from(u32::from(network) + 1);
        let prefix: u8 = prefix.parse().expect("a prefix length");
        if !netns::privileged(name) {
            return None;
        }
        let installer = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install-cni-plugins.sh");
        let installed = std::process::Command::new("bash")
            .arg(installer)
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{name}: Debian's containernetworking-plugins could not be installed; CI=true, so this test must run"
            );
            eprintln!("skipping {name}: Debian's containernetworking-plugins are not installed");
            return None;
        }
        let topology = Topology::build_bare().await;
        let wiring = topology.eni_wiring(gateway, prefix);
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
            pod_cidr,
            instance_type,
        };
        let world = World::with_host(name, layout, host, on_attach).await;
        let running = world.start(agent_world::warm_ips(warm)).await;
        let runtime = Runtime::new(plugin, &topology.node.name);
        Some(Self {
            topology,
            world,
            running: Some(running),
            runtime,
        })
    }

    pub fn socket(&self) -> String {
        self.world.socket().display().to_string()
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        self.world.stop().await;
        drop(self.topology);
    }
}
