//! What an attacker in a pod tries with raw frames (Debian's python3-scapy,
//! the CAP_NET_RAW runtimes give pods) or socket options, asserted on what
//! the other pod and the node actually receive and on the drop counters:
//! frames of other ethertypes and VLAN tags, router advertisements, and
//! IPv6 extension headers in front of the real transport header.

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PYTHON: &str = "/usr/bin/python3";

fn dual_stack(tag: &str, id: u8, extra: Value) -> TestNet {
    let mut conf = json!({
        "subnet": null,
        "ipam": {"ranges": [[{"subnet": format!("10.251.{id}.0/24")}], [{"subnet": format!("fd00:251:{id}::/64")}]]},
    });
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    TestNet::new(tag, id, conf)
}

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

/// Starts capturing on `pod`'s eth0 for `secs` seconds; the count of
/// frames matching the Python expression `lfilter` (of `p`) comes back.
fn capture(pod: &Pod, lfilter: &str, secs: u32) -> std::thread::JoinHandle<u64> {
    let netns = pod.netns.clone();
    let script = format!(
        "from scapy.all import *\nconf.verb = 0\n\
         print(len(sniff(iface='eth0', timeout={secs}, lfilter=lambda p: {lfilter})))"
    );
    let child = Command::new("ip")
        .args(["netns", "exec", &netns, PYTHON, "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start capture");
    std::thread::sleep(Duration::from_millis(800)); // the sniffer is up
    std::thread::spawn(move || {
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("capture count")
    })
}

fn counter(net: &TestNet, ip: IpAddr, field: &str) -> u64 {
    net.stats_of(ip)[field].as_u64().unwrap_or(0)
}

#[test]
fn foreign_ethertypes_and_vlan_tags_are_dropped_and_counted() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("secl2", 91, json!({}));
    let (a, b) = (net.add_pod("a"), net.add_pod("b"));
    let (ip_a, ip_b, mac_a, mac_b) = (a.ip(4), b.ip(4), mac_of(&a), mac_of(&b));
    let before = counter(&net, ip_a, "drop_parse");
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
    assert_eq!(counter(&net, ip_a, "drop_parse") - before, 4, "{:?}", net.stats_of(ip_a));
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
    let before = counter(&net, a.ip(4), "drop_spoofed");
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
    assert_eq!(counter(&net, a.ip(4), "drop_spoofed") - before, 4, "{:?}", net.stats_of(a.ip(4)));
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
    let before = counter(&net, a.ip(4), "drop_policy");
    assert!(!tcp6_with_dstopts(&b, &a, 81), "a denied port was reached behind a destination options header");
    assert!(counter(&net, a.ip(4), "drop_policy") > before, "the refused SYN was not counted as a policy drop");
}
