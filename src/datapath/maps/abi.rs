//! The constants the C headers define (src/bpf/ebpfcni.h), as the
//! skeleton's generated enums give them, and the names the monitor shows
//! for event reasons, verdicts and directions: one table each, keyed by
//! the generated values.

use crate::datapath::skel::types::{
    endpoint_flags, event_dir, event_reason, event_verdict, identity_reserved, ipcache_prefix, isolation,
    policy_dir_set, policy_prefix, settings_flags,
};

pub const ENDPOINT_F_TCX: u16 = endpoint_flags::ENDPOINT_F_TCX.0 as u16;
pub const ENDPOINT_F_TC: u16 = endpoint_flags::ENDPOINT_F_TC.0 as u16;
pub const ENDPOINT_F_HOST_FLOWS: u16 = endpoint_flags::ENDPOINT_F_HOST_FLOWS.0 as u16;

pub const IDENTITY_ANY: u32 = identity_reserved::IDENTITY_ANY.0;
pub const IDENTITY_WORLD: u32 = identity_reserved::IDENTITY_WORLD.0;
pub const IDENTITY_HOST: u32 = identity_reserved::IDENTITY_HOST.0;
pub const IDENTITY_POD_MIN: u32 = identity_reserved::IDENTITY_POD_MIN.0;
pub const IDENTITY_CIDR_MIN: u32 = identity_reserved::IDENTITY_CIDR_MIN.0;

pub const ISOLATED_INGRESS: u32 = isolation::ISOLATED_INGRESS.0;
pub const ISOLATED_EGRESS: u32 = isolation::ISOLATED_EGRESS.0;

pub const SETTINGS_F_TRACE_FLOWS: u32 = settings_flags::SETTINGS_F_TRACE_FLOWS.0;
pub const SETTINGS_F_POLICY: u32 = settings_flags::SETTINGS_F_POLICY.0;
pub const SETTINGS_F_HAS_DENY: u32 = settings_flags::SETTINGS_F_HAS_DENY.0;

pub(super) const POLICY_PREFIX_FIXED: u32 = policy_prefix::POLICY_PREFIX_FIXED.0;
pub(super) const POLICY_PREFIX_PROTO: u32 = policy_prefix::POLICY_PREFIX_PROTO.0;
pub(super) const POLICY_DIR_MASK: u8 = policy_dir_set::POLICY_DIR_MASK.0 as u8;
pub(super) const POLICY_SET_SHIFT: u8 = policy_dir_set::POLICY_SET_SHIFT.0 as u8;

pub(super) const IPCACHE_PREFIX_FIXED: u32 = ipcache_prefix::IPCACHE_PREFIX_FIXED.0;
pub(super) const IPCACHE_PREFIX_V4_MAPPED: u32 = ipcache_prefix::IPCACHE_PREFIX_V4_MAPPED.0;

/// What the monitor calls each reason a packet was dropped for.
const REASONS: &[(event_reason, &str)] = &[
    (event_reason::REASON_NONE, ""),
    (event_reason::REASON_SPOOFED_IP, "spoofed-ip"),
    (event_reason::REASON_SPOOFED_MAC, "spoofed-mac"),
    (event_reason::REASON_SPOOFED_ARP, "spoofed-arp"),
    (event_reason::REASON_SPOOFED_ND, "spoofed-nd"),
    (event_reason::REASON_POLICY, "policy"),
    (event_reason::REASON_NO_ENDPOINT, "no-endpoint"),
    (event_reason::REASON_PARSE, "parse-error"),
    (event_reason::REASON_ETHERTYPE, "ethertype"),
    (event_reason::REASON_ROUTER_MESSAGE, "router-message"),
    (event_reason::REASON_CT_FULL, "conntrack-full"),
];

const VERDICTS: &[(event_verdict, &str)] = &[
    (event_verdict::EVENT_PASSED, "passed"),
    (event_verdict::EVENT_REDIRECTED, "redirected"),
    (event_verdict::EVENT_DROPPED, "dropped"),
];

const DIRECTIONS: &[(event_dir, &str)] = &[(event_dir::DIR_FROM_POD, "from-pod"), (event_dir::DIR_TO_POD, "to-pod")];

