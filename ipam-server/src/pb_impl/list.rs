//! The admin listings (`ListNodes`, `ListEnis`, `ListLeases`) over the state: filters, then a page
//! in key order. A page token is `<listing>:<last key of the previous page>`, so a page continues
//! after that key even when entries came or went in between.

use ipam_core::ids::EniRef;
use ipam_core::ids::LeaseId;
use ipam_core::state::State;
use ipam_proto::ipam::v1 as pb;

use super::eni::eni_kind_to_pb;
use super::eni::eni_state_to_pb;
use super::eni::eni_to_pb;
use super::error::PbError;
use super::error::Result;
use super::field;
use super::lease::lease_to_pb;
use super::node::node_state_filter;
use super::node::node_to_pb;

/// The page size when a request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page served, whatever a request asks.
pub const MAX_PAGE_SIZE: usize = 1_000;

fn page_size(requested: u32) -> usize {
    match usize::try_from(requested) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(n) => n.min(MAX_PAGE_SIZE),
        Err(_) => MAX_PAGE_SIZE,
    }
}

fn token(listing: &str, key: impl ToString) -> String {
    format!("{listing}:{}", key.to_string())
}

fn after<'a>(listing: &str, token: &'a str) -> Result<Option<&'a str>> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix(listing)
        .and_then(|rest| rest.strip_prefix(':'))
        .map(Some)
        .ok_or_else(|| PbError::InvalidPageToken {
            token: token.to_owned(),
        })
}

fn numeric_after(listing: &str, token: &str) -> Result<Option<u64>> {
    after(listing, token)?
        .map(|key| {
            key.parse().map_err(|_| PbError::InvalidPageToken {
                token: token.to_owned(),
            })
        })
        .transpose()
}

/// Cuts `items` (in key order, already past the token) to a page; the token of the next page
/// when more remain.
fn page<T, K: ToString>(listing: &str, mut items: Vec<T>, size: usize, key: impl Fn(&T) -> K) -> (Vec<T>, String) {
    if items.len() <= size {
        return (items, String::new());
    }
    items.truncate(size);
    let next = items.last().map(|last| token(listing, key(last))).unwrap_or_default();
    (items, next)
}

/// `ListNodes`' answer.
pub fn list_nodes(state: &State, req: &pb::ListNodesRequest) -> Result<pb::ListNodesResponse> {
    let status = field::filter_enum("state", "NodeState", req.state, node_state_filter)?;
    let after = after("nodes", &req.page_token)?;
    let size = page_size(req.page_size);
    let nodes: Vec<pb::Node> = state
        .nodes
        .values()
        .filter(|n| after.is_none_or(|a| n.spec.name.as_str() > a))
        .filter(|n| status.is_none_or(|s| n.status == s))
        .filter(|n| req.subnet_config.is_empty() || n.spec.subnet_config == req.subnet_config)
        .take(size + 1)
        .map(node_to_pb)
        .collect();
    let (nodes, next_page_token) = page("nodes", nodes, size, |n| n.name.clone());
    Ok(pb::ListNodesResponse { nodes, next_page_token })
}

/// `ListEnis`' answer, by `eni_ref` across nodes.
pub fn list_enis(state: &State, req: &pb::ListEnisRequest) -> Result<pb::ListEnisResponse> {
    let kind = field::filter_enum("kind", "EniKind", req.kind, |k: pb::EniKind| {
        (k != pb::EniKind::Unspecified).then_some(k)
    })?;
    let eni_state = field::filter_enum("state", "EniState", req.state, |s: pb::EniState| {
        (s != pb::EniState::Unspecified).then_some(s)
    })?;
    let after: Option<EniRef> = numeric_after("enis", &req.page_token)?;
    let size = page_size(req.page_size);
    let nodes: Vec<_> = if req.node.is_empty() {
        state.nodes.values().collect()
    } else {
        state.nodes.get(&req.node).into_iter().collect()
    };
    let mut enis: Vec<_> = nodes
        .into_iter()
        .flat_map(|n| n.enis.values())
        .filter(|e| after.is_none_or(|a| e.eni_ref > a))
        .filter(|e| req.subnet_id.is_empty() || e.subnet_id == req.subnet_id)
        .filter(|e| kind.is_none_or(|k| eni_kind_to_pb(&e.kind) == k))
        .filter(|e| eni_state.is_none_or(|s| eni_state_to_pb(e.state) == s))
        .collect();
    enis.sort_by_key(|e| e.eni_ref);
    enis.truncate(size + 1);
    let enis = enis.into_iter().map(eni_to_pb).collect();
    let (enis, next_page_token) = page("enis", enis, size, |e| e.eni_ref);
    Ok(pb::ListEnisResponse { enis, next_page_token })
}

