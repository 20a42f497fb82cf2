//! `ebpfcni-agent run`: the Kubernetes source in force on its own until
//! the node agent's reconcile loop takes it in. It watches the cluster
//! (src/kube/), keeps every pinned network's NetworkPolicies in force
//! through `policy::sync_objects` (the same compiler and atomic switch as
//! `policy sync`) at every change, keeps a node-list file current for the
//! peer source, and serves the metrics. Level-triggered: each pass reads
//! the whole snapshot; a failed pass is retried at the next change or
//! tick. Until the first complete list, and while the API server is
//! unreachable, the state in force stays (fail static).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use super::Target;
use crate::datapath::Maps;
use crate::kube::{self, ClusterWatch, Snapshot};
use crate::metrics::{self, Metrics};

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The kubeconfig (default: the pod's service account, else $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Serve /metrics here (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:9476")]
    metrics_address: SocketAddr,
    /// Keep this NodeList file current (what the agent's peer source reads).
    #[arg(long)]
    node_list: Option<PathBuf>,
    /// Where to report health for `ebpfcni status` (rewritten every second).
    #[arg(long, default_value = super::status::KUBERNETES_STATE_FILE)]
    state_file: PathBuf,
    /// Sync again after this many seconds even without a change.
    #[arg(long, default_value_t = 60)]
    resync: u64,
    /// Also run the node agent (`ebpfcni agent`) on the watched Nodes:
    /// routes or tunnel entries for the peers, the node's rules, and the
    /// CNI config completed from this template with the node's podCIDRs;
    /// the network kept in force is then the template's (name, bpfPinPath).
    #[arg(long)]
    template: Option<PathBuf>,
    /// This node's name (the Node's metadata.name); default: the hostname.
    #[arg(long)]
    node_name: Option<String>,
    /// Where the node agent writes the completed CNI config once the node
    /// is ready (a directory: ebpfcni's conflist in it, replaced in place).
    #[arg(long, default_value = "/etc/cni/net.d/10-ebpfcni.conflist")]
    cni_conf: PathBuf,
    /// Where the conflist's chained plugins are (its CNI version is the highest they all speak).
    #[arg(long, default_value = super::node_agent::DEFAULT_CNI_PATH)]
    cni_path: String,
    /// Read and write the node's sysctls here instead of /proc/sys (in a
    /// container, where /proc/sys is read-only: a mount of the host's
    /// /proc/sys/net at DIR/net).
    #[arg(long)]
    proc_sys: Option<PathBuf>,
    /// Seconds between the node agent's full reconciles when nothing changed.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    #[command(flatten)]
    target: Target,
}

/// The networks pinned under the pin path (or the one asked for).
fn networks(target: &Target) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&target.pin_path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("endpoints").exists())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| target.network.as_ref().is_none_or(|want| want == n))
        .collect();
    out.sort();
    out
}

fn sync_network(name: &str, dir: &Path, input: &serde_json::Value) -> Result<()> {
    let Some(maps) = Maps::open_if_pinned(dir)? else { return Ok(()) };
    let synced = crate::policy::sync_objects(dir, &maps, input, true)?;
    if synced.changed {
        eprintln!(
            "ebpfcni-agent: network {name}: {} addresses, {} prefixes, {} isolated, {} entries",
            synced.endpoints, synced.prefixes, synced.isolated, synced.entries
        );
    }
    for e in &synced.errors {
        eprintln!("ebpfcni-agent: network {name}: {e}");
    }
    Ok(())
}

/// One pass over everything; true when all of it succeeded.
fn reconcile(args: &RunArgs, snapshot: &Snapshot, nets: &[(String, PathBuf)]) -> bool {
    let input = kube::policy_input(snapshot);
    let mut ok = true;
    for (name, dir) in nets {
        if let Err(e) = sync_network(name, dir, &input) {
            eprintln!("ebpfcni-agent: network {name}: policy sync: {e:#}");
            ok = false;
        }
    }
    if let Some(path) = &args.node_list {
        if let Err(e) = kube::write_node_list(path, &snapshot.nodes) {
            eprintln!("ebpfcni-agent: {e:#}");
            ok = false;
        }
    }
    ok
}

