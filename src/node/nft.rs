//! ebpfcni's own nftables table, `inet ebpfcni`, driven through `nft -j`
//! (nftables' JSON interface; kube-proxy's nftables mode programs the
//! kernel the same way, through the nft binary). Nothing outside this
//! table is ever read or changed.
//!
//! The table holds one base chain per network that masquerades
//! (`masq-<network>`, nat/postrouting), and a `state` chain whose rule
//! comments remember the sysctls ebpfcni changed and their earlier values,
//! so removing the table restores them. Every change is one `nft -f`
//! batch: applied whole or not at all. Where `ebpfcni agent` runs, a
//! network's masquerade chain first returns for destinations in the sets
//! `cluster4-<network>` and `cluster6-<network>`: every node's pod range,
//! which the agent keeps up to date element by element (pods keep their
//! own address towards pods of other nodes).

use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::ipam::Cidr;

pub const TABLE: &str = "ebpfcni";
const FAMILY: &str = "inet";
const STATE_CHAIN: &str = "state";
const MASQ_PREFIX: &str = "masq-";
/// The comment of a network chain's first rule: the hash of its rules,
/// so an unchanged network costs one listing and no write.
const SPEC_PREFIX: &str = "ebpfcni spec ";
const SYSCTL_PREFIX: &str = "ebpfcni sysctl ";
const CLUSTER_PREFIX: &str = "cluster";

/// The set of the cluster's pod ranges of one family, for one network.
fn cluster_set(network: &str, v4: bool) -> String {
    format!("{CLUSTER_PREFIX}{}-{network}", if v4 { 4 } else { 6 })
}

/// Whether the table surely holds nothing of `network` (no masquerade
/// chain, no cluster set), asked of the kernel directly; false when it
/// cannot tell, so the caller reads the table with `nft`.
pub fn has_nothing_of(network: &str) -> bool {
    let chain = format!("{MASQ_PREFIX}{network}");
    let (v4, v6) = (cluster_set(network, true), cluster_set(network, false));
    let objects = [super::nftnl::Object::Chain(&chain), super::nftnl::Object::Set(&v4), super::nftnl::Object::Set(&v6)];
    matches!(super::nftnl::any_exists(TABLE, &objects), Ok(false))
}

/// What one network needs masqueraded.
pub struct Masquerade<'a> {
    pub network: &'a str,
    pub bridge: &'a str,
    /// The network's subnets: sources to masquerade.
    pub sources: Vec<Cidr>,
    /// Destinations reached with the pod's own address.
    pub exempt: &'a [Cidr],
}

/// The table as the kernel has it: chain names and rule comments.
#[derive(Default, Debug)]
pub struct Table {
    pub exists: bool,
    pub chains: Vec<String>,
    /// (chain, comment) of every rule that has one.
    pub comments: Vec<(String, String)>,
    /// Set name -> its elements (prefixes).
    pub sets: std::collections::BTreeMap<String, Vec<Cidr>>,
}

/// An element of an interval set as `nft -j` prints it: an address or a
/// prefix.
fn set_element(v: &Value) -> Option<Cidr> {
    if let Some(s) = v.as_str() {
        let ip: std::net::IpAddr = s.parse().ok()?;
        return Some(Cidr { addr: ip, prefix: if ip.is_ipv4() { 32 } else { 128 } });
    }
    let p = v.get("prefix")?;
    Some(Cidr { addr: p["addr"].as_str()?.parse().ok()?, prefix: u8::try_from(p["len"].as_u64()?).ok()? })
}

