//! The fake API server (tests/common/fakeapi.rs) speaks the real
//! protocol: the real `kubectl` lists, gets and watches through it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::fakeapi::{self, FakeApi};
use serde_json::{json, Value};

/// A scratch directory of this test's own (kubectl's cache, an empty kubeconfig).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ebpfcni-k17-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("empty-kubeconfig"), "").unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// kubectl is on every CI machine: without it this test cannot run, and
/// under CI=true that is a failure.
fn have_kubectl() -> bool {
    if Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("kubectl is missing (CI=true forbids skipping)");
    }
    eprintln!("\n*** SKIPPED: kubectl is not installed ***\n");
    false
}

fn kubectl_cmd(api: &FakeApi, scratch: &Scratch, args: &[&str]) -> Command {
    let mut c = Command::new("kubectl");
    c.env("KUBECONFIG", scratch.0.join("empty-kubeconfig"))
        .arg("--server")
        .arg(api.url())
        .arg("--cache-dir")
        .arg(scratch.0.join("cache"))
        .arg("--request-timeout=10s")
        .args(args);
    c
}

fn kubectl(api: &FakeApi, scratch: &Scratch, args: &[&str]) -> Output {
    let out = kubectl_cmd(api, scratch, args).output().expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}\nrequests: {:#?}",
        String::from_utf8_lossy(&out.stderr),
        api.requests()
    );
    out
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("kubectl printed no JSON ({e}): {out:?}"))
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> =
        list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn cluster() -> FakeApi {
    let api = FakeApi::start();
    api.apply(fakeapi::node("k17-node-a", &["10.244.1.0/24"], "192.0.2.11"));
    api.apply(fakeapi::node("k17-node-b", &["10.244.2.0/24", "fd00:244:2::/64"], "192.0.2.12"));
    api.apply(fakeapi::namespace("k17-ns", json!({"team": "a"})));
    api.apply(fakeapi::pod(
        "k17-ns",
        "k17-web",
        json!({"app": "web"}),
        "10.244.1.5",
        "k17-node-a",
        &[("http", "TCP", 80)],
    ));
    api.apply(fakeapi::pod("default", "k17-db", json!({"app": "db"}), "10.244.2.7", "k17-node-b", &[]));
    api.apply(fakeapi::network_policy(
        "k17-ns",
        "k17-web-ingress",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
               "ingress": [{"ports": [{"protocol": "TCP", "port": "http"}]}]}),
    ));
    api
}

