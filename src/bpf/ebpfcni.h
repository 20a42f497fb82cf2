/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Key and value layouts shared by every program and, through the
 * skeleton's generated types, by the Rust side (src/datapath/maps.rs). */
#ifndef EBPFCNI_H
#define EBPFCNI_H

/* One key type for both families: an IPv4 address is stored as the
 * IPv4-mapped IPv6 address ::ffff:a.b.c.d. Bytes are in network order. */
struct ip_key {
	__u8 addr[16];
};

/* Every constant the Rust side shares is an enum, not a #define: enums
 * reach the object's BTF (datapath.bpf.c references each one) and so the
 * skeleton's generated types, and Rust reads them from there. */

/* endpoints: pod address -> where the pod is. endpoint_info.flags. */
enum endpoint_flags {
	ENDPOINT_F_TCX = 0x1, /* attached through TCX */
	ENDPOINT_F_TC = 0x2,  /* attached as a clsact filter */
	/* Set by the datapath: this pod sent a flow that reached another pod
	 * of the node through the host (a Service, a hostPort): its replies
	 * must be looked up in hostflows before they may be redirected. */
	ENDPOINT_F_HOST_FLOWS = 0x4,
};

struct endpoint_info {
	__u32 ifindex; /* host-side veth of the pod */
	__u8 mac[6];   /* the pod's own MAC (inside its netns) */
	__u16 flags;
};

/* pods: host veth ifindex -> the pod behind it (anti-spoofing, counters). */
struct pod_info {
	struct ip_key addr; /* the pod's first address: its counters' key */
	__u8 mac[6];
	__u16 pad;
};

/* stats: per-CPU counters per pod address: what the pod sent, by source
 * address; drops, under the pod's first address, by direction: egress is
 * the pod's own traffic refused (from_pod; for policy, its egress policy
 * or a local destination's ingress policy), ingress is traffic to the pod
 * refused (to_pod, from_peer). Spoofing is only ever egress. */
struct traffic_stats {
	__u64 packets;    /* sent by the pod */
	__u64 bytes;
	__u64 redirected; /* past the host: bpf_redirect_peer to a pod of the node, or the fast path to another node's */
	__u64 passed;     /* handed to the bridge / host stack */
	__u64 drop_spoofed;
	__u64 drop_policy_egress;
	__u64 drop_policy_ingress;
	__u64 drop_parse_egress;
	__u64 drop_parse_ingress;
};

/* Identities (Cilium's model): what policy speaks of. A pod's address
 * and the node's own addresses map to an identity in the ipcache's
 * endpoint part; any other address to the identity of the longest rule
 * prefix containing it, in its CIDR part (IDENTITY_WORLD when none). An
 * enum, so the values reach Rust through the skeleton's types. */
enum identity_reserved {
	IDENTITY_ANY = 0,   /* wildcard, in policy keys only */
	IDENTITY_WORLD = 1, /* no ipcache entry */
	IDENTITY_HOST = 2,  /* an address of this node: exempt from NetworkPolicy isolation */
	IDENTITY_POD_MIN = 256,
	IDENTITY_CIDR_MIN = 0x1000000, /* pods below, CIDR prefixes from here */
};

/* The two parts of the ipcache: an exact address of a pod (or of the
 * node) never shares an entry with a rule's prefix, so no prefix can
 * replace a pod's identity. */
enum ipcache_kind {
	IPCACHE_ENDPOINT = 0,
	IPCACHE_CIDR = 1,
};

/* ipcache: LPM trie. prefixlen counts the IPCACHE_PREFIX_FIXED bits of
 * set+kind+pad, then the address bits (IPv4 addresses, stored IPv4-mapped:
 * IPCACHE_PREFIX_V4_MAPPED + prefix length). */
enum ipcache_prefix {
	IPCACHE_PREFIX_FIXED = 32,
	IPCACHE_PREFIX_V4_MAPPED = 96,
	IPCACHE_PREFIX_HOST = 32 + 128, /* one exact address */
};

struct ipcache_key {
	__u32 prefixlen;
	__u8 set;  /* the policy set (0/1) this entry belongs to */
	__u8 kind; /* enum ipcache_kind */
	__u8 pad[2];
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
};

