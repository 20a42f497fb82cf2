//! `ebpfcni status`: is the node ready (exit 1 when not: a readiness
//! probe), and what does each network's datapath hold — programs, pods
//! and what the kernel reports attached to each, endpoints, policy. The
//! table and `--json` carry the same fields.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::cni::config::DEFAULT_PIN_PATH;
use crate::datapath::{self, Hook, Maps, NetworkPrograms};

/// Where `ebpfcni-agent run` reports its Kubernetes watches (tmpfs: gone
/// at reboot; beside the node agent's own `<network>/agent.json`).
pub const KUBERNETES_STATE_FILE: &str = "/run/ebpfcni/kubernetes.json";

#[derive(Args)]
pub struct StatusArgs {
    /// Only this network (the config's "name").
    #[arg(long)]
    network: Option<String>,
    /// The config's "bpfPinPath".
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
    #[arg(long)]
    json: bool,
    /// The Kubernetes watches' state file (`ebpfcni-agent run --state-file`).
    #[arg(long, default_value = KUBERNETES_STATE_FILE)]
    kubernetes_state: PathBuf,
}

/// What `ebpfcni-agent run` last reported, and how long ago (None: not running).
fn kubernetes_state(path: &Path) -> Option<Value> {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
    v["age_seconds"] = json!((now - v["updated"].as_f64().unwrap_or(0.0)).max(0.0).round());
    Some(v)
}

fn network_status(dir: &Path, name: &str) -> Result<Value> {
    let programs = datapath::pinned_programs(dir);
    let current = programs.iter().any(|(_, ours)| *ours);
    let mut v = json!({
        "network": name,
        "programs": programs.iter().map(|(n, ours)| json!({"pin": n, "this_binary": ours})).collect::<Vec<_>>(),
        "program_is_this_binary": current,
    });
    if let Some(agent) = crate::agent::AgentState::load(name)? {
        v["agent"] = agent_status(dir, agent)?;
    }
    let Some(maps) = Maps::open_if_pinned(dir)? else { return Ok(v) };
    let endpoints = maps.endpoints()?;
    // Per pod (host veth), as the kernel reports its two hooks.
    let programs = NetworkPrograms::open(dir);
    let states: Vec<_> = maps.pods()?.iter().map(|p| programs.attachment(p.ifindex)).collect();
    let count = |hook: Hook| states.iter().filter(|a| a.ingress == hook && a.egress == hook).count();
    let settings = maps.settings()?;
    let active = settings.active_set as u8;
    let rules: std::collections::BTreeSet<u32> =
        maps.policy()?.iter().filter(|e| e.set == active).map(|e| e.rule).collect();
    v["endpoints"] = json!(endpoints.len());
    v["pods"] = json!(states.len());
    v["attached"] = json!({
        "tcx": count(Hook::Tcx),
        "tc": count(Hook::Tc),
        "detached": count(Hook::None),
        "partial": states.iter().filter(|a| a.ingress != a.egress).count(),
    });
    v["policy"] = json!({
        "default_action": if settings.default_deny { "deny" } else { "allow" },
        "rules": rules.len(),
        "isolated_identities": maps.identity_flags()?.iter().filter(|(s, _, _)| *s == active).count(),
        "generation": settings.generation,
        "tracked_connections": maps.conntrack()?.len(),
        "conntrack": maps.conntrack_fill()?,
        "errors": crate::policy::report::load(dir)?,
    });
    let usage = datapath::footprint::usage(dir)?;
    v["memory"] = serde_json::to_value(datapath::footprint::total(&usage)?)?;
    v["full_maps"] = json!(usage.iter().filter(|m| m.full).map(|m| m.name.clone()).collect::<Vec<_>>());
    v["maps"] = serde_json::to_value(&usage)?;
    Ok(v)
}

