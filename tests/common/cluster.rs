//! Several "nodes" (tests/common/node.rs: network namespaces with their
//! own bridge, pin and data directory, uplink and outside) joined by an
//! underlay: a bridge `ebubr` in a namespace of its own (`ebu-<tag>`),
//! one port per node, node i at 10.248.0.<i>/16. Each node runs its own
//! `ebpfcni agent`, reading one NodeList file the test rewrites, and its
//! pods are added with the CNI config the agent wrote. Dropping the
//! cluster stops the agents and removes everything.

use std::cell::RefCell;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::node::{Node, Plugin};
use super::{Pod, BIN};

pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_ebpfcni-agent");

/// The port every pod's TCP server listens on (UDP: the next one).
pub const SERVE_PORT: u16 = 7000;

pub struct ClusterNode {
    pub node: Node,
    /// metadata.name in the peers file.
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub template: PathBuf,
    pub cni_conf: PathBuf,
    pub log: PathBuf,
    /// Set when the peers come from the Kubernetes API (`ebpfcni-agent run`).
    pub kubeconfig: Option<PathBuf>,
    agent: RefCell<Option<Child>>,
}

pub struct Cluster {
    pub tag: String,
    pub mode: String,
    pub underlay: String,
    pub dir: PathBuf,
    pub peers_file: PathBuf,
    pub nodes: Vec<ClusterNode>,
    /// Two pods per node, `pods[node][0..2]`.
    pub pods: Vec<Vec<Pod>>,
    /// The fake API server the agents watch, in the underlay's namespace at
    /// 10.248.0.254, when the peers come from Kubernetes.
    pub api: Option<super::fakeapi::FakeApi>,
}

