//! ebpfcni as the first plugin of a conflist, followed by the reference
//! portmap, bandwidth and tuning plugins, run the way libcni runs a chain:
//! ADD in order with each result passed on as prevResult, CHECK in order
//! and DEL in reverse with the final result, `runtimeConfig` holding only
//! the capabilities each plugin declares.
//!
//! The whole chain runs in a node network namespace of its own: portmap
//! writes iptables-nft tables (`ip nat`, `ip6 nat`, CNI-HOSTPORT-*) and
//! bandwidth adds ifb devices, node-wide state that must never land in the
//! machine's own namespace. Plugins enter it with setns (`nsenter --net`),
//! not `ip netns exec`, whose fresh /sys would hide the /sys/fs/bpf pins.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const REF_DIR: &str = "/usr/lib/cni";
/// The node's network namespace: every plugin, and the host side of the
/// test's traffic and commands, runs in it.
const NODE_NS: &str = "ebt-chainnode";

/// The node's namespace, created fresh (a killed run's leftover removed
/// first) and deleted on drop, even when the test panics: its bridge,
/// veths, ifb devices and iptables/nftables go with it.
struct NodeNs(String);

impl NodeNs {
    fn new(name: &str) -> NodeNs {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        let out = sh(&format!("ip netns add {name}"));
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        let node = NodeNs(name.to_string());
        // A fresh namespace has lo down; the host side talks to its own
        // (gateway) address through the port mapping.
        let out = node.sh("ip link set lo up");
        assert!(out.status.success(), "lo up in {name}: {}", String::from_utf8_lossy(&out.stderr));
        node
    }

    /// A shell command in the node (setns, so /sys/fs/bpf stays visible).
    fn sh(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.0))
            .args(["sh", "-c", cmd])
            .output()
            .expect("nsenter")
    }

    fn sh_out(&self, cmd: &str) -> String {
        String::from_utf8_lossy(&self.sh(cmd).stdout).into_owned()
    }

    /// Whether link `name` is gone from the node, or goes within 10 s
    /// (DEL leaves the veth's deletion to a child process).
    fn link_gone(&self, name: &str) -> bool {
        (0..500).any(|_| {
            let gone = !self.sh(&format!("ip link show dev {name}")).status.success();
            if !gone {
                std::thread::sleep(Duration::from_millis(20));
            }
            gone
        })
    }

    /// Runs `f` inside the node's namespace on a helper thread.
    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&format!("/run/netns/{}", self.0), f)
    }
}

impl Drop for NodeNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Chain {
    /// The node namespace the plugins run in.
    node: String,
    name: String,
    version: String,
    plugins: Vec<Value>,
    runtime_config: Value,
}

