//! The agent's configuration: flags, each also read from an environment variable (the VPC CNI's
//! where one exists, so that an `aws-node` DaemonSet's `env:` carries over), checked into a
//! [`Config`].
//!
//! ```text
//!   flags / environment ──clap──▶ Args (raw strings) ──Config::from_args──▶ Config
//!                                                        │ every value checked; an error names
//!                                                        └ the variable, the flag and the value
//! ```
//!
//! Only `main.rs` reads the environment (through clap); [`Config::from_args`] is pure, so tests
//! give it flags. Values are kept as strings in [`Args`] and checked here rather than by clap's
//! value parsers, so that an error names the *environment variable* a DaemonSet sets, not only
//! the flag.
//!
//! # The VPC CNI's variables
//!
//! Read as the VPC CNI (aws/amazon-vpc-cni-k8s: `utils/utils.go` `GetBoolAsStringEnvVar`,
//! `pkg/networkutils/network.go` `getBoolEnvVar` and `parseCIDRString`,
//! `pkg/ipamd/datastore/data_store.go` `getCooldownPeriod`, `pkg/eniconfig` for the ENIConfig
//! label and annotation defaults) reads them, except that a value it would log and ignore is
//! refused here: a typo in a DaemonSet should stop the agent, not silently change what it does.
//!
//! * Booleans: what Go's `strconv.ParseBool` accepts: `1 t T TRUE true True 0 f F FALSE false
//!   False`. An empty value is unset (the default).
//! * `IP_COOLDOWN_PERIOD`: whole seconds (default 30); negative is refused.
//! * `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`: comma-separated IPv4 CIDRs, blanks around them ignored;
//!   an entry that does not parse, has host bits set or is IPv6 is refused (the VPC CNI skips it).
//! * `ENI_CONFIG_LABEL_DEF` / `ENI_CONFIG_ANNOTATION_DEF`: default `k8s.amazonaws.com/eniConfig`.
//! * `WARM_ENI_TARGET`, `WARM_IP_TARGET`, `MINIMUM_IP_TARGET`, `MAX_ENI`: [`Targets::from_vars`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipam_core::cidr::Ipv4Cidr;

use crate::identity::Field;
use crate::identity::Identity;
use crate::identity::IdentityError;
use crate::identity::IdentityFlags;
use crate::identity::IdentitySource;
use crate::warm;
use crate::warm::Targets;
use crate::warm::TargetsError;

/// The CNI socket's path when none is given.
pub const DEFAULT_SOCKET_PATH: &str = "/run/ipam-eks/agent.sock";
/// The CNI socket's mode when none is given: the owner (root) only.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Where `/metrics` listens when nothing is given: the VPC CNI's metrics port.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:61678";
/// The IPAM server when none is given: `ipam-server`'s default gRPC address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7400";
/// `ENI_CONFIG_LABEL_DEF` and `ENI_CONFIG_ANNOTATION_DEF` when unset, as in the VPC CNI.
pub const DEFAULT_ENI_CONFIG_KEY: &str = "k8s.amazonaws.com/eniConfig";
/// `IP_COOLDOWN_PERIOD` when unset, as in the VPC CNI.
pub const DEFAULT_IP_COOLDOWN: Duration = Duration::from_secs(30);

