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
//! removes the old program's pin. A pinned map whose layout (see
//! layout.rs) is this build's is shared; one of another layout is replaced
//! by a new map, filled before any pod's program is switched (copied when
//! its entries are the same, else rebuilt by the caller: see `fresh`); a
//! missing one is created. The old map goes with the old program.

use std::fs::{self, File};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, Program};
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::statfs;

use super::layout;
use super::maps::{Maps, MAP_NAMES};
use super::sizes::MapSizes;
use super::skel::DatapathSkelBuilder;
use super::{attach, BPF_ID};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const PROG_PREFIX: &str = "from_pod_";
const PROG_TO_PREFIX: &str = "to_pod_";
/// `to_tunnel`, for the egress of the node's VXLAN device (the agent's).
const PROG_TUNNEL_PREFIX: &str = "to_tunnel_";
/// `from_peer`, for the ingress of the VXLAN device or the underlay (the
/// agent's: the fast path's receiving side).
const PROG_PEER_PREFIX: &str = "from_peer_";
/// Every program this build pins, by name prefix.
const PROG_PREFIXES: [&str; 4] = [PROG_PREFIX, PROG_TO_PREFIX, PROG_TUNNEL_PREFIX, PROG_PEER_PREFIX];
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
    /// Maps that started empty in this call (created, or replaced by one of
    /// this build's layout whose entries could not be copied): derived
    /// state the caller rebuilds from the lease store and the node.
    pub fresh: Vec<String>,
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
    /// them first when this binary's program or any of its maps is not
    /// there. `refill(maps, fresh)` then rebuilds the derived state of the
    /// maps that start empty, under the pin directory's lock (it must not
    /// take it again) and before any pod is switched to the program. With
    /// `Sizing::Config`, maps of other sizes are a layout change like any
    /// other: the program is loaded again with maps of the config's
    /// sizes, filled from the old ones.
    pub fn load_with(
        pin_root: &Path,
        network: &str,
        sizing: Sizing<'_>,
        refill: &dyn Fn(&Maps, &[String]) -> Result<()>,
    ) -> Result<Self> {
        ensure_bpffs(pin_root)?;
        let dir = network_dir(pin_root, network);
        fs::create_dir_all(dir.join(LINKS_DIR)).with_context(|| format!("create pin directory {}", dir.display()))?;
        let _lock = lock_dir(&dir)?;
        let complete = PROG_PREFIXES.iter().all(|p| dir.join(format!("{p}{BPF_ID}")).exists())
            && MAP_NAMES.iter().all(|m| dir.join(m).exists())
            && match sizing {
                Sizing::Config(sizes) => sized_as(&dir, sizes),
                Sizing::Pinned(_) => true,
            };
        let fresh = if complete { Vec::new() } else { load_and_pin(&dir, sizing, refill)? };
        Ok(Datapath {
            prog: open_prog(&dir, PROG_PREFIX)?,
            prog_to: open_prog(&dir, PROG_TO_PREFIX)?,
            maps: Maps::open(&dir)?,
            dir,
            fresh,
        })
    }
}

impl Datapath {
    /// Opens what is pinned without loading anything; None when this
    /// binary's program is not pinned for the network.
    pub fn open_pinned(pin_root: &Path, network: &str) -> Result<Option<Self>> {
        let dir = network_dir(pin_root, network);
        if !dir.join(format!("{PROG_PREFIX}{BPF_ID}")).exists() || !MAP_NAMES.iter().all(|m| dir.join(m).exists()) {
            return Ok(None);
        }
        Ok(Some(Datapath {
            prog: open_prog(&dir, PROG_PREFIX)?,
            prog_to: open_prog(&dir, PROG_TO_PREFIX)?,
            maps: Maps::open(&dir)?,
            dir,
            fresh: Vec::new(),
        }))
    }
}

impl Datapath {
    /// `to_tunnel`, pinned beside the pod programs.
    pub fn tunnel_prog(&self) -> Result<OwnedFd> {
        open_prog(&self.dir, PROG_TUNNEL_PREFIX)
    }

