//! DEL removes everything ADD made and is idempotent; bad input and
//! failures half-way through ADD leave nothing behind.

mod common;

use common::*;
use serde_json::{json, Value};

/// Nothing of `net` remains: no lease, endpoint, link pin, veth.
fn assert_nothing_left(net: &TestNet, host_veths: &[String]) {
    assert_eq!(net.lease_files(), Vec::<String>::new(), "leases left");
    assert_eq!(net.link_pins(), Vec::<String>::new(), "tcx link pins left");
    if net.pin_path.join(&net.name).join("endpoints").exists() {
        assert_eq!(net.dump("endpoints"), Vec::<Value>::new(), "endpoint entries left");
        assert_eq!(net.dump("stats"), Vec::<Value>::new(), "stats entries left");
        assert_eq!(net.dump("pods"), Vec::<Value>::new(), "pod entries left");
        assert_eq!(net.dump("ipcache"), Vec::<Value>::new(), "ipcache entries left");
    }
    for v in host_veths {
        assert!(link_gone(v), "veth {v} left");
    }
}

#[test]
fn del_removes_everything_and_is_idempotent() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("del", 21, json!({}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    assert!(a.ping(b.ip(4), 2));
    assert_eq!(net.lease_files().len(), 2);
    assert_eq!(net.link_pins().len(), 2);

    let out = net.del_pod(&a);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "DEL must print nothing: {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(link_gone(&a.host_veth()));
    assert_eq!(net.lease_files(), vec![b.ip(4).to_string()]);
    assert_eq!(net.link_pins(), vec![b.host_veth()]);
    let eps = net.leased_endpoints();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0]["ip"], json!(b.ip(4)));
    assert_eq!(net.stats_of(a.ip(4)), json!({}), "a's counters must go with it");
    // b is unaffected.
    let out =
        sh(&format!("ip netns exec {} ping -c 1 -W 1 {}", b.netns, b.result["ips"][0]["gateway"].as_str().unwrap()));
    assert!(out.status.success());

    // Twice is fine.
    assert!(net.del_pod(&a).status.success());

    // After the netns is gone (the pod died first), DEL still cleans up.
    sh(&format!("ip netns del {}", b.netns));
    assert!(net.del_pod(&b).status.success());
    // Without CNI_NETNS at all, too.
    assert!(net.cni("DEL", &net.conf, &b.container_id, None, "eth0").status.success());
    assert_nothing_left(&net, &[a.host_veth(), b.host_veth()]);

    // Addresses come back into use (round robin continues past them).
    let c = net.add_pod("c");
    assert_eq!(c.result["ips"][0]["address"], "10.251.21.4/24");
}

#[test]
fn invalid_configs_get_spec_errors_and_change_nothing() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("invalid", 22, json!({}));
    let ns = net.new_netns("p");
    let ns_path = format!("/run/netns/{ns}");
    let cases: Vec<(&str, Value, u64)> = vec![
        ("bad subnet", json!({"subnet": "10.251.22.0/33"}), 7),
        ("subnet is not a prefix", json!({"subnet": "banana"}), 7),
        ("gateway outside subnet", json!({"gateway": "10.99.0.1"}), 7),
        ("unknown cniVersion", json!({"cniVersion": "0.9.9"}), 1),
        ("typo in a key", json!({"subnett": "10.251.22.0/24"}), 7),
        ("wrong type", json!({"mtu": "1500"}), 7),
        ("unknown attach mode", json!({"attachMode": "xdp"}), 7),
        ("network name escaping the state dir", json!({"name": "../../etc"}), 7),
    ];
    for (what, patch, code) in cases {
        let mut conf = net.conf.clone();
        for (k, v) in patch.as_object().unwrap() {
            conf[k] = v.clone();
        }
        let out = net.cni("ADD", &conf, "c-invalid", Some(&ns_path), "eth0");
        let err = error_json(&out);
        assert_eq!(err["code"], code, "{what}: {err}");
    }
    // Truncated JSON is a decode error.
    let mut truncated = net.conf.to_string();
    truncated.truncate(truncated.len() / 2);
    let out = net.cni_raw("ADD", truncated.as_bytes(), "c", Some(&ns_path), "eth0");
    assert_eq!(error_json(&out)["code"], 6);
    let out = net.cni_raw("ADD", b"", "c", Some(&ns_path), "eth0");
    assert_eq!(error_json(&out)["code"], 6);
    // Deeply nested input is refused, not a stack overflow.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let out = net.cni_raw("ADD", nested.as_bytes(), "c", Some(&ns_path), "eth0");
    assert_eq!(error_json(&out)["code"], 6);

    assert!(link_gone(&net.bridge), "bridge created for an invalid config");
    assert!(!net.data_dir.join(&net.name).exists() || net.lease_files().is_empty());
    let links = String::from_utf8_lossy(&sh(&format!("ip netns exec {ns} ip -o link")).stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "pod netns got links: {links}");
}

