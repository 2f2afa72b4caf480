//! The CNI specification's wire types (SPEC.md 1.1.0; results also in the 1.0.0 and 0.4.0 formats).
//!
//! ```text
//!   environment ──▶ Env (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH)
//!   stdin       ──▶ config::NetConf (crate::config)
//!   stdout      ◀── SuccessResult::to_json(version) | VersionResult | CniError::to_json(version)
//! ```
//!
//! Parsing is liberal (a `prevResult` of any supported version, unknown keys ignored, so that what
//! other plugins wrote passes through); output is strict (exactly the keys of the requested
//! version). The plugin's own lease record, which rides in `interfaces` so that it survives
//! typed consumers of the result, is [`LeaseRecord`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use serde_json::json;

/// A CNI specification version this plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 0.4.0: CHECK, prevResult on DEL; `ips[].version`.
    V0_4_0,
    /// 1.0.0: no `ips[].version`.
    V1_0_0,
    /// 1.1.0: STATUS, GC; interface `mtu`, `socketPath`, `pciID`; route `mtu`, `advmss`,
    /// `priority`, `table`, `scope`.
    V1_1_0,
}

impl Version {
    /// The versions VERSION reports, oldest first.
    pub const SUPPORTED: [Version; 3] = [Version::V0_4_0, Version::V1_0_0, Version::V1_1_0];

    /// The version this plugin implements (and answers errors in when the input names none).
    pub const CURRENT: Version = Version::V1_1_0;

    /// The version as the spec writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// The supported version `s` names, if any.
    pub fn parse(s: &str) -> Option<Version> {
        Version::SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the version defines STATUS and GC (1.1.0 and later).
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }

    /// The supported versions as a comma-separated list, for messages.
    pub fn supported_list() -> String {
        Version::SUPPORTED.map(Version::as_str).join(", ")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Add the container to the network.
    Add,
    /// Remove the container from the network.
    Del,
    /// Check the container's networking.
    Check,
    /// Whether the plugin can take ADDs.
    Status,
    /// Release whatever belongs to attachments the runtime no longer has.
    Gc,
    /// Report the supported versions.
    Version,
}

impl Command {
    /// The command `CNI_COMMAND` names (exact, upper case as the spec writes it).
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The command as `CNI_COMMAND` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CNI error code: the spec's well-known codes (0-99) and this plugin's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: the configuration's cniVersion is not one the plugin supports.
    IncompatibleVersion,
    /// 2: a field of the configuration the plugin does not support.
    UnsupportedField,
    /// 3: the container (its network namespace) is unknown or does not exist.
    UnknownContainer,
    /// 4: a necessary environment variable is missing or malformed.
    InvalidEnvironment,
    /// 5: reading stdin (or writing stdout) failed.
    Io,
    /// 6: stdin (or prevResult) is not valid JSON of the expected shape.
    Decode,
    /// 7: the configuration is well-formed but invalid.
    InvalidConfig,
    /// 11: a transient condition (agent unreachable or busy, no warm address yet); retry later.
    TryAgainLater,
    /// 50 (STATUS): the plugin cannot take ADDs.
    NotAvailable,
    /// 51 (STATUS): the plugin cannot take ADDs and existing pods may have limited connectivity.
    NotAvailableLimitedConnectivity,
    /// 100: the agent refused the request because it contradicts its records (FAILED_PRECONDITION).
    AgentRefused,
    /// 101: the agent failed, or answered something unusable.
    AgentFailed,
    /// 102: plumbing the pod's interfaces (veth, addresses, routes) failed.
    PlumbingFailed,
    /// 103: CHECK found the attachment not as prevResult describes it.
    CheckFailed,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::IncompatibleVersion,
        ErrorCode::UnsupportedField,
        ErrorCode::UnknownContainer,
        ErrorCode::InvalidEnvironment,
        ErrorCode::Io,
        ErrorCode::Decode,
        ErrorCode::InvalidConfig,
        ErrorCode::TryAgainLater,
        ErrorCode::NotAvailable,
        ErrorCode::NotAvailableLimitedConnectivity,
        ErrorCode::AgentRefused,
        ErrorCode::AgentFailed,
        ErrorCode::PlumbingFailed,
        ErrorCode::CheckFailed,
    ];

