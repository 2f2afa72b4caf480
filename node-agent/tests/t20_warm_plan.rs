//! The warm-pool planner against the VPC CNI's documented behaviour and a model of the node.
//!
//! * Table-driven: every worked example of `aws/amazon-vpc-cni-k8s` (at v1.23.1,
//!   `b52188387f2e2f10bf289ace929d6a63b176a4fa`) for secondary IPs: the table of
//!   `docs/eni-and-ip-target.md`, the examples of `README.md` and the comments of the target
//!   variables in `pkg/ipamd/ipamd.go`. Pods arrive, the plan runs against a model of the server and
//!   EC2 until it asks for nothing more, and the ENIs and addresses are compared with the example.
//! * Cases: defaults, custom networking, the trunk's slot, `MAX_ENI`, limits, max pods, cooling,
//!   pending work, shrinking.
//! * Properties: for random targets and nodes, every plan stays within the limits, never plans an
//!   ENI while one is pending, never shrinks below a target, does not depend on the order of the
//!   ENIs, and plan → carry out → plan converges.

use ipam_core::ids::EniRef;
use ipam_core::limits::InstanceLimits;
use ipam_core::limits::lookup;
use ipam_core::state::EniState;
use ipam_node_agent::warm::Action;
use ipam_node_agent::warm::Blocked;
use ipam_node_agent::warm::EniRole;
use ipam_node_agent::warm::EniView;
use ipam_node_agent::warm::Mode;
use ipam_node_agent::warm::Node;
use ipam_node_agent::warm::Plan;
use ipam_node_agent::warm::Targets;
use ipam_node_agent::warm::plan;
use proptest::prelude::*;

// ---- the model: the server and EC2 carrying plans out ----

/// A node whose only ENI is its primary, attached and empty (as a new instance boots).
fn fresh(limits: InstanceLimits, custom_networking: bool) -> Node {
    Node {
        limits,
        custom_networking,
        pod_eni: false,
        max_pods: None,
        enis: vec![EniView::attached(0, EniRole::Primary)],
    }
}

fn eni_mut(node: &mut Node, eni: EniRef) -> &mut EniView {
    node.enis
        .iter_mut()
        .find(|e| e.eni == eni)
        .unwrap_or_else(|| panic!("no ENI {eni}"))
}

fn next_handle(node: &Node) -> EniRef {
    node.enis.iter().map(|e| e.eni).max().unwrap_or(0) + 1
}

/// Records the plan's actions as the server would: planned work is pending until EC2 is done.
fn apply(node: &mut Node, plan: &Plan) {
    for action in &plan.actions {
        match *action {
            Action::PlanEni { ips } => {
                let eni = next_handle(node);
                node.enis.push(EniView::planned(eni, ips));
            }
            Action::PlanIps { eni, count } => eni_mut(node, eni).pending += count,
            Action::DrainIps { eni, count } => {
                let e = eni_mut(node, eni);
                e.warm -= count;
                e.draining += count;
            }
            Action::DetachEni { eni } => eni_mut(node, eni).state = EniState::Detaching,
        }
    }
}

/// EC2 finishes everything in flight: planned ENIs attach (young), pending addresses become warm,
/// drained ones leave, detached ENIs go; ENIs attached before are no longer young.
fn complete(node: &mut Node) {
    node.enis.retain(|e| e.state != EniState::Detaching);
    for e in &mut node.enis {
        e.young = e.state == EniState::Planned;
        e.state = EniState::Attached;
        e.warm += e.pending;
        e.pending = 0;
        e.draining = 0;
    }
}

/// Cooldowns end: cooling addresses are warm again on their ENI.
fn cool(node: &mut Node) {
    for e in &mut node.enis {
        e.warm += e.cooling;
        e.cooling = 0;
    }
}

/// Whether EC2 is still working for the node or a cooldown still runs.
fn in_flight(node: &Node) -> bool {
    node.enis
        .iter()
        .any(|e| e.state != EniState::Attached || e.pending > 0 || e.draining > 0 || e.cooling > 0)
}

/// Plans, checks, carries out, lets EC2 finish and cooldowns end, until a plan asks for nothing
/// and nothing is in flight; returns that plan.
fn converge(targets: &Targets, node: &mut Node) -> Plan {
    for _ in 0..64 {
        let p = plan(targets, node);
        check_plan(targets, node, &p);
        if p.is_idle() && !in_flight(node) {
            return p;
        }
        apply(node, &p);
        complete(node);
        cool(node);
    }
    panic!("no convergence in 64 rounds: {targets:?} {node:?}");
}

/// Binds up to `n` pods to warm addresses (pod ENIs, by handle); returns how many were bound.
fn bind(node: &mut Node, n: u32) -> u32 {
    let mut left = n;
    let pods: Vec<usize> = (0..node.enis.len())
        .filter(|&i| node.carries_pods(&node.enis[i]) && node.enis[i].state == EniState::Attached)
        .collect();
    for i in pods {
        let e = &mut node.enis[i];
        let take = u16::try_from(left).unwrap_or(u16::MAX).min(e.warm);
        e.warm -= take;
        e.bound += take;
        left -= u32::from(take);
    }
    n - left
}

/// Releases up to `n` pods (their addresses cool); returns how many were released.
fn release(node: &mut Node, n: u32) -> u32 {
    let mut left = n;
    for e in node.enis.iter_mut().rev() {
        let take = u16::try_from(left).unwrap_or(u16::MAX).min(e.bound);
        e.bound -= take;
        e.cooling += take;
        left -= u32::from(take);
    }
    n - left
}

/// Runs pods onto the node until `pods` are bound, the pool converging in between, as pods wait
/// for addresses on a real node.
fn run_pods(targets: &Targets, node: &mut Node, pods: u32) {
    let mut bound = node.stats().bound;
    while bound < pods {
        let got = bind(node, pods - bound);
        bound += got;
        let p = converge(targets, node);
        assert!(
            got > 0 || bound >= pods || node.stats().warm > 0,
            "pods cannot be placed: {}",
            p.why
        );
    }
}

/// Addresses the pool lacks: the VPC CNI's formulas, written again as the oracle.
fn short(targets: &Targets, node: &Node) -> u32 {
    let s = node.stats();
    let per_eni = u32::from(node.limits.pod_ips_per_eni());
    match targets.mode() {
        Mode::Ips { warm_ip, minimum_ip } => warm_ip
            .saturating_sub(s.available())
            .max(minimum_ip.saturating_sub(s.total())),
        Mode::Enis { warm_eni } => (warm_eni * per_eni).max(1).saturating_sub(s.available()),
    }
}

