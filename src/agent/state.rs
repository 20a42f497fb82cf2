//! The agent's state file, `/run/ebpfcni/<network>/agent.json`: what
//! `ebpfcni status` shows and what CNI STATUS asks (a network the agent
//! manages is ready once the agent has programmed the node). Written
//! whole under a private name and renamed into place, so a reader never
//! sees half of it. Under /run: after a reboot the node's routes are gone
//! too, and the node is not ready until the agent has run again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const STATE_ROOT: &str = "/run/ebpfcni";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerState {
    pub name: String,
    pub pod_cidrs: Vec<String>,
    pub address: Option<String>,
    /// "programmed", or why the peer is left out.
    pub status: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastReconcile {
    /// Seconds since the epoch.
    pub at: u64,
    pub ok: bool,
    pub error: Option<String>,
    /// Routes, tunnel entries, set elements and links changed.
    pub changes: usize,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentState {
    /// starting, ready, degraded (the last reconcile failed; the node runs
    /// on what was programmed before) or stopped.
    pub state: String,
    /// The node has been programmed and the CNI config written.
    pub ready: bool,
    pub pid: u32,
    pub node: String,
    pub network: String,
    pub routing: String,
    pub source: String,
    pub pod_cidrs: Vec<String>,
    pub mtu: Option<u32>,
    pub cni_config: String,
    pub peers: Vec<PeerState>,
    pub last_reconcile: Option<LastReconcile>,
    /// Objects of the peer source that could not be read.
    pub source_errors: Vec<String>,
}

pub fn path(network: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(network).join("agent.json")
}

impl AgentState {
    pub fn load(network: &str) -> Result<Option<Self>> {
        let p = path(network);
        match std::fs::read(&p) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("parse {}", p.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        let p = path(&self.network);
        let dir = p.parent().expect("state file has a directory");
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let tmp = dir.join(format!(".agent.json.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("write {}", p.display()))
    }
}
