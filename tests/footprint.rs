//! Kernel memory that follows the network's config and pods: maps sized
//! from `maxPods` (read back from the kernel by bpftool), `status` showing
//! each map's fill and memory, a network of 100 pods within its budget on
//! this machine and, computed from the per-CPU share, on 128 CPUs; a full
//! map refusing the next pod by name and reported until there is room;
//! sizes raised in the config taking effect at the next ADD with the
//! running pods' entries and counters kept; lowered below what the maps
//! hold, refused.

mod common;

use common::*;
use serde_json::{json, Value};

/// The network's part of `ebpfcni status --json`.
fn status(net: &TestNet) -> Value {
    let out = net.cli(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    v["networks"].as_array().and_then(|n| n.first()).cloned().unwrap_or_else(|| panic!("no network in {v}"))
}

fn map<'a>(network: &'a Value, name: &str) -> &'a Value {
    network["maps"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no map {name}"))
}

/// What the kernel says of a pinned map (`bpftool map show pinned`).
fn bpftool_map(net: &TestNet, name: &str) -> Value {
    let pin = net.pin_path.join(&net.name).join(name);
    let out = sh(&format!("bpftool -j map show pinned {}", pin.display()));
    assert!(out.status.success(), "bpftool map show {name}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

const MB: u64 = 1 << 20;

#[test]
fn default_network_of_100_pods_fits_its_budget() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("foot-default", 230, json!({"attachMode": "tc"}));
    let mut pods = Vec::new();
    for i in 0..100 {
        pods.push(net.add_pod(&format!("p{i}")));
    }
    // Every pod sends, so each has its counters (allocated on first use).
    let gw = "10.251.230.1";
    for p in &pods {
        assert!(p.ping(gw.parse().unwrap(), 1), "{} cannot reach its gateway", p.netns);
    }
    for (name, max) in [("pods", 256), ("endpoints", 768), ("stats", 768), ("conntrack", 32768), ("iprules", 131072)] {
        assert_eq!(bpftool_map(&net, name)["max_entries"], max, "map {name}");
    }
    // Per-CPU counters are allocated per entry, not preallocated.
    assert_eq!(bpftool_map(&net, "stats")["flags"].as_u64().unwrap() & 1, 1, "stats has BPF_F_NO_PREALLOC");

    let n = status(&net);
    assert_eq!(map(&n, "pods")["entries"], 100, "{n}");
    assert!(map(&n, "stats")["entries"].as_u64().unwrap() >= 100, "{n}");
    for m in n["maps"].as_array().unwrap() {
        eprintln!("{m}");
    }
    // Preallocated maps are charged whole; the others by what they hold.
    for name in ["pods", "endpoints", "conntrack", "stats"] {
        assert!(map(&n, name)["memlock"].as_u64().unwrap() > 0, "{}", map(&n, name));
    }
    assert_eq!(map(&n, "iprules")["memlock"], 0, "no rule, no memory");
    assert_eq!(n["full_maps"], json!([]), "{n}");
    let mem = &n["memory"];
    let (bytes, per_cpu, at_128) = (
        mem["bytes"].as_u64().unwrap(),
        mem["per_cpu_bytes"].as_u64().unwrap(),
        mem["bytes_at_128_cpus"].as_u64().unwrap(),
    );
    eprintln!("100 pods: {bytes} bytes, {per_cpu} per CPU, {at_128} on 128 CPUs");
    assert_eq!(bytes, n["maps"].as_array().unwrap().iter().map(|m| m["memlock"].as_u64().unwrap()).sum::<u64>());
    // The counters of 100 pods' addresses are in the per-CPU share.
    assert!(per_cpu >= 100 * 72, "{mem}");
    assert!(bytes <= 8 * MB, "a network of 100 pods takes {bytes} bytes of kernel memory");
    assert!(at_128 <= 64 * MB, "on 128 CPUs it would take {at_128} bytes");
    let table = String::from_utf8_lossy(&net.cli(&["status"]).stdout).into_owned();
    assert!(table.contains("of kernel memory in maps") && table.contains("100/256 entries"), "{table}");
}

#[test]
fn full_map_refuses_the_next_pod_and_sizes_grow_in_place() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("foot-full", 231, json!({"maxPods": 4}));
    let pods: Vec<Pod> = (0..4).map(|i| net.add_pod(&format!("p{i}"))).collect();
    assert!(pods[0].ping(pods[1].ip(4), 2), "pods of a full network still talk");
    let before = net.stats_of(pods[0].ip(4))["packets"].as_u64().unwrap();

    // The fifth ADD is refused, by name, with "try again later".
    let netns = net.new_netns("p4");
    let id = format!("{}-p4-0123456789", net.name);
    let out = net.cni("ADD", &net.conf, &id, Some(&format!("/run/netns/{netns}")), "eth0");
    let err = error_json(&out);
    assert_eq!(err["code"], 11, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("no room") && msg.contains("map pods is full (4 entries)") && msg.contains("maxPods"),
        "{err}"
    );
    assert!(link_gone(&host_veth_of(&id)), "the refused ADD left its veth");
    let n = status(&net);
    assert_eq!(n["full_maps"], json!(["pods"]), "{n}");
    assert_eq!((map(&n, "pods")["entries"].clone(), map(&n, "pods")["full"].clone()), (json!(4), json!(true)));
    let table = String::from_utf8_lossy(&net.cli(&["status"]).stdout).into_owned();
    assert!(table.contains("map full:  pods") && table.contains("raise maxPods"), "{table}");
    // CNI STATUS says an ADD would fail.
    let mut conf11 = net.conf.clone();
    conf11["cniVersion"] = json!("1.1.0");
    let st = error_json(&net.cni("STATUS", &conf11, "", None, "eth0"));
    assert!(st["msg"].as_str().unwrap().contains("pods"), "{st}");

    // Raised in the config: the next ADD takes the maps to the new size,
    // the running pods' entries and counters copied.
    net.conf["maxPods"] = json!(8);
    let out = net.cni("ADD", &net.conf, &id, Some(&format!("/run/netns/{netns}")), "eth0");
    assert!(out.status.success(), "ADD after raising maxPods: {}", String::from_utf8_lossy(&out.stdout));
    net.pods.push((netns.clone(), id.clone(), "eth0".into()));
    assert_eq!(bpftool_map(&net, "pods")["max_entries"], 8);
    assert_eq!(bpftool_map(&net, "endpoints")["max_entries"], 24);
    assert!(pods[0].ping(pods[1].ip(4), 1) && pods[3].ping(pods[2].ip(4), 1), "old pods after the resize");
    let fifth: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fifth_ip = fifth["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert!(pods[2].ping(fifth_ip.parse().unwrap(), 1), "an old pod reaches the new one");
    let n = status(&net);
    assert_eq!(map(&n, "pods")["entries"], 5, "{n}");
    assert_eq!(n["full_maps"], json!([]), "{n}");
    let after = net.stats_of(pods[0].ip(4))["packets"].as_u64().unwrap();
    assert!(after > before, "counters restarted at the resize: {before} then {after}");

    // Lowered below what the maps hold: ADD refuses the config (code 7),
    // nothing is dropped; DEL with the pod's old config (runtimes cache
    // it) keeps the maps' sizes.
    let mut small = net.conf.clone();
    small["maxPods"] = json!(4);
    let netns6 = net.new_netns("p5");
    let id6 = format!("{}-p5-0123456789", net.name);
    let err = error_json(&net.cni("ADD", &small, &id6, Some(&format!("/run/netns/{netns6}")), "eth0"));
    assert_eq!(err["code"], 7, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("map pods holds 5 entries"), "{err}");
    assert_eq!(bpftool_map(&net, "pods")["max_entries"], 8);
    ok(net.cni("DEL", &small, &pods[3].container_id, Some(&pods[3].netns_path()), "eth0"));
    assert_eq!(bpftool_map(&net, "pods")["max_entries"], 8, "a DEL resized the maps");
    assert!(pods[0].ping(pods[1].ip(4), 1), "pods after the refused shrink");
    assert_eq!(map(&status(&net), "pods")["entries"], 4);
}
