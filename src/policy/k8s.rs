//! Kubernetes NetworkPolicy, from the JSON `kubectl get
//! pods,networkpolicies -A -o json` prints (Namespace objects may be
//! included for their labels; otherwise a namespace carries only
//! `kubernetes.io/metadata.name`). Produces the complete rule set:
//!
//! - pods with the same namespace and labels share an identity, as in
//!   Cilium; their addresses map to it in the ipcache;
//! - every ipBlock prefix (cidr and except) gets an identity of its own,
//!   so the longest-prefix match of an address names the most specific
//!   block, and a rule's peers are the prefixes inside its cidr and
//!   outside its excepts. As in Cilium, ipBlock does not match pod
//!   addresses: pods are selected by labels;
//! - a pod selected by a policy of type Ingress (Egress) is isolated in
//!   that direction and only what some rule allows passes; pods selected
//!   by no policy stay open.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::{Entry, PolicySet, PER_POD_IDENTITY_BASE};
use crate::datapath::{
    Direction, IDENTITY_ANY, IDENTITY_CIDR_MIN, IDENTITY_POD_MIN, ISOLATED_EGRESS, ISOLATED_INGRESS,
};
use crate::ipam::Cidr;

type Labels = BTreeMap<String, String>;

struct Pod {
    namespace: String,
    labels: Labels,
    ips: Vec<IpAddr>,
}

