//! Pods on different nodes: three nodes (tests/common/cluster.rs), each
//! with its own `ebpfcni agent`, two pods each, in both routing modes.
//! Every ordered pair of pods reaches the other by ICMP, TCP and UDP with
//! its own source address; a 100 MB transfer crosses nodes at the pod
//! MTU the agent chose; the peers file's changes apply within 2 s; a
//! SIGKILLed and restarted agent loses no packet of a 10 ms ping and
//! leaves nothing stale; default deny with one cross-node rule.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{now_secs, pings, tcp_source, udp_source, within, Cluster, Servers};
use common::privileged;
use serde_json::json;

const BULK: usize = 100 * 1024 * 1024;

/// All 30 ordered pairs by ICMP, TCP and UDP, sources preserved; pods
/// reach the outside masqueraded (ipMasq) and their MTU is the
/// underlay's minus the tunnel's overhead.
fn pairs_bulk_and_masquerade(c: &Cluster, mtu: u32) {
    let pods: Vec<_> = c.all_pods();
    let _servers = Servers::start(&pods.iter().map(|(_, p)| *p).collect::<Vec<_>>());
    let mut checked = 0;
    for (i, client) in &pods {
        for (j, server) in &pods {
            if client.netns == server.netns {
                continue;
            }
            let (src, dst) = (client.ip(4), server.ip(4));
            let what = format!("{} (node {i}) -> {} (node {j})", src, dst);
            assert!(pings(client, dst) || pings(client, dst), "ICMP {what}");
            assert_eq!(tcp_source(client, dst, Duration::from_secs(3)), Some(src.to_string()), "TCP {what}");
            assert_eq!(udp_source(client, dst, Duration::from_secs(1)), Some(src.to_string()), "UDP {what}");
            checked += 1;
        }
    }
    assert_eq!(checked, 30);

    for (_, p) in &pods {
        let out = common::netns_sh(&p.netns, "cat /sys/class/net/eth0/mtu");
        assert_eq!(out.trim(), mtu.to_string(), "pod MTU in {}", p.netns);
    }

    // 100 MB from a pod of node 1 to a pod of node 3.
    let (client, server) = (&c.pods[0][0], &c.pods[2][1]);
    let addr = SocketAddr::new(server.ip(4), 7100);
    let listener = server.run_in(move || TcpListener::bind(addr).expect("bind bulk"));
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept bulk");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("bulk read after {total} bytes: {e}"),
            }
        }
        total
    });
    let started = Instant::now();
    client.run_in(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect bulk");
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let chunk = vec![0x5au8; 1 << 16];
        for _ in 0..BULK / chunk.len() {
            s.write_all(&chunk).expect("bulk write");
        }
    });
    let got = sink.join().unwrap();
    eprintln!("{}: {BULK} bytes across nodes in {:?}", c.mode, started.elapsed());
    assert_eq!(got, BULK);
    // It went the mode's way: through the VXLAN device, or straight out
    // of the underlay port.
    let dev = if c.mode == "vxlan" { "ebpfcni-vxlan" } else { "underlay" };
    let stats: serde_json::Value =
        serde_json::from_str(&c.nodes[0].node.sh_ok(&format!("ip -s -j link show {dev}"))).unwrap();
    let sent = stats[0]["stats64"]["tx"]["bytes"].as_u64().unwrap() as usize;
    assert!(sent >= BULK, "{dev} of node 1 sent {sent} bytes");

    // To the world outside the cluster's pod ranges: the node's address.
    let node = &c.nodes[0].node;
    let outside = node.outside_host();
    let out_ip: IpAddr = node.outside_ip.into();
    let _outside_server = Servers::start(&[&outside]);
    assert_eq!(
        tcp_source(&c.pods[0][0], out_ip, Duration::from_secs(3)),
        Some(node.node_ip.to_string()),
        "pod -> outside is masqueraded"
    );
}

#[test]
fn vxlan_all_pairs_bulk_and_masquerade() {
    if !privileged() {
        return;
    }
    let c = Cluster::new("mn-vxp", 30, 3, "vxlan", json!({}));
    let st = c.nodes[0].status();
    assert_eq!(st["agent"]["vxlan_device"], true, "{st}");
    assert_eq!(st["agent"]["tunnels"].as_array().unwrap().len(), 2, "{st}");
    pairs_bulk_and_masquerade(&c, 1500 - 50);
}