/// Addresses over the IP targets (0 under `WARM_ENI_TARGET`).
fn over(targets: &Targets, node: &Node) -> u32 {
    let s = node.stats();
    match targets.mode() {
        Mode::Ips { warm_ip, minimum_ip } => s
            .available()
            .saturating_sub(warm_ip)
            .min(s.total().saturating_sub(minimum_ip)),
        Mode::Enis { .. } => 0,
    }
}

fn find(node: &Node, eni: EniRef) -> EniView {
    let mut found = node.enis.iter().filter(|e| e.eni == eni);
    let e = *found.next().unwrap_or_else(|| panic!("action on unknown ENI {eni}"));
    assert!(found.next().is_none(), "two ENIs with handle {eni}");
    e
}

/// Everything a plan must respect, whatever the node.
fn check_plan(targets: &Targets, node: &Node, p: &Plan) {
    let per_eni = node.limits.pod_ips_per_eni();
    let why = &p.why;
    let pending_eni = node
        .enis
        .iter()
        .any(|e| e.role != EniRole::Primary && e.state == EniState::Planned);
    let new_enis = p.actions.iter().filter(|a| matches!(a, Action::PlanEni { .. })).count();
    assert!(new_enis <= 1, "more than one new ENI: {why}");
    assert!(!pending_eni || new_enis == 0, "a new ENI while one is pending: {why}");
    if new_enis > 0 {
        assert!(p.blocked.is_none(), "a new ENI, yet blocked: {why}");
        let slots = 1 + node.enis.iter().filter(|e| e.role != EniRole::Primary).count() + new_enis;
        let trunk = node.pod_eni && node.limits.trunking && !node.enis.iter().any(|e| e.role == EniRole::Trunk);
        let max = usize::try_from(targets.max_enis(&node.limits)).unwrap_or(usize::MAX);
        assert!(slots + usize::from(trunk) <= max, "ENI limit exceeded: {why}");
    }
    let grows = p
        .actions
        .iter()
        .any(|a| matches!(a, Action::PlanEni { .. } | Action::PlanIps { .. }));
    let shrinks = p
        .actions
        .iter()
        .any(|a| matches!(a, Action::DrainIps { .. } | Action::DetachEni { .. }));
    assert!(!grows || !shrinks, "grows and shrinks at once: {why}");
    if let Some(max_pods) = node.max_pods {
        assert!(!grows || node.stats().total() < max_pods, "grows past max pods: {why}");
    }
    let mut touched = Vec::new();
    for action in &p.actions {
        match *action {
            Action::PlanEni { ips } => assert!(ips >= 1 && ips <= per_eni, "{action:?}: {why}"),
            Action::PlanIps { eni, count } => {
                let e = find(node, eni);
                assert!(
                    e.state == EniState::Attached && node.carries_pods(&e),
                    "{action:?} on {e:?}"
                );
                assert!(
                    count >= 1 && e.used() + u32::from(count) <= u32::from(per_eni),
                    "{action:?} on {e:?}"
                );
            }
            Action::DrainIps { eni, count } => {
                let e = find(node, eni);
                assert!(
                    e.state == EniState::Attached && node.carries_pods(&e),
                    "{action:?} on {e:?}"
                );
                assert!(count >= 1 && count <= e.warm, "{action:?} on {e:?}");
            }
            Action::DetachEni { eni } => {
                let e = find(node, eni);
                assert!(
                    e.role == EniRole::Secondary && e.state == EniState::Attached,
                    "{action:?} on {e:?}"
                );
                assert!(!e.young, "{action:?} on a young ENI");
                assert!(
                    e.bound == 0 && e.cooling == 0 && e.pending == 0 && e.draining == 0,
                    "{action:?} on a busy ENI {e:?}"
                );
            }
        }
        if let Action::PlanIps { eni, .. } | Action::DrainIps { eni, .. } | Action::DetachEni { eni } = *action {
            assert!(!touched.contains(&eni), "two actions on ENI {eni}: {why}");
            touched.push(eni);
        }
    }
    if shrinks {
        let mut after = node.clone();
        apply(&mut after, p);
        assert_eq!(short(targets, node), 0, "shrinks while short: {why}");
        assert_eq!(short(targets, &after), 0, "shrinks below a target: {why}");
    }
    // The order of the ENIs does not matter.
    let mut reversed = node.clone();
    reversed.enis.reverse();
    assert_eq!(plan(targets, &reversed), *p, "depends on the order of the ENIs");
    let mut rotated = node.clone();
    rotated.enis.rotate_left(node.enis.len() / 2);
    assert_eq!(plan(targets, &rotated), *p, "depends on the order of the ENIs");
}

/// Addresses per pod ENI (bound + warm + cooling), sorted; the primary is counted when it carries pods.
fn per_eni(node: &Node) -> Vec<u32> {
    let mut counts: Vec<u32> = node
        .enis
        .iter()
        .filter(|e| node.carries_pods(e))
        .map(|e| u32::from(e.bound + e.warm + e.cooling))
        .collect();
    counts.sort_unstable();
    counts
}

fn limits(name: &str) -> InstanceLimits {
    lookup(name).unwrap_or_else(|| panic!("{name} is not in the table"))
}

fn targets(warm_eni: Option<u32>, warm_ip: Option<u32>, minimum_ip: Option<u32>) -> Targets {
    Targets {
        warm_eni,
        warm_ip,
        minimum_ip,
        max_eni: None,
    }
}

fn ips(warm_ip: u32, minimum_ip: Option<u32>) -> Targets {
    targets(None, Some(warm_ip), minimum_ip)
}

// ---- the VPC CNI's worked examples ----

/// One row of an example: after `pods` pods, the node has `enis` ENIs (the primary included),
/// `total` secondary addresses, `unused` of them free, spread as `per_eni` (sorted).
struct Row {
    pods: u32,
    enis: usize,
    total: u32,
    unused: u32,
    per_eni: &'static [u32],
}

const fn row(pods: u32, enis: usize, total: u32, unused: u32, per_eni: &'static [u32]) -> Row {
    Row {
        pods,
        enis,
        total,
        unused,
        per_eni,
    }
}

