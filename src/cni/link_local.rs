//! A pod's IPv6 link-local address is one of its own addresses: anti-
//! spoofing and policy know it like its leased ones. ADD makes it
//! predictable (EUI-64 from the interface's MAC, whatever the pod's
//! namespace defaults to) and registers it; DEL and GC derive it from the
//! MAC the pods map records, so nothing of it outlives the pod.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::netlink::Netns;

/// fe80::/64 with the modified EUI-64 interface identifier of `mac`.
pub fn of_mac(mac: [u8; 6]) -> IpAddr {
    let id = [mac[0] ^ 0x02, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]];
    let mut octets = [0u8; 16];
    octets[0] = 0xfe;
    octets[1] = 0x80;
    octets[8..].copy_from_slice(&id);
    IpAddr::V6(Ipv6Addr::from(octets))
}

/// Sets `ifname`'s address generation to EUI-64 inside the pod, before
/// the interface comes up (when the kernel picks its link-local address).
/// A namespace without IPv6 has no link-local address to predict.
pub fn make_predictable(ns: &Netns, ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/addr_gen_mode");
    ns.run(|| match std::fs::write(&path, "0") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    })?
    .with_context(|| format!("set {path} in {}", ns.path().display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui64_flips_the_universal_bit() {
        assert_eq!(of_mac([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]), "fe80::11:22ff:fe33:4455".parse::<IpAddr>().unwrap());
        assert_eq!(of_mac([0x00, 0x16, 0x3e, 0, 0, 1]), "fe80::216:3eff:fe00:1".parse::<IpAddr>().unwrap());
    }
}
