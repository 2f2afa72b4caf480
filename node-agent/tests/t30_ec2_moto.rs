//! The aws-sdk-ec2 adapter against a real EC2 API endpoint: moto's server on loopback, started by
//! each test (needs `bash scripts/install-moto.sh`; fails under CI=true without it, skips locally).
//!
//! What moto does differently from EC2, as these tests found it, is asserted where it shows.

mod moto;

use std::net::Ipv4Addr;

use ipam_node_agent::ec2::CreateEni;
use ipam_node_agent::ec2::DESCRIPTION_PREFIX;
use ipam_node_agent::ec2::Ec2;
use ipam_node_agent::ec2::Ec2ErrorKind;
use ipam_node_agent::ec2::EniAttribute;
use ipam_node_agent::ec2::EniFilter;
use ipam_node_agent::ec2::InterfaceType;
use ipam_node_agent::ec2::NetworkInterface;
use ipam_node_agent::ec2::Tag;
use ipam_node_agent::ec2::aws::AwsEc2;
use ipam_node_agent::ec2::aws::AwsEc2Config;
use ipam_node_agent::ec2::aws::StaticCredentials;
use ipam_node_agent::ec2::intents;
use ipam_node_agent::ec2::intents::Decision;
use ipam_node_agent::ec2::intents::NodeScope;
use ipam_node_agent::ec2::intents::PlannedEni;
use ipam_node_agent::ec2::intents::Resolution;
use ipam_node_agent::ec2::tags;
use moto::Moto;
use moto::World;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, last)
}

fn scope(world: &World) -> NodeScope {
    NodeScope {
        cluster: "moto-cluster".to_owned(),
        node: "node-a".to_owned(),
        instance_id: world.instance_id.clone(),
    }
}

fn request(world: &World, token: &str, primary: u8, secondaries: &[u8]) -> CreateEni {
    let mut tags = scope(world).tags();
    tags.push(Tag::new(tags::INTENT, token));
    CreateEni {
        subnet_id: world.subnet_id.clone(),
        description: format!("{DESCRIPTION_PREFIX}{token}"),
        security_groups: vec![world.security_group.clone()],
        primary_ip: ip(primary),
        secondary_ips: secondaries.iter().map(|&s| ip(s)).collect(),
        interface_type: InterfaceType::Interface,
        tags,
        client_token: token.to_owned(),
    }
}

async fn describe_one(ec2: &AwsEc2, eni_id: &str) -> NetworkInterface {
    let found = ec2
        .describe_network_interfaces(&EniFilter {
            eni_ids: vec![eni_id.to_owned()],
            ..EniFilter::default()
        })
        .await
        .unwrap_or_else(|e| panic!("describe {eni_id}: {e}"));
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap_or_else(|| unreachable!())
}

