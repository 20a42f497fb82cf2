//! FNV-1a, 64 bit: tiny and stable across toolchains and releases, for
//! names and identities that must not change when the binary does (a pod's
//! host veth name, the BPF program's identity). Shared with build.rs.

/// FNV-1a over `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}
