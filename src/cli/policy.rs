//! `ebpfcni policy allow|deny|delete|list|sync`.

use std::io::Read;
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
            let synced = policy::sync_objects(&dir, &maps, &input, false)?;
            println!(
                "synced: {} addresses, {} prefixes, {} isolated, {} entries",
                synced.endpoints, synced.prefixes, synced.isolated, synced.entries
            );
            if !synced.errors.is_empty() {
                for e in &synced.errors {
                    eprintln!("error: {e}");
                }
                bail!(
                    "{} NetworkPolicy problem(s): every other policy is applied; the pods of a broken one stay isolated",
                    synced.errors.len()
                );
            }
            Ok(())
        }
    }
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
