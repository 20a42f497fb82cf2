//! The full CNI spec as a runtime drives it: CHECK against prevResult,
//! GC with the valid-attachments list, STATUS, retried ADD, requested
//! addresses and MAC, results in every supported version, the log file.

mod common;

use common::*;
use serde_json::{json, Value};

fn check_error(net: &TestNet, pod: &Pod, prev: &Value) -> String {
    let err = error_json(&net.again("CHECK", &net.with_prev(prev), pod));
    assert_eq!(err["code"], 100, "{err}");
    err["msg"].as_str().unwrap().to_string()
}

#[test]
fn check_verifies_every_piece_add_made() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("check", 31, json!({}));
    let a = net.add_pod("a");
    let prev = a.result.clone();
    ok(net.again("CHECK", &net.with_prev(&prev), &a));

    // No prevResult: a config error.
    assert_eq!(error_json(&net.again("CHECK", &net.conf, &a))["code"], 7);

    // A MAC that is not the pod's.
    let mut wrong_mac = prev.clone();
    wrong_mac["interfaces"][2]["mac"] = json!("02:00:00:00:00:99");
    assert!(check_error(&net, &a, &wrong_mac).contains("has MAC"));

    // The address removed inside the pod; a retried ADD restores it.
    let ip = a.result["ips"][0]["address"].as_str().unwrap().to_string();
    sh(&format!("ip -n {} addr del {ip} dev eth0", a.netns));
    assert!(check_error(&net, &a, &prev).contains("lacks address"));
    let again: Value = serde_json::from_slice(&ok(net.again("ADD", &net.conf, &a)).stdout).unwrap();
    assert_eq!(again["ips"], prev["ips"]);
    ok(net.again("CHECK", &net.with_prev(&prev), &a));

    // The route removed.
    sh(&format!("ip -n {} route del default", a.netns));
    assert!(check_error(&net, &a, &prev).contains("route 0.0.0.0/0 via"));
    ok(net.again("ADD", &net.conf, &a));

    // The program detached (its link pin removed).
    std::fs::remove_file(net.pin_path.join(&net.name).join("links").join(a.host_veth()).join("ingress")).unwrap();
    assert!(check_error(&net, &a, &prev).contains("no TCX link"));
    ok(net.again("ADD", &net.conf, &a));
    ok(net.again("CHECK", &net.with_prev(&prev), &a));

    // The veth name reused by a new pair (new ifindex): the endpoint and
    // the program are checked by ifindex, so CHECK must notice.
    let (veth, ns) = (a.host_veth(), a.netns.clone());
    let gw = prev["ips"][0]["gateway"].as_str().unwrap();
    for cmd in [
        format!("ip link del {veth}"),
        format!("ip link add {veth} type veth peer name eth0 netns {ns}"),
        format!("ip -n {ns} addr add {ip} dev eth0"),
        format!("ip -n {ns} link set eth0 up"),
        format!("ip -n {ns} route add default via {gw}"),
        format!("ip link set {veth} master {} up", net.bridge),
    ] {
        assert!(sh(&cmd).status.success(), "{cmd}");
    }
    let mut new_mac = prev.clone();
    new_mac["interfaces"][2]["mac"] = json!(netns_sh(&ns, "cat /sys/class/net/eth0/address").trim());
    assert!(check_error(&net, &a, &new_mac).contains("ifindex"));

    // The lease gone.
    let b = net.add_pod("b");
    std::fs::remove_file(net.data_dir.join(&net.name).join(b.ip(4).to_string())).unwrap();
    assert!(check_error(&net, &b, &b.result).contains("not leased"));
}

