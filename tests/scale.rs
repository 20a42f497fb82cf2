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
    let left: Vec<String> = pods.iter().map(|(_, id)| host_veth_of(id)).filter(|v| link_exists(v)).collect();
    assert!(left.is_empty(), "host veths left: {left:?}");
}
