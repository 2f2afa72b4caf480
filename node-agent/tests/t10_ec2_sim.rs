//! The EC2 simulator against the EC2 rules the agent relies on: the life of an ENI, every limit and refusal with
//! EC2's error code, ClientToken idempotency, token-bucket throttling, latency and injected faults. Time is paused
//! (tokio's test clock), so throttling and latency are exact and instant.

use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipam_core::limits::InstanceLimits;
use ipam_node_agent::ec2::CreateEni;
use ipam_node_agent::ec2::DESCRIPTION_PREFIX;
use ipam_node_agent::ec2::Ec2;
use ipam_node_agent::ec2::Ec2Error;
use ipam_node_agent::ec2::Ec2ErrorKind;
use ipam_node_agent::ec2::EniAttachment;
use ipam_node_agent::ec2::EniAttribute;
use ipam_node_agent::ec2::EniFilter;
use ipam_node_agent::ec2::InstanceTypeInfo;
use ipam_node_agent::ec2::InterfaceType;
use ipam_node_agent::ec2::NetworkInterface;
use ipam_node_agent::ec2::Tag;
use ipam_node_agent::ec2::sim::BucketConfig;
use ipam_node_agent::ec2::sim::FaultRate;
use ipam_node_agent::ec2::sim::Latency;
use ipam_node_agent::ec2::sim::OpStats;
use ipam_node_agent::ec2::sim::Operation;
use ipam_node_agent::ec2::sim::SimConfig;
use ipam_node_agent::ec2::sim::SimEc2;
use ipam_node_agent::ec2::sim::SimEc2Builder;
use ipam_node_agent::ec2::sim::SimSetupError;
use ipam_node_agent::ec2::sim::ThrottleConfig;
use ipam_node_agent::ec2::tags;
use tokio::time::Instant;

const AZ_A: &str = "us-west-2a";
const AZ_B: &str = "us-west-2b";
/// 10.0.0.0/24 in AZ_A: the nodes' primary ENIs.
const NODE_SUBNET: &str = "subnet-0000000000000000a";
/// 100.64.0.0/24 in AZ_A: pod ENIs (custom networking).
const POD_SUBNET: &str = "subnet-0000000000000000b";
/// 100.64.1.0/24 in AZ_B.
const OTHER_AZ_SUBNET: &str = "subnet-0000000000000000c";
/// An m5.large in AZ_A: 3 ENIs, 10 addresses per ENI, trunking.
const NODE: &str = "i-0123456789abcdef0";
/// A t3.nano in AZ_A: 2 ENIs, 2 addresses per ENI, no trunking.
const SMALL_NODE: &str = "i-0123456789abcdef1";
/// Free addresses of a /24: 256 less the 5 AWS reserves.
const FREE_IN_A_24: u32 = 251;

fn pod_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, n)
}

fn sim_with(config: SimConfig) -> SimEc2 {
    SimEc2::builder()
        .config(config)
        .subnet(NODE_SUBNET, "10.0.0.0/24", AZ_A)
        .subnet(POD_SUBNET, "100.64.0.0/24", AZ_A)
        .subnet(OTHER_AZ_SUBNET, "100.64.1.0/24", AZ_B)
        .instance(NODE, "m5.large", NODE_SUBNET, Ipv4Addr::new(10, 0, 0, 10))
        .instance(SMALL_NODE, "t3.nano", NODE_SUBNET, Ipv4Addr::new(10, 0, 0, 11))
        .build()
        .unwrap_or_else(|e| panic!("simulator setup: {e}"))
}

fn sim() -> SimEc2 {
    sim_with(SimConfig::default())
}

fn unthrottled() -> SimEc2 {
    sim_with(SimConfig {
        throttle: None,
        ..SimConfig::default()
    })
}

/// A create as the agent makes it: explicit addresses in the pod subnet, tagged, the intent token as ClientToken.
fn request(token: &str, primary_ip: Ipv4Addr, secondary_ips: &[Ipv4Addr]) -> CreateEni {
    CreateEni {
        subnet_id: POD_SUBNET.to_owned(),
        description: format!("{DESCRIPTION_PREFIX}{token}"),
        security_groups: vec!["sg-0aaaaaaaaaaaaaaa1".to_owned()],
        primary_ip,
        secondary_ips: secondary_ips.to_vec(),
        interface_type: InterfaceType::Interface,
        tags: vec![
            Tag::new(tags::CLUSTER, "test"),
            Tag::new(tags::NODE, "node-1"),
            Tag::new(tags::INTENT, token),
        ],
        client_token: token.to_owned(),
    }
}

#[track_caller]
fn ok<T>(result: Result<T, Ec2Error>) -> T {
    result.unwrap_or_else(|e| panic!("refused: {e}"))
}

/// Asserts that the call was refused with EC2 error `code`.
#[track_caller]
fn refused<T: Debug>(result: Result<T, Ec2Error>, code: &str) -> Ec2Error {
    match result {
        Ok(answer) => panic!("expected {code}, got {answer:?}"),
        Err(e) => {
            assert_eq!(e.code, code, "{e}");
            e
        }
    }
}

async fn create(sim: &SimEc2, token: &str, primary_ip: Ipv4Addr, secondary_ips: &[Ipv4Addr]) -> NetworkInterface {
    ok(sim
        .create_network_interface(&request(token, primary_ip, secondary_ips))
        .await)
}

async fn find(sim: &SimEc2, filter: EniFilter) -> Vec<NetworkInterface> {
    ok(sim.describe_network_interfaces(&filter).await)
}

async fn describe_one(sim: &SimEc2, eni_id: &str) -> NetworkInterface {
    let mut found = ok(sim
        .describe_network_interfaces(&EniFilter {
            eni_ids: vec![eni_id.to_owned()],
            ..EniFilter::default()
        })
        .await);
    assert_eq!(found.len(), 1);
    found.remove(0)
}