    /// The number on the wire.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::NotAvailableLimitedConnectivity => 51,
            ErrorCode::AgentRefused => 100,
            ErrorCode::AgentFailed => 101,
            ErrorCode::PlumbingFailed => 102,
            ErrorCode::CheckFailed => 103,
        }
    }

    /// The code a number names, if it is one of ours or the spec's.
    pub fn from_code(code: u32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// A failed command, as the spec's error result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {}: {msg}", code.code())]
pub struct CniError {
    /// The code.
    pub code: ErrorCode,
    /// A short message that says what went wrong and what to do.
    pub msg: String,
    /// The underlying cause, when there is more to say.
    pub details: Option<String>,
}

impl CniError {
    /// An error without details.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    /// The same error with `details`.
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// The error result JSON in `version`'s format (the same keys in every supported version).
    pub fn to_json(&self, version: Version) -> Vec<u8> {
        let wire = ErrorResult {
            cni_version: version.as_str().to_owned(),
            code: self.code.code(),
            msg: self.msg.clone(),
            details: self.details.clone(),
        };
        serde_json::to_vec(&wire).unwrap_or_else(|_| {
            // Strings always serialize; keep a literal fallback anyway so stdout is never empty.
            format!(
                r#"{{"cniVersion":"{version}","code":{},"msg":"error"}}"#,
                self.code.code()
            )
            .into_bytes()
        })
    }
}

/// The spec's error result, as it is on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorResult {
    /// The protocol version in use.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// A longer description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// VERSION's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionResult {
    /// The version given on input (or the plugin's own when none was).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The versions this plugin supports.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// The plugin's answer to VERSION for input version `cni_version`.
    pub fn new(cni_version: &str) -> Self {
        Self {
            cni_version: cni_version.to_owned(),
            supported_versions: Version::SUPPORTED.map(|v| v.as_str().to_owned()).to_vec(),
        }
    }
}

/// An interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// The interface name.
    pub name: String,
    /// Its hardware address, if applicable.
    #[serde(default)]
    pub mac: Option<String>,
    /// Its MTU (1.1.0).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The network namespace path for a container interface; none for a host interface.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// A socket file for the interface (1.1.0).
    #[serde(default)]
    pub socket_path: Option<String>,
    /// The PCI id of the interface's device (1.1.0).
    #[serde(default, rename = "pciID")]
    pub pci_id: Option<String>,
}

impl Interface {
    /// Whether the interface is in a container (has a non-empty sandbox).
    pub fn in_sandbox(&self) -> bool {
        self.sandbox.as_deref().is_some_and(|s| !s.is_empty())
    }

    fn to_json(&self, version: Version) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("name".into(), json!(self.name));
        insert_str(&mut o, "mac", self.mac.as_deref());
        if version >= Version::V1_1_0
            && let Some(mtu) = self.mtu
        {
            o.insert("mtu".into(), json!(mtu));
        }
        insert_str(&mut o, "sandbox", self.sandbox.as_deref());
        if version >= Version::V1_1_0 {
            insert_str(&mut o, "socketPath", self.socket_path.as_deref());
            insert_str(&mut o, "pciID", self.pci_id.as_deref());
        }
        Value::Object(o)
    }
}

/// An address of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// The address in CIDR notation, e.g. "10.0.3.7/32".
    pub address: String,
    /// The subnet's gateway, if any.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The index into `interfaces` of the interface the address is on; none in an IPAM result.
    #[serde(default)]
    pub interface: Option<u32>,
}

impl IpConfig {
    /// The address and prefix length, if `address` is a valid CIDR.
    pub fn cidr(&self) -> Option<(IpAddr, u8)> {
        let (ip, prefix) = self.address.split_once('/')?;
        let ip: IpAddr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some((ip, prefix))
    }

    /// The IPv4 address, if `address` is an IPv4 CIDR.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        match self.cidr()? {
            (IpAddr::V4(ip), _) => Some(ip),
            (IpAddr::V6(_), _) => None,
        }
    }

    fn to_json(&self, version: Version) -> Value {
        let mut o = serde_json::Map::new();
        if version < Version::V1_0_0 {
            let family = if self.address.contains(':') { "6" } else { "4" };
            o.insert("version".into(), json!(family));
        }
        o.insert("address".into(), json!(self.address));
        insert_str(&mut o, "gateway", self.gateway.as_deref());
        if let Some(index) = self.interface {
            o.insert("interface".into(), json!(index));
        }
        Value::Object(o)
    }
}

