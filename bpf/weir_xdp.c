/* Weir XDP fast path: Maglev load balancing with Direct Server Return.
 *
 *   parse Ethernet (+1 VLAN tag) / IPv4 -> VIP filter -> conntrack -> service
 *   -> Maglev slot -> backend -> L2 DSR (rewrite MACs, XDP_TX)
 *                              or encapsulate toward the backend's node (XDP_TX)
 *
 * ICMP errors about a VIP's flows (fragmentation needed on the client's path, ...) go to
 * the backend that owns the flow they quote, so its stack sees them. Anything that is not
 * IPv4 to a VIP (or not addressed to this node's MAC) leaves with XDP_PASS untouched.
 * IPv6 is not load-balanced yet: it passes like any other non-VIP traffic (the agent
 * refuses IPv6 VIPs with a clear error).
 *
 * Compiled by bcc (weir.nodeagent.dataplane.loader) with -D WEIR_PIN_DIR, WEIR_MAX_*
 * and WEIR_CT_BUCKETS. WEIR_BENCH (bench/xdp_bench.py only) includes weir_bench.h, which
 * puts each test-run frame back the way it came so repetitions measure the same path.
 */
#include <uapi/linux/in.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "weir_maps.h"
#include "weir_parse.h"
#include "weir_hash.h"
#include "weir_encap.h"

#ifdef WEIR_BENCH_NEW_FLOWS
#define WEIR_BENCH
#endif

#define WEIR_READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WEIR_WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

/* rec: the flow log's record of this packet when it is sampled, else 0 (a constant: the
 * inlined copy of the fast path for unsampled packets has no trace of the log). */
static __always_inline int weir_drop(u32 reason, u64 bytes, struct flow_record *rec)
{
	if (rec)
		rec->drop = reason + 1;
	weir_count(drop_stats.lookup(&reason), bytes, 0);
	return XDP_DROP;
}

/* A frame for a VIP not addressed to this node's MAC (see pass_stats in weir_maps.h):
 * left to the kernel untouched. Off the fast path, so the exact VIP check is affordable
 * and keeps filter collisions out of the counters. */
static __always_inline int weir_not_for_us(const u8 *dest, __be32 daddr, u64 bytes)
{
	u32 reason = (dest[0] & 1) ? PASS_MULTICAST : PASS_OTHER_HOST;

	if (vips.lookup(&daddr))
		weir_count(pass_stats.lookup(&reason), bytes, 0);
	return XDP_PASS;
}

/* Cheap pre-check: could daddr be a VIP? (superset; exact checks come later) */
static __always_inline int weir_vip_maybe(__be32 daddr)
{
	u32 h = (bpf_ntohl(daddr) * VIPF_HASH_MUL) >> 16;
	u32 w = h >> 6;
	u64 *bits = vipf.lookup(&w);

	return bits && ((*bits >> (h & 63)) & 1);
}

/* No real client sends from 0.0.0.0, a multicast or the broadcast address. */
static __always_inline int weir_source_ok(__be32 saddr)
{
	u8 first = *(u8 *)&saddr;

	return saddr && first < 224;
}

/* Compare a packet MAC with the 6 bytes stored at the start of a config word. */
static __always_inline int weir_mac_is(const u8 *pkt, u64 word)
{
	const u8 *m = (const u8 *)&word;

	return *(const u32 *)pkt == *(const u32 *)m &&
	       *(const u16 *)(pkt + 4) == *(const u16 *)(m + 4);
}

/* What forwarding helpers return when they did not forward the packet (dropped it, or
 * answered it): the XDP action is in the low byte, and the caller counts nothing more. */
#define WEIR_HANDLED 0x100

/* The Ethernet header for a frame this node sends: destination `dest`, source the node's
 * MAC; a VLAN tag and the EtherType are copied from the frame that arrived (old, l2len
 * bytes, a constant: 14 or 18). */