/// The environment variable of each setting.
pub mod env {
    /// The Kubernetes node name (the VPC CNI's DaemonSet sets it from `spec.nodeName`).
    pub const NODE_NAME: &str = "MY_NODE_NAME";
    /// The cluster name (the VPC CNI's, used in its ENI tags).
    pub const CLUSTER_NAME: &str = "CLUSTER_NAME";
    /// The IPAM servers.
    pub const SERVERS: &str = "IPAM_AGENT_SERVERS";
    /// The CNI socket's path.
    pub const SOCKET: &str = "IPAM_AGENT_SOCKET";
    /// The CNI socket's mode.
    pub const SOCKET_MODE: &str = "IPAM_AGENT_SOCKET_MODE";
    /// Where `/metrics` listens.
    pub const METRICS_LISTEN: &str = "IPAM_AGENT_METRICS_LISTEN";
    /// Custom networking.
    pub const CUSTOM_NETWORK: &str = "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG";
    /// The node label naming the node's ENIConfig.
    pub const ENI_CONFIG_LABEL: &str = "ENI_CONFIG_LABEL_DEF";
    /// The node annotation naming the node's ENIConfig.
    pub const ENI_CONFIG_ANNOTATION: &str = "ENI_CONFIG_ANNOTATION_DEF";
    /// SNAT is done outside the node.
    pub const EXTERNAL_SNAT: &str = "AWS_VPC_K8S_CNI_EXTERNALSNAT";
    /// Destinations not SNATed besides the VPC.
    pub const EXCLUDE_SNAT_CIDRS: &str = "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS";
    /// Security groups for pods.
    pub const POD_ENI: &str = "ENABLE_POD_ENI";
    /// A released address's cooldown, seconds.
    pub const IP_COOLDOWN: &str = "IP_COOLDOWN_PERIOD";
    /// How EC2 is reached.
    pub const EC2: &str = "IPAM_AGENT_EC2";
    /// Where the identity comes from.
    pub const IDENTITY: &str = "IPAM_AGENT_IDENTITY";
    /// The IMDS endpoint override.
    pub const IMDS_ENDPOINT: &str = "IPAM_AGENT_IMDS_ENDPOINT";
    /// The instance id (flag identity).
    pub const INSTANCE_ID: &str = "IPAM_AGENT_INSTANCE_ID";
    /// The instance type (flag identity).
    pub const INSTANCE_TYPE: &str = "IPAM_AGENT_INSTANCE_TYPE";
    /// The availability zone (flag identity).
    pub const AVAILABILITY_ZONE: &str = "IPAM_AGENT_AVAILABILITY_ZONE";
    /// The region (flag identity).
    pub const REGION: &str = "IPAM_AGENT_REGION";
    /// The primary IPv4 address (flag identity).
    pub const PRIMARY_IP: &str = "IPAM_AGENT_PRIMARY_IP";
    /// The primary MAC address (flag identity).
    pub const PRIMARY_MAC: &str = "IPAM_AGENT_PRIMARY_MAC";
    /// The primary ENI id (flag identity).
    pub const PRIMARY_ENI_ID: &str = "IPAM_AGENT_PRIMARY_ENI_ID";
    /// The primary subnet (flag identity).
    pub const SUBNET_ID: &str = "IPAM_AGENT_SUBNET_ID";
    /// The VPC CIDRs.
    pub const VPC_CIDRS: &str = "IPAM_AGENT_VPC_CIDRS";
    /// How Kubernetes is reached.
    pub const KUBE: &str = "IPAM_AGENT_KUBE";
    /// The kubeconfig file.
    pub const KUBECONFIG: &str = "KUBECONFIG";
    /// The manifests directory.
    pub const MANIFESTS: &str = "IPAM_AGENT_MANIFESTS";
    /// Set by the kubelet in every pod: the agent runs in a cluster.
    pub const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
    /// The instance limits' file cache.
    pub const LIMITS_CACHE: &str = "IPAM_AGENT_LIMITS_CACHE";
}

/// A setting, as an operator would look for it: its environment variable and its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knob {
    /// The environment variable.
    pub env: &'static str,
    /// The flag.
    pub flag: &'static str,
}

impl std::fmt::Display for Knob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.env, self.flag)
    }
}

const fn knob(env: &'static str, flag: &'static str) -> Knob {
    Knob { env, flag }
}

/// Every knob, for errors.
pub mod knobs {
    use super::Knob;
    use super::env;
    use super::knob;

    /// `--node-name`.
    pub const NODE_NAME: Knob = knob(env::NODE_NAME, "--node-name");
    /// `--cluster-name`.
    pub const CLUSTER_NAME: Knob = knob(env::CLUSTER_NAME, "--cluster-name");
    /// `--servers`.
    pub const SERVERS: Knob = knob(env::SERVERS, "--servers");
    /// `--socket`.
    pub const SOCKET: Knob = knob(env::SOCKET, "--socket");
    /// `--socket-mode`.
    pub const SOCKET_MODE: Knob = knob(env::SOCKET_MODE, "--socket-mode");
    /// `--metrics-listen`.
    pub const METRICS_LISTEN: Knob = knob(env::METRICS_LISTEN, "--metrics-listen");
    /// `--custom-network`.
    pub const CUSTOM_NETWORK: Knob = knob(env::CUSTOM_NETWORK, "--custom-network");
    /// `--eni-config-label`.
    pub const ENI_CONFIG_LABEL: Knob = knob(env::ENI_CONFIG_LABEL, "--eni-config-label");
    /// `--eni-config-annotation`.
    pub const ENI_CONFIG_ANNOTATION: Knob = knob(env::ENI_CONFIG_ANNOTATION, "--eni-config-annotation");
    /// `--external-snat`.
    pub const EXTERNAL_SNAT: Knob = knob(env::EXTERNAL_SNAT, "--external-snat");
    /// `--exclude-snat-cidrs`.
    pub const EXCLUDE_SNAT_CIDRS: Knob = knob(env::EXCLUDE_SNAT_CIDRS, "--exclude-snat-cidrs");
    /// `--pod-eni`.
    pub const POD_ENI: Knob = knob(env::POD_ENI, "--pod-eni");
    /// `--ip-cooldown`.
    pub const IP_COOLDOWN: Knob = knob(env::IP_COOLDOWN, "--ip-cooldown");
    /// `--ec2`.
    pub const EC2: Knob = knob(env::EC2, "--ec2");
    /// `--identity`.
    pub const IDENTITY: Knob = knob(env::IDENTITY, "--identity");
    /// `--imds-endpoint`.
    pub const IMDS_ENDPOINT: Knob = knob(env::IMDS_ENDPOINT, "--imds-endpoint");
    /// `--instance-id`.
    pub const INSTANCE_ID: Knob = knob(env::INSTANCE_ID, "--instance-id");
    /// `--instance-type`.
    pub const INSTANCE_TYPE: Knob = knob(env::INSTANCE_TYPE, "--instance-type");
    /// `--availability-zone`.
    pub const AVAILABILITY_ZONE: Knob = knob(env::AVAILABILITY_ZONE, "--availability-zone");
    /// `--region`.
    pub const REGION: Knob = knob(env::REGION, "--region");
    /// `--primary-ip`.
    pub const PRIMARY_IP: Knob = knob(env::PRIMARY_IP, "--primary-ip");
    /// `--primary-mac`.
    pub const PRIMARY_MAC: Knob = knob(env::PRIMARY_MAC, "--primary-mac");
    /// `--primary-eni-id`.
    pub const PRIMARY_ENI_ID: Knob = knob(env::PRIMARY_ENI_ID, "--primary-eni-id");
    /// `--subnet-id`.
    pub const SUBNET_ID: Knob = knob(env::SUBNET_ID, "--subnet-id");
    /// `--vpc-cidrs`.
    pub const VPC_CIDRS: Knob = knob(env::VPC_CIDRS, "--vpc-cidrs");
    /// `--kube`.
    pub const KUBE: Knob = knob(env::KUBE, "--kube");
    /// `--kubeconfig`.
    pub const KUBECONFIG: Knob = knob(env::KUBECONFIG, "--kubeconfig");
    /// `--manifests`.
    pub const MANIFESTS: Knob = knob(env::MANIFESTS, "--manifests");
    /// `--limits-cache`.
    pub const LIMITS_CACHE: Knob = knob(env::LIMITS_CACHE, "--limits-cache");
}

