//! The flow-keyed maps (conntrack, ct_new, hostflows, frags): one
//! decoder for their entries and one collect-then-delete for their keys.

use std::net::IpAddr;

use anyhow::Result;
use serde::Serialize;

use super::typed::{Plain, TypedMap};
use super::{key_to_ip, Maps};
use crate::datapath::skel::types::{ct_key, ct_value};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackEntry {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub last_seen_ns: u64,
    pub generation: u32,
    /// A reply was seen (the entry lives in `conntrack`, else in `ct_new`).
    pub established: bool,
}

/// How full the conntrack tables are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackFill {
    pub established: usize,
    pub established_max: u32,
    pub new: usize,
    pub new_max: u32,
}

/// A flow-keyed entry (conntrack, ct_new, hostflows) as user space reads it.
fn flow_entry(k: &ct_key, v: ct_value, established: bool) -> ConntrackEntry {
    ConntrackEntry {
        src: key_to_ip(&k.src),
        dst: key_to_ip(&k.dst),
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
        last_seen_ns: v.last_seen_ns,
        generation: v.generation,
        established,
    }
}

fn sorted(mut v: Vec<ConntrackEntry>) -> Vec<ConntrackEntry> {
    v.sort_by_key(|c| (c.src, c.dst, c.sport, c.dport));
    v
}

impl Maps {
    /// Forgets every tracked connection from or to one of `ips` (a pod
    /// that is gone); returns how many.
    pub fn remove_conntrack_of(&self, ips: &[IpAddr]) -> Result<usize> {
        if ips.is_empty() {
            return Ok(0);
        }
        self.retain_conntrack(|src, dst| !ips.contains(&src) && !ips.contains(&dst))
    }

    /// Keeps only the tracked connections and host flows `keep(src, dst)`
    /// accepts (both maps are keyed by flow); returns how many went.
    pub fn retain_conntrack(&self, keep: impl Fn(IpAddr, IpAddr) -> bool) -> Result<usize> {
        let gone = |k: &ct_key| !keep(key_to_ip(&k.src), key_to_ip(&k.dst));
        let mut n = self.conntrack.delete_where(gone)?;
        n += self.ct_new.delete_where(gone)?;
        n += self.hostflows.delete_where(gone)?;
        // Fragmented datagrams being let through, keyed by their ends too.
        self.frags.delete_where(|k| !keep(key_to_ip(&k.src), key_to_ip(&k.dst)))?;
        Ok(n)
    }

    /// Flows from a pod of this node that reached another through the
    /// host (their replies go back that way), as they arrived.
    pub fn hostflows(&self) -> Result<Vec<ConntrackEntry>> {
        let keys = self.hostflows.keys()?;
        Ok(sorted(keys.iter().map(|k| flow_entry(k, ct_value::default(), false)).collect()))
    }

    /// Tracked flows, established and new, in their original direction.
    pub fn conntrack(&self) -> Result<Vec<ConntrackEntry>> {
        let established = self.conntrack.entries()?.into_iter().map(|(k, v)| flow_entry(&k, v, true));
        let new = self.ct_new.entries()?.into_iter().map(|(k, v)| flow_entry(&k, v.ct, false));
        Ok(sorted(established.chain(new).collect()))
    }

    /// (map, entries, max entries) of every hash-like map: what a full map
    /// would refuse next.
    pub fn fill(&self) -> Result<Vec<(&'static str, usize, u32)>> {
        fn one<K: Plain, V: Plain>(name: &'static str, m: &TypedMap<K, V>) -> Result<(&'static str, usize, u32)> {
            Ok((name, m.len()?, m.max_entries()?))
        }
        Ok(vec![
            one("endpoints", &self.endpoints)?,
            one("pods", &self.pods)?,
            one("stats", &self.stats)?,
            one("ipcache", &self.ipcache)?,
            one("iprules", &self.iprules)?,
            one("identity_flags", &self.identity_flags)?,
            one("conntrack", &self.conntrack)?,
            one("ct_new", &self.ct_new)?,
            one("frags", &self.frags)?,
            one("hostflows", &self.hostflows)?,
            one("event_limit", &self.event_limit)?,
        ])
    }

    /// Entries in the two conntrack tables against their sizes.
    pub fn conntrack_fill(&self) -> Result<ConntrackFill> {
        Ok(ConntrackFill {
            established: self.conntrack.len()?,
            established_max: self.conntrack.max_entries()?,
            new: self.ct_new.len()?,
            new_max: self.ct_new.max_entries()?,
        })
    }
}
