//! The server's configuration: defaults that let `ipam-server` run with no flags, a TOML file,
//! and flags / environment (read only by `main.rs`, which merges them into a [`ServerConfig`]).
//!
//! ```text
//!   defaults ◀── TOML file (--config) ◀── flags / IPAM_* environment      (right wins)
//!        └──────────────▶ ServerConfig::validate() ──▶ Server::start
//! ```
//!
//! Bootstrap: with no `peers` a first start initializes a single-replica cluster; with `peers`
//! the replica with the lowest id initializes the cluster with all of them (like etcd's
//! `initial-cluster`); with `join` the replica waits to be added (`ipamctl cluster add-learner`).
//! A replica whose log already has a membership ignores all three.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::raft::types::NodeId;
use crate::telemetry::TelemetryConfig;

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema (unknown keys included).
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line.
        source: Box<toml::de::Error>,
    },
    /// A peer is not written `ID=HOST:PORT`.
    #[error("peer {given:?}: {why} (write ID=HOST:PORT, e.g. 2=10.0.0.2:7400)")]
    Peer {
        /// As given.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// A value is out of range or contradicts another.
    #[error("{field}: {why}")]
    Invalid {
        /// The setting, as the file spells it.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// `Result` with [`ConfigError`].
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// One replica of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its Raft node id (at least 1).
    pub id: NodeId,
    /// Its advertised gRPC address, "host:port".
    pub address: String,
}

impl std::str::FromStr for Peer {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| ConfigError::Peer {
            given: s.to_owned(),
            why: why.to_owned(),
        };
        let (id, address) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
        let id: NodeId = id.trim().parse().map_err(|_| bad("the id is not a number"))?;
        if id == 0 {
            return Err(bad("ids start at 1"));
        }
        let address = address.trim();
        check_host_port(address).map_err(|why| bad(&why))?;
        Ok(Self {
            id,
            address: address.to_owned(),
        })
    }
}

impl<'de> Deserialize<'de> for Peer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks that `address` is `host:port` with a non-empty host and a non-zero port.
fn check_host_port(address: &str) -> std::result::Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} has no port"))?;
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{address:?}: the port must be 1-65535")),
        Ok(_) => Ok(()),
    }
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// The leader's heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// The shortest election timeout, ms.
    pub election_timeout_min_ms: u64,
    /// The longest election timeout, ms.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and allow the log before it to be purged) after this many entries.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind the last snapshot, so a briefly lagging follower catches up from
    /// the log rather than a snapshot.
    pub keep_entries_behind_snapshot: u64,
    /// The bytes of one snapshot chunk on the wire.
    pub snapshot_chunk_bytes: u64,
    /// How long installing one snapshot chunk may take, ms. The last chunk's answer waits for
    /// the whole ledger to be imported, so this must cover that (openraft's 200 ms default is far
    /// too short; a leader that times out sends the whole snapshot again).
    pub install_snapshot_timeout_ms: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_after_entries: 20_000,
            keep_entries_behind_snapshot: 5_000,
            snapshot_chunk_bytes: 1 << 20,
            install_snapshot_timeout_ms: 120_000,
        }
    }
}

/// The leader-only controllers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllersConfig {
    /// How often the leader looks for expired nodes and finished cooldowns, ms.
    pub tick_ms: u64,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        Self { tick_ms: 500 }
    }
}

/// The ledger's retention.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// How long events are kept, e.g. "400d"; unset keeps everything (the default). Events that
    /// explain a lease still live are kept until it ends, however old. Each replica prunes its
    /// own copy: give every replica the same value.
    #[serde(deserialize_with = "human_duration")]
    pub retention: Option<Duration>,
    /// How often a replica with a retention prunes, ms.
    pub prune_interval_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            retention: None,
            prune_interval_ms: 60_000,
        }
    }
}

/// A duration written as humantime does ("90d", "1h 30m").
fn human_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"90d\" or \"12h\""
        ))
    })
}

