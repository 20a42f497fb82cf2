//! Test harness: a "pod" is a network namespace, the "runtime" is the test
//! calling the plugin binary exactly as a runtime does (config on stdin,
//! `CNI_*` environment). Every test owns its names (bridge, subnet,
//! dataDir, bpfPinPath, netns) and a `TestNet` removes everything it made
//! when dropped, even when the test fails.

#![allow(dead_code)]

pub mod cluster;
pub mod daemonset;
pub mod fakeapi;
pub mod frames;
pub mod node;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_ebpfcni");
/// The Kubernetes side (watches, metrics, install --node-name).
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_ebpfcni-agent");

/// A tool a test needs: missing, the test skips loudly, or fails under CI=true.
pub fn have(tool: &str, probe: &[&str]) -> bool {
    if Command::new(tool).args(probe).output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{tool} is missing: scripts/deps.sh installs it (CI=true forbids skipping)");
    }
    eprintln!("\n*** SKIPPED: {tool} is not installed (scripts/deps.sh) ***\n");
    false
}

/// Runs a CNI plugin binary as a runtime does: `command` and the pod in
/// the `CNI_*` environment (interface eth0, the reference plugins on
/// `CNI_PATH`), `conf` on stdin.
pub fn run_plugin(bin: &str, command: &str, container_id: &str, netns: &str, conf: &Value) -> Output {
    run_plugin_in(None, bin, command, container_id, netns, conf)
}

/// The same, with the plugin itself inside network namespace `node`
/// (setns, so /sys/fs/bpf stays visible): what it changes node-wide
/// (sysctls, iptables) stays in that namespace.
pub fn run_plugin_in(
    node: Option<&str>,
    bin: &str,
    command: &str,
    container_id: &str,
    netns: &str,
    conf: &Value,
) -> Output {
    let mut cmd = match node {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    // A plugin may refuse early and close stdin: ignore EPIPE.
    let _ = child.stdin.take().unwrap().write_all(conf.to_string().as_bytes());
    child.wait_with_output().unwrap()
}

/// Privileged tests run for real as root. Elsewhere they skip loudly, but
/// under CI=true a test that cannot run fails.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("privileged test cannot run: not root (CI=true forbids skipping)");
    }
    eprintln!("\n*** SKIPPED: privileged test needs root (netns, links, BPF) ***\n");
    false
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("run sh")
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether link `name` is gone, or goes within 10 s: DEL returns before
/// the kernel has deleted the pod's veth (a child process of the plugin
/// does that, src/cni/teardown.rs).
pub fn link_gone(name: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while link_exists(name) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

pub fn counter(ifname: &str, stat: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/{stat}"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Pod {
    pub netns: String,
    pub container_id: String,
    pub ifname: String,
    pub result: Value,
}

impl Pod {
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// The pod's first address of the family (4 or 6).
    pub fn ip(&self, family: u8) -> IpAddr {
        self.result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["address"].as_str())
            .map(|a| a.split('/').next().unwrap().parse::<IpAddr>().unwrap())
            .find(|ip| (family == 4) == ip.is_ipv4())
            .unwrap_or_else(|| panic!("pod has no IPv{family} address: {}", self.result))
    }

    pub fn host_veth(&self) -> String {
        self.result["interfaces"][1]["name"].as_str().unwrap().to_string()
    }

    pub fn ping(&self, ip: IpAddr, count: u32) -> bool {
        self.ping_sized(ip, count, 56)
    }

    /// Pings with `size` bytes of payload; true when every reply came back.
    pub fn ping_sized(&self, ip: IpAddr, count: u32, size: u32) -> bool {
        let out = sh(&format!("ip netns exec {} ping -q -c {count} -i 0.05 -W 2 -s {size} {ip}", self.netns));
        out.status.success()
    }

    /// Runs `f` inside the pod's network namespace on a helper thread.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.netns_path(), f)
    }
}

