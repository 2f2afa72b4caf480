//! The server side of `ipam.v1.RaftService`: hands the peers' Raft RPCs to openraft, and
//! proposes the writes that followers forward.

use ipam_proto::ipam::v1::ForwardReply;
use ipam_proto::ipam::v1::ForwardRequest;
use ipam_proto::ipam::v1::RaftReply;
use ipam_proto::ipam::v1::RaftRequest;
use ipam_proto::ipam::v1::SnapshotChunk;
use ipam_proto::ipam::v1::raft_service_server::RaftService;
use openraft::raft::InstallSnapshotRequest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_stream::StreamExt;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::grpc::status::replica_status;
use crate::raft::codec;
use crate::raft::types::NodeId;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::Vote;
use crate::replica::Envelope;
use crate::replica::Replica;
use crate::replica::ReplicaError;

/// `RaftService` for one replica.
#[derive(Debug, Clone)]
pub struct RaftGrpc {
    replica: Replica,
}

impl RaftGrpc {
    /// Serves `replica`'s Raft.
    pub fn new(replica: Replica) -> Self {
        Self { replica }
    }

    fn check_target(&self, target: NodeId) -> Result<(), Status> {
        if target == self.replica.id() {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "this is replica {}, not {target}: the address now belongs to another replica",
                self.replica.id()
            )))
        }
    }
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Status> {
    codec::decode(what, bytes).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, Status> {
    codec::encode(what, value).map_err(|e| Status::internal(format!("reply does not encode: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        self.check_target(request.target_id)?;
        let rpc = decode("append entries", &request.payload)?;
        let result = self.replica.raft().append_entries(rpc).await;
        Ok(Response::new(RaftReply {
            payload: encode("append entries reply", &result)?,
        }))
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        self.check_target(request.target_id)?;
        let rpc = decode("vote", &request.payload)?;
        let result = self.replica.raft().vote(rpc).await;
        Ok(Response::new(RaftReply {
            payload: encode("vote reply", &result)?,
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let mut chunks = request.into_inner();
        let mut header: Option<(Vote, SnapshotMeta)> = None;
        let mut last = None;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let (vote, meta) = match &header {
                Some(header) => header.clone(),
                None => {
                    self.check_target(chunk.target_id)?;
                    let vote: Vote = decode("snapshot vote", &chunk.vote)?;
                    let meta: SnapshotMeta = decode("snapshot meta", &chunk.meta)?;
                    header = Some((vote, meta.clone()));
                    (vote, meta)
                }
            };
            let rpc = InstallSnapshotRequest {
                vote,
                meta,
                offset: chunk.offset,
                data: chunk.data,
                done: chunk.done,
            };
            let result = self.replica.raft().install_snapshot(rpc).await;
            let failed = result.is_err();
            last = Some(encode("install snapshot reply", &result)?);
            if failed {
                break;
            }
        }
        let payload = last.ok_or_else(|| Status::invalid_argument("an InstallSnapshot stream without chunks"))?;
        Ok(Response::new(RaftReply { payload }))
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        let envelope: Envelope = decode("forwarded command", &request.into_inner().command)?;
        let result = match self.replica.write_local(envelope).await {
            Ok(reply) => Ok(reply),
            Err(ReplicaError::Refused(refusal)) => Err(refusal),
            Err(other) => return Err(replica_status(other)),
        };
        Ok(Response::new(ForwardReply {
            reply: encode("forwarded reply", &result)?,
        }))
    }
}
