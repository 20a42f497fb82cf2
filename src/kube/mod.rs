//! The cluster source of the agent: kube-runtime watchers feeding
//! reflector stores for Nodes, Pods, Namespaces and NetworkPolicies, a
//! consistent snapshot of them, the watch health, and a change counter.
//!
//! - Watch semantics are kube-runtime's: a watch resumes from the last
//!   resourceVersion it saw (bookmarks included), a 410 Gone relists, and
//!   errors back off (`default_backoff`: 0.8 s doubling to 30 s).
//! - Fail static: a store keeps its last state while the API server is
//!   unreachable, and a relist replaces it only once complete (InitDone).
//! - The watches run on a runtime of their own, on their own threads, so a
//!   caller needs no async code: `snapshot()` and `wait_change()` block at
//!   most as long as asked.

mod export;
mod source;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::{watcher, WatchStreamExt};
use ::kube::{Api, Client, Config, Resource};
use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

pub use export::{node_list, policy_input, write_node_list};
pub use source::KubeSource;

/// How often reachability is probed (GET /version) while a watch fails: a
/// resumed watch with nothing new to say says nothing, so this is how the
/// end of an outage is noticed.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// What the four stores held at one moment, sorted by namespace and name.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    pub network_policies: Vec<NetworkPolicy>,
    /// The change counter when it was taken (see `ClusterWatch::generation`).
    pub generation: u64,
}

/// One kind's watch.
#[derive(Clone, Debug, PartialEq)]
pub struct KindHealth {
    /// "Node", "Pod", "Namespace", "NetworkPolicy".
    pub kind: &'static str,
    /// A complete list arrived at least once.
    pub synced: bool,
    /// Objects applied or deleted so far.
    pub events: u64,
    /// Complete lists so far (the first one included): each 410 Gone adds one.
    pub lists: u64,
    pub errors: u64,
    pub last_event: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// The watches as a whole.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// Every kind has been listed completely at least once.
    pub synced: bool,
    /// Since when the API server has not answered (None: it answers). The
    /// last known state stays in force meanwhile.
    pub unreachable_since: Option<SystemTime>,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub kinds: Vec<KindHealth>,
}

fn unix(t: Option<SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

impl Health {
    /// For `status --json` and the like: times as Unix seconds.
    pub fn to_json(&self) -> Value {
        json!({
            "synced": self.synced,
            "unreachable_since": unix(self.unreachable_since),
            "last_error": self.last_error,
            "last_error_at": unix(self.last_error_at),
            "kinds": self.kinds.iter().map(|k| json!({
                "kind": k.kind, "synced": k.synced, "events": k.events, "lists": k.lists,
                "errors": k.errors, "last_event": unix(k.last_event), "last_error": k.last_error,
            })).collect::<Vec<_>>(),
        })
    }
}

struct State {
    generation: u64,
    unreachable_since: Option<SystemTime>,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    kinds: Vec<KindHealth>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn update(&self, kind: usize, f: impl FnOnce(&mut State, usize)) {
        let mut st = self.state.lock().expect("cluster watch state");
        f(&mut st, kind);
        self.changed.notify_all();
    }
}

struct Stores {
    nodes: Store<Node>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    network_policies: Store<NetworkPolicy>,
}

/// The running watches; dropping it stops them.
pub struct ClusterWatch {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    stores: Stores,
}

const KINDS: [&str; 4] = ["Node", "Pod", "Namespace", "NetworkPolicy"];

/// The client configuration: the kubeconfig given; else, when running in
/// a pod (KUBERNETES_SERVICE_HOST is set), its service account; else the
/// usual inference ($KUBECONFIG, ~/.kube/config).
async fn client_config(kubeconfig: Option<&Path>) -> Result<Config> {
    match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).with_context(|| format!("read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("use kubeconfig {}", path.display()))
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            Config::incluster().context("in-cluster config (service account)")
        }
        None => Config::infer().await.context("find a kubeconfig"),
    }
}

/// Runs one kind's reflector until the runtime stops, recording health.
fn watch_kind<K>(client: Client, shared: Arc<Shared>, index: usize) -> (Store<K>, impl Future<Output = ()> + Send)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client);
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    let run = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let now = SystemTime::now();
            match item {
                Ok(event) => shared.update(index, |st, i| {
                    st.unreachable_since = None;
                    let k = &mut st.kinds[i];
                    match event {
                        watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                            k.events += 1;
                            k.last_event = Some(now);
                            st.generation += 1;
                        }
                        watcher::Event::InitDone => {
                            k.synced = true;
                            k.lists += 1;
                            k.last_event = Some(now);
                            st.generation += 1;
                        }
                        watcher::Event::Init | watcher::Event::InitApply(_) => {}
                    }
                }),
                Err(e) => shared.update(index, |st, i| {
                    let msg = format!("watch {}: {e}", KINDS[i]);
                    st.unreachable_since.get_or_insert(now);
                    st.last_error = Some(msg.clone());
                    st.last_error_at = Some(now);
                    st.kinds[i].errors += 1;
                    st.kinds[i].last_error = Some(msg);
                }),
            }
        }
    };
    (store, run)
}

