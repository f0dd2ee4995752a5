/* Weir data-plane maps: layouts and declarations.
 *
 * Every map is pinned under WEIR_PIN_DIR (the agent's bpffs directory). bcc's
 * BPF_TABLE_PINNED opens the pin when it exists and creates + pins it otherwise,
 * so a restarted agent adopts the live maps (and the conntrack state in them).
 * Capacities come from -D flags (WEIR_MAX_SERVICES, WEIR_MAX_BACKENDS, WEIR_SLOT_LINES,
 * WEIR_CT_BUCKETS) set by nodeagent/dataplane/loader.py; when pins
 * exist the loader passes the pinned maps' own sizes.
 *
 * The Python mirror of these layouts is nodeagent/dataplane/layout.py (a test
 * compares both field by field). Multi-byte fields are host order unless the name
 * says _be (network order, as found in the packet).
 *
 * Atomic apply (see nodeagent/dataplane/README.md for the full argument):
 *   - A service's current table is described by ONE 64-bit word (svc_value.word):
 *     base slot, size, half, strategy, affinity. Userspace never memcpy's it: the commit
 *     program (weir_commit, run with BPF_PROG_TEST_RUN) swaps it with an atomic xchg.
 *     The fast path reads it with one 8-byte load, so a packet uses either the old
 *     descriptor or the new one, whole.
 *   - Slots, backend entries and hash elements that a descriptor may reach are
 *     never written while a reader could still hold that descriptor: the agent only
 *     rewrites a retired half (or reuses a freed id / element) after an RCU grace
 *     period (an ARRAY_OF_MAPS update from userspace waits for all running BPF
 *     programs: synchronize_rcu in the bpf syscall).
 */
#ifndef WEIR_MAPS_H
#define WEIR_MAPS_H

#include "weir_counters.h"

#define WEIR_PIN(name) WEIR_PIN_DIR "/" name

/* --- layout: the version of the layouts in this file --------------------------------------
 * One u64, written by the agent when it creates the maps or migrates older ones to these
 * layouts (weir.nodeagent.dataplane.migrate); an agent never adopts pins of a layout it does
 * not know. Pins without it are version 1, the first release's. Bump it with any change of
 * size or meaning below, and teach migrate.py the step from the previous version.
 *   1  the first release
 *   2  backends: node_be, flags (encapsulation); config: encap, ct_key, ct_guard; drop
 *      reasons too_big, encap, invalid; conntrack: keyed placement, client[].seen;
 *      ct_stats, ct_guard
 *   3  config.node_mac: the flow log's sampling rate in bits 48..63; flow_log
 *   4  conntrack: placed by the NH-keyed hash (bpf/weir_hash.h), no longer lookup3;
 *      flow_skip (new: the flow log samples by skip counts) */
#define WEIR_LAYOUT_VERSION 4

/* --- services: (vip, port, proto) -> service -------------------------------------
 * Hash map. The key is what the packet carries. The element is created once per
 * service (with its first table) and deleted when the service goes; in between
 * only `word` changes, by atomic xchg in weir_commit. */
struct svc_key {
	__be32 vip_be;
	__be16 port_be;
	u8 proto;
	u8 pad;
};

/* svc_value.word: everything a packet needs to pick a slot, in one atomic word. */
#define SVC_BASE_MASK 0xffffffffULL        /* bits 0..31: first slot of the active half */
#define SVC_SIZE_SHIFT 32                  /* bits 32..48: table size M (0 = no backends) */
#define SVC_SIZE_MASK 0x1ffffULL
#define SVC_F_HALF (1ULL << 56)            /* which half is active (for inspection) */
#define SVC_F_RANDOM (1ULL << 57)          /* strategy random: new flows pick any slot */
#define SVC_F_CLIENT_IP (1ULL << 58)       /* ClientIP affinity: new flows hash without
					    * the source port (wins over SVC_F_RANDOM) */

struct svc_value {
	u64 word;
	u32 index; /* service index: svc_stats and svc_meta slot; fixed for the element */
	u32 pad;
};

