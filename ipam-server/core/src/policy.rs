//! The AWS "security groups for pods" policy model: the `SecurityGroupPolicy` custom resource
//! (group `vpcresources.k8s.aws`, version `v1beta1`, short name `sgp`) and the Kubernetes label
//! selectors it carries, with the matching semantics of the AWS VPC resource controller and of
//! Kubernetes apimachinery.
//!
//! # Sources read
//!
//! * `aws/amazon-vpc-resource-controller-k8s` at commit `b8d425119bdba371202882b808f202c6073a46cc`
//!   (2026-04-23): `apis/vpcresources/v1beta1/securitygrouppolicy_types.go`,
//!   `config/crd/bases/vpcresources.k8s.aws_securitygrouppolicies.yaml`,
//!   `config/samples/vpcresources_v1beta1_securitygrouppolicy.yaml`, `pkg/utils/helper.go`
//!   (`GetMatchingSecurityGroupForPods`, `filterPodSecurityGroups`, `RemoveDuplicatedSg`),
//!   `pkg/utils/helper_test.go`, `webhooks/core/pod_webhook.go`, `pkg/provider/branch/provider.go`,
//!   `pkg/provider/branch/trunk/trunk.go`, `README.md`, and commit
//!   `4d30ef7fa8c4268b8385590b6db959efb76c4cfd` ("removing security group limit of 5 from crd (#583)").
//! * `kubernetes/apimachinery` at commit `eed236ceee2c19c2753a3d93ac0631dc20750454`:
//!   `pkg/apis/meta/v1/helpers.go` (`LabelSelectorAsSelector`), `pkg/labels/selector.go`
//!   (`NewRequirement`, `Requirement.Matches`), `pkg/api/validate/content/kube.go` (`IsLabelKey`,
//!   `IsLabelValue`) and `pkg/api/validate/content/dns.go` (`IsDNS1123Subdomain`). The controller pins
//!   apimachinery v0.33.0; at that tag (commit `955939ffb8198b47fe11e4e53121d529ee6f946b`) the same
//!   rules are `IsQualifiedName`/`IsValidLabelValue` in `pkg/util/validation/validation.go`.
//!
//! # What the controller does
//!
//! * The spec is `podSelector` and `serviceAccountSelector` (both `*metav1.LabelSelector`, optional)
//!   and `securityGroups.groupIds` (`[]string`, `MinItems=1`). The types file also declares a
//!   `ServiceAccountSelector` struct with `matchNames`, but the spec does not use it: service accounts
//!   are selected by the labels of the `ServiceAccount` object only, never by name.
//! * `GetMatchingSecurityGroupForPods` lists the policies of the pod's namespace only, then reads the
//!   pod's `ServiceAccount` (`spec.serviceAccountName` in the pod's namespace). If that read fails it
//!   returns an error and the pod webhook denies the pod. That IO is the caller's: [`PodMeta`] carries
//!   the service account's labels.
//! * `filterPodSecurityGroups` skips ("invalid SGP", logged) a policy that has neither selector, or
//!   whose `groupIds` is empty. Each selector is converted with `metav1.LabelSelectorAsSelector`; the
//!   pod selector is matched against the pod's labels and the service-account selector against the
//!   service account's labels. A selector that fails to convert counts as not matched.
//! * A policy applies when `!(hasPodSelector && !podMatched) && !(hasSASelector && !saMatched)`: when
//!   both selectors are set, **both must match** (AND); an absent (nil) selector imposes no condition. The
//!   "nil selector matches nothing" rule of `LabelSelectorAsSelector` never shows here, because a nil
//!   selector is not looked at. An empty selector `{}` converts to `labels.Everything()` and so
//!   matches every pod (or every service account) of the namespace.
//! * The groups of all applying policies are appended in the order the policies were listed, then
//!   `RemoveDuplicatedSg` drops later duplicates (exact string comparison). The list comes from the
//!   controller-runtime informer cache, whose namespace index is a Go map, so that order is not
//!   deterministic between calls. No limit on the number of groups is applied.
//! * An empty result means the pod matched no policy: the webhook leaves the pod alone (no
//!   `vpc.amazonaws.com/pod-eni` resource is injected), so it uses the node's shared ENIs. A
//!   non-empty result makes the branch provider create a branch ENI with exactly those groups
//!   (Fargate: a comma-joined annotation).
//! * Group ids are not validated anywhere in the controller or the CRD schema (the sample file even
//!   carries `sg-f7990sfng33684fad`, which is not hex, and the seed uses `example_sg`); EC2 rejects
//!   unknown ids when the branch ENI is created. We accept what the CRD accepts, minus strings
//!   that cannot be an id at all (empty, spaces, control characters, over 255 bytes). Label selectors
//!   are not validated by the API server either (the CRD schema checks only JSON types).
//! * The CRD had `MaxItems=5` on `groupIds` until commit `4d30ef7` (2025-08-01) removed it. The
//!   README says several policies may together give more than 5 groups, but that the EC2 quota
//!   "security groups per network interface" is 5 by default (adjustable, hard limit 16), and that
//!   Fargate allows 5. A branch ENI is an ordinary network interface and is bound by that quota.
//!
//! # Where this module differs, and why
//!
//! * [`security_groups_for`] returns the groups sorted ascending instead of in list order: the
//!   controller's order is not deterministic anyway, and EC2 treats an interface's groups as a set,
//!   so a sorted, de-duplicated list is a canonical form that compares equal whenever the sets are
//!   equal, whatever order the policies were given in.
//! * It fails with [`PolicyError::TooManySecurityGroups`] above [`MAX_SECURITY_GROUPS`] (EC2's
//!   default quota) and with [`PolicyError::InvalidSecurityGroupId`] on a malformed id of a matching
//!   policy, where the controller would pass them to EC2 and fail there.
//! * [`SgPolicy::validate`] checks what the API server does not: selector syntax, group id syntax,
//!   at most [`MAX_SECURITY_GROUPS`] distinct groups per policy (the CRD's old `MaxItems=5`), and the
//!   Kubernetes syntax of the namespace and the name. Matching does not require a policy to be
//!   valid; it follows the controller (an unconvertible selector simply does not match).
//! * An operator other than the four of [`SelectorOperator`] cannot be deserialized. In Kubernetes
//!   it makes the selector fail to convert, so the policy never matches.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Deserializer;

