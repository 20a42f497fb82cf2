//! GC (spec 1.1): releases every lease, endpoint entry, counter, TCX link
//! pin and veth whose attachment is not in `cni.dev/valid-attachments`.
//! `lock` and `last_reserved_ip.*` stay; lease files holding only a
//! container ID (older host-local) match on the ID; damaged lease files
//! belong to no attachment and are removed.

use std::collections::HashSet;
use std::net::IpAddr;

use anyhow::Result;

use super::config::{Attachment, NetConf};
use super::error::{CniError, INVALID_CONFIG};
use super::{host_veth_name, link_local};
use crate::datapath;
use crate::ipam::{self, DiskStore, LeaseStore};
use crate::netlink::Netlink;
use crate::policy;

/// Returns the released addresses.
pub fn gc(conf: &NetConf) -> Result<Vec<IpAddr>> {
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::error(INVALID_CONFIG, "GC needs cni.dev/valid-attachments"))?;
    let is_valid = |id: &str, ifname: &str| {
        valid.iter().any(|a: &Attachment| a.container_id == id && (ifname.is_empty() || a.ifname == ifname))
    };
    let valid_veths: HashSet<String> = valid.iter().map(|a| host_veth_name(&a.container_id, &a.ifname)).collect();

    let mut store = DiskStore::open(&conf.data_dir, &conf.name)?;
    let host = Netlink::connect()?;
    let dir = datapath::network_dir(&conf.bpf_pin_path, &conf.name);
    let dp = super::repair::load_existing(conf)?;
    let maps = dp.as_ref().map(|d| &d.maps);

    let mut released = Vec::new();
    for lease in store.leases()? {
        if is_valid(&lease.container_id, &lease.ifname) {
            continue;
        }
        if !lease.ifname.is_empty() {
            let veth = host_veth_name(&lease.container_id, &lease.ifname);
            // The veth first, then its (defunct) links: never a live veth
            // without its programs.
            host.delete_link(&veth)?;
            datapath::detach(&dir, &veth)?;
        }
        store.release(lease.ip)?;
        ipam::attachments::remove(&conf.data_dir, &conf.name, &host_veth_name(&lease.container_id, &lease.ifname))?;
        released.push(lease.ip);
    }
    for ip in store.unreadable()? {
        eprintln!("ebpfcni: GC: removing unreadable lease file for {ip}");
        store.release(ip)?;
        released.push(ip);
    }
    let kept: HashSet<IpAddr> = store.leases()?.iter().map(|l| l.ip).collect();

    // Attachments and veths whose lease is already gone, or never came (an
    // ADD or DEL that died): found by their pins and by the device group every
    // host veth of this network is in from its creation.
    let groups = [super::veth_group(&conf.name), super::legacy_veth_group(&conf.name)];
    let tagged =
        host.links()?.into_iter().filter(|l| groups.contains(&l.group) && l.name.starts_with("veth")).map(|l| l.name);
    let orphans: HashSet<String> = datapath::pinned_link_owners(&dir).into_iter().chain(tagged).collect();
    for veth in orphans {
        if !valid_veths.contains(&veth) {
            host.delete_link(&veth)?;
            datapath::detach(&dir, &veth)?;
        }
    }
    for r in ipam::attachments::load_all(&conf.data_dir, &conf.name) {
        if !is_valid(&r.container_id, &r.ifname) {
            ipam::attachments::remove(&conf.data_dir, &conf.name, &r.host_veth)?;
        }
    }
    if let Some(maps) = maps {
        // A kept pod keeps its link-local address too.
        let mut kept = kept;
        for pod in maps.pods()? {
            if kept.contains(&pod.addr) {
                kept.insert(link_local::of_mac(pod.mac));
            }
        }
        // Every address the maps know that no kept lease holds: released
        // now, or left by an ADD or DEL that died.
        let mut gone: Vec<IpAddr> = released.clone();
        for ep in maps.endpoints()? {
            if !kept.contains(&ep.ip) {
                maps.remove_endpoint(ep.ip)?;
                gone.push(ep.ip);
            }
        }
        for pod in maps.pods()? {
            if !kept.contains(&pod.addr) {
                maps.remove_pod(pod.ifindex)?;
                gone.push(pod.addr);
            }
        }
        for st in maps.stats()? {
            if !kept.contains(&st.ip) {
                maps.remove_stats(st.ip)?;
                gone.push(st.ip);
            }
        }
        let _lock = datapath::lock_dir(&dir)?;
        gone.extend(policy::pod_addresses(maps)?.into_iter().filter(|ip| !kept.contains(ip)));
        gone.sort();
        gone.dedup();
        policy::unregister_pod(maps, &gone)?;
        // Connections of no kept pod (released ones, and a pod's unspecified
        // source neighbour discovery) are nobody's.
        maps.retain_conntrack(|src, dst| kept.contains(&src) || kept.contains(&dst))?;
    }
    Ok(released)
}
