//! Spec versions this plugin speaks.

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

pub fn is_supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

/// Results before 1.0.0 carry `ips[].version`.
pub fn is_legacy(v: &str) -> bool {
    v.starts_with("0.")
}
