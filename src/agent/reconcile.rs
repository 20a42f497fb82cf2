//! One reconcile: the node made to match a `ClusterView`, level-triggered
//! (the whole desired state is computed and diffed with what the kernel
//! has; only the difference is applied, never flush and refill, so a
//! restarted agent changes nothing that is already right).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::state::PeerState;
use super::view::{ClusterView, NodeInfo};
use crate::cni::config::{NetConf, Routing};
use crate::datapath::{self, Datapath, Fastpath, FastpathMap, TunnelTarget, Tunnels};
use crate::ipam::Cidr;
use crate::netlink::{Netlink, OwnedRoute};

/// The node's VXLAN device (one per node).
pub const VXLAN_DEVICE: &str = "ebpfcni-vxlan";
/// The routing protocol number of the agent's routes (`ip route show
/// proto 235`): what it finds there is its own, and nothing else is.
pub const ROUTE_PROTOCOL: u8 = 235;

pub struct Options {
    pub node: String,
    /// The CNI config to complete: a conflist or a single config whose
    /// ebpfcni entry may leave out subnet and mtu.
    pub template: PathBuf,
    /// Where the completed config goes: a file, or the runtime's conf dir
    /// (then ebpfcni's conflist there, replaced in place, as `install` does).
    pub cni_conf: PathBuf,
    /// Where chained plugins are found: a conflist is written in the
    /// highest CNI version they all speak (as `install` writes it).
    pub cni_path: String,
}

/// What one reconcile did and found.
#[derive(Default)]
pub struct Outcome {
    pub changes: usize,
    pub conf: Option<NetConf>,
    pub peers: Vec<PeerState>,
    pub mtu: Option<u32>,
    pub routing: Option<Routing>,
}

/// The ebpfcni entry of a conflist (or the config itself).
fn plugin_entry(doc: &mut Value) -> Result<&mut Value> {
    if doc.get("plugins").is_some() {
        doc["plugins"]
            .as_array_mut()
            .and_then(|ps| ps.iter_mut().find(|p| p["type"] == "ebpfcni"))
            .ok_or_else(|| anyhow!("the template's plugins list has no entry of type ebpfcni"))
    } else {
        Ok(doc)
    }
}

fn underlay_link(nl: &Netlink, ip: IpAddr) -> Result<(u32, u32, String)> {
    for link in nl.links()? {
        if nl.addresses(link.index)?.iter().any(|a| a.addr == ip) {
            return Ok((link.index, link.mtu, link.name));
        }
    }
    bail!("this node's InternalIP {ip} is none of its addresses")
}

/// The link whose own subnet holds `ip`: where a directly reachable
/// neighbour is.
fn connected_link(nl: &Netlink, ip: IpAddr) -> Result<Option<u32>> {
    for link in nl.links()? {
        if nl.addresses(link.index)?.iter().any(|a| a.is_ipv4() == ip.is_ipv4() && a.prefix > 0 && a.contains(ip)) {
            return Ok(Some(link.index));
        }
    }
    Ok(None)
}

/// Writes `text` to `path` when it differs from what is there (atomic).
fn write_conf(path: &Path, text: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    crate::cli::install::replace(path, text, 0o644)?;
    Ok(true)
}

/// Completes the template `doc` for node `me` as every reconcile does:
/// what `ebpfcni-agent install --node-name` writes, so that the agent
/// later finds the same file.
pub fn complete_for_node(doc: &mut Value, me: &NodeInfo) -> Result<()> {
    let own_ip = me.internal_ip.ok_or_else(|| anyhow!("node {} has no InternalIP", me.name))?;
    let (_, underlay_mtu, _) = underlay_link(&Netlink::connect()?, own_ip)?;
    complete(doc, me, underlay_mtu, own_ip.is_ipv4()).map(|_| ())
}

/// The template completed for one node.
struct Completed {
    routing: Routing,
    mtu: u32,
    /// The ebpfcni entry as a config of its own (cniVersion, name).
    plugin: Value,
}

