//! `ebpfcni monitor`: the datapath's ring buffer as readable lines (or
//! JSON objects): time, source, destination, protocol and ports, verdict,
//! reason, pod. Drops always; every flow with --flows. One monitor per
//! network at a time (the ring buffer has a single reader); it prints only
//! events newer than itself and exactly `--count` of them. With --flows, a
//! guard process (`ebpfcni monitor-guard`, reading a pipe the monitor
//! holds) turns tracing off when the monitor dies, however it dies.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::time::{clock_gettime, ClockId};

use super::{ifname, Target};
use crate::datapath::event::Event;
use crate::datapath::{claim_events, release_dead_reader, Maps};

#[derive(Args)]
pub struct GuardArgs {
    /// The network's pin directory.
    #[arg(long)]
    dir: PathBuf,
}

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
pub(super) fn pod_name(pods: &std::collections::HashMap<u32, std::net::IpAddr>, ifindex: u32) -> String {
    match pods.get(&ifindex) {
        Some(ip) => format!("{ip}({})", ifname(ifindex)),
        None => ifname(ifindex),
    }
}

pub(super) fn line(e: &Event, pod: &str) -> String {
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

fn now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

/// Starts the guard that ends flow tracing once this process is gone: it
/// waits for EOF on a pipe only this process holds, in a session of its
/// own so the terminal's signals do not reach it.
fn spawn_guard(dir: &Path) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("find this binary for the monitor guard")?;
    Command::new(exe)
        .args(["monitor-guard", "--dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("start the monitor guard")
}

/// `ebpfcni monitor-guard`: blocks until its stdin closes (the monitor
/// died or ended), then turns flow tracing off unless another monitor
/// holds the events by then.
pub fn guard(args: &GuardArgs) -> Result<()> {
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGTERM, Signal::SIGPIPE] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
    }
    let mut sink = [0u8; 64];
    while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
    let maps = Maps::open(&args.dir)?;
    release_dead_reader(&args.dir, &maps)?;
    Ok(())
}

pub fn run(args: &MonitorArgs) -> Result<()> {
    // Anything queued before this instant is older than the monitor.
    let since = now_ns();
    let (dir, maps) = args.target.open()?;
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.context("install signal handler")?;
    }
    // A closed stdout (`monitor | head -1`) is a write error the monitor
    // ends on, turning tracing off itself, not a signal that kills it.
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.context("ignore SIGPIPE")?;
    let guard = if args.flows { Some(spawn_guard(&dir)?) } else { None };
    let reader = claim_events(&dir, &maps, args.flows)?;
    let result = read_events(args, &maps, since);
    if args.flows {
        reader.stop_tracing(&dir, &maps)?;
    }
    drop(reader);
    if let Some(mut g) = guard {
        drop(g.stdin.take());
        let _ = g.wait();
    }
    result
}

/// Where the monitor's output went: a closed stdout ends it quietly (as
/// `head` expects), any other write error is an error.
fn written(r: std::io::Result<()>, closed: &std::cell::Cell<bool>) -> Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            closed.set(true);
            Ok(())
        }
        r => r.context("write events to stdout"),
    }
}

/// Prints events newer than the monitor until --count, --duration, a
/// signal, a closed stdout or an error ends it.
fn read_events(args: &MonitorArgs, maps: &Maps, since: u64) -> Result<()> {
    let seen = std::cell::Cell::new(0u64);
    // Events the datapath lost since the monitor started (rate limited
    // per source, or no room in the ring buffer): in every JSON event (as
    // of when it was read) and in a last line on stderr.
    let lost_at_start = maps.events_lost().unwrap_or_default();
    let lost = std::cell::Cell::new(crate::datapath::EventLoss::default());
    let read_lost = || lost.set(maps.events_lost().unwrap_or_default().since(&lost_at_start));
    let json = args.json;
    let count = args.count;
    // Pods come and go while the monitor runs: look them up again when an
    // event names an interface not seen before.
    let pods = std::cell::RefCell::new(std::collections::HashMap::new());
    let refresh = || -> std::collections::HashMap<u32, std::net::IpAddr> {
        maps.pods().map(|v| v.into_iter().map(|p| (p.ifindex, p.addr)).collect()).unwrap_or_default()
    };
    let bad = std::cell::RefCell::new(None);
    let closed = std::cell::Cell::new(false);
    let ring = maps.events_ring(|e| {
        if closed.get() || count.is_some_and(|c| seen.get() >= c) {
            return -1; // stop consuming: the rest stays queued
        }
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                *bad.borrow_mut() = Some(err);
                return -1;
            }
        };
        if e.ts_ns < since {
            return 0;
        }
        if !pods.borrow().contains_key(&e.ifindex) {
            *pods.borrow_mut() = refresh();
        }
        let pod = pod_name(&pods.borrow(), e.ifindex);
        let text = if json {
            let mut v = serde_json::to_value(&e).unwrap_or_default();
            v["pod"] = serde_json::json!(pod);
            read_lost();
            v["lost"] = serde_json::json!(lost.get().total());
            v.to_string()
        } else {
            line(&e, &pod)
        };
        if let Err(err) = written(writeln!(std::io::stdout(), "{text}"), &closed) {
            *bad.borrow_mut() = Some(err);
            return -1;
        }
        if closed.get() {
            return -1;
        }
        seen.set(seen.get() + 1);
        0
    })?;
    let started = Instant::now();
    loop {
        let done = || count.is_some_and(|c| seen.get() >= c);
        if STOP.load(Ordering::SeqCst)
            || closed.get()
            || done()
            || args.duration.is_some_and(|d| started.elapsed().as_secs_f64() >= d)
        {
            read_lost();
            let l = lost.get();
            if l.total() > 0 {
                eprintln!(
                    "{} events lost ({} over their source's rate, {} with the ring buffer full)",
                    l.total(),
                    l.rate_limited,
                    l.ring_full
                );
            }
            return Ok(());
        }
        let polled = ring.poll(Duration::from_millis(100));
        if let Some(err) = bad.borrow_mut().take() {
            return Err(err);
        }
        if let Err(e) = polled {
            if !STOP.load(Ordering::SeqCst) && !closed.get() && !done() {
                return Err(e).context("poll events");
            }
        }
        written(std::io::stdout().flush(), &closed)?;
    }
}