/* policy: one entry allows or denies traffic between two identities.
 * EGRESS entries: subject = source, peer = destination.
 * INGRESS entries: subject = destination, peer = source. */
enum policy_dir {
	POLICY_EGRESS = 1,
	POLICY_INGRESS = 2,
};

enum verdict {
	VERDICT_NONE = 0,
	VERDICT_ALLOW = 1,
	VERDICT_DENY = 2,
};

/* policy_key.dir_set: the direction in the low bits, the set above. */
enum policy_dir_set {
	POLICY_DIR_MASK = 0xf,
	POLICY_SET_SHIFT = 4,
};

/* iprules: LPM trie. The first POLICY_PREFIX_FIXED bits (direction and
 * set, subject, peer) always match in full; the protocol and then the
 * destination port (network order) follow as a prefix: prefixlen
 * POLICY_PREFIX_FIXED matches every protocol and port, + 8 every port of
 * one protocol, + 8 + n the ports sharing their n high bits with dport (an
 * aligned block of 2^(16-n) ports). A range of ports is a few such blocks,
 * so one lookup decides whatever the range's size. */
enum policy_prefix {
	POLICY_PREFIX_FIXED = 96,
	POLICY_PREFIX_PROTO = 104,
	POLICY_PREFIX_MAX = 120,
};

struct policy_key {
	__u32 prefixlen;
	__u8 dir_set; /* direction | set << POLICY_SET_SHIFT */
	__u8 pad[3];
	__u32 subject;
	__u32 peer;   /* IDENTITY_ANY: every peer */
	__u8 proto;
	__u8 dport[2]; /* network order */
	__u8 pad2;
};

struct policy_value {
	/* What the datapath applies: DENY when this entry or a shorter prefix
	 * of the same direction, subject and peer denies (explicit deny wins
	 * over allow, whichever prefix the lookup returns). */
	__u8 verdict;
	__u8 own; /* this entry's own verdict, for listings and rule edits */
	__u8 pad[2];
	__u32 rule; /* which rule made it, for listings */
};

/* identity_flags: per set, which pod identities a policy isolates. */
enum isolation {
	ISOLATED_INGRESS = 0x1,
	ISOLATED_EGRESS = 0x2,
};

struct identity_key {
	__u32 identity;
	__u32 set;
};

/* settings: one entry. settings.flags. */
enum settings_flags {
	SETTINGS_F_TRACE_FLOWS = 0x1, /* emit flow events, not only drops */
	SETTINGS_F_POLICY = 0x2,      /* some policy entry or isolation exists */
	SETTINGS_F_HAS_DENY = 0x4,    /* some explicit deny entry exists */
};

struct settings {
	__u32 active_set;
	__u32 generation; /* bumped on every policy change */
	__u32 default_deny;
	__u32 flags;
};

/* conntrack and ct_new: allowed flows, so their later packets and replies
 * pass without rules. A flow starts in ct_new (unestablished: no reply
 * seen yet), where each pod may hold at most CT_NEW_PER_POD of its own
 * per CT_TIMEOUT_NEW; its first reply moves it to conntrack
 * (established). A flood of new flows therefore only ever evicts new
 * flows, never an established one. Entries expire by protocol and state,
 * checked on lookup against last_seen_ns. */
