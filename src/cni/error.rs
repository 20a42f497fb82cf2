//! The spec's error codes and the one place where an internal error
//! becomes the error JSON a runtime reads.

use std::fmt;

use serde::Serialize;

pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const INVALID_ENV: u32 = 4;
pub const IO_FAILURE: u32 = 5;
pub const DECODE_FAILURE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const TRY_AGAIN_LATER: u32 = 11;
pub const NOT_READY: u32 = 50;
/// Plugin specific: CHECK found something ADD made missing or changed.
pub const CHECK_FAILED: u32 = 100;

/// An error that already knows its CNI code.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
}

impl CniError {
    pub fn error(code: u32, msg: impl Into<String>) -> anyhow::Error {
        CniError { code, msg: msg.into() }.into()
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for CniError {}

/// The spec's error result.
#[derive(Debug, Serialize)]
pub struct ErrorJson {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// Picks the code: an explicit `CniError` anywhere in the chain wins, then
/// known failure kinds; anything else is an I/O failure of the node.
pub fn to_json(err: &anyhow::Error, cni_version: &str) -> ErrorJson {
    let code = err
        .chain()
        .find_map(|c| c.downcast_ref::<CniError>().map(|e| e.code))
        .or_else(|| err.chain().any(|c| c.is::<crate::datapath::TooSmall>()).then_some(INVALID_CONFIG))
        .or_else(|| {
            // No address left, or no room left in a map: a node at its
            // limit, until a pod goes (or the limit is raised).
            err.chain()
                .any(|c| c.is::<crate::ipam::Exhausted>() || c.is::<crate::datapath::MapFull>())
                .then_some(TRY_AGAIN_LATER)
        })
        .unwrap_or(IO_FAILURE);
    let msg = err.to_string();
    let details = format!("{err:#}");
    ErrorJson {
        cni_version: cni_version.to_string(),
        code,
        details: if details == msg { String::new() } else { details },
        msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn code_survives_added_context() {
        let e: anyhow::Error =
            Err::<(), _>(CniError::error(INVALID_CONFIG, "bad subnet")).context("parse network config").unwrap_err();
        let j = to_json(&e, "1.0.0");
        assert_eq!(j.code, INVALID_CONFIG);
        assert_eq!(j.msg, "parse network config");
        assert!(j.details.contains("bad subnet"));
    }

    #[test]
    fn unknown_failures_are_io() {
        let e = anyhow::anyhow!("netlink said no");
        assert_eq!(to_json(&e, "1.1.0").code, IO_FAILURE);
    }
}
