//! Writing a rule set into the maps atomically, reading the active one
//! back, and the per-pod entries ADD and DEL maintain.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;

use super::{Entry, PolicySet, PER_POD_IDENTITY_BASE};
use crate::datapath::{
    IpcacheEntry, IpcacheKind, Maps, PolicyEntry, Settings, IDENTITY_ANY, IDENTITY_CIDR_MIN, IDENTITY_POD_MIN,
    SETTINGS_F_HAS_DENY, SETTINGS_F_POLICY, SETTINGS_F_TRACE_FLOWS,
};
use crate::ipam::Cidr;

/// Packets that read the old set before the switch finish within
/// microseconds (programs run under RCU); this is far longer.
const GRACE: Duration = Duration::from_millis(20);

fn host_prefix(ip: IpAddr) -> Cidr {
    Cidr { addr: ip, prefix: if ip.is_ipv4() { 32 } else { 128 } }
}

/// The active rule set, as the datapath sees it.
pub fn current(maps: &Maps) -> Result<PolicySet> {
    let set = maps.settings()?.active_set as u8 & 1;
    let mut out = PolicySet::default();
    for e in maps.ipcache()?.into_iter().filter(|e| e.set == set) {
        match e.kind {
            IpcacheKind::Endpoint => out.endpoints.insert(e.prefix.addr, e.identity),
            IpcacheKind::Cidr => out.cidrs.insert(e.prefix, e.identity),
        };
    }
    for (s, id, flags) in maps.identity_flags()? {
        if s == set {
            out.isolation.insert(id, flags);
        }
    }
    for e in maps.policy()?.iter().filter(|e| e.set == set) {
        out.entries.insert(Entry::from_map(e));
    }
    Ok(out)
}

fn clear_set(maps: &Maps, set: u8) -> Result<()> {
    for e in maps.ipcache()?.into_iter().filter(|e| e.set == set) {
        maps.remove_ipcache(set, e.kind, &e.prefix)?;
    }
    for (s, id, _) in maps.identity_flags()? {
        if s == set {
            maps.remove_identity_flags(set, id)?;
        }
    }
    for e in maps.policy()?.into_iter().filter(|e| e.set == set) {
        maps.remove_policy(&e)?;
    }
    Ok(())
}

/// Replaces the active rule set with `new`. The caller holds the network's
/// pin directory lock.
pub fn apply(maps: &Maps, new: &PolicySet) -> Result<()> {
    let mut s = maps.settings()?;
    let old = s.active_set as u8 & 1;
    let next = old ^ 1;
    clear_set(maps, next)?; // leftovers of an interrupted apply
    for (ip, identity) in &new.endpoints {
        let prefix = host_prefix(*ip);
        maps.put_ipcache(&IpcacheEntry { set: next, kind: IpcacheKind::Endpoint, prefix, identity: *identity })?;
    }
    for (prefix, identity) in &new.cidrs {
        maps.put_ipcache(&IpcacheEntry { set: next, kind: IpcacheKind::Cidr, prefix: *prefix, identity: *identity })?;
    }
    for (identity, flags) in &new.isolation {
        maps.put_identity_flags(next, *identity, *flags)?;
    }
    // The datapath reads the longest matching entry only: an entry
    // covered by a deny carries the deny (explicit deny wins).
    let denies: Vec<&Entry> = new.entries.iter().filter(|e| e.deny).collect();
    for e in one_per_key(&new.entries) {
        let shadowed = !e.deny && denies.iter().any(|d| e.covered_by(d));
        maps.put_policy(&e.to_map(next, shadowed))?;
    }
    s.active_set = u32::from(next);
    s.generation = s.generation.wrapping_add(1);
    s.flags &= SETTINGS_F_TRACE_FLOWS;
    if !new.entries.is_empty() || !new.isolation.is_empty() {
        s.flags |= SETTINGS_F_POLICY;
    }
    if new.entries.iter().any(|e| e.deny) {
        s.flags |= SETTINGS_F_HAS_DENY;
    }
    maps.put_settings(&s)?; // the switch: one map update
    std::thread::sleep(GRACE);
    clear_set(maps, old)
}

/// Entries of different rules may share a map key: the key holds one,
/// a deny when any of them denies (explicit deny wins), never whichever
/// was written last.
fn one_per_key(entries: &std::collections::BTreeSet<Entry>) -> Vec<Entry> {
    let mut by_key: std::collections::BTreeMap<_, Entry> = std::collections::BTreeMap::new();
    for e in entries {
        let key = (e.dir, e.subject, e.peer, e.proto, e.port, e.port_bits);
        by_key
            .entry(key)
            .and_modify(|kept| {
                if e.deny && !kept.deny {
                    *kept = *e;
                }
            })
            .or_insert(*e);
    }
    by_key.into_values().collect()
}

