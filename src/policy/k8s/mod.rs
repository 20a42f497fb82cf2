//! Kubernetes NetworkPolicy: the complete rule set the objects of a
//! cluster mean (`policy sync`; the agent reuses it unchanged).
//!
//! - A pod identity stands for pods alike in everything policy can tell
//!   apart: namespace, labels, named container ports, address family and
//!   the most specific ipBlock prefix holding their address. So a rule
//!   about any of these is exact on identities, and a pod's address has
//!   one ipcache entry, in the endpoint part, that no ipBlock replaces.
//! - Every ipBlock prefix (cidr and except) gets a CIDR identity of its
//!   own in the ipcache's CIDR part, for addresses that are not pods.
//! - An ipBlock matches every address inside its cidr and outside its
//!   excepts, pods included: its peers are the CIDR identities of the
//!   prefixes inside it and the pod identities whose prefix is inside it.
//! - Named ports resolve per destination pod (ingress: the selected pod's
//!   own; egress: the destination's), protocol included; they never match
//!   an address that is not a pod.
//! - A pod selected by a policy of type Ingress (Egress) is isolated in
//!   that direction; only what some rule allows passes, and its node
//!   always reaches it (the datapath exempts the node's addresses).
//! - A policy or rule that cannot be enforced as written is reported; its
//!   pods stay isolated in its directions and the rule allows nothing.

mod objects;
mod select;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use self::objects::{protocol_number, Labels, Objects};
use super::{port_blocks, Entry, PolicySet, PER_POD_IDENTITY_BASE};
use crate::datapath::{
    Direction, IDENTITY_ANY, IDENTITY_CIDR_MIN, IDENTITY_HOST, IDENTITY_POD_MIN, ISOLATED_EGRESS, ISOLATED_INGRESS,
};
use crate::ipam::Cidr;

/// The rule set, and what could not be enforced as written.
pub struct Compiled {
    pub set: PolicySet,
    /// "NetworkPolicy ns/name: why", one per broken policy or rule.
    pub errors: Vec<String>,
}

/// What policy can tell apart about a pod address.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Group {
    namespace: String,
    labels: Labels,
    named_ports: BTreeMap<String, (u8, u16)>,
    v4: bool,
    /// The longest ipBlock prefix holding the address.
    class: Option<Cidr>,
}

struct Cluster {
    /// Pod identity -> what its pods share.
    groups: BTreeMap<u32, Group>,
    namespaces: BTreeMap<String, Labels>,
    cidrs: BTreeMap<Cidr, u32>,
}

/// Whether prefix `q` lies inside `outer`.
fn inside(outer: &Cidr, q: &Cidr) -> bool {
    q.is_ipv4() == outer.is_ipv4() && q.prefix >= outer.prefix && outer.contains(q.addr)
}

/// The longest prefix of `set` holding `ip`.
fn longest_prefix(set: &BTreeSet<Cidr>, ip: IpAddr) -> Option<Cidr> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (0..=max).rev().map(|len| Cidr { addr: ip, prefix: len }.as_network()).find(|c| set.contains(c))
}

fn ip_block_prefixes(pol: &NetworkPolicy) -> Vec<Cidr> {
    let spec = pol.spec.as_ref();
    let ingress = spec.and_then(|s| s.ingress.as_ref()).into_iter().flatten().flat_map(|r| r.from.iter().flatten());
    let egress = spec.and_then(|s| s.egress.as_ref()).into_iter().flatten().flat_map(|r| r.to.iter().flatten());
    ingress
        .chain(egress)
        .filter_map(|p| p.ip_block.as_ref())
        .flat_map(|b| std::iter::once(&b.cidr).chain(b.except.iter().flatten()))
        .filter_map(|s| s.parse::<Cidr>().ok().map(|c| c.as_network()))
        .collect()
}

/// A rule's peers (`from` or `to`) and ports.
type RuleParts<'a> = (Option<&'a Vec<NetworkPolicyPeer>>, Option<&'a Vec<NetworkPolicyPort>>);

/// One port of a rule, validated.
enum PortSpec {
    /// Every protocol and port (a rule without ports).
    All,
    /// (protocol, aligned blocks of ports; one (0, 0) block: every port).
    Numeric(u8, Vec<(u16, u8)>),
    Named(u8, String),
}

