//! Support for `ebpfcni bench-datapath`: a privately loaded skeleton (no
//! pins) and typed access to its maps, to run the classifier with
//! BPF_PROG_TEST_RUN.

use anyhow::{Context, Result};
use libbpf_rs::MapHandle;

use super::skel::types::__sk_buff;
pub use super::skel::{DatapathSkel, DatapathSkelBuilder};
use super::Maps;

/// The typed map access for a skeleton's own maps.
pub fn maps_of(skel: &DatapathSkel<'_>) -> Result<Maps> {
    let m = &skel.maps;
    let h = |map| MapHandle::try_from(map).context("duplicate map fd");
    Ok(Maps {
        endpoints: h(&m.endpoints)?,
        pods: h(&m.pods)?,
        stats: h(&m.stats)?,
        ipcache: h(&m.ipcache)?,
        iprules: h(&m.iprules)?,
        identity_flags: h(&m.identity_flags)?,
        settings: h(&m.settings)?,
        conntrack: h(&m.conntrack)?,
        ct_new: h(&m.ct_new)?,
        ct_budget: h(&m.ct_budget)?,
        frags: h(&m.frags)?,
        hostflows: h(&m.hostflows)?,
        events: h(&m.events)?,
        events_lost: h(&m.events_lost)?,
        event_limit: h(&m.event_limit)?,
    })
}

/// A `struct __sk_buff` context for a packet arriving on `ifindex`.
pub fn skb_ctx(ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; std::mem::size_of::<__sk_buff>()];
    let off = std::mem::offset_of!(__sk_buff, ifindex);
    ctx[off..off + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}
