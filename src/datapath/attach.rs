//! Attaching the programs to a pod's host veth, `from_pod` on its ingress
//! and `to_pod` on its egress: TCX links (pinned, so they outlive this
//! short-lived process) where the kernel has TCX, clsact filters
//! otherwise. Which one is decided by a probe, never by parsing the kernel
//! version. Nothing that another tool attached is touched: TCX appends to
//! the chain (and needs no qdisc, so plugins that install their own, like
//! the reference bandwidth plugin, chain cleanly), clsact uses our own
//! handle and priority.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::{TcHook, TC_EGRESS, TC_INGRESS};
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

/// `links/<host veth>/`: the pod's two TCX link pins live in it.
fn link_dir(dir: &Path, host_if: &str) -> PathBuf {
    dir.join(LINKS_DIR).join(host_if)
}

fn link_pin(dir: &Path, host_if: &str, egress: bool) -> PathBuf {
    link_dir(dir, host_if).join(if egress { "egress" } else { "ingress" })
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path holds a NUL byte")
}

fn libbpf_err(ret: i32) -> io::Error {
    io::Error::from_raw_os_error(ret.abs())
}

fn tcx_link_create(prog: BorrowedFd<'_>, ifindex: i32, egress: bool) -> io::Result<OwnedFd> {
    // SAFETY: zeroed opts with `sz` set is how libbpf expects them.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    let attach_type = if egress { libbpf_sys::BPF_TCX_EGRESS } else { libbpf_sys::BPF_TCX_INGRESS };
    // SAFETY: valid program fd and opts; the returned fd is ours.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex, attach_type, &opts) };
    if fd < 0 {
        return Err(libbpf_err(fd));
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Probes TCX: a link aimed at an interface index that cannot exist fails
/// with ENODEV where the kernel knows TCX, EINVAL where it does not.
pub fn tcx_supported(prog: BorrowedFd<'_>) -> bool {
    match tcx_link_create(prog, i32::MAX, false) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(nix::errno::Errno::EINVAL as i32),
    }
}

/// Attaches one direction with TCX and pins the link; a live link already
/// pinned for this very interface is kept (a retried ADD).
fn attach_tcx(dir: &Path, prog: BorrowedFd<'_>, host_if: &str, ifindex: u32, egress: bool) -> Result<()> {
    let pin = link_pin(dir, host_if, egress);
    if tcx_link_ifindex(&pin) == Some(ifindex) {
        return Ok(());
    }
    // A pin left by a crashed ADD for this veth name is stale.
    let _ = fs::remove_file(&pin);
    let side = if egress { "egress" } else { "ingress" };
    // EEXIST: the program is still attached by a link whose last reference
    // just went (its pin removed): the kernel releases links from a
    // workqueue, so it goes a moment later.
    let mut tries = 0;
    let link = loop {
        match tcx_link_create(prog, ifindex as i32, egress) {
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EEXIST as i32) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other,
        }
    }
    .with_context(|| format!("attach tcx {side} to {host_if} (ifindex {ifindex})"))?;
    let c = cpath(&pin)?;
    // SAFETY: valid link fd and NUL-terminated path.
    let ret = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), c.as_ptr()) };
    if ret < 0 {
        return Err(libbpf_err(ret)).with_context(|| format!("pin tcx link at {}", pin.display()));
    }
    Ok(())
}

impl Datapath {
    /// Attaches `from_pod` to the ingress and `to_pod` to the egress of the
    /// host veth `host_if`.
    pub fn attach(&self, host_if: &str, ifindex: u32, mode: AttachMode) -> Result<Attached> {
        let (from, to) = (self.prog.as_fd(), self.prog_to.as_fd());
        let use_tcx = match mode {
            AttachMode::Tcx => true,
            AttachMode::Tc => false,
            AttachMode::Auto => tcx_supported(from),
        };
        if use_tcx {
            let d = link_dir(&self.dir, host_if);
            fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
            attach_tcx(&self.dir, from, host_if, ifindex, false)?;
            attach_tcx(&self.dir, to, host_if, ifindex, true)?;
            Ok(Attached::Tcx)
        } else {
            // Replacing only ever touches our own handle and priority.
            attach_clsact(from, to, ifindex, true)
                .with_context(|| format!("attach tc (clsact) to {host_if} (ifindex {ifindex})"))?;
            Ok(Attached::Tc)
        }
    }

