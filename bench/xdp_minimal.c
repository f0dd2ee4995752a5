/* Baseline for bench/xdp_bench.py: parse the same headers as the Weir fast path
 * (Ethernet, one VLAN tag, IPv4, the L4 ports), swap the MACs and transmit.
 * No maps. It pays for what the bench adds to the Weir program (bpf/weir_bench.h), so
 * that work is on both sides of a ratio: with WEIR_BENCH_NEW_FLOWS the same source-address
 * bump, with WEIR_BENCH_POP the rewind of an encapsulated frame (the same helper call and
 * Ethernet header write, moving the frame by 0 bytes: its own frame never grew). */
#include <linux/in.h>

#include "weir_parse.h"
#include "weir_encap.h"
#include "weir_bench.h"

int xdp_minimal(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = weir_parse_ipv4(data, data_end);
	struct ethhdr *eth = data;
	struct weir_ports *ports;
	u8 tmp[ETH_ALEN];

	if (!ip || ip->ihl < 5)
		return XDP_PASS;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	ports = (void *)ip + ip->ihl * 4;
	if ((void *)(ports + 1) > data_end)
		return XDP_PASS;
	if (ports->dst == 0)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
#ifdef WEIR_BENCH_POP
	weir_bench_pop(ctx, 0);
#endif
#ifdef WEIR_BENCH_NEW_FLOWS
	weir_bench_bump(ctx);
#endif
	return XDP_TX;
}
