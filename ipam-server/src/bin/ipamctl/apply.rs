//! `apply -f` and `delete -f`: manifests to AdminService calls.
//!
//! ```text
//!   read files ─▶ parse_all ─▶ list pools, subnet configs, policies (reads only)
//!              ─▶ plan_apply (every error reported, nothing sent if one)
//!              ─▶ CreatePool* ─▶ UpsertSubnetConfig* ─▶ UpsertSgPolicy*   one line per object
//! ```
//!
//! Each object is compared with what the server holds first, so the line says `created`,
//! `configured` or `unchanged`, and an unchanged object is not sent at all. A refusal of one object
//! is printed and the others still go; the exit code is then 1. Giving up on the cluster (no
//! leader, unreachable) stops at once.

use std::io::Write;

use ipam_proto::ipam::v1 as pb;
use tonic::Code;

use crate::Exit;
use crate::client::CallError;
use crate::client::Client;
use crate::client::new_request_id;
use crate::manifest::ApplyPlan;
use crate::manifest::Object;

/// What applying an object does to the server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server has no such object yet.
    Created,
    /// The server has it, different.
    Configured,
    /// The server has it, the same: nothing is sent.
    Unchanged,
}

impl Verdict {
    /// The word ipamctl prints.
    pub fn word(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        }
    }
}

/// A pool is unchanged if the server has a pool with exactly this CIDR.
pub fn pool_verdict(existing: &[pb::Pool], cidr: &str) -> Verdict {
    if existing.iter().any(|p| p.cidr == cidr) {
        Verdict::Unchanged
    } else {
        Verdict::Created
    }
}

/// A subnet config by name; groups compare as sets, as the server normalizes them.
pub fn subnet_config_verdict(existing: &[pb::SubnetConfig], wanted: &pb::SubnetConfig) -> Verdict {
    let Some(current) = existing.iter().find(|c| c.name == wanted.name) else {
        return Verdict::Created;
    };
    let groups = |c: &pb::SubnetConfig| {
        let mut groups = c.security_group_ids.clone();
        groups.sort();
        groups.dedup();
        groups
    };
    let same = current.subnet_id == wanted.subnet_id
        && current.subnet_cidr == wanted.subnet_cidr
        && current.availability_zone == wanted.availability_zone
        && groups(current) == groups(wanted);
    if same { Verdict::Unchanged } else { Verdict::Configured }
}

/// A policy by namespace and name; everything but the server's timestamp compares.
pub fn sg_policy_verdict(existing: &[pb::SgPolicy], wanted: &pb::SgPolicy) -> Verdict {
    let Some(current) = existing
        .iter()
        .find(|p| p.namespace == wanted.namespace && p.name == wanted.name)
    else {
        return Verdict::Created;
    };
    let same = current.pod_selector == wanted.pod_selector
        && current.service_account_selector == wanted.service_account_selector
        && current.security_group_ids == wanted.security_group_ids;
    if same { Verdict::Unchanged } else { Verdict::Configured }
}

/// What the server holds, as far as apply compares.
#[derive(Debug, Default)]
pub struct ServerView {
    /// Every pool.
    pub pools: Vec<pb::Pool>,
    /// Every subnet config.
    pub subnet_configs: Vec<pb::SubnetConfig>,
    /// Every policy.
    pub policies: Vec<pb::SgPolicy>,
}

/// Reads what apply compares against.
pub async fn server_view(client: &mut Client, objects: &[Object]) -> Result<ServerView, CallError> {
    let mut view = ServerView::default();
    if objects.iter().any(|o| matches!(o, Object::Pool(_))) {
        view.pools = list_pools(client).await?;
    }
    if objects.iter().any(|o| matches!(o, Object::EniConfig(_))) {
        view.subnet_configs = client
            .call(pb::ListSubnetConfigsRequest {}, |mut c, r| async move {
                c.list_subnet_configs(r).await
            })
            .await?
            .subnet_configs;
    }
    if objects.iter().any(|o| matches!(o, Object::SgPolicy(_))) {
        view.policies = client
            .call(
                pb::ListSgPoliciesRequest {
                    namespace: String::new(),
                },
                |mut c, r| async move { c.list_sg_policies(r).await },
            )
            .await?
            .policies;
    }
    Ok(view)
}

/// Every pool.
async fn list_pools(client: &mut Client) -> Result<Vec<pb::Pool>, CallError> {
    Ok(client
        .call(pb::ListPoolsRequest {}, |mut c, r| async move { c.list_pools(r).await })
        .await?
        .pools)
}

/// How a run of per-object calls went.
#[derive(Debug, Default)]
struct Tally {
    /// Objects the server refused.
    refused: usize,
}