/// The most security groups a pod's branch ENI may carry: the default of EC2's "security groups per
/// network interface" quota (adjustable up to 16), and the per-policy `MaxItems` the CRD had before
/// `aws/amazon-vpc-resource-controller-k8s` commit `4d30ef7`.
pub const MAX_SECURITY_GROUPS: usize = 5;

/// Longest name part of a label key (`IsLabelKey`), in bytes.
const LABEL_NAME_MAX_LEN: usize = 63;
/// Longest label value (`IsLabelValue`), in bytes.
const LABEL_VALUE_MAX_LEN: usize = 63;
/// Longest RFC 1123 subdomain (`IsDNS1123Subdomain`), in bytes.
const DNS1123_SUBDOMAIN_MAX_LEN: usize = 253;
/// Longest RFC 1123 label (`IsDNS1123Label`), in bytes.
const DNS1123_LABEL_MAX_LEN: usize = 63;

/// Why a policy or a selector is invalid, or why a pod's groups cannot be computed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// A label key (of `matchLabels` or of a `matchExpressions` requirement) is not a Kubernetes
    /// qualified name.
    #[error(
        "invalid label key {key:?}: {why}; a label key is a name of at most 63 characters of \
         [A-Za-z0-9-_.] starting and ending with an alphanumeric character, optionally preceded by a \
         DNS subdomain prefix and '/' (e.g. 'example.com/my-name')"
    )]
    InvalidLabelKey {
        /// The key as written.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// A label value (of `matchLabels` or of a requirement's `values`) is not a valid Kubernetes
    /// label value.
    #[error(
        "invalid value {value:?} for label key {key:?}: {why}; a label value is empty or at most 63 \
         characters of [A-Za-z0-9-_.] starting and ending with an alphanumeric character"
    )]
    InvalidLabelValue {
        /// The key the value belongs to.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A requirement with operator `In` or `NotIn` has no values.
    #[error(
        "the requirement on label key {key:?} uses operator {operator:?} without values; In and NotIn need \
         at least one value"
    )]
    InOperatorWithoutValues {
        /// The requirement's key.
        key: String,
        /// `In` or `NotIn`.
        operator: SelectorOperator,
    },
    /// A requirement with operator `Exists` or `DoesNotExist` has values.
    #[error(
        "the requirement on label key {key:?} uses operator {operator:?} with {count} value(s); \
         Exists and DoesNotExist take no values"
    )]
    ValuesWithExistsOperator {
        /// The requirement's key.
        key: String,
        /// `Exists` or `DoesNotExist`.
        operator: SelectorOperator,
        /// How many values were given.
        count: usize,
    },
    /// The policy's namespace is empty; a `SecurityGroupPolicy` is a namespaced object.
    #[error(
        "policy {name:?} has an empty namespace; a SecurityGroupPolicy is namespaced and applies only to \
         pods of its own namespace"
    )]
    EmptyNamespace {
        /// The policy's name.
        name: String,
    },
    /// The policy's namespace is not an RFC 1123 label, so no namespace can have it.
    #[error(
        "invalid namespace {namespace:?}: {why}; a namespace is an RFC 1123 label: at most 63 characters \
         of [a-z0-9-] starting and ending with an alphanumeric character"
    )]
    InvalidNamespace {
        /// The namespace as written.
        namespace: String,
        /// What is wrong with it.
        why: String,
    },
    /// The policy's name is empty.
    #[error("a policy in namespace {namespace:?} has an empty name; every SecurityGroupPolicy has a name")]
    EmptyName {
        /// The policy's namespace.
        namespace: String,
    },
    /// The policy's name is not an RFC 1123 subdomain, as Kubernetes requires of custom resources.
    #[error(
        "invalid policy name {name:?}: {why}; a SecurityGroupPolicy name is an RFC 1123 subdomain: at most \
         253 characters of [a-z0-9-.], each dot-separated part starting and ending with an alphanumeric \
         character"
    )]
    InvalidName {
        /// The name as written.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// The policy has neither a pod selector nor a service-account selector; the controller ignores
    /// such a policy.
    #[error(
        "policy {namespace}/{name} has neither podSelector nor serviceAccountSelector; at least one is \
         required (use an empty selector {{}} to select every pod of the namespace)"
    )]
    NoSelector {
        /// The policy's namespace.
        namespace: String,
        /// The policy's name.
        name: String,
    },
    /// The policy lists no security groups; the controller ignores such a policy.
    #[error("policy {namespace}/{name} lists no security groups; securityGroups.groupIds needs at least one id")]
    NoSecurityGroups {
        /// The policy's namespace.
        namespace: String,
        /// The policy's name.
        name: String,
    },
    /// A security group id is not of EC2's form.
    #[error(
        "invalid security group id {id:?}: use 1 to 255 printable characters without spaces \
         (normally EC2's form, e.g. 'sg-0123456789abcdef0')"
    )]
    InvalidSecurityGroupId {
        /// The id as written.
        id: String,
    },
    /// More distinct security groups than one network interface may carry.
    #[error(
        "{count} distinct security groups, but a branch network interface takes at most {max} (EC2's \
         default quota of security groups per network interface)"
    )]
    TooManySecurityGroups {
        /// How many distinct groups there are.
        count: usize,
        /// The limit, [`MAX_SECURITY_GROUPS`].
        max: usize,
    },
}

/// Operator of a label selector requirement, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum SelectorOperator {
    /// The key is present and its value is one of `values` (`values` must not be empty).
    In,
    /// The key is absent, or its value is none of `values` (`values` must not be empty).
    NotIn,
    /// The key is present, whatever its value (`values` must be empty).
    Exists,
    /// The key is absent (`values` must be empty).
    DoesNotExist,
}

/// One requirement of a label selector's `matchExpressions`: a key, an operator and values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key the requirement is about.
    pub key: String,
    /// How the key relates to `values`.
    pub operator: SelectorOperator,
    /// The values for `In` and `NotIn`; empty for `Exists` and `DoesNotExist`. Absent or `null` in
    /// JSON means empty, as in Go.
    #[serde(default, deserialize_with = "null_as_default")]
    pub values: Vec<String>,
}

