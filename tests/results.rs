//! CNI results and the spec, checked against the reference plugins: the
//! same config and version given to the reference bridge (+ host-local)
//! and to ebpfcni yield results with the same fields; commands a config's
//! version does not allow are refused with code 1 as the reference
//! plugins refuse them; a result lists exactly the routes installed;
//! impossible requests fail with the right code; no input panics.

mod common;

use std::process::Output;

use common::*;
use serde_json::{json, Value};

const REF_BRIDGE: &str = "/usr/lib/cni/bridge";

/// The reference bridge plugin, called as a runtime calls it, inside the
/// network's own node namespace: its `isGateway` turns on forwarding,
/// which the machine's own namespace must keep as it is.
fn reference(node: &str, command: &str, conf: &Value, id: &str, netns: &str) -> Output {
    run_plugin_in(Some(node), REF_BRIDGE, command, id, netns, conf)
}

/// A value's shape: every object's keys (recursively), arrays element by
/// element, leaves by JSON type.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

/// The reference bridge's network for one version: its own bridge, subnet,
/// lease dir; removed on drop with whatever ADD made.
struct RefNet {
    conf: Value,
    node: String,
    netns: String,
    data_dir: std::path::PathBuf,
}

impl RefNet {
    fn new(version: &str, tag: usize, dns: &Value) -> Self {
        let data_dir = std::env::temp_dir().join(format!("ebpfcni-op16-ref{tag}"));
        let _ = std::fs::remove_dir_all(&data_dir);
        let netns = format!("op16-ref{tag}");
        let node = format!("op16-refnode{tag}");
        let _ = sh(&format!("ip netns del {netns} 2>/dev/null; ip netns del {node} 2>/dev/null"));
        assert!(sh(&format!("ip netns add {netns} && ip netns add {node}")).status.success());
        let conf = json!({
            "cniVersion": version, "name": format!("op16-ref{tag}"), "type": "bridge",
            "bridge": format!("op16ref{tag}"), "isGateway": true, "isDefaultGateway": true, "mtu": 1400,
            "ipam": {"type": "host-local", "subnet": format!("10.251.{}.0/24", 120 + tag), "dataDir": data_dir,
                     "routes": [{"dst": "10.96.0.0/12", "gw": format!("10.251.{}.1", 120 + tag)}]},
            "dns": dns,
        });
        RefNet { conf, node, netns, data_dir }
    }

    fn add(&self) -> Value {
        let out = reference(&self.node, "ADD", &self.conf, "op16-ref", &format!("/run/netns/{}", self.netns));
        serde_json::from_slice(&ok(out).stdout).unwrap()
    }
}