/// Completes the template `doc` in place for node `me`: `routing` (vxlan
/// by default), `subnet` (or `ipam.ranges`) from its pod ranges unless the
/// template has one, `mtu` from the underlay's minus the tunnel overhead
/// unless the template sets it.
fn complete(doc: &mut Value, me: &NodeInfo, underlay_mtu: u32, underlay_v4: bool) -> Result<Completed> {
    let cni_version = doc["cniVersion"].clone();
    let name = doc["name"].clone();
    let entry = plugin_entry(doc)?;
    let routing: Routing = match entry.get("routing").and_then(Value::as_str) {
        Some(r) => r.parse()?,
        None => Routing::default(),
    };
    entry["routing"] = json!(routing.to_string());
    if entry.get("subnet").is_none() && entry.get("ipam").is_none() {
        match me.pod_cidrs.as_slice() {
            [] => bail!("node {} has no podCIDR in the peer list", me.name),
            [one] => entry["subnet"] = json!(one.to_string()),
            many => {
                entry["ipam"] =
                    json!({"ranges": many.iter().map(|c| json!([{"subnet": c.to_string()}])).collect::<Vec<_>>()})
            }
        }
    }
    let overhead = match routing {
        Routing::Native => 0,
        Routing::Vxlan if underlay_v4 => datapath::TUNNEL_OVERHEAD_V4,
        Routing::Vxlan => datapath::TUNNEL_OVERHEAD_V6,
    };
    let mtu = match entry.get("mtu").and_then(Value::as_u64) {
        Some(m) => m as u32,
        None => {
            let m = underlay_mtu.saturating_sub(overhead);
            entry["mtu"] = json!(m);
            m
        }
    };
    let mut plugin = entry.clone();
    plugin["cniVersion"] = cni_version;
    if plugin.get("name").is_none() {
        plugin["name"] = name;
    }
    Ok(Completed { routing, mtu, plugin })
}

pub struct Reconciler {
    pub opts: Options,
    nl: Netlink,
    /// The last completed config and the text it is written as: the
    /// version check runs chained plugins, so only when it changes.
    written: Option<(Value, Vec<u8>)>,
}

impl Reconciler {
    pub fn new(opts: Options) -> Result<Self> {
        Ok(Reconciler { opts, nl: Netlink::connect()?, written: None })
    }

    /// The completed config as it is written.
    fn conf_text(&mut self, doc: &Value) -> Result<Vec<u8>> {
        if let Some((seen, text)) = &self.written {
            if seen == doc {
                return Ok(text.clone());
            }
        }
        let text = if doc.get("plugins").is_some() {
            crate::cli::conflist::checked(doc.clone(), &self.opts.cni_path)?.0
        } else {
            (serde_json::to_string_pretty(doc)? + "\n").into_bytes()
        };
        self.written = Some((doc.clone(), text.clone()));
        Ok(text)
    }

    /// Where the config goes (in a directory: ebpfcni's conflist there).
    fn conf_path(&self) -> Result<PathBuf> {
        if self.opts.cni_conf.is_dir() {
            return crate::cli::install::target(&self.opts.cni_conf);
        }
        Ok(self.opts.cni_conf.clone())
    }

