//! One replica as the services see it: write a command (on the leader, or forwarded to it), read
//! the applied state (linearizable or stale), and manage the cluster's membership. openraft's
//! types stop here and in `raft/`; the gRPC services only speak [`Replica`].
//!
//! ```text
//!   grpc service ──write(actor, request_id, body)──▶ Replica
//!                                                     │ leader?  ── yes ─▶ Raft::client_write(Proposal { at: now, .. })
//!                                                     │          ── no ──▶ RaftService.Forward(Envelope) ─▶ leader's Replica::write_local
//!                                                     │          ── unknown ─▶ ReplicaError::NotLeader (Unavailable + ipam-leader)
//!   grpc service ──read(consistency, |applied| ..)──▶ Replica
//!                                                     │ Linearizable: Raft::ensure_linearizable (leader only), then read
//!                                                     │ Stale:        read what this replica has applied
//! ```
//!
//! Time is stamped by the replica that proposes, which is always the leader: a forwarded command
//! travels without a time and the leader stamps it, so the log's times come from one clock per
//! term.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use ipam_core::CommandBody;
use ipam_core::Reply;
use ipam_core::ids::Actor;
use ipam_core::ids::RequestId;
use ipam_core::ids::Timestamp;
use openraft::ChangeMembers;
use openraft::error::ClientWriteError;
use openraft::error::ForwardToLeader;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use openraft::raft::ClientWriteResponse;
use serde::Deserialize;
use serde::Serialize;

use crate::raft::Proposal;
use crate::raft::Refusal;
use crate::raft::TypeConfig;
use crate::raft::grpc_network::Peers;
use crate::raft::network::Raft;
use crate::raft::state_machine::Applied;
use crate::raft::state_machine::SharedApplied;
use crate::raft::types::Node;
use crate::raft::types::NodeId;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Everything acknowledged before the read started is visible (leader only: read-index).
    #[default]
    Linearizable,
    /// Whatever this replica has applied; may lag the leader.
    Stale,
}

/// The current leader, as this replica knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its Raft node id.
    pub id: NodeId,
    /// Its advertised gRPC address, "host:port".
    pub address: String,
}

/// Why a write or read did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The domain refused the command; nothing changed.
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// This replica cannot serve the call and the caller should ask the leader (if known).
    #[error("not the leader; {}", match .leader { Some(l) => format!("the leader is node {} at {}", l.id, l.address), None => "no leader is known yet (election in progress?)".to_owned() })]
    NotLeader {
        /// The leader, when known.
        leader: Option<Leader>,
    },
    /// The cluster cannot answer right now (shutting down, leader unreachable); retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request is not acceptable to Raft (e.g. a membership change that makes no sense).
    #[error("{0}")]
    InvalidArgument(String),
    /// A membership or initialization call conflicts with the cluster's state.
    #[error("{0}")]
    FailedPrecondition(String),
}

/// `Result` with [`ReplicaError`].
pub type Result<T, E = ReplicaError> = std::result::Result<T, E>;

/// A command on its way to the leader: the proposal without the time, which the leader stamps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Who asks.
    pub actor: Actor,
    /// The client's idempotency key.
    pub request_id: Option<RequestId>,
    /// What is asked.
    pub body: CommandBody,
}

/// A replica's view of the cluster (the source of `ClusterInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// This replica's id.
    pub id: NodeId,
    /// The leader, when known.
    pub leader: Option<Leader>,
    /// The current term.
    pub term: u64,
    /// The last log index.
    pub last_log_index: u64,
    /// The last applied index.
    pub last_applied_index: u64,
    /// The last index in the latest snapshot.
    pub snapshot_log_index: u64,
    /// The last index removed by log compaction.
    pub purged_log_index: u64,
    /// Voters, by id.
    pub voters: BTreeMap<NodeId, String>,
    /// Learners, by id.
    pub learners: BTreeMap<NodeId, String>,
    /// The last index known replicated to each member (leader's view only).
    pub matched: BTreeMap<NodeId, u64>,
}