/// Boots a node (no custom networking, as in the examples), runs the rows' pods in order, and
/// compares each row once the pool has settled.
fn example(what: &str, limits: InstanceLimits, targets: Targets, rows: &[Row]) {
    let mut node = fresh(limits, false);
    converge(&targets, &mut node);
    for r in rows {
        run_pods(&targets, &mut node, r.pods);
        let p = converge(&targets, &mut node);
        let s = node.stats();
        let got = (node.enis.len(), s.total(), s.available(), per_eni(&node));
        let want = (r.enis, r.total, r.unused, r.per_eni.to_vec());
        assert_eq!(
            got, want,
            "{what}, {} pods (ENIs, total, unused, per ENI): {}",
            r.pods, p.why
        );
        assert_eq!(s.bound, r.pods, "{what}");
    }
}

/// p3dn.24xlarge: 15 ENIs, 50 IPv4 addresses each (`pkg/vpc/vpc_ip_resource_limit.go`); not in the
/// built-in table.
const P3DN_24XLARGE: InstanceLimits = InstanceLimits {
    max_enis: 15,
    ipv4_per_eni: 50,
    branch_enis: 0,
    trunking: false,
};

/// m4.4xlarge: 8 ENIs, 30 IPv4 addresses each (`pkg/vpc/vpc_ip_resource_limit.go`).
const M4_4XLARGE: InstanceLimits = InstanceLimits {
    max_enis: 8,
    ipv4_per_eni: 30,
    branch_enis: 0,
    trunking: false,
};

#[test]
fn doc_eni_and_ip_target_t3_small_warm_eni_1() {
    // docs/eni-and-ip-target.md, rows 1-3: t3.small, WARM_ENI_TARGET=1.
    let rows = [
        row(0, 1, 3, 3, &[3]),
        row(5, 3, 9, 4, &[3, 3, 3]),
        row(9, 3, 9, 0, &[3, 3, 3]),
    ];
    example(
        "t3.small WARM_ENI_TARGET=1",
        limits("t3.small"),
        targets(Some(1), None, None),
        &rows,
    );
}

#[test]
fn doc_eni_and_ip_target_t3_small_warm_ip_1_minimum_1() {
    // docs/eni-and-ip-target.md, rows 4-6: t3.small, WARM_IP_TARGET=1, MINIMUM_IP_TARGET=1.
    let rows = [
        row(0, 1, 1, 1, &[1]),
        row(5, 2, 6, 1, &[3, 3]),
        row(9, 3, 9, 0, &[3, 3, 3]),
    ];
    example(
        "t3.small WARM_IP_TARGET=1 MINIMUM_IP_TARGET=1",
        limits("t3.small"),
        ips(1, Some(1)),
        &rows,
    );
}

#[test]
fn doc_eni_and_ip_target_t3_small_warm_ip_2_minimum_5() {
    // docs/eni-and-ip-target.md, rows 7-9: t3.small, WARM_IP_TARGET=2, MINIMUM_IP_TARGET=5.
    let rows = [
        row(0, 2, 5, 5, &[2, 3]),
        row(5, 3, 7, 2, &[1, 3, 3]),
        row(9, 3, 9, 0, &[3, 3, 3]),
    ];
    example(
        "t3.small WARM_IP_TARGET=2 MINIMUM_IP_TARGET=5",
        limits("t3.small"),
        ips(2, Some(5)),
        &rows,
    );
}

#[test]
fn doc_eni_and_ip_target_p3dn_warm_eni_1() {
    // docs/eni-and-ip-target.md, rows 10-12: p3dn.24xlarge, WARM_ENI_TARGET=1.
    let rows = [
        row(0, 1, 49, 49, &[49]),
        row(3, 2, 98, 95, &[49, 49]),
        row(95, 3, 147, 52, &[49, 49, 49]),
    ];
    example(
        "p3dn.24xlarge WARM_ENI_TARGET=1",
        P3DN_24XLARGE,
        targets(Some(1), None, None),
        &rows,
    );
}

#[test]
fn doc_eni_and_ip_target_p3dn_warm_ip_5_minimum_10() {
    // docs/eni-and-ip-target.md, rows 13-16: p3dn.24xlarge, WARM_IP_TARGET=5, MINIMUM_IP_TARGET=10.
    let rows = [
        row(0, 1, 10, 10, &[10]),
        row(7, 1, 12, 5, &[12]),
        row(15, 1, 20, 5, &[20]),
        row(45, 2, 50, 5, &[1, 49]),
    ];
    example(
        "p3dn.24xlarge WARM_IP_TARGET=5 MINIMUM_IP_TARGET=10",
        P3DN_24XLARGE,
        ips(5, Some(10)),
        &rows,
    );
}

#[test]
fn doc_eni_and_ip_target_limits_reached_says_so() {
    // The t3.small rows with 9 pods: every slot of 3 ENIs is taken, nothing is free.
    for t in [targets(Some(1), None, None), ips(1, Some(1)), ips(2, Some(5))] {
        let mut node = fresh(limits("t3.small"), false);
        run_pods(&t, &mut node, 9);
        let p = converge(&t, &mut node);
        let blocked = Some(Blocked::EniLimit {
            max_enis: 3,
            reserved_for_trunk: false,
        });
        assert_eq!(p.blocked, blocked, "{}", p.why);
        assert!(p.why.contains("ENI limit reached (3 ENIs)"), "{}", p.why);
    }
}

#[test]
fn readme_warm_eni_target_m4_4xlarge_5_pods() {
    // README, WARM_ENI_TARGET: "an m4.4xlarge launches with 1 network interface and 30 IP addresses. If 5
    // pods are placed on the node and 5 free IP addresses are removed from the IP address warm pool, then
    // ipamd attempts to allocate more interfaces until WARM_ENI_TARGET free interfaces are available".
    // An ENI's own primary address is not for pods: 29 per ENI.
    let rows = [row(0, 1, 29, 29, &[29]), row(5, 2, 58, 53, &[29, 29])];
    example("m4.4xlarge WARM_ENI_TARGET=1", M4_4XLARGE, Targets::default(), &rows);
}

