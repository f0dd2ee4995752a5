/* Weir on a backend's node: tc programs on the uplink (clsact, direct action).
 *
 * ingress: encapsulated packet from a load-balancer node (bpf/weir_encap.h)
 *   -> from a named LB node? -> Weir header sane? -> a translation this node serves
 *      (VIP:port -> pod:port in local_backends, or a flow it already translates)
 *   -> decapsulate -> VIP:port becomes pod:port -> remember the flow -> on to the stack
 *      (the kernel routes it to the pod: netfilter and conntrack see client -> pod)
 * egress: a pod's reply (pod:port -> client:port, a flow found in nat_flows)
 *   -> becomes VIP:port -> client:port; a SYN-ACK's MSS is clamped so the client's
 *      segments fit the encapsulation -> out, straight to the client
 *
 * Both translations happen at the uplink, on either side of the stack, so conntrack sees
 * one consistent flow (client <-> pod): a CNI's masquerade never matches it (the flow is
 * not new when replies leave), kube-proxy's DNAT for the VIP never sees the VIP, and
 * "ct state invalid" drops nothing. ICMP errors are translated in both directions with
 * the packet they quote. Anything else passes untouched.
 *
 * Verdicts: TC_ACT_SHOT for a counted drop, else TC_ACT_UNSPEC: the next tc filter on the
 * interface (a CNI's) still runs, and with none the packet goes on as with TC_ACT_OK.
 *
 * Compiled by bcc (weir.nodeagent.dataplane.nat) with -D WEIR_PIN_DIR, WEIR_MAX_LB_NODES,
 * WEIR_MAX_LOCAL_BACKENDS and WEIR_NAT_FLOWS. WEIR_BENCH (bench/tc_bench.py only) puts each
 * test-run packet back the way it came (weir_tc_bench.h).
 */
#include <uapi/linux/in.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "weir_nat_maps.h"
#include "weir_parse.h"
#include "weir_encap.h"
#ifdef WEIR_BENCH
#include "weir_tc_bench.h"
#endif

/* TCP options (RFC 9293), not in the UAPI headers. */
#define WEIR_TCPOPT_EOL 0
#define WEIR_TCPOPT_NOP 1
#define WEIR_TCPOPT_MSS 2
#define WEIR_TCPOLEN_MSS 4

/* Debian 12's UAPI headers predate it: the decapsulated packet is IPv4 (kernel >= 5.18). */
#define WEIR_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)

/* Headers read at ingress: outer IPv4 + UDP + Weir, inner IPv4, and an ICMP error's
 * header with the IPv4 header and ports it quotes. */
#define WEIR_TC_PULL (ETH_HLEN + WEIR_ENC_LEN + sizeof(struct iphdr) + sizeof(struct icmphdr) + \
		      sizeof(struct iphdr) + sizeof(struct weir_ports))

static __always_inline int nat_drop(u32 reason, u64 bytes)
{
	weir_count(nat_drops.lookup(&reason), bytes, 0);
	return TC_ACT_SHOT;
}

static __always_inline void nat_count(u32 event, u64 bytes, u64 new_flow)
{
	weir_count(nat_events.lookup(&event), bytes, new_flow);
}

/* A fragment's datagram, as the fragment carries it. */
static __always_inline struct nat_frag_key nat_frag_of(const struct iphdr *ip)
{
	struct nat_frag_key k = {
		.saddr_be = ip->saddr,
		.daddr_be = ip->daddr,
		.id_be = ip->id,
		.proto = ip->protocol,
	};

	return k;
}

/* Replace a fragment's address (no ports in it: only the IPv4 checksum changes). */
static __always_inline void nat_rewrite_addr(struct __sk_buff *skb, u32 a_off, __be32 from,
					     __be32 to)
{
	bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from, to, sizeof(to));
	bpf_skb_store_bytes(skb, ETH_HLEN + a_off, &to, sizeof(to), 0);
}

static __always_inline u32 csum_off(u8 proto)
{
	return proto == IPPROTO_TCP ? offsetof(struct tcphdr, check) : offsetof(struct udphdr, check);
}

