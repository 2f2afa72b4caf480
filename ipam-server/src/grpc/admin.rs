//! `ipam.v1.AdminService`: what operators (`ipamctl`) and the Kubernetes mirrors call. Mutations
//! become domain commands proposed as `Actor::Operator(name)`; listings and stats are
//! linearizable reads of the applied state; the cluster rpcs go to the replica facade.
//!
//! ```text
//!   CreatePool, Upsert*/Delete*, RemoveNode, ReleaseLease, Unquarantine, UpdateSettings
//!       ──pb_impl──▶ Replica::write(Operator(name), request id, body) ──▶ reply (+ read back)
//!   List*, Stats, GetSettings ──▶ Replica::read(Linearizable, ..)
//!   ClusterInit, AddLearner, ChangeMembership, ClusterStatus ──▶ Replica::{init, add_learner, ..}
//! ```
//!
//! The operator's name is the request metadata `ipam-operator` when present (ipamctl sends the
//! local user name), else [`UNKNOWN_OPERATOR`] as the protocol says. Under mTLS the client
//! certificate's identity would come first; this server does not terminate mTLS itself yet.

use std::time::Duration;

use ipam_core::CommandBody;
use ipam_core::Reply;
use ipam_core::ids::Actor;
use ipam_core::ids::LeaseId;
use ipam_core::state::State;
use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::admin_service_server::AdminService;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::grpc::agent::read_fresh;
use crate::grpc::agent::read_visible;
use crate::grpc::agent::unexpected;
use crate::grpc::status::refusal_status;
use crate::grpc::status::replica_status;
use crate::pb_impl::Write;
use crate::pb_impl::cluster;
use crate::pb_impl::lease;
use crate::pb_impl::list;
use crate::pb_impl::node;
use crate::pb_impl::pool;
use crate::pb_impl::settings;
use crate::pb_impl::sg_policy;
use crate::pb_impl::stats;
use crate::pb_impl::subnet_config;
use crate::raft::Refusal;
use crate::raft::state_machine::Applied;
use crate::replica::Consistency;
use crate::replica::Replica;

/// The request metadata key naming the operator.
pub const OPERATOR_METADATA: &str = "ipam-operator";
/// The operator's name when the request does not say.
pub const UNKNOWN_OPERATOR: &str = "unknown";
/// Longest operator name recorded (longer names are cut).
const MAX_OPERATOR_LEN: usize = 128;
/// How long `ClusterInit` waits for the replica's metrics to show the membership it initialized.
const MEMBERSHIP_VISIBLE_WITHIN: Duration = Duration::from_secs(2);

/// `AdminService` for one replica.
#[derive(Debug, Clone)]
pub struct AdminGrpc {
    replica: Replica,
    advertise: String,
}

/// The operator a request speaks for: its `ipam-operator` metadata (printable, trimmed, at most
/// 128 characters), else [`UNKNOWN_OPERATOR`].
pub fn operator(metadata: &MetadataMap) -> Actor {
    let name = metadata
        .get(OPERATOR_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map_or(UNKNOWN_OPERATOR, |name| name)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_OPERATOR_LEN)
        .collect();
    Actor::Operator(name)
}

impl AdminGrpc {
    /// Serves `replica`; `advertise` is its own gRPC address ("host:port"), which a
    /// single-replica `ClusterInit` records as its member address.
    pub fn new(replica: Replica, advertise: String) -> Self {
        Self { replica, advertise }
    }

    async fn write(&self, actor: Actor, write: Write) -> Result<Reply, Status> {
        self.replica
            .write(actor, write.request_id, write.body)
            .await
            .map_err(replica_status)
    }

    /// A write whose answer is [`Reply::Done`].
    async fn write_done(&self, rpc: &'static str, actor: Actor, write: Write) -> Result<(), Status> {
        match self.write(actor, write).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(rpc, &other)),
        }
    }

    async fn read<R>(&self, read: impl FnOnce(&Applied) -> R) -> Result<R, Status> {
        self.replica
            .read(Consistency::Linearizable, read)
            .await
            .map_err(replica_status)
    }

    async fn visible<R>(&self, rpc: &'static str, read: impl Fn(&State) -> Option<R>) -> Result<R, Status> {
        read_visible(&self.replica, rpc, read).await
    }
}

