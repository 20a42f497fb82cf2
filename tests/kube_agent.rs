//! `ebpfcni-agent run` against the fake API server, on one node with real
//! pods and packets: NetworkPolicies added, pods relabelled and policies
//! deleted change verdicts within 2 s; the API server going down leaves
//! the verdicts as they were (fail static) while the metrics say so; when
//! it returns the agent resyncs; the metrics count the drops.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fakeapi::{self, FakeApi};
use common::*;
use serde_json::json;

fn sample(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok())
}

/// Waits until `a` pinging `ip` gives `reachable`; returns how long it took.
fn until_verdict(a: &Pod, ip: std::net::IpAddr, reachable: bool, within: Duration, what: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let out = sh(&format!("ip netns exec {} ping -q -c 1 -W 0.3 {ip}", a.netns));
        if out.status.success() == reachable {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
    }
}

/// The verdict holds for `for_` (pinging all the while).
fn holds(a: &Pod, ip: std::net::IpAddr, reachable: bool, for_: Duration, what: &str) {
    let t0 = Instant::now();
    while t0.elapsed() < for_ {
        let out = sh(&format!("ip netns exec {} ping -q -c 1 -W 0.3 {ip}", a.netns));
        assert_eq!(out.status.success(), reachable, "{what}");
    }
}

#[test]
fn policies_follow_the_cluster_and_stay_when_it_is_gone() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("k17-agent", 241, json!({}));
    let a = net.add_pod("k17a");
    let b = net.add_pod("k17b");
    let (ip_a, ip_b) = (a.ip(4), b.ip(4));
    assert!(a.ping(ip_b, 1), "honest traffic must flow");

    let api = FakeApi::start();
    api.apply(fakeapi::node("k17-node", &["10.251.241.0/24"], "192.0.2.41"));
    api.apply(fakeapi::namespace("k17", json!({})));
    api.apply(fakeapi::pod("k17", "a", json!({"app": "a"}), &ip_a.to_string(), "k17-node", &[]));
    api.apply(fakeapi::pod("k17", "b", json!({"app": "b"}), &ip_b.to_string(), "k17-node", &[]));
    let kc = api.kubeconfig(&net.data_dir.join("k17-kube"));
    let node_list = net.data_dir.join("k17-kube").join("nodes.json");
    let state = net.data_dir.join("k17-kube").join("kubernetes.json");
    let status = || {
        let out = Command::new(BIN)
            .args(["status", "--json", "--pin-path"])
            .arg(&net.pin_path)
            .arg("--kubernetes-state")
            .arg(&state)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["kubernetes"].clone()
    };

    let mut child = Command::new(AGENT_BIN)
        .args(["run", "--metrics-address", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kc)
        .arg("--node-list")
        .arg(&node_list)
        .arg("--state-file")
        .arg(&state)
        .args(["--network", &net.name, "--pin-path"])
        .arg(&net.pin_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _agent = KillOnDrop(child);
    let addr = line.trim().trim_start_matches("serving metrics on http://").trim_end_matches("/metrics").to_string();

    // Synced, no policy: traffic flows; the node list is written.
    let t0 = Instant::now();
    while sample(&scrape(&addr), "ebpfcni_reconciles_total").unwrap_or(0.0) < 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no reconcile: {}", scrape(&addr));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(a.ping(ip_b, 1));
    let nodes: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&node_list).unwrap()).unwrap();
    assert_eq!(nodes["items"][0]["metadata"]["name"], "k17-node");

    // b takes traffic only from app=c: a is refused, within 2 s.
    api.apply(fakeapi::network_policy(
        "k17",
        "k17-b-from-c",
        json!({"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "c"}}}]}]}),
    ));
    let took = until_verdict(&a, ip_b, false, Duration::from_secs(2), "policy added");
    eprintln!("policy added: a -> b refused after {took:?}");
    // a is relabelled app=c: allowed; back to app=a: refused.
    api.apply(fakeapi::pod("k17", "a", json!({"app": "c"}), &ip_a.to_string(), "k17-node", &[]));
    let took = until_verdict(&a, ip_b, true, Duration::from_secs(2), "pod relabelled in");
    eprintln!("pod relabelled: a -> b allowed after {took:?}");
    api.apply(fakeapi::pod("k17", "a", json!({"app": "a"}), &ip_a.to_string(), "k17-node", &[]));
    until_verdict(&a, ip_b, false, Duration::from_secs(2), "pod relabelled out");

    // The API server goes away, and meanwhile the policy is deleted: the
    // agent does not know, so the refusal stays (fail static).
    api.down();
    api.delete("NetworkPolicy", "k17", "k17-b-from-c");
    holds(&a, ip_b, false, Duration::from_secs(3), "the verdict changed while the API server was down");
    let m = scrape(&addr);
    assert_eq!(sample(&m, "ebpfcni_watch_up"), Some(0.0), "{m}");
    assert!(sample(&m, "ebpfcni_watch_unreachable_since_timestamp_seconds").unwrap() > 0.0, "{m}");
    // `ebpfcni status` says since when.
    let agent = status();
    assert!(agent["kubernetes"]["unreachable_since"].as_f64().is_some(), "{agent}");
    let table = Command::new(BIN)
        .args(["status", "--pin-path"])
        .arg(&net.pin_path)
        .arg("--kubernetes-state")
        .arg(&state)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("API server UNREACHABLE for"), "{table}");

    // It returns: the agent resyncs and the deletion takes effect.
    api.up();
    let took = until_verdict(&a, ip_b, true, Duration::from_secs(40), "resync after the outage");
    eprintln!("API server back: policy deletion in force after {took:?}");
    let m = scrape(&addr);
    assert_eq!(sample(&m, "ebpfcni_watch_up"), Some(1.0), "{m}");
    let t0 = Instant::now();
    while !status()["kubernetes"]["unreachable_since"].is_null() {
        assert!(t0.elapsed() < Duration::from_secs(5), "status still says unreachable: {}", status());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status()["last_reconcile"]["ok"], true);
    let network = format!("network=\"{}\"", net.name);
    let drops: f64 = ["egress", "ingress"]
        .iter()
        .map(|d| sample(&m, &format!("ebpfcni_drops_total{{{network},reason=\"policy\",direction=\"{d}\"}}")).unwrap())
        .sum();
    assert!(drops >= 3.0, "policy drops not counted: {m}");
    // Five passes changed verdicts; the last may still be being counted
    // (its switch is in force before the pass ends).
    assert!(sample(&m, "ebpfcni_reconciles_total").unwrap() >= 4.0, "{m}");
    assert_eq!(sample(&m, "ebpfcni_reconcile_errors_total"), Some(0.0), "{m}");
}

