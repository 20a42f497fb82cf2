//! A map's layout, as one comparable text: its type, sizes, flags and the
//! shape of its key and value types (member names, offsets and sizes,
//! read from BTF). Two builds' maps of one name are interchangeable
//! exactly when their layouts are equal; libbpf's own check compares
//! sizes only, so a field that changed meaning inside an unchanged size
//! (a pad byte that became a flag) would slip through it.

use std::ffi::CStr;

use anyhow::{Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::{AsRawLibbpf, MapCore, MapHandle, OpenMap, OpenObject};

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_ARRAY: u32 = 3;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_UNION: u32 = 5;
const BTF_KIND_ENUM: u32 = 6;
const BTF_KIND_TYPEDEF: u32 = 8;
const BTF_KIND_VOLATILE: u32 = 9;
const BTF_KIND_CONST: u32 = 10;
const BTF_KIND_RESTRICT: u32 = 11;
const BTF_KIND_TYPE_TAG: u32 = 18;
const BTF_KIND_ENUM64: u32 = 19;

/// A BTF object and whether we own it (kernel copies are ours to free).
struct Btf {
    ptr: *mut libbpf_sys::btf,
    owned: bool,
}

impl Drop for Btf {
    fn drop(&mut self) {
        if self.owned && !self.ptr.is_null() {
            // SAFETY: loaded by btf__load_from_kernel_by_id, freed once.
            unsafe { libbpf_sys::btf__free(self.ptr) }
        }
    }
}

impl Btf {
    /// The shape of type `id`: typedefs and qualifiers see through,
    /// struct and union names ignored (a rename changes nothing), member
    /// names and offsets kept (a moved or renamed field changes meaning).
    fn shape(&self, id: u32, depth: u32) -> String {
        if id == 0 || self.ptr.is_null() || depth > 16 {
            return "-".into();
        }
        // SAFETY: libbpf returns null for an unknown id, else a pointer
        // into the BTF object we hold.
        let Some(t) = (unsafe { libbpf_sys::btf__type_by_id(self.ptr, id).as_ref() }) else {
            return "?".into();
        };
        let kind = (t.info >> 24) & 0x1f;
        let vlen = (t.info & 0xffff) as usize;
        // SAFETY: size and type share the union; the kind says which.
        let (size, next) = unsafe { (t.__bindgen_anon_1.size, t.__bindgen_anon_1.type_) };
        // SAFETY: the kind's trailing data follows the btf_type record.
        let after = unsafe { (t as *const libbpf_sys::btf_type).add(1).cast::<u8>() };
        match kind {
            BTF_KIND_TYPEDEF | BTF_KIND_VOLATILE | BTF_KIND_CONST | BTF_KIND_RESTRICT | BTF_KIND_TYPE_TAG => {
                self.shape(next, depth + 1)
            }
            BTF_KIND_INT => format!("i{size}"),
            BTF_KIND_ENUM | BTF_KIND_ENUM64 => format!("e{size}"),
            BTF_KIND_PTR => "p".into(),
            BTF_KIND_ARRAY => {
                // SAFETY: an ARRAY is followed by one btf_array.
                let a = unsafe { &*after.cast::<libbpf_sys::btf_array>() };
                format!("[{};{}]", self.shape(a.type_, depth + 1), a.nelems)
            }
            BTF_KIND_STRUCT | BTF_KIND_UNION => {
                // SAFETY: a STRUCT or UNION is followed by vlen btf_members.
                let members = unsafe { std::slice::from_raw_parts(after.cast::<libbpf_sys::btf_member>(), vlen) };
                let fields: Vec<String> = members
                    .iter()
                    .map(|m| format!("{}@{}:{}", self.name(m.name_off), m.offset, self.shape(m.type_, depth + 1)))
                    .collect();
                let tag = if kind == BTF_KIND_STRUCT { 's' } else { 'u' };
                format!("{tag}{size}{{{}}}", fields.join(","))
            }
            other => format!("k{other}"),
        }
    }

    fn name(&self, off: u32) -> String {
        // SAFETY: libbpf returns a NUL-terminated string inside the BTF
        // object, or null.
        let p = unsafe { libbpf_sys::btf__name_by_offset(self.ptr, off) };
        if p.is_null() {
            return String::new();
        }
        // SAFETY: checked non-null above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// The layout this build's object defines for `map`.
pub fn of_open_map(object: &OpenObject, map: &OpenMap) -> String {
    let btf = Btf {
        // SAFETY: the object outlives this call; bpf_object__btf returns a
        // pointer the object owns (or null).
        ptr: unsafe { libbpf_sys::bpf_object__btf(object.as_libbpf_object().as_ptr()) },
        owned: false,
    };
    let raw = map.as_libbpf_object().as_ptr();
    // SAFETY: raw is a live map of the open object.
    let (key, value) =
        unsafe { (libbpf_sys::bpf_map__btf_key_type_id(raw), libbpf_sys::bpf_map__btf_value_type_id(raw)) };
    describe(
        u32::from(map.map_type()),
        map.key_size(),
        map.value_size(),
        map.max_entries(),
        map.map_flags(),
        &btf.shape(key, 0),
        &btf.shape(value, 0),
    )
}

/// The layout of a map already in the kernel (pinned by some build).
pub fn of_map(map: &MapHandle) -> Result<String> {
    let info = map.info().context("map info")?.info;
    let btf = Btf {
        ptr: if info.btf_id == 0 {
            std::ptr::null_mut()
        } else {
            // SAFETY: a plain syscall wrapper; errors come back as null
            // or an error pointer, both handled below.
            let p = unsafe { libbpf_sys::btf__load_from_kernel_by_id(info.btf_id) };
            if (p as isize) < 0 {
                std::ptr::null_mut()
            } else {
                p
            }
        },
        owned: true,
    };
    Ok(describe(
        info.type_,
        info.key_size,
        info.value_size,
        info.max_entries,
        info.map_flags,
        &btf.shape(info.btf_key_type_id, 0),
        &btf.shape(info.btf_value_type_id, 0),
    ))
}

fn describe(ty: u32, key_size: u32, value_size: u32, max: u32, flags: u32, key: &str, value: &str) -> String {
    format!("type={ty} key={key_size}:{key} value={value_size}:{value} max={max} flags={flags:#x}")
}

/// Whether entries may be copied one for one between two layouts: the
/// same key and value, whatever the sizes and flags of the maps.
pub fn same_entries(a: &str, b: &str) -> bool {
    fn entries(l: &str) -> Vec<&str> {
        l.split(' ').filter(|p| p.starts_with("type=") || p.starts_with("key=") || p.starts_with("value=")).collect()
    }
    entries(a) == entries(b)
}

/// How a value of layout `old` becomes one of `new` when only the value
/// changed (same type and key): the fields both have, by name and shape,
/// as (old byte offset, new byte offset, length); a field only `new` has
/// starts at zero. None when no field is shared or either value is not
/// a struct. For counters, where zero is what a field that has not
/// counted yet holds (see pins.rs: never for derived state).
pub fn conversion(old: &str, new: &str) -> Option<Vec<(usize, usize, usize)>> {
    fn part<'a>(l: &'a str, p: &str) -> Option<&'a str> {
        l.split(' ').find_map(|x| x.strip_prefix(p))
    }
    if part(old, "type=")? != part(new, "type=")? || part(old, "key=")? != part(new, "key=")? {
        return None;
    }
    let members = |l: &str| -> Option<Vec<(String, usize, String)>> {
        let shape = part(l, "value=")?.split_once(':')?.1;
        let inner = shape.strip_prefix('s')?.split_once('{')?.1.strip_suffix('}')?;
        top_level(inner)
            .into_iter()
            .map(|m| {
                let (name, rest) = m.split_once('@')?;
                let (bits, shape) = rest.split_once(':')?;
                let bits: usize = bits.parse().ok()?;
                bits.is_multiple_of(8).then(|| (name.to_string(), bits / 8, shape.to_string()))
            })
            .collect()
    };
    let (was, now) = (members(old)?, members(new)?);
    let copies: Vec<(usize, usize, usize)> = now
        .iter()
        .filter_map(|(name, to, shape)| {
            let (_, from, _) = was.iter().find(|(n, _, s)| n == name && s == shape)?;
            Some((*from, *to, shape_size(shape)?))
        })
        .collect();
    (!copies.is_empty()).then_some(copies)
}

/// The members of a struct shape's inside, split at its top-level commas.
fn top_level(inner: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        out.push(&inner[start..]);
    }
    out
}

