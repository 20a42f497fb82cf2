//! Maps are derived state: whenever a load finds some of them missing
//! (bpffs remounted or wiped) or of another build's layout, they are
//! rebuilt here from the truth, the attachment records and leases in the
//! data directory and the node's links, and every recorded pod whose host
//! veth is still there is attached again. Counters start over; policy
//! that lived only in lost maps is reported, never guessed.

use std::net::IpAddr;

use anyhow::Result;

use super::config::NetConf;
use super::{host_veth_name, link_local};
use crate::datapath::{
    self, Attached, Datapath, EndpointEntry, Maps, PodEntry, Sizing, SETTINGS_F_HAS_DENY, SETTINGS_F_POLICY,
};
use crate::ipam::{attachments, format_mac, read_leases, AttachmentRecord};
use crate::netlink::Netlink;
use crate::policy;

/// The maps policy is made of: one missing means the whole set is gone.
const POLICY_MAPS: &[&str] = &["ipcache", "iprules", "identity_flags"];

/// Opens the network's datapath, rebuilding what is missing, its maps of
/// the config's sizes: the one way ADD, the agent and `ebpfcni repair`
/// load it.
pub fn load(conf: &NetConf) -> Result<Datapath> {
    load_sized(conf, Sizing::Config(&conf.sizes))
}

fn load_sized(conf: &NetConf, sizing: Sizing<'_>) -> Result<Datapath> {
    let dp = Datapath::load_with(&conf.bpf_pin_path, &conf.name, sizing, &|maps, fresh| refill(conf, maps, fresh))?;
    if !dp.fresh.is_empty() {
        let n = reattach(conf, &dp)?;
        // A network's first load creates every map and finds no pod: no news.
        if n > 0 || dp.fresh.len() < datapath::MAP_NAMES.len() {
            eprintln!(
                "ebpfcni: rebuilt maps {} of network {}; {n} pods attached again",
                dp.fresh.join(", "),
                conf.name
            );
        }
    }
    Ok(dp)
}

/// `ebpfcni repair`: `load`, then every recorded pod attached again
/// even when no map was missing (a link pin removed by hand). Returns the
/// rebuilt maps and the pods attached.
pub fn repair(conf: &NetConf) -> Result<(Vec<String>, usize)> {
    let sizing = Sizing::Config(&conf.sizes);
    let dp = Datapath::load_with(&conf.bpf_pin_path, &conf.name, sizing, &|maps, fresh| refill(conf, maps, fresh))?;
    let n = reattach(conf, &dp)?;
    Ok((dp.fresh, n))
}

/// The datapath of a network something is pinned for (this build's, an
/// older one's, or part of either), loaded and rebuilt; None when nothing
/// is pinned: DEL and GC then have no map entry to remove. The maps keep
/// their sizes (DEL may come with the config of the pod's ADD).
pub fn load_existing(conf: &NetConf) -> Result<Option<Datapath>> {
    let dir = datapath::network_dir(&conf.bpf_pin_path, &conf.name);
    let pinned = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| datapath::MAP_NAMES.contains(&e.file_name().to_string_lossy().as_ref()));
    if pinned {
        load_sized(conf, Sizing::Pinned(&conf.sizes)).map(Some)
    } else {
        Ok(None)
    }
}

/// The pods the node has: records whose host veth exists, with its ifindex.
fn live_records(conf: &NetConf, host: &Netlink) -> Result<Vec<(AttachmentRecord, u32)>> {
    let mut out = Vec::new();
    for r in attachments::load_all(&conf.data_dir, &conf.name) {
        if let Some(link) = host.link_by_name(&r.host_veth)? {
            out.push((r, link.index));
        }
    }
    Ok(out)
}

/// A pod's addresses as the maps hold them: leased ones and its link-local.
fn addresses(r: &AttachmentRecord, mac: [u8; 6]) -> Vec<IpAddr> {
    let mut ips = r.ips.clone();
    ips.push(link_local::of_mac(mac));
    ips
}

