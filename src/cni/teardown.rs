//! The slow part of DEL, handed off: deleting a veth takes the kernel
//! tens of ms (RCU grace periods under RTNL, twice more with TCX programs
//! attached), which the runtime need not wait for. By then DEL has taken
//! the pod out of every map (its veth drops whatever it sends or is sent),
//! released its addresses and retired its link pins; a child process
//! deletes the veth, then unpins the links, holding the attachment's lock
//! throughout, so a new ADD of the same pod waits for it. A veth the
//! child could not delete is an orphan GC removes (it carries the
//! network's device group).

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use nix::libc;

use super::attach_lock::AttachmentLock;
use crate::datapath;
use crate::netlink::{Link, Netlink};

/// The descriptor the child finds the attachment's lock at.
pub const LOCK_FD: RawFd = 3;

/// Starts the child that deletes `host_if` and unpins its retired links;
/// it shares `lock` (one open file description: the lock is held until
/// the last of the two processes lets go). Nothing of it reaches the
/// runtime's pipes.
pub fn hand_off(lock: &AttachmentLock, dir: &Path, host_if: &str, ifindex: u32) -> Result<()> {
    let fd = lock.raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["teardown-veth", "--veth", host_if, "--ifindex", &ifindex.to_string(), "--pin-dir"])
        .arg(dir)
        .env_remove("CNI_COMMAND")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set.
            let ok =
                if fd == LOCK_FD { libc::fcntl(fd, libc::F_SETFD, 0) == 0 } else { libc::dup2(fd, LOCK_FD) == LOCK_FD };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            // Its own session: not killed with the runtime's process group.
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map(drop).with_context(|| format!("start the teardown of {host_if}"))
}

/// The child's work (`ebpfcni teardown-veth`): the veth first, its
/// programs with it, then the retired links' pins, already defunct. By
/// index and by `retired/` only: a pod that got the same veth name since
/// (its ADD could not have, holding the same lock, unless the lease
/// directory was wiped) keeps its veth and its links.
pub fn run(host_if: &str, ifindex: u32, dir: &Path) -> Result<()> {
    Netlink::connect()?.delete_link_index(ifindex)?;
    datapath::drop_retired(dir, host_if)
}

/// A pod interface `ifname` already in the netns whose host end is a veth
/// of this network being deleted (a DEL of another attachment in the same
/// namespace just returned): waits for it to go, up to 5 s. False when it
/// is something else, or stays.
pub fn wait_for_retired(pod: &Netlink, dir: &Path, ifname: &str, existing: &Link) -> Result<bool> {
    let retiring = existing
        .peer
        .and_then(|index| nix::net::if_::if_indextoname(index).ok())
        .is_some_and(|host_if| datapath::is_retired(dir, &host_if.to_string_lossy()));
    if !retiring {
        return Ok(false);
    }
    for _ in 0..500 {
        if pod.link_by_name(ifname)?.is_none() {
            return Ok(true);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(false)
}
