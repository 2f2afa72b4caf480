//! What the agent knows of the cluster: one value, rebuilt by either source ([`super::watch_cluster`],
//! [`super::load_files`]) from the same conversions, so both modes see objects the same way.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use ipam_core::policy::PodMeta;
use ipam_core::policy::SgPolicy;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::Pod;

use super::crd::EniConfigSpec;
use super::crd::SecurityGroupPolicySpec;
use super::crd::to_sg_policy;
use super::select::EniConfigSelector;
use super::select::SelectError;
use super::select::select_eni_config;

/// The namespace Kubernetes gives a namespaced object without one (kubectl's default too).
pub const DEFAULT_NAMESPACE: &str = "default";
/// The service account Kubernetes gives a pod without `spec.serviceAccountName`.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// This node's labels and annotations (all the agent needs of the Node object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMeta {
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

impl NodeMeta {
    /// The parts of a Node the agent keeps.
    pub fn from_node(node: &Node) -> Self {
        Self {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            annotations: node.metadata.annotations.clone().unwrap_or_default(),
        }
    }
}

/// A pod of this node, as the agent needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid` (empty in files that do not set it).
    pub uid: String,
    /// `metadata.labels`, matched by a policy's `podSelector`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations` (e.g. the controller's `vpc.amazonaws.com/pod-eni`).
    pub annotations: BTreeMap<String, String>,
    /// `spec.serviceAccountName`, `default` when unset (as the admission controller sets it).
    pub service_account: String,
    /// `spec.hostNetwork`: such a pod gets no address from the agent.
    pub host_network: bool,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`), if reported.
    pub phase: Option<String>,
    /// Whether `metadata.deletionTimestamp` is set: the pod is being deleted.
    pub deleting: bool,
    /// `status.podIPs` (or `status.podIP`), as reported.
    pub pod_ips: Vec<String>,
}

impl PodInfo {
    /// The parts of a Pod the agent keeps. `None` for a pod without a name.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let metadata = &pod.metadata;
        let name = metadata.name.clone().filter(|n| !n.is_empty())?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut pod_ips: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
            .unwrap_or_default();
        if pod_ips.is_empty()
            && let Some(ip) = status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty())
        {
            pod_ips.push(ip);
        }
        Some(Self {
            namespace: metadata
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            name,
            uid: metadata.uid.clone().unwrap_or_default(),
            labels: metadata.labels.clone().unwrap_or_default(),
            annotations: metadata.annotations.clone().unwrap_or_default(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: status.and_then(|s| s.phase.clone()),
            deleting: metadata.deletion_timestamp.is_some(),
            pod_ips,
        })
    }
}

/// A namespaced object's key: (namespace, name).
pub type ObjectKey = (String, String);

/// What the agent knows of the cluster, from the API server or from files.
///
/// Before [`ClusterView::synced`] is true, the maps are partial: an absent pod may exist. The
/// ENIConfig selection is recomputed whenever the node or the selector's inputs change.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    /// This node's name.
    pub node_name: String,
    /// How the `ENIConfig` is chosen (the VPC CNI's variables).
    pub selector: EniConfigSelector,
    /// Whether every source has delivered its first complete list (always true from files).
    pub synced: bool,
    /// This node's labels and annotations; `None` while the Node has not been seen (or does not
    /// exist).
    pub node: Option<NodeMeta>,
    /// The name of the node's `ENIConfig` ([`select_eni_config`] on the node): `Ok(None)` when
    /// custom networking is off.
    pub eni_config_name: Result<Option<String>, SelectError>,
    /// Every `ENIConfig`, by name.
    pub eni_configs: BTreeMap<String, EniConfigSpec>,
    /// Every `SecurityGroupPolicy`, by (namespace, name).
    pub sg_policies: BTreeMap<ObjectKey, SecurityGroupPolicySpec>,
    /// The pods of this node, by (namespace, name).
    pub pods: BTreeMap<ObjectKey, PodInfo>,
    /// The labels of the `ServiceAccount`s this node's pods run as, by (namespace, name). A service
    /// account that does not exist (or is not known yet) is absent.
    pub service_accounts: BTreeMap<ObjectKey, BTreeMap<String, String>>,
}

impl ClusterView {
    /// An empty, unsynced view of `node_name`.
    pub fn new(node_name: &str, selector: EniConfigSelector) -> Self {
        let mut view = Self {
            node_name: node_name.to_owned(),
            selector,
            synced: false,
            node: None,
            eni_config_name: Ok(None),
            eni_configs: BTreeMap::new(),
            sg_policies: BTreeMap::new(),
            pods: BTreeMap::new(),
            service_accounts: BTreeMap::new(),
        };
        view.reselect();
        view
    }

    /// A pod of this node.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The spec of the node's `ENIConfig`: `None` when custom networking is off, when the node
    /// names none usable, or when the named one does not exist (the VPC CNI then allocates no
    /// ENIs: "eniconfig is not available").
    pub fn eni_config(&self) -> Option<&EniConfigSpec> {
        match &self.eni_config_name {
            Ok(Some(name)) => self.eni_configs.get(name),
            _ => None,
        }
    }

    /// The labels of a service account, if it is one this node's pods run as and it exists.
    pub fn service_account_labels(&self, namespace: &str, name: &str) -> Option<&BTreeMap<String, String>> {
        self.service_accounts.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// What the policy matcher (`ipam_core::policy`) needs of a pod: its labels and its service
    /// account's labels (empty when that account is unknown).
    pub fn pod_meta(&self, namespace: &str, name: &str) -> Option<PodMeta> {
        let pod = self.pod(namespace, name)?;
        Some(PodMeta {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            labels: pod.labels.clone(),
            service_account: pod.service_account.clone(),
            service_account_labels: self
                .service_account_labels(&pod.namespace, &pod.service_account)
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// Every policy in the domain's form. A policy with a selector Kubernetes cannot convert is
    /// left out: the controller treats it as matching nothing.
    pub fn domain_policies(&self) -> Vec<SgPolicy> {
        self.sg_policies
            .iter()
            .filter_map(|((namespace, name), spec)| match to_sg_policy(namespace, name, spec) {
                Ok(policy) => Some(policy),
                Err(e) => {
                    tracing::debug!(error = %e, "SecurityGroupPolicy matches nothing");
                    None
                }
            })
            .collect()
    }

    /// Replaces the node's metadata and recomputes the selection.
    pub(crate) fn set_node(&mut self, node: Option<NodeMeta>) {
        self.node = node;
        self.reselect();
    }

    /// Replaces the pods, then keeps only the service accounts they run as.
    pub(crate) fn set_pods(&mut self, pods: BTreeMap<ObjectKey, PodInfo>) {
        self.pods = pods;
        let used = self.used_service_accounts();
        self.service_accounts.retain(|key, _| used.contains(key));
    }

    /// The (namespace, service account) pairs this node's pods run as.
    pub(crate) fn used_service_accounts(&self) -> BTreeSet<ObjectKey> {
        self.pods
            .values()
            .map(|pod| (pod.namespace.clone(), pod.service_account.clone()))
            .collect()
    }

    /// Recomputes [`ClusterView::eni_config_name`] from the node.
    fn reselect(&mut self) {
        let empty = NodeMeta::default();
        let node = self.node.as_ref().unwrap_or(&empty);
        self.eni_config_name = select_eni_config(&node.labels, &node.annotations, &self.selector);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodIP;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::kube::crd::GroupIds;
    use crate::kube::select::DEFAULT_ENI_CONFIG_KEY;

    fn selector() -> EniConfigSelector {
        EniConfigSelector {
            custom_networking: true,
            ..EniConfigSelector::default()
        }
    }

    #[test]
    fn pod_info_defaults_as_kubernetes_does() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.5".to_owned()),
                phase: Some("Running".to_owned()),
                ..PodStatus::default()
            }),
        };
        let info = PodInfo::from_pod(&pod).expect("named");
        assert_eq!(info.namespace, "default");
        assert_eq!(info.service_account, "default");
        assert_eq!(info.pod_ips, vec!["10.0.0.5"]);
        assert_eq!(info.phase.as_deref(), Some("Running"));
        assert!(!info.deleting);
        let with_ips = Pod {
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.5".to_owned()),
                pod_ips: Some(vec![
                    PodIP {
                        ip: "10.0.0.5".to_owned(),
                    },
                    PodIP {
                        ip: "fd00::5".to_owned(),
                    },
                ]),
                ..PodStatus::default()
            }),
            ..pod.clone()
        };
        assert_eq!(
            PodInfo::from_pod(&with_ips).expect("named").pod_ips,
            vec!["10.0.0.5", "fd00::5"]
        );
        assert!(PodInfo::from_pod(&Pod::default()).is_none());
    }

    #[test]
    fn eni_config_follows_the_node() {
        let mut view = ClusterView::new("n", selector());
        assert_eq!(view.eni_config_name, Ok(Some("default".to_owned())));
        assert!(view.eni_config().is_none());
        view.eni_configs.insert(
            "az-a".to_owned(),
            EniConfigSpec {
                security_groups: vec![],
                subnet: "subnet-a".to_owned(),
            },
        );
        view.set_node(Some(NodeMeta {
            labels: [(DEFAULT_ENI_CONFIG_KEY.to_owned(), "az-a".to_owned())].into(),
            annotations: BTreeMap::new(),
        }));
        assert_eq!(view.eni_config().map(|c| c.subnet.as_str()), Some("subnet-a"));
        let off = ClusterView::new("n", EniConfigSelector::default());
        assert_eq!(off.eni_config_name, Ok(None));
    }

    #[test]
    fn pod_meta_carries_service_account_labels() {
        let mut view = ClusterView::new("n", selector());
        let pod = PodInfo {
            namespace: "ns".to_owned(),
            name: "p".to_owned(),
            service_account: "sa".to_owned(),
            labels: [("app".to_owned(), "db".to_owned())].into(),
            ..PodInfo::default()
        };
        view.service_accounts.insert(
            ("ns".to_owned(), "sa".to_owned()),
            [("team".to_owned(), "a".to_owned())].into(),
        );
        view.service_accounts
            .insert(("ns".to_owned(), "unused".to_owned()), BTreeMap::new());
        view.set_pods([(("ns".to_owned(), "p".to_owned()), pod)].into());
        assert_eq!(view.service_accounts.len(), 1, "only accounts in use are kept");
        let meta = view.pod_meta("ns", "p").expect("pod");
        assert_eq!(meta.service_account_labels.get("team").map(String::as_str), Some("a"));
        view.sg_policies.insert(
            ("ns".to_owned(), "by-sa".to_owned()),
            SecurityGroupPolicySpec {
                service_account_selector: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some([("team".to_owned(), "a".to_owned())].into()),
                    match_expressions: None,
                }),
                security_groups: GroupIds {
                    group_ids: vec!["sg-0123456789abcdef0".to_owned()],
                },
                ..SecurityGroupPolicySpec::default()
            },
        );
        let groups = ipam_core::policy::security_groups_for(&view.domain_policies(), &meta).expect("groups");
        assert_eq!(groups, vec!["sg-0123456789abcdef0"]);
    }
}