/// Bytes for people: KiB, MiB.
fn human(bytes: &Value) -> String {
    let b = bytes.as_f64().unwrap_or(0.0);
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// The agent's state file, and what the node holds of its work: its
/// routes, tunnel entries and cluster ranges, as the kernel has them.
fn agent_status(dir: &Path, agent: crate::agent::AgentState) -> Result<Value> {
    let mut v = serde_json::to_value(&agent)?;
    let alive = agent.pid != 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid as i32), None).is_ok();
    v["running"] = json!(alive && agent.state != "stopped");
    let nl = crate::netlink::Netlink::connect()?;
    let routes = nl.routes_of_protocol(crate::agent::ROUTE_PROTOCOL)?;
    v["routes"] = json!(routes
        .iter()
        .map(|r| match r.gateway {
            Some(g) => format!("{} via {g}", r.dst),
            None => format!("{} dev {}", r.dst, super::ifname(r.oif)),
        })
        .collect::<Vec<_>>());
    if dir.join("tunnels").exists() {
        let t = datapath::Tunnels::open(dir)?.entries()?;
        v["tunnels"] = json!(t.iter().map(|(c, t)| format!("{c} -> {}", t.node)).collect::<Vec<_>>());
    }
    v["vxlan_device"] = json!(nl.link_by_name(crate::agent::VXLAN_DEVICE)?.is_some());
    Ok(v)
}

pub fn run(args: &StatusArgs) -> Result<()> {
    let mut networks = Vec::new();
    for entry in std::fs::read_dir(&args.pin_path).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if args.network.as_ref().is_some_and(|n| *n != name) {
            continue;
        }
        if entry.path().join("endpoints").exists() {
            networks.push(network_status(&entry.path(), &name)?);
        }
    }
    networks.sort_by_key(|n| n["network"].as_str().unwrap_or_default().to_string());
    if let Some(n) = args.network.as_ref().filter(|_| networks.is_empty()) {
        bail!("network {n} has no maps pinned under {}", args.pin_path.display());
    }
    let features = datapath::probe_features();
    let bpffs = datapath::bpffs_available(&args.pin_path);
    let reasons = not_ready_reasons(bpffs, &features, &args.pin_path);
    let ready = reasons.is_empty();
    let node = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "bpf_program": datapath::BPF_ID,
        "ready": ready,
        "not_ready_reasons": reasons,
        "kernel": {
            "release": nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            "features": features,
        },
        "bpffs": bpffs,
        "pin_path": args.pin_path,
        "networks": networks,
        "kubernetes": kubernetes_state(&args.kubernetes_state),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&node)?);
    } else {
        print_table(&node, &features, &args.pin_path);
    }
    if !ready {
        bail!("node not ready: {}", reasons.join("; "));
    }
    Ok(())
}

fn not_ready_reasons(bpffs: bool, features: &[datapath::Feature], pin_path: &Path) -> Vec<String> {
    let mut why: Vec<String> =
        datapath::missing_required(features).into_iter().map(|f| format!("kernel lacks {f}")).collect();
    if !bpffs {
        why.push(format!("{} is not on a bpf filesystem", pin_path.display()));
    }
    why
}

