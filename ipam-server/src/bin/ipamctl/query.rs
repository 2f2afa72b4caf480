//! `get`, `stats` and `settings`: read (every page), then print in the format asked.

use std::io::Write;
use std::time::Duration;

use ipam_proto::ipam::v1 as pb;
use serde_json::Value;

use crate::Exit;
use crate::client::Client;
use crate::client::new_request_id;
use crate::output::Format;
use crate::output::Table;
use crate::render;

/// Writes a table (with a note on stderr when it is empty, as kubectl does) or JSON.
pub fn print(out: &mut dyn Write, format: Format, what: &str, table: Table, json: Value) -> Result<(), Exit> {
    let text = match format {
        Format::Json => format!("{json:#}\n"),
        Format::Table | Format::Wide => {
            if table.is_empty() {
                eprintln!("No {what} found.");
                return Ok(());
            }
            table.render()
        }
    };
    out.write_all(text.as_bytes()).map_err(Exit::output)
}

/// Every pool.
pub async fn pools(client: &mut Client) -> Result<Vec<pb::Pool>, Exit> {
    Ok(client
        .call(pb::ListPoolsRequest {}, |mut c, r| async move { c.list_pools(r).await })
        .await
        .map_err(Exit::Call)?
        .pools)
}

/// Every subnet config.
pub async fn subnet_configs(client: &mut Client) -> Result<Vec<pb::SubnetConfig>, Exit> {
    Ok(client
        .call(pb::ListSubnetConfigsRequest {}, |mut c, r| async move {
            c.list_subnet_configs(r).await
        })
        .await
        .map_err(Exit::Call)?
        .subnet_configs)
}

/// The policies of `namespace` (empty: all).
pub async fn sg_policies(client: &mut Client, namespace: &str) -> Result<Vec<pb::SgPolicy>, Exit> {
    let request = pb::ListSgPoliciesRequest {
        namespace: namespace.to_owned(),
    };
    Ok(client
        .call(request, |mut c, r| async move { c.list_sg_policies(r).await })
        .await
        .map_err(Exit::Call)?
        .policies)
}

/// The most pages a list reads: a server whose page tokens never end must not hang ipamctl.
const MAX_PAGES: usize = 100_000;

/// Every node matching the filter, all pages.
pub async fn nodes(client: &mut Client, mut request: pb::ListNodesRequest) -> Result<Vec<pb::Node>, Exit> {
    let mut all = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = client
            .call(request.clone(), |mut c, r| async move { c.list_nodes(r).await })
            .await
            .map_err(Exit::Call)?;
        all.extend(page.nodes);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        request.page_token = page.next_page_token;
    }
    Err(Exit::Protocol("ListNodes did not end after 100000 pages".to_owned()))
}

/// Every ENI matching the filter, all pages.
pub async fn enis(client: &mut Client, mut request: pb::ListEnisRequest) -> Result<Vec<pb::Eni>, Exit> {
    let mut all = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = client
            .call(request.clone(), |mut c, r| async move { c.list_enis(r).await })
            .await
            .map_err(Exit::Call)?;
        all.extend(page.enis);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        request.page_token = page.next_page_token;
    }
    Err(Exit::Protocol("ListEnis did not end after 100000 pages".to_owned()))
}

/// Every lease matching the filter, all pages.
pub async fn leases(client: &mut Client, mut request: pb::ListLeasesRequest) -> Result<Vec<pb::Lease>, Exit> {
    let mut all = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = client
            .call(request.clone(), |mut c, r| async move { c.list_leases(r).await })
            .await
            .map_err(Exit::Call)?;
        all.extend(page.leases);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        request.page_token = page.next_page_token;
    }
    Err(Exit::Protocol("ListLeases did not end after 100000 pages".to_owned()))
}

/// The per-subnet counts.
pub async fn stats(client: &mut Client) -> Result<Vec<pb::SubnetStats>, Exit> {
    Ok(client
        .call(pb::StatsRequest {}, |mut c, r| async move { c.stats(r).await })
        .await
        .map_err(Exit::Call)?
        .subnets)
}

/// The settings in force.
pub async fn settings(client: &mut Client) -> Result<pb::Settings, Exit> {
    client
        .call(
            pb::GetSettingsRequest {},
            |mut c, r| async move { c.get_settings(r).await },
        )
        .await
        .map_err(Exit::Call)?
        .settings
        .ok_or_else(|| Exit::Protocol("GetSettings answered without settings".to_owned()))
}

