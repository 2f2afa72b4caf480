//! A pod's network, plumbed through rtnetlink the way the AWS VPC CNI does it (its
//! `cmd/routed-eni-cni-plugin/driver`: `setupVeth`, `createVethPairContext.run`,
//! `setupIPBasedContainerRouteRules`): a veth pair, a /32 in the pod, a fake gateway the pod
//! reaches through a permanent neighbour entry, and a host route back to the pod.
//!
//! ```text
//!      host namespace                           pod namespace (CNI_NETNS)
//!   ┌──────────────────────────────┐         ┌──────────────────────────────────────────┐
//!   │ eni0123456789a  (host_veth)  │  veth   │ eth0  (ifname)   ip/32                   │
//!   │   random local MAC M, up,    │◀───────▶│   169.254.1.1 dev eth0 scope link        │
//!   │   ipv6 accept_ra=0           │         │   default via 169.254.1.1 dev eth0       │
//!   │ route ip/32 dev eni… scope   │         │   neigh 169.254.1.1 lladdr M PERMANENT   │
//!   │   link (table main)          │         │                                          │
//!   └──────────────────────────────┘         └──────────────────────────────────────────┘
//! ```
//!
//! The pod's packets all go to M, the host end, which routes them; nothing answers ARP for the
//! gateway, the permanent entry makes that unnecessary. The pair is created from the host's netlink
//! socket with the pod end placed straight into the pod's namespace (`IFLA_NET_NS_FD` on the peer),
//! as the VPC CNI does with its `PeerNamespace`, so no device ever moves between namespaces.
//!
//! The host end's MAC is chosen here (random, locally administered, unused on the host) rather than
//! left to the kernel: a device created with an explicit address is one udev's
//! `MACAddressPolicy=persistent` leaves alone, so the neighbour entry in the pod stays right.
//!
//! Policy rules (512 "to pod", 1536 "from pod") and SNAT are the node agent's, not the plugin's.
//!
//! Every namespace is worked in from a [`Netns`] thread, never a tokio worker. The "host" is by
//! default the namespace of the thread that calls (the plugin's), and can be named (`*_in`), which
//! is how the privileged tests plumb pods into a host namespace of their own.

use std::io::Read;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::path::PathBuf;

use futures::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::LinkMessageBuilder;
use rtnetlink::LinkUnspec;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::InfoData;
use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::packet_route::link::InfoVeth;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::packet_route::link::LinkInfo;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::NeighbourAddress;
use rtnetlink::packet_route::neighbour::NeighbourAttribute;
use rtnetlink::packet_route::neighbour::NeighbourMessage;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteAddress;
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::route::RouteType;

use crate::netns::Netns;
use crate::netns::NetnsError;

/// The main routing table.
const MAIN_TABLE: u32 = 254;
/// Longest interface name the kernel takes (IFNAMSIZ less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Smallest MTU an IPv4 interface takes (RFC 791's 68).
const MIN_MTU: u32 = 68;
/// Largest MTU a veth takes (ETH_MAX_MTU).
const MAX_MTU: u32 = 65535;
/// How many random MACs to try before giving up on finding an unused one (the VPC CNI's
/// `MAX_MAC_GENERATION_ATTEMPTS`).
const MAC_ATTEMPTS: usize = 10;
/// The IPv6 settings of the host end, written before it comes up so it never takes a router
/// advertisement from the pod (the VPC CNI's `setHostVethV6Sysctls`).
const HOST_VETH_V6_SYSCTLS: [(&str, &str); 3] = [("accept_ra", "0"), ("accept_redirects", "1"), ("forwarding", "0")];

/// What the plumbing needs for one pod attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    /// CNI_NETNS, e.g. /var/run/netns/cni-1234 or /proc/<pid>/ns/net.
    pub netns: PathBuf,
    /// CNI_IFNAME, e.g. "eth0".
    pub ifname: String,
    /// Host side name, e.g. "eni0123456789a" (at most 15 bytes).
    pub host_veth: String,
    /// The pod's address, configured as /32.
    pub ip: Ipv4Addr,
    /// The gateway the pod routes through, 169.254.1.1.
    pub gateway: Ipv4Addr,
    /// MTU of both ends.
    pub mtu: u32,
}

