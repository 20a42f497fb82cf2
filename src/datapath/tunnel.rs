//! The `tunnels` map (peer pod range -> the peer's underlay address and
//! VXLAN MAC) and `to_tunnel` on the egress of the node's VXLAN device:
//! what `ebpfcni agent` programs in `routing: vxlan`. Layouts and
//! constants come from src/bpf/tunnel.h through the skeleton's types.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use libbpf_rs::{MapHandle, Program, TcHook, TC_EGRESS};

use super::maps::typed::TypedMap;
use super::maps::{ip_to_key, key_to_ip};
use super::skel::types::{fastpath, fastpath_flags, ip_key, tunnel_const, tunnel_flags, tunnel_key, tunnel_value};
use super::Datapath;
use crate::ipam::Cidr;

pub const TUNNEL_PORT: u16 = tunnel_const::TUNNEL_PORT.0 as u16;
pub const TUNNEL_OVERHEAD_V4: u32 = tunnel_const::TUNNEL_OVERHEAD_V4.0;
pub const TUNNEL_OVERHEAD_V6: u32 = tunnel_const::TUNNEL_OVERHEAD_V6.0;
const TUNNEL_F_IPV6: u16 = tunnel_flags::TUNNEL_F_IPV6.0 as u16;
const TUNNEL_F_NATIVE: u16 = tunnel_flags::TUNNEL_F_NATIVE.0 as u16;
const FASTPATH_F_ENABLED: u16 = fastpath_flags::FASTPATH_F_ENABLED.0 as u16;

/// Our clsact filter on the VXLAN device: the pods' handle and priority.
const TC_HANDLE: u32 = 0xebf;
const TC_PRIORITY: u32 = 0xebf;

/// Where a peer's pod range is reached: through the tunnel to `node`'s
/// VXLAN device (MAC `mac`), or, `native`, routed via `node` (no MAC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TunnelTarget {
    pub node: IpAddr,
    pub mac: [u8; 6],
    pub native: bool,
}

fn key_of(range: &Cidr) -> tunnel_key {
    let offset = if range.is_ipv4() { 96 } else { 0 };
    tunnel_key { prefixlen: offset + u32::from(range.prefix), addr: ip_to_key(range.network()).addr }
}

/// The pinned `tunnels` map of a network.
pub struct Tunnels {
    map: TypedMap<tunnel_key, tunnel_value>,
}

impl Tunnels {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("tunnels");
        let map = MapHandle::from_pinned_path(&path).with_context(|| format!("open pinned map {}", path.display()))?;
        Ok(Tunnels { map: TypedMap::new(map, "tunnels") })
    }

    pub fn entries(&self) -> Result<Vec<(Cidr, TunnelTarget)>> {
        let mut out: Vec<(Cidr, TunnelTarget)> = self
            .map
            .entries()?
            .into_iter()
            .map(|(k, v)| {
                let addr = key_to_ip(&ip_key { addr: k.addr });
                let prefix = if addr.is_ipv4() { k.prefixlen.saturating_sub(96) } else { k.prefixlen } as u8;
                (
                    Cidr { addr, prefix },
                    TunnelTarget { node: key_to_ip(&v.node), mac: v.mac, native: v.flags & TUNNEL_F_NATIVE != 0 },
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    pub fn put(&self, range: &Cidr, t: &TunnelTarget) -> Result<()> {
        let v = tunnel_value {
            node: ip_to_key(t.node),
            mac: t.mac,
            flags: if t.node.is_ipv4() { 0 } else { TUNNEL_F_IPV6 } | if t.native { TUNNEL_F_NATIVE } else { 0 },
        };
        self.map.put(&key_of(range), &v).with_context(|| format!("write tunnel {range} -> {}", t.node))
    }

    pub fn remove(&self, range: &Cidr) -> Result<()> {
        self.map.delete(&key_of(range)).with_context(|| format!("remove tunnel {range}"))
    }
}

/// The fast path's devices (`fastpath` map, one entry): what from_pod sends
/// a peer's pod range out of, and the bridge MAC from_peer writes as the
/// source of what it delivers. `None`: no fast path (the host's path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fastpath {
    pub tunnel_ifindex: u32,
    pub underlay_ifindex: u32,
    pub gateway_mac: [u8; 6],
}

/// The pinned `fastpath` map of a network.
pub struct FastpathMap {
    map: TypedMap<u32, fastpath>,
}

impl FastpathMap {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("fastpath");
        let map = MapHandle::from_pinned_path(&path).with_context(|| format!("open pinned map {}", path.display()))?;
        Ok(FastpathMap { map: TypedMap::new(map, "fastpath") })
    }

    pub fn get(&self) -> Result<Option<Fastpath>> {
        Ok(self.map.get(&0)?.filter(|v| v.flags & FASTPATH_F_ENABLED != 0).map(|v| Fastpath {
            tunnel_ifindex: v.tunnel_ifindex,
            underlay_ifindex: v.underlay_ifindex,
            gateway_mac: v.gateway_mac,
        }))
    }

    /// Writes the entry when it differs; returns whether it did.
    pub fn set(&self, want: Option<Fastpath>) -> Result<bool> {
        if self.get()? == want {
            return Ok(false);
        }
        let f = want.unwrap_or_default();
        let v = fastpath {
            tunnel_ifindex: f.tunnel_ifindex,
            underlay_ifindex: f.underlay_ifindex,
            gateway_mac: f.gateway_mac,
            flags: if want.is_some() { FASTPATH_F_ENABLED } else { 0 },
        };
        self.map.put(&0, &v).context("write the fastpath entry")?;
        Ok(true)
    }
}

/// The MAC of a node's VXLAN device, derived from its underlay address so
/// that every node knows every peer's without asking (locally
/// administered, unicast).
pub fn vxlan_mac(node: IpAddr) -> [u8; 6] {
    let b = match node {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => {
            let h = crate::fnv::fnv1a64(&ip_to_key(node).addr).to_be_bytes();
            [h[0], h[1], h[2], h[3]]
        }
    };
    [0x02, 0xeb, b[0], b[1], b[2], b[3]]
}

impl Datapath {
    /// Attaches `to_tunnel` to the egress of the VXLAN device (a clsact
    /// filter of our handle and priority, replaced atomically), unless it
    /// already runs there. Returns whether it changed anything.
    pub fn attach_tunnel(&self, ifindex: u32) -> Result<bool> {
        let prog = self.tunnel_prog()?;
        let want = Program::id_from_fd(prog.as_fd()).context("read to_tunnel program id")?;
        let mut hook = TcHook::new(prog.as_fd());
        hook.ifindex(ifindex as i32).handle(TC_HANDLE).priority(TC_PRIORITY).attach_point(TC_EGRESS);
        if hook.query().ok() == Some(want) {
            return Ok(false);
        }
        hook.create().context("create clsact qdisc on the vxlan device")?;
        hook.replace(true);
        hook.attach().with_context(|| format!("attach to_tunnel to the egress of ifindex {ifindex}"))?;
        Ok(true)
    }
}
