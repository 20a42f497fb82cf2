//! The compiler's unit tests: identities, ipBlocks over pods, named
//! ports, ranges, defaulting and broken policies.

use super::*;
use serde_json::json;

fn pod(ns: &str, name: &str, labels: Value, ips: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080},
                                                          {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
           "status": {"podIP": ips[0], "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}})
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn compile_items(items: Vec<Value>) -> Compiled {
    compile(&json!({"kind": "List", "items": items}), &PolicySet::default(), &["10.0.0.254".parse().unwrap()]).unwrap()
}

fn id(set: &PolicySet, ip: &str) -> u32 {
    set.endpoints[&ip.parse::<IpAddr>().unwrap()]
}

#[test]
fn identities_group_pods_by_namespace_and_labels() {
    let c = compile_items(vec![
        pod("a", "p1", json!({"app": "web"}), &["10.0.0.1"]),
        pod("a", "p2", json!({"app": "web"}), &["10.0.0.2"]),
        pod("b", "p3", json!({"app": "web"}), &["10.0.0.3"]),
    ]);
    assert_eq!(id(&c.set, "10.0.0.1"), id(&c.set, "10.0.0.2"));
    assert_ne!(id(&c.set, "10.0.0.1"), id(&c.set, "10.0.0.3"));
    assert_eq!(id(&c.set, "10.0.0.254"), IDENTITY_HOST, "the node's addresses");
    assert!(c.set.entries.is_empty() && c.set.isolation.is_empty() && c.errors.is_empty());
}

/// Issue 15, item 1: a /32 (or /128) ipBlock naming another namespace's
/// pod neither replaces that pod's identity nor changes its isolation.
#[test]
fn host_ip_block_never_replaces_a_pods_identity() {
    let items = |block: &str| {
        vec![
            pod("x", "a", json!({"app": "a"}), &["10.0.0.1", "fd00::1"]),
            pod("y", "b", json!({"app": "b"}), &["10.0.0.2", "fd00::2"]),
            policy("y", "own", json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
            policy(
                "x",
                "to-b",
                json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
                                       "egress": [{"to": [{"ipBlock": {"cidr": block}}]}]}),
            ),
        ]
    };
    for (block, ip) in [("10.0.0.2/32", "10.0.0.2"), ("fd00::2/128", "fd00::2")] {
        let c = compile_items(items(block));
        let b = id(&c.set, ip);
        assert!((IDENTITY_POD_MIN..IDENTITY_CIDR_MIN).contains(&b), "{block}: pod identity kept");
        assert_eq!(c.set.isolation[&b], ISOLATED_INGRESS, "{block}: y/b's own isolation stays");
        let cidr = c.set.cidrs[&block.parse().unwrap()];
        let a = BTreeSet::from([id(&c.set, "10.0.0.1"), id(&c.set, "fd00::1")]);
        let peers: BTreeSet<u32> = c.set.entries.iter().map(|e| e.peer).collect();
        assert_eq!(peers, BTreeSet::from([b, cidr]), "{block}: the pod inside and non-pods inside");
        assert!(c.set.entries.iter().all(|e| e.dir == Direction::Egress && a.contains(&e.subject)), "{block}");
    }
}

#[test]
fn ip_block_matches_pods_inside_and_outside_except() {
    let c = compile_items(vec![
        pod("a", "src", json!({"app": "src"}), &["10.0.0.1"]),
        pod("a", "in", json!({"app": "t"}), &["10.0.1.5"]),
        pod("a", "out", json!({"app": "t"}), &["10.0.2.5"]),
        policy(
            "a",
            "np",
            json!({"podSelector": {"matchLabels": {"app": "src"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}]}),
        ),
    ]);
    let (inside, outside) = (id(&c.set, "10.0.1.5"), id(&c.set, "10.0.2.5"));
    assert_ne!(inside, outside, "same labels, but one is in the except");
    let peers: BTreeSet<u32> = c.set.entries.iter().map(|e| e.peer).collect();
    assert!(peers.contains(&inside) && !peers.contains(&outside), "{peers:?}");
    assert!(peers.contains(&c.set.cidrs[&"10.0.0.0/16".parse().unwrap()]));
    assert!(!peers.contains(&c.set.cidrs[&"10.0.2.0/24".parse().unwrap()]));
    assert!(peers.contains(&id(&c.set, "10.0.0.1")), "the source pod is inside too");
}

#[test]
fn named_ports_resolve_per_destination_pod_and_protocol() {
    let mut other = pod("a", "alt", json!({"app": "srv"}), &["10.0.0.3"]);
    other["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(9090);
    let c = compile_items(vec![
        pod("a", "cli", json!({"app": "cli"}), &["10.0.0.1"]),
        pod("a", "srv", json!({"app": "srv"}), &["10.0.0.2"]),
        other,
        policy(
            "a",
            "in",
            json!({"podSelector": {"matchLabels": {"app": "srv"}},
            "ingress": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "TCP"}]}]}),
        ),
        policy(
            "a",
            "out",
            json!({"podSelector": {"matchLabels": {"app": "cli"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": "http"}]}]}),
        ),
    ]);
    let (srv, alt) = (id(&c.set, "10.0.0.2"), id(&c.set, "10.0.0.3"));
    assert_ne!(srv, alt, "different named ports: different identities");
    let ports = |dir, subject| -> BTreeSet<(u32, u8, u16)> {
        c.set
            .entries
            .iter()
            .filter(|e| e.dir == dir && e.subject == subject)
            .map(|e| (e.peer, e.proto, e.port))
            .collect()
    };
    assert_eq!(ports(Direction::Ingress, srv), BTreeSet::from([(IDENTITY_ANY, 6, 8080)]), "dns is UDP: no match");
    assert_eq!(ports(Direction::Ingress, alt), BTreeSet::from([(IDENTITY_ANY, 6, 9090)]));
    let egress = ports(Direction::Egress, id(&c.set, "10.0.0.1"));
    assert!(egress.contains(&(srv, 6, 8080)) && egress.contains(&(alt, 6, 9090)), "{egress:?}");
    assert!(egress.iter().all(|(peer, _, _)| *peer < IDENTITY_CIDR_MIN), "never a non-pod: {egress:?}");
}

#[test]
fn port_ranges_become_blocks_and_bad_ones_are_refused_by_name() {
    let spec = |ports: Value| json!({"podSelector": {}, "ingress": [{"ports": ports}]});
    let c = compile_items(vec![
        pod("a", "p", json!({}), &["10.0.0.1"]),
        policy("a", "all", spec(json!([{"port": 1, "endPort": 65535}]))),
        policy("a", "below", spec(json!([{"port": 90, "endPort": 80}]))),
        policy("a", "above", spec(json!([{"port": 90, "endPort": 70000}]))),
        policy("a", "noport", spec(json!([{"endPort": 80}]))),
    ]);
    assert_eq!(c.set.entries.iter().filter(|e| e.rule == 1).count(), 16);
    assert_eq!(c.set.entries.len(), 16, "the bad rules allow nothing");
    for name in ["a/below", "a/above", "a/noport"] {
        assert!(c.errors.iter().any(|e| e.contains(name) && e.contains("endPort")), "{name}: {:?}", c.errors);
    }
    assert_eq!(c.set.isolation[&id(&c.set, "10.0.0.1")], ISOLATED_INGRESS);
}

#[test]
fn policy_types_default_as_the_api_server_does() {
    assert_eq!(policy_types(None, false), (true, false, None));
    assert_eq!(policy_types(None, true), (true, true, None));
    assert_eq!(policy_types(Some(&vec![]), false), (true, false, None));
    assert_eq!(policy_types(Some(&vec!["Egress".into()]), false), (false, true, None));
    let c = compile_items(vec![
        pod("a", "p", json!({}), &["10.0.0.1"]),
        policy("a", "np", json!({"podSelector": {}, "ingress": [{}], "egress": []})),
    ]);
    assert_eq!(c.set.isolation[&id(&c.set, "10.0.0.1")], ISOLATED_INGRESS, "egress: [] is not an egress rule");
}

#[test]
fn a_broken_policy_isolates_its_pods_and_spares_the_others() {
    let c = compile_items(vec![
        pod("a", "p", json!({"app": "p"}), &["10.0.0.1"]),
        pod("b", "q", json!({"app": "q"}), &["10.0.0.2"]),
        policy("a", "undecodable", json!({"podSelector": {"matchLabels": {"app": "p"}}, "ingress": "nonsense"})),
        policy(
            "a",
            "badsel",
            json!({"podSelector": {"matchExpressions": [{"key": "k", "operator": "Near"}]},
                                     "policyTypes": ["Egress"]}),
        ),
        policy("b", "good", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})),
    ]);
    let (p, q) = (id(&c.set, "10.0.0.1"), id(&c.set, "10.0.0.2"));
    assert_eq!(c.set.isolation[&p], ISOLATED_INGRESS | ISOLATED_EGRESS);
    assert!(c.set.entries.iter().all(|e| e.subject == q), "nothing allowed for a/p: {:?}", c.set.entries);
    assert_eq!(c.set.entries.len(), 1);
    assert!(c.errors.iter().any(|e| e.contains("a/undecodable")), "{:?}", c.errors);
    assert!(c.errors.iter().any(|e| e.contains("a/badsel") && e.contains("Near")), "{:?}", c.errors);
    assert_eq!(c.errors.len(), 2);
}
