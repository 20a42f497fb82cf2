//! The datapath's counters, read from every network's pinned maps at
//! each scrape: what pods sent and how it left (redirected to a local pod,
//! passed to the host), drops by reason and direction, events lost, conntrack and map
//! fill, policy size.

use std::path::{Path, PathBuf};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::family;
use crate::datapath::Maps;

#[derive(Debug)]
pub struct DatapathCollector {
    pin_path: PathBuf,
}

impl DatapathCollector {
    pub fn new(pin_path: &Path) -> Self {
        DatapathCollector { pin_path: pin_path.to_path_buf() }
    }
}

/// One network's numbers.
struct Network {
    name: String,
    sent_packets: u64,
    sent_bytes: u64,
    redirected: u64,
    passed: u64,
    /// (reason, direction, packets)
    drops: [(&'static str, &'static str, u64); 5],
    events_lost: [(&'static str, u64); 2],
    pods: u64,
    endpoints: u64,
    /// (map, entries, max_entries)
    fill: Vec<(&'static str, u64, u64)>,
    rules: u64,
    policy_entries: u64,
    isolated: u64,
    policy_errors: u64,
    generation: u64,
}

/// The sum of one counter over every pod.
fn total<T>(entries: &[T], f: &dyn Fn(&T) -> u64) -> u64 {
    entries.iter().map(f).sum()
}

fn read(dir: &Path, name: &str) -> anyhow::Result<Option<Network>> {
    let Some(maps) = Maps::open_if_pinned(dir)? else { return Ok(None) };
    let stats = maps.stats()?;
    let sum = |f: &dyn Fn(&_) -> u64| total(&stats, f);
    let lost = maps.events_lost()?;
    let settings = maps.settings()?;
    let active = settings.active_set as u8;
    let policy = maps.policy()?;
    let active_entries: Vec<_> = policy.iter().filter(|e| e.set == active).collect();
    let rules: std::collections::BTreeSet<u32> = active_entries.iter().map(|e| e.rule).collect();
    let fill = maps.fill()?.into_iter().map(|(m, n, max)| (m, n as u64, u64::from(max))).collect();
    Ok(Some(Network {
        name: name.to_string(),
        sent_packets: sum(&|s| s.packets),
        sent_bytes: sum(&|s| s.bytes),
        redirected: sum(&|s| s.redirected),
        passed: sum(&|s| s.passed),
        drops: [
            ("policy", "egress", sum(&|s| s.drop_policy_egress)),
            ("policy", "ingress", sum(&|s| s.drop_policy_ingress)),
            // Only what a pod sends can be spoofed.
            ("spoofed", "egress", sum(&|s| s.drop_spoofed)),
            ("parse", "egress", sum(&|s| s.drop_parse_egress)),
            ("parse", "ingress", sum(&|s| s.drop_parse_ingress)),
        ],
        events_lost: [("ring_full", lost.ring_full), ("rate_limited", lost.rate_limited)],
        pods: maps.pods()?.len() as u64,
        endpoints: maps.endpoints()?.len() as u64,
        fill,
        rules: rules.len() as u64,
        policy_entries: active_entries.len() as u64,
        isolated: maps.identity_flags()?.iter().filter(|(s, _, _)| *s == active).count() as u64,
        policy_errors: crate::policy::report::load(dir)?.len() as u64,
        generation: u64::from(settings.generation),
    }))
}

impl DatapathCollector {
    /// Every pinned network, and how many could not be read.
    fn networks(&self) -> (Vec<Network>, u64) {
        let mut out = Vec::new();
        let mut failed = 0;
        for entry in std::fs::read_dir(&self.pin_path).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().join("endpoints").exists() {
                continue;
            }
            match read(&entry.path(), &name) {
                Ok(Some(n)) => out.push(n),
                Ok(None) => {}
                Err(_) => failed += 1,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        (out, failed)
    }
}

fn net(n: &Network) -> Vec<(&'static str, String)> {
    vec![("network", n.name.clone())]
}

fn with(n: &Network, k: &'static str, v: &str) -> Vec<(&'static str, String)> {
    vec![("network", n.name.clone()), (k, v.to_string())]
}

impl Collector for DatapathCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (nets, failed) = self.networks();
        let counter =
            |f: fn(&Network) -> u64| nets.iter().map(|n| (net(n), ConstCounter::new(f(n)))).collect::<Vec<_>>();
        let gauge = |f: fn(&Network) -> u64| {
            nets.iter().map(|n| (net(n), ConstGauge::new(i64::try_from(f(n)).unwrap_or(i64::MAX)))).collect::<Vec<_>>()
        };
        family(
            &mut e,
            "ebpfcni_pod_sent_packets",
            "Packets pods sent that left their host veth",
            counter(|n| n.sent_packets),
        )?;
        family(&mut e, "ebpfcni_pod_sent_bytes", "Bytes of those packets", counter(|n| n.sent_bytes))?;
        let forwarded = nets
            .iter()
            .flat_map(|n| {
                [
                    (with(n, "path", "redirected"), ConstCounter::new(n.redirected)),
                    (with(n, "path", "host"), ConstCounter::new(n.passed)),
                ]
            })
            .collect();
        family(
            &mut e,
            "ebpfcni_forwarded_packets",
            "Pods' packets by how they left: redirected straight to a local pod, or handed to the bridge and host",
            forwarded,
        )?;
        let drops = nets
            .iter()
            .flat_map(|n| {
                n.drops.iter().map(move |(r, d, v)| {
                    let mut labels = with(n, "reason", r);
                    labels.push(("direction", d.to_string()));
                    (labels, ConstCounter::new(*v))
                })
            })
            .collect();
        family(
            &mut e,
            "ebpfcni_drops",
            "Packets the datapath dropped, by reason and direction (egress: the pod's own traffic; ingress: traffic to \
             the pod)",
            drops,
        )?;
        let lost = nets
            .iter()
            .flat_map(|n| n.events_lost.iter().map(move |(c, v)| (with(n, "cause", c), ConstCounter::new(*v))))
            .collect();
        family(&mut e, "ebpfcni_events_lost", "Datapath events not delivered to a monitor, by cause", lost)?;
        family(&mut e, "ebpfcni_pods", "Pods attached", gauge(|n| n.pods))?;
        family(&mut e, "ebpfcni_endpoints", "Endpoint addresses (pods' and the node's)", gauge(|n| n.endpoints))?;
        let fill = |max: bool| {
            nets.iter()
                .flat_map(|n| {
                    n.fill.iter().map(move |(m, used, cap)| {
                        (with(n, "map", m), ConstGauge::new(i64::try_from(if max { *cap } else { *used }).unwrap_or(0)))
                    })
                })
                .collect::<Vec<_>>()
        };
        family(&mut e, "ebpfcni_map_entries", "Entries in each BPF map", fill(false))?;
        family(&mut e, "ebpfcni_map_capacity", "Most entries each BPF map holds", fill(true))?;
        family(
            &mut e,
            "ebpfcni_policy_rules",
            "Rules in force (hand-made or from NetworkPolicies)",
            gauge(|n| n.rules),
        )?;
        family(&mut e, "ebpfcni_policy_entries", "iprules entries in force", gauge(|n| n.policy_entries))?;
        family(&mut e, "ebpfcni_policy_isolated_identities", "Identities isolated by policy", gauge(|n| n.isolated))?;
        family(
            &mut e,
            "ebpfcni_policy_errors",
            "NetworkPolicies or rules that could not be enforced as written",
            gauge(|n| n.policy_errors),
        )?;
        family(&mut e, "ebpfcni_policy_generation", "Policy switches so far", gauge(|n| n.generation))?;
        family(
            &mut e,
            "ebpfcni_datapath_read_errors",
            "Pinned networks whose maps could not be read at this scrape",
            vec![(vec![], ConstGauge::new(i64::try_from(failed).unwrap_or(0)))],
        )
    }
}
