//! `ebpfcni maps dump <map>`: every map in readable form, as a table or as
//! JSON, optionally narrowed to the rows of one address (`--ip`) or one pod
//! (`--pod`, a container ID or host veth).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::{ifname, Target};
use crate::cni::config::DEFAULT_DATA_DIR;
use crate::cni::result::mac_string;
use crate::datapath::{proto_name, ENDPOINT_F_HOST_FLOWS, ENDPOINT_F_TC, ENDPOINT_F_TCX};

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
    /// flows that reached a pod through the host (replies return that way)
    Hostflows,
    /// isolated identities per policy set
    #[value(name = "identity_flags", alias = "identity-flags")]
    IdentityFlags,
    /// active policy set, generation, default action
    Settings,
    /// drop and flow events queued in the ring buffer (reading consumes them)
    Events,
}

#[derive(Args)]
pub struct DumpArgs {
    map: MapName,
    #[command(flatten)]
    target: Target,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Only rows about this address.
    #[arg(long)]
    ip: Option<IpAddr>,
    /// Only rows about this pod: its container ID or host veth.
    #[arg(long)]
    pod: Option<String>,
    /// The config's "dataDir" (to find a pod by container ID).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

/// What `--ip` / `--pod` select: addresses, a host veth, identities.
#[derive(Default)]
struct Filter {
    ips: Vec<IpAddr>,
    ifindex: Option<u32>,
    identities: Vec<u32>,
}

impl Filter {
    fn build(args: &DumpArgs, maps: &crate::datapath::Maps, dir: &std::path::Path) -> Result<Option<Filter>> {
        let mut f = Filter::default();
        if let Some(ip) = args.ip {
            f.ips.push(ip);
        } else if let Some(pod) = &args.pod {
            let network = args.target.network()?;
            let rows = super::podview::pods(dir, &network, maps, &args.data_dir)?;
            let p = rows
                .into_iter()
                .find(|p| p.container_id == *pod || p.host_veth == *pod)
                .with_context(|| format!("no pod {pod:?} (a container ID or host veth) in network {network}"))?;
            f.ips = p.addresses;
            f.ifindex = Some(p.ifindex);
        } else {
            return Ok(None);
        }
        let active = maps.settings()?.active_set as u8 & 1;
        for ip in &f.ips {
            f.identities.extend(maps.identity_of(active, *ip)?);
        }
        Ok(Some(f))
    }

    /// Whether a dumped row is about the selected addresses.
    fn keeps(&self, row: &Value) -> bool {
        let ip_of = |k: &str| row[k].as_str().and_then(|s| s.parse::<IpAddr>().ok());
        let names_ip = |k: &str| {
            row[k].as_str().is_some_and(|s| s.split(',').any(|p| self.ips.iter().any(|ip| p == ip.to_string())))
        };
        ["ip", "src", "dst"].iter().any(|k| ip_of(k).is_some_and(|ip| self.ips.contains(&ip)))
            || row["ifindex"].as_u64().is_some_and(|i| Some(i as u32) == self.ifindex)
            || row["prefix"]
                .as_str()
                .and_then(|p| p.parse::<crate::ipam::Cidr>().ok())
                .is_some_and(|c| self.ips.iter().any(|ip| c.contains(*ip)))
            || row["identity"].as_u64().is_some_and(|i| self.identities.contains(&(i as u32)))
            || names_ip("subject")
            || names_ip("peer")
    }
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

/// The events queued in the ring buffer, read (and so consumed) as the
/// network's one events reader: refused while a monitor runs.
fn queued_events(dir: &std::path::Path, maps: &crate::datapath::Maps) -> Result<Vec<Value>> {
    let _reader = crate::datapath::claim_events(dir, maps, false)?;
    let pods: std::collections::HashMap<u32, IpAddr> = maps.pods()?.into_iter().map(|p| (p.ifindex, p.addr)).collect();
    let rows = std::cell::RefCell::new(Vec::new());
    let bad = std::cell::RefCell::new(None);
    let ring = maps.events_ring(|e| {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                *bad.borrow_mut() = Some(err);
                return -1;
            }
        };
        let pod = super::monitor::pod_name(&pods, e.ifindex);
        let mut v = serde_json::to_value(&e).unwrap_or_default();
        v["pod"] = json!(pod);
        v["line"] = json!(super::monitor::line(&e, &pod));
        rows.borrow_mut().push(v);
        0
    })?;
    let consumed = ring.consume();
    drop(ring);
    if let Some(err) = bad.into_inner() {
        return Err(err);
    }
    consumed.context("read events")?;
    Ok(rows.into_inner())
}

