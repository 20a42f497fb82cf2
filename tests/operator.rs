//! What an operator runs, checked against what is really there: `status`
//! (exit codes, attachments as the kernel reports them, `--network`, JSON
//! with every field), `maps dump` of every map as table and JSON with
//! `--ip`/`--pod`, `pods`, `policy` with `any` and rules listed as typed,
//! and every subcommand on a closed pipe.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::{json, Value};

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v) => v,
        _ => panic!("not IPv4"),
    }
}

fn cli(net: &TestNet, args: &[&str]) -> Output {
    net.cli(args)
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn status(pin_path: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(BIN).args(["status", "--pin-path"]).arg(pin_path).args(extra).output().unwrap()
}

#[test]
fn status_exit_codes_kernel_attachments_network_and_json() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opstatus", 110, json!({}));
    let a = net.add_pod("a");
    let _b = net.add_pod("b");
    let mut other = TestNet::new("opstatus2", 111, json!({"attachMode": "tc"}));
    other.conf["bpfPinPath"] = json!(net.pin_path);
    other.pin_path = net.pin_path.clone();
    let _c = other.add_pod("c");

    let out = status(&net.pin_path, &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = json_of(&out);
    assert_eq!(s["ready"], true);
    assert_eq!(s["networks"].as_array().unwrap().len(), 2, "{s}");
    let one = json_of(&status(&net.pin_path, &["--json", "--network", &net.name]));
    assert_eq!(one["networks"].as_array().unwrap().len(), 1);
    let n = &one["networks"][0];
    assert_eq!(n["network"], json!(net.name));
    assert_eq!(n["pods"], 2);
    assert_eq!(n["attached"], json!({"tcx": 2, "tc": 0, "partial": 0, "detached": 0}), "{n}");
    let o = json_of(&status(&net.pin_path, &["--json", "--network", &other.name]));
    assert_eq!(o["networks"][0]["attached"], json!({"tcx": 0, "tc": 1, "partial": 0, "detached": 0}));
    assert!(!status(&net.pin_path, &["--network", "op16-none"]).status.success());

    // Unpinning a pod's links detaches it in the kernel: status says so
    // although every map entry is still there.
    std::fs::remove_dir_all(net.pin_path.join(&net.name).join("links").join(a.host_veth())).unwrap();
    let attached = || json_of(&status(&net.pin_path, &["--json", "--network", &net.name]))["networks"][0].clone();
    // The kernel releases an unpinned link from a work queue, soon after.
    wait_for(|| attached()["attached"]["detached"] == 1);
    let n = attached();
    assert_eq!(n["attached"], json!({"tcx": 1, "tc": 0, "partial": 0, "detached": 1}), "{n}");
    assert_eq!(n["endpoints"], 4, "two pods, each with its link-local address");

    // The table shows what the JSON holds, and nothing the JSON lacks.
    let table = String::from_utf8_lossy(&status(&net.pin_path, &["--network", &net.name]).stdout).into_owned();
    assert!(table.contains("1 attached with tcx, 0 with tc, 0 partial, 1 detached"), "{table}");
    for f in s["kernel"]["features"].as_array().unwrap() {
        assert!(table.contains(f["name"].as_str().unwrap()) && table.contains(f["role"].as_str().unwrap()));
    }
    for key in ["version", "bpf_program", "ready", "not_ready_reasons", "kernel", "bpffs", "pin_path"] {
        assert!(s.get(key).is_some(), "--json lacks {key}");
    }
    let p = &n["policy"];
    for key in ["default_action", "rules", "isolated_identities", "generation", "tracked_connections"] {
        assert!(p.get(key).is_some(), "--json lacks policy.{key}");
    }
    assert!(n["programs"][0]["pin"].is_string() && n["program_is_this_binary"] == true);

    // Not on bpffs: not ready, exit 1, the reason in the JSON and on stderr.
    let nowhere = std::env::temp_dir().join("ebpfcni-op16-not-bpffs");
    std::fs::create_dir_all(&nowhere).unwrap();
    let out = status(&nowhere, &["--json"]);
    let _ = std::fs::remove_dir_all(&nowhere);
    assert_eq!(out.status.code(), Some(1));
    let s = json_of(&out);
    assert_eq!(s["ready"], false);
    assert!(s["not_ready_reasons"][0].as_str().unwrap().contains("bpf filesystem"), "{s}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not ready"));
}

