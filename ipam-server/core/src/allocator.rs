//! The per-subnet address allocator: O(1) amortised per address, whatever the subnet's size.
//!
//! ```text
//!   offset:  0 1 2 3 | 4 5 6 7 ............ n-2 | n-1
//!            AWS reserved | usable               | broadcast (AWS reserved)
//!
//!   used   : bitmap, one bit per offset           (is it held by anything?)
//!   queued : bitmap, one bit per offset           (is it somewhere in `free`?)
//!   free   : FIFO of offsets, front = next to hand out; entries whose `used` bit is set are
//!            stale and skipped (lazy deletion), so taking a specific address is O(1) too.
//! ```
//!
//! FIFO order means an address that comes back is handed out again as late as possible, which
//! keeps stale ARP/conntrack entries elsewhere in the VPC from meeting a new owner.
//! Everything here is deterministic: the same sequence of calls gives the same state on every
//! replica.

use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

use crate::cidr::Ipv4Cidr;

/// Addresses AWS keeps at the start of every subnet (network, router, DNS, future use).
pub const AWS_RESERVED_HEAD: u64 = 4;
/// Addresses AWS keeps at the end of every subnet (the broadcast address).
pub const AWS_RESERVED_TAIL: u64 = 1;

/// Free and used addresses of one AWS subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetAllocator {
    cidr: Ipv4Cidr,
    used: Vec<u64>,
    queued: Vec<u64>,
    free: VecDeque<u32>,
    in_use: u64,
    quarantined: BTreeSet<Ipv4Addr>,
}

impl SubnetAllocator {
    /// A fresh allocator with every usable address free, lowest first. The caller checks that
    /// the prefix is one AWS accepts for a subnet (/16 to /28).
    pub fn new(cidr: Ipv4Cidr) -> Self {
        let size = cidr.size();
        let words = size.div_ceil(64) as usize;
        let mut alloc = Self {
            cidr,
            used: vec![0; words],
            queued: vec![0; words],
            free: VecDeque::with_capacity(size.saturating_sub(AWS_RESERVED_HEAD + AWS_RESERVED_TAIL) as usize),
            in_use: 0,
            quarantined: BTreeSet::new(),
        };
        for offset in AWS_RESERVED_HEAD..size.saturating_sub(AWS_RESERVED_TAIL) {
            alloc.free.push_back(offset as u32);
            set(&mut alloc.queued, offset);
        }
        alloc
    }

    /// The subnet's prefix.
    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// Addresses AWS lets us use in this subnet.
    pub fn usable(&self) -> u64 {
        self.cidr.size().saturating_sub(AWS_RESERVED_HEAD + AWS_RESERVED_TAIL)
    }

    /// Addresses held by anything (ENIs, intents, cooling, quarantine).
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Addresses that can be handed out now.
    pub fn available(&self) -> u64 {
        self.usable() - self.in_use
    }

    /// Addresses EC2 reported as used by something outside this cluster.
    pub fn quarantined(&self) -> &BTreeSet<Ipv4Addr> {
        &self.quarantined
    }

    /// Whether `ip` is a usable address of this subnet (not one AWS reserves).
    pub fn is_usable(&self, ip: Ipv4Addr) -> bool {
        self.cidr
            .offset_of(ip)
            .is_some_and(|o| o >= AWS_RESERVED_HEAD && o < self.cidr.size() - AWS_RESERVED_TAIL)
    }

    /// Whether `ip` is held by anything. Addresses outside the usable range count as held.
    pub fn is_used(&self, ip: Ipv4Addr) -> bool {
        match self.usable_offset(ip) {
            Some(offset) => get(&self.used, offset),
            None => true,
        }
    }

    /// The next `n` addresses that `take` would hand out, without changing anything; `None` when
    /// fewer than `n` are free. Amortised O(n): stale entries are few and popped by `take`.
    pub fn peek(&self, n: usize) -> Option<Vec<Ipv4Addr>> {
        if (n as u64) > self.available() {
            return None;
        }
        let picked: Vec<Ipv4Addr> = self
            .free
            .iter()
            .filter(|&&offset| !get(&self.used, u64::from(offset)))
            .take(n)
            .filter_map(|&offset| self.cidr.nth(u64::from(offset)))
            .collect();
        (picked.len() == n).then_some(picked)
    }

    /// Marks `ip` as held. Returns false (and changes nothing) when it is not free.
    pub fn take(&mut self, ip: Ipv4Addr) -> bool {
        let Some(offset) = self.usable_offset(ip) else {
            return false;
        };
        if get(&self.used, offset) {
            return false;
        }
        set(&mut self.used, offset);
        self.in_use += 1;
        while let Some(&front) = self.free.front() {
            if !get(&self.used, u64::from(front)) {
                break;
            }
            self.free.pop_front();
            clear(&mut self.queued, u64::from(front));
        }
        true
    }

