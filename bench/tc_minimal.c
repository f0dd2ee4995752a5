/* Baselines for bench/tc_bench.py: parse the same headers as the Weir backend node's ingress
 * program (Ethernet, outer IPv4, UDP to the encapsulation port, the Weir header, the inner
 * IPv4 and its ports) and let the packet through. tc_minimal_decap also takes the outer
 * headers off and, with the bench's rewind (weir_tc_bench.h), puts them back: the same
 * bench overhead as the Weir build pays. */
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>

#include "weir_parse.h"
#include "weir_encap.h"
#include "weir_tc_bench.h"

static __always_inline struct iphdr *parse(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = weir_parse_ipv4(data, data_end), *inner;
	struct weir_enc_hdr *wh;
	struct udphdr *udp;

	if (!ip || ip->protocol != IPPROTO_UDP || *(u8 *)ip != 0x45)
		return 0;
	udp = (void *)(ip + 1);
	wh = (void *)(udp + 1);
	inner = (void *)(wh + 1);
	if ((void *)(inner + 1) + sizeof(struct weir_ports) > data_end)
		return 0;
	if (udp->dest != bpf_htons(6093) || wh->version != WEIR_ENC_VERSION)
		return 0;
	return inner;
}

int tc_minimal(struct __sk_buff *skb)
{
	return parse(skb) ? TC_ACT_UNSPEC : TC_ACT_SHOT;
}

int tc_minimal_decap(struct __sk_buff *skb)
{
	struct weir_tc_saved saved;
	struct iphdr *inner = parse(skb);
	__be32 vip;
	__be16 vport;

	if (!inner)
		return TC_ACT_SHOT;
	vip = inner->daddr;
	vport = ((struct weir_ports *)(inner + 1))->dst;
	weir_tc_bench_save(skb, &saved);
	if (bpf_skb_adjust_room(skb, -(int)WEIR_ENC_LEN, BPF_ADJ_ROOM_MAC,
				(1ULL << 7) | BPF_F_ADJ_ROOM_FIXED_GSO))
		return TC_ACT_SHOT;
	weir_tc_bench_rewind(skb, &saved, vip, vport);
	return TC_ACT_UNSPEC;
}
