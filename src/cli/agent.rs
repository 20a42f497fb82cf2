//! `ebpfcni-agent`'s command line: the commands that need the Kubernetes
//! client or the metrics endpoint, kept out of the plugin's binary.

use anyhow::Result;
use clap::{Parser, Subcommand};

use super::{cluster, install, metrics, run};

#[derive(Parser)]
#[command(name = "ebpfcni-agent", version, about = "ebpfcni's node agent side: Kubernetes watches, metrics, install")]
struct AgentCli {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Watch the cluster and keep its NetworkPolicies in force on every
    /// pinned network; serve the metrics; keep a node-list file current.
    Run(run::RunArgs),
    /// What the agent sees of the Kubernetes cluster (health, nodes, policy objects).
    Cluster(cluster::ClusterArgs),
    /// Serve (or print) the datapath's Prometheus metrics.
    Metrics(metrics::MetricsArgs),
    /// Install the plugin binary and the conflist (the DaemonSet's init
    /// container); --node-name completes it for the Node as the agent does.
    Install(install::InstallArgs),
    /// Print the version.
    Version,
}

pub fn main() -> i32 {
    let cli = AgentCli::parse();
    let outcome: Result<()> = match cli.command {
        AgentCommand::Run(args) => run::run(&args),
        AgentCommand::Cluster(args) => cluster::run(&args),
        AgentCommand::Metrics(args) => metrics::run(&args),
        AgentCommand::Install(args) => install::run(&args, &crate::kube::node_info),
        AgentCommand::Version => {
            println!("ebpfcni-agent {} (bpf program {})", env!("CARGO_PKG_VERSION"), crate::datapath::BPF_ID);
            Ok(())
        }
    };
    super::exit_code("ebpfcni-agent", outcome)
}
