/* The engine-independent half of the bypass engines: thread, pinning, network
 * namespace, the two SPSC rings with their eventfd wake-ups, and ARP-resolved TX. */
#define _GNU_SOURCE
#include "bypass_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(((struct bp_stats *)0)->drops) / sizeof(uint64_t) == PKT_DROP_COUNT,
               "bp_stats.drops must have one counter per drop reason");

enum {
    ARP_RETRY_NS = 200 * 1000 * 1000,    /* re-ask an unanswered neighbour */
    ARP_GIVE_UP_NS = 1000 * 1000 * 1000, /* then drop what waits for it, counted */
    IDLE_SPINS = 256,                    /* empty polls before sleeping (busy_poll = 0) */
    IDLE_WAIT_US = 1000,
};

int64_t bp_now_ns(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int bp_fail(struct bp_engine *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->error, sizeof e->error, fmt, ap);
    va_end(ap);
    return -1;
}

void bp_config_init(struct bp_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->core = -1;
    cfg->busy_poll = 1;
    cfg->threaded = 1;
    cfg->ring_slots = 4096;
    cfg->slot_size = 2048;
    cfg->verify_udp_checksum = 1;
}

void bp_init_packets(struct bp_engine *e, const uint8_t *mac)
{
    const struct bp_config *c = &e->cfg;
    pkt_init(&e->pkt, mac, c->ip, 0);  /* any port: the endpoints' routes filter ports */
    e->pkt.vlan = c->vlan;
    e->pkt.verify_udp_checksum = (uint8_t)(c->verify_udp_checksum != 0);
    for (uint32_t i = 0; i < c->narp && i < BP_MAX_STATIC_ARP; i++)
        pkt_arp_set(&e->pkt, c->arp_ip[i], c->arp_mac[i], 1);
}

/* -- RX: engine -> loop -- */

static void queue_ctrl(struct bp_engine *e, const uint8_t *frame, uint32_t len)
{
    if (e->ctrl_n == BP_CTRL_MAX || len > sizeof e->ctrl[0]) {
        e->st.tx_errors++;
        return;
    }
    uint32_t i = (e->ctrl_head + e->ctrl_n++) % BP_CTRL_MAX;
    memcpy(e->ctrl[i], frame, len);
    e->ctrl_len[i] = len;
}

static int ep_accepts(const struct bp_endpoint *ep, uint32_t dst)
{
    if (dst == ep->ip)
        return 1;
    for (int g = 0; g < ep->ngroups; g++)
        if (ep->groups[g] == dst)
            return 1;
    return 0;
}

/* The endpoint for a datagram to dst:port, or -1. */
static int route(const struct bp_engine *e, uint32_t dst, uint16_t port)
{
    for (int i = 0; i < e->nroutes; i++) {
        const struct bp_endpoint *ep = &e->eps[e->routes[i]];
        if (ep->port == port && ep_accepts(ep, dst))
            return e->routes[i];
    }
    return -1;
}

void bp_rx_frame(struct bp_engine *e, const uint8_t *frame, uint32_t len, int64_t rx_ns)
{
    struct pkt_udp u;
    uint8_t reply[PKT_MIN_FRAME + PKT_VLAN_HLEN];
    uint32_t reply_len = 0;
    e->st.rx_frames++;
    int verdict = pkt_classify(&e->pkt, frame, len, &u, reply, &reply_len);
    if (verdict == PKT_REPLY) {
        queue_ctrl(e, reply, reply_len);
        return;
    }
    if (verdict != PKT_UDP)
        return;
    int id = route(e, u.dst_ip, u.dst_port);
    if (id < 0) {
        e->pkt.drops[PKT_DROP_PORT]++;  /* no endpoint for this address and port */
        return;
    }
    struct bp_endpoint *ep = &e->eps[id];
    e->st.rx_udp++;
    ep->st.rx_udp++;
    if (u.len > spsc_data_size(&ep->rx)) {
        e->st.rx_truncated++;
        ep->st.rx_truncated++;
        return;
    }
    struct spsc_slot *s = spsc_reserve(&ep->rx);
    if (!s) {
        e->st.rx_ring_full++;  /* the loop is behind: drop, count, never wait */
        ep->st.rx_ring_full++;
        return;
    }
    s->len = u.len;
    s->ip = u.src_ip;
    s->port = u.src_port;
    s->local_ip = u.dst_ip;
    s->local_port = u.dst_port;
    s->ns = rx_ns;
    memcpy(s->data, u.payload, u.len);
    e->touched |= 1u << id;
}

