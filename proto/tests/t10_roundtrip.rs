//! The generated code of both packages encodes and decodes with prost.

use ipam_proto::agent::v1 as agent;
use ipam_proto::ipam::v1 as ipam;
use prost::Message;

#[test]
fn ipam_bind_response_roundtrips() {
    let reply = ipam::BindResponse {
        lease: Some(ipam::Lease {
            lease_id: 812,
            ip: "100.64.3.48".to_owned(),
            node: "ip-10-0-1-12.eu-west-1.compute.internal".to_owned(),
            eni_ref: 77,
            eni_id: "eni-0a1b2c3d4e5f".to_owned(),
            vlan_id: 7,
            security_group_ids: vec!["sg-0123".to_owned(), "sg-0456".to_owned()],
            owner: Some(ipam::Owner {
                pod: Some(ipam::PodRef {
                    namespace: "shop".to_owned(),
                    name: "cart-7d9f".to_owned(),
                    uid: "5f0c3e9e-1111-2222-3333-444455556666".to_owned(),
                }),
                attachment: Some(ipam::Attachment {
                    container_id: "c0ffee".to_owned(),
                    ifname: "eth0".to_owned(),
                }),
                service_account: "cart".to_owned(),
            }),
            bound_at_unix_ms: 1_700_000_000_123,
            state: ipam::LeaseState::Bound.into(),
            cooling_until_unix_ms: 0,
            subnet_id: "subnet-0abc".to_owned(),
        }),
        subnet_cidr: "100.64.0.0/19".to_owned(),
        gateway: "100.64.0.1".to_owned(),
        device_index: 0,
        eni_mac: "0a:1b:2c:3d:4e:5f".to_owned(),
        trunk_eni_id: "eni-0trunk".to_owned(),
        cooldown_ms: 30_000,
    };

    let decoded = ipam::BindResponse::decode(reply.encode_to_vec().as_slice()).expect("decodes");

    assert_eq!(decoded, reply);
    let lease = decoded.lease.expect("lease present");
    assert_eq!(lease.state(), ipam::LeaseState::Bound);
}

#[test]
fn agent_add_response_roundtrips() {
    let reply = agent::AddResponse {
        lease_id: 812,
        ip: "100.64.3.48".to_owned(),
        prefix_length: 32,
        gateway: "169.254.1.1".to_owned(),
        routes: vec![agent::Route {
            dst: "0.0.0.0/0".to_owned(),
            gw: "169.254.1.1".to_owned(),
        }],
        mtu: 9001,
        host_veth_name: "eni3f2a9c1b7d0".to_owned(),
        route_table_id: 107,
        subnet_cidr: "100.64.0.0/19".to_owned(),
        eni_id: "eni-0a1b2c3d4e5f".to_owned(),
        security_group_ids: vec!["sg-0123".to_owned()],
        branch: Some(agent::BranchEni {
            eni_id: "eni-0a1b2c3d4e5f".to_owned(),
            mac: "0a:1b:2c:3d:4e:5f".to_owned(),
            vlan_id: 7,
            trunk_link: "eth1".to_owned(),
            trunk_eni_id: "eni-0trunk".to_owned(),
            vlan_link: "vlan.eth.7".to_owned(),
            subnet_gateway: "100.64.0.1".to_owned(),
        }),
    };

    let decoded = agent::AddResponse::decode(reply.encode_to_vec().as_slice()).expect("decodes");

    assert_eq!(decoded, reply);
}

#[test]
fn file_descriptor_set_names_both_packages() {
    let set = prost_types::FileDescriptorSet::decode(ipam_proto::FILE_DESCRIPTOR_SET).expect("decodes");
    let packages: Vec<&str> = set.file.iter().map(|f| f.package()).collect();

    assert!(packages.contains(&"ipam.v1"), "{packages:?}");
    assert!(packages.contains(&"agent.v1"), "{packages:?}");
}
