//! What the kernel reports attached to a pod's host veth — TCX programs
//! (BPF_PROG_QUERY) and ebpfcni's clsact filter — matched against the
//! network's pinned programs. The CLI's "attached" comes from here, never
//! from what a map or a pin says should be there.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use libbpf_rs::{libbpf_sys, Program};
use serde::Serialize;

use super::attach::clsact_prog_id;
use super::pins::pinned_programs;

/// One hook (ingress or egress) of a veth, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// One of the network's programs runs there through TCX.
    Tcx,
    /// One of the network's programs runs there as ebpfcni's clsact filter.
    Tc,
    /// None of the network's programs runs there.
    None,
}

/// Both hooks of a host veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KernelAttachment {
    pub ingress: Hook,
    pub egress: Hook,
}

impl KernelAttachment {
    /// "tcx", "tc", "detached", or "partial (ingress tcx, egress none)".
    pub fn state(&self) -> String {
        let name = |h: Hook| match h {
            Hook::Tcx => "tcx",
            Hook::Tc => "tc",
            Hook::None => "none",
        };
        match (self.ingress, self.egress) {
            (a, b) if a == b && a != Hook::None => name(a).to_string(),
            (Hook::None, Hook::None) => "detached".to_string(),
            (a, b) => format!("partial (ingress {}, egress {})", name(a), name(b)),
        }
    }
}

/// The network's pinned programs: their ids, and one fd to build tc
/// queries with.
pub struct NetworkPrograms {
    ids: Vec<u32>,
    any: Option<OwnedFd>,
}

impl NetworkPrograms {
    pub fn open(dir: &Path) -> Self {
        let mut ids = Vec::new();
        let mut any = None;
        for (name, _) in pinned_programs(dir) {
            if let Ok(fd) = Program::fd_from_pinned_path(dir.join(&name)) {
                if let Ok(id) = Program::id_from_fd(fd.as_fd()) {
                    ids.push(id);
                }
                any.get_or_insert(fd);
            }
        }
        NetworkPrograms { ids, any }
    }

    /// Asks the kernel what runs on `ifindex`.
    pub fn attachment(&self, ifindex: u32) -> KernelAttachment {
        let hook = |egress: bool| {
            let tcx_type = if egress { libbpf_sys::BPF_TCX_EGRESS } else { libbpf_sys::BPF_TCX_INGRESS };
            if tcx_prog_ids(ifindex, tcx_type).iter().any(|id| self.ids.contains(id)) {
                return Hook::Tcx;
            }
            let tc = self.any.as_ref().and_then(|fd| clsact_prog_id(fd.as_fd(), ifindex, egress));
            if tc.is_some_and(|id| self.ids.contains(&id)) {
                return Hook::Tc;
            }
            Hook::None
        };
        KernelAttachment { ingress: hook(false), egress: hook(true) }
    }
}

/// Program ids attached through TCX to one hook of `ifindex` (empty where
/// the kernel has no TCX or the interface is gone).
fn tcx_prog_ids(ifindex: u32, attach_type: libbpf_sys::bpf_attach_type) -> Vec<u32> {
    let mut ids = [0u32; 64];
    let mut opts = libbpf_sys::bpf_prog_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_query_opts>() as _,
        prog_ids: ids.as_mut_ptr(),
        ..Default::default()
    };
    opts.__bindgen_anon_1.prog_cnt = ids.len() as u32;
    // SAFETY: opts points at a live array of prog_cnt ids.
    let ret = unsafe { libbpf_sys::bpf_prog_query_opts(ifindex as i32, attach_type, &mut opts) };
    if ret != 0 {
        return Vec::new();
    }
    // SAFETY: the kernel wrote the count back into the union.
    let n = unsafe { opts.__bindgen_anon_1.prog_cnt } as usize;
    ids[..n.min(ids.len())].to_vec()
}