/// An interface as the CNI result reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlumbedInterface {
    /// Interface name.
    pub name: String,
    /// MAC address, lower-case, colon-separated.
    pub mac: String,
    /// The namespace path of the container end; `None` for the host end.
    pub sandbox: Option<String>,
}

/// The two ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plumbed {
    /// Host end of the veth pair.
    pub host: PlumbedInterface,
    /// Container end of the veth pair.
    pub container: PlumbedInterface,
}

/// Why plumbing, unplumbing or checking failed.
#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    /// A name the kernel would refuse.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// "host veth name" or "container interface name".
        what: &'static str,
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An MTU a veth does not take.
    #[error("invalid MTU {0}: a veth takes {MIN_MTU}..={MAX_MTU}")]
    InvalidMtu(u32),
    /// A pod address or gateway that cannot be used.
    #[error("invalid {what} {ip}: {reason}")]
    InvalidAddress {
        /// "pod address" or "gateway".
        what: &'static str,
        /// The address.
        ip: Ipv4Addr,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A namespace could not be entered or worked in (see [`PlumbError::netns_missing`]).
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The pod's namespace already has an interface of that name.
    #[error("interface {ifname} already exists in {netns}")]
    IfnameTaken {
        /// The container interface name.
        ifname: String,
        /// The pod's namespace.
        netns: String,
    },
    /// A host interface has the host veth's name but is not a veth: not ours to replace.
    #[error("host interface {name} exists and is a {kind}, not a veth; not replacing it")]
    HostNameTaken {
        /// The name.
        name: String,
        /// Its link kind.
        kind: String,
    },
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done, to which link in which namespace.
        op: String,
        /// The kernel's (or the socket's) error.
        source: rtnetlink::Error,
    },
    /// A link that was just made is not there.
    #[error("{0}")]
    Vanished(String),
    /// Writing a sysctl failed.
    #[error("writing {value} to {path}: {source}")]
    Sysctl {
        /// The `/proc/sys` path.
        path: String,
        /// The value.
        value: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// No usable MAC address for the host end.
    #[error("choosing a MAC address for {host_veth}: {reason}")]
    Mac {
        /// The host veth.
        host_veth: String,
        /// Why none was found.
        reason: String,
    },
    /// CHECK found the attachment incomplete; each problem says what is missing or wrong.
    #[error("attachment {ifname} in {netns} / host {host_veth}: {}", problems.join("; "))]
    CheckFailed {
        /// The container interface name.
        ifname: String,
        /// The host veth.
        host_veth: String,
        /// The pod's namespace.
        netns: String,
        /// What is missing or wrong.
        problems: Vec<String>,
    },
    /// Plumbing failed, and removing what it had made failed too.
    #[error("{error}; removing what was made failed too: {cleanup}")]
    CleanupFailed {
        /// The first failure.
        error: Box<PlumbError>,
        /// The cleanup's failure.
        cleanup: Box<PlumbError>,
    },
}

/// The plumbing's result.
pub type Result<T, E = PlumbError> = std::result::Result<T, E>;

impl PlumbError {
    /// True when the pod's network namespace does not exist (CNI error code 3 territory).
    pub fn netns_missing(&self) -> bool {
        match self {
            PlumbError::Netns(NetnsError::Missing(_)) => true,
            PlumbError::CleanupFailed { error, .. } => error.netns_missing(),
            _ => false,
        }
    }
}

/// Creates the veth pair and configures both ends; on any failure removes everything it made.
/// The host is the calling thread's network namespace.
pub async fn plumb(link: &PodLink) -> Result<Plumbed> {
    plumb_in(None, link).await
}

