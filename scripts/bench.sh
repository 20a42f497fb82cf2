#!/usr/bin/env bash
# ADD/DEL latency: ebpfcni vs the reference bridge + host-local plugins
# (containernetworking-plugins), measured in the same run on the same
# machine over N pods each, after one unmeasured warm-up pod (bridge
# creation, program load). ebpfcni runs twice: attachMode auto (TCX on
# kernels that have it) and tc (clsact). A TCX attach waits for one RCU
# grace period in the kernel (synchronize_rcu in tcx_prog_attach), which
# the tc path does not; the two rows show that cost. Prints mean and p99
# per plugin and the ratios against the reference, then the wall time of
# P ADDs started at once (and their DELs), each plugin on its own pods.
#   scripts/bench.sh [N]        (default 50; P=100 parallel pods)
#   ONLY=latency scripts/bench.sh [N]   (the latency part alone)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then exec sudo -E "$0" "$@"; fi
N="${1:-50}"
P="${P:-100}"

scripts/deps.sh
[[ -n ${EBPFCNI_BIN:-} ]] || cargo build --release --quiet
BIN="${EBPFCNI_BIN:-$PWD/target/release/ebpfcni}"
REF_DIR=/usr/lib/cni
[[ -x $REF_DIR/bridge && -x $REF_DIR/host-local ]] || { echo "reference plugins missing in $REF_DIR" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ebpfcni-bench.XXXXXX)
ebpf_conf() { # attach mode
    echo '{"cniVersion":"1.0.0","name":"bench-ebpf-'$1'","type":"ebpfcni","bridge":"benchebpf0","subnet":"10.252.1.0/24","dataDir":"'$WORK'/ebpf","bpfPinPath":"/sys/fs/bpf/ebpfcni-bench","attachMode":"'$1'"}'
}
REF_CONF='{"cniVersion":"1.0.0","name":"bench-ref","type":"bridge","bridge":"benchref0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.252.2.0/24","dataDir":"'$WORK'/ref"}}'

# The reference's isGateway turns on forwarding: the machine gets its own
# setting back.
IP_FORWARD=$(cat /proc/sys/net/ipv4/ip_forward)
cleanup() {
    echo "$IP_FORWARD" >/proc/sys/net/ipv4/ip_forward
    for i in $(seq 0 "$((N > P ? N : P))"); do ip netns del "bench-$i" 2>/dev/null || true; done
    for i in $(seq 1 1000); do ip netns del "benchm-$i" 2>/dev/null || true; done
    ip link del benchmem0 2>/dev/null || true
    ip link del benchebpf0 2>/dev/null || true
    ip link del benchref0 2>/dev/null || true
    rm -rf "$WORK" /sys/fs/bpf/ebpfcni-bench
}
trap cleanup EXIT
cleanup
for i in $(seq 0 "$((N > P ? N : P))"); do ip netns add "bench-$i"; done

# call PLUGIN_BIN CONF COMMAND POD -> prints elapsed nanoseconds
call() {
    local t0 t1
    t0=$(date +%s%N)
    echo "$2" | CNI_COMMAND="$3" CNI_CONTAINERID="bench-$4" CNI_NETNS="/run/netns/bench-$4" \
        CNI_IFNAME=eth0 CNI_PATH="$REF_DIR" "$1" >/dev/null || { echo "$3 pod $4 failed" >&2; exit 1; }
    t1=$(date +%s%N)
    echo $((t1 - t0))
}

# run NAME PLUGIN_BIN CONF -> writes $WORK/NAME.add and $WORK/NAME.del
run() {
    call "$2" "$3" ADD 0 >/dev/null; call "$2" "$3" DEL 0 >/dev/null   # warm-up
    for i in $(seq 1 "$N"); do call "$2" "$3" ADD "$i"; done >"$WORK/$1.add"
    for i in $(seq 1 "$N"); do call "$2" "$3" DEL "$i"; done >"$WORK/$1.del"
    # ebpfcni's veths go after its DELs return: not into the next run.
    while ip -o link 2>/dev/null | grep -q "master bench\(ebpf\|ref\)0"; do sleep 0.01; done
}

stats() { # file -> "mean_ms p99_ms"
    sort -n "$1" | awk '{v[NR]=$1; s+=$1} END {i=int(NR*0.99+0.999); if(i>NR)i=NR; printf "%.2f %.2f\n", s/NR/1e6, v[i]/1e6}'
}

