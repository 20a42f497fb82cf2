//! The kernel matrix: the release binary on the cloud kernels of Debian 11
//! (5.10, the floor we claim), 12 (6.1) and 13 (6.12), each booted under
//! qemu with an initramfs whose /init (tests/kernel/init) drives the real
//! plugin: ADD/CHECK/DEL/GC, pod-to-pod ICMP and TCP over IPv4 and IPv6
//! through the redirect, the attach mode the kernel should get, a spoofed
//! source dropped and counted, default deny with one rule opening one port,
//! and both programs through that kernel's verifier. One test per kernel,
//! so a failure names the kernel; its console log is printed on failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::privileged;

/// A VM that has not powered off by then has hung.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The binary operators install (`cargo build --release`), built once for
/// all kernels.
fn release_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "ebpfcni", "--manifest-path"])
            .arg(repo().join("Cargo.toml"))
            .stdout(Stdio::null())
            .status()
            .expect("run cargo build --release");
        assert!(status.success(), "cargo build --release failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"));
        target.join("release/ebpfcni")
    })
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Boots Debian `release`'s cloud kernel on the release binary and checks
/// every step of the smoke test, the kernel version and the attach mode.
fn matrix(release: &str, version_prefix: &str, attach: &str) {
    if !privileged() {
        return;
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernels");
    let kroot = run(
        Command::new(repo().join("tests/kernel/fetch.sh")).arg(release).arg(&cache),
        &format!("fetch Debian {release}'s cloud kernel"),
    );
    let kroot = PathBuf::from(kroot);
    let vmlinuz = std::fs::read_dir(kroot.join("boot"))
        .expect("kernel package has /boot")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("vmlinuz-"))
        .expect("vmlinuz in the kernel package");
    let initrd = cache.join(format!("{release}.cpio.gz"));
    run(
        Command::new(repo().join("tests/kernel/initramfs.sh")).arg(&kroot).arg(release_binary()).arg(&initrd),
        "build the initramfs",
    );

    let log_path = cache.join(format!("{release}.console.log"));
    let log = std::fs::File::create(&log_path).expect("create console log");
    let started = Instant::now();
    let mut vm = Command::new("qemu-system-x86_64")
        .args(["-machine", "pc", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "512"])
        .args(["-nographic", "-no-reboot", "-nic", "none", "-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start qemu-system-x86_64 (apt-get install qemu-system-x86)");
    let finished = loop {
        if vm.try_wait().expect("wait for qemu").is_some() {
            break true;
        }
        if started.elapsed() > BOOT_TIMEOUT {
            let _ = vm.kill();
            let _ = vm.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console = String::from_utf8_lossy(&std::fs::read(&log_path).unwrap_or_default()).into_owned();
    eprintln!("Debian {release}: VM ran {:.1} s", started.elapsed().as_secs_f64());
    // Serial lines end in \r, and the first may carry the firmware's escapes.
    let lines: Vec<&str> =
        console.lines().map(|l| l.trim_end()).map(|l| l.find("MATRIX ").map_or(l, |i| &l[i..])).collect();
    let report = || {
        let matrix: Vec<&str> = console.lines().filter(|l| l.contains("MATRIX") || l.starts_with("    |")).collect();
        format!("Debian {release} console ({}):\n{}", log_path.display(), matrix.join("\n"))
    };
    assert!(finished, "the VM did not power off within {BOOT_TIMEOUT:?}\n{}", report());
    let kernel = lines.iter().find_map(|l| l.strip_prefix("MATRIX kernel ")).unwrap_or_else(|| {
        panic!(
            "the VM never ran /init; last console lines:\n{}",
            console.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        )
    });
    assert!(kernel.starts_with(version_prefix), "booted {kernel}, expected {version_prefix}*\n{}", report());
    let failed: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("MATRIX FAIL ")).collect();
    assert!(failed.is_empty(), "on {kernel}, failed: {}\n{}", failed.join(", "), report());
    assert!(lines.contains(&"MATRIX end failures=0"), "the smoke test did not finish\n{}", report());
    let mode = lines.iter().find_map(|l| l.strip_prefix("MATRIX attach ")).unwrap_or("none");
    assert_eq!(mode, attach, "on {kernel} the programs were attached with {mode}, expected {attach}\n{}", report());
    let tcx = lines.iter().find_map(|l| l.strip_prefix("MATRIX feature tcx ")).unwrap_or("unreported");
    let want = if attach == "tcx" { "yes" } else { "no" };
    assert_eq!(tcx, want, "on {kernel} `ebpfcni status` reports TCX {tcx}\n{}", report());
    let passed = lines.iter().filter(|l| l.starts_with("MATRIX ok ")).count();
    assert!(passed >= 30, "only {passed} steps passed on {kernel}\n{}", report());
}

#[test]
fn kernel_5_10_debian11() {
    matrix("bullseye", "5.10.", "tc");
}

#[test]
fn kernel_6_1_debian12() {
    matrix("bookworm", "6.1.", "tc");
}

#[test]
fn kernel_6_12_debian13() {
    matrix("trixie", "6.12.", "tcx");
}
