//! VERSION: the versions this plugin speaks. Never fails: a missing or unreadable `cniVersion` on
//! stdin is answered with the plugin's own.

use serde_json::Value;

use crate::spec::Version;
use crate::spec::VersionResult;

pub(crate) fn run(stdin: &[u8]) -> Vec<u8> {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| Version::CURRENT.as_str().to_owned());
    serde_json::to_vec(&VersionResult::new(&asked)).unwrap_or_default()
}
