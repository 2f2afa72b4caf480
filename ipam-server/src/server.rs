//! Starting and stopping one replica: storage, Raft, the gRPC services, the HTTP endpoints and
//! the controllers.
//!
//! ```text
//!   Server::start(config)
//!     data_dir/sled        ── LogStore + StateMachine (one sled::Db)
//!     data_dir/snapshots   ── snapshot files (state + ledger)
//!     openraft::Raft ── grpc_network::NetworkFactory (peers by address)
//!     tonic on `listen`    ── RaftService, AgentService, AdminService, AuditService
//!     axum on `http_listen`── /metrics /healthz /readyz
//!     controllers          ── tick (expiry, cooldowns), leader only
//!     bootstrap            ── initialize (single replica, or lowest peer id) or wait
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipam_proto::ipam::v1::ClusterStatusRequest;
use ipam_proto::ipam::v1::admin_service_client::AdminServiceClient;
use ipam_proto::ipam::v1::admin_service_server::AdminServiceServer;
use ipam_proto::ipam::v1::agent_service_server::AgentServiceServer;
use ipam_proto::ipam::v1::audit_service_server::AuditServiceServer;
use ipam_proto::ipam::v1::raft_service_server::RaftServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::server::TcpIncoming;

use crate::config::Bootstrap;
use crate::config::ConfigError;
use crate::config::ServerConfig;
use crate::controllers;
use crate::grpc::admin::AdminGrpc;
use crate::grpc::agent::AgentGrpc;
use crate::grpc::audit::AuditGrpc;
use crate::grpc::raft::RaftGrpc;
use crate::http;
use crate::http::Health;
use crate::http::Readiness;
use crate::ledger::retention::Retention;
use crate::metrics;
use crate::metrics::GrpcMetricsLayer;
use crate::metrics::Metrics;
use crate::metrics::SubnetCounts;
use crate::raft::LogStore;
use crate::raft::StateMachine;
use crate::raft::grpc_network::NetworkFactory;
use crate::raft::grpc_network::Peers;
use crate::raft::log_store::LogStoreError;
use crate::raft::network::Raft;
use crate::raft::state_machine::StateMachineError;
use crate::replica::Replica;
use crate::replica::ReplicaError;

/// Why a replica did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// The data directory cannot be created or used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// sled did not open (another process may hold the directory).
    #[error("cannot open the database in {path}: {source}")]
    Sled {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: sled::Error,
    },
    /// The Raft log does not open.
    #[error("raft log: {0}")]
    Log(#[from] LogStoreError),
    /// The state machine does not open.
    #[error("state machine: {0}")]
    StateMachine(#[from] StateMachineError),
    /// An address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// openraft did not start.
    #[error("raft: {0}")]
    Raft(String),
    /// Bootstrapping the cluster failed.
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] ReplicaError),
    /// A serving task failed.
    #[error("serving: {0}")]
    Serve(String),
}

/// `Result` with [`ServerError`].
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// A running replica.
#[derive(Debug)]
pub struct Running {
    replica: Replica,
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<Result<()>>,
}

