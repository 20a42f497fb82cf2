//! `ebpfcni pods`: one line per pod — container ID, interface, netns,
//! addresses, host veth, attach mode and what the kernel reports attached,
//! identity, isolation, packets and drops — in the spirit of
//! `cilium endpoint list`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::podview::{pods, PodView};
use super::Target;
use crate::cni::config::DEFAULT_DATA_DIR;

#[derive(Args)]
pub struct PodsArgs {
    #[command(flatten)]
    target: Target,
    /// The config's "dataDir" (where the leases name each pod's container).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(args: &PodsArgs) -> Result<()> {
    let network = args.target.network()?;
    let (dir, maps) = args.target.open()?;
    let rows = pods(&dir, &network, &maps, &args.data_dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<6} {:<24} {:<30} {:<16} {:<6} {:<10} {:>9} {:<9} {:>9} {:>7}",
        "CONTAINER",
        "IF",
        "NETNS",
        "ADDRESSES",
        "HOST VETH",
        "ATTACH",
        "STATE",
        "IDENTITY",
        "ISOLATED",
        "PACKETS",
        "DROPS"
    );
    for p in &rows {
        println!("{}", line(p));
    }
    Ok(())
}

fn line(p: &PodView) -> String {
    let or_dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    let addrs: Vec<String> = p.addresses.iter().map(ToString::to_string).collect();
    format!(
        "{:<24} {:<6} {:<24} {:<30} {:<16} {:<6} {:<10} {:>9} {:<9} {:>9} {:>7}",
        or_dash(&p.container_id),
        or_dash(&p.interface),
        or_dash(&p.netns),
        addrs.join(","),
        p.host_veth,
        p.attach_mode,
        p.state,
        p.identity.map_or("-".to_string(), |i| i.to_string()),
        p.isolation,
        p.packets,
        p.drops
    )
}