/// The knob of an identity field.
pub const fn identity_knob(field: Field) -> Knob {
    match field {
        Field::InstanceId => knobs::INSTANCE_ID,
        Field::InstanceType => knobs::INSTANCE_TYPE,
        Field::AvailabilityZone => knobs::AVAILABILITY_ZONE,
        Field::Region => knobs::REGION,
        Field::PrimaryIp => knobs::PRIMARY_IP,
        Field::PrimaryMac => knobs::PRIMARY_MAC,
        Field::PrimaryEniId => knobs::PRIMARY_ENI_ID,
        Field::SubnetId => knobs::SUBNET_ID,
        Field::VpcCidrs => knobs::VPC_CIDRS,
    }
}

/// What is wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is not given.
    #[error("{knob} is required: {why}")]
    Missing {
        /// The setting.
        knob: Knob,
        /// Why it is needed, or where it usually comes from.
        why: &'static str,
    },
    /// A value is not valid.
    #[error("{knob}={value:?}: {why}")]
    Invalid {
        /// The setting.
        knob: Knob,
        /// As given.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// Two settings contradict each other.
    #[error("{knob} conflicts with {other}: {why}")]
    Conflict {
        /// The setting given.
        knob: Knob,
        /// The setting it contradicts.
        other: Knob,
        /// How.
        why: &'static str,
    },
    /// A warm-pool target (the error names its variable).
    #[error(transparent)]
    Targets(#[from] TargetsError),
}

/// `Result` with [`ConfigError`].
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The flags (and their environment variables), unchecked. `main` parses them with
/// `Args::parse()`; [`Config::from_args`] checks them.
///
/// With no flags the agent reads its identity from IMDS, reaches EC2 through the AWS SDK's
/// usual chains, the IPAM server at 127.0.0.1:7400, serves the CNI on /run/ipam-eks/agent.sock
/// (0600) and `/metrics` on :61678, and finds Kubernetes in-cluster when it runs in a pod; only
/// the node name must be given (the VPC CNI's DaemonSet gives it as `MY_NODE_NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Parser)]
#[command(
    name = "node-agent",
    version,
    about = "The per-node IPAM agent for EKS custom networking"
)]
pub struct Args {
    /// The Kubernetes node name (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = env::NODE_NAME)]
    pub node_name: Option<String>,
    /// The cluster name (informational: the server names the cluster in ENI tags).
    #[arg(long, env = env::CLUSTER_NAME)]
    pub cluster_name: Option<String>,
    /// The IPAM servers, comma-separated HOST:PORT or http://HOST:PORT [default: 127.0.0.1:7400].
    #[arg(long, env = env::SERVERS, value_delimiter = ',')]
    pub servers: Vec<String>,
    /// The CNI plugin's unix socket [default: /run/ipam-eks/agent.sock].
    #[arg(long, env = env::SOCKET)]
    pub socket: Option<String>,
    /// The CNI socket's permissions, octal; never world-accessible [default: 0600].
    #[arg(long, env = env::SOCKET_MODE)]
    pub socket_mode: Option<String>,
    /// Where /metrics listens, ADDRESS:PORT, or "off" [default: 0.0.0.0:61678].
    #[arg(long, env = env::METRICS_LISTEN)]
    pub metrics_listen: Option<String>,
    /// WARM_ENI_TARGET: ENIs' worth of free addresses to keep [default: 1].
    #[arg(long, env = warm::WARM_ENI_TARGET)]
    pub warm_eni_target: Option<String>,
    /// WARM_IP_TARGET: free addresses to keep.
    #[arg(long, env = warm::WARM_IP_TARGET)]
    pub warm_ip_target: Option<String>,
    /// MINIMUM_IP_TARGET: least addresses to hold.
    #[arg(long, env = warm::MINIMUM_IP_TARGET)]
    pub minimum_ip_target: Option<String>,
    /// MAX_ENI: most ENIs, the primary included.
    #[arg(long, env = warm::MAX_ENI)]
    pub max_eni: Option<String>,
    /// Custom networking: pod ENIs in the ENIConfig's subnet [default: false].
    #[arg(long, env = env::CUSTOM_NETWORK, num_args = 0..=1, default_missing_value = "true")]
    pub custom_network: Option<String>,
    /// The node label naming the node's ENIConfig [default: k8s.amazonaws.com/eniConfig].
    #[arg(long, env = env::ENI_CONFIG_LABEL)]
    pub eni_config_label: Option<String>,
    /// The node annotation naming the node's ENIConfig [default: k8s.amazonaws.com/eniConfig].
    #[arg(long, env = env::ENI_CONFIG_ANNOTATION)]
    pub eni_config_annotation: Option<String>,
    /// SNAT is done outside the node (NAT gateway): no SNAT rules [default: false].
    #[arg(long, env = env::EXTERNAL_SNAT, num_args = 0..=1, default_missing_value = "true")]
    pub external_snat: Option<String>,
    /// Destinations not SNATed besides the VPC, comma-separated IPv4 CIDRs.
    #[arg(long, env = env::EXCLUDE_SNAT_CIDRS)]
    pub exclude_snat_cidrs: Option<String>,
    /// Security groups for pods (trunk and branch ENIs) [default: false].
    #[arg(long, env = env::POD_ENI, num_args = 0..=1, default_missing_value = "true")]
    pub pod_eni: Option<String>,
    /// Seconds a released address waits before reuse [default: 30].
    #[arg(long, env = env::IP_COOLDOWN)]
    pub ip_cooldown: Option<String>,
    /// EC2: "aws" (the SDK's chains), an endpoint URL (moto), or "sim" (in-process) [default: aws].
    #[arg(long, env = env::EC2)]
    pub ec2: Option<String>,
    /// Identity: "imds" or "flags" (--instance-id and the others) [default: imds].
    #[arg(long, env = env::IDENTITY)]
    pub identity: Option<String>,
    /// Another IMDS address than aws-config's, e.g. http://127.0.0.1:1338.
    #[arg(long, env = env::IMDS_ENDPOINT)]
    pub imds_endpoint: Option<String>,
    /// The instance id (with --identity flags).
    #[arg(long, env = env::INSTANCE_ID)]
    pub instance_id: Option<String>,
    /// The instance type (with --identity flags).
    #[arg(long, env = env::INSTANCE_TYPE)]
    pub instance_type: Option<String>,
    /// The availability zone (with --identity flags).
    #[arg(long, env = env::AVAILABILITY_ZONE)]
    pub availability_zone: Option<String>,
    /// The region (with --identity flags; derived from a standard zone when left out).
    #[arg(long, env = env::REGION)]
    pub region: Option<String>,
    /// The primary private IPv4 address (with --identity flags).
    #[arg(long, env = env::PRIMARY_IP)]
    pub primary_ip: Option<String>,
    /// The primary ENI's MAC address (with --identity flags).
    #[arg(long, env = env::PRIMARY_MAC)]
    pub primary_mac: Option<String>,
    /// The primary ENI's id (with --identity flags; optional).
    #[arg(long, env = env::PRIMARY_ENI_ID)]
    pub primary_eni_id: Option<String>,
    /// The primary ENI's subnet (with --identity flags).
    #[arg(long, env = env::SUBNET_ID)]
    pub subnet_id: Option<String>,
    /// The VPC's IPv4 CIDRs, comma-separated (required with --identity flags; overrides IMDS).
    #[arg(long, env = env::VPC_CIDRS)]
    pub vpc_cidrs: Option<String>,
    /// Kubernetes: "auto", "in-cluster", "kubeconfig", "manifests" or "none" [default: auto:
    /// manifests with --manifests, kubeconfig with --kubeconfig, in-cluster in a pod, else none].
    #[arg(long, env = env::KUBE)]
    pub kube: Option<String>,
    /// The kubeconfig file (with --kube kubeconfig; kube's default search when left out).
    #[arg(long, env = env::KUBECONFIG)]
    pub kubeconfig: Option<String>,
    /// A directory of ENIConfig / SecurityGroupPolicy YAML files, instead of a cluster.
    #[arg(long, env = env::MANIFESTS)]
    pub manifests: Option<String>,
    /// Set in every pod by the kubelet; selects in-cluster Kubernetes with --kube auto.
    #[arg(long, env = env::KUBERNETES_SERVICE_HOST, hide = true)]
    pub kubernetes_service_host: Option<String>,
    /// A JSON file keeping EC2's instance limits across restarts.
    #[arg(long, env = env::LIMITS_CACHE)]
    pub limits_cache: Option<String>,
}

