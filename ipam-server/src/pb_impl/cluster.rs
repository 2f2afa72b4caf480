//! The Raft cluster rpcs: membership requests → the replica facade's arguments, and a replica's
//! [`ClusterView`] → `pb::ClusterInfo`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use ipam_proto::ipam::v1 as pb;

use super::error::PbError;
use super::error::Result;
use super::field;
use crate::raft::types::NodeId;
use crate::replica::ClusterView;

fn member_id(field: &str, id: u64) -> Result<NodeId> {
    if id == 0 {
        return Err(PbError::OutOfRange {
            field: field.to_owned(),
            value: "0".to_owned(),
            why: "Raft node ids start at 1".to_owned(),
        });
    }
    Ok(id)
}

/// `ClusterInit`'s voters by id (empty: this replica alone); the roles are ignored (all voters).
pub fn init_members(req: &pb::ClusterInitRequest) -> Result<BTreeMap<NodeId, String>> {
    let mut members = BTreeMap::new();
    for (i, member) in req.members.iter().enumerate() {
        let id = member_id("id", member.id).map_err(|e| e.within(&format!("members[{i}]")))?;
        let address = field::required("address", &member.address).map_err(|e| e.within(&format!("members[{i}]")))?;
        if members.insert(id, address).is_some() {
            return Err(PbError::Conflict {
                fields: format!("members[{i}].id"),
                why: "each id once",
            });
        }
    }
    Ok(members)
}

/// `AddLearner`'s id, address and whether to wait for catch-up.
pub fn add_learner(req: &pb::AddLearnerRequest) -> Result<(NodeId, String, bool)> {
    Ok((
        member_id("id", req.id)?,
        field::required("address", &req.address)?,
        req.wait_for_catch_up,
    ))
}

/// `ChangeMembership`'s voters (never empty) and whether removed voters stay learners.
pub fn change_membership(req: &pb::ChangeMembershipRequest) -> Result<(BTreeSet<NodeId>, bool)> {
    if req.voter_ids.is_empty() {
        return Err(PbError::Empty {
            field: "voter_ids".to_owned(),
        });
    }
    let voters = req
        .voter_ids
        .iter()
        .enumerate()
        .map(|(i, id)| member_id(&format!("voter_ids[{i}]"), *id))
        .collect::<Result<BTreeSet<_>>>()?;
    Ok((voters, req.retain_as_learners))
}

