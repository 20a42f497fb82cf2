//! CHECK: verifies, against `prevResult`, every piece that ADD made. Each
//! mismatch is its own error, naming what is wrong.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};

use super::config::NetConf;
use super::env::CniEnv;
use super::error::{CniError, CHECK_FAILED, INVALID_CONFIG, INVALID_ENV};
use super::host_veth_name;
use super::result::{mac_string, AddResult};
use crate::ipam::{Cidr, DiskStore, LeaseStore};
use crate::netlink::{Netlink, Netns};

fn mismatch(msg: String) -> anyhow::Error {
    CniError::error(CHECK_FAILED, msg)
}

pub fn check(conf: &NetConf, env: &CniEnv) -> Result<()> {
    let prev = conf.prev_result.clone().ok_or_else(|| CniError::error(INVALID_CONFIG, "CHECK needs prevResult"))?;
    let prev: AddResult = serde_json::from_value(prev)
        .map_err(|e| CniError::error(INVALID_CONFIG, format!("prevResult is not a CNI result: {e}")))?;
    let netns_path = env.netns.as_deref().expect("CHECK requires CNI_NETNS");
    let ns = Netns::open(netns_path).map_err(|e| CniError::error(INVALID_ENV, format!("CNI_NETNS: {e:#}")))?;
    let ifname = &env.ifname;

    // Inside the pod: the interface, its MAC, addresses and routes.
    let pod = Netlink::connect_in(&ns)?;
    let pod_link = pod
        .link_by_name(ifname)?
        .ok_or_else(|| mismatch(format!("interface {ifname} is missing from {}", netns_path.display())))?;
    let pod_index = prev.interfaces.iter().position(|i| &i.name == ifname && !i.sandbox.is_empty());
    if let Some(want) = pod_index.map(|i| &prev.interfaces[i].mac).filter(|m| !m.is_empty()) {
        let got = pod_link.mac.map(mac_string).unwrap_or_default();
        if !got.eq_ignore_ascii_case(want) {
            bail!(mismatch(format!("{ifname} has MAC {got}, prevResult says {want}")));
        }
    }
    let have = pod.addresses(pod_link.index)?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in prev.ips.iter().filter(|ip| ip.interface.is_none() || ip.interface == pod_index) {
        let want: Cidr = ip.address.parse().map_err(|e| anyhow!("prevResult address {}: {e:#}", ip.address))?;
        if !have.contains(&want) {
            bail!(mismatch(format!("{ifname} lacks address {want} (has {})", list(&have))));
        }
        ips.push(want.addr);
    }
    let routes = pod.routes(pod_link.index)?;
    for r in &prev.routes {
        let dst: Cidr = r.dst.parse().map_err(|e| anyhow!("prevResult route {}: {e:#}", r.dst))?;
        let found = routes.iter().any(|(d, gw)| *d == dst.as_network() && (r.gw.is_none() || *gw == r.gw));
        if !found {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            bail!(mismatch(format!("route {dst}{via} is missing in {}", netns_path.display())));
        }
    }

    // On the host: the veth pair and the bridge.
    let host = Netlink::connect()?;
    let host_if = host_veth_name(&env.container_id, ifname);
    let host_link = host.link_by_name(&host_if)?.ok_or_else(|| mismatch(format!("host veth {host_if} is missing")))?;
    if pod_link.peer != Some(host_link.index) {
        bail!(mismatch(format!("{ifname} in the pod is not the peer of host veth {host_if}")));
    }
    let bridge = host
        .link_by_name(&conf.bridge)?
        .filter(|b| b.kind.as_deref() == Some("bridge"))
        .ok_or_else(|| mismatch(format!("bridge {} is missing", conf.bridge)))?;
    if host_link.master != Some(bridge.index) {
        bail!(mismatch(format!("host veth {host_if} is not attached to bridge {}", conf.bridge)));
    }
    if !host_link.up {
        bail!(mismatch(format!("host veth {host_if} is down")));
    }

    // The datapath: program on that veth (by ifindex), endpoint entries.
    let dp = super::repair::load_existing(conf)?.ok_or_else(|| {
        mismatch(format!("the network's BPF program is not pinned under {}", conf.bpf_pin_path.display()))
    })?;
    let pod_mac = pod_link.mac.unwrap_or_default();
    let mut flags = None;
    for ip in &ips {
        let ep = dp.maps.endpoint(*ip)?.ok_or_else(|| mismatch(format!("no endpoint entry for {ip}")))?;
        if ep.ifindex != host_link.index {
            bail!(mismatch(format!(
                "endpoint {ip} points at ifindex {}, not {host_if} (ifindex {})",
                ep.ifindex, host_link.index
            )));
        }
        if ep.mac != pod_mac {
            bail!(mismatch(format!(
                "endpoint {ip} has MAC {}, the pod has {}",
                mac_string(ep.mac),
                mac_string(pod_mac)
            )));
        }
        flags = Some(ep.flags);
    }
    match dp.maps.pod(host_link.index)? {
        Some(p) if p.mac == pod_mac => {}
        Some(p) => bail!(mismatch(format!(
            "pod entry of {host_if} has MAC {}, the pod has {}",
            mac_string(p.mac),
            mac_string(pod_mac)
        ))),
        None => {
            bail!(mismatch(format!("no pod entry for {host_if} (ifindex {}): its traffic is dropped", host_link.index)))
        }
    }
    if let Some(flags) = flags {
        dp.verify_attached(&host_if, host_link.index, flags).map_err(|e| mismatch(format!("{e:#}")))?;
    }

    // The leases.
    let store = DiskStore::open(&conf.data_dir, &conf.name)?;
    let leased: Vec<IpAddr> = store.leases_of(&env.container_id, ifname)?.iter().map(|l| l.ip).collect();
    for ip in &ips {
        if !leased.contains(ip) {
            bail!(mismatch(format!("{ip} is not leased to {}/{ifname}", env.container_id)));
        }
    }
    Ok(())
}

fn list(v: &[Cidr]) -> String {
    v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