#[test]
fn ipamd_comments_m4_4xlarge_9_pods() {
    // pkg/ipamd/ipamd.go, the comments of envWarmIPTarget, envMinimumIPTarget and envWarmENITarget, all
    // for an m4.4xlarge with 9 pods. They count 30 addresses per ENI; with 29 (the ENI's own address is
    // not for pods) WARM_ENI_TARGET=2 gives 87 (not 90) and the default 58 (not 60).
    // "WARM_IP_TARGET is set to 1, and there are 9 pods [...] 10 IP addresses with 9 being assigned to pods
    // and 1 free IP."
    example("WARM_IP_TARGET=1", M4_4XLARGE, ips(1, None), &[row(9, 1, 10, 1, &[10])]);
    // "WARM_IP_TARGET is set to 1 and MINIMUM_IP_TARGET is set to 12, and there are 9 pods [...] 12 IP
    // addresses with 9 being assigned to pods and 3 free IPs."
    example(
        "WARM_IP_TARGET=1 MINIMUM_IP_TARGET=12",
        M4_4XLARGE,
        ips(1, Some(12)),
        &[row(9, 1, 12, 3, &[12])],
    );
    // "WARM_ENI_TARGET is set to 2, and there are 9 pods [...] 2 extra ENIs and its IP addresses".
    let warm_eni_2 = targets(Some(2), None, None);
    example(
        "WARM_ENI_TARGET=2",
        M4_4XLARGE,
        warm_eni_2,
        &[row(9, 3, 87, 78, &[29, 29, 29])],
    );
    // "If WARM_ENI_TARGET is not set, it defaults to 1, so if there are 9 pods [...] 1 extra ENI".
    example(
        "default",
        M4_4XLARGE,
        Targets::default(),
        &[row(9, 2, 58, 49, &[29, 29])],
    );
}

#[test]
fn readme_minimum_ip_target_pre_scaling() {
    // README, MINIMUM_IP_TARGET: "If WARM_IP_TARGET is set to 30 [...] then 30 pods are deployed to the node,
    // the CNI will allocate an additional 30 IPs, for a total of 60 [...] If instead MINIMUM_IP_TARGET is
    // set to 30 and WARM_IP_TARGET to 2, after the 30 pods are deployed the CNI would allocate an additional
    // 2 IPs [...] (32 IPs vs 60 IPs)." On an m4.4xlarge (29 per ENI).
    let warm_only = [row(0, 2, 30, 30, &[1, 29]), row(30, 3, 60, 30, &[2, 29, 29])];
    example("WARM_IP_TARGET=30", M4_4XLARGE, ips(30, None), &warm_only);
    let both = [row(0, 2, 30, 30, &[1, 29]), row(30, 2, 32, 2, &[3, 29])];
    example(
        "WARM_IP_TARGET=2 MINIMUM_IP_TARGET=30",
        M4_4XLARGE,
        ips(2, Some(30)),
        &both,
    );
}

#[test]
fn readme_minimum_ip_target_alone_stops_growth() {
    // README, MINIMUM_IP_TARGET note 2: "If MINIMUM_IP_TARGET is set and WARM_IP_TARGET is not set,
    // WARM_IP_TARGET is assumed to be 0, which leads to the number of IPs attached to the node will be the
    // value of MINIMUM_IP_TARGET. This configuration will prevent future ENIs/IPs from being allocated."
    let t = targets(Some(3), None, Some(10));
    let mut node = fresh(M4_4XLARGE, false);
    let p = converge(&t, &mut node);
    assert_eq!((node.stats().total(), node.enis.len()), (10, 1), "{}", p.why);
    bind(&mut node, 10);
    let p = plan(&t, &node);
    assert!(p.is_idle() && p.blocked.is_none(), "{}", p.why);
    assert!(p.why.contains("targets met"), "{}", p.why);
}

#[test]
fn readme_warm_ip_target_allocates_interfaces_when_short() {
    // README, WARM_IP_TARGET example 1: "if WARM_IP_TARGET is set to 5, then ipamd attempts to keep 5 free IP
    // addresses available at all times. If the elastic network interfaces on the node are unable to provide
    // these free addresses, ipamd attempts to allocate more interfaces". A t3.small has 3 per ENI.
    let rows = [
        row(0, 2, 5, 5, &[2, 3]),
        row(4, 3, 9, 5, &[3, 3, 3]),
        row(6, 3, 9, 3, &[3, 3, 3]),
    ];
    example("t3.small WARM_IP_TARGET=5", limits("t3.small"), ips(5, None), &rows);
}

// ---- defaults and targets ----

#[test]
fn defaults_keep_one_whole_eni_available() {
    let mut node = fresh(limits("m5.xlarge"), true);
    let first = plan(&Targets::default(), &node);
    assert_eq!(first.actions, vec![Action::PlanEni { ips: 14 }], "{}", first.why);
    assert!(
        first.why.starts_with("WARM_ENI_TARGET=1 (default); 0 addresses"),
        "{}",
        first.why
    );
    converge(&Targets::default(), &mut node);
    assert_eq!(per_eni(&node), vec![14]);
    // One pod: 13 available < 14, a second whole ENI.
    bind(&mut node, 1);
    converge(&Targets::default(), &mut node);
    assert_eq!(per_eni(&node), vec![14, 14]);
}

#[test]
fn warm_eni_target_is_ignored_when_an_ip_target_is_set() {
    let t = targets(Some(2), Some(3), None);
    let mut node = fresh(limits("m5.xlarge"), true);
    let p = plan(&t, &node);
    assert_eq!(p.actions, vec![Action::PlanEni { ips: 3 }], "{}", p.why);
    assert!(p.why.contains("(WARM_ENI_TARGET=2 ignored)"), "{}", p.why);
    converge(&t, &mut node);
    assert_eq!(node.stats().total(), 3);
}

#[test]
fn warm_eni_target_0_grows_only_when_nothing_is_available() {
    let t = targets(Some(0), None, None);
    let mut node = fresh(limits("m5.xlarge"), true);
    converge(&t, &mut node);
    assert_eq!(per_eni(&node), vec![14], "whole ENI once nothing is available");
    bind(&mut node, 13);
    assert!(plan(&t, &node).is_idle(), "1 available is enough");
    bind(&mut node, 1);
    let p = plan(&t, &node);
    assert_eq!(p.actions, vec![Action::PlanEni { ips: 14 }], "{}", p.why);
}

#[test]
fn warm_eni_target_fills_an_existing_eni_completely() {
    // tryAssignIPs: without IP targets, all of an ENI's free slots are asked for at once.
    let mut node = fresh(limits("m5.xlarge"), true);
    node.enis.push(EniView {
        bound: 4,
        warm: 2,
        ..EniView::attached(7, EniRole::Secondary)
    });
    let p = plan(&Targets::default(), &node);
    // 10 available after the fill, still short of 14: a whole new ENI too.
    let want = vec![Action::PlanIps { eni: 7, count: 8 }, Action::PlanEni { ips: 14 }];
    assert_eq!(p.actions, want, "{}", p.why);
}

