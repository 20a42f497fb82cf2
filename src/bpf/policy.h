/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Policy: addresses become identities through the ipcache (one LPM lookup
 * for a pod or the node, two for any other address), then at most four
 * LPM lookups in iprules decide (port ranges included). The cost of a
 * packet does not grow with the number of rules, pods, prefixes or the
 * size of a port range. */
#ifndef EBPFCNI_POLICY_H
#define EBPFCNI_POLICY_H

/* A pod's (or the node's) identity from the endpoint part of the ipcache;
 * any other address gets the identity of the longest rule prefix holding
 * it from the CIDR part. The parts never share an entry. */
static __always_inline __u32 identity_of(const struct ip_key *addr, __u32 set)
{
	struct ipcache_key key = { .prefixlen = IPCACHE_PREFIX_HOST, .set = set, .kind = IPCACHE_ENDPOINT };
	struct ipcache_value *v;

	__builtin_memcpy(key.addr, addr->addr, 16);
	v = bpf_map_lookup_elem(&ipcache, &key);
	if (v)
		return v->identity;
	key.kind = IPCACHE_CIDR;
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

/* The verdict of the longest entry for subject/peer covering the
 * protocol and port: exact port, port block, every port of the protocol,
 * or everything. Entries carry deny when a shorter one of theirs denies. */
static __always_inline __u8 policy_lookup(__u8 dir, __u32 set, __u32 subject, __u32 peer, __u8 proto,
					  __u16 dport)
{
	struct policy_key key = {
		.prefixlen = POLICY_PREFIX_MAX,
		.dir_set = dir | (set << POLICY_SET_SHIFT),
		.subject = subject,
		.peer = peer,
		.proto = proto,
	};
	struct policy_value *v;

	key.dport[0] = dport >> 8;
	key.dport[1] = dport & 0xff;
	v = bpf_map_lookup_elem(&iprules, &key);
	return v ? v->verdict : VERDICT_NONE;
}

/* The strongest verdict among the entries for the peer and for any peer;
 * explicit deny beats allow. */
static __always_inline __u8 policy_match(__u8 dir, __u32 set, __u32 subject, __u32 peer, __u8 proto,
					 __u16 dport, int has_deny)
{
	__u8 own = policy_lookup(dir, set, subject, peer, proto, dport);
	__u8 any;

	if (own == VERDICT_DENY || (own == VERDICT_ALLOW && !has_deny))
		return own;
	any = policy_lookup(dir, set, subject, IDENTITY_ANY, proto, dport);
	if (any == VERDICT_DENY)
		return VERDICT_DENY;
	return own == VERDICT_ALLOW ? VERDICT_ALLOW : any;
}

/* Whether a new flow from src to dst is allowed: the source's egress
 * policy and the destination's ingress policy must both agree. Traffic
 * between a pod and its node passes NetworkPolicy isolation (kubelet's
 * probes); under default deny only a rule opens it. */
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
	    (s->default_deny ||
	     (dst_id != IDENTITY_HOST && (identity_flags_of(src_id, set) & ISOLATED_EGRESS))))
		return 0;
	if (identity_is_pod(dst_id) && i != VERDICT_ALLOW &&
	    (s->default_deny ||
	     (src_id != IDENTITY_HOST && (identity_flags_of(dst_id, set) & ISOLATED_INGRESS))))
		return 0;
	return 1;
}

#endif