    /// Returns `ip` to the free list (at the back). Returns false when it was not held.
    pub fn release(&mut self, ip: Ipv4Addr) -> bool {
        let Some(offset) = self.usable_offset(ip) else {
            return false;
        };
        if !get(&self.used, offset) || self.quarantined.contains(&ip) {
            return false;
        }
        clear(&mut self.used, offset);
        self.in_use -= 1;
        if !get(&self.queued, offset) {
            set(&mut self.queued, offset);
            self.free.push_back(offset as u32);
        }
        true
    }

    /// Holds `ip` as used by something outside the cluster, whether or not we held it.
    pub fn quarantine(&mut self, ip: Ipv4Addr) {
        if self.usable_offset(ip).is_some() {
            self.take(ip);
            self.quarantined.insert(ip);
        }
    }

    /// Lifts a quarantine and frees the address. Returns false when `ip` was not quarantined.
    pub fn unquarantine(&mut self, ip: Ipv4Addr) -> bool {
        self.quarantined.remove(&ip) && self.release(ip)
    }

    fn usable_offset(&self, ip: Ipv4Addr) -> Option<u64> {
        self.is_usable(ip).then(|| self.cidr.offset_of(ip)).flatten()
    }
}

fn get(bits: &[u64], i: u64) -> bool {
    bits[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set(bits: &mut [u64], i: u64) {
    bits[(i / 64) as usize] |= 1 << (i % 64);
}

fn clear(bits: &mut [u64], i: u64) {
    bits[(i / 64) as usize] &= !(1 << (i % 64));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn alloc(cidr: &str) -> SubnetAllocator {
        SubnetAllocator::new(cidr.parse().unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn skips_aws_reserved_addresses() {
        let a = alloc("100.64.0.0/28");
        assert_eq!(a.usable(), 11);
        let all = a.peek(11).unwrap_or_default();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(100, 64, 0, 4)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(100, 64, 0, 14)));
        assert!(a.peek(12).is_none());
        assert!(a.is_used(Ipv4Addr::new(100, 64, 0, 1)), "the router is never free");
        assert!(
            a.is_used(Ipv4Addr::new(100, 64, 0, 15)),
            "the broadcast address is never free"
        );
    }

    #[test]
    fn released_addresses_go_to_the_back() {
        let mut a = alloc("100.64.0.0/28");
        let first = Ipv4Addr::new(100, 64, 0, 4);
        assert!(a.take(first));
        assert!(!a.take(first), "taking twice is refused");
        assert_eq!(a.peek(1), Some(vec![Ipv4Addr::new(100, 64, 0, 5)]));
        assert!(a.release(first));
        assert!(!a.release(first), "releasing twice is refused");
        assert_eq!(a.peek(11).and_then(|v| v.last().copied()), Some(first));
    }

    #[test]
    fn quarantine_holds_until_lifted() {
        let mut a = alloc("100.64.0.0/28");
        let ip = Ipv4Addr::new(100, 64, 0, 9);
        a.quarantine(ip);
        assert!(a.is_used(ip) && !a.release(ip));
        assert_eq!(a.available(), 10);
        assert!(a.unquarantine(ip) && !a.is_used(ip));
        assert_eq!(a.available(), 11);
    }

    proptest! {
        /// Whatever the order of takes and releases, `peek` never offers a held address and
        /// never offers one twice, and the counters match a plain set.
        #[test]
        fn matches_a_set_model(ops in proptest::collection::vec((any::<bool>(), 0u8..16, 1usize..4), 1..200)) {
            let mut a = alloc("100.64.0.0/28");
            let mut held = BTreeSet::new();
            for (take, offset, n) in ops {
                let ip = Ipv4Addr::new(100, 64, 0, offset);
                if take {
                    if let Some(ips) = a.peek(n) {
                        let unique: BTreeSet<_> = ips.iter().copied().collect();
                        prop_assert_eq!(unique.len(), n);
                        for ip in ips {
                            prop_assert!(!held.contains(&ip));
                            prop_assert!(a.take(ip));
                            held.insert(ip);
                        }
                    } else {
                        prop_assert!(a.available() < n as u64);
                    }
                } else {
                    prop_assert_eq!(a.release(ip), held.remove(&ip));
                }
                prop_assert_eq!(a.in_use(), held.len() as u64);
                for o in 0..16u8 {
                    let ip = Ipv4Addr::new(100, 64, 0, o);
                    prop_assert_eq!(a.is_used(ip), held.contains(&ip) || !a.is_usable(ip));
                }
            }
        }
    }
}
