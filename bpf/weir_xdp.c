/* Weir XDP fast path: Maglev load balancing with Direct Server Return (L2).
 *
 *   parse Ethernet (+1 VLAN tag) / IPv4 -> VIP filter -> conntrack -> service
 *   -> Maglev slot -> backend -> rewrite MACs -> XDP_TX
 *
 * Anything that is not IPv4 to a VIP (or not addressed to this node's MAC) leaves
 * with XDP_PASS untouched. IPv6 is not load-balanced yet: it passes like any other
 * non-VIP traffic (the agent refuses IPv6 VIPs with a clear error).
 *
 * Compiled by bcc (nodeagent/dataplane/loader.py) with -D WEIR_PIN_DIR, WEIR_MAX_*
 * and WEIR_CT_BUCKETS. WEIR_BENCH_NEW_FLOWS (bench/xdp_bench.py only) bumps the
 * source address after each VIP packet so BPF_PROG_TEST_RUN repetitions are all
 * new flows.
 */
#include <linux/in.h>

#include "weir_maps.h"
#include "weir_parse.h"
#include "weir_hash.h"

#define WEIR_READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WEIR_WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

/* Every counter of the fast path goes through here (per-CPU values: plain adds). */
static __always_inline void weir_count(struct counters *c, u64 bytes, u64 new_flow)
{
	if (c) {
		c->packets++;
		c->bytes += bytes;
		c->new_flows += new_flow;
	}
}

static __always_inline int weir_drop(u32 reason, u64 bytes)
{
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

/* Compare a packet MAC with the 6 bytes stored at the start of a config word. */
static __always_inline int weir_mac_is(const u8 *pkt, u64 word)
{
	const u8 *m = (const u8 *)&word;

	return *(const u32 *)pkt == *(const u32 *)m &&
	       *(const u16 *)(pkt + 4) == *(const u16 *)(m + 4);
}

static __always_inline int weir_forward(struct ethhdr *eth, const struct backend *be, u32 id,
					u64 node_mac, u64 bytes, u64 new_flow)
{
	u32 svc = be->svc;

	weir_count(be_stats.lookup(&id), bytes, new_flow);
	weir_count(svc_stats.lookup(&svc), bytes, new_flow);
	__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, &node_mac, ETH_ALEN);
	return XDP_TX;
}

/* Pick a backend for a flow with no (valid) conntrack entry, remember it in `way` of
 * its bucket, send. */
static __always_inline int weir_new_flow(struct ethhdr *eth, struct iphdr *ip,
					 struct weir_ports *ports, struct svc_key *sk,
					 const struct config *cfg, u64 node_mac, u64 bytes,
					 struct ct_bucket *bucket, struct weir_ct_pos *pos, u32 way)
{
	struct svc_value *svc = services.lookup(sk);
	struct slot_line *line;
	struct backend *be;
	u32 size, hport, hash, slot, line_idx, id;
	u64 word, handle;

	if (!svc)
		return XDP_PASS; /* the VIP, but not a port/protocol we serve */
	/* The one read of the table descriptor: old table or new, never a mix. */
	word = WEIR_READ_ONCE(svc->word);
	size = (word >> SVC_SIZE_SHIFT) & SVC_SIZE_MASK;
	if (!size)
		return weir_drop(DROP_TABLE_EMPTY, bytes);
	/* ClientIP affinity: the source port stays out of the hash, so every connection of
	 * a client lands on one backend, on every node (same seed, same table). It wins
	 * over random, which could not keep a client anywhere. */
	hport = bpf_ntohs(ports->dst);
	if (!(word & SVC_F_CLIENT_IP))
		hport |= (u32)bpf_ntohs(ports->src) << 16;
	if ((word & (SVC_F_RANDOM | SVC_F_CLIENT_IP)) == SVC_F_RANDOM)
		hash = bpf_get_prandom_u32();
	else
		hash = weir_flow_hash(bpf_ntohl(ip->saddr), hport, ip->protocol,
				      (u32)WEIR_READ_ONCE(cfg->seed));
	slot = (u32)(word & SVC_BASE_MASK) + weir_reduce(hash, size);
	line_idx = slot / SLOTS_PER_LINE;
	line = slots.lookup(&line_idx);
	if (!line)
		return weir_drop(DROP_NO_BACKEND, bytes);
	id = line->id[slot & (SLOTS_PER_LINE - 1)];
	be = backends.lookup(&id);
	if (!be || *(u64 *)&be->svc_key != *(u64 *)sk)
		return weir_drop(DROP_NO_BACKEND, bytes);
	/* handle 0: the backend was retired by the flip this packet raced with; it still
	 * goes there (old table), but is not remembered. */
	handle = WEIR_READ_ONCE(be->handle);
	if (handle) {
		way &= CT_WAYS - 1;
		WEIR_WRITE_ONCE(bucket->way[way], ((u64)pos->fp << CT_FP_SHIFT) | handle);
		bucket->client[way].saddr_be = ip->saddr;
		bucket->client[way].sport_be = ports->src;
	}
	return weir_forward(eth, be, id, node_mac, bytes, 1);
}

