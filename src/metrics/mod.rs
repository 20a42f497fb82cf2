//! Prometheus metrics (the official `prometheus-client` crate): the
//! datapath's counters and fill levels, read from the pinned maps at each
//! scrape the way `ebpfcni status` and `maps dump stats` read them, plus
//! the agent's own health (reconcile and watch), served over HTTP on a
//! local address. The README lists every metric.

mod datapath;
mod serve;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use self::datapath::DatapathCollector;
#[allow(unused_imports)] // MetricsServer: what the agent keeps alive
pub use self::serve::{serve, MetricsServer};
use crate::kube::Health;

/// A source of the watches' health, read at each scrape.
type HealthSource = Box<dyn Fn() -> Health + Send + Sync>;

/// What the agent records; cheap to clone, every clone records into the
/// same metrics.
#[derive(Clone)]
pub struct AgentMetrics {
    reconciles: Counter,
    reconcile_errors: Counter,
    reconcile_seconds: Histogram,
    last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    peers: Gauge,
    watch: Arc<Mutex<Option<HealthSource>>>,
}

#[allow(dead_code)] // the agent's hooks (issue 10)
impl AgentMetrics {
    /// One reconcile ended after `took`: counted, timed, and when it
    /// succeeded, its time is the last success.
    pub fn reconciled(&self, took: Duration, ok: bool) {
        self.reconciles.inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
        if ok {
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            self.last_success.set(now.as_secs_f64());
        } else {
            self.reconcile_errors.inc();
        }
    }

    /// The peer nodes the agent routes to now.
    pub fn set_peers(&self, n: usize) {
        self.peers.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Where the watches' health comes from (e.g. `move || watch.health()`).
    pub fn watch_health(&self, source: impl Fn() -> Health + Send + Sync + 'static) {
        *self.watch.lock().expect("metrics watch source") = Some(Box::new(source));
    }
}

/// The registry behind `/metrics`.
pub struct Metrics {
    registry: Registry,
    #[allow(dead_code)] // read by the agent (issue 10)
    agent: AgentMetrics,
}

impl Metrics {
    /// The datapath of every network pinned under `pin_path`, and the agent's hooks.
    pub fn new(pin_path: &std::path::Path) -> Metrics {
        let mut registry = Registry::default();
        let agent = AgentMetrics {
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            // 1 ms to ~16 s.
            reconcile_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 15,
            )),
            last_success: Gauge::default(),
            peers: Gauge::default(),
            watch: Arc::new(Mutex::new(None)),
        };
        registry.register("ebpfcni_reconciles", "Reconciles the agent ran", agent.reconciles.clone());
        registry.register("ebpfcni_reconcile_errors", "Reconciles that failed", agent.reconcile_errors.clone());
        registry.register(
            "ebpfcni_reconcile_duration_seconds",
            "How long each reconcile took",
            agent.reconcile_seconds.clone(),
        );
        registry.register(
            "ebpfcni_reconcile_last_success_timestamp_seconds",
            "When a reconcile last succeeded (Unix time; 0: never)",
            agent.last_success.clone(),
        );
        registry.register("ebpfcni_peers", "Peer nodes the agent routes to", agent.peers.clone());
        registry.register_collector(Box::new(DatapathCollector::new(pin_path)));
        registry.register_collector(Box::new(WatchCollector(agent.watch.clone())));
        Metrics { registry, agent }
    }

    #[allow(dead_code)] // the agent's hooks (issue 10)
    pub fn agent(&self) -> &AgentMetrics {
        &self.agent
    }

    /// The text exposition (OpenMetrics), as `/metrics` serves it.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a collector's error is its own.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The watches' health, per kind.
struct WatchCollector(Arc<Mutex<Option<HealthSource>>>);

impl std::fmt::Debug for WatchCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchCollector")
    }
}

/// Writes one metric family: `samples` are (label pairs, value).
pub(crate) fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Vec<(&str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(kind) = samples.first().map(|(_, m)| m.metric_type()) else { return Ok(()) };
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    if let [(labels, m)] = samples.as_slice() {
        if labels.is_empty() {
            return m.encode(metric);
        }
    }
    for (labels, m) in &samples {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn unix_seconds(t: Option<SystemTime>) -> f64 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for WatchCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let source = self.0.lock().expect("metrics watch source");
        let Some(source) = source.as_ref() else { return Ok(()) };
        let h = source();
        let per_kind = |f: &dyn Fn(&crate::kube::KindHealth) -> u64| {
            h.kinds.iter().map(|k| (vec![("kind", k.kind.to_string())], ConstCounter::new(f(k)))).collect::<Vec<_>>()
        };
        family(
            &mut encoder,
            "ebpfcni_watch_events",
            "Objects applied or deleted by the watches",
            per_kind(&|k| k.events),
        )?;
        family(&mut encoder, "ebpfcni_watch_lists", "Complete lists (each 410 Gone adds one)", per_kind(&|k| k.lists))?;
        family(&mut encoder, "ebpfcni_watch_errors", "Watch and list errors", per_kind(&|k| k.errors))?;
        let synced = h.kinds.iter().map(|k| (vec![("kind", k.kind.to_string())], ConstGauge::new(i64::from(k.synced))));
        family(&mut encoder, "ebpfcni_watch_synced", "1 once the kind was listed completely", synced.collect())?;
        let last =
            h.kinds.iter().map(|k| (vec![("kind", k.kind.to_string())], ConstGauge::new(unix_seconds(k.last_event))));
        family(
            &mut encoder,
            "ebpfcni_watch_last_event_timestamp_seconds",
            "When the kind's watch last delivered",
            last.collect(),
        )?;
        family(
            &mut encoder,
            "ebpfcni_watch_up",
            "1 while the API server answers (0: the last known state stays in force)",
            vec![(vec![], ConstGauge::new(i64::from(h.unreachable_since.is_none())))],
        )?;
        family(
            &mut encoder,
            "ebpfcni_watch_unreachable_since_timestamp_seconds",
            "Since when the API server has not answered (Unix time; 0: it answers)",
            vec![(vec![], ConstGauge::new(unix_seconds(h.unreachable_since)))],
        )
    }
}
