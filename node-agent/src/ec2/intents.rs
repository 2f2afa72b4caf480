//! ENIs caught between `CreateNetworkInterface` and `AttachNetworkInterface`: what a crash leaves,
//! and how a restarted agent resumes or cleans up so that nothing leaks.
//!
//! The server records `EniPlanned` (token, addresses, device index) before the agent creates the
//! ENI with the token as ClientToken and as the [`tags::INTENT`] tag, next to the cluster and node
//! tags. On restart the agent compares what the server still plans for it with what EC2 has under
//! its tags:
//!
//! ```text
//!   EC2 (tags cluster + node)         server's plan has the token?     decision
//!   ─────────────────────────         ────────────────────────────     ──────────────────────────
//!   not attached                      yes                              Resume: attach at the planned index
//!   attached to this instance         yes                              Done: report it attached
//!   attached elsewhere / detaching    yes                              Conflict: touch nothing, report
//!   not attached                      no (or a 2nd ENI, same token)    Leaked: delete it
//!   attached                          no                               none: an ENI the node uses
//!   (nothing)                         yes                              NotCreated: create it (same token)
//! ```
//!
//! [`decide`] is pure; [`execute`] carries the decisions out over any [`Ec2`]; [`reconcile`] does
//! both after one `DescribeNetworkInterfaces`. Read EC2's view *before* the server's plan: an ENI
//! exists only after its token was planned, so a token missing from a plan read later was really
//! dropped, not planned too late to be seen.

use std::collections::BTreeMap;

use super::Ec2;
use super::Ec2Error;
use super::Ec2ErrorKind;
use super::EniFilter;
use super::NetworkInterface;
use super::Result;
use super::Tag;
use super::tags;

/// An ENI the server has planned for this node and not yet seen attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEni {
    /// The intent token: EC2's ClientToken and the ENI's [`tags::INTENT`] tag.
    pub token: String,
    /// The server's name for the ENI in its ledger (the EC2 id is not known when it plans).
    pub eni_ref: String,
    /// Where to attach it.
    pub device_index: u8,
    /// The subnet it is to be created in.
    pub subnet_id: String,
}

/// Whose ENIs these are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeScope {
    /// The [`tags::CLUSTER`] value.
    pub cluster: String,
    /// The [`tags::NODE`] value.
    pub node: String,
    /// This node's instance.
    pub instance_id: String,
}

impl NodeScope {
    /// The tags every ENI of this node carries: cluster, node and instance (instance ids are
    /// unique across accounts and regions, so two clusters with the same token prefix and the same
    /// node names in one account never take each other's ENIs for their own).
    pub fn tags(&self) -> Vec<Tag> {
        vec![
            Tag::new(tags::CLUSTER, &self.cluster),
            Tag::new(tags::NODE, &self.node),
            Tag::new(tags::INSTANCE_ID, &self.instance_id),
        ]
    }

    /// `DescribeNetworkInterfaces` by this node's tags.
    pub fn filter(&self) -> EniFilter {
        EniFilter {
            tags: self.tags(),
            ..EniFilter::default()
        }
    }

    fn owns(&self, eni: &NetworkInterface) -> bool {
        eni.tag(tags::CLUSTER) == Some(self.cluster.as_str())
            && eni.tag(tags::NODE) == Some(self.node.as_str())
            && eni.tag(tags::INSTANCE_ID) == Some(self.instance_id.as_str())
    }
}

/// What to do about one planned ENI or one ENI EC2 has for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Created under a planned token, not attached: attach it at the planned device index.
    Resume {
        /// The plan.
        planned: PlannedEni,
        /// EC2's id.
        eni_id: String,
    },
    /// Created under a planned token and attached to this instance: only the report is missing.
    Done {
        /// The plan.
        planned: PlannedEni,
        /// EC2's id.
        eni_id: String,
        /// The attachment.
        attachment_id: String,
        /// Where it is attached (may differ from the plan's index).
        device_index: u8,
    },
    /// Planned, but EC2 has no ENI under the token: the create never happened or its answer was
    /// lost before it took effect. The intent executor creates it, with the same token.
    NotCreated {
        /// The plan.
        planned: PlannedEni,
    },
    /// Tagged for this node, not attached, and not the ENI of any planned token: delete it.
    Leaked {
        /// EC2's id.
        eni_id: String,
        /// Its intent tag, if it has one.
        token: Option<String>,
    },
    /// Created under a planned token but in a state the plan does not explain (attached to
    /// another instance, detaching, another subnet): nothing is done, the caller reports it.
    Conflict {
        /// The plan.
        planned: PlannedEni,
        /// EC2's id.
        eni_id: String,
        /// What does not fit.
        why: String,
    },
}

