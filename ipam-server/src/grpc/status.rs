//! Errors on the wire, on purpose (STYLE.md): not the leader → `Unavailable` with the leader's
//! address in `ipam-leader`; exhausted → `ResourceExhausted` with `ipam-exhausted`; the domain's
//! codes as the domain gives them.

use tonic::Code;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::raft::Refusal;
use crate::raft::grpc_network::LEADER_METADATA;
use crate::replica::ReplicaError;

/// The metadata key that says what ran out in a `ResourceExhausted` answer.
pub const EXHAUSTED_METADATA: &str = "ipam-exhausted";

/// The metadata key that tells an agent to register again (its epoch is stale, its node expired
/// or is unknown), and why: `stale-epoch`, `node-expired`, `node-unknown`.
pub const REGISTER_METADATA: &str = "ipam-register";

/// The gRPC status of a replica error.
pub fn replica_status(error: ReplicaError) -> Status {
    match error {
        ReplicaError::Refused(refusal) => refusal_status(refusal),
        ReplicaError::NotLeader { leader } => {
            let message = ReplicaError::NotLeader { leader: leader.clone() }.to_string();
            let mut status = Status::unavailable(message);
            if let Some(value) = leader.and_then(|l| MetadataValue::try_from(l.address).ok()) {
                status.metadata_mut().insert(LEADER_METADATA, value);
            }
            status
        }
        ReplicaError::Unavailable(message) => Status::unavailable(message),
        ReplicaError::InvalidArgument(message) => Status::invalid_argument(message),
        ReplicaError::FailedPrecondition(message) => Status::failed_precondition(message),
    }
}

/// The gRPC status of a domain refusal.
pub fn refusal_status(refusal: Refusal) -> Status {
    let code = match refusal.code.as_str() {
        "InvalidArgument" => Code::InvalidArgument,
        "NotFound" => Code::NotFound,
        "FailedPrecondition" => Code::FailedPrecondition,
        "ResourceExhausted" => Code::ResourceExhausted,
        "AlreadyExists" => Code::AlreadyExists,
        // A code this build does not know (a newer leader): say so rather than guess.
        _ => Code::Unknown,
    };
    let mut status = Status::new(code, refusal.message);
    if let Some(value) = refusal.exhausted.and_then(|e| MetadataValue::try_from(e).ok()) {
        status.metadata_mut().insert(EXHAUSTED_METADATA, value);
    }
    if let Some(value) = refusal.register_again.and_then(|e| MetadataValue::try_from(e).ok()) {
        status.metadata_mut().insert(REGISTER_METADATA, value);
    }
    status
}

#[cfg(test)]
mod tests {
    use ipam_core::DomainError;

    use super::*;
    use crate::replica::Leader;

    #[test]
    fn not_leader_names_the_leader_in_metadata() {
        let status = replica_status(ReplicaError::NotLeader {
            leader: Some(Leader {
                id: 2,
                address: "127.0.0.2:7400".to_owned(),
            }),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.metadata().get(LEADER_METADATA).map(|v| v.to_str().ok()),
            Some(Some("127.0.0.2:7400"))
        );
        let unknown = replica_status(ReplicaError::NotLeader { leader: None });
        assert!(unknown.metadata().get(LEADER_METADATA).is_none());
        assert!(unknown.message().contains("no leader"), "{}", unknown.message());
    }

    #[test]
    fn every_domain_code_maps_to_its_grpc_code() {
        let exhausted = DomainError::SubnetExhausted {
            subnet_id: "subnet-1".to_owned(),
            wanted: 1,
            available: 0,
        };
        let status = refusal_status(Refusal::from(&exhausted));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.metadata().get(EXHAUSTED_METADATA).map(|v| v.to_str().ok()),
            Some(Some("subnet"))
        );
        let stale = DomainError::StaleEpoch {
            node: "n".to_owned(),
            given: 1,
            current: 2,
        };
        let status = refusal_status(Refusal::from(&stale));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.metadata().get(REGISTER_METADATA).map(|v| v.to_str().ok()),
            Some(Some("stale-epoch"))
        );
        let gone = refusal_status(Refusal::from(&DomainError::NodeNotFound { node: "n".to_owned() }));
        assert_eq!(gone.code(), Code::NotFound);
        assert_eq!(
            gone.metadata().get(REGISTER_METADATA).map(|v| v.to_str().ok()),
            Some(Some("node-unknown"))
        );
        let no_eni = refusal_status(Refusal::from(&DomainError::EniNotFound {
            node: "n".to_owned(),
            eni: 3,
        }));
        assert!(no_eni.metadata().get(REGISTER_METADATA).is_none());
        let unknown = Refusal {
            code: "SomethingNew".to_owned(),
            message: "m".to_owned(),
            exhausted: None,
            register_again: None,
        };
        assert_eq!(refusal_status(unknown).code(), Code::Unknown);
    }
}
