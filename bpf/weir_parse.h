/* Packet parsing for the Weir fast path: Ethernet, one 802.1Q/802.1ad tag, IPv4.
 * Bounded, no loops; every access is checked against data_end. */
#ifndef WEIR_PARSE_H
#define WEIR_PARSE_H

/* The uapi headers, not the kernel's internal <linux/...> ones bcc also finds: those pull in
 * much of the kernel (skbuff.h, ...), which made compiling 1.7x (XDP) to 3x (tc) as long for
 * the same bytecode. */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* Not in the uapi headers (linux/if_vlan.h is the kernel's own). */
struct weir_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* L4 ports: the first four bytes of TCP and UDP headers alike. */
struct weir_ports {
	__be16 src;
	__be16 dst;
};

/* The IPv4 header after Ethernet and at most one VLAN tag, or NULL when the frame
 * is not IPv4 (the caller passes it on untouched). */
static __always_inline struct iphdr *weir_parse_ipv4(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	void *l3 = eth + 1;
	__be16 proto;

	if (l3 > data_end)
		return NULL;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct weir_vlan_hdr *vlan = l3;

		if ((void *)(vlan + 1) > data_end)
			return NULL;
		proto = vlan->encap_proto;
		l3 = vlan + 1;
	}
	if (proto != bpf_htons(ETH_P_IP))
		return NULL;
	if (l3 + sizeof(struct iphdr) > data_end)
		return NULL;
	return l3;
}

#define WEIR_IP_FRAG_MASK 0x3fff   /* MF flag + fragment offset */
#define WEIR_IP_OFFSET_MASK 0x1fff /* fragment offset: not 0 in every fragment but the first */

#endif
