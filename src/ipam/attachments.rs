//! What ADD made for each attachment, beside its leases:
//! `<dataDir>/<network>/attachments/<host veth>` holds the container ID,
//! interface, host veth, the pod's MAC and addresses. With the leases it
//! is the truth the maps are derived from: when the pins are lost
//! (bpffs remounted or wiped) or a map's layout changes, the endpoint and
//! pod entries are rebuilt from it. host-local's tools never read a
//! subdirectory's files as leases, and neither does our store.

use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

const DIR: &str = "attachments";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    pub container_id: String,
    pub ifname: String,
    pub host_veth: String,
    /// The pod's own MAC (inside its netns), as aa:bb:cc:dd:ee:ff.
    pub mac: String,
    /// Its leased addresses, first one first (its counters' key).
    pub ips: Vec<IpAddr>,
}

impl AttachmentRecord {
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        let parts: Vec<u8> = self.mac.split(':').filter_map(|p| u8::from_str_radix(p, 16).ok()).collect();
        parts.try_into().ok()
    }
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn dir(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network).join(DIR)
}

/// Writes (or rewrites) the record, atomically.
pub fn save(data_dir: &Path, network: &str, record: &AttachmentRecord) -> Result<()> {
    let d = dir(data_dir, network);
    fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    let tmp = d.join(format!(".{}.tmp", record.host_veth));
    super::store::replace_file(&tmp, &d.join(&record.host_veth), serde_json::to_string(record)?.as_bytes())
}

/// Removes the record; a missing one is fine.
pub fn remove(data_dir: &Path, network: &str, host_veth: &str) -> Result<()> {
    let path = dir(data_dir, network).join(host_veth);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e).with_context(|| format!("remove {}", path.display())),
        _ => Ok(()),
    }
}

/// The record of one attachment, if it has a readable one.
pub fn load(data_dir: &Path, network: &str, host_veth: &str) -> Option<AttachmentRecord> {
    let text = fs::read_to_string(dir(data_dir, network).join(host_veth)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every readable record; damaged ones are reported and skipped.
pub fn load_all(data_dir: &Path, network: &str) -> Vec<AttachmentRecord> {
    let mut out: Vec<AttachmentRecord> = fs::read_dir(dir(data_dir, network))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let text = fs::read_to_string(e.path()).ok()?;
            match serde_json::from_str(&text) {
                Ok(r) => Some(r),
                Err(err) => {
                    eprintln!("ebpfcni: skipping damaged attachment record {}: {err}", e.path().display());
                    None
                }
            }
        })
        .collect();
    out.sort_by(|a, b| a.host_veth.cmp(&b.host_veth));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_replace() {
        let data = std::env::temp_dir().join(format!("ebpfcni-unit-records-{}", std::process::id()));
        let mut r = AttachmentRecord {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            host_veth: "veth1234".into(),
            mac: format_mac([2, 0, 0, 0, 0, 0xab]),
            ips: vec!["10.1.0.2".parse().unwrap()],
        };
        save(&data, "net", &r).unwrap();
        r.ips.push("fd00::2".parse().unwrap());
        save(&data, "net", &r).unwrap();
        assert_eq!(load_all(&data, "net"), vec![r.clone()]);
        assert_eq!(r.mac_bytes(), Some([2, 0, 0, 0, 0, 0xab]));
        remove(&data, "net", "veth1234").unwrap();
        remove(&data, "net", "veth1234").unwrap();
        assert!(load_all(&data, "net").is_empty());
        fs::remove_dir_all(&data).unwrap();
    }
}