/* --- backends: backend index -> where to send -------------------------------------
 * Array. One entry per (service, address, port, MAC), allocated by the agent. An entry
 * is written whole while no table or conntrack word can reach it, then made live by
 * weir_commit storing its handle atomically: handle = gen << 20 | index (gen >= 1,
 * bumped on each allocation of the index). Tables name backends by index, conntrack
 * by handle. Retiring a backend stores handle = 0 (also atomically): conntrack hits on
 * it stop matching and the flow is picked again, while a packet that read the old
 * table just before the flip still finds the entry intact (the agent rewrites an entry
 * only one RCU grace period after retiring it).
 *
 * Two ways to reach a backend (flags):
 *   - L2 DSR (0): rewrite the destination MAC to `mac` (the backend's, on the uplink's
 *     segment; it holds the VIP on its loopback and listens on the service port);
 *   - BE_F_ENCAP: encapsulate toward the backend's node `node_be` (docs/FORWARDING.md),
 *     sent to `mac` (the next hop toward that node), carrying addr_be:port_be (the pod
 *     and its targetPort) for the node to translate to. When node_be is this node's own
 *     address the encapsulated packet goes up its own stack (XDP_PASS) to the decap. */
#define BE_INDEX_BITS 20
#define BE_INDEX_MASK ((1u << BE_INDEX_BITS) - 1)
#define BE_HANDLE_BITS 40
#define BE_HANDLE_MASK ((1ULL << BE_HANDLE_BITS) - 1)
#define BE_F_ENCAP 1u

struct backend {
	u64 handle;             /* 0 = retired / never live; written only by weir_commit */
	struct svc_key svc_key; /* the service it belongs to (checked on every use) */
	u8 mac[6];              /* L2 DSR: the backend's MAC; encap: the next hop's */
	__be16 port_be;         /* encap: the pod's port, sent in the Weir header */
	__be32 addr_be;         /* encap: the pod's address, sent in the Weir header */
	u32 svc;                /* service index, for per-service counters */
	__be32 node_be;         /* encap: the backend's node (outer destination) */
	u32 flags;              /* BE_F_* */
};

/* --- slots: the Maglev tables of every service, both halves -----------------------
 * Array of 16-slot lines (u32 backend indices), so slots cost 4 bytes each (array
 * maps round values up to 8 bytes) and a lookup is one inlined array access. Each
 * service half owns a contiguous region [base, base + M) handed out by the agent.
 * BPF_F_MMAPABLE: the agent writes regions through a shared mapping (only regions
 * no packet can reach, see above). */
#define SLOTS_PER_LINE 16
struct slot_line {
	u32 id[SLOTS_PER_LINE];
};

/* --- conntrack: 5-tuple -> backend handle ----------------------------------------------
 * A set-associative flow table in an array (the Maglev paper's is a fixed-size table
 * too): bucket = hash(5-tuple), CT_WAYS ways per 64-byte bucket (one cache line).
 * Each way is ONE 64-bit word, fingerprint << 40 | backend handle, read and written
 * with single 8-byte accesses: no reader on any CPU sees half an entry. Shared by all
 * CPUs, so a flow whose packets alternate between CPUs keeps its backend while tables
 * change. Inserting is one store (a kernel LRU-hash insert alone costs 2-3x this whole
 * new-flow path here: see nodeagent/dataplane/README.md). The bucket hash is keyed with
 * a per-node random secret (config.ct_key, pinned: it survives restarts), so nobody can
 * compute which flows share a bucket. A full bucket evicts its least recently seen way, if
 * that way has been idle for WEIR_CT_MIN_AGE ticks; when every way is busy the new flow is
 * forwarded untracked, so a flood of new flows cannot evict the flows in use. An evicted
 * flow is hashed again (same backend unless its table changed meanwhile).
 * client[] records who the way belongs to (for `weirctl bpf ct list`: the reader trusts
 * a record whose recomputed fingerprint matches the way) and when it was last seen, in
 * ticks of jiffies (written only when it changes). */
#define CT_WAYS 4
#define CT_FP_SHIFT 40

