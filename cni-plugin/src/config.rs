//! The network configuration on stdin: the spec's standard keys and the plugin's own.
//!
//! ```text
//!   main plugin:  { "cniVersion", "name", "type": "ipam-eks", <our keys>, <standard keys> }
//!   IPAM only:    { "cniVersion", "name", "type": "bridge" | "ptp", <theirs>,
//!                   "ipam": { "type": "ipam-eks", <our keys> } }
//! ```
//!
//! Our keys are closed (an unknown one is CNI error 2 with its key and value); the spec's keys
//! (`cniVersion`, `name`, `type`, `ipam`, `dns`, `prevResult`, `runtimeConfig`, `capabilities`,
//! `args`, `cni.dev/*`, …) are always accepted. In IPAM-only mode the top level belongs to the
//! main plugin and is not checked.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Map;
use serde_json::Value;

use crate::spec::CniError;
use crate::spec::Dns;
use crate::spec::ErrorCode;
use crate::spec::ValidAttachment;
use crate::spec::Version;
use crate::spec::clip;

/// The plugin's `type` (and binary name).
pub const PLUGIN_TYPE: &str = "ipam-eks";

/// Where the node agent serves `agent.v1.CniBackend` unless `socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ipam-eks/agent.sock";

/// How long a command waits for the agent unless `timeoutSeconds` says otherwise. An ADD may wait
/// for the agent to grow its warm pool (10 s by default), so this is well above that.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;

/// The MTU when neither the configuration nor the agent names one (an ENI's jumbo frames).
pub const DEFAULT_MTU: u32 = 9001;

/// The plugin's own keys, as they are on the wire.
pub const PLUGIN_KEYS: [&str; 5] = ["socket", "mtu", "logFile", "logLevel", "timeoutSeconds"];

/// Keys the spec defines for a plugin configuration (runtime-inserted, well-known, or of the
/// network list that some runtimes pass through). `cni.dev/*` keys are accepted by prefix.
pub const STANDARD_KEYS: [&str; 14] = [
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "ipam",
    "dns",
    "prevResult",
    "runtimeConfig",
    "capabilities",
    "args",
    "ipMasq",
    "disableCheck",
    "disableGC",
    "loadOnlyInlinedPlugins",
];

/// A configuration error, by the CNI code it answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// stdin is not a JSON object (code 6).
    #[error("the network configuration on stdin is not a JSON object: {0}")]
    Decode(String),
    /// `cniVersion` is missing or not a version this plugin speaks (code 1).
    #[error("{0}")]
    Version(String),
    /// A key the plugin does not support, with its value (code 2).
    #[error("unsupported field {key:?} (value {value}) in the ipam-eks configuration; {hint}")]
    UnsupportedField {
        /// The key.
        key: String,
        /// Its JSON value, clipped.
        value: String,
        /// What to do about it.
        hint: String,
    },
    /// A key has the wrong type or an invalid value (code 7).
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// The CNI code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ConfigError::Decode(_) => ErrorCode::Decode,
            ConfigError::Version(_) => ErrorCode::IncompatibleVersion,
            ConfigError::UnsupportedField { .. } => ErrorCode::UnsupportedField,
            ConfigError::Invalid(_) => ErrorCode::InvalidConfig,
        }
    }
}

impl From<ConfigError> for CniError {
    fn from(error: ConfigError) -> Self {
        CniError::new(error.code(), error.to_string())
    }
}

/// A result alias for configuration parsing.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// How the plugin is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `type` is ipam-eks: the plugin leases the address and plumbs the pod.
    Main,
    /// `ipam.type` is ipam-eks under another plugin (bridge, ptp): leases only; no interfaces.
    IpamOnly,
}

/// How much the plugin logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Failures only.
    Error,
    /// Failures and things undone (e.g. DEL with the agent down).
    Warn,
    /// One line per command and its outcome.
    #[default]
    Info,
    /// Everything, including the agent's replies.
    Debug,
}

/// The plugin's own settings (top level in main mode, under `ipam` in IPAM-only mode).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginConfig {
    /// The node agent's unix socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The pods' MTU; unset: the agent's.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Where logs go (appended); unset: stderr.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// How much is logged.
    #[serde(default)]
    pub log_level: LogLevel,
    /// How long one command waits for the agent, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            mtu: None,
            log_file: None,
            log_level: LogLevel::default(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
        }
    }
}

