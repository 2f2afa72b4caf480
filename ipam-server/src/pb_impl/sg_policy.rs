//! Security group policies: `pb::SgPolicy` ⇄ [`SgPolicy`], with their label selectors. An unset
//! selector stays `None` (the policy does not select by it); a set but empty one selects all.

use std::collections::BTreeMap;

use ipam_core::CommandBody;
use ipam_core::ids::RequestId;
use ipam_core::policy::LabelSelector;
use ipam_core::policy::LabelSelectorRequirement;
use ipam_core::policy::SelectorOperator;
use ipam_core::policy::SgPolicy;
use ipam_proto::ipam::v1 as pb;

use super::Write;
use super::error::Result;
use super::field;

/// The domain's operator of a protobuf operator; `None` for `UNSPECIFIED`.
pub fn operator_from_pb(operator: pb::LabelSelectorOperator) -> Option<SelectorOperator> {
    match operator {
        pb::LabelSelectorOperator::Unspecified => None,
        pb::LabelSelectorOperator::In => Some(SelectorOperator::In),
        pb::LabelSelectorOperator::NotIn => Some(SelectorOperator::NotIn),
        pb::LabelSelectorOperator::Exists => Some(SelectorOperator::Exists),
        pb::LabelSelectorOperator::DoesNotExist => Some(SelectorOperator::DoesNotExist),
    }
}

/// The protobuf operator of a domain operator.
pub fn operator_to_pb(operator: SelectorOperator) -> pb::LabelSelectorOperator {
    match operator {
        SelectorOperator::In => pb::LabelSelectorOperator::In,
        SelectorOperator::NotIn => pb::LabelSelectorOperator::NotIn,
        SelectorOperator::Exists => pb::LabelSelectorOperator::Exists,
        SelectorOperator::DoesNotExist => pb::LabelSelectorOperator::DoesNotExist,
    }
}

