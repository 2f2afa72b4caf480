//! The agent's world for end-to-end tests: a real ipam-server in process, EC2 simulated, a host
//! (in memory, or real netlink in a namespace), and the CNI socket. Used by t70 (no privileges)
//! and t45 (network namespaces).

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipam_client::RetryPolicy;
use ipam_core::limits::InstanceLimits;
use ipam_node_agent::agent;
use ipam_node_agent::agent::AgentSpec;
use ipam_node_agent::agent::RunningAgent;
use ipam_node_agent::cni_backend::CniConfig;
use ipam_node_agent::cni_backend::NoPods;
use ipam_node_agent::ec2::Ec2;
use ipam_node_agent::ec2::EniFilter;
use ipam_node_agent::ec2::NetworkInterface;
use ipam_node_agent::ec2::Tag;
use ipam_node_agent::ec2::intents::NodeScope;
use ipam_node_agent::ec2::sim::SimConfig;
use ipam_node_agent::ec2::sim::SimEc2;
use ipam_node_agent::ec2::tags;
use ipam_node_agent::executor::ExecutorConfig;
use ipam_node_agent::host::Host;
use ipam_node_agent::host::SnatConfig;
use ipam_node_agent::host::mem::MemHost;
use ipam_node_agent::ipam_client::IpamClient;
use ipam_node_agent::metrics::Metrics;
use ipam_node_agent::warm::Targets;
use ipam_proto::agent::v1 as api;
use ipam_proto::agent::v1::cni_backend_client::CniBackendClient;
use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::admin_service_client::AdminServiceClient;
use ipam_server::config::ServerConfig;
use ipam_server::server;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

pub const NODE: &str = "ip-10-0-1-10.us-west-2.compute.internal";
pub const INSTANCE: &str = "i-0123456789abcdef0";
pub const AZ: &str = "us-west-2a";
pub const NODE_SUBNET: &str = "subnet-0a0a0a0a0a0a0a0a0";
pub const POD_SUBNET: &str = "subnet-011b111c1f11fdf11";
pub const POD_CIDR: &str = "100.64.1.0/24";
pub const PRIMARY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);

/// A directory removed at the end of the test (also on failure).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("ipam-agent-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the kernel does when EC2 attaches an ENI to the instance: make its link appear (called
/// once per attached ENI, with its device index).
pub type OnAttach = Arc<dyn Fn(&NetworkInterface, u8) + Send + Sync>;

/// Where the world's addresses are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The node's primary address.
    pub primary_ip: Ipv4Addr,
    /// Its subnet.
    pub node_cidr: &'static str,
    /// The pods' subnet (the ENIConfig's).
    pub pod_cidr: &'static str,
    /// The instance type (its limits come from the built-in table).
    pub instance_type: &'static str,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            primary_ip: PRIMARY_IP,
            node_cidr: "10.0.1.0/24",
            pod_cidr: POD_CIDR,
            instance_type: "m5.large",
        }
    }
}

/// The world the agent lives in: server, EC2, host.
pub struct World<H: Host + 'static> {
    pub dir: TempDir,
    server: Option<server::Running>,
    pub addr: SocketAddr,
    pub ec2: Arc<SimEc2>,
    pub host: Arc<H>,
    pub metrics: Metrics,
    pub layout: Layout,
    /// Makes links appear on the host for the ENIs EC2 attached to the instance (the kernel's job).
    links: tokio::task::JoinHandle<()>,
}

impl World<MemHost> {
    /// A world whose host is in memory.
    pub async fn new(name: &str) -> Self {
        let host = Arc::new(MemHost::new());
        let on_attach: OnAttach = {
            let host = host.clone();
            Arc::new(move |eni: &NetworkInterface, index: u8| host.add_link(&eni.mac, &format!("eth{index}")))
        };
        Self::with_host(name, Layout::default(), host, on_attach).await
    }
}