/// Runs `f` on a helper thread inside the network namespace at `path`
/// (setns of the network namespace only: the bpffs stays in view).
pub fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("thread in {path} panicked"))
}

/// A TCP round trip over IPv4: `server` listens, `client` connects and
/// exchanges a message. Returns what the client read back.
pub fn tcp_echo(server: &Pod, client: &Pod, port: u16) -> String {
    tcp_echo_on(server, client, server.ip(4), port)
}

pub fn tcp_echo_on(server: &Pod, client: &Pod, ip: IpAddr, port: u16) -> String {
    let addr = SocketAddr::new(ip, port);
    let listener = server.run_in(move || TcpListener::bind(addr).expect("bind in server pod"));
    let srv = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("server read");
        s.write_all(b"pong!").expect("server write");
    });
    let reply = client.run_in(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect from client pod");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"ping!").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("client read");
        String::from_utf8_lossy(&buf).into_owned()
    });
    srv.join().unwrap();
    reply
}

/// One test's private network: unique bridge, subnet, dataDir, pin path.
pub struct TestNet {
    pub name: String,
    pub bridge: String,
    pub data_dir: PathBuf,
    pub pin_path: PathBuf,
    pub conf: Value,
    pub pods: Vec<(String, String, String)>, // (netns, container id, ifname)
    netns: Vec<String>,
}

