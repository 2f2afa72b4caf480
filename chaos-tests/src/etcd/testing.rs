//! An in-memory [`Kv`] with etcd's revision semantics, and a hook that makes a rival write the
//! key just before our next compare-and-swaps, to test conflict handling.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use crate::error::Result;
use crate::etcd::Kv;
use crate::etcd::Swap;
use crate::etcd::Versioned;

/// What a rival writes: a function of the current value.
type Rival = Box<dyn Fn(&[u8]) -> Vec<u8> + Send>;

#[derive(Default)]
struct Inner {
    revision: i64,
    keys: HashMap<Vec<u8>, Versioned>,
    rival: Option<(u32, Rival)>,
    gets: u64,
}

/// An in-memory key-value store: every write bumps a store-wide revision, as etcd's does.
/// Clones share the store.
#[derive(Clone, Default)]
pub struct MemKv {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemKv").finish_non_exhaustive()
    }
}

impl MemKv {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Before each of the next `count` swaps, a rival replaces the key's value by
    /// `rival(current value)` (a new revision), so those swaps conflict.
    pub fn interfere_next_swaps(&self, count: u32, rival: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) {
        self.lock().rival = Some((count, Box::new(rival)));
    }

    /// The current value of a key.
    pub fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().keys.get(key).map(|v| v.value.clone())
    }

    /// How many reads were made.
    pub fn gets(&self) -> u64 {
        self.lock().gets
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn write(&mut self, key: &[u8], value: Vec<u8>) {
        self.revision += 1;
        self.keys.insert(
            key.to_vec(),
            Versioned {
                value,
                mod_revision: self.revision,
            },
        );
    }
}

impl Kv for MemKv {
    async fn get(&self, key: &[u8]) -> Result<Option<Versioned>> {
        let mut inner = self.lock();
        inner.gets += 1;
        Ok(inner.keys.get(key).cloned())
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.lock().write(key, value.to_vec());
        Ok(())
    }

    async fn swap(&self, key: &[u8], seen_mod_revision: i64, value: &[u8]) -> Result<Swap> {
        let mut inner = self.lock();
        if let Some((count, rival)) = inner.rival.take() {
            let current = inner.keys.get(key).map(|v| v.value.clone()).unwrap_or_default();
            let theirs = rival(&current);
            inner.write(key, theirs);
            if count > 1 {
                inner.rival = Some((count - 1, rival));
            }
        }
        let now = inner.keys.get(key).map_or(0, |v| v.mod_revision);
        if now != seen_mod_revision {
            return Ok(Swap::Conflict(inner.keys.get(key).cloned()));
        }
        inner.write(key, value.to_vec());
        Ok(Swap::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revisions_grow_with_every_write_and_guard_swaps() {
        let kv = MemKv::new();
        assert_eq!(kv.get(b"a").await.expect("test value"), None);
        assert_eq!(kv.swap(b"a", 0, b"1").await.expect("test value"), Swap::Done);
        assert_eq!(
            kv.swap(b"a", 0, b"2").await.expect("test value"),
            Swap::Conflict(Some(Versioned {
                value: b"1".to_vec(),
                mod_revision: 1
            }))
        );
        kv.put(b"b", b"x").await.expect("test value");
        assert_eq!(kv.swap(b"a", 1, b"3").await.expect("test value"), Swap::Done);
        assert_eq!(kv.get(b"a").await.expect("test value").map(|v| v.mod_revision), Some(3));
    }
}
