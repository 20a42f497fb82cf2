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

fn parts(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Whether `v` is `min` or later (both known versions).
pub fn at_least(v: &str, min: &str) -> bool {
    parts(v) >= parts(min)
}

/// The spec version that introduced a command: CHECK in 0.4.0, GC and
/// STATUS in 1.1.0. A config of an earlier version does not allow it.
pub fn introduced(command: &str) -> Option<&'static str> {
    match command {
        "CHECK" => Some("0.4.0"),
        "GC" | "STATUS" => Some("1.1.0"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_need_the_version_that_introduced_them() {
        assert!(!at_least("0.3.1", introduced("CHECK").unwrap()));
        assert!(at_least("0.4.0", introduced("CHECK").unwrap()));
        assert!(!at_least("1.0.0", introduced("GC").unwrap()));
        assert!(at_least("1.1.0", introduced("STATUS").unwrap()));
    }
}
