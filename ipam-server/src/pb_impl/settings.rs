//! Cluster-wide settings: `pb::Settings` ⇄ [`Settings`]. Ranges beyond the integer widths (the
//! 30 s branch cooldown floor, the token prefix syntax) are the domain's `validate::settings`.

use ipam_core::ids::RequestId;
use ipam_core::state::Settings;
use ipam_proto::ipam::v1 as pb;

use super::error::Result;
use super::field;

/// Settings from the wire (`recent_requests_per_node` must fit 16 bits).
pub fn settings_from_pb(settings: &pb::Settings) -> Result<Settings> {
    Ok(Settings {
        heartbeat_ttl_ms: settings.heartbeat_ttl_ms,
        ip_cooldown_ms: settings.ip_cooldown_ms,
        branch_cooldown_ms: settings.branch_cooldown_ms,
        token_prefix: settings.token_prefix.clone(),
        recent_requests_per_node: field::narrow(
            "recent_requests_per_node",
            settings.recent_requests_per_node,
            "at most 65535",
        )?,
    })
}

/// Settings as the API shows them.
pub fn settings_to_pb(settings: &Settings) -> pb::Settings {
    pb::Settings {
        heartbeat_ttl_ms: settings.heartbeat_ttl_ms,
        ip_cooldown_ms: settings.ip_cooldown_ms,
        branch_cooldown_ms: settings.branch_cooldown_ms,
        token_prefix: settings.token_prefix.clone(),
        recent_requests_per_node: u32::from(settings.recent_requests_per_node),
    }
}

/// `UpdateSettings`' request id and settings, whole (the command is
/// `CommandBody::UpdateSettings`).
pub fn update_settings(req: &pb::UpdateSettingsRequest) -> Result<(RequestId, Settings)> {
    let request_id = field::request_id("request_id", &req.request_id)?;
    let settings = field::message("settings", req.settings.as_ref())?;
    let settings = settings_from_pb(settings).map_err(|e| e.within("settings"))?;
    Ok((request_id, settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb_impl::error::PbError;

    #[test]
    fn round_trip() {
        let domain = Settings {
            heartbeat_ttl_ms: 12_000,
            ip_cooldown_ms: 5_000,
            branch_cooldown_ms: 45_000,
            token_prefix: "prod-a".to_owned(),
            recent_requests_per_node: 300,
        };
        let wire = settings_to_pb(&domain);
        assert_eq!(wire.recent_requests_per_node, 300);
        assert_eq!(settings_from_pb(&wire), Ok(domain));
    }

    #[test]
    fn rejections() {
        let wire = pb::Settings {
            recent_requests_per_node: 70_000,
            ..settings_to_pb(&Settings::default())
        };
        let req = pb::UpdateSettingsRequest {
            request_id: "s-1".to_owned(),
            settings: Some(wire),
        };
        assert_eq!(
            update_settings(&req).err().map(|e| e.field().to_owned()).as_deref(),
            Some("settings.recent_requests_per_node")
        );
        let req = pb::UpdateSettingsRequest {
            request_id: "s-1".to_owned(),
            settings: None,
        };
        assert_eq!(
            update_settings(&req),
            Err(PbError::Missing {
                field: "settings".to_owned()
            })
        );
        let req = pb::UpdateSettingsRequest {
            request_id: " ".to_owned(),
            settings: Some(settings_to_pb(&Settings::default())),
        };
        assert!(matches!(update_settings(&req), Err(PbError::InvalidRequestId { .. })));
    }
}
