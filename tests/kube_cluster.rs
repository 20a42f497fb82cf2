//! The agent following a Kubernetes cluster, for real: three nodes of the
//! multi-node harness, each running `ebpfcni-agent run` against a fake API
//! server (tests/common/fakeapi.rs) reached over the underlay. Nodes
//! joining and leaving change reachability; pods' labels, named ports and
//! NetworkPolicies change verdicts across nodes; the server cut keeps the
//! verdicts (fail static) and the agents resync when it returns; the
//! metrics report the drops the test caused. And the same agents run as
//! deploy/ebpfcni.yaml's DaemonSet pods (podman, exactly the manifest's
//! containers, in-cluster over TLS with a service account).

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::cluster::{pings, tcp_source, within, Cluster, Servers, SERVE_PORT};
use common::fakeapi::{namespace, network_policy, pod};
use common::privileged;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(2);

fn ip4(p: &common::Pod) -> IpAddr {
    p.ip(4)
}

/// Registers every pod of the cluster in the API: namespace "shop", label
/// app=<node><pod> (n1a …), role as given, a container port named "web".
fn register_pods(c: &Cluster, role_of: &dyn Fn(usize, usize) -> &'static str, web_port: u16) {
    let api = c.api.as_ref().unwrap();
    for (i, pods) in c.pods.iter().enumerate() {
        for (j, p) in pods.iter().enumerate() {
            let name = format!("n{}{}", i + 1, ["a", "b"][j]);
            let labels = json!({"app": name, "role": role_of(i, j)});
            api.apply(pod("shop", &name, labels, &ip4(p).to_string(), &c.nodes[i].name, &[("web", "TCP", web_port)]));
        }
    }
}

fn tcp_ok(c: &Cluster, from: (usize, usize), to: (usize, usize)) -> bool {
    let (client, server) = (&c.pods[from.0][from.1], &c.pods[to.0][to.1]);
    tcp_source(client, ip4(server), Duration::from_millis(400)).is_some()
}

fn assert_within(what: &str, mut f: impl FnMut() -> bool) {
    let took = within(LIMIT, &mut f);
    assert!(took.is_some(), "{what}: not within {LIMIT:?}");
}

/// The metrics of node `i`'s agent (it serves inside the node's namespace).
fn metrics(c: &Cluster, i: usize) -> String {
    let log = c.nodes[i].agent_log();
    let addr = log
        .lines()
        .find_map(|l| l.strip_prefix("serving metrics on http://"))
        .map(|a| a.trim_end_matches("/metrics").to_string())
        .unwrap_or_else(|| panic!("node {i}'s agent serves no metrics: {log}"));
    c.nodes[i].node.run_in(move || common::scrape(&addr))
}

