//! Typed access to the pinned maps. Keys and values are the skeleton's
//! generated types (declared once in src/bpf/ebpfcni.h) through one typed
//! map wrapper (`typed`); addresses go in as `IpAddr` and come out as
//! `IpAddr`, never as raw integers; constants come from the C enums (`abi`).

mod abi;
mod flows;
mod policy;
#[cfg(test)]
mod structs;
pub(super) mod typed;

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use anyhow::{Context, Result};
use libbpf_rs::MapHandle;
use serde::Serialize;

pub use self::abi::*;
pub use self::policy::{Direction, IpcacheEntry, IpcacheKind, PolicyEntry, Verdict};
pub use self::typed::MapFull;
use self::typed::TypedMap;
use super::skel::types::{
    ct_budget, ct_key, ct_new_value, ct_value, endpoint_info, event_loss, event_source, frag_key, hostflow_value,
    identity_key, ip_key, ipcache_key, ipcache_value, pod_info, policy_key, policy_value, settings, traffic_stats,
};

/// Every map of a network's pin directory, by pin name.
pub const MAP_NAMES: &[&str] = &[
    "endpoints",
    "pods",
    "stats",
    "ipcache",
    "iprules",
    "identity_flags",
    "settings",
    "conntrack",
    "ct_new",
    "ct_budget",
    "frags",
    "hostflows",
    "events",
    "events_lost",
    "event_limit",
    "tunnels",
    "fastpath",
];

pub(super) fn ip_to_key(ip: IpAddr) -> ip_key {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    ip_key { addr: v6.octets() }
}

pub(super) fn key_to_ip(k: &ip_key) -> IpAddr {
    let v6 = Ipv6Addr::from(k.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    pub ip: IpAddr,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub flags: u16,
}

/// The pod behind a host veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub mac: [u8; 6],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatsEntry {
    pub ip: IpAddr,
    pub packets: u64,
    pub bytes: u64,
    pub redirected: u64,
    pub passed: u64,
    pub drop_spoofed: u64,
    /// Both directions: the sum of the two below.
    pub drop_policy: u64,
    /// The pod's own traffic refused.
    pub drop_policy_egress: u64,
    /// Traffic to the pod refused.
    pub drop_policy_ingress: u64,
    /// Both directions, as drop_policy.
    pub drop_parse: u64,
    pub drop_parse_egress: u64,
    pub drop_parse_ingress: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub active_set: u32,
    pub generation: u32,
    pub default_deny: bool,
    pub flags: u32,
}

/// The maps of one network, each typed by its key and value.
pub struct Maps {
    endpoints: TypedMap<ip_key, endpoint_info>,
    pods: TypedMap<u32, pod_info>,
    stats: TypedMap<ip_key, traffic_stats>,
    ipcache: TypedMap<ipcache_key, ipcache_value>,
    iprules: TypedMap<policy_key, policy_value>,
    identity_flags: TypedMap<identity_key, u32>,
    settings: TypedMap<u32, settings>,
    conntrack: TypedMap<ct_key, ct_value>,
    ct_new: TypedMap<ct_key, ct_new_value>,
    ct_budget: TypedMap<u32, ct_budget>,
    /// Value: when the datagram's last fragment was seen (ns).
    frags: TypedMap<frag_key, u64>,
    hostflows: TypedMap<ct_key, hostflow_value>,
    /// The ring buffer: no keys or values, records of `struct event`.
    events: MapHandle,
    events_lost: TypedMap<u32, event_loss>,
    /// Value: the source's next event's theoretical arrival time (ns).
    event_limit: TypedMap<event_source, u64>,
}

/// Events the datapath could not deliver, summed over CPUs, since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventLoss {
    /// The ring buffer had no room (no reader, or one too slow).
    pub ring_full: u64,
    /// Over their source's rate (EVENT_RATE_PER_SEC, bursts of EVENT_BURST).
    pub rate_limited: u64,
}

impl EventLoss {
    pub fn total(&self) -> u64 {
        self.ring_full + self.rate_limited
    }

    /// What was lost since `earlier`.
    pub fn since(&self, earlier: &EventLoss) -> EventLoss {
        EventLoss {
            ring_full: self.ring_full.saturating_sub(earlier.ring_full),
            rate_limited: self.rate_limited.saturating_sub(earlier.rate_limited),
        }
    }
}

/// The identity_flags, settings and events_lost maps' one key.
const ZERO: u32 = 0;

