//! [`Host`] on a real kernel: rtnetlink for links, addresses, routes and policy rules, and the
//! `nft` binary (through the `nftables` crate's JSON API) for SNAT. No `ip` subprocess.
//!
//! Everything runs through a [`Netns`] thread: the netlink socket is opened there, and `nft` is
//! spawned from there, so one `NetlinkHost` works on the host ([`NetlinkHost::new`]) or inside any
//! named namespace ([`NetlinkHost::in_netns`]) without ever switching a tokio worker's namespace.
//!
//! What each call leaves in the kernel, after the VPC CNI's `setupENINetwork` (pkg/networkutils),
//! the plugin driver's `setupIPBasedContainerRouteRules` and `SetupHostNetwork`:
//!
//! ```text
//!   configure_eni (ENI d, table t = d + 1, subnet s, gateway g, primary address a)
//!     link (by MAC)   mtu 9001, up; a/len its only global address, added with noprefixroute,
//!                     and the kernel's "s dev link" route in main removed (the VPC CNI deletes it)
//!     table t         g/32 dev link scope link;  default via g dev link
//!     rule 32765      from a lookup t            (the VPC CNI's FromPrimaryIPofENIRulePriority)
//!   add_pod_rules (pod p, table t)
//!     rule 512        to p lookup main           (always)
//!     rule 1536       from p lookup t            (one rule, every destination; none if t = main)
//!   configure_snat
//!     rule 1024       fwmark 0x80/0x80 lookup main   (marked flows leave by the primary ENI)
//!     nft table       ip ipam-eks                    (see the `snat` module)
//! ```
//!
//! One 1536 rule per pod whatever the SNAT mode, as the VPC CNI has done since v1.9 (its PR #1475,
//! "symmetric return path for non-VPC traffic"); before that it wrote one 1536 rule per VPC CIDR
//! when SNAT was on, which sent replies of connections that came in from outside the VPC (through
//! an NLB keeping the client address, say) out of the wrong ENI. Which flows leave by the primary
//! ENI is now the connection mark's business (the `snat` module), and the pod rules never change
//! when the SNAT configuration does. [`Host::pod_rules`] still reports the old per-CIDR rules of a
//! pod (with a destination), and adding or deleting a pod's rules replaces or removes them.
//!
//! `configure_snat` also sets what the VPC CNI's init container sets: `ip_forward` on, and
//! `rp_filter` 2 (loose) on the primary link (strict would drop the replies to SNATed flows, which
//! arrive on the primary ENI for a pod whose own rules point at another).

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::LinkUnspec;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::address::AddressFlags;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::address::AddressScope;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::route::RouteAddress;
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::rule::RuleAction;
use rtnetlink::packet_route::rule::RuleAttribute;
use rtnetlink::packet_route::rule::RuleMessage;

use super::EniLink;
use super::EniState;
use super::FROM_POD_RULE_PRIORITY;
use super::Host;
use super::HostError;
use super::PodRules;
use super::SnatConfig;
use super::TO_POD_RULE_PRIORITY;
use super::netns::Netns;
use super::netns::PROCESS_NETNS;
use super::snat;

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// Priority of "fwmark 0x80/0x80 lookup main" (the VPC CNI's `hostRulePriority`).
pub const MARKED_FLOW_RULE_PRIORITY: u32 = 1024;
/// Priority of "from `<ENI primary address>` lookup `<ENI table>`" (the VPC CNI's
/// `FromPrimaryIPofENIRulePriority`).
pub const ENI_ADDRESS_RULE_PRIORITY: u32 = 32765;
/// The MTU of ENI links (the VPC CNI's `AWS_VPC_ENI_MTU` default; EC2's jumbo frames).
pub const DEFAULT_ENI_MTU: u32 = 9001;

/// How often [`Host::wait_for_link`] looks for the link.
const LINK_POLL: Duration = Duration::from_millis(100);