impl ClusterWatch {
    /// Starts watching the cluster `kubeconfig` names (see `client_config`
    /// for the default). Returns once the client is configured; the stores
    /// fill in the background (`health().synced`, `wait_synced`).
    pub fn start(kubeconfig: Option<&Path>) -> Result<ClusterWatch> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ebpfcni-kube")
            .enable_all()
            .build()
            .context("start the Kubernetes client's runtime")?;
        // Configured on the runtime's own thread: this may be called from
        // inside another async runtime, where blocking on one panics.
        let path = kubeconfig.map(Path::to_path_buf);
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let client = match client_config(path.as_deref()).await {
                Ok(config) => Client::try_from(config).context("build the Kubernetes client"),
                Err(e) => Err(e),
            };
            let _ = tx.send(client);
        });
        let client = rx.recv().map_err(|_| anyhow!("the Kubernetes client's runtime stopped"))??;

        let kinds = KINDS
            .iter()
            .map(|kind| KindHealth {
                kind,
                synced: false,
                events: 0,
                lists: 0,
                errors: 0,
                last_event: None,
                last_error: None,
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                unreachable_since: None,
                last_error: None,
                last_error_at: None,
                kinds,
            }),
            changed: Condvar::new(),
        });
        let (nodes, a) = watch_kind::<Node>(client.clone(), shared.clone(), 0);
        let (pods, b) = watch_kind::<Pod>(client.clone(), shared.clone(), 1);
        let (namespaces, c) = watch_kind::<Namespace>(client.clone(), shared.clone(), 2);
        let (network_policies, d) = watch_kind::<NetworkPolicy>(client.clone(), shared.clone(), 3);
        runtime.spawn(a);
        runtime.spawn(b);
        runtime.spawn(c);
        runtime.spawn(d);
        runtime.spawn(probe(client, shared.clone()));
        Ok(ClusterWatch {
            runtime: Some(runtime),
            shared,
            stores: Stores { nodes, pods, namespaces, network_policies },
        })
    }

    /// The four stores now. Taken under the health lock, so `generation`
    /// counts every change the snapshot holds.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.shared.state.lock().expect("cluster watch state");
        fn sorted<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<K> {
            let mut v: Vec<K> = store.state().iter().map(|o| K::clone(o)).collect();
            v.sort_by(|a, b| {
                (a.meta().namespace.as_ref(), &a.meta().name).cmp(&(b.meta().namespace.as_ref(), &b.meta().name))
            });
            v
        }
        Snapshot {
            nodes: sorted(&self.stores.nodes),
            pods: sorted(&self.stores.pods),
            namespaces: sorted(&self.stores.namespaces),
            network_policies: sorted(&self.stores.network_policies),
            generation: st.generation,
        }
    }

    pub fn health(&self) -> Health {
        let st = self.shared.state.lock().expect("cluster watch state");
        Health {
            synced: st.kinds.iter().all(|k| k.synced),
            unreachable_since: st.unreachable_since,
            last_error: st.last_error.clone(),
            last_error_at: st.last_error_at,
            kinds: st.kinds.clone(),
        }
    }

    /// Counts changes: bumped by every object applied or deleted and every
    /// complete list, in any of the four stores.
    #[allow(dead_code)] // for the agent's reconcile loop (issue 10)
    pub fn generation(&self) -> u64 {
        self.shared.state.lock().expect("cluster watch state").generation
    }

    /// Blocks until the generation differs from `seen` or `timeout`
    /// passes; returns the generation then.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        let st = self.shared.state.lock().expect("cluster watch state");
        let (st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, timeout, |st| st.generation == seen)
            .expect("cluster watch state");
        st.generation
    }

    /// Blocks until every kind is listed once; false after `timeout`.
    pub fn wait_synced(&self, timeout: Duration) -> bool {
        let st = self.shared.state.lock().expect("cluster watch state");
        let (st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, timeout, |st| !st.kinds.iter().all(|k| k.synced))
            .expect("cluster watch state");
        st.kinds.iter().all(|k| k.synced)
    }
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// While a watch fails, asks the API server for its version: the first
/// answer ends the outage even when the resumed watches have nothing new.
async fn probe(client: Client, shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let since = shared.state.lock().expect("cluster watch state").unreachable_since;
        let Some(since) = since else { continue };
        let asked = SystemTime::now();
        if client.apiserver_version().await.is_ok() {
            let mut st = shared.state.lock().expect("cluster watch state");
            // An error reported after the question was asked still stands.
            if st.unreachable_since == Some(since) && st.last_error_at.is_none_or(|t| t <= asked) {
                st.unreachable_since = None;
                shared.changed.notify_all();
            }
        }
    }
}

/// One Node, read once (the install init container's lookup).
pub fn node_info(kubeconfig: Option<&Path>, node: &str) -> Result<crate::agent::NodeInfo> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the Kubernetes client's runtime")?;
    runtime.block_on(async {
        let client = Client::try_from(client_config(kubeconfig).await?).context("build the Kubernetes client")?;
        let api: Api<Node> = Api::all(client);
        let n = api.get(node).await.with_context(|| format!("get node {node}"))?;
        crate::agent::NodeInfo::from_node(&n)
    })
}
