//! CNI mode: reads the config from stdin and the `CNI_*` environment, runs
//! the command, and writes only the result or the spec's error JSON to
//! stdout. Diagnostics go to stderr and, when configured, `logFile`.

mod add;
pub(crate) use add::bridge_mac;
mod attach_lock;
mod check;
pub mod config;
mod del;
pub mod env;
pub mod error;
mod gc;
pub mod link_local;
pub mod repair;
pub mod result;
mod status;
pub mod teardown;
mod undo;
pub mod version;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::{json, Value};

use config::NetConf;
use env::CniEnv;
use error::{CniError, DECODE_FAILURE, INVALID_ENV};

/// Configs larger than this are not network configs.
const MAX_STDIN: u64 = 4 << 20;

/// The host-side veth of a pod: derived from container ID and interface
/// (stable, so DEL finds it even after a restart), 15 characters.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = crate::fnv::fnv1a64(format!("{container_id}\0{ifname}").as_bytes());
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

/// The device group every host veth of `network` is in from its creation:
/// how GC finds veths of ADDs that died before recording anything else.
/// 0x6b prefix plus a hash of the network name: never 0 (the default),
/// and below 2^31, so `ip link` prints it as the positive number that
/// `ip link show group N` selects.
pub fn veth_group(network: &str) -> u32 {
    0x6b00_0000 | network_hash24(network)
}

/// The group earlier builds used (0xeb prefix, printed negative by `ip`):
/// GC still recognises veths created by them.
pub fn legacy_veth_group(network: &str) -> u32 {
    0xeb00_0000 | network_hash24(network)
}

fn network_hash24(network: &str) -> u32 {
    crate::fnv::fnv1a64(network.as_bytes()) as u32 & 0x00ff_ffff
}

/// Runs one CNI command and returns the process exit code.
pub fn main(command: &str) -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin);
    let version = config::peek_version(&stdin)
        .filter(|v| version::is_supported(v))
        .unwrap_or_else(|| version::LATEST.to_string());
    let outcome = match read {
        Err(e) => Err(CniError::error(DECODE_FAILURE, format!("read network config from stdin: {e}"))),
        Ok(_) if stdin.len() as u64 > MAX_STDIN => {
            Err(CniError::error(DECODE_FAILURE, format!("network config is larger than {MAX_STDIN} bytes")))
        }
        Ok(_) => allowed(command, &stdin).and_then(|()| run(command, &stdin)),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(None) => 0,
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Err(e) => {
            eprintln!("ebpfcni: {command}: {e:#}");
            let _ =
                writeln!(out, "{}", serde_json::to_string(&error::to_json(&e, &version)).expect("error serializes"));
            1
        }
    }
}

/// A config of a version older than the command refuses it (code 1), as
/// the spec and the reference plugins do ("config version does not allow
/// CHECK").
fn allowed(command: &str, stdin: &[u8]) -> Result<()> {
    let (Some(min), Some(v)) = (version::introduced(command), config::peek_version(stdin)) else { return Ok(()) };
    if version::is_supported(&v) && !version::at_least(&v, min) {
        return Err(CniError::error(
            error::INCOMPATIBLE_VERSION,
            format!("config version {v} does not allow {command} (it needs cniVersion {min} or later)"),
        ));
    }
    Ok(())
}

fn run(command: &str, stdin: &[u8]) -> Result<Option<Value>> {
    match command {
        "VERSION" => Ok(Some(json!({
            "cniVersion": config::peek_version(stdin).filter(|v| version::is_supported(v)).unwrap_or(version::LATEST.into()),
            "supportedVersions": version::SUPPORTED,
        }))),
        "ADD" | "DEL" | "CHECK" => {
            let conf = NetConf::parse(stdin)?;
            let env = CniEnv::from_env(command)?;
            let started = Instant::now();
            let (outcome, addresses) = match command {
                "ADD" => match add::add(&conf, &env) {
                    Ok(r) => {
                        let ips = r.ips.iter().map(|i| i.address.clone()).collect();
                        (Ok(Some(r.render(&conf.cni_version, conf.dns.as_ref()))), ips)
                    }
                    Err(e) => (Err(e), Vec::new()),
                },
                "DEL" => match del::del(&conf, &env) {
                    Ok(ips) => (Ok(None), ips.iter().map(ToString::to_string).collect()),
                    Err(e) => (Err(e), Vec::new()),
                },
                _ => (check::check(&conf, &env).map(|()| None), Vec::new()),
            };
            let who = format!("container={} ifname={}", env.container_id, env.ifname);
            log_outcome(&conf, command, &who, &addresses, &outcome, started);
            outcome
        }
        "GC" => {
            let conf = NetConf::parse(stdin)?;
            let started = Instant::now();
            let (outcome, released) = match gc::gc(&conf) {
                Ok(ips) => (Ok(None), ips.iter().map(ToString::to_string).collect()),
                Err(e) => (Err(e), Vec::new()),
            };
            log_outcome(&conf, command, "released", &released, &outcome, started);
            outcome
        }
        "STATUS" => {
            let conf = NetConf::parse(stdin)?;
            status::status(&conf).map(|()| None)
        }
        other => Err(CniError::error(INVALID_ENV, format!("CNI_COMMAND {other:?} is not supported"))),
    }
}

/// One line per ADD/DEL/CHECK/GC in `logFile`: who, which addresses, the
/// outcome and how long it took (`logLevel: error` keeps failures only).
fn log_outcome(
    conf: &NetConf,
    command: &str,
    who: &str,
    addresses: &[String],
    outcome: &Result<Option<Value>>,
    started: Instant,
) {
    let Some(path) = &conf.log_file else { return };
    if outcome.is_ok() && conf.log_level == config::LogLevel::Error {
        return;
    }
    let result = match outcome {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {}", format!("{e:#}").replace('\n', " ")),
    };
    let line = format!(
        "{} {command} network={} {who} addresses=[{}] duration_ms={:.1} outcome={result}\n",
        utc_timestamp(SystemTime::now()),
        conf.name,
        addresses.join(","),
        started.elapsed().as_secs_f64() * 1000.0,
    );
    if let Err(e) = append(path, &line) {
        eprintln!("ebpfcni: write log {}: {e:#}", path.display());
    }
}

fn append(path: &Path, line: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)?.write_all(line.as_bytes())?;
    Ok(())
}

/// RFC 3339 UTC time without pulling in a date crate.
fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn host_veth_names_are_stable_and_short() {
        let a = host_veth_name("0123456789abcdef", "eth0");
        assert_eq!(a, host_veth_name("0123456789abcdef", "eth0"));
        assert_ne!(a, host_veth_name("0123456789abcdef", "eth1"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
    }

    #[test]
    fn veth_groups_are_positive_as_ip_prints_them() {
        for net in ["ebpfcni", "pods", "a-very-long-network-name.with.dots"] {
            let g = veth_group(net);
            assert!(g != 0 && g < 1 << 31, "{net}: {g:#x}");
            assert_ne!(g, legacy_veth_group(net));
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(UNIX_EPOCH + Duration::from_secs(1_795_000_000)), "2026-11-18T11:06:40Z");
    }
}
