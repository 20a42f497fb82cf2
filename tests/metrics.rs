//! `ebpfcni-agent metrics`: a policy drop a test causes with real packets is
//! counted at the Prometheus endpoint, under its network, reason and
//! direction.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// The value of the sample `name{labels}` (labels in the order written).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{{{labels}}} ");
    text.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.parse().ok())
}

#[test]
fn policy_drop_is_counted_at_the_endpoint() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("k17-metrics", 240, json!({}));
    let a = net.add_pod("k17a");
    let b = net.add_pod("k17b");
    assert!(a.ping(b.ip(4), 1), "honest traffic must flow");

    let mut child = Command::new(AGENT_BIN)
        .args(["metrics", "--listen", "127.0.0.1:0", "--pin-path"])
        .arg(&net.pin_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let server = KillOnDrop(child);
    let addr = line.trim().strip_prefix("serving metrics on http://").and_then(|s| s.strip_suffix("/metrics"));
    let addr = addr.unwrap_or_else(|| panic!("no address in {line:?}")).to_string();

    let network = format!("network=\"{}\"", net.name);
    let before = scrape(&addr);
    let drops = |t: &str, direction: &str| {
        sample(t, "ebpfcni_drops_total", &format!("{network},reason=\"policy\",direction=\"{direction}\""))
    };
    assert_eq!(drops(&before, "egress"), Some(0.0), "{before}");
    assert_eq!(drops(&before, "ingress"), Some(0.0), "{before}");
    let sent_before = sample(&before, "ebpfcni_pod_sent_packets_total", &network).unwrap();
    assert!(sent_before >= 1.0, "{before}");
    assert_eq!(sample(&before, "ebpfcni_pods", &network), Some(2.0), "{before}");

    // a -> b is denied: three pings, three policy drops.
    ok(net.cli(&["policy", "deny", &a.ip(4).to_string(), &b.ip(4).to_string(), "--proto", "icmp"]));
    for _ in 0..3 {
        assert!(!a.ping(b.ip(4), 1), "the deny did not hold");
    }
    let after = scrape(&addr);
    // Refused as a's own traffic, in a's from_pod.
    assert_eq!(drops(&after, "egress"), Some(3.0), "{after}");
    assert_eq!(drops(&after, "ingress"), Some(0.0), "{after}");
    assert_eq!(sample(&after, "ebpfcni_policy_rules", &network), Some(1.0), "{after}");
    assert!(sample(&after, "ebpfcni_map_entries", &format!("{network},map=\"endpoints\"")).unwrap() >= 2.0);
    assert!(sample(&after, "ebpfcni_map_capacity", &format!("{network},map=\"conntrack\"")).unwrap() > 0.0);
    assert!(after.contains("# TYPE ebpfcni_drops counter"), "{after}");

    // The node -> b is refused on its way into b (to_pod): ingress, under b.
    ok(net.cli(&["policy", "deny", "any", &b.ip(4).to_string(), "--proto", "icmp"]));
    for _ in 0..2 {
        let out = sh(&format!("ping -q -c 1 -W 1 {}", b.ip(4)));
        assert!(!out.status.success(), "the node's ping passed the deny");
    }
    let later = scrape(&addr);
    assert_eq!(drops(&later, "ingress"), Some(2.0), "{later}");
    assert_eq!(drops(&later, "egress"), Some(3.0), "{later}");
    assert_eq!(net.stats_of(b.ip(4))["drop_policy_ingress"], 2, "{:?}", net.stats_of(b.ip(4)));
    assert_eq!(net.stats_of(a.ip(4))["drop_policy_egress"], 3, "{:?}", net.stats_of(a.ip(4)));
    assert_eq!(net.stats_of(a.ip(4))["drop_policy"], 3, "the CLI's total is both directions");
    drop(server);
}