static __always_inline void weir_set_l2(void *new, const void *old, u32 l2len, const u8 *dest,
					u64 node_mac)
{
	if (new != old)
		__builtin_memcpy(new + 12, old + 12, l2len - 12);
	__builtin_memcpy(new, dest, ETH_ALEN);
	__builtin_memcpy(new + ETH_ALEN, &node_mac, ETH_ALEN);
}

/* The inner packet cannot be encapsulated within the MTU: answer "fragmentation needed"
 * (RFC 1191) from the VIP, quoting its IPv4 header and first 8 bytes, with the MTU it must
 * fit, and drop it. The frame is reused:
 *
 *   before  [l2][ip][l4 ...]
 *   after   [l2][ip VIP->client][icmp 3/4][quoted ip][quoted 8 bytes]
 */
#define WEIR_ICMP_QUOTE (sizeof(struct iphdr) + 8)
#define WEIR_ICMP_LEN (sizeof(struct iphdr) + sizeof(struct icmphdr) + WEIR_ICMP_QUOTE)

static __always_inline int weir_icmp_too_big(struct xdp_md *ctx, const u32 l2len, u32 mtu,
					     u64 bytes, struct flow_record *rec)
{
	const int room = sizeof(struct iphdr) + sizeof(struct icmphdr);
	void *data, *data_end, *old;
	struct iphdr *ip, *quoted;
	struct icmphdr *icmp;
	u8 client_mac[ETH_ALEN];
	u64 node_mac;
	u32 sum;

	if (bpf_xdp_adjust_head(ctx, -room))
		return WEIR_HANDLED | weir_drop(DROP_ENCAP, bytes, rec);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	old = data + room;
	ip = data + l2len;
	icmp = (void *)(ip + 1);
	quoted = (void *)(icmp + 1);
	if ((void *)quoted + WEIR_ICMP_QUOTE > data_end)
		return WEIR_HANDLED | weir_drop(DROP_PARSE, bytes, rec);
	/* Back to the sender of the frame: swap the MACs. */
	__builtin_memcpy(client_mac, old + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(&node_mac, old, ETH_ALEN);
	weir_set_l2(data, old, l2len, client_mac, node_mac);

	*(u8 *)ip = 0x45;
	ip->tos = 0;
	ip->tot_len = bpf_htons(WEIR_ICMP_LEN);
	ip->id = 0;
	ip->frag_off = bpf_htons(WEIR_IP_DF);
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = quoted->daddr;
	ip->daddr = quoted->saddr;
	ip->check = weir_ipv4_csum(ip);

	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->un.frag.__unused = 0;
	icmp->un.frag.mtu = bpf_htons(mtu);
	sum = bpf_csum_diff(0, 0, (__be32 *)icmp, sizeof(*icmp) + WEIR_ICMP_QUOTE, 0);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	icmp->checksum = (__sum16)~sum;

	if (bpf_xdp_adjust_tail(ctx, (int)(l2len + WEIR_ICMP_LEN) - (int)(data_end - data)))
		return WEIR_HANDLED | weir_drop(DROP_ENCAP, bytes, rec);
	weir_drop(DROP_TOO_BIG, bytes, rec);
	return WEIR_HANDLED | XDP_TX;
}

/* Encapsulate toward the backend's node (bpf/weir_encap.h has the wire format). l2len is
 * a constant (14 or 18) so every offset below is one too. */
static __always_inline int weir_encap(struct xdp_md *ctx, const struct backend *be,
				      const struct config *cfg, u64 node_mac, const u32 l2len,
				      u32 entropy, u64 bytes, struct flow_record *rec)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *inner = data + l2len, *outer;
	u64 enc = WEIR_READ_ONCE(cfg->encap);
	u32 mtu = enc >> CFG_ENCAP_MTU_SHIFT;
	struct weir_enc_hdr *wh;
	struct udphdr *udp;
	__be16 id, frag;
	u32 len;
	u8 tos;

	if ((void *)(inner + 1) > data_end)
		return WEIR_HANDLED | weir_drop(DROP_PARSE, bytes, rec);
	if (!enc)
		return WEIR_HANDLED | weir_drop(DROP_ENCAP, bytes, rec);
	len = bpf_ntohs(inner->tot_len);
	if (len + WEIR_ENC_LEN > mtu) {
		/* Without DF too: a Linux client takes the MTU it is told and fragments its
		 * next datagrams to fit (UDP, path MTU discovery's "want" mode). */
		return weir_icmp_too_big(ctx, l2len, mtu - WEIR_ENC_LEN, bytes, rec);
	}
	id = inner->id;
	frag = inner->frag_off & bpf_htons(WEIR_IP_DF);
	tos = inner->tos;
	if (bpf_xdp_adjust_head(ctx, -(int)WEIR_ENC_LEN))
		return WEIR_HANDLED | weir_drop(DROP_ENCAP, bytes, rec);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	outer = data + l2len;
	udp = (void *)(outer + 1);
	wh = (void *)(udp + 1);
	if ((void *)(wh + 1) > data_end || data + WEIR_ENC_LEN + l2len > data_end)
		return WEIR_HANDLED | weir_drop(DROP_ENCAP, bytes, rec);
	weir_set_l2(data, data + WEIR_ENC_LEN, l2len, be->mac, node_mac);

	*(u8 *)outer = 0x45;
	outer->tos = tos;
	outer->tot_len = bpf_htons(len + WEIR_ENC_LEN);
	outer->id = id;
	outer->frag_off = frag;
	outer->ttl = 64;
	outer->protocol = IPPROTO_UDP;
	outer->check = 0;
	outer->saddr = (__be32)(enc & CFG_ENCAP_ADDR_MASK);
	outer->daddr = be->node_be;
	outer->check = weir_ipv4_csum(outer);

	udp->source = bpf_htons(WEIR_ENC_SPORT_BASE | (entropy & WEIR_ENC_SPORT_MASK));
	udp->dest = (__be16)(enc >> CFG_ENCAP_PORT_SHIFT);
	udp->len = bpf_htons(len + sizeof(*udp) + sizeof(*wh));
	udp->check = 0;

	wh->version = WEIR_ENC_VERSION;
	wh->flags = 0;
	wh->port_be = be->port_be;
	wh->addr_be = be->addr_be;
	/* A backend on this very node: up our own stack, where the tc program decapsulates. */
	if (outer->daddr == outer->saddr)
		return XDP_PASS;
	return XDP_TX;
}

