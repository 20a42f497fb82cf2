//! `ebpfcni-agent`: the node's Kubernetes side (watches, metrics, the
//! DaemonSet's install step), a binary of its own so that the plugin's
//! binary stays small and every ADD starts fast.

fn main() {
    std::process::exit(ebpfcni::agent_main())
}