#[test]
fn every_map_dumps_as_table_and_json_with_ip_and_pod_filters() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opmaps", 112, json!({"policy": {"defaultAction": "deny"}}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    // NetworkPolicies isolate their pods' identities (identity_flags).
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k8s-policies.json");
    ok(cli(&net, &["policy", "sync", "-f", fixture.to_str().unwrap()]));
    ok(cli(&net, &["policy", "allow", &a.ip(4).to_string(), &b.ip(4).to_string(), "--proto", "icmp"]));
    assert!(a.ping(b.ip(4), 1));
    // A queued drop for the events map: a spoofed source.
    a.send_frame(icmp_frame(b.mac(), a.mac(), "10.251.112.200".parse().unwrap(), v4(b.ip(4))));

    for map in ["endpoints", "pods", "stats", "ipcache", "iprules", "identity_flags", "settings", "conntrack", "events"]
    {
        let table = ok(cli(&net, &["maps", "dump", map]));
        let text = String::from_utf8_lossy(&table.stdout).into_owned();
        assert!(!text.trim_start().starts_with('{') && !text.trim_start().starts_with('['), "{map}: {text}");
        assert!(text.lines().next().unwrap().chars().any(|c| c.is_ascii_uppercase()), "{map} has a header");
        if map != "events" {
            json_of(&ok(cli(&net, &["maps", "dump", map, "--json"]))).as_array().expect("a JSON array");
        }
    }
    // The drop was read (and consumed) by the table dump above: queue one
    // more for the JSON one.
    a.send_frame(icmp_frame(b.mac(), a.mac(), "10.251.112.201".parse().unwrap(), v4(b.ip(4))));
    // The drop reaches the ring from the veth's backlog, soon after.
    wait_for(|| {
        let events = json_of(&ok(cli(&net, &["maps", "dump", "events", "--json"])));
        events.as_array().unwrap().iter().any(|e| e["src"] == "10.251.112.201" && e["reason"] == "spoofed-ip")
    });

    let settings = String::from_utf8_lossy(&ok(cli(&net, &["maps", "dump", "settings"])).stdout).into_owned();
    assert!(settings.contains("deny") && settings.contains("GENERATION"), "{settings}");
    let flags = json_of(&ok(cli(&net, &["maps", "dump", "identity_flags", "--json"])));
    assert!(flags.as_array().unwrap().iter().any(|f| f["ingress_isolated"] == true), "{flags}");

    let a_ip = a.ip(4).to_string();
    let only_a = json_of(&ok(cli(&net, &["maps", "dump", "endpoints", "--json", "--ip", &a_ip])));
    assert_eq!(only_a.as_array().unwrap().len(), 1);
    assert_eq!(only_a[0]["ip"], json!(a.ip(4)));
    let data_dir = net.data_dir.to_string_lossy().into_owned();
    for pod in [a.container_id.as_str(), &a.host_veth()] {
        let stats =
            json_of(&ok(cli(&net, &["maps", "dump", "stats", "--json", "--pod", pod, "--data-dir", &data_dir])));
        assert_eq!(stats.as_array().unwrap().len(), 1, "{pod}: {stats}");
        assert_eq!(stats[0]["ip"], json!(a.ip(4)));
    }
    let ct = json_of(&ok(cli(&net, &["maps", "dump", "conntrack", "--json", "--ip", &b.ip(4).to_string()])));
    assert!(!ct.as_array().unwrap().is_empty(), "the allowed ping is tracked");
    assert!(!cli(&net, &["maps", "dump", "stats", "--pod", "op16-nobody"]).status.success());
}

