//! `ebpfcni-agent cluster`: the agent's cluster source (src/kube/) from the
//! command line, against the fake API server: the NodeList and policy
//! objects it prints, the node-list file it keeps up to date, and the
//! error when the API server never answers. (The watch semantics
//! themselves are unit tests in src/kube/tests.rs.)

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fakeapi::{self, FakeApi};
use common::AGENT_BIN as BIN;
use serde_json::{json, Value};

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("ebpfcni-k17-cli-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn api() -> FakeApi {
    let api = FakeApi::start();
    api.apply(fakeapi::node("k17-a", &["10.244.1.0/24", "fd00:244:1::/64"], "192.0.2.11"));
    api.apply(fakeapi::namespace("k17", json!({})));
    api.apply(fakeapi::pod("k17", "web", json!({"app": "web"}), "10.244.1.5", "k17-a", &[]));
    api.apply(fakeapi::network_policy("k17", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress"]})));
    api
}

fn cluster(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("cluster").args(args).output().unwrap()
}

#[test]
fn prints_nodes_and_policy_objects() {
    let api = api();
    let d = dir("print");
    let kc = api.kubeconfig(&d.0);
    let out = cluster(&["nodes", "--kubeconfig", kc.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let nodes: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes["items"][0]["metadata"]["name"], "k17-a");
    assert_eq!(nodes["items"][0]["spec"]["podCIDRs"][1], "fd00:244:1::/64");

    let out = cluster(&["policy", "--kubeconfig", kc.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let objects: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = objects["items"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "Pod", "NetworkPolicy"]);

    let out = cluster(&["health", "--kubeconfig", kc.to_str().unwrap()]);
    let health: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(health["synced"], true, "{health}");
}

#[test]
fn keeps_the_node_list_file_current() {
    let api = api();
    let d = dir("follow");
    let kc = api.kubeconfig(&d.0);
    let file = d.0.join("nodes.json");
    let mut child = Command::new(BIN)
        .args(["cluster", "nodes", "--follow", "--out", file.to_str().unwrap(), "--kubeconfig", kc.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let read = |want: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let names: Vec<String> = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .map(|v| {
                    v["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i["metadata"]["name"].as_str().unwrap().into())
                        .collect()
                })
                .unwrap_or_default();
            if names == want {
                return;
            }
            assert!(Instant::now() < deadline, "node list {names:?}, want {want:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    read(&["k17-a"]);
    api.apply(fakeapi::node("k17-b", &["10.244.2.0/24"], "192.0.2.12"));
    read(&["k17-a", "k17-b"]);
    api.delete("Node", "", "k17-a");
    read(&["k17-b"]);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn unreachable_api_server_is_an_error() {
    let api = api();
    let d = dir("down");
    let kc = api.kubeconfig(&d.0);
    api.down();
    let out = cluster(&["health", "--timeout", "2", "--kubeconfig", kc.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not all listed within 2 s"), "{err}");
}