/// How the agent reaches EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ec2Mode {
    /// The AWS SDK: EC2's endpoint, or `endpoint_url` (moto in tests).
    Aws {
        /// Another endpoint than EC2's, e.g. "http://127.0.0.1:5000".
        endpoint_url: Option<String>,
    },
    /// The in-process simulator.
    Sim,
}

/// How the agent reaches Kubernetes (ENIConfig, SecurityGroupPolicy, its node's pods).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeMode {
    /// The pod's service account.
    InCluster,
    /// A kubeconfig file (`None`: kube's default search, `KUBECONFIG` then `~/.kube/config`).
    Kubeconfig(Option<PathBuf>),
    /// ENIConfig / SecurityGroupPolicy YAML files in a directory, no cluster.
    Manifests(PathBuf),
    /// No Kubernetes.
    None,
}

/// The agent's configuration, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The Kubernetes node name (`MY_NODE_NAME`).
    pub node_name: String,
    /// The cluster name (`CLUSTER_NAME`), for logs and to check against the server's: the
    /// cluster tag on ENIs is the server's, learnt at registration.
    pub cluster_name: Option<String>,
    /// The IPAM servers' gRPC endpoints, "http://host:port", at least one.
    pub servers: Vec<String>,
    /// The CNI plugin's unix socket.
    pub socket_path: PathBuf,
    /// The CNI socket's permission bits (owner read/write, never others).
    pub socket_mode: u32,
    /// Where `/metrics` listens (`None`: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// The warm-pool targets.
    pub targets: Targets,
    /// `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG`.
    pub custom_networking: bool,
    /// `ENI_CONFIG_LABEL_DEF`: the node label naming the node's ENIConfig.
    pub eni_config_label: String,
    /// `ENI_CONFIG_ANNOTATION_DEF`: the node annotation naming the node's ENIConfig.
    pub eni_config_annotation: String,
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT`.
    pub external_snat: bool,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`.
    pub exclude_snat_cidrs: Vec<Ipv4Cidr>,
    /// `ENABLE_POD_ENI`.
    pub pod_eni: bool,
    /// `IP_COOLDOWN_PERIOD`.
    pub ip_cooldown: Duration,
    /// How EC2 is reached.
    pub ec2: Ec2Mode,
    /// Where the identity comes from.
    pub identity: IdentitySource,
    /// How Kubernetes is reached.
    pub kube: KubeMode,
    /// The instance limits' file cache.
    pub limits_cache: Option<PathBuf>,
}

