//! The Kubernetes objects `policy sync` reads, as `k8s-openapi` types:
//! the `List` kubectl prints (`kubectl get pods,namespaces,networkpolicies
//! -A -o json`), or a bare array of objects. Each item is decoded on its
//! own, so one malformed object never hides the others.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{anyhow, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;
use serde_json::Value;

pub type Labels = BTreeMap<String, String>;

/// A pod as policy sees it.
pub struct PodInfo {
    pub namespace: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    /// Container port name -> (protocol number, port).
    pub named_ports: BTreeMap<String, (u8, u16)>,
}

/// A NetworkPolicy that could not even be decoded: what can be salvaged
/// to keep the pods it means to isolate isolated.
pub struct BrokenPolicy {
    pub namespace: String,
    pub name: String,
    pub error: String,
    /// Its podSelector, when that much decodes (else: every pod of its
    /// namespace).
    pub pod_selector: Option<LabelSelector>,
    /// Its policyTypes, when they decode (else: both directions).
    pub policy_types: Option<Vec<String>>,
}

#[derive(Default)]
pub struct Objects {
    pub pods: Vec<PodInfo>,
    /// Namespace -> labels (`kubernetes.io/metadata.name` always set).
    pub namespaces: BTreeMap<String, Labels>,
    pub policies: Vec<NetworkPolicy>,
    pub broken: Vec<BrokenPolicy>,
    /// Objects other than policies that could not be decoded.
    pub errors: Vec<String>,
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
struct ItemList {
    items: Vec<Value>,
}

pub fn protocol_number(p: Option<&str>) -> Result<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "SCTP" => Ok(132),
        other => Err(anyhow!("unknown protocol {other:?}")),
    }
}

fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

fn pod_info(pod: Pod) -> Option<PodInfo> {
    let spec = pod.spec.unwrap_or_default();
    if spec.host_network == Some(true) {
        return None; // the node's address, not a pod's
    }
    let status = pod.status.unwrap_or_default();
    // A finished pod's address is free to be reused by another pod: it
    // must not lend that one its labels.
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> =
        status.pod_ips.into_iter().flatten().filter_map(|i| i.ip.parse().ok()).collect::<Vec<_>>();
    if ips.is_empty() {
        ips.extend(status.pod_ip.and_then(|s| s.parse::<IpAddr>().ok()));
    }
    if ips.is_empty() {
        return None;
    }
    // Regular containers and sidecars (init containers that keep running).
    let sidecars = spec.init_containers.into_iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let mut named_ports = BTreeMap::new();
    for c in spec.containers.into_iter().chain(sidecars) {
        for p in c.ports.into_iter().flatten() {
            let (Some(name), Ok(proto)) = (p.name, protocol_number(p.protocol.as_deref())) else { continue };
            if let Ok(port) = u16::try_from(p.container_port) {
                named_ports.entry(name).or_insert((proto, port));
            }
        }
    }
    let meta = pod.metadata;
    Some(PodInfo { namespace: namespace_of(&meta), labels: meta.labels.unwrap_or_default(), ips, named_ports })
}

fn broken_policy(item: &Value, error: String) -> BrokenPolicy {
    let meta: ObjectMeta = serde_json::from_value(item["metadata"].clone()).unwrap_or_default();
    let spec = &item["spec"];
    BrokenPolicy {
        namespace: namespace_of(&meta),
        name: meta.name.unwrap_or_else(|| "?".into()),
        error,
        pod_selector: match spec.get("podSelector") {
            None | Some(Value::Null) => Some(LabelSelector::default()),
            Some(v) => serde_json::from_value(v.clone()).ok(),
        },
        policy_types: serde_json::from_value::<Option<Vec<String>>>(spec["policyTypes"].clone()).ok().flatten(),
    }
}

