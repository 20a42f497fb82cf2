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

/* The decision for a flow's packet, with conntrack. Identities are looked
 * up only when a rule must be consulted: an established flow costs one or
 * two hash lookups, a new one up to four. `owner` is the host veth whose
 * program asks: a new flow's entry counts against its budget. */
static __always_inline int ct_flow_allows(const struct settings *s, const struct packet *p, __u32 owner)
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

static __always_inline int ip_key_equal(const struct ip_key *a, const struct ip_key *b)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a->addr, 8);
	__builtin_memcpy(&a1, a->addr + 8, 8);
	__builtin_memcpy(&b0, b->addr, 8);
	__builtin_memcpy(&b1, b->addr + 8, 8);
	return a0 == b0 && a1 == b1;
}

/* Whether a tracked flow's entry is there, either way round, and live. */
static __always_inline int ct_tracked(struct ct_key *key, __u64 now)
{
	struct ct_value *ct = bpf_map_lookup_elem(&conntrack, key);
	struct ct_new_value *nv;

	if (ct)
		return !ct_expired(ct, key->proto, now);
	nv = bpf_map_lookup_elem(&ct_new, key);
	return nv && !ct_expired(&nv->ct, key->proto, now);
}

/* An ICMP error about a packet of a tracked flow, on its way back to
 * that packet's sender (path MTU discovery, unreachable, time exceeded). */
static __always_inline int ct_related(const struct packet *p, __u64 now)
{
	struct ct_key key = {};

	if (!p->inner_proto || !ip_key_equal(&p->dst, &p->inner_src))
		return 0;
	key.src = p->inner_src;
	key.dst = p->inner_dst;
	key.sport = p->inner_sport;
	key.dport = p->inner_dport;
	key.proto = p->inner_proto;
	if (ct_tracked(&key, now))
		return 1;
	/* The quoted packet was a reply of the flow. */
	key.src = p->inner_dst;
	key.dst = p->inner_src;
	key.sport = p->inner_dport;
	key.dport = p->inner_sport;
	return ct_tracked(&key, now);
}

static __always_inline void frag_key_of(const struct packet *p, struct frag_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->src = p->src;
	k->dst = p->dst;
	k->id = p->frag_id;
	k->proto = p->proto;
}

/* The policy decision for a packet: later fragments go with their
 * datagram's first, ICMP errors with the flow they are about, anything
 * else by its flow. */
static __always_inline int ct_policy_allows(const struct settings *s, const struct packet *p, __u32 owner)
{
	struct frag_key fk;
	__u64 *seen;
	__u64 now;
	int verdict;

	if (p->later_frag) {
		now = bpf_ktime_get_ns();
		frag_key_of(p, &fk);
		seen = bpf_map_lookup_elem(&frags, &fk);
		if (!seen || (__s64)(now - *seen) > (__s64)(FRAG_TIMEOUT * 1000000000ULL))
			return CT_DENIED;
		*seen = now;
		return CT_ALLOWED;
	}
	if (p->icmp_error && ct_related(p, bpf_ktime_get_ns()))
		return CT_ALLOWED;
	verdict = ct_flow_allows(s, p, owner);
	if (verdict == CT_ALLOWED && p->frag) {
		now = bpf_ktime_get_ns();
		frag_key_of(p, &fk);
		bpf_map_update_elem(&frags, &fk, &now, BPF_ANY);
	}
	return verdict;
}

#endif