run ref "$REF_DIR/bridge" "$REF_CONF"
run tcx "$BIN" "$(ebpf_conf auto)"
run tc "$BIN" "$(ebpf_conf tc)"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
read -r ref_add_mean ref_add_p99 < <(stats "$WORK/ref.add")
read -r ref_del_mean ref_del_p99 < <(stats "$WORK/ref.del")
printf '\nADD/DEL latency over %d pods (ms; rcu_expedited=%s)\n' "$N" "$(cat /sys/kernel/rcu_expedited 2>/dev/null || echo ?)"
row() { printf '%-26s %8s %8s %8s %8s %9s %9s %9s %9s\n' "$@"; }
row plugin "ADD mean" "ADD p99" "DEL mean" "DEL p99" "ADD mean" "ADD p99" "DEL mean" "DEL p99"
row "" "" "" "" "" "ratio" "ratio" "ratio" "ratio"
row "bridge + host-local (ref)" "$ref_add_mean" "$ref_add_p99" "$ref_del_mean" "$ref_del_p99" 1.00 1.00 1.00 1.00
for m in tcx tc; do
    read -r add_mean add_p99 < <(stats "$WORK/$m.add")
    read -r del_mean del_p99 < <(stats "$WORK/$m.del")
    label="ebpfcni, attachMode auto"; [[ $m == tc ]] && label="ebpfcni, attachMode tc"
    row "$label" "$add_mean" "$add_p99" "$del_mean" "$del_p99" \
        "$(ratio "$add_mean" "$ref_add_mean")" "$(ratio "$add_p99" "$ref_add_p99")" \
        "$(ratio "$del_mean" "$ref_del_mean")" "$(ratio "$del_p99" "$ref_del_p99")"
done
echo "(targets: ebpfcni ADD mean and p99, DEL mean <= 0.50 x reference)"

# burst PLUGIN_BIN CONF COMMAND -> prints the seconds P calls started at
# once took, the last one included; any failure fails the bench.
burst() {
    local t0 pids=() i
    t0=$(date +%s%N)
    for i in $(seq 1 "$P"); do
        echo "$2" | CNI_COMMAND="$3" CNI_CONTAINERID="bench-$i" CNI_NETNS="/run/netns/bench-$i" \
            CNI_IFNAME=eth0 CNI_PATH="$REF_DIR" "$1" >/dev/null &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || { echo "$3 of a parallel pod failed" >&2; exit 1; }; done
    awk -v ns=$(($(date +%s%N) - t0)) 'BEGIN{printf "%.2f", ns/1e9}'
}
# veths_gone BRIDGE -> seconds until no veth is left on BRIDGE: ebpfcni's
# DEL returns before the kernel has deleted the veth (a child process of
# the plugin does that), the reference's after.
veths_gone() {
    local t0; t0=$(date +%s%N)
    while ip -o link show master "$1" 2>/dev/null | grep -q veth; do sleep 0.01; done
    awk -v ns=$(($(date +%s%N) - t0)) 'BEGIN{printf "%.2f", ns/1e9}'
}
printf '\n%d ADDs at once, then their DELs (s; "veths gone": after the DELs returned)\n' "$P"
printf '%-26s %8s %8s %11s %9s %9s\n' plugin ADDs DELs "veths gone" "ADD ratio" "DEL ratio"
ref_add=$(burst "$REF_DIR/bridge" "$REF_CONF" ADD); ref_del=$(burst "$REF_DIR/bridge" "$REF_CONF" DEL)
printf '%-26s %8s %8s %11s %9s %9s\n' "bridge + host-local (ref)" "$ref_add" "$ref_del" "$(veths_gone benchref0)" 1.00 1.00
for m in auto tc; do
    add=$(burst "$BIN" "$(ebpf_conf $m)" ADD); del=$(burst "$BIN" "$(ebpf_conf $m)" DEL)
    printf '%-26s %8s %8s %11s %9s %9s\n' "ebpfcni, attachMode $m" "$add" "$del" "$(veths_gone benchebpf0)" \
        "$(ratio "$add" "$ref_add")" "$(ratio "$del" "$ref_del")"
done
echo "(target: $P ADDs at once in under 2 s)"
[[ ${ONLY:-} == latency ]] && exit 0

