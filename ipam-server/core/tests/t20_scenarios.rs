//! The domain's main stories, step by step: each test is one thing an operator relies on.

use std::net::Ipv4Addr;

use ipam_core::DomainError;
use ipam_core::EventKind;
use ipam_core::Reply;
use ipam_core::command::AgentRef;
use ipam_core::command::CommandBody;
use ipam_core::command::EniRequest;
use ipam_core::command::LeaseSelector;
use ipam_core::command::NodeSpec;
use ipam_core::command::ReleaseReason;
use ipam_core::decide::EniPlan;
use ipam_core::limits;
use ipam_core::policy::LabelSelector;
use ipam_core::policy::SgPolicy;
use ipam_core::state::EniKind;
use ipam_core::state::Lease;
use ipam_core::state::NodeStatus;
use ipam_core::state::Settings;
use ipam_core::state::Slot;
use ipam_core::testing::Harness;
use ipam_core::testing::check_invariants;
use ipam_core::testing::pod;
use ipam_core::testing::subnet_config;

const NODE: &str = "ip-192-168-1-10.us-west-2.compute.internal";
const EXAMPLE_SG: &str = "example_sg";

fn ok(r: Result<Reply, DomainError>) -> Reply {
    r.unwrap_or_else(|e| panic!("refused: {e}"))
}

/// A cluster with one pool, one ENIConfig (a /24) and one registered m5.large with limits from
/// the built-in table.
fn cluster(pod_eni: bool) -> (Harness, AgentRef) {
    let mut h = Harness::new();
    ok(h.admin(CommandBody::CreatePool {
        cidr: "100.64.0.0/16".parse().unwrap_or_else(|e| panic!("{e}")),
    }));
    ok(h.admin(CommandBody::UpsertSubnetConfig(subnet_config(
        "us-west-2a",
        "subnet-0a1b2c3d",
        "100.64.1.0/24",
        "us-west-2a",
    ))));
    let spec = NodeSpec {
        name: NODE.to_owned(),
        instance_id: "i-0123456789abcdef0".to_owned(),
        instance_type: "m5.large".to_owned(),
        limits: None,
        az: "us-west-2a".to_owned(),
        labels: Default::default(),
        subnet_config: "us-west-2a".to_owned(),
        pod_eni,
    };
    let Reply::Registered { epoch, .. } = ok(h.agent(NODE, None, CommandBody::RegisterNode(spec))) else {
        panic!("not registered")
    };
    (
        h,
        AgentRef {
            node: NODE.to_owned(),
            epoch,
        },
    )
}

fn plan(h: &mut Harness, agent: &AgentRef, request: EniRequest, request_id: &str) -> EniPlan {
    match ok(h.agent(
        NODE,
        Some(request_id),
        CommandBody::PlanEni {
            agent: agent.clone(),
            request,
        },
    )) {
        Reply::EniPlanned(plan) => plan,
        other => panic!("{other:?}"),
    }
}

fn attach(h: &mut Harness, agent: &AgentRef, eni: u64) {
    let eni_id = format!("eni-{eni:017x}");
    let mac = format!("0e:00:00:00:00:{:02x}", eni & 0xff);
    ok(h.agent(
        NODE,
        None,
        CommandBody::ReportEniAttached {
            agent: agent.clone(),
            eni,
            eni_id,
            mac,
        },
    ));
}

fn bind(h: &mut Harness, agent: &AgentRef, n: u64, labels: &[(&str, &str)]) -> Result<Lease, DomainError> {
    let (owner, pod) = pod(n, labels);
    match h.agent(
        NODE,
        Some(&format!("bind-{n}")),
        CommandBody::Bind {
            agent: agent.clone(),
            owner,
            pod,
        },
    )? {
        Reply::Bound(lease) => Ok(lease),
        other => panic!("{other:?}"),
    }
}

fn release(h: &mut Harness, agent: &AgentRef, lease: u64) -> Result<Reply, DomainError> {
    let body = CommandBody::Release {
        agent: agent.clone(),
        lease: LeaseSelector::Id(lease),
        reason: ReleaseReason::CniDel,
    };
    h.agent(NODE, None, body)
}

