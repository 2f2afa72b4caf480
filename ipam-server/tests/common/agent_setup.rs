//! A node as an agent brings it up over gRPC: registered, with one attached secondary ENI whose
//! addresses are warm. For the tests that need pods to bind.

use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;

/// What the node looks like.
pub struct NodeSetup<'a> {
    /// The node name.
    pub node: &'a str,
    /// Its EC2 instance.
    pub instance_id: &'a str,
    /// Its AZ, which is also the name of its ENIConfig (subnet config).
    pub az: &'a str,
    /// The addresses of its ENI.
    pub ips: u32,
    /// EC2's id of the ENI.
    pub eni_id: &'a str,
    /// EC2's MAC of the ENI.
    pub mac: &'a str,
}

/// Registers `setup.node` (an m5.xlarge: 4 ENIs of 15 addresses) and attaches one planned ENI;
/// returns the node's epoch and the ENI's handle.
pub async fn register_with_eni(agent: &mut AgentServiceClient<Channel>, setup: &NodeSetup<'_>) -> (u64, u64) {
    let epoch = agent
        .register_node(pb::RegisterNodeRequest {
            node: setup.node.to_owned(),
            request_id: format!("register-{}", setup.node),
            instance_id: setup.instance_id.to_owned(),
            instance_type: "m5.xlarge".to_owned(),
            availability_zone: setup.az.to_owned(),
            limits: Some(pb::NodeLimits {
                max_enis: 4,
                ipv4_per_eni: 15,
                branch_enis: 0,
                trunking: false,
            }),
            labels: Default::default(),
            subnet_config: setup.az.to_owned(),
            pod_eni_enabled: false,
            primary_ip: "10.0.1.10".to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("register {}: {e}", setup.node))
        .into_inner()
        .epoch;
    let plan = agent
        .plan_eni(pb::PlanEniRequest {
            node: setup.node.to_owned(),
            epoch,
            request_id: format!("plan-{}", setup.node),
            kind: pb::EniKind::Secondary.into(),
            ip_count: setup.ips,
        })
        .await
        .unwrap_or_else(|e| panic!("plan ENI: {e}"))
        .into_inner();
    agent
        .report_eni_attached(pb::ReportEniAttachedRequest {
            node: setup.node.to_owned(),
            epoch,
            request_id: format!("attached-{}", setup.node),
            eni_ref: plan.eni_ref,
            eni_id: setup.eni_id.to_owned(),
            mac: setup.mac.to_owned(),
            attachment_id: "eni-attach-0123456789abcdef0".to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("report attached: {e}"));
    (epoch, plan.eni_ref)
}
