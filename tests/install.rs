//! `scripts/install.sh` as an operator runs it: binary and conflist in
//! place, an existing conflist kept unless --force, --uninstall removing
//! what it installed. Uses its own directories, never the node's.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn install(bin_dir: &Path, conf_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"))
        .args(args)
        .env("CNI_BIN_DIR", bin_dir)
        .env("CNI_CONF_DIR", conf_dir)
        .env("EBPFCNI_PIN_PATH", "/sys/fs/bpf/ebpfcni-test-install")
        .output()
        .unwrap()
}

#[test]
fn install_keeps_existing_config_and_uninstalls() {
    if !privileged() {
        return;
    }
    let root = std::env::temp_dir().join("ebpfcni-test-install");
    let _ = std::fs::remove_dir_all(&root);
    let (bin_dir, conf_dir) = (root.join("bin"), root.join("net.d"));
    let conflist = conf_dir.join("10-ebpfcni.conflist");

    let out = ok(install(&bin_dir, &conf_dir, &["--binary", BIN]));
    assert!(bin_dir.join("ebpfcni").exists());
    let installed = std::fs::read_to_string(&conflist).unwrap();
    assert!(installed.contains("\"ebpfcni\"") && installed.contains("portmap"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bpf program"), "version printed");

    // An operator's edited config survives a reinstall, unless --force.
    std::fs::write(&conflist, "{\"edited\": \"ebpfcni\"}").unwrap();
    let out = ok(install(&bin_dir, &conf_dir, &["--binary", BIN]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("keeping existing"));
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), "{\"edited\": \"ebpfcni\"}");
    ok(install(&bin_dir, &conf_dir, &["--binary", BIN, "--force"]));
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), installed);

    // Unknown options are refused; uninstall removes binary and config.
    assert!(!install(&bin_dir, &conf_dir, &["--frobnicate"]).status.success());
    ok(install(&bin_dir, &conf_dir, &["--uninstall", "--purge"]));
    assert!(!bin_dir.join("ebpfcni").exists() && !conflist.exists());
    let _ = std::fs::remove_dir_all(&root);
}
