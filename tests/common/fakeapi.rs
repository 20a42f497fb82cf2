//! A fake Kubernetes API server for tests: HTTP/1.1 on 127.0.0.1 that
//! speaks list and watch for Nodes, Pods, Namespaces (core v1) and
//! NetworkPolicies (networking.k8s.io/v1) as real clients (kubectl,
//! kube-rs) expect: legacy discovery (`/version`, `/api`, `/apis`,
//! `/api/v1`, `/apis/networking.k8s.io/v1`), one resourceVersion counter
//! for every object, lists, single objects, chunked watch streams of
//! ADDED/MODIFIED/DELETED events, BOOKMARKs when asked for, an ERROR event
//! with a 410 Status for a resourceVersion older than the kept history,
//! `timeoutSeconds`, equality label selectors and `metadata.name` field
//! selectors, and kubectl's Table form when it asks for one.
//!
//! The test drives it: `apply` (add or modify), `delete`, `compact` (forget
//! the history so far), `bookmark`, `cut` (close every open connection) and
//! `down`/`up` (stop listening, then listen again on the same port).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The four kinds: (kind, group version, plural, namespaced, short names).
const KINDS: [(&str, &str, &str, bool, &[&str]); 4] = [
    ("Node", "v1", "nodes", false, &["no"]),
    ("Pod", "v1", "pods", true, &["po"]),
    ("Namespace", "v1", "namespaces", false, &["ns"]),
    ("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", true, &["netpol"]),
];

/// How often an open watch that allows bookmarks gets one unasked.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

type Key = (String, String, String); // kind, namespace ("" when cluster-scoped), name

struct Event {
    rv: u64,
    kind: String,
    kind_of: &'static str, // ADDED, MODIFIED, DELETED
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    /// Watches from a resourceVersion below this one get 410 Gone.
    oldest: u64,
    /// Bumped by `cut`: every open stream ends.
    epoch: u64,
    /// Bumped by `bookmark`: every open watch that allows them gets one.
    bookmarks: u64,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    up: AtomicBool,
    log: Mutex<Vec<String>>,
    /// When set, a request without `Authorization: Bearer <token>` gets 401.
    token: Mutex<Option<String>>,
}

pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// The network namespace it listens in (None: the test's own).
    netns: Option<String>,
    acceptor: Mutex<Option<thread::JoinHandle<()>>>,
}

/// Binds `addr` inside `netns` (a socket keeps the namespace it was made in).
fn bind_in(netns: Option<&str>, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let Some(netns) = netns else { return TcpListener::bind(addr) };
    let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
    thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        TcpListener::bind(addr)
    })
    .join()
    .expect("bind in netns")
}

fn kind_info(kind: &str) -> &'static (&'static str, &'static str, &'static str, bool, &'static [&'static str]) {
    KINDS.iter().find(|k| k.0 == kind).unwrap_or_else(|| panic!("fakeapi: unknown kind {kind}"))
}

impl FakeApi {
    /// Listens on 127.0.0.1 on a port of the kernel's choosing.
    pub fn start() -> FakeApi {
        Self::serve(TcpListener::bind("127.0.0.1:0").expect("fakeapi: bind 127.0.0.1:0"), None)
    }

    /// Listens on `ip` inside network namespace `netns` (the nodes of a
    /// cluster reach it over their underlay), on a port of the kernel's choosing.
    pub fn start_in(netns: &str, ip: &str) -> FakeApi {
        let addr = SocketAddr::new(ip.parse().expect("an IP address"), 0);
        Self::serve(bind_in(Some(netns), addr).expect("fakeapi: bind"), Some(netns.to_string()))
    }

