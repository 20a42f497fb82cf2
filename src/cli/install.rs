//! `ebpfcni install` / `ebpfcni-agent install`: what the DaemonSet's init
//! container (or an operator) runs on a node: the plugin binary into the
//! CNI bin directory and the conflist into the CNI config directory, both
//! replaced atomically (a runtime
//! never runs half a binary or reads half a file). The conflist replaces
//! an older ebpfcni conflist in place, under its own name; a file of
//! another plugin is never written over. With `--node-name`, the
//! conflist is completed for that Node (from the API server) exactly as
//! the node agent completes its template: pod ranges from its
//! `spec.podCIDRs`, `routing`, and the MTU of the link holding its
//! InternalIP less the tunnel's overhead; so the agent, which keeps the
//! same file, finds nothing to change.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::Value;

/// The conflist installed when none is given (conf/10-ebpfcni.conflist).
const DEFAULT_CONFLIST: &str = include_str!("../../conf/10-ebpfcni.conflist");
/// With --node-name, the node agent's template (conf/cni-template.conflist):
/// its ranges and MTU come from the Node.
const DEFAULT_TEMPLATE: &str = include_str!("../../conf/cni-template.conflist");
const CONF_NAME: &str = "10-ebpfcni.conflist";

#[derive(Args)]
pub struct InstallArgs {
    /// Where the binary goes.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// Where the conflist goes.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The conflist to install (default: the one built in,
    /// conf/10-ebpfcni.conflist; with --node-name conf/cni-template.conflist).
    /// A template's own subnet, ipam or mtu is kept, as the agent keeps it.
    #[arg(long)]
    conf: Option<PathBuf>,
    /// Directories to find chained plugins in (colon-separated), after --bin-dir.
    #[arg(long, default_value = "/opt/cni/bin:/usr/lib/cni")]
    cni_path: String,
    /// Complete the conflist for this Node, as the node agent does (the
    /// API server: --kubeconfig, else the pod's service account).
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The plugin binary to install (default: the `ebpfcni` beside this executable).
    #[arg(long)]
    binary: Option<PathBuf>,
}

/// Whether a file is a conflist (or conf) of ebpfcni's: one of its plugins is ours.
fn is_ours(v: &Value) -> bool {
    v["type"] == "ebpfcni" || v["plugins"].as_array().is_some_and(|p| p.iter().any(|p| p["type"] == "ebpfcni"))
}

/// Where the conflist goes: the existing ebpfcni conflist (in place, its
/// priority kept), else 10-ebpfcni.conflist unless another plugin's file
/// has that name.
pub fn target(conf_dir: &Path) -> Result<PathBuf> {
    let mut ours: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .with_context(|| format!("read {}", conf_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist" || x == "conf"))
        .filter(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| is_ours(&v))
        })
        .collect();
    ours.sort();
    if let Some(existing) = ours.into_iter().find(|p| p.extension().is_some_and(|x| x == "conflist")) {
        return Ok(existing);
    }
    let path = conf_dir.join(CONF_NAME);
    if path.exists() {
        bail!("{} exists and is not ebpfcni's: it is left alone; remove it or free the name", path.display());
    }
    Ok(path)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = path.file_name().ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

/// A Node as the agent sees it, from the API server (`ebpfcni-agent`'s
/// lookup; the plugin's binary links no client and refuses).
pub type NodeLookup<'a> = &'a dyn Fn(Option<&Path>, &str) -> Result<crate::agent::NodeInfo>;

pub fn run(args: &InstallArgs, lookup: NodeLookup) -> Result<()> {
    // Everything is read and checked before anything is installed.
    let text = match &args.conf {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?,
        None if args.node_name.is_some() => DEFAULT_TEMPLATE.to_string(),
        None => DEFAULT_CONFLIST.to_string(),
    };
    let mut conflist: Value = serde_json::from_str(&text).context("the conflist is not JSON")?;
    if let Some(node) = &args.node_name {
        let info = lookup(args.kubeconfig.as_deref(), node)?;
        if info.pod_cidrs.is_empty() {
            bail!("node {node} has no spec.podCIDRs yet (is the controller manager allocating node CIDRs?)");
        }
        crate::agent::complete_for_node(&mut conflist, &info)?;
    }
    std::fs::create_dir_all(&args.conf_dir).with_context(|| format!("create {}", args.conf_dir.display()))?;
    std::fs::create_dir_all(&args.bin_dir).with_context(|| format!("create {}", args.bin_dir.display()))?;
    let target = target(&args.conf_dir)?;
    let search = format!("{}:{}", args.bin_dir.display(), args.cni_path);
    let (staged, note) = super::conflist::checked(conflist, &search)?;
    println!("{note}");

    let source = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("find this executable")?.with_file_name("ebpfcni"),
    };
    let me = std::fs::read(&source).with_context(|| format!("read the plugin binary {}", source.display()))?;
    let bin = args.bin_dir.join("ebpfcni");
    replace(&bin, &me, 0o755)?;
    println!("install: {} (ebpfcni {})", bin.display(), env!("CARGO_PKG_VERSION"));
    replace(&target, &staged, 0o644)?;
    println!("install: {}", target.display());
    Ok(())
}