/// [`plumb`] with the host namespace named: `None` is the calling thread's, `Some(path)` a
/// namespace file (tests plumb into a host namespace of their own).
pub async fn plumb_in(host_netns: Option<&Path>, link: &PodLink) -> Result<Plumbed> {
    validate(link)?;
    let pod = Side::open(Some(&link.netns)).await?;
    let host = Side::open(host_netns).await?;

    if pod.link_named(&link.ifname).await?.is_some() {
        return Err(PlumbError::IfnameTaken {
            ifname: link.ifname.clone(),
            netns: link.netns.display().to_string(),
        });
    }
    // A pod that died without DEL leaves its host end (the pair dies with its namespace only when
    // the namespace does); replace it, as the VPC CNI's setupVeth does.
    if let Some(stale) = host.link_named(&link.host_veth).await? {
        if !stale.is_veth() {
            return Err(PlumbError::HostNameTaken {
                name: link.host_veth.clone(),
                kind: stale.kind_name(),
            });
        }
        host.del_link(&stale).await?;
    }
    let mac = host.unused_mac(&link.host_veth).await?;
    create_pair(&host, &pod, link, mac).await?;

    match configure(&host, &pod, link).await {
        Ok(plumbed) => Ok(plumbed),
        Err(error) => match remove(&host, Some(&pod), &link.ifname, &link.host_veth, Some(link.ip), true).await {
            Ok(()) => Err(error),
            Err(cleanup) => Err(PlumbError::CleanupFailed {
                error: Box::new(error),
                cleanup: Box::new(cleanup),
            }),
        },
    }
}

/// Removes what `plumb` made (host veth and its host route; the container end goes with the pair).
/// Idempotent: absent things are fine; a missing netns is fine.
pub async fn unplumb(netns: Option<&Path>, ifname: &str, host_veth: &str, ip: Option<Ipv4Addr>) -> Result<()> {
    unplumb_in(None, netns, ifname, host_veth, ip).await
}

/// [`unplumb`] with the host namespace named, as in [`plumb_in`].
pub async fn unplumb_in(
    host_netns: Option<&Path>,
    netns: Option<&Path>,
    ifname: &str,
    host_veth: &str,
    ip: Option<Ipv4Addr>,
) -> Result<()> {
    let host = Side::open(host_netns).await?;
    let pod = match netns {
        None => None,
        Some(path) => match Side::open(Some(path)).await {
            Ok(pod) => Some(pod),
            // Gone, or a leftover file whose namespace is gone: the pod end went with it.
            Err(PlumbError::Netns(NetnsError::Missing(_) | NetnsError::NotANamespace { .. })) => None,
            Err(e) => return Err(e),
        },
    };
    // The host end is never taken by name here: the name is a hash of the pod's namespace/name,
    // so a late DEL of an old sandbox would find the veth of a newer pod of the same name. The
    // pod end (in the old sandbox's namespace) takes its host end with it; a sandbox whose
    // namespace is gone took both already.
    remove(&host, pod.as_ref(), ifname, host_veth, ip, false).await
}

/// Verifies the container interface has the address, the routes and the gateway neighbour, and the
/// host route exists. Err says what is missing.
pub async fn check(link: &PodLink) -> Result<()> {
    check_in(None, link).await
}

