//! An in-process Raft transport: every replica lives in the same process, and an RPC is a plain
//! call on the target replica's [`Raft`] handle. For tests and for embedding several replicas
//! in one binary; the real server speaks gRPC instead.
//!
//! ```text
//!                       Router (clonable, shared)
//!        ┌──────────────────────────────────────────────────────┐
//!        │ replicas: BTreeMap<NodeId, Raft>  isolated: {NodeId} │
//!        └──────────────────────────────────────────────────────┘
//!           ▲ factory(1)          ▲ factory(2)          ▲ factory(3)
//!           │                     │                     │
//!      ┌────┴────┐  append_entries ┌────┴────┐   vote   ┌────┴────┐
//!      │ Raft 1  │ ──────────────▶ │ Raft 2  │ ◀─────── │ Raft 3  │
//!      └─────────┘   (direct call) └─────────┘          └─────────┘
//!
//!   isolate(n): every call from n or to n answers Unreachable (a partition, a dead leader);
//!   heal(n):    calls flow again.
//! ```
//!
//! A replica refusing an RPC (its [`RaftError`]) comes back as a
//! [`RemoteError`], exactly as a network transport would report
//! it.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;

use super::types::Node;
use super::types::NodeId;
use super::types::TypeConfig;

/// A replica's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// How long a sender waits before retrying a replica it found unreachable (openraft's default
/// is 500 ms; in process, a healed partition should be noticed sooner).
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// Why an in-process RPC did not reach its target.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The source or the target is isolated.
    #[error("link {from} -> {to} is cut: node {isolated} is isolated")]
    Isolated {
        /// The sending replica.
        from: NodeId,
        /// The target replica.
        to: NodeId,
        /// The isolated end.
        isolated: NodeId,
    },
    /// No replica with the target id is registered with the router.
    #[error("node {to} is not registered with the router (asked by {from})")]
    Unknown {
        /// The sending replica.
        from: NodeId,
        /// The target replica.
        to: NodeId,
    },
}

#[derive(Default)]
struct Inner {
    replicas: BTreeMap<NodeId, Raft>,
    isolated: BTreeSet<NodeId>,
}

/// The shared switchboard of in-process replicas. Cheap to clone; all clones see the same
/// replicas and the same partitions.
#[derive(Clone, Default)]
pub struct Router {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Router")
            .field("replicas", &inner.replicas.keys().collect::<Vec<_>>())
            .field("isolated", &inner.isolated)
            .finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock is never held across a call into a replica, so a poisoned lock only means a
        // panic between two map operations; the maps themselves are still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The network factory replica `source` hands to [`Raft::new`]: its RPCs go through this
    /// router and carry `source` so that isolating either end cuts them.
    pub fn factory(&self, source: NodeId) -> NetworkFactory {
        NetworkFactory {
            router: self.clone(),
            source,
        }
    }

    /// Registers (or replaces) replica `id`, making it reachable.
    pub fn add(&self, id: NodeId, raft: Raft) {
        self.lock().replicas.insert(id, raft);
    }

    /// Unregisters replica `id` and returns its handle; calls to it then fail as unreachable.
    pub fn remove(&self, id: NodeId) -> Option<Raft> {
        self.lock().replicas.remove(&id)
    }

    /// The handle of replica `id`.
    pub fn get(&self, id: NodeId) -> Option<Raft> {
        self.lock().replicas.get(&id).cloned()
    }

    /// The ids of the registered replicas.
    pub fn ids(&self) -> Vec<NodeId> {
        self.lock().replicas.keys().copied().collect()
    }

    /// Cuts replica `id` off: every RPC it sends or that is sent to it answers
    /// [`Unreachable`]. The replica itself keeps running (and, if it led, keeps believing it
    /// leads until it notices it cannot reach a quorum).
    pub fn isolate(&self, id: NodeId) {
        self.lock().isolated.insert(id);
    }

    /// Reconnects replica `id`.
    pub fn heal(&self, id: NodeId) {
        self.lock().isolated.remove(&id);
    }

    /// Reconnects every replica.
    pub fn heal_all(&self) {
        self.lock().isolated.clear();
    }

    /// Whether replica `id` is isolated.
    pub fn is_isolated(&self, id: NodeId) -> bool {
        self.lock().isolated.contains(&id)
    }

    /// The target's handle, if the link `from -> to` is up.
    fn route(&self, from: NodeId, to: NodeId) -> Result<Raft, LinkError> {
        let inner = self.lock();
        if let Some(&isolated) = [from, to].iter().find(|id| inner.isolated.contains(id)) {
            return Err(LinkError::Isolated { from, to, isolated });
        }
        inner.replicas.get(&to).cloned().ok_or(LinkError::Unknown { from, to })
    }
}

/// Builds the per-target clients of one replica.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    router: Router,
    source: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Self::Network {
        Connection {
            router: self.router.clone(),
            source: self.source,
            target,
        }
    }
}

/// One replica's client for one target. Resolves the target on every call, so a replica
/// registered (or healed) later is reached without a new client.
#[derive(Debug, Clone)]
pub struct Connection {
    router: Router,
    source: NodeId,
    target: NodeId,
}

impl Connection {
    fn target(&self) -> Result<Raft, Unreachable> {
        self.router
            .route(self.source, self.target)
            .map_err(|e| Unreachable::new(&e))
    }

    fn remote<E: std::error::Error>(&self, error: E) -> RPCError<NodeId, Node, E> {
        RPCError::RemoteError(RemoteError::new(self.target, error))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let raft = self.target().map_err(RPCError::Unreachable)?;
        raft.append_entries(rpc).await.map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        let raft = self.target().map_err(RPCError::Unreachable)?;
        raft.install_snapshot(rpc).await.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let raft = self.target().map_err(RPCError::Unreachable)?;
        raft.vote(rpc).await.map_err(|e| self.remote(e))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(RETRY_AFTER))
    }
}
