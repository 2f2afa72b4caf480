//! Which `ENIConfig` a node uses under custom networking, decided as the VPC CNI decides it.
//!
//! # Source read
//!
//! `aws/amazon-vpc-cni-k8s` at commit `b52188387f2e2f10bf289ace929d6a63b176a4fa`:
//! `pkg/eniconfig/eniconfig.go` (`GetNodeSpecificENIConfigName`, `getEniConfigAnnotationDef`,
//! `getEniConfigLabelDef`), `pkg/ipamd/ipamd.go` (`UseCustomNetworkCfg`, `parseBoolEnvVar`) and the
//! README's entries for the three variables.
//!
//! # The rule
//!
//! The first of these that the node carries names the config, **even when its value is empty**:
//!
//! 1. the label `vpc.amazonaws.com/externalEniConfig` (fixed key; "the source of truth" for
//!    configs managed out of band, e.g. by the kubelet);
//! 2. the annotation named by `ENI_CONFIG_ANNOTATION_DEF` (default `k8s.amazonaws.com/eniConfig`);
//! 3. the label named by `ENI_CONFIG_LABEL_DEF` (default `k8s.amazonaws.com/eniConfig`);
//! 4. otherwise the name `default`.
//!
//! An unset or empty `ENI_CONFIG_*_DEF` means the default key. None of this applies unless
//! `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG` is true (default false).
//!
//! # Where this differs, and why
//!
//! * The VPC CNI logs a warning and uses `false` when `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG` is not a
//!   Go boolean; [`EniConfigSelector::from_vars`] refuses it, since a typo would silently turn custom
//!   networking off. It accepts exactly what Go's `strconv.ParseBool` accepts.
//! * A key that the node carries with an empty value makes the VPC CNI look up an `ENIConfig`
//!   named `""`, which fails ("eniconfig is not available"); [`select_eni_config`] says so instead.
//! * A `*_DEF` value that is not a Kubernetes qualified name can never match a label or an
//!   annotation; the VPC CNI then quietly falls back to `default`, this module refuses it.

use std::collections::BTreeMap;

use ipam_core::policy::LabelSelector;
use ipam_core::policy::LabelSelectorRequirement;
use ipam_core::policy::SelectorOperator;

/// `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG`: whether ENIs use the node's `ENIConfig`.
pub const ENV_CUSTOM_NETWORK_CFG: &str = "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG";
/// `ENI_CONFIG_LABEL_DEF`: the node label naming the `ENIConfig`.
pub const ENV_ENI_CONFIG_LABEL_DEF: &str = "ENI_CONFIG_LABEL_DEF";
/// `ENI_CONFIG_ANNOTATION_DEF`: the node annotation naming the `ENIConfig`.
pub const ENV_ENI_CONFIG_ANNOTATION_DEF: &str = "ENI_CONFIG_ANNOTATION_DEF";
/// The default of both `ENI_CONFIG_LABEL_DEF` and `ENI_CONFIG_ANNOTATION_DEF`.
pub const DEFAULT_ENI_CONFIG_KEY: &str = "k8s.amazonaws.com/eniConfig";
/// The label that, when present, names the `ENIConfig` before anything else (not configurable).
pub const EXTERNAL_ENI_CONFIG_LABEL: &str = "vpc.amazonaws.com/externalEniConfig";
/// The `ENIConfig` a node uses when it carries none of the keys.
pub const DEFAULT_ENI_CONFIG_NAME: &str = "default";

/// How the node's `ENIConfig` is chosen: the three environment variables of the VPC CNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniConfigSelector {
    /// `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG`.
    pub custom_networking: bool,
    /// `ENI_CONFIG_ANNOTATION_DEF`.
    pub annotation_key: String,
    /// `ENI_CONFIG_LABEL_DEF`.
    pub label_key: String,
}

impl Default for EniConfigSelector {
    /// The VPC CNI's defaults: custom networking off, both keys `k8s.amazonaws.com/eniConfig`.
    fn default() -> Self {
        Self {
            custom_networking: false,
            annotation_key: DEFAULT_ENI_CONFIG_KEY.to_owned(),
            label_key: DEFAULT_ENI_CONFIG_KEY.to_owned(),
        }
    }
}

/// A bad value of one of the selector's environment variables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorConfigError {
    /// `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG` is not a boolean.
    #[error(
        "{ENV_CUSTOM_NETWORK_CFG}={value:?} is not a boolean; use true or false (also accepted, as by the VPC \
         CNI: 1, t, T, TRUE, True, 0, f, F, FALSE, False)"
    )]
    NotABoolean {
        /// The value as set.
        value: String,
    },
    /// `ENI_CONFIG_LABEL_DEF` or `ENI_CONFIG_ANNOTATION_DEF` is not a Kubernetes qualified name, so
    /// no node could carry it.
    #[error("{variable}={value:?} is not a label or annotation key ({why}); e.g. topology.kubernetes.io/zone")]
    BadKey {
        /// The variable.
        variable: &'static str,
        /// The value as set.
        value: String,
        /// What is wrong with it.
        why: String,
    },
}