/// [`check`] with the host namespace named, as in [`plumb_in`].
pub async fn check_in(host_netns: Option<&Path>, link: &PodLink) -> Result<()> {
    validate(link)?;
    let pod = Side::open(Some(&link.netns)).await?;
    let host = Side::open(host_netns).await?;
    let mut problems = Vec::new();

    let host_end = host.link_named(&link.host_veth).await?;
    match &host_end {
        None => problems.push(format!("host veth {} does not exist", link.host_veth)),
        Some(h) => {
            link_problems(&mut problems, "host veth", h, link.mtu);
            let routed = host
                .main_routes()
                .await?
                .iter()
                .any(|r| r.is_link_route(link.ip, h.index));
            if !routed {
                problems.push(format!(
                    "host route {}/32 dev {} scope link is missing",
                    link.ip, link.host_veth
                ));
            }
        }
    }

    match pod.link_named(&link.ifname).await? {
        None => problems.push(format!("interface {} does not exist in the pod", link.ifname)),
        Some(c) => {
            link_problems(&mut problems, "container interface", &c, link.mtu);
            let has_address = pod
                .addresses()
                .await?
                .iter()
                .any(|a| a.index == c.index && a.addr == link.ip && a.prefix_len == 32);
            if !has_address {
                problems.push(format!("address {}/32 is missing on {}", link.ip, link.ifname));
            }
            let routes = pod.main_routes().await?;
            if !routes.iter().any(|r| r.is_link_route(link.gateway, c.index)) {
                problems.push(format!(
                    "route {}/32 dev {} scope link is missing",
                    link.gateway, link.ifname
                ));
            }
            if !routes.iter().any(|r| r.is_default_via(link.gateway, c.index)) {
                problems.push(format!(
                    "default route via {} dev {} is missing",
                    link.gateway, link.ifname
                ));
            }
            let neighbour = pod
                .neighbours()
                .await?
                .into_iter()
                .find(|n| n.index == c.index && n.dst == Some(link.gateway));
            let want_mac = host_end.as_ref().and_then(|h| h.mac);
            match neighbour {
                None => problems.push(format!(
                    "neighbour entry for {} on {} is missing",
                    link.gateway, link.ifname
                )),
                Some(n) if n.state != NeighbourState::Permanent => problems.push(format!(
                    "neighbour entry for {} on {} is {:?}, not permanent",
                    link.gateway, link.ifname, n.state
                )),
                Some(n) if want_mac.is_some() && n.lladdr != want_mac => problems.push(format!(
                    "neighbour entry for {} on {} has MAC {}, not the host veth's {}",
                    link.gateway,
                    link.ifname,
                    n.lladdr.map_or_else(|| "(none)".to_owned(), |m| format_mac(&m)),
                    want_mac.map_or_else(String::new, |m| format_mac(&m)),
                )),
                Some(_) => {}
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(PlumbError::CheckFailed {
            ifname: link.ifname.clone(),
            host_veth: link.host_veth.clone(),
            netns: link.netns.display().to_string(),
            problems,
        })
    }
}

fn link_problems(problems: &mut Vec<String>, what: &str, link: &LinkView, mtu: u32) {
    let name = link.name.as_deref().unwrap_or("?");
    if !link.is_veth() {
        problems.push(format!("{what} {name} is a {}, not a veth", link.kind_name()));
    }
    if !link.up {
        problems.push(format!("{what} {name} is down"));
    }
    if link.mtu != Some(mtu) {
        problems.push(format!(
            "{what} {name} has MTU {}, not {mtu}",
            link.mtu.map_or_else(|| "(none)".to_owned(), |m| m.to_string())
        ));
    }
}

/// Refuses what the kernel would refuse, before touching anything.
fn validate(link: &PodLink) -> Result<()> {
    validate_ifname("host veth name", &link.host_veth)?;
    validate_ifname("container interface name", &link.ifname)?;
    if !(MIN_MTU..=MAX_MTU).contains(&link.mtu) {
        return Err(PlumbError::InvalidMtu(link.mtu));
    }
    validate_address("pod address", link.ip)?;
    validate_address("gateway", link.gateway)?;
    if link.ip == link.gateway {
        return Err(PlumbError::InvalidAddress {
            what: "pod address",
            ip: link.ip,
            reason: "it is the gateway",
        });
    }
    Ok(())
}

/// The kernel's `dev_valid_name`: 1 to 15 bytes, not "." or "..", no '/', ':' or whitespace.
pub fn validate_ifname(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("not a name")
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) || name.contains('\0') {
        Some("contains '/', ':', a NUL or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PlumbError::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_address(what: &'static str, ip: Ipv4Addr) -> Result<()> {
    let reason = if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("not a unicast address")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PlumbError::InvalidAddress { what, ip, reason }),
        None => Ok(()),
    }
}

/// Creates the pair from the host's socket: the host end here, the pod end straight in the pod's
/// namespace. Both down, with their MTU; the host end with `mac`. Atomic in the kernel.
async fn create_pair(host: &Side, pod: &Side, link: &PodLink, mac: [u8; 6]) -> Result<()> {
    let pod_fd = pod
        .ns
        .fd()
        .ok_or_else(|| PlumbError::Vanished(format!("no descriptor for {}", pod.place())))?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(link.ifname.clone())
        .mtu(link.mtu)
        .setns_by_fd(pod_fd.as_raw_fd())
        .build();
    let message = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(link.host_veth.clone())
        .mtu(link.mtu)
        .address(mac.to_vec())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    // `pod_fd` borrows the namespace file, open until `pod` drops: after the request.
    host.nl
        .link()
        .add(message)
        .execute()
        .await
        .map_err(|source| PlumbError::Netlink {
            op: format!(
                "creating veth {} (host, {}) / {} ({})",
                link.host_veth,
                host.place(),
                link.ifname,
                pod.place()
            ),
            source,
        })
}

/// Configures both ends of a pair `create_pair` made.
async fn configure(host: &Side, pod: &Side, link: &PodLink) -> Result<Plumbed> {
    let host_end = host.link_named(&link.host_veth).await?.ok_or_else(|| {
        PlumbError::Vanished(format!("host veth {} is gone right after its creation", link.host_veth))
    })?;
    let host_mac = host_end
        .mac
        .ok_or_else(|| PlumbError::Vanished(format!("host veth {} has no MAC address", link.host_veth)))?;

    // IPv6 hardening before the link is up; /proc/sys/net is the writing thread's namespace's.
    let name = link.host_veth.clone();
    host.ns.run(move || host_veth_sysctls(&name)).await??;
    host.set_up(&host_end).await?;

    let pod_end = pod.link_named(&link.ifname).await?.ok_or_else(|| {
        PlumbError::Vanished(format!(
            "interface {} is not in {} right after its creation",
            link.ifname,
            pod.place()
        ))
    })?;
    pod.set_up(&pod_end).await?;
    let on_pod = |what: &str| format!("{what} on {} in {}", link.ifname, pod.place());
    pod.nl
        .address()
        .add(pod_end.index, IpAddr::V4(link.ip), 32)
        .execute()
        .await
        .map_err(nl(on_pod(&format!("adding address {}/32", link.ip))))?;
    // The gateway's link route first: the default route's next hop must be reachable.
    let gateway_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(link.gateway, 32)
        .output_interface(pod_end.index)
        .scope(RouteScope::Link)
        .build();
    pod.nl
        .route()
        .add(gateway_route)
        .replace()
        .execute()
        .await
        .map_err(nl(on_pod(&format!("adding route {}/32 scope link", link.gateway))))?;
    // Not `replace`: a default route already there is somebody else's, and an error.
    let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(link.gateway)
        .output_interface(pod_end.index)
        .build();
    pod.nl
        .route()
        .add(default_route)
        .execute()
        .await
        .map_err(nl(on_pod(&format!("adding default route via {}", link.gateway))))?;
    pod.nl
        .neighbours()
        .add(pod_end.index, IpAddr::V4(link.gateway))
        .link_layer_address(&host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl(on_pod(&format!(
            "adding permanent neighbour {} lladdr {}",
            link.gateway,
            format_mac(&host_mac)
        ))))?;

    // Replace: a route to this address left by an earlier pod (another veth) is stale.
    let host_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(link.ip, 32)
        .output_interface(host_end.index)
        .scope(RouteScope::Link)
        .build();
    host.nl
        .route()
        .add(host_route)
        .replace()
        .execute()
        .await
        .map_err(nl(format!(
            "adding host route {}/32 dev {} in {}",
            link.ip,
            link.host_veth,
            host.place()
        )))?;

    let pod_mac = pod_end.mac.ok_or_else(|| {
        PlumbError::Vanished(format!(
            "interface {} in {} has no MAC address",
            link.ifname,
            pod.place()
        ))
    })?;
    Ok(Plumbed {
        host: PlumbedInterface {
            name: link.host_veth.clone(),
            mac: format_mac(&host_mac),
            sandbox: None,
        },
        container: PlumbedInterface {
            name: link.ifname.clone(),
            mac: format_mac(&pod_mac),
            sandbox: Some(link.netns.display().to_string()),
        },
    })
}

/// Removes an attachment: the host route to `ip` through the host veth, the host veth (its pair
/// goes with it), and a veth named `ifname` still in the pod. Links of another kind are not ours
/// and stay; so does a route to `ip` through another link (a newer pod's).
async fn remove(
    host: &Side,
    pod: Option<&Side>,
    ifname: &str,
    host_veth: &str,
    ip: Option<Ipv4Addr>,
    host_by_name: bool,
) -> Result<()> {
    if host_by_name
        && let Some(host_end) = host.link_named(host_veth).await?
        && host_end.is_veth()
    {
        if let Some(ip) = ip {
            for route in host.main_routes().await? {
                if route.is_link_route(ip, host_end.index) {
                    host.del_route(&route, &format!("host route {ip}/32 dev {host_veth}"))
                        .await?;
                }
            }
        }
        host.del_link(&host_end).await?;
    }
    if let Some(pod) = pod
        && let Some(pod_end) = pod.link_named(ifname).await?
        && pod_end.is_veth()
    {
        pod.del_link(&pod_end).await?;
    }
    Ok(())
}

fn host_veth_sysctls(name: &str) -> Result<()> {
    for (key, value) in HOST_VETH_V6_SYSCTLS {
        let path = format!("/proc/sys/net/ipv6/conf/{name}/{key}");
        match std::fs::write(&path, value) {
            // A kernel without IPv6.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(PlumbError::Sysctl { path, value, source }),
            Ok(()) => {}
        }
    }
    Ok(())
}

/// One namespace: its thread and a netlink socket made there.
struct Side {
    ns: Netns,
    nl: rtnetlink::Handle,
}

impl Side {
    async fn open(path: Option<&Path>) -> Result<Self> {
        let ns = match path {
            None => Netns::current()?,
            Some(path) => Netns::open(path)?,
        };
        let nl = ns.rtnetlink().await?;
        Ok(Self { ns, nl })
    }

    fn place(&self) -> &str {
        self.ns.describe()
    }

    async fn links(&self) -> Result<Vec<LinkView>> {
        let messages: Vec<LinkMessage> = dump(|| self.nl.link().get().execute().try_collect())
            .await
            .map_err(nl(format!("listing links in {}", self.place())))?;
        Ok(messages.iter().map(LinkView::from).collect())
    }

    async fn link_named(&self, name: &str) -> Result<Option<LinkView>> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .find(|l| l.name.as_deref() == Some(name)))
    }

    async fn addresses(&self) -> Result<Vec<AddrView>> {
        let messages: Vec<AddressMessage> = dump(|| self.nl.address().get().execute().try_collect())
            .await
            .map_err(nl(format!("listing addresses in {}", self.place())))?;
        Ok(messages.iter().filter_map(AddrView::parse).collect())
    }

    async fn main_routes(&self) -> Result<Vec<RouteView>> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        let messages: Vec<RouteMessage> = dump(|| self.nl.route().get(request.clone()).execute().try_collect())
            .await
            .map_err(nl(format!("listing routes in {}", self.place())))?;
        Ok(messages
            .into_iter()
            .filter_map(RouteView::parse)
            .filter(|r| r.table == MAIN_TABLE)
            .collect())
    }

    async fn neighbours(&self) -> Result<Vec<NeighView>> {
        let messages: Vec<NeighbourMessage> = dump(|| {
            self.nl
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Inet)
                .execute()
                .try_collect()
        })
        .await
        .map_err(nl(format!("listing neighbours in {}", self.place())))?;
        Ok(messages.iter().map(NeighView::from).collect())
    }

    async fn set_up(&self, link: &LinkView) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index).up().build();
        self.nl.link().set(message).execute().await.map_err(nl(format!(
            "setting {} up in {}",
            link.name.as_deref().unwrap_or("?"),
            self.place()
        )))
    }

    async fn del_link(&self, link: &LinkView) -> Result<()> {
        match self.nl.link().del(link.index).execute().await {
            // Gone meanwhile (its peer's deletion, its namespace's end): what we wanted.
            Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(()),
            other => other.map_err(nl(format!(
                "deleting {} in {}",
                link.name.as_deref().unwrap_or("?"),
                self.place()
            ))),
        }
    }

    async fn del_route(&self, route: &RouteView, what: &str) -> Result<()> {
        match self.nl.route().del(route.msg.clone()).execute().await {
            Err(e) if matches!(errno(&e), Some(Errno::ESRCH | Errno::ENOENT)) => Ok(()),
            other => other.map_err(nl(format!("deleting {what} in {}", self.place()))),
        }
    }

    /// A random, locally administered unicast MAC no link here has (the VPC CNI's
    /// `generateUniqueRandomMAC`).
    async fn unused_mac(&self, host_veth: &str) -> Result<[u8; 6]> {
        let taken: Vec<[u8; 6]> = self.links().await?.into_iter().filter_map(|l| l.mac).collect();
        let mut random = [0u8; 6 * MAC_ATTEMPTS];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(|e| PlumbError::Mac {
                host_veth: host_veth.to_owned(),
                reason: format!("reading /dev/urandom: {e}"),
            })?;
        random
            .chunks_exact(6)
            .map(local_unicast_mac)
            .find(|mac| !taken.contains(mac))
            .ok_or_else(|| PlumbError::Mac {
                host_veth: host_veth.to_owned(),
                reason: format!("{MAC_ATTEMPTS} random addresses were all in use"),
            })
    }
}

