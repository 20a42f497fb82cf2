#!/usr/bin/env bash
# Installs the Debian packages ebpfcni needs to build, test, demo and
# benchmark. Idempotent: packages already present are not fetched again.
#   build: clang (BPF target), llvm, make, pkg-config, libelf-dev, zlib1g-dev
#   tests/demo: iproute2, iputils-ping, bpftool, containernetworking-plugins,
#               iptables (for the reference portmap plugin in chaining tests),
#               nftables (ipMasq, and kube-proxy's nftables mode in tests/node.rs)
#   kernel matrix (tests/kernels.rs): qemu-system-x86, busybox-static, cpio,
#               xz-utils, zstd, debian-archive-keyring (Debian's cloud kernels
#               are fetched by tests/kernel/fetch.sh with a private apt state)
#   image (tests/deploy.rs): podman, runc (this sandbox's cgroups defeat crun);
#               socat and openssl: the TLS front of the fake API server that
#               the DaemonSet's pod reaches with its service account
#   manifests (tests/deploy.rs): kubernetes-validate from PyPI (Kubernetes'
#               own schemas, shipped in the package; PyYAML comes with it)
set -euo pipefail

PACKAGES=(clang llvm make gcc pkg-config libelf-dev zlib1g-dev
          iproute2 iputils-ping bpftool containernetworking-plugins iptables nftables python3-scapy
          qemu-system-x86 busybox-static cpio xz-utils zstd debian-archive-keyring
          podman runc socat openssl)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]}" >&2
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null; then
    echo "deps: installing kubernetes-validate (PyPI)" >&2
    python3 -m pip install -q kubernetes-validate 2>/dev/null \
        || python3 -m pip install -q --break-system-packages kubernetes-validate
fi
command -v cargo >/dev/null || { echo "deps: cargo not found: install Rust (rustup)" >&2; exit 1; }