/// The node holding live lease `id`, if any.
fn node_of_lease(state: &State, id: LeaseId) -> Option<String> {
    state
        .nodes
        .values()
        .find(|n| n.leases.contains_key(&id))
        .map(|n| n.spec.name.clone())
}

#[tonic::async_trait]
impl AdminService for AdminGrpc {
    #[tracing::instrument(skip_all, fields(cidr = %request.get_ref().cidr, request_id = %request.get_ref().request_id))]
    async fn create_pool(
        &self,
        request: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::CreatePoolResponse>, Status> {
        let actor = operator(request.metadata());
        let (request_id, cidr) = pool::create_pool(request.get_ref())?;
        let write = Write {
            request_id: Some(request_id),
            body: CommandBody::CreatePool { cidr },
        };
        self.write_done("CreatePool", actor, write).await?;
        Ok(Response::new(pb::CreatePoolResponse {
            pool: Some(pool::pool_to_pb(&cidr)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_pools(
        &self,
        _request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let pools = self
            .read(|applied| applied.state.pools.iter().map(pool::pool_to_pb).collect())
            .await?;
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    #[tracing::instrument(
        skip_all,
        fields(name = ?request.get_ref().subnet_config.as_ref().map(|c| c.name.clone()), request_id = %request.get_ref().request_id)
    )]
    async fn upsert_subnet_config(
        &self,
        request: Request<pb::UpsertSubnetConfigRequest>,
    ) -> Result<Response<pb::UpsertSubnetConfigResponse>, Status> {
        let actor = operator(request.metadata());
        let (request_id, spec) = subnet_config::upsert_subnet_config(request.get_ref())?;
        let write = Write {
            request_id: Some(request_id),
            body: CommandBody::UpsertSubnetConfig(spec.clone()),
        };
        self.write_done("UpsertSubnetConfig", actor, write).await?;
        let recorded = self
            .visible("UpsertSubnetConfig", |state| {
                state
                    .subnet_configs
                    .get(&spec.name)
                    .filter(|c| c.subnet_id == spec.subnet_id && c.cidr == spec.cidr && c.az == spec.az)
                    .map(subnet_config::subnet_config_to_pb)
            })
            .await?;
        Ok(Response::new(pb::UpsertSubnetConfigResponse {
            subnet_config: Some(recorded),
        }))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name, request_id = %request.get_ref().request_id))]
    async fn delete_subnet_config(
        &self,
        request: Request<pb::DeleteSubnetConfigRequest>,
    ) -> Result<Response<pb::DeleteSubnetConfigResponse>, Status> {
        let actor = operator(request.metadata());
        let write = subnet_config::delete_subnet_config(request.get_ref())?;
        self.write_done("DeleteSubnetConfig", actor, write).await?;
        Ok(Response::new(pb::DeleteSubnetConfigResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_subnet_configs(
        &self,
        _request: Request<pb::ListSubnetConfigsRequest>,
    ) -> Result<Response<pb::ListSubnetConfigsResponse>, Status> {
        let subnet_configs = self
            .read(|applied| {
                applied
                    .state
                    .subnet_configs
                    .values()
                    .map(subnet_config::subnet_config_to_pb)
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListSubnetConfigsResponse { subnet_configs }))
    }

    #[tracing::instrument(
        skip_all,
        fields(
            policy = ?request.get_ref().policy.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)),
            request_id = %request.get_ref().request_id,
        )
    )]
    async fn upsert_sg_policy(
        &self,
        request: Request<pb::UpsertSgPolicyRequest>,
    ) -> Result<Response<pb::UpsertSgPolicyResponse>, Status> {
        let actor = operator(request.metadata());
        let (request_id, policy) = sg_policy::upsert_sg_policy(request.get_ref())?;
        let write = Write {
            request_id: Some(request_id),
            body: CommandBody::UpsertSgPolicy(policy.clone()),
        };
        self.write_done("UpsertSgPolicy", actor, write).await?;
        let key = (policy.namespace.clone(), policy.name.clone());
        let recorded = self
            .visible("UpsertSgPolicy", |state| {
                state
                    .sg_policies
                    .get(&key)
                    .filter(|p| **p == policy)
                    .map(sg_policy::sg_policy_to_pb)
            })
            .await?;
        Ok(Response::new(pb::UpsertSgPolicyResponse { policy: Some(recorded) }))
    }

    #[tracing::instrument(
        skip_all,
        fields(namespace = %request.get_ref().namespace, name = %request.get_ref().name, request_id = %request.get_ref().request_id)
    )]
    async fn delete_sg_policy(
        &self,
        request: Request<pb::DeleteSgPolicyRequest>,
    ) -> Result<Response<pb::DeleteSgPolicyResponse>, Status> {
        let actor = operator(request.metadata());
        let write = sg_policy::delete_sg_policy(request.get_ref())?;
        self.write_done("DeleteSgPolicy", actor, write).await?;
        Ok(Response::new(pb::DeleteSgPolicyResponse {}))
    }