void bp_rx_done(struct bp_engine *e)
{
    uint32_t touched = e->touched;
    if (!touched)
        return;
    e->touched = 0;
    for (uint32_t t = touched; t; t &= t - 1)
        spsc_publish(&e->eps[__builtin_ctz(t)].rx);
    atomic_thread_fence(memory_order_seq_cst);  /* pairs with bp_arm's fence */
    for (uint32_t t = touched; t; t &= t - 1) {
        struct bp_endpoint *ep = &e->eps[__builtin_ctz(t)];
        if (atomic_load_explicit(&ep->armed, memory_order_relaxed) &&
            atomic_exchange(&ep->armed, 0)) {
            uint64_t one = 1;
            if (write(ep->efd, &one, sizeof one) == sizeof one) {
                e->st.wakeups++;
                ep->st.wakeups++;
            }
        }
    }
}

/* -- endpoints: filled by the loop, routed to by the engine -- */

/* Engine side: route to exactly the open endpoints, join exactly their groups. */
static void apply_routes(struct bp_engine *e, int op, int id)
{
    if (op == BP_CTL_ADD) {
        e->eps[id].st = (struct bp_ep_stats){0};
        e->routed |= 1u << id;
    } else {
        e->routed &= ~(1u << id);
    }
    int n = 0;
    e->pkt.ngroups = 0;
    for (uint32_t t = e->routed; t; t &= t - 1) {
        int i = __builtin_ctz(t);
        const struct bp_endpoint *ep = &e->eps[i];
        e->routes[n++] = i;
        pkt_join(&e->pkt, ep->ip);  /* -1 for a unicast address: nothing to join */
        for (int g = 0; g < ep->ngroups; g++)
            pkt_join(&e->pkt, ep->groups[g]);
    }
    e->nroutes = n;
}

/* Engine thread: carry out a pending ADD or REMOVE and acknowledge it. */
static void serve_control(struct bp_engine *e)
{
    int op = atomic_load_explicit(&e->ctl_op, memory_order_acquire);
    if (op == BP_CTL_NONE)
        return;
    apply_routes(e, op, e->ctl_ep);
    atomic_store_explicit(&e->ctl_op, BP_CTL_NONE, memory_order_release);
}

/* Loop side: have the engine apply op to endpoint id; 0, or -1 when it does not answer. */
static int control(struct bp_engine *e, int op, int id)
{
    if (!e->has_thread) {
        apply_routes(e, op, id);
        return 0;
    }
    e->ctl_ep = id;
    atomic_store_explicit(&e->ctl_op, op, memory_order_release);
    uint64_t one = 1;
    if (write(e->tx_efd, &one, sizeof one) < 0)  /* wake a sleeping engine */
        e->st.tx_errors++;
    struct timespec nap = {0, 20 * 1000};
    for (int i = 0; i < 100000; i++) {  /* bounded: 2 s */
        if (atomic_load_explicit(&e->ctl_op, memory_order_acquire) == BP_CTL_NONE)
            return 0;
        nanosleep(&nap, NULL);
    }
    return -1;
}

static int overlaps(const struct bp_endpoint *ep, uint32_t ip, uint16_t port,
                    const uint32_t *groups, int ngroups)
{
    if (ep->open != 1 || ep->port != port)
        return 0;
    if (ep_accepts(ep, ip))
        return 1;
    for (int g = 0; g < ngroups; g++)
        if (ep_accepts(ep, groups[g]))
            return 1;
    return 0;
}

