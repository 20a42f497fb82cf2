//! What an attacker in a pod tries with raw frames (Debian's python3-scapy,
//! the CAP_NET_RAW runtimes give pods) or socket options, asserted on what
//! the other pod and the node actually receive and on the drop counters:
//! frames of other ethertypes and VLAN tags, router advertisements, and
//! IPv6 extension headers in front of the real transport header.

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use std::time::Duration;

use common::frames::*;
use common::*;
use serde_json::json;

/// Starts capturing on `pod`'s eth0 for `secs` seconds; the count of
/// frames matching the Python expression `lfilter` (of `p`) comes back.
fn capture(pod: &Pod, lfilter: &str, secs: u32) -> std::thread::JoinHandle<u64> {
    capture_on(Some(&pod.netns), "eth0", lfilter, secs)
}

#[test]
fn foreign_ethertypes_and_vlan_tags_are_dropped_and_counted() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("secl2", 91, json!({}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let (ip_a, ip_b, mac_a, mac_b) = (a.ip(4), b.ip(4), mac_of(&a), mac_of(&b));
    let before = stats_field(&net, ip_a, "drop_parse");
    // Anything that reaches b with a tag, of the foreign type, or as the
    // smuggled SYN to port 81.
    let seen = capture(&b, "Dot1Q in p or Dot1AD in p or p.type == 0x88b5 or (TCP in p and p[TCP].dport == 81)", 3);
    scapy(
        &a,
        &format!(
            "e = Ether(src='{mac_a}', dst='{mac_b}')\n\
             syn = IP(src='{ip_a}', dst='{ip_b}')/TCP(dport=81, flags='S')\n\
             sendp(e/Dot1Q(vlan=0)/syn, iface='eth0')\n\
             sendp(e/Dot1AD(vlan=5)/Dot1Q(vlan=6)/syn, iface='eth0')\n\
             sendp(Ether(src='{mac_a}', dst='{mac_b}', type=0x88b5)/Raw(b'x' * 46), iface='eth0')\n\
             sendp(e/Dot1Q(vlan=0)/ARP(op=2, hwsrc='{mac_a}', psrc='10.251.91.1', pdst='{ip_b}'), iface='eth0')"
        ),
    );
    assert_eq!(seen.join().unwrap(), 0, "a tagged or foreign frame reached pod b");
    assert_eq!(stats_field(&net, ip_a, "drop_parse") - before, 4, "{:?}", net.stats_of(ip_a));
    // Plain IPv4 still flows.
    assert!(a.ping(ip_b, 2));
}

#[test]
fn router_advertisements_from_a_pod_are_dropped() {
    if !privileged() {
        return;
    }
    let mut net = dual_stack("secra", 92, json!({}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let host_veth = a.host_veth();
    for dev in [net.bridge.as_str(), host_veth.as_str()] {
        let v = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{dev}/accept_ra")).unwrap();
        assert_eq!(v.trim(), "0", "{dev} accepts router advertisements");
    }
    // The victim would take a default route from any router.
    netns_sh(&b.netns, "sysctl -qw net.ipv6.conf.all.forwarding=0 net.ipv6.conf.eth0.accept_ra=1");
    let mac_a = mac_of(&a);
    let before = stats_field(&net, a.ip(4), "drop_spoofed");
    scapy(
        &a,
        &format!(
            "ll = [x for x in in6_getifaddr() if x[2] == 'eth0' and x[0].startswith('fe80')][0][0]\n\
             ra = Ether(src='{mac_a}', dst='33:33:00:00:00:01')/IPv6(src=ll, dst='ff02::1', hlim=255)\n\
             ra = ra/ICMPv6ND_RA(prf=1, routerlifetime=1800)/ICMPv6NDOptSrcLLAddr(lladdr='{mac_a}')\n\
             sendp(ra, iface='eth0', count=3)\n\
             red = Ether(src='{mac_a}', dst='33:33:00:00:00:01')/IPv6(src=ll, dst='ff02::1', hlim=255)\n\
             sendp(red/ICMPv6ND_Redirect(tgt=ll, dst='fd00:251:92::99'), iface='eth0')"
        ),
    );
    std::thread::sleep(Duration::from_millis(500));
    let routes = netns_sh(&b.netns, "ip -6 route show default");
    assert!(!routes.contains("fe80"), "pod b took a default route from pod a: {routes}");
    assert_eq!(stats_field(&net, a.ip(4), "drop_spoofed") - before, 4, "{:?}", net.stats_of(a.ip(4)));
}

/// IPV6_DSTOPTS puts a destination options header before TCP: policy must
/// still see TCP and its port.
fn tcp6_with_dstopts(server: &Pod, client: &Pod, port: u16) -> bool {
    let addr = SocketAddr::new(server.ip(6), port);
    let listener = server.run_in(move || TcpListener::bind(addr).expect("bind"));
    listener.set_nonblocking(true).unwrap();
    let srv = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if listener.accept().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let ok = client.run_in(move || {
        let sock = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet6,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .unwrap();
        // Next header (filled by the kernel), length 0 (8 bytes), PadN of 4.
        let opts: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
        // SAFETY: a valid socket, option buffer and length.
        let rc = unsafe {
            nix::libc::setsockopt(
                sock.as_raw_fd(),
                nix::libc::IPPROTO_IPV6,
                nix::libc::IPV6_DSTOPTS,
                opts.as_ptr().cast(),
                opts.len() as u32,
            )
        };
        assert_eq!(rc, 0, "setsockopt IPV6_DSTOPTS: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from(sock);
        stream.set_nonblocking(true).unwrap();
        let sa = nix::sys::socket::SockaddrIn6::from(match addr {
            SocketAddr::V6(a) => a,
            _ => unreachable!(),
        });
        let _ = nix::sys::socket::connect(stream.as_raw_fd(), &sa);
        let deadline = std::time::Instant::now() + Duration::from_millis(1500);
        while std::time::Instant::now() < deadline {
            if stream.peer_addr().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    });
    srv.join().unwrap();
    ok
}

#[test]
fn ipv6_extension_headers_do_not_hide_the_transport_port() {
    if !privileged() {
        return;
    }
    let mut net = dual_stack("secext", 93, json!({"policy": {"defaultAction": "deny"}}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let rule =
        net.cli(&["policy", "allow", &a.ip(6).to_string(), &b.ip(6).to_string(), "--proto", "tcp", "--port", "80"]);
    assert!(rule.status.success(), "{}", String::from_utf8_lossy(&rule.stderr));
    assert!(tcp6_with_dstopts(&b, &a, 80), "the allowed port with a destination options header was refused");
    let before = stats_field(&net, a.ip(4), "drop_policy");
    assert!(!tcp6_with_dstopts(&b, &a, 81), "a denied port was reached behind a destination options header");
    assert!(stats_field(&net, a.ip(4), "drop_policy") > before, "the refused SYN was not counted as a policy drop");
}

/// The pod's link-local address once duplicate address detection is done
/// (a tentative address cannot be bound).
fn link_local(netns: Option<&str>, dev: &str) -> std::net::Ipv6Addr {
    let prefix = netns.map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
    for _ in 0..60 {
        let out = sh(&format!("{prefix}ip -6 -o addr show dev {dev} scope link -tentative"));
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(addr) = text.split_whitespace().skip_while(|w| *w != "inet6").nth(1) {
            return addr.split('/').next().unwrap().parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{dev} in {netns:?} has no link-local address");
}

fn ifindex(netns: Option<&str>, dev: &str) -> u32 {
    let prefix = netns.map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
    String::from_utf8_lossy(&sh(&format!("{prefix}cat /sys/class/net/{dev}/ifindex")).stdout).trim().parse().unwrap()
}

/// TCP from the client pod's link-local address to `server` (a pod, or
/// the node's bridge when None) on its link-local address.
fn tcp_link_local(net: &TestNet, server: Option<&Pod>, client: &Pod, port: u16) -> bool {
    use std::io::{Read, Write};
    use std::net::SocketAddrV6;
    let (ns, dev) = match server {
        Some(p) => (Some(p.netns.as_str()), "eth0"),
        None => (None, net.bridge.as_str()),
    };
    let ll = link_local(ns, dev);
    link_local(Some(&client.netns), "eth0");
    let bind_at = SocketAddr::V6(SocketAddrV6::new(ll, port, 0, ifindex(ns, dev)));
    let bind = move || TcpListener::bind(bind_at).expect("bind link-local");
    let listener = match server {
        Some(p) => p.run_in(bind),
        None => bind(),
    };
    listener.set_nonblocking(true).unwrap();
    let srv = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_millis(2000);
        while std::time::Instant::now() < deadline {
            if let Ok((mut s, _)) = listener.accept() {
                s.set_nonblocking(false).ok();
                let _ = s.write_all(b"ok");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let to = SocketAddr::V6(SocketAddrV6::new(ll, port, 0, ifindex(Some(&client.netns), "eth0")));
    let ok = client.run_in(move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(1000))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(700)))?;
                let mut b = [0u8; 2];
                s.read_exact(&mut b)?;
                Ok(b == *b"ok")
            })
            .unwrap_or(false)
    });
    srv.join().unwrap();
    ok
}

#[test]
fn link_local_addresses_get_policy_and_cannot_be_spoofed() {
    if !privileged() {
        return;
    }
    // IPv4 only: every pod still has IPv6 link-local addresses.
    let mut net = TestNet::new("in8ll", 197, json!({"policy": {"defaultAction": "deny"}}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let (ip_a, ip_b) = (a.ip(4), b.ip(4));
    ok(net.cli(&["policy", "allow", &ip_a.to_string(), &ip_b.to_string(), "--proto", "tcp", "--port", "80"]));
    assert!(tcp_reachable(Some(&b), Some(&a), SocketAddr::new(ip_b, 80)), "the allowed port");
    let before = stats_field(&net, ip_a, "drop_policy");
    assert!(!tcp_link_local(&net, Some(&b), &a, 81), "a reached b's link-local address on a denied port");
    assert!(
        stats_field(&net, ip_a, "drop_policy") > before,
        "the link-local SYN was not counted: {:?}",
        net.stats_of(ip_a)
    );
    assert!(!tcp_link_local(&net, None, &a, 82), "a reached the node's link-local address under default deny");
    // Another pod's link-local address, or one made up, as the source.
    let (ll_b, mac_a) = (link_local(Some(&b.netns), "eth0"), mac_of(&a));
    let ll_a = link_local(Some(&a.netns), "eth0");
    let before = stats_field(&net, ip_a, "drop_spoofed");
    let seen = capture(&b, "IPv6 in p and p[IPv6].src in ('fe80::bad', 'fe80::1:bad')", 3);
    scapy(
        &a,
        &format!(
            "for src in ['fe80::bad', 'fe80::1:bad']:\n    \
             sendp(Ether(src='{mac_a}', dst='{}')/IPv6(src=src, dst='{ll_b}')/ICMPv6EchoRequest(), iface='eth0')\n\
             sendp(Ether(src='{mac_a}', dst='33:33:00:00:00:01')/IPv6(src='{ll_b}', dst='ff02::1')/ICMPv6EchoRequest(), iface='eth0')",
            mac_of(&b)
        ),
    );
    assert_eq!(seen.join().unwrap(), 0, "a spoofed link-local source reached pod b");
    assert_eq!(stats_field(&net, ip_a, "drop_spoofed") - before, 3, "{:?}", net.stats_of(ip_a));
    // The pod's own link-local address is registered: the maps show it.
    assert!(net.dump("endpoints").iter().any(|e| e["ip"] == json!(ll_a.to_string())), "{:?}", net.dump("endpoints"));
    // DEL takes it away with the pod.
    ok(net.del_pod(&a));
    assert!(!net.dump("endpoints").iter().any(|e| e["ip"] == json!(ll_a.to_string())), "DEL left the link-local entry");
    assert!(!net
        .dump("ipcache")
        .iter()
        .any(|e| e["prefix"].as_str().is_some_and(|p| p.starts_with(&ll_a.to_string()))));
}

#[test]
fn neighbour_advertisements_speak_only_for_the_pods_own_addresses() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("in8na", 198, json!({}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let gw_ll = link_local(None, &net.bridge);
    let (ll_a, ll_b, mac_a) = (link_local(Some(&a.netns), "eth0"), link_local(Some(&b.netns), "eth0"), mac_of(&a));
    let before = stats_field(&net, a.ip(4), "drop_spoofed");
    let targets = format!("('{gw_ll}', '{ll_b}', '{ll_a}')");
    let seen = capture(&b, &format!("ICMPv6ND_NA in p and p[ICMPv6ND_NA].tgt in {targets}"), 3);
    scapy(
        &a,
        &format!(
            "for tgt in {targets}:\n    \
             sendp(Ether(src='{mac_a}', dst='33:33:00:00:00:01')/IPv6(src='{ll_a}', dst='ff02::1', hlim=255)\
             /ICMPv6ND_NA(tgt=tgt, R=0, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{mac_a}'), iface='eth0')"
        ),
    );
    // Only the advertisement of a's own link-local address arrives.
    assert_eq!(seen.join().unwrap(), 1, "a forged NA reached pod b (or a's own did not)");
    assert_eq!(stats_field(&net, a.ip(4), "drop_spoofed") - before, 2, "{:?}", net.stats_of(a.ip(4)));
    let neigh = netns_sh(&b.netns, "ip -6 neigh show");
    assert!(
        !neigh.contains(&format!("{gw_ll} dev eth0 lladdr {mac_a}")),
        "b's cache took a's MAC for the gateway: {neigh}"
    );
}

#[test]
fn network_policies_hold_for_link_local_addresses() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("in8llsync", 199, json!({}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let pod = |name: &str, ip: IpAddr| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
               "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running", "podIP": ip.to_string()}})
    };
    // b takes no ingress at all.
    let objects = json!({"kind": "List", "items": [
        pod("a", a.ip(4)), pod("b", b.ip(4)),
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "b-closed", "namespace": "default"},
         "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]}},
    ]});
    let file = net.data_dir.join("in8-objects.json");
    std::fs::create_dir_all(&net.data_dir).unwrap();
    std::fs::write(&file, objects.to_string()).unwrap();
    assert!(tcp_link_local(&net, Some(&b), &a, 80), "before the sync");
    ok(net.cli(&["policy", "sync", "-f", file.to_str().unwrap()]));
    assert!(!tcp_reachable(Some(&b), Some(&a), SocketAddr::new(b.ip(4), 80)), "b's address is isolated");
    assert!(!tcp_link_local(&net, Some(&b), &a, 80), "b's link-local address escaped its NetworkPolicy");
    assert!(tcp_link_local(&net, Some(&a), &b, 80), "a is not isolated, over link-local either");
    // Pinging a group is no way into an isolated pod.
    let seen = capture(&b, "ICMPv6EchoRequest in p and p[IPv6].dst == 'ff02::1'", 3);
    netns_sh(&a.netns, "ping -c 2 -i 0.2 -W 1 ff02::1%eth0 >/dev/null 2>&1; true");
    assert_eq!(seen.join().unwrap(), 0, "an all-nodes ping reached the isolated pod");
}

/// What a pod may legitimately put on the segment under default deny with
/// no rule: honest ARP and IPv6 neighbour discovery / listener reports.
/// As a Python predicate over a captured frame `p` from the pod's MAC.
fn legitimate(mac: &str, ip: IpAddr) -> String {
    format!(
        "(ARP in p and p[ARP].hwsrc == '{mac}' and p[ARP].psrc in ('{ip}', '0.0.0.0')) or \
         (IPv6 in p and ICMPv6ND_NS in p or IPv6 in p and ICMPv6ND_NA in p or IPv6 in p and ICMPv6ND_RS in p or \
          IPv6 in p and p[IPv6].nh in (0, 58) and p[IPv6].dst.startswith('ff02'))"
    )
}

/// Random and truncated frames of every ethertype from one pod: nothing
/// reaches the other pod or the node that a well-formed, policy-checked
/// frame could not carry, and the datapath counts what it refused.
#[test]
fn fuzzed_frames_from_a_pod_get_nothing_past_the_datapath() {
    if !privileged() {
        return;
    }
    let mut net = dual_stack("secfuzz", 94, json!({"policy": {"defaultAction": "deny"}}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let (mac_a, mac_b, ip_a, ip_b) = (mac_of(&a), mac_of(&b), a.ip(4), b.ip(4));
    let bridge_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", net.bridge)).unwrap();
    let from_a = format!("p.src == '{mac_a}' and not ({})", legitimate(&mac_a, ip_a));
    let at_b = capture(&b, &from_a, 6);
    let at_node = capture_on(None, &net.bridge, &from_a, 6);
    let before: u64 = ["drop_parse", "drop_spoofed", "drop_policy"].iter().map(|f| stats_field(&net, ip_a, f)).sum();
    let sent: u64 = scapy(
        &a,
        &format!(
            "import random\n\
             random.seed(8)\n\
             macs = ['{mac_b}', '{}', 'ff:ff:ff:ff:ff:ff', '33:33:00:00:00:01']\n\
             types = [0x0800, 0x86dd, 0x0806, 0x8100, 0x88a8, 0x9100, 0x88cc, 0x8847, 0x0842, 0x22f0]\n\
             def noise(n): return bytes(random.getrandbits(8) for _ in range(n))\n\
             def shaped(t, dst):\n\
             \x20   e = Ether(src='{mac_a}', dst=dst)\n\
             \x20   if t == 0x0800:\n\
             \x20       return e/IP(src=random.choice(['{ip_a}', '{ip_b}', '10.9.9.9']), dst=random.choice(['{ip_b}', '10.251.94.1', '255.255.255.255']), \
                             proto=random.choice([1, 6, 17, 4, 47, 132, random.randint(0, 255)]), ihl=random.choice([5, 5, 5, 6, 15, 2]), \
                             frag=random.choice([0, 0, 1, 100]), flags=random.choice([0, 1, 2]))/Raw(noise(random.randint(0, 60)))\n\
             \x20   if t == 0x86dd:\n\
             \x20       return e/IPv6(src=random.choice(['{}', '::', 'fe80::1', 'fd00:251:94::99']), dst=random.choice(['{}', 'ff02::1', 'fe80::1']), \
                               nh=random.choice([0, 6, 17, 43, 44, 58, 60, 59, random.randint(0, 255)]))/Raw(noise(random.randint(0, 80)))\n\
             \x20   if t == 0x0806:\n\
             \x20       return e/ARP(op=random.choice([1, 2]), hwsrc=random.choice(['{mac_a}', '{mac_b}']), \
                              psrc=random.choice(['{ip_a}', '{ip_b}', '10.251.94.1']), pdst='{ip_b}')\n\
             \x20   return e/Raw(struct.pack('!H', t) + noise(random.randint(0, 60)))\n\
             s = conf.L2socket(iface='eth0')\n\
             n = 0\n\
             for i in range(1500):\n\
             \x20   t = random.choice(types)\n\
             \x20   f = bytes(shaped(t, random.choice(macs)))\n\
             \x20   if t in (0x8100, 0x88a8, 0x9100, 0x88cc, 0x8847, 0x0842, 0x22f0):\n\
             \x20       f = f[:12] + struct.pack('!H', t) + f[14:]\n\
             \x20   if random.random() < 0.3:\n\
             \x20       f = f[:random.randint(14, len(f))]\n\
             \x20   s.send(f)\n\
             \x20   n += 1\n\
             print(n)",
            bridge_mac.trim(),
            ll_of(&mac_a),
            ll_of(&mac_b),
        ),
    )
    .parse()
    .unwrap();
    assert_eq!(at_b.join().unwrap(), 0, "a fuzzed frame from pod a reached pod b");
    assert_eq!(at_node.join().unwrap(), 0, "a fuzzed frame from pod a reached the node");
    let refused: u64 =
        ["drop_parse", "drop_spoofed", "drop_policy"].iter().map(|f| stats_field(&net, ip_a, f)).sum::<u64>() - before;
    assert!(refused >= sent / 2, "only {refused} of {sent} fuzzed frames were counted as dropped");
    // The pods still work.
    let ok = net.cli(&["policy", "allow", &ip_a.to_string(), &ip_b.to_string(), "--proto", "icmp"]);
    assert!(ok.status.success());
    assert!(a.ping(ip_b, 2), "pod a cannot reach b after the fuzzing");
}

/// The EUI-64 link-local address of a MAC (what ADD gives a pod).
fn ll_of(mac: &str) -> String {
    let b: Vec<u8> = mac.split(':').map(|x| u8::from_str_radix(x, 16).unwrap()).collect();
    format!("fe80::{:02x}{:02x}:{:02x}ff:fe{:02x}:{:02x}{:02x}", b[0] ^ 2, b[1], b[2], b[3], b[4], b[5])
}
