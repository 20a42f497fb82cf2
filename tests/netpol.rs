//! NetworkPolicy truth tables, cyclonus style: three namespaces of three
//! pods on one node, plus an address outside the pods (a plain netns on
//! the bridge) and the node itself. For every scenario the cluster state
//! is fed to `ebpfcni policy sync` in the form kubectl prints, then every
//! ordered pair (pod to pod, pod to and from the outside address, node to
//! pod and pod to node) is probed with real connections on TCP 80, TCP 81
//! and UDP 80 through the datapath, all at once, and compared with an
//! independent model of the Kubernetes API reference (netpol/model.rs).

mod common;
#[path = "netpol/model.rs"]
mod model;
#[path = "netpol/scenarios.rs"]
mod scenarios;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use model::{ModelPod, Peer, World};
use scenarios::{Scenario, NAMESPACES, PODS};
use serde_json::{json, Value};

const ID: u8 = 140;
const OUTSIDE_LINK: &str = "np15o140";
/// First pass: short, every probe at once. A probe the model expects to
/// pass that did not is tried again with the long one (a slow machine
/// never turns an allowed connection into a denied verdict).
const SHORT: Duration = Duration::from_millis(500);
const LONG: Duration = Duration::from_secs(3);
const PROBES: [(&str, u16); 3] = [("TCP", 80), ("TCP", 81), ("UDP", 80)];

fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 251, ID, 10 + i as u8)
}
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 251, ID, 200);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 251, ID, 1);

/// Serves TCP 80, TCP 81 and UDP 80 on `addr` in the current netns, on
/// detached threads that live as long as the test process.
fn serve(addr: Ipv4Addr) {
    for port in [80, 81] {
        let l = TcpListener::bind((addr, port)).unwrap_or_else(|e| panic!("bind {addr}:{port}: {e}"));
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(LONG)).ok();
                    let mut b = [0u8; 2];
                    if s.read_exact(&mut b).is_ok() {
                        let _ = s.write_all(b"ok");
                    }
                });
            }
        });
    }
    let u = UdpSocket::bind((addr, 80)).unwrap_or_else(|e| panic!("bind udp {addr}:80: {e}"));
    std::thread::spawn(move || {
        let mut b = [0u8; 16];
        while let Ok((_, from)) = u.recv_from(&mut b) {
            let _ = u.send_to(b"ok", from);
        }
    });
}

fn serve_in(netns: &str, addr: Ipv4Addr) {
    let ns = File::open(format!("/run/netns/{netns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        serve(addr);
    })
    .join()
    .unwrap();
}

fn connect(proto: &str, addr: SocketAddr, timeout: Duration) -> bool {
    let mut b = [0u8; 2];
    if proto == "TCP" {
        TcpStream::connect_timeout(&addr, timeout)
            .and_then(|mut s| {
                s.set_read_timeout(Some(timeout))?;
                s.write_all(b"hi")?;
                s.read_exact(&mut b)
            })
            .is_ok()
            && b == *b"ok"
    } else {
        UdpSocket::bind("0.0.0.0:0")
            .and_then(|u| {
                u.connect(addr)?;
                u.set_read_timeout(Some(timeout))?;
                u.send(b"hi")?;
                u.recv(&mut b)
            })
            .is_ok_and(|n| n == 2 && b == *b"ok")
    }
}

#[derive(Clone, Copy, Debug)]
struct Probe {
    src: Peer,
    dst: Peer,
    proto: &'static str,
    port: u16,
}

struct Net {
    net: TestNet,
    /// Netns of each pod, then of the outside address.
    netns: Vec<Arc<File>>,
}

impl Net {
    fn addr_of(p: Peer) -> Ipv4Addr {
        match p {
            Peer::Pod(i) => ip(i),
            Peer::Outside(a) => a,
            Peer::Node => GATEWAY,
        }
    }

    fn netns_of(&self, p: Peer) -> Option<Arc<File>> {
        match p {
            Peer::Pod(i) => Some(self.netns[i].clone()),
            Peer::Outside(_) => Some(self.netns[9].clone()),
            Peer::Node => None,
        }
    }

