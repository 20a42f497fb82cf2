//! Routes in the main table.

use std::net::IpAddr;

use anyhow::{anyhow, Context, Result};
use neli::{
    consts::{
        nl::NlmF,
        rtnl::{RtScope, RtTable, Rta, Rtm, Rtn, Rtprot},
    },
    rtnl::{RtattrBuilder, Rtmsg, RtmsgBuilder},
    types::{Buffer, RtBuffer},
    Size, ToBytes,
};

use super::addr::{family, ip_bytes, parse_ip};
use super::Netlink;
use crate::ipam::Cidr;

fn rta<P: Size + ToBytes>(ty: Rta, payload: P) -> Result<neli::rtnl::Rtattr<Rta, Buffer>> {
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(payload)
        .build()
        .map_err(|e| anyhow!("build route attribute: {e}"))
}

impl Netlink {
    /// Adds `dst` via `gateway` (or on-link when None) out of link `oif`.
    /// The same route already there out of `oif` is fine (a retried ADD);
    /// one to `dst` out of another link is an error naming it.
    pub fn add_route(&self, dst: Cidr, gateway: Option<IpAddr>, oif: u32) -> Result<()> {
        let mut attrs = RtBuffer::new();
        if dst.prefix > 0 {
            attrs.push(rta(Rta::Dst, ip_bytes(dst.network()))?);
        }
        if let Some(gw) = gateway {
            attrs.push(rta(Rta::Gateway, ip_bytes(gw))?);
        }
        attrs.push(rta(Rta::Oif, oif)?);
        let scope = if gateway.is_some() { RtScope::Universe } else { RtScope::Link };
        let msg = RtmsgBuilder::default()
            .rtm_family(family(dst.addr))
            .rtm_dst_len(dst.prefix)
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Main)
            .rtm_protocol(Rtprot::Boot)
            .rtm_scope(scope)
            .rtm_type(Rtn::Unicast)
            .rtattrs(attrs)
            .build()
            .map_err(|e| anyhow!("build rtmsg: {e}"))?;
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        match self.request(Rtm::Newroute, NlmF::CREATE | NlmF::EXCL, msg) {
            Err(e) if super::is_exists(&e) => {
                if self.routes(oif)?.iter().any(|(d, g)| *d == dst.as_network() && *g == gateway) {
                    return Ok(());
                }
                Err(e).with_context(|| format!("add route {dst}{via} dev {oif}: the pod already has a route to {dst}"))
            }
            other => other.with_context(|| format!("add route {dst}{via} dev {oif}")),
        }
    }
}

/// A main-table route of one routing protocol (the agent's own).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedRoute {
    pub dst: Cidr,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
}

impl Netlink {
    fn route_msg(&self, r: &OwnedRoute, proto: u8) -> Result<neli::rtnl::Rtmsg> {
        let mut attrs = RtBuffer::new();
        attrs.push(rta(Rta::Dst, ip_bytes(r.dst.network()))?);
        if let Some(gw) = r.gateway {
            attrs.push(rta(Rta::Gateway, ip_bytes(gw))?);
        }
        attrs.push(rta(Rta::Oif, r.oif)?);
        RtmsgBuilder::default()
            .rtm_family(family(r.dst.addr))
            .rtm_dst_len(r.dst.prefix)
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Main)
            .rtm_protocol(Rtprot::UnrecognizedConst(proto))
            .rtm_scope(if r.gateway.is_some() { RtScope::Universe } else { RtScope::Link })
            .rtm_type(Rtn::Unicast)
            .rtattrs(attrs)
            .build()
            .map_err(|e| anyhow!("build rtmsg: {e}"))
    }

    /// Adds the route, or replaces the one to the same destination.
    pub fn replace_route(&self, r: &OwnedRoute, proto: u8) -> Result<()> {
        let msg = self.route_msg(r, proto)?;
        self.request(Rtm::Newroute, NlmF::CREATE | NlmF::REPLACE, msg)
            .with_context(|| format!("replace route {} via {:?} dev {}", r.dst, r.gateway, r.oif))
    }

    /// Deletes the route; a missing one is fine.
    pub fn delete_route(&self, r: &OwnedRoute, proto: u8) -> Result<()> {
        let msg = self.route_msg(r, proto)?;
        match self.request(Rtm::Delroute, NlmF::empty(), msg) {
            Err(e) if super::errno(&e) == Some(nix::errno::Errno::ESRCH as i32) || super::is_not_found(&e) => Ok(()),
            other => other.with_context(|| format!("delete route {}", r.dst)),
        }
    }

    /// Every route of the main table, as the kernel dumps it.
    fn main_table(&self) -> Result<Vec<Rtmsg>> {
        let msg = RtmsgBuilder::default()
            .rtm_family(neli::consts::rtnl::RtAddrFamily::Unspecified)
            .rtm_dst_len(0)
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Unspec)
            .rtm_protocol(Rtprot::Unspec)
            .rtm_scope(RtScope::Universe)
            .rtm_type(Rtn::Unspec)
            .build()
            .map_err(|e| anyhow!("build rtmsg: {e}"))?;
        let all = self.query(Rtm::Getroute, NlmF::DUMP, msg).context("list routes")?;
        Ok(all.into_iter().filter(|m| *m.rtm_table() == RtTable::Main).collect())
    }

    /// The main-table routes installed with routing protocol `proto`.
    pub fn routes_of_protocol(&self, proto: u8) -> Result<Vec<OwnedRoute>> {
        let mut out = Vec::new();
        for m in &self.main_table()? {
            if u8::from(*m.rtm_protocol()) != proto {
                continue;
            }
            let attrs = m.rtattrs().get_attr_handle();
            let Some(dst) = attrs.get_attribute(Rta::Dst).and_then(|a| parse_ip(a.rta_payload().as_ref())) else {
                continue;
            };
            let gateway = attrs.get_attribute(Rta::Gateway).and_then(|a| parse_ip(a.rta_payload().as_ref()));
            let oif = attrs.get_attr_payload_as::<u32>(Rta::Oif).unwrap_or(0);
            out.push(OwnedRoute { dst: Cidr { addr: dst, prefix: *m.rtm_dst_len() }, gateway, oif });
        }
        Ok(out)
    }

    /// Main-table routes out of link `oif`: (destination, gateway).
    pub fn routes(&self, oif: u32) -> Result<Vec<(Cidr, Option<IpAddr>)>> {
        Ok(self.all_routes()?.into_iter().filter(|r| r.2 == oif).map(|(d, g, _)| (d, g)).collect())
    }

    /// Every main-table route: (destination, gateway, outgoing link).
    pub fn all_routes(&self) -> Result<Vec<(Cidr, Option<IpAddr>, u32)>> {
        let mut out = Vec::new();
        for m in &self.main_table()? {
            let attrs = m.rtattrs().get_attr_handle();
            let oif = attrs.get_attr_payload_as::<u32>(Rta::Oif).unwrap_or(0);
            let any = if *m.rtm_family() == neli::consts::rtnl::RtAddrFamily::Inet6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            };
            let dst = attrs.get_attribute(Rta::Dst).and_then(|a| parse_ip(a.rta_payload().as_ref())).unwrap_or(any);
            let gw = attrs.get_attribute(Rta::Gateway).and_then(|a| parse_ip(a.rta_payload().as_ref()));
            out.push((Cidr { addr: dst, prefix: *m.rtm_dst_len() }, gw, oif));
        }
        Ok(out)
    }
}
