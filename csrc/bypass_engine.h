/* What an engine driver (xsk_engine.c, dpdk_engine.c) and the shared core
 * (bypass_core.c) see of each other. Internal: not part of the cffi API. */
#ifndef AIOLOWLAT_BYPASS_ENGINE_H
#define AIOLOWLAT_BYPASS_ENGINE_H
#include <pthread.h>
#include <stdatomic.h>

#include "bypass_core.h"
#include "pkt.h"
#include "spsc.h"

enum { BP_BURST = 64, BP_CTRL_MAX = 8, BP_PEND_MAX = 32 };

struct bp_engine;

struct bp_ops {
    const char *name;
    int (*setup)(struct bp_engine *e);      /* 0, or -1 with e->error set */
    int (*poll)(struct bp_engine *e);       /* one RX and TX round: frames moved */
    void (*wait)(struct bp_engine *e, int timeout_us);  /* idle: until RX, tx_efd or timeout */
    void (*teardown)(struct bp_engine *e);
    void (*stats)(struct bp_engine *e, struct bp_stats *out);  /* the driver's counters */
};

/* A datagram waiting for its destination's ARP reply. */
struct bp_pending {
    uint32_t ip, len;
    uint16_t port, src_port;
    int64_t first_ns, request_ns;
    uint8_t *data;
};

/* An endpoint: its address filter and its ring to the loop. The loop fills a free slot,
 * then asks the engine to route to it (ctl_op), so only the engine thread reads the
 * filter and the routing list while it runs. */
struct bp_endpoint {
    struct spsc rx;                  /* engine -> loop */
    _Alignas(SPSC_LINE) _Atomic int armed;  /* the loop waits on efd */
    int efd;
    uint32_t ip;                     /* bound address: the engine's own, or a group */
    uint16_t port, ngroups;
    uint32_t groups[BP_EP_GROUPS];
    int open;                        /* the loop's: 0 free, 1 open, 2 unusable until stop */
    _Alignas(SPSC_LINE) struct bp_ep_stats st;  /* the engine's, per datagram: own line */
};

enum { BP_CTL_NONE, BP_CTL_ADD, BP_CTL_REMOVE };

struct bp_engine {
    struct bp_config cfg;
    const struct bp_ops *ops;
    void *drv;                       /* the driver's state */
    uint32_t frame_size;             /* set by setup: the largest frame TX can build */
    struct pkt_ctx pkt;
    struct spsc tx;                  /* loop -> engine */
    int tx_efd;
    struct bp_endpoint eps[BP_MAX_ENDPOINTS];
    int routes[BP_MAX_ENDPOINTS], nroutes;  /* engine thread: the endpoints it routes to */
    uint32_t routed;                 /* engine thread: the same as a bit set */
    uint32_t touched;                /* engine thread: endpoints written in this burst */
    _Alignas(SPSC_LINE) _Atomic int ctl_op;  /* BP_CTL_*: set by the loop, cleared when done */
    int ctl_ep;
    _Alignas(SPSC_LINE) _Atomic int tx_armed;  /* the engine sleeps: write tx_efd */
    _Atomic int stop;
    pthread_t thread;
    int has_thread, setup_rc, setup_done_efd;
    struct bp_stats st;
    uint8_t ctrl[BP_CTRL_MAX][PKT_MIN_FRAME + PKT_VLAN_HLEN];  /* ARP replies and requests */
    uint32_t ctrl_len[BP_CTRL_MAX], ctrl_head, ctrl_n;
    struct bp_pending pend[BP_PEND_MAX];
    uint32_t pend_head, pend_n;
    uint8_t *pend_buf;
    char error[BP_ERROR_LEN];
};

/* For drivers: after setup learned the MAC, set up filtering (groups, static ARP). */
void bp_init_packets(struct bp_engine *e, const uint8_t *mac);
/* One received frame: classify, push a datagram or queue an ARP reply. */
void bp_rx_frame(struct bp_engine *e, const uint8_t *frame, uint32_t len, int64_t rx_ns);
/* After a burst: publish to the loop and wake it when it waits. */
void bp_rx_done(struct bp_engine *e);
/* Build the next frame to send into frame (cap bytes): ARP first, then datagrams;
 * 0 when nothing is to be sent now. */
uint32_t bp_tx_next(struct bp_engine *e, uint8_t *frame, uint32_t cap, int64_t now_ns);
/* Nothing to send: no ARP frame, no datagram parked or queued (checked without a clock). */
int bp_tx_idle(struct bp_engine *e);
int bp_fail(struct bp_engine *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int64_t bp_now_ns(int clock);
/* XDP programs (xsk_engine.c), for both drivers. The id of the program attached to
 * ifindex, 0 when none; its name into name, and its XDP_ATTACHED_* mode into *mode. */
uint32_t bp_xdp_attached(int ifindex, char *name, size_t len, uint8_t *mode);
/* Detach the XDP program a process of ours that died without stopping left (ours, or
 * libxdp's XSK program): 1 when detached, 0 when none, -1 when the program is someone
 * else's, -2 when detaching failed. */
int bp_xdp_detach_stale(int ifindex);

extern const struct bp_ops bp_xsk_ops, bp_dpdk_ops;

#endif
