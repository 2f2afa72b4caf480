//! IPv4 prefixes and the address arithmetic AWS subnets need.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;

use crate::DomainError;

/// An IPv4 network prefix such as `100.64.0.0/16`. Host bits are always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

impl Ipv4Cidr {
    /// Builds a prefix; refuses prefixes over 32 and addresses with host bits set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, DomainError> {
        let text = || format!("{addr}/{prefix}");
        if prefix > 32 {
            return Err(DomainError::InvalidCidr {
                cidr: text(),
                why: "the prefix length is at most 32",
            });
        }
        let network = u32::from(addr);
        if network & !mask(prefix) != 0 {
            return Err(DomainError::InvalidCidr {
                cidr: text(),
                why: "host bits are set; use the network address",
            });
        }
        Ok(Self { network, prefix })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses in the prefix (2^(32 - prefix)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` lies inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.network
    }

    /// Whether `other` lies entirely inside this prefix.
    pub fn contains_cidr(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network())
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }

    /// The address at `offset` from the network address; `None` past the end.
    pub fn nth(&self, offset: u64) -> Option<Ipv4Addr> {
        (offset < self.size()).then(|| Ipv4Addr::from(self.network + offset as u32))
    }

    /// The offset of `ip` from the network address; `None` outside the prefix.
    pub fn offset_of(&self, ip: Ipv4Addr) -> Option<u64> {
        self.contains(ip).then(|| u64::from(u32::from(ip) - self.network))
    }

    /// The VPC router of an AWS subnet: the network address plus one.
    pub fn aws_gateway(&self) -> Option<Ipv4Addr> {
        self.nth(1)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| DomainError::InvalidCidr {
            cidr: s.to_owned(),
            why,
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 100.64.0.0/16"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad("the address is not a dotted-quad IPv4 address"))?;
        let prefix_ok = !prefix.is_empty() && prefix.len() <= 2 && prefix.bytes().all(|b| b.is_ascii_digit());
        let prefix: u8 = if prefix_ok {
            prefix.parse().map_err(|_| bad("bad prefix length"))?
        } else {
            99
        };
        if prefix > 32 {
            return Err(bad("the prefix length must be a number from 0 to 32"));
        }
        Self::new(addr, prefix)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The ranges AWS accepts as VPC CIDR blocks, and so as pools: RFC 1918, the shared address
/// space 100.64.0.0/10 (custom networking's usual choice) and 198.19.0.0/16.
pub fn is_vpc_range(cidr: &Ipv4Cidr) -> bool {
    const RANGES: [([u8; 4], u8); 5] = [
        ([10, 0, 0, 0], 8),
        ([172, 16, 0, 0], 12),
        ([192, 168, 0, 0], 16),
        ([100, 64, 0, 0], 10),
        ([198, 19, 0, 0], 16),
    ];
    RANGES.iter().any(|&(net, prefix)| {
        Ipv4Cidr {
            network: u32::from(Ipv4Addr::from(net)),
            prefix,
        }
        .contains_cidr(cidr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_and_prints() {
        let c = cidr("100.64.0.0/16");
        assert_eq!(c.to_string(), "100.64.0.0/16");
        assert_eq!(c.size(), 65_536);
        assert_eq!(c.aws_gateway(), Some(Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(cidr("1.2.3.4/32").size(), 1);
    }

    #[test]
    fn rejects_bad_text_with_a_reason() {
        for bad in [
            "100.64.0.0",
            "100.64.0.0/33",
            "100.64.0.1/16",
            "100.64.0/16",
            "x/8",
            "1.2.3.4/-1",
            "1.2.3.4/",
        ] {
            let err = bad.parse::<Ipv4Cidr>().expect_err(bad);
            assert!(matches!(err, DomainError::InvalidCidr { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn containment_and_overlap() {
        let pool = cidr("100.64.0.0/10");
        let a = cidr("100.64.0.0/16");
        let b = cidr("100.65.0.0/16");
        assert!(pool.contains_cidr(&a) && !a.contains_cidr(&pool));
        assert!(pool.overlaps(&a) && a.overlaps(&pool) && !a.overlaps(&b));
        assert!(a.contains(Ipv4Addr::new(100, 64, 255, 255)) && !a.contains(Ipv4Addr::new(100, 65, 0, 0)));
        assert_eq!(a.offset_of(Ipv4Addr::new(100, 64, 1, 2)), Some(258));
        assert_eq!(a.nth(258), Some(Ipv4Addr::new(100, 64, 1, 2)));
        assert_eq!(a.nth(65_536), None);
    }

    #[test]
    fn vpc_ranges() {
        assert!(is_vpc_range(&cidr("100.64.0.0/10")));
        assert!(is_vpc_range(&cidr("198.19.0.0/16")));
        assert!(is_vpc_range(&cidr("10.0.0.0/8")));
        assert!(!is_vpc_range(&cidr("100.0.0.0/8")));
        assert!(!is_vpc_range(&cidr("8.8.8.0/24")));
    }

    #[test]
    fn serde_is_the_text_form() {
        let c = cidr("198.19.0.0/16");
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert_eq!(json, "\"198.19.0.0/16\"");
        assert_eq!(serde_json::from_str::<Ipv4Cidr>(&json).ok(), Some(c));
        assert!(serde_json::from_str::<Ipv4Cidr>("\"198.19.0.1/16\"").is_err());
    }
}