    /// Runs every probe at once; true where the connection was made.
    fn run(&self, probes: &[Probe], timeout: Duration) -> Vec<bool> {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| {
                let ns = self.netns_of(p.src);
                let addr = SocketAddr::new(IpAddr::V4(Self::addr_of(p.dst)), p.port);
                let proto = p.proto;
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        if let Some(ns) = ns {
                            nix::sched::setns(&*ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                        }
                        connect(proto, addr, timeout)
                    })
                    .expect("spawn probe")
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }
}

fn setup() -> Net {
    let mut net = TestNet::new("nptable", ID, json!({}));
    let _ = sh(&format!("ip link del {OUTSIDE_LINK} 2>/dev/null"));
    let mut pod_netns = Vec::new();
    for (i, (ns, name)) in NAMESPACES.iter().flat_map(|n| PODS.iter().map(move |p| (*n, *p))).enumerate() {
        let netns = net.new_netns(&format!("np15-{ns}-{name}"));
        let id = format!("np15-{ns}-{name}");
        ok(net.cni_full(
            "ADD",
            net.conf.to_string().as_bytes(),
            &id,
            Some(&format!("/run/netns/{netns}")),
            "eth0",
            &[("CNI_ARGS", &format!("IP={}", ip(i)))],
        ));
        net.pods.push((netns.clone(), id, "eth0".into()));
        assert!(sh(&format!("ip netns exec {netns} ip link set lo up")).status.success());
        pod_netns.push(netns);
    }
    // The outside address: a netns of its own on the bridge, no plugin.
    let out = net.new_netns("np15-out");
    for cmd in [
        format!("ip link add {OUTSIDE_LINK} type veth peer name eth0 netns {out}"),
        format!("ip link set {OUTSIDE_LINK} master {} up", net.bridge),
        format!("ip netns exec {out} ip addr add {OUTSIDE}/24 dev eth0"),
        format!("ip netns exec {out} ip link set eth0 up"),
        format!("ip netns exec {out} ip link set lo up"),
    ] {
        let o = sh(&cmd);
        assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
    }
    for (i, ns) in pod_netns.iter().enumerate() {
        serve_in(ns, ip(i));
    }
    serve_in(&out, OUTSIDE);
    serve(GATEWAY);
    let mut netns: Vec<Arc<File>> =
        pod_netns.iter().map(|n| Arc::new(File::open(format!("/run/netns/{n}")).unwrap())).collect();
    netns.push(Arc::new(File::open(format!("/run/netns/{out}")).unwrap()));
    Net { net, netns }
}

fn default_ports() -> Vec<(&'static str, &'static str, u16)> {
    vec![("serve-80-tcp", "TCP", 80), ("serve-81-tcp", "TCP", 81), ("serve-80-udp", "UDP", 80)]
}

/// The scenario's world: for the model, and as kubectl prints it.
fn world(sc: &Scenario) -> (World, Value) {
    let mut items = Vec::new();
    let mut namespaces = BTreeMap::new();
    for ns in NAMESPACES {
        let mut labels = sc.ns_labels.iter().find(|(n, _)| *n == ns).map_or(json!({"ns": ns}), |(_, l)| l.clone());
        labels["kubernetes.io/metadata.name"] = json!(ns);
        namespaces.insert(ns.to_string(), serde_json::from_value(labels.clone()).unwrap());
        items.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}));
    }
    let mut pods = Vec::new();
    for (i, (ns, name)) in NAMESPACES.iter().flat_map(|n| PODS.iter().map(move |p| (*n, *p))).enumerate() {
        let labels = sc.pod_labels.iter().find(|(p, _)| *p == i).map_or(json!({"pod": name}), |(_, l)| l.clone());
        let ports = sc.ports.iter().find(|(p, _)| *p == i).map_or_else(default_ports, |(_, p)| p.clone());
        let container_ports: Vec<Value> =
            ports.iter().map(|(n, proto, port)| json!({"name": n, "protocol": proto, "containerPort": port})).collect();
        items.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "server", "image": "agnhost", "ports": container_ports}]},
            "status": {"phase": "Running", "podIP": ip(i).to_string(), "podIPs": [{"ip": ip(i).to_string()}]}}));
        pods.push(ModelPod {
            namespace: ns.to_string(),
            labels: serde_json::from_value(labels).unwrap(),
            ip: ip(i),
            ports: ports.iter().map(|(n, p, port)| (n.to_string(), p.to_string(), *port)).collect(),
        });
    }
    items.extend(sc.policies.iter().cloned());
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}});
    (World { pods, namespaces, policies: sc.policies.clone() }, list)
}