    /// Brings the node in line with `desired`. Peers that cannot be
    /// programmed are reported in the outcome and left out; an error is
    /// returned only when the node itself cannot be (the CNI config is
    /// then not written).
    pub fn reconcile(&mut self, desired: &ClusterView) -> Result<Outcome> {
        let mut out = Outcome::default();
        let me = desired
            .node(&self.opts.node)
            .ok_or_else(|| anyhow!("node {} is not in the peer list", self.opts.node))?
            .clone();
        let own_ip = me.internal_ip.ok_or_else(|| anyhow!("node {} has no InternalIP", me.name))?;

        let text = std::fs::read(&self.opts.template)
            .with_context(|| format!("read CNI config template {}", self.opts.template.display()))?;
        let mut doc: Value = serde_json::from_slice(&text)
            .with_context(|| format!("parse CNI config template {}", self.opts.template.display()))?;
        let (underlay_ifindex, underlay_mtu, underlay_name) = underlay_link(&self.nl, own_ip)?;
        let completed = complete(&mut doc, &me, underlay_mtu, own_ip.is_ipv4())?;
        out.routing = Some(completed.routing);
        out.mtu = Some(completed.mtu);
        let (routing, mtu, plugin) = (completed.routing, completed.mtu, completed.plugin);
        let conf = NetConf::parse(plugin.to_string().as_bytes()).context("the completed CNI config is invalid")?;

        let dp = crate::cni::repair::load(&conf)?;
        crate::node::ensure(&conf)?;

        // Routes (and tunnel entries) the peers need.
        let mut routes: Vec<OwnedRoute> = Vec::new();
        let mut tunnels: BTreeMap<Cidr, TunnelTarget> = BTreeMap::new();
        let vxlan = match routing {
            Routing::Vxlan => Some(self.ensure_vxlan(&dp, own_ip, mtu, &mut out.changes)?),
            Routing::Native => {
                if self.nl.delete_link(VXLAN_DEVICE)? {
                    out.changes += 1;
                }
                None
            }
        };
        // The fast path's receiving side: from_peer on the ingress of the
        // device peers' packets arrive on.
        let receiving = match vxlan {
            Some(ifindex) => {
                if dp.detach_peer_ingress(&underlay_name, Some(underlay_ifindex))? {
                    out.changes += 1;
                }
                (VXLAN_DEVICE, ifindex)
            }
            None => {
                if dp.detach_peer_ingress(VXLAN_DEVICE, None)? {
                    out.changes += 1;
                }
                (underlay_name.as_str(), underlay_ifindex)
            }
        };
        if dp.attach_peer_ingress(receiving.0, receiving.1)? {
            out.changes += 1;
        }
        for peer in desired.nodes.iter().filter(|n| n.name != me.name) {
            let status = self.plan_peer(peer, vxlan, &mut routes, &mut tunnels);
            out.peers.push(PeerState {
                name: peer.name.clone(),
                pod_cidrs: peer.pod_cidrs.iter().map(ToString::to_string).collect(),
                address: peer.internal_ip.map(|a| a.to_string()),
                status,
            });
        }

        // Tunnel entries before the routes that lead to them; routes away
        // before their entries go.
        let table = Tunnels::open(&dp.dir)?;
        let have_tunnels: BTreeMap<Cidr, TunnelTarget> = table.entries()?.into_iter().collect();
        for (range, t) in &tunnels {
            if have_tunnels.get(range) != Some(t) {
                table.put(range, t)?;
                out.changes += 1;
            }
        }
        let have_routes = self.nl.routes_of_protocol(ROUTE_PROTOCOL)?;
        for r in &routes {
            if !have_routes.contains(r) {
                self.nl.replace_route(r, ROUTE_PROTOCOL)?;
                out.changes += 1;
            }
        }
        for r in have_routes.iter().filter(|r| !routes.iter().any(|w| w.dst == r.dst)) {
            self.nl.delete_route(r, ROUTE_PROTOCOL)?;
            out.changes += 1;
        }
        for range in have_tunnels.keys().filter(|r| !tunnels.contains_key(r)) {
            table.remove(range)?;
            out.changes += 1;
        }

        // The fast path's sending side: where from_pod sends what is for a
        // peer's range, and the gateway MAC from_peer writes.
        let gateway_mac = match self.nl.link_by_name(&conf.bridge)? {
            Some(l) => l.mac.unwrap_or_else(|| crate::cni::bridge_mac(&conf.bridge)),
            None => crate::cni::bridge_mac(&conf.bridge),
        };
        let fast = Fastpath {
            tunnel_ifindex: vxlan.unwrap_or(0),
            underlay_ifindex: if vxlan.is_some() { 0 } else { underlay_ifindex },
            gateway_mac,
        };
        if FastpathMap::open(&dp.dir)?.set(Some(fast))? {
            out.changes += 1;
        }

        let before = crate::node::cluster_ranges(&conf.name).unwrap_or_default();
        let ranges = desired.pod_ranges();
        crate::node::ensure_cluster_ranges(&conf, &ranges)?;
        if conf.ip_masq && (before.len() != ranges.len() || ranges.iter().any(|r| !before.contains(r))) {
            out.changes += 1;
        }

        // Only a node that is programmed gets its CNI config.
        let text = self.conf_text(&doc)?;
        if write_conf(&self.conf_path()?, &text)? {
            out.changes += 1;
        }
        out.conf = Some(conf);
        Ok(out)
    }

    /// The device, its MAC (derived from the node's address, which peers
    /// write into the frames they send), MTU, up, and `to_tunnel` on its
    /// egress. Returns its ifindex.
    fn ensure_vxlan(&self, dp: &Datapath, own_ip: IpAddr, mtu: u32, changes: &mut usize) -> Result<u32> {
        let mac = datapath::vxlan_mac(own_ip);
        let mut link = self.nl.link_by_name(VXLAN_DEVICE)?;
        if link.as_ref().is_some_and(|l| l.mac != Some(mac) || l.kind.as_deref() != Some("vxlan")) {
            self.nl.delete_link(VXLAN_DEVICE)?;
            link = None;
        }
        let link = match link {
            Some(l) => l,
            None => {
                self.nl.create_vxlan(VXLAN_DEVICE, mac, mtu, datapath::TUNNEL_PORT)?;
                *changes += 1;
                self.nl.link_by_name(VXLAN_DEVICE)?.ok_or_else(|| anyhow!("{VXLAN_DEVICE} vanished"))?
            }
        };
        if link.mtu != mtu {
            self.nl.set_mtu(link.index, mtu)?;
            *changes += 1;
        }
        crate::node::sysctl::refuse_router_advertisements(VXLAN_DEVICE)?;
        if dp.attach_tunnel(link.index)? {
            *changes += 1;
        }
        if !link.up {
            self.nl.set_up(link.index)?;
            *changes += 1;
        }
        Ok(link.index)
    }