/// Six random bytes as a locally administered (bit 1) unicast (bit 0 clear) MAC.
fn local_unicast_mac(bytes: &[u8]) -> [u8; 6] {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[..6]);
    mac[0] = (mac[0] | 0x02) & 0xfe;
    mac
}

/// "02:ab:cd:00:01:ff".
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A link as read back.
#[derive(Clone, Debug)]
struct LinkView {
    index: u32,
    name: Option<String>,
    mac: Option<[u8; 6]>,
    up: bool,
    mtu: Option<u32>,
    kind: Option<InfoKind>,
}

impl LinkView {
    fn is_veth(&self) -> bool {
        self.kind == Some(InfoKind::Veth)
    }

    fn kind_name(&self) -> String {
        self.kind
            .as_ref()
            .map_or_else(|| "device of no kind".to_owned(), |k| k.to_string())
    }
}

impl From<&LinkMessage> for LinkView {
    fn from(message: &LinkMessage) -> Self {
        let mut view = LinkView {
            index: message.header.index,
            name: None,
            mac: None,
            up: message.header.flags.contains(LinkFlags::Up),
            mtu: None,
            kind: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => view.name = Some(name.clone()),
                LinkAttribute::Address(bytes) => view.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                LinkAttribute::Mtu(mtu) => view.mtu = Some(*mtu),
                LinkAttribute::LinkInfo(infos) => {
                    view.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind.clone()),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        view
    }
}

/// An IPv4 address as read back.
#[derive(Clone, Debug)]
struct AddrView {
    index: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl AddrView {
    fn parse(msg: &AddressMessage) -> Option<Self> {
        if msg.header.family != AddressFamily::Inet {
            return None;
        }
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on point-to-point).
        let find = |local: bool| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) if local => Some(*ip),
                AddressAttribute::Address(IpAddr::V4(ip)) if !local => Some(*ip),
                _ => None,
            })
        };
        Some(AddrView {
            index: msg.header.index,
            addr: find(true).or_else(|| find(false))?,
            prefix_len: msg.header.prefix_len,
        })
    }
}

