#!/usr/bin/env bash
# ADD/DEL latency: ebpfcni vs the reference bridge + host-local plugins
# (containernetworking-plugins), measured in the same run on the same
# machine over N pods each, after one unmeasured warm-up pod (bridge
# creation, program load). ebpfcni runs twice: attachMode auto (TCX on
# kernels that have it) and tc (clsact). A TCX attach waits for one RCU
# grace period in the kernel (synchronize_rcu in tcx_prog_attach), which
# the tc path does not; the two rows show that cost. Prints mean and p99
# per plugin and the ratios against the reference.
#   scripts/bench.sh [N]        (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then exec sudo -E "$0" "$@"; fi
N="${1:-50}"

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

cleanup() {
    for i in $(seq 0 "$N"); do ip netns del "bench-$i" 2>/dev/null || true; done
    ip link del benchebpf0 2>/dev/null || true
    ip link del benchref0 2>/dev/null || true
    rm -rf "$WORK" /sys/fs/bpf/ebpfcni-bench
}
trap cleanup EXIT
cleanup
for i in $(seq 0 "$N"); do ip netns add "bench-$i"; done

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
row() { printf '%-30s %9s %9s %9s %9s %11s %11s\n' "$@"; }
row plugin "ADD mean" "ADD p99" "DEL mean" "DEL p99" "ADD ratio" "DEL ratio"
row "bridge + host-local (ref)" "$ref_add_mean" "$ref_add_p99" "$ref_del_mean" "$ref_del_p99" 1.00 1.00
for m in tcx tc; do
    read -r add_mean add_p99 < <(stats "$WORK/$m.add")
    read -r del_mean del_p99 < <(stats "$WORK/$m.del")
    label="ebpfcni, attachMode auto"; [[ $m == tc ]] && label="ebpfcni, attachMode tc"
    row "$label" "$add_mean" "$add_p99" "$del_mean" "$del_p99" \
        "$(ratio "$add_mean" "$ref_add_mean")" "$(ratio "$del_mean" "$ref_del_mean")"
done
echo "(target: ebpfcni ADD mean <= 0.50 x reference)"

# Per packet: from_pod run by the kernel on synthetic TCP SYNs
# (BPF_PROG_TEST_RUN) with what `policy sync` makes of N NetworkPolicies
# over 2N pods (named ports, ipBlocks and a 1-65535 range among them; the
# measured flow is allowed by the range). Established: 1e6 packets of one
# flow. New flow: 20,000 flows of one packet each (policy decision and the
# new conntrack entry), beside a packet of the established flow measured
# the same way (one packet a run). The costs must stay flat in N.
field() { sed 's/.*"'$1'": \([0-9]*\).*/\1/'; }
printf '\nclassifier cost per packet (BPF_PROG_TEST_RUN, ns)\n'
printf '%-12s %8s %14s %12s %18s %10s\n' policies entries established "new flow" "established, 1/run" "decision"
for n in 10 1000; do
    out=$("$BIN" bench-datapath --policies "$n" --repeat 1000000 --new-flows 20000)
    est=$(field established_ns_per_packet <<<"$out")
    new=$(field new_flow_ns <<<"$out")
    single=$(field established_single_run_ns <<<"$out")
    printf '%-12s %8s %14s %12s %18s %10s\n' "$n" "$(field entries <<<"$out")" "$est" "$new" "$single" "$((new - single))"
done

# Cross-node: pod to pod against node to node, both routing modes.
scripts/bench-multinode.sh