/// A Kubernetes label selector: `matchLabels` and `matchExpressions`, all of which must hold. An empty selector
/// matches everything. (A *nil* selector, which matches nothing in Kubernetes, is `None` where a
/// selector is optional; see [`SgPolicy`] for what the controller makes of it.)
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Each pair requires the label to be present with exactly that value (`In` with one value).
    /// Absent or `null` in JSON means empty, as in Go.
    #[serde(default, deserialize_with = "null_as_default")]
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements. Absent or `null` in JSON means empty, as in Go.
    #[serde(default, deserialize_with = "null_as_default")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// Checks the selector as `metav1.LabelSelectorAsSelector` does: every key a qualified name,
    /// every value a label value, `In`/`NotIn` with values, `Exists`/`DoesNotExist` without. Reports
    /// the first problem: `matchLabels` in key order, then `matchExpressions` in order.
    ///
    /// # Errors
    ///
    /// [`PolicyError::InvalidLabelKey`], [`PolicyError::InvalidLabelValue`],
    /// [`PolicyError::InOperatorWithoutValues`] or [`PolicyError::ValuesWithExistsOperator`].
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (key, value) in &self.match_labels {
            check_label_key(key)?;
            check_label_value(key, value)?;
        }
        self.match_expressions
            .iter()
            .try_for_each(LabelSelectorRequirement::validate)
    }

    /// Whether `labels` satisfy the selector, as the converted Kubernetes selector decides: an empty
    /// selector matches any labels; otherwise every `matchLabels` pair and every requirement must
    /// hold. An invalid selector matches nothing, as the controller treats one that fails to convert.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.match_labels.is_empty() && self.match_expressions.is_empty() {
            return true;
        }
        if self.validate().is_err() {
            return false;
        }
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches(labels))
    }
}

impl LabelSelectorRequirement {
    /// `labels.NewRequirement`'s checks, in its order: key, number of values, each value.
    fn validate(&self) -> Result<(), PolicyError> {
        check_label_key(&self.key)?;
        match self.operator {
            SelectorOperator::In | SelectorOperator::NotIn if self.values.is_empty() => {
                return Err(PolicyError::InOperatorWithoutValues {
                    key: self.key.clone(),
                    operator: self.operator,
                });
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !self.values.is_empty() => {
                return Err(PolicyError::ValuesWithExistsOperator {
                    key: self.key.clone(),
                    operator: self.operator,
                    count: self.values.len(),
                });
            }
            _ => {}
        }
        self.values
            .iter()
            .try_for_each(|value| check_label_value(&self.key, value))
    }

    /// `labels.Requirement.Matches`: `NotIn` holds when the key is absent, `In` does not.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self.operator {
            SelectorOperator::In => labels.get(&self.key).is_some_and(|value| self.values.contains(value)),
            SelectorOperator::NotIn => labels.get(&self.key).is_none_or(|value| !self.values.contains(value)),
            SelectorOperator::Exists => labels.contains_key(&self.key),
            SelectorOperator::DoesNotExist => !labels.contains_key(&self.key),
        }
    }
}

/// A `SecurityGroupPolicy`: which pods in a namespace get a branch ENI with which security groups.
///
/// `pod_selector` is matched against the pod's labels, `service_account_selector` against the labels
/// of the pod's `ServiceAccount` object. A present selector must match; an absent one imposes nothing;
/// at least one must be present. `Some(LabelSelector::default())` (the `{}` selector) matches every
/// pod, or every service account, of the namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SgPolicy {
    /// The policy's namespace (`metadata.namespace`); it applies to pods of this namespace only.
    pub namespace: String,
    /// The policy's name (`metadata.name`).
    pub name: String,
    /// `spec.podSelector`.
    pub pod_selector: Option<LabelSelector>,
    /// `spec.serviceAccountSelector`: selects by the labels of the pod's `ServiceAccount` object.
    pub service_account_selector: Option<LabelSelector>,
    /// `spec.securityGroups.groupIds`.
    pub security_groups: Vec<String>,
}

impl SgPolicy {
    /// Checks the policy: namespace an RFC 1123 label, name an RFC 1123 subdomain, at least one
    /// selector, every present selector valid, at least one security group, every id of EC2's form,
    /// and at most [`MAX_SECURITY_GROUPS`] distinct ids. Reports the first problem, in that order.
    ///
    /// # Errors
    ///
    /// [`PolicyError::EmptyNamespace`], [`PolicyError::InvalidNamespace`], [`PolicyError::EmptyName`],
    /// [`PolicyError::InvalidName`], [`PolicyError::NoSelector`], any error of
    /// [`LabelSelector::validate`], [`PolicyError::NoSecurityGroups`],
    /// [`PolicyError::InvalidSecurityGroupId`] or [`PolicyError::TooManySecurityGroups`].
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.namespace.is_empty() {
            return Err(PolicyError::EmptyNamespace {
                name: self.name.clone(),
            });
        }
        if let Some(why) = dns1123_label_problem(&self.namespace) {
            return Err(PolicyError::InvalidNamespace {
                namespace: self.namespace.clone(),
                why: why.to_owned(),
            });
        }
        if self.name.is_empty() {
            return Err(PolicyError::EmptyName {
                namespace: self.namespace.clone(),
            });
        }
        if let Some(why) = dns1123_subdomain_problem(&self.name) {
            return Err(PolicyError::InvalidName {
                name: self.name.clone(),
                why: why.to_owned(),
            });
        }
        if self.pod_selector.is_none() && self.service_account_selector.is_none() {
            return Err(PolicyError::NoSelector {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            });
        }
        for selector in [&self.pod_selector, &self.service_account_selector]
            .into_iter()
            .flatten()
        {
            selector.validate()?;
        }
        if self.security_groups.is_empty() {
            return Err(PolicyError::NoSecurityGroups {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            });
        }
        for id in &self.security_groups {
            check_security_group_id(id)?;
        }
        let count = self.security_groups.iter().collect::<BTreeSet<_>>().len();
        if count > MAX_SECURITY_GROUPS {
            return Err(PolicyError::TooManySecurityGroups {
                count,
                max: MAX_SECURITY_GROUPS,
            });
        }
        Ok(())
    }

    /// Whether this policy applies to `pod`, exactly as the controller's `filterPodSecurityGroups`
    /// decides: same namespace; not one of the policies the controller skips (no selector at all, or
    /// no security groups); and every present selector matches (pod selector against the pod's
    /// labels, service-account selector against the service account's labels). Does not otherwise
    /// require the policy to be valid: a selector that fails [`LabelSelector::validate`] just does
    /// not match.
    #[must_use]
    pub fn matches(&self, pod: &PodMeta) -> bool {
        if self.namespace != pod.namespace {
            return false;
        }
        if self.pod_selector.is_none() && self.service_account_selector.is_none() {
            return false;
        }
        if self.security_groups.is_empty() {
            return false;
        }
        self.pod_selector
            .as_ref()
            .is_none_or(|selector| selector.matches(&pod.labels))
            && self
                .service_account_selector
                .as_ref()
                .is_none_or(|selector| selector.matches(&pod.service_account_labels))
    }
}