#[test]
fn retried_add_returns_the_same_wiring() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("retry", 32, json!({}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    let ifindex = netns_sh(&a.netns, "cat /sys/class/net/eth0/ifindex");
    for _ in 0..3 {
        let out = ok(net.again("ADD", &net.conf, &a));
        let again: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(again, a.result, "a retried ADD must return the same result");
    }
    assert_eq!(netns_sh(&a.netns, "cat /sys/class/net/eth0/ifindex"), ifindex, "interface was recreated");
    assert_eq!(net.lease_files().len(), 2, "a retry took another address");
    assert_eq!(net.leased_endpoints().len(), 2);
    assert!(a.ping(b.ip(4), 2));
}

#[test]
fn requested_addresses_and_mac_are_honoured() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("request", 33, json!({"cniVersion": "1.1.0"}));
    // CNI_ARGS IP= and MAC=.
    let ns = net.new_netns("a");
    let out = net.cni_full(
        "ADD",
        net.conf.to_string().as_bytes(),
        "req-a",
        Some(&format!("/run/netns/{ns}")),
        "eth0",
        &[("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=a;IP=10.251.33.50;MAC=02:42:0a:fb:21:32")],
    );
    net.pods.push((ns.clone(), "req-a".into(), "eth0".into()));
    let r: Value = serde_json::from_slice(&ok(out).stdout).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.251.33.50/24");
    assert_eq!(netns_sh(&ns, "cat /sys/class/net/eth0/address").trim(), "02:42:0a:fb:21:32");
    assert_eq!(r["interfaces"][2]["mac"], "02:42:0a:fb:21:32");

    // runtimeConfig (capabilities ips, mac) and args.cni.ips.
    let mut conf = net.conf.clone();
    conf["runtimeConfig"] = json!({"ips": ["10.251.33.60/24"], "mac": "02:42:0a:fb:21:3c"});
    net.conf = conf;
    let b = net.add_pod("b");
    assert_eq!(b.result["ips"][0]["address"], "10.251.33.60/24");
    assert_eq!(netns_sh(&b.netns, "cat /sys/class/net/eth0/address").trim(), "02:42:0a:fb:21:3c");
    net.conf.as_object_mut().unwrap().remove("runtimeConfig");
    net.conf["args"] = json!({"cni": {"ips": ["10.251.33.70"]}});
    let c = net.add_pod("c");
    assert_eq!(c.result["ips"][0]["address"], "10.251.33.70/24");

    // A taken address is refused and nothing is left of the attempt.
    net.conf["args"] = json!({"cni": {"ips": ["10.251.33.50"]}});
    let ns = net.new_netns("d");
    let err = error_json(&net.cni("ADD", &net.conf, "req-d", Some(&format!("/run/netns/{ns}")), "eth0"));
    assert!(err["msg"].as_str().unwrap().contains("already leased"), "{err}");
    assert_eq!(net.lease_files().len(), 3);
    assert_eq!(netns_sh(&ns, "ip -o link").lines().count(), 1, "the pod kept an interface");
    assert!(a_ping(&b, "10.251.33.50"));
}

fn a_ping(from: &Pod, ip: &str) -> bool {
    from.ping(ip.parse().unwrap(), 2)
}

#[test]
fn results_come_in_the_configured_version() {
    if !privileged() {
        return;
    }
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let mut net = TestNet::new(&format!("ver{i}"), 34 + i as u8, json!({"cniVersion": version}));
        let a = net.add_pod("a");
        assert_eq!(a.result["cniVersion"], *version);
        let legacy = version.starts_with("0.");
        assert_eq!(a.result["ips"][0].get("version").is_some(), legacy, "{version}: {}", a.result);
        if legacy {
            assert_eq!(a.result["ips"][0]["version"], "4");
        }
        if legacy && version.starts_with("0.3") {
            // CHECK came with 0.4.0: earlier configs refuse it (code 1).
            assert_eq!(error_json(&net.again("CHECK", &net.with_prev(&a.result), &a))["code"], 1);
        } else {
            ok(net.again("CHECK", &net.with_prev(&a.result), &a));
        }
        ok(net.del_pod(&a));
    }
}

