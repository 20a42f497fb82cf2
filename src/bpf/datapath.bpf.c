// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The pod datapath: attached to the ingress of every pod's host veth, so it
 * sees each packet the pod sends. A packet for another pod on this node is
 * delivered straight into that pod with bpf_redirect_peer; anything else
 * continues to the bridge and the host. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ebpfcni.h"

/* UAPI constants that vmlinux.h does not carry (they are #defines). */
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define TC_ACT_REDIRECT 7
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ip_key);
	__type(value, struct endpoint_info);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ip_key);
	__type(value, struct traffic_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct iprule_key);
	__type(value, struct iprule_value);
} iprules SEC(".maps");

static __always_inline void ip_key_set_v4(struct ip_key *key, __be32 addr)
{
	__builtin_memset(key->addr, 0, 10);
	key->addr[10] = 0xff;
	key->addr[11] = 0xff;
	__builtin_memcpy(&key->addr[12], &addr, 4);
}

/* Fills src and dst from the packet; returns 0 when it is not IP. */
static __always_inline int packet_parse_addrs(struct __sk_buff *skb, struct ip_key *src,
					      struct ip_key *dst)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return 0;
		ip_key_set_v4(src, ip->saddr);
		ip_key_set_v4(dst, ip->daddr);
		return 1;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return 0;
		__builtin_memcpy(src->addr, &ip6->saddr, 16);
		__builtin_memcpy(dst->addr, &ip6->daddr, 16);
		return 1;
	}
	return 0;
}

static __always_inline void stats_count(const struct ip_key *src, __u32 len, int redirected)
{
	struct traffic_stats *st = bpf_map_lookup_elem(&stats, src);

	if (!st) {
		struct traffic_stats zero = {};

		/* BPF_NOEXIST: another CPU may have created it meanwhile. */
		bpf_map_update_elem(&stats, src, &zero, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&stats, src);
		if (!st)
			return;
	}
	/* Per-CPU values: plain increments are race free. */
	st->packets++;
	st->bytes += len;
	if (redirected)
		st->redirected++;
	else
		st->passed++;
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	struct ip_key src = {}, dst = {};
	struct endpoint_info *self, *ep;
	long verdict;
	int counted;

	if (!packet_parse_addrs(skb, &src, &dst))
		return TC_ACT_OK; /* ARP and other L2 traffic: the bridge handles it */

	/* Counters are kept per pod address only: link-local and DAD sources
	 * would pile up entries that no DEL ever removes. */
	self = bpf_map_lookup_elem(&endpoints, &src);
	counted = self && self->ifindex == skb->ifindex;

	ep = bpf_map_lookup_elem(&endpoints, &dst);
	if (!ep || ep->ifindex == skb->ifindex) {
		if (counted)
			stats_count(&src, skb->len, 0);
		return TC_ACT_OK;
	}

	/* The destination pod only accepts frames addressed to its MAC. */
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), ep->mac, 6, 0) < 0) {
		if (counted)
			stats_count(&src, skb->len, 0);
		return TC_ACT_OK;
	}
	verdict = bpf_redirect_peer(ep->ifindex, 0);
	if (counted)
		stats_count(&src, skb->len, verdict == TC_ACT_REDIRECT);
	return verdict == TC_ACT_REDIRECT ? TC_ACT_REDIRECT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
