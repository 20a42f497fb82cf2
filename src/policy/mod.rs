//! The policy model an operator writes (hand-made rules, or Kubernetes
//! NetworkPolicies) and its translation into the datapath's identities,
//! ipcache and `iprules` entries. Every change is applied atomically: the
//! new rule set is written beside the active one and switched to in one
//! map update, so no packet ever sees half of a change.

mod apply;
pub mod k8s;
mod manual;
mod ports;
pub mod report;
mod sync;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub use apply::{
    apply, current, link_locals_follow_pods, pod_addresses, register_pod, set_default_deny, set_trace_flows,
    unregister_pod,
};
pub use manual::{add_rule, delete_rule, describe, list_rules, Rule};
pub use ports::port_blocks;
pub use sync::sync_objects;

use crate::datapath::{Direction, PolicyEntry, Verdict};
use crate::ipam::Cidr;

/// Identities given to pods one by one at ADD (no labels known yet).
pub const PER_POD_IDENTITY_BASE: u32 = 0x80_0000;

/// A complete rule set, independent of which of the two map sets holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    /// Exact addresses of pods and of the node -> identity.
    pub endpoints: BTreeMap<IpAddr, u32>,
    /// Prefixes rules name -> identity, for addresses not in `endpoints`.
    pub cidrs: BTreeMap<Cidr, u32>,
    /// Identity -> ISOLATED_INGRESS | ISOLATED_EGRESS.
    pub isolation: BTreeMap<u32, u32>,
    pub entries: BTreeSet<Entry>,
    /// Rule number -> the NetworkPolicy it came from (after a sync).
    pub names: BTreeMap<u32, String>,
}

/// An `iprules` entry without its set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub dir: Direction,
    pub subject: u32,
    pub peer: u32,
    /// 0: every protocol and port.
    pub proto: u8,
    /// The first port of an aligned block of 2^(16 - port_bits) ports.
    pub port: u16,
    /// 0: every port of `proto`; 16: `port` alone.
    pub port_bits: u8,
    pub deny: bool,
    pub rule: u32,
}

impl Entry {
    /// Whether every packet this entry matches, `other` matches too.
    fn covered_by(&self, other: &Entry) -> bool {
        if (self.dir, self.subject, self.peer) != (other.dir, other.subject, other.peer) {
            return false;
        }
        if other.proto == 0 {
            return true;
        }
        if other.proto != self.proto || other.port_bits > self.port_bits {
            return false;
        }
        let shift = 16 - u32::from(other.port_bits);
        u32::from(self.port) >> shift == u32::from(other.port) >> shift
    }

    fn to_map(self, set: u8, applied_deny: bool) -> PolicyEntry {
        let verdict = |deny| if deny { Verdict::Deny } else { Verdict::Allow };
        PolicyEntry {
            set,
            dir: self.dir,
            subject: self.subject,
            peer: self.peer,
            proto: self.proto,
            port: self.port,
            port_bits: self.port_bits,
            verdict: verdict(self.deny),
            applied: verdict(self.deny || applied_deny),
            rule: self.rule,
        }
    }

    fn from_map(e: &PolicyEntry) -> Self {
        Entry {
            dir: e.dir,
            subject: e.subject,
            peer: e.peer,
            proto: e.proto,
            port: e.port,
            port_bits: e.port_bits,
            deny: e.verdict == Verdict::Deny,
            rule: e.rule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(proto: u8, port: u16, port_bits: u8, deny: bool) -> Entry {
        Entry { dir: Direction::Ingress, subject: 300, peer: 0, proto, port, port_bits, deny, rule: 1 }
    }

    #[test]
    fn coverage_follows_protocol_and_port_prefixes() {
        let exact = entry(6, 8080, 16, false);
        assert!(exact.covered_by(&entry(0, 0, 0, true)));
        assert!(exact.covered_by(&entry(6, 0, 0, true)));
        assert!(exact.covered_by(&entry(6, 8064, 10, true)));
        assert!(!exact.covered_by(&entry(6, 8192, 10, true)));
        assert!(!exact.covered_by(&entry(17, 0, 0, true)));
        assert!(!entry(6, 0, 0, false).covered_by(&exact));
    }
}
