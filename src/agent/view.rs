//! What the agent reconciles towards: the cluster's nodes, each with its
//! pod ranges and underlay address, as one snapshot (`ClusterView`). Any
//! peer source builds one — the NodeList file here, the Kubernetes watch
//! later — and hands it to the same `reconcile`.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use k8s_openapi::api::core::v1::Node;
use serde_json::Value;

use crate::ipam::Cidr;

/// One node as policy and routing need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<Cidr>,
    /// The first `status.addresses` entry of type InternalIP.
    pub internal_ip: Option<IpAddr>,
}

/// A snapshot of the cluster's nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: Vec<NodeInfo>,
    /// Objects that could not be read ("item 3: why"); the others count.
    pub errors: Vec<String>,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> Result<Self> {
        let name = node.metadata.name.clone().ok_or_else(|| anyhow!("a Node without metadata.name"))?;
        let spec = node.spec.as_ref();
        let mut raw: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        if raw.is_empty() {
            raw.extend(spec.and_then(|s| s.pod_cidr.clone()));
        }
        let pod_cidrs = raw
            .iter()
            .map(|c| c.parse::<Cidr>().map(|c| c.as_network()).with_context(|| format!("node {name}: podCIDR {c:?}")))
            .collect::<Result<Vec<_>>>()?;
        let internal_ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse().ok());
        Ok(NodeInfo { name, pod_cidrs, internal_ip })
    }
}

impl ClusterView {
    /// A NodeList as `kubectl get nodes -o json` prints it (a `List` with
    /// `items`), or a bare array of Nodes. A malformed node is reported
    /// and left out; the others count.
    pub fn from_node_list(input: &[u8]) -> Result<Self> {
        let v: Value = serde_json::from_slice(input).context("the peers file is not JSON")?;
        let items = match &v {
            Value::Array(a) => a.clone(),
            Value::Object(o) => o
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| anyhow!("expected a NodeList (an object with items) or an array of Nodes"))?,
            _ => return Err(anyhow!("expected a NodeList (an object with items) or an array of Nodes")),
        };
        let mut view = ClusterView::default();
        for (i, item) in items.into_iter().enumerate() {
            match serde_json::from_value::<Node>(item)
                .map_err(anyhow::Error::from)
                .and_then(|n| NodeInfo::from_node(&n))
            {
                Ok(n) if view.nodes.iter().any(|o| o.name == n.name) => {
                    view.errors.push(format!("item {i}: node {} listed twice", n.name))
                }
                Ok(n) => view.nodes.push(n),
                Err(e) => view.errors.push(format!("item {i}: {e:#}")),
            }
        }
        view.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(view)
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every pod range of every node: the cluster's pod addresses.
    pub fn pod_ranges(&self) -> Vec<Cidr> {
        let mut all: Vec<Cidr> = self.nodes.iter().flat_map(|n| n.pod_cidrs.iter().copied()).collect();
        all.sort_by_key(|c| (c.addr, c.prefix));
        all.dedup();
        all
    }
}

/// Where the agent learns the cluster's nodes from. `poll` is cheap and
/// called often; it returns a view only when the source changed (or on
/// the first call).
pub trait PeerSource {
    fn poll(&mut self) -> Result<Option<ClusterView>>;
    /// For status: where the peers come from.
    fn describe(&self) -> String;
}

/// A NodeList file, re-read when its content changes.
pub struct FileSource {
    pub path: PathBuf,
    last: Option<Vec<u8>>,
}

impl FileSource {
    pub fn new(path: PathBuf) -> Self {
        FileSource { path, last: None }
    }
}

impl PeerSource for FileSource {
    fn poll(&mut self) -> Result<Option<ClusterView>> {
        let bytes = std::fs::read(&self.path).with_context(|| format!("read peers file {}", self.path.display()))?;
        if self.last.as_ref() == Some(&bytes) {
            return Ok(None);
        }
        // A file being written may be cut short: keep the last view until
        // it parses.
        let view =
            ClusterView::from_node_list(&bytes).with_context(|| format!("read peers file {}", self.path.display()))?;
        self.last = Some(bytes);
        Ok(Some(view))
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_node_list_is_read() {
        let list = br#"{"apiVersion":"v1","kind":"List","items":[
          {"apiVersion":"v1","kind":"Node","metadata":{"name":"b"},
           "spec":{"podCIDR":"10.244.2.0/24","podCIDRs":["10.244.2.0/24","fd00:2::/64"]},
           "status":{"addresses":[{"type":"Hostname","address":"b"},{"type":"InternalIP","address":"192.168.0.2"}]}},
          {"apiVersion":"v1","kind":"Node","metadata":{"name":"a"},"spec":{"podCIDR":"10.244.1.5/24"},
           "status":{"addresses":[{"type":"InternalIP","address":"192.168.0.1"}]}},
          {"apiVersion":"v1","kind":"Node","metadata":{"name":"c"},"spec":{"podCIDR":"banana"}}]}"#;
        let v = ClusterView::from_node_list(list).unwrap();
        assert_eq!(v.nodes.len(), 2, "{:?}", v.errors);
        assert_eq!(v.errors.len(), 1);
        assert_eq!(v.nodes[0].name, "a");
        assert_eq!(v.nodes[0].pod_cidrs[0].to_string(), "10.244.1.0/24");
        assert_eq!(v.node("b").unwrap().pod_cidrs.len(), 2);
        assert_eq!(v.node("b").unwrap().internal_ip, Some("192.168.0.2".parse().unwrap()));
        assert_eq!(v.pod_ranges().len(), 3);
    }
}
