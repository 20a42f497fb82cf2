//! The pinned maps' layouts are an ABI with the maps earlier releases
//! pinned (in-place upgrades keep them): these tests hold every map's
//! type, sizes, entries and flags, and every shared struct's size and
//! field offsets, to the values released so far.

use std::mem::{offset_of, size_of, MaybeUninit};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::MapType;

use super::MAP_NAMES;
use crate::datapath::skel::types::{
    ct_budget, ct_key, ct_new_value, ct_value, endpoint_info, event, event_loss, event_source, frag_key,
    hostflow_value, identity_key, ip_key, ipcache_key, ipcache_value, pod_info, policy_key, policy_value, settings,
    traffic_stats,
};
use crate::datapath::skel::DatapathSkelBuilder;

const NO_PREALLOC: u32 = libbpf_rs::libbpf_sys::BPF_F_NO_PREALLOC;

#[test]
fn every_map_keeps_its_type_sizes_entries_and_flags() {
    // (name, type, key size, value size, max_entries, flags)
    let released: &[(&str, MapType, u32, u32, u32, u32)] = &[
        ("endpoints", MapType::Hash, 16, 12, 65536, 0),
        ("pods", MapType::Hash, 4, 24, 65536, 0),
        ("stats", MapType::PercpuHash, 16, 64, 65536, 0),
        ("ipcache", MapType::LpmTrie, 24, 4, 131072, NO_PREALLOC),
        ("iprules", MapType::LpmTrie, 20, 8, 262144, NO_PREALLOC),
        ("identity_flags", MapType::Hash, 8, 4, 65536, NO_PREALLOC),
        ("settings", MapType::Array, 4, 16, 1, 0),
        ("conntrack", MapType::LruHash, 40, 16, 65536, 0),
        ("ct_new", MapType::LruHash, 40, 24, 65536, 0),
        ("ct_budget", MapType::LruHash, 4, 16, 65536, 0),
        ("frags", MapType::LruHash, 40, 8, 8192, 0),
        ("hostflows", MapType::LruHash, 40, 8, 16384, 0),
        ("events", MapType::RingBuf, 0, 0, 256 * 1024, 0),
        ("events_lost", MapType::PercpuArray, 4, 16, 1, 0),
        ("event_limit", MapType::LruHash, 24, 8, 16384, 0),
    ];
    let mut obj = MaybeUninit::uninit();
    let skel = DatapathSkelBuilder::default().open(&mut obj).expect("open the skeleton (no kernel needed)");
    let maps: Vec<_> = skel
        .open_object()
        .maps()
        .filter(|m| !m.name().to_string_lossy().contains('.'))
        .map(|m| {
            (
                m.name().to_string_lossy().into_owned(),
                m.map_type(),
                m.key_size(),
                m.value_size(),
                m.max_entries(),
                m.map_flags(),
            )
        })
        .collect();
    for want in released {
        let got = maps.iter().find(|m| m.0 == want.0).unwrap_or_else(|| panic!("no map {}", want.0));
        assert_eq!((got.1, got.2, got.3, got.4, got.5), (want.1, want.2, want.3, want.4, want.5), "map {}", want.0);
    }
    let mut names: Vec<&str> = maps.iter().map(|m| m.0.as_str()).collect();
    let mut pinned = MAP_NAMES.to_vec();
    names.sort();
    pinned.sort();
    assert_eq!(names, pinned, "every map of the object is pinned, and only those");
}