#[test]
fn gc_releases_everything_not_in_the_valid_list() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("gc", 40, json!({"logFile": null}));
    let log = net.data_dir.join("ebpfcni.log");
    net.conf["logFile"] = json!(log);
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    let c = net.add_pod("c");
    let dir = net.data_dir.join(&net.name);
    // An old host-local lease holding only a container ID, and a damaged one.
    std::fs::write(dir.join("10.251.40.200"), "oldpod").unwrap();
    std::fs::write(dir.join("10.251.40.201"), "").unwrap();

    let gc = |valid: Value, key: &str| {
        let mut conf = net.conf.clone();
        conf["cniVersion"] = json!("1.1.0");
        conf[key] = valid;
        ok(net.cni("GC", &conf, "", None, "")).stdout.clone()
    };
    let out = gc(
        json!([{"containerID": a.container_id, "ifname": "eth0"}, {"containerID": "oldpod", "ifname": "eth0"}]),
        "cni.dev/valid-attachments",
    );
    assert!(out.is_empty(), "GC prints nothing on success");
    let mut leases = net.lease_files();
    leases.sort();
    assert_eq!(leases, vec![a.ip(4).to_string(), "10.251.40.200".to_string()]);
    for gone in [&b, &c] {
        assert!(link_gone(&gone.host_veth()), "veth of a collected pod remains");
    }
    assert_eq!(net.link_pins(), vec![a.host_veth()]);
    let eps: Vec<Value> = net.leased_endpoints().iter().map(|e| e["ip"].clone()).collect();
    assert_eq!(eps, vec![json!(a.ip(4))]);
    assert!(dir.join("lock").exists() && dir.join("last_reserved_ip.0").exists());
    assert!(a.ping(a.result["ips"][0]["gateway"].as_str().unwrap().parse().unwrap(), 1));

    // The older key works too; an empty list releases everything.
    gc(json!([]), "cni.dev/attachments");
    assert!(net.lease_files().is_empty());
    assert!(net.link_pins().is_empty());
    assert!(net.dump("endpoints").is_empty() && net.dump("stats").is_empty());
    assert!(link_gone(&a.host_veth()));

    // GC without the list is refused rather than guessing.
    let mut v11 = net.conf.clone();
    v11["cniVersion"] = json!("1.1.0");
    assert_eq!(error_json(&net.cni("GC", &v11, "", None, ""))["code"], 7);

    let log = std::fs::read_to_string(&log).unwrap();
    let adds: Vec<&str> = log.lines().filter(|l| l.contains(" ADD ")).collect();
    assert_eq!(adds.len(), 3, "{log}");
    assert!(adds[0].contains(&format!("container={}", a.container_id)) && adds[0].contains("ifname=eth0"));
    assert!(adds[0].contains(&a.result["ips"][0]["address"].as_str().unwrap().to_string()));
    assert!(adds[0].contains("outcome=ok") && adds[0].contains("duration_ms="));
    assert!(log.lines().filter(|l| l.contains(" GC ")).count() >= 2, "{log}");
}

#[test]
fn status_reports_readiness() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("status", 41, json!({"cniVersion": "1.1.0", "subnet": "10.251.41.0/30"}));
    ok(net.cni("STATUS", &net.conf, "", None, ""));
    let _a = net.add_pod("a"); // the /30's only address
    let err = error_json(&net.cni("STATUS", &net.conf, "", None, ""));
    assert_eq!(err["code"], 50);
    assert!(err["msg"].as_str().unwrap().contains("no free address"), "{err}");

    let mut conf = net.conf.clone();
    conf["bpfPinPath"] = json!(net.data_dir.join("not-bpffs"));
    conf["name"] = json!("ebt-status-other");
    let err = error_json(&net.cni("STATUS", &conf, "", None, ""));
    assert_eq!(err["code"], 50);
    assert!(err["msg"].as_str().unwrap().contains("bpf filesystem"), "{err}");
}

/// A network the node agent manages (`routing`) takes no pod before the
/// agent has programmed the node: ADD answers 11 (try again later, the
/// runtime retries) and leaves nothing; STATUS says why.
#[test]
fn add_waits_for_the_agent_on_a_network_it_manages() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("agentwait", 247, json!({"cniVersion": "1.1.0", "routing": "vxlan"}));
    let netns = net.new_netns("a");
    let container_id = format!("{}-a-0123456789", net.name);
    let out = net.cni("ADD", &net.conf, &container_id, Some(&format!("/run/netns/{netns}")), "eth0");
    let err = error_json(&out);
    assert_eq!(err["code"], 11, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("agent has not programmed the node"), "{err}");
    assert!(net.lease_files().is_empty(), "{:?}", net.lease_files());
    assert!(link_gone(&host_veth_of(&container_id)), "a host veth was left");
    assert!(!netns_sh(&netns, "ip -o link show").contains("eth0"), "the pod got an interface");
    let err = error_json(&net.cni("STATUS", &net.conf, "", None, ""));
    assert_eq!(err["code"], 50);
    assert!(err["msg"].as_str().unwrap().contains("agent has not programmed"), "{err}");
}
