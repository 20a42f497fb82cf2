//! `ebpfcni maps dump endpoints|stats|iprules`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::cni::config::DEFAULT_PIN_PATH;
use crate::cni::result::mac_string;
use crate::datapath::{self, Maps, ENDPOINT_F_TC, ENDPOINT_F_TCX};

#[derive(Subcommand)]
pub enum MapsCommand {
    /// Print one map's entries.
    Dump(DumpArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MapName {
    Endpoints,
    Stats,
    Iprules,
}

#[derive(Args)]
pub struct DumpArgs {
    map: MapName,
    /// The network's name (the config's "name"); default: the only one pinned.
    #[arg(long)]
    network: Option<String>,
    /// The config's "bpfPinPath".
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: MapsCommand) -> Result<()> {
    match cmd {
        MapsCommand::Dump(args) => dump(&args),
    }
}

fn pick_network(args: &DumpArgs) -> Result<String> {
    if let Some(n) = &args.network {
        return Ok(n.clone());
    }
    let mut names: Vec<String> = std::fs::read_dir(&args.pin_path)
        .map_err(|e| {
            anyhow::anyhow!("read {}: {e} (is ebpfcni installed and a pod running?)", args.pin_path.display())
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("endpoints").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    match names.len() {
        1 => Ok(names.remove(0)),
        0 => bail!("no network is pinned under {}", args.pin_path.display()),
        _ => bail!("several networks are pinned ({}): choose one with --network", names.join(", ")),
    }
}

fn attach_name(flags: u16) -> &'static str {
    if flags & ENDPOINT_F_TCX != 0 {
        "tcx"
    } else if flags & ENDPOINT_F_TC != 0 {
        "tc"
    } else {
        "-"
    }
}

fn ifname(index: u32) -> String {
    nix::net::if_::if_indextoname(index).map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|_| "?".into())
}

fn dump(args: &DumpArgs) -> Result<()> {
    let network = pick_network(args)?;
    let dir = datapath::network_dir(&args.pin_path, &network);
    let Some(maps) = Maps::open_if_pinned(&dir)? else {
        bail!("network {network} has no maps pinned under {}", dir.display());
    };
    match args.map {
        MapName::Endpoints => {
            let eps = maps.endpoints()?;
            if args.json {
                let v: Vec<_> = eps
                    .iter()
                    .map(|e| json!({"ip": e.ip, "ifindex": e.ifindex, "interface": ifname(e.ifindex), "mac": mac_string(e.mac), "attach": attach_name(e.flags)}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<40} {:>7} {:<16} {:<17} ATTACH", "IP", "IFINDEX", "HOST VETH", "POD MAC");
                for e in &eps {
                    println!(
                        "{:<40} {:>7} {:<16} {:<17} {}",
                        e.ip,
                        e.ifindex,
                        ifname(e.ifindex),
                        mac_string(e.mac),
                        attach_name(e.flags)
                    );
                }
            }
        }
        MapName::Stats => {
            let st = maps.stats()?;
            if args.json {
                let v: Vec<_> = st
                    .iter()
                    .map(|s| json!({"ip": s.ip, "packets": s.packets, "bytes": s.bytes, "redirected": s.redirected, "passed": s.passed}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<40} {:>10} {:>12} {:>10} {:>10}", "SOURCE IP", "PACKETS", "BYTES", "REDIRECTED", "PASSED");
                for s in &st {
                    println!("{:<40} {:>10} {:>12} {:>10} {:>10}", s.ip, s.packets, s.bytes, s.redirected, s.passed);
                }
            }
        }
        MapName::Iprules => {
            let rules = maps.iprules()?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
            } else {
                println!("{:<40} {:<40} {:<6} {:>5} VERDICT", "SOURCE", "DESTINATION", "PROTO", "PORT");
                for r in &rules {
                    println!("{:<40} {:<40} {:<6} {:>5} {}", r.src, r.dst, r.proto, r.port, r.verdict);
                }
            }
        }
    }
    Ok(())
}