fn policy_drops(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("ebpfcni_drops_total{") && l.contains("reason=\"policy\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn all_policy_drops(c: &Cluster) -> f64 {
    (0..c.nodes.len()).map(|i| policy_drops(&metrics(c, i))).sum()
}

#[test]
fn mnk17_agents_follow_nodes_pods_and_policies_across_nodes() {
    if !privileged() {
        return;
    }
    let c = Cluster::with_api("mnk17", 60, 3, "vxlan", json!({}));
    let api = c.api.as_ref().unwrap();
    api.apply(namespace("shop", json!({"team": "shop"})));
    let pods: Vec<&common::Pod> = c.pods.iter().flatten().collect();
    let _servers = Servers::start(&pods);

    // Every node knows every other from the API: pods reach across nodes.
    assert!(pings(&c.pods[0][0], ip4(&c.pods[2][0])), "n1a cannot reach n3a through the API's nodes");

    // A node leaving the cluster loses its route; coming back, it is reachable.
    c.write_peers(&[0, 1]);
    assert_within("node 3 gone", || !pings(&c.pods[0][0], ip4(&c.pods[2][0])));
    c.write_peers(&[0, 1, 2]);
    assert_within("node 3 back", || pings(&c.pods[0][0], ip4(&c.pods[2][0])));

    // n3a is the database: only role=client pods may reach its web port.
    register_pods(&c, &|i, j| if (i, j) == (0, 0) { "client" } else { "other" }, SERVE_PORT);
    let before = all_policy_drops(&c);
    api.apply(network_policy(
        "shop",
        "db",
        json!({
            "podSelector": {"matchLabels": {"app": "n3a"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                         "ports": [{"protocol": "TCP", "port": "web"}]}],
        }),
    ));
    assert_within("n2a refused by the new policy", || !tcp_ok(&c, (1, 0), (2, 0)));
    assert!(tcp_ok(&c, (0, 0), (2, 0)), "the client on node 1 is refused");
    assert!(!pings(&c.pods[0][0], ip4(&c.pods[2][0])), "ICMP passes a TCP-only policy");

    // A pod on node 2 relabelled client is let in.
    register_pods(&c, &|i, j| if i == 1 && j == 0 || (i, j) == (0, 0) { "client" } else { "other" }, SERVE_PORT);
    assert_within("n2a relabelled client", || tcp_ok(&c, (1, 0), (2, 0)));

    // The named port moves with its container: 7000 is no longer "web".
    register_pods(&c, &|i, j| if i == 1 && j == 0 || (i, j) == (0, 0) { "client" } else { "other" }, SERVE_PORT + 10);
    assert_within("web moved off 7000", || !tcp_ok(&c, (0, 0), (2, 0)));
    register_pods(&c, &|i, j| if i == 1 && j == 0 || (i, j) == (0, 0) { "client" } else { "other" }, SERVE_PORT);
    assert_within("web back on 7000", || tcp_ok(&c, (0, 0), (2, 0)));

    // The namespace's pods only, by namespace label: another team is refused.
    api.apply(network_policy(
        "shop",
        "db",
        json!({
            "podSelector": {"matchLabels": {"app": "n3a"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}]}],
        }),
    ));
    assert_within("same team allowed", || tcp_ok(&c, (1, 1), (2, 0)));
    api.apply(namespace("shop", json!({"team": "other"})));
    assert_within("namespace relabelled: refused", || !tcp_ok(&c, (1, 1), (2, 0)));

    // The drops were counted by the agents' metrics (on the node that
    // refused them: the receiver, or the sender when its datapath already
    // knows the destination is isolated).
    let after = all_policy_drops(&c);
    assert!(after > before, "no agent's metrics count a policy drop ({before} -> {after})");

    // The API server goes away: the policy deleted meanwhile stays in force.
    api.down();
    api.delete("NetworkPolicy", "shop", "db");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!tcp_ok(&c, (1, 1), (2, 0)), "verdicts changed while the API server was unreachable");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.nodes[2].template.with_file_name("kubernetes.json")).unwrap()).unwrap();
    assert!(state["kubernetes"]["unreachable_since"].is_number(), "the agent does not say since when: {state}");
    // Back: the agents resync and the deletion takes effect.
    api.up();
    let back = within(Duration::from_secs(20), || tcp_ok(&c, (1, 1), (2, 0)));
    assert!(back.is_some(), "the agents did not resync after the API server came back");
}