/// The size in bytes of a shape `Btf::shape` wrote.
fn shape_size(shape: &str) -> Option<usize> {
    if shape == "p" {
        return Some(8);
    }
    if let Some(array) = shape.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        let (elem, n) = array.rsplit_once(';')?;
        return Some(shape_size(elem)? * n.parse::<usize>().ok()?);
    }
    let digits: String = shape.chars().skip(1).take_while(char::is_ascii_digit).collect();
    match shape.chars().next()? {
        'i' | 'e' | 's' | 'u' => digits.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_compare_without_sizes_and_flags() {
        let a = describe(1, 4, 8, 100, 0, "i4", "s8{a@0:i4,b@32:i4}");
        let b = describe(1, 4, 8, 4096, 1, "i4", "s8{a@0:i4,b@32:i4}");
        let c = describe(1, 4, 8, 100, 0, "i4", "s8{a@0:i4,flags@32:i4}");
        assert!(same_entries(&a, &b));
        assert_ne!(a, b);
        assert!(!same_entries(&a, &c), "a renamed field is a new meaning");
        assert!(!same_entries(&a, &describe(9, 4, 8, 100, 0, "i4", "s8{a@0:i4,b@32:i4}")));
    }

    #[test]
    fn values_convert_field_by_name() {
        let old = describe(5, 16, 24, 100, 0, "s16{addr@0:[i1;16]}", "s24{a@0:i8,gone@64:i8,c@128:s8{x@0:[i1;8]}}");
        let new = describe(5, 16, 24, 9, 1, "s16{addr@0:[i1;16]}", "s24{c@0:s8{x@0:[i1;8]},a@64:i8,added@128:i8}");
        assert_eq!(conversion(&old, &new), Some(vec![(16, 0, 8), (0, 8, 8)]));
        // Another key, another type, a field of another shape: no conversion.
        let key = describe(5, 4, 24, 100, 0, "i4", "s24{a@0:i8,gone@64:i8,c@128:s8{x@0:[i1;8]}}");
        assert_eq!(conversion(&key, &new), None);
        assert_eq!(conversion(&old, &describe(1, 16, 8, 1, 0, "s16{addr@0:[i1;16]}", "s8{a@0:i4,z@32:i4}")), None);
        assert_eq!(conversion(&old, &describe(5, 16, 8, 1, 0, "s16{addr@0:[i1;16]}", "s8{a@0:i4,z@32:i4}")), None);
    }
}