/// A replica's view as the API shows it; members by id.
pub fn cluster_info(view: &ClusterView) -> pb::ClusterInfo {
    let member = |id: &NodeId, address: &String, role: pb::MemberRole| pb::ClusterMember {
        id: *id,
        address: address.clone(),
        role: role.into(),
        matched_log_index: view.matched.get(id).copied().unwrap_or(0),
    };
    let mut members: Vec<pb::ClusterMember> = view
        .voters
        .iter()
        .map(|(id, address)| member(id, address, pb::MemberRole::Voter))
        .chain(
            view.learners
                .iter()
                .map(|(id, address)| member(id, address, pb::MemberRole::Learner)),
        )
        .collect();
    members.sort_by_key(|m| m.id);
    pb::ClusterInfo {
        id: view.id,
        leader_id: view.leader.as_ref().map_or(0, |l| l.id),
        leader_address: view.leader.as_ref().map(|l| l.address.clone()).unwrap_or_default(),
        term: view.term,
        last_log_index: view.last_log_index,
        last_applied_index: view.last_applied_index,
        snapshot_log_index: view.snapshot_log_index,
        purged_log_index: view.purged_log_index,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::Leader;

    #[test]
    fn view_to_info() {
        let view = ClusterView {
            id: 2,
            leader: Some(Leader {
                id: 1,
                address: "10.0.0.1:7400".to_owned(),
            }),
            term: 4,
            last_log_index: 90,
            last_applied_index: 88,
            snapshot_log_index: 50,
            purged_log_index: 40,
            voters: BTreeMap::from([(1, "10.0.0.1:7400".to_owned()), (3, "10.0.0.3:7400".to_owned())]),
            learners: BTreeMap::from([(2, "10.0.0.2:7400".to_owned())]),
            matched: BTreeMap::from([(3, 85)]),
        };
        let info = cluster_info(&view);
        assert_eq!(
            (info.id, info.leader_id, info.leader_address.as_str()),
            (2, 1, "10.0.0.1:7400")
        );
        assert_eq!(
            (
                info.term,
                info.last_log_index,
                info.last_applied_index,
                info.snapshot_log_index,
                info.purged_log_index
            ),
            (4, 90, 88, 50, 40)
        );
        let members: Vec<(u64, pb::MemberRole, u64)> = info
            .members
            .iter()
            .map(|m| (m.id, m.role(), m.matched_log_index))
            .collect();
        assert_eq!(
            members,
            vec![
                (1, pb::MemberRole::Voter, 0),
                (2, pb::MemberRole::Learner, 0),
                (3, pb::MemberRole::Voter, 85)
            ]
        );
        let leaderless = cluster_info(&ClusterView { leader: None, ..view });
        assert_eq!((leaderless.leader_id, leaderless.leader_address.as_str()), (0, ""));
    }

    #[test]
    fn membership_requests() {
        let member = |id, address: &str| pb::ClusterMember {
            id,
            address: address.to_owned(),
            role: 0,
            matched_log_index: 0,
        };
        let init = pb::ClusterInitRequest {
            members: vec![member(1, "a:1"), member(2, "b:1")],
        };
        assert_eq!(
            init_members(&init),
            Ok(BTreeMap::from([(1, "a:1".to_owned()), (2, "b:1".to_owned())]))
        );
        assert_eq!(
            init_members(&pb::ClusterInitRequest { members: Vec::new() }),
            Ok(BTreeMap::new())
        );
        let field_of = |r: Result<BTreeMap<NodeId, String>>| r.err().map(|e| e.field().to_owned());
        assert_eq!(
            field_of(init_members(&pb::ClusterInitRequest {
                members: vec![member(0, "a:1")]
            }))
            .as_deref(),
            Some("members[0].id")
        );
        assert_eq!(
            field_of(init_members(&pb::ClusterInitRequest {
                members: vec![member(1, "a:1"), member(2, "")]
            }))
            .as_deref(),
            Some("members[1].address")
        );
        assert_eq!(
            field_of(init_members(&pb::ClusterInitRequest {
                members: vec![member(1, "a:1"), member(1, "b:1")]
            }))
            .as_deref(),
            Some("members[1].id")
        );
        let learner = pb::AddLearnerRequest {
            id: 4,
            address: "d:1".to_owned(),
            wait_for_catch_up: true,
        };
        assert_eq!(add_learner(&learner), Ok((4, "d:1".to_owned(), true)));
        assert!(
            add_learner(&pb::AddLearnerRequest {
                id: 0,
                ..learner.clone()
            })
            .is_err()
        );
        assert!(
            add_learner(&pb::AddLearnerRequest {
                address: String::new(),
                ..learner
            })
            .is_err()
        );
        let change = pb::ChangeMembershipRequest {
            voter_ids: vec![3, 1, 3],
            retain_as_learners: true,
        };
        assert_eq!(change_membership(&change), Ok((BTreeSet::from([1, 3]), true)));
        assert_eq!(
            change_membership(&pb::ChangeMembershipRequest {
                voter_ids: Vec::new(),
                retain_as_learners: false
            }),
            Err(PbError::Empty {
                field: "voter_ids".to_owned()
            })
        );
        assert_eq!(
            change_membership(&pb::ChangeMembershipRequest {
                voter_ids: vec![1, 0],
                retain_as_learners: false
            })
            .err()
            .map(|e| e.field().to_owned())
            .as_deref(),
            Some("voter_ids[1]")
        );
    }
}
