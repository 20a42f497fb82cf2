#!/usr/bin/env bash
# Builds the ebpfcni image with podman from deploy/Containerfile, without
# network access: the release binaries of this repository (ebpfcni, the
# plugin and CLI; ebpfcni-agent, beside it), Debian's nft, and the shared
# libraries they link, copied from this machine's Debian packages.
#   deploy/build-image.sh [--binary PATH/ebpfcni] [--tag TAG]
# Default tag: localhost/ebpfcni:<version>. Push it where the cluster pulls
# from (podman push TAG REGISTRY/ebpfcni:<version>) and set `image:` in
# deploy/ebpfcni.yaml.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
binary="" tag=""
while (($#)); do
    case "$1" in
        --binary) binary="$2"; shift ;;
        --tag) tag="$2"; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "build-image: unknown option $1" >&2; exit 1 ;;
    esac
    shift
done
command -v podman >/dev/null || { echo "build-image: podman missing (scripts/deps.sh installs it)" >&2; exit 1; }
if [[ -z "$binary" ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
    binary="$ROOT/target/release/ebpfcni"
fi
agent="$(dirname "$binary")/ebpfcni-agent"
for b in "$binary" "$agent"; do
    [[ -x "$b" ]] || { echo "build-image: no executable at $b" >&2; exit 1; }
done
version=$("$binary" version | awk '{print $2}')
tag="${tag:-localhost/ebpfcni:$version}"

ctx=$(mktemp -d /tmp/ebpfcni-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs"
install -m 0755 "$binary" "$ctx/rootfs/ebpfcni"
install -m 0755 "$agent" "$ctx/rootfs/ebpfcni-agent"
# nft: the agent keeps the node's `inet ebpfcni` table with it.
nft=$(command -v nft || echo /usr/sbin/nft)
[[ -x "$nft" ]] || { echo "build-image: nft missing (scripts/deps.sh installs nftables)" >&2; exit 1; }
install -D -m 0755 "$nft" "$ctx/rootfs/usr/sbin/nft"
# Every library the dynamic loader resolves for the binaries, and the loader.
for lib in $( (ldd "$binary"; ldd "$agent"; ldd "$nft") | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
done
cp "$ROOT/deploy/Containerfile" "$ctx/Containerfile"
podman build --quiet --network none --pull=never -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null
echo "$tag"
