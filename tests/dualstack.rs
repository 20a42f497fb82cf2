//! IPv6 and dual stack: one v4 and one v6 address per pod, both families
//! redirected pod to pod, neighbour discovery working through the bridge.

mod common;

use common::*;
use serde_json::json;

#[test]
fn dual_stack_pods_talk_over_both_families() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new(
        "dual",
        51,
        json!({
            "subnet": null,
            "ipam": {
                "ranges": [
                    [{"subnet": "10.251.51.0/24"}],
                    [{"subnet": "fd00:251:51::/64", "rangeStart": "fd00:251:51::100", "rangeEnd": "fd00:251:51::1ff"}]
                ],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
            }
        }),
    );
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    assert_eq!(a.result["ips"].as_array().unwrap().len(), 2, "{}", a.result);
    assert_eq!(a.ip(6).to_string(), "fd00:251:51::100");
    assert_eq!(b.ip(6).to_string(), "fd00:251:51::101");
    let routes = netns_sh(&a.netns, "ip -6 route show default");
    assert!(routes.contains("via fd00:251:51::1"), "{routes}");

    let eps = net.dump("endpoints");
    assert_eq!(eps.len(), 6, "one entry per address, link-local ones included: {eps:?}");

    assert!(a.ping(b.ip(6), 3), "a -> b over IPv6");
    assert!(b.ping(a.ip(6), 3), "b -> a over IPv6");
    assert!(a.ping(b.ip(4), 3), "a -> b over IPv4");
    assert!(a.ping("fd00:251:51::1".parse().unwrap(), 2), "a -> IPv6 gateway");
    // Neighbour discovery resolved b's address to b's MAC.
    let neigh = netns_sh(&a.netns, &format!("ip -6 neigh show {}", b.ip(6)));
    let b_mac = netns_sh(&b.netns, "cat /sys/class/net/eth0/address");
    assert!(neigh.contains(b_mac.trim()), "neighbour entry {neigh:?} lacks {b_mac}");

    let before = net.stats_of(a.ip(6))["redirected"].as_u64().unwrap_or(0);
    assert!(a.ping(b.ip(6), 10));
    let after = net.stats_of(a.ip(6))["redirected"].as_u64().unwrap();
    assert!(after >= before + 10, "IPv6 packets were not redirected: {before} -> {after}");
    assert_eq!(tcp_echo_v6(&b, &a), "pong!");

    // A neighbour advertisement claiming b's IPv6 address is dropped and
    // counted; one for a's own address passes.
    let v6 = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v) => v,
        _ => unreachable!(),
    };
    let spoofed = |net: &TestNet| net.stats_of(a.ip(4))["drop_spoofed"].as_u64().unwrap_or(0);
    let base = spoofed(&net);
    a.send_frame(neighbour_advert_frame(a.mac(), v6(b.ip(6))));
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(spoofed(&net), base + 1, "a forged neighbour advertisement passed");
    a.send_frame(neighbour_advert_frame(a.mac(), v6(a.ip(6))));
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(spoofed(&net), base + 1, "an honest neighbour advertisement was dropped");
    assert!(a.ping(b.ip(6), 2));

    ok(net.del_pod(&a));
    assert_eq!(net.leased_endpoints().len(), 2);
    assert_eq!(net.dump("endpoints").len(), 3, "b's link-local entry stays, a's goes");
    assert_eq!(net.lease_files().len(), 2);
}

fn tcp_echo_v6(server: &Pod, client: &Pod) -> String {
    tcp_echo_on(server, client, server.ip(6), 8086)
}
