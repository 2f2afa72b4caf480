//! CHECK: the agent still binds prevResult's lease to the attachment, and the plumbing is intact.
//!
//! ```text
//!   prevResult ─▶ lease record, ip, gateway, host veth ─▶ agent Check ─▶ plumbing check (main mode)
//! ```

use std::path::PathBuf;

use ipam_proto::agent::v1 as api;

use super::Context;
use super::Plumber;
use super::agent_error;
use super::attachment;
use crate::config::DEFAULT_MTU;
use crate::config::Mode;
use crate::plumbing::PodLink;
use crate::spec::CniError;
use crate::spec::ErrorCode;
use crate::spec::LeaseRecord;
use crate::spec::SuccessResult;

pub(crate) async fn run(ctx: &Context<'_>, plumber: &impl Plumber) -> Result<Vec<u8>, CniError> {
    let env = ctx.env.attachment(true)?;
    let invalid = |msg: String| CniError::new(ErrorCode::InvalidConfig, msg);
    let value = ctx.conf.prev_result.as_ref().ok_or_else(|| {
        invalid("CHECK needs prevResult (the result of the attachment's ADD); the runtime must pass it".to_owned())
    })?;
    let prev = SuccessResult::from_value(value)
        .map_err(|e| CniError::new(ErrorCode::Decode, "CHECK: prevResult is not a CNI result").with_details(e))?;
    let ip = prev
        .ipv4_of(&env.ifname)
        .ok_or_else(|| invalid(format!("CHECK: prevResult has no IPv4 address for {}", env.ifname)))?;
    let record = LeaseRecord::find(&prev, &env.ifname);
    let record = match (ctx.conf.mode, record) {
        (_, Some(record)) => record,
        (Mode::Main, None) => {
            return Err(invalid(format!(
                "CHECK: prevResult has no ipam-eks lease record (interface {}{}); was {} added by ipam-eks?",
                LeaseRecord::NAME_PREFIX,
                env.ifname,
                env.ifname
            )));
        }
        (Mode::IpamOnly, None) => {
            // The main plugin's result does not carry our record, and the agent checks by lease id.
            ctx.log
                .debug("CHECK in IPAM-only mode: no lease record in prevResult; nothing to check");
            return Ok(Vec::new());
        }
    };

    let mut agent = ctx.agent().await.map_err(|e| agent_error("CHECK", &e))?;
    let answer = agent
        .check(api::CheckRequest {
            attachment: Some(attachment(&env)),
            lease_id: record.lease_id,
            ip: ip.to_string(),
        })
        .await
        .map_err(|e| agent_error("CHECK", &e))?;
    if !answer.ok {
        return Err(CniError::new(
            ErrorCode::CheckFailed,
            format!(
                "CHECK: the agent does not hold lease {} ({ip}) for {}: {}; recreate the pod",
                record.lease_id, env.ifname, answer.reason
            ),
        ));
    }

    if ctx.conf.mode == Mode::Main {
        let host_veth = prev
            .host_interface()
            .ok_or_else(|| invalid("CHECK: prevResult has no host interface (the pod's veth)".to_owned()))?;
        let gateway = prev
            .gateway_of(ip)
            .ok_or_else(|| invalid(format!("CHECK: prevResult has no IPv4 gateway for {ip}")))?;
        let netns = env.netns.clone().unwrap_or_default();
        let link = PodLink {
            netns: PathBuf::from(&netns),
            ifname: env.ifname.clone(),
            host_veth: host_veth.name.clone(),
            ip,
            gateway,
            mtu: Some(record.mtu)
                .filter(|m| *m != 0)
                .or(ctx.conf.plugin.mtu)
                .unwrap_or(DEFAULT_MTU),
        };
        plumber.check(&link).await.map_err(|failure| {
            if failure.netns_missing {
                CniError::new(
                    ErrorCode::UnknownContainer,
                    format!("CHECK: the pod's network namespace {netns} does not exist"),
                )
            } else {
                CniError::new(
                    ErrorCode::CheckFailed,
                    "CHECK: the pod's plumbing is not as ADD left it; recreate the pod",
                )
            }
            .with_details(failure.message)
        })?;
    }
    ctx.log
        .info(&format!("CHECK {} lease {} ip {ip}: ok", env.ifname, record.lease_id));
    Ok(Vec::new())
}