    /// Verifies that the pod's host veth (by ifindex: names are reused)
    /// runs this network's programs, in the mode its endpoint records.
    pub fn verify_attached(&self, host_if: &str, ifindex: u32, flags: u16) -> Result<()> {
        for (prog, egress) in [(self.prog.as_fd(), false), (self.prog_to.as_fd(), true)] {
            let side = if egress { "egress" } else { "ingress" };
            let want = libbpf_rs::Program::id_from_fd(prog).context("read pinned program id")?;
            let got = if flags & super::ENDPOINT_F_TCX != 0 {
                let pin = link_pin(&self.dir, host_if, egress);
                let link = libbpf_rs::Link::open(&pin)
                    .map_err(|_| anyhow::anyhow!("no TCX link pinned at {}", pin.display()))?;
                let info = link.info().context("read TCX link info")?;
                match info.info {
                    libbpf_rs::query::LinkTypeInfo::Tcx(tcx) if tcx.ifindex == ifindex => info.prog_id,
                    libbpf_rs::query::LinkTypeInfo::Tcx(tcx) => bail!(
                        "TCX link {} is attached to ifindex {}, not {host_if} (ifindex {ifindex})",
                        pin.display(),
                        tcx.ifindex
                    ),
                    _ => bail!("{} is not a live TCX link (its interface is gone)", pin.display()),
                }
            } else {
                clsact_prog_id(prog, ifindex, egress)
                    .ok_or_else(|| anyhow::anyhow!("no ebpfcni tc filter on {host_if} (ifindex {ifindex}) {side}"))?
            };
            if got != want {
                bail!("{host_if} (ifindex {ifindex}) {side} runs BPF program {got}, not the network's program {want}");
            }
        }
        Ok(())
    }
}

/// The interface a pinned TCX link is attached to, if it is a live one.
pub fn tcx_link_ifindex(pin: &Path) -> Option<u32> {
    if !pin.exists() {
        return None; // spares libbpf's warning about opening nothing
    }
    let link = libbpf_rs::Link::open(pin).ok()?;
    match link.info().ok()?.info {
        libbpf_rs::query::LinkTypeInfo::Tcx(tcx) => Some(tcx.ifindex),
        _ => None,
    }
}

fn tc_hook(prog: BorrowedFd<'_>, ifindex: u32, egress: bool) -> TcHook {
    let mut hook = TcHook::new(prog);
    hook.ifindex(ifindex as i32).handle(TC_HANDLE).priority(TC_PRIORITY).attach_point(if egress {
        TC_EGRESS
    } else {
        TC_INGRESS
    });
    hook
}

/// The program id of our clsact filter on `ifindex`, if there is one.
pub(super) fn clsact_prog_id(prog: BorrowedFd<'_>, ifindex: u32, egress: bool) -> Option<u32> {
    tc_hook(prog, ifindex, egress).query().ok()
}

fn attach_clsact(from: BorrowedFd<'_>, to: BorrowedFd<'_>, ifindex: u32, replace: bool) -> Result<()> {
    for (prog, egress) in [(from, false), (to, true)] {
        let mut hook = tc_hook(prog, ifindex, egress);
        hook.replace(replace);
        // Creates clsact when missing; an existing qdisc is reused as it
        // is. Once is enough: asking again makes the kernel log "exists".
        if !egress {
            hook.create().context("create clsact qdisc")?;
        }
        hook.attach().with_context(|| format!("add tc filter ({})", if egress { "egress" } else { "ingress" }))?;
    }
    Ok(())
}

pub(super) fn replace_clsact(from: BorrowedFd<'_>, to: BorrowedFd<'_>, ifindex: u32) -> Result<()> {
    attach_clsact(from, to, ifindex, true)
}

/// Removes the pod's TCX link pins (the kernel detaches a link with its
/// last reference). Missing pins are fine: DEL is idempotent. clsact
/// filters go away with the veth itself.
pub fn detach(dir: &Path, host_if: &str) -> Result<()> {
    unpin_links_in(&link_dir(dir, host_if))?;
    unpin_links_in(&retired_dir(dir, host_if))
}

/// Unpins the two links pinned in `d` (which detaches them unless their
/// device is gone already) and removes `d`.
fn unpin_links_in(d: &Path) -> Result<()> {
    for side in ["ingress", "egress"] {
        let pin = d.join(side);
        match fs::remove_file(&pin) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("unpin tcx link {}", pin.display()))
            }
            _ => {}
        }
    }
    match fs::remove_dir(d) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| format!("remove {}", d.display())),
        _ => Ok(()),
    }
}

/// `retired/<host veth>/`: the links of a pod DEL is done with, whose veth
/// is still being deleted. They stay attached meanwhile: a veth never
/// runs without its programs.
const RETIRED_DIR: &str = "retired";

fn retired_dir(dir: &Path, host_if: &str) -> PathBuf {
    dir.join(RETIRED_DIR).join(host_if)
}

