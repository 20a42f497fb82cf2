#!/usr/bin/env bash
# Installs ebpfcni on a node:
#   scripts/install.sh [--force] [--binary PATH] [--conf FILE]
#   scripts/install.sh --uninstall [--purge [--force]]
# Binary -> $CNI_BIN_DIR/ebpfcni
# Config -> $CNI_CONF_DIR/10-ebpfcni.conflist (an existing file is kept
#           unless --force), written in the highest CNI version that
#           ebpfcni and every chained plugin support (each is asked with
#           CNI_COMMAND=VERSION). The conflist is validated (JSON, a
#           "plugins" list, a valid ebpfcni config) before anything is
#           installed; a single-plugin .conf is refused.
# Also: mounts bpffs on /sys/fs/bpf when missing, checks kernel BTF.
# --uninstall removes the binary and our conflist, and (once no pod is
#   attached) the network's node rules (`ebpfcni node remove`); the
#   network's pins stay while pods use them. --purge also removes the pins of the network that
#   conflist names (its bpfPinPath/<name>), refused while pods are attached
#   unless --force (their programs are detached: policy stops applying).
# Environment:
#   CNI_BIN_DIR   where the binary goes (default /opt/cni/bin)
#   CNI_CONF_DIR  where the conflist goes (default /etc/cni/net.d)
#   CNI_PATH      colon-separated directories searched for chained plugins,
#                 after CNI_BIN_DIR (default /opt/cni/bin:/usr/lib/cni)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN_DIR="${CNI_BIN_DIR:-/opt/cni/bin}"
CONF_DIR="${CNI_CONF_DIR:-/etc/cni/net.d}"
SEARCH="$BIN_DIR:${CNI_PATH:-/opt/cni/bin:/usr/lib/cni}"
CONF_NAME="10-ebpfcni.conflist"
force=0 uninstall=0 purge=0 binary="" conf="$ROOT/conf/$CONF_NAME"

die() { echo "install: $*" >&2; exit 1; }
value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value"; }
while (($#)); do
    case "$1" in
        --force) force=1 ;;
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        --binary) value "$@"; binary="$2"; shift ;;
        --conf) value "$@"; conf="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
((purge == 0 || uninstall == 1)) || die "--purge only goes with --uninstall"
[[ $(id -u) -eq 0 ]] || die "run as root"

if ((uninstall)); then
    bin="$BIN_DIR/ebpfcni" conflist="$CONF_DIR/$CONF_NAME"
    network="" pins="" attached=0
    if [[ -f "$conflist" && -x "$bin" ]] && network=$("$bin" conflist get "$conflist" name 2>/dev/null); then
        pin_root=$("$bin" conflist get "$conflist" pin-path)
        data_dir=$("$bin" conflist get "$conflist" data-dir)
        pins="$pin_root/$network"
        if [[ -d "$pins" ]]; then
            attached=$("$bin" pods --network "$network" --pin-path "$pin_root" --data-dir "$data_dir" --json 2>/dev/null \
                | grep -c '"ifindex"' || true)
        fi
    fi
    if ((purge && attached > 0 && force == 0)); then
        die "$attached pod(s) of network $network are attached (pins in $pins): purging would detach their programs; DEL them first, or add --force"
    fi
    # The node's rules of this network (masquerading; with the last
    # network the nftables table and the sysctls ebpfcni changed) go once
    # no pod depends on them, or with --purge.
    if [[ -n "$network" ]] && ((attached == 0 || purge)); then
        "$bin" node remove --network "$network" | sed 's/^/install: /'
    fi
    removed=()
    [[ -e "$bin" ]] && rm -f "$bin" && removed+=("$bin")
    [[ -e "$conflist" ]] && rm -f "$conflist" && removed+=("$conflist")
    echo "install: removed ${removed[*]:-nothing (binary and conflist were already gone)}"
    if [[ -z "$pins" ]]; then
        ((purge)) && echo "install: no readable $CONF_NAME with its binary: pin path unknown, no pins removed"
    elif ((purge)); then
        if [[ -d "$pins" ]]; then
            rm -rf "$pins"
            rmdir "$pin_root" 2>/dev/null || true
            echo "install: purged network $network's pins $pins ($attached pod(s) detached)"
        else
            echo "install: network $network has no pins under $pin_root: nothing to purge"
        fi
    elif [[ -d "$pins" ]]; then
        echo "install: $attached pod(s) of network $network remain attached, pinned under $pins (--purge removes the pins)"
    fi
    exit 0
fi

[[ -r /sys/kernel/btf/vmlinux ]] || die "kernel BTF (/sys/kernel/btf/vmlinux) missing: ebpfcni needs a kernel built with CONFIG_DEBUG_INFO_BTF"
[[ -f "$conf" ]] || die "no conflist at $conf"

if [[ -z "$binary" ]]; then
    "$ROOT/scripts/deps.sh"
    (cd "$ROOT" && cargo build --release --quiet)
    binary="$ROOT/target/release/ebpfcni"
fi
[[ -x "$binary" ]] || die "no executable at $binary"

# Everything is checked before anything is installed.
staged=$(mktemp)
trap 'rm -f "$staged"' EXIT
why=$("$binary" conflist check "$conf" --cni-path "$SEARCH" --out "$staged" 2>&1) || die "$why"

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
    install -m 0644 "$staged" "$CONF_DIR/$CONF_NAME"
    echo "install: $CONF_DIR/$CONF_NAME, $why"
fi
