//! `ebpfcni` is both the CNI plugin (when `CNI_COMMAND` is set, as a
//! runtime calls it) and the operator's CLI (clap subcommands otherwise).
//! It links no Kubernetes client: that is `ebpfcni-agent`'s.

fn main() {
    std::process::exit(ebpfcni::plugin_main())
}