/// An IPv4 route as read back.
#[derive(Clone, Debug)]
struct RouteView {
    msg: RouteMessage,
    table: u32,
    dst: Ipv4Addr,
    dst_len: u8,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
    scope: RouteScope,
    kind: RouteType,
}

impl RouteView {
    fn parse(msg: RouteMessage) -> Option<Self> {
        if msg.header.address_family != AddressFamily::Inet {
            return None;
        }
        let mut view = RouteView {
            table: u32::from(msg.header.table),
            dst: Ipv4Addr::UNSPECIFIED,
            dst_len: msg.header.destination_prefix_length,
            gateway: None,
            oif: None,
            scope: msg.header.scope,
            kind: msg.header.kind,
            msg: RouteMessage::default(),
        };
        for attribute in &msg.attributes {
            match attribute {
                RouteAttribute::Table(table) => view.table = *table,
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => view.dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => view.gateway = Some(*ip),
                RouteAttribute::Oif(index) => view.oif = Some(*index),
                _ => {}
            }
        }
        view.msg = msg;
        Some(view)
    }

    /// "dst/32 dev oif scope link".
    fn is_link_route(&self, dst: Ipv4Addr, oif: u32) -> bool {
        self.kind == RouteType::Unicast
            && self.dst == dst
            && self.dst_len == 32
            && self.gateway.is_none()
            && self.oif == Some(oif)
            && self.scope == RouteScope::Link
    }

