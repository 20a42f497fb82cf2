//! Nothing lost or duplicated whatever the runtime does: racing ADDs and
//! DELs, an ADD killed at any point, a kernel that refuses the attach,
//! oversized input.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn assert_clean(net: &TestNet, container_ids: &[String]) {
    assert_eq!(net.lease_files(), Vec::<String>::new(), "leases left");
    assert_eq!(net.link_pins(), Vec::<String>::new(), "link pins left");
    if net.pin_path.join(&net.name).join("endpoints").exists() {
        assert_eq!(net.dump("endpoints"), Vec::<Value>::new(), "endpoints left");
        assert_eq!(net.dump("stats"), Vec::<Value>::new(), "stats left");
    }
    for id in container_ids {
        assert!(link_gone(&host_veth_of(id)), "veth of {id} left");
    }
    let dir = net.data_dir.join(&net.name);
    let stray: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    for f in &stray {
        let store = f == "lock" || f == "boot_id" || f.starts_with("last_reserved_ip.");
        assert!(store || f == "attachments", "stray file {f} in {}", dir.display());
    }
    let records: Vec<_> = std::fs::read_dir(dir.join("attachments")).into_iter().flatten().flatten().collect();
    assert!(records.is_empty(), "attachment records left: {records:?}");
}

#[test]
fn racing_adds_get_unique_addresses_and_racing_dels_leave_nothing() {
    if !privileged() {
        return;
    }
    // Exactly 32 addresses: .10 - .41.
    let mut net = TestNet::new(
        "race",
        61,
        json!({"subnet": null, "ipam": {"ranges": [[{"subnet": "10.251.61.0/24", "rangeStart": "10.251.61.10", "rangeEnd": "10.251.61.41"}]]}}),
    );
    let n = 33;
    let names: Vec<String> = (0..n).map(|i| net.new_netns(&format!("p{i}"))).collect();
    let ids: Vec<String> = (0..n).map(|i| format!("race-{i}")).collect();
    for (ns, id) in names.iter().zip(&ids) {
        net.pods.push((ns.clone(), id.clone(), "eth0".into()));
    }
    let outputs: Vec<std::process::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .zip(&ids)
            .map(|(ns, id)| {
                let net = &net;
                s.spawn(move || net.cni("ADD", &net.conf, id, Some(&format!("/run/netns/{ns}")), "eth0"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addresses = HashSet::new();
    let mut failures = Vec::new();
    for out in &outputs {
        if out.status.success() {
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(addresses.insert(r["ips"][0]["address"].as_str().unwrap().to_string()), "duplicate address");
        } else {
            failures.push(error_json(out));
        }
    }
    assert_eq!(addresses.len(), 32, "{failures:?}");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["code"], 11, "{}", failures[0]);
    assert_eq!(net.lease_files().len(), 32);
    assert_eq!(net.leased_endpoints().len(), 32);

    let dels: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .zip(&ids)
            .map(|(ns, id)| {
                let net = &net;
                s.spawn(move || {
                    net.cni("DEL", &net.conf, id, Some(&format!("/run/netns/{ns}")), "eth0").status.success()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(dels.iter().all(|ok| *ok));
    assert_clean(&net, &ids);
}

/// Starts an ADD and kills it with SIGKILL after `delay`.
fn killed_add(net: &TestNet, id: &str, netns: &str, delay: Duration) {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(net.conf.to_string().as_bytes());
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn add_killed_at_any_point_is_cleaned_by_del_or_gc() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("crash", 62, json!({}));
    let _keeper = net.add_pod("keeper"); // the network's shared state exists
    let ns = net.new_netns("victim");
    let mut ids = Vec::new();
    // Kill points spread over a whole ADD (a few to ~30 ms here).
    for (i, micros) in (0..24u64).map(|i| (i, 500 + i * 1500)).collect::<Vec<_>>() {
        let id = format!("crash-{i}");
        killed_add(&net, &id, &ns, Duration::from_micros(micros));
        if i % 2 == 0 {
            ok(net.cni("DEL", &net.conf, &id, Some(&format!("/run/netns/{ns}")), "eth0"));
        }
        ids.push(id);
    }
    // The odd ones are left for GC, which keeps only the keeper.
    let mut conf = net.conf.clone();
    conf["cniVersion"] = json!("1.1.0");
    let (_, keeper_id, _) = net.pods[0].clone();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": keeper_id, "ifname": "eth0"}]);
    ok(net.cni("GC", &conf, "", None, ""));
    assert_eq!(net.lease_files().len(), 1, "{:?}", net.lease_files());
    assert_eq!(net.link_pins().len(), 1);
    assert_eq!(net.leased_endpoints().len(), 1);
    for id in &ids {
        let veth = host_veth_of(id);
        let detail = String::from_utf8_lossy(&sh(&format!("ip -d link show {veth}")).stdout).into_owned();
        assert!(link_gone(&veth), "veth of {id} left: {detail}");
    }
    assert_eq!(netns_sh(&ns, "ip -o link").lines().count(), 1, "victim netns kept an interface");
    // And the network still works for a new pod.
    let fresh = net.add_pod("fresh");
    assert!(fresh.ping(_keeper.ip(4), 2));
}

#[test]
fn attach_refused_rolls_everything_back() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("refused", 63, json!({"attachMode": "tcx"}));
    let _other = net.add_pod("other");
    // Something that is not ours sits where the pod's link pin must go.
    let blocker = net.pin_path.join(&net.name).join("links").join(host_veth_of("refused-pod")).join("ingress");
    std::fs::create_dir_all(&blocker).unwrap();
    let ns = net.new_netns("p");
    let err = error_json(&net.cni("ADD", &net.conf, "refused-pod", Some(&format!("/run/netns/{ns}")), "eth0"));
    assert!(err["details"].as_str().unwrap().contains("pin tcx link"), "{err}");
    std::fs::remove_dir(&blocker).unwrap();
    std::fs::remove_dir(blocker.parent().unwrap()).unwrap();
    assert_eq!(net.lease_files().len(), 1, "the refused pod kept its lease");
    assert_eq!(net.leased_endpoints().len(), 1);
    assert!(link_gone(&host_veth_of("refused-pod")));
    assert_eq!(netns_sh(&ns, "ip -o link").lines().count(), 1);
    // DEL after the failed ADD succeeds, as runtimes call it.
    ok(net.cni("DEL", &net.conf, "refused-pod", Some(&format!("/run/netns/{ns}")), "eth0"));
}

#[test]
fn oversized_input_and_missing_variables_are_refused() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("input", 64, json!({}));
    let ns = net.new_netns("p");
    let path = format!("/run/netns/{ns}");
    let huge = format!("{{\"cniVersion\":\"1.0.0\",\"pad\":\"{}\"}}", "x".repeat(5 << 20));
    assert_eq!(error_json(&net.cni_raw("ADD", huge.as_bytes(), "c", Some(&path), "eth0"))["code"], 6);
    assert_eq!(error_json(&net.cni_raw("ADD", b"\xff\xfe garbage", "c", Some(&path), "eth0"))["code"], 6);
    assert_eq!(error_json(&net.cni_raw("ADD", b"[1,2,3]", "c", Some(&path), "eth0"))["code"], 7);
    let conf = net.conf.to_string();
    for (what, id, ifname) in [("no CNI_CONTAINERID", "", "eth0"), ("no CNI_IFNAME", "c", "")] {
        assert_eq!(error_json(&net.cni_raw("ADD", conf.as_bytes(), id, Some(&path), ifname))["code"], 4, "{what}");
    }
    assert!(net.lease_files().is_empty());
    assert!(link_gone(&net.bridge));
}
