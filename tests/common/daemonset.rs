//! The DaemonSet of deploy/ebpfcni.yaml run on a test "node" the way a
//! kubelet would run it, with podman: the image built from the
//! Containerfile, the init container to completion, then the agent
//! container, each with exactly its manifest's command, environment,
//! user, capabilities and mounts, on the node's network namespace (host
//! network), with a service account projected as a kubelet does (token,
//! ca.crt, namespace) and `KUBERNETES_SERVICE_HOST/PORT` pointing at a TLS
//! front of the fake API server. What a test cannot take from the manifest
//! as it is: the host paths a kubelet would mount are the node's own test
//! directories (a test never writes the machine's /opt/cni/bin or
//! /var/lib/cni), and the conflist template's paths and names are the
//! node's (its bridge, pins, data directory, network name).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

pub const MANIFEST: &str = "deploy/ebpfcni.yaml";

/// The manifest's documents as JSON (PyYAML, which kubernetes-validate brings).
pub fn documents() -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(MANIFEST)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "read {MANIFEST}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn doc<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {MANIFEST}"))
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// podman as this machine runs it: runc, and limits within the sandbox's
/// (it refuses crun's hybrid-cgroup setup and podman's default rlimits).
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

pub const PODMAN_LIMITS: [&str; 4] = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];

/// The image, built from this repository; removed when dropped.
pub struct Image(pub String);

