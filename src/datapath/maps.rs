//! Typed access to the pinned maps. Keys and values are the skeleton's
//! generated types (declared once in src/bpf/ebpfcni.h); addresses go in
//! as `IpAddr` and come out as `IpAddr`, never as raw integers.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::Serialize;

use super::skel::types::{
    ct_key, ct_new_value, ct_value, endpoint_info, event_loss, event_source, frag_key, identity_key, identity_reserved,
    ip_key, ipcache_key, ipcache_kind, ipcache_value, isolation, pod_info, policy_dir, policy_key, policy_prefix,
    policy_value, settings, traffic_stats, verdict,
};
use crate::ipam::Cidr;

pub const ENDPOINT_F_TCX: u16 = 0x1;
pub const ENDPOINT_F_TC: u16 = 0x2;

// The values the C headers define as enums, through the skeleton's types.
pub const IDENTITY_ANY: u32 = identity_reserved::IDENTITY_ANY.0;
pub const IDENTITY_WORLD: u32 = identity_reserved::IDENTITY_WORLD.0;
pub const IDENTITY_HOST: u32 = identity_reserved::IDENTITY_HOST.0;
pub const IDENTITY_POD_MIN: u32 = identity_reserved::IDENTITY_POD_MIN.0;
pub const IDENTITY_CIDR_MIN: u32 = identity_reserved::IDENTITY_CIDR_MIN.0;

pub const ISOLATED_INGRESS: u32 = isolation::ISOLATED_INGRESS.0;
pub const ISOLATED_EGRESS: u32 = isolation::ISOLATED_EGRESS.0;

const POLICY_PREFIX_FIXED: u32 = policy_prefix::POLICY_PREFIX_FIXED.0;
const POLICY_PREFIX_PROTO: u32 = policy_prefix::POLICY_PREFIX_PROTO.0;

pub const SETTINGS_F_TRACE_FLOWS: u32 = 0x1;
pub const SETTINGS_F_POLICY: u32 = 0x2;
pub const SETTINGS_F_HAS_DENY: u32 = 0x4;

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
];

/// Views a generated map type as the bytes the kernel expects.
fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: the skeleton's types are #[repr(C)] plain data with explicit
    // padding fields, so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn from_bytes<T: Copy + Default>(b: &[u8]) -> T {
    let mut v = T::default();
    let n = b.len().min(std::mem::size_of::<T>());
    // SAFETY: T is plain data; at most size_of::<T>() bytes are copied.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), n) };
    v
}

fn ip_to_key(ip: IpAddr) -> ip_key {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    ip_key { addr: v6.octets() }
}

fn key_to_ip(k: &ip_key) -> IpAddr {
    let v6 = Ipv6Addr::from(k.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Deletes a key; a missing one is fine.
fn delete(map: &MapHandle, key: &[u8], what: &str) -> Result<()> {
    match map.delete(key) {
        Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => Err(e).with_context(|| format!("remove {what}")),
        _ => Ok(()),
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
    pub drop_policy: u64,
    pub drop_no_endpoint: u64,
    pub drop_parse: u64,
}

/// Which part of the ipcache an entry lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpcacheKind {
    /// The exact address of a pod or of the node.
    Endpoint,
    /// A prefix a rule names: what addresses that are neither map to.
    Cidr,
}

impl IpcacheKind {
    fn raw(self) -> u8 {
        match self {
            IpcacheKind::Endpoint => ipcache_kind::IPCACHE_ENDPOINT.0 as u8,
            IpcacheKind::Cidr => ipcache_kind::IPCACHE_CIDR.0 as u8,
        }
    }
}

/// An address prefix and the identity it maps to, in policy set `set`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpcacheEntry {
    pub set: u8,
    pub kind: IpcacheKind,
    pub prefix: Cidr,
    pub identity: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress = policy_dir::POLICY_EGRESS.0 as isize,
    Ingress = policy_dir::POLICY_INGRESS.0 as isize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow = verdict::VERDICT_ALLOW.0 as isize,
    Deny = verdict::VERDICT_DENY.0 as isize,
}

impl Verdict {
    fn from_raw(v: u8) -> Self {
        if u32::from(v) == verdict::VERDICT_DENY.0 {
            Verdict::Deny
        } else {
            Verdict::Allow
        }
    }
}

/// One `iprules` entry: traffic between `subject` and `peer` identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyEntry {
    pub set: u8,
    pub dir: Direction,
    pub subject: u32,
    /// IDENTITY_ANY: every peer.
    pub peer: u32,
    /// 0: every protocol (and port).
    pub proto: u8,
    /// The first port of an aligned block of 2^(16 - port_bits) ports.
    pub port: u16,
    /// 0: every port; 16: `port` alone.
    pub port_bits: u8,
    /// The entry's own verdict.
    pub verdict: Verdict,
    /// What the datapath applies: Deny when an entry of the same
    /// direction, subject and peer covering this one denies.
    pub applied: Verdict,
    pub rule: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub active_set: u32,
    pub generation: u32,
    pub default_deny: bool,
    pub flags: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackEntry {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub last_seen_ns: u64,
    pub generation: u32,
    /// A reply was seen (the entry lives in `conntrack`, else in `ct_new`).
    pub established: bool,
}

/// How full the conntrack tables are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackFill {
    pub established: usize,
    pub established_max: u32,
    pub new: usize,
    pub new_max: u32,
}