/// What the matcher needs to know of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodMeta {
    /// The pod's namespace; only policies of this namespace can apply.
    pub namespace: String,
    /// The pod's name (not used for matching).
    pub name: String,
    /// The pod's labels, matched by `podSelector`.
    pub labels: BTreeMap<String, String>,
    /// The pod's `spec.serviceAccountName` (not used for matching: selection is by the service
    /// account's labels; the caller uses the name to look those labels up).
    pub service_account: String,
    /// The labels of the `ServiceAccount` object named `service_account` in `namespace`, matched by
    /// `serviceAccountSelector`.
    pub service_account_labels: BTreeMap<String, String>,
}

/// The groups a pod gets: the union of every matching policy's groups (see [`SgPolicy::matches`]),
/// de-duplicated and sorted ascending (byte-wise).
///
/// Sorted because the set is what counts: EC2 treats an interface's groups as a set, and the
/// controller's own order follows an informer cache's map iteration, which is not deterministic. A
/// sorted list is a canonical form, independent of the order `policies` come in.
///
/// An empty Vec means "no policy matches: shared ENIs". Policies that do not match are not looked
/// at beyond matching.
///
/// # Errors
///
/// [`PolicyError::InvalidSecurityGroupId`] if a matching policy lists a malformed id (the smallest
/// such id is reported), and [`PolicyError::TooManySecurityGroups`] when the union has more than
/// [`MAX_SECURITY_GROUPS`] ids.
pub fn security_groups_for<'a>(
    policies: impl IntoIterator<Item = &'a SgPolicy>,
    pod: &PodMeta,
) -> Result<Vec<String>, PolicyError> {
    let groups: BTreeSet<&String> = policies
        .into_iter()
        .filter(|policy| policy.matches(pod))
        .flat_map(|policy| policy.security_groups.iter())
        .collect();
    for id in &groups {
        check_security_group_id(id)?;
    }
    if groups.len() > MAX_SECURITY_GROUPS {
        return Err(PolicyError::TooManySecurityGroups {
            count: groups.len(),
            max: MAX_SECURITY_GROUPS,
        });
    }
    Ok(groups.into_iter().cloned().collect())
}

/// Reads JSON `null` as the default value, as Go does for nil maps and slices.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

fn check_label_key(key: &str) -> Result<(), PolicyError> {
    match label_key_problem(key) {
        None => Ok(()),
        Some(why) => Err(PolicyError::InvalidLabelKey {
            key: key.to_owned(),
            why,
        }),
    }
}

fn check_label_value(key: &str, value: &str) -> Result<(), PolicyError> {
    if value.is_empty() {
        return Ok(());
    }
    match label_name_problem(value, LABEL_VALUE_MAX_LEN) {
        None => Ok(()),
        Some(why) => Err(PolicyError::InvalidLabelValue {
            key: key.to_owned(),
            value: value.to_owned(),
            why: why.to_owned(),
        }),
    }
}

/// A security group reference as the AWS CRDs take it: any string the API server would store
/// (their schemas set no pattern), here 1 to 255 printable ASCII characters without spaces. Not
/// only EC2's `sg-` + 8/17 hex form: manifests in the wild (the VPC resource controller's own
/// samples, the seed's `example_sg`) use placeholders, and refusing them here would refuse
/// manifests AWS accepts. A reference EC2 does not know fails where AWS's fails: at the EC2 call
/// that uses it (the agent reports the ENI failed, with EC2's message).
pub(crate) fn check_security_group_id(id: &str) -> Result<(), PolicyError> {
    let well_formed = (1..=255).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_graphic());
    if well_formed {
        Ok(())
    } else {
        Err(PolicyError::InvalidSecurityGroupId { id: id.to_owned() })
    }
}

/// `IsLabelKey` (formerly `IsQualifiedName`): `[prefix/]name`, the prefix an RFC 1123 subdomain, the
/// name at most 63 bytes of `[-A-Za-z0-9_.]` starting and ending alphanumeric.
fn label_key_problem(key: &str) -> Option<String> {
    let name = match key.split_once('/') {
        None => key,
        Some((_, name)) if name.contains('/') => return Some("it contains more than one '/'".to_owned()),
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Some("the prefix part before '/' is empty".to_owned());
            }
            if let Some(why) = dns1123_subdomain_problem(prefix) {
                return Some(format!("the prefix part {why}"));
            }
            name
        }
    };
    if name.is_empty() {
        return Some("the name part is empty".to_owned());
    }
    label_name_problem(name, LABEL_NAME_MAX_LEN).map(|why| format!("the name part {why}"))
}

/// The shared shape of a label key's name part and of a non-empty label value:
/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most `max_len` bytes.
fn label_name_problem(text: &str, max_len: usize) -> Option<&'static str> {
    if text.len() > max_len {
        return Some("is longer than 63 characters");
    }
    let bytes = text.as_bytes();
    let edges_alphanumeric =
        bytes.first().is_some_and(u8::is_ascii_alphanumeric) && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    let chars_allowed = bytes
        .iter()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if edges_alphanumeric && chars_allowed {
        None
    } else {
        Some(
            "must consist of alphanumeric characters, '-', '_' or '.', and start and end with an alphanumeric \
             character",
        )
    }
}

