//! The compare-and-swap allocator of etcd-backed IPAMs, as the baseline the Raft IPAM is
//! measured against.
//!
//! Whereabouts keeps a whole range in one object (an `IPPool` with its allocations map) and
//! Calico a block of addresses in one key; both allocate the same way:
//!
//! ```text
//!   read the pool (value + mod_revision)
//!   ┌─▶ pick the lowest free address, add it to the allocations
//!   │   Txn: if mod_revision(pool) == seen { put(new pool) } else { range(pool) }
//!   └── conflict: someone else wrote first; start over from the value the Txn returned
//!       (at most `max_attempts` transactions; both projects give up after 100)
//! ```
//!
//! Release is the same loop with the address removed. Every allocation of the pool contends on
//! one key, which is the cost this benchmark shows.
//!
//! The pool value holds each allocation's offset and owner (Whereabouts keeps the container id
//! and pod reference too), in a compact binary form rather than JSON so that the client's CPU is
//! not what limits etcd here: entries sorted by offset, each `u32` offset (LE), `u16` owner length
//! (LE), owner bytes.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::error::Result;
use crate::etcd::Kv;
use crate::etcd::Swap;

/// Addresses reserved at the start of every subnet (network, router, DNS, future: AWS's rule).
pub const RESERVED_LOW: u32 = 4;

/// Addresses reserved at the end of every subnet (broadcast).
pub const RESERVED_HIGH: u32 = 1;

/// The allocations of one pool: offset in the pool → owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    /// Allocated offsets and who holds them.
    pub allocations: BTreeMap<u32, String>,
}

impl Pool {
    /// Decodes a pool value.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptPool`] on a truncated or malformed value.
    pub fn decode(mut bytes: &[u8]) -> Result<Self> {
        let mut allocations = BTreeMap::new();
        // Each entry takes at least 6 bytes, which bounds the loop by the value's length.
        while !bytes.is_empty() {
            let (head, rest) = bytes
                .split_at_checked(6)
                .ok_or_else(|| Error::CorruptPool(format!("truncated entry header ({} bytes)", bytes.len())))?;
            let offset = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let len = usize::from(u16::from_le_bytes([head[4], head[5]]));
            let (owner, rest) = rest
                .split_at_checked(len)
                .ok_or_else(|| Error::CorruptPool(format!("owner of offset {offset} truncated")))?;
            let owner = String::from_utf8(owner.to_vec())
                .map_err(|_| Error::CorruptPool(format!("owner of offset {offset} is not UTF-8")))?;
            if allocations.insert(offset, owner).is_some() {
                return Err(Error::CorruptPool(format!("offset {offset} allocated twice")));
            }
            bytes = rest;
        }
        Ok(Self { allocations })
    }

    /// Encodes the pool; owners longer than 65535 bytes are cut.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.allocations.values().map(|o| 6 + o.len()).sum());
        for (offset, owner) in &self.allocations {
            let owner = &owner.as_bytes()[..owner.len().min(usize::from(u16::MAX))];
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&u16::try_from(owner.len()).unwrap_or(u16::MAX).to_le_bytes());
            out.extend_from_slice(owner);
        }
        out
    }

    /// The lowest free offset of a pool of `size` addresses, skipping the reserved ones
    /// (Whereabouts' choice: the first free address of the range).
    pub fn pick_free(&self, size: u32) -> Option<u32> {
        let end = size.checked_sub(RESERVED_HIGH)?;
        let mut candidate = RESERVED_LOW;
        // Walks the allocations in order until the first gap: at most one step per allocation.
        for &offset in self.allocations.range(RESERVED_LOW..).map(|(o, _)| o) {
            if offset != candidate {
                break;
            }
            candidate = candidate.checked_add(1)?;
        }
        (candidate < end).then_some(candidate)
    }
}

/// Transactions made by one allocation or release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CasCounts {
    /// Txn calls made.
    pub txns: u32,
    /// Of which lost the race.
    pub conflicts: u32,
}

/// The allocator over one pool key.
#[derive(Debug, Clone)]
pub struct CasAllocator<K> {
    kv: K,
    key: Vec<u8>,
    size: u32,
    max_attempts: u32,
}

impl<K: Kv> CasAllocator<K> {
    /// An allocator of a pool of `size` addresses (65536 for a /16) stored at `key`, giving up
    /// after `max_attempts` conflicting transactions in a row.
    pub fn new(kv: K, key: Vec<u8>, size: u32, max_attempts: u32) -> Self {
        Self {
            kv,
            key,
            size,
            max_attempts: max_attempts.max(1),
        }
    }