/// Decides about every planned ENI and every ENI of `scope` in `observed` (EC2's answer by the
/// node's tags; ENIs of other nodes or clusters in it are ignored). Planned ENIs come first, in
/// plan order, then the leaked ENIs by id.
pub fn decide(scope: &NodeScope, planned: &[PlannedEni], observed: &[NetworkInterface]) -> Vec<Decision> {
    let mut ours: Vec<&NetworkInterface> = observed.iter().filter(|eni| scope.owns(eni)).collect();
    ours.sort_by(|a, b| a.eni_id.cmp(&b.eni_id));
    ours.dedup_by(|a, b| a.eni_id == b.eni_id);
    let mut by_token: BTreeMap<&str, Vec<&NetworkInterface>> = BTreeMap::new();
    for eni in &ours {
        if let Some(token) = eni.tag(tags::INTENT) {
            by_token.entry(token).or_default().push(eni);
        }
    }
    let mut decisions = Vec::new();
    let mut kept: Vec<&str> = Vec::new();
    for plan in planned {
        let candidates = by_token.get(plan.token.as_str()).map(Vec::as_slice).unwrap_or_default();
        // Normally one; moto (or a lost ClientToken) can make more. Keep the attached one, else the
        // first by id; the others are leaks.
        let keeper = candidates
            .iter()
            .find(|eni| eni.attachment.is_some())
            .or_else(|| candidates.first());
        let Some(eni) = keeper else {
            decisions.push(Decision::NotCreated { planned: plan.clone() });
            continue;
        };
        kept.push(&eni.eni_id);
        decisions.push(decide_planned(scope, plan, eni));
    }
    for eni in ours {
        if eni.attachment.is_none() && !kept.contains(&eni.eni_id.as_str()) {
            decisions.push(Decision::Leaked {
                eni_id: eni.eni_id.clone(),
                token: eni.tag(tags::INTENT).map(str::to_owned),
            });
        }
    }
    decisions
}

fn decide_planned(scope: &NodeScope, plan: &PlannedEni, eni: &NetworkInterface) -> Decision {
    let conflict = |why: String| Decision::Conflict {
        planned: plan.clone(),
        eni_id: eni.eni_id.clone(),
        why,
    };
    match &eni.attachment {
        None if eni.subnet_id != plan.subnet_id => conflict(format!(
            "created in {} but planned in {}",
            eni.subnet_id, plan.subnet_id
        )),
        None => Decision::Resume {
            planned: plan.clone(),
            eni_id: eni.eni_id.clone(),
        },
        Some(a) if a.instance_id != scope.instance_id => {
            conflict(format!("attached to {} as {}", a.instance_id, a.attachment_id))
        }
        Some(a) if a.status == "detaching" || a.status == "detached" => {
            conflict(format!("attachment {} is {}", a.attachment_id, a.status))
        }
        Some(a) => Decision::Done {
            planned: plan.clone(),
            eni_id: eni.eni_id.clone(),
            attachment_id: a.attachment_id.clone(),
            device_index: a.device_index,
        },
    }
}

/// What carrying out a [`Decision`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Attached now ([`Decision::Resume`]).
    Attached {
        /// The new attachment.
        attachment_id: String,
    },
    /// Deleted now ([`Decision::Leaked`]).
    Deleted,
    /// Already gone when deleted ([`Decision::Leaked`]): someone else cleaned up.
    AlreadyGone,
    /// Nothing to do in EC2 ([`Decision::Done`], [`Decision::NotCreated`], [`Decision::Conflict`]).
    Unchanged,
}

/// One decision and how carrying it out went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The decision.
    pub decision: Decision,
    /// The EC2 call's result: an error leaves EC2 as it was, or unknown for a retryable error.
    pub result: Result<Resolution>,
}