static int joined_after(const struct bp_engine *e, const uint32_t *groups, int ngroups,
                        uint32_t ip)
{
    uint32_t all[PKT_MAX_GROUPS * 2];
    int n = 0;
    for (int i = 0; i < BP_MAX_ENDPOINTS; i++) {
        const struct bp_endpoint *ep = &e->eps[i];
        if (ep->open != 1)
            continue;
        if ((ep->ip >> 28) == 0xe && n < PKT_MAX_GROUPS * 2)
            all[n++] = ep->ip;
        for (int g = 0; g < ep->ngroups && n < PKT_MAX_GROUPS * 2; g++)
            all[n++] = ep->groups[g];
    }
    if ((ip >> 28) == 0xe && n < PKT_MAX_GROUPS * 2)
        all[n++] = ip;
    for (int g = 0; g < ngroups && n < PKT_MAX_GROUPS * 2; g++)
        all[n++] = groups[g];
    int distinct = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = all[j] == all[i];
        distinct += !seen;
    }
    return distinct;
}

int bp_open(struct bp_engine *e, uint32_t ip, uint16_t port, const uint32_t *groups,
            int ngroups, char *error)
{
    int id = -1;
    for (int i = 0; i < BP_MAX_ENDPOINTS; i++) {
        if (overlaps(&e->eps[i], ip, port, groups, ngroups)) {
            snprintf(error, BP_ERROR_LEN, "port %u of this address or group already has an "
                     "endpoint on this engine", port);
            return -1;
        }
        if (id < 0 && e->eps[i].open == 0)
            id = i;
    }
    if (id < 0 || ngroups < 0 || ngroups > BP_EP_GROUPS ||
        joined_after(e, groups, ngroups, ip) > PKT_MAX_GROUPS) {
        snprintf(error, BP_ERROR_LEN, "an engine has at most %d endpoints, %d groups per "
                 "endpoint and %d groups in all", BP_MAX_ENDPOINTS, BP_EP_GROUPS,
                 PKT_MAX_GROUPS);
        return -1;
    }
    struct bp_endpoint *ep = &e->eps[id];
    ep->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ep->efd < 0 || spsc_init(&ep->rx, e->cfg.ring_slots, e->cfg.slot_size)) {
        snprintf(error, BP_ERROR_LEN, "cannot allocate an endpoint's ring: %s", strerror(errno));
        if (ep->efd >= 0)
            close(ep->efd);
        ep->efd = -1;
        return -1;
    }
    atomic_init(&ep->armed, 0);
    ep->ip = ip;
    ep->port = port;
    ep->ngroups = (uint16_t)ngroups;
    if (ngroups)
        memcpy(ep->groups, groups, sizeof *groups * (size_t)ngroups);
    ep->open = 1;
    if (control(e, BP_CTL_ADD, id)) {
        snprintf(error, BP_ERROR_LEN, "the engine thread did not take the endpoint within 2 s");
        ep->open = 2;  /* it may still: keep the ring and the slot until the engine stops */
        return -1;
    }
    return id;
}

static void free_endpoint(struct bp_endpoint *ep)
{
    spsc_free(&ep->rx);
    if (ep->efd >= 0)
        close(ep->efd);
    ep->efd = -1;
    ep->open = 0;
}

void bp_close(struct bp_engine *e, int id)
{
    if (id < 0 || id >= BP_MAX_ENDPOINTS || e->eps[id].open != 1)
        return;
    e->eps[id].open = 2;
    if (control(e, BP_CTL_REMOVE, id) == 0)
        free_endpoint(&e->eps[id]);
    /* else the engine may still write into the ring: slot and ring go with the engine */
}

/* -- the loop's side -- */