impl Running {
    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Where the gRPC services listen (the bound address, also when the config asked for port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the HTTP endpoints listen, if anywhere.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Waits until some replica is known as leader, for at most `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        let mut metrics = self.replica.raft().metrics();
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(leader) = metrics.borrow().current_leader {
                    return Some(leader);
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        });
        found.await.ok().flatten()
    }

    /// Runs until a serving task stops (an error) or `stop` completes, then shuts down.
    ///
    /// # Errors
    ///
    /// A serving task failed.
    pub async fn serve_until(mut self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        let outcome = tokio::select! {
            () = stop => Ok(()),
            Some(ended) = self.tasks.join_next() => match ended {
                Ok(result) => result.and(Err(ServerError::Serve("a serving task ended".to_owned()))),
                Err(join) => Err(ServerError::Serve(format!("a serving task failed: {join}"))),
            },
        };
        self.shutdown().await?;
        outcome
    }

    /// Stops serving, stops Raft, and flushes.
    ///
    /// # Errors
    ///
    /// Raft did not shut down cleanly.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.replica
            .raft()
            .shutdown()
            .await
            .map_err(|e| ServerError::Raft(format!("shutdown: {e}")))?;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// How far behind the leader's commit a replica may be and still call itself ready.
const READY_LAG: u64 = 1_000;

/// Ready = this replica is a member, knows a leader, and has applied close to what is committed.
/// A replica that is catching up (or waiting to be added) is alive but not ready, so a load
/// balancer or Kubernetes sends clients elsewhere.
fn readiness(replica: Replica) -> Health {
    Health::new(move || {
        let metrics = replica.raft().metrics().borrow().clone();
        let member = metrics.membership_config.membership().get_node(&replica.id()).is_some();
        if !member {
            return Readiness::NotReady(
                "not a member of a cluster yet (initialize, or add it as a learner)".to_owned(),
            );
        }
        if metrics.current_leader.is_none() {
            return Readiness::NotReady("no leader known (election in progress?)".to_owned());
        }
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        let last_log = metrics.last_log_index.unwrap_or(0);
        if last_log.saturating_sub(applied) > READY_LAG {
            return Readiness::NotReady(format!("catching up: applied {applied} of {last_log}"));
        }
        Readiness::Ready
    })
}

/// Counts committed binds and releases (by reason) from the ledger as this replica applies them,
/// so the counters say what happened, not what was asked. Events older than this process (the
/// history a snapshot install brings in) are not counted: a counter's rate must not jump because
/// a replica caught up.
fn follow_ledger(
    metrics: Metrics,
    mut ledger: crate::ledger::Ledger,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let started = crate::replica::now_ms();
    tokio::spawn(async move {
        let mut next = ledger.last_seq() + 1;
        loop {
            tokio::select! {
                waited = ledger.wait_for(next) => if waited.is_err() { return },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let Ok(page) = ledger.read(next, 1024) else {
                return;
            };
            if page.is_empty() {
                // A snapshot install is replacing the ledger; wait for it to finish.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if let Some((seq, _)) = page.last() {
                metrics.observe_ledger_seq(*seq);
            }
            for (seq, event) in page {
                next = seq + 1;
                if event.at < started {
                    continue;
                }
                match &event.kind {
                    ipam_core::EventKind::IpBound { .. } => metrics.record_bind(metrics::BindResult::Bound),
                    ipam_core::EventKind::IpReleased { reason, .. } => metrics.record_release(*reason),
                    _ => {}
                }
            }
        }
    })
}

/// A peer among `members` (other than `own_id`) that already belongs to an initialized cluster,
/// asked over AdminService.ClusterStatus. An empty data directory next to such a peer means this
/// replica lost its disk: initializing again under the same id could let it vote without the log
/// it once acknowledged. Peers that do not answer are taken as not initialized (on a first start
/// they are starting too).
async fn existing_cluster(own_id: u64, members: &BTreeMap<u64, String>) -> Option<(u64, String)> {
    for (id, address) in members.iter().filter(|(id, _)| **id != own_id) {
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{address}")) else {
            continue;
        };
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .connect_lazy();
        let answer = AdminServiceClient::new(channel)
            .cluster_status(ClusterStatusRequest {})
            .await;
        if let Ok(info) = answer
            && info.into_inner().cluster.is_some_and(|c| !c.members.is_empty())
        {
            return Some((*id, address.clone()));
        }
    }
    None
}

/// Prunes the ledger every `interval`: events older than `keep` go (see `ledger::retention`).
async fn prune_ledger(
    retention: Retention,
    metrics: Metrics,
    keep: Duration,
    interval: Duration,
    stop: &mut watch::Receiver<bool>,
) {
    let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
    loop {
        let cutoff = crate::replica::now_ms().saturating_sub(keep_ms);
        match retention.prune(cutoff).await {
            Ok(pruned) => {
                metrics.record_pruned(pruned.horizon.seq, pruned.removed);
                if pruned.removed > 0 {
                    tracing::info!(
                        removed = pruned.removed,
                        kept_for_live_leases = pruned.kept,
                        horizon_seq = pruned.horizon.seq,
                        "ledger pruned"
                    );
                }
            }
            Err(error) => tracing::error!(%error, "ledger pruning failed; trying again at the next interval"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Starts a replica as `config` says.
///
/// # Errors
///
/// Invalid config, unusable data directory, an address already in use, or a failed bootstrap.
pub async fn start(config: ServerConfig) -> Result<Running> {
    config.validate()?;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let sled_dir = data_dir.join("sled");
    let db = sled::Config::new()
        .path(&sled_dir)
        .open()
        .map_err(|source| ServerError::Sled { path: sled_dir, source })?;
    let log_store = LogStore::open(&db)?;
    let state_machine = StateMachine::open(&db, data_dir.join("snapshots")).await?;
    let applied = state_machine.applied();
    let applied_for_metrics = state_machine.applied();
    let ledger = state_machine.ledger();
    let retention = state_machine.retention();

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| ServerError::Listen {
        addr: config.listen,
        source,
    })?;
    let advertise = config.advertise.clone().unwrap_or_else(|| grpc_addr.to_string());

    let peers = Peers::default();
    let raft = Raft::new(
        config.id,
        Arc::new(config.openraft()?),
        NetworkFactory::new(peers.clone()),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| ServerError::Raft(e.to_string()))?;
    let replica = Replica::new(config.id, raft, applied, peers);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let metrics = Metrics::new();
    {
        let applied = applied_for_metrics;
        metrics.set_subnet_source(move || {
            // Scrapes run on a blocking thread; a scrape during a snapshot install waits for it.
            let applied = applied.blocking_read();
            Some(SubnetCounts::from_state(&applied.state))
        });
    }
    let raft_metrics = metrics::watch_raft(metrics.clone(), replica.raft().metrics());
    let ledger_metrics = follow_ledger(metrics.clone(), ledger.clone(), shutdown_rx.clone());
    tasks.spawn(async move {
        ledger_metrics
            .await
            .map_err(|e| ServerError::Serve(format!("ledger metrics: {e}")))
    });
    tasks.spawn(async move {
        raft_metrics
            .await
            .map_err(|e| ServerError::Serve(format!("raft metrics: {e}")))
    });

    let router = tonic::transport::Server::builder()
        .layer(GrpcMetricsLayer::new(metrics.clone()))
        .add_service(
            RaftServiceServer::new(RaftGrpc::new(replica.clone()))
                .max_decoding_message_size(crate::raft::grpc_network::MAX_RAFT_MESSAGE),
        )
        .add_service(AgentServiceServer::new(
            AgentGrpc::new(replica.clone()).with_metrics(metrics.clone()),
        ))
        .add_service(AdminServiceServer::new(AdminGrpc::new(
            replica.clone(),
            advertise.clone(),
        )))
        .add_service(AuditServiceServer::new(AuditGrpc::new(replica.clone(), ledger)));
    let mut grpc_shutdown = shutdown_rx.clone();
    tasks.spawn(async move {
        router
            // Requests and answers are small: without TCP_NODELAY, Nagle's algorithm and delayed
            // ACKs hold an answer back ~40 ms.
            .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
                let _ = grpc_shutdown.wait_for(|stop| *stop).await;
            })
            .await
            .map_err(|e| ServerError::Serve(format!("gRPC: {e}")))
    });

    let http_addr = match config.http_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServerError::Listen { addr, source })?;
            let health = readiness(replica.clone());
            let mut http_shutdown = shutdown_rx.clone();
            let shutdown = async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            };
            let metrics = metrics.clone();
            tasks.spawn(async move {
                http::serve(listener, metrics, health, shutdown)
                    .await
                    .map_err(|e| ServerError::Serve(format!("HTTP: {e}")))
            });
            Some(bound)
        }
        None => None,
    };

    let ticker = controllers::spawn_ticker(replica.clone(), config.tick(), shutdown_rx.clone());
    tasks.spawn(async move {
        ticker
            .await
            .map_err(|e| ServerError::Serve(format!("tick controller: {e}")))
    });

    if let Some(keep) = config.ledger.retention {
        let interval = Duration::from_millis(config.ledger.prune_interval_ms);
        let mut stop = shutdown_rx.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            prune_ledger(retention, metrics, keep, interval, &mut stop).await;
            Ok(())
        });
    }

    let initialized = replica
        .raft()
        .is_initialized()
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    match config.bootstrap(&advertise) {
        Bootstrap::Initialize(members) if !initialized => match existing_cluster(config.id, &members).await {
            Some((peer, address)) => tracing::error!(
                peer,
                %address,
                "not initializing: peer {peer} already belongs to a cluster, so this replica's empty data \
                 directory means it lost its disk. Rejoin under a new id: start it with --join and a new \
                 --id, then `ipamctl cluster add-learner NEW_ID ADDRESS` and `ipamctl cluster promote NEW_ID` \
                 (and remove the old id)"
            ),
            None => {
                tracing::info!(?members, "initializing a new cluster");
                replica.init(members, &advertise).await?;
            }
        },
        Bootstrap::Initialize(_) => tracing::info!("cluster state found on disk; not initializing"),
        Bootstrap::Wait => tracing::info!("waiting to be initialized or added to a cluster"),
    }
    tracing::info!(id = config.id, %grpc_addr, %advertise, data_dir = %data_dir.display(), "replica started");

    Ok(Running {
        replica,
        grpc_addr,
        http_addr,
        shutdown,
        tasks,
    })
}