/// Prints rows as JSON or as a table under `header`.
fn emit(json_out: bool, rows: Vec<Value>, header: &str, line: &dyn Fn(&Value) -> String) -> Result<()> {
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
    let (dir, maps) = args.target.open()?;
    let filter = Filter::build(args, &maps, &dir)?;
    if filter.is_some() && matches!(args.map, MapName::Settings) {
        bail!("settings is one entry for the whole network: --ip and --pod do not apply");
    }
    let j = args.json;
    let emit = |json_out: bool, rows: Vec<Value>, header: &str, line: &dyn Fn(&Value) -> String| {
        let rows = rows.into_iter().filter(|r| filter.as_ref().is_none_or(|f| f.keeps(r))).collect();
        emit(json_out, rows, header, line)
    };
    match args.map {
        MapName::Endpoints => {
            let rows = maps.endpoints()?.iter().map(|e| json!({"ip": e.ip, "ifindex": e.ifindex, "interface": ifname(e.ifindex), "mac": mac_string(e.mac), "attach": attach_name(e.flags), "host_flows": e.flags & ENDPOINT_F_HOST_FLOWS != 0})).collect();
            emit(
                j,
                rows,
                &format!("{:<40} {:>7} {:<16} {:<17} ATTACH", "IP", "IFINDEX", "HOST VETH", "POD MAC"),
                &|r: &Value| {
                    format!(
                        "{:<40} {:>7} {:<16} {:<17} {}",
                        s(&r["ip"]),
                        s(&r["ifindex"]),
                        s(&r["interface"]),
                        s(&r["mac"]),
                        s(&r["attach"])
                    )
                },
            )
        }
        MapName::Pods => {
            let rows = maps.pods()?.iter().map(|p| json!({"ifindex": p.ifindex, "interface": ifname(p.ifindex), "ip": p.addr, "mac": mac_string(p.mac)})).collect();
            emit(j, rows, &format!("{:>7} {:<16} {:<40} POD MAC", "IFINDEX", "HOST VETH", "POD IP"), &|r: &Value| {
                format!("{:>7} {:<16} {:<40} {}", s(&r["ifindex"]), s(&r["interface"]), s(&r["ip"]), s(&r["mac"]))
            })
        }
        MapName::Stats => {
            let rows = maps.stats()?.iter().map(|x| serde_json::to_value(x).expect("stats serialize")).collect();
            emit(
                j,
                rows,
                &format!(
                    "{:<40} {:>9} {:>11} {:>10} {:>8} {:>8} {:>15} {:>15}",
                    "POD IP",
                    "PACKETS",
                    "BYTES",
                    "REDIRECTED",
                    "PASSED",
                    "SPOOFED",
                    "POLICY (OUT/IN)",
                    "PARSE (OUT/IN)"
                ),
                &|r: &Value| {
                    let split = |what: &str| {
                        format!(
                            "{} ({}/{})",
                            s(&r[what]),
                            s(&r[format!("{what}_egress").as_str()]),
                            s(&r[format!("{what}_ingress").as_str()])
                        )
                    };
                    format!(
                        "{:<40} {:>9} {:>11} {:>10} {:>8} {:>8} {:>15} {:>15}",
                        s(&r["ip"]),
                        s(&r["packets"]),
                        s(&r["bytes"]),
                        s(&r["redirected"]),
                        s(&r["passed"]),
                        s(&r["drop_spoofed"]),
                        split("drop_policy"),
                        split("drop_parse")
                    )
                },
            )
        }
        MapName::Ipcache => {
            let active = maps.settings()?.active_set as u8;
            let rows = maps.ipcache()?.iter().map(|e| json!({"set": e.set, "active": e.set == active, "kind": e.kind, "prefix": e.prefix.to_string(), "identity": e.identity})).collect();
            emit(j, rows, &format!("{:<44} {:<9} {:>10} SET", "PREFIX", "KIND", "IDENTITY"), &|r: &Value| {
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
                &|r: &Value| {
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
            let rows = maps.conntrack()?.iter().map(|c| json!({"src": c.src, "sport": c.sport, "dst": c.dst, "dport": c.dport, "proto": proto_name(c.proto), "generation": c.generation, "established": c.established})).collect();
            emit(j, rows, &format!("{:<46} {:<46} {:<6} GEN", "SOURCE", "DESTINATION", "PROTO"), &|r: &Value| {
                format!(
                    "{:<46} {:<46} {:<6} {}",
                    format!("{}:{}", s(&r["src"]), s(&r["sport"])),
                    format!("{}:{}", s(&r["dst"]), s(&r["dport"])),
                    s(&r["proto"]),
                    s(&r["generation"])
                )
            })
        }
        MapName::Hostflows => {
            let rows = maps.hostflows()?.iter().map(|c| json!({"src": c.src, "sport": c.sport, "dst": c.dst, "dport": c.dport, "proto": proto_name(c.proto)})).collect();
            emit(j, rows, &format!("{:<46} {:<46} PROTO", "SOURCE", "DESTINATION"), &|r: &Value| {
                format!(
                    "{:<46} {:<46} {}",
                    format!("{}:{}", s(&r["src"]), s(&r["sport"])),
                    format!("{}:{}", s(&r["dst"]), s(&r["dport"])),
                    s(&r["proto"])
                )
            })
        }
        MapName::Settings => {
            let st = maps.settings()?;
            let row = json!({"active_set": st.active_set, "generation": st.generation, "default_action": if st.default_deny { "deny" } else { "allow" }, "trace_flows": st.flags & crate::datapath::SETTINGS_F_TRACE_FLOWS != 0});
            emit(
                j,
                vec![row],
                &format!("{:>10} {:>10} {:<8} TRACE FLOWS", "ACTIVE SET", "GENERATION", "DEFAULT"),
                &|r: &Value| {
                    format!(
                        "{:>10} {:>10} {:<8} {}",
                        s(&r["active_set"]),
                        s(&r["generation"]),
                        s(&r["default_action"]),
                        if r["trace_flows"] == true { "on" } else { "off" }
                    )
                },
            )
        }
        MapName::IdentityFlags => {
            let active = maps.settings()?.active_set as u8 & 1;
            let rows = maps
                .identity_flags()?
                .iter()
                .map(|(set, id, flags)| {
                    json!({
                        "set": set, "active": *set == active, "identity": id,
                        "ingress_isolated": flags & crate::datapath::ISOLATED_INGRESS != 0,
                        "egress_isolated": flags & crate::datapath::ISOLATED_EGRESS != 0,
                    })
                })
                .collect();
            emit(j, rows, &format!("{:>10} {:<8} {:<8} SET", "IDENTITY", "INGRESS", "EGRESS"), &|r: &Value| {
                let iso = |k: &str| if r[k] == true { "isolated" } else { "open" };
                format!(
                    "{:>10} {:<8} {:<8} {}{}",
                    s(&r["identity"]),
                    iso("ingress_isolated"),
                    iso("egress_isolated"),
                    s(&r["set"]),
                    if r["active"] == true { " (active)" } else { "" }
                )
            })
        }
        MapName::Events => {
            let rows = queued_events(&dir, &maps)?;
            emit(j, rows, "EVENTS (queued; reading them consumed them)", &|r: &Value| s(&r["line"]))
        }
    }
}