#[test]
fn pods_ties_container_netns_addresses_veth_and_kernel_state() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("oppods", 113, json!({"policy": {"defaultAction": "deny"}}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    assert!(!a.ping(b.ip(4), 1), "denied: a drop to count");
    let data_dir = net.data_dir.to_string_lossy().into_owned();
    let rows = json_of(&ok(cli(&net, &["pods", "--json", "--data-dir", &data_dir])));
    let row = rows.as_array().unwrap().iter().find(|r| r["container_id"] == json!(a.container_id)).unwrap().clone();
    assert_eq!(row["interface"], "eth0");
    assert_eq!(row["netns"], json!(a.netns_path()));
    assert_eq!(row["addresses"][0], json!(a.ip(4)));
    assert!(row["addresses"][1].as_str().unwrap().starts_with("fe80::"), "{row}");
    assert_eq!(row["host_veth"], json!(a.host_veth()));
    assert_eq!(row["attach_mode"], "tcx");
    assert_eq!(row["state"], "tcx");
    assert!(row["identity"].as_u64().is_some());
    assert_eq!(row["isolation"], "both");
    assert!(row["packets"].is_u64() && row["drops"].as_u64().unwrap() >= 1, "{row}");
    let table = String::from_utf8_lossy(&ok(cli(&net, &["pods", "--data-dir", &data_dir])).stdout).into_owned();
    assert!(table.contains(&a.container_id) && table.contains(&a.host_veth()) && table.contains("CONTAINER"));
    // The kernel's word, not the map's: unpin a's links.
    std::fs::remove_dir_all(net.pin_path.join(&net.name).join("links").join(a.host_veth())).unwrap();
    let row_a = || {
        let rows = json_of(&ok(cli(&net, &["pods", "--json", "--data-dir", &data_dir])));
        rows.as_array().unwrap().iter().find(|r| r["container_id"] == json!(a.container_id)).unwrap().clone()
    };
    wait_for(|| row_a()["state"] == "detached");
    assert_eq!(row_a()["attach_mode"], "tcx", "the map still says tcx; the kernel says detached");
}

#[test]
fn policy_any_matches_both_sides_and_rules_list_as_typed() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opany", 114, json!({"policy": {"defaultAction": "deny"}}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    assert!(!a.ping(b.ip(4), 1));
    ok(cli(&net, &["policy", "allow", "any", "any", "--proto", "icmp"]));
    assert!(a.ping(b.ip(4), 2) && b.ping(a.ip(4), 2), "any -> any opens pod to pod");
    let c = net.add_pod("c");
    assert!(c.ping(a.ip(4), 2) && a.ping(c.ip(4), 2), "and holds for a pod added after the rule");
    ok(cli(&net, &["policy", "deny", "10.251.114.0/24", &b.ip(4).to_string(), "--proto", "tcp", "--port", "80"]));

    let rows = json_of(&ok(cli(&net, &["policy", "list", "--json"])));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "one row per rule: {rows:?}");
    assert_eq!((rows[0]["src"].as_str(), rows[0]["dst"].as_str()), (Some("any"), Some("any")));
    assert_eq!((rows[0]["verdict"].as_str(), rows[0]["proto"].as_str()), (Some("allow"), Some("icmp")));
    assert_eq!(rows[1]["src"], "10.251.114.0/24");
    assert_eq!(rows[1]["dst"], json!(b.ip(4).to_string()));
    assert_eq!((rows[1]["verdict"].as_str(), rows[1]["port"].as_u64()), (Some("deny"), Some(80)));
    let table = String::from_utf8_lossy(&ok(cli(&net, &["policy", "list"])).stdout).into_owned();
    assert_eq!(table.lines().count(), 3, "{table}");

    // Deleting a rule takes its CIDR's identity out of the ipcache.
    ok(cli(&net, &["policy", "delete", "2"]));
    assert!(!net.dump("ipcache").iter().any(|e| e["prefix"] == "10.251.114.0/24"), "{:?}", net.dump("ipcache"));
    ok(cli(&net, &["policy", "delete", "1"]));
    assert!(!a.ping(b.ip(4), 1));

    // After a sync, rules are named by their NetworkPolicy.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k8s-policies.json");
    ok(cli(&net, &["policy", "sync", "-f", fixture.to_str().unwrap()]));
    let rows = json_of(&ok(cli(&net, &["policy", "list", "--json"])));
    assert!(rows.as_array().unwrap().iter().any(|r| r["name"] == "backend/api-from-frontend"), "{rows}");
}

/// Runs `args` with stdout a pipe whose reader is already gone.
fn closed_pipe(net: &TestNet, args: &[&str], during: impl FnOnce(u32)) -> Output {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--network", &net.name, "--pin-path"])
        .arg(&net.pin_path)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    during(child.id());
    let _ = child.stdin.take();
    child.wait_with_output().unwrap()
}

#[test]
fn every_subcommand_exits_quietly_on_a_closed_pipe() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("oppipe", 115, json!({}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    let mut commands: Vec<Vec<&str>> = vec![
        vec!["version"],
        vec!["status"],
        vec!["status", "--json"],
        vec!["pods"],
        vec!["policy", "list"],
        vec!["policy", "list", "--json"],
        vec!["--help"],
    ];
    for map in ["endpoints", "pods", "stats", "ipcache", "iprules", "identity_flags", "settings", "conntrack", "events"]
    {
        commands.push(vec!["maps", "dump", map]);
        commands.push(vec!["maps", "dump", map, "--json"]);
    }
    for args in &commands {
        // `version` and `--help` take no --network: run those bare.
        let out = if matches!(args[0], "version" | "--help") {
            let (reader, writer) = nix::unistd::pipe().unwrap();
            drop(reader);
            Command::new(BIN).args(args).stdout(Stdio::from(writer)).stderr(Stdio::piped()).output().unwrap()
        } else {
            closed_pipe(&net, args, |_| {})
        };
        quiet(args, &out);
    }
    // The monitor, once it has an event to write.
    let dir = net.pin_path.join(&net.name).join("monitors");
    let out = closed_pipe(&net, &["monitor", "--duration", "30"], |pid| {
        wait_for(|| dir.join(pid.to_string()).exists());
        for i in 0..20 {
            let src = Ipv4Addr::new(10, 251, 115, 200 + i);
            a.send_frame(icmp_frame(b.mac(), a.mac(), src, v4(b.ip(4))));
        }
    });
    quiet(&["monitor"], &out);
}

/// Ended by success or by SIGPIPE, with nothing on stderr.
fn quiet(args: &[&str], out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || out.status.signal() == Some(nix::libc::SIGPIPE),
        "{args:?}: {:?} {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{args:?} wrote to stderr: {stderr}");
}

/// Polls a condition the test cannot be notified of (a file appearing),
/// up to 10 s.
pub fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("condition not reached in 10 s");
}
