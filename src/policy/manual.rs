//! Hand-made rules (`ebpfcni policy allow|deny|delete|list`): a source and
//! a destination (a pod address, a CIDR, or any), a protocol and a
//! destination port. A rule becomes one egress entry for the source's
//! identities and one ingress entry for the destination's, so it holds
//! whichever side is isolated. `any` means every address on both sides:
//! as a peer it is the datapath's wildcard; as the subject of an entry
//! (which the datapath looks up by exact identity) it becomes one entry
//! per identity known now plus the world, and a marker entry that
//! `register_pod` copies for every pod added later.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::Serialize;

use super::ports::block_end;
use super::{apply, current, Entry, PolicySet};
use crate::datapath::{
    proto_name, proto_number, Direction, Maps, RuleBook, IDENTITY_ANY, IDENTITY_CIDR_MIN, IDENTITY_HOST, IDENTITY_WORLD,
};
use crate::ipam::Cidr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Any,
    Prefix(Cidr),
}

impl FromStr for Peer {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "any" {
            return Ok(Peer::Any);
        }
        if s.contains('/') {
            return Ok(Peer::Prefix(s.parse::<Cidr>()?.as_network()));
        }
        let ip: std::net::IpAddr = s.parse().map_err(|_| anyhow::anyhow!("{s:?} is not an address, a CIDR or any"))?;
        Ok(Peer::Prefix(Cidr { addr: ip, prefix: if ip.is_ipv4() { 32 } else { 128 } }))
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Any => f.write_str("any"),
            Peer::Prefix(p) if p.prefix == 32 || p.prefix == 128 => write!(f, "{}", p.addr),
            Peer::Prefix(p) => write!(f, "{p}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub src: Peer,
    pub dst: Peer,
    /// 0: every protocol.
    pub proto: u8,
    /// 0: every port.
    pub port: u16,
    pub deny: bool,
}

/// The identities a rule side stands for: the pods (and node addresses)
/// inside the prefix now, and the prefix's own CIDR identity (with those
/// of narrower prefixes inside it) for the addresses in it that are
/// neither, creating it when needed.
fn identities_for(set: &mut PolicySet, peer: Peer) -> Vec<u32> {
    let Peer::Prefix(p) = peer else { return vec![IDENTITY_ANY] };
    let host = p.prefix == 32 || p.prefix == 128;
    if host {
        if let Some(id) = set.endpoints.get(&p.addr) {
            return vec![*id];
        }
    }
    let inside = |q: &Cidr| q.is_ipv4() == p.is_ipv4() && q.prefix >= p.prefix && p.contains(q.addr);
    let mut ids: Vec<u32> = set.endpoints.iter().filter(|(ip, _)| p.contains(**ip)).map(|(_, id)| *id).collect();
    ids.extend(set.cidrs.iter().filter(|(q, _)| inside(q)).map(|(_, id)| *id));
    if !set.cidrs.contains_key(&p) {
        let next = set.cidrs.values().copied().max().map_or(IDENTITY_CIDR_MIN, |m| m.max(IDENTITY_CIDR_MIN - 1) + 1);
        set.cidrs.insert(p, next);
        ids.push(next);
    }
    ids.retain(|id| *id != IDENTITY_HOST || host);
    ids.sort();
    ids.dedup();
    ids
}

/// The identities a rule side stands for as the subject of an entry:
/// `any` is the marker, the world and every identity known now.
fn subjects_for(set: &mut PolicySet, peer: Peer) -> Vec<u32> {
    if peer != Peer::Any {
        return identities_for(set, peer);
    }
    let mut ids: Vec<u32> = [IDENTITY_ANY, IDENTITY_WORLD]
        .into_iter()
        .chain(set.endpoints.values().copied())
        .chain(set.cidrs.values().copied())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The entries of one hand-made rule numbered `id`, added to `set` (with
/// the CIDR identities it needs).
fn expand(set: &mut PolicySet, id: u32, rule: &Rule) {
    let (src_peers, dst_peers) = (identities_for(set, rule.src), identities_for(set, rule.dst));
    let (src_subjects, dst_subjects) = (subjects_for(set, rule.src), subjects_for(set, rule.dst));
    let base = Entry {
        dir: Direction::Egress,
        subject: 0,
        peer: 0,
        proto: rule.proto,
        port: rule.port,
        port_bits: if rule.port == 0 { 0 } else { 16 },
        deny: rule.deny,
        rule: id,
    };
    for s in &src_subjects {
        for d in &dst_peers {
            set.entries.insert(Entry { subject: *s, peer: *d, ..base });
        }
    }
    for d in &dst_subjects {
        for s in &src_peers {
            set.entries.insert(Entry { dir: Direction::Ingress, subject: *d, peer: *s, ..base });
        }
    }
}

/// The hand-made rules of the rule book (synced ones carry a name and
/// live in the maps only).
fn hand_made(book: &RuleBook) -> Result<Vec<(u32, Rule)>> {
    Ok(book.all()?.into_iter().filter_map(|(id, text)| Rule::from_text(&text).map(|r| (id, r))).collect())
}

/// The active set with every hand-made rule's entries derived anew from
/// the whole book: rules whose entries share a map key never overwrite
/// each other (the key holds the strongest verdict, see `apply`), and
/// removing one leaves the others whole.
fn rebuild(maps: &Maps, rules: &[(u32, Rule)], forget: &[u32]) -> Result<()> {
    let mut set = current(maps)?;
    set.entries.retain(|e| !forget.contains(&e.rule) && !rules.iter().any(|(id, _)| *id == e.rule));
    // A CIDR's identity lives as long as some rule names it.
    let named: std::collections::BTreeSet<u32> = set.entries.iter().flat_map(|e| [e.subject, e.peer]).collect();
    set.cidrs.retain(|_, identity| named.contains(identity));
    for (id, rule) in rules {
        expand(&mut set, *id, rule);
    }
    apply(maps, &set)
}

/// Adds the rule to the rule book and the active set; returns its number.
/// The caller holds the pin directory's lock.
pub fn add_rule(maps: &Maps, book: &RuleBook, rule: &Rule) -> Result<u32> {
    if rule.port != 0 && !matches!(rule.proto, 6 | 17 | 132) {
        bail!("a port needs --proto tcp, udp or sctp");
    }
    let in_maps = current(maps)?.entries.iter().map(|e| e.rule).max().unwrap_or(0);
    let in_book = book.all()?.iter().map(|(r, _)| *r).max().unwrap_or(0);
    let id = in_maps.max(in_book) + 1;
    let mut rules = hand_made(book)?;
    rules.push((id, rule.clone()));
    book.put(id, &rule_text(rule))?;
    if let Err(e) = rebuild(maps, &rules, &[]) {
        let _ = book.remove(id);
        return Err(e);
    }
    Ok(id)
}

impl Rule {
    /// A hand-made rule back from its `rule_text`; None for synced rows.
    fn from_text(text: &str) -> Option<Rule> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        if v.get("name").is_some() {
            return None;
        }
        Some(Rule {
            src: v["src"].as_str()?.parse().ok()?,
            dst: v["dst"].as_str()?.parse().ok()?,
            proto: proto_number(v["proto"].as_str()?)?,
            port: u16::try_from(v["port"].as_u64()?).ok()?,
            deny: v["verdict"].as_str()? == "deny",
        })
    }
}

/// How `policy list` shows a hand-made rule: as the operator typed it.
pub fn rule_text(rule: &Rule) -> String {
    serde_json::json!({
        "verdict": if rule.deny { "deny" } else { "allow" },
        "src": rule.src.to_string(),
        "dst": rule.dst.to_string(),
        "proto": proto_name(rule.proto),
        "port": rule.port,
    })
    .to_string()
}

/// One row of `policy list`: a rule as written, and how many map entries
/// it became.
#[derive(Clone, Debug, Serialize)]
pub struct RuleRow {
    pub rule: u32,
    /// The NetworkPolicy (namespace/name) a synced rule comes from.
    pub name: String,
    pub verdict: String,
    pub src: String,
    pub dst: String,
    pub proto: String,
    pub port: u16,
    pub entries: usize,
}

/// The active rules, one row each, from the rule book (`rules`) and the
/// active set's entries.
pub fn list_rules(maps: &Maps, book: &[(u32, String)]) -> Result<Vec<RuleRow>> {
    let set = current(maps)?;
    let mut numbers: Vec<u32> = set.entries.iter().map(|e| e.rule).chain(book.iter().map(|(r, _)| *r)).collect();
    numbers.sort();
    numbers.dedup();
    let mut rows = Vec::new();
    for rule in numbers {
        let entries: Vec<&Entry> = set.entries.iter().filter(|e| e.rule == rule).collect();
        let text: serde_json::Value =
            book.iter().find(|(r, _)| *r == rule).and_then(|(_, t)| serde_json::from_str(t).ok()).unwrap_or_default();
        let field = |k: &str| text[k].as_str().unwrap_or("-").to_string();
        let any_deny = entries.iter().any(|e| e.deny);
        rows.push(RuleRow {
            rule,
            name: text["name"].as_str().unwrap_or("").to_string(),
            verdict: text["verdict"].as_str().unwrap_or(if any_deny { "deny" } else { "allow" }).to_string(),
            src: field("src"),
            dst: field("dst"),
            proto: text["proto"].as_str().map_or_else(
                || {
                    let mut p: Vec<String> = entries.iter().map(|e| proto_name(e.proto)).collect();
                    p.sort();
                    p.dedup();
                    p.join(",")
                },
                str::to_string,
            ),
            port: text["port"].as_u64().unwrap_or(0) as u16,
            entries: entries.len(),
        });
    }
    rows.sort_by_key(|r| r.rule);
    Ok(rows)
}

/// Removes rule `id` from the book and every entry of it from the active
/// set; false when there was no such rule. The caller holds the lock.
pub fn delete_rule(maps: &Maps, book: &RuleBook, id: u32) -> Result<bool> {
    let booked = book.all()?.iter().any(|(r, _)| *r == id);
    let mapped = current(maps)?.entries.iter().any(|e| e.rule == id);
    if !booked && !mapped {
        return Ok(false);
    }
    book.remove(id)?;
    rebuild(maps, &hand_made(book)?, &[id])?;
    Ok(true)
}

/// A rule entry as an operator reads it.
#[derive(Clone, Debug, Serialize)]
pub struct RuleView {
    pub rule: u32,
    pub direction: Direction,
    pub subject: String,
    pub peer: String,
    pub proto: String,
    /// 0: every port.
    pub port: u16,
    /// The last port of the entry's block (`port` for a single port).
    pub end_port: u16,
    pub verdict: &'static str,
}

/// Names an identity by what the ipcache maps to it.
fn identity_name(set: &PolicySet, id: u32) -> String {
    match id {
        IDENTITY_ANY => "any".into(),
        IDENTITY_WORLD => "world".into(),
        IDENTITY_HOST => "node".into(),
        _ => {
            // A pod's link-local address shares its identity: named only
            // when the identity has no other address.
            let link_local =
                |ip: &std::net::IpAddr| matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            let mine: Vec<&std::net::IpAddr> =
                set.endpoints.iter().filter(|(_, i)| **i == id).map(|(ip, _)| ip).collect();
            let named = if mine.iter().all(|ip| link_local(ip)) {
                mine
            } else {
                mine.into_iter().filter(|ip| !link_local(ip)).collect()
            };
            let mut prefixes: Vec<String> = named.iter().map(ToString::to_string).collect();
            prefixes.extend(set.cidrs.iter().filter(|(_, i)| **i == id).map(|(p, _)| Peer::Prefix(*p).to_string()));
            if prefixes.is_empty() {
                format!("identity {id}")
            } else {
                prefixes.join(",")
            }
        }
    }
}

/// Every entry of the active set, with identities named.
pub fn describe(maps: &Maps) -> Result<Vec<RuleView>> {
    let set = current(maps)?;
    Ok(set
        .entries
        .iter()
        .map(|e| RuleView {
            rule: e.rule,
            direction: e.dir,
            subject: identity_name(&set, e.subject),
            peer: identity_name(&set, e.peer),
            proto: proto_name(e.proto),
            port: e.port,
            end_port: if e.port_bits == 0 { 0 } else { block_end(e.port, e.port_bits) },
            verdict: if e.deny { "deny" } else { "allow" },
        })
        .collect())
}
