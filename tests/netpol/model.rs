//! A small model of NetworkPolicy, written from the Kubernetes API
//! reference (networking.k8s.io/v1 NetworkPolicy, "Network Policies"
//! concept page) and independent of ebpfcni's compiler: it reads the same
//! JSON the test feeds to `policy sync` and says whether one connection
//! is allowed.
//!
//! - A pod is isolated for ingress (egress) when a policy in its namespace
//!   selects it with Ingress (Egress) among its policyTypes; policyTypes,
//!   when absent or empty, default to Ingress, plus Egress when the policy
//!   has at least one egress rule.
//! - A connection passes when the source's egress and the destination's
//!   ingress both allow it: a direction allows when the pod is not
//!   isolated in it, or when a rule of a policy selecting it matches.
//! - A rule matches when its peers (empty: every peer) and its ports
//!   (empty: every port) match. A peer: ipBlock (every address inside cidr
//!   and outside except, pods included), or namespaceSelector and/or
//!   podSelector (pods only; no namespaceSelector: the policy's namespace).
//! - A port: protocol (default TCP), and port (absent: every port), a
//!   number up to endPort, or a named container port of the destination
//!   pod with the same protocol.
//! - The node always reaches its pods and they it; a pod never blocks
//!   itself.
//! - ebpfcni's documented choice for what the API server would refuse
//!   (endPort below port, above 65535, or without port): that rule matches
//!   nothing, its policy still isolates.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug)]
pub struct ModelPod {
    pub namespace: String,
    pub labels: Labels,
    pub ip: Ipv4Addr,
    /// (name, protocol, port) of the pod's containers.
    pub ports: Vec<(String, String, u16)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Pod(usize),
    /// An address that is no pod and not the node.
    Outside(Ipv4Addr),
    Node,
}

pub struct World {
    pub pods: Vec<ModelPod>,
    pub namespaces: BTreeMap<String, Labels>,
    pub policies: Vec<Value>,
}

fn labels_match(selector: &Value, labels: &Labels) -> bool {
    let by_label = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let by_expr = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let value = labels.get(e["key"].as_str().unwrap());
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        match e["operator"].as_str().unwrap() {
            "In" => value.is_some_and(|v| values.contains(&v.as_str())),
            "NotIn" => !value.is_some_and(|v| values.contains(&v.as_str())),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            op => panic!("model: operator {op}"),
        }
    });
    by_label && by_expr
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let (net, len): (Ipv4Addr, u32) = (net.parse().unwrap(), len.parse().unwrap());
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

impl World {
    fn ip_of(&self, p: Peer) -> Option<Ipv4Addr> {
        match p {
            Peer::Pod(i) => Some(self.pods[i].ip),
            Peer::Outside(ip) => Some(ip),
            Peer::Node => None,
        }
    }

    fn types(policy: &Value) -> (bool, bool) {
        let spec = &policy["spec"];
        match spec["policyTypes"].as_array().filter(|t| !t.is_empty()) {
            Some(t) => (t.iter().any(|x| x == "Ingress"), t.iter().any(|x| x == "Egress")),
            None => (true, spec["egress"].as_array().is_some_and(|e| !e.is_empty())),
        }
    }

    fn selects(policy: &Value, pod: &ModelPod) -> bool {
        policy["metadata"]["namespace"].as_str() == Some(&pod.namespace)
            && labels_match(&policy["spec"]["podSelector"], &pod.labels)
    }

    fn peer_matches(&self, peer: &Value, policy_ns: &str, who: Peer) -> bool {
        if let Some(block) = peer.get("ipBlock") {
            let Some(ip) = self.ip_of(who) else { return false };
            return in_cidr(ip, block["cidr"].as_str().unwrap())
                && !block["except"].as_array().into_iter().flatten().any(|e| in_cidr(ip, e.as_str().unwrap()));
        }
        let Peer::Pod(i) = who else { return false };
        let pod = &self.pods[i];
        let ns_ok = match peer.get("namespaceSelector") {
            Some(sel) => labels_match(sel, &self.namespaces[&pod.namespace]),
            None => pod.namespace == policy_ns,
        };
        ns_ok && peer.get("podSelector").is_none_or(|sel| labels_match(sel, &pod.labels))
    }

    fn port_matches(&self, port: &Value, proto: &str, number: u16, target: Peer) -> bool {
        if port["protocol"].as_str().unwrap_or("TCP") != proto {
            return false;
        }
        match &port["port"] {
            Value::Null => true,
            Value::Number(n) => {
                let first = n.as_u64().unwrap();
                let last = port["endPort"].as_u64().unwrap_or(first);
                (first..=last).contains(&u64::from(number))
            }
            Value::String(name) => match target {
                Peer::Pod(i) => self.pods[i].ports.iter().any(|(n, p, num)| n == name && p == proto && *num == number),
                _ => false,
            },
            other => panic!("model: port {other}"),
        }
    }

    /// What the API server would refuse: the rule matches nothing.
    fn rule_is_valid(rule: &Value) -> bool {
        rule["ports"].as_array().into_iter().flatten().all(|p| match (p["port"].as_u64(), p["endPort"].as_u64()) {
            (_, None) => true,
            (Some(first), Some(last)) => last >= first && last <= 65535,
            (None, Some(_)) => false,
        })
    }

    /// `conn`: protocol, port, and the pod whose named ports count.
    fn rule_matches(&self, rule: &Value, peers_field: &str, ns: &str, who: Peer, conn: (&str, u16, Peer)) -> bool {
        let (proto, port, target) = conn;
        if !Self::rule_is_valid(rule) {
            return false;
        }
        let peers_ok = match rule[peers_field].as_array().filter(|a| !a.is_empty()) {
            None => true,
            Some(peers) => peers.iter().any(|p| self.peer_matches(p, ns, who)),
        };
        let ports_ok = match rule["ports"].as_array().filter(|a| !a.is_empty()) {
            None => true,
            Some(ports) => ports.iter().any(|p| self.port_matches(p, proto, port, target)),
        };
        peers_ok && ports_ok
    }

    /// Whether `pod` admits (ingress) or may send (egress) this traffic.
    fn direction_allows(&self, pod: usize, ingress: bool, other: Peer, proto: &str, port: u16) -> bool {
        let (field, peers, target) =
            if ingress { ("ingress", "from", Peer::Pod(pod)) } else { ("egress", "to", other) };
        let selecting: Vec<&Value> = self
            .policies
            .iter()
            .filter(|p| Self::selects(p, &self.pods[pod]))
            .filter(|p| if ingress { Self::types(p).0 } else { Self::types(p).1 })
            .collect();
        selecting.is_empty()
            || selecting.iter().any(|p| {
                let ns = p["metadata"]["namespace"].as_str().unwrap();
                p["spec"][field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| self.rule_matches(r, peers, ns, other, (proto, port, target)))
            })
    }

    /// Whether a connection from `src` to `dst` on `proto` ("TCP"/"UDP")
    /// and `port` is allowed.
    pub fn allowed(&self, src: Peer, dst: Peer, proto: &str, port: u16) -> bool {
        if src == Peer::Node || dst == Peer::Node || src == dst {
            return true;
        }
        let egress = match src {
            Peer::Pod(i) => self.direction_allows(i, false, dst, proto, port),
            _ => true,
        };
        let ingress = match dst {
            Peer::Pod(i) => self.direction_allows(i, true, src, proto, port),
            _ => true,
        };
        egress && ingress
    }
}
