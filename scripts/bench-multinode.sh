#!/usr/bin/env bash
# Cross-node pod-to-pod against node-to-node over the same underlay, in
# one run, for both routing modes: two "nodes" (network namespaces, each
# running `ebpfcni agent`) joined by an underlay bridge in a namespace of
# its own, one pod per node. One TCP stream's throughput and 1-byte
# request/response latency (`ebpfcni bench-net`, the same code on both
# paths) node to node, then pod to pod; printed with their ratios.
#   scripts/bench-multinode.sh [SECONDS]   (default 5 per stream)
# Called by scripts/bench.sh; runs alone too (needs the release binary).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then exec sudo -E "$0" "$@"; fi
SECS="${1:-5}"
BIN="$PWD/target/release/ebpfcni"
[[ -x $BIN ]] || cargo build --release --quiet
WORK=$(mktemp -d /tmp/ebpfcni-bench-mn.XXXXXX)
PIDS=()
CPU=$(($(nproc) - 1))

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

teardown() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    for i in 1 2; do
        if [[ -e $WORK/n$i.conf ]]; then
            CNI_COMMAND=DEL CNI_CONTAINERID=bmn-pod$i CNI_NETNS=/run/netns/bmnp$i CNI_IFNAME=eth0 \
                in_ns bmn$i "$BIN" <"$WORK/n$i.conf" || true
        fi
        ip netns del bmnp$i 2>/dev/null || true
        ip netns del bmn$i 2>/dev/null || true
        rm -rf /sys/fs/bpf/ebpfcni-bmn$i /run/ebpfcni/bmn$i "$WORK/n$i.conf"
    done
    ip netns del ebu-bench 2>/dev/null || true
}
trap 'teardown; rm -rf "$WORK"' EXIT

node_json() { # NAME CIDR IP
    echo "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"$1\"},\"spec\":{\"podCIDR\":\"$2\"},\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"$3\"}]}}"
}

setup() { # MODE
    teardown
    ip netns add ebu-bench
    ip -n ebu-bench link add ebubr type bridge
    ip -n ebu-bench link set ebubr up
    echo "{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[$(node_json bmn1 10.247.1.0/24 10.248.0.1),$(node_json bmn2 10.247.2.0/24 10.248.0.2)]}" >"$WORK/nodes.json"
    for i in 1 2; do
        ip netns add bmn$i
        ip netns add bmnp$i
        ip link add underlay netns bmn$i type veth peer name ebu$i netns ebu-bench
        ip -n ebu-bench link set ebu$i master ebubr up
        ip -n bmn$i link set lo up
        ip -n bmn$i addr add 10.248.0.$i/16 dev underlay
        ip -n bmn$i link set underlay up
        ip -n bmnp$i link set lo up
        echo "{\"cniVersion\":\"1.1.0\",\"name\":\"bmn$i\",\"type\":\"ebpfcni\",\"bridge\":\"bmnbr$i\",\"dataDir\":\"$WORK/data$i\",\"bpfPinPath\":\"/sys/fs/bpf/ebpfcni-bmn$i\",\"routing\":\"$1\"}" >"$WORK/t$i.conf"
        # nsenter itself, not in_ns: $! must be the process (nsenter execs it).
        nsenter --net=/run/netns/bmn$i "$BIN" agent --node-name bmn$i --peers "$WORK/nodes.json" --template "$WORK/t$i.conf" \
            --cni-conf "$WORK/n$i.conf" 2>>"$WORK/agent$i.log" &
        PIDS+=($!)
    done
    for i in 1 2; do
        for _ in $(seq 100); do [[ -e $WORK/n$i.conf ]] && break; sleep 0.1; done
        [[ -e $WORK/n$i.conf ]] || { cat "$WORK/agent$i.log" >&2; exit 1; }
        CNI_COMMAND=ADD CNI_CONTAINERID=bmn-pod$i CNI_NETNS=/run/netns/bmnp$i CNI_IFNAME=eth0 \
            in_ns bmn$i "$BIN" <"$WORK/n$i.conf" >"$WORK/pod$i.json"
    done
    POD2=$(sed 's/.*"address":"\([0-9.]*\)\/.*/\1/' "$WORK/pod2.json")
    # Servers and clients share one CPU: a round trip then never waits for
    # another CPU to wake (which made latencies bimodal, 6 vs 70 us).
    taskset -c "$CPU" nsenter --net=/run/netns/bmn2 "$BIN" bench-net serve &
    PIDS+=($!)
    taskset -c "$CPU" nsenter --net=/run/netns/bmnp2 "$BIN" bench-net serve &
    PIDS+=($!)
    sleep 0.3
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
gbit() { awk -v b="$1" 'BEGIN{printf "%.2f", b/1e9}'; }
declare -A TGT_TP=([native]=0.9 [vxlan]=0.7) TGT_RR=([native]=1.1 [vxlan]=1.2)

printf '\ncross-node TCP, one stream, %ss (Gbit/s) and 1-byte request/response (us), pod to pod vs node to node\n' "$SECS"
printf '%-7s %9s %9s %7s %7s %9s %9s %7s %7s\n' mode node pod ratio target "node RR" "pod RR" ratio target
for mode in native vxlan; do
    setup "$mode"
    node_tp=$(in_ns bmn1 "$BIN" bench-net stream --to 10.248.0.2:7300 --secs "$SECS")
    pod_tp=$(in_ns bmnp1 "$BIN" bench-net stream --to "$POD2:7300" --secs "$SECS")
    read -r node_rr _ < <(taskset -c "$CPU" nsenter --net=/run/netns/bmn1 "$BIN" bench-net rr --to 10.248.0.2:7300)
    read -r pod_rr _ < <(taskset -c "$CPU" nsenter --net=/run/netns/bmnp1 "$BIN" bench-net rr --to "$POD2:7300")
    printf '%-7s %9s %9s %7s %7s %9s %9s %7s %7s\n' "$mode" "$(gbit "$node_tp")" "$(gbit "$pod_tp")" \
        "$(ratio "$pod_tp" "$node_tp")" ">=${TGT_TP[$mode]}" "$node_rr" "$pod_rr" "$(ratio "$pod_rr" "$node_rr")" "<=${TGT_RR[$mode]}"
done
