//! `ebpfcni policy allow|deny|delete|list|sync`.

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};

use super::Target;
use crate::datapath::{lock_dir, proto_number, RuleBook};
use crate::policy::{self, Rule};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Allow traffic from SRC to DST (pod address, CIDR or "any"); replies pass too.
    Allow(RuleArgs),
    /// Deny traffic from SRC to DST; explicit denies win over allows.
    Deny(RuleArgs),
    /// Delete a rule by its number (see `policy list`).
    Delete {
        rule: u32,
        #[command(flatten)]
        target: Target,
    },
    /// List the active rules, one row each, as written (synced ones named by their policy).
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Replace all rules with what Kubernetes NetworkPolicies mean, from
    /// `kubectl get pods,networkpolicies -A -o json` (namespaces optional).
    Sync {
        /// The JSON file, or - for standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args)]
pub struct RuleArgs {
    src: String,
    dst: String,
    /// tcp, udp, sctp, icmp, icmpv6, a number, or any.
    #[arg(long, default_value = "any")]
    proto: String,
    /// Destination port (0: any).
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[command(flatten)]
    target: Target,
}

fn rule(args: &RuleArgs, deny: bool) -> Result<Rule> {
    Ok(Rule {
        src: args.src.parse().with_context(|| format!("source {}", args.src))?,
        dst: args.dst.parse().with_context(|| format!("destination {}", args.dst))?,
        proto: proto_number(&args.proto).ok_or_else(|| anyhow!("unknown protocol {:?}", args.proto))?,
        port: args.port,
        deny,
    })
}

pub fn run(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Allow(args) => add(&args, false),
        PolicyCommand::Deny(args) => add(&args, true),
        PolicyCommand::Delete { rule, target } => {
            let (dir, maps) = target.open()?;
            let _lock = lock_dir(&dir)?;
            if !policy::delete_rule(&maps, &RuleBook::open(&dir)?, rule)? {
                bail!("no rule {rule}");
            }
            println!("deleted rule {rule}");
            Ok(())
        }
        PolicyCommand::List { target, json } => {
            let (dir, maps) = target.open()?;
            let book = RuleBook::open_if_pinned(&dir)?.map(|b| b.all()).transpose()?.unwrap_or_default();
            let rows = policy::list_rules(&maps, &book)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:>5} {:<24} {:<7} {:<30} {:<30} {:<6} {:>5} {:>7}",
                    "RULE", "POLICY", "VERDICT", "SOURCE", "DESTINATION", "PROTO", "PORT", "ENTRIES"
                );
                for r in rows {
                    let port = if r.port == 0 { "any".to_string() } else { r.port.to_string() };
                    let name = if r.name.is_empty() { "-" } else { &r.name };
                    println!(
                        "{:>5} {:<24} {:<7} {:<30} {:<30} {:<6} {:>5} {:>7}",
                        r.rule, name, r.verdict, r.src, r.dst, r.proto, port, r.entries
                    );
                }
            }
            Ok(())
        }
        PolicyCommand::Sync { file, target } => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            }
            let input: serde_json::Value = serde_json::from_str(&text).context("parse Kubernetes objects")?;
            let (dir, maps) = target.open()?;
            let _lock = lock_dir(&dir)?;
            let mut compiled = policy::k8s::compile(&input, &policy::current(&maps)?, &node_addresses())?;
            policy::link_locals_follow_pods(&maps, &mut compiled.set)?;
            let new = &compiled.set;
            policy::apply(&maps, new)?;
            policy::report::save(&dir, &compiled.errors)?;
            let book = RuleBook::open(&dir)?;
            book.clear()?;
            for (rule, name) in &new.names {
                book.put(*rule, &serde_json::json!({ "name": name, "src": "-", "dst": "-" }).to_string())?;
            }
            println!(
                "synced: {} addresses, {} prefixes, {} isolated, {} entries",
                new.endpoints.len(),
                new.cidrs.len(),
                new.isolation.len(),
                new.entries.len()
            );
            if !compiled.errors.is_empty() {
                for e in &compiled.errors {
                    eprintln!("error: {e}");
                }
                bail!(
                    "{} NetworkPolicy problem(s): every other policy is applied; the pods of a broken one stay isolated",
                    compiled.errors.len()
                );
            }
            Ok(())
        }
    }
}

/// This node's own addresses (its pods reach it and it them whatever the
/// NetworkPolicies): every address of the host's interfaces but loopback
/// and IPv6 link-local ones.
fn node_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn add(args: &RuleArgs, deny: bool) -> Result<()> {
    let rule = rule(args, deny)?;
    let (dir, maps) = args.target.open()?;
    let _lock = lock_dir(&dir)?;
    let id = policy::add_rule(&maps, &RuleBook::open(&dir)?, &rule)?;
    let port = if rule.port == 0 { String::new() } else { format!(" port {}", rule.port) };
    println!(
        "rule {id}: {} {} -> {} {}{port}",
        if deny { "deny" } else { "allow" },
        rule.src,
        rule.dst,
        crate::datapath::proto_name(rule.proto)
    );
    Ok(())
}
