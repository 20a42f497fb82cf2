//! ebpfcni on a Kubernetes node, side by side with the reference bridge
//! plugin on an identical node: Services translated by kube-proxy's rules
//! (iptables mode and nftables mode) with client and backend on one node,
//! NodePort from outside, hostPort through the reference portmap, hairpin
//! through a Service and a hostPort, egress with and without masquerading,
//! the FORWARD policy DROP, and removing ebpfcni's node state. Every node
//! is a network namespace (tests/common/node.rs). ebpfcni must pass every
//! case; the reference must give the outcome the README's table states.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::node::{Node, Plugin};
use common::{privileged, Pod};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(3);

/// A TCP server in `pod` on every address, answering "pong!" to "ping!",
/// until `conns` connections or `stop`; returns the peers it saw.
fn tcp_server(pod: &Pod, port: u16, conns: usize, stop: Arc<AtomicBool>) -> JoinHandle<Vec<SocketAddr>> {
    let listener = pod.run_in(move || TcpListener::bind(("0.0.0.0", port)).expect("bind tcp"));
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut peers = Vec::new();
        while peers.len() < conns && !stop.load(Ordering::Relaxed) {
            let (mut s, peer) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                Err(_) => break,
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut buf = [0u8; 5];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(b"pong!");
            }
            peers.push(peer);
        }
        peers
    })
}

fn tcp_exchange(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"ping!").map_err(|e| format!("write to {addr}: {e}"))?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).map_err(|e| format!("read from {addr}: {e}"))?;
    (&buf == b"pong!").then_some(()).ok_or_else(|| format!("{addr} answered {buf:?}"))
}

/// `n` short connections from `client` to `addr`, one after the other;
/// Err names how many failed and the first failure.
fn tcp_from(client: &Pod, addr: SocketAddr, n: usize) -> Result<(), String> {
    client.run_in(move || {
        let failures: Vec<String> = (0..n).filter_map(|_| tcp_exchange(addr).err()).collect();
        match failures.first() {
            None => Ok(()),
            Some(first) => Err(format!("{} of {n} connections to {addr} failed, first: {first}", failures.len())),
        }
    })
}

/// TCP through `addr` to a server on `server`:`port`; returns the peer the
/// server saw.
fn tcp_via(server: &Pod, port: u16, client: &Pod, addr: SocketAddr, n: usize) -> Result<SocketAddr, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let srv = tcp_server(server, port, n, stop.clone());
    let outcome = tcp_from(client, addr, n);
    stop.store(true, Ordering::Relaxed);
    let peers = srv.join().unwrap();
    outcome?;
    peers.first().copied().ok_or_else(|| "the server saw no connection".into())
}

/// UDP with a connected client socket (as DNS resolvers use): the reply
/// only arrives when it comes from the address the client sent to.
fn udp_via(server: &Pod, port: u16, client: &Pod, addr: SocketAddr) -> Result<(), String> {
    let sock = server.run_in(move || UdpSocket::bind(("0.0.0.0", port)).expect("bind udp"));
    let srv = std::thread::spawn(move || {
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], peer);
        }
    });
    let outcome = client.run_in(move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        s.connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.send(b"query").map_err(|e| format!("send to {addr}: {e}"))?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).map_err(|e| format!("no reply from {addr} on a connected socket: {e}"))?;
        (&buf[..n] == b"query").then_some(()).ok_or_else(|| "wrong reply".to_string())
    });
    srv.join().unwrap();
    outcome
}

/// One Service as kube-proxy sees it.
struct Service {
    name: &'static str,
    cluster_ip: Ipv4Addr,
    port: u16,
    proto: &'static str,
    backend: IpAddr,
    target: u16,
    node_port: Option<u16>,
}

