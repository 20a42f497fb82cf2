//! The eBPF datapath: the generated skeleton, its pins under
//! `<bpfPinPath>/<network>/`, attaching it to pods' host veths, and typed
//! access to its maps. The rest of the crate goes through this module only.

mod attach;
pub mod bench;
mod features;
pub mod footprint;
mod layout;
mod maps;
mod pins;
mod query;
mod reader;
mod rulebook;
mod sizes;
mod tunnel;

mod skel {
    #![allow(clippy::all, unused_imports, non_camel_case_types, dead_code)]
    include!(concat!(env!("OUT_DIR"), "/datapath.skel.rs"));
}

pub use attach::{detach, drop_retired, is_retired, pinned_link_owners, retire_links, AttachMode, Attached};
pub use features::{missing_required, probe as probe_features, Feature};
pub use maps::{
    event, proto_name, proto_number, Direction, EndpointEntry, EventLoss, IpcacheEntry, IpcacheKind, MapFull, Maps,
    PodEntry, PolicyEntry, Settings, Verdict, ENDPOINT_F_HOST_FLOWS, ENDPOINT_F_TC, ENDPOINT_F_TCX, IDENTITY_ANY,
    IDENTITY_CIDR_MIN, IDENTITY_HOST, IDENTITY_POD_MIN, IDENTITY_WORLD, ISOLATED_EGRESS, ISOLATED_INGRESS, MAP_NAMES,
    SETTINGS_F_HAS_DENY, SETTINGS_F_POLICY, SETTINGS_F_TRACE_FLOWS,
};
pub use pins::{bpffs_available, lock_dir, network_dir, pinned_programs, probe_load, Datapath, Sizing, TooSmall};
pub use query::{Hook, NetworkPrograms};
pub use reader::{claim_events, release_dead_reader};
pub use rulebook::RuleBook;
pub use sizes::{MapSizes, ADDRESSES_PER_POD};
pub use tunnel::{
    vxlan_mac, Fastpath, FastpathMap, TunnelTarget, Tunnels, TUNNEL_OVERHEAD_V4, TUNNEL_OVERHEAD_V6, TUNNEL_PORT,
};

/// Identifies the BPF program this binary carries (a hash of its sources).
pub const BPF_ID: &str = env!("EBPFCNI_BPF_ID");
