//! `cluster init | add-learner | promote | remove | status`: the Raft membership.
//!
//! `promote` and `remove` are read-modify-write over `ChangeMembership`, which takes the whole
//! voter set: read the leader's view, compute the new voters ([`promoted_voters`],
//! [`remaining_voters`]), send them.

use std::collections::BTreeSet;
use std::io::Write;

use ipam_proto::ipam::v1 as pb;

use crate::Exit;
use crate::client::Client;
use crate::output::Format;
use crate::render;

/// A replica given to `cluster init --member ID=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The Raft node id, at least 1.
    pub id: u64,
    /// The advertised gRPC address.
    pub address: String,
}

/// Parses `ID=HOST:PORT`.
pub fn parse_member(text: &str) -> Result<Member, String> {
    let (id, address) = text
        .split_once('=')
        .ok_or_else(|| format!("expected ID=HOST:PORT (e.g. 1=10.0.0.1:7400), got {text:?}"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("the member id {id:?} is not a number"))?;
    if id == 0 {
        return Err("member ids start at 1".to_owned());
    }
    parse_address(address).map(|address| Member { id, address })
}

/// Checks `HOST:PORT`.
pub fn parse_address(text: &str) -> Result<String, String> {
    let address = text.trim();
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(address.to_owned()),
        _ => Err(format!("expected HOST:PORT (e.g. 10.0.0.1:7400), got {text:?}")),
    }
}

/// The voters of a view.
fn voters(info: &pb::ClusterInfo) -> BTreeSet<u64> {
    info.members
        .iter()
        .filter(|m| m.role == pb::MemberRole::Voter as i32)
        .map(|m| m.id)
        .collect()
}

/// Refuses ids that are not members of the view.
fn check_members(info: &pb::ClusterInfo, ids: &[u64], advice: &str) -> Result<(), String> {
    let members: BTreeSet<u64> = info.members.iter().map(|m| m.id).collect();
    let strangers: Vec<String> = ids
        .iter()
        .filter(|id| !members.contains(id))
        .map(u64::to_string)
        .collect();
    if strangers.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} {} not a member of the cluster ({advice})",
            if strangers.len() == 1 { "node" } else { "nodes" },
            strangers.join(", ") + if strangers.len() == 1 { " is" } else { " are" }
        ))
    }
}

/// The voters after promoting `ids`: the current voters and `ids`. Every id must be a member
/// (a learner, or already a voter).
pub fn promoted_voters(info: &pb::ClusterInfo, ids: &[u64]) -> Result<Vec<u64>, String> {
    check_members(info, ids, "add it first: ipamctl cluster add-learner ID HOST:PORT")?;
    let mut voters = voters(info);
    voters.extend(ids);
    Ok(voters.into_iter().collect())
}

/// The voters after removing `ids`. Every id must be a member, and a voter must remain.
pub fn remaining_voters(info: &pb::ClusterInfo, ids: &[u64]) -> Result<Vec<u64>, String> {
    check_members(info, ids, "see ipamctl cluster status")?;
    let remaining: Vec<u64> = voters(info).into_iter().filter(|id| !ids.contains(id)).collect();
    if remaining.is_empty() {
        return Err("removing these would leave the cluster without voters".to_owned());
    }
    Ok(remaining)
}

/// The view of the replica answering (the first reachable `--server`), or the leader's when
/// `from_leader` and a leader is known.
pub async fn status(client: &mut Client, from_leader: bool) -> Result<pb::ClusterInfo, Exit> {
    let info = call_status(client).await?;
    if from_leader && info.leader_id != 0 && info.leader_id != info.id && !info.leader_address.is_empty() {
        client.prefer(&info.leader_address);
        return call_status(client).await;
    }
    Ok(info)
}

/// One ClusterStatus call.
async fn call_status(client: &mut Client) -> Result<pb::ClusterInfo, Exit> {
    client
        .call(pb::ClusterStatusRequest {}, |mut c, r| async move {
            c.cluster_status(r).await
        })
        .await
        .map_err(Exit::Call)?
        .cluster
        .ok_or_else(|| Exit::Protocol("ClusterStatus answered without a cluster".to_owned()))
}

/// `cluster init`.
pub async fn init(client: &mut Client, members: &[Member]) -> Result<pb::ClusterInfo, Exit> {
    let request = pb::ClusterInitRequest {
        members: members
            .iter()
            .map(|m| pb::ClusterMember {
                id: m.id,
                address: m.address.clone(),
                role: pb::MemberRole::Voter as i32,
                matched_log_index: 0,
            })
            .collect(),
    };
    client
        .call(request, |mut c, r| async move { c.cluster_init(r).await })
        .await
        .map_err(Exit::Call)?
        .cluster
        .ok_or_else(|| Exit::Protocol("ClusterInit answered without a cluster".to_owned()))
}

