//! `node-agent`: one per node. Configuration from flags and the VPC CNI's environment variables
//! (`node-agent --help`); see docs/node-agent.md.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipam_client::RetryPolicy;
use ipam_node_agent::agent;
use ipam_node_agent::agent::AgentSpec;
use ipam_node_agent::cni_backend::CniConfig;
use ipam_node_agent::cni_backend::NoPods;
use ipam_node_agent::cni_backend::PodDirectory;
use ipam_node_agent::cni_backend::PodMeta;
use ipam_node_agent::config::Args;
use ipam_node_agent::config::Config;
use ipam_node_agent::config::Ec2Mode;
use ipam_node_agent::config::KubeMode;
use ipam_node_agent::ec2::Ec2;
use ipam_node_agent::ec2::aws::AwsEc2;
use ipam_node_agent::ec2::aws::AwsEc2Config;
use ipam_node_agent::ec2::intents::NodeScope;
use ipam_node_agent::ec2::sim::SimConfig;
use ipam_node_agent::ec2::sim::SimEc2;
use ipam_node_agent::executor::ExecutorConfig;
use ipam_node_agent::host::SnatConfig;
use ipam_node_agent::host::netlink::NetlinkHost;
use ipam_node_agent::identity::Identity;
use ipam_node_agent::ipam_client::IpamClient;
use ipam_node_agent::kube::select::EniConfigSelector;
use ipam_node_agent::kube::view::ClusterView;
use ipam_node_agent::limits::LimitsResolver;
use ipam_node_agent::metrics::InstrumentedEc2;
use ipam_node_agent::metrics::Metrics;
use ipam_proto::ipam::v1 as pb;
use tokio::sync::watch;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("node-agent: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("node-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Pods from the Kubernetes view (or the manifests' view). Only a cluster's view is the complete
/// pod list (manifests usually hold ENIConfigs and policies, not the node's pods), so only then
/// may a lease whose pod is missing be released.
#[derive(Debug)]
struct ViewPods {
    view: watch::Receiver<ClusterView>,
    complete: bool,
}

impl PodDirectory for ViewPods {
    fn pod(&self, namespace: &str, name: &str) -> Option<PodMeta> {
        let view = self.view.borrow();
        let pod = view.pod(namespace, name)?;
        Some(PodMeta {
            uid: pod.uid.clone(),
            labels: pod.labels.clone(),
            service_account: pod.service_account.clone(),
            service_account_labels: view
                .service_account_labels(namespace, &pod.service_account)
                .cloned()
                .unwrap_or_default(),
        })
    }

    fn knows_pods(&self) -> bool {
        self.complete && self.view.borrow().synced
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::from_args(args)?;
    let identity = config
        .identity
        .resolve()
        .await
        .context("learning the instance's identity")?;
    tracing::info!(
        instance = %identity.instance_id,
        r#type = %identity.instance_type,
        az = %identity.availability_zone,
        primary_ip = %identity.primary_ip,
        "identity"
    );
    let servers: Vec<String> = config
        .servers
        .iter()
        .map(|s| s.trim_start_matches("http://").trim_end_matches('/').to_owned())
        .collect();
    let metrics = Metrics::new();

    let ec2: Arc<dyn Ec2> = match &config.ec2 {
        Ec2Mode::Aws { endpoint_url } => Arc::new(
            AwsEc2::new(AwsEc2Config {
                region: Some(identity.region.clone()),
                endpoint_url: endpoint_url.clone(),
                ..AwsEc2Config::default()
            })
            .await
            .context("setting up the EC2 client")?,
        ),
        Ec2Mode::Sim => Arc::new(simulated_ec2(&identity, &servers).await?),
    };
    let ec2: Arc<dyn Ec2> = Arc::new(InstrumentedEc2::new(ec2, metrics.clone()));

    let mut resolver = LimitsResolver::new(ec2.clone());
    if let Some(path) = &config.limits_cache {
        resolver = resolver.with_file_cache(path);
    }
    let resolved = resolver
        .limits(&identity.instance_type)
        .await
        .context("the instance type's limits")?;
    let limits = resolved.limits;

    let selector = EniConfigSelector {
        custom_networking: config.custom_networking,
        annotation_key: config.eni_config_annotation.clone(),
        label_key: config.eni_config_label.clone(),
    };
    let view = kube_view(&config, selector).await?;
    let (subnet_config, labels) = match &view {
        Some(view) => {
            let view = view.borrow();
            let labels = view.node.as_ref().map(|n| n.labels.clone()).unwrap_or_default();
            match &view.eni_config_name {
                Ok(Some(name)) => (name.clone(), labels),
                Ok(None) => (identity.availability_zone.clone(), labels),
                Err(error) => anyhow::bail!("choosing the node's ENIConfig: {error}"),
            }
        }
        // No Kubernetes: the ENIConfig named after the zone (ENI_CONFIG_LABEL_DEF's usual choice).
        None => (identity.availability_zone.clone(), Default::default()),
    };
    let pods: Arc<dyn PodDirectory> = match &view {
        Some(view) => Arc::new(ViewPods {
            view: view.clone(),
            complete: !matches!(config.kube, KubeMode::Manifests(_)),
        }),
        None => Arc::new(NoPods),
    };

    let host = Arc::new(NetlinkHost::new().await.context("opening netlink")?);
    let ipam = Arc::new(IpamClient::new(servers, &config.node_name, RetryPolicy::default())?);
    let scope = NodeScope {
        cluster: config.cluster_name.clone().unwrap_or_default(),
        node: config.node_name.clone(),
        instance_id: identity.instance_id.clone(),
    };
    let mut executor = ExecutorConfig::new(scope, limits, config.targets);
    executor.custom_networking = config.custom_networking;
    executor.pod_eni = config.pod_eni;
    let spec = AgentSpec {
        ipam,
        ec2,
        host,
        pods,
        registration: pb::RegisterNodeRequest {
            instance_id: identity.instance_id.clone(),
            instance_type: identity.instance_type.clone(),
            availability_zone: identity.availability_zone.clone(),
            limits: Some(pb::NodeLimits {
                max_enis: u32::from(limits.max_enis),
                ipv4_per_eni: u32::from(limits.ipv4_per_eni),
                branch_enis: u32::from(limits.branch_enis),
                trunking: limits.trunking,
            }),
            labels: labels.into_iter().collect(),
            subnet_config,
            pod_eni_enabled: config.pod_eni,
            primary_ip: identity.primary_ip.to_string(),
            ..pb::RegisterNodeRequest::default()
        },
        executor,
        snat: SnatConfig {
            external: config.external_snat,
            primary_ip: identity.primary_ip,
            vpc_cidrs: identity.vpc_cidrs.iter().map(|c| (c.network(), c.prefix())).collect(),
            exclude_cidrs: config
                .exclude_snat_cidrs
                .iter()
                .map(|c| (c.network(), c.prefix()))
                .collect(),
        },
        cni: CniConfig::default(),
        socket: config.socket_path.clone(),
        socket_mode: config.socket_mode,
        pool_interval: Duration::from_secs(5),
        orphan_grace: Duration::from_secs(60),
        metrics: Some(metrics.clone()),
    };

    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match config.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the metrics address {address}"))?;
            tracing::info!(%address, "serving metrics");
            let metrics = metrics.clone();
            Some(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = metrics_stopped.await;
                };
                if let Err(error) = ipam_node_agent::metrics::serve(listener, metrics, shutdown).await {
                    tracing::error!(%error, "the metrics server failed");
                }
            }))
        }
        None => None,
    };

    let running = agent::start(spec).await?;
    tracing::info!(epoch = running.registered.epoch, "the agent is running");
    if let Some(error) = &running.first_step_error {
        tracing::warn!(%error, "the pool is not in shape yet; the agent keeps trying");
    }
    // The cooldown is the cluster's (one ledger, one rule): IP_COOLDOWN_PERIOD can only be
    // compared with it here; `ipamctl settings` changes it for every node.
    let cluster_cooldown = Duration::from_millis(running.registered.ip_cooldown_ms);
    if cluster_cooldown != config.ip_cooldown {
        tracing::warn!(
            ?cluster_cooldown,
            requested = ?config.ip_cooldown,
            "IP_COOLDOWN_PERIOD differs from the cluster's address cooldown, which is in force; change it with `ipamctl settings set --ip-cooldown`"
        );
    }
    let fatal = tokio::select! {
        () = shutdown_signal() => None,
        reason = running.fatal() => Some(reason),
    };
    tracing::info!("stopping (leases, ENIs and rules stay for the next agent)");
    running.stop().await;
    let _ = stop_metrics.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    match fatal {
        Some(reason) => anyhow::bail!("{reason}"),
        None => Ok(()),
    }
}