#[test]
fn max_pods_follows_the_vpc_cni_formula_under_custom_networking() {
    let m5 = limits::lookup("m5.large").unwrap_or_else(|| panic!("m5.large is in the table"));
    assert_eq!((m5.max_enis, m5.ipv4_per_eni), (3, 10));
    assert_eq!(m5.max_pods(false), 29);
    assert_eq!(
        m5.max_pods(true),
        20,
        "(3 - 1) × (10 - 1) + 2: the primary ENI carries no pods"
    );

    // The node really gets that many pod addresses: two secondary ENIs of nine, then no more.
    let (mut h, agent) = cluster(false);
    for i in 0..2 {
        let p = plan(&mut h, &agent, EniRequest::Secondary { ips: 9 }, &format!("eni-{i}"));
        attach(&mut h, &agent, p.eni);
    }
    let refused = h.agent(
        NODE,
        None,
        CommandBody::PlanEni {
            agent: agent.clone(),
            request: EniRequest::Secondary { ips: 1 },
        },
    );
    assert!(
        matches!(refused, Err(DomainError::EniLimit { max_enis: 3, .. })),
        "{refused:?}"
    );
    assert_eq!(h.state.nodes[NODE].warm.len() as u32 + 2, m5.max_pods(true));
}

#[test]
fn an_unknown_instance_type_is_refused_not_guessed() {
    let (mut h, _) = cluster(false);
    let mut spec = h.state.nodes[NODE].spec.clone();
    spec.name = "other".to_owned();
    spec.instance_type = "x99.huge".to_owned();
    let refused = h.agent("other", None, CommandBody::RegisterNode(spec.clone()));
    assert!(
        matches!(refused, Err(DomainError::UnknownInstanceType { .. })),
        "{refused:?}"
    );
    spec.limits = Some(limits::InstanceLimits {
        max_enis: 4,
        ipv4_per_eni: 15,
        branch_enis: 0,
        trunking: false,
    });
    assert!(
        h.agent("other", None, CommandBody::RegisterNode(spec)).is_ok(),
        "limits from DescribeInstanceTypes"
    );
}

