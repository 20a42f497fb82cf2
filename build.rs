//! Compiles every `src/bpf/*.bpf.c` into a CO-RE skeleton in `OUT_DIR`, and
//! derives `EBPFCNI_BPF_ID` from the BPF sources so a node can tell whether
//! the program it has pinned is the one this binary carries.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let bpf_dir = manifest.join("src/bpf");
    let vmlinux_dir = manifest.join("vmlinux").join(&arch);
    assert!(
        vmlinux_dir.join("vmlinux.h").exists(),
        "no vmlinux/{arch}/vmlinux.h: generate it with \
         `bpftool btf dump file /sys/kernel/btf/vmlinux format c` (see README)"
    );

    let mut sources: Vec<PathBuf> = fs::read_dir(&bpf_dir)
        .expect("read src/bpf")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension() == Some(OsStr::new("c")) || p.extension() == Some(OsStr::new("h")))
        .collect();
    sources.sort();

    let mut all = Vec::new();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        all.extend_from_slice(src.file_name().unwrap().as_encoded_bytes());
        all.extend_from_slice(&fs::read(src).expect("read bpf source"));
        let name = src.file_name().unwrap().to_string_lossy();
        if let Some(stem) = name.strip_suffix(".bpf.c") {
            build_skeleton(src, stem, &vmlinux_dir, &out);
        }
    }
    println!("cargo:rerun-if-changed={}", vmlinux_dir.join("vmlinux.h").display());
    println!("cargo:rustc-env=EBPFCNI_BPF_ID={:016x}", fnv::fnv1a64(&all));
}

fn build_skeleton(src: &Path, stem: &str, vmlinux_dir: &Path, out: &Path) {
    let skel = out.join(format!("{stem}.skel.rs"));
    SkeletonBuilder::new()
        .source(src)
        .clang_args([OsStr::new("-I"), vmlinux_dir.as_os_str(), OsStr::new("-Wall"), OsStr::new("-Werror")])
        .build_and_generate(&skel)
        .unwrap_or_else(|e| panic!("build BPF skeleton for {}: {e:#}", src.display()));
}

#[path = "src/fnv.rs"]
mod fnv;
