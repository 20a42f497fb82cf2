//! Policy's maps (ipcache, iprules, identity_flags): their entries as
//! user space speaks of them, and the key packings of src/bpf/ebpfcni.h.

use std::net::IpAddr;

use anyhow::{Context, Result};
use serde::Serialize;

use super::abi::{
    IPCACHE_PREFIX_FIXED, IPCACHE_PREFIX_V4_MAPPED, POLICY_DIR_MASK, POLICY_PREFIX_FIXED, POLICY_PREFIX_PROTO,
    POLICY_SET_SHIFT,
};
use super::{ip_to_key, key_to_ip, Maps};
use crate::datapath::skel::types::{
    identity_key, ip_key, ipcache_key, ipcache_kind, ipcache_value, policy_dir, policy_key, policy_value, verdict,
};
use crate::ipam::Cidr;

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

fn ipcache_key_of(set: u8, kind: IpcacheKind, prefix: &Cidr) -> ipcache_key {
    let bits = u32::from(prefix.prefix) + if prefix.is_ipv4() { IPCACHE_PREFIX_V4_MAPPED } else { 0 };
    ipcache_key {
        prefixlen: IPCACHE_PREFIX_FIXED + bits,
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
        dir_set: e.dir as u8 | (e.set << POLICY_SET_SHIFT),
        subject: e.subject,
        peer: e.peer,
        proto: e.proto,
        dport: port.to_be_bytes(),
        ..Default::default()
    }
}

fn ipcache_entry_of(k: &ipcache_key, identity: u32) -> IpcacheEntry {
    let ip = key_to_ip(&ip_key { addr: k.addr });
    let bits = k.prefixlen.saturating_sub(IPCACHE_PREFIX_FIXED);
    let prefix = if ip.is_ipv4() { bits.saturating_sub(IPCACHE_PREFIX_V4_MAPPED) } else { bits } as u8;
    let kind =
        if u32::from(k.kind) == ipcache_kind::IPCACHE_CIDR.0 { IpcacheKind::Cidr } else { IpcacheKind::Endpoint };
    IpcacheEntry { set: k.set, kind, prefix: Cidr { addr: ip, prefix }, identity }
}

fn policy_entry_of(k: &policy_key, v: &policy_value) -> PolicyEntry {
    let dir =
        if k.dir_set & POLICY_DIR_MASK == Direction::Ingress as u8 { Direction::Ingress } else { Direction::Egress };
    PolicyEntry {
        set: k.dir_set >> POLICY_SET_SHIFT,
        dir,
        subject: k.subject,
        peer: k.peer,
        proto: k.proto,
        port: u16::from_be_bytes(k.dport),
        port_bits: k.prefixlen.saturating_sub(POLICY_PREFIX_PROTO).min(16) as u8,
        verdict: Verdict::from_raw(v.own),
        applied: Verdict::from_raw(v.verdict),
        rule: v.rule,
    }
}

impl Maps {
    pub fn put_ipcache(&self, e: &IpcacheEntry) -> Result<()> {
        let value = ipcache_value { identity: e.identity };
        self.ipcache
            .put(&ipcache_key_of(e.set, e.kind, &e.prefix), &value)
            .with_context(|| format!("write ipcache {} -> {}", e.prefix, e.identity))
    }

    /// The identity `kind`'s part of the ipcache gives `ip` in `set`
    /// (longest prefix match), None when no prefix covers it.
    pub fn identity_in(&self, set: u8, kind: IpcacheKind, ip: IpAddr) -> Result<Option<u32>> {
        let host = Cidr { addr: ip, prefix: if ip.is_ipv4() { 32 } else { 128 } };
        let v = self.ipcache.get(&ipcache_key_of(set, kind, &host)).context("look up ipcache")?;
        Ok(v.map(|v| v.identity))
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
        self.ipcache.delete(&ipcache_key_of(set, kind, prefix)).with_context(|| format!("remove ipcache {prefix}"))
    }

    pub fn ipcache(&self) -> Result<Vec<IpcacheEntry>> {
        let mut out: Vec<IpcacheEntry> =
            self.ipcache.entries()?.iter().map(|(k, v)| ipcache_entry_of(k, v.identity)).collect();
        out.sort_by_key(|e| (e.set, e.kind, e.prefix.addr, e.prefix.prefix));
        Ok(out)
    }

    pub fn put_policy(&self, e: &PolicyEntry) -> Result<()> {
        let value = policy_value { verdict: e.applied as u8, own: e.verdict as u8, rule: e.rule, ..Default::default() };
        self.iprules.put(&policy_key_of(e), &value).context("write iprules entry")
    }

    pub fn remove_policy(&self, e: &PolicyEntry) -> Result<()> {
        self.iprules.delete(&policy_key_of(e)).context("remove iprules entry")
    }

    pub fn policy(&self) -> Result<Vec<PolicyEntry>> {
        let mut out: Vec<PolicyEntry> = self.iprules.entries()?.iter().map(|(k, v)| policy_entry_of(k, v)).collect();
        out.sort_by_key(|e| (e.set, e.dir, e.subject, e.peer, e.proto, e.port, e.port_bits));
        Ok(out)
    }

    pub fn put_identity_flags(&self, set: u8, identity: u32, flags: u32) -> Result<()> {
        let key = identity_key { identity, set: u32::from(set) };
        self.identity_flags.put(&key, &flags).with_context(|| format!("write isolation of identity {identity}"))
    }

    pub fn remove_identity_flags(&self, set: u8, identity: u32) -> Result<()> {
        let key = identity_key { identity, set: u32::from(set) };
        self.identity_flags.delete(&key).with_context(|| format!("remove isolation of identity {identity}"))
    }

    /// (set, identity, flags) for every isolated identity.
    pub fn identity_flags(&self) -> Result<Vec<(u8, u32, u32)>> {
        let mut out: Vec<(u8, u32, u32)> =
            self.identity_flags.entries()?.into_iter().map(|(k, flags)| (k.set as u8, k.identity, flags)).collect();
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipcache_prefix_lengths_cover_set_and_family() {
        let v4: Cidr = "10.0.0.0/8".parse().unwrap();
        let k = ipcache_key_of(1, IpcacheKind::Cidr, &v4);
        assert_eq!(k.prefixlen, 32 + 96 + 8);
        assert_eq!((k.set, k.kind), (1, 1));
        let v6: Cidr = "fd00::/64".parse().unwrap();
        assert_eq!(ipcache_key_of(0, IpcacheKind::Endpoint, &v6).prefixlen, 32 + 64);
        // And back, whatever the family.
        for (kind, c) in [
            (IpcacheKind::Cidr, v4),
            (IpcacheKind::Endpoint, v6),
            (IpcacheKind::Endpoint, "10.1.2.3/32".parse().unwrap()),
        ] {
            let e = ipcache_entry_of(&ipcache_key_of(1, kind, &c), 77);
            assert_eq!(e, IpcacheEntry { set: 1, kind, prefix: c, identity: 77 });
        }
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
        // Every entry reads back as it was written, both sets and directions.
        for (set, dir) in [(0, Direction::Egress), (1, Direction::Ingress), (1, Direction::Egress)] {
            for v in [Verdict::Allow, Verdict::Deny] {
                let e = PolicyEntry { set, dir, verdict: v, applied: v, ..e };
                let value = policy_value { verdict: v as u8, own: v as u8, rule: 9, ..Default::default() };
                assert_eq!(policy_entry_of(&policy_key_of(&e), &value), e);
            }
        }
    }
}