/// One replica: its Raft handle, its applied state and its peers.
#[derive(Clone)]
pub struct Replica {
    id: NodeId,
    raft: Raft,
    applied: SharedApplied,
    peers: Peers,
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> Timestamp {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Replica {
    /// Wraps a started Raft node.
    pub fn new(id: NodeId, raft: Raft, applied: SharedApplied, peers: Peers) -> Self {
        Self {
            id,
            raft,
            applied,
            peers,
        }
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft handle (for the Raft transport and the controllers).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The leader, as this replica knows it now.
    pub fn leader(&self) -> Option<Leader> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        let address = metrics.membership_config.membership().get_node(&id)?.addr.clone();
        Some(Leader { id, address })
    }

    /// Whether this replica is the leader now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Proposes a command: here when this replica leads, otherwise forwarded to the leader.
    ///
    /// # Errors
    ///
    /// The domain refused it ([`ReplicaError::Refused`]), or no leader could take it.
    #[tracing::instrument(level = "debug", skip_all, fields(command = body.name()))]
    pub async fn write(&self, actor: Actor, request_id: Option<RequestId>, body: CommandBody) -> Result<Reply> {
        let envelope = Envelope {
            actor,
            request_id,
            body,
        };
        match self.write_local(envelope.clone()).await {
            Err(ReplicaError::NotLeader { leader: Some(leader) }) if leader.id != self.id => {
                self.peers.forward(&leader, &envelope).await
            }
            other => other,
        }
    }

    /// Proposes a command on this replica, which must be the leader; the leader stamps the time.
    ///
    /// # Errors
    ///
    /// As [`Replica::write`], and [`ReplicaError::NotLeader`] on a follower.
    pub async fn write_local(&self, envelope: Envelope) -> Result<Reply> {
        let proposal = Proposal {
            at: now_ms(),
            actor: envelope.actor,
            request_id: envelope.request_id,
            body: envelope.body,
        };
        let response: ClientWriteResponse<TypeConfig> = self.raft.client_write(proposal).await.map_err(write_error)?;
        response.data.result.map_err(ReplicaError::Refused)
    }

    /// Reads the applied state with `read`, after making sure it is fresh enough.
    ///
    /// # Errors
    ///
    /// A linearizable read on a replica that is not (or no longer) the leader:
    /// [`ReplicaError::NotLeader`].
    pub async fn read<R>(&self, consistency: Consistency, read: impl FnOnce(&Applied) -> R) -> Result<R> {
        if consistency == Consistency::Linearizable {
            self.raft.ensure_linearizable().await.map_err(|e| match e {
                RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(to)) => not_leader(to),
                RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(e)) => {
                    ReplicaError::Unavailable(format!(
                        "cannot confirm leadership: only replicas {:?} answered, not a quorum of the voters",
                        e.got
                    ))
                }
                RaftError::Fatal(fatal) => ReplicaError::Unavailable(format!("replica stopped: {fatal}")),
            })?;
        }
        let applied = self.applied.read().await;
        Ok(read(&applied))
    }

    /// Initializes a new cluster with `members` as its voters (this replica alone when empty).
    ///
    /// # Errors
    ///
    /// The replica is already initialized, or this replica is not among the members.
    pub async fn init(&self, members: BTreeMap<NodeId, String>, own_address: &str) -> Result<ClusterView> {
        let members: BTreeMap<NodeId, Node> = if members.is_empty() {
            BTreeMap::from([(self.id, Node::new(own_address))])
        } else {
            members.into_iter().map(|(id, addr)| (id, Node::new(addr))).collect()
        };
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(InitializeError::NotAllowed(_)) => ReplicaError::FailedPrecondition(
                "this replica is already initialized (its log is not empty); use cluster add-learner to grow a cluster"
                    .to_owned(),
            ),
            RaftError::APIError(InitializeError::NotInMembers(e)) => ReplicaError::InvalidArgument(e.to_string()),
            RaftError::Fatal(fatal) => ReplicaError::Unavailable(format!("replica stopped: {fatal}")),
        })?;
        // `initialize` returns once the membership entry is in the log; wait (briefly) until the
        // metrics show it, so the view answered is the new cluster.
        let mut metrics = self.raft.metrics();
        let shown = metrics.wait_for(|m| m.membership_config.membership().get_node(&self.id).is_some());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), shown).await;
        Ok(self.view())
    }

    /// Adds a learner (leader only); with `wait`, answers once it has caught up.
    ///
    /// # Errors
    ///
    /// Not the leader, or Raft refused the change.
    pub async fn add_learner(&self, id: NodeId, address: String, wait: bool) -> Result<ClusterView> {
        self.raft
            .add_learner(id, Node::new(address), wait)
            .await
            .map_err(write_error)?;
        Ok(self.view())
    }

    /// Makes `voters` the voters (leader only); removed voters stay learners when `retain`.
    ///
    /// # Errors
    ///
    /// Not the leader, or Raft refused the change (e.g. a voter that is not a learner yet).
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>, retain: bool) -> Result<ClusterView> {
        if voters.is_empty() {
            return Err(ReplicaError::InvalidArgument(
                "the voter set must not be empty".to_owned(),
            ));
        }
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), retain)
            .await
            .map_err(write_error)?;
        Ok(self.view())
    }

    /// This replica's view of the cluster.
    pub fn view(&self) -> ClusterView {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut voters = BTreeMap::new();
        let mut learners = BTreeMap::new();
        for (id, node) in membership.nodes() {
            if voter_ids.contains(id) {
                voters.insert(*id, node.addr.clone());
            } else {
                learners.insert(*id, node.addr.clone());
            }
        }
        let leader = metrics.current_leader.and_then(|id| {
            membership.get_node(&id).map(|node| Leader {
                id,
                address: node.addr.clone(),
            })
        });
        let matched = metrics
            .replication
            .as_ref()
            .map(|replication| {
                replication
                    .iter()
                    .map(|(id, log_id)| (*id, log_id.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        ClusterView {
            id: self.id,
            leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied_index: metrics.last_applied.map_or(0, |l| l.index),
            snapshot_log_index: metrics.snapshot.map_or(0, |l| l.index),
            purged_log_index: metrics.purged.map_or(0, |l| l.index),
            voters,
            learners,
            matched,
        }
    }
}

/// Not the leader: who is, as far as openraft knows.
fn not_leader(to: ForwardToLeader<NodeId, Node>) -> ReplicaError {
    ReplicaError::NotLeader {
        leader: to
            .leader_id
            .zip(to.leader_node)
            .map(|(id, node)| Leader { id, address: node.addr }),
    }
}

/// The error of a write (a command or a membership change).
fn write_error(error: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> ReplicaError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(to)) => not_leader(to),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ReplicaError::FailedPrecondition(e.to_string())
        }
        RaftError::Fatal(fatal) => ReplicaError::Unavailable(format!("replica stopped: {fatal}")),
    }
}
