//! Interface addresses.

use std::net::IpAddr;

use anyhow::{anyhow, Context, Result};
use neli::{
    consts::{
        nl::NlmF,
        rtnl::{Ifa, IfaF, RtAddrFamily, RtScope, Rtm},
    },
    rtnl::{Ifaddrmsg, IfaddrmsgBuilder, RtattrBuilder},
    types::RtBuffer,
};

use super::Netlink;
use crate::ipam::Cidr;

pub(super) fn family(ip: IpAddr) -> RtAddrFamily {
    if ip.is_ipv4() {
        RtAddrFamily::Inet
    } else {
        RtAddrFamily::Inet6
    }
}

pub(super) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

pub(super) fn parse_ip(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::from(b))
    } else {
        <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
    }
}

impl Netlink {
    /// Adds `addr` to the link; an address already there is fine.
    pub fn add_address(&self, index: u32, addr: Cidr) -> Result<()> {
        let mut attrs = RtBuffer::new();
        for ty in [Ifa::Local, Ifa::Address] {
            attrs.push(
                RtattrBuilder::default()
                    .rta_type(ty)
                    .rta_payload(ip_bytes(addr.addr))
                    .build()
                    .map_err(|e| anyhow!("build address attribute: {e}"))?,
            );
        }
        // Pods' IPv6 addresses are unique by allocation: skip the DAD delay.
        let flags = if addr.is_ipv4() { IfaF::empty() } else { IfaF::NODAD };
        let msg = IfaddrmsgBuilder::default()
            .ifa_family(family(addr.addr))
            .ifa_prefixlen(addr.prefix)
            .ifa_flags(flags)
            .ifa_scope(RtScope::Universe)
            .ifa_index(index)
            .rtattrs(attrs)
            .build()
            .map_err(|e| anyhow!("build ifaddrmsg: {e}"))?;
        match self.request(Rtm::Newaddr, NlmF::CREATE | NlmF::EXCL, msg) {
            Err(e) if super::is_exists(&e) => Ok(()),
            other => other.with_context(|| format!("add address {addr} to link {index}")),
        }
    }

    /// Addresses on the link, with their prefix lengths.
    pub fn addresses(&self, index: u32) -> Result<Vec<Cidr>> {
        let msg = IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Unspecified)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(0)
            .build()
            .map_err(|e| anyhow!("build ifaddrmsg: {e}"))?;
        let all: Vec<Ifaddrmsg> = self.query(Rtm::Getaddr, NlmF::DUMP, msg).context("list addresses")?;
        Ok(all
            .iter()
            .filter(|m| *m.ifa_index() == index)
            .filter_map(|m| {
                let handle = m.rtattrs().get_attr_handle();
                let a = handle.get_attribute(Ifa::Local).or_else(|| handle.get_attribute(Ifa::Address))?;
                let ip = parse_ip(a.rta_payload().as_ref())?;
                Some(Cidr { addr: ip, prefix: *m.ifa_prefixlen() })
            })
            .collect())
    }
}
