//! One NetworkPolicy sync: a cluster's objects (the `List` kubectl
//! prints) compiled and switched to atomically, under the network's lock.
//! `policy sync -f` runs it once; `ebpfcni-agent run` at every change.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::datapath::{lock_dir, Maps, RuleBook};

/// What a sync left in force.
pub struct Synced {
    pub endpoints: usize,
    pub prefixes: usize,
    pub isolated: usize,
    pub entries: usize,
    /// Whether it switched (the rule set differed, or it was asked to anyway).
    pub changed: bool,
    /// "NetworkPolicy ns/name: why": every other policy is applied; the pods
    /// of a broken one stay isolated.
    pub errors: Vec<String>,
}

/// Compiles `input` against the rule set in force (identities kept where
/// they can be) and switches to it; with `only_if_changed`, not when it
/// is the same (the agent's resyncs then cost no switch).
pub fn sync_objects(dir: &Path, maps: &Maps, input: &Value, only_if_changed: bool) -> Result<Synced> {
    let _lock = lock_dir(dir)?;
    let current = super::current(maps)?;
    let mut compiled = super::k8s::compile(input, &current, &node_addresses())?;
    super::link_locals_follow_pods(maps, &mut compiled.set)?;
    let new = &compiled.set;
    let book = RuleBook::open(dir)?;
    let same = new.endpoints == current.endpoints
        && new.cidrs == current.cidrs
        && new.isolation == current.isolation
        && new.entries == current.entries
        && super::report::load(dir)? == compiled.errors;
    if !(same && only_if_changed) {
        super::apply(maps, new)?;
        super::report::save(dir, &compiled.errors)?;
        book.clear()?;
        for (rule, name) in &new.names {
            book.put(*rule, &serde_json::json!({ "name": name, "src": "-", "dst": "-" }).to_string())?;
        }
    }
    Ok(Synced {
        endpoints: new.endpoints.len(),
        prefixes: new.cidrs.len(),
        isolated: new.isolation.len(),
        entries: new.entries.len(),
        changed: !(same && only_if_changed),
        errors: compiled.errors,
    })
}

/// This node's own addresses (its pods reach it and it them whatever the
/// NetworkPolicies): every address of the host's interfaces but loopback
/// and IPv6 link-local ones.
pub fn node_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .collect();
    out.sort();
    out.dedup();
    out
}