impl Config {
    /// Checks `args` into a configuration.
    ///
    /// # Errors
    ///
    /// The first setting that is missing, invalid or contradicts another, naming its
    /// environment variable and flag.
    pub fn from_args(args: Args) -> Result<Self> {
        let node_name = required(
            knobs::NODE_NAME,
            &args.node_name,
            "the DaemonSet sets it from the pod's spec.nodeName",
        )?;
        check_dns_name(knobs::NODE_NAME, &node_name)?;
        let cluster_name = given(&args.cluster_name).map(str::to_owned);
        if let Some(name) = &cluster_name {
            check_cluster_name(name)?;
        }
        let targets = Targets::from_vars(|var| {
            let value = match var {
                warm::WARM_ENI_TARGET => &args.warm_eni_target,
                warm::WARM_IP_TARGET => &args.warm_ip_target,
                warm::MINIMUM_IP_TARGET => &args.minimum_ip_target,
                warm::MAX_ENI => &args.max_eni,
                _ => return None,
            };
            value.clone()
        })?;
        let external_snat = boolean(knobs::EXTERNAL_SNAT, &args.external_snat, false)?;
        let identity = identity(&args)?;
        Ok(Self {
            servers: servers(&args.servers)?,
            socket_path: socket_path(&args.socket)?,
            socket_mode: socket_mode(&args.socket_mode)?,
            metrics_listen: metrics_listen(&args.metrics_listen)?,
            targets,
            custom_networking: boolean(knobs::CUSTOM_NETWORK, &args.custom_network, false)?,
            eni_config_label: key(knobs::ENI_CONFIG_LABEL, &args.eni_config_label)?,
            eni_config_annotation: key(knobs::ENI_CONFIG_ANNOTATION, &args.eni_config_annotation)?,
            external_snat,
            exclude_snat_cidrs: snat_cidrs(&args.exclude_snat_cidrs)?,
            pod_eni: boolean(knobs::POD_ENI, &args.pod_eni, false)?,
            ip_cooldown: cooldown(&args.ip_cooldown)?,
            ec2: ec2_mode(&args.ec2)?,
            identity,
            kube: kube_mode(&args)?,
            limits_cache: given(&args.limits_cache).map(PathBuf::from),
            node_name,
            cluster_name,
        })
    }
}

