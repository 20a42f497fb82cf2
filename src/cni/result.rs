//! The ADD result, rendered in the configuration's `cniVersion` with
//! exactly that version's fields: `ips[].version` only before 1.0.0,
//! `interfaces[].mtu` only from 1.1.0, and the config's `dns` as given.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::version;
use crate::ipam::Cidr;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteJson {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteJson>,
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`; a pod's MAC must be unicast.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        anyhow::bail!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
    }
    for (b, p) in mac.iter_mut().zip(&parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| anyhow::anyhow!("{s:?} is not a MAC address"))?;
    }
    if mac[0] & 1 != 0 {
        anyhow::bail!("{s} is a multicast address, not usable by a pod");
    }
    Ok(mac)
}

pub fn ip_config(address: Cidr, gateway: IpAddr, interface: usize) -> IpConfig {
    IpConfig { address: address.to_string(), gateway: Some(gateway), interface: Some(interface) }
}

impl AddResult {
    /// The JSON a runtime expects for `cni_version`; `dns` is the
    /// config's, passed through as the reference bridge does.
    pub fn render(&self, cni_version: &str, dns: Option<&Value>) -> Value {
        let mut v = serde_json::to_value(self).expect("result serializes");
        if !version::at_least(cni_version, "1.1.0") {
            for iface in v["interfaces"].as_array_mut().into_iter().flatten() {
                iface.as_object_mut().map(|o| o.remove("mtu"));
            }
        }
        if version::is_legacy(cni_version) {
            for ip in v["ips"].as_array_mut().into_iter().flatten() {
                let family = if ip["address"].as_str().is_some_and(|a| a.contains(':')) { "6" } else { "4" };
                ip["version"] = json!(family);
            }
        }
        v["cniVersion"] = json!(cni_version);
        v["dns"] = dns.cloned().unwrap_or_else(|| json!({}));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddResult {
        AddResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1400),
                sandbox: "/run/netns/p".into(),
            }],
            ips: vec![
                ip_config("10.0.0.2/24".parse().unwrap(), "10.0.0.1".parse().unwrap(), 0),
                ip_config("fd00::2/64".parse().unwrap(), "fd00::1".parse().unwrap(), 0),
            ],
            routes: vec![RouteJson { dst: "0.0.0.0/0".into(), gw: Some("10.0.0.1".parse().unwrap()) }],
        }
    }

    #[test]
    fn v1_has_no_ip_version() {
        let v = sample().render("1.1.0", None);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1400);
        assert_eq!(v["dns"], json!({}));
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["ips"][0]["address"], "10.0.0.2/24");
        assert_eq!(v["interfaces"][0]["sandbox"], "/run/netns/p");
    }

    #[test]
    fn legacy_versions_carry_ip_version() {
        let dns = json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]});
        let v = sample().render("0.3.1", Some(&dns));
        assert!(v["interfaces"][0].get("mtu").is_none(), "mtu is a 1.1 field");
        assert!(sample().render("1.0.0", None)["interfaces"][0].get("mtu").is_none());
        assert_eq!(v["dns"], dns);
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
    }
}
