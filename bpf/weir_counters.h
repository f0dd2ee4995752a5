/* The counters every Weir BPF program keeps: per-CPU array values, added to without atomics
 * (each CPU owns its copy), summed by readers. */
#ifndef WEIR_COUNTERS_H
#define WEIR_COUNTERS_H

struct counters {
	u64 packets;
	u64 bytes;
	u64 new_flows;
};

_Static_assert(sizeof(struct counters) == 24, "counters layout");

static __always_inline void weir_count(struct counters *c, u64 bytes, u64 new_flow)
{
	if (c) {
		c->packets++;
		c->bytes += bytes;
		c->new_flows += new_flow;
	}
}

#endif