static __always_inline int weir_vip_packet(void *data, void *data_end, struct iphdr *ip)
{
	struct ethhdr *eth = data;
	u64 bytes = data_end - data;
	struct weir_ports *ports;
	struct ct_bucket *bucket;
	struct weir_ct_pos pos;
	struct config *cfg;
	u64 node_mac, hit = 0;
	u32 zero = 0, way;
	int match = -1, empty = -1;

	cfg = config.lookup(&zero);
	if (!cfg)
		return XDP_PASS;
	node_mac = WEIR_READ_ONCE(cfg->node_mac);
	/* Only frames sent to this node's MAC: a flooded or promiscuous uplink must not
	 * duplicate flows meant for another load-balancer node on the segment. The MAC is
	 * the one the rewrite below uses: no extra lookup. */
	if (!weir_mac_is(eth->h_dest, node_mac))
		return weir_not_for_us(eth->h_dest, ip->daddr, bytes);
	if (ip->ihl < 5)
		return XDP_PASS;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	ports = (void *)ip + ip->ihl * 4;
	if (ip->frag_off & bpf_htons(WEIR_IP_FRAG_MASK) || (void *)(ports + 1) > data_end) {
		/* No ports to hash: drop when the address really is a VIP. */
		if (!vips.lookup(&ip->daddr))
			return XDP_PASS;
		if (ip->frag_off & bpf_htons(WEIR_IP_FRAG_MASK))
			return weir_drop(DROP_FRAGMENT, bytes);
		return weir_drop(DROP_PARSE, bytes);
	}

	struct svc_key sk = {
		.vip_be = ip->daddr,
		.port_be = ports->dst,
		.proto = ip->protocol,
	};

	pos = weir_ct_hash(ip->saddr, ip->daddr, *(u32 *)ports, ip->protocol, WEIR_CT_BUCKETS);
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
		if (empty < 0 && !w)
			empty = i;
	}
	if (match >= 0) {
		u64 handle = hit & BE_HANDLE_MASK;
		u32 id = handle & BE_INDEX_MASK;
		struct backend *be = backends.lookup(&id);

		/* Live and the same service (a fingerprint match could be another flow's):
		 * a retired backend has handle 0, a reused index another generation. */
		if (be && handle && WEIR_READ_ONCE(be->handle) == handle &&
		    *(u64 *)&be->svc_key == *(u64 *)&sk)
			return weir_forward(eth, be, id, node_mac, bytes, 0);
		way = match;
	} else if (empty >= 0) {
		way = empty;
	} else {
		way = pos.victim;
	}
	return weir_new_flow(eth, ip, ports, &sk, cfg, node_mac, bytes, bucket, &pos, way);
}

int weir_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = weir_parse_ipv4(data, data_end);
	int action;

	if (!ip || !weir_vip_maybe(ip->daddr))
		return XDP_PASS;
	action = weir_vip_packet(data, data_end, ip);
#ifdef WEIR_BENCH_NEW_FLOWS
	ip->saddr = bpf_htonl(bpf_ntohl(ip->saddr) + 1);
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
#define COMMIT_CONFIG 2  /* key: 0 node_mac, 1 seed */
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

			if (c && op->key == 0) {
				__sync_lock_test_and_set(&c->node_mac, op->value);
				op->done = 1;
			} else if (c && op->key == 1) {
				__sync_lock_test_and_set(&c->seed, op->value);
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
