//! deploy/: the manifests validate against Kubernetes' own schemas
//! (`kubernetes-validate --strict`), decode into k8s-openapi types and
//! say what the issue asks (read-only RBAC on four kinds, host network,
//! every taint tolerated, node-critical priority, one agent per node in a
//! rolling update, the host paths, the install init container, readiness
//! from `ebpfcni status`); the image builds with podman from the
//! Containerfile, pulling nothing, and runs `ebpfcni version`.

mod common;

use std::process::Command;

use common::BIN;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

use common::daemonset::{documents, podman, Image, MANIFEST, PODMAN_LIMITS};
use common::have;

fn validate(path: &str) -> std::process::Output {
    Command::new("kubernetes-validate").args(["--strict", "--kubernetes-version", "1.33.0", path]).output().unwrap()
}

#[test]
fn manifests_validate_strictly() {
    if !have("kubernetes-validate", &["--version"]) {
        return;
    }
    let out = validate(MANIFEST);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for kind in ["serviceaccount", "clusterrole", "clusterrolebinding", "configmap", "daemonset"] {
        assert!(text.contains(&format!("passed for resource {kind}/")), "{kind} not validated: {text}");
    }
    // --strict does reject what the schema does not know.
    let dir = std::env::temp_dir().join(format!("ebpfcni-k17-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    let manifest = std::fs::read_to_string(MANIFEST).unwrap();
    std::fs::write(&bad, manifest.replace("hostNetwork: true", "hostNetwork: true\n      hostNetwrk: true")).unwrap();
    let out = validate(bad.to_str().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "a misspelt field passed: {}", String::from_utf8_lossy(&out.stdout));
}

fn one<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let doc = docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {MANIFEST}"));
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind} does not decode: {e}"))
}

#[test]
fn manifests_decode_and_say_what_they_must() {
    if !have("python3", &["-c", "import yaml"]) {
        return;
    }
    let docs = documents();
    assert_eq!(docs.len(), 5);
    let sa: ServiceAccount = one(&docs, "ServiceAccount");
    let role: ClusterRole = one(&docs, "ClusterRole");
    let binding: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
    let config: ConfigMap = one(&docs, "ConfigMap");
    let ds: DaemonSet = one(&docs, "DaemonSet");

    // RBAC: get, list, watch of exactly the four kinds, nothing else.
    let mut granted = Vec::new();
    for rule in role.rules.unwrap() {
        assert_eq!(rule.verbs, ["get", "list", "watch"]);
        assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none());
        for group in rule.api_groups.unwrap() {
            for r in rule.resources.clone().unwrap() {
                granted.push(format!("{group}/{r}"));
            }
        }
    }
    granted.sort();
    assert_eq!(granted, ["/namespaces", "/nodes", "/pods", "networking.k8s.io/networkpolicies"]);
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (Some(&subject.name), subject.namespace.as_ref()),
        (sa.metadata.name.as_ref(), sa.metadata.namespace.as_ref())
    );

    let spec = ds.spec.unwrap();
    let update = spec.update_strategy.unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    let rolling = update.rolling_update.unwrap();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!((rolling.max_unavailable, rolling.max_surge), (Some(IntOrString::Int(1)), Some(IntOrString::Int(0))));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    let tolerations = pod.tolerations.unwrap();
    assert!(tolerations
        .iter()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()));
    let host_paths: Vec<String> =
        pod.volumes.iter().flatten().filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone())).collect();
    for p in ["/sys/fs/bpf", "/opt/cni/bin", "/etc/cni/net.d", "/var/lib/cni", "/run/netns"] {
        assert!(host_paths.iter().any(|h| h == p), "no hostPath {p}: {host_paths:?}");
    }
    let init = &pod.init_containers.unwrap()[0];
    let command = init.command.clone().unwrap();
    assert_eq!(&command[..3], ["/ebpfcni-agent", "install", "--node-name=$(NODE_NAME)"]);
    let agent = &pod.containers[0];
    let probe = agent.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap();
    assert_eq!(probe.command.as_deref(), Some(&["/ebpfcni".to_string(), "status".to_string()][..]));
    let sc = agent.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true), "capabilities, not privileged");
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let mut added = caps.add.clone().unwrap();
    added.sort();
    assert_eq!(added, ["BPF", "NET_ADMIN", "NET_RAW", "PERFMON", "SYS_ADMIN"]);

    // The conflist the init container installs is one ebpfcni accepts.
    // The agent runs the node agent on the ConfigMap's template, for this node.
    let args = agent.command.clone().unwrap();
    for a in ["--node-name=$(NODE_NAME)", "--template=/etc/ebpfcni/10-ebpfcni.conflist", "--cni-conf=/etc/cni/net.d"] {
        assert!(args.iter().any(|x| x == a), "agent lacks {a}: {args:?}");
    }

    // The ConfigMap holds a template: no ranges (each node's come from its
    // Node); given one, it is a conflist ebpfcni accepts.
    let template: Value = serde_json::from_str(&config.data.unwrap()["10-ebpfcni.conflist"]).unwrap();
    let ours = &template["plugins"][0];
    assert!(ours.get("subnet").is_none() && ours.get("ipam").is_none() && ours.get("mtu").is_none(), "{ours}");
    let mut conflist = template.clone();
    conflist["plugins"][0]["subnet"] = "10.244.7.0/24".into();
    let conflist = conflist.to_string();
    let dir = std::env::temp_dir().join(format!("ebpfcni-k17-conflist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("in.conflist"), conflist).unwrap();
    let out = Command::new(BIN)
        .args(["conflist", "check"])
        .arg(dir.join("in.conflist"))
        .args(["--cni-path", "/usr/lib/cni", "--out"])
        .arg(dir.join("out.conflist"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn image_builds_and_runs_version() {
    if !common::privileged() || !have("podman", &["--version"]) {
        return;
    }
    let image = Image::build(&format!("localhost/ebpfcni-k17-test:{}", std::process::id()));
    let run = |entrypoint: &str, arg: &str| {
        let out = podman()
            .args(["run", "--rm", "--network", "none", "--entrypoint", entrypoint])
            .args(PODMAN_LIMITS)
            .args([&image.0, arg])
            .output()
            .unwrap();
        assert!(out.status.success(), "run {entrypoint}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run("/ebpfcni", "version");
    assert!(text.starts_with(&format!("ebpfcni {}", env!("CARGO_PKG_VERSION"))), "{text}");
    // The agent's binary is in it too, and the nft it runs.
    assert!(run("/ebpfcni-agent", "version").starts_with("ebpfcni-agent "));
    assert!(run("/usr/sbin/nft", "--version").starts_with("nftables v"));
}
