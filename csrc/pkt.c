/* Ethernet / IPv4 / UDP and ARP parse and build: see pkt.h. Pure functions, no I/O. */
#include "pkt.h"

#include <string.h>

enum {
    ETH_IPV4 = 0x0800, ETH_ARP = 0x0806, ETH_VLAN = 0x8100,
    IP_UDP = 17, ARP_REQUEST = 1, ARP_REPLY = 2,
};

static const uint8_t BROADCAST[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void wr16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }
static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = (v >> 16) & 0xff; p[2] = (v >> 8) & 0xff; p[3] = v & 0xff;
}

static int is_multicast_ip(uint32_t ip) { return (ip >> 28) == 0xe; }

static void group_mac(uint32_t group, uint8_t *mac)
{
    mac[0] = 0x01; mac[1] = 0x00; mac[2] = 0x5e;
    mac[3] = (group >> 16) & 0x7f; mac[4] = (group >> 8) & 0xff; mac[5] = group & 0xff;
}

uint32_t pkt_csum_add(uint32_t sum, const uint8_t *data, uint32_t len)
{
    uint64_t s = sum;
    uint32_t i = 0;
    for (; i + 1 < len; i += 2)
        s += rd16(data + i);
    if (i < len)
        s += (uint32_t)data[i] << 8;
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint32_t)s;
}

static uint32_t pseudo_header_sum(uint32_t src, uint32_t dst, uint32_t udp_len)
{
    uint64_t s = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + IP_UDP + udp_len;
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint32_t)s;
}

void pkt_init(struct pkt_ctx *c, const uint8_t *mac, uint32_t ip, uint16_t port)
{
    memset(c, 0, sizeof *c);
    memcpy(c->mac, mac, 6);
    c->ip = ip;
    c->port = port;
    c->verify_udp_checksum = 1;
}

static int group_index(const struct pkt_ctx *c, uint32_t group)
{
    for (int i = 0; i < c->ngroups; i++)
        if (c->groups[i] == group)
            return i;
    return -1;
}

int pkt_join(struct pkt_ctx *c, uint32_t group)
{
    if (!is_multicast_ip(group))
        return -1;
    if (group_index(c, group) >= 0)
        return 0;
    if (c->ngroups >= PKT_MAX_GROUPS)
        return -1;
    c->groups[c->ngroups++] = group;
    return 0;
}

int pkt_leave(struct pkt_ctx *c, uint32_t group)
{
    int i = group_index(c, group);
    if (i < 0)
        return -1;
    c->groups[i] = c->groups[--c->ngroups];
    return 0;
}

static int mac_is_ours(const struct pkt_ctx *c, const uint8_t *dst)
{
    if (memcmp(dst, c->mac, 6) == 0)
        return 1;
    if (dst[0] == 0x01 && dst[1] == 0x00 && dst[2] == 0x5e) {
        uint8_t mapped[6];
        for (int i = 0; i < c->ngroups; i++) {
            group_mac(c->groups[i], mapped);
            if (memcmp(dst, mapped, 6) == 0)
                return 1;
        }
    }
    return 0;
}

static struct pkt_arp_entry *arp_find(const struct pkt_ctx *c, uint32_t ip)
{
    for (int i = 0; i < PKT_ARP_SLOTS; i++)
        if (c->arp[i].used && c->arp[i].ip == ip)
            return (struct pkt_arp_entry *)&c->arp[i];
    return NULL;
}

void pkt_arp_set(struct pkt_ctx *c, uint32_t ip, const uint8_t *mac, int is_static)
{
    struct pkt_arp_entry *e = arp_find(c, ip);
    if (e && e->is_static && !is_static)
        return;
    if (!e) {
        for (int i = 0; i < PKT_ARP_SLOTS && !e; i++)
            if (!c->arp[i].used)
                e = &c->arp[i];
        /* Full: replace dynamic entries round-robin (a static one is never evicted). */
        for (int n = 0; !e && n < PKT_ARP_SLOTS; n++) {
            struct pkt_arp_entry *cand = &c->arp[c->arp_next++ % PKT_ARP_SLOTS];
            if (!cand->is_static)
                e = cand;
        }
        if (!e)
            return;
    }
    e->ip = ip;
    memcpy(e->mac, mac, 6);
    e->used = 1;
    e->is_static = is_static ? 1 : 0;
}

