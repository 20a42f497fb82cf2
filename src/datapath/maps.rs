//! Typed access to the pinned maps. Keys and values are the skeleton's
//! generated types (declared once in src/bpf/ebpfcni.h); addresses go in
//! as `IpAddr` and come out as `IpAddr`, never as raw integers.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use serde::Serialize;

use super::skel::types::{endpoint_info, ip_key, iprule_key, iprule_value, traffic_stats};

pub const ENDPOINT_F_TCX: u16 = 0x1;
pub const ENDPOINT_F_TC: u16 = 0x2;

/// Views a generated map type as the bytes the kernel expects.
fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: the skeleton's types are #[repr(C)] plain data with explicit
    // padding fields, so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn from_bytes<T: Copy + Default>(b: &[u8]) -> T {
    let mut v = T::default();
    let n = b.len().min(std::mem::size_of::<T>());
    // SAFETY: T is plain data; at most size_of::<T>() bytes are copied.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), n) };
    v
}

fn ip_to_key(ip: IpAddr) -> ip_key {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    ip_key { addr: v6.octets() }
}

fn key_to_ip(k: &ip_key) -> IpAddr {
    let v6 = Ipv6Addr::from(k.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    pub ip: IpAddr,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub flags: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsEntry {
    pub ip: IpAddr,
    pub packets: u64,
    pub bytes: u64,
    pub redirected: u64,
    pub passed: u64,
}

/// A policy entry as an operator reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleEntry {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: String,
    /// 0 = any port.
    pub port: u16,
    pub verdict: String,
}

fn proto_name(p: u8) -> String {
    match p {
        0 => "any".into(),
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

pub struct Maps {
    pub endpoints: MapHandle,
    pub stats: MapHandle,
    pub iprules: MapHandle,
}

impl Maps {
    /// Opens the maps pinned in a network's pin directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let open = |name: &str| {
            let path = dir.join(name);
            MapHandle::from_pinned_path(&path).with_context(|| format!("open pinned map {}", path.display()))
        };
        Ok(Maps { endpoints: open("endpoints")?, stats: open("stats")?, iprules: open("iprules")? })
    }

    /// Opens them when they exist; None when this network was never loaded.
    pub fn open_if_pinned(dir: &Path) -> Result<Option<Self>> {
        if dir.join("endpoints").exists() {
            Self::open(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn put_endpoint(&self, ep: &EndpointEntry) -> Result<()> {
        let value = endpoint_info { ifindex: ep.ifindex, mac: ep.mac, flags: ep.flags };
        self.endpoints
            .update(as_bytes(&ip_to_key(ep.ip)), as_bytes(&value), MapFlags::ANY)
            .with_context(|| format!("write endpoint {}", ep.ip))
    }

    /// Removes the endpoint; a missing one is fine.
    pub fn remove_endpoint(&self, ip: IpAddr) -> Result<()> {
        match self.endpoints.delete(as_bytes(&ip_to_key(ip))) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove endpoint {ip}"))
            }
            _ => Ok(()),
        }
    }

    pub fn endpoint(&self, ip: IpAddr) -> Result<Option<EndpointEntry>> {
        let raw = self
            .endpoints
            .lookup(as_bytes(&ip_to_key(ip)), MapFlags::ANY)
            .with_context(|| format!("look up endpoint {ip}"))?;
        Ok(raw.map(|v| {
            let info: endpoint_info = from_bytes(&v);
            EndpointEntry { ip, ifindex: info.ifindex, mac: info.mac, flags: info.flags }
        }))
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointEntry>> {
        let mut out = Vec::new();
        for key in self.endpoints.keys() {
            let ip = key_to_ip(&from_bytes::<ip_key>(&key));
            if let Some(ep) = self.endpoint(ip)? {
                out.push(ep);
            }
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    /// Counters per source address, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<StatsEntry>> {
        let mut out = Vec::new();
        for key in self.stats.keys() {
            let ip = key_to_ip(&from_bytes::<ip_key>(&key));
            let Some(per_cpu) = self.stats.lookup_percpu(&key, MapFlags::ANY).context("read stats")? else {
                continue;
            };
            let mut sum = StatsEntry { ip, ..Default::default() };
            for raw in per_cpu {
                let s: traffic_stats = from_bytes(&raw);
                sum.packets += s.packets;
                sum.bytes += s.bytes;
                sum.redirected += s.redirected;
                sum.passed += s.passed;
            }
            out.push(sum);
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    pub fn iprules(&self) -> Result<Vec<RuleEntry>> {
        let mut out = Vec::new();
        for key in self.iprules.keys() {
            let Some(raw) = self.iprules.lookup(&key, MapFlags::ANY).context("read iprules")? else {
                continue;
            };
            let k: iprule_key = from_bytes(&key);
            let v: iprule_value = from_bytes(&raw);
            out.push(RuleEntry {
                src: key_to_ip(&k.src),
                dst: key_to_ip(&k.dst),
                proto: proto_name(k.proto),
                port: k.dport,
                verdict: match v.verdict {
                    1 => "allow".into(),
                    2 => "deny".into(),
                    n => format!("unknown({n})"),
                },
            });
        }
        Ok(out)
    }

    /// Drops the counters of an address that left (DEL).
    pub fn remove_stats(&self, ip: IpAddr) -> Result<()> {
        match self.stats.delete(as_bytes(&ip_to_key(ip))) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove stats of {ip}"))
            }
            _ => Ok(()),
        }
    }
}

impl Default for StatsEntry {
    fn default() -> Self {
        StatsEntry { ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), packets: 0, bytes: 0, redirected: 0, passed: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_keys_round_trip_in_network_order() {
        let v4: IpAddr = "10.244.1.5".parse().unwrap();
        let k = ip_to_key(v4);
        assert_eq!(&k.addr[10..], &[0xff, 0xff, 10, 244, 1, 5]);
        assert_eq!(key_to_ip(&k), v4);
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(key_to_ip(&ip_to_key(v6)), v6);
    }

    #[test]
    fn endpoint_value_layout_matches_c() {
        // struct endpoint_info { __u32 ifindex; __u8 mac[6]; __u16 flags; }
        let v = endpoint_info { ifindex: 7, mac: [1, 2, 3, 4, 5, 6], flags: ENDPOINT_F_TCX };
        let b = as_bytes(&v);
        assert_eq!(b.len(), 12);
        assert_eq!(&b[4..10], &[1, 2, 3, 4, 5, 6]);
        let back: endpoint_info = from_bytes(b);
        assert_eq!(back.ifindex, 7);
    }
}