fn port_spec(p: &NetworkPolicyPort) -> Result<PortSpec> {
    let proto = protocol_number(p.protocol.as_deref())?;
    match (&p.port, p.end_port) {
        (None, None) => Ok(PortSpec::Numeric(proto, vec![(0, 0)])),
        (None, Some(_)) => bail!("endPort without port"),
        (Some(IntOrString::String(name)), None) => Ok(PortSpec::Named(proto, name.clone())),
        (Some(IntOrString::String(name)), Some(_)) => bail!("endPort with the named port {name:?}"),
        (Some(IntOrString::Int(n)), end) => {
            let first = u16::try_from(*n).ok().filter(|n| *n >= 1).ok_or_else(|| anyhow!("port {n} out of range"))?;
            let last = match end {
                None => first,
                Some(e) if e > 65535 => bail!("endPort {e} above 65535"),
                Some(e) if e < i32::from(first) => bail!("endPort {e} below port {first}"),
                Some(e) => e as u16,
            };
            Ok(PortSpec::Numeric(proto, port_blocks(first, last)))
        }
    }
}

/// The peers a `from`/`to` list stands for.
enum Peers {
    Any,
    Ids(BTreeSet<u32>),
}

impl Cluster {
    fn pods_selected(&self, namespaces: &[&String], sel: Option<&LabelSelector>) -> BTreeSet<u32> {
        self.groups
            .iter()
            .filter(|(_, g)| namespaces.contains(&&g.namespace))
            .filter(|(_, g)| sel.is_none_or(|s| select::selects(s, &g.labels)))
            .map(|(id, _)| *id)
            .collect()
    }