static __always_inline int weir_forward(struct xdp_md *ctx, const struct backend *be, u32 id,
					const struct config *cfg, u64 node_mac, u32 l2len,
					u32 entropy, u64 bytes, u64 new_flow,
					struct flow_record *rec)
{
	u32 svc = be->svc;
	int action;

	if (be->flags & BE_F_ENCAP) {
		if (l2len == ETH_HLEN)
			action = weir_encap(ctx, be, cfg, node_mac, ETH_HLEN, entropy, bytes, rec);
		else
			action = weir_encap(ctx, be, cfg, node_mac,
					    ETH_HLEN + sizeof(struct weir_vlan_hdr), entropy, bytes,
					    rec);
		if (action & WEIR_HANDLED)
			return action & 0xff;
	} else {
		void *data = (void *)(long)ctx->data;

		if (data + ETH_HLEN > (void *)(long)ctx->data_end)
			return XDP_DROP;
		weir_set_l2(data, data, ETH_HLEN, be->mac, node_mac);
		action = XDP_TX;
	}
	weir_count(be_stats.lookup(&id), bytes, new_flow);
	weir_count(svc_stats.lookup(&svc), bytes, new_flow);
	return action;
}

/* A flow as the client sends it: the key of conntrack and of the Maglev hash. */
struct weir_flow {
	__be32 saddr;
	__be32 daddr;
	struct weir_ports ports;
	u8 proto;
};

/* Pick a backend for a flow with no (valid) conntrack entry: its entry, with its index in
 * *id, or NULL with *action set. */