/// The DaemonSet of deploy/ebpfcni.yaml on two nodes (tests/common/daemonset.rs):
/// the init container installs the binaries and the conflist completed for
/// its node, the agent container (its capabilities only, /proc/sys
/// read-only but the host's /proc/sys/net mounted) programs the node
/// in-cluster, through the service account over TLS; the plugin's pods
/// reach across nodes, the readiness probe passes, a NetworkPolicy takes
/// effect, and a rolling update (SIGTERM, a new pod) keeps traffic flowing.
#[test]
fn mnds_the_daemonset_runs_the_agent_in_cluster_and_policy_takes_effect() {
    if !privileged() || !common::have("podman", &["--version"]) || !common::have("socat", &["-V"]) {
        return;
    }
    let c = Cluster::with_daemonset("mnds", 54, 2, "vxlan");
    let api = c.api.as_ref().unwrap();
    for n in &c.nodes {
        // The conflist the init container wrote is the one the agent keeps:
        // completed for the node, in the version the chained portmap speaks.
        let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&n.cni_conf).unwrap()).unwrap();
        let ours = &written["plugins"][0];
        assert_eq!(ours["subnet"], n.node.subnet.as_str(), "{written}");
        assert_eq!((ours["routing"].as_str(), ours["mtu"].as_u64()), (Some("vxlan"), Some(1450)), "{written}");
        assert_eq!(written["cniVersion"], "1.0.0", "not negotiated with portmap: {written}");
        assert_eq!(written["plugins"][1]["type"], "portmap");
        let dir = n.cni_conf.parent().unwrap();
        let files: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let pod = n.pod.as_ref().unwrap();
        assert!(pod.mounts.dir.join("opt-cni-bin/ebpfcni").exists(), "the init container installed no plugin");
        // Programmed from inside the container: forwarding on (through the
        // mounted /proc/sys/net; the node started with it off), the VXLAN
        // device, the peer's tunnel entry.
        assert_eq!(n.node.sh_ok("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
        assert!(n.node.sh("ip link show ebpfcni-vxlan").status.success());
        assert_eq!(n.status()["agent"]["peers"].as_array().map(Vec::len), Some(1), "{}", n.status());
        // The readiness probe, run as a kubelet runs it.
        let probe = pod.probe();
        assert!(probe.status.success(), "readiness: {}", String::from_utf8_lossy(&probe.stdout));
    }
    // Only the service account's token is answered, and it was presented.
    assert!(api.requests().iter().any(|r| r.contains("watch=true")), "{:?}", api.requests());
    let unauthorized = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.nodes[0].node.ns))
        .args(["kubectl", "--insecure-skip-tls-verify", "--token", "not-the-token"])
        .arg(format!("--server=https://10.248.0.254:{}", c.tls.as_ref().unwrap().port))
        .args(["get", "nodes"])
        .output()
        .unwrap();
    assert!(!unauthorized.status.success(), "a wrong token was answered");

    let pods: Vec<&common::Pod> = c.pods.iter().flatten().collect();
    let _servers = Servers::start(&pods);
    assert!(pings(&c.pods[0][0], ip4(&c.pods[1][0])), "n1a cannot reach n2a");
    assert!(tcp_ok(&c, (1, 1), (0, 1)), "n2b cannot reach n1b over TCP");

    // A NetworkPolicy from the API isolates n2a to role=client.
    api.apply(namespace("shop", json!({})));
    register_pods(&c, &|i, j| if (i, j) == (0, 0) { "client" } else { "other" }, SERVE_PORT);
    let before = all_policy_drops(&c);
    api.apply(network_policy(
        "shop",
        "db",
        json!({
            "podSelector": {"matchLabels": {"app": "n2a"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
        }),
    ));
    assert_within("n1b refused by the policy", || !tcp_ok(&c, (0, 1), (1, 0)));
    assert!(tcp_ok(&c, (0, 0), (1, 0)), "the client is refused");
    // The pods' metrics endpoints (127.0.0.1:9476 on each node) count it.
    assert!(all_policy_drops(&c) > before, "no agent's metrics count the refused connection");

    // A rolling update: the old pod goes (SIGTERM: exit 0), traffic flows
    // meanwhile, the new one takes the node over with nothing to change.
    let n = &c.nodes[1];
    assert!(n.stop_agent("TERM"), "the agent container did not exit 0 on SIGTERM:\n{}", n.agent_log());
    assert!(tcp_ok(&c, (0, 0), (1, 0)) && !tcp_ok(&c, (0, 1), (1, 0)), "verdicts changed without an agent");
    let since = common::cluster::now_secs();
    n.start_agent();
    n.wait_ready(since);
    assert_eq!(n.state()["last_reconcile"]["changes"], 0, "{}", n.agent_log());
    assert!(pings(&c.pods[1][1], ip4(&c.pods[0][1])), "n2b cannot reach n1b after the update");
}
