//! `Stats`: address counts per subnet config, computed from the state. The counts add up:
//! `total_usable = eni_primary + pending + warm + bound + draining + cooling + quarantined + free`.

use ipam_core::command::SubnetConfigSpec;
use ipam_core::state::CoolingTarget;
use ipam_core::state::EniKind;
use ipam_core::state::Slot;
use ipam_core::state::State;
use ipam_proto::ipam::v1 as pb;

/// The counts of one subnet config's subnet.
pub fn subnet_stats(state: &State, config: &SubnetConfigSpec) -> pb::SubnetStats {
    let mut stats = pb::SubnetStats {
        subnet_config: config.name.clone(),
        subnet_id: config.subnet_id.clone(),
        subnet_cidr: config.cidr.to_string(),
        availability_zone: config.az.clone(),
        ..pb::SubnetStats::default()
    };
    let Some(subnet) = state.subnets.get(&config.subnet_id) else {
        return stats;
    };
    stats.total_usable = subnet.alloc.usable();
    stats.quarantined = subnet.alloc.quarantined().len() as u64;
    stats.free = subnet.alloc.available();
    for node in state.nodes.values() {
        for eni in node.enis.values().filter(|e| e.subnet_id == config.subnet_id) {
            // A branch ENI's primary address is its pod's address: one of its slots.
            if !matches!(eni.kind, EniKind::Branch { .. }) {
                stats.eni_primary += 1;
            }
            for slot in eni.slots.values() {
                match slot {
                    Slot::Pending => stats.pending += 1,
                    Slot::Warm { .. } => stats.warm += 1,
                    Slot::Bound { .. } => stats.bound += 1,
                    Slot::Draining => stats.draining += 1,
                    Slot::Cooling { .. } => stats.cooling += 1,
                }
            }
        }
    }
    // Addresses whose ENI left while they cooled cool on in the subnet itself.
    stats.cooling += state
        .cooling
        .iter()
        .filter(
            |(_, target)| matches!(target, CoolingTarget::Subnet { subnet_id, .. } if *subnet_id == config.subnet_id),
        )
        .count() as u64;
    stats
}

/// `Stats`' answer: one entry per subnet config, by name.
pub fn stats(state: &State) -> pb::StatsResponse {
    pb::StatsResponse {
        subnets: state
            .subnet_configs
            .values()
            .map(|config| subnet_stats(state, config))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use ipam_core::CommandBody;
    use ipam_core::Reply;
    use ipam_core::command::EniRequest;
    use ipam_core::command::LeaseSelector;
    use ipam_core::command::ReleaseReason;
    use ipam_core::limits::InstanceLimits;
    use ipam_core::testing::Harness;
    use ipam_core::testing::node_spec;
    use ipam_core::testing::pod;
    use ipam_core::testing::subnet_config;

    use super::*;

    const NODE: &str = "node-a";
    const AZ: &str = "us-west-2a";

    fn sum(s: &pb::SubnetStats) -> u64 {
        s.eni_primary + s.pending + s.warm + s.bound + s.draining + s.cooling + s.quarantined + s.free
    }

    #[test]
    fn counts_add_up_through_a_life_cycle() {
        let mut h = Harness::new();
        let ok = |r: ipam_core::Result<Reply>| r.unwrap_or_else(|e| panic!("{e}"));
        h.subnet(
            "100.64.0.0/16",
            subnet_config(AZ, "subnet-0a1b2c3d", "100.64.1.0/28", AZ),
        );
        let empty = stats(&h.state);
        assert_eq!(empty.subnets.len(), 1);
        assert_eq!(empty.subnets[0].total_usable, 11);
        assert_eq!(empty.subnets[0].free, 11);

        let limits = InstanceLimits {
            max_enis: 3,
            ipv4_per_eni: 10,
            branch_enis: 0,
            trunking: false,
        };
        let agent = h.register(node_spec(NODE, "i-0123456789abcdef0", AZ, AZ, limits));
        let Reply::EniPlanned(plan) = ok(h.agent(
            NODE,
            Some("plan"),
            CommandBody::PlanEni {
                agent: agent.clone(),
                request: EniRequest::Secondary { ips: 4 },
            },
        )) else {
            panic!("no plan")
        };
        let s = &stats(&h.state).subnets[0];
        assert_eq!((s.eni_primary, s.pending, s.free), (1, 4, 6));
        assert_eq!(sum(s), s.total_usable);

        ok(h.agent(
            NODE,
            Some("att"),
            CommandBody::ReportEniAttached {
                agent: agent.clone(),
                eni: plan.eni,
                eni_id: "eni-0123456789abcdef0".to_owned(),
                mac: "0a:1b:2c:3d:4e:5f".to_owned(),
            },
        ));
        let (owner, meta) = pod(1, &[]);
        let Reply::Bound(lease) = ok(h.agent(
            NODE,
            Some("bind"),
            CommandBody::Bind {
                agent: agent.clone(),
                owner,
                pod: meta,
            },
        )) else {
            panic!("no lease")
        };
        let (owner, meta) = pod(2, &[]);
        ok(h.agent(
            NODE,
            Some("bind-2"),
            CommandBody::Bind {
                agent: agent.clone(),
                owner,
                pod: meta,
            },
        ));
        ok(h.agent(
            NODE,
            Some("rel"),
            CommandBody::Release {
                agent: agent.clone(),
                lease: LeaseSelector::Id(lease.id),
                reason: ReleaseReason::CniDel,
            },
        ));
        ok(h.agent(
            NODE,
            Some("drain"),
            CommandBody::DrainIps {
                agent,
                eni: plan.eni,
                count: 1,
            },
        ));
        let s = &stats(&h.state).subnets[0];
        assert_eq!((s.eni_primary, s.warm, s.bound, s.cooling, s.draining), (1, 1, 1, 1, 1));
        assert_eq!(sum(s), s.total_usable);
    }
}