/* Replace an address (IPv4 header field at a_off) and a port (L4 field at p_off) of a
 * TCP or UDP packet, keeping both checksums right (checksum offload included: the
 * helpers know what a partial checksum already covers). */
static __always_inline void nat_rewrite(struct __sk_buff *skb, u8 proto, u32 a_off, u32 p_off,
					__be32 from_addr, __be32 to_addr, __be16 from_port,
					__be16 to_port)
{
	const u32 l4 = ETH_HLEN + sizeof(struct iphdr);
	/* UDP without a checksum keeps none. */
	u64 zero_ok = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	bpf_l4_csum_replace(skb, l4 + csum_off(proto), from_addr, to_addr,
			    BPF_F_PSEUDO_HDR | zero_ok | sizeof(to_addr));
	bpf_l4_csum_replace(skb, l4 + csum_off(proto), from_port, to_port,
			    zero_ok | sizeof(to_port));
	bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from_addr, to_addr,
			    sizeof(to_addr));
	bpf_skb_store_bytes(skb, ETH_HLEN + a_off, &to_addr, sizeof(to_addr), 0);
	bpf_skb_store_bytes(skb, l4 + p_off, &to_port, sizeof(to_port), 0);
}

/* The same for an ICMP error: its own IPv4 address (a_off, no pseudo-header in the ICMP
 * checksum) and, in the packet it quotes, the address at qa_off and the port at qp_off,
 * with the quoted header's checksum. The quoted L4 checksum is left alone: only 8 bytes
 * of that segment are quoted and nothing verifies it. */
static __always_inline void nat_rewrite_icmp(struct __sk_buff *skb, u32 a_off, u32 qa_off,
					     u32 qp_off, __be32 from_addr, __be32 to_addr,
					     __be16 from_port, __be16 to_port)
{
	const u32 icmp = ETH_HLEN + sizeof(struct iphdr);
	const u32 csum = icmp + offsetof(struct icmphdr, checksum);
	const u32 quoted = icmp + sizeof(struct icmphdr);
	__sum16 qcheck, qcheck_new;
	u32 sum;

	if (bpf_skb_load_bytes(skb, quoted + offsetof(struct iphdr, check), &qcheck, 2))
		return;
	sum = bpf_csum_diff(&from_addr, 4, &to_addr, 4, (u16)~qcheck);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	qcheck_new = (__sum16)~sum;

	bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from_addr, to_addr,
			    sizeof(to_addr));
	bpf_skb_store_bytes(skb, ETH_HLEN + a_off, &to_addr, sizeof(to_addr), 0);
	bpf_l4_csum_replace(skb, csum, from_addr, to_addr, sizeof(to_addr));
	bpf_l4_csum_replace(skb, csum, qcheck, qcheck_new, sizeof(qcheck_new));
	bpf_l4_csum_replace(skb, csum, from_port, to_port, sizeof(to_port));
	bpf_skb_store_bytes(skb, quoted + qa_off, &to_addr, sizeof(to_addr), 0);
	bpf_skb_store_bytes(skb, quoted + offsetof(struct iphdr, check), &qcheck_new,
			    sizeof(qcheck_new), 0);
	bpf_skb_store_bytes(skb, quoted + sizeof(struct iphdr) + qp_off, &to_port, sizeof(to_port),
			    0);
}

/* A flow as this node translates it: the client and the VIP:port it asked for, the pod and
 * the port it gets. */
struct nat_flow {
	__be32 client;
	__be32 vip;
	__be32 pod;
	__be16 cport;
	__be16 vport;
	__be16 pport;
	u8 proto; /* TCP or UDP (for an ICMP error: the protocol of the flow it quotes) */
	u8 icmp;  /* the packet is an ICMP error about the flow */
};

/* The flow an encapsulated packet belongs to, read from its inner packet (at `inner`) and
 * the Weir header; 0 when the inner packet is not one Weir sends. */
