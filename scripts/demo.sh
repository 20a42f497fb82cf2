#!/usr/bin/env bash
# Demo: two pods (network namespaces) wired by the ebpfcni plugin exactly as
# a container runtime calls it, pinging each other through the eBPF
# datapath; then the endpoint and counter maps; then everything removed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then exec sudo -E "$0" "$@"; fi

scripts/deps.sh
cargo build --release --quiet
BIN="$PWD/target/release/ebpfcni"

NET=ebpfcni-demo
DATA=/tmp/ebpfcni-demo
PINS=/sys/fs/bpf/ebpfcni-demo
CONF=$(cat <<JSON
{ "cniVersion": "1.0.0", "name": "$NET", "type": "ebpfcni",
  "bridge": "ebpfdemo0", "subnet": "10.244.99.0/24",
  "dataDir": "$DATA", "bpfPinPath": "$PINS" }
JSON
)

cni() { # cni COMMAND POD
    echo "$CONF" | CNI_COMMAND="$1" CNI_CONTAINERID="demo-$2" CNI_NETNS="/run/netns/demo-$2" \
        CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin "$BIN"
}
cleanup() {
    for p in a b; do cni DEL "$p" >/dev/null 2>&1 || true; ip netns del "demo-$p" 2>/dev/null || true; done
    ip link del ebpfdemo0 2>/dev/null || true
    rm -rf "$DATA" "$PINS"
}
trap cleanup EXIT
cleanup

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

for p in a b; do
    ip netns add "demo-$p"
    step "ADD pod $p (CNI_COMMAND=ADD, config on stdin)"
    cni ADD "$p"
done
A=$(ip netns exec demo-a ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
B=$(ip netns exec demo-b ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)

step "pod a ($A) -> pod b ($B)"
ip netns exec demo-a ping -c 3 -i 0.2 "$B"
step "pod b ($B) -> pod a ($A)"
ip netns exec demo-b ping -c 3 -i 0.2 "$A"

step "ebpfcni maps dump endpoints (pod IP -> host veth, pod MAC, attach mode)"
"$BIN" maps dump endpoints --network "$NET" --pin-path "$PINS"
step "ebpfcni maps dump stats (REDIRECTED = delivered by bpf_redirect_peer, skipping the bridge)"
"$BIN" maps dump stats --network "$NET" --pin-path "$PINS"

step "policy: deny ICMP from a to b (ebpfcni policy deny), then ping again"
"$BIN" policy deny "$A" "$B" --proto icmp --network "$NET" --pin-path "$PINS"
ip netns exec demo-a ping -c 2 -W 1 "$B" || echo "(dropped by the datapath, as the rule says)"
"$BIN" maps dump stats --network "$NET" --pin-path "$PINS"
"$BIN" policy delete 1 --network "$NET" --pin-path "$PINS"
ip netns exec demo-a ping -c 1 "$B" >/dev/null && echo "rule deleted: a reaches b again"

step "ebpfcni status"
"$BIN" status --pin-path "$PINS"

step "DEL both pods"
cni DEL a && cni DEL b && echo "done: leases, veths, map entries and links removed"
