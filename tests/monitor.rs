//! `ebpfcni monitor` as operators use it: exactly `--count` events, none
//! older than the monitor, a second monitor refused clearly (the ring
//! buffer has one reader), and flow tracing that ends with the monitor
//! however it ends: SIGKILL, SIGHUP, a closed pipe.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use common::frames::*;
use common::*;
use serde_json::{json, Value};

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v) => v,
        _ => panic!("not IPv4"),
    }
}

fn tracing(net: &TestNet) -> bool {
    net.dump("settings")[0]["trace_flows"] == true
}

/// A spoofed frame from `a` with source 10.251.<id>.<host>: one drop event.
fn spoof(a: &Pod, b: &Pod, id: u8, host: u8) {
    a.send_frame(icmp_frame(b.mac(), a.mac(), Ipv4Addr::new(10, 251, id, host), v4(b.ip(4))));
}

#[test]
fn count_is_exact_and_old_events_are_skipped() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opmoncount", 117, json!({}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    // Drops queued while nobody watches.
    for host in 200..203 {
        spoof(&a, &b, 117, host);
    }
    let m = monitor(&net, &["--json", "--count", "2", "--duration", "30"]);
    registered(&net, m.id());
    for host in 210..215 {
        spoof(&a, &b, 117, host);
    }
    let out = m.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 2, "--count 2 prints two: {text}");
    for e in &events {
        let host: u8 = e["src"].as_str().unwrap().rsplit('.').next().unwrap().parse().unwrap();
        assert!((210..215).contains(&host), "an event older than the monitor: {e}");
    }
}

#[test]
fn a_second_monitor_is_refused_and_the_first_keeps_every_event() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opmontwo", 118, json!({}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    let first = monitor(&net, &["--json", "--flows", "--count", "6", "--duration", "30"]);
    registered(&net, first.id());
    let second = monitor(&net, &["--json", "--flows", "--duration", "30"]).wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let why = String::from_utf8_lossy(&second.stderr).into_owned();
    assert!(why.contains(&format!("another monitor (pid {})", first.id())), "{why}");
    assert!(tracing(&net), "the refused monitor left the first one's tracing alone");
    for host in 220..226 {
        spoof(&a, &b, 118, host);
    }
    let out = first.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let drops = text.lines().filter(|l| l.contains("spoofed-ip")).count();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(drops >= 1, "{text}");
    assert!(!tracing(&net), "tracing ends with the last monitor");
}

#[test]
fn flow_tracing_ends_however_the_monitor_dies() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("opmonflows", 119, json!({}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    for signal in [nix::sys::signal::Signal::SIGKILL, nix::sys::signal::Signal::SIGHUP] {
        let mut m = monitor(&net, &["--flows", "--duration", "60"]);
        registered(&net, m.id());
        assert!(tracing(&net), "--flows turns tracing on");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.id() as i32), signal).unwrap();
        let _ = m.wait();
        wait_for(&format!("tracing off after {signal}"), || !tracing(&net));
    }
    // A closed pipe: `monitor --flows | head -1` while traffic flows.
    let mut pipeline = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{BIN} monitor --flows --duration 60 --network {} --pin-path {} | head -1",
            net.name,
            net.pin_path.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("--flows monitor started", || tracing(&net));
    for _ in 0..50 {
        if pipeline.try_wait().unwrap().is_some() {
            break;
        }
        assert!(a.ping(b.ip(4), 1));
    }
    let out = pipeline.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    wait_for("tracing off after a closed pipe", || !tracing(&net));
    // Nothing is traced now: a ping leaves no flow event behind (what the
    // dead monitor left unread is older).
    let off = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let off_ns = off.tv_sec() as u64 * 1_000_000_000 + off.tv_nsec() as u64;
    assert!(a.ping(b.ip(4), 1));
    let dump = net.cli(&["maps", "dump", "events", "--json"]);
    let queued: Vec<Value> = serde_json::from_slice(&ok(dump).stdout).unwrap();
    let traced: Vec<&Value> =
        queued.iter().filter(|e| e["ts_ns"].as_u64().unwrap() > off_ns && e["verdict"] != "dropped").collect();
    assert!(traced.is_empty(), "flows traced after the monitor died: {traced:?}");
}

/// Issue 9: `monitor --flows` turns flow tracing off itself, before it
/// exits, on every way it ends on its own: --count reached, SIGINT,
/// SIGTERM, stdout closed (`| head`), an error writing its output. So the
/// flag is off the moment the process is gone, guard or no guard.
#[test]
fn abi_flows_monitor_turns_tracing_off_on_every_exit_path() {
    if !privileged() {
        return;
    }
    let mut net = TestNet::new("abimon", 251, json!({}));
    let a = net.add_pod("a");
    let b = net.add_pod("b");
    let flows = |stdout: Stdio| {
        Command::new(BIN)
            .args(["monitor", "--flows", "--duration", "60", "--network", &net.name, "--pin-path"])
            .arg(&net.pin_path)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let traffic_until_exit = |m: &mut std::process::Child| {
        for _ in 0..100 {
            if m.try_wait().unwrap().is_some() {
                return;
            }
            assert!(a.ping(b.ip(4), 1));
        }
        panic!("the monitor did not end");
    };

    // --count reached.
    let mut m = monitor(&net, &["--flows", "--count", "2", "--duration", "60"]);
    registered(&net, m.id());
    assert!(tracing(&net), "--flows turns tracing on");
    traffic_until_exit(&mut m);
    let out = m.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(!tracing(&net), "tracing left on after --count");

    // SIGINT and SIGTERM: the monitor ends cleanly.
    for signal in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGTERM] {
        let m = flows(Stdio::piped());
        registered(&net, m.id());
        assert!(tracing(&net));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.id() as i32), signal).unwrap();
        let out = m.wait_with_output().unwrap();
        assert!(out.status.success(), "{signal}: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(!tracing(&net), "tracing left on after {signal}");
    }

    // stdout closed: a pipe whose reader is gone. The first event ends
    // the monitor quietly, as `head` expects, not SIGPIPE.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let mut m = flows(Stdio::from(writer));
    registered(&net, m.id());
    traffic_until_exit(&mut m);
    let out = m.wait_with_output().unwrap();
    assert!(out.status.success(), "closed stdout: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!tracing(&net), "tracing left on after stdout closed");

    // An error: stdout refuses every write (ENOSPC).
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut m = flows(Stdio::from(full));
    registered(&net, m.id());
    traffic_until_exit(&mut m);
    let out = m.wait_with_output().unwrap();
    let why = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "a write error is an error: {why}");
    assert!(why.contains("write events to stdout"), "{why}");
    assert!(!tracing(&net), "tracing left on after an error");
}