#[test]
fn ip_targets_fill_existing_enis_before_a_new_one() {
    let mut node = fresh(limits("m5.xlarge"), true);
    node.enis.push(EniView {
        bound: 12,
        ..EniView::attached(7, EniRole::Secondary)
    });
    node.enis.push(EniView {
        bound: 13,
        ..EniView::attached(9, EniRole::Secondary)
    });
    let p = plan(&ips(5, None), &node);
    let want = vec![
        Action::PlanIps { eni: 7, count: 2 },
        Action::PlanIps { eni: 9, count: 1 },
        Action::PlanEni { ips: 2 },
    ];
    assert_eq!(p.actions, want, "{}", p.why);
    assert_eq!(
        p.why,
        "WARM_IP_TARGET=5, MINIMUM_IP_TARGET=unset; 25 addresses (25 bound, 0 warm, 0 pending, 0 cooling): 5 short: 2 more on ENI 7, 1 more on ENI 9, a new ENI with 2"
    );
}

#[test]
fn a_new_eni_gets_at_most_an_enis_worth_and_the_rest_follows() {
    let t = ips(20, Some(40));
    let mut node = fresh(limits("m5.xlarge"), true);
    let p = plan(&t, &node);
    assert_eq!(p.actions, vec![Action::PlanEni { ips: 14 }], "{}", p.why);
    assert!(p.why.ends_with("26 more once the new ENI is attached"), "{}", p.why);
    converge(&t, &mut node);
    assert_eq!(per_eni(&node), vec![12, 14, 14]);
}

// ---- custom networking, the trunk's slot, MAX_ENI, limits ----

#[test]
fn custom_networking_puts_no_pods_on_the_primary() {
    // (max ENIs − 1) × (IPs per ENI − 1): m5.large, 3 ENIs of 10 → 2 × 9 = 18.
    let t = ips(1000, None);
    let mut node = fresh(limits("m5.large"), true);
    assert_eq!(node.capacity(&t), 18);
    let p = converge(&t, &mut node);
    assert_eq!(node.stats().total(), 18, "{}", p.why);
    assert_eq!(node.enis[0].used(), 0, "the primary carries nothing");
    assert_eq!(node.enis.len(), 3);
    let blocked = Blocked::EniLimit {
        max_enis: 3,
        reserved_for_trunk: false,
    };
    assert_eq!(p.blocked, Some(blocked), "{}", p.why);

    // Without custom networking the primary carries pods too: 3 × 9.
    let mut plain = fresh(limits("m5.large"), false);
    assert_eq!(plain.capacity(&t), 27);
    converge(&t, &mut plain);
    assert_eq!(per_eni(&plain), vec![9, 9, 9]);
}

#[test]
fn custom_networking_ignores_addresses_reported_on_the_primary() {
    let mut node = fresh(limits("m5.large"), true);
    node.enis[0].warm = 9;
    let p = plan(&Targets::default(), &node);
    assert_eq!(p.actions, vec![Action::PlanEni { ips: 9 }], "{}", p.why);
}

#[test]
fn pod_eni_keeps_a_slot_for_the_trunk() {
    // hasRoomForEni: with ENABLE_POD_ENI on a type with trunking and no trunk yet, one slot stays free.
    let t = ips(1000, None);
    let mut node = Node {
        pod_eni: true,
        ..fresh(limits("m5.large"), true)
    };
    assert_eq!(node.capacity(&t), 9);
    let p = converge(&t, &mut node);
    assert_eq!((node.stats().total(), node.enis.len()), (9, 2), "{}", p.why);
    let blocked = Blocked::EniLimit {
        max_enis: 3,
        reserved_for_trunk: true,
    };
    assert_eq!(p.blocked, Some(blocked));
    assert!(p.why.contains("one slot kept for the trunk ENI"), "{}", p.why);

    // Once the trunk exists it takes that slot: still no room, nothing reserved.
    node.enis.push(EniView::attached(50, EniRole::Trunk));
    let p = converge(&t, &mut node);
    let blocked = Blocked::EniLimit {
        max_enis: 3,
        reserved_for_trunk: false,
    };
    assert_eq!(p.blocked, Some(blocked), "{}", p.why);
    assert_eq!(node.stats().total(), 9, "the trunk carries no pod addresses");

    // A type without trunking keeps no slot (no trunk can be attached to it).
    let mut t3 = Node {
        pod_eni: true,
        ..fresh(limits("t3.medium"), true)
    };
    converge(&t, &mut t3);
    assert_eq!(per_eni(&t3), vec![5, 5]);
}

#[test]
fn the_trunk_is_never_detached_nor_given_addresses() {
    let mut node = Node {
        pod_eni: true,
        ..fresh(limits("m5.xlarge"), true)
    };
    node.enis.push(EniView::attached(3, EniRole::Trunk));
    node.enis.push(EniView {
        warm: 14,
        ..EniView::attached(4, EniRole::Secondary)
    });
    node.enis.push(EniView {
        warm: 14,
        ..EniView::attached(5, EniRole::Secondary)
    });
    let p = plan(&ips(1, None), &node);
    assert_eq!(
        p.actions,
        vec![Action::DetachEni { eni: 5 }, Action::DrainIps { eni: 4, count: 13 }],
        "{}",
        p.why
    );
}

#[test]
fn max_eni_caps_the_enis() {
    // README, MAX_ENI: the lesser of MAX_ENI and the instance's limit; unset or 0 is the instance's.
    let m5_xlarge = limits("m5.xlarge"); // 4 ENIs of 15
    for (max_eni, enis, total) in [
        (Some(2), 2, 14),
        (Some(3), 3, 28),
        (Some(0), 4, 42),
        (Some(9), 4, 42),
        (None, 4, 42),
    ] {
        let t = Targets {
            max_eni,
            ..ips(1000, None)
        };
        let mut node = fresh(m5_xlarge, true);
        let p = converge(&t, &mut node);
        assert_eq!(
            (node.enis.len(), node.stats().total()),
            (enis, total),
            "MAX_ENI={max_eni:?}: {}",
            p.why
        );
        let max_enis = u32::try_from(enis).unwrap_or(0);
        let blocked = Blocked::EniLimit {
            max_enis,
            reserved_for_trunk: false,
        };
        assert_eq!(p.blocked, Some(blocked), "{}", p.why);
    }
}

#[test]
fn max_eni_below_the_enis_attached_adds_none() {
    let mut node = fresh(limits("m5.xlarge"), true);
    for eni in [3, 4] {
        node.enis.push(EniView {
            bound: 14,
            ..EniView::attached(eni, EniRole::Secondary)
        });
    }
    let t = Targets {
        max_eni: Some(2),
        ..Targets::default()
    };
    let p = plan(&t, &node);
    assert!(p.is_idle(), "{}", p.why);
    assert!(
        matches!(p.blocked, Some(Blocked::EniLimit { max_enis: 2, .. })),
        "{}",
        p.why
    );
}