impl TestNet {
    /// `id` (1-200) makes names and the subnet 10.251.<id>.0/24 unique.
    pub fn new(tag: &str, id: u8, extra: Value) -> Self {
        let name = format!("ebt-{tag}");
        let bridge = format!("ebtbr{id}");
        let data_dir = std::env::temp_dir().join(format!("ebpfcni-test-{tag}"));
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/ebpfcni-test-{tag}"));
        // Leftovers of a run that was killed (these names are this test's).
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_dir_all(&pin_path);
        let _ = sh(&format!("ip link del {bridge} 2>/dev/null"));
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": name,
            "type": "ebpfcni",
            "bridge": bridge,
            "subnet": format!("10.251.{id}.0/24"),
            "dataDir": data_dir,
            "bpfPinPath": pin_path,
            // These tests run in the machine's own namespace, whose sysctls
            // are not theirs to change (tests/node.rs runs whole nodes).
            "ipForward": false,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            if v.is_null() {
                conf.as_object_mut().unwrap().remove(k);
            } else {
                conf[k] = v.clone();
            }
        }
        TestNet { name, bridge, data_dir, pin_path, conf, pods: Vec::new(), netns: Vec::new() }
    }

    pub fn new_netns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.name);
        let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
        let out = sh(&format!("ip netns add {ns}"));
        assert!(out.status.success(), "ip netns add {ns}: {}", String::from_utf8_lossy(&out.stderr));
        self.netns.push(ns.clone());
        ns
    }

    /// Calls the plugin as a runtime would.
    pub fn cni(&self, command: &str, conf: &Value, container_id: &str, netns: Option<&str>, ifname: &str) -> Output {
        self.cni_raw(command, conf.to_string().as_bytes(), container_id, netns, ifname)
    }

    pub fn cni_raw(
        &self,
        command: &str,
        stdin: &[u8],
        container_id: &str,
        netns: Option<&str>,
        ifname: &str,
    ) -> Output {
        self.cni_full(command, stdin, container_id, netns, ifname, &[])
    }

    /// The general form, with extra environment (CNI_ARGS, say).
    pub fn cni_full(
        &self,
        command: &str,
        stdin: &[u8],
        container_id: &str,
        netns: Option<&str>,
        ifname: &str,
        extra_env: &[(&str, &str)],
    ) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = netns {
            cmd.env("CNI_NETNS", ns);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ebpfcni");
        // The plugin may refuse early and close stdin: ignore EPIPE.
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child.wait_with_output().unwrap()
    }

    /// ADD a pod in a fresh netns; panics with the plugin's output on failure.
    pub fn add_pod(&mut self, name: &str) -> Pod {
        let netns = self.new_netns(name);
        let container_id = format!("{}-{name}-0123456789", self.name);
        let out = self.cni("ADD", &self.conf.clone(), &container_id, Some(&format!("/run/netns/{netns}")), "eth0");
        assert!(
            out.status.success(),
            "ADD {name} failed: stdout={} stderr={}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Value = serde_json::from_slice(&out.stdout).expect("ADD result is JSON");
        self.pods.push((netns.clone(), container_id.clone(), "eth0".into()));
        Pod { netns, container_id, ifname: "eth0".into(), result }
    }

    /// Any command with this pod's identity (a retried ADD, a CHECK …).
    pub fn again(&self, command: &str, conf: &Value, pod: &Pod) -> Output {
        self.cni(command, conf, &pod.container_id, Some(&pod.netns_path()), &pod.ifname)
    }

    /// This network's config with `prevResult` set.
    pub fn with_prev(&self, prev: &Value) -> Value {
        let mut c = self.conf.clone();
        c["prevResult"] = prev.clone();
        c
    }

    pub fn del_pod(&self, pod: &Pod) -> Output {
        self.cni("DEL", &self.conf, &pod.container_id, Some(&pod.netns_path()), &pod.ifname)
    }

    /// `ebpfcni maps dump <map> --json` for this network.
    pub fn dump(&self, map: &str) -> Vec<Value> {
        let out = Command::new(BIN)
            .args(["maps", "dump", map, "--json", "--network", &self.name, "--pin-path"])
            .arg(&self.pin_path)
            .output()
            .unwrap();
        assert!(out.status.success(), "maps dump {map}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    }

    /// Runs an `ebpfcni` CLI command against this network.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).args(["--network", &self.name, "--pin-path"]).arg(&self.pin_path).output().unwrap()
    }

    /// The endpoint entries of leased addresses (each pod also has one for
    /// its link-local address).
    pub fn leased_endpoints(&self) -> Vec<Value> {
        self.dump("endpoints")
            .into_iter()
            .filter(|e| !e["ip"].as_str().is_some_and(|ip| ip.starts_with("fe80:")))
            .collect()
    }

    pub fn stats_of(&self, ip: IpAddr) -> Value {
        self.dump("stats").into_iter().find(|s| s["ip"] == json!(ip)).unwrap_or(json!({}))
    }

    pub fn lease_files(&self) -> Vec<String> {
        let dir = self.data_dir.join(&self.name);
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.retain(|n| n.parse::<IpAddr>().is_ok());
        v
    }

    pub fn link_pins(&self) -> Vec<String> {
        std::fs::read_dir(self.pin_path.join(&self.name).join("links"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for (netns, id, ifname) in &self.pods {
            let _ = self.cni("DEL", &self.conf, id, Some(&format!("/run/netns/{netns}")), ifname);
        }
        for ns in &self.netns {
            let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
        }
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.bridge));
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_dir_all(&self.pin_path);
    }
}

/// The spec's error JSON from a failed call (asserting that it failed).
pub fn error_json(out: &Output) -> Value {
    assert!(!out.status.success(), "expected failure, got {}", String::from_utf8_lossy(&out.stdout));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not the error JSON ({e}): {:?}", String::from_utf8_lossy(&out.stdout)));
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["cniVersion"].is_string(), "{v}");
    v
}

pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "call failed: stdout={} stderr={}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn netns_sh(netns: &str, cmd: &str) -> String {
    String::from_utf8_lossy(&sh(&format!("ip netns exec {netns} {cmd}")).stdout).into_owned()
}