fn name_in<E: Copy>(table: &[(E, &'static str)], raw: u8, value: impl Fn(E) -> u32) -> &'static str {
    table.iter().find(|(e, _)| value(*e) == u32::from(raw)).map_or("unknown", |(_, n)| n)
}

/// The name of an event's reason ("" for none; "unknown" for a value this
/// build does not know).
pub fn reason_name(raw: u8) -> &'static str {
    name_in(REASONS, raw, |e| e.0)
}

pub fn verdict_name(raw: u8) -> &'static str {
    name_in(VERDICTS, raw, |e| e.0)
}

pub fn direction_name(raw: u8) -> &'static str {
    name_in(DIRECTIONS, raw, |e| e.0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::mem::MaybeUninit;

    use libbpf_rs::btf::types::Enum;
    use libbpf_rs::btf::Btf;
    use libbpf_rs::skel::{OpenSkel, SkelBuilder};
    use libbpf_rs::AsRawLibbpf;

    use super::*;
    use crate::datapath::skel::DatapathSkelBuilder;

    /// Every enum of the built object's BTF, by name: (enumerator, value).
    fn object_enums() -> BTreeMap<String, Vec<(String, i64)>> {
        let mut obj = MaybeUninit::uninit();
        let skel = DatapathSkelBuilder::default().open(&mut obj).expect("open the skeleton (no kernel needed)");
        // SAFETY: the pointer is the open object's, alive while skel is.
        let raw = unsafe { skel.open_object().as_libbpf_object().as_ref() };
        let btf = Btf::from_bpf_object(raw).expect("object BTF").expect("the object carries BTF");
        btf.type_by_kind::<Enum<'_>>()
            .filter_map(|e| {
                let name = e.name()?.to_string_lossy().into_owned();
                let members = e
                    .iter()
                    .map(|m| (m.name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), m.value))
                    .collect();
                Some((name, members))
            })
            .collect()
    }

    fn values_of(enums: &BTreeMap<String, Vec<(String, i64)>>, name: &str) -> Vec<(String, u8)> {
        let members = enums.get(name).unwrap_or_else(|| panic!("enum {name} is not in the object's BTF"));
        members
            .iter()
            .filter(|(n, _)| !n.starts_with("__"))
            .map(|(n, v)| (n.clone(), u8::try_from(*v).expect("event fields are __u8")))
            .collect()
    }

    fn max_of(enums: &BTreeMap<String, Vec<(String, i64)>>, name: &str, max: &str) -> i64 {
        enums[name].iter().find(|(n, _)| n == max).unwrap_or_else(|| panic!("{name} has no {max}")).1
    }

    #[test]
    fn every_event_reason_verdict_and_direction_the_c_side_defines_has_one_name() {
        let enums = object_enums();
        for (enum_name, max, name) in [
            ("event_reason", "__REASON_MAX", reason_name as fn(u8) -> &'static str),
            ("event_verdict", "__EVENT_VERDICT_MAX", verdict_name),
            ("event_dir", "__DIR_MAX", direction_name),
        ] {
            let values = values_of(&enums, enum_name);
            let mut names = std::collections::BTreeSet::new();
            for (c_name, v) in &values {
                let n = name(*v);
                assert_ne!(n, "unknown", "{enum_name}::{c_name} ({v}) has no name in the Rust table");
                assert!(names.insert(n), "{enum_name}::{c_name}: the name {n:?} is taken twice");
            }
            // The last value + 1: nothing after it, nothing skipped.
            let max = max_of(&enums, enum_name, max);
            assert_eq!(values.iter().map(|(_, v)| i64::from(*v)).max().unwrap() + 1, max, "{enum_name}");
            assert_eq!(name(max as u8), "unknown", "{enum_name}: past the last value");
        }
        assert_eq!(REASONS.len(), values_of(&enums, "event_reason").len(), "a reason the C side dropped");
        assert_eq!(reason_name(event_reason::REASON_NONE.0 as u8), "");
    }

    /// The numbers are an ABI with the maps and programs pinned by earlier
    /// releases: they never change (append only).
    #[test]
    fn every_shared_enum_keeps_its_released_values() {
        let enums = object_enums();
        let expect: &[(&str, &[(&str, i64)])] = &[
            ("endpoint_flags", &[("ENDPOINT_F_TCX", 1), ("ENDPOINT_F_TC", 2), ("ENDPOINT_F_HOST_FLOWS", 4)]),
            ("settings_flags", &[("SETTINGS_F_TRACE_FLOWS", 1), ("SETTINGS_F_POLICY", 2), ("SETTINGS_F_HAS_DENY", 4)]),
            ("ct_flags", &[("CT_F_REPLIED", 1), ("CT_F_CLOSING", 2)]),
            (
                "event_reason",
                &[
                    ("REASON_NONE", 0),
                    ("REASON_SPOOFED_IP", 1),
                    ("REASON_SPOOFED_MAC", 2),
                    ("REASON_SPOOFED_ARP", 3),
                    ("REASON_SPOOFED_ND", 4),
                    ("REASON_POLICY", 5),
                    ("REASON_NO_ENDPOINT", 6),
                    ("REASON_PARSE", 7),
                    ("REASON_ETHERTYPE", 8),
                    ("REASON_ROUTER_MESSAGE", 9),
                    ("REASON_CT_FULL", 10),
                    ("__REASON_MAX", 11),
                ],
            ),
            (
                "event_verdict",
                &[("EVENT_PASSED", 0), ("EVENT_REDIRECTED", 1), ("EVENT_DROPPED", 2), ("__EVENT_VERDICT_MAX", 3)],
            ),
            ("event_dir", &[("DIR_FROM_POD", 1), ("DIR_TO_POD", 2), ("__DIR_MAX", 3)]),
            (
                "identity_reserved",
                &[
                    ("IDENTITY_ANY", 0),
                    ("IDENTITY_WORLD", 1),
                    ("IDENTITY_HOST", 2),
                    ("IDENTITY_POD_MIN", 256),
                    ("IDENTITY_CIDR_MIN", 0x100_0000),
                ],
            ),
            ("ipcache_kind", &[("IPCACHE_ENDPOINT", 0), ("IPCACHE_CIDR", 1)]),
            (
                "ipcache_prefix",
                &[("IPCACHE_PREFIX_FIXED", 32), ("IPCACHE_PREFIX_V4_MAPPED", 96), ("IPCACHE_PREFIX_HOST", 160)],
            ),
            ("policy_dir", &[("POLICY_EGRESS", 1), ("POLICY_INGRESS", 2)]),
            ("policy_dir_set", &[("POLICY_DIR_MASK", 0xf), ("POLICY_SET_SHIFT", 4)]),
            ("verdict", &[("VERDICT_NONE", 0), ("VERDICT_ALLOW", 1), ("VERDICT_DENY", 2)]),
            ("policy_prefix", &[("POLICY_PREFIX_FIXED", 96), ("POLICY_PREFIX_PROTO", 104), ("POLICY_PREFIX_MAX", 120)]),
            ("isolation", &[("ISOLATED_INGRESS", 1), ("ISOLATED_EGRESS", 2)]),
        ];
        for (name, members) in expect {
            let got = enums.get(*name).unwrap_or_else(|| panic!("enum {name} is not in the object's BTF"));
            let want: Vec<(String, i64)> = members.iter().map(|(n, v)| (n.to_string(), *v)).collect();
            assert_eq!(got, &want, "enum {name}");
        }
        // And the Rust constants are those values.
        assert_eq!((ENDPOINT_F_TCX, ENDPOINT_F_TC, ENDPOINT_F_HOST_FLOWS), (1, 2, 4));
        assert_eq!((SETTINGS_F_TRACE_FLOWS, SETTINGS_F_POLICY, SETTINGS_F_HAS_DENY), (1, 2, 4));
        assert_eq!((POLICY_DIR_MASK, POLICY_SET_SHIFT), (0xf, 4));
        assert_eq!((IPCACHE_PREFIX_FIXED, IPCACHE_PREFIX_V4_MAPPED), (32, 96));
    }

    #[test]
    fn events_decode_every_value() {
        assert_eq!(
            (0..=10).map(reason_name).collect::<Vec<_>>(),
            [
                "",
                "spoofed-ip",
                "spoofed-mac",
                "spoofed-arp",
                "spoofed-nd",
                "policy",
                "no-endpoint",
                "parse-error",
                "ethertype",
                "router-message",
                "conntrack-full"
            ]
        );
        assert_eq!(reason_name(11), "unknown");
        assert_eq!([0, 1, 2, 3].map(verdict_name), ["passed", "redirected", "dropped", "unknown"]);
        assert_eq!([0, 1, 2, 3].map(direction_name), ["unknown", "from-pod", "to-pod", "unknown"]);
    }
}
