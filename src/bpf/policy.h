/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Policy: addresses become identities through the ipcache (one LPM
 * lookup each), then a fixed number of hash lookups decides. The cost of a
 * packet does not grow with the number of rules, pods or prefixes. */
#ifndef EBPFCNI_POLICY_H
#define EBPFCNI_POLICY_H

static __always_inline __u32 identity_of(const struct ip_key *addr, __u32 set)
{
	struct ipcache_key key = { .prefixlen = 32 + 128, .set = set };
	struct ipcache_value *v;

	__builtin_memcpy(key.addr, addr->addr, 16);
	v = bpf_map_lookup_elem(&ipcache, &key);
	return v ? v->identity : IDENTITY_WORLD;
}

static __always_inline int identity_is_pod(__u32 id)
{
	return id >= IDENTITY_POD_MIN && id < IDENTITY_CIDR_MIN;
}

static __always_inline __u32 identity_flags_of(__u32 id, __u32 set)
{
	struct identity_key key = { .identity = id, .set = set };
	__u32 *flags = bpf_map_lookup_elem(&identity_flags, &key);

	return flags ? *flags : 0;
}

/* The strongest verdict among the entries for subject/peer at the port,
 * the protocol, and any of them; explicit deny beats allow. */
static __always_inline __u8 policy_match(__u8 dir, __u32 set, __u32 subject, __u32 peer, __u8 proto,
					 __u16 dport, int has_deny)
{
	struct policy_key key = { .subject = subject, .dir_set = dir | (set << 4) };
	__u32 peers[2] = { peer, IDENTITY_ANY };
	__u8 verdict = VERDICT_NONE;

	for (int i = 0; i < 2; i++) {
		for (int j = 0; j < 3; j++) {
			struct policy_value *v;

			key.peer = peers[i];
			key.proto = j < 2 ? proto : 0;
			key.dport = j == 0 ? dport : 0;
			v = bpf_map_lookup_elem(&iprules, &key);
			if (!v)
				continue;
			if (v->verdict == VERDICT_DENY)
				return VERDICT_DENY;
			verdict = VERDICT_ALLOW;
			if (!has_deny)
				return VERDICT_ALLOW;
		}
	}
	return verdict;
}

/* Whether a new flow from src to dst is allowed: the source's egress
 * policy and the destination's ingress policy must both agree. */
static __always_inline int policy_allows(const struct settings *s, __u32 src_id, __u32 dst_id, __u8 proto,
					 __u16 dport)
{
	int has_deny = s->flags & SETTINGS_F_HAS_DENY;
	__u32 set = s->active_set & 1;
	__u8 e = policy_match(POLICY_EGRESS, set, src_id, dst_id, proto, dport, has_deny);
	__u8 i = policy_match(POLICY_INGRESS, set, dst_id, src_id, proto, dport, has_deny);

	if (e == VERDICT_DENY || i == VERDICT_DENY)
		return 0;
	if (identity_is_pod(src_id) && e != VERDICT_ALLOW &&
	    (s->default_deny || (identity_flags_of(src_id, set) & ISOLATED_EGRESS)))
		return 0;
	if (identity_is_pod(dst_id) && i != VERDICT_ALLOW &&
	    (s->default_deny || (identity_flags_of(dst_id, set) & ISOLATED_INGRESS)))
		return 0;
	return 1;
}

#endif