/// Moves a pod's link pins from `links/` to `retired/` (one rename, no
/// syscall that waits for the kernel): for every reader of `links/` the
/// pod is gone, while its programs stay attached until `detach` after the
/// veth's deletion. The directory stays (empty with clsact) until then:
/// it marks the veth as being deleted (`is_retired`).
pub fn retire_links(dir: &Path, host_if: &str) -> Result<()> {
    let from = link_dir(dir, host_if);
    let to = retired_dir(dir, host_if);
    // Left by a teardown that died: that veth is gone or GC's to delete.
    unpin_links_in(&to)?;
    fs::create_dir_all(dir.join(RETIRED_DIR)).with_context(|| format!("create {}", dir.join(RETIRED_DIR).display()))?;
    match fs::rename(&from, &to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(&to).with_context(|| format!("create {}", to.display()))
        }
        other => other.with_context(|| format!("move {} to {}", from.display(), to.display())),
    }
}

/// Unpins the retired links of `host_if` (its veth gone): never the
/// `links/` of a pod that took its name since.
pub fn drop_retired(dir: &Path, host_if: &str) -> Result<()> {
    unpin_links_in(&retired_dir(dir, host_if))
}

/// Whether `host_if` is a veth a DEL has finished with, being deleted.
pub fn is_retired(dir: &Path, host_if: &str) -> bool {
    retired_dir(dir, host_if).exists()
}

/// The host veths whose links are pinned, in `links/` or `retired/`.
pub fn pinned_link_owners(dir: &Path) -> Vec<String> {
    [LINKS_DIR, RETIRED_DIR]
        .iter()
        .flat_map(|d| fs::read_dir(dir.join(d)).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// `devices/<device>/ingress`: the TCX link of `from_peer` on a node
/// device the agent owns (the VXLAN device, the underlay). Apart from the
/// pods' `links/`, which a load moves to its `from_pod`/`to_pod`: the agent
/// moves these itself, on its next reconcile.
const DEVICES_DIR: &str = "devices";

fn device_pin(dir: &Path, dev: &str) -> PathBuf {
    dir.join(DEVICES_DIR).join(dev).join("ingress")
}

impl Datapath {
    /// Runs `from_peer` on the ingress of `dev` (TCX where the kernel has
    /// it, our clsact filter otherwise), unless it already does; an older
    /// build's program there is replaced atomically. Returns whether it
    /// changed anything.
    pub fn attach_peer_ingress(&self, dev: &str, ifindex: u32) -> Result<bool> {
        let prog = self.peer_prog()?;
        let want = libbpf_rs::Program::id_from_fd(prog.as_fd()).context("read from_peer program id")?;
        if !tcx_supported(prog.as_fd()) {
            let mut hook = tc_hook(prog.as_fd(), ifindex, false);
            if hook.query().ok() == Some(want) {
                return Ok(false);
            }
            hook.create().with_context(|| format!("create clsact qdisc on {dev}"))?;
            hook.replace(true);
            hook.attach().with_context(|| format!("attach from_peer to the ingress of {dev}"))?;
            return Ok(true);
        }
        let pin = device_pin(&self.dir, dev);
        if tcx_link_ifindex(&pin) == Some(ifindex) {
            let link = libbpf_rs::Link::open(&pin).context("open from_peer link")?;
            if link.info().context("read from_peer link info")?.prog_id == want {
                return Ok(false);
            }
            // SAFETY: valid link and program fds; no options.
            let ret =
                unsafe { libbpf_sys::bpf_link_update(link.as_fd().as_raw_fd(), prog.as_raw_fd(), std::ptr::null()) };
            if ret < 0 {
                return Err(libbpf_err(ret))
                    .with_context(|| format!("move {} to this build's from_peer", pin.display()));
            }
            return Ok(true);
        }
        let _ = fs::remove_file(&pin);
        let d = pin.parent().unwrap_or(&self.dir);
        fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        let link = tcx_link_create(prog.as_fd(), ifindex as i32, false)
            .with_context(|| format!("attach tcx ingress to {dev} (ifindex {ifindex})"))?;
        let c = cpath(&pin)?;
        // SAFETY: valid link fd and NUL-terminated path.
        let ret = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), c.as_ptr()) };
        if ret < 0 {
            return Err(libbpf_err(ret)).with_context(|| format!("pin tcx link at {}", pin.display()));
        }
        Ok(true)
    }

    /// Takes `from_peer` off the ingress of `dev` (gone or not); returns
    /// whether it was there.
    pub fn detach_peer_ingress(&self, dev: &str, ifindex: Option<u32>) -> Result<bool> {
        let mut changed = false;
        let pin = device_pin(&self.dir, dev);
        if pin.exists() {
            fs::remove_file(&pin).with_context(|| format!("unpin {}", pin.display()))?;
            let _ = fs::remove_dir(pin.parent().unwrap_or(&self.dir));
            changed = true;
        }
        if let Some(ifindex) = ifindex {
            let prog = self.peer_prog()?;
            if tcx_supported(prog.as_fd()) {
                return Ok(changed);
            }
            let mut hook = tc_hook(prog.as_fd(), ifindex, false);
            if hook.query().is_ok() {
                hook.detach().with_context(|| format!("detach from_peer from {dev}"))?;
                changed = true;
            }
        }
        Ok(changed)
    }
}