static __always_inline struct backend *weir_pick(const struct weir_flow *f, struct svc_key *sk,
						 const struct config *cfg, u64 bytes, u32 *id,
						 int *action, struct flow_record *rec)
{
	struct svc_value *svc = services.lookup(sk);
	struct slot_line *line;
	struct backend *be;
	u32 size, hport, hash, slot, line_idx;
	u64 word;

	if (!svc) {
		*action = XDP_PASS; /* the VIP, but not a port/protocol we serve */
		return NULL;
	}
	/* The one read of the table descriptor: old table or new, never a mix. */
	word = WEIR_READ_ONCE(svc->word);
	size = (word >> SVC_SIZE_SHIFT) & SVC_SIZE_MASK;
	if (!size) {
		*action = weir_drop(DROP_TABLE_EMPTY, bytes, rec);
		return NULL;
	}
	/* ClientIP affinity: the source port stays out of the hash, so every connection of
	 * a client lands on one backend, on every node (same seed, same table). It wins
	 * over random, which could not keep a client anywhere. */
	hport = bpf_ntohs(f->ports.dst);
	if (!(word & SVC_F_CLIENT_IP))
		hport |= (u32)bpf_ntohs(f->ports.src) << 16;
	if ((word & (SVC_F_RANDOM | SVC_F_CLIENT_IP)) == SVC_F_RANDOM)
		hash = bpf_get_prandom_u32();
	else
		hash = weir_flow_hash(bpf_ntohl(f->saddr), hport, f->proto,
				      (u32)WEIR_READ_ONCE(cfg->seed));
	slot = weir_reduce(hash, size);
	if (rec) {
		rec->slot = slot;
		rec->how = (word & SVC_F_CLIENT_IP)  ? FLOW_AFFINITY
			   : (word & SVC_F_RANDOM) ? FLOW_RANDOM
						   : FLOW_MAGLEV;
	}
	slot += (u32)(word & SVC_BASE_MASK);
	line_idx = slot / SLOTS_PER_LINE;
	line = slots.lookup(&line_idx);
	if (!line) {
		*action = weir_drop(DROP_NO_BACKEND, bytes, rec);
		return NULL;
	}
	*id = line->id[slot & (SLOTS_PER_LINE - 1)];
	be = backends.lookup(id);
	if (!be || *(u64 *)&be->svc_key != *(u64 *)sk) {
		*action = weir_drop(DROP_NO_BACKEND, bytes, rec);
		return NULL;
	}
	return be;
}

static __always_inline void weir_ct_count(u32 event)
{
	weir_count(ct_stats.lookup(&event), 0, 0);
}

/* The insert-rate guard (as Katran's): may this CPU make another conntrack entry in the
 * current one-second window? Under a flood of new flows, established flows keep their
 * entries; the flows beyond the rate are forwarded all the same, by Maglev. */
static __always_inline int weir_ct_admit(const struct config *cfg)
{
	u64 limit = WEIR_READ_ONCE(cfg->ct_guard), now;
	struct ct_guard_state *g;
	u32 zero = 0;

	if (!limit)
		return 1;
	g = ct_guard.lookup(&zero);
	if (!g)
		return 1;
	now = bpf_ktime_get_coarse_ns();
	if (now - g->start_ns >= 1000000000ULL) {
		g->start_ns = now;
		g->count = 0;
	}
	if (g->count >= limit)
		return 0;
	g->count++;
	return 1;
}

/* The way of the bucket a new entry for the flow goes to: the flow's own stale one, an
 * empty one, or the least recently seen if it has been idle for WEIR_CT_MIN_AGE ticks;
 * -1 when every way is in use right now (the flows in use keep their entries). */
static __always_inline int weir_ct_way(const struct ct_bucket *bucket, int match, u16 now)
{
	u16 oldest_age = 0;
	int oldest = 0;

	if (match >= 0)
		return match;
#pragma unroll
	for (int i = 0; i < CT_WAYS; i++) {
		if (!WEIR_READ_ONCE(bucket->way[i]))
			return i;
	}
#pragma unroll
	for (int i = 0; i < CT_WAYS; i++) {
		u16 age = now - bucket->client[i].seen;

		if (age > oldest_age) {
			oldest_age = age;
			oldest = i;
		}
	}
	return oldest_age >= WEIR_CT_MIN_AGE ? oldest : -1;
}

