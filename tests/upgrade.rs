//! Upgrades and downgrades in place, for real: the released builds are
//! compiled from git (the commit's tree, `cargo build --release`), wire
//! pods on a node, and this build takes over under a ping every 10 ms
//! that must lose nothing; then back one release. The releases are the
//! commits that landed: 72b84ad (the first), 4dd0585, and c31be24 (the
//! previous). 4dd0585 checks map sizes only, so it cannot take back maps
//! whose max entries changed (this build sizes them from the config):
//! downgrades go to c31be24, which migrates them.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use common::node::{run_ok, Node, Plugin};
use common::{privileged, Pod};
use serde_json::json;

const FIRST_RELEASE: &str = "72b84ad2e5c049f16539d031a81ce84c3e78ec96";
const SECOND_RELEASE: &str = "4dd0585";
const PREVIOUS_RELEASE: &str = "c31be24";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The binary a release built, from its own tree (cached per commit).
fn release(commit: &str) -> PathBuf {
    // One build at a time: they share a target directory (and its deps).
    static BUILDS: Mutex<()> = Mutex::new(());
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let root = repo().join("target/releases");
    let bin = root.join(format!("ebpfcni-{commit}"));
    if bin.exists() {
        return bin;
    }
    let src = root.join(format!("src-{commit}"));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap();
    run_ok(
        Command::new("sh").arg("-c").arg(format!(
            "git -C '{}' archive --format=tar {commit} | tar -x -C '{}'",
            repo().display(),
            src.display()
        )),
        &format!("check out release {commit} (needs the repository's history)"),
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_ok(
        Command::new(cargo)
            .args(["build", "--release", "--bin", "ebpfcni", "--manifest-path"])
            .arg(src.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", root.join("target"))
            .stdout(Stdio::null()),
        &format!("build release {commit}"),
    );
    std::fs::copy(root.join("target/release/ebpfcni"), &bin).unwrap();
    let _ = std::fs::remove_dir_all(&src);
    bin
}

/// `ping -i 0.01` from `from` to `to`, running until `finish`.
struct Pinger(Child);

impl Pinger {
    fn start(from: &Pod, to: IpAddr, count: u32) -> Pinger {
        let child = Command::new("ip")
            .args(["netns", "exec", &from.netns, "ping", "-q", "-i", "0.01", "-W", "1", "-c", &count.to_string()])
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ping");
        Pinger(child)
    }

    /// (sent, received).
    fn finish(self) -> (u32, u32) {
        let out = self.0.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.contains("transmitted")).unwrap_or_else(|| panic!("ping said: {text}"));
        let n: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok()).collect();
        (n[0], n[1])
    }
}

/// The BPF program identity a build carries (`ebpfcni version`).
fn bpf_id(bin: &str) -> String {
    let out = Command::new(bin).arg("version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = text.find("bpf program ").unwrap_or_else(|| panic!("{bin} version: {text}")) + "bpf program ".len();
    text[at..].chars().take_while(char::is_ascii_hexdigit).collect()
}

/// The programs pinned for the node's network: only `bin`'s once it took over.
fn assert_programs_of(node: &Node, bin: &str) {
    let id = bpf_id(bin);
    let dir = node.pin_path.join(node.conf["name"].as_str().unwrap());
    let mut progs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("from_pod_") || n.starts_with("to_pod_"))
        .collect();
    progs.sort();
    assert_eq!(progs, vec![format!("from_pod_{id}"), format!("to_pod_{id}")], "programs pinned in {}", dir.display());
}

fn v4(pod: &Pod) -> IpAddr {
    pod.ip(4)
}

fn ping_ok(from: &Pod, to: &Pod) {
    assert!(from.ping(v4(to), 3), "{} cannot reach {}", from.netns, v4(to));
}

/// The packets `ip` sent, as `bin` reads the node's stats map.
fn packets_of(node: &Node, bin: &str, ip: IpAddr) -> u64 {
    let out = Command::new(bin)
        .args(["maps", "dump", "stats", "--json", "--network", node.conf["name"].as_str().unwrap(), "--pin-path"])
        .arg(&node.pin_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{bin} maps dump stats: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter().find(|r| r["ip"] == json!(ip)).and_then(|r| r["packets"].as_u64()).unwrap_or(0)
}

/// Two pods of `from`'s build keep pinging each other while this build
/// wires a third pod, then removes one of the old ones; optionally the
/// node then goes back to `back_to` under the same ping. From a build
/// whose stats shares this build's counters (`counters_kept`), the pods'
/// counters go on from where they were.
fn upgrade(tag: &str, id: u8, from: &str, back_to: Option<&str>, counters_kept: bool) {
    if !privileged() {
        return;
    }
    let old = release(from);
    let old = old.to_str().unwrap();
    let node = Node::new(tag, id, Plugin::Ebpfcni, json!({}));
    let a = node.add_pod_using(old, "a");
    let b = node.add_pod_using(old, "b");
    let gone = node.add_pod_using(old, "gone");
    ping_ok(&a, &b);

    // `gone` sends these three and nothing more before its DEL.
    ping_ok(&gone, &b);
    let sent_before = if counters_kept { packets_of(&node, old, v4(&gone)) } else { 0 };

    let ping = Pinger::start(&a, v4(&b), 400);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // This build's first call takes the node over: program switched on
    // every pod, maps migrated.
    let c = node.add_pod("c");
    if counters_kept {
        // Restarted, they would be gone (no packet since the switch).
        let sent_after = packets_of(&node, common::BIN, v4(&gone));
        assert!(sent_before >= 3 && sent_after == sent_before, "gone sent {sent_before} packets, then {sent_after}");
    }
    node.del_pod(&gone);
    let d = node.add_pod("d");
    let (sent, got) = ping.finish();
    assert_eq!(got, sent, "upgrade from {from}: {} of {sent} pings lost", sent - got);
    for (x, y) in [(&a, &c), (&c, &b), (&d, &a), (&b, &d)] {
        ping_ok(x, y);
    }
    assert_programs_of(&node, common::BIN);
    // Every pod, old or new, runs this build's program (CHECK verifies it).
    let mut conf = node.conf.clone();
    conf["prevResult"] = a.result.clone();
    let check = node.cni("ebpfcni", "CHECK", &conf, &a.container_id, &a.netns);
    assert!(check.status.success(), "CHECK of an old pod: {}", String::from_utf8_lossy(&check.stdout));

    let Some(back) = back_to else { return };
    let previous = release(back);
    let previous = previous.to_str().unwrap();
    let ping = Pinger::start(&c, v4(&a), 300);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let e = node.add_pod_using(previous, "e");
    node.del_pod_using(previous, &d);
    let (sent, got) = ping.finish();
    assert_eq!(got, sent, "downgrade to {back}: {} of {sent} pings lost", sent - got);
    assert_programs_of(&node, previous);
    for (x, y) in [(&e, &a), (&b, &e), (&c, &b)] {
        ping_ok(x, y);
    }
}

#[test]
fn upgrade_from_the_first_release_loses_no_packet() {
    upgrade("up-first", 21, FIRST_RELEASE, None, false);
}

#[test]
fn upgrade_from_the_second_release_and_back_to_the_previous_loses_no_packet() {
    upgrade("up-second", 22, SECOND_RELEASE, Some(PREVIOUS_RELEASE), false);
}

#[test]
fn upgrade_from_the_previous_release_and_back_loses_no_packet() {
    upgrade("up-prev", 23, PREVIOUS_RELEASE, Some(PREVIOUS_RELEASE), true);
}
