//! A whole "node" inside a network namespace, for tests that change what
//! is node-wide (sysctls, nftables, iptables, the FORWARD policy): its own
//! bridge, pod subnet, pin directory and data directory, and an uplink
//! veth to an "outside" namespace standing for the world beyond the node.
//! Plugins run in the node's namespace through setns (`nsenter --net`),
//! never `ip netns exec`, whose fresh /sys would hide /sys/fs/bpf. The
//! same node can be wired by ebpfcni or by the reference bridge plugin, so
//! a test can run one scenario on both. Dropping it removes everything.

use std::cell::RefCell;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use super::{Pod, BIN};

pub const REF_DIR: &str = "/usr/lib/cni";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    Ebpfcni,
    /// The reference `bridge` + `host-local` plugins, configured as kubelet
    /// expects (gateway, hairpin mode, br_netfilter on).
    Reference,
}

pub struct Node {
    pub tag: String,
    pub plugin: Plugin,
    /// The node's network namespace.
    pub ns: String,
    /// The outside world's namespace, behind the node's uplink.
    pub outside: String,
    pub node_ip: Ipv4Addr,
    pub outside_ip: Ipv4Addr,
    /// The pods' subnet, 10.249.<id>.0/24.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub data_dir: PathBuf,
    pub pin_path: PathBuf,
    pub conf: Value,
    pods: RefCell<Vec<(String, String)>>, // (netns, container id)
}

pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Node {
    /// `id` (1-250) makes the addresses unique: the uplink is
    /// 10.250.<id>.0/24 (node .1, outside .2), pods live in 10.249.<id>.0/24.
    /// `extra` is merged into the plugin's config (null removes a key).
    pub fn new(tag: &str, id: u8, plugin: Plugin, extra: Value) -> Node {
        let ns = format!("ebn-{tag}");
        let outside = format!("ebo-{tag}");
        let node_ip = Ipv4Addr::new(10, 250, id, 1);
        let outside_ip = Ipv4Addr::new(10, 250, id, 2);
        let subnet = format!("10.249.{id}.0/24");
        let gateway = Ipv4Addr::new(10, 249, id, 1);
        let bridge = format!("ebnbr{id}");
        let data_dir = std::env::temp_dir().join(format!("ebpfcni-node-{tag}"));
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/ebpfcni-node-{tag}"));
        // Leftovers of a killed run (these names are this node's).
        for n in [&ns, &outside] {
            let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_dir_all(&pin_path);

        let name = format!("ebn-{tag}");
        let mut conf = match plugin {
            Plugin::Ebpfcni => json!({
                "cniVersion": "1.0.0", "name": name, "type": "ebpfcni", "bridge": bridge,
                "subnet": subnet, "dataDir": data_dir, "bpfPinPath": pin_path,
            }),
            Plugin::Reference => json!({
                "cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": bridge,
                "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
                "ipam": {"type": "host-local", "subnet": subnet, "dataDir": data_dir},
            }),
        };
        for (k, v) in extra.as_object().into_iter().flatten() {
            if v.is_null() {
                conf.as_object_mut().unwrap().remove(k);
            } else {
                conf[k] = v.clone();
            }
        }
        let node = Node {
            tag: tag.to_string(),
            plugin,
            ns,
            outside,
            node_ip,
            outside_ip,
            subnet,
            gateway,
            bridge,
            data_dir,
            pin_path,
            conf,
            pods: RefCell::new(Vec::new()),
        };
        for n in [&node.ns, &node.outside] {
            run_ok(Command::new("ip").args(["netns", "add", n]), "ip netns add");
        }
        run_ok(
            Command::new("ip")
                .args(["link", "add", "uplink", "netns", &node.ns, "type", "veth", "peer", "name"])
                .args(["eth0", "netns", &node.outside]),
            "create the node's uplink",
        );
        // A new namespace copies the machine's forwarding settings; a node
        // starts with forwarding off, as a fresh install does.
        node.sh_ok(&format!(
            "ip link set lo up && ip addr add {node_ip}/24 dev uplink && ip link set uplink up && \
             ip route add default via {outside_ip} && \
             echo 0 > /proc/sys/net/ipv4/ip_forward && echo 0 > /proc/sys/net/ipv6/conf/all/forwarding && \
             echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables && \
             echo 1 > /proc/sys/net/bridge/bridge-nf-call-ip6tables"
        ));
        // The outside routes the pod subnet to the node, as a router that
        // knows the cluster's routes would: non-masqueraded replies return.
        node.outside_sh_ok(&format!(
            "ip link set lo up && ip addr add {outside_ip}/24 dev eth0 && ip link set eth0 up && \
             ip route add {} via {node_ip}",
            node.subnet
        ));
        node
    }

    fn nsenter(ns: &str, cmd: &str) -> Output {
        Command::new("nsenter").arg(format!("--net=/run/netns/{ns}")).args(["sh", "-c", cmd]).output().expect("nsenter")
    }

    /// A shell command inside the node.
    pub fn sh(&self, cmd: &str) -> Output {
        Self::nsenter(&self.ns, cmd)
    }

    pub fn sh_ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        assert!(out.status.success(), "in node {}: {cmd}: {}", self.tag, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn outside_sh_ok(&self, cmd: &str) -> String {
        let out = Self::nsenter(&self.outside, cmd);
        assert!(out.status.success(), "outside {}: {cmd}: {}", self.tag, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The outside namespace as a Pod-like handle, to run sockets in it.
    pub fn outside_host(&self) -> Pod {
        Pod { netns: self.outside.clone(), container_id: String::new(), ifname: "eth0".into(), result: json!({}) }
    }

    /// Runs a CNI plugin inside the node, as the runtime there would.
    pub fn cni(&self, plugin: &str, command: &str, conf: &Value, container_id: &str, netns: &str) -> Output {
        // A path runs that binary (another build of ebpfcni, say).
        let bin = match plugin {
            "ebpfcni" => BIN.to_string(),
            p if p.starts_with('/') => p.to_string(),
            p => format!("{REF_DIR}/{p}"),
        };
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", format!("/run/netns/{netns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", format!("{}:{REF_DIR}", std::path::Path::new(BIN).parent().unwrap().display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run plugin");
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// The main plugin's type ("ebpfcni" or "bridge").
    pub fn plugin_type(&self) -> &str {
        self.conf["type"].as_str().unwrap()
    }

    /// A pod: a network namespace wired by the node's plugin.
    pub fn add_pod(&self, name: &str) -> Pod {
        self.add_pod_using(self.plugin_type(), name)
    }

    /// The same, wired by `plugin` (a name, or a path to another build).
    pub fn add_pod_using(&self, plugin: &str, name: &str) -> Pod {
        let netns = format!("ebp-{}-{name}", self.tag);
        let container_id = format!("{}-{name}", self.tag);
        let _ = Command::new("ip").args(["netns", "del", &netns]).stderr(Stdio::null()).status();
        run_ok(Command::new("ip").args(["netns", "add", &netns]), "ip netns add (pod)");
        self.pods.borrow_mut().push((netns.clone(), container_id.clone()));
        run_ok(Command::new("ip").args(["netns", "exec", &netns, "ip", "link", "set", "lo", "up"]), "pod lo up");
        let out = self.cni(plugin, "ADD", &self.conf, &container_id, &netns);
        assert!(
            out.status.success(),
            "ADD {name} on {}: {}{}",
            self.tag,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Value = serde_json::from_slice(&out.stdout).expect("ADD result is JSON");
        Pod { netns, container_id, ifname: "eth0".into(), result }
    }

    /// Chains the reference portmap plugin after the pod's ADD, with
    /// `mappings` as the runtime's `portMappings`.
    pub fn portmap(&self, pod: &Pod, mappings: Value) {
        let conf = json!({
            "cniVersion": "1.0.0", "name": self.conf["name"], "type": "portmap",
            "capabilities": {"portMappings": true}, "snat": true,
            "runtimeConfig": {"portMappings": mappings}, "prevResult": pod.result,
        });
        let out = self.cni("portmap", "ADD", &conf, &pod.container_id, &pod.netns);
        assert!(
            out.status.success(),
            "portmap ADD: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn del_pod(&self, pod: &Pod) {
        self.del_pod_using(self.plugin_type(), pod)
    }

    pub fn del_pod_using(&self, plugin: &str, pod: &Pod) {
        let out = self.cni(plugin, "DEL", &self.conf, &pod.container_id, &pod.netns);
        assert!(out.status.success(), "DEL: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `f` inside the node's namespace on a helper thread.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        super::in_netns(&format!("/run/netns/{}", self.ns), f)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for (netns, container_id) in self.pods.borrow().iter() {
            let _ = self.cni(self.plugin_type(), "DEL", &self.conf, container_id, netns);
            let _ = Command::new("ip").args(["netns", "del", netns]).status();
        }
        // The node's namespace takes its bridge, veths, sysctls, nftables
        // and iptables with it.
        for n in [&self.ns, &self.outside] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_dir_all(&self.pin_path);
    }
}