struct ct_client {
	__be32 saddr_be;
	__be16 sport_be;
	u16 seen; /* jiffies >> WEIR_CT_TICK_SHIFT, wrapping */
};
/* Ticks of 16 jiffies: 16 ms (HZ=1000) to 160 ms (HZ=100); 16 bits wrap after 17 to 175
 * minutes (a way idle that long may look recent: it is kept a little longer, no more). */
#define WEIR_CT_TICK_SHIFT 4
#define WEIR_CT_MIN_AGE 2

struct ct_bucket {
	u64 way[CT_WAYS];
	struct ct_client client[CT_WAYS];
};

/* --- config: node-wide settings read by the fast path -------------------------------
 * One element; each word is written by weir_commit with an atomic xchg. */
struct config {
	u64 node_mac; /* the uplink's MAC in the low 48 bits, byte 0 of the MAC first; bits
		       * 48..63: the flow log's sampling rate (CFG_SAMPLE_SHIFT) */
	u64 seed;     /* cluster Maglev seed (low 32 bits) */
	u64 encap;    /* encapsulation: see CFG_ENCAP_* (0 = not configured: encap backends
		       * are dropped as "encap") */
	u64 ct_key;   /* the conntrack hash's secret: random, set once when the maps are made */
	u64 ct_guard; /* at most this many new conntrack entries per second and CPU; beyond,
		       * new flows are forwarded untracked (0 = no limit) */
};
/* config.encap: this node's address (outer source), the encapsulation's UDP port and the
 * underlay MTU, in one word so a packet never sees half of a change. */
#define CFG_ENCAP_ADDR_MASK 0xffffffffULL /* bits 0..31: node address, network order */
#define CFG_ENCAP_PORT_SHIFT 32           /* bits 32..47: UDP port, network order */
#define CFG_ENCAP_MTU_SHIFT 48            /* bits 48..63: underlay MTU, host order */

/* config.node_mac bits 48..63: log 1 in N decisions to flow_log (0: off). In the word every
 * VIP packet reads already, so with sampling off the log costs one predictable branch. */
#define CFG_SAMPLE_SHIFT 48

/* --- vip filter: a 65536-bit set of hashed VIP addresses ----------------------------
 * Lets non-VIP traffic leave after one inlined array access instead of a hash lookup.
 * Bits are a superset of the VIPs (collisions only cost a conntrack/service miss). */
#define VIPF_WORDS 1024
#define VIPF_HASH_MUL 0x9E3779B1u

/* --- vips: VIP address -> number of services on it ---------------------------------
 * Exact set, read only on the rare paths with no ports (fragments, truncated L4), to
 * drop those packets only when they really are for a VIP. */

/* --- counters: per-CPU arrays of struct counters (weir_counters.h) --------------------- */

enum drop_reason {
	DROP_PARSE = 0,      /* VIP packet too short to hold its L4 ports */
	DROP_FRAGMENT = 1,   /* IPv4 fragment for a VIP whose first fragment was not seen */
	DROP_TABLE_EMPTY = 2,/* service has no backends */
	DROP_NO_BACKEND = 3, /* table slot names a backend of another service (stale map) */
	DROP_TOO_BIG = 4,    /* too big to encapsulate within the MTU (ICMP sent when DF) */
	DROP_ENCAP = 5,      /* cannot encapsulate: no room, or encapsulation not configured */
	DROP_INVALID = 6,    /* IPv4 header not sane (version, lengths) or impossible source */
	DROP_REASONS = 7,
};

/* Frames for a VIP that the fast path leaves to the kernel on purpose: not addressed
 * to this node's MAC. A veth or a bridge port in flooding mode delivers frames for
 * other MACs (a NIC filters them in hardware): after a load-balancer node fails, the
 * bridge floods the frames still sent to its MAC to every node, and forwarding them
 * would deliver them twice. They pass untouched (the kernel drops a frame for another
 * host); these count them. Not drops. Only IPv4 frames to an exact VIP are counted. */
