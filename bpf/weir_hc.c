/* Weir's health checks along the forwarding path: tc egress on a load-balancer node's uplink.
 *
 * The agent's checks (nodeagent/health/) are ordinary sockets to VIP:port, each marked with
 * SO_MARK = WEIR_HC_MARK_BASE | path index. The kernel routes them out of the uplink as
 * any packet to the VIP; this program sends each one where the XDP program would send a
 * client's packet for that backend (docs/HEALTH.md):
 *   L2 DSR: destination MAC := the backend's; the packet stays VIP:port, so a backend that
 *     lost the VIP on its loopback does not answer, as for real traffic;
 *   encapsulation: wrapped in the Weir encapsulation (bpf/weir_encap.h) toward the
 *     backend's node, the pod and its port in the Weir header, destination MAC := the next
 *     hop toward the node; the node's tc programs translate it as they do a client's.
 * Replies come straight back from VIP:port to this node's address, like a client's.
 *
 * Verdicts: TC_ACT_UNSPEC for every unmarked packet (the next filter runs); a marked packet
 * without a path is dropped and counted (a check must never reach the VIP's routers).
 *
 * Compiled by bcc (weir.nodeagent.dataplane.hcpath) with -D WEIR_HC_PATHS.
 */
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>

#include "weir_counters.h"
#include "weir_encap.h"

#define WEIR_HC_MARK_BASE 0x57480000u
#define WEIR_HC_MARK_MASK 0xffff0000u

/* One check's path. Written whole by the agent before a socket with its mark exists. */
struct hc_path {
	u8 mac[6];	  /* the backend's MAC (L2) or the next hop toward its node (encap) */
	u8 encap;	  /* 1: encapsulate toward node_be */
	u8 pad;
	__be32 src_be;	  /* encap: this node's address, the outer source */
	__be32 node_be;	  /* encap: the backend's node, the outer destination */
	__be32 addr_be;	  /* encap: the pod */
	__be16 port_be;	  /* encap: the pod's port */
	__be16 udp_be;	  /* encap: the encapsulation's UDP port */
};

_Static_assert(sizeof(struct hc_path) == 24, "hc_path layout");

enum hc_event {
	HC_L2,		/* sent to the backend's MAC */
	HC_ENCAP,	/* encapsulated toward the backend's node */
	HC_NO_PATH,	/* marked, but the path index is empty or out of range: dropped */
	HC_BAD,		/* not an option-less IPv4 packet, or the encapsulation failed: dropped */
	HC_EVENTS,
};

BPF_ARRAY(hc_paths, struct hc_path, WEIR_HC_PATHS);
BPF_PERCPU_ARRAY(hc_stats, struct counters, HC_EVENTS);

static __always_inline int hc_count(u32 event, u64 bytes, int verdict)
{
	weir_count(hc_stats.lookup(&event), bytes, 0);
	return verdict;
}

static __always_inline int hc_encap(struct __sk_buff *skb, const struct hc_path *p)
{
	struct {
		struct iphdr ip;
		struct udphdr udp;
		struct weir_enc_hdr wh;
	} __attribute__((packed)) h = {};
	struct iphdr inner;
	u32 len;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &inner, sizeof(inner)) || inner.ihl != 5 ||
	    inner.version != 4)
		return -1;
	len = bpf_ntohs(inner.tot_len);
	if (bpf_skb_adjust_room(skb, WEIR_ENC_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP))
		return -1;
	*(u8 *)&h.ip = 0x45;
	h.ip.tos = inner.tos;
	h.ip.tot_len = bpf_htons(len + WEIR_ENC_LEN);
	h.ip.id = inner.id;
	h.ip.frag_off = inner.frag_off & bpf_htons(WEIR_IP_DF);
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_UDP;
	h.ip.saddr = p->src_be;
	h.ip.daddr = p->node_be;
	h.ip.check = weir_ipv4_csum(&h.ip);
	/* One flow per check socket: its source port gives the fabric its entropy. */
	h.udp.source = bpf_htons(WEIR_ENC_SPORT_BASE | (skb->hash & WEIR_ENC_SPORT_MASK));
	h.udp.dest = p->udp_be;
	h.udp.len = bpf_htons(len + sizeof(h.udp) + sizeof(h.wh));
	h.wh.version = WEIR_ENC_VERSION;
	h.wh.port_be = p->port_be;
	h.wh.addr_be = p->addr_be;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0);
}

int weir_hc_egress(struct __sk_buff *skb)
{
	u32 mark = skb->mark;
	struct hc_path *p;
	u32 index;
	int event = HC_L2;

	if ((mark & WEIR_HC_MARK_MASK) != WEIR_HC_MARK_BASE)
		return TC_ACT_UNSPEC;
	index = mark & ~WEIR_HC_MARK_MASK;
	p = hc_paths.lookup(&index);
	if (!p || !(p->mac[0] | p->mac[1] | p->mac[2] | p->mac[3] | p->mac[4] | p->mac[5]))
		return hc_count(HC_NO_PATH, skb->len, TC_ACT_SHOT);
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return hc_count(HC_BAD, skb->len, TC_ACT_SHOT);
	if (p->encap) {
		if (hc_encap(skb, p))
			return hc_count(HC_BAD, skb->len, TC_ACT_SHOT);
		event = HC_ENCAP;
	}
	if (bpf_skb_store_bytes(skb, 0, p->mac, ETH_ALEN, 0))
		return hc_count(HC_BAD, skb->len, TC_ACT_SHOT);
	return hc_count(event, skb->len, TC_ACT_OK);
}
