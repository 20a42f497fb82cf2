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
    let mut net = TestNet::new("in8rules", 190, json!({}));
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

/// Nothing of a refused ADD stays: no lease, no veth, no link pin.
fn nothing_left(net: &TestNet, container_id: &str) {
    assert!(net.lease_files().is_empty(), "leases left: {:?}", net.lease_files());
    assert!(link_gone(&host_veth_of(container_id)), "veth left behind");
    assert!(net.link_pins().is_empty(), "link pins left: {:?}", net.link_pins());
}

#[test]
fn the_plugins_own_netns_is_not_a_pod() {
    if !privileged() {
        return;
    }
    let net = TestNet::new("in8ownns", 191, json!({}));
    // The test runs in the node's namespace, as the runtime's plugin does;
    // a name in /run/netns bound to it is the same namespace.
    let _ = sh("ip netns del in8own 2>/dev/null");
    ok(sh(&format!("ip netns attach in8own {}", std::process::id())));
    struct Detach;
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = sh("ip netns del in8own");
        }
    }
    let _detach = Detach;
    for path in ["/proc/self/ns/net", "/run/netns/in8own"] {
        let id = "in8ownns-0123456789";
        let out = net.cni("ADD", &net.conf, id, Some(path), "in8eth");
        let err = error_json(&out);
        assert_eq!(err["code"], 4, "{path}: {err}");
        assert!(err["msg"].as_str().unwrap().contains("own network namespace"), "{err}");
        nothing_left(&net, id);
        assert!(link_gone("in8eth"), "the node got a pod interface");
    }
}

#[test]
fn a_link_planted_in_the_state_directory_is_not_followed() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("in8link", 192, json!({}));
    let dir = net.data_dir.join(&net.name);
    std::fs::create_dir_all(&dir).unwrap();
    let victim = net.data_dir.join("in8-victim");
    std::fs::write(&victim, "untouched").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join(".last_reserved_ip.0.tmp")).unwrap();
    let ns = net.new_netns("a");
    let id = "in8link-0123456789";
    let out = net.cni("ADD", &net.conf, id, Some(&format!("/run/netns/{ns}")), "eth0");
    let err = error_json(&out);
    assert!(err["msg"].as_str().unwrap().contains("not a regular file"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched", "written through the link");
    nothing_left(&net, id);
}

#[test]
fn a_pin_path_with_dotdot_is_refused() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("in8pin", 193, json!({}));
    let ns = net.new_netns("a");
    let mut conf = net.conf.clone();
    conf["bpfPinPath"] = json!(format!("{}/../../../tmp/in8-pins", net.pin_path.display()));
    let out = net.cni("ADD", &conf, "in8pin-0123456789", Some(&format!("/run/netns/{ns}")), "eth0");
    let err = error_json(&out);
    assert_eq!(err["code"], 7, "{err}");
    assert!(!std::path::Path::new("/tmp/in8-pins").exists());
    nothing_left(&net, "in8pin-0123456789");
}

#[test]
fn a_mac_another_pod_has_is_refused() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("in8mac", 194, json!({}));
    let mac = "02:18:19:4a:00:01";
    let (na, nb) = (net.new_netns("a"), net.new_netns("b"));
    let args = [("CNI_ARGS", &*format!("MAC={mac}"))];
    let conf = net.conf.to_string();
    let a = ok(net.cni_full(
        "ADD",
        conf.as_bytes(),
        "in8mac-a-0123456789",
        Some(&format!("/run/netns/{na}")),
        "eth0",
        &args,
    ));
    net.pods.push((na, "in8mac-a-0123456789".into(), "eth0".into()));
    let a: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(a["interfaces"][2]["mac"], mac);
    let leases = net.lease_files();
    let id = "in8mac-b-0123456789";
    let out = net.cni_full("ADD", conf.as_bytes(), id, Some(&format!("/run/netns/{nb}")), "eth0", &args);
    let err = error_json(&out);
    assert_eq!(err["code"], 4, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("already the MAC"), "{err}");
    assert_eq!(net.lease_files(), leases, "b's lease left behind");
    assert!(link_gone(&host_veth_of(id)), "b's veth left behind");
    // The same MAC in runtimeConfig: the config's error.
    let mut rc = net.conf.clone();
    rc["runtimeConfig"] = json!({"mac": mac});
    let err = error_json(&net.cni("ADD", &rc, id, Some(&format!("/run/netns/{nb}")), "eth0"));
    assert_eq!(err["code"], 7, "{err}");
}

