//! How many entries each map of a network holds, from its config
//! (`maxPods`, `conntrack.maxEntries`, `policy.max*`), set on the open
//! object before load. The object's own sizes (src/bpf/) are the default
//! config's, so the layouts checked in (layouts.txt) are the defaults';
//! a unit test keeps the two equal.

use anyhow::{bail, Context, Result};
use libbpf_rs::OpenObject;

/// The sizes a network's config asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Pods one node attaches to this network (`maxPods`).
    pub max_pods: u32,
    /// Established flows tracked for policy (`conntrack.maxEntries`).
    pub conntrack: u32,
    /// Addresses and prefixes policy gives identities, cluster-wide (`policy.maxAddresses`).
    pub policy_addresses: u32,
    /// Rule entries of one policy (`policy.maxEntries`).
    pub policy_entries: u32,
    /// Identities a policy isolates (`policy.maxIdentities`).
    pub policy_identities: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            // kubelet's default maxPods is 110: room for more than twice that.
            max_pods: 256,
            conntrack: 32768,
            policy_addresses: 16384,
            policy_entries: 65536,
            policy_identities: 8192,
        }
    }
}

/// Addresses one pod holds in endpoints and stats: IPv4, IPv6 and its
/// link-local one.
pub const ADDRESSES_PER_POD: u32 = 3;

/// (setting, lowest, highest) of each size: below the lowest a map is too
/// small to work at all; the highest are the sizes of the builds before
/// sizes were configurable (65,536 pods), or a few GB of kernel memory.
pub const LIMITS: [(&str, u32, u32); 5] = [
    ("maxPods", 1, 65536),
    ("conntrack.maxEntries", 1024, 1 << 22),
    ("policy.maxAddresses", 64, 1 << 20),
    ("policy.maxEntries", 64, 1 << 20),
    ("policy.maxIdentities", 64, 1 << 20),
];

impl MapSizes {
    /// Checks every size against `LIMITS`: the message names the setting.
    pub fn validate(&self) -> Result<()> {
        let values =
            [self.max_pods, self.conntrack, self.policy_addresses, self.policy_entries, self.policy_identities];
        for ((name, low, high), v) in LIMITS.iter().zip(values) {
            if !(*low..=*high).contains(&v) {
                bail!("{name} {v} is outside {low}-{high}");
            }
        }
        Ok(())
    }

    /// The max entries of map `name`; None for a map of fixed size (the
    /// ring buffer, the one-entry arrays, peer nodes' tunnels).
    pub fn max_entries(&self, name: &str) -> Option<u32> {
        let pods = self.max_pods;
        let ct = self.conntrack;
        Some(match name {
            "pods" | "ct_budget" => pods,
            "endpoints" | "stats" => pods * ADDRESSES_PER_POD,
            // Drop sources: pods for what they send, addresses for what enters them.
            "event_limit" => pods * 4,
            "conntrack" => ct,
            // Flows waiting for a reply are few beside established ones;
            // a flood of them only evicts others like them.
            "ct_new" => ct / 4,
            "hostflows" => ct / 8,
            "frags" => ct / 16,
            // Policy keeps two sets while switching from one to the next.
            "ipcache" => 2 * self.policy_addresses,
            "iprules" => 2 * self.policy_entries,
            "identity_flags" => 2 * self.policy_identities,
            _ => return None,
        })
    }

    /// The setting that sizes map `name`, for a full map's message.
    pub fn setting_of(name: &str) -> Option<&'static str> {
        Some(match name {
            "pods" | "ct_budget" | "endpoints" | "stats" | "event_limit" => "maxPods",
            "conntrack" | "ct_new" | "hostflows" | "frags" => "conntrack.maxEntries",
            "ipcache" => "policy.maxAddresses",
            "iprules" => "policy.maxEntries",
            "identity_flags" => "policy.maxIdentities",
            _ => return None,
        })
    }

    /// Sets the size of every sized map of an open object, before load.
    pub fn apply(&self, object: &mut OpenObject) -> Result<()> {
        for mut map in object.maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            if let Some(max) = self.max_entries(&name) {
                map.set_max_entries(max).with_context(|| format!("set the size of map {name} to {max}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use libbpf_rs::skel::{OpenSkel, SkelBuilder};

    use super::*;
    use crate::datapath::skel::DatapathSkelBuilder;

    #[test]
    fn the_objects_sizes_are_the_default_configs() {
        let mut object = MaybeUninit::uninit();
        let open = DatapathSkelBuilder::default().open(&mut object).expect("open skeleton");
        let sizes = MapSizes::default();
        let mut sized = 0;
        for map in open.open_object().maps() {
            let name = map.name().to_string_lossy().into_owned();
            if let Some(max) = sizes.max_entries(&name) {
                assert_eq!(
                    map.max_entries(),
                    max,
                    "map {name}: src/bpf/ says {}, the default config {max}",
                    map.max_entries()
                );
                assert!(MapSizes::setting_of(&name).is_some(), "{name} has no setting to name when it is full");
                sized += 1;
            }
        }
        assert_eq!(sized, 12, "every sized map is in the object");
    }

    #[test]
    fn sizes_outside_their_limits_name_the_setting() {
        assert!(MapSizes::default().validate().is_ok());
        let e = MapSizes { max_pods: 0, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("maxPods 0"), "{e}");
        let e = MapSizes { conntrack: 100, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("conntrack.maxEntries"), "{e}");
        assert!(MapSizes { max_pods: 65537, ..Default::default() }.validate().is_err());
        // The largest sizes still fit their maps' u32 max_entries.
        let top = MapSizes {
            max_pods: 65536,
            conntrack: 1 << 22,
            policy_addresses: 1 << 20,
            policy_entries: 1 << 20,
            policy_identities: 1 << 20,
        };
        assert!(top.validate().is_ok());
        assert_eq!(top.max_entries("event_limit"), Some(262144));
        assert_eq!(MapSizes { max_pods: 4, ..Default::default() }.max_entries("pods"), Some(4));
        assert_eq!(MapSizes::default().max_entries("events"), None);
    }
}