/// kube-proxy's iptables mode: the nat table's chains as it writes them
/// (KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-* with the hairpin masquerade,
/// KUBE-NODEPORTS, KUBE-MARK-MASQ, KUBE-POSTROUTING).
fn kube_proxy_iptables(node: &Node, services: &[Service]) {
    let cluster = &node.subnet;
    let mut s = String::from(
        "set -e; t='iptables -w -t nat'; \
         $t -N KUBE-SERVICES; $t -N KUBE-NODEPORTS; $t -N KUBE-MARK-MASQ; $t -N KUBE-POSTROUTING; \
         $t -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000; \
         $t -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN; \
         $t -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000; \
         $t -A KUBE-POSTROUTING -j MASQUERADE --random-fully; \
         $t -A PREROUTING -j KUBE-SERVICES; $t -A OUTPUT -j KUBE-SERVICES; $t -A POSTROUTING -j KUBE-POSTROUTING; ",
    );
    for v in services {
        let (n, cip, port, p, be, tp) = (v.name, v.cluster_ip, v.port, v.proto, v.backend, v.target);
        s += &format!(
            "$t -N KUBE-SVC-{n}; $t -N KUBE-SEP-{n}; \
             $t -A KUBE-SERVICES -d {cip}/32 -p {p} --dport {port} -j KUBE-SVC-{n}; \
             $t -A KUBE-SVC-{n} ! -s {cluster} -d {cip}/32 -p {p} --dport {port} -j KUBE-MARK-MASQ; \
             $t -A KUBE-SVC-{n} -j KUBE-SEP-{n}; \
             $t -A KUBE-SEP-{n} -s {be}/32 -j KUBE-MARK-MASQ; \
             $t -A KUBE-SEP-{n} -p {p} -j DNAT --to-destination {be}:{tp}; "
        );
        if let Some(np) = v.node_port {
            s += &format!(
                "$t -N KUBE-EXT-{n}; $t -A KUBE-NODEPORTS -p {p} --dport {np} -j KUBE-EXT-{n}; \
                 $t -A KUBE-EXT-{n} -j KUBE-MARK-MASQ; $t -A KUBE-EXT-{n} -j KUBE-SVC-{n}; "
            );
        }
    }
    s += "$t -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS";
    node.sh_ok(&s);
}

/// kube-proxy's nftables mode: its own `ip kube-proxy` table in the shape
/// it writes (service-ips verdict map, service/endpoint chains, numgen
/// load balancing, mark-for-masquerade, masquerading).
fn kube_proxy_nft(node: &Node, services: &[Service]) {
    let cluster = &node.subnet;
    let mut elems = Vec::new();
    let mut chains = String::new();
    for v in services {
        let (n, cip, port, p, be, tp) = (v.name, v.cluster_ip, v.port, v.proto, v.backend, v.target);
        elems.push(format!("{cip} . {p} . {port} : goto service-{n}"));
        chains += &format!(
            "chain service-{n} {{ ip daddr {cip} meta l4proto {p} th dport {port} ip saddr != {cluster} jump mark-for-masquerade; \
               numgen random mod 1 vmap {{ 0 : goto endpoint-{n} }}; }}\n\
             chain endpoint-{n} {{ ip saddr {be} jump mark-for-masquerade; meta l4proto {p} dnat to {be}:{tp}; }}\n"
        );
    }
    let script = format!(
        "table ip kube-proxy {{\n\
           map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; elements = {{ {} }}; }}\n\
           chain mark-for-masquerade {{ mark set mark or 0x4000; }}\n\
           chain masquerading {{ meta mark & 0x4000 == 0 return; meta mark set meta mark ^ 0x4000; masquerade fully-random; }}\n\
           chain services {{ ip daddr . meta l4proto . th dport vmap @service-ips; }}\n\
           chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}\n\
           chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}\n\
           chain nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; jump masquerading; }}\n\
           {chains}}}\n",
        elems.join(", ")
    );
    node.sh_ok(&format!("nft -f - <<'EOF'\n{script}EOF"));
}

fn nodes(tag: &str, id: u8, extra: Value) -> [Node; 2] {
    [
        Node::new(&format!("{tag}e"), id, Plugin::Ebpfcni, extra.clone()),
        Node::new(&format!("{tag}r"), id + 1, Plugin::Reference, extra),
    ]
}

/// ebpfcni must pass; the reference must match what the README says of it.
fn judge(case: &str, outcomes: [(Plugin, Result<(), String>); 2], reference_passes: bool) {
    for (plugin, outcome) in outcomes {
        match plugin {
            Plugin::Ebpfcni => assert!(outcome.is_ok(), "{case}: ebpfcni failed: {}", outcome.unwrap_err()),
            Plugin::Reference => assert_eq!(
                outcome.is_ok(),
                reference_passes,
                "{case}: the reference bridge plugin {} ({outcome:?}); the README's table says otherwise",
                if outcome.is_ok() { "passed" } else { "failed" }
            ),
        }
    }
}

fn cluster_ip(node_id: u8, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, node_id, n)
}

