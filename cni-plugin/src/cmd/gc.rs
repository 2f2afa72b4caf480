//! GC: the agent releases every lease of the node whose attachment the runtime no longer has.
//!
//! The node's leases are not recorded per CNI network, while the runtime's valid list is one
//! network's. So GC runs only for the main plugin (the node's network); as an IPAM plugin under
//! another network (a Multus secondary network, say) it releases nothing, rather than the main
//! network's leases. Those leases are freed by their DELs and the main network's GC.

use ipam_proto::agent::v1 as api;

use super::Context;
use super::agent_error;
use crate::config::Mode;
use crate::spec::CniError;
use crate::spec::ErrorCode;

pub(crate) async fn run(ctx: &Context<'_>) -> Result<Vec<u8>, CniError> {
    // Without the list every lease would look stale: refuse rather than release them all.
    let valid = ctx.conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "GC needs cni.dev/valid-attachments (the attachments the runtime still has); the runtime must pass it",
        )
    })?;
    if ctx.conf.mode == Mode::IpamOnly {
        ctx.log
            .info("GC as an IPAM plugin: nothing released (leases are not recorded per network)");
        return Ok(Vec::new());
    }
    let request = api::GcRequest {
        valid_attachments: valid
            .iter()
            .map(|a| api::Attachment {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            })
            .collect(),
    };
    let mut agent = ctx.agent().await.map_err(|e| agent_error("GC", &e))?;
    let collected = agent.gc(request).await.map_err(|e| agent_error("GC", &e))?;
    ctx.log.info(&format!(
        "GC: {} valid attachments, {} leases released",
        valid.len(),
        collected.released
    ));
    Ok(Vec::new())
}
