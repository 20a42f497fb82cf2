//! The eBPF datapath: the generated skeleton, its pins under
//! `<bpfPinPath>/<network>/`, attaching it to pods' host veths, and typed
//! access to its maps. The rest of the crate goes through this module only.

mod attach;
mod maps;
mod pins;

mod skel {
    #![allow(clippy::all, unused_imports, non_camel_case_types, dead_code)]
    include!(concat!(env!("OUT_DIR"), "/datapath.skel.rs"));
}

pub use attach::{detach, AttachMode, Attached};
pub use maps::{EndpointEntry, Maps, ENDPOINT_F_TC, ENDPOINT_F_TCX};
pub use pins::{bpffs_available, network_dir, probe_load, Datapath};

/// Identifies the BPF program this binary carries (a hash of its sources).
pub const BPF_ID: &str = env!("EBPFCNI_BPF_ID");