/// Runtimes may call plugins with a bare PATH: look where Debian and
/// others install nft first.
fn nft_binary() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft")
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let input = match stdin {
        Some(text) => crate::child::stdin_of(text.as_bytes())?,
        None => Stdio::null(),
    };
    let out = Command::new(nft_binary())
        .args(args)
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("run nft (install nftables)")?;
    if !out.status.success() {
        bail!("nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Table {
    /// The table as it is; None when the node has no nft command.
    pub fn read() -> Result<Option<Table>> {
        let out = match run(&["-j", "list", "table", FAMILY, TABLE], None) {
            Ok(out) => out,
            Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {
                return Ok(None)
            }
            Err(e) if format!("{e:#}").contains("No such file or directory") => return Ok(Some(Table::default())),
            Err(e) => return Err(e),
        };
        let v: Value = serde_json::from_str(&out).context("parse nft -j output")?;
        let mut t = Table { exists: true, ..Table::default() };
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(name) = item["chain"]["name"].as_str() {
                t.chains.push(name.to_string());
            }
            if let Some(name) = item["set"]["name"].as_str() {
                let elems = item["set"]["elem"].as_array().into_iter().flatten().filter_map(set_element).collect();
                t.sets.insert(name.to_string(), elems);
            }
            let rule = &item["rule"];
            if let (Some(chain), Some(comment)) = (rule["chain"].as_str(), rule["comment"].as_str()) {
                t.comments.push((chain.to_string(), comment.to_string()));
            }
        }
        Ok(Some(t))
    }

    /// The sysctls ebpfcni changed: (name, value before).
    pub fn recorded_sysctls(&self) -> Vec<(String, String)> {
        self.comments
            .iter()
            .filter(|(c, _)| c == STATE_CHAIN)
            .filter_map(|(_, m)| m.strip_prefix(SYSCTL_PREFIX)?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn masq_networks(&self) -> Vec<String> {
        self.chains.iter().filter_map(|c| c.strip_prefix(MASQ_PREFIX)).map(str::to_string).collect()
    }

    fn has_spec(&self, chain: &str, hash: &str) -> bool {
        self.comments.iter().any(|(c, m)| c == chain && m.strip_prefix(SPEC_PREFIX) == Some(hash))
    }
}

fn table_obj() -> Value {
    json!({"family": FAMILY, "name": TABLE})
}

fn chain_obj(name: &str) -> Value {
    json!({"family": FAMILY, "table": TABLE, "name": name})
}

fn rule(chain: &str, expr: Vec<Value>, comment: Option<String>) -> Value {
    let mut r = json!({"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr});
    if let Some(c) = comment {
        r["comment"] = json!(c);
    }
    json!({"add": {"rule": r}})
}

fn addr_match(field: &str, op: &str, c: &Cidr) -> Value {
    let proto = if c.is_ipv4() { "ip" } else { "ip6" };
    json!({"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}},
                     "right": {"prefix": {"addr": c.addr.to_string(), "len": c.prefix}}}})
}

/// The rules of a network's masquerade chain: the cluster's pod ranges
/// and the exempt destinations return,
/// anything else from the network's subnets that leaves through another
/// device than the bridge takes the node's address.
fn masq_rules(m: &Masquerade<'_>) -> Vec<Vec<Value>> {
    let mut rules = Vec::new();
    for (v4, proto) in [(true, "ip"), (false, "ip6")] {
        let set = format!("@{}", cluster_set(m.network, v4));
        rules.push(vec![
            json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "daddr"}}, "right": set}}),
            json!({"return": null}),
        ]);
    }
    for e in m.exempt {
        rules.push(vec![addr_match("daddr", "==", e), json!({"return": null})]);
    }
    for s in &m.sources {
        rules.push(vec![
            addr_match("saddr", "==", s),
            json!({"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": m.bridge}}),
            json!({"masquerade": null}),
        ]);
    }
    rules
}

/// A change to the table, built up and applied in one batch.
#[derive(Default)]
pub struct Batch {
    commands: Vec<Value>,
}

impl Batch {
    fn ensure_table(&mut self) {
        if self.commands.is_empty() {
            self.commands.push(json!({"add": {"table": table_obj()}}));
        }
    }

    /// Remembers a sysctl's value from before ebpfcni changed it.
    pub fn record_sysctl(&mut self, table: &Table, name: &str, before: &str) {
        if table.recorded_sysctls().iter().any(|(k, _)| k == name) {
            return; // the first value seen is the one to restore
        }
        self.ensure_table();
        self.commands.push(json!({"add": {"chain": chain_obj(STATE_CHAIN)}}));
        self.commands.push(rule(
            STATE_CHAIN,
            vec![json!({"counter": null})],
            Some(format!("{SYSCTL_PREFIX}{name}={before}")),
        ));
    }