impl PluginConfig {
    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] saying which key and what is allowed.
    pub fn validate(&self) -> Result<()> {
        if !self.socket.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "socket {:?} must be an absolute path (default {DEFAULT_SOCKET})",
                self.socket
            )));
        }
        if let Some(mtu) = self.mtu
            && !(576..=9001).contains(&mtu)
        {
            return Err(ConfigError::Invalid(format!(
                "mtu {mtu} is out of range; use 576..=9001 or leave it unset for the agent's"
            )));
        }
        if let Some(file) = &self.log_file
            && !file.is_absolute()
        {
            return Err(ConfigError::Invalid(format!(
                "logFile {file:?} must be an absolute path"
            )));
        }
        if !(1..=600).contains(&self.timeout_seconds) {
            return Err(ConfigError::Invalid(format!(
                "timeoutSeconds {} is out of range; use 1..=600 (default {DEFAULT_TIMEOUT_SECONDS})",
                self.timeout_seconds
            )));
        }
        Ok(())
    }
}

/// A parsed, validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The protocol version the runtime selected; results are in its format.
    pub cni_version: Version,
    /// The network's name.
    pub name: String,
    /// Main plugin or IPAM only.
    pub mode: Mode,
    /// The plugin's settings.
    pub plugin: PluginConfig,
    /// The network's DNS settings, copied into ADD's result.
    pub dns: Dns,
    /// The previous result (ADD in a chain; DEL; CHECK), unparsed: DEL must work even when it is
    /// malformed.
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// The version errors answer in, as far as `stdin` says: its `cniVersion` if supported, else the
/// plugin's own.
pub fn version_hint(stdin: &[u8]) -> Version {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().and_then(Version::parse))
        .unwrap_or(Version::CURRENT)
}

/// Parses and validates the configuration on stdin.
///
/// # Errors
///
/// A [`ConfigError`] whose code is the spec's: 6 not JSON, 1 version, 2 unknown key, 7 invalid.
pub fn parse(stdin: &[u8]) -> Result<NetConf> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| ConfigError::Decode(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(ConfigError::Decode(format!("found {}", kind(&value))));
    };
    let cni_version = match top.get("cniVersion") {
        None => {
            return Err(ConfigError::Version(format!(
                "cniVersion is missing; ipam-eks supports {}",
                Version::supported_list()
            )));
        }
        Some(Value::String(v)) => Version::parse(v).ok_or_else(|| {
            ConfigError::Version(format!(
                "cniVersion {:?} is not supported; ipam-eks supports {} (set cniVersion to one of them)",
                clip(v, 32),
                Version::supported_list()
            ))
        })?,
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "cniVersion must be a string, not {}",
                kind(other)
            )));
        }
    };
    let name = optional_string(&top, "name")?.unwrap_or_default();
    let plugin_type = optional_string(&top, "type")?
        .ok_or_else(|| ConfigError::Invalid("type is missing; it must name the plugin (ipam-eks)".to_owned()))?;
    let ipam = match top.get("ipam") {
        None | Some(Value::Null) => None,
        Some(Value::Object(ipam)) => Some(ipam),
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "ipam must be an object, not {}",
                kind(other)
            )));
        }
    };
    let ipam_type = match ipam.and_then(|i| i.get("type")) {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "ipam.type must be a string, not {}",
                kind(other)
            )));
        }
    };

    let (mode, plugin) = if plugin_type == PLUGIN_TYPE {
        check_main_keys(&top)?;
        if let Some(ipam) = ipam.filter(|i| !i.is_empty()) {
            return Err(ConfigError::UnsupportedField {
                key: "ipam".to_owned(),
                value: clip(&Value::Object(ipam.clone()).to_string(), 100),
                hint: "as the main plugin ipam-eks leases addresses itself; remove the ipam section".to_owned(),
            });
        }
        (Mode::Main, plugin_config(&top, "")?)
    } else if ipam_type == Some(PLUGIN_TYPE) {
        let mut ours = ipam.cloned().unwrap_or_default();
        ours.remove("type");
        (Mode::IpamOnly, plugin_config(&ours, "ipam.")?)
    } else {
        return Err(ConfigError::Invalid(format!(
            "neither type ({:?}) nor ipam.type ({:?}) is {PLUGIN_TYPE:?}; use \"type\": \"{PLUGIN_TYPE}\" for the \
             main plugin or \"ipam\": {{\"type\": \"{PLUGIN_TYPE}\"}} under bridge or ptp",
            clip(&plugin_type, 32),
            ipam_type.map(|t| clip(t, 32)).unwrap_or_default()
        )));
    };
    plugin.validate()?;

    if mode == Mode::Main && top.get("ipMasq").is_some_and(|v| v != &Value::Bool(false)) {
        return Err(ConfigError::UnsupportedField {
            key: "ipMasq".to_owned(),
            value: clip(&top["ipMasq"].to_string(), 100),
            hint: "the node agent does SNAT for pods; remove ipMasq".to_owned(),
        });
    }
    let dns = match top.get("dns") {
        None | Some(Value::Null) => Dns::default(),
        Some(dns) => Dns::deserialize(dns).map_err(|e| {
            ConfigError::Invalid(format!(
                "dns is invalid ({e}); it takes nameservers, domain, search and options"
            ))
        })?,
    };
    let prev_result = match top.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(prev @ Value::Object(_)) => Some(prev.clone()),
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "prevResult must be an object (a CNI result), not {}",
                kind(other)
            )));
        }
    };
    let valid_attachments = match top.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => None,
        Some(list) => Some(valid_attachments(list)?),
    };
    Ok(NetConf {
        cni_version,
        name,
        mode,
        plugin,
        dns,
        prev_result,
        valid_attachments,
    })
}

