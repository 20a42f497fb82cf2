//! The network configuration: parsed, defaulted and validated completely
//! before anything on the node is touched. Two styles are accepted — the
//! seed style (`subnet`, `gateway` at the top level) and host-local's
//! (`ipam.ranges`, `ipam.routes`) — and unknown keys are rejected, so a
//! typo is an error instead of a silently ignored setting.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::Value;

use super::error::{CniError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG};
use super::version;
use crate::datapath::{AttachMode, MapSizes};
use crate::ipam::{Cidr, IpRange};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/ebpfcni";
pub const DEFAULT_BRIDGE: &str = "ebpfcni0";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConf {
    cni_version: String,
    name: String,
    /// The binary's name as the runtime found it; any name is fine.
    #[serde(rename = "type")]
    _plugin_type: String,
    bridge: Option<String>,
    subnet: Option<String>,
    gateway: Option<String>,
    ipam: Option<RawIpam>,
    data_dir: Option<PathBuf>,
    bpf_pin_path: Option<PathBuf>,
    mtu: Option<u32>,
    attach_mode: Option<String>,
    log_file: Option<PathBuf>,
    log_level: Option<String>,
    policy: Option<RawPolicy>,
    hairpin_mode: Option<bool>,
    ip_forward: Option<bool>,
    ip_masq: Option<bool>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<StringOrList>,
    #[serde(rename = "nonMasqueradeCIDRs")]
    non_masquerade_cidrs: Option<Vec<String>>,
    routing: Option<String>,
    max_pods: Option<u32>,
    conntrack: Option<RawConntrack>,
    // Set by the runtime or reserved by the spec.
    args: Option<RawArgs>,
    runtime_config: Option<RawRuntimeConfig>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
    #[serde(rename = "capabilities")]
    _capabilities: Option<Value>,
    dns: Option<RawDns>,
    #[serde(rename = "cniVersions")]
    _cni_versions: Option<Value>,
    #[serde(rename = "disableCheck")]
    _disable_check: Option<bool>,
    #[serde(rename = "disableGC")]
    _disable_gc: Option<bool>,
}

/// `clusterCIDR`: one prefix, several separated by commas (kube-proxy's
/// `--cluster-cidr` form), or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

/// The spec's DNS object, passed through to the result.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<Vec<IpAddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    search: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicy {
    default_action: Option<String>,
    max_addresses: Option<u32>,
    max_entries: Option<u32>,
    max_identities: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConntrack {
    max_entries: Option<u32>,
}

/// `args.cni`: only `ips` is ours; other keys belong to other plugins.
#[derive(Deserialize)]
struct RawArgs {
    cni: Option<RawCniArgs>,
}

#[derive(Deserialize)]
struct RawCniArgs {
    ips: Option<Vec<String>>,
}

/// `runtimeConfig`: the capabilities this plugin declares (`ips`, `mac`);
/// others (portMappings, bandwidth, …) are for chained plugins.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRuntimeConfig {
    ips: Option<Vec<String>>,
    mac: Option<String>,
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Which outcomes `logFile` records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogLevel {
    /// Every operation.
    #[default]
    Info,
    /// Failed operations only.
    Error,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    ranges: Option<Vec<Vec<RawRange>>>,
    routes: Option<Vec<RawRoute>>,
    subnet: Option<String>,
    gateway: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    data_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRange {
    subnet: String,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    dst: String,
    gw: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    pub gw: Option<IpAddr>,
}

/// How pods reach pods of other nodes (`routing`, set where `ebpfcni
/// agent` manages the node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Routing {
    /// A route per peer's pod range via its InternalIP (one L2 segment).
    Native,
    /// One collect-metadata VXLAN device per node, keyed by BPF.
    #[default]
    Vxlan,
}

impl std::str::FromStr for Routing {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "native" => Ok(Routing::Native),
            "vxlan" => Ok(Routing::Vxlan),
            other => bail!("routing {other:?} is not one of native, vxlan"),
        }
    }
}

impl std::fmt::Display for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Routing::Native => "native",
            Routing::Vxlan => "vxlan",
        })
    }
}