/// A route of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Route {
    /// The destination CIDR.
    pub dst: String,
    /// The next hop; none for the `ips` gateway or a link route.
    #[serde(default)]
    pub gw: Option<String>,
    /// The path MTU (1.1.0).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The MSS to advertise (1.1.0).
    #[serde(default)]
    pub advmss: Option<u32>,
    /// The route's priority, lower first (1.1.0).
    #[serde(default)]
    pub priority: Option<u32>,
    /// The route table (1.1.0).
    #[serde(default)]
    pub table: Option<u32>,
    /// The route's scope (1.1.0).
    #[serde(default)]
    pub scope: Option<u32>,
}

impl Route {
    fn to_json(&self, version: Version) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("dst".into(), json!(self.dst));
        insert_str(&mut o, "gw", self.gw.as_deref());
        if version >= Version::V1_1_0 {
            for (key, value) in [
                ("mtu", self.mtu),
                ("advmss", self.advmss),
                ("priority", self.priority),
                ("table", self.table),
                ("scope", self.scope),
            ] {
                if let Some(value) = value {
                    o.insert(key.into(), json!(value));
                }
            }
        }
        Value::Object(o)
    }
}

/// DNS settings (of the configuration and of a result; the same shape in both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_none() && self.search.is_empty() && self.options.is_empty()
    }
}

/// ADD's success result (also what arrives back as `prevResult`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SuccessResult {
    /// Every interface the attachment created (none in an IPAM plugin's result).
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// The addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// The routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default)]
    pub dns: Dns,
}

impl SuccessResult {
    /// Parses a result (or `prevResult`) of any supported version. Unknown keys (an `ips[].version`
    /// of 0.4.0, anything newer) are ignored.
    ///
    /// # Errors
    ///
    /// Says which part of the result does not have the spec's shape.
    pub fn from_value(value: &Value) -> Result<SuccessResult, String> {
        if !value.is_object() {
            return Err("a result must be a JSON object".to_owned());
        }
        SuccessResult::deserialize(value).map_err(|e| e.to_string())
    }

    /// The result in `version`'s format: only the keys that version defines.
    pub fn to_json(&self, version: Version) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            o.insert(
                "interfaces".into(),
                Value::Array(self.interfaces.iter().map(|i| i.to_json(version)).collect()),
            );
        }
        o.insert(
            "ips".into(),
            Value::Array(self.ips.iter().map(|i| i.to_json(version)).collect()),
        );
        o.insert(
            "routes".into(),
            Value::Array(self.routes.iter().map(|r| r.to_json(version)).collect()),
        );
        o.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({})),
        );
        Value::Object(o)
    }

    /// The result JSON in `version`'s format, as bytes for stdout.
    pub fn to_bytes(&self, version: Version) -> Vec<u8> {
        self.to_json(version).to_string().into_bytes()
    }

    /// The IPv4 address of the container interface `ifname`: the first address whose `interface`
    /// index names it, else (no indices, as after an IPAM plugin) the first IPv4 address.
    pub fn ipv4_of(&self, ifname: &str) -> Option<Ipv4Addr> {
        let on_ifname = |ip: &&IpConfig| {
            ip.interface
                .and_then(|i| self.interfaces.get(usize::try_from(i).ok()?))
                .is_some_and(|i| i.name == ifname && i.in_sandbox())
        };
        self.ips
            .iter()
            .filter(on_ifname)
            .find_map(IpConfig::ipv4)
            .or_else(|| self.ips.iter().find_map(IpConfig::ipv4))
    }

    /// The gateway of the address [`ipv4_of`](Self::ipv4_of) picks.
    pub fn gateway_of(&self, ip: Ipv4Addr) -> Option<Ipv4Addr> {
        self.ips
            .iter()
            .find(|c| c.ipv4() == Some(ip))
            .and_then(|c| c.gateway.as_deref()?.parse().ok())
    }

    /// The host interface (no sandbox) that is not this plugin's record: the host veth.
    pub fn host_interface(&self) -> Option<&Interface> {
        self.interfaces
            .iter()
            .find(|i| !i.in_sandbox() && !i.name.starts_with(LeaseRecord::NAME_PREFIX))
    }

    /// The index of the container interface `ifname`.
    pub fn container_interface(&self, ifname: &str) -> Option<usize> {
        self.interfaces.iter().position(|i| i.name == ifname && i.in_sandbox())
    }
}

