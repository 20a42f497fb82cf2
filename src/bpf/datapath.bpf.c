// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The pod datapath, two programs per pod's host veth:
 *  from_pod (ingress of the host veth: what the pod sends) stops spoofed
 *    traffic, applies policy, counts, and delivers a packet for another pod
 *    of this node straight into it with bpf_redirect_peer; anything else
 *    continues to the bridge and the host.
 *  to_pod (egress of the host veth: what enters the pod from the bridge or
 *    the host) applies the pod's ingress policy to traffic that did not
 *    come through a from_pod. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ebpfcni.h"

/* UAPI constants that vmlinux.h does not carry (they are #defines). */
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define TC_ACT_REDIRECT 7
#define PACKET_HOST 0

/* Map sizes are the default config's (maxPods 256, conntrack.maxEntries
 * 32768, policy.*): the loader sets each network's own before load
 * (src/datapath/sizes.rs, which a unit test keeps equal to these). */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 768);
	__type(key, struct ip_key);
	__type(value, struct endpoint_info);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct pod_info);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 768);
	/* Per-CPU values cost CPUs x entries: allocated when a pod first counts. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ip_key);
	__type(value, struct traffic_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 32768);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
} iprules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct identity_key);
	__type(value, __u32);
} identity_flags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct ct_key);
	__type(value, struct ct_new_value);
} ct_new SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct ct_budget);
} ct_budget SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 2048);
	__type(key, struct frag_key);
	__type(value, __u64); /* last fragment seen, ns */
} frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ct_key);
	__type(value, struct hostflow_value);
} hostflows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_loss);
} events_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct event_source);
	__type(value, __u64);
} event_limit SEC(".maps");

/* Puts struct event into the object's BTF, so the skeleton generates the
 * Rust type the monitor decodes records with (ring buffers carry none). */
struct event *event_layout __attribute__((unused));
/* The same for the enums whose values the Rust side uses. */
enum identity_reserved *identity_layout __attribute__((unused));
enum ipcache_kind *ipcache_kind_layout __attribute__((unused));
enum policy_dir *policy_dir_layout __attribute__((unused));
enum verdict *verdict_layout __attribute__((unused));
enum policy_prefix *policy_prefix_layout __attribute__((unused));
enum isolation *isolation_layout __attribute__((unused));
enum endpoint_flags *endpoint_flags_layout __attribute__((unused));
enum settings_flags *settings_flags_layout __attribute__((unused));
enum ct_flags *ct_flags_layout __attribute__((unused));
enum ipcache_prefix *ipcache_prefix_layout __attribute__((unused));
enum policy_dir_set *policy_dir_set_layout __attribute__((unused));
enum event_reason *event_reason_layout __attribute__((unused));
enum event_verdict *event_verdict_layout __attribute__((unused));
enum event_dir *event_dir_layout __attribute__((unused));

#include "packet.h"
#include "observe.h"
#include "policy.h"
#include "conntrack.h"
#include "tunnel.h"

static __always_inline struct settings *settings_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&settings, &zero);
}

static __always_inline int policy_active(const struct settings *s)
{
	return s && (s->default_deny || (s->flags & SETTINGS_F_POLICY));
}

static __always_inline int tracing(const struct settings *s)
{
	return s && (s->flags & SETTINGS_F_TRACE_FLOWS);
}

/* A drop at the pod's host veth `ifindex`. */
static __always_inline int drop_at(struct __sk_buff *skb, __u32 ifindex, const struct ip_key *pod,
				   const struct packet *p, __u8 reason, enum count_kind kind, __u8 dir)
{
	stats_count(pod, skb->len, kind);
	event_emit_at(ifindex, p, EVENT_DROPPED, reason, dir);
	return TC_ACT_SHOT;
}