/// The value, trimmed, unless unset or blank.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn invalid<T>(knob: Knob, value: &str, why: impl Into<String>) -> Result<T> {
    Err(ConfigError::Invalid {
        knob,
        value: value.to_owned(),
        why: why.into(),
    })
}

fn required(knob: Knob, value: &Option<String>, why: &'static str) -> Result<String> {
    given(value)
        .map(str::to_owned)
        .ok_or(ConfigError::Missing { knob, why })
}

/// A Kubernetes node name: a DNS subdomain (RFC 1123), lower case, at most 253 characters.
fn check_dns_name(knob: Knob, name: &str) -> Result<()> {
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if name.len() <= 253 && labels_ok {
        Ok(())
    } else {
        invalid(
            knob,
            name,
            "not a Kubernetes node name (lower-case DNS subdomain, e.g. ip-10-0-1-23.ec2.internal)",
        )
    }
}

/// A cluster name as EKS allows it (letters, digits, '-' and '_', starting with a letter or
/// digit, at most 100 characters); it ends up in EC2 tag values.
fn check_cluster_name(name: &str) -> Result<()> {
    let ok = name.len() <= 100
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        invalid(
            knobs::CLUSTER_NAME,
            name,
            "not a cluster name (letters, digits, '-' and '_', starting with a letter or digit, at most 100)",
        )
    }
}

/// A boolean as Go's `strconv.ParseBool` (the VPC CNI's parser) reads it; empty is unset.
fn boolean(knob: Knob, value: &Option<String>, default: bool) -> Result<bool> {
    let Some(raw) = value.as_deref() else {
        return Ok(default);
    };
    match raw.trim() {
        "" => Ok(default),
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => invalid(
            knob,
            raw,
            "not a boolean (true/false, 1/0, t/f, TRUE/FALSE, True/False)",
        ),
    }
}

fn servers(values: &[String]) -> Result<Vec<String>> {
    let entries: Vec<&str> = values.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    if entries.is_empty() {
        return Ok(vec![DEFAULT_SERVER.to_owned()]);
    }
    let mut servers = Vec::with_capacity(entries.len());
    for entry in entries {
        let (scheme, rest) = match entry.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => ("http", entry),
        };
        if scheme != "http" && scheme != "https" {
            return invalid(knobs::SERVERS, entry, "the scheme must be http:// or https://");
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let Some((host, port)) = authority.rsplit_once(':') else {
            return invalid(
                knobs::SERVERS,
                entry,
                "no port (write HOST:PORT, e.g. ipam.kube-system:7400)",
            );
        };
        let host_ok = !host.is_empty()
            && !host.contains('/')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':'));
        let bracketed = host.starts_with('[') && host.ends_with(']');
        if !host_ok || (host.contains(':') && !bracketed) {
            return invalid(
                knobs::SERVERS,
                entry,
                "not a host name or address (IPv6 in brackets: [fd00::1]:7400)",
            );
        }
        match port.parse::<u16>() {
            Ok(0) | Err(_) => return invalid(knobs::SERVERS, entry, "the port must be 1-65535"),
            Ok(_) => {}
        }
        let server = format!("{scheme}://{authority}");
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    Ok(servers)
}

fn socket_path(value: &Option<String>) -> Result<PathBuf> {
    let Some(path) = given(value) else {
        return Ok(PathBuf::from(DEFAULT_SOCKET_PATH));
    };
    if !path.starts_with('/') {
        return invalid(knobs::SOCKET, path, "must be an absolute path");
    }
    if path.ends_with('/') {
        return invalid(knobs::SOCKET, path, "names a directory, not a socket");
    }
    // sun_path holds 108 bytes, the terminating NUL included.
    if path.len() > 107 {
        return invalid(knobs::SOCKET, path, "longer than a unix socket path may be (107 bytes)");
    }
    Ok(PathBuf::from(path))
}

fn socket_mode(value: &Option<String>) -> Result<u32> {
    let Some(raw) = given(value) else {
        return Ok(DEFAULT_SOCKET_MODE);
    };
    let digits = raw.strip_prefix("0o").unwrap_or(raw);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return invalid(knobs::SOCKET_MODE, raw, "not an octal mode (e.g. 0600 or 0660)");
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|e| ConfigError::Invalid {
        knob: knobs::SOCKET_MODE,
        value: raw.to_owned(),
        why: e.to_string(),
    })?;
    if mode > 0o777 {
        return invalid(knobs::SOCKET_MODE, raw, "only permission bits (0000-0777) may be set");
    }
    if mode & 0o600 != 0o600 {
        return invalid(knobs::SOCKET_MODE, raw, "the owner needs read and write (0600)");
    }
    if mode & 0o007 != 0 {
        return invalid(
            knobs::SOCKET_MODE,
            raw,
            "the socket must not be accessible to others (use 0600 or 0660)",
        );
    }
    Ok(mode)
}

