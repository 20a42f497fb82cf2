//! What the operator and the runtime hand the plugin, taken at its word
//! only where that is safe: colliding hand-made rules, CNI_NETNS naming
//! the plugin's own namespace, planted links in the state directory, a
//! pin path with `..`, a MAC another pod has, and concurrent ADDs.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::json;

fn rule_numbers(net: &TestNet) -> Vec<u64> {
    let out = ok(net.cli(&["policy", "list", "--json"]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array().unwrap().iter().map(|r| r["rule"].as_u64().unwrap()).collect()
}

#[test]
fn rules_sharing_a_map_key_never_overwrite_each_other() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("inrules", 190, json!({}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let (ip_a, ip_b) = (a.ip(4).to_string(), b.ip(4).to_string());
    let to_b = SocketAddr::new(b.ip(4), 80);
    ok(net.cli(&["policy", "allow", "any", "any"]));
    assert!(tcp_reachable(Some(&b), Some(&a), to_b), "allow any -> any");
    // Rules 2 and 3 become the same iprules keys.
    ok(net.cli(&["policy", "deny", &ip_a, &ip_b, "--proto", "tcp", "--port", "80"]));
    ok(net.cli(&["policy", "allow", &ip_a, &ip_b, "--proto", "tcp", "--port", "80"]));
    assert_eq!(rule_numbers(&net), [1, 2, 3]);
    assert!(!tcp_reachable(Some(&b), Some(&a), to_b), "a later allow overwrote the deny");
    ok(net.cli(&["policy", "delete", "3"]));
    assert!(!tcp_reachable(Some(&b), Some(&a), to_b), "deleting the allow removed the deny");
    assert_eq!(rule_numbers(&net), [1, 2]);
    // The deny again, and its twin: deleting the first leaves the second.
    let out = ok(net.cli(&["policy", "deny", &ip_a, &ip_b, "--proto", "tcp", "--port", "80"]));
    let twin = String::from_utf8_lossy(&out.stdout).split(':').next().unwrap().trim_start_matches("rule ").to_string();
    ok(net.cli(&["policy", "delete", "2"]));
    assert!(!tcp_reachable(Some(&b), Some(&a), to_b), "deleting one deny removed its twin");
    ok(net.cli(&["policy", "delete", &twin]));
    assert!(tcp_reachable(Some(&b), Some(&a), to_b), "every deny deleted");
    assert!(!net.cli(&["policy", "delete", &twin]).status.success(), "a deleted rule is gone");
}
