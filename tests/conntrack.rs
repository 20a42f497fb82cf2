//! Connection tracking under attack, with real packets from pods: a flood
//! of new flows from one pod neither evicts another pod's established
//! connection nor takes more than its budget (the rest is refused with its
//! own reason), and entries of unanswered flows expire.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::frames::*;
use common::*;
use serde_json::{json, Value};

fn allow(net: &TestNet, src: IpAddr, dst: IpAddr, proto: &str) {
    let out = net.cli(&["policy", "allow", &src.to_string(), &dst.to_string(), "--proto", proto]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// One round trip on an open connection.
fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> bool {
    let mut buf = vec![0u8; msg.len()];
    stream.write_all(msg).is_ok() && stream.read_exact(&mut buf).is_ok() && buf == msg
}

#[test]
fn a_flood_of_new_flows_is_capped_per_pod_and_spares_established_ones() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("ctflood", 170, json!({"policy": {"defaultAction": "deny"}}));
    let (a, b, c) = (net.add_pod("a"), net.add_pod("b"), net.add_pod("c"));
    let (ip_a, ip_b, ip_c) = (a.ip(4), b.ip(4), c.ip(4));
    allow(&net, ip_a, ip_b, "udp");
    allow(&net, ip_c, ip_b, "tcp");
    // c's established connection to b: an echo server on b.
    let addr = SocketAddr::new(ip_b, 80);
    let listener = b.run_in(move || TcpListener::bind(addr).expect("bind"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut stream = c.run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect"));
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert!(round_trip(&mut stream, b"before"), "the established connection did not work");

    // Something listens on the flood's port: b answers no ICMP errors.
    let _sink = b.run_in(move || UdpSocket::bind(SocketAddr::new(ip_b, 9)).unwrap());
    let mon = monitor(&net, &["--json", "--count", "1", "--duration", "60"]);
    registered(&net, mon.id());
    let before = stats_field(&net, ip_a, "drop_policy");
    // 3000 new UDP flows from a, faster than their entries expire.
    let (mac_a, mac_b) = (mac_of(&a), mac_of(&b));
    scapy(
        &a,
        &format!(
            "e = Ether(src='{mac_a}', dst='{mac_b}')/IP(src='{ip_a}', dst='{ip_b}')\n\
             sendp([e/UDP(sport=1024 + i, dport=9)/Raw(b'x') for i in range(3000)], iface='eth0')"
        ),
    );
    let refused = stats_field(&net, ip_a, "drop_policy") - before;
    // At least all beyond the budget (CT_NEW_PER_POD, 2048 per window).
    assert!(refused >= 3000 - 2048, "{refused} of a's 3000 new flows refused");
    let out = mon.wait_with_output().unwrap();
    let events = json_lines(&out.stdout);
    assert_eq!(events.len(), 1, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(events[0]["reason"], "conntrack-full", "{events:?}");
    assert_eq!(events[0]["src"], json!(ip_a), "{events:?}");

    // What a tracks stays within its budget; c's connection still works.
    let new_of_a = net.dump("conntrack").iter().filter(|e| e["src"] == json!(ip_a)).count();
    assert!(new_of_a <= 2048, "pod a holds {new_of_a} tracked flows");
    assert!(round_trip(&mut stream, b"after the flood"), "the flood broke c's established connection");
    // Another pod's new flows are not refused for a's.
    assert_eq!(tcp_echo(&b, &c, 8080), "pong!", "c could not open a new connection");
    let status: Value = serde_json::from_slice(&net.cli(&["status", "--json"]).stdout).unwrap();
    let ct = &status["networks"][0]["policy"]["conntrack"];
    assert!(ct["new"].as_u64().unwrap() >= 2048, "{ct}");
    // The default conntrack.maxEntries (32768), a quarter of it for new flows.
    assert_eq!(ct["established_max"], 32768, "{ct}");
    assert_eq!(ct["new_max"], 8192, "{ct}");
    assert!(ct["established"].as_u64().unwrap() >= 1, "{ct}");
    drop(stream);
    server.join().unwrap();
}

#[test]
fn an_unanswered_flow_expires_and_its_late_reply_is_dropped() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("ctexpire", 171, json!({"policy": {"defaultAction": "deny"}}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let (ip_a, ip_b) = (a.ip(4), b.ip(4));
    allow(&net, ip_a, ip_b, "udp");
    let sock_a = a.run_in(move || UdpSocket::bind(SocketAddr::new(ip_a, 4000)).unwrap());
    let sock_b = b.run_in(move || UdpSocket::bind(SocketAddr::new(ip_b, 5000)).unwrap());
    sock_a.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut buf = [0u8; 16];
    let mut exchange = |reply_after: Duration| {
        sock_a.send_to(b"ask", SocketAddr::new(ip_b, 5000)).unwrap();
        let (_, from) = sock_b.recv_from(&mut buf).unwrap();
        std::thread::sleep(reply_after);
        sock_b.send_to(b"answer", from).unwrap();
        sock_a.recv_from(&mut buf).is_ok()
    };
    // Answered at once: the reply passes (and the flow is established).
    assert!(exchange(Duration::ZERO), "a prompt reply was dropped");
    let tracked = net.dump("conntrack");
    assert!(tracked.iter().any(|e| e["dport"] == 5000 && e["established"] == true), "{tracked:?}");
    // A new flow, answered only after its unestablished entry expired
    // (CT_TIMEOUT_NEW, 10 s).
    let sock_a2 = a.run_in(move || UdpSocket::bind(SocketAddr::new(ip_a, 4001)).unwrap());
    sock_a2.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    sock_a2.send_to(b"ask", SocketAddr::new(ip_b, 5000)).unwrap();
    let (_, from) = sock_b.recv_from(&mut buf).unwrap();
    assert_eq!(from.port(), 4001);
    let before = stats_field(&net, ip_b, "drop_policy");
    std::thread::sleep(Duration::from_secs(11));
    sock_b.send_to(b"late", from).unwrap();
    assert!(sock_a2.recv_from(&mut buf).is_err(), "the reply of an expired flow passed");
    assert_eq!(stats_field(&net, ip_b, "drop_policy") - before, 1, "{:?}", net.stats_of(ip_b));
}

#[test]
fn a_flood_of_drops_from_one_pod_leaves_room_for_the_others_events() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("ctevents", 172, json!({}));
    let (a, b, c) = (net.add_pod("a"), net.add_pod("b"), net.add_pod("c"));
    let (mac_a, mac_c, ip_c) = (mac_of(&a), mac_of(&c), c.ip(4));
    // Stopped by SIGINT once b's frame is out (a loaded machine may take
    // seconds to send a's 500): a fixed duration could end before it.
    let mon = monitor(&net, &["--json", "--count", "40", "--duration", "120"]);
    registered(&net, mon.id());
    // 500 spoofed packets from a: 500 drops.
    let before = stats_field(&net, a.ip(4), "drop_spoofed");
    scapy(
        &a,
        &format!(
            "sendp([Ether(src='{mac_a}', dst='{mac_c}')/IP(src='10.251.172.%d' % (100 + i % 100), dst='{ip_c}')/ICMP() \
             for i in range(500)], iface='eth0')"
        ),
    );
    assert_eq!(stats_field(&net, a.ip(4), "drop_spoofed") - before, 500);
    // Then a single one from b.
    let spoofed_by_b = std::net::Ipv4Addr::new(10, 251, 172, 250);
    let dst = match ip_c {
        IpAddr::V4(v) => v,
        _ => unreachable!(),
    };
    b.send_frame(icmp_frame(c.mac(), b.mac(), spoofed_by_b, dst));
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill").args(["-INT", &mon.id().to_string()]).status();
    let out = mon.wait_with_output().unwrap();
    let events = json_lines(&out.stdout);
    let of_a = events.iter().filter(|e| e["pod"].as_str().unwrap_or("").starts_with(&format!("{}(", a.ip(4)))).count();
    let of_b: Vec<&Value> = events.iter().filter(|e| e["src"] == json!(spoofed_by_b)).collect();
    assert_eq!(of_b.len(), 1, "b's drop is missing among {} events", events.len());
    // EVENT_BURST (10) at once, then EVENT_RATE_PER_SEC (5) a second.
    assert!((1..40).contains(&of_a), "{of_a} events of a");
    let lost = of_b[0]["lost"].as_u64().unwrap();
    assert!(lost >= 500 - of_a as u64, "b's event reports {lost} lost, a had {of_a} of 500 shown");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("events lost"), "the monitor did not report the loss: {stderr}");
}

/// Captures on `pod`'s eth0 for `secs` seconds; for each Python
/// expression of `p` in `filters`, how many frames matched.
fn capture(pod: &Pod, filters: &[&str], secs: u32) -> std::thread::JoinHandle<Vec<u64>> {
    let counts: Vec<String> = filters.iter().map(|f| format!("len([p for p in pk if {f}])")).collect();
    let script = format!(
        "from scapy.all import *\nconf.verb = 0\n\
         pk = sniff(iface='eth0', timeout={secs}, started_callback=lambda: print('up', flush=True))\nprint({})",
        counts.join(", ")
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &pod.netns, PYTHON, "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start capture");
    // The sniffer says when it is up (frames sent before would be missed).
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert_eq!(first.trim(), "up", "the sniffer did not start");
    std::thread::spawn(move || {
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        let _ = child.wait();
        text.split_whitespace().map(|n| n.parse().unwrap_or_else(|_| panic!("capture: {text:?}"))).collect()
    })
}

#[test]
fn fragments_of_an_allowed_datagram_pass_and_only_those() {
    if !privileged() {
        return;
    }
    let mut net = dual_stack("ctfrag", 173, json!({"policy": {"defaultAction": "deny"}}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    for family in [4, 6] {
        allow(&net, a.ip(family), b.ip(family), "udp");
        let (ip_a, ip_b) = (a.ip(family), b.ip(family));
        let sock_b = b.run_in(move || UdpSocket::bind(SocketAddr::new(ip_b, 5000)).unwrap());
        sock_b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // 4000 bytes over a 1500-byte MTU: three fragments.
        let sent = a.run_in(move || {
            let s = UdpSocket::bind(SocketAddr::new(ip_a, 0)).unwrap();
            s.send_to(&[7u8; 4000], SocketAddr::new(ip_b, 5000)).unwrap()
        });
        assert_eq!(sent, 4000);
        let mut buf = [0u8; 8192];
        let got = sock_b.recv_from(&mut buf).map(|(n, _)| n);
        assert_eq!(got.ok(), Some(4000), "IPv{family}: the fragmented datagram did not arrive whole");
    }
    // A later fragment of no allowed datagram is dropped.
    let (mac_a, mac_b) = (mac_of(&a), mac_of(&b));
    let seen = capture(
        &b,
        &["IP in p and p[IP].id == 4242", "IPv6ExtHdrFragment in p and p[IPv6ExtHdrFragment].id == 4242"],
        3,
    );
    let before = stats_field(&net, a.ip(4), "drop_policy");
    scapy(
        &a,
        &format!(
            "e = Ether(src='{mac_a}', dst='{mac_b}')\n\
             sendp(e/IP(src='{}', dst='{}', id=4242, frag=100, proto=17)/Raw(b'x' * 64), iface='eth0')\n\
             sendp(e/IPv6(src='{}', dst='{}')/IPv6ExtHdrFragment(id=4242, offset=100, nh=17)/Raw(b'x' * 64), iface='eth0')",
            a.ip(4),
            b.ip(4),
            a.ip(6),
            b.ip(6)
        ),
    );
    assert_eq!(seen.join().unwrap(), vec![0, 0], "a stray later fragment reached b");
    assert_eq!(stats_field(&net, a.ip(4), "drop_policy") - before, 2, "{:?}", net.stats_of(a.ip(4)));
}

#[test]
fn icmp_errors_of_tracked_flows_pass_as_related() {
    if !privileged() {
        return;
    }
    let mut net = dual_stack("cticmp", 174, json!({"policy": {"defaultAction": "deny"}}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let mut sockets = Vec::new();
    for family in [4, 6] {
        let (ip_a, ip_b) = (a.ip(family), b.ip(family));
        let out =
            net.cli(&["policy", "allow", &ip_a.to_string(), &ip_b.to_string(), "--proto", "udp", "--port", "5000"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // The tracked flow a:4000 -> b:5000 (b listens: no error of its own).
        sockets.push(b.run_in(move || UdpSocket::bind(SocketAddr::new(ip_b, 5000)).unwrap()));
        let s = a.run_in(move || UdpSocket::bind(SocketAddr::new(ip_a, 4000)).unwrap());
        s.send_to(b"hello", SocketAddr::new(ip_b, 5000)).unwrap();
        sockets.push(s);
    }
    let (mac_a, mac_b) = (mac_of(&a), mac_of(&b));
    let inner = |port: u16| format!("UDPerror in p and p[UDPerror].dport == {port}");
    let seen = capture(
        &a,
        &[
            &format!("ICMP in p and p[ICMP].type == 3 and {}", inner(5000)),
            &format!("ICMP in p and {}", inner(5001)),
            &format!("ICMPv6PacketTooBig in p and {}", inner(5000)),
            &format!("ICMPv6PacketTooBig in p and {}", inner(5001)),
        ],
        3,
    );
    let before = stats_field(&net, b.ip(4), "drop_policy");
    // From b: fragmentation needed / packet too big about a's datagram,
    // then the same about a flow that was never allowed (port 5001).
    let (a4, b4, a6, b6) = (a.ip(4), b.ip(4), a.ip(6), b.ip(6));
    scapy(
        &b,
        &format!(
            "e = Ether(src='{mac_b}', dst='{mac_a}')\n\
             for port in (5000, 5001):\n\
             \x20   sendp(e/IP(src='{b4}', dst='{a4}')/ICMP(type=3, code=4, nexthopmtu=1400)/IP(src='{a4}', dst='{b4}')/UDP(sport=4000, dport=port)/Raw(b'hello'), iface='eth0')\n\
             \x20   sendp(e/IPv6(src='{b6}', dst='{a6}')/ICMPv6PacketTooBig(mtu=1280)/IPv6(src='{a6}', dst='{b6}')/UDP(sport=4000, dport=port)/Raw(b'hello'), iface='eth0')"
        ),
    );
    assert_eq!(
        seen.join().unwrap(),
        vec![1, 0, 1, 0],
        "ICMP errors seen by a: related 4, unrelated 4, related 6, unrelated 6"
    );
    assert_eq!(stats_field(&net, b.ip(4), "drop_policy") - before, 2, "{:?}", net.stats_of(b.ip(4)));
}