#[test]
fn concurrent_adds_of_one_attachment_leave_it_whole() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("in8race", 195, json!({}));
    // The second ADD starts at different points of the first's work.
    for (round, delay) in [0u64, 20, 40, 60, 90, 130, 180].into_iter().enumerate() {
        let ns = net.new_netns(&format!("p{round}"));
        let id = format!("in8race-{round}-0123456789");
        let path = format!("/run/netns/{ns}");
        let outs: Vec<std::process::Output> = std::thread::scope(|s| {
            let first = s.spawn(|| net.cni("ADD", &net.conf, &id, Some(&path), "eth0"));
            std::thread::sleep(std::time::Duration::from_millis(delay));
            let second = s.spawn(|| net.cni("ADD", &net.conf, &id, Some(&path), "eth0"));
            vec![first.join().unwrap(), second.join().unwrap()]
        });
        net.pods.push((ns.clone(), id.clone(), "eth0".into()));
        let results: Vec<serde_json::Value> =
            outs.iter().filter(|o| o.status.success()).map(|o| serde_json::from_slice(&o.stdout).unwrap()).collect();
        assert!(
            !results.is_empty(),
            "both ADDs failed: {:?}",
            outs.iter().map(|o| String::from_utf8_lossy(&o.stderr)).collect::<Vec<_>>()
        );
        for o in outs.iter().filter(|o| !o.status.success()) {
            error_json(o);
        }
        if results.len() == 2 {
            assert_eq!(results[0]["ips"], results[1]["ips"], "two answers for one attachment");
        }
        let pod = Pod { netns: ns, container_id: id.clone(), ifname: "eth0".into(), result: results[0].clone() };
        assert_whole(&net, &pod, &format!("round {round}"));
        assert_eq!(net.lease_files().len(), round + 1, "one lease per pod");
    }
}

/// The pod has its lease, its programs (a spoofed source is dropped and
/// counted), its endpoint and pod entries.
fn assert_whole(net: &TestNet, pod: &Pod, when: &str) {
    let ip = pod.ip(4);
    let veth = pod.host_veth();
    assert!(net.lease_files().contains(&ip.to_string()), "{when}: lease gone: {:?}", net.lease_files());
    assert!(net.link_pins().contains(&veth), "{when}: from_pod detached: {:?}", net.link_pins());
    assert!(net.dump("endpoints").iter().any(|e| e["ip"] == json!(ip)), "{when}: endpoint gone");
    assert!(
        net.dump("pods").iter().any(|p| p["addr"] == json!(ip) || p["ip"] == json!(ip)),
        "{when}: pod entry gone: {:?}",
        net.dump("pods")
    );
    let before = net.stats_of(ip)["drop_spoofed"].as_u64().unwrap_or(0);
    let gw_mac = parse_mac(std::fs::read_to_string(format!("/sys/class/net/{}/address", net.bridge)).unwrap().trim());
    let spoofed = std::net::Ipv4Addr::new(10, 251, 0, 250);
    let gw = match net.conf["subnet"].as_str().unwrap().split('/').next().unwrap().parse::<std::net::Ipv4Addr>() {
        Ok(n) => std::net::Ipv4Addr::from(u32::from(n) + 1),
        Err(_) => unreachable!(),
    };
    pod.send_frame(icmp_frame(gw_mac, pod.mac(), spoofed, gw));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(net.stats_of(ip)["drop_spoofed"].as_u64().unwrap_or(0), before + 1, "{when}: spoofing not stopped");
}

#[test]
fn a_failed_retry_of_an_add_undoes_only_its_own_work() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("in8retry", 196, json!({}));
    let pod = net.add_pod("a");
    // The same attachment again, with a config that fails late: a new
    // lease in another subnet, then the bridge's gateway clash.
    let mut other = net.conf.clone();
    other["subnet"] = json!("10.251.197.0/24");
    let err = error_json(&net.again("ADD", &other, &pod));
    assert!(err["msg"].as_str().unwrap().contains("bridge"), "{err}");
    assert_eq!(net.lease_files(), [pod.ip(4).to_string()], "the retry's lease stayed or the first's went");
    assert_whole(&net, &pod, "after the failed retry");
}