struct ct_key {
	struct ip_key src;
	struct ip_key dst;
	__u16 sport; /* ICMP: echo id in sport (request) or dport (reply) */
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

enum ct_flags {
	CT_F_REPLIED = 0x1, /* a reply was seen: established */
	CT_F_CLOSING = 0x2, /* TCP FIN or RST seen */
};

/* Seconds an entry lives after its last packet. */
#define CT_TIMEOUT_NEW 10          /* no reply yet (TCP SYN, UDP, ICMP) */
#define CT_TIMEOUT_CLOSING 10      /* TCP after FIN or RST */
#define CT_TIMEOUT_DATAGRAM 60     /* UDP, ICMP and others with replies */
#define CT_TIMEOUT_ESTABLISHED 21600 /* TCP with replies: 6 hours */
/* Unestablished flows one pod (host veth) may open per CT_TIMEOUT_NEW. */
#define CT_NEW_PER_POD 2048

struct ct_value {
	__u64 last_seen_ns;
	__u32 generation; /* policy generation that allowed it */
	__u8 flags;       /* CT_F_* */
	__u8 pad[3];
};

/* ct_new values: the flow and the pod (host veth) whose budget it took. */
struct ct_new_value {
	struct ct_value ct;
	__u32 owner;
	__u32 pad;
};

/* ct_budget: per host veth, the unestablished flows it opened in the
 * current window of CT_TIMEOUT_NEW. */
struct ct_budget {
	__u64 window_start_ns;
	__u32 count;
	__u32 pad;
};

/* frags: LRU of the fragmented datagrams whose first fragment policy
 * allowed (Cilium's approach): their later fragments, which carry no
 * ports, pass; any other later fragment is dropped. An entry lives
 * FRAG_TIMEOUT seconds after the datagram's last fragment. */
#define FRAG_TIMEOUT 10

struct frag_key {
	struct ip_key src;
	struct ip_key dst;
	__u32 id; /* IPv4 ID (16 bits) or IPv6 fragment identification */
	__u8 proto;
	__u8 pad[3];
};

/* hostflows: LRU of flows from a pod of this node that entered another
 * pod through the host's stack (so the host may have translated them),
 * keyed as they arrived (struct ct_key). Their replies go back through the
 * host, which reverses its translation, instead of straight into the pod.
 * An entry outliving its flow only sends a reused tuple the slow way. */
struct hostflow_value {
	__u32 ifindex; /* host veth it arrived on */
	__u32 pad;
};

/* events: ring buffer records. event.reason: why a packet was dropped
 * (REASON_NONE for the flows that pass). Values are part of the ABI:
 * append before __REASON_MAX, never renumber. */
enum event_reason {
	REASON_NONE = 0,
	REASON_SPOOFED_IP = 1,
	REASON_SPOOFED_MAC = 2,
	REASON_SPOOFED_ARP = 3,
	REASON_SPOOFED_ND = 4,
	REASON_POLICY = 5,
	REASON_NO_ENDPOINT = 6, /* no pod behind the host veth (an event only: no pod to count under) */
	REASON_PARSE = 7,
	REASON_ETHERTYPE = 8,      /* neither IPv4, IPv6 nor ARP, or VLAN tagged */
	REASON_ROUTER_MESSAGE = 9, /* a router advertisement or redirect */
	REASON_CT_FULL = 10,       /* a new flow over its pod's conntrack budget */
	__REASON_MAX,              /* one past the last reason */
};

/* Drop events are rate limited per source (a pod's host veth for what
 * it sends, the source address for what enters a pod): a flooding pod
 * cannot crowd the others' events out of the ring buffer. A token bucket
 * (GCRA: the next event's theoretical arrival time, in event_limit) of
 * EVENT_RATE_PER_SEC with bursts of EVENT_BURST. */
#define EVENT_RATE_PER_SEC 5
#define EVENT_BURST 10

struct event_source {
	struct ip_key src; /* zero for what a pod sends */
	__u32 ifindex;     /* zero for what enters a pod */
	__u32 pad;
};

/* events_lost: per-CPU counts of the events never delivered. */
struct event_loss {
	__u64 ring_full;    /* the ring buffer had no room */
	__u64 rate_limited; /* over the source's rate */
};

/* event.verdict */
enum event_verdict {
	EVENT_PASSED = 0,
	EVENT_REDIRECTED = 1,
	EVENT_DROPPED = 2,
	__EVENT_VERDICT_MAX,
};

/* event.dir */
enum event_dir {
	DIR_FROM_POD = 1,
	DIR_TO_POD = 2,
	__DIR_MAX,
};

struct event {
	__u64 ts_ns;
	struct ip_key src;
	struct ip_key dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 verdict; /* enum event_verdict */
	__u8 reason;  /* enum event_reason */
	__u8 dir;     /* enum event_dir */
	__u32 ifindex;
	__u32 pad;
};

#endif /* EBPFCNI_H */
