//! DEL: the reverse of ADD, idempotent — whatever is already gone (the
//! netns, the veth, a map entry, the lease) counts as removed. The veth's
//! deletion itself, the slow part, finishes after DEL has returned
//! (src/cni/teardown.rs).

use std::net::IpAddr;

use anyhow::Result;

use super::config::NetConf;
use super::env::CniEnv;
use super::{host_veth_name, link_local};
use crate::datapath;
use crate::ipam::{self, DiskStore, LeaseStore};
use crate::policy;

pub fn del(conf: &NetConf, env: &CniEnv) -> Result<Vec<IpAddr>> {
    let attachment = super::attach_lock::lock(&conf.data_dir, &conf.name, &env.container_id, &env.ifname)?;
    let host_if = host_veth_name(&env.container_id, &env.ifname);
    // By name from the kernel's RCU-protected table (an ioctl), not a
    // netlink request, which would wait for RTNL behind every other
    // pod's veth being deleted.
    let host_index = nix::net::if_::if_nametoindex(host_if.as_str()).ok();
    // The lease lock is held only to read and, at the end, to release: not
    // across the veth's deletion, which takes the kernel tens of ms.
    let mut ips: Vec<IpAddr> = DiskStore::open(&conf.data_dir, &conf.name)?
        .leases_of(&env.container_id, &env.ifname)?
        .iter()
        .map(|l| l.ip)
        .collect();
    // The attachment's record still names its addresses and MAC when the
    // lease files are already gone.
    let record = ipam::attachments::load(&conf.data_dir, &conf.name, &host_if);
    if let Some(r) = &record {
        ips.extend(r.ips.iter().copied());
        ips.extend(r.mac_bytes().map(link_local::of_mac));
        ips.sort();
        ips.dedup();
    }

    let dir = datapath::network_dir(&conf.bpf_pin_path, &conf.name);
    // Whatever state the pins are in (this build's, an older one's, partly
    // lost), they are brought to this build's first; maps that cannot be
    // loaded at all are only derived state: the pod still goes.
    let dp = match super::repair::load_existing(conf) {
        Ok(dp) => dp,
        Err(e) => {
            eprintln!("ebpfcni: DEL: the network's maps could not be loaded ({e:#}): removing the pod without them");
            None
        }
    };
    if let Some(maps) = dp.as_ref().map(|d| &d.maps) {
        // The pod entry of this veth names its first address: a crash may
        // have left entries whose lease is already gone, so that address
        // goes too. Only without the veth must DEL search the pods map.
        let mut stale: Vec<IpAddr> = ips.clone();
        match host_index {
            Some(index) => {
                if let Some(pod) = maps.pod(index)? {
                    stale.push(pod.addr);
                    stale.push(link_local::of_mac(pod.mac));
                }
                maps.remove_pod(index)?;
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
        policy::unregister_pod(maps, &stale)?;
    }
    ipam::attachments::remove(&conf.data_dir, &conf.name, &host_if)?;
    ipam::release(&mut DiskStore::open(&conf.data_dir, &conf.name)?, &env.container_id, &env.ifname)?;
    if let Some(index) = host_index {
        // The veth's programs stay attached until the veth is gone (its
        // deletion takes them along): never a moment without them.
        datapath::retire_links(&dir, &host_if)?;
        if let Err(e) = super::teardown::hand_off(&attachment, &dir, &host_if, index) {
            eprintln!("ebpfcni: DEL: {e:#}: deleting {host_if} in place");
            super::teardown::run(&host_if, index, &dir)?;
        }
    } else if let Err(e) = datapath::detach(&dir, &host_if) {
        eprintln!("ebpfcni: DEL: {e:#}");
    }
    Ok(ips)
}