    /// Adds what one peer needs to `routes`/`tunnels`; returns its status.
    fn plan_peer(
        &self,
        peer: &NodeInfo,
        vxlan: Option<u32>,
        routes: &mut Vec<OwnedRoute>,
        tunnels: &mut BTreeMap<Cidr, TunnelTarget>,
    ) -> String {
        let Some(ip) = peer.internal_ip else { return "refused: no InternalIP".into() };
        if peer.pod_cidrs.is_empty() {
            return "refused: no podCIDR".into();
        }
        match vxlan {
            Some(oif) => {
                for c in &peer.pod_cidrs {
                    tunnels.insert(*c, TunnelTarget { node: ip, mac: datapath::vxlan_mac(ip), native: false });
                    routes.push(OwnedRoute { dst: *c, gateway: None, oif });
                }
                "programmed".into()
            }
            None => {
                let oif = match connected_link(&self.nl, ip) {
                    Ok(Some(oif)) => oif,
                    Ok(None) => {
                        return format!(
                            "refused: InternalIP {ip} is not on a network this node is directly connected to \
                             (routing: native needs every node on one L2 segment; use vxlan)"
                        )
                    }
                    Err(e) => return format!("refused: {e:#}"),
                };
                let mut skipped = Vec::new();
                for c in &peer.pod_cidrs {
                    if c.is_ipv4() == ip.is_ipv4() {
                        routes.push(OwnedRoute { dst: *c, gateway: Some(ip), oif });
                        // The fast path sends the range out by the route.
                        tunnels.insert(*c, TunnelTarget { node: ip, mac: [0; 6], native: true });
                    } else {
                        skipped.push(c.to_string());
                    }
                }
                if skipped.is_empty() {
                    "programmed".into()
                } else {
                    format!("programmed, except {} (no address of that family)", skipped.join(", "))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cidrs: &[&str]) -> NodeInfo {
        NodeInfo {
            name: "a".into(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            internal_ip: Some("192.168.0.1".parse().unwrap()),
        }
    }

    #[test]
    fn a_conflist_template_is_completed_in_its_ebpfcni_entry() {
        let mut doc: Value =
            serde_json::from_str(include_str!("../../conf/cni-template.conflist")).expect("template parses");
        let c = complete(&mut doc, &node(&["10.244.7.0/24"]), 9000, true).unwrap();
        assert_eq!((c.routing, c.mtu), (Routing::Vxlan, 8950));
        let entry = &doc["plugins"][0];
        assert_eq!(entry["subnet"], "10.244.7.0/24");
        assert_eq!(entry["mtu"], 8950);
        assert_eq!(doc["plugins"][1]["type"], "portmap");
        let conf = NetConf::parse(c.plugin.to_string().as_bytes()).unwrap();
        assert_eq!((conf.name.as_str(), conf.routing, conf.mtu), ("ebpfcni", Some(Routing::Vxlan), Some(8950)));
    }

    #[test]
    fn native_keeps_the_underlay_mtu_and_dual_stack_gets_two_range_sets() {
        let mut doc = json!({"cniVersion": "1.1.0", "name": "n", "type": "ebpfcni", "routing": "native"});
        let c = complete(&mut doc, &node(&["10.244.7.0/24", "fd00:7::/64"]), 1500, true).unwrap();
        assert_eq!(c.mtu, 1500);
        let conf = NetConf::parse(c.plugin.to_string().as_bytes()).unwrap();
        assert_eq!(conf.rangesets.len(), 2);
        let mut doc = json!({"cniVersion": "1.1.0", "name": "n", "type": "ebpfcni", "mtu": 1400});
        assert_eq!(complete(&mut doc, &node(&["10.244.7.0/24"]), 1500, false).unwrap().mtu, 1400);
        let mut doc = json!({"cniVersion": "1.1.0", "name": "n", "type": "ebpfcni"});
        assert!(complete(&mut doc, &node(&[]), 1500, true).is_err(), "no podCIDR");
    }
}
