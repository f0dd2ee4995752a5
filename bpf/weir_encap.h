/* The encapsulation between a load-balancer node and a backend's node (docs/FORWARDING.md).
 *
 *   outer IPv4 (20 bytes, no options): LB node -> backend's node, protocol UDP, TTL 64,
 *       ID and DF copied from the inner packet
 *   UDP (8 bytes): source port 0xc000 | 14 bits of the inner flow's hash (per-flow entropy
 *       for the fabric's ECMP and the receiver's RSS), destination port the configured
 *       one, checksum 0
 *   Weir header (8 bytes for an IPv4 backend):
 *       u8 version (1), u8 flags (WEIR_ENC_F_*), be16 backend port, backend address
 *   inner: the client's IPv4 packet exactly as it arrived at the load balancer
 *
 * The backend's node recovers the VIP:port from the inner packet and the chosen backend
 * (the pod and its targetPort) from the Weir header. An IPv6 backend address will be 16
 * bytes under WEIR_ENC_F_IPV6 (a 20-byte header); an IPv6 inner packet is told by its own
 * version field.
 */
#ifndef WEIR_ENCAP_H
#define WEIR_ENCAP_H

#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#define WEIR_ENC_VERSION 1
#define WEIR_ENC_F_IPV6 1 /* the backend address is IPv6 (16 bytes): not sent yet */

struct weir_enc_hdr {
	u8 version;
	u8 flags;
	__be16 port_be;
	__be32 addr_be;
};

#define WEIR_ENC_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct weir_enc_hdr))
#define WEIR_ENC_SPORT_BASE 0xc000
#define WEIR_ENC_SPORT_MASK 0x3fff
#define WEIR_IP_DF 0x4000

/* The ones' complement sum of an option-less IPv4 header, folded: its checksum field. */
static __always_inline __sum16 weir_ipv4_csum(const struct iphdr *ip)
{
	const __be16 *w = (const __be16 *)ip;
	u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(struct iphdr) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__sum16)~sum;
}

#endif
