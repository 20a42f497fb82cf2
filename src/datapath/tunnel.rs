//! The `tunnels` map (peer pod range -> the peer's underlay address and
//! VXLAN MAC) and `to_tunnel` on the egress of the node's VXLAN device:
//! what `ebpfcni agent` programs in `routing: vxlan`. Layouts and
//! constants come from src/bpf/tunnel.h through the skeleton's types.

use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, Program, TcHook, TC_EGRESS};

use super::skel::types::{ip_key, tunnel_const, tunnel_flags, tunnel_key, tunnel_value};
use super::Datapath;
use crate::ipam::Cidr;

pub const TUNNEL_PORT: u16 = tunnel_const::TUNNEL_PORT.0 as u16;
pub const TUNNEL_OVERHEAD_V4: u32 = tunnel_const::TUNNEL_OVERHEAD_V4.0;
pub const TUNNEL_OVERHEAD_V6: u32 = tunnel_const::TUNNEL_OVERHEAD_V6.0;
const TUNNEL_F_IPV6: u16 = tunnel_flags::TUNNEL_F_IPV6.0 as u16;

/// Our clsact filter on the VXLAN device: the pods' handle and priority.
const TC_HANDLE: u32 = 0xebf;
const TC_PRIORITY: u32 = 0xebf;

/// Where a peer's pod range is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TunnelTarget {
    pub node: IpAddr,
    pub mac: [u8; 6],
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn unmapped(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
}

fn key_of(range: &Cidr) -> tunnel_key {
    let offset = if range.is_ipv4() { 96 } else { 0 };
    tunnel_key { prefixlen: offset + u32::from(range.prefix), addr: mapped(range.network()) }
}

fn bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: the skeleton's types are #[repr(C)] plain data with explicit
    // padding fields, so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn decode<T: Copy + Default>(b: &[u8]) -> T {
    let mut v = T::default();
    let n = b.len().min(std::mem::size_of::<T>());
    // SAFETY: T is plain data; at most size_of::<T>() bytes are copied.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), n) };
    v
}

/// The pinned `tunnels` map of a network.
pub struct Tunnels {
    map: MapHandle,
}

impl Tunnels {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("tunnels");
        let map = MapHandle::from_pinned_path(&path).with_context(|| format!("open pinned map {}", path.display()))?;
        Ok(Tunnels { map })
    }

    pub fn entries(&self) -> Result<Vec<(Cidr, TunnelTarget)>> {
        let mut out = Vec::new();
        for raw_key in self.map.keys() {
            let Some(raw) = self.map.lookup(&raw_key, MapFlags::ANY).context("read tunnels")? else { continue };
            let k: tunnel_key = decode(&raw_key);
            let v: tunnel_value = decode(&raw);
            let addr = unmapped(k.addr);
            let prefix = if addr.is_ipv4() { k.prefixlen.saturating_sub(96) } else { k.prefixlen } as u8;
            out.push((Cidr { addr, prefix }, TunnelTarget { node: unmapped(v.node.addr), mac: v.mac }));
        }
        out.sort();
        Ok(out)
    }

    pub fn put(&self, range: &Cidr, t: &TunnelTarget) -> Result<()> {
        let v = tunnel_value {
            node: ip_key { addr: mapped(t.node) },
            mac: t.mac,
            flags: if t.node.is_ipv4() { 0 } else { TUNNEL_F_IPV6 },
        };
        self.map
            .update(bytes(&key_of(range)), bytes(&v), MapFlags::ANY)
            .with_context(|| format!("write tunnel {range} -> {}", t.node))
    }

    pub fn remove(&self, range: &Cidr) -> Result<()> {
        match self.map.delete(bytes(&key_of(range))) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove tunnel {range}"))
            }
            _ => Ok(()),
        }
    }
}

/// The MAC of a node's VXLAN device, derived from its underlay address so
/// that every node knows every peer's without asking (locally
/// administered, unicast).
pub fn vxlan_mac(node: IpAddr) -> [u8; 6] {
    let b = match node {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => {
            let h = crate::fnv::fnv1a64(&mapped(node)).to_be_bytes();
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
