//! Address and prefix arithmetic for both families: parsing `a.b.c.d/n`,
//! network and broadcast addresses, containment and stepping.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// An address with its prefix length, e.g. `10.244.1.5/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self> {
        if prefix > max_prefix(addr) {
            bail!("prefix length /{prefix} is too long for {addr}");
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The first address of the prefix.
    pub fn network(&self) -> IpAddr {
        from_u128(self.addr, to_u128(self.addr) & self.mask())
    }

    /// The last address of the prefix (the IPv4 broadcast address).
    pub fn last(&self) -> IpAddr {
        from_u128(self.addr, to_u128(self.addr) | (!self.mask() & family_max(self.addr)))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && (to_u128(ip) & self.mask()) == to_u128(self.network())
    }

    /// This prefix with its host bits cleared.
    pub fn as_network(&self) -> Cidr {
        Cidr { addr: self.network(), prefix: self.prefix }
    }

    fn mask(&self) -> u128 {
        let bits = u32::from(max_prefix(self.addr));
        let host_bits = bits - u32::from(self.prefix);
        let all = family_max(self.addr);
        if host_bits >= 128 {
            0
        } else {
            all & !((1u128 << host_bits) - 1)
        }
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (addr, prefix) = s.split_once('/').with_context(|| format!("{s:?} is not in address/prefix form"))?;
        let addr: IpAddr = addr.parse().with_context(|| format!("{addr:?} is not an IP address"))?;
        let prefix: u8 = prefix.parse().with_context(|| format!("{prefix:?} is not a prefix length"))?;
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn family_max(ip: IpAddr) -> u128 {
    if ip.is_ipv4() {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Builds an address of the same family as `like` (the value is truncated
/// to 32 bits for IPv4).
pub fn from_u128(like: IpAddr, v: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The address after `ip`, or None at the end of the family's space.
pub fn next(ip: IpAddr) -> Option<IpAddr> {
    let v = to_u128(ip);
    (v < family_max(ip)).then(|| from_u128(ip, v + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_network_and_broadcast() {
        let c: Cidr = "10.244.1.77/24".parse().unwrap();
        assert_eq!(c.network(), ip("10.244.1.0"));
        assert_eq!(c.last(), ip("10.244.1.255"));
        assert!(c.contains(ip("10.244.1.1")));
        assert!(!c.contains(ip("10.244.2.1")));
        assert!(!c.contains(ip("::1")));
    }

    #[test]
    fn v4_edge_prefixes() {
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        let host: Cidr = "192.168.0.9/32".parse().unwrap();
        assert_eq!(host.network(), host.last());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
    }

    #[test]
    fn v6_arithmetic() {
        let c: Cidr = "fd00:10:244:1::abcd/64".parse().unwrap();
        assert_eq!(c.network(), ip("fd00:10:244:1::"));
        assert_eq!(c.last(), ip("fd00:10:244:1:ffff:ffff:ffff:ffff"));
        assert!(c.contains(ip("fd00:10:244:1::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains(ip("ffff::1")));
        assert_eq!(next(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), None);
        assert_eq!(next(ip("fd00::ff")), Some(ip("fd00::100")));
    }

    #[test]
    fn next_wraps_family_end() {
        assert_eq!(next(ip("10.0.0.255")), Some(ip("10.0.1.0")));
        assert_eq!(next(ip("255.255.255.255")), None);
    }
}
