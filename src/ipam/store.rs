//! Where leases live. `DiskStore` is host-local's on-disk layout under
//! `<dataDir>/<network>/` — one file per leased address holding
//! `containerID\r\nifname`, `last_reserved_ip.<n>`, and a `lock` file held
//! with flock for the store's whole lifetime — so operators' habits and
//! tools carry over. `MemStore` is the same contract in memory, for tests.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// Who holds an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

impl Lease {
    pub fn is_for(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }
}

pub trait LeaseStore {
    /// Records the lease; Ok(false) when the address is already taken.
    fn reserve(&mut self, lease: &Lease, rangeset: usize) -> Result<bool>;
    fn release(&mut self, ip: IpAddr) -> Result<()>;
    fn last_reserved(&self, rangeset: usize) -> Result<Option<IpAddr>>;
    fn is_taken(&self, ip: IpAddr) -> Result<bool>;
    /// Every readable lease; unreadable files are reported on stderr and
    /// skipped so that one damaged file never blocks the other pods.
    fn leases(&self) -> Result<Vec<Lease>>;
    /// Lease files that cannot be read (damaged, truncated): they belong to
    /// no attachment, so only GC may remove them.
    fn unreadable(&self) -> Result<Vec<IpAddr>> {
        Ok(Vec::new())
    }

    fn leases_of(&self, container_id: &str, ifname: &str) -> Result<Vec<Lease>> {
        Ok(self.leases()?.into_iter().filter(|l| l.is_for(container_id, ifname)).collect())
    }
}

const LINE_BREAK: &str = "\r\n";
/// The boot the store's leases were written in (/proc/sys/kernel/random/boot_id).
const BOOT_FILE: &str = "boot_id";
const LAST_RESERVED: &str = "last_reserved_ip.";
/// Leases being written; left only by a process killed mid-write.
const TMP_PREFIX: &str = ".lease-";

pub struct DiskStore {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl DiskStore {
    /// Opens (creating it if needed) `<data_dir>/<network>` and takes its
    /// lock, blocking until other invocations release it.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).with_context(|| format!("create lease directory {}", dir.display()))?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path)
            .with_context(|| format!("open {}", lock_path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("flock {}", lock_path.display()))?;
        Ok(DiskStore { dir, _lock: lock })
    }

    fn lease_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// `last_reserved_ip.<n>` through a private file created O_EXCL (which
    /// never follows a link) and renamed over it (which replaces a link
    /// rather than writing through it). A link planted at the private
    /// name is refused, not followed or removed.
    fn write_last_reserved(&self, rangeset: usize, ip: IpAddr) -> Result<()> {
        let last = self.dir.join(format!("{LAST_RESERVED}{rangeset}"));
        let tmp = self.dir.join(format!(".{LAST_RESERVED}{rangeset}.tmp"));
        replace_file(&tmp, &last, ip.to_string().as_bytes())
    }