/// A validated configuration with every default filled in.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    /// One range set per address family (host-local's `ranges`).
    pub rangesets: Vec<Vec<IpRange>>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub bpf_pin_path: PathBuf,
    pub mtu: Option<u32>,
    pub attach_mode: AttachMode,
    pub log_file: Option<PathBuf>,
    pub log_level: LogLevel,
    /// `policy.defaultAction: deny`: only what a rule allows passes.
    pub default_deny: bool,
    /// The maps' sizes (`maxPods`, `conntrack.maxEntries`, `policy.max*`).
    pub sizes: MapSizes,
    pub prev_result: Option<Value>,
    /// The `dns` object, as the result carries it.
    pub dns: Option<Value>,
    /// Addresses the runtime asks for (`args.cni.ips`, `runtimeConfig.ips`).
    pub requested_ips: Vec<IpAddr>,
    /// `runtimeConfig.mac`.
    pub requested_mac: Option<[u8; 6]>,
    /// GC's list (`cni.dev/valid-attachments`, or the older
    /// `cni.dev/attachments`); None when the config carries neither.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Host veths may send a frame back out of the port it came in on.
    pub hairpin_mode: bool,
    /// Turn on the node's IPv4/IPv6 forwarding when the network is set up.
    pub ip_forward: bool,
    /// Masquerade pod traffic to destinations outside `no_masquerade`.
    pub ip_masq: bool,
    /// `clusterCIDR` (default: the network's subnets) and
    /// `nonMasqueradeCIDRs`: destinations reached with the pod's own address.
    pub no_masquerade: Vec<Cidr>,
    /// `routing`: set in the config the agent writes; None on a node
    /// without the agent (pods reach their own node's pods only).
    pub routing: Option<Routing>,
}

fn invalid(msg: impl Into<String>) -> anyhow::Error {
    CniError::error(INVALID_CONFIG, msg)
}

fn ip(what: &str, s: &str) -> Result<IpAddr> {
    s.parse().map_err(|_| invalid(format!("{what} {s:?} is not an IP address")))
}

fn cidr(what: &str, s: &str) -> Result<Cidr> {
    s.parse::<Cidr>().map_err(|e| invalid(format!("{what} {s:?}: {e:#}")))
}