/* What happened to conntrack (per-CPU counters; packets = events). */
enum ct_event {
	/* (new entries are counted as new_flows in svc_stats and be_stats) */
	CT_EVICT = 0,     /* an entry replaced by another flow's (a full bucket) */
	CT_GUARDED = 1,   /* a new flow forwarded untracked: the per-CPU insert rate was reached */
	CT_UNTRACKED = 2, /* a packet that makes no entry by design (TCP RST or FIN, ICMP) */
	CT_FULL = 3,      /* a new flow forwarded untracked: every way of its bucket is in use */
	CT_EVENTS = 4,
};

/* --- frags: where the fragments of a datagram go ---------------------------------------
 * LRU hash. Only a datagram's first fragment carries the ports: its backend is remembered
 * here by (source, destination, IP ID, protocol), as Cilium does, and the later fragments
 * follow it. A later fragment that finds nothing (it arrived first, or its first never
 * came) is dropped as "fragment". */
struct frag_key {
	__be32 saddr_be;
	__be32 daddr_be;
	__be16 id_be;
	u8 proto;
	u8 pad;
};

struct frag_value {
	u64 handle;   /* the backend's, as conntrack keeps it */
	u32 entropy;  /* the datagram's encapsulation entropy: every fragment takes one path */
	u32 pad;
};

/* The insert-rate guard's window, per CPU. */
struct ct_guard_state {
	u64 start_ns;
	u64 count;
};

enum pass_reason {
	PASS_OTHER_HOST = 0, /* unicast to another MAC */
	PASS_MULTICAST = 1,  /* broadcast or multicast destination MAC */
	PASS_REASONS = 2,
};

/* --- flow_log: sampled load-balancing decisions (`weirctl flows`) ---------------------
 * A ring buffer of flow_record. Sampled packets only (config.node_mac, CFG_SAMPLE_SHIFT);
 * when the reader falls behind, records are lost (the fast path never waits). */
#define WEIR_FLOW_LOG_BYTES (256 * 1024)

enum flow_how {
	FLOW_NONE = 0,     /* no backend chosen (dropped, or left to the kernel) */
	FLOW_MAGLEV = 1,   /* new flow: the Maglev slot's backend */
	FLOW_AFFINITY = 2, /* new flow, ClientIP affinity: slot by the client address only */
	FLOW_RANDOM = 3,   /* new flow, strategy random */
	FLOW_CONNTRACK = 4,/* the flow's conntrack entry */
	FLOW_FRAGMENT = 5, /* a later fragment: where its datagram's first fragment went */
};
#define FLOW_F_ICMP 1      /* an ICMP error about the flow (the record has the quoted flow) */
#define FLOW_F_FIRST_FRAG 2/* the first fragment of a datagram */
#define FLOW_F_UNTRACKED 4 /* the new flow made no conntrack entry (RST/FIN, guard, full) */

struct flow_record {
	u64 time_ns;   /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	u64 handle;    /* the backend's (0: none) */
	__be32 saddr_be;
	__be32 daddr_be;
	__be16 sport_be;
	__be16 dport_be;
	u8 proto;
	u8 how;        /* FLOW_* */
	u8 flags;      /* FLOW_F_* */
	u8 drop;       /* drop reason + 1; 0: not dropped */
	u32 slot;      /* FLOW_MAGLEV, FLOW_AFFINITY: the slot's index in the service's table */
	u32 action;    /* the XDP action */
};

/* --- agent-only maps (the fast path never reads them) ------------------------------- */
#define SVC_ID_LEN 64
struct svc_half {
	u32 base;
	u32 size;
	u8 tag[16];        /* content tag of what this half holds (0 = unknown) */
};
struct svc_meta {
	char id[SVC_ID_LEN]; /* "<vip>:<port>/<proto>" as given by the controller */
	struct svc_half half[2];
	u32 strategy;        /* 1 maglev, 2 random */
	u32 used;
};
/* Per backend index: generation of its last allocation, which halves of its service
 * list it (bit 0: half 0, bit 1: half 1). */
struct be_meta {
	u32 gen;
	u32 halves;
};

/* The fast path reads these as whole 64-bit words (one load each: atomic for readers),
 * and a conntrack bucket is one cache line. */