static __always_inline int nat_inner_flow(struct nat_flow *f, struct iphdr *inner,
					  const struct weir_enc_hdr *wh, void *data_end)
{
	f->vip = inner->daddr;
	f->pod = wh->addr_be;
	f->pport = wh->port_be;
	if (inner->protocol == IPPROTO_TCP || inner->protocol == IPPROTO_UDP) {
		struct weir_ports *ports = (void *)(inner + 1);

		if ((void *)(ports + 1) > data_end)
			return 0;
		f->client = inner->saddr;
		f->cport = ports->src;
		f->vport = ports->dst;
		f->proto = inner->protocol;
		f->icmp = 0;
		return 1;
	}
	if (inner->protocol == IPPROTO_ICMP) {
		/* An error about a reply the VIP sent: the quoted packet is VIP -> client. */
		struct icmphdr *icmp = (void *)(inner + 1);
		struct iphdr *quoted = (void *)(icmp + 1);
		struct weir_ports *ports = (void *)(quoted + 1);

		if ((void *)(ports + 1) > data_end || *(u8 *)quoted != 0x45 ||
		    quoted->saddr != inner->daddr)
			return 0;
		if (quoted->protocol != IPPROTO_TCP && quoted->protocol != IPPROTO_UDP)
			return 0;
		f->client = quoted->daddr;
		f->cport = ports->dst;
		f->vport = ports->src;
		f->proto = quoted->protocol;
		f->icmp = 1;
		return 1;
	}
	return 0;
}

/* A later fragment of a datagram whose first fragment went to `pod` on this node. */
static __always_inline int nat_later_fragment_in(struct __sk_buff *skb, struct iphdr *inner,
						 __be32 pod, u64 bytes)
{
	struct nat_frag_key frag = nat_frag_of(inner);
	__be32 *to = nat_frags.lookup(&frag), vip = inner->daddr;

	if (!to || *to != pod)
		return nat_drop(NAT_DROP_FRAGMENT, bytes);
	if (bpf_skb_adjust_room(skb, -(int)WEIR_ENC_LEN, BPF_ADJ_ROOM_MAC,
				WEIR_ADJ_ROOM_DECAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO))
		return nat_drop(NAT_DROP_DECAP, bytes);
	nat_rewrite_addr(skb, offsetof(struct iphdr, daddr), vip, pod);
	nat_count(NAT_DECAP, bytes - WEIR_ENC_LEN, 0);
	return TC_ACT_UNSPEC;
}

int weir_tc_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct weir_enc_hdr *wh;
	struct nat_backend_key key = {};
	struct nat_flow_key fkey = {};
	struct nat_backend *local;
	struct nat_vip *seen;
	struct nat_config *cfg;
	struct iphdr *ip, *inner;
	struct udphdr *udp;
	struct nat_flow f;
	u64 bytes = skb->len, new_flow = 0;
	u32 zero = 0, index = 0;
	int known;
#ifdef WEIR_BENCH
	struct weir_tc_saved saved;