/// Tables that are never an ENI's: unspec, default, main, local.
const RESERVED_TABLES: [u32; 4] = [0, 253, MAIN_TABLE, 255];

/// The host's networking through rtnetlink and nftables, in one network namespace.
#[derive(Debug)]
pub struct NetlinkHost {
    netns: Netns,
    handle: rtnetlink::Handle,
    eni_mtu: u32,
    /// Serializes changes: each is a read, a comparison and writes.
    changes: tokio::sync::Mutex<()>,
}

impl NetlinkHost {
    /// The host of the process's own network namespace.
    pub async fn new() -> Result<Self, HostError> {
        Self::in_netns(PROCESS_NETNS).await
    }

    /// The host inside the network namespace at `path` (e.g. `/run/netns/<name>`).
    pub async fn in_netns(path: impl AsRef<Path>) -> Result<Self, HostError> {
        let netns = Netns::open(path)?;
        let handle = netns.rtnetlink().await?;
        Ok(Self {
            netns,
            handle,
            eni_mtu: DEFAULT_ENI_MTU,
            changes: tokio::sync::Mutex::new(()),
        })
    }

    /// Sets the MTU of the ENI links [`Host::configure_eni`] configures (`AWS_VPC_ENI_MTU`).
    pub fn with_eni_mtu(mut self, mtu: u32) -> Self {
        self.eni_mtu = mtu;
        self
    }

    /// The namespace this host works in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Our nftables table (table, chains and rules) as the kernel has it; empty when there is none.
    pub async fn snat_table(&self) -> Result<Vec<nftables::schema::NfListObject<'static>>, HostError> {
        self.netns.run(snat::list_ours).await?
    }

    async fn links(&self) -> Result<Vec<LinkView>, HostError> {
        let messages: Vec<LinkMessage> =
            dump("list links", || self.handle.link().get().execute().try_collect()).await?;
        Ok(messages.iter().map(LinkView::from).collect())
    }

    async fn link_by_mac(&self, mac: [u8; 6]) -> Result<Option<LinkView>, HostError> {
        Ok(self.links().await?.into_iter().find(|l| l.mac == Some(mac)))
    }

    async fn addresses(&self) -> Result<Vec<AddrView>, HostError> {
        let messages: Vec<AddressMessage> =
            dump("list addresses", || self.handle.address().get().execute().try_collect()).await?;
        Ok(messages.into_iter().filter_map(AddrView::parse).collect())
    }

    async fn routes(&self) -> Result<Vec<RouteView>, HostError> {
        // Without strict checking the kernel dumps every table whatever the request says.
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        let messages: Vec<RouteMessage> = dump("list routes", || {
            self.handle.route().get(request.clone()).execute().try_collect()
        })
        .await?;
        Ok(messages.into_iter().filter_map(RouteView::parse).collect())
    }

    async fn rules(&self) -> Result<Vec<RuleView>, HostError> {
        let messages: Vec<RuleMessage> = dump("list rules", || {
            self.handle.rule().get(rtnetlink::IpVersion::V4).execute().try_collect()
        })
        .await?;
        Ok(messages.into_iter().filter_map(RuleView::parse).collect())
    }

    async fn del_rule(&self, rule: &RuleView) -> Result<(), HostError> {
        match self.handle.rule().del(rule.msg.clone()).execute().await {
            Err(e) if errno(&e) == Some(Errno::ENOENT) => Ok(()),
            other => other.map_err(nl("delete rule")),
        }
    }

    async fn del_route(&self, route: &RouteView) -> Result<(), HostError> {
        match self.handle.route().del(route.msg.clone()).execute().await {
            Err(e) if matches!(errno(&e), Some(Errno::ESRCH | Errno::ENOENT)) => Ok(()),
            other => other.map_err(nl("delete route")),
        }
    }

    async fn del_address(&self, address: &AddrView) -> Result<(), HostError> {
        match self.handle.address().del(address.msg.clone()).execute().await {
            Err(e) if matches!(errno(&e), Some(Errno::EADDRNOTAVAIL | Errno::ENODEV)) => Ok(()),
            other => other.map_err(nl("delete address")),
        }
    }

    /// Makes `want` the only rule among `related` (deleting the others) and adds it if missing.
    async fn ensure_rule(&self, want: Option<&RuleSpec>, related: &[&RuleView]) -> Result<(), HostError> {
        let mut present = false;
        for rule in related {
            if want.is_some_and(|w| w.matches(rule)) && !present {
                present = true;
            } else {
                self.del_rule(rule).await?;
            }
        }
        match want {
            Some(want) if !present => want.add(&self.handle).await,
            _ => Ok(()),
        }
    }

    /// The name of the link that has `ip`.
    async fn link_with_address(&self, ip: Ipv4Addr) -> Result<Option<String>, HostError> {
        let Some(index) = self
            .addresses()
            .await?
            .into_iter()
            .find(|a| a.addr == ip)
            .map(|a| a.index)
        else {
            return Ok(None);
        };
        Ok(self
            .links()
            .await?
            .into_iter()
            .find(|l| l.index == index)
            .and_then(|l| l.name))
    }
}