/* A datagram's first fragment went to this backend: its later fragments follow it. */
static __always_inline void weir_frag_remember(struct frag_key *frag, u64 handle,
					       u32 entropy)
{
	struct frag_value v = {.handle = handle, .entropy = entropy};

	if (frag)
		frags.update(frag, &v);
}

/* A later fragment (no ports): to the backend its datagram's first fragment went to. */
static __always_inline int weir_frag_forward(struct xdp_md *ctx, struct iphdr *ip,
					     const struct config *cfg, u64 node_mac, u32 l2len,
					     u64 bytes, struct flow_record *rec)
{
	struct frag_key k = {
		.saddr_be = ip->saddr,
		.daddr_be = ip->daddr,
		.id_be = ip->id,
		.proto = ip->protocol,
	};
	struct frag_value *v = frags.lookup(&k);
	struct backend *be;
	u64 handle;
	u32 bid;

	if (!v)
		return vips.lookup(&ip->daddr) ? weir_drop(DROP_FRAGMENT, bytes, rec) : XDP_PASS;
	handle = v->handle;
	bid = handle & BE_INDEX_MASK;
	be = backends.lookup(&bid);
	if (!be || WEIR_READ_ONCE(be->handle) != handle)
		return weir_drop(DROP_FRAGMENT, bytes, rec); /* its backend left meanwhile */
	if (rec) {
		rec->how = FLOW_FRAGMENT;
		rec->handle = handle;
	}
	return weir_forward(ctx, be, bid, cfg, node_mac, l2len, v->entropy, bytes, 0, rec);
}

/* Conntrack, then Maglev, then forward. Packets that must not make an entry (`track` 0:
 * TCP RST or FIN, ICMP errors about a flow) use the flow's entry but make none. A first
 * fragment (`frag`) has its choice remembered for the fragments that follow. */
static __always_inline int weir_balance(struct xdp_md *ctx, const struct weir_flow *f,
					const struct config *cfg, u64 node_mac, u32 l2len,
					u64 bytes, int track, struct frag_key *frag,
					struct flow_record *rec)
{
	struct svc_key sk = {
		.vip_be = f->daddr,
		.port_be = f->ports.dst,
		.proto = f->proto,
	};
	/* jiffies: free to read (the coarse clock costs a few ns a packet) */
	u16 now = bpf_jiffies64() >> WEIR_CT_TICK_SHIFT;
	struct weir_ct_pos pos;
	struct ct_bucket *bucket;
	struct backend *be;
	int match = -1, full = 0, action = XDP_PASS, way;
	u64 hit = 0, handle;
	u32 bid;