int bp_recv(struct bp_engine *e, int id, uint8_t *buf, uint32_t slot, int max, int32_t *lens,
            uint32_t *ips, uint16_t *ports, int64_t *stamps)
{
    struct spsc *rx = &e->eps[id].rx;
    uint32_t n = spsc_ready(rx);
    if (n > (uint32_t)max)
        n = (uint32_t)max;
    for (uint32_t i = 0; i < n; i++) {
        struct spsc_slot *s = spsc_peek(rx, i);
        ips[i] = s->ip;
        ports[i] = s->port;
        stamps[i] = s->ns;
        if (s->len > slot) {
            lens[i] = -1;
            continue;
        }
        lens[i] = (int32_t)s->len;
        memcpy(buf + (size_t)i * slot, s->data, s->len);
    }
    if (n)
        spsc_release(rx, n);
    return (int)n;
}

int bp_arm(struct bp_engine *e, int id)
{
    struct bp_endpoint *ep = &e->eps[id];
    atomic_store(&ep->armed, 1);
    atomic_thread_fence(memory_order_seq_cst);  /* pairs with bp_rx_done's fence */
    if (spsc_empty(&ep->rx))
        return 0;
    atomic_store(&ep->armed, 0);
    return 1;
}

int bp_eventfd(struct bp_engine *e, int id) { return e->eps[id].efd; }

void bp_read_ep_stats(struct bp_engine *e, int id, struct bp_ep_stats *out)
{
    *out = e->eps[id].st;
}

int bp_max_payload(struct bp_engine *e)
{
    uint32_t headers = PKT_ETH_HLEN + PKT_VLAN_HLEN + PKT_IP_HLEN + PKT_UDP_HLEN;
    uint32_t by_frame = e->frame_size > headers ? e->frame_size - headers : 0;
    uint32_t by_slot = spsc_data_size(&e->tx);
    return (int)(by_frame < by_slot ? by_frame : by_slot);
}

int bp_send(struct bp_engine *e, uint32_t ip, uint16_t port, uint16_t src_port,
            const uint8_t *data, uint32_t len)
{
    if (len > (uint32_t)bp_max_payload(e))
        return -EMSGSIZE;
    struct spsc_slot *s = spsc_reserve(&e->tx);
    if (!s) {
        e->st.tx_ring_full++;
        return -ENOBUFS;
    }
    s->len = len;
    s->ip = ip;
    s->port = port;
    s->local_port = src_port;
    memcpy(s->data, data, len);
    spsc_publish(&e->tx);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&e->tx_armed, memory_order_relaxed) &&
        atomic_exchange(&e->tx_armed, 0)) {
        uint64_t one = 1;
        if (write(e->tx_efd, &one, sizeof one) < 0)
            e->st.tx_errors++;
    }
    return 0;
}

void bp_read_stats(struct bp_engine *e, struct bp_stats *out)
{
    *out = e->st;
    out->arp_replies = e->pkt.arp_replies;
    out->arp_learned = e->pkt.arp_learned;
    memcpy(out->drops, e->pkt.drops, sizeof out->drops);
    if (e->drv && e->ops->stats)
        e->ops->stats(e, out);
}

void bp_local(struct bp_engine *e, uint8_t *mac, uint32_t *ip)
{
    memcpy(mac, e->pkt.mac, 6);
    *ip = e->pkt.ip;
}

/* -- TX: loop -> engine, with ARP resolution -- */

static uint32_t arp_request(struct bp_engine *e, uint8_t *frame, uint32_t ip)
{
    e->st.arp_requests++;
    return (uint32_t)pkt_build_arp_request(&e->pkt, frame, ip);
}

static uint32_t build(struct bp_engine *e, uint8_t *frame, uint32_t cap, const uint8_t *mac,
                      uint32_t ip, uint16_t port, uint16_t src_port, const uint8_t *data,
                      uint32_t len)
{
    int n = pkt_build_udp(&e->pkt, frame, cap, mac, ip, src_port, port, data, len);
    if (n < 0) {
        e->st.tx_errors++;
        return 0;
    }
    e->st.tx_frames++;
    return (uint32_t)n;
}