    #[tracing::instrument(skip_all, fields(namespace = %request.get_ref().namespace))]
    async fn list_sg_policies(
        &self,
        request: Request<pb::ListSgPoliciesRequest>,
    ) -> Result<Response<pb::ListSgPoliciesResponse>, Status> {
        let namespace = request.into_inner().namespace;
        let policies = self
            .read(|applied| {
                applied
                    .state
                    .sg_policies
                    .values()
                    .filter(|p| namespace.is_empty() || p.namespace == namespace)
                    .map(sg_policy::sg_policy_to_pb)
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListSgPoliciesResponse { policies }))
    }

    #[tracing::instrument(skip_all, fields(page_token = %request.get_ref().page_token))]
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let req = request.into_inner();
        let response = self.read(|applied| list::list_nodes(&applied.state, &req)).await??;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, request_id = %request.get_ref().request_id))]
    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let actor = operator(request.metadata());
        let req = request.into_inner();
        let write = node::remove_node(&req)?;
        let enis = read_fresh(&self.replica, |applied| {
            applied.state.nodes.get(&req.node).map_or(0, |n| n.enis.len())
        })
        .await?;
        match self.write(actor, write).await? {
            Reply::Released(released) => {
                tracing::info!(released = released.len(), enis, "node removed");
                Ok(Response::new(pb::RemoveNodeResponse {
                    released_leases: u32::try_from(released.len()).unwrap_or(u32::MAX),
                    forgotten_enis: u32::try_from(enis).unwrap_or(u32::MAX),
                }))
            }
            other => Err(unexpected("RemoveNode", &other)),
        }
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, page_token = %request.get_ref().page_token))]
    async fn list_enis(&self, request: Request<pb::ListEnisRequest>) -> Result<Response<pb::ListEnisResponse>, Status> {
        let req = request.into_inner();
        let response = self.read(|applied| list::list_enis(&applied.state, &req)).await??;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, page_token = %request.get_ref().page_token))]
    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let req = request.into_inner();
        let response = self.read(|applied| list::list_leases(&applied.state, &req)).await??;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(lease_id = request.get_ref().lease_id, request_id = %request.get_ref().request_id))]
    async fn release_lease(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        let actor = operator(request.metadata());
        let (request_id, id) = lease::release_lease_id(request.get_ref())?;
        let node = read_fresh(&self.replica, |applied| node_of_lease(&applied.state, id))
            .await?
            .ok_or_else(|| {
                refusal_status(Refusal {
                    code: "NotFound".to_owned(),
                    message: format!("lease {id} is not live (never bound, or already released)"),
                    exhausted: None,
                    register_again: None,
                })
            })?;
        let write = Write {
            request_id: Some(request_id),
            body: lease::release_lease(&node, id),
        };
        let reply = self.write(actor, write).await?;
        let Reply::Released(released) = reply else {
            return Err(unexpected("ReleaseLease", &reply));
        };
        let Some(first) = released.into_iter().next() else {
            return Err(unexpected("ReleaseLease", &Reply::Released(Vec::new())));
        };
        let lease = self
            .visible("ReleaseLease", |state| {
                let live = state.nodes.get(&first.node)?.leases.contains_key(&first.id);
                (!live).then(|| lease::lease_to_pb(state, &first))
            })
            .await?;
        tracing::info!(node = %first.node, ip = %first.ip, "lease released by an operator");
        Ok(Response::new(pb::ReleaseLeaseResponse { lease: Some(lease) }))
    }

    #[tracing::instrument(skip_all, fields(ip = %request.get_ref().ip, request_id = %request.get_ref().request_id))]
    async fn unquarantine(
        &self,
        request: Request<pb::UnquarantineRequest>,
    ) -> Result<Response<pb::UnquarantineResponse>, Status> {
        let actor = operator(request.metadata());
        let write = pool::unquarantine(request.get_ref())?;
        self.write_done("Unquarantine", actor, write).await?;
        Ok(Response::new(pb::UnquarantineResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn stats(&self, _request: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let response = self.read(|applied| stats::stats(&applied.state)).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn get_settings(
        &self,
        _request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::GetSettingsResponse>, Status> {
        let settings = self
            .read(|applied| settings::settings_to_pb(&applied.state.settings))
            .await?;
        Ok(Response::new(pb::GetSettingsResponse {
            settings: Some(settings),
        }))
    }

    #[tracing::instrument(skip_all, fields(request_id = %request.get_ref().request_id))]
    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::UpdateSettingsResponse>, Status> {
        let actor = operator(request.metadata());
        let (request_id, wanted) = settings::update_settings(request.get_ref())?;
        let write = Write {
            request_id: Some(request_id),
            body: CommandBody::UpdateSettings(wanted.clone()),
        };
        self.write_done("UpdateSettings", actor, write).await?;
        let settings = self
            .visible("UpdateSettings", |state| {
                (state.settings == wanted).then(|| settings::settings_to_pb(&state.settings))
            })
            .await?;
        tracing::info!(?wanted, "settings updated");
        Ok(Response::new(pb::UpdateSettingsResponse {
            settings: Some(settings),
        }))
    }

    #[tracing::instrument(skip_all, fields(members = request.get_ref().members.len()))]
    async fn cluster_init(
        &self,
        request: Request<pb::ClusterInitRequest>,
    ) -> Result<Response<pb::ClusterInitResponse>, Status> {
        let members = cluster::init_members(request.get_ref())?;
        let mut view = self
            .replica
            .init(members, &self.advertise)
            .await
            .map_err(replica_status)?;
        // `init` answers with the metrics of the moment, which may not show the new membership
        // yet: wait (briefly) until they do, so that the answer says what was initialized.
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_VISIBLE_WITHIN;
        while view.voters.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            view = self.replica.view();
        }
        tracing::info!(leader = ?view.leader, voters = ?view.voters, "cluster initialized");
        Ok(Response::new(pb::ClusterInitResponse {
            cluster: Some(cluster::cluster_info(&view)),
        }))
    }

    #[tracing::instrument(skip_all, fields(id = request.get_ref().id, address = %request.get_ref().address))]
    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AddLearnerResponse>, Status> {
        let (id, address, wait) = cluster::add_learner(request.get_ref())?;
        let view = self
            .replica
            .add_learner(id, address, wait)
            .await
            .map_err(replica_status)?;
        Ok(Response::new(pb::AddLearnerResponse {
            cluster: Some(cluster::cluster_info(&view)),
        }))
    }

    #[tracing::instrument(skip_all, fields(voters = ?request.get_ref().voter_ids))]
    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::ChangeMembershipResponse>, Status> {
        let (voters, retain) = cluster::change_membership(request.get_ref())?;
        let view = self
            .replica
            .change_membership(voters, retain)
            .await
            .map_err(replica_status)?;
        Ok(Response::new(pb::ChangeMembershipResponse {
            cluster: Some(cluster::cluster_info(&view)),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(pb::ClusterStatusResponse {
            cluster: Some(cluster::cluster_info(&self.replica.view())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn operator_from_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(operator(&metadata), Actor::Operator(UNKNOWN_OPERATOR.to_owned()));
        metadata.insert(OPERATOR_METADATA, MetadataValue::from_static("  alice  "));
        assert_eq!(operator(&metadata), Actor::Operator("alice".to_owned()));
        metadata.insert(OPERATOR_METADATA, MetadataValue::from_static(""));
        assert_eq!(operator(&metadata), Actor::Operator(UNKNOWN_OPERATOR.to_owned()));
        let long = "b".repeat(300);
        metadata.insert(
            OPERATOR_METADATA,
            MetadataValue::try_from(long.as_str()).unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(operator(&metadata), Actor::Operator("b".repeat(MAX_OPERATOR_LEN)));
    }
}