fn metrics_listen(value: &Option<String>) -> Result<Option<SocketAddr>> {
    let raw = given(value).unwrap_or(DEFAULT_METRICS_LISTEN);
    if raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match raw.parse::<SocketAddr>() {
        Ok(address) => Ok(Some(address)),
        Err(_) => invalid(
            knobs::METRICS_LISTEN,
            raw,
            "not ADDRESS:PORT (e.g. 0.0.0.0:61678) or \"off\"",
        ),
    }
}

/// A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of at most
/// 63 characters (alphanumerics, '-', '_', '.', starting and ending alphanumeric).
fn key(knob: Knob, value: &Option<String>) -> Result<String> {
    let Some(raw) = given(value) else {
        return Ok(DEFAULT_ENI_CONFIG_KEY.to_owned());
    };
    let (prefix, name) = match raw.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, raw),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !name_ok {
        return invalid(
            knob,
            raw,
            "not a Kubernetes label key (e.g. k8s.amazonaws.com/eniConfig or topology.kubernetes.io/zone)",
        );
    }
    if let Some(prefix) = prefix {
        check_dns_name(knob, prefix).map_err(|_| ConfigError::Invalid {
            knob,
            value: raw.to_owned(),
            why: "the prefix before '/' is not a DNS subdomain".to_owned(),
        })?;
    }
    Ok(raw.to_owned())
}

fn cidr_list(knob: Knob, raw: &str) -> Result<Vec<Ipv4Cidr>> {
    let mut cidrs: Vec<Ipv4Cidr> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry.contains(':') {
            return invalid(knob, raw, format!("{entry}: IPv6 is not supported"));
        }
        let cidr: Ipv4Cidr = match entry.parse() {
            Ok(cidr) => cidr,
            Err(e) => return invalid(knob, raw, format!("{entry}: {e}")),
        };
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    Ok(cidrs)
}

fn snat_cidrs(value: &Option<String>) -> Result<Vec<Ipv4Cidr>> {
    match given(value) {
        Some(raw) => cidr_list(knobs::EXCLUDE_SNAT_CIDRS, raw),
        None => Ok(Vec::new()),
    }
}

fn cooldown(value: &Option<String>) -> Result<Duration> {
    let Some(raw) = given(value) else {
        return Ok(DEFAULT_IP_COOLDOWN);
    };
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    if let Some(rest) = digits.strip_prefix('-')
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
    {
        return invalid(knobs::IP_COOLDOWN, raw, "must not be negative");
    }
    match digits.parse::<u64>() {
        Ok(seconds) if digits.bytes().all(|b| b.is_ascii_digit()) => Ok(Duration::from_secs(seconds)),
        Ok(_) => invalid(knobs::IP_COOLDOWN, raw, "not a whole number of seconds"),
        Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            invalid(knobs::IP_COOLDOWN, raw, "too large")
        }
        Err(_) => invalid(knobs::IP_COOLDOWN, raw, "not a whole number of seconds (e.g. 30)"),
    }
}

fn ec2_mode(value: &Option<String>) -> Result<Ec2Mode> {
    let Some(raw) = given(value) else {
        return Ok(Ec2Mode::Aws { endpoint_url: None });
    };
    if raw.eq_ignore_ascii_case("aws") {
        return Ok(Ec2Mode::Aws { endpoint_url: None });
    }
    if raw.eq_ignore_ascii_case("sim") {
        return Ok(Ec2Mode::Sim);
    }
    let host = raw.strip_prefix("http://").or_else(|| raw.strip_prefix("https://"));
    match host {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace) => {
            Ok(Ec2Mode::Aws {
                endpoint_url: Some(raw.to_owned()),
            })
        }
        _ => invalid(
            knobs::EC2,
            raw,
            "must be \"aws\", \"sim\" or an http(s):// endpoint URL (e.g. http://127.0.0.1:5000 for moto)",
        ),
    }
}