/// The `cniVersion` of a config, for error JSON, even when the rest is bad.
pub fn peek_version(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::error(DECODE_FAILURE, format!("network config is not valid JSON: {e}")))?;
        // The version decides how the rest is read: check it first.
        match value.get("cniVersion") {
            Some(Value::String(v)) if version::is_supported(v) => {}
            Some(v) => {
                return Err(CniError::error(
                    INCOMPATIBLE_VERSION,
                    format!("cniVersion {v} is not supported (supported: {})", version::SUPPORTED.join(", ")),
                ))
            }
            None => bail!(invalid("network config has no cniVersion")),
        }
        let raw: RawConf = serde_json::from_value(value).map_err(|e| invalid(format!("network config: {e}")))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConf) -> Result<Self> {
        validate_network_name(&raw.name)?;
        for (field, path) in [("bpfPinPath", &raw.bpf_pin_path), ("dataDir", &raw.data_dir)] {
            if let Some(p) = path {
                validate_state_path(field, p)?;
            }
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        super::env::validate_ifname(&bridge)
            .map_err(|_| invalid(format!("bridge {bridge:?} is not a valid interface name")))?;
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                bail!(invalid(format!("mtu {mtu} is outside 68-65535")));
            }
        }
        let attach_mode = match raw.attach_mode.as_deref() {
            None => AttachMode::Auto,
            Some(s) => s.parse().map_err(|e: anyhow::Error| invalid(e.to_string()))?,
        };

        let ipam = raw.ipam.unwrap_or(RawIpam {
            ipam_type: None,
            ranges: None,
            routes: None,
            subnet: None,
            gateway: None,
            range_start: None,
            range_end: None,
            data_dir: None,
        });
        if let Some(t) = ipam.ipam_type.as_deref() {
            if t != "host-local" && t != "ebpfcni" {
                bail!(invalid(format!(
                    "ipam type {t:?} is not supported: ebpfcni allocates addresses itself, host-local style"
                )));
            }
        }
        let rangesets = collect_ranges(&raw.subnet, &raw.gateway, &ipam)?;
        let mut routes = Vec::new();
        for r in ipam.routes.unwrap_or_default() {
            let dst = cidr("route dst", &r.dst)?;
            let gw = r.gw.as_deref().map(|g| ip("route gw", g)).transpose()?;
            if gw.is_some_and(|g| g.is_ipv4() != dst.is_ipv4()) {
                bail!(invalid(format!("route {} has a gateway of the other family", r.dst)));
            }
            routes.push(Route { dst: dst.as_network(), gw });
        }
        validate_route_gateways(&routes, &rangesets)?;

        let defaults = MapSizes::default();
        let policy = raw.policy.unwrap_or(RawPolicy {
            default_action: None,
            max_addresses: None,
            max_entries: None,
            max_identities: None,
        });
        let sizes = MapSizes {
            max_pods: raw.max_pods.unwrap_or(defaults.max_pods),
            conntrack: raw.conntrack.and_then(|c| c.max_entries).unwrap_or(defaults.conntrack),
            policy_addresses: policy.max_addresses.unwrap_or(defaults.policy_addresses),
            policy_entries: policy.max_entries.unwrap_or(defaults.policy_entries),
            policy_identities: policy.max_identities.unwrap_or(defaults.policy_identities),
        };
        sizes.validate().map_err(|e| invalid(format!("{e:#}")))?;
        let default_deny = match policy.default_action.as_deref() {
            None | Some("allow") => false,
            Some("deny") => true,
            Some(other) => bail!(invalid(format!("policy.defaultAction {other:?} is not one of allow, deny"))),
        };
        let log_level = match raw.log_level.as_deref() {
            None | Some("info") | Some("debug") => LogLevel::Info,
            Some("error") => LogLevel::Error,
            Some(other) => bail!(invalid(format!("logLevel {other:?} is not one of info, error"))),
        };
        let mut requested: Vec<String> = Vec::new();
        requested.extend(raw.args.and_then(|a| a.cni).and_then(|c| c.ips).unwrap_or_default());
        let (rc_ips, rc_mac) = raw.runtime_config.map(|r| (r.ips, r.mac)).unwrap_or((None, None));
        requested.extend(rc_ips.unwrap_or_default());
        let requested_ips = requested
            .iter()
            .map(|s| {
                let addr = s.split('/').next().unwrap_or(s);
                ip("requested IP", addr)
            })
            .collect::<Result<Vec<_>>>()?;
        let requested_mac = rc_mac
            .map(|m| super::result::parse_mac(&m).map_err(|e| invalid(format!("runtimeConfig.mac: {e:#}"))))
            .transpose()?;

        let cluster: Vec<String> = match raw.cluster_cidr {
            None => rangesets.iter().flatten().map(|r| r.subnet.to_string()).collect(),
            Some(StringOrList::One(s)) => s.split(',').map(|p| p.trim().to_string()).collect(),
            Some(StringOrList::Many(v)) => v,
        };
        let no_masquerade = cluster
            .iter()
            .map(|s| cidr("clusterCIDR", s))
            .chain(raw.non_masquerade_cidrs.unwrap_or_default().iter().map(|s| cidr("nonMasqueradeCIDRs", s)))
            .map(|c| c.map(|c| c.as_network()))
            .collect::<Result<Vec<_>>>()?;

        let routing =
            raw.routing.as_deref().map(str::parse::<Routing>).transpose().map_err(|e| invalid(format!("{e:#}")))?;

        Ok(NetConf {
            routing,
            cni_version: raw.cni_version,
            name: raw.name,
            bridge,
            rangesets,
            routes,
            data_dir: raw.data_dir.or(ipam.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            bpf_pin_path: raw.bpf_pin_path.unwrap_or_else(|| DEFAULT_PIN_PATH.into()),
            mtu: raw.mtu,
            attach_mode,
            log_file: raw.log_file,
            log_level,
            default_deny,
            sizes,
            prev_result: raw.prev_result,
            dns: raw.dns.map(|d| serde_json::to_value(d).expect("dns serializes")),
            requested_ips,
            requested_mac,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
            ip_forward: raw.ip_forward.unwrap_or(true),
            ip_masq: raw.ip_masq.unwrap_or(false),
            no_masquerade,
        })
    }
}

/// State paths are absolute and name their directory directly: a `..`
/// would step out of the checked bpffs or data directory.
fn validate_state_path(field: &str, path: &std::path::Path) -> Result<()> {
    use std::path::Component;
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        bail!(invalid(format!("{field} {:?} must be an absolute path without \"..\"", path.display().to_string())));
    }
    Ok(())
}

/// A route's gateway must be on the pod's link, inside one of its subnets:
/// anywhere else the kernel cannot install it.
fn validate_route_gateways(routes: &[Route], rangesets: &[Vec<IpRange>]) -> Result<()> {
    for r in routes {
        if let Some(gw) = r.gw {
            if !rangesets.iter().flatten().any(|range| range.subnet.contains(gw)) {
                bail!(invalid(format!(
                    "route {} has gateway {gw} outside the network's subnets: the pod cannot reach it",
                    r.dst
                )));
            }
        }
    }
    Ok(())
}