fn free_ips(sim: &SimEc2, subnet_id: &str) -> u32 {
    sim.subnet(subnet_id)
        .unwrap_or_else(|| panic!("no subnet {subnet_id}"))
        .available_ips
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn ids(enis: &[NetworkInterface]) -> Vec<&str> {
    enis.iter().map(|e| e.eni_id.as_str()).collect()
}

fn primary_eni(sim: &SimEc2, instance_id: &str) -> NetworkInterface {
    sim.instance_enis(instance_id)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{instance_id} has no primary ENI"))
}

#[tokio::test(start_paused = true)]
async fn an_eni_goes_through_create_attach_assign_unassign_detach_delete() {
    let sim = sim();
    assert_eq!(free_ips(&sim, POD_SUBNET), FREE_IN_A_24);

    let eni = create(&sim, "intent-1", pod_ip(10), &[pod_ip(11), pod_ip(12)]).await;
    let hex = eni
        .eni_id
        .strip_prefix("eni-")
        .unwrap_or_else(|| panic!("{}", eni.eni_id));
    assert_eq!(hex.len(), 17, "{}", eni.eni_id);
    assert!(is_hex(hex), "{}", eni.eni_id);
    assert_eq!(eni.mac.len(), 17, "{}", eni.mac);
    assert_eq!(eni.mac.split(':').count(), 6, "{}", eni.mac);
    assert!(eni.mac.split(':').all(|b| b.len() == 2 && is_hex(b)), "{}", eni.mac);
    assert_eq!(eni.subnet_id, POD_SUBNET);
    assert_eq!(eni.primary_ip, pod_ip(10));
    assert_eq!(eni.secondary_ips, vec![pod_ip(11), pod_ip(12)]);
    assert_eq!(eni.security_groups, vec!["sg-0aaaaaaaaaaaaaaa1".to_owned()]);
    assert_eq!(eni.interface_type, InterfaceType::Interface);
    assert_eq!(eni.status, "available");
    assert_eq!(eni.description, format!("{DESCRIPTION_PREFIX}intent-1"));
    assert_eq!(eni.tag(tags::INTENT), Some("intent-1"));
    assert_eq!(eni.tag(tags::NODE), Some("node-1"));
    assert_eq!(eni.attachment, None);
    assert_eq!(free_ips(&sim, POD_SUBNET), FREE_IN_A_24 - 3);

    let attachment_id = ok(sim.attach_network_interface(&eni.eni_id, NODE, 1).await);
    let hex = attachment_id
        .strip_prefix("eni-attach-")
        .unwrap_or_else(|| panic!("{attachment_id}"));
    assert_eq!(hex.len(), 17, "{attachment_id}");
    assert!(is_hex(hex), "{attachment_id}");
    let attached = describe_one(&sim, &eni.eni_id).await;
    assert_eq!(attached.status, "in-use");
    assert_eq!(
        attached.attachment,
        Some(EniAttachment {
            attachment_id: attachment_id.clone(),
            instance_id: NODE.to_owned(),
            device_index: 1,
            status: "attached".to_owned(),
            delete_on_termination: false,
        })
    );
    assert_eq!(ids(&sim.instance_enis(NODE))[1], eni.eni_id);

    ok(sim
        .assign_private_ip_addresses(&eni.eni_id, &[pod_ip(13), pod_ip(14)])
        .await);
    assert_eq!(
        describe_one(&sim, &eni.eni_id).await.secondary_ips,
        vec![pod_ip(11), pod_ip(12), pod_ip(13), pod_ip(14)]
    );
    assert_eq!(free_ips(&sim, POD_SUBNET), FREE_IN_A_24 - 5);

    ok(sim.unassign_private_ip_addresses(&eni.eni_id, &[pod_ip(11)]).await);
    assert_eq!(
        describe_one(&sim, &eni.eni_id).await.secondary_ips,
        vec![pod_ip(12), pod_ip(13), pod_ip(14)]
    );
    assert_eq!(free_ips(&sim, POD_SUBNET), FREE_IN_A_24 - 4);

    ok(sim.detach_network_interface(&attachment_id, false).await);
    let detached = describe_one(&sim, &eni.eni_id).await;
    assert_eq!(detached.status, "available");
    assert_eq!(detached.attachment, None);
    assert_eq!(sim.instance_enis(NODE).len(), 1);

    ok(sim.delete_network_interface(&eni.eni_id).await);
    assert_eq!(free_ips(&sim, POD_SUBNET), FREE_IN_A_24);
    assert_eq!(sim.eni_count(), 2, "only the two primary ENIs are left");
    let gone = refused(
        sim.describe_network_interfaces(&EniFilter {
            eni_ids: vec![eni.eni_id.clone()],
            ..EniFilter::default()
        })
        .await,
        "InvalidNetworkInterfaceID.NotFound",
    );
    assert_eq!(gone.kind, Ec2ErrorKind::NotFound);
    assert_eq!(gone.operation, "DescribeNetworkInterfaces");

    let once = OpStats {
        calls: 1,
        succeeded: 1,
        throttled: 0,
        failed: 0,
    };
    for op in [
        Operation::CreateNetworkInterface,
        Operation::AttachNetworkInterface,
        Operation::AssignPrivateIpAddresses,
        Operation::UnassignPrivateIpAddresses,
        Operation::DetachNetworkInterface,
        Operation::DeleteNetworkInterface,
    ] {
        assert_eq!(sim.stats(op), once, "{op}");
    }
    assert_eq!(
        sim.stats(Operation::DescribeNetworkInterfaces),
        OpStats {
            calls: 5,
            succeeded: 4,
            throttled: 0,
            failed: 1,
        }
    );
    assert_eq!(sim.stats(Operation::DescribeSubnets), OpStats::default());
}

#[tokio::test(start_paused = true)]
async fn a_taken_device_index_is_refused() {
    let sim = sim();
    let a = create(&sim, "a", pod_ip(10), &[]).await;
    let b = create(&sim, "b", pod_ip(11), &[]).await;
    // Device index 0 is the primary ENI's.
    let e = refused(
        sim.attach_network_interface(&a.eni_id, NODE, 0).await,
        "InvalidParameterValue",
    );
    assert_eq!(e.kind, Ec2ErrorKind::InvalidRequest);
    ok(sim.attach_network_interface(&a.eni_id, NODE, 1).await);
    refused(
        sim.attach_network_interface(&b.eni_id, NODE, 1).await,
        "InvalidParameterValue",
    );
    assert_eq!(describe_one(&sim, &b.eni_id).await.attachment, None);
    ok(sim.attach_network_interface(&b.eni_id, NODE, 2).await);
    assert_eq!(sim.instance_enis(NODE).len(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_instance_takes_no_more_enis_than_its_type_allows() {
    let sim = sim();
    let a = create(&sim, "a", pod_ip(10), &[]).await;
    let b = create(&sim, "b", pod_ip(11), &[]).await;
    let c = create(&sim, "c", pod_ip(12), &[]).await;
    ok(sim.attach_network_interface(&a.eni_id, NODE, 1).await);
    ok(sim.attach_network_interface(&b.eni_id, NODE, 2).await);
    // m5.large: 3 ENIs with the primary.
    let e = refused(
        sim.attach_network_interface(&c.eni_id, NODE, 3).await,
        "AttachmentLimitExceeded",
    );
    assert_eq!(e.kind, Ec2ErrorKind::LimitExceeded);
    assert!(!e.is_retryable());
    assert_eq!(describe_one(&sim, &c.eni_id).await.status, "available");

    // t3.nano: 2 ENIs with the primary.
    ok(sim.attach_network_interface(&c.eni_id, SMALL_NODE, 1).await);
    let d = create(&sim, "d", pod_ip(13), &[]).await;
    refused(
        sim.attach_network_interface(&d.eni_id, SMALL_NODE, 2).await,
        "AttachmentLimitExceeded",
    );
    assert_eq!(sim.instance_enis(SMALL_NODE).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_attached_eni_holds_no_more_addresses_than_its_type_allows() {
    let sim = sim();
    // m5.large: 10 addresses per ENI, the primary included.
    let nine: Vec<Ipv4Addr> = (11..19).map(pod_ip).collect();
    let eni = create(&sim, "a", pod_ip(10), &nine).await;
    ok(sim.attach_network_interface(&eni.eni_id, NODE, 1).await);
    ok(sim.assign_private_ip_addresses(&eni.eni_id, &[pod_ip(19)]).await);
    let e = refused(
        sim.assign_private_ip_addresses(&eni.eni_id, &[pod_ip(20)]).await,
        "PrivateIpAddressLimitExceeded",
    );
    assert_eq!(e.kind, Ec2ErrorKind::LimitExceeded);
    assert!(!sim.snapshot().addresses().contains(&pod_ip(20)));
    assert_eq!(describe_one(&sim, &eni.eni_id).await.secondary_ips.len(), 9);
    // Several at once count together.
    ok(sim.unassign_private_ip_addresses(&eni.eni_id, &[pod_ip(11)]).await);
    refused(
        sim.assign_private_ip_addresses(&eni.eni_id, &[pod_ip(20), pod_ip(21)])
            .await,
        "PrivateIpAddressLimitExceeded",
    );
    ok(sim.assign_private_ip_addresses(&eni.eni_id, &[pod_ip(20)]).await);

    // Unattached, no instance type caps it; attaching then does.
    let eleven: Vec<Ipv4Addr> = (101..111).map(pod_ip).collect();
    let big = create(&sim, "big", pod_ip(100), &eleven).await;
    ok(sim.assign_private_ip_addresses(&big.eni_id, &[pod_ip(111)]).await);
    let e = refused(
        sim.attach_network_interface(&big.eni_id, NODE, 2).await,
        "PrivateIpAddressLimitExceeded",
    );
    assert_eq!(e.operation, "AttachNetworkInterface");
    assert_eq!(describe_one(&sim, &big.eni_id).await.attachment, None);

    // t3.nano: 2 addresses per ENI.
    let small = create(&sim, "small", pod_ip(200), &[pod_ip(201)]).await;
    ok(sim.attach_network_interface(&small.eni_id, SMALL_NODE, 1).await);
    refused(
        sim.assign_private_ip_addresses(&small.eni_id, &[pod_ip(202)]).await,
        "PrivateIpAddressLimitExceeded",
    );
}

#[tokio::test(start_paused = true)]
async fn an_address_in_use_is_refused() {
    let sim = sim();
    let a = create(&sim, "a", pod_ip(10), &[pod_ip(11)]).await;
    let e = refused(
        sim.create_network_interface(&request("b", pod_ip(11), &[])).await,
        "InvalidIPAddress.InUse",
    );
    assert_eq!(e.kind, Ec2ErrorKind::AddressInUse);
    refused(
        sim.create_network_interface(&request("b", pod_ip(12), &[pod_ip(10)]))
            .await,
        "InvalidIPAddress.InUse",
    );
    assert_eq!(sim.eni_count(), 3);
    assert!(
        !sim.snapshot().addresses().contains(&pod_ip(12)),
        "a refused create keeps nothing"
    );

    let b = create(&sim, "b", pod_ip(12), &[]).await;
    refused(
        sim.assign_private_ip_addresses(&b.eni_id, &[pod_ip(13), pod_ip(11)])
            .await,
        "InvalidIPAddress.InUse",
    );
    assert!(
        !sim.snapshot().addresses().contains(&pod_ip(13)),
        "a refused assign keeps nothing"
    );
    // A node's primary address is in use too.
    let mut on_node_subnet = request("c", Ipv4Addr::new(10, 0, 0, 10), &[]);
    on_node_subnet.subnet_id = NODE_SUBNET.to_owned();
    refused(
        sim.create_network_interface(&on_node_subnet).await,
        "InvalidIPAddress.InUse",
    );
    // The same address twice in one request.
    refused(
        sim.create_network_interface(&request("d", pod_ip(20), &[pod_ip(21), pod_ip(21)]))
            .await,
        "InvalidParameterValue",
    );
    // Assigning an address the ENI already has changes nothing: a retried assign succeeds.
    ok(sim.assign_private_ip_addresses(&a.eni_id, &[pod_ip(11)]).await);
    assert_eq!(describe_one(&sim, &a.eni_id).await.secondary_ips, vec![pod_ip(11)]);
}

#[tokio::test(start_paused = true)]
async fn addresses_outside_the_subnet_or_reserved_by_aws_are_refused() {
    let sim = sim();
    let outside = [Ipv4Addr::new(100, 64, 1, 10), Ipv4Addr::new(10, 0, 0, 50)];
    let reserved = [pod_ip(0), pod_ip(1), pod_ip(2), pod_ip(3), pod_ip(255)];
    for ip in outside.into_iter().chain(reserved) {
        let e = refused(
            sim.create_network_interface(&request("x", ip, &[])).await,
            "InvalidParameterValue",
        );
        assert_eq!(e.kind, Ec2ErrorKind::InvalidRequest, "{ip}");
        refused(
            sim.create_network_interface(&request("x", pod_ip(10), &[ip])).await,
            "InvalidParameterValue",
        );
    }
    assert_eq!(sim.eni_count(), 2);
    // The first and last addresses AWS lets you have.
    let eni = create(&sim, "x", pod_ip(4), &[pod_ip(254)]).await;
    for ip in outside.into_iter().chain(reserved) {
        refused(
            sim.assign_private_ip_addresses(&eni.eni_id, &[ip]).await,
            "InvalidParameterValue",
        );
    }
    assert_eq!(describe_one(&sim, &eni.eni_id).await.secondary_ips, vec![pod_ip(254)]);
}

#[tokio::test(start_paused = true)]
async fn an_eni_attaches_only_in_its_availability_zone() {
    let sim = sim();
    let mut other_az = request("b", Ipv4Addr::new(100, 64, 1, 10), &[]);
    other_az.subnet_id = OTHER_AZ_SUBNET.to_owned();
    let eni = ok(sim.create_network_interface(&other_az).await);
    assert_eq!(sim.eni(&eni.eni_id).map(|e| e.availability_zone), Some(AZ_B.to_owned()));
    refused(
        sim.attach_network_interface(&eni.eni_id, NODE, 1).await,
        "InvalidParameterValue",
    );
    assert_eq!(sim.instance_enis(NODE).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_attached_eni_cannot_be_attached_again_or_deleted() {
    let sim = sim();
    let eni = create(&sim, "a", pod_ip(10), &[]).await;
    ok(sim.attach_network_interface(&eni.eni_id, NODE, 1).await);
    refused(
        sim.attach_network_interface(&eni.eni_id, SMALL_NODE, 1).await,
        "InvalidNetworkInterface.InUse",
    );
    refused(
        sim.attach_network_interface(&eni.eni_id, NODE, 2).await,
        "InvalidNetworkInterface.InUse",
    );
    let e = refused(
        sim.delete_network_interface(&eni.eni_id).await,
        "InvalidNetworkInterface.InUse",
    );
    assert_eq!(e.kind, Ec2ErrorKind::InvalidRequest);
    assert_eq!(describe_one(&sim, &eni.eni_id).await.status, "in-use");
    assert_eq!(sim.instance_enis(SMALL_NODE).len(), 1);
    // The primary ENIs are attached too.
    let primary = primary_eni(&sim, NODE);
    refused(
        sim.delete_network_interface(&primary.eni_id).await,
        "InvalidNetworkInterface.InUse",
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_ids_are_not_found() {
    let sim = sim();
    let eni = create(&sim, "a", pod_ip(10), &[]).await;
    let missing = "eni-0ffffffffffffffff";
    for e in [
        refused(
            sim.attach_network_interface(missing, NODE, 1).await,
            "InvalidNetworkInterfaceID.NotFound",
        ),
        refused(
            sim.attach_network_interface(&eni.eni_id, "i-0fffffffffffffff0", 1)
                .await,
            "InvalidInstanceID.NotFound",
        ),
        refused(
            sim.detach_network_interface("eni-attach-0ffffffffffffffff", false)
                .await,
            "InvalidAttachmentID.NotFound",
        ),
        refused(
            sim.delete_network_interface(missing).await,
            "InvalidNetworkInterfaceID.NotFound",
        ),
        refused(
            sim.assign_private_ip_addresses(missing, &[pod_ip(20)]).await,
            "InvalidNetworkInterfaceID.NotFound",
        ),
        refused(
            sim.unassign_private_ip_addresses(missing, &[pod_ip(20)]).await,
            "InvalidNetworkInterfaceID.NotFound",
        ),
        refused(
            sim.modify_network_interface_attribute(missing, &EniAttribute::SourceDestCheck(false))
                .await,
            "InvalidNetworkInterfaceID.NotFound",
        ),
        refused(
            sim.describe_network_interfaces(&EniFilter {
                eni_ids: vec![eni.eni_id.clone(), missing.to_owned()],
                ..EniFilter::default()
            })
            .await,
            "InvalidNetworkInterfaceID.NotFound",
        ),
        refused(
            sim.describe_subnets(&[POD_SUBNET.to_owned(), "subnet-0ffffffffffffffff".to_owned()])
                .await,
            "InvalidSubnetID.NotFound",
        ),
    ] {
        assert_eq!(e.kind, Ec2ErrorKind::NotFound, "{e}");
    }
    let mut unknown_subnet = request("b", pod_ip(11), &[]);
    unknown_subnet.subnet_id = "subnet-0ffffffffffffffff".to_owned();
    refused(
        sim.create_network_interface(&unknown_subnet).await,
        "InvalidSubnetID.NotFound",
    );
    let e = refused(
        sim.describe_instance_types(&["m5.large".to_owned(), "m9.huge".to_owned()])
            .await,
        "InvalidInstanceType",
    );
    assert_eq!(e.kind, Ec2ErrorKind::InvalidRequest);
    assert_eq!(sim.eni_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_primary_eni_and_address_stay_and_unassign_needs_assigned_addresses() {
    let sim = sim();
    let primary = primary_eni(&sim, NODE);
    let attachment = primary
        .attachment
        .clone()
        .unwrap_or_else(|| panic!("primary ENI not attached"));
    assert_eq!(attachment.device_index, 0);
    assert!(attachment.delete_on_termination);
    refused(
        sim.detach_network_interface(&attachment.attachment_id, true).await,
        "OperationNotPermitted",
    );
    assert_eq!(sim.instance_enis(NODE).len(), 1);

    let eni = create(&sim, "a", pod_ip(10), &[pod_ip(11)]).await;
    refused(
        sim.unassign_private_ip_addresses(&eni.eni_id, &[pod_ip(10)]).await,
        "InvalidParameterValue",
    );
    refused(
        sim.unassign_private_ip_addresses(&eni.eni_id, &[pod_ip(11), pod_ip(12)])
            .await,
        "InvalidParameterValue",
    );
    refused(
        sim.unassign_private_ip_addresses(&eni.eni_id, &[]).await,
        "MissingParameter",
    );
    refused(
        sim.assign_private_ip_addresses(&eni.eni_id, &[]).await,
        "MissingParameter",
    );
    assert_eq!(describe_one(&sim, &eni.eni_id).await.secondary_ips, vec![pod_ip(11)]);
}

#[tokio::test(start_paused = true)]
async fn a_client_token_makes_create_idempotent() {
    let sim = sim();
    let first = create(&sim, "intent-7", pod_ip(10), &[pod_ip(11)]).await;
    let again = create(&sim, "intent-7", pod_ip(10), &[pod_ip(11)]).await;
    assert_eq!(again, first);
    assert_eq!(sim.eni_count(), 3, "no second ENI");
    assert_eq!(free_ips(&sim, POD_SUBNET), FREE_IN_A_24 - 2);

    // The same token with other parameters.
    let e = refused(
        sim.create_network_interface(&request("intent-7", pod_ip(10), &[pod_ip(12)]))
            .await,
        "IdempotentParameterMismatch",
    );
    assert_eq!(e.kind, Ec2ErrorKind::InvalidRequest);
    let mut other_tags = request("intent-7", pod_ip(10), &[pod_ip(11)]);
    other_tags.tags.pop();
    refused(
        sim.create_network_interface(&other_tags).await,
        "IdempotentParameterMismatch",
    );
    // Another token with the same addresses is another ENI, which cannot have them.
    refused(
        sim.create_network_interface(&request("intent-8", pod_ip(10), &[pod_ip(11)]))
            .await,
        "InvalidIPAddress.InUse",
    );

    // A replay answers with the ENI as it is now, and after its deletion with the first answer.
    let attachment_id = ok(sim.attach_network_interface(&first.eni_id, NODE, 1).await);
    let replay = create(&sim, "intent-7", pod_ip(10), &[pod_ip(11)]).await;
    assert_eq!(replay.eni_id, first.eni_id);
    assert_eq!(replay.status, "in-use");
    ok(sim.detach_network_interface(&attachment_id, false).await);
    ok(sim.delete_network_interface(&first.eni_id).await);
    let replay = create(&sim, "intent-7", pod_ip(10), &[pod_ip(11)]).await;
    assert_eq!(replay, first);
    assert_eq!(sim.eni_count(), 2, "a replay after the delete makes nothing");

    // Without a token there is no idempotency.
    let mut no_token = request("", pod_ip(20), &[]);
    let one = ok(sim.create_network_interface(&no_token).await);
    no_token.primary_ip = pod_ip(21);
    let two = ok(sim.create_network_interface(&no_token).await);
    assert_ne!(one.eni_id, two.eni_id);
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_recovered_with_the_client_token() {
    let sim = sim();
    sim.fail_next_after_effect(Operation::CreateNetworkInterface, "InternalError", 1);
    let e = refused(
        sim.create_network_interface(&request("intent-1", pod_ip(10), &[]))
            .await,
        "InternalError",
    );
    assert_eq!(e.kind, Ec2ErrorKind::Unavailable);
    assert!(e.is_retryable());
    assert_eq!(sim.eni_count(), 3, "the ENI was made before the answer was lost");
    let made = sim
        .snapshot()
        .enis
        .last()
        .map(|e| e.interface.eni_id.clone())
        .unwrap_or_default();
    let retried = create(&sim, "intent-1", pod_ip(10), &[]).await;
    assert_eq!(retried.eni_id, made);
    assert_eq!(sim.eni_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn describe_bursts_100_then_refills_20_per_second() {
    let sim = sim();
    for i in 0..100 {
        assert!(sim.describe_subnets(&[]).await.is_ok(), "call {i} of the burst");
    }
    let e = refused(sim.describe_subnets(&[]).await, "RequestLimitExceeded");
    assert_eq!(e.kind, Ec2ErrorKind::Throttled);
    assert!(e.is_retryable());
    assert_eq!(e.operation, "DescribeSubnets");
    assert_eq!(sim.tokens(Operation::DescribeSubnets), Some(0));

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(sim.tokens(Operation::DescribeSubnets), Some(20));
    for i in 0..20 {
        assert!(sim.describe_subnets(&[]).await.is_ok(), "call {i} after a second");
    }
    refused(sim.describe_subnets(&[]).await, "RequestLimitExceeded");
    tokio::time::advance(Duration::from_millis(49)).await;
    refused(sim.describe_subnets(&[]).await, "RequestLimitExceeded");
    tokio::time::advance(Duration::from_millis(1)).await;
    ok(sim.describe_subnets(&[]).await);

    // A long pause refills to the burst and no further.
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(sim.tokens(Operation::DescribeSubnets), Some(100));
    assert_eq!(
        sim.stats(Operation::DescribeSubnets),
        OpStats {
            calls: 124,
            succeeded: 121,
            throttled: 3,
            failed: 0,
        }
    );
}

#[tokio::test(start_paused = true)]
async fn every_action_has_its_own_bucket_sized_by_its_category() {
    let sim = sim();
    // Other mutating: 50. A refused call still takes its token (it reached EC2).
    for i in 0..50 {
        refused(
            sim.detach_network_interface("eni-attach-0ffffffffffffffff", false)
                .await,
            "InvalidAttachmentID.NotFound",
        );
        assert_eq!(sim.tokens(Operation::DetachNetworkInterface), Some(49 - i));
    }
    refused(
        sim.detach_network_interface("eni-attach-0ffffffffffffffff", false)
            .await,
        "RequestLimitExceeded",
    );
    // The same category, another action: its own full bucket.
    assert_eq!(sim.tokens(Operation::AttachNetworkInterface), Some(50));
    let eni = create(&sim, "a", pod_ip(10), &[]).await;
    let attachment_id = ok(sim.attach_network_interface(&eni.eni_id, NODE, 1).await);
    ok(sim
        .modify_network_interface_attribute(&eni.eni_id, &EniAttribute::SourceDestCheck(false))
        .await);
    // 5 per second: one detach token in 200 ms.
    tokio::time::advance(Duration::from_millis(200)).await;
    ok(sim.detach_network_interface(&attachment_id, false).await);
    refused(
        sim.detach_network_interface(&attachment_id, false).await,
        "RequestLimitExceeded",
    );

    // Describe: draining one action leaves the others.
    for _ in 0..100 {
        ok(sim.describe_instance_types(&["m5.large".to_owned()]).await);
    }
    refused(
        sim.describe_instance_types(&["m5.large".to_owned()]).await,
        "RequestLimitExceeded",
    );
    ok(sim.describe_subnets(&[]).await);
    assert_eq!(describe_one(&sim, &eni.eni_id).await.status, "available");

    // Resource-intensive: 100, 5 per second, each action apart.
    for _ in 0..100 {
        refused(
            sim.delete_network_interface("eni-0ffffffffffffffff").await,
            "InvalidNetworkInterfaceID.NotFound",
        );
    }
    refused(sim.delete_network_interface(&eni.eni_id).await, "RequestLimitExceeded");
    assert_eq!(
        sim.eni(&eni.eni_id).map(|e| e.interface.status),
        Some("available".to_owned())
    );
    ok(sim.assign_private_ip_addresses(&eni.eni_id, &[pod_ip(11)]).await);
    tokio::time::advance(Duration::from_millis(200)).await;
    ok(sim.delete_network_interface(&eni.eni_id).await);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_create_changes_nothing() {
    let sim = sim();
    for i in 0..100u8 {
        create(&sim, &format!("intent-{i}"), pod_ip(10 + i), &[]).await;
    }
    assert_eq!(sim.eni_count(), 102);
    let late = request("intent-late", pod_ip(200), &[pod_ip(201)]);
    refused(sim.create_network_interface(&late).await, "RequestLimitExceeded");
    assert_eq!(sim.eni_count(), 102);
    assert!(!sim.snapshot().addresses().contains(&pod_ip(200)));
    assert_eq!(free_ips(&sim, POD_SUBNET), FREE_IN_A_24 - 100);
    tokio::time::advance(Duration::from_millis(199)).await;
    refused(sim.create_network_interface(&late).await, "RequestLimitExceeded");
    tokio::time::advance(Duration::from_millis(1)).await;
    let eni = ok(sim.create_network_interface(&late).await);
    assert_eq!(eni.secondary_ips, vec![pod_ip(201)]);
    let stats = sim.stats(Operation::CreateNetworkInterface);
    assert_eq!((stats.calls, stats.succeeded, stats.throttled), (103, 101, 2));
}

#[tokio::test(start_paused = true)]
async fn throttling_is_configurable_and_can_be_turned_off() {
    let tiny = BucketConfig {
        capacity: 2,
        refill_per_second: 1,
    };
    let sim = sim_with(SimConfig {
        throttle: Some(ThrottleConfig {
            describe: tiny,
            ..ThrottleConfig::default()
        }),
        ..SimConfig::default()
    });
    ok(sim.describe_subnets(&[]).await);
    ok(sim.describe_subnets(&[]).await);
    refused(sim.describe_subnets(&[]).await, "RequestLimitExceeded");
    tokio::time::advance(Duration::from_secs(1)).await;
    ok(sim.describe_subnets(&[]).await);
    refused(sim.describe_subnets(&[]).await, "RequestLimitExceeded");

    assert_eq!(sim.set_throttle(None), Ok(()));
    assert_eq!(sim.tokens(Operation::DescribeSubnets), None);
    for _ in 0..1_000 {
        ok(sim.describe_subnets(&[]).await);
    }
    let empty = ThrottleConfig {
        mutating: BucketConfig {
            capacity: 0,
            refill_per_second: 5,
        },
        ..ThrottleConfig::default()
    };
    assert!(matches!(
        sim.set_throttle(Some(empty)),
        Err(SimSetupError::EmptyBucket { .. })
    ));
    let unthrottled = unthrottled();
    for _ in 0..1_000 {
        ok(unthrottled.describe_subnets(&[]).await);
    }
}

/// The simulated time each of `n` describes takes.
async fn latencies(sim: &SimEc2, n: usize) -> Vec<Duration> {
    let mut taken = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        ok(sim.describe_subnets(&[]).await);
        taken.push(start.elapsed());
    }
    taken
}

#[tokio::test(start_paused = true)]
async fn latency_is_spent_in_simulated_time_with_seeded_jitter() {
    let config = |seed| SimConfig {
        seed,
        throttle: None,
        latency: Latency {
            fixed: Duration::from_millis(100),
            jitter: Duration::from_millis(50),
        },
        ..SimConfig::default()
    };
    let wall = std::time::Instant::now();
    let taken = latencies(&sim_with(config(1)), 20).await;
    for t in &taken {
        // Timers have millisecond ticks: each of the two sleeps may end up to a tick late.
        assert!(
            (Duration::from_millis(100)..=Duration::from_millis(152)).contains(t),
            "{t:?}"
        );
    }
    assert!(taken.iter().any(|t| *t != taken[0]), "no jitter: {taken:?}");
    assert_eq!(
        latencies(&sim_with(config(1)), 20).await,
        taken,
        "the same seed, the same jitter"
    );
    assert_ne!(latencies(&sim_with(config(2)), 20).await, taken);
    assert!(
        wall.elapsed() < Duration::from_secs(5),
        "paused time sleeps no real time"
    );

    // One operation's own latency; the others stay instant.
    let sim = unthrottled();
    sim.set_operation_latency(
        Operation::CreateNetworkInterface,
        Latency::fixed(Duration::from_secs(2)),
    );
    let start = Instant::now();
    create(&sim, "a", pod_ip(10), &[]).await;
    assert!(start.elapsed() >= Duration::from_secs(2), "{:?}", start.elapsed());
    let start = Instant::now();
    ok(sim.describe_subnets(&[]).await);
    assert_eq!(start.elapsed(), Duration::ZERO);
    sim.set_latency(Latency::fixed(Duration::from_millis(300)));
    let start = Instant::now();
    ok(sim.describe_subnets(&[]).await);
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn the_effect_lands_halfway_through_the_latency() {
    let sim = sim_with(SimConfig {
        latency: Latency::fixed(Duration::from_secs(1)),
        ..SimConfig::default()
    });
    let req = request("intent-1", pod_ip(10), &[]);
    // Given up before the middle: nothing happened.
    let early = tokio::time::timeout(Duration::from_millis(400), sim.create_network_interface(&req)).await;
    assert!(early.is_err());
    assert_eq!(sim.eni_count(), 2);
    // Given up after the middle: the ENI exists though the caller never heard.
    let late = tokio::time::timeout(Duration::from_millis(600), sim.create_network_interface(&req)).await;
    assert!(late.is_err());
    assert_eq!(sim.eni_count(), 3);
    assert!(sim.snapshot().addresses().contains(&pod_ip(10)));
    // The retry under the same token finds it.
    let eni = ok(sim.create_network_interface(&req).await);
    assert_eq!(sim.eni_count(), 3);
    assert_eq!(eni.primary_ip, pod_ip(10));
    assert_eq!(sim.stats(Operation::CreateNetworkInterface).calls, 3);
}

#[tokio::test(start_paused = true)]
async fn fail_next_fails_exactly_the_next_calls_of_one_operation_without_effect() {
    let sim = sim();
    sim.fail_next(Operation::CreateNetworkInterface, "InternalError", 2);
    sim.fail_next(Operation::AttachNetworkInterface, "UnauthorizedOperation", 1);
    let req = request("intent-1", pod_ip(10), &[pod_ip(11)]);
    for _ in 0..2 {
        let e = refused(sim.create_network_interface(&req).await, "InternalError");
        assert_eq!(e.kind, Ec2ErrorKind::Unavailable);
        assert_eq!(e.operation, "CreateNetworkInterface");
    }
    assert_eq!(sim.eni_count(), 2);
    assert_eq!(free_ips(&sim, POD_SUBNET), FREE_IN_A_24);
    // Other operations are untouched by Create's faults.
    ok(sim.describe_subnets(&[]).await);
    let eni = ok(sim.create_network_interface(&req).await);
    assert_eq!(
        sim.stats(Operation::CreateNetworkInterface),
        OpStats {
            calls: 3,
            succeeded: 1,
            throttled: 0,
            failed: 2,
        }
    );

    let e = refused(
        sim.attach_network_interface(&eni.eni_id, NODE, 1).await,
        "UnauthorizedOperation",
    );
    assert_eq!(e.kind, Ec2ErrorKind::Unauthorized);
    assert_eq!(describe_one(&sim, &eni.eni_id).await.attachment, None);
    ok(sim.attach_network_interface(&eni.eni_id, NODE, 1).await);

    // Cleared faults fire no more.
    sim.fail_next(Operation::DescribeSubnets, "InternalError", 5);
    refused(sim.describe_subnets(&[]).await, "InternalError");
    sim.clear_faults();
    ok(sim.describe_subnets(&[]).await);
}

/// Which of `n` describes failed.
async fn failures(sim: &SimEc2, n: usize) -> Vec<bool> {
    let mut failed = Vec::new();
    for _ in 0..n {
        failed.push(sim.describe_subnets(&[]).await.is_err());
    }
    failed
}

#[tokio::test(start_paused = true)]
async fn random_faults_follow_the_seeded_probability() {
    let rate = |probability| FaultRate {
        probability,
        code: "InternalError".to_owned(),
    };
    let seeded = |seed| {
        let mut config = SimConfig {
            seed,
            throttle: None,
            ..SimConfig::default()
        };
        config.fault_rates.insert(Operation::DescribeSubnets, rate(0.3));
        sim_with(config)
    };
    let sim = seeded(11);
    let pattern = failures(&sim, 1_000).await;
    let failed = pattern.iter().filter(|&&f| f).count();
    assert!((240..=360).contains(&failed), "{failed} of 1000 failed at p = 0.3");
    assert_eq!(sim.stats(Operation::DescribeSubnets).failed, failed as u64);
    assert_eq!(
        failures(&seeded(11), 1_000).await,
        pattern,
        "the same seed, the same faults"
    );
    assert_ne!(failures(&seeded(12), 1_000).await, pattern);
    // Other operations do not fail.
    for _ in 0..100 {
        ok(sim.describe_instance_types(&[]).await);
    }

    let always = unthrottled();
    let set = |p| always.set_fault_rate(Operation::DescribeSubnets, Some(rate(p)));
    assert!(set(1.0).is_ok());
    assert!(failures(&always, 100).await.iter().all(|&f| f));
    assert!(set(0.0).is_ok());
    assert!(failures(&always, 100).await.iter().all(|&f| !f));
    assert!(matches!(set(1.5), Err(SimSetupError::BadProbability { .. })));
    assert!(set(1.0).is_ok());
    assert!(always.set_fault_rate(Operation::DescribeSubnets, None).is_ok());
    assert!(failures(&always, 100).await.iter().all(|&f| !f));
}

#[tokio::test(start_paused = true)]
async fn describe_network_interfaces_filters_by_ids_instance_and_tags() {
    let sim = sim();
    let a = create(&sim, "a", pod_ip(10), &[]).await;
    let mut other_node = request("b", pod_ip(11), &[]);
    other_node.tags[1] = Tag::new(tags::NODE, "node-2");
    let b = ok(sim.create_network_interface(&other_node).await);
    let c = create(&sim, "c", pod_ip(12), &[]).await;
    ok(sim.attach_network_interface(&a.eni_id, NODE, 1).await);
    ok(sim.attach_network_interface(&c.eni_id, SMALL_NODE, 1).await);
    let node_primary = primary_eni(&sim, NODE);

    let by_instance = |id: &str| EniFilter {
        instance_id: Some(id.to_owned()),
        ..EniFilter::default()
    };
    let by_tags = |tags: &[(&str, &str)]| EniFilter {
        tags: tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect(),
        ..EniFilter::default()
    };

    let found = find(&sim, by_instance(NODE)).await;
    assert_eq!(ids(&found), vec![node_primary.eni_id.as_str(), a.eni_id.as_str()]);
    let found = find(&sim, by_tags(&[(tags::NODE, "node-1")])).await;
    assert_eq!(ids(&found), vec![a.eni_id.as_str(), c.eni_id.as_str()]);
    let found = find(&sim, by_tags(&[(tags::NODE, "node-1"), (tags::CLUSTER, "test")])).await;
    assert_eq!(ids(&found), vec![a.eni_id.as_str(), c.eni_id.as_str()]);
    let found = find(&sim, by_tags(&[(tags::NODE, "node-1"), (tags::INTENT, "c")])).await;
    assert_eq!(ids(&found), vec![c.eni_id.as_str()]);
    let found = find(&sim, by_tags(&[(tags::NODE, "node-3")])).await;
    assert!(found.is_empty());
    let found = find(
        &sim,
        EniFilter {
            tags: vec![Tag::new(tags::NODE, "node-1")],
            ..by_instance(NODE)
        },
    )
    .await;
    assert_eq!(ids(&found), vec![a.eni_id.as_str()]);
    let found = find(
        &sim,
        EniFilter {
            tags: vec![Tag::new(tags::NODE, "node-2")],
            ..by_instance(NODE)
        },
    )
    .await;
    assert!(found.is_empty());
    let found = find(
        &sim,
        EniFilter {
            eni_ids: vec![b.eni_id.clone(), a.eni_id.clone(), b.eni_id.clone()],
            ..EniFilter::default()
        },
    )
    .await;
    assert_eq!(ids(&found), vec![a.eni_id.as_str(), b.eni_id.as_str()]);
    let found = find(
        &sim,
        EniFilter {
            eni_ids: vec![a.eni_id.clone()],
            ..by_instance(SMALL_NODE)
        },
    )
    .await;
    assert!(found.is_empty());
    assert!(find(&sim, by_instance("i-0fffffffffffffff0")).await.is_empty());

    let e = refused(
        sim.describe_network_interfaces(&EniFilter::default()).await,
        "InvalidParameterValue",
    );
    assert_eq!(e.kind, Ec2ErrorKind::InvalidRequest);
}

#[tokio::test(start_paused = true)]
async fn describe_subnets_and_instance_types() {
    let sim = SimEc2::builder()
        .instance_type(
            "x9.tiny",
            InstanceLimits {
                max_enis: 2,
                ipv4_per_eni: 3,
                branch_enis: 0,
                trunking: false,
            },
        )
        .subnet(NODE_SUBNET, "10.0.0.0/24", AZ_A)
        .subnet(POD_SUBNET, "100.64.0.0/24", AZ_A)
        .subnet(OTHER_AZ_SUBNET, "100.64.1.0/28", AZ_B)
        .instance(NODE, "m5.large", NODE_SUBNET, Ipv4Addr::new(10, 0, 0, 10))
        .instance(SMALL_NODE, "x9.tiny", NODE_SUBNET, Ipv4Addr::new(10, 0, 0, 11))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));

    let all = ok(sim.describe_subnets(&[]).await);
    let summary: Vec<(&str, &str, &str, u32)> = all
        .iter()
        .map(|s| {
            (
                s.subnet_id.as_str(),
                s.cidr.as_str(),
                s.availability_zone.as_str(),
                s.available_ips,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (NODE_SUBNET, "10.0.0.0/24", AZ_A, FREE_IN_A_24 - 2),
            (POD_SUBNET, "100.64.0.0/24", AZ_A, FREE_IN_A_24),
            (OTHER_AZ_SUBNET, "100.64.1.0/28", AZ_B, 11),
        ]
    );
    let one = ok(sim
        .describe_subnets(&[OTHER_AZ_SUBNET.to_owned(), OTHER_AZ_SUBNET.to_owned()])
        .await);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].cidr, "100.64.1.0/28");

    let types = ok(sim
        .describe_instance_types(&["m5.large".to_owned(), "t3.nano".to_owned(), "x9.tiny".to_owned()])
        .await);
    assert_eq!(
        types,
        vec![
            InstanceTypeInfo {
                instance_type: "m5.large".to_owned(),
                max_enis: 3,
                ipv4_per_eni: 10,
                trunking: true,
            },
            InstanceTypeInfo {
                instance_type: "t3.nano".to_owned(),
                max_enis: 2,
                ipv4_per_eni: 2,
                trunking: false,
            },
            InstanceTypeInfo {
                instance_type: "x9.tiny".to_owned(),
                max_enis: 2,
                ipv4_per_eni: 3,
                trunking: false,
            },
        ]
    );
    let every = ok(sim.describe_instance_types(&[]).await);
    assert_eq!(every.len(), 76, "the built-in table's 75 and the added one");
    assert!(every.windows(2).all(|w| w[0].instance_type < w[1].instance_type));

    // The added type's limits hold: 3 addresses per ENI.
    let eni = create(&sim, "a", pod_ip(10), &[pod_ip(11), pod_ip(12)]).await;
    ok(sim.attach_network_interface(&eni.eni_id, SMALL_NODE, 1).await);
    refused(
        sim.assign_private_ip_addresses(&eni.eni_id, &[pod_ip(13)]).await,
        "PrivateIpAddressLimitExceeded",
    );
}

#[tokio::test(start_paused = true)]
async fn modify_network_interface_attribute() {
    let sim = sim();
    let eni = create(&sim, "a", pod_ip(10), &[]).await;
    let attachment_id = ok(sim.attach_network_interface(&eni.eni_id, NODE, 1).await);
    let groups = vec!["sg-0bbbbbbbbbbbbbbb2".to_owned(), "sg-0ccccccccccccccc3".to_owned()];
    ok(sim
        .modify_network_interface_attribute(&eni.eni_id, &EniAttribute::SecurityGroups(groups.clone()))
        .await);
    ok(sim
        .modify_network_interface_attribute(
            &eni.eni_id,
            &EniAttribute::DeleteOnTermination {
                attachment_id: attachment_id.clone(),
                value: true,
            },
        )
        .await);
    ok(sim
        .modify_network_interface_attribute(&eni.eni_id, &EniAttribute::SourceDestCheck(false))
        .await);
    let now = describe_one(&sim, &eni.eni_id).await;
    assert_eq!(now.security_groups, groups);
    assert_eq!(now.attachment.map(|a| a.delete_on_termination), Some(true));
    assert_eq!(sim.eni(&eni.eni_id).map(|e| e.source_dest_check), Some(false));

    let primary_attachment = primary_eni(&sim, NODE)
        .attachment
        .map(|a| a.attachment_id)
        .unwrap_or_default();
    refused(
        sim.modify_network_interface_attribute(
            &eni.eni_id,
            &EniAttribute::DeleteOnTermination {
                attachment_id: primary_attachment,
                value: false,
            },
        )
        .await,
        "InvalidAttachmentID.NotFound",
    );
    refused(
        sim.modify_network_interface_attribute(&eni.eni_id, &EniAttribute::SecurityGroups(Vec::new()))
            .await,
        "InvalidParameterValue",
    );
    let now = describe_one(&sim, &eni.eni_id).await;
    assert_eq!(now.security_groups, groups);
    assert_eq!(now.attachment.map(|a| a.delete_on_termination), Some(true));

    // Without security groups an ENI gets the VPC's default group.
    let mut no_groups = request("b", pod_ip(11), &[]);
    no_groups.security_groups.clear();
    let plain = ok(sim.create_network_interface(&no_groups).await);
    assert_eq!(plain.security_groups, vec![SimConfig::default().default_security_group]);
}

#[tokio::test(start_paused = true)]
async fn a_detach_takes_the_detach_delay_unless_forced() {
    let sim = sim_with(SimConfig {
        detach_delay: Duration::from_secs(2),
        ..SimConfig::default()
    });
    let a = create(&sim, "a", pod_ip(10), &[]).await;
    let b = create(&sim, "b", pod_ip(11), &[]).await;
    let attachment_id = ok(sim.attach_network_interface(&a.eni_id, NODE, 1).await);
    ok(sim.detach_network_interface(&attachment_id, false).await);
    let detaching = describe_one(&sim, &a.eni_id).await;
    assert_eq!(detaching.status, "in-use");
    assert_eq!(detaching.attachment.map(|x| x.status), Some("detaching".to_owned()));
    refused(
        sim.delete_network_interface(&a.eni_id).await,
        "InvalidNetworkInterface.InUse",
    );
    refused(
        sim.attach_network_interface(&b.eni_id, NODE, 1).await,
        "InvalidParameterValue",
    );
    // Detaching again is no error.
    ok(sim.detach_network_interface(&attachment_id, false).await);

    tokio::time::advance(Duration::from_millis(1999)).await;
    assert_eq!(describe_one(&sim, &a.eni_id).await.status, "in-use");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(describe_one(&sim, &a.eni_id).await.status, "available");
    refused(
        sim.detach_network_interface(&attachment_id, false).await,
        "InvalidAttachmentID.NotFound",
    );
    ok(sim.delete_network_interface(&a.eni_id).await);

    let attachment_id = ok(sim.attach_network_interface(&b.eni_id, NODE, 1).await);
    ok(sim.detach_network_interface(&attachment_id, true).await);
    assert_eq!(describe_one(&sim, &b.eni_id).await.status, "available");
    ok(sim.delete_network_interface(&b.eni_id).await);
}

#[tokio::test(start_paused = true)]
async fn terminating_an_instance_deletes_or_detaches_its_enis() {
    let sim = sim();
    let kept = create(&sim, "kept", pod_ip(10), &[]).await;
    let deleted = create(&sim, "deleted", pod_ip(11), &[pod_ip(12)]).await;
    ok(sim.attach_network_interface(&kept.eni_id, NODE, 1).await);
    let attachment_id = ok(sim.attach_network_interface(&deleted.eni_id, NODE, 2).await);
    ok(sim
        .modify_network_interface_attribute(
            &deleted.eni_id,
            &EniAttribute::DeleteOnTermination {
                attachment_id,
                value: true,
            },
        )
        .await);
    assert!(sim.terminate_instance(NODE).is_ok());
    let snapshot = sim.snapshot();
    assert!(snapshot.instances.iter().all(|i| i.instance_id != NODE));
    assert_eq!(snapshot.enis.len(), 2, "the other node's primary ENI and the kept one");
    assert_eq!(
        snapshot.eni(&kept.eni_id).map(|e| e.interface.status.as_str()),
        Some("available")
    );
    assert!(snapshot.eni(&deleted.eni_id).is_none());
    assert!(!snapshot.addresses().contains(&Ipv4Addr::new(10, 0, 0, 10)));
    assert!(!snapshot.addresses().contains(&pod_ip(12)));
    refused(
        sim.attach_network_interface(&kept.eni_id, NODE, 1).await,
        "InvalidInstanceID.NotFound",
    );
    assert!(matches!(
        sim.terminate_instance(NODE),
        Err(SimSetupError::UnknownInstance(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn the_regions_eni_quota_and_trunk_support_are_enforced() {
    let sim = sim_with(SimConfig {
        max_network_interfaces: 3,
        ..SimConfig::default()
    });
    let mut trunk = request("trunk", pod_ip(10), &[]);
    trunk.interface_type = InterfaceType::Trunk;
    let trunk = ok(sim.create_network_interface(&trunk).await);
    assert_eq!(trunk.interface_type, InterfaceType::Trunk);
    let e = refused(
        sim.create_network_interface(&request("b", pod_ip(11), &[])).await,
        "NetworkInterfaceLimitExceeded",
    );
    assert_eq!(e.kind, Ec2ErrorKind::LimitExceeded);
    // t3 has no trunking, m5 has.
    refused(
        sim.attach_network_interface(&trunk.eni_id, SMALL_NODE, 1).await,
        "UnsupportedOperation",
    );
    ok(sim.attach_network_interface(&trunk.eni_id, NODE, 1).await);
}

#[test]
fn setup_refuses_what_aws_would_not_have() {
    let base = || SimEc2::builder().subnet(POD_SUBNET, "100.64.0.0/24", AZ_A);
    let err = |b: SimEc2Builder| match b.build() {
        Ok(sim) => panic!("built {sim:?}"),
        Err(e) => e,
    };
    assert!(matches!(
        err(base().subnet(OTHER_AZ_SUBNET, "100.64.0.128/25", AZ_B)),
        SimSetupError::OverlappingSubnet { .. }
    ));
    assert!(matches!(
        err(base().subnet(OTHER_AZ_SUBNET, "100.64.1.0/29", AZ_B)),
        SimSetupError::SubnetSize { .. }
    ));
    assert!(matches!(
        err(base().subnet(OTHER_AZ_SUBNET, "100.64.1.1/24", AZ_B)),
        SimSetupError::BadCidr { .. }
    ));
    assert!(matches!(
        err(base().subnet(POD_SUBNET, "100.64.1.0/24", AZ_B)),
        SimSetupError::DuplicateSubnet(_)
    ));
    assert!(matches!(
        err(base().instance(NODE, "m5.huge", POD_SUBNET, pod_ip(10))),
        SimSetupError::UnknownInstanceType(_)
    ));
    assert!(matches!(
        err(base().instance(NODE, "m5.large", NODE_SUBNET, pod_ip(10))),
        SimSetupError::UnknownSubnet(_)
    ));
    assert!(matches!(
        err(base().instance(NODE, "m5.large", POD_SUBNET, pod_ip(1))),
        SimSetupError::BadPrimaryAddress { .. }
    ));
    assert!(matches!(
        err(base().instance(NODE, "m5.large", POD_SUBNET, pod_ip(10)).instance(
            NODE,
            "m5.large",
            POD_SUBNET,
            pod_ip(11)
        )),
        SimSetupError::DuplicateInstance(_)
    ));
    assert!(matches!(
        err(base().instance(NODE, "m5.large", POD_SUBNET, pod_ip(10)).instance(
            SMALL_NODE,
            "m5.large",
            POD_SUBNET,
            pod_ip(10)
        )),
        SimSetupError::BadPrimaryAddress { .. }
    ));
    let impossible = InstanceLimits {
        max_enis: 0,
        ipv4_per_eni: 10,
        branch_enis: 0,
        trunking: false,
    };
    assert!(matches!(
        err(base().instance_type("z1.none", impossible)),
        SimSetupError::BadLimits { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn ids_and_macs_are_deterministic_for_a_seed_and_unique() {
    let made = |seed| async move {
        let sim = sim_with(SimConfig {
            seed,
            throttle: None,
            ..SimConfig::default()
        });
        let mut out = Vec::new();
        for i in 0..50u8 {
            let eni = create(&sim, &format!("t{i}"), pod_ip(10 + i), &[]).await;
            out.push((eni.eni_id, eni.mac));
        }
        out
    };
    let one = made(5).await;
    assert_eq!(made(5).await, one);
    let other = made(6).await;
    assert_ne!(other, one);
    let mut ids: Vec<&String> = one.iter().map(|(id, _)| id).collect();
    let mut macs: Vec<&String> = one.iter().map(|(_, mac)| mac).collect();
    ids.sort();
    ids.dedup();
    macs.sort();
    macs.dedup();
    assert_eq!((ids.len(), macs.len()), (50, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_through_an_arc_never_share_an_address() {
    fn shareable<T: Send + Sync + Debug + 'static>() {}
    shareable::<SimEc2>();
    let sim = Arc::new(unthrottled());
    let as_trait: Arc<dyn Ec2> = sim.clone();

    // Sixteen callers race for one address: exactly one gets it.
    let mut racers = Vec::new();
    for i in 0..16 {
        let ec2 = Arc::clone(&as_trait);
        racers.push(tokio::spawn(async move {
            ec2.create_network_interface(&request(&format!("race-{i}"), pod_ip(50), &[]))
                .await
        }));
    }
    let mut won = 0;
    for racer in racers {
        match racer.await.unwrap_or_else(|e| panic!("{e}")) {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.code, "InvalidIPAddress.InUse", "{e}"),
        }
    }
    assert_eq!(won, 1);

    // Sixteen callers with addresses of their own all succeed, with ENIs of their own.
    let mut workers = Vec::new();
    for i in 0..16u8 {
        let ec2 = Arc::clone(&as_trait);
        workers.push(tokio::spawn(async move {
            let eni = ec2
                .create_network_interface(&request(&format!("own-{i}"), pod_ip(100 + i), &[pod_ip(150 + i)]))
                .await?;
            ec2.attach_network_interface(&eni.eni_id, NODE, 1)
                .await
                .map(|_| eni.eni_id)
        }));
    }
    let mut attached = 0;
    for worker in workers {
        match worker.await.unwrap_or_else(|e| panic!("{e}")) {
            Ok(_) => attached += 1,
            // Only one can take device index 1.
            Err(e) => assert_eq!(e.code, "InvalidParameterValue", "{e}"),
        }
    }
    assert_eq!(attached, 1);
    assert_eq!(sim.eni_count(), 2 + 1 + 16);
    assert_eq!(sim.snapshot().addresses().len(), 2 + 1 + 32);
    assert_eq!(free_ips(&sim, POD_SUBNET), FREE_IN_A_24 - 33);
    assert!(format!("{sim:?}").contains("enis: 19"), "{sim:?}");
}
