//! ADD: lease an address from the agent, plumb the pod (main mode), answer the result.
//!
//! ```text
//!   agent Add ──▶ main:      plumb ──ok──▶ result: interfaces [host veth, ifname, lease record],
//!       │                      │             ips [{ip/32, gateway, interface}], routes, dns
//!       │                      └─err─▶ agent Del(lease) (rollback) ──▶ error 3 or 102
//!       └──────▶ IPAM only: result: ips [{ip/subnet prefix, subnet gateway}], routes, dns
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipam_proto::agent::v1 as api;

use super::Context;
use super::Plumber;
use super::agent_error;
use super::attachment;
use super::pod_ref;
use crate::agent_client::AgentClient;
use crate::config::DEFAULT_MTU;
use crate::config::Mode;
use crate::plumbing::Plumbed;
use crate::plumbing::PodLink;
use crate::spec::AttachmentEnv;
use crate::spec::CniError;
use crate::spec::ErrorCode;
use crate::spec::Interface;
use crate::spec::IpConfig;
use crate::spec::LeaseRecord;
use crate::spec::Route;
use crate::spec::SuccessResult;
use crate::spec::valid_ifname;

/// The agent's answer, checked.
#[derive(Debug)]
struct Lease {
    id: u64,
    ip: Ipv4Addr,
    prefix_length: u8,
    gateway: Ipv4Addr,
    host_veth: String,
    mtu: u32,
    routes: Vec<Route>,
}

pub(crate) async fn run(ctx: &Context<'_>, plumber: &impl Plumber) -> Result<Vec<u8>, CniError> {
    let env = ctx.env.attachment(true)?;
    let pod = pod_ref(&env, true)?;
    // A chained ADD must carry the previous result forward; read it before leasing anything.
    let prev = match &ctx.conf.prev_result {
        Some(value) if ctx.conf.mode == Mode::Main => SuccessResult::from_value(value).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                "prevResult is not a CNI result; fix the plugin before ipam-eks in the chain",
            )
            .with_details(e)
        })?,
        _ => SuccessResult::default(),
    };
    let mut agent = ctx.agent().await.map_err(|e| agent_error("ADD", &e))?;
    let netns = env.netns.clone().unwrap_or_default();
    let reply = agent
        .add(api::AddRequest {
            attachment: Some(attachment(&env)),
            netns_path: netns.clone(),
            pod: Some(pod.clone()),
            cni_version: ctx.conf.cni_version.as_str().to_owned(),
            network_name: ctx.conf.name.clone(),
        })
        .await
        .map_err(|e| agent_error("ADD", &e))?;
    ctx.log.debug(&format!("agent Add answered {reply:?}"));
    let lease = match checked(&reply, ctx.conf.mode, ctx.conf.plugin.mtu) {
        Ok(lease) => lease,
        Err(problem) => {
            // Lease id 0 would release whatever the attachment holds: leave it to the runtime's DEL.
            let undone = if reply.lease_id == 0 {
                "nothing was released".to_owned()
            } else {
                rollback(ctx, &mut agent, &env, &pod, reply.lease_id, &reply.ip).await.1
            };
            return Err(CniError::new(
                ErrorCode::AgentFailed,
                format!("ADD: the node agent answered an unusable lease ({problem}); {undone}; see the agent's logs"),
            ));
        }
    };
    let result =
        match ctx.conf.mode {
            Mode::IpamOnly => ipam_result(ctx, &lease, &reply.subnet_cidr),
            Mode::Main => {
                let link = PodLink {
                    netns: PathBuf::from(&netns),
                    ifname: env.ifname.clone(),
                    host_veth: lease.host_veth.clone(),
                    ip: lease.ip,
                    gateway: lease.gateway,
                    mtu: lease.mtu,
                };
                match plumber.plumb(&link).await {
                    Ok(plumbed) => main_result(ctx, prev, &env, &reply, &lease, &plumbed),
                    Err(failure) if failure.interface_exists => {
                        // A repeated ADD (the agent answered the lease the attachment already
                        // holds): the pod is plumbed and uses it. Releasing it would hand its
                        // address to another pod.
                        return Err(CniError::new(
                            ErrorCode::PlumbingFailed,
                            format!(
                                "ADD: {} already exists in {netns} (an ADD repeated without DEL?); lease {} is kept",
                                env.ifname, lease.id
                            ),
                        )
                        .with_details(failure.message));
                    }
                    Err(failure) => {
                        let (released, undone) = rollback(ctx, &mut agent, &env, &pod, lease.id, &reply.ip).await;
                        return Err(if failure.netns_missing && released {
                        CniError::new(
                            ErrorCode::UnknownContainer,
                            format!(
                                "ADD: the pod's network namespace {netns} does not exist (the pod is gone); {undone}"
                            ),
                        )
                    } else {
                        CniError::new(
                            ErrorCode::PlumbingFailed,
                            format!("ADD: plumbing {} in {netns} failed; {undone}; see the plugin's log", env.ifname),
                        )
                    }
                    .with_details(failure.message));
                    }
                }
            }
        };
    ctx.log.info(&format!(
        "ADD {}/{} {} lease {} ip {}",
        pod.namespace, pod.name, env.ifname, lease.id, lease.ip
    ));
    Ok(result.to_bytes(ctx.conf.cni_version))
}