fn identity(args: &Args) -> Result<IdentitySource> {
    let flags = IdentityFlags {
        instance_id: args.instance_id.clone(),
        instance_type: args.instance_type.clone(),
        availability_zone: args.availability_zone.clone(),
        region: args.region.clone(),
        primary_ip: args.primary_ip.clone(),
        primary_mac: args.primary_mac.clone(),
        primary_eni_id: args.primary_eni_id.clone(),
        subnet_id: args.subnet_id.clone(),
        vpc_cidrs: given(&args.vpc_cidrs)
            .map(|raw| raw.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    let imds_endpoint = given(&args.imds_endpoint);
    if let Some(endpoint) = imds_endpoint {
        let ok = ["http://", "https://"]
            .iter()
            .any(|scheme| endpoint.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()));
        if !ok {
            return invalid(
                knobs::IMDS_ENDPOINT,
                endpoint,
                "not an http(s):// URL (e.g. http://169.254.169.254)",
            );
        }
    }
    let raw = given(&args.identity).unwrap_or("imds");
    match raw.to_ascii_lowercase().as_str() {
        "imds" => {
            if let Some(field) = flags.given().next() {
                return Err(ConfigError::Conflict {
                    knob: identity_knob(field),
                    other: knobs::IDENTITY,
                    why: "identity flags are used only with --identity flags",
                });
            }
            let vpc_cidrs = match given(&args.vpc_cidrs) {
                Some(raw) => Some(cidr_list(knobs::VPC_CIDRS, raw)?).filter(|c| !c.is_empty()),
                None => None,
            };
            Ok(IdentitySource::Imds {
                endpoint: imds_endpoint.map(str::to_owned),
                vpc_cidrs,
            })
        }
        "flags" => {
            if imds_endpoint.is_some() {
                return Err(ConfigError::Conflict {
                    knob: knobs::IMDS_ENDPOINT,
                    other: knobs::IDENTITY,
                    why: "IMDS is not asked with --identity flags",
                });
            }
            Identity::from_flags(&flags)
                .map(IdentitySource::Given)
                .map_err(identity_error)
        }
        _ => invalid(knobs::IDENTITY, raw, "must be \"imds\" or \"flags\""),
    }
}

fn identity_error(error: IdentityError) -> ConfigError {
    match error {
        IdentityError::MissingFlag { field } => ConfigError::Missing {
            knob: identity_knob(field),
            why: if field == Field::Region {
                "the availability zone is not a standard one to derive the region from"
            } else {
                "--identity flags needs it"
            },
        },
        IdentityError::BadValue { field, value, why, .. } => ConfigError::Invalid {
            knob: identity_knob(field),
            value,
            why,
        },
        // Only IMDS gives the others; reported against the identity knob all the same.
        other => ConfigError::Invalid {
            knob: knobs::IDENTITY,
            value: "flags".to_owned(),
            why: other.to_string(),
        },
    }
}

fn kube_mode(args: &Args) -> Result<KubeMode> {
    let kubeconfig = given(&args.kubeconfig).map(PathBuf::from);
    let manifests = given(&args.manifests).map(PathBuf::from);
    let in_cluster = given(&args.kubernetes_service_host).is_some();
    let raw = given(&args.kube).unwrap_or("auto");
    let conflict = |knob: Knob, why: &'static str| {
        Err(ConfigError::Conflict {
            knob,
            other: knobs::KUBE,
            why,
        })
    };
    match raw.to_ascii_lowercase().as_str() {
        "auto" => match (manifests, kubeconfig) {
            (Some(_), Some(_)) => Err(ConfigError::Conflict {
                knob: knobs::MANIFESTS,
                other: knobs::KUBECONFIG,
                why: "manifests replace the cluster; give one of them",
            }),
            (Some(dir), None) => Ok(KubeMode::Manifests(dir)),
            (None, Some(file)) => Ok(KubeMode::Kubeconfig(Some(file))),
            (None, None) if in_cluster => Ok(KubeMode::InCluster),
            (None, None) => Ok(KubeMode::None),
        },
        "in-cluster" => {
            if manifests.is_some() {
                return conflict(
                    knobs::MANIFESTS,
                    "manifests are read only with --kube manifests or auto",
                );
            }
            Ok(KubeMode::InCluster)
        }
        "kubeconfig" => {
            if manifests.is_some() {
                return conflict(
                    knobs::MANIFESTS,
                    "manifests are read only with --kube manifests or auto",
                );
            }
            Ok(KubeMode::Kubeconfig(kubeconfig))
        }
        "manifests" => match manifests {
            Some(dir) => Ok(KubeMode::Manifests(dir)),
            None => Err(ConfigError::Missing {
                knob: knobs::MANIFESTS,
                why: "--kube manifests reads ENIConfig and SecurityGroupPolicy files from it",
            }),
        },
        "none" => {
            if manifests.is_some() {
                return conflict(knobs::MANIFESTS, "--kube none reads no manifests");
            }
            Ok(KubeMode::None)
        }
        _ => invalid(
            knobs::KUBE,
            raw,
            "must be \"auto\", \"in-cluster\", \"kubeconfig\", \"manifests\" or \"none\"",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_what_go_parse_bool_accepts() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(boolean(knobs::POD_ENI, &Some(t.to_owned()), false), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(boolean(knobs::POD_ENI, &Some(f.to_owned()), true), Ok(false), "{f}");
        }
        assert_eq!(boolean(knobs::POD_ENI, &Some(String::new()), true), Ok(true));
        for bad in ["yes", "on", "tRUE", "2", "truee"] {
            assert!(boolean(knobs::POD_ENI, &Some(bad.to_owned()), false).is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_modes_never_open_the_socket_to_others() {
        let mode = |m: &str| socket_mode(&Some(m.to_owned()));
        assert_eq!(mode("0600"), Ok(0o600));
        assert_eq!(mode("660"), Ok(0o660));
        assert_eq!(mode("0o640"), Ok(0o640));
        assert!(mode("0666").is_err());
        assert!(mode("0400").is_err());
        assert!(mode("1600").is_err());
        assert!(mode("0800").is_err());
    }
}