    /// Releases the leases of pods that cannot exist any more: written
    /// in an earlier boot (every pod died with it) and whose attachment
    /// `alive` does not find on the node. A store never stamped with a
    /// boot (older builds, host-local) counts what was written before this
    /// boot began. One file read when nothing changed. Returns the
    /// released addresses.
    pub fn reclaim_earlier_boot(&mut self, alive: &dyn Fn(&Lease) -> bool) -> Result<Vec<Lease>> {
        let Some(now) = boot_id() else { return Ok(Vec::new()) };
        let stamp = self.dir.join(BOOT_FILE);
        let recorded = fs::read_to_string(&stamp).ok().map(|s| s.trim().to_string());
        if recorded.as_deref() == Some(now.as_str()) {
            return Ok(Vec::new());
        }
        let boot = boot_time();
        let mut released = Vec::new();
        for lease in self.leases()? {
            let before_boot = match (&recorded, boot) {
                (Some(_), _) => true,
                (None, Some(boot)) => fs::metadata(self.lease_path(lease.ip))
                    .and_then(|m| m.modified())
                    .is_ok_and(|written| written < boot),
                (None, None) => false,
            };
            if before_boot && !alive(&lease) {
                self.release(lease.ip)?;
                released.push(lease);
            }
        }
        replace_file(&self.dir.join(format!(".{BOOT_FILE}.tmp")), &stamp, now.as_bytes())?;
        self.sync_dir()?;
        Ok(released)
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync {}", self.dir.display()))
    }
}

impl LeaseStore for DiskStore {
    fn unreadable(&self) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).with_context(|| format!("list {}", self.dir.display()))? {
            let entry = entry?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) else { continue };
            let readable = fs::read_to_string(entry.path()).ok().and_then(|c| parse_lease(ip, &c)).is_some();
            if !readable {
                out.push(ip);
            }
        }
        Ok(out)
    }

    fn reserve(&mut self, lease: &Lease, rangeset: usize) -> Result<bool> {
        let path = self.lease_path(lease.ip);
        if path.exists() {
            return Ok(false);
        }
        // The lease is written and fsynced under a private name (created
        // O_EXCL), then linked to its address's name, which fails if the
        // address is taken: a lease file is never seen half written, even
        // when the process is killed in between.
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}-{}", std::process::id(), lease.ip));
        let _ = fs::remove_file(&tmp);
        let content = format!("{}{LINE_BREAK}{}", lease.container_id, lease.ifname);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&tmp)
            .and_then(|mut f| f.write_all(content.as_bytes()).and_then(|()| f.sync_all()));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("write lease {}", tmp.display()));
        }
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("create lease {}", path.display())),
        }
        if let Err(e) = self.write_last_reserved(rangeset, lease.ip) {
            // Leave nothing behind: the address is free again.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.sync_dir()?;
        Ok(true)
    }

    fn release(&mut self, ip: IpAddr) -> Result<()> {
        let path = self.lease_path(ip);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove lease {}", path.display())),
        }
    }

    fn last_reserved(&self, rangeset: usize) -> Result<Option<IpAddr>> {
        let path = self.dir.join(format!("{LAST_RESERVED}{rangeset}"));
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    fn is_taken(&self, ip: IpAddr) -> Result<bool> {
        Ok(self.lease_path(ip).exists())
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).with_context(|| format!("list {}", self.dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(TMP_PREFIX) {
                // Left by a process killed during a reservation: writers
                // hold the lock, and so do we, so none is in use.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue; // lock, last_reserved_ip.*
            };
            match fs::read_to_string(entry.path()) {
                Ok(content) => match parse_lease(ip, &content) {
                    Some(lease) => out.push(lease),
                    None => eprintln!(
                        "ebpfcni: skipping unreadable lease file {} ({:?})",
                        entry.path().display(),
                        content.chars().take(80).collect::<String>()
                    ),
                },
                Err(e) => eprintln!("ebpfcni: skipping lease file {}: {e}", entry.path().display()),
            }
        }
        out.sort_by_key(|l| super::cidr::to_u128(l.ip));
        Ok(out)
    }
}

/// Writes `path` through a private file created O_EXCL (which never
/// follows a link) and renamed over it (which replaces a link rather than
/// writing through it). A link planted at the private name is refused,
/// not followed or removed; a file left there by a killed writer goes.
pub(super) fn replace_file(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    match fs::symlink_metadata(tmp) {
        Ok(m) if !m.file_type().is_file() => bail!(
            "{} is not a regular file (a link planted in the state directory?): refusing to write through it",
            tmp.display()
        ),
        Ok(_) => fs::remove_file(tmp).with_context(|| format!("remove stale {}", tmp.display()))?,
        Err(_) => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o644)
        .open(tmp)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(tmp, path).with_context(|| format!("write {}", path.display()))
}

fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|s| !s.is_empty())
}

/// When this boot began, from /proc/stat's btime.
fn boot_time() -> Option<std::time::SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// `containerID\r\nifname`; older host-local files hold only the ID.
/// The leases of a network as they are on disk, read without taking the
/// lock and without creating anything: for the operator's views.
pub fn read_leases(data_dir: &Path, network: &str) -> Vec<Lease> {
    let mut out: Vec<Lease> = fs::read_dir(data_dir.join(network))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let ip = e.file_name().to_str()?.parse::<IpAddr>().ok()?;
            parse_lease(ip, &fs::read_to_string(e.path()).ok()?)
        })
        .collect();
    out.sort_by_key(|l| l.ip);
    out
}