/// Everything a replica needs to start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// This replica's Raft node id (at least 1; a replica that lost its disk rejoins under a new
    /// id).
    pub id: NodeId,
    /// Where the gRPC services listen.
    pub listen: SocketAddr,
    /// The address the other replicas and the clients use ("host:port"); `listen` when unset.
    pub advertise: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` listen; none when unset.
    pub http_listen: Option<SocketAddr>,
    /// The directory of the sled database and the snapshots.
    pub data_dir: PathBuf,
    /// The initial voters (including this replica), for the first start of a multi-replica
    /// cluster.
    pub peers: Vec<Peer>,
    /// Start without initializing anything and wait to be added to an existing cluster.
    pub join: bool,
    /// Raft timing and compaction.
    pub raft: RaftConfig,
    /// The leader-only controllers.
    pub controllers: ControllersConfig,
    /// The ledger's retention.
    pub ledger: LedgerConfig,
    /// Logs, traces.
    pub telemetry: TelemetryConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise: None,
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7401))),
            data_dir: PathBuf::from("ipam-data"),
            peers: Vec::new(),
            join: false,
            raft: RaftConfig::default(),
            controllers: ControllersConfig::default(),
            ledger: LedgerConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// How a replica with an empty log starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Initialize a cluster with these voters (by id, their addresses).
    Initialize(BTreeMap<NodeId, String>),
    /// Wait: another replica initializes, or an operator adds this one.
    Wait,
}

impl ServerConfig {
    /// Reads a TOML file over the defaults.
    ///
    /// # Errors
    ///
    /// The file cannot be read or does not match the schema.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML over the defaults.
    ///
    /// # Errors
    ///
    /// The text does not match the schema (unknown keys included).
    pub fn from_toml(text: &str) -> std::result::Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The address this replica gives the others.
    pub fn advertise(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// What a first start does; `advertise` is this replica's address as bound.
    pub fn bootstrap(&self, advertise: &str) -> Bootstrap {
        if self.join {
            return Bootstrap::Wait;
        }
        if self.peers.is_empty() {
            return Bootstrap::Initialize(BTreeMap::from([(self.id, advertise.to_owned())]));
        }
        let lowest = self.peers.iter().map(|p| p.id).min();
        if lowest == Some(self.id) {
            Bootstrap::Initialize(self.peers.iter().map(|p| (p.id, p.address.clone())).collect())
        } else {
            Bootstrap::Wait
        }
    }

    /// openraft's config from [`RaftConfig`].
    ///
    /// # Errors
    ///
    /// openraft refuses the combination.
    pub fn openraft(&self) -> Result<openraft::Config> {
        let r = &self.raft;
        let config = openraft::Config {
            cluster_name: "ipam".to_owned(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            install_snapshot_timeout: r.install_snapshot_timeout_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
            max_in_snapshot_log_to_keep: r.keep_entries_behind_snapshot,
            snapshot_max_chunk_size: r.snapshot_chunk_bytes,
            ..openraft::Config::default()
        };
        config.validate().map_err(|e| ConfigError::Invalid {
            field: "raft",
            why: e.to_string(),
        })
    }

    /// Checks everything that can be checked before starting.
    ///
    /// # Errors
    ///
    /// The first problem found, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, why: String| Err(ConfigError::Invalid { field, why });
        if self.id == 0 {
            return invalid("id", "ids start at 1".to_owned());
        }
        if let Some(advertise) = &self.advertise {
            check_host_port(advertise).map_err(|why| ConfigError::Invalid {
                field: "advertise",
                why,
            })?;
        }
        // Port 0 (any free port) twice is fine: each bind gets its own.
        if self.http_listen == Some(self.listen) && self.listen.port() != 0 {
            return invalid(
                "http_listen",
                format!("{} is already the gRPC listen address", self.listen),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty".to_owned());
        }
        if self.data_dir.is_file() {
            return invalid(
                "data_dir",
                format!("{} is a file, not a directory", self.data_dir.display()),
            );
        }
        let mut ids = std::collections::BTreeSet::new();
        for peer in &self.peers {
            if !ids.insert(peer.id) {
                return invalid("peers", format!("id {} appears twice", peer.id));
            }
        }
        if !self.peers.is_empty() && !ids.contains(&self.id) {
            return invalid("peers", format!("this replica's id {} is not among the peers", self.id));
        }
        if self.join && !self.peers.is_empty() {
            return invalid(
                "join",
                "give either peers (a new cluster) or join (an existing one), not both".to_owned(),
            );
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.heartbeat_ms >= r.election_timeout_min_ms {
            return invalid(
                "raft.heartbeat_ms",
                format!(
                    "{} must be above 0 and below raft.election_timeout_min_ms",
                    r.heartbeat_ms
                ),
            );
        }
        if r.snapshot_after_entries == 0 {
            return invalid("raft.snapshot_after_entries", "must be at least 1".to_owned());
        }
        if !(1024..=16 << 20).contains(&r.snapshot_chunk_bytes) {
            return invalid(
                "raft.snapshot_chunk_bytes",
                format!("{} must be 1024 to 16777216 (16 MiB)", r.snapshot_chunk_bytes),
            );
        }
        if self.controllers.tick_ms == 0 {
            return invalid("controllers.tick_ms", "must be at least 1".to_owned());
        }
        if self.ledger.retention.is_some_and(|r| r < Duration::from_secs(1)) {
            return invalid(
                "ledger.retention",
                "must be at least 1s (unset keeps everything)".to_owned(),
            );
        }
        if self.ledger.prune_interval_ms < 100 {
            return invalid("ledger.prune_interval_ms", "must be at least 100".to_owned());
        }
        self.openraft()?;
        Ok(())
    }

    /// The controllers' tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.controllers.tick_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bootstrap_a_single_replica() {
        let config = ServerConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(
            config.bootstrap("127.0.0.1:7400"),
            Bootstrap::Initialize(BTreeMap::from([(1, "127.0.0.1:7400".to_owned())]))
        );
    }

    #[test]
    fn the_lowest_peer_initializes_and_the_others_wait() {
        let text = r#"
            id = 2
            listen = "127.0.0.2:7400"
            peers = ["1=127.0.0.1:7400", "2=127.0.0.2:7400", "3=127.0.0.3:7400"]
        "#;
        let config = ServerConfig::from_toml(text).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.validate().is_ok());
        assert_eq!(config.bootstrap("127.0.0.1:7400"), Bootstrap::Wait);
        let first = ServerConfig { id: 1, ..config };
        let Bootstrap::Initialize(members) = first.bootstrap("127.0.0.1:7400") else {
            panic!("replica 1 initializes");
        };
        assert_eq!(members.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = ServerConfig::from_toml("id = 1\nlisten_address = \"x\"")
            .err()
            .map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("listen_address")),
            "{error:?}"
        );
        let nested = ServerConfig::from_toml("[raft]\nheartbeat = 5")
            .err()
            .map(|e| e.to_string());
        assert!(nested.as_deref().is_some_and(|e| e.contains("heartbeat")), "{nested:?}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: Vec<(ServerConfig, &str)> = vec![
            (
                ServerConfig {
                    id: 0,
                    ..ServerConfig::default()
                },
                "id",
            ),
            (
                ServerConfig {
                    advertise: Some("no-port".to_owned()),
                    ..ServerConfig::default()
                },
                "advertise",
            ),
            (
                ServerConfig {
                    http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7400))),
                    ..ServerConfig::default()
                },
                "http_listen",
            ),
            (
                ServerConfig {
                    peers: vec!["2=127.0.0.2:7400".parse().unwrap_or_else(|e| panic!("{e}"))],
                    ..ServerConfig::default()
                },
                "peers",
            ),
            (
                ServerConfig {
                    raft: RaftConfig {
                        heartbeat_ms: 600,
                        ..RaftConfig::default()
                    },
                    ..ServerConfig::default()
                },
                "raft.heartbeat_ms",
            ),
            (
                ServerConfig {
                    raft: RaftConfig {
                        snapshot_chunk_bytes: 64 << 20,
                        ..RaftConfig::default()
                    },
                    ..ServerConfig::default()
                },
                "raft.snapshot_chunk_bytes",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(ConfigError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn peers_parse_or_say_what_is_wrong() {
        assert_eq!(
            "3=10.0.0.3:7400".parse::<Peer>().ok(),
            Some(Peer {
                id: 3,
                address: "10.0.0.3:7400".to_owned()
            })
        );
        for (bad, why) in [
            ("10.0.0.3:7400", "no '='"),
            ("x=10.0.0.3:7400", "not a number"),
            ("0=10.0.0.3:7400", "start at 1"),
            ("1=10.0.0.3", "no port"),
            ("1=:7400", "no host"),
            ("1=h:0", "port"),
        ] {
            let error = bad.parse::<Peer>().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