/// The node names no usable `ENIConfig`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The key that decides carries an empty value. The VPC CNI would look up an `ENIConfig` named
    /// `""` and fail.
    #[error(
        "the node's {found_in} {key:?} is empty, so it names no ENIConfig; set it to an ENIConfig's name or remove it"
    )]
    EmptyName {
        /// `label` or `annotation`.
        found_in: &'static str,
        /// The key.
        key: String,
    },
}

impl EniConfigSelector {
    /// Reads the three variables through `var` (e.g. `|k| std::env::var(k).ok()`, or a map in
    /// tests). Unset or empty means the default, as in the VPC CNI.
    ///
    /// # Errors
    ///
    /// [`SelectorConfigError::NotABoolean`] and [`SelectorConfigError::BadKey`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, SelectorConfigError> {
        let custom_networking = match var(ENV_CUSTOM_NETWORK_CFG).as_deref() {
            None | Some("") => false,
            Some(value) => parse_go_bool(value).ok_or_else(|| SelectorConfigError::NotABoolean {
                value: value.to_owned(),
            })?,
        };
        let key = |variable: &'static str| match var(variable) {
            None => Ok(DEFAULT_ENI_CONFIG_KEY.to_owned()),
            Some(value) if value.is_empty() => Ok(DEFAULT_ENI_CONFIG_KEY.to_owned()),
            Some(value) => check_key(&value)
                .map(|()| value.clone())
                .map_err(|why| SelectorConfigError::BadKey { variable, value, why }),
        };
        Ok(Self {
            custom_networking,
            annotation_key: key(ENV_ENI_CONFIG_ANNOTATION_DEF)?,
            label_key: key(ENV_ENI_CONFIG_LABEL_DEF)?,
        })
    }
}

