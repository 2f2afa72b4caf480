//! `AcquireEc2BudgetRequest` → what the budget needs, and a [`Grant`] → the response.

use ipam_core::command::AgentRef;
use ipam_core::ids::RequestId;
use ipam_proto::ipam::v1 as pb;

use super::error::PbError;
use super::error::Result;
use super::field;
use super::node::agent_ref;
use crate::grpc::budget::ApiClass;
use crate::grpc::budget::Grant;

/// An `AcquireEc2Budget` request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRequest {
    /// The agent.
    pub agent: AgentRef,
    /// The idempotency key: a retry gets the first grant.
    pub request_id: RequestId,
    /// Which bucket.
    pub class: ApiClass,
    /// How many calls (at least 1).
    pub count: u32,
}

/// The budget class of a protobuf class; `None` for `UNSPECIFIED`.
pub fn api_class_from_pb(class: pb::Ec2ApiClass) -> Option<ApiClass> {
    match class {
        pb::Ec2ApiClass::Unspecified => None,
        pb::Ec2ApiClass::Mutating => Some(ApiClass::Mutating),
        pb::Ec2ApiClass::Describe => Some(ApiClass::Describe),
    }
}

/// `AcquireEc2Budget`'s request.
pub fn acquire_ec2_budget(req: &pb::AcquireEc2BudgetRequest) -> Result<BudgetRequest> {
    let agent = agent_ref(&req.node, req.epoch)?;
    let request_id = field::request_id("request_id", &req.request_id)?;
    let class = field::required_enum("api_class", "Ec2ApiClass", req.api_class, api_class_from_pb)?;
    if req.count == 0 {
        return Err(PbError::OutOfRange {
            field: "count".to_owned(),
            value: "0".to_owned(),
            why: "at least 1".to_owned(),
        });
    }
    Ok(BudgetRequest {
        agent,
        request_id,
        class,
        count: req.count,
    })
}

/// A grant as the API shows it.
pub fn grant_to_pb(grant: &Grant) -> pb::AcquireEc2BudgetResponse {
    pb::AcquireEc2BudgetResponse {
        granted: grant.granted,
        retry_after_ms: u64::try_from(grant.retry_after.as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn req() -> pb::AcquireEc2BudgetRequest {
        pb::AcquireEc2BudgetRequest {
            node: "n".to_owned(),
            epoch: 4,
            request_id: "b-1".to_owned(),
            api_class: pb::Ec2ApiClass::Describe.into(),
            count: 3,
        }
    }

    #[test]
    fn converts_and_rejects() {
        let ok = acquire_ec2_budget(&req()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((ok.class, ok.count, ok.agent.epoch), (ApiClass::Describe, 3, 4));
        let field_of = |r: pb::AcquireEc2BudgetRequest| acquire_ec2_budget(&r).err().map(|e| e.field().to_owned());
        assert_eq!(
            field_of(pb::AcquireEc2BudgetRequest { api_class: 0, ..req() }).as_deref(),
            Some("api_class")
        );
        assert_eq!(
            field_of(pb::AcquireEc2BudgetRequest { api_class: 5, ..req() }).as_deref(),
            Some("api_class")
        );
        assert_eq!(
            field_of(pb::AcquireEc2BudgetRequest { count: 0, ..req() }).as_deref(),
            Some("count")
        );
        assert_eq!(
            field_of(pb::AcquireEc2BudgetRequest {
                request_id: String::new(),
                ..req()
            })
            .as_deref(),
            Some("request_id")
        );
        let grant = grant_to_pb(&Grant {
            granted: 1,
            retry_after: Duration::from_millis(1_500),
        });
        assert_eq!((grant.granted, grant.retry_after_ms), (1, 1_500));
    }
}
