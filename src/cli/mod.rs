//! The operator's CLI: `ebpfcni maps dump …`, `policy …`, `monitor`,
//! `version`. Human tables by default, `--json` for scripts.

pub mod agent;
mod bench;
mod bench_net;
mod cluster;
pub(crate) mod conflist;
pub(crate) mod install;
mod maps;
mod metrics;
mod monitor;
mod node;
mod node_agent;
mod pods;
mod podview;
mod policy;
mod repair;
mod run;
mod status;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::cni::config::DEFAULT_PIN_PATH;
use crate::datapath::{self, Maps};

#[derive(Parser)]
#[command(name = "ebpfcni", version, about = "eBPF CNI plugin: inspect and steer the node's datapath")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The node daemon: peers from a NodeList file to routes or the tunnel map, node rules, the CNI config.
    Agent(node_agent::AgentArgs),
    /// Inspect the pinned BPF maps.
    Maps {
        #[command(subcommand)]
        command: maps::MapsCommand,
    },
    /// Hand-made rules and Kubernetes NetworkPolicy sync (the iprules map).
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Stream the datapath's events: drops always, flows with --flows.
    Monitor(monitor::MonitorArgs),
    /// The node's own rules: show them, or remove them (uninstall).
    Node {
        #[command(subcommand)]
        command: node::NodeCommand,
    },
    /// The node's and each network's datapath at a glance.
    Status(status::StatusArgs),
    /// One line per pod: container, netns, addresses, veth, attachment, identity, counters.
    Pods(pods::PodsArgs),
    /// Rebuild lost or outdated maps and attachments of running pods from
    /// the lease store and the node's links (after bpffs was remounted or wiped).
    Repair(repair::RepairArgs),
    /// Install this binary and the conflist on the node (the DaemonSet's init container).
    Install(install::InstallArgs),
    /// Print the plugin version, the BPF program identity and CNI versions.
    Version,
    /// Validates a conflist and picks its CNI version (scripts/install.sh).
    #[command(hide = true)]
    Conflist(conflist::ConflistArgs),
    /// Ends flow tracing when the monitor that started it is gone.
    #[command(hide = true)]
    MonitorGuard(monitor::GuardArgs),
    /// Deletes a pod's veth after its DEL, holding the attachment's lock (src/cni/teardown.rs).
    #[command(hide = true)]
    TeardownVeth {
        #[arg(long)]
        veth: String,
        #[arg(long)]
        ifindex: u32,
        #[arg(long)]
        pin_dir: PathBuf,
    },
    /// Nanoseconds per packet of the classifier (BPF_PROG_TEST_RUN).
    #[command(hide = true)]
    BenchDatapath(bench::BenchArgs),
    /// TCP stream throughput and request/response latency (scripts/bench.sh).
    #[command(hide = true, subcommand)]
    BenchNet(bench_net::BenchNet),
}

/// Which network's pins a command works on.
#[derive(Args, Clone)]
pub struct Target {
    /// The network's name (the config's "name"); default: the only one pinned.
    #[arg(long, global = true)]
    network: Option<String>,
    /// The config's "bpfPinPath".
    #[arg(long, global = true, default_value = DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
}

impl Target {
    fn network(&self) -> Result<String> {
        if let Some(n) = &self.network {
            return Ok(n.clone());
        }
        let mut names: Vec<String> = std::fs::read_dir(&self.pin_path)
            .map_err(|e| {
                anyhow::anyhow!("read {}: {e} (is ebpfcni installed and a pod running?)", self.pin_path.display())
            })?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("endpoints").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        match names.len() {
            1 => Ok(names.remove(0)),
            0 => bail!("no network is pinned under {}", self.pin_path.display()),
            _ => bail!("several networks are pinned ({}): choose one with --network", names.join(", ")),
        }
    }

    /// The network's pin directory and its maps.
    fn open(&self) -> Result<(PathBuf, Maps)> {
        let network = self.network()?;
        let dir = datapath::network_dir(&self.pin_path, &network);
        match Maps::open_if_pinned(&dir)? {
            Some(maps) => Ok((dir, maps)),
            None => bail!("network {network} has no maps pinned under {}", dir.display()),
        }
    }
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Agent(args) => node_agent::run(&args),
        Command::Maps { command } => maps::run(command),
        Command::Policy { command } => policy::run(command),
        Command::Monitor(args) => monitor::run(&args),
        Command::MonitorGuard(args) => monitor::guard(&args),
        Command::Conflist(args) => conflist::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Node { command } => node::run(command),
        Command::Pods(args) => pods::run(&args),
        Command::Repair(args) => repair::run(&args),
        Command::Install(args) => {
            install::run(&args, &|_, _| {
                anyhow::bail!("--node-name asks the API server: run `ebpfcni-agent install` (this binary links no Kubernetes client)")
            })
        }
        Command::TeardownVeth { veth, ifindex, pin_dir } => crate::cni::teardown::run(&veth, ifindex, &pin_dir),
        Command::BenchDatapath(args) => bench::run(&args),
        Command::BenchNet(cmd) => bench_net::run(&cmd),
        Command::Version => {
            println!(
                "ebpfcni {} (bpf program {}, CNI spec {})",
                env!("CARGO_PKG_VERSION"),
                crate::datapath::BPF_ID,
                crate::cni::version::SUPPORTED.join(", ")
            );
            Ok(())
        }
    };
    exit_code("ebpfcni", outcome)
}

fn exit_code(me: &str, outcome: Result<()>) -> i32 {
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{me}: {e:#}");
            1
        }
    }
}

/// The host interface's name for display ("?" when it is gone).
pub fn ifname(index: u32) -> String {
    nix::net::if_::if_indextoname(index).map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|_| "?".into())
}