/* The oldest parked datagram: sent once resolved, re-asked for, or given up. */
static uint32_t tx_pending(struct bp_engine *e, uint8_t *frame, uint32_t cap, int64_t now)
{
    while (e->pend_n) {
        struct bp_pending *p = &e->pend[e->pend_head];
        uint8_t mac[6];
        if (pkt_resolve(&e->pkt, p->ip, mac)) {
            e->pend_head = (e->pend_head + 1) % BP_PEND_MAX;
            e->pend_n--;
            uint32_t n = build(e, frame, cap, mac, p->ip, p->port, p->src_port, p->data, p->len);
            if (n)
                return n;
            continue;
        }
        if (now - p->first_ns > ARP_GIVE_UP_NS) {
            e->st.tx_unresolved++;
            e->pend_head = (e->pend_head + 1) % BP_PEND_MAX;
            e->pend_n--;
            continue;
        }
        if (now - p->request_ns > ARP_RETRY_NS) {
            p->request_ns = now;
            return arp_request(e, frame, p->ip);
        }
        return 0;
    }
    return 0;
}

static int asked_recently(struct bp_engine *e, uint32_t ip, int64_t now)
{
    for (uint32_t i = 0; i < e->pend_n; i++) {
        struct bp_pending *p = &e->pend[(e->pend_head + i) % BP_PEND_MAX];
        if (p->ip == ip && now - p->request_ns <= ARP_RETRY_NS)
            return 1;
    }
    return 0;
}

int bp_tx_idle(struct bp_engine *e)
{
    return !e->ctrl_n && !e->pend_n && !spsc_ready(&e->tx);
}

uint32_t bp_tx_next(struct bp_engine *e, uint8_t *frame, uint32_t cap, int64_t now)
{
    if (e->ctrl_n) {
        uint32_t i = e->ctrl_head, len = e->ctrl_len[i];
        e->ctrl_head = (i + 1) % BP_CTRL_MAX;
        e->ctrl_n--;
        memcpy(frame, e->ctrl[i], len);
        return len;
    }
    if (e->pend_n) {
        uint32_t n = tx_pending(e, frame, cap, now);
        if (n)
            return n;
    }
    while (spsc_ready(&e->tx)) {
        struct spsc_slot *s = spsc_peek(&e->tx, 0);
        uint8_t mac[6];
        if (pkt_resolve(&e->pkt, s->ip, mac)) {
            uint32_t n = build(e, frame, cap, mac, s->ip, s->port, s->local_port, s->data,
                               s->len);
            spsc_release(&e->tx, 1);
            if (n)
                return n;
            continue;
        }
        if (e->pend_n == BP_PEND_MAX) {  /* too many waiting for ARP: drop, counted */
            e->st.tx_unresolved++;
            spsc_release(&e->tx, 1);
            continue;
        }
        int ask = !asked_recently(e, s->ip, now);
        struct bp_pending *p = &e->pend[(e->pend_head + e->pend_n++) % BP_PEND_MAX];
        uint8_t *data = p->data;
        *p = (struct bp_pending){.ip = s->ip, .len = s->len, .port = s->port,
                                 .src_port = s->local_port, .first_ns = now,
                                 .request_ns = ask ? now : 0, .data = data};
        memcpy(p->data, s->data, s->len);
        spsc_release(&e->tx, 1);
        if (ask)
            return arp_request(e, frame, s->ip);
    }
    return 0;
}

/* -- life cycle -- */