/// Reads every object of `input`.
pub fn parse(input: &Value) -> Result<Objects> {
    let items: Vec<Value> = match input {
        Value::Array(a) => a.clone(),
        _ => {
            serde_json::from_value::<ItemList>(input.clone())
                .map_err(|e| anyhow!("expected a List of Kubernetes objects: {e}"))?
                .items
        }
    };
    let mut out = Objects::default();
    for item in items {
        let kind = serde_json::from_value::<TypeMeta>(item.clone()).map(|t| t.kind).unwrap_or_default();
        match kind.as_str() {
            "Pod" => match serde_json::from_value::<Pod>(item) {
                Ok(pod) => {
                    if let Some(p) = pod_info(pod) {
                        out.namespaces.entry(p.namespace.clone()).or_default();
                        out.pods.push(p);
                    }
                }
                Err(e) => out.errors.push(format!("Pod: {e}")),
            },
            "Namespace" => match serde_json::from_value::<Namespace>(item) {
                Ok(ns) => {
                    let name = ns.metadata.name.unwrap_or_default();
                    out.namespaces.insert(name, ns.metadata.labels.unwrap_or_default());
                }
                Err(e) => out.errors.push(format!("Namespace: {e}")),
            },
            "NetworkPolicy" => match serde_json::from_value::<NetworkPolicy>(item.clone()) {
                Ok(pol) => {
                    out.namespaces.entry(namespace_of(&pol.metadata)).or_default();
                    out.policies.push(pol);
                }
                Err(e) => {
                    let b = broken_policy(&item, format!("cannot be decoded: {e}"));
                    out.namespaces.entry(b.namespace.clone()).or_default();
                    out.broken.push(b);
                }
            },
            _ => {}
        }
    }
    for (name, labels) in out.namespaces.iter_mut() {
        labels.insert("kubernetes.io/metadata.name".into(), name.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_list_kubectl_prints() {
        let input = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "a"}}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x", "labels": {"app": "web"}},
             "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080},
                                                             {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
             "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "h", "namespace": "x"},
             "spec": {"hostNetwork": true, "containers": []}, "status": {"podIP": "192.0.2.2"}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "ok", "namespace": "x"},
             "spec": {"podSelector": {}}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "bad", "namespace": "y"},
             "spec": {"podSelector": {"matchLabels": {"a": "b"}}, "ingress": "nonsense"}},
        ]});
        let o = parse(&input).unwrap();
        assert_eq!(o.pods.len(), 1, "the host-network pod has no address of its own");
        assert_eq!(o.pods[0].ips.len(), 2);
        assert_eq!(o.pods[0].named_ports["http"], (6, 8080));
        assert_eq!(o.pods[0].named_ports["dns"], (17, 53));
        assert_eq!(o.namespaces["x"]["team"], "a");
        assert_eq!(o.namespaces["y"]["kubernetes.io/metadata.name"], "y");
        assert_eq!(o.policies.len(), 1);
        assert_eq!(o.broken.len(), 1);
        assert_eq!((o.broken[0].namespace.as_str(), o.broken[0].name.as_str()), ("y", "bad"));
        assert!(o.broken[0].pod_selector.is_some());
        assert!(parse(&json!({"kind": "Pod"})).is_err());
    }

    #[test]
    fn finished_pods_and_pods_without_an_address_lend_no_labels() {
        let pod = |name: &str, phase: &str, status_ip: Value| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                   "spec": {"containers": []}, "status": {"phase": phase, "podIP": status_ip}})
        };
        let input = json!({"kind": "List", "items": [
            pod("done", "Succeeded", json!("10.0.0.7")),
            pod("crashed", "Failed", json!("10.0.0.7")),
            pod("pending", "Pending", Value::Null),
            pod("running", "Running", json!("10.0.0.7")),
        ]});
        let o = parse(&input).unwrap();
        assert_eq!(o.pods.len(), 1, "only the running pod holds 10.0.0.7");
        assert_eq!(o.pods[0].labels["app"], "running");
    }
}