static __always_inline int drop(struct __sk_buff *skb, const struct ip_key *pod, const struct packet *p,
				__u8 reason, enum count_kind kind, __u8 dir)
{
	return drop_at(skb, skb->ifindex, pod, p, reason, kind, dir);
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	/* clang does not inline memcmp for BPF: compare by hand. */
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/* to_pod: a packet from a pod of this node arrives through the host,
 * not through the redirect: the host routed it and may have translated it
 * (a Service's DNAT, a hostPort). Remember the flow, and flag its sender. */
static __always_inline void hostflow_note(__u32 ifindex, const struct packet *p)
{
	struct endpoint_info *sender = bpf_map_lookup_elem(&endpoints, &p->src);
	struct hostflow_value v = { .ifindex = ifindex };
	struct ct_key key;

	if (!sender)
		return;
	ct_key_of(p, &key, 0);
	if (!bpf_map_lookup_elem(&hostflows, &key))
		bpf_map_update_elem(&hostflows, &key, &v, BPF_ANY);
	if (!(sender->flags & ENDPOINT_F_HOST_FLOWS))
		sender->flags |= ENDPOINT_F_HOST_FLOWS;
}

/* from_pod: is this packet a reply of a flow hostflow_note saw? */
static __always_inline int hostflow_reply(const struct packet *p)
{
	struct ct_key key;

	ct_key_of(p, &key, 1);
	return bpf_map_lookup_elem(&hostflows, &key) != NULL;
}

/* Across nodes the host that translates a flow is the sender's (a Service
 * whose backend is a pod of another node), and the reply comes back with
 * the backend's address, not the one the pod sent to. So from_pod notes,
 * for a flow it hands to the host for a destination in no pod range, the
 * pod's own end (source address and port, as the reply's destination;
 * any peer), and from_peer takes such replies the host's way. An entry
 * outliving its flow only sends a reused port the slow way. */
static __always_inline void hostflow_key_any_peer(const struct ip_key *addr, __u16 port, __u8 proto,
						  struct ct_key *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->dst = *addr;
	key->dport = port;
	key->proto = proto;
}

static __always_inline void hostflow_note_outbound(const struct packet *p, __u32 ifindex)
{
	struct endpoint_info *sender = bpf_map_lookup_elem(&endpoints, &p->src);
	struct hostflow_value v = { .ifindex = ifindex };
	struct ct_key key;

	if (!sender)
		return;
	hostflow_key_any_peer(&p->src, p->sport, p->proto, &key);
	if (!bpf_map_lookup_elem(&hostflows, &key))
		bpf_map_update_elem(&hostflows, &key, &v, BPF_ANY);
	if (!(sender->flags & ENDPOINT_F_HOST_FLOWS))
		sender->flags |= ENDPOINT_F_HOST_FLOWS;
}

/* to_pod: a packet from a pod of another node that came through this
 * node's host, not through from_peer: the host may have translated it (a
 * hostPort). Remember the flow, so from_pod sends its replies back the
 * same way rather than out of the fast path. */
static __always_inline void hostflow_note_peer(__u32 ifindex, const struct packet *p)
{
	struct hostflow_value v = { .ifindex = ifindex };
	struct ct_key key;

	if (!fastpath_get() || !tunnel_lookup(&p->src))
		return;
	ct_key_of(p, &key, 0);
	if (!bpf_map_lookup_elem(&hostflows, &key))
		bpf_map_update_elem(&hostflows, &key, &v, BPF_ANY);
}

/* from_peer: may be the reply of a flow the sender's host translated. */
static __always_inline int hostflow_translated_reply(const struct packet *p)
{
	struct ct_key key;

	hostflow_key_any_peer(&p->dst, p->dport, p->proto, &key);
	return bpf_map_lookup_elem(&hostflows, &key) != NULL;
}

static __always_inline int owned_by(const struct ip_key *addr, __u32 ifindex)
{
	struct endpoint_info *ep = bpf_map_lookup_elem(&endpoints, addr);

	return ep && ep->ifindex == ifindex;
}

/* Whether the pod's ingress is isolated: default deny, or a policy
 * selecting its identity for ingress. */
static __always_inline int ingress_isolated(const struct settings *s, const struct pod_info *pod)
{
	__u32 set = s->active_set & 1;

	return s->default_deny || (identity_flags_of(identity_of(&pod->addr, set), set) & ISOLATED_INGRESS);
}

/* ARP must be whole Ethernet/IPv4 ARP (a truncated or foreign-format one
 * is no message a neighbour should see) and speak for the pod itself: its
 * MAC as sender, and its own address (or none, for probes) as sender
 * address. */
static __always_inline int arp_is_honest(struct __sk_buff *skb, const struct pod_info *pod)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	/* ethhdr (14) + arphdr (8) + sha (6) + spa (4) + tha (6) + tpa (4) */
	__u8 *arp = data + sizeof(struct ethhdr);
	struct ip_key spa = {};
	__be32 addr;

	if ((void *)(arp + 28) > data_end)
		return -1;
	/* hardware Ethernet (1), protocol IPv4, lengths 6 and 4 */
	if (arp[0] != 0 || arp[1] != 1 || arp[2] != 0x08 || arp[3] != 0 || arp[4] != 6 || arp[5] != 4)
		return -1;
	if (!mac_equal(arp + 8, pod->mac))
		return 0;
	__builtin_memcpy(&addr, arp + 14, 4);
	if (!addr)
		return 1;
	ip_key_set_v4(&spa, addr);
	return owned_by(&spa, skb->ifindex);
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 ifindex = skb->ifindex;
	struct settings *s = settings_get();
	struct packet p = {};
	struct pod_info *pod;
	struct endpoint_info *ep;
	long verdict;
	int parsed;

	pod = bpf_map_lookup_elem(&pods, &ifindex);
	if (!pod) {
		event_emit(skb, &p, EVENT_DROPPED, REASON_NO_ENDPOINT, DIR_FROM_POD);
		return TC_ACT_SHOT;
	}
	if ((void *)(eth + 1) > data_end)
		return drop(skb, &pod->addr, &p, REASON_PARSE, COUNT_DROP_PARSE_EGRESS, DIR_FROM_POD);
	if (!mac_equal(eth->h_source, pod->mac))
		return drop(skb, &pod->addr, &p, REASON_SPOOFED_MAC, COUNT_DROP_SPOOFED, DIR_FROM_POD);
	/* A tag the veth carries beside the frame hides what is inside. */
	if (skb->vlan_present)
		return drop(skb, &pod->addr, &p, REASON_ETHERTYPE, COUNT_DROP_PARSE_EGRESS, DIR_FROM_POD);
	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		int honest = arp_is_honest(skb, pod);

		if (honest < 0)
			return drop(skb, &pod->addr, &p, REASON_PARSE, COUNT_DROP_PARSE_EGRESS, DIR_FROM_POD);
		if (!honest)
			return drop(skb, &pod->addr, &p, REASON_SPOOFED_ARP, COUNT_DROP_SPOOFED, DIR_FROM_POD);
		return TC_ACT_OK;
	}

	parsed = packet_parse(skb, &p);
	if (parsed == PARSE_ERROR)
		return drop(skb, &pod->addr, &p, REASON_PARSE, COUNT_DROP_PARSE_EGRESS, DIR_FROM_POD);
	/* A pod speaks IPv4, IPv6 and ARP; anything else (VLAN tags in the
	 * frame, QinQ, other ethertypes) could carry what no check sees. */
	if (parsed == PARSE_NOT_IP)
		return drop(skb, &pod->addr, &p, REASON_ETHERTYPE, COUNT_DROP_PARSE_EGRESS, DIR_FROM_POD);
	/* A pod is no router: its advertisements and redirects would steer
	 * other pods' and the node's traffic (CVE-2020-10749). */
	if (p.router_message)
		return drop(skb, &pod->addr, &p, REASON_ROUTER_MESSAGE, COUNT_DROP_SPOOFED, DIR_FROM_POD);

	/* Every source is one of the pod's own addresses, its link-local one
	 * included (registered at ADD), and gets the same policy as any
	 * other. The one exception: the unspecified source of duplicate
	 * address detection and listener reports, before the pod has an
	 * address, and only for those. */
	if (!owned_by(&p.src, ifindex)) {
		if (p.family == 6 && p.nd && !p.has_na_target && ip_key_is_any(&p.src))
			return TC_ACT_OK;
		return drop(skb, &pod->addr, &p, REASON_SPOOFED_IP, COUNT_DROP_SPOOFED, DIR_FROM_POD);
	}
	/* A neighbour advertisement speaks for one of the pod's own addresses. */
	if (p.has_na_target && !owned_by(&p.na_target, ifindex))
		return drop(skb, &pod->addr, &p, REASON_SPOOFED_ND, COUNT_DROP_SPOOFED, DIR_FROM_POD);

	if (!p.nd && policy_active(s)) {
		int ct = ct_policy_allows(s, &p, ifindex);

		if (ct == CT_DENIED)
			return drop(skb, &pod->addr, &p, REASON_POLICY, COUNT_DROP_POLICY_EGRESS, DIR_FROM_POD);
		if (ct == CT_NO_ROOM)
			return drop(skb, &pod->addr, &p, REASON_CT_FULL, COUNT_DROP_POLICY_EGRESS, DIR_FROM_POD);
	}

	/* Sent traffic counts under its source, one of the pod's own
	 * addresses (verified above); drops count under the pod's first. */
	ep = bpf_map_lookup_elem(&endpoints, &p.dst);
	if (!ep) {
		struct fastpath *f = fastpath_get();
		struct tunnel_value *t = f ? tunnel_lookup(&p.dst) : NULL;

		/* A pod of another node: straight out (fast path), unless
		 * this is the reply of a flow that reached the pod through
		 * this node's host (a hostPort), which must undo it. */
		if (t && !hostflow_reply(&p)) {
			verdict = fastpath_send(skb, f, t);
			if (verdict == TC_ACT_REDIRECT) {
				stats_count(&p.src, skb->len, COUNT_REDIRECTED);
				if (tracing(s))
					event_emit(skb, &p, EVENT_REDIRECTED, REASON_NONE, DIR_FROM_POD);
				return TC_ACT_REDIRECT;
			}
		} else if (f) {
			hostflow_note_outbound(&p, ifindex);
		}
	}
	if (!ep || ep->ifindex == ifindex) {
		stats_count(&p.src, skb->len, COUNT_PASSED);
		if (tracing(s))
			event_emit(skb, &p, EVENT_PASSED, REASON_NONE, DIR_FROM_POD);
		return TC_ACT_OK;
	}
	/* A reply of a flow that reached this pod through the host goes back
	 * the same way, so the host can undo what it translated. */
	if ((ep->flags & ENDPOINT_F_HOST_FLOWS) && hostflow_reply(&p)) {
		stats_count(&p.src, skb->len, COUNT_PASSED);
		if (tracing(s))
			event_emit(skb, &p, EVENT_PASSED, REASON_NONE, DIR_FROM_POD);
		return TC_ACT_OK;
	}
	/* The destination pod only accepts frames addressed to its MAC. */
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), ep->mac, 6, 0) < 0) {
		stats_count(&p.src, skb->len, COUNT_PASSED);
		return TC_ACT_OK;
	}
	/* The host veth classified the frame (addressed to the bridge's MAC)
	 * as PACKET_OTHERHOST. 5.10 delivers it into the pod marked so, and
	 * the pod's IP stack drops it; 6.15 and later scrub the mark
	 * themselves. One load to test; the helper runs only when needed. */
	if (skb->pkt_type != PACKET_HOST)
		bpf_skb_change_type(skb, PACKET_HOST);
	verdict = bpf_redirect_peer(ep->ifindex, 0);
	if (verdict != TC_ACT_REDIRECT) {
		stats_count(&p.src, skb->len, COUNT_PASSED);
		return TC_ACT_OK;
	}
	stats_count(&p.src, skb->len, COUNT_REDIRECTED);
	if (tracing(s))
		event_emit(skb, &p, EVENT_REDIRECTED, REASON_NONE, DIR_FROM_POD);
	return TC_ACT_REDIRECT;
}

