/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Counters per pod address and the event ring buffer. */
#ifndef EBPFCNI_OBSERVE_H
#define EBPFCNI_OBSERVE_H

enum count_kind {
	COUNT_REDIRECTED,
	COUNT_PASSED,
	COUNT_DROP_SPOOFED,
	COUNT_DROP_POLICY,
	COUNT_DROP_NO_ENDPOINT,
	COUNT_DROP_PARSE,
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

		/* BPF_NOEXIST: another CPU may have created it meanwhile. */
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
	case COUNT_DROP_POLICY:
		st->drop_policy++;
		break;
	case COUNT_DROP_NO_ENDPOINT:
		st->drop_no_endpoint++;
		break;
	default:
		st->drop_parse++;
		break;
	}
}

static __always_inline void event_emit(struct __sk_buff *skb, const struct packet *p, __u8 verdict,
				       __u8 reason, __u8 dir)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		return; /* nobody reading and the buffer is full: drop the event */
	e->ts_ns = bpf_ktime_get_ns();
	e->src = p->src;
	e->dst = p->dst;
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->verdict = verdict;
	e->reason = reason;
	e->dir = dir;
	e->ifindex = skb->ifindex;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
}

#endif