	if (rec) {
		rec->saddr_be = f->saddr;
		rec->daddr_be = f->daddr;
		rec->sport_be = f->ports.src;
		rec->dport_be = f->ports.dst;
		rec->proto = f->proto;
	}
	pos = weir_ct_hash(f->saddr, f->daddr, *(u32 *)&f->ports, f->proto,
			   WEIR_READ_ONCE(cfg->ct_key), WEIR_CT_BUCKETS);
	bucket = conntrack.lookup(&pos.bucket);
	if (!bucket)
		return XDP_PASS;
#pragma unroll
	for (int i = 0; i < CT_WAYS; i++) {
		u64 w = WEIR_READ_ONCE(bucket->way[i]);

		if (match < 0 && (w >> CT_FP_SHIFT) == pos.fp) {
			match = i;
			hit = w;
		}
	}
	if (match >= 0) {
		handle = hit & BE_HANDLE_MASK;
		bid = handle & BE_INDEX_MASK;
		be = backends.lookup(&bid);
		/* Live and the same service (a fingerprint match could be another flow's):
		 * a retired backend has handle 0, a reused index another generation. */
		if (be && handle && WEIR_READ_ONCE(be->handle) == handle &&
		    *(u64 *)&be->svc_key == *(u64 *)&sk) {
			if (bucket->client[match & (CT_WAYS - 1)].seen != now)
				bucket->client[match & (CT_WAYS - 1)].seen = now;
			weir_frag_remember(frag, handle, pos.entropy);
			if (rec) {
				rec->how = FLOW_CONNTRACK;
				rec->handle = handle;
			}
			return weir_forward(ctx, be, bid, cfg, node_mac, l2len, pos.entropy, bytes,
					    0, rec);
		}
	}
	/* A new flow (or a stale entry). The Maglev pick first: it does not depend on the
	 * bucket, so the CPU runs it while the bucket (a cache miss, for a random flow of a
	 * big table) is still on its way; the choice of a way branches on the bucket's
	 * contents, and a mispredicted branch before the pick would make it start over. */
	be = weir_pick(f, &sk, cfg, bytes, &bid, &action, rec);
	if (!be)
		return action;
	way = weir_ct_way(bucket, match, now);
	if (way < 0) {
		track = 0; /* every way is in use right now: keep them */
		full = 1;
	}
	/* handle 0: the backend was retired by the flip this packet raced with; it still
	 * goes there (old table), but is not remembered. */
	handle = WEIR_READ_ONCE(be->handle);
	if (rec) {
		rec->handle = handle;
		if (!(track && handle))
			rec->flags |= FLOW_F_UNTRACKED;
	}
	if (track && handle) {
		if (weir_ct_admit(cfg)) {
			way &= CT_WAYS - 1;
			if (WEIR_READ_ONCE(bucket->way[way]))
				weir_ct_count(CT_EVICT);
			WEIR_WRITE_ONCE(bucket->way[way], ((u64)pos.fp << CT_FP_SHIFT) | handle);
			bucket->client[way].saddr_be = f->saddr;
			bucket->client[way].sport_be = f->ports.src;
			bucket->client[way].seen = now;
		} else {
			weir_ct_count(CT_GUARDED);
			if (rec)
				rec->flags |= FLOW_F_UNTRACKED;
		}
	} else if (full) {
		weir_ct_count(CT_FULL);
	} else if (!track) {
		weir_ct_count(CT_UNTRACKED);
	}
	weir_frag_remember(frag, WEIR_READ_ONCE(be->handle), pos.entropy);
	return weir_forward(ctx, be, bid, cfg, node_mac, l2len, pos.entropy, bytes, track, rec);
}

/* An ICMP error sent to a VIP quotes a packet the VIP sent (a backend's reply): send it to
 * the backend that owns that flow, as seen from the client, so the backend's stack learns
 * the path MTU or the failure. Other ICMP (echo to a VIP, ...) is the kernel's. */
static __always_inline int weir_icmp_error(struct xdp_md *ctx, struct iphdr *ip,
					   const struct config *cfg, u64 node_mac, u32 l2len,
					   u64 bytes, struct flow_record *rec)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct icmphdr *icmp = (void *)(ip + 1);
	struct weir_ports *quoted_ports;
	struct iphdr *quoted;
	struct weir_flow f;

	if (ip->ihl != 5 || (void *)(icmp + 1) > data_end)
		return XDP_PASS;
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED)
		return XDP_PASS;
	quoted = (void *)(icmp + 1);
	quoted_ports = (void *)(quoted + 1);
	if ((void *)(quoted_ports + 1) > data_end || quoted->ihl != 5 ||
	    quoted->saddr != ip->daddr)
		return XDP_PASS;
	if (quoted->protocol != IPPROTO_TCP && quoted->protocol != IPPROTO_UDP)
		return XDP_PASS;
	f.saddr = quoted->daddr;
	f.daddr = quoted->saddr;
	f.ports.src = quoted_ports->dst;
	f.ports.dst = quoted_ports->src;
	f.proto = quoted->protocol;
	if (rec)
		rec->flags |= FLOW_F_ICMP;
	return weir_balance(ctx, &f, cfg, node_mac, l2len, bytes, 0, 0, rec);
}