impl Tally {
    /// Records the outcome of one object's call: prints the line, or the refusal; stops on a
    /// failure to reach the cluster.
    fn record(
        &mut self,
        out: &mut dyn Write,
        name: &str,
        outcome: Result<&str, CallError>,
        dry_run: bool,
    ) -> Result<(), Exit> {
        match outcome {
            Ok(word) => {
                let suffix = if dry_run { " (dry run)" } else { "" };
                writeln!(out, "{name} {word}{suffix}").map_err(Exit::output)
            }
            Err(CallError::Refused(status)) => {
                self.refused += 1;
                eprintln!("error: {name}: {}", CallError::Refused(status));
                Ok(())
            }
            Err(gave_up @ CallError::GaveUp(_)) => Err(Exit::Call(gave_up)),
        }
    }

    /// The end of the run: exit code 1 if anything was refused.
    fn finish(self) -> Result<(), Exit> {
        if self.refused == 0 { Ok(()) } else { Err(Exit::Reported) }
    }
}

/// Sends the plan: pools, then subnet configs, then policies.
pub async fn apply(
    client: &mut Client,
    plan: &ApplyPlan,
    view: &ServerView,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<(), Exit> {
    let mut tally = Tally::default();
    for (name, cidr) in &plan.pools {
        let cidr = cidr.to_string();
        let verdict = pool_verdict(&view.pools, &cidr);
        let outcome = if verdict == Verdict::Unchanged || dry_run {
            Ok(verdict.word())
        } else {
            create_pool(client, &cidr).await.map(Verdict::word)
        };
        tally.record(out, &format!("pool/{name}"), outcome, dry_run)?;
    }
    for config in &plan.subnet_configs {
        let verdict = subnet_config_verdict(&view.subnet_configs, config);
        let outcome = if verdict == Verdict::Unchanged || dry_run {
            Ok(verdict.word())
        } else {
            let request = pb::UpsertSubnetConfigRequest {
                request_id: new_request_id(),
                subnet_config: Some(config.clone()),
            };
            client
                .call(request, |mut c, r| async move { c.upsert_subnet_config(r).await })
                .await
                .map(|_| verdict.word())
        };
        tally.record(out, &format!("eniconfig/{}", config.name), outcome, dry_run)?;
    }
    for policy in &plan.policies {
        let verdict = sg_policy_verdict(&view.policies, policy);
        let outcome = if verdict == Verdict::Unchanged || dry_run {
            Ok(verdict.word())
        } else {
            let request = pb::UpsertSgPolicyRequest {
                request_id: new_request_id(),
                policy: Some(policy.clone()),
            };
            client
                .call(request, |mut c, r| async move { c.upsert_sg_policy(r).await })
                .await
                .map(|_| verdict.word())
        };
        let name = format!("securitygrouppolicy/{}/{}", policy.namespace, policy.name);
        tally.record(out, &name, outcome, dry_run)?;
    }
    tally.finish()
}

/// Creates a pool. ALREADY_EXISTS is "unchanged" when the pool now listed has exactly this CIDR
/// (a concurrent apply created it); otherwise it is the overlap refusal it says.
async fn create_pool(client: &mut Client, cidr: &str) -> Result<Verdict, CallError> {
    let request = pb::CreatePoolRequest {
        request_id: new_request_id(),
        cidr: cidr.to_owned(),
    };
    match client
        .call(request, |mut c, r| async move { c.create_pool(r).await })
        .await
    {
        Ok(_) => Ok(Verdict::Created),
        Err(CallError::Refused(status)) if status.code() == Code::AlreadyExists => {
            if pool_verdict(&list_pools(client).await?, cidr) == Verdict::Unchanged {
                Ok(Verdict::Unchanged)
            } else {
                Err(CallError::Refused(status))
            }
        }
        Err(e) => Err(e),
    }
}

/// Deletes the policies, then the ENIConfigs, of the manifests (the reverse of apply's order).
/// Pools are not deleted: the AdminService has no rpc for it.
pub async fn delete(
    client: &mut Client,
    objects: &[Object],
    ignore_not_found: bool,
    out: &mut dyn Write,
) -> Result<(), Exit> {
    let mut tally = Tally::default();
    for object in objects {
        if let Object::SgPolicy(policy) = object {
            let request = pb::DeleteSgPolicyRequest {
                request_id: new_request_id(),
                namespace: policy.policy.namespace.clone(),
                name: policy.policy.name.clone(),
            };
            let outcome = client
                .call(request, |mut c, r| async move { c.delete_sg_policy(r).await })
                .await
                .map(|_| ());
            record_delete(&mut tally, out, &object.display_name(), outcome, ignore_not_found)?;
        }
    }
    for object in objects {
        if let Object::EniConfig(config) = object {
            let request = pb::DeleteSubnetConfigRequest {
                request_id: new_request_id(),
                name: config.name.clone(),
            };
            let outcome = client
                .call(request, |mut c, r| async move { c.delete_subnet_config(r).await })
                .await
                .map(|_| ());
            record_delete(&mut tally, out, &object.display_name(), outcome, ignore_not_found)?;
        }
    }
    for object in objects {
        if let Object::Pool(_) = object {
            eprintln!(
                "{}: skipped; pools cannot be deleted (the server has no rpc for it)",
                object.display_name()
            );
        }
    }
    tally.finish()
}

/// Records one deletion: NOT_FOUND is silent with `--ignore-not-found`.
fn record_delete(
    tally: &mut Tally,
    out: &mut dyn Write,
    name: &str,
    outcome: Result<(), CallError>,
    ignore_not_found: bool,
) -> Result<(), Exit> {
    match outcome {
        Err(CallError::Refused(status)) if ignore_not_found && status.code() == Code::NotFound => Ok(()),
        other => tally.record(out, name, other.map(|()| "deleted"), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(groups: &[&str]) -> pb::SubnetConfig {
        pb::SubnetConfig {
            name: "us-west-2a".to_owned(),
            subnet_id: "subnet-011b111c1f11fdf11".to_owned(),
            subnet_cidr: "100.64.0.0/19".to_owned(),
            availability_zone: "us-west-2a".to_owned(),
            security_group_ids: groups.iter().map(|g| (*g).to_owned()).collect(),
            updated_at_unix_ms: 0,
        }
    }

    #[test]
    fn pool_verdicts() {
        let pools = [pb::Pool {
            cidr: "100.64.0.0/16".to_owned(),
            created_at_unix_ms: 5,
        }];
        assert_eq!(pool_verdict(&pools, "100.64.0.0/16"), Verdict::Unchanged);
        assert_eq!(pool_verdict(&pools, "100.65.0.0/16"), Verdict::Created);
    }

    #[test]
    fn subnet_config_verdicts() {
        let recorded = pb::SubnetConfig {
            updated_at_unix_ms: 99,
            ..config(&["sg-22222222", "sg-11111111"])
        };
        let existing = [recorded];
        assert_eq!(
            subnet_config_verdict(&existing, &config(&["sg-11111111", "sg-22222222"])),
            Verdict::Unchanged
        );
        assert_eq!(
            subnet_config_verdict(&existing, &config(&["sg-11111111"])),
            Verdict::Configured
        );
        let other = pb::SubnetConfig {
            name: "us-west-2b".to_owned(),
            ..config(&[])
        };
        assert_eq!(subnet_config_verdict(&existing, &other), Verdict::Created);
    }

    #[test]
    fn sg_policy_verdicts() {
        let policy = pb::SgPolicy {
            namespace: "ns".to_owned(),
            name: "p".to_owned(),
            pod_selector: Some(pb::LabelSelector::default()),
            service_account_selector: None,
            security_group_ids: vec!["sg-11111111".to_owned()],
            updated_at_unix_ms: 0,
        };
        let existing = [pb::SgPolicy {
            updated_at_unix_ms: 7,
            ..policy.clone()
        }];
        assert_eq!(sg_policy_verdict(&existing, &policy), Verdict::Unchanged);
        let changed = pb::SgPolicy {
            pod_selector: None,
            service_account_selector: Some(pb::LabelSelector::default()),
            ..policy.clone()
        };
        assert_eq!(sg_policy_verdict(&existing, &changed), Verdict::Configured);
        let elsewhere = pb::SgPolicy {
            namespace: "other".to_owned(),
            ..policy
        };
        assert_eq!(sg_policy_verdict(&existing, &elsewhere), Verdict::Created);
    }

    #[test]
    fn lines_say_what_happened_and_refusals_count() {
        let mut out = Vec::new();
        let mut tally = Tally::default();
        assert!(tally.record(&mut out, "pool/100-64", Ok("created"), false).is_ok());
        assert!(tally.record(&mut out, "eniconfig/a", Ok("unchanged"), true).is_ok());
        let refused = Err(CallError::Refused(tonic::Status::invalid_argument("bad id")));
        assert!(
            tally
                .record(&mut out, "securitygrouppolicy/ns/p", refused, false)
                .is_ok()
        );
        let gave_up = tally.record(&mut out, "x", Err(CallError::GaveUp("no leader".to_owned())), false);
        assert!(matches!(gave_up, Err(Exit::Call(CallError::GaveUp(_)))));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "pool/100-64 created\neniconfig/a unchanged (dry run)\n"
        );
        assert!(matches!(tally.finish(), Err(Exit::Reported)));
    }
}
