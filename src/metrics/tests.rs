//! The exposition: names, types and labels as the README lists them, the
//! agent's hooks, the watch health, and the HTTP endpoint.

use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

use super::*;
use crate::kube::KindHealth;

fn health() -> Health {
    let kind = |kind, synced| KindHealth {
        kind,
        synced,
        events: 7,
        lists: 2,
        errors: 1,
        last_event: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1000)),
        last_error: None,
    };
    Health {
        synced: false,
        unreachable_since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1234)),
        last_error: Some("down".into()),
        last_error_at: None,
        kinds: vec![kind("Node", true), kind("Pod", false)],
    }
}

#[test]
fn agent_and_watch_metrics() {
    let m = Metrics::new(std::path::Path::new("/nonexistent-k17"));
    let text = m.encode();
    assert!(text.contains("# TYPE ebpfcni_reconciles counter"), "{text}");
    assert!(text.contains("ebpfcni_reconciles_total 0"), "{text}");
    assert!(!text.contains("ebpfcni_watch_up"), "no watch registered yet: {text}");
    assert!(text.ends_with("# EOF\n"));

    m.agent().reconciled(Duration::from_millis(3), true);
    m.agent().reconciled(Duration::from_millis(5), false);
    m.agent().set_peers(3);
    m.agent().watch_health(health);
    let text = m.encode();
    for line in [
        "ebpfcni_reconciles_total 2",
        "ebpfcni_reconcile_errors_total 1",
        "ebpfcni_reconcile_duration_seconds_count 2",
        "ebpfcni_peers 3",
        "ebpfcni_watch_events_total{kind=\"Node\"} 7",
        "ebpfcni_watch_lists_total{kind=\"Pod\"} 2",
        "ebpfcni_watch_errors_total{kind=\"Pod\"} 1",
        "ebpfcni_watch_synced{kind=\"Node\"} 1",
        "ebpfcni_watch_synced{kind=\"Pod\"} 0",
        "ebpfcni_watch_up 0",
        "ebpfcni_watch_unreachable_since_timestamp_seconds 1234.0",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }
    let last = text.lines().find(|l| l.starts_with("ebpfcni_reconcile_last_success_timestamp_seconds ")).unwrap();
    let t: f64 = last.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(t > 1.7e9, "{last}");
    // No pinned network: no datapath samples, and no read errors.
    assert!(text.contains("ebpfcni_datapath_read_errors 0"), "{text}");
}

#[test]
fn served_over_http() {
    let m = Arc::new(Metrics::new(std::path::Path::new("/nonexistent-k17")));
    let server = serve("127.0.0.1:0".parse().unwrap(), m).unwrap();
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let r = get("/metrics");
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(r.contains("Content-Type: application/openmetrics-text"), "{r}");
    assert!(r.contains("ebpfcni_reconciles_total"), "{r}");
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
    let addr = server.local_addr();
    drop(server);
    assert!(std::net::TcpStream::connect(addr).is_err(), "still serving after drop");
}