#endif

	ip = weir_parse_ipv4(data, data_end);
	if (!ip || (void *)ip != data + ETH_HLEN || ip->protocol != IPPROTO_UDP ||
	    *(u8 *)ip != 0x45)
		return TC_ACT_UNSPEC;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_UNSPEC;
	cfg = nat_config.lookup(&zero);
	if (!cfg || !cfg->node_be || ip->daddr != cfg->node_be || udp->dest != cfg->port_be)
		return TC_ACT_UNSPEC;
	/* Ours from here on: every outcome is counted. */
	if (!lb_nodes.lookup(&ip->saddr))
		return nat_drop(NAT_DROP_NOT_LB, bytes);
	if (data + WEIR_TC_PULL > data_end) {
		bpf_skb_pull_data(skb, skb->len < WEIR_TC_PULL ? skb->len : WEIR_TC_PULL);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	ip = data + ETH_HLEN;
	wh = data + ETH_HLEN + sizeof(struct iphdr) + sizeof(struct udphdr);
	inner = (void *)(wh + 1);
	if ((void *)(inner + 1) > data_end || wh->version != WEIR_ENC_VERSION || wh->flags ||
	    *(u8 *)inner != 0x45 ||
	    bpf_ntohs(ip->tot_len) != bpf_ntohs(inner->tot_len) + WEIR_ENC_LEN)
		return nat_drop(NAT_DROP_HEADER, bytes);
	if (inner->frag_off & bpf_htons(WEIR_IP_OFFSET_MASK))
		return nat_later_fragment_in(skb, inner, wh->addr_be, bytes);
	if (!nat_inner_flow(&f, inner, wh, data_end))
		return nat_drop(NAT_DROP_HEADER, bytes);
	if (inner->frag_off & bpf_htons(WEIR_IP_FRAG_MASK)) {
		struct nat_frag_key frag = nat_frag_of(inner);

		nat_frags.update(&frag, &f.pod);
	}

	key.vip_be = f.vip;
	key.addr_be = f.pod;
	key.vport_be = f.vport;
	key.port_be = f.pport;
	key.proto = f.proto;
	fkey.addr_be = f.pod;
	fkey.client_be = f.client;
	fkey.port_be = f.pport;
	fkey.cport_be = f.cport;
	fkey.proto = f.proto;
	seen = nat_flows.lookup(&fkey);
	known = seen && seen->vip_be == f.vip && seen->vport_be == f.vport;
	local = local_backends.lookup(&key);
	if (local)
		index = local->index;
	else if (!known)
		/* Not (or no longer) a local endpoint: only a flow already translated here may
		 * go on, to the pod it has. */
		return nat_drop(NAT_DROP_UNKNOWN, bytes);
#ifdef WEIR_BENCH
	weir_tc_bench_save(skb, &saved);
#endif
	if (bpf_skb_adjust_room(skb, -(int)WEIR_ENC_LEN, BPF_ADJ_ROOM_MAC,
				WEIR_ADJ_ROOM_DECAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO))
		return nat_drop(NAT_DROP_DECAP, bytes);
	bytes -= WEIR_ENC_LEN;

	if (f.icmp) {
		nat_rewrite_icmp(skb, offsetof(struct iphdr, daddr), offsetof(struct iphdr, saddr),
				 offsetof(struct weir_ports, src), f.vip, f.pod, f.vport, f.pport);
	} else {
		nat_rewrite(skb, f.proto, offsetof(struct iphdr, daddr),
			    offsetof(struct weir_ports, dst), f.vip, f.pod, f.vport, f.pport);
		if (!known) {
			struct nat_vip v = {.vip_be = f.vip, .vport_be = f.vport};

			nat_flows.update(&fkey, &v);
			new_flow = 1;
		}
	}
	nat_count(NAT_DECAP, bytes, new_flow);
	if (local)
		weir_count(be_nat_stats.lookup(&index), bytes, new_flow);
#ifdef WEIR_BENCH
	weir_tc_bench_rewind(skb, &saved, f.vip, f.vport);
#endif
	return TC_ACT_UNSPEC;
}

/* Lower the MSS option of a SYN-ACK to `mss` (options walked in bounded steps). */
static __always_inline int nat_clamp_mss(struct __sk_buff *skb, u32 doff, u16 mss)
{
	const u32 l4 = ETH_HLEN + sizeof(struct iphdr);
	u32 off = l4 + sizeof(struct tcphdr), end = l4 + doff * 4;
	u8 opt[2];

#pragma unroll
	for (int i = 0; i < 10; i++) {
		if (off + 1 > end || bpf_skb_load_bytes(skb, off, opt, 1))
			return 0;
		if (opt[0] == WEIR_TCPOPT_EOL)
			return 0;
		if (opt[0] == WEIR_TCPOPT_NOP) {
			off++;
			continue;
		}
		if (off + 2 > end || bpf_skb_load_bytes(skb, off, opt, 2) || opt[1] < 2)
			return 0;
		if (opt[0] == WEIR_TCPOPT_MSS && opt[1] == WEIR_TCPOLEN_MSS) {
			__be16 old, new = bpf_htons(mss);

			if (off + WEIR_TCPOLEN_MSS > end || bpf_skb_load_bytes(skb, off + 2, &old, 2) ||
			    bpf_ntohs(old) <= mss)
				return 0;
			bpf_l4_csum_replace(skb, l4 + offsetof(struct tcphdr, check), old, new,
					    sizeof(new));
			bpf_skb_store_bytes(skb, off + 2, &new, sizeof(new), 0);
			return 1;
		}
		off += opt[1];
	}
	return 0;
}

