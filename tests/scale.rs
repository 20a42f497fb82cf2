//! A node filling up at once: 100 pods ADDed in parallel, as a kubelet
//! does when a node is drained onto another, then DELeted in parallel.
//! Outcomes only (how long it took is scripts/bench.sh's business): every
//! ADD succeeds with its own address, every pod has both programs and its
//! entries, the pods reach each other, and after the DELs nothing is left.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::*;
use serde_json::{json, Value};

const PODS: usize = 100;

#[test]
fn a_hundred_parallel_adds_get_distinct_addresses_and_their_programs_and_leave_nothing_behind() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("scale", 235, json!({}));
    let pods: Vec<(String, String)> = (0..PODS)
        .map(|i| {
            let ns = net.new_netns(&format!("p{i}"));
            (ns, format!("{}-p{i}-0123456789", net.name))
        })
        .collect();
    // Known to the network's cleanup before any ADD runs.
    net.pods.extend(pods.iter().map(|(ns, id)| (ns.clone(), id.clone(), "eth0".to_string())));

    let net = &net;
    let results: Vec<Value> = std::thread::scope(|s| {
        let running: Vec<_> = pods
            .iter()
            .map(|(ns, id)| {
                s.spawn(move || {
                    let out = net.cni("ADD", &net.conf, id, Some(&format!("/run/netns/{ns}")), "eth0");
                    assert!(
                        out.status.success(),
                        "ADD {id}: stdout={} stderr={}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    serde_json::from_slice::<Value>(&out.stdout).unwrap()
                })
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });

    // Distinct addresses, one lease each.
    let ips: Vec<IpAddr> = results
        .iter()
        .map(|r| r["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap())
        .collect();
    let distinct: BTreeSet<IpAddr> = ips.iter().copied().collect();
    assert_eq!(distinct.len(), PODS, "duplicate addresses among {ips:?}");
    assert_eq!(net.lease_files().len(), PODS);
    // Every pod's host veth has both programs' links (CHECK asks the
    // kernel which program each link of the veth's ifindex runs) and its
    // entries.
    let mut pinned = net.link_pins();
    pinned.sort();
    let mut veths: Vec<String> = pods.iter().map(|(_, id)| host_veth_of(id)).collect();
    veths.sort();
    assert_eq!(pinned, veths);
    std::thread::scope(|s| {
        for ((ns, id), result) in pods.iter().zip(&results) {
            s.spawn(move || {
                let conf = net.with_prev(result);
                ok(net.cni("CHECK", &conf, id, Some(&format!("/run/netns/{ns}")), "eth0"))
            });
        }
    });
    assert_eq!(net.leased_endpoints().len(), PODS);
    assert_eq!(net.dump("pods").len(), PODS);
    // The first and the last pod set up reach each other.
    let (first, last) = (&pods[0].0, &pods[PODS - 1].0);
    let ping = |from: &str, to: IpAddr| sh(&format!("ip netns exec {from} ping -c 1 -W 2 {to}")).status.success();
    assert!(ping(first, ips[PODS - 1]) && ping(last, ips[0]), "pods set up in parallel cannot reach each other");

    std::thread::scope(|s| {
        for (ns, id) in &pods {
            s.spawn(move || ok(net.cni("DEL", &net.conf, id, Some(&format!("/run/netns/{ns}")), "eth0")));
        }
    });
    assert_eq!(net.lease_files(), Vec::<String>::new(), "leases left");
    assert_eq!(net.link_pins(), Vec::<String>::new(), "link pins left");
    assert_eq!(net.dump("endpoints"), Vec::<Value>::new(), "endpoints left");
    assert_eq!(net.dump("pods"), Vec::<Value>::new(), "pod entries left");
    let left: Vec<String> = pods.iter().map(|(_, id)| host_veth_of(id)).filter(|v| !link_gone(v)).collect();
    assert!(left.is_empty(), "host veths left: {left:?}");
}

/// DEL returns before the kernel has deleted the veth (a child of the
/// plugin does that): what comes right after it must not notice, except
/// by the veth going a moment later.
#[test]
fn what_follows_a_del_waits_for_its_veth_teardown_and_never_loses_to_it() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("deltear", 236, json!({}));
    let ns = net.new_netns("shared");
    let path = format!("/run/netns/{ns}");
    let keeper = net.add_pod("keeper");
    let (a, b) = (format!("{}-a", net.name), format!("{}-b", net.name));
    net.pods.extend([a.clone(), b.clone()].map(|id| (ns.clone(), id, "eth0".to_string())));
    let add = |id: &str| -> Value {
        let out = ok(net.cni("ADD", &net.conf, id, Some(&path), "eth0"));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let del = |id: &str| ok(net.cni("DEL", &net.conf, id, Some(&path), "eth0"));

    // Another pod in the same namespace with the same name, right after.
    add(&a);
    del(&a);
    add(&b);
    assert!(link_gone(&host_veth_of(&a)), "a's veth stays");
    // The same pod again, right after its DEL: the teardown of the old
    // veth is over before the ADD starts, so it never takes the new one.
    del(&b);
    let again = add(&b);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(link_exists(&host_veth_of(&b)), "the re-ADDed pod lost its veth to the teardown");
    let ip = again["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert!(
        sh(&format!("ip netns exec {ns} ping -c 1 -W 2 {}", keeper.ip(4))).status.success(),
        "the re-ADDed pod ({ip}) cannot reach another"
    );
    assert_eq!(net.link_pins().len(), 2, "{:?}", net.link_pins());
    assert!(!net.pin_path.join(&net.name).join("retired").read_dir().unwrap().any(|_| true), "retired pins stay");

    // Even with the lease directory (and its lock) wiped right after a
    // DEL, the teardown deletes the veth it was given, by index, and only
    // its retired pins: the pod ADDed again at once under the same veth
    // name, elsewhere, keeps its veth and its programs.
    del(&b);
    std::fs::remove_dir_all(net.data_dir.join(&net.name)).unwrap();
    let elsewhere = net.new_netns("elsewhere");
    net.pods.push((elsewhere.clone(), b.clone(), "eth0".to_string()));
    let out = ok(net.cni("ADD", &net.conf, &b, Some(&format!("/run/netns/{elsewhere}")), "eth0"));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(link_exists(&host_veth_of(&b)), "the teardown deleted the veth of the pod ADDed since");
    assert!(net.link_pins().contains(&host_veth_of(&b)), "the teardown unpinned the links of the pod ADDed since");
    // Its gateway: the wiped leases no longer keep the keeper's address
    // from being handed out again.
    let gateway = result["ips"][0]["gateway"].as_str().unwrap();
    assert!(
        sh(&format!("ip netns exec {elsewhere} ping -c 1 -W 2 {gateway}")).status.success(),
        "the pod ADDed since cannot reach its gateway"
    );
}