    /// "default via gateway dev oif".
    fn is_default_via(&self, gateway: Ipv4Addr, oif: u32) -> bool {
        self.kind == RouteType::Unicast && self.dst_len == 0 && self.gateway == Some(gateway) && self.oif == Some(oif)
    }
}

/// An IPv4 neighbour entry as read back.
#[derive(Clone, Debug)]
struct NeighView {
    index: u32,
    state: NeighbourState,
    dst: Option<Ipv4Addr>,
    lladdr: Option<[u8; 6]>,
}

impl From<&NeighbourMessage> for NeighView {
    fn from(msg: &NeighbourMessage) -> Self {
        let mut view = NeighView {
            index: msg.header.ifindex,
            state: msg.header.state,
            dst: None,
            lladdr: None,
        };
        for attribute in &msg.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => view.dst = Some(*ip),
                NeighbourAttribute::LinkLayerAddress(bytes) => {
                    view.lladdr = <[u8; 6]>::try_from(bytes.as_slice()).ok();
                }
                _ => {}
            }
        }
        view
    }
}

fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| Errno::from_raw(-code.get())),
        _ => None,
    }
}

/// A netlink dump, done again when the kernel says it was interrupted (EBUSY: the table changed
/// while it was dumped — other pods being plumbed at the same time), a few times.
async fn dump<T, F, Fut>(mut request: F) -> std::result::Result<Vec<T>, rtnetlink::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Vec<T>, rtnetlink::Error>>,
{
    const TRIES: u32 = 10;
    let mut tries = 0;
    loop {
        match request().await {
            Err(e) if errno(&e) == Some(Errno::EBUSY) && tries + 1 < TRIES => tries += 1,
            other => return other,
        }
    }
}