/* A later fragment of a pod's reply whose first fragment was translated back: not ours
 * otherwise (the pod answers others too), so it passes untouched. */
static __always_inline int nat_later_fragment_out(struct __sk_buff *skb, struct iphdr *ip,
						  u64 bytes)
{
	struct nat_frag_key frag = nat_frag_of(ip);
	__be32 *to = nat_frags.lookup(&frag), pod = ip->saddr;

	if (!to)
		return TC_ACT_UNSPEC;
	nat_rewrite_addr(skb, offsetof(struct iphdr, saddr), pod, *to);
	nat_count(NAT_REVERSE, bytes, 0);
	return TC_ACT_UNSPEC;
}

int weir_tc_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct nat_flow_key fkey = {};
	struct weir_ports *ports;
	struct nat_config *cfg;
	struct nat_vip *to;
	struct iphdr *ip;
	u64 bytes = skb->len;
	u32 zero = 0;
	__be32 vip;
	__be16 vport;
	u8 proto;

	ip = weir_parse_ipv4(data, data_end);
	if (!ip || (void *)ip != data + ETH_HLEN || *(u8 *)ip != 0x45)
		return TC_ACT_UNSPEC;
	proto = ip->protocol;
	ports = (void *)(ip + 1);
	if (proto == IPPROTO_ICMP) {
		/* A pod's error about a client's packet (port unreachable, ...): the quoted
		 * packet is client -> pod:port, and goes back as client -> VIP:port. */
		struct icmphdr *icmp = (void *)(ip + 1);
		struct iphdr *quoted = (void *)(icmp + 1);
		struct weir_ports *qports = (void *)(quoted + 1);

		if ((void *)(qports + 1) > data_end || *(u8 *)quoted != 0x45 ||
		    quoted->daddr != ip->saddr ||
		    (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED))
			return TC_ACT_UNSPEC;
		proto = quoted->protocol;
		fkey.client_be = quoted->saddr;
		fkey.cport_be = qports->src;
		fkey.port_be = qports->dst;
	} else if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		if (ip->frag_off & bpf_htons(WEIR_IP_OFFSET_MASK))
			return nat_later_fragment_out(skb, ip, bytes);
		if ((void *)(ports + 1) > data_end)
			return TC_ACT_UNSPEC;
		fkey.client_be = ip->daddr;
		fkey.cport_be = ports->dst;
		fkey.port_be = ports->src;
	} else {
		return TC_ACT_UNSPEC;
	}
	fkey.addr_be = ip->saddr;
	fkey.proto = proto;
	to = nat_flows.lookup(&fkey);
	if (!to)
		return TC_ACT_UNSPEC;
	vip = to->vip_be;
	vport = to->vport_be;

	if (ip->protocol == IPPROTO_ICMP) {
		nat_rewrite_icmp(skb, offsetof(struct iphdr, saddr), offsetof(struct iphdr, daddr),
				 offsetof(struct weir_ports, dst), ip->saddr, vip, fkey.port_be,
				 vport);
	} else {
		u8 syn_ack = 0;
		u32 doff = 0;

		if (proto == IPPROTO_TCP) {
			struct tcphdr *tcp = (void *)(ip + 1);

			if ((void *)(tcp + 1) > data_end)
				return TC_ACT_UNSPEC;
			syn_ack = tcp->syn && tcp->ack;
			doff = tcp->doff;
		}
		if (ip->frag_off & bpf_htons(WEIR_IP_FRAG_MASK)) {
			struct nat_frag_key frag = nat_frag_of(ip);

			nat_frags.update(&frag, &vip);
		}
		nat_rewrite(skb, proto, offsetof(struct iphdr, saddr),
			    offsetof(struct weir_ports, src), ip->saddr, vip, fkey.port_be, vport);
		cfg = nat_config.lookup(&zero);
		if (syn_ack && cfg && cfg->mss && nat_clamp_mss(skb, doff, cfg->mss))
			nat_count(NAT_MSS, bytes, 0);
	}
	nat_count(NAT_REVERSE, bytes, 0);
	return TC_ACT_UNSPEC;
}
