//! One allocation range (`subnet`, `rangeStart`, `rangeEnd`, `gateway`) and
//! the walk over its free candidates, in host-local's semantics: the
//! network address, the IPv4 broadcast address and the gateway are never
//! handed out.

use std::net::IpAddr;

use anyhow::{bail, Result};

use super::cidr::{self, Cidr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRange {
    /// The subnet, host bits cleared.
    pub subnet: Cidr,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl IpRange {
    /// Validates and fills the defaults: start after the network address,
    /// end before the IPv4 broadcast address, gateway at the first address.
    pub fn new(subnet: Cidr, start: Option<IpAddr>, end: Option<IpAddr>, gateway: Option<IpAddr>) -> Result<Self> {
        if subnet.addr != subnet.network() {
            bail!("subnet {subnet} has host bits set (did you mean {}?)", subnet.as_network());
        }
        let host_bits = cidr::max_prefix(subnet.addr) - subnet.prefix;
        if host_bits < 2 {
            bail!("subnet {subnet} is too small to hold a gateway and a pod");
        }
        let first = cidr::next(subnet.network()).expect("subnet has room");
        let last = if subnet.is_ipv4() {
            cidr::from_u128(subnet.addr, cidr::to_u128(subnet.last()) - 1)
        } else {
            subnet.last()
        };
        let gateway = gateway.unwrap_or(first);
        let start = start.unwrap_or(first);
        let end = end.unwrap_or(last);
        for (what, ip) in [("gateway", gateway), ("rangeStart", start), ("rangeEnd", end)] {
            if !subnet.contains(ip) {
                bail!("{what} {ip} is outside subnet {subnet}");
            }
            if ip == subnet.network() || (subnet.is_ipv4() && ip == subnet.last()) {
                bail!("{what} {ip} is the network or broadcast address of {subnet}");
            }
        }
        if cidr::to_u128(start) > cidr::to_u128(end) {
            bail!("rangeStart {start} is after rangeEnd {end}");
        }
        Ok(IpRange { subnet, start, end, gateway })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.contains(ip)
            && cidr::to_u128(ip) >= cidr::to_u128(self.start)
            && cidr::to_u128(ip) <= cidr::to_u128(self.end)
    }

    /// Whether `ip` may be leased from this range.
    pub fn is_assignable(&self, ip: IpAddr) -> bool {
        self.contains(ip) && ip != self.gateway
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.start.is_ipv4() == other.start.is_ipv4()
            && cidr::to_u128(self.start) <= cidr::to_u128(other.end)
            && cidr::to_u128(other.start) <= cidr::to_u128(self.end)
    }
}

/// Every assignable address of `ranges`, round robin: starting right after
/// `last` (when it lies in one of them) and wrapping once around all ranges.
pub fn candidates(ranges: &[IpRange], last: Option<IpAddr>) -> impl Iterator<Item = (usize, IpAddr)> + '_ {
    let origin = last
        .and_then(|ip| ranges.iter().position(|r| r.contains(ip)).map(|i| (i, ip)))
        .and_then(|(i, ip)| step(ranges, i, ip))
        .unwrap_or((0, ranges[0].start));
    let mut cursor = Some(origin);
    let mut started = false;
    std::iter::from_fn(move || loop {
        let (i, ip) = cursor?;
        if started && (i, ip) == origin {
            return None;
        }
        started = true;
        cursor = step(ranges, i, ip);
        if ranges[i].is_assignable(ip) {
            return Some((i, ip));
        }
    })
}

/// The address after `ip` in range `i`, moving to the next range (and
/// wrapping to the first) at the end of a range.
fn step(ranges: &[IpRange], i: usize, ip: IpAddr) -> Option<(usize, IpAddr)> {
    match cidr::next(ip) {
        Some(n) if ranges[i].contains(n) => Some((i, n)),
        _ => {
            let j = (i + 1) % ranges.len();
            Some((j, ranges[j].start))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn range(subnet: &str) -> IpRange {
        IpRange::new(subnet.parse().unwrap(), None, None, None).unwrap()
    }

    #[test]
    fn defaults_skip_network_gateway_broadcast() {
        let r = range("10.244.1.0/24");
        assert_eq!(r.gateway, ip("10.244.1.1"));
        assert_eq!(r.start, ip("10.244.1.1"));
        assert_eq!(r.end, ip("10.244.1.254"));
        let all: Vec<_> = candidates(std::slice::from_ref(&r), None).map(|(_, ip)| ip).collect();
        assert_eq!(all.len(), 253);
        assert_eq!(all[0], ip("10.244.1.2"));
        assert_eq!(*all.last().unwrap(), ip("10.244.1.254"));
    }

    #[test]
    fn round_robin_starts_after_last_and_wraps() {
        let r = IpRange::new("10.0.0.0/29".parse().unwrap(), None, None, None).unwrap();
        let order: Vec<_> =
            candidates(std::slice::from_ref(&r), Some(ip("10.0.0.4"))).map(|(_, ip)| ip.to_string()).collect();
        assert_eq!(order, ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
    }

    #[test]
    fn inclusive_start_end_and_several_ranges() {
        let a =
            IpRange::new("10.1.0.0/24".parse().unwrap(), Some(ip("10.1.0.10")), Some(ip("10.1.0.11")), None).unwrap();
        let b = IpRange::new("10.2.0.0/24".parse().unwrap(), Some(ip("10.2.0.5")), Some(ip("10.2.0.5")), None).unwrap();
        let ranges = [a, b];
        let order: Vec<_> = candidates(&ranges, None).map(|(i, ip)| (i, ip.to_string())).collect();
        assert_eq!(order, [(0, "10.1.0.10".into()), (0, "10.1.0.11".into()), (1, "10.2.0.5".to_string())]);
        let after: Vec<_> = candidates(&ranges, Some(ip("10.2.0.5"))).map(|(_, ip)| ip.to_string()).collect();
        assert_eq!(after[0], "10.1.0.10");
    }

    #[test]
    fn rejects_bad_ranges() {
        let s = || "10.244.1.0/24".parse().unwrap();
        assert!(IpRange::new(s(), None, None, Some(ip("10.244.2.1"))).is_err());
        assert!(IpRange::new(s(), Some(ip("10.244.1.50")), Some(ip("10.244.1.40")), None).is_err());
        assert!(IpRange::new(s(), None, Some(ip("10.244.1.255")), None).is_err());
        assert!(IpRange::new("10.244.1.7/24".parse().unwrap(), None, None, None).is_err());
        assert!(IpRange::new("10.244.1.0/31".parse().unwrap(), None, None, None).is_err());
    }

    #[test]
    fn v6_range_walks_lazily() {
        let r = range("fd00:1::/64");
        assert_eq!(r.gateway, ip("fd00:1::1"));
        let first: Vec<_> = candidates(std::slice::from_ref(&r), None).take(2).map(|(_, ip)| ip).collect();
        assert_eq!(first, [ip("fd00:1::2"), ip("fd00:1::3")]);
    }

    #[test]
    fn overlapping_ranges_detected() {
        let a = range("10.0.0.0/24");
        let b = IpRange::new("10.0.0.0/16".parse().unwrap(), Some(ip("10.0.0.200")), None, None).unwrap();
        let c = range("10.0.1.0/24");
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
    }
}