fn insert_str(o: &mut serde_json::Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        o.insert(key.to_owned(), json!(value));
    }
}

/// What DEL and CHECK need of an ADD that the result's standard fields cannot say: the lease id,
/// route table, ENI, VLAN and MTU.
///
/// Typed consumers (libcni's cache, chained plugins such as portmap, bandwidth and tuning) parse
/// the result into the spec's types and write back only the spec's keys, so a custom top-level key
/// would not come back in `prevResult`. The record therefore rides as one more host-side entry of
/// `interfaces` (no sandbox, so nothing treats it as a container interface), named
/// `ipam-eks:<ifname>` (the kernel allows no `:` in link names, so it never names a real link), with the
/// fields in `mac` as `lease=812,table=3,eni=eni-0abc,vlan=0,mtu=9001`. The VPC CNI keeps its
/// VLAN id in a dummy interface's `mac` the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The agent's lease id.
    pub lease_id: u64,
    /// The host route table of the pod's egress.
    pub route_table: u32,
    /// The EC2 id of the ENI carrying the address.
    pub eni_id: String,
    /// The VLAN id of a branch-ENI pod; 0 for a pod on a shared ENI.
    pub vlan_id: u32,
    /// The MTU the pod's interfaces were plumbed with.
    pub mtu: u32,
}

impl LeaseRecord {
    /// The prefix of the record's interface name.
    pub const NAME_PREFIX: &'static str = "ipam-eks:";

    /// The record as the result's interface for attachment interface `ifname`.
    pub fn to_interface(&self, ifname: &str) -> Interface {
        Interface {
            name: format!("{}{ifname}", Self::NAME_PREFIX),
            mac: Some(format!(
                "lease={},table={},eni={},vlan={},mtu={}",
                self.lease_id, self.route_table, self.eni_id, self.vlan_id, self.mtu
            )),
            ..Interface::default()
        }
    }

    /// The record in an interface's `mac`, if the interface is a record. Unknown keys are ignored
    /// (a newer plugin may add some); a record without a valid `lease` is none.
    pub fn from_interface(interface: &Interface) -> Option<LeaseRecord> {
        if !interface.name.starts_with(Self::NAME_PREFIX) || interface.in_sandbox() {
            return None;
        }
        let fields: BTreeMap<&str, &str> = interface
            .mac
            .as_deref()?
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let number = |key: &str| fields.get(key).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        Some(LeaseRecord {
            lease_id: fields.get("lease")?.parse().ok()?,
            route_table: number("table"),
            eni_id: fields.get("eni").map(|s| (*s).to_owned()).unwrap_or_default(),
            vlan_id: number("vlan"),
            mtu: number("mtu"),
        })
    }

    /// The record for attachment interface `ifname` in `result`; failing that, the only record.
    pub fn find(result: &SuccessResult, ifname: &str) -> Option<LeaseRecord> {
        let name = format!("{}{ifname}", Self::NAME_PREFIX);
        if let Some(found) = result.interfaces.iter().find(|i| i.name == name) {
            return LeaseRecord::from_interface(found);
        }
        let mut records = result.interfaces.iter().filter_map(LeaseRecord::from_interface);
        match (records.next(), records.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }
}

/// One attachment the runtime still holds (`cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidAttachment {
    /// CNI_CONTAINERID of the ADD.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// CNI_IFNAME of the ADD.
    pub ifname: String,
}