/// The Kubernetes view, when there is Kubernetes (or manifests standing in for it); waits a while
/// for the first complete list so that the node's ENIConfig is known at registration.
async fn kube_view(
    config: &Config,
    selector: EniConfigSelector,
) -> anyhow::Result<Option<watch::Receiver<ClusterView>>> {
    let mut view = match &config.kube {
        KubeMode::None => return Ok(None),
        KubeMode::Manifests(dir) => ipam_node_agent::kube::files::watch_files(
            vec![dir.clone()],
            &config.node_name,
            selector,
            Duration::from_secs(5),
        )
        .with_context(|| format!("reading the manifests in {}", dir.display()))?,
        KubeMode::InCluster | KubeMode::Kubeconfig(None) => {
            let client = kube::Client::try_default().await.context("connecting to Kubernetes")?;
            ipam_node_agent::kube::watch::watch_cluster(client, &config.node_name, selector)
        }
        KubeMode::Kubeconfig(Some(path)) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            let options = kube::config::KubeConfigOptions::default();
            let kube_config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .context("the kubeconfig")?;
            let client = kube::Client::try_from(kube_config).context("connecting to Kubernetes")?;
            ipam_node_agent::kube::watch::watch_cluster(client, &config.node_name, selector)
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), view.wait_for(|v| v.synced))
        .await
        .is_err()
    {
        tracing::warn!("the Kubernetes view is not complete after 60 s; going on without it");
    }
    Ok(Some(view))
}