impl<H: Host + 'static> World<H> {
    /// A world with `host`; `on_attach` makes attached ENIs' links appear on it.
    pub async fn with_host(name: &str, layout: Layout, host: Arc<H>, on_attach: OnAttach) -> Self {
        let dir = TempDir::new(name);
        let config = ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: None,
            data_dir: dir.0.join("server"),
            ..ServerConfig::default()
        };
        let running = server::start(config).await.expect("start the server");
        assert!(
            running.wait_for_leader(Duration::from_secs(10)).await.is_some(),
            "no leader"
        );
        let addr = running.grpc_addr();
        let mut admin = AdminServiceClient::new(channel(addr));
        admin
            .create_pool(pb::CreatePoolRequest {
                request_id: "pool".to_owned(),
                cidr: "100.64.0.0/16".to_owned(),
            })
            .await
            .expect("create pool");
        admin
            .upsert_subnet_config(pb::UpsertSubnetConfigRequest {
                request_id: "subnet".to_owned(),
                subnet_config: Some(pb::SubnetConfig {
                    name: AZ.to_owned(),
                    subnet_id: POD_SUBNET.to_owned(),
                    subnet_cidr: layout.pod_cidr.to_owned(),
                    availability_zone: AZ.to_owned(),
                    security_group_ids: vec!["sg-0dff111a1d11c1c11".to_owned()],
                    updated_at_unix_ms: 0,
                }),
            })
            .await
            .expect("subnet config");
        let ec2 = Arc::new(
            SimEc2::builder()
                .config(SimConfig::default())
                .subnet(NODE_SUBNET, layout.node_cidr, AZ)
                .subnet(POD_SUBNET, layout.pod_cidr, AZ)
                .instance(INSTANCE, layout.instance_type, NODE_SUBNET, layout.primary_ip)
                .build()
                .expect("EC2 simulator"),
        );
        let links = tokio::spawn({
            let ec2 = ec2.clone();
            async move {
                let mut seen = std::collections::BTreeSet::new();
                loop {
                    for eni in ec2.instance_enis(INSTANCE) {
                        if let Some(attachment) = eni.attachment.as_ref().filter(|a| a.device_index > 0)
                            && seen.insert(eni.eni_id.clone())
                        {
                            on_attach(&eni, attachment.device_index);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            dir,
            server: Some(running),
            addr,
            ec2,
            host,
            metrics: Metrics::new(),
            layout,
            links,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.0.join("agent.sock")
    }

    pub fn spec(&self, targets: Targets) -> AgentSpec {
        let ipam =
            Arc::new(IpamClient::new(vec![self.addr.to_string()], NODE, RetryPolicy::default()).expect("IPAM client"));
        let limits = ipam_core::limits::lookup(self.layout.instance_type).expect("an instance type in the table");
        let scope = NodeScope {
            cluster: String::new(),
            node: NODE.to_owned(),
            instance_id: INSTANCE.to_owned(),
        };
        let mut executor = ExecutorConfig::new(scope, limits, targets);
        executor.link_timeout = Duration::from_secs(10);
        executor.ec2_wait = Duration::from_secs(20);
        executor.poll = Duration::from_millis(20);
        AgentSpec {
            ipam,
            ec2: self.ec2.clone(),
            host: self.host.clone(),
            pods: Arc::new(NoPods),
            registration: pb::RegisterNodeRequest {
                instance_id: INSTANCE.to_owned(),
                instance_type: self.layout.instance_type.to_owned(),
                availability_zone: AZ.to_owned(),
                limits: Some(node_limits(limits)),
                subnet_config: AZ.to_owned(),
                primary_ip: self.layout.primary_ip.to_string(),
                ..pb::RegisterNodeRequest::default()
            },
            executor,
            snat: SnatConfig {
                external: false,
                primary_ip: self.layout.primary_ip,
                vpc_cidrs: vec![(Ipv4Addr::new(10, 0, 0, 0), 16), (Ipv4Addr::new(100, 64, 0, 0), 16)],
                exclude_cidrs: Vec::new(),
            },
            cni: CniConfig {
                add_wait: Duration::from_secs(10),
                gc_grace: Duration::ZERO,
                ..CniConfig::default()
            },
            socket: self.socket(),
            socket_mode: 0o600,
            pool_interval: Duration::from_millis(200),
            orphan_grace: Duration::from_secs(60),
            metrics: Some(self.metrics.clone()),
        }
    }

    pub async fn start(&self, targets: Targets) -> RunningAgent {
        agent::start(self.spec(targets)).await.expect("agent start")
    }

    pub async fn cni(&self) -> CniBackendClient<Channel> {
        let path = self.socket();
        for _ in 0..200 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .expect("connect to the agent's socket");
        CniBackendClient::new(channel)
    }

    /// Every ENI EC2 has under the node's tag.
    pub async fn tagged_enis(&self) -> Vec<NetworkInterface> {
        self.ec2
            .describe_network_interfaces(&EniFilter {
                tags: vec![Tag::new(tags::NODE, NODE)],
                ..EniFilter::default()
            })
            .await
            .expect("describe")
    }

    pub async fn node_view(&self) -> pb::GetNodeResponse {
        let ipam = IpamClient::new(vec![self.addr.to_string()], NODE, RetryPolicy::default()).expect("client");
        ipam.get_node().await.expect("get node")
    }

    pub async fn stop(mut self) {
        self.links.abort();
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("server shutdown");
        }
    }
}

pub fn node_limits(limits: InstanceLimits) -> pb::NodeLimits {
    pb::NodeLimits {
        max_enis: u32::from(limits.max_enis),
        ipv4_per_eni: u32::from(limits.ipv4_per_eni),
        branch_enis: u32::from(limits.branch_enis),
        trunking: limits.trunking,
    }
}

pub fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy()
}

pub fn warm_ips(n: u32) -> Targets {
    Targets {
        warm_ip: Some(n),
        ..Targets::default()
    }
}

pub fn warm_count(view: &pb::GetNodeResponse) -> usize {
    view.enis
        .iter()
        .flat_map(|e| &e.addresses)
        .filter(|a| a.state() == pb::AddressState::Warm)
        .count()
}

pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..300 {
        if let Some(value) = f().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn add_request(pod: &str, container: &str) -> api::AddRequest {
    api::AddRequest {
        attachment: Some(api::Attachment {
            container_id: container.to_owned(),
            ifname: "eth0".to_owned(),
        }),
        netns_path: format!("/var/run/netns/{container}"),
        pod: Some(api::PodRef {
            namespace: "default".to_owned(),
            name: pod.to_owned(),
            uid: format!("uid-{pod}"),
        }),
        cni_version: "1.1.0".to_owned(),
        network_name: "ipam-eks".to_owned(),
    }
}
