/* A remote backend's half of a health check, at the least cost, for bench/health_bench.py:
 * XDP on the far end of the checker's veth pair answers every TCP SYN with a SYN-ACK
 * (addresses, ports and MACs swapped, ack = seq + 1, XDP_TX) and drops every other TCP
 * packet (the checker's ACK and RST), so no listener socket exists anywhere and the
 * checker's namespace sees exactly the packets a remote backend would send it. Anything
 * else (ARP) goes to the stack. The SYN's options come back as they are: MSS and window
 * scale are valid either way, and a timestamp echo of 0 is accepted by the client.
 *
 * Swapping addresses or ports leaves both checksums as they are (a one's-complement sum
 * does not depend on the order of its words); flags, seq and ack change, and the TCP
 * checksum is updated for them (RFC 1624). Counters: reflected, dropped.
 */
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>

#include "weir_parse.h"

BPF_PERCPU_ARRAY(reflector_stats, u64, 2); /* 0: SYN-ACKs sent, 1: TCP packets dropped */

static __always_inline void count(u32 i)
{
	u64 *n = reflector_stats.lookup(&i);

	if (n)
		*n += 1;
}

/* The checksum after one 32-bit word changes from old to new (RFC 1624, eqn. 3). */
static __always_inline __sum16 reflect_csum(__sum16 check, __be32 old, __be32 new)
{
	u32 sum = (u16)~check;

	sum += (u16)~old + (u16)~(old >> 16);
	sum += (u16)new + (u16)(new >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

int synack_reflector(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = weir_parse_ipv4(data, data_end);
	struct ethhdr *eth = data;
	struct tcphdr *tcp;
	__be32 word, flags, seq, addr;
	__be16 port;
	u8 mac[ETH_ALEN];

	if (!ip || ip->protocol != IPPROTO_TCP || ip->ihl != 5)
		return XDP_PASS;
	tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > data_end)
		return XDP_PASS;
	if (!tcp->syn || tcp->ack || tcp->rst) {
		count(1);
		return XDP_DROP;
	}
	/* The word holding data offset and flags: SYN becomes SYN + ACK. */
	flags = *(__be32 *)((void *)tcp + 12);
	tcp->ack = 1;
	word = *(__be32 *)((void *)tcp + 12);
	tcp->check = reflect_csum(tcp->check, flags, word);
	seq = tcp->seq;
	word = tcp->ack_seq;
	tcp->ack_seq = bpf_htonl(bpf_ntohl(seq) + 1);
	tcp->check = reflect_csum(tcp->check, word, tcp->ack_seq);
	tcp->seq = ~seq;
	tcp->check = reflect_csum(tcp->check, seq, tcp->seq);
	port = tcp->source;
	tcp->source = tcp->dest;
	tcp->dest = port;
	addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	count(0);
	return XDP_TX;
}

/* On the checker's end: a veth takes XDP_TX frames from its peer only into a receive queue
 * NAPI polls, which an XDP program of its own sets up. */
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