impl Chain {
    fn invoke(&self, plugin: &Value, command: &str, prev: Option<&Value>, id: &str, netns: &str) -> Output {
        let mut conf = plugin.clone();
        conf["name"] = json!(self.name);
        conf["cniVersion"] = json!(self.version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let mut rc = serde_json::Map::new();
        for (cap, on) in plugin["capabilities"].as_object().into_iter().flatten() {
            if on == true {
                if let Some(v) = self.runtime_config.get(cap) {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
        let ty = plugin["type"].as_str().unwrap();
        let bin = if ty == "ebpfcni" { BIN.to_string() } else { format!("{REF_DIR}/{ty}") };
        run_plugin_in(Some(&self.node), &bin, command, id, netns, &conf)
    }

    fn add(&self, id: &str, netns: &str) -> Value {
        let mut prev: Option<Value> = None;
        for p in &self.plugins {
            let out = ok(self.invoke(p, "ADD", prev.as_ref(), id, netns));
            prev = Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{} result: {e}", p["type"])));
        }
        prev.unwrap()
    }

    /// CHECK in order. The Debian portmap (v1.1.1) cannot CHECK its own
    /// rules (it looks for IPv6 rules for v4-only pods and for the IPv4
    /// rules in the IPv6 table: containernetworking/plugins#819, fixed
    /// upstream later), so it is left out here; every other plugin runs.
    fn check(&self, result: &Value, id: &str, netns: &str) {
        for p in self.plugins.iter().filter(|p| p["type"] != "portmap") {
            ok(self.invoke(p, "CHECK", Some(result), id, netns));
        }
    }

    fn del(&self, result: &Value, id: &str, netns: &str) {
        for p in self.plugins.iter().rev() {
            ok(self.invoke(p, "DEL", Some(result), id, netns));
        }
    }
}

/// The node's NAT rules (never the machine's: listing them with
/// iptables-nft there could itself create the table).
fn iptables_nat(node: &NodeNs) -> String {
    node.sh_out("iptables -t nat -S")
}

#[test]
fn chained_with_portmap_bandwidth_and_tuning() {
    if !privileged() {
        return;
    }
    // Dual stack: the reference portmap's CHECK (v1.1.1) looks for IPv6
    // rules even for a v4-only pod (containernetworking/plugins#819).
    let mut net = TestNet::new(
        "chain",
        71,
        json!({"subnet": null, "ipam": {"ranges": [[{"subnet": "10.251.71.0/24"}], [{"subnet": "fd00:251:71::/64"}]]}}),
    );
    let mut first = net.conf.clone();
    for k in ["name", "cniVersion"] {
        first.as_object_mut().unwrap().remove(k);
    }
    // Declared before the DEL guard below, so dropped after it: the guard's
    // DELs still run inside the node.
    let node = NodeNs::new(NODE_NS);
    let chain = Chain {
        node: node.0.clone(),
        name: net.name.clone(),
        // The Debian reference plugins speak up to 1.0.0.
        version: "1.0.0".into(),
        plugins: vec![
            first,
            json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
            json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
            json!({"type": "tuning", "mtu": 1400}),
        ],
        runtime_config: json!({
            "portMappings": [{"hostPort": 18071, "containerPort": 8071, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 100000000, "ingressBurst": 1000000, "egressRate": 100000000, "egressBurst": 1000000},
        }),
    };
    let ns = net.new_netns("p");
    let netns = format!("/run/netns/{ns}");
    let id = "chain-pod";
    // Not in `net.pods`: TestNet's drop would DEL in the machine's own
    // namespace; the guard below DELs the whole chain inside the node.

    // Even if ADD or an assertion fails, every plugin's state goes, as the
    // runtime's DEL would remove it (then the node's namespace goes).
    struct DelOnDrop<'a>(&'a Chain, Option<Value>, String);
    impl Drop for DelOnDrop<'_> {
        fn drop(&mut self) {
            for p in self.0.plugins.iter().rev() {
                let _ = self.0.invoke(p, "DEL", self.1.as_ref(), "chain-pod", &self.2);
            }
        }
    }
    let mut cleanup = DelOnDrop(&chain, None, netns.clone());
    let result = chain.add(id, &netns);
    cleanup.1 = Some(result.clone());
    assert_eq!(result["ips"][0]["address"], "10.251.71.2/24", "{result}");
    let pod_ip = "10.251.71.2";
    let host_veth = host_veth_of(id);

    // tuning found the pod's interface through prevResult.
    assert!(netns_sh(&ns, "ip link show eth0").contains("mtu 1400"));
    // bandwidth shaped the host veth it found through prevResult.
    let qdisc = String::from_utf8_lossy(&node.sh(&format!("tc qdisc show dev {host_veth}")).stdout).into_owned();
    assert!(qdisc.contains("tbf") || qdisc.contains("ingress"), "{qdisc}");
    // portmap mapped the host port to the pod's address from prevResult.
    let nat = iptables_nat(&node);
    assert!(nat.contains("--dport 18071") && nat.contains(&format!("{pod_ip}:8071")), "{nat}");

    // A real connection through the mapping: node -> gateway:18071 -> pod:8071.
    let listen: SocketAddr = format!("{pod_ip}:8071").parse().unwrap();
    let pod = Pod { netns: ns.clone(), container_id: id.into(), ifname: "eth0".into(), result: result.clone() };
    let listener = pod.run_in(move || TcpListener::bind(listen).unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"pong").unwrap();
    });
    let reply = node.run_in(|| {
        let mut c = TcpStream::connect_timeout(&"10.251.71.1:18071".parse().unwrap(), Duration::from_secs(5))
            .expect("connect through portmap");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"ping").unwrap();
        let mut reply = [0u8; 4];
        c.read_exact(&mut reply).unwrap();
        reply
    });
    assert_eq!(&reply, b"pong");
    server.join().unwrap();

    chain.check(&result, id, &netns);

    chain.del(&result, id, &netns);
    assert!(!iptables_nat(&node).contains("--dport 18071"), "portmap rules left");
    let nat6 = node.sh_out("ip6tables -t nat -S");
    assert!(!nat6.contains("--dport 18071"), "portmap IPv6 rules left");
    assert!(node.link_gone(&host_veth));
    assert!(net.lease_files().is_empty());
    assert!(net.dump("endpoints").is_empty());
    // DEL of the whole chain again (runtimes retry) still succeeds.
    chain.del(&result, id, &netns);
}
