//! What the last `policy sync` could not enforce, kept beside the maps
//! (in a small map of its own, since bpffs holds only BPF objects) so that
//! `ebpfcni status` reports it: one message per broken policy or rule.

use std::path::Path;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

const PIN: &str = "policy_errors";
const SLOTS: u32 = 64;
const MESSAGE: usize = 512;

fn open_or_create(dir: &Path) -> Result<MapHandle> {
    let path = dir.join(PIN);
    if path.exists() {
        return MapHandle::from_pinned_path(&path).with_context(|| format!("open {}", path.display()));
    }
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let mut map = MapHandle::create(MapType::Array, Some(PIN), 4, MESSAGE as u32, SLOTS, &opts)
        .context("create the policy error map")?;
    map.pin(&path).with_context(|| format!("pin {}", path.display()))?;
    Ok(map)
}

fn slot(text: &str) -> Vec<u8> {
    let mut b = vec![0u8; MESSAGE];
    let mut n = text.len().min(MESSAGE - 1);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    b[..n].copy_from_slice(&text.as_bytes()[..n]);
    b
}

/// Records `errors` (replacing the previous sync's).
pub fn save(dir: &Path, errors: &[String]) -> Result<()> {
    if errors.is_empty() && !dir.join(PIN).exists() {
        return Ok(());
    }
    let map = open_or_create(dir)?;
    let mut texts: Vec<String> = errors.iter().take(SLOTS as usize - 1).cloned().collect();
    if errors.len() >= SLOTS as usize {
        texts.push(format!("... {} problems in all", errors.len()));
    }
    for i in 0..SLOTS {
        let text = texts.get(i as usize).map_or("", String::as_str);
        map.update(&i.to_ne_bytes(), &slot(text), MapFlags::ANY).context("write the policy error map")?;
    }
    Ok(())
}

/// What the last sync reported; empty when it applied every policy.
pub fn load(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join(PIN);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let map = MapHandle::from_pinned_path(&path).with_context(|| format!("open {}", path.display()))?;
    let mut out = Vec::new();
    for i in 0..SLOTS {
        let Some(raw) = map.lookup(&i.to_ne_bytes(), MapFlags::ANY).context("read the policy error map")? else {
            continue;
        };
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        if end > 0 {
            out.push(String::from_utf8_lossy(&raw[..end]).into_owned());
        }
    }
    Ok(out)
}