/* A packet for a VIP (maybe), after the config is read: every decision of the fast path.
 * rec: see weir_drop. */
static __always_inline int weir_vip_decide(struct xdp_md *ctx, void *data, void *data_end,
					   struct iphdr *ip, const struct config *cfg,
					   u64 node_mac, struct flow_record *rec)
{
	struct ethhdr *eth = data;
	u64 bytes = data_end - data;
	u32 l2len = (void *)ip - data, tot, l4_min;
	struct weir_ports *ports;
	struct weir_flow f;
	void *l4_end;
	int track = 1;

	/* Only frames sent to this node's MAC: a flooded or promiscuous uplink must not
	 * duplicate flows meant for another load-balancer node on the segment. The MAC is
	 * the one the rewrite below uses: no extra lookup. */
	if (!weir_mac_is(eth->h_dest, node_mac))
		return weir_not_for_us(eth->h_dest, ip->daddr, bytes);
	/* A header that lies about itself, or a source no real client has, makes no flow:
	 * dropped when the address really is a VIP. */
	tot = bpf_ntohs(ip->tot_len);
	l4_end = (void *)ip + tot;
	if (*(u8 *)ip >> 4 != 4 || ip->ihl < 5 || tot < ip->ihl * 4 || l4_end > data_end ||
	    !weir_source_ok(ip->saddr)) {
		if (!vips.lookup(&ip->daddr))
			return XDP_PASS;
		return weir_drop(DROP_INVALID, bytes, rec);
	}
	if (ip->protocol == IPPROTO_ICMP)
		return weir_icmp_error(ctx, ip, cfg, node_mac, l2len, bytes, rec);
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (ip->frag_off & bpf_htons(WEIR_IP_OFFSET_MASK))
		return weir_frag_forward(ctx, ip, cfg, node_mac, l2len, bytes, rec);
	ports = (void *)ip + ip->ihl * 4;
	l4_min = ip->protocol == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr);
	if ((void *)ports + l4_min > l4_end || (void *)(ports + 1) > data_end) {
		/* No ports to hash: drop when the address really is a VIP. */
		if (!vips.lookup(&ip->daddr))
			return XDP_PASS;
		return weir_drop(DROP_PARSE, bytes, rec);
	}
	f.saddr = ip->saddr;
	f.daddr = ip->daddr;
	f.ports = *ports;
	f.proto = ip->protocol;
	if (f.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)ports;

		if ((void *)(tcp + 1) > data_end)
			return weir_drop(DROP_PARSE, bytes, rec);
		/* A RST or FIN ends a flow: never worth an entry (nor a way for a flood to
		 * make one). */
		if (tcp->rst || tcp->fin)
			track = 0;
	}
	if (ip->frag_off & bpf_htons(WEIR_IP_FRAG_MASK)) {
		/* The first fragment of a datagram (MF set, offset 0): it has the ports. */
		struct frag_key fk = {
			.saddr_be = ip->saddr,
			.daddr_be = ip->daddr,
			.id_be = ip->id,
			.proto = ip->protocol,
		};

		if (rec)
			rec->flags |= FLOW_F_FIRST_FRAG;
		return weir_balance(ctx, &f, cfg, node_mac, l2len, bytes, track, &fk, rec);
	}
	return weir_balance(ctx, &f, cfg, node_mac, l2len, bytes, track, 0, rec);
}

/* A sampled packet: decided as any other, and its record sent to the flow log. */
static __always_inline int weir_vip_logged(struct xdp_md *ctx, void *data, void *data_end,
					   struct iphdr *ip, const struct config *cfg,
					   u64 node_mac)
{
	struct flow_record rec = {
		.time_ns = bpf_ktime_get_ns(),
		.saddr_be = ip->saddr,
		.daddr_be = ip->daddr,
		.proto = ip->protocol,
	};
	int action = weir_vip_decide(ctx, data, data_end, ip, cfg, node_mac, &rec);

	rec.action = action;
	flow_log.ringbuf_output(&rec, sizeof(rec), 0);
	return action;
}