static int enter_netns(struct bp_engine *e)
{
    if (!e->cfg.netns[0])
        return 0;
    int fd = open(e->cfg.netns, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return bp_fail(e, "cannot open network namespace %s: %s", e->cfg.netns, strerror(errno));
    int rc = setns(fd, CLONE_NEWNET);
    int err = errno;
    close(fd);
    if (rc)
        return bp_fail(e, "cannot enter network namespace %s: %s (needs CAP_SYS_ADMIN)",
                       e->cfg.netns, strerror(err));
    return 0;
}

static int place_thread(struct bp_engine *e)
{
    /* Idle naps (busy_poll = 0) are microseconds: the default 50 us timer slack would
     * more than double them. */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    if (e->cfg.core >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(e->cfg.core, &set);
        int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
        if (rc)
            return bp_fail(e, "cannot pin the engine thread to core %d: %s (see nproc and the "
                           "cpuset of this process)", e->cfg.core, strerror(rc));
    }
    if (e->cfg.fifo_priority > 0) {
        struct sched_param sp = {.sched_priority = e->cfg.fifo_priority};
        int rc = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
        if (rc)
            return bp_fail(e, "cannot set SCHED_FIFO %d: %s (needs CAP_SYS_NICE or an "
                           "RLIMIT_RTPRIO)", e->cfg.fifo_priority, strerror(rc));
    }
    return 0;
}

static void *engine_main(void *arg)
{
    struct bp_engine *e = arg;
    int rc = enter_netns(e);
    if (!rc)
        rc = place_thread(e);
    if (!rc)
        rc = e->ops->setup(e);
    e->setup_rc = rc;
    uint64_t one = 1;
    if (write(e->setup_done_efd, &one, sizeof one) < 0 || rc)
        return NULL;
    uint32_t idle = 0;
    while (!atomic_load_explicit(&e->stop, memory_order_relaxed)) {
        serve_control(e);
        e->st.polls++;
        if (e->ops->poll(e)) {
            idle = 0;
            continue;
        }
        if (e->cfg.busy_poll || ++idle < IDLE_SPINS) {
            __builtin_ia32_pause();
            continue;
        }
        atomic_store(&e->tx_armed, 1);
        atomic_thread_fence(memory_order_seq_cst);
        if (spsc_empty(&e->tx) && !atomic_load(&e->stop) && !atomic_load(&e->ctl_op))
            e->ops->wait(e, IDLE_WAIT_US);
        atomic_store(&e->tx_armed, 0);
        uint64_t n;
        if (read(e->tx_efd, &n, sizeof n) < 0 && errno != EAGAIN)
            e->st.tx_errors++;
    }
    e->ops->teardown(e);
    return NULL;
}

/* Run fn on a short-lived thread inside the engine's namespace (inline mode). */
struct ns_call {
    struct bp_engine *e;
    int (*fn)(struct bp_engine *);
    void (*vfn)(struct bp_engine *);
    int rc;
};

static void *ns_call_main(void *arg)
{
    struct ns_call *c = arg;
    c->rc = enter_netns(c->e);
    if (!c->rc && c->fn)
        c->rc = c->fn(c->e);
    if (!c->rc && c->vfn)
        c->vfn(c->e);
    return NULL;
}

static int call_in_netns(struct bp_engine *e, int (*fn)(struct bp_engine *),
                         void (*vfn)(struct bp_engine *))
{
    struct ns_call c = {.e = e, .fn = fn, .vfn = vfn};
    pthread_t t;
    int rc = pthread_create(&t, NULL, ns_call_main, &c);
    if (rc)
        return bp_fail(e, "cannot create a thread: %s", strerror(rc));
    pthread_join(t, NULL);
    return c.rc;
}

static void free_engine(struct bp_engine *e)
{
    for (int i = 0; i < BP_MAX_ENDPOINTS; i++)
        free_endpoint(&e->eps[i]);
    spsc_free(&e->tx);
    free(e->pend_buf);
    if (e->tx_efd >= 0)
        close(e->tx_efd);
    if (e->setup_done_efd >= 0)
        close(e->setup_done_efd);
    free(e);
}

struct bp_engine *bp_start(int kind, const struct bp_config *cfg, char *error)
{
    const struct bp_ops *ops = kind == BP_KIND_XSK ? &bp_xsk_ops
                             : kind == BP_KIND_DPDK ? &bp_dpdk_ops : NULL;
    struct bp_engine *e = calloc(1, sizeof *e);
    if (!ops || !e || !cfg->ifname[0] || cfg->ring_slots & (cfg->ring_slots - 1) ||
        cfg->ring_slots < 2 || cfg->slot_size < sizeof(struct spsc_slot) + 64) {
        snprintf(error, BP_ERROR_LEN, "%s", !e ? "out of memory" : !ops ? "unknown engine kind"
                 : !cfg->ifname[0] ? "no interface given"
                 : "ring_slots must be a power of two and slot_size at least 88");
        free(e);
        return NULL;
    }
    e->cfg = *cfg;
    e->ops = ops;
    for (int i = 0; i < BP_MAX_ENDPOINTS; i++)
        e->eps[i].efd = -1;
    e->tx_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->setup_done_efd = eventfd(0, EFD_CLOEXEC);
    e->pend_buf = malloc((size_t)BP_PEND_MAX * cfg->slot_size);
    if (e->tx_efd < 0 || e->setup_done_efd < 0 || !e->pend_buf ||
        spsc_init(&e->tx, cfg->ring_slots, cfg->slot_size)) {
        snprintf(error, BP_ERROR_LEN, "cannot allocate the engine's rings: %s", strerror(errno));
        free_engine(e);
        return NULL;
    }
    for (int i = 0; i < BP_PEND_MAX; i++)
        e->pend[i].data = e->pend_buf + (size_t)i * cfg->slot_size;
    if (!cfg->threaded) {
        if (call_in_netns(e, ops->setup, NULL)) {
            snprintf(error, BP_ERROR_LEN, "%s", e->error);
            free_engine(e);
            return NULL;
        }
        return e;
    }
    int rc = pthread_create(&e->thread, NULL, engine_main, e);
    if (rc) {
        snprintf(error, BP_ERROR_LEN, "cannot create the engine thread: %s", strerror(rc));
        free_engine(e);
        return NULL;
    }
    uint64_t done;
    while (read(e->setup_done_efd, &done, sizeof done) < 0 && errno == EINTR)
        ;
    if (e->setup_rc) {
        pthread_join(e->thread, NULL);
        snprintf(error, BP_ERROR_LEN, "%s", e->error);
        free_engine(e);
        return NULL;
    }
    e->has_thread = 1;
    return e;
}

int bp_poll(struct bp_engine *e)
{
    e->st.polls++;
    return e->ops->poll(e);
}

static int any_ready(struct bp_engine *e)
{
    for (int i = 0; i < BP_MAX_ENDPOINTS; i++)
        if (e->eps[i].open == 1 && spsc_ready(&e->eps[i].rx))
            return 1;
    return 0;
}

int bp_spin(struct bp_engine *e, int64_t budget_ns)
{
    int64_t deadline = bp_now_ns(CLOCK_MONOTONIC) + budget_ns;
    const int run_engine = !e->has_thread;  /* read once: it shares a line with e->st */
    for (uint32_t spins = 1;; spins++) {
        if (run_engine) {
            e->st.polls++;
            e->ops->poll(e);
        }
        if (any_ready(e))
            return 1;
        if ((spins & 31) == 0 && bp_now_ns(CLOCK_MONOTONIC) >= deadline)
            return 0;
    }
}

void bp_stop(struct bp_engine *e)
{
    if (!e)
        return;
    if (e->has_thread) {
        atomic_store(&e->stop, 1);
        uint64_t one = 1;
        if (write(e->tx_efd, &one, sizeof one) < 0)
            e->st.tx_errors++;
        pthread_join(e->thread, NULL);
    } else {
        call_in_netns(e, NULL, e->ops->teardown);
    }
    free_engine(e);
}