/// The name of the node's `ENIConfig` (see the module doc for the rule), or `None` when custom
/// networking is off. `Some("default")` when the node carries none of the keys: whether an
/// `ENIConfig` of that name exists is the caller's question.
///
/// # Errors
///
/// [`SelectError::EmptyName`] when the deciding key has an empty value.
pub fn select_eni_config(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    selector: &EniConfigSelector,
) -> Result<Option<String>, SelectError> {
    if !selector.custom_networking {
        return Ok(None);
    }
    let found = labels
        .get(EXTERNAL_ENI_CONFIG_LABEL)
        .map(|v| ("label", EXTERNAL_ENI_CONFIG_LABEL, v))
        .or_else(|| {
            annotations
                .get(&selector.annotation_key)
                .map(|v| ("annotation", selector.annotation_key.as_str(), v))
        })
        .or_else(|| {
            labels
                .get(&selector.label_key)
                .map(|v| ("label", selector.label_key.as_str(), v))
        });
    match found {
        None => Ok(Some(DEFAULT_ENI_CONFIG_NAME.to_owned())),
        Some((found_in, key, value)) if value.is_empty() => Err(SelectError::EmptyName {
            found_in,
            key: key.to_owned(),
        }),
        Some((_, _, value)) => Ok(Some(value.clone())),
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Checks a label or annotation key with the domain's rules for label keys (a selector
/// requirement on the key is valid exactly when the key is a qualified name).
fn check_key(key: &str) -> Result<(), String> {
    LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelSelectorRequirement {
            key: key.to_owned(),
            operator: SelectorOperator::Exists,
            values: Vec::new(),
        }],
    }
    .validate()
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn on() -> EniConfigSelector {
        EniConfigSelector {
            custom_networking: true,
            ..EniConfigSelector::default()
        }
    }

    fn select(labels: &[(&str, &str)], annotations: &[(&str, &str)], selector: &EniConfigSelector) -> Option<String> {
        select_eni_config(&map(labels), &map(annotations), selector).expect("selects")
    }

    #[test]
    fn custom_networking_off_uses_no_config() {
        let labels = [
            (DEFAULT_ENI_CONFIG_KEY, "us-west-2a"),
            (EXTERNAL_ENI_CONFIG_LABEL, "ext"),
        ];
        assert_eq!(select(&labels, &labels, &EniConfigSelector::default()), None);
    }

    #[test]
    fn no_key_falls_back_to_default() {
        assert_eq!(select(&[("other", "x")], &[], &on()), Some("default".to_owned()));
    }

    #[test]
    fn label_alone() {
        assert_eq!(
            select(&[(DEFAULT_ENI_CONFIG_KEY, "us-west-2a")], &[], &on()),
            Some("us-west-2a".to_owned())
        );
    }

    #[test]
    fn annotation_alone() {
        assert_eq!(
            select(&[], &[(DEFAULT_ENI_CONFIG_KEY, "az-b")], &on()),
            Some("az-b".to_owned())
        );
    }

    #[test]
    fn annotation_beats_label() {
        assert_eq!(
            select(
                &[(DEFAULT_ENI_CONFIG_KEY, "from-label")],
                &[(DEFAULT_ENI_CONFIG_KEY, "from-annotation")],
                &on()
            ),
            Some("from-annotation".to_owned())
        );
    }

    #[test]
    fn external_label_beats_annotation_and_label() {
        assert_eq!(
            select(
                &[
                    (DEFAULT_ENI_CONFIG_KEY, "from-label"),
                    (EXTERNAL_ENI_CONFIG_LABEL, "external")
                ],
                &[(DEFAULT_ENI_CONFIG_KEY, "from-annotation")],
                &on()
            ),
            Some("external".to_owned())
        );
        // As an annotation it means nothing.
        assert_eq!(
            select(&[], &[(EXTERNAL_ENI_CONFIG_LABEL, "external")], &on()),
            Some("default".to_owned())
        );
    }

    #[test]
    fn custom_keys_replace_the_defaults() {
        let selector = EniConfigSelector {
            custom_networking: true,
            annotation_key: "example.com/eni".to_owned(),
            label_key: "topology.kubernetes.io/zone".to_owned(),
        };
        // The default keys are no longer looked at.
        assert_eq!(
            select(
                &[
                    (DEFAULT_ENI_CONFIG_KEY, "x"),
                    ("topology.kubernetes.io/zone", "us-west-2c")
                ],
                &[(DEFAULT_ENI_CONFIG_KEY, "y")],
                &selector
            ),
            Some("us-west-2c".to_owned())
        );
        assert_eq!(
            select(
                &[("topology.kubernetes.io/zone", "us-west-2c")],
                &[("example.com/eni", "pinned")],
                &selector
            ),
            Some("pinned".to_owned())
        );
    }

    #[test]
    fn an_empty_deciding_value_is_an_error_not_a_fallthrough() {
        let e = select_eni_config(
            &map(&[(DEFAULT_ENI_CONFIG_KEY, "from-label")]),
            &map(&[(DEFAULT_ENI_CONFIG_KEY, "")]),
            &on(),
        )
        .expect_err("empty annotation decides");
        assert_eq!(
            e,
            SelectError::EmptyName {
                found_in: "annotation",
                key: DEFAULT_ENI_CONFIG_KEY.to_owned()
            }
        );
        assert!(
            e.to_string()
                .contains("annotation \"k8s.amazonaws.com/eniConfig\" is empty"),
            "{e}"
        );
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| pairs.get(k).cloned()
    }

    #[test]
    fn from_vars_defaults() {
        assert_eq!(
            EniConfigSelector::from_vars(vars(&[])).expect("defaults"),
            EniConfigSelector::default()
        );
        // Empty means unset, as in the VPC CNI.
        let selector = EniConfigSelector::from_vars(vars(&[
            (ENV_CUSTOM_NETWORK_CFG, ""),
            (ENV_ENI_CONFIG_LABEL_DEF, ""),
            (ENV_ENI_CONFIG_ANNOTATION_DEF, ""),
        ]))
        .expect("defaults");
        assert_eq!(selector, EniConfigSelector::default());
    }

    #[test]
    fn from_vars_reads_all_three() {
        let selector = EniConfigSelector::from_vars(vars(&[
            (ENV_CUSTOM_NETWORK_CFG, "true"),
            (ENV_ENI_CONFIG_LABEL_DEF, "topology.kubernetes.io/zone"),
            (ENV_ENI_CONFIG_ANNOTATION_DEF, "example.com/eni"),
        ]))
        .expect("valid");
        assert!(selector.custom_networking);
        assert_eq!(selector.label_key, "topology.kubernetes.io/zone");
        assert_eq!(selector.annotation_key, "example.com/eni");
        for (value, expected) in [("1", true), ("T", true), ("True", true), ("0", false), ("FALSE", false)] {
            let selector = EniConfigSelector::from_vars(vars(&[(ENV_CUSTOM_NETWORK_CFG, value)])).expect("a Go bool");
            assert_eq!(selector.custom_networking, expected, "{value}");
        }
    }

    #[test]
    fn from_vars_refuses_bad_values() {
        for value in ["yes", "on", "tru", " true"] {
            let e = EniConfigSelector::from_vars(vars(&[(ENV_CUSTOM_NETWORK_CFG, value)])).expect_err("not a bool");
            assert_eq!(
                e,
                SelectorConfigError::NotABoolean {
                    value: value.to_owned()
                }
            );
            assert!(e.to_string().starts_with("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG="), "{e}");
        }
        let e = EniConfigSelector::from_vars(vars(&[(ENV_ENI_CONFIG_LABEL_DEF, "has space")])).expect_err("bad key");
        assert!(
            matches!(
                e,
                SelectorConfigError::BadKey {
                    variable: ENV_ENI_CONFIG_LABEL_DEF,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = EniConfigSelector::from_vars(vars(&[(ENV_ENI_CONFIG_ANNOTATION_DEF, "a/b/c")])).expect_err("bad key");
        assert!(e.to_string().starts_with("ENI_CONFIG_ANNOTATION_DEF=\"a/b/c\""), "{e}");
    }
}
