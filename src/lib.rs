//! The crate behind two binaries: `ebpfcni` (src/main.rs), the CNI plugin
//! and the operator's CLI, which links no Kubernetes client so that every
//! ADD starts fast; and `ebpfcni-agent` (src/bin/ebpfcni-agent.rs), the
//! node's daemon side: the Kubernetes watches (src/kube/) and the
//! Prometheus endpoint (src/metrics/).

mod agent;
mod child;
mod cli;
mod cni;
mod datapath;
mod fnv;
mod ipam;
mod kube;
mod metrics;
mod netlink;
mod node;
mod policy;

/// `ebpfcni`: CNI mode when `CNI_COMMAND` is set, the CLI otherwise.
pub fn plugin_main() -> i32 {
    match std::env::var("CNI_COMMAND") {
        Ok(command) if !command.is_empty() => cni::main(&command),
        _ => {
            restore_sigpipe();
            cli::main()
        }
    }
}

/// `ebpfcni-agent`: the Kubernetes side of the node.
pub fn agent_main() -> i32 {
    restore_sigpipe();
    cli::agent::main()
}

/// An operator's `ebpfcni … | head` closes the pipe: end quietly as every
/// Unix tool does, instead of panicking in println!.
fn restore_sigpipe() {
    // SAFETY: restoring the default disposition of one signal.
    let _ =
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
}
