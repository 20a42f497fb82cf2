//! What a snapshot becomes for the rest of ebpfcni: the objects `policy
//! sync` compiles (the `List` that `kubectl get pods,namespaces,
//! networkpolicies -A -o json` prints) and the NodeList file the agent's
//! peer source reads (what `kubectl get nodes -o json` prints, reduced to
//! the fields it uses).

use std::path::Path;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

use super::Snapshot;

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

/// The input of `policy::k8s::compile`: every pod, namespace and
/// NetworkPolicy, each with its apiVersion and kind, as kubectl prints them.
pub fn policy_input(snapshot: &Snapshot) -> Value {
    let mut items = Vec::new();
    let mut push = |v: serde_json::Result<Value>| items.extend(v.ok());
    snapshot.namespaces.iter().for_each(|o| push(serde_json::to_value(o)));
    snapshot.pods.iter().for_each(|o| push(serde_json::to_value(o)));
    snapshot.network_policies.iter().for_each(|o| push(serde_json::to_value(o)));
    list(items)
}

/// The nodes as a NodeList: metadata.name, spec.podCIDR and podCIDRs,
/// status.addresses (InternalIP among them), as `kubectl get nodes -o json`
/// prints them.
pub fn node_list(nodes: &[Node]) -> Value {
    let items = nodes
        .iter()
        .map(|n| {
            let spec = n.spec.clone().unwrap_or_default();
            let addresses = n.status.as_ref().and_then(|s| s.addresses.clone()).unwrap_or_default();
            let mut item = json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": n.metadata.name.clone().unwrap_or_default()},
                "spec": {},
                "status": {"addresses": addresses},
            });
            if let Some(c) = spec.pod_cidr {
                item["spec"]["podCIDR"] = json!(c);
            }
            if let Some(c) = spec.pod_cidrs {
                item["spec"]["podCIDRs"] = json!(c);
            }
            item
        })
        .collect();
    list(items)
}

/// Writes `node_list(nodes)` to `path` atomically (a reader never sees half
/// a file), and only when it changed; returns whether it wrote.
pub fn write_node_list(path: &Path, nodes: &[Node]) -> Result<bool> {
    let text = serde_json::to_string_pretty(&node_list(nodes))? + "\n";
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn policy_input_is_what_kubectl_prints() {
        let snapshot = Snapshot {
            namespaces: vec![from::<Namespace>(json!({"metadata": {"name": "k17", "labels": {"team": "a"}}}))],
            pods: vec![from::<Pod>(json!({
                "metadata": {"name": "web", "namespace": "k17", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
                "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]},
            }))],
            network_policies: vec![from::<NetworkPolicy>(json!({
                "metadata": {"name": "deny", "namespace": "k17"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
            }))],
            ..Default::default()
        };
        let input = policy_input(&snapshot);
        let kinds: Vec<&str> = input["items"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Namespace", "Pod", "NetworkPolicy"]);
        assert_eq!(input["items"][2]["apiVersion"], "networking.k8s.io/v1");
        // The compiler policy sync uses takes it as it is: the pod is isolated.
        let compiled = crate::policy::k8s::compile(&input, &Default::default(), &[]).unwrap();
        assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
        assert_eq!(compiled.set.isolation.len(), 1);
    }

    #[test]
    fn node_list_keeps_what_peers_need() {
        let node: Node = from(json!({
            "metadata": {"name": "n1", "labels": {"x": "y"}, "resourceVersion": "7"},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00::/64"], "providerID": "p"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}], "capacity": {"cpu": "2"}},
        }));
        let list = node_list(&[node]);
        assert_eq!(list["kind"], "List");
        assert_eq!(
            list["items"][0],
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                   "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00::/64"]},
                   "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}})
        );
        let dir = std::env::temp_dir().join(format!("ebpfcni-k17-nodelist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nodes.json");
        let nodes: Vec<Node> = vec![from(list["items"][0].clone())];
        assert!(write_node_list(&path, &nodes).unwrap());
        assert!(!write_node_list(&path, &nodes).unwrap(), "unchanged: not rewritten");
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, list);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
