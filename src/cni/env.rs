//! The `CNI_*` environment of one invocation, validated before use: these
//! values become file and interface names, so nothing may escape the
//! state directory or exceed the kernel's limits.

use std::path::PathBuf;

use anyhow::Result;

use super::error::{CniError, INVALID_ENV};

#[derive(Clone, Debug)]
pub struct CniEnv {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required(name: &str) -> Result<String> {
    var(name).ok_or_else(|| CniError::new(INVALID_ENV, format!("{name} is not set")))
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
        Ok(CniEnv {
            command: command.to_string(),
            container_id,
            netns,
            ifname,
            args: var("CNI_ARGS").unwrap_or_default(),
        })
    }
}

/// The spec: alphanumerics plus `_`, `.`, `-`, starting with an alphanumeric.
pub fn validate_container_id(id: &str) -> Result<()> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && id.len() <= 1024;
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            INVALID_ENV,
            format!(
                "CNI_CONTAINERID {id:?} holds characters other than letters, digits, '_', '.', '-'"
            ),
        ))
    }
}

/// Linux interface names: 1-15 bytes, no '/', ':' or white space, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        Err(CniError::new(INVALID_ENV, format!("CNI_IFNAME {name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)")))
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
    fn ifnames_follow_kernel_rules() {
        assert!(validate_ifname("eth0").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "averyveryverylongname",
            "a b",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