/// A label selector from the wire. Keys and values are checked by the domain
/// (`SgPolicy::validate`); here only the operators, which must be set and known.
pub fn selector_from_pb(selector: &pb::LabelSelector) -> Result<LabelSelector> {
    let match_expressions = selector
        .match_expressions
        .iter()
        .enumerate()
        .map(|(i, requirement)| {
            let operator = field::required_enum(
                "operator",
                "LabelSelectorOperator",
                requirement.operator,
                operator_from_pb,
            )
            .map_err(|e| e.within(&format!("match_expressions[{i}]")))?;
            Ok(LabelSelectorRequirement {
                key: requirement.key.clone(),
                operator,
                values: requirement.values.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LabelSelector {
        match_labels: selector
            .match_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        match_expressions,
    })
}

/// A label selector as the API shows it.
pub fn selector_to_pb(selector: &LabelSelector) -> pb::LabelSelector {
    pb::LabelSelector {
        match_labels: selector
            .match_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        match_expressions: selector
            .match_expressions
            .iter()
            .map(|r| pb::LabelSelectorRequirement {
                key: r.key.clone(),
                operator: operator_to_pb(r.operator).into(),
                values: r.values.clone(),
            })
            .collect(),
    }
}

/// A policy from the wire. Namespace and name are required; the rest (selector syntax, group
/// ids, at least one selector and one group) is the domain's `SgPolicy::validate`.
/// `updated_at_unix_ms` is ignored.
pub fn sg_policy_from_pb(policy: &pb::SgPolicy) -> Result<SgPolicy> {
    let selector = |field: &str, selector: Option<&pb::LabelSelector>| {
        selector.map(selector_from_pb).transpose().map_err(|e| e.within(field))
    };
    Ok(SgPolicy {
        namespace: field::required("namespace", &policy.namespace)?,
        name: field::required("name", &policy.name)?,
        pod_selector: selector("pod_selector", policy.pod_selector.as_ref())?,
        service_account_selector: selector("service_account_selector", policy.service_account_selector.as_ref())?,
        security_groups: policy.security_group_ids.clone(),
    })
}

/// A policy as the API shows it. The domain does not record when it changed, so
/// `updated_at_unix_ms` is 0.
pub fn sg_policy_to_pb(policy: &SgPolicy) -> pb::SgPolicy {
    pb::SgPolicy {
        namespace: policy.namespace.clone(),
        name: policy.name.clone(),
        pod_selector: policy.pod_selector.as_ref().map(selector_to_pb),
        service_account_selector: policy.service_account_selector.as_ref().map(selector_to_pb),
        security_group_ids: policy.security_groups.clone(),
        updated_at_unix_ms: 0,
    }
}

/// `UpsertSgPolicy`'s request id and policy (the command is `CommandBody::UpsertSgPolicy`).
pub fn upsert_sg_policy(req: &pb::UpsertSgPolicyRequest) -> Result<(RequestId, SgPolicy)> {
    let request_id = field::request_id("request_id", &req.request_id)?;
    let policy = field::message("policy", req.policy.as_ref())?;
    let policy = sg_policy_from_pb(policy).map_err(|e| e.within("policy"))?;
    Ok((request_id, policy))
}

/// `DeleteSgPolicy`'s command.
pub fn delete_sg_policy(req: &pb::DeleteSgPolicyRequest) -> Result<Write> {
    Ok(Write {
        request_id: Some(field::request_id("request_id", &req.request_id)?),
        body: CommandBody::DeleteSgPolicy {
            namespace: field::required("namespace", &req.namespace)?,
            name: field::required("name", &req.name)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb_impl::error::PbError;

    fn policy() -> pb::SgPolicy {
        pb::SgPolicy {
            namespace: "payments".to_owned(),
            name: "db-access".to_owned(),
            pod_selector: Some(pb::LabelSelector {
                match_labels: [("app".to_owned(), "api".to_owned())].into_iter().collect(),
                match_expressions: vec![
                    pb::LabelSelectorRequirement {
                        key: "tier".to_owned(),
                        operator: pb::LabelSelectorOperator::In.into(),
                        values: vec!["a".to_owned(), "b".to_owned()],
                    },
                    pb::LabelSelectorRequirement {
                        key: "canary".to_owned(),
                        operator: pb::LabelSelectorOperator::DoesNotExist.into(),
                        values: Vec::new(),
                    },
                    pb::LabelSelectorRequirement {
                        key: "zone".to_owned(),
                        operator: pb::LabelSelectorOperator::NotIn.into(),
                        values: vec!["x".to_owned()],
                    },
                    pb::LabelSelectorRequirement {
                        key: "team".to_owned(),
                        operator: pb::LabelSelectorOperator::Exists.into(),
                        values: Vec::new(),
                    },
                ],
            }),
            service_account_selector: None,
            security_group_ids: vec!["sg-0123456789abcdef0".to_owned()],
            updated_at_unix_ms: 0,
        }
    }

    #[test]
    fn round_trip_keeps_unset_and_empty_selectors_apart() {
        let pb = policy();
        let domain = sg_policy_from_pb(&pb).unwrap_or_else(|e| panic!("{e}"));
        assert!(domain.service_account_selector.is_none());
        assert_eq!(domain.pod_selector.as_ref().map(|s| s.match_expressions.len()), Some(4));
        assert_eq!(domain.validate(), Ok(()));
        assert_eq!(sg_policy_to_pb(&domain), pb);

        let mut empty = policy();
        empty.service_account_selector = Some(pb::LabelSelector::default());
        let domain = sg_policy_from_pb(&empty).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(domain.service_account_selector, Some(LabelSelector::default()));
        assert_eq!(sg_policy_to_pb(&domain), empty);
    }

    #[test]
    fn rejections_name_the_field() {
        let mut unspecified = policy();
        if let Some(s) = unspecified.pod_selector.as_mut() {
            s.match_expressions[1].operator = 0;
        }
        let req = pb::UpsertSgPolicyRequest {
            request_id: "r".to_owned(),
            policy: Some(unspecified),
        };
        assert_eq!(
            upsert_sg_policy(&req),
            Err(PbError::Unspecified {
                field: "policy.pod_selector.match_expressions[1].operator".to_owned(),
                name: "LabelSelectorOperator"
            })
        );
        let mut unknown = policy();
        unknown.service_account_selector = Some(pb::LabelSelector {
            match_labels: Default::default(),
            match_expressions: vec![pb::LabelSelectorRequirement {
                key: "k".to_owned(),
                operator: 9,
                values: Vec::new(),
            }],
        });
        let req = pb::UpsertSgPolicyRequest {
            request_id: "r".to_owned(),
            policy: Some(unknown),
        };
        assert_eq!(
            upsert_sg_policy(&req).err().map(|e| e.field().to_owned()).as_deref(),
            Some("policy.service_account_selector.match_expressions[0].operator")
        );
        let mut nameless = policy();
        nameless.name.clear();
        let req = pb::UpsertSgPolicyRequest {
            request_id: "r".to_owned(),
            policy: Some(nameless),
        };
        assert_eq!(
            upsert_sg_policy(&req).err().map(|e| e.field().to_owned()).as_deref(),
            Some("policy.name")
        );
        let req = pb::UpsertSgPolicyRequest {
            request_id: "r".to_owned(),
            policy: None,
        };
        assert_eq!(
            upsert_sg_policy(&req).err().map(|e| e.field().to_owned()).as_deref(),
            Some("policy")
        );
        let delete = pb::DeleteSgPolicyRequest {
            request_id: "r".to_owned(),
            namespace: String::new(),
            name: "n".to_owned(),
        };
        assert_eq!(
            delete_sg_policy(&delete).err().map(|e| e.field().to_owned()).as_deref(),
            Some("namespace")
        );
    }
}
