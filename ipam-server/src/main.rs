//! `ipam-server`: one replica of the IPAM cluster.
//!
//! With no flags it runs a single-replica cluster on a sled directory `./ipam-data`, serving gRPC
//! on 127.0.0.1:7400 and `/metrics` on 127.0.0.1:7401. Settings come from defaults, then the
//! TOML file of `--config`, then flags and `IPAM_*` environment variables. A bad configuration
//! exits with status 2 and a message naming the setting; a failure while running exits with 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ipam_server::config::Peer;
use ipam_server::config::ServerConfig;
use ipam_server::server;
use ipam_server::server::ServerError;
use ipam_server::telemetry;

/// One replica of the IPAM cluster (EKS custom networking, security groups for pods).
///
/// With no flags: a single-replica cluster in ./ipam-data, gRPC on 127.0.0.1:7400, HTTP
/// (/metrics, /healthz, /readyz) on 127.0.0.1:7401.
#[derive(Debug, Parser)]
#[command(name = "ipam-server", version)]
struct Args {
    /// A TOML config file; flags and environment override it.
    #[arg(long, env = "IPAM_CONFIG")]
    config: Option<PathBuf>,
    /// This replica's Raft node id (at least 1).
    #[arg(long, env = "IPAM_ID")]
    id: Option<u64>,
    /// Where gRPC listens.
    #[arg(long, env = "IPAM_LISTEN")]
    listen: Option<SocketAddr>,
    /// The address the others use to reach this replica ("host:port"); defaults to --listen.
    #[arg(long, env = "IPAM_ADVERTISE")]
    advertise: Option<String>,
    /// Where /metrics, /healthz and /readyz listen.
    #[arg(long, env = "IPAM_HTTP_LISTEN", conflicts_with = "no_http")]
    http_listen: Option<SocketAddr>,
    /// Serve no HTTP endpoints.
    #[arg(long, env = "IPAM_NO_HTTP")]
    no_http: bool,
    /// The directory of the database and snapshots.
    #[arg(long, env = "IPAM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The initial voters of a new cluster, ID=HOST:PORT, comma-separated, this replica
    /// included; the lowest id initializes the cluster on first start.
    #[arg(long, env = "IPAM_PEERS", value_delimiter = ',')]
    peers: Vec<Peer>,
    /// Do not initialize anything: wait to be added with `ipamctl cluster add-learner`.
    #[arg(long, env = "IPAM_JOIN")]
    join: bool,
    /// Log filter, RUST_LOG syntax (e.g. "info,ipam_server=debug"); RUST_LOG is read too.
    #[arg(long, env = "IPAM_LOG")]
    log: Option<String>,
    /// Logs as JSON lines.
    #[arg(long, env = "IPAM_LOG_JSON")]
    log_json: bool,
    /// Export traces over OTLP/gRPC to this endpoint (e.g. http://127.0.0.1:4317).
    #[arg(long, env = "IPAM_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Build a snapshot (allowing the log before it to be purged) after this many entries.
    #[arg(long, env = "IPAM_SNAPSHOT_AFTER_ENTRIES")]
    snapshot_after_entries: Option<u64>,
    /// Log entries kept behind a snapshot for lagging followers.
    #[arg(long, env = "IPAM_KEEP_ENTRIES_BEHIND_SNAPSHOT")]
    keep_entries_behind_snapshot: Option<u64>,
    /// How long the ledger keeps events (e.g. 400d); unset keeps everything.
    #[arg(long, env = "IPAM_LEDGER_RETENTION", value_parser = humantime::parse_duration)]
    ledger_retention: Option<std::time::Duration>,
}

impl Args {
    /// Defaults, then the file, then these flags.
    fn into_config(self) -> Result<ServerConfig, ServerError> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::from_file(path)?,
            None => ServerConfig::default(),
        };
        if let Some(id) = self.id {
            config.id = id;
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if self.advertise.is_some() {
            config.advertise = self.advertise;
        }
        if self.no_http {
            config.http_listen = None;
        } else if self.http_listen.is_some() {
            config.http_listen = self.http_listen;
        }
        if let Some(data_dir) = self.data_dir {
            config.data_dir = data_dir;
        }
        if !self.peers.is_empty() {
            config.peers = self.peers;
        }
        config.join |= self.join;
        if let Some(filter) = self.log.or_else(|| std::env::var("RUST_LOG").ok()) {
            config.telemetry.filter = filter;
        }
        config.telemetry.json |= self.log_json;
        if self.otlp_endpoint.is_some() {
            config.telemetry.otlp_endpoint = self.otlp_endpoint;
        }
        if let Some(n) = self.snapshot_after_entries {
            config.raft.snapshot_after_entries = n;
        }
        if let Some(n) = self.keep_entries_behind_snapshot {
            config.raft.keep_entries_behind_snapshot = n;
        }
        if self.ledger_retention.is_some() {
            config.ledger.retention = self.ledger_retention;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let config = match Args::parse().into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ipam-server: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ipam-server: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let _telemetry = match telemetry::init(&config.telemetry) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("ipam-server: telemetry: {error}");
                return ExitCode::from(2);
            }
        };
        let running = match server::start(config).await {
            Ok(running) => running,
            Err(error) => {
                tracing::error!(%error, "replica did not start");
                eprintln!("ipam-server: {error}");
                return match error {
                    ServerError::Config(_) => ExitCode::from(2),
                    _ => ExitCode::FAILURE,
                };
            }
        };
        match running.serve_until(shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("replica stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(%error, "replica failed");
                eprintln!("ipam-server: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Completes on SIGINT or SIGTERM (what Kubernetes sends before killing a pod).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the replica");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
