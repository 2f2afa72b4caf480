//! The Raft transport between replicas over gRPC (`ipam.v1.RaftService`), and write forwarding.
//!
//! ```text
//!   replica 1                                             replica 2
//!   openraft ──RaftNetwork::append_entries──▶ PeerConnection ──RaftService.AppendEntries──▶ grpc::raft ──▶ Raft::append_entries
//!            ◀──── Result<Resp, RaftError> (json) in RaftReply.payload ◀─────────────────────────────────┘
//!   Replica::write on a follower ──Peers::forward──▶ RaftService.Forward ──▶ leader's Replica::write_local
//! ```
//!
//! Payloads are the openraft types serialized with [`codec`]; a Raft-level refusal travels inside
//! an OK reply, so a gRPC error status always means the transport (or the receiving replica) is
//! unavailable. openraft backs off from a replica it cannot reach.
//!
//! Snapshots go in openraft's chunks (`Config::snapshot_max_chunk_size`): each chunk is one
//! `InstallSnapshot` call carrying one [`SnapshotChunk`], read from and written to the snapshot
//! file on each side, so neither side holds a whole snapshot in memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;

use ipam_core::Reply;
use ipam_proto::ipam::v1::ForwardRequest;
use ipam_proto::ipam::v1::RaftRequest;
use ipam_proto::ipam::v1::SnapshotChunk;
use ipam_proto::ipam::v1::raft_service_client::RaftServiceClient;
use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use super::codec;
use super::types::Node;
use super::types::NodeId;
use super::types::TypeConfig;
use crate::raft::Refusal;
use crate::replica::Envelope;
use crate::replica::Leader;
use crate::replica::ReplicaError;

/// The metadata key that names the leader's address in an `Unavailable` answer.
pub const LEADER_METADATA: &str = "ipam-leader";

/// The largest Raft message (an AppendEntries batch, a snapshot chunk) either side accepts;
/// tonic's default of 4 MiB would refuse a large batch forever, and openraft would resend it
/// forever. `raft.snapshot_chunk_bytes` is validated to stay well below.
pub const MAX_RAFT_MESSAGE: usize = 64 << 20;

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a forwarded write may take at the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC channels to the other replicas, by address, created lazily and shared by the Raft
/// transport and forwarding. A channel reconnects by itself after a peer restarts.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    /// A channel to `address` ("host:port").
    ///
    /// # Errors
    ///
    /// The address is not a valid URI authority.
    pub fn channel(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Forwards a write to `leader`, which stamps and proposes it.
    ///
    /// # Errors
    ///
    /// The leader refused the command, or could not be reached, or is not the leader any more.
    pub async fn forward(&self, leader: &Leader, envelope: &Envelope) -> Result<Reply, ReplicaError> {
        let channel = self
            .channel(&leader.address)
            .map_err(|e| ReplicaError::Unavailable(format!("leader address {:?} is unusable: {e}", leader.address)))?;
        let command = codec::encode("forwarded command", envelope)
            .map_err(|e| ReplicaError::InvalidArgument(format!("command does not encode: {e}")))?;
        let mut request = tonic::Request::new(ForwardRequest { command });
        request.set_timeout(FORWARD_TIMEOUT);
        let reply = RaftServiceClient::new(channel)
            .forward(request)
            .await
            .map_err(
                |status| match status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()) {
                    Some(address) if status.code() == tonic::Code::Unavailable => ReplicaError::NotLeader {
                        leader: Some(Leader {
                            id: 0,
                            address: address.to_owned(),
                        }),
                    },
                    _ => ReplicaError::Unavailable(format!(
                        "forwarding to the leader (node {} at {}) failed: {}",
                        leader.id,
                        leader.address,
                        status.message()
                    )),
                },
            )?;
        let result: Result<Reply, Refusal> = codec::decode("forwarded reply", &reply.into_inner().reply)
            .map_err(|e| ReplicaError::Unavailable(format!("the leader's reply does not decode: {e}")))?;
        result.map_err(ReplicaError::Refused)
    }
}

/// Creates a [`PeerConnection`] per target for openraft.
#[derive(Debug, Clone, Default)]
pub struct NetworkFactory {
    peers: Peers,
}

impl NetworkFactory {
    /// A factory sharing `peers`' channels.
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection {
            target,
            address: node.addr.clone(),
            channel: self.peers.channel(&node.addr).map_err(|e| e.to_string()),
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    target: NodeId,
    address: String,
    channel: Result<Channel, String>,
}

/// Why a peer RPC failed at the transport level.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("peer {target} at {address}: {why}")]
    Peer {
        target: NodeId,
        address: String,
        why: String,
    },
}

impl PeerConnection {
    fn client(&self) -> Result<RaftServiceClient<Channel>, TransportError> {
        match &self.channel {
            Ok(channel) => Ok(RaftServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_RAFT_MESSAGE)
                .max_encoding_message_size(MAX_RAFT_MESSAGE)),
            Err(why) => Err(self.error(format!("unusable address: {why}"))),
        }
    }

    fn error(&self, why: String) -> TransportError {
        TransportError::Peer {
            target: self.target,
            address: self.address.clone(),
            why,
        }
    }

    fn encode<T: Serialize>(&self, what: &'static str, value: &T) -> Result<Vec<u8>, TransportError> {
        codec::encode(what, value).map_err(|e| self.error(e.to_string()))
    }

    /// Turns a reply payload (a serialized `Result`) into openraft's result.
    // The error type is the one `RaftNetwork` must return; its size is openraft's.
    #[allow(clippy::result_large_err)]
    fn decode<T, E>(&self, payload: &[u8]) -> Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<T, RaftError<NodeId, E>> = codec::decode("raft reply", payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&self.error(e.to_string()))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn status<E: std::error::Error>(&self, status: &tonic::Status) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
        let error = self.error(format!("{:?}: {}", status.code(), status.message()));
        match status.code() {
            // Nobody answered (down, restarting, partitioned): openraft backs off.
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&error))
            }
            _ => RPCError::Network(NetworkError::new(&error)),
        }
    }

    fn request<T>(&self, message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        request
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let mut client = self.client().map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let payload = self
            .encode("append entries", &rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let request = self.request(
            RaftRequest {
                target_id: self.target,
                payload,
            },
            &option,
        );
        let reply = client.append_entries(request).await.map_err(|s| self.status(&s))?;
        self.decode(&reply.into_inner().payload)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        let mut client = self.client().map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let chunk = SnapshotChunk {
            target_id: self.target,
            vote: self
                .encode("snapshot vote", &rpc.vote)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?,
            meta: self
                .encode("snapshot meta", &rpc.meta)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?,
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let request = self.request(tokio_stream::once(chunk), &option);
        let reply = client.install_snapshot(request).await.map_err(|s| self.status(&s))?;
        self.decode(&reply.into_inner().payload)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let mut client = self.client().map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let payload = self
            .encode("vote", &rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let request = self.request(
            RaftRequest {
                target_id: self.target,
                payload,
            },
            &option,
        );
        let reply = client.vote(request).await.map_err(|s| self.status(&s))?;
        self.decode(&reply.into_inner().payload)
    }
}
