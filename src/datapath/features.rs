//! What the datapath needs from the kernel, found by probing it (never by
//! reading the kernel version): each feature, whether this kernel has it,
//! and what ebpfcni does without it.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;

use libbpf_rs::libbpf_sys;
use serde::Serialize;

use super::attach::tcx_supported;

#[derive(Clone, Debug, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub present: bool,
    /// Without a required feature no pod can be added.
    pub required: bool,
    /// What the feature serves, or what is used instead when it is absent.
    pub role: &'static str,
}

/// Probes every feature the datapath relies on. Costs a few bpf() calls;
/// the CNI ADD path calls it only to explain a failed load.
pub fn probe() -> Vec<Feature> {
    let sched_cls = libbpf_sys::BPF_PROG_TYPE_SCHED_CLS;
    // SAFETY: the probes take plain values and a null opts pointer.
    let helper = |id| unsafe { libbpf_sys::libbpf_probe_bpf_helper(sched_cls, id, std::ptr::null()) } == 1;
    let map = |ty| unsafe { libbpf_sys::libbpf_probe_bpf_map_type(ty, std::ptr::null()) } == 1;
    vec![
        Feature {
            name: "btf",
            present: Path::new("/sys/kernel/btf/vmlinux").exists(),
            required: true,
            role: "kernel BTF: the CO-RE program is relocated against it",
        },
        Feature {
            name: "bpf_redirect_peer",
            present: helper(libbpf_sys::BPF_FUNC_redirect_peer),
            required: true,
            role: "delivers pod-to-pod traffic straight into the destination pod (5.10)",
        },
        Feature {
            name: "ringbuf",
            present: map(libbpf_sys::BPF_MAP_TYPE_RINGBUF),
            required: true,
            role: "carries drop and flow events to `ebpfcni monitor` (5.8)",
        },
        Feature {
            name: "lpm_trie",
            present: map(libbpf_sys::BPF_MAP_TYPE_LPM_TRIE),
            required: true,
            role: "maps addresses and prefixes to policy identities",
        },
        Feature {
            name: "tcx",
            present: trivial_sched_cls().is_some_and(|p| tcx_supported(p.as_fd())),
            required: false,
            role: "attaches without a qdisc (6.6); clsact filters are used without it",
        },
    ]
}

/// Names of the required features this kernel lacks, with their role.
pub fn missing_required(features: &[Feature]) -> Vec<String> {
    features.iter().filter(|f| f.required && !f.present).map(|f| format!("{} ({})", f.name, f.role)).collect()
}

/// `r0 = 0; exit`: a classifier to aim attach probes with.
fn trivial_sched_cls() -> Option<OwnedFd> {
    let mut mov = libbpf_sys::bpf_insn { code: 0xb7, ..Default::default() }; // BPF_ALU64 | BPF_MOV | BPF_K
    mov.set_dst_reg(0);
    let exit = libbpf_sys::bpf_insn { code: 0x95, ..Default::default() }; // BPF_JMP | BPF_EXIT
    let insns = [mov, exit];
    // SAFETY: valid instructions, NUL-terminated strings, null opts.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_SCHED_CLS,
            c"ebpfcni_probe".as_ptr(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            std::ptr::null_mut(),
        )
    };
    // SAFETY: a non-negative return is a fresh descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}