/// The last pass, for the state file.
#[derive(Default)]
struct Passes {
    last: Option<(bool, Duration, std::time::SystemTime)>,
    errors: u64,
}

fn write_state(path: &Path, watch: &ClusterWatch, passes: &Passes) -> Result<()> {
    let unix =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let state = serde_json::json!({
        "updated": unix(std::time::SystemTime::now()),
        "pid": std::process::id(),
        "kubernetes": watch.health().to_json(),
        "last_reconcile": passes.last.map(|(ok, took, at)| serde_json::json!({
            "ok": ok, "duration_ms": took.as_millis() as u64, "at": unix(at), "errors": passes.errors,
        })),
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, state.to_string())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// With a template, the network it configures is the one the agent
/// keeps (its name and bpfPinPath); otherwise what the flags say.
fn with_template_target(mut args: RunArgs) -> Result<RunArgs> {
    let Some(template) = &args.template else { return Ok(args) };
    let conf = super::conflist::net_conf_of_template(template)?;
    args.target = Target { network: Some(conf.0), pin_path: conf.1 };
    Ok(args)
}

pub fn run(args: &RunArgs) -> Result<()> {
    if let Some(dir) = &args.proc_sys {
        crate::node::sysctl::use_root(dir)?;
    }
    let args = &with_template_target(args.clone())?;
    let watch = Arc::new(ClusterWatch::start(args.kubeconfig.as_deref())?);
    let m = Arc::new(Metrics::new(&args.target.pin_path));
    let source = watch.clone();
    m.agent().watch_health(move || source.health());
    let server = metrics::serve(args.metrics_address, m.clone())?;
    println!("serving metrics on http://{}/metrics", server.local_addr());
    std::io::stdout().flush()?;

    if let Some(template) = &args.template {
        // The policy loop below runs beside the node agent, which owns the
        // process's end (SIGTERM).
        let (policy_watch, policy_metrics) = (watch.clone(), m.clone());
        let policy_args = args.clone();
        std::thread::spawn(move || policy_loop(&policy_args, &policy_watch, &policy_metrics));
        let source = Box::new(kube::KubeSource::new(watch.clone()));
        let files = super::node_agent::ConfFiles {
            template: template.clone(),
            cni_conf: args.cni_conf.clone(),
            cni_path: args.cni_path.clone(),
        };
        let result = super::node_agent::start(args.node_name.as_deref(), &files, args.interval, source);
        drop(server);
        return result;
    }
    policy_loop(args, &watch, &m);
    drop(server);
    Ok(())
}

/// Keeps every pinned network's policy equal to the cluster's, forever.
fn policy_loop(args: &RunArgs, watch: &ClusterWatch, m: &Metrics) {
    let resync = Duration::from_secs(args.resync.max(1));
    let mut synced_gen: Option<u64> = None;
    let mut synced_nets: BTreeSet<String> = BTreeSet::new();
    let mut last = Instant::now();
    let mut failed = false;
    let mut passes = Passes::default();
    loop {
        // Until the first pass, wait for any change (or a second).
        let seen = synced_gen.unwrap_or_else(|| watch.generation());
        watch.wait_change(seen, Duration::from_secs(1));
        if let Err(e) = write_state(&args.state_file, watch, &passes) {
            eprintln!("ebpfcni-agent: write {}: {e:#}", args.state_file.display());
        }
        if !watch.health().synced {
            continue; // nothing complete to act on yet: what is in force stays
        }
        let nets = networks(&args.target);
        let names: BTreeSet<String> = nets.iter().map(|(n, _)| n.clone()).collect();
        let snapshot = watch.snapshot();
        let due = synced_gen != Some(snapshot.generation) || names != synced_nets || failed || last.elapsed() >= resync;
        if !due {
            continue;
        }
        let started = Instant::now();
        let ok = reconcile(args, &snapshot, &nets);
        m.agent().reconciled(started.elapsed(), ok);
        passes.last = Some((ok, started.elapsed(), std::time::SystemTime::now()));
        passes.errors += u64::from(!ok);
        m.agent().set_peers(snapshot.nodes.len().saturating_sub(1));
        failed = !ok;
        synced_gen = Some(snapshot.generation);
        synced_nets = names;
        last = Instant::now();
    }
}