    /// `from_peer`, pinned beside the pod programs.
    pub fn peer_prog(&self) -> Result<OwnedFd> {
        open_prog(&self.dir, PROG_PEER_PREFIX)
    }
}

/// The program pins of a network directory: (name, is this binary's).
pub fn pinned_programs(dir: &Path) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| PROG_PREFIXES.iter().any(|p| n.starts_with(p)))
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
pub fn probe_load(sizes: &MapSizes) -> Result<()> {
    let mut object = MaybeUninit::uninit();
    let mut open = DatapathSkelBuilder::default().open(&mut object).context("open BPF skeleton")?;
    sizes.apply(open.open_object_mut())?;
    open.load().context("load BPF program (the verifier refused it)")?;
    Ok(())
}

/// Whether bpffs is (or, under /sys/fs/bpf, can be) where pins go.
pub fn bpffs_available(pin_root: &Path) -> bool {
    let existing = pin_root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    is_bpffs(existing) || (pin_root.starts_with(DEFAULT_BPFFS) && Path::new(DEFAULT_BPFFS).is_dir())
}

/// Which sizes a load gives the maps.
#[derive(Clone, Copy)]
pub enum Sizing<'a> {
    /// The config's: maps of other sizes are replaced (ADD, repair).
    Config(&'a MapSizes),
    /// The pinned maps' own, the config's for a missing one: DEL, CHECK
    /// and GC may come with the config a pod was added with (runtimes
    /// cache it), older than the one in force.
    Pinned(&'a MapSizes),
}

/// A size the config gives a map below the entries it holds: applying it
/// would drop some (a pod's entries among them).
#[derive(Debug)]
pub struct TooSmall {
    pub map: String,
    pub entries: usize,
    pub max: u32,
}

impl std::fmt::Display for TooSmall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let setting = MapSizes::setting_of(&self.map).unwrap_or("its size");
        write!(
            f,
            "map {} holds {} entries, more than the {} the config's {setting} gives it: raise {setting}, or remove \
             what it holds first",
            self.map, self.entries, self.max
        )
    }
}

impl std::error::Error for TooSmall {}

/// Whether every sized map pinned in `dir` has the size `sizes` gives it
/// (the rest of its layout is this build's when its program is pinned).
fn sized_as(dir: &Path, sizes: &MapSizes) -> bool {
    MAP_NAMES.iter().all(|name| {
        let Some(want) = sizes.max_entries(name) else { return true };
        MapHandle::from_pinned_path(dir.join(name)).and_then(|m| m.info()).is_ok_and(|i| i.info.max_entries == want)
    })
}

/// Maps of counters, whose entries keep the fields they share with a new
/// layout of their value (a field added starts at zero, as a counter that
/// has not counted yet). Never derived state: a new field there must be
/// rebuilt from the records.
const COUNTERS: &[&str] = &["stats", "events_lost"];

/// A pinned map of another layout and what replaces it.
struct Replaced {
    name: String,
    old: MapHandle,
    old_layout: String,
    new_layout: String,
}