/// The layouts this build pins, checked in as src/datapath/layouts.txt
/// (`name  fill  layout`): a change of any map's layout must be seen and
/// decided in the commit that makes it (docs/maps.md gives the rule).
#[cfg(test)]
mod checked_in {
    use std::mem::MaybeUninit;

    use libbpf_rs::skel::{OpenSkel, SkelBuilder};

    use crate::datapath::maps::MAP_NAMES;
    use crate::datapath::skel::DatapathSkelBuilder;

    const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/datapath/layouts.txt");
    const FILLS: &[&str] =
        &["rebuilt-from-records", "rebuilt-from-config", "rebuilt-policy", "rebuilt-by-agent", "state-lost"];

    #[test]
    fn every_map_layout_is_checked_in_with_its_fill_rule() {
        let mut object = MaybeUninit::uninit();
        let open = DatapathSkelBuilder::default().open(&mut object).expect("open skeleton");
        // Every map of the object but its sections (.bss, .rodata) is pinned.
        let mut now: Vec<(String, String)> = open
            .open_object()
            .maps()
            .map(|m| (m.name().to_string_lossy().into_owned(), super::of_open_map(open.open_object(), &m)))
            .filter(|(n, _)| !n.contains('.'))
            .collect();
        now.sort();
        let mut pinned = MAP_NAMES.to_vec();
        pinned.sort();
        assert_eq!(now.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), pinned, "the maps pinned are the object's");
        if std::env::var_os("EBPFCNI_WRITE_LAYOUTS").is_some() {
            // Prints the lines to check in (fill rules are chosen by hand).
            for (name, layout) in &now {
                println!("LAYOUT {name}\t{layout}");
            }
        }
        let text = std::fs::read_to_string(FILE).unwrap_or_default();
        let recorded: Vec<(String, String, String)> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let mut parts = l.splitn(3, '\t');
                Some((parts.next()?.to_string(), parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .collect();
        for (name, layout) in &now {
            let Some((_, fill, old)) = recorded.iter().find(|(n, _, _)| n == name) else {
                panic!("map {name} is not in {FILE}: add `{name}\\t<fill>\\t{layout}` (see docs/maps.md)");
            };
            assert!(FILLS.contains(&fill.as_str()), "{name}: fill rule {fill:?} is not one of {FILLS:?}");
            assert_eq!(
                old, layout,
                "map {name} changed layout: check that its fill rule ({fill}) still holds (docs/maps.md), then \
                 update {FILE}"
            );
        }
        for (name, _, _) in &recorded {
            assert!(now.iter().any(|(n, _)| n == name), "{FILE} lists {name}, which this build no longer pins");
        }
    }
}