fn labels_of(v: &Value) -> Labels {
    v.as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

fn namespace_of(item: &Value) -> String {
    item["metadata"]["namespace"].as_str().unwrap_or("default").to_string()
}

/// `matchLabels` and `matchExpressions`; an empty selector selects all.
fn selects(selector: &Value, labels: &Labels) -> Result<bool> {
    for (k, v) in selector["matchLabels"].as_object().into_iter().flatten() {
        if labels.get(k).map(String::as_str) != v.as_str() {
            return Ok(false);
        }
    }
    for expr in selector["matchExpressions"].as_array().into_iter().flatten() {
        let key = expr["key"].as_str().ok_or_else(|| anyhow!("matchExpressions entry without key"))?;
        let values: Vec<&str> = expr["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let have = labels.get(key).map(String::as_str);
        let ok = match expr["operator"].as_str() {
            Some("In") => have.is_some_and(|h| values.contains(&h)),
            Some("NotIn") => !have.is_some_and(|h| values.contains(&h)),
            Some("Exists") => have.is_some(),
            Some("DoesNotExist") => have.is_none(),
            other => bail!("unknown matchExpressions operator {other:?}"),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn protocol_number(p: Option<&str>) -> Result<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "SCTP" => Ok(132),
        other => bail!("unknown protocol {other:?}"),
    }
}

/// (protocol, port) pairs of a rule; (0, 0) when it names none.
fn ports_of(rule: &Value) -> Result<Vec<(u8, u16)>> {
    let Some(ports) = rule["ports"].as_array().filter(|p| !p.is_empty()) else {
        return Ok(vec![(0, 0)]);
    };
    let mut out = Vec::new();
    for p in ports {
        let proto = protocol_number(p["protocol"].as_str())?;
        match &p["port"] {
            Value::Null => out.push((proto, 0)),
            Value::Number(n) => {
                let first =
                    n.as_u64().filter(|n| (1..=65535).contains(n)).ok_or_else(|| anyhow!("port {n} out of range"))?
                        as u16;
                let last = p["endPort"].as_u64().map_or(first, |e| e as u16);
                if last < first || last - first > 1024 {
                    bail!("port range {first}-{last} is not supported (at most 1024 ports)");
                }
                out.extend((first..=last).map(|port| (proto, port)));
            }
            Value::String(name) => bail!("named port {name:?} is not supported: use the port number"),
            other => bail!("port {other} is neither a number nor a name"),
        }
    }
    Ok(out)
}

struct Cluster {
    pods: Vec<Pod>,
    /// (namespace, labels) -> identity.
    pod_identities: BTreeMap<(String, Labels), u32>,
    namespaces: BTreeMap<String, Labels>,
    /// ipBlock prefixes -> identity.
    cidr_identities: BTreeMap<Cidr, u32>,
}

impl Cluster {
    fn identity_of(&self, pod: &Pod) -> u32 {
        self.pod_identities[&(pod.namespace.clone(), pod.labels.clone())]
    }

    fn pods_in<'a>(
        &'a self,
        namespaces: &'a [String],
        selector: Option<&'a Value>,
    ) -> impl Iterator<Item = Result<&'a Pod>> + 'a {
        self.pods.iter().filter(|p| namespaces.contains(&p.namespace)).filter_map(move |p| match selector {
            None => Some(Ok(p)),
            Some(sel) => match selects(sel, &p.labels) {
                Ok(true) => Some(Ok(p)),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            },
        })
    }

    /// The identities a `from`/`to` list stands for; [ANY] when absent or
    /// empty (the rule matches every peer).
    fn peers(&self, list: &Value, policy_ns: &str) -> Result<BTreeSet<u32>> {
        let Some(items) = list.as_array().filter(|l| !l.is_empty()) else {
            return Ok(BTreeSet::from([IDENTITY_ANY]));
        };
        let mut out = BTreeSet::new();
        for peer in items {
            if let Some(block) = peer.get("ipBlock") {
                let cidr: Cidr = block["cidr"].as_str().ok_or_else(|| anyhow!("ipBlock without cidr"))?.parse()?;
                let excepts: Vec<Cidr> = block["except"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|s| s.parse::<Cidr>().map(|c| c.as_network()))
                    .collect::<Result<_>>()?;
                let inside = |outer: &Cidr, q: &Cidr| {
                    q.is_ipv4() == outer.is_ipv4() && q.prefix >= outer.prefix && outer.contains(q.addr)
                };
                let cidr = cidr.as_network();
                for (q, id) in &self.cidr_identities {
                    if inside(&cidr, q) && !excepts.iter().any(|e| inside(e, q)) {
                        out.insert(*id);
                    }
                }
                continue;
            }
            let namespaces: Vec<String> = match peer.get("namespaceSelector") {
                Some(sel) => self
                    .namespaces
                    .iter()
                    .filter_map(|(n, l)| match selects(sel, l) {
                        Ok(true) => Some(Ok(n.clone())),
                        Ok(false) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_>>()?,
                None => vec![policy_ns.to_string()],
            };
            for pod in self.pods_in(&namespaces, peer.get("podSelector")) {
                out.insert(self.identity_of(pod?));
            }
        }
        Ok(out)
    }
}

fn parse_cluster(input: &Value) -> Result<(Cluster, Vec<Value>)> {
    let items =
        input["items"].as_array().or_else(|| input.as_array()).ok_or_else(|| anyhow!("expected a List with items"))?;
    let mut pods = Vec::new();
    let mut namespaces: BTreeMap<String, Labels> = BTreeMap::new();
    let mut policies = Vec::new();
    for item in items {
        match item["kind"].as_str() {
            Some("Pod") => {
                if item["spec"]["hostNetwork"].as_bool() == Some(true) {
                    continue; // the node's address, not a pod's
                }
                let mut ips: Vec<IpAddr> = item["status"]["podIPs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["ip"].as_str()?.parse().ok())
                    .collect();
                if ips.is_empty() {
                    ips.extend(item["status"]["podIP"].as_str().and_then(|s| s.parse::<IpAddr>().ok()));
                }
                if ips.is_empty() {
                    continue;
                }
                let namespace = namespace_of(item);
                namespaces.entry(namespace.clone()).or_default();
                pods.push(Pod { namespace, labels: labels_of(&item["metadata"]["labels"]), ips });
            }
            Some("Namespace") => {
                let name = item["metadata"]["name"].as_str().ok_or_else(|| anyhow!("Namespace without name"))?;
                namespaces.insert(name.to_string(), labels_of(&item["metadata"]["labels"]));
            }
            Some("NetworkPolicy") => {
                namespaces.entry(namespace_of(item)).or_default();
                policies.push(item.clone());
            }
            _ => {}
        }
    }
    for (name, labels) in namespaces.iter_mut() {
        labels.insert("kubernetes.io/metadata.name".into(), name.clone());
    }
    let groups: BTreeSet<(String, Labels)> = pods.iter().map(|p| (p.namespace.clone(), p.labels.clone())).collect();
    let pod_identities = groups.into_iter().zip(IDENTITY_POD_MIN..).collect();
    let mut prefixes = BTreeSet::new();
    for pol in &policies {
        for dir in ["ingress", "egress"] {
            for rule in pol["spec"][dir].as_array().into_iter().flatten() {
                for peer in rule[if dir == "ingress" { "from" } else { "to" }].as_array().into_iter().flatten() {
                    let block = &peer["ipBlock"];
                    for s in block["cidr"]
                        .as_str()
                        .into_iter()
                        .chain(block["except"].as_array().into_iter().flatten().filter_map(Value::as_str))
                    {
                        prefixes.insert(s.parse::<Cidr>().with_context(|| format!("ipBlock {s}"))?.as_network());
                    }
                }
            }
        }
    }
    let cidr_identities = prefixes.into_iter().zip(IDENTITY_CIDR_MIN..).collect();
    Ok((Cluster { pods, pod_identities, namespaces, cidr_identities }, policies))
}

/// The rule set the objects in `input` mean. `keep` is the active set:
/// pods of this node that the input does not list keep their addresses'
/// per-pod identities.
pub fn compile(input: &Value, keep: &PolicySet) -> Result<PolicySet> {
    let (cluster, policies) = parse_cluster(input)?;
    let mut set = PolicySet::default();
    for pod in &cluster.pods {
        let id = cluster.identity_of(pod);
        for ip in &pod.ips {
            set.ipcache.insert(Cidr { addr: *ip, prefix: if ip.is_ipv4() { 32 } else { 128 } }, id);
        }
    }
    for (prefix, id) in &cluster.cidr_identities {
        set.ipcache.insert(*prefix, *id);
    }
    for (prefix, id) in &keep.ipcache {
        if (PER_POD_IDENTITY_BASE..IDENTITY_CIDR_MIN).contains(id) && !set.ipcache.contains_key(prefix) {
            set.ipcache.insert(*prefix, *id);
        }
    }

    for (index, pol) in policies.iter().enumerate() {
        let name = pol["metadata"]["name"].as_str().unwrap_or("?");
        let ns = namespace_of(pol);
        let rule_id = index as u32 + 1;
        set.names.insert(rule_id, format!("{ns}/{name}"));
        let spec = &pol["spec"];
        let mut compile_one = || -> Result<()> {
            let selected: BTreeSet<u32> = cluster
                .pods_in(std::slice::from_ref(&ns), Some(&spec["podSelector"]))
                .map(|p| p.map(|p| cluster.identity_of(p)))
                .collect::<Result<_>>()?;
            let types: Vec<&str> = match spec["policyTypes"].as_array() {
                Some(t) => t.iter().filter_map(Value::as_str).collect(),
                None if spec.get("egress").is_some() => vec!["Ingress", "Egress"],
                None => vec!["Ingress"],
            };
            for (ty, dir, field, peer_field, flag) in [
                ("Ingress", Direction::Ingress, "ingress", "from", ISOLATED_INGRESS),
                ("Egress", Direction::Egress, "egress", "to", ISOLATED_EGRESS),
            ] {
                if !types.contains(&ty) {
                    continue;
                }
                for id in &selected {
                    *set.isolation.entry(*id).or_default() |= flag;
                }
                for rule in spec[field].as_array().into_iter().flatten() {
                    let peers = cluster.peers(&rule[peer_field], &ns)?;
                    let ports = ports_of(rule)?;
                    for subject in &selected {
                        for peer in &peers {
                            for (proto, port) in &ports {
                                set.entries.insert(Entry {
                                    dir,
                                    subject: *subject,
                                    peer: *peer,
                                    proto: *proto,
                                    port: *port,
                                    deny: false,
                                    rule: rule_id,
                                });
                            }
                        }
                    }
                }
            }
            Ok(())
        };
        compile_one().with_context(|| format!("NetworkPolicy {ns}/{name}"))?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, labels: Value, ip: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": labels},
               "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
    }

    #[test]
    fn identities_group_pods_by_namespace_and_labels() {
        let input = json!({"kind": "List", "items": [
            pod("a", "p1", json!({"app": "web"}), "10.0.0.1"),
            pod("a", "p2", json!({"app": "web"}), "10.0.0.2"),
            pod("b", "p3", json!({"app": "web"}), "10.0.0.3"),
        ]});
        let set = compile(&input, &PolicySet::default()).unwrap();
        let id = |ip: &str| set.ipcache[&Cidr { addr: ip.parse().unwrap(), prefix: 32 }];
        assert_eq!(id("10.0.0.1"), id("10.0.0.2"));
        assert_ne!(id("10.0.0.1"), id("10.0.0.3"));
        assert!(set.entries.is_empty() && set.isolation.is_empty());
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let l: Labels = [("app".to_string(), "web".to_string()), ("tier".to_string(), "fe".to_string())].into();
        assert!(selects(&json!({}), &l).unwrap());
        assert!(selects(&json!({"matchLabels": {"app": "web"}}), &l).unwrap());
        assert!(!selects(&json!({"matchLabels": {"app": "db"}}), &l).unwrap());
        assert!(selects(&json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "x"]}]}), &l)
            .unwrap());
        assert!(!selects(&json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fe"]}]}), &l)
            .unwrap());
        assert!(selects(&json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}), &l).unwrap());
        assert!(!selects(&json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}), &l).unwrap());
        assert!(selects(&json!({"matchExpressions": [{"key": "x", "operator": "Bogus"}]}), &l).is_err());
    }

    #[test]
    fn ip_block_except_gets_its_own_identity_outside_the_rule() {
        let input = json!({"items": [
            pod("a", "p", json!({"app": "web"}), "10.0.0.1"),
            {"kind": "NetworkPolicy", "metadata": {"name": "np", "namespace": "a"},
             "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                      "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.5.0/24"]}}]}]}}
        ]});
        let set = compile(&input, &PolicySet::default()).unwrap();
        let outer = set.ipcache[&"192.168.0.0/16".parse().unwrap()];
        let except = set.ipcache[&"192.168.5.0/24".parse().unwrap()];
        let peers: Vec<u32> = set.entries.iter().map(|e| e.peer).collect();
        assert!(peers.contains(&outer) && !peers.contains(&except), "{set:?}");
        assert_eq!(set.isolation.values().copied().collect::<Vec<_>>(), vec![ISOLATED_EGRESS]);
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(ports_of(&json!({})).unwrap(), vec![(0, 0)]);
        assert_eq!(ports_of(&json!({"ports": [{"port": 80}]})).unwrap(), vec![(6, 80)]);
        assert_eq!(ports_of(&json!({"ports": [{"protocol": "UDP"}]})).unwrap(), vec![(17, 0)]);
        assert_eq!(ports_of(&json!({"ports": [{"port": 8000, "endPort": 8002}]})).unwrap().len(), 3);
        assert!(ports_of(&json!({"ports": [{"port": "http"}]})).is_err());
    }
}