fn nl(op: String) -> impl FnOnce(rtnetlink::Error) -> PlumbError {
    move |source| PlumbError::Netlink { op, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> PodLink {
        PodLink {
            netns: PathBuf::from("/var/run/netns/cni-1"),
            ifname: "eth0".to_owned(),
            host_veth: "eni0123456789a".to_owned(),
            ip: Ipv4Addr::new(100, 64, 0, 20),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            mtu: 9001,
        }
    }

    #[test]
    fn names_the_kernel_takes_are_taken_and_no_others() {
        for good in ["eth0", "eni0123456789ab", "a", "net1.100", "veth-x_y"] {
            validate_ifname("name", good).expect(good);
        }
        for bad in ["", "eni0123456789abc", ".", "..", "a/b", "a:b", "a b", "a\tb", "a\0b"] {
            let err = validate_ifname("name", bad).expect_err(bad);
            assert!(matches!(err, PlumbError::InvalidName { .. }), "{bad:?}: {err}");
        }
        let err = validate_ifname("host veth name", "eni0123456789abc").expect_err("16 bytes");
        assert_eq!(
            err.to_string(),
            "invalid host veth name \"eni0123456789abc\": longer than 15 bytes"
        );
    }

    #[test]
    fn a_link_is_validated_before_anything_is_touched() {
        validate(&link()).expect("valid");
        type Case = (fn(&mut PodLink), &'static str);
        let cases: [Case; 7] = [
            (|l| l.host_veth = "x".repeat(16), "host veth name"),
            (|l| l.ifname = "eth/0".to_owned(), "container interface name"),
            (|l| l.mtu = 67, "MTU"),
            (|l| l.mtu = 65536, "MTU"),
            (|l| l.ip = Ipv4Addr::UNSPECIFIED, "pod address"),
            (|l| l.gateway = Ipv4Addr::new(224, 0, 0, 1), "gateway"),
            (|l| l.ip = l.gateway, "it is the gateway"),
        ];
        for (mutate, says) in cases {
            let mut bad = link();
            mutate(&mut bad);
            let err = validate(&bad).expect_err(says);
            assert!(err.to_string().contains(says), "{err}");
            assert!(!err.netns_missing());
        }
    }

    #[test]
    fn macs_are_local_unicast_and_print_in_lower_case() {
        assert_eq!(local_unicast_mac(&[0xff; 6]), [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(local_unicast_mac(&[0x00; 6]), [0x02, 0, 0, 0, 0, 0]);
        assert_eq!(format_mac(&[0x02, 0xAB, 0xcd, 0, 1, 0xff]), "02:ab:cd:00:01:ff");
    }

    #[test]
    fn only_a_missing_namespace_is_netns_missing() {
        let missing = PlumbError::Netns(NetnsError::Missing(PathBuf::from("/var/run/netns/x")));
        assert!(missing.netns_missing());
        let wrapped = PlumbError::CleanupFailed {
            error: Box::new(missing),
            cleanup: Box::new(PlumbError::Vanished("x".to_owned())),
        };
        assert!(wrapped.netns_missing());
        assert!(!PlumbError::Vanished("x".to_owned()).netns_missing());
    }
}
