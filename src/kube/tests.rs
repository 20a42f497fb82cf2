//! The watches against the fake API server of tests/common/fakeapi.rs:
//! changes show up, an outage keeps the last state and reports since
//! when, a cut watch resumes from its resourceVersion, and 410 relists.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

#[allow(dead_code)]
#[path = "../../tests/common/fakeapi.rs"]
mod fakeapi;

use fakeapi::FakeApi;

struct Fixture {
    api: FakeApi,
    dir: std::path::PathBuf,
    watch: ClusterWatch,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(tag: &str) -> Fixture {
    let api = FakeApi::start();
    api.apply(fakeapi::node("k17-a", &["10.244.1.0/24"], "192.0.2.11"));
    api.apply(fakeapi::namespace("k17", json!({"team": "a"})));
    api.apply(fakeapi::pod("k17", "web", json!({"app": "web"}), "10.244.1.5", "k17-a", &[("http", "TCP", 80)]));
    api.apply(fakeapi::network_policy("k17", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress"]})));
    let dir = std::env::temp_dir().join(format!("ebpfcni-k17-watch-{tag}-{}", std::process::id()));
    let watch = ClusterWatch::start(Some(&api.kubeconfig(&dir))).expect("start the watches");
    assert!(watch.wait_synced(Duration::from_secs(20)), "never synced: {:?}", watch.health());
    Fixture { api, dir, watch }
}

/// Waits (up to `secs`) until `ok` holds for the watch.
fn until(watch: &ClusterWatch, secs: u64, what: &str, ok: impl Fn(&ClusterWatch) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = watch.generation();
    while !ok(watch) {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s; health {:?}", watch.health());
        seen = watch.wait_change(seen, Duration::from_millis(100));
    }
}

fn pod_labels(s: &Snapshot, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
    s.pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .map(|p| p.metadata.labels.clone().unwrap_or_default())
}

fn node_names(s: &Snapshot) -> Vec<String> {
    s.nodes.iter().filter_map(|n| n.metadata.name.clone()).collect()
}

#[test]
fn changes_show_up() {
    let f = fixture("changes");
    let s = f.watch.snapshot();
    assert_eq!(node_names(&s), ["k17-a"]);
    assert_eq!(s.pods.len(), 1);
    assert_eq!(s.namespaces.len(), 1);
    assert_eq!(s.network_policies.len(), 1);
    let h = f.watch.health();
    assert!(h.synced && h.unreachable_since.is_none(), "{h:?}");
    assert!(h.kinds.iter().all(|k| k.lists == 1), "{h:?}");

    // Added, modified, deleted: each shows up, and bumps the generation.
    let before = f.watch.generation();
    f.api.apply(fakeapi::node("k17-b", &["10.244.2.0/24"], "192.0.2.12"));
    until(&f.watch, 5, "node added", |w| node_names(&w.snapshot()) == ["k17-a", "k17-b"]);
    assert!(f.watch.generation() > before);
    f.api.apply(fakeapi::pod("k17", "web", json!({"app": "web", "tier": "front"}), "10.244.1.5", "k17-a", &[]));
    until(&f.watch, 5, "pod relabelled", |w| {
        pod_labels(&w.snapshot(), "web").is_some_and(|l| l.get("tier").is_some_and(|v| v == "front"))
    });
    f.api.delete("NetworkPolicy", "k17", "deny");
    until(&f.watch, 5, "policy deleted", |w| w.snapshot().network_policies.is_empty());
    f.api.delete("Node", "", "k17-a");
    until(&f.watch, 5, "node deleted", |w| node_names(&w.snapshot()) == ["k17-b"]);

    // The NodeList and the policy input follow.
    let list = node_list(&f.watch.snapshot().nodes);
    assert_eq!(list["items"][0]["spec"]["podCIDRs"], json!(["10.244.2.0/24"]));
    assert_eq!(list["items"][0]["status"]["addresses"][0]["address"], "192.0.2.12");
    let input = policy_input(&f.watch.snapshot());
    assert_eq!(input["items"].as_array().unwrap().len(), 2); // the namespace and the pod
                                                             // The watches asked for bookmarks.
    let watches: Vec<String> = f.api.requests().into_iter().filter(|r| r.contains("watch=true")).collect();
    assert!(watches.len() >= 4 && watches.iter().all(|r| r.contains("allowWatchBookmarks=true")), "{watches:#?}");
}

#[test]
fn outage_keeps_the_last_state_then_resyncs() {
    let f = fixture("outage");
    let lists_before: Vec<u64> = f.watch.health().kinds.iter().map(|k| k.lists).collect();
    let before = f.watch.snapshot();

    f.api.down();
    let down_at = SystemTime::now();
    until(&f.watch, 10, "outage reported", |w| w.health().unreachable_since.is_some());
    let h = f.watch.health();
    assert!(h.unreachable_since.unwrap() >= down_at - Duration::from_secs(1), "{h:?}");
    assert!(h.last_error.is_some(), "{h:?}");
    // Meanwhile the cluster changes; the watch keeps what it knew.
    f.api.apply(fakeapi::pod("k17", "web", json!({"app": "moved"}), "10.244.1.5", "k17-a", &[]));
    f.api.apply(fakeapi::node("k17-b", &["10.244.2.0/24"], "192.0.2.12"));
    std::thread::sleep(Duration::from_secs(2));
    let during = f.watch.snapshot();
    assert_eq!(node_names(&during), node_names(&before));
    assert_eq!(pod_labels(&during, "web"), pod_labels(&before, "web"));
    assert_eq!(during.network_policies.len(), 1, "fail static: the policy stays");
    assert!(f.watch.health().unreachable_since.is_some());

    // Back: the watches resume from their resourceVersion (no relist:
    // the history since is still there) and catch up.
    f.api.up();
    until(&f.watch, 40, "resynced after the outage", |w| {
        let s = w.snapshot();
        node_names(&s) == ["k17-a", "k17-b"]
            && pod_labels(&s, "web").is_some_and(|l| l["app"] == "moved")
            && w.health().unreachable_since.is_none()
    });
    let lists_after: Vec<u64> = f.watch.health().kinds.iter().map(|k| k.lists).collect();
    assert_eq!(lists_after, lists_before, "resumed, not relisted");
    let resumed = f.api.requests().iter().filter(|r| r.contains("watch=true")).any(|r| {
        r.split('&').any(|kv| kv.strip_prefix("resourceVersion=").is_some_and(|v| v.parse::<u64>().unwrap_or(0) > 0))
    });
    assert!(resumed, "no watch resumed from a resourceVersion: {:#?}", f.api.requests());
}

#[test]
fn gone_relists() {
    let f = fixture("gone");
    // Every watch is cut and its resourceVersion compacted away: 410.
    f.api.expire();
    f.api.apply(fakeapi::node("k17-c", &["10.244.3.0/24"], "192.0.2.13"));
    f.api.delete("Pod", "k17", "web");
    until(&f.watch, 30, "relisted after 410", |w| {
        w.health().kinds.iter().all(|k| k.lists >= 2)
            && node_names(&w.snapshot()) == ["k17-a", "k17-c"]
            && w.snapshot().pods.is_empty()
    });
    // The store never emptied on the way: the namespace and policy stayed.
    let s = f.watch.snapshot();
    assert_eq!((s.namespaces.len(), s.network_policies.len()), (1, 1));
}