/// The plugin's name for a pod's host veth, recomputed independently
/// (FNV-1a of "containerID\0ifname", 11 hex digits after "veth").
pub fn host_veth_of(container_id: &str) -> String {
    let h = format!("{container_id}\0eth0")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

impl Pod {
    pub fn mac(&self) -> [u8; 6] {
        parse_mac(netns_sh(&self.netns, "cat /sys/class/net/eth0/address").trim())
    }

    /// Sends a raw Ethernet frame out of the pod's eth0 (AF_PACKET), the
    /// way a compromised pod would forge one.
    pub fn send_frame(&self, frame: Vec<u8>) {
        self.run_in(move || {
            use nix::libc;
            // SAFETY: plain socket calls on a valid sockaddr_ll.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                assert!(fd >= 0, "AF_PACKET socket");
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
                addr.sll_halen = 6;
                addr.sll_addr[..6].copy_from_slice(&frame[..6]);
                let n = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                libc::close(fd);
                assert_eq!(n as usize, frame.len(), "sendto");
            }
        });
    }
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

/// An Ethernet + IPv4 + ICMP echo request frame.
pub fn icmp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&28u16.to_be_bytes());
    f[22] = 64;
    f[23] = 1;
    f[26..30].copy_from_slice(&src.octets());
    f[30..34].copy_from_slice(&dst.octets());
    f[34] = 8;
    f
}

/// An Ethernet + ARP reply frame claiming `claimed_ip` is at `sender_mac`.
pub fn arp_reply_frame(
    src_mac: [u8; 6],
    sender_mac: [u8; 6],
    claimed_ip: std::net::Ipv4Addr,
    target_ip: std::net::Ipv4Addr,
) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 28];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let a = &mut f[14..];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&2u16.to_be_bytes());
    a[8..14].copy_from_slice(&sender_mac);
    a[14..18].copy_from_slice(&claimed_ip.octets());
    a[18..24].copy_from_slice(&[0xff; 6]);
    a[24..28].copy_from_slice(&target_ip.octets());
    f
}

/// Whether `client` (a pod, or the host when None) can open a TCP
/// connection to `addr`, where `server` (a pod, or the host) listens.
pub fn tcp_reachable(server: Option<&Pod>, client: Option<&Pod>, addr: SocketAddr) -> bool {
    let bind = move || TcpListener::bind(addr).expect("bind listener");
    let listener = match server {
        Some(p) => p.run_in(bind),
        None => bind(),
    };
    listener.set_nonblocking(true).unwrap();
    let connect = move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(700))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(700)))?;
                s.write_all(b"hi")?;
                let mut b = [0u8; 2];
                s.read_exact(&mut b)?;
                Ok(b == *b"ok")
            })
            .unwrap_or(false)
    };
    let srv = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_millis(1500);
        while std::time::Instant::now() < deadline {
            if let Ok((mut s, _)) = listener.accept() {
                s.set_nonblocking(false).ok();
                let mut b = [0u8; 2];
                if s.read_exact(&mut b).is_ok() {
                    let _ = s.write_all(b"ok");
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let ok = match client {
        Some(p) => p.run_in(connect),
        None => connect(),
    };
    srv.join().unwrap();
    ok
}

/// An Ethernet + IPv6 + ICMPv6 neighbour advertisement (from the sender's
/// link-local address to all nodes) claiming `target`.
pub fn neighbour_advert_frame(src_mac: [u8; 6], target: std::net::Ipv6Addr) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 24];
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&24u16.to_be_bytes());
    ip[6] = 58;
    ip[7] = 255;
    // The sender's own link-local address (EUI-64 of its MAC, as ADD sets it).
    let mut ll = [0u8; 16];
    ll[0] = 0xfe;
    ll[1] = 0x80;
    ll[8..].copy_from_slice(&[src_mac[0] ^ 2, src_mac[1], src_mac[2], 0xff, 0xfe, src_mac[3], src_mac[4], src_mac[5]]);
    ip[8..24].copy_from_slice(&ll);
    ip[24..40].copy_from_slice(&"ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    let icmp = &mut f[54..];
    icmp[0] = 136;
    icmp[4] = 0x20; // override flag
    icmp[8..24].copy_from_slice(&target.octets());
    f
}

/// A child process (an agent, a server) killed and reaped however the test ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /metrics` from `addr` (host:port), the whole HTTP response.
pub fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to metrics at {addr}: {e}"));
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
