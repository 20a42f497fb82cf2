/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing: addresses, L4 ports and the ICMP details policy and
 * anti-spoofing need. Every access is bounds checked first. */
#ifndef EBPFCNI_PACKET_H
#define EBPFCNI_PACKET_H

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_ARP 0x0806
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_SCTP_ 132
#define ICMP_ECHOREPLY_ 0
#define ICMP_ECHO_ 8
#define ICMPV6_ECHO_REQUEST_ 128
#define ICMPV6_ECHO_REPLY_ 129
#define ICMP_REDIRECT_ 5
#define NDISC_ROUTER_SOLICITATION_ 133
#define NDISC_ROUTER_ADVERTISEMENT_ 134
#define NDISC_NEIGHBOUR_ADVERTISEMENT_ 136
#define NDISC_REDIRECT_ 137
#define MLD_QUERY_ 130
#define MLD_REPORT_ 131
#define MLD_DONE_ 132
#define MLD2_REPORT_ 143

enum parse_result {
	PARSE_NOT_IP = 0, /* ARP or another L2 protocol */
	PARSE_IP = 1,
	PARSE_ERROR = -1, /* truncated or malformed */
};

struct packet {
	struct ip_key src;
	struct ip_key dst;
	__u16 sport; /* host order */
	__u16 dport;
	__u8 proto;
	__u8 family; /* 4 or 6 */
	__u8 nd;     /* ICMPv6 neighbour discovery (types 133-137), or multicast
		      * listener messages (130-132, 143) to a multicast group */
	__u8 has_na_target;
	struct ip_key na_target; /* neighbour advertisement's target */
	__u8 router_message;     /* a router advertisement or an ICMP redirect */
	__u8 tcp_flags;
	__u8 frag;       /* part of a fragmented datagram */
	__u8 later_frag; /* a fragment after the first: no L4 header */
	__u8 icmp_error; /* an ICMP/ICMPv6 error quoting the packet below */
	__u32 frag_id;   /* IPv4 ID or IPv6 fragment identification */
	/* The quoted packet's tuple, as its sender sent it (proto 0: none). */
	struct ip_key inner_src;
	struct ip_key inner_dst;
	__u16 inner_sport;
	__u16 inner_dport;
	__u8 inner_proto;
};

/* ICMP errors that quote the packet they are about. */
#define ICMP_DEST_UNREACH_ 3
#define ICMP_TIME_EXCEEDED_ 11
#define ICMP_PARAMETERPROB_ 12
#define ICMPV6_DEST_UNREACH_ 1
#define ICMPV6_PKT_TOOBIG_ 2
#define ICMPV6_TIME_EXCEED_ 3
#define ICMPV6_PARAMPROB_ 4

#define TCP_FIN_ 0x01
#define TCP_RST_ 0x04

/* IPv6 extension headers walked to find the real L4 header: hop-by-hop,
 * routing, fragment, destination options, authentication. A chain longer
 * than this is refused rather than guessed at. */
#define IPV6_EXT_MAX 6
#define IPV6_EXT_HOP 0
#define IPV6_EXT_ROUTING 43
#define IPV6_EXT_FRAGMENT 44
#define IPV6_EXT_AUTH 51
#define IPV6_EXT_DSTOPTS 60
/* Where the L4 header may start at the latest. */
#define L4_OFFSET_MAX 1024

static __always_inline void ip_key_set_v4(struct ip_key *key, __be32 addr)
{
	__builtin_memset(key->addr, 0, 10);
	key->addr[10] = 0xff;
	key->addr[11] = 0xff;
	__builtin_memcpy(&key->addr[12], &addr, 4);
}

static __always_inline int ip_key_is_v4(const struct ip_key *key)
{
	return key->addr[10] == 0xff && key->addr[11] == 0xff && !key->addr[0] && !key->addr[1] &&
	       !key->addr[2] && !key->addr[3] && !key->addr[4] && !key->addr[5] && !key->addr[6] &&
	       !key->addr[7] && !key->addr[8] && !key->addr[9];
}

/* The unspecified address: the source of duplicate address detection
 * and of multicast listener reports before a pod has an address. */
/* IPv4 224.0.0.0/4 and 255.255.255.255, IPv6 ff00::/8: a segment's group
 * and broadcast traffic, addressed to no one in particular. */
static __always_inline int ip_key_is_group(const struct ip_key *key)
{
	if (ip_key_is_v4(key))
		return (key->addr[12] & 0xf0) == 0xe0 ||
		       (key->addr[12] == 0xff && key->addr[13] == 0xff && key->addr[14] == 0xff && key->addr[15] == 0xff);
	return key->addr[0] == 0xff;
}