fn run_ok(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl ClusterNode {
    /// The node's network name (its agent's state lives under it).
    pub fn network(&self) -> String {
        self.node.conf["name"].as_str().unwrap().to_string()
    }

    pub fn state_file(&self) -> PathBuf {
        PathBuf::from(format!("/run/ebpfcni/{}/agent.json", self.network()))
    }

    pub fn state(&self) -> Value {
        fs::read(self.state_file()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(json!({}))
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.borrow().as_ref().map(Child::id)
    }

    /// `ebpfcni status --json` inside the node: the network's entry.
    pub fn status(&self) -> Value {
        let out = self.node.sh(&format!(
            "{BIN} status --json --network {} --pin-path {}",
            self.network(),
            self.node.pin_path.display()
        ));
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("status: {}", String::from_utf8_lossy(&out.stderr)));
        v["networks"][0].clone()
    }

    /// The agent's routes (`ip route show proto 235`), one per line.
    pub fn agent_routes(&self) -> Vec<String> {
        let out = self.node.sh_ok("ip route show proto 235");
        let mut v: Vec<String> = out.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        v.sort();
        v
    }

    /// What the node holds of the agent's work: routes, tunnel entries,
    /// the nftables table as listed.
    pub fn programmed(&self) -> (Vec<String>, Value, String) {
        let s = self.status();
        let nft = self.node.sh("nft -s list table inet ebpfcni");
        (self.agent_routes(), s["agent"]["tunnels"].clone(), String::from_utf8_lossy(&nft.stdout).into_owned())
    }

    pub fn start_agent(&self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node.ns));
        match &self.kubeconfig {
            None => {
                cmd.arg(BIN).args(["agent", "--node-name", &self.name, "--peers"]);
                cmd.arg(self.template.parent().unwrap().parent().unwrap().join("nodes.json"));
            }
            Some(kubeconfig) => {
                cmd.arg(AGENT_BIN).args(["run", "--node-name", &self.name, "--kubeconfig"]).arg(kubeconfig);
                cmd.args(["--metrics-address", "127.0.0.1:0", "--network", &self.network(), "--pin-path"]);
                cmd.arg(&self.node.pin_path).arg("--state-file").arg(self.template.with_file_name("kubernetes.json"));
            }
        }
        let child = cmd
            .arg("--template")
            .arg(&self.template)
            .arg("--cni-conf")
            .arg(&self.cni_conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start agent");
        *self.agent.borrow_mut() = Some(child);
    }

    /// Sends `signal` (kill(1) name) to the agent and reaps it; returns
    /// whether it exited with status 0.
    pub fn stop_agent(&self, signal: &str) -> bool {
        let Some(mut child) = self.agent.borrow_mut().take() else { return true };
        let _ = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the agent's state to say ready after a reconcile newer
    /// than `since` (seconds since the epoch).
    pub fn wait_ready(&self, since: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.state();
            let pid_ok = s["pid"].as_u64().map(|p| p as u32) == self.agent_pid();
            if pid_ok
                && s["ready"] == true
                && s["state"] == "ready"
                && s["last_reconcile"]["at"].as_u64() >= Some(since)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent of {} not ready: {s}\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

impl Cluster {
    /// `tag` must contain "mn"; nodes get ids `base`, `base + 1`, … (30-69).
    pub fn new(tag: &str, base: u8, count: usize, mode: &str, extra: Value) -> Cluster {
        Self::build(tag, base, count, mode, extra, false)
    }

    /// The same cluster, its agents (`ebpfcni-agent run`) watching a fake
    /// Kubernetes API server for Nodes, Pods, Namespaces and NetworkPolicies.
    pub fn with_api(tag: &str, base: u8, count: usize, mode: &str, extra: Value) -> Cluster {
        Self::build(tag, base, count, mode, extra, true)
    }

    fn build(tag: &str, base: u8, count: usize, mode: &str, extra: Value, api: bool) -> Cluster {
        assert!(tag.contains("mn"));
        let underlay = format!("ebu-{tag}");
        let dir = std::env::temp_dir().join(format!("ebpfcni-{tag}"));
        let _ = Command::new("ip").args(["netns", "del", &underlay]).stderr(Stdio::null()).status();
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        run_ok(&format!(
            "ip netns add {underlay} && ip -n {underlay} link add ebubr type bridge && \
             ip -n {underlay} link set ebubr up && ip -n {underlay} link set lo up"
        ));
        let mut cluster = Cluster {
            tag: tag.to_string(),
            mode: mode.to_string(),
            underlay: underlay.clone(),
            peers_file: dir.join("nodes.json"),
            dir,
            nodes: Vec::new(),
            pods: Vec::new(),
            api: None,
        };
        let kubeconfig = api.then(|| {
            run_ok(&format!("ip -n {underlay} addr add 10.248.0.254/16 dev ebubr"));
            let server = super::fakeapi::FakeApi::start_in(&underlay, "10.248.0.254");
            let path = server.kubeconfig(&cluster.dir);
            cluster.api = Some(server);
            path
        });
        for i in 0..count {
            let mut conf_extra = json!({"routing": mode, "ipMasq": true, "cniVersion": "1.1.0", "subnet": null});
            for (k, v) in extra.as_object().into_iter().flatten() {
                conf_extra[k] = v.clone();
            }
            let node = Node::new(&format!("{tag}-{}", i + 1), base + i as u8, Plugin::Ebpfcni, conf_extra);
            let underlay_ip = Ipv4Addr::new(10, 248, 0, i as u8 + 1);
            run_ok(&format!(
                "ip link add underlay netns {} type veth peer name ebu{i} netns {underlay} && \
                 ip -n {underlay} link set ebu{i} master ebubr up && \
                 ip -n {} addr add {underlay_ip}/16 dev underlay && ip -n {} link set underlay up",
                node.ns, node.ns, node.ns
            ));
            let ndir = cluster.dir.join(format!("n{}", i + 1));
            fs::create_dir_all(&ndir).unwrap();
            let template = ndir.join("template.conf");
            fs::write(&template, node.conf.to_string()).unwrap();
            cluster.nodes.push(ClusterNode {
                name: format!("{tag}-n{}", i + 1),
                underlay_ip,
                cni_conf: ndir.join("10-ebpfcni.conf"),
                log: ndir.join("agent.log"),
                template,
                node,
                kubeconfig: kubeconfig.clone(),
                agent: RefCell::new(None),
            });
        }
        cluster.write_peers(&(0..count).collect::<Vec<_>>());
        let since = now_secs();
        for n in &cluster.nodes {
            n.start_agent();
        }
        for n in &mut cluster.nodes {
            n.wait_ready(since);
            n.node.conf = serde_json::from_slice(&fs::read(&n.cni_conf).expect("the agent wrote the CNI config"))
                .expect("CNI config is JSON");
        }
        for n in &cluster.nodes {
            cluster.pods.push(vec![n.node.add_pod("a"), n.node.add_pod("b")]);
        }
        cluster
    }

    /// The peers file: a NodeList (as kubectl prints it) of the nodes
    /// `present`, written whole and renamed into place.
    pub fn write_peers(&self, present: &[usize]) {
        self.write_peers_with(present, &[]);
    }

    /// The same, with more nodes that run no agent: (name, podCIDR, InternalIP).
    pub fn write_peers_with(&self, present: &[usize], more: &[(&str, &str, &str)]) {
        let node = |name: &str, cidr: &str, ip: &str| {
            json!({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                   "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                   "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                            {"type": "Hostname", "address": name}]}})
        };
        let mut items: Vec<Value> = present
            .iter()
            .map(|&i| {
                let n = &self.nodes[i];
                node(&n.name, &n.node.subnet, &n.underlay_ip.to_string())
            })
            .collect();
        items.extend(more.iter().map(|(name, cidr, ip)| node(name, cidr, ip)));
        if let Some(api) = &self.api {
            // Nodes present are applied, every other node of the cluster deleted.
            for n in &self.nodes {
                if !items.iter().any(|i| i["metadata"]["name"] == json!(n.name)) {
                    api.delete("Node", "", &n.name);
                }
            }
            for item in items {
                api.apply(item);
            }
            return;
        }
        let doc = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items});
        let tmp = self.dir.join("nodes.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        fs::rename(&tmp, &self.peers_file).unwrap();
    }

    /// Every pod with its node's index.
    pub fn all_pods(&self) -> Vec<(usize, &Pod)> {
        self.pods.iter().enumerate().flat_map(|(i, ps)| ps.iter().map(move |p| (i, p))).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The API server listens in the underlay's namespace: it goes first.
        drop(self.api.take());
        for n in &self.nodes {
            n.stop_agent("TERM");
            let _ = fs::remove_dir_all(n.state_file().parent().unwrap());
        }
        // The nodes (dropped after this) take their pods, namespaces and pins.
        let _ = Command::new("ip").args(["netns", "del", &self.underlay]).status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A pod's servers: TCP on SERVE_PORT and UDP on the next port, each
/// answering with the address it saw the peer at, until dropped.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn start(pods: &[&Pod]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for pod in pods {
            let (tcp, udp) = pod.run_in(|| {
                (
                    TcpListener::bind(("0.0.0.0", SERVE_PORT)).expect("bind tcp"),
                    UdpSocket::bind(("0.0.0.0", SERVE_PORT + 1)).expect("bind udp"),
                )
            });
            tcp.set_nonblocking(true).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let s = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    match tcp.accept() {
                        Ok((mut c, peer)) => {
                            let _ = c.set_nonblocking(false);
                            let _ = c.write_all(peer.ip().to_string().as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            let s = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !s.load(Ordering::SeqCst) {
                    if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(peer.ip().to_string().as_bytes(), peer);
                    }
                }
            }));
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// From `client`, the address the TCP server at `ip` saw it at (None: no
/// connection within `timeout`).
pub fn tcp_source(client: &Pod, ip: IpAddr, timeout: Duration) -> Option<String> {
    client.run_in(move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, SERVE_PORT), timeout).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    })
}

/// The same over UDP (three tries).
pub fn udp_source(client: &Pod, ip: IpAddr, timeout: Duration) -> Option<String> {
    client.run_in(move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            s.send_to(b"who", SocketAddr::new(ip, SERVE_PORT + 1)).ok()?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    })
}

/// One ping from `client` to `ip`, waiting up to a second.
pub fn pings(client: &Pod, ip: IpAddr) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &client.netns, "ping", "-q", "-c", "1", "-W", "1", &ip.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Polls `f` until it holds or `limit` passes; returns how long it took.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