#[test]
fn every_shared_struct_keeps_its_size_and_offsets() {
    let sizes = [
        ("ip_key", size_of::<ip_key>(), 16),
        ("endpoint_info", size_of::<endpoint_info>(), 12),
        ("pod_info", size_of::<pod_info>(), 24),
        ("traffic_stats", size_of::<traffic_stats>(), 64),
        ("ipcache_key", size_of::<ipcache_key>(), 24),
        ("ipcache_value", size_of::<ipcache_value>(), 4),
        ("policy_key", size_of::<policy_key>(), 20),
        ("policy_value", size_of::<policy_value>(), 8),
        ("identity_key", size_of::<identity_key>(), 8),
        ("settings", size_of::<settings>(), 16),
        ("ct_key", size_of::<ct_key>(), 40),
        ("ct_value", size_of::<ct_value>(), 16),
        ("ct_new_value", size_of::<ct_new_value>(), 24),
        ("ct_budget", size_of::<ct_budget>(), 16),
        ("frag_key", size_of::<frag_key>(), 40),
        ("hostflow_value", size_of::<hostflow_value>(), 8),
        ("event_source", size_of::<event_source>(), 24),
        ("event_loss", size_of::<event_loss>(), 16),
        ("event", size_of::<event>(), 56),
    ];
    for (name, got, want) in sizes {
        assert_eq!(got, want, "size of struct {name}");
    }
    let offsets = [
        ("endpoint_info.mac", offset_of!(endpoint_info, mac), 4),
        ("endpoint_info.flags", offset_of!(endpoint_info, flags), 10),
        ("pod_info.mac", offset_of!(pod_info, mac), 16),
        ("traffic_stats.bytes", offset_of!(traffic_stats, bytes), 8),
        ("traffic_stats.redirected", offset_of!(traffic_stats, redirected), 16),
        ("traffic_stats.passed", offset_of!(traffic_stats, passed), 24),
        ("traffic_stats.drop_spoofed", offset_of!(traffic_stats, drop_spoofed), 32),
        ("traffic_stats.drop_policy", offset_of!(traffic_stats, drop_policy), 40),
        ("traffic_stats.reserved", offset_of!(traffic_stats, reserved), 48),
        ("traffic_stats.drop_parse", offset_of!(traffic_stats, drop_parse), 56),
        ("ipcache_key.set", offset_of!(ipcache_key, set), 4),
        ("ipcache_key.kind", offset_of!(ipcache_key, kind), 5),
        ("ipcache_key.addr", offset_of!(ipcache_key, addr), 8),
        ("policy_key.dir_set", offset_of!(policy_key, dir_set), 4),
        ("policy_key.subject", offset_of!(policy_key, subject), 8),
        ("policy_key.peer", offset_of!(policy_key, peer), 12),
        ("policy_key.proto", offset_of!(policy_key, proto), 16),
        ("policy_key.dport", offset_of!(policy_key, dport), 17),
        ("policy_value.own", offset_of!(policy_value, own), 1),
        ("policy_value.rule", offset_of!(policy_value, rule), 4),
        ("identity_key.set", offset_of!(identity_key, set), 4),
        ("settings.generation", offset_of!(settings, generation), 4),
        ("settings.default_deny", offset_of!(settings, default_deny), 8),
        ("settings.flags", offset_of!(settings, flags), 12),
        ("ct_key.dst", offset_of!(ct_key, dst), 16),
        ("ct_key.sport", offset_of!(ct_key, sport), 32),
        ("ct_key.dport", offset_of!(ct_key, dport), 34),
        ("ct_key.proto", offset_of!(ct_key, proto), 36),
        ("ct_value.generation", offset_of!(ct_value, generation), 8),
        ("ct_value.flags", offset_of!(ct_value, flags), 12),
        ("ct_new_value.owner", offset_of!(ct_new_value, owner), 16),
        ("ct_budget.count", offset_of!(ct_budget, count), 8),
        ("frag_key.id", offset_of!(frag_key, id), 32),
        ("frag_key.proto", offset_of!(frag_key, proto), 36),
        ("event_source.ifindex", offset_of!(event_source, ifindex), 16),
        ("event_loss.rate_limited", offset_of!(event_loss, rate_limited), 8),
        ("event.src", offset_of!(event, src), 8),
        ("event.dst", offset_of!(event, dst), 24),
        ("event.sport", offset_of!(event, sport), 40),
        ("event.dport", offset_of!(event, dport), 42),
        ("event.proto", offset_of!(event, proto), 44),
        ("event.verdict", offset_of!(event, verdict), 45),
        ("event.reason", offset_of!(event, reason), 46),
        ("event.dir", offset_of!(event, dir), 47),
        ("event.ifindex", offset_of!(event, ifindex), 48),
    ];
    for (name, got, want) in offsets {
        assert_eq!(got, want, "offset of {name}");
    }
}
