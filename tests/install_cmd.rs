//! `ebpfcni install` (and `ebpfcni-agent install --node-name`, the
//! DaemonSet's init container): the binary and the conflist land in the
//! CNI directories; an older ebpfcni conflist is replaced in place under
//! its own name; another plugin's file is never written over; with
//! `--node-name` the conflist is completed for the Node as the agent does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fakeapi::{self, FakeApi};
use common::{AGENT_BIN, BIN};
use serde_json::{json, Value};

struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new(tag: &str) -> Dirs {
        let root = std::env::temp_dir().join(format!("ebpfcni-k17-install-{tag}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("net.d")).unwrap();
        Dirs { root }
    }
    fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }
    fn conf(&self) -> PathBuf {
        self.root.join("net.d")
    }
    fn install(&self, bin: &str, extra: &[&str]) -> Output {
        Command::new(bin)
            .arg("install")
            .arg("--bin-dir")
            .arg(self.bin())
            .arg("--conf-dir")
            .arg(self.conf())
            .args(["--cni-path", "/usr/lib/cni"])
            .args(extra)
            .output()
            .unwrap()
    }
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.conf())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn installs_binary_and_conflist_and_replaces_only_its_own() {
    let d = Dirs::new("own");
    // Another plugin's conflist stays as it is, whatever ebpfcni does.
    let theirs = r#"{"cniVersion":"1.0.0","name":"k17-other","plugins":[{"type":"bridge"}]}"#;
    std::fs::write(d.conf().join("20-k17-other.conflist"), theirs).unwrap();

    ok(d.install(BIN, &[]));
    let installed = d.bin().join("ebpfcni");
    let out = Command::new(&installed).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ebpfcni "), "{out:?}");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(BIN).unwrap());
    assert_eq!(d.files(), ["10-ebpfcni.conflist", "20-k17-other.conflist"]);
    let conf = read(&d.conf().join("10-ebpfcni.conflist"));
    assert_eq!(conf["plugins"][0]["type"], "ebpfcni");
    // Written in a version the chained portmap speaks (Debian's: up to 1.0.0).
    assert_eq!(conf["cniVersion"], "1.0.0");

    // An older ebpfcni conflist under another name is replaced in place.
    std::fs::remove_file(d.conf().join("10-ebpfcni.conflist")).unwrap();
    let old = json!({"cniVersion": "0.4.0", "name": "ebpfcni", "plugins": [{"type": "ebpfcni", "subnet": "10.251.241.0/24"}]});
    std::fs::write(d.conf().join("05-ebpfcni.conflist"), old.to_string()).unwrap();
    ok(d.install(BIN, &[]));
    assert_eq!(d.files(), ["05-ebpfcni.conflist", "20-k17-other.conflist"]);
    let conf = read(&d.conf().join("05-ebpfcni.conflist"));
    assert_eq!(conf["plugins"][0]["bridge"], "ebpfcni0", "not the new conflist: {conf}");
    assert_eq!(std::fs::read_to_string(d.conf().join("20-k17-other.conflist")).unwrap(), theirs);
    assert!(!d.files().iter().any(|f| f.starts_with('.')), "temporary files left: {:?}", d.files());
}

