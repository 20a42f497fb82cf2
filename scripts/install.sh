#!/usr/bin/env bash
# Installs ebpfcni on a node:
#   scripts/install.sh [--force] [--binary PATH] [--conf FILE]
#   scripts/install.sh --uninstall [--purge]
# Binary -> ${CNI_BIN_DIR:-/opt/cni/bin}/ebpfcni
# Config -> ${CNI_CONF_DIR:-/etc/cni/net.d}/10-ebpfcni.conflist (an existing
#           file is kept unless --force)
# Also: mounts bpffs on /sys/fs/bpf when missing, checks kernel BTF.
# --uninstall removes the binary and our conflist; pinned maps and programs
# stay while pods use them, unless --purge.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN_DIR="${CNI_BIN_DIR:-/opt/cni/bin}"
CONF_DIR="${CNI_CONF_DIR:-/etc/cni/net.d}"
CONF_NAME="10-ebpfcni.conflist"
PIN_ROOT="${EBPFCNI_PIN_PATH:-/sys/fs/bpf/ebpfcni}"
force=0 uninstall=0 purge=0 binary="" conf="$ROOT/conf/$CONF_NAME"

die() { echo "install: $*" >&2; exit 1; }
while (($#)); do
    case "$1" in
        --force) force=1 ;;
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        --binary) binary="$2"; shift ;;
        --conf) conf="$2"; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
[[ $(id -u) -eq 0 ]] || die "run as root"

if ((uninstall)); then
    rm -f "$BIN_DIR/ebpfcni"
    rm -f "$CONF_DIR/$CONF_NAME"
    if ((purge)); then
        rm -rf "$PIN_ROOT"
        echo "install: removed binary, $CONF_NAME and pins under $PIN_ROOT"
    else
        attached=$(find "$PIN_ROOT" -path '*/links/*' 2>/dev/null | wc -l)
        echo "install: removed binary and $CONF_NAME; $attached pod attachment(s) remain pinned under $PIN_ROOT (--purge removes them)"
    fi
    exit 0
fi

[[ -r /sys/kernel/btf/vmlinux ]] || die "kernel BTF (/sys/kernel/btf/vmlinux) missing: ebpfcni needs a kernel built with CONFIG_DEBUG_INFO_BTF"

if [[ -z "$binary" ]]; then
    "$ROOT/scripts/deps.sh"
    (cd "$ROOT" && cargo build --release --quiet)
    binary="$ROOT/target/release/ebpfcni"
fi
[[ -x "$binary" ]] || die "no executable at $binary"

if ! mount -t bpf | grep -q ' /sys/fs/bpf '; then
    mount -t bpf bpf /sys/fs/bpf
    echo "install: mounted bpffs on /sys/fs/bpf"
fi

install -D -m 0755 "$binary" "$BIN_DIR/ebpfcni"
echo "install: $BIN_DIR/ebpfcni ($("$BIN_DIR/ebpfcni" version))"

mkdir -p "$CONF_DIR"
if [[ -e "$CONF_DIR/$CONF_NAME" && $force -eq 0 ]]; then
    echo "install: keeping existing $CONF_DIR/$CONF_NAME (use --force to replace it)"
else
    grep -q '"ebpfcni"' "$conf" || die "$conf does not configure ebpfcni"
    install -m 0644 "$conf" "$CONF_DIR/$CONF_NAME"
    echo "install: $CONF_DIR/$CONF_NAME"
fi