/// A flow-keyed entry (conntrack, ct_new, hostflows) as user space reads it.
fn flow_entry(k: &ct_key, v: ct_value, established: bool) -> ConntrackEntry {
    ConntrackEntry {
        src: key_to_ip(&k.src),
        dst: key_to_ip(&k.dst),
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
        last_seen_ns: v.last_seen_ns,
        generation: v.generation,
        established,
    }
}

/// Deletes every entry whose key `doomed` picks; returns how many. The
/// keys are collected first: deleting the key an iteration stands on makes
/// the kernel start over from the first key (quadratic).
fn delete_where(map: &MapHandle, what: &str, doomed: impl Fn(&[u8]) -> bool) -> Result<usize> {
    let keys: Vec<Vec<u8>> = map.keys().filter(|k| doomed(k)).collect();
    for key in &keys {
        delete(map, key, what)?;
    }
    Ok(keys.len())
}

pub struct Maps {
    pub endpoints: MapHandle,
    pub pods: MapHandle,
    pub stats: MapHandle,
    pub ipcache: MapHandle,
    pub iprules: MapHandle,
    pub identity_flags: MapHandle,
    pub settings: MapHandle,
    pub conntrack: MapHandle,
    pub ct_new: MapHandle,
    pub ct_budget: MapHandle,
    pub frags: MapHandle,
    pub hostflows: MapHandle,
    pub events: MapHandle,
    pub events_lost: MapHandle,
    pub event_limit: MapHandle,
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

fn ipcache_key_of(set: u8, kind: IpcacheKind, prefix: &Cidr) -> ipcache_key {
    let bits = if prefix.is_ipv4() { 96 + u32::from(prefix.prefix) } else { u32::from(prefix.prefix) };
    ipcache_key {
        prefixlen: 32 + bits,
        set,
        kind: kind.raw(),
        addr: ip_to_key(prefix.network()).addr,
        ..Default::default()
    }
}

fn policy_key_of(e: &PolicyEntry) -> policy_key {
    let (prefixlen, port) = if e.proto == 0 {
        (POLICY_PREFIX_FIXED, 0)
    } else {
        let bits = u32::from(e.port_bits.min(16));
        let mask = if bits == 0 { 0 } else { u16::MAX << (16 - bits) };
        (POLICY_PREFIX_PROTO + bits, e.port & mask)
    };
    policy_key {
        prefixlen,
        dir_set: e.dir as u8 | (e.set << 4),
        subject: e.subject,
        peer: e.peer,
        proto: e.proto,
        dport: port.to_be_bytes(),
        ..Default::default()
    }
}

impl Maps {
    /// Opens the maps pinned in a network's pin directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let open = |name: &str| {
            let path = dir.join(name);
            MapHandle::from_pinned_path(&path).with_context(|| format!("open pinned map {}", path.display()))
        };
        Ok(Maps {
            endpoints: open("endpoints")?,
            pods: open("pods")?,
            stats: open("stats")?,
            ipcache: open("ipcache")?,
            iprules: open("iprules")?,
            identity_flags: open("identity_flags")?,
            settings: open("settings")?,
            conntrack: open("conntrack")?,
            ct_new: open("ct_new")?,
            ct_budget: open("ct_budget")?,
            frags: open("frags")?,
            hostflows: open("hostflows")?,
            events: open("events")?,
            events_lost: open("events_lost")?,
            event_limit: open("event_limit")?,
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
        self.endpoints
            .update(as_bytes(&ip_to_key(ep.ip)), as_bytes(&value), MapFlags::ANY)
            .with_context(|| format!("write endpoint {}", ep.ip))
    }

    pub fn remove_endpoint(&self, ip: IpAddr) -> Result<()> {
        delete(&self.endpoints, as_bytes(&ip_to_key(ip)), &format!("endpoint {ip}"))
    }

    pub fn endpoint(&self, ip: IpAddr) -> Result<Option<EndpointEntry>> {
        let raw = self
            .endpoints
            .lookup(as_bytes(&ip_to_key(ip)), MapFlags::ANY)
            .with_context(|| format!("look up endpoint {ip}"))?;
        Ok(raw.map(|v| {
            let info: endpoint_info = from_bytes(&v);
            EndpointEntry { ip, ifindex: info.ifindex, mac: info.mac, flags: info.flags }
        }))
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointEntry>> {
        let mut out = Vec::new();
        for key in self.endpoints.keys() {
            let ip = key_to_ip(&from_bytes::<ip_key>(&key));
            if let Some(ep) = self.endpoint(ip)? {
                out.push(ep);
            }
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    pub fn put_pod(&self, pod: &PodEntry) -> Result<()> {
        let value = pod_info { addr: ip_to_key(pod.addr), mac: pod.mac, ..Default::default() };
        self.pods
            .update(&pod.ifindex.to_ne_bytes(), as_bytes(&value), MapFlags::ANY)
            .with_context(|| format!("write pod of ifindex {}", pod.ifindex))
    }

    pub fn remove_pod(&self, ifindex: u32) -> Result<()> {
        let source = event_source { ifindex, ..Default::default() };
        delete(&self.event_limit, as_bytes(&source), &format!("event rate of ifindex {ifindex}"))?;
        delete(&self.ct_budget, &ifindex.to_ne_bytes(), &format!("conntrack budget of ifindex {ifindex}"))?;
        delete(&self.pods, &ifindex.to_ne_bytes(), &format!("pod of ifindex {ifindex}"))
    }

    pub fn pod(&self, ifindex: u32) -> Result<Option<PodEntry>> {
        let raw = self.pods.lookup(&ifindex.to_ne_bytes(), MapFlags::ANY).context("read pods")?;
        Ok(raw.map(|r| {
            let info: pod_info = from_bytes(&r);
            PodEntry { ifindex, addr: key_to_ip(&info.addr), mac: info.mac }
        }))
    }

    pub fn pods(&self) -> Result<Vec<PodEntry>> {
        let mut out = Vec::new();
        for key in self.pods.keys() {
            let Some(raw) = self.pods.lookup(&key, MapFlags::ANY).context("read pods")? else { continue };
            let info: pod_info = from_bytes(&raw);
            let ifindex = u32::from_ne_bytes(key[..4].try_into().expect("4-byte key"));
            out.push(PodEntry { ifindex, addr: key_to_ip(&info.addr), mac: info.mac });
        }
        out.sort_by_key(|p| p.ifindex);
        Ok(out)
    }

    /// Counters per pod address, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<StatsEntry>> {
        let mut out = Vec::new();
        for key in self.stats.keys() {
            let ip = key_to_ip(&from_bytes::<ip_key>(&key));
            let Some(per_cpu) = self.stats.lookup_percpu(&key, MapFlags::ANY).context("read stats")? else {
                continue;
            };
            let mut sum = StatsEntry {
                ip,
                packets: 0,
                bytes: 0,
                redirected: 0,
                passed: 0,
                drop_spoofed: 0,
                drop_policy: 0,
                drop_no_endpoint: 0,
                drop_parse: 0,
            };
            for raw in per_cpu {
                let s: traffic_stats = from_bytes(&raw);
                sum.packets += s.packets;
                sum.bytes += s.bytes;
                sum.redirected += s.redirected;
                sum.passed += s.passed;
                sum.drop_spoofed += s.drop_spoofed;
                sum.drop_policy += s.drop_policy;
                sum.drop_no_endpoint += s.drop_no_endpoint;
                sum.drop_parse += s.drop_parse;
            }
            out.push(sum);
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    pub fn remove_stats(&self, ip: IpAddr) -> Result<()> {
        delete(&self.stats, as_bytes(&ip_to_key(ip)), &format!("stats of {ip}"))
    }

    pub fn put_ipcache(&self, e: &IpcacheEntry) -> Result<()> {
        let value = ipcache_value { identity: e.identity };
        self.ipcache
            .update(as_bytes(&ipcache_key_of(e.set, e.kind, &e.prefix)), as_bytes(&value), MapFlags::ANY)
            .with_context(|| format!("write ipcache {} -> {}", e.prefix, e.identity))
    }

    /// The identity `kind`'s part of the ipcache gives `ip` in `set`
    /// (longest prefix match), None when no prefix covers it.
    pub fn identity_in(&self, set: u8, kind: IpcacheKind, ip: IpAddr) -> Result<Option<u32>> {
        let host = Cidr { addr: ip, prefix: if ip.is_ipv4() { 32 } else { 128 } };
        let raw = self
            .ipcache
            .lookup(as_bytes(&ipcache_key_of(set, kind, &host)), MapFlags::ANY)
            .context("look up ipcache")?;
        Ok(raw.map(|r| from_bytes::<ipcache_value>(&r).identity))
    }

    /// The identity the datapath gives `ip` in `set`: its endpoint entry,
    /// else the longest rule prefix holding it.
    pub fn identity_of(&self, set: u8, ip: IpAddr) -> Result<Option<u32>> {
        match self.identity_in(set, IpcacheKind::Endpoint, ip)? {
            Some(id) => Ok(Some(id)),
            None => self.identity_in(set, IpcacheKind::Cidr, ip),
        }
    }

    pub fn remove_ipcache(&self, set: u8, kind: IpcacheKind, prefix: &Cidr) -> Result<()> {
        delete(&self.ipcache, as_bytes(&ipcache_key_of(set, kind, prefix)), &format!("ipcache {prefix}"))
    }

    pub fn ipcache(&self) -> Result<Vec<IpcacheEntry>> {
        let mut out = Vec::new();
        for key in self.ipcache.keys() {
            let Some(raw) = self.ipcache.lookup(&key, MapFlags::ANY).context("read ipcache")? else { continue };
            let k: ipcache_key = from_bytes(&key);
            let v: ipcache_value = from_bytes(&raw);
            let ip = key_to_ip(&ip_key { addr: k.addr });
            let bits = k.prefixlen.saturating_sub(32);
            let prefix = if ip.is_ipv4() { bits.saturating_sub(96) } else { bits } as u8;
            let kind = if u32::from(k.kind) == ipcache_kind::IPCACHE_CIDR.0 {
                IpcacheKind::Cidr
            } else {
                IpcacheKind::Endpoint
            };
            out.push(IpcacheEntry { set: k.set, kind, prefix: Cidr { addr: ip, prefix }, identity: v.identity });
        }
        out.sort_by_key(|e| (e.set, e.kind, e.prefix.addr, e.prefix.prefix));
        Ok(out)
    }

    pub fn put_policy(&self, e: &PolicyEntry) -> Result<()> {
        let value = policy_value { verdict: e.applied as u8, own: e.verdict as u8, rule: e.rule, ..Default::default() };
        self.iprules.update(as_bytes(&policy_key_of(e)), as_bytes(&value), MapFlags::ANY).context("write iprules entry")
    }

    pub fn remove_policy(&self, e: &PolicyEntry) -> Result<()> {
        delete(&self.iprules, as_bytes(&policy_key_of(e)), "iprules entry")
    }

    pub fn policy(&self) -> Result<Vec<PolicyEntry>> {
        let mut out = Vec::new();
        for key in self.iprules.keys() {
            let Some(raw) = self.iprules.lookup(&key, MapFlags::ANY).context("read iprules")? else { continue };
            let k: policy_key = from_bytes(&key);
            let v: policy_value = from_bytes(&raw);
            let dir = if k.dir_set & 0xf == Direction::Ingress as u8 { Direction::Ingress } else { Direction::Egress };
            let port_bits = k.prefixlen.saturating_sub(POLICY_PREFIX_PROTO).min(16) as u8;
            out.push(PolicyEntry {
                set: k.dir_set >> 4,
                dir,
                subject: k.subject,
                peer: k.peer,
                proto: k.proto,
                port: u16::from_be_bytes(k.dport),
                port_bits,
                verdict: Verdict::from_raw(v.own),
                applied: Verdict::from_raw(v.verdict),
                rule: v.rule,
            });
        }
        out.sort_by_key(|e| (e.set, e.dir, e.subject, e.peer, e.proto, e.port, e.port_bits));
        Ok(out)
    }

    pub fn put_identity_flags(&self, set: u8, identity: u32, flags: u32) -> Result<()> {
        let key = identity_key { identity, set: u32::from(set) };
        self.identity_flags
            .update(as_bytes(&key), &flags.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("write isolation of identity {identity}"))
    }

    pub fn remove_identity_flags(&self, set: u8, identity: u32) -> Result<()> {
        let key = identity_key { identity, set: u32::from(set) };
        delete(&self.identity_flags, as_bytes(&key), &format!("isolation of identity {identity}"))
    }

    /// (set, identity, flags) for every isolated identity.
    pub fn identity_flags(&self) -> Result<Vec<(u8, u32, u32)>> {
        let mut out = Vec::new();
        for key in self.identity_flags.keys() {
            let Some(raw) = self.identity_flags.lookup(&key, MapFlags::ANY).context("read identity_flags")? else {
                continue;
            };
            let k: identity_key = from_bytes(&key);
            out.push((k.set as u8, k.identity, u32::from_ne_bytes(raw[..4].try_into().expect("u32 value"))));
        }
        out.sort();
        Ok(out)
    }

    pub fn settings(&self) -> Result<Settings> {
        let raw = self.settings.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).context("read settings")?;
        let s: settings = raw.map(|r| from_bytes(&r)).unwrap_or_default();
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
        self.settings.update(&0u32.to_ne_bytes(), as_bytes(&value), MapFlags::ANY).context("write settings")
    }

    /// Forgets every tracked connection from or to one of `ips` (a pod
    /// that is gone); returns how many.
    pub fn remove_conntrack_of(&self, ips: &[IpAddr]) -> Result<usize> {
        if ips.is_empty() {
            return Ok(0);
        }
        self.retain_conntrack(|src, dst| !ips.contains(&src) && !ips.contains(&dst))
    }

    /// Keeps only the tracked connections and host flows `keep(src, dst)`
    /// accepts (both maps are keyed by flow); returns how many went.
    pub fn retain_conntrack(&self, keep: impl Fn(IpAddr, IpAddr) -> bool) -> Result<usize> {
        let flow = |key: &[u8]| {
            let k: ct_key = from_bytes(key);
            !keep(key_to_ip(&k.src), key_to_ip(&k.dst))
        };
        let mut n = 0;
        for (map, what) in
            [(&self.conntrack, "tracked connection"), (&self.ct_new, "new connection"), (&self.hostflows, "host flow")]
        {
            n += delete_where(map, what, flow)?;
        }
        // Fragmented datagrams being let through, keyed by their ends too.
        delete_where(&self.frags, "fragmented datagram", |key| {
            let k: frag_key = from_bytes(key);
            !keep(key_to_ip(&k.src), key_to_ip(&k.dst))
        })?;
        Ok(n)
    }

    /// Flows from a pod of this node that reached another through the
    /// host (their replies go back that way), as they arrived.
    pub fn hostflows(&self) -> Result<Vec<ConntrackEntry>> {
        let mut out: Vec<ConntrackEntry> =
            self.hostflows.keys().map(|key| flow_entry(&from_bytes(&key), ct_value::default(), false)).collect();
        out.sort_by_key(|c| (c.src, c.dst, c.sport, c.dport));
        Ok(out)
    }

    /// The events lost so far.
    pub fn events_lost(&self) -> Result<EventLoss> {
        let mut sum = EventLoss::default();
        let per_cpu = self.events_lost.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY).context("read events_lost")?;
        for raw in per_cpu.into_iter().flatten() {
            let l: event_loss = from_bytes(&raw);
            sum.ring_full += l.ring_full;
            sum.rate_limited += l.rate_limited;
        }
        Ok(sum)
    }

    /// Tracked flows, established and new, in their original direction.
    pub fn conntrack(&self) -> Result<Vec<ConntrackEntry>> {
        let mut out = Vec::new();
        for (map, established) in [(&self.conntrack, true), (&self.ct_new, false)] {
            for key in map.keys() {
                let Some(raw) = map.lookup(&key, MapFlags::ANY).context("read conntrack")? else { continue };
                let k: ct_key = from_bytes(&key);
                let v: ct_value = if established { from_bytes(&raw) } else { from_bytes::<ct_new_value>(&raw).ct };
                out.push(flow_entry(&k, v, established));
            }
        }
        out.sort_by_key(|c| (c.src, c.dst, c.sport, c.dport));
        Ok(out)
    }

    /// Entries in the two conntrack tables against their sizes.
    pub fn conntrack_fill(&self) -> Result<ConntrackFill> {
        let count = |m: &MapHandle| m.keys().count();
        Ok(ConntrackFill {
            established: count(&self.conntrack),
            established_max: self.conntrack.info().context("conntrack map info")?.info.max_entries,
            new: count(&self.ct_new),
            new_max: self.ct_new.info().context("ct_new map info")?.info.max_entries,
        })
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

    pub fn decode(raw: &[u8]) -> Event {
        let e: event = from_bytes(raw);
        Event {
            ts_ns: e.ts_ns,
            src: key_to_ip(&e.src),
            dst: key_to_ip(&e.dst),
            sport: e.sport,
            dport: e.dport,
            proto: proto_name(e.proto),
            verdict: match e.verdict {
                0 => "passed",
                1 => "redirected",
                _ => "dropped",
            },
            reason: match e.reason {
                0 => "",
                1 => "spoofed-ip",
                2 => "spoofed-mac",
                3 => "spoofed-arp",
                4 => "spoofed-nd",
                5 => "policy",
                6 => "no-endpoint",
                8 => "ethertype",
                9 => "router-message",
                10 => "conntrack-full",
                _ => "parse-error",
            },
            direction: if e.dir == 2 { "to-pod" } else { "from-pod" },
            ifindex: e.ifindex,
        }
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

    #[test]
    fn endpoint_value_layout_matches_c() {
        // struct endpoint_info { __u32 ifindex; __u8 mac[6]; __u16 flags; }
        let v = endpoint_info { ifindex: 7, mac: [1, 2, 3, 4, 5, 6], flags: ENDPOINT_F_TCX };
        let b = as_bytes(&v);
        assert_eq!(b.len(), 12);
        assert_eq!(&b[4..10], &[1, 2, 3, 4, 5, 6]);
        let back: endpoint_info = from_bytes(b);
        assert_eq!(back.ifindex, 7);
    }

    #[test]
    fn ipcache_prefix_lengths_cover_set_and_family() {
        let v4: Cidr = "10.0.0.0/8".parse().unwrap();
        let k = ipcache_key_of(1, IpcacheKind::Cidr, &v4);
        assert_eq!(k.prefixlen, 32 + 96 + 8);
        assert_eq!((k.set, k.kind), (1, 1));
        let v6: Cidr = "fd00::/64".parse().unwrap();
        assert_eq!(ipcache_key_of(0, IpcacheKind::Endpoint, &v6).prefixlen, 32 + 64);
        assert_eq!(std::mem::size_of::<ipcache_key>(), 24);
        assert_eq!(std::mem::size_of::<policy_key>(), 20);
    }

    #[test]
    fn policy_keys_pack_direction_and_set() {
        let e = PolicyEntry {
            set: 1,
            dir: Direction::Ingress,
            subject: 300,
            peer: 0,
            proto: 6,
            port: 80,
            port_bits: 16,
            verdict: Verdict::Allow,
            applied: Verdict::Allow,
            rule: 9,
        };
        let k = policy_key_of(&e);
        assert_eq!(k.dir_set, 0x12);
        assert_eq!((k.subject, k.peer, k.proto, k.dport), (300, 0, 6, [0, 80]));
        assert_eq!(k.prefixlen, POLICY_PREFIX_PROTO + 16);
        // A block of 1024 ports from 1024: the 6 high bits of the port.
        let block = policy_key_of(&PolicyEntry { port: 1024 + 5, port_bits: 6, ..e });
        assert_eq!((block.prefixlen, block.dport), (POLICY_PREFIX_PROTO + 6, [4, 0]));
        let any = policy_key_of(&PolicyEntry { proto: 0, port: 0, port_bits: 0, ..e });
        assert_eq!((any.prefixlen, any.proto), (POLICY_PREFIX_FIXED, 0));
    }
}