    fn peer(&self, peer: &NetworkPolicyPeer, policy_ns: &String) -> Result<BTreeSet<u32>> {
        if let Some(block) = &peer.ip_block {
            if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                bail!("a peer with ipBlock cannot also have selectors");
            }
            let cidr: Cidr = block.cidr.parse().with_context(|| format!("ipBlock cidr {:?}", block.cidr))?;
            let cidr = cidr.as_network();
            let excepts: Vec<Cidr> = block
                .except
                .iter()
                .flatten()
                .map(|s| s.parse::<Cidr>().map(|c| c.as_network()).with_context(|| format!("ipBlock except {s:?}")))
                .collect::<Result<_>>()?;
            let matches = |q: &Cidr| inside(&cidr, q) && !excepts.iter().any(|e| inside(e, q));
            let mut out: BTreeSet<u32> = self.cidrs.iter().filter(|(q, _)| matches(q)).map(|(_, id)| *id).collect();
            out.extend(self.groups.iter().filter(|(_, g)| g.class.as_ref().is_some_and(matches)).map(|(id, _)| *id));
            return Ok(out);
        }
        for sel in [&peer.pod_selector, &peer.namespace_selector].into_iter().flatten() {
            select::validate(sel)?;
        }
        let namespaces: Vec<&String> = match &peer.namespace_selector {
            Some(sel) => self.namespaces.iter().filter(|(_, l)| select::selects(sel, l)).map(|(n, _)| n).collect(),
            None if peer.pod_selector.is_some() => vec![policy_ns],
            None => bail!("a peer needs ipBlock, podSelector or namespaceSelector"),
        };
        Ok(self.pods_selected(&namespaces, peer.pod_selector.as_ref()))
    }

    fn peers(&self, list: Option<&Vec<NetworkPolicyPeer>>, policy_ns: &String) -> Result<Peers> {
        let Some(items) = list.filter(|l| !l.is_empty()) else { return Ok(Peers::Any) };
        let mut out = BTreeSet::new();
        for p in items {
            out.extend(self.peer(p, policy_ns)?);
        }
        Ok(Peers::Ids(out))
    }

    fn named_port(&self, id: u32, proto: u8, name: &str) -> Option<u16> {
        let (p, port) = self.groups.get(&id)?.named_ports.get(name)?;
        (*p == proto).then_some(*port)
    }

    /// The entries of one rule for the selected identities.
    fn rule_entries(
        &self,
        dir: Direction,
        selected: &BTreeSet<u32>,
        peers: &Peers,
        ports: Option<&Vec<NetworkPolicyPort>>,
        rule: u32,
    ) -> Result<Vec<Entry>> {
        let specs: Vec<PortSpec> = match ports.filter(|p| !p.is_empty()) {
            None => vec![PortSpec::All],
            Some(ports) => ports.iter().map(port_spec).collect::<Result<_>>()?,
        };
        let peer_ids: Vec<u32> = match peers {
            Peers::Any => vec![IDENTITY_ANY],
            Peers::Ids(ids) => ids.iter().copied().collect(),
        };
        let entry = |subject, peer, proto, port, port_bits| Entry {
            dir,
            subject,
            peer,
            proto,
            port,
            port_bits,
            deny: false,
            rule,
        };
        let mut out = Vec::new();
        for subject in selected {
            for spec in &specs {
                match spec {
                    PortSpec::All => out.extend(peer_ids.iter().map(|p| entry(*subject, *p, 0, 0, 0))),
                    PortSpec::Numeric(proto, blocks) => {
                        for (port, bits) in blocks {
                            out.extend(peer_ids.iter().map(|p| entry(*subject, *p, *proto, *port, *bits)));
                        }
                    }
                    PortSpec::Named(proto, name) if dir == Direction::Ingress => {
                        if let Some(port) = self.named_port(*subject, *proto, name) {
                            out.extend(peer_ids.iter().map(|p| entry(*subject, *p, *proto, port, 16)));
                        }
                    }
                    PortSpec::Named(proto, name) => {
                        // Per destination pod; never an address that is not one.
                        let dests: Vec<u32> = match peers {
                            Peers::Any => self.groups.keys().copied().collect(),
                            Peers::Ids(ids) => ids.iter().copied().filter(|id| self.groups.contains_key(id)).collect(),
                        };
                        for d in dests {
                            if let Some(port) = self.named_port(d, *proto, name) {
                                out.push(entry(*subject, d, *proto, port, 16));
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// policyTypes as the API server defaults them: Ingress always, Egress
/// when there is at least one egress rule. Unknown types are errors.
fn policy_types(declared: Option<&Vec<String>>, has_egress_rules: bool) -> (bool, bool, Option<String>) {
    match declared.filter(|t| !t.is_empty()) {
        None => (true, has_egress_rules, None),
        Some(types) => {
            let bad: Vec<&String> = types.iter().filter(|t| *t != "Ingress" && *t != "Egress").collect();
            let ingress = types.iter().any(|t| t == "Ingress");
            let egress = types.iter().any(|t| t == "Egress");
            if bad.is_empty() {
                (ingress, egress, None)
            } else if !ingress && !egress {
                (true, true, Some(format!("unknown policyTypes {bad:?}")))
            } else {
                (ingress, egress, Some(format!("unknown policyTypes {bad:?}")))
            }
        }
    }
}

fn identities(objects: &Objects, prefixes: &BTreeSet<Cidr>) -> (BTreeMap<u32, Group>, Vec<(IpAddr, u32)>) {
    let mut by_group: BTreeMap<Group, Vec<IpAddr>> = BTreeMap::new();
    for pod in &objects.pods {
        for ip in &pod.ips {
            let g = Group {
                namespace: pod.namespace.clone(),
                labels: pod.labels.clone(),
                named_ports: pod.named_ports.clone(),
                v4: ip.is_ipv4(),
                class: longest_prefix(prefixes, *ip),
            };
            by_group.entry(g).or_default().push(*ip);
        }
    }
    let mut groups = BTreeMap::new();
    let mut addrs = Vec::new();
    for ((g, ips), id) in by_group.into_iter().zip(IDENTITY_POD_MIN..PER_POD_IDENTITY_BASE) {
        addrs.extend(ips.into_iter().map(|ip| (ip, id)));
        groups.insert(id, g);
    }
    (groups, addrs)
}

/// The rule set the objects in `input` mean. `keep` is the active set:
/// pods of this node that the input does not list keep their per-pod
/// identities. `node` lists this node's own addresses.
pub fn compile(input: &Value, keep: &PolicySet, node: &[IpAddr]) -> Result<Compiled> {
    let objects = objects::parse(input)?;
    let mut errors = objects.errors.clone();
    let prefixes: BTreeSet<Cidr> = objects.policies.iter().flat_map(ip_block_prefixes).collect();
    let (groups, addrs) = identities(&objects, &prefixes);
    let cidrs: BTreeMap<Cidr, u32> = prefixes.into_iter().zip(IDENTITY_CIDR_MIN..).collect();
    let cluster = Cluster { groups, namespaces: objects.namespaces.clone(), cidrs };

    let mut set = PolicySet { cidrs: cluster.cidrs.clone(), ..Default::default() };
    set.endpoints.extend(node.iter().map(|ip| (*ip, IDENTITY_HOST)));
    set.endpoints.extend(addrs.iter().copied());
    for (ip, id) in &keep.endpoints {
        if (PER_POD_IDENTITY_BASE..IDENTITY_CIDR_MIN).contains(id) {
            set.endpoints.entry(*ip).or_insert(*id);
        }
    }

    let isolate = |set: &mut PolicySet, ids: &BTreeSet<u32>, ingress: bool, egress: bool| {
        let flags = if ingress { ISOLATED_INGRESS } else { 0 } | if egress { ISOLATED_EGRESS } else { 0 };
        for id in ids {
            *set.isolation.entry(*id).or_default() |= flags;
        }
    };

    for (index, pol) in objects.policies.iter().enumerate() {
        let ns = pol.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = format!("NetworkPolicy {ns}/{}", pol.metadata.name.as_deref().unwrap_or("?"));
        let rule = index as u32 + 1;
        set.names.insert(rule, format!("{ns}/{}", pol.metadata.name.as_deref().unwrap_or("?")));
        let spec = pol.spec.clone().unwrap_or_default();
        let ingress_rules = spec.ingress.unwrap_or_default();
        let egress_rules = spec.egress.unwrap_or_default();
        let (ingress, egress, types_error) = policy_types(spec.policy_types.as_ref(), !egress_rules.is_empty());
        errors.extend(types_error.map(|e| format!("{name}: {e}")));
        let pod_selector = spec.pod_selector.unwrap_or_default();
        let selected = match select::validate(&pod_selector) {
            Ok(()) => cluster.pods_selected(&[&ns], Some(&pod_selector)),
            Err(e) => {
                // Unknown selection: isolate its whole namespace.
                errors.push(format!("{name}: podSelector: {e:#}"));
                cluster.pods_selected(&[&ns], None)
            }
        };
        isolate(&mut set, &selected, ingress, egress);
        let directions = [
            (ingress, Direction::Ingress, ingress_rules.iter().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect()),
            (egress, Direction::Egress, egress_rules.iter().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect()),
        ];
        for (on, dir, rules) in directions {
            let rules: Vec<RuleParts> = rules;
            for (i, (peers, ports)) in rules.into_iter().enumerate() {
                let entries = cluster
                    .peers(peers, &ns)
                    .and_then(|peers| cluster.rule_entries(dir, &selected, &peers, ports, rule));
                match entries {
                    Ok(entries) if on => set.entries.extend(entries),
                    Ok(_) => {}
                    Err(e) => errors.push(format!(
                        "{name}: {} rule {}: {e:#} (the rule allows nothing)",
                        dir_name(dir),
                        i + 1
                    )),
                }
            }
        }
    }

    for b in &objects.broken {
        let (ingress, egress, _) = match &b.policy_types {
            Some(t) => policy_types(Some(t), true),
            None => (true, true, None),
        };
        let selected = match b.pod_selector.as_ref().filter(|s| select::validate(s).is_ok()) {
            Some(sel) => cluster.pods_selected(&[&b.namespace], Some(sel)),
            None => cluster.pods_selected(&[&b.namespace], None),
        };
        isolate(&mut set, &selected, ingress, egress);
        errors.push(format!(
            "NetworkPolicy {}/{}: {} (its pods stay isolated, it allows nothing)",
            b.namespace, b.name, b.error
        ));
    }
    Ok(Compiled { set, errors })
}

fn dir_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

#[cfg(test)]
mod tests;