#[test]
fn a_crash_between_plan_and_attach_resumes_with_the_same_intent() {
    let (mut h, agent) = cluster(false);
    let first = plan(&mut h, &agent, EniRequest::Secondary { ips: 4 }, "plan-1");
    assert_eq!(
        first.token,
        format!("ipam-{}", first.eni),
        "the EC2 ClientToken is derived from the log"
    );
    // The agent crashes before EC2 answers and retries the same request: same plan, no second ENI.
    let again = plan(&mut h, &agent, EniRequest::Secondary { ips: 4 }, "plan-1");
    assert_eq!(again, first);
    assert_eq!(h.state.nodes[NODE].enis.len(), 1);
    // Or it restarts, re-registers, and finds the intent (token and addresses) in the state.
    let spec = h.state.nodes[NODE].spec.clone();
    let Reply::Registered { epoch, .. } = ok(h.agent(NODE, None, CommandBody::RegisterNode(spec))) else {
        panic!()
    };
    let agent = AgentRef {
        node: NODE.to_owned(),
        epoch,
    };
    let eni = &h.state.nodes[NODE].enis[&first.eni];
    assert_eq!(
        (eni.token.as_str(), eni.primary_ip),
        (first.token.as_str(), first.primary_ip)
    );
    attach(&mut h, &agent, first.eni);
    assert_eq!(h.state.nodes[NODE].warm.len(), 4);
    check_invariants(&h.state).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn addresses_ec2_reports_in_use_are_quarantined_not_lost() {
    let (mut h, agent) = cluster(false);
    let p = plan(&mut h, &agent, EniRequest::Secondary { ips: 2 }, "plan-1");
    let taken = p.ips[0];
    let body = CommandBody::ReportEniFailed {
        agent: agent.clone(),
        eni: p.eni,
        in_use: vec![taken],
        error: "InvalidIPAddress.InUse".to_owned(),
    };
    ok(h.agent(NODE, None, body));
    let subnet = &h.state.subnets["subnet-0a1b2c3d"];
    assert!(subnet.alloc.quarantined().contains(&taken));
    assert!(
        !subnet.alloc.is_used(p.primary_ip) && !subnet.alloc.is_used(p.ips[1]),
        "the rest went back"
    );
    // The next plan never offers the quarantined address.
    let next = plan(&mut h, &agent, EniRequest::Secondary { ips: 9 }, "plan-2");
    assert!(next.primary_ip != taken && !next.ips.contains(&taken));
    ok(h.admin(CommandBody::Unquarantine { ip: taken }));
    assert!(!h.state.subnets["subnet-0a1b2c3d"].alloc.is_used(taken));
}

#[test]
fn a_stale_del_never_frees_a_newer_binding_of_the_same_address() {
    let (mut h, agent) = cluster(false);
    let p = plan(&mut h, &agent, EniRequest::Secondary { ips: 1 }, "plan-1");
    attach(&mut h, &agent, p.eni);
    let first = bind(&mut h, &agent, 1, &[]).unwrap_or_else(|e| panic!("{e}"));
    ok(release(&mut h, &agent, first.id));
    // Not before the cooldown: the only address is cooling.
    assert!(matches!(
        bind(&mut h, &agent, 2, &[]),
        Err(DomainError::NoWarmAddress { .. })
    ));
    // The agent heartbeats while the cooldown runs.
    for _ in 0..3 {
        h.now += Settings::default().ip_cooldown_ms / 3;
        ok(h.agent(NODE, None, CommandBody::Heartbeat(agent.clone())));
    }
    let Reply::Ticked { cooled: 1, .. } = ok(h.exec(ipam_core::ids::Actor::Controller, None, CommandBody::Tick)) else {
        panic!()
    };
    let second = bind(&mut h, &agent, 2, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second.ip, first.ip, "the address came back to a new pod");
    // The old pod's DEL arrives late (or twice): it names the old lease and frees nothing.
    let stale = release(&mut h, &agent, first.id);
    assert!(matches!(stale, Err(DomainError::StaleLease { .. })), "{stale:?}");
    assert!(h.state.nodes[NODE].leases.contains_key(&second.id));
}

#[test]
fn an_expired_node_loses_its_bindings_and_its_old_agent_is_fenced() {
    let (mut h, agent) = cluster(false);
    let p = plan(&mut h, &agent, EniRequest::Secondary { ips: 3 }, "plan-1");
    attach(&mut h, &agent, p.eni);
    let lease = bind(&mut h, &agent, 1, &[]).unwrap_or_else(|e| panic!("{e}"));
    h.now += Settings::default().heartbeat_ttl_ms;
    let Reply::Ticked { expired, .. } = ok(h.exec(ipam_core::ids::Actor::Controller, None, CommandBody::Tick)) else {
        panic!()
    };
    assert_eq!(expired, vec![NODE.to_owned()]);
    let released: Vec<_> = h
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::IpReleased { lease, reason, .. } => Some((lease.id, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(released, vec![(lease.id, ReleaseReason::Expired)]);
    assert_eq!(h.state.nodes[NODE].status, NodeStatus::Expired);
    assert!(matches!(
        bind(&mut h, &agent, 2, &[]),
        Err(DomainError::NodeExpired { .. })
    ));
    // The agent comes back: new epoch; anything still carrying the old one is refused.
    let spec = h.state.nodes[NODE].spec.clone();
    ok(h.agent(NODE, None, CommandBody::RegisterNode(spec)));
    let stale = bind(&mut h, &agent, 3, &[]);
    assert!(matches!(stale, Err(DomainError::StaleEpoch { .. })), "{stale:?}");
    assert_eq!(h.state.nodes[NODE].enis.len(), 1, "the same instance keeps its ENIs");
}

#[test]
fn the_seed_policy_gives_the_two_nginx_pods_branch_enis_and_others_share() {
    let (mut h, agent) = cluster(true);
    // The seed's SecurityGroupPolicy: podSelector matchLabels role: test-role, example_sg.
    ok(h.admin(CommandBody::UpsertSgPolicy(SgPolicy {
        namespace: "default".to_owned(),
        name: "my-security-group-policy".to_owned(),
        pod_selector: Some(LabelSelector {
            match_labels: [("role".to_owned(), "test-role".to_owned())].into(),
            match_expressions: Vec::new(),
        }),
        service_account_selector: None,
        security_groups: vec![EXAMPLE_SG.to_owned()],
    })));
    let shared = plan(&mut h, &agent, EniRequest::Secondary { ips: 2 }, "plan-1");
    attach(&mut h, &agent, shared.eni);
    let nginx: &[(&str, &str)] = &[("app", "nginx"), ("role", "test-role")];
    // No warm branch yet: the agent is told to make one (that is the warm branch pool's job).
    assert!(matches!(
        bind(&mut h, &agent, 1, nginx),
        Err(DomainError::NoWarmBranch { .. })
    ));
    let trunk = plan(&mut h, &agent, EniRequest::Trunk, "trunk");
    attach(&mut h, &agent, trunk.eni);
    for i in 0..2 {
        let body = CommandBody::PlanBranchEni {
            agent: agent.clone(),
            security_groups: vec![EXAMPLE_SG.to_owned()],
        };
        let Reply::EniPlanned(branch) = ok(h.agent(NODE, Some(&format!("branch-{i}")), body)) else {
            panic!()
        };
        assert_eq!(
            branch.kind,
            EniKind::Branch {
                vlan: i + 1,
                trunk: trunk.eni
            }
        );
        attach(&mut h, &agent, branch.eni);
    }
    let a = bind(&mut h, &agent, 1, nginx).unwrap_or_else(|e| panic!("{e}"));
    let b = bind(&mut h, &agent, 2, nginx).unwrap_or_else(|e| panic!("{e}"));
    for lease in [&a, &b] {
        assert_eq!(lease.security_groups, vec![EXAMPLE_SG.to_owned()]);
        assert!(lease.vlan.is_some() && lease.eni != shared.eni);
    }
    assert_ne!(a.vlan, b.vlan);
    let plain = bind(&mut h, &agent, 3, &[("app", "web")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (plain.eni, plain.vlan),
        (shared.eni, None),
        "an unmatched pod uses the shared ENI"
    );
    // A released branch ENI cools for the branch cooldown before another pod gets it.
    ok(release(&mut h, &agent, a.id));
    assert!(matches!(
        bind(&mut h, &agent, 4, nginx),
        Err(DomainError::NoWarmBranch { .. })
    ));
    let slot = h.state.nodes[NODE].enis[&a.eni].slots[&a.ip];
    assert_eq!(
        slot,
        Slot::Cooling {
            until: h.now + Settings::default().branch_cooldown_ms
        }
    );
    check_invariants(&h.state).unwrap_or_else(|e| panic!("{e}"));
    let _: Ipv4Addr = a.ip;
}

#[test]
fn a_leader_whose_clock_is_behind_never_moves_ledger_time_backwards() {
    let (mut h, agent) = cluster(false);
    let p = plan(&mut h, &agent, EniRequest::Secondary { ips: 2 }, "plan-1");
    attach(&mut h, &agent, p.eni);
    let first = bind(&mut h, &agent, 1, &[]).unwrap_or_else(|e| panic!("{e}"));
    let latest = h.state.last_at;
    assert_eq!(first.bound_at, latest);
    // A new leader stamps the next command a minute earlier than the last event.
    h.now = latest - 60_000;
    let second = bind(&mut h, &agent, 2, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        second.bound_at, latest,
        "decided at the ledger's latest time, not the stamp"
    );
    let times: Vec<u64> = h.events.iter().map(|e| e.at).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "ledger time went backwards: {times:?}"
    );
    // A later stamp moves time on as usual.
    h.now = latest + 5;
    ok(release(&mut h, &agent, second.id));
    assert_eq!(h.state.last_at, latest + 5);
}