fn same_node_service(node: &Node, nft: bool) -> Result<(), String> {
    let id = node.gateway.octets()[2];
    let (a, b) = (node.add_pod("a"), node.add_pod("b"));
    let tcp = Service {
        name: "WEB",
        cluster_ip: cluster_ip(id, 10),
        port: 80,
        proto: "tcp",
        backend: b.ip(4),
        target: 8080,
        node_port: None,
    };
    let udp = Service {
        name: "DNS",
        cluster_ip: cluster_ip(id, 11),
        port: 53,
        proto: "udp",
        backend: b.ip(4),
        target: 5353,
        node_port: None,
    };
    let services = [tcp, udp];
    if nft {
        kube_proxy_nft(node, &services);
    } else {
        kube_proxy_iptables(node, &services);
    }
    let web = SocketAddr::new(services[0].cluster_ip.into(), 80);
    let peer = tcp_via(&b, 8080, &a, web, 1)?;
    if peer.ip() != a.ip(4) {
        return Err(format!("the backend saw {peer}, not the client pod {}", a.ip(4)));
    }
    udp_via(&b, 5353, &a, SocketAddr::new(services[1].cluster_ip.into(), 53))?;
    tcp_via(&b, 8080, &a, web, 1000).map(drop)
}

#[test]
fn clusterip_same_node_iptables_mode() {
    if !privileged() {
        return;
    }
    let outcomes = nodes("kpi", 1, json!({})).map(|n| (n.plugin, same_node_service(&n, false)));
    judge("ClusterIP, client and backend on one node (iptables mode)", outcomes, true);
}

#[test]
fn clusterip_same_node_nftables_mode() {
    if !privileged() {
        return;
    }
    let outcomes = nodes("kpn", 3, json!({})).map(|n| (n.plugin, same_node_service(&n, true)));
    judge("ClusterIP, client and backend on one node (nftables mode)", outcomes, true);
}

fn node_port(node: &Node) -> Result<(), String> {
    let id = node.gateway.octets()[2];
    let b = node.add_pod("b");
    let svc = Service {
        name: "NP",
        cluster_ip: cluster_ip(id, 12),
        port: 80,
        proto: "tcp",
        backend: b.ip(4),
        target: 8080,
        node_port: Some(30080),
    };
    kube_proxy_iptables(node, &[svc]);
    tcp_via(&b, 8080, &node.outside_host(), SocketAddr::new(node.node_ip.into(), 30080), 20).map(drop)
}

#[test]
fn nodeport_from_outside() {
    if !privileged() {
        return;
    }
    let outcomes = nodes("knp", 5, json!({})).map(|n| (n.plugin, node_port(&n)));
    judge("NodePort from outside the node", outcomes, true);
}

fn host_port(node: &Node, hairpin: bool) -> Result<(), String> {
    let a = node.add_pod("a");
    let b = if hairpin { None } else { Some(node.add_pod("b")) };
    let server = b.as_ref().unwrap_or(&a);
    node.portmap(server, json!([{"hostPort": 8081, "containerPort": 8080, "protocol": "tcp"}]));
    tcp_via(server, 8080, &a, SocketAddr::new(node.node_ip.into(), 8081), 20).map(drop)
}

#[test]
fn hostport_from_a_pod_on_the_same_node() {
    if !privileged() {
        return;
    }
    let outcomes = nodes("khp", 7, json!({})).map(|n| (n.plugin, host_port(&n, false)));
    judge("hostPort (portmap) from a pod on the same node", outcomes, true);
}

#[test]
fn hairpin_through_own_hostport() {
    if !privileged() {
        return;
    }
    let outcomes = nodes("khh", 9, json!({})).map(|n| (n.plugin, host_port(&n, true)));
    judge("hairpin through the pod's own hostPort", outcomes, true);
}

fn hairpin_service(node: &Node) -> Result<(), String> {
    let id = node.gateway.octets()[2];
    let a = node.add_pod("a");
    let svc = Service {
        name: "SELF",
        cluster_ip: cluster_ip(id, 13),
        port: 80,
        proto: "tcp",
        backend: a.ip(4),
        target: 8080,
        node_port: None,
    };
    kube_proxy_iptables(node, &[svc]);
    tcp_via(&a, 8080, &a, SocketAddr::new(cluster_ip(id, 13).into(), 80), 20).map(drop)
}

#[test]
fn hairpin_through_a_service() {
    if !privileged() {
        return;
    }
    let outcomes = nodes("khs", 11, json!({})).map(|n| (n.plugin, hairpin_service(&n)));
    judge("hairpin: a pod reaches itself through a Service", outcomes, true);
}

