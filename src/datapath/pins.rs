//! Loading the program once per node and sharing it through bpffs pins:
//!
//! ```text
//! <bpfPinPath>/<network>/endpoints, pods, stats, ipcache, iprules,
//!                         identity_flags, settings, conntrack, events   maps
//! <bpfPinPath>/<network>/from_pod_<BPF_ID>, to_pod_<BPF_ID>   programs
//! <bpfPinPath>/<network>/links/<host veth>/ingress, egress    TCX links
//! ```
//!
//! Every CNI invocation is a short-lived process: the first one loads and
//! pins, later ones open the pins. A binary carrying a different program
//! loads its own, moves every existing attachment to it atomically, then
//! removes the old program's pin.

use std::fs::{self, File};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, Program};
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::statfs;

use super::maps::{Maps, MAP_NAMES};
use super::skel::DatapathSkelBuilder;
use super::{attach, BPF_ID};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const PROG_PREFIX: &str = "from_pod_";
const PROG_TO_PREFIX: &str = "to_pod_";
/// `to_tunnel`, for the egress of the node's VXLAN device (the agent's).
const PROG_TUNNEL_PREFIX: &str = "to_tunnel_";
pub(super) const LINKS_DIR: &str = "links";

pub fn network_dir(pin_root: &Path, network: &str) -> PathBuf {
    pin_root.join(network)
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).map(|s| s.filesystem_type().0 == BPF_FS_MAGIC).unwrap_or(false)
}

/// Makes sure `pin_root` lies on a bpf filesystem. When it sits under
/// /sys/fs/bpf and nothing is mounted there (a node without systemd's
/// mount, a fresh VM), mounts bpffs there, as Cilium's agent does.
pub fn ensure_bpffs(pin_root: &Path) -> Result<()> {
    let existing = pin_root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    let default = Path::new(DEFAULT_BPFFS);
    if !pin_root.starts_with(default) || !default.is_dir() {
        bail!(
            "bpfPinPath {} is not on a bpf filesystem (mount one: mount -t bpf bpf {})",
            pin_root.display(),
            existing.display()
        );
    }
    // Two plugins racing here must not stack two mounts: the second would
    // hide the first one's pins.
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/ebpfcni-bpffs.lock")
        .context("open /run/ebpfcni-bpffs.lock")?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| e).context("lock bpffs mount")?;
    if !is_bpffs(default) {
        mount(Some("bpf"), default, Some("bpf"), MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mount bpffs on {DEFAULT_BPFFS}"))?;
    }
    Ok(())
}

/// The programs and maps of one network, pinned and ready to attach.
pub struct Datapath {
    pub dir: PathBuf,
    /// `from_pod`, for the host veth's ingress.
    pub prog: OwnedFd,
    /// `to_pod`, for the host veth's egress.
    pub prog_to: OwnedFd,
    pub maps: Maps,
}

fn open_prog(dir: &Path, prefix: &str) -> Result<OwnedFd> {
    let pin = dir.join(format!("{prefix}{BPF_ID}"));
    Program::fd_from_pinned_path(&pin).with_context(|| format!("open pinned program {}", pin.display()))
}

/// Holds a network's pin directory lock: loading, and every change of
/// the policy set, happen under it.
pub struct DirLock(#[allow(dead_code)] Flock<File>);

pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    let dir_file = File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    Flock::lock(dir_file, FlockArg::LockExclusive)
        .map(DirLock)
        .map_err(|(_, e)| e)
        .with_context(|| format!("lock {}", dir.display()))
}

impl Datapath {
    /// Opens the network's pinned program and maps, loading and pinning
    /// them first when this binary's program is not there yet.
    pub fn load(pin_root: &Path, network: &str) -> Result<Self> {
        ensure_bpffs(pin_root)?;
        let dir = network_dir(pin_root, network);
        fs::create_dir_all(dir.join(LINKS_DIR)).with_context(|| format!("create pin directory {}", dir.display()))?;
        let _lock = lock_dir(&dir)?;
        if [PROG_PREFIX, PROG_TO_PREFIX, PROG_TUNNEL_PREFIX]
            .iter()
            .any(|prefix| !dir.join(format!("{prefix}{BPF_ID}")).exists())
        {
            load_and_pin(&dir)?;
        }
        Ok(Datapath {
            prog: open_prog(&dir, PROG_PREFIX)?,
            prog_to: open_prog(&dir, PROG_TO_PREFIX)?,
            maps: Maps::open(&dir)?,
            dir,
        })
    }
}

impl Datapath {
    /// Opens what is pinned without loading anything; None when this
    /// binary's program is not pinned for the network.
    pub fn open_pinned(pin_root: &Path, network: &str) -> Result<Option<Self>> {
        let dir = network_dir(pin_root, network);
        if !dir.join(format!("{PROG_PREFIX}{BPF_ID}")).exists() {
            return Ok(None);
        }
        Ok(Some(Datapath {
            prog: open_prog(&dir, PROG_PREFIX)?,
            prog_to: open_prog(&dir, PROG_TO_PREFIX)?,
            maps: Maps::open(&dir)?,
            dir,
        }))
    }
}