/// Loads this build's program, shares or replaces the pinned maps, moves
/// every pod onto the program, and returns the maps that started empty.
fn load_and_pin(
    dir: &Path,
    sizing: Sizing<'_>,
    refill: &dyn Fn(&Maps, &[String]) -> Result<()>,
) -> Result<Vec<String>> {
    remove_temporaries(dir);
    let mut object = MaybeUninit::uninit();
    let mut open = DatapathSkelBuilder::default().open(&mut object).context("open BPF skeleton")?;
    let (Sizing::Config(sizes) | Sizing::Pinned(sizes)) = sizing;
    sizes.apply(open.open_object_mut())?;
    for mut map in open.open_object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        let Ok(old) = MapHandle::from_pinned_path(dir.join(&name)) else { continue };
        let Some(want) = sizes.max_entries(&name) else { continue };
        let max = old.info().with_context(|| format!("map {name} info"))?.info.max_entries;
        match sizing {
            Sizing::Pinned(_) => map.set_max_entries(max).with_context(|| format!("keep the size of map {name}"))?,
            Sizing::Config(_) if want < max => {
                let entries = old.keys().count();
                if entries > want as usize {
                    return Err(TooSmall { map: name, entries, max: want }.into());
                }
            }
            Sizing::Config(_) => {}
        }
    }
    let layouts: Vec<(String, String)> = open
        .open_object()
        .maps()
        .map(|m| (m.name().to_string_lossy().into_owned(), layout::of_open_map(open.open_object(), &m)))
        .filter(|(name, _)| MAP_NAMES.contains(&name.as_str()))
        .collect();
    let mut replaced = Vec::new();
    let mut fresh = Vec::new();
    for (name, new_layout) in layouts {
        let pin = dir.join(&name);
        let Ok(old) = MapHandle::from_pinned_path(&pin) else {
            fresh.push(name);
            continue;
        };
        let old_layout = layout::of_map(&old).with_context(|| format!("read the layout of {}", pin.display()))?;
        if old_layout != new_layout {
            replaced.push(Replaced { name, old, old_layout, new_layout });
        }
    }
    // Which pods are on clsact (their filters are not pinned: the endpoints
    // map says which), read before any map is replaced. An endpoints map
    // of another layout is not read: every recorded pod is attached again
    // after such a load (see `fresh`).
    let tc_pods = if replaced.iter().any(|r| r.name == "endpoints") { Vec::new() } else { tc_attached(dir) };
    // libbpf reuses a pinned map of the same layout and pins a missing one
    // after load; a replaced one is pinned below, once loaded.
    for mut map in open.open_object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if MAP_NAMES.contains(&name.as_str()) && !replaced.iter().any(|r| r.name == name) {
            map.set_pin_path(dir.join(&name)).with_context(|| format!("set pin path of map {name}"))?;
        }
    }
    let mut skel = open.load().with_context(|| {
        let missing = super::missing_required(&super::probe_features());
        if missing.is_empty() {
            format!("load BPF program into the kernel (pins in {})", dir.display())
        } else {
            format!("load BPF program: this kernel lacks {}", missing.join(", "))
        }
    })?;
    for map in skel.object().maps() {
        let name = map.name().to_string_lossy().into_owned();
        let Some(r) = replaced.iter().find(|r| r.name == name) else { continue };
        let mut map = MapHandle::try_from(&map).with_context(|| format!("map {name}"))?;
        // The old map stays in use by the old program until the switch.
        let tmp = dir.join(format!("tmp_{name}_{}", std::process::id()));
        map.pin(&tmp).with_context(|| format!("pin map at {}", tmp.display()))?;
        fs::rename(&tmp, dir.join(&name)).with_context(|| format!("replace map {name}"))?;
        let convert = if layout::same_entries(&r.old_layout, &r.new_layout) {
            Some(None)
        } else if COUNTERS.contains(&name.as_str()) {
            layout::conversion(&r.old_layout, &r.new_layout).map(Some)
        } else {
            None
        };
        if let Some(fields) = convert {
            let new = MapHandle::from_pinned_path(dir.join(&name))?;
            let lost = copy_entries(&r.old, &new, fields.as_deref());
            if lost > 0 {
                eprintln!("ebpfcni: map {name}: {lost} entries did not fit its new size");
            }
        } else {
            eprintln!("ebpfcni: map {name} changed layout: rebuilt ({} -> {})", r.old_layout, r.new_layout);
            fresh.push(name);
        }
    }
    // Derived state first, so the switch finds every pod known.
    refill(&Maps::open(dir)?, &fresh)?;
    for (prefix, prog) in [
        (PROG_PREFIX, &mut skel.progs.from_pod),
        (PROG_TO_PREFIX, &mut skel.progs.to_pod),
        (PROG_TUNNEL_PREFIX, &mut skel.progs.to_tunnel),
        (PROG_PEER_PREFIX, &mut skel.progs.from_peer),
    ] {
        // bpffs refuses '.' in names: no dot-file temporaries here.
        let tmp = dir.join(format!("tmp_{prefix}{BPF_ID}_{}", std::process::id()));
        let pin = dir.join(format!("{prefix}{BPF_ID}"));
        prog.pin(&tmp).with_context(|| format!("pin program at {}", tmp.display()))?;
        fs::rename(&tmp, &pin).with_context(|| format!("pin program at {}", pin.display()))?;
    }

    let (from, to) = (&skel.progs.from_pod, &skel.progs.to_pod);
    move_attachments(dir, &tc_pods, from.as_fd(), to.as_fd(), |link, egress| {
        link.update_prog(if egress { to } else { from })
    });
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let ours = PROG_PREFIXES.iter().any(|p| name == format!("{p}{BPF_ID}"));
        if PROG_PREFIXES.iter().any(|p| name.starts_with(p)) && !ours {
            fs::remove_file(&path).with_context(|| format!("unpin old program {}", path.display()))?;
        }
    }
    Ok(fresh)
}

