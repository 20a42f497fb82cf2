//! `ebpfcni agent`: the node daemon (see src/agent/).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::agent::{self, FileSource, Options};

#[derive(Args)]
pub struct AgentArgs {
    /// This node's name (metadata.name in the peers file); default: the hostname.
    #[arg(long)]
    node_name: Option<String>,
    /// The cluster's nodes, as `kubectl get nodes -o json` prints them; re-read when it changes.
    #[arg(long)]
    peers: PathBuf,
    /// The CNI config to complete (conflist or config; subnet and mtu may be left out).
    #[arg(long, default_value = "/etc/ebpfcni/cni-template.conflist")]
    template: PathBuf,
    /// Where the completed CNI config is written once the node is ready.
    #[arg(long, default_value = "/etc/cni/net.d/10-ebpfcni.conflist")]
    cni_conf: PathBuf,
    /// Seconds between full reconciles when nothing changed.
    #[arg(long, default_value_t = 10)]
    interval: u64,
}

pub fn run(args: &AgentArgs) -> Result<()> {
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").context("read the hostname")?.trim().to_string(),
    };
    let template: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&args.template).with_context(|| format!("read {}", args.template.display()))?,
    )
    .with_context(|| format!("parse {}", args.template.display()))?;
    let network = template["name"].as_str().context("the template has no name")?.to_string();
    let opts = Options { node, template: args.template.clone(), cni_conf: args.cni_conf.clone() };
    agent::run(opts, Box::new(FileSource::new(args.peers.clone())), network, Duration::from_secs(args.interval.max(1)))
}
