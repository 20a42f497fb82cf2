#!/usr/bin/env bash
# Packs the initramfs a matrix kernel boots: busybox, iproute2's ip and tc,
# bpftool, the ebpfcni binary under test (each with the shared libraries
# it links), the kernel's modules the datapath needs, and tests/kernel/init
# as /init.
#   usage: tests/kernel/initramfs.sh KERNEL_ROOT EBPFCNI_BINARY OUT.cpio.gz
set -euo pipefail
kroot=$1
binary=$2
out=$3
here=$(cd "$(dirname "$0")" && pwd)

# In load order: a module's dependencies come before it.
MODULES=(llc stp bridge veth sch_ingress cls_bpf udp_tunnel ip6_udp_tunnel vxlan)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,usr/sbin,proc,sys,dev,run,tmp,etc,modules}
ln -s /run "$work/var"

copy_with_libs() { # FILE DEST
    install -D -m 0755 "$1" "$work/$2"
    ldd "$1" 2>/dev/null | grep -oE '/[^ ]+' | while read -r lib; do
        [[ -e $work/$lib ]] || install -D -m 0755 "$(readlink -f "$lib")" "$work/$lib"
    done
}

busybox=$(command -v busybox)
ldd "$busybox" >/dev/null 2>&1 && { echo "initramfs: $busybox is not static (apt-get install busybox-static)" >&2; exit 1; }
install -m 0755 "$busybox" "$work/bin/busybox"
copy_with_libs "$binary" usr/sbin/ebpfcni
for tool in ip tc bpftool; do
    copy_with_libs "$(command -v $tool || echo /usr/sbin/$tool)" "usr/sbin/$tool"
done

shopt -s nullglob
moddirs=("$kroot"/lib/modules/* "$kroot"/usr/lib/modules/*)
moddir=${moddirs[0]:-}
[[ -d $moddir ]] || { echo "initramfs: no modules under $kroot" >&2; exit 1; }
for m in "${MODULES[@]}"; do
    f=$(find "$moddir/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n 1)
    [[ -n $f ]] || { echo "initramfs: module $m not found in $moddir" >&2; exit 1; }
    case $f in
        *.xz) xz -dc "$f" >"$work/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" >"$work/modules/$m.ko" ;;
        *) cp "$f" "$work/modules/$m.ko" ;;
    esac
    echo "$m" >>"$work/modules/order"
done

install -m 0755 "$here/init" "$work/init"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
