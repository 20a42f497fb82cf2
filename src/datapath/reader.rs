//! Who reads a network's `events` ring buffer. A BPF ring buffer has a
//! single consumer: two readers would split the events between them, so
//! one reader at a time holds `<pin dir>/monitors` (flock), and records
//! its pid as `monitors/<pid>` for the next one's message. Flow tracing
//! follows the live reader: it is on only while a `--flows` reader holds
//! the lock. The kernel drops the lock however the reader dies, and a
//! guard process (see `cli::monitor`) turns tracing off then.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use super::maps::Maps;
use super::pins::lock_dir;

const MONITORS_DIR: &str = "monitors";

/// The exclusive right to read the events ring buffer, held until drop.
pub struct EventsReader {
    _lock: Flock<File>,
    me: PathBuf,
}

impl Drop for EventsReader {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.me);
    }
}

fn try_lock(dir: &Path) -> Result<Option<Flock<File>>> {
    let monitors = dir.join(MONITORS_DIR);
    fs::create_dir_all(&monitors).with_context(|| format!("create {}", monitors.display()))?;
    let file = File::open(&monitors).with_context(|| format!("open {}", monitors.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("lock {}", monitors.display())),
    }
}

/// The lock, if it comes free within `patience`.
fn lock_within(dir: &Path, patience: Duration) -> Result<Option<Flock<File>>> {
    let step = Duration::from_millis(50);
    for _ in 0..patience.as_millis() / step.as_millis() {
        if let Some(lock) = try_lock(dir)? {
            return Ok(Some(lock));
        }
        std::thread::sleep(step);
    }
    try_lock(dir)
}

/// The pids recorded under `monitors/`.
fn recorded(dir: &Path) -> Vec<String> {
    fs::read_dir(dir.join(MONITORS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Becomes the network's only events reader, or fails naming the one
/// that is. `trace_flows` is what this reader wants of flow tracing: it is
/// set either way, so tracing left on by a reader that died is turned off.
pub fn claim_events(dir: &Path, maps: &Maps, trace_flows: bool) -> Result<EventsReader> {
    // A reader that just ended may still be releasing: give it a moment.
    let Some(lock) = lock_within(dir, Duration::from_secs(1))? else {
        let pids = recorded(dir);
        bail!(
            "another monitor (pid {}) is reading the events of {}: the events ring buffer has a single reader, \
             so only one monitor runs at a time; stop it first",
            if pids.is_empty() { "?".to_string() } else { pids.join(", ") },
            dir.display()
        );
    };
    for stale in recorded(dir) {
        let _ = fs::remove_dir(dir.join(MONITORS_DIR).join(stale));
    }
    let me = dir.join(MONITORS_DIR).join(std::process::id().to_string());
    fs::create_dir_all(&me).with_context(|| format!("create {}", me.display()))?;
    let reader = EventsReader { _lock: lock, me };
    set_tracing(dir, maps, trace_flows)?;
    Ok(reader)
}

fn set_tracing(dir: &Path, maps: &Maps, on: bool) -> Result<()> {
    let _lock = lock_dir(dir)?;
    crate::policy::set_trace_flows(maps, on)
}

impl EventsReader {
    /// Ends flow tracing before the reader goes.
    pub fn stop_tracing(&self, dir: &Path, maps: &Maps) -> Result<()> {
        set_tracing(dir, maps, false)
    }
}

/// After a reader ended (however it ended): when no reader holds the
/// events any more, flow tracing goes off. A reader that took over
/// meanwhile has set tracing as it wants it.
pub fn release_dead_reader(dir: &Path, maps: &Maps) -> Result<bool> {
    // A dying reader's files close one by one: the guard's pipe may close
    // before the lock does. Give it a moment; a live reader keeps it.
    let Some(_lock) = lock_within(dir, Duration::from_secs(2))? else { return Ok(false) };
    for stale in recorded(dir) {
        let _ = fs::remove_dir(dir.join(MONITORS_DIR).join(stale));
    }
    set_tracing(dir, maps, false)?;
    Ok(true)
}