int pkt_resolve(const struct pkt_ctx *c, uint32_t ip, uint8_t *mac)
{
    if (is_multicast_ip(ip)) {
        group_mac(ip, mac);
        return 1;
    }
    if (ip == 0xffffffffu) {
        memcpy(mac, BROADCAST, 6);
        return 1;
    }
    const struct pkt_arp_entry *e = arp_find(c, ip);
    if (!e)
        return 0;
    memcpy(mac, e->mac, 6);
    return 1;
}

static int drop(struct pkt_ctx *c, enum pkt_drop why)
{
    c->drops[why]++;
    return PKT_DROPPED;
}

/* Ethernet header (with our VLAN tag when we have one) for ethertype; returns its length. */
static uint32_t put_eth(const struct pkt_ctx *c, uint8_t *f, const uint8_t *dst, uint16_t type)
{
    memcpy(f, dst, 6);
    memcpy(f + 6, c->mac, 6);
    if (!c->vlan) {
        wr16(f + 12, type);
        return PKT_ETH_HLEN;
    }
    wr16(f + 12, ETH_VLAN);
    wr16(f + 14, c->vlan & 0x0fff);
    wr16(f + 16, type);
    return PKT_ETH_HLEN + PKT_VLAN_HLEN;
}

static uint32_t put_arp(const struct pkt_ctx *c, uint8_t *f, uint16_t op, const uint8_t *eth_dst,
                        const uint8_t *target_mac, uint32_t target_ip)
{
    uint32_t off = put_eth(c, f, eth_dst, ETH_ARP);
    uint8_t *a = f + off;
    wr16(a, 1);             /* hardware: Ethernet */
    wr16(a + 2, ETH_IPV4);  /* protocol: IPv4 */
    a[4] = 6;
    a[5] = 4;
    wr16(a + 6, op);
    memcpy(a + 8, c->mac, 6);
    wr32(a + 14, c->ip);
    memcpy(a + 18, target_mac, 6);
    wr32(a + 24, target_ip);
    uint32_t len = off + 28;
    if (len < PKT_MIN_FRAME) {
        memset(f + len, 0, PKT_MIN_FRAME - len);
        len = PKT_MIN_FRAME;
    }
    return len;
}

int pkt_build_arp_request(const struct pkt_ctx *c, uint8_t *frame, uint32_t target_ip)
{
    static const uint8_t unknown[6];
    return (int)put_arp(c, frame, ARP_REQUEST, BROADCAST, unknown, target_ip);
}

static int classify_arp(struct pkt_ctx *c, const uint8_t *a, uint32_t len, uint8_t *reply,
                        uint32_t *reply_len)
{
    if (len < 28)
        return drop(c, PKT_DROP_SHORT);
    if (rd16(a) != 1 || rd16(a + 2) != ETH_IPV4 || a[4] != 6 || a[5] != 4)
        return drop(c, PKT_DROP_ARP);
    uint16_t op = rd16(a + 6);
    const uint8_t *sender_mac = a + 8;
    uint32_t sender_ip = rd32(a + 14), target_ip = rd32(a + 24);
    if (target_ip != c->ip || (op != ARP_REQUEST && op != ARP_REPLY) || sender_ip == 0 ||
        (sender_mac[0] & 1))
        return drop(c, PKT_DROP_ARP);  /* for another host, a probe, or nonsense */
    pkt_arp_set(c, sender_ip, sender_mac, 0);
    c->arp_learned++;
    if (op == ARP_REPLY)
        return PKT_ARP_LEARNED;
    *reply_len = put_arp(c, reply, ARP_REPLY, sender_mac, sender_mac, sender_ip);
    c->arp_replies++;
    return PKT_REPLY;
}

