//! Connection tracking under attack, with real packets from pods: a flood
//! of new flows from one pod neither evicts another pod's established
//! connection nor takes more than its budget (the rest is refused with its
//! own reason), and entries of unanswered flows expire.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PYTHON: &str = "/usr/bin/python3";

fn mac_of(pod: &Pod) -> String {
    pod.result["interfaces"][2]["mac"].as_str().unwrap().to_string()
}

/// Runs a scapy script in `pod`'s netns (scapy's names imported).
fn scapy(pod: &Pod, script: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.netns, PYTHON, "-c"])
        .arg(format!("from scapy.all import *\nconf.verb = 0\n{script}"))
        .stderr(Stdio::piped())
        .output()
        .expect("run python3 (apt-get install python3-scapy)");
    assert!(out.status.success(), "scapy in {}: {}", pod.netns, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn counter(net: &TestNet, ip: IpAddr, field: &str) -> u64 {
    net.stats_of(ip)[field].as_u64().unwrap_or(0)
}

fn allow(net: &TestNet, src: IpAddr, dst: IpAddr, proto: &str) {
    let out = net.cli(&["policy", "allow", &src.to_string(), &dst.to_string(), "--proto", proto]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn monitor(net: &TestNet, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("monitor")
        .args(args)
        .args(["--network", &net.name, "--pin-path"])
        .arg(&net.pin_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until monitor `pid` reads the events (it registers itself).
fn registered(net: &TestNet, pid: u32) {
    let me = net.pin_path.join(&net.name).join("monitors").join(pid.to_string());
    for _ in 0..200 {
        if me.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("monitor not registered in 10 s");
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
    let before = counter(&net, ip_a, "drop_policy");
    // 3000 new UDP flows from a, faster than their entries expire.
    let (mac_a, mac_b) = (mac_of(&a), mac_of(&b));
    scapy(
        &a,
        &format!(
            "e = Ether(src='{mac_a}', dst='{mac_b}')/IP(src='{ip_a}', dst='{ip_b}')\n\
             sendp([e/UDP(sport=1024 + i, dport=9)/Raw(b'x') for i in range(3000)], iface='eth0')"
        ),
    );
    let refused = counter(&net, ip_a, "drop_policy") - before;
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
    assert_eq!(ct["new_max"], 65536, "{ct}");
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
    let before = counter(&net, ip_b, "drop_policy");
    std::thread::sleep(Duration::from_secs(11));
    sock_b.send_to(b"late", from).unwrap();
    assert!(sock_a2.recv_from(&mut buf).is_err(), "the reply of an expired flow passed");
    assert_eq!(counter(&net, ip_b, "drop_policy") - before, 1, "{:?}", net.stats_of(ip_b));
}

#[test]
fn a_flood_of_drops_from_one_pod_leaves_room_for_the_others_events() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("ctevents", 172, json!({}));
    let (a, b, c) = (net.add_pod("a"), net.add_pod("b"), net.add_pod("c"));
    let (mac_a, mac_c, ip_c) = (mac_of(&a), mac_of(&c), c.ip(4));
    let mon = monitor(&net, &["--json", "--count", "40", "--duration", "5"]);
    registered(&net, mon.id());
    // 500 spoofed packets from a: 500 drops.
    let before = counter(&net, a.ip(4), "drop_spoofed");
    scapy(
        &a,
        &format!(
            "sendp([Ether(src='{mac_a}', dst='{mac_c}')/IP(src='10.251.172.%d' % (100 + i % 100), dst='{ip_c}')/ICMP() \
             for i in range(500)], iface='eth0')"
        ),
    );
    assert_eq!(counter(&net, a.ip(4), "drop_spoofed") - before, 500);
    // Then a single one from b.
    let spoofed_by_b = std::net::Ipv4Addr::new(10, 251, 172, 250);
    let dst = match ip_c {
        IpAddr::V4(v) => v,
        _ => unreachable!(),
    };
    b.send_frame(icmp_frame(c.mac(), b.mac(), spoofed_by_b, dst));
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