/// The in-process EC2 simulator for local runs: this instance in its subnet, and every subnet the
/// IPAM server has a subnet config for (the ENIs' subnets).
async fn simulated_ec2(identity: &Identity, servers: &[String]) -> anyhow::Result<SimEc2> {
    let sim = SimEc2::new(SimConfig::default())?;
    let node_cidr = identity
        .vpc_cidrs
        .iter()
        .find(|c| c.contains(identity.primary_ip))
        .with_context(|| format!("no VPC CIDR holds the primary address {}", identity.primary_ip))?;
    sim.add_subnet(&identity.subnet_id, &node_cidr.to_string(), &identity.availability_zone)?;
    sim.launch_instance(
        &identity.instance_id,
        &identity.instance_type,
        &identity.subnet_id,
        identity.primary_ip,
    )?;
    let server = servers.first().context("no IPAM server address")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{server}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to the IPAM server at {server}"))?;
    let configs = ipam_proto::ipam::v1::admin_service_client::AdminServiceClient::new(channel)
        .list_subnet_configs(pb::ListSubnetConfigsRequest::default())
        .await
        .context("listing the subnet configs")?
        .into_inner();
    for config in configs.subnet_configs {
        if config.subnet_id != identity.subnet_id {
            sim.add_subnet(&config.subnet_id, &config.subnet_cidr, &config.availability_zone)?;
        }
    }
    Ok(sim)
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