#[test]
fn never_writes_over_another_plugins_file() {
    let d = Dirs::new("theirs");
    let theirs = r#"{"cniVersion":"1.0.0","name":"k17-x","plugins":[{"type":"bridge"}]}"#;
    std::fs::write(d.conf().join("10-ebpfcni.conflist"), theirs).unwrap();
    let out = d.install(BIN, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not ebpfcni's"), "{out:?}");
    assert_eq!(std::fs::read_to_string(d.conf().join("10-ebpfcni.conflist")).unwrap(), theirs);
    assert!(!d.bin().join("ebpfcni").exists(), "nothing is installed when the conflist cannot be");
    // A broken conflist installs nothing either.
    let d = Dirs::new("broken");
    std::fs::write(d.root.join("bad.conflist"), r#"{"name":"x","plugins":[{"type":"bridge"}]}"#).unwrap();
    let out = d.install(BIN, &["--conf", d.root.join("bad.conflist").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(d.files().is_empty() && !d.bin().join("ebpfcni").exists(), "{:?}", d.files());
    // The plugin's binary has no Kubernetes client: --node-name is the agent's.
    let out = d.install(BIN, &["--node-name", "k17-a"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ebpfcni-agent install"), "{out:?}");
}

/// A node: a network namespace whose link `uplink` (MTU 9000) holds
/// 192.0.2.11, its InternalIP; the API server listens there too.
struct NodeNs(&'static str);

impl NodeNs {
    fn new() -> NodeNs {
        let ns = "ebk17-install";
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        let c = format!(
            "ip netns add {ns} && ip -n {ns} link add uplink mtu 9000 type veth peer name uplink-p mtu 9000 && \
             ip -n {ns} addr add 192.0.2.11/24 dev uplink && ip -n {ns} link set uplink up && \
             ip -n {ns} link set uplink-p up && ip -n {ns} link set lo up"
        );
        assert!(Command::new("sh").arg("-c").arg(&c).status().unwrap().success(), "{c}");
        NodeNs(ns)
    }

    fn install(&self, d: &Dirs, extra: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.0))
            .arg(AGENT_BIN)
            .arg("install")
            .arg("--bin-dir")
            .arg(d.bin())
            .arg("--conf-dir")
            .arg(d.conf())
            .args(["--cni-path", "/usr/lib/cni"])
            .args(extra)
            .output()
            .unwrap()
    }
}

impl Drop for NodeNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).output();
    }
}

#[test]
fn the_conflist_is_completed_for_the_node_as_the_agent_does() {
    if !common::privileged() {
        return;
    }
    let node = NodeNs::new();
    let api = FakeApi::start_in(node.0, "192.0.2.11");
    api.apply(fakeapi::node("k17-a", &["10.251.242.0/24", "fd00:251:242::/64"], "192.0.2.11"));
    api.apply(fakeapi::node("k17-far", &["10.251.243.0/24"], "198.51.100.7"));
    let d = Dirs::new("node");
    let kc = api.kubeconfig(&d.root);
    let kc = kc.to_str().unwrap();
    // The agent's binary installs the plugin's binary beside it.
    ok(node.install(&d, &["--node-name", "k17-a", "--kubeconfig", kc]));
    assert_eq!(std::fs::read(d.bin().join("ebpfcni")).unwrap(), std::fs::read(BIN).unwrap());
    let conf = read(&d.conf().join("10-ebpfcni.conflist"));
    let ours = &conf["plugins"][0];
    // The node's ranges, VXLAN (the template's routing) over its
    // InternalIP's link: 9000 less the 50 bytes of VXLAN over IPv4.
    assert_eq!(ours["ipam"]["ranges"], json!([[{"subnet": "10.251.242.0/24"}], [{"subnet": "fd00:251:242::/64"}]]));
    assert_eq!((ours["routing"].as_str(), ours["mtu"].as_u64()), (Some("vxlan"), Some(8950)), "{conf}");
    // Written in a version the chained portmap speaks.
    assert_eq!(conf["cniVersion"], "1.0.0");
    // A node whose InternalIP is not this host's: an error, nothing written.
    let d2 = Dirs::new("node-far");
    let out = node.install(&d2, &["--node-name", "k17-far", "--kubeconfig", kc]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("198.51.100.7 is none of its addresses"), "{out:?}");
    assert!(d2.files().is_empty() && !d2.bin().join("ebpfcni").exists());
    // A node the API server does not know: an error, nothing written.
    let d3 = Dirs::new("node-missing");
    let out = node.install(&d3, &["--node-name", "k17-nope", "--kubeconfig", kc]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("get node k17-nope"), "{out:?}");
    assert!(d3.files().is_empty());
}