impl Image {
    pub fn build(tag: &str) -> Image {
        let image = Image(tag.to_string());
        ok(
            Command::new("deploy/build-image.sh").args(["--binary", super::BIN, "--tag", tag]).output().unwrap(),
            "build the image",
        );
        image
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

/// The API server's TLS front (socat, in `netns`, on `ip:6443`, to the
/// fake server's plain HTTP) and the service account a kubelet would
/// project: a CA, a server certificate for `ip`, a token.
pub struct ApiTls {
    pub dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub token: String,
    socat: Child,
}

impl ApiTls {
    pub fn start(dir: &Path, netns: &str, ip: &str, backend: std::net::SocketAddr) -> ApiTls {
        fs::create_dir_all(dir).unwrap();
        let sh = |cmd: &str| ok(Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().unwrap(), cmd);
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        sh(&format!("openssl req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN=ebpfcni-test-ca 2>/dev/null"));
        sh(&format!("openssl req {ec} -keyout server.key -out server.csr -subj /CN=kube-apiserver 2>/dev/null"));
        fs::write(
            dir.join("server.ext"),
            format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        sh("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.crt 2>/dev/null");
        let port = 6443;
        let socat = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind={ip},reuseaddr,fork,cert={0}/server.crt,key={0}/server.key,verify=0",
                dir.display()
            ))
            .arg(format!("TCP:{backend}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat (scripts/deps.sh installs it)");
        // Listening once a TLS handshake succeeds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let probe = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{netns}"))
                .args(["openssl", "s_client", "-connect", &format!("{ip}:{port}"), "-CAfile"])
                .arg(dir.join("ca.crt"))
                .args(["-verify_return_error", "-brief"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if probe.status.success() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the TLS front never answered");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let token = format!("ebpfcni-sa-token-{}", std::process::id());
        let sa = dir.join("serviceaccount");
        fs::create_dir_all(&sa).unwrap();
        fs::copy(dir.join("ca.crt"), sa.join("ca.crt")).unwrap();
        fs::write(sa.join("token"), &token).unwrap();
        fs::write(sa.join("namespace"), "kube-system").unwrap();
        ApiTls { dir: dir.to_path_buf(), host: ip.to_string(), port, token, socat }
    }

    pub fn service_account(&self) -> PathBuf {
        self.dir.join("serviceaccount")
    }
}

impl Drop for ApiTls {
    fn drop(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
    }
}

/// Where one node's pod finds what a kubelet would give it.
pub struct NodeMounts {
    /// metadata.name (the downward API's spec.nodeName).
    pub node_name: String,
    /// The node's network namespace (hostNetwork).
    pub netns: String,
    /// The node's own directories: opt-cni-bin, net.d, config, run-ebpfcni.
    pub dir: PathBuf,
    /// The node's data directory: the template's dataDir lives under it,
    /// at the same path inside the container as outside.
    pub data_dir: PathBuf,
    pub service_account: PathBuf,
    pub api_host: String,
    pub api_port: u16,
}

/// The DaemonSet's pod template, read from the manifest.
pub struct DaemonSetPod {
    pod: Value,
    /// The ConfigMap's conflist (the template).
    pub conflist: Value,
}

impl DaemonSetPod {
    pub fn from_manifest() -> DaemonSetPod {
        let docs = documents();
        let pod = doc(&docs, "DaemonSet")["spec"]["template"]["spec"].clone();
        let text = doc(&docs, "ConfigMap")["data"]["10-ebpfcni.conflist"].as_str().unwrap().to_string();
        DaemonSetPod { pod, conflist: serde_json::from_str(&text).unwrap() }
    }

    /// The template for a node: the manifest's, with the node's names and
    /// paths (`overrides`: keys of the node's own CNI config) in its
    /// ebpfcni entry.
    pub fn template_for(&self, network: &str, overrides: &Value) -> Value {
        let mut doc = self.conflist.clone();
        doc["name"] = Value::from(network);
        let plugins = doc["plugins"].as_array_mut().unwrap();
        let ours = plugins.iter_mut().find(|p| p["type"] == "ebpfcni").unwrap();
        for (k, v) in overrides.as_object().into_iter().flatten() {
            ours[k] = v.clone();
        }
        doc
    }

    fn host_path_of(&self, volume: &str, m: &NodeMounts) -> (PathBuf, Option<String>) {
        let v = self.pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == volume).unwrap();
        if v.get("configMap").is_some() {
            return (m.dir.join("config"), None);
        }
        let path = v["hostPath"]["path"].as_str().unwrap();
        // Shared with the machine, per-test names inside: the same paths.
        // The rest: the node's own directories.
        let host = match path {
            "/sys/fs/bpf" | "/run/netns" | "/proc/sys/net" => PathBuf::from(path),
            "/var/lib/cni" => return (m.data_dir.clone(), Some(m.data_dir.display().to_string())),
            other => m.dir.join(other.trim_start_matches('/').replace('/', "-")),
        };
        (host, None)
    }

    /// `podman run` for one container of the pod, detached unless `init`.
    pub fn run_args(&self, container: &Value, m: &NodeMounts, name: &str, init: bool) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into(), "--name".into(), name.into()];
        a.extend(PODMAN_LIMITS.iter().map(|s| s.to_string()));
        if init {
            a.push("--rm".into());
        } else {
            a.push("-d".into());
        }
        assert_eq!(self.pod["hostNetwork"], true);
        a.push(format!("--network=ns:/run/netns/{}", m.netns));
        let sc = &container["securityContext"];
        assert_ne!(sc["privileged"], true);
        if let Some(uid) = sc["runAsUser"].as_u64() {
            a.push(format!("--user={uid}"));
        }
        if sc["allowPrivilegeEscalation"] == false {
            a.push("--security-opt=no-new-privileges".into());
        }
        for c in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
            a.push(format!("--cap-drop={}", c.as_str().unwrap()));
        }
        for c in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            a.push(format!("--cap-add={}", c.as_str().unwrap()));
        }
        // The downward API and the service's address, as a kubelet sets them.
        let mut env: Vec<(String, String)> = vec![
            ("KUBERNETES_SERVICE_HOST".into(), m.api_host.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), m.api_port.to_string()),
        ];
        for e in container["env"].as_array().into_iter().flatten() {
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("spec.nodeName") => m.node_name.clone(),
                Some(other) => panic!("no downward value for {other}"),
                None => e["value"].as_str().unwrap().to_string(),
            };
            env.push((e["name"].as_str().unwrap().to_string(), value));
        }
        for (k, v) in &env {
            a.push(format!("--env={k}={v}"));
        }
        for vm in container["volumeMounts"].as_array().into_iter().flatten() {
            let (host, at) = self.host_path_of(vm["name"].as_str().unwrap(), m);
            fs::create_dir_all(&host).unwrap();
            let mut opts = Vec::new();
            if vm["readOnly"] == true {
                opts.push("ro");
            }
            if vm["mountPropagation"] == "HostToContainer" {
                opts.push("rslave");
            }
            let at = at.unwrap_or_else(|| vm["mountPath"].as_str().unwrap().to_string());
            let suffix = if opts.is_empty() { String::new() } else { format!(":{}", opts.join(",")) };
            a.push(format!("--volume={}:{at}{suffix}", host.display()));
        }
        if self.pod["automountServiceAccountToken"] != false {
            a.push(format!(
                "--volume={}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
                m.service_account.display()
            ));
        }
        let command: Vec<String> =
            container["command"].as_array().unwrap().iter().map(|c| expand(c.as_str().unwrap(), &env)).collect();
        a.push(format!("--entrypoint={}", command[0]));
        a.push(container["image"].as_str().unwrap().to_string());
        a.extend(command[1..].iter().cloned());
        a
    }

    pub fn init_container(&self) -> &Value {
        &self.pod["initContainers"][0]
    }

    pub fn agent_container(&self) -> &Value {
        &self.pod["containers"][0]
    }

    /// The agent container's readiness probe command.
    pub fn readiness(&self) -> Vec<String> {
        let c = &self.agent_container()["readinessProbe"]["exec"]["command"];
        c.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    }
}

/// `$(VAR)` references to the container's environment, as a kubelet expands them.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// Rewrites a container's image to `tag` (the test's build of it).
pub fn with_image(container: &Value, tag: &str) -> Value {
    let mut c = container.clone();
    c["image"] = Value::from(tag);
    c
}