impl Drop for RefNet {
    fn drop(&mut self) {
        let _ = reference(&self.node, "DEL", &self.conf, "op16-ref", &format!("/run/netns/{}", self.netns));
        let _ = sh(&format!("ip netns del {} 2>/dev/null; ip netns del {} 2>/dev/null", self.netns, self.node));
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[test]
fn results_have_the_reference_bridges_fields_in_every_version() {
    if !privileged() {
        return;
    }
    let dns = json!({"nameservers": ["10.96.0.10"], "domain": "cluster.local",
                     "search": ["default.svc.cluster.local"], "options": ["ndots:5"]});
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].iter().enumerate() {
        let refnet = RefNet::new(version, i, &dns);
        let theirs = refnet.add();
        let mut net = TestNet::new(
            &format!("opres{i}"),
            100 + i as u8,
            json!({
                "cniVersion": version, "subnet": null, "mtu": 1400, "dns": dns,
                "ipam": {"subnet": format!("10.251.{}.0/24", 100 + i),
                         "routes": [{"dst": "10.96.0.0/12", "gw": format!("10.251.{}.1", 100 + i)}]},
            }),
        );
        let ours = net.add_pod("a").result;
        assert_eq!(shape(&ours), shape(&theirs), "{version}: ours {ours}\nreference {theirs}");
        assert_eq!(ours["dns"], dns, "{version}: dns passed through");
        assert_eq!(ours["cniVersion"], theirs["cniVersion"]);
        let dsts = |r: &Value| {
            let mut d: Vec<String> =
                r["routes"].as_array().unwrap().iter().map(|r| r["dst"].as_str().unwrap().to_string()).collect();
            d.sort();
            d
        };
        assert_eq!(dsts(&ours), dsts(&theirs), "{version}");
    }
    // 1.1.0 (which the Debian reference plugins do not speak yet) adds
    // interfaces[].mtu and nothing else.
    let mut net = TestNet::new("opres4", 104, json!({"cniVersion": "1.1.0", "mtu": 1400}));
    let r = net.add_pod("a").result;
    assert!(r["interfaces"].as_array().unwrap().iter().all(|i| i["mtu"] == 1400), "{r}");
    assert_eq!(r["dns"], json!({}));
}

#[test]
fn commands_the_config_version_does_not_allow_get_code_1() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opver", 105, json!({"cniVersion": "0.3.1"}));
    let a = net.add_pod("a");
    let ours = error_json(&net.again("CHECK", &net.with_prev(&a.result), &a));
    assert_eq!(ours["code"], 1, "{ours}");
    // The reference bridge refuses the same way.
    let refnet = RefNet::new("0.3.1", 5, &json!({}));
    let prev = refnet.add();
    let mut conf = refnet.conf.clone();
    conf["prevResult"] = prev;
    let theirs: Value = serde_json::from_slice(&reference_out(reference(
        &refnet.node,
        "CHECK",
        &conf,
        "op16-ref",
        "/run/netns/op16-ref5",
    )))
    .unwrap();
    assert_eq!(theirs["code"], ours["code"], "{theirs}");

    let mut v10 = net.conf.clone();
    v10["cniVersion"] = json!("1.0.0");
    v10["cni.dev/valid-attachments"] = json!([]);
    for command in ["GC", "STATUS"] {
        let e = error_json(&net.cni(command, &v10, "", None, ""));
        assert_eq!(e["code"], 1, "{command}: {e}");
    }
    assert_eq!(net.lease_files().len(), 1, "the refused GC released nothing");
}

fn reference_out(out: Output) -> Vec<u8> {
    assert!(!out.status.success());
    out.stdout
}

#[test]
fn results_list_exactly_the_routes_installed() {
    if !privileged() {
        return;
    }
    let mut first = TestNet::new("oproute1", 106, json!({}));
    let mut second =
        TestNet::new("oproute2", 107, json!({"ipam": {"routes": [{"dst": "192.168.107.0/24"}]}, "subnet": null}));
    second.conf["ipam"]["subnet"] = json!("10.251.107.0/24");
    let a = first.add_pod("a");
    // A second attachment in the same pod: the pod already has a default
    // route (via eth0), so eth1 gets none and its result lists none.
    let out = second.cni("ADD", &second.conf, &a.container_id, Some(&a.netns_path()), "eth1");
    let r: Value = serde_json::from_slice(&ok(out).stdout).unwrap();
    second.pods.push((a.netns.clone(), a.container_id.clone(), "eth1".into()));
    let routes = netns_sh(&a.netns, "ip -j route show");
    let installed: Vec<Value> = serde_json::from_str(&routes).unwrap();
    for route in r["routes"].as_array().unwrap() {
        let dst = route["dst"].as_str().unwrap().trim_end_matches("/0");
        let want = if dst == "0.0.0.0" { "default" } else { dst };
        assert!(
            installed.iter().any(|i| i["dst"] == want && i["dev"] == "eth1" && i["gateway"] == route["gw"]),
            "result lists {route} but the pod has {routes}"
        );
    }
    assert!(!r["routes"].as_array().unwrap().iter().any(|r| r["dst"] == "0.0.0.0/0"), "{r}");
    assert_eq!(installed.iter().filter(|i| i["dst"] == "default").count(), 1, "{routes}");

    // A gateway the pod cannot reach is an invalid config, before anything.
    let mut bad = first.conf.clone();
    bad["subnet"] = Value::Null;
    bad["ipam"] = json!({"subnet": "10.251.106.0/24", "routes": [{"dst": "10.9.0.0/16", "gw": "192.0.2.1"}]});
    let ns = first.new_netns("gw");
    let e = error_json(&first.cni("ADD", &bad, "op16-gw", Some(&format!("/run/netns/{ns}")), "eth0"));
    assert_eq!(e["code"], 7, "{e}");
    assert_eq!(first.lease_files().len(), 1);
}