#[async_trait]
impl Host for NetlinkHost {
    async fn wait_for_link(&self, mac: &str, timeout: Duration) -> Result<String, HostError> {
        let wanted = parse_mac(mac)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(link) = self.link_by_mac(wanted).await? {
                return link
                    .name
                    .ok_or_else(|| HostError::Netlink(format!("link with MAC {mac} has no name")));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(HostError::LinkTimeout {
                    mac: mac.to_ascii_lowercase(),
                    waited: timeout,
                });
            }
            tokio::time::sleep(LINK_POLL.min(deadline - now)).await;
        }
    }

    async fn configure_eni(&self, eni: &EniLink) -> Result<(), HostError> {
        let table = eni.table();
        if RESERVED_TABLES.contains(&table) {
            return Err(HostError::Invalid(format!(
                "ENI device index {} has no table of its own",
                eni.device_index
            )));
        }
        if eni.prefix_len == 0 || eni.prefix_len > 32 {
            return Err(HostError::Invalid(format!(
                "bad subnet prefix length {}",
                eni.prefix_len
            )));
        }
        let mac = parse_mac(&eni.mac)?;
        let _changes = self.changes.lock().await;
        let link = self
            .link_by_mac(mac)
            .await?
            .ok_or_else(|| HostError::Netlink(format!("no link with MAC {}", eni.mac.to_ascii_lowercase())))?;

        if link.mtu != Some(self.eni_mtu) {
            let message = LinkUnspec::new_with_index(link.index).mtu(self.eni_mtu).build();
            self.handle
                .link()
                .set(message)
                .execute()
                .await
                .map_err(nl("set link MTU"))?;
        }
        if !link.up {
            let message = LinkUnspec::new_with_index(link.index).up().build();
            self.handle
                .link()
                .set(message)
                .execute()
                .await
                .map_err(nl("set link up"))?;
        }

        // The ENI's primary address, its only global one (the VPC CNI deletes the others).
        let mut have_address = false;
        for address in self.addresses().await?.iter().filter(|a| a.index == link.index) {
            if address.addr == eni.primary_ip && address.prefix_len == eni.prefix_len {
                have_address = true;
            } else if address.scope == AddressScope::Universe {
                self.del_address(address).await?;
            }
        }
        if !have_address {
            let mut request = self
                .handle
                .address()
                .add(link.index, IpAddr::V4(eni.primary_ip), eni.prefix_len);
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
            request.execute().await.map_err(nl("add ENI address"))?;
        }

        // The subnet must not be reachable through this ENI from the main table: pods' traffic
        // chooses its ENI by rule. Left by an address added without noprefixroute.
        let subnet = network(eni.primary_ip, eni.prefix_len);
        let gateway_route = |r: &RouteView| {
            r.table == table
                && r.dst == eni.gateway
                && r.dst_len == 32
                && r.gateway.is_none()
                && r.oif == Some(link.index)
                && r.scope == RouteScope::Link
                && r.kind == RouteType::Unicast
        };
        let default_route = |r: &RouteView| {
            r.table == table
                && r.dst_len == 0
                && r.gateway == Some(eni.gateway)
                && r.oif == Some(link.index)
                && r.kind == RouteType::Unicast
        };
        let routes = self.routes().await?;
        for route in &routes {
            let main_subnet = route.table == MAIN_TABLE
                && route.dst == subnet
                && route.dst_len == eni.prefix_len
                && route.oif == Some(link.index)
                && route.gateway.is_none();
            let stale = route.table == table && !gateway_route(route) && !default_route(route);
            if main_subnet || stale {
                self.del_route(route).await?;
            }
        }
        // The gateway's link route first: the default route's next hop must be reachable.
        if !routes.iter().any(gateway_route) {
            let message = RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(table)
                .destination_prefix(eni.gateway, 32)
                .output_interface(link.index)
                .scope(RouteScope::Link)
                .build();
            self.handle
                .route()
                .add(message)
                .replace()
                .execute()
                .await
                .map_err(nl("add gateway route"))?;
        }
        if !routes.iter().any(default_route) {
            let message = RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(table)
                .gateway(eni.gateway)
                .output_interface(link.index)
                .build();
            self.handle
                .route()
                .add(message)
                .replace()
                .execute()
                .await
                .map_err(nl("add default route"))?;
        }

        let want = RuleSpec::from_to(ENI_ADDRESS_RULE_PRIORITY, Some(eni.primary_ip), None, table);
        let rules = self.rules().await?;
        let related: Vec<&RuleView> = rules
            .iter()
            .filter(|r| r.priority == ENI_ADDRESS_RULE_PRIORITY && r.src == Some((eni.primary_ip, 32)))
            .collect();
        self.ensure_rule(Some(&want), &related).await
    }

    async fn remove_eni(&self, eni: &EniLink) -> Result<(), HostError> {
        let table = eni.table();
        if RESERVED_TABLES.contains(&table) {
            return Err(HostError::Invalid(format!(
                "ENI device index {} has no table of its own",
                eni.device_index
            )));
        }
        let _changes = self.changes.lock().await;
        let rules = self.rules().await?;
        let pods: Vec<Ipv4Addr> = rules
            .iter()
            .filter(|r| r.priority == FROM_POD_RULE_PRIORITY && r.table == table)
            .filter_map(|r| host_address(r.src))
            .collect();
        for rule in &rules {
            let to_pod =
                rule.priority == TO_POD_RULE_PRIORITY && host_address(rule.dst).is_some_and(|p| pods.contains(&p));
            if rule.table == table || to_pod {
                self.del_rule(rule).await?;
            }
        }
        for route in self.routes().await?.iter().filter(|r| r.table == table) {
            self.del_route(route).await?;
        }
        if let Some(link) = self.link_by_mac(parse_mac(&eni.mac)?).await? {
            for address in self
                .addresses()
                .await?
                .iter()
                .filter(|a| a.index == link.index && a.addr == eni.primary_ip)
            {
                self.del_address(address).await?;
            }
        }
        Ok(())
    }

    async fn eni_state(&self, mac: &str) -> Result<Option<EniState>, HostError> {
        let Some(link) = self.link_by_mac(parse_mac(mac)?).await? else {
            return Ok(None);
        };
        let default = self
            .routes()
            .await?
            .into_iter()
            .filter(|r| {
                r.dst_len == 0
                    && r.gateway.is_some()
                    && r.oif == Some(link.index)
                    && !RESERVED_TABLES.contains(&r.table)
            })
            .min_by_key(|r| r.table);
        Ok(Some(EniState {
            link: link.name.unwrap_or_default(),
            mac: mac.to_ascii_lowercase(),
            up: link.up,
            table: default.as_ref().map(|r| r.table),
            gateway: default.and_then(|r| r.gateway),
        }))
    }

    async fn add_pod_rules(&self, rules: &PodRules) -> Result<(), HostError> {
        if rules.table != MAIN_TABLE && RESERVED_TABLES.contains(&rules.table) {
            return Err(HostError::Invalid(format!(
                "pod {} cannot use table {}",
                rules.ip, rules.table
            )));
        }
        let _changes = self.changes.lock().await;
        let existing = self.rules().await?;
        let (to_pod, from_pod) = pod_rules_of(&existing, rules.ip);
        let to = RuleSpec::from_to(TO_POD_RULE_PRIORITY, None, Some(rules.ip), MAIN_TABLE);
        self.ensure_rule(Some(&to), &to_pod).await?;
        // A pod of the primary ENI (main table) needs no rule of its own, as in the VPC CNI.
        let from = (rules.table != MAIN_TABLE)
            .then(|| RuleSpec::from_to(FROM_POD_RULE_PRIORITY, Some(rules.ip), None, rules.table));
        self.ensure_rule(from.as_ref(), &from_pod).await
    }

    async fn del_pod_rules(&self, ip: Ipv4Addr) -> Result<(), HostError> {
        let _changes = self.changes.lock().await;
        let existing = self.rules().await?;
        let (to_pod, from_pod) = pod_rules_of(&existing, ip);
        for rule in to_pod.into_iter().chain(from_pod) {
            self.del_rule(rule).await?;
        }
        Ok(())
    }

    async fn pod_rules(&self) -> Result<Vec<PodRules>, HostError> {
        Ok(pod_rules_from(&self.rules().await?))
    }

    async fn configure_snat(&self, config: &SnatConfig) -> Result<(), HostError> {
        let _changes = self.changes.lock().await;
        let primary_link = self
            .link_with_address(config.primary_ip)
            .await?
            .ok_or_else(|| HostError::Invalid(format!("the primary address {} is on no link", config.primary_ip)))?;
        let batch = snat::ruleset(config, &primary_link)?;
        self.netns.run(move || snat::apply(&batch)).await??;
        // What the VPC CNI's init container sets: the node forwards for its pods, and replies to
        // connections SNATed to the primary address (or marked by the NodePort rule) come back on
        // the primary link but may belong to a pod whose egress is another ENI: loose reverse-path
        // filtering there. /proc/sys/net resolves to the writing thread's namespace.
        let link = primary_link.clone();
        self.netns
            .run(move || {
                write_sysctl("net/ipv4/ip_forward", "1")?;
                write_sysctl(&format!("net/ipv4/conf/{link}/rp_filter"), "2")
            })
            .await??;

        // Kept with external SNAT too: the NodePort return path uses the same mark.
        let mut want = RuleSpec::from_to(MARKED_FLOW_RULE_PRIORITY, None, None, MAIN_TABLE);
        want.fwmark = Some((snat::CONNMARK, snat::CONNMARK));
        let rules = self.rules().await?;
        let related: Vec<&RuleView> = rules
            .iter()
            .filter(|r| r.priority == MARKED_FLOW_RULE_PRIORITY && r.table == MAIN_TABLE && r.fwmark.is_some())
            .collect();
        self.ensure_rule(Some(&want), &related).await
    }
}

