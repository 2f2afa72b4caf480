//! AWS's two custom resources, with the schemas AWS installs, so that the agent reads the objects
//! users already keep for the VPC CNI and the VPC resource controller.
//!
//! # Sources read
//!
//! * `aws/amazon-vpc-cni-k8s` at commit `b52188387f2e2f10bf289ace929d6a63b176a4fa`:
//!   `pkg/apis/crd/v1alpha1/eniconfig_types.go` and `charts/aws-vpc-cni/crds/customresourcedefinition.yaml`
//!   (`eniconfigs.crd.k8s.amazonaws.com`, cluster-scoped; spec `subnet` (required string) and
//!   `securityGroups` (list of strings, no `omitempty` in Go, so it may arrive as `null`)).
//! * `aws/amazon-vpc-resource-controller-k8s` at commit `b8d425119bdba371202882b808f202c6073a46cc`:
//!   `apis/vpcresources/v1beta1/securitygrouppolicy_types.go` and
//!   `config/crd/bases/vpcresources.k8s.aws_securitygrouppolicies.yaml`
//!   (`securitygrouppolicies.vpcresources.k8s.aws`, namespaced, short name `sgp`; spec `podSelector`
//!   and `serviceAccountSelector` (both `metav1.LabelSelector`, optional) and `securityGroups.groupIds`
//!   (list of strings, `minItems: 1`)).
//!
//! # Decoding is lenient on purpose
//!
//! The API server has already checked what the CRD schemas check, and one object that fails to
//! decode makes kube's watcher fail the whole list, over and over. So unknown fields are ignored
//! and a selector operator is kept as the string Kubernetes stores: an operator other than the
//! four Kubernetes knows makes the selector fail to convert, and the controller then treats the
//! policy as not matching ([`to_sg_policy`] reports it). The file loader
//! ([`super::files`]) is stricter, as `kubectl apply` is: it refuses unknown spec fields.

use std::collections::BTreeMap;

use ipam_core::policy::LabelSelector as CoreSelector;
use ipam_core::policy::LabelSelectorRequirement as CoreRequirement;
use ipam_core::policy::SelectorOperator;
use ipam_core::policy::SgPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;

/// The `apiVersion` of AWS's `ENIConfig` (amazon-vpc-cni-k8s).
pub const ENI_CONFIG_API_VERSION: &str = "crd.k8s.amazonaws.com/v1alpha1";
/// The `apiVersion` of AWS's `SecurityGroupPolicy` (amazon-vpc-resource-controller-k8s).
pub const SG_POLICY_API_VERSION: &str = "vpcresources.k8s.aws/v1beta1";

/// The spec of an `ENIConfig`: the subnet and security groups of the node's secondary ENIs under
/// custom networking. The object's name is what a node's label or annotation refers to (often the
/// availability zone).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "crd.k8s.amazonaws.com",
    version = "v1alpha1",
    kind = "ENIConfig",
    root = "EniConfig",
    plural = "eniconfigs",
    singular = "eniconfig",
    derive = "PartialEq",
    doc = "ENIConfig is the Schema for the eniconfigs API"
)]
#[serde(rename_all = "camelCase")]
pub struct EniConfigSpec {
    /// `securityGroups`: the security group ids of the ENIs; empty means the primary ENI's groups
    /// (the VPC CNI's behaviour).
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Option<Vec<String>>")]
    pub security_groups: Vec<String>,
    /// `subnet`: the EC2 subnet id the ENIs are created in.
    pub subnet: String,
}

/// The spec of a `SecurityGroupPolicy`: which pods of its namespace get a branch ENI with which
/// security groups. See `ipam_core::policy` for the matching rules.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vpcresources.k8s.aws",
    version = "v1beta1",
    kind = "SecurityGroupPolicy",
    root = "SecurityGroupPolicy",
    plural = "securitygrouppolicies",
    singular = "securitygrouppolicy",
    shortname = "sgp",
    namespaced,
    derive = "PartialEq",
    doc = "Custom Resource Definition for applying security groups to pods"
)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroupPolicySpec {
    /// `podSelector`: matched against the pod's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector_schema")]
    pub pod_selector: Option<LabelSelector>,
    /// `serviceAccountSelector`: matched against the labels of the pod's `ServiceAccount` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector_schema")]
    pub service_account_selector: Option<LabelSelector>,
    /// `securityGroups`.
    #[serde(default)]
    pub security_groups: GroupIds,
}

