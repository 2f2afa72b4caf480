//! Kubernetes, as the node agent sees it: AWS's `ENIConfig` and `SecurityGroupPolicy` (the same
//! CRDs and schemas the VPC CNI and the VPC resource controller use), this node (for its
//! `ENIConfig`), the pods of this node and the service accounts they run as.
//!
//! ```text
//!   API server ──watch_cluster──┐                       ┌─▶ eni_config()   subnet + SGs of new ENIs
//!     (kube-runtime watchers)   ├─▶ watch::Receiver ────┼─▶ pod(ns, name)  pods that really exist
//!   YAML files ──watch_files────┘     <ClusterView>     └─▶ domain_policies() + pod_meta()
//!     (load_files, polled)                                   → ipam_core::policy::security_groups_for
//! ```
//!
//! * [`crd`]: the two custom resources (derived with `kube::CustomResource`), and their conversion
//!   to the domain's `SgPolicy`.
//! * [`select`]: which `ENIConfig` a node uses, with the VPC CNI's precedence and variables
//!   (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG`, `ENI_CONFIG_ANNOTATION_DEF`, `ENI_CONFIG_LABEL_DEF`).
//! * [`view`]: [`ClusterView`], the one value both sources produce.
//! * [`watch`]: the cluster source (watchers, reflectors, backoff).
//! * [`files`]: the file source, for runs without a cluster.
//!
//! Library code never reads the environment: `main` passes
//! `EniConfigSelector::from_vars(|k| std::env::var(k).ok())`.

pub mod crd;
pub mod files;
pub mod select;
pub mod view;
pub mod watch;

pub use crd::EniConfig;
pub use crd::EniConfigSpec;
pub use crd::SecurityGroupPolicy;
pub use crd::SecurityGroupPolicySpec;
pub use files::FilesError;
pub use files::LoadedFiles;
pub use files::load_files;
pub use files::watch_files;
pub use select::EniConfigSelector;
pub use select::SelectError;
pub use select::SelectorConfigError;
pub use select::select_eni_config;
pub use view::ClusterView;
pub use view::NodeMeta;
pub use view::PodInfo;
pub use watch::watch_cluster;
