/* Weir backend-node maps: what the tc programs (weir_tc.c) read, pinned beside the XDP
 * program's under WEIR_PIN_DIR (the same bcc BPF_TABLE_PINNED adoption: a restarted agent
 * keeps them, and with them the flows being translated back).
 *
 * The Python mirror is weir.nodeagent.dataplane.layout (checked field by field by
 * tests/dataplane/test_layout.py). Addresses and ports are network order (_be), as in the
 * packet. These are the IPv4 maps; IPv6 gets its own set with 16-byte addresses, so the
 * IPv4 path keeps its key sizes.
 *
 * NAT_LAYOUT_VERSION changes whenever a layout below changes meaning.
 */
#ifndef WEIR_NAT_MAPS_H
#define WEIR_NAT_MAPS_H

#include "weir_counters.h"

#define WEIR_PIN(name) WEIR_PIN_DIR "/" name
#define NAT_LAYOUT_VERSION 1

/* --- nat_config: this node, one element ------------------------------------------------
 * node_be: the address encapsulated packets are sent to (outer destination);
 * port_be: the encapsulation's UDP port; mss: the largest MSS a pod may announce to a
 * client (underlay MTU - encapsulation - IPv4 - TCP), 0 = do not clamp. node_be 0: the
 * backend role is off and every packet passes untouched. */
struct nat_config {
	__be32 node_be;
	__be16 port_be;
	u16 mss;
	u32 layout;
	u32 pad;
};

/* --- lb_nodes: the load-balancer nodes' addresses ------------------------------------
 * Encapsulated packets are accepted only from these (the controller names them). */

/* --- local_backends: (VIP, port, protocol, pod, pod port) that may be translated -------
 * One element per endpoint of a Weir Service on this node: the only translations the
 * encapsulation can ask for, so it cannot reach any other pod or port. */
struct nat_backend_key {
	__be32 vip_be;
	__be32 addr_be;  /* the pod */
	__be16 vport_be; /* the service port */
	__be16 port_be;  /* the pod's port (targetPort) */
	u8 proto;
	u8 pad[3];
};

struct nat_backend {
	u32 index; /* the endpoint's counters in be_nat_stats */
	u32 pad;
};

/* --- nat_flows: flows translated to a local pod, by their reply's view ----------------
 * LRU hash (flows are forgotten least recently used first; every packet refreshes its
 * flow). The reply pod:port -> client:port goes back out as VIP:port -> client:port, and
 * only a flow found here is translated: the same pod port also answers traffic that never
 * came through Weir (a ClusterIP client, another pod), which must leave as it is. Also
 * lets packets of an established flow in after its endpoint left local_backends (the load
 * balancers keep such flows on their backend until they end). */
struct nat_vip {
	__be32 vip_be;
	__be16 vport_be;
	u16 pad;
};

struct nat_flow_key {
	__be32 addr_be;   /* the pod */
	__be32 client_be;
	__be16 port_be;   /* the pod's port */
	__be16 cport_be;
	u8 proto;
	u8 pad[3];
};

/* --- nat_frags: the translated address of a datagram's later fragments -----------------
 * LRU hash. Later fragments carry no ports: the first fragment's translation records, by
 * (source, destination, IP ID, protocol) as the fragment carries them, the address it
 * got, so the others get it too (in: VIP -> pod; out: pod -> VIP). */
struct nat_frag_key {
	__be32 saddr_be;
	__be32 daddr_be;
	__be16 id_be;
	u8 proto;
	u8 pad;
};

/* --- counters: per-CPU arrays of struct counters (weir_counters.h) ---------------------
 * nat_events and nat_drops by reason; be_nat_stats per local_backends index. */
enum nat_event {
	NAT_DECAP = 0,     /* encapsulated packets decapsulated and translated to a pod */
	NAT_REVERSE = 1,   /* replies translated back to VIP:port */
	NAT_MSS = 2,       /* SYN-ACKs whose MSS was clamped */
	NAT_EVENTS = 3,
};

enum nat_drop {
	NAT_DROP_NOT_LB = 0,      /* encapsulated, but not from a load-balancer node */
	NAT_DROP_HEADER = 1,      /* bad Weir header, inner packet or lengths */
	NAT_DROP_UNKNOWN = 2,     /* no such local translation (VIP:port -> pod:port) */
	NAT_DROP_DECAP = 3,       /* the kernel refused to remove the outer headers */
	NAT_DROP_FRAGMENT = 4,    /* a later fragment whose first fragment was not seen */
	NAT_DROPS = 5,
};

_Static_assert(sizeof(struct nat_config) == 16, "nat_config layout");
_Static_assert(sizeof(struct nat_backend_key) == 16, "nat_backend_key layout");
_Static_assert(sizeof(struct nat_vip) == 8, "nat_vip layout");
_Static_assert(sizeof(struct nat_flow_key) == 16, "nat_flow_key layout");
_Static_assert(sizeof(struct nat_frag_key) == 12, "nat_frag_key layout");

BPF_TABLE_PINNED("array", u32, struct nat_config, nat_config, 1, WEIR_PIN("nat_config"));
BPF_TABLE_PINNED("hash", __be32, u32, lb_nodes, WEIR_MAX_LB_NODES, WEIR_PIN("lb_nodes"));
BPF_TABLE_PINNED("hash", struct nat_backend_key, struct nat_backend, local_backends,
		 WEIR_MAX_LOCAL_BACKENDS, WEIR_PIN("local_backends"));
BPF_TABLE_PINNED("lru_hash", struct nat_flow_key, struct nat_vip, nat_flows, WEIR_NAT_FLOWS,
		 WEIR_PIN("nat_flows"));
BPF_TABLE_PINNED("lru_hash", struct nat_frag_key, __be32, nat_frags, WEIR_NAT_FRAGS,
		 WEIR_PIN("nat_frags"));
BPF_TABLE_PINNED("percpu_array", u32, struct counters, nat_events, NAT_EVENTS,
		 WEIR_PIN("nat_events"));
BPF_TABLE_PINNED("percpu_array", u32, struct counters, nat_drops, NAT_DROPS,
		 WEIR_PIN("nat_drops"));
BPF_TABLE_PINNED("percpu_array", u32, struct counters, be_nat_stats, WEIR_MAX_LOCAL_BACKENDS,
		 WEIR_PIN("be_nat_stats"));

#endif