    /// Makes the network's masquerade chain what `m` says, if it is not.
    pub fn masquerade(&mut self, table: &Table, m: &Masquerade<'_>) {
        let chain = format!("{MASQ_PREFIX}{}", m.network);
        let rules = masq_rules(m);
        let hash = format!("{:016x}", crate::fnv::fnv1a64(format!("{rules:?}{}", m.network).as_bytes()));
        if table.has_spec(&chain, &hash) {
            return;
        }
        self.ensure_table();
        self.ensure_cluster_sets(m.network);
        let mut base = chain_obj(&chain);
        base["type"] = json!("nat");
        base["hook"] = json!("postrouting");
        base["prio"] = json!(100); // srcnat
        base["policy"] = json!("accept");
        self.commands.push(json!({"add": {"chain": base}}));
        self.commands.push(json!({"flush": {"chain": chain_obj(&chain)}}));
        self.commands.push(rule(&chain, vec![json!({"counter": null})], Some(format!("{SPEC_PREFIX}{hash}"))));
        for r in rules {
            self.commands.push(rule(&chain, r, None));
        }
    }

    fn ensure_cluster_sets(&mut self, network: &str) {
        for (v4, ty) in [(true, "ipv4_addr"), (false, "ipv6_addr")] {
            let set = json!({"family": FAMILY, "table": TABLE, "name": cluster_set(network, v4),
                             "type": ty, "flags": ["interval"]});
            self.commands.push(json!({"add": {"set": set}}));
        }
    }

    /// Makes the network's cluster sets hold exactly `ranges`, adding and
    /// deleting single elements (never flushing: a packet in between
    /// always sees every range that stays).
    pub fn cluster_ranges(&mut self, table: &Table, network: &str, ranges: &[Cidr]) {
        for v4 in [true, false] {
            let name = cluster_set(network, v4);
            let have = table.sets.get(&name);
            let want: Vec<&Cidr> = ranges.iter().filter(|r| r.is_ipv4() == v4).collect();
            let elem = |c: &Cidr| json!({"prefix": {"addr": c.network().to_string(), "len": c.prefix}});
            let set = |elems: Vec<Value>| json!({"family": FAMILY, "table": TABLE, "name": name, "elem": elems});
            let add: Vec<Value> =
                want.iter().filter(|c| !have.is_some_and(|h| h.contains(c))).map(|c| elem(c)).collect();
            let del: Vec<Value> = have.into_iter().flatten().filter(|c| !want.contains(c)).map(elem).collect();
            if have.is_none() {
                self.ensure_table();
                self.ensure_cluster_sets(network);
            }
            if !del.is_empty() {
                self.commands.push(json!({"delete": {"element": set(del)}}));
            }
            if !add.is_empty() {
                self.commands.push(json!({"add": {"element": set(add)}}));
            }
        }
    }

    /// Removes a network's masquerade chain and cluster sets, when there
    /// are any.
    pub fn remove_masquerade(&mut self, table: &Table, network: &str) {
        let chain = format!("{MASQ_PREFIX}{network}");
        if table.chains.contains(&chain) {
            self.commands.push(json!({"flush": {"chain": chain_obj(&chain)}}));
            self.commands.push(json!({"delete": {"chain": chain_obj(&chain)}}));
        }
        for v4 in [true, false] {
            let name = cluster_set(network, v4);
            if table.sets.contains_key(&name) {
                self.commands.push(json!({"delete": {"set": {"family": FAMILY, "table": TABLE, "name": name}}}));
            }
        }
    }

    /// Removes the whole table.
    pub fn delete_table(&mut self, table: &Table) {
        if table.exists {
            self.commands = vec![json!({"delete": {"table": table_obj()}})];
        }
    }

    pub fn apply(self) -> Result<()> {
        if self.commands.is_empty() {
            return Ok(());
        }
        let doc = json!({"nftables": self.commands}).to_string();
        run(&["-j", "-f", "-"], Some(&doc)).map_err(|e| anyhow!("update nftables table {FAMILY} {TABLE}: {e:#}"))?;
        Ok(())
    }
}