int pkt_classify(struct pkt_ctx *c, const uint8_t *f, uint32_t len, struct pkt_udp *udp,
                 uint8_t *reply, uint32_t *reply_len)
{
    if (len < PKT_ETH_HLEN)
        return drop(c, PKT_DROP_SHORT);
    uint32_t off = PKT_ETH_HLEN;
    uint16_t type = rd16(f + 12);
    uint16_t vlan = 0;
    if (type == ETH_VLAN) {
        if (len < PKT_ETH_HLEN + PKT_VLAN_HLEN)
            return drop(c, PKT_DROP_SHORT);
        vlan = rd16(f + 14) & 0x0fff;
        type = rd16(f + 16);
        off += PKT_VLAN_HLEN;
    }
    int broadcast = memcmp(f, BROADCAST, 6) == 0;
    if (!(broadcast && type == ETH_ARP) && !mac_is_ours(c, f))
        return drop(c, PKT_DROP_MAC);
    if (vlan != c->vlan)
        return drop(c, PKT_DROP_VLAN);
    if (type == ETH_ARP)
        return classify_arp(c, f + off, len - off, reply, reply_len);
    if (type != ETH_IPV4)
        return drop(c, PKT_DROP_ETHERTYPE);

    const uint8_t *ip = f + off;
    uint32_t avail = len - off;
    if (avail < PKT_IP_HLEN)
        return drop(c, PKT_DROP_SHORT);
    uint32_t ihl = (uint32_t)(ip[0] & 0x0f) * 4, total = rd16(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < PKT_IP_HLEN || total < ihl)
        return drop(c, PKT_DROP_IP_HEADER);
    if (total > avail)
        return drop(c, PKT_DROP_SHORT);  /* bytes after total are Ethernet padding */
    if (pkt_csum_add(0, ip, ihl) != 0xffff)
        return drop(c, PKT_DROP_IP_CHECKSUM);
    if (rd16(ip + 6) & 0x3fff)
        return drop(c, PKT_DROP_FRAGMENT);
    if (ip[9] != IP_UDP)
        return drop(c, PKT_DROP_PROTOCOL);
    uint32_t src = rd32(ip + 12), dst = rd32(ip + 16);
    if (dst != c->ip && !(is_multicast_ip(dst) && group_index(c, dst) >= 0))
        return drop(c, PKT_DROP_IP_DST);

    const uint8_t *u = ip + ihl;
    uint32_t ulen = rd16(u + 4);
    if (total - ihl < PKT_UDP_HLEN || ulen < PKT_UDP_HLEN || ulen > total - ihl)
        return drop(c, PKT_DROP_UDP_LENGTH);
    uint16_t dport = rd16(u + 2);
    if (c->port && dport != c->port)
        return drop(c, PKT_DROP_PORT);
    if (c->verify_udp_checksum && rd16(u + 6) != 0 &&
        pkt_csum_add(pseudo_header_sum(src, dst, ulen), u, ulen) != 0xffff)
        return drop(c, PKT_DROP_UDP_CHECKSUM);

    udp->payload = u + PKT_UDP_HLEN;
    udp->len = ulen - PKT_UDP_HLEN;
    udp->src_ip = src;
    udp->dst_ip = dst;
    udp->src_port = rd16(u);
    udp->dst_port = dport;
    c->rx_udp++;
    return PKT_UDP;
}

int pkt_build_udp(const struct pkt_ctx *c, uint8_t *f, uint32_t cap, const uint8_t *dst_mac,
                  uint32_t dst_ip, uint16_t src_port, uint16_t dst_port, const uint8_t *payload,
                  uint32_t len)
{
    uint32_t eth = PKT_ETH_HLEN + (c->vlan ? PKT_VLAN_HLEN : 0);
    uint32_t frame = eth + PKT_IP_HLEN + PKT_UDP_HLEN + len;
    if (len > 0xffff - PKT_IP_HLEN - PKT_UDP_HLEN || frame > cap ||
        (frame < PKT_MIN_FRAME && cap < PKT_MIN_FRAME))
        return -1;
    put_eth(c, f, dst_mac, ETH_IPV4);
    uint8_t *ip = f + eth, *u = ip + PKT_IP_HLEN;
    ip[0] = 0x45;
    ip[1] = 0;
    wr16(ip + 2, (uint16_t)(PKT_IP_HLEN + PKT_UDP_HLEN + len));
    wr16(ip + 4, 0);
    wr16(ip + 6, 0x4000);  /* don't fragment: the id field is then unused (RFC 6864) */
    ip[8] = is_multicast_ip(dst_ip) ? 1 : 64;
    ip[9] = IP_UDP;
    wr16(ip + 10, 0);
    wr32(ip + 12, c->ip);
    wr32(ip + 16, dst_ip);
    wr16(ip + 10, (uint16_t)~pkt_csum_add(0, ip, PKT_IP_HLEN));

    uint32_t ulen = PKT_UDP_HLEN + len;
    wr16(u, src_port);
    wr16(u + 2, dst_port);
    wr16(u + 4, (uint16_t)ulen);
    wr16(u + 6, 0);
    memcpy(u + PKT_UDP_HLEN, payload, len);
    uint16_t sum = (uint16_t)~pkt_csum_add(pseudo_header_sum(c->ip, dst_ip, ulen), u, ulen);
    wr16(u + 6, sum ? sum : 0xffff);  /* 0 means "no checksum" in UDP over IPv4 */
    if (frame < PKT_MIN_FRAME) {
        memset(f + frame, 0, PKT_MIN_FRAME - frame);
        frame = PKT_MIN_FRAME;
    }
    return (int)frame;
}