/// Carries the decisions out one after the other (the caller holds the EC2 budget), attaching
/// resumed ENIs to `instance_id`. A failed call does not stop the others.
pub async fn execute(ec2: &dyn Ec2, instance_id: &str, decisions: Vec<Decision>) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(decisions.len());
    for decision in decisions {
        let result = match &decision {
            Decision::Resume { planned, eni_id } => ec2
                .attach_network_interface(eni_id, instance_id, planned.device_index)
                .await
                .map(|attachment_id| Resolution::Attached { attachment_id }),
            Decision::Leaked { eni_id, .. } => match ec2.delete_network_interface(eni_id).await {
                Ok(()) => Ok(Resolution::Deleted),
                Err(Ec2Error {
                    kind: Ec2ErrorKind::NotFound,
                    ..
                }) => Ok(Resolution::AlreadyGone),
                Err(e) => Err(e),
            },
            Decision::Done { .. } | Decision::NotCreated { .. } | Decision::Conflict { .. } => {
                Ok(Resolution::Unchanged)
            }
        };
        match &result {
            Ok(resolution) => tracing::info!(?decision, ?resolution, "ENI intent reconciled"),
            Err(error) => tracing::warn!(?decision, %error, "ENI intent not reconciled"),
        }
        outcomes.push(Outcome { decision, result });
    }
    outcomes
}