# Kernel memory of one network (what `ebpfcni status` reads: memlock of
# every pinned map) with N pods, each of which has sent a packet (so its
# counters exist): 10 and 100 pods at the default config, 1,000 with
# maxPods 1024. The per-CPU share is what each possible CPU adds; the
# 128-CPU figure is the total with that share counted 128 times.
# Targets: <= 8 MiB for 100 pods at the default config on this machine,
# <= 64 MiB computed for 128 CPUs.
mem_conf() { # max_pods
    echo '{"cniVersion":"1.0.0","name":"bench-mem","type":"ebpfcni","bridge":"benchmem0","subnet":"10.252.4.0/22","dataDir":"'$WORK'/mem","bpfPinPath":"/sys/fs/bpf/ebpfcni-bench","attachMode":"tc","ipForward":false'"${1:+,\"maxPods\":$1}"'}'
}
mem() { # pods [max_pods]
    local conf i
    conf=$(mem_conf "${2:-}")
    for i in $(seq 1 "$1"); do
        ip netns add "benchm-$i"
        echo "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID="benchm-$i" CNI_NETNS="/run/netns/benchm-$i" \
            CNI_IFNAME=eth0 "$BIN" >/dev/null || { echo "ADD of pod $i failed" >&2; exit 1; }
        # A first packet can go unanswered on a bridge of hundreds of ports.
        ip netns exec "benchm-$i" ping -q -c 1 -W 1 10.252.4.1 >/dev/null ||
            ip netns exec "benchm-$i" ping -q -c 3 -W 1 10.252.4.1 >/dev/null ||
            echo "pod $i: its gateway did not answer" >&2
    done
    "$BIN" status --json --network bench-mem --pin-path /sys/fs/bpf/ebpfcni-bench | python3 -c '
import json, sys
n = json.load(sys.stdin)["networks"][0]
m = n["memory"]
mib = lambda b: b / 1048576
print("%-6s %-9s %10.2f %12.1f %6d %12.2f" % (sys.argv[1], sys.argv[2], mib(m["bytes"]), m["per_cpu_bytes"] / 1024,
      m["possible_cpus"], mib(m["bytes_at_128_cpus"])))' "$1" "${2:-default}" || true
    for i in $(seq 1 "$1"); do
        echo "$conf" | CNI_COMMAND=DEL CNI_CONTAINERID="benchm-$i" CNI_NETNS="/run/netns/benchm-$i" \
            CNI_IFNAME=eth0 "$BIN" >/dev/null || true
        ip netns del "benchm-$i"
    done
    ip link del benchmem0 2>/dev/null || true
    rm -rf "$WORK/mem" /sys/fs/bpf/ebpfcni-bench/bench-mem
}
printf '\nkernel memory of one network (memlock of its maps)\n'
printf '%-6s %-9s %10s %12s %6s %12s\n' pods maxPods "MiB" "KiB per CPU" CPUs "MiB at 128"
mem 10
mem 100
mem 1000 1024
echo "(targets: 100 pods <= 8 MiB here, <= 64 MiB at 128 CPUs)"

# Per packet: from_pod run by the kernel on synthetic TCP SYNs
# (BPF_PROG_TEST_RUN) with what `policy sync` makes of N NetworkPolicies
# over 2N pods (named ports, ipBlocks and a 1-65535 range among them; the
# measured flow is allowed by the range). Established: 1e6 packets of one
# flow. New flow: 20,000 flows of one packet each (policy decision and the
# new conntrack entry), beside a packet of the established flow measured
# the same way (one packet a run). The costs must stay flat in N.
field() { sed 's/.*"'$1'": \([0-9]*\).*/\1/'; }
# With BASELINE=<an older ebpfcni binary>, the same runs of that build
# interleaved with this one's (before/after in one run).
printf '\nclassifier cost per packet (BPF_PROG_TEST_RUN, ns)\n'
printf '%-9s %-12s %8s %14s %12s %18s %10s\n' build policies entries established "new flow" "established, 1/run" "decision"
for n in 10 1000; do
    for build in ${BASELINE:+baseline} this; do
        bin=$BIN; [[ $build == baseline ]] && bin=$BASELINE
        out=$("$bin" bench-datapath --policies "$n" --repeat 1000000 --new-flows 20000)
        est=$(field established_ns_per_packet <<<"$out")
        new=$(field new_flow_ns <<<"$out")
        single=$(field established_single_run_ns <<<"$out")
        printf '%-9s %-12s %8s %14s %12s %18s %10s\n' "$build" "$n" "$(field entries <<<"$out")" "$est" "$new" "$single" "$((new - single))"
    done
done

# Cross-node: pod to pod against node to node, both routing modes.
scripts/bench-multinode.sh
