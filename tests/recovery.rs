//! A node's worst days: DEL when part of what it would remove is already
//! gone, a reboot that kept the lease files, and the pins wiped while
//! pods run. Maps are derived state; the lease store, the attachment
//! records and the node's links are the truth they are rebuilt from.

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{privileged, sh, Pod, TestNet};
use serde_json::{json, Value};

fn ok(out: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what}: stdout={} stderr={}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn records(net: &TestNet) -> Vec<String> {
    std::fs::read_dir(net.data_dir.join(&net.name).join("attachments"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn endpoint_ips(net: &TestNet) -> Vec<String> {
    if !net.pin_path.join(&net.name).join("endpoints").exists() {
        return Vec::new();
    }
    net.dump("endpoints").iter().filter_map(|e| e["ip"].as_str().map(String::from)).collect()
}

#[test]
fn del_succeeds_whatever_is_already_gone() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("rc-del", 220, json!({}));
    const PIECES: [&str; 5] = ["pins", "a map", "netns", "veth", "lease"];
    for mask in 1u32..(1 << PIECES.len()) {
        let pod = net.add_pod(&format!("p{mask}"));
        let ip = pod.ip(4).to_string();
        let veth = pod.host_veth();
        let missing: Vec<&str> = (0..PIECES.len()).filter(|i| mask & (1 << i) != 0).map(|i| PIECES[i]).collect();
        for piece in &missing {
            match *piece {
                "pins" => {
                    let _ = std::fs::remove_dir_all(net.pin_path.join(&net.name));
                }
                "a map" => {
                    let _ = std::fs::remove_file(net.pin_path.join(&net.name).join("endpoints"));
                }
                "netns" => {
                    sh(&format!("ip netns del {}", pod.netns));
                }
                "veth" => {
                    sh(&format!("ip link del {veth} 2>/dev/null"));
                }
                "lease" => {
                    let _ = std::fs::remove_file(net.data_dir.join(&net.name).join(&ip));
                }
                _ => unreachable!(),
            }
        }
        let out = net.del_pod(&pod);
        ok(out, &format!("DEL with {} gone", missing.join(" + ")));
        // Nothing of the pod is left, whatever was missing.
        assert!(!net.lease_files().contains(&ip), "{missing:?}: lease of {ip} left");
        assert!(common::link_gone(&veth), "{missing:?}: veth {veth} left");
        assert!(!net.link_pins().contains(&veth), "{missing:?}: link pins of {veth} left");
        assert!(!records(&net).contains(&veth), "{missing:?}: attachment record of {veth} left");
        assert!(!endpoint_ips(&net).contains(&ip), "{missing:?}: endpoint {ip} left");
        // A second DEL of the same pod is still a success.
        ok(net.del_pod(&pod), "DEL again");
        sh(&format!("ip netns del {} 2>/dev/null", pod.netns));
    }
}

/// What a reboot leaves: the lease files (and this store's boot stamp),
/// nothing else: namespaces, veths, the bridge and bpffs are gone.
fn reboot(net: &TestNet, pods: &[Pod]) {
    kill(pods);
    sh(&format!("ip link del {} 2>/dev/null", net.bridge));
    let _ = std::fs::remove_dir_all(&net.pin_path);
}

/// Pods that died without a DEL: their namespaces and veths are gone.
fn kill(pods: &[Pod]) {
    for pod in pods {
        sh(&format!("ip netns del {}", pod.netns));
        sh(&format!("ip link del {} 2>/dev/null", pod.host_veth()));
    }
}

fn boot_stamp(net: &TestNet) -> PathBuf {
    net.data_dir.join(&net.name).join("boot_id")
}

fn small_net(tag: &str, id: u8) -> TestNet {
    // A /29: five addresses for pods beside the gateway.
    TestNet::new(tag, id, json!({"subnet": format!("10.251.{id}.0/29")}))
}

fn fill(net: &mut TestNet, prefix: &str, n: usize) -> Vec<Pod> {
    (0..n).map(|i| net.add_pod(&format!("{prefix}{i}"))).collect()
}

fn distinct(pods: &[Pod]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = pods.iter().map(|p| p.ip(4)).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), pods.len(), "one address given twice: {ips:?}");
    ips
}

#[test]
fn a_reboot_frees_the_leases_of_the_pods_it_ended() {
    if !privileged() {
        return;
    }
    let mut net = small_net("rc-boot", 221);
    let before = fill(&mut net, "a", 5);
    distinct(&before);
    let stamp = std::fs::read_to_string(boot_stamp(&net)).expect("the store records its boot");
    assert_eq!(stamp.trim(), std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim());

    // An earlier boot's store: every pod of it is gone.
    reboot(&net, &before);
    std::fs::write(boot_stamp(&net), "00000000-0000-0000-0000-000000000000").unwrap();
    let after = fill(&mut net, "b", 5);
    distinct(&after);
    assert!(after[0].ping(after[4].ip(4), 2), "pods of the new boot reach each other");

    // A store no build stamped (host-local, an older ebpfcni): what was
    // written before this boot began is stale, what came after is kept.
    reboot(&net, &after);
    std::fs::remove_file(boot_stamp(&net)).unwrap();
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime ").map(|v| v.trim().parse().unwrap()))
        .unwrap();
    for f in net.lease_files() {
        let path = net.data_dir.join(&net.name).join(f);
        ok(Command::new("touch").arg("-d").arg(format!("@{}", btime - 60)).arg(&path).output().unwrap(), "age a lease");
    }
    let again = fill(&mut net, "c", 5);
    distinct(&again);
}

