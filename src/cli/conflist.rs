//! `ebpfcni conflist check|get` (hidden; used by scripts/install.sh): a
//! conflist validated before anything is installed, written in the highest
//! CNI version that ebpfcni and every chained plugin found in the CNI bin
//! directories support (each asked with `CNI_COMMAND=VERSION`), and the
//! values uninstall needs (network name, pin path, data dir).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cni::config::{NetConf, DEFAULT_DATA_DIR, DEFAULT_PIN_PATH};
use crate::cni::version;

#[derive(Subcommand)]
pub enum ConflistCommand {
    /// Validate FILE and write it, in the version every plugin supports, to OUT.
    Check {
        file: PathBuf,
        /// Directories to find chained plugins in, colon-separated.
        #[arg(long)]
        cni_path: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print one value of FILE's ebpfcni plugin: name, pin-path or data-dir.
    Get { file: PathBuf, key: String },
}

#[derive(Args)]
pub struct ConflistArgs {
    #[command(subcommand)]
    command: ConflistCommand,
}

/// The ebpfcni network a conflist configures, as the plugin would see it.
pub fn net_conf(file: &Path) -> Result<NetConf> {
    let (v, at) = read(file)?;
    let mut ours = v["plugins"][at].clone();
    ours["name"] = v["name"].clone();
    ours["cniVersion"] = v["cniVersion"].clone();
    NetConf::parse(ours.to_string().as_bytes())
}

/// The network name and pin path of a node agent's template (a conflist or
/// a single config; its pod ranges and MTU may still be missing).
pub(crate) fn net_conf_of_template(file: &Path) -> Result<(String, PathBuf)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{} is not valid JSON: {e}", file.display()))?;
    let ours = match v["plugins"].as_array() {
        Some(plugins) => plugins.iter().find(|p| p["type"] == "ebpfcni").cloned().unwrap_or_default(),
        None => v.clone(),
    };
    let name = v["name"].as_str().ok_or_else(|| anyhow!("{} has no \"name\"", file.display()))?;
    let pins = ours["bpfPinPath"].as_str().unwrap_or(DEFAULT_PIN_PATH);
    Ok((name.to_string(), PathBuf::from(pins)))
}

/// Reads a conflist: JSON, a `plugins` list, an ebpfcni plugin whose
/// config (with the list's name and version) is valid.
fn read(file: &Path) -> Result<(Value, usize)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{} is not valid JSON: {e}", file.display()))?;
    let at = validate(&v).map_err(|e| anyhow!("{}{e:#}", file.display()))?;
    Ok((v, at))
}

/// Where the ebpfcni plugin is in the conflist `v`, once its config (with
/// the list's name and version) is valid. Errors start with ": " or " ",
/// to follow the file's name.
fn validate(v: &Value) -> Result<usize> {
    let Some(plugins) = v.get("plugins").and_then(Value::as_array) else {
        bail!(
            " is not a conflist (no \"plugins\" list): a single-plugin .conf cannot chain portmap; \
             wrap it as {{\"cniVersion\", \"name\", \"plugins\": [ … ]}}"
        );
    };
    let name = v["name"].as_str().ok_or_else(|| anyhow!(" has no \"name\""))?;
    let at = plugins
        .iter()
        .position(|p| p["type"] == "ebpfcni")
        .ok_or_else(|| anyhow!(" does not configure ebpfcni (no plugin of type \"ebpfcni\")"))?;
    let mut ours = plugins[at].clone();
    ours["name"] = json!(name);
    ours["cniVersion"] = v["cniVersion"].clone();
    NetConf::parse(ours.to_string().as_bytes()).map_err(|e| anyhow!(": ebpfcni's config: {e:#}"))?;
    Ok(at)
}

/// The versions a plugin binary says it supports.
fn supported_by(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new(bin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(crate::child::stdin_of(br#"{"cniVersion":"0.4.0"}"#)?)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} answered VERSION with no JSON", bin.display()))?;
    Ok(v["supportedVersions"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect())
}

pub(super) fn check(file: &Path, cni_path: &str, out: &Path) -> Result<()> {
    let (v, _) = read(file)?;
    let (text, note) = checked(v, cni_path)?;
    std::fs::write(out, text).with_context(|| format!("write {}", out.display()))?;
    println!("{note}");
    Ok(())
}

/// The conflist `v` as it is installed: valid, its cniVersion the highest
/// that ebpfcni and every chained plugin found in `cni_path` support.
/// Returns the text and a line saying which version and why.
pub(crate) fn checked(mut v: Value, cni_path: &str) -> Result<(Vec<u8>, String)> {
    let at = validate(&v).map_err(|e| anyhow!("the conflist{e:#}"))?;
    let asked = v["cniVersion"].as_str().unwrap_or(version::LATEST).to_string();
    let mut common: Vec<String> =
        version::SUPPORTED.iter().filter(|s| version::at_least(&asked, s)).map(|s| s.to_string()).collect();
    let mut who = vec!["ebpfcni".to_string()];
    for (i, plugin) in v["plugins"].as_array().into_iter().flatten().enumerate() {
        let ty = plugin["type"].as_str().unwrap_or_default();
        if i == at || ty.is_empty() {
            continue;
        }
        let Some(bin) = cni_path.split(':').map(|d| Path::new(d).join(ty)).find(|p| p.is_file()) else {
            eprintln!("install: warning: chained plugin {ty} is in none of {cni_path}; its versions are unknown");
            continue;
        };
        let theirs = supported_by(&bin)?;
        common.retain(|c| theirs.contains(c));
        who.push(format!("{ty} ({})", bin.display()));
    }
    let Some(best) = common.iter().max_by(|a, b| {
        if version::at_least(a, b) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Less
        }
    }) else {
        bail!("no CNI version up to {asked} is supported by all of {}", who.join(", "));
    };
    v["cniVersion"] = json!(best);
    let note = if *best == asked { String::new() } else { format!(" (the file asks {asked})") };
    let line = format!("cniVersion {best}: the highest that {} all support{note}", who.join(", "));
    Ok((format!("{}\n", serde_json::to_string_pretty(&v)?).into_bytes(), line))
}

fn get(file: &Path, key: &str) -> Result<()> {
    let (v, at) = read(file)?;
    let ours = &v["plugins"][at];
    let value = match key {
        "name" => v["name"].as_str().unwrap_or_default().to_string(),
        "pin-path" => ours["bpfPinPath"].as_str().unwrap_or(DEFAULT_PIN_PATH).to_string(),
        "data-dir" => ours["dataDir"]
            .as_str()
            .or_else(|| ours["ipam"]["dataDir"].as_str())
            .unwrap_or(DEFAULT_DATA_DIR)
            .to_string(),
        other => bail!("unknown key {other:?} (name, pin-path, data-dir)"),
    };
    println!("{value}");
    Ok(())
}

pub fn run(args: &ConflistArgs) -> Result<()> {
    match &args.command {
        ConflistCommand::Check { file, cni_path, out } => check(file, cni_path, out),
        ConflistCommand::Get { file, key } => get(file, key),
    }
}