fn refill(conf: &NetConf, maps: &Maps, fresh: &[String]) -> Result<()> {
    let host = Netlink::connect()?;
    let is_fresh = |name: &str| fresh.iter().any(|f| f == name);
    if !is_fresh("pods") {
        adopt(conf, maps, &host)?;
    }
    let pods = live_records(conf, &host)?;
    if is_fresh("endpoints") || is_fresh("pods") {
        for (r, ifindex) in &pods {
            let Some(mac) = r.mac_bytes() else { continue };
            for ip in addresses(r, mac) {
                // The attach below sets the mode flags.
                maps.put_endpoint(&EndpointEntry { ip, ifindex: *ifindex, mac, flags: 0 })?;
            }
            if let Some(first) = r.ips.first() {
                maps.put_pod(&PodEntry { ifindex: *ifindex, addr: *first, mac })?;
            }
        }
    }
    if is_fresh("settings") {
        policy::set_default_deny(maps, conf.default_deny)?;
    }
    if POLICY_MAPS.iter().any(|m| is_fresh(m)) {
        let mut s = maps.settings()?;
        if s.flags & SETTINGS_F_POLICY != 0 {
            let why = format!(
                "the policy maps of network {} were lost or changed layout: policy is not enforced until the next \
                 `ebpfcni policy sync` or rule",
                conf.name
            );
            eprintln!("ebpfcni: {why}");
            policy::report::save(&datapath::network_dir(&conf.bpf_pin_path, &conf.name), &[why])?;
        }
        policy::apply(maps, &policy::PolicySet::default())?;
        s = maps.settings()?;
        s.flags &= !(SETTINGS_F_POLICY | SETTINGS_F_HAS_DENY);
        maps.put_settings(&s)?;
        for (r, ifindex) in &pods {
            if let Some(mac) = r.mac_bytes() {
                policy::register_pod(maps, &addresses(r, mac), *ifindex)?;
            }
        }
    }
    Ok(())
}

/// Pods wired by builds that kept no records: their records are written
/// from the maps (pod entry: veth and MAC; leases: addresses), so that a
/// later loss of the pins finds them.
fn adopt(conf: &NetConf, maps: &Maps, host: &Netlink) -> Result<()> {
    let known: Vec<String> =
        attachments::load_all(&conf.data_dir, &conf.name).into_iter().map(|r| r.host_veth).collect();
    let leases = read_leases(&conf.data_dir, &conf.name);
    for pod in maps.pods()? {
        let Some(owner) = leases.iter().find(|l| l.ip == pod.addr) else { continue };
        let host_veth = host_veth_name(&owner.container_id, &owner.ifname);
        if known.contains(&host_veth) || host.link_by_name(&host_veth)?.is_none_or(|l| l.index != pod.ifindex) {
            continue;
        }
        let ips = leases.iter().filter(|l| l.is_for(&owner.container_id, &owner.ifname)).map(|l| l.ip).collect();
        let record = AttachmentRecord {
            container_id: owner.container_id.clone(),
            ifname: owner.ifname.clone(),
            host_veth,
            mac: format_mac(pod.mac),
            ips,
        };
        attachments::save(&conf.data_dir, &conf.name, &record)?;
    }
    Ok(())
}

/// Attaches every recorded pod whose veth is there (idempotent: a live
/// attachment is kept) and records its mode in its endpoint entries.
/// Returns how many pods it attached.
fn reattach(conf: &NetConf, dp: &Datapath) -> Result<usize> {
    let host = Netlink::connect()?;
    let pods = live_records(conf, &host)?;
    for (r, ifindex) in &pods {
        let Some(mac) = r.mac_bytes() else { continue };
        let flags = match dp.attach(&r.host_veth, *ifindex, conf.attach_mode)? {
            Attached::Tcx => datapath::ENDPOINT_F_TCX,
            Attached::Tc => datapath::ENDPOINT_F_TC,
        };
        for ip in addresses(r, mac) {
            let mut ep = dp.maps.endpoint(ip)?.unwrap_or(EndpointEntry { ip, ifindex: *ifindex, mac, flags });
            ep.flags = (ep.flags & !(datapath::ENDPOINT_F_TCX | datapath::ENDPOINT_F_TC)) | flags;
            dp.maps.put_endpoint(&ep)?;
        }
    }
    Ok(pods.len())
}