impl Maps {
    /// Opens the maps pinned in a network's pin directory.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::from_handles(|name| {
            let path = dir.join(name);
            MapHandle::from_pinned_path(&path).with_context(|| format!("open pinned map {}", path.display()))
        })
    }

    /// The maps `map(name)` gives by name (pinned, or a loaded object's).
    pub(super) fn from_handles(map: impl Fn(&str) -> Result<MapHandle>) -> Result<Self> {
        let open = |name: &'static str| map(name);
        Ok(Maps {
            endpoints: open.typed("endpoints")?,
            pods: open.typed("pods")?,
            stats: open.typed("stats")?,
            ipcache: open.typed("ipcache")?,
            iprules: open.typed("iprules")?,
            identity_flags: open.typed("identity_flags")?,
            settings: open.typed("settings")?,
            conntrack: open.typed("conntrack")?,
            ct_new: open.typed("ct_new")?,
            ct_budget: open.typed("ct_budget")?,
            frags: open.typed("frags")?,
            hostflows: open.typed("hostflows")?,
            events: map("events")?,
            events_lost: open.typed("events_lost")?,
            event_limit: open.typed("event_limit")?,
        })
    }

    /// Opens them when they exist; None when this network was never loaded.
    pub fn open_if_pinned(dir: &Path) -> Result<Option<Self>> {
        if dir.join("endpoints").exists() {
            Self::open(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn put_endpoint(&self, ep: &EndpointEntry) -> Result<()> {
        let value = endpoint_info { ifindex: ep.ifindex, mac: ep.mac, flags: ep.flags };
        self.endpoints.put(&ip_to_key(ep.ip), &value).with_context(|| format!("write endpoint {}", ep.ip))
    }

    pub fn remove_endpoint(&self, ip: IpAddr) -> Result<()> {
        self.endpoints.delete(&ip_to_key(ip)).with_context(|| format!("remove endpoint {ip}"))
    }

    pub fn endpoint(&self, ip: IpAddr) -> Result<Option<EndpointEntry>> {
        let info = self.endpoints.get(&ip_to_key(ip)).with_context(|| format!("look up endpoint {ip}"))?;
        Ok(info.map(|info| EndpointEntry { ip, ifindex: info.ifindex, mac: info.mac, flags: info.flags }))
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointEntry>> {
        Self::endpoints_in(&self.endpoints)
    }

    /// The entries of an endpoints map opened on its own (another build's
    /// pins, before this build's set is complete), of this build's layout.
    pub fn endpoints_of(map: MapHandle) -> Result<Vec<EndpointEntry>> {
        Self::endpoints_in(&TypedMap::new(map, "endpoints"))
    }

    fn endpoints_in(map: &TypedMap<ip_key, endpoint_info>) -> Result<Vec<EndpointEntry>> {
        let mut out: Vec<EndpointEntry> = map
            .entries()?
            .into_iter()
            .map(|(k, info)| EndpointEntry {
                ip: key_to_ip(&k),
                ifindex: info.ifindex,
                mac: info.mac,
                flags: info.flags,
            })
            .collect();
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    pub fn put_pod(&self, pod: &PodEntry) -> Result<()> {
        let value = pod_info { addr: ip_to_key(pod.addr), mac: pod.mac, ..Default::default() };
        self.pods.put(&pod.ifindex, &value).with_context(|| format!("write pod of ifindex {}", pod.ifindex))
    }

    pub fn remove_pod(&self, ifindex: u32) -> Result<()> {
        let source = event_source { ifindex, ..Default::default() };
        self.event_limit.delete(&source).with_context(|| format!("remove event rate of ifindex {ifindex}"))?;
        self.ct_budget.delete(&ifindex).with_context(|| format!("remove conntrack budget of ifindex {ifindex}"))?;
        self.pods.delete(&ifindex).with_context(|| format!("remove pod of ifindex {ifindex}"))
    }

    pub fn pod(&self, ifindex: u32) -> Result<Option<PodEntry>> {
        let info = self.pods.get(&ifindex)?;
        Ok(info.map(|info| PodEntry { ifindex, addr: key_to_ip(&info.addr), mac: info.mac }))
    }

    pub fn pods(&self) -> Result<Vec<PodEntry>> {
        let mut out: Vec<PodEntry> = self
            .pods
            .entries()?
            .into_iter()
            .map(|(ifindex, info)| PodEntry { ifindex, addr: key_to_ip(&info.addr), mac: info.mac })
            .collect();
        out.sort_by_key(|p| p.ifindex);
        Ok(out)
    }

    /// Counters per pod address, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<StatsEntry>> {
        let mut out: Vec<StatsEntry> = self
            .stats
            .entries_percpu()?
            .into_iter()
            .map(|(k, per_cpu)| {
                let mut sum = StatsEntry {
                    ip: key_to_ip(&k),
                    packets: 0,
                    bytes: 0,
                    redirected: 0,
                    passed: 0,
                    drop_spoofed: 0,
                    drop_policy: 0,
                    drop_policy_egress: 0,
                    drop_policy_ingress: 0,
                    drop_parse: 0,
                    drop_parse_egress: 0,
                    drop_parse_ingress: 0,
                };
                for s in per_cpu {
                    sum.packets += s.packets;
                    sum.bytes += s.bytes;
                    sum.redirected += s.redirected;
                    sum.passed += s.passed;
                    sum.drop_spoofed += s.drop_spoofed;
                    sum.drop_policy_egress += s.drop_policy_egress;
                    sum.drop_policy_ingress += s.drop_policy_ingress;
                    sum.drop_policy += s.drop_policy_egress + s.drop_policy_ingress;
                    sum.drop_parse_egress += s.drop_parse_egress;
                    sum.drop_parse_ingress += s.drop_parse_ingress;
                    sum.drop_parse += s.drop_parse_egress + s.drop_parse_ingress;
                }
                sum
            })
            .collect();
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    pub fn remove_stats(&self, ip: IpAddr) -> Result<()> {
        self.stats.delete(&ip_to_key(ip)).with_context(|| format!("remove stats of {ip}"))
    }

    pub fn settings(&self) -> Result<Settings> {
        let s = self.settings.get(&ZERO)?.unwrap_or_default();
        Ok(Settings {
            active_set: s.active_set,
            generation: s.generation,
            default_deny: s.default_deny != 0,
            flags: s.flags,
        })
    }

    pub fn put_settings(&self, s: &Settings) -> Result<()> {
        let value = settings {
            active_set: s.active_set,
            generation: s.generation,
            default_deny: u32::from(s.default_deny),
            flags: s.flags,
        };
        self.settings.put(&ZERO, &value)
    }

    /// The events lost so far.
    pub fn events_lost(&self) -> Result<EventLoss> {
        let mut sum = EventLoss::default();
        for l in self.events_lost.get_percpu(&ZERO)?.into_iter().flatten() {
            sum.ring_full += l.ring_full;
            sum.rate_limited += l.rate_limited;
        }
        Ok(sum)
    }

    /// Reads the events ring buffer: `f` gets each record, decoded (a
    /// record of another size is an error), and returns what libbpf's
    /// callbacks return (0: go on; negative: stop).
    pub fn events_ring<'a>(
        &'a self,
        mut f: impl FnMut(Result<event::Event>) -> i32 + 'a,
    ) -> Result<libbpf_rs::RingBuffer<'a>> {
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder.add(&self.events, move |raw: &[u8]| f(event::decode(raw))).context("open events ring buffer")?;
        builder.build().context("open events ring buffer")
    }
}

/// Opens one typed map by name.
trait TypedOpen {
    fn typed<K: typed::Plain, V: typed::Plain>(&self, name: &'static str) -> Result<TypedMap<K, V>>;
}

impl<F: Fn(&'static str) -> Result<MapHandle>> TypedOpen for F {
    fn typed<K: typed::Plain, V: typed::Plain>(&self, name: &'static str) -> Result<TypedMap<K, V>> {
        Ok(TypedMap::new(self(name)?, name))
    }
}

/// Textual protocol names (`any` for 0).
pub fn proto_name(p: u8) -> String {
    match p {
        0 => "any".into(),
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

pub fn proto_number(s: &str) -> Option<u8> {
    match s.to_ascii_lowercase().as_str() {
        "any" => Some(0),
        "icmp" => Some(1),
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmpv6" => Some(58),
        "sctp" => Some(132),
        n => n.parse().ok(),
    }
}

/// Event layout helpers for the monitor.
pub mod event {
    use super::*;
    use crate::datapath::skel::types::event;

    /// A decoded ring buffer record.
    #[derive(Clone, Debug, Serialize)]
    pub struct Event {
        pub ts_ns: u64,
        pub src: IpAddr,
        pub dst: IpAddr,
        pub sport: u16,
        pub dport: u16,
        pub proto: String,
        pub verdict: &'static str,
        pub reason: &'static str,
        pub direction: &'static str,
        pub ifindex: u32,
    }

    /// One record of the ring buffer: exactly a `struct event`.
    pub(super) fn decode(raw: &[u8]) -> Result<Event> {
        let e: event = typed::decode(raw, "events record")?;
        Ok(Event {
            ts_ns: e.ts_ns,
            src: key_to_ip(&e.src),
            dst: key_to_ip(&e.dst),
            sport: e.sport,
            dport: e.dport,
            proto: proto_name(e.proto),
            verdict: verdict_name(e.verdict),
            reason: reason_name(e.reason),
            direction: direction_name(e.dir),
            ifindex: e.ifindex,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_loss_counts_only_what_came_after() {
        let start = EventLoss { ring_full: 3, rate_limited: 10 };
        let now = EventLoss { ring_full: 4, rate_limited: 15 };
        assert_eq!(now.since(&start), EventLoss { ring_full: 1, rate_limited: 5 });
        assert_eq!(now.since(&start).total(), 6);
        // Counters restart when the maps are recreated: never negative.
        assert_eq!(start.since(&now).total(), 0);
    }

    #[test]
    fn ip_keys_round_trip_in_network_order() {
        let v4: IpAddr = "10.244.1.5".parse().unwrap();
        let k = ip_to_key(v4);
        assert_eq!(&k.addr[10..], &[0xff, 0xff, 10, 244, 1, 5]);
        assert_eq!(key_to_ip(&k), v4);
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(key_to_ip(&ip_to_key(v6)), v6);
    }
}
