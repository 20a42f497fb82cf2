//! `ebpfcni agent`: the node daemon (see src/agent/).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::agent::{self, FileSource, Options, PeerSource};

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
    /// Where the completed CNI config is written once the node is ready
    /// (a directory: ebpfcni's conflist in it, replaced in place).
    #[arg(long, default_value = "/etc/cni/net.d/10-ebpfcni.conflist")]
    cni_conf: PathBuf,
    /// Where the conflist's chained plugins are (its CNI version is the highest they all speak).
    #[arg(long, default_value = DEFAULT_CNI_PATH)]
    cni_path: String,
    /// Seconds between full reconciles when nothing changed.
    #[arg(long, default_value_t = 10)]
    interval: u64,
}

pub fn run(args: &AgentArgs) -> Result<()> {
    let source = Box::new(FileSource::new(args.peers.clone()));
    let files =
        ConfFiles { template: args.template.clone(), cni_conf: args.cni_conf.clone(), cni_path: args.cni_path.clone() };
    start(args.node_name.as_deref(), &files, args.interval, source)
}

/// Where chained plugins are looked for, by default.
pub const DEFAULT_CNI_PATH: &str = "/opt/cni/bin:/usr/lib/cni";

/// The node agent's files: the template, where the completed config goes,
/// and where its chained plugins are.
pub struct ConfFiles {
    pub template: PathBuf,
    pub cni_conf: PathBuf,
    pub cni_path: String,
}

/// Runs the node agent on `source` until SIGTERM: the one way `ebpfcni
/// agent` (a NodeList file) and `ebpfcni-agent run` (the Kubernetes API)
/// start it.
pub fn start(node_name: Option<&str>, files: &ConfFiles, interval: u64, source: Box<dyn PeerSource>) -> Result<()> {
    let template = files.template.as_path();
    let node = match node_name {
        Some(n) => n.to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").context("read the hostname")?.trim().to_string(),
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(template).with_context(|| format!("read {}", template.display()))?)
            .with_context(|| format!("parse {}", template.display()))?;
    let network = doc["name"].as_str().context("the template has no name")?.to_string();
    let opts = Options {
        node,
        template: template.to_path_buf(),
        cni_conf: files.cni_conf.clone(),
        cni_path: files.cni_path.clone(),
    };
    agent::run(opts, source, network, Duration::from_secs(interval.max(1)))
}
