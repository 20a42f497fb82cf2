//! `ebpfcni-agent metrics`: the Prometheus metrics of this node's datapath,
//! served on a local address (or printed once), without an agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use crate::cni::config::DEFAULT_PIN_PATH;
use crate::metrics::{self, Metrics};

#[derive(Args)]
pub struct MetricsArgs {
    /// Serve /metrics here (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:9476")]
    listen: SocketAddr,
    /// Print the exposition once instead of serving it.
    #[arg(long)]
    once: bool,
    /// The config's "bpfPinPath".
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
}

pub fn run(args: &MetricsArgs) -> Result<()> {
    let m = Arc::new(Metrics::new(&args.pin_path));
    if args.once {
        print!("{}", m.encode());
        return Ok(());
    }
    let server = metrics::serve(args.listen, m)?;
    println!("serving metrics on http://{}/metrics", server.local_addr());
    loop {
        std::thread::park();
    }
}
