//! `ebpfcni-agent cluster`: what the agent sees of the Kubernetes cluster, from
//! the same watches (src/kube/): its health, the NodeList its peers come
//! from, or the objects its NetworkPolicy compiler reads. `--follow`
//! prints again at every change.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::kube::{self, ClusterWatch};

#[derive(Clone, Copy, ValueEnum)]
pub enum What {
    /// The watches: synced, errors, since when the API server is unreachable.
    Health,
    /// The nodes as a NodeList (name, pod CIDRs, addresses).
    Nodes,
    /// Pods, namespaces and NetworkPolicies, as `policy sync -f` reads them.
    Policy,
}

#[derive(Args)]
pub struct ClusterArgs {
    #[arg(value_enum, default_value = "health")]
    what: What,
    /// The kubeconfig (default: the service account in a pod, else $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Seconds to wait for the first complete list of every kind.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Print again at every change (until interrupted).
    #[arg(long)]
    follow: bool,
    /// Write to this file instead (atomically, only when it changed): with
    /// `nodes --follow`, the node-list file an agent's peer source reads.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Prints (or writes) one view; returns the generation it shows.
fn print(watch: &ClusterWatch, args: &ClusterArgs) -> Result<u64> {
    let snapshot = watch.snapshot();
    if let (What::Nodes, Some(out)) = (args.what, &args.out) {
        kube::write_node_list(out, &snapshot.nodes)?;
        return Ok(snapshot.generation);
    }
    let v = match args.what {
        What::Health => watch.health().to_json(),
        What::Nodes => kube::node_list(&snapshot.nodes),
        What::Policy => kube::policy_input(&snapshot),
    };
    let text = serde_json::to_string_pretty(&v)? + "\n";
    match &args.out {
        Some(out) => std::fs::write(out, text).with_context(|| format!("write {}", out.display()))?,
        None => print!("{text}"),
    }
    Ok(snapshot.generation)
}

pub fn run(args: &ClusterArgs) -> Result<()> {
    let watch = ClusterWatch::start(args.kubeconfig.as_deref())?;
    if !watch.wait_synced(Duration::from_secs(args.timeout)) {
        let h = watch.health();
        bail!(
            "the cluster's objects were not all listed within {} s: {}",
            args.timeout,
            h.last_error.as_deref().unwrap_or("no answer yet")
        );
    }
    let mut seen = print(&watch, args)?;
    if !args.follow {
        return Ok(());
    }
    loop {
        if watch.wait_change(seen, Duration::from_secs(3600)) != seen {
            seen = print(&watch, args)?;
        }
    }
}