/// `IsDNS1123Subdomain`: at most 253 bytes, dot-separated parts of `[a-z0-9-]` that start and end
/// with `[a-z0-9]`.
pub(crate) fn dns1123_subdomain_problem(text: &str) -> Option<&'static str> {
    if text.len() > DNS1123_SUBDOMAIN_MAX_LEN {
        return Some("is longer than 253 characters");
    }
    if text.split('.').all(is_dns1123_label_shaped) {
        None
    } else {
        Some(
            "must be a lowercase RFC 1123 subdomain: lower case alphanumeric characters, '-' or '.', each \
             dot-separated part starting and ending with an alphanumeric character",
        )
    }
}

/// `IsDNS1123Label`: at most 63 bytes of `[a-z0-9-]`, starting and ending with `[a-z0-9]`.
fn dns1123_label_problem(text: &str) -> Option<&'static str> {
    if text.len() > DNS1123_LABEL_MAX_LEN {
        return Some("is longer than 63 characters");
    }
    if is_dns1123_label_shaped(text) {
        None
    } else {
        Some(
            "must be a lowercase RFC 1123 label: lower case alphanumeric characters or '-', starting and \
             ending with an alphanumeric character",
        )
    }
}

fn is_dns1123_label_shaped(text: &str) -> bool {
    let bytes = text.as_bytes();
    let edge = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|byte| edge(byte) || *byte == b'-')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::collection::btree_map;
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    const SG_A: &str = "sg-0123456789abcdef0";
    const SG_B: &str = "sg-11111111";
    const SG_C: &str = "sg-22222222";
    const SG_D: &str = "sg-33333333";
    const SG_E: &str = "sg-44444444";
    const SG_F: &str = "sg-55555555";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator,
            values: strings(values),
        }
    }

    fn expressions(requirements: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: requirements,
        }
    }

    fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: labels(pairs),
            match_expressions: Vec::new(),
        }
    }

    fn policy(
        name: &str,
        pod_selector: Option<LabelSelector>,
        service_account_selector: Option<LabelSelector>,
        groups: &[&str],
    ) -> SgPolicy {
        SgPolicy {
            namespace: "team-a".to_owned(),
            name: name.to_owned(),
            pod_selector,
            service_account_selector,
            security_groups: strings(groups),
        }
    }

    fn pod(pod_labels: &[(&str, &str)], sa_labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            namespace: "team-a".to_owned(),
            name: "web-0".to_owned(),
            labels: labels(pod_labels),
            service_account: "web".to_owned(),
            service_account_labels: labels(sa_labels),
        }
    }

    // ---- operators ----

    #[test]
    fn in_matches_listed_value_only_and_not_absent_key() {
        let selector = expressions(vec![requirement("env", SelectorOperator::In, &["qa", "prod"])]);
        assert!(selector.matches(&labels(&[("env", "qa")])));
        assert!(selector.matches(&labels(&[("env", "prod"), ("x", "y")])));
        assert!(!selector.matches(&labels(&[("env", "dev")])));
        assert!(!selector.matches(&labels(&[("env", "")])));
        assert!(!selector.matches(&labels(&[])));
    }

    #[test]
    fn not_in_matches_other_values_and_absent_key() {
        let selector = expressions(vec![requirement("env", SelectorOperator::NotIn, &["qa", "prod"])]);
        assert!(!selector.matches(&labels(&[("env", "qa")])));
        assert!(selector.matches(&labels(&[("env", "dev")])));
        assert!(selector.matches(&labels(&[])), "NotIn holds when the key is absent");
        assert!(selector.matches(&labels(&[("other", "qa")])));
    }

    #[test]
    fn exists_and_does_not_exist_look_at_the_key_only() {
        let exists = expressions(vec![requirement("env", SelectorOperator::Exists, &[])]);
        let absent = expressions(vec![requirement("env", SelectorOperator::DoesNotExist, &[])]);
        for present in [labels(&[("env", "")]), labels(&[("env", "qa")])] {
            assert!(exists.matches(&present));
            assert!(!absent.matches(&present));
        }
        let missing = labels(&[("other", "x")]);
        assert!(!exists.matches(&missing));
        assert!(absent.matches(&missing));
    }

    #[test]
    fn match_labels_requires_exact_pairs_and_an_empty_value_is_a_value() {
        let selector = match_labels(&[("role", "db"), ("tier", "")]);
        assert!(selector.matches(&labels(&[("role", "db"), ("tier", ""), ("x", "y")])));
        assert!(!selector.matches(&labels(&[("role", "db")])));
        assert!(!selector.matches(&labels(&[("role", "DB"), ("tier", "")])));
    }

    #[test]
    fn match_labels_and_match_expressions_are_anded() {
        let selector = LabelSelector {
            match_labels: labels(&[("role", "db")]),
            match_expressions: vec![
                requirement("env", SelectorOperator::In, &["qa", "prod"]),
                requirement("canary", SelectorOperator::DoesNotExist, &[]),
            ],
        };
        assert!(selector.matches(&labels(&[("role", "db"), ("env", "qa")])));
        assert!(!selector.matches(&labels(&[("role", "db"), ("env", "dev")])));
        assert!(!selector.matches(&labels(&[("role", "web"), ("env", "qa")])));
        assert!(!selector.matches(&labels(&[("role", "db"), ("env", "qa"), ("canary", "1")])));
    }

    #[test]
    fn empty_selector_matches_everything() {
        let selector = LabelSelector::default();
        assert!(selector.matches(&labels(&[])));
        assert!(selector.matches(&labels(&[("any", "thing")])));
        assert_eq!(selector.validate(), Ok(()));
    }

    #[test]
    fn invalid_selector_matches_nothing() {
        let no_values = expressions(vec![requirement("env", SelectorOperator::NotIn, &[])]);
        assert!(!no_values.matches(&labels(&[])));
        let bad_key = match_labels(&[("-bad", "x")]);
        assert!(!bad_key.matches(&labels(&[("-bad", "x")])));
        let bad_value = expressions(vec![requirement("env", SelectorOperator::In, &["not ok"])]);
        assert!(!bad_value.matches(&labels(&[("env", "not ok")])));
    }

    // ---- pod selector, service-account selector, absent vs empty ----

    #[test]
    fn pod_selector_alone_looks_at_pod_labels_not_service_account_labels() {
        let p = policy("p", Some(match_labels(&[("role", "db")])), None, &[SG_A]);
        assert!(p.matches(&pod(&[("role", "db")], &[])));
        assert!(!p.matches(&pod(&[], &[("role", "db")])));
    }

    #[test]
    fn service_account_selector_alone_looks_at_service_account_labels() {
        let p = policy("p", None, Some(match_labels(&[("role", "db")])), &[SG_A]);
        assert!(p.matches(&pod(&[], &[("role", "db")])));
        assert!(!p.matches(&pod(&[("role", "db")], &[])));
    }

    #[test]
    fn both_selectors_are_anded() {
        let p = policy(
            "p",
            Some(match_labels(&[("app", "web")])),
            Some(match_labels(&[("team", "a")])),
            &[SG_A],
        );
        assert!(p.matches(&pod(&[("app", "web")], &[("team", "a")])));
        assert!(!p.matches(&pod(&[("app", "web")], &[("team", "b")])));
        assert!(!p.matches(&pod(&[("app", "api")], &[("team", "a")])));
        assert!(!p.matches(&pod(&[], &[])));
    }

    #[test]
    fn empty_selectors_match_every_pod_of_the_namespace() {
        let empty_pod = policy("p", Some(LabelSelector::default()), None, &[SG_A]);
        let empty_sa = policy("s", None, Some(LabelSelector::default()), &[SG_A]);
        for candidate in [pod(&[], &[]), pod(&[("a", "b")], &[("c", "d")])] {
            assert!(empty_pod.matches(&candidate));
            assert!(empty_sa.matches(&candidate));
        }
        let mut elsewhere = pod(&[], &[]);
        elsewhere.namespace = "team-b".to_owned();
        assert!(!empty_pod.matches(&elsewhere));
    }

    #[test]
    fn an_empty_selector_still_anded_with_the_other_one() {
        let p = policy(
            "p",
            Some(match_labels(&[("app", "web")])),
            Some(LabelSelector::default()),
            &[SG_A],
        );
        assert!(p.matches(&pod(&[("app", "web")], &[])));
        assert!(!p.matches(&pod(&[("app", "api")], &[])));
    }

    #[test]
    fn policies_the_controller_skips_never_match() {
        let no_selector = policy("p", None, None, &[SG_A]);
        assert!(!no_selector.matches(&pod(&[], &[])));
        let no_groups = policy("p", Some(LabelSelector::default()), None, &[]);
        assert!(!no_groups.matches(&pod(&[], &[])));
        let invalid_present_selector = policy(
            "p",
            Some(expressions(vec![requirement("x", SelectorOperator::In, &[])])),
            None,
            &[SG_A],
        );
        assert!(!invalid_present_selector.matches(&pod(&[], &[])));
    }

    // ---- union, de-duplication, order, limit ----

    #[test]
    fn union_is_deduplicated_sorted_and_independent_of_policy_order() -> Result<(), PolicyError> {
        let first = policy("first", Some(match_labels(&[("app", "web")])), None, &[SG_C, SG_A]);
        let second = policy("second", None, Some(LabelSelector::default()), &[SG_B, SG_C, SG_B]);
        let unrelated = policy("unrelated", Some(match_labels(&[("app", "api")])), None, &[SG_D]);
        let target = pod(&[("app", "web")], &[]);
        let expected = strings(&[SG_A, SG_B, SG_C]);
        assert_eq!(security_groups_for([&first, &second, &unrelated], &target)?, expected);
        assert_eq!(security_groups_for([&unrelated, &second, &first], &target)?, expected);
        assert_eq!(
            security_groups_for(&vec![second.clone(), first.clone()], &target)?,
            expected
        );
        Ok(())
    }

    #[test]
    fn no_matching_policy_means_no_groups() -> Result<(), PolicyError> {
        let p = policy("p", Some(match_labels(&[("app", "api")])), None, &[SG_A]);
        assert_eq!(
            security_groups_for([&p], &pod(&[("app", "web")], &[]))?,
            Vec::<String>::new()
        );
        assert_eq!(security_groups_for([], &pod(&[], &[]))?, Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn more_than_five_distinct_groups_is_an_error() {
        let everyone = Some(LabelSelector::default());
        let left = policy("left", everyone.clone(), None, &[SG_A, SG_B, SG_C]);
        let right = policy("right", everyone.clone(), None, &[SG_C, SG_D, SG_E]);
        let target = pod(&[], &[]);
        assert_eq!(
            security_groups_for([&left, &right], &target).map(|groups| groups.len()),
            Ok(5)
        );
        let extra = policy("extra", everyone, None, &[SG_F]);
        assert_eq!(
            security_groups_for([&left, &right, &extra], &target),
            Err(PolicyError::TooManySecurityGroups {
                count: 6,
                max: MAX_SECURITY_GROUPS
            })
        );
    }

    #[test]
    fn malformed_group_id_of_a_matching_policy_is_an_error_of_a_non_matching_one_is_not() {
        let target = pod(&[("app", "web")], &[]);
        let bad = policy("bad", Some(match_labels(&[("app", "web")])), None, &["sg zz", SG_A]);
        assert_eq!(
            security_groups_for([&bad], &target),
            Err(PolicyError::InvalidSecurityGroupId { id: "sg zz".to_owned() })
        );
        let bad_elsewhere = policy("bad", Some(match_labels(&[("app", "api")])), None, &["sg zz"]);
        let good = policy("good", Some(match_labels(&[("app", "web")])), None, &[SG_A]);
        assert_eq!(
            security_groups_for([&bad_elsewhere, &good], &target),
            Ok(strings(&[SG_A]))
        );
    }

    // ---- validation ----

    fn key_error(key: &str) -> Option<PolicyError> {
        match_labels(&[(key, "v")]).validate().err()
    }

    #[test]
    fn valid_label_keys() {
        let long_name = "a".repeat(63);
        let prefixed_long = format!("example.com/{long_name}");
        for key in [
            "a",
            "MyName",
            "my.name",
            "123-abc",
            "a_b",
            "example.com/MyName",
            "k8s.io/app",
            &long_name,
            &prefixed_long,
        ] {
            assert_eq!(key_error(key), None, "{key:?} should be valid");
        }
    }

    #[test]
    fn invalid_label_keys() {
        let too_long = "a".repeat(64);
        let long_prefix = format!("{}/a", "a".repeat(254));
        for key in [
            "",
            "-a",
            "a-",
            "a b",
            "a:b",
            "é",
            &too_long,
            "/a",
            "a/",
            "a/b/c",
            "Example.com/a",
            "exa_mple.com/a",
            "example..com/a",
            &long_prefix,
        ] {
            let error = key_error(key);
            let Some(PolicyError::InvalidLabelKey { key: reported, .. }) = &error else {
                panic!("{key:?} should be rejected, got {error:?}");
            };
            assert_eq!(reported, key);
        }
    }

    #[test]
    fn label_values() {
        let max = "v".repeat(63);
        for value in ["", "v", "V-1_2.3", max.as_str()] {
            assert_eq!(
                match_labels(&[("k", value)]).validate(),
                Ok(()),
                "{value:?} should be valid"
            );
        }
        let too_long = "v".repeat(64);
        for value in ["-v", "v.", "a b", "a/b", too_long.as_str()] {
            let error = expressions(vec![requirement("k", SelectorOperator::In, &["ok", value])]).validate();
            let Err(PolicyError::InvalidLabelValue {
                key, value: reported, ..
            }) = &error
            else {
                panic!("{value:?} should be rejected, got {error:?}");
            };
            assert_eq!((key.as_str(), reported.as_str()), ("k", value));
        }
    }

    #[test]
    fn in_and_not_in_need_values() {
        for operator in [SelectorOperator::In, SelectorOperator::NotIn] {
            assert_eq!(
                expressions(vec![requirement("env", operator, &[])]).validate(),
                Err(PolicyError::InOperatorWithoutValues {
                    key: "env".to_owned(),
                    operator
                })
            );
        }
    }

    #[test]
    fn exists_and_does_not_exist_take_no_values() {
        for operator in [SelectorOperator::Exists, SelectorOperator::DoesNotExist] {
            assert_eq!(
                expressions(vec![requirement("env", operator, &["qa", "prod"])]).validate(),
                Err(PolicyError::ValuesWithExistsOperator {
                    key: "env".to_owned(),
                    operator,
                    count: 2
                })
            );
        }
    }

    #[test]
    fn requirement_key_is_checked_before_values() {
        assert!(matches!(
            expressions(vec![requirement("bad key", SelectorOperator::In, &[])]).validate(),
            Err(PolicyError::InvalidLabelKey { .. })
        ));
    }

    #[test]
    fn security_group_ids() {
        // EC2's form, and the placeholders of real manifests (the seed's, the controller's sample).
        for id in [
            "sg-12345678",
            "sg-0123456789abcdef0",
            "example_sg",
            "sg-f7990sfng33684fad",
        ] {
            assert_eq!(check_security_group_id(id), Ok(()), "{id:?} should be accepted");
        }
        let long = "s".repeat(256);
        for id in ["", " sg-12345678", "sg 1", "sg-1\n", "sg-\u{e9}", long.as_str()] {
            assert_eq!(
                check_security_group_id(id),
                Err(PolicyError::InvalidSecurityGroupId { id: id.to_owned() }),
                "{id:?} should be rejected"
            );
        }
    }

    #[test]
    fn a_good_policy_validates() {
        let p = policy(
            "db-access.v1",
            Some(match_labels(&[("role", "db")])),
            Some(expressions(vec![requirement("env", SelectorOperator::In, &["prod"])])),
            &[SG_A, SG_B, SG_C, SG_D, SG_E, SG_A],
        );
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn policy_validation_errors() {
        let good = policy("p", Some(LabelSelector::default()), None, &[SG_A]);

        let mut p = good.clone();
        p.namespace.clear();
        assert_eq!(p.validate(), Err(PolicyError::EmptyNamespace { name: "p".to_owned() }));

        for namespace in ["Team-a", "team.a", "-team", &"n".repeat(64)] {
            let mut p = good.clone();
            p.namespace = namespace.to_owned();
            let error = p.validate();
            let Err(PolicyError::InvalidNamespace {
                namespace: reported, ..
            }) = &error
            else {
                panic!("namespace {namespace:?} should be rejected, got {error:?}");
            };
            assert_eq!(reported, namespace);
        }

        let mut p = good.clone();
        p.name.clear();
        assert_eq!(
            p.validate(),
            Err(PolicyError::EmptyName {
                namespace: "team-a".to_owned()
            })
        );

        for name in ["My-Policy", "a..b", "a_b", "p.", &"n".repeat(254)] {
            let mut p = good.clone();
            p.name = name.to_owned();
            let error = p.validate();
            let Err(PolicyError::InvalidName { name: reported, .. }) = &error else {
                panic!("name {name:?} should be rejected, got {error:?}");
            };
            assert_eq!(reported, name);
        }

        let mut p = good.clone();
        p.pod_selector = None;
        assert_eq!(
            p.validate(),
            Err(PolicyError::NoSelector {
                namespace: "team-a".to_owned(),
                name: "p".to_owned()
            })
        );

        let mut p = good.clone();
        p.service_account_selector = Some(expressions(vec![requirement("x", SelectorOperator::Exists, &["y"])]));
        assert_eq!(
            p.validate(),
            Err(PolicyError::ValuesWithExistsOperator {
                key: "x".to_owned(),
                operator: SelectorOperator::Exists,
                count: 1
            })
        );

        let mut p = good.clone();
        p.security_groups.clear();
        assert_eq!(
            p.validate(),
            Err(PolicyError::NoSecurityGroups {
                namespace: "team-a".to_owned(),
                name: "p".to_owned()
            })
        );

        let mut p = good.clone();
        p.security_groups.push("sg-not an id".to_owned());
        assert_eq!(
            p.validate(),
            Err(PolicyError::InvalidSecurityGroupId {
                id: "sg-not an id".to_owned()
            })
        );

        let mut p = good;
        p.security_groups = strings(&[SG_A, SG_B, SG_C, SG_D, SG_E, SG_F]);
        assert_eq!(
            p.validate(),
            Err(PolicyError::TooManySecurityGroups {
                count: 6,
                max: MAX_SECURITY_GROUPS
            })
        );
    }

    #[test]
    fn error_messages_say_what_is_allowed() {
        let message = PolicyError::InOperatorWithoutValues {
            key: "env".to_owned(),
            operator: SelectorOperator::NotIn,
        }
        .to_string();
        assert!(message.contains("\"env\"") && message.contains("NotIn") && message.contains("at least one value"));
        let message = PolicyError::TooManySecurityGroups { count: 6, max: 5 }.to_string();
        assert!(message.contains('6') && message.contains("at most 5"));
        let message = PolicyError::InvalidSecurityGroupId { id: "sg x".to_owned() }.to_string();
        assert!(message.contains("printable characters without spaces"));
        let message = PolicyError::NoSelector {
            namespace: "ns".to_owned(),
            name: "p".to_owned(),
        }
        .to_string();
        assert!(message.contains("ns/p") && message.contains("{}"));
    }

    // ---- serde ----

    /// The JSON shape of a `SecurityGroupPolicy` spec, for these tests only: the CRD envelope is
    /// parsed elsewhere.
    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SpecJson {
        pod_selector: Option<LabelSelector>,
        service_account_selector: Option<LabelSelector>,
        security_groups: GroupIdsJson,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct GroupIdsJson {
        group_ids: Vec<String>,
    }

    #[test]
    fn aws_example_spec_deserializes_into_policy_selectors() {
        // podSelector: {matchLabels: {role: test-role}}; securityGroups: {groupIds: [sg-0123456789abcdef0]}
        let json = r#"{
            "podSelector": { "matchLabels": { "role": "test-role" } },
            "securityGroups": { "groupIds": ["sg-0123456789abcdef0"] }
        }"#;
        let spec: SpecJson = serde_json::from_str(json).expect("the AWS example spec parses");
        assert_eq!(spec.pod_selector, Some(match_labels(&[("role", "test-role")])));
        assert_eq!(spec.service_account_selector, None);
        let p = SgPolicy {
            namespace: "team-a".to_owned(),
            name: "my-security-group-policy".to_owned(),
            pod_selector: spec.pod_selector,
            service_account_selector: spec.service_account_selector,
            security_groups: spec.security_groups.group_ids,
        };
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(
            security_groups_for([&p], &pod(&[("role", "test-role")], &[])),
            Ok(strings(&[SG_A]))
        );
        assert_eq!(
            security_groups_for([&p], &pod(&[("role", "other")], &[])),
            Ok(Vec::new())
        );
    }

    #[test]
    fn selector_json_follows_kubernetes_spelling() {
        let json = r#"{
            "matchLabels": { "role": "db" },
            "matchExpressions": [
                { "key": "environment", "operator": "In", "values": ["production", "qa"] },
                { "key": "canary", "operator": "DoesNotExist" },
                { "key": "tier", "operator": "NotIn", "values": null }
            ]
        }"#;
        let selector: LabelSelector = serde_json::from_str(json).expect("selector parses");
        assert_eq!(
            selector,
            LabelSelector {
                match_labels: labels(&[("role", "db")]),
                match_expressions: vec![
                    requirement("environment", SelectorOperator::In, &["production", "qa"]),
                    requirement("canary", SelectorOperator::DoesNotExist, &[]),
                    requirement("tier", SelectorOperator::NotIn, &[]),
                ],
            }
        );
        let round_trip: LabelSelector =
            serde_json::from_value(serde_json::to_value(&selector).expect("serializes")).expect("parses back");
        assert_eq!(round_trip, selector);
    }

    #[test]
    fn empty_and_null_selector_fields_mean_an_empty_selector() {
        for json in ["{}", r#"{"matchLabels": null, "matchExpressions": null}"#] {
            let selector: LabelSelector = serde_json::from_str(json).expect("selector parses");
            assert_eq!(selector, LabelSelector::default());
            assert!(selector.matches(&labels(&[("any", "thing")])));
        }
    }

    #[test]
    fn operators_kubernetes_does_not_allow_in_label_selectors_are_rejected() {
        for operator in ["Gt", "in", "Equals", ""] {
            let json = format!(r#"{{"key": "k", "operator": "{operator}", "values": ["1"]}}"#);
            assert!(
                serde_json::from_str::<LabelSelectorRequirement>(&json).is_err(),
                "{operator:?}"
            );
        }
    }

    // ---- properties ----

    fn key_strategy() -> impl Strategy<Value = String> {
        prop_oneof!["[a-d]{1,2}", "example\\.com/[a-d]{1,2}"]
    }

    fn value_strategy() -> impl Strategy<Value = String> {
        "[x-z]{0,2}"
    }

    proptest! {
        #[test]
        fn match_labels_selector_matches_iff_every_pair_is_present(
            wanted in btree_map(key_strategy(), value_strategy(), 0..4),
            actual in btree_map(key_strategy(), value_strategy(), 0..6),
        ) {
            let selector = LabelSelector { match_labels: wanted.clone(), match_expressions: Vec::new() };
            let expected = wanted.iter().all(|(key, value)| actual.get(key) == Some(value));
            prop_assert_eq!(selector.matches(&actual), expected);
        }

        #[test]
        fn not_in_is_the_negation_of_in_when_the_key_is_present(
            key in key_strategy(),
            values in vec(value_strategy(), 1..4),
            present in value_strategy(),
            mut others in btree_map(key_strategy(), value_strategy(), 0..4),
        ) {
            others.insert(key.clone(), present);
            let selector = |operator| LabelSelector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![LabelSelectorRequirement {
                    key: key.clone(),
                    operator,
                    values: values.clone(),
                }],
            };
            prop_assert_eq!(
                selector(SelectorOperator::NotIn).matches(&others),
                !selector(SelectorOperator::In).matches(&others)
            );
        }
    }
}
