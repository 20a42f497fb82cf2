//! The operator's CLI: `ebpfcni maps dump …`, `ebpfcni version`. Human
//! tables by default, `--json` for scripts.

mod maps;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ebpfcni", version, about = "eBPF CNI plugin: inspect the node's datapath")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect the pinned BPF maps.
    Maps {
        #[command(subcommand)]
        command: maps::MapsCommand,
    },
    /// Print the plugin version, the BPF program identity and CNI versions.
    Version,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Maps { command } => maps::run(command),
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
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ebpfcni: {e:#}");
            1
        }
    }
}