/// Copies every entry of `old` into `new` (same key; the same value, or
/// the value's `fields` as layout::conversion gives them); returns how
/// many did not fit.
fn copy_entries(old: &MapHandle, new: &MapHandle, fields: Option<&[(usize, usize, usize)]>) -> usize {
    let percpu = old.map_type().is_percpu();
    let size = new.value_size() as usize;
    let convert = |v: Vec<u8>| match fields {
        None => v,
        Some(fields) => {
            let mut out = vec![0u8; size];
            for &(from, to, len) in fields {
                if let (Some(src), Some(dst)) = (v.get(from..from + len), out.get_mut(to..to + len)) {
                    dst.copy_from_slice(src);
                }
            }
            out
        }
    };
    let keys: Vec<Vec<u8>> = old.keys().collect();
    let mut lost = 0;
    for key in keys {
        let copied = if percpu {
            match old.lookup_percpu(&key, MapFlags::ANY) {
                Ok(Some(values)) => {
                    let values: Vec<Vec<u8>> = values.into_iter().map(convert).collect();
                    new.update_percpu(&key, &values, MapFlags::ANY).is_ok()
                }
                _ => true, // gone meanwhile
            }
        } else {
            match old.lookup(&key, MapFlags::ANY) {
                Ok(Some(value)) => new.update(&key, &convert(value), MapFlags::ANY).is_ok(),
                _ => true,
            }
        };
        lost += usize::from(!copied);
    }
    lost
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

/// The host veths of this network's pods on clsact, from an endpoints
/// map of this build's layout.
fn tc_attached(dir: &Path) -> Vec<u32> {
    let Ok(map) = MapHandle::from_pinned_path(dir.join("endpoints")) else { return Vec::new() };
    match Maps::endpoints_of(map) {
        Ok(eps) => eps.into_iter().filter(|e| e.flags & super::ENDPOINT_F_TC != 0).map(|e| e.ifindex).collect(),
        Err(_) => Vec::new(),
    }
}

/// Moves every pod attached to an older program onto the new one: TCX
/// links are updated in place, clsact filters replaced (both atomic).
fn move_attachments(
    dir: &Path,
    tc_pods: &[u32],
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    update: impl Fn(&mut Link, bool) -> libbpf_rs::Result<()>,
) {
    for pod in fs::read_dir(dir.join(LINKS_DIR)).into_iter().flatten().flatten() {
        for (name, egress) in [("ingress", false), ("egress", true)] {
            let path = pod.path().join(name);
            let Ok(mut link) = Link::open(&path) else { continue };
            if let Err(e) = update(&mut link, egress) {
                // A link whose veth is gone cannot be updated; DEL removes it.
                eprintln!("ebpfcni: could not move {} to the new program: {e}", path.display());
            }
        }
    }
    let mut tc_pods = tc_pods.to_vec();
    tc_pods.sort();
    tc_pods.dedup();
    for ifindex in tc_pods {
        if let Err(e) = attach::replace_clsact(from, to, ifindex) {
            eprintln!("ebpfcni: could not move ifindex {ifindex} to the new program: {e}");
        }
    }
}