fn print_table(node: &Value, features: &[datapath::Feature], pin_path: &Path) {
    let yes = |b: &Value| if b == true { "yes" } else { "NO" };
    let networks = node["networks"].as_array().cloned().unwrap_or_default();
    println!("ebpfcni {} (bpf program {})", node["version"].as_str().unwrap_or(""), datapath::BPF_ID);
    println!("node ready: {}", yes(&node["ready"]));
    for why in node["not_ready_reasons"].as_array().into_iter().flatten() {
        println!("  not ready: {}", why.as_str().unwrap_or(""));
    }
    println!("kernel {}:", node["kernel"]["release"].as_str().unwrap_or("?"));
    for f in features {
        let mark = match (f.present, f.required) {
            (true, _) => "yes",
            (false, true) => "NO (required)",
            (false, false) => "no",
        };
        println!("  {:<18} {:<14} {}", f.name, mark, f.role);
    }
    println!("bpffs at {}: {}", pin_path.display(), yes(&node["bpffs"]));
    print_kubernetes(&node["kubernetes"]);
    if networks.is_empty() {
        println!("no network pinned (no pod added yet)");
    }
    for n in &networks {
        println!("\nnetwork {}", n["network"].as_str().unwrap_or(""));
        let progs: Vec<String> = n["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}{}",
                    p["pin"].as_str().unwrap_or(""),
                    if p["this_binary"] == true { "" } else { " (another build)" }
                )
            })
            .collect();
        println!(
            "  programs:  {}{}",
            progs.join(", "),
            if n["program_is_this_binary"] == true { "" } else { " (none from this binary)" }
        );
        if let Some(ag) = n.get("agent") {
            let last = &ag["last_reconcile"];
            println!(
                "  agent:     {}{} on node {}, routing {}, pod MTU {}, pod ranges {}",
                ag["state"].as_str().unwrap_or(""),
                if ag["running"] == true { "" } else { " (not running)" },
                ag["node"].as_str().unwrap_or(""),
                ag["routing"].as_str().unwrap_or(""),
                ag["mtu"],
                ag["pod_cidrs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!(
                "  reconcile: at {} ({}), {} change(s), {} ms{}",
                last["at"],
                if last["ok"] == true { "ok" } else { "FAILED" },
                last["changes"],
                last["duration_ms"],
                last["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default()
            );
            for p in ag["peers"].as_array().into_iter().flatten() {
                let cidrs: Vec<&str> =
                    p["pod_cidrs"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                println!(
                    "  peer:      {} {} at {}: {}",
                    p["name"].as_str().unwrap_or(""),
                    cidrs.join(","),
                    p["address"].as_str().unwrap_or("?"),
                    p["status"].as_str().unwrap_or("")
                );
            }
        }
        let a = &n["attached"];
        println!(
            "  pods:      {} ({} endpoints; as the kernel reports: {} attached with tcx, {} with tc, {} partial, {} detached)",
            n["pods"], n["endpoints"], a["tcx"], a["tc"], a["partial"], a["detached"]
        );
        let p = &n["policy"];
        println!(
            "  policy:    default {}, {} rules, {} isolated identities, generation {}, {} tracked connections",
            p["default_action"].as_str().unwrap_or(""),
            p["rules"],
            p["isolated_identities"],
            p["generation"],
            p["tracked_connections"]
        );
        let ct = &p["conntrack"];
        println!(
            "  conntrack: {}/{} established, {}/{} new",
            ct["established"], ct["established_max"], ct["new"], ct["new_max"]
        );
        for e in p["errors"].as_array().into_iter().flatten() {
            println!("  policy error: {}", e.as_str().unwrap_or(""));
        }
        let mem = &n["memory"];
        println!(
            "  memory:    {} of kernel memory in maps, of which {} per CPU ({} CPUs; on 128 CPUs: {})",
            human(&mem["bytes"]),
            human(&mem["per_cpu_bytes"]),
            mem["possible_cpus"],
            human(&mem["bytes_at_128_cpus"])
        );
        for m in n["maps"].as_array().into_iter().flatten() {
            let fill = match m["entries"].as_u64() {
                Some(e) => format!("{e}/{}", m["max_entries"]),
                None => format!("-/{}", m["max_entries"]),
            };
            println!(
                "    {:<15} {:>15} entries {:>11}{}",
                m["name"].as_str().unwrap_or(""),
                fill,
                human(&m["memlock"]),
                if m["full"] == true { "  FULL: new entries are refused" } else { "" }
            );
        }
        for m in n["full_maps"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            let setting = datapath::MapSizes::setting_of(m).unwrap_or("its size");
            println!("  map full:  {m}: new entries are refused (raise {setting} in the network config)");
        }
    }
}

/// The Kubernetes line: whether the watches follow the API server, since when not.
fn print_kubernetes(agent: &Value) {
    if agent.is_null() {
        println!("kubernetes: no report (ebpfcni-agent run is not running here)");
        return;
    }
    let age = agent["age_seconds"].as_f64().unwrap_or(0.0);
    let stale = if age > 30.0 { format!(" (last report {age} s ago: is it still running?)") } else { String::new() };
    let k = &agent["kubernetes"];
    let api = match k["unreachable_since"].as_f64() {
        None => "answering".to_string(),
        Some(t) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64());
            let for_ = now.map(|n| (n - t).max(0.0).round()).unwrap_or(0.0);
            format!(
                "UNREACHABLE for {for_} s (since Unix time {t:.0}; the last known state stays in force): {}",
                k["last_error"].as_str().unwrap_or("")
            )
        }
    };
    let synced = if k["synced"] == true { "synced" } else { "NOT synced yet" };
    println!("kubernetes: watches {synced}, API server {api}{stale}");
    let r = &agent["last_reconcile"];
    if !r.is_null() {
        println!(
            "  last reconcile: {} ({} ms), {} errors so far",
            if r["ok"] == true { "ok" } else { "FAILED" },
            r["duration_ms"],
            r["errors"]
        );
    }
}
