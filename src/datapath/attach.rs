//! Attaching the program to a pod's host veth: a TCX link (pinned, so it
//! outlives this short-lived process) where the kernel has TCX, a clsact
//! filter otherwise. Which one is decided by a probe, never by parsing the
//! kernel version. Nothing that another tool attached is touched: TCX
//! appends to the chain, clsact uses our own handle and priority.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::{TcHook, TC_INGRESS};
use serde::{Deserialize, Serialize};

use super::pins::{Datapath, LINKS_DIR};

/// Our clsact filter's handle and priority ("ebf"), distinct from the
/// defaults other tools use (1/1).
const TC_HANDLE: u32 = 0xebf;
const TC_PRIORITY: u32 = 0xebf;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX when the kernel has it, clsact otherwise.
    #[default]
    Auto,
    Tcx,
    Tc,
}

impl FromStr for AttachMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "tcx" => Ok(AttachMode::Tcx),
            "tc" => Ok(AttachMode::Tc),
            other => bail!("attachMode {other:?} is not one of auto, tcx, tc"),
        }
    }
}

/// How a pod's veth ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Tcx,
    Tc,
}

fn link_pin(dir: &Path, host_if: &str) -> PathBuf {
    dir.join(LINKS_DIR).join(host_if)
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path holds a NUL byte")
}

fn libbpf_err(ret: i32) -> io::Error {
    io::Error::from_raw_os_error(ret.abs())
}

fn tcx_link_create(prog: BorrowedFd<'_>, ifindex: i32) -> io::Result<OwnedFd> {
    // SAFETY: zeroed opts with `sz` set is how libbpf expects them.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    // SAFETY: valid program fd and opts; the returned fd is ours.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex, libbpf_sys::BPF_TCX_INGRESS, &opts) };
    if fd < 0 {
        return Err(libbpf_err(fd));
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Probes TCX: a link aimed at an interface index that cannot exist fails
/// with ENODEV where the kernel knows TCX, EINVAL where it does not.
pub fn tcx_supported(prog: BorrowedFd<'_>) -> bool {
    match tcx_link_create(prog, i32::MAX) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(nix::errno::Errno::EINVAL as i32),
    }
}

impl Datapath {
    /// Attaches the program to the ingress of the host veth `host_if`.
    pub fn attach(&self, host_if: &str, ifindex: u32, mode: AttachMode) -> Result<Attached> {
        let prog = std::os::fd::AsFd::as_fd(&self.prog);
        let use_tcx = match mode {
            AttachMode::Tcx => true,
            AttachMode::Tc => false,
            AttachMode::Auto => tcx_supported(prog),
        };
        if use_tcx {
            let pin = link_pin(&self.dir, host_if);
            if tcx_link_ifindex(&pin) == Some(ifindex) {
                return Ok(Attached::Tcx); // a retried ADD: already attached
            }
            // A pin left by a crashed ADD for this veth name is stale.
            let _ = fs::remove_file(&pin);
            let link = tcx_link_create(prog, ifindex as i32)
                .with_context(|| format!("attach tcx to {host_if} (ifindex {ifindex})"))?;
            let c = cpath(&pin)?;
            // SAFETY: valid link fd and NUL-terminated path.
            let ret = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), c.as_ptr()) };
            if ret < 0 {
                return Err(libbpf_err(ret)).with_context(|| format!("pin tcx link at {}", pin.display()));
            }
            Ok(Attached::Tcx)
        } else {
            attach_clsact(prog, ifindex, false)
                .with_context(|| format!("attach tc (clsact) to {host_if} (ifindex {ifindex})"))?;
            Ok(Attached::Tc)
        }
    }
}

impl Datapath {
    /// Verifies that the pod's host veth (by ifindex: names are reused)
    /// runs this network's program, in the mode its endpoint records.
    pub fn verify_attached(&self, host_if: &str, ifindex: u32, flags: u16) -> Result<()> {
        let prog = std::os::fd::AsFd::as_fd(&self.prog);
        let want = libbpf_rs::Program::id_from_fd(prog).context("read pinned program id")?;
        let got = if flags & super::ENDPOINT_F_TCX != 0 {
            let pin = link_pin(&self.dir, host_if);
            let link =
                libbpf_rs::Link::open(&pin).map_err(|_| anyhow::anyhow!("no TCX link pinned at {}", pin.display()))?;
            let info = link.info().context("read TCX link info")?;
            match info.info {
                libbpf_rs::query::LinkTypeInfo::Tcx(tcx) if tcx.ifindex == ifindex => info.prog_id,
                libbpf_rs::query::LinkTypeInfo::Tcx(tcx) => {
                    bail!(
                        "TCX link {} is attached to ifindex {}, not {host_if} (ifindex {ifindex})",
                        pin.display(),
                        tcx.ifindex
                    )
                }
                _ => bail!("{} is not a live TCX link (its interface is gone)", pin.display()),
            }
        } else {
            clsact_prog_id(prog, ifindex)
                .ok_or_else(|| anyhow::anyhow!("no ebpfcni tc filter on {host_if} (ifindex {ifindex}) ingress"))?
        };
        if got != want {
            bail!("{host_if} (ifindex {ifindex}) runs BPF program {got}, not the network's program {want}");
        }
        Ok(())
    }
}

/// The interface a pinned TCX link is attached to, if it is a live one.
pub fn tcx_link_ifindex(pin: &Path) -> Option<u32> {
    let link = libbpf_rs::Link::open(pin).ok()?;
    match link.info().ok()?.info {
        libbpf_rs::query::LinkTypeInfo::Tcx(tcx) => Some(tcx.ifindex),
        _ => None,
    }
}

/// The program id of our clsact filter on `ifindex`, if there is one.
pub fn clsact_prog_id(prog: BorrowedFd<'_>, ifindex: u32) -> Option<u32> {
    let mut hook = TcHook::new(prog);
    hook.ifindex(ifindex as i32).handle(TC_HANDLE).priority(TC_PRIORITY).attach_point(TC_INGRESS);
    hook.query().ok()
}

fn attach_clsact(prog: BorrowedFd<'_>, ifindex: u32, replace: bool) -> Result<()> {
    let mut hook = TcHook::new(prog);
    hook.ifindex(ifindex as i32).replace(replace).handle(TC_HANDLE).priority(TC_PRIORITY).attach_point(TC_INGRESS);
    // Creates clsact when missing; an existing qdisc is reused as it is.
    hook.create().context("create clsact qdisc")?;
    hook.attach().context("add tc filter")?;
    Ok(())
}

pub(super) fn replace_clsact(prog: BorrowedFd<'_>, ifindex: u32) -> Result<()> {
    attach_clsact(prog, ifindex, true)
}

/// Removes the pod's TCX link pin (the kernel detaches the link with its
/// last reference). A missing pin is fine: DEL is idempotent. clsact
/// filters go away with the veth itself.
pub fn detach(dir: &Path, host_if: &str) -> Result<()> {
    let pin = link_pin(dir, host_if);
    match fs::remove_file(&pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("unpin tcx link {}", pin.display()))
        }
        _ => Ok(()),
    }
}
