//! STATUS (spec 1.1): succeeds only when an ADD would: the kernel features
//! the datapath needs (BTF, bpf_redirect_peer, ...), bpffs,
//! the program pinned or loadable, an address left in every range set,
//! and (for a network with `routing`) the agent having programmed the node.
//! Otherwise code 50 naming everything that is missing. Changes nothing.

use anyhow::Result;

use super::config::NetConf;
use super::error::{CniError, NOT_READY, TRY_AGAIN_LATER};
use crate::datapath::{self, Datapath};
use crate::ipam::{self, DiskStore};

pub fn status(conf: &NetConf) -> Result<()> {
    let mut missing: Vec<String> = datapath::missing_required(&datapath::probe_features())
        .into_iter()
        .map(|f| format!("the kernel lacks {f}"))
        .collect();
    if !datapath::bpffs_available(&conf.bpf_pin_path) {
        missing.push(format!("bpfPinPath {} is not on a bpf filesystem", conf.bpf_pin_path.display()));
    } else {
        match Datapath::open_pinned(&conf.bpf_pin_path, &conf.name) {
            // The next ADD would find no room (at the config's size, which
            // it would resize the maps to).
            Ok(Some(dp)) => {
                let pods = dp.maps.pods()?.len();
                if pods >= conf.sizes.max_pods as usize {
                    missing
                        .push(format!("the network is full: {pods} pods attached, maxPods is {}", conf.sizes.max_pods));
                }
            }
            Ok(None) => {
                if let Err(e) = datapath::probe_load(&conf.sizes) {
                    missing.push(format!("the BPF program cannot be loaded: {e:#}"));
                }
            }
            Err(e) => missing.push(format!("the pinned datapath cannot be opened: {e:#}")),
        }
    }
    if conf.data_dir.join(&conf.name).is_dir() {
        let store = DiskStore::open(&conf.data_dir, &conf.name)?;
        for set in &conf.rangesets {
            if !ipam::has_free(&store, set)? {
                let ranges: Vec<String> = set.iter().map(|r| format!("{}-{}", r.start, r.end)).collect();
                missing.push(format!("no free address left in {}", ranges.join(", ")));
            }
        }
    }
    missing.extend(agent_missing(conf));
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CniError::error(NOT_READY, format!("not ready: {}", missing.join("; "))))
    }
}

/// A network the agent manages is ready once the agent has programmed the
/// node (routes or tunnel to the other nodes); what is missing until then.
fn agent_missing(conf: &NetConf) -> Option<String> {
    conf.routing?;
    match crate::agent::AgentState::load(&conf.name) {
        Ok(Some(s)) if s.ready => None,
        Ok(Some(s)) => Some(format!("ebpfcni agent is {} (the node is not programmed yet)", s.state)),
        Ok(None) => Some("ebpfcni agent has not programmed the node yet".to_string()),
        Err(e) => Some(format!("ebpfcni agent state unreadable: {e:#}")),
    }
}

/// ADD on a network the agent manages waits for the agent (code 11, the
/// runtime retries): a pod started before the node is programmed would
/// reach no other node, and on a runtime that never asks STATUS (or a
/// conflist installed before the agent ran) nothing else would stop it.
pub fn require_agent(conf: &NetConf) -> Result<()> {
    match agent_missing(conf) {
        None => Ok(()),
        Some(why) => Err(CniError::error(TRY_AGAIN_LATER, format!("try again later: {why}"))),
    }
}