#[test]
fn a_live_pod_keeps_its_address_across_a_stale_boot_stamp() {
    if !privileged() {
        return;
    }
    let mut net = small_net("rc-live", 222);
    let pods = fill(&mut net, "a", 5);
    let keep = &pods[2];
    // The others die; the stamp says another boot: only the live pod's
    // veth proves its lease is not stale.
    kill(&[pods[0].clone(), pods[1].clone(), pods[3].clone(), pods[4].clone()]);
    std::fs::write(boot_stamp(&net), "00000000-0000-0000-0000-000000000000").unwrap();
    let new = fill(&mut net, "b", 4);
    let ips = distinct(&new);
    assert!(!ips.contains(&keep.ip(4)), "the live pod's address was given away");
    let netns = net.new_netns("full");
    let out = net.cni("ADD", &net.conf.clone(), "rc-live-full", Some(&format!("/run/netns/{netns}")), "eth0");
    assert!(!out.status.success(), "a sixth pod fits in a /29 beside a live one");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no free address"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(keep.ping(new[0].ip(4), 2), "the live pod still works");
}

#[test]
fn gc_with_no_valid_attachment_releases_everything_but_the_store_itself() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("rc-gc", 223, json!({}));
    let pods = fill(&mut net, "a", 2);
    let mut conf = net.conf.clone();
    conf["cniVersion"] = json!("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    ok(net.cni("GC", &conf, "", None, ""), "GC");
    assert!(net.lease_files().is_empty(), "leases left: {:?}", net.lease_files());
    assert!(records(&net).is_empty(), "records left: {:?}", records(&net));
    for pod in &pods {
        assert!(common::link_gone(&pod.host_veth()));
    }
    let dir = net.data_dir.join(&net.name);
    for kept in ["lock", "last_reserved_ip.0", "boot_id"] {
        assert!(dir.join(kept).exists(), "GC removed {kept}");
    }
}

fn conflist(net: &TestNet) -> PathBuf {
    let path = net.data_dir.join("repair.conflist");
    let mut plugin = net.conf.clone();
    let name = plugin.as_object_mut().unwrap().remove("name").unwrap();
    let version = plugin.as_object_mut().unwrap().remove("cniVersion").unwrap();
    let list = json!({"cniVersion": version, "name": name, "plugins": [plugin]});
    std::fs::write(&path, list.to_string()).unwrap();
    path
}

fn check(net: &TestNet, pod: &Pod) -> bool {
    net.again("CHECK", &net.with_prev(&pod.result), pod).status.success()
}

/// Pods a and b ping each other while the network's pins are wiped; the
/// next call (`repair`, or any plugin call) rebuilds programs, maps and
/// attachments, and CHECK passes again for both.
fn pins_wiped(tag: &str, id: u8, extra: Value, by_repair: bool) {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new(tag, id, extra);
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    assert!(check(&net, &a) && check(&net, &b));
    let ping = Command::new("ip")
        .args(["netns", "exec", &a.netns, "ping", "-q", "-i", "0.01", "-W", "1", "-c", "300"])
        .arg(b.ip(4).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::remove_dir_all(&net.pin_path).unwrap();
    assert!(!check(&net, &a), "CHECK passes without pins");
    if by_repair {
        let out = ok(Command::new(common::BIN).arg("repair").arg(conflist(&net)).output().unwrap(), "ebpfcni repair");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("pods attached: 2"), "{text}");
    } else {
        net.add_pod("c");
    }
    // Whether the wipe cost packets depends on the attachment (a TCX link
    // dies with its pin, a clsact filter does not): printed, not asserted;
    // what must hold is that traffic flows after the repair.
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{tag}: during the wipe: {}", text.lines().find(|l| l.contains("transmitted")).unwrap_or(""));
    for pod in [&a, &b] {
        assert!(check(&net, pod), "CHECK of {} after the repair", pod.netns);
        let ip = pod.ip(4).to_string();
        assert!(endpoint_ips(&net).contains(&ip), "endpoint {ip} not rebuilt");
    }
    assert!(a.ping(b.ip(4), 2) && b.ping(a.ip(4), 2));
    // Counters start over, and count again.
    let sent = net.stats_of(a.ip(4))["packets"].as_u64().unwrap_or(0);
    assert!(sent > 0, "a's counters are not counting after the repair");
    // Idempotent: a second repair rebuilds nothing.
    if by_repair {
        let out = ok(Command::new(common::BIN).arg("repair").arg(conflist(&net)).output().unwrap(), "repair again");
        assert!(String::from_utf8_lossy(&out.stdout).contains("maps rebuilt: none"));
    }
}

#[test]
fn wiped_pins_are_rebuilt_by_repair() {
    pins_wiped("rc-wipe", 224, json!({}), true);
}

#[test]
fn wiped_pins_are_rebuilt_by_the_next_add_on_clsact() {
    pins_wiped("rc-wipetc", 225, json!({"attachMode": "tc"}), false);
}