/// TCP listeners in pod `b` that answer "ok" to every connection, bound
/// once for the whole test (rebinding a port right after a refused probe
/// can meet the kernel still holding it); stopped and joined on drop.
struct Listeners {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Listeners {
    fn start(b: &Pod, ports: &[u16]) -> Listeners {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let addr = std::net::SocketAddr::new(b.ip(4), port);
            let listener = b.run_in(move || std::net::TcpListener::bind(addr).expect("bind listener"));
            listener.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                            let mut buf = [0u8; 2];
                            if s.read_exact(&mut buf).is_ok() {
                                let _ = s.write_all(b"ok");
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        Listeners { stop, threads }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether a can talk TCP to b:port (a listener of `Listeners` answers).
fn tcp_open(a: &Pod, b: &Pod, port: u16) -> bool {
    let addr = std::net::SocketAddr::new(b.ip(4), port);
    a.run_in(move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(400))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(400)))?;
                s.write_all(b"hi")?;
                let mut buf = [0u8; 2];
                s.read_exact(&mut buf)?;
                Ok(buf == *b"ok")
            })
            .unwrap_or(false)
    })
}

/// Waits until TCP a -> b:port is `open`; panics after `within`.
fn until_tcp(a: &Pod, b: &Pod, port: u16, open: bool, within: Duration, what: &str) {
    let t0 = Instant::now();
    while tcp_open(a, b, port) != open {
        assert!(
            t0.elapsed() < within,
            "{what}: port {port} not {} within {within:?}",
            if open { "open" } else { "closed" }
        );
    }
}

#[test]
fn named_ports_follow_the_containers() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("k17-ports", 242, json!({}));
    let a = net.add_pod("k17a");
    let b = net.add_pod("k17b");
    let (ip_a, ip_b) = (a.ip(4).to_string(), b.ip(4).to_string());
    let api = FakeApi::start();
    api.apply(fakeapi::node("k17-node", &["10.251.242.0/24"], "192.0.2.42"));
    api.apply(fakeapi::namespace("k17", json!({})));
    api.apply(fakeapi::pod("k17", "a", json!({"app": "a"}), &ip_a, "k17-node", &[]));
    api.apply(fakeapi::pod("k17", "b", json!({"app": "b"}), &ip_b, "k17-node", &[("web", "TCP", 7070)]));
    // b takes TCP from a on its port named "web", nothing else.
    api.apply(fakeapi::network_policy(
        "k17",
        "k17-web",
        json!({"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}],
                            "ports": [{"protocol": "TCP", "port": "web"}]}]}),
    ));
    let kc = api.kubeconfig(&net.data_dir.join("k17-kube"));
    let child = Command::new(AGENT_BIN)
        .args(["run", "--metrics-address", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kc)
        .arg("--state-file")
        .arg(net.data_dir.join("k17-kube").join("kubernetes.json"))
        .args(["--network", &net.name, "--pin-path"])
        .arg(&net.pin_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _agent = KillOnDrop(child);
    let _listeners = Listeners::start(&b, &[7070, 7071]);
    until_tcp(&a, &b, 7071, false, Duration::from_secs(20), "isolated by the policy");
    until_tcp(&a, &b, 7070, true, Duration::from_secs(2), "the named port");
    // The container's port named "web" moves to 7071: the rule follows.
    api.apply(fakeapi::pod("k17", "b", json!({"app": "b"}), &ip_b, "k17-node", &[("web", "TCP", 7071)]));
    until_tcp(&a, &b, 7071, true, Duration::from_secs(3), "the port's new number");
    until_tcp(&a, &b, 7070, false, Duration::from_secs(3), "the port's old number");
}
