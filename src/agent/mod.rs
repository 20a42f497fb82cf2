//! `ebpfcni agent`: the node daemon. A level-triggered loop: the peer
//! source (a NodeList file today, the Kubernetes watch later) yields a
//! `ClusterView`; `Reconciler::reconcile` makes the node match it (routes
//! or the tunnel map, the VXLAN device, sysctls, ebpfcni's nftables
//! table) and writes the CNI config once the node is programmed. It runs
//! when the source changes, every `interval` anyway (what drifted is put
//! back), and after a failure with a backoff. The datapath never depends
//! on the agent: killed, the node keeps forwarding on what it programmed
//! (fail static); restarted, it diffs and changes only what is wrong.

mod reconcile;
mod state;
mod view;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;

pub use reconcile::{complete_for_node, Options, Reconciler, ROUTE_PROTOCOL, VXLAN_DEVICE};
pub use state::{AgentState, LastReconcile};
pub use view::{ClusterView, FileSource, NodeInfo, PeerSource};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs until SIGTERM or SIGINT; then records "stopped" (the node stays
/// programmed and ready) and returns.
pub fn run(opts: Options, mut source: Box<dyn PeerSource>, network: String, interval: Duration) -> Result<()> {
    install_signal_handlers()?;
    let mut state = AgentState::load(&network).ok().flatten().unwrap_or_default();
    state.state = "starting".into();
    state.pid = std::process::id();
    state.node = opts.node.clone();
    state.network = network;
    state.source = source.describe();
    state.cni_config = opts.cni_conf.display().to_string();
    state.save()?;
    let mut reconciler = Reconciler::new(opts)?;
    let mut view: Option<ClusterView> = None;
    let mut due = Instant::now();
    let mut backoff = Duration::from_millis(250);
    while !STOP.load(Ordering::SeqCst) {
        match source.poll() {
            Ok(Some(v)) => {
                view = Some(v);
                due = Instant::now();
            }
            Ok(None) => {}
            Err(e) => state.source_errors = vec![format!("{e:#}")],
        }
        if let Some(v) = view.as_ref().filter(|_| Instant::now() >= due) {
            let started = Instant::now();
            let result = reconciler.reconcile(v);
            let mut last = LastReconcile {
                at: now_secs(),
                ok: result.is_ok(),
                duration_ms: started.elapsed().as_millis() as u64,
                ..Default::default()
            };
            state.source_errors = v.errors.clone();
            match result {
                Ok(out) => {
                    last.changes = out.changes;
                    state.ready = true;
                    state.state = "ready".into();
                    state.peers = out.peers;
                    state.mtu = out.mtu;
                    state.routing = out.routing.map(|r| r.to_string()).unwrap_or_default();
                    if let Some(conf) = &out.conf {
                        state.pod_cidrs =
                            conf.rangesets.iter().flatten().map(|r| r.subnet.as_network().to_string()).collect();
                    }
                    if out.changes > 0 {
                        eprintln!("ebpfcni agent: reconciled, {} change(s)", out.changes);
                    }
                    due = Instant::now() + interval;
                    backoff = Duration::from_millis(250);
                }
                Err(e) => {
                    eprintln!("ebpfcni agent: reconcile failed (retrying in {backoff:?}): {e:#}");
                    last.error = Some(format!("{e:#}"));
                    state.state = if state.ready { "degraded" } else { "starting" }.into();
                    due = Instant::now() + backoff;
                    backoff = (backoff * 2).min(interval);
                }
            }
            state.last_reconcile = Some(last);
            if let Err(e) = state.save() {
                eprintln!("ebpfcni agent: {e:#}");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    state.state = "stopped".into();
    state.save()?;
    eprintln!("ebpfcni agent: stopped; the node keeps forwarding on what was programmed");
    Ok(())
}