/* The ingress policy of `pod` (behind host veth `ifindex`) for a parsed IP
 * packet entering it: TC_ACT_OK or TC_ACT_SHOT (counted). to_pod runs it
 * for what the host delivers, from_peer for what it delivers itself. */
static __always_inline int pod_ingress(struct __sk_buff *skb, const struct settings *s, const struct pod_info *pod,
				       const struct packet *p, __u32 ifindex)
{
	int ct;

	hostflow_note(ifindex, p);
	if (!policy_active(s))
		return TC_ACT_OK;
	/* Addressed to none of the pod's own addresses (a group, a broadcast,
	 * an address it gave itself): no pod identity to ask, so an isolated
	 * pod does not take it. */
	if (!owned_by(&p->dst, ifindex) && ingress_isolated(s, pod)) {
		/* The segment's group traffic (the node's IGMP and MLD reports
		 * flood every port) is nobody's flow: refused without counting,
		 * so it does not bury real drops. */
		if (ip_key_is_group(&p->dst))
			return TC_ACT_SHOT;
		return drop_at(skb, ifindex, &pod->addr, p, REASON_POLICY, COUNT_DROP_POLICY_INGRESS, DIR_TO_POD);
	}
	ct = ct_policy_allows(s, p, ifindex);
	if (ct == CT_DENIED)
		return drop_at(skb, ifindex, &pod->addr, p, REASON_POLICY, COUNT_DROP_POLICY_INGRESS, DIR_TO_POD);
	if (ct == CT_NO_ROOM)
		return drop_at(skb, ifindex, &pod->addr, p, REASON_CT_FULL, COUNT_DROP_POLICY_INGRESS, DIR_TO_POD);
	if (tracing(s))
		event_emit_at(ifindex, p, EVENT_PASSED, REASON_NONE, DIR_TO_POD);
	return TC_ACT_OK;
}

SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct settings *s = settings_get();
	struct packet p = {};
	struct pod_info *pod;
	int parsed;

	pod = bpf_map_lookup_elem(&pods, &ifindex);
	if (!pod) {
		event_emit(skb, &p, EVENT_DROPPED, REASON_NO_ENDPOINT, DIR_TO_POD);
		return TC_ACT_SHOT;
	}
	parsed = packet_parse(skb, &p);
	if (parsed == PARSE_ERROR)
		return drop(skb, &pod->addr, &p, REASON_PARSE, COUNT_DROP_PARSE_INGRESS, DIR_TO_POD);
	if (parsed == PARSE_NOT_IP || p.nd)
		return TC_ACT_OK;
	hostflow_note_peer(ifindex, &p);
	return pod_ingress(skb, s, pod, &p, ifindex);
}

/* from_peer (ingress of the VXLAN device in vxlan, of the underlay in
 * native): a packet from another node for a pod of this one gets the pod's
 * ingress policy and is delivered into it (fast path). Anything else, and
 * anything the fast path cannot take, goes on to the host as before. */
SEC("tc")
int from_peer(struct __sk_buff *skb)
{
	struct fastpath *f = fastpath_get();
	struct settings *s = settings_get();
	struct endpoint_info *ep;
	struct packet p = {};
	struct pod_info *pod;
	__u32 ifindex;
	int verdict;

	/* Only what is addressed to this node (a flooded frame for another
	 * node is not ours to deliver). */
	if (!f || skb->pkt_type != PACKET_HOST)
		return TC_ACT_OK;
	if (packet_parse(skb, &p) != PARSE_IP || p.nd)
		return TC_ACT_OK;
	ep = bpf_map_lookup_elem(&endpoints, &p.dst);
	if (!ep)
		return TC_ACT_OK;
	ifindex = ep->ifindex;
	pod = bpf_map_lookup_elem(&pods, &ifindex);
	if (!pod)
		return TC_ACT_OK;
	if ((ep->flags & ENDPOINT_F_HOST_FLOWS) && hostflow_translated_reply(&p))
		return TC_ACT_OK;
	verdict = pod_ingress(skb, s, pod, &p, ifindex);
	if (verdict != TC_ACT_OK)
		return verdict;
	/* The pod takes frames addressed to its MAC, from its gateway's. */
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), ep->mac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), f->gateway_mac, 6, 0) < 0)
		return TC_ACT_OK;
	return bpf_redirect_peer(ifindex, 0);
}

/* to_tunnel (egress of the node's VXLAN device): pods of other nodes. */
SEC("tc")
int to_tunnel(struct __sk_buff *skb)
{
	return tunnel_egress(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