/// In main mode every top-level key is either the spec's or ours.
fn check_main_keys(top: &Map<String, Value>) -> Result<()> {
    for (key, value) in top {
        let known =
            STANDARD_KEYS.contains(&key.as_str()) || PLUGIN_KEYS.contains(&key.as_str()) || key.starts_with("cni.dev/");
        if !known {
            return Err(ConfigError::UnsupportedField {
                key: key.clone(),
                value: clip(&value.to_string(), 100),
                hint: format!("remove it (the plugin's keys are {})", PLUGIN_KEYS.join(", ")),
            });
        }
    }
    Ok(())
}

/// The plugin's keys out of `object`, where `prefix` is how messages name their place.
fn plugin_config(object: &Map<String, Value>, prefix: &str) -> Result<PluginConfig> {
    let mut ours = Map::new();
    for (key, value) in object {
        if PLUGIN_KEYS.contains(&key.as_str()) {
            ours.insert(key.clone(), value.clone());
        } else if !prefix.is_empty() {
            // Under ipam the whole section is ours: anything else is unsupported.
            return Err(ConfigError::UnsupportedField {
                key: format!("{prefix}{key}"),
                value: clip(&value.to_string(), 100),
                hint: format!("remove it (the plugin's keys are {})", PLUGIN_KEYS.join(", ")),
            });
        }
    }
    PluginConfig::deserialize(Value::Object(ours))
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", if prefix.is_empty() { "config" } else { "ipam" })))
}

fn valid_attachments(list: &Value) -> Result<Vec<ValidAttachment>> {
    let attachments = Vec::<ValidAttachment>::deserialize(list).map_err(|e| {
        ConfigError::Invalid(format!(
            "cni.dev/valid-attachments must be a list of {{\"containerID\", \"ifname\"}} objects: {e}"
        ))
    })?;
    if let Some(bad) = attachments
        .iter()
        .find(|a| a.container_id.is_empty() || a.ifname.is_empty())
    {
        return Err(ConfigError::Invalid(format!(
            "cni.dev/valid-attachments has an entry with an empty containerID or ifname ({:?}, {:?})",
            clip(&bad.container_id, 64),
            clip(&bad.ifname, 16)
        )));
    }
    Ok(attachments)
}

fn optional_string(top: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match top.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ConfigError::Invalid(format!(
            "{key} must be a string, not {}",
            kind(other)
        ))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
