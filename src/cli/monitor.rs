//! `ebpfcni monitor`: the datapath's ring buffer as readable lines (or
//! JSON objects): time, source, destination, protocol and ports, verdict,
//! reason, pod. Drops always; every flow with --flows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use libbpf_rs::RingBufferBuilder;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::time::{clock_gettime, ClockId};

use super::{ifname, Target};
use crate::datapath::event::{decode, Event};

#[derive(Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    target: Target,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Also report allowed flows (every packet), not only drops.
    #[arg(long)]
    flows: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

/// Wall-clock time of a CLOCK_MONOTONIC timestamp.
fn wall_clock(ts_ns: u64) -> SystemTime {
    let mono = clock_gettime(ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64);
    let age = mono.map(|m| m.saturating_sub(ts_ns)).unwrap_or(0);
    SystemTime::now() - Duration::from_nanos(age)
}

/// "10.244.1.2 (veth…)": the pod an event happened at.
fn pod_name(pods: &std::collections::HashMap<u32, std::net::IpAddr>, ifindex: u32) -> String {
    match pods.get(&ifindex) {
        Some(ip) => format!("{ip}({})", ifname(ifindex)),
        None => ifname(ifindex),
    }
}

fn line(e: &Event, pod: &str) -> String {
    let t = wall_clock(e.ts_ns).duration_since(UNIX_EPOCH).unwrap_or_default();
    let ports = |ip: &std::net::IpAddr, port: u16| match ip {
        std::net::IpAddr::V6(_) => format!("[{ip}]:{port}"),
        _ => format!("{ip}:{port}"),
    };
    let reason = if e.reason.is_empty() { String::new() } else { format!(" reason={}", e.reason) };
    format!(
        "{}.{:03} {:<10} {:<8} {} -> {} {}{reason} pod={}",
        t.as_secs(),
        t.subsec_millis(),
        e.verdict.to_uppercase(),
        e.direction,
        ports(&e.src, e.sport),
        ports(&e.dst, e.dport),
        e.proto,
        pod
    )
}

pub fn run(args: &MonitorArgs) -> Result<()> {
    let (dir, maps) = args.target.open()?;
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.context("install signal handler")?;
    }
    if args.flows {
        let _lock = crate::datapath::lock_dir(&dir)?;
        crate::policy::set_trace_flows(&maps, true)?;
    }
    let seen = std::cell::Cell::new(0u64);
    let json = args.json;
    // Pods come and go while the monitor runs: look them up again when an
    // event names an interface not seen before.
    let pods = std::cell::RefCell::new(std::collections::HashMap::new());
    let refresh = || -> std::collections::HashMap<u32, std::net::IpAddr> {
        maps.pods().map(|v| v.into_iter().map(|p| (p.ifindex, p.addr)).collect()).unwrap_or_default()
    };
    let mut builder = RingBufferBuilder::new();
    builder
        .add(&maps.events, |raw: &[u8]| {
            let e = decode(raw);
            if !pods.borrow().contains_key(&e.ifindex) {
                *pods.borrow_mut() = refresh();
            }
            let pod = pod_name(&pods.borrow(), e.ifindex);
            if json {
                let mut v = serde_json::to_value(&e).unwrap_or_default();
                v["pod"] = serde_json::json!(pod);
                println!("{v}");
            } else {
                println!("{}", line(&e, &pod));
            }
            seen.set(seen.get() + 1);
            0
        })
        .context("open events ring buffer")?;
    let ring = builder.build().context("open events ring buffer")?;
    let started = Instant::now();
    let result = loop {
        if STOP.load(Ordering::SeqCst)
            || args.count.is_some_and(|c| seen.get() >= c)
            || args.duration.is_some_and(|d| started.elapsed().as_secs_f64() >= d)
        {
            break Ok(());
        }
        if let Err(e) = ring.poll(Duration::from_millis(100)) {
            if !STOP.load(Ordering::SeqCst) {
                break Err(e).context("poll events");
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    };
    if args.flows {
        let _lock = crate::datapath::lock_dir(&dir)?;
        crate::policy::set_trace_flows(&maps, false)?;
    }
    result
}