/// `ListLeases`' answer, by lease id. The state keeps bound leases only (a released lease lives on
/// in the ledger), so a `COOLING` filter matches nothing.
pub fn list_leases(state: &State, req: &pb::ListLeasesRequest) -> Result<pb::ListLeasesResponse> {
    let lease_state = field::filter_enum("state", "LeaseState", req.state, |s: pb::LeaseState| {
        (s != pb::LeaseState::Unspecified).then_some(s)
    })?;
    let after: Option<LeaseId> = numeric_after("leases", &req.page_token)?;
    let size = page_size(req.page_size);
    let nodes: Vec<_> = if req.node.is_empty() {
        state.nodes.values().collect()
    } else {
        state.nodes.get(&req.node).into_iter().collect()
    };
    let mut leases: Vec<pb::Lease> = nodes
        .into_iter()
        .flat_map(|n| n.leases.values())
        .filter(|l| after.is_none_or(|a| l.id > a))
        .map(|l| lease_to_pb(state, l))
        .filter(|l| req.subnet_id.is_empty() || l.subnet_id == req.subnet_id)
        .filter(|l| lease_state.is_none_or(|s| l.state() == s))
        .collect();
    leases.sort_by_key(|l| l.lease_id);
    let (leases, next_page_token) = page("leases", leases, size, |l| l.lease_id);
    Ok(pb::ListLeasesResponse {
        leases,
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use ipam_core::CommandBody;
    use ipam_core::Reply;
    use ipam_core::limits::InstanceLimits;
    use ipam_core::testing::Harness;
    use ipam_core::testing::node_spec;
    use ipam_core::testing::pod;
    use ipam_core::testing::subnet_config;

    use super::*;

    const AZ: &str = "us-west-2a";

    /// Three nodes, each with an attached secondary ENI and `binds` pods.
    fn harness(binds: u64) -> Harness {
        let mut h = Harness::new();
        let ok = |r: ipam_core::Result<Reply>| r.unwrap_or_else(|e| panic!("{e}"));
        h.subnet(
            "100.64.0.0/16",
            subnet_config(AZ, "subnet-0a1b2c3d", "100.64.1.0/24", AZ),
        );
        let limits = InstanceLimits {
            max_enis: 3,
            ipv4_per_eni: 10,
            branch_enis: 0,
            trunking: false,
        };
        for (i, node) in ["node-a", "node-b", "node-c"].into_iter().enumerate() {
            let instance = format!("i-0123456789abcdef{i}");
            let agent = h.register(node_spec(node, &instance, AZ, AZ, limits));
            h.attached_eni(&agent, 3, &format!("eni-0123456789abcdef{i}"), "0a:1b:2c:3d:4e:5f");
            for n in 0..binds {
                let (owner, meta) = pod(i as u64 * 10 + n, &[]);
                ok(h.agent(
                    node,
                    Some(&format!("bind-{n}")),
                    CommandBody::Bind {
                        agent: agent.clone(),
                        owner,
                        pod: meta,
                    },
                ));
            }
        }
        h
    }

    #[test]
    fn nodes_page_by_name() {
        let h = harness(0);
        let first = list_nodes(
            &h.state,
            &pb::ListNodesRequest {
                page_size: 2,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = first.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, vec!["node-a", "node-b"]);
        assert_eq!(first.next_page_token, "nodes:node-b");
        let second = list_nodes(
            &h.state,
            &pb::ListNodesRequest {
                page_size: 2,
                page_token: first.next_page_token,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            second.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            vec!["node-c"]
        );
        assert_eq!(second.next_page_token, "");
        let expired = list_nodes(
            &h.state,
            &pb::ListNodesRequest {
                state: pb::NodeState::Expired.into(),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(expired.nodes.is_empty());
        let other_config = list_nodes(
            &h.state,
            &pb::ListNodesRequest {
                subnet_config: "elsewhere".to_owned(),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(other_config.nodes.is_empty());
    }

    #[test]
    fn enis_and_leases_page_by_id_with_filters() {
        let h = harness(2);
        let all = list_enis(&h.state, &pb::ListEnisRequest::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.enis.len(), 3);
        assert!(all.enis.windows(2).all(|w| w[0].eni_ref < w[1].eni_ref));
        let page = list_enis(
            &h.state,
            &pb::ListEnisRequest {
                page_size: 1,
                page_token: format!("enis:{}", all.enis[0].eni_ref),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.enis.len(), 1);
        assert_eq!(page.enis[0].eni_ref, all.enis[1].eni_ref);
        assert_eq!(page.next_page_token, format!("enis:{}", all.enis[1].eni_ref));
        let trunks = list_enis(
            &h.state,
            &pb::ListEnisRequest {
                kind: pb::EniKind::Trunk.into(),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(trunks.enis.is_empty());
        let of_b = list_enis(
            &h.state,
            &pb::ListEnisRequest {
                node: "node-b".to_owned(),
                state: pb::EniState::Attached.into(),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            of_b.enis.iter().map(|e| e.node.as_str()).collect::<Vec<_>>(),
            vec!["node-b"]
        );

        let leases = list_leases(&h.state, &pb::ListLeasesRequest::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(leases.leases.len(), 6);
        assert!(leases.leases.windows(2).all(|w| w[0].lease_id < w[1].lease_id));
        assert!(leases.leases.iter().all(|l| l.state() == pb::LeaseState::Bound));
        let page = list_leases(
            &h.state,
            &pb::ListLeasesRequest {
                node: "node-c".to_owned(),
                page_size: 1,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.leases.len(), 1);
        assert_eq!(page.leases[0].node, "node-c");
        assert_eq!(page.next_page_token, format!("leases:{}", page.leases[0].lease_id));
        let cooling = list_leases(
            &h.state,
            &pb::ListLeasesRequest {
                state: pb::LeaseState::Cooling.into(),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(cooling.leases.is_empty());
    }

    #[test]
    fn bad_tokens_and_filters_are_invalid_arguments() {
        let h = harness(0);
        for token in ["enis:1", "nodes", "garbage"] {
            assert_eq!(
                list_nodes(
                    &h.state,
                    &pb::ListNodesRequest {
                        page_token: token.to_owned(),
                        ..Default::default()
                    }
                )
                .err(),
                Some(PbError::InvalidPageToken {
                    token: token.to_owned()
                }),
                "{token}"
            );
        }
        assert!(matches!(
            list_enis(
                &h.state,
                &pb::ListEnisRequest {
                    page_token: "enis:x".to_owned(),
                    ..Default::default()
                }
            ),
            Err(PbError::InvalidPageToken { .. })
        ));
        assert!(matches!(
            list_leases(
                &h.state,
                &pb::ListLeasesRequest {
                    state: 7,
                    ..Default::default()
                }
            ),
            Err(PbError::UnknownEnum { .. })
        ));
        assert!(matches!(
            list_enis(
                &h.state,
                &pb::ListEnisRequest {
                    kind: 9,
                    ..Default::default()
                }
            ),
            Err(PbError::UnknownEnum { .. })
        ));
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5_000), MAX_PAGE_SIZE);
    }
}
