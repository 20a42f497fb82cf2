//! `ebpfcni` is both the CNI plugin (when `CNI_COMMAND` is set, as a
//! runtime calls it) and the operator's CLI (clap subcommands otherwise).

mod cli;
mod cni;
mod datapath;
mod fnv;
mod ipam;
mod netlink;
mod node;
mod policy;

fn main() {
    match std::env::var("CNI_COMMAND") {
        Ok(command) if !command.is_empty() => std::process::exit(cni::main(&command)),
        _ => std::process::exit(cli::main()),
    }
}
