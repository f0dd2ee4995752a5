/* Benchmark builds only (bench/tc_bench.py, -DWEIR_BENCH): BPF_PROG_TEST_RUN runs every
 * repetition on the same skb, so put the packet back the way it came after each run: the
 * translation undone (checksums left as they are: nothing verifies them in the bench) and
 * the outer headers pushed back. The minimal baseline does the same, so both pay for it.
 * Needs weir_encap.h and weir_parse.h. */
#ifndef WEIR_TC_BENCH_H
#define WEIR_TC_BENCH_H

struct weir_tc_saved {
	u8 outer[WEIR_ENC_LEN];
};

static __always_inline void weir_tc_bench_save(struct __sk_buff *skb, struct weir_tc_saved *s)
{
	bpf_skb_load_bytes(skb, ETH_HLEN, s->outer, WEIR_ENC_LEN);
}

static __always_inline void weir_tc_bench_rewind(struct __sk_buff *skb,
						 const struct weir_tc_saved *s, __be32 vip,
						 __be16 vport)
{
	const u32 l4 = ETH_HLEN + sizeof(struct iphdr);

	bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), &vip, sizeof(vip), 0);
	bpf_skb_store_bytes(skb, l4 + offsetof(struct weir_ports, dst), &vport, sizeof(vport), 0);
	bpf_skb_adjust_room(skb, WEIR_ENC_LEN, BPF_ADJ_ROOM_MAC, 0);
	bpf_skb_store_bytes(skb, ETH_HLEN, s->outer, WEIR_ENC_LEN, 0);
}

#endif
