//! One invocation at a time per attachment (container ID + interface):
//! an open-file-description lock on one byte, chosen by the attachment's
//! hash, of the lease store's `<dataDir>/<network>/lock` (whose flock,
//! the whole store's, is independent of byte-range locks on Linux: no
//! file beyond host-local's layout). Concurrent ADDs (and DELs) of one
//! pod run one after the other, so the second finds the first's work in
//! place instead of racing it; other pods never wait. The lock goes with
//! the process.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use nix::libc;

const FILE: &str = "lock";

pub struct AttachmentLock(File);

impl AttachmentLock {
    /// The locked file's descriptor, for a child that keeps the lock.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

pub fn lock(data_dir: &Path, network: &str, container_id: &str, ifname: &str) -> Result<AttachmentLock> {
    let dir = data_dir.join(network);
    std::fs::create_dir_all(&dir).with_context(|| format!("create lease directory {}", dir.display()))?;
    let path = dir.join(FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let h = crate::fnv::fnv1a64(format!("{container_id}\0{ifname}").as_bytes());
    // SAFETY: a zeroed flock is valid; the fields used are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = (h & 0x3fff_ffff_ffff) as libc::off_t;
    fl.l_len = 1;
    loop {
        // SAFETY: a valid fd and a valid flock pointer.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLKW, &fl) };
        if rc == 0 {
            return Ok(AttachmentLock(file));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err).with_context(|| format!("lock {} for {container_id}/{ifname}", path.display()));
        }
    }
}