/// A pod connects to a server outside the node; returns the source address
/// the outside saw and the pod's own.
fn egress(node: &Node, pod: &str) -> Result<(IpAddr, IpAddr), String> {
    let a = node.add_pod(pod);
    let peer = tcp_via(&node.outside_host(), 9000, &a, SocketAddr::new(node.outside_ip.into(), 9000), 3)?;
    Ok((peer.ip(), a.ip(4)))
}

#[test]
fn egress_with_and_without_masquerade() {
    if !privileged() {
        return;
    }
    for (masq, tag, id) in [(true, "kem", 13), (false, "ken", 15)] {
        let outcomes = nodes(tag, id, json!({"ipMasq": masq})).map(|n| {
            let outcome = egress(&n, "a").and_then(|(seen, pod)| {
                let expected = if masq { IpAddr::V4(n.node_ip) } else { pod };
                (seen == expected).then_some(()).ok_or_else(|| format!("the outside saw {seen}, expected {expected}"))
            });
            (n.plugin, outcome)
        });
        judge(&format!("pod -> outside, ipMasq {masq}"), outcomes, true);
    }
}

/// On a node whose FORWARD policy is DROP (Docker sets it) no accept rule
/// in another table can let routed traffic through: an nftables drop is
/// final, whichever table's base chain says it. Neither plugin may touch
/// the iptables FORWARD chain, so pods cannot reach the outside there;
/// this test pins that fact (the README's table and Operations say what
/// the operator adds).
#[test]
fn egress_under_forward_drop_needs_the_operators_accept() {
    if !privileged() {
        return;
    }
    for n in nodes("kfd", 17, json!({"ipMasq": true})) {
        n.sh_ok("iptables -w -P FORWARD DROP");
        let outcome = egress(&n, "a");
        assert!(outcome.is_err(), "{:?}: pod reached the outside through FORWARD DROP: {outcome:?}", n.plugin);
        // What the operator adds (Docker's DOCKER-USER chain is the place on
        // a Docker host): accept the pod range both ways.
        n.sh_ok(&format!(
            "iptables -w -I FORWARD -s {0} -j ACCEPT && iptables -w -I FORWARD -d {0} -j ACCEPT",
            n.subnet
        ));
        let outcome = egress(&n, "b");
        assert!(outcome.is_ok(), "{:?}: with the operator's accept rules: {outcome:?}", n.plugin);
    }
}

/// `ebpfcni node remove` leaves nothing of ebpfcni's on the node: no
/// nftables table or rule, forwarding back as it was before the first ADD.
#[test]
fn node_remove_leaves_nothing_behind() {
    if !privileged() {
        return;
    }
    let n = Node::new("krm", 19, Plugin::Ebpfcni, json!({"ipMasq": true}));
    let before = n.sh_ok("cat /proc/sys/net/ipv4/ip_forward; nft list ruleset | grep -c . || true");
    let a = n.add_pod("a");
    assert_eq!(n.sh_ok("cat /proc/sys/net/ipv4/ip_forward").trim(), "1", "ADD did not enable forwarding");
    let table = n.sh_ok("nft list table inet ebpfcni");
    assert!(table.contains("masquerade") && table.contains(&n.subnet), "{table}");
    // A repeated ADD of an unchanged network rewrites nothing.
    let handles = n.sh_ok("nft -a list table inet ebpfcni");
    let b = n.add_pod("b");
    assert_eq!(n.sh_ok("nft -a list table inet ebpfcni"), handles, "an unchanged network's rules were rewritten");
    // ipMasq turned off: the next ADD (found the network's chain without
    // listing the table) takes the chain away; turned on, it comes back.
    let mut plain = n.conf.clone();
    plain["ipMasq"] = json!(false);
    for masq in [false, false, true] {
        let conf = if masq { &n.conf } else { &plain };
        assert!(n.cni("ebpfcni", "ADD", conf, &b.container_id, &b.netns).status.success());
        let table = n.sh_ok("nft list table inet ebpfcni");
        assert_eq!(table.contains("masquerade"), masq, "ipMasq {masq}: {table}");
    }
    n.del_pod(&a);
    let removed = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", n.ns))
        .args([common::BIN, "node", "remove"])
        .output()
        .unwrap();
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let said = String::from_utf8_lossy(&removed.stdout);
    assert!(said.contains("restored net/ipv4/ip_forward = 0") && said.contains("removed nftables table"), "{said}");
    let after = n.sh_ok("cat /proc/sys/net/ipv4/ip_forward; nft list ruleset | grep -c . || true");
    assert_eq!(after, before, "the node is not as it was before ebpfcni");
}