    /// The key-value store.
    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// Creates the pool with `prefill` addresses already allocated (pods running before the
    /// benchmark); does nothing if it exists. Returns whether it created it.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn create_pool(&self, prefill: u32) -> Result<bool> {
        let mut pool = Pool::default();
        for i in 0..prefill.min(self.size.saturating_sub(RESERVED_LOW + RESERVED_HIGH)) {
            pool.allocations.insert(RESERVED_LOW + i, format!("prefill/pod-{i}"));
        }
        Ok(self.kv.swap(&self.key, 0, &pool.encode()).await? == Swap::Done)
    }

    /// Allocates the lowest free address to `owner`; returns its offset in the pool.
    ///
    /// # Errors
    ///
    /// [`Error::PoolFull`], [`Error::CasExhausted`], a corrupt pool or the store's error.
    pub async fn allocate(&self, owner: &str) -> Result<(u32, CasCounts)> {
        let size = self.size;
        self.update(|pool| {
            let offset = pool.pick_free(size).ok_or(Error::PoolFull)?;
            pool.allocations.insert(offset, owner.to_owned());
            Ok(offset)
        })
        .await
    }

    /// Releases the address at `offset` held by `owner`.
    ///
    /// # Errors
    ///
    /// [`Error::NotAllocated`] when `owner` does not hold it, [`Error::CasExhausted`], a corrupt
    /// pool or the store's error.
    pub async fn release(&self, offset: u32, owner: &str) -> Result<CasCounts> {
        let (_, counts) = self
            .update(|pool| match pool.allocations.get(&offset) {
                Some(holder) if holder == owner => {
                    pool.allocations.remove(&offset);
                    Ok(())
                }
                _ => Err(Error::NotAllocated {
                    offset,
                    owner: owner.to_owned(),
                }),
            })
            .await?;
        Ok(counts)
    }

    /// Read, change, compare-and-swap; again from the returned value on conflict.
    async fn update<R>(&self, mut change: impl FnMut(&mut Pool) -> Result<R>) -> Result<(R, CasCounts)> {
        let mut counts = CasCounts::default();
        let mut current = self.kv.get(&self.key).await?;
        for _ in 0..self.max_attempts {
            let (mut pool, seen) = match &current {
                Some(v) => (Pool::decode(&v.value)?, v.mod_revision),
                None => return Err(Error::CorruptPool("the pool key does not exist".to_owned())),
            };
            let result = change(&mut pool)?;
            counts.txns += 1;
            match self.kv.swap(&self.key, seen, &pool.encode()).await? {
                Swap::Done => return Ok((result, counts)),
                Swap::Conflict(now) => {
                    counts.conflicts += 1;
                    current = now;
                }
            }
        }
        Err(Error::CasExhausted { attempts: counts.txns })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::etcd::testing::MemKv;

    fn pool_of(offsets: &[u32]) -> Pool {
        Pool {
            allocations: offsets.iter().map(|&o| (o, format!("ns/pod-{o}"))).collect(),
        }
    }

    #[test]
    fn picks_the_lowest_free_address_after_the_reserved_ones() {
        assert_eq!(Pool::default().pick_free(65536), Some(4));
        assert_eq!(pool_of(&[4, 5, 7]).pick_free(65536), Some(6));
        assert_eq!(pool_of(&[4, 5, 6]).pick_free(65536), Some(7));
        // Prefilled entries below the usable range do not count.
        assert_eq!(pool_of(&[0, 1, 4]).pick_free(65536), Some(5));
    }

    #[test]
    fn a_full_pool_has_nothing_to_pick() {
        // A /29: 8 addresses, 4 reserved low, 1 high: offsets 4, 5, 6 usable.
        assert_eq!(pool_of(&[4, 5]).pick_free(8), Some(6));
        assert_eq!(pool_of(&[4, 5, 6]).pick_free(8), None);
        assert_eq!(Pool::default().pick_free(5), None);
        assert_eq!(Pool::default().pick_free(0), None);
    }

    #[test]
    fn the_value_round_trips_and_rejects_garbage() {
        let pool = pool_of(&[4, 9, 65534]);
        assert_eq!(Pool::decode(&pool.encode()).expect("test value"), pool);
        assert_eq!(Pool::decode(&[]).expect("test value"), Pool::default());
        let bytes = pool.encode();
        assert!(matches!(
            Pool::decode(&bytes[..bytes.len() - 1]),
            Err(Error::CorruptPool(_))
        ));
        assert!(matches!(Pool::decode(&bytes[..3]), Err(Error::CorruptPool(_))));
        let mut twice = pool_of(&[4]).encode();
        twice.extend(pool_of(&[4]).encode());
        assert!(matches!(Pool::decode(&twice), Err(Error::CorruptPool(_))));
    }

    #[tokio::test]
    async fn allocate_then_release_without_contention_takes_one_txn_each() {
        let allocator = CasAllocator::new(MemKv::new(), b"pool".to_vec(), 65536, 100);
        assert!(allocator.create_pool(0).await.expect("test value"));
        assert!(
            !allocator.create_pool(0).await.expect("test value"),
            "the second create finds the pool"
        );
        let (a, counts) = allocator.allocate("ns/a").await.expect("test value");
        assert_eq!((a, counts), (4, CasCounts { txns: 1, conflicts: 0 }));
        let (b, _) = allocator.allocate("ns/b").await.expect("test value");
        assert_eq!(b, 5);
        assert_eq!(
            allocator.release(a, "ns/a").await.expect("test value"),
            CasCounts { txns: 1, conflicts: 0 }
        );
        // The freed lowest address is picked again.
        assert_eq!(allocator.allocate("ns/c").await.expect("test value").0, 4);
    }

    #[tokio::test]
    async fn a_conflict_is_retried_from_the_value_the_txn_returned() {
        let kv = MemKv::new();
        let allocator = CasAllocator::new(kv.clone(), b"pool".to_vec(), 65536, 100);
        allocator.create_pool(0).await.expect("test value");
        // Another allocator takes offset 4 between our read and our Txn, twice.
        kv.interfere_next_swaps(2, |pool| {
            let mut pool = Pool::decode(pool).expect("test value");
            let offset = pool.pick_free(65536).expect("test value");
            pool.allocations.insert(offset, format!("other/{offset}"));
            pool.encode()
        });
        let (offset, counts) = allocator.allocate("ns/mine").await.expect("test value");
        assert_eq!(counts, CasCounts { txns: 3, conflicts: 2 });
        // The rivals took 4 and 5; we did not overwrite them.
        assert_eq!(offset, 6);
        let stored = Pool::decode(&kv.value(b"pool").expect("test value")).expect("test value");
        assert_eq!(stored.allocations.len(), 3);
        assert_eq!(stored.allocations[&6], "ns/mine");
        // One read for the whole allocation: the retries used the Txn's failure branch.
        assert_eq!(kv.gets(), 1);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_conflicts() {
        let kv = MemKv::new();
        let allocator = CasAllocator::new(kv.clone(), b"pool".to_vec(), 65536, 3);
        allocator.create_pool(0).await.expect("test value");
        kv.interfere_next_swaps(10, <[u8]>::to_vec);
        assert!(matches!(
            allocator.allocate("ns/a").await,
            Err(Error::CasExhausted { attempts: 3 })
        ));
    }

    #[tokio::test]
    async fn release_of_an_address_held_by_someone_else_is_refused() {
        let allocator = CasAllocator::new(MemKv::new(), b"pool".to_vec(), 65536, 10);
        allocator.create_pool(0).await.expect("test value");
        let (a, _) = allocator.allocate("ns/a").await.expect("test value");
        assert!(matches!(
            allocator.release(a, "ns/b").await,
            Err(Error::NotAllocated { .. })
        ));
        assert!(matches!(
            allocator.release(a + 1, "ns/a").await,
            Err(Error::NotAllocated { .. })
        ));
        allocator.release(a, "ns/a").await.expect("test value");
    }

    #[tokio::test]
    async fn a_missing_pool_and_a_full_pool_are_errors() {
        let allocator = CasAllocator::new(MemKv::new(), b"pool".to_vec(), 8, 10);
        assert!(matches!(allocator.allocate("x").await, Err(Error::CorruptPool(_))));
        allocator.create_pool(2).await.expect("test value");
        allocator.allocate("ns/a").await.expect("test value");
        assert!(matches!(allocator.allocate("ns/b").await, Err(Error::PoolFull)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_allocators_never_hand_out_an_address_twice() {
        let kv = MemKv::new();
        let allocator = Arc::new(CasAllocator::new(kv.clone(), b"pool".to_vec(), 65536, 10_000));
        allocator.create_pool(0).await.expect("test value");
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let allocator = Arc::clone(&allocator);
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0..50 {
                        let (offset, _) = allocator.allocate(&format!("ns/{t}-{i}")).await.expect("test value");
                        mine.push(offset);
                        tokio::task::yield_now().await;
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("test value"));
        }
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 400);
        let stored = Pool::decode(&kv.value(b"pool").expect("test value")).expect("test value");
        assert_eq!(stored.allocations.len(), 400);
    }
}