/// Network names become directory names: the spec's character set only.
fn validate_network_name(name: &str) -> Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 255;
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "network name {name:?} must be letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )))
    }
}

fn collect_ranges(subnet: &Option<String>, gateway: &Option<String>, ipam: &RawIpam) -> Result<Vec<Vec<IpRange>>> {
    let top = subnet.is_some() || gateway.is_some();
    let flat = ipam.subnet.is_some();
    let nested = ipam.ranges.is_some();
    if [top, flat, nested].iter().filter(|b| **b).count() > 1 {
        bail!(invalid("give the subnet once: top-level subnet, ipam.subnet or ipam.ranges"));
    }
    let raw_sets: Vec<Vec<RawRange>> = if top {
        let subnet = subnet.clone().ok_or_else(|| invalid("gateway is set but subnet is missing"))?;
        vec![vec![RawRange { subnet, range_start: None, range_end: None, gateway: gateway.clone() }]]
    } else if flat {
        vec![vec![RawRange {
            subnet: ipam.subnet.clone().unwrap_or_default(),
            range_start: ipam.range_start.clone(),
            range_end: ipam.range_end.clone(),
            gateway: ipam.gateway.clone(),
        }]]
    } else if let Some(r) = &ipam.ranges {
        r.iter()
            .map(|set| {
                set.iter()
                    .map(|r| RawRange {
                        subnet: r.subnet.clone(),
                        range_start: r.range_start.clone(),
                        range_end: r.range_end.clone(),
                        gateway: r.gateway.clone(),
                    })
                    .collect()
            })
            .collect()
    } else {
        bail!(invalid("no subnet: set \"subnet\" (or ipam.ranges)"));
    };

    if raw_sets.is_empty() {
        bail!(invalid("ipam.ranges is empty: give at least one range set"));
    }
    let mut sets: Vec<Vec<IpRange>> = Vec::new();
    for raw_set in raw_sets {
        if raw_set.is_empty() {
            bail!(invalid("ipam.ranges holds an empty range set"));
        }
        let mut set = Vec::new();
        for r in raw_set {
            let subnet = cidr("subnet", &r.subnet)?;
            let opt = |what: &str, v: &Option<String>| v.as_deref().map(|s| ip(what, s)).transpose();
            let range = IpRange::new(
                subnet,
                opt("rangeStart", &r.range_start)?,
                opt("rangeEnd", &r.range_end)?,
                opt("gateway", &r.gateway)?,
            )
            .map_err(|e| invalid(format!("{e:#}")))?;
            set.push(range);
        }
        let family = set[0].subnet.is_ipv4();
        if set.iter().any(|r| r.subnet.is_ipv4() != family) {
            bail!(invalid("a range set mixes IPv4 and IPv6; give each family its own set"));
        }
        if sets.iter().any(|s| s[0].subnet.is_ipv4() == family) {
            bail!(invalid("two range sets of the same family; put the ranges in one set"));
        }
        sets.push(set);
    }
    let all: Vec<&IpRange> = sets.iter().flatten().collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if a.overlaps(b) {
                bail!(invalid(format!("ranges {}-{} and {}-{} overlap", a.start, a.end, b.start, b.end)));
            }
        }
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::error::to_json;

    fn code(json: &str) -> u32 {
        to_json(&NetConf::parse(json.as_bytes()).unwrap_err(), "1.0.0").code
    }

    #[test]
    fn seed_config_works_as_written() {
        let c = NetConf::parse(
            br#"{ "cniVersion": "1.0.0", "name": "simple-ebpf-cni", "type": "ebpfcni",
                  "bridge": "cbr0", "subnet": "10.244.1.0/24", "gateway": "10.244.1.1" }"#,
        )
        .unwrap();
        assert_eq!(c.bridge, "cbr0");
        assert_eq!(c.rangesets[0][0].gateway.to_string(), "10.244.1.1");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.bpf_pin_path, PathBuf::from(DEFAULT_PIN_PATH));
        assert_eq!(c.attach_mode, AttachMode::Auto);
    }

    #[test]
    fn host_local_style_with_routes_and_data_dir() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"ebpfcni","mtu":1400,"attachMode":"tc",
                 "ipam":{"type":"host-local","dataDir":"/tmp/x",
                   "ranges":[[{"subnet":"10.9.0.0/16","rangeStart":"10.9.1.10","rangeEnd":"10.9.1.20"}],
                             [{"subnet":"fd00:9::/64"}]],
                   "routes":[{"dst":"192.168.0.0/16"},{"dst":"172.16.0.0/12","gw":"10.9.0.254"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.rangesets.len(), 2);
        assert_eq!(c.rangesets[0][0].gateway.to_string(), "10.9.0.1");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.attach_mode, AttachMode::Tc);
    }

    #[test]
    fn invalid_configs_get_the_right_code() {
        let base = |extra: &str| {
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"ebpfcni","subnet":"10.1.0.0/24"{extra}}}"#)
        };
        assert_eq!(code(&base(r#","gateway":"10.2.0.1""#)), INVALID_CONFIG);
        assert_eq!(code(&base(r#","subnnet":"10.1.0.0/24""#)), INVALID_CONFIG);
        assert_eq!(code(&base(r#","mtu":"big""#)), INVALID_CONFIG);
        assert_eq!(code(&base(r#","attachMode":"xdp""#)), INVALID_CONFIG);
        assert_eq!(code(&base(r#","bpfPinPath":"/sys/fs/bpf/../../tmp/x""#)), INVALID_CONFIG);
        assert_eq!(code(&base(r#","dataDir":"/var/lib/cni/../../etc""#)), INVALID_CONFIG);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"ebpfcni","subnet":"10.1.0.0/33"}"#),
            INVALID_CONFIG
        );
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","type":"ebpfcni","subnet":"banana"}"#), INVALID_CONFIG);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"../x","type":"ebpfcni","subnet":"10.1.0.0/24"}"#),
            INVALID_CONFIG
        );
        assert_eq!(
            code(r#"{"cniVersion":"9.9.9","name":"n","type":"ebpfcni","subnet":"10.1.0.0/24"}"#),
            INCOMPATIBLE_VERSION
        );
        assert_eq!(code(r#"{"cniVersion":"1.0.0","#), DECODE_FAILURE);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","type":"ebpfcni"}"#), INVALID_CONFIG);
    }

    #[test]
    fn map_sizes_default_and_are_validated() {
        let base = |extra: &str| {
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"ebpfcni","subnet":"10.1.0.0/24"{extra}}}"#)
        };
        assert_eq!(NetConf::parse(base("").as_bytes()).unwrap().sizes, MapSizes::default());
        let c = NetConf::parse(
            base(r#","maxPods":4,"conntrack":{"maxEntries":4096},"policy":{"defaultAction":"deny","maxAddresses":100,"maxEntries":200,"maxIdentities":300}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            c.sizes,
            MapSizes {
                max_pods: 4,
                conntrack: 4096,
                policy_addresses: 100,
                policy_entries: 200,
                policy_identities: 300
            }
        );
        assert!(c.default_deny);
        for bad in [
            r#","maxPods":0"#,
            r#","maxPods":70000"#,
            r#","maxPods":-1"#,
            r#","maxPods":"many""#,
            r#","conntrack":{"maxEntries":10}"#,
            r#","conntrack":{"max":10}"#,
            r#","policy":{"maxEntries":1}"#,
            r#","policy":{"maxIdentities":4294967296}"#,
        ] {
            assert_eq!(code(&base(bad)), INVALID_CONFIG, "{bad}");
        }
        let e = NetConf::parse(base(r#","maxPods":0"#).as_bytes()).unwrap_err().to_string();
        assert!(e.contains("maxPods 0 is outside 1-65536"), "{e}");
    }

    #[test]
    fn runtime_requests_and_gc_lists_are_read() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"ebpfcni","subnet":"10.1.0.0/24",
                 "args":{"cni":{"ips":["10.1.0.9"]}},
                 "runtimeConfig":{"ips":["fd00::9/64"],"mac":"02:00:00:00:00:09","portMappings":[]},
                 "cni.dev/attachments":[{"containerID":"abc","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.requested_ips.len(), 2);
        assert_eq!(c.requested_mac, Some([2, 0, 0, 0, 0, 9]));
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "abc");
        assert_eq!(
            code(
                r#"{"cniVersion":"1.0.0","name":"n","type":"ebpfcni","subnet":"10.1.0.0/24","runtimeConfig":{"mac":"zz"}}"#
            ),
            INVALID_CONFIG
        );
    }

    #[test]
    fn empty_ranges_and_unreachable_gateways_are_config_errors() {
        let c = |ipam: &str| format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"ebpfcni","ipam":{ipam}}}"#);
        assert_eq!(code(&c(r#"{"ranges":[]}"#)), INVALID_CONFIG);
        assert_eq!(code(&c(r#"{"ranges":[[]]}"#)), INVALID_CONFIG);
        assert_eq!(
            code(&c(r#"{"subnet":"10.1.0.0/24","routes":[{"dst":"10.9.0.0/16","gw":"192.168.7.1"}]}"#)),
            INVALID_CONFIG
        );
        let dns = r#"{"cniVersion":"1.0.0","name":"n","type":"ebpfcni","subnet":"10.1.0.0/24",
                      "dns":{"nameservers":["10.96.0.10"],"search":["a.svc"],"options":["ndots:5"],"domain":"d"}}"#;
        let conf = NetConf::parse(dns.as_bytes()).unwrap();
        assert_eq!(conf.dns.unwrap()["nameservers"][0], "10.96.0.10");
        let bad_dns =
            r#"{"cniVersion":"1.0.0","name":"n","type":"ebpfcni","subnet":"10.1.0.0/24","dns":{"nameservers":"x"}}"#;
        assert_eq!(code(bad_dns), INVALID_CONFIG);
    }

    /// No input panics: random configs built from every key and a pool of
    /// awkward values either parse into something ADD can use (at least one
    /// range set, none empty) or fail with a spec error code.
    #[test]
    fn random_configs_never_panic() {
        let keys = [
            "cniVersion",
            "name",
            "type",
            "bridge",
            "subnet",
            "gateway",
            "ipam",
            "dataDir",
            "bpfPinPath",
            "mtu",
            "attachMode",
            "logLevel",
            "policy",
            "args",
            "runtimeConfig",
            "dns",
            "prevResult",
            "capabilities",
            "cni.dev/valid-attachments",
            "maxPods",
            "conntrack",
        ];
        let values = [
            r#""1.0.0""#,
            r#""0.3.1""#,
            r#""1.1.0""#,
            r#""""#,
            "null",
            "0",
            "-1",
            "70000",
            "1e300",
            "18446744073709551616",
            "[]",
            "[[]]",
            "{}",
            r#""10.1.0.0/24""#,
            r#""fd00::/64""#,
            r#""10.1.0.0/33""#,
            r#""10.1.0.1""#,
            r#""::""#,
            r#""0.0.0.0/0""#,
            r#"{"ranges":[]}"#,
            r#"{"ranges":[[{"subnet":"10.2.0.0/30"}]]}"#,
            r#"{"ranges":[[{"subnet":"10.2.0.0/32"}]]}"#,
            r#"{"subnet":"10.3.0.0/24","routes":[{"dst":"0.0.0.0/0","gw":"10.3.0.9"}]}"#,
            r#"{"ranges":[[{"subnet":"fd00::/127"}],[{"subnet":"10.4.0.0/31"}]]}"#,
            r#"{"cni":{"ips":["10.1.0.5","10.1.0.6","zz"]}}"#,
            r#"{"ips":["10.1.0.7/24"],"mac":"ff:ff:ff:ff:ff:ff"}"#,
            r#"{"defaultAction":"deny"}"#,
            r#"{"defaultAction":"deny","maxEntries":0}"#,
            r#"{"maxEntries":65536}"#,
            r#"{"nameservers":["1.1.1.1"]}"#,
            r#"[{"containerID":"a","ifname":"eth0"}]"#,
            r#""\u0000""#,
            r#""../../etc""#,
            "true",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..4000 {
            let mut obj = serde_json::Map::new();
            obj.insert("cniVersion".into(), "1.0.0".into());
            obj.insert("name".into(), "n".into());
            obj.insert("type".into(), "ebpfcni".into());
            for _ in 0..next(6) {
                let v: Value = serde_json::from_str(values[next(values.len())]).unwrap();
                obj.insert(keys[next(keys.len())].into(), v);
            }
            let text = Value::Object(obj).to_string();
            match NetConf::parse(text.as_bytes()) {
                Ok(c) => {
                    assert!(!c.rangesets.is_empty() && c.rangesets.iter().all(|s| !s.is_empty()), "{text}");
                }
                Err(e) => {
                    let code = to_json(&e, "1.0.0").code;
                    assert!([INCOMPATIBLE_VERSION, DECODE_FAILURE, INVALID_CONFIG].contains(&code), "{code}: {text}");
                }
            }
        }
    }

    #[test]
    fn overlapping_ranges_are_rejected() {
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"ebpfcni","ipam":{"ranges":[[
                {"subnet":"10.1.0.0/24"},{"subnet":"10.1.0.0/16","rangeStart":"10.1.0.100"}]]}}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("overlap"), "{e:#}");
    }
}
