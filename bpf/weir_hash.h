/* Hashes of the Weir fast path.
 *
 * Three 32-bit words through a lookup3-style final mix (Bob Jenkins' public-domain
 * avalanche, the same family as the kernel's jhash), written out here so the Python
 * twin (nodeagent/dataplane/flowhash.py) computes bit-identical values.
 */
#ifndef WEIR_HASH_H
#define WEIR_HASH_H

#define WEIR_HASH_INIT 0x9e3779b9u

static __always_inline u32 weir_rol32(u32 x, u32 k)
{
	return (x << k) | (x >> (32 - k));
}

static __always_inline void weir_mix(u32 *pa, u32 *pb, u32 *pc)
{
	u32 a = *pa, b = *pb, c = *pc;

	c ^= b; c -= weir_rol32(b, 14);
	a ^= c; a -= weir_rol32(c, 11);
	b ^= a; b -= weir_rol32(a, 25);
	c ^= b; c -= weir_rol32(b, 16);
	a ^= c; a -= weir_rol32(c, 4);
	b ^= a; b -= weir_rol32(a, 14);
	c ^= b; c -= weir_rol32(b, 24);
	*pa = a;
	*pb = b;
	*pc = c;
}

/* Maglev flow hash over (src addr, src port, dst port, proto) with the cluster seed.
 * Host-order inputs, so every node computes the same value whatever its endianness.
 * The destination address is left out, as the issue specifies the inputs. A ClientIP
 * affinity service passes a source port of 0 (ports = dst port only). */
static __always_inline u32 weir_flow_hash(u32 saddr, u32 ports, u32 proto, u32 seed)
{
	u32 a = WEIR_HASH_INIT + seed + saddr;
	u32 b = WEIR_HASH_INIT + seed + ports;
	u32 c = WEIR_HASH_INIT + seed + proto;

	weir_mix(&a, &b, &c);
	return c;
}

/* Map a 32-bit hash onto [0, size) with a multiply instead of a division
 * (Lemire's range reduction): uniform for a uniform hash, and ~20x cheaper than %. */
static __always_inline u32 weir_reduce(u32 hash, u32 size)
{
	return (u32)(((u64)hash * size) >> 32);
}

/* Conntrack placement of a 5-tuple: bucket, a 24-bit fingerprint (never 0) and 32 more
 * hash bits (the outer source port of an encapsulation). Keyed with the node's secret:
 * without it nobody can tell which flows share a bucket. The keyed part is NH, the
 * universal hash of UMAC (RFC 4418): sums of (message word + key word) multiplied in
 * pairs, mod 2^64; a bijective finalizer then spreads every input bit over the 64. Only
 * 64-bit operations: without ALU32 (bcc's LLVM 14 emits none) each 32-bit one costs an
 * extra zero-extension, which made the earlier 32-bit mix a fifth of the tracked path.
 * The second half of the key is derived from the first (one pinned word). Node-local, so
 * raw (network-order) words. */
#define WEIR_CT_KEY_MUL 0x9e3779b97f4a7c15ULL
#define WEIR_CT_FIN_MUL 0xd6e8feb86659fd93ULL

struct weir_ct_pos {
	u32 bucket;
	u32 fp;
	u32 entropy;
};

static __always_inline struct weir_ct_pos weir_ct_hash(__be32 saddr, __be32 daddr, u32 ports,
						       u32 proto, u64 key, u32 buckets)
{
	u64 key2 = key * WEIR_CT_KEY_MUL;
	u64 h = ((u64)saddr + (key & 0xffffffffULL)) * ((u64)daddr + (key >> 32)) +
		((u64)ports + (key2 & 0xffffffffULL)) * ((u64)proto + (key2 >> 32));
	struct weir_ct_pos pos;

	h ^= h >> 32;
	h *= WEIR_CT_FIN_MUL;
	h ^= h >> 29;
	pos.bucket = weir_reduce(h >> 32, buckets);
	pos.fp = (h >> 8) & 0xffffff;
	if (!pos.fp)
		pos.fp = 1;
	pos.entropy = h;
	return pos;
}

#endif