fn ids(enis: &[NetworkInterface]) -> Vec<&str> {
    let mut ids: Vec<&str> = enis.iter().map(|e| e.eni_id.as_str()).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_eni_lifecycle_with_explicit_addresses() {
    let Some(moto) = Moto::start("moto_eni_lifecycle_with_explicit_addresses") else {
        return;
    };
    let ec2 = moto.ec2().await;
    let world = moto::setup(ec2.client()).await;

    // Create with explicit addresses, tags, groups and the intent token as ClientToken.
    let create = request(&world, "intent-1", 10, &[11, 12]);
    let eni = ec2
        .create_network_interface(&create)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    assert!(eni.eni_id.starts_with("eni-"), "{eni:?}");
    assert_eq!(eni.mac.len(), 17, "{eni:?}");
    assert_eq!(eni.subnet_id, world.subnet_id);
    assert_eq!(eni.primary_ip, ip(10));
    let mut secondaries = eni.secondary_ips.clone();
    secondaries.sort_unstable();
    assert_eq!(secondaries, vec![ip(11), ip(12)]);
    assert_eq!(eni.security_groups, vec![world.security_group.clone()]);
    assert_eq!(eni.tag(tags::INTENT), Some("intent-1"));
    assert_eq!(eni.tag(tags::NODE), Some("node-a"));
    assert_eq!(eni.description, format!("{DESCRIPTION_PREFIX}intent-1"));
    assert_eq!(eni.attachment, None);

    // The same token again. EC2 answers with the first ENI; moto ignores ClientToken on
    // CreateNetworkInterface and makes a second ENI, which is why the orphan handling deletes
    // second ENIs under one token. The addresses are taken, so moto must be told other ones.
    let again = ec2.create_network_interface(&create).await;
    match again {
        Ok(second) if second.eni_id == eni.eni_id => {}
        Ok(second) => {
            eprintln!("moto ignores ClientToken: a second ENI {}", second.eni_id);
            assert_eq!(second.tag(tags::INTENT), Some("intent-1"));
            ec2.delete_network_interface(&second.eni_id)
                .await
                .unwrap_or_else(|e| panic!("delete the duplicate: {e}"));
        }
        Err(e) => panic!("the same token again: {e}"),
    }

    // Describe by id, by tags.
    assert_eq!(describe_one(&ec2, &eni.eni_id).await, eni);
    let by_tags = ec2
        .describe_network_interfaces(&scope(&world).filter())
        .await
        .unwrap_or_else(|e| panic!("describe by tags: {e}"));
    assert_eq!(ids(&by_tags), vec![eni.eni_id.as_str()]);
    let by_other_node = ec2
        .describe_network_interfaces(&EniFilter {
            tags: vec![Tag::new(tags::NODE, "node-b")],
            ..EniFilter::default()
        })
        .await
        .unwrap_or_else(|e| panic!("describe by another node's tag: {e}"));
    assert_eq!(by_other_node, vec![]);

    // Attach at device index 1; describe by instance.
    let attachment_id = ec2
        .attach_network_interface(&eni.eni_id, &world.instance_id, 1)
        .await
        .unwrap_or_else(|e| panic!("attach: {e}"));
    assert!(attachment_id.starts_with("eni-attach-"), "{attachment_id}");
    let attached = describe_one(&ec2, &eni.eni_id).await;
    let attachment = attached
        .attachment
        .clone()
        .unwrap_or_else(|| panic!("not attached: {attached:?}"));
    assert_eq!(attachment.attachment_id, attachment_id);
    assert_eq!(attachment.instance_id, world.instance_id);
    assert_eq!(attachment.device_index, 1);
    assert_eq!(attached.status, "in-use");
    let on_instance = ec2
        .describe_network_interfaces(&EniFilter {
            instance_id: Some(world.instance_id.clone()),
            ..EniFilter::default()
        })
        .await
        .unwrap_or_else(|e| panic!("describe by instance: {e}"));
    assert_eq!(on_instance.len(), 2, "the primary ENI and ours: {on_instance:?}");
    assert!(on_instance.iter().any(|e| e.eni_id == eni.eni_id));
    let on_instance_and_tags = ec2
        .describe_network_interfaces(&EniFilter {
            instance_id: Some(world.instance_id.clone()),
            tags: scope(&world).tags(),
            ..EniFilter::default()
        })
        .await
        .unwrap_or_else(|e| panic!("describe by instance and tags: {e}"));
    assert_eq!(ids(&on_instance_and_tags), vec![eni.eni_id.as_str()]);

    // Assign and unassign explicit addresses.
    ec2.assign_private_ip_addresses(&eni.eni_id, &[ip(20), ip(21)])
        .await
        .unwrap_or_else(|e| panic!("assign: {e}"));
    let mut held = describe_one(&ec2, &eni.eni_id).await.secondary_ips;
    held.sort_unstable();
    assert_eq!(held, vec![ip(11), ip(12), ip(20), ip(21)]);
    ec2.unassign_private_ip_addresses(&eni.eni_id, &[ip(11), ip(20)])
        .await
        .unwrap_or_else(|e| panic!("unassign: {e}"));
    let mut held = describe_one(&ec2, &eni.eni_id).await.secondary_ips;
    held.sort_unstable();
    assert_eq!(held, vec![ip(12), ip(21)]);

    // Attributes.
    ec2.modify_network_interface_attribute(&eni.eni_id, &EniAttribute::SourceDestCheck(false))
        .await
        .unwrap_or_else(|e| panic!("source/dest check: {e}"));
    ec2.modify_network_interface_attribute(
        &eni.eni_id,
        &EniAttribute::SecurityGroups(vec![world.security_group.clone()]),
    )
    .await
    .unwrap_or_else(|e| panic!("groups: {e}"));
    ec2.modify_network_interface_attribute(
        &eni.eni_id,
        &EniAttribute::DeleteOnTermination {
            attachment_id: attachment_id.clone(),
            value: true,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("delete on termination: {e}"));

    // Detach (force), delete; then it is gone.
    ec2.detach_network_interface(&attachment_id, true)
        .await
        .unwrap_or_else(|e| panic!("detach: {e}"));
    let detached = describe_one(&ec2, &eni.eni_id).await;
    assert_eq!(detached.attachment, None, "{detached:?}");
    ec2.delete_network_interface(&eni.eni_id)
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    let gone = ec2
        .describe_network_interfaces(&EniFilter {
            eni_ids: vec![eni.eni_id.clone()],
            ..EniFilter::default()
        })
        .await;
    let error = gone.err().unwrap_or_else(|| panic!("a deleted ENI described"));
    assert_eq!(error.kind, Ec2ErrorKind::NotFound, "{error}");
    let by_tags = ec2
        .describe_network_interfaces(&scope(&world).filter())
        .await
        .unwrap_or_else(|e| panic!("describe by tags: {e}"));
    assert_eq!(by_tags, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_describes_subnets_and_instance_types() {
    let Some(moto) = Moto::start("moto_describes_subnets_and_instance_types") else {
        return;
    };
    let ec2 = moto.ec2().await;
    let world = moto::setup(ec2.client()).await;
    let subnets = ec2
        .describe_subnets(std::slice::from_ref(&world.subnet_id))
        .await
        .unwrap_or_else(|e| panic!("describe subnets: {e}"));
    assert_eq!(subnets.len(), 1, "{subnets:?}");
    assert_eq!(subnets[0].cidr, moto::SUBNET_CIDR);
    assert_eq!(subnets[0].availability_zone, world.availability_zone);
    assert!(
        subnets[0].available_ips > 0 && subnets[0].available_ips <= 251,
        "{subnets:?}"
    );

    let types = ec2
        .describe_instance_types(&["m5.large".to_owned(), "t3.micro".to_owned()])
        .await
        .unwrap_or_else(|e| panic!("describe instance types: {e}"));
    let m5 = types
        .iter()
        .find(|t| t.instance_type == "m5.large")
        .unwrap_or_else(|| panic!("{types:?}"));
    assert_eq!((m5.max_enis, m5.ipv4_per_eni, m5.trunking), (3, 10, true));
    let t3 = types
        .iter()
        .find(|t| t.instance_type == "t3.micro")
        .unwrap_or_else(|| panic!("{types:?}"));
    assert_eq!((t3.max_enis, t3.ipv4_per_eni, t3.trunking), (2, 2, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_errors_are_classified_from_ec2s_codes() {
    let Some(moto) = Moto::start("moto_errors_are_classified_from_ec2s_codes") else {
        return;
    };
    let ec2 = moto.ec2().await;
    let world = moto::setup(ec2.client()).await;

    let unknown = ec2
        .delete_network_interface("eni-0123456789abcdef0")
        .await
        .err()
        .unwrap_or_else(|| panic!("deleted an unknown ENI"));
    assert_eq!(unknown.kind, Ec2ErrorKind::NotFound, "{unknown}");
    assert_eq!(unknown.code, "InvalidNetworkInterfaceID.NotFound");
    assert_eq!(unknown.operation, "DeleteNetworkInterface");

    let unknown_describe = ec2
        .describe_network_interfaces(&EniFilter {
            eni_ids: vec!["eni-0123456789abcdef0".to_owned()],
            ..EniFilter::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("described an unknown ENI"));
    assert_eq!(unknown_describe.kind, Ec2ErrorKind::NotFound, "{unknown_describe}");

    let mut unknown_subnet = request(&world, "intent-nowhere", 10, &[]);
    unknown_subnet.subnet_id = "subnet-0123456789abcdef0".to_owned();
    let error = ec2
        .create_network_interface(&unknown_subnet)
        .await
        .err()
        .unwrap_or_else(|| panic!("created an ENI in an unknown subnet"));
    assert_eq!(
        (error.kind, error.code.as_str()),
        (Ec2ErrorKind::NotFound, "InvalidSubnetID.NotFound")
    );

    let error = ec2
        .detach_network_interface("eni-attach-0123456789abcdef0", true)
        .await
        .err()
        .unwrap_or_else(|| panic!("detached an unknown attachment"));
    assert_eq!(error.kind, Ec2ErrorKind::NotFound, "{error}");

    let error = ec2
        .describe_instance_types(&["m9.enormous".to_owned()])
        .await
        .err()
        .unwrap_or_else(|| panic!("described an unknown instance type"));
    assert_eq!(
        (error.kind, error.code.as_str()),
        (Ec2ErrorKind::InvalidRequest, "InvalidInstanceType")
    );

    // EC2 refuses an address outside the subnet with InvalidParameterValue; moto (5.x) does not
    // check, and makes the ENI. The simulator (t10) covers EC2's refusal.
    let mut outside = request(&world, "intent-outside", 10, &[]);
    outside.primary_ip = Ipv4Addr::new(192, 168, 7, 7);
    match ec2.create_network_interface(&outside).await {
        Err(error) => assert_eq!(error.kind, Ec2ErrorKind::InvalidRequest, "{error}"),
        Ok(eni) => {
            eprintln!("moto accepted {} outside {}", outside.primary_ip, moto::SUBNET_CIDR);
            assert_eq!(eni.primary_ip, outside.primary_ip);
            ec2.delete_network_interface(&eni.eni_id)
                .await
                .unwrap_or_else(|e| panic!("delete: {e}"));
        }
    }

    let eni = ec2
        .create_network_interface(&request(&world, "intent-2", 30, &[]))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    let no_instance = ec2
        .attach_network_interface(&eni.eni_id, "i-0123456789abcdef0", 1)
        .await
        .err()
        .unwrap_or_else(|| panic!("attached to an unknown instance"));
    assert_eq!(no_instance.kind, Ec2ErrorKind::NotFound, "{no_instance}");

    let everything = ec2
        .describe_network_interfaces(&EniFilter::default())
        .await
        .err()
        .unwrap_or_else(|| panic!("described the whole account"));
    assert_eq!(everything.kind, Ec2ErrorKind::InvalidRequest, "{everything}");
}

/// Not moto: nothing listens on the port, so the request never gets an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_an_answer_is_unavailable_and_retryable() {
    let port = {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| panic!("bind: {e}"));
        listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).port()
    };
    let ec2 = AwsEc2::new(AwsEc2Config {
        region: Some(moto::REGION.to_owned()),
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        credentials: Some(StaticCredentials {
            access_key_id: "testing".to_owned(),
            secret_access_key: "testing".to_owned(),
        }),
        max_attempts: 1,
        ..AwsEc2Config::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let error = ec2
        .delete_network_interface("eni-0123456789abcdef0")
        .await
        .err()
        .unwrap_or_else(|| panic!("nothing listens, yet it answered"));
    assert_eq!(error.kind, Ec2ErrorKind::Unavailable, "{error}");
    assert!(
        ["ConnectionError", "DispatchFailure", "TimeoutError"].contains(&error.code.as_str()),
        "{error}"
    );
    assert!(error.is_retryable());
}

/// The agent creates an ENI under an intent token and dies before attaching it. A restarted agent
/// (a fresh adapter, nothing kept in memory) resumes it while the server still plans the token, and
/// deletes it once the server has dropped the token: no ENI leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_a_crash_between_create_and_attach_leaks_no_eni() {
    let Some(moto) = Moto::start("moto_a_crash_between_create_and_attach_leaks_no_eni") else {
        return;
    };
    let world = {
        let ec2 = moto.ec2().await;
        moto::setup(ec2.client()).await
    };
    let scope = scope(&world);
    let planned = |token: &str, device_index: u8| PlannedEni {
        token: token.to_owned(),
        eni_ref: format!("eni-ref-{token}"),
        device_index,
        subnet_id: world.subnet_id.clone(),
    };

    // Run 1: create under intent-a and intent-b, then crash (drop the adapter).
    let (eni_a, eni_b) = {
        let ec2 = moto.ec2().await;
        let a = ec2
            .create_network_interface(&request(&world, "intent-a", 40, &[41]))
            .await
            .unwrap_or_else(|e| panic!("create a: {e}"));
        let b = ec2
            .create_network_interface(&request(&world, "intent-b", 50, &[]))
            .await
            .unwrap_or_else(|e| panic!("create b: {e}"));
        (a.eni_id, b.eni_id)
    };

    // Restart 1: the server still plans both: both resumed at their planned indexes.
    let ec2 = moto.ec2().await;
    let outcomes = intents::reconcile(&ec2, &scope, &[planned("intent-a", 1), planned("intent-b", 2)])
        .await
        .unwrap_or_else(|e| panic!("reconcile: {e}"));
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    for outcome in &outcomes {
        assert!(
            matches!(outcome.decision, Decision::Resume { .. })
                && matches!(outcome.result, Ok(Resolution::Attached { .. })),
            "{outcome:?}"
        );
    }
    for (eni_id, index) in [(&eni_a, 1), (&eni_b, 2)] {
        let eni = describe_one(&ec2, eni_id).await;
        let attachment = eni.attachment.unwrap_or_else(|| panic!("{eni_id} not attached"));
        assert_eq!(
            (attachment.instance_id.as_str(), attachment.device_index),
            (world.instance_id.as_str(), index)
        );
    }

    // The server drops intent-b (it chose to give the ENI up); the agent detaches it and crashes
    // before deleting. Meanwhile a create under intent-c lands but its intent is dropped too.
    let attachment_b = describe_one(&ec2, &eni_b)
        .await
        .attachment
        .unwrap_or_else(|| panic!("b attached"))
        .attachment_id;
    ec2.detach_network_interface(&attachment_b, true)
        .await
        .unwrap_or_else(|e| panic!("detach b: {e}"));
    let eni_c = ec2
        .create_network_interface(&request(&world, "intent-c", 60, &[]))
        .await
        .unwrap_or_else(|e| panic!("create c: {e}"))
        .eni_id;
    drop(ec2);

    // Restart 2: the server plans only intent-a (attached, so done); b and c are leaks.
    let ec2 = moto.ec2().await;
    let outcomes = intents::reconcile(&ec2, &scope, &[planned("intent-a", 1)])
        .await
        .unwrap_or_else(|e| panic!("reconcile: {e}"));
    let mut deleted = Vec::new();
    for outcome in &outcomes {
        match (&outcome.decision, &outcome.result) {
            (Decision::Done { eni_id, .. }, Ok(Resolution::Unchanged)) => assert_eq!(eni_id, &eni_a),
            (Decision::Leaked { eni_id, .. }, Ok(Resolution::Deleted)) => deleted.push(eni_id.as_str()),
            other => panic!("{other:?}"),
        }
    }
    deleted.sort_unstable();
    let mut expected = vec![eni_b.as_str(), eni_c.as_str()];
    expected.sort_unstable();
    assert_eq!(deleted, expected);

    // No leaked ENI: by the node's tags, EC2 has only the attached one.
    let left = ec2
        .describe_network_interfaces(&scope.filter())
        .await
        .unwrap_or_else(|e| panic!("describe by tags: {e}"));
    assert_eq!(ids(&left), vec![eni_a.as_str()]);
    assert!(left.iter().all(|e| e.attachment.is_some()), "{left:?}");

    // Once more: nothing to do.
    let again = intents::reconcile(&ec2, &scope, &[planned("intent-a", 1)])
        .await
        .unwrap_or_else(|e| panic!("reconcile: {e}"));
    assert!(
        again
            .iter()
            .all(|o| matches!(o.decision, Decision::Done { .. }) && o.result == Ok(Resolution::Unchanged)),
        "{again:?}"
    );
}