fn parse_lease(ip: IpAddr, content: &str) -> Option<Lease> {
    let mut lines = content.lines().map(str::trim);
    let container_id = lines.next().filter(|s| !s.is_empty())?.to_string();
    let ifname = lines.next().unwrap_or("").to_string();
    Some(Lease { ip, container_id, ifname })
}

/// The lease store in memory, for unit tests of allocation logic.
#[cfg(test)]
#[derive(Default)]
pub struct MemStore {
    leases: std::collections::BTreeMap<IpAddr, Lease>,
    last: std::collections::BTreeMap<usize, IpAddr>,
}

#[cfg(test)]
impl LeaseStore for MemStore {
    fn reserve(&mut self, lease: &Lease, rangeset: usize) -> Result<bool> {
        if self.is_taken(lease.ip)? {
            return Ok(false);
        }
        self.leases.insert(lease.ip, lease.clone());
        self.last.insert(rangeset, lease.ip);
        Ok(true)
    }
    fn release(&mut self, ip: IpAddr) -> Result<()> {
        self.leases.remove(&ip);
        Ok(())
    }
    fn last_reserved(&self, rangeset: usize) -> Result<Option<IpAddr>> {
        Ok(self.last.get(&rangeset).copied())
    }
    fn is_taken(&self, ip: IpAddr) -> Result<bool> {
        Ok(self.leases.contains_key(&ip))
    }
    fn leases(&self) -> Result<Vec<Lease>> {
        Ok(self.leases.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: &str, id: &str) -> Lease {
        Lease { ip: ip.parse().unwrap(), container_id: id.into(), ifname: "eth0".into() }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ebpfcni-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn disk_layout_matches_host_local() {
        let root = tempdir("layout");
        {
            let mut store = DiskStore::open(&root, "net1").unwrap();
            assert!(store.reserve(&lease("10.0.0.2", "abc"), 0).unwrap());
            assert!(!store.reserve(&lease("10.0.0.2", "other"), 0).unwrap());
        }
        let dir = root.join("net1");
        assert_eq!(fs::read_to_string(dir.join("10.0.0.2")).unwrap(), "abc\r\neth0");
        assert_eq!(fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(), "10.0.0.2");
        assert!(dir.join("lock").exists());
        let store = DiskStore::open(&root, "net1").unwrap();
        assert_eq!(store.leases_of("abc", "eth0").unwrap(), vec![lease("10.0.0.2", "abc")]);
        assert_eq!(store.last_reserved(0).unwrap(), Some("10.0.0.2".parse().unwrap()));
        drop(store);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn damaged_and_old_lease_files_do_not_block_others() {
        let root = tempdir("damaged");
        let mut store = DiskStore::open(&root, "n").unwrap();
        store.reserve(&lease("10.0.0.3", "good"), 0).unwrap();
        fs::write(root.join("n/10.0.0.4"), "").unwrap();
        fs::write(root.join("n/10.0.0.5"), "onlyid").unwrap();
        let leases = store.leases().unwrap();
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[1].container_id, "onlyid");
        assert_eq!(leases[1].ifname, "");
        store.release("10.0.0.3".parse().unwrap()).unwrap();
        store.release("10.0.0.3".parse().unwrap()).unwrap(); // already gone is fine
        assert!(!root.join("n/10.0.0.3").exists());
        drop(store);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn planted_links_are_never_written_through() {
        let root = tempdir("in8-link");
        let victim = root.join("victim");
        fs::create_dir_all(root.join("n")).unwrap();
        fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, root.join("n/.last_reserved_ip.0.tmp")).unwrap();
        let mut store = DiskStore::open(&root, "n").unwrap();
        let err = store.reserve(&lease("10.0.0.2", "abc"), 0).unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(!store.is_taken("10.0.0.2".parse().unwrap()).unwrap(), "the lease was left behind");
        drop(store);
        fs::remove_file(root.join("n/lock")).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("n/lock")).unwrap();
        assert!(DiskStore::open(&root, "n").is_err(), "the lock file is opened through a link");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn lock_excludes_a_second_opener() {
        let root = tempdir("lock");
        let store = DiskStore::open(&root, "n").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let root2 = root.clone();
        let t = std::thread::spawn(move || {
            let _s = DiskStore::open(&root2, "n").unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err());
        drop(store);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        fs::remove_dir_all(&root).unwrap();
    }
}