/// Describes the node's ENIs by its tags, decides, and carries the decisions out.
///
/// # Errors
///
/// `DescribeNetworkInterfaces` failed (nothing was changed); failures of the calls after it are in
/// the outcomes.
#[tracing::instrument(skip(ec2, planned), fields(node = %scope.node, instance = %scope.instance_id, planned = planned.len()))]
pub async fn reconcile(ec2: &dyn Ec2, scope: &NodeScope, planned: &[PlannedEni]) -> Result<Vec<Outcome>> {
    let observed = ec2.describe_network_interfaces(&scope.filter()).await?;
    let decisions = decide(scope, planned, &observed);
    Ok(execute(ec2, &scope.instance_id, decisions).await)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::ec2::EniAttachment;
    use crate::ec2::InterfaceType;

    fn scope() -> NodeScope {
        NodeScope {
            cluster: "c1".to_owned(),
            node: "node-a".to_owned(),
            instance_id: "i-a".to_owned(),
        }
    }

    fn plan(token: &str, device_index: u8) -> PlannedEni {
        PlannedEni {
            token: token.to_owned(),
            eni_ref: format!("ref-{token}"),
            device_index,
            subnet_id: "subnet-1".to_owned(),
        }
    }

    fn eni(id: &str, token: Option<&str>, attached: Option<(&str, u8, &str)>) -> NetworkInterface {
        let mut tags = scope().tags();
        if let Some(token) = token {
            tags.push(Tag::new(tags::INTENT, token));
        }
        NetworkInterface {
            eni_id: id.to_owned(),
            mac: "02:00:00:00:00:01".to_owned(),
            subnet_id: "subnet-1".to_owned(),
            primary_ip: Ipv4Addr::new(10, 0, 0, 10),
            secondary_ips: Vec::new(),
            security_groups: Vec::new(),
            interface_type: InterfaceType::Interface,
            status: if attached.is_some() { "in-use" } else { "available" }.to_owned(),
            description: String::new(),
            tags,
            attachment: attached.map(|(instance_id, device_index, status)| EniAttachment {
                attachment_id: format!("attach-{id}"),
                instance_id: instance_id.to_owned(),
                device_index,
                status: status.to_owned(),
                delete_on_termination: false,
            }),
        }
    }

    #[test]
    fn a_planned_eni_that_is_not_attached_is_resumed_at_its_planned_index() {
        let decisions = decide(&scope(), &[plan("t1", 2)], &[eni("eni-1", Some("t1"), None)]);
        assert_eq!(
            decisions,
            vec![Decision::Resume {
                planned: plan("t1", 2),
                eni_id: "eni-1".to_owned()
            }]
        );
    }

    #[test]
    fn a_planned_eni_attached_here_is_done() {
        let decisions = decide(
            &scope(),
            &[plan("t1", 2)],
            &[eni("eni-1", Some("t1"), Some(("i-a", 3, "attached")))],
        );
        assert_eq!(
            decisions,
            vec![Decision::Done {
                planned: plan("t1", 2),
                eni_id: "eni-1".to_owned(),
                attachment_id: "attach-eni-1".to_owned(),
                device_index: 3,
            }]
        );
    }

    #[test]
    fn an_unattached_eni_whose_token_is_no_longer_planned_is_leaked() {
        let decisions = decide(
            &scope(),
            &[],
            &[eni("eni-1", Some("gone"), None), eni("eni-2", None, None)],
        );
        assert_eq!(
            decisions,
            vec![
                Decision::Leaked {
                    eni_id: "eni-1".to_owned(),
                    token: Some("gone".to_owned())
                },
                Decision::Leaked {
                    eni_id: "eni-2".to_owned(),
                    token: None
                },
            ]
        );
    }

    #[test]
    fn attached_enis_without_a_plan_are_the_nodes_own_and_left_alone() {
        let observed = [
            eni("eni-1", Some("old"), Some(("i-a", 1, "attached"))),
            eni("eni-2", Some("old2"), Some(("i-a", 2, "detaching"))),
        ];
        assert_eq!(decide(&scope(), &[], &observed), vec![]);
    }

    #[test]
    fn a_planned_token_without_an_eni_is_not_created_yet() {
        assert_eq!(
            decide(&scope(), &[plan("t1", 1)], &[]),
            vec![Decision::NotCreated { planned: plan("t1", 1) }]
        );
    }

    #[test]
    fn a_second_eni_under_one_token_is_leaked_and_the_attached_one_kept() {
        let observed = [
            eni("eni-1", Some("t1"), None),
            eni("eni-2", Some("t1"), Some(("i-a", 1, "attached"))),
            eni("eni-3", Some("t2"), None),
            eni("eni-4", Some("t2"), None),
        ];
        let decisions = decide(&scope(), &[plan("t1", 1), plan("t2", 2)], &observed);
        assert_eq!(
            decisions,
            vec![
                Decision::Done {
                    planned: plan("t1", 1),
                    eni_id: "eni-2".to_owned(),
                    attachment_id: "attach-eni-2".to_owned(),
                    device_index: 1,
                },
                Decision::Resume {
                    planned: plan("t2", 2),
                    eni_id: "eni-3".to_owned()
                },
                Decision::Leaked {
                    eni_id: "eni-1".to_owned(),
                    token: Some("t1".to_owned())
                },
                Decision::Leaked {
                    eni_id: "eni-4".to_owned(),
                    token: Some("t2".to_owned())
                },
            ]
        );
    }

    #[test]
    fn a_planned_eni_attached_elsewhere_detaching_or_in_another_subnet_is_a_conflict() {
        let mut other_subnet = eni("eni-3", Some("t3"), None);
        other_subnet.subnet_id = "subnet-9".to_owned();
        let observed = [
            eni("eni-1", Some("t1"), Some(("i-other", 1, "attached"))),
            eni("eni-2", Some("t2"), Some(("i-a", 2, "detaching"))),
            other_subnet,
        ];
        let decisions = decide(&scope(), &[plan("t1", 1), plan("t2", 2), plan("t3", 3)], &observed);
        assert_eq!(decisions.len(), 3);
        for (decision, needle) in decisions.iter().zip(["i-other", "detaching", "subnet-9"]) {
            match decision {
                Decision::Conflict { why, .. } => assert!(why.contains(needle), "{why}"),
                other => panic!("{needle}: {other:?}"),
            }
        }
    }

    #[test]
    fn enis_of_other_nodes_or_clusters_are_never_touched() {
        let mut other_node = eni("eni-1", Some("t1"), None);
        other_node.tags = vec![
            Tag::new(tags::CLUSTER, "c1"),
            Tag::new(tags::NODE, "node-b"),
            Tag::new(tags::INTENT, "t1"),
        ];
        let mut other_cluster = eni("eni-2", None, None);
        other_cluster.tags = vec![Tag::new(tags::CLUSTER, "c2"), Tag::new(tags::NODE, "node-a")];
        let decisions = decide(&scope(), &[plan("t1", 1)], &[other_node, other_cluster]);
        assert_eq!(decisions, vec![Decision::NotCreated { planned: plan("t1", 1) }]);
    }

    mod against_the_simulator {
        use super::*;
        use crate::ec2::CreateEni;
        use crate::ec2::sim::Operation;
        use crate::ec2::sim::SimEc2;

        fn sim() -> SimEc2 {
            SimEc2::builder()
                .subnet("subnet-1", "10.0.0.0/24", "us-west-2a")
                .instance("i-a", "m5.large", "subnet-1", Ipv4Addr::new(10, 0, 0, 5))
                .build()
                .unwrap_or_else(|e| panic!("{e}"))
        }

        async fn create(ec2: &SimEc2, token: &str, last: u8) -> String {
            let mut tags = scope().tags();
            tags.push(Tag::new(tags::INTENT, token));
            ec2.create_network_interface(&CreateEni {
                subnet_id: "subnet-1".to_owned(),
                description: format!("{}{token}", crate::ec2::DESCRIPTION_PREFIX),
                security_groups: Vec::new(),
                primary_ip: Ipv4Addr::new(10, 0, 0, last),
                secondary_ips: Vec::new(),
                interface_type: InterfaceType::Interface,
                tags,
                client_token: token.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("create {token}: {e}"))
            .eni_id
        }

        fn summary(outcomes: &[Outcome]) -> Vec<(&'static str, Option<String>, Result<Resolution, Ec2ErrorKind>)> {
            outcomes
                .iter()
                .map(|o| {
                    let (what, token) = match &o.decision {
                        Decision::Resume { planned, .. } => ("resume", Some(planned.token.clone())),
                        Decision::Done { planned, .. } => ("done", Some(planned.token.clone())),
                        Decision::NotCreated { planned } => ("not created", Some(planned.token.clone())),
                        Decision::Leaked { token, .. } => ("leaked", token.clone()),
                        Decision::Conflict { planned, .. } => ("conflict", Some(planned.token.clone())),
                    };
                    (what, token, o.result.clone().map_err(|e| e.kind))
                })
                .collect()
        }

        #[tokio::test]
        async fn a_restart_resumes_planned_enis_and_deletes_leaked_ones() {
            let ec2 = sim();
            let t1 = create(&ec2, "t1", 10).await;
            let t2 = create(&ec2, "t2", 20).await;
            let t3 = create(&ec2, "t3", 30).await;
            ec2.attach_network_interface(&t3, "i-a", 1)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let planned = [plan("t1", 2), plan("t3", 1), plan("t4", 3)];

            let outcomes = reconcile(&ec2, &scope(), &planned)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let attachment = ec2
                .eni(&t1)
                .and_then(|e| e.interface.attachment)
                .unwrap_or_else(|| panic!("t1 not attached"));
            assert_eq!((attachment.instance_id.as_str(), attachment.device_index), ("i-a", 2));
            assert_eq!(
                summary(&outcomes),
                vec![
                    (
                        "resume",
                        Some("t1".to_owned()),
                        Ok(Resolution::Attached {
                            attachment_id: attachment.attachment_id.clone()
                        })
                    ),
                    ("done", Some("t3".to_owned()), Ok(Resolution::Unchanged)),
                    ("not created", Some("t4".to_owned()), Ok(Resolution::Unchanged)),
                    ("leaked", Some("t2".to_owned()), Ok(Resolution::Deleted)),
                ]
            );
            assert_eq!(ec2.eni(&t2), None);

            // Once more: nothing left to change.
            let again = reconcile(&ec2, &scope(), &planned)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                summary(&again),
                vec![
                    ("done", Some("t1".to_owned()), Ok(Resolution::Unchanged)),
                    ("done", Some("t3".to_owned()), Ok(Resolution::Unchanged)),
                    ("not created", Some("t4".to_owned()), Ok(Resolution::Unchanged)),
                ]
            );
        }

        #[tokio::test]
        async fn a_failed_delete_is_reported_and_done_by_the_next_run() {
            let ec2 = sim();
            let leaked = create(&ec2, "gone", 40).await;
            ec2.fail_next(Operation::DeleteNetworkInterface, "RequestLimitExceeded", 1);
            let first = reconcile(&ec2, &scope(), &[]).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                summary(&first),
                vec![("leaked", Some("gone".to_owned()), Err(Ec2ErrorKind::Throttled))]
            );
            assert!(ec2.eni(&leaked).is_some());
            let second = reconcile(&ec2, &scope(), &[]).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                summary(&second),
                vec![("leaked", Some("gone".to_owned()), Ok(Resolution::Deleted))]
            );
            assert_eq!(ec2.eni(&leaked), None);
            assert_eq!(reconcile(&ec2, &scope(), &[]).await, Ok(vec![]));
        }

        #[tokio::test]
        async fn a_leak_someone_else_deleted_is_already_gone() {
            let ec2 = sim();
            let outcomes = execute(
                &ec2,
                "i-a",
                vec![Decision::Leaked {
                    eni_id: "eni-00000000000000000".to_owned(),
                    token: None,
                }],
            )
            .await;
            assert_eq!(outcomes[0].result, Ok(Resolution::AlreadyGone));
        }

        #[tokio::test]
        async fn a_failed_describe_changes_nothing() {
            let ec2 = sim();
            let eni = create(&ec2, "gone", 40).await;
            ec2.fail_next(Operation::DescribeNetworkInterfaces, "InternalError", 1);
            let error = reconcile(&ec2, &scope(), &[])
                .await
                .err()
                .unwrap_or_else(|| panic!("reconciled without EC2's view"));
            assert_eq!(error.kind, Ec2ErrorKind::Unavailable);
            assert!(ec2.eni(&eni).is_some());
        }
    }
}
