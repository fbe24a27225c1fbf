/* Ethernet (802.1Q) / IPv4 / UDP and ARP, parsed and built without I/O.
 *
 * The kernel-bypass engines have no firewall or IP stack in front of them: every
 * frame of the queue reaches pkt_classify, which passes up only UDP for our MAC
 * (or a joined group's mapped MAC), our IP (or a joined group) and our port, answers
 * ARP for our IP, learns ARP replies, and counts every other frame by drop reason.
 * Addresses and ports are host byte order in this API.
 */
#ifndef AIOLOWLAT_PKT_H
#define AIOLOWLAT_PKT_H
#include <stdint.h>

enum {
    PKT_MAX_GROUPS = 32,
    PKT_ARP_SLOTS = 64,
    PKT_ETH_HLEN = 14,
    PKT_VLAN_HLEN = 4,
    PKT_IP_HLEN = 20,
    PKT_UDP_HLEN = 8,
    PKT_ARP_FRAME = 42,  /* Ethernet + ARP for IPv4, before padding to 60 */
    PKT_MIN_FRAME = 60,
};

/* Why a frame was dropped: index of pkt_ctx.drops. */
enum pkt_drop {
    PKT_DROP_SHORT,       /* shorter than its headers say */
    PKT_DROP_MAC,         /* destination MAC neither ours, broadcast (ARP) nor a joined group */
    PKT_DROP_ETHERTYPE,   /* neither IPv4 nor ARP (IPv6, LLDP, ...) */
    PKT_DROP_IP_HEADER,   /* version not 4, IHL < 5, total length inconsistent */
    PKT_DROP_IP_CHECKSUM,
    PKT_DROP_FRAGMENT,    /* MF set or a fragment offset: not reassembled */
    PKT_DROP_PROTOCOL,    /* IPv4 but not UDP */
    PKT_DROP_IP_DST,      /* not our address nor a joined group */
    PKT_DROP_UDP_LENGTH,
    PKT_DROP_UDP_CHECKSUM,
    PKT_DROP_PORT,        /* UDP to another port */
    PKT_DROP_ARP,         /* malformed ARP or ARP for another host */
    PKT_DROP_VLAN,        /* tagged with a VLAN other than ours */
    PKT_DROP_COUNT
};

/* What pkt_classify found. */
enum pkt_verdict {
    PKT_DROPPED = -1,
    PKT_UDP = 0,          /* a datagram for us: see struct pkt_udp */
    PKT_REPLY = 1,        /* an ARP request for our IP: the reply frame is written to reply */
    PKT_ARP_LEARNED = 2,  /* an ARP reply (or request) taught us a neighbour */
};

struct pkt_arp_entry {
    uint32_t ip;
    uint8_t mac[6];
    uint8_t used;
    uint8_t is_static;  /* never replaced by what the wire says */
};

struct pkt_ctx {
    uint8_t mac[6];
    uint16_t vlan;       /* 802.1Q VLAN id for RX filter and TX tag; 0: untagged */
    uint32_t ip;
    uint16_t port;       /* UDP port we receive on; 0: any */
    uint16_t ngroups;
    uint8_t verify_udp_checksum;  /* 1 by default; a 0 checksum (none) is always accepted */
    uint32_t groups[PKT_MAX_GROUPS];
    struct pkt_arp_entry arp[PKT_ARP_SLOTS];
    uint32_t arp_next;   /* the slot a new dynamic entry takes when the table is full */
    uint64_t drops[PKT_DROP_COUNT];
    uint64_t rx_udp, arp_replies, arp_learned;
};

struct pkt_udp {
    const uint8_t *payload;
    uint32_t len;
    uint32_t src_ip, dst_ip;
    uint16_t src_port, dst_port;
};

void pkt_init(struct pkt_ctx *c, const uint8_t *mac, uint32_t ip, uint16_t port);
int pkt_join(struct pkt_ctx *c, uint32_t group);   /* 0, or -1: not multicast / table full */
int pkt_leave(struct pkt_ctx *c, uint32_t group);  /* 0, or -1: not joined */

/* Classify one received frame (see enum pkt_verdict); reply needs PKT_MIN_FRAME bytes. */
int pkt_classify(struct pkt_ctx *c, const uint8_t *frame, uint32_t len, struct pkt_udp *udp,
                 uint8_t *reply, uint32_t *reply_len);

/* Build Ethernet/IPv4/UDP with both checksums into frame (cap bytes); returns the
 * frame length or -1 when it does not fit. */
int pkt_build_udp(const struct pkt_ctx *c, uint8_t *frame, uint32_t cap, const uint8_t *dst_mac,
                  uint32_t dst_ip, uint16_t src_port, uint16_t dst_port, const uint8_t *payload,
                  uint32_t len);

/* An ARP request for target_ip (broadcast); returns the frame length (PKT_MIN_FRAME+). */
int pkt_build_arp_request(const struct pkt_ctx *c, uint8_t *frame, uint32_t target_ip);

/* The MAC to send to ip: a multicast group's mapped MAC, broadcast for
 * 255.255.255.255, else the ARP table's entry. 1 when known, 0 when not. */
int pkt_resolve(const struct pkt_ctx *c, uint32_t ip, uint8_t *mac);

/* Add or replace a neighbour; a static one is never overwritten by the wire. */
void pkt_arp_set(struct pkt_ctx *c, uint32_t ip, const uint8_t *mac, int is_static);

/* The Internet checksum (RFC 1071) of data, folded, not complemented, added to sum. */
uint32_t pkt_csum_add(uint32_t sum, const uint8_t *data, uint32_t len);

#endif
