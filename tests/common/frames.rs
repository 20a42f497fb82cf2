//! Frames from pods and what others capture (Debian's python3-scapy, run
//! inside a pod's netns), and the monitor as a test starts it.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::{Pod, TestNet, BIN};

/// Debian's python3, which has scapy (a pyenv one first on PATH may not).
pub const PYTHON: &str = "/usr/bin/python3";

pub fn dual_stack(tag: &str, id: u8, extra: Value) -> TestNet {
    let mut conf = json!({
        "subnet": null,
        "ipam": {"ranges": [[{"subnet": format!("10.251.{id}.0/24")}], [{"subnet": format!("fd00:251:{id}::/64")}]]},
    });
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    TestNet::new(tag, id, conf)
}

pub fn mac_of(pod: &Pod) -> String {
    pod.result["interfaces"][2]["mac"].as_str().unwrap().to_string()
}

/// Runs a scapy script in `pod`'s netns (scapy's names imported).
pub fn scapy(pod: &Pod, script: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.netns, PYTHON, "-c"])
        .arg(format!("from scapy.all import *\nconf.verb = 0\n{script}"))
        .stderr(Stdio::piped())
        .output()
        .expect("run python3 (apt-get install python3-scapy)");
    assert!(out.status.success(), "scapy in {}: {}", pod.netns, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Captures on `iface` of a pod's netns (or the node's own: None) for
/// `secs` seconds; the count of frames matching the Python expression
/// `lfilter` (of `p`) comes back.
pub fn capture_on(netns: Option<&str>, iface: &str, lfilter: &str, secs: u32) -> std::thread::JoinHandle<u64> {
    // The sniffer says when it is up (a loaded machine takes seconds to
    // import scapy): frames sent before would be missed.
    let script = format!(
        "from scapy.all import *\nconf.verb = 0\n\
         n = len(sniff(iface='{iface}', timeout={secs}, lfilter=lambda p: {lfilter}, \
                       started_callback=lambda: print('up', flush=True)))\n\
         print(n)"
    );
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, PYTHON]);
            c
        }
        None => Command::new(PYTHON),
    };
    let mut child = cmd.args(["-c", &script]).stdout(Stdio::piped()).spawn().expect("start capture");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().and_then(Result::ok);
    assert_eq!(first.as_deref(), Some("up"), "the sniffer did not start");
    std::thread::spawn(move || {
        let count = lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = child.wait();
        count.trim().parse().expect("capture count")
    })
}

/// One field of the stats of a pod address (0 when it has none).
pub fn stats_field(net: &TestNet, ip: IpAddr, field: &str) -> u64 {
    net.stats_of(ip)[field].as_u64().unwrap_or(0)
}

/// Polls what a test cannot be notified of, up to 10 s.
pub fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not reached in 10 s");
}

pub fn monitor(net: &TestNet, args: &[&str]) -> Child {
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
pub fn registered(net: &TestNet, pid: u32) {
    let me = net.pin_path.join(&net.name).join("monitors").join(pid.to_string());
    wait_for("monitor registered", || me.exists());
}
