//! The operator's rules as they were written: `<pin dir>/rules`, a hash
//! map only user space reads (rule number -> JSON text), so `policy list`
//! shows one row per rule — hand-made ones as typed, synced ones with
//! their NetworkPolicy's name — instead of the expanded `iprules` entries.

use std::path::Path;

use anyhow::{Context, Result};
use libbpf_rs::{libbpf_sys, MapCore, MapFlags, MapHandle, MapType};

const PIN: &str = "rules";
/// Room for a Kubernetes namespace/name (63 + 253) and the JSON around it.
const TEXT: usize = 512;
const MAX_RULES: u32 = 65_536;

pub struct RuleBook(MapHandle);

impl RuleBook {
    /// Opens the network's rule book, creating it on first use. The caller
    /// holds the pin directory's lock when it changes the book.
    pub fn open(dir: &Path) -> Result<Self> {
        let pin = dir.join(PIN);
        if pin.exists() {
            return MapHandle::from_pinned_path(&pin)
                .map(RuleBook)
                .with_context(|| format!("open rule book {}", pin.display()));
        }
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            // Allocated as rules come: a preallocated book would pin
            // 65,536 x 512 bytes of kernel memory per network.
            map_flags: libbpf_sys::BPF_F_NO_PREALLOC,
            ..Default::default()
        };
        let mut map = MapHandle::create(MapType::Hash, Some(PIN), 4, TEXT as u32, MAX_RULES, &opts)
            .context("create rule book map")?;
        map.pin(&pin).with_context(|| format!("pin rule book at {}", pin.display()))?;
        Ok(RuleBook(map))
    }

    /// Opens it only when it exists (read-only views).
    pub fn open_if_pinned(dir: &Path) -> Result<Option<Self>> {
        if dir.join(PIN).exists() {
            Self::open(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn put(&self, rule: u32, text: &str) -> Result<()> {
        let mut value = [0u8; TEXT];
        let n = text.len().min(TEXT);
        value[..n].copy_from_slice(&text.as_bytes()[..n]);
        self.0.update(&rule.to_ne_bytes(), &value, MapFlags::ANY).with_context(|| format!("record rule {rule}"))
    }

    pub fn remove(&self, rule: u32) -> Result<()> {
        match self.0.delete(&rule.to_ne_bytes()) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => Err(e).context("forget rule"),
            _ => Ok(()),
        }
    }

    /// Every recorded rule, by number.
    pub fn all(&self) -> Result<Vec<(u32, String)>> {
        let mut out = Vec::new();
        for key in self.0.keys() {
            let Some(raw) = self.0.lookup(&key, MapFlags::ANY).context("read rule book")? else { continue };
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            let rule = u32::from_ne_bytes(key[..4].try_into().expect("4-byte key"));
            out.push((rule, String::from_utf8_lossy(&raw[..end]).into_owned()));
        }
        out.sort();
        Ok(out)
    }

    pub fn clear(&self) -> Result<()> {
        for (rule, _) in self.all()? {
            self.remove(rule)?;
        }
        Ok(())
    }
}