/// `spec.securityGroups` of a `SecurityGroupPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct GroupIds {
    /// `groupIds`: the security group ids for the pod's branch ENI.
    #[serde(
        rename = "groupIds",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(with = "Option<Vec<String>>", length(min = 1))]
    pub group_ids: Vec<String>,
}

/// Why a `SecurityGroupPolicy` cannot become the domain's [`SgPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyConversionError {
    /// A `matchExpressions` operator is none of `In`, `NotIn`, `Exists`, `DoesNotExist`. Kubernetes
    /// then fails to convert the selector and the controller treats the policy as not matching.
    #[error("{namespace}/{name}: {field}: unknown operator {operator:?}; expected In, NotIn, Exists or DoesNotExist")]
    UnknownOperator {
        /// The policy's namespace.
        namespace: String,
        /// The policy's name.
        name: String,
        /// The selector (`spec.podSelector` or `spec.serviceAccountSelector`).
        field: &'static str,
        /// The operator as written.
        operator: String,
    },
}

/// The domain's form of a policy (`ipam_core::policy::SgPolicy`), which the matcher and the
/// server take. Selector syntax is not checked here ([`SgPolicy::validate`] does that); only what
/// the domain type cannot represent is refused.
///
/// # Errors
///
/// [`PolicyConversionError::UnknownOperator`].
pub fn to_sg_policy(
    namespace: &str,
    name: &str,
    spec: &SecurityGroupPolicySpec,
) -> Result<SgPolicy, PolicyConversionError> {
    let convert =
        |selector: &Option<LabelSelector>, field: &'static str| {
            selector.as_ref().map(to_core_selector).transpose().map_err(|operator| {
                PolicyConversionError::UnknownOperator {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    field,
                    operator,
                }
            })
        };
    Ok(SgPolicy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pod_selector: convert(&spec.pod_selector, "spec.podSelector")?,
        service_account_selector: convert(&spec.service_account_selector, "spec.serviceAccountSelector")?,
        security_groups: spec.security_groups.group_ids.clone(),
    })
}

/// Kubernetes' selector as the domain's; the unknown operator on failure.
fn to_core_selector(selector: &LabelSelector) -> Result<CoreSelector, String> {
    let match_labels: BTreeMap<String, String> = selector.match_labels.clone().unwrap_or_default();
    let match_expressions = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|requirement| {
            let operator = match requirement.operator.as_str() {
                "In" => SelectorOperator::In,
                "NotIn" => SelectorOperator::NotIn,
                "Exists" => SelectorOperator::Exists,
                "DoesNotExist" => SelectorOperator::DoesNotExist,
                other => return Err(other.to_owned()),
            };
            Ok(CoreRequirement {
                key: requirement.key.clone(),
                operator,
                values: requirement.values.clone().unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CoreSelector {
        match_labels,
        match_expressions,
    })
}

/// The schema of a `metav1.LabelSelector` as controller-gen writes it into AWS's CRD (k8s-openapi's
/// own `JsonSchema` sits behind a feature this workspace does not enable).
fn label_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A label selector is a label query over a set of resources. The result of matchLabels and \
                        matchExpressions are ANDed. An empty label selector matches all objects. A null label \
                        selector matches no objects.",
        "type": "object",
        "properties": {
            "matchExpressions": {
                "description": "matchExpressions is a list of label selector requirements. The requirements are ANDed.",
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "key": { "type": "string" },
                        "operator": { "type": "string" },
                        "values": { "type": "array", "items": { "type": "string" }, "x-kubernetes-list-type": "atomic" }
                    },
                    "required": ["key", "operator"]
                },
                "x-kubernetes-list-type": "atomic"
            },
            "matchLabels": {
                "type": "object",
                "additionalProperties": { "type": "string" }
            }
        },
        "x-kubernetes-map-type": "atomic"
    })
}