#[test]
fn native_all_pairs_bulk_and_masquerade() {
    if !privileged() {
        return;
    }
    let c = Cluster::new("mn-nap", 33, 3, "native", json!({}));
    let st = c.nodes[0].status();
    assert_eq!(st["agent"]["vxlan_device"], false, "{st}");
    assert_eq!(c.nodes[0].agent_routes().len(), 2, "{:?}", c.nodes[0].agent_routes());
    pairs_bulk_and_masquerade(&c, 1500);
}

/// What node `i` holds for node `k`'s pod range: a route, and in vxlan
/// mode a tunnel entry.
fn holds_peer(c: &Cluster, i: usize, k: usize) -> bool {
    let subnet = &c.nodes[k].node.subnet;
    let route = c.nodes[i].agent_routes().iter().any(|r| r.starts_with(subnet.as_str()));
    let tunnel = c.nodes[i].status()["agent"]["tunnels"]
        .as_array()
        .is_some_and(|t| t.iter().any(|e| e.as_str().is_some_and(|e| e.starts_with(subnet.as_str()))));
    route && (c.mode == "native" || tunnel)
}

fn ping_loss_over_agent_kill(c: &Cluster) {
    let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
    let ping = Command::new("ip")
        .args(["netns", "exec", &a.netns, "ping", "-q", "-i", "0.01", "-c", "400", "-W", "1"])
        .arg(b.ip(4).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let since = now_secs();
    for n in &c.nodes[..2] {
        n.stop_agent("KILL");
        n.start_agent();
    }
    for n in &c.nodes[..2] {
        n.wait_ready(since);
        let last = &n.state()["last_reconcile"];
        assert_eq!(last["changes"], 0, "a restarted agent changes nothing that is right: {last}");
    }
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{}: {}", c.mode, text.lines().find(|l| l.contains("transmitted")).unwrap_or(""));
    assert!(text.contains("400 packets transmitted, 400 received"), "ping under agent restarts: {text}");
}

fn peers_follow_the_file_and_restarts(c: &Cluster) {
    let (a, far) = (&c.pods[0][0], &c.pods[2][0]);
    assert!(pings(a, far.ip(4)));
    let baseline: Vec<_> = c.nodes.iter().map(|n| n.programmed()).collect();

    // Node 3 leaves the file: nodes 1 and 2 drop it within 2 s.
    c.write_peers(&[0, 1]);
    for i in 0..2 {
        let took = within(Duration::from_secs(2), || !holds_peer(c, i, 2));
        assert!(took.is_some(), "node {i} still holds node 3: {:?}", c.nodes[i].programmed());
    }
    assert!(!pings(a, far.ip(4)), "node 3's pods are no longer routed");
    // It comes back: reachable within 2 s, both ways.
    c.write_peers(&[0, 1, 2]);
    let took = within(Duration::from_secs(2), || pings(a, far.ip(4)));
    assert!(took.is_some(), "node 3 reachable again: {:?}", c.nodes[0].programmed());
    eprintln!("{}: node added, reachable after {:?}", c.mode, took.unwrap());
    assert!(pings(far, a.ip(4)));

    // A peer behind a router: native routing refuses it and says why;
    // vxlan reaches it through the underlay's routes.
    c.write_peers_with(&[0, 1, 2], &[("mn-far", "10.249.99.0/24", "192.0.2.9")]);
    let peer_status = || {
        let peers = c.nodes[0].status()["agent"]["peers"].clone();
        peers.as_array().unwrap().iter().find(|p| p["name"] == "mn-far").map(|p| p["status"].clone())
    };
    assert!(within(Duration::from_secs(2), || peer_status().is_some()).is_some());
    let status = peer_status().unwrap();
    let routed = c.nodes[0].agent_routes().iter().any(|r| r.starts_with("10.249.99.0/24"));
    if c.mode == "native" {
        assert!(status.as_str().unwrap().contains("not on a network this node is directly connected to"), "{status}");
        assert!(!routed);
    } else {
        assert_eq!(status, "programmed");
        assert!(routed);
    }
    c.write_peers(&[0, 1, 2]);
    assert!(within(Duration::from_secs(2), || peer_status().is_none()).is_some());

    ping_loss_over_agent_kill(c);
    for (n, before) in c.nodes.iter().zip(&baseline) {
        assert_eq!(&n.programmed(), before, "restart left {} as it was", n.name);
    }

    // SIGTERM: a clean exit, the node stays ready (and STATUS says so).
    let n1 = &c.nodes[0];
    assert!(n1.stop_agent("TERM"), "agent exits 0 on SIGTERM: {}", std::fs::read_to_string(&n1.log).unwrap());
    assert_eq!(n1.state()["state"], "stopped");
    let status = n1.node.cni("ebpfcni", "STATUS", &n1.node.conf, "status", &a.netns);
    assert!(status.status.success(), "STATUS after a clean stop: {}", String::from_utf8_lossy(&status.stdout));
    assert!(pings(a, far.ip(4)), "fail static: traffic flows without the agent");

    // Node 3 leaves while node 1's agent is down: its restart removes
    // every trace of it, and nothing else changes.
    c.write_peers(&[0, 1]);
    let since = now_secs();
    n1.start_agent();
    n1.wait_ready(since);
    assert!(!holds_peer(c, 0, 2), "stale state of node 3: {:?}", n1.programmed());
    let (routes, tunnels, nft) = n1.programmed();
    assert_eq!(routes.len(), 1, "{routes:?}");
    if c.mode == "vxlan" {
        assert_eq!(tunnels.as_array().unwrap().len(), 1, "{tunnels}");
    }
    assert!(!nft.contains(&c.nodes[2].node.subnet), "node 3's range left in nftables: {nft}");
    assert!(nft.contains(&c.nodes[1].node.subnet), "{nft}");
    assert!(pings(a, c.pods[1][1].ip(4)));

    // Without its state file (a reboot clears /run), STATUS is code 50
    // until the agent has run.
    n1.stop_agent("TERM");
    std::fs::remove_file(n1.state_file()).unwrap();
    let status = n1.node.cni("ebpfcni", "STATUS", &n1.node.conf, "status", &a.netns);
    let err: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(err["code"], 50, "{err}");
}

#[test]
fn vxlan_peers_file_changes_and_agent_restarts() {
    if !privileged() {
        return;
    }
    let c = Cluster::new("mn-vxr", 36, 3, "vxlan", json!({}));
    peers_follow_the_file_and_restarts(&c);
}

#[test]
fn native_peers_file_changes_and_agent_restarts() {
    if !privileged() {
        return;
    }
    let c = Cluster::new("mn-nar", 39, 3, "native", json!({}));
    peers_follow_the_file_and_restarts(&c);
}

/// Default deny everywhere and one rule: pod a of node 1 may open TCP
/// to pod a of node 2 on the server port. Each node holds the rule, as
/// an operator would apply it on every node.
fn default_deny_and_one_cross_node_rule(c: &Cluster) {
    let (a, b, b2, far) = (&c.pods[0][0], &c.pods[1][0], &c.pods[1][1], &c.pods[2][0]);
    for n in &c.nodes {
        let out = n.node.sh(&format!(
            "{} policy allow {} {} --proto tcp --port {} --network {} --pin-path {}",
            common::BIN,
            a.ip(4),
            b.ip(4),
            common::cluster::SERVE_PORT,
            n.network(),
            n.node.pin_path.display()
        ));
        assert!(out.status.success(), "policy allow: {}", String::from_utf8_lossy(&out.stderr));
    }
    let pods: Vec<_> = c.all_pods().into_iter().map(|(_, p)| p).collect();
    let _servers = Servers::start(&pods);
    let short = Duration::from_millis(800);
    assert_eq!(tcp_source(a, b.ip(4), Duration::from_secs(3)), Some(a.ip(4).to_string()), "the rule's flow");
    assert_eq!(tcp_source(b, a.ip(4), short), None, "the other way round");
    assert_eq!(udp_source(a, b.ip(4), Duration::from_millis(300)), None, "another protocol");
    assert!(!pings(a, b.ip(4)), "ICMP");
    assert_eq!(tcp_source(a, b2.ip(4), short), None, "another pod of that node");
    assert_eq!(tcp_source(a, far.ip(4), short), None, "a pod of a third node");
    assert_eq!(tcp_source(&c.pods[0][1], b.ip(4), short), None, "another pod of the source's node");
    assert_eq!(tcp_source(a, c.pods[0][1].ip(4), short), None, "the same node, as on one node");
}

#[test]
fn vxlan_default_deny_and_one_cross_node_rule() {
    if !privileged() {
        return;
    }
    let c = Cluster::new("mn-vxd", 42, 3, "vxlan", json!({"policy": {"defaultAction": "deny"}}));
    default_deny_and_one_cross_node_rule(&c);
}

#[test]
fn native_default_deny_and_one_cross_node_rule() {
    if !privileged() {
        return;
    }
    let c = Cluster::new("mn-nad", 45, 3, "native", json!({"policy": {"defaultAction": "deny"}}));
    default_deny_and_one_cross_node_rule(&c);
}

/// IPv4 datagrams the node's stack forwarded (`Ip: ForwDatagrams`).
fn forwarded(n: &common::cluster::ClusterNode) -> u64 {
    let snmp = n.node.sh_ok("cat /proc/net/snmp");
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let at = names.split_whitespace().position(|f| f == "ForwDatagrams").unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// The fast path: pod to pod across nodes crosses neither node's
/// forwarding stack (from_pod sends it out, from_peer delivers it), both
/// ways; a flow the sender's host translates (a Service's DNAT to a pod
/// of another node) still takes the host's path both ways, so the host
/// undoes the translation for its replies.
fn fp_skips_the_hosts_stacks(c: &Cluster) {
    let (a, b) = (&c.pods[0][0], &c.pods[1][0]);
    let _servers = Servers::start(&[a, b]);
    assert!(pings(a, b.ip(4)) || pings(a, b.ip(4)), "warm up");
    let before = (forwarded(&c.nodes[0]), forwarded(&c.nodes[1]));
    for _ in 0..5 {
        assert!(pings(a, b.ip(4)), "ICMP a -> b");
        assert!(pings(b, a.ip(4)), "ICMP b -> a");
    }
    assert_eq!(tcp_source(a, b.ip(4), Duration::from_secs(3)), Some(a.ip(4).to_string()));
    assert_eq!(udp_source(b, a.ip(4), Duration::from_secs(1)), Some(b.ip(4).to_string()));
    let after = (forwarded(&c.nodes[0]), forwarded(&c.nodes[1]));
    assert_eq!(before, after, "{} forwarded by the nodes' stacks (node 1, node 2)", c.mode);

    let service = "10.96.48.10";
    c.nodes[0].node.sh_ok(&format!(
        "nft add table ip fptest && nft add chain ip fptest pre '{{ type nat hook prerouting priority -100; }}' && \
         nft add rule ip fptest pre ip daddr {service} dnat to {}",
        b.ip(4)
    ));
    let svc: IpAddr = service.parse().unwrap();
    assert_eq!(tcp_source(a, svc, Duration::from_secs(3)), Some(a.ip(4).to_string()), "TCP through the DNAT");
    assert_eq!(udp_source(a, svc, Duration::from_secs(1)), Some(a.ip(4).to_string()), "UDP through the DNAT");
    // Those took the host's path (the counter counts); the plain flow
    // keeps its fast path.
    let before = forwarded(&c.nodes[0]);
    assert!(before >= 4, "the DNAT's flows were forwarded by node 1's stack: {before}");
    assert_eq!(tcp_source(b, a.ip(4), Duration::from_secs(3)), Some(b.ip(4).to_string()));
    assert_eq!(forwarded(&c.nodes[0]), before, "b -> a after the DNAT's flows");

    // A DNAT on node 2 of an unused address of its own pod range to its
    // pod b (not masqueraded: as a hostPort reached from a pod when the
    // operator exempts node addresses): the replies go back through node
    // 2's stack, which undoes it.
    let IpAddr::V4(bv4) = b.ip(4) else { unreachable!() };
    let o = bv4.octets();
    let virt = std::net::Ipv4Addr::new(o[0], o[1], o[2], 250);
    c.nodes[1].node.sh_ok(&format!(
        "nft add table ip fptest && nft add chain ip fptest pre '{{ type nat hook prerouting priority -100; }}' && \
         nft add rule ip fptest pre ip daddr {virt} dnat to {}",
        b.ip(4)
    ));
    let virt = IpAddr::V4(virt);
    assert_eq!(tcp_source(a, virt, Duration::from_secs(3)), Some(a.ip(4).to_string()), "TCP to node 2's DNAT");
    assert_eq!(udp_source(a, virt, Duration::from_secs(1)), Some(a.ip(4).to_string()), "UDP to node 2's DNAT");
    assert!(pings(a, b.ip(4)), "and the plain flow");
}

#[test]
fn vxlan_fp_skips_the_hosts_stacks() {
    if !privileged() {
        return;
    }
    let c = Cluster::new("mn-vxfp", 48, 2, "vxlan", json!({}));
    fp_skips_the_hosts_stacks(&c);
}

#[test]
fn native_fp_skips_the_hosts_stacks() {
    if !privileged() {
        return;
    }
    let c = Cluster::new("mn-nafp", 51, 2, "native", json!({}));
    fp_skips_the_hosts_stacks(&c);
}