/// The keys of `CNI_ARGS` this plugin reads (the kubelet's and the container runtimes').
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub pod_infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub pod_uid: Option<String>,
    /// `IgnoreUnknown`: other keys are ignored rather than an error.
    pub ignore_unknown: bool,
    /// The other keys, when `IgnoreUnknown` allowed them.
    pub other: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parses `CNI_ARGS` (`KEY=VALUE;KEY=VALUE`). As libcni's `LoadArgs`, a key this plugin does
    /// not know is an error unless `IgnoreUnknown` is `1` or `true`; empty segments are skipped.
    ///
    /// # Errors
    ///
    /// Code 4 naming CNI_ARGS and the offending pair.
    pub fn parse(args: &str) -> Result<CniArgs, CniError> {
        let invalid = |what: String| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS is invalid: {what}; it must be KEY=VALUE pairs separated by ';'"),
            )
        };
        let mut parsed = CniArgs::default();
        let mut unknown = Vec::new();
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("{:?} is not KEY=VALUE", clip(pair, 64))))?;
            let value = value.to_owned();
            match key {
                "K8S_POD_NAMESPACE" => parsed.pod_namespace = Some(value),
                "K8S_POD_NAME" => parsed.pod_name = Some(value),
                "K8S_POD_INFRA_CONTAINER_ID" => parsed.pod_infra_container_id = Some(value),
                "K8S_POD_UID" => parsed.pod_uid = Some(value),
                "IgnoreUnknown" => {
                    parsed.ignore_unknown = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => {
                            return Err(invalid(format!(
                                "IgnoreUnknown={:?} is not 1, true, 0 or false",
                                clip(&value, 64)
                            )));
                        }
                    }
                }
                _ => unknown.push((key.to_owned(), value)),
            }
        }
        if let Some((key, _)) = unknown.first()
            && !parsed.ignore_unknown
        {
            return Err(invalid(format!(
                "unknown key {:?} (add IgnoreUnknown=1 to pass keys this plugin does not read)",
                clip(key, 64)
            )));
        }
        parsed.other = unknown.into_iter().collect();
        Ok(parsed)
    }
}

/// The CNI environment of one invocation. Empty variables count as unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`, as given.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`, unparsed.
    pub args: Option<String>,
    /// `CNI_PATH`.
    pub path: Option<String>,
}

impl Env {
    /// Reads the CNI variables through `get` (`std::env::var` in the binary, a map in tests).
    pub fn read(get: &dyn Fn(&str) -> Option<String>) -> Env {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }

    /// The command, which must be one of the spec's.
    ///
    /// # Errors
    ///
    /// Code 4 naming CNI_COMMAND.
    pub fn command(&self) -> Result<Command, CniError> {
        let Some(command) = self.command.as_deref() else {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                "CNI_COMMAND is not set; it must be ADD, DEL, CHECK, STATUS, GC or VERSION",
            ));
        };
        Command::parse(command).ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                format!(
                    "CNI_COMMAND={:?} is not a CNI command; it must be ADD, DEL, CHECK, STATUS, GC or VERSION",
                    clip(command, 64)
                ),
            )
        })
    }

    /// The validated attachment variables a command needs: CNI_CONTAINERID and CNI_IFNAME always,
    /// CNI_NETNS when `need_netns`.
    ///
    /// # Errors
    ///
    /// Code 4 naming every missing or malformed variable.
    pub fn attachment(&self, need_netns: bool) -> Result<AttachmentEnv, CniError> {
        let mut problems = Vec::new();
        match self.container_id.as_deref() {
            None => problems.push("CNI_CONTAINERID is not set".to_owned()),
            Some(id) if !valid_container_id(id) => problems.push(format!(
                "CNI_CONTAINERID={:?} must start with a letter or digit followed by letters, digits, '_', '.' or '-'",
                clip(id, 64)
            )),
            Some(_) => {}
        }
        match self.ifname.as_deref() {
            None => problems.push("CNI_IFNAME is not set".to_owned()),
            Some(name) if !valid_ifname(name) => problems.push(format!(
                "CNI_IFNAME={:?} is not an interface name (1-15 bytes, no '/', ':' or whitespace, not '.' or '..')",
                clip(name, 64)
            )),
            Some(_) => {}
        }
        if need_netns && self.netns.is_none() {
            problems.push("CNI_NETNS is not set".to_owned());
        }
        let args = match self.args.as_deref().map(CniArgs::parse).transpose() {
            Ok(args) => args.unwrap_or_default(),
            Err(error) => {
                problems.push(error.msg);
                CniArgs::default()
            }
        };
        if !problems.is_empty() {
            return Err(CniError::new(ErrorCode::InvalidEnvironment, problems.join("; ")));
        }
        Ok(AttachmentEnv {
            container_id: self.container_id.clone().unwrap_or_default(),
            ifname: self.ifname.clone().unwrap_or_default(),
            netns: self.netns.clone(),
            args,
        })
    }
}

/// The variables of an attachment command (ADD, DEL, CHECK), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentEnv {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_NETNS (optional for DEL).
    pub netns: Option<String>,
    /// CNI_ARGS.
    pub args: CniArgs,
}

/// libcni's container id rule: a letter or digit, then letters, digits, `_`, `.` or `-`.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// libcni's interface name rule: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// `s` cut to at most `max` characters (on a character boundary), for messages.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}
