//! One row per pod of a network, joined from everything that knows a
//! piece of it: the lease files (container ID, interface), the pods and
//! endpoints maps (host veth, addresses), the kernel (what is attached to
//! the veth, which netns holds its peer), the ipcache and identity_flags
//! (identity, isolation) and the stats map (packets, drops).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::ifname;
use crate::datapath::{Maps, NetworkPrograms, ENDPOINT_F_TC, ENDPOINT_F_TCX, ISOLATED_EGRESS, ISOLATED_INGRESS};
use crate::netlink::{Netlink, Netns};

/// Where runtimes pin pod network namespaces (containerd, CRI-O, podman,
/// `ip netns`).
const NETNS_DIR: &str = "/run/netns";

#[derive(Clone, Debug, Serialize)]
pub struct PodView {
    pub container_id: String,
    pub interface: String,
    /// The pinned netns holding the veth's peer ("" when none is found).
    pub netns: String,
    pub addresses: Vec<IpAddr>,
    pub host_veth: String,
    pub ifindex: u32,
    /// The attach mode ADD recorded in the endpoint entry.
    pub attach_mode: String,
    /// What the kernel reports on the veth's two hooks.
    pub state: String,
    pub identity: Option<u32>,
    /// The directions in which only what a rule allows passes: ingress,
    /// egress, both (also every pod under `policy.defaultAction: deny`), none.
    pub isolation: String,
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
}

/// Every pod of the network whose pins are in `dir`.
pub fn pods(dir: &Path, network: &str, maps: &Maps, data_dir: &Path) -> Result<Vec<PodView>> {
    let leases = crate::ipam::read_leases(data_dir, network);
    let endpoints = maps.endpoints()?;
    let stats = maps.stats()?;
    let settings = maps.settings()?;
    let active = settings.active_set as u8 & 1;
    let isolation: BTreeMap<u32, u32> =
        maps.identity_flags()?.into_iter().filter(|(s, _, _)| *s == active).map(|(_, id, f)| (id, f)).collect();
    let programs = NetworkPrograms::open(dir);
    let netns = netns_by_peer();
    let mut out = Vec::new();
    for pod in maps.pods()? {
        let mut addresses: Vec<IpAddr> = endpoints.iter().filter(|e| e.ifindex == pod.ifindex).map(|e| e.ip).collect();
        if !addresses.contains(&pod.addr) {
            addresses.insert(0, pod.addr);
        }
        let flags = endpoints.iter().find(|e| e.ifindex == pod.ifindex).map_or(0, |e| e.flags);
        let lease = leases.iter().find(|l| addresses.contains(&l.ip));
        let identity = maps.identity_of(active, pod.addr)?;
        let iso = identity.and_then(|id| isolation.get(&id)).copied().unwrap_or(0);
        let mine = stats.iter().filter(|s| addresses.contains(&s.ip));
        let (mut packets, mut bytes, mut drops) = (0, 0, 0);
        for s in mine {
            packets += s.packets;
            bytes += s.bytes;
            drops += s.drop_spoofed + s.drop_policy + s.drop_parse;
        }
        out.push(PodView {
            container_id: lease.map(|l| l.container_id.clone()).unwrap_or_default(),
            interface: lease.map(|l| l.ifname.clone()).unwrap_or_default(),
            netns: netns.get(&pod.ifindex).map(|p| p.display().to_string()).unwrap_or_default(),
            addresses,
            host_veth: ifname(pod.ifindex),
            ifindex: pod.ifindex,
            attach_mode: match flags {
                f if f & ENDPOINT_F_TCX != 0 => "tcx",
                f if f & ENDPOINT_F_TC != 0 => "tc",
                _ => "-",
            }
            .into(),
            state: programs.attachment(pod.ifindex).state(),
            identity,
            isolation: match (iso & ISOLATED_INGRESS != 0, iso & ISOLATED_EGRESS != 0) {
                _ if settings.default_deny => "both",
                (true, true) => "both",
                (true, false) => "ingress",
                (false, true) => "egress",
                (false, false) => "none",
            }
            .into(),
            packets,
            bytes,
            drops,
        });
    }
    Ok(out)
}

/// Host veth ifindex -> the pinned netns holding its peer.
fn netns_by_peer() -> BTreeMap<u32, PathBuf> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(ns) = Netns::open(&path) else { continue };
        let Ok(links) = Netlink::connect_in(&ns).and_then(|nl| nl.links()) else { continue };
        for l in links.into_iter().filter(|l| l.kind.as_deref() == Some("veth")) {
            if let Some(peer) = l.peer {
                out.entry(peer).or_insert_with(|| path.clone());
            }
        }
    }
    out
}
