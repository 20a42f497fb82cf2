//! `ebpfcni repair [FILE...]`: for each ebpfcni network (default: every
//! conflist in /etc/cni/net.d that configures one), rebuild what the pins
//! lost and attach every running pod again. Idempotent; the plugin does
//! the same by itself at its next call.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::cni::repair;

const CONF_DIR: &str = "/etc/cni/net.d";

#[derive(Args)]
pub struct RepairArgs {
    /// Conflists to repair the networks of (default: every one in /etc/cni/net.d that configures ebpfcni).
    files: Vec<PathBuf>,
}

pub fn run(args: &RepairArgs) -> Result<()> {
    let files = if args.files.is_empty() { installed() } else { args.files.clone() };
    if files.is_empty() {
        bail!("no conflist in {CONF_DIR} configures ebpfcni: name one");
    }
    for file in files {
        let conf = super::conflist::net_conf(&file)?;
        let (fresh, pods) = repair::repair(&conf)?;
        let rebuilt = if fresh.is_empty() { "none".to_string() } else { fresh.join(", ") };
        println!("network {}: maps rebuilt: {rebuilt}; pods attached: {pods}", conf.name);
    }
    Ok(())
}

fn installed() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(CONF_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .filter(|p| super::conflist::net_conf(p).is_ok())
        .collect();
    out.sort();
    out
}
