/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Counters per pod address and the event ring buffer. */
#ifndef EBPFCNI_OBSERVE_H
#define EBPFCNI_OBSERVE_H

enum count_kind {
	COUNT_REDIRECTED,
	COUNT_PASSED,
	COUNT_DROP_SPOOFED,
	COUNT_DROP_POLICY_EGRESS,  /* from_pod: the pod's own traffic refused */
	COUNT_DROP_POLICY_INGRESS, /* to_pod, from_peer: traffic to the pod refused */
	COUNT_DROP_PARSE_EGRESS,
	COUNT_DROP_PARSE_INGRESS,
	COUNT_RECEIVED_ONLY, /* to_pod: allowed in, not counted as sent */
};

static __always_inline void stats_count(const struct ip_key *pod, __u32 len, enum count_kind kind)
{
	struct traffic_stats *st;

	if (kind == COUNT_RECEIVED_ONLY)
		return;
	st = bpf_map_lookup_elem(&stats, pod);
	if (!st) {
		struct traffic_stats zero = {};

		/* BPF_NOEXIST: another CPU may have created it meanwhile. The
		 * map is not preallocated: this allocates the entry's per-CPU
		 * values, and fails once the map is full (status reports it). */
		bpf_map_update_elem(&stats, pod, &zero, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&stats, pod);
		if (!st)
			return;
	}
	/* Per-CPU values: plain increments are race free. */
	switch (kind) {
	case COUNT_REDIRECTED:
		st->packets++;
		st->bytes += len;
		st->redirected++;
		break;
	case COUNT_PASSED:
		st->packets++;
		st->bytes += len;
		st->passed++;
		break;
	case COUNT_DROP_SPOOFED:
		st->drop_spoofed++;
		break;
	case COUNT_DROP_POLICY_EGRESS:
		st->drop_policy_egress++;
		break;
	case COUNT_DROP_POLICY_INGRESS:
		st->drop_policy_ingress++;
		break;
	case COUNT_DROP_PARSE_INGRESS:
		st->drop_parse_ingress++;
		break;
	default:
		st->drop_parse_egress++;
		break;
	}
}

static __always_inline void event_lost(int rate_limited)
{
	__u32 zero = 0;
	struct event_loss *l = bpf_map_lookup_elem(&events_lost, &zero);

	if (!l)
		return;
	if (rate_limited)
		l->rate_limited++;
	else
		l->ring_full++;
}

/* Whether the source of a drop may have one more event now. */
static __always_inline int event_allowed(__u32 ifindex, const struct packet *p, __u8 dir, __u64 now)
{
	const __u64 interval = 1000000000ULL / EVENT_RATE_PER_SEC;
	struct event_source key = {};
	__u64 *tat;

	if (dir == DIR_FROM_POD)
		key.ifindex = ifindex;
	else
		key.src = p->src;
	tat = bpf_map_lookup_elem(&event_limit, &key);
	if (!tat) {
		__u64 next = now + interval;

		bpf_map_update_elem(&event_limit, &key, &next, BPF_ANY);
		return 1;
	}
	if ((__s64)(*tat - now) > (__s64)((EVENT_BURST - 1) * interval))
		return 0;
	*tat = ((__s64)(*tat - now) > 0 ? *tat : now) + interval;
	return 1;
}

/* An event about a packet at the pod's host veth `ifindex` (the device
 * the program runs on, but for what the fast path delivers from a peer
 * node: the destination pod's). */
static __always_inline void event_emit_at(__u32 ifindex, const struct packet *p, __u8 verdict, __u8 reason,
					  __u8 dir)
{
	__u64 now = bpf_ktime_get_ns();
	struct event *e;

	if (verdict == EVENT_DROPPED && !event_allowed(ifindex, p, dir, now)) {
		event_lost(1);
		return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		event_lost(0); /* nobody reading and the buffer is full */
		return;
	}
	e->ts_ns = now;
	e->src = p->src;
	e->dst = p->dst;
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->verdict = verdict;
	e->reason = reason;
	e->dir = dir;
	e->ifindex = ifindex;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void event_emit(struct __sk_buff *skb, const struct packet *p, __u8 verdict,
				       __u8 reason, __u8 dir)
{
	event_emit_at(skb->ifindex, p, verdict, reason, dir);
}

#endif