impl Datapath {
    /// `to_tunnel`, pinned beside the pod programs.
    pub fn tunnel_prog(&self) -> Result<OwnedFd> {
        open_prog(&self.dir, PROG_TUNNEL_PREFIX)
    }
}

/// The program pins of a network directory: (name, is this binary's).
pub fn pinned_programs(dir: &Path) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| [PROG_PREFIX, PROG_TO_PREFIX, PROG_TUNNEL_PREFIX].iter().any(|p| n.starts_with(p)))
        .map(|n| {
            let ours = n.ends_with(BPF_ID);
            (n, ours)
        })
        .collect();
    out.sort();
    out
}

/// Whether this binary's program could be loaded now (for STATUS): loads
/// it with private maps, pins nothing, and drops it.
pub fn probe_load() -> Result<()> {
    let mut object = MaybeUninit::uninit();
    let open = DatapathSkelBuilder::default().open(&mut object).context("open BPF skeleton")?;
    open.load().context("load BPF program (the verifier refused it)")?;
    Ok(())
}

/// Whether bpffs is (or, under /sys/fs/bpf, can be) where pins go.
pub fn bpffs_available(pin_root: &Path) -> bool {
    let existing = pin_root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    is_bpffs(existing) || (pin_root.starts_with(DEFAULT_BPFFS) && Path::new(DEFAULT_BPFFS).is_dir())
}

fn load_and_pin(dir: &Path) -> Result<()> {
    remove_temporaries(dir);
    let mut object = MaybeUninit::uninit();
    let mut open = DatapathSkelBuilder::default().open(&mut object).context("open BPF skeleton")?;
    // libbpf reuses a compatible map already pinned there, else pins the
    // new one after load: pods keep their entries across upgrades.
    for mut map in open.open_object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if MAP_NAMES.contains(&name.as_str()) {
            map.set_pin_path(dir.join(&name)).with_context(|| format!("set pin path of map {name}"))?;
        }
    }
    let mut skel = open.load().with_context(|| {
        let missing = super::missing_required(&super::probe_features());
        if missing.is_empty() {
            format!(
                "load BPF program into the kernel (maps pinned in {} may belong to an incompatible version)",
                dir.display()
            )
        } else {
            format!("load BPF program: this kernel lacks {}", missing.join(", "))
        }
    })?;
    for (prefix, prog) in [
        (PROG_PREFIX, &mut skel.progs.from_pod),
        (PROG_TO_PREFIX, &mut skel.progs.to_pod),
        (PROG_TUNNEL_PREFIX, &mut skel.progs.to_tunnel),
    ] {
        // bpffs refuses '.' in names: no dot-file temporaries here.
        let tmp = dir.join(format!("tmp_{prefix}{BPF_ID}_{}", std::process::id()));
        let pin = dir.join(format!("{prefix}{BPF_ID}"));
        let _ = fs::remove_file(&pin);
        prog.pin(&tmp).with_context(|| format!("pin program at {}", tmp.display()))?;
        fs::rename(&tmp, &pin).with_context(|| format!("pin program at {}", pin.display()))?;
    }

    let (from, to) = (&skel.progs.from_pod, &skel.progs.to_pod);
    move_attachments(dir, from.as_fd(), to.as_fd(), |link, egress| link.update_prog(if egress { to } else { from }))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let prefixes = [PROG_PREFIX, PROG_TO_PREFIX, PROG_TUNNEL_PREFIX];
        let ours = prefixes.iter().any(|p| name == format!("{p}{BPF_ID}"));
        if prefixes.iter().any(|p| name.starts_with(p)) && !ours {
            fs::remove_file(&path).with_context(|| format!("unpin old program {}", path.display()))?;
        }
    }
    Ok(())
}

/// Pins named tmp_* are left only by a load killed mid-way; we hold the
/// directory's lock, so none is in use.
fn remove_temporaries(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with("tmp_") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Moves every pod attached to an older program onto the new one: TCX
/// links are updated in place, clsact filters replaced (both atomic).
fn move_attachments(
    dir: &Path,
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    update: impl Fn(&mut Link, bool) -> libbpf_rs::Result<()>,
) -> Result<()> {
    for pod in fs::read_dir(dir.join(LINKS_DIR))?.flatten() {
        for (name, egress) in [("ingress", false), ("egress", true)] {
            let path = pod.path().join(name);
            let Ok(mut link) = Link::open(&path) else { continue };
            if let Err(e) = update(&mut link, egress) {
                // A link whose veth is gone cannot be updated; DEL removes it.
                eprintln!("ebpfcni: could not move {} to the new program: {e}", path.display());
            }
        }
    }
    let maps = Maps::open(dir)?;
    for ep in maps.endpoints()? {
        if ep.flags & super::ENDPOINT_F_TC != 0 {
            if let Err(e) = attach::replace_clsact(from, to, ep.ifindex) {
                eprintln!("ebpfcni: could not move ifindex {} to the new program: {e}", ep.ifindex);
            }
        }
    }
    Ok(())
}