static __always_inline int ip_key_is_any(const struct ip_key *key)
{
	for (int i = 0; i < 16; i++)
		if (key->addr[i])
			return 0;
	return 1;
}

static __always_inline int packet_parse_l4(void *l4, void *data_end, struct packet *p)
{
	if (p->proto == IPPROTO_TCP_ || p->proto == IPPROTO_UDP_ || p->proto == IPPROTO_SCTP_) {
		__be16 *ports = l4;

		if ((void *)(ports + 2) > data_end)
			return PARSE_ERROR;
		p->sport = bpf_ntohs(ports[0]);
		p->dport = bpf_ntohs(ports[1]);
		if (p->proto == IPPROTO_TCP_) {
			__u8 *tcp = l4;

			if ((void *)(tcp + 14) > data_end)
				return PARSE_ERROR;
			p->tcp_flags = tcp[13];
		}
	} else if (p->proto == IPPROTO_ICMP_ || p->proto == IPPROTO_ICMPV6_) {
		__u8 *icmp = l4;
		__u16 id;

		if ((void *)(icmp + 8) > data_end)
			return PARSE_ERROR;
		id = ((__u16)icmp[4] << 8) | icmp[5];
		/* Echo request and reply share the id: as source "port" of the
		 * request and destination "port" of the reply, so a reply's
		 * tuple reversed is its request's. */
		if (icmp[0] == ICMP_ECHO_ && p->proto == IPPROTO_ICMP_)
			p->sport = id;
		else if (icmp[0] == ICMP_ECHOREPLY_ && p->proto == IPPROTO_ICMP_)
			p->dport = id;
		else if (icmp[0] == ICMPV6_ECHO_REQUEST_ && p->proto == IPPROTO_ICMPV6_)
			p->sport = id;
		else if (icmp[0] == ICMPV6_ECHO_REPLY_ && p->proto == IPPROTO_ICMPV6_)
			p->dport = id;
		if ((p->proto == IPPROTO_ICMP_ && (icmp[0] == ICMP_DEST_UNREACH_ || icmp[0] == ICMP_TIME_EXCEEDED_ ||
						    icmp[0] == ICMP_PARAMETERPROB_)) ||
		    (p->proto == IPPROTO_ICMPV6_ && icmp[0] >= ICMPV6_DEST_UNREACH_ && icmp[0] <= ICMPV6_PARAMPROB_))
			p->icmp_error = 1;
		if ((p->proto == IPPROTO_ICMPV6_ &&
		     (icmp[0] == NDISC_ROUTER_ADVERTISEMENT_ || icmp[0] == NDISC_REDIRECT_)) ||
		    (p->proto == IPPROTO_ICMP_ && icmp[0] == ICMP_REDIRECT_))
			p->router_message = 1;
		if (p->proto == IPPROTO_ICMPV6_ && p->dst.addr[0] == 0xff &&
		    ((icmp[0] >= MLD_QUERY_ && icmp[0] <= MLD_DONE_) || icmp[0] == MLD2_REPORT_))
			p->nd = 1;
		if (p->proto == IPPROTO_ICMPV6_ && icmp[0] >= NDISC_ROUTER_SOLICITATION_ &&
		    icmp[0] <= NDISC_REDIRECT_) {
			p->nd = 1;
			if (icmp[0] == NDISC_NEIGHBOUR_ADVERTISEMENT_) {
				if ((void *)(icmp + 24) > data_end)
					return PARSE_ERROR;
				__builtin_memcpy(p->na_target.addr, icmp + 8, 16);
				p->has_na_target = 1;
			}
		}
	}
	return PARSE_IP;
}

static __always_inline int ipv6_is_ext(__u8 nh)
{
	return nh == IPV6_EXT_HOP || nh == IPV6_EXT_ROUTING || nh == IPV6_EXT_FRAGMENT || nh == IPV6_EXT_AUTH ||
	       nh == IPV6_EXT_DSTOPTS;
}

/* Walks the extension headers after the IPv6 header; sets p->proto to the
 * real upper-layer protocol and returns its offset, 0 for a later fragment
 * (no L4 header), or -1 for a truncated or over-long chain. */
