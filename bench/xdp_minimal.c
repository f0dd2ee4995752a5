/* Baseline for bench/xdp_bench.py: parse the same headers as the Weir fast path
 * (Ethernet, one VLAN tag, IPv4, the L4 ports), swap the MACs and transmit.
 * No maps. With WEIR_BENCH_NEW_FLOWS it bumps the source address like the Weir
 * program does in that mode, so both pay for the same extra store. */
#include <linux/in.h>

#include "weir_parse.h"

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
#ifdef WEIR_BENCH_NEW_FLOWS
	ip->saddr = bpf_htonl(bpf_ntohl(ip->saddr) + 1);
#endif
	return XDP_TX;
}
