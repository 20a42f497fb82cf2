//! `scripts/install.sh` as an operator runs it, into temporary directories:
//! binary and conflist in place, the conflist written in a version the
//! chained reference portmap speaks (and a real chained ADD through it),
//! an existing conflist kept unless --force, bad arguments and bad
//! conflists refused before anything is installed, and --uninstall /
//! --purge removing exactly what they say.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::{json, Value};

const REF_DIR: &str = "/usr/lib/cni";

/// Temporary install directories (named for this test) removed on drop.
struct Dirs {
    root: PathBuf,
    bin: PathBuf,
    conf: PathBuf,
}

impl Dirs {
    fn new(tag: &str) -> Self {
        let root = std::env::temp_dir().join(format!("ebpfcni-op16-{tag}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Dirs { bin: root.join("bin"), conf: root.join("net.d"), root }
    }

    fn conflist(&self) -> PathBuf {
        self.conf.join("10-ebpfcni.conflist")
    }

    fn installed(&self) -> bool {
        self.bin.join("ebpfcni").exists() || self.conflist().exists()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"))
            .args(args)
            .env("CNI_BIN_DIR", &self.bin)
            .env("CNI_CONF_DIR", &self.conf)
            .env("CNI_PATH", REF_DIR)
            .output()
            .unwrap()
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn failed(out: Output) -> String {
    assert!(!out.status.success(), "expected a refusal: {}", text(&out));
    text(&out)
}

/// What a plugin binary answers to VERSION.
fn versions_of(bin: &str) -> Vec<String> {
    let out = Command::new(bin).env("CNI_COMMAND", "VERSION").stdin(Stdio::null()).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["supportedVersions"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn key(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap()).collect()
}

/// Calls one plugin of a conflist the way libcni does.
/// The namespace the chained test's node runs in: portmap's iptables
/// tables are node-wide state, never the machine's own.
const NODE_NS: &str = "ebt-opinstall-node";

fn invoke(bin: &str, list: &Value, plugin: &Value, command: &str, prev: Option<&Value>, netns: &str) -> Output {
    let mut conf = plugin.clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    if plugin["capabilities"]["portMappings"] == true {
        conf["runtimeConfig"] =
            json!({"portMappings": [{"hostPort": 18116, "containerPort": 8116, "protocol": "tcp"}]});
    }
    common::run_plugin_in(Some(NODE_NS), bin, command, "op16-install-pod", netns, &conf)
}

#[test]
fn default_conflist_is_written_in_a_version_portmap_speaks() {
    if !privileged() {
        return;
    }
    let dirs = Dirs::new("default");
    let out = ok(dirs.run(&["--binary", BIN]));
    let installed: Value = serde_json::from_str(&std::fs::read_to_string(dirs.conflist()).unwrap()).unwrap();
    let ours = versions_of(BIN);
    let portmap = versions_of(&format!("{REF_DIR}/portmap"));
    let best = ours.iter().filter(|v| portmap.contains(v)).max_by_key(|v| key(v)).unwrap().clone();
    assert_eq!(installed["cniVersion"], json!(best), "{installed}");
    assert!(text(&out).contains(&format!("cniVersion {best}")), "the output says which: {}", text(&out));
    assert_eq!(installed["plugins"][1]["type"], "portmap");
}

#[test]
fn chained_portmap_add_through_the_installed_conflist_and_uninstall() {
    if !privileged() {
        return;
    }
    let dirs = Dirs::new("chain");
    let mut net = TestNet::new("opinstall", 116, json!({}));
    let list = json!({
        "cniVersion": "1.1.0",
        "name": net.name,
        "plugins": [
            // ipForward off: the node's namespace needs no forwarding here.
            {"type": "ebpfcni", "bridge": net.bridge, "subnet": "10.251.116.0/24",
             "dataDir": net.data_dir, "bpfPinPath": net.pin_path, "ipForward": false},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    });
    let source = dirs.root.join("mine.conflist");
    std::fs::write(&source, list.to_string()).unwrap();
    ok(dirs.run(&["--binary", BIN, "--conf", source.to_str().unwrap()]));
    let installed: Value = serde_json::from_str(&std::fs::read_to_string(dirs.conflist()).unwrap()).unwrap();
    let installed_bin = dirs.bin.join("ebpfcni").to_string_lossy().into_owned();
    let portmap = format!("{REF_DIR}/portmap");

    // ADD through the installed conflist: ebpfcni, then portmap with its
    // result as prevResult; portmap must accept the version.
    assert_eq!(net.new_netns("node"), NODE_NS);
    let ns = net.new_netns("p");
    let netns = format!("/run/netns/{ns}");
    net.pods.push((ns.clone(), "op16-install-pod".into(), "eth0".into()));
    struct PortmapDel(Value, Value, String, Option<Value>);
    impl Drop for PortmapDel {
        fn drop(&mut self) {
            let _ = invoke(&format!("{REF_DIR}/portmap"), &self.0, &self.1, "DEL", self.3.as_ref(), &self.2);
        }
    }
    let mut cleanup = PortmapDel(installed.clone(), installed["plugins"][1].clone(), netns.clone(), None);
    let first = ok(invoke(&installed_bin, &installed, &installed["plugins"][0], "ADD", None, &netns));
    let result: Value = serde_json::from_slice(&first.stdout).unwrap();
    cleanup.3 = Some(result.clone());
    let chained = invoke(&portmap, &installed, &installed["plugins"][1], "ADD", Some(&result), &netns);
    assert!(chained.status.success(), "portmap refused the installed conflist: {}", text(&chained));
    let nat = String::from_utf8_lossy(&sh(&format!("nsenter --net=/run/netns/{NODE_NS} iptables -t nat -S")).stdout)
        .into_owned();
    assert!(nat.contains("--dport 18116"), "{nat}");

    // A pod is attached: --purge is refused and removes nothing.
    let why = failed(dirs.run(&["--uninstall", "--purge"]));
    assert!(why.contains("1 pod(s)"), "{why}");
    assert!(dirs.bin.join("ebpfcni").exists() && dirs.conflist().exists());

    // --uninstall alone counts the one pod once and keeps its pins.
    let out = ok(dirs.run(&["--uninstall"]));
    assert!(text(&out).contains("1 pod(s) of network ebt-opinstall remain attached"), "{}", text(&out));
    assert!(!dirs.installed());
    assert_eq!(net.link_pins().len(), 1, "the pod's links stay pinned");

    // --purge --force removes this network's pins only, and says so.
    let decoy = net.pin_path.join("op16-other-network");
    std::fs::create_dir_all(&decoy).unwrap();
    ok(dirs.run(&["--binary", BIN, "--conf", source.to_str().unwrap()]));
    let out = ok(dirs.run(&["--uninstall", "--purge", "--force"]));
    assert!(text(&out).contains("purged network ebt-opinstall"), "{}", text(&out));
    assert!(!net.pin_path.join(&net.name).exists());
    assert!(decoy.exists(), "another network's pins under the same pin path stay");
    assert!(!dirs.installed());
}

#[test]
fn bad_arguments_and_conflists_install_nothing() {
    if !privileged() {
        return;
    }
    let dirs = Dirs::new("refuse");
    assert!(failed(dirs.run(&["--binary"])).contains("--binary needs a value"));
    assert!(failed(dirs.run(&["--purge"])).contains("--purge only goes with --uninstall"));
    assert!(failed(dirs.run(&["--binary", BIN, "--conf", "/nonexistent/op16.conflist"])).contains("no conflist"));
    let broken = dirs.root.join("broken.conflist");
    std::fs::write(&broken, "{\"cniVersion\": \"1.0.0\", \"plugins\": [").unwrap();
    assert!(failed(dirs.run(&["--binary", BIN, "--conf", broken.to_str().unwrap()])).contains("not valid JSON"));
    let single = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/simple-ebpf-cni.conf");
    assert!(failed(dirs.run(&["--binary", BIN, "--conf", single.to_str().unwrap()])).contains("not a conflist"));
    let invalid = dirs.root.join("invalid.conflist");
    std::fs::write(&invalid, r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"ebpfcni","subnet":"nope"}]}"#)
        .unwrap();
    assert!(failed(dirs.run(&["--binary", BIN, "--conf", invalid.to_str().unwrap()])).contains("subnet"));
    assert!(!dirs.installed(), "nothing was installed");

    // Uninstalling what is not there succeeds and says so.
    let out = ok(dirs.run(&["--uninstall"]));
    assert!(text(&out).contains("removed nothing"), "{}", text(&out));
}

#[test]
fn install_keeps_existing_config_and_uninstalls() {
    if !privileged() {
        return;
    }
    let dirs = Dirs::new("keep");
    let conflist = dirs.conflist();
    let out = ok(dirs.run(&["--binary", BIN]));
    assert!(dirs.bin.join("ebpfcni").exists());
    let installed = std::fs::read_to_string(&conflist).unwrap();
    assert!(installed.contains("\"ebpfcni\"") && installed.contains("portmap"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bpf program"), "version printed");

    // An operator's edited config survives a reinstall, unless --force.
    std::fs::write(&conflist, "{\"edited\": \"ebpfcni\"}").unwrap();
    let out = ok(dirs.run(&["--binary", BIN]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("keeping existing"));
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), "{\"edited\": \"ebpfcni\"}");
    ok(dirs.run(&["--binary", BIN, "--force"]));
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), installed);

    // Unknown options are refused; uninstall removes binary and config.
    assert!(!dirs.run(&["--frobnicate"]).status.success());
    ok(dirs.run(&["--uninstall"]));
    assert!(!dirs.installed());
}