static __always_inline int ipv6_skip_ext(struct __sk_buff *skb, __u8 nh, struct packet *p)
{
	__u32 off = sizeof(struct ethhdr) + sizeof(struct ipv6hdr);

#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		__u8 h[8];

		if (!ipv6_is_ext(nh))
			break;
		/* Every extension header is at least 8 bytes long. */
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return -1;
		if (nh == IPV6_EXT_FRAGMENT) {
			/* Bytes 2-3: offset (13 bits) and flags; 4-7: the ID. */
			nh = h[0];
			off += 8;
			p->frag = 1;
			__builtin_memcpy(&p->frag_id, &h[4], 4);
			if (((h[2] << 8) | h[3]) & 0xfff8) {
				p->later_frag = 1;
				p->proto = nh;
				return 0;
			}
			continue;
		}
		off += nh == IPV6_EXT_AUTH ? ((__u32)h[1] + 2) * 4 : ((__u32)h[1] + 1) * 8;
		nh = h[0];
	}
	if (ipv6_is_ext(nh) || off > L4_OFFSET_MAX)
		return -1;
	p->proto = nh;
	return off;
}

/* The packet an ICMP error at offset `off` quotes (its IP header and the
 * start of its L4 header): inner_* stay zero when it is cut short. The
 * quoted IPv6 packet's extension headers are not walked. */
static __always_inline void icmp_error_parse(struct __sk_buff *skb, __u32 off, struct packet *p)
{
	__u8 l4[6];
	__u8 proto;

	off += 8; /* the ICMP header */
	if (p->family == 4) {
		__u8 h[20];
		__be32 a;

		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return;
		proto = h[9];
		__builtin_memcpy(&a, &h[12], 4);
		ip_key_set_v4(&p->inner_src, a);
		__builtin_memcpy(&a, &h[16], 4);
		ip_key_set_v4(&p->inner_dst, a);
		off += (h[0] & 0xf) * 4;
	} else {
		if (bpf_skb_load_bytes(skb, off + 6, &proto, 1) < 0 ||
		    bpf_skb_load_bytes(skb, off + 8, p->inner_src.addr, 16) < 0 ||
		    bpf_skb_load_bytes(skb, off + 24, p->inner_dst.addr, 16) < 0)
			return;
		off += 40;
	}
	if (bpf_skb_load_bytes(skb, off, l4, sizeof(l4)) < 0)
		return;
	if (proto == IPPROTO_TCP_ || proto == IPPROTO_UDP_ || proto == IPPROTO_SCTP_) {
		p->inner_sport = ((__u16)l4[0] << 8) | l4[1];
		p->inner_dport = ((__u16)l4[2] << 8) | l4[3];
	} else if ((proto == IPPROTO_ICMP_ && l4[0] == ICMP_ECHO_) ||
		   (proto == IPPROTO_ICMPV6_ && l4[0] == ICMPV6_ECHO_REQUEST_)) {
		p->inner_sport = ((__u16)l4[4] << 8) | l4[5];
	} else if ((proto == IPPROTO_ICMP_ && l4[0] == ICMP_ECHOREPLY_) ||
		   (proto == IPPROTO_ICMPV6_ && l4[0] == ICMPV6_ECHO_REPLY_)) {
		p->inner_dport = ((__u16)l4[4] << 8) | l4[5];
	} else {
		return;
	}
	p->inner_proto = proto;
}

/* Fills p from an Ethernet frame. */
static __always_inline int packet_parse(struct __sk_buff *skb, struct packet *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	int off;

	if ((void *)(eth + 1) > data_end)
		return PARSE_ERROR;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			return PARSE_ERROR;
		ip_key_set_v4(&p->src, ip->saddr);
		ip_key_set_v4(&p->dst, ip->daddr);
		p->family = 4;
		p->proto = ip->protocol;
		if (ip->frag_off & bpf_htons(0x3fff)) { /* MF or an offset */
			p->frag = 1;
			p->frag_id = ip->id;
		}
		/* Later fragments carry no L4 header. */
		if (ip->frag_off & bpf_htons(0x1fff)) {
			p->later_frag = 1;
			return PARSE_IP;
		}
		off = sizeof(struct ethhdr) + ip->ihl * 4;
		if (packet_parse_l4((void *)ip + ip->ihl * 4, data_end, p) == PARSE_ERROR)
			return PARSE_ERROR;
		if (p->icmp_error)
			icmp_error_parse(skb, off, p);
		return PARSE_IP;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return PARSE_ERROR;
		__builtin_memcpy(p->src.addr, &ip6->saddr, 16);
		__builtin_memcpy(p->dst.addr, &ip6->daddr, 16);
		p->family = 6;
		off = ipv6_skip_ext(skb, ip6->nexthdr, p);
		if (off < 0)
			return PARSE_ERROR;
		if (off == 0)
			return PARSE_IP;
		if (packet_parse_l4(data + (off & (L4_OFFSET_MAX * 2 - 1)), data_end, p) == PARSE_ERROR)
			return PARSE_ERROR;
		if (p->icmp_error)
			icmp_error_parse(skb, off, p);
		return PARSE_IP;
	}
	return PARSE_NOT_IP;
}

#endif
