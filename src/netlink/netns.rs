//! A pod's network namespace, opened by path (`CNI_NETNS`) and entered
//! only by short-lived helper threads, so the plugin's own thread never
//! changes namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::fstatfs;

/// `NSFS_MAGIC` from linux/magic.h: the filesystem of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

pub struct Netns {
    file: File,
    path: PathBuf,
}

/// The namespace path names nothing (the pod is gone).
#[derive(Debug)]
pub struct NetnsMissing(pub PathBuf);

impl std::fmt::Display for NetnsMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "network namespace {} does not exist", self.0.display())
    }
}
impl std::error::Error for NetnsMissing {}

impl Netns {
    pub fn open(path: &Path) -> Result<Self> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(NetnsMissing(path.to_path_buf()).into()),
            Err(e) => return Err(e).with_context(|| format!("open netns {}", path.display())),
        };
        let fs = fstatfs(&file).with_context(|| format!("statfs {}", path.display()))?;
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            bail!("{} is not a network namespace", path.display());
        }
        Ok(Netns { file, path: path.to_path_buf() })
    }

    /// Whether this is the namespace the plugin itself runs in (the node's,
    /// for a runtime's plugin): never a pod's.
    pub fn is_own(&self) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let own = std::fs::metadata("/proc/self/ns/net").context("stat /proc/self/ns/net")?;
        let this = self.file.metadata().with_context(|| format!("stat {}", self.path.display()))?;
        Ok(own.dev() == this.dev() && own.ino() == this.ino())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd: BorrowedFd<'_> = self.file.as_fd();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                setns(fd, CloneFlags::CLONE_NEWNET).with_context(|| format!("enter netns {}", self.path.display()))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("thread in netns {} panicked", self.path.display()))?
        })
    }
}
