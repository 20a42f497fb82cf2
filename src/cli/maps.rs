//! `ebpfcni maps dump <map>`: every map in readable form.

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{ifname, Target};
use crate::cni::result::mac_string;
use crate::datapath::{proto_name, ENDPOINT_F_TC, ENDPOINT_F_TCX};

#[derive(Subcommand)]
pub enum MapsCommand {
    /// Print one map's entries.
    Dump(DumpArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MapName {
    /// pod address -> host veth, pod MAC, attach mode
    Endpoints,
    /// host veth -> pod (anti-spoofing)
    Pods,
    /// counters per pod address
    Stats,
    /// address prefix -> identity
    Ipcache,
    /// policy entries, identities named
    Iprules,
    /// tracked connections
    Conntrack,
    /// active policy set, generation, default action
    Settings,
}

#[derive(Args)]
pub struct DumpArgs {
    map: MapName,
    #[command(flatten)]
    target: Target,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: MapsCommand) -> Result<()> {
    match cmd {
        MapsCommand::Dump(args) => dump(&args),
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

/// Prints rows as JSON or as a table under `header`.
fn emit(
    json_out: bool,
    rows: Vec<serde_json::Value>,
    header: &str,
    line: impl Fn(&serde_json::Value) -> String,
) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{header}");
        for r in &rows {
            println!("{}", line(r));
        }
    }
    Ok(())
}

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn dump(args: &DumpArgs) -> Result<()> {
    let (_, maps) = args.target.open()?;
    let j = args.json;
    match args.map {
        MapName::Endpoints => {
            let rows = maps.endpoints()?.iter().map(|e| json!({"ip": e.ip, "ifindex": e.ifindex, "interface": ifname(e.ifindex), "mac": mac_string(e.mac), "attach": attach_name(e.flags)})).collect();
            emit(j, rows, &format!("{:<40} {:>7} {:<16} {:<17} ATTACH", "IP", "IFINDEX", "HOST VETH", "POD MAC"), |r| {
                format!(
                    "{:<40} {:>7} {:<16} {:<17} {}",
                    s(&r["ip"]),
                    s(&r["ifindex"]),
                    s(&r["interface"]),
                    s(&r["mac"]),
                    s(&r["attach"])
                )
            })
        }
        MapName::Pods => {
            let rows = maps.pods()?.iter().map(|p| json!({"ifindex": p.ifindex, "interface": ifname(p.ifindex), "ip": p.addr, "mac": mac_string(p.mac)})).collect();
            emit(j, rows, &format!("{:>7} {:<16} {:<40} POD MAC", "IFINDEX", "HOST VETH", "POD IP"), |r| {
                format!("{:>7} {:<16} {:<40} {}", s(&r["ifindex"]), s(&r["interface"]), s(&r["ip"]), s(&r["mac"]))
            })
        }
        MapName::Stats => {
            let rows = maps.stats()?.iter().map(|x| serde_json::to_value(x).expect("stats serialize")).collect();
            emit(
                j,
                rows,
                &format!(
                    "{:<40} {:>9} {:>11} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    "POD IP", "PACKETS", "BYTES", "REDIRECTED", "PASSED", "SPOOFED", "POLICY", "NO-EP", "PARSE"
                ),
                |r| {
                    format!(
                        "{:<40} {:>9} {:>11} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
                        s(&r["ip"]),
                        s(&r["packets"]),
                        s(&r["bytes"]),
                        s(&r["redirected"]),
                        s(&r["passed"]),
                        s(&r["drop_spoofed"]),
                        s(&r["drop_policy"]),
                        s(&r["drop_no_endpoint"]),
                        s(&r["drop_parse"])
                    )
                },
            )
        }
        MapName::Ipcache => {
            let active = maps.settings()?.active_set as u8;
            let rows = maps.ipcache()?.iter().map(|e| json!({"set": e.set, "active": e.set == active, "kind": e.kind, "prefix": e.prefix.to_string(), "identity": e.identity})).collect();
            emit(j, rows, &format!("{:<44} {:<9} {:>10} SET", "PREFIX", "KIND", "IDENTITY"), |r| {
                format!(
                    "{:<44} {:<9} {:>10} {}{}",
                    s(&r["prefix"]),
                    s(&r["kind"]),
                    s(&r["identity"]),
                    s(&r["set"]),
                    if r["active"] == true { " (active)" } else { "" }
                )
            })
        }
        MapName::Iprules => {
            let rows = crate::policy::describe(&maps)?
                .iter()
                .map(|v| serde_json::to_value(v).expect("rule serializes"))
                .collect();
            emit(
                j,
                rows,
                &format!(
                    "{:>5} {:<8} {:<30} {:<30} {:<6} {:>11} VERDICT",
                    "RULE", "DIR", "SUBJECT", "PEER", "PROTO", "PORT"
                ),
                |r| {
                    let port = if r["end_port"] == r["port"] {
                        s(&r["port"])
                    } else {
                        format!("{}-{}", s(&r["port"]), s(&r["end_port"]))
                    };
                    format!(
                        "{:>5} {:<8} {:<30} {:<30} {:<6} {:>11} {}",
                        s(&r["rule"]),
                        s(&r["direction"]),
                        s(&r["subject"]),
                        s(&r["peer"]),
                        s(&r["proto"]),
                        port,
                        s(&r["verdict"])
                    )
                },
            )
        }
        MapName::Conntrack => {
            let rows = maps.conntrack()?.iter().map(|c| json!({"src": c.src, "sport": c.sport, "dst": c.dst, "dport": c.dport, "proto": proto_name(c.proto), "generation": c.generation})).collect();
            emit(j, rows, &format!("{:<46} {:<46} {:<6} GEN", "SOURCE", "DESTINATION", "PROTO"), |r| {
                format!(
                    "{:<46} {:<46} {:<6} {}",
                    format!("{}:{}", s(&r["src"]), s(&r["sport"])),
                    format!("{}:{}", s(&r["dst"]), s(&r["dport"])),
                    s(&r["proto"]),
                    s(&r["generation"])
                )
            })
        }
        MapName::Settings => {
            let st = maps.settings()?;
            let row = json!({"active_set": st.active_set, "generation": st.generation, "default_action": if st.default_deny { "deny" } else { "allow" }, "trace_flows": st.flags & crate::datapath::SETTINGS_F_TRACE_FLOWS != 0});
            emit(j, vec![row], "SETTINGS", |r| r.to_string())
        }
    }
}