#[test]
fn max_pods_stops_growth() {
    // isDatastorePoolTooLow: once the pool holds max pods addresses it is not too low.
    let t = ips(5, None);
    let mut node = Node {
        max_pods: Some(10),
        ..fresh(limits("m5.xlarge"), true)
    };
    run_pods(&t, &mut node, 10);
    let p = converge(&t, &mut node);
    assert_eq!(node.stats().total(), 10);
    assert_eq!(p.blocked, Some(Blocked::MaxPods { max_pods: 10 }), "{}", p.why);
    assert!(p.why.contains("max pods reached (10)"), "{}", p.why);
}

#[test]
fn one_address_per_eni_has_no_pod_addresses() {
    let limits = InstanceLimits {
        max_enis: 2,
        ipv4_per_eni: 1,
        branch_enis: 0,
        trunking: false,
    };
    let p = plan(&Targets::default(), &fresh(limits, false));
    assert!(p.is_idle());
    assert_eq!(p.blocked, Some(Blocked::NoPodAddresses), "{}", p.why);
}

// ---- pending work ----

#[test]
fn never_plans_twice_while_ec2_works() {
    let t = targets(Some(2), None, None);
    let mut node = fresh(limits("m5.xlarge"), true);
    let first = plan(&t, &node);
    assert_eq!(first.actions, vec![Action::PlanEni { ips: 14 }], "{}", first.why);
    apply(&mut node, &first);
    // EC2 has not answered: the planned ENI's addresses count, and no second ENI while it is pending.
    let second = plan(&t, &node);
    assert!(second.is_idle(), "{}", second.why);
    assert_eq!(second.blocked, Some(Blocked::EniPending { eni: 1 }), "{}", second.why);
    assert!(second.why.contains("waiting for ENI 1"), "{}", second.why);
    complete(&mut node);
    let third = plan(&t, &node);
    assert_eq!(third.actions, vec![Action::PlanEni { ips: 14 }], "{}", third.why);
}

#[test]
fn pending_addresses_count_toward_the_targets() {
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView::planned(4, 5));
    assert!(
        plan(&ips(5, None), &node).is_idle(),
        "pending ENI's addresses are available"
    );
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 2,
        pending: 3,
        ..EniView::attached(4, EniRole::Secondary)
    });
    assert!(
        plan(&ips(3, Some(5)), &node).is_idle(),
        "pending addresses are available and in total"
    );
}

#[test]
fn a_pending_eni_does_not_stop_filling_attached_ones() {
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 5,
        ..EniView::attached(4, EniRole::Secondary)
    });
    node.enis.push(EniView::planned(6, 3));
    let p = plan(&ips(10, None), &node);
    assert_eq!(p.actions, vec![Action::PlanIps { eni: 4, count: 4 }], "{}", p.why);
    assert_eq!(p.blocked, Some(Blocked::EniPending { eni: 6 }), "{}", p.why);
}

#[test]
fn draining_addresses_are_neither_available_nor_drained_again() {
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 1,
        warm: 2,
        draining: 4,
        ..EniView::attached(4, EniRole::Secondary)
    });
    assert!(plan(&ips(2, None), &node).is_idle());
    // They still hold their slots until EC2 has unassigned them.
    node.enis[1].warm = 0;
    node.enis[1].bound = 5;
    let p = plan(&ips(2, None), &node);
    assert_eq!(p.actions, vec![Action::PlanEni { ips: 2 }], "{}", p.why);
}

#[test]
fn detaching_enis_hold_their_slot_and_count_for_nothing() {
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 9,
        ..EniView::attached(4, EniRole::Secondary)
    });
    node.enis.push(EniView {
        warm: 9,
        state: EniState::Detaching,
        ..EniView::attached(5, EniRole::Secondary)
    });
    let p = plan(&ips(2, None), &node);
    assert!(p.is_idle());
    assert!(matches!(p.blocked, Some(Blocked::EniLimit { .. })), "{}", p.why);
}

// ---- cooling ----

#[test]
fn cooling_addresses_are_not_available() {
    // A deliberate difference from ipamd (available = total − assigned): a cooling address cannot
    // serve a pod before its cooldown ends.
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 1,
        cooling: 3,
        ..EniView::attached(4, EniRole::Secondary)
    });
    let p = plan(&ips(2, None), &node);
    assert_eq!(p.actions, vec![Action::PlanIps { eni: 4, count: 2 }], "{}", p.why);
}

#[test]
fn cooling_addresses_count_in_the_total() {
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        cooling: 5,
        ..EniView::attached(4, EniRole::Secondary)
    });
    assert!(plan(&targets(None, None, Some(5)), &node).is_idle());
}

#[test]
fn an_eni_with_cooling_addresses_is_not_detached() {
    // getDeletableENI: "cannot be deleted because has IPs in cooling".
    let mut node = fresh(limits("m5.xlarge"), true);
    node.enis.push(EniView {
        bound: 3,
        warm: 1,
        ..EniView::attached(4, EniRole::Secondary)
    });
    node.enis.push(EniView {
        cooling: 1,
        warm: 4,
        ..EniView::attached(5, EniRole::Secondary)
    });
    let p = plan(&ips(1, None), &node);
    assert_eq!(p.actions, vec![Action::DrainIps { eni: 5, count: 4 }], "{}", p.why);
    // Under WARM_ENI_TARGET neither: 37 available, 28 would do, but the idle-looking ENIs cool.
    node.enis[1].warm = 11;
    node.enis[2].warm = 13;
    node.enis.push(EniView {
        warm: 13,
        cooling: 1,
        ..EniView::attached(6, EniRole::Secondary)
    });
    let p = plan(&Targets::default(), &node);
    assert!(p.is_idle(), "{}", p.why);
}

// ---- shrinking ----

#[test]
fn excess_warm_addresses_are_drained() {
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 3,
        warm: 6,
        ..EniView::attached(4, EniRole::Secondary)
    });
    let p = plan(&ips(2, None), &node);
    assert_eq!(p.actions, vec![Action::DrainIps { eni: 4, count: 4 }], "{}", p.why);
    assert!(p.why.ends_with("4 over: drain 4 from ENI 4"), "{}", p.why);
}