/// Releases a lease whose ADD cannot complete; whether it was released, and a sentence saying so.
async fn rollback(
    ctx: &Context<'_>,
    agent: &mut AgentClient,
    env: &AttachmentEnv,
    pod: &api::PodRef,
    lease_id: u64,
    ip: &str,
) -> (bool, String) {
    let request = api::DelRequest {
        attachment: Some(attachment(env)),
        lease_id,
        pod: Some(pod.clone()),
        ip: ip.to_owned(),
    };
    match agent.del(request).await {
        Ok(_) => (true, format!("lease {lease_id} was released")),
        Err(error) => {
            ctx.log.error(&format!("rolling back lease {lease_id}: {error}"));
            (
                false,
                format!("releasing lease {lease_id} failed too ({error}); the runtime's DEL or GC releases it"),
            )
        }
    }
}

fn checked(reply: &api::AddResponse, mode: Mode, mtu: Option<u32>) -> Result<Lease, String> {
    if reply.lease_id == 0 {
        return Err("lease id 0".to_owned());
    }
    let ip: Ipv4Addr = reply
        .ip
        .parse()
        .map_err(|_| format!("ip {:?} is not an IPv4 address", reply.ip))?;
    let gateway: Ipv4Addr = reply
        .gateway
        .parse()
        .map_err(|_| format!("gateway {:?} is not an IPv4 address", reply.gateway))?;
    let prefix_length = match reply.prefix_length {
        0 => 32,
        p @ 1..=32 => u8::try_from(p).unwrap_or(32),
        p => return Err(format!("prefix length {p}")),
    };
    if mode == Mode::Main && reply.branch.is_some() {
        // Security groups for pods (issue [F]) need a VLAN link on the trunk and its own table;
        // plumbing such a pod as a plain veth pod would leave it without connectivity.
        return Err("a branch ENI (security groups for pods), which this plugin does not plumb yet".to_owned());
    }
    if mode == Mode::Main && !valid_ifname(&reply.host_veth_name) {
        return Err(format!("host veth name {:?}", reply.host_veth_name));
    }
    let routes = reply
        .routes
        .iter()
        .map(|r| Route {
            dst: r.dst.clone(),
            gw: (!r.gw.is_empty()).then(|| r.gw.clone()),
            ..Route::default()
        })
        .collect();
    Ok(Lease {
        id: reply.lease_id,
        ip,
        prefix_length,
        gateway,
        host_veth: reply.host_veth_name.clone(),
        mtu: mtu.or((reply.mtu != 0).then_some(reply.mtu)).unwrap_or(DEFAULT_MTU),
        routes,
    })
}

