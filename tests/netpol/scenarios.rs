//! The truth-table scenarios: the upstream netpol e2e cases one node can
//! express (test/e2e/network/netpol), cyclonus-style variations, and the
//! cases of issue 15. Pods: x/a x/b x/c y/a y/b y/c z/a z/b z/c, labelled
//! pod=<name>, in namespaces labelled ns=<name>; every pod serves TCP 80,
//! TCP 81 and UDP 80 and names them serve-80-tcp, serve-81-tcp,
//! serve-80-udp. Consecutive scenarios that reuse a policy's name are its
//! updates; a scenario without it is its deletion.

use serde_json::{json, Value};

/// A pod's named container ports: (name, protocol, port).
pub type NamedPorts = Vec<(&'static str, &'static str, u16)>;

pub struct Scenario {
    pub name: &'static str,
    pub policies: Vec<Value>,
    /// Pods whose labels differ from pod=<name>: (index, labels).
    pub pod_labels: Vec<(usize, Value)>,
    /// Namespaces whose labels differ from ns=<name>.
    pub ns_labels: Vec<(&'static str, Value)>,
    /// Pods whose named ports differ: (index, [(name, protocol, port)]).
    pub ports: Vec<(usize, NamedPorts)>,
    /// Policies `policy sync` must report as not enforceable.
    pub broken: Vec<&'static str>,
}

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// Index of pod `ns`/`name`.
pub fn pod(ns: &str, name: &str) -> usize {
    NAMESPACES.iter().position(|n| *n == ns).unwrap() * 3 + PODS.iter().position(|p| *p == name).unwrap()
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn ml(k: &str, v: &str) -> Value {
    json!({"matchLabels": {k: v}})
}

fn expr(k: &str, op: &str, values: &[&str]) -> Value {
    if values.is_empty() {
        json!({"matchExpressions": [{"key": k, "operator": op}]})
    } else {
        json!({"matchExpressions": [{"key": k, "operator": op, "values": values}]})
    }
}

fn s(name: &'static str, policies: Vec<Value>) -> Scenario {
    Scenario { name, policies, pod_labels: vec![], ns_labels: vec![], ports: vec![], broken: vec![] }
}

/// Every scenario, in order; `ip(i)` is pod i's address, `outside` the
/// non-pod address, `subnet` the /24 of both.
pub fn all(ip: &dyn Fn(usize) -> String, outside: &str, subnet: &str) -> Vec<Scenario> {
    let host = |i: usize| format!("{}/32", ip(i));
    let xa = || ml("pod", "a");
    let deny_in = |ns: &str| np(ns, "deny-in", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
    let deny_out = |ns: &str| np(ns, "deny-out", json!({"podSelector": {}, "policyTypes": ["Egress"]}));
    let in_from = |name: &str, from: Value| {
        np("x", name, json!({"podSelector": xa(), "policyTypes": ["Ingress"], "ingress": [{"from": from}]}))
    };
    let in_ports = |name: &str, from: Value, ports: Value| {
        np(
            "x",
            name,
            json!({"podSelector": xa(), "policyTypes": ["Ingress"], "ingress": [{"from": from, "ports": ports}]}),
        )
    };
    let out_to = |name: &str, to: Value, ports: Value| {
        np("x", name, json!({"podSelector": xa(), "policyTypes": ["Egress"], "egress": [{"to": to, "ports": ports}]}))
    };
    let mut v = vec![
        s("no policies: everything open", vec![]),
        s("default deny ingress in x", vec![deny_in("x")]),
        s("default deny egress in x", vec![deny_out("x")]),
        s(
            "default deny both ways in x",
            vec![np("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))],
        ),
        s("default deny ingress everywhere", vec![deny_in("x"), deny_in("y"), deny_in("z")]),
        s("allow all ingress in x", vec![np("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}))]),
        s(
            "allow all egress in x over deny-out",
            vec![
                deny_out("x"),
                np("x", "allow-all-out", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]})),
            ],
        ),
        s("deny ingress to x/a only", vec![np("x", "deny-a", json!({"podSelector": xa()}))]),
        s("x/a from pods of x with pod=b", vec![in_from("from-b", json!([{"podSelector": ml("pod", "b")}]))]),
        s("x/a from every pod of x", vec![in_from("from-x", json!([{"podSelector": {}}]))]),
        s("x/a from pods in all namespaces", vec![in_from("from-all-ns", json!([{"namespaceSelector": {}}]))]),
        s("x/a from namespace y by label", vec![in_from("from-y", json!([{"namespaceSelector": ml("ns", "y")}]))]),
        s(
            "x/a from pod In [b] (matchExpressions)",
            vec![in_from("expr", json!([{"podSelector": expr("pod", "In", &["b"])}]))],
        ),
        s(
            "x/a from namespaces In [y] (matchExpressions)",
            vec![in_from("nsexpr", json!([{"namespaceSelector": expr("ns", "In", &["y"])}]))],
        ),
        s(
            "x/a from ns NotIn [x] OR pod=b (two peers)",
            vec![in_from(
                "or",
                json!([{"namespaceSelector": expr("ns", "NotIn", &["x"])}, {"podSelector": ml("pod", "b")}]),
            )],
        ),
        s(
            "x/a from ns NotIn [x] AND pod=b (one peer)",
            vec![in_from(
                "and",
                json!([{"namespaceSelector": expr("ns", "NotIn", &["x"]), "podSelector": ml("pod", "b")}]),
            )],
        ),
        s(
            "x/a from ns NotIn [x] AND pod In [b, c]",
            vec![in_from(
                "and2",
                json!([{"namespaceSelector": expr("ns", "NotIn", &["x"]), "podSelector": expr("pod", "In", &["b", "c"])}]),
            )],
        ),
        s(
            "x/a from pod=b OR pod=c",
            vec![in_from("any", json!([{"podSelector": ml("pod", "b")}, {"podSelector": ml("pod", "c")}]))],
        ),
        s(
            "x/a from y/a only (namespace and pod)",
            vec![in_from("ya", json!([{"namespaceSelector": ml("ns", "y"), "podSelector": ml("pod", "a")}]))],
        ),
        s(
            "x/a from namespace y by kubernetes.io/metadata.name",
            vec![in_from("meta", json!([{"namespaceSelector": ml("kubernetes.io/metadata.name", "y")}]))],
        ),
        s(
            "x/a from namespaces NotIn [y] by metadata.name",
            vec![in_from(
                "meta-not",
                json!([{"namespaceSelector": expr("kubernetes.io/metadata.name", "NotIn", &["y"])}]),
            )],
        ),
        s(
            "x/a from pods with label pod (Exists), ns z",
            vec![in_from(
                "exists",
                json!([{"namespaceSelector": ml("ns", "z"), "podSelector": expr("pod", "Exists", &[])}]),
            )],
        ),
        s(
            "x/a from pods without label tier (DoesNotExist)",
            vec![in_from("dne", json!([{"podSelector": expr("tier", "DoesNotExist", &[])}]))],
        ),
        s(
            "x/a from namespace y on port 81",
            vec![in_ports("y-81", json!([{"namespaceSelector": ml("ns", "y")}]), json!([{"port": 81}]))],
        ),
        s(
            "stacked policies: y on 80 and y on 81",
            vec![
                in_ports("y-80", json!([{"namespaceSelector": ml("ns", "y")}]), json!([{"port": 80}])),
                in_ports("y-81", json!([{"namespaceSelector": ml("ns", "y")}]), json!([{"port": 81}])),
            ],
        ),
        s(
            "x/a any TCP port from anyone (protocol only)",
            vec![in_ports("tcp", json!([]), json!([{"protocol": "TCP"}]))],
        ),
        s("x/a UDP 80 only", vec![in_ports("udp80", json!([]), json!([{"protocol": "UDP", "port": 80}]))]),
        s("x/a SCTP 80 is not TCP 80", vec![in_ports("sctp", json!([]), json!([{"protocol": "SCTP", "port": 80}]))]),
        s(
            "x/a UDP 81 only: no TCP at all",
            vec![in_ports("udp81", json!([]), json!([{"protocol": "UDP", "port": 81}]))],
        ),
        s("x/a named port serve-81-tcp", vec![in_ports("named81", json!([]), json!([{"port": "serve-81-tcp"}]))]),
        s(
            "x/a from namespace y on named port serve-80-tcp",
            vec![in_ports(
                "named80y",
                json!([{"namespaceSelector": ml("ns", "y")}]),
                json!([{"port": "serve-80-tcp"}]),
            )],
        ),
        s(
            "x/a named UDP port serve-80-udp",
            vec![in_ports("named-udp", json!([]), json!([{"port": "serve-80-udp", "protocol": "UDP"}]))],
        ),
        s(
            "named port with the wrong protocol matches nothing",
            vec![in_ports("named-wrong", json!([]), json!([{"port": "serve-80-udp", "protocol": "TCP"}]))],
        ),
        s(
            "x/a egress on named port serve-81-tcp (destination's)",
            vec![out_to("out-named", json!([]), json!([{"port": "serve-81-tcp"}]))],
        ),
        s(
            "named egress port to an ipBlock: pods inside only, never the outside address",
            vec![out_to("out-named-block", json!([{"ipBlock": {"cidr": subnet}}]), json!([{"port": "serve-80-tcp"}]))],
        ),
        s("x/a ingress 80-81 (endPort)", vec![in_ports("range", json!([]), json!([{"port": 80, "endPort": 81}]))]),
        s(
            "x/a ingress 81-65535 (endPort)",
            vec![in_ports("range-high", json!([]), json!([{"port": 81, "endPort": 65535}]))],
        ),
        s(
            "x/a ingress 1-65535 TCP and UDP",
            vec![in_ports(
                "range-all",
                json!([]),
                json!([{"port": 1, "endPort": 65535}, {"port": 1, "endPort": 65535, "protocol": "UDP"}]),
            )],
        ),
        s("x/a egress 1-80 (endPort)", vec![out_to("out-range", json!([]), json!([{"port": 1, "endPort": 80}]))]),
        s(
            "multiple ingress policies: allow-all wins",
            vec![
                in_ports("b-80", json!([{"podSelector": ml("pod", "b")}]), json!([{"port": 80}])),
                np("x", "allow-all-a", json!({"podSelector": xa(), "ingress": [{}]})),
            ],
        ),
        s(
            "multiple egress policies: allow-all wins",
            vec![
                out_to("out-b", json!([{"podSelector": ml("pod", "b")}]), json!([{"port": 80}])),
                np("x", "allow-all-out-a", json!({"podSelector": xa(), "policyTypes": ["Egress"], "egress": [{}]})),
            ],
        ),
        s(
            "egress deny on the client beats the server's allow-all",
            vec![
                np("x", "deny-out-a", json!({"podSelector": xa(), "policyTypes": ["Egress"]})),
                np("y", "allow-all", json!({"podSelector": {}, "ingress": [{}]})),
            ],
        ),
        s(
            "x/a egress to y/a only (namespace and pod)",
            vec![out_to(
                "out-ya",
                json!([{"namespaceSelector": ml("ns", "y"), "podSelector": ml("pod", "a")}]),
                json!([]),
            )],
        ),
        s(
            "x/a ingress from and egress to pod=b together",
            vec![np(
                "x",
                "both",
                json!({"podSelector": xa(), "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": ml("pod", "b")}]}], "egress": [{"to": [{"podSelector": ml("pod", "b")}]}]}),
            )],
        ),
        s(
            "ingress and egress controlled independently",
            vec![
                np("x", "in-b", json!({"podSelector": xa(), "ingress": [{"from": [{"podSelector": ml("pod", "b")}]}]})),
                np(
                    "x",
                    "out-c",
                    json!({"podSelector": xa(), "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": ml("pod", "c")}]}]}),
                ),
            ],
        ),
        s(
            "deny ingress from other namespaces (podSelector {})",
            vec![np("x", "same-ns", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))],
        ),
        s(
            "y egress only to namespace z",
            vec![np(
                "y",
                "to-z",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ml("ns", "z")}]}]}),
            )],
        ),
        s(
            "several namespaces' policies unioned",
            vec![
                np(
                    "x",
                    "from-y",
                    json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ml("ns", "y")}]}]}),
                ),
                np(
                    "y",
                    "to-x",
                    json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ml("ns", "x")}], "ports": [{"port": 80}]}]}),
                ),
                np(
                    "z",
                    "z-in",
                    json!({"podSelector": expr("pod", "NotIn", &["a"]), "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {}}], "ports": [{"port": 81}]}]}),
                ),
            ],
        ),
        s(
            "egress to y/b's /32 (CIDR block with a pod)",
            vec![out_to("cidr", json!([{"ipBlock": {"cidr": host(pod("y", "b"))}}]), json!([]))],
        ),
        s(
            "egress to the subnet except y/b",
            vec![out_to("except", json!([{"ipBlock": {"cidr": subnet, "except": [host(pod("y", "b"))]}}]), json!([]))],
        ),
        s(
            "an address in both cidr/except of one block and another's cidr is allowed",
            vec![
                out_to("except", json!([{"ipBlock": {"cidr": subnet, "except": [host(pod("y", "b"))]}}]), json!([])),
                out_to("exact", json!([{"ipBlock": {"cidr": host(pod("y", "b"))}}]), json!([])),
            ],
        ),
        s(
            "ingress from the outside address only (ipBlock /32)",
            vec![in_from("outside", json!([{"ipBlock": {"cidr": format!("{outside}/32")}}]))],
        ),
        s(
            "ingress from the subnet except the outside address",
            vec![in_from("sub-except", json!([{"ipBlock": {"cidr": subnet, "except": [format!("{outside}/32")]}}]))],
        ),
        s(
            "ingress from ipBlock over y's pods, TCP 80",
            vec![in_ports(
                "ypods",
                json!([{"ipBlock": {"cidr": host(pod("y", "a"))}}, {"ipBlock": {"cidr": host(pod("y", "b"))}}]),
                json!([{"port": 80}]),
            )],
        ),
        s(
            "egress to 0.0.0.0/0 except the subnet",
            vec![out_to("world", json!([{"ipBlock": {"cidr": "0.0.0.0/0", "except": [subnet]}}]), json!([]))],
        ),
        s(
            "issue 15.1: y/b's own policies",
            vec![
                np(
                    "y",
                    "b-in",
                    json!({"podSelector": ml("pod", "b"), "ingress": [{"from": [{"namespaceSelector": ml("ns", "x"), "podSelector": ml("pod", "c")}]}]}),
                ),
                np(
                    "y",
                    "b-out",
                    json!({"podSelector": ml("pod", "b"), "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ml("ns", "z")}]}]}),
                ),
            ],
        ),
        s(
            "issue 15.1: x's /32 ipBlock naming y/b changes nothing for y/b",
            vec![
                np(
                    "y",
                    "b-in",
                    json!({"podSelector": ml("pod", "b"), "ingress": [{"from": [{"namespaceSelector": ml("ns", "x"), "podSelector": ml("pod", "c")}]}]}),
                ),
                np(
                    "y",
                    "b-out",
                    json!({"podSelector": ml("pod", "b"), "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ml("ns", "z")}]}]}),
                ),
                out_to("to-yb", json!([{"ipBlock": {"cidr": host(pod("y", "b"))}}]), json!([])),
            ],
        ),
        s(
            "issue 15.5: ingress rules and egress: [] without policyTypes",
            vec![np(
                "x",
                "no-types",
                json!({"podSelector": xa(), "ingress": [{"from": [{"podSelector": ml("pod", "b")}]}], "egress": []}),
            )],
        ),
        s(
            "no policyTypes with an egress rule: both directions",
            vec![np(
                "x",
                "implied",
                json!({"podSelector": xa(), "egress": [{"to": [{"podSelector": ml("pod", "b")}]}]}),
            )],
        ),
    ];
    // Updates, relabels, deletions.
    v.push(s(
        "update: x/a from y on 81",
        vec![in_ports("upd", json!([{"namespaceSelector": ml("ns", "y")}]), json!([{"port": 81}]))],
    ));
    v.push(s(
        "update: the same policy now on 80",
        vec![in_ports("upd", json!([{"namespaceSelector": ml("ns", "y")}]), json!([{"port": 80}]))],
    ));
    v.push(s("deletion: the policy is gone", vec![]));
    let team = || in_from("team", json!([{"namespaceSelector": ml("team", "blue")}]));
    v.push(s("from team=blue: no namespace has it yet", vec![team()]));
    let mut relabel_ns = s("namespace y relabelled team=blue", vec![team()]);
    relabel_ns.ns_labels = vec![("y", json!({"ns": "y", "team": "blue"}))];
    v.push(relabel_ns);
    let tier = || in_from("tier", json!([{"namespaceSelector": {}, "podSelector": ml("tier", "fe")}]));
    v.push(s("from tier=fe: no pod has it yet", vec![tier()]));
    let mut relabel_pod = s("pod z/b relabelled tier=fe", vec![tier()]);
    relabel_pod.pod_labels = vec![(pod("z", "b"), json!({"pod": "b", "tier": "fe"}))];
    v.push(relabel_pod);
    let mut unselect =
        s("pod x/a relabelled out of its deny policy", vec![np("x", "deny-a", json!({"podSelector": xa()}))]);
    unselect.pod_labels = vec![(pod("x", "a"), json!({"pod": "a2"}))];
    v.push(unselect);
    let mut into_deny =
        s("pod x/b relabelled into a deny policy", vec![np("x", "deny-a", json!({"podSelector": xa()}))]);
    into_deny.pod_labels = vec![(pod("x", "b"), json!({"pod": "a"}))];
    v.push(into_deny);
    let mut moved = s(
        "named ports follow the pods: x/a's serve-81-tcp now on 80",
        vec![in_ports("named81", json!([]), json!([{"port": "serve-81-tcp"}]))],
    );
    moved.ports = vec![(pod("x", "a"), vec![("serve-81-tcp", "TCP", 80), ("serve-80-udp", "UDP", 80)])];
    v.push(moved);
    let mut egress_moved = s(
        "egress named port resolves per destination: y/c serves serve-81-tcp on 80",
        vec![out_to("out-named", json!([]), json!([{"port": "serve-81-tcp"}]))],
    );
    egress_moved.ports = vec![(pod("y", "c"), vec![("serve-81-tcp", "TCP", 80)])];
    v.push(egress_moved);
    // Broken policies among valid ones.
    let mut bad_range = s(
        "issue 15.6: an unenforceable endPort among valid policies",
        vec![
            in_ports("bad-range", json!([]), json!([{"port": 81, "endPort": 80}])),
            np("y", "deny-in", json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
            np("z", "z-80", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})),
        ],
    );
    bad_range.broken = vec!["x/bad-range"];
    v.push(bad_range);
    let mut bad_obj = s(
        "an undecodable policy isolates its pods, the others apply",
        vec![
            np(
                "y",
                "garbled",
                json!({"podSelector": ml("pod", "c"), "policyTypes": ["Ingress"], "ingress": "nonsense"}),
            ),
            np(
                "x",
                "x-from-y",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ml("ns", "y")}]}]}),
            ),
        ],
    );
    bad_obj.broken = vec!["y/garbled"];
    v.push(bad_obj);
    let mut above = s(
        "endPort above 65535 and endPort without port",
        vec![
            in_ports("above", json!([]), json!([{"port": 80, "endPort": 70000}])),
            np(
                "z",
                "noport",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"endPort": 81}]}]}),
            ),
        ],
    );
    above.broken = vec!["x/above", "z/noport"];
    v.push(above);
    v.push(s("everything open again", vec![]));
    v
}
