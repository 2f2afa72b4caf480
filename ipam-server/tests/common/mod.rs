//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

/// A sled directory under the system temp dir, removed when dropped (also when a test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, unique path (not created: sled creates it).
    pub fn new(name: &str) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("ipam-server-{name}-{}-{nanos}", std::process::id()));
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