#[test]
fn draining_never_goes_below_the_minimum() {
    // datastoreTargetState: over = min(available − WARM_IP_TARGET, total − MINIMUM_IP_TARGET).
    let mut node = fresh(limits("m5.xlarge"), true);
    node.enis.push(EniView {
        bound: 3,
        warm: 9,
        ..EniView::attached(4, EniRole::Secondary)
    });
    let p = plan(&ips(2, Some(10)), &node);
    assert_eq!(p.actions, vec![Action::DrainIps { eni: 4, count: 2 }], "{}", p.why);
    assert!(plan(&ips(2, Some(12)), &node).is_idle());
}

#[test]
fn an_idle_eni_whose_addresses_are_all_excess_is_detached() {
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 3,
        warm: 2,
        ..EniView::attached(4, EniRole::Secondary)
    });
    node.enis.push(EniView {
        warm: 5,
        ..EniView::attached(5, EniRole::Secondary)
    });
    let t = ips(2, None);
    let p = plan(&t, &node);
    assert_eq!(p.actions, vec![Action::DetachEni { eni: 5 }], "{}", p.why);
    converge(&t, &mut node);
    assert_eq!(per_eni(&node), vec![5]);
}

#[test]
fn an_idle_eni_needed_for_the_targets_stays() {
    // isRequiredForWarmIPTarget / isRequiredForMinimumIPTarget.
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 9,
        ..EniView::attached(4, EniRole::Secondary)
    });
    node.enis.push(EniView {
        warm: 2,
        ..EniView::attached(5, EniRole::Secondary)
    });
    assert!(plan(&ips(2, None), &node).is_idle());
    node.enis[2].warm = 4;
    let p = plan(&ips(2, None), &node);
    assert_eq!(p.actions, vec![Action::DrainIps { eni: 5, count: 2 }], "{}", p.why);
    let p = plan(&ips(1, Some(13)), &node);
    assert!(p.is_idle(), "the minimum needs it: {}", p.why);
}

#[test]
fn an_empty_eni_goes_once_the_targets_are_met() {
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 3,
        warm: 2,
        ..EniView::attached(4, EniRole::Secondary)
    });
    node.enis.push(EniView::attached(5, EniRole::Secondary));
    let p = plan(&ips(2, None), &node);
    assert_eq!(p.actions, vec![Action::DetachEni { eni: 5 }], "{}", p.why);
}

#[test]
fn the_primary_eni_is_never_detached() {
    let mut node = fresh(limits("m5.large"), false);
    node.enis[0].warm = 9;
    node.enis.push(EniView {
        warm: 9,
        ..EniView::attached(4, EniRole::Secondary)
    });
    let p = plan(&ips(1, None), &node);
    let want = vec![Action::DetachEni { eni: 4 }, Action::DrainIps { eni: 0, count: 8 }];
    assert_eq!(p.actions, want, "{}", p.why);
}

#[test]
fn an_eni_with_pods_is_never_detached() {
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 1,
        warm: 8,
        ..EniView::attached(4, EniRole::Secondary)
    });
    let p = plan(&ips(1, None), &node);
    assert_eq!(p.actions, vec![Action::DrainIps { eni: 4, count: 7 }], "{}", p.why);
}

#[test]
fn a_young_eni_is_not_detached_yet() {
    // getDeletableENI: "too young" (minENILifeTime).
    let mut node = fresh(limits("m5.large"), true);
    node.enis.push(EniView {
        bound: 3,
        warm: 2,
        ..EniView::attached(4, EniRole::Secondary)
    });
    node.enis.push(EniView {
        warm: 5,
        young: true,
        ..EniView::attached(5, EniRole::Secondary)
    });
    let p = plan(&ips(2, None), &node);
    assert_eq!(p.actions, vec![Action::DrainIps { eni: 5, count: 5 }], "{}", p.why);
}

#[test]
fn drains_take_enis_with_the_fewest_pods_first() {
    let mut node = fresh(limits("m5.xlarge"), true);
    for (eni, bound, warm) in [(4, 5, 6), (5, 1, 6), (6, 5, 6)] {
        node.enis.push(EniView {
            bound,
            warm,
            ..EniView::attached(eni, EniRole::Secondary)
        });
    }
    let p = plan(&ips(3, None), &node);
    let want = vec![
        Action::DrainIps { eni: 5, count: 6 },
        Action::DrainIps { eni: 6, count: 6 },
        Action::DrainIps { eni: 4, count: 3 },
    ];
    assert_eq!(p.actions, want, "{}", p.why);
}

#[test]
fn warm_eni_target_detaches_an_eni_too_many_and_never_drains() {
    // shouldRemoveExtraENIs: available ≥ (WARM_ENI_TARGET + 1) × addresses per ENI; newest ENI first.
    let mut node = fresh(limits("m5.xlarge"), true);
    for (eni, bound, warm) in [(4, 1, 13), (5, 0, 14), (6, 0, 14)] {
        node.enis.push(EniView {
            bound,
            warm,
            ..EniView::attached(eni, EniRole::Secondary)
        });
    }
    let p = plan(&Targets::default(), &node);
    assert_eq!(p.actions, vec![Action::DetachEni { eni: 6 }], "{}", p.why);
    // 27 available < 28: nothing, and no address is ever drained under WARM_ENI_TARGET.
    node.enis.pop();
    assert!(plan(&Targets::default(), &node).is_idle());
    // WARM_ENI_TARGET=0 keeps an ENI rather than leave nothing available (ipamd would flap).
    let zero = targets(Some(0), None, None);
    node.enis[1].bound = 14;
    node.enis[1].warm = 0;
    assert!(plan(&zero, &node).is_idle(), "{}", plan(&zero, &node).why);
}

#[test]
fn released_pods_shrink_the_pool_back() {
    let t = ips(2, Some(4));
    let mut node = fresh(limits("m5.large"), true);
    run_pods(&t, &mut node, 16);
    assert_eq!(per_eni(&node), vec![9, 9]);
    release(&mut node, 14);
    // Cooling: nothing may go yet, and no address is added either.
    let p = plan(&t, &node);
    assert!(p.is_idle(), "{}", p.why);
    cool(&mut node);
    converge(&t, &mut node);
    let s = node.stats();
    assert_eq!((s.bound, s.total()), (2, 4));
    assert_eq!(node.enis.len(), 2, "the emptied ENI is detached");
}

#[test]
fn ties_are_broken_by_handle_whatever_the_order() {
    let mut node = fresh(limits("m5.xlarge"), true);
    for eni in [9, 3, 7] {
        node.enis.push(EniView {
            bound: 10,
            ..EniView::attached(eni, EniRole::Secondary)
        });
    }
    let p = plan(&ips(6, None), &node);
    let want = vec![
        Action::PlanIps { eni: 3, count: 4 },
        Action::PlanIps { eni: 7, count: 2 },
    ];
    assert_eq!(p.actions, want, "{}", p.why);
    check_plan(&ips(6, None), &node, &p);
}

