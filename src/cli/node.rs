//! `ebpfcni node show|remove`: the node-wide state ebpfcni keeps (its
//! nftables table, the sysctls it changed), and taking it away on
//! uninstall.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use crate::node::{self, sysctl, Table};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// What ebpfcni set up on this node: forwarding, masquerading networks.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Remove one network's rules, or (without --network) all of them; the
    /// table goes with the last network and the sysctls ebpfcni changed
    /// get their earlier values back.
    Remove {
        #[arg(long)]
        network: Option<String>,
    },
}

pub fn run(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Show { json } => {
            let table = Table::read()?.unwrap_or_default();
            let v = json!({
                "ip_forward": sysctl::read(sysctl::IPV4_FORWARD).ok(),
                "ipv6_forwarding": sysctl::read(sysctl::IPV6_FORWARD).ok(),
                "table": table.exists.then(|| format!("inet {}", node::TABLE)),
                "masquerading_networks": table.masq_networks(),
                "changed_sysctls": table.recorded_sysctls().iter().map(|(k, v)| json!({"name": k, "before": v})).collect::<Vec<_>>(),
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("ip_forward: {}   ipv6 forwarding: {}", v["ip_forward"], v["ipv6_forwarding"]);
                println!("nftables table: {}", v["table"].as_str().unwrap_or("none"));
                println!("masquerading networks: {}", table.masq_networks().join(", "));
                for (k, b) in table.recorded_sysctls() {
                    println!("changed by ebpfcni: {k} (was {b})");
                }
            }
            Ok(())
        }
        NodeCommand::Remove { network } => {
            let removed = node::remove(network.as_deref())?;
            for c in &removed.chains {
                println!("removed the masquerade rules of network {c}");
            }
            for (k, v) in &removed.sysctls {
                println!("restored {k} = {v}");
            }
            if removed.table {
                println!("removed nftables table inet ebpfcni");
            }
            Ok(())
        }
    }
}
