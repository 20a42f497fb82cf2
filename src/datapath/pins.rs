//! Loading the program once per node and sharing it through bpffs pins:
//!
//! ```text
//! <bpfPinPath>/<network>/endpoints, stats, iprules   maps
//! <bpfPinPath>/<network>/from_pod_<BPF_ID>           the program
//! <bpfPinPath>/<network>/links/<host veth>           TCX links (one per pod)
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

use super::maps::Maps;
use super::skel::DatapathSkelBuilder;
use super::{attach, BPF_ID};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const PROG_PREFIX: &str = "from_pod_";
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

/// The program and maps of one network, pinned and ready to attach.
pub struct Datapath {
    pub dir: PathBuf,
    pub prog: OwnedFd,
    pub maps: Maps,
}

impl Datapath {
    /// Opens the network's pinned program and maps, loading and pinning
    /// them first when this binary's program is not there yet.
    pub fn load(pin_root: &Path, network: &str) -> Result<Self> {
        ensure_bpffs(pin_root)?;
        let dir = network_dir(pin_root, network);
        fs::create_dir_all(dir.join(LINKS_DIR)).with_context(|| format!("create pin directory {}", dir.display()))?;
        let dir_file = File::open(&dir).with_context(|| format!("open {}", dir.display()))?;
        let _lock = Flock::lock(dir_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("lock {}", dir.display()))?;

        let prog_pin = dir.join(format!("{PROG_PREFIX}{BPF_ID}"));
        if !prog_pin.exists() {
            load_and_pin(&dir, &prog_pin)?;
        }
        remove_temporaries(&dir);
        let prog = Program::fd_from_pinned_path(&prog_pin)
            .with_context(|| format!("open pinned program {}", prog_pin.display()))?;
        let maps = Maps::open(&dir)?;
        Ok(Datapath { dir, prog, maps })
    }
}

impl Datapath {
    /// Opens what is pinned without loading anything; None when this
    /// binary's program is not pinned for the network.
    pub fn open_pinned(pin_root: &Path, network: &str) -> Result<Option<Self>> {
        let dir = network_dir(pin_root, network);
        let prog_pin = dir.join(format!("{PROG_PREFIX}{BPF_ID}"));
        if !prog_pin.exists() {
            return Ok(None);
        }
        let prog = Program::fd_from_pinned_path(&prog_pin)
            .with_context(|| format!("open pinned program {}", prog_pin.display()))?;
        let maps = Maps::open(&dir)?;
        Ok(Some(Datapath { dir, prog, maps }))
    }
}

/// Whether this binary's program could be loaded now (for STATUS): loads
/// it with private maps, pins nothing, and drops it.
pub fn probe_load() -> Result<()> {
    let mut object = MaybeUninit::uninit();
    let open = DatapathSkelBuilder::default().open(&mut object).context("open BPF skeleton")?;
    open.load().context("load BPF program")?;
    Ok(())
}

/// Whether bpffs is (or, under /sys/fs/bpf, can be) where pins go.
pub fn bpffs_available(pin_root: &Path) -> bool {
    let existing = pin_root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    is_bpffs(existing) || (pin_root.starts_with(DEFAULT_BPFFS) && Path::new(DEFAULT_BPFFS).is_dir())
}

fn load_and_pin(dir: &Path, prog_pin: &Path) -> Result<()> {
    let mut object = MaybeUninit::uninit();
    let mut open = DatapathSkelBuilder::default().open(&mut object).context("open BPF skeleton")?;
    // libbpf reuses a compatible map already pinned there, else pins the
    // new one after load: pods keep their entries across upgrades.
    for (name, map) in
        [("endpoints", &mut open.maps.endpoints), ("stats", &mut open.maps.stats), ("iprules", &mut open.maps.iprules)]
    {
        map.set_pin_path(dir.join(name)).with_context(|| format!("set pin path of map {name}"))?;
    }
    let mut skel = open.load().with_context(|| {
        format!(
            "load BPF program into the kernel (maps pinned in {} may belong to an incompatible version)",
            dir.display()
        )
    })?;
    // bpffs refuses '.' in names: no dot-file temporaries here.
    let tmp = dir.join(format!("tmp_{PROG_PREFIX}{BPF_ID}_{}", std::process::id()));
    skel.progs.from_pod.pin(&tmp).with_context(|| format!("pin program at {}", tmp.display()))?;
    fs::rename(&tmp, prog_pin).with_context(|| format!("pin program at {}", prog_pin.display()))?;

    let prog = &skel.progs.from_pod;
    move_attachments(dir, prog.as_fd(), |link| link.update_prog(prog))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.starts_with(PROG_PREFIX) && path != prog_pin {
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
    prog: std::os::fd::BorrowedFd<'_>,
    update: impl Fn(&mut Link) -> libbpf_rs::Result<()>,
) -> Result<()> {
    for entry in fs::read_dir(dir.join(LINKS_DIR))? {
        let path = entry?.path();
        let mut link = Link::open(&path).with_context(|| format!("open link {}", path.display()))?;
        if let Err(e) = update(&mut link) {
            // A link whose veth is gone cannot be updated; DEL removes it.
            eprintln!("ebpfcni: could not move {} to the new program: {e}", path.display());
        }
    }
    let maps = Maps::open(dir)?;
    for ep in maps.endpoints()? {
        if ep.flags & super::ENDPOINT_F_TC != 0 {
            if let Err(e) = attach::replace_clsact(prog, ep.ifindex) {
                eprintln!("ebpfcni: could not move ifindex {} to the new program: {e}", ep.ifindex);
            }
        }
    }
    Ok(())
}