#[test]
fn impossible_requests_fail_with_their_code_and_leave_nothing() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opreq", 108, json!({}));
    let ns = net.new_netns("p");
    let netns = format!("/run/netns/{ns}");
    // Two addresses of one family: refused, not cut to one.
    let mut two = net.conf.clone();
    two["args"] = json!({"cni": {"ips": ["10.251.108.5", "10.251.108.6"]}});
    let e = error_json(&net.cni("ADD", &two, "op16-two", Some(&netns), "eth0"));
    assert_eq!(e["code"], 7, "{e}");
    assert!(net.lease_files().is_empty());
    // No range set at all: a config error, not a panic.
    let mut empty = net.conf.clone();
    empty["subnet"] = Value::Null;
    empty["ipam"] = json!({"ranges": []});
    let out = net.cni("ADD", &empty, "op16-empty", Some(&netns), "eth0");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(error_json(&out)["code"], 7);
    // An interface of that name already in the pod.
    assert!(sh(&format!("ip -n {ns} link add eth0 type veth peer name op16peer")).status.success());
    let e = error_json(&net.cni("ADD", &net.conf, "op16-exists", Some(&netns), "eth0"));
    assert_eq!(e["code"], 4, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("eth0 already exists"), "{e}");
    assert!(net.lease_files().is_empty() && net.dump("endpoints").is_empty());
}

/// Random configs and environments through the real binary: every call
/// ends with exit 0 or 1 and stdout empty, a result or the error JSON.
#[test]
fn random_inputs_never_panic_the_plugin() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opfuzz", 109, json!({}));
    let ns = net.new_netns("p");
    let netns = format!("/run/netns/{ns}");
    let versions = ["0.3.0", "0.4.0", "1.0.0", "1.1.0", "2.0.0", ""];
    let ipams = [
        json!(null),
        json!({"ranges": []}),
        json!({"ranges": [[]]}),
        json!({"ranges": [[{"subnet": "10.251.109.0/30"}], [{"subnet": "fd00:251:109::/126"}]]}),
        json!({"subnet": "10.251.109.0/24", "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}),
        json!({"subnet": "10.251.109.0/31"}),
    ];
    let commands = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "BOGUS"];
    let ifnames = ["eth0", "", "a/b", "averyveryverylongname", "eth1"];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for _ in 0..60 {
        let mut conf = net.conf.clone();
        conf["cniVersion"] = json!(versions[next(versions.len())]);
        let ipam = ipams[next(ipams.len())].clone();
        if !ipam.is_null() {
            conf["subnet"] = Value::Null;
            conf["ipam"] = ipam;
        }
        if next(3) == 0 {
            let ips = ["10.251.109.1", "zz"][..1 + next(2)].to_vec();
            conf["args"] = json!({"cni": {"ips": ips}});
        }
        if next(3) == 0 {
            conf["prevResult"] = json!({"ips": [{"address": "nope"}]});
        }
        if next(4) == 0 {
            conf["cni.dev/valid-attachments"] = json!([]);
        }
        let command = commands[next(commands.len())];
        let ifname = ifnames[next(ifnames.len())];
        let netns_arg = [Some(netns.as_str()), None, Some("/proc/self/ns/net0")][next(3)];
        let out = net.cni(command, &conf, "op16-fuzz", netns_arg, ifname);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(matches!(out.status.code(), Some(0) | Some(1)), "{command} {conf}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{command} {conf}: {stderr}");
        if !out.stdout.is_empty() {
            let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
            assert!(out.status.success() || v["code"].is_u64(), "{v}");
        }
        if command == "ADD" && out.status.success() {
            net.pods.push((ns.clone(), "op16-fuzz".into(), ifname.into()));
        }
    }
}