// ---- properties ----

fn arb_limits() -> impl Strategy<Value = InstanceLimits> {
    (1u8..=6, 1u16..=12, any::<bool>()).prop_map(|(max_enis, ipv4_per_eni, trunking)| InstanceLimits {
        max_enis: if trunking { max_enis.max(2) } else { max_enis },
        ipv4_per_eni,
        branch_enis: if trunking { 4 } else { 0 },
        trunking,
    })
}

fn arb_targets() -> impl Strategy<Value = Targets> {
    use proptest::option::of;
    (of(0u32..4), of(0u32..25), of(0u32..60), of(0u32..8)).prop_map(|(warm_eni, warm_ip, minimum_ip, max_eni)| {
        Targets {
            warm_eni,
            warm_ip,
            minimum_ip,
            max_eni,
        }
    })
}

/// An ENI's slots as states: 0 empty, 1 bound, 2 warm, 3 cooling, 4 pending, 5 draining.
fn fill(view: EniView, slots: &[u8]) -> EniView {
    let count = |s| u16::try_from(slots.iter().filter(|&&x| x == s).count()).unwrap_or(0);
    match view.state {
        EniState::Planned => EniView {
            pending: u16::try_from(slots.iter().filter(|&&x| x != 0).count()).unwrap_or(0),
            ..view
        },
        EniState::Detaching => view,
        EniState::Attached => EniView {
            bound: count(1),
            warm: count(2),
            cooling: count(3),
            pending: count(4),
            draining: count(5),
            ..view
        },
    }
}

fn arb_node() -> impl Strategy<Value = Node> {
    (
        arb_limits(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0u32..80),
        0u8..3,
    )
        .prop_flat_map(|(limits, custom_networking, pod_eni, max_pods, trunk)| {
            let per_eni = usize::from(limits.pod_ips_per_eni());
            let slots = proptest::collection::vec(0u8..6, per_eni);
            let eni = (0u8..3, any::<bool>(), slots.clone());
            let secondaries = proptest::collection::vec(eni, 0..=usize::from(limits.max_enis));
            (
                Just((limits, custom_networking, pod_eni, max_pods, trunk)),
                slots,
                secondaries,
            )
        })
        .prop_map(
            |((limits, custom_networking, pod_eni, max_pods, trunk), primary, secondaries)| {
                let primary_view = EniView::attached(0, EniRole::Primary);
                let mut enis = vec![if custom_networking {
                    primary_view
                } else {
                    fill(primary_view, &primary)
                }];
                for (i, (state, young, slots)) in secondaries.into_iter().enumerate() {
                    let state = [EniState::Planned, EniState::Attached, EniState::Detaching][usize::from(state % 3)];
                    let eni = 10 + 7 * u64::try_from(i).unwrap_or(0);
                    let view = EniView {
                        state,
                        young: young && state == EniState::Attached,
                        ..EniView::attached(eni, EniRole::Secondary)
                    };
                    enis.push(fill(view, &slots));
                }
                if limits.trunking && pod_eni && trunk > 0 {
                    let state = if trunk == 1 {
                        EniState::Planned
                    } else {
                        EniState::Attached
                    };
                    enis.push(EniView {
                        state,
                        ..EniView::attached(5, EniRole::Trunk)
                    });
                }
                Node {
                    limits,
                    custom_networking,
                    pod_eni,
                    max_pods,
                    enis,
                }
            },
        )
}

/// Pods come and go, cooldowns end, the planner works, EC2 finishes.
#[derive(Debug, Clone, Copy)]
enum Step {
    Bind(u32),
    Release(u32),
    Cool,
    Plan,
    Complete,
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        (1u32..12).prop_map(Step::Bind),
        (1u32..12).prop_map(Step::Release),
        Just(Step::Cool),
        Just(Step::Plan),
        Just(Step::Plan),
        Just(Step::Complete),
    ];
    proptest::collection::vec(step, 0..40)
}

/// After convergence: nothing left to do means the targets are met, or something says why not.
fn check_converged(targets: &Targets, node: &Node, p: &Plan) {
    match p.blocked {
        None => assert_eq!(short(targets, node), 0, "idle while short: {}", p.why),
        Some(Blocked::EniLimit { .. }) => {
            assert!(short(targets, node) > 0, "{}", p.why);
            let per_eni = u32::from(node.limits.pod_ips_per_eni());
            for e in node.enis.iter().filter(|e| node.carries_pods(e)) {
                assert_eq!(e.used(), per_eni, "ENI limit while ENI {} has room: {}", e.eni, p.why);
            }
        }
        Some(Blocked::MaxPods { max_pods }) => assert!(node.stats().total() >= max_pods, "{}", p.why),
        Some(Blocked::NoPodAddresses) => assert_eq!(node.limits.pod_ips_per_eni(), 0),
        Some(Blocked::EniPending { .. }) => panic!("still pending after EC2 finished: {}", p.why),
    }
    assert_eq!(over(targets, node), 0, "idle while over: {}", p.why);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, max_shrink_iters: 4_000, ..ProptestConfig::default() })]

    /// From any node: every plan respects the limits and the targets (checked in `converge`), and
    /// plan → carry out → plan reaches a plan that asks for nothing.
    #[test]
    fn plans_stay_in_bounds_and_converge(targets in arb_targets(), node in arb_node()) {
        let mut node = node;
        let p = converge(&targets, &mut node);
        check_converged(&targets, &node, &p);
    }

    /// Through random pod churn, cooldowns and partial EC2 progress, every plan stays in bounds;
    /// once the churn stops the pool converges.
    #[test]
    fn churn_keeps_plans_in_bounds(targets in arb_targets(), node in arb_node(), steps in arb_steps()) {
        let mut node = node;
        for step in steps {
            match step {
                Step::Bind(n) => {
                    bind(&mut node, n);
                }
                Step::Release(n) => {
                    release(&mut node, n);
                }
                Step::Cool => cool(&mut node),
                Step::Plan => {
                    let p = plan(&targets, &node);
                    check_plan(&targets, &node, &p);
                    apply(&mut node, &p);
                }
                Step::Complete => complete(&mut node),
            }
        }
        complete(&mut node);
        cool(&mut node);
        let p = converge(&targets, &mut node);
        check_converged(&targets, &node, &p);
    }
}
