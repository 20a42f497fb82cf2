//! The node agent's peer source from the cluster: the watched Nodes, as
//! the NodeList `kubectl get nodes -o json` prints, into the same
//! `ClusterView` the file source gives. Until the first complete list,
//! and while the API server is unreachable, it yields nothing new: the
//! routes and tunnel entries in force stay (fail static).

use std::sync::Arc;

use anyhow::Result;

use super::{node_list, ClusterWatch};
use crate::agent::{ClusterView, PeerSource};

pub struct KubeSource {
    watch: Arc<ClusterWatch>,
    last: Option<Vec<u8>>,
}

impl KubeSource {
    pub fn new(watch: Arc<ClusterWatch>) -> Self {
        KubeSource { watch, last: None }
    }
}

impl PeerSource for KubeSource {
    fn poll(&mut self) -> Result<Option<ClusterView>> {
        if !self.watch.health().synced {
            return Ok(None);
        }
        let bytes = serde_json::to_vec(&node_list(&self.watch.snapshot().nodes))?;
        if self.last.as_ref() == Some(&bytes) {
            return Ok(None);
        }
        let view = ClusterView::from_node_list(&bytes)?;
        self.last = Some(bytes);
        Ok(Some(view))
    }

    fn describe(&self) -> String {
        "the Kubernetes API (Nodes)".into()
    }
}
