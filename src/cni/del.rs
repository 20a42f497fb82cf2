//! DEL: the reverse of ADD, idempotent — whatever is already gone (the
//! netns, the veth, a map entry, the lease) counts as removed.

use std::net::IpAddr;

use anyhow::Result;

use super::config::NetConf;
use super::env::CniEnv;
use super::{host_veth_name, link_local};
use crate::datapath::{self, Maps};
use crate::ipam::{self, DiskStore, LeaseStore};
use crate::netlink::Netlink;
use crate::policy;

pub fn del(conf: &NetConf, env: &CniEnv) -> Result<Vec<IpAddr>> {
    let _attachment = super::attach_lock::lock(&conf.data_dir, &conf.name, &env.container_id, &env.ifname)?;
    let host_if = host_veth_name(&env.container_id, &env.ifname);
    let host = Netlink::connect()?;
    let host_link = host.link_by_name(&host_if)?;
    // The lease lock is held only to read and, at the end, to release: not
    // across the veth's deletion, which takes the kernel tens of ms.
    let ips: Vec<IpAddr> = DiskStore::open(&conf.data_dir, &conf.name)?
        .leases_of(&env.container_id, &env.ifname)?
        .iter()
        .map(|l| l.ip)
        .collect();

    let dir = datapath::network_dir(&conf.bpf_pin_path, &conf.name);
    if let Some(maps) = Maps::open_if_pinned(&dir)? {
        // The pod entry of this veth names its first address: a crash may
        // have left entries whose lease is already gone, so that address
        // goes too. Only without the veth must DEL search the pods map.
        let mut stale: Vec<IpAddr> = ips.clone();
        match &host_link {
            Some(link) => {
                if let Some(pod) = maps.pod(link.index)? {
                    stale.push(pod.addr);
                    stale.push(link_local::of_mac(pod.mac));
                }
                maps.remove_pod(link.index)?;
            }
            None => {
                for pod in maps.pods()? {
                    if ips.contains(&pod.addr) {
                        stale.push(link_local::of_mac(pod.mac));
                        maps.remove_pod(pod.ifindex)?;
                    }
                }
            }
        }
        stale.sort();
        stale.dedup();
        for ip in &stale {
            maps.remove_endpoint(*ip)?;
            maps.remove_stats(*ip)?;
        }
        maps.remove_conntrack_of(&stale)?;
        let _lock = datapath::lock_dir(&dir)?;
        policy::unregister_pod(&maps, &stale)?;
    }
    datapath::detach(&dir, &host_if)?;
    host.delete_link(&host_if)?;
    ipam::release(&mut DiskStore::open(&conf.data_dir, &conf.name)?, &env.container_id, &env.ifname)?;
    Ok(ips)
}
