/* Kernel-bypass UDP engines (AF_XDP, DPDK) behind one API for the asyncio side.
 *
 * An engine owns one NIC queue and one IPv4 address. Its thread (pinned to cfg.core)
 * polls RX in bursts, parses and filters in C (pkt.h), and routes each datagram by
 * (destination address, port) to one of its endpoints (bp_open: an A line on one group,
 * a B line on another, a request socket on the unicast address, ...), each with an
 * SPSC ring that the loop drains with bp_recv. bp_send pushes into the engine's TX
 * ring (one producer: every endpoint of an engine is used from one thread, the loop's),
 * which the engine turns into frames (ARP resolved, checksums built). The loop learns
 * of new datagrams from an endpoint's eventfd (bp_arm, then wait) or by polling bp_recv.
 * With cfg.threaded = 0 there is no engine thread: the caller runs bp_poll itself
 * (run-to-completion on the loop's core, for machines with too few cores).
 */
#ifndef AIOLOWLAT_BYPASS_CORE_H
#define AIOLOWLAT_BYPASS_CORE_H
#include <stdint.h>

enum {
    BP_MAX_STATIC_ARP = 16,
    BP_ERROR_LEN = 512,
    BP_XDP_AUTO = 0,    /* native (driver) XDP, else generic (SKB) */
    BP_XDP_SKB = 1,
    BP_XDP_NATIVE = 2,
    BP_KIND_XSK = 1,
    BP_KIND_DPDK = 2,
    BP_MAX_ENDPOINTS = 16,
    BP_EP_GROUPS = 8,   /* groups per endpoint (the engine joins at most 32 in all) */
};

struct bp_config {
    char ifname[32];
    char netns[128];       /* a /run/netns/NAME path to enter on the engine thread; "": ours */
    uint32_t queue;
    int core;              /* CPU the engine thread is pinned to; -1: not pinned */
    int fifo_priority;     /* SCHED_FIFO priority for the engine thread; 0: normal */
    int busy_poll;         /* 1: spin; 0: sleep in poll() when idle */
    int threaded;          /* 1: an engine thread; 0: the caller calls bp_poll */
    uint8_t mac[6];        /* all zero: the interface's MAC */
    uint16_t vlan;
    uint32_t ip;           /* host order */
    uint32_t narp;
    uint32_t arp_ip[16];
    uint8_t arp_mac[16][6];
    uint32_t ring_slots;   /* per direction, a power of two */
    uint32_t slot_size;    /* bytes per ring slot (payload + 24) */
    int xdp_mode;          /* BP_XDP_* */
    int verify_udp_checksum;
    char eal_args[512];    /* DPDK: EAL arguments, space separated (first engine only) */
    char vdev[256];        /* DPDK: driver and args, e.g. "net_af_packet,iface=eth1" */
};

struct bp_stats {
    uint64_t rx_frames, rx_udp, rx_ring_full, rx_truncated;
    uint64_t tx_frames, tx_ring_full, tx_unresolved, tx_errors, tx_kicks;
    uint64_t arp_requests, arp_replies, arp_learned;
    uint64_t polls, wakeups;
    uint64_t drops[13];    /* by enum pkt_drop */
    int64_t stale_xdp_cleared;
    int64_t xdp_mode;      /* the mode attached: BP_XDP_SKB or BP_XDP_NATIVE (dpdk: of
                              net_af_xdp; 0 on net_af_packet or another vdev) */
    int64_t busy_poll_sockopt;  /* SO_PREFER_BUSY_POLL accepted */
    int64_t start_retries;      /* EBUSY retries while creating the XSK */
    uint64_t nic_rx_dropped;    /* lost before the engine saw them: the XSK's RX ring full
                                   or no fill frame (XDP_STATISTICS), DPDK's imissed + ierrors
                                   + rx_nombuf and what its PMD leaves out (net_af_xdp's XSK
                                   RX ring full, net_af_packet's PACKET_STATISTICS drops) */
};

/* One endpoint's share: what its ring received, lost to overflow or to its size. */
struct bp_ep_stats {
    uint64_t rx_udp, rx_ring_full, rx_truncated, wakeups;
};

struct bp_engine;

void bp_config_init(struct bp_config *cfg);
/* Start an engine of kind BP_KIND_*; NULL on failure with a message naming the fix. */
struct bp_engine *bp_start(int kind, const struct bp_config *cfg, char *error);
/* Stop its thread, release the queue, XDP program / DPDK port and memory. */
void bp_stop(struct bp_engine *e);
/* One RX + TX round on the calling thread (cfg.threaded = 0); returns frames moved. */
int bp_poll(struct bp_engine *e);
/* Busy-poll mode, between loop iterations: poll (cfg.threaded = 0) or watch the rings
 * until a datagram waits for an endpoint (1) or budget_ns passed (0), in C: no Python
 * call and no system call per turn. */
int bp_spin(struct bp_engine *e, int64_t budget_ns);

/* Open an endpoint for UDP to ip:port or group:port for each of groups (host order);
 * its id, or -1 with error (address taken, too many endpoints or groups, no memory). */
int bp_open(struct bp_engine *e, uint32_t ip, uint16_t port, const uint32_t *groups,
            int ngroups, char *error);
/* Stop routing to endpoint ep (the engine acknowledges first), free its ring. */
void bp_close(struct bp_engine *e, int ep);

/* Up to max datagrams of endpoint ep into slots of `slot` bytes of buf; per datagram its
 * length (-1: longer than the slot, dropped and counted), peer address and receive time. */
int bp_recv(struct bp_engine *e, int ep, uint8_t *buf, uint32_t slot, int max, int32_t *lens,
            uint32_t *ips, uint16_t *ports, int64_t *stamps);
/* Queue one datagram to ip:port from src_port; 0, -EMSGSIZE or -ENOBUFS (ring full). */
int bp_send(struct bp_engine *e, uint32_t ip, uint16_t port, uint16_t src_port,
            const uint8_t *data, uint32_t len);
/* Ask for an eventfd wake-up on ep's next datagram; 1 when one is already waiting. */
int bp_arm(struct bp_engine *e, int ep);
int bp_eventfd(struct bp_engine *e, int ep);  /* readable after bp_arm when datagrams came */
void bp_read_stats(struct bp_engine *e, struct bp_stats *out);
void bp_read_ep_stats(struct bp_engine *e, int ep, struct bp_ep_stats *out);
void bp_local(struct bp_engine *e, uint8_t *mac, uint32_t *ip);
int bp_max_payload(struct bp_engine *e);

#endif
