//! `DetMap`: a hash map for large, hot lookup tables of the replicated state, that cannot leak
//! hash order into a decision.
//!
//! Why not `BTreeMap` everywhere (DESIGN.md: "ordered maps only")? Looking up one of thousands of
//! nodes by name in a `BTreeMap<String, _>` compares the key with a dozen or more stored names,
//! and each comparison reads a string from a different, usually cold, cache line; at millions of
//! leases that dominated bind+release (see docs/benchmarks.md). A hash lookup reads one or two.
//!
//! What the ordered-map rule protects is determinism: every replica must make the same decision,
//! and a replay must rebuild the same state. `DetMap` keeps that by construction:
//! * the hasher is fixed (no random seed), and
//! * it offers no iteration in hash order: `iter`/`values`/`keys` walk the entries in key order
//!   (O(n log n); meant for administration paths and tests, not for hot paths), and serialization
//!   writes entries in key order, so snapshots are identical byte for byte.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::hash::DefaultHasher;
use std::hash::Hash;
use std::ops::Index;

use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;

/// A deterministic map: hash lookups, key-ordered iteration. See the module docs.
#[derive(Clone)]
pub struct DetMap<K, V>(HashMap<K, V, BuildHasherDefault<DefaultHasher>>);

impl<K: Hash + Eq + Ord, V> DetMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self(HashMap::default())
    }

    /// The value for `key`.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.0.get(key)
    }

    /// The value for `key`, mutably.
    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.0.get_mut(key)
    }

    /// Whether `key` is present.
    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.0.contains_key(key)
    }

    /// Inserts, returning the old value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.0.insert(key, value)
    }

    /// Removes, returning the value.
    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.0.remove(key)
    }

    /// The entry for `key`.
    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        self.0.entry(key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in key order. O(n log n).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let mut entries: Vec<(&K, &V)> = self.0.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries.into_iter()
    }

    /// Keys in order. O(n log n).
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Values in key order. O(n log n).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Hash + Eq, V: PartialEq> PartialEq for DetMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K: Hash + Eq, V: Eq> Eq for DetMap<K, V> {}

impl<K: Hash + Eq + Ord, V> Default for DetMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for DetMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Hash + Eq + Ord + Borrow<Q>, Q: Hash + Eq + ?Sized, V> Index<&Q> for DetMap<K, V> {
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        &self.0[key]
    }
}

impl<K: Hash + Eq + Ord, V> FromIterator<(K, V)> for DetMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<K: Hash + Eq + Ord + Serialize, V: Serialize> Serialize for DetMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, K: Hash + Eq + Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for DetMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = HashMap::<K, V, BuildHasherDefault<DefaultHasher>>::deserialize(d)?;
        Ok(Self(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_and_serializes_in_key_order_whatever_the_insertion_order() {
        let forward: DetMap<String, u32> = (0..100).map(|i| (format!("node-{i:03}"), i)).collect();
        let backward: DetMap<String, u32> = (0..100).rev().map(|i| (format!("node-{i:03}"), i)).collect();
        assert_eq!(forward, backward);
        let keys: Vec<&String> = forward.keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let a = serde_json::to_string(&forward).unwrap_or_default();
        let b = serde_json::to_string(&backward).unwrap_or_default();
        assert_eq!(a, b, "snapshots are the same bytes on every replica");
        let back: DetMap<String, u32> = serde_json::from_str(&a).unwrap_or_default();
        assert_eq!(back, forward);
        assert_eq!(forward["node-042"], 42);
    }
}
