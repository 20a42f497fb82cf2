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
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::daemonset::{self, ApiTls, DaemonSetPod, Image, NodeMounts};
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
    /// Set when the agent runs as the DaemonSet's pod (podman).
    pub pod: Option<NodePod>,
}

/// One node's DaemonSet pod: the manifest's containers, this node's mounts.
pub struct NodePod {
    pub spec: std::rc::Rc<DaemonSetPod>,
    pub image: String,
    pub mounts: NodeMounts,
    /// The agent container's name.
    pub name: String,
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
    /// The API server's TLS front, when the agents run as the DaemonSet's pods.
    pub tls: Option<ApiTls>,
    pub image: Option<Image>,
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
        if let Some(pod) = &self.pod {
            return pod.start();
        }
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
        if let Some(pod) = &self.pod {
            return pod.stop(signal);
        }
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
            // A container's agent has a pid of its own namespace.
            let pid_ok = self.pod.is_some() || s["pid"].as_u64().map(|p| p as u32) == self.agent_pid();
            if pid_ok
                && s["ready"] == true
                && s["state"] == "ready"
                && s["last_reconcile"]["at"].as_u64() >= Some(since)
            {
                return;
            }
            assert!(Instant::now() < deadline, "agent of {} not ready: {s}\n{}", self.name, self.agent_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl ClusterNode {
    /// What the agent printed.
    pub fn agent_log(&self) -> String {
        match &self.pod {
            Some(pod) => pod.logs(),
            None => fs::read_to_string(&self.log).unwrap_or_default(),
        }
    }
}

impl NodePod {
    /// What a kubelet does: the init container to completion, then the
    /// agent container (a leftover of an earlier start goes first).
    fn start(&self) {
        let init = daemonset::with_image(self.spec.init_container(), &self.image);
        let init_name = format!("{}-install", self.name);
        let _ = daemonset::podman().args(["rm", "-f", &init_name]).output();
        let out = daemonset::podman().args(self.spec.run_args(&init, &self.mounts, &init_name, true)).output().unwrap();
        assert!(
            out.status.success(),
            "init container: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let agent = daemonset::with_image(self.spec.agent_container(), &self.image);
        let _ = daemonset::podman().args(["rm", "-f", &self.name]).output();
        let out =
            daemonset::podman().args(self.spec.run_args(&agent, &self.mounts, &self.name, false)).output().unwrap();
        assert!(out.status.success(), "agent container: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Signals the agent container, waits for it; true when it exited 0.
    fn stop(&self, signal: &str) -> bool {
        let _ = daemonset::podman().args(["kill", "--signal", signal, &self.name]).output();
        let out = daemonset::podman().args(["wait", &self.name]).output().unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let _ = daemonset::podman().args(["rm", "-f", &self.name]).output();
        code == "0"
    }

    fn logs(&self) -> String {
        let out = daemonset::podman().args(["logs", &self.name]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// Runs the readiness probe's command in the agent container.
    pub fn probe(&self) -> Output {
        daemonset::podman().args(["exec", &self.name]).args(self.spec.readiness()).output().unwrap()
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

impl Cluster {
    /// `tag` must contain "mn"; nodes get ids `base`, `base + 1`, … (30-69).
    pub fn new(tag: &str, base: u8, count: usize, mode: &str, extra: Value) -> Cluster {
        Self::build(tag, base, count, mode, extra, Launch::Binary { api: false })
    }

    /// The same cluster, its agents (`ebpfcni-agent run`) watching a fake
    /// Kubernetes API server for Nodes, Pods, Namespaces and NetworkPolicies.
    pub fn with_api(tag: &str, base: u8, count: usize, mode: &str, extra: Value) -> Cluster {
        Self::build(tag, base, count, mode, extra, Launch::Binary { api: true })
    }

    /// The same, each node's agent the DaemonSet's pod of
    /// deploy/ebpfcni.yaml (tests/common/daemonset.rs), in-cluster with a
    /// service account over TLS; the image is built from this repository.
    pub fn with_daemonset(tag: &str, base: u8, count: usize, mode: &str) -> Cluster {
        Self::build(tag, base, count, mode, json!({}), Launch::DaemonSet)
    }

    fn build(tag: &str, base: u8, count: usize, mode: &str, extra: Value, launch: Launch) -> Cluster {
        let api = !matches!(launch, Launch::Binary { api: false });
        let in_pods = matches!(launch, Launch::DaemonSet);
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
            tls: None,
            image: None,
        };
        let kubeconfig = api.then(|| {
            run_ok(&format!("ip -n {underlay} addr add 10.248.0.254/16 dev ebubr"));
            let server = super::fakeapi::FakeApi::start_in(&underlay, "10.248.0.254");
            let path = server.kubeconfig(&cluster.dir);
            cluster.api = Some(server);
            path
        });
        let spec = in_pods.then(|| {
            let api = cluster.api.as_ref().unwrap();
            let tls = ApiTls::start(&cluster.dir.join("tls"), &underlay, "10.248.0.254", api.addr());
            // Only the service account's token is let in from now on.
            api.require_token(&tls.token);
            cluster.tls = Some(tls);
            cluster.image = Some(Image::build(&format!("localhost/ebpfcni-{tag}:{}", std::process::id())));
            std::rc::Rc::new(DaemonSetPod::from_manifest())
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
            let name = format!("{tag}-n{}", i + 1);
            let (template, cni_conf, pod) = match &spec {
                None => {
                    let template = ndir.join("template.conf");
                    fs::write(&template, node.conf.to_string()).unwrap();
                    (template, ndir.join("10-ebpfcni.conf"), None)
                }
                Some(spec) => {
                    let pod = node_pod(&cluster, spec, &node, &name, &ndir);
                    let template = pod.mounts.dir.join("config/10-ebpfcni.conflist");
                    let cni_conf = pod.mounts.dir.join("etc-cni-net.d/10-ebpfcni.conflist");
                    (template, cni_conf, Some(pod))
                }
            };
            cluster.nodes.push(ClusterNode {
                name,
                underlay_ip,
                cni_conf,
                log: ndir.join("agent.log"),
                template,
                node,
                kubeconfig: kubeconfig.clone(),
                agent: RefCell::new(None),
                pod,
            });
        }
        cluster.write_peers(&(0..count).collect::<Vec<_>>());
        let since = now_secs();
        for n in &cluster.nodes {
            n.start_agent();
        }
        for n in &mut cluster.nodes {
            n.wait_ready(since);
            let written: Value =
                serde_json::from_slice(&fs::read(&n.cni_conf).expect("the agent wrote the CNI config"))
                    .expect("CNI config is JSON");
            n.node.conf = plugin_conf(&written);
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

enum Launch {
    /// `ebpfcni agent` on a peers file, or `ebpfcni-agent run` on the API.
    Binary {
        api: bool,
    },
    DaemonSet,
}

/// The ebpfcni entry of a conflist as a config of its own (the pods are
/// added with it); a single config as it is.
pub fn plugin_conf(doc: &Value) -> Value {
    let Some(plugins) = doc["plugins"].as_array() else { return doc.clone() };
    let mut ours = plugins.iter().find(|p| p["type"] == "ebpfcni").expect("an ebpfcni entry").clone();
    ours["name"] = doc["name"].clone();
    ours["cniVersion"] = doc["cniVersion"].clone();
    ours
}

/// One node's DaemonSet pod: its directories, the ConfigMap's template with
/// the node's names and paths, a CNI bin directory holding the chained
/// portmap as a node's would, and the agent's state where the plugin looks.
fn node_pod(
    cluster: &Cluster,
    spec: &std::rc::Rc<DaemonSetPod>,
    node: &Node,
    name: &str,
    ndir: &std::path::Path,
) -> NodePod {
    let tls = cluster.tls.as_ref().unwrap();
    let mounts = NodeMounts {
        node_name: name.to_string(),
        netns: node.ns.clone(),
        dir: ndir.join("pod"),
        data_dir: node.data_dir.clone(),
        service_account: tls.service_account(),
        api_host: tls.host.clone(),
        api_port: tls.port,
    };
    let network = node.conf["name"].as_str().unwrap().to_string();
    let mut overrides = node.conf.clone();
    for k in ["type", "cniVersion", "name"] {
        overrides.as_object_mut().unwrap().remove(k);
    }
    overrides["logFile"] = json!(node.data_dir.join("plugin.log"));
    let template = spec.template_for(&network, &overrides);
    for d in ["config", "etc-cni-net.d", "opt-cni-bin", "run-ebpfcni"] {
        fs::create_dir_all(mounts.dir.join(d)).unwrap();
    }
    fs::create_dir_all(&node.data_dir).unwrap();
    fs::write(mounts.dir.join("config/10-ebpfcni.conflist"), serde_json::to_vec_pretty(&template).unwrap()).unwrap();
    fs::copy("/usr/lib/cni/portmap", mounts.dir.join("opt-cni-bin/portmap")).expect("the reference portmap");
    // The plugin (on the "host") reads the agent's state under /run/ebpfcni/<network>.
    fs::create_dir_all("/run/ebpfcni").unwrap();
    let link = PathBuf::from("/run/ebpfcni").join(&network);
    let _ = fs::remove_file(&link);
    let _ = fs::remove_dir_all(&link);
    std::os::unix::fs::symlink(mounts.dir.join("run-ebpfcni").join(&network), &link).unwrap();
    NodePod {
        spec: spec.clone(),
        image: cluster.image.as_ref().unwrap().0.clone(),
        mounts,
        name: format!("ebpfcni-{name}"),
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
