//! `ebpfcni` is both the CNI plugin (when `CNI_COMMAND` is set, as a
//! runtime calls it) and the operator's CLI (clap subcommands otherwise).

mod child;
mod cli;
mod cni;
mod datapath;
mod fnv;
mod ipam;
mod kube;
mod netlink;
mod node;
mod policy;

fn main() {
    match std::env::var("CNI_COMMAND") {
        Ok(command) if !command.is_empty() => std::process::exit(cni::main(&command)),
        _ => {
            // An operator's `ebpfcni … | head` closes the pipe: end quietly
            // as every Unix tool does, instead of panicking in println!.
            // SAFETY: restoring the default disposition of one signal.
            let _ = unsafe {
                nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
            };
            std::process::exit(cli::main())
        }
    }
}
