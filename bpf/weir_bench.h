/* Benchmark builds only (bench/xdp_bench.py, -DWEIR_BENCH): BPF_PROG_TEST_RUN runs every
 * repetition on the same buffer, so put the frame back the way it came after each run:
 * undo an encapsulation (the packet the bench sends is TCP: a UDP frame is our outer
 * header), and with WEIR_BENCH_NEW_FLOWS bump the source address so the next repetition
 * is a new flow. The work done here is counted in the figure measured; the baselines
 * (bench/xdp_minimal.c) pay the same: weir_bench_pop with 0 bytes, the same bump. */
#ifndef WEIR_BENCH_H
#define WEIR_BENCH_H

/* Take `len` bytes off the front of the frame and write an IPv4 Ethernet header there,
 * addressed to the frame's source MAC (the node's, which the fast path wrote). What it
 * costs does not depend on len (bpf_xdp_adjust_head moves a pointer). */
static __always_inline void weir_bench_pop(struct xdp_md *ctx, int len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	u8 dest[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return;
	__builtin_memcpy(dest, eth->h_source, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, len))
		return;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return;
	__builtin_memcpy(eth->h_dest, dest, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
}

/* The next repetition's client: one source address further. */
static __always_inline void weir_bench_bump(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > data_end)
		return;
	ip->saddr = bpf_htonl(bpf_ntohl(ip->saddr) + 1);
}

static __always_inline void weir_bench_rewind(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > data_end)
		return;
	if (ip->protocol == IPPROTO_UDP)
		weir_bench_pop(ctx, (int)WEIR_ENC_LEN);
#ifdef WEIR_BENCH_NEW_FLOWS
	weir_bench_bump(ctx);
#endif
}

#endif
