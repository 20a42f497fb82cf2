//! The `CNI_*` environment of one invocation, validated before use: these
//! values become file and interface names, so nothing may escape the
//! state directory or exceed the kernel's limits.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;

use super::error::{CniError, INVALID_ENV};

#[derive(Clone, Debug)]
pub struct CniEnv {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `IP=` of `CNI_ARGS` (a comma-separated list is accepted).
    pub requested_ips: Vec<IpAddr>,
    /// `MAC=` of `CNI_ARGS`.
    pub requested_mac: Option<[u8; 6]>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required(name: &str) -> Result<String> {
    var(name).ok_or_else(|| CniError::error(INVALID_ENV, format!("{name} is not set")))
}

impl CniEnv {
    /// Reads the environment for `command`; which variables are required
    /// depends on it (DEL may come after the netns is gone).
    pub fn from_env(command: &str) -> Result<Self> {
        let container_id = required("CNI_CONTAINERID")?;
        validate_container_id(&container_id)?;
        let ifname = required("CNI_IFNAME")?;
        validate_ifname(&ifname)?;
        let netns = match command {
            "ADD" | "CHECK" => Some(PathBuf::from(required("CNI_NETNS")?)),
            _ => var("CNI_NETNS").map(PathBuf::from),
        };
        let (requested_ips, requested_mac) = parse_cni_args(&var("CNI_ARGS").unwrap_or_default())?;
        Ok(CniEnv { container_id, netns, ifname, requested_ips, requested_mac })
    }
}

/// `CNI_ARGS`: `K=V;K=V`. Only IP and MAC are ours; other keys (the
/// runtime's K8S_POD_NAME and the like) are ignored, as the spec intends.
fn parse_cni_args(args: &str) -> Result<(Vec<IpAddr>, Option<[u8; 6]>)> {
    let mut ips = Vec::new();
    let mut mac = None;
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::error(INVALID_ENV, format!("CNI_ARGS entry {pair:?} is not KEY=VALUE")));
        };
        match k {
            "IP" => {
                for one in v.split(',') {
                    let ip = one.split('/').next().unwrap_or(one);
                    ips.push(ip.parse().map_err(|_| {
                        CniError::error(INVALID_ENV, format!("CNI_ARGS IP={one:?} is not an IP address"))
                    })?);
                }
            }
            "MAC" => {
                mac = Some(
                    super::result::parse_mac(v)
                        .map_err(|e| CniError::error(INVALID_ENV, format!("CNI_ARGS MAC: {e:#}")))?,
                )
            }
            _ => {}
        }
    }
    Ok((ips, mac))
}

/// The spec: alphanumerics plus `_`, `.`, `-`, starting with an alphanumeric.
pub fn validate_container_id(id: &str) -> Result<()> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && id.len() <= 1024;
    if ok {
        Ok(())
    } else {
        Err(CniError::error(
            INVALID_ENV,
            format!("CNI_CONTAINERID {id:?} holds characters other than letters, digits, '_', '.', '-'"),
        ))
    }
}

/// Linux interface names: 1-15 bytes, no '/', ':' or white space, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        Err(CniError::error(
            INVALID_ENV,
            format!("CNI_IFNAME {name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_cannot_escape() {
        assert!(validate_container_id("abc-123_x.y").is_ok());
        for bad in ["", "..", "../etc", "a/b", "a\0b", ".hidden", "a b"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cni_args_carry_ip_and_mac() {
        let (ips, mac) =
            parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.0.0.5,fd00::5;MAC=02:aa:00:00:00:01").unwrap();
        assert_eq!(ips.len(), 2);
        assert_eq!(mac, Some([2, 0xaa, 0, 0, 0, 1]));
        assert!(parse_cni_args("IP=nope").is_err());
        assert!(parse_cni_args("garbage").is_err());
    }

    #[test]
    fn ifnames_follow_kernel_rules() {
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "eth0:1", "averyveryverylongname", "a b"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