/// `cluster add-learner`.
pub async fn add_learner(client: &mut Client, id: u64, address: &str, wait: bool) -> Result<pb::ClusterInfo, Exit> {
    let request = pb::AddLearnerRequest {
        id,
        address: address.to_owned(),
        wait_for_catch_up: wait,
    };
    client
        .call(request, |mut c, r| async move { c.add_learner(r).await })
        .await
        .map_err(Exit::Call)?
        .cluster
        .ok_or_else(|| Exit::Protocol("AddLearner answered without a cluster".to_owned()))
}

/// Sends a new voter set.
async fn change_membership(client: &mut Client, voters: Vec<u64>, retain: bool) -> Result<pb::ClusterInfo, Exit> {
    let request = pb::ChangeMembershipRequest {
        voter_ids: voters,
        retain_as_learners: retain,
    };
    client
        .call(request, |mut c, r| async move { c.change_membership(r).await })
        .await
        .map_err(Exit::Call)?
        .cluster
        .ok_or_else(|| Exit::Protocol("ChangeMembership answered without a cluster".to_owned()))
}

/// `cluster promote`.
pub async fn promote(client: &mut Client, ids: &[u64]) -> Result<pb::ClusterInfo, Exit> {
    let info = status(client, true).await?;
    let voters = promoted_voters(&info, ids).map_err(Exit::Usage)?;
    change_membership(client, voters, true).await
}

/// `cluster remove`: the ids leave the cluster (not kept as learners).
pub async fn remove(client: &mut Client, ids: &[u64]) -> Result<pb::ClusterInfo, Exit> {
    let info = status(client, true).await?;
    let voters = remaining_voters(&info, ids).map_err(Exit::Usage)?;
    let after = change_membership(client, voters, false).await?;
    let left: Vec<String> = after
        .members
        .iter()
        .filter(|m| ids.contains(&m.id))
        .map(|m| m.id.to_string())
        .collect();
    if !left.is_empty() {
        return Err(Exit::Protocol(format!(
            "the server kept {} as {}: ChangeMembership removes voters only, and the AdminService has \
             no rpc that removes a learner",
            left.join(", "),
            if left.len() == 1 { "a learner" } else { "learners" }
        )));
    }
    Ok(after)
}

/// Prints a view: the summary line and the members, or JSON.
pub fn print(out: &mut dyn Write, info: &pb::ClusterInfo, format: Format) -> Result<(), Exit> {
    let text = match format {
        Format::Json => format!("{:#}\n", render::cluster_json(info)),
        Format::Table | Format::Wide => {
            format!(
                "{}\n{}",
                render::cluster_summary(info),
                render::cluster_table(info).render()
            )
        }
    };
    out.write_all(text.as_bytes()).map_err(Exit::output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, role: pb::MemberRole) -> pb::ClusterMember {
        pb::ClusterMember {
            id,
            address: format!("10.0.0.{id}:7400"),
            role: role as i32,
            matched_log_index: 0,
        }
    }

    fn view() -> pb::ClusterInfo {
        pb::ClusterInfo {
            id: 1,
            leader_id: 1,
            members: vec![
                member(1, pb::MemberRole::Voter),
                member(2, pb::MemberRole::Learner),
                member(3, pb::MemberRole::Learner),
            ],
            ..pb::ClusterInfo::default()
        }
    }

    #[test]
    fn promote_adds_to_the_current_voters() {
        assert_eq!(promoted_voters(&view(), &[3]), Ok(vec![1, 3]));
        assert_eq!(promoted_voters(&view(), &[2, 3, 1]), Ok(vec![1, 2, 3]));
        let e = promoted_voters(&view(), &[4]).expect_err("should fail");
        assert!(e.contains("node 4 is not a member"), "{e}");
        assert!(e.contains("add-learner"), "{e}");
    }

    #[test]
    fn remove_keeps_the_others_and_at_least_one() {
        let mut info = view();
        info.members[1].role = pb::MemberRole::Voter as i32;
        assert_eq!(remaining_voters(&info, &[2]), Ok(vec![1]));
        assert!(
            remaining_voters(&info, &[1, 2])
                .expect_err("should fail")
                .contains("without voters")
        );
        assert!(
            remaining_voters(&info, &[7, 8])
                .expect_err("should fail")
                .contains("nodes 7, 8 are not")
        );
    }

    #[test]
    fn members_parse() {
        assert_eq!(
            parse_member("2=10.0.0.2:7400"),
            Ok(Member {
                id: 2,
                address: "10.0.0.2:7400".to_owned()
            })
        );
        assert!(parse_member("10.0.0.2:7400").is_err());
        assert!(parse_member("0=a:1").is_err());
        assert!(parse_member("x=a:1").is_err());
        assert!(parse_member("1=a").is_err());
        assert!(parse_address("host:0").is_err());
        assert_eq!(
            parse_address("replica-1.ipam:7400"),
            Ok("replica-1.ipam:7400".to_owned())
        );
    }
}