/// Reads JSON `null` as the default value, as Go does for nil slices.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use kube::CustomResourceExt;
    use kube::Resource;

    use super::*;

    fn spec_schema(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> JSONSchemaProps {
        let version = &crd.spec.versions[0];
        let root = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("a schema");
        root.properties
            .as_ref()
            .and_then(|p| p.get("spec"))
            .cloned()
            .expect("a spec schema")
    }

    fn property_names(schema: &JSONSchemaProps) -> Vec<String> {
        schema.properties.iter().flatten().map(|(k, _)| k.clone()).collect()
    }

    #[test]
    fn eni_config_crd_has_aws_names_and_fields() {
        let crd = EniConfig::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("eniconfigs.crd.k8s.amazonaws.com"));
        assert_eq!(crd.spec.group, "crd.k8s.amazonaws.com");
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.kind, "ENIConfig");
        assert_eq!(crd.spec.names.plural, "eniconfigs");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        assert_eq!(EniConfig::api_version(&()), ENI_CONFIG_API_VERSION);
        let spec = spec_schema(&crd);
        assert_eq!(property_names(&spec), vec!["securityGroups", "subnet"]);
        assert_eq!(spec.required, Some(vec!["subnet".to_owned()]));
    }

    #[test]
    fn sg_policy_crd_has_aws_names_and_fields() {
        let crd = SecurityGroupPolicy::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("securitygrouppolicies.vpcresources.k8s.aws")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "SecurityGroupPolicy");
        assert_eq!(crd.spec.names.short_names, Some(vec!["sgp".to_owned()]));
        assert_eq!(crd.spec.versions[0].name, "v1beta1");
        assert_eq!(SecurityGroupPolicy::api_version(&()), SG_POLICY_API_VERSION);
        let spec = spec_schema(&crd);
        assert_eq!(
            property_names(&spec),
            vec!["podSelector", "securityGroups", "serviceAccountSelector"]
        );
        let properties = spec.properties.as_ref().expect("properties");
        let selector = &properties["podSelector"];
        assert_eq!(property_names(selector), vec!["matchExpressions", "matchLabels"]);
        let groups = &properties["securityGroups"];
        let group_ids = &groups.properties.as_ref().expect("groupIds")["groupIds"];
        assert_eq!(group_ids.min_items, Some(1));
    }

    #[test]
    fn decodes_what_the_api_server_sends() {
        let eni: EniConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": ENI_CONFIG_API_VERSION, "kind": "ENIConfig",
            "metadata": {"name": "us-west-2a", "resourceVersion": "7"},
            "spec": {"subnet": "subnet-0123456789abcdef0", "securityGroups": null},
            "status": {}
        }))
        .expect("decodes");
        assert_eq!(eni.spec.subnet, "subnet-0123456789abcdef0");
        assert!(eni.spec.security_groups.is_empty());
        let sgp: SecurityGroupPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": SG_POLICY_API_VERSION, "kind": "SecurityGroupPolicy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "podSelector": {"matchLabels": {"role": "db"},
                                "matchExpressions": [{"key": "env", "operator": "Has"}]},
                "securityGroups": {"groupIds": ["sg-1", "sg-2"]},
                "futureField": true
            }
        }))
        .expect("an unknown operator or field does not break decoding");
        assert_eq!(sgp.spec.security_groups.group_ids, vec!["sg-1", "sg-2"]);
        let e = to_sg_policy("ns", "p", &sgp.spec).expect_err("Has is no operator");
        assert!(e.to_string().contains("\"Has\""), "{e}");
        assert!(e.to_string().contains("spec.podSelector"), "{e}");
    }

    #[test]
    fn converts_to_the_domain_policy() {
        let spec = SecurityGroupPolicySpec {
            pod_selector: None,
            service_account_selector: Some(LabelSelector {
                match_labels: Some([("team".to_owned(), "a".to_owned())].into()),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tier".to_owned(),
                    operator: "NotIn".to_owned(),
                    values: Some(vec!["web".to_owned()]),
                }]),
            }),
            security_groups: GroupIds {
                group_ids: vec!["sg-0123456789abcdef0".to_owned()],
            },
        };
        let policy = to_sg_policy("ns", "p", &spec).expect("converts");
        assert!(policy.pod_selector.is_none());
        let selector = policy.service_account_selector.as_ref().expect("selector");
        assert_eq!(selector.match_labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(selector.match_expressions[0].operator, SelectorOperator::NotIn);
        assert_eq!(policy.security_groups, vec!["sg-0123456789abcdef0"]);
        policy.validate().expect("a valid policy");
    }
}
