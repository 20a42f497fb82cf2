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

/* The policy decision for a packet, with conntrack. Identities are looked
 * up only when a rule must be consulted: an established flow costs one or
 * two hash lookups. */
static __always_inline int ct_policy_allows(const struct settings *s, const struct packet *p)
{
	__u32 set = s->active_set & 1;
	struct ct_key key;
	struct ct_value *ct;
	__u64 now = bpf_ktime_get_ns();
	__u32 src_id, dst_id;

	/* A reply of a tracked flow? */
	ct_key_of(p, &key, 1);
	ct = bpf_map_lookup_elem(&conntrack, &key);
	if (ct) {
		if (ct->generation == s->generation) {
			ct->last_seen_ns = now;
			return 1;
		}
		/* Policy changed since: is the original flow still allowed? */
		src_id = identity_of(&p->src, set);
		dst_id = identity_of(&p->dst, set);
		if (policy_allows(s, dst_id, src_id, p->proto, p->sport)) {
			ct->generation = s->generation;
			ct->last_seen_ns = now;
			return 1;
		}
		/* No longer: the packet stands on its own below. */
		bpf_map_delete_elem(&conntrack, &key);
	}

	/* A later packet of a flow allowed under the current rules? */
	ct_key_of(p, &key, 0);
	ct = bpf_map_lookup_elem(&conntrack, &key);
	if (ct && ct->generation == s->generation) {
		ct->last_seen_ns = now;
		return 1;
	}
	src_id = identity_of(&p->src, set);
	dst_id = identity_of(&p->dst, set);
	if (!policy_allows(s, src_id, dst_id, p->proto, p->dport)) {
		if (ct)
			bpf_map_delete_elem(&conntrack, &key);
		return 0;
	}
	if (ct) {
		ct->generation = s->generation;
		ct->last_seen_ns = now;
	} else {
		struct ct_value v = { .last_seen_ns = now, .generation = s->generation };

		bpf_map_update_elem(&conntrack, &key, &v, BPF_ANY);
	}
	return 1;
}

#endif
