//! One typed view of a BPF map: keys and values are the skeleton's
//! generated `#[repr(C)]` types, checked against the map's own sizes, so
//! a map of another layout is an error naming it, never a zero-filled or
//! truncated value.

use std::marker::PhantomData;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::datapath::skel::types::{
    ct_budget, ct_key, ct_new_value, ct_value, endpoint_info, event, event_loss, event_source, fastpath, frag_key,
    hostflow_value, identity_key, ip_key, ipcache_key, ipcache_value, pod_info, policy_key, policy_value, settings,
    traffic_stats, tunnel_key, tunnel_value,
};

/// Plain data shared with the kernel: `#[repr(C)]`, every byte
/// initialised (padding is explicit fields), any bit pattern valid.
///
/// # Safety
/// Implement only for such types: the skeleton's generated structs and
/// the fixed-size integers.
pub unsafe trait Plain: Copy + Default {}

macro_rules! plain {
    ($($t:ty),* $(,)?) => { $(
        // SAFETY: generated from the C headers as #[repr(C)] structs of
        // integers and byte arrays with explicit padding fields, or an integer.
        unsafe impl Plain for $t {}
    )* };
}

plain!(
    u32,
    u64,
    ip_key,
    endpoint_info,
    pod_info,
    traffic_stats,
    ipcache_key,
    ipcache_value,
    policy_key,
    policy_value,
    identity_key,
    settings,
    ct_key,
    ct_value,
    ct_new_value,
    ct_budget,
    frag_key,
    hostflow_value,
    event_source,
    event_loss,
    event,
    tunnel_key,
    tunnel_value,
    fastpath,
);

/// The bytes the kernel expects for `v`.
pub fn bytes_of<T: Plain>(v: &T) -> &[u8] {
    // SAFETY: T is Plain: every one of its size_of::<T>() bytes is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A `T` from exactly `size_of::<T>()` bytes; any other length is an error.
pub fn decode<T: Plain>(b: &[u8], what: &str) -> Result<T> {
    let want = std::mem::size_of::<T>();
    if b.len() != want {
        bail!("{what}: the kernel gave {} bytes where this build expects {want}", b.len());
    }
    let mut v = T::default();
    // SAFETY: T is Plain (any bit pattern valid) and b holds exactly size_of::<T>() bytes.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), want) };
    Ok(v)
}

/// A write refused because the map holds its max entries.
#[derive(Debug)]
pub struct MapFull {
    pub map: &'static str,
    pub max: u32,
}

impl std::fmt::Display for MapFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "map {} is full ({} entries)", self.map, self.max)?;
        match crate::datapath::MapSizes::setting_of(self.map) {
            Some(setting) => write!(f, ": raise {setting} in the network config"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for MapFull {}

/// A map whose keys are `K` and values `V`.
pub struct TypedMap<K, V> {
    map: MapHandle,
    name: &'static str,
    _types: PhantomData<fn(K) -> V>,
}

impl<K: Plain, V: Plain> TypedMap<K, V> {
    pub fn new(map: MapHandle, name: &'static str) -> Self {
        TypedMap { map, name, _types: PhantomData }
    }

    /// The map's key and value sizes must be this build's: checked before
    /// every access (cheap: libbpf keeps them), so a map of another
    /// layout fails by name whatever is done with it.
    fn check(&self) -> Result<()> {
        let (k, v) = (self.map.key_size() as usize, self.map.value_size() as usize);
        let (want_k, want_v) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
        if (k, v) != (want_k, want_v) {
            bail!(
                "map {} has {k}-byte keys and {v}-byte values where this build expects {want_k} and {want_v} \
                 (pinned by an incompatible version?)",
                self.name
            );
        }
        Ok(())
    }

    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.check()?;
        let raw = self.map.lookup(bytes_of(key), MapFlags::ANY).with_context(|| format!("read {}", self.name))?;
        raw.map(|r| decode(&r, self.name)).transpose()
    }

    /// Every CPU's value of a per-CPU map.
    pub fn get_percpu(&self, key: &K) -> Result<Option<Vec<V>>> {
        self.check()?;
        let raw =
            self.map.lookup_percpu(bytes_of(key), MapFlags::ANY).with_context(|| format!("read {}", self.name))?;
        raw.map(|cpus| cpus.iter().map(|r| decode(r, self.name)).collect()).transpose()
    }

    pub fn put(&self, key: &K, value: &V) -> Result<()> {
        self.check()?;
        match self.map.update(bytes_of(key), bytes_of(value), MapFlags::ANY) {
            Ok(()) => Ok(()),
            // A hash map says E2BIG, an LPM trie ENOSPC: asking whether
            // it is full tells both from any other failure.
            Err(e) => match (self.len(), self.max_entries()) {
                (Ok(n), Ok(max)) if n >= max as usize => Err(MapFull { map: self.name, max }.into()),
                _ => Err(e).with_context(|| format!("write {}", self.name)),
            },
        }
    }

    /// Removes a key; a missing one is fine.
    pub fn delete(&self, key: &K) -> Result<()> {
        self.check()?;
        match self.map.delete(bytes_of(key)) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove from {}", self.name))
            }
            _ => Ok(()),
        }
    }

    pub fn keys(&self) -> Result<Vec<K>> {
        self.check()?;
        self.map.keys().map(|k| decode(&k, self.name)).collect()
    }

    /// Every (key, value); a key deleted meanwhile is skipped.
    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        let mut out = Vec::new();
        for k in self.keys()? {
            if let Some(v) = self.get(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Every (key, per-CPU values) of a per-CPU map.
    pub fn entries_percpu(&self) -> Result<Vec<(K, Vec<V>)>> {
        let mut out = Vec::new();
        for k in self.keys()? {
            if let Some(v) = self.get_percpu(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Deletes every entry whose key `doomed` picks; returns how many. The
    /// keys are collected first: deleting the key an iteration stands on
    /// makes the kernel start over from the first key (quadratic).
    pub fn delete_where(&self, doomed: impl Fn(&K) -> bool) -> Result<usize> {
        let keys: Vec<K> = self.keys()?.into_iter().filter(|k| doomed(k)).collect();
        for key in &keys {
            self.delete(key)?;
        }
        Ok(keys.len())
    }

    pub fn len(&self) -> Result<usize> {
        self.check()?;
        Ok(self.map.keys().count())
    }

    pub fn max_entries(&self) -> Result<u32> {
        Ok(self.map.info().with_context(|| format!("{} map info", self.name))?.info.max_entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_of_another_size_is_an_error_never_zero_filled() {
        let v = endpoint_info { ifindex: 7, mac: [1, 2, 3, 4, 5, 6], flags: 1 };
        let b = bytes_of(&v);
        assert_eq!(b.len(), 12);
        let back: endpoint_info = decode(b, "endpoints").unwrap();
        assert_eq!((back.ifindex, back.mac, back.flags), (7, [1, 2, 3, 4, 5, 6], 1));
        let short = decode::<endpoint_info>(&b[..8], "endpoints").unwrap_err().to_string();
        assert!(short.contains("endpoints") && short.contains("8 bytes") && short.contains("12"), "{short}");
        let long = [b, &[0u8; 4][..]].concat();
        assert!(decode::<endpoint_info>(&long, "endpoints").is_err());
    }
}
