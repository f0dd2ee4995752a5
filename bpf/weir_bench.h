/* Benchmark builds only (bench/xdp_bench.py, -DWEIR_BENCH): BPF_PROG_TEST_RUN runs every
 * repetition on the same buffer, so put the frame back the way it came after each run:
 * undo an encapsulation (the packet the bench sends is TCP: a UDP frame is our outer
 * header), and with WEIR_BENCH_NEW_FLOWS bump the source address so the next repetition
 * is a new flow. The work done here is counted in the figure measured. */
#ifndef WEIR_BENCH_H
#define WEIR_BENCH_H

static __always_inline void weir_bench_rewind(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	u8 dest[ETH_ALEN];

	if ((void *)(ip + 1) > data_end)
		return;
	if (ip->protocol == IPPROTO_UDP) {
		/* The frame arrived for this node: its MAC is the source we wrote. */
		__builtin_memcpy(dest, eth->h_source, ETH_ALEN);
		if (bpf_xdp_adjust_head(ctx, (int)WEIR_ENC_LEN))
			return;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		eth = data;
		ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > data_end)
			return;
		__builtin_memcpy(eth->h_dest, dest, ETH_ALEN);
		eth->h_proto = bpf_htons(ETH_P_IP);
	}
#ifdef WEIR_BENCH_NEW_FLOWS
	ip->saddr = bpf_htonl(bpf_ntohl(ip->saddr) + 1);
#endif
}

#endif
