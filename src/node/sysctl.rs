//! The node's sysctls that pods need, read and written through
//! /proc/sys/net (which shows the calling process's network namespace).
//! In a container /proc/sys is read-only: the agent is given the host's
//! /proc/sys/net mounted elsewhere (`--proc-sys`, a hostPath), which
//! still shows the netns of whoever opens it: the node's, on host network.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// IPv4 forwarding: pods reach beyond the node through it.
pub const IPV4_FORWARD: &str = "net/ipv4/ip_forward";
/// IPv6 forwarding, on every interface.
pub const IPV6_FORWARD: &str = "net/ipv6/conf/all/forwarding";

static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Reads and writes sysctls under `dir` (holding `net/`) instead of
/// /proc/sys, for the rest of the process.
pub fn use_root(dir: &Path) -> Result<()> {
    if !dir.join("net/ipv4/ip_forward").exists() {
        bail!("{} holds no net/ipv4/ip_forward: not a mount of /proc/sys (or of its net/)", dir.display());
    }
    if ROOT.set(dir.to_path_buf()).is_err() {
        bail!("the sysctl root is already set");
    }
    Ok(())
}

fn path(name: &str) -> PathBuf {
    ROOT.get().map(PathBuf::as_path).unwrap_or(Path::new("/proc/sys")).join(name)
}

pub fn read(name: &str) -> Result<String> {
    Ok(fs::read_to_string(path(name)).with_context(|| format!("read sysctl {name}"))?.trim().to_string())
}

pub fn write(name: &str, value: &str) -> Result<()> {
    fs::write(path(name), value).with_context(|| format!("set sysctl {name} = {value}"))
}

/// An interface of ours never takes router advertisements: pods are no
/// routers, and the node's own routes are not theirs to set. Nothing to do
/// where IPv6 is off.
pub fn refuse_router_advertisements(ifname: &str) -> Result<()> {
    let name = format!("net/ipv6/conf/{ifname}/accept_ra");
    if !path(&name).exists() || read(&name)? == "0" {
        return Ok(());
    }
    write(&name, "0")
}

/// Sets `name` to `value`; returns the value it had when it was changed.
pub fn ensure(name: &str, value: &str) -> Result<Option<String>> {
    let old = read(name)?;
    if old == value {
        return Ok(None);
    }
    write(name, value)?;
    Ok(Some(old))
}
