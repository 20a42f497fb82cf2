/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Pods on other nodes. `tunnels` maps a peer node's pod range to that
 * node's underlay address (and, in vxlan, the MAC of its VXLAN device),
 * written by `ebpfcni agent` in both routing modes; `fastpath` says which
 * devices the node's cross-node traffic uses.
 *
 * The fast path (Cilium's "BPF host routing"): from_pod sends a packet for
 * a peer's pod range, after the pod's egress policy, straight out: in
 * vxlan with the tunnel key set, redirected to the VXLAN device; in native
 * redirected to the underlay with bpf_redirect_neigh (the host's route to
 * the peer's range and its neighbour entry give the MACs). The receiving
 * node's from_peer, on the ingress of its VXLAN device (vxlan) or of its
 * underlay (native), runs the destination pod's ingress policy (the
 * function to_pod runs) and delivers into the pod with bpf_redirect_peer.
 * Neither node's bridge, forwarding stack or host veth hop is crossed.
 *
 * The slow path stays what it was, and is the fallback wherever a lookup
 * fails: the host routes the peers' pod ranges out of the VXLAN device,
 * to_tunnel on its egress sets the tunnel key; the receiving host routes
 * the packet to its bridge and to_pod applies the policy. Flows the host
 * translates (a Service's DNAT to a pod of another node) take it both
 * ways: their replies must reach the host that translated them. */
#ifndef EBPFCNI_TUNNEL_H
#define EBPFCNI_TUNNEL_H

/* The VXLAN network identifier and UDP port every node uses (flannel's and
 * the Linux default port), and the outer header's cost: Ethernet 14 + IP
 * + UDP 8 + VXLAN 8. */
enum tunnel_const {
	TUNNEL_VNI = 1,
	TUNNEL_PORT = 8472,
	TUNNEL_TTL = 64,
	TUNNEL_OVERHEAD_V4 = 50,
	TUNNEL_OVERHEAD_V6 = 70,
};

/* tunnels: LPM trie keyed by pod range (prefixlen counts address bits of
 * the IPv4-mapped form: IPv4 ranges are 96 + their length). */
struct tunnel_key {
	__u32 prefixlen;
	__u8 addr[16];
};

enum tunnel_flags {
	TUNNEL_F_IPV6 = 0x1,   /* the node's underlay address is IPv6 */
	TUNNEL_F_NATIVE = 0x2, /* routing native: the range is routed via the node, no tunnel */
};

struct tunnel_value {
	struct ip_key node; /* underlay address (IPv4-mapped for IPv4) */
	__u8 mac[6];        /* the peer's VXLAN device MAC: the inner frame's destination */
	__u16 flags;        /* enum tunnel_flags */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tunnel_key);
	__type(value, struct tunnel_value);
} tunnels SEC(".maps");

/* fastpath: one entry, written by the agent (all zero: no fast path, as
 * on a node without the agent). */
enum fastpath_flags {
	FASTPATH_F_ENABLED = 0x1,
};

struct fastpath {
	__u32 tunnel_ifindex;   /* the VXLAN device (vxlan), or 0 */
	__u32 underlay_ifindex; /* the device holding the node's InternalIP (native), or 0 */
	__u8 gateway_mac[6];    /* the bridge's MAC: the source of frames from_peer delivers */
	__u16 flags;            /* enum fastpath_flags */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fastpath);
} fastpath SEC(".maps");

enum tunnel_const *tunnel_const_layout __attribute__((unused));
enum tunnel_flags *tunnel_flags_layout __attribute__((unused));
enum fastpath_flags *fastpath_flags_layout __attribute__((unused));

/* The fast path's devices, or NULL when the node has none. */
static __always_inline struct fastpath *fastpath_get(void)
{
	__u32 zero = 0;
	struct fastpath *f = bpf_map_lookup_elem(&fastpath, &zero);

	return f && (f->flags & FASTPATH_F_ENABLED) ? f : NULL;
}

/* The peer node holding `dst`, or NULL. */
static __always_inline struct tunnel_value *tunnel_lookup(const struct ip_key *dst)
{
	struct tunnel_key key = { .prefixlen = 128 };

	__builtin_memcpy(key.addr, dst->addr, 16);
	return bpf_map_lookup_elem(&tunnels, &key);
}

/* Sets the outer destination (and the VNI) of a packet leaving through the
 * VXLAN device. The key is passed in its oldest size (up to tunnel_label),
 * which every kernel from 5.10 on accepts. */
static __always_inline int tunnel_set_key(struct __sk_buff *skb, const struct tunnel_value *t)
{
	struct bpf_tunnel_key key = {};
	__u64 flags = 0;

	key.tunnel_id = TUNNEL_VNI;
	key.tunnel_ttl = TUNNEL_TTL;
	if (t->flags & TUNNEL_F_IPV6) {
		__builtin_memcpy(key.remote_ipv6, t->node.addr, 16);
		flags = BPF_F_TUNINFO_IPV6;
	} else {
		__u32 v4;

		__builtin_memcpy(&v4, &t->node.addr[12], 4);
		key.remote_ipv4 = bpf_ntohl(v4);
	}
	return bpf_skb_set_tunnel_key(skb, &key, offsetof(struct bpf_tunnel_key, tunnel_label), flags);
}

/* from_pod, after the pod's egress policy, for a destination in the peer's
 * pod range `t`: sends the packet straight out (TC_ACT_REDIRECT).
 * TC_ACT_OK: the host's path (the device is not known, a helper refused). */
static __always_inline long fastpath_send(struct __sk_buff *skb, const struct fastpath *f,
					  const struct tunnel_value *t)
{
	if (t->flags & TUNNEL_F_NATIVE) {
		if (!f->underlay_ifindex)
			return TC_ACT_OK;
		/* The host's route to the range (via the peer) and its
		 * neighbour entry give the MACs. */
		return bpf_redirect_neigh(f->underlay_ifindex, NULL, 0, 0);
	}
	if (!f->tunnel_ifindex)
		return TC_ACT_OK;
	/* The key first: it only sets metadata the host's path ignores. */
	if (tunnel_set_key(skb, t) < 0)
		return TC_ACT_OK;
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), t->mac, 6, 0) < 0)
		return TC_ACT_OK;
	return bpf_redirect(f->tunnel_ifindex, 0);
}

/* to_tunnel (egress of the VXLAN device): what the host routes to a peer's
 * pod range leaves for that peer's underlay address, addressed to its
 * VXLAN device; anything else has nowhere to go. What from_pod sent
 * already carries its key. */
static __always_inline int tunnel_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct tunnel_value *t;
	struct ip_key dst = {};
	struct bpf_tunnel_key have = {};

	if (bpf_skb_get_tunnel_key(skb, &have, offsetof(struct bpf_tunnel_key, tunnel_label), 0) == 0 &&
	    have.tunnel_id == TUNNEL_VNI)
		return TC_ACT_OK;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return TC_ACT_SHOT;
		ip_key_set_v4(&dst, ip->daddr);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_SHOT;
		__builtin_memcpy(dst.addr, &ip6->daddr, 16);
	} else {
		return TC_ACT_SHOT;
	}
	t = tunnel_lookup(&dst);
	if (!t)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), t->mac, 6, 0) < 0)
		return TC_ACT_SHOT;
	if (tunnel_set_key(skb, t) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

#endif
