//! Support for `ebpfcni bench-datapath`: a privately loaded skeleton (no
//! pins) and typed access to its maps, to run the classifier with
//! BPF_PROG_TEST_RUN.

use anyhow::{anyhow, Context, Result};
use libbpf_rs::skel::Skel;
use libbpf_rs::{MapCore, MapHandle};

use super::skel::types::__sk_buff;
pub use super::skel::{DatapathSkel, DatapathSkelBuilder};
use super::Maps;

/// The typed map access for a skeleton's own maps.
pub fn maps_of(skel: &DatapathSkel<'_>) -> Result<Maps> {
    Maps::from_handles(|name| {
        let map = skel.object().maps().find(|m| m.name() == name).ok_or_else(|| anyhow!("no map {name}"))?;
        MapHandle::try_from(&map).with_context(|| format!("duplicate the fd of map {name}"))
    })
}

/// A `struct __sk_buff` context for a packet arriving on `ifindex`.
pub fn skb_ctx(ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; std::mem::size_of::<__sk_buff>()];
    let off = std::mem::offset_of!(__sk_buff, ifindex);
    ctx[off..off + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}