/// The abbreviated result of a delegated IPAM plugin: no interfaces, no `interface` index.
///
/// The main plugin (bridge, ptp) configures the address with its prefix and routes via the
/// gateway, which must be on-link: so the address carries the subnet's prefix and the gateway is
/// the subnet's first address (the VPC router's, as host-local's default), not the link-local
/// gateway of main mode. Routes keep a next hop only inside the subnet; others use the gateway.
fn ipam_result(ctx: &Context<'_>, lease: &Lease, subnet_cidr: &str) -> SuccessResult {
    let subnet = parse_cidr(subnet_cidr).filter(|&(network, prefix)| contains(network, prefix, lease.ip));
    let (prefix, gateway) = match subnet {
        Some((network, prefix)) => {
            let first = Ipv4Addr::from(u32::from(network).saturating_add(1));
            (prefix, (prefix <= 30 && first != lease.ip).then_some(first))
        }
        None => {
            ctx.log.warn(&format!(
                "the agent named no subnet holding {} ({subnet_cidr:?}); answering {}/{} via {}, which bridge \
                 and ptp cannot route",
                lease.ip, lease.ip, lease.prefix_length, lease.gateway
            ));
            (lease.prefix_length, Some(lease.gateway))
        }
    };
    let routes = lease
        .routes
        .iter()
        .map(|route| Route {
            gw: route.gw.clone().filter(|gw| match (subnet, gw.parse::<Ipv4Addr>()) {
                (Some((network, prefix)), Ok(gw)) => contains(network, prefix, gw),
                (None, _) => true,
                (Some(_), Err(_)) => false,
            }),
            ..route.clone()
        })
        .collect();
    SuccessResult {
        interfaces: Vec::new(),
        ips: vec![IpConfig {
            address: format!("{}/{prefix}", lease.ip),
            gateway: gateway.map(|g| g.to_string()),
            interface: None,
        }],
        routes,
        dns: ctx.conf.dns.clone(),
    }
}

/// An IPv4 CIDR's network address and prefix length.
fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (network, prefix) = cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((network.parse().ok()?, prefix))
}

/// Whether `ip` is in `network/prefix`.
fn contains(network: Ipv4Addr, prefix: u8, ip: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(network) & mask == u32::from(ip) & mask
}

/// The main plugin's result: the previous result (if chained) plus the pod's interfaces, address,
/// routes and the lease record DEL needs.
fn main_result(
    ctx: &Context<'_>,
    mut result: SuccessResult,
    env: &AttachmentEnv,
    reply: &api::AddResponse,
    lease: &Lease,
    plumbed: &Plumbed,
) -> SuccessResult {
    let netns = env.netns.clone().unwrap_or_default();
    result.interfaces.push(Interface {
        name: plumbed.host.name.clone(),
        mac: Some(plumbed.host.mac.clone()).filter(|m| !m.is_empty()),
        mtu: Some(lease.mtu),
        ..Interface::default()
    });
    let container_index = u32::try_from(result.interfaces.len()).unwrap_or(u32::MAX);
    result.interfaces.push(Interface {
        name: plumbed.container.name.clone(),
        mac: Some(plumbed.container.mac.clone()).filter(|m| !m.is_empty()),
        mtu: Some(lease.mtu),
        sandbox: Some(
            plumbed
                .container
                .sandbox
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or(netns),
        ),
        ..Interface::default()
    });
    let record = LeaseRecord {
        lease_id: lease.id,
        route_table: reply.route_table_id,
        eni_id: reply.eni_id.clone(),
        vlan_id: reply.branch.as_ref().map(|b| b.vlan_id).unwrap_or_default(),
        mtu: lease.mtu,
    };
    result.interfaces.push(record.to_interface(&env.ifname));
    result.ips.push(IpConfig {
        address: format!("{}/32", lease.ip),
        gateway: Some(lease.gateway.to_string()),
        interface: Some(container_index),
    });
    result.routes.extend(lease.routes.iter().cloned());
    if !ctx.conf.dns.is_empty() {
        result.dns = ctx.conf.dns.clone();
    }
    result
}
