//! What each pinned map of a network holds and costs: entries against
//! its max, the kernel memory it is charged (`memlock:` in the fdinfo of
//! its fd, as bpftool reads it) and how much of that each CPU adds, so
//! the cost on a machine with more CPUs can be computed.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapHandle, MapType};
use serde::Serialize;

use super::maps::MAP_NAMES;

/// `BPF_F_NO_PREALLOC`.
const NO_PREALLOC: u32 = 1;
/// The kernel's `struct htab_elem` before the key (6.x, 64-bit).
const HTAB_ELEM: u64 = 48;
/// `HASHTAB_MAP_LOCK_COUNT` ints per CPU in every hash map.
const HTAB_LOCKS_PER_CPU: u64 = 8 * 4;

#[derive(Clone, Debug, Serialize)]
pub struct MapUsage {
    pub name: String,
    /// None for the ring buffer, which has no entries.
    pub entries: Option<u64>,
    pub max_entries: u32,
    /// Kernel memory charged for the map, as the kernel reports it.
    pub memlock: u64,
    /// Of which each possible CPU adds (as kernels from 6.4 account it).
    pub per_cpu: u64,
    /// A map whose entries are keys (not an array or ring buffer) holding
    /// its max: the next new key is refused.
    pub full: bool,
}

/// The maps of `dir`, in MAP_NAMES order; those not pinned are left out.
pub fn usage(dir: &Path) -> Result<Vec<MapUsage>> {
    let mut out = Vec::new();
    for name in MAP_NAMES {
        let path = dir.join(name);
        let Ok(map) = MapHandle::from_pinned_path(&path) else { continue };
        out.push(one(name, &map).with_context(|| format!("map {}", path.display()))?);
    }
    Ok(out)
}

fn one(name: &str, map: &MapHandle) -> Result<MapUsage> {
    let info = map.info().context("map info")?.info;
    let ty = map.map_type();
    let keyed = !matches!(ty, MapType::Array | MapType::PercpuArray | MapType::RingBuf);
    let entries = match ty {
        MapType::RingBuf => None,
        _ if !keyed => Some(u64::from(info.max_entries)),
        _ => Some(map.keys().count() as u64),
    };
    let fdinfo = format!("/proc/self/fdinfo/{}", map.as_fd().as_raw_fd());
    let text = std::fs::read_to_string(&fdinfo).with_context(|| format!("read {fdinfo}"))?;
    let memlock = text
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no memlock in {fdinfo}"))?;
    let per_cpu = per_cpu(ty, info.key_size, info.value_size, info.max_entries, info.map_flags, entries.unwrap_or(0));
    Ok(MapUsage {
        name: name.to_string(),
        entries,
        max_entries: info.max_entries,
        memlock,
        per_cpu,
        full: keyed && entries.is_some_and(|n| n >= u64::from(info.max_entries)),
    })
}

/// What one CPU adds to a map's charge, following the kernel's
/// map_mem_usage (htab_map_mem_usage, array_map_mem_usage): per-CPU
/// values, per-CPU spare elements of preallocated hashes, lock counters.
fn per_cpu(ty: MapType, key: u32, value: u32, max: u32, flags: u32, entries: u64) -> u64 {
    let round8 = |n: u32| u64::from(n.div_ceil(8) * 8);
    let prealloc = flags & NO_PREALLOC == 0;
    match ty {
        MapType::PercpuArray => round8(value) * u64::from(max),
        MapType::PercpuHash | MapType::LruPercpuHash => {
            HTAB_LOCKS_PER_CPU + round8(value) * if prealloc { u64::from(max) } else { entries }
        }
        MapType::Hash if prealloc => HTAB_LOCKS_PER_CPU + HTAB_ELEM + round8(key) + round8(value) + 8,
        MapType::Hash | MapType::LruHash => HTAB_LOCKS_PER_CPU,
        _ => 0,
    }
}

/// A network's maps together: what `status` and bench.sh print.
#[derive(Clone, Debug, Serialize)]
pub struct Footprint {
    pub bytes: u64,
    pub per_cpu_bytes: u64,
    pub possible_cpus: u64,
    /// The same maps' charge on a 128-CPU machine, from the per-CPU share.
    pub bytes_at_128_cpus: u64,
}

pub fn total(maps: &[MapUsage]) -> Result<Footprint> {
    let cpus = libbpf_rs::num_possible_cpus().context("count possible CPUs")? as u64;
    let bytes: u64 = maps.iter().map(|m| m.memlock).sum();
    let per_cpu: u64 = maps.iter().map(|m| m.per_cpu).sum();
    Ok(Footprint {
        bytes,
        per_cpu_bytes: per_cpu,
        possible_cpus: cpus,
        bytes_at_128_cpus: bytes.saturating_sub(per_cpu * cpus) + per_cpu * 128,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_share_follows_what_the_kernel_allocates_per_cpu() {
        // Not preallocated: per-CPU values of the entries there are.
        assert_eq!(per_cpu(MapType::PercpuHash, 16, 72, 768, NO_PREALLOC, 10), 32 + 720);
        // Preallocated: of every entry it could hold.
        assert_eq!(per_cpu(MapType::PercpuHash, 16, 72, 768, 0, 10), 32 + 72 * 768);
        assert_eq!(per_cpu(MapType::PercpuArray, 4, 12, 1, 0, 1), 16);
        // A preallocated hash keeps one spare element per CPU.
        assert_eq!(per_cpu(MapType::Hash, 16, 12, 768, 0, 3), 32 + 48 + 16 + 16 + 8);
        assert_eq!(per_cpu(MapType::LpmTrie, 24, 4, 100, NO_PREALLOC, 3), 0);
    }
}
