//! The classifier as the pod's guard and witness: spoofed traffic is
//! dropped and counted while honest traffic flows; default deny blocks
//! what no rule allows, a rule opens exactly its protocol and port in one
//! direction with its replies; the monitor reports drops.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v) => v,
        _ => panic!("not IPv4"),
    }
}

fn counter_of(net: &TestNet, pod: &Pod, field: &str) -> u64 {
    net.stats_of(pod.ip(4))[field].as_u64().unwrap_or(0)
}

#[test]
fn spoofed_ip_mac_and_arp_are_dropped_and_counted() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("spoof", 81, json!({}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    assert!(a.ping(b.ip(4), 2), "honest traffic must flow");
    let (a_mac, b_mac) = (a.mac(), b.mac());
    let gw: Ipv4Addr = "10.251.81.1".parse().unwrap();
    let base = counter_of(&net, &a, "drop_spoofed");

    // Another pod's source address.
    a.send_frame(icmp_frame(b_mac, a_mac, v4(b.ip(4)), v4(b.ip(4))));
    // An address nobody has.
    a.send_frame(icmp_frame(b_mac, a_mac, "10.251.81.200".parse().unwrap(), v4(b.ip(4))));
    // The pod's own address behind a forged MAC.
    a.send_frame(icmp_frame(b_mac, [2, 0xde, 0xad, 0xbe, 0xef, 1], v4(a.ip(4)), v4(b.ip(4))));
    // An ARP reply claiming b's address for a's MAC (cache poisoning). The
    // host's entry for b is flushed first, so what it holds afterwards
    // can only come from this reply.
    sh(&format!("ip neigh flush {} dev {}", b.ip(4), net.bridge));
    a.send_frame(arp_reply_frame(a_mac, a_mac, v4(b.ip(4)), gw));
    // An ARP reply whose sender MAC is not a's.
    a.send_frame(arp_reply_frame(a_mac, [2, 0xde, 0xad, 0xbe, 0xef, 2], v4(a.ip(4)), gw));
    std::thread::sleep(Duration::from_millis(200));

    assert_eq!(counter_of(&net, &a, "drop_spoofed") - base, 5, "{}", net.stats_of(a.ip(4)));
    assert_eq!(net.stats_of(b.ip(4))["drop_spoofed"].as_u64().unwrap_or(0), 0, "b did nothing wrong");
    let neigh =
        String::from_utf8_lossy(&sh(&format!("ip neigh show {} dev {}", b.ip(4), net.bridge)).stdout).into_owned();
    let a_mac_text = netns_sh(&a.netns, "cat /sys/class/net/eth0/address");
    assert!(!neigh.contains(a_mac_text.trim()), "the host believed the forged ARP reply: {neigh}");

    // An honest ARP from a (its own address) and traffic still pass.
    a.send_frame(arp_reply_frame(a_mac, a_mac, v4(a.ip(4)), gw));
    assert!(a.ping(b.ip(4), 2) && b.ping(a.ip(4), 2));
    assert_eq!(counter_of(&net, &a, "drop_spoofed") - base, 5);
}

#[test]
fn default_deny_opens_exactly_what_a_rule_allows() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("deny", 82, json!({"policy": {"defaultAction": "deny"}}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    let (ip_a, ip_b) = (a.ip(4), b.ip(4));
    let gw: IpAddr = "10.251.82.1".parse().unwrap();

    // Nothing listed: blocked both ways, to pods and through the bridge.
    assert!(!a.ping(ip_b, 1), "a -> b passed under default deny");
    assert!(!b.ping(ip_a, 1), "b -> a passed under default deny");
    assert!(!a.ping(gw, 1), "a -> gateway passed under default deny");
    assert!(!tcp_reachable(Some(&b), Some(&a), SocketAddr::new(ip_b, 8080)));
    assert!(counter_of(&net, &a, "drop_policy") >= 2);

    // One rule: a -> b tcp/8080. Replies pass without a rule of their own.
    let out =
        ok(net.cli(&["policy", "allow", &ip_a.to_string(), &ip_b.to_string(), "--proto", "tcp", "--port", "8080"]));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let rule = listed.split(':').next().unwrap().trim_start_matches("rule ").trim().to_string();
    assert!(tcp_reachable(Some(&b), Some(&a), SocketAddr::new(ip_b, 8080)), "the allowed flow failed");
    assert!(!tcp_reachable(Some(&a), Some(&b), SocketAddr::new(ip_a, 8080)), "the reverse direction opened");
    assert!(!tcp_reachable(Some(&b), Some(&a), SocketAddr::new(ip_b, 9090)), "another port opened");
    assert!(!a.ping(ip_b, 1), "another protocol opened");
    let ct = net.dump("conntrack");
    assert!(
        ct.iter().any(|c| c["src"] == json!(ip_a) && c["dst"] == json!(ip_b) && c["dport"] == 8080),
        "no tracked connection: {ct:?}"
    );
    let rules = net.dump("iprules");
    assert!(rules.iter().any(|r| r["port"] == 8080 && r["subject"] == json!(ip_a.to_string())), "{rules:?}");

    // Traffic through the bridge and host, to the pod: its to_pod program.
    let out = ok(net.cli(&["policy", "allow", "any", &ip_b.to_string(), "--proto", "icmp"]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rule "));
    let ping = sh(&format!("ping -c 1 -W 1 -I {} {ip_b}", net.bridge));
    assert!(ping.status.success(), "host -> b icmp must pass its allow-any rule");
    let ping = sh(&format!("ping -c 1 -W 1 -I {} {ip_a}", net.bridge));
    assert!(!ping.status.success(), "host -> a passed with no rule for a");

    // Deleting the rule closes the flow again, even for a new connection.
    ok(net.cli(&["policy", "delete", &rule]));
    assert!(!tcp_reachable(Some(&b), Some(&a), SocketAddr::new(ip_b, 8080)), "deleted rule still allows");

    // An explicit deny beats an allow.
    ok(net.cli(&["policy", "allow", &ip_a.to_string(), &ip_b.to_string()]));
    assert!(a.ping(ip_b, 1));
    ok(net.cli(&["policy", "deny", &ip_a.to_string(), &ip_b.to_string(), "--proto", "icmp"]));
    assert!(!a.ping(ip_b, 1), "deny did not win");
    assert!(tcp_reachable(Some(&b), Some(&a), SocketAddr::new(ip_b, 7070)), "deny of icmp closed tcp too");

    // `ebpfcni status` sums it up.
    let out = ok(Command::new(BIN).args(["status", "--json", "--pin-path"]).arg(&net.pin_path).output().unwrap());
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = &status["networks"][0];
    assert_eq!(n["network"], net.name.as_str(), "{status}");
    assert_eq!(n["pods"], 2);
    assert_eq!(n["attached"]["tcx"], 2, "as the kernel reports it");
    assert_eq!(n["program_is_this_binary"], true);
    assert_eq!(n["policy"]["default_action"], "deny");
    assert_eq!(n["policy"]["rules"], 3, "{status}");
    assert_eq!(status["ready"], true, "{status}");
    let feature =
        |name: &str| status["kernel"]["features"].as_array().unwrap().iter().find(|f| f["name"] == name).cloned();
    assert_eq!(feature("btf").unwrap()["present"], true, "{status}");
    assert_eq!(feature("bpf_redirect_peer").unwrap()["present"], true, "{status}");
    assert_eq!(feature("tcx").unwrap()["present"], true, "this kernel (>= 6.6) has TCX: {status}");
    // A pin path off bpffs: not ready, and the exit code says so (a readiness probe).
    let off = Command::new(BIN).args(["status", "--json", "--pin-path"]).arg(&net.data_dir).output().unwrap();
    assert!(!off.status.success(), "status off bpffs exited 0");
    let off: Value = serde_json::from_slice(&off.stdout).unwrap();
    assert_eq!(off["ready"], false, "{off}");
    let text = ok(Command::new(BIN).args(["status", "--pin-path"]).arg(&net.pin_path).output().unwrap());
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("default deny, 3 rules"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[test]
fn monitor_reports_a_denied_packet() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("monitor", 83, json!({"policy": {"defaultAction": "deny"}}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    let mut monitor = Command::new(BIN)
        .args(["monitor", "--json", "--count", "1", "--duration", "20", "--network", &net.name, "--pin-path"])
        .arg(&net.pin_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep sending until the monitor has seen one (it attaches quickly).
    let mut done = None;
    for _ in 0..40 {
        assert!(!a.ping(b.ip(4), 1));
        if let Some(status) = monitor.try_wait().unwrap() {
            done = Some(status);
            break;
        }
    }
    if done.is_none() {
        let _ = monitor.kill();
    }
    let out = monitor.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let event: Value = serde_json::from_str(text.lines().next().unwrap_or("{}")).unwrap_or(json!({}));
    assert_eq!(event["verdict"], "dropped", "{text}");
    assert_eq!(event["reason"], "policy", "{text}");
    assert_eq!(event["src"], json!(a.ip(4)), "{text}");
    assert_eq!(event["dst"], json!(b.ip(4)), "{text}");
    assert_eq!(event["proto"], "icmp", "{text}");
    assert_eq!(event["pod"], format!("{}({})", a.ip(4), a.host_veth()), "{text}");

    // The readable form names time, addresses, protocol, verdict, reason, pod.
    let out = Command::new(BIN)
        .args(["monitor", "--count", "1", "--duration", "20", "--network", &net.name, "--pin-path"])
        .arg(&net.pin_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!a.ping(b.ip(4), 1));
    let out = out.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(line.contains("DROPPED") && line.contains("reason=policy") && line.contains(&a.host_veth()), "{line}");
    assert!(
        line.contains(&format!("{}:", a.ip(4))) && line.contains(&format!("-> {}:", b.ip(4))) && line.contains("icmp"),
        "{line}"
    );

    // With --flows, allowed traffic is reported too (and only while asked).
    ok(net.cli(&["policy", "allow", &a.ip(4).to_string(), &b.ip(4).to_string(), "--proto", "icmp"]));
    let flows = Command::new(BIN)
        .args([
            "monitor",
            "--json",
            "--flows",
            "--count",
            "1",
            "--duration",
            "20",
            "--network",
            &net.name,
            "--pin-path",
        ])
        .arg(&net.pin_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(a.ping(b.ip(4), 1));
    let out = flows.wait_with_output().unwrap();
    let first = out.stdout.split(|c| *c == b'\n').next().unwrap_or_default().to_vec();
    let event: Value = serde_json::from_slice(&first).unwrap_or(json!({}));
    assert_eq!(event["verdict"], "redirected", "{event}");
    assert_eq!(event["src"], json!(a.ip(4)));
    assert_eq!(net.dump("settings")[0]["trace_flows"], false, "the monitor left flow tracing on");
}

/// Issue 9: `"port": 80, "endPort": 65616` is refused, not read as port
/// 80 alone (65616 = 65536 + 80, what a 16-bit truncation would make of
/// it): the sync fails naming it, and the rule opens nothing, port 80
/// included, while the pod stays isolated.
#[test]
fn abi_an_end_port_above_65535_is_refused() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("abiport", 250, json!({}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let pod = |name: &str, ip: IpAddr| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
               "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running", "podIP": ip.to_string()}})
    };
    let policy = |ports: Value| {
        json!({"kind": "List", "items": [
            pod("a", a.ip(4)), pod("b", b.ip(4)),
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "b-web", "namespace": "default"},
             "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
                      "ingress": [{"ports": ports}]}},
        ]})
    };
    let file = net.data_dir.join("abi-objects.json");
    std::fs::create_dir_all(&net.data_dir).unwrap();
    let web = SocketAddr::new(b.ip(4), 80);
    // The same rule with a valid range opens port 80.
    std::fs::write(&file, policy(json!([{"port": 80, "endPort": 81}])).to_string()).unwrap();
    ok(net.cli(&["policy", "sync", "-f", file.to_str().unwrap()]));
    assert!(tcp_reachable(Some(&b), Some(&a), web), "80-81 opens port 80");

    std::fs::write(&file, policy(json!([{"port": 80, "endPort": 65616}])).to_string()).unwrap();
    let out = net.cli(&["policy", "sync", "-f", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "endPort 65616 was accepted: {err}");
    assert!(err.contains("b-web") && err.contains("endPort 65616 above 65535"), "{err}");
    assert!(!tcp_reachable(Some(&b), Some(&a), web), "endPort 65616 opened port 80");
    assert!(!tcp_reachable(Some(&b), Some(&a), SocketAddr::new(b.ip(4), 81)), "endPort 65616 opened port 81");
    let rules = net.dump("iprules");
    assert!(rules.iter().all(|r| r["port"] != 80 && r["port"] != 81), "an entry for the broken rule: {rules:?}");
}