/// Writes `/proc/sys/<key>` (in the calling thread's network namespace).
fn write_sysctl(key: &str, value: &str) -> Result<(), HostError> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|e| HostError::Netlink(format!("writing {value} to {path}: {e}")))
}

/// A link as read back.
#[derive(Clone, Debug)]
struct LinkView {
    index: u32,
    name: Option<String>,
    mac: Option<[u8; 6]>,
    up: bool,
    mtu: Option<u32>,
}

impl From<&LinkMessage> for LinkView {
    fn from(message: &LinkMessage) -> Self {
        let mut view = LinkView {
            index: message.header.index,
            name: None,
            mac: None,
            up: message.header.flags.contains(LinkFlags::Up),
            mtu: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => view.name = Some(name.clone()),
                LinkAttribute::Address(bytes) => view.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                LinkAttribute::Mtu(mtu) => view.mtu = Some(*mtu),
                _ => {}
            }
        }
        view
    }
}

/// An IPv4 address as read back.
#[derive(Clone, Debug)]
struct AddrView {
    msg: AddressMessage,
    index: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
    scope: AddressScope,
}

impl AddrView {
    fn parse(msg: AddressMessage) -> Option<Self> {
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
        let addr = find(true).or_else(|| find(false))?;
        Some(AddrView {
            index: msg.header.index,
            addr,
            prefix_len: msg.header.prefix_len,
            scope: msg.header.scope,
            msg,
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
}

/// An IPv4 policy rule as read back.
#[derive(Clone, Debug)]
struct RuleView {
    msg: RuleMessage,
    priority: u32,
    src: Option<(Ipv4Addr, u8)>,
    dst: Option<(Ipv4Addr, u8)>,
    table: u32,
    fwmark: Option<(u32, u32)>,
    action: RuleAction,
    /// Selectors this module never writes (interfaces, uid, ports, tos, …).
    other_selectors: bool,
}

impl RuleView {
    fn parse(msg: RuleMessage) -> Option<Self> {
        if msg.header.family != AddressFamily::Inet {
            return None;
        }
        let mut view = RuleView {
            priority: 0,
            src: None,
            dst: None,
            table: u32::from(msg.header.table),
            fwmark: None,
            action: msg.header.action,
            other_selectors: msg.header.tos != 0,
            msg: RuleMessage::default(),
        };
        let mut mark = None;
        let mut mask = None;
        for attribute in &msg.attributes {
            match attribute {
                RuleAttribute::Priority(p) => view.priority = *p,
                RuleAttribute::Table(t) => view.table = *t,
                RuleAttribute::Source(IpAddr::V4(ip)) => view.src = Some((*ip, msg.header.src_len)),
                RuleAttribute::Destination(IpAddr::V4(ip)) => view.dst = Some((*ip, msg.header.dst_len)),
                RuleAttribute::FwMark(m) => mark = Some(*m),
                RuleAttribute::FwMask(m) => mask = Some(*m),
                RuleAttribute::Iifname(_)
                | RuleAttribute::Oifname(_)
                | RuleAttribute::UidRange(_)
                | RuleAttribute::IpProtocol(_)
                | RuleAttribute::SourcePortRange(_)
                | RuleAttribute::DestinationPortRange(_)
                | RuleAttribute::TunId(_)
                | RuleAttribute::L3MDev(true) => view.other_selectors = true,
                _ => {}
            }
        }
        // The kernel omits a zero mark; a missing mask means all bits.
        view.fwmark = mark.filter(|&m| m != 0).map(|m| (m, mask.unwrap_or(u32::MAX)));
        view.msg = msg;
        Some(view)
    }
}

/// A rule this module writes: "[from src/32] [to dst/32] [fwmark m/mask] lookup table".
#[derive(Clone, Debug, PartialEq, Eq)]
struct RuleSpec {
    priority: u32,
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    fwmark: Option<(u32, u32)>,
    table: u32,
}

impl RuleSpec {
    fn from_to(priority: u32, src: Option<Ipv4Addr>, dst: Option<Ipv4Addr>, table: u32) -> Self {
        Self {
            priority,
            src,
            dst,
            fwmark: None,
            table,
        }
    }

    fn matches(&self, rule: &RuleView) -> bool {
        rule.priority == self.priority
            && rule.src == self.src.map(|ip| (ip, 32))
            && rule.dst == self.dst.map(|ip| (ip, 32))
            && rule.fwmark == self.fwmark
            && rule.table == self.table
            && rule.action == RuleAction::ToTable
            && !rule.other_selectors
    }

    async fn add(&self, handle: &rtnetlink::Handle) -> Result<(), HostError> {
        let mut request = handle
            .rule()
            .add()
            .v4()
            .priority(self.priority)
            .table_id(self.table)
            .action(RuleAction::ToTable);
        if let Some(src) = self.src {
            request = request.source_prefix(src, 32);
        }
        if let Some(dst) = self.dst {
            request = request.destination_prefix(dst, 32);
        }
        if let Some((mark, mask)) = self.fwmark {
            request = request.fw_mark(mark);
            request.message_mut().attributes.push(RuleAttribute::FwMask(mask));
        }
        match request.execute().await {
            Err(e) if errno(&e) == Some(Errno::EEXIST) => Ok(()),
            other => other.map_err(nl("add rule")),
        }
    }
}

/// The address of a /32 selector.
fn host_address(selector: Option<(Ipv4Addr, u8)>) -> Option<Ipv4Addr> {
    selector.filter(|&(_, len)| len == 32).map(|(ip, _)| ip)
}

/// The pod address's rules among `rules`: (512 "to pod", 1536 "from pod", per-CIDR ones too).
fn pod_rules_of(rules: &[RuleView], ip: Ipv4Addr) -> (Vec<&RuleView>, Vec<&RuleView>) {
    let to = rules
        .iter()
        .filter(|r| r.priority == TO_POD_RULE_PRIORITY && host_address(r.dst) == Some(ip))
        .collect();
    let from = rules
        .iter()
        .filter(|r| r.priority == FROM_POD_RULE_PRIORITY && host_address(r.src) == Some(ip))
        .collect();
    (to, from)
}

/// Every pod address with a 512 or 1536 rule, with the table of its 1536 rule (main if none).
fn pod_rules_from(rules: &[RuleView]) -> Vec<PodRules> {
    let mut pods = std::collections::BTreeMap::<Ipv4Addr, u32>::new();
    for rule in rules {
        if rule.priority == TO_POD_RULE_PRIORITY
            && rule.src.is_none()
            && let Some(ip) = host_address(rule.dst)
        {
            pods.entry(ip).or_insert(MAIN_TABLE);
        }
    }
    for rule in rules {
        if rule.priority == FROM_POD_RULE_PRIORITY
            && let Some(ip) = host_address(rule.src)
        {
            let table = pods.entry(ip).or_insert(rule.table);
            // An old per-CIDR rule set and a plain rule agree on the table; prefer the plain one.
            if *table == MAIN_TABLE || rule.dst.is_none() {
                *table = rule.table;
            }
        }
    }
    pods.into_iter().map(|(ip, table)| PodRules { ip, table }).collect()
}

/// The network address of `ip/len`.
fn network(ip: Ipv4Addr, len: u8) -> Ipv4Addr {
    if len == 0 {
        Ipv4Addr::UNSPECIFIED
    } else {
        Ipv4Addr::from(u32::from(ip) & (u32::MAX << (32 - u32::from(len))))
    }
}

/// Parses "02:ab:cd:ef:01:23" (either case).
pub fn parse_mac(mac: &str) -> Result<[u8; 6], HostError> {
    let bad = || HostError::Invalid(format!("malformed MAC address {mac:?}"));
    let mut bytes = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut bytes {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(bytes)
}

fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| Errno::from_raw(-code.get())),
        _ => None,
    }
}

/// A netlink dump, done again when the kernel says it was interrupted (EBUSY: the table changed
/// while it was being dumped, e.g. another pod's rules added meanwhile), a few times.
async fn dump<T, F, Fut>(what: &'static str, mut request: F) -> Result<Vec<T>, HostError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, rtnetlink::Error>>,
{
    const TRIES: u32 = 10;
    let mut tries = 0;
    loop {
        match request().await {
            Err(e) if errno(&e) == Some(Errno::EBUSY) && tries + 1 < TRIES => tries += 1,
            other => return other.map_err(nl(what)),
        }
    }
}

fn nl(what: &'static str) -> impl Fn(rtnetlink::Error) -> HostError {
    move |e| HostError::Netlink(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn rule(priority: u32, src: Option<Ipv4Addr>, dst: Option<(Ipv4Addr, u8)>, table: u32) -> RuleView {
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.action = RuleAction::ToTable;
        msg.header.table = u8::try_from(table).unwrap_or(252);
        msg.attributes.push(RuleAttribute::Table(table));
        msg.attributes.push(RuleAttribute::Priority(priority));
        if let Some(src) = src {
            msg.header.src_len = 32;
            msg.attributes.push(RuleAttribute::Source(src.into()));
        }
        if let Some((dst, len)) = dst {
            msg.header.dst_len = len;
            msg.attributes.push(RuleAttribute::Destination(dst.into()));
        }
        RuleView::parse(msg).expect("IPv4")
    }

    const POD: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 20);

    #[test]
    fn macs_parse_in_either_case_and_nothing_else() {
        assert_eq!(
            parse_mac("02:AB:cd:00:01:ff").expect("valid"),
            [2, 0xab, 0xcd, 0, 1, 0xff]
        );
        for bad in [
            "",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:ff:00",
            "02-ab-cd-00-01-ff",
            "2:ab:cd:00:01:ff",
            "zz:ab:cd:00:01:ff",
        ] {
            assert!(matches!(parse_mac(bad), Err(HostError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_rules_written_are_the_rules_matched() {
        let spec = RuleSpec::from_to(FROM_POD_RULE_PRIORITY, Some(POD), None, 2);
        assert!(spec.matches(&rule(1536, Some(POD), None, 2)));
        assert!(!spec.matches(&rule(1536, Some(POD), None, 3)), "other table");
        assert!(
            !spec.matches(&rule(1536, Some(POD), Some((Ipv4Addr::new(10, 0, 0, 0), 16)), 2)),
            "per-CIDR"
        );
        assert!(!spec.matches(&rule(1535, Some(POD), None, 2)), "other priority");
    }

    #[test]
    fn pod_rules_are_rebuilt_from_the_kernels_rules() {
        let other = Ipv4Addr::new(100, 64, 0, 21);
        let primary_eni_pod = Ipv4Addr::new(10, 0, 0, 30);
        let old_style = Ipv4Addr::new(100, 64, 0, 22);
        let rules = vec![
            rule(0, None, None, 255),
            rule(512, None, Some((POD, 32)), MAIN_TABLE),
            rule(1536, Some(POD), None, 2),
            rule(512, None, Some((other, 32)), MAIN_TABLE),
            rule(1536, Some(other), None, 3),
            rule(512, None, Some((primary_eni_pod, 32)), MAIN_TABLE),
            rule(512, None, Some((old_style, 32)), MAIN_TABLE),
            rule(1536, Some(old_style), Some((Ipv4Addr::new(10, 0, 0, 0), 16)), 2),
            rule(1024, None, None, MAIN_TABLE),
            rule(32765, Some(Ipv4Addr::new(100, 64, 0, 10)), None, 2),
            rule(32766, None, None, MAIN_TABLE),
        ];
        assert_eq!(
            pod_rules_from(&rules),
            vec![
                PodRules {
                    ip: primary_eni_pod,
                    table: MAIN_TABLE
                },
                PodRules { ip: POD, table: 2 },
                PodRules { ip: other, table: 3 },
                PodRules {
                    ip: old_style,
                    table: 2
                },
            ]
        );
        let (to, from) = pod_rules_of(&rules, old_style);
        assert_eq!((to.len(), from.len()), (1, 1));
    }

    #[test]
    fn networks_are_masked() {
        assert_eq!(network(Ipv4Addr::new(100, 64, 0, 10), 24), Ipv4Addr::new(100, 64, 0, 0));
        assert_eq!(network(Ipv4Addr::new(10, 1, 2, 3), 0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(network(Ipv4Addr::new(10, 1, 2, 3), 32), Ipv4Addr::new(10, 1, 2, 3));
    }
}
