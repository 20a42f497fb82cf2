/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking for policy: a flow allowed in one direction lets its
 * later packets and its replies through without looking at a rule. Entries
 * remember the policy generation that allowed them; after a policy change
 * a packet of the flow (either way) re-checks it against the new rules, so
 * removed permissions take effect on existing connections too. */
#ifndef EBPFCNI_CONNTRACK_H
#define EBPFCNI_CONNTRACK_H

static __always_inline void ct_key_of(const struct packet *p, struct ct_key *k, int reverse)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->proto = p->proto;
	if (reverse) {
		k->src = p->dst;
		k->dst = p->src;
		k->sport = p->dport;
		k->dport = p->sport;
	} else {
		k->src = p->src;
		k->dst = p->dst;
		k->sport = p->sport;
		k->dport = p->dport;
	}
}

enum ct_result {
	CT_DENIED = 0,
	CT_ALLOWED = 1,
	CT_NO_ROOM = 2, /* allowed by policy, over the pod's budget of new flows */
};

/* Whether an entry of these flags and protocol has outlived its timeout. */
static __always_inline int ct_expired(const struct ct_value *v, __u8 proto, __u64 now)
{
	__u64 timeout = CT_TIMEOUT_NEW;

	if (v->flags & CT_F_CLOSING)
		timeout = CT_TIMEOUT_CLOSING;
	else if ((v->flags & CT_F_REPLIED) && proto == IPPROTO_TCP_)
		timeout = CT_TIMEOUT_ESTABLISHED;
	else if (v->flags & CT_F_REPLIED)
		timeout = CT_TIMEOUT_DATAGRAM;
	/* Signed: another CPU may have stamped it after `now` was taken. */
	return (__s64)(now - v->last_seen_ns) > (__s64)(timeout * 1000000000ULL);
}

/* Takes one new flow from the pod's budget; 0 when none is left. */
static __always_inline int ct_budget_take(__u32 owner, __u64 now)
{
	struct ct_budget *b = bpf_map_lookup_elem(&ct_budget, &owner);

	if (!b) {
		struct ct_budget fresh = { .window_start_ns = now, .count = 1 };

		bpf_map_update_elem(&ct_budget, &owner, &fresh, BPF_ANY);
		return 1;
	}
	if ((__s64)(now - b->window_start_ns) > (__s64)(CT_TIMEOUT_NEW * 1000000000ULL)) {
		b->window_start_ns = now;
		b->count = 1;
		return 1;
	}
	if (b->count >= CT_NEW_PER_POD)
		return 0;
	__sync_fetch_and_add(&b->count, 1);
	return 1;
}

/* A flow of the pod got its reply: it no longer counts as new. */
static __always_inline void ct_budget_give(__u32 owner)
{
	struct ct_budget *b = bpf_map_lookup_elem(&ct_budget, &owner);

	if (b && b->count)
		__sync_fetch_and_add(&b->count, -1);
}

/* The policy decision for a packet, with conntrack. Identities are looked
 * up only when a rule must be consulted: an established flow costs one or
 * two hash lookups, a new one up to four. `owner` is the host veth whose
 * program asks: a new flow's entry counts against its budget. */
static __always_inline int ct_policy_allows(const struct settings *s, const struct packet *p, __u32 owner)
{
	__u32 set = s->active_set & 1;
	struct ct_key key;
	struct ct_value *ct;
	struct ct_new_value *nv = NULL;
	__u64 now = bpf_ktime_get_ns();
	__u32 src_id, dst_id;
	int reply = 1;

	/* An established flow, this packet a reply or a later one? */
	ct_key_of(p, &key, 1);
	ct = bpf_map_lookup_elem(&conntrack, &key);
	if (!ct) {
		reply = 0;
		ct_key_of(p, &key, 0);
		ct = bpf_map_lookup_elem(&conntrack, &key);
	}
	if (!ct) {
		/* A new one: a later packet, or its first reply? */
		nv = bpf_map_lookup_elem(&ct_new, &key);
		if (!nv) {
			reply = 1;
			ct_key_of(p, &key, 1);
			nv = bpf_map_lookup_elem(&ct_new, &key);
		}
		if (nv)
			ct = &nv->ct;
	}
	if (ct && ct_expired(ct, p->proto, now))
		goto forget;
	if (ct && ct->generation != s->generation) {
		/* Policy changed since: is the original flow still allowed? */
		src_id = identity_of(reply ? &p->dst : &p->src, set);
		dst_id = identity_of(reply ? &p->src : &p->dst, set);
		if (!policy_allows(s, src_id, dst_id, p->proto, reply ? p->sport : p->dport))
			goto forget;
		ct->generation = s->generation;
	}
	if (ct) {
		ct->last_seen_ns = now;
		if (p->tcp_flags & (TCP_FIN_ | TCP_RST_))
			ct->flags |= CT_F_CLOSING;
		if (nv && reply) {
			/* First reply: established from now on. */
			struct ct_value est = *ct;

			est.flags |= CT_F_REPLIED;
			bpf_map_update_elem(&conntrack, &key, &est, BPF_ANY);
			ct_budget_give(nv->owner);
			bpf_map_delete_elem(&ct_new, &key);
		}
		return CT_ALLOWED;
	}
	goto fresh;
forget:
	if (nv)
		bpf_map_delete_elem(&ct_new, &key);
	else
		bpf_map_delete_elem(&conntrack, &key);
	/* No longer allowed, or expired: the packet stands on its own. */
fresh:
	ct_key_of(p, &key, 0);
	src_id = identity_of(&p->src, set);
	dst_id = identity_of(&p->dst, set);
	if (!policy_allows(s, src_id, dst_id, p->proto, p->dport))
		return CT_DENIED;
	if (!ct_budget_take(owner, now))
		return CT_NO_ROOM;
	{
		struct ct_new_value v = {
			.ct = { .last_seen_ns = now, .generation = s->generation },
			.owner = owner,
		};

		if (p->tcp_flags & (TCP_FIN_ | TCP_RST_))
			v.ct.flags = CT_F_CLOSING;
		bpf_map_update_elem(&ct_new, &key, &v, BPF_ANY);
	}
	return CT_ALLOWED;
}

#endif
