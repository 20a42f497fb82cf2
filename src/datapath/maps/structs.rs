//! Every struct the two sides share keeps its size and field offsets (the
//! maps' own layouts are checked in src/datapath/layouts.txt, see
//! docs/maps.md; the event record is read by the monitor).

use std::mem::{offset_of, size_of};

use crate::datapath::skel::types::{
    ct_budget, ct_key, ct_new_value, ct_value, endpoint_info, event, event_loss, event_source, frag_key,
    hostflow_value, identity_key, ip_key, ipcache_key, ipcache_value, pod_info, policy_key, policy_value, settings,
    traffic_stats,
};

#[test]
fn every_shared_struct_keeps_its_size_and_offsets() {
    let sizes = [
        ("ip_key", size_of::<ip_key>(), 16),
        ("endpoint_info", size_of::<endpoint_info>(), 12),
        ("pod_info", size_of::<pod_info>(), 24),
        ("traffic_stats", size_of::<traffic_stats>(), 72),
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
        ("traffic_stats.drop_policy_egress", offset_of!(traffic_stats, drop_policy_egress), 40),
        ("traffic_stats.drop_policy_ingress", offset_of!(traffic_stats, drop_policy_ingress), 48),
        ("traffic_stats.drop_parse_egress", offset_of!(traffic_stats, drop_parse_egress), 56),
        ("traffic_stats.drop_parse_ingress", offset_of!(traffic_stats, drop_parse_ingress), 64),
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