static __always_inline int weir_vip_packet(struct xdp_md *ctx, void *data, void *data_end,
					   struct iphdr *ip)
{
	struct config *cfg;
	u64 node_mac, *skip;
	u32 zero = 0, rate;

	cfg = config.lookup(&zero);
	if (!cfg)
		return XDP_PASS;
	node_mac = WEIR_READ_ONCE(cfg->node_mac);
	/* The flow log: off (rate 0) costs this one branch on a word read anyway. On, each CPU
	 * counts down a skip drawn uniformly from [1, 2 x rate - 1] (mean: rate) at every
	 * sampled packet, as sFlow does: a random number for every packet cost ~20 ns here. */
	rate = node_mac >> CFG_SAMPLE_SHIFT;
	if (__builtin_expect(!rate, 1))
		return weir_vip_decide(ctx, data, data_end, ip, cfg, node_mac, 0);
	skip = flow_skip.lookup(&zero);
	if (skip && *skip > 1 && *skip <= 2 * (u64)rate) {
		*skip -= 1;
		return weir_vip_decide(ctx, data, data_end, ip, cfg, node_mac, 0);
	}
	if (skip)
		*skip = 1 + weir_reduce(bpf_get_prandom_u32(), 2 * rate - 1);
	return weir_vip_logged(ctx, data, data_end, ip, cfg, node_mac);
}

#ifdef WEIR_BENCH
#include "weir_bench.h"
#endif

int weir_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = weir_parse_ipv4(data, data_end);
	int action;

	if (!ip || !weir_vip_maybe(ip->daddr))
		return XDP_PASS;
	action = weir_vip_packet(ctx, data, data_end, ip);
#ifdef WEIR_BENCH
	weir_bench_rewind(ctx);
#endif
	return action;
}

/* --- weir_commit: atomic word stores on behalf of the agent ---------------------------
 * Run with BPF_PROG_TEST_RUN; the "packet" is an array of commit_op. Userspace map
 * updates copy values with memcpy, which is not atomic; this program stores each
 * 64-bit word with one xchg (fully ordered, so the table writes that precede the
 * flip are visible before it). Each op reports done = 1 when applied. */
struct commit_op {
	u32 op;
	u32 done;
	u64 key;
	u64 value;
};

#define COMMIT_FLIP 1    /* key: svc_key bytes, value: the service word */
#define COMMIT_CONFIG 2  /* key: 0 node_mac, 1 seed, 2 encap, 3 ct_key, 4 ct_guard */
#define COMMIT_BACKEND 3 /* key: backend index, value: its handle (0 retires it) */
#define COMMIT_MAX_OPS 128

int weir_commit(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	u32 zero = 0;

	for (u32 i = 0; i < COMMIT_MAX_OPS; i++) {
		struct commit_op *op = data + i * sizeof(struct commit_op);

		if ((void *)(op + 1) > data_end)
			break;
		if (op->op == COMMIT_FLIP) {
			struct svc_key k;
			struct svc_value *v;

			__builtin_memcpy(&k, &op->key, sizeof(k));
			v = services.lookup(&k);
			if (v) {
				__sync_lock_test_and_set(&v->word, op->value);
				op->done = 1;
			}
		} else if (op->op == COMMIT_CONFIG) {
			struct config *c = config.lookup(&zero);
			u64 *word = 0;

			if (!c)
				continue;
			if (op->key == 0)
				word = &c->node_mac;
			else if (op->key == 1)
				word = &c->seed;
			else if (op->key == 2)
				word = &c->encap;
			else if (op->key == 3)
				word = &c->ct_key;
			else if (op->key == 4)
				word = &c->ct_guard;
			if (word) {
				__sync_lock_test_and_set(word, op->value);
				op->done = 1;
			}
		} else if (op->op == COMMIT_BACKEND) {
			u32 idx = op->key;
			struct backend *be = backends.lookup(&idx);

			if (be) {
				__sync_lock_test_and_set(&be->handle, op->value);
				op->done = 1;
			}
		}
	}
	return XDP_PASS;
}