fn all_probes() -> Vec<Probe> {
    let mut peers: Vec<Peer> = (0..9).map(Peer::Pod).collect();
    peers.push(Peer::Outside(OUTSIDE));
    peers.push(Peer::Node);
    let mut out = Vec::new();
    for src in &peers {
        for dst in &peers {
            let pod_involved = matches!(src, Peer::Pod(_)) || matches!(dst, Peer::Pod(_));
            if !pod_involved {
                continue;
            }
            for (proto, port) in PROBES {
                out.push(Probe { src: *src, dst: *dst, proto, port });
            }
        }
    }
    out
}

fn name_of(p: Peer) -> String {
    match p {
        Peer::Pod(i) => format!("{}/{}", NAMESPACES[i / 3], PODS[i % 3]),
        Peer::Outside(_) => "outside".into(),
        Peer::Node => "node".into(),
    }
}

fn status_errors(net: &TestNet) -> Vec<String> {
    let out =
        std::process::Command::new(BIN).args(["status", "--json", "--pin-path"]).arg(&net.pin_path).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("status: {out:?}"));
    let n = v["networks"].as_array().unwrap().iter().find(|n| n["network"] == json!(net.name)).cloned().unwrap();
    n["policy"]["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect()
}

#[test]
fn network_policy_truth_table() {
    if !privileged() {
        return;
    }
    let net = setup();
    let subnet = format!("10.251.{ID}.0/24");
    let scenarios = scenarios::all(&|i| ip(i).to_string(), &OUTSIDE.to_string(), &subnet);
    assert!(scenarios.len() >= 60, "{} scenarios", scenarios.len());
    let probes = all_probes();
    let path = net.net.data_dir.join("np15-objects.json");
    let mut wrong = Vec::new();
    let mut total = 0;
    let mut denied = 0;
    let mut had_errors = false;
    for sc in &scenarios {
        let (model, list) = world(sc);
        std::fs::write(&path, list.to_string()).unwrap();
        let out = net.net.cli(&["policy", "sync", "-f", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if sc.broken.is_empty() {
            assert!(out.status.success(), "{}: sync failed: {stderr}", sc.name);
        } else {
            assert!(!out.status.success(), "{}: sync must fail naming {:?}", sc.name, sc.broken);
            for b in &sc.broken {
                assert!(stderr.contains(&format!("NetworkPolicy {b}")), "{}: {b} not named: {stderr}", sc.name);
            }
        }
        if had_errors || !sc.broken.is_empty() {
            let errors = status_errors(&net.net);
            assert_eq!(errors.len(), sc.broken.len(), "{}: status reports {errors:?}", sc.name);
            for b in &sc.broken {
                assert!(errors.iter().any(|e| e.contains(b)), "{}: status lacks {b}: {errors:?}", sc.name);
            }
        }
        had_errors = !sc.broken.is_empty();

        let want: Vec<bool> = probes.iter().map(|p| model.allowed(p.src, p.dst, p.proto, p.port)).collect();
        let mut got = net.run(&probes, SHORT);
        let retry: Vec<usize> = (0..probes.len()).filter(|i| want[*i] && !got[*i]).collect();
        if !retry.is_empty() {
            let again = net.run(&retry.iter().map(|i| probes[*i]).collect::<Vec<_>>(), LONG);
            for (i, ok) in retry.iter().zip(again) {
                got[*i] = ok;
            }
        }
        total += probes.len();
        denied += want.iter().filter(|w| !**w).count();
        eprintln!("{:>4} denied of {}: {}", want.iter().filter(|w| !**w).count(), probes.len(), sc.name);
        for (i, p) in probes.iter().enumerate() {
            if got[i] != want[i] {
                wrong.push(format!(
                    "{}: {} -> {} {}/{}: got {}, want {}",
                    sc.name,
                    name_of(p.src),
                    name_of(p.dst),
                    p.proto,
                    p.port,
                    if got[i] { "allowed" } else { "denied" },
                    if want[i] { "allowed" } else { "denied" }
                ));
            }
        }
    }
    eprintln!("{} scenarios, {total} probes ({denied} denied), {} wrong", scenarios.len(), wrong.len());
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts of {total}:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(60)].join("\n")
    );
}