/// Records the network's default action (from its config) at every ADD.
pub fn set_default_deny(maps: &Maps, deny: bool) -> Result<()> {
    let mut s = maps.settings()?;
    if s.default_deny != deny {
        s.default_deny = deny;
        s.generation = s.generation.wrapping_add(1);
        maps.put_settings(&s)?;
    }
    Ok(())
}

pub fn set_trace_flows(maps: &Maps, on: bool) -> Result<()> {
    let mut s: Settings = maps.settings()?;
    if on {
        s.flags |= SETTINGS_F_TRACE_FLOWS;
    } else {
        s.flags &= !SETTINGS_F_TRACE_FLOWS;
    }
    maps.put_settings(&s)
}

/// Gives a new pod's addresses an identity of their own in the active set
/// (a later sync may group it with pods of the same labels). Idempotent.
/// One lookup per address: ADD's cost must not grow with the node's pods.
pub fn register_pod(maps: &Maps, ips: &[IpAddr], ifindex: u32) -> Result<()> {
    let set = maps.settings()?.active_set as u8 & 1;
    let identity = PER_POD_IDENTITY_BASE + (ifindex & 0x7f_ffff);
    for ip in ips {
        // The endpoint part holds exact addresses only, so a pod-range
        // identity there is this address's entry (from a sync, or a
        // retried ADD): keep it.
        let known = maps.identity_in(set, IpcacheKind::Endpoint, *ip)?.is_some_and(is_pod_identity);
        if !known {
            let prefix = host_prefix(*ip);
            maps.put_ipcache(&IpcacheEntry { set, kind: IpcacheKind::Endpoint, prefix, identity })?;
        }
    }
    // Rules whose subject is `any` hold for pods added after them too.
    if maps.settings()?.flags & SETTINGS_F_POLICY != 0 {
        for e in maps.policy()?.into_iter().filter(|e| e.set == set && e.subject == IDENTITY_ANY) {
            maps.put_policy(&PolicyEntry { subject: identity, ..e })?;
        }
    }
    Ok(())
}

/// A pod's link-local address (Kubernetes does not know it) takes the
/// identity its pod's first address has in `set`, so the policies that
/// select the pod hold for that address too.
pub fn link_locals_follow_pods(maps: &Maps, set: &mut PolicySet) -> Result<()> {
    for pod in maps.pods()? {
        if let Some(id) = set.endpoints.get(&pod.addr).copied() {
            set.endpoints.insert(crate::cni::link_local::of_mac(pod.mac), id);
        }
    }
    Ok(())
}

/// Every address the ipcache (either set) gives a pod identity.
pub fn pod_addresses(maps: &Maps) -> Result<Vec<IpAddr>> {
    Ok(maps
        .ipcache()?
        .into_iter()
        .filter(|e| e.kind == IpcacheKind::Endpoint && is_pod_identity(e.identity))
        .map(|e| e.prefix.addr)
        .collect())
}

fn is_pod_identity(id: u32) -> bool {
    (IDENTITY_POD_MIN..IDENTITY_CIDR_MIN).contains(&id)
}

/// Removes a pod's addresses from both sets, and the rules and isolation
/// of its own identity (nobody else holds it).
pub fn unregister_pod(maps: &Maps, ips: &[IpAddr]) -> Result<()> {
    let mut own = Vec::new();
    for ip in ips {
        for set in [0, 1] {
            if let Some(id) = maps.identity_in(set, IpcacheKind::Endpoint, *ip)?.filter(|id| is_pod_identity(*id)) {
                if id >= PER_POD_IDENTITY_BASE {
                    own.push(id);
                }
                maps.remove_ipcache(set, IpcacheKind::Endpoint, &host_prefix(*ip))?;
            }
        }
    }
    if own.is_empty() {
        return Ok(());
    }
    // Only pods that never got a label identity have rules of their own:
    // hand-made ones, rare, so a scan here is fine.
    for e in maps.policy()? {
        if own.contains(&e.subject) || own.contains(&e.peer) {
            maps.remove_policy(&e)?;
        }
    }
    for (set, id, _) in maps.identity_flags()? {
        if own.contains(&id) {
            maps.remove_identity_flags(set, id)?;
        }
    }
    Ok(())
}
