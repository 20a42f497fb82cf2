//! What one node needs beyond its pods: forwarding turned on and
//! ebpfcni's own nftables table (masquerade for `ipMasq`). ADD converges
//! the node on the network's config (one `nft` listing when nothing has
//! changed); `ebpfcni node remove` takes it away again and restores the
//! sysctls ebpfcni changed.

mod nft;
mod nftnl;
pub mod sysctl;

use anyhow::{bail, Result};

use crate::cni::config::NetConf;
pub use nft::{Table, TABLE};

/// Brings the node in line with `conf`: forwarding for the families the
/// network has, the network's masquerade chain present or absent.
pub fn ensure(conf: &NetConf) -> Result<()> {
    let mut changed = Vec::new();
    if conf.ip_forward {
        let families = |v4: bool| conf.rangesets.iter().flatten().any(|r| r.subnet.is_ipv4() == v4);
        for (name, wanted) in [(sysctl::IPV4_FORWARD, families(true)), (sysctl::IPV6_FORWARD, families(false))] {
            if wanted {
                if let Some(before) = sysctl::ensure(name, "1")? {
                    changed.push((name, before));
                }
            }
        }
    }
    if !conf.ip_masq && changed.is_empty() && nft::has_nothing_of(&conf.name) {
        return Ok(()); // nothing to write, nothing of ours to take away
    }
    let Some(table) = Table::read()? else {
        if conf.ip_masq {
            bail!("ipMasq needs the nft command (nftables) on the node");
        }
        return Ok(()); // nothing to keep a record of the sysctls in
    };
    let mut batch = nft::Batch::default();
    for (name, before) in &changed {
        batch.record_sysctl(&table, name, before);
    }
    if conf.ip_masq {
        let sources = conf.rangesets.iter().flatten().map(|r| r.subnet).collect();
        let m = nft::Masquerade { network: &conf.name, bridge: &conf.bridge, sources, exempt: &conf.no_masquerade };
        batch.masquerade(&table, &m);
    } else {
        batch.remove_masquerade(&table, &conf.name);
    }
    batch.apply()
}

/// Makes the network's cluster sets (destinations its masquerade chain
/// leaves alone) hold exactly `ranges`: every node's pod range. Nothing
/// to keep without `ipMasq`.
pub fn ensure_cluster_ranges(conf: &NetConf, ranges: &[crate::ipam::Cidr]) -> Result<()> {
    if !conf.ip_masq {
        return Ok(());
    }
    let Some(table) = Table::read()? else { bail!("ipMasq needs the nft command (nftables) on the node") };
    let mut batch = nft::Batch::default();
    batch.cluster_ranges(&table, &conf.name, ranges);
    batch.apply()
}

/// The cluster ranges the network's sets hold now.
pub fn cluster_ranges(network: &str) -> Result<Vec<crate::ipam::Cidr>> {
    let Some(table) = Table::read()? else { return Ok(Vec::new()) };
    Ok([4, 6]
        .iter()
        .flat_map(|f| table.sets.get(&format!("cluster{f}-{network}")).cloned().unwrap_or_default())
        .collect())
}

/// What `remove` took away.
#[derive(Debug, Default)]
pub struct Removed {
    pub chains: Vec<String>,
    pub table: bool,
    pub sysctls: Vec<(String, String)>,
}

/// Removes one network's rules (`Some`), or everything (`None`). When no
/// network is left the table goes, and every sysctl ebpfcni changed gets
/// its earlier value back.
pub fn remove(network: Option<&str>) -> Result<Removed> {
    let mut removed = Removed::default();
    let Some(table) = Table::read()? else { return Ok(removed) };
    let remaining: Vec<String> = table.masq_networks().into_iter().filter(|n| Some(n.as_str()) != network).collect();
    let mut batch = nft::Batch::default();
    if network.is_none() || remaining.is_empty() {
        for (name, before) in table.recorded_sysctls() {
            sysctl::write(&name, &before)?;
            removed.sysctls.push((name, before));
        }
        removed.chains = table.masq_networks();
        removed.table = table.exists;
        batch.delete_table(&table);
    } else if let Some(n) = network {
        batch.remove_masquerade(&table, n);
        removed.chains = table.masq_networks().into_iter().filter(|c| c == n).collect();
    }
    batch.apply()?;
    Ok(removed)
}