    fn serve(listener: TcpListener, netns: Option<String>) -> FakeApi {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State { rv: 100, ..Default::default() }),
            changed: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            up: AtomicBool::new(true),
            log: Mutex::new(Vec::new()),
            token: Mutex::new(None),
        });
        let api = FakeApi { shared, addr, netns, acceptor: Mutex::new(None) };
        api.listen(listener);
        api
    }

    fn listen(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let handle = thread::spawn(move || {
            for stream in listener.incoming() {
                if !shared.up.load(Ordering::SeqCst) {
                    break; // woken by `down`: the listener closes
                }
                let Ok(stream) = stream else { continue };
                let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    shared.conns.lock().unwrap().insert(id, clone);
                }
                let shared = shared.clone();
                thread::spawn(move || {
                    let _ = serve_connection(&shared, stream);
                    shared.conns.lock().unwrap().remove(&id);
                });
            }
        });
        *self.acceptor.lock().unwrap() = Some(handle);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server to `dir/kubeconfig`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Adds the object, or replaces the one of the same kind, namespace and
    /// name; returns its new resourceVersion.
    pub fn apply(&self, mut object: Value) -> u64 {
        let kind = object["kind"].as_str().expect("fakeapi: object without kind").to_string();
        let (_, gv, _, namespaced, _) = kind_info(&kind);
        object["apiVersion"] = json!(gv);
        let name = object["metadata"]["name"].as_str().expect("fakeapi: object without name").to_string();
        let ns = if *namespaced {
            object["metadata"]["namespace"].as_str().unwrap_or("default").to_string()
        } else {
            String::new()
        };
        if *namespaced {
            object["metadata"]["namespace"] = json!(ns);
        }
        let mut st = self.shared.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let key = (kind.clone(), ns, name.clone());
        let existing = st.objects.get(&key).cloned();
        let kind_of = match &existing {
            Some(old) => {
                object["metadata"]["uid"] = old["metadata"]["uid"].clone();
                object["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                "MODIFIED"
            }
            None => {
                object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
                object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                "ADDED"
            }
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.objects.insert(key, object.clone());
        st.history.push(Event { rv, kind, kind_of, object });
        self.shared.changed.notify_all();
        rv
    }

    /// Deletes an object; `namespace` is ignored for cluster-scoped kinds.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let ns = if kind_info(kind).3 { namespace.to_string() } else { String::new() };
        let mut st = self.shared.state.lock().unwrap();
        let Some(mut object) = st.objects.remove(&(kind.to_string(), ns, name.to_string())) else { return false };
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.history.push(Event { rv, kind: kind.to_string(), kind_of: "DELETED", object });
        self.shared.changed.notify_all();
        true
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().unwrap().rv
    }

    /// Forgets the history so far, as etcd compaction does: a watch from
    /// any earlier resourceVersion gets 410 Gone. Open watches go on.
    pub fn compact(&self) {
        let mut st = self.shared.state.lock().unwrap();
        Self::compact_locked(&mut st);
    }

    fn compact_locked(st: &mut State) {
        st.history.clear();
        st.rv += 1; // the compaction takes a revision, as in etcd
        st.oldest = st.rv;
    }

    /// Compacts and cuts every connection at once (no bookmark slips in
    /// between): every client's resourceVersion is too old, so each must
    /// relist.
    pub fn expire(&self) {
        {
            let mut st = self.shared.state.lock().unwrap();
            Self::compact_locked(&mut st);
            st.epoch += 1;
            self.shared.changed.notify_all();
        }
        for (_, c) in self.shared.conns.lock().unwrap().drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Sends a BOOKMARK to every open watch that allows them.
    pub fn bookmark(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.bookmarks += 1;
        self.shared.changed.notify_all();
    }

    /// Closes every open connection (watches included) at once.
    pub fn cut(&self) {
        {
            let mut st = self.shared.state.lock().unwrap();
            st.epoch += 1;
            self.shared.changed.notify_all();
        }
        for (_, c) in self.shared.conns.lock().unwrap().drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Stops listening (connections are refused) and cuts every connection.
    pub fn down(&self) {
        if !self.shared.up.swap(false, Ordering::SeqCst) {
            return;
        }
        // Wakes the acceptor, which then closes the listener.
        let (netns, addr) = (self.netns.clone(), self.addr);
        let woke = thread::spawn(move || {
            if let Some(n) = netns {
                let ns = std::fs::File::open(format!("/run/netns/{n}")).ok()?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            }
            TcpStream::connect(addr).ok()
        })
        .join()
        .ok()
        .flatten()
        .is_some();
        // A listener whose namespace is gone cannot be woken: it is left to
        // the process's end rather than waited for.
        if let Some(h) = self.acceptor.lock().unwrap().take().filter(|_| woke) {
            let _ = h.join();
        }
        self.cut();
    }

    /// Listens again on the same address.
    pub fn up(&self) {
        if self.shared.up.load(Ordering::SeqCst) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match bind_in(self.netns.as_deref(), self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("fakeapi: rebind {}: {e}", self.addr),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        self.shared.up.store(true, Ordering::SeqCst);
        self.listen(listener);
    }

    /// From now on, answers only requests bearing this token (401 otherwise),
    /// as an API server does for a service account's.
    pub fn require_token(&self, token: &str) {
        *self.shared.token.lock().unwrap() = Some(token.to_string());
    }

    /// Every request so far, as "GET /path?query".
    pub fn requests(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many open connections there are now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.down();
        let mut st = self.shared.state.lock().unwrap();
        st.stopping = true;
        self.shared.changed.notify_all();
    }
}

// ---- objects -------------------------------------------------------------

pub fn node(name: &str, pod_cidrs: &[&str], internal_ip: &str) -> Value {
    json!({
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs},
        "status": {"addresses": [
            {"type": "InternalIP", "address": internal_ip},
            {"type": "Hostname", "address": name},
        ]},
    })
}

pub fn namespace(name: &str, labels: Value) -> Value {
    let mut labels = if labels.is_null() { json!({}) } else { labels };
    labels["kubernetes.io/metadata.name"] = json!(name);
    json!({"kind": "Namespace", "metadata": {"name": name, "labels": labels}, "status": {"phase": "Active"}})
}

/// A running pod at `ip` on `node_name`; `ports`: (name, protocol, port).
pub fn pod(
    namespace: &str,
    name: &str,
    labels: Value,
    ip: &str,
    node_name: &str,
    ports: &[(&str, &str, u16)],
) -> Value {
    let ports: Vec<Value> =
        ports.iter().map(|(n, p, port)| json!({"name": n, "protocol": p, "containerPort": port})).collect();
    json!({
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "k17", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

pub fn network_policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

// ---- HTTP ----------------------------------------------------------------

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    accept: String,
    authorization: String,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut accept = String::new();
    let mut authorization = String::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "accept" => accept = v.trim().to_string(),
                "authorization" => authorization = v.trim().to_string(),
                "content-length" => length = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    Some(Request { method, path: path.to_string(), query, accept, authorization })
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(w: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        _ => "Error",
    };
    write!(
        w,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )?;
    w.flush()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn serve_connection(shared: &Shared, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    while let Some(req) = read_request(&mut reader) {
        let q: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        shared.log.lock().unwrap().push(format!("{} {}?{}", req.method, req.path, q.join("&")));
        let wanted = shared.token.lock().unwrap().as_ref().map(|t| format!("Bearer {t}"));
        if wanted.is_some_and(|w| w != req.authorization) {
            respond(&mut w, 401, &status(401, "Unauthorized", "Unauthorized"))?;
            continue;
        }
        if req.method != "GET" {
            respond(&mut w, 405, &status(405, "MethodNotAllowed", "the fake API server only reads"))?;
            continue;
        }
        let port = w.local_addr()?.port();
        match route(&req.path, port) {
            Route::Doc(doc) => respond(&mut w, 200, &doc)?,
            Route::NotFound => respond(&mut w, 404, &status(404, "NotFound", &format!("{} not found", req.path)))?,
            Route::Collection { kind, namespace } => {
                let watch = matches!(req.query.get("watch").map(String::as_str), Some("1" | "true"));
                if watch {
                    return watch_stream(shared, &mut w, &req, kind, namespace.as_deref());
                }
                let list = list(shared, &req, kind, namespace.as_deref());
                respond(&mut w, 200, &list)?;
            }
            Route::Object { kind, namespace, name } => {
                let ns = namespace.unwrap_or_default();
                let found = shared.state.lock().unwrap().objects.get(&(kind.to_string(), ns, name.clone())).cloned();
                match found {
                    Some(o) if req.accept.contains("as=Table") => respond(&mut w, 200, &table(kind, &[o], ""))?,
                    Some(o) => respond(&mut w, 200, &o)?,
                    None => {
                        let plural = kind_info(kind).2;
                        respond(&mut w, 404, &status(404, "NotFound", &format!("{plural} \"{name}\" not found")))?
                    }
                }
            }
        }
    }
    Ok(())
}

enum Route {
    Doc(Value),
    NotFound,
    Collection { kind: &'static str, namespace: Option<String> },
    Object { kind: &'static str, namespace: Option<String>, name: String },
}

fn resources(gv: &str) -> Value {
    let list: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.1 == gv)
        .map(|(kind, _, plural, namespaced, short)| {
            json!({"name": plural, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind,
                   "verbs": ["get", "list", "watch"], "shortNames": short})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

fn route(path: &str, port: u16) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (gv, rest) = match segs.as_slice() {
        ["version"] => {
            return Route::Doc(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-k17fake",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
                "platform": "linux/amd64"}))
        }
        ["api"] => {
            return Route::Doc(json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}]}))
        }
        ["apis"] => {
            let v = json!({"groupVersion": "networking.k8s.io/v1", "version": "v1"});
            return Route::Doc(json!({"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [{"name": "networking.k8s.io", "versions": [v], "preferredVersion": v}]}));
        }
        ["api", "v1"] => return Route::Doc(resources("v1")),
        ["apis", "networking.k8s.io", "v1"] => return Route::Doc(resources("networking.k8s.io/v1")),
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", "networking.k8s.io", "v1", rest @ ..] => ("networking.k8s.io/v1", rest),
        _ => return Route::NotFound,
    };
    let find = |plural: &str| KINDS.iter().find(|k| k.1 == gv && k.2 == plural);
    match rest {
        [plural] => find(plural).map_or(Route::NotFound, |k| Route::Collection { kind: k.0, namespace: None }),
        ["namespaces", ns, plural] => match find(plural) {
            Some(k) if k.3 => Route::Collection { kind: k.0, namespace: Some(ns.to_string()) },
            _ => Route::NotFound,
        },
        ["namespaces", ns, plural, name] => match find(plural) {
            Some(k) if k.3 => Route::Object { kind: k.0, namespace: Some(ns.to_string()), name: name.to_string() },
            _ => Route::NotFound,
        },
        [plural, name] => match find(plural) {
            Some(k) if !k.3 => Route::Object { kind: k.0, namespace: None, name: name.to_string() },
            _ => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

/// Equality-based label selectors (`a=b,c!=d,e,!f`) and `metadata.name`
/// / `metadata.namespace` field selectors.
fn selected(req: &Request, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    let label_ok = req.query.get("labelSelector").is_none_or(|sel| {
        sel.split(',').filter(|t| !t.is_empty()).all(|term| {
            let term = term.trim();
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels.get(k.trim()).is_none()
            } else {
                labels.get(term).is_some()
            }
        })
    });
    let field_ok = req.query.get("fieldSelector").is_none_or(|sel| {
        sel.split(',').filter(|t| !t.is_empty()).all(|term| match term.split_once('=') {
            Some(("metadata.name", v)) => object["metadata"]["name"].as_str() == Some(v.trim_start_matches('=')),
            Some(("metadata.namespace", v)) => {
                object["metadata"]["namespace"].as_str() == Some(v.trim_start_matches('='))
            }
            _ => true,
        })
    });
    label_ok && field_ok
}

fn in_scope(kind: &str, namespace: Option<&str>, object: &Value) -> bool {
    object["kind"] == kind && namespace.is_none_or(|ns| object["metadata"]["namespace"] == ns)
}

fn list(shared: &Shared, req: &Request, kind: &'static str, namespace: Option<&str>) -> Value {
    let st = shared.state.lock().unwrap();
    let items: Vec<Value> =
        st.objects.values().filter(|o| in_scope(kind, namespace, o) && selected(req, o)).cloned().collect();
    let rv = st.rv.to_string();
    drop(st);
    if req.accept.contains("as=Table") {
        return table(kind, &items, &rv);
    }
    let gv = kind_info(kind).1;
    json!({"kind": format!("{kind}List"), "apiVersion": gv, "metadata": {"resourceVersion": rv}, "items": items})
}

/// The meta.k8s.io/v1 Table kubectl asks for when it prints for humans.
fn table(kind: &str, items: &[Value], rv: &str) -> Value {
    let namespaced = kind_info(kind).3;
    let mut columns =
        vec![json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0})];
    columns.push(json!({"name": "Age", "type": "string", "description": "Age", "priority": 0}));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut meta = o["metadata"].clone();
            if !namespaced {
                meta.as_object_mut().map(|m| m.remove("namespace"));
            }
            json!({
                "cells": [o["metadata"]["name"], "1d"],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
            })
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
           "columnDefinitions": columns, "rows": rows})
}

fn chunk(w: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = event.to_string();
    line.push('\n');
    write!(w, "{:x}\r\n{line}\r\n", line.len())?;
    w.flush()
}

fn watch_stream(
    shared: &Shared,
    w: &mut TcpStream,
    req: &Request,
    kind: &'static str,
    namespace: Option<&str>,
) -> std::io::Result<()> {
    let as_table = req.accept.contains("as=Table");
    let bookmarks = req.query.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
    let timeout = req.query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let started = Instant::now();
    write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    w.flush()?;
    let wrap = |o: &Value| if as_table { table(kind, std::slice::from_ref(o), "") } else { o.clone() };
    let gv = kind_info(kind).1;

    let mut st = shared.state.lock().unwrap();
    let epoch = st.epoch;
    let mut bookmarks_seen = st.bookmarks;
    // Where the stream starts: "" or "0" = the current state as ADDED events.
    let mut cursor = match req.query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => {
            let initial: Vec<Value> =
                st.objects.values().filter(|o| in_scope(kind, namespace, o) && selected(req, o)).cloned().collect();
            let rv = st.rv;
            drop(st);
            for o in &initial {
                chunk(w, &json!({"type": "ADDED", "object": wrap(o)}))?;
            }
            st = shared.state.lock().unwrap();
            rv
        }
        Some(v) => {
            let Ok(rv) = v.parse::<u64>() else {
                drop(st);
                chunk(w, &json!({"type": "ERROR", "object": status(400, "BadRequest", "invalid resourceVersion")}))?;
                return write!(w, "0\r\n\r\n");
            };
            if rv < st.oldest {
                let msg = format!("too old resource version: {rv} ({})", st.oldest);
                drop(st);
                chunk(w, &json!({"type": "ERROR", "object": status(410, "Expired", &msg)}))?;
                return write!(w, "0\r\n\r\n");
            }
            rv
        }
    };
    let mut last_bookmark = Instant::now();
    loop {
        if st.epoch != epoch || st.stopping {
            return Ok(()); // cut: the connection just ends, as a broken one does
        }
        let pending: Vec<Value> = st
            .history
            .iter()
            .filter(|e| e.rv > cursor && e.kind == kind && in_scope(kind, namespace, &e.object))
            .filter(|e| selected(req, &e.object))
            .map(|e| json!({"type": e.kind_of, "object": wrap(&e.object)}))
            .collect();
        cursor = cursor.max(st.rv);
        let want_bookmark = bookmarks && (st.bookmarks != bookmarks_seen || last_bookmark.elapsed() >= BOOKMARK_EVERY);
        bookmarks_seen = st.bookmarks;
        let rv = st.rv;
        drop(st);
        for e in &pending {
            chunk(w, e)?;
        }
        if want_bookmark {
            let object = json!({"kind": kind, "apiVersion": gv, "metadata": {"resourceVersion": rv.to_string()}});
            chunk(w, &json!({"type": "BOOKMARK", "object": object}))?;
            last_bookmark = Instant::now();
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return write!(w, "0\r\n\r\n"); // a clean end: the client watches again from where it was
        }
        st = shared.state.lock().unwrap();
        if st.rv == cursor && st.epoch == epoch && st.bookmarks == bookmarks_seen && !st.stopping {
            st = shared.changed.wait_timeout(st, Duration::from_millis(200)).unwrap().0;
        }
    }
}