#[test]
fn bad_environment_gets_code_4_and_changes_nothing() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("badenv", 23, json!({}));
    let ns = net.new_netns("p");
    let ns_path = format!("/run/netns/{ns}");
    let conf = net.conf.clone();
    let cases = [
        ("missing netns", "c1", None, "eth0"),
        ("netns that does not exist", "c1", Some("/run/netns/ebpfcni-no-such-netns"), "eth0"),
        ("netns path that is not a netns", "c1", Some("/etc/hostname"), "eth0"),
        ("ifname too long", "c1", Some(ns_path.as_str()), "eth0123456789abcdef"),
        ("ifname with a slash", "c1", Some(ns_path.as_str()), "eth/0"),
        ("container id escaping", "../c1", Some(ns_path.as_str()), "eth0"),
    ];
    for (what, id, netns, ifname) in cases {
        let out = net.cni("ADD", &conf, id, netns, ifname);
        assert_eq!(error_json(&out)["code"], 4, "{what}");
    }
    let out = net.cni("FROB", &conf, "c1", Some(&ns_path), "eth0");
    assert_eq!(error_json(&out)["code"], 4, "unknown command");
    assert!(net.lease_files().is_empty());
    assert!(link_gone(&net.bridge));
}

#[test]
fn failed_add_rolls_back_and_del_after_it_succeeds() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("rollback", 24, json!({}));
    // A veth holds the bridge's name: ADD fails after the address was
    // leased, and must give it back.
    let out = sh(&format!("ip link add {0} type veth peer name {0}p", net.bridge));
    assert!(out.status.success());
    let ns = net.new_netns("p");
    let out = net.cni("ADD", &net.conf, "c-rollback", Some(&format!("/run/netns/{ns}")), "eth0");
    let err = error_json(&out);
    assert!(err["msg"].as_str().unwrap().contains("not a bridge"), "{err}");
    assert!(net.lease_files().is_empty(), "lease kept after failed ADD: {:?}", net.lease_files());
    let veth = host_veth_of("c-rollback");
    assert!(link_gone(&veth));
    // The runtime calls DEL after a failed ADD: it must succeed.
    let out = net.cni("DEL", &net.conf, "c-rollback", Some(&format!("/run/netns/{ns}")), "eth0");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    sh(&format!("ip link del {}", net.bridge));

    // Range exhausted: /30 holds one pod; the second gets code 11 and
    // nothing of it is left.
    let mut small = TestNet::new("exhaust", 25, json!({"subnet": "10.251.25.0/30"}));
    let first = small.add_pod("a");
    assert_eq!(first.result["ips"][0]["address"], "10.251.25.2/30");
    let ns = small.new_netns("b");
    let out = small.cni("ADD", &small.conf, "c-second", Some(&format!("/run/netns/{ns}")), "eth0");
    assert_eq!(error_json(&out)["code"], 11);
    assert_eq!(small.lease_files(), vec!["10.251.25.2".to_string()]);
    assert!(link_gone(&host_veth_of("c-second")));
}

#[test]
fn version_lists_supported_versions() {
    let net = TestNet::new("version", 26, json!({}));
    let out = net.cni("VERSION", &json!({"cniVersion": "1.0.0"}), "x", None, "eth0");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
}
