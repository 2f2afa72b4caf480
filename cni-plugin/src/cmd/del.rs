//! DEL: release the lease and tear the pod's plumbing down; idempotent and best effort.
//!
//! ```text
//!   prevResult ─▶ lease record, pod ip, host veth (all optional)
//!   agent Del(lease id, attachment) ── unreachable: carry on (the agent's GC reclaims it later)
//!        └─ FAILED_PRECONDITION with a lease id: again by attachment alone
//!   main mode: unplumb(netns, ifname, host veth, ip) ── nothing there is fine
//! ```

use std::path::Path;

use ipam_proto::agent::v1 as api;

use super::Context;
use super::Plumber;
use super::agent_error;
use super::attachment;
use super::pod_ref;
use crate::agent_client::AgentClient;
use crate::agent_client::AgentError;
use crate::config::Mode;
use crate::spec::CniError;
use crate::spec::ErrorCode;
use crate::spec::LeaseRecord;
use crate::spec::SuccessResult;

/// The prefix of the host veth names the agent gives (the VPC CNI's `eni` + hash). DEL removes no
/// other host link, whatever a prevResult says.
pub(crate) const HOST_VETH_PREFIX: &str = "eni";

pub(crate) async fn run(ctx: &Context<'_>, plumber: &impl Plumber) -> Result<Vec<u8>, CniError> {
    let env = ctx.env.attachment(false)?;
    let prev = ctx
        .conf
        .prev_result
        .as_ref()
        .and_then(|value| match SuccessResult::from_value(value) {
            Ok(prev) => Some(prev),
            Err(error) => {
                ctx.log.warn(&format!(
                    "prevResult is not a CNI result ({error}); deleting by attachment alone"
                ));
                None
            }
        });
    let record = prev.as_ref().and_then(|p| LeaseRecord::find(p, &env.ifname));
    let ip = prev.as_ref().and_then(|p| p.ipv4_of(&env.ifname));
    let lease_id = record.as_ref().map(|r| r.lease_id).unwrap_or_default();
    let request = api::DelRequest {
        attachment: Some(attachment(&env)),
        lease_id,
        pod: pod_ref(&env, false).ok(),
        ip: ip.map(|ip| ip.to_string()).unwrap_or_default(),
    };

    let mut failure = None;
    let released = match ctx.agent().await {
        Ok(mut agent) => release(ctx, &mut agent, request).await,
        Err(error) => Err(error),
    };
    match released {
        Ok(released) => ctx.log.info(&format!(
            "DEL {} lease {lease_id} ip {}: {}",
            env.ifname,
            ip.map(|ip| ip.to_string()).unwrap_or_else(|| "-".to_owned()),
            if released { "released" } else { "nothing was bound" }
        )),
        Err(error) if error.unreachable() => ctx.log.warn(&format!(
            "DEL {}: {error}; tearing the plumbing down anyway, the agent's GC releases lease {lease_id} later",
            env.ifname
        )),
        Err(error) => failure = Some(agent_error("DEL", &error)),
    }

    if ctx.conf.mode == Mode::Main {
        let host_veth = prev
            .as_ref()
            .and_then(SuccessResult::host_interface)
            .map(|i| i.name.as_str())
            .filter(|name| name.starts_with(HOST_VETH_PREFIX));
        let netns = env.netns.as_deref().map(Path::new);
        if netns.is_some() || host_veth.is_some() {
            match plumber
                .unplumb(netns, &env.ifname, host_veth.unwrap_or_default(), ip)
                .await
            {
                Ok(()) => {}
                // The sandbox is gone and its veth with it: nothing is left to remove.
                Err(error) if error.netns_missing => {
                    ctx.log.debug(&format!("DEL {}: {error}", env.ifname));
                }
                Err(error) => {
                    ctx.log
                        .error(&format!("DEL {}: unplumbing failed: {error}", env.ifname));
                    failure = failure.or(Some(
                    CniError::new(
                        ErrorCode::PlumbingFailed,
                        format!(
                            "DEL: removing the pod's interfaces ({} in {}, host side {}) failed; the runtime retries",
                            env.ifname,
                            env.netns.as_deref().unwrap_or("-"),
                            host_veth.unwrap_or("-")
                        ),
                    )
                    .with_details(error.message),
                ));
                }
            }
        }
    }
    failure.map_or(Ok(Vec::new()), Err)
}

/// Releases by lease id and attachment; when the agent says they disagree (the lease was reused),
/// releases whatever the attachment itself holds.
async fn release(ctx: &Context<'_>, agent: &mut AgentClient, request: api::DelRequest) -> Result<bool, AgentError> {
    let lease_id = request.lease_id;
    let by_attachment = api::DelRequest {
        lease_id: 0,
        ..request.clone()
    };
    match agent.del(request).await {
        Err(AgentError::Status {
            code: tonic::Code::FailedPrecondition,
            message,
        }) if lease_id != 0 => {
            ctx.log.warn(&format!(
                "DEL: lease {lease_id} of prevResult is not this attachment's ({message}); releasing by attachment"
            ));
            agent.del(by_attachment).await.map(|r| r.released)
        }
        other => other.map(|r| r.released),
    }
}