/// What `settings set` changes; `None` keeps the value in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsChange {
    /// `--heartbeat-ttl`.
    pub heartbeat_ttl: Option<Duration>,
    /// `--ip-cooldown`.
    pub ip_cooldown: Option<Duration>,
    /// `--branch-cooldown`.
    pub branch_cooldown: Option<Duration>,
    /// `--token-prefix`.
    pub token_prefix: Option<String>,
    /// `--recent-requests-per-node`.
    pub recent_requests_per_node: Option<u32>,
}

impl SettingsChange {
    /// `current` with the changes made. Refuses an empty change and durations that are not whole
    /// milliseconds.
    pub fn apply_to(&self, current: &pb::Settings) -> Result<pb::Settings, String> {
        if *self == Self::default() {
            return Err(
                "nothing to set: give at least one of --heartbeat-ttl, --ip-cooldown, --branch-cooldown, \
                        --token-prefix, --recent-requests-per-node"
                    .to_owned(),
            );
        }
        let ms = |flag: &str, value: Option<Duration>, old: u64| -> Result<u64, String> {
            let Some(value) = value else { return Ok(old) };
            if value.subsec_nanos() % 1_000_000 != 0 {
                return Err(format!("{flag}: {value:?} is not a whole number of milliseconds"));
            }
            u64::try_from(value.as_millis()).map_err(|_| format!("{flag}: {value:?} is too long"))
        };
        Ok(pb::Settings {
            heartbeat_ttl_ms: ms("--heartbeat-ttl", self.heartbeat_ttl, current.heartbeat_ttl_ms)?,
            ip_cooldown_ms: ms("--ip-cooldown", self.ip_cooldown, current.ip_cooldown_ms)?,
            branch_cooldown_ms: ms("--branch-cooldown", self.branch_cooldown, current.branch_cooldown_ms)?,
            token_prefix: self
                .token_prefix
                .clone()
                .unwrap_or_else(|| current.token_prefix.clone()),
            recent_requests_per_node: self
                .recent_requests_per_node
                .unwrap_or(current.recent_requests_per_node),
        })
    }
}

/// `settings set`: read, change, write the whole settings.
pub async fn set_settings(client: &mut Client, change: &SettingsChange) -> Result<pb::Settings, Exit> {
    let current = settings(client).await?;
    let wanted = change.apply_to(&current).map_err(Exit::Usage)?;
    let request = pb::UpdateSettingsRequest {
        request_id: new_request_id(),
        settings: Some(wanted),
    };
    client
        .call(request, |mut c, r| async move { c.update_settings(r).await })
        .await
        .map_err(Exit::Call)?
        .settings
        .ok_or_else(|| Exit::Protocol("UpdateSettings answered without settings".to_owned()))
}

/// Prints settings.
pub fn print_settings(out: &mut dyn Write, settings: &pb::Settings, format: Format) -> Result<(), Exit> {
    print(
        out,
        format,
        "settings",
        render::settings_table(settings),
        render::settings_json(settings),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> pb::Settings {
        pb::Settings {
            heartbeat_ttl_ms: 30_000,
            ip_cooldown_ms: 30_000,
            branch_cooldown_ms: 60_000,
            token_prefix: "ipam".to_owned(),
            recent_requests_per_node: 128,
        }
    }

    #[test]
    fn settings_change_keeps_what_is_not_given() {
        let change = SettingsChange {
            ip_cooldown: Some(Duration::from_secs(5)),
            ..SettingsChange::default()
        };
        let wanted = change.apply_to(&current()).expect("should succeed");
        assert_eq!(
            wanted,
            pb::Settings {
                ip_cooldown_ms: 5_000,
                ..current()
            }
        );
    }

    #[test]
    fn settings_change_refuses_nothing_and_fractions() {
        assert!(
            SettingsChange::default()
                .apply_to(&current())
                .expect_err("should fail")
                .contains("nothing to set")
        );
        let change = SettingsChange {
            heartbeat_ttl: Some(Duration::from_micros(1_500)),
            ..SettingsChange::default()
        };
        assert!(
            change
                .apply_to(&current())
                .expect_err("should fail")
                .contains("--heartbeat-ttl")
        );
    }

    #[test]
    fn empty_tables_print_nothing_on_stdout_but_json_does() {
        let mut out = Vec::new();
        print(
            &mut out,
            Format::Table,
            "pools",
            render::pools_table(&[], false),
            render::pools_json(&[]),
        )
        .expect("should succeed");
        assert!(out.is_empty());
        print(
            &mut out,
            Format::Json,
            "pools",
            render::pools_table(&[], false),
            render::pools_json(&[]),
        )
        .expect("should succeed");
        assert_eq!(String::from_utf8_lossy(&out), "{\n  \"pools\": []\n}\n");
    }
}
