//! STATUS: whether the agent is there and ready for ADDs (code 50 when not).

use super::Context;
use crate::spec::CniError;
use crate::spec::ErrorCode;

pub(crate) async fn run(ctx: &Context<'_>) -> Result<Vec<u8>, CniError> {
    let not_available = |msg: String| CniError::new(ErrorCode::NotAvailable, msg);
    let mut agent = ctx.agent().await.map_err(|e| {
        not_available(format!(
            "STATUS: {e}; ADDs fail until the ipam-eks node agent runs on this node (existing pods keep working)"
        ))
    })?;
    let status = agent
        .status()
        .await
        .map_err(|e| not_available(format!("STATUS: {e}; ADDs fail until the node agent answers")))?;
    if !status.ready {
        let reason = if status.reason.is_empty() {
            "no reason given"
        } else {
            status.reason.as_str()
        };
        return Err(not_available(format!(
            "STATUS: the node agent is not ready for ADDs: {reason}; see the agent's logs"
        )));
    }
    ctx.log.debug("STATUS: ready");
    Ok(Vec::new())
}