#[test]
fn kubectl_lists_every_kind() {
    if !have_kubectl() {
        return;
    }
    let api = cluster();
    let scratch = Scratch::new("kubectl-lists");

    let nodes = json_of(&kubectl(&api, &scratch, &["get", "nodes", "-o", "json"]));
    assert_eq!(names(&nodes), ["k17-node-a", "k17-node-b"]);
    assert_eq!(nodes["items"][1]["spec"]["podCIDRs"], json!(["10.244.2.0/24", "fd00:244:2::/64"]));
    assert_eq!(nodes["items"][0]["status"]["addresses"][0]["address"], "192.0.2.11");

    let pods = json_of(&kubectl(&api, &scratch, &["get", "pods", "-A", "-o", "json"]));
    assert_eq!(names(&pods), ["k17-db", "k17-web"]);
    let pods_in_ns = json_of(&kubectl(&api, &scratch, &["get", "pods", "-n", "k17-ns", "-o", "json"]));
    assert_eq!(names(&pods_in_ns), ["k17-web"]);
    let selected = json_of(&kubectl(&api, &scratch, &["get", "pods", "-A", "-l", "app=db", "-o", "json"]));
    assert_eq!(names(&selected), ["k17-db"]);

    // The human table of every pod, in every namespace.
    let table = String::from_utf8(kubectl(&api, &scratch, &["get", "pods", "-A"]).stdout).unwrap();
    assert!(table.contains("NAMESPACE") && table.contains("k17-web") && table.contains("k17-db"), "{table}");

    let policies = json_of(&kubectl(&api, &scratch, &["get", "networkpolicies", "-A", "-o", "json"]));
    assert_eq!(names(&policies), ["k17-web-ingress"]);
    assert_eq!(policies["items"][0]["spec"]["ingress"][0]["ports"][0]["port"], "http");
    let short = json_of(&kubectl(&api, &scratch, &["get", "netpol", "-n", "k17-ns", "-o", "json"]));
    assert_eq!(names(&short), ["k17-web-ingress"]);

    let namespaces = json_of(&kubectl(&api, &scratch, &["get", "namespaces", "-o", "json"]));
    assert_eq!(names(&namespaces), ["k17-ns"]);
    let one = json_of(&kubectl(&api, &scratch, &["get", "node", "k17-node-a", "-o", "json"]));
    assert_eq!(one["metadata"]["name"], "k17-node-a");
    let missing = kubectl_cmd(&api, &scratch, &["get", "node", "k17-nope"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"), "{missing:?}");

    // The lists carry a resourceVersion, and what kubectl does with them
    // (policy sync's input) decodes into k8s-openapi types.
    assert!(nodes["metadata"]["resourceVersion"].as_str().is_some_and(|rv| !rv.is_empty()) || nodes["kind"] == "List");
    for item in pods["items"].as_array().unwrap() {
        let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(item.clone()).unwrap();
    }
    for item in policies["items"].as_array().unwrap() {
        let _: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(item.clone()).unwrap();
    }
}

#[test]
fn kubectl_watch_sees_changes() {
    if !have_kubectl() {
        return;
    }
    let api = cluster();
    let scratch = Scratch::new("kubectl-watch");
    let mut child = kubectl_cmd(&api, &scratch, &["get", "nodes", "--watch", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl --watch");
    // kubectl prints one JSON object after another; read them as a stream.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            text.push_str(&line);
            text.push('\n');
            let mut objects = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
            let mut consumed = 0;
            while let Some(Ok(v)) = objects.next() {
                consumed = objects.byte_offset();
                let _ = tx.send(v);
            }
            text.drain(..consumed);
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(15)).unwrap_or_else(|_| panic!("kubectl --watch printed no {what}"))
    };
    let mut seen = [next("first node"), next("second node")];
    seen.sort_by_key(|n| n["metadata"]["name"].as_str().unwrap().to_string());
    assert_eq!(seen[0]["metadata"]["name"], "k17-node-a");

    // A node joins, one changes, one leaves: kubectl sees each.
    api.apply(fakeapi::node("k17-node-c", &["10.244.3.0/24"], "192.0.2.13"));
    assert_eq!(next("added node")["metadata"]["name"], "k17-node-c");
    api.apply(fakeapi::node("k17-node-a", &["10.244.1.0/24"], "192.0.2.99"));
    let changed = next("changed node");
    assert_eq!(changed["metadata"]["name"], "k17-node-a");
    assert_eq!(changed["status"]["addresses"][0]["address"], "192.0.2.99");
    // A bookmark is never printed; the next real event still is.
    api.bookmark();
    api.delete("Node", "", "k17-node-b");
    assert_eq!(next("deleted node")["metadata"]["name"], "k17-node-b");

    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let watches: Vec<String> = api.requests().into_iter().filter(|r| r.contains("watch=")).collect();
    assert!(!watches.is_empty(), "kubectl never watched: {:#?}", api.requests());
    // kubectl lists, then watches from the list's resourceVersion.
    assert!(watches[0].contains("resourceVersion="), "{watches:?}");
}

/// The server's own protocol, in the details kubectl does not show: 410
/// for a compacted resourceVersion, bookmarks, the stream's end on a cut.
#[test]
fn watch_protocol_details() {
    use std::io::{Read, Write};
    let api = cluster();
    let rv_before = api.resource_version();
    api.apply(fakeapi::node("k17-node-c", &["10.244.3.0/24"], "192.0.2.13"));

    let get = |path: &str| -> (String, std::net::TcpStream) {
        let mut s = std::net::TcpStream::connect(api.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = vec![0; 65536];
        let mut text = String::new();
        // Read until one full event (or a whole small response) arrived.
        let complete =
            |t: &str| t.contains("}\n") || (t.contains("\r\n\r\n") && !t.contains("chunked") && t.ends_with('}'));
        while !complete(&text) {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        (text, s)
    };

    // Resuming from a resourceVersion still in the history: the events after it.
    let (text, _s) = get(&format!("/api/v1/nodes?watch=1&resourceVersion={rv_before}"));
    assert!(text.contains("Transfer-Encoding: chunked"), "{text}");
    assert!(text.contains(r#""type":"ADDED""#) && text.contains("k17-node-c"), "{text}");

    // After compaction, the same resourceVersion is gone: ERROR 410.
    api.compact();
    let (text, _s) = get(&format!("/api/v1/nodes?watch=1&resourceVersion={rv_before}"));
    assert!(text.contains(r#""type":"ERROR""#) && text.contains(r#""code":410"#), "{text}");
    assert!(text.contains("too old resource version"), "{text}");

    // Bookmarks carry the current resourceVersion.
    let rv = api.resource_version();
    let (text, mut s) = get(&format!("/api/v1/pods?watch=1&resourceVersion={rv}&allowWatchBookmarks=true"));
    let mut text = text;
    let mut buf = vec![0; 4096];
    while !text.contains("BOOKMARK") {
        let n = s.read(&mut buf).expect("a bookmark within a few seconds");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains(&format!(r#""resourceVersion":"{rv}""#)), "{text}");

    // A cut ends every open watch.
    api.cut();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest); // EOF (or reset), not a timeout
                                      // Down: refused; up again on the same port: served.
    api.down();
    assert!(std::net::TcpStream::connect(api.addr()).is_err(), "still listening while down");
    api.up();
    let (text, _s) = get("/version");
    assert!(text.contains("gitVersion"), "{text}");
}