_Static_assert(sizeof(struct svc_key) == 8, "svc_key is compared as one u64");
_Static_assert(sizeof(struct svc_value) == 16, "svc_value layout");
_Static_assert(__builtin_offsetof(struct backend, svc_key) % 8 == 0,
	       "backend.svc_key is read as a u64");
_Static_assert(sizeof(struct backend) == 40, "backend layout");
_Static_assert(sizeof(struct ct_bucket) == 64, "a conntrack bucket is one cache line");
_Static_assert(sizeof(struct config) == 40, "config words");
_Static_assert(sizeof(struct flow_record) == 40, "flow_record layout");
_Static_assert(sizeof(struct frag_key) == 12 && sizeof(struct frag_value) == 16, "frags");

BPF_TABLE_PINNED("array", u32, u64, layout, 1, WEIR_PIN("layout"));
BPF_TABLE_PINNED("hash", struct svc_key, struct svc_value, services, WEIR_MAX_SERVICES,
		 WEIR_PIN("services"));
BPF_TABLE_PINNED("array", u32, struct backend, backends, WEIR_MAX_BACKENDS, WEIR_PIN("backends"));
BPF_TABLE_PINNED("array", u32, struct slot_line, slots, WEIR_SLOT_LINES, WEIR_PIN("slots"),
		 BPF_F_MMAPABLE);
BPF_TABLE_PINNED("array", u32, struct ct_bucket, conntrack, WEIR_CT_BUCKETS,
		 WEIR_PIN("conntrack"), BPF_F_MMAPABLE);
BPF_TABLE_PINNED("array", u32, struct config, config, 1, WEIR_PIN("config"));
BPF_TABLE_PINNED("array", u32, u64, vipf, VIPF_WORDS, WEIR_PIN("vipf"));
BPF_TABLE_PINNED("hash", __be32, u32, vips, WEIR_MAX_SERVICES, WEIR_PIN("vips"));
BPF_TABLE_PINNED("percpu_array", u32, struct counters, svc_stats, WEIR_MAX_SERVICES,
		 WEIR_PIN("svc_stats"));
BPF_TABLE_PINNED("percpu_array", u32, struct counters, be_stats, WEIR_MAX_BACKENDS,
		 WEIR_PIN("be_stats"));
BPF_TABLE_PINNED("percpu_array", u32, struct counters, drop_stats, DROP_REASONS,
		 WEIR_PIN("drop_stats"));
BPF_TABLE_PINNED("percpu_array", u32, struct counters, pass_stats, PASS_REASONS,
		 WEIR_PIN("pass_stats"));
BPF_TABLE_PINNED("percpu_array", u32, struct counters, ct_stats, CT_EVENTS, WEIR_PIN("ct_stats"));
BPF_TABLE_PINNED("lru_hash", struct frag_key, struct frag_value, frags, WEIR_FRAG_ENTRIES,
		 WEIR_PIN("frags"));
BPF_TABLE_PINNED("percpu_array", u32, struct ct_guard_state, ct_guard, 1, WEIR_PIN("ct_guard"));
/* The flow log's skip count, per CPU: VIP packets left before the next sampled one. */
BPF_TABLE_PINNED("percpu_array", u32, u64, flow_skip, 1, WEIR_PIN("flow_skip"));
/* bcc's BPF_RINGBUF_OUTPUT, pinned like the other maps. */
struct flow_log_table_t {
	int key;
	u32 leaf;
	int (*ringbuf_output)(void *, u64, u64);
	void *(*ringbuf_reserve)(u64);
	void (*ringbuf_discard)(void *, u64);
	void (*ringbuf_submit)(void *, u64);
	u32 max_entries;
};
__attribute__((section("maps/ringbuf:" WEIR_PIN("flow_log"))))
struct flow_log_table_t flow_log = {.max_entries = WEIR_FLOW_LOG_BYTES};
BPF_TABLE_PINNED("array", u32, struct svc_meta, svc_meta, WEIR_MAX_SERVICES, WEIR_PIN("svc_meta"));
BPF_TABLE_PINNED("array", u32, struct be_meta, be_meta, WEIR_MAX_BACKENDS, WEIR_PIN("be_meta"));

#endif
