//! The policy model an operator writes (hand-made rules, or Kubernetes
//! NetworkPolicies) and its translation into the datapath's identities,
//! ipcache and `iprules` entries. Every change is applied atomically: the
//! new rule set is written beside the active one and switched to in one
//! map update, so no packet ever sees half of a change.

mod apply;
pub mod k8s;
mod manual;

use std::collections::{BTreeMap, BTreeSet};

pub use apply::{apply, current, pod_addresses, register_pod, set_default_deny, set_trace_flows, unregister_pod};
pub use manual::{add_rule, delete_rule, describe, list_rules, rule_text, Rule};

use crate::datapath::{Direction, PolicyEntry, Verdict};
use crate::ipam::Cidr;

/// Identities given to pods one by one at ADD (no labels known yet).
pub const PER_POD_IDENTITY_BASE: u32 = 0x80_0000;

/// A complete rule set, independent of which of the two map sets holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    /// Address prefix -> identity (pods' addresses as /32 and /128).
    pub ipcache: BTreeMap<Cidr, u32>,
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
    pub proto: u8,
    pub port: u16,
    pub deny: bool,
    pub rule: u32,
}

impl Entry {
    fn to_map(self, set: u8) -> PolicyEntry {
        PolicyEntry {
            set,
            dir: self.dir,
            subject: self.subject,
            peer: self.peer,
            proto: self.proto,
            port: self.port,
            verdict: if self.deny { Verdict::Deny } else { Verdict::Allow },
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
            deny: e.verdict == Verdict::Deny,
            rule: e.rule,
        }
    }
}
