/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Key and value layouts shared by every program and, through the
 * skeleton's generated types, by the Rust side. Change them only together
 * with the maps' pinned versions (see src/datapath/pins.rs). */
#ifndef EBPFCNI_H
#define EBPFCNI_H

/* One key type for both families: an IPv4 address is stored as the
 * IPv4-mapped IPv6 address ::ffff:a.b.c.d. Bytes are in network order. */
struct ip_key {
	__u8 addr[16];
};

/* endpoint_info.flags: how the program is attached to the host veth. */
#define ENDPOINT_F_TCX 0x1
#define ENDPOINT_F_TC 0x2

struct endpoint_info {
	__u32 ifindex; /* host-side veth of the pod */
	__u8 mac[6];   /* the pod's own MAC (inside its netns) */
	__u16 flags;
};

/* Per-CPU counters per source address (a pod address of this node). */
struct traffic_stats {
	__u64 packets;
	__u64 bytes;
	__u64 redirected; /* delivered with bpf_redirect_peer */
	__u64 passed;     /* handed to the bridge / host stack */
};

/* Policy entry: source and destination pod address, L4 protocol and
 * destination port (0 = any). */
struct iprule_key {
	struct ip_key src;
	struct ip_key dst;
	__u16 dport; /* host order */
	__u8 proto;
	__u8 pad;
};

#define IPRULE_ALLOW 1
#define IPRULE_DENY 2

struct iprule_value {
	__u32 verdict;
};

#endif /* EBPFCNI_H */
