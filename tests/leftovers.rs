//! What must not be left behind: a repeated ADD in a new netns leaves no
//! stale ifindex, a changed config does not pile a second gateway on the
//! bridge (refused, as the reference bridge refuses it), DEL and GC of
//! everything leave every map of the network empty, and host veths carry
//! a device group `ip link show group N` can select.

mod common;

use common::*;
use serde_json::{json, Value};

fn ifindex(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex")).unwrap().trim().parse().unwrap()
}

#[test]
fn repeated_add_in_a_new_netns_leaves_no_stale_ifindex() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opreadd", 126, json!({}));
    let a = net.add_pod("a");
    let old = ifindex(&a.host_veth());
    let ns2 = net.new_netns("a2");
    let out = net.cni("ADD", &net.conf, &a.container_id, Some(&format!("/run/netns/{ns2}")), "eth0");
    let r: Value = serde_json::from_slice(&ok(out).stdout).unwrap();
    net.pods.push((ns2.clone(), a.container_id.clone(), "eth0".into()));
    let new = ifindex(&a.host_veth());
    assert_ne!(old, new);
    let pods = net.dump("pods");
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0]["ifindex"], json!(new), "{pods:?}");
    let eps = net.dump("endpoints");
    assert!(eps.iter().all(|e| e["ifindex"] == json!(new)), "{eps:?}");
    assert_eq!(r["ips"], a.result["ips"], "the same lease");
}

#[test]
fn a_changed_config_never_adds_a_second_gateway() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opgw", 127, json!({}));
    let _a = net.add_pod("a");
    let mut changed = net.conf.clone();
    changed["subnet"] = json!("10.251.128.0/24");
    let ns = net.new_netns("b");
    let e = error_json(&net.cni("ADD", &changed, "op16-gw-b", Some(&format!("/run/netns/{ns}")), "eth0"));
    assert!(e["msg"].as_str().unwrap().contains("already has address 10.251.127.1/24"), "{e}");
    assert_eq!(e["code"], 7);
    let addrs = String::from_utf8_lossy(&sh(&format!("ip -4 -o addr show dev {}", net.bridge)).stdout).into_owned();
    assert_eq!(addrs.lines().count(), 1, "{addrs}");
    assert!(addrs.contains("10.251.127.1/24"));
    assert!(!net.data_dir.join(&net.name).join("10.251.128.2").exists(), "the refused ADD kept no lease");

    // The reference bridge refuses a second address the same way.
    let data = std::env::temp_dir().join("ebpfcni-op16-refgw");
    let refconf = |subnet: &str| {
        json!({"cniVersion": "1.0.0", "name": "op16-refgw", "type": "bridge", "bridge": net.bridge,
               "isGateway": true, "ipam": {"type": "host-local", "subnet": subnet, "dataDir": data}})
    };
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo '{}' | CNI_COMMAND=ADD CNI_CONTAINERID=op16-refgw CNI_NETNS=/run/netns/{ns} CNI_IFNAME=eth0 \
             CNI_PATH=/usr/lib/cni /usr/lib/cni/bridge",
            refconf("10.251.129.0/24")
        ))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&data);
    assert!(!out.status.success(), "the reference bridge took a second gateway");
    assert!(String::from_utf8_lossy(&out.stdout).contains("already has an IP address"));
}

#[test]
fn del_and_gc_of_everything_leave_every_map_empty() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opempty", 128, json!({"cniVersion": "1.1.0", "policy": {"defaultAction": "deny"}}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    let c = net.add_pod("c");
    ok(net.cli(&["policy", "allow", &a.ip(4).to_string(), &b.ip(4).to_string(), "--proto", "icmp"]));
    ok(net.cli(&["policy", "allow", "any", &c.ip(4).to_string(), "--proto", "icmp"]));
    assert!(a.ping(b.ip(4), 2) && a.ping(c.ip(4), 2));
    assert!(!net.dump("conntrack").is_empty());
    ok(net.del_pod(&a));
    // b and c are collected by GC (an empty valid list: nothing runs).
    let mut gc = net.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    ok(net.cni("GC", &gc, "", None, ""));
    net.pods.clear();
    for map in ["endpoints", "pods", "stats", "ipcache", "iprules", "identity_flags", "conntrack"] {
        let rows = net.dump(map);
        assert!(rows.is_empty(), "{map} after DEL and GC: {rows:?}");
    }
    assert!(net.lease_files().is_empty() && net.link_pins().is_empty());
}

#[test]
fn host_veths_are_in_a_group_ip_link_can_select() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opgroup", 129, json!({}));
    let a = net.add_pod("a");
    let line = String::from_utf8_lossy(&sh(&format!("ip -o link show dev {}", a.host_veth())).stdout).into_owned();
    let group = line.split_whitespace().skip_while(|w| *w != "group").nth(1).unwrap().to_string();
    let n: i64 = group.parse().unwrap_or_else(|_| panic!("group {group:?} is not a number: {line}"));
    assert!(n > 0 && n < 1 << 31, "{line}");
    let selected = String::from_utf8_lossy(&sh(&format!("ip -o link show group {n}")).stdout).into_owned();
    assert!(selected.contains(&a.host_veth()), "ip link show group {n}: {selected}");
}
